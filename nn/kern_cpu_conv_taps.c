/* kern_cpu_conv_taps: the CPU convolution's implicit per-tap GEMM path, for
 * small maps where im2col would multiply mostly padding (kern_cpu_conv.c
 * chooses it: conv_taps_pays).  The algorithm: */
#include "nn_kern_cpu.h" /* first: cblas.h brings <complex.h> and its I */
#include "kern_cpu_conv.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

#include "nn_par.h"

/* ---- implicit per-tap GEMM ------------------------------------------------
 *
 * im2col lays out every tap for every output pixel, and on small maps many
 * of those entries are padding: a 3x3 pad-1 convolution multiplies 56% zeros
 * on a 2x2 map, 31% on 4x4, 16% on 8x8.  This path multiplies none.  For a
 * tap (kh, kw) the outputs whose input lies inside the map form a rectangle
 * [oh0, oh0+rh) x [ow0, ow0+rw) (o·s - pad + k in [0, n) is an interval of
 * o on each axis).  Working in channels-last copies of the tensors
 * (xt[n, ih, iw, c], yt[n, oh, ow, oc]), with one row per pixel and the
 * batch's valid pixels of the tap as the rows (n, i, j) of a panel:
 *
 *   X_t[(n,i,j), c]  = xt[n, (oh0+i)·s-pad+kh, (ow0+j)·s-pad+kw, c]   gathered rows
 *   dY_t[(n,i,j), oc] = dyt[n, oh0+i, ow0+j, oc]                       gathered rows
 *   W_t[oc, c]        = w[oc, c, kh, kw]                               packed
 *
 *   forward   yt = b, per tap yt[rect_t rows] += X_t · W_tᵀ, y = yt back in NCHW
 *   backward  dw[:, :, kh, kw] += dY_tᵀ · X_t
 *             dxt[shifted rect_t rows] += dY_t · W_t, dx += dxt in NCHW
 *
 * Channels-last makes every gather and scatter-add a run of C or OC floats
 * (a pixel's channels); on 2x2 and 4x4 maps a rectangle row is one to three
 * pixels, and gathering element by element from NCHW cost as much as the
 * GEMMs.  A tap whose output rectangle is the whole map (the centre tap at
 * stride 1) needs no dY_t gather and its forward GEMM adds straight into yt;
 * one whose input rectangle is the whole map needs no X_t gather and its dx
 * GEMM adds straight into dxt.  Taps whose rectangle is empty (a 3x3 kernel
 * on a 1x1 map keeps only its centre) cost nothing, not even packing.  The
 * price of the path is the pass that packs w (and the one that adds dW_t
 * back), the four layout changes, and a scatter-add per tap instead of one
 * write of y; conv_taps_pays picks it where the zeros it skips outweigh that.
 *
 * Threads (taps_by_images) split either the images, when the batch has
 * many pixels (each thread then runs every GEMM on its own images' rows,
 * and writes its dW_t into a partial set of its own, which taps_add_dw sums
 * in thread order), or the channels, when it has few (2x2 and 1x1 maps,
 * where a thread's share of 32..128 pixel rows would not pay for packing
 * the whole weight operand of its GEMMs): output channels for everything
 * indexed by oc (the forward GEMMs' columns, the dW GEMMs' rows, y, dy),
 * input channels for the rest (x, the dx GEMMs' columns, dx).  w is packed,
 * and dW_t added back, by output channel either way.  Every element of y, dx
 * and dw is written by one thread, adding the taps in tap order, so results
 * depend on shapes and thread count only.  A barrier after the packing and
 * gathers (the GEMMs read W_t whole, and by channels whole panels), one more
 * by channels before the dx products overwrite the X_t panels, and one by
 * images before the partial dW sets are summed.
 *
 * Scratch (taps_work): the used taps' W_t and dW_t (taps·OC·C, the latter
 * once per thread when threads split images), xt, dxt (N·H·W·C each), yt
 * (N·OH·OW·OC; dyt in the backward pass), and per tap panels of rows: X_t
 * (later dY_t·W_t) and dY_t (the forward's X_t·W_tᵀ), (C + OC)·N·V floats,
 * V the valid (tap, pixel) pairs of one image. */

/* One used tap: its index kh·KW + kw, valid-output rectangle, rows. */
typedef struct conv_tap {
    int k, oh0, ow0, rh, rw;
    int rows;     /* N·rh·rw */
    int out_full; /* the rectangle is the whole output map */
    int in_full;  /* its inputs are the whole input map, in the same order */
} conv_tap;

