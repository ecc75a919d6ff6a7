/* kern_cuda: the CUDA kernels of the engine's CUDA backend, behind its
 * table (nn_backend_cuda.cu).  Private to nn/cuda/; C++ (nvcc) only.
 *
 * Every function here has the semantics of its CPU reference in
 * nn_kern_cpu.h (same name without the cuk_ prefix, kern_cpu_*.c): forward
 * kernels overwrite, backward kernels ACCUMULATE into every gradient they
 * are given, an input-gradient pointer may be NULL.  Every pointer is device
 * memory unless named host; geometry structs and nn_row_grad are host
 * descriptors (of device data).
 *
 * Every function only enqueues work on the stream it is given and returns
 * the launch's error (cudaGetLastError() after its launches, cudaSuccess when
 * there was nothing to do): the table keeps the first error in the context,
 * as a stream would, and the next copy to the host reports it.  None waits
 * for the device, except cuk_sparse_plan_rows, whose count is a host value.
 *
 * Where the CPU reference's order of operations is fixed for any device
 * (element-wise ops, masks, max-pool winners, a sum a single thread walks
 * in the reference's order) the kernel keeps that order, so results are
 * bit-identical: these files are compiled with --fmad=false, so that a*b+c
 * is not contracted into an FMA the CPU does not use.  Reductions over many
 * elements (batch norm, Σw², the loss) are summed in double in a fixed tree,
 * deterministic run to run; tests/test_nn_backend.c holds every kernel to
 * the CPU reference with the tolerance written beside each op. */
#ifndef CDS_NN_KERN_CUDA_H
#define CDS_NN_KERN_CUDA_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "nn_backend.h" /* nn_step_metrics, nn_pass_acc, nn_row_grad, nn_sparse_plan, nn_conv_geom, nn_pool_geom */
}
#include <string.h>

#define CUK_VARS_REUSE 8 /* cuk_vars_put_bytes looks this far back for an equal value */

/* ---- per-step values of a graphed step (cuda_graph.cu) ----
 * A CUDA graph replays its kernels with the arguments they were captured
 * with, so a value that changes from step to step (the optimisers'
 * coefficients: the learning rate and Adam's bias corrections; dropout's
 * seed; the step number the metrics record) cannot be a kernel argument of
 * a graphed step.  The kernels that take one also take a device pointer to
 * it: NULL (an eager call) reads the argument, else the value there.  The
 * wrappers below put their value into a cuk_vars block, in call order, and
 * pass its device address; cuk_vars_set copies the block's host side to
 * the device on the stream just before the graph is launched.  In a replay
 * (replay = 1) a wrapper puts its value and launches nothing: the graph
 * holds its kernel.  gv NULL: an eager call. */
typedef struct cuk_vars {
    unsigned char *host; /* cap bytes: this step's values, in call order */
    unsigned char *dev;  /* cap bytes of device memory, read by the graph's kernels */
    size_t used, cap;
    int replay;
    int overflow;        /* a value did not fit: the capture is not usable */
    int n;               /* values put this step (the last CUK_VARS_REUSE are reused when equal) */
    uint16_t at[CUK_VARS_REUSE], len[CUK_VARS_REUSE];
} cuk_vars;

/* Bytes of a block: a kernel parameter (cuk_vars_set passes it by value)
 * within the 4 KiB every CUDA device accepts. */
#define CUK_VARS_CAP 3840

/* v's bytes into the block, 16-byte aligned, or the place of an equal
 * value among the last CUK_VARS_REUSE (the optimiser's runs of
 * parameters alternate between two sets of coefficients, and a ResNet-50
 * has a hundred runs); its device address, or NULL when gv is NULL or on
 * overflow, which marks the block.  A capture and its replays put the same
 * values in the same order, so they lay the block out alike (cug_end
 * checks that they used the same bytes). */
static inline const void *cuk_vars_put_bytes(cuk_vars *gv, const void *v, size_t len)
{
    if (!gv)
        return nullptr;
    const int lo = gv->n > CUK_VARS_REUSE ? gv->n - CUK_VARS_REUSE : 0;
    for (int i = gv->n - 1; i >= lo; i--) {
        const int k = i % CUK_VARS_REUSE;
        if (gv->len[k] == len && memcmp(gv->host + gv->at[k], v, len) == 0)
            return gv->dev + gv->at[k];
    }
    size_t at = (gv->used + 15) & ~(size_t)15;
    if (at + len > gv->cap) {
        gv->overflow = 1;
        return nullptr;
    }
    memcpy(gv->host + at, v, len);
    gv->used = at + len;
    gv->at[gv->n % CUK_VARS_REUSE] = (uint16_t)at;
    gv->len[gv->n % CUK_VARS_REUSE] = (uint16_t)len;
    gv->n++;
    return gv->dev + at;
}

