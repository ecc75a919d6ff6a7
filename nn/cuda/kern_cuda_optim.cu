/* kern_cuda_optim: SGD, Adam and lazy Adam steps on the device, dense and
 * over a row-sparse gradient (nn_row_grad), bit-identical to
 * kern_cpu_optim.c.
 *
 * Each element is updated alone, by the CPU's scalar step with the same
 * float operations in the same order and association (kern_cpu_optim.c's
 * header has the formulas), so the partition across threads cannot change
 * a result.  What makes the bits equal:
 *  - the per-call constants (Adam's lr/(1-β1^t) and 1/sqrt(1-β2^t), lazy
 *    Adam's lr·sqrt(1-β2^t)/(1-β1^t), 1-β, 2·l2) are computed on the host
 *    by the CPU's own expressions, in double where it uses double, with the
 *    host's libm, and passed in as floats;
 *  - the square root and the divide are __fsqrt_rn and __fdiv_rn, IEEE
 *    round-to-nearest like SSE's sqrtps and divps whatever -prec-sqrt and
 *    -prec-div say; adds and multiplies stay separate roundings because
 *    these files are compiled with --fmad=false.
 * The dense steps read and write four floats at a time when every pointer
 * is 16-byte aligned (the same per-element code on each lane).
 *
 * Row-sparse gradients.  The exact steps (sgd_rows, adam_rows) update every
 * row of the [n_total, cols] weight, an unlisted row with a gradient of
 * +0.0f, which is what the CPU reads from its zero row, so each element
 * takes the path the dense step with the dense gradient would give it.  The
 * list of rows is ascending; with a plan it lives in the plan's device
 * descriptor (rows, n_rows, start, keys, K), which every thread reads, so
 * the host never needs n_rows.  A warp owns a run of consecutive rows: it
 * finds the first listed row of its run once by binary search, then walks
 * the list alongside its rows as the CPU's update_all_rows does (all lanes
 * compute the same index, so no broadcast is needed); lanes split a row's
 * columns.  A listed row's gradient is g->rg's packed row when rg is set,
 * else the plan's sum of dy rows, one column per lane: a copy of the first
 * position's dy then the others added in ascending position, the order of
 * kern_cpu_optim.c's listed_chunk (which is also nn_cpu_sparse_linear_bwd_
 * rows's), so the two forms agree bit for bit.  Lazy Adam walks only the
 * listed rows, a warp per row, grid-stride: with a plan the grid cannot be
 * sized to n_rows, so it is a fixed grid whose idle warps exit at once.
 *
 * Graphed steps.  Each kernel takes its constants by value and, in a
 * graphed step, a device pointer to them too (kern_cuda.h's cuk_vars): the
 * learning rate and the bias corrections change from step to step while
 * the graph's arguments do not.  The constants are the same floats either
 * way, computed by the same host code, so a graphed step's bits are an
 * eager step's. */
#include <math.h>
#include <string.h>

#include "kern_cuda.h"

constexpr int kThreads = 256;         /* dense steps */
constexpr unsigned kMaxBlocks = 8192; /* grid cap of grid-stride loops */
constexpr int kRowThreads = 256;      /* row steps: 8 warps a block */
constexpr int kWarpsPerBlock = kRowThreads / 32;
constexpr unsigned kMaxRowBlocks = 4096;
constexpr unsigned kLazyPlanBlocks = 1024; /* lazy Adam when only the device knows n_rows */

/* ---- per-call constants, on the host, as kern_cpu_optim.c makes them ---- */

typedef struct sgd_coef {
    float lr, momentum, decay;
} sgd_coef;

typedef struct adam_coef {
    float step;         /* lr/(1-β1^t) */
    float inv_sqrt_bc2; /* 1/sqrt(1-β2^t) */
    float beta1, beta2, c1, c2, eps, decay;
} adam_coef;

typedef struct lazy_coef {
    float step; /* lr·sqrt(1-β2^t)/(1-β1^t) */
    float c1, c2, eps, decay;
} lazy_coef;

static sgd_coef sgd_coefs(float lr, float momentum, float l2)
{
    sgd_coef k;
    k.lr = lr;
    k.momentum = momentum;
    k.decay = 2.0f * l2;
    return k;
}

