/* nn_backend_cpu: the CPU reference backend, the table of nn_backend.h over
 * the kern_cpu_*.c kernels (nn_kern_cpu.h).
 *
 * Device memory is host memory here, so the table is thin: each entry calls
 * its kernel with the same arguments.  Three things are its own:
 *   - the sparse plan's buffer starts with the plan's descriptor
 *     (nn_sparse_plan, one 64-byte line), followed by the kernel's work, so
 *     nothing but the backend reads how many rows a batch touched;
 *   - a row-sparse gradient whose rows are the plan's (rg NULL, the model's
 *     backward) gets its row list from the plan here;
 *   - the loss, Σw² and the pass's sums are written into device records
 *     (nn_step_metrics, nn_pass_acc) in the order the trainer used to sum
 *     them on the host, so the figures are the same bit for bit.
 *
 * The guard build (-Dnn_guard=true, NN_GUARD) allocates every buffer as
 * whole pages, lists them in the context, and keeps them PROT_NONE except
 * while one of this table's entries runs (GUARD_OPEN / GUARD_CLOSE around
 * each): a read or write of device memory from anywhere else in the engine
 * faults at once.  Without NN_GUARD those two macros are empty and an entry
 * costs one indirect call more than the kernel. */
#include "nn_kern_cpu.h" /* first: cblas.h (through nn_par.h) brings <complex.h> and its I */
#include "nn_backend.h"
#include "nn_kern_shared.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "nn_par.h"

#define CPU_ALIGN 64
#define PLAN_HEAD 64 /* the plan's descriptor, at the start of its buffer */
_Static_assert(sizeof(nn_sparse_plan) <= PLAN_HEAD, "the sparse plan's descriptor outgrew its line");

#ifdef NN_GUARD
#include "nn_guard_cpu.h"
#define GUARD_OPEN(c) nn_guard_open((c)->guard)
#define GUARD_CLOSE(c) nn_guard_close((c)->guard)
#else
#define GUARD_OPEN(c) ((void)(c))
#define GUARD_CLOSE(c) ((void)(c))
#endif

/* ---------------------------------------------------------------- memory */

static int cpu_ctx_init(nn_ctx *c, cds_err *err)
{
    c->threads = nn_par_threads();
#ifdef NN_GUARD
    if (!(c->guard = nn_guard_new()))
        return cds_err_nomem(err, "out of memory for the guard list of the cpu backend");
#else
    (void)err;
#endif
    return 0;
}

static void cpu_ctx_release(nn_ctx *c)
{
#ifdef NN_GUARD
    nn_guard_free(c->guard);
#endif
    c->guard = NULL;
}

/* The CPU reports nothing later: a kernel cannot fail. */
static int cpu_check(const nn_ctx *c, cds_err *err)
{
    (void)c;
    (void)err;
    return 0;
}

static int cpu_mem(const nn_ctx *c, size_t *now, size_t *peak)
{
    (void)c;
    *now = *peak = 0;
    return -1;
}

/* Zeroed memory.  A large block is mapped (pages the kernel gives zeroed
 * and touches only when written, as calloc did for a sparse model's dense
 * gradient, which an optimiser frees unused); a small one is aligned heap.
 * Under AddressSanitizer every block comes from the heap, which it checks
 * and caps (max_allocation_size_mb), as it did before this seam. */
