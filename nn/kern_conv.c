/* kern_conv.c: 2-D convolution (PyTorch's Conv2d, square stride and padding)
 * on the CPU, as im2col + OpenBLAS sgemm, or on small maps as one GEMM per
 * kernel tap.
 *
 * Forward.  For one image, im2col lays the input out as a column matrix
 * col[C·KH·KW, OH·OW] whose column (oh, ow) holds the receptive field of that
 * output pixel (zeros where it hangs over the padding), so that
 *     y_n[OC, OH·OW] = w[OC, C·KH·KW] · col   (+ b broadcast along rows).
 * The bias is written into y first and the GEMM runs with beta = 1, which
 * saves a pass over y.
 *
 * Backward, per image, reusing the same buffer:
 *     dw  += dy_n · col^T                       (GEMM, beta = 1)
 *     col  = w^T · dy_n, then col2im adds col into dx_n
 *     db  += Σ_pixels dy_n
 * dw is taken from col before col is overwritten by the input gradient, so
 * one buffer serves both.  col2im visits (c, kh, kw, oh, ow) in a fixed
 * order, and OpenBLAS's sgemm splits its work by output blocks (every
 * element is reduced by one thread in a fixed order), so results depend only
 * on the inputs and the OpenBLAS thread count, never on timing.
 *
 * Two refinements, both decided from the geometry alone (so deterministic):
 *
 *  - Direct 1x1: for a 1x1 kernel with stride 1 and pad 0, col would be a
 *    byte-for-byte copy of x_n ([C, H·W] is already the column matrix), so
 *    the GEMMs read x_n and write dx_n directly: no im2col, no col2im, no
 *    scratch.  This is half of ResNet-50's convolutions.
 *
 *  - Image groups: when an image has few output pixels (8x8 and smaller, the
 *    last stages of the ResNets at small inputs) a GEMM with OH·OW columns
 *    is too thin for OpenBLAS to run near peak, so G images share one GEMM:
 *    col holds G column blocks side by side ([C·KH·KW, G·OH·OW]) and the
 *    output goes through a second scratch matrix t[OC, G·OH·OW] that is
 *    scattered to (gathered from) the NCHW tensors.  G is the smallest count
 *    that reaches CONV_MIN_COLS columns, capped at N.
 *
 * Where im2col would multiply many padding zeros (small maps: 56% of a 3x3
 * pad-1 convolution's work on a 2x2 map) and the channels are many, a third
 * way replaces it: an implicit GEMM per kernel tap over the pixels where that
 * tap is inside the map (see "implicit per-tap GEMM" below; the choice,
 * conv_taps_pays, is made once per geometry and kept in g->taps).
 *
 * Scratch (nn_cpu_conv2d_work): C·KH·KW·G·OH·OW floats for col, plus
 * OC·G·OH·OW for t when G > 1, plus one padded input plane (im2col and
 * col2im work through it, see below); 0 on the direct 1x1 path; the per-tap
 * path has its own (taps_work).  No kernel here allocates. */
/* nn_kern_cpu.h first: OpenBLAS's cblas.h pulls in <complex.h>, whose macro
 * I would break the header's parameters named I. */
#include "nn_kern_cpu.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

#include "nn_par.h"

/* Columns a GEMM should have before OpenBLAS's blocking pays off.  Measured
 * single-threaded, batch 32: 3x3 512->512 at 4x4 runs ~1.3x faster forward
 * and ~1.6x backward grouped to 256 columns than image by image; at 8x8 and
 * larger the difference is within noise, and 512 or 1024 was no better. */
#define CONV_MIN_COLS 256

typedef struct conv_plan {
    int ckk;    /* C·KH·KW: the GEMM inner dimension of the forward pass */
    int ohw;    /* OH·OW */
    int group;  /* images per GEMM */
    int direct; /* 1x1, stride 1, pad 0, one image per GEMM: x is its own col */
} conv_plan;

static int conv_out_size(int in, int k, int stride, int pad)
{
    long span = (long)in + 2L * pad - k;
    if (span < 0)
        return 0;
    return (int)(span / stride + 1);
}

static int is_direct_1x1(const nn_conv_geom *g)
{
    return g->KH == 1 && g->KW == 1 && g->stride == 1 && g->pad == 0;
}

