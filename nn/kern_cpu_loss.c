/* kern_cpu_loss: softmax cross-entropy on class ids, with top-1/top-5 counts.
 *
 * Per row, with m = max_j logits[j] (subtracted so no exp overflows, and the
 * largest term is exactly 1, so the sum is >= 1 and its log is finite):
 *   S    = Σ_j exp(logits[j] - m)        (exps in float, summed in double)
 *   loss = m + log S - logits[label]      (in double)
 *   dlogits[j] = (exp(logits[j] - m)/S - [j == label]) / N
 * The returned loss is the mean over rows, accumulated in double so it does
 * not depend on the batch size's rounding.  When dlogits is given it first
 * holds the row's exps, then is normalised in place: one exp per logit.
 *
 * Ranking: the label's rank is the number of logits strictly greater than
 * its own plus the number of other logits equal to it, i.e. ties are broken
 * against the label, so a constant output (all logits equal) has rank K-1
 * and scores no hit when K > 5.  A hit in top-k means rank < k.  A NaN label
 * logit is never a hit (comparisons with NaN are false and would otherwise
 * give it rank 0). */
#include <math.h>
#include <stddef.h>

#include "nn_kern_cpu.h"

static float row_max(const float *row, int K)
{
    float m = row[0];
    for (int j = 1; j < K; j++)
        if (row[j] > m)
            m = row[j];
    return m;
}

/* Σ exp(row - m); the exps are also stored in e when it is not NULL. */
static double sum_exp(const float *row, float m, float *e, int K)
{
    double s = 0.0;
    for (int j = 0; j < K; j++) {
        float v = expf(row[j] - m);
        if (e)
            e[j] = v;
        s += v;
    }
    return s;
}

/* Position of the label among the logits, ties ranked after the others. */
static int label_rank(const float *row, int label, int K)
{
    float l = row[label];
    if (isnan(l))
        return K;
    int rank = 0;
    for (int j = 0; j < K; j++)
        if (row[j] > l || (row[j] == l && j != label))
            rank++;
    return rank;
}

double nn_cpu_softmax_xent(const float *logits, const int32_t *labels, float *dlogits, int N, int K, int *top1,
                           int *top5)
{
    int hits1 = 0, hits5 = 0;
    double total = 0.0;
    for (int n = 0; n < N && K > 0; n++) {
        const float *row = logits + (size_t)n * K;
        float *drow = dlogits ? dlogits + (size_t)n * K : NULL;
        int label = labels[n];
        float m = row_max(row, K);
        double s = sum_exp(row, m, drow, K);
        total += (double)m + log(s) - (double)row[label];
        if (drow) {
            float inv = (float)(1.0 / (s * N));
            for (int j = 0; j < K; j++)
                drow[j] *= inv;
            drow[label] -= 1.0f / (float)N;
        }
        int rank = label_rank(row, label, K);
        hits1 += rank < 1;
        hits5 += rank < 5;
    }
    if (top1)
        *top1 = hits1;
    if (top5)
        *top5 = hits5;
    return N > 0 ? total / N : 0.0;
}
