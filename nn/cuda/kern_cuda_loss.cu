/* kern_cuda_loss: softmax cross-entropy with its top-1/top-5 counts, Σw²,
 * and the fold of a batch's metrics into a pass's sums, on the device.
 *
 * Each result lands in a device record (nn_step_metrics, nn_pass_acc) that
 * the host reads when it wants to, so none of these waits for the device.
 * Every sum over many terms is made by blocks whose threads each own a
 * fixed set of terms, summed in a fixed order, and combine in a fixed tree
 * (the loss inside one block; Σw² by parts, through the caller's scratch,
 * added in part order).  Nothing depends on timing (no float atomics), so
 * a result is the same run to run; it differs from the CPU's sequential sum
 * only by the rounding of double additions (the tests allow 1e-6
 * relative).
 *
 * Softmax cross-entropy (kern_cpu_loss.c has the formulas): a group of G
 * lanes (a power of two up to a warp, chosen from K so each lane has a few
 * logits) takes one row at a time, rows r = group, group + groups, ...
 * Per row the group finds the max, the Σ exp(x - max) in double, the
 * label's rank and, when asked, writes dlogits; the group's first lane adds
 * the row's loss to the group's running double in row order.  Everything
 * that decides a result per element is the CPU's: the max is exact (a max
 * does not round) and NaN only when the first logit is, as the CPU's
 * sequential `>` gives; the exps are expf of the same float difference;
 * the loss term is m + log S - x[label] in double; dlogits is e·inv with
 * inv = (float)(1/(S·N)) and the label's 1/N taken off after, in float; the
 * rank counts ties against the label and is K for a NaN label logit.  Only
 * S, a double sum of float exps, is summed in another order (lanes, then a
 * butterfly, which gives every lane the same bits), and expf may differ
 * from glibc's in the last ulp.  The row loop's trip count is the same for
 * every thread (rows past N are idle turns), so the groups' shuffles always
 * have all their lanes.
 *
 * Σw² keeps the CPU's exact terms (a float squared in double is exact):
 * the tensor is cut into parts of 64 Ki values (at most 512), a block per
 * part sums it per thread in ascending index, eight loads in flight, then
 * in the block's tree, into the caller's scratch; one thread adds the
 * parts in order to *acc.  Deterministic for a given n; one block alone
 * would read at one SM's share of the memory bandwidth.
 *
 * The metrics fold is one thread doing cpu_metrics_fold's arithmetic, in
 * its order, on doubles: bit-identical. */
#include <math.h>

#include "kern_cuda.h"
#include "nn_kern_shared.h"

constexpr int kXentThreads = 1024;
constexpr int kSumsqThreads = 1024;
constexpr int kSumsqUnroll = 8;
constexpr unsigned kFullMask = 0xffffffffu;

/* ---- block-wide fixed-order sums ---- */

/* Butterfly over the G lanes of a group: every lane gets the same bits. */
template <int G, typename T> static __device__ __forceinline__ T group_sum(T v)
{
#pragma unroll
    for (int d = G / 2; d > 0; d /= 2)
        v += __shfl_xor_sync(kFullMask, v, d, G);
    return v;
}

template <int G> static __device__ __forceinline__ float group_max(float v)
{
#pragma unroll
    for (int d = G / 2; d > 0; d /= 2)
        v = fmaxf(v, __shfl_xor_sync(kFullMask, v, d, G));
    return v;
}

/* Pairwise tree over part[0..n), n a power of two; the block's threads all
 * call it; the result is part[0]. */
template <typename T> static __device__ void tree_sum(T *part, int n)
{
    for (int half = n / 2; half > 0; half /= 2) {
        __syncthreads();
        if ((int)threadIdx.x < half)
            part[threadIdx.x] += part[threadIdx.x + half];
    }
    __syncthreads();
}

/* ---- softmax cross-entropy ---- */

typedef struct row_result {
    double loss;
    int rank;
} row_result;

/* The max of row[0..K): exact whatever the order, NaN only when row[0] is
 * (the CPU's `row[j] > m` skips a later NaN, keeps a first one); fmaxf skips
 * NaNs. */