static conv_plan conv_plan_of(const nn_conv_geom *g)
{
    conv_plan p;
    p.ckk = g->C * g->KH * g->KW;
    p.ohw = g->OH * g->OW;
    p.group = 1;
    if (p.ohw < CONV_MIN_COLS) {
        /* ... but never so large that a thread is left without a group. */
        int t = g->threads > 1 ? g->threads : 1, per_thread = (g->N + t - 1) / t;
        p.group = (CONV_MIN_COLS + p.ohw - 1) / p.ohw;
        if (p.group > per_thread)
            p.group = per_thread;
    }
    p.direct = p.group == 1 && is_direct_1x1(g);
    return p;
}

static void taps_count(const nn_conv_geom *g, int *used, size_t *rows);

/* The implicit per-tap GEMM (below) instead of im2col when at least
 * TAPS_MIN_ZEROS of im2col's multiply-adds would be against padding and both
 * channel counts reach TAPS_MIN_CHANNELS.  Measured on ResNet-18 at 32x32,
 * batch 32, fwd+bwd against im2col, 1 / 2 threads: 3x3 at 2x2 (56% zeros)
 * 1.75x / 1.05-1.4x faster, 4x4 (31%) 1.5x / 1.5x, 8x8 (16%) 1.03x / 1.1x,
 * 1x1 1.1x / 1.3x, the stride-2 3x3s 1.1-1.5x; with 32 input channels (the
 * small CNN's 14x14 layer, 14% zeros) its GEMMs are too thin and it is 1.5x
 * slower, and without zeros to skip (1x1 kernels) its layout changes cost
 * up to 1.5x with two threads.  3x3 pad 1 stays on
 * im2col from 14x14 up (9.3% zeros).  Decided once, by nn_conv_geom_init,
 * from the shapes (N only in the guard that its GEMMs' row counts fit an
 * int), so a layer keeps its path when the model lowers N for a short last
 * batch. */
#define TAPS_MIN_ZEROS 0.10
#define TAPS_MIN_CHANNELS 64

static int conv_taps_pays(const nn_conv_geom *g)
{
    if (g->C < TAPS_MIN_CHANNELS || g->OC < TAPS_MIN_CHANNELS || (long)g->N * g->OH * g->OW > INT_MAX)
        return 0;
    nn_conv_geom one = *g;
    one.N = 1;
    int used;
    size_t valid;
    taps_count(&one, &used, &valid);
    double all = (double)g->KH * g->KW * g->OH * g->OW;
    return 1.0 - (double)valid / all >= TAPS_MIN_ZEROS;
}

int nn_conv_geom_init(nn_conv_geom *g)
{
    if (g->N <= 0 || g->C <= 0 || g->H <= 0 || g->W <= 0 || g->OC <= 0 || g->KH <= 0 || g->KW <= 0 ||
        g->stride <= 0 || g->pad < 0)
        return -1;
    g->OH = conv_out_size(g->H, g->KH, g->stride, g->pad);
    g->OW = conv_out_size(g->W, g->KW, g->stride, g->pad);
    g->threads = nn_par_threads();
    if (g->OH <= 0 || g->OW <= 0)
        return -1;
    /* GEMM dimensions are ints: refuse geometries whose matrices would not
     * fit rather than overflow silently. */
    long ckk = (long)g->C * g->KH * g->KW;
    long ohw = (long)g->OH * g->OW;
    long cols = ohw < CONV_MIN_COLS ? CONV_MIN_COLS + ohw : ohw;
    if (ckk > INT_MAX || ohw > INT_MAX || ckk * cols > INT_MAX || (long)g->OC * cols > INT_MAX ||
        (long)g->C * g->H * g->W > INT_MAX || (long)g->OC * ohw > INT_MAX)
        return -1;
    g->taps = conv_taps_pays(g);
    return 0;
}

static size_t conv_thread_work(const nn_conv_geom *g, const conv_plan *p);
static int conv_threads(const nn_conv_geom *g);

static size_t conv_work_full(const nn_conv_geom *g)
{
    conv_plan p = conv_plan_of(g);
    if (p.direct && conv_threads(g) == 1)
        return 0;
    return conv_thread_work(g, &p) * (size_t)conv_threads(g);
}