/* Outputs o in [0, out) whose input o·s - pad + k is in [0, n): [*lo, *hi). */
static void tap_span(int n, int out, int k, int s, int pad, int *lo, int *hi)
{
    int first = pad - k, last = n - 1 + pad - k;
    *lo = first <= 0 ? 0 : (first + s - 1) / s;
    *hi = last < 0 ? 0 : last / s + 1;
    if (*hi > out)
        *hi = out;
    if (*hi < *lo)
        *hi = *lo;
}

/* Tap k of g; 0 when it sees only padding. */
static int tap_at(const nn_conv_geom *g, int k, conv_tap *t)
{
    int h1, w1;
    t->k = k;
    tap_span(g->H, g->OH, k / g->KW, g->stride, g->pad, &t->oh0, &h1);
    tap_span(g->W, g->OW, k % g->KW, g->stride, g->pad, &t->ow0, &w1);
    t->rh = h1 - t->oh0;
    t->rw = w1 - t->ow0;
    t->rows = g->N * t->rh * t->rw;
    t->out_full = t->rh == g->OH && t->rw == g->OW;
    t->in_full = t->rh == g->H && t->rw == g->W && g->stride == 1 && t->oh0 * g->stride - g->pad + k / g->KW == 0 &&
                 t->ow0 * g->stride - g->pad + k % g->KW == 0;
    return t->rows > 0;
}

/* Used taps and their total rows. */
void nn_cpu_conv_taps_count(const nn_conv_geom *g, int *used, size_t *rows)
{
    conv_tap t;
    *used = 0;
    *rows = 0;
    for (int k = 0; k < g->KH * g->KW; k++)
        if (tap_at(g, k, &t)) {
            ++*used;
            *rows += (size_t)t.rows;
        }
}

typedef struct taps_plan {
    int used, parts;      /* parts: partial dW sets (threads when they split images, else 1) */
    size_t plane;         /* OC·C: one W_t */
    float *wp, *dwp;      /* [used][OC][C], dwp [parts][used][OC][C] */
    float *xt, *dxt, *yt; /* channels-last x, dx, y (or dy) */
    float *xpan, *ypan;   /* X_t blocks [rows][C] (backward, once dW is done: dY_t·W_t), dY_t blocks
                             [rows][OC] (forward: X_t·W_tᵀ), in tap order */
} taps_plan;

/* Threads split images when the batch's output pixels are at least half the
 * larger channel count, else channels (see the top of this section).
 * Measured with two threads on ResNet-18, batch 32: by images 1.1-1.8x
 * faster at 8x8 and 4x4 (and 4x4 -> 2x2), by channels 1.3x faster at 1x1
 * (512 channels), the two even at 2x2. */
static int taps_by_images(const nn_conv_geom *g)
{
    return nn_cpu_conv_threads(g) > 1 && 2L * g->N * g->OH * g->OW >= (g->C > g->OC ? g->C : g->OC);
}

size_t nn_cpu_conv_taps_work(const nn_conv_geom *g)
{
    int used;
    size_t rows;
    nn_cpu_conv_taps_count(g, &used, &rows);
    const size_t C = (size_t)g->C, OC = (size_t)g->OC, hw = (size_t)g->N * g->H * g->W,
                 ohw = (size_t)g->N * g->OH * g->OW, parts = taps_by_images(g) ? (size_t)nn_cpu_conv_threads(g) : 1;
    return (1 + parts) * used * OC * C + 2 * hw * C + ohw * OC + (C + OC) * rows;
}

static taps_plan taps_plan_of(const nn_conv_geom *g, float *work)
{
    size_t rows;
    taps_plan p;
    nn_cpu_conv_taps_count(g, &p.used, &rows);
    const size_t C = (size_t)g->C, OC = (size_t)g->OC, hw = (size_t)g->N * g->H * g->W,
                 ohw = (size_t)g->N * g->OH * g->OW;
    p.parts = taps_by_images(g) ? nn_cpu_conv_threads(g) : 1;
    p.plane = OC * C;
    p.wp = work;
    p.dwp = p.wp + p.used * p.plane;
    p.xt = p.dwp + p.parts * p.used * p.plane;
    p.dxt = p.xt + hw * C;
    p.yt = p.dxt + hw * C;
    p.xpan = p.yt + ohw * OC;
    p.ypan = p.xpan + rows * C;
    return p;
}

/* One thread's share: images [n0, n1), output channels [o0, o1), input
 * channels [c0, c1); part: its partial dW set. */
typedef struct taps_share {
    long n0, n1, o0, o1, c0, c1;
    int part;
} taps_share;

