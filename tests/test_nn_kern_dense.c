/* test_nn_kern_dense: the CPU kernels of kern_dense/norm/elem/loss/optim.
 *
 * In the spirit of dav1d's checkasm and llm.c's test files, every kernel is
 * compared with a naive reference written here in DOUBLE precision:
 *
 *   1. each layer, forward and backward, on dozens of random shapes, with
 *      the backward accumulating into random non-zero gradients (the +=
 *      contract).  Tolerances are error bounds, not guesses: a float sum of
 *      n terms in any order is within γ_n·Σ|terms| of the exact sum
 *      (γ_n = n·u/(1-n·u), u = 2^-24), so the reference also returns Σ|terms|;
 *      layers with a few roundings per element get a small multiple of u
 *      times the magnitude of what they add up;
 *   2. every backward pass against central finite differences of the double
 *      reference forward, L = Σ y·r with r random;
 *   3. sparse linear against dense linear on the multi-hot vector;
 *   4. batch normalisation's running statistics and inference mode;
 *   5. dropout's mask: a function of (seed, i), binomial kept fraction;
 *   6. softmax cross-entropy: ln K, top-1/top-5 with ties, huge logits;
 *   7. SGD and Adam against PyTorch's formulas in double, and the
 *      accumulate-twice semantics of every backward kernel;
 *   8. the row-sparse sparse backward against the dense one, and lazy Adam
 *      against SparseAdam's formulas in double.
 *
 * Randomness comes from a seeded SplitMix64, so a failure reproduces. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_kern_cpu.h"
#include "tap.h"

#define U 0x1p-24 /* unit roundoff of float */

/* ---- test utilities ---- */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_u64(rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(rng *r)
{
    return (double)(rng_u64(r) >> 11) * 0x1p-53;
}

static float rng_float(rng *r, double lo, double hi)
{
    return (float)(lo + (hi - lo) * rng_unit(r));
}

/* Uniform in [lo, hi]. */
static int rng_int(rng *r, int lo, int hi)
{
    return lo + (int)(rng_u64(r) % (uint64_t)(hi - lo + 1));
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        tap_bail("out of memory");
    return p;
}

static float *fzeros(size_t n)
{
    return xcalloc(n, sizeof(float));
}

static double *dzeros(size_t n)
{
    return xcalloc(n, sizeof(double));
}

static float *frand(rng *r, size_t n, double lo, double hi)
{
    float *p = fzeros(n);
    for (size_t i = 0; i < n; i++)
        p[i] = rng_float(r, lo, hi);
    return p;
}

static float *fcopy(const float *src, size_t n)
{
    float *p = fzeros(n);
    memcpy(p, src, n * sizeof *p);
    return p;
}

static double *dfrom(const float *src, size_t n)
{
    double *p = dzeros(n);
    for (size_t i = 0; i < n; i++)
        p[i] = src[i];
    return p;
}

static double gamma_n(size_t n)
{
    double nu = (double)n * U;
    return nu / (1.0 - nu);
}

/* want[i] += init[i] and mag[i] += |init[i]|: the reference of an
 * accumulating kernel started from a non-zero gradient. */
static void add_init(double *want, double *mag, const float *init, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        want[i] += init[i];
        mag[i] += fabs(init[i]);
    }
}

/* tol[i] = k·mag[i] */
static double *scaled(const double *mag, size_t n, double k)
{
    double *t = dzeros(n);
    for (size_t i = 0; i < n; i++)
        t[i] = k * mag[i];
    return t;
}

/* |got - want| <= tol elementwise; on failure prints how many, the max
 * abs error and the worst element (by error/tol). */
static int check_close(const char *what, const float *got, const double *want, const double *tol, size_t n)
{
    size_t bad = 0, worst = 0;
    double max_err = 0.0, worst_ratio = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (e > max_err || isnan(e))
            max_err = e;
        if (!(e <= tol[i])) {
            double ratio = tol[i] > 0 ? e / tol[i] : INFINITY;
            if (bad == 0 || ratio > worst_ratio || isnan(ratio)) {
                worst_ratio = ratio;
                worst = i;
            }
            bad++;
        }
    }
    if (bad)
        tap_diag("%s: %zu of %zu off, max abs err %.3g; worst [%zu]: got %.9g want %.9g tol %.3g", what, bad, n,
                 max_err, worst, (double)got[worst], want[worst], tol[worst]);
    return bad == 0;
}

/* ---- double references ---- */

static void ref_linear_fwd(const float *x, const float *w, const float *b, int N, int I, int O, double *y,
                           double *mag)
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++) {
            double s = b ? b[o] : 0.0, a = fabs(s);
            for (int i = 0; i < I; i++) {
                double t = (double)x[(size_t)n * I + i] * w[(size_t)o * I + i];
                s += t;
                a += fabs(t);
            }
            y[(size_t)n * O + o] = s;
            mag[(size_t)n * O + o] = a;
        }
}

/* The contributions dy·w, dy^T·x, Σdy (no initial gradient). */
static void ref_linear_bwd(const float *x, const float *w, const float *dy, int N, int I, int O, double *dx,
                           double *dxm, double *dw, double *dwm, double *db, double *dbm)
{
    for (int n = 0; n < N; n++)
        for (int i = 0; i < I; i++) {
            double s = 0, a = 0;
            for (int o = 0; o < O; o++) {
                double t = (double)dy[(size_t)n * O + o] * w[(size_t)o * I + i];
                s += t;
                a += fabs(t);
            }
            dx[(size_t)n * I + i] = s;
            dxm[(size_t)n * I + i] = a;
        }
    for (int o = 0; o < O; o++) {
        for (int i = 0; i < I; i++) {
            double s = 0, a = 0;
            for (int n = 0; n < N; n++) {
                double t = (double)dy[(size_t)n * O + o] * x[(size_t)n * I + i];
                s += t;
                a += fabs(t);
            }
            dw[(size_t)o * I + i] = s;
            dwm[(size_t)o * I + i] = a;
        }
        double s = 0, a = 0;
        for (int n = 0; n < N; n++) {
            s += dy[(size_t)n * O + o];
            a += fabs(dy[(size_t)n * O + o]);
        }
        db[o] = s;
        dbm[o] = a;
    }
}

static void ref_sparse_fwd(const int32_t *idx, const float *w, const float *b, int N, int K, int O, double *y,
                           double *mag)
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++) {
            double s = b[o], a = fabs(s);
            for (int k = 0; k < K; k++) {
                double t = w[(size_t)idx[(size_t)n * K + k] * O + o];
                s += t;
                a += fabs(t);
            }
            y[(size_t)n * O + o] = s;
            mag[(size_t)n * O + o] = a;
        }
}

/* dw over [I,O] and db: contributions only. */
static void ref_sparse_bwd(const int32_t *idx, const float *dy, int N, int K, int I, int O, double *dw, double *dwm,
                           double *db, double *dbm)
{
    memset(dw, 0, (size_t)I * O * sizeof *dw);
    memset(dwm, 0, (size_t)I * O * sizeof *dwm);
    memset(db, 0, (size_t)O * sizeof *db);
    memset(dbm, 0, (size_t)O * sizeof *dbm);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++) {
            double g = dy[(size_t)n * O + o];
            db[o] += g;
            dbm[o] += fabs(g);
            for (int k = 0; k < K; k++) {
                dw[(size_t)idx[(size_t)n * K + k] * O + o] += g;
                dwm[(size_t)idx[(size_t)n * K + k] * O + o] += fabs(g);
            }
        }
}

static size_t bn_at(int n, int c, int i, int C, int HW)
{
    return ((size_t)n * C + c) * HW + i;
}

/* Batch statistics of channel c in double: mean and biased variance. */
static void ref_bn_stats(const double *x, int c, int N, int C, int HW, double *mean, double *var)
{
    double M = (double)N * HW, s = 0, q = 0;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < HW; i++)
            s += x[bn_at(n, c, i, C, HW)];
    *mean = s / M;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < HW; i++) {
            double d = x[bn_at(n, c, i, C, HW)] - *mean;
            q += d * d;
        }
    *var = q / M;
}

/* Training-mode forward in double; mean/var per channel may be NULL. */
static void ref_bn_train(const double *x, const double *gamma, const double *beta, int N, int C, int HW, double eps,
                         double *y, double *mean_out, double *var_out)
{
    for (int c = 0; c < C; c++) {
        double mean, var;
        ref_bn_stats(x, c, N, C, HW, &mean, &var);
        double invstd = 1.0 / sqrt(var + eps);
        for (int n = 0; n < N; n++)
            for (int i = 0; i < HW; i++) {
                size_t j = bn_at(n, c, i, C, HW);
                y[j] = (x[j] - mean) * invstd * gamma[c] + beta[c];
            }
        if (mean_out)
            mean_out[c] = mean;
        if (var_out)
            var_out[c] = var;
    }
}

/* Backward contributions in double, with the magnitudes the float kernel's
 * error scales with (see the tolerance comment in test_bn_random). */
static void ref_bn_bwd(const double *x, const float *gamma, const float *dy, int N, int C, int HW, double eps,
                       double *dx, double *dxm, double *dg, double *dgm, double *db, double *dbm)
{
    double M = (double)N * HW;
    for (int c = 0; c < C; c++) {
        double mean, var;
        ref_bn_stats(x, c, N, C, HW, &mean, &var);
        double invstd = 1.0 / sqrt(var + eps);
        double sdy = 0, sdyx = 0, sady = 0, sadyx = 0, max_xhat = 0;
        for (int n = 0; n < N; n++)
            for (int i = 0; i < HW; i++) {
                size_t j = bn_at(n, c, i, C, HW);
                double xhat = (x[j] - mean) * invstd;
                sdy += dy[j];
                sdyx += dy[j] * xhat;
                sady += fabs(dy[j]);
                sadyx += fabs(dy[j] * xhat);
                if (fabs(xhat) > max_xhat)
                    max_xhat = fabs(xhat);
            }
        double cshift = fabs(mean) * invstd + 1.0; /* x̂ error from the saved float stats, in units of u */
        db[c] = sdy;
        dbm[c] = sady;
        dg[c] = sdyx;
        dgm[c] = sady * (max_xhat + cshift);
        double k = gamma[c] * invstd;
        for (int n = 0; n < N; n++)
            for (int i = 0; i < HW; i++) {
                size_t j = bn_at(n, c, i, C, HW);
                double xhat = (x[j] - mean) * invstd;
                dx[j] = k * (dy[j] - sdy / M - xhat * sdyx / M);
                dxm[j] = fabs(k) * (fabs(dy[j]) + sady / M +
                                    (fabs(xhat) + cshift) * (sadyx / M + (max_xhat + cshift) * sady / M));
            }
    }
}

/* Mean softmax cross-entropy in double; dlogits (may be NULL) gets
 * (softmax - onehot)/N, and range (may be NULL) the largest max-min over
 * rows. */
static double ref_xent(const double *logits, const int32_t *labels, int N, int K, double *dlogits, double *range)
{
    double total = 0, worst = 0;
    for (int n = 0; n < N; n++) {
        const double *l = logits + (size_t)n * K;
        double m = l[0], lo = l[0], s = 0;
        for (int j = 1; j < K; j++) {
            m = fmax(m, l[j]);
            lo = fmin(lo, l[j]);
        }
        for (int j = 0; j < K; j++)
            s += exp(l[j] - m);
        total += m + log(s) - l[labels[n]];
        if (dlogits)
            for (int j = 0; j < K; j++)
                dlogits[(size_t)n * K + j] = (exp(l[j] - m) / s - (j == labels[n])) / N;
        worst = fmax(worst, m - lo);
    }
    if (range)
        *range = worst;
    return total / N;
}

/* ---- 1. random shapes against the double references ---- */

