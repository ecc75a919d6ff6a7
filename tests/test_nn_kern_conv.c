/* The CPU convolution and pooling kernels (nn/kern_conv.c, nn/kern_pool.c)
 * against references written here, in the spirit of dav1d's checkasm:
 *
 *  1. conv forward and backward (dx, dw, db) against a direct 7-loop
 *     convolution in double, on ~50 random geometries (stride 1..3, pad
 *     0..3, kernels 1/3/5/7 including non-square ones, non-square inputs,
 *     N 1..5, C/OC 1..9) plus fixed ones that hit every path of the kernel:
 *     direct 1x1, im2col one image per GEMM, several images per GEMM with
 *     a full and a partial last group; pooling against direct loops that
 *     treat padding literally as -inf (max) or 0 (avg);
 *  2. every backward pass against central finite differences of the loss
 *     L = Σ y·r (r random) evaluated with the double reference forward;
 *  3. accumulation: two backward calls add twice the gradient onto what was
 *     there; NULL dx / db / bias accepted; results bit-identical across calls;
 *  4. max-pool ties pick the first element, padding never wins (not even
 *     against -inf inputs), avg-pool divides by k·k at the borders; GAP;
 *  5. a 1x1 convolution (direct path) equals the 3x3 pad-1 convolution whose
 *     kernel is zero except the centre (general path);
 *  6. the implicit per-tap GEMM path (small maps): which layers the rule
 *     sends there, the path forced on 1x1..4x4 and non-square maps, strides
 *     1 and 2, batch 1 and more, against the double reference (and finite
 *     differences, and the accumulation checks of 3), and against the
 *     im2col path on the same random data (ResNet-18's layers at full width
 *     and random small ones).  The kernels' scratch starts as NaNs, so
 *     reading scratch that was never written shows.
 *
 * Tolerances.  The kernels sum in float (OpenBLAS sgemm, FMA, blocked); the
 * references sum exactly-converted inputs in double.  The rounding error of
 * a float sum of K terms is bounded by ~K·u·Σ|terms| (u = 2^-24 = 6e-8) and
 * is typically ~sqrt(K)·u·Σ|terms|; K <= 441 for the forward here, so every
 * comparison uses |got - want| <= REL·Σ|terms| with REL = 1e-5: ~10x above
 * what float rounding produces in practice, yet an indexing mistake (a term
 * missing, doubled or misplaced) moves a result by a whole term, >= 1/K of
 * Σ|terms|, i.e. >= 2e-3 of it, which is 200x over the bound. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_kern_cpu.h"
#include "tap.h"

#define REL 1e-5

/* ---- a small seeded PRNG (splitmix64), so every run sees the same data ---- */
typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform integer in [lo, hi]. */
static int rng_int(rng *r, int lo, int hi) { return lo + (int)(rng_next(r) % (uint64_t)(hi - lo + 1)); }

/* Uniform in [-1, 1), with 24 bits so it is exact in float. */
static float rng_sym(rng *r) { return (float)((double)(rng_next(r) >> 40) / (double)(1u << 23) - 1.0); }

static void fill_sym(rng *r, float *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        a[i] = rng_sym(r);
}

/* ---- allocation that fails loudly: exact sizes so ASan sees any overrun ---- */
static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        tap_bail("out of memory");
    return p;
}
#define FALLOC(n) ((float *)xcalloc((n), sizeof(float)))
#define DALLOC(n) ((double *)xcalloc((n), sizeof(double)))

static double *to_double(const float *a, size_t n)
{
    double *d = DALLOC(n);
    for (size_t i = 0; i < n; i++)
        d[i] = a[i];
    return d;
}

/* ---- comparison with diagnostics ----
 * Passes when |got[i] - want[i]| <= rel·scale[i] + floor for every i (scale
 * NULL: 1); on failure prints the worst element, its index, both values and
 * its allowance. */
static int check_close(const char *what, const char *geom, const float *got, const double *want,
                       const double *scale, size_t n, double rel, double floor)
{
    double worst_ratio = 0.0, worst_err = 0.0;
    size_t worst = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]);
        double allow = rel * (scale ? scale[i] : 1.0) + floor;
        double ratio = err == 0.0 ? 0.0 : err / allow; /* untouched elements have allow 0 */
        if (!(err <= allow)) /* also catches NaN */
            bad++;
        if (!(ratio <= worst_ratio)) {
            worst_ratio = ratio;
            worst = i;
            worst_err = err;
        }
    }
    int pass = ok(bad == 0, "%s %s (max err %.3g, %.2f of allowance)", what, geom, worst_err, worst_ratio);
    if (!pass)
        tap_diag("%d of %zu elements off; worst [%zu]: got %.9g want %.9g allowance %.3g", bad, n, worst,
                 (double)got[worst], want[worst], rel * (scale ? scale[worst] : 1.0) + floor);
    return pass;
}

/* ---- reference convolution in double: the definition, loop by loop ---- */
static size_t conv_x_n(const nn_conv_geom *g) { return (size_t)g->N * g->C * g->H * g->W; }
static size_t conv_w_n(const nn_conv_geom *g) { return (size_t)g->OC * g->C * g->KH * g->KW; }
static size_t conv_y_n(const nn_conv_geom *g) { return (size_t)g->N * g->OC * g->OH * g->OW; }

/* y = conv(x, w) + b; yabs (may be NULL) = Σ|terms| per output. */
static void ref_conv_fwd(const nn_conv_geom *g, const double *x, const double *w, const double *b, double *y,
                         double *yabs)
{
    for (int n = 0; n < g->N; n++)
        for (int oc = 0; oc < g->OC; oc++)
            for (int oh = 0; oh < g->OH; oh++)
                for (int ow = 0; ow < g->OW; ow++) {
                    double s = b ? b[oc] : 0.0, sa = b ? fabs(b[oc]) : 0.0;
                    for (int c = 0; c < g->C; c++)
                        for (int kh = 0; kh < g->KH; kh++)
                            for (int kw = 0; kw < g->KW; kw++) {
                                int ih = oh * g->stride - g->pad + kh, iw = ow * g->stride - g->pad + kw;
                                if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W)
                                    continue;
                                double t = x[((size_t)(n * g->C + c) * g->H + ih) * g->W + iw] *
                                           w[((size_t)(oc * g->C + c) * g->KH + kh) * g->KW + kw];
                                s += t;
                                sa += fabs(t);
                            }
                    size_t o = ((size_t)(n * g->OC + oc) * g->OH + oh) * g->OW + ow;
                    y[o] = s;
                    if (yabs)
                        yabs[o] = sa;
                }
}

/* Gradients of Σ y·dy, overwritten, with Σ|terms| of each in the *abs. */
static void ref_conv_bwd(const nn_conv_geom *g, const double *x, const double *w, const double *dy, double *dx,
                         double *dw, double *db, double *dxabs, double *dwabs, double *dbabs)
{
    memset(dx, 0, sizeof(double) * conv_x_n(g));
    memset(dw, 0, sizeof(double) * conv_w_n(g));
    memset(db, 0, sizeof(double) * (size_t)g->OC);
    memset(dxabs, 0, sizeof(double) * conv_x_n(g));
    memset(dwabs, 0, sizeof(double) * conv_w_n(g));
    memset(dbabs, 0, sizeof(double) * (size_t)g->OC);
    for (int n = 0; n < g->N; n++)
        for (int oc = 0; oc < g->OC; oc++)
            for (int oh = 0; oh < g->OH; oh++)
                for (int ow = 0; ow < g->OW; ow++) {
                    double d = dy[((size_t)(n * g->OC + oc) * g->OH + oh) * g->OW + ow];
                    db[oc] += d;
                    dbabs[oc] += fabs(d);
                    for (int c = 0; c < g->C; c++)
                        for (int kh = 0; kh < g->KH; kh++)
                            for (int kw = 0; kw < g->KW; kw++) {
                                int ih = oh * g->stride - g->pad + kh, iw = ow * g->stride - g->pad + kw;
                                if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W)
                                    continue;
                                size_t xi = ((size_t)(n * g->C + c) * g->H + ih) * g->W + iw;
                                size_t wi = ((size_t)(oc * g->C + c) * g->KH + kh) * g->KW + kw;
                                dx[xi] += w[wi] * d;
                                dxabs[xi] += fabs(w[wi] * d);
                                dw[wi] += x[xi] * d;
                                dwabs[wi] += fabs(x[xi] * d);
                            }
                }
}

