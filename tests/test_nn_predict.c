/* nn_predict (nn/nn_predict.h) against plain versions on random rows:
 *
 *   - nn_predict_rank's first k classes equal a full sort of the classes
 *     (larger logit first, equal logits by lower id, NaN last), on rows drawn
 *     from few values so that ties are common, with NaN in some;
 *   - its probabilities equal nn_predict_probs at those classes, and those
 *     sum to 1 (within 1e-12: double sums of K terms);
 *   - on every row whose largest logit is unique, the predicted class is the
 *     one label the test score (nn_cpu_softmax_xent's top-1) counts right,
 *     and any other label a miss: prediction over the test split reproduces
 *     the test top-1. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nn_kern_cpu.h"
#include "nn_predict.h"
#include "tap.h"

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static const float *sort_row;

/* The rank's order, written plainly. */
static int by_rank(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    float x = sort_row[i], y = sort_row[j];
    if (isnan(x) != isnan(y))
        return isnan(x) ? 1 : -1;
    if (!isnan(x) && x != y)
        return x > y ? -1 : 1;
    return i - j;
}

int main(void)
{
    uint64_t s = 42;
    int rank_bad = 0, prob_bad = 0, sum_bad = 0, score_bad = 0, unique_rows = 0, rows = 2000;
    for (int r = 0; r < rows; r++) {
        int K = 2 + (int)(mix(&s) % 40), k = 1 + (int)(mix(&s) % (uint64_t)K);
        float row[64];
        int levels = 2 + (int)(mix(&s) % 6); /* few values: ties */
        for (int j = 0; j < K; j++)
            row[j] = (float)(int)(mix(&s) % (uint64_t)levels) * 0.75f - 1.0f;
        int nan = r % 10 == 0;
        if (nan)
            row[mix(&s) % (uint64_t)K] = NAN;
        int order[64];
        for (int j = 0; j < K; j++)
            order[j] = j;
        sort_row = row;
        qsort(order, (size_t)K, sizeof order[0], by_rank);
        int32_t cls[64];
        double prob[64], probs[64];
        nn_predict_rank(row, K, k, cls, prob);
        nn_predict_probs(row, K, probs);
        for (int i = 0; i < k; i++)
            rank_bad += cls[i] != order[i];
        double sum = 0;
        for (int j = 0; j < K; j++)
            sum += probs[j];
        for (int i = 0; i < k && !nan; i++)
            prob_bad += prob[i] != probs[cls[i]];
        sum_bad += !nan && fabs(sum - 1.0) > 1e-12;
        /* The test score's top-1 against the predicted class. */
        if (nan || row[order[0]] == row[order[1]])
            continue;
        unique_rows++;
        for (int label = 0; label < K; label++) {
            int32_t lab = label;
            int top1 = -1;
            nn_cpu_softmax_xent(row, &lab, NULL, 1, K, &top1, NULL);
            score_bad += top1 != (label == cls[0]);
        }
    }
    ok(rank_bad == 0, "nn_predict_rank equals a full sort on %d rows with ties and NaN (%d classes out of place)", rows,
       rank_bad);
    ok(prob_bad == 0 && sum_bad == 0, "its probabilities are the softmax's, which sums to 1 (%d, %d wrong)", prob_bad,
       sum_bad);
    ok(unique_rows > rows / 10 && score_bad == 0,
       "on the %d rows with a unique largest logit, the test score counts right exactly the predicted class (%d "
       "disagreements)",
       unique_rows, score_bad);
    return tap_done();
}
