/* kern_cuda_sparse.cu: the sparse (multi-hot) first layer on the device --
 * the plan of a batch, the forward gather, the dense and the packed-rows
 * weight gradients (kern_cuda.h), with the results of kern_cpu_dense.c.
 *
 * The plan (nn_rows.h) lists the distinct indices of a batch, ascending,
 * each with its positions p = n*K + k, ascending.  Its keys are
 * (uint64)idx << 32 | p, and the CPU's plan is those keys in ascending
 * order; they are distinct (p is), so any correct sort gives the same array.
 * Here:
 *   1. keys[p] = idx[p] << 32 | p, in p order;
 *   2. cub::DeviceRadixSort::SortKeys over bits [32, 32 + bits(dim-1)) only:
 *      the sort is stable (documented) and the keys enter in ascending p, so
 *      sorting the index bits alone leaves each index's positions ascending
 *      -- the full-key order, in 2 passes for confA's 7306 instead of 6.  No
 *      bits (dim <= 1) or one key: the keys are already sorted;
 *   3. run heads (the first key of each index) are counted per tile of
 *      SCAN_THREADS keys, the tile counts scanned by one block, and each tile
 *      scanned again to give every head its rank r: rows[r] = idx,
 *      start[r] = its first key; the scanning block writes n_rows, start
 *      [n_rows] = N*K and the descriptor.  Integer scans: exact, and the
 *      same whatever the scheduling.  (The scan is ours, on cub::BlockScan,
 *      rather than cub::DeviceScan so that its scratch is a known size; see
 *      the plan buffer below.)
 *   4. by_sample: each sample's K indices sorted ascending (ties by k), for
 *      the forward.  Each position counts the entries of its sample that
 *      sort before it, (idx, k) lexicographically, and that count is its
 *      slot: O(K) reads per position, O(K^2) per sample, which for bag
 *      sizes like confA's 39 is a few hundred loads from L1.
 *
 * The plan buffer (offsets from its start, each part 256-aligned):
 *   [0, 64)     the descriptor: nn_sparse_plan (n_rows, rows, start, keys,
 *               K; device pointers into this buffer) and, after it, the
 *               by_sample pointer (plan_head below).  The optimiser kernels
 *               (kern_cuda_optim.cu) read the nn_sparse_plan at offset 0;
 *               nothing on the host knows n_rows until cuk_sparse_plan_rows
 *               asks for it;
 *   keys0, keys1   N*K uint64 each: the radix sort's double buffer; the
 *                  descriptor's keys is whichever holds the result;
 *   start       N*K + 1 uint32;   rows       N*K int32 (n_rows <= N*K);
 *   by_sample   N*K int32;        tile_sums  ceil(N*K / SCAN_THREADS) uint32;
 *   sort_temp   CUB's temporary storage (sort_temp_bound below).
 * CUB's own size query (d_temp_storage == NULL) is NOT device-free: it
 * calls cudaGetDevice and cudaFuncGetAttributes (PtxVersion, which makes a
 * context) and, on the upsweep/downsweep path, reads the SM count.  So
 * cuk_sparse_plan_work, which must run on the host alone, reserves a bound
 * computed from the formula of the path this CCCL takes for 64-bit keys on
 * sm_80 and sm_90 (onesweep; one tile of a few thousand keys needs 1 byte),
 * with every constant rounded the safe way; and CUB itself checks the size
 * it is given before it launches anything (AliasTemporaries returns
 * cudaErrorInvalidValue when short), so a CUB whose needs outgrew the bound
 * reports an error through the usual path instead of overrunning the plan.
 *
 * The forward, one thread per (n, o): y = b[o] (0 without a bias), then
 * + w[i, o] over by_sample[n] in order -- the terms and the order in which
 * nn_cpu_sparse_linear_fwd_rows adds into y[n, :] (it starts from the bias
 * and walks the plan's rows ascending, each row's positions ascending, so
 * sample n sees its indices ascending, a repeat twice in a row), hence
 * bit-identical.
 *
 * The packed gradient, one thread per (r, o): rg[r, o] = dy of the row's
 * first position, + dy of each further one in ascending position: the CPU's
 * sum_rows, bit for bit.  n_rows (and K) are on the device only, so a
 * fixed grid loops over n_rows*O (grid-stride), read from the descriptor.
 *
 * The dense scatter (gradient checks only: no plan, no scratch), one thread
 * per column o walking (n, k) in the CPU's order, so every dw element is
 * summed in the CPU's order by a single writer -- deterministic without
 * atomics, and parallel only over O, which is fine for its use.  The bias
 * gradient, one thread per column, n ascending: the CPU's add_column_sums.
 *
 * Nothing here waits for the device except cuk_sparse_plan_rows, whose
 * count the host needs: it copies the descriptor back, waits, then copies
 * the rows device to device on the stream. */
