/* nn_model_run: the forward and backward passes of a model (see nn_model.h
 * and nn_model_int.h).
 *
 * A pass stages the batch from the host for the ops (copied into the
 * model's input buffers, or read in place where the device's memory is the
 * host's: nn_ctx_stage), runs the node list through the ops of
 * the model's context, and leaves its results on the device: the loss and
 * top-k counts in one nn_step_metrics, which nn_model_forward copies back
 * and nn_model_forward_acc instead folds into the pass's sums (nn_pass_acc)
 * without waiting for the device.  Backward runs the list in reverse,
 * accumulating into the gradient of each node's inputs, so a node read
 * twice (the fork before a residual block) receives the sum; it calls the
 * gradient hook as each node's parameters are done. */
#include "nn_model_int.h"

#include <stdlib.h>
#include <string.h>

#include "nn_data.h"
#include "nn_ops.h"
#include "nn_par.h"
#include "nn_rng.h"

/* Gives every node's tensors the batch size n. */
static void shape_for_batch(nn_model *m, int n)
{
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *d = &m->nodes[i];
        int shape[4] = {n, d->c, d->h, d->w};
        nn_tensor_shape(&d->y, d->ndim, shape);
        nn_tensor_shape(&d->dy, d->ndim, shape);
        if (d->kind == K_FLATTEN) {
            d->y.data = m->nodes[d->in].y.data;
            d->dy.data = m->nodes[d->in].dy.data;
        }
        d->cg.N = n;
        d->pg.N = n;
    }
}

static nn_tensor *pw(nn_model *m, const node *d) { return d->pw >= 0 ? &m->params[d->pw].w : NULL; }
static nn_tensor *pb(nn_model *m, const node *d) { return d->pb >= 0 ? &m->params[d->pb].w : NULL; }
static nn_tensor *gw(nn_model *m, const node *d) { return d->pw >= 0 ? &m->params[d->pw].g : NULL; }
static nn_tensor *gb(nn_model *m, const node *d) { return d->pb >= 0 ? &m->params[d->pb].g : NULL; }

static int forward_node(nn_model *m, node *d, int train, uint64_t dropout_seed, size_t index, cds_err *err)
{
    const nn_ctx *c = &m->ctx;
    node *a = d->in >= 0 ? &m->nodes[d->in] : NULL;
    switch (d->kind) {
    case K_INPUT:
    case K_FLATTEN:
        return 0;
    case K_LINEAR:
        return nn_op_linear_fwd(c, &a->y, pw(m, d), pb(m, d), &d->y, err);
    case K_SPARSE:
        if (nn_op_sparse_plan(c, &m->idx, m->n_cur, m->nnz, m->sparse_dim, &m->plan, err) != 0)
            return -1;
        return nn_op_sparse_linear_fwd(c, &m->plan, m->n_cur, pw(m, d), pb(m, d), &d->y, err);
    case K_CONV:
        return nn_op_conv2d_fwd(c, &d->cg, &a->y, pw(m, d), pb(m, d), &d->y, &m->work, err);
    case K_BN:
        return nn_op_bn_fwd(c, &a->y, pw(m, d), pb(m, d), &m->bufs[d->bmean].t, &m->bufs[d->bvar].t, &d->y, &d->aux,
                            train, m->bn_momentum, m->bn_eps, err);
    case K_RELU:
        return nn_op_relu_fwd(c, &a->y, &d->y, err);
    case K_MAXPOOL:
        return nn_op_maxpool_fwd(c, &d->pg, &a->y, &d->y, &d->aux, err);
    case K_AVGPOOL:
        return nn_op_avgpool_fwd(c, &d->pg, &a->y, &d->y, err);
    case K_GAP:
        return nn_op_gap_fwd(c, &a->y, &d->y, err);
    case K_DROPOUT:
        /* Masks by the row's place in the global batch (m->row_offset: a
         * data-parallel rank's first row), so W ranks draw what one
         * process would. */
        return nn_op_dropout_fwd(c, &a->y, &d->y, &d->aux, train ? d->p : 0.0f,
                                 nn_rng_mix(dropout_seed, index, 0x64726f70),
                                 (uint64_t)m->row_offset * (a->y.n / (size_t)(m->n_cur > 0 ? m->n_cur : 1)), err);
    case K_ADD:
        return nn_op_add_fwd(c, &a->y, &m->nodes[d->in2].y, &d->y, err);
    }
    return 0;
}