static void test_linear_random(rng *r)
{
    int okf = 1, okdx = 1, okdw = 1, okdb = 1, oknull = 1;
    const int shapes = 40;
    for (int s = 0; s < shapes; s++) {
        int N = rng_int(r, 1, 9), I = rng_int(r, 1, 80), O = rng_int(r, 1, 40);
        if (s >= shapes - 3) { /* a few big enough for OpenBLAS's blocked paths */
            N = rng_int(r, 40, 70);
            I = rng_int(r, 200, 330);
            O = rng_int(r, 60, 140);
        }
        size_t nx = (size_t)N * I, nw = (size_t)O * I, ny = (size_t)N * O;
        float *x = frand(r, nx, -1, 1), *w = frand(r, nw, -1, 1), *b = frand(r, O, -1, 1);
        float *dy = frand(r, ny, -1, 1), *y = frand(r, ny, -9, 9);
        float *dx0 = frand(r, nx, -1, 1), *dw0 = frand(r, nw, -1, 1), *db0 = frand(r, O, -1, 1);
        float *dx = fcopy(dx0, nx), *dw = fcopy(dw0, nw), *db = fcopy(db0, O);
        double *ry = dzeros(ny), *rym = dzeros(ny);
        double *rdx = dzeros(nx), *rdxm = dzeros(nx), *rdw = dzeros(nw), *rdwm = dzeros(nw);
        double *rdb = dzeros(O), *rdbm = dzeros(O);
        char what[96];

        /* y: I products and the bias, tol γ_{I+2}·Σ|terms| (one spare rounding) */
        nn_cpu_linear_fwd(x, w, b, y, N, I, O);
        ref_linear_fwd(x, w, b, N, I, O, ry, rym);
        double *tol = scaled(rym, ny, gamma_n((size_t)I + 2));
        snprintf(what, sizeof what, "linear y N=%d I=%d O=%d", N, I, O);
        okf &= check_close(what, y, ry, tol, ny);
        free(tol);

        /* b = NULL is a zero bias */
        nn_cpu_linear_fwd(x, w, NULL, y, N, I, O);
        ref_linear_fwd(x, w, NULL, N, I, O, ry, rym);
        tol = scaled(rym, ny, gamma_n((size_t)I + 2));
        snprintf(what, sizeof what, "linear y (no bias) N=%d I=%d O=%d", N, I, O);
        oknull &= check_close(what, y, ry, tol, ny);
        free(tol);

        /* backward onto random gradients: dx sums O terms, dw and db N,
         * plus the initial value: tol γ_{terms+2}·(|init| + Σ|terms|) */
        nn_cpu_linear_bwd(x, w, dy, dx, dw, db, N, I, O);
        ref_linear_bwd(x, w, dy, N, I, O, rdx, rdxm, rdw, rdwm, rdb, rdbm);
        add_init(rdx, rdxm, dx0, nx);
        add_init(rdw, rdwm, dw0, nw);
        add_init(rdb, rdbm, db0, O);
        snprintf(what, sizeof what, "linear dx N=%d I=%d O=%d", N, I, O);
        tol = scaled(rdxm, nx, gamma_n((size_t)O + 2));
        okdx &= check_close(what, dx, rdx, tol, nx);
        free(tol);
        snprintf(what, sizeof what, "linear dw N=%d I=%d O=%d", N, I, O);
        tol = scaled(rdwm, nw, gamma_n((size_t)N + 2));
        okdw &= check_close(what, dw, rdw, tol, nw);
        free(tol);
        snprintf(what, sizeof what, "linear db N=%d I=%d O=%d", N, I, O);
        tol = scaled(rdbm, O, gamma_n((size_t)N + 2));
        okdb &= check_close(what, db, rdb, tol, O);
        free(tol);

        /* dx = NULL and db = NULL skip their work; dw is unaffected */
        memcpy(dw, dw0, nw * sizeof *dw);
        nn_cpu_linear_bwd(x, w, dy, NULL, dw, NULL, N, I, O);
        snprintf(what, sizeof what, "linear dw (dx, db NULL) N=%d I=%d O=%d", N, I, O);
        tol = scaled(rdwm, nw, gamma_n((size_t)N + 2));
        oknull &= check_close(what, dw, rdw, tol, nw);
        free(tol);

        free(x), free(w), free(b), free(dy), free(y), free(dx0), free(dw0), free(db0);
        free(dx), free(dw), free(db), free(ry), free(rym), free(rdx), free(rdxm), free(rdw), free(rdwm);
        free(rdb), free(rdbm);
    }
    ok(okf, "linear fwd = double reference on %d random shapes (tol γ_{I+2}·Σ|x·w|)", shapes);
    ok(okdx, "linear bwd dx += dy·w on %d shapes (tol γ_{O+2}·Σ|terms|)", shapes);
    ok(okdw, "linear bwd dw += dy^T·x on %d shapes (tol γ_{N+2}·Σ|terms|)", shapes);
    ok(okdb, "linear bwd db += Σdy on %d shapes (tol γ_{N+2}·Σ|terms|)", shapes);
    ok(oknull, "linear: b = NULL is zero bias; dx = db = NULL leave dw right");
}

static int32_t *rand_indices(rng *r, int N, int K, int I)
{
    int32_t *idx = xcalloc((size_t)N * K, sizeof *idx);
    for (size_t j = 0; j < (size_t)N * K; j++)
        idx[j] = rng_int(r, 0, I - 1);
    return idx;
}

/* The row-wise forward against the double reference, at a shape of the
 * caller's (tol γ_{K+2}·Σ|terms|, as the gather's). */
static int fwd_rows_close(rng *r, const int32_t *idx, int N, int K, int I, int O)
{
    size_t nw = (size_t)I * O, ny = (size_t)N * O;
    float *w = frand(r, nw, -1, 1), *b = frand(r, O, -1, 1), *y = frand(r, ny, -9, 9);
    double *ry = dzeros(ny), *rym = dzeros(ny);
    void *work = xcalloc(nn_cpu_sparse_plan_work(N, K), 1);
    nn_sparse_plan pl;
    nn_cpu_sparse_plan(&pl, idx, N, K, I, work);
    nn_cpu_sparse_linear_fwd_rows(&pl, w, b, y, N, O);
    ref_sparse_fwd(idx, w, b, N, K, O, ry, rym);
    double *tol = scaled(rym, ny, gamma_n((size_t)K + 2));
    char what[96];
    snprintf(what, sizeof what, "sparse y (rows) N=%d K=%d I=%d O=%d", N, K, I, O);
    int good = check_close(what, y, ry, tol, ny);
    free(w), free(b), free(y), free(ry), free(rym), free(work), free(tol);
    return good;
}

static void test_sparse_random(rng *r)
{
    int okf = 1, okr = 1, okdw = 1, okdb = 1;
    const int shapes = 40;
    for (int s = 0; s < shapes; s++) {
        int N = rng_int(r, 1, 12), K = rng_int(r, 1, 40), I = rng_int(r, 1, 60), O = rng_int(r, 1, 50);
        size_t nw = (size_t)I * O, ny = (size_t)N * O;
        int32_t *idx = rand_indices(r, N, K, I); /* small I: repeats are common */
        float *w = frand(r, nw, -1, 1), *b = frand(r, O, -1, 1), *dy = frand(r, ny, -1, 1);
        float *y = frand(r, ny, -9, 9), *dw0 = frand(r, nw, -1, 1), *db0 = frand(r, O, -1, 1);
        float *dw = fcopy(dw0, nw), *db = fcopy(db0, O);
        double *ry = dzeros(ny), *rym = dzeros(ny), *rdw = dzeros(nw), *rdwm = dzeros(nw);
        double *rdb = dzeros(O), *rdbm = dzeros(O);
        char what[96];

        /* K rows of w and the bias: tol γ_{K+2}·Σ|terms| */
        nn_cpu_sparse_linear_fwd(idx, w, b, y, N, K, O);
        ref_sparse_fwd(idx, w, b, N, K, O, ry, rym);
        double *tol = scaled(rym, ny, gamma_n((size_t)K + 2));
        snprintf(what, sizeof what, "sparse y N=%d K=%d I=%d O=%d", N, K, I, O);
        okf &= check_close(what, y, ry, tol, ny);
        free(tol);

        /* the row-wise forward adds the same terms in index order: same bound */
        okr &= fwd_rows_close(r, idx, N, K, I, O);

        /* a row of dw gets at most N·K terms: tol γ_{NK+2}·(|init| + Σ|dy|) */
        nn_cpu_sparse_linear_bwd(idx, dy, dw, db, N, K, O);
        ref_sparse_bwd(idx, dy, N, K, I, O, rdw, rdwm, rdb, rdbm);
        add_init(rdw, rdwm, dw0, nw);
        add_init(rdb, rdbm, db0, O);
        snprintf(what, sizeof what, "sparse dw N=%d K=%d I=%d O=%d", N, K, I, O);
        tol = scaled(rdwm, nw, gamma_n((size_t)N * K + 2));
        okdw &= check_close(what, dw, rdw, tol, nw);
        free(tol);
        snprintf(what, sizeof what, "sparse db N=%d K=%d I=%d O=%d", N, K, I, O);
        tol = scaled(rdbm, O, gamma_n((size_t)N + 2));
        okdb &= check_close(what, db, rdb, tol, O);
        free(tol);

        free(idx), free(w), free(b), free(dy), free(y), free(dw0), free(db0), free(dw), free(db);
        free(ry), free(rym), free(rdw), free(rdwm), free(rdb), free(rdbm);
    }
    ok(okf, "sparse linear fwd = double reference on %d random shapes (tol γ_{K+2}·Σ|terms|)", shapes);
    ok(okr, "sparse linear fwd by rows (plan) = double reference on %d random shapes (tol γ_{K+2}·Σ|terms|)", shapes);
    ok(okdw, "sparse linear bwd dw[idx] += dy on %d shapes (tol γ_{NK+2}·Σ|terms|)", shapes);
    ok(okdb, "sparse linear bwd db += Σdy on %d shapes (tol γ_{N+2}·Σ|terms|)", shapes);
}

/* x with a per-channel offset in [-1,1] and spread in [0.5,2], like
 * activations; keeps |mean|/std moderate, which the tolerances assume. */
static float *bn_input(rng *r, int N, int C, int HW)
{
    float *x = fzeros((size_t)N * C * HW);
    for (int c = 0; c < C; c++) {
        double off = rng_float(r, -1, 1), spread = rng_float(r, 0.5, 2);
        for (int n = 0; n < N; n++)
            for (int i = 0; i < HW; i++)
                x[bn_at(n, c, i, C, HW)] = rng_float(r, off - spread, off + spread);
    }
    return x;
}