template <class T> static inline const T *cuk_vars_put(cuk_vars *gv, const T &v)
{
    return static_cast<const T *>(cuk_vars_put_bytes(gv, &v, sizeof v));
}

/* Whether a wrapper that has put its values launches its kernel. */
static inline bool cuk_vars_launch(const cuk_vars *gv)
{
    return !gv || !gv->replay;
}

/* Copies gv->host[0, used) to gv->dev on s, by a kernel that takes the
 * bytes as its argument: the host block may be rewritten at once. */
cudaError_t cuk_vars_set(cudaStream_t s, const cuk_vars *gv);

/* ---- element-wise (kern_cuda_elem.cu) ---- */
cudaError_t cuk_relu_fwd(cudaStream_t s, const float *x, float *y, size_t n);
cudaError_t cuk_relu_bwd(cudaStream_t s, const float *y, const float *dy, float *dx, size_t n);
cudaError_t cuk_add_fwd(cudaStream_t s, const float *a, const float *b, float *y, size_t n);
cudaError_t cuk_acc(cudaStream_t s, const float *dy, float *dx, size_t n);
/* The CPU's counter-based mask (kern_cpu_elem.c: mix64 of key + (first+i)·φ),
 * bit for bit. */
cudaError_t cuk_dropout_fwd(cudaStream_t s, const float *x, float *y, uint8_t *mask, float p, uint64_t seed,
                            uint64_t first, size_t n, cuk_vars *gv);
cudaError_t cuk_dropout_bwd(cudaStream_t s, const uint8_t *mask, const float *dy, float *dx, float p, size_t n);
/* nn_cpu_u8_normalize: a table lookup per element, bit-identical. */
cudaError_t cuk_u8_normalize(cudaStream_t s, const uint8_t *raw, const float *lut, float *y, int n, int C, int64_t P,
                             int channels_last);
/* y[n, o] += b[o] (the bias after a GEMM); dst [N, O] row-major. */
cudaError_t cuk_bias_rows(cudaStream_t s, float *y, const float *b, int N, int O);
/* db[o] += Σ_n dy[n, o], n ascending (the bias gradient of a linear layer). */
cudaError_t cuk_bias_grad_rows(cudaStream_t s, const float *dy, float *db, int N, int O);
/* y[n, c, :] += b[c] over HW elements (a convolution's bias). */
cudaError_t cuk_bias_nchw(cudaStream_t s, float *y, const float *b, int N, int C, int HW);
/* db[c] += Σ over n and hw of dy[n, c, hw] (a convolution's bias gradient). */
cudaError_t cuk_bias_grad_nchw(cudaStream_t s, const float *dy, float *db, int N, int C, int HW);

/* ---- the loss and the metrics (kern_cuda_loss.cu) ---- */
/* m->xent, m->top1, m->top5 as nn_cpu_softmax_xent computes them (mean
 * cross-entropy in double, ties counted against the label), m->sumsq = 0;
 * dlogits = (softmax - onehot)/N, or NULL. */
cudaError_t cuk_softmax_xent(cudaStream_t s, const float *logits, const int32_t *labels, float *dlogits, int N,
                             int K, nn_step_metrics *m);
/* *acc += Σ w², in double: parts of w summed by blocks of their own into
 * scratch (cuk_sumsq_scratch(n) doubles), then added in part order. */
size_t cuk_sumsq_scratch(size_t n);
cudaError_t cuk_sumsq(cudaStream_t s, const float *w, size_t n, double *acc, double *scratch);
/* The CPU table's cpu_metrics_fold (nn_backend_cpu.c), on the device. */
cudaError_t cuk_metrics_fold(cudaStream_t s, const nn_step_metrics *m, nn_pass_acc *acc, int n, double l2,
                             int64_t step, cuk_vars *gv);

/* ---- optimiser steps (kern_cuda_optim.cu): nn_cpu_sgd_step and friends
 * (kern_cpu_optim.c), one fused kernel each.  For the row-sparse forms, g is
 * a host descriptor: when g->plan is set it is a DEVICE pointer to the plan's
 * descriptor (its rows, n_rows, start, keys, K are read on the device, the
 * host never learns n_rows); otherwise g->rows / g->n_rows (host count) list
 * the rows.  The values are g->rg when set, else the sums of g->dy rows the
 * plan names (nn_rows.h), summed in ascending position as the CPU does.
 * gv: the values block of a graphed step, or NULL (above). ---- */
cudaError_t cuk_sgd_step(cudaStream_t s, float *w, const float *g, float *buf, size_t n, float lr, float momentum,
                         float l2, cuk_vars *gv);