static int check_inputs(const nn_model *m, const int32_t *idx, const int32_t *labels, int n, cds_err *err)
{
    if (labels)
        for (int i = 0; i < n; i++)
            if (labels[i] < 0 || labels[i] >= m->classes)
                return cds_errf(err, "label %d of row %d is outside [0, %d): the data has more classes than the "
                                     "model's \"classes\"", labels[i], i, m->classes);
    if (m->sparse_dim)
        for (size_t i = 0; i < (size_t)n * (size_t)m->nnz; i++)
            if (idx[i] < 0 || idx[i] >= m->sparse_dim)
                return cds_errf(err, "sparse index %d of row %zu is outside [0, %d): the data does not fit the "
                                     "model's \"sparse\".dim", idx[i], i / (size_t)m->nnz, m->sparse_dim);
    return 0;
}

/* Stages the batch (and its labels) for the ops: copied into the input
 * buffers, or read where it is on a device whose memory is the host's. */
static void stage_batch(nn_model *m, const float *x, const int32_t *idx, const int32_t *labels, int n)
{
    const nn_ctx *c = &m->ctx;
    if (m->sparse_dim)
        m->idx.data = (void *)nn_ctx_stage(c, m->idx_dev, idx, (size_t)n * (size_t)m->nnz * sizeof(int32_t));
    else if (!x) /* nn_model_input_u8 wrote it there */
        m->nodes[0].y.data = m->x_dev;
    else
        m->nodes[0].y.data = (float *)nn_ctx_stage(c, m->x_dev, x, (size_t)n * nn_model_node_per_row(&m->nodes[0]) *
                                                                     sizeof(float));
    if (labels)
        m->labels.data = (void *)nn_ctx_stage(c, m->lab_dev, labels, (size_t)n * sizeof(int32_t));
}

/* The device buffers of the uint8 path, made on first use: raw rows for
 * the largest batch and the tables, copied again only when they change. */
static int u8_buffers(nn_model *m, const nn_u8_form *f, cds_err *err)
{
    const nn_ctx *c = &m->ctx;
    size_t raw = (size_t)m->max_batch * (size_t)f->C * (size_t)f->P, lut = (size_t)f->C * 256 * sizeof(float);
    int fresh = m->u8_lut.bytes != lut;
    if (fresh) {
        nn_ctx_free(c, m->u8_lut.data, m->u8_lut.bytes);
        free(m->u8_lut_host);
        m->u8_lut = (nn_buf){.dev = c->dev, .bytes = lut, .data = nn_ctx_alloc(c, lut)};
        m->u8_lut_host = calloc(1, lut);
        if (!m->u8_lut.data || !m->u8_lut_host) {
            nn_ctx_free(c, m->u8_lut.data, lut);
            free(m->u8_lut_host);
            m->u8_lut = (nn_buf){0};
            m->u8_lut_host = NULL;
            return cds_err_nomem(err, "out of memory for the uint8 input's tables on the %s device",
                                 nn_device_name(c->dev));
        }
    }
    if (fresh || memcmp(m->u8_lut_host, f->lut, lut) != 0) {
        memcpy(m->u8_lut_host, f->lut, lut);
        nn_ctx_from_host(c, m->u8_lut.data, f->lut, lut);
    }
    if (!m->u8_raw.data) {
        m->u8_raw = (nn_buf){.dev = c->dev, .bytes = raw, .data = nn_ctx_alloc(c, raw)};
        if (!m->u8_raw.data) {
            m->u8_raw = (nn_buf){0};
            return cds_err_nomem(err, "out of memory for %zu bytes of uint8 input on the %s device", raw,
                                 nn_device_name(c->dev));
        }
    }
    return 0;
}