static adam_coef adam_coefs(float lr, float beta1, float beta2, float eps, float l2, long t)
{
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    adam_coef k;
    k.step = (float)((double)lr / bc1);
    k.inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    k.beta1 = beta1;
    k.beta2 = beta2;
    k.c1 = 1.0f - beta1;
    k.c2 = 1.0f - beta2;
    k.eps = eps;
    k.decay = 2.0f * l2;
    return k;
}

static lazy_coef lazy_coefs(float lr, float beta1, float beta2, float eps, float l2, long t)
{
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    lazy_coef k;
    k.step = (float)((double)lr * sqrt(bc2) / bc1);
    k.c1 = 1.0f - beta1;
    k.c2 = 1.0f - beta2;
    k.eps = eps;
    k.decay = 2.0f * l2;
    return k;
}

/* ---- one element, in the CPU scalar code's order ---- */

/* Momentum-free: w -= lr·(g + decay·w). */
static __device__ __forceinline__ float sgd_plain(float w, float g, const sgd_coef &k)
{
    return w - k.lr * (g + k.decay * w);
}

/* buf = momentum·buf + (g + decay·w); w -= lr·buf. */
static __device__ __forceinline__ float sgd_momentum(float w, float g, float &buf, const sgd_coef &k)
{
    float b = k.momentum * buf + (g + k.decay * w);
    buf = b;
    return w - k.lr * b;
}

static __device__ __forceinline__ float adam_elem(float w, float g, float &m, float &v, const adam_coef &k)
{
    float gi = g + k.decay * w;
    float mi = k.beta1 * m + k.c1 * gi;
    float vi = k.beta2 * v + k.c2 * gi * gi;
    m = mi;
    v = vi;
    return w - __fdiv_rn(k.step * mi, __fsqrt_rn(vi) * k.inv_sqrt_bc2 + k.eps);
}

static __device__ __forceinline__ float lazy_elem(float w, float g, float &m, float &v, const lazy_coef &k)
{
    float gi = g + k.decay * w;
    float mi = m + k.c1 * (gi - m);
    float vi = v + k.c2 * (gi * gi - v);
    m = mi;
    v = vi;
    return w - k.step * __fdiv_rn(mi, __fsqrt_rn(vi) + k.eps);
}

/* ---- dense steps: grid-stride, four at a time when aligned ---- */

static unsigned blocks_for(size_t n)
{
    size_t b = (n + kThreads - 1) / kThreads;
    return (unsigned)(b < kMaxBlocks ? b : kMaxBlocks);
}

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

static __device__ __forceinline__ size_t first_index()
{
    return (size_t)blockIdx.x * blockDim.x + threadIdx.x;
}

static __device__ __forceinline__ size_t grid_stride()
{
    return (size_t)gridDim.x * blockDim.x;
}

/* quads float4s first (0 when a pointer is not 16-byte aligned), then the
 * elements [quads·4, n) one at a time. */
template <bool MOMENTUM>
static __global__ void sgd_k(float *w, const float *g, float *buf, size_t n, size_t quads, sgd_coef k,
                             const sgd_coef *kp)
{
    if (kp)
        k = *kp;
    float4 *w4 = reinterpret_cast<float4 *>(w), *b4 = reinterpret_cast<float4 *>(buf);
    const float4 *g4 = reinterpret_cast<const float4 *>(g);
    for (size_t q = first_index(); q < quads; q += grid_stride()) {
        float4 wv = w4[q], gv = g4[q];
        if constexpr (MOMENTUM) {
            float4 bv = b4[q];
            wv.x = sgd_momentum(wv.x, gv.x, bv.x, k);
            wv.y = sgd_momentum(wv.y, gv.y, bv.y, k);
            wv.z = sgd_momentum(wv.z, gv.z, bv.z, k);
            wv.w = sgd_momentum(wv.w, gv.w, bv.w, k);
            b4[q] = bv;
        } else {
            wv.x = sgd_plain(wv.x, gv.x, k);
            wv.y = sgd_plain(wv.y, gv.y, k);
            wv.z = sgd_plain(wv.z, gv.z, k);
            wv.w = sgd_plain(wv.w, gv.w, k);
        }
        w4[q] = wv;
    }
    for (size_t i = quads * 4 + first_index(); i < n; i += grid_stride()) {
        if constexpr (MOMENTUM)
            w[i] = sgd_momentum(w[i], g[i], buf[i], k);
        else
            w[i] = sgd_plain(w[i], g[i], k);
    }
}