static taps_share taps_share_of(const nn_conv_geom *g, const taps_plan *p, int id, int nt)
{
    taps_share s = {0, g->N, 0, g->OC, 0, g->C, 0};
    if (p->parts > 1) {
        nn_par_share(g->N, id, nt, 1, &s.n0, &s.n1);
        s.part = id;
    } else {
        nn_par_share(g->OC, id, nt, 16, &s.o0, &s.o1);
        nn_par_share(g->C, id, nt, 16, &s.c0, &s.c1);
    }
    return s;
}

/* Walks the used taps in order, keeping the rows of the ones before. */
typedef struct tap_cursor {
    int k, u;
    size_t row0;
    conv_tap t;
} tap_cursor;

static int cursor_next(const nn_conv_geom *g, tap_cursor *c)
{
    if (c->k > 0) {
        c->row0 += (size_t)c->t.rows;
        c->u++;
    }
    while (c->k < g->KH * g->KW)
        if (tap_at(g, c->k++, &c->t))
            return 1;
    return 0;
}

/* The first of the tap's rows that belong to image n0. */
static size_t cursor_row(const tap_cursor *c, long n0)
{
    return c->row0 + (size_t)n0 * c->t.rh * c->t.rw;
}

/* wp[u][oc][c] = w[oc][c][k_u] for oc in [o0, o1), tap by tap, so that each
 * W_t row is written in order while its row of w stays in L1 (writing all
 * taps of one (oc, c) at once sends stores OC·C floats apart, which share a
 * cache set, and made the forward pass of a 2x2 layer 1.7x slower). */
static void taps_pack_w(const nn_conv_geom *g, const taps_plan *p, const float *restrict w, long o0, long o1)
{
    const int nk = g->KH * g->KW, C = g->C;
    tap_cursor tc = {0};
    while (cursor_next(g, &tc))
        for (long oc = o0; oc < o1; oc++) {
            const float *restrict src = w + (size_t)oc * C * nk + tc.t.k;
            float *restrict dst = p->wp + tc.u * p->plane + (size_t)oc * C;
            for (int c = 0; c < C; c++)
                dst[c] = src[(size_t)c * nk];
        }
}

/* dw[oc][c][k_u] += Σ_parts dwp[part][u][oc][c] for oc in [o0, o1), the
 * parts (one per thread of nt when they split images) in order. */
static void taps_add_dw(const nn_conv_geom *g, const taps_plan *p, float *restrict dw, long o0, long o1, int nt)
{
    const int nk = g->KH * g->KW, C = g->C, parts = p->parts > 1 ? nt : 1;
    const size_t part = (size_t)p->used * p->plane;
    tap_cursor tc = {0};
    while (cursor_next(g, &tc))
        for (long oc = o0; oc < o1; oc++) {
            float *restrict dst = dw + (size_t)oc * C * nk + tc.t.k;
            const float *restrict src = p->dwp + tc.u * p->plane + (size_t)oc * C;
            for (int c = 0; c < C; c++) {
                float v = src[c];
                for (int q = 1; q < parts; q++)
                    v += src[q * part + c];
                dst[(size_t)c * nk] += v;
            }
        }
}

/* t[n, pos, r] = a[n, r, pos] for images [n0, n1), r in [r0, r1) (R
 * channels, P pixels). */
static void to_channels_last(const float *restrict a, float *restrict t, int R, int P, long n0, long n1, long r0,
                             long r1)
{
    for (long n = n0; n < n1; n++)
        for (int pos = 0; pos < P; pos++) {
            const float *restrict src = a + (size_t)n * R * P + pos;
            float *restrict dst = t + ((size_t)n * P + pos) * R;
            for (long r = r0; r < r1; r++)
                dst[r] = src[(size_t)r * P];
        }
}

/* a[n, r, pos] = (or +=) t[n, pos, r], same ranges. */
static void from_channels_last(const float *restrict t, float *restrict a, int R, int P, long n0, long n1, long r0,
                               long r1, int add)
{
    for (long n = n0; n < n1; n++)
        for (long r = r0; r < r1; r++) {
            const float *restrict src = t + (size_t)n * P * R + r;
            float *restrict dst = a + ((size_t)n * R + r) * P;
            if (add) {
                for (int pos = 0; pos < P; pos++)
                    dst[pos] += src[(size_t)pos * R];
            } else {
                for (int pos = 0; pos < P; pos++)
                    dst[pos] = src[(size_t)pos * R];
            }
        }
}

