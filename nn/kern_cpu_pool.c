/* kern_cpu_pool.c: max, average and global average pooling on the CPU, with
 * PyTorch's semantics (MaxPool2d, AvgPool2d with count_include_pad=True,
 * AdaptiveAvgPool2d(1)), floor mode.
 *
 * Windows.  Output (oh, ow) covers input rows oh·s-p .. oh·s-p+k-1 and the
 * same for columns; each kernel clamps that window to the input and works on
 * the real elements only.  nn_pool_geom_init refuses pad > k/2 (PyTorch does
 * too), which with floor mode guarantees that every window holds at least one
 * real element:  the first window starts at -p > -k, and the last one at
 * (OH-1)·s-p <= H+p-k < H.  Hence:
 *   - max pooling never needs a -infinity sentinel: the running maximum
 *     starts at the window's first real element, so padding can never win
 *     (not even against inputs that are themselves -infinity), and argmax
 *     always names a real element.  Scanning row by row with a strict '>'
 *     keeps the first of equal maxima, i.e. the smallest flat index.  A NaN
 *     wins over numbers (the first NaN is kept), as in PyTorch, so a
 *     diverging model is not hidden by the pooling;
 *   - average pooling's divisor is always k·k: the window never extends past
 *     the padded input (hend = oh·s-p+k <= H+p), which is exactly when
 *     PyTorch's count_include_pad divisor equals k·k.
 *
 * Backward kernels accumulate into dx in a fixed order (output by output),
 * so overlapping windows (stride < k) sum deterministically. */
#include <math.h>

#include "nn_kern_cpu.h"
#include "nn_par.h"

static int pool_out_size(int in, int k, int stride, int pad)
{
    long span = (long)in + 2L * pad - k;
    if (span < 0)
        return 0;
    return (int)(span / stride + 1);
}

int nn_pool_geom_init(nn_pool_geom *g)
{
    if (g->N <= 0 || g->C <= 0 || g->H <= 0 || g->W <= 0 || g->k <= 0 || g->stride <= 0 || g->pad < 0 ||
        2 * g->pad > g->k)
        return -1;
    g->OH = pool_out_size(g->H, g->k, g->stride, g->pad);
    g->OW = pool_out_size(g->W, g->k, g->stride, g->pad);
    return g->OH > 0 && g->OW > 0 ? 0 : -1;
}

/* The part [*lo, *hi) of window o that lies inside an axis of n elements. */
static void window_span(int o, int n, const nn_pool_geom *g, int *lo, int *hi)
{
    int start = o * g->stride - g->pad;
    int end = start + g->k;
    *lo = start < 0 ? 0 : start;
    *hi = end > n ? n : end;
}

/* "v beats best": larger, or the first NaN against a number.  The callers
 * take the winner with selects, not branches: on activations the comparison
 * goes either way at random and a branch was mispredicted about half the
 * time. */
static inline int max_beats(float v, float best)
{
    return v > best || (v != v && best == best);
}

/* The 2×2 stride-2 unpadded window of the small CNN and VGG: the same scan
 * order (row by row) and rule as the general loop, unrolled, which lets the
 * compiler keep everything in registers. */
static void maxpool_fwd_2x2(const nn_pool_geom *g, const float *x, float *y, int32_t *argmax)
{
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const size_t planes = (size_t)g->N * g->C;
#pragma omp parallel for schedule(static) num_threads(nn_par_threads()) if (planes * H * W >= 65536)
    for (size_t pl = 0; pl < planes; pl++) {
        const float *restrict xp = x + pl * H * W;
        float *restrict yp = y + pl * OH * OW;
        int32_t *restrict ap = argmax + pl * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            const float *r0 = xp + 2 * oh * W, *r1 = r0 + W;
            for (int ow = 0; ow < OW; ow++) {
                int at = 2 * oh * W + 2 * ow;
                float best = r0[2 * ow];
                int best_at = at;
                float v = r0[2 * ow + 1];
                int take = max_beats(v, best);
                best = take ? v : best;
                best_at = take ? at + 1 : best_at;
                v = r1[2 * ow];
                take = max_beats(v, best);
                best = take ? v : best;
                best_at = take ? at + W : best_at;
                v = r1[2 * ow + 1];
                take = max_beats(v, best);
                best = take ? v : best;
                best_at = take ? at + W + 1 : best_at;
                yp[oh * OW + ow] = best;
                ap[oh * OW + ow] = best_at;
            }
        }
    }
}

/* One plane of the general max pooling, an output row at a time: every
 * output starts at its window's first real element, then the window rows are
 * scanned top to bottom and, within a row, the taps left to right, as a
 * per-output scan would, but with the outputs of the row in the inner loop.
 * The comparisons of different outputs are then independent and pipeline,
 * where one window after another was a chain of dependent selects (the
 * ResNet stem's 3x3 pool spent ~85 cycles an output).  Revisiting the first
 * element changes nothing (it does not beat itself, NaN or not). */
