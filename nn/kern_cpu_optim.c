/* kern_cpu_optim: SGD (with momentum) and Adam steps over one parameter tensor.
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
 *     w -= (lr/(1-β1^t)) · m / (sqrt(v)·(1/sqrt(1-β2^t)) + eps)
 *   The bias corrections are scalars computed once in double, as PyTorch's
 *   Python floats are; the per-element work is in float.
 *
 * Vectorisation: GCC's -O2 vectorises neither loop (unknown trip count, and
 * sqrtf's errno path), which made Adam 3-4x slower than memory speed.  So
 * the element loops are written once as a scalar step function and, where
 * SSE exists (all of x86-64), also four lanes at a time with the same
 * operations in the same order: IEEE single-precision lane arithmetic
 * rounds exactly as the scalar code does, so the result does not depend on
 * which path handled an element (the tail always runs scalar).  Adam and
 * lazy Adam also have eight AVX lanes, chosen at run time where the CPU
 * has AVX: their square root and divide were the limit even at memory
 * speed (7.3M floats of confA's first layer: 20 % faster; in cache 2×).
 * No FMA, which would round a multiply-add once instead of twice.
 *
 * Lazy Adam (torch.optim.SparseAdam 1.13) updates only the rows listed,
 * from the same row-sparse gradient; every other row keeps its weights, m
 * and v bit for bit.  Per element of a listed row, in SparseAdam's order
 * of operations (g' = g + 2·l2·w here too, for the listed rows only):
 *     m += (1-β1)·(g' - m);  v += (1-β2)·(g'² - v)
 *     w -= (lr·sqrt(1-β2^t)/(1-β1^t)) · (m / (sqrt(v) + eps))
 * Note where eps sits: outside the bias correction, unlike Adam above, as
 * SparseAdam has it.  Rows are split across threads; each row is updated
 * alone, so the split cannot change a result.
 *
 * The exact steps also take a row-sparse gradient (nn_row_grad: a sparse
 * first layer's, zero but on the rows a batch touched).  They walk all
 * rows; an unlisted row is handed to the same step functions with a
 * gradient read from a constant zero row, so each element goes through the
 * very operations the dense gradient would have given it and the result is
 * bit-identical, while the dense gradient (29 MB for confA) is never
 * cleared, scattered into or read.  A listed row whose gradient is still a
 * sum of dy rows is summed a chunk at a time just before its update, in the
 * order the packed form is summed in, so the two forms agree bit for bit.
 * Threads split the rows.
 *
 * nn_cpu_sumsq returns Σw² in double (the caller multiplies by λ), with four
 * interleaved partial sums so the adds pipeline; the order is fixed, so the
 * result is deterministic. */
#include "nn_kern_cpu.h"
#include "nn_par.h"

#include <omp.h>

/* Element-wise updates are split across threads above this size: the
 * partition cannot change a result, each element being updated alone. */
#define PAR_MIN 32768


#include <math.h>
#include <stddef.h>
#include <string.h>

#ifdef __SSE__
#include <xmmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#define CDS_X86_AVX 1
#include <immintrin.h>
#endif

/* ---- SGD ---- */

typedef struct sgd_coef {
    float lr, momentum, decay;
} sgd_coef;

static void sgd_scalar(float *w, const float *g, float *buf, size_t i0, size_t n, sgd_coef k)
{
    for (size_t i = i0; i < n; i++) {
        float b = k.momentum * buf[i] + (g[i] + k.decay * w[i]);
        buf[i] = b;
        w[i] -= k.lr * b;
    }
}

/* Returns how many leading elements it handled (a multiple of 4). */
static size_t sgd_lanes(float *w, const float *g, float *buf, size_t n, sgd_coef k)
{
    size_t i = 0;
#ifdef __SSE__
    __m128 lr = _mm_set1_ps(k.lr), mom = _mm_set1_ps(k.momentum), decay = _mm_set1_ps(k.decay);
    for (; i + 4 <= n; i += 4) {
        __m128 wi = _mm_loadu_ps(w + i);
        __m128 gi = _mm_add_ps(_mm_loadu_ps(g + i), _mm_mul_ps(decay, wi));
        __m128 b = _mm_add_ps(_mm_mul_ps(mom, _mm_loadu_ps(buf + i)), gi);
        _mm_storeu_ps(buf + i, b);
        _mm_storeu_ps(w + i, _mm_sub_ps(wi, _mm_mul_ps(lr, b)));
    }
#else
    (void)w, (void)g, (void)buf, (void)n, (void)k;
#endif
    return i;
}

