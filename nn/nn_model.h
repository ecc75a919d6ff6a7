/* nn_model: a network built from a model spec (docs/models.md), with its
 * parameters, batch-norm buffers and every activation it needs for its
 * largest batch.
 *
 * The model is a list of nodes in execution order; each node reads one or two
 * earlier nodes (two for a residual add).  Forward runs the list in order,
 * backward in reverse, accumulating into the gradient of each node's inputs,
 * so a node read twice (the fork before a residual block) receives the sum.
 * Parameters are created in PyTorch's named_parameters() order, with its
 * names, which is what checkpoints and the golden tests rely on.
 *
 * A model lives on one device, through its context (nn_model_ctx): the
 * weights, gradients, buffers and activations are device memory, which the
 * caller reads and writes with nn_model_read / nn_model_write, never
 * through a tensor's pointer. */
#ifndef CDS_NN_MODEL_H
#define CDS_NN_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include "cds_err.h"
#include "nn_backend.h"
#include "nn_rows.h"
#include "nn_tensor.h"

typedef struct nn_model nn_model;

typedef struct nn_param {
    const char *name;
    nn_tensor w;    /* the weights */
    nn_tensor g;    /* their gradient after nn_model_backward (data loss only; optimisers add L2) */
    int decay;      /* 1 for convolution and linear weights: the L2 term applies */
    int embedding;  /* 1 for a sparse mlp's fc0.weight [dim, out]: a batch reads only the rows of its indices */
    /* Row-sparse gradient (nn_model_set_row_grads, embedding weights only):
     * when row_grad is set, nn_model_backward leaves in rows the gradient
     * as its rows of the batch's distinct input indices (nn_rows.h), as
     * sums the optimiser step takes; g has no data (its dense buffer is
     * freed), and every row not listed has a gradient of exactly zero.
     * rows.plan and rows.dy point at the model's plan and dy on the device
     * (rows.rows and n_rows stay empty: the backend reads them from the
     * plan): valid until the next forward pass. */
    int row_grad;
    nn_row_grad rows;
} nn_param;

typedef struct nn_buffer {
    const char *name; /* "<bn>.running_mean", "<bn>.running_var" */
    nn_tensor t;
} nn_buffer;

typedef struct nn_metrics {
    int n;          /* rows */
    double loss;    /* mean cross-entropy of the batch plus the L2 term */
    double xent;    /* mean cross-entropy alone */
    int top1, top5; /* rows whose label is among the 1 / 5 best logits */
} nn_metrics;

/* Builds the model of a spec's "model" object (JSON text of that object),
 * sized for batches of at most max_batch rows, with weights initialised
 * from seed.  Errors name the field and what is allowed. */
nn_model *nn_model_new(const char *model_json, int max_batch, uint64_t seed, cds_err *err);
/* The same on a given device (nn_place_pick); tf32 1 lets float32 GEMMs and
 * convolutions use TF32 there (the train spec's "tf32"). */
nn_model *nn_model_new_at(const char *model_json, int max_batch, uint64_t seed, nn_place where, int tf32,
                          cds_err *err);
void nn_model_free(nn_model *m);
/* Checks a model spec as nn_model_new would, without allocating weights or
 * activations (cheap even for VGG-16); *nparams (may be NULL) gets the
 * parameter count. */
int nn_model_validate(const char *model_json, size_t *nparams, cds_err *err);

/* The spec as canonical JSON (keys sorted), for checkpoints. */
const char *nn_model_spec(const nn_model *m);
const char *nn_model_arch(const nn_model *m);
int nn_model_classes(const nn_model *m);
/* Shape of one sample, channels first ({C,H,W} or {I}); for a sparse model
 * {nnz} and *sparse_dim gets the index range (else 0). */
int nn_model_input(const nn_model *m, int shape[3], int *sparse_dim);
int nn_model_max_batch(const nn_model *m);

size_t nn_model_nparams(const nn_model *m);        /* scalars */
size_t nn_model_param_count(const nn_model *m);    /* tensors */
nn_param *nn_model_param(nn_model *m, size_t i);
size_t nn_model_buffer_count(const nn_model *m);
nn_buffer *nn_model_buffer(nn_model *m, size_t i);
/* Output shape of the last node, e.g. {N, classes}: for checks. */
size_t nn_model_activation_bytes(const nn_model *m);

/* The model's context: its device's backend, for ops on its tensors. */
nn_ctx *nn_model_ctx(nn_model *m);
/* Copies a tensor of the model (a parameter's w or g, a buffer, an
 * optimiser's state) to or from t->n floats on the host. */
void nn_model_read(nn_model *m, const nn_tensor *t, float *host);
void nn_model_write(nn_model *m, nn_tensor *t, const float *host);
/* The gradients of every dense parameter (all but a sparse mlp's
 * fc0.weight) as one tensor on the device: parameter i's g starts at the
 * next multiple of 16 floats after parameter i-1's (zeros between), in
 * parameter order, so one all-reduce covers them all. */