/* ---- im2col and col2im through a padded plane -----------------------------
 *
 * Both go one channel at a time through a scratch copy of the channel's
 * plane with its zero border made explicit (Hp = H + 2·pad rows of
 * Wp = W + 2·pad floats).  Every receptive field then lies inside that plane,
 * so a row of col for tap (kh, kw) and output row oh is a plain run of OW
 * floats (stride 1) or a strided gather (stride > 1) with no padding tests;
 * the border is cleared once per call and never written again.  On the small
 * maps of the ResNets (8x8 and less) the earlier per-tap clipping spent more
 * time on range arithmetic and libc calls for 8-float rows than it moved. */

static int padded_h(const nn_conv_geom *g)
{
    return g->H + 2 * g->pad;
}

static int padded_w(const nn_conv_geom *g)
{
    return g->W + 2 * g->pad;
}

/* n floats from src to dst in fixed-size pieces: a plain loop would be turned
 * into a call to memcpy, which costs more than it moves on 4..16 floats. */
static inline void copy_run(float *restrict dst, const float *restrict src, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        memcpy(dst + i, src + i, 8 * sizeof(float));
    if (n - i >= 4) {
        memcpy(dst + i, src + i, 4 * sizeof(float));
        i += 4;
    }
    if (n - i >= 2) {
        memcpy(dst + i, src + i, 2 * sizeof(float));
        i += 2;
    }
    if (n - i >= 1)
        dst[i] = src[i];
}

/* dst[i] += src[i] for n floats, in pieces of 8 (see copy_run). */
static inline void add_run(float *restrict dst, const float *restrict src, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            dst[i + k] += src[i + k];
    for (; i < n; i++)
        dst[i] += src[i];
}

/* col[(c,kh,kw), oh·OW+ow] = x[c, oh·s-p+kh, ow·s-p+kw] or 0 in the padding;
 * rows of col are ld floats apart (ld > OH·OW when images are grouped).
 * xp: Hp·Wp floats of scratch. */
static void im2col(const nn_conv_geom *g, const float *restrict x, float *restrict col, size_t ld,
                   float *restrict xp)
{
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW, s = g->stride, pad = g->pad;
    const int Hp = padded_h(g), Wp = padded_w(g);
    if (pad > 0)
        memset(xp, 0, sizeof(float) * (size_t)Hp * Wp);
    float *restrict row = col;
    for (int c = 0; c < g->C; c++) {
        const float *restrict xc = x + (size_t)c * H * W;
        for (int h = 0; h < H; h++)
            copy_run(xp + (size_t)(h + pad) * Wp + pad, xc + (size_t)h * W, W);
        for (int kh = 0; kh < g->KH; kh++)
            for (int kw = 0; kw < g->KW; kw++, row += ld)
                for (int oh = 0; oh < OH; oh++) {
                    const float *restrict src = xp + (size_t)(oh * s + kh) * Wp + kw;
                    float *restrict dst = row + (size_t)oh * OW;
                    if (s == 1) {
                        copy_run(dst, src, OW);
                    } else {
                        for (int i = 0; i < OW; i++)
                            dst[i] = src[(size_t)i * s];
                    }
                }
    }
}

/* The adjoint of im2col: dx[c, ih, iw] += every col entry im2col copied from
 * there; entries that came from the padding are dropped.  Each channel is
 * summed in the padded scratch plane xp first, in (kh, kw, oh, ow) order,
 * then added into dx. */
static void col2im_add(const nn_conv_geom *g, const float *restrict col, size_t ld, float *restrict dx,
                       float *restrict xp)
{
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW, s = g->stride, pad = g->pad;
    const int Hp = padded_h(g), Wp = padded_w(g);
    const float *restrict row = col;
    for (int c = 0; c < g->C; c++) {
        memset(xp, 0, sizeof(float) * (size_t)Hp * Wp);
        for (int kh = 0; kh < g->KH; kh++)
            for (int kw = 0; kw < g->KW; kw++, row += ld)
                for (int oh = 0; oh < OH; oh++) {
                    const float *restrict src = row + (size_t)oh * OW;
                    float *restrict dst = xp + (size_t)(oh * s + kh) * Wp + kw;
                    if (s == 1) {
                        add_run(dst, src, OW);
                    } else {
                        for (int i = 0; i < OW; i++)
                            dst[(size_t)i * s] += src[i];
                    }
                }
        float *restrict dxc = dx + (size_t)c * H * W;
        for (int h = 0; h < H; h++)
            add_run(dxc + (size_t)h * W, xp + (size_t)(h + pad) * Wp + pad, W);
    }
}

