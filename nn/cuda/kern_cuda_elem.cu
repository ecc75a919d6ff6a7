/* kern_cuda_elem: the element-wise kernels of the CUDA backend (ReLU,
 * addition, accumulation, inverted dropout) and the bias kernels that follow
 * a GEMM or a convolution.
 *
 * Element-wise ops are bit-identical to kern_cpu_elem.c: each element goes
 * through the same float operations in the same order, which no partition
 * of the elements across threads can change (and --fmad=false keeps nvcc
 * from fusing a multiply into an add the CPU rounds separately).  The loops
 * are grid-stride with size_t indices, so any n fits any grid; the grid is
 * capped because a thread that walks several elements costs nothing more.
 *
 * Dropout's mask is the CPU's counter-based hash, not a device generator:
 * element i of the call is element first+i of the tensor and hashes
 * key + (first+i)·φ with SplitMix64's finaliser, key = nn_mix64(seed):
 * the CPU's functions themselves (nn_kern_shared.h).  The key, the 53-bit
 * keep threshold and the float scale 1/(1-p) are computed on the host by
 * those expressions (64-bit integer arithmetic wraps
 * identically on both sides; the threshold and the scale go through the
 * host's double arithmetic exactly as the CPU kernel's do), so the device
 * only repeats the per-element integer hash and one float multiply.
 *
 * Bias gradients are sums, but the CPU's order of each is fixed and short
 * enough to keep, so they are bit-identical too:
 *  - a linear layer's db[o] += dy[n,o] for n ascending, straight into db[o]:
 *    one thread per column walks the rows in that order (the reads of a warp
 *    are one contiguous run of a row);
 *  - a convolution's db[c] += sum_run(dy[n,c,:]) for n ascending, where
 *    sum_run (kern_cpu_conv.c) keeps eight float partial sums, lane k taking
 *    the elements j ≡ k (mod 8) in ascending j, combined as
 *    ((a0+a4)+(a1+a5))+((a2+a6)+(a3+a7)).  One block per channel: eight
 *    threads per image walk its plane as those eight lanes, three shuffles
 *    combine them in that very pairing, and thread 0 adds the images' sums
 *    into db[c] in image order.  No atomics, so run to run the result is
 *    the same, and it is the CPU's to the bit. */
#include "kern_cuda.h"
#include "nn_kern_shared.h"

constexpr int kThreads = 256;         /* element-wise blocks */
constexpr unsigned kMaxBlocks = 8192; /* grid cap of grid-stride loops */

static unsigned blocks_for(size_t n)
{
    size_t b = (n + kThreads - 1) / kThreads;
    return (unsigned)(b < kMaxBlocks ? b : kMaxBlocks);
}

static __device__ __forceinline__ size_t first_index()
{
    return (size_t)blockIdx.x * blockDim.x + threadIdx.x;
}

static __device__ __forceinline__ size_t grid_stride()
{
    return (size_t)gridDim.x * blockDim.x;
}

/* ---- element-wise ---- */

