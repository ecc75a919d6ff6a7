/* nn_backend_cuda: the CUDA backend, the table of nn_backend.h over cuBLAS,
 * cuDNN and the kernels of kern_cuda_*.cu.
 *
 * A context is one device, one compute stream and one copy stream, a cuBLAS
 * and a cuDNN handle bound to the compute stream, and what the table keeps
 * between calls: the convolution plans, the convolution workspace, the
 * input staging buffers, and the first error.  Every op only enqueues work
 * on the compute stream; the host waits for the device in to_host alone
 * (and in sparse_plan_rows, whose count is a host value), so a training
 * step runs without a synchronisation and the trainer's once-a-second read
 * of the pass's sums is the only regular wait.
 *
 * Errors.  Entries return nothing (nn_backend.h): the first failing launch
 * or library call is kept in the context with what failed, later entries
 * still run (their results are garbage, and that is fine: nothing is
 * trusted until the trainer calls nn_ctx_check, which reports the first
 * error as one line and fails the pass or the save), as a stream keeps its
 * first error.
 *
 * Precision.  float32 everywhere.  cuBLAS runs its default math, which for
 * float32 GEMMs is exact float32; cuDNN's default math lets float32
 * convolutions use TF32, so every convolution descriptor is set to
 * CUDNN_FMA_MATH, and only a train spec with "tf32": true (nn_ctx.tf32)
 * switches cuBLAS to CUBLAS_TF32_TENSOR_OP_MATH and cuDNN to its default.
 *
 * Convolutions.  The first call for a geometry (batch, shape, stride, pad,
 * math) asks cuDNN to time every algorithm of each direction
 * (cudnnFind*Algorithm) and keeps the fastest deterministic one that obeys
 * the math above, with its descriptors, in the context's plan list; a batch
 * of another size (a pass's short last batch) gets a plan of its own.  One
 * workspace serves every convolution of the context: it grows to the
 * largest plan's need and is reused.  Deterministic algorithms only, so a
 * step repeated on the same device and plan gives the same bits; which
 * algorithm wins is measured, so two processes may choose differently
 * (docs/engine-backend.md: GPU replays are bit-identical per process).
 * The choices are kept for the process too (algo_cache below), so a
 * worker's next visit, whose model is a new context, does not measure
 * again: the one state here shared by contexts, guarded by a mutex and
 * only ever appended to (as PyTorch keeps cudnn.benchmark's choices).
 *
 * Input.  stage() keeps, per destination buffer (the model's input, labels,
 * sparse indices), two device buffers used in turn: the batch goes to the
 * device on the copy stream, which waits until the step that last read
 * that device buffer is done, and the compute stream waits for the copy.
 * A batch in pinned memory of this context's (host_alloc: the trainer's
 * data loader builds its batches there) is copied from where it is, and
 * stage() waits for that copy before it returns the host buffer to the
 * loader; any other batch is first copied by the host into one of two
 * pinned buffers of the slot's while the device still runs the previous
 * step.  stage() returns the device buffer, which the ops queued before
 * the next stage() for the same destination may read (nn_backend.h allows
 * a backend to return its own buffer).
 *
 * Graphs.  graph_begin/graph_end bracket a training step the trainer asks
 * to have graphed (the train spec's "cuda_graphs"); cuda_graph.cu keeps the
 * graphs and says when a step is captured or replayed.  Every entry that
 * enqueues work names itself to it first (GRAPHED below): in a replay the
 * graph already holds the op and the entry returns; the kernels with
 * per-step values get the step's values block (graph_vars).  Entries that
 * a graph cannot hold (copies to or from the host, staging, the sparse
 * plan's row count) spoil a graphed step, and freeing memory drops the
 * graphs, whose pointers it may leave stale. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_graph.h"
#include "kern_cuda.h"

#define STAGE_SLOTS 4 /* destinations staged per context: input, labels, indices, one spare */
#define PINNED_MAX 16 /* pinned host allocations a context tracks (a loader's buffers) */
#define BLAS_WORK ((size_t)32 << 20) /* cuBLAS's workspace: what it asks for on Hopper */

typedef struct conv_plan {
    nn_conv_geom g; /* N..pad: the key (OH, OW follow; threads and taps are ignored) */
    int tf32;
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    cudnnMathType_t m_fwd, m_data, m_filter;
    size_t work;
} conv_plan;

typedef struct stage_slot {
    const void *dst; /* the destination this slot stands in for; NULL: free */
    size_t cap;
    void *pin[2], *dev[2]; /* pin: made when a batch from unpinned memory first needs it */
    cudaEvent_t copied[2], freed[2];
    int next;
} stage_slot;

typedef struct cuda_ctx {
    int device;
    cudaStream_t stream, copy;
    cublasHandle_t blas;
    void *blas_work;        /* cuBLAS's workspace (BLAS_WORK bytes), the context's own */
    cudnnHandle_t dnn;
    int blas_tf32;          /* the math mode cuBLAS is in */
    int failed;
    char why[320];          /* the first error */
    void *work;
    size_t work_bytes;
    double *red;            /* batch norm's partial sums (cuk_bn_scratch), grown as needed */
    size_t red_n;
    conv_plan *plans;
    size_t n_plans, cap_plans;
    stage_slot slots[STAGE_SLOTS];
    struct {
        const char *p;
        size_t bytes;
    } pinned[PINNED_MAX]; /* host_alloc's, for stage() to recognise */
    size_t bytes_now, bytes_peak; /* device memory this context holds */
    cug_cache *graphs;            /* made by the first graphed step */
} cuda_ctx;

static cuda_ctx *X(const nn_ctx *c)
{
    return (cuda_ctx *)c->handles;
}

/* The context's stream, with its device made the calling thread's (CUDA's
 * current device is per thread, and a data-parallel reducer copies from a
 * thread of its own); a no-op costing nanoseconds when it already is. */
static cudaStream_t S(const nn_ctx *c)
{
    cudaSetDevice(X(c)->device);
    return X(c)->stream;
}

/* ---------------------------------------------------------------- errors */

static void fail_msg(cuda_ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_msg(cuda_ctx *x, const char *fmt, ...)
{
    if (x->failed)
        return;
    x->failed = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->why, sizeof x->why, fmt, ap);
    va_end(ap);
}

/* Keeps the first CUDA error; returns 1 when e is one. */
static int rec(const nn_ctx *c, cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 0;
    fail_msg(X(c), "%s: %s", what, cudaGetErrorString(e));
    return 1;
}

static int rec_blas(const nn_ctx *c, cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    fail_msg(X(c), "%s: cuBLAS %s", what, cublasGetStatusString(s));
    return 1;
}