/* One run of n elements; buf NULL is momentum-free SGD. */
static void sgd_range(float *w, const float *g, float *buf, size_t n, sgd_coef k)
{
    if (!buf) {
        for (size_t i = 0; i < n; i++)
            w[i] -= k.lr * (g[i] + k.decay * w[i]);
        return;
    }
    size_t done = sgd_lanes(w, g, buf, n, k);
    sgd_scalar(w, g, buf, done, n, k);
}

void nn_cpu_sgd_step(float *w, const float *g, float *buf, size_t n, float lr, float momentum, float l2)
{
    sgd_coef k = {lr, momentum, 2.0f * l2};
    if (momentum == 0.0f || !buf) {
        sgd_range(w, g, NULL, n, k);
        return;
    }
    int t = n >= PAR_MIN ? nn_par_threads() : 1;
#pragma omp parallel num_threads(t) if (t > 1)
    {
        long lo, hi;
        nn_par_share((long)n, omp_get_thread_num(), omp_get_num_threads(), 16, &lo, &hi);
        sgd_range(w + lo, g + lo, buf + lo, (size_t)(hi - lo), k);
    }
}

/* ---- Adam ---- */

typedef struct adam_coef {
    float step;         /* lr/(1-β1^t) */
    float inv_sqrt_bc2; /* 1/sqrt(1-β2^t) */
    float beta1, beta2, c1, c2, eps, decay;
} adam_coef;

static void adam_scalar(float *w, const float *g, float *m, float *v, size_t i0, size_t n, adam_coef k)
{
    for (size_t i = i0; i < n; i++) {
        float gi = g[i] + k.decay * w[i];
        float mi = k.beta1 * m[i] + k.c1 * gi;
        float vi = k.beta2 * v[i] + k.c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] -= k.step * mi / (sqrtf(vi) * k.inv_sqrt_bc2 + k.eps);
    }
}

static size_t adam_lanes(float *w, const float *g, float *m, float *v, size_t n, adam_coef k)
{
    size_t i = 0;
#ifdef __SSE__
    __m128 step = _mm_set1_ps(k.step), ibc2 = _mm_set1_ps(k.inv_sqrt_bc2), b1 = _mm_set1_ps(k.beta1);
    __m128 b2 = _mm_set1_ps(k.beta2), c1 = _mm_set1_ps(k.c1), c2 = _mm_set1_ps(k.c2);
    __m128 eps = _mm_set1_ps(k.eps), decay = _mm_set1_ps(k.decay);
    for (; i + 4 <= n; i += 4) {
        __m128 wi = _mm_loadu_ps(w + i);
        __m128 gi = _mm_add_ps(_mm_loadu_ps(g + i), _mm_mul_ps(decay, wi));
        __m128 mi = _mm_add_ps(_mm_mul_ps(b1, _mm_loadu_ps(m + i)), _mm_mul_ps(c1, gi));
        __m128 vi = _mm_add_ps(_mm_mul_ps(b2, _mm_loadu_ps(v + i)), _mm_mul_ps(_mm_mul_ps(c2, gi), gi));
        _mm_storeu_ps(m + i, mi);
        _mm_storeu_ps(v + i, vi);
        __m128 denom = _mm_add_ps(_mm_mul_ps(_mm_sqrt_ps(vi), ibc2), eps);
        _mm_storeu_ps(w + i, _mm_sub_ps(wi, _mm_div_ps(_mm_mul_ps(step, mi), denom)));
    }
#else
    (void)w, (void)g, (void)m, (void)v, (void)n, (void)k;
#endif
    return i;
}

#ifdef CDS_X86_AVX
/* Eight lanes, the same operations again (no FMA: a fused multiply-add
 * rounds once where the scalar code rounds twice). */
