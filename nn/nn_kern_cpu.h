/* nn_kern_cpu: the CPU reference kernels of the training engine.
 *
 * Every kernel works on plain float arrays in row-major NCHW order and knows
 * nothing about tensors, devices or models: the CPU backend's table
 * (nn_backend_cpu.c) calls these, and nothing else in the engine does; a
 * CUDA backend has its own table.  Because they are the reference
 * the CUDA backend is checked against, they favour being obviously right, and
 * the fast paths (GEMM through OpenBLAS, im2col) are themselves checked against
 * naive loops in the tests.
 *
 * Conventions shared by every kernel:
 *   - forward kernels overwrite their outputs;
 *   - backward kernels ACCUMULATE (+=) into every gradient they are given
 *     (input gradient and parameter gradients alike), so a tensor read by two
 *     layers (a residual fork) gets the sum of both contributions, and the
 *     caller zeroes gradients once before a backward pass;
 *   - an input-gradient pointer may be NULL when nobody needs it (the first
 *     layer of a model), and the kernel then skips that work;
 *   - weight layouts are PyTorch's (linear [O,I], conv [OC,IC,KH,KW]) except
 *     the sparse linear layer, whose weight is [I,O] like nn.EmbeddingBag so a
 *     row per active index is contiguous;
 *   - results do not depend on timing: the same inputs and the same OpenBLAS
 *     thread count give bit-identical outputs. */
#ifndef CDS_NN_KERN_CPU_H
#define CDS_NN_KERN_CPU_H

#ifndef CDS_NN_INTERNAL
#error "nn_kern_cpu.h is private to nn/: include nn_model.h, nn_train.h, nn_ops.h and the other public nn headers (a white-box test under tests/ adds c_args : nn_private_args)"
#endif

#include <stddef.h>
#include <stdint.h>

#include "nn_geom.h"
#include "nn_rows.h"

/* ---- linear: y[N,O] = x[N,D] · w[O,D]^T + b[O] (D, not I: cblas.h brings
 * <complex.h>, whose macro I would eat a parameter of that name) ---- */
void nn_cpu_linear_fwd(const float *x, const float *w, const float *b, float *y, int N, int D, int O);
/* dx[N,D] += dy·w; dw[O,D] += dy^T·x; db[O] += Σ_n dy.  b/db may be NULL. */
void nn_cpu_linear_bwd(const float *x, const float *w, const float *dy, float *dx, float *dw, float *db, int N, int D,
                       int O);

/* ---- sparse linear: the dense linear layer applied to a multi-hot vector.
 * Row n of the input is K indices idx[n*K .. n*K+K) into [0, I); the dense
 * input it stands for has x[n,i] = number of times i appears in that row, so
 * y[n,:] = b + Σ_k w[idx[n,k], :] with w laid out [I,O].  Indices are checked
 * by the caller (nn_ops), not here. ---- */
/* The gather, sample by sample: the plain form the row-wise forward below is
 * tested against (training uses the row-wise one). */
void nn_cpu_sparse_linear_fwd(const int32_t *idx, const float *w, const float *b, float *y, int N, int K, int O);
/* dw[idx[n,k], :] += dy[n,:]; db += Σ_n dy[n,:] (the dense gradient, for a
 * model without an optimiser: gradient checks). */
void nn_cpu_sparse_linear_bwd(const int32_t *idx, const float *dy, float *dw, float *db, int N, int K, int O);
/* The row-wise form, which training uses: a plan of the batch's positions
 * grouped by index (nn_rows.h), built once a batch and read by both passes
 * (n_rows ≤ min(N·K, I)).  work: nn_cpu_sparse_plan_work(N, K) bytes,
 * 8-aligned, which the plan points into; N·K must be below 2^32. */
size_t nn_cpu_sparse_plan_work(int N, int K);
void nn_cpu_sparse_plan(nn_sparse_plan *pl, const int32_t *idx, int N, int K, int I, void *work);
/* y[n,:] = b + Σ w[i,:] over the indices i of row n, by ascending i (the same
 * terms as nn_cpu_sparse_linear_fwd, in another order). */