cudaError_t cuk_adam_step(cudaStream_t s, float *w, const float *g, float *m, float *v, size_t n, float lr,
                          float beta1, float beta2, float eps, float l2, long t, cuk_vars *gv);
cudaError_t cuk_sgd_rows_step(cudaStream_t s, float *w, const nn_row_grad *g, size_t n_total, size_t cols,
                              float *buf, float lr, float momentum, float l2, cuk_vars *gv);
cudaError_t cuk_adam_rows_step(cudaStream_t s, float *w, const nn_row_grad *g, size_t n_total, size_t cols,
                               float *m, float *v, float lr, float beta1, float beta2, float eps, float l2, long t,
                               cuk_vars *gv);
cudaError_t cuk_lazy_adam_step(cudaStream_t s, float *w, const nn_row_grad *g, size_t cols, float *m, float *v,
                               float lr, float beta1, float beta2, float eps, float l2, long t, cuk_vars *gv);

/* ---- pooling and batch norm (kern_cuda_pool.cu) ---- */
cudaError_t cuk_maxpool_fwd(cudaStream_t s, const nn_pool_geom *g, const float *x, float *y, int32_t *argmax);
cudaError_t cuk_maxpool_bwd(cudaStream_t s, const nn_pool_geom *g, const int32_t *argmax, const float *dy,
                            float *dx);
cudaError_t cuk_avgpool_fwd(cudaStream_t s, const nn_pool_geom *g, const float *x, float *y);
cudaError_t cuk_avgpool_bwd(cudaStream_t s, const nn_pool_geom *g, const float *dy, float *dx);
cudaError_t cuk_gap_fwd(cudaStream_t s, const float *x, float *y, int N, int C, int HW);
cudaError_t cuk_gap_bwd(cudaStream_t s, const float *dy, float *dx, int N, int C, int HW);
/* Doubles of device scratch the two batch-norm reductions below need:
 * each channel's N·HW values are split into parts that blocks of their
 * own sum (a channel per block would leave most of a GPU idle on the early
 * layers' 64 channels), and the parts are added in a fixed order. */
size_t cuk_bn_scratch(int N, int C, int HW);
/* save: 2·C floats, the batch mean then 1/sqrt(var+eps) per channel;
 * scratch: cuk_bn_scratch(N, C, HW) doubles. */
cudaError_t cuk_bn_fwd_train(cudaStream_t s, const float *x, const float *gamma, const float *beta, float *y,
                             float *save, float *run_mean, float *run_var, float momentum, float eps, int N, int C,
                             int HW, double *scratch);
cudaError_t cuk_bn_fwd_infer(cudaStream_t s, const float *x, const float *gamma, const float *beta,
                             const float *run_mean, const float *run_var, float *y, float eps, int N, int C, int HW);
cudaError_t cuk_bn_bwd(cudaStream_t s, const float *x, const float *gamma, const float *save, const float *dy,
                       float *dx, float *dgamma, float *dbeta, int N, int C, int HW, double *scratch);

/* ---- the sparse first layer (kern_cuda_sparse.cu).  The plan buffer
 * starts with an nn_sparse_plan descriptor whose pointers point into the
 * same buffer (device addresses), written by a kernel: the layout the CPU
 * plan has (rows ascending and distinct, start[n_rows + 1], keys sorted with
 * key = (uint64)row << 32 | position), plus whatever else this backend keeps
 * after it (a per-sample ordering for the forward).  Sorting uses CUB. ---- */
/* Bytes of the plan buffer for N rows of K indices (descriptor, lists,
 * CUB's temporary storage); host only, no device needed. */
size_t cuk_sparse_plan_work(int N, int K);
cudaError_t cuk_sparse_plan(cudaStream_t s, const int32_t *idx, int N, int K, int dim, void *plan);
/* y[n, :] = b + Σ w[i, :] over row n's indices by ascending i (bit-identical
 * to nn_cpu_sparse_linear_fwd_rows). */
cudaError_t cuk_sparse_linear_fwd(cudaStream_t s, const void *plan, const float *w, const float *b, float *y, int N,
                                  int O);
cudaError_t cuk_sparse_linear_bwd(cudaStream_t s, const int32_t *idx, const float *dy, float *dw, float *db, int N,
                                  int K, int O);
/* Copies the plan's rows into rows (device) and returns their count: waits
 * for the stream (the count is a host value).  (size_t)-1 on a CUDA error,
 * which *e gets. */
size_t cuk_sparse_plan_rows(cudaStream_t s, const void *plan, int32_t *rows, cudaError_t *e);
cudaError_t cuk_sparse_linear_bwd_rows(cudaStream_t s, const void *plan, const float *dy, float *rg, float *db, int N,
                                       int O);

#endif
