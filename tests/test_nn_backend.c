/* test_nn_backend: the generic kernel harness (dav1d's checkasm, for the
 * engine's backends): every entry of every registered backend table is run
 * against the CPU reference table on random shapes, and the outputs compared
 * with the tolerance written beside each op.
 *
 * A case draws a shape and describes its buffers (inputs, outputs,
 * accumulated gradients, scratch); the same host values go into both
 * backends through their own from_host, each runs the op through its table,
 * and every output comes back through to_host.  Float outputs are compared
 * as max |test - ref| / max |ref| (exact where the order of operations is
 * fixed for any device: element-wise ops, masks, winners); integer outputs
 * (max-pool winners, dropout masks, top-k counts) must be equal.  Scratch is
 * backend-private (its size asked of each backend) and never compared.
 *
 * The CPU table is registered against itself, which proves the harness and
 * the CPU table's plumbing; the CUDA table is checked when this build has it
 * and the machine a device (a TAP skip with the reason otherwise), on the
 * random shapes and on every convolution shape of the study's ResNet-50 and
 * VGG16 at 112x112 (docs/engine-backend.md).  The kernels themselves are checked
 * against double references and finite differences in test_nn_kern_*.c, and
 * whole models against PyTorch in test_nn_golden.c. */
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nn_backend.h"
#include "nn_rng.h"
#include "tap.h"

#define SHAPES 12 /* random shapes per op and backend */


enum kind {
    F_IN,    /* floats in [-1, 1) */
    F_POS,   /* floats in [0.5, 1.5): variances, Adam's v; compared (an input that is only read compares equal) */
    F_ACC,   /* floats in [-1, 1), accumulated into: compared */
    F_OUT,   /* zeros, written: compared */
    I_IN,    /* int32 in [0, lim) */
    I_OUT,   /* int32, written: compared exactly */
    U8_IN,   /* random bytes */
    U8_OUT,  /* bytes, written: compared exactly */
    SCRATCH, /* backend-private, sized by the op's scratch() */
    MET_IN,  /* one nn_step_metrics with random values */
    MET_OUT, /* one nn_step_metrics, written (sumsq added to): compared */
    ACC_IO,  /* one nn_pass_acc from zeros: compared */
};

typedef struct kbuf {
    enum kind kind;
    size_t n; /* elements */
    int lim;  /* I_IN: values in [0, lim) */
} kbuf;

typedef struct kcase {
    int shape; /* which of the op's SHAPES draws this is */
    int nb;
    kbuf b[12];
    int N, K, D, O, C, HW;
    size_t n;
    float p, lr, mom, l2, b1, b2, eps;
    long t;
    double dl2;
    uint64_t seed;
    nn_conv_geom cg;
    nn_pool_geom pg;
} kcase;

typedef struct kop {
    const char *name;
    double tol; /* max |test - ref| / max |ref| over each float output */
    void (*make)(kcase *k, nn_rng *r);
    void (*run)(const nn_ctx *c, void *const *p, const kcase *k);
    size_t (*scratch)(const nn_ctx *c, const kcase *k);
} kop;

static int rnd(nn_rng *r, int lo, int hi) /* [lo, hi] */
{
    return lo + (int)(nn_rng_next(r) % (uint64_t)(hi - lo + 1));
}

static void add(kcase *k, enum kind kind, size_t n, int lim)
{
    k->b[k->nb++] = (kbuf){kind, n, lim};
}

static size_t elem_bytes(const kbuf *b)
{
    switch (b->kind) {
    case I_IN: case I_OUT: return sizeof(int32_t);
    case U8_IN: case U8_OUT: case SCRATCH: return 1;
    case MET_IN: case MET_OUT: return sizeof(nn_step_metrics);
    case ACC_IO: return sizeof(nn_pass_acc);
    default: return sizeof(float);
    }
}

/* The host values every backend starts from. */
static void fill(const kbuf *b, void *h, nn_rng *r)
{
    memset(h, 0, b->n * elem_bytes(b));
    float *f = h;
    int32_t *i = h;
    for (size_t j = 0; j < b->n; j++)
        switch (b->kind) {
        case F_IN: case F_ACC: f[j] = (float)(2 * nn_rng_unit(r) - 1); break;
        case F_POS: f[j] = (float)(0.5 + nn_rng_unit(r)); break;
        case I_IN: i[j] = (int32_t)(nn_rng_next(r) % (uint64_t)b->lim); break;
        case U8_IN: ((uint8_t *)h)[j] = (uint8_t)nn_rng_next(r); break;
        case MET_IN: ((nn_step_metrics *)h)[j] = (nn_step_metrics){2 * nn_rng_unit(r), nn_rng_unit(r),
                                                                   rnd(r, 0, 9), rnd(r, 10, 19)}; break;
        case ACC_IO: ((nn_pass_acc *)h)[j].bad_step = -1; break;
        default: break;
        }
}

