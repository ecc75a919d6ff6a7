/* kern_cuda_pool.cu: max, average and global average pooling and batch
 * normalisation on the device (kern_cuda.h), with the semantics and, where
 * the reference fixes it, the order of operations of kern_cpu_pool.c and
 * kern_cpu_norm.c.
 *
 * Pooling, forward: one thread per output.  A window is clamped to the
 * input exactly as window_span() does on the CPU, and the maximum starts at
 * the window's first real element and scans rows top to bottom, columns
 * left to right, with the CPU's rule (a strictly larger value, or the first
 * NaN against a number, wins).  That is the order both CPU paths (the 2x2
 * one and the general row-at-a-time one) reduce to for a single output, so
 * the value and the winner (flat h*W+w in the plane, first on ties) are the
 * CPU's bit for bit.  Padding never takes part: nn_pool_geom_init
 * guarantees every window holds a real element, so no -inf sentinel is
 * needed and a window of real -infs still names its first element, as on
 * the CPU.  The average sums its real elements in the same order into a
 * float and multiplies by 1/(k*k), the reciprocal computed on the host as
 * the CPU does (count_include_pad: the divisor is always k*k).
 *
 * Pooling, backward: a gather, one thread per INPUT element, instead of the
 * CPU's scatter (which a GPU could only do with atomics, whose order, and
 * so whose float sum, would change from run to run when windows overlap,
 * stride < k).  The thread visits the outputs whose windows cover its
 * element in ascending output index (oh, then ow) -- the order the CPU's
 * scatter reaches that element in -- and adds, starting from dx's value, so
 * each dx is the CPU's sum, in the CPU's order, and a single writer owns
 * it.  Max pooling adds dy[o] only for the outputs whose argmax names the
 * element (argmax always lies inside its own window, so no contribution is
 * missed); average pooling adds dy[o]*(1/(k*k)) for every covering output.
 *
 * Global average pooling: one thread per (n, c) plane summing in double in
 * the CPU's order (a pooled map is small: 7x7 at the end of ResNet), so the
 * forward is bit-identical; the backward is element-wise.
 *
 * Batch norm, training: each channel's M = N*HW values are split into S
 * parts (bn_parts: about 1024 blocks in all, so that the early layers' 64
 * channels of 256 x 56 x 56 values do not leave a GPU mostly idle), each
 * summed in double by a block of its own (a fixed strided subset per
 * thread, then a fixed shuffle tree) into the caller's scratch; one thread
 * per channel then adds its S parts in part order.  So results are
 * deterministic run to run; they differ from the CPU's four-way partial
 * sums only in the order of double adds (the tests' 1e-5).  Two passes, as
 * the CPU: the mean, then Σ(x - mean)²; the per-channel kernel forms every
 * scalar (invstd = 1/sqrt(var+eps) in double, the running statistics with
 * the unbiased variance M/(M-1), the float scale (float)(gamma*invstd)) by
 * the CPU's expression with its float/double types, and the element-wise
 * kernel applies (x-mean)*scale+shift in float; --fmad=false keeps the
 * float ones uncontracted.  Inference is element-wise and bit-identical.
 * The backward is the same split: Σdy and Σdy*x̂ in double per part, the
 * channel's totals into dgamma and dbeta (one writer per channel), then
 * dx += k*(dy - mean_dy - x̂*mean_dy_xhat) in float, element-wise.
 *
 * Every kernel loops grid-stride over size_t indices, so any shape the
 * host accepts fits in a capped grid; nothing here waits for the device. */
#include "kern_cuda.h"

#include <stddef.h>
#include <stdint.h>

