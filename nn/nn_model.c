/* nn_model: a model's memory on its device, its initial weights, and its
 * accessors (see nn_model.h; the spec and the node list are read by
 * nn_model_build.c, the passes run in nn_model_run.c).
 *
 * Building happens in two phases.  nn_model_plan appends the nodes and
 * records each parameter's shape, initialiser and offset; this file then
 * reserves, in three arenas of the model's context, the parameters, their
 * gradients and the batch-norm buffers (`par`), every node's output, the
 * batch's inputs and labels, the convolution scratch and each node's side
 * data (batch-norm statistics, max-pool winners, dropout masks) for the
 * largest batch (`act`), and every node's input gradient (`grad`), and
 * allocates each once through the backend.  The weights are drawn on the
 * host in parameter order from the seed, a chunk at a time, and copied in,
 * so the same seed always gives the same model on every device.
 *
 * Invariants:
 *   - every gradient buffer lives in the `grad` arena and is cleared by the
 *     backward pass just before its first consumer accumulates into it (one
 *     nn_op_zero per gradient, not one memset of the arena), and the
 *     backward kernels accumulate;
 *   - the dense parameter gradients are one block (gblock), in parameter
 *     order, each starting on a 64-byte line (nn_model_grad_block);
 *   - a flatten node owns no memory: its output and gradient are its input's,
 *     re-shaped, so it costs nothing in either direction;
 *   - in row-sparse mode (every optimiser) the embedding weight's gradient
 *     is the exception to clearing-then-accumulating: its backward leaves
 *     the touched rows as sums, and the dense [dim, out] g is freed;
 *   - nothing here reads or writes device memory but through the backend's
 *     copies. */
#include "nn_model_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn_ops.h"
#include "nn_rng.h"

/* -------------------------------------------------------------- planning */

static void plan_buffers(nn_model *m)
{
    size_t B = (size_t)m->max_batch;
    m->par_p = nn_arena_reserve(m->par, (m->p_total ? m->p_total : 16) * sizeof(float));
    m->par_g = nn_arena_reserve(m->par, (m->g_total ? m->g_total : 16) * sizeof(float));
    m->par_b = nn_arena_reserve(m->par, (m->b_total ? m->b_total : 16) * sizeof(float));
    m->work_off = nn_arena_reserve(m->act, m->work_bytes);
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *n = &m->nodes[i];
        size_t elems = B * nn_model_node_per_row(n);
        n->has_grad = i != 0 && !(n->kind == K_FLATTEN && !m->nodes[n->in].has_grad);
        if (n->kind == K_INPUT || n->kind == K_FLATTEN)
            continue; /* the input is staged (below); a flatten's memory is its input's */
        n->y_off = nn_arena_reserve(m->act, elems * sizeof(float));
        n->dy_off = nn_arena_reserve(m->grad, elems * sizeof(float));
        n->aux_bytes = n->kind == K_BN        ? 2 * (size_t)n->c * sizeof(float)
                       : n->kind == K_MAXPOOL ? elems * sizeof(int32_t)
                       : n->kind == K_DROPOUT ? elems
                                              : 0;
        if (n->aux_bytes)
            n->aux_off = nn_arena_reserve(m->act, n->aux_bytes);
    }
    m->nodes[0].has_grad = 0;
    /* Last, so that the buffers above keep the offsets they had when the
     * input was read in place (the CPU still reads it there: nn_ctx_stage). */
    if (m->sparse_dim)
        m->in_off = nn_arena_reserve(m->act, B * (size_t)m->nnz * sizeof(int32_t));
    else
        m->nodes[0].y_off = nn_arena_reserve(m->act, B * nn_model_node_per_row(&m->nodes[0]) * sizeof(float));
    m->lab_off = nn_arena_reserve(m->act, B * sizeof(int32_t));
    m->met_off = nn_arena_reserve(m->act, sizeof(nn_step_metrics));
    m->acc_off = nn_arena_reserve(m->act, sizeof(nn_pass_acc));
    if (m->sparse_dim) {
        m->plan_bytes = nn_op_sparse_plan_work(&m->ctx, m->max_batch, m->nnz);
        m->plan_off = nn_arena_reserve(m->act, m->plan_bytes);
    }
}