#if defined(__SANITIZE_ADDRESS__)
#define CPU_MAP_MIN SIZE_MAX
#else
#define CPU_MAP_MIN ((size_t)1 << 20) /* blocks this large are mapped, not taken from the heap */
#endif
static void *cpu_alloc(const nn_ctx *c, size_t bytes)
{
#ifdef NN_GUARD
    return nn_guard_alloc(c->guard, bytes);
#else
    (void)c;
    if (bytes >= CPU_MAP_MIN) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
    size_t size = (bytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    void *p = aligned_alloc(CPU_ALIGN, size);
    if (p)
        memset(p, 0, size);
    return p;
#endif
}

static void cpu_free(const nn_ctx *c, void *p, size_t bytes)
{
#ifdef NN_GUARD
    nn_guard_release(c->guard, p, bytes);
#else
    (void)c;
    if (bytes >= CPU_MAP_MIN)
        munmap(p, bytes);
    else
        free(p);
#endif
}

/* The CPU reads a batch where it is: plain heap memory. */
static void *cpu_host_alloc(const nn_ctx *c, size_t bytes)
{
    (void)c;
    return malloc(bytes);
}

static void cpu_host_free(const nn_ctx *c, void *p, size_t bytes)
{
    (void)c;
    (void)bytes;
    free(p);
}

static void cpu_memset(const nn_ctx *c, void *p, int v, size_t bytes)
{
    GUARD_OPEN(c);
    memset(p, v, bytes);
    GUARD_CLOSE(c);
}

static void cpu_to_host(const nn_ctx *c, void *host, const void *src, size_t bytes)
{
    GUARD_OPEN(c);
    memcpy(host, src, bytes);
    GUARD_CLOSE(c);
}

static void cpu_from_host(const nn_ctx *c, void *dst, const void *host, size_t bytes)
{
    GUARD_OPEN(c);
    memcpy(dst, host, bytes);
    GUARD_CLOSE(c);
}

/* The host's batch is already in the CPU's memory: the ops read it where it
 * is (a 256 x 7306 dense batch is 7.5 MB, a copy of which cost 4 % of a
 * confA step).  The guard build copies, as a device would, so that its
 * runs take the path a GPU takes. */
static const void *cpu_stage(const nn_ctx *c, void *dst, const void *host, size_t bytes)
{
#ifdef NN_GUARD
    cpu_from_host(c, dst, host, bytes);
    return dst;
#else
    (void)c;
    (void)dst;
    (void)bytes;
    return host;
#endif
}

/* ------------------------------------------------------- workspace sizes */

static size_t cpu_conv2d_work(const nn_ctx *c, const nn_conv_geom *g)
{
    (void)c;
    return nn_cpu_conv2d_work(g) * sizeof(float);
}

static size_t cpu_sparse_plan_work(const nn_ctx *c, int N, int K)
{
    (void)c;
    return PLAN_HEAD + nn_cpu_sparse_plan_work(N, K);
}

/* ------------------------------------------------------------ operations */

static void cpu_linear_fwd(const nn_ctx *c, const float *x, const float *w, const float *b, float *y, int N, int D,
                           int O)
{
    GUARD_OPEN(c);
    nn_cpu_linear_fwd(x, w, b, y, N, D, O);
    GUARD_CLOSE(c);
}

static void cpu_linear_bwd(const nn_ctx *c, const float *x, const float *w, const float *dy, float *dx, float *dw,
                           float *db, int N, int D, int O)
{
    GUARD_OPEN(c);
    nn_cpu_linear_bwd(x, w, dy, dx, dw, db, N, D, O);
    GUARD_CLOSE(c);
}

static void cpu_sparse_plan(const nn_ctx *c, const int32_t *idx, int N, int K, int dim, void *plan)
{
    GUARD_OPEN(c);
    nn_cpu_sparse_plan(plan, idx, N, K, dim, (char *)plan + PLAN_HEAD);
    GUARD_CLOSE(c);
}

static void cpu_sparse_linear_fwd(const nn_ctx *c, const void *plan, const float *w, const float *b, float *y, int N,
                                  int O)
{
    GUARD_OPEN(c);
    nn_cpu_sparse_linear_fwd_rows(plan, w, b, y, N, O);
    GUARD_CLOSE(c);
}

static void cpu_sparse_linear_bwd(const nn_ctx *c, const int32_t *idx, const float *dy, float *dw, float *db, int N,
                                  int K, int O)
{
    GUARD_OPEN(c);
    nn_cpu_sparse_linear_bwd(idx, dy, dw, db, N, K, O);
    GUARD_CLOSE(c);
}

static size_t cpu_sparse_plan_rows(const nn_ctx *c, const void *plan, int32_t *rows)
{
    GUARD_OPEN(c);
    size_t n = nn_cpu_sparse_plan_rows(plan, rows);
    GUARD_CLOSE(c);
    return n;
}

static void cpu_sparse_linear_bwd_rows(const nn_ctx *c, const void *plan, const float *dy, float *rg, float *db,
                                       int N, int O)
{
    GUARD_OPEN(c);
    nn_cpu_sparse_linear_bwd_rows(plan, dy, rg, db, N, O);
    GUARD_CLOSE(c);
}

static void cpu_conv2d_fwd(const nn_ctx *c, const nn_conv_geom *g, const float *x, const float *w, const float *b,
                           float *y, void *work)
{
    GUARD_OPEN(c);
    nn_cpu_conv2d_fwd(g, x, w, b, y, work);
    GUARD_CLOSE(c);
}

static void cpu_conv2d_bwd(const nn_ctx *c, const nn_conv_geom *g, const float *x, const float *w, const float *dy,
                           float *dx, float *dw, float *db, void *work)
{
    GUARD_OPEN(c);
    nn_cpu_conv2d_bwd(g, x, w, dy, dx, dw, db, work);
    GUARD_CLOSE(c);
}

static void cpu_maxpool_fwd(const nn_ctx *c, const nn_pool_geom *g, const float *x, float *y, int32_t *argmax)
{
    GUARD_OPEN(c);
    nn_cpu_maxpool_fwd(g, x, y, argmax);
    GUARD_CLOSE(c);
}

static void cpu_maxpool_bwd(const nn_ctx *c, const nn_pool_geom *g, const int32_t *argmax, const float *dy,
                            float *dx)
{
    GUARD_OPEN(c);
    nn_cpu_maxpool_bwd(g, argmax, dy, dx);
    GUARD_CLOSE(c);
}

static void cpu_avgpool_fwd(const nn_ctx *c, const nn_pool_geom *g, const float *x, float *y)
{
    GUARD_OPEN(c);
    nn_cpu_avgpool_fwd(g, x, y);
    GUARD_CLOSE(c);
}

static void cpu_avgpool_bwd(const nn_ctx *c, const nn_pool_geom *g, const float *dy, float *dx)
{
    GUARD_OPEN(c);
    nn_cpu_avgpool_bwd(g, dy, dx);
    GUARD_CLOSE(c);
}

static void cpu_gap_fwd(const nn_ctx *c, const float *x, float *y, int N, int C, int HW)
{
    GUARD_OPEN(c);
    nn_cpu_gap_fwd(x, y, N, C, HW);
    GUARD_CLOSE(c);
}

static void cpu_gap_bwd(const nn_ctx *c, const float *dy, float *dx, int N, int C, int HW)
{
    GUARD_OPEN(c);
    nn_cpu_gap_bwd(dy, dx, N, C, HW);
    GUARD_CLOSE(c);
}

static void cpu_bn_fwd_train(const nn_ctx *c, const float *x, const float *gamma, const float *beta, float *y,
                             float *save, float *run_mean, float *run_var, float momentum, float eps, int N, int C,
                             int HW)
{
    GUARD_OPEN(c);
    nn_cpu_bn_fwd_train(x, gamma, beta, y, save, save + C, run_mean, run_var, momentum, eps, N, C, HW);
    GUARD_CLOSE(c);
}

static void cpu_bn_fwd_infer(const nn_ctx *c, const float *x, const float *gamma, const float *beta,
                             const float *run_mean, const float *run_var, float *y, float eps, int N, int C, int HW)
{
    GUARD_OPEN(c);
    nn_cpu_bn_fwd_infer(x, gamma, beta, run_mean, run_var, y, eps, N, C, HW);
    GUARD_CLOSE(c);
}

static void cpu_bn_bwd(const nn_ctx *c, const float *x, const float *gamma, const float *save, const float *dy,
                       float *dx, float *dgamma, float *dbeta, int N, int C, int HW)
{
    GUARD_OPEN(c);
    nn_cpu_bn_bwd(x, gamma, save, save + C, dy, dx, dgamma, dbeta, N, C, HW);
    GUARD_CLOSE(c);
}

static void cpu_relu_fwd(const nn_ctx *c, const float *x, float *y, size_t n)
{
    GUARD_OPEN(c);
    nn_cpu_relu_fwd(x, y, n);
    GUARD_CLOSE(c);
}

static void cpu_relu_bwd(const nn_ctx *c, const float *y, const float *dy, float *dx, size_t n)
{
    GUARD_OPEN(c);
    nn_cpu_relu_bwd(y, dy, dx, n);
    GUARD_CLOSE(c);
}

static void cpu_add_fwd(const nn_ctx *c, const float *a, const float *b, float *y, size_t n)
{
    GUARD_OPEN(c);
    nn_cpu_add_fwd(a, b, y, n);
    GUARD_CLOSE(c);
}

static void cpu_acc(const nn_ctx *c, const float *dy, float *dx, size_t n)
{
    GUARD_OPEN(c);
    nn_cpu_acc(dy, dx, n);
    GUARD_CLOSE(c);
}

static void cpu_dropout_fwd(const nn_ctx *c, const float *x, float *y, uint8_t *mask, float p, uint64_t seed,
                            uint64_t first, size_t n)
{
    GUARD_OPEN(c);
    nn_cpu_dropout_fwd_at(x, y, mask, p, seed, first, n);
    GUARD_CLOSE(c);
}

static void cpu_dropout_bwd(const nn_ctx *c, const uint8_t *mask, const float *dy, float *dx, float p, size_t n)
{
    GUARD_OPEN(c);
    nn_cpu_dropout_bwd(mask, dy, dx, p, n);
    GUARD_CLOSE(c);
}

static void cpu_u8_normalize(const nn_ctx *c, const uint8_t *raw, const float *lut, float *y, int n, int C, int64_t P,
                             int channels_last)
{
    GUARD_OPEN(c);
    nn_cpu_u8_normalize(raw, lut, y, n, C, P, channels_last);
    GUARD_CLOSE(c);
}

static void cpu_softmax_xent(const nn_ctx *c, const float *logits, const int32_t *labels, float *dlogits, int N,
                             int K, nn_step_metrics *m)
{
    GUARD_OPEN(c);
    int top1 = 0, top5 = 0;
    m->xent = nn_cpu_softmax_xent(logits, labels, dlogits, N, K, &top1, &top5);
    m->top1 = top1;
    m->top5 = top5;
    m->sumsq = 0;
    GUARD_CLOSE(c);
}

static void cpu_sumsq(const nn_ctx *c, const float *w, size_t n, double *acc)
{
    GUARD_OPEN(c);
    *acc += nn_cpu_sumsq(w, n);
    GUARD_CLOSE(c);
}

static void cpu_metrics_fold(const nn_ctx *c, const nn_step_metrics *m, nn_pass_acc *acc, int n, double l2,
                             int64_t step)
{
    GUARD_OPEN(c);
    nn_metrics_fold_one(m, acc, n, l2, step);
    GUARD_CLOSE(c);
}

static void cpu_sgd_step(const nn_ctx *c, float *w, const float *g, float *buf, size_t n, float lr, float momentum,
                         float l2)
{
    GUARD_OPEN(c);
    nn_cpu_sgd_step(w, g, buf, n, lr, momentum, l2);
    GUARD_CLOSE(c);
}

static void cpu_adam_step(const nn_ctx *c, float *w, const float *g, float *m, float *v, size_t n, float lr,
                          float beta1, float beta2, float eps, float l2, long t)
{
    GUARD_OPEN(c);
    nn_cpu_adam_step(w, g, m, v, n, lr, beta1, beta2, eps, l2, t);
    GUARD_CLOSE(c);
}

/* The model's backward leaves the row list to the plan (rg NULL): the
 * kernels take it spelled out. */
static nn_row_grad rows_of(const nn_row_grad *g)
{
    nn_row_grad r = *g;
    if (r.plan) {
        r.rows = r.plan->rows;
        r.n_rows = r.plan->n_rows;
    }
    return r;
}

static void cpu_sgd_rows_step(const nn_ctx *c, float *w, const nn_row_grad *g, size_t n_total, size_t cols,
                              float *buf, float lr, float momentum, float l2)
{
    GUARD_OPEN(c);
    nn_row_grad r = rows_of(g);
    nn_cpu_sgd_rows_step(w, &r, n_total, cols, buf, lr, momentum, l2);
    GUARD_CLOSE(c);
}

static void cpu_adam_rows_step(const nn_ctx *c, float *w, const nn_row_grad *g, size_t n_total, size_t cols,
                               float *m, float *v, float lr, float beta1, float beta2, float eps, float l2, long t)
{
    GUARD_OPEN(c);
    nn_row_grad r = rows_of(g);
    nn_cpu_adam_rows_step(w, &r, n_total, cols, m, v, lr, beta1, beta2, eps, l2, t);
    GUARD_CLOSE(c);
}

static void cpu_lazy_adam_step(const nn_ctx *c, float *w, const nn_row_grad *g, size_t cols, float *m, float *v,
                               float lr, float beta1, float beta2, float eps, float l2, long t)
{
    GUARD_OPEN(c);
    nn_row_grad r = rows_of(g);
    nn_cpu_lazy_adam_step(w, &r, cols, m, v, lr, beta1, beta2, eps, l2, t);
    GUARD_CLOSE(c);
}

const nn_backend nn_backend_cpu = {
    .name = "cpu",
    .dev = NN_CPU,
    .ctx_init = cpu_ctx_init,
    .ctx_release = cpu_ctx_release,
    .check = cpu_check,
    .mem = cpu_mem,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .memset = cpu_memset,
    .to_host = cpu_to_host,
    .from_host = cpu_from_host,
    .stage = cpu_stage,
    .conv2d_work = cpu_conv2d_work,
    .sparse_plan_work = cpu_sparse_plan_work,
    .linear_fwd = cpu_linear_fwd,
    .linear_bwd = cpu_linear_bwd,
    .sparse_plan = cpu_sparse_plan,
    .sparse_linear_fwd = cpu_sparse_linear_fwd,
    .sparse_linear_bwd = cpu_sparse_linear_bwd,
    .sparse_plan_rows = cpu_sparse_plan_rows,
    .sparse_linear_bwd_rows = cpu_sparse_linear_bwd_rows,
    .conv2d_fwd = cpu_conv2d_fwd,
    .conv2d_bwd = cpu_conv2d_bwd,
    .maxpool_fwd = cpu_maxpool_fwd,
    .maxpool_bwd = cpu_maxpool_bwd,
    .avgpool_fwd = cpu_avgpool_fwd,
    .avgpool_bwd = cpu_avgpool_bwd,
    .gap_fwd = cpu_gap_fwd,
    .gap_bwd = cpu_gap_bwd,
    .bn_fwd_train = cpu_bn_fwd_train,
    .bn_fwd_infer = cpu_bn_fwd_infer,
    .bn_bwd = cpu_bn_bwd,
    .relu_fwd = cpu_relu_fwd,
    .relu_bwd = cpu_relu_bwd,
    .add_fwd = cpu_add_fwd,
    .acc = cpu_acc,
    .dropout_fwd = cpu_dropout_fwd,
    .dropout_bwd = cpu_dropout_bwd,
    .u8_normalize = cpu_u8_normalize,
    .softmax_xent = cpu_softmax_xent,
    .sumsq = cpu_sumsq,
    .metrics_fold = cpu_metrics_fold,
    .sgd_step = cpu_sgd_step,
    .adam_step = cpu_adam_step,
    .sgd_rows_step = cpu_sgd_rows_step,
    .adam_rows_step = cpu_adam_rows_step,
    .lazy_adam_step = cpu_lazy_adam_step,
};