__attribute__((target("avx"))) static size_t adam_lanes8(float *w, const float *g, float *m, float *v, size_t n,
                                                          adam_coef k)
{
    __m256 step = _mm256_set1_ps(k.step), ibc2 = _mm256_set1_ps(k.inv_sqrt_bc2), b1 = _mm256_set1_ps(k.beta1);
    __m256 b2 = _mm256_set1_ps(k.beta2), c1 = _mm256_set1_ps(k.c1), c2 = _mm256_set1_ps(k.c2);
    __m256 eps = _mm256_set1_ps(k.eps), decay = _mm256_set1_ps(k.decay);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wi = _mm256_loadu_ps(w + i);
        __m256 gi = _mm256_add_ps(_mm256_loadu_ps(g + i), _mm256_mul_ps(decay, wi));
        __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(c1, gi));
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)), _mm256_mul_ps(_mm256_mul_ps(c2, gi), gi));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        __m256 denom = _mm256_add_ps(_mm256_mul_ps(_mm256_sqrt_ps(vi), ibc2), eps);
        _mm256_storeu_ps(w + i, _mm256_sub_ps(wi, _mm256_div_ps(_mm256_mul_ps(step, mi), denom)));
    }
    return i;
}
#endif

/* AVX lanes where the CPU has them, then SSE lanes, then the scalar tail:
 * every path rounds as the scalar code, so which one an element takes
 * cannot change it (the tests compare them on the same elements). */
static void adam_range(float *w, const float *g, float *m, float *v, size_t n, adam_coef k)
{
    size_t done = 0;
#ifdef CDS_X86_AVX
    if (__builtin_cpu_supports("avx"))
        done = adam_lanes8(w, g, m, v, n, k);
#endif
    done += adam_lanes(w + done, g + done, m + done, v + done, n - done, k);
    adam_scalar(w, g, m, v, done, n, k);
}

static adam_coef adam_coefs(float lr, float beta1, float beta2, float eps, float l2, long t)
{
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    return (adam_coef){
        .step = (float)((double)lr / bc1),
        .inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2)),
        .beta1 = beta1,
        .beta2 = beta2,
        .c1 = 1.0f - beta1,
        .c2 = 1.0f - beta2,
        .eps = eps,
        .decay = 2.0f * l2,
    };
}

void nn_cpu_adam_step(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                      float eps, float l2, long t)
{
    adam_coef k = adam_coefs(lr, beta1, beta2, eps, l2, t);
    int th = n >= PAR_MIN ? nn_par_threads() : 1;
#pragma omp parallel num_threads(th) if (th > 1)
    {
        long lo, hi;
        nn_par_share((long)n, omp_get_thread_num(), omp_get_num_threads(), 16, &lo, &hi);
        adam_range(w + lo, g + lo, m + lo, v + lo, (size_t)(hi - lo), k);
    }
}

/* ---- lazy Adam ---- */

typedef struct lazy_coef {
    float step;         /* lr·sqrt(1-β2^t)/(1-β1^t) */
    float c1, c2, eps, decay;
} lazy_coef;

static void lazy_scalar(float *w, const float *g, float *m, float *v, size_t i0, size_t n, lazy_coef k)
{
    for (size_t i = i0; i < n; i++) {
        float gi = g[i] + k.decay * w[i];
        float mi = m[i] + k.c1 * (gi - m[i]);
        float vi = v[i] + k.c2 * (gi * gi - v[i]);
        m[i] = mi;
        v[i] = vi;
        w[i] -= k.step * (mi / (sqrtf(vi) + k.eps));
    }
}

static size_t lazy_lanes(float *w, const float *g, float *m, float *v, size_t n, lazy_coef k)
{
    size_t i = 0;
#ifdef __SSE__
    __m128 step = _mm_set1_ps(k.step), c1 = _mm_set1_ps(k.c1), c2 = _mm_set1_ps(k.c2);
    __m128 eps = _mm_set1_ps(k.eps), decay = _mm_set1_ps(k.decay);
    for (; i + 4 <= n; i += 4) {
        __m128 wi = _mm_loadu_ps(w + i), mi = _mm_loadu_ps(m + i), vi = _mm_loadu_ps(v + i);
        __m128 gi = _mm_add_ps(_mm_loadu_ps(g + i), _mm_mul_ps(decay, wi));
        mi = _mm_add_ps(mi, _mm_mul_ps(c1, _mm_sub_ps(gi, mi)));
        vi = _mm_add_ps(vi, _mm_mul_ps(c2, _mm_sub_ps(_mm_mul_ps(gi, gi), vi)));
        _mm_storeu_ps(m + i, mi);
        _mm_storeu_ps(v + i, vi);
        __m128 q = _mm_div_ps(mi, _mm_add_ps(_mm_sqrt_ps(vi), eps));
        _mm_storeu_ps(w + i, _mm_sub_ps(wi, _mm_mul_ps(step, q)));
    }
#else
    (void)w, (void)g, (void)m, (void)v, (void)n, (void)k;
#endif
    return i;
}