static int rec_dnn(const nn_ctx *c, cudnnStatus_t s, const char *what)
{
    if (s == CUDNN_STATUS_SUCCESS)
        return 0;
    fail_msg(X(c), "%s: cuDNN %s", what, cudnnGetErrorString(s));
    return 1;
}

/* ---------------------------------------------------------------- graphs */

/* An op of a graphed step (cuda_graph.h's cug_op): 1 when the entry must
 * enqueue nothing. */
static int graph_op(const nn_ctx *c, unsigned site, uint64_t a, uint64_t b)
{
    cug_cache *g = X(c)->graphs;
    return g && cug_op(g, site, a, b, 0);
}

/* The values block of a graphed step for a kernel with per-step values
 * (NULL when the step is eager). */
static cuk_vars *graph_vars(const nn_ctx *c, unsigned site, uint64_t a, uint64_t b)
{
    cug_cache *g = X(c)->graphs;
    if (!g)
        return NULL;
    cug_op(g, site, a, b, 1);
    return cug_vars(g);
}

#define GRAPHED(c, a, b)                                                                                              \
    do {                                                                                                              \
        if (graph_op((c), __LINE__, (uint64_t)(uintptr_t)(a), (uint64_t)(b)))                                        \
            return;                                                                                                   \
    } while (0)
#define GRAPH_VARS(c, a, b) graph_vars((c), __LINE__, (uint64_t)(uintptr_t)(a), (uint64_t)(b))

/* What a graphed step may not contain. */
static void graph_forbid(const nn_ctx *c, const char *what)
{
    if (X(c)->graphs)
        cug_spoil(X(c)->graphs, what);
}

/* Memory freed or moved: graphs holding its address are dropped. */
static void graph_moved(const nn_ctx *c, const char *what)
{
    if (X(c)->graphs)
        cug_moved(X(c)->graphs, what);
}

static int cuda_graph_begin(const nn_ctx *c, uint64_t key)
{
    cuda_ctx *x = X(c);
    if (x->failed)
        return CUG_EAGER;
    if (!x->graphs && !(x->graphs = cug_new())) {
        fail_msg(x, "out of memory for CUDA graphs");
        return CUG_EAGER;
    }
    cudaError_t e = cudaSuccess;
    cug_mode m = cug_begin(x->graphs, S(c), key, &e);
    rec(c, e, "beginning a CUDA graph");
    return (int)m;
}

static int cuda_graph_end(const nn_ctx *c, int ok)
{
    cuda_ctx *x = X(c);
    char why[320];
    if (!x->graphs)
        return ok ? 0 : -1;
    if (cug_end(x->graphs, S(c), ok, why, sizeof why) == 0)
        return 0;
    if (why[0])
        fail_msg(x, "%s", why);
    return -1;
}

static void cuda_graph_counts(const nn_ctx *c, long *captured, long *replayed)
{
    *captured = *replayed = 0;
    if (X(c)->graphs)
        cug_counts(X(c)->graphs, captured, replayed);
}

static int cuda_mem(const nn_ctx *c, size_t *now, size_t *peak)
{
    *now = X(c)->bytes_now;
    *peak = X(c)->bytes_peak;
    return 0;
}

static int cuda_check(const nn_ctx *c, cds_err *err)
{
    cuda_ctx *x = X(c);
    if (!x->failed) {
        /* A kernel that faulted after its launch shows up here. */
        cudaError_t e = cudaStreamQuery(S(c));
        if (e == cudaErrorNotReady)
            cudaGetLastError(); /* not an error: the next launch's cudaGetLastError() must not see it */
        else if (e != cudaSuccess)
            rec(c, e, "the compute stream");
    }
    if (!x->failed)
        return 0;
    return cds_errf(err, "device cuda:%d failed: %s", x->device, x->why);
}

/* --------------------------------------------------------------- context */

static void stage_slots_free(cuda_ctx *x);
static void plans_free(cuda_ctx *x);

/* Everything a context holds, in the reverse order of making it; after
 * the device finished what was queued. */
static void ctx_destroy(cuda_ctx *x)
{
    /* The handles are the device's that was current when they were made:
     * release them with it current (the releasing thread may have another). */
    cudaSetDevice(x->device);
    if (x->stream)
        cudaStreamSynchronize(x->stream);
    if (x->copy)
        cudaStreamSynchronize(x->copy);
    cug_free(x->graphs);
    stage_slots_free(x);
    plans_free(x);
    if (x->work)
        cudaFree(x->work);
    if (x->red)
        cudaFree(x->red);
    if (x->dnn)
        cudnnDestroy(x->dnn);
    if (x->blas)
        cublasDestroy(x->blas);
    if (x->blas_work)
        cudaFree(x->blas_work);
    if (x->copy)
        cudaStreamDestroy(x->copy);
    if (x->stream)
        cudaStreamDestroy(x->stream);
    free(x);
}

static int cuda_ctx_init(nn_ctx *c, cds_err *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess)
        return cds_errf(err, "device cuda:%d: no CUDA device here (%s): use --device cpu or auto", c->index,
                        cudaGetErrorString(e));
    if (c->index < 0 || c->index >= n)
        return cds_errf(err, "device cuda:%d: this machine has %d CUDA device%s: name one of cuda:0..cuda:%d, or use "
                             "--device cpu", c->index, n, n == 1 ? "" : "s", n - 1);
    cuda_ctx *x = (cuda_ctx *)calloc(1, sizeof *x);
    if (!x)
        return cds_err_nomem(err, "out of memory for a cuda context");
    x->device = c->index;
    c->handles = x;
    if ((e = cudaSetDevice(x->device)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&x->copy, cudaStreamNonBlocking)) != cudaSuccess) {
        cds_errf(err, "device cuda:%d: %s", x->device, cudaGetErrorString(e));
        goto fail;
    }
    c->stream = x->stream;
    c->threads = 1;
    return 0;
fail:
    ctx_destroy(x);
    c->handles = NULL;
    return -1;
}

static void cuda_ctx_release(nn_ctx *c)
{
    if (c->handles)
        ctx_destroy(X(c));
    c->handles = NULL;
    c->stream = NULL;
}

/* ---------------------------------------------------------------- memory */

/* Zeroed device memory; NULL when the device has no room (that error is
 * not kept: the arena reports it, naming what did not fit). */
static void *cuda_alloc(const nn_ctx *c, size_t bytes)
{
    void *p = NULL;
    cuda_ctx *x = X(c);
    S(c);
    graph_moved(c, "device memory allocated inside the step");
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError(); /* out of memory is not sticky: clear it */
        return NULL;
    }
    if (rec(c, cudaMemsetAsync(p, 0, bytes, x->stream), "clearing new device memory")) {
        cudaFree(p);
        return NULL;
    }
    x->bytes_now += bytes;
    if (x->bytes_now > x->bytes_peak)
        x->bytes_peak = x->bytes_now;
    return p;
}