void nn_cpu_sparse_linear_fwd_rows(const nn_sparse_plan *pl, const float *w, const float *b, float *y, int N, int O);
/* The weight gradient as its touched rows only, packed, the one kernel
 * that OVERWRITES its weight gradient: rg[r,:] = Σ dy[n,:] over the
 * positions of rows[r], summed in (n,k) order, so it equals row rows[r] of
 * nn_cpu_sparse_linear_bwd's dw value for value; db += Σ_n dy[n,:] (may be
 * NULL).  rg NULL computes db alone: training leaves the rows as sums for
 * the optimiser step (nn_row_grad).  Nothing is read or written for an
 * untouched row. */
void nn_cpu_sparse_linear_bwd_rows(const nn_sparse_plan *pl, const float *dy, float *rg, float *db, int N, int O);
/* The plan's distinct rows (ascending) into rows; returns n_rows. */
size_t nn_cpu_sparse_plan_rows(const nn_sparse_plan *pl, int32_t *rows);

/* ---- conv2d (geometry in nn_geom.h) ---- */
/* Floats of scratch the forward and backward kernels need (im2col buffers
 * and private weight gradients, per thread). */
size_t nn_cpu_conv2d_work(const nn_conv_geom *g);
/* y[N,OC,OH,OW]; b may be NULL. */
void nn_cpu_conv2d_fwd(const nn_conv_geom *g, const float *x, const float *w, const float *b, float *y, float *work);
/* dx (may be NULL), dw, db (may be NULL) accumulate. */
void nn_cpu_conv2d_bwd(const nn_conv_geom *g, const float *x, const float *w, const float *dy, float *dx, float *dw,
                       float *db, float *work);

/* ---- pooling (geometry in nn_geom.h) ---- */
/* Max pooling; padding counts as -infinity (PyTorch).  argmax[N,C,OH,OW]
 * records the flat h*W+w of the winner within its (n,c) plane (the first one
 * on ties), for the backward pass. */
void nn_cpu_maxpool_fwd(const nn_pool_geom *g, const float *x, float *y, int32_t *argmax);
void nn_cpu_maxpool_bwd(const nn_pool_geom *g, const int32_t *argmax, const float *dy, float *dx);
/* Average pooling; padding counts as zeros and the divisor is always k*k
 * (PyTorch's count_include_pad=True). */
void nn_cpu_avgpool_fwd(const nn_pool_geom *g, const float *x, float *y);
void nn_cpu_avgpool_bwd(const nn_pool_geom *g, const float *dy, float *dx);
/* Global average pool: x[N,C,HW] -> y[N,C]. */
void nn_cpu_gap_fwd(const float *x, float *y, int N, int C, int HW);
void nn_cpu_gap_bwd(const float *dy, float *dx, int N, int C, int HW);

/* ---- batch normalisation over (N, HW) per channel; HW = 1 for [N,C] ----
 * Training: normalises with the batch mean and biased variance, saves mean and
 * 1/sqrt(var+eps) per channel for the backward pass, and updates the running
 * statistics as PyTorch does: run = (1-momentum)·run + momentum·batch, with
 * the unbiased variance (N·HW/(N·HW-1)) for run_var.  Statistics are summed
 * in double so the result does not drift with the batch size. */
void nn_cpu_bn_fwd_train(const float *x, const float *gamma, const float *beta, float *y, float *save_mean,
                         float *save_invstd, float *run_mean, float *run_var, float momentum, float eps, int N, int C,
                         int HW);
void nn_cpu_bn_fwd_infer(const float *x, const float *gamma, const float *beta, const float *run_mean,
                         const float *run_var, float *y, float eps, int N, int C, int HW);
/* Backward of the training-mode forward. */
void nn_cpu_bn_bwd(const float *x, const float *gamma, const float *save_mean, const float *save_invstd,
                   const float *dy, float *dx, float *dgamma, float *dbeta, int N, int C, int HW);

