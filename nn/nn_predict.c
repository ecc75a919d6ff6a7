/* nn_predict: see nn_predict.h.  The rank is kept by insertion into the k
 * places found so far, O(K·k) per row: k is small (the user's top-k, or 1),
 * and K at most the dataset's classes. */
#include <math.h>

#include "nn_predict.h"

/* 1 when class a (logit x) ranks before class b (logit y). */
static int before(float x, int a, float y, int b)
{
    if (isnan(x) || isnan(y))
        return isnan(x) ? isnan(y) && a < b : 1;
    return x > y || (x == y && a < b);
}

/* Σ exp(l_i − max) in double, and the max, for the probabilities. */
static double softmax_sum(const float *logits, int K, float *max)
{
    float m = -INFINITY;
    for (int j = 0; j < K; j++)
        if (logits[j] > m)
            m = logits[j];
    double s = 0.0;
    for (int j = 0; j < K; j++)
        s += exp((double)logits[j] - (double)m);
    *max = m;
    return s;
}

void nn_predict_probs(const float *logits, int K, double *probs)
{
    float m;
    double s = softmax_sum(logits, K, &m);
    for (int j = 0; j < K; j++)
        probs[j] = exp((double)logits[j] - (double)m) / s;
}

void nn_predict_rank(const float *logits, int K, int k, int32_t *cls, double *prob)
{
    if (k > K)
        k = K;
    int have = 0;
    for (int j = 0; j < K; j++) {
        int at = have < k ? have : k;
        while (at > 0 && before(logits[j], j, logits[cls[at - 1]], cls[at - 1]))
            at--;
        if (at >= k)
            continue;
        for (int i = (have < k ? have : k - 1); i > at; i--)
            cls[i] = cls[i - 1];
        cls[at] = j;
        if (have < k)
            have++;
    }
    if (!prob)
        return;
    float m;
    double s = softmax_sum(logits, K, &m);
    for (int i = 0; i < k; i++)
        prob[i] = exp((double)logits[cls[i]] - (double)m) / s;
}