/* out[OC, ld] rows := b[oc], so the GEMM can add onto them with beta = 1. */
static void fill_bias_rows(float *restrict out, const float *restrict b, int OC, size_t cols, size_t ld)
{
    for (int oc = 0; oc < OC; oc++) {
        float *restrict r = out + (size_t)oc * ld;
        const float v = b[oc];
        for (size_t j = 0; j < cols; j++)
            r[j] = v;
    }
}

/* t[oc, i·ohw + j] <-> y[n0+i, oc, j] for the gb images of a group. */
static void scatter_group(const float *restrict t, float *restrict y, int gb, int OC, int ohw)
{
    const size_t ld = (size_t)gb * ohw;
    for (int i = 0; i < gb; i++)
        for (int oc = 0; oc < OC; oc++)
            memcpy(y + ((size_t)i * OC + oc) * ohw, t + oc * ld + (size_t)i * ohw, sizeof(float) * (size_t)ohw);
}

static void gather_group(const float *restrict y, float *restrict t, int gb, int OC, int ohw)
{
    const size_t ld = (size_t)gb * ohw;
    for (int i = 0; i < gb; i++)
        for (int oc = 0; oc < OC; oc++)
            memcpy(t + oc * ld + (size_t)i * ohw, y + ((size_t)i * OC + oc) * ohw, sizeof(float) * (size_t)ohw);
}

/* Scratch floats one thread needs: col, t when grouping, and (backward) a
 * private dw that is summed into dw after the parallel part. */
static size_t conv_thread_work(const nn_conv_geom *g, const conv_plan *p)
{
    size_t cols = (size_t)p->group * (size_t)p->ohw;
    size_t n = p->direct ? 0 : (size_t)p->ckk * cols + (size_t)padded_h(g) * (size_t)padded_w(g);
    if (p->group > 1)
        n += (size_t)g->OC * cols;
    return n + (size_t)g->OC * (size_t)p->ckk;
}

/* The padded plane of im2col and col2im, after col and t in a thread's
 * scratch (the private dw sits at its end). */
static float *plane_scratch(const nn_conv_geom *g, const conv_plan *p, float *work)
{
    size_t cols = (size_t)p->group * (size_t)p->ohw;
    return work + (size_t)p->ckk * cols + (p->group > 1 ? (size_t)g->OC * cols : 0);
}

/* Forward of images [n_lo, n_hi), in groups, with one thread's scratch. */
static void conv_fwd_range(const nn_conv_geom *g, const conv_plan *p, int n_lo, int n_hi, const float *x,
                           const float *w, const float *b, float *y, float *work)
{
    const size_t x_img = (size_t)g->C * g->H * g->W;
    const size_t y_img = (size_t)g->OC * p->ohw;
    const float beta = b ? 1.0f : 0.0f;
    for (int n0 = n_lo; n0 < n_hi; n0 += p->group) {
        const int gb = n_hi - n0 < p->group ? n_hi - n0 : p->group;
        const int cols = gb * p->ohw;
        const float *col;
        if (p->direct) {
            col = x + (size_t)n0 * x_img;
        } else {
            for (int i = 0; i < gb; i++)
                im2col(g, x + (size_t)(n0 + i) * x_img, work + (size_t)i * p->ohw, (size_t)cols,
                       plane_scratch(g, p, work));
            col = work;
        }
        float *out = gb == 1 ? y + (size_t)n0 * y_img : work + (size_t)p->ckk * cols;
        if (b)
            fill_bias_rows(out, b, g->OC, (size_t)cols, (size_t)cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->OC, cols, p->ckk, 1.0f, w, p->ckk, col, cols, beta,
                    out, cols);
        if (gb > 1)
            scatter_group(out, y + (size_t)n0 * y_img, gb, g->OC, p->ohw);
    }
}

/* Threads take contiguous runs of images, whole groups each, so the GEMM
 * shapes (and the results) depend on the geometry and thread count only. */
static int conv_threads(const nn_conv_geom *g)
{
    return g->threads > 1 ? g->threads : 1;
}

