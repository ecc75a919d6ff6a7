/* nn_backend: what a device implements for the engine, and the context
 * every operation runs in.
 *
 * A backend is one constant table of functions (dav1d's way): memory (alloc,
 * free, memset, copies to and from the host), the workspace sizes its
 * kernels need, and one entry per operation of nn_ops.h.  The table for a
 * device is chosen once, when a context is made (nn_ctx_init), and every op
 * calls through it: no switch on the device per call, no lookup.  The CPU
 * table is nn_backend_cpu (nn_backend_cpu.c over the kern_cpu_*.c kernels);
 * a CUDA table plugs in beside it and is checked against the CPU one by the
 * generic kernel test (tests/test_nn_backend.c).  docs/engine-backend.md
 * says what each entry must do.
 *
 * Pointers the table takes are device pointers, except where an argument is
 * named host (the copies): the rest of the engine never reads or writes
 * device memory itself, and the guard build (-Dnn_guard=true) proves it by
 * keeping the CPU backend's buffers unreadable outside its calls.  Entries
 * return nothing: shapes are checked when a model is built, and a device
 * error (a CUDA backend's) is kept in the context and reported by the next
 * copy to the host, as a stream reports it.
 *
 * Results the host wants (loss, top-k counts, a non-finite loss) are
 * accumulated on the device (nn_step_metrics, nn_pass_acc) and copied back
 * when the trainer asks, not after every batch, so a GPU never waits on the
 * host mid-pass. */
#ifndef CDS_NN_BACKEND_H
#define CDS_NN_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "cds_err.h"
#include "nn_geom.h"
#include "nn_rows.h"
#include "nn_tensor.h"

typedef struct nn_backend nn_backend;
typedef struct nn_guard nn_guard;

/* The context of every op: the backend's table and what its calls share.
 * threads: the CPU kernels' OpenMP thread count (nn_par_threads() when the
 * context was made); a CUDA backend keeps its stream and its cuBLAS/cuDNN
 * handles in `stream` and `handles`.  guard: the guard build's list of the
 * buffers this context allocated (NULL otherwise). */
typedef struct nn_ctx {
    const nn_backend *be;
    nn_device dev;
    int index;          /* the device's ordinal (CUDA); 0 on the CPU */
    int tf32;           /* 1: float32 GEMMs and convolutions may use TF32 (the train spec's "tf32") */
    int threads;
    void *stream;
    void *handles;
    nn_guard *guard;
} nn_ctx;

/* One batch's results, written on the device by the loss (xent, top1,
 * top5; sumsq cleared) and by nn_op_sumsq (sumsq += Σw²). */
typedef struct nn_step_metrics {
    double xent;            /* mean cross-entropy of the batch */
    double sumsq;           /* Σw² over the decayed weights (the L2 term is l2·sumsq) */
    int32_t top1, top5;     /* rows whose label is among the 1 / 5 largest logits */
} nn_step_metrics;

/* A pass's sums, folded on the device batch by batch (nn_op_metrics_fold):
 * loss_sum += (xent + l2·sumsq)·n, xent_sum += xent·n, and the step and
 * value of the first loss that was not finite. */
typedef struct nn_pass_acc {
    double loss_sum, xent_sum;
    int64_t rows, top1, top5;
    int64_t bad_step;       /* -1 while every loss was finite */
    double bad_loss;
} nn_pass_acc;