static void test_bn_random(rng *r)
{
    int oky = 1, okstats = 1, okrun = 1, okinf = 1, okdx = 1, okdg = 1, okdb = 1;
    const int shapes = 30;
    const float eps = 1e-5f, mom = 0.1f;
    for (int s = 0; s < shapes; s++) {
        int N = rng_int(r, 2, 8), C = rng_int(r, 1, 6), HW = s % 2 ? 1 : rng_int(r, 2, 20);
        size_t nx = (size_t)N * C * HW;
        double M = (double)N * HW;
        float *x = bn_input(r, N, C, HW), *g = frand(r, C, 0.5, 2), *be = frand(r, C, -1, 1);
        float *dy = frand(r, nx, -1, 1), *y = fzeros(nx), *sm = fzeros(C), *si = fzeros(C);
        float *rm0 = frand(r, C, -1, 1), *rv0 = frand(r, C, 0.5, 2);
        float *rm = fcopy(rm0, C), *rv = fcopy(rv0, C);
        float *dx0 = frand(r, nx, -1, 1), *dg0 = frand(r, C, -1, 1), *db0 = frand(r, C, -1, 1);
        float *dx = fcopy(dx0, nx), *dg = fcopy(dg0, C), *db = fcopy(db0, C);
        double *xd = dfrom(x, nx), *gd = dfrom(g, C), *bd = dfrom(be, C);
        double *ry = dzeros(nx), *tol = dzeros(nx), *mean = dzeros(C), *var = dzeros(C);
        double *want_c = dzeros(C), *tol_c = dzeros(C);
        char what[96];

        nn_cpu_bn_fwd_train(x, g, be, y, sm, si, rm, rv, mom, eps, N, C, HW);
        ref_bn_train(xd, gd, bd, N, C, HW, eps, ry, mean, var);

        /* y = (x - mean)·(γ·invstd) + β in float: a handful of roundings of
         * terms of size |γ·invstd·mean|, |γ·x̂| and |β| (mean and invstd are
         * rounded to float first): tol 16u·(those) */
        for (int c = 0; c < C; c++) {
            double invstd = 1.0 / sqrt(var[c] + eps);
            for (int n = 0; n < N; n++)
                for (int i = 0; i < HW; i++) {
                    size_t j = bn_at(n, c, i, C, HW);
                    double xhat = (xd[j] - mean[c]) * invstd;
                    tol[j] = 16 * U * (fabs(g[c] * invstd * mean[c]) + fabs(g[c] * xhat) + fabs(be[c]));
                }
        }
        snprintf(what, sizeof what, "bn y N=%d C=%d HW=%d", N, C, HW);
        oky &= check_close(what, y, ry, tol, nx);

        /* saved mean and invstd: double statistics rounded once to float,
         * tol 2u relative (mean: plus u·mean|x| for the summation) */
        for (int c = 0; c < C; c++) {
            double mabs = 0;
            for (int n = 0; n < N; n++)
                for (int i = 0; i < HW; i++)
                    mabs += fabs(xd[bn_at(n, c, i, C, HW)]) / M;
            want_c[c] = mean[c];
            tol_c[c] = 2 * U * (fabs(mean[c]) + mabs);
        }
        snprintf(what, sizeof what, "bn save_mean N=%d C=%d HW=%d", N, C, HW);
        okstats &= check_close(what, sm, want_c, tol_c, C);
        for (int c = 0; c < C; c++) {
            want_c[c] = 1.0 / sqrt(var[c] + eps);
            tol_c[c] = 4 * U * want_c[c];
        }
        snprintf(what, sizeof what, "bn save_invstd N=%d C=%d HW=%d", N, C, HW);
        okstats &= check_close(what, si, want_c, tol_c, C);

        /* running stats: PyTorch's formula with the unbiased variance,
         * computed in double and rounded once: tol 4u·(sum of |terms|) */
        for (int c = 0; c < C; c++) {
            want_c[c] = (1 - mom) * (double)rm0[c] + mom * mean[c];
            tol_c[c] = 4 * U * (fabs((1 - mom) * (double)rm0[c]) + fabs(mom * mean[c]) + 1e-30);
        }
        snprintf(what, sizeof what, "bn run_mean N=%d C=%d HW=%d", N, C, HW);
        okrun &= check_close(what, rm, want_c, tol_c, C);
        for (int c = 0; c < C; c++) {
            want_c[c] = (1 - mom) * (double)rv0[c] + mom * var[c] * M / (M - 1);
            tol_c[c] = 4 * U * want_c[c];
        }
        snprintf(what, sizeof what, "bn run_var N=%d C=%d HW=%d", N, C, HW);
        okrun &= check_close(what, rv, want_c, tol_c, C);

        /* inference: the running statistics (not the batch's) normalise;
         * same error analysis as the training y */
        nn_cpu_bn_fwd_infer(x, g, be, rm0, rv0, y, eps, N, C, HW);
        for (int c = 0; c < C; c++) {
            double invstd = 1.0 / sqrt((double)rv0[c] + eps);
            for (int n = 0; n < N; n++)
                for (int i = 0; i < HW; i++) {
                    size_t j = bn_at(n, c, i, C, HW);
                    double xhat = (xd[j] - rm0[c]) * invstd;
                    ry[j] = xhat * g[c] + be[c];
                    tol[j] = 16 * U * (fabs(g[c] * invstd * rm0[c]) + fabs(g[c] * xhat) + fabs(be[c]));
                }
        }
        snprintf(what, sizeof what, "bn infer y N=%d C=%d HW=%d", N, C, HW);
        okinf &= check_close(what, y, ry, tol, nx);

        /* backward onto random gradients.  dx = k·(dy - mean dy - x̂·mean(dy·x̂))
         * in float, with x̂ from the float-rounded saved stats (off by
         * u·(|x̂| + |mean|·invstd + 1)): ~a dozen roundings of the magnitude
         * ref_bn_bwd returns, tol 32u·mag + 2u·|init|.  dγ, dβ: double sums
         * rounded once, with x̂'s rounding: 8u·mag. */
        double *rdx = dzeros(nx), *rdxm = dzeros(nx), *rdg = dzeros(C), *rdgm = dzeros(C);
        double *rdb = dzeros(C), *rdbm = dzeros(C);
        nn_cpu_bn_bwd(x, g, sm, si, dy, dx, dg, db, N, C, HW);
        ref_bn_bwd(xd, g, dy, N, C, HW, eps, rdx, rdxm, rdg, rdgm, rdb, rdbm);
        for (size_t j = 0; j < nx; j++)
            tol[j] = 32 * U * rdxm[j] + 2 * U * fabs(dx0[j]);
        add_init(rdx, rdxm, dx0, nx);
        snprintf(what, sizeof what, "bn dx N=%d C=%d HW=%d", N, C, HW);
        okdx &= check_close(what, dx, rdx, tol, nx);
        add_init(rdg, rdgm, dg0, C);
        add_init(rdb, rdbm, db0, C);
        double *tg = scaled(rdgm, C, 8 * U), *tb = scaled(rdbm, C, 8 * U);
        snprintf(what, sizeof what, "bn dgamma N=%d C=%d HW=%d", N, C, HW);
        okdg &= check_close(what, dg, rdg, tg, C);
        snprintf(what, sizeof what, "bn dbeta N=%d C=%d HW=%d", N, C, HW);
        okdb &= check_close(what, db, rdb, tb, C);

        free(tg), free(tb), free(rdx), free(rdxm), free(rdg), free(rdgm), free(rdb), free(rdbm);
        free(x), free(g), free(be), free(dy), free(y), free(sm), free(si), free(rm0), free(rv0), free(rm), free(rv);
        free(dx0), free(dg0), free(db0), free(dx), free(dg), free(db), free(xd), free(gd), free(bd);
        free(ry), free(tol), free(mean), free(var), free(want_c), free(tol_c);
    }
    ok(oky, "bn train y = double reference on %d shapes, HW=1 and HW>1 (tol 16u·|terms|)", shapes);
    ok(okstats, "bn saved mean/invstd = double batch statistics (tol 2u-4u relative)");
    ok(okrun, "bn running mean/var follow PyTorch's momentum formula, unbiased var (tol 4u)");
    ok(okinf, "bn infer y uses the running statistics (tol 16u·|terms|)");
    ok(okdx, "bn bwd dx on %d shapes (tol 32u·magnitude)", shapes);
    ok(okdg, "bn bwd dgamma on %d shapes (tol 8u·Σ|dy|·(|x̂|+shift))", shapes);
    ok(okdb, "bn bwd dbeta on %d shapes (tol 8u·Σ|dy|)", shapes);
}

static void test_elem_random(rng *r)
{
    int okr = 1, okrb = 1, oka = 1, okd = 1, okdb = 1;
    const int shapes = 20;
    for (int s = 0; s < shapes; s++) {
        size_t n = (size_t)rng_int(r, 1, 5000);
        float p = rng_float(r, 0.05, 0.9);
        float *x = frand(r, n, -3, 3), *b = frand(r, n, -3, 3), *dy = frand(r, n, -1, 1);
        float *y = fzeros(n), *dx0 = frand(r, n, -1, 1), *dx = fcopy(dx0, n);
        uint8_t *mask = xcalloc(n, 1);
        double *want = dzeros(n), *tol = dzeros(n);
        char what[96];

        /* relu and its backward are exact: tol 0 */
        nn_cpu_relu_fwd(x, y, n);
        for (size_t i = 0; i < n; i++)
            want[i] = x[i] > 0 ? x[i] : 0.0;
        snprintf(what, sizeof what, "relu y n=%zu", n);
        okr &= check_close(what, y, want, tol, n);
        nn_cpu_relu_bwd(y, dy, dx, n);
        for (size_t i = 0; i < n; i++) /* one rounding of dx0 + dy: tol u·|sum| */
            want[i] = (double)dx0[i] + (x[i] > 0 ? dy[i] : 0.0), tol[i] = U * fabs(want[i]);
        snprintf(what, sizeof what, "relu dx n=%zu", n);
        okrb &= check_close(what, dx, want, tol, n);

        /* add: one rounding, tol u·|a+b| */
        nn_cpu_add_fwd(x, b, y, n);
        for (size_t i = 0; i < n; i++)
            want[i] = (double)x[i] + b[i], tol[i] = U * fabs(want[i]);
        snprintf(what, sizeof what, "add y n=%zu", n);
        oka &= check_close(what, y, want, tol, n);

        /* dropout: y = x·mask/(1-p); scale rounded to float then one product:
         * tol 2u·|want| */
        nn_cpu_dropout_fwd(x, y, mask, p, 1000u + (uint64_t)s, n);
        int mask_ok = 1;
        for (size_t i = 0; i < n; i++) {
            mask_ok &= mask[i] <= 1;
            want[i] = mask[i] ? x[i] / (1.0 - p) : 0.0;
            tol[i] = 2 * U * fabs(want[i]);
        }
        snprintf(what, sizeof what, "dropout y n=%zu p=%g", n, p);
        okd &= mask_ok && check_close(what, y, want, tol, n);
        memcpy(dx, dx0, n * sizeof *dx);
        nn_cpu_dropout_bwd(mask, dy, dx, p, n);
        for (size_t i = 0; i < n; i++) { /* scale, product, sum: tol 3u·(|init| + |term|) */
            double t = mask[i] ? dy[i] / (1.0 - p) : 0.0;
            want[i] = dx0[i] + t;
            tol[i] = 3 * U * (fabs(dx0[i]) + fabs(t));
        }
        snprintf(what, sizeof what, "dropout dx n=%zu p=%g", n, p);
        okdb &= check_close(what, dx, want, tol, n);

        free(x), free(b), free(dy), free(y), free(dx0), free(dx), free(mask), free(want), free(tol);
    }
    ok(okr, "relu fwd exact on %d sizes", shapes);
    ok(okrb, "relu bwd dx += dy·[y>0] on %d sizes (tol u)", shapes);
    ok(oka, "add fwd on %d sizes (tol u)", shapes);
    ok(okd, "dropout fwd y = x·mask/(1-p), mask in {0,1}, on %d sizes (tol 2u)", shapes);
    ok(okdb, "dropout bwd dx += dy·mask/(1-p) on %d sizes (tol 3u)", shapes);
}

static void test_xent_random(rng *r)
{
    int okl = 1, okd = 1, okt = 1;
    const int shapes = 30;
    for (int s = 0; s < shapes; s++) {
        int N = rng_int(r, 1, 20), K = rng_int(r, 1, 60);
        double spread = s % 3 == 0 ? 20 : 4;
        size_t nl = (size_t)N * K;
        float *l = frand(r, nl, -spread, spread), *dl = frand(r, nl, -9, 9);
        int32_t *lab = xcalloc(N, sizeof *lab);
        for (int n = 0; n < N; n++)
            lab[n] = rng_int(r, 0, K - 1);
        double *ld = dfrom(l, nl), *rdl = dzeros(nl), *tol = dzeros(nl), range;
        int t1 = -1, t5 = -1, w1 = 0, w5 = 0;
        char what[96];

        double loss = nn_cpu_softmax_xent(l, lab, dl, N, K, &t1, &t5);
        double want = ref_xent(ld, lab, N, K, rdl, &range);
        /* each exp is off by u·(|l_j - max| + 2) (the float argument and
         * expf's ulp), so log S by up to u·(range + 2): tol 8u·(range + 2).
         * dlogits: the same relative error on softmax_j, plus the -1 of
         * the label: tol 8u·(range + 2)·(p_j + [j = label])/N. */
        snprintf(what, sizeof what, "xent loss N=%d K=%d", N, K);
        double ltol = 8 * U * (range + 2);
        if (!(fabs(loss - want) <= ltol)) {
            okl = 0;
            tap_diag("%s: got %.12g want %.12g tol %.3g", what, loss, want, ltol);
        }
        for (int n = 0; n < N; n++)
            for (int j = 0; j < K; j++) {
                size_t q = (size_t)n * K + j;
                double pj = rdl[q] * N + (j == lab[n]);
                tol[q] = 8 * U * (range + 2) * (pj + (j == lab[n])) / N;
            }
        snprintf(what, sizeof what, "xent dlogits N=%d K=%d", N, K);
        okd &= check_close(what, dl, rdl, tol, nl);
        for (int n = 0; n < N; n++) { /* rank by the definition: greater, or equal and another class */
            int rank = 0;
            for (int j = 0; j < K; j++)
                rank += l[(size_t)n * K + j] > l[(size_t)n * K + lab[n]] ||
                        (l[(size_t)n * K + j] == l[(size_t)n * K + lab[n]] && j != lab[n]);
            w1 += rank < 1;
            w5 += rank < 5;
        }
        if (t1 != w1 || t5 != w5) {
            okt = 0;
            tap_diag("xent top N=%d K=%d: got %d/%d want %d/%d", N, K, t1, t5, w1, w5);
        }
        free(l), free(dl), free(lab), free(ld), free(rdl), free(tol);
    }
    ok(okl, "softmax xent loss = double reference on %d shapes (tol 8u·(range+2))", shapes);
    ok(okd, "softmax xent dlogits = (softmax-onehot)/N on %d shapes", shapes);
    ok(okt, "softmax xent top-1/top-5 counts = naive ranking on %d shapes", shapes);
}