/* want += start, scale += |start|: the expectation of accumulating onto start. */
static void add_start(double *want, double *scale, const float *start, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        want[i] += start[i];
        scale[i] += fabs((double)start[i]);
    }
}

static void geom_str(const nn_conv_geom *g, char *s, size_t n)
{
    snprintf(s, n, "[N%d C%d %dx%d -> OC%d k%dx%d s%d p%d -> %dx%d %s]", g->N, g->C, g->H, g->W, g->OC, g->KH, g->KW,
             g->stride, g->pad, g->OH, g->OW, g->taps ? "taps" : "im2col");
}

/* Which path a test runs: the one nn_conv_geom_init picks, or either one
 * forced (the kernels take whichever g->taps names). */
enum { PATH_RULE = -1, PATH_IM2COL = 0, PATH_TAPS = 1 };

static void conv_setup(nn_conv_geom *g, int path)
{
    if (nn_conv_geom_init(g) != 0)
        tap_bail("test bug: conv geometry refused");
    if (path != PATH_RULE)
        g->taps = path;
}

/* Scratch of exactly the advertised size, full of NaNs so that a kernel
 * that reads scratch it has not written (say, a partial sum of a thread that
 * had no work) poisons its results; NULL when none is needed, which proves
 * the kernel does not touch it. */
static float *conv_work(const nn_conv_geom *g)
{
    size_t n = nn_cpu_conv2d_work(g);
    float *w = n ? FALLOC(n) : NULL;
    for (size_t i = 0; i < n; i++)
        w[i] = NAN;
    return w;
}

/* ---- 1. conv against the double reference ---- */
static void conv_vs_reference_on(rng *r, nn_conv_geom g, int with_bias, int path)
{
    char gs[128];
    conv_setup(&g, path);
    geom_str(&g, gs, sizeof gs);
    size_t nx = conv_x_n(&g), nw = conv_w_n(&g), ny = conv_y_n(&g);
    float *x = FALLOC(nx), *w = FALLOC(nw), *b = FALLOC(g.OC), *y = FALLOC(ny), *dy = FALLOC(ny);
    float *dx = FALLOC(nx), *dw = FALLOC(nw), *db = FALLOC(g.OC), *work = conv_work(&g);
    fill_sym(r, x, nx);
    fill_sym(r, w, nw);
    fill_sym(r, b, g.OC);
    fill_sym(r, dy, ny);
    for (size_t i = 0; i < ny; i++)
        y[i] = NAN; /* the forward must overwrite every output */

    double *xd = to_double(x, nx), *wd = to_double(w, nw), *bd = to_double(b, g.OC), *dyd = to_double(dy, ny);
    double *yr = DALLOC(ny), *ya = DALLOC(ny);
    ref_conv_fwd(&g, xd, wd, with_bias ? bd : NULL, yr, ya);
    nn_cpu_conv2d_fwd(&g, x, w, with_bias ? b : NULL, y, work);
    check_close(with_bias ? "conv fwd" : "conv fwd (no bias)", gs, y, yr, ya, ny, REL, 0.0);

    double *dxr = DALLOC(nx), *dwr = DALLOC(nw), *dbr = DALLOC(g.OC);
    double *dxa = DALLOC(nx), *dwa = DALLOC(nw), *dba = DALLOC(g.OC);
    ref_conv_bwd(&g, xd, wd, dyd, dxr, dwr, dbr, dxa, dwa, dba);
    /* the gradients start from random values, which the kernel must add
     * onto (and which count into the scale of the sum) */
    fill_sym(r, dx, nx);
    fill_sym(r, dw, nw);
    fill_sym(r, db, g.OC);
    add_start(dxr, dxa, dx, nx);
    add_start(dwr, dwa, dw, nw);
    add_start(dbr, dba, db, (size_t)g.OC);
    nn_cpu_conv2d_bwd(&g, x, w, dy, dx, dw, db, work);
    check_close("conv bwd dx (+= onto random)", gs, dx, dxr, dxa, nx, REL, 0.0);
    check_close("conv bwd dw (+= onto random)", gs, dw, dwr, dwa, nw, REL, 0.0);
    check_close("conv bwd db (+= onto random)", gs, db, dbr, dba, (size_t)g.OC, REL, 0.0);

    free(x), free(w), free(b), free(y), free(dy), free(dx), free(dw), free(db), free(work);
    free(xd), free(wd), free(bd), free(dyd), free(yr), free(ya);
    free(dxr), free(dwr), free(dbr), free(dxa), free(dwa), free(dba);
}

static void conv_vs_reference(rng *r, nn_conv_geom g, int with_bias)
{
    conv_vs_reference_on(r, g, with_bias, PATH_RULE);
}

static const int kernel_sizes[] = {1, 3, 5, 7};

/* A random valid geometry: kernels from {1,3,5,7} (a quarter non-square),
 * inputs 1..16 a side (non-square), retried until the output is not empty. */
static nn_conv_geom random_conv_geom(rng *r)
{
    for (;;) {
        nn_conv_geom g = {0};
        g.N = rng_int(r, 1, 3);
        g.C = rng_int(r, 1, 9);
        g.OC = rng_int(r, 1, 9);
        g.KH = kernel_sizes[rng_int(r, 0, 3)];
        g.KW = rng_int(r, 0, 3) == 0 ? kernel_sizes[rng_int(r, 0, 3)] : g.KH;
        g.stride = rng_int(r, 1, 3);
        g.pad = rng_int(r, 0, 3);
        g.H = rng_int(r, 1, 16);
        g.W = rng_int(r, 1, 16);
        if (nn_conv_geom_init(&g) == 0)
            return g;
    }
}