struct nn_backend {
    const char *name;
    nn_device dev;
    /* ---- a context's own state (the CPU's guard list; CUDA's stream and
     * handles): made by nn_ctx_init, released by nn_ctx_release ---- */
    int (*ctx_init)(nn_ctx *c, cds_err *err);
    void (*ctx_release)(nn_ctx *c);
    /* The first error the device reported since the context was made, as
     * one line (0: none); kept until the context is released. */
    int (*check)(const nn_ctx *c, cds_err *err);
    /* Device memory the context holds now and at most so far (its
     * arenas, workspaces, staging; not the libraries' own): 0, or -1 when
     * the backend does not count (the CPU's). */
    int (*mem)(const nn_ctx *c, size_t *now, size_t *peak);
    /* ---- memory: alloc returns zeroed memory, aligned to 64 bytes at
     * least, or NULL when out of memory; free takes the size alloc got */
    void *(*alloc)(const nn_ctx *c, size_t bytes);
    void (*free)(const nn_ctx *c, void *p, size_t bytes);
    /* Host memory the device copies from fastest (a GPU's pinned memory;
     * the CPU's malloc): batches built there are staged without a copy on
     * the host.  NULL when out of memory. */
    void *(*host_alloc)(const nn_ctx *c, size_t bytes);
    void (*host_free)(const nn_ctx *c, void *p, size_t bytes);
    void (*memset)(const nn_ctx *c, void *p, int v, size_t bytes);
    void (*to_host)(const nn_ctx *c, void *host, const void *src, size_t bytes);
    void (*from_host)(const nn_ctx *c, void *dst, const void *host, size_t bytes);
    /* Makes a batch on the host readable by the ops: copies it into dst and
     * returns dst, or a device buffer of the backend's own that the ops
     * queued before the next stage() for the same dst may read (a GPU's
     * double buffering: a step's ops read its batch), or, on a device
     * whose memory is the host's, may return
     * host itself (no copy; the caller keeps it unchanged until the pass's
     * backward is done, as nn_model_forward's caller does).  Otherwise the
     * caller may reuse host as soon as stage returns. */
    const void *(*stage)(const nn_ctx *c, void *dst, const void *host, size_t bytes);
    /* ---- workspace sizes, in bytes ---- */
    size_t (*conv2d_work)(const nn_ctx *c, const nn_conv_geom *g);
    size_t (*sparse_plan_work)(const nn_ctx *c, int N, int K);
    /* ---- operations (semantics: nn_ops.h and nn_kern_cpu.h) ---- */
    void (*linear_fwd)(const nn_ctx *c, const float *x, const float *w, const float *b, float *y, int N, int D, int O);
    void (*linear_bwd)(const nn_ctx *c, const float *x, const float *w, const float *dy, float *dx, float *dw,
                       float *db, int N, int D, int O);
    void (*sparse_plan)(const nn_ctx *c, const int32_t *idx, int N, int K, int dim, void *plan);
    void (*sparse_linear_fwd)(const nn_ctx *c, const void *plan, const float *w, const float *b, float *y, int N,
                              int O);
    void (*sparse_linear_bwd)(const nn_ctx *c, const int32_t *idx, const float *dy, float *dw, float *db, int N,
                              int K, int O);
    /* The plan's distinct rows, ascending, into rows; returns how many. */
    size_t (*sparse_plan_rows)(const nn_ctx *c, const void *plan, int32_t *rows);
    void (*sparse_linear_bwd_rows)(const nn_ctx *c, const void *plan, const float *dy, float *rg, float *db, int N,
                                   int O);
    void (*conv2d_fwd)(const nn_ctx *c, const nn_conv_geom *g, const float *x, const float *w, const float *b,
                       float *y, void *work);
    void (*conv2d_bwd)(const nn_ctx *c, const nn_conv_geom *g, const float *x, const float *w, const float *dy,
                       float *dx, float *dw, float *db, void *work);
    void (*maxpool_fwd)(const nn_ctx *c, const nn_pool_geom *g, const float *x, float *y, int32_t *argmax);
    void (*maxpool_bwd)(const nn_ctx *c, const nn_pool_geom *g, const int32_t *argmax, const float *dy, float *dx);
    void (*avgpool_fwd)(const nn_ctx *c, const nn_pool_geom *g, const float *x, float *y);
    void (*avgpool_bwd)(const nn_ctx *c, const nn_pool_geom *g, const float *dy, float *dx);
    void (*gap_fwd)(const nn_ctx *c, const float *x, float *y, int N, int C, int HW);
    void (*gap_bwd)(const nn_ctx *c, const float *dy, float *dx, int N, int C, int HW);
    /* save: 2·C floats, the batch mean then 1/sqrt(var+eps) per channel */
    void (*bn_fwd_train)(const nn_ctx *c, const float *x, const float *gamma, const float *beta, float *y,
                         float *save, float *run_mean, float *run_var, float momentum, float eps, int N, int C,
                         int HW);
    void (*bn_fwd_infer)(const nn_ctx *c, const float *x, const float *gamma, const float *beta,
                         const float *run_mean, const float *run_var, float *y, float eps, int N, int C, int HW);
    void (*bn_bwd)(const nn_ctx *c, const float *x, const float *gamma, const float *save, const float *dy,
                   float *dx, float *dgamma, float *dbeta, int N, int C, int HW);
    void (*relu_fwd)(const nn_ctx *c, const float *x, float *y, size_t n);
    void (*relu_bwd)(const nn_ctx *c, const float *y, const float *dy, float *dx, size_t n);
    void (*add_fwd)(const nn_ctx *c, const float *a, const float *b, float *y, size_t n);
    void (*acc)(const nn_ctx *c, const float *dy, float *dx, size_t n);
    /* Element i draws its mask as element first+i of the global batch
     * (data-parallel ranks hold a slice of it). */
    void (*dropout_fwd)(const nn_ctx *c, const float *x, float *y, uint8_t *mask, float p, uint64_t seed,
                        uint64_t first, size_t n);
    void (*dropout_bwd)(const nn_ctx *c, const uint8_t *mask, const float *dy, float *dx, float p, size_t n);
    /* A batch of uint8 rows to the model's float input: y[i][c][p] =
     * lut[c·256 + raw[i·C·P + (channels_last ? p·C + c : c·P + p)]]. */
    void (*u8_normalize)(const nn_ctx *c, const uint8_t *raw, const float *lut, float *y, int n, int C, int64_t P,
                         int channels_last);
    void (*softmax_xent)(const nn_ctx *c, const float *logits, const int32_t *labels, float *dlogits, int N, int K,
                         nn_step_metrics *m);
    void (*sumsq)(const nn_ctx *c, const float *w, size_t n, double *acc);
    void (*metrics_fold)(const nn_ctx *c, const nn_step_metrics *m, nn_pass_acc *acc, int n, double l2,
                         int64_t step);
    void (*sgd_step)(const nn_ctx *c, float *w, const float *g, float *buf, size_t n, float lr, float momentum,
                     float l2);
    void (*adam_step)(const nn_ctx *c, float *w, const float *g, float *m, float *v, size_t n, float lr,
                      float beta1, float beta2, float eps, float l2, long t);
    void (*sgd_rows_step)(const nn_ctx *c, float *w, const nn_row_grad *g, size_t n_total, size_t cols, float *buf,
                          float lr, float momentum, float l2);
    void (*adam_rows_step)(const nn_ctx *c, float *w, const nn_row_grad *g, size_t n_total, size_t cols, float *m,
                           float *v, float lr, float beta1, float beta2, float eps, float l2, long t);
    void (*lazy_adam_step)(const nn_ctx *c, float *w, const nn_row_grad *g, size_t cols, float *m, float *v,
                           float lr, float beta1, float beta2, float eps, float l2, long t);
    /* ---- graphs (NULL in a table without them: the CPU's): bracket one
     * training step whose batch is already staged, named by key (the
     * same key: the same ops on the same buffers).  begin returns
     * NN_GRAPH_EAGER, _CAPTURE or _REPLAY; end launches what was captured
     * or is replayed (ok 0: the step failed on the host, launch nothing)
     * and returns 0, or -1 with the error kept for nn_ctx_check. ---- */
    int (*graph_begin)(const nn_ctx *c, uint64_t key);
    int (*graph_end)(const nn_ctx *c, int ok);
    void (*graph_counts)(const nn_ctx *c, long *captured, long *replayed);
};