int nn_model_input_u8(nn_model *m, const uint8_t *raw, int n, const nn_u8_form *f, cds_err *err)
{
    m->input_ready = 0;
    if (m->sparse_dim || (size_t)f->C * (size_t)f->P != nn_model_node_per_row(&m->nodes[0]))
        return cds_errf(err, "uint8 rows of %d x %lld values do not fit the model's input", f->C, (long long)f->P);
    if (n < 1 || n > m->max_batch)
        return cds_errf(err, "batch of %d rows: the model was built for 1 to %d", n, m->max_batch);
    if (u8_buffers(m, f, err) != 0)
        return -1;
    size_t bytes = (size_t)n * (size_t)f->C * (size_t)f->P;
    nn_buf staged = m->u8_raw;
    staged.data = (void *)nn_ctx_stage(&m->ctx, m->u8_raw.data, raw, bytes);
    nn_tensor in = {.dev = m->ctx.dev, .ndim = 1, .shape = {(int)(bytes)}, .n = bytes, .data = m->x_dev};
    if (nn_op_u8_normalize(&m->ctx, &staged, &m->u8_lut, &in, n, f->C, f->P, f->channels_last, err) != 0)
        return -1;
    m->input_ready = n;
    return 0;
}

/* metrics.sumsq += Σw² over the decayed weights, in parameter order. */
static int l2_sumsq(nn_model *m, cds_err *err)
{
    for (size_t i = 0; i < m->n_params; i++)
        if (m->params[i].decay && nn_op_sumsq(&m->ctx, &m->params[i].w, &m->metrics, err) != 0)
            return -1;
    return 0;
}

/* Checks a batch and stages it for the ops. */
static int take_batch(nn_model *m, const float *x, const int32_t *idx, const int32_t *labels, int n, cds_err *err)
{
    if (n < 1 || n > m->max_batch)
        return cds_errf(err, "batch of %d rows: the model was built for 1 to %d", n, m->max_batch);
    int ready = m->input_ready;
    m->input_ready = 0;
    if ((m->sparse_dim && !idx) || (!m->sparse_dim && !x && ready != n))
        return cds_errf(err, "%s input missing for a %s model", m->sparse_dim ? "sparse" : "dense",
                        m->sparse_dim ? "sparse" : "dense");
    if (check_inputs(m, idx, labels, n, err) != 0)
        return -1;
    stage_batch(m, x, idx, labels, n);
    return 0;
}

int nn_model_stage(nn_model *m, const float *x, const int32_t *idx, const int32_t *labels, int n, cds_err *err)
{
    m->staged = 0;
    if (take_batch(m, x, idx, labels, n, err) != 0)
        return -1;
    m->staged = n;
    return 0;
}

uint64_t nn_model_stage_key(const nn_model *m)
{
    uint64_t k = 0xcbf29ce484222325ull;
    const uint64_t parts[] = {(uint64_t)m->staged, (uint64_t)(uintptr_t)m->nodes[0].y.data,
                              (uint64_t)(uintptr_t)m->idx.data, (uint64_t)(uintptr_t)m->labels.data};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        k = (k ^ parts[i]) * 0x100000001b3ull;
    return k;
}