static int compared(enum kind k)
{
    return k == F_ACC || k == F_POS || k == F_OUT || k == I_OUT || k == U8_OUT || k == MET_OUT || k == ACC_IO;
}

static double rel(double t, double r, double scale)
{
    return fabs(t - r) / (scale > 0 ? scale : 1);
}

/* The error of one output buffer (0 when equal; 1e9 when integers differ). */
static double diff(const kbuf *b, const void *t, const void *r)
{
    double worst = 0, scale = 0;
    switch (b->kind) {
    case F_ACC: case F_POS: case F_OUT:
        for (size_t j = 0; j < b->n; j++)
            scale = fmax(scale, fabs(((const float *)r)[j]));
        for (size_t j = 0; j < b->n; j++)
            worst = fmax(worst, rel(((const float *)t)[j], ((const float *)r)[j], scale));
        return worst;
    case MET_OUT: {
        const nn_step_metrics *a = t, *e = r;
        if (a->top1 != e->top1 || a->top5 != e->top5)
            return 1e9;
        return fmax(rel(a->xent, e->xent, fabs(e->xent)), rel(a->sumsq, e->sumsq, fabs(e->sumsq)));
    }
    case ACC_IO: {
        const nn_pass_acc *a = t, *e = r;
        if (a->rows != e->rows || a->top1 != e->top1 || a->top5 != e->top5 || a->bad_step != e->bad_step)
            return 1e9;
        return fmax(rel(a->loss_sum, e->loss_sum, fabs(e->loss_sum)), rel(a->xent_sum, e->xent_sum, fabs(e->xent_sum)));
    }
    default:
        return memcmp(t, r, b->n * elem_bytes(b)) == 0 ? 0 : 1e9;
    }
}

/* Runs one case on a backend: copies in, runs, copies the outputs back into
 * out[i] (host). */
static int run_on(const nn_backend *be, const kop *op, const kcase *k, void *const *host, void **out)
{
    nn_ctx c;
    cds_err err;
    if (nn_ctx_init_backend(&c, be, &err) != 0)
        return -1;
    void *dev[12] = {0};
    size_t bytes[12];
    int rc = 0;
    for (int i = 0; i < k->nb && rc == 0; i++) {
        bytes[i] = k->b[i].kind == SCRATCH ? op->scratch(&c, k) : k->b[i].n * elem_bytes(&k->b[i]);
        if (!(dev[i] = nn_ctx_alloc(&c, bytes[i])))
            rc = -1;
        else if (k->b[i].kind != SCRATCH)
            nn_ctx_from_host(&c, dev[i], host[i], bytes[i]);
    }
    if (rc == 0)
        op->run(&c, dev, k);
    for (int i = 0; i < k->nb; i++) {
        if (rc == 0 && compared(k->b[i].kind))
            nn_ctx_to_host(&c, out[i], dev[i], bytes[i]);
        if (dev[i])
            nn_ctx_free(&c, dev[i], bytes[i]);
    }
    nn_ctx_release(&c);
    return rc;
}

/* Every shape of one op on one backend against the CPU table: 1 when all
 * are within the op's tolerance, the worst error in *worst. */
static int agrees(const nn_backend *be, const kop *op, uint64_t seed, double *worst_out)
{
    nn_rng r;
    nn_rng_seed(&r, seed);
    double worst = 0;
    int failed = 0;
    for (int s = 0; s < SHAPES && !failed; s++) {
        kcase k;
        memset(&k, 0, sizeof k);
        k.shape = s;
        op->make(&k, &r);
        void *host[12], *ref[12], *got[12];
        for (int i = 0; i < k.nb; i++) {
            size_t b = k.b[i].n * elem_bytes(&k.b[i]) + 1;
            host[i] = malloc(b);
            ref[i] = calloc(1, b);
            got[i] = calloc(1, b);
            fill(&k.b[i], host[i], &r);
        }
        failed = run_on(&nn_backend_cpu, op, &k, host, ref) != 0 || run_on(be, op, &k, host, got) != 0;
        for (int i = 0; i < k.nb; i++) {
            if (!failed && compared(k.b[i].kind))
                worst = fmax(worst, diff(&k.b[i], got[i], ref[i]));
            free(host[i]);
            free(ref[i]);
            free(got[i]);
        }
    }
    *worst_out = worst;
    return !failed && worst <= op->tol;
}