static void cuda_free(const nn_ctx *c, void *p, size_t bytes)
{
    cuda_ctx *x = X(c);
    S(c);
    graph_moved(c, "device memory freed inside the step");
    rec(c, cudaFree(p), "freeing device memory");
    x->bytes_now -= bytes < x->bytes_now ? bytes : x->bytes_now;
}

static void cuda_memset(const nn_ctx *c, void *p, int v, size_t bytes)
{
    GRAPHED(c, p, bytes);
    rec(c, cudaMemsetAsync(p, v, bytes, S(c)), "memset");
}

/* The one place the host waits for the device: after everything queued
 * before the copy. */
static void cuda_to_host(const nn_ctx *c, void *host, const void *src, size_t bytes)
{
    graph_forbid(c, "a copy to the host inside the step");
    if (!rec(c, cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, S(c)), "copying to the host"))
        rec(c, cudaStreamSynchronize(S(c)), "the compute stream");
}

/* Waits for the copy: the caller may reuse host at once (weights, restored
 * state; never on the hot path, where stage() is used). */
static void cuda_from_host(const nn_ctx *c, void *dst, const void *host, size_t bytes)
{
    graph_forbid(c, "a copy from the host inside the step");
    if (!rec(c, cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, S(c)), "copying from the host"))
        rec(c, cudaStreamSynchronize(S(c)), "the compute stream");
}

static void stage_slot_free(stage_slot *s)
{
    for (int j = 0; j < 2; j++) {
        if (s->pin[j])
            cudaFreeHost(s->pin[j]);
        if (s->dev[j])
            cudaFree(s->dev[j]);
        if (s->copied[j])
            cudaEventDestroy(s->copied[j]);
        if (s->freed[j])
            cudaEventDestroy(s->freed[j]);
    }
    memset(s, 0, sizeof *s);
}

static void stage_slots_free(cuda_ctx *x)
{
    for (int i = 0; i < STAGE_SLOTS; i++)
        stage_slot_free(&x->slots[i]);
}

/* The slot of dst, with room for bytes (a larger batch than before makes
 * it anew, after both streams are idle); NULL when every slot is taken by
 * another destination, or on an error (kept). */
static stage_slot *stage_slot_for(const nn_ctx *c, const void *dst, size_t bytes)
{
    cuda_ctx *x = X(c);
    stage_slot *s = NULL;
    for (int i = 0; i < STAGE_SLOTS && !s; i++)
        if (x->slots[i].dst == dst)
            s = &x->slots[i];
    for (int i = 0; i < STAGE_SLOTS && !s; i++)
        if (!x->slots[i].dst)
            s = &x->slots[i];
    if (!s)
        return NULL; /* more destinations than slots: the caller copies plainly */
    if (s->dst == dst && s->cap >= bytes)
        return s;
    if (rec(c, cudaStreamSynchronize(x->stream), "the compute stream") ||
        rec(c, cudaStreamSynchronize(x->copy), "the copy stream"))
        return NULL;
    graph_moved(c, "a staging buffer remade inside the step");
    if (s->dst) /* a slot in use holds its two device buffers of cap bytes (mem() counts them) */
        x->bytes_now -= 2 * s->cap < x->bytes_now ? 2 * s->cap : x->bytes_now;
    stage_slot_free(s);
    s->dst = dst;
    s->cap = bytes;
    for (int j = 0; j < 2; j++)
        if (rec(c, cudaMalloc(&s->dev[j], bytes), "device staging memory") ||
            /* the host waits on this one: sleep, do not spin a core the loader needs */
            rec(c, cudaEventCreateWithFlags(&s->copied[j], cudaEventDisableTiming | cudaEventBlockingSync),
                "an event") ||
            rec(c, cudaEventCreateWithFlags(&s->freed[j], cudaEventDisableTiming), "an event")) {
            stage_slot_free(s);
            return NULL;
        }
    x->bytes_now += 2 * bytes;
    if (x->bytes_now > x->bytes_peak)
        x->bytes_peak = x->bytes_now;
    return s;
}

/* Whether [host, host + bytes) lies in pinned memory of this context's. */
static int is_pinned(const cuda_ctx *x, const void *host, size_t bytes)
{
    const char *h = (const char *)host;
    for (int i = 0; i < PINNED_MAX; i++)
        if (x->pinned[i].p && h >= x->pinned[i].p && bytes <= x->pinned[i].bytes &&
            (size_t)(h - x->pinned[i].p) <= x->pinned[i].bytes - bytes)
            return 1;
    return 0;
}

static const void *cuda_stage(const nn_ctx *c, void *dst, const void *host, size_t bytes)
{
    cuda_ctx *x = X(c);
    S(c);
    graph_forbid(c, "a batch staged inside the step");
    stage_slot *s = stage_slot_for(c, dst, bytes);
    int direct = s && is_pinned(x, host, bytes);
    if (s && !direct && !s->pin[s->next]) {
        /* Through a local: a failed call must not leave a pointer in pin[]
         * that the next call would take for a buffer. */
        void *pin = NULL;
        if (rec(c, cudaHostAlloc(&pin, s->cap, cudaHostAllocDefault), "pinned staging memory"))
            s = NULL;
        else
            s->pin[s->next] = pin;
    }
    if (!s) { /* no slot (or an error, kept): a plain copy keeps the step's inputs right */
        cuda_from_host(c, dst, host, bytes);
        return dst;
    }
    int j = s->next;
    s->next ^= 1;
    /* Everything queued so far is the last step that read the other
     * buffer: the copy into it, next call, waits for that. */
    rec(c, cudaEventRecord(s->freed[j ^ 1], x->stream), "recording an event");
    const void *from = host;
    if (!direct) {
        /* pin[j] is free once its last copy to the device is done. */
        rec(c, cudaEventSynchronize(s->copied[j]), "a staging copy");
        memcpy(s->pin[j], host, bytes);
        from = s->pin[j];
    }
    rec(c, cudaStreamWaitEvent(x->copy, s->freed[j], 0), "waiting for an event");
    rec(c, cudaMemcpyAsync(s->dev[j], from, bytes, cudaMemcpyHostToDevice, x->copy), "staging a batch");
    rec(c, cudaEventRecord(s->copied[j], x->copy), "recording an event");
    rec(c, cudaStreamWaitEvent(x->stream, s->copied[j], 0), "waiting for an event");
    if (direct) /* the loader may refill host once this returns */
        rec(c, cudaEventSynchronize(s->copied[j]), "a staging copy");
    return s->dev[j];
}

/* Pinned host memory, remembered so that stage() copies from it directly;
 * beyond PINNED_MAX allocations it is still pinned, only not recognised. */