static void test_conv_reference(rng *r)
{
    /* Fixed geometries, one per code path:
     *   - 1x1 s1 p0 with >= 256 output pixels: the direct path (no scratch);
     *   - 1x1 s1 p0 with few pixels, 1x1 stride 2: through im2col;
     *   - 12x12 output, N 3: two images per GEMM, last group partial;
     *   - 10x10 output, N 5: three images per GEMM, last group partial;
     *   - the ResNet stem (7x7 s2 p3) and a VGG/ResNet 3x3 p1 at 16x16;
     *   - a kernel larger than the input, and rows of >= 32 pixels (im2col
     *     copies those with memcpy, shorter ones with a loop). */
    static const nn_conv_geom fixed[] = {
        {.N = 3, .C = 5, .H = 16, .W = 20, .OC = 7, .KH = 1, .KW = 1, .stride = 1, .pad = 0},
        {.N = 2, .C = 4, .H = 3, .W = 5, .OC = 6, .KH = 1, .KW = 1, .stride = 1, .pad = 0},
        {.N = 2, .C = 6, .H = 9, .W = 8, .OC = 5, .KH = 1, .KW = 1, .stride = 2, .pad = 0},
        {.N = 3, .C = 4, .H = 12, .W = 12, .OC = 5, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        /* taps that only see padding: ResNet's last stage at 32x32 inputs (3x3 pad 1 on 1x1; stride 2 from 2x2),
         * a 5x5 on 2x2 (rows and columns cut alike), and an uneven cut that keeps the full kernel */
        {.N = 4, .C = 6, .H = 1, .W = 1, .OC = 5, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 3, .C = 4, .H = 2, .W = 2, .OC = 5, .KH = 3, .KW = 3, .stride = 2, .pad = 1},
        {.N = 2, .C = 3, .H = 2, .W = 2, .OC = 4, .KH = 5, .KW = 5, .stride = 1, .pad = 2},
        {.N = 2, .C = 3, .H = 1, .W = 4, .OC = 4, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 5, .C = 3, .H = 10, .W = 10, .OC = 4, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 2, .C = 3, .H = 22, .W = 18, .OC = 8, .KH = 7, .KW = 7, .stride = 2, .pad = 3},
        {.N = 2, .C = 8, .H = 16, .W = 16, .OC = 8, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 1, .C = 2, .H = 2, .W = 3, .OC = 3, .KH = 7, .KW = 5, .stride = 3, .pad = 3},
        {.N = 2, .C = 2, .H = 4, .W = 37, .OC = 3, .KH = 3, .KW = 5, .stride = 1, .pad = 2},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        conv_vs_reference(r, fixed[i], 1);
    nn_conv_geom direct = fixed[0];
    nn_conv_geom_init(&direct);
    /* No im2col buffer: with several threads only the private weight
     * gradients (OC·C floats a thread), with one nothing at all. */
    is_int(nn_cpu_conv2d_work(&direct), direct.threads > 1 ? (long long)direct.threads * direct.OC * direct.C : 0,
           "1x1 s1 p0 at 16x20 takes the direct path (no im2col scratch; %d threads)", direct.threads);
    for (int i = 0; i < 48; i++)
        conv_vs_reference(r, random_conv_geom(r), i % 4 != 3);
}

/* ---- 2. finite differences of L = Σ y·r through the double forward ----
 * L is linear in each single element of x, w and b (the convolution is
 * bilinear), so the central difference has no truncation error at all and
 * its only error is the rounding of the two double evaluations of L,
 * divided by 2h: allowed for as FD_ULPS·DBL_EPSILON·Labs/h with Labs the
 * sum of |every product summed into L| (~1e-9 here, far below any real
 * mistake, which is the size of a whole term).  What remains is the float
 * rounding of the kernel's gradient, allowed for with REL·Σ|terms| as
 * everywhere.  h = 1e-4 because the exactness makes h's size irrelevant to
 * truncation and a larger h only shrinks the rounding term. */
#define FD_H 1e-4
#define FD_ULPS 256

static double conv_loss(const nn_conv_geom *g, const double *x, const double *w, const double *b, const double *r,
                        double *y, double *labs)
{
    size_t ny = conv_y_n(g);
    double *ya = DALLOC(ny);
    ref_conv_fwd(g, x, w, b, y, ya);
    double l = 0.0, la = 0.0;
    for (size_t i = 0; i < ny; i++) {
        l += y[i] * r[i];
        la += ya[i] * fabs(r[i]);
    }
    free(ya);
    if (labs)
        *labs = la;
    return l;
}

/* Central difference of conv_loss with respect to every element of p. */
static void conv_fd(const nn_conv_geom *g, double *x, double *w, double *b, const double *r, double *p, size_t n,
                    double *out)
{
    double *y = DALLOC(conv_y_n(g));
    for (size_t i = 0; i < n; i++) {
        double keep = p[i];
        p[i] = keep + FD_H;
        double lp = conv_loss(g, x, w, b, r, y, NULL);
        p[i] = keep - FD_H;
        double lm = conv_loss(g, x, w, b, r, y, NULL);
        p[i] = keep;
        out[i] = (lp - lm) / (2 * FD_H);
    }
    free(y);
}

static void conv_vs_fd(rng *r, nn_conv_geom g, int path)
{
    char gs[128];
    conv_setup(&g, path);
    geom_str(&g, gs, sizeof gs);
    size_t nx = conv_x_n(&g), nw = conv_w_n(&g), ny = conv_y_n(&g);
    float *x = FALLOC(nx), *w = FALLOC(nw), *b = FALLOC(g.OC), *dy = FALLOC(ny);
    float *dx = FALLOC(nx), *dw = FALLOC(nw), *db = FALLOC(g.OC), *work = conv_work(&g);
    fill_sym(r, x, nx);
    fill_sym(r, w, nw);
    fill_sym(r, b, g.OC);
    fill_sym(r, dy, ny);
    nn_cpu_conv2d_bwd(&g, x, w, dy, dx, dw, db, work);

    double *xd = to_double(x, nx), *wd = to_double(w, nw), *bd = to_double(b, g.OC), *rd = to_double(dy, ny);
    double *fx = DALLOC(nx), *fw = DALLOC(nw), *fb = DALLOC(g.OC), *y = DALLOC(ny), labs;
    conv_loss(&g, xd, wd, bd, rd, y, &labs);
    conv_fd(&g, xd, wd, bd, rd, xd, nx, fx);
    conv_fd(&g, xd, wd, bd, rd, wd, nw, fw);
    conv_fd(&g, xd, wd, bd, rd, bd, (size_t)g.OC, fb);

    double *gx = DALLOC(nx), *gw = DALLOC(nw), *gb = DALLOC(g.OC);
    double *ax = DALLOC(nx), *aw = DALLOC(nw), *ab = DALLOC(g.OC);
    ref_conv_bwd(&g, xd, wd, rd, gx, gw, gb, ax, aw, ab); /* only for the Σ|terms| scales */
    double floor = FD_ULPS * DBL_EPSILON * labs / FD_H;
    check_close("conv dx vs finite differences", gs, dx, fx, ax, nx, REL, floor);
    check_close("conv dw vs finite differences", gs, dw, fw, aw, nw, REL, floor);
    check_close("conv db vs finite differences", gs, db, fb, ab, (size_t)g.OC, REL, floor);

    free(x), free(w), free(b), free(dy), free(dx), free(dw), free(db), free(work);
    free(xd), free(wd), free(bd), free(rd), free(fx), free(fw), free(fb), free(y);
    free(gx), free(gw), free(gb), free(ax), free(aw), free(ab);
}

static void test_conv_fd(rng *r)
{
    static const nn_conv_geom fixed[] = {
        {.N = 2, .C = 2, .H = 6, .W = 7, .OC = 3, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 2, .C = 3, .H = 7, .W = 5, .OC = 2, .KH = 3, .KW = 3, .stride = 2, .pad = 0},
        {.N = 1, .C = 2, .H = 9, .W = 8, .OC = 2, .KH = 5, .KW = 5, .stride = 3, .pad = 2},
        {.N = 2, .C = 3, .H = 5, .W = 6, .OC = 4, .KH = 1, .KW = 1, .stride = 1, .pad = 0},
        {.N = 1, .C = 2, .H = 8, .W = 9, .OC = 2, .KH = 7, .KW = 3, .stride = 2, .pad = 3},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        conv_vs_fd(r, fixed[i], PATH_RULE);
    for (int i = 0; i < 3; i++) {
        nn_conv_geom g;
        do
            g = random_conv_geom(r);
        while ((long)g.N * g.C * g.H * g.W * g.OC * g.KH * g.KW > 40000); /* keep FD cheap */
        conv_vs_fd(r, g, PATH_RULE);
    }
    /* the per-tap path: a non-square map, a strided one, a 1x1 map */
    static const nn_conv_geom taps[] = {
        {.N = 2, .C = 2, .H = 2, .W = 3, .OC = 3, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 1, .C = 3, .H = 4, .W = 4, .OC = 2, .KH = 3, .KW = 3, .stride = 2, .pad = 1},
        {.N = 2, .C = 3, .H = 1, .W = 1, .OC = 2, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
    };
    for (size_t i = 0; i < sizeof taps / sizeof taps[0]; i++)
        conv_vs_fd(r, taps[i], PATH_TAPS);
}

/* ---- 3. accumulation, NULLs, determinism ---- */
static void test_conv_accumulates(rng *r)
{
    static const nn_conv_geom shapes[] = {
        {.N = 3, .C = 4, .H = 9, .W = 7, .OC = 5, .KH = 3, .KW = 3, .stride = 2, .pad = 1},
        {.N = 2, .C = 3, .H = 16, .W = 16, .OC = 4, .KH = 1, .KW = 1, .stride = 1, .pad = 0},
        {.N = 3, .C = 5, .H = 4, .W = 3, .OC = 6, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 2, .C = 6, .H = 1, .W = 1, .OC = 4, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
    };
    static const int paths[] = {PATH_RULE, PATH_RULE, PATH_TAPS, PATH_TAPS};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        nn_conv_geom g = shapes[s];
        char gs[128];
        conv_setup(&g, paths[s]);
        geom_str(&g, gs, sizeof gs);
        size_t nx = conv_x_n(&g), nw = conv_w_n(&g), ny = conv_y_n(&g), no = (size_t)g.OC;
        float *x = FALLOC(nx), *w = FALLOC(nw), *b = FALLOC(no), *dy = FALLOC(ny), *work = conv_work(&g);
        float *dx1 = FALLOC(nx), *dw1 = FALLOC(nw), *db1 = FALLOC(no);
        float *dx2 = FALLOC(nx), *dw2 = FALLOC(nw), *db2 = FALLOC(no);
        fill_sym(r, x, nx);
        fill_sym(r, w, nw);
        fill_sym(r, dy, ny);
        /* once from zero */
        nn_cpu_conv2d_bwd(&g, x, w, dy, dx1, dw1, db1, work);
        /* twice on top of random initial values g0: must give g0 + 2·once */
        fill_sym(r, dx2, nx);
        fill_sym(r, dw2, nw);
        fill_sym(r, db2, no);
        double *ex = to_double(dx2, nx), *ew = to_double(dw2, nw), *eb = to_double(db2, no);
        double *sx = DALLOC(nx), *sw = DALLOC(nw), *sb = DALLOC(no);
        for (size_t i = 0; i < nx; i++)
            ex[i] += 2.0 * dx1[i], sx[i] = fabs(ex[i]) + 2.0 * fabs(dx1[i]);
        for (size_t i = 0; i < nw; i++)
            ew[i] += 2.0 * dw1[i], sw[i] = fabs(ew[i]) + 2.0 * fabs(dw1[i]);
        for (size_t i = 0; i < no; i++)
            eb[i] += 2.0 * db1[i], sb[i] = fabs(eb[i]) + 2.0 * fabs(db1[i]);
        nn_cpu_conv2d_bwd(&g, x, w, dy, dx2, dw2, db2, work);
        nn_cpu_conv2d_bwd(&g, x, w, dy, dx2, dw2, db2, work);
        /* the scale is the magnitude of the sums, a looser proxy for
         * Σ|terms|, so allow 10x REL */
        check_close("conv bwd twice adds dx twice onto what was there", gs, dx2, ex, sx, nx, 10 * REL, 0.0);
        check_close("conv bwd twice adds dw twice onto what was there", gs, dw2, ew, sw, nw, 10 * REL, 0.0);
        check_close("conv bwd twice adds db twice onto what was there", gs, db2, eb, sb, no, 10 * REL, 0.0);

        /* NULL dx and db: dw is computed the same way, so bit-identical */
        float *dw3 = FALLOC(nw);
        nn_cpu_conv2d_bwd(&g, x, w, dy, NULL, dw3, NULL, work);
        ok(memcmp(dw3, dw1, sizeof(float) * nw) == 0, "conv bwd with dx = db = NULL: dw unchanged %s", gs);

        /* determinism: same inputs, same bits */
        float *y1 = FALLOC(ny), *y2 = FALLOC(ny);
        fill_sym(r, b, no);
        nn_cpu_conv2d_fwd(&g, x, w, b, y1, work);
        nn_cpu_conv2d_fwd(&g, x, w, b, y2, work);
        float *dx4 = FALLOC(nx), *dw4 = FALLOC(nw), *db4 = FALLOC(no);
        nn_cpu_conv2d_bwd(&g, x, w, dy, dx4, dw4, db4, work);
        ok(memcmp(y1, y2, sizeof(float) * ny) == 0 && memcmp(dx4, dx1, sizeof(float) * nx) == 0 &&
               memcmp(dw4, dw1, sizeof(float) * nw) == 0 && memcmp(db4, db1, sizeof(float) * no) == 0,
           "conv fwd and bwd are bit-identical across calls %s", gs);

        free(x), free(w), free(b), free(dy), free(work), free(dx1), free(dw1), free(db1);
        free(dx2), free(dw2), free(db2), free(ex), free(ew), free(eb), free(sx), free(sw), free(sb);
        free(dw3), free(y1), free(y2), free(dx4), free(dw4), free(db4);
    }
}

/* ---- 5. 1x1 direct path == 3x3 pad-1 general path with a centre-only kernel ---- */
static void test_conv_1x1_vs_general(rng *r)
{
    nn_conv_geom g1 = {.N = 2, .C = 6, .H = 17, .W = 16, .OC = 5, .KH = 1, .KW = 1, .stride = 1, .pad = 0};
    nn_conv_geom g3 = g1;
    g3.KH = g3.KW = 3;
    g3.pad = 1;
    nn_conv_geom_init(&g1);
    nn_conv_geom_init(&g3);
    is_int(nn_cpu_conv2d_work(&g1), g1.threads > 1 ? (long long)g1.threads * g1.OC * g1.C : 0,
           "1x1 at 17x16 takes the direct path (no im2col scratch)");
    ok(nn_cpu_conv2d_work(&g3) > 0, "3x3 pad 1 takes the im2col path");
    size_t nx = conv_x_n(&g1), ny = conv_y_n(&g1), n1 = conv_w_n(&g1), n3 = conv_w_n(&g3), no = (size_t)g1.OC;
    float *x = FALLOC(nx), *w1 = FALLOC(n1), *w3 = FALLOC(n3), *b = FALLOC(no), *dy = FALLOC(ny);
    float *y1 = FALLOC(ny), *y3 = FALLOC(ny), *work = conv_work(&g3), *work1 = conv_work(&g1);
    fill_sym(r, x, nx);
    fill_sym(r, w1, n1);
    fill_sym(r, b, no);
    fill_sym(r, dy, ny);
    for (size_t i = 0; i < n1; i++)
        w3[i * 9 + 4] = w1[i]; /* [oc, c] -> centre of [oc, c, 3, 3] */
    nn_cpu_conv2d_fwd(&g1, x, w1, b, y1, work1);
    nn_cpu_conv2d_fwd(&g3, x, w3, b, y3, work);
    /* both sum the same C products (the 3x3 adds exact zeros), so the only
     * difference is summation order: Σ|terms| <= C + |b| <= 7 here */
    double *y3d = to_double(y3, ny);
    check_close("1x1 direct fwd == 3x3 centre-only fwd", "", y1, y3d, NULL, ny, REL * 7, 0.0);

    float *dx1 = FALLOC(nx), *dx3 = FALLOC(nx), *dw1 = FALLOC(n1), *dw3 = FALLOC(n3), *db1 = FALLOC(no),
          *db3 = FALLOC(no);
    nn_cpu_conv2d_bwd(&g1, x, w1, dy, dx1, dw1, db1, work1);
    nn_cpu_conv2d_bwd(&g3, x, w3, dy, dx3, dw3, db3, work);
    double *dx3d = to_double(dx3, nx), *dwc = DALLOC(n1), *db3d = to_double(db3, no);
    for (size_t i = 0; i < n1; i++)
        dwc[i] = dw3[i * 9 + 4];
    /* dx sums OC = 5 terms of size <= 1; dw and db sum N·H·W = 544 terms */
    check_close("1x1 direct bwd dx == 3x3 centre-only dx", "", dx1, dx3d, NULL, nx, REL * 5, 0.0);
    check_close("1x1 direct bwd dw == 3x3 centre dw", "", dw1, dwc, NULL, n1, REL * 544, 0.0);
    check_close("1x1 direct bwd db == 3x3 db", "", db1, db3d, NULL, no, REL * 544, 0.0);

    free(x), free(w1), free(w3), free(b), free(dy), free(y1), free(y3), free(work), free(work1), free(y3d);
    free(dx1), free(dx3), free(dw1), free(dw3), free(db1), free(db3), free(dx3d), free(dwc), free(db3d);
}

/* ---- 6. the implicit per-tap GEMM path ----
 * The rule first: which ResNet-18 (32x32 input) and small-CNN layers take
 * it.  Then the path against the double reference on every map size it is
 * meant for (1x1, 2x2, 3x3, 4x4, non-square; batch 1 and more; OC != C;
 * stride 2; kernels whose taps overhang on both sides), including shapes
 * whose threads split by images (batch pixels >= channels, among them
 * batch 1 with more threads than images) and by channels (few pixels, many
 * channels), so the 2- and 3-thread runs cover both. */
static void test_conv_taps_rule(void)
{
    static const struct {
        nn_conv_geom g;
        int taps;
        const char *why;
    } layers[] = {
        {{.N = 32, .C = 3, .H = 32, .W = 32, .OC = 64, .KH = 7, .KW = 7, .stride = 2, .pad = 3}, 0, "stem: 3 channels"},
        {{.N = 32, .C = 64, .H = 8, .W = 8, .OC = 64, .KH = 3, .KW = 3, .stride = 1, .pad = 1}, 1, "3x3 at 8x8: 16% zeros"},
        {{.N = 32, .C = 128, .H = 4, .W = 4, .OC = 128, .KH = 3, .KW = 3, .stride = 1, .pad = 1}, 1, "3x3 at 4x4"},
        {{.N = 32, .C = 256, .H = 2, .W = 2, .OC = 256, .KH = 3, .KW = 3, .stride = 1, .pad = 1}, 1, "3x3 at 2x2"},
        {{.N = 32, .C = 512, .H = 1, .W = 1, .OC = 512, .KH = 3, .KW = 3, .stride = 1, .pad = 1}, 1, "3x3 at 1x1"},
        {{.N = 32, .C = 128, .H = 4, .W = 4, .OC = 256, .KH = 3, .KW = 3, .stride = 2, .pad = 1}, 1, "3x3 s2 4x4 -> 2x2"},
        {{.N = 32, .C = 64, .H = 8, .W = 8, .OC = 128, .KH = 1, .KW = 1, .stride = 2, .pad = 0}, 0, "1x1 s2: no zeros"},
        {{.N = 32, .C = 64, .H = 14, .W = 14, .OC = 64, .KH = 3, .KW = 3, .stride = 1, .pad = 1}, 0, "3x3 at 14x14: 9% zeros"},
        {{.N = 64, .C = 32, .H = 14, .W = 14, .OC = 64, .KH = 3, .KW = 3, .stride = 1, .pad = 1}, 0, "CNN: 32 channels"},
        {{.N = 32, .C = 32, .H = 2, .W = 2, .OC = 64, .KH = 3, .KW = 3, .stride = 1, .pad = 1}, 0, "2x2, 32 channels"},
    };
    for (size_t i = 0; i < sizeof layers / sizeof layers[0]; i++) {
        nn_conv_geom g = layers[i].g;
        char gs[128];
        conv_setup(&g, PATH_RULE);
        geom_str(&g, gs, sizeof gs);
        is_int(g.taps, layers[i].taps, "path rule: %s %s", layers[i].why, gs);
    }
}

static void test_conv_taps_reference(rng *r)
{
    static const nn_conv_geom fixed[] = {
        /* 1x1 maps: only the centre tap */
        {.N = 1, .C = 5, .H = 1, .W = 1, .OC = 7, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 4, .C = 6, .H = 1, .W = 1, .OC = 3, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        /* 2x2, 3x3, 4x4 */
        {.N = 1, .C = 4, .H = 2, .W = 2, .OC = 6, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 4, .C = 6, .H = 2, .W = 2, .OC = 5, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 2, .C = 5, .H = 3, .W = 3, .OC = 7, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 1, .C = 3, .H = 3, .W = 3, .OC = 2, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 3, .C = 4, .H = 4, .W = 4, .OC = 9, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 1, .C = 7, .H = 4, .W = 4, .OC = 5, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        /* non-square maps and kernels, a 5x5 on 3x3, pad 0 */
        {.N = 2, .C = 5, .H = 2, .W = 5, .OC = 3, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 3, .C = 4, .H = 5, .W = 3, .OC = 6, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 2, .C = 3, .H = 1, .W = 4, .OC = 4, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 2, .C = 3, .H = 3, .W = 4, .OC = 5, .KH = 3, .KW = 5, .stride = 1, .pad = 2},
        {.N = 2, .C = 4, .H = 3, .W = 3, .OC = 3, .KH = 5, .KW = 5, .stride = 1, .pad = 2},
        {.N = 2, .C = 4, .H = 4, .W = 3, .OC = 3, .KH = 3, .KW = 3, .stride = 1, .pad = 0},
        /* stride 2: 4x4 -> 2x2, 2x2 -> 1x1, 5x5 -> 3x3 */
        {.N = 3, .C = 4, .H = 4, .W = 4, .OC = 6, .KH = 3, .KW = 3, .stride = 2, .pad = 1},
        {.N = 2, .C = 3, .H = 2, .W = 2, .OC = 5, .KH = 3, .KW = 3, .stride = 2, .pad = 1},
        {.N = 2, .C = 3, .H = 5, .W = 5, .OC = 4, .KH = 3, .KW = 3, .stride = 2, .pad = 1},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        conv_vs_reference_on(r, fixed[i], i % 3 != 2, PATH_TAPS);
    /* shapes the rule itself sends down the path: split by channels (few
     * pixels) and by images with threads */
    static const nn_conv_geom natural[] = {
        {.N = 2, .C = 80, .H = 1, .W = 1, .OC = 64, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 3, .C = 64, .H = 2, .W = 2, .OC = 72, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 3, .C = 64, .H = 4, .W = 4, .OC = 64, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
    };
    for (size_t i = 0; i < sizeof natural / sizeof natural[0]; i++) {
        nn_conv_geom g = natural[i];
        conv_setup(&g, PATH_RULE);
        ok(g.taps == 1, "the rule takes the per-tap path for C%d %dx%d", g.C, g.H, g.W);
        conv_vs_reference_on(r, natural[i], 1, PATH_RULE);
    }
    for (int i = 0; i < 24; i++) {
        nn_conv_geom g;
        do
            g = random_conv_geom(r);
        while (g.H > 6 || g.W > 6);
        conv_vs_reference_on(r, g, i % 4 != 3, PATH_TAPS);
    }
}

/* dav1d checkasm style: the per-tap path against im2col on the same random
 * data, forward and every gradient (accumulated onto the same random start).
 * Both are float sums of the same products in different orders, each within
 * REL·Σ|terms| of the exact value (see the top), so they may differ by
 * 2·REL·Σ|terms|, with Σ|terms| from the double reference; a term dropped,
 * doubled or misplaced by either is >= 1/K of Σ|terms| (K <= 2304 here, the
 * 3x3x256 of the largest shape), still 20x over. */
static void conv_taps_vs_im2col(rng *r, nn_conv_geom g)
{
    char gs[128];
    conv_setup(&g, PATH_TAPS);
    nn_conv_geom gi = g;
    gi.taps = 0;
    geom_str(&g, gs, sizeof gs);
    size_t nx = conv_x_n(&g), nw = conv_w_n(&g), ny = conv_y_n(&g), no = (size_t)g.OC;
    float *x = FALLOC(nx), *w = FALLOC(nw), *b = FALLOC(no), *dy = FALLOC(ny);
    float *yt = FALLOC(ny), *yi = FALLOC(ny), *wt = conv_work(&g), *wi = conv_work(&gi);
    float *dxt = FALLOC(nx), *dwt = FALLOC(nw), *dbt = FALLOC(no);
    fill_sym(r, x, nx);
    fill_sym(r, w, nw);
    fill_sym(r, b, no);
    fill_sym(r, dy, ny);
    fill_sym(r, dxt, nx);
    fill_sym(r, dwt, nw);
    fill_sym(r, dbt, no);
    float *dxi = FALLOC(nx), *dwi = FALLOC(nw), *dbi = FALLOC(no);
    memcpy(dxi, dxt, sizeof(float) * nx);
    memcpy(dwi, dwt, sizeof(float) * nw);
    memcpy(dbi, dbt, sizeof(float) * no);

    nn_cpu_conv2d_fwd(&g, x, w, b, yt, wt);
    nn_cpu_conv2d_fwd(&gi, x, w, b, yi, wi);
    nn_cpu_conv2d_bwd(&g, x, w, dy, dxt, dwt, dbt, wt);
    nn_cpu_conv2d_bwd(&gi, x, w, dy, dxi, dwi, dbi, wi);

    double *xd = to_double(x, nx), *wd = to_double(w, nw), *bd = to_double(b, no), *dyd = to_double(dy, ny);
    double *yr = DALLOC(ny), *ya = DALLOC(ny), *gx = DALLOC(nx), *gw = DALLOC(nw), *gb = DALLOC(no);
    double *ax = DALLOC(nx), *aw = DALLOC(nw), *ab = DALLOC(no);
    ref_conv_fwd(&g, xd, wd, bd, yr, ya);
    ref_conv_bwd(&g, xd, wd, dyd, gx, gw, gb, ax, aw, ab);
    add_start(gx, ax, dxi, nx); /* only the scales: the start is the same in both */
    add_start(gw, aw, dwi, nw);
    add_start(gb, ab, dbi, no);
    double *yid = to_double(yi, ny), *dxid = to_double(dxi, nx), *dwid = to_double(dwi, nw), *dbid = to_double(dbi, no);
    check_close("taps fwd == im2col fwd", gs, yt, yid, ya, ny, 2 * REL, 0.0);
    check_close("taps dx == im2col dx", gs, dxt, dxid, ax, nx, 2 * REL, 0.0);
    check_close("taps dw == im2col dw", gs, dwt, dwid, aw, nw, 2 * REL, 0.0);
    check_close("taps db == im2col db", gs, dbt, dbid, ab, no, 2 * REL, 0.0);

    free(x), free(w), free(b), free(dy), free(yt), free(yi), free(wt), free(wi);
    free(dxt), free(dwt), free(dbt), free(dxi), free(dwi), free(dbi);
    free(xd), free(wd), free(bd), free(dyd), free(yr), free(ya), free(gx), free(gw), free(gb);
    free(ax), free(aw), free(ab), free(yid), free(dxid), free(dwid), free(dbid);
}

static void test_conv_taps_vs_im2col(rng *r)
{
    /* ResNet-18's small-map layers at full width, batch 4 (both thread
     * splits at 2 and 3 threads) */
    static const nn_conv_geom resnet[] = {
        {.N = 4, .C = 64, .H = 8, .W = 8, .OC = 64, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 4, .C = 128, .H = 4, .W = 4, .OC = 128, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 4, .C = 256, .H = 2, .W = 2, .OC = 256, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 4, .C = 256, .H = 1, .W = 1, .OC = 256, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        {.N = 4, .C = 128, .H = 4, .W = 4, .OC = 256, .KH = 3, .KW = 3, .stride = 2, .pad = 1},
    };
    for (size_t i = 0; i < sizeof resnet / sizeof resnet[0]; i++)
        conv_taps_vs_im2col(r, resnet[i]);
    for (int i = 0; i < 32; i++) {
        nn_conv_geom g;
        do {
            g = random_conv_geom(r);
            g.N = rng_int(r, 1, 5);
            g.C = rng_int(r, 1, 24);
            g.OC = rng_int(r, 1, 24);
        } while (g.H > 8 || g.W > 8 || nn_conv_geom_init(&g) != 0);
        conv_taps_vs_im2col(r, g);
    }
}

static void test_conv_geom(void)
{
    nn_conv_geom g = {.N = 1, .C = 3, .H = 224, .W = 224, .OC = 64, .KH = 7, .KW = 7, .stride = 2, .pad = 3};
    ok(nn_conv_geom_init(&g) == 0 && g.OH == 112 && g.OW == 112, "ResNet stem 224 -> 112 (got %dx%d)", g.OH, g.OW);
    nn_conv_geom e = {.N = 1, .C = 1, .H = 4, .W = 9, .OC = 1, .KH = 7, .KW = 3, .stride = 1, .pad = 1};
    ok(nn_conv_geom_init(&e) == -1, "a kernel taller than the padded input is refused (empty output)");
    nn_conv_geom f = {.N = 1, .C = 1, .H = 7, .W = 7, .OC = 1, .KH = 3, .KW = 3, .stride = 2, .pad = 0};
    ok(nn_conv_geom_init(&f) == 0 && f.OH == 3 && f.OW == 3, "floor mode: 7, k3, s2 -> 3 (got %d)", f.OH);
    nn_conv_geom z = {.N = 1, .C = 1, .H = 7, .W = 7, .OC = 1, .KH = 3, .KW = 3, .stride = 0, .pad = 0};
    ok(nn_conv_geom_init(&z) == -1, "stride 0 is refused");
}

/* ---- pooling references: padding taken literally ---- */
static size_t pool_x_n(const nn_pool_geom *g) { return (size_t)g->N * g->C * g->H * g->W; }
static size_t pool_y_n(const nn_pool_geom *g) { return (size_t)g->N * g->C * g->OH * g->OW; }

/* Max over the whole k x k window with padding = -inf; the first maximum in
 * row-major window order wins, padding included, so a padded winner would
 * show up as an argmax of -1. */
static void ref_maxpool(const nn_pool_geom *g, const double *x, double *y, int32_t *am)
{
    size_t planes = (size_t)g->N * g->C;
    for (size_t pl = 0; pl < planes; pl++)
        for (int oh = 0; oh < g->OH; oh++)
            for (int ow = 0; ow < g->OW; ow++) {
                double best = 0;
                int32_t at = -2;
                for (int i = 0; i < g->k; i++)
                    for (int j = 0; j < g->k; j++) {
                        int h = oh * g->stride - g->pad + i, w = ow * g->stride - g->pad + j;
                        int in = h >= 0 && h < g->H && w >= 0 && w < g->W;
                        double v = in ? x[pl * g->H * g->W + (size_t)h * g->W + w] : -INFINITY;
                        if (at == -2 || v > best) {
                            best = v;
                            at = in ? h * g->W + w : -1;
                        }
                    }
                size_t o = (pl * g->OH + oh) * g->OW + ow;
                y[o] = best;
                am[o] = at;
            }
}

/* Sum over the whole window with padding = 0, divided by k·k; dx likewise. */
static void ref_avgpool(const nn_pool_geom *g, const double *x, double *y, double *yabs)
{
    size_t planes = (size_t)g->N * g->C;
    for (size_t pl = 0; pl < planes; pl++)
        for (int oh = 0; oh < g->OH; oh++)
            for (int ow = 0; ow < g->OW; ow++) {
                double s = 0, sa = 0;
                for (int i = 0; i < g->k; i++)
                    for (int j = 0; j < g->k; j++) {
                        int h = oh * g->stride - g->pad + i, w = ow * g->stride - g->pad + j;
                        double v = h >= 0 && h < g->H && w >= 0 && w < g->W
                                       ? x[pl * g->H * g->W + (size_t)h * g->W + w]
                                       : 0.0;
                        s += v;
                        sa += fabs(v);
                    }
                size_t o = (pl * g->OH + oh) * g->OW + ow;
                y[o] = s / (g->k * g->k);
                yabs[o] = sa / (g->k * g->k);
            }
}

static void ref_avgpool_bwd(const nn_pool_geom *g, const double *dy, double *dx, double *dxabs)
{
    size_t planes = (size_t)g->N * g->C;
    memset(dx, 0, sizeof(double) * pool_x_n(g));
    memset(dxabs, 0, sizeof(double) * pool_x_n(g));
    for (size_t pl = 0; pl < planes; pl++)
        for (int oh = 0; oh < g->OH; oh++)
            for (int ow = 0; ow < g->OW; ow++)
                for (int i = 0; i < g->k; i++)
                    for (int j = 0; j < g->k; j++) {
                        int h = oh * g->stride - g->pad + i, w = ow * g->stride - g->pad + j;
                        if (h < 0 || h >= g->H || w < 0 || w >= g->W)
                            continue;
                        double d = dy[(pl * g->OH + oh) * g->OW + ow] / (g->k * g->k);
                        dx[pl * g->H * g->W + (size_t)h * g->W + w] += d;
                        dxabs[pl * g->H * g->W + (size_t)h * g->W + w] += fabs(d);
                    }
}

static void pool_str(const nn_pool_geom *g, char *s, size_t n)
{
    snprintf(s, n, "[N%d C%d %dx%d k%d s%d p%d -> %dx%d]", g->N, g->C, g->H, g->W, g->k, g->stride, g->pad, g->OH,
             g->OW);
}

static nn_pool_geom random_pool_geom(rng *r)
{
    for (;;) {
        nn_pool_geom g = {0};
        g.N = rng_int(r, 1, 2);
        g.C = rng_int(r, 1, 3);
        g.H = rng_int(r, 1, 12);
        g.W = rng_int(r, 1, 12);
        g.k = rng_int(r, 1, 5);
        g.stride = rng_int(r, 1, 3);
        g.pad = rng_int(r, 0, g.k / 2);
        if (nn_pool_geom_init(&g) == 0)
            return g;
    }
}

/* ---- 1 and 4. pooling against the references; inputs drawn from 7 values
 * so that ties are everywhere and the first-wins rule is exercised ---- */
static void pool_vs_reference(rng *r, nn_pool_geom g)
{
    char gs[128];
    pool_str(&g, gs, sizeof gs);
    size_t nx = pool_x_n(&g), ny = pool_y_n(&g);
    float *x = FALLOC(nx), *y = FALLOC(ny), *dy = FALLOC(ny), *dx = FALLOC(nx);
    int32_t *am = xcalloc(ny, sizeof(int32_t)), *amr = xcalloc(ny, sizeof(int32_t));
    for (size_t i = 0; i < nx; i++)
        x[i] = (float)(rng_int(r, -3, 3)) * 0.5f;
    fill_sym(r, dy, ny);
    double *xd = to_double(x, nx), *dyd = to_double(dy, ny), *yr = DALLOC(ny), *ya = DALLOC(ny);
    double *dxr = DALLOC(nx), *dxa = DALLOC(nx);

    ref_maxpool(&g, xd, yr, amr);
    nn_cpu_maxpool_fwd(&g, x, y, am);
    int same = 1;
    size_t bad = 0;
    for (size_t i = 0; i < ny; i++)
        if ((double)y[i] != yr[i] || am[i] != amr[i]) {
            if (same)
                bad = i;
            same = 0;
        }
    if (!ok(same, "maxpool fwd: values and first-max argmax exact %s", gs))
        tap_diag("at [%zu]: got %g @%d, want %g @%d", bad, (double)y[bad], am[bad], yr[bad], amr[bad]);
    /* the reference marks a padded winner -1; there is none as long as
     * nn_pool_geom_init keeps every window on at least one real element */
    int padded = 0;
    for (size_t i = 0; i < ny; i++)
        padded |= amr[i] < 0;
    ok(!padded, "maxpool: every window holds a real element, padding never wins %s", gs);

    memset(dxr, 0, sizeof(double) * nx);
    memset(dxa, 0, sizeof(double) * nx);
    size_t in_plane = (size_t)g.H * g.W, out_plane = (size_t)g.OH * g.OW;
    for (size_t i = 0; i < ny; i++) {
        if (amr[i] < 0)
            continue;
        size_t at = i / out_plane * in_plane + (size_t)amr[i];
        dxr[at] += dyd[i];
        dxa[at] += fabs(dyd[i]);
    }
    nn_cpu_maxpool_bwd(&g, am, dy, dx);
    check_close("maxpool bwd", gs, dx, dxr, dxa, nx, REL, 0.0);

    fill_sym(r, x, nx);
    free(xd);
    xd = to_double(x, nx);
    ref_avgpool(&g, xd, yr, ya);
    nn_cpu_avgpool_fwd(&g, x, y);
    check_close("avgpool fwd", gs, y, yr, ya, ny, REL, 0.0);
    ref_avgpool_bwd(&g, dyd, dxr, dxa);
    memset(dx, 0, sizeof(float) * nx);
    nn_cpu_avgpool_bwd(&g, dy, dx);
    check_close("avgpool bwd", gs, dx, dxr, dxa, nx, REL, 0.0);

    free(x), free(y), free(dy), free(dx), free(am), free(amr);
    free(xd), free(dyd), free(yr), free(ya), free(dxr), free(dxa);
}

static void test_pool_reference(rng *r)
{
    static const nn_pool_geom fixed[] = {
        {.N = 2, .C = 3, .H = 8, .W = 8, .k = 2, .stride = 2, .pad = 0},  /* CNN, VGG */
        {.N = 1, .C = 2, .H = 7, .W = 9, .k = 2, .stride = 2, .pad = 0},  /* the 2x2 fast path, odd sizes (floor) */
        {.N = 2, .C = 2, .H = 11, .W = 12, .k = 3, .stride = 2, .pad = 1}, /* ResNet stem */
        {.N = 1, .C = 2, .H = 5, .W = 7, .k = 4, .stride = 1, .pad = 2},   /* even k, pad k/2 */
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        nn_pool_geom g = fixed[i];
        nn_pool_geom_init(&g);
        pool_vs_reference(r, g);
    }
    for (int i = 0; i < 30; i++)
        pool_vs_reference(r, random_pool_geom(r));
}

static void test_pool_rules(void)
{
    /* all-equal input: every window's argmax is its first real element */
    nn_pool_geom g = {.N = 1, .C = 1, .H = 5, .W = 6, .k = 3, .stride = 2, .pad = 1};
    ok(nn_pool_geom_init(&g) == 0 && g.OH == 3 && g.OW == 3, "pool geometry 5x6 k3 s2 p1 -> 3x3 (got %dx%d)", g.OH,
       g.OW);
    float x[30], y[9];
    int32_t am[9];
    int firsts = 1;
    for (int pass = 0; pass < 2; pass++) {
        /* pass 0: ties at 2; pass 1: all -inf, where only "padding is never
         * a candidate" keeps the argmax on a real element */
        for (int i = 0; i < 30; i++)
            x[i] = pass ? -INFINITY : 2.0f;
        nn_cpu_maxpool_fwd(&g, x, y, am);
        for (int oh = 0; oh < 3; oh++)
            for (int ow = 0; ow < 3; ow++) {
                int h0 = oh * 2 - 1 < 0 ? 0 : oh * 2 - 1, w0 = ow * 2 - 1 < 0 ? 0 : ow * 2 - 1;
                if (am[oh * 3 + ow] != h0 * 6 + w0 || y[oh * 3 + ow] != x[0]) {
                    firsts = 0;
                    tap_diag("pass %d out (%d,%d): argmax %d value %g, want %d", pass, oh, ow, am[oh * 3 + ow],
                             (double)y[oh * 3 + ow], h0 * 6 + w0);
                }
            }
    }
    ok(firsts, "maxpool: ties and all -inf windows pick the first real element");

    /* negative inputs next to padding: the padding (-inf) must not win */
    for (int i = 0; i < 30; i++)
        x[i] = -100.0f - (float)i;
    nn_cpu_maxpool_fwd(&g, x, y, am);
    ok(y[0] == -100.0f && am[0] == 0 && y[8] == x[3 * 6 + 3] && am[8] == 3 * 6 + 3,
       "maxpool: negative inputs beat the padding (corner got %g @%d)", (double)y[0], am[0]);

    /* NaN propagates */
    for (int i = 0; i < 30; i++)
        x[i] = (float)i;
    x[7] = NAN;
    nn_cpu_maxpool_fwd(&g, x, y, am);
    ok(isnan(y[0]) && am[0] == 7 && isnan(y[1]) && am[1] == 7 && !isnan(y[2]), "maxpool: a NaN wins its windows");

    /* avg over ones with pad 1, k 3, s 1: corners 4/9, edges 6/9, inside 1 */
    nn_pool_geom a = {.N = 1, .C = 1, .H = 4, .W = 5, .k = 3, .stride = 1, .pad = 1};
    nn_pool_geom_init(&a);
    float ones[20], ay[20];
    for (int i = 0; i < 20; i++)
        ones[i] = 1.0f;
    nn_cpu_avgpool_fwd(&a, ones, ay);
    /* float sums of ≤ 9 ones are exact; the 1/9 product rounds once: 1e-6 */
    ok(fabs(ay[0] - 4.0 / 9) < 1e-6 && fabs(ay[1] - 6.0 / 9) < 1e-6 && fabs(ay[6] - 1.0) < 1e-6 &&
           fabs(ay[19] - 4.0 / 9) < 1e-6,
       "avgpool counts padding: corner %g (4/9), edge %g (6/9), inside %g", (double)ay[0], (double)ay[1],
       (double)ay[6]);
    float ad[20] = {0};
    nn_cpu_avgpool_bwd(&a, ones, ad); /* each input gets 1/9 per window covering it */
    ok(fabs(ad[0] - 4.0 / 9) < 1e-6 && fabs(ad[6] - 1.0) < 1e-6,
       "avgpool bwd: corner input %g (4 windows / 9), inner %g (9 / 9)", (double)ad[0], (double)ad[6]);

    nn_pool_geom bad = {.N = 1, .C = 1, .H = 8, .W = 8, .k = 3, .stride = 1, .pad = 2};
    ok(nn_pool_geom_init(&bad) == -1, "pool pad > k/2 is refused (a window could be all padding)");
    nn_pool_geom empty = {.N = 1, .C = 1, .H = 2, .W = 8, .k = 3, .stride = 1, .pad = 0};
    ok(nn_pool_geom_init(&empty) == -1, "pool window taller than the input is refused");
}

/* ---- 2. pooling backward vs finite differences ----
 * Max pooling is piecewise linear: the difference is exact as long as no
 * perturbation of ±h changes a winner.  Inputs are a random permutation of
 * values 2/count apart (>= 4e-3 > 2h), so none can. */
typedef enum { POOL_MAX, POOL_AVG, POOL_GAP } pool_kind;

static double pool_loss(pool_kind kind, const nn_pool_geom *g, const double *x, const double *r, double *y,
                        int32_t *am)
{
    size_t ny;
    if (kind == POOL_GAP) {
        ny = (size_t)g->N * g->C;
        size_t hw = (size_t)g->H * g->W;
        for (size_t pl = 0; pl < ny; pl++) {
            double s = 0;
            for (size_t i = 0; i < hw; i++)
                s += x[pl * hw + i];
            y[pl] = s / (double)hw;
        }
    } else {
        ny = pool_y_n(g);
        double *ya = DALLOC(ny);
        if (kind == POOL_MAX)
            ref_maxpool(g, x, y, am);
        else
            ref_avgpool(g, x, y, ya);
        free(ya);
    }
    double l = 0;
    for (size_t i = 0; i < ny; i++)
        l += y[i] * r[i];
    return l;
}

static void pool_vs_fd(rng *r, pool_kind kind, nn_pool_geom g)
{
    static const char *names[] = {"maxpool", "avgpool", "gap"};
    char gs[128], what[64];
    pool_str(&g, gs, sizeof gs);
    snprintf(what, sizeof what, "%s bwd vs finite differences", names[kind]);
    size_t nx = pool_x_n(&g), ny = kind == POOL_GAP ? (size_t)g.N * g.C : pool_y_n(&g);
    float *x = FALLOC(nx), *y = FALLOC(ny), *dy = FALLOC(ny), *dx = FALLOC(nx);
    int32_t *am = xcalloc(ny, sizeof(int32_t)), *amr = xcalloc(ny, sizeof(int32_t));
    /* a shuffled ramp in (-1, 1) */
    for (size_t i = 0; i < nx; i++)
        x[i] = (float)(-1.0 + (2.0 * (double)i + 1.0) / (double)nx);
    for (size_t i = nx; i > 1; i--) {
        size_t j = rng_next(r) % i;
        float t = x[i - 1];
        x[i - 1] = x[j];
        x[j] = t;
    }
    fill_sym(r, dy, ny);
    if (kind == POOL_MAX) {
        nn_cpu_maxpool_fwd(&g, x, y, am);
        nn_cpu_maxpool_bwd(&g, am, dy, dx);
    } else if (kind == POOL_AVG) {
        nn_cpu_avgpool_bwd(&g, dy, dx);
    } else {
        nn_cpu_gap_bwd(dy, dx, g.N, g.C, g.H * g.W);
    }
    double *xd = to_double(x, nx), *rd = to_double(dy, ny), *yd = DALLOC(ny), *fd = DALLOC(nx);
    double labs = 0;
    pool_loss(kind, &g, xd, rd, yd, amr);
    for (size_t i = 0; i < ny; i++)
        labs += fabs(yd[i] * rd[i]);
    for (size_t i = 0; i < nx; i++) {
        double keep = xd[i];
        xd[i] = keep + FD_H;
        double lp = pool_loss(kind, &g, xd, rd, yd, amr);
        xd[i] = keep - FD_H;
        double lm = pool_loss(kind, &g, xd, rd, yd, amr);
        xd[i] = keep;
        fd[i] = (lp - lm) / (2 * FD_H);
    }
    /* each dx is a float sum of at most k·k terms |dy|/(k·k) or |dy|/HW,
     * all <= 1: REL on a unit scale, plus the difference's rounding */
    check_close(what, gs, dx, fd, NULL, nx, REL, FD_ULPS * DBL_EPSILON * labs / FD_H);
    free(x), free(y), free(dy), free(dx), free(am), free(amr), free(xd), free(rd), free(yd), free(fd);
}

static void test_pool_fd(rng *r)
{
    for (int i = 0; i < 8; i++) {
        nn_pool_geom g = random_pool_geom(r);
        pool_vs_fd(r, POOL_MAX, g);
        pool_vs_fd(r, POOL_AVG, g);
        pool_vs_fd(r, POOL_GAP, g);
    }
}

/* ---- GAP against the reference; accumulation of every pooling bwd ---- */
static void test_gap_and_pool_accumulation(rng *r)
{
    enum { N = 3, C = 4, HW = 49 };
    float x[N * C * HW], y[N * C], dy[N * C], dx[N * C * HW];
    double yr[N * C], ya[N * C], dxr[N * C * HW];
    fill_sym(r, x, N * C * HW);
    fill_sym(r, dy, N * C);
    for (int pl = 0; pl < N * C; pl++) {
        double s = 0, sa = 0;
        for (int i = 0; i < HW; i++)
            s += x[pl * HW + i], sa += fabs(x[pl * HW + i]);
        yr[pl] = s / HW;
        ya[pl] = sa / HW;
    }
    nn_cpu_gap_fwd(x, y, N, C, HW);
    check_close("gap fwd", "[N3 C4 7x7]", y, yr, ya, N * C, REL, 0.0);

    /* twice on top of random values: x0 + 2·dy/HW */
    fill_sym(r, dx, N * C * HW);
    double sc[N * C * HW];
    for (int i = 0; i < N * C * HW; i++) {
        dxr[i] = dx[i] + 2.0 * dy[i / HW] / HW;
        sc[i] = fabs(dx[i]) + 2.0 * fabs(dy[i / HW]) / HW;
    }
    nn_cpu_gap_bwd(dy, dx, N, C, HW);
    nn_cpu_gap_bwd(dy, dx, N, C, HW);
    check_close("gap bwd twice adds twice", "[N3 C4 7x7]", dx, dxr, sc, N * C * HW, REL, 0.0);

    /* max and avg pooling bwd, twice on top of random values */
    nn_pool_geom g = {.N = 2, .C = 2, .H = 7, .W = 6, .k = 3, .stride = 2, .pad = 1};
    nn_pool_geom_init(&g);
    size_t nx = pool_x_n(&g), ny = pool_y_n(&g);
    float *px = FALLOC(nx), *py = FALLOC(ny), *pdy = FALLOC(ny), *once = FALLOC(nx), *twice = FALLOC(nx);
    int32_t *am = xcalloc(ny, sizeof(int32_t));
    double *want = DALLOC(nx), *scale = DALLOC(nx);
    fill_sym(r, px, nx);
    fill_sym(r, pdy, ny);
    for (int kind = 0; kind < 2; kind++) {
        memset(once, 0, sizeof(float) * nx);
        fill_sym(r, twice, nx);
        if (kind == 0) {
            nn_cpu_maxpool_fwd(&g, px, py, am);
            nn_cpu_maxpool_bwd(&g, am, pdy, once);
        } else {
            nn_cpu_avgpool_bwd(&g, pdy, once);
        }
        for (size_t i = 0; i < nx; i++) {
            want[i] = twice[i] + 2.0 * once[i];
            scale[i] = fabs(twice[i]) + 2.0 * fabs(once[i]) + 1.0; /* + the |terms| inside once: <= 4 of <= 1 */
        }
        for (int rep = 0; rep < 2; rep++) {
            if (kind == 0)
                nn_cpu_maxpool_bwd(&g, am, pdy, twice);
            else
                nn_cpu_avgpool_bwd(&g, pdy, twice);
        }
        check_close(kind == 0 ? "maxpool bwd twice adds twice" : "avgpool bwd twice adds twice", "", twice, want,
                    scale, nx, 10 * REL, 0.0);
    }
    free(px), free(py), free(pdy), free(once), free(twice), free(am), free(want), free(scale);
}

int main(void)
{
    rng r = {.s = 0x5EED0C0471ull};
    test_conv_geom();
    test_conv_reference(&r);
    test_conv_fd(&r);
    test_conv_accumulates(&r);
    test_conv_1x1_vs_general(&r);
    test_conv_taps_rule();
    test_conv_taps_reference(&r);
    test_conv_taps_vs_im2col(&r);
    test_pool_rules();
    test_pool_reference(&r);
    test_pool_fd(&r);
    test_gap_and_pool_accumulation(&r);
    return tap_done();
}