#ifdef CDS_X86_AVX
__attribute__((target("avx"))) static size_t lazy_lanes8(float *w, const float *g, float *m, float *v, size_t n,
                                                          lazy_coef k)
{
    __m256 step = _mm256_set1_ps(k.step), c1 = _mm256_set1_ps(k.c1), c2 = _mm256_set1_ps(k.c2);
    __m256 eps = _mm256_set1_ps(k.eps), decay = _mm256_set1_ps(k.decay);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wi = _mm256_loadu_ps(w + i), mi = _mm256_loadu_ps(m + i), vi = _mm256_loadu_ps(v + i);
        __m256 gi = _mm256_add_ps(_mm256_loadu_ps(g + i), _mm256_mul_ps(decay, wi));
        mi = _mm256_add_ps(mi, _mm256_mul_ps(c1, _mm256_sub_ps(gi, mi)));
        vi = _mm256_add_ps(vi, _mm256_mul_ps(c2, _mm256_sub_ps(_mm256_mul_ps(gi, gi), vi)));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        __m256 q = _mm256_div_ps(mi, _mm256_add_ps(_mm256_sqrt_ps(vi), eps));
        _mm256_storeu_ps(w + i, _mm256_sub_ps(wi, _mm256_mul_ps(step, q)));
    }
    return i;
}
#endif

static void lazy_range(float *w, const float *g, float *m, float *v, size_t n, lazy_coef k)
{
    size_t done = 0;
#ifdef CDS_X86_AVX
    if (__builtin_cpu_supports("avx"))
        done = lazy_lanes8(w, g, m, v, n, k);
#endif
    done += lazy_lanes(w + done, g + done, m + done, v + done, n - done, k);
    lazy_scalar(w, g, m, v, done, n, k);
}

/* ---- steps over a row-sparse gradient ---- */

/* Rows are handed to the step functions above in chunks of at most
 * ZERO_CHUNK floats: an unlisted row as zero_row, so each element gets
 * exactly what a zero read from a dense gradient would give it, and a
 * listed row's pending sum taken into a chunk on the stack, in L1 when the
 * step reads it. */
#define ZERO_CHUNK 1024
static const float zero_row[ZERO_CHUNK];

enum { UPD_SGD, UPD_ADAM, UPD_LAZY };

typedef struct rows_update {
    float *w, *s1, *s2; /* weights and up to two state tensors, [*, cols] */
    size_t cols;
    int kind;
    sgd_coef sk;
    adam_coef ak;
    lazy_coef lk;
} rows_update;

static void update_run(const rows_update *u, size_t at, const float *g, size_t n)
{
    switch (u->kind) {
    case UPD_SGD:
        sgd_range(u->w + at, g, u->s1 ? u->s1 + at : NULL, n, u->sk);
        break;
    case UPD_ADAM:
        adam_range(u->w + at, g, u->s1 + at, u->s2 + at, n, u->ak);
        break;
    default:
        lazy_range(u->w + at, g, u->s1 + at, u->s2 + at, n, u->lk);
    }
}

/* Columns [c, c + len) of listed row j's gradient: in the packed rows, or
 * summed into buf in the order nn_cpu_sparse_linear_bwd_rows packs them
 * (a copy of the first dy row, then the others added in position order). */
static const float *listed_chunk(const nn_row_grad *g, size_t j, size_t cols, size_t c, size_t len, float *buf)
{
    if (g->rg)
        return g->rg + j * cols + c;
    const nn_sparse_plan *pl = g->plan;
    uint32_t p = pl->start[j];
    memcpy(buf, g->dy + (size_t)nn_sparse_plan_sample(pl, p) * cols + c, len * sizeof *buf);
    for (p++; p < pl->start[j + 1]; p++) {
        const float *src = g->dy + (size_t)nn_sparse_plan_sample(pl, p) * cols + c;
        for (size_t i = 0; i < len; i++)
            buf[i] += src[i];
    }
    return buf;
}