#include "kern_cuda.h"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include <stddef.h>
#include <stdint.h>

namespace {

constexpr size_t PLAN_HEAD = 64;  /* the descriptor's line, as the CPU table's */
constexpr size_t PART_ALIGN = 256; /* every part of the plan buffer */
constexpr int THREADS = 256;
constexpr int SCAN_THREADS = 512; /* keys per tile of the head scan, one a thread */
constexpr unsigned MAX_BLOCKS = 65535u * 16u; /* grid cap; kernels loop grid-stride */
/* The packed gradient's grid: its size, n_rows*O, is known on the device
 * only (the host has neither n_rows nor K), so a fixed grid of about one
 * H100/H200's worth of resident threads (132 SMs x 2048) loops over it; a
 * small batch pays for blocks that exit at once, a few microseconds. */
constexpr unsigned ROW_SUM_BLOCKS = 1024;

/* The descriptor at the start of the plan buffer: the nn_sparse_plan the
 * optimiser reads (offset 0, the contract), then what only this file reads. */
struct plan_head {
    nn_sparse_plan pl;
    const int32_t *by_sample; /* [N*K]: sample n's indices ascending at n*K */
};
static_assert(sizeof(plan_head) <= PLAN_HEAD, "the plan's descriptor outgrew its line");
static_assert(offsetof(plan_head, pl) == 0, "the nn_sparse_plan must open the plan buffer");

/* ------------------------------------------------------- the plan's size */

size_t align_part(size_t v)
{
    return (v + PART_ALIGN - 1) / PART_ALIGN * PART_ALIGN;
}

/* An upper bound of cub::DeviceRadixSort::SortKeys's temporary storage for
 * n 64-bit keys (DoubleBuffer form, so no third key buffer) sorted over at
 * most 31 bits.  CCCL's onesweep path (every sm_80/sm_90 policy for 64-bit
 * keys) needs, each part rounded up to 256 bytes, plus 255 for aligning the
 * base:
 *   bins      portions * passes * digits * sizeof(OffsetT)
 *   lookback  ceil(min(n, portion) / tile) * digits * sizeof(int)
 *   counters  portions * passes * sizeof(int)
 * with 8-bit digits (256), passes = ceil(31 / 8) = 4, a tile of 384 threads
 * times at least one key (3840 or more in fact), a portion of at least 2^27
 * keys, 4-byte offsets (n < 2^32).  Taken here with 8 bytes an entry and
 * one key a thread; the single-tile path (small n) needs 1 byte. */
size_t sort_temp_bound(size_t n)
{
    const size_t digits = 256, passes = 4, min_tile = 384, entry = 8;
    const size_t portions = n / ((size_t)1 << 27) + 1;
    const size_t in_portion = n < ((size_t)1 << 28) ? n : ((size_t)1 << 28);
    const size_t bins = portions * passes * digits * entry;
    const size_t lookback = (in_portion / min_tile + 1) * digits * entry;
    const size_t counters = portions * passes * entry;
    return bins + lookback + counters + 6 * PART_ALIGN;
}

/* Byte offsets of the parts of the plan buffer for N rows of K indices. */
struct plan_layout {
    size_t nnz, tiles;
    size_t keys0, keys1, start, rows, by_sample, tile_sums, temp, temp_bytes, total;
};

plan_layout layout_of(int N, int K)
{
    plan_layout L;
    L.nnz = N > 0 && K > 0 ? (size_t)N * (size_t)K : 0;
    L.tiles = (L.nnz + SCAN_THREADS - 1) / SCAN_THREADS;
    size_t at = align_part(PLAN_HEAD);
    L.keys0 = at, at = align_part(at + L.nnz * sizeof(uint64_t));
    L.keys1 = at, at = align_part(at + L.nnz * sizeof(uint64_t));
    L.start = at, at = align_part(at + (L.nnz + 1) * sizeof(uint32_t));
    L.rows = at, at = align_part(at + L.nnz * sizeof(int32_t));
    L.by_sample = at, at = align_part(at + L.nnz * sizeof(int32_t));
    L.tile_sums = at, at = align_part(at + L.tiles * sizeof(uint32_t));
    L.temp = at;
    L.temp_bytes = sort_temp_bound(L.nnz);
    L.total = L.temp + L.temp_bytes;
    return L;
}

/* Bits of the largest index, dim - 1 (0 when dim <= 1: nothing to sort). */
int index_bits(int dim)
{
    int bits = 0;
    for (uint32_t v = dim > 1 ? (uint32_t)(dim - 1) : 0u; v; v >>= 1)
        bits++;
    return bits;
}

unsigned blocks_for(size_t n)
{
    size_t b = (n + THREADS - 1) / THREADS;
    return b == 0 ? 1u : (b > MAX_BLOCKS ? MAX_BLOCKS : (unsigned)b);
}

/* ------------------------------------------------- per-element helpers */

__host__ __device__ inline uint64_t plan_key(int32_t i, size_t p)
{
    return (uint64_t)(uint32_t)i << 32 | (uint64_t)p;
}

/* Whether sorted key j is the first of its index. */
__host__ __device__ inline bool is_head(const uint64_t *keys, size_t j)
{
    return j == 0 || (keys[j] >> 32) != (keys[j - 1] >> 32);
}

/* The batch row of a key (nn_sparse_plan_sample). */
__host__ __device__ inline uint32_t key_sample(uint64_t key, int K)
{
    return (uint32_t)key / (uint32_t)K;
}

/* The slot of entry k of a sample's K indices once they are sorted by
 * (index, k): how many entries sort before it. */
__host__ __device__ inline int sample_rank(const int32_t *row, int K, int k)
{
    const uint32_t v = (uint32_t)row[k];
    int rank = 0;
    for (int j = 0; j < K; j++) {
        const uint32_t u = (uint32_t)row[j];
        rank += u < v || (u == v && j < k);
    }
    return rank;
}

/* y[n, o]: the bias, then w[i, o] over the sample's sorted indices. */
__host__ __device__ inline float fwd_one(const int32_t *sorted_row, int K, const float *w, const float *b, int O,
                                         int o)
{
    float acc = b ? b[o] : 0.0f;
    for (int j = 0; j < K; j++)
        acc += w[(size_t)(uint32_t)sorted_row[j] * (size_t)O + (size_t)o];
    return acc;
}

/* rg[r, o]: dy of row r's positions, ascending, from a copy of the first. */
__host__ __device__ inline float row_sum_one(const nn_sparse_plan &pl, const float *dy, int O, size_t r, int o)
{
    uint32_t p = pl.start[r];
    const uint32_t end = pl.start[r + 1];
    float acc = dy[(size_t)key_sample(pl.keys[p], pl.K) * (size_t)O + (size_t)o];
    for (p++; p < end; p++)
        acc += dy[(size_t)key_sample(pl.keys[p], pl.K) * (size_t)O + (size_t)o];
    return acc;
}

/* db[o] + Σ_n dy[n, o], n ascending. */
__host__ __device__ inline float column_sum(const float *dy, float db0, int N, int O, int o)
{
    float acc = db0;
    for (int n = 0; n < N; n++)
        acc += dy[(size_t)n * (size_t)O + (size_t)o];
    return acc;
}

/* Column o of the dense scatter dw[idx[n, k], :] += dy[n, :], (n, k) in order. */
__host__ __device__ inline void scatter_column(const int32_t *idx, const float *dy, float *dw, int N, int K, int O,
                                               int o)
{
    for (int n = 0; n < N; n++) {
        const float d = dy[(size_t)n * (size_t)O + (size_t)o];
        const int32_t *row = idx + (size_t)n * (size_t)K;
        for (int k = 0; k < K; k++)
            dw[(size_t)(uint32_t)row[k] * (size_t)O + (size_t)o] += d;
    }
}

/* -------------------------------------------------------------- kernels */

#define FOR_EACH(e, n)                                                                                               \
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < (n); e += (size_t)gridDim.x * blockDim.x)

