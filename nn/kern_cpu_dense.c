/* kern_cpu_dense: the linear layer and its sparse (multi-hot) form.
 *
 * Dense linear, y[N,O] = x[N,I]·w[O,I]^T + b: every product goes through
 * OpenBLAS's sgemm.  The forward pass first writes the bias into each row of
 * y and then lets sgemm add x·w^T with beta = 1, so no second pass over y is
 * needed.  The backward pass uses beta = 1 as well, which is exactly the
 * accumulate (+=) contract of nn_kern_cpu.h:
 *   dx[N,I] += dy[N,O]·w[O,I]      (skipped when dx is NULL)
 *   dw[O,I] += dy^T[O,N]·x[N,I]
 *   db[O]   += Σ_n dy[n,:]          (skipped when db is NULL)
 * The bias sum walks the rows in order, so it is deterministic; sgemm is
 * deterministic for a fixed thread count, which is all the header promises.
 *
 * Sparse linear: row n of the input is K indices into [0, I) standing for
 * the multi-hot vector that counts them, and w is laid out [I,O] so that the
 * row of one index is O contiguous floats.  The forward pass gathers:
 *   y[n,:] = b + Σ_k w[idx[n,k], :]
 * and the backward pass scatters dy back into the same rows:
 *   dw[idx[n,k], :] += dy[n,:]
 * A repeated index in a row is simply visited twice, which is the count the
 * dense vector would hold.  Rows are processed in the fixed order (n, then k)
 * so two rows that share an index add into dw in the same order every run:
 * the result is bit-identical across runs without any atomics.  Both inner
 * loops add one row of O floats to another (add_row, SSE where available).
 *
 * Row-wise form (what training uses): the K·N positions p = n·K + k of a
 * batch are sorted once per batch by (idx[p], p) with a stable LSD radix
 * sort of 11-bit digits over the index (as many passes as I needs: two for
 * confA's 7306) into a plan: rows[r] is the r-th distinct index in
 * ascending order, and its positions follow in ascending p.
 *  - The forward walks the plan: each touched row of w is read once and
 *    added into the outputs of every position that holds it.  The gather
 *    above reads a row once per position, 10,000 scattered 4 KB rows a
 *    confA batch where the plan reads its 5,500 distinct rows in address
 *    order.  y[n,:] then sums its rows by ascending index rather than by k:
 *    another order of the same terms, fixed by the batch alone.  Threads
 *    own runs of batch rows, so the result does not depend on their number.
 *  - The backward packs the touched rows of the gradient: rg[r,:] is the
 *    sum of dy[n,:] over the positions of rows[r] in ascending p, which is
 *    the order the dense scatter adds them in, so each packed row equals its
 *    dense row value for value.  No pass touches an untouched row of the
 *    weight, and no memset of the dense gradient is needed: rg is
 *    overwritten.  Threads split the rows (each summed by one thread, in
 *    the fixed order).  Training does not pack: it leaves the rows as these
 *    sums for the optimiser step to take (nn_rows.h, kern_optim.c), and
 *    computes db alone here.
 *
 * Degenerate shapes (a zero dimension) are handled here rather than handed
 * to sgemm, which rejects leading dimensions of 0. */
#include "nn_kern_cpu.h"

#include <stddef.h>
#include <string.h>

#include <cblas.h>

#include "nn_par.h"

#include <omp.h>
#ifdef __SSE__
#include <xmmintrin.h>
#endif
/* cblas.h pulls in <complex.h>, whose macro I would rewrite the parameter
 * named I (input features) below; nothing here uses complex numbers. */
#undef I

/* ---- dense linear ---- */

/* y[n,:] = b, or 0 without a bias, so that sgemm can add into it. */
static void fill_rows_with_bias(float *y, const float *b, int N, int O)
{
    for (int n = 0; n < N; n++) {
        float *row = y + (size_t)n * O;
        if (b)
            memcpy(row, b, (size_t)O * sizeof *row);
        else
            memset(row, 0, (size_t)O * sizeof *row);
    }
}

/* db[o] += Σ_n dy[n,o], rows in order. */
static void add_column_sums(const float *dy, float *db, int N, int O)
{
    for (int n = 0; n < N; n++) {
        const float *row = dy + (size_t)n * O;
        for (int o = 0; o < O; o++)
            db[o] += row[o];
    }
}

void nn_cpu_linear_fwd(const float *x, const float *w, const float *b, float *y, int N, int I, int O)
{
    if (N <= 0 || O <= 0)
        return;
    fill_rows_with_bias(y, b, N, O);
    if (I <= 0)
        return;
    nn_par_sgemm(CblasNoTrans, CblasTrans, N, O, I, 1.0f, x, I, w, I, 1.0f, y, O);
}