static void resolve_buffers(nn_model *m)
{
    nn_device dev = m->ctx.dev;
    size_t B = (size_t)m->max_batch;
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *n = &m->nodes[i];
        n->y.dev = n->dy.dev = dev;
        if (n->kind == K_FLATTEN)
            continue;
        if (n->kind == K_INPUT) {
            n->y.data = m->sparse_dim ? NULL : nn_arena_at(m->act, n->y_off);
            continue;
        }
        n->y.data = nn_arena_at(m->act, n->y_off);
        n->dy.data = nn_arena_at(m->grad, n->dy_off);
        if (n->aux_bytes)
            n->aux = nn_arena_buf(m->act, n->aux_off, n->aux_bytes);
    }
    m->work = nn_arena_buf(m->act, m->work_off, m->work_bytes);
    m->labels = nn_arena_buf(m->act, m->lab_off, B * sizeof(int32_t));
    m->metrics = nn_arena_buf(m->act, m->met_off, sizeof(nn_step_metrics));
    m->acc = nn_arena_buf(m->act, m->acc_off, sizeof(nn_pass_acc));
    if (m->sparse_dim) {
        m->idx = nn_arena_buf(m->act, m->in_off, B * (size_t)m->nnz * sizeof(int32_t));
        m->plan = nn_arena_buf(m->act, m->plan_off, m->plan_bytes);
    }
    m->x_dev = m->nodes[0].y.data;
    m->idx_dev = m->idx.data;
    m->lab_dev = m->labels.data;
}

/* ---------------------------------------------------------- initialising */

#define INIT_CHUNK 4096 /* floats drawn on the host before each copy to the device */

/* Draws n values of one initialiser in order and copies them to dst. */
static void init_values(nn_model *m, float *dst, size_t n, const param_plan *pl, nn_rng *rng)
{
    float buf[INIT_CHUNK];
    for (size_t at = 0; at < n; at += INIT_CHUNK) {
        size_t k = n - at < INIT_CHUNK ? n - at : INIT_CHUNK;
        double bound;
        switch (pl->init) {
        case INIT_TORCH: /* kaiming_uniform(a=√5): bound 1/√fan_in, as nn.Linear and nn.Conv2d */
        case INIT_TORCH_BIAS:
            bound = 1.0 / sqrt((double)pl->fan_in);
            for (size_t j = 0; j < k; j++)
                buf[j] = (float)((2 * nn_rng_unit(rng) - 1) * bound);
            break;
        case INIT_KAIMING_OUT: /* torchvision ResNet: normal, std √(2/fan_out) */
            bound = sqrt(2.0 / pl->fan_out);
            for (size_t j = 0; j < k; j++)
                buf[j] = (float)(nn_rng_normal(rng) * bound);
            break;
        case INIT_GLOROT: /* Keras glorot_uniform */
            bound = sqrt(6.0 / (pl->fan_in + pl->fan_out));
            for (size_t j = 0; j < k; j++)
                buf[j] = (float)((2 * nn_rng_unit(rng) - 1) * bound);
            break;
        case INIT_ZERO:
        case INIT_ONE:
            for (size_t j = 0; j < k; j++)
                buf[j] = pl->init == INIT_ONE ? 1.0f : 0.0f;
            break;
        }
        nn_ctx_from_host(&m->ctx, dst + at, buf, k * sizeof(float));
    }
}