nn_tensor nn_model_grad_block(nn_model *m);
/* Called by nn_model_backward as each parameter's gradient is final, in
 * reverse parameter order (the last layer's first), with the parameter's
 * index: data-parallel training reduces a bucket while backward goes on.
 * NULL removes it. */
typedef void (*nn_grad_hook)(void *ctx, size_t param);
void nn_model_set_grad_hook(nn_model *m, nn_grad_hook fn, void *ctx);
/* A gang's exchange of a row-sparse gradient (ddp/ddp_rows.c).  get: the
 * last backward's gradient of embedding parameter `param`, packed: its
 * distinct rows (ascending) into rows and their values (cols floats each,
 * summed as the optimiser would) into vals, host memory with room for every
 * row of the weight; *n of them.  set: the gradient becomes the packed rows
 * given (ascending, distinct), until the next backward; the optimiser's
 * row-sparse steps take it as they take the backward's own. */
int nn_model_row_grad_get(nn_model *m, size_t param, int32_t *rows, float *vals, size_t *n, cds_err *err);
int nn_model_row_grad_set(nn_model *m, size_t param, const int32_t *rows, const float *vals, size_t n, cds_err *err);
/* The row of the global batch this model's batches start at (0 unless
 * data-parallel: rank r of a DDP gang holds rows r·b/W..): dropout masks
 * are drawn by global row, so W ranks draw what one process would. */
void nn_model_set_row_offset(nn_model *m, int64_t first_row);

/* Forward pass over n rows: x (n samples of floats, dense models) or idx
 * (n·nnz indices, sparse models); labels may be NULL (no loss, e.g. for a
 * prediction).  train = 1 uses batch statistics and updates the running
 * ones, and applies dropout with masks drawn from dropout_seed; l2 adds
 * l2·Σw² to out->loss.  Labels and indices are checked against the model. */
int nn_model_forward(nn_model *m, const float *x, const int32_t *idx, const int32_t *labels, int n, int train,
                     uint64_t dropout_seed, double l2, nn_metrics *out, cds_err *err);
/* The same pass with labels, but its metrics are folded on the device into
 * the model's pass sums (nn_pass_acc, the batch being training step `step`)
 * instead of copied back: a pass reads them once in a while
 * (nn_model_acc_get), so the device never waits for the host. */
int nn_model_forward_acc(nn_model *m, const float *x, const int32_t *idx, const int32_t *labels, int n, int train,
                         uint64_t dropout_seed, double l2, int64_t step, cds_err *err);
/* Sets the pass sums (a pass starts from zeros with bad_step -1, or from
 * the sums it adds to) and reads them back. */
void nn_model_acc_set(nn_model *m, const nn_pass_acc *start);
void nn_model_acc_get(nn_model *m, nn_pass_acc *out);
/* Checks and stages a batch for the next forward, which must be given the
 * same batch: the trainer stages before a graphed step, so that no copy
 * from the host happens inside it.  nn_model_stage_key names what a step
 * on that batch runs on (its size and the device buffers it was staged
 * into): equal keys, equal ops on equal buffers. */
int nn_model_stage(nn_model *m, const float *x, const int32_t *idx, const int32_t *labels, int n, cds_err *err);
uint64_t nn_model_stage_key(const nn_model *m);

/* Puts n raw uint8 rows (nn_data_opts.raw_u8: a GPU normalises them
 * itself) into the model's input, normalised by f's tables on the device,
 * for the next forward, which is then given x NULL. */
struct nn_u8_form;
int nn_model_input_u8(nn_model *m, const uint8_t *raw, int n, const struct nn_u8_form *f, cds_err *err);
/* Gradient of the mean cross-entropy of the last training forward with
 * respect to every parameter (written to each nn_param's g; the L2 term is
 * left to the optimiser). */
int nn_model_backward(nn_model *m, cds_err *err);
/* Switches the gradient of the embedding weight (a sparse mlp's fc0.weight)
 * to the row-sparse form above (on = 1; every optimiser asks for it) or
 * back to dense (on = 0; a model starts dense, which gradient checks read):
 * the backward pass then neither clears nor scans the whole [dim, out]
 * gradient.  Fails when the model has no sparse layer. */
int nn_model_set_row_grads(nn_model *m, int on, cds_err *err);
/* Copies the logits of the last forward (n × classes floats) to the host. */
void nn_model_logits(nn_model *m, float *host);
/* The floats nn_model_logits writes: the largest batch × classes. */
size_t nn_model_logits_size(const nn_model *m);
/* l2·Σw² over the decayed weights, in double. */
double nn_model_l2(nn_model *m, double l2);

#endif
