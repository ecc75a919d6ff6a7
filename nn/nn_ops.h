/* nn_ops: the operations of the engine on tensors, run by the backend of the
 * context they are given (nn_backend.h).  Model code, optimisers and the
 * trainer call only these, so a CUDA backend plugs in by its table without
 * touching them.  Every op checks that its tensors and buffers are on the
 * context's device and returns -1 with a message naming the op otherwise.
 * Semantics (overwrite vs accumulate, layouts) are those of nn_kern_cpu.h,
 * the reference.  Every pointer behind a tensor or buffer is device memory:
 * no op takes host data, and none returns a value to the host (the loss and
 * its counts go to a device record, nn_step_metrics / nn_pass_acc). */
#ifndef CDS_NN_OPS_H
#define CDS_NN_OPS_H

#include "cds_err.h"
#include "nn_backend.h"
#include "nn_geom.h"
#include "nn_rows.h"
#include "nn_tensor.h"

/* ---- workspace sizes (bytes) for this context's backend ---- */
size_t nn_op_conv2d_work(const nn_ctx *c, const nn_conv_geom *g);
/* The sparse plan of a batch of N rows of K indices (its buffer). */
size_t nn_op_sparse_plan_work(const nn_ctx *c, int N, int K);

/* x [N, I] (any shape whose rows are I long), w [O, I], b [O] or NULL, y [N, O]. */
int nn_op_linear_fwd(const nn_ctx *c, const nn_tensor *x, const nn_tensor *w, const nn_tensor *b, nn_tensor *y,
                     cds_err *err);
int nn_op_linear_bwd(const nn_ctx *c, const nn_tensor *x, const nn_tensor *w, const nn_tensor *dy, nn_tensor *dx,
                     nn_tensor *dw, nn_tensor *db, cds_err *err);
/* The batch's plan (nn_rows.h) from idx, N rows of K int32 indices in
 * [0, dim), into plan (nn_op_sparse_plan_work(N, K) bytes); the plan is
 * device data, read by the sparse ops and the row-sparse steps. */
int nn_op_sparse_plan(const nn_ctx *c, const nn_buf *idx, int N, int K, int dim, nn_buf *plan, cds_err *err);
int nn_op_sparse_linear_fwd(const nn_ctx *c, const nn_buf *plan, int N, const nn_tensor *w, const nn_tensor *b,
                            nn_tensor *y, cds_err *err);
/* The dense weight gradient, scattered (dw += ...). */
int nn_op_sparse_linear_bwd(const nn_ctx *c, const nn_buf *idx, int N, int K, const nn_tensor *dy, nn_tensor *dw,
                            nn_tensor *db, cds_err *err);
/* The weight gradient as its touched rows (nn_kern_cpu.h has the rule):
 * dw [I, O] receives the plan's rows packed from its start; dw NULL
 * computes db alone (the rows stay sums, nn_row_grad). */
/* The plan's distinct rows (ascending) into rows (room for them all), *n
 * of them. */
int nn_op_sparse_plan_rows(const nn_ctx *c, const nn_buf *plan, nn_buf *rows, size_t *n, cds_err *err);
int nn_op_sparse_linear_bwd_rows(const nn_ctx *c, const nn_buf *plan, int N, const nn_tensor *dy, nn_tensor *dw,
                                 nn_tensor *db, cds_err *err);
/* work: nn_op_conv2d_work(g) bytes. */
int nn_op_conv2d_fwd(const nn_ctx *c, const nn_conv_geom *g, const nn_tensor *x, const nn_tensor *w,
                     const nn_tensor *b, nn_tensor *y, nn_buf *work, cds_err *err);
int nn_op_conv2d_bwd(const nn_ctx *c, const nn_conv_geom *g, const nn_tensor *x, const nn_tensor *w,
                     const nn_tensor *dy, nn_tensor *dx, nn_tensor *dw, nn_tensor *db, nn_buf *work, cds_err *err);
/* argmax: N·C·OH·OW int32 winners. */
int nn_op_maxpool_fwd(const nn_ctx *c, const nn_pool_geom *g, const nn_tensor *x, nn_tensor *y, nn_buf *argmax,
                      cds_err *err);
int nn_op_maxpool_bwd(const nn_ctx *c, const nn_pool_geom *g, const nn_buf *argmax, const nn_tensor *dy,
                      nn_tensor *dx, cds_err *err);