static void init_params(nn_model *m, uint64_t seed)
{
    nn_rng rng;
    nn_rng_seed(&rng, seed);
    for (size_t i = 0; i < m->n_params; i++)
        init_values(m, m->params[i].w.data, m->params[i].w.n, &m->plans[i], &rng);
    for (size_t i = 0; i < m->n_bufs; i++) {
        int is_var = strstr(m->bufs[i].name, "running_var") != NULL;
        param_plan pl = {.init = is_var ? INIT_ONE : INIT_ZERO};
        init_values(m, m->bufs[i].t.data, m->bufs[i].t.n, &pl, &rng);
    }
}

/* The dense gradient of an embedding weight lives apart from the gradient
 * block: an optimiser takes that gradient row-sparse and frees it
 * (nn_model_set_row_grads), a quarter of a sparse model's memory with Adam.
 * The CPU backend maps a block that large, so its pages cost nothing until
 * a dense backward writes them. */
static int alloc_embedding_grad(nn_model *m, nn_param *p, cds_err *err)
{
    if (!p->g.data && !(p->g.data = nn_ctx_alloc(&m->ctx, p->g.n * sizeof(float))))
        return cds_err_nomem(err, "out of memory for the dense gradient of %s (%zu floats) of %s", p->name, p->g.n,
                             m->arch);
    return 0;
}

static void free_embedding_grad(nn_model *m, nn_param *p)
{
    nn_ctx_free(&m->ctx, p->g.data, p->g.n * sizeof(float));
    p->g.data = NULL;
}

static int allocate(nn_model *m, cds_err *err)
{
    if (nn_arena_commit(m->par, "parameters", err) != 0)
        return -1;
    m->pblock = nn_arena_at(m->par, m->par_p);
    m->gblock = nn_arena_at(m->par, m->par_g);
    m->bblock = nn_arena_at(m->par, m->par_b);
    for (size_t i = 0, goff = 0; i < m->n_params; i++) {
        nn_param *p = &m->params[i];
        p->w.dev = p->g.dev = m->ctx.dev;
        p->w.data = m->pblock + m->plans[i].off;
        if (p->embedding) {
            if (alloc_embedding_grad(m, p, err) != 0)
                return -1;
            continue;
        }
        p->g.data = m->gblock + goff;
        goff += (p->w.n + 15) / 16 * 16;
    }
    for (size_t i = 0; i < m->n_bufs; i++) {
        m->bufs[i].t.dev = m->ctx.dev;
        m->bufs[i].t.data = m->bblock + m->buf_off[i];
    }
    if (nn_arena_commit(m->act, "activations", err) != 0 || nn_arena_commit(m->grad, "activation gradients", err) != 0)
        return -1;
    resolve_buffers(m);
    return 0;
}

int nn_model_validate(const char *model_json, size_t *nparams, cds_err *err)
{
    nn_model *m = nn_model_plan(model_json, 1, NN_PLACE_CPU, err);
    if (!m)
        return -1;
    if (nparams)
        *nparams = nn_model_nparams(m);
    nn_model_free(m);
    return 0;
}

nn_model *nn_model_new(const char *model_json, int max_batch, uint64_t seed, cds_err *err)
{
    return nn_model_new_at(model_json, max_batch, seed, NN_PLACE_CPU, 0, err);
}

nn_model *nn_model_new_at(const char *model_json, int max_batch, uint64_t seed, nn_place where, int tf32,
                          cds_err *err)
{
    nn_model *m = nn_model_plan(model_json, max_batch, where, err);
    if (!m)
        return NULL;
    for (size_t i = 0; i < m->n_params; i++)
        m->g_total += m->params[i].embedding ? 0 : (m->params[i].w.n + 15) / 16 * 16;
    m->par = nn_arena_new(&m->ctx);
    m->act = nn_arena_new(&m->ctx);
    m->grad = nn_arena_new(&m->ctx);
    if (!m->par || !m->act || !m->grad) {
        cds_err_nomem(err, "out of memory");
        nn_model_free(m);
        return NULL;
    }
    m->ctx.tf32 = tf32;
    plan_buffers(m);
    if (allocate(m, err) != 0) {
        nn_model_free(m);
        return NULL;
    }
    init_params(m, seed);
    return m;
}