void nn_cpu_linear_bwd(const float *x, const float *w, const float *dy, float *dx, float *dw, float *db, int N, int I,
                       int O)
{
    if (N <= 0 || O <= 0)
        return;
    if (db)
        add_column_sums(dy, db, N, O);
    if (I <= 0)
        return;
    if (dx)
        nn_par_sgemm(CblasNoTrans, CblasNoTrans, N, I, O, 1.0f, dy, O, w, I, 1.0f, dx, I);
    nn_par_sgemm(CblasTrans, CblasNoTrans, O, I, N, 1.0f, dy, O, x, I, 1.0f, dw, I);
}

/* ---- sparse linear ---- */

/* dst[0..O) += src[0..O).  Written with SSE (baseline on x86-64) because
 * GCC's -O2 does not vectorise loops of unknown length, and this is the
 * whole cost of the layer; lane-wise adds round exactly as the scalar tail
 * does, so the result is the same either way. */
static void add_row(float *restrict dst, const float *restrict src, int O)
{
    int o = 0;
#ifdef __SSE__
    for (; o + 8 <= O; o += 8) {
        __m128 a = _mm_add_ps(_mm_loadu_ps(dst + o), _mm_loadu_ps(src + o));
        __m128 b = _mm_add_ps(_mm_loadu_ps(dst + o + 4), _mm_loadu_ps(src + o + 4));
        _mm_storeu_ps(dst + o, a);
        _mm_storeu_ps(dst + o + 4, b);
    }
#endif
    for (; o < O; o++)
        dst[o] += src[o];
}

void nn_cpu_sparse_linear_fwd(const int32_t *idx, const float *w, const float *b, float *y, int N, int K, int O)
{
    if (N <= 0 || O <= 0)
        return;
    fill_rows_with_bias(y, b, N, O);
    /* Rows of y are independent: threads take contiguous runs of rows. */
#pragma omp parallel num_threads(nn_par_threads()) if (N >= 16)
    {
        long lo, hi;
        nn_par_share(N, omp_get_thread_num(), omp_get_num_threads(), 1, &lo, &hi);
        for (long n = lo; n < hi; n++) {
            float *yrow = y + (size_t)n * O;
            const int32_t *row_idx = idx + (size_t)n * K;
            for (int k = 0; k < K; k++)
                add_row(yrow, w + (size_t)row_idx[k] * O, O);
        }
    }
}

void nn_cpu_sparse_linear_bwd(const int32_t *idx, const float *dy, float *dw, float *db, int N, int K, int O)
{
    if (N <= 0 || O <= 0)
        return;
    if (db)
        add_column_sums(dy, db, N, O);
    /* Two rows of the batch may hit the same row of dw, so threads split
     * the columns instead: each walks every (n, k) in order over its own
     * slice of O, which keeps the per-element sum order of one thread. */
#pragma omp parallel num_threads(nn_par_threads()) if (O >= 64 && N >= 16)
    {
        long lo, hi;
        nn_par_share(O, omp_get_thread_num(), omp_get_num_threads(), 16, &lo, &hi);
        for (int n = 0; n < N && hi > lo; n++) {
            const float *dyrow = dy + (size_t)n * O + lo;
            const int32_t *row_idx = idx + (size_t)n * K;
            for (int k = 0; k < K; k++)
                add_row(dw + (size_t)row_idx[k] * O + lo, dyrow, (int)(hi - lo));
        }
    }
}

/* ---- sparse linear, row-wise ---- */

#define RADIX_BITS 11
#define RADIX (1 << RADIX_BITS)

size_t nn_cpu_sparse_plan_work(int N, int K)
{
    size_t nnz = N > 0 && K > 0 ? (size_t)N * (size_t)K : 0;
    /* two key arrays (ping-pong), run starts, the digit histogram, rows */
    return 2 * nnz * sizeof(uint64_t) + (nnz + 1) * sizeof(uint32_t) + RADIX * sizeof(uint32_t) +
           nnz * sizeof(int32_t);
}

/* Sorts key = index << 32 | position by index, stably; positions start in
 * ascending order, so the result is ordered by (index, position).  Returns
 * the array that holds the result (a or tmp). */