__global__ void make_keys_kernel(const int32_t *idx, uint64_t *keys, size_t nnz)
{
    FOR_EACH(p, nnz)
    {
        keys[p] = plan_key(idx[p], p);
    }
}

/* Heads in each tile of SCAN_THREADS sorted keys, into tile_sums[tile]. */
__global__ void __launch_bounds__(SCAN_THREADS) count_heads_kernel(const uint64_t *keys, size_t nnz,
                                                                   uint32_t *tile_sums)
{
    using Reduce = cub::BlockReduce<uint32_t, SCAN_THREADS>;
    __shared__ typename Reduce::TempStorage tmp;
    const size_t j = (size_t)blockIdx.x * SCAN_THREADS + threadIdx.x;
    const uint32_t flag = j < nnz && is_head(keys, j);
    const uint32_t sum = Reduce(tmp).Sum(flag);
    if (threadIdx.x == 0)
        tile_sums[blockIdx.x] = sum;
}

/* One block: tile_sums becomes its exclusive prefix sum (each tile's first
 * row), the total is n_rows; writes start[n_rows] = nnz and the descriptor
 * (head, with n_rows filled in). */
__global__ void __launch_bounds__(SCAN_THREADS) scan_tiles_kernel(uint32_t *tile_sums, size_t tiles, uint32_t nnz,
                                                                  uint32_t *start, plan_head head, plan_head *out)
{
    using Scan = cub::BlockScan<uint32_t, SCAN_THREADS>;
    __shared__ typename Scan::TempStorage tmp;
    uint32_t carry = 0;
    for (size_t base = 0; base < tiles; base += SCAN_THREADS) {
        const size_t i = base + threadIdx.x;
        uint32_t v = i < tiles ? tile_sums[i] : 0u, ex, total;
        Scan(tmp).ExclusiveSum(v, ex, total);
        if (i < tiles)
            tile_sums[i] = carry + ex;
        carry += total;
        __syncthreads(); /* tmp is reused */
    }
    if (threadIdx.x == 0) {
        start[carry] = nnz;
        head.pl.n_rows = carry;
        *out = head;
    }
}