static void conv_fwd_full(const nn_conv_geom *g, const float *x, const float *w, const float *b, float *y,
                          float *work)
{
    const conv_plan p = conv_plan_of(g);
    const int t = conv_threads(g);
    const size_t per = conv_thread_work(g, &p);
    if (t == 1) {
        conv_fwd_range(g, &p, 0, g->N, x, w, b, y, work);
        return;
    }
#pragma omp parallel num_threads(t)
    {
        int id = omp_get_thread_num();
        long lo, hi;
        nn_par_share(g->N, id, omp_get_num_threads(), p.group, &lo, &hi);
        if (hi > lo)
            conv_fwd_range(g, &p, (int)lo, (int)hi, x, w, b, y, work + (size_t)id * per);
    }
}

/* Σ r[0..n) with eight interleaved partial sums, combined pairwise: a
 * single running sum is one dependent add per element (the latency of an
 * add), which made the bias gradient of the small CNN's 28x28 layer cost as
 * much as its weight-gradient GEMM; eight lanes let the adds pipeline and
 * vectorise.  The order is fixed, so the sum is deterministic. */
static float sum_run(const float *restrict r, int n)
{
    float acc[8] = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += r[j + k];
    for (int k = 0; j < n; j++, k++)
        acc[k] += r[j];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* db[oc] += Σ over images and pixels of dy[n, oc, :], image by image in a
 * fixed order. */
static void bias_grad_add(const float *restrict dy, float *restrict db, int N, int OC, int ohw)
{
    for (int n = 0; n < N; n++)
        for (int oc = 0; oc < OC; oc++)
            db[oc] += sum_run(dy + ((size_t)n * OC + oc) * ohw, ohw);
}

/* Backward of images [n_lo, n_hi): dw accumulates into dw_acc (the
 * caller's dw or a thread's private one), dx into its own images. */
static void conv_bwd_range(const nn_conv_geom *g, const conv_plan *p, int n_lo, int n_hi, const float *x,
                           const float *w, const float *dy, float *dx, float *dw_acc, float dw_beta, float *work)
{
    const size_t x_img = (size_t)g->C * g->H * g->W;
    const size_t y_img = (size_t)g->OC * p->ohw;
    for (int n0 = n_lo; n0 < n_hi; n0 += p->group) {
        const int gb = n_hi - n0 < p->group ? n_hi - n0 : p->group;
        const int cols = gb * p->ohw;
        const float *dyg = dy + (size_t)n0 * y_img;
        if (p->direct) {
            const float *xn = x + (size_t)n0 * x_img;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->OC, g->C, cols, 1.0f, dyg, cols, xn, cols,
                        dw_beta, dw_acc, p->ckk);
            dw_beta = 1.0f;
            if (dx)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, g->C, cols, g->OC, 1.0f, w, p->ckk, dyg, cols,
                            1.0f, dx + (size_t)n0 * x_img, cols);
            continue;
        }
        float *col = work, *xp = plane_scratch(g, p, work);
        for (int i = 0; i < gb; i++)
            im2col(g, x + (size_t)(n0 + i) * x_img, col + (size_t)i * p->ohw, (size_t)cols, xp);
        if (gb > 1) {
            float *tt = work + (size_t)p->ckk * cols;
            gather_group(dyg, tt, gb, g->OC, p->ohw);
            dyg = tt;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->OC, p->ckk, cols, 1.0f, dyg, cols, col, cols, dw_beta,
                    dw_acc, p->ckk);
        dw_beta = 1.0f;
        if (!dx)
            continue;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, p->ckk, cols, g->OC, 1.0f, w, p->ckk, dyg, cols, 0.0f,
                    col, cols);
        for (int i = 0; i < gb; i++)
            col2im_add(g, col + (size_t)i * p->ohw, (size_t)cols, dx + (size_t)(n0 + i) * x_img, xp);
    }
}