/* The pixel of row (n, i, j) of tap t in the input (in = 1) or output map,
 * as a row of the channels-last tensor. */
static size_t tap_pixel(const nn_conv_geom *g, const conv_tap *t, long n, int i, int j, int in)
{
    if (!in)
        return ((size_t)n * g->OH + t->oh0 + i) * g->OW + t->ow0 + j;
    int ih = (t->oh0 + i) * g->stride - g->pad + t->k / g->KW, iw = (t->ow0 + j) * g->stride - g->pad + t->k % g->KW;
    return ((size_t)n * g->H + ih) * g->W + iw;
}

/* pan[row, r0..r1) = src[pixel(row), r0..r1) (R floats a pixel) for the rows
 * of images [n0, n1); pan is the tap's block. */
static void tap_gather(const nn_conv_geom *g, const tap_cursor *tc, const float *src, float *pan, int R, int in,
                       long n0, long n1, long r0, long r1)
{
    const conv_tap *t = &tc->t;
    float *dst = pan + (size_t)n0 * t->rh * t->rw * R + r0;
    for (long n = n0; n < n1; n++)
        for (int i = 0; i < t->rh; i++)
            for (int j = 0; j < t->rw; j++, dst += R)
                memcpy(dst, src + tap_pixel(g, t, n, i, j, in) * R + r0, sizeof(float) * (size_t)(r1 - r0));
}

/* dst[pixel(row), r0..r1) += pan[row, r0..r1), same ranges. */
static void tap_scatter_add(const nn_conv_geom *g, const tap_cursor *tc, const float *pan, float *dst, int R, int in,
                            long n0, long n1, long r0, long r1)
{
    const conv_tap *t = &tc->t;
    const float *src = pan + (size_t)n0 * t->rh * t->rw * R + r0;
    for (long n = n0; n < n1; n++)
        for (int i = 0; i < t->rh; i++)
            for (int j = 0; j < t->rw; j++, src += R)
                add_run(dst + tap_pixel(g, t, n, i, j, in) * R + r0, src, (int)(r1 - r0));
}

/* Rows [n0·P, n1·P) of a channels-last tensor, columns [r0, r1), set to
 * b[r] (0 when b is NULL). */
static void fill_channels_last(float *t, const float *b, int R, int P, long n0, long n1, long r0, long r1)
{
    for (size_t q = (size_t)n0 * P; q < (size_t)n1 * P; q++) {
        float *restrict row = t + q * R;
        for (long r = r0; r < r1; r++)
            row[r] = b ? b[r] : 0.0f;
    }
}

void nn_cpu_conv_taps_fwd(const nn_conv_geom *g, const float *x, const float *w, const float *b, float *y, float *work)
{
    const taps_plan p = taps_plan_of(g, work);
    const int T = nn_cpu_conv_threads(g), C = g->C, OC = g->OC, P = g->OH * g->OW;
#pragma omp parallel num_threads(T) if (T > 1)
    {
        const int id = omp_get_thread_num(), nt = omp_get_num_threads();
        const taps_share s = taps_share_of(g, &p, id, nt);
        long w0, w1;
        nn_par_share(g->OC, id, nt, 16, &w0, &w1);
        taps_pack_w(g, &p, w, w0, w1);
        to_channels_last(x, p.xt, C, g->H * g->W, s.n0, s.n1, s.c0, s.c1);
        fill_channels_last(p.yt, b, OC, P, s.n0, s.n1, s.o0, s.o1);
        tap_cursor tc = {0};
        while (cursor_next(g, &tc))
            if (!tc.t.in_full)
                tap_gather(g, &tc, p.xt, p.xpan + tc.row0 * C, C, 1, s.n0, s.n1, s.c0, s.c1);
#pragma omp barrier
        tc = (tap_cursor){0};
        while (s.o1 > s.o0 && s.n1 > s.n0 && cursor_next(g, &tc)) {
            const size_t r = cursor_row(&tc, s.n0), own = (size_t)(s.n1 - s.n0) * tc.t.rh * tc.t.rw;
            const float *a = tc.t.in_full ? p.xt + (size_t)s.n0 * g->H * g->W * C : p.xpan + r * C;
            float *out = tc.t.out_full ? p.yt + (size_t)s.n0 * P * OC : p.ypan + r * OC;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)own, (int)(s.o1 - s.o0), C, 1.0f, a, C,
                        p.wp + tc.u * p.plane + (size_t)s.o0 * C, C, tc.t.out_full ? 1.0f : 0.0f, out + s.o0, OC);
            if (!tc.t.out_full)
                tap_scatter_add(g, &tc, p.ypan + tc.row0 * OC, p.yt, OC, 0, s.n0, s.n1, s.o0, s.o1);
        }
        from_channels_last(p.yt, y, OC, P, s.n0, s.n1, s.o0, s.o1, 0);
    }
}

