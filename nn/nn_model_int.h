/* nn_model_int: the model's insides, shared by its three files and by
 * nothing else: nn_model_build.c (the spec, the node list and the
 * parameter table), nn_model.c (allocating on the device, initialising,
 * accessors) and nn_model_run.c (forward and backward passes).
 *
 * Every pointer a model holds into its arenas is device memory of m->ctx:
 * these files hand it to ops and copy to and from it, and never read it. */
#ifndef CDS_NN_MODEL_INT_H
#define CDS_NN_MODEL_INT_H

#ifndef CDS_NN_INTERNAL
#error "nn_model_int.h is private to nn/: include nn_model.h, nn_train.h, nn_ops.h and the other public nn headers (a white-box test under tests/ adds c_args : nn_private_args)"
#endif

#include "nn_backend.h"
#include "nn_model.h"

enum node_kind { K_INPUT, K_LINEAR, K_SPARSE, K_CONV, K_BN, K_RELU, K_MAXPOOL, K_AVGPOOL, K_GAP, K_DROPOUT,
                 K_FLATTEN, K_ADD };

enum init_kind { INIT_TORCH, INIT_TORCH_BIAS, INIT_KAIMING_OUT, INIT_GLOROT, INIT_ZERO, INIT_ONE };

typedef struct node {
    enum node_kind kind;
    int in, in2;
    int ndim;               /* 2: [N, c]; 4: [N, c, h, w] */
    int c, h, w;
    int pw, pb;             /* parameters (weight, bias / gamma, beta), -1 if none */
    int bmean, bvar;        /* batch-norm buffers */
    nn_conv_geom cg;
    nn_pool_geom pg;
    float p;                /* dropout probability */
    int has_grad;           /* the backward pass needs this node's gradient */
    int zeroed;             /* this backward pass has cleared dy already */
    size_t y_off, dy_off, aux_off, aux_bytes;
    nn_tensor y, dy;
    nn_buf aux;             /* batch-norm mean and invstd, max-pool winners, dropout mask */
} node;

typedef struct param_plan {
    size_t off;             /* into the parameter block, floats */
    enum init_kind init;
    int fan_in, fan_out;
} param_plan;

struct nn_model {
    char *spec;
    char arch[16];
    int classes;
    int in_ndim, in_shape[3];
    int sparse_dim, nnz;
    float width, dropout, bn_momentum, bn_eps;
    int max_batch;

    nn_ctx ctx;             /* the device: its backend runs every op and owns every buffer below */

    node *nodes;
    size_t n_nodes, cap_nodes;
    nn_param *params;
    param_plan *plans;
    size_t n_params, cap_params;
    nn_buffer *bufs;
    size_t *buf_off;
    size_t n_bufs, cap_bufs;
    char **names;
    size_t n_names, cap_names;
    size_t p_total, b_total;
    nn_arena *par;          /* weights, their dense gradients (one block, parameter order), bn buffers */
    size_t par_p, par_g, par_b;
    float *pblock, *gblock, *bblock;
    size_t g_total;         /* floats in gblock */

    nn_arena *act, *grad;
    size_t work_bytes, work_off; /* convolution scratch */
    nn_buf work;
    size_t in_off, lab_off, plan_off, plan_bytes, met_off, acc_off;
    nn_buf labels;          /* the batch's labels, staged (nn_ctx_stage) */
    nn_buf idx;             /* sparse models: the batch's indices, staged */
    void *x_dev, *idx_dev, *lab_dev; /* where staging copies them: the arena's buffers */
    nn_buf plan;            /* sparse models: those indices grouped by row (nn_rows.h) */
    nn_buf rg_rows, rg_vals; /* a row-sparse gradient packed, for data-parallel exchange (nn_model_row_grad_*) */
    nn_buf u8_raw, u8_lut;  /* nn_model_input_u8: raw rows staged on the device, the tables (made on first use) */
    float *u8_lut_host;     /* the tables last copied to u8_lut */
    int input_ready;        /* rows nn_model_input_u8 put in the input for the next forward (0: none) */
    int staged;             /* rows nn_model_stage staged for the next forward (0: none) */
    nn_buf metrics;         /* one nn_step_metrics: the last batch's loss and counts */
    nn_buf acc;             /* one nn_pass_acc: a pass's sums (nn_model_acc_*) */

    int n_cur;
    int64_t row_offset;     /* nn_model_set_row_offset: the batch's first row in the global batch */
    int trained;            /* the last forward was a training forward with labels */
    nn_grad_hook hook;      /* nn_model_set_grad_hook */
    void *hook_ctx;
    cds_err build_err;
    int failed;
};

/* Parses the spec and lays out the node list and parameter table, with the
 * context made on the CPU (nothing allocated for weights or activations). */
nn_model *nn_model_plan(const char *model_json, int max_batch, nn_place where, cds_err *err);
size_t nn_model_node_per_row(const node *n);

#endif