namespace {

constexpr int THREADS = 256;         /* element-wise and per-output kernels */
constexpr unsigned MAX_BLOCKS = 65535u * 16u; /* grid cap; kernels loop grid-stride */
constexpr int BN_THREADS = 512;      /* a block per part of a channel */

/* Blocks for n items, one per thread, capped (the kernels loop). */
unsigned blocks_for(size_t n)
{
    size_t b = (n + THREADS - 1) / THREADS;
    return b == 0 ? 1u : (b > MAX_BLOCKS ? MAX_BLOCKS : (unsigned)b);
}

/* ------------------------------------------------------------ pooling */

/* The part [*lo, *hi) of window o that lies inside an axis of n elements
 * (kern_cpu_pool.c's window_span). */
__host__ __device__ inline void window_span(int o, int n, int k, int stride, int pad, int *lo, int *hi)
{
    int start = o * stride - pad;
    int end = start + k;
    *lo = start < 0 ? 0 : start;
    *hi = end > n ? n : end;
}

/* The outputs [*lo, *hi) of an axis of `out` outputs whose windows cover
 * input element i: o*stride - pad <= i <= o*stride - pad + k - 1. */
__host__ __device__ inline void covering(int i, int out, int k, int stride, int pad, int *lo, int *hi)
{
    int first = i + pad - k + 1; /* o*stride >= first */
    *lo = first <= 0 ? 0 : (first + stride - 1) / stride;
    int last = (i + pad) / stride; /* i + pad >= 0 */
    *hi = last + 1 < out ? last + 1 : out;
}

/* "v beats best": larger, or the first NaN against a number (max_beats). */
__host__ __device__ inline bool max_beats(float v, float best)
{
    return v > best || (v != v && best == best);
}

/* One output of max pooling over plane xp: the winner's value and flat
 * index, scanning the clamped window row by row from its first element. */
__host__ __device__ inline void maxpool_one(const nn_pool_geom &g, const float *xp, int oh, int ow, float *y,
                                            int32_t *at)
{
    int h0, h1, w0, w1;
    window_span(oh, g.H, g.k, g.stride, g.pad, &h0, &h1);
    window_span(ow, g.W, g.k, g.stride, g.pad, &w0, &w1);
    float best = xp[h0 * g.W + w0];
    int best_at = h0 * g.W + w0;
    for (int h = h0; h < h1; h++)
        for (int w = w0; w < w1; w++) {
            const float v = xp[h * g.W + w];
            if (max_beats(v, best)) {
                best = v;
                best_at = h * g.W + w;
            }
        }
    *y = best;
    *at = best_at;
}

/* dx of input (h, w) of one plane after max pooling's backward: dx0 plus
 * dy of every covering output that picked it, in ascending output index. */
__host__ __device__ inline float maxpool_bwd_one(const nn_pool_geom &g, const int32_t *ap, const float *dyp, int h,
                                                 int w, float dx0)
{
    int oh0, oh1, ow0, ow1;
    covering(h, g.OH, g.k, g.stride, g.pad, &oh0, &oh1);
    covering(w, g.OW, g.k, g.stride, g.pad, &ow0, &ow1);
    const int32_t at = h * g.W + w;
    float acc = dx0;
    for (int oh = oh0; oh < oh1; oh++)
        for (int ow = ow0; ow < ow1; ow++) {
            const int o = oh * g.OW + ow;
            if (ap[o] == at)
                acc += dyp[o];
        }
    return acc;
}

/* One output of average pooling: the window's real elements summed in
 * float, row by row, times inv = 1/(k*k). */
__host__ __device__ inline float avgpool_one(const nn_pool_geom &g, const float *xp, int oh, int ow, float inv)
{
    int h0, h1, w0, w1;
    window_span(oh, g.H, g.k, g.stride, g.pad, &h0, &h1);
    window_span(ow, g.W, g.k, g.stride, g.pad, &w0, &w1);
    float s = 0.0f;
    for (int h = h0; h < h1; h++)
        for (int w = w0; w < w1; w++)
            s += xp[h * g.W + w];
    return s * inv;
}

/* dx of input (h, w) after average pooling's backward: dx0 plus
 * dy[o]*inv of every covering output, in ascending output index. */
__host__ __device__ inline float avgpool_bwd_one(const nn_pool_geom &g, const float *dyp, int h, int w, float inv,
                                                 float dx0)
{
    int oh0, oh1, ow0, ow1;
    covering(h, g.OH, g.k, g.stride, g.pad, &oh0, &oh1);
    covering(w, g.OW, g.k, g.stride, g.pad, &ow0, &ow1);
    float acc = dx0;
    for (int oh = oh0; oh < oh1; oh++)
        for (int ow = ow0; ow < ow1; ow++) {
            const float d = dyp[oh * g.OW + ow] * inv;
            acc += d;
        }
    return acc;
}

/* Grid-stride loop over [0, n). */
#define FOR_EACH(e, n)                                                                                               \
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < (n); e += (size_t)gridDim.x * blockDim.x)

__global__ void maxpool_fwd_kernel(nn_pool_geom g, const float *x, float *y, int32_t *argmax)
{
    const size_t out_plane = (size_t)g.OH * g.OW, in_plane = (size_t)g.H * g.W;
    const size_t n = (size_t)g.N * g.C * out_plane;
    FOR_EACH(e, n)
    {
        const size_t pl = e / out_plane;
        const int o = (int)(e - pl * out_plane);
        maxpool_one(g, x + pl * in_plane, o / g.OW, o % g.OW, &y[e], &argmax[e]);
    }
}

