/* kern_cpu_conv.c: 2-D convolution (PyTorch's Conv2d, square stride and padding)
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
 * path has its own (kern_cpu_conv_taps.c).  No kernel here allocates. */
/* nn_kern_cpu.h first: OpenBLAS's cblas.h pulls in <complex.h>, whose macro
 * I would break the header's parameters named I. */
#include "nn_kern_cpu.h"
#include "kern_cpu_conv.h"

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
    nn_cpu_conv_taps_count(&one, &used, &valid);
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

static size_t conv_work_full(const nn_conv_geom *g)
{
    conv_plan p = conv_plan_of(g);
    if (p.direct && nn_cpu_conv_threads(g) == 1)
        return 0;
    return conv_thread_work(g, &p) * (size_t)nn_cpu_conv_threads(g);
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
int nn_cpu_conv_threads(const nn_conv_geom *g)
{
    return g->threads > 1 ? g->threads : 1;
}

static void conv_fwd_full(const nn_conv_geom *g, const float *x, const float *w, const float *b, float *y,
                          float *work)
{
    const conv_plan p = conv_plan_of(g);
    const int t = nn_cpu_conv_threads(g);
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
    const int t = nn_cpu_conv_threads(g);
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
    const int t = planes >= 4096 ? nn_cpu_conv_threads(g) : 1;
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
        return nn_cpu_conv_taps_work(g);
    if (!pruned_geom(g, &p, &lo))
        return conv_work_full(g);
    return 2 * pruned_w_size(&p) + conv_work_full(&p);
}

void nn_cpu_conv2d_fwd(const nn_conv_geom *g, const float *x, const float *w, const float *b, float *y, float *work)
{
    nn_conv_geom p;
    int lo;
    if (g->taps) {
        nn_cpu_conv_taps_fwd(g, x, w, b, y, work);
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
        nn_cpu_conv_taps_bwd(g, x, w, dy, dx, dw, work);
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