static void conv_bwd_full(const nn_conv_geom *g, const float *x, const float *w, const float *dy, float *dx,
                          float *dw, float *db, float *work)
{
    const conv_plan p = conv_plan_of(g);
    const int t = conv_threads(g);
    const size_t per = conv_thread_work(g, &p), wsize = (size_t)g->OC * p.ckk;
    if (db)
        bias_grad_add(dy, db, g->N, g->OC, p.ohw);
    if (t == 1) {
        conv_bwd_range(g, &p, 0, g->N, x, w, dy, dx, dw, 1.0f, work);
        return;
    }
    /* Thread 0 accumulates straight into dw, the others into their own
     * copies (the first GEMM writes them with beta = 0, so they need no
     * clearing), which are then added in thread order: a fixed sum order.
     * A thread whose share of images is empty has no copy to add. */
#pragma omp parallel num_threads(t)
    {
        int id = omp_get_thread_num(), nt = omp_get_num_threads();
        float *mine = work + (size_t)id * per;
        float *acc = id == 0 ? dw : mine + per - wsize;
        long lo, hi;
        nn_par_share(g->N, id, nt, p.group, &lo, &hi);
        if (hi > lo)
            conv_bwd_range(g, &p, (int)lo, (int)hi, x, w, dy, dx, acc, id == 0 ? 1.0f : 0.0f, mine);
#pragma omp barrier
        long e0, e1;
        nn_par_share((long)wsize, id, nt, 16, &e0, &e1);
        for (int k = 1; k < nt; k++) {
            long k_lo, k_hi;
            nn_par_share(g->N, k, nt, p.group, &k_lo, &k_hi);
            if (k_hi <= k_lo)
                continue;
            const float *part = work + (size_t)k * per + per - wsize;
            for (long e = e0; e < e1; e++)
                dw[e] += part[e];
        }
    }
}

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
static void taps_count(const nn_conv_geom *g, int *used, size_t *rows)
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
    return conv_threads(g) > 1 && 2L * g->N * g->OH * g->OW >= (g->C > g->OC ? g->C : g->OC);
}

static size_t taps_work(const nn_conv_geom *g)
{
    int used;
    size_t rows;
    taps_count(g, &used, &rows);
    const size_t C = (size_t)g->C, OC = (size_t)g->OC, hw = (size_t)g->N * g->H * g->W,
                 ohw = (size_t)g->N * g->OH * g->OW, parts = taps_by_images(g) ? (size_t)conv_threads(g) : 1;
    return (1 + parts) * used * OC * C + 2 * hw * C + ohw * OC + (C + OC) * rows;
}

