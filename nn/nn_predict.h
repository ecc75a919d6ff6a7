/* nn_predict: what a prediction makes of one row's logits: its classes
 * ranked, and their probabilities (jobctl enqueue predict, docs/predict.md).
 *
 * Rank: larger logit first; equal logits by class id, the lower first; a
 * NaN logit after every number.  The first of the rank is the predicted
 * class.  Test scoring counts a row right when no other class has a logit
 * >= the label's (kern_cpu_loss.c, label_rank): that is the same row
 * whenever the largest logit is unique, so prediction over the test split
 * reproduces the test top-1.  Under a tie for the largest logit the test
 * score counts a miss whatever the label, while prediction names the lowest
 * tied class.
 *
 * Probabilities: the softmax, in double, as the loss takes it:
 * exp(l_j − max) / Σ_i exp(l_i − max). */
#ifndef CDS_NN_PREDICT_H
#define CDS_NN_PREDICT_H

#include <stdint.h>

/* The k (1..K) first classes of the rank of logits[0..K) into cls, and
 * their probabilities into prob (may be NULL). */
void nn_predict_rank(const float *logits, int K, int k, int32_t *cls, double *prob);
/* Every class's probability into probs[0..K). */
void nn_predict_probs(const float *logits, int K, double *probs);

#endif