__global__ void maxpool_bwd_kernel(nn_pool_geom g, const int32_t *argmax, const float *dy, float *dx)
{
    const size_t out_plane = (size_t)g.OH * g.OW, in_plane = (size_t)g.H * g.W;
    const size_t n = (size_t)g.N * g.C * in_plane;
    FOR_EACH(e, n)
    {
        const size_t pl = e / in_plane;
        const int i = (int)(e - pl * in_plane);
        dx[e] = maxpool_bwd_one(g, argmax + pl * out_plane, dy + pl * out_plane, i / g.W, i % g.W, dx[e]);
    }
}

__global__ void avgpool_fwd_kernel(nn_pool_geom g, const float *x, float *y, float inv)
{
    const size_t out_plane = (size_t)g.OH * g.OW, in_plane = (size_t)g.H * g.W;
    const size_t n = (size_t)g.N * g.C * out_plane;
    FOR_EACH(e, n)
    {
        const size_t pl = e / out_plane;
        const int o = (int)(e - pl * out_plane);
        y[e] = avgpool_one(g, x + pl * in_plane, o / g.OW, o % g.OW, inv);
    }
}

__global__ void avgpool_bwd_kernel(nn_pool_geom g, const float *dy, float *dx, float inv)
{
    const size_t out_plane = (size_t)g.OH * g.OW, in_plane = (size_t)g.H * g.W;
    const size_t n = (size_t)g.N * g.C * in_plane;
    FOR_EACH(e, n)
    {
        const size_t pl = e / in_plane;
        const int i = (int)(e - pl * in_plane);
        dx[e] = avgpool_bwd_one(g, dy + pl * out_plane, i / g.W, i % g.W, inv, dx[e]);
    }
}

/* y[pl] = mean of plane pl, summed in double in index order. */
__global__ void gap_fwd_kernel(const float *x, float *y, size_t planes, int HW)
{
    FOR_EACH(pl, planes)
    {
        const float *xp = x + pl * (size_t)HW;
        double s = 0.0;
        for (int i = 0; i < HW; i++)
            s += xp[i];
        y[pl] = (float)(s / HW);
    }
}

__global__ void gap_bwd_kernel(const float *dy, float *dx, size_t n, int HW)
{
    FOR_EACH(e, n)
    {
        const float d = dy[e / (size_t)HW] / (float)HW;
        dx[e] += d;
    }
}

/* Pooling geometries the kernels can take: what nn_pool_geom_init accepts. */
bool pool_ok(const nn_pool_geom *g)
{
    return g->N > 0 && g->C > 0 && g->H > 0 && g->W > 0 && g->OH > 0 && g->OW > 0 && g->k > 0 && g->stride > 0;
}

/* ---------------------------------------------------------- batch norm */

/* Σ over the lanes of a warp, in a fixed butterfly. */
__device__ inline double warp_sum(double v)
{
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* Σ over the block (BN_THREADS threads, every one calling) in a fixed tree:
 * each warp's butterfly, then warp 0 over the warp sums.  sh holds
 * BN_THREADS/32 doubles; returns the total to every thread. */
__device__ double block_sum(double v, double *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double t = lane < BN_THREADS / 32 ? sh[lane] : 0.0;
        t = warp_sum(t);
        if (lane == 0)
            sh[BN_THREADS / 32] = t;
    }
    __syncthreads();
    const double total = sh[BN_THREADS / 32];
    __syncthreads(); /* sh is reused by the next call */
    return total;
}

/* The channel's e-th value (e in [0, N*HW)): sample e / HW, pixel e % HW. */
__host__ __device__ inline size_t chan_at(size_t e, int c, int C, int HW)
{
    const size_t n = e / (size_t)HW;
    return (n * (size_t)C + (size_t)c) * (size_t)HW + (e - n * (size_t)HW);
}

/* How many parts each channel's M = N·HW values are split into: enough
 * blocks to fill a GPU (about 1024), parts of at least 2048 values, at most
 * 64 parts. */
int bn_parts(int N, int C, int HW)
{
    const size_t M = (size_t)N * (size_t)HW;
    size_t by_blocks = (1024 + (size_t)C - 1) / (size_t)C, by_size = M / 2048;
    size_t S = by_blocks < by_size ? by_blocks : by_size;
    S = S < 1 ? 1 : S > 64 ? 64 : S;
    return (int)S;
}