static void maxpool_plane(const nn_pool_geom *g, const float *restrict xp, float *restrict yp,
                          int32_t *restrict ap)
{
    const int H = g->H, W = g->W, OW = g->OW, s = g->stride, p = g->pad;
    for (int oh = 0; oh < g->OH; oh++, yp += OW, ap += OW) {
        int h0, h1;
        window_span(oh, H, g, &h0, &h1);
        for (int ow = 0; ow < OW; ow++) {
            int w0, w1;
            window_span(ow, W, g, &w0, &w1);
            yp[ow] = xp[h0 * W + w0];
            ap[ow] = h0 * W + w0;
        }
        for (int h = h0; h < h1; h++)
            for (int kw = 0; kw < g->k; kw++) {
                /* outputs whose column ow·s-p+kw lies in [0, W) */
                int lo = kw >= p ? 0 : (p - kw + s - 1) / s;
                int hi = W - 1 + p - kw < 0 ? 0 : (W - 1 + p - kw) / s + 1;
                hi = hi < OW ? hi : OW;
                for (int ow = lo; ow < hi; ow++) {
                    const int at = h * W + ow * s - p + kw;
                    const float v = xp[at];
                    const int take = max_beats(v, yp[ow]);
                    yp[ow] = take ? v : yp[ow];
                    ap[ow] = take ? at : ap[ow];
                }
            }
    }
}

void nn_cpu_maxpool_fwd(const nn_pool_geom *g, const float *x, float *y, int32_t *argmax)
{
    if (g->k == 2 && g->stride == 2 && g->pad == 0) {
        maxpool_fwd_2x2(g, x, y, argmax);
        return;
    }
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const size_t planes = (size_t)g->N * g->C;
    /* planes are independent: the split cannot change a result */
#pragma omp parallel for schedule(static) num_threads(nn_par_threads()) if (planes * H * W >= 65536)
    for (size_t pl = 0; pl < planes; pl++)
        maxpool_plane(g, x + pl * H * W, y + pl * OH * OW, argmax + pl * OH * OW);
}

void nn_cpu_maxpool_bwd(const nn_pool_geom *g, const int32_t *argmax, const float *dy, float *dx)
{
    const size_t in_plane = (size_t)g->H * g->W, out_plane = (size_t)g->OH * g->OW;
    const size_t planes = (size_t)g->N * g->C;
    for (size_t pl = 0; pl < planes; pl++) {
        const int32_t *restrict ap = argmax + pl * out_plane;
        const float *restrict dyp = dy + pl * out_plane;
        float *restrict dxp = dx + pl * in_plane;
        for (size_t o = 0; o < out_plane; o++)
            dxp[ap[o]] += dyp[o];
    }
}

void nn_cpu_avgpool_fwd(const nn_pool_geom *g, const float *x, float *y)
{
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const float inv = 1.0f / (float)(g->k * g->k);
    const size_t planes = (size_t)g->N * g->C;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *restrict xp = x + pl * H * W;
        float *restrict yp = y + pl * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            int h0, h1;
            window_span(oh, H, g, &h0, &h1);
            for (int ow = 0; ow < OW; ow++) {
                int w0, w1;
                window_span(ow, W, g, &w0, &w1);
                float s = 0.0f;
                for (int h = h0; h < h1; h++)
                    for (int w = w0; w < w1; w++)
                        s += xp[h * W + w];
                yp[oh * OW + ow] = s * inv;
            }
        }
    }
}

void nn_cpu_avgpool_bwd(const nn_pool_geom *g, const float *dy, float *dx)
{
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const float inv = 1.0f / (float)(g->k * g->k);
    const size_t planes = (size_t)g->N * g->C;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *restrict dyp = dy + pl * OH * OW;
        float *restrict dxp = dx + pl * H * W;
        for (int oh = 0; oh < OH; oh++) {
            int h0, h1;
            window_span(oh, H, g, &h0, &h1);
            for (int ow = 0; ow < OW; ow++) {
                int w0, w1;
                window_span(ow, W, g, &w0, &w1);
                const float d = dyp[oh * OW + ow] * inv;
                for (int h = h0; h < h1; h++)
                    for (int w = w0; w < w1; w++)
                        dxp[h * W + w] += d;
            }
        }
    }
}

/* Sums in double: a plane can hold thousands of pixels (56x56), whose float
 * sum would lose digits the mean should keep; the cost is nil next to the
 * convolutions around it. */
void nn_cpu_gap_fwd(const float *x, float *y, int N, int C, int HW)
{
    const size_t planes = (size_t)N * C;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *restrict xp = x + pl * HW;
        double s = 0.0;
        for (int i = 0; i < HW; i++)
            s += xp[i];
        y[pl] = (float)(s / HW);
    }
}

void nn_cpu_gap_bwd(const float *dy, float *dx, int N, int C, int HW)
{
    const size_t planes = (size_t)N * C;
    for (size_t pl = 0; pl < planes; pl++) {
        float *restrict dxp = dx + pl * HW;
        const float d = dy[pl] / (float)HW;
        for (int i = 0; i < HW; i++)
            dxp[i] += d;
    }
}