/* ---- 2. central finite differences in double ----
 *
 * L(θ) = Σ y·r with the DOUBLE reference forward, g_fd = (L(θ+h) - L(θ-h))/2h,
 * h = 1e-4, against the float backward kernel fed dy = r.  Tolerance:
 * max|g_k - g_fd| <= 1e-5·max|g_fd|.  The float kernels are within
 * γ_n·Σ|terms| <= ~60·6e-8 ≈ 4e-6 of the exact gradient for these small n;
 * the finite difference has truncation error h²/6·|L'''| (0 for the layers
 * linear in the perturbed value; for batchnorm and softmax, with std ≳ 0.3
 * and O(1) logits, ≲ 1e-7 relative) and roundoff 2^-53·|L|/h ≈ 1e-11.  A
 * missing or wrong term is an O(1) relative error. */

#define FD_H 1e-4
#define FD_RTOL 1e-5

typedef double (*loss_fn)(void *ctx);

static void fd_grad(loss_fn f, void *ctx, double *param, size_t n, double *g)
{
    for (size_t i = 0; i < n; i++) {
        double save = param[i];
        param[i] = save + FD_H;
        double lp = f(ctx);
        param[i] = save - FD_H;
        double lm = f(ctx);
        param[i] = save;
        g[i] = (lp - lm) / (2 * FD_H);
    }
}

static int check_fd(const char *what, const float *got, const double *fd, size_t n)
{
    double gmax = 0;
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs(fd[i]));
    double *tol = dzeros(n);
    for (size_t i = 0; i < n; i++)
        tol[i] = FD_RTOL * gmax;
    int res = gmax > 0 && check_close(what, got, fd, tol, n);
    if (gmax == 0)
        tap_diag("%s: finite-difference gradient is all zero (test set-up)", what);
    free(tol);
    return res;
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

typedef struct linear_ctx {
    double *x, *w, *b, *r, *y;
    int N, I, O;
} linear_ctx;

static double linear_loss(void *p)
{
    linear_ctx *c = p;
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->O; o++) {
            double s = c->b[o];
            for (int i = 0; i < c->I; i++)
                s += c->x[(size_t)n * c->I + i] * c->w[(size_t)o * c->I + i];
            c->y[(size_t)n * c->O + o] = s;
        }
    return dot(c->y, c->r, (size_t)c->N * c->O);
}

static void test_fd_linear(rng *r)
{
    int N = 3, I = 5, O = 4;
    size_t nx = (size_t)N * I, nw = (size_t)O * I, ny = (size_t)N * O;
    float *x = frand(r, nx, -1, 1), *w = frand(r, nw, -1, 1), *b = frand(r, O, -1, 1), *rf = frand(r, ny, -1, 1);
    float *dx = fzeros(nx), *dw = fzeros(nw), *db = fzeros(O);
    linear_ctx c = {dfrom(x, nx), dfrom(w, nw), dfrom(b, O), dfrom(rf, ny), dzeros(ny), N, I, O};
    double *g = dzeros(nw);

    nn_cpu_linear_bwd(x, w, rf, dx, dw, db, N, I, O);
    fd_grad(linear_loss, &c, c.x, nx, g);
    ok(check_fd("fd linear dx", dx, g, nx), "linear dx = central finite differences (tol 1e-5·max|g|)");
    fd_grad(linear_loss, &c, c.w, nw, g);
    ok(check_fd("fd linear dw", dw, g, nw), "linear dw = central finite differences");
    fd_grad(linear_loss, &c, c.b, O, g);
    ok(check_fd("fd linear db", db, g, O), "linear db = central finite differences");

    free(x), free(w), free(b), free(rf), free(dx), free(dw), free(db), free(g);
    free(c.x), free(c.w), free(c.b), free(c.r), free(c.y);
}

typedef struct sparse_ctx {
    const int32_t *idx;
    double *w, *b, *r, *y;
    int N, K, O;
} sparse_ctx;

static double sparse_loss(void *p)
{
    sparse_ctx *c = p;
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->O; o++) {
            double s = c->b[o];
            for (int k = 0; k < c->K; k++)
                s += c->w[(size_t)c->idx[(size_t)n * c->K + k] * c->O + o];
            c->y[(size_t)n * c->O + o] = s;
        }
    return dot(c->y, c->r, (size_t)c->N * c->O);
}

static void test_fd_sparse(rng *r)
{
    int N = 3, K = 4, I = 6, O = 3;
    size_t nw = (size_t)I * O, ny = (size_t)N * O;
    int32_t *idx = rand_indices(r, N, K, I);
    idx[1] = idx[0]; /* a repeated index: its row of dw gets dy twice */
    float *w = frand(r, nw, -1, 1), *b = frand(r, O, -1, 1), *rf = frand(r, ny, -1, 1);
    float *dw = fzeros(nw), *db = fzeros(O);
    sparse_ctx c = {idx, dfrom(w, nw), dfrom(b, O), dfrom(rf, ny), dzeros(ny), N, K, O};
    double *g = dzeros(nw);

    nn_cpu_sparse_linear_bwd(idx, rf, dw, db, N, K, O);
    fd_grad(sparse_loss, &c, c.w, nw, g);
    ok(check_fd("fd sparse dw", dw, g, nw), "sparse linear dw = central finite differences");
    fd_grad(sparse_loss, &c, c.b, O, g);
    ok(check_fd("fd sparse db", db, g, O), "sparse linear db = central finite differences");

    free(idx), free(w), free(b), free(rf), free(dw), free(db), free(g);
    free(c.w), free(c.b), free(c.r), free(c.y);
}

typedef struct bn_ctx {
    double *x, *g, *b, *r, *y;
    int N, C, HW;
    double eps;
} bn_ctx;

static double bn_loss(void *p)
{
    bn_ctx *c = p;
    ref_bn_train(c->x, c->g, c->b, c->N, c->C, c->HW, c->eps, c->y, NULL, NULL);
    return dot(c->y, c->r, (size_t)c->N * c->C * c->HW);
}

static void test_fd_bn(rng *r, int N, int C, int HW)
{
    size_t nx = (size_t)N * C * HW;
    const float eps = 1e-5f;
    float *x = bn_input(r, N, C, HW), *g = frand(r, C, 0.5, 2), *b = frand(r, C, -1, 1), *rf = frand(r, nx, -1, 1);
    float *y = fzeros(nx), *sm = fzeros(C), *si = fzeros(C), *rm = fzeros(C), *rv = fzeros(C);
    float *dx = fzeros(nx), *dg = fzeros(C), *db = fzeros(C);
    bn_ctx c = {dfrom(x, nx), dfrom(g, C), dfrom(b, C), dfrom(rf, nx), dzeros(nx), N, C, HW, eps};
    double *gr = dzeros(nx);
    char what[64];

    nn_cpu_bn_fwd_train(x, g, b, y, sm, si, rm, rv, 0.1f, eps, N, C, HW);
    nn_cpu_bn_bwd(x, g, sm, si, rf, dx, dg, db, N, C, HW);
    fd_grad(bn_loss, &c, c.x, nx, gr);
    snprintf(what, sizeof what, "fd bn dx N=%d C=%d HW=%d", N, C, HW);
    ok(check_fd(what, dx, gr, nx), "bn (train) dx = central finite differences, N=%d C=%d HW=%d", N, C, HW);
    fd_grad(bn_loss, &c, c.g, C, gr);
    snprintf(what, sizeof what, "fd bn dgamma N=%d C=%d HW=%d", N, C, HW);
    ok(check_fd(what, dg, gr, C), "bn dgamma = central finite differences, HW=%d", HW);
    fd_grad(bn_loss, &c, c.b, C, gr);
    snprintf(what, sizeof what, "fd bn dbeta N=%d C=%d HW=%d", N, C, HW);
    ok(check_fd(what, db, gr, C), "bn dbeta = central finite differences, HW=%d", HW);

    free(x), free(g), free(b), free(rf), free(y), free(sm), free(si), free(rm), free(rv), free(dx), free(dg), free(db);
    free(gr), free(c.x), free(c.g), free(c.b), free(c.r), free(c.y);
}

typedef struct elem_ctx {
    double *a, *b, *r;
    const uint8_t *mask;
    double scale;
    size_t n;
    int op; /* 0 relu, 1 add, 2 dropout */
} elem_ctx;

static double elem_loss(void *p)
{
    elem_ctx *c = p;
    double s = 0;
    for (size_t i = 0; i < c->n; i++) {
        double y = c->op == 0 ? fmax(c->a[i], 0.0) : c->op == 1 ? c->a[i] + c->b[i] : c->a[i] * c->mask[i] * c->scale;
        s += y * c->r[i];
    }
    return s;
}

static void test_fd_elem(rng *r)
{
    size_t n = 40;
    float *x = frand(r, n, -1, 1), *b = frand(r, n, -1, 1), *rf = frand(r, n, -1, 1);
    for (size_t i = 0; i < n; i++) /* away from relu's kink: |x| >= 0.05 >> h */
        x[i] = x[i] < 0 ? x[i] - 0.05f : x[i] + 0.05f;
    float *y = fzeros(n), *dx = fzeros(n);
    uint8_t *mask = xcalloc(n, 1);
    elem_ctx c = {dfrom(x, n), dfrom(b, n), dfrom(rf, n), mask, 0, n, 0};
    double *g = dzeros(n);

    nn_cpu_relu_fwd(x, y, n);
    nn_cpu_relu_bwd(y, rf, dx, n);
    fd_grad(elem_loss, &c, c.a, n, g);
    ok(check_fd("fd relu dx", dx, g, n), "relu dx = central finite differences (inputs |x| >= 0.05)");

    /* add has no backward kernel: its backward is the caller accumulating
     * dy into both inputs; check that this identity is the derivative */
    c.op = 1;
    fd_grad(elem_loss, &c, c.a, n, g);
    int add_ok = check_fd("fd add da", rf, g, n);
    fd_grad(elem_loss, &c, c.b, n, g);
    add_ok &= check_fd("fd add db", rf, g, n);
    ok(add_ok, "add: d/da = d/db = dy by central finite differences");

    const float p = 0.4f;
    nn_cpu_dropout_fwd(x, y, mask, p, 7, n);
    memset(dx, 0, n * sizeof *dx);
    nn_cpu_dropout_bwd(mask, rf, dx, p, n);
    c.op = 2;
    c.scale = 1.0 / (1.0 - p);
    fd_grad(elem_loss, &c, c.a, n, g);
    ok(check_fd("fd dropout dx", dx, g, n), "dropout dx = central finite differences (mask fixed)");

    free(x), free(b), free(rf), free(y), free(dx), free(mask), free(g), free(c.a), free(c.b), free(c.r);
}

typedef struct xent_ctx {
    double *l;
    const int32_t *lab;
    int N, K;
} xent_ctx;

static double xent_loss(void *p)
{
    xent_ctx *c = p;
    return ref_xent(c->l, c->lab, c->N, c->K, NULL, NULL);
}

static void test_fd_xent(rng *r)
{
    int N = 4, K = 7;
    size_t nl = (size_t)N * K;
    float *l = frand(r, nl, -3, 3), *dl = fzeros(nl);
    int32_t lab[4] = {0, 6, 3, 3};
    xent_ctx c = {dfrom(l, nl), lab, N, K};
    double *g = dzeros(nl);

    nn_cpu_softmax_xent(l, lab, dl, N, K, NULL, NULL);
    fd_grad(xent_loss, &c, c.l, nl, g);
    ok(check_fd("fd xent dlogits", dl, g, nl), "softmax xent dlogits = central finite differences of the mean loss");
    free(l), free(dl), free(g), free(c.l);
}

/* ---- 3. sparse linear = dense linear on the multi-hot vector ---- */

