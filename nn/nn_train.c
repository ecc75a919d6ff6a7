/* nn_train: passes over shards, evaluation and checkpoints (see nn_train.h).
 *
 * State that decides the future of a run, and so is in every checkpoint:
 * weights, batch-norm running statistics, optimiser moments and step count,
 * epoch, global step, the shards visited in this epoch and the generator
 * that draws one dropout seed per training step.  Wall time is not state:
 * it goes to the caller's progress line only.
 *
 * The model lives on its device: a pass leaves each batch's loss and counts
 * there, folded into the pass's sums, and reads the sums back at most once a
 * second (the progress line, and whether a loss stopped being finite) and
 * at the end; a checkpoint copies every tensor to the host, and a restore
 * copies it back. */
#include "nn_train.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "nn_ckpt.h"
#include "nn_data.h"
#include "nn_rng.h"

struct nn_trainer {
    char *spec;             /* {"model":..,"train":..} canonical */
    nn_train_cfg cfg;
    nn_model *model;
    nn_optim *optim;
    int64_t epoch, step;
    int32_t *visited;
    size_t n_visited, cap_visited;
    nn_rng rng;
};

static const uint64_t RNG_STREAM = 0x747261696e; /* keeps the dropout stream apart from initialisation */

static char *member_json(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return v ? json_dumps(v, JSON_SORT_KEYS | JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
}

static nn_trainer *trainer_build(const char *model_json, const char *train_json, nn_place where, cds_err *err)
{
    nn_trainer *t = calloc(1, sizeof *t);
    if (!t)
        return cds_err_nomem(err, "out of memory"), NULL;
    if (nn_train_cfg_parse(train_json, &t->cfg, err) != 0) {
        free(t);
        return NULL;
    }
    t->model = nn_model_new_at(model_json, t->cfg.batch, t->cfg.seed, where, t->cfg.tf32, err);
    if (!t->model)
        goto fail;
    t->optim = nn_optim_new(t->model, &t->cfg, err);
    if (!t->optim)
        goto fail;
    size_t len = strlen(nn_model_spec(t->model)) + strlen(t->cfg.json) + 32;
    t->spec = malloc(len);
    if (!t->spec) {
        cds_err_nomem(err, "out of memory");
        goto fail;
    }
    snprintf(t->spec, len, "{\"model\":%s,\"train\":%s}", nn_model_spec(t->model), t->cfg.json);
    nn_rng_seed(&t->rng, nn_rng_mix(t->cfg.seed, RNG_STREAM, 0));
    return t;
fail:
    nn_trainer_free(t);
    return NULL;
}

nn_trainer *nn_trainer_new(const char *spec_json, cds_err *err)
{
    return nn_trainer_new_at(spec_json, NN_PLACE_CPU, err);
}

static int restore(nn_model *m, const nn_ckpt_tensor *all, size_t n, const char *name, nn_tensor *dst,
                   const char *path, cds_err *err);

/* Warm start (the train spec's "init", a sweep's $.init): the weights and
 * batch-norm statistics of the checkpoint at path, each by name and shape;
 * the optimiser, the step and the epoch stay fresh, as MADlib's warm start
 * and transfer learning do. */
static int warm_start(nn_trainer *t, const char *path, cds_err *err)
{
    nn_ckpt c;
    if (nn_ckpt_load(path, &c, err) != 0)
        return cds_err_wrap(err, "warm start (\"init\")");
    nn_model *m = t->model;
    size_t np = nn_model_param_count(m), nb = nn_model_buffer_count(m);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < np; i++)
        rc = restore(m, c.params, c.n_params, nn_model_param(m, i)->name, &nn_model_param(m, i)->w, path, err);
    for (size_t i = 0; rc == 0 && i < nb; i++)
        rc = restore(m, c.params, c.n_params, nn_model_buffer(m, i)->name, &nn_model_buffer(m, i)->t, path, err);
    nn_ckpt_free(&c);
    return rc == 0 ? 0 : cds_err_wrap(err, "warm start (\"init\")");
}

