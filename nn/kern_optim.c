/* kern_optim: SGD (with momentum) and Adam steps over one parameter tensor.
 *
 * Each step is one fused pass over the n floats (they run over every
 * parameter of the model each batch, 25M+ floats for the big models, so the
 * pass is memory-bound and a second pass would double its cost).  Per
 * element, with g' = g + 2·l2·w (the gradient of Keras's l2·Σw², added
 * first, as the header says):
 *
 *   SGD (PyTorch, dampening 0, no Nesterov):
 *     buf = momentum·buf + g';  w -= lr·buf
 *   PyTorch's first step sets buf = g', which is the same formula from a
 *   zeroed buffer (the caller zeroes it).  With momentum == 0 the buffer is
 *   not needed and may be NULL: w -= lr·g'.
 *
 *   Adam (PyTorch, t counting from 1):
 *     m = β1·m + (1-β1)·g';  v = β2·v + (1-β2)·g'²
 *     w -= (lr/(1-β1^t)) · m / (sqrt(v)/sqrt(1-β2^t) + eps)
 *   The bias corrections are scalars computed once in double, as PyTorch's
 *   Python floats are; the per-element work is in float.
 *
 * The square root is __builtin_sqrtf of a value known to be >= 0, written
 * so the compiler can vectorise it (no errno path is taken for v >= 0, but
 * GCC only drops the check when told; the loop stays correct either way).
 *
 * nn_cpu_sumsq returns Σw² in double (the caller multiplies by λ). */
#include <math.h>
#include <stddef.h>

#include "nn_kern_cpu.h"

void nn_cpu_sgd_step(float *w, const float *g, float *buf, size_t n, float lr, float momentum, float l2)
{
    float decay = 2.0f * l2;
    if (momentum == 0.0f || !buf) {
        for (size_t i = 0; i < n; i++)
            w[i] -= lr * (g[i] + decay * w[i]);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float b = momentum * buf[i] + (g[i] + decay * w[i]);
        buf[i] = b;
        w[i] -= lr * b;
    }
}

void nn_cpu_adam_step(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                      float eps, float l2, long t)
{
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    float step = (float)((double)lr / bc1);
    float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    float decay = 2.0f * l2, c1 = 1.0f - beta1, c2 = 1.0f - beta2;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] + decay * w[i];
        float mi = beta1 * m[i] + c1 * gi;
        float vi = beta2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] -= step * mi / (__builtin_sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
}

double nn_cpu_sumsq(const float *w, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)w[i] * w[i];
    return s;
}