static void test_sparse_vs_dense(rng *r)
{
    int N = 6, K = 9, I = 23, O = 11;
    size_t nws = (size_t)I * O, ny = (size_t)N * O, nx = (size_t)N * I;
    int32_t *idx = rand_indices(r, N, K, I);
    idx[0] = idx[1] = idx[2]; /* row 0 holds one index three times */
    idx[K + 3] = idx[K + 4];  /* row 1: twice */
    float *ws = frand(r, nws, -1, 1), *wd = fzeros(nws), *b = frand(r, O, -1, 1), *dy = frand(r, ny, -1, 1);
    float *x = fzeros(nx), *ys = fzeros(ny), *yd = fzeros(ny);
    float *dws = fzeros(nws), *dwd = fzeros(nws), *dbs = fzeros(O), *dbd = fzeros(O), *dxd = fzeros(nx);
    for (int i = 0; i < I; i++) /* the dense weight is the transpose: [O,I] */
        for (int o = 0; o < O; o++)
            wd[(size_t)o * I + i] = ws[(size_t)i * O + o];
    for (int n = 0; n < N; n++) /* the multi-hot vector counts repeats */
        for (int k = 0; k < K; k++)
            x[(size_t)n * I + idx[(size_t)n * K + k]] += 1.0f;
    ok(x[idx[0]] == 3.0f && x[I + idx[K + 3]] >= 2.0f, "the dense vector holds the repeat counts (set-up)");

    nn_cpu_sparse_linear_fwd(idx, ws, b, ys, N, K, O);
    nn_cpu_linear_fwd(x, wd, b, yd, N, I, O);
    /* both approximate the same Σ_k w + b (the dense one as Σ_i count·w):
     * tol (γ_{K+2} + γ_{I+2})·(|b| + Σ|w rows|) */
    double *want = dzeros(ny), *mag = dzeros(ny);
    ref_sparse_fwd(idx, ws, b, N, K, O, want, mag);
    double *tol = scaled(mag, ny, gamma_n((size_t)K + 2) + gamma_n((size_t)I + 2));
    double *ydd = dfrom(yd, ny);
    ok(check_close("sparse vs dense y", ys, ydd, tol, ny), "sparse linear fwd = dense linear on the multi-hot vector");
    free(tol);

    /* weight gradient: the dense dw [O,I] transposed is the sparse [I,O];
     * both sum at most N·K terms of dy: tol 2·γ_{NK+2}·Σ|dy| */
    nn_cpu_sparse_linear_bwd(idx, dy, dws, dbs, N, K, O);
    nn_cpu_linear_bwd(x, wd, dy, dxd, dwd, dbd, N, I, O);
    double *dwd_t = dzeros(nws), *rw = dzeros(nws), *rwm = dzeros(nws), *rb = dzeros(O), *rbm = dzeros(O);
    for (int i = 0; i < I; i++)
        for (int o = 0; o < O; o++)
            dwd_t[(size_t)i * O + o] = dwd[(size_t)o * I + i];
    ref_sparse_bwd(idx, dy, N, K, I, O, rw, rwm, rb, rbm);
    tol = scaled(rwm, nws, 2 * gamma_n((size_t)N * K + 2));
    ok(check_close("sparse vs dense dw", dws, dwd_t, tol, nws),
       "sparse linear dw = dense linear dw transposed (repeats count twice)");
    free(tol);
    double *dbdd = dfrom(dbd, O);
    tol = scaled(rbm, O, 2 * gamma_n((size_t)N + 2));
    ok(check_close("sparse vs dense db", dbs, dbdd, tol, O), "sparse linear db = dense linear db");

    /* the simplest repeat: K = 2, both indices equal, no bias -> y = 2·w[i] exactly */
    int32_t rep[2] = {5, 5};
    float zb[11] = {0}, y2[11];
    nn_cpu_sparse_linear_fwd(rep, ws, zb, y2, 1, 2, O);
    int twice = 1;
    for (int o = 0; o < O; o++)
        twice &= y2[o] == 2.0f * ws[5 * O + o];
    ok(twice, "a row with an index repeated gives twice its weight row (exact)");

    free(idx), free(ws), free(wd), free(b), free(dy), free(x), free(ys), free(yd), free(dws), free(dwd), free(dbs);
    free(dbd), free(dxd), free(want), free(mag), free(tol), free(ydd), free(dwd_t), free(rw), free(rwm), free(rb);
    free(rbm), free(dbdd);
}

/* ---- 4. batchnorm: running statistics, inference, HW = 1 and HW > 1 ---- */

static void test_bn_running(void)
{
    /* x = 1,2,3,4 in one channel: mean 2.5, biased var 1.25, unbiased 5/3.
     * From run_mean = 0, run_var = 1 with momentum 0.1:
     *   run_mean = 0.25, run_var = 0.9 + 0.1·5/3 = 1.0666...
     * The same four values as [N=4,C=1,HW=1] and [N=2,C=1,HW=2] must agree.
     * tol 4u relative: double formula rounded once to float. */
    const float x[4] = {1, 2, 3, 4}, g = 1, b = 0;
    const double want_rv = 0.9 + 0.1 * 5.0 / 3.0;
    int shapes[2][2] = {{4, 1}, {2, 2}};
    for (int s = 0; s < 2; s++) {
        int N = shapes[s][0], HW = shapes[s][1];
        float y[4], sm, si, rm = 0, rv = 1;
        nn_cpu_bn_fwd_train(x, &g, &b, y, &sm, &si, &rm, &rv, 0.1f, 1e-5f, N, 1, HW);
        ok(fabs(rm - 0.25) <= 4 * U * 0.25 && fabs(rv - want_rv) <= 4 * U * want_rv,
           "bn running stats N=%d HW=%d: run_mean %.9g (want 0.25), run_var %.9g (want %.9g, unbiased)", N, HW,
           (double)rm, (double)rv, want_rv);
        ok(fabs(sm - 2.5) <= 0 && fabs(si - 1 / sqrt(1.25 + 1e-5)) <= 2 * U,
           "bn saved stats N=%d HW=%d: mean 2.5, invstd 1/sqrt(1.25+eps) (biased var normalises)", N, HW);
        /* a second step composes: run = 0.9·run + 0.1·batch */
        double rm1 = rm, rv1 = rv;
        nn_cpu_bn_fwd_train(x, &g, &b, y, &sm, &si, &rm, &rv, 0.1f, 1e-5f, N, 1, HW);
        ok(fabs(rm - (0.9 * rm1 + 0.25)) <= 4 * U && fabs(rv - (0.9 * rv1 + 0.1 * 5.0 / 3.0)) <= 8 * U,
           "bn running stats compose over two steps N=%d HW=%d", N, HW);
        /* inference with these running stats, not the batch's */
        float yi[4];
        nn_cpu_bn_fwd_infer(x, &g, &b, &rm, &rv, yi, 1e-5f, N, 1, HW);
        int inf_ok = 1, differs = 0;
        for (int i = 0; i < 4; i++) {
            double w = (x[i] - (double)rm) / sqrt((double)rv + 1e-5);
            inf_ok &= fabs(yi[i] - w) <= 8 * U * (fabs(w) + 1);
            differs |= fabs(yi[i] - y[i]) > 1e-3;
        }
        ok(inf_ok && differs, "bn infer N=%d HW=%d normalises with the running stats (tol 8u), not the batch's", N,
           HW);
    }
    /* M = 1: the unbiased variance is undefined; the kernel uses the biased
     * one (0) so the running variance decays but stays finite */
    float one = 3, y, sm, si, rm = 0, rv = 1, g1 = 1, b0 = 0;
    nn_cpu_bn_fwd_train(&one, &g1, &b0, &y, &sm, &si, &rm, &rv, 0.1f, 1e-5f, 1, 1, 1);
    ok(isfinite(rv) && fabs(rv - 0.9) <= 4 * U && y == 0.0f, "bn with one value per channel: run_var %.9g finite",
       (double)rv);
}

/* ---- 5. dropout mask ---- */

static void test_dropout_mask(void)
{
    const size_t n = 1000000;
    const float p = 0.3f;
    float *x = fzeros(n), *y = fzeros(n), *x2 = fzeros(n);
    uint8_t *m1 = xcalloc(n, 1), *m2 = xcalloc(n, 1), *m3 = xcalloc(n, 1);
    for (size_t i = 0; i < n; i++)
        x[i] = 1.0f, x2[i] = -2.5f;

    nn_cpu_dropout_fwd(x, y, m1, p, 42, n);
    nn_cpu_dropout_fwd(x2, y, m2, p, 42, n);
    ok(memcmp(m1, m2, n) == 0, "dropout: same seed, same mask (whatever x)");
    nn_cpu_dropout_fwd(x, y, m3, p, 42, 1000);
    ok(memcmp(m1, m3, 1000) == 0, "dropout: mask[i] does not depend on n (prefix of n=1e6 = n=1e3)");
    /* A data-parallel rank holding elements [first, first + len) of the
     * global batch draws their masks as one process does. */
    int sliced = 1;
    for (size_t first = 0; first < n && sliced; first += 333331) {
        size_t len = n - first < 4096 ? n - first : 4096;
        nn_cpu_dropout_fwd_at(x, y, m3, p, 42, first, len);
        sliced = memcmp(m1 + first, m3, len) == 0;
    }
    ok(sliced, "dropout: a slice drawn from element `first` equals that slice of the whole batch's mask");

    /* kept fraction: Binomial(n, 1-p)/n has sd sqrt(p(1-p)/n) = 4.6e-4;
     * allow 6 sd (a false failure every ~5e8 runs; the seed is fixed anyway) */
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        kept += m1[i];
    double frac = (double)kept / n, sd = sqrt(p * (1.0 - p) / n);
    ok(fabs(frac - (1 - p)) <= 6 * sd, "dropout p=0.3: kept fraction %.5f within 6 sd (%.5f) of 0.7", frac, 6 * sd);

    /* another seed: an independent mask differs in 2p(1-p) = 42% of places
     * (sd 4.9e-4); neighbouring seeds are the adversarial case */
    int indep = 1;
    for (uint64_t s = 43; s <= 45; s++) {
        nn_cpu_dropout_fwd(x, y, m2, p, s, n);
        size_t diff = 0;
        for (size_t i = 0; i < n; i++)
            diff += m1[i] != m2[i];
        double want = 2 * p * (1.0 - p), dsd = sqrt(want * (1 - want) / n);
        if (!(fabs((double)diff / n - want) <= 6 * dsd)) {
            indep = 0;
            tap_diag("seed %llu vs 42: %.5f differ, want %.5f ± %.5f", (unsigned long long)s, (double)diff / n, want,
                     6 * dsd);
        }
    }
    ok(indep, "dropout: different seeds give different, independent-looking masks");

    /* serial correlation: P(mask[i] = mask[i+1]) = p² + (1-p)² = 0.58 */
    size_t same = 0;
    for (size_t i = 0; i + 1 < n; i++)
        same += m1[i] == m1[i + 1];
    double ps = p * p + (1.0 - p) * (1.0 - p), ssd = sqrt(ps * (1 - ps) / n);
    ok(fabs((double)same / (n - 1) - ps) <= 6 * ssd, "dropout: neighbours agree %.5f, want %.5f (6 sd)",
       (double)same / (n - 1), ps);

    /* scaling: kept elements are x/(1-p) (float scale: tol 2u), dropped 0 */
    nn_cpu_dropout_fwd(x2, y, m1, p, 42, n);
    int scale_ok = 1;
    for (size_t i = 0; i < n; i++)
        scale_ok &= m1[i] ? fabs(y[i] - (-2.5 / (1.0 - p))) <= 2 * U * 2.5 / (1 - p) : y[i] == 0.0f;
    ok(scale_ok, "dropout scales kept elements by 1/(1-p), zeroes the rest");

    /* p = 0: everything kept, y = x exactly */
    nn_cpu_dropout_fwd(x2, y, m1, 0.0f, 42, n);
    int all = 1;
    for (size_t i = 0; i < n; i++)
        all &= m1[i] == 1 && y[i] == x2[i];
    ok(all, "dropout p=0 keeps everything and y = x");

    /* p = 1: nothing kept, no inf/NaN from 1/(1-p) */
    nn_cpu_dropout_fwd(x2, y, m1, 1.0f, 42, 1000);
    float g[1000] = {0}, dy[1000];
    for (int i = 0; i < 1000; i++)
        dy[i] = 1.0f;
    nn_cpu_dropout_bwd(m1, dy, g, 1.0f, 1000);
    int none = 1;
    for (int i = 0; i < 1000; i++)
        none &= m1[i] == 0 && y[i] == 0.0f && g[i] == 0.0f;
    ok(none, "dropout p=1 drops everything, y = dx = 0");

    free(x), free(y), free(x2), free(m1), free(m2), free(m3);
}

/* ---- 6. softmax cross-entropy: hand-made cases ---- */

