/* nn_optim: train-spec parsing, learning-rate schedules and the SGD / Adam
 * optimisers over a model (see nn_optim.h).
 *
 * State tensors live in one block on the model's device, allocated through
 * its backend: every parameter's m (or SGD's buffer), then every v, each
 * kind laid out as the parameters are (in order, each on a multiple of 16
 * floats), and are named after their parameter so a checkpoint can be read
 * without knowing this layout.
 *
 * Multi-tensor steps.  The dense gradients are one block laid out the same
 * way (nn_model_grad_block), so a run of consecutive parameters with the
 * same decay has its weights, gradients and states each in one contiguous
 * span, and is stepped by one call over it (with no L2 every dense
 * parameter is one run: one kernel launch a step instead of one per
 * tensor).  The padding between tensors is zeros in all four and stays
 * zero under either step (Adam's update there is 0/(0 + eps); with eps 0
 * every tensor is stepped alone).  Each element is updated alone, so the
 * result is bit-identical to stepping tensor by tensor.
 *
 * A sparse model's embedding gradient is always taken row-sparse under an
 * optimiser: the backward packs the rows the batch touched, and the step
 * hands them to the lazy Adam kernel ("lazy") or to the row-sparse form of
 * the exact SGD or Adam step, which is bit-identical to the dense step but
 * never builds, clears or reads a dense gradient.  The other parameters go
 * to the dense steps, with the same t. */
#include "nn_optim.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_json.h"
#include "nn_ops.h"
#include "nn_par.h" /* after nn_ops.h: cblas.h brings <complex.h> and its I */

#define LAZY_NEEDS_SPARSE                                                                                       \
    "train spec: \"lazy\" updates the rows of a sparse first layer, and this model has none (no \"sparse\" " \
    "input): drop \"lazy\" or use a sparse mlp"

struct nn_optim {
    nn_model *model;
    const nn_train_cfg *cfg;
    int64_t t;
    size_t n_state;
    nn_tensor *state;
    char **names;
    float *block;
    size_t block_bytes;
};

/* ------------------------------------------------------------ the spec */

static int cfg_number(json_t *o, const char *field, double def, double lo, double hi, double *out, cds_err *err)
{
    json_t *v = json_object_get(o, field);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v) || !(json_number_value(v) >= lo && json_number_value(v) <= hi))
        return cds_errf(err, "train spec: \"%s\" must be a number in [%g, %g]", field, lo, hi);
    *out = json_number_value(v);
    return 0;
}

static int cfg_floats(json_t *a, const char *field, float *out, int *n, double lo, cds_err *err)
{
    if (!json_is_array(a) || json_array_size(a) < 1 || json_array_size(a) > 16)
        return cds_errf(err, "train spec: \"normalize\".\"%s\" must be an array of 1 to 16 numbers (one per channel)",
                        field);
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_number(v) || json_number_value(v) < lo)
            return cds_errf(err, "train spec: \"normalize\".\"%s\"[%zu] must be a number%s", field, i,
                            lo > 0 ? " above 0" : "");
        out[i] = (float)json_number_value(v);
    }
    *n = (int)json_array_size(a);
    return 0;
}

static int cfg_normalize(json_t *o, nn_train_cfg *c, cds_err *err)
{
    c->scale = 1.0f;
    c->n_norm = 0;
    json_t *nz = json_object_get(o, "normalize");
    if (!nz)
        return 0;
    if (!json_is_object(nz))
        return cds_errf(err, "train spec: \"normalize\" must be an object {scale, mean, std}");
    double scale = 1.0;
    if (cfg_number(nz, "scale", 1.0, 1e-12, 1e12, &scale, err) != 0)
        return -1;
    c->scale = (float)scale;
    json_t *mean = json_object_get(nz, "mean"), *std = json_object_get(nz, "std");
    if (!mean && !std)
        return 0;
    int nm = 0, ns = 0;
    if (cfg_floats(mean, "mean", c->mean, &nm, -1e30, err) != 0 || cfg_floats(std, "std", c->std, &ns, 1e-30, err) != 0)
        return -1;
    if (nm != ns)
        return cds_errf(err, "train spec: \"normalize\" has %d means and %d stds: give one of each per channel", nm,
                        ns);
    c->n_norm = nm;
    return 0;
}