/* ---- element-wise ---- */
void nn_cpu_relu_fwd(const float *x, float *y, size_t n);         /* y may equal x */
void nn_cpu_relu_bwd(const float *y, const float *dy, float *dx, size_t n); /* uses the output: dx += dy·[y>0] */
void nn_cpu_add_fwd(const float *a, const float *b, float *y, size_t n);
/* dx += dy (the backward of add and of an identity shortcut). */
void nn_cpu_acc(const float *dy, float *dx, size_t n);
/* Dropout (inverted): y = x·mask/(1-p), mask[i] = 1 with probability 1-p,
 * drawn from a counter-based generator of (seed, i) alone, so the mask does
 * not depend on threads or on what ran before.  mask gets 0/1 bytes. */
void nn_cpu_dropout_fwd(const float *x, float *y, uint8_t *mask, float p, uint64_t seed, size_t n);
/* The same for elements first .. first+n-1 of a larger tensor: element i
 * here draws as element first+i there, so a data-parallel rank holding rows
 * [r0, r0+n) of a global batch draws the masks one process would. */
void nn_cpu_dropout_fwd_at(const float *x, float *y, uint8_t *mask, float p, uint64_t seed, uint64_t first, size_t n);
void nn_cpu_dropout_bwd(const uint8_t *mask, const float *dy, float *dx, float p, size_t n);
/* uint8 rows to floats through a table per channel (nn_data's
 * normalisation, tabulated): y[i][c][p] = lut[c·256 + v], v the byte of
 * channel c, element p of row i, stored channels first or last. */
void nn_cpu_u8_normalize(const uint8_t *raw, const float *lut, float *y, int n, int C, int64_t P, int channels_last);

/* ---- softmax cross-entropy on class ids ----
 * logits[N,K], labels[N] in [0,K).  Returns the mean loss over the batch and
 * writes dlogits = (softmax - onehot)/N (overwritten, it is where the backward
 * pass starts); dlogits may be NULL (evaluation).  *top1 and *top5 (may be
 * NULL) get the number of rows whose label is among the 1 / 5 largest logits
 * (ties counted against the label: a label tied with others is ranked after
 * them, so a constant output scores no hits). */
double nn_cpu_softmax_xent(const float *logits, const int32_t *labels, float *dlogits, int N, int K, int *top1,
                           int *top5);

/* ---- optimiser steps over one parameter tensor of n floats ----
 * g is the gradient of the data loss; l2 > 0 adds the gradient of
 * l2·Σw² (2·l2·w) first, as Keras's l2(λ) regulariser.  Formulas are
 * PyTorch's: SGD buf = mu·buf + g, w -= lr·buf; Adam with bias correction,
 * w -= lr·m̂/(sqrt(v̂)+eps), t counting from 1. */
void nn_cpu_sgd_step(float *w, const float *g, float *buf, size_t n, float lr, float momentum, float l2);
void nn_cpu_adam_step(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                      float eps, float l2, long t);
/* The same two steps, bit for bit, for a [n_total, cols] weight whose
 * gradient is row-sparse (nn_row_grad, either form).  Every row is
 * updated: the dense gradient is never built, cleared or read. */
void nn_cpu_adam_rows_step(float *w, const nn_row_grad *g, size_t n_total, size_t cols, float *m, float *v, float lr,
                           float beta1, float beta2, float eps, float l2, long t);
void nn_cpu_sgd_rows_step(float *w, const nn_row_grad *g, size_t n_total, size_t cols, float *buf, float lr,
                          float momentum, float l2);
/* Lazy Adam (torch.optim.SparseAdam 1.13) over the listed rows of a
 * [*, cols] weight and its row-sparse gradient g; other rows, and their m
 * and v, are not touched.  l2 > 0 adds 2·l2·w to the listed rows' gradient
 * only.  w -= lr·sqrt(1-β2^t)/(1-β1^t) · m/(sqrt(v) + eps). */
void nn_cpu_lazy_adam_step(float *w, const nn_row_grad *g, size_t cols, float *m, float *v, float lr, float beta1,
                           float beta2, float eps, float l2, long t);
/* λ·Σw² in double (the regularisation term of the loss). */
double nn_cpu_sumsq(const float *w, size_t n);

#endif