static size_t chunk_len(size_t cols, size_t c)
{
    return cols - c < ZERO_CHUNK ? cols - c : ZERO_CHUNK;
}

static void update_listed(const nn_row_grad *g, const rows_update *u, size_t j)
{
    float buf[ZERO_CHUNK];
    size_t at = (size_t)g->rows[j] * u->cols;
    for (size_t c = 0; c < u->cols; c += ZERO_CHUNK) {
        size_t len = chunk_len(u->cols, c);
        update_run(u, at + c, listed_chunk(g, j, u->cols, c, len, buf), len);
    }
}

/* First j with rows[j] >= r. */
static size_t first_listed(const int32_t *rows, size_t n_rows, long r)
{
    size_t lo = 0, hi = n_rows;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (rows[mid] < r)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Every row of [r0, r1): listed ones from their gradient, others from zero_row. */
static void update_all_rows(const nn_row_grad *g, const rows_update *u, long r0, long r1)
{
    size_t j = first_listed(g->rows, g->n_rows, r0);
    for (long r = r0; r < r1; r++) {
        if (j < g->n_rows && g->rows[j] == r) {
            update_listed(g, u, j++);
            continue;
        }
        for (size_t c = 0; c < u->cols; c += ZERO_CHUNK)
            update_run(u, (size_t)r * u->cols + c, zero_row, chunk_len(u->cols, c));
    }
}

/* Threads split all n_total rows (exact steps) or the listed ones alone
 * (lazy); each row is updated by one thread, alone, so the split cannot
 * change a result. */
static void rows_step(const nn_row_grad *g, const rows_update *u, size_t n_total)
{
    int lazy = u->kind == UPD_LAZY;
    size_t n = lazy ? g->n_rows : n_total;
    int th = n * u->cols >= PAR_MIN ? nn_par_threads() : 1;
#pragma omp parallel num_threads(th) if (th > 1)
    {
        long lo, hi;
        nn_par_share((long)n, omp_get_thread_num(), omp_get_num_threads(), 1, &lo, &hi);
        if (!lazy)
            update_all_rows(g, u, lo, hi);
        for (long j = lo; lazy && j < hi; j++)
            update_listed(g, u, (size_t)j);
    }
}

void nn_cpu_adam_rows_step(float *w, const nn_row_grad *g, size_t n_total, size_t cols, float *m, float *v, float lr,
                           float beta1, float beta2, float eps, float l2, long t)
{
    rows_update u = {.w = w, .s1 = m, .s2 = v, .cols = cols, .kind = UPD_ADAM,
                     .ak = adam_coefs(lr, beta1, beta2, eps, l2, t)};
    rows_step(g, &u, n_total);
}

void nn_cpu_sgd_rows_step(float *w, const nn_row_grad *g, size_t n_total, size_t cols, float *buf, float lr,
                          float momentum, float l2)
{
    rows_update u = {.w = w, .s1 = momentum == 0.0f ? NULL : buf, .cols = cols, .kind = UPD_SGD,
                     .sk = {lr, momentum, 2.0f * l2}};
    rows_step(g, &u, n_total);
}

void nn_cpu_lazy_adam_step(float *w, const nn_row_grad *g, size_t cols, float *m, float *v, float lr, float beta1,
                           float beta2, float eps, float l2, long t)
{
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    rows_update u = {.w = w, .s1 = m, .s2 = v, .cols = cols, .kind = UPD_LAZY,
                     .lk = {
                         .step = (float)((double)lr * sqrt(bc2) / bc1),
                         .c1 = 1.0f - beta1,
                         .c2 = 1.0f - beta2,
                         .eps = eps,
                         .decay = 2.0f * l2,
                     }};
    rows_step(g, &u, 0);
}

double nn_cpu_sumsq(const float *w, size_t n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)w[i] * w[i];
        s1 += (double)w[i + 1] * w[i + 1];
        s2 += (double)w[i + 2] * w[i + 2];
        s3 += (double)w[i + 3] * w[i + 3];
    }
    for (; i < n; i++)
        s0 += (double)w[i] * w[i];
    return (s0 + s1) + (s2 + s3);
}