nn_trainer *nn_trainer_new_at(const char *spec_json, nn_place where, cds_err *err)
{
    json_error_t jerr;
    json_t *o = json_loads(spec_json, 0, &jerr);
    if (!o)
        return cds_errf(err, "spec: not JSON (%s at line %d)", jerr.text, jerr.line), NULL;
    char *model = member_json(o, "model"), *train = member_json(o, "train");
    nn_trainer *t = NULL;
    if (!json_is_object(o) || !model || !train)
        cds_errf(err, "spec: must be an object with \"model\" and \"train\" (see docs/models.md)");
    else
        t = trainer_build(model, train, where, err);
    /* Only a new trainer starts warm: one loaded from its own checkpoint
     * (nn_trainer_load*) has moved on from it. */
    if (t && t->cfg.init && warm_start(t, t->cfg.init, err) != 0) {
        nn_trainer_free(t);
        t = NULL;
    }
    free(model);
    free(train);
    json_decref(o);
    return t;
}

void nn_trainer_free(nn_trainer *t)
{
    if (!t)
        return;
    nn_optim_free(t->optim);
    nn_model_free(t->model);
    nn_train_cfg_free(&t->cfg);
    free(t->visited);
    free(t->spec);
    free(t);
}

/* ------------------------------------------------------------- passes */

/* A GPU's data loader builds its batches in the device's pinned memory. */
static void *pinned_alloc(void *ctx, size_t bytes)
{
    return nn_ctx_host_alloc(ctx, bytes);
}

static void pinned_free(void *ctx, void *p, size_t bytes)
{
    nn_ctx_host_free(ctx, p, bytes);
}

static int open_shard(nn_trainer *t, const char *dir, int shard_index, int shuffle, int batch, int64_t pass_rows,
                      nn_data **out, cds_err *err)
{
    nn_data_opts o;
    memset(&o, 0, sizeof o);
    o.batch = batch > 0 ? batch : t->cfg.batch;
    o.pass_rows = pass_rows;
    o.seed = t->cfg.seed;
    o.shuffle = shuffle;
    int shape[3], sparse_dim = 0;
    o.sample_ndim = nn_model_input(t->model, shape, &sparse_dim);
    for (int i = 0; i < o.sample_ndim; i++)
        o.sample_shape[i] = shape[i];
    o.sparse = sparse_dim > 0;
    o.sparse_dim = sparse_dim;
    o.scale = t->cfg.scale;
    o.n_norm = t->cfg.n_norm;
    for (int i = 0; i < t->cfg.n_norm; i++) {
        o.mean[i] = t->cfg.mean[i];
        o.std[i] = t->cfg.std[i];
    }
    o.prefetch = 1;
    /* A GPU is sent uint8 rows and normalises them; the CPU converts on
     * the prefetch thread, beside the step. */
    o.raw_u8 = nn_model_ctx(t->model)->dev != NN_CPU;
    if (nn_model_ctx(t->model)->dev != NN_CPU) {
        o.buf_alloc = pinned_alloc;
        o.buf_free = pinned_free;
        o.buf_ctx = nn_model_ctx(t->model);
    }
    o.classes = nn_model_classes(t->model);
    *out = nn_data_open(dir, shard_index, &o, err);
    return *out ? 0 : -1;
}

/* A raw uint8 batch (a GPU's) goes into the model's input here; the next
 * forward is then given no x. */
static int feed_u8(nn_trainer *t, nn_data *d, const nn_batch *b, cds_err *err)
{
    nn_u8_form f;
    if (!b->x_u8)
        return 0;
    if (nn_data_u8_form(d, &f) != 0)
        return cds_errf(err, "a raw batch from a shard without a uint8 form");
    return nn_model_input_u8(t->model, b->x_u8, b->n, &f, err);
}

/* The pass's sums as the device has them: at most once a second while a
 * pass runs (the progress line's figures), and at its end.  Returns 1 when
 * a loss was not finite, the step it happened at in *bad. */
static int read_sums(nn_trainer *t, nn_pass_stats *st, nn_pass_acc *bad)
{
    nn_pass_acc a;
    nn_model_acc_get(t->model, &a);
    st->rows = a.rows;
    st->loss_sum = a.loss_sum;
    st->xent_sum = a.xent_sum;
    st->top1 = a.top1;
    st->top5 = a.top5;
    *bad = a;
    return a.bad_step >= 0;
}

/* Starts the device's sums from *st (zeros for a training pass; what
 * earlier shards summed for an evaluation), so they add up in the same
 * order as they always have. */