static void *cuda_host_alloc(const nn_ctx *c, size_t bytes)
{
    cuda_ctx *x = X(c);
    void *p = NULL;
    S(c);
    if (cudaHostAlloc(&p, bytes, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError(); /* out of pinned memory is not sticky */
        return NULL;
    }
    for (int i = 0; i < PINNED_MAX; i++)
        if (!x->pinned[i].p) {
            x->pinned[i].p = (const char *)p;
            x->pinned[i].bytes = bytes;
            break;
        }
    return p;
}

static void cuda_host_free(const nn_ctx *c, void *p, size_t bytes)
{
    cuda_ctx *x = X(c);
    (void)bytes;
    for (int i = 0; i < PINNED_MAX; i++)
        if (x->pinned[i].p == p)
            x->pinned[i].p = NULL;
    S(c);
    rec(c, cudaFreeHost(p), "freeing pinned memory");
}

/* ------------------------------------------------------- workspace sizes */

/* The convolutions' workspace is the context's own (it grows to the
 * largest plan's need): the model reserves none. */
static size_t cuda_conv2d_work(const nn_ctx *c, const nn_conv_geom *g)
{
    (void)c;
    (void)g;
    return 0;
}

static size_t cuda_sparse_plan_work(const nn_ctx *c, int N, int K)
{
    (void)c;
    return cuk_sparse_plan_work(N, K);
}

/* ------------------------------------------------------- library handles */

/* cuBLAS and cuDNN are made on first use: a context that never multiplies
 * or convolves (the kernel harness's, an mlp's) does not pay for them.
 * cuBLAS gets a workspace of the context's own: without one it takes
 * memory from a pool of its own as it goes, which a graph capture would
 * record (and with another workspace it may pick another kernel, so a
 * graphed step would not be an eager step's bits). */
static cublasHandle_t blas(const nn_ctx *c)
{
    cuda_ctx *x = X(c);
    S(c);
    if (!x->blas && !x->failed) {
        cublasHandle_t h = NULL;
        if (rec_blas(c, cublasCreate(&h), "creating a cuBLAS handle"))
            return NULL;
        void *work = NULL;
        if (rec(c, cudaMalloc(&work, BLAS_WORK), "cuBLAS's workspace")) {
            cublasDestroy(h);
            return NULL;
        }
        /* after cublasSetStream, which resets the workspace to the default */
        if (rec_blas(c, cublasSetStream(h, x->stream), "binding cuBLAS to the stream") ||
            rec_blas(c, cublasSetWorkspace(h, work, BLAS_WORK), "giving cuBLAS its workspace") ||
            rec_blas(c, cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "setting the GEMM math mode")) {
            cublasDestroy(h);
            cudaFree(work);
            return NULL;
        }
        x->blas_work = work;
        x->bytes_now += BLAS_WORK;
        if (x->bytes_now > x->bytes_peak)
            x->bytes_peak = x->bytes_now;
        x->blas = h;
        x->blas_tf32 = 0;
    }
    return x->blas;
}

static cudnnHandle_t dnn(const nn_ctx *c)
{
    cuda_ctx *x = X(c);
    S(c);
    if (!x->dnn && !x->failed) {
        cudnnHandle_t h = NULL;
        if (rec_dnn(c, cudnnCreate(&h), "creating a cuDNN handle"))
            return NULL;
        if (rec_dnn(c, cudnnSetStream(h, x->stream), "binding cuDNN to the stream")) {
            cudnnDestroy(h);
            return NULL;
        }
        x->dnn = h;
    }
    return x->dnn;
}

/* ---------------------------------------------------------------- linear */

/* The handle in exact float32 unless the spec allows TF32; NULL on error. */
static cublasHandle_t blas_math(const nn_ctx *c)
{
    cuda_ctx *x = X(c);
    cublasHandle_t h = blas(c);
    int want = c->tf32 != 0;
    if (!h || x->blas_tf32 == want)
        return h;
    if (rec_blas(c, cublasSetMathMode(h, want ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
                 "setting the GEMM math mode"))
        return NULL;
    x->blas_tf32 = want;
    return h;
}

/* Row-major y[N,O] = x[N,D]·w[O,D]^T is, column-major, y^T[O,N] =
 * w^T·x^T with w read as the [D,O] column-major matrix it is. */
static void cuda_linear_fwd(const nn_ctx *c, const float *x, const float *w, const float *b, float *y, int N, int D,
                            int O)
{
    GRAPHED(c, y, (uint64_t)N * O + D);
    const float one = 1.0f, zero = 0.0f;
    cublasHandle_t h = blas_math(c);
    if (!h)
        return;
    rec_blas(c, cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, O, N, D, &one, w, D, x, D, &zero, y, O),
             "linear forward");
    if (b)
        rec(c, cuk_bias_rows(S(c), y, b, N, O), "linear bias");
}

/* dx[N,D] += dy·w: column-major dx^T[D,N] += w^T[D,O]·dy^T[O,N];
 * dw[O,D] += dy^T·x: column-major dw^T[D,O] += x^T[D,N]·dy[N,O]. */
static void cuda_linear_bwd(const nn_ctx *c, const float *x, const float *w, const float *dy, float *dx, float *dw,
                            float *db, int N, int D, int O)
{
    GRAPHED(c, dy, (uint64_t)N * O + D);
    const float one = 1.0f;
    cublasHandle_t h = blas_math(c);
    if (!h)
        return;
    if (dx)
        rec_blas(c, cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, D, N, O, &one, w, D, dy, O, &one, dx, D),
                 "linear backward (input)");
    if (dw)
        rec_blas(c, cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, D, O, N, &one, x, D, dy, O, &one, dw, D),
                 "linear backward (weights)");
    if (db)
        rec(c, cuk_bias_grad_rows(S(c), dy, db, N, O), "linear backward (bias)");
}

/* ---------------------------------------------------------- convolution */

static void plan_destroy(conv_plan *p)
{
    if (p->x)
        cudnnDestroyTensorDescriptor(p->x);
    if (p->y)
        cudnnDestroyTensorDescriptor(p->y);
    if (p->w)
        cudnnDestroyFilterDescriptor(p->w);
    if (p->conv)
        cudnnDestroyConvolutionDescriptor(p->conv);
}

static void plans_free(cuda_ctx *x)
{
    for (size_t i = 0; i < x->n_plans; i++)
        plan_destroy(&x->plans[i]);
    free(x->plans);
    x->plans = NULL;
    x->n_plans = x->cap_plans = 0;
}

static int same_geom(const nn_conv_geom *a, const nn_conv_geom *b)
{
    return a->N == b->N && a->C == b->C && a->H == b->H && a->W == b->W && a->OC == b->OC && a->KH == b->KH &&
           a->KW == b->KW && a->stride == b->stride && a->pad == b->pad;
}