enum { NN_GRAPH_EAGER = 0, NN_GRAPH_CAPTURE = 1, NN_GRAPH_REPLAY = 2 };

/* The CPU reference backend (nn_backend_cpu.c). */
extern const nn_backend nn_backend_cpu;
/* The CUDA backend (nn/cuda/nn_backend_cuda.cu), or NULL in a build
 * without CUDA or when its module cannot be loaded (nn_cuda_load.c: the
 * module, and with it cuBLAS and cuDNN, is loaded on first use, so a
 * program that never asks for a GPU never maps them). */
const nn_backend *nn_backend_cuda(void);
/* How many CUDA devices this process sees, or -1 with the reason in why
 * (no CUDA backend in this build, its module missing, no driver). */
int nn_cuda_devices(char *why, size_t why_len);

/* Makes a context on a device: picks its table, once.  Fails with a line
 * naming the device when this build has no backend for it. */
int nn_ctx_init(nn_ctx *c, nn_device dev, cds_err *err);
/* The same on a given device of its kind (cuda:1). */
int nn_ctx_init_at(nn_ctx *c, nn_place where, cds_err *err);
/* The first device error of the context's stream since it was made
 * (a CUDA backend keeps it; ops return nothing), as one line naming the
 * device, or 0 when there was none. */