static void test_xent_cases(void)
{
    /* uniform logits: softmax = 1/K, loss = ln K (each exp is exactly 1:
     * tol 1e-12), dlogits = (1/K - onehot)/N */
    int Ks[2] = {10, 1000};
    for (int t = 0; t < 2; t++) {
        int K = Ks[t], N = 3;
        float *l = fzeros((size_t)N * K), *dl = fzeros((size_t)N * K);
        for (size_t i = 0; i < (size_t)N * K; i++)
            l[i] = 0.7f;
        int32_t lab[3] = {0, K - 1, K / 2};
        int t1, t5;
        double loss = nn_cpu_softmax_xent(l, lab, dl, N, K, &t1, &t5);
        int dl_ok = 1;
        for (int n = 0; n < N; n++)
            for (int j = 0; j < K; j++) {
                double w = (1.0 / K - (j == lab[n])) / N;
                dl_ok &= fabs(dl[(size_t)n * K + j] - w) <= 4 * U * fabs(w);
            }
        ok(fabs(loss - log(K)) <= 1e-12 && dl_ok, "uniform logits K=%d: loss %.15g = ln K, dlogits = (1/K-onehot)/N", K,
           loss);
        is_int(t1, 0, "uniform logits K=%d: no top-1 hit (ties count against the label)", K);
        is_int(t5, 0, "uniform logits K=%d: no top-5 hit", K);
        free(l), free(dl);
    }

    /* ranks on K=7: row 0 label is the max (rank 0); row 1 rank 4 (top-5
     * only); row 2 rank 5 (neither); row 3 ties with one other at the top
     * (rank 1: top-5 only); row 4 label tied at the 5th place with one more
     * (rank 5: neither); row 5 a NaN label logit (never a hit) */
    const float l[6 * 7] = {
        1, 2, 3, 4, 5, 6, 9,        /* label 6 -> rank 0 */
        1, 2, 3, 4, 5, 6, 9,        /* label 2 -> 4 larger */
        1, 2, 3, 4, 5, 6, 9,        /* label 1 -> 5 larger */
        3, 3, 1, 0, 0, 0, 0,        /* label 0, tied with 1 */
        5, 4, 3, 2, 1, 1, 0,        /* label 5: 4 larger + 1 tie */
        0, 1, 2, NAN, 3, 4, 5,      /* label 3 is NaN */
    };
    const int32_t lab[6] = {6, 2, 1, 0, 5, 3};
    int t1 = -1, t5 = -1;
    nn_cpu_softmax_xent(l, lab, NULL, 6, 7, &t1, &t5);
    is_int(t1, 1, "top-1 on hand-made rows (only row 0 hits)");
    is_int(t5, 3, "top-5 on hand-made rows (rows 0, 1, 3)");
    /* one row at a time, to say which one is wrong */
    const int want1[6] = {1, 0, 0, 0, 0, 0}, want5[6] = {1, 1, 0, 1, 0, 0};
    int rows_ok = 1;
    for (int n = 0; n < 6; n++) {
        nn_cpu_softmax_xent(l + n * 7, lab + n, NULL, 1, 7, &t1, &t5);
        if (t1 != want1[n] || t5 != want5[n]) {
            rows_ok = 0;
            tap_diag("row %d: top1 %d top5 %d, want %d %d", n, t1, t5, want1[n], want5[n]);
        }
    }
    ok(rows_ok, "top-1/top-5 row by row, ties ranked against the label");
    /* top pointers may be NULL */
    double lnull = nn_cpu_softmax_xent(l, lab, NULL, 3, 7, NULL, NULL);
    ok(isfinite(lnull), "top1/top5/dlogits may be NULL");

    /* K <= 5: every label is in the top 5 */
    const float l3[3] = {0, 0, 0};
    const int32_t lab3 = 1;
    nn_cpu_softmax_xent(l3, &lab3, NULL, 1, 3, &t1, &t5);
    ok(t1 == 0 && t5 == 1, "K=3 constant row: top-1 miss, top-5 hit (only 3 classes)");

    /* huge logits stay finite: [1e4, 0, -1e4]; label 1 costs 1e4 (+ e^-1e4),
     * label 0 costs 0 (tol: the exps are exactly 1 and 0) */
    const float big[2 * 3] = {1e4f, 0, -1e4f, 1e4f, 0, -1e4f};
    const int32_t labbig[2] = {1, 0};
    float dl[6];
    double loss = nn_cpu_softmax_xent(big, labbig, dl, 2, 3, &t1, &t5);
    int fin = 1;
    for (int i = 0; i < 6; i++)
        fin &= isfinite(dl[i]);
    ok(isfinite(loss) && fabs(loss - 1e4 / 2) <= 1e-9 && fin,
       "logits ±1e4: loss %.9g = 5000 (mean of 1e4 and 0), finite dlogits", loss);
    ok(dl[0] == 0.5f && dl[1] == -0.5f && dl[2] == 0.0f && dl[3] == 0.0f,
       "logits ±1e4: dlogits = (softmax - onehot)/N exactly (%g %g %g %g)", (double)dl[0], (double)dl[1],
       (double)dl[2], (double)dl[3]);
}

/* ---- 7. optimiser steps and accumulation ---- */

static void test_sgd(rng *r)
{
    /* PyTorch: g' = g + 2·l2·w; buf = μ·buf + g'; w -= lr·buf.  The float
     * kernel's error is bounded by a running error estimate: each step
     * rounds buf (≈3u·|terms|) and w (≈2u·(|w| + lr·|buf|)); tol = 4× that. */
    const size_t n = 1003; /* not a multiple of 4: the scalar tail runs too */
    const float lr = 0.1f, mu = 0.9f, l2 = 0.01f;
    const int steps = 6;
    float *w = frand(r, n, -1, 1), *buf = fzeros(n);
    double *wd = dfrom(w, n), *bd = dzeros(n), *ew = dzeros(n), *eb = dzeros(n), *babs = dzeros(n);
    for (int t = 0; t < steps; t++) {
        float *g = frand(r, n, -1, 1);
        nn_cpu_sgd_step(w, g, buf, n, lr, mu, l2);
        for (size_t i = 0; i < n; i++) {
            double gi = g[i] + 2.0 * l2 * wd[i];
            bd[i] = mu * bd[i] + gi;
            wd[i] -= lr * bd[i];
            babs[i] = mu * babs[i] + fabs(g[i]) + fabs(2.0 * l2 * wd[i]);
            eb[i] = mu * eb[i] + 3 * U * babs[i] + 2.0 * l2 * ew[i];
            ew[i] += lr * eb[i] + 2 * U * (fabs(wd[i]) + lr * babs[i]);
        }
        free(g);
    }
    double *tw = scaled(ew, n, 4), *tb = scaled(eb, n, 4);
    ok(check_close("sgd w", w, wd, tw, n) & check_close("sgd buf", buf, bd, tb, n),
       "sgd momentum=0.9 l2=0.01: w and buf = double PyTorch formulas after %d steps", steps);

    /* momentum 0: no buffer needed (NULL), w -= lr·g' */
    float w1[3] = {1, -2, 0.5f}, g1[3] = {0.5f, 0.5f, -1};
    nn_cpu_sgd_step(w1, g1, NULL, 3, 0.1f, 0.0f, 0.0f);
    ok(fabs(w1[0] - 0.95) <= 2 * U && fabs(w1[1] + 2.05) <= 4 * U && fabs(w1[2] - 0.6) <= 2 * U,
       "sgd momentum=0, buf NULL: plain w -= lr·g");
    free(w), free(buf), free(wd), free(bd), free(ew), free(eb), free(babs), free(tw), free(tb);
}

static void test_adam(rng *r)
{
    /* PyTorch: m = β1·m + (1-β1)·g'; v = β2·v + (1-β2)·g'²;
     * w -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps).  Error: m and
     * v carry a few u of their |terms| (m may cancel, so its error is
     * relative to the running Σ|terms|), the update is m/sqrt(v) with a
     * few more roundings: per step the update is off by
     * lr_t·(4u·mabs + 8u·|m|)/sqrt(v̂), w by 2u·|w|; tol = 4× the sum. */
    const size_t n = 1003; /* not a multiple of 4: the scalar tail runs too */
    const float lr = 0.01f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, l2 = 0.01f;
    const int steps = 6;
    float *w = frand(r, n, -1, 1), *m = fzeros(n), *v = fzeros(n);
    double *wd = dfrom(w, n), *md = dzeros(n), *vd = dzeros(n), *mabs = dzeros(n), *ew = dzeros(n);
    for (long t = 1; t <= steps; t++) {
        float *g = frand(r, n, -1, 1);
        nn_cpu_adam_step(w, g, m, v, n, lr, b1, b2, eps, l2, t);
        double bc1 = 1 - pow(b1, (double)t), bc2 = 1 - pow(b2, (double)t);
        for (size_t i = 0; i < n; i++) {
            double gi = g[i] + 2.0 * l2 * wd[i];
            md[i] = b1 * md[i] + (1 - (double)b1) * gi;
            vd[i] = b2 * vd[i] + (1 - (double)b2) * gi * gi;
            mabs[i] = b1 * mabs[i] + (1 - (double)b1) * fabs(gi);
            double denom = sqrt(vd[i]) / sqrt(bc2) + eps;
            wd[i] -= lr / bc1 * md[i] / denom;
            ew[i] += lr / bc1 * (4 * U * mabs[i] * t + 8 * U * fabs(md[i])) / denom + 2 * U * fabs(wd[i]);
        }
        free(g);
    }
    double *tw = scaled(ew, n, 4);
    ok(check_close("adam w", w, wd, tw, n), "adam l2=0.01: w = double PyTorch formulas after %d steps", steps);
    double *tm = dzeros(n), *tv = dzeros(n);
    for (size_t i = 0; i < n; i++)
        tm[i] = 16 * U * steps * mabs[i], tv[i] = 16 * U * steps * vd[i];
    ok(check_close("adam m", m, md, tm, n) & check_close("adam v", v, vd, tv, n),
       "adam m, v = double PyTorch formulas (tol 16u·steps·|terms|)");

    /* first step, l2 = 0: the bias corrections make m̂ = g and v̂ = g², so
     * each w moves by exactly -lr·g/(|g|+eps) ≈ -lr·sign(g), whatever |g|
     * (tol 8u·lr: the corrections and the quotient are a few roundings) */
    float w2[4] = {0, 0, 0, 0}, g2[4] = {0.3f, -2, 1e-3f, -7}, m2[4] = {0}, v2[4] = {0};
    nn_cpu_adam_step(w2, g2, m2, v2, 4, 0.5f, b1, b2, eps, 0.0f, 1);
    int first = 1;
    for (int i = 0; i < 4; i++)
        first &= fabs(w2[i] + 0.5 * g2[i] / (fabs(g2[i]) + eps)) <= 8 * U * 0.5;
    ok(first, "adam first step moves each weight by lr·sign(g) (bias correction): %g %g %g %g", (double)w2[0],
       (double)w2[1], (double)w2[2], (double)w2[3]);
    free(w), free(m), free(v), free(wd), free(md), free(vd), free(mabs), free(ew), free(tw), free(tm), free(tv);
}

/* The optimisers run four lanes at a time plus a scalar tail; one call over
 * n elements must equal n calls over one element each (all scalar), bit for
 * bit, so a result does not depend on where an element falls. */
static void test_optim_lanes(rng *r)
{
    const size_t n = 37;
    float *w = frand(r, n, -1, 1), *g = frand(r, n, -1, 1), *m = frand(r, n, -1, 1), *v = frand(r, n, 0, 1);
    float *w1 = fcopy(w, n), *m1 = fcopy(m, n), *v1 = fcopy(v, n);
    nn_cpu_adam_step(w, g, m, v, n, 0.01f, 0.9f, 0.999f, 1e-8f, 0.01f, 3);
    for (size_t i = 0; i < n; i++)
        nn_cpu_adam_step(w1 + i, g + i, m1 + i, v1 + i, 1, 0.01f, 0.9f, 0.999f, 1e-8f, 0.01f, 3);
    ok(memcmp(w, w1, n * sizeof *w) == 0 && memcmp(m, m1, n * sizeof *m) == 0 && memcmp(v, v1, n * sizeof *v) == 0,
       "adam: one call over n = n one-element calls (vector lanes against the scalar code), bit for bit");
    memcpy(w1, w, n * sizeof *w);
    memcpy(m1, m, n * sizeof *m);
    nn_cpu_sgd_step(w, g, m, n, 0.1f, 0.9f, 0.01f);
    for (size_t i = 0; i < n; i++)
        nn_cpu_sgd_step(w1 + i, g + i, m1 + i, 1, 0.1f, 0.9f, 0.01f);
    ok(memcmp(w, w1, n * sizeof *w) == 0 && memcmp(m, m1, n * sizeof *m) == 0,
       "sgd: one call over n = n one-element calls, bit for bit");
    /* lazy adam: one row of 37 (eight lanes, four lanes, the scalar tail)
     * against 37 rows of one (the scalar code alone), the same floats */
    memcpy(w1, w, n * sizeof *w);
    memcpy(m1, m, n * sizeof *m);
    memcpy(v1, v, n * sizeof *v);
    int32_t one = 0, each[37];
    for (int i = 0; i < 37; i++)
        each[i] = i;
    nn_cpu_lazy_adam_step(w, &(nn_row_grad){.rows = &one, .n_rows = 1, .rg = g}, n, m, v, 0.01f, 0.9f, 0.999f, 1e-8f,
                          0.01f, 3);
    nn_cpu_lazy_adam_step(w1, &(nn_row_grad){.rows = each, .n_rows = n, .rg = g}, 1, m1, v1, 0.01f, 0.9f, 0.999f,
                          1e-8f, 0.01f, 3);
    ok(memcmp(w, w1, n * sizeof *w) == 0 && memcmp(m, m1, n * sizeof *m) == 0 && memcmp(v, v1, n * sizeof *v) == 0,
       "lazy adam: one row of n = n rows of one, bit for bit");
    free(w), free(g), free(m), free(v), free(w1), free(m1), free(v1);
}