static void check(const nn_backend *be, const kop *op, uint64_t seed)
{
    double worst;
    int good = agrees(be, op, seed, &worst);
    ok(good, "%s: %s matches the cpu reference on %d random shapes (worst %.1e, tolerance %.0e)", be->name, op->name,
       SHAPES, worst, op->tol);
}

/* ------------------------------------------------------------------ ops */

#define P(i) (p[i])
#define F(i) ((float *)p[i])
#define I32(i) ((int32_t *)p[i])

static void mk_linear(kcase *k, nn_rng *r)
{
    k->N = rnd(r, 1, 9), k->D = rnd(r, 1, 40), k->O = rnd(r, 1, 20);
    add(k, F_IN, (size_t)k->N * k->D, 0);        /* x */
    add(k, F_IN, (size_t)k->O * k->D, 0);        /* w */
    add(k, F_IN, (size_t)k->O, 0);               /* b */
    add(k, F_OUT, (size_t)k->N * k->O, 0);       /* y */
    add(k, F_ACC, (size_t)k->N * k->D, 0);       /* dx */
    add(k, F_ACC, (size_t)k->O * k->D, 0);       /* dw */
    add(k, F_ACC, (size_t)k->O, 0);              /* db */
    add(k, F_IN, (size_t)k->N * k->O, 0);        /* dy */
}
static void run_linear_fwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->linear_fwd(c, F(0), F(1), F(2), F(3), k->N, k->D, k->O);
}
static void run_linear_bwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->linear_bwd(c, F(0), F(1), F(7), F(4), F(5), F(6), k->N, k->D, k->O);
}

/* sparse: idx [N, K] in [0, D), plan, w [D, O], b, y, dy, dw, db, rg, m, v */
static void mk_sparse(kcase *k, nn_rng *r)
{
    k->N = rnd(r, 1, 8), k->K = rnd(r, 1, 6), k->D = rnd(r, 1, 30), k->O = rnd(r, 1, 12);
    size_t nk = (size_t)k->N * k->K, w = (size_t)k->D * k->O;
    add(k, I_IN, nk, k->D);
    add(k, SCRATCH, 0, 0);
    add(k, F_ACC, w, 0);                         /* w (updated by the steps) */
    add(k, F_IN, (size_t)k->O, 0);               /* b */
    add(k, F_OUT, (size_t)k->N * k->O, 0);       /* y */
    add(k, F_IN, (size_t)k->N * k->O, 0);        /* dy */
    add(k, F_ACC, w, 0);                         /* dw (dense scatter) */
    add(k, F_ACC, (size_t)k->O, 0);              /* db */
    add(k, F_OUT, nk * k->O, 0);                 /* rg: packed rows */
    add(k, F_ACC, w, 0);                         /* m / buf */
    add(k, F_POS, w, 0);                         /* v */
    k->lr = 0.01f, k->mom = 0.9f, k->l2 = 0.01f, k->b1 = 0.9f, k->b2 = 0.999f, k->eps = 1e-8f;
    k->t = rnd(r, 1, 5);
}
static size_t scratch_plan(const nn_ctx *c, const kcase *k)
{
    return c->be->sparse_plan_work(c, k->N, k->K);
}
static void run_sparse_fwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->sparse_plan(c, I32(0), k->N, k->K, k->D, P(1));
    c->be->sparse_linear_fwd(c, P(1), F(2), F(3), F(4), k->N, k->O);
}
static void run_sparse_bwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->sparse_linear_bwd(c, I32(0), F(5), F(6), F(7), k->N, k->K, k->O);
}
static void run_sparse_bwd_rows(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->sparse_plan(c, I32(0), k->N, k->K, k->D, P(1));
    c->be->sparse_linear_bwd_rows(c, P(1), F(5), F(8), F(7), k->N, k->O);
}
/* The plan's rows, as int32 bits in the rg buffer (room for N·K of them);
 * their count after them when there is room. */