/* NaN stays NaN (NaN < 0 is false), as on the CPU; y may be x. */
static __global__ void relu_fwd_k(const float *x, float *y, size_t n)
{
    for (size_t i = first_index(); i < n; i += grid_stride()) {
        float v = x[i];
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

/* The CPU masks dy's bits with y > 0, i.e. adds dy or +0.0f: the select
 * below adds the same values. */
static __global__ void relu_bwd_k(const float *y, const float *dy, float *dx, size_t n)
{
    for (size_t i = first_index(); i < n; i += grid_stride())
        dx[i] += y[i] > 0.0f ? dy[i] : 0.0f;
}

static __global__ void add_k(const float *a, const float *b, float *y, size_t n)
{
    for (size_t i = first_index(); i < n; i += grid_stride())
        y[i] = a[i] + b[i];
}

static __global__ void acc_k(const float *dy, float *dx, size_t n)
{
    for (size_t i = first_index(); i < n; i += grid_stride())
        dx[i] += dy[i];
}

/* What a dropout draws from that changes step to step (a graphed step
 * reads it from the device: kern_cuda.h's cuk_vars). */
typedef struct dropout_draw {
    uint64_t key, first;
} dropout_draw;

/* threshold ~0 keeps nothing (p >= 1: the draw is below 2^53), and then
 * scale is 0 and y is 0.0f, as the CPU's p >= 1 branch writes. */
static __global__ void dropout_fwd_k(const float *x, float *y, uint8_t *mask, dropout_draw d, const dropout_draw *dp,
                                     uint64_t threshold, float scale, size_t n)
{
    if (dp)
        d = *dp;
    for (size_t i = first_index(); i < n; i += grid_stride()) {
        uint8_t keep = (uint8_t)nn_dropout_keep(d.key, d.first + (uint64_t)i, threshold);
        mask[i] = keep;
        y[i] = keep ? x[i] * scale : 0.0f;
    }
}

static __global__ void dropout_bwd_k(const uint8_t *mask, const float *dy, float *dx, float scale, size_t n)
{
    for (size_t i = first_index(); i < n; i += grid_stride())
        dx[i] += mask[i] ? dy[i] * scale : 0.0f;
}

/* ---- bias ---- */

/* y[n, o] += b[o] over the N·O elements. */
static __global__ void bias_rows_k(float *y, const float *b, size_t total, size_t O)
{
    for (size_t i = first_index(); i < total; i += grid_stride())
        y[i] += b[i % O];
}

/* y[n, c, hw] += b[c] over the N·C·HW elements. */
static __global__ void bias_nchw_k(float *y, const float *b, size_t total, size_t C, size_t HW)
{
    for (size_t i = first_index(); i < total; i += grid_stride())
        y[i] += b[(i / HW) % C];
}

/* db[o] += dy[n, o] for n ascending, one running float per column, as
 * kern_cpu_dense.c's add_column_sums. */
static __global__ void bias_grad_rows_k(const float *dy, float *db, int N, int O)
{
    for (size_t o = first_index(); o < (size_t)O; o += grid_stride()) {
        float acc = db[o];
        for (int n = 0; n < N; n++)
            acc += dy[(size_t)n * O + o];
        db[o] = acc;
    }
}

constexpr int kLanes = 8;                            /* sum_run's partial sums */
constexpr int kGradMaxThreads = 1024;                /* images per round: 128 */
constexpr int kGradMaxImages = kGradMaxThreads / kLanes;

/* One block per channel c.  Thread t is lane t % 8 of image n0 + t / 8 of
 * the round starting at image n0; a warp holds four whole images. */
static __global__ void __launch_bounds__(kGradMaxThreads)
    bias_grad_nchw_k(const float *dy, float *db, int N, int C, int HW)
{
    __shared__ float image_sum[kGradMaxImages];
    const int c = blockIdx.x;
    const int lane = threadIdx.x % kLanes, slot = threadIdx.x / kLanes, per_round = blockDim.x / kLanes;
    float total = 0.0f;
    if (threadIdx.x == 0)
        total = db[c];
    for (int n0 = 0; n0 < N; n0 += per_round) { /* uniform over the block */
        const int n = n0 + slot;
        float a = 0.0f; /* acc[lane] = 0, then its elements in ascending j */
        if (n < N) {
            const float *plane = dy + ((size_t)n * C + c) * (size_t)HW;
            for (int j = lane; j < HW; j += kLanes)
                a += plane[j];
        }
        /* Lane k < 4: a_k + a_{k+4}; lanes 0 and 2: (a0+a4)+(a1+a5) and
         * (a2+a6)+(a3+a7); lane 0: their sum.  The pairs never leave an
         * image's eight lanes for the lanes whose result is kept. */
        a += __shfl_down_sync(0xffffffffu, a, 4);
        a += __shfl_down_sync(0xffffffffu, a, 1);
        a += __shfl_down_sync(0xffffffffu, a, 2);
        if (lane == 0)
            image_sum[slot] = a;
        __syncthreads();
        if (threadIdx.x == 0) {
            const int images = N - n0 < per_round ? N - n0 : per_round;
            for (int i = 0; i < images; i++)
                total += image_sum[i];
        }
        __syncthreads(); /* image_sum is rewritten by the next round */
    }
    if (threadIdx.x == 0)
        db[c] = total;
}

cudaError_t cuk_relu_fwd(cudaStream_t s, const float *x, float *y, size_t n)
{
    if (n == 0)
        return cudaSuccess;
    relu_fwd_k<<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
    return cudaGetLastError();
}

cudaError_t cuk_relu_bwd(cudaStream_t s, const float *y, const float *dy, float *dx, size_t n)
{
    if (n == 0 || !dx)
        return cudaSuccess;
    relu_bwd_k<<<blocks_for(n), kThreads, 0, s>>>(y, dy, dx, n);
    return cudaGetLastError();
}

cudaError_t cuk_add_fwd(cudaStream_t s, const float *a, const float *b, float *y, size_t n)
{
    if (n == 0)
        return cudaSuccess;
    add_k<<<blocks_for(n), kThreads, 0, s>>>(a, b, y, n);
    return cudaGetLastError();
}

cudaError_t cuk_acc(cudaStream_t s, const float *dy, float *dx, size_t n)
{
    if (n == 0 || !dx)
        return cudaSuccess;
    acc_k<<<blocks_for(n), kThreads, 0, s>>>(dy, dx, n);
    return cudaGetLastError();
}

cudaError_t cuk_dropout_fwd(cudaStream_t s, const float *x, float *y, uint8_t *mask, float p, uint64_t seed,
                            uint64_t first, size_t n, cuk_vars *gv)
{
    if (n == 0)
        return cudaSuccess;
    dropout_draw d;
    d.key = nn_mix64(seed);
    d.first = first;
    const dropout_draw *dp = cuk_vars_put(gv, d);
    if (!cuk_vars_launch(gv))
        return cudaSuccess;
    const uint64_t threshold = p >= 1.0f ? ~(uint64_t)0 : nn_dropout_threshold(p);
    dropout_fwd_k<<<blocks_for(n), kThreads, 0, s>>>(x, y, mask, d, dp, threshold, nn_dropout_scale(p), n);
    return cudaGetLastError();
}

cudaError_t cuk_dropout_bwd(cudaStream_t s, const uint8_t *mask, const float *dy, float *dx, float p, size_t n)
{
    if (n == 0 || !dx)
        return cudaSuccess;
    dropout_bwd_k<<<blocks_for(n), kThreads, 0, s>>>(mask, dy, dx, nn_dropout_scale(p), n);
    return cudaGetLastError();
}

cudaError_t cuk_bias_rows(cudaStream_t s, float *y, const float *b, int N, int O)
{
    if (N <= 0 || O <= 0 || !b)
        return cudaSuccess;
    const size_t total = (size_t)N * (size_t)O;
    bias_rows_k<<<blocks_for(total), kThreads, 0, s>>>(y, b, total, (size_t)O);
    return cudaGetLastError();
}

cudaError_t cuk_bias_grad_rows(cudaStream_t s, const float *dy, float *db, int N, int O)
{
    if (N <= 0 || O <= 0 || !db)
        return cudaSuccess;
    bias_grad_rows_k<<<blocks_for((size_t)O), kThreads, 0, s>>>(dy, db, N, O);
    return cudaGetLastError();
}

cudaError_t cuk_bias_nchw(cudaStream_t s, float *y, const float *b, int N, int C, int HW)
{
    if (N <= 0 || C <= 0 || HW <= 0 || !b)
        return cudaSuccess;
    const size_t total = (size_t)N * (size_t)C * (size_t)HW;
    bias_nchw_k<<<blocks_for(total), kThreads, 0, s>>>(y, b, total, (size_t)C, (size_t)HW);
    return cudaGetLastError();
}

cudaError_t cuk_bias_grad_nchw(cudaStream_t s, const float *dy, float *db, int N, int C, int HW)
{
    /* HW == 0 still runs: the CPU adds +0.0f per image, which turns a
     * -0.0f of db into +0.0f. */
    if (N <= 0 || C <= 0 || HW < 0 || !db)
        return cudaSuccess;
    /* Enough whole warps for the batch's images, at most 128 per round. */
    const size_t lanes = (size_t)N * kLanes;
    const int threads = lanes >= (size_t)kGradMaxThreads ? kGradMaxThreads : (int)((lanes + 31) / 32 * 32);
    bias_grad_nchw_k<<<(unsigned)C, threads, 0, s>>>(dy, db, N, C, HW);
    return cudaGetLastError();
}

/* ---- uint8 input ---- */

/* One thread per output element, in output order (coalesced writes; the
 * channels-last reads stride by C bytes, which the L2 cache absorbs), the
 * C tables of 256 floats in shared memory when they fit in the 48 KiB a
 * launch gets without opting in (C <= 48), else read from global memory. */
static __global__ void u8_normalize_k(const uint8_t *raw, const float *lut, float *y, size_t total, int C, int64_t P,
                                      int channels_last, int shared)
{
    extern __shared__ float t_sh[];
    const float *t = lut;
    if (shared) { /* uniform over the grid */
        for (int i = threadIdx.x; i < C * 256; i += blockDim.x)
            t_sh[i] = lut[i];
        __syncthreads();
        t = t_sh;
    }
    const size_t CP = (size_t)C * (size_t)P;
    for (size_t o = first_index(); o < total; o += grid_stride()) {
        size_t row = o / CP, rem = o - row * CP;
        size_t c = rem / (size_t)P, p = rem - c * (size_t)P;
        size_t at = row * CP + (channels_last ? p * (size_t)C + c : c * (size_t)P + p);
        y[o] = t[c * 256 + raw[at]];
    }
}

cudaError_t cuk_u8_normalize(cudaStream_t s, const uint8_t *raw, const float *lut, float *y, int n, int C, int64_t P,
                             int channels_last)
{
    size_t total = (size_t)n * (size_t)C * (size_t)P;
    if (total == 0)
        return cudaSuccess;
    const size_t bytes = (size_t)C * 256 * sizeof(float);
    const int shared = bytes <= 48 * 1024;
    u8_normalize_k<<<blocks_for(total), kThreads, shared ? bytes : 0, s>>>(raw, lut, y, total, C, P, channels_last,
                                                                           shared);
    return cudaGetLastError();
}