static void start_sums(nn_trainer *t, const nn_pass_stats *st)
{
    nn_pass_acc a = {.loss_sum = st->loss_sum, .xent_sum = st->xent_sum, .rows = st->rows, .top1 = st->top1,
                     .top5 = st->top5, .bad_step = -1};
    nn_model_acc_set(t->model, &a);
}

#define READ_EVERY_MS 1000

static int visit(nn_trainer *t, int shard_index, cds_err *err)
{
    if (t->n_visited == t->cap_visited) {
        size_t cap = t->cap_visited ? t->cap_visited * 2 : 16;
        int32_t *v = realloc(t->visited, cap * sizeof *v);
        if (!v)
            return cds_err_nomem(err, "out of memory");
        t->visited = v;
        t->cap_visited = cap;
    }
    t->visited[t->n_visited++] = shard_index;
    return 0;
}

int nn_trainer_forward_backward(nn_trainer *t, const float *x, const int32_t *idx, const int32_t *labels, int n,
                                cds_err *err)
{
    uint64_t dropout_seed = nn_rng_next(&t->rng);
    if (nn_model_forward_acc(t->model, x, idx, labels, n, 1, dropout_seed, t->cfg.l2, t->step, err) != 0)
        return -1;
    return nn_model_backward(t->model, err);
}

int nn_trainer_optim_step(nn_trainer *t, cds_err *err)
{
    if (nn_optim_step(t->optim, nn_trainer_lr(t), err) != 0)
        return -1;
    t->step++;
    return 0;
}

int nn_trainer_shadow_step(nn_trainer *t, int (*reduce)(void *ctx, cds_err *err), void *ctx, cds_err *err)
{
    (void)nn_rng_next(&t->rng);
    return reduce(ctx, err) != 0 ? -1 : nn_trainer_optim_step(t, err);
}

/* One training step.  Graphed (the train spec's "cuda_graphs": a GPU
 * captures the step once and then replays it, docs/engine-backend.md) when
 * the batch is full, so that its shapes are the pass's, and when nothing
 * runs between backward and the optimiser step: a data-parallel reducer's
 * collectives wait on the host, which a graph cannot.  The batch is staged
 * before the step, outside the graph. */
static int train_step(nn_trainer *t, const nn_batch *b, int n, int full, const nn_dp_pass *o, cds_err *err)
{
    if (!t->cfg.cuda_graphs || o->after_backward || n != full)
        return nn_trainer_forward_backward(t, b->x, b->idx, b->y, n, err) != 0 ||
                       (o->after_backward && o->after_backward(o->hook_ctx, err) != 0) ||
                       nn_trainer_optim_step(t, err) != 0
                   ? -1
                   : 0;
    const nn_ctx *c = nn_model_ctx(t->model);
    if (nn_model_stage(t->model, b->x, b->idx, b->y, n, err) != 0)
        return -1;
    nn_ctx_graph_begin(c, nn_model_stage_key(t->model));
    int rc = nn_trainer_forward_backward(t, b->x, b->idx, b->y, n, err) != 0 || nn_trainer_optim_step(t, err) != 0
                 ? -1
                 : 0;
    if (nn_ctx_graph_end(c, rc == 0) != 0 && rc == 0) {
        if (nn_ctx_check(c, err) == 0)
            cds_errf(err, "a graphed training step failed on device %s", c->be->name);
        return -1;
    }
    return rc;
}

int nn_trainer_step_batch(nn_trainer *t, const float *x, const int32_t *idx, const int32_t *labels, int n,
                          cds_err *err)
{
    nn_batch b = {.n = n, .x = x, .idx = idx, .y = labels};
    nn_dp_pass o = {0};
    return train_step(t, &b, n, t->cfg.batch, &o, err);
}

void nn_trainer_graph_counts(const nn_trainer *t, long *captured, long *replayed)
{
    nn_ctx_graph_counts(nn_model_ctx(t->model), captured, replayed);
}

/* The loss became NaN or infinite at step bad->bad_step: the trainer
 * counts the steps before it, as if it had stopped there. */
static int diverged(nn_trainer *t, const nn_pass_acc *bad, double lr, cds_err *err)
{
    t->step = bad->bad_step;
    cds_errf(err, "the loss became %s at step %lld (lr %g): the model diverged",
             isnan(bad->bad_loss) ? "NaN" : "infinite", (long long)bad->bad_step, lr);
    return NN_TRAIN_DIVERGED;
}