static void run_sparse_plan_rows(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->sparse_plan(c, I32(0), k->N, k->K, k->D, P(1));
    int32_t *rows = (int32_t *)(void *)F(8);
    size_t n = c->be->sparse_plan_rows(c, P(1), rows);
    float count = (float)n;
    if (k->O > 1) /* room after the N·K rows */
        nn_ctx_from_host(c, F(8) + (size_t)k->N * k->K, &count, sizeof count);
}
static nn_row_grad plan_grad(void *const *p)
{
    return (nn_row_grad){.plan = P(1), .dy = F(5)};
}
static void run_sgd_rows(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->sparse_plan(c, I32(0), k->N, k->K, k->D, P(1));
    nn_row_grad g = plan_grad(p);
    c->be->sgd_rows_step(c, F(2), &g, (size_t)k->D, (size_t)k->O, F(9), k->lr, k->mom, k->l2);
}
static void run_adam_rows(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->sparse_plan(c, I32(0), k->N, k->K, k->D, P(1));
    nn_row_grad g = plan_grad(p);
    c->be->adam_rows_step(c, F(2), &g, (size_t)k->D, (size_t)k->O, F(9), F(10), k->lr, k->b1, k->b2, k->eps, k->l2,
                          k->t);
}
static void run_lazy_adam(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->sparse_plan(c, I32(0), k->N, k->K, k->D, P(1));
    nn_row_grad g = plan_grad(p);
    c->be->lazy_adam_step(c, F(2), &g, (size_t)k->O, F(9), F(10), k->lr, k->b1, k->b2, k->eps, k->l2, k->t);
}

/* conv: x, w, b, y, dy, dx, dw, db, work */
static void conv_buffers(kcase *k)
{
    const nn_conv_geom *g = &k->cg;
    size_t x = (size_t)g->N * g->C * g->H * g->W, y = (size_t)g->N * g->OC * g->OH * g->OW;
    size_t w = (size_t)g->OC * g->C * g->KH * g->KW;
    add(k, F_IN, x, 0);
    add(k, F_IN, w, 0);
    add(k, F_IN, (size_t)g->OC, 0);
    add(k, F_OUT, y, 0);
    add(k, F_IN, y, 0);
    add(k, F_ACC, x, 0);
    add(k, F_ACC, w, 0);
    add(k, F_ACC, (size_t)g->OC, 0);
    add(k, SCRATCH, 0, 0);
}

static void mk_conv(kcase *k, nn_rng *r)
{
    nn_conv_geom *g = &k->cg;
    do {
        int ks = rnd(r, 0, 2) * 2 + 1;
        *g = (nn_conv_geom){.N = rnd(r, 1, 3), .C = rnd(r, 1, 8), .H = rnd(r, 1, 10), .W = rnd(r, 1, 10),
                            .OC = rnd(r, 1, 8), .KH = ks, .KW = ks, .stride = rnd(r, 1, 2), .pad = rnd(r, 0, ks / 2)};
    } while (nn_conv_geom_init(g) != 0);
    conv_buffers(k);
}
/* The convolutions of the study's networks at 112x112 (DESIGN.md §7), two
 * images: ResNet-50's stem, bottleneck 1x1s and strided 3x3s, VGG16's 3x3
 * stacks.  Sums run over up to C·9 = 4608 terms forward and N·OH·OW =
 * 25088 for the filter gradient, in another order on each backend. */