int nn_op_avgpool_fwd(const nn_ctx *c, const nn_pool_geom *g, const nn_tensor *x, nn_tensor *y, cds_err *err);
int nn_op_avgpool_bwd(const nn_ctx *c, const nn_pool_geom *g, const nn_tensor *dy, nn_tensor *dx, cds_err *err);
int nn_op_gap_fwd(const nn_ctx *c, const nn_tensor *x, nn_tensor *y, cds_err *err);
int nn_op_gap_bwd(const nn_ctx *c, const nn_tensor *dy, nn_tensor *dx, cds_err *err);
/* Batch norm over channel dimension 1; save holds 2·C floats (mean, invstd). */
int nn_op_bn_fwd(const nn_ctx *c, const nn_tensor *x, const nn_tensor *gamma, const nn_tensor *beta,
                 nn_tensor *run_mean, nn_tensor *run_var, nn_tensor *y, nn_buf *save, int train, float momentum,
                 float eps, cds_err *err);
int nn_op_bn_bwd(const nn_ctx *c, const nn_tensor *x, const nn_tensor *gamma, const nn_buf *save,
                 const nn_tensor *dy, nn_tensor *dx, nn_tensor *dgamma, nn_tensor *dbeta, cds_err *err);
int nn_op_relu_fwd(const nn_ctx *c, const nn_tensor *x, nn_tensor *y, cds_err *err);
int nn_op_relu_bwd(const nn_ctx *c, const nn_tensor *y, const nn_tensor *dy, nn_tensor *dx, cds_err *err);
int nn_op_add_fwd(const nn_ctx *c, const nn_tensor *a, const nn_tensor *b, nn_tensor *y, cds_err *err);
/* mask: x->n bytes of 0/1; x's elements are elements first.. of the
 * global batch, by which masks are drawn. */
int nn_op_dropout_fwd(const nn_ctx *c, const nn_tensor *x, nn_tensor *y, nn_buf *mask, float p, uint64_t seed,
                      uint64_t first, cds_err *err);
/* n uint8 rows (raw, C·P bytes each, channels first or last) into y
 * [n, C, P] through lut (C tables of 256 floats). */
int nn_op_u8_normalize(const nn_ctx *c, const nn_buf *raw, const nn_buf *lut, nn_tensor *y, int n, int C, int64_t P,
                       int channels_last, cds_err *err);
int nn_op_dropout_bwd(const nn_ctx *c, const nn_buf *mask, const nn_tensor *dy, nn_tensor *dx, float p,
                      cds_err *err);
/* dx += dy (the backward of add and of an identity shortcut). */
int nn_op_acc(const nn_ctx *c, const nn_tensor *dy, nn_tensor *dx, cds_err *err);
int nn_op_zero(const nn_ctx *c, nn_tensor *t, cds_err *err);
/* logits [N, K]; labels N int32; metrics one nn_step_metrics, which gets
 * the mean cross-entropy and the top-1/top-5 counts (and sumsq cleared). */
int nn_op_softmax_xent(const nn_ctx *c, const nn_tensor *logits, const nn_buf *labels, nn_tensor *dlogits,
                       nn_buf *metrics, cds_err *err);
/* metrics->sumsq += Σw² (in double). */
int nn_op_sumsq(const nn_ctx *c, const nn_tensor *w, nn_buf *metrics, cds_err *err);
/* Folds a batch of n rows at training step `step` into the pass's sums
 * (acc, one nn_pass_acc): its loss is xent + l2·sumsq. */
int nn_op_metrics_fold(const nn_ctx *c, const nn_buf *metrics, nn_buf *acc, int n, double l2, int64_t step,
                       cds_err *err);
int nn_op_sgd_step(const nn_ctx *c, nn_tensor *w, const nn_tensor *g, nn_tensor *buf, float lr, float momentum,
                   float l2, cds_err *err);
int nn_op_adam_step(const nn_ctx *c, nn_tensor *w, const nn_tensor *g, nn_tensor *m, nn_tensor *v, float lr,
                    float beta1, float beta2, float eps, float l2, long t, cds_err *err);
/* The exact steps, and lazy Adam, over a row-sparse gradient of a 2-D w
 * (nn_rows.h: a host descriptor of device data). */
int nn_op_sgd_rows_step(const nn_ctx *c, nn_tensor *w, const nn_row_grad *g, nn_tensor *buf, float lr,
                        float momentum, float l2, cds_err *err);
int nn_op_adam_rows_step(const nn_ctx *c, nn_tensor *w, const nn_row_grad *g, nn_tensor *m, nn_tensor *v, float lr,
                         float beta1, float beta2, float eps, float l2, long t, cds_err *err);
int nn_op_lazy_adam_step(const nn_ctx *c, nn_tensor *w, const nn_row_grad *g, nn_tensor *m, nn_tensor *v, float lr,
                         float beta1, float beta2, float eps, float l2, long t, cds_err *err);

#endif