/* Training steps over one shard: one pass in its order (steps < 0), or
 * exactly `steps` steps, starting the shard again when it ends, each round
 * in the order of the next epoch (round r: epoch + r).  o->batch 0 is the
 * configuration's; o->after_backward runs between backward and the
 * optimiser step.  A data-parallel pass (o->dp) reads the sums only at its
 * end: a rank that stopped alone at a diverged loss would leave its gang
 * waiting in a collective, so every rank runs the whole pass and the gang
 * agrees afterwards. */
static int train_pass(nn_trainer *t, const char *shard_dir, int shard_index, const nn_dp_pass *o, int64_t steps,
                      int dp, nn_progress_fn progress, void *ctx, nn_pass_stats *st, cds_err *err)
{
    memset(st, 0, sizeof *st);
    nn_data *d;
    if (open_shard(t, shard_dir, shard_index, 1, o->batch, o->rows, &d, err) != 0)
        return -1;
    nn_model_set_row_offset(t->model, o->row_offset);
    const int full = o->batch ? o->batch : t->cfg.batch;
    int64_t t0 = cds_mono_ms(), total = nn_data_rows(d), done = 0, taken = 0, last_read = t0 - READ_EVERY_MS;
    if (steps >= 0)
        total = 0; /* not known in rows: the progress line shows rows done */
    double lr = nn_trainer_lr(t);
    start_sums(t, st);
    int rc = nn_data_begin(d, t->epoch, err), round = 0;
    nn_batch b;
    nn_pass_acc bad;
    int n = 0;
    while (rc == 0 && (steps < 0 || taken < steps)) {
        if ((n = nn_data_next(d, &b, err)) == 0 && steps >= 0 && taken > 0) {
            rc = nn_data_begin(d, t->epoch + ++round, err); /* wrap around */
            continue;
        }
        if (n <= 0)
            break;
        if (feed_u8(t, d, &b, err) != 0 || train_step(t, &b, n, full, o, err) != 0) {
            rc = -1;
            break;
        }
        done += n;
        taken++;
        int64_t now = cds_mono_ms();
        if (!dp && now - last_read >= READ_EVERY_MS) {
            last_read = now;
            if (read_sums(t, st, &bad)) {
                rc = diverged(t, &bad, lr, err);
                break;
            }
        }
        if (progress && progress(ctx, done, total ? total : done, st) != 0) {
            rc = NN_TRAIN_STOPPED;
            cds_errf(err, "stopped after %lld of %lld rows", (long long)done, (long long)(total ? total : done));
            break;
        }
    }
    if (rc == 0 && n < 0)
        rc = -1;
    if ((rc == 0 || rc == NN_TRAIN_STOPPED) && read_sums(t, st, &bad))
        rc = diverged(t, &bad, lr, err);
    if (rc != -1 && nn_ctx_check(nn_model_ctx(t->model), err) != 0)
        rc = -1; /* a device error: the sums above are not to be trusted */
    nn_model_set_row_offset(t->model, 0);
    st->bytes = done * nn_data_row_bytes(d);
    nn_data_close(d);
    st->seconds = (double)(cds_mono_ms() - t0) / 1000.0;
    if (rc == NN_TRAIN_STOPPED || rc == NN_TRAIN_DIVERGED)
        return cds_err_wrap(err, "training on %s", shard_dir), rc;
    return rc == 0 ? 0 : cds_err_wrap(err, "training on %s", shard_dir);
}

int nn_trainer_train_shard(nn_trainer *t, const char *shard_dir, int shard_index, nn_progress_fn progress,
                           void *ctx, nn_pass_stats *st, cds_err *err)
{
    nn_dp_pass o = {0};
    int rc = train_pass(t, shard_dir, shard_index, &o, -1, 0, progress, ctx, st, err);
    return rc != 0 ? rc : visit(t, shard_index, err);
}