void nn_model_free(nn_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_names; i++)
        free(m->names[i]);
    free(m->names);
    free(m->nodes);
    for (size_t i = 0; m->params && i < m->n_params; i++)
        if (m->params[i].embedding)
            free_embedding_grad(m, &m->params[i]);
    free(m->params);
    nn_ctx_free(&m->ctx, m->u8_raw.data, m->u8_raw.bytes);
    nn_ctx_free(&m->ctx, m->u8_lut.data, m->u8_lut.bytes);
    free(m->u8_lut_host);
    nn_ctx_free(&m->ctx, m->rg_rows.data, m->rg_rows.bytes);
    nn_ctx_free(&m->ctx, m->rg_vals.data, m->rg_vals.bytes);
    free(m->plans);
    free(m->bufs);
    free(m->buf_off);
    nn_arena_free(m->par);
    nn_arena_free(m->act);
    nn_arena_free(m->grad);
    nn_ctx_release(&m->ctx);
    free(m->spec);
    free(m);
}

/* ---- row-sparse gradients, packed for a gang ----------------------------- */

/* The embedding parameter `param` in row-sparse mode, and its packing
 * buffers on the device (room for every row of the weight). */
static nn_param *packable(nn_model *m, size_t param, const char *what, cds_err *err)
{
    nn_param *p = param < m->n_params ? &m->params[param] : NULL;
    if (!p || !p->embedding || !p->row_grad) {
        cds_errf(err, "%s: parameter %zu of %s is not a sparse first layer training row-sparse", what, param,
                 m->arch);
        return NULL;
    }
    size_t rows = (size_t)p->w.shape[0], cols = (size_t)p->w.shape[1];
    if (!m->rg_rows.data) {
        m->rg_rows = (nn_buf){.dev = m->ctx.dev, .bytes = rows * sizeof(int32_t)};
        m->rg_vals = (nn_buf){.dev = m->ctx.dev, .bytes = rows * cols * sizeof(float)};
        m->rg_rows.data = nn_ctx_alloc(&m->ctx, m->rg_rows.bytes);
        m->rg_vals.data = nn_ctx_alloc(&m->ctx, m->rg_vals.bytes);
        if (!m->rg_rows.data || !m->rg_vals.data) {
            cds_err_nomem(err, "out of memory packing the gradient of %s (%zu rows of %zu)", p->name, rows, cols);
            return NULL;
        }
    }
    return p;
}

int nn_model_row_grad_get(nn_model *m, size_t param, int32_t *rows, float *vals, size_t *n, cds_err *err)
{
    *n = 0;
    nn_param *p = packable(m, param, "packing a row-sparse gradient", err);
    if (!p)
        return -1;
    if (!p->rows.plan || !p->rows.dy)
        return cds_errf(err, "packing the gradient of %s: no backward pass since the last forward", p->name);
    const node *d = NULL;
    for (size_t i = 0; i < m->n_nodes && !d; i++)
        d = m->nodes[i].kind == K_SPARSE && m->nodes[i].pw == (int)param ? &m->nodes[i] : NULL;
    size_t cols = (size_t)p->w.shape[1];
    nn_tensor packed = {.dev = m->ctx.dev, .data = m->rg_vals.data};
    if (!d || nn_op_sparse_plan_rows(&m->ctx, &m->plan, &m->rg_rows, n, err) != 0 ||
        nn_op_sparse_linear_bwd_rows(&m->ctx, &m->plan, m->n_cur, &d->dy, &packed, NULL, err) != 0)
        return d ? -1 : cds_errf(err, "packing the gradient of %s: no sparse layer reads it", p->name);
    nn_ctx_to_host(&m->ctx, rows, m->rg_rows.data, *n * sizeof(int32_t));
    nn_ctx_to_host(&m->ctx, vals, m->rg_vals.data, *n * cols * sizeof(float));
    return 0;
}