static int cfg_schedule(json_t *o, nn_train_cfg *c, cds_err *err)
{
    c->sched = NN_SCHED_CONSTANT;
    json_t *s = json_object_get(o, "schedule");
    if (!s)
        return 0;
    const char *kind = json_string_value(json_object_get(s, "kind"));
    if (!json_is_object(s) || !kind)
        return cds_errf(err, "train spec: \"schedule\" must be an object with \"kind\": constant, step or cosine");
    double v;
    if (strcmp(kind, "constant") == 0)
        return 0;
    if (strcmp(kind, "step") == 0) {
        c->sched = NN_SCHED_STEP;
        if (cfg_number(s, "every", 1, 1, 1e6, &v, err) != 0)
            return -1;
        c->sched_every = (int)v;
        return cfg_number(s, "gamma", 0.1, 0, 1, &c->sched_gamma, err);
    }
    if (strcmp(kind, "cosine") == 0) {
        c->sched = NN_SCHED_COSINE;
        if (cfg_number(s, "epochs", 0, 1, 1e6, &v, err) != 0)
            return -1;
        if (!json_object_get(s, "epochs"))
            return cds_errf(err, "train spec: a cosine \"schedule\" needs \"epochs\" (its period)");
        c->sched_epochs = (int)v;
        return cfg_number(s, "min_lr", 0, 0, 1e3, &c->sched_min_lr, err);
    }
    return cds_errf(err, "train spec: \"schedule\".\"kind\" \"%s\" is not constant, step or cosine", kind);
}

static const char *const train_fields[] = {"optimizer", "lr", "momentum", "beta1", "beta2", "eps", "l2", "batch",
                                           "seed", "schedule", "normalize", "lazy", "tf32", "cuda_graphs",
                                           "init", NULL};

static int cfg_lazy(json_t *o, nn_train_cfg *c, cds_err *err)
{
    json_t *v = json_object_get(o, "lazy");
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return cds_errf(err, "train spec: \"lazy\" must be true or false");
    c->lazy = json_is_true(v);
    if (c->lazy && !c->adam)
        return cds_errf(err, "train spec: \"lazy\" is a variant of Adam (only the rows a batch touches are updated): "
                             "use \"optimizer\": \"adam\" or drop \"lazy\"");
    return 0;
}

int nn_train_cfg_parse(const char *train_json, nn_train_cfg *c, cds_err *err)
{
    memset(c, 0, sizeof *c);
    json_error_t jerr;
    json_t *o = json_loads(train_json, 0, &jerr);
    if (!o)
        return cds_errf(err, "train spec: not JSON (%s at line %d)", jerr.text, jerr.line);
    int rc = -1;
    double batch = 32, seed = 1;
    const char *opt = json_string_value(json_object_get(o, "optimizer"));
    if (!json_is_object(o)) {
        cds_errf(err, "train spec: must be a JSON object (see docs/models.md)");
        goto out;
    }
    if (!opt || (strcmp(opt, "sgd") != 0 && strcmp(opt, "adam") != 0)) {
        cds_errf(err, "train spec: \"optimizer\" must be \"sgd\" or \"adam\"");
        goto out;
    }
    if (cds_json_check_fields(o, "train spec $", train_fields, "see docs/models.md", err) != 0)
        goto out;
    c->adam = strcmp(opt, "adam") == 0;
    if (cfg_lazy(o, c, err) != 0)
        goto out;
    json_t *tf32 = json_object_get(o, "tf32");
    if (tf32 && !json_is_boolean(tf32)) {
        cds_errf(err, "train spec: \"tf32\" must be true or false (true lets a GPU use TF32 for float32 products)");
        goto out;
    }
    c->tf32 = json_is_true(tf32);
    json_t *graphs = json_object_get(o, "cuda_graphs");
    if (graphs && !json_is_boolean(graphs)) {
        cds_errf(err, "train spec: \"cuda_graphs\" must be true or false (true replays each training step on a GPU "
                      "as one CUDA graph)");
        goto out;
    }
    c->cuda_graphs = json_is_true(graphs);
    json_t *init = json_object_get(o, "init");
    if (init && (!json_is_string(init) || json_string_length(init) == 0 || json_string_length(init) > 4096)) {
        cds_errf(err, "train spec: \"init\" must be the path of a checkpoint to start from (warm start)");
        goto out;
    }
    if (init && !(c->init = strdup(json_string_value(init)))) {
        cds_err_nomem(err, "out of memory");
        goto out;
    }
    if (!json_object_get(o, "lr")) {
        cds_errf(err, "train spec: \"lr\" (the learning rate) is required");
        goto out;
    }
    if (cfg_number(o, "lr", 0, 0, 1e3, &c->lr, err) || cfg_number(o, "momentum", 0.9, 0, 1, &c->momentum, err) ||
        cfg_number(o, "beta1", 0.9, 0, 0.999999, &c->beta1, err) ||
        cfg_number(o, "beta2", 0.999, 0, 0.99999999, &c->beta2, err) ||
        cfg_number(o, "eps", 1e-8, 0, 1, &c->eps, err) || cfg_number(o, "l2", 0, 0, 10, &c->l2, err) ||
        cfg_number(o, "batch", 32, 1, 1 << 20, &batch, err) || cfg_number(o, "seed", 1, 0, 9007199254740992.0, &seed, err) ||
        cfg_schedule(o, c, err) || cfg_normalize(o, c, err))
        goto out;
    c->batch = (int)batch;
    c->seed = (uint64_t)seed;
    c->json = json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (!c->json) {
        cds_err_nomem(err, "out of memory");
        goto out;
    }
    rc = 0;
out:
    if (rc != 0)
        nn_train_cfg_free(c); /* what was kept before the error */
    json_decref(o);
    return rc;
}