int nn_trainer_train_dp(nn_trainer *t, const char *shard_dir, int shard_index, const nn_dp_pass *o,
                        nn_progress_fn progress, void *ctx, nn_pass_stats *st, cds_err *err)
{
    if (o->rows < 0 || o->batch < 0 || o->row_offset < 0)
        return cds_errf(err, "a data-parallel pass of %lld rows in batches of %d from row %lld: give rows >= 0 (0: the "
                             "shard's), batch >= 0 (0: the configuration's) and a row offset >= 0",
                        (long long)o->rows, o->batch, (long long)o->row_offset);
    return train_pass(t, shard_dir, shard_index, o, -1, 1, progress, ctx, st, err);
}

int nn_trainer_shard_rows(nn_trainer *t, const char *shard_dir, int64_t *rows, cds_err *err)
{
    nn_data *d;
    if (open_shard(t, shard_dir, 0, 0, 0, 0, &d, err) != 0)
        return -1;
    *rows = nn_data_rows(d);
    nn_data_close(d);
    return 0;
}

int nn_trainer_train_steps(nn_trainer *t, const char *shard_dir, int shard_index, int64_t steps,
                           nn_progress_fn progress, void *ctx, nn_pass_stats *st, cds_err *err)
{
    if (steps < 1)
        return cds_errf(err, "training steps: %lld; give at least 1", (long long)steps);
    nn_dp_pass o = {0};
    return train_pass(t, shard_dir, shard_index, &o, steps, 0, progress, ctx, st, err);
}

/* The one inference pass, of test scoring (fn NULL) and prediction: the
 * shard in file order, in the configuration's batches, no updates; each
 * batch's metrics go to the pass sums, and with fn its logits to the host. */
static int infer_pass(nn_trainer *t, const char *shard_dir, nn_logits_fn fn, void *ctx, nn_pass_stats *st,
                      cds_err *err)
{
    nn_data *d;
    if (open_shard(t, shard_dir, 0, 0, 0, 0, &d, err) != 0)
        return -1;
    int64_t t0 = cds_mono_ms(), rows0 = st->rows;
    int K = nn_model_classes(t->model);
    size_t nlog = 0; /* the output is sized by the first forward */
    float *logits = NULL;
    start_sums(t, st);
    int rc = nn_data_begin(d, 0, err);
    nn_batch b;
    int n = 0;
    while (rc == 0 && (n = nn_data_next(d, &b, err)) > 0) {
        if (feed_u8(t, d, &b, err) != 0 || nn_model_forward_acc(t->model, b.x, b.idx, b.y, n, 0, 0, t->cfg.l2, 0, err) != 0)
            rc = -1;
        else if (fn && nn_model_logits_size(t->model) > nlog) {
            free(logits);
            nlog = nn_model_logits_size(t->model);
            if (!(logits = malloc(nlog * sizeof *logits)))
                rc = cds_err_nomem(err, "out of memory for %zu logits", nlog);
        }
        if (rc == 0 && fn && (size_t)n * (size_t)K > nlog)
            rc = cds_errf(err, "a batch of %d rows is larger than the model's output (%zu logits)", n, nlog);
        else if (rc == 0 && fn) {
            nn_model_logits(t->model, logits);
            rc = fn(ctx, logits, n, K, err);
        }
    }
    if (rc == 0 && n < 0)
        rc = -1;
    nn_pass_acc sums;
    if (rc == 0)
        read_sums(t, st, &sums);
    if (rc == 0 && nn_ctx_check(nn_model_ctx(t->model), err) != 0)
        rc = -1;
    st->bytes += (st->rows - rows0) * nn_data_row_bytes(d);
    nn_data_close(d);
    free(logits);
    st->seconds += (double)(cds_mono_ms() - t0) / 1000.0;
    return rc;
}

int nn_trainer_eval_shard(nn_trainer *t, const char *shard_dir, nn_pass_stats *st, cds_err *err)
{
    return infer_pass(t, shard_dir, NULL, NULL, st, err) == 0 ? 0 : cds_err_wrap(err, "evaluating on %s", shard_dir);
}

int nn_trainer_predict_shard(nn_trainer *t, const char *shard_dir, nn_logits_fn fn, void *ctx, nn_pass_stats *st,
                             cds_err *err)
{
    if (!fn)
        return cds_errf(err, "predicting on %s: no function to take the logits", shard_dir);
    return infer_pass(t, shard_dir, fn, ctx, st, err) == 0 ? 0 : cds_err_wrap(err, "predicting on %s", shard_dir);
}

void nn_trainer_end_epoch(nn_trainer *t)
{
    t->epoch++;
    t->n_visited = 0;
}