/* The pass up to the loss, its results left in m->metrics. */
static int run_forward(nn_model *m, const float *x, const int32_t *idx, const int32_t *labels, int n, int train,
                       uint64_t dropout_seed, double l2, cds_err *err)
{
    int staged = m->staged;
    m->staged = 0;
    if (staged && staged != n)
        return cds_errf(err, "batch of %d rows, but %d were staged", n, staged);
    /* Staging first: a flatten of the input takes its pointer. */
    if (!staged && take_batch(m, x, idx, labels, n, err) != 0)
        return -1;
    m->trained = 0;
    m->n_cur = n;
    shape_for_batch(m, n);
    for (size_t i = 0; i < m->n_nodes; i++)
        if (forward_node(m, &m->nodes[i], train, dropout_seed, i, err) != 0)
            return -1;
    if (!labels)
        return 0;
    node *last = &m->nodes[m->n_nodes - 1];
    if (nn_op_softmax_xent(&m->ctx, &last->y, &m->labels, train ? &last->dy : NULL, &m->metrics, err) != 0 ||
        (l2 != 0 && l2_sumsq(m, err) != 0))
        return -1;
    m->trained = train;
    return 0;
}

int nn_model_forward(nn_model *m, const float *x, const int32_t *idx, const int32_t *labels, int n, int train,
                     uint64_t dropout_seed, double l2, nn_metrics *out, cds_err *err)
{
    nn_par_fp fp;
    nn_par_fp_enter(&fp);
    int rc = run_forward(m, x, idx, labels, n, train, dropout_seed, l2, err);
    nn_par_fp_leave(&fp);
    memset(out, 0, sizeof *out);
    out->n = n;
    if (rc != 0 || !labels)
        return rc;
    nn_step_metrics sm;
    nn_ctx_to_host(&m->ctx, &sm, m->metrics.data, sizeof sm);
    out->xent = sm.xent;
    out->top1 = sm.top1;
    out->top5 = sm.top5;
    out->loss = out->xent + (l2 == 0 ? 0.0 : l2 * sm.sumsq);
    return 0;
}

int nn_model_forward_acc(nn_model *m, const float *x, const int32_t *idx, const int32_t *labels, int n, int train,
                         uint64_t dropout_seed, double l2, int64_t step, cds_err *err)
{
    if (!labels)
        return cds_errf(err, "a pass that sums its metrics needs labels");
    nn_par_fp fp;
    nn_par_fp_enter(&fp);
    int rc = run_forward(m, x, idx, labels, n, train, dropout_seed, l2, err);
    if (rc == 0)
        rc = nn_op_metrics_fold(&m->ctx, &m->metrics, &m->acc, n, l2, step, err);
    nn_par_fp_leave(&fp);
    return rc;
}

void nn_model_acc_set(nn_model *m, const nn_pass_acc *start)
{
    nn_ctx_from_host(&m->ctx, m->acc.data, start, sizeof *start);
}

void nn_model_acc_get(nn_model *m, nn_pass_acc *out)
{
    nn_ctx_to_host(&m->ctx, out, m->acc.data, sizeof *out);
}

double nn_model_l2(nn_model *m, double l2)
{
    if (l2 == 0)
        return 0;
    nn_step_metrics sm = {0};
    nn_ctx_from_host(&m->ctx, m->metrics.data, &sm, sizeof sm);
    cds_err err;
    if (l2_sumsq(m, &err) != 0)
        return NAN; /* the model's own tensors are always on its device */
    nn_ctx_to_host(&m->ctx, &sm, m->metrics.data, sizeof sm);
    return l2 * sm.sumsq;
}