void nn_cpu_conv_taps_bwd(const nn_conv_geom *g, const float *x, const float *w, const float *dy, float *dx, float *dw,
                          float *work)
{
    const taps_plan p = taps_plan_of(g, work);
    const int T = nn_cpu_conv_threads(g), C = g->C, OC = g->OC, P = g->OH * g->OW, HW = g->H * g->W;
#pragma omp parallel num_threads(T) if (T > 1)
    {
        const int id = omp_get_thread_num(), nt = omp_get_num_threads();
        const taps_share s = taps_share_of(g, &p, id, nt);
        long w0, w1;
        nn_par_share(g->OC, id, nt, 16, &w0, &w1);
        if (dx) {
            taps_pack_w(g, &p, w, w0, w1);
            fill_channels_last(p.dxt, NULL, C, HW, s.n0, s.n1, s.c0, s.c1);
        }
        to_channels_last(x, p.xt, C, HW, s.n0, s.n1, s.c0, s.c1);
        to_channels_last(dy, p.yt, OC, P, s.n0, s.n1, s.o0, s.o1);
        tap_cursor tc = {0};
        while (cursor_next(g, &tc)) {
            if (!tc.t.in_full)
                tap_gather(g, &tc, p.xt, p.xpan + tc.row0 * C, C, 1, s.n0, s.n1, s.c0, s.c1);
            if (!tc.t.out_full)
                tap_gather(g, &tc, p.yt, p.ypan + tc.row0 * OC, OC, 0, s.n0, s.n1, s.o0, s.o1);
        }
#pragma omp barrier
        /* dW_t: by channels, all rows into the one partial set; by images,
         * this thread's rows into its own (zeros when it has no images) */
        if (p.parts > 1 && s.n1 == s.n0)
            memset(p.dwp + (size_t)s.part * p.used * p.plane, 0, sizeof(float) * p.used * p.plane);
        tc = (tap_cursor){0};
        while (s.o1 > s.o0 && s.n1 > s.n0 && cursor_next(g, &tc)) {
            const size_t r = cursor_row(&tc, s.n0), own = (size_t)(s.n1 - s.n0) * tc.t.rh * tc.t.rw;
            const float *a = tc.t.in_full ? p.xt + (size_t)s.n0 * HW * C : p.xpan + r * C;
            const float *d = tc.t.out_full ? p.yt + (size_t)s.n0 * P * OC : p.ypan + r * OC;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(s.o1 - s.o0), C, (int)own, 1.0f, d + s.o0, OC,
                        a, C, 0.0f, p.dwp + ((size_t)s.part * p.used + tc.u) * p.plane + (size_t)s.o0 * C, C);
        }
        /* dx: the dY_t rows of the thread's images (by images) or all of
         * them and the thread's columns of W_t (by channels; packed by every
         * thread before the barrier).  The products overwrite X_t: by
         * images only rows this thread's dW GEMMs have read, by channels
         * columns every thread's have, hence the barrier. */
        if (dx && p.parts == 1) {
#pragma omp barrier
        }
        tc = (tap_cursor){0};
        while (dx && s.c1 > s.c0 && s.n1 > s.n0 && cursor_next(g, &tc)) {
            const size_t r = cursor_row(&tc, s.n0), own = (size_t)(s.n1 - s.n0) * tc.t.rh * tc.t.rw;
            const float *d = tc.t.out_full ? p.yt + (size_t)s.n0 * P * OC : p.ypan + r * OC;
            float *out = tc.t.in_full ? p.dxt + (size_t)s.n0 * HW * C : p.xpan + r * C;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)own, (int)(s.c1 - s.c0), OC, 1.0f, d, OC,
                        p.wp + tc.u * p.plane + s.c0, C, tc.t.in_full ? 1.0f : 0.0f, out + s.c0, C);
            if (!tc.t.in_full)
                tap_scatter_add(g, &tc, p.xpan + tc.row0 * C, p.dxt, C, 1, s.n0, s.n1, s.c0, s.c1);
        }
        if (dx)
            from_channels_last(p.dxt, dx, C, HW, s.n0, s.n1, s.c0, s.c1, 1);
        if (p.parts > 1) {
#pragma omp barrier
        }
        taps_add_dw(g, &p, dw, w0, w1, nt);
    }
}