/* The process's measured choices: per (device, geometry, math), the three
 * algorithms, their math and the workspace they need. */
typedef struct algo_choice {
    int device, tf32;
    nn_conv_geom g;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    cudnnMathType_t m_fwd, m_data, m_filter;
    size_t work;
} algo_choice;

static pthread_mutex_t algo_mu = PTHREAD_MUTEX_INITIALIZER;
static algo_choice *algo_cache;
static size_t algo_n, algo_cap;

/* Copies a cached choice for p into it: 1 when there was one. */
static int algo_lookup(int device, conv_plan *p)
{
    int found = 0;
    pthread_mutex_lock(&algo_mu);
    for (size_t i = 0; i < algo_n && !found; i++) {
        const algo_choice *a = &algo_cache[i];
        if (a->device == device && a->tf32 == p->tf32 && same_geom(&a->g, &p->g)) {
            p->fwd = a->fwd, p->bwd_data = a->bwd_data, p->bwd_filter = a->bwd_filter;
            p->m_fwd = a->m_fwd, p->m_data = a->m_data, p->m_filter = a->m_filter;
            p->work = a->work;
            found = 1;
        }
    }
    pthread_mutex_unlock(&algo_mu);
    return found;
}

/* Keeps p's choice for the process (out of memory: not kept, measured
 * again next time). */
static void algo_keep(int device, const conv_plan *p)
{
    pthread_mutex_lock(&algo_mu);
    if (algo_n == algo_cap) {
        size_t cap = algo_cap ? 2 * algo_cap : 64;
        algo_choice *more = (algo_choice *)realloc(algo_cache, cap * sizeof *more);
        if (more)
            algo_cache = more, algo_cap = cap;
    }
    if (algo_n < algo_cap)
        algo_cache[algo_n++] = (algo_choice){device, p->tf32, p->g, p->fwd, p->bwd_data, p->bwd_filter,
                                             p->m_fwd, p->m_data, p->m_filter, p->work};
    pthread_mutex_unlock(&algo_mu);
}

/* Whether a measured algorithm may be used: it ran, it is deterministic,
 * and without TF32 it computes in float32 FMAs. */
static int usable(cudnnStatus_t st, cudnnDeterminism_t det, cudnnMathType_t math, int tf32)
{
    return st == CUDNN_STATUS_SUCCESS && det == CUDNN_DETERMINISTIC && (tf32 || math == CUDNN_FMA_MATH);
}

/* Times every algorithm of the three directions and keeps the fastest
 * usable one of each (cuDNN lists them fastest first). */
static int plan_search(const nn_ctx *c, conv_plan *p)
{
    cuda_ctx *x = X(c);
    cudnnHandle_t h = dnn(c);
    if (!h)
        return -1;
    int got = 0;
    /* Twice the algorithm count: Find tries the descriptor's math and
     * CUDNN_DEFAULT_MATH and may list an algorithm once per math; with room
     * for ALGO_COUNT results only, faster DEFAULT_MATH (TF32) entries could
     * push every FMA_MATH one out of the list. */
    enum { N_FWD = 2 * CUDNN_CONVOLUTION_FWD_ALGO_COUNT, N_BD = 2 * CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
           N_BF = 2 * CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT };
    cudnnConvolutionFwdAlgoPerf_t fwd[N_FWD];
    cudnnConvolutionBwdDataAlgoPerf_t bd[N_BD];
    cudnnConvolutionBwdFilterAlgoPerf_t bf[N_BF];
    int found = 0;
    if (rec_dnn(c, cudnnFindConvolutionForwardAlgorithm(h, p->x, p->w, p->conv, p->y,
                                                        N_FWD, &got, fwd),
                "choosing a convolution algorithm"))
        return -1;
    for (int i = 0; i < got && !found; i++)
        if (usable(fwd[i].status, fwd[i].determinism, fwd[i].mathType, p->tf32)) {
            p->fwd = fwd[i].algo, p->m_fwd = fwd[i].mathType, found = 1;
            p->work = fwd[i].memory > p->work ? fwd[i].memory : p->work;
        }
    if (!found)
        goto none;
    found = 0;
    if (rec_dnn(c, cudnnFindConvolutionBackwardDataAlgorithm(h, p->w, p->y, p->conv, p->x,
                                                             N_BD, &got, bd),
                "choosing a convolution algorithm"))
        return -1;
    for (int i = 0; i < got && !found; i++)
        if (usable(bd[i].status, bd[i].determinism, bd[i].mathType, p->tf32)) {
            p->bwd_data = bd[i].algo, p->m_data = bd[i].mathType, found = 1;
            p->work = bd[i].memory > p->work ? bd[i].memory : p->work;
        }
    if (!found)
        goto none;
    found = 0;
    if (rec_dnn(c, cudnnFindConvolutionBackwardFilterAlgorithm(h, p->x, p->y, p->conv, p->w,
                                                               N_BF, &got, bf),
                "choosing a convolution algorithm"))
        return -1;
    for (int i = 0; i < got && !found; i++)
        if (usable(bf[i].status, bf[i].determinism, bf[i].mathType, p->tf32)) {
            p->bwd_filter = bf[i].algo, p->m_filter = bf[i].mathType, found = 1;
            p->work = bf[i].memory > p->work ? bf[i].memory : p->work;
        }
    if (found)
        return 0;
none:
    fail_msg(x, "cuDNN has no deterministic %salgorithm for a %dx%dx%dx%d convolution with %d %dx%d filters",
             p->tf32 ? "" : "float32 (FMA) ", p->g.N, p->g.C, p->g.H, p->g.W, p->g.OC, p->g.KH, p->g.KW);
    return -1;
}

static int plan_describe(const nn_ctx *c, conv_plan *p)
{
    const nn_conv_geom *g = &p->g;
    if (rec_dnn(c, cudnnCreateTensorDescriptor(&p->x), "a tensor descriptor") ||
        rec_dnn(c, cudnnCreateTensorDescriptor(&p->y), "a tensor descriptor") ||
        rec_dnn(c, cudnnCreateFilterDescriptor(&p->w), "a filter descriptor") ||
        rec_dnn(c, cudnnCreateConvolutionDescriptor(&p->conv), "a convolution descriptor"))
        return -1;
    if (rec_dnn(c, cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g->N, g->C, g->H, g->W),
                "describing a convolution's input") ||
        rec_dnn(c, cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g->N, g->OC, g->OH, g->OW),
                "describing a convolution's output") ||
        rec_dnn(c, cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, g->OC, g->C, g->KH, g->KW),
                "describing a convolution's filters") ||
        rec_dnn(c, cudnnSetConvolution2dDescriptor(p->conv, g->pad, g->pad, g->stride, g->stride, 1, 1,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                "describing a convolution") ||
        rec_dnn(c, cudnnSetConvolutionMathType(p->conv, p->tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH),
                "setting a convolution's math"))
        return -1;
    return 0;
}