/* The exact steps over a row-sparse gradient against the dense steps on the
 * same gradient made dense, bit for bit: random row subsets (none, some,
 * all), widths of 1, odd ones, and above the 1024-float zero chunk, with
 * and without l2, some big enough to be split across threads. */
static void test_rows_steps(rng *r)
{
    int oka = 1, okm = 1, okp = 1;
    const int shapes = 24;
    for (int s = 0; s < shapes; s++) {
        size_t I = (size_t)(s < 4 ? rng_int(r, 1, 5) : s < 20 ? rng_int(r, 1, 90) : rng_int(r, 300, 700));
        size_t C = (size_t)(s % 4 == 0 ? 1 : s % 4 == 1 ? rng_int(r, 1, 40) : s % 4 == 2 ? rng_int(r, 1025, 2600) : 100);
        int every = s % 5 == 4, none = s % 7 == 3;
        float l2 = s % 2 ? 0.01f : 0.0f;
        size_t nw = I * C, nr = 0;
        int32_t *rows = xcalloc(I, sizeof *rows);
        for (size_t i = 0; i < I; i++)
            if (!none && (every || rng_u64(r) % 3 == 0))
                rows[nr++] = (int32_t)i;
        float *rg = frand(r, (nr ? nr : 1) * C, -1, 1), *g = fzeros(nw);
        for (size_t j = 0; j < nr; j++)
            memcpy(g + (size_t)rows[j] * C, rg + j * C, C * sizeof *g);
        float *w = frand(r, nw, -1, 1), *m = frand(r, nw, -0.1, 0.1), *v = frand(r, nw, 0, 0.01);
        float *w2 = fcopy(w, nw), *m2 = fcopy(m, nw), *v2 = fcopy(v, nw);
        nn_cpu_adam_step(w, g, m, v, nw, 0.01f, 0.9f, 0.999f, 1e-8f, l2, s + 1);
        nn_row_grad gr = {.rows = rows, .n_rows = nr, .rg = rg};
        nn_cpu_adam_rows_step(w2, &gr, I, C, m2, v2, 0.01f, 0.9f, 0.999f, 1e-8f, l2, s + 1);
        oka &= memcmp(w, w2, nw * sizeof *w) == 0 && memcmp(m, m2, nw * sizeof *m) == 0 &&
               memcmp(v, v2, nw * sizeof *v) == 0;
        nn_cpu_sgd_step(w, g, m, nw, 0.05f, 0.9f, l2);
        nn_cpu_sgd_rows_step(w2, &gr, I, C, m2, 0.05f, 0.9f, l2);
        okm &= memcmp(w, w2, nw * sizeof *w) == 0 && memcmp(m, m2, nw * sizeof *m) == 0;
        nn_cpu_sgd_step(w, g, NULL, nw, 0.05f, 0.0f, l2);
        nn_cpu_sgd_rows_step(w2, &gr, I, C, m2, 0.05f, 0.0f, l2);
        okp &= memcmp(w, w2, nw * sizeof *w) == 0 && memcmp(m, m2, nw * sizeof *m) == 0;
        free(rows), free(rg), free(g), free(w), free(m), free(v), free(w2), free(m2), free(v2);
    }
    ok(oka, "adam over a row-sparse gradient = adam over it made dense, bit for bit (%d shapes)", shapes);
    ok(okm, "sgd with momentum over a row-sparse gradient = over it made dense, bit for bit (%d shapes)", shapes);
    ok(okp, "plain sgd over a row-sparse gradient = over it made dense, bit for bit, buffer untouched (%d shapes)",
       shapes);
}

/* A row-sparse gradient left as sums of dy rows (what training hands the
 * steps) against the same gradient packed by nn_cpu_sparse_linear_bwd_rows:
 * every step, exact and lazy, gives the same floats bit for bit.  Widths
 * up to 2600 (sums taken over more than one 1024-float chunk), repeats. */
static void test_pending_rows(rng *r)
{
    int okx = 1;
    const int shapes = 16;
    for (int s = 0; s < shapes; s++) {
        int N = rng_int(r, 1, 40), K = rng_int(r, 1, 9), I = rng_int(r, 1, s < 8 ? 30 : 400);
        int O = s % 4 == 3 ? rng_int(r, 1025, 2600) : rng_int(r, 1, 70);
        size_t nnz = (size_t)N * K, nw = (size_t)I * O;
        int32_t *idx = rand_indices(r, N, K, I);
        float *dy = frand(r, (size_t)N * O, -1, 1), *rg = fzeros(nnz * (size_t)O);
        void *work = xcalloc(nn_cpu_sparse_plan_work(N, K), 1);
        nn_sparse_plan pl;
        nn_cpu_sparse_plan(&pl, idx, N, K, I, work);
        nn_cpu_sparse_linear_bwd_rows(&pl, dy, rg, NULL, N, O);
        nn_row_grad packed = {.rows = pl.rows, .n_rows = pl.n_rows, .rg = rg};
        nn_row_grad pending = {.rows = pl.rows, .n_rows = pl.n_rows, .plan = &pl, .dy = dy};
        for (int kind = 0; kind < 3; kind++) {
            float *w = frand(r, nw, -1, 1), *m = frand(r, nw, -0.1, 0.1), *v = frand(r, nw, 0, 0.01);
            float *w2 = fcopy(w, nw), *m2 = fcopy(m, nw), *v2 = fcopy(v, nw);
            float l2 = s % 2 ? 0.01f : 0.0f;
            if (kind == 0) {
                nn_cpu_adam_rows_step(w, &packed, (size_t)I, (size_t)O, m, v, 0.01f, 0.9f, 0.999f, 1e-8f, l2, 2);
                nn_cpu_adam_rows_step(w2, &pending, (size_t)I, (size_t)O, m2, v2, 0.01f, 0.9f, 0.999f, 1e-8f, l2, 2);
            } else if (kind == 1) {
                nn_cpu_sgd_rows_step(w, &packed, (size_t)I, (size_t)O, m, 0.05f, 0.9f, l2);
                nn_cpu_sgd_rows_step(w2, &pending, (size_t)I, (size_t)O, m2, 0.05f, 0.9f, l2);
            } else {
                nn_cpu_lazy_adam_step(w, &packed, (size_t)O, m, v, 0.01f, 0.9f, 0.999f, 1e-8f, l2, 2);
                nn_cpu_lazy_adam_step(w2, &pending, (size_t)O, m2, v2, 0.01f, 0.9f, 0.999f, 1e-8f, l2, 2);
            }
            okx &= memcmp(w, w2, nw * sizeof *w) == 0 && memcmp(m, m2, nw * sizeof *m) == 0 &&
                   memcmp(v, v2, nw * sizeof *v) == 0;
            free(w), free(m), free(v), free(w2), free(m2), free(v2);
        }
        free(idx), free(dy), free(rg), free(work);
    }
    ok(okx, "adam, sgd and lazy adam from rows left as sums = from the rows packed, bit for bit (%d shapes)", shapes);
}

/* The row-sparse backward against the dense scatter: the same rows, each
 * equal value for value (both add the same terms in the same (n, k) order,
 * the dense one onto a zeroed row), and nothing else touched.  Shapes with
 * small I (many repeats), with I = 1, and with I near 2^31 (three radix
 * passes; checked against a sort here instead of a dense dw). */
static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The row-wise backward through a fresh plan, as the model runs it; the
 * rows are copied out of the plan's scratch.  Returns their number. */
static size_t bwd_rows(const int32_t *idx, const float *dy, int32_t *rows, float *rg, float *db, int N, int K, int O,
                       int I)
{
    void *work = xcalloc(nn_cpu_sparse_plan_work(N, K), 1);
    nn_sparse_plan pl;
    nn_cpu_sparse_plan(&pl, idx, N, K, I, work);
    nn_cpu_sparse_linear_bwd_rows(&pl, dy, rg, db, N, O);
    memcpy(rows, pl.rows, pl.n_rows * sizeof *rows);
    free(work);
    return pl.n_rows;
}

static void test_sparse_rows(rng *r)
{
    int okrows = 1, okvals = 1, okdb = 1, okbig = 1, okfwd = 1;
    const int shapes = 40;
    for (int s = 0; s < shapes; s++) {
        /* the last shape is confA's first layer at batch 256, big enough to be split across threads */
        int last = s == shapes - 1;
        int N = last ? 256 : rng_int(r, 1, 40), K = last ? 39 : rng_int(r, 1, 12), O = last ? 100 : rng_int(r, 1, 70);
        int I = s == 0 ? 1 : last ? 7306 : rng_int(r, 1, s < 20 ? 30 : 3000);
        size_t nnz = (size_t)N * K, nw = (size_t)I * O;
        int32_t *idx = rand_indices(r, N, K, I), *rows = xcalloc(nnz, sizeof *rows);
        float *dy = frand(r, (size_t)N * O, -1, 1), *dw = fzeros(nw), *db0 = frand(r, O, -1, 1);
        float *db = fcopy(db0, O), *db2 = fcopy(db0, O), *rg = frand(r, nnz * O, -9, 9); /* overwritten */
        nn_cpu_sparse_linear_bwd(idx, dy, dw, db, N, K, O);
        size_t nr = bwd_rows(idx, dy, rows, rg, db2, N, K, O, I);
        okfwd &= fwd_rows_close(r, idx, N, K, I, O);
        int32_t *want = xcalloc(nnz, sizeof *want);
        memcpy(want, idx, nnz * sizeof *want);
        qsort(want, nnz, sizeof *want, cmp_i32);
        size_t nd = 0;
        for (size_t j = 0; j < nnz; j++)
            if (j == 0 || want[j] != want[j - 1])
                want[nd++] = want[j];
        okrows &= nr == nd && memcmp(rows, want, nd * sizeof *rows) == 0;
        for (size_t j = 0; j < nr && j < nd; j++)
            for (int o = 0; o < O; o++)
                okvals &= rg[j * O + (size_t)o] == dw[(size_t)rows[j] * O + (size_t)o];
        okdb &= memcmp(db, db2, (size_t)O * sizeof *db) == 0;
        free(idx), free(rows), free(dy), free(dw), free(db0), free(db), free(db2), free(rg), free(want);
    }
    /* indices near 2^31: one row per index value, and two collide on purpose */
    {
        const int N = 7, K = 3, O = 5;
        int32_t idx[21], rows[21];
        for (int j = 0; j < 21; j++)
            idx[j] = (int32_t)(2147483000 + (int)(rng_u64(r) % 600));
        idx[20] = idx[3];
        float *dy = frand(r, (size_t)N * O, -1, 1), rg[21 * 5];
        size_t nr = bwd_rows(idx, dy, rows, rg, NULL, N, K, O, 2147483647);
        for (size_t j = 0; j < nr; j++) {
            double sum[5] = {0};
            int hits = 0;
            for (int p = 0; p < N * K; p++) {
                if (idx[p] != rows[j])
                    continue;
                hits++;
                for (int o = 0; o < O; o++)
                    sum[o] += dy[(p / K) * O + o];
            }
            okbig &= hits > 0 && (j == 0 || rows[j] > rows[j - 1]);
            for (int o = 0; o < O; o++) /* at most 2 terms: one rounding */
                okbig &= fabs(rg[j * O + (size_t)o] - sum[o]) <= 2 * U * fabs(sum[o]);
        }
        int32_t sorted[21];
        memcpy(sorted, idx, sizeof sorted);
        qsort(sorted, 21, sizeof *sorted, cmp_i32);
        size_t nd = 0;
        for (int j = 0; j < 21; j++)
            nd += j == 0 || sorted[j] != sorted[j - 1];
        okbig &= nr == nd && nd <= 20;
        free(dy);
    }
    ok(okfwd, "sparse fwd by rows = double reference on the same 40 shapes, confA's at batch 256 among them");
    ok(okrows, "sparse bwd rows: the distinct indices, ascending, on %d shapes (I = 1 to 7306, repeats)", shapes);
    ok(okvals, "sparse bwd rows: each packed row equals the dense scatter's row exactly (same terms, same order)");
    ok(okdb, "sparse bwd rows: db equals the dense kernel's bit for bit");
    ok(okbig, "sparse bwd rows: indices near 2^31 (three radix passes) sorted, deduplicated and summed");
}