int nn_model_row_grad_set(nn_model *m, size_t param, const int32_t *rows, const float *vals, size_t n, cds_err *err)
{
    nn_param *p = packable(m, param, "setting a row-sparse gradient", err);
    if (!p)
        return -1;
    size_t cols = (size_t)p->w.shape[1];
    if (n > (size_t)p->w.shape[0])
        return cds_errf(err, "setting the gradient of %s: %zu rows, it has %d", p->name, n, p->w.shape[0]);
    nn_ctx_from_host(&m->ctx, m->rg_rows.data, rows, n * sizeof(int32_t));
    nn_ctx_from_host(&m->ctx, m->rg_vals.data, vals, n * cols * sizeof(float));
    p->rows = (nn_row_grad){.rows = m->rg_rows.data, .n_rows = n, .rg = m->rg_vals.data};
    return 0;
}

int nn_model_set_row_grads(nn_model *m, int on, cds_err *err)
{
    nn_param *p = NULL;
    for (size_t i = 0; i < m->n_params && !p; i++)
        p = m->params[i].embedding ? &m->params[i] : NULL;
    if (!p)
        return cds_errf(err, "row-sparse gradients need a sparse first layer, and this %s model has none", m->arch);
    if (!on && alloc_embedding_grad(m, p, err) != 0)
        return -1;
    if (on)
        free_embedding_grad(m, p);
    p->row_grad = on;
    p->rows = (nn_row_grad){0};
    return 0;
}

/* ------------------------------------------------------------- accessors */

const char *nn_model_spec(const nn_model *m) { return m->spec; }
const char *nn_model_arch(const nn_model *m) { return m->arch; }
int nn_model_classes(const nn_model *m) { return m->classes; }
int nn_model_max_batch(const nn_model *m) { return m->max_batch; }
size_t nn_model_param_count(const nn_model *m) { return m->n_params; }
nn_param *nn_model_param(nn_model *m, size_t i) { return &m->params[i]; }
size_t nn_model_buffer_count(const nn_model *m) { return m->n_bufs; }
nn_buffer *nn_model_buffer(nn_model *m, size_t i) { return &m->bufs[i]; }
size_t nn_model_activation_bytes(const nn_model *m) { return nn_arena_bytes(m->act) + nn_arena_bytes(m->grad); }
nn_ctx *nn_model_ctx(nn_model *m) { return &m->ctx; }

nn_tensor nn_model_grad_block(nn_model *m)
{
    nn_tensor t = {.dev = m->ctx.dev, .data = m->gblock};
    int n = (int)m->g_total;
    nn_tensor_shape(&t, 1, &n);
    return t;
}

void nn_model_read(nn_model *m, const nn_tensor *t, float *host)
{
    nn_ctx_to_host(&m->ctx, host, t->data, t->n * sizeof(float));
}

void nn_model_write(nn_model *m, nn_tensor *t, const float *host)
{
    nn_ctx_from_host(&m->ctx, t->data, host, t->n * sizeof(float));
}

void nn_model_logits(nn_model *m, float *host)
{
    nn_model_read(m, &m->nodes[m->n_nodes - 1].y, host);
}

size_t nn_model_logits_size(const nn_model *m) { return m->nodes[m->n_nodes - 1].y.n; }

int nn_model_input(const nn_model *m, int shape[3], int *sparse_dim)
{
    for (int i = 0; i < 3; i++)
        shape[i] = i < m->in_ndim ? m->in_shape[i] : 1;
    if (sparse_dim)
        *sparse_dim = m->sparse_dim;
    return m->in_ndim;
}

size_t nn_model_nparams(const nn_model *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->n_params; i++)
        n += m->params[i].w.n;
    return n;
}

void nn_model_set_row_offset(nn_model *m, int64_t first_row)
{
    m->row_offset = first_row;
}

void nn_model_set_grad_hook(nn_model *m, nn_grad_hook fn, void *ctx)
{
    m->hook = fn;
    m->hook_ctx = ctx;
}