/* Each head's rank r = its tile's first row + heads before it in the tile:
 * rows[r] = its index, start[r] = its key's place. */
__global__ void __launch_bounds__(SCAN_THREADS) place_heads_kernel(const uint64_t *keys, size_t nnz,
                                                                   const uint32_t *tile_first, int32_t *rows,
                                                                   uint32_t *start)
{
    using Scan = cub::BlockScan<uint32_t, SCAN_THREADS>;
    __shared__ typename Scan::TempStorage tmp;
    const size_t j = (size_t)blockIdx.x * SCAN_THREADS + threadIdx.x;
    const uint32_t flag = j < nnz && is_head(keys, j);
    uint32_t ex;
    Scan(tmp).ExclusiveSum(flag, ex);
    if (flag) {
        const uint32_t r = tile_first[blockIdx.x] + ex;
        rows[r] = (int32_t)(keys[j] >> 32);
        start[r] = (uint32_t)j;
    }
}

__global__ void by_sample_kernel(const int32_t *idx, int32_t *by_sample, size_t nnz, int K)
{
    FOR_EACH(p, nnz)
    {
        const size_t n = p / (size_t)K;
        const int k = (int)(p - n * (size_t)K);
        const int32_t *row = idx + n * (size_t)K;
        by_sample[n * (size_t)K + (size_t)sample_rank(row, K, k)] = row[k];
    }
}

__global__ void fwd_kernel(const plan_head *head, const float *w, const float *b, float *y, int N, int O)
{
    const int K = head->pl.K;
    const int32_t *by_sample = head->by_sample;
    const size_t n_out = (size_t)N * (size_t)O;
    FOR_EACH(e, n_out)
    {
        const size_t n = e / (size_t)O;
        const int o = (int)(e - n * (size_t)O);
        y[e] = fwd_one(by_sample + n * (size_t)K, K, w, b, O, o);
    }
}

/* rg[r, :] for r < n_rows (read here: the grid is sized for the bound). */
__global__ void row_sums_kernel(const nn_sparse_plan *plan, const float *dy, float *rg, int O)
{
    const nn_sparse_plan pl = *plan;
    const size_t n_out = pl.n_rows * (size_t)O;
    FOR_EACH(e, n_out)
    {
        const size_t r = e / (size_t)O;
        rg[e] = row_sum_one(pl, dy, O, r, (int)(e - r * (size_t)O));
    }
}

__global__ void column_sums_kernel(const float *dy, float *db, int N, int O)
{
    FOR_EACH(o, (size_t)O)
    {
        db[o] = column_sum(dy, db[o], N, O, (int)o);
    }
}

__global__ void scatter_kernel(const int32_t *idx, const float *dy, float *dw, int N, int K, int O)
{
    FOR_EACH(o, (size_t)O)
    {
        scatter_column(idx, dy, dw, N, K, O, (int)o);
    }
}

} // namespace

/* ------------------------------------------------------------ entries */

size_t cuk_sparse_plan_work(int N, int K)
{
    return layout_of(N, K).total;
}