/* Lazy Adam against SparseAdam's formulas in double over 6 steps, each on
 * its own random subset of rows: listed rows follow the formulas (error
 * bounds as test_adam's, with SparseAdam's eps placement), unlisted rows
 * keep w, m and v bit for bit; one call equals one call per row. */
static void test_lazy_adam(rng *r)
{
    const size_t R = 40, C = 11; /* 11: lanes and the scalar tail */
    const float lr = 0.01f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, l2 = 0.01f;
    const int steps = 6;
    size_t n = R * C;
    float *w = frand(r, n, -1, 1), *m = fzeros(n), *v = fzeros(n);
    double *wd = dfrom(w, n), *md = dzeros(n), *vd = dzeros(n), *mabs = dzeros(n), *ew = dzeros(n);
    int kept = 1, ever[40] = {0};
    for (long t = 1; t <= steps; t++) {
        int32_t rows[40];
        size_t nr = 0;
        for (size_t i = 0; i < R; i++)
            if (i != 7 && rng_unit(r) < 0.4) /* row 7 is never listed */
                rows[nr++] = (int32_t)i, ever[i] = 1;
        float *g = frand(r, nr * C, -1, 1), *w0 = fcopy(w, n), *m0 = fcopy(m, n), *v0 = fcopy(v, n);
        nn_cpu_lazy_adam_step(w, &(nn_row_grad){.rows = rows, .n_rows = nr, .rg = g}, C, m, v, lr, b1, b2, eps, l2, t);
        double bc1 = 1 - pow(b1, (double)t), bc2 = 1 - pow(b2, (double)t), step = lr * sqrt(bc2) / bc1;
        size_t j = 0;
        for (size_t i = 0; i < R; i++) {
            if (j < nr && rows[j] == (int32_t)i) {
                for (size_t c = 0; c < C; c++) {
                    size_t e = i * C + c;
                    double gi = g[j * C + c] + 2.0 * l2 * wd[e];
                    md[e] = b1 * md[e] + (1 - (double)b1) * gi;
                    vd[e] = b2 * vd[e] + (1 - (double)b2) * gi * gi;
                    mabs[e] = b1 * mabs[e] + (1 - (double)b1) * fabs(gi);
                    double denom = sqrt(vd[e]) + eps;
                    wd[e] -= step * md[e] / denom;
                    ew[e] += step * (4 * U * mabs[e] * t + 8 * U * fabs(md[e])) / denom + 2 * U * fabs(wd[e]);
                }
                j++;
            } else {
                kept &= memcmp(w + i * C, w0 + i * C, C * sizeof *w) == 0 &&
                        memcmp(m + i * C, m0 + i * C, C * sizeof *m) == 0 &&
                        memcmp(v + i * C, v0 + i * C, C * sizeof *v) == 0;
            }
        }
        free(g), free(w0), free(m0), free(v0);
    }
    double *tw = scaled(ew, n, 4);
    ok(check_close("lazy adam w", w, wd, tw, n),
       "lazy adam l2=0.01: listed rows = double SparseAdam formulas after %d steps (tol as adam's)", steps);
    ok(kept && !ever[7], "lazy adam: unlisted rows keep w, m and v bit for bit (row 7 never listed, never moved)");
    free(w), free(m), free(v), free(wd), free(md), free(vd), free(mabs), free(ew), free(tw);
    /* one call over 700 rows of 101 (split across threads when there are
     * several) = one call per row (one thread, lanes then tail) */
    const size_t BR = 1000, BC = 101, nb = BR * BC;
    int32_t *rows = xcalloc(BR, sizeof *rows);
    size_t nr = 0;
    for (size_t i = 0; i < BR; i++)
        if (i % 10 < 7)
            rows[nr++] = (int32_t)i;
    float *g = frand(r, nr * BC, -1, 1), *bw = frand(r, nb, -1, 1), *bm = frand(r, nb, -1, 1);
    float *bv = frand(r, nb, 0, 1), *w1 = fcopy(bw, nb), *m1 = fcopy(bm, nb), *v1 = fcopy(bv, nb);
    nn_cpu_lazy_adam_step(bw, &(nn_row_grad){.rows = rows, .n_rows = nr, .rg = g}, BC, bm, bv, lr, b1, b2, eps, l2, 9);
    for (size_t k = 0; k < nr; k++)
        nn_cpu_lazy_adam_step(w1, &(nn_row_grad){.rows = rows + k, .n_rows = 1, .rg = g + k * BC}, BC, m1, v1, lr, b1,
                              b2, eps, l2, 9);
    ok(memcmp(bw, w1, nb * sizeof *bw) == 0 && memcmp(bm, m1, nb * sizeof *bm) == 0 &&
           memcmp(bv, v1, nb * sizeof *bv) == 0,
       "lazy adam: one call over %zu rows of %zu = one call per row, bit for bit", nr, BC);
    free(rows), free(g), free(bw), free(bm), free(bv), free(w1), free(m1), free(v1);
}

static void test_sumsq(rng *r)
{
    const size_t n = 100001;
    float *w = frand(r, n, -2, 2);
    double want = 0;
    for (size_t i = 0; i < n; i++)
        want += (double)w[i] * w[i];
    double got = nn_cpu_sumsq(w, n);
    /* double accumulation: tol n·2^-53·Σw² */
    ok(fabs(got - want) <= (double)n * 0x1p-53 * want, "sumsq = Σw² in double (%.15g vs %.15g)", got, want);
    ok(nn_cpu_sumsq(w, 0) == 0.0, "sumsq of nothing is 0");
    free(w);
}

/* Every backward kernel called twice onto zeroed gradients gives twice the
 * gradients: tol twice the single-call tolerance of section 1. */
static void test_accumulate_twice(rng *r)
{
    int N = 7, I = 33, O = 12, K = 5, C = 3, HW = 4;
    size_t nx = (size_t)N * I, nw = (size_t)O * I, ny = (size_t)N * O;
    float *x = frand(r, nx, -1, 1), *w = frand(r, nw, -1, 1), *dy = frand(r, ny, -1, 1);
    float *dx = fzeros(nx), *dw = fzeros(nw), *db = fzeros(O);
    double *rdx = dzeros(nx), *rdxm = dzeros(nx), *rdw = dzeros(nw), *rdwm = dzeros(nw), *rdb = dzeros(O),
           *rdbm = dzeros(O);
    for (int c = 0; c < 2; c++)
        nn_cpu_linear_bwd(x, w, dy, dx, dw, db, N, I, O);
    ref_linear_bwd(x, w, dy, N, I, O, rdx, rdxm, rdw, rdwm, rdb, rdbm);
    for (size_t i = 0; i < nx; i++)
        rdx[i] *= 2, rdxm[i] *= 2 * gamma_n(2 * (size_t)O + 2);
    for (size_t i = 0; i < nw; i++)
        rdw[i] *= 2, rdwm[i] *= 2 * gamma_n(2 * (size_t)N + 2);
    for (int i = 0; i < O; i++)
        rdb[i] *= 2, rdbm[i] *= 2 * gamma_n(2 * (size_t)N + 2);
    ok(check_close("linear dx twice", dx, rdx, rdxm, nx) & check_close("linear dw twice", dw, rdw, rdwm, nw) &
           check_close("linear db twice", db, rdb, rdbm, O),
       "linear bwd twice = twice the gradients");

    int32_t *idx = rand_indices(r, N, K, I);
    float *dws = fzeros((size_t)I * O), *dbs = fzeros(O);
    double *sw = dzeros((size_t)I * O), *swm = dzeros((size_t)I * O);
    for (int c = 0; c < 2; c++)
        nn_cpu_sparse_linear_bwd(idx, dy, dws, dbs, N, K, O);
    ref_sparse_bwd(idx, dy, N, K, I, O, sw, swm, rdb, rdbm);
    for (size_t i = 0; i < (size_t)I * O; i++)
        sw[i] *= 2, swm[i] *= 2 * gamma_n(2 * (size_t)N * K + 2);
    for (int i = 0; i < O; i++)
        rdb[i] *= 2, rdbm[i] *= 2 * gamma_n(2 * (size_t)N + 2);
    ok(check_close("sparse dw twice", dws, sw, swm, (size_t)I * O) & check_close("sparse db twice", dbs, rdb, rdbm, O),
       "sparse linear bwd twice = twice the gradients");

    size_t nb = (size_t)N * C * HW;
    float *bx = bn_input(r, N, C, HW), *g = frand(r, C, 0.5, 2), *be = frand(r, C, -1, 1), *bdy = frand(r, nb, -1, 1);
    float *by = fzeros(nb), *sm = fzeros(C), *si = fzeros(C), *rm = fzeros(C), *rv = fzeros(C);
    float *bdx = fzeros(nb), *dg = fzeros(C), *dbb = fzeros(C);
    float *bdx1 = fzeros(nb), *dg1 = fzeros(C), *dbb1 = fzeros(C);
    nn_cpu_bn_fwd_train(bx, g, be, by, sm, si, rm, rv, 0.1f, 1e-5f, N, C, HW);
    nn_cpu_bn_bwd(bx, g, sm, si, bdy, bdx1, dg1, dbb1, N, C, HW);
    for (int c = 0; c < 2; c++)
        nn_cpu_bn_bwd(bx, g, sm, si, bdy, bdx, dg, dbb, N, C, HW);
    /* the same contribution added twice onto 0 doubles exactly */
    int bn_ok = 1;
    for (size_t i = 0; i < nb; i++)
        bn_ok &= bdx[i] == 2 * bdx1[i];
    for (int c = 0; c < C; c++)
        bn_ok &= dg[c] == 2 * dg1[c] && dbb[c] == 2 * dbb1[c];
    ok(bn_ok, "bn bwd twice = twice the gradients (exact: same float contribution added to itself)");

    float *e1 = fzeros(ny), *e2 = fzeros(ny), *ey = fzeros(ny);
    uint8_t *mask = xcalloc(ny, 1);
    nn_cpu_relu_fwd(dy, ey, ny);
    nn_cpu_relu_bwd(ey, dy, e1, ny);
    nn_cpu_relu_bwd(ey, dy, e2, ny);
    nn_cpu_relu_bwd(ey, dy, e2, ny);
    int el_ok = 1;
    for (size_t i = 0; i < ny; i++)
        el_ok &= e2[i] == 2 * e1[i];
    memset(e1, 0, ny * sizeof *e1);
    memset(e2, 0, ny * sizeof *e2);
    nn_cpu_dropout_fwd(dy, ey, mask, 0.3f, 9, ny);
    nn_cpu_dropout_bwd(mask, dy, e1, 0.3f, ny);
    nn_cpu_dropout_bwd(mask, dy, e2, 0.3f, ny);
    nn_cpu_dropout_bwd(mask, dy, e2, 0.3f, ny);
    for (size_t i = 0; i < ny; i++)
        el_ok &= e2[i] == 2 * e1[i];
    ok(el_ok, "relu and dropout bwd twice = twice the gradients (exact)");

    free(x), free(w), free(dy), free(dx), free(dw), free(db), free(rdx), free(rdxm), free(rdw), free(rdwm), free(rdb);
    free(rdbm), free(idx), free(dws), free(dbs), free(sw), free(swm), free(bx), free(g), free(be), free(bdy), free(by);
    free(sm), free(si), free(rm), free(rv), free(bdx), free(dg), free(dbb), free(bdx1), free(dg1), free(dbb1);
    free(e1), free(e2), free(ey), free(mask);
}

int main(void)
{
    rng r = {20240601};
    test_linear_random(&r);
    test_sparse_random(&r);
    test_bn_random(&r);
    test_elem_random(&r);
    test_xent_random(&r);

    test_fd_linear(&r);
    test_fd_sparse(&r);
    test_fd_bn(&r, 5, 3, 1);
    test_fd_bn(&r, 2, 2, 3);
    test_fd_elem(&r);
    test_fd_xent(&r);

    test_sparse_vs_dense(&r);
    test_bn_running();
    test_dropout_mask();
    test_xent_cases();

    test_sgd(&r);
    test_adam(&r);
    test_optim_lanes(&r);
    test_rows_steps(&r);
    test_pending_rows(&r);
    test_sparse_rows(&r);
    test_lazy_adam(&r);
    test_sumsq(&r);
    test_accumulate_twice(&r);
    return tap_done();
}