int nn_ctx_check(const nn_ctx *c, cds_err *err);
/* The table's mem (above). */
int nn_ctx_mem(const nn_ctx *c, size_t *now, size_t *peak);
/* The table's graph entries; on a device without graphs begin returns
 * NN_GRAPH_EAGER, end returns 0 when ok, and the counts are 0. */
int nn_ctx_graph_begin(const nn_ctx *c, uint64_t key);
int nn_ctx_graph_end(const nn_ctx *c, int ok);
void nn_ctx_graph_counts(const nn_ctx *c, long *captured, long *replayed);

/* Device names as users write them: "cpu", "cuda:N" ("cuda" is cuda:0),
 * "auto".  nn_place_pick parses one and resolves it on this machine:
 * "auto" is cuda:0 when this build has the CUDA backend and a device is
 * visible, else the CPU, with one line in note (may be NULL) saying why;
 * "cuda:N" fails with a line naming the device and the fix when this build
 * has no CUDA backend or the machine no such device. */
int nn_place_parse(const char *s, nn_place *where, int *is_auto, cds_err *err);
int nn_place_pick(const char *s, nn_place *where, char *note, size_t note_len, cds_err *err);
/* "cpu" or "cuda:N", into buf (16 bytes are enough); returns buf. */
const char *nn_place_name(nn_place where, char *buf, size_t len);
/* The same with a given table (the generic kernel test runs each
 * registered one). */
int nn_ctx_init_backend(nn_ctx *c, const nn_backend *be, cds_err *err);
/* Releases what the context holds (the guard build's list); its buffers
 * must have been freed. */
void nn_ctx_release(nn_ctx *c);

/* Copies between a tensor or buffer on the context's device and the host. */
void nn_ctx_to_host(const nn_ctx *c, void *host, const void *src, size_t bytes);
void nn_ctx_from_host(const nn_ctx *c, void *dst, const void *host, size_t bytes);
/* The backend's stage (above); dst when bytes is 0. */
const void *nn_ctx_stage(const nn_ctx *c, void *dst, const void *host, size_t bytes);
/* Device memory of the context, zeroed; NULL when out of memory. */
void *nn_ctx_alloc(const nn_ctx *c, size_t bytes);
void nn_ctx_free(const nn_ctx *c, void *p, size_t bytes);
/* Host memory the context's device copies from fastest (the table's
 * host_alloc): a data loader builds its batches there. */
void *nn_ctx_host_alloc(const nn_ctx *c, size_t bytes);
void nn_ctx_host_free(const nn_ctx *c, void *p, size_t bytes);

#endif