template <int G> static __device__ float row_max(const float *row, int K, int lane, bool active)
{
    float m = -INFINITY;
    for (int j = lane; active && j < K; j += G)
        m = fmaxf(m, row[j]);
    m = group_max<G>(m);
    return active && isnan(row[0]) ? row[0] : m;
}

/* Ties against the label, K for a NaN label logit (kern_cpu_loss.c). */
template <int G> static __device__ int label_rank(const float *row, int label, int K, int lane, bool active)
{
    int rank = 0;
    const float l = active ? row[label] : 0.0f;
    for (int j = lane; active && j < K; j += G)
        rank += row[j] > l || (row[j] == l && j != label);
    rank = group_sum<G>(rank);
    return active && isnan(l) ? K : rank;
}

/* One row by one group of G lanes; idle lanes (active false, a row past
 * N) take part in the shuffles only. */
template <int G>
static __device__ row_result xent_row(const float *row, int label, float *drow, int N, int K, int lane, bool active)
{
    const float m = row_max<G>(row, K, lane, active);
    double s = 0.0;
    for (int j = lane; active && j < K; j += G)
        s += expf(row[j] - m);
    s = group_sum<G>(s);
    row_result res = {0.0, 0};
    if (active)
        res.loss = (double)m + log(s) - (double)row[label];
    if (active && drow) {
        const float inv = (float)(1.0 / (s * N)), one = 1.0f / (float)N;
        for (int j = lane; j < K; j += G) {
            float d = expf(row[j] - m) * inv;
            drow[j] = j == label ? d - one : d;
        }
    }
    res.rank = label_rank<G>(row, label, K, lane, active);
    return res;
}

template <int G>
static __global__ void __launch_bounds__(kXentThreads)
    xent_k(const float *logits, const int32_t *labels, float *dlogits, int N, int K, nn_step_metrics *met)
{
    constexpr int groups = kXentThreads / G;
    __shared__ double loss_part[groups];
    __shared__ int top1_part[groups], top5_part[groups];
    const int group = threadIdx.x / G, lane = threadIdx.x % G;
    double total = 0.0; /* this group's rows, in row order */
    int hits1 = 0, hits5 = 0;
    for (int base = 0; K > 0 && base < N; base += groups) { /* the same turns for every thread */
        const int r = base + group;
        const bool active = r < N;
        const float *row = logits + (size_t)(active ? r : 0) * K;
        float *drow = dlogits ? dlogits + (size_t)(active ? r : 0) * K : NULL;
        const row_result res = xent_row<G>(row, active ? labels[r] : 0, drow, N, K, lane, active);
        if (active && lane == 0) {
            total += res.loss;
            hits1 += res.rank < 1;
            hits5 += res.rank < 5;
        }
    }
    if (lane == 0) {
        loss_part[group] = total;
        top1_part[group] = hits1;
        top5_part[group] = hits5;
    }
    tree_sum(loss_part, groups);
    tree_sum(top1_part, groups);
    tree_sum(top5_part, groups);
    if (threadIdx.x == 0) {
        met->xent = N > 0 ? loss_part[0] / N : 0.0;
        met->sumsq = 0.0;
        met->top1 = top1_part[0];
        met->top5 = top5_part[0];
    }
}

/* Lanes per row: a few logits per lane, at most a warp. */
static int xent_group(int K)
{
    int g = 1;
    while (g < 32 && g * 4 < K)
        g *= 2;
    return g;
}

/* ---- Σw² ---- */

/* Parts of w each block sums: one per 64 Ki values, at most kSumsqParts,
 * so a 25M-float model keeps every SM reading (one block alone read at a
 * single SM's share of the bandwidth). */
constexpr size_t kSumsqPer = 65536;
constexpr size_t kSumsqParts = 512;

static size_t sumsq_parts(size_t n)
{
    size_t p = (n + kSumsqPer - 1) / kSumsqPer;
    return p < 1 ? 1 : p > kSumsqParts ? kSumsqParts : p;
}

/* Block b sums its part w[b·n/P, (b+1)·n/P): thread t the values t + k·T
 * for k ascending (T = the block size), kSumsqUnroll loads at a time so
 * they are in flight together, adds in order; then the block's tree; the
 * part's sum goes to part_out[b]. */