/* -------------------------------------------------------- checkpoints */

/* A checkpoint tensor over host memory at *at (advanced by x's size),
 * holding a copy of x. */
static nn_ckpt_tensor as_ckpt(nn_model *m, const char *name, const nn_tensor *x, float **at)
{
    nn_ckpt_tensor c;
    memset(&c, 0, sizeof c);
    c.name = (char *)name;
    c.ndim = x->ndim;
    for (int i = 0; i < x->ndim; i++)
        c.shape[i] = x->shape[i];
    c.data = *at;
    nn_model_read(m, x, c.data);
    *at += x->n;
    return c;
}

/* The state to save, copied from the device into one host block (*host,
 * freed by the caller). */
static int save_list(nn_trainer *t, nn_ckpt *c, float **host, cds_err *err)
{
    nn_model *m = t->model;
    size_t np = nn_model_param_count(m), nb = nn_model_buffer_count(m), ns = nn_optim_state_count(t->optim);
    size_t floats = 1;
    for (size_t i = 0; i < np; i++)
        floats += nn_model_param(m, i)->w.n;
    for (size_t i = 0; i < nb; i++)
        floats += nn_model_buffer(m, i)->t.n;
    for (size_t i = 0; i < ns; i++)
        floats += nn_optim_state(t->optim, i, NULL)->n;
    c->params = calloc(np + nb + 1, sizeof *c->params);
    c->opt_state = calloc(ns + 1, sizeof *c->opt_state);
    *host = malloc(floats * sizeof(float));
    if (!c->params || !c->opt_state || !*host)
        return cds_err_nomem(err, "out of memory for a host copy of %zu values to checkpoint", floats - 1);
    float *at = *host;
    for (size_t i = 0; i < np; i++)
        c->params[c->n_params++] = as_ckpt(m, nn_model_param(m, i)->name, &nn_model_param(m, i)->w, &at);
    for (size_t i = 0; i < nb; i++)
        c->params[c->n_params++] = as_ckpt(m, nn_model_buffer(m, i)->name, &nn_model_buffer(m, i)->t, &at);
    for (size_t i = 0; i < ns; i++) {
        const char *name;
        nn_tensor *x = nn_optim_state(t->optim, i, &name);
        c->opt_state[c->n_opt_state++] = as_ckpt(m, name, x, &at);
    }
    return 0;
}

/* ---- model averaging: one optimiser state per rank -------------------- */

/* A rank's state as one vector: the optimiser's tensors in order, then t
 * as two floats (t >> 24, t & 0xffffff: each exact in a float). */
size_t nn_trainer_opt_floats(nn_trainer *t)
{
    size_t n = 2;
    for (size_t i = 0; i < nn_optim_state_count(t->optim); i++)
        n += nn_optim_state(t->optim, i, NULL)->n;
    return n;
}

void nn_trainer_opt_get(nn_trainer *t, float *host)
{
    for (size_t i = 0; i < nn_optim_state_count(t->optim); i++) {
        nn_tensor *x = nn_optim_state(t->optim, i, NULL);
        nn_model_read(t->model, x, host);
        host += x->n;
    }
    int64_t step = nn_optim_t(t->optim);
    host[0] = (float)(step >> 24);
    host[1] = (float)(step & 0xffffff);
}

/* The names of rank k's tensors ("r<k>/<name>", "r<k>/t"), in one block. */
static char *rank_names(nn_trainer *t, int ranks, char ***out, cds_err *err)
{
    size_t ns = nn_optim_state_count(t->optim), bytes = 0;
    for (size_t i = 0; i < ns; i++) {
        const char *name;
        nn_optim_state(t->optim, i, &name);
        bytes += strlen(name) + 16;
    }
    bytes = (bytes + 32) * (size_t)ranks;
    char *block = malloc(bytes), *at = block;
    *out = calloc((ns + 1) * (size_t)ranks + 1, sizeof **out);
    if (!block || !*out) {
        free(block);
        free(*out);
        *out = NULL;
        cds_err_nomem(err, "out of memory naming %d ranks' optimiser states", ranks);
        return NULL;
    }
    size_t j = 0;
    for (int k = 1; k <= ranks; k++) {
        for (size_t i = 0; i <= ns; i++) {
            const char *name = "t";
            if (i < ns)
                nn_optim_state(t->optim, i, &name);
            (*out)[j++] = at;
            at += sprintf(at, "r%d/%s", k, name) + 1;
        }
    }
    return block;
}