cudaError_t cuk_sparse_plan(cudaStream_t s, const int32_t *idx, int N, int K, int dim, void *plan)
{
    const plan_layout L = layout_of(N, K);
    if (L.nnz > UINT32_MAX) /* a position must fit a key's low half (nn_kern_cpu.h: N*K < 2^32) */
        return cudaErrorInvalidValue;
    char *base = (char *)plan;
    uint64_t *keys0 = (uint64_t *)(base + L.keys0), *keys1 = (uint64_t *)(base + L.keys1);
    uint32_t *start = (uint32_t *)(base + L.start), *tile_sums = (uint32_t *)(base + L.tile_sums);
    int32_t *rows = (int32_t *)(base + L.rows), *by_sample = (int32_t *)(base + L.by_sample);

    const uint64_t *keys = keys0;
    if (L.nnz > 0) {
        make_keys_kernel<<<blocks_for(L.nnz), THREADS, 0, s>>>(idx, keys0, L.nnz);
        const int bits = index_bits(dim);
        if (L.nnz > 1 && bits > 0) {
            cub::DoubleBuffer<uint64_t> db(keys0, keys1);
            size_t temp_bytes = L.temp_bytes;
            cudaError_t e = cub::DeviceRadixSort::SortKeys(base + L.temp, temp_bytes, db, (uint32_t)L.nnz, 32,
                                                           32 + bits, s);
            if (e != cudaSuccess)
                return e;
            keys = db.Current();
        }
        count_heads_kernel<<<(unsigned)L.tiles, SCAN_THREADS, 0, s>>>(keys, L.nnz, tile_sums);
    }
    const plan_head head = {{0, rows, start, keys, K}, by_sample};
    scan_tiles_kernel<<<1, SCAN_THREADS, 0, s>>>(tile_sums, L.tiles, (uint32_t)L.nnz, start, head,
                                                 (plan_head *)plan);
    if (L.nnz > 0) {
        place_heads_kernel<<<(unsigned)L.tiles, SCAN_THREADS, 0, s>>>(keys, L.nnz, tile_sums, rows, start);
        by_sample_kernel<<<blocks_for(L.nnz), THREADS, 0, s>>>(idx, by_sample, L.nnz, K);
    }
    return cudaGetLastError();
}

cudaError_t cuk_sparse_linear_fwd(cudaStream_t s, const void *plan, const float *w, const float *b, float *y, int N,
                                  int O)
{
    if (N <= 0 || O <= 0)
        return cudaSuccess;
    const size_t n_out = (size_t)N * (size_t)O;
    fwd_kernel<<<blocks_for(n_out), THREADS, 0, s>>>((const plan_head *)plan, w, b, y, N, O);
    return cudaGetLastError();
}

cudaError_t cuk_sparse_linear_bwd(cudaStream_t s, const int32_t *idx, const float *dy, float *dw, float *db, int N,
                                  int K, int O)
{
    if (N <= 0 || O <= 0)
        return cudaSuccess;
    if (db)
        column_sums_kernel<<<blocks_for((size_t)O), THREADS, 0, s>>>(dy, db, N, O);
    if (K > 0 && dw)
        scatter_kernel<<<blocks_for((size_t)O), THREADS, 0, s>>>(idx, dy, dw, N, K, O);
    return cudaGetLastError();
}

size_t cuk_sparse_plan_rows(cudaStream_t s, const void *plan, int32_t *rows, cudaError_t *e)
{
    nn_sparse_plan pl;
    cudaError_t err = cudaMemcpyAsync(&pl, plan, sizeof pl, cudaMemcpyDeviceToHost, s);
    if (err == cudaSuccess)
        err = cudaStreamSynchronize(s);
    if (err == cudaSuccess && pl.n_rows > 0)
        err = cudaMemcpyAsync(rows, pl.rows, pl.n_rows * sizeof *rows, cudaMemcpyDeviceToDevice, s);
    if (err != cudaSuccess) {
        if (e)
            *e = err;
        return (size_t)-1;
    }
    return pl.n_rows;
}

cudaError_t cuk_sparse_linear_bwd_rows(cudaStream_t s, const void *plan, const float *dy, float *rg, float *db, int N,
                                       int O)
{
    if (N <= 0 || O <= 0)
        return cudaSuccess;
    if (db)
        column_sums_kernel<<<blocks_for((size_t)O), THREADS, 0, s>>>(dy, db, N, O);
    if (rg) /* n_rows and K are on the device only: a fixed grid that loops */
        row_sums_kernel<<<ROW_SUM_BLOCKS, THREADS, 0, s>>>((const nn_sparse_plan *)plan, dy, rg, O);
    return cudaGetLastError();
}