void nn_train_cfg_free(nn_train_cfg *c)
{
    free(c->json);
    c->json = NULL;
    free(c->init);
    c->init = NULL;
}

int nn_train_cfg_check_model(const nn_train_cfg *c, const char *model_json, cds_err *err)
{
    if (!c->lazy)
        return 0;
    json_t *o = json_loads(model_json, 0, NULL);
    int sparse = o && json_is_object(json_object_get(o, "sparse"));
    json_decref(o);
    return sparse ? 0 : cds_errf(err, LAZY_NEEDS_SPARSE);
}

double nn_train_cfg_lr(const nn_train_cfg *c, int64_t epoch)
{
    switch (c->sched) {
    case NN_SCHED_STEP:
        return c->lr * pow(c->sched_gamma, (double)(epoch / c->sched_every));
    case NN_SCHED_COSINE: {
        double e = (double)(epoch < c->sched_epochs ? epoch : c->sched_epochs);
        return c->sched_min_lr + (c->lr - c->sched_min_lr) * (1 + cos(M_PI * e / c->sched_epochs)) / 2;
    }
    case NN_SCHED_CONSTANT:
        break;
    }
    return c->lr;
}

/* ----------------------------------------------------------- optimisers */

static int has_embedding(nn_model *m)
{
    for (size_t i = 0; i < nn_model_param_count(m); i++)
        if (nn_model_param(m, i)->embedding)
            return 1;
    return 0;
}

nn_optim *nn_optim_new(nn_model *m, const nn_train_cfg *c, cds_err *err)
{
    nn_optim *o = calloc(1, sizeof *o);
    if (!o)
        return cds_err_nomem(err, "out of memory"), NULL;
    o->model = m;
    o->cfg = c;
    if (c->lazy && !has_embedding(m)) {
        free(o);
        return cds_errf(err, LAZY_NEEDS_SPARSE), NULL;
    }
    if (has_embedding(m) && nn_model_set_row_grads(m, 1, err) != 0) {
        free(o);
        return NULL;
    }
    size_t np = nn_model_param_count(m), per = c->adam ? 2 : 1, kind = 0;
    o->n_state = np * per;
    o->state = calloc(o->n_state, sizeof *o->state);
    o->names = calloc(o->n_state, sizeof *o->names);
    for (size_t i = 0; i < np; i++)
        kind += (nn_model_param(m, i)->w.n + 15) / 16 * 16;
    o->block_bytes = (kind > 0 ? kind * per : 16) * sizeof(float);
    o->block = nn_ctx_alloc(nn_model_ctx(m), o->block_bytes);
    if (!o->state || !o->names || !o->block) {
        nn_optim_free(o);
        return cds_err_nomem(err, "out of memory for the optimiser state of %zu parameters", nn_model_nparams(m)), NULL;
    }
    static const char *const prefix[2][2] = {{"buf:", NULL}, {"m:", "v:"}};
    size_t off = 0;
    for (size_t i = 0; i < np; i++) {
        const nn_param *p = nn_model_param(m, i);
        for (size_t k = 0; k < per; k++) {
            nn_tensor *t = &o->state[i * per + k];
            *t = p->w;
            t->data = o->block + k * kind + off;
            size_t len = strlen(p->name) + 8;
            o->names[i * per + k] = malloc(len);
            if (!o->names[i * per + k]) {
                nn_optim_free(o);
                return cds_err_nomem(err, "out of memory"), NULL;
            }
            snprintf(o->names[i * per + k], len, "%s%s", prefix[c->adam][k], p->name);
        }
        off += (p->w.n + 15) / 16 * 16;
    }
    return o;
}