static void mk_conv_study(kcase *k, nn_rng *r)
{
    static const nn_conv_geom study[] = {
        {.C = 3, .H = 112, .W = 112, .OC = 64, .KH = 7, .KW = 7, .stride = 2, .pad = 3},    /* resnet50 conv1 */
        {.C = 64, .H = 28, .W = 28, .OC = 64, .KH = 1, .KW = 1, .stride = 1, .pad = 0},     /* layer1 1x1 in */
        {.C = 64, .H = 28, .W = 28, .OC = 64, .KH = 3, .KW = 3, .stride = 1, .pad = 1},     /* layer1 3x3 */
        {.C = 64, .H = 28, .W = 28, .OC = 256, .KH = 1, .KW = 1, .stride = 1, .pad = 0},    /* layer1 1x1 out */
        {.C = 128, .H = 28, .W = 28, .OC = 128, .KH = 3, .KW = 3, .stride = 2, .pad = 1},   /* layer2 strided 3x3 */
        {.C = 512, .H = 28, .W = 28, .OC = 1024, .KH = 1, .KW = 1, .stride = 2, .pad = 0},  /* layer3 downsample */
        {.C = 512, .H = 7, .W = 7, .OC = 512, .KH = 3, .KW = 3, .stride = 1, .pad = 1},     /* layer4 3x3 */
        {.C = 3, .H = 112, .W = 112, .OC = 64, .KH = 3, .KW = 3, .stride = 1, .pad = 1},    /* vgg16 conv1_1 */
        {.C = 64, .H = 112, .W = 112, .OC = 64, .KH = 3, .KW = 3, .stride = 1, .pad = 1},   /* vgg16 conv1_2 */
        {.C = 128, .H = 56, .W = 56, .OC = 128, .KH = 3, .KW = 3, .stride = 1, .pad = 1},   /* conv2_2 */
        {.C = 256, .H = 28, .W = 28, .OC = 256, .KH = 3, .KW = 3, .stride = 1, .pad = 1},   /* conv3_x */
        {.C = 512, .H = 14, .W = 14, .OC = 512, .KH = 3, .KW = 3, .stride = 1, .pad = 1},   /* conv5_x */
    };
    _Static_assert(sizeof study / sizeof study[0] == SHAPES, "one study shape per draw");
    (void)r;
    nn_conv_geom *g = &k->cg;
    *g = study[k->shape];
    g->N = 2;
    nn_conv_geom_init(g);
    conv_buffers(k);
}

static size_t scratch_conv(const nn_ctx *c, const kcase *k)
{
    return c->be->conv2d_work(c, &k->cg);
}
static void run_conv_fwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->conv2d_fwd(c, &k->cg, F(0), F(1), F(2), F(3), P(8));
}
static void run_conv_bwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->conv2d_bwd(c, &k->cg, F(0), F(1), F(4), F(5), F(6), F(7), P(8));
}

/* pooling: x, y, argmax, dy, dx */
static void mk_pool(kcase *k, nn_rng *r)
{
    nn_pool_geom *g = &k->pg;
    do {
        int ks = rnd(r, 1, 3);
        *g = (nn_pool_geom){.N = rnd(r, 1, 3), .C = rnd(r, 1, 5), .H = rnd(r, 1, 9), .W = rnd(r, 1, 9), .k = ks,
                            .stride = rnd(r, 1, 2), .pad = rnd(r, 0, ks / 2)};
    } while (nn_pool_geom_init(g) != 0);
    size_t x = (size_t)g->N * g->C * g->H * g->W, y = (size_t)g->N * g->C * g->OH * g->OW;
    add(k, F_IN, x, 0);
    add(k, F_OUT, y, 0);
    add(k, I_OUT, y, 0);
    add(k, F_IN, y, 0);
    add(k, F_ACC, x, 0);
    k->N = g->N, k->C = g->C, k->HW = g->H * g->W;
}
static void run_maxpool_fwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->maxpool_fwd(c, &k->pg, F(0), F(1), I32(2));
}
static void run_maxpool_bwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->maxpool_fwd(c, &k->pg, F(0), F(1), I32(2));
    c->be->maxpool_bwd(c, &k->pg, I32(2), F(3), F(4));
}
static void run_avgpool_fwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->avgpool_fwd(c, &k->pg, F(0), F(1));
}
static void run_avgpool_bwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->avgpool_bwd(c, &k->pg, F(3), F(4));
}
/* global average pool over the same x: y and dy are the first N·C of theirs */
static void run_gap_fwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->gap_fwd(c, F(0), F(1), k->N, k->C, k->HW);
}
static void run_gap_bwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->gap_bwd(c, F(3), F(4), k->N, k->C, k->HW);
}