/* The plan of g (made and measured on first use), with the workspace
 * grown to its need; NULL on error, kept. */
static const conv_plan *plan_for(const nn_ctx *c, const nn_conv_geom *g)
{
    cuda_ctx *x = X(c);
    int tf32 = c->tf32 != 0;
    /* The handle first: a plan whose choice came from the process's cache
     * (a later context's) is made without plan_search, the only other
     * caller of dnn(), and the convolutions then called cuDNN with a NULL
     * handle.  dnn() also makes the context's device current, which the
     * cuDNN calls below need on a thread that has another. */
    if (!dnn(c))
        return NULL;
    for (size_t i = 0; i < x->n_plans; i++)
        if (x->plans[i].tf32 == tf32 && same_geom(&x->plans[i].g, g))
            return &x->plans[i];
    if (x->failed)
        return NULL;
    if (x->n_plans == x->cap_plans) {
        size_t cap = x->cap_plans ? 2 * x->cap_plans : 16;
        conv_plan *more = (conv_plan *)realloc(x->plans, cap * sizeof *more);
        if (!more) {
            fail_msg(x, "out of memory for convolution plans");
            return NULL;
        }
        x->plans = more;
        x->cap_plans = cap;
    }
    conv_plan *p = &x->plans[x->n_plans];
    memset(p, 0, sizeof *p);
    p->g = *g;
    p->tf32 = tf32;
    int known = plan_describe(c, p) == 0 && algo_lookup(x->device, p);
    if (!known && (x->failed || plan_search(c, p) != 0)) {
        plan_destroy(p);
        return NULL;
    }
    if (!known)
        algo_keep(x->device, p);
    if (p->work > x->work_bytes) {
        /* cudaFree waits for the device: nothing queued still uses it. */
        if (x->work)
            cuda_free(c, x->work, x->work_bytes);
        x->work = NULL;
        x->work_bytes = 0;
        if (!(x->work = cuda_alloc(c, p->work))) {
            fail_msg(x, "out of device memory for %.1f MiB of convolution workspace", (double)p->work / (1 << 20));
            plan_destroy(p);
            return NULL;
        }
        x->work_bytes = p->work;
    }
    x->n_plans++;
    return p;
}

static void cuda_conv2d_fwd(const nn_ctx *c, const nn_conv_geom *g, const float *x, const float *w, const float *b,
                            float *y, void *work)
{
    GRAPHED(c, y, (uint64_t)g->N * g->OC * g->OH * g->OW);
    (void)work;
    const conv_plan *p = plan_for(c, g);
    if (!p)
        return;
    cuda_ctx *cx = X(c);
    const float one = 1.0f, zero = 0.0f;
    if (rec_dnn(c, cudnnSetConvolutionMathType(p->conv, p->m_fwd), "setting a convolution's math") ||
        rec_dnn(c, cudnnConvolutionForward(cx->dnn, &one, p->x, x, p->w, w, p->conv, p->fwd, cx->work, cx->work_bytes,
                                           &zero, p->y, y),
                "convolution forward"))
        return;
    if (b)
        rec(c, cuk_bias_nchw(S(c), y, b, g->N, g->OC, g->OH * g->OW), "convolution bias");
}

static void cuda_conv2d_bwd(const nn_ctx *c, const nn_conv_geom *g, const float *x, const float *w, const float *dy,
                            float *dx, float *dw, float *db, void *work)
{
    GRAPHED(c, dy, (uint64_t)g->N * g->OC * g->OH * g->OW);
    (void)work;
    const conv_plan *p = plan_for(c, g);
    if (!p)
        return;
    cuda_ctx *cx = X(c);
    const float one = 1.0f;
    if (dx && (rec_dnn(c, cudnnSetConvolutionMathType(p->conv, p->m_data), "setting a convolution's math") ||
               rec_dnn(c, cudnnConvolutionBackwardData(cx->dnn, &one, p->w, w, p->y, dy, p->conv, p->bwd_data,
                                                       cx->work, cx->work_bytes, &one, p->x, dx),
                       "convolution backward (input)")))
        return;
    if (dw && (rec_dnn(c, cudnnSetConvolutionMathType(p->conv, p->m_filter), "setting a convolution's math") ||
               rec_dnn(c, cudnnConvolutionBackwardFilter(cx->dnn, &one, p->x, x, p->y, dy, p->conv, p->bwd_filter,
                                                         cx->work, cx->work_bytes, &one, p->w, dw),
                       "convolution backward (filters)")))
        return;
    if (db)
        rec(c, cuk_bias_grad_nchw(S(c), dy, db, g->N, g->OC, g->OH * g->OW), "convolution backward (bias)");
}

/* ------------------------------------------------- the sparse first layer */

static void cuda_sparse_plan(const nn_ctx *c, const int32_t *idx, int N, int K, int dim, void *plan)
{
    GRAPHED(c, plan, (uint64_t)N * K);
    rec(c, cuk_sparse_plan(S(c), idx, N, K, dim, plan), "sparse plan");
}

static void cuda_sparse_linear_fwd(const nn_ctx *c, const void *plan, const float *w, const float *b, float *y, int N,
                                   int O)
{
    GRAPHED(c, y, (uint64_t)N * O);
    rec(c, cuk_sparse_linear_fwd(S(c), plan, w, b, y, N, O), "sparse linear forward");
}

static void cuda_sparse_linear_bwd(const nn_ctx *c, const int32_t *idx, const float *dy, float *dw, float *db, int N,
                                   int K, int O)
{
    GRAPHED(c, dy, (uint64_t)N * K * O);
    rec(c, cuk_sparse_linear_bwd(S(c), idx, dy, dw, db, N, K, O), "sparse linear backward");
}

static size_t cuda_sparse_plan_rows(const nn_ctx *c, const void *plan, int32_t *rows)
{
    graph_forbid(c, "the sparse plan's row count inside the step");
    cudaError_t e = cudaSuccess;
    size_t n = cuk_sparse_plan_rows(S(c), plan, rows, &e);
    if (rec(c, e, "the sparse plan's rows"))
        return 0;
    return n;
}

static void cuda_sparse_linear_bwd_rows(const nn_ctx *c, const void *plan, const float *dy, float *rg, float *db,
                                        int N, int O)
{
    GRAPHED(c, rg, (uint64_t)N * O);
    rec(c, cuk_sparse_linear_bwd_rows(S(c), plan, dy, rg, db, N, O), "sparse linear backward (rows)");
}

