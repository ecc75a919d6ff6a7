/* nn_ops: the operations of the engine on tensors, dispatched on the device
 * the tensors carry.  Model code calls only these, so a CUDA backend adds its
 * kernels here (one `case NN_CUDA`) without touching models, optimisers or
 * the trainer.  Every op checks that its tensors share one device and returns
 * -1 with a message naming the op otherwise, or when the device has no
 * backend in this build.  Semantics (overwrite vs accumulate, layouts) are
 * those of nn_kern_cpu.h. */
#ifndef CDS_NN_OPS_H
#define CDS_NN_OPS_H

#include "cds_err.h"
#include "nn_kern_cpu.h"
#include "nn_tensor.h"

/* x [N, I] (any shape whose rows are I long), w [O, I], b [O] or NULL, y [N, O]. */
int nn_op_linear_fwd(const nn_tensor *x, const nn_tensor *w, const nn_tensor *b, nn_tensor *y, cds_err *err);
int nn_op_linear_bwd(const nn_tensor *x, const nn_tensor *w, const nn_tensor *dy, nn_tensor *dx, nn_tensor *dw,
                     nn_tensor *db, cds_err *err);
/* The batch's plan (nn_cpu_sparse_plan), in host memory: idx are N rows
 * of K int32 indices on the host, work nn_cpu_sparse_plan_work(N, K) bytes. */
int nn_op_sparse_plan(const int32_t *idx, int N, int K, int dim, void *work, nn_sparse_plan *pl, cds_err *err);
int nn_op_sparse_linear_fwd(const nn_sparse_plan *pl, int N, const nn_tensor *w, const nn_tensor *b, nn_tensor *y,
                            cds_err *err);
/* The dense weight gradient, scattered (dw += ...). */
int nn_op_sparse_linear_bwd(const int32_t *idx, int N, int K, const nn_tensor *dy, nn_tensor *dw, nn_tensor *db,
                            cds_err *err);
/* The weight gradient as its touched rows (nn_cpu_sparse_linear_bwd_rows):
 * dw [I, O] receives the plan's n_rows packed rows from its start; dw NULL
 * computes db alone (the rows stay sums, nn_row_grad). */
int nn_op_sparse_linear_bwd_rows(const nn_sparse_plan *pl, int N, const nn_tensor *dy, nn_tensor *dw, nn_tensor *db,
                                 cds_err *err);
int nn_op_conv2d_fwd(const nn_conv_geom *g, const nn_tensor *x, const nn_tensor *w, const nn_tensor *b, nn_tensor *y,
                     float *work, cds_err *err);
int nn_op_conv2d_bwd(const nn_conv_geom *g, const nn_tensor *x, const nn_tensor *w, const nn_tensor *dy,
                     nn_tensor *dx, nn_tensor *dw, nn_tensor *db, float *work, cds_err *err);
int nn_op_maxpool_fwd(const nn_pool_geom *g, const nn_tensor *x, nn_tensor *y, int32_t *argmax, cds_err *err);
int nn_op_maxpool_bwd(const nn_pool_geom *g, const int32_t *argmax, const nn_tensor *dy, nn_tensor *dx,
                      cds_err *err);
int nn_op_avgpool_fwd(const nn_pool_geom *g, const nn_tensor *x, nn_tensor *y, cds_err *err);
int nn_op_avgpool_bwd(const nn_pool_geom *g, const nn_tensor *dy, nn_tensor *dx, cds_err *err);
int nn_op_gap_fwd(const nn_tensor *x, nn_tensor *y, cds_err *err);
int nn_op_gap_bwd(const nn_tensor *dy, nn_tensor *dx, cds_err *err);
/* Batch norm over channel dimension 1; save holds 2·C floats (mean, invstd). */
int nn_op_bn_fwd(const nn_tensor *x, const nn_tensor *gamma, const nn_tensor *beta, nn_tensor *run_mean,
                 nn_tensor *run_var, nn_tensor *y, float *save, int train, float momentum, float eps, cds_err *err);
int nn_op_bn_bwd(const nn_tensor *x, const nn_tensor *gamma, const float *save, const nn_tensor *dy, nn_tensor *dx,
                 nn_tensor *dgamma, nn_tensor *dbeta, cds_err *err);
int nn_op_relu_fwd(const nn_tensor *x, nn_tensor *y, cds_err *err);
int nn_op_relu_bwd(const nn_tensor *y, const nn_tensor *dy, nn_tensor *dx, cds_err *err);
int nn_op_add_fwd(const nn_tensor *a, const nn_tensor *b, nn_tensor *y, cds_err *err);
int nn_op_dropout_fwd(const nn_tensor *x, nn_tensor *y, uint8_t *mask, float p, uint64_t seed, cds_err *err);
int nn_op_dropout_bwd(const uint8_t *mask, const nn_tensor *dy, nn_tensor *dx, float p, cds_err *err);
/* dx += dy (the backward of add and of an identity shortcut). */
int nn_op_acc(const nn_tensor *dy, nn_tensor *dx, cds_err *err);
int nn_op_zero(nn_tensor *t, cds_err *err);
/* logits [N, K]; labels on the host.  *loss gets the mean cross-entropy. */
int nn_op_softmax_xent(const nn_tensor *logits, const int32_t *labels, nn_tensor *dlogits, double *loss, int *top1,
                       int *top5, cds_err *err);
int nn_op_sgd_step(nn_tensor *w, const nn_tensor *g, nn_tensor *buf, float lr, float momentum, float l2,
                   cds_err *err);
int nn_op_adam_step(nn_tensor *w, const nn_tensor *g, nn_tensor *m, nn_tensor *v, float lr, float beta1, float beta2,
                    float eps, float l2, long t, cds_err *err);
/* The exact steps, and lazy Adam, over a row-sparse gradient of a 2-D w
 * (nn_rows.h; its rows and plan on the host, dy on w's device). */
int nn_op_sgd_rows_step(nn_tensor *w, const nn_row_grad *g, nn_tensor *buf, float lr, float momentum, float l2,
                        cds_err *err);
int nn_op_adam_rows_step(nn_tensor *w, const nn_row_grad *g, nn_tensor *m, nn_tensor *v, float lr, float beta1,
                         float beta2, float eps, float l2, long t, cds_err *err);
int nn_op_lazy_adam_step(nn_tensor *w, const nn_row_grad *g, nn_tensor *m, nn_tensor *v, float lr, float beta1,
                         float beta2, float eps, float l2, long t, cds_err *err);
int nn_op_sumsq(const nn_tensor *w, double *out, cds_err *err);

#endif