/* batch norm: x, gamma, beta, y, save, run_mean, run_var, dy, dx, dgamma, dbeta */
static void mk_bn(kcase *k, nn_rng *r)
{
    k->N = rnd(r, 2, 6), k->C = rnd(r, 1, 6), k->HW = rnd(r, 1, 12);
    size_t x = (size_t)k->N * k->C * k->HW, C = (size_t)k->C;
    add(k, F_IN, x, 0);
    add(k, F_POS, C, 0);
    add(k, F_IN, C, 0);
    add(k, F_OUT, x, 0);
    add(k, F_OUT, 2 * C, 0);
    add(k, F_ACC, C, 0);
    add(k, F_POS, C, 0); /* run_var: positive, updated */
    add(k, F_IN, x, 0);
    add(k, F_ACC, x, 0);
    add(k, F_ACC, C, 0);
    add(k, F_ACC, C, 0);

    k->p = 0.1f, k->eps = 1e-5f;
}
static void run_bn_train(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->bn_fwd_train(c, F(0), F(1), F(2), F(3), F(4), F(5), F(6), k->p, k->eps, k->N, k->C, k->HW);
}
static void run_bn_infer(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->bn_fwd_infer(c, F(0), F(1), F(2), F(5), F(6), F(3), k->eps, k->N, k->C, k->HW);
}
static void run_bn_bwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->bn_fwd_train(c, F(0), F(1), F(2), F(3), F(4), F(5), F(6), k->p, k->eps, k->N, k->C, k->HW);
    c->be->bn_bwd(c, F(0), F(1), F(4), F(7), F(8), F(9), F(10), k->N, k->C, k->HW);
}

/* element-wise: a, b, y, dy, dx, mask */
static void mk_elem(kcase *k, nn_rng *r)
{
    k->n = (size_t)rnd(r, 1, 5000);
    add(k, F_IN, k->n, 0);
    add(k, F_IN, k->n, 0);
    add(k, F_OUT, k->n, 0);
    add(k, F_IN, k->n, 0);
    add(k, F_ACC, k->n, 0);
    add(k, U8_OUT, k->n, 0);
    k->p = (float)(nn_rng_unit(r) * 0.9);
    k->seed = nn_rng_next(r);
}
static void run_relu_fwd(const nn_ctx *c, void *const *p, const kcase *k) { c->be->relu_fwd(c, F(0), F(2), k->n); }
static void run_relu_bwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->relu_bwd(c, F(0), F(3), F(4), k->n);
}
static void run_add(const nn_ctx *c, void *const *p, const kcase *k) { c->be->add_fwd(c, F(0), F(1), F(2), k->n); }
static void run_acc(const nn_ctx *c, void *const *p, const kcase *k) { c->be->acc(c, F(3), F(4), k->n); }
static void run_dropout_fwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->dropout_fwd(c, F(0), F(2), P(5), k->p, k->seed, 0, k->n);
}
static void run_dropout_bwd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->dropout_fwd(c, F(0), F(2), P(5), k->p, k->seed, 0, k->n);
    c->be->dropout_bwd(c, P(5), F(3), F(4), k->p, k->n);
}
static void run_memset(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->memset(c, F(4), 0, k->n / 2 * sizeof(float));
}

/* uint8 input: raw rows, the tables, y; k->p > 0.5 stores channels last */
static void mk_u8(kcase *k, nn_rng *r)
{
    k->N = rnd(r, 1, 6), k->C = rnd(r, 1, 4), k->HW = rnd(r, 1, 200);
    size_t n = (size_t)k->N * k->C * k->HW;
    add(k, U8_IN, n, 0);
    add(k, F_IN, (size_t)k->C * 256, 0);
    add(k, F_OUT, n, 0);
    k->p = (float)nn_rng_unit(r);
}
static void run_u8(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->u8_normalize(c, P(0), F(1), F(2), k->N, k->C, k->HW, k->p > 0.5f);
}

/* the loss and the metrics: logits, labels, dlogits, metrics, w, acc */
static void mk_loss(kcase *k, nn_rng *r)
{
    k->N = rnd(r, 1, 20), k->K = rnd(r, 2, 12);
    k->n = (size_t)rnd(r, 1, 3000);
    add(k, F_IN, (size_t)k->N * k->K, 0);
    add(k, I_IN, (size_t)k->N, k->K);
    add(k, F_OUT, (size_t)k->N * k->K, 0);
    add(k, MET_OUT, 1, 0);
    add(k, F_IN, k->n, 0);
    add(k, ACC_IO, 1, 0);
    add(k, MET_IN, 1, 0);
    k->dl2 = rnd(r, 0, 1) ? 1e-3 : 0;
    k->t = rnd(r, 0, 100);
}
static void run_xent(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->softmax_xent(c, F(0), I32(1), F(2), k->N, k->K, P(3));
    c->be->sumsq(c, F(4), k->n, &((nn_step_metrics *)P(3))->sumsq);
}
static void run_fold(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->metrics_fold(c, P(6), P(5), k->N, k->dl2, k->t);
    c->be->metrics_fold(c, P(6), P(5), k->N + 1, k->dl2, k->t + 1);
}