/* ------------------------------------------------------ pooling and norms */

static void cuda_maxpool_fwd(const nn_ctx *c, const nn_pool_geom *g, const float *x, float *y, int32_t *argmax)
{
    GRAPHED(c, y, (uint64_t)g->N * g->C);
    rec(c, cuk_maxpool_fwd(S(c), g, x, y, argmax), "max-pool forward");
}

static void cuda_maxpool_bwd(const nn_ctx *c, const nn_pool_geom *g, const int32_t *argmax, const float *dy,
                             float *dx)
{
    GRAPHED(c, dx, (uint64_t)g->N * g->C);
    rec(c, cuk_maxpool_bwd(S(c), g, argmax, dy, dx), "max-pool backward");
}

static void cuda_avgpool_fwd(const nn_ctx *c, const nn_pool_geom *g, const float *x, float *y)
{
    GRAPHED(c, y, (uint64_t)g->N * g->C);
    rec(c, cuk_avgpool_fwd(S(c), g, x, y), "average-pool forward");
}

static void cuda_avgpool_bwd(const nn_ctx *c, const nn_pool_geom *g, const float *dy, float *dx)
{
    GRAPHED(c, dx, (uint64_t)g->N * g->C);
    rec(c, cuk_avgpool_bwd(S(c), g, dy, dx), "average-pool backward");
}

static void cuda_gap_fwd(const nn_ctx *c, const float *x, float *y, int N, int C, int HW)
{
    GRAPHED(c, y, (uint64_t)N * C * HW);
    rec(c, cuk_gap_fwd(S(c), x, y, N, C, HW), "global average pool forward");
}

static void cuda_gap_bwd(const nn_ctx *c, const float *dy, float *dx, int N, int C, int HW)
{
    GRAPHED(c, dx, (uint64_t)N * C * HW);
    rec(c, cuk_gap_bwd(S(c), dy, dx, N, C, HW), "global average pool backward");
}

/* Room for n doubles of partial sums (batch norm's, Σw²'s): grown (after
 * the device is done with the old one: cudaFree waits) the first time a
 * shape needs more. */
static double *red_scratch(const nn_ctx *c, size_t n)
{
    cuda_ctx *x = X(c);
    if (n <= x->red_n)
        return x->red;
    if (x->red)
        cuda_free(c, x->red, x->red_n * sizeof(double));
    x->red = (double *)cuda_alloc(c, n * sizeof(double));
    x->red_n = x->red ? n : 0;
    if (!x->red)
        fail_msg(x, "out of device memory for %zu partial sums", n);
    return x->red;
}

static double *bn_scratch(const nn_ctx *c, int N, int C, int HW)
{
    return red_scratch(c, cuk_bn_scratch(N, C, HW));
}

static void cuda_bn_fwd_train(const nn_ctx *c, const float *x, const float *gamma, const float *beta, float *y,
                              float *save, float *run_mean, float *run_var, float momentum, float eps, int N, int C,
                              int HW)
{
    GRAPHED(c, y, (uint64_t)N * C * HW);
    double *red = bn_scratch(c, N, C, HW);
    if (red)
        rec(c, cuk_bn_fwd_train(S(c), x, gamma, beta, y, save, run_mean, run_var, momentum, eps, N, C, HW, red),
            "batch norm forward");
}

static void cuda_bn_fwd_infer(const nn_ctx *c, const float *x, const float *gamma, const float *beta,
                              const float *run_mean, const float *run_var, float *y, float eps, int N, int C, int HW)
{
    GRAPHED(c, y, (uint64_t)N * C * HW);
    rec(c, cuk_bn_fwd_infer(S(c), x, gamma, beta, run_mean, run_var, y, eps, N, C, HW), "batch norm inference");
}

static void cuda_bn_bwd(const nn_ctx *c, const float *x, const float *gamma, const float *save, const float *dy,
                        float *dx, float *dgamma, float *dbeta, int N, int C, int HW)
{
    GRAPHED(c, dy, (uint64_t)N * C * HW);
    double *red = bn_scratch(c, N, C, HW);
    if (red)
        rec(c, cuk_bn_bwd(S(c), x, gamma, save, dy, dx, dgamma, dbeta, N, C, HW, red), "batch norm backward");
}

/* ------------------------------------------------------------ element-wise */

static void cuda_relu_fwd(const nn_ctx *c, const float *x, float *y, size_t n)
{
    GRAPHED(c, y, n);
    rec(c, cuk_relu_fwd(S(c), x, y, n), "relu forward");
}

static void cuda_relu_bwd(const nn_ctx *c, const float *y, const float *dy, float *dx, size_t n)
{
    GRAPHED(c, dx, n);
    rec(c, cuk_relu_bwd(S(c), y, dy, dx, n), "relu backward");
}

static void cuda_add_fwd(const nn_ctx *c, const float *a, const float *b, float *y, size_t n)
{
    GRAPHED(c, y, n);
    rec(c, cuk_add_fwd(S(c), a, b, y, n), "add");
}

static void cuda_acc(const nn_ctx *c, const float *dy, float *dx, size_t n)
{
    GRAPHED(c, dx, n);
    rec(c, cuk_acc(S(c), dy, dx, n), "accumulate");
}

static void cuda_dropout_fwd(const nn_ctx *c, const float *x, float *y, uint8_t *mask, float p, uint64_t seed,
                             uint64_t first, size_t n)
{
    cuk_vars *gv = GRAPH_VARS(c, y, n);
    rec(c, cuk_dropout_fwd(S(c), x, y, mask, p, seed, first, n, gv), "dropout forward");
}

static void cuda_dropout_bwd(const nn_ctx *c, const uint8_t *mask, const float *dy, float *dx, float p, size_t n)
{
    GRAPHED(c, dx, n);
    rec(c, cuk_dropout_bwd(S(c), mask, dy, dx, p, n), "dropout backward");
}

static void cuda_u8_normalize(const nn_ctx *c, const uint8_t *raw, const float *lut, float *y, int n, int C, int64_t P,
                              int channels_last)
{
    GRAPHED(c, y, (uint64_t)n * C * P);
    rec(c, cuk_u8_normalize(S(c), raw, lut, y, n, C, P, channels_last), "normalising a uint8 batch");
}

/* ------------------------------------------------------ loss and metrics */

static void cuda_softmax_xent(const nn_ctx *c, const float *logits, const int32_t *labels, float *dlogits, int N,
                              int K, nn_step_metrics *m)
{
    GRAPHED(c, m, (uint64_t)N * K);
    rec(c, cuk_softmax_xent(S(c), logits, labels, dlogits, N, K, m), "softmax cross-entropy");
}