/* Part s of channel c: its values [s·M/S, (s+1)·M/S). */
__device__ inline void part_range(size_t M, int S, int s, size_t *lo, size_t *hi)
{
    *lo = M * (size_t)s / (size_t)S;
    *hi = M * (size_t)(s + 1) / (size_t)S;
}

/* part[(c·S + s)·2 + k]: block (s, c) sums over its part, in double, x
 * (k = 0), or (x - mean[c])² with mean in fin[c·4] (k = 1). */
__global__ void __launch_bounds__(BN_THREADS) bn_part_kernel(const float *x, double *part, const double *fin, int k,
                                                             int N, int C, int HW, int S)
{
    __shared__ double sh[BN_THREADS / 32 + 1];
    const int c = blockIdx.x, s = blockIdx.y; /* C on x: grid.y stops at 65535 */
    const size_t M = (size_t)N * (size_t)HW;
    size_t lo, hi;
    part_range(M, S, s, &lo, &hi);
    const double mean = k ? fin[(size_t)c * 4] : 0.0;
    double acc = 0.0;
    for (size_t e = lo + threadIdx.x; e < hi; e += BN_THREADS) {
        const double v = x[chan_at(e, c, C, HW)];
        acc += k ? (v - mean) * (v - mean) : v;
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0)
        part[((size_t)c * S + s) * 2 + k] = acc;
}

/* Σ of channel c's S parts of kind k, in part order. */
__device__ inline double parts_sum(const double *part, int c, int S, int k)
{
    double t = 0.0;
    for (int s = 0; s < S; s++)
        t += part[((size_t)c * S + s) * 2 + k];
    return t;
}

/* fin[c·4] = the mean (double), from the parts' sums. */
__global__ void bn_mean_kernel(const double *part, double *fin, int N, int C, int HW, int S)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C)
        fin[(size_t)c * 4] = parts_sum(part, c, S, 0) / ((double)N * HW);
}

/* The CPU's scalar formulas, per channel: save, the running statistics,
 * and for the apply kernel the float mean and scale (fin[c·4+1], +2). */
__global__ void bn_stats_kernel(const double *part, double *fin, const float *gamma, float *save, float *run_mean,
                                float *run_var, float momentum, float eps, int N, int C, int HW, int S)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    const double Md = (double)N * HW, mean = fin[(size_t)c * 4];
    const double var = parts_sum(part, c, S, 1) / Md; /* biased */
    const double invstd = 1.0 / sqrt(var + (double)eps);
    save[c] = (float)mean;
    save[C + c] = (float)invstd;
    fin[(size_t)c * 4 + 1] = (double)(float)mean;
    fin[(size_t)c * 4 + 2] = (double)(float)(gamma[c] * invstd);
    const double unbiased = Md > 1.0 ? var * Md / (Md - 1.0) : var;
    run_mean[c] = (float)((1.0 - momentum) * run_mean[c] + (double)momentum * mean);
    run_var[c] = (float)((1.0 - momentum) * run_var[c] + (double)momentum * unbiased);
}

/* y = (x - mean)·scale + β, element-wise over the whole tensor. */
__global__ void bn_apply_kernel(const float *x, const double *fin, const float *beta, float *y, size_t n, int C,
                                int HW)
{
    FOR_EACH(e, n)
    {
        const int c = (int)((e / (size_t)HW) % (size_t)C);
        const float mean_f = (float)fin[(size_t)c * 4 + 1], scale = (float)fin[(size_t)c * 4 + 2];
        y[e] = (x[e] - mean_f) * scale + beta[c];
    }
}

/* y = (x - run_mean)·(float)(γ/sqrt(run_var+eps)) + β, element-wise. */
__global__ void bn_infer_kernel(const float *x, const float *gamma, const float *beta, const float *run_mean,
                                const float *run_var, float *y, float eps, size_t n, int C, int HW)
{
    FOR_EACH(e, n)
    {
        const int c = (int)((e / (size_t)HW) % (size_t)C);
        const double invstd = 1.0 / sqrt((double)run_var[c] + (double)eps);
        const float scale = (float)(gamma[c] * invstd);
        y[e] = (x[e] - run_mean[c]) * scale + beta[c];
    }
}

/* part[(c·S + s)·2 + 0, 1]: block (s, c) sums Σdy and Σdy·x̂ over its
 * part, in double (x̂ = (x - mean)·invstd from save). */