void nn_optim_free(nn_optim *o)
{
    if (!o)
        return;
    for (size_t i = 0; o->names && i < o->n_state; i++)
        free(o->names[i]);
    free(o->names);
    free(o->state);
    if (o->block)
        nn_ctx_free(nn_model_ctx(o->model), o->block, o->block_bytes);
    free(o);
}

/* Whether parameter j continues the run that ends with parameter i: dense
 * both, the same L2, and each of its four tensors right after i's (the
 * padding between them included). */
static int continues_run(nn_optim *o, size_t i, size_t j)
{
    const nn_train_cfg *c = o->cfg;
    nn_param *a = nn_model_param(o->model, i), *b = nn_model_param(o->model, j);
    size_t pad = (a->w.n + 15) / 16 * 16, per = c->adam ? 2 : 1;
    if (b->row_grad || (c->l2 != 0 && a->decay != b->decay) || (c->adam && c->eps == 0))
        return 0;
    for (size_t k = 0; k < per; k++)
        if (o->state[j * per + k].data != o->state[i * per + k].data + pad)
            return 0;
    return b->w.data == a->w.data + pad && b->g.data == a->g.data + pad;
}

/* A 1-D view of n floats from t's start. */
static nn_tensor span(const nn_tensor *t, size_t n)
{
    nn_tensor v = *t;
    v.ndim = 1;
    v.shape[0] = (int)n;
    v.n = n;
    return v;
}

static int optim_step(nn_optim *o, double lr, cds_err *err)
{
    const nn_train_cfg *c = o->cfg;
    const nn_ctx *x = nn_model_ctx(o->model);
    size_t np = nn_model_param_count(o->model), per = c->adam ? 2 : 1;
    o->t++;
    for (size_t i = 0; i < np; i++) {
        nn_param *p = nn_model_param(o->model, i);
        float l2 = p->decay ? (float)c->l2 : 0.0f;
        nn_tensor *s0 = &o->state[i * per], *s1 = c->adam ? &o->state[i * per + 1] : NULL;
        float b1 = (float)c->beta1, b2 = (float)c->beta2, eps = (float)c->eps;
        long t = (long)o->t;
        int rc;
        if (!p->row_grad) {
            size_t last = i;
            while (last + 1 < np && continues_run(o, last, last + 1))
                last++;
            nn_param *q = nn_model_param(o->model, last);
            size_t n = (size_t)(q->w.data + q->w.n - p->w.data);
            nn_tensor w = span(&p->w, n), g = span(&p->g, n), m0 = span(s0, n), m1 = s1 ? span(s1, n) : w;
            rc = c->adam ? nn_op_adam_step(x, &w, &g, &m0, &m1, (float)lr, b1, b2, eps, l2, t, err)
                         : nn_op_sgd_step(x, &w, &g, &m0, (float)lr, (float)c->momentum, l2, err);
            i = last;
        }
        else if (c->lazy)
            rc = nn_op_lazy_adam_step(x, &p->w, &p->rows, s0, s1, (float)lr, b1, b2, eps, l2, t, err);
        else
            rc = c->adam ? nn_op_adam_rows_step(x, &p->w, &p->rows, s0, s1, (float)lr, b1, b2, eps, l2, t, err)
                         : nn_op_sgd_rows_step(x, &p->w, &p->rows, s0, (float)lr, (float)c->momentum, l2, err);
        if (rc != 0)
            return -1;
    }
    return 0;
}

int nn_optim_step(nn_optim *o, double lr, cds_err *err)
{
    nn_par_fp fp;
    nn_par_fp_enter(&fp);
    int rc = optim_step(o, lr, err);
    nn_par_fp_leave(&fp);
    return rc;
}

int64_t nn_optim_t(const nn_optim *o) { return o->t; }
void nn_optim_set_t(nn_optim *o, int64_t t) { o->t = t; }
const char *nn_optim_name(const nn_optim *o) { return o->cfg->adam ? "adam" : "sgd"; }
size_t nn_optim_state_count(const nn_optim *o) { return o->n_state; }

nn_tensor *nn_optim_state(nn_optim *o, size_t i, const char **name)
{
    if (name)
        *name = o->names[i];
    return &o->state[i];
}