static __global__ void adam_k(float *w, const float *g, float *m, float *v, size_t n, size_t quads, adam_coef k,
                              const adam_coef *kp)
{
    if (kp)
        k = *kp;
    float4 *w4 = reinterpret_cast<float4 *>(w), *m4 = reinterpret_cast<float4 *>(m);
    float4 *v4 = reinterpret_cast<float4 *>(v);
    const float4 *g4 = reinterpret_cast<const float4 *>(g);
    for (size_t q = first_index(); q < quads; q += grid_stride()) {
        float4 wv = w4[q], gv = g4[q], mv = m4[q], vv = v4[q];
        wv.x = adam_elem(wv.x, gv.x, mv.x, vv.x, k);
        wv.y = adam_elem(wv.y, gv.y, mv.y, vv.y, k);
        wv.z = adam_elem(wv.z, gv.z, mv.z, vv.z, k);
        wv.w = adam_elem(wv.w, gv.w, mv.w, vv.w, k);
        m4[q] = mv;
        v4[q] = vv;
        w4[q] = wv;
    }
    for (size_t i = quads * 4 + first_index(); i < n; i += grid_stride())
        w[i] = adam_elem(w[i], g[i], m[i], v[i], k);
}

/* ---- row-sparse gradients ---- */

/* Where a listed row's gradient comes from, as the host was given it. */
typedef struct row_src {
    const int32_t *rows;        /* ascending; used when plan is NULL */
    size_t n_rows;              /* the host's count; used when plan is NULL */
    const float *rg;            /* packed rows, or NULL: sums of dy rows */
    const nn_sparse_plan *plan; /* device descriptor, or NULL */
    const float *dy;            /* [N, cols] */
} row_src;

/* The list as the device reads it: the plan's when there is one (what the
 * CPU table's rows_of does on the host). */
typedef struct row_list {
    const int32_t *rows;
    size_t n_rows;
    const uint32_t *start;
    const uint64_t *keys;
    uint32_t K;
} row_list;

static row_src src_of(const nn_row_grad *g)
{
    row_src s;
    s.rows = g->rows;
    s.n_rows = g->n_rows;
    s.rg = g->rg;
    s.plan = g->plan;
    s.dy = g->dy;
    return s;
}

static __device__ __forceinline__ row_list list_of(const row_src &s)
{
    row_list l;
    if (s.plan) {
        l.rows = s.plan->rows;
        l.n_rows = s.plan->n_rows;
        l.start = s.plan->start;
        l.keys = s.plan->keys;
        l.K = (uint32_t)s.plan->K;
    } else {
        l.rows = s.rows;
        l.n_rows = s.n_rows;
        l.start = NULL;
        l.keys = NULL;
        l.K = 0;
    }
    return l;
}

/* Column c of listed row j (kern_cpu_optim.c's listed_chunk): the packed
 * value, or the first position's dy then the others added in ascending
 * position.  A listed row has at least one position. */
static __device__ __forceinline__ float listed_grad(const row_src &s, const row_list &l, size_t j, size_t cols,
                                                    size_t c)
{
    if (s.rg)
        return s.rg[j * cols + c];
    uint32_t q = l.start[j];
    const uint32_t end = l.start[j + 1];
    float sum = s.dy[(size_t)((uint32_t)l.keys[q] / l.K) * cols + c];
    for (q++; q < end; q++)
        sum += s.dy[(size_t)((uint32_t)l.keys[q] / l.K) * cols + c];
    return sum;
}