static taps_plan taps_plan_of(const nn_conv_geom *g, float *work)
{
    size_t rows;
    taps_plan p;
    taps_count(g, &p.used, &rows);
    const size_t C = (size_t)g->C, OC = (size_t)g->OC, hw = (size_t)g->N * g->H * g->W,
                 ohw = (size_t)g->N * g->OH * g->OW;
    p.parts = taps_by_images(g) ? conv_threads(g) : 1;
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

static void taps_fwd(const nn_conv_geom *g, const float *x, const float *w, const float *b, float *y, float *work)
{
    const taps_plan p = taps_plan_of(g, work);
    const int T = conv_threads(g), C = g->C, OC = g->OC, P = g->OH * g->OW;
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

static void taps_bwd(const nn_conv_geom *g, const float *x, const float *w, const float *dy, float *dx, float *dw,
                     float *work)
{
    const taps_plan p = taps_plan_of(g, work);
    const int T = conv_threads(g), C = g->C, OC = g->OC, P = g->OH * g->OW, HW = g->H * g->W;
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

/* ---- taps that only ever see padding -------------------------------------
 *
 * On a small input a kernel tap can lie in the padding for every output
 * pixel: a 3x3 pad-1 convolution of a 1x1 map uses only its centre tap, so
 * im2col + GEMM would multiply eight zero rows out of nine (ResNet-18's last
 * stage on 32x32 inputs).  Such a convolution is the same as one with the
 * kernel cut down to the taps in use and the padding reduced by as much, so
 * the kernels run that one, on a copy of the used part of w, and add its
 * weight gradient back into the used part of dw (the unused taps' gradient is
 * exactly zero).  Decided from the geometry alone. */

/* The cut-down geometry, when some taps are never used; *lo is the first
 * used tap (the same on both axes: only square cuts are taken). */
static int pruned_geom(const nn_conv_geom *g, nn_conv_geom *p, int *lo)
{
    int kh_lo = g->pad - (g->OH - 1) * g->stride, kh_hi = g->pad + g->H;
    int kw_lo = g->pad - (g->OW - 1) * g->stride, kw_hi = g->pad + g->W;
    kh_lo = kh_lo > 0 ? kh_lo : 0;
    kw_lo = kw_lo > 0 ? kw_lo : 0;
    kh_hi = kh_hi < g->KH ? kh_hi : g->KH;
    kw_hi = kw_hi < g->KW ? kw_hi : g->KW;
    if ((kh_lo == 0 && kh_hi == g->KH && kw_lo == 0 && kw_hi == g->KW) || kh_lo != kw_lo ||
        kh_hi - kh_lo != kw_hi - kw_lo || kh_hi <= kh_lo)
        return 0;
    *p = *g;
    p->KH = p->KW = kh_hi - kh_lo;
    p->pad = g->pad - kh_lo;
    if (nn_conv_geom_init(p) != 0 || p->OH != g->OH || p->OW != g->OW)
        return 0;
    p->threads = g->threads;
    *lo = kh_lo;
    return 1;
}

static size_t pruned_w_size(const nn_conv_geom *p)
{
    return (size_t)p->OC * p->C * p->KH * p->KW;
}

/* Copies the used taps of w into wp, or adds dwp back into them (add = 1).
 * The copy and the add are separate loops, and a single used tap (a 3x3
 * kernel on a 1x1 map) has its own: the general loop's index arithmetic per
 * element cost more than the strided memory traffic on ResNet-18's last
 * stage (512x512 planes). */
static void taps_copy(const nn_conv_geom *g, const nn_conv_geom *p, int lo, float *full, float *part, int add)
{
    const size_t planes = (size_t)g->OC * g->C, fk = (size_t)g->KH * g->KW, pk = (size_t)p->KH * p->KW;
    const size_t first = (size_t)lo * g->KW + (size_t)lo;
    const int t = planes >= 4096 ? conv_threads(g) : 1;
    if (pk == 1) {
        float *restrict f = full + first;
        float *restrict q = part;
        if (add) {
#pragma omp parallel for schedule(static) num_threads(t)
            for (size_t pl = 0; pl < planes; pl++)
                f[pl * fk] += q[pl];
        } else {
#pragma omp parallel for schedule(static) num_threads(t)
            for (size_t pl = 0; pl < planes; pl++)
                q[pl] = f[pl * fk];
        }
        return;
    }
#pragma omp parallel for schedule(static) num_threads(t)
    for (size_t pl = 0; pl < planes; pl++) {
        float *restrict f = full + pl * fk + first;
        float *restrict q = part + pl * pk;
        for (int i = 0; i < p->KH; i++)
            for (int j = 0; j < p->KW; j++) {
                if (add)
                    f[(size_t)i * g->KW + j] += q[(size_t)i * p->KW + j];
                else
                    q[(size_t)i * p->KW + j] = f[(size_t)i * g->KW + j];
            }
    }
}

size_t nn_cpu_conv2d_work(const nn_conv_geom *g)
{
    nn_conv_geom p;
    int lo;
    if (g->taps)
        return taps_work(g);
    if (!pruned_geom(g, &p, &lo))
        return conv_work_full(g);
    return 2 * pruned_w_size(&p) + conv_work_full(&p);
}

void nn_cpu_conv2d_fwd(const nn_conv_geom *g, const float *x, const float *w, const float *b, float *y, float *work)
{
    nn_conv_geom p;
    int lo;
    if (g->taps) {
        taps_fwd(g, x, w, b, y, work);
        return;
    }
    if (!pruned_geom(g, &p, &lo)) {
        conv_fwd_full(g, x, w, b, y, work);
        return;
    }
    float *wp = work;
    taps_copy(g, &p, lo, (float *)w, wp, 0);
    conv_fwd_full(&p, x, wp, b, y, work + 2 * pruned_w_size(&p));
}

void nn_cpu_conv2d_bwd(const nn_conv_geom *g, const float *x, const float *w, const float *dy, float *dx, float *dw,
                       float *db, float *work)
{
    nn_conv_geom p;
    int lo;
    if (g->taps) {
        if (db)
            bias_grad_add(dy, db, g->N, g->OC, g->OH * g->OW);
        taps_bwd(g, x, w, dy, dx, dw, work);
        return;
    }
    if (!pruned_geom(g, &p, &lo)) {
        conv_bwd_full(g, x, w, dy, dx, dw, db, work);
        return;
    }
    size_t nw = pruned_w_size(&p);
    float *wp = work, *dwp = work + nw;
    taps_copy(g, &p, lo, (float *)w, wp, 0);
    memset(dwp, 0, nw * sizeof *dwp);
    conv_bwd_full(&p, x, wp, dy, dx, dwp, db, work + 2 * nw);
    taps_copy(g, &p, lo, dw, dwp, 1);
}