static uint64_t *sort_by_index(uint64_t *a, uint64_t *tmp, size_t n, int I, uint32_t *count)
{
    for (int shift = 32; shift < 64 && I > 1 && ((uint64_t)(I - 1) << 32) >> shift; shift += RADIX_BITS) {
        memset(count, 0, RADIX * sizeof *count);
        for (size_t p = 0; p < n; p++)
            count[(a[p] >> shift) & (RADIX - 1)]++;
        uint32_t sum = 0;
        for (int d = 0; d < RADIX; d++) {
            uint32_t c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (size_t p = 0; p < n; p++)
            tmp[count[(a[p] >> shift) & (RADIX - 1)]++] = a[p];
        uint64_t *t = a;
        a = tmp;
        tmp = t;
    }
    return a;
}

void nn_cpu_sparse_plan(nn_sparse_plan *pl, const int32_t *idx, int N, int K, int I, void *work)
{
    size_t nnz = N > 0 && K > 0 ? (size_t)N * (size_t)K : 0;
    uint64_t *a = work, *tmp = a + nnz;
    uint32_t *start = (uint32_t *)(tmp + nnz), *count = start + nnz + 1;
    int32_t *rows = (int32_t *)(count + RADIX);
    for (size_t p = 0; p < nnz; p++)
        a[p] = (uint64_t)(uint32_t)idx[p] << 32 | p;
    const uint64_t *keys = sort_by_index(a, tmp, nnz, I, count);
    size_t n_rows = 0;
    for (size_t p = 0; p < nnz; p++)
        if (p == 0 || keys[p] >> 32 != keys[p - 1] >> 32) {
            rows[n_rows] = (int32_t)(keys[p] >> 32);
            start[n_rows++] = (uint32_t)p;
        }
    start[n_rows] = (uint32_t)nnz;
    *pl = (nn_sparse_plan){.n_rows = n_rows, .rows = rows, .start = start, .keys = keys, .K = K};
}

void nn_cpu_sparse_linear_fwd_rows(const nn_sparse_plan *pl, const float *w, const float *b, float *y, int N, int O)
{
    if (N <= 0 || O <= 0)
        return;
    fill_rows_with_bias(y, b, N, O);
    double work = (double)pl->start[pl->n_rows] * O;
#pragma omp parallel num_threads(nn_par_threads()) if (work >= 65536)
    {
        /* Threads own runs of batch rows (a column split had them write the
         * same cache line of y at every add), walk the whole plan and skip
         * the positions of other threads' rows. */
        long lo, hi;
        nn_par_share(N, omp_get_thread_num(), omp_get_num_threads(), 1, &lo, &hi);
        uint32_t p_lo = (uint32_t)(lo * pl->K), p_hi = (uint32_t)(hi * pl->K);
        for (size_t r = 0; r < pl->n_rows && hi > lo; r++) {
            const float *wrow = w + (size_t)pl->rows[r] * O;
            for (uint32_t p = pl->start[r]; p < pl->start[r + 1]; p++) {
                uint32_t at = (uint32_t)pl->keys[p];
                if (at >= p_lo && at < p_hi)
                    add_row(y + (size_t)nn_sparse_plan_sample(pl, p) * O, wrow, O);
            }
        }
    }
}

/* rg[r,:] = Σ dy[n,:] over the positions of row r, in ascending position. */
static void sum_rows(const nn_sparse_plan *pl, const float *dy, float *rg, long r0, long r1, int O)
{
    for (long r = r0; r < r1; r++) {
        float *dst = rg + (size_t)r * O;
        uint32_t p = pl->start[r];
        memcpy(dst, dy + (size_t)nn_sparse_plan_sample(pl, p) * O, (size_t)O * sizeof *dst);
        for (p++; p < pl->start[r + 1]; p++)
            add_row(dst, dy + (size_t)nn_sparse_plan_sample(pl, p) * O, O);
    }
}

size_t nn_cpu_sparse_plan_rows(const nn_sparse_plan *pl, int32_t *rows)
{
    memcpy(rows, pl->rows, pl->n_rows * sizeof *rows);
    return pl->n_rows;
}

void nn_cpu_sparse_linear_bwd_rows(const nn_sparse_plan *pl, const float *dy, float *rg, float *db, int N, int O)
{
    if (N <= 0 || O <= 0)
        return;
    if (db)
        add_column_sums(dy, db, N, O);
    if (!rg)
        return;
    size_t nnz = pl->start[pl->n_rows];
    int t = (double)nnz * O >= 65536 ? nn_par_threads() : 1;
#pragma omp parallel num_threads(t) if (t > 1)
    {
        long lo, hi;
        nn_par_share((long)pl->n_rows, omp_get_thread_num(), omp_get_num_threads(), 1, &lo, &hi);
        sum_rows(pl, dy, rg, lo, hi, O);
    }
}
