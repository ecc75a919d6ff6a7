/* nn_kern_shared: the scalar functions both backends compute, written once,
 * so that a CPU step and a GPU step agree by construction rather than by two
 * copies kept in step: dropout's counter-based keep test and scale
 * (kern_cpu_elem.c explains the generator), and the fold of a batch's
 * metrics into a pass's sums (nn_backend.h).  C for the CPU kernels; under
 * nvcc the same functions are host and device functions. */
#ifndef CDS_NN_KERN_SHARED_H
#define CDS_NN_KERN_SHARED_H

#ifndef CDS_NN_INTERNAL
#error "nn_kern_shared.h is private to nn/: include nn_ops.h and the other public nn headers (a white-box test under tests/ adds c_args : nn_private_args)"
#endif

#include <math.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "nn_backend.h"
#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#define NN_HD __host__ __device__
#else
#define NN_HD
#endif

#define NN_SPLITMIX_GAMMA 0x9E3779B97F4A7C15ull

/* SplitMix64's output function. */
static inline NN_HD uint64_t nn_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Keep threshold on the 53-bit draw: keep iff draw >= p·2^53. */
static inline NN_HD uint64_t nn_dropout_threshold(float p)
{
    if (p <= 0.0f)
        return 0;
    return (uint64_t)((double)p * 9007199254740992.0); /* 2^53; p < 1 here */
}

/* 1/(1-p) in float, or 0 when everything is dropped. */
static inline NN_HD float nn_dropout_scale(float p)
{
    return p < 1.0f ? (float)(1.0 / (1.0 - (double)p)) : 0.0f;
}

/* Whether element i of the global tensor is kept, key = nn_mix64(seed). */
static inline NN_HD int nn_dropout_keep(uint64_t key, uint64_t i, uint64_t threshold)
{
    return (nn_mix64(key + i * NN_SPLITMIX_GAMMA) >> 11) >= threshold;
}

/* A batch of n rows at training step `step` into the pass's sums: its loss
 * is xent + l2·sumsq, summed in the order the trainer always summed it. */
static inline NN_HD void nn_metrics_fold_one(const nn_step_metrics *m, nn_pass_acc *acc, int n, double l2,
                                             int64_t step)
{
    double loss = m->xent + (l2 == 0 ? 0.0 : l2 * m->sumsq);
    acc->rows += n;
    acc->loss_sum += loss * n;
    acc->xent_sum += m->xent * n;
    acc->top1 += m->top1;
    acc->top5 += m->top5;
    if (!isfinite(loss) && acc->bad_step < 0) {
        acc->bad_step = step;
        acc->bad_loss = loss;
    }
}

#endif