/* First j with rows[j] >= r (kern_cpu_optim.c's first_listed). */
static __device__ size_t first_listed(const int32_t *rows, size_t n_rows, size_t r)
{
    size_t lo = 0, hi = n_rows;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((long long)rows[mid] < (long long)r)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

enum { UPD_SGD_PLAIN, UPD_SGD_MOMENTUM, UPD_ADAM, UPD_LAZY };

/* What a row step updates: weights, up to two state tensors, constants. */
typedef struct row_update {
    float *w, *s1, *s2; /* [*, cols] */
    size_t cols;
    sgd_coef sk;
    adam_coef ak;
    lazy_coef lk;
} row_update;

/* Element `at` of w (and its state) with gradient gv. */
template <int KIND> static __device__ __forceinline__ void update_elem(const row_update &u, size_t at, float gv)
{
    if constexpr (KIND == UPD_SGD_PLAIN)
        u.w[at] = sgd_plain(u.w[at], gv, u.sk);
    else if constexpr (KIND == UPD_SGD_MOMENTUM)
        u.w[at] = sgd_momentum(u.w[at], gv, u.s1[at], u.sk);
    else if constexpr (KIND == UPD_ADAM)
        u.w[at] = adam_elem(u.w[at], gv, u.s1[at], u.s2[at], u.ak);
    else
        u.w[at] = lazy_elem(u.w[at], gv, u.s1[at], u.s2[at], u.lk);
}

/* The exact steps: every row of [0, n_total); warp w owns the run
 * [w·per, (w+1)·per) and walks the list beside it. */
template <int KIND>
static __global__ void __launch_bounds__(kRowThreads)
    all_rows_k(row_update u, const row_update *up, row_src src, size_t n_total, size_t per)
{
    if (up)
        u = *up;
    const row_list l = list_of(src);
    const size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const size_t lane = threadIdx.x % 32;
    const size_t r0 = warp * per;
    const size_t r1 = r0 + per < n_total ? r0 + per : n_total;
    if (r0 >= n_total)
        return;
    size_t j = first_listed(l.rows, l.n_rows, r0);
    for (size_t r = r0; r < r1; r++) {
        const bool listed = j < l.n_rows && (size_t)(long long)l.rows[j] == r;
        for (size_t c = lane; c < u.cols; c += 32)
            update_elem<KIND>(u, r * u.cols + c, listed ? listed_grad(src, l, j, u.cols, c) : 0.0f);
        j += listed;
    }
}

/* Lazy Adam: the listed rows only, a warp per row, grid-stride. */
static __global__ void __launch_bounds__(kRowThreads) listed_rows_k(row_update u, const row_update *up, row_src src)
{
    if (up)
        u = *up;
    const row_list l = list_of(src);
    const size_t lane = threadIdx.x % 32;
    const size_t warps = (size_t)gridDim.x * blockDim.x / 32;
    for (size_t j = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; j < l.n_rows; j += warps) {
        const size_t at = (size_t)l.rows[j] * u.cols;
        for (size_t c = lane; c < u.cols; c += 32)
            update_elem<UPD_LAZY>(u, at + c, listed_grad(src, l, j, u.cols, c));
    }
}

/* A list without a plan must come with packed rows: nothing else says
 * what its values are. */
static bool src_valid(const nn_row_grad *g)
{
    return g->plan ? (g->rg || g->dy) : (g->n_rows == 0 || (g->rows && g->rg));
}

template <int KIND> static cudaError_t launch_all_rows(cudaStream_t s, const row_update &u, const nn_row_grad *g,
                                                      size_t n_total, cuk_vars *gv)
{
    const row_update *up = cuk_vars_put(gv, u);
    if (!cuk_vars_launch(gv))
        return cudaSuccess;
    size_t blocks = (n_total + kWarpsPerBlock - 1) / kWarpsPerBlock;
    if (blocks > kMaxRowBlocks)
        blocks = kMaxRowBlocks;
    const size_t warps = blocks * kWarpsPerBlock;
    const size_t per = (n_total + warps - 1) / warps;
    all_rows_k<KIND><<<(unsigned)blocks, kRowThreads, 0, s>>>(u, up, src_of(g), n_total, per);
    return cudaGetLastError();
}

static row_update update_of(float *w, float *s1, float *s2, size_t cols)
{
    row_update u;
    memset(&u, 0, sizeof u);
    u.w = w;
    u.s1 = s1;
    u.s2 = s2;
    u.cols = cols;
    return u;
}

cudaError_t cuk_sgd_step(cudaStream_t s, float *w, const float *g, float *buf, size_t n, float lr, float momentum,
                         float l2, cuk_vars *gv)
{
    if (n == 0)
        return cudaSuccess;
    const sgd_coef k = sgd_coefs(lr, momentum, l2);
    const sgd_coef *kp = cuk_vars_put(gv, k);
    if (!cuk_vars_launch(gv))
        return cudaSuccess;
    const bool mom = momentum != 0.0f && buf; /* the CPU's test */
    const size_t quads = aligned16(w) && aligned16(g) && (!mom || aligned16(buf)) ? n / 4 : 0;
    const unsigned blocks = blocks_for(quads ? quads : n);
    if (mom)
        sgd_k<true><<<blocks, kThreads, 0, s>>>(w, g, buf, n, quads, k, kp);
    else
        sgd_k<false><<<blocks, kThreads, 0, s>>>(w, g, NULL, n, quads, k, kp);
    return cudaGetLastError();
}

cudaError_t cuk_adam_step(cudaStream_t s, float *w, const float *g, float *m, float *v, size_t n, float lr,
                          float beta1, float beta2, float eps, float l2, long t, cuk_vars *gv)
{
    if (n == 0)
        return cudaSuccess;
    const adam_coef k = adam_coefs(lr, beta1, beta2, eps, l2, t);
    const adam_coef *kp = cuk_vars_put(gv, k);
    if (!cuk_vars_launch(gv))
        return cudaSuccess;
    const size_t quads = aligned16(w) && aligned16(g) && aligned16(m) && aligned16(v) ? n / 4 : 0;
    adam_k<<<blocks_for(quads ? quads : n), kThreads, 0, s>>>(w, g, m, v, n, quads, k, kp);
    return cudaGetLastError();
}

cudaError_t cuk_sgd_rows_step(cudaStream_t s, float *w, const nn_row_grad *g, size_t n_total, size_t cols,
                              float *buf, float lr, float momentum, float l2, cuk_vars *gv)
{
    if (n_total == 0 || cols == 0)
        return cudaSuccess;
    if (!src_valid(g))
        return cudaErrorInvalidValue;
    const bool mom = momentum != 0.0f && buf; /* the CPU passes buf NULL when momentum is 0 */
    row_update u = update_of(w, mom ? buf : NULL, NULL, cols);
    u.sk = sgd_coefs(lr, momentum, l2);
    return mom ? launch_all_rows<UPD_SGD_MOMENTUM>(s, u, g, n_total, gv)
               : launch_all_rows<UPD_SGD_PLAIN>(s, u, g, n_total, gv);
}

cudaError_t cuk_adam_rows_step(cudaStream_t s, float *w, const nn_row_grad *g, size_t n_total, size_t cols,
                               float *m, float *v, float lr, float beta1, float beta2, float eps, float l2, long t,
                               cuk_vars *gv)
{
    if (n_total == 0 || cols == 0)
        return cudaSuccess;
    if (!src_valid(g))
        return cudaErrorInvalidValue;
    row_update u = update_of(w, m, v, cols);
    u.ak = adam_coefs(lr, beta1, beta2, eps, l2, t);
    return launch_all_rows<UPD_ADAM>(s, u, g, n_total, gv);
}

cudaError_t cuk_lazy_adam_step(cudaStream_t s, float *w, const nn_row_grad *g, size_t cols, float *m, float *v,
                               float lr, float beta1, float beta2, float eps, float l2, long t, cuk_vars *gv)
{
    if (cols == 0 || (!g->plan && g->n_rows == 0))
        return cudaSuccess;
    if (!src_valid(g))
        return cudaErrorInvalidValue;
    size_t blocks = kLazyPlanBlocks;
    if (!g->plan) {
        blocks = (g->n_rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
        if (blocks > kMaxRowBlocks)
            blocks = kMaxRowBlocks;
    }
    row_update u = update_of(w, m, v, cols);
    u.lk = lazy_coefs(lr, beta1, beta2, eps, l2, t);
    const row_update *up = cuk_vars_put(gv, u);
    if (!cuk_vars_launch(gv))
        return cudaSuccess;
    listed_rows_k<<<(unsigned)blocks, kRowThreads, 0, s>>>(u, up, src_of(g));
    return cudaGetLastError();
}