static void cuda_sumsq(const nn_ctx *c, const float *w, size_t n, double *acc)
{
    GRAPHED(c, w, n);
    double *red = red_scratch(c, cuk_sumsq_scratch(n));
    if (red)
        rec(c, cuk_sumsq(S(c), w, n, acc, red), "sum of squares");
}

static void cuda_metrics_fold(const nn_ctx *c, const nn_step_metrics *m, nn_pass_acc *acc, int n, double l2,
                              int64_t step)
{
    cuk_vars *gv = GRAPH_VARS(c, acc, n);
    rec(c, cuk_metrics_fold(S(c), m, acc, n, l2, step, gv), "metrics");
}

/* ----------------------------------------------------------- optimisers */

/* What a row-sparse step's launch depends on besides its weight: a list
 * the host holds (its count and rows) is baked into a graph. */
static uint64_t rows_key(const nn_row_grad *g, size_t n)
{
    return (uint64_t)n ^ ((uint64_t)(uintptr_t)g->plan << 1) ^ ((uint64_t)(uintptr_t)g->rows << 3) ^
           ((uint64_t)g->n_rows << 40) ^ (uint64_t)(uintptr_t)g->rg ^ ((uint64_t)(uintptr_t)g->dy << 7);
}

static void cuda_sgd_step(const nn_ctx *c, float *w, const float *g, float *buf, size_t n, float lr, float momentum,
                          float l2)
{
    cuk_vars *gv = GRAPH_VARS(c, w, n);
    rec(c, cuk_sgd_step(S(c), w, g, buf, n, lr, momentum, l2, gv), "sgd step");
}

static void cuda_adam_step(const nn_ctx *c, float *w, const float *g, float *m, float *v, size_t n, float lr,
                           float beta1, float beta2, float eps, float l2, long t)
{
    cuk_vars *gv = GRAPH_VARS(c, w, n);
    rec(c, cuk_adam_step(S(c), w, g, m, v, n, lr, beta1, beta2, eps, l2, t, gv), "adam step");
}

static void cuda_sgd_rows_step(const nn_ctx *c, float *w, const nn_row_grad *g, size_t n_total, size_t cols,
                               float *buf, float lr, float momentum, float l2)
{
    cuk_vars *gv = GRAPH_VARS(c, w, rows_key(g, n_total));
    rec(c, cuk_sgd_rows_step(S(c), w, g, n_total, cols, buf, lr, momentum, l2, gv), "sgd step (rows)");
}

static void cuda_adam_rows_step(const nn_ctx *c, float *w, const nn_row_grad *g, size_t n_total, size_t cols,
                                float *m, float *v, float lr, float beta1, float beta2, float eps, float l2, long t)
{
    cuk_vars *gv = GRAPH_VARS(c, w, rows_key(g, n_total));
    rec(c, cuk_adam_rows_step(S(c), w, g, n_total, cols, m, v, lr, beta1, beta2, eps, l2, t, gv),
        "adam step (rows)");
}

static void cuda_lazy_adam_step(const nn_ctx *c, float *w, const nn_row_grad *g, size_t cols, float *m, float *v,
                                float lr, float beta1, float beta2, float eps, float l2, long t)
{
    cuk_vars *gv = GRAPH_VARS(c, w, rows_key(g, cols));
    rec(c, cuk_lazy_adam_step(S(c), w, g, cols, m, v, lr, beta1, beta2, eps, l2, t, gv), "lazy adam step");
}

static const nn_backend cuda_table = {
    .name = "cuda",
    .dev = NN_CUDA,
    .ctx_init = cuda_ctx_init,
    .ctx_release = cuda_ctx_release,
    .check = cuda_check,
    .mem = cuda_mem,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .memset = cuda_memset,
    .to_host = cuda_to_host,
    .from_host = cuda_from_host,
    .stage = cuda_stage,
    .conv2d_work = cuda_conv2d_work,
    .sparse_plan_work = cuda_sparse_plan_work,
    .linear_fwd = cuda_linear_fwd,
    .linear_bwd = cuda_linear_bwd,
    .sparse_plan = cuda_sparse_plan,
    .sparse_linear_fwd = cuda_sparse_linear_fwd,
    .sparse_linear_bwd = cuda_sparse_linear_bwd,
    .sparse_plan_rows = cuda_sparse_plan_rows,
    .sparse_linear_bwd_rows = cuda_sparse_linear_bwd_rows,
    .conv2d_fwd = cuda_conv2d_fwd,
    .conv2d_bwd = cuda_conv2d_bwd,
    .maxpool_fwd = cuda_maxpool_fwd,
    .maxpool_bwd = cuda_maxpool_bwd,
    .avgpool_fwd = cuda_avgpool_fwd,
    .avgpool_bwd = cuda_avgpool_bwd,
    .gap_fwd = cuda_gap_fwd,
    .gap_bwd = cuda_gap_bwd,
    .bn_fwd_train = cuda_bn_fwd_train,
    .bn_fwd_infer = cuda_bn_fwd_infer,
    .bn_bwd = cuda_bn_bwd,
    .relu_fwd = cuda_relu_fwd,
    .relu_bwd = cuda_relu_bwd,
    .add_fwd = cuda_add_fwd,
    .acc = cuda_acc,
    .dropout_fwd = cuda_dropout_fwd,
    .dropout_bwd = cuda_dropout_bwd,
    .u8_normalize = cuda_u8_normalize,
    .softmax_xent = cuda_softmax_xent,
    .sumsq = cuda_sumsq,
    .metrics_fold = cuda_metrics_fold,
    .sgd_step = cuda_sgd_step,
    .adam_step = cuda_adam_step,
    .sgd_rows_step = cuda_sgd_rows_step,
    .adam_rows_step = cuda_adam_rows_step,
    .lazy_adam_step = cuda_lazy_adam_step,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .graph_counts = cuda_graph_counts,
};

/* The module's two entry points (nn/nn_cuda_load.c finds them by name). */
extern "C" __attribute__((visibility("default"))) const nn_backend *cds_cuda_module_table(void)
{
    return &cuda_table;
}

extern "C" __attribute__((visibility("default"))) int cds_cuda_module_devices(char *why, size_t why_len)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess) {
        int driver = 0;
        if (cudaDriverGetVersion(&driver) != cudaSuccess)
            driver = 0;
        /* cudart calls a missing driver "insufficient": say which it is */
        if (rc == cudaErrorInsufficientDriver && driver == 0)
            snprintf(why, why_len, "no NVIDIA driver (libcuda.so.1) is installed");
        else
            snprintf(why, why_len, "%s", cudaGetErrorString(rc));
        return -1;
    }
    if (n == 0)
        snprintf(why, why_len, "the driver reports 0 devices");
    return n;
}