__global__ void __launch_bounds__(BN_THREADS) bn_bwd_part_kernel(const float *x, const float *save, const float *dy,
                                                                 double *part, int N, int C, int HW, int S)
{
    __shared__ double sh[BN_THREADS / 32 + 1];
    const int c = blockIdx.x, s = blockIdx.y; /* C on x: grid.y stops at 65535 */
    const size_t M = (size_t)N * (size_t)HW;
    size_t lo, hi;
    part_range(M, S, s, &lo, &hi);
    const float mean = save[c], invstd = save[C + c];
    double a_dy = 0.0, a_dy_xhat = 0.0;
    for (size_t e = lo + threadIdx.x; e < hi; e += BN_THREADS) {
        const size_t at = chan_at(e, c, C, HW);
        const double xhat = ((double)x[at] - mean) * invstd;
        a_dy += dy[at];
        a_dy_xhat += dy[at] * xhat;
    }
    a_dy = block_sum(a_dy, sh);
    a_dy_xhat = block_sum(a_dy_xhat, sh);
    if (threadIdx.x == 0) {
        part[((size_t)c * S + s) * 2] = a_dy;
        part[((size_t)c * S + s) * 2 + 1] = a_dy_xhat;
    }
}

/* dgamma, dbeta (one writer per channel), and for the dx kernel k =
 * γ·invstd and the two means (fin[c·4 .. c·4+2], float values). */
__global__ void bn_bwd_stats_kernel(const double *part, double *fin, const float *gamma, const float *save,
                                    float *dgamma, float *dbeta, int N, int C, int HW, int S)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    const double Md = (double)N * HW, sum_dy = parts_sum(part, c, S, 0), sum_dy_xhat = parts_sum(part, c, S, 1);
    if (dbeta)
        dbeta[c] += (float)sum_dy;
    if (dgamma)
        dgamma[c] += (float)sum_dy_xhat;
    fin[(size_t)c * 4] = (double)(float)((double)gamma[c] * save[C + c]);
    fin[(size_t)c * 4 + 1] = (double)(float)(sum_dy / Md);
    fin[(size_t)c * 4 + 2] = (double)(float)(sum_dy_xhat / Md);
}

/* dx += k·(dy - mean_dy - x̂·mean_dy_xhat), element-wise. */
__global__ void bn_bwd_dx_kernel(const float *x, const float *save, const float *dy, const double *fin, float *dx,
                                 size_t n, int C, int HW)
{
    FOR_EACH(e, n)
    {
        const int c = (int)((e / (size_t)HW) % (size_t)C);
        const float mean = save[c], invstd = save[C + c];
        const float k = (float)fin[(size_t)c * 4], mean_dy = (float)fin[(size_t)c * 4 + 1];
        const float mean_dy_xhat = (float)fin[(size_t)c * 4 + 2];
        const float xhat = (x[e] - mean) * invstd;
        dx[e] += k * (dy[e] - mean_dy - xhat * mean_dy_xhat);
    }
}

} // namespace

/* ------------------------------------------------------------ entries */

cudaError_t cuk_maxpool_fwd(cudaStream_t s, const nn_pool_geom *g, const float *x, float *y, int32_t *argmax)
{
    if (!pool_ok(g))
        return cudaSuccess;
    const size_t n = (size_t)g->N * g->C * g->OH * g->OW;
    maxpool_fwd_kernel<<<blocks_for(n), THREADS, 0, s>>>(*g, x, y, argmax);
    return cudaGetLastError();
}

cudaError_t cuk_maxpool_bwd(cudaStream_t s, const nn_pool_geom *g, const int32_t *argmax, const float *dy, float *dx)
{
    if (!pool_ok(g) || !dx)
        return cudaSuccess;
    const size_t n = (size_t)g->N * g->C * g->H * g->W;
    maxpool_bwd_kernel<<<blocks_for(n), THREADS, 0, s>>>(*g, argmax, dy, dx);
    return cudaGetLastError();
}

cudaError_t cuk_avgpool_fwd(cudaStream_t s, const nn_pool_geom *g, const float *x, float *y)
{
    if (!pool_ok(g))
        return cudaSuccess;
    const size_t n = (size_t)g->N * g->C * g->OH * g->OW;
    const float inv = 1.0f / (float)(g->k * g->k);
    avgpool_fwd_kernel<<<blocks_for(n), THREADS, 0, s>>>(*g, x, y, inv);
    return cudaGetLastError();
}