/* dense steps: w, g, m (buf), v */
static void mk_step(kcase *k, nn_rng *r)
{
    k->n = (size_t)rnd(r, 1, 3000);
    add(k, F_ACC, k->n, 0);
    add(k, F_IN, k->n, 0);
    add(k, F_ACC, k->n, 0);
    add(k, F_POS, k->n, 0);
    k->lr = 0.01f, k->mom = rnd(r, 0, 1) ? 0.9f : 0.0f, k->l2 = rnd(r, 0, 1) ? 0.01f : 0.0f;
    k->b1 = 0.9f, k->b2 = 0.999f, k->eps = 1e-8f, k->t = rnd(r, 1, 5);
}
static void run_sgd(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->sgd_step(c, F(0), F(1), F(2), k->n, k->lr, k->mom, k->l2);
}
static void run_adam(const nn_ctx *c, void *const *p, const kcase *k)
{
    c->be->adam_step(c, F(0), F(1), F(2), F(3), k->n, k->lr, k->b1, k->b2, k->eps, k->l2, k->t);
}

/* Tolerances: 0 where every device computes the same operations in the same
 * order (element-wise, masks, winners, scatter of one writer); otherwise a
 * bound for sums a library may order differently (GEMM, reductions): a sum
 * of n float32 products carries about sqrt(n)·2^-24 of its largest terms
 * in rounding, 1e-6 relative at the random shapes' n, up to ~1e-5 at the
 * study's 25088-term filter gradients. */
static const kop ops[] = {
    {"linear forward", 1e-5, mk_linear, run_linear_fwd, NULL},
    {"linear backward", 1e-5, mk_linear, run_linear_bwd, NULL},
    {"sparse plan + sparse linear forward", 1e-6, mk_sparse, run_sparse_fwd, scratch_plan},
    {"sparse linear backward (dense scatter)", 1e-6, mk_sparse, run_sparse_bwd, scratch_plan},
    {"sparse linear backward (packed rows)", 1e-6, mk_sparse, run_sparse_bwd_rows, scratch_plan},
    {"sparse plan rows", 0, mk_sparse, run_sparse_plan_rows, scratch_plan},
    {"sgd step over plan rows", 1e-6, mk_sparse, run_sgd_rows, scratch_plan},
    {"adam step over plan rows", 1e-6, mk_sparse, run_adam_rows, scratch_plan},
    {"lazy adam step", 1e-6, mk_sparse, run_lazy_adam, scratch_plan},
    {"conv2d forward", 1e-5, mk_conv, run_conv_fwd, scratch_conv},
    {"conv2d backward", 1e-5, mk_conv, run_conv_bwd, scratch_conv},
    {"max-pool forward", 0, mk_pool, run_maxpool_fwd, NULL},
    {"max-pool backward", 1e-6, mk_pool, run_maxpool_bwd, NULL},
    {"average-pool forward", 1e-6, mk_pool, run_avgpool_fwd, NULL},
    {"average-pool backward", 1e-6, mk_pool, run_avgpool_bwd, NULL},
    {"global average pool forward", 1e-6, mk_pool, run_gap_fwd, NULL},
    {"global average pool backward", 1e-6, mk_pool, run_gap_bwd, NULL},
    {"batch norm forward (training)", 1e-5, mk_bn, run_bn_train, NULL},
    {"batch norm forward (inference)", 1e-6, mk_bn, run_bn_infer, NULL},
    {"batch norm backward", 1e-5, mk_bn, run_bn_bwd, NULL},
    {"relu forward", 0, mk_elem, run_relu_fwd, NULL},
    {"relu backward", 0, mk_elem, run_relu_bwd, NULL},
    {"add", 0, mk_elem, run_add, NULL},
    {"accumulate", 0, mk_elem, run_acc, NULL},
    {"dropout forward (mask)", 0, mk_elem, run_dropout_fwd, NULL},
    {"dropout backward", 0, mk_elem, run_dropout_bwd, NULL},
    {"memset", 0, mk_elem, run_memset, NULL},
    {"uint8 normalisation (channels first and last)", 0, mk_u8, run_u8, NULL},
    {"softmax cross-entropy and sum of squares", 1e-6, mk_loss, run_xent, NULL},
    {"metrics fold", 1e-12, mk_loss, run_fold, NULL},
    {"sgd step", 1e-6, mk_step, run_sgd, NULL},
    {"adam step", 1e-6, mk_step, run_adam, NULL},
};