static int backward_node(nn_model *m, node *d, cds_err *err)
{
    const nn_ctx *c = &m->ctx;
    node *a = d->in >= 0 ? &m->nodes[d->in] : NULL;
    nn_tensor *dx = a && a->has_grad ? &a->dy : NULL;
    switch (d->kind) {
    case K_INPUT:
    case K_FLATTEN:
        return 0;
    case K_LINEAR:
        return nn_op_linear_bwd(c, &a->y, pw(m, d), &d->dy, dx, gw(m, d), gb(m, d), err);
    case K_SPARSE:
        if (m->params[d->pw].row_grad) {
            /* the rows are the plan's, read by the backend; the host keeps only where they are */
            m->params[d->pw].rows = (nn_row_grad){.plan = m->plan.data, .dy = d->dy.data};
            return nn_op_sparse_linear_bwd_rows(c, &m->plan, m->n_cur, &d->dy, NULL, gb(m, d), err);
        }
        return nn_op_sparse_linear_bwd(c, &m->idx, m->n_cur, m->nnz, &d->dy, gw(m, d), gb(m, d), err);
    case K_CONV:
        return nn_op_conv2d_bwd(c, &d->cg, &a->y, pw(m, d), &d->dy, dx, gw(m, d), gb(m, d), &m->work, err);
    case K_BN:
        return nn_op_bn_bwd(c, &a->y, pw(m, d), &d->aux, &d->dy, dx, gw(m, d), gb(m, d), err);
    case K_RELU:
        return dx ? nn_op_relu_bwd(c, &d->y, &d->dy, dx, err) : 0;
    case K_MAXPOOL:
        return dx ? nn_op_maxpool_bwd(c, &d->pg, &d->aux, &d->dy, dx, err) : 0;
    case K_AVGPOOL:
        return dx ? nn_op_avgpool_bwd(c, &d->pg, &d->dy, dx, err) : 0;
    case K_GAP:
        return dx ? nn_op_gap_bwd(c, &d->dy, dx, err) : 0;
    case K_DROPOUT:
        return dx ? nn_op_dropout_bwd(c, &d->aux, &d->dy, dx, d->p, err) : 0;
    case K_ADD: {
        node *b = &m->nodes[d->in2];
        if (dx && nn_op_acc(c, &d->dy, dx, err) != 0)
            return -1;
        return b->has_grad ? nn_op_acc(c, &d->dy, &b->dy, err) : 0;
    }
    }
    return 0;
}

/* Clears a node's gradient just before its first consumer (in backward
 * order) accumulates into it: while that consumer's output is still in cache,
 * instead of one memset of the whole gradient arena per step. */
static int zero_grad_once(nn_model *m, int id, cds_err *err)
{
    node *a = id >= 0 ? &m->nodes[id] : NULL;
    if (!a || !a->has_grad || a->zeroed)
        return 0;
    a->zeroed = 1;
    if (a->kind == K_FLATTEN) /* its gradient is its input's memory */
        m->nodes[a->in].zeroed = 1;
    return nn_op_zero(&m->ctx, &a->dy, err);
}

/* The node's parameters are final: tell the hook, last parameter first. */
static void grads_done(nn_model *m, const node *d)
{
    if (!m->hook)
        return;
    if (d->pb >= 0)
        m->hook(m->hook_ctx, (size_t)d->pb);
    if (d->pw >= 0)
        m->hook(m->hook_ctx, (size_t)d->pw);
}

static int model_backward(nn_model *m, cds_err *err)
{
    if (!m->trained)
        return cds_errf(err, "backward pass without a training forward pass with labels before it");
    for (size_t i = 0; i < m->n_nodes; i++)
        m->nodes[i].zeroed = 0;
    m->nodes[m->n_nodes - 1].zeroed = 1; /* written by the loss */
    for (size_t i = m->n_nodes; i-- > 1;) {
        node *d = &m->nodes[i];
        /* A parameter belongs to one node: clear its gradient right before
         * that node accumulates into it, while it is about to be in cache. */
        int dense_w = d->pw >= 0 && !m->params[d->pw].row_grad; /* row-sparse: overwritten, never cleared */
        if ((dense_w && nn_op_zero(&m->ctx, gw(m, d), err) != 0) ||
            (d->pb >= 0 && nn_op_zero(&m->ctx, gb(m, d), err) != 0))
            return -1;
        if (zero_grad_once(m, d->in, err) != 0 || zero_grad_once(m, d->in2, err) != 0 ||
            backward_node(m, d, err) != 0)
            return -1;
        grads_done(m, d);
    }
    return 0;
}

int nn_model_backward(nn_model *m, cds_err *err)
{
    nn_par_fp fp;
    nn_par_fp_enter(&fp);
    int rc = model_backward(m, err);
    nn_par_fp_leave(&fp);
    return rc;
}