static int save_with(nn_trainer *t, const char *path, const float *others, int n_others, cds_err *err);

int nn_trainer_save(nn_trainer *t, const char *path, cds_err *err)
{
    return save_with(t, path, NULL, 0, err);
}

int nn_trainer_save_ranks(nn_trainer *t, const char *path, const float *others, int n_others, cds_err *err)
{
    if (n_others < 0 || (n_others > 0 && !others))
        return cds_errf(err, "checkpoint %s: %d other ranks' optimiser states given", path, n_others);
    return save_with(t, path, others, n_others, err);
}

static int save_with(nn_trainer *t, const char *path, const float *others, int n_others, cds_err *err)
{
    nn_model *m = t->model;
    nn_ckpt c;
    memset(&c, 0, sizeof c);
    float *host = NULL;
    char **names = NULL, *name_block = NULL;
    int rc = save_list(t, &c, &host, err);
    if (rc == 0 && nn_ctx_check(nn_model_ctx(m), err) != 0)
        rc = -1; /* never write what a failing device copied out */
    if (rc == 0 && n_others > 0) {
        /* Rank k's tensors follow rank 0's, same shapes, named r<k>/. */
        size_t ns = nn_optim_state_count(t->optim), per = nn_trainer_opt_floats(t);
        nn_ckpt_tensor *more = realloc(c.opt_state, (ns + (ns + 1) * (size_t)n_others + 1) * sizeof *more);
        name_block = more ? rank_names(t, n_others, &names, err) : NULL;
        if (more)
            c.opt_state = more;
        if (!more || !name_block) {
            rc = more ? -1 : cds_err_nomem(err, "out of memory for %d ranks' optimiser states", n_others);
        } else {
            size_t j = 0;
            for (int k = 0; k < n_others; k++) {
                const float *v = others + (size_t)k * per;
                for (size_t i = 0; i < ns; i++) {
                    nn_ckpt_tensor e = c.opt_state[i];
                    e.name = names[j++];
                    e.data = (float *)v;
                    v += nn_optim_state(t->optim, i, NULL)->n;
                    c.opt_state[c.n_opt_state++] = e;
                }
                nn_ckpt_tensor e = {.name = names[j++], .ndim = 1, .shape = {2}, .data = (float *)v};
                c.opt_state[c.n_opt_state++] = e;
            }
        }
    }
    if (rc == 0) {
        c.spec_json = (char *)nn_model_spec(m);
        c.hparams_json = t->cfg.json;
        c.epoch = t->epoch;
        c.step = t->step;
        c.visited = t->visited;
        c.n_visited = t->n_visited;
        c.optimizer = (char *)nn_optim_name(t->optim);
        c.opt_t = nn_optim_t(t->optim);
        memcpy(c.rng, t->rng.s, sizeof c.rng);
        rc = nn_ckpt_save(path, &c, err);
    }
    free(host);
    free(c.params);
    free(c.opt_state);
    free(names);
    free(name_block);
    return rc;
}

/* Copies a checkpoint tensor into a model tensor of the same name and shape. */
static int restore(nn_model *m, const nn_ckpt_tensor *all, size_t n, const char *name, nn_tensor *dst,
                   const char *path, cds_err *err)
{
    const nn_ckpt_tensor *s = nn_ckpt_find(all, n, name);
    if (!s)
        return cds_errf(err, "checkpoint %s has no tensor %s: it was written for another model", path, name);
    size_t count = 1;
    for (int i = 0; i < s->ndim; i++)
        count *= (size_t)s->shape[i];
    if (count != dst->n || s->ndim != dst->ndim)
        return cds_errf(err, "checkpoint %s: tensor %s has %zu values, the model %zu: it was written for another model",
                        path, name, count, dst->n);
    nn_model_write(m, dst, s->data);
    return 0;
}