/* Checked on a device backend only: the CPU against itself proves nothing
 * more on these, and they are its slowest shapes. */
static const kop device_ops[] = {
    {"conv2d forward, study shapes at 112x112", 5e-5, mk_conv_study, run_conv_fwd, scratch_conv},
    {"conv2d backward, study shapes at 112x112", 5e-5, mk_conv_study, run_conv_bwd, scratch_conv},
};

/* The table has every entry filled: a backend that leaves one NULL would
 * crash the first model that needs it.  The graph entries are optional,
 * all three or none. */
static int complete(const nn_backend *be)
{
    void (*const *f)(void) = (void (*const *)(void))(const void *)&be->ctx_init;
    size_t n = (offsetof(nn_backend, graph_begin) - offsetof(nn_backend, ctx_init)) / sizeof *f;
    for (size_t i = 0; i < n; i++)
        if (!f[i])
            return 0;
    int graphs = !!be->graph_begin + !!be->graph_end + !!be->graph_counts;
    return (graphs == 0 || graphs == 3) && offsetof(nn_backend, graph_counts) + sizeof f[0] == sizeof *be;
}

/* Two wrong entries the harness must catch: a relu that returns x + x,
 * a linear layer that forgets its bias (both made of correct CPU entries, so
 * they run in the guard build too). */
static void bad_relu(const nn_ctx *c, const float *x, float *y, size_t n)
{
    nn_backend_cpu.add_fwd(c, x, x, y, n);
}

static void bad_linear(const nn_ctx *c, const float *x, const float *w, const float *b, float *y, int N, int D, int O)
{
    (void)b;
    nn_backend_cpu.linear_fwd(c, x, w, NULL, y, N, D, O);
}

static void check_harness(void)
{
    nn_backend bad = nn_backend_cpu;
    bad.name = "cpu with a wrong relu and linear";
    bad.relu_fwd = bad_relu;
    bad.linear_fwd = bad_linear;
    double w1 = 0, w2 = 0;
    const kop *relu = NULL, *linear = NULL;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        if (strcmp(ops[i].name, "relu forward") == 0)
            relu = &ops[i];
        if (strcmp(ops[i].name, "linear forward") == 0)
            linear = &ops[i];
    }
    int relu_caught = relu && !agrees(&bad, relu, 7, &w1), linear_caught = linear && !agrees(&bad, linear, 7, &w2);
    int caught = relu_caught && linear_caught;
    ok(caught,
       "the harness catches a wrong entry: a relu that returns x + x (error %.1e), a linear that drops its bias "
       "(error %.1e)", w1, w2);
}

#ifdef NN_GUARD
/* The guard build's promise: a host read of device memory outside the
 * backend faults, while the backend's own copy of it works. */
static void check_guard(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        nn_ctx c;
        cds_err err;
        float one = 1.0f, back = 0;
        if (nn_ctx_init(&c, NN_CPU, &err) != 0)
            _exit(2);
        float *p = nn_ctx_alloc(&c, 4096);
        if (!p)
            _exit(2);
        nn_ctx_from_host(&c, p, &one, sizeof one);
        nn_ctx_to_host(&c, &back, p, sizeof back);
        if (back != 1.0f)
            _exit(3);
        volatile float *v = p;
        _exit(*v == 1.0f ? 0 : 4); /* must not get here */
    }
    int st = 0;
    waitpid(pid, &st, 0);
    ok(pid > 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
       "guard build: the backend's copies read device memory, a direct read from elsewhere faults (status %#x)", st);
}
#endif

int main(void)
{
#ifdef NN_GUARD
    check_guard();
#endif
    check_harness();
    const nn_backend *tested[2] = {&nn_backend_cpu};
    size_t n_tested = 1;
    nn_place dev;
    cds_err err;
    if (nn_place_pick("cuda:0", &dev, NULL, 0, &err) != 0)
        tap_skip("cuda: %s", err.msg);
    else
        tested[n_tested++] = nn_backend_cuda();
    for (size_t b = 0; b < n_tested; b++) {
        ok(complete(tested[b]), "%s: every entry of the table is filled", tested[b]->name);
        for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
            check(tested[b], &ops[i], 1000 + i);
        for (size_t i = 0; b > 0 && i < sizeof device_ops / sizeof *device_ops; i++)
            check(tested[b], &device_ops[i], 2000 + i);
    }
    return tap_done();
}
