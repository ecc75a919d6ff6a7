/* kern_cpu_elem: element-wise layers (ReLU, addition, inverted dropout).
 *
 * ReLU keeps NaN as NaN (x < 0 is false for NaN), as PyTorch does, so a
 * diverging model shows up in the loss instead of being silently zeroed.
 * Its backward pass reads the output: y > 0 exactly where x > 0, and the
 * output is what a layer keeps anyway (the forward may run in place).
 *
 * Dropout draws mask[i] from a counter-based generator: a 64-bit hash of
 * (seed, i) alone, built from SplitMix64's finaliser (a bijection of 64-bit
 * words with full avalanche).  The seed is hashed once into a key, and
 * element i hashes key + i·φ (φ = 2^64/golden ratio, SplitMix64's
 * increment), i.e. the i-th output of a SplitMix64 stream started at the
 * key.  So the mask does not depend on n, on threads, or on earlier calls,
 * and distinct seeds give unrelated streams.  The top 53 bits of the hash
 * make a uniform u in [0, 1) and the element is kept when u >= p, so
 * P(keep) = 1 - p up to 2^-53.  Kept elements are scaled by 1/(1-p) so the
 * expectation of y is x; p >= 1 drops everything (PyTorch gives zeros). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "nn_kern_cpu.h"
#include "nn_kern_shared.h"
#include "nn_par.h"


/* Both loops are written as an unconditional store of a select so the
 * compiler vectorises them (a `+= cond ? dy : 0` becomes a branch per element
 * otherwise, mispredicted half the time on real activations). */
/* Element-wise loops go parallel above this size; the partition cannot
 * change a result. */
#define PAR_MIN 65536

void nn_cpu_relu_fwd(const float *x, float *y, size_t n)
{
#pragma omp parallel for schedule(static) num_threads(nn_par_threads()) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

void nn_cpu_relu_bwd(const float *restrict y, const float *restrict dy, float *restrict dx, size_t n)
{
    if (!dx)
        return;
#pragma omp parallel for schedule(static) num_threads(nn_par_threads()) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        /* The mask as bits: a select would be compiled as a load of dy[i]
         * guarded by a branch, which does not vectorise. */
        uint32_t d, keep = y[i] > 0.0f ? 0xffffffffu : 0u;
        memcpy(&d, &dy[i], sizeof d);
        d &= keep;
        float g;
        memcpy(&g, &d, sizeof g);
        dx[i] += g;
    }
}

void nn_cpu_add_fwd(const float *a, const float *b, float *y, size_t n)
{
#pragma omp parallel for schedule(static) num_threads(nn_par_threads()) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        y[i] = a[i] + b[i];
}

void nn_cpu_dropout_fwd(const float *x, float *y, uint8_t *mask, float p, uint64_t seed, size_t n)
{
    nn_cpu_dropout_fwd_at(x, y, mask, p, seed, 0, n);
}

void nn_cpu_dropout_fwd_at(const float *x, float *y, uint8_t *mask, float p, uint64_t seed, uint64_t first, size_t n)
{
    if (p >= 1.0f) {
        for (size_t i = 0; i < n; i++) {
            mask[i] = 0;
            y[i] = 0.0f;
        }
        return;
    }
    uint64_t key = nn_mix64(seed);
    uint64_t threshold = nn_dropout_threshold(p);
    float scale = nn_dropout_scale(p);
    for (size_t i = 0; i < n; i++) {
        uint8_t keep = (uint8_t)nn_dropout_keep(key, first + (uint64_t)i, threshold);
        mask[i] = keep;
        y[i] = keep ? x[i] * scale : 0.0f;
    }
}

void nn_cpu_dropout_bwd(const uint8_t *mask, const float *dy, float *dx, float p, size_t n)
{
    if (!dx)
        return;
    float scale = nn_dropout_scale(p);
    for (size_t i = 0; i < n; i++)
        dx[i] += mask[i] ? dy[i] * scale : 0.0f;
}

void nn_cpu_u8_normalize(const uint8_t *restrict raw, const float *restrict lut, float *restrict y, int n, int C,
                         int64_t P, int channels_last)
{
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) {
            const uint8_t *in = raw + (int64_t)i * C * P + (channels_last ? c : (int64_t)c * P);
            const int64_t step = channels_last ? C : 1;
            float *out = y + ((int64_t)i * C + c) * P;
            const float *t = lut + (size_t)c * 256;
            for (int64_t p = 0; p < P; p++)
                out[p] = t[in[p * step]];
        }
}

void nn_cpu_acc(const float *restrict dy, float *restrict dx, size_t n)
{
#pragma omp parallel for schedule(static) num_threads(nn_par_threads()) if (n >= 65536)
    for (size_t i = 0; i < n; i++)
        dx[i] += dy[i];
}