cudaError_t cuk_avgpool_bwd(cudaStream_t s, const nn_pool_geom *g, const float *dy, float *dx)
{
    if (!pool_ok(g) || !dx)
        return cudaSuccess;
    const size_t n = (size_t)g->N * g->C * g->H * g->W;
    const float inv = 1.0f / (float)(g->k * g->k);
    avgpool_bwd_kernel<<<blocks_for(n), THREADS, 0, s>>>(*g, dy, dx, inv);
    return cudaGetLastError();
}

cudaError_t cuk_gap_fwd(cudaStream_t s, const float *x, float *y, int N, int C, int HW)
{
    if (N <= 0 || C <= 0 || HW <= 0)
        return cudaSuccess;
    const size_t planes = (size_t)N * C;
    gap_fwd_kernel<<<blocks_for(planes), THREADS, 0, s>>>(x, y, planes, HW);
    return cudaGetLastError();
}

cudaError_t cuk_gap_bwd(cudaStream_t s, const float *dy, float *dx, int N, int C, int HW)
{
    if (N <= 0 || C <= 0 || HW <= 0 || !dx)
        return cudaSuccess;
    const size_t n = (size_t)N * C * HW;
    gap_bwd_kernel<<<blocks_for(n), THREADS, 0, s>>>(dy, dx, n, HW);
    return cudaGetLastError();
}

size_t cuk_bn_scratch(int N, int C, int HW)
{
    if (N <= 0 || C <= 0 || HW <= 0)
        return 1;
    return (size_t)C * (size_t)bn_parts(N, C, HW) * 2 + (size_t)C * 4;
}

cudaError_t cuk_bn_fwd_train(cudaStream_t s, const float *x, const float *gamma, const float *beta, float *y,
                             float *save, float *run_mean, float *run_var, float momentum, float eps, int N, int C,
                             int HW, double *scratch)
{
    if (N <= 0 || C <= 0 || HW <= 0)
        return cudaSuccess;
    const int S = bn_parts(N, C, HW);
    double *part = scratch, *fin = scratch + (size_t)C * S * 2;
    const dim3 grid((unsigned)C, (unsigned)S);
    const unsigned per_c = (unsigned)((C + 127) / 128);
    bn_part_kernel<<<grid, BN_THREADS, 0, s>>>(x, part, fin, 0, N, C, HW, S);
    bn_mean_kernel<<<per_c, 128, 0, s>>>(part, fin, N, C, HW, S);
    bn_part_kernel<<<grid, BN_THREADS, 0, s>>>(x, part, fin, 1, N, C, HW, S);
    bn_stats_kernel<<<per_c, 128, 0, s>>>(part, fin, gamma, save, run_mean, run_var, momentum, eps, N, C, HW, S);
    const size_t n = (size_t)N * C * HW;
    bn_apply_kernel<<<blocks_for(n), THREADS, 0, s>>>(x, fin, beta, y, n, C, HW);
    return cudaGetLastError();
}

cudaError_t cuk_bn_fwd_infer(cudaStream_t s, const float *x, const float *gamma, const float *beta,
                             const float *run_mean, const float *run_var, float *y, float eps, int N, int C, int HW)
{
    if (N <= 0 || C <= 0 || HW <= 0)
        return cudaSuccess;
    const size_t n = (size_t)N * C * HW;
    bn_infer_kernel<<<blocks_for(n), THREADS, 0, s>>>(x, gamma, beta, run_mean, run_var, y, eps, n, C, HW);
    return cudaGetLastError();
}

cudaError_t cuk_bn_bwd(cudaStream_t s, const float *x, const float *gamma, const float *save, const float *dy,
                       float *dx, float *dgamma, float *dbeta, int N, int C, int HW, double *scratch)
{
    if (N <= 0 || C <= 0 || HW <= 0 || (!dx && !dgamma && !dbeta))
        return cudaSuccess;
    const int S = bn_parts(N, C, HW);
    double *part = scratch, *fin = scratch + (size_t)C * S * 2;
    bn_bwd_part_kernel<<<dim3((unsigned)C, (unsigned)S), BN_THREADS, 0, s>>>(x, save, dy, part, N, C, HW, S);
    bn_bwd_stats_kernel<<<(unsigned)((C + 127) / 128), 128, 0, s>>>(part, fin, gamma, save, dgamma, dbeta, N, C, HW, S);
    if (dx) {
        const size_t n = (size_t)N * C * HW;
        bn_bwd_dx_kernel<<<blocks_for(n), THREADS, 0, s>>>(x, save, dy, fin, dx, n, C, HW);
    }
    return cudaGetLastError();
}