static int restore_all(nn_trainer *t, const nn_ckpt *c, const char *path, int rank, cds_err *err)
{
    nn_model *m = t->model;
    size_t np = nn_model_param_count(m), nb = nn_model_buffer_count(m);
    /* An MA checkpoint holds every rank's optimiser tensors: rank 0's under
     * their own names, rank k's under r<k>/. */
    if (c->n_params != np + nb || c->n_opt_state < nn_optim_state_count(t->optim))
        return cds_errf(err, "checkpoint %s holds %zu tensors and %zu optimiser tensors, the model needs %zu and %zu",
                        path, c->n_params, c->n_opt_state, np + nb, nn_optim_state_count(t->optim));
    if (strcmp(c->optimizer, nn_optim_name(t->optim)) != 0)
        return cds_errf(err, "checkpoint %s was written by %s, the spec says %s", path, c->optimizer,
                        nn_optim_name(t->optim));
    for (size_t i = 0; i < np; i++)
        if (restore(m, c->params, c->n_params, nn_model_param(m, i)->name, &nn_model_param(m, i)->w, path, err) != 0)
            return -1;
    for (size_t i = 0; i < nb; i++)
        if (restore(m, c->params, c->n_params, nn_model_buffer(m, i)->name, &nn_model_buffer(m, i)->t, path, err) != 0)
            return -1;
    for (size_t i = 0; i < nn_optim_state_count(t->optim); i++) {
        const char *name;
        char ranked[256];
        nn_tensor *x = nn_optim_state(t->optim, i, &name);
        if (rank > 0)
            snprintf(ranked, sizeof ranked, "r%d/%s", rank, name);
        if (restore(m, c->opt_state, c->n_opt_state, rank > 0 ? ranked : name, x, path, err) != 0)
            return -1;
    }
    nn_optim_set_t(t->optim, c->opt_t);
    if (rank > 0) {
        char tname[32];
        snprintf(tname, sizeof tname, "r%d/t", rank);
        const nn_ckpt_tensor *s = nn_ckpt_find(c->opt_state, c->n_opt_state, tname);
        if (!s || s->ndim != 1 || s->shape[0] != 2)
            return cds_errf(err, "checkpoint %s has no optimiser state for rank %d (%s): it was not written by an MA "
                                 "gang of that many ranks", path, rank, tname);
        nn_optim_set_t(t->optim, ((int64_t)s->data[0] << 24) + (int64_t)s->data[1]);
    }
    t->epoch = c->epoch;
    t->step = c->step;
    memcpy(t->rng.s, c->rng, sizeof t->rng.s);
    for (size_t i = 0; i < c->n_visited; i++)
        if (visit(t, c->visited[i], err) != 0)
            return -1;
    return 0;
}

nn_trainer *nn_trainer_load(const char *ckpt_path, cds_err *err)
{
    return nn_trainer_load_at(ckpt_path, 0, NN_PLACE_CPU, err);
}

nn_trainer *nn_trainer_load_rank(const char *ckpt_path, int rank, cds_err *err)
{
    return nn_trainer_load_at(ckpt_path, rank, NN_PLACE_CPU, err);
}

nn_trainer *nn_trainer_load_at(const char *ckpt_path, int rank, nn_place where, cds_err *err)
{
    nn_ckpt c;
    if (rank < 0) {
        cds_errf(err, "checkpoint %s: rank %d is negative", ckpt_path, rank);
        return NULL;
    }
    if (nn_ckpt_load(ckpt_path, &c, err) != 0)
        return NULL;
    nn_trainer *t = trainer_build(c.spec_json, c.hparams_json, where, err);
    if (t && restore_all(t, &c, ckpt_path, rank, err) != 0) {
        nn_trainer_free(t);
        t = NULL;
    }
    nn_ckpt_free(&c);
    return t;
}

/* ----------------------------------------------------------- accessors */

int64_t nn_trainer_epoch(const nn_trainer *t) { return t->epoch; }
int64_t nn_trainer_step(const nn_trainer *t) { return t->step; }
double nn_trainer_lr(const nn_trainer *t) { return nn_train_cfg_lr(&t->cfg, t->epoch); }
nn_model *nn_trainer_model(nn_trainer *t) { return t->model; }
const nn_train_cfg *nn_trainer_cfg(const nn_trainer *t) { return &t->cfg; }
const char *nn_trainer_spec(const nn_trainer *t) { return t->spec; }

size_t nn_trainer_visited(const nn_trainer *t, const int32_t **shards)
{
    if (shards)
        *shards = t->visited;
    return t->n_visited;
}