static __global__ void __launch_bounds__(kSumsqThreads) sumsq_k(const float *w0, size_t n0, double *part_out,
                                                               size_t parts)
{
    __shared__ double part[kSumsqThreads];
    const size_t T = kSumsqThreads;
    const size_t lo = n0 * (size_t)blockIdx.x / parts, hi = n0 * ((size_t)blockIdx.x + 1) / parts;
    const float *w = w0 + lo;
    const size_t n = hi - lo;
    size_t i = threadIdx.x;
    double s = 0.0;
    for (; i + (kSumsqUnroll - 1) * T < n; i += kSumsqUnroll * T) {
        float v[kSumsqUnroll];
#pragma unroll
        for (int k = 0; k < kSumsqUnroll; k++)
            v[k] = w[i + k * T];
#pragma unroll
        for (int k = 0; k < kSumsqUnroll; k++)
            s += (double)v[k] * v[k];
    }
    for (; i < n; i += T)
        s += (double)w[i] * w[i];
    part[threadIdx.x] = s;
    tree_sum(part, kSumsqThreads);
    if (threadIdx.x == 0)
        part_out[blockIdx.x] = part[0];
}

/* *acc += the parts' sums, in part order (one thread: at most 512 adds). */
static __global__ void sumsq_total_k(const double *part, size_t parts, double *acc)
{
    double t = 0.0;
    for (size_t b = 0; b < parts; b++)
        t += part[b];
    *acc += t;
}

/* ---- metrics fold ---- */

/* step: the first bad step's number when a loss is not finite; a graphed
 * step reads it from the device (kern_cuda.h's cuk_vars). */
static __global__ void metrics_fold_k(const nn_step_metrics *m, nn_pass_acc *acc, int n, double l2, int64_t step,
                                      const int64_t *stepp)
{
    nn_metrics_fold_one(m, acc, n, l2, stepp ? *stepp : step);
}

cudaError_t cuk_softmax_xent(cudaStream_t s, const float *logits, const int32_t *labels, float *dlogits, int N,
                             int K, nn_step_metrics *m)
{
    /* Always one launch: the record is written even for an empty batch. */
    switch (xent_group(K)) {
    case 1:
        xent_k<1><<<1, kXentThreads, 0, s>>>(logits, labels, dlogits, N, K, m);
        break;
    case 2:
        xent_k<2><<<1, kXentThreads, 0, s>>>(logits, labels, dlogits, N, K, m);
        break;
    case 4:
        xent_k<4><<<1, kXentThreads, 0, s>>>(logits, labels, dlogits, N, K, m);
        break;
    case 8:
        xent_k<8><<<1, kXentThreads, 0, s>>>(logits, labels, dlogits, N, K, m);
        break;
    case 16:
        xent_k<16><<<1, kXentThreads, 0, s>>>(logits, labels, dlogits, N, K, m);
        break;
    default:
        xent_k<32><<<1, kXentThreads, 0, s>>>(logits, labels, dlogits, N, K, m);
    }
    return cudaGetLastError();
}

size_t cuk_sumsq_scratch(size_t n)
{
    return sumsq_parts(n);
}

cudaError_t cuk_sumsq(cudaStream_t s, const float *w, size_t n, double *acc, double *scratch)
{
    if (n == 0)
        return cudaSuccess;
    const size_t parts = sumsq_parts(n);
    sumsq_k<<<(unsigned)parts, kSumsqThreads, 0, s>>>(w, n, scratch, parts);
    sumsq_total_k<<<1, 1, 0, s>>>(scratch, parts, acc);
    return cudaGetLastError();
}

cudaError_t cuk_metrics_fold(cudaStream_t s, const nn_step_metrics *m, nn_pass_acc *acc, int n, double l2,
                             int64_t step, cuk_vars *gv)
{
    const int64_t *stepp = cuk_vars_put(gv, step);
    if (!cuk_vars_launch(gv))
        return cudaSuccess;
    metrics_fold_k<<<1, 1, 0, s>>>(m, acc, n, l2, step, stepp);
    return cudaGetLastError();
}
