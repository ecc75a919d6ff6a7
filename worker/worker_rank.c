/* worker_rank: one rank of a DDP or MA gang (DESIGN.md §6), in a process of
 * its own.
 *
 * Gloo cannot interrupt a collective in flight, so a rank trains in a child
 * of its worker (worker_mop_gang.c), which kills it when the gang ends
 * elsewhere; the child is cds-worker itself, run again with --rank-task.  It
 * reads its task (the rank's lease and the model's spec, JSON) from one
 * pipe, writes progress lines to another, and exits with a code that tells
 * the worker what is left to do:
 *
 *   0                   the epoch went through (rank 0 committed it; the
 *                       line "c <version> <model_done> <path>\t<superseded>"
 *                       told the worker, which keeps the model's directory);
 *   WORKER_RANK_BROKEN  a collective failed (a peer died, stalled or ended
 *                       the gang): the worker ends the gang as a stall, if
 *                       nobody has;
 *   WORKER_RANK_ENDED   this rank ended the gang itself in Redis (a failed
 *                       attempt, a diverged loss) or found it gone: nothing.
 *
 * An epoch, every rank in the same order of collectives:
 *   join      the communicator, through the rendezvous scope "<S>.g<G>";
 *   start     every rank loads the committed checkpoint (version 0: a fresh
 *             model from the spec), then rank 0's weights are broadcast;
 *   rows      every rank's shard size, all-gathered, so every rank knows
 *             the steps of the epoch (a hybrid rank: its step count);
 *   train     DDP: every rank takes the longest shard's rows, b/W a step
 *             (a shorter shard goes on in its next epoch's order), gradients
 *             averaged in buckets during backward; MA: one pass over the
 *             shard with batch b, then the weights (and running statistics)
 *             averaged and every rank's optimiser state sent to rank 0, which
 *             keeps them all in the checkpoint (each rank goes on from its
 *             own next epoch); the hybrid (mode "mop": a MOP sweep's idle
 *             workers lent to one model, DESIGN.md §6): rank r reads
 *             shards r, r+W, ... of the K, each once in its own order, b/W
 *             rows a step, and past its data takes shadow steps (zero
 *             gradients into the same reductions, the same optimiser step:
 *             PyTorch's Join) until the rank with the most steps is done,
 *             so every row is seen exactly once;
 *   agree     a diverged loss anywhere is seen by all (summed flags);
 *   metrics   each rank's pass, as JSON, through the rendezvous keys;
 *   commit    rank 0 writes v<N>-<token>.ckpt and epoch-<e>.ckpt and
 *             commits with its token, inside a barrier whose time-out is
 *             longer (the others wait while it writes), so a rank leaves
 *             only once the epoch is settled.
 * A diag.sleep model (tests and benchmarks of the scheduler) sleeps instead:
 * each rank as long as its slowest peer's visits would take, rank 0 commits
 * a text checkpoint, no collective. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cds_layout.h"
#include "cds_res.h"
#include "cds_util.h"
#include "ddp_comm.h"
#include "ddp_reducer.h"
#include "nn_backend.h"
#include "nn_par.h"
#include "nn_train.h"
#include "worker_mop_int.h"
#include "worker_rank.h"

typedef struct rank_ctx {
    const worker_cfg *cfg;
    cds_log log;
    queue_conn *q;
    char sweep[QUEUE_SWEEP_ID_MAX];
    queue_mop_lease l;
    int64_t timeout_ms;
    ddp_sparse sparse; /* how a sparse mlp's embedding is averaged (--ddp-sparse) */
    int nccl;          /* the gang joins over NCCL (--ddp-transport nccl) */
    nn_place place;    /* the worker's device, from the task */
    char device[16];
    char addr[256], iface[64];
    FILE *out;           /* progress lines to the worker */
    int64_t last_line_ms;
    nn_trainer *t;
    ddp_comm *c;
    ddp_reducer *r;
    int reduce_failed; /* the gradient reduction failed: the gang broke */
    float *opt_states; /* MA: every rank's optimiser state (rank 0 saves them), or NULL */
    cds_nvml *gpu;     /* the card's NVML, for the epoch's res; NULL on the CPU or without NVML */
    int64_t last_gpu_ms;
} rank_ctx;

/* ---- the task ------------------------------------------------------------ */

static int read_all(int fd, char **out, cds_err *err)
{
    size_t n = 0, cap = 4096;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf)
            return cds_err_nomem(err, "out of memory reading the rank's task");
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                return cds_err_nomem(err, "out of memory reading the rank's task");
            }
            buf = nb;
        }
        ssize_t k = read(fd, buf + n, cap - n - 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            free(buf);
            return cds_errf(err, "reading the rank's task: %s", strerror(errno));
        }
        if (k == 0)
            break;
        n += (size_t)k;
    }
    buf[n] = '\0';
    *out = buf;
    return 0;
}

static int copy_str(char *dst, size_t n, json_t *o, const char *key, cds_err *err)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (!s || strlen(s) >= n)
        return cds_errf(err, "the rank's task has no %s, or one longer than %zu bytes", key, n - 1);
    snprintf(dst, n, "%s", s);
    return 0;
}

static int parse_task(rank_ctx *x, const char *text, cds_err *err)
{
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    if (!o)
        return cds_errf(err, "the rank's task is not JSON: %s", je.text);
    queue_mop_lease *l = &x->l;
    memset(l, 0, sizeof *l);
    l->kind = QUEUE_MOP_RANK;
    int rc = copy_str(x->sweep, sizeof x->sweep, o, "sweep", err);
    if (rc == 0)
        rc = copy_str(l->token, sizeof l->token, o, "token", err);
    if (rc == 0)
        rc = copy_str(l->ckpt, sizeof l->ckpt, o, "ckpt", err);
    if (rc == 0)
        rc = copy_str(l->dataset, sizeof l->dataset, o, "dataset", err);
    if (rc == 0)
        rc = copy_str(l->mode, sizeof l->mode, o, "mode", err);
    if (rc == 0)
        rc = copy_str(x->addr, sizeof x->addr, o, "addr", err);
    if (rc == 0)
        rc = copy_str(x->iface, sizeof x->iface, o, "iface", err);
    if (rc == 0)
        rc = copy_str(x->device, sizeof x->device, o, "device", err);
    int is_auto = 0;
    if (rc == 0 && (nn_place_parse(x->device, &x->place, &is_auto, err) != 0 || is_auto))
        rc = cds_errf(err, "the rank's task names device '%s', not one the worker resolved (cpu or cuda:N)",
                      x->device);
    const char *spec = json_string_value(json_object_get(o, "spec"));
    if (rc == 0 && (!spec || !(l->spec = strdup(spec))))
        rc = cds_errf(err, "the rank's task has no model spec");
    l->model = (int)json_integer_value(json_object_get(o, "model"));
    l->gang = json_integer_value(json_object_get(o, "gang"));
    l->shard = (int)json_integer_value(json_object_get(o, "rank"));
    l->shards = (int)json_integer_value(json_object_get(o, "world"));
    l->data_shards = (int)json_integer_value(json_object_get(o, "shards"));
    if (l->data_shards == 0)
        l->data_shards = l->shards;
    l->epoch = (int)json_integer_value(json_object_get(o, "epoch"));
    l->version = json_integer_value(json_object_get(o, "version"));
    x->timeout_ms = json_integer_value(json_object_get(o, "timeout_ms"));
    x->sparse = json_is_true(json_object_get(o, "sparse_dense")) ? DDP_SPARSE_DENSE : DDP_SPARSE_ROWS;
    x->nccl = json_is_true(json_object_get(o, "nccl"));
    json_decref(o);
    if (rc == 0 && (l->shards < 1 || l->shard < 0 || l->shard >= l->shards || l->epoch < 1 || x->timeout_ms < 1 ||
                    l->data_shards < l->shards))
        rc = cds_errf(err, "the rank's task names rank %d of %d over %d shards, epoch %d, time-out %lld ms", l->shard,
                      l->shards, l->data_shards, l->epoch, (long long)x->timeout_ms);
    return rc;
}

/* ---- lines to the worker ------------------------------------------------- */

#define PROGRESS_EVERY_MS 250

static void line_progress(rank_ctx *x, int64_t done, int64_t total, int force)
{
    int64_t now = cds_mono_ms();
    if (!force && now - x->last_line_ms < PROGRESS_EVERY_MS)
        return;
    x->last_line_ms = now;
    fprintf(x->out, "p %lld %lld\n", (long long)done, (long long)total);
    fflush(x->out);
    /* The rank has no heartbeat of its own: the GPU's samples for the
     * epoch's res are taken here, once a second. */
    cds_nvml_sample s;
    cds_err err;
    if (x->gpu && now - x->last_gpu_ms >= 1000) {
        x->last_gpu_ms = now;
        (void)cds_nvml_sample_now(x->gpu, &s, &err);
    }
}

static int on_batch(void *ctx, int64_t done, int64_t total, const nn_pass_stats *st)
{
    (void)st;
    line_progress(ctx, done, total, 0);
    return 0;
}

/* ---- ending ---------------------------------------------------------------- */

/* This rank ends the gang in Redis (how: QUEUE_GANG_*), so the others' next
 * renewal hears it at once rather than at a collective's time-out. */
static int end_gang(rank_ctx *x, int how, const cds_err *why)
{
    cds_err err;
    int failed = 0;
    int rc = queue_mop_gang_end(x->q, x->sweep, &x->l, how, why->msg, NULL, &failed, &err);
    cds_logf(&x->log, CDS_LOG_WARN, "sweep %s model %d epoch %d rank %d: %s; %s", x->sweep, x->l.model, x->l.epoch,
             x->l.shard, why->msg,
             rc == QUEUE_NOT_FOUND ? "the gang had already ended"
             : rc != 0             ? err.msg
             : failed              ? "the model failed"
             : how == QUEUE_GANG_ABORT ? "gang aborted"
                                   : "the model is tried again after a backoff");
    return rc == 0 || rc == QUEUE_NOT_FOUND ? WORKER_RANK_ENDED : WORKER_RANK_BROKEN;
}

static int broken(rank_ctx *x, const cds_err *why)
{
    cds_logf(&x->log, CDS_LOG_WARN, "sweep %s model %d epoch %d rank %d: the gang broke: %s", x->sweep, x->l.model,
             x->l.epoch, x->l.shard, why->msg);
    return WORKER_RANK_BROKEN;
}

/* ---- the epoch ----------------------------------------------------------- */

/* A hybrid gang: a MOP sweep's idle workers training one of its models. */
static int is_hybrid(const rank_ctx *x) { return strcmp(x->l.mode, "mop") == 0; }

static int start_model(rank_ctx *x, cds_err *err)
{
    /* MA: each rank goes on from its own optimiser state, kept in the
     * checkpoint beside rank 0's (nn_trainer_save_ranks). */
    int ma = strcmp(x->l.mode, "ma") == 0;
    x->t = x->l.version == 0 ? nn_trainer_new_at(x->l.spec, x->place, err)
                             : nn_trainer_load_at(x->l.ckpt, ma ? x->l.shard : 0, x->place, err);
    if (!x->t)
        return -1;
    if (nn_trainer_epoch(x->t) + 1 != x->l.epoch)
        return cds_errf(err, "checkpoint %s is in epoch %lld, the gang trains epoch %d", x->l.ckpt,
                        (long long)nn_trainer_epoch(x->t) + 1, x->l.epoch);
    return 0;
}

/* A reduction's result, remembered when it failed: the gang broke. */
static int reduced(rank_ctx *x, int rc)
{
    if (rc != 0)
        x->reduce_failed = 1;
    return rc;
}

static int reduce_grads(void *ctx, cds_err *err)
{
    rank_ctx *x = ctx;
    return reduced(x, ddp_reducer_finish(x->r, err));
}

static char *metrics_json(rank_ctx *x, const nn_pass_stats *st, int64_t steps, int64_t shard_rows,
                          const cds_res_use *use)
{
    json_t *j = json_pack("{s:I, s:f, s:f, s:I, s:I, s:f, s:f, s:s, s:I, s:s, s:I, s:I, s:I, s:s}", "rows",
                          (json_int_t)st->rows, "loss_sum", st->loss_sum, "xent_sum", st->xent_sum, "top1",
                          (json_int_t)st->top1, "top5", (json_int_t)st->top5, "seconds", st->seconds, "samples_per_s",
                          st->seconds > 0 ? (double)st->rows / st->seconds : 0.0, "worker", x->cfg->id, "version",
                          (json_int_t)x->l.version + 1, "mode", x->l.mode, "rank", (json_int_t)x->l.shard, "steps",
                          (json_int_t)steps, "shard_rows", (json_int_t)shard_rows, "device", x->device);
    if (j)
        json_object_set_new(j, "res", cds_res_json(use));
    if (j && is_hybrid(x)) {
        /* Which shards this rank read, for the record (the schedule has
         * the gang's W on every shard's entry). */
        json_t *read = json_array();
        for (int k = x->l.shard; read && k < x->l.data_shards; k += x->l.shards)
            json_array_append_new(read, json_integer(k));
        json_object_set_new(j, "shards_read", read ? read : json_null());
        json_object_set_new(j, "hybrid", json_integer(x->l.shards));
    }
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(j);
    return s;
}

static int publish_path(rank_ctx *x, const char *path, int for_eval, char **metrics);

/* Rank 0 writes the checkpoint (and the epoch's link, before the commit
 * queues its evaluation) and commits with the W ranks' metrics; tells the
 * worker what it committed.  Returns 0, or an exit code. */
static int publish(rank_ctx *x, char **metrics)
{
    cds_err err;
    char dir[QUEUE_MOP_PATH_MAX - 64], path[QUEUE_MOP_PATH_MAX];
    size_t per = x->opt_states ? nn_trainer_opt_floats(x->t) : 0;
    if (cds_layout_model_dir(dir, sizeof dir, x->cfg->data_root, x->sweep, x->l.model, &err) != 0 ||
        cds_layout_visit_ckpt(path, sizeof path, dir, x->l.version + 1, x->l.token, &err) != 0 ||
        cds_mkdirs(dir, &err) != 0 ||
        nn_trainer_save_ranks(x->t, path, x->opt_states ? x->opt_states + per : NULL,
                              x->opt_states ? x->l.shards - 1 : 0, &err) != 0)
        return end_gang(x, QUEUE_GANG_ATTEMPT, &err);
    return publish_path(x, path, 1, metrics);
}

/* Commits the checkpoint at path (for_eval: linked as the epoch's first,
 * for its evaluation; a diag.sleep model has none) with the W ranks'
 * metrics. */
static int publish_path(rank_ctx *x, const char *path, int for_eval, char **metrics)
{
    cds_err err;
    char dir[QUEUE_MOP_PATH_MAX - 64], epoch_file[QUEUE_MOP_PATH_MAX];
    if (cds_layout_model_dir(dir, sizeof dir, x->cfg->data_root, x->sweep, x->l.model, &err) != 0 ||
        cds_layout_epoch_ckpt(epoch_file, sizeof epoch_file, dir, x->l.epoch, &err) != 0)
        return end_gang(x, QUEUE_GANG_ATTEMPT, &err);
    int linked = for_eval && link(path, epoch_file) == 0;
    if (for_eval && !linked && errno != EEXIST)
        cds_logf(&x->log, CDS_LOG_WARN, "could not keep %s for evaluation: %s", epoch_file, strerror(errno));
    queue_mop_commit_result r;
    if (queue_mop_gang_commit(x->q, x->sweep, &x->l, path, (const char *const *)metrics, &r, &err) != 0) {
        cds_logf(&x->log, CDS_LOG_ERROR, "sweep %s model %d: commit failed (%s); %s is kept in case it went through",
                 x->sweep, x->l.model, err.msg, path);
        return WORKER_RANK_BROKEN;
    }
    if (!r.accepted) {
        unlink(path);
        if (linked)
            unlink(epoch_file);
        cds_logf(&x->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: commit refused (the gang lost the model); "
                 "checkpoint discarded", x->sweep, x->l.model, x->l.epoch);
        return WORKER_RANK_ENDED;
    }
    fprintf(x->out, "c %lld %d %s\t%s\n", (long long)r.version, r.model_done, path, r.superseded);
    fflush(x->out);
    return 0;
}

/* MA: every rank's optimiser state to every rank (rank 0 saves them): a
 * broadcast from each rank in turn, so the bits arrive as they were. */
static int gather_opt_states(rank_ctx *x, cds_err *err)
{
    size_t per = nn_trainer_opt_floats(x->t), W = (size_t)x->l.shards;
    if (!(x->opt_states = calloc(per * W, sizeof(float))))
        return cds_err_nomem(err, "out of memory for %zu ranks' optimiser states (%zu floats each)", W, per);
    nn_trainer_opt_get(x->t, x->opt_states + per * (size_t)x->l.shard);
    for (int k = 0; k < x->l.shards; k++)
        if (ddp_broadcast(x->c, x->opt_states + per * (size_t)k, per, k, err) != 0)
            return -1;
    return 0;
}

/* Each rank's metrics through the gang's rendezvous keys; rank 0 reads
 * all W once the barrier says they are there. */
static int share_metrics(rank_ctx *x, const char *scope, const char *mine, char **all, cds_err *err)
{
    char key[32];
    snprintf(key, sizeof key, "metrics.%d", x->l.shard);
    if (queue_rdv_set(x->q, scope, key, mine ? mine : "", mine ? strlen(mine) : 0, 10 * 60 * 1000, err) != 0)
        return -1;
    if (ddp_barrier(x->c, 0, err) != 0)
        return -1;
    for (int r = 0; x->l.shard == 0 && r < x->l.shards; r++) {
        void *data = NULL;
        size_t n = 0;
        snprintf(key, sizeof key, "metrics.%d", r);
        if (queue_rdv_get(x->q, scope, key, &data, &n, err) < 0)
            return -1;
        all[r] = data ? strndup(data, n) : NULL;
        free(data);
    }
    return 0;
}

/* A pass's collective failed: the gang broke (gang_pass, hybrid_pass). */
#define PASS_BROKEN (-2)

/* A DDP or MA rank's pass over its own shard (rank r: shard r).  Returns 0,
 * NN_TRAIN_DIVERGED, -1 (this rank's failure) or PASS_BROKEN, with err. */
static int gang_pass(rank_ctx *x, int ddp, int batch, nn_pass_stats *st, int64_t *steps, int64_t *rows, cds_err *err)
{
    int W = x->l.shards, rank = x->l.shard;
    char dir[4096];
    size_t *all = calloc((size_t)W, sizeof *all);
    if (!all)
        return cds_err_nomem(err, "out of memory");
    int rc = cds_layout_dataset_shard(dir, sizeof dir, x->cfg->data_root, x->l.dataset, "train", rank, err);
    if (rc == 0)
        rc = nn_trainer_shard_rows(x->t, dir, rows, err);
    if (rc == 0 && ddp_allgather_sizes(x->c, (size_t)*rows, all, err) != 0)
        rc = PASS_BROKEN;
    /* DDP: every rank takes the longest shard's rows (a shorter shard goes
     * on in its next epoch's order), b/W a step, so the steps match and
     * only the last one is short, on every rank alike. */
    int local = ddp ? batch / W : batch;
    int64_t longest = 0;
    for (int r = 0; rc == 0 && r < W; r++)
        longest = (int64_t)all[r] > longest ? (int64_t)all[r] : longest;
    free(all);
    if (rc != 0)
        return rc;
    *steps = ddp ? (longest + local - 1) / local : (*rows + local - 1) / local;
    nn_dp_pass pass = {.batch = local, .rows = ddp ? longest : 0, .row_offset = ddp ? (int64_t)rank * local : 0,
                       .after_backward = ddp ? reduce_grads : NULL, .hook_ctx = x};
    if (ddp && (longest == 0 || *rows == 0))
        return cds_errf(err, "shard %d of the gang's dataset is empty: every rank needs rows to train on", rank);
    return nn_trainer_train_dp(x->t, dir, rank, &pass, on_batch, x, st, err);
}

static int shadow_grads(void *ctx, cds_err *err)
{
    rank_ctx *x = ctx;
    return reduced(x, ddp_reducer_shadow(x->r, err));
}

static void add_stats(nn_pass_stats *sum, const nn_pass_stats *one)
{
    sum->rows += one->rows;
    sum->loss_sum += one->loss_sum;
    sum->xent_sum += one->xent_sum;
    sum->top1 += one->top1;
    sum->top5 += one->top5;
    sum->seconds += one->seconds;
    sum->bytes += one->bytes;
}

/* A hybrid rank's epoch (the header's "train"): shards r, r+W, ... in
 * turn, `local` rows a step, then shadow steps up to the gang's most.  A
 * diverged shard does not stop the rank (its peers would wait in a
 * collective): it goes on, and the gang agrees afterwards.  Returns as
 * gang_pass; *steps is the gang's, *rows this rank's. */
static int hybrid_pass(rank_ctx *x, int local, nn_pass_stats *st, int64_t *steps, int64_t *rows, cds_err *err)
{
    int W = x->l.shards, K = x->l.data_shards, rank = x->l.shard;
    char dir[4096];
    int64_t mine = 0, n = 0;
    memset(st, 0, sizeof *st);
    *rows = 0;
    for (int k = rank; k < K; k += W) {
        if (cds_layout_dataset_shard(dir, sizeof dir, x->cfg->data_root, x->l.dataset, "train", k, err) != 0 ||
            nn_trainer_shard_rows(x->t, dir, &n, err) != 0)
            return -1;
        *rows += n;
        mine += (n + local - 1) / local;
    }
    size_t *all = calloc((size_t)W, sizeof *all);
    if (!all)
        return cds_err_nomem(err, "out of memory");
    int rc = ddp_allgather_sizes(x->c, (size_t)mine, all, err) != 0 ? PASS_BROKEN : 0;
    int64_t most = 0;
    for (int r = 0; r < W; r++)
        most = (int64_t)all[r] > most ? (int64_t)all[r] : most;
    free(all);
    if (rc != 0)
        return rc;
    *steps = most;
    nn_dp_pass pass = {.batch = local, .rows = 0, .row_offset = (int64_t)rank * local, .after_backward = reduce_grads,
                       .hook_ctx = x};
    int diverged = 0;
    cds_err why = {0};
    for (int k = rank; k < K; k += W) {
        nn_pass_stats one;
        if (cds_layout_dataset_shard(dir, sizeof dir, x->cfg->data_root, x->l.dataset, "train", k, err) != 0)
            return -1;
        rc = nn_trainer_train_dp(x->t, dir, k, &pass, on_batch, x, &one, err);
        if (rc == NN_TRAIN_DIVERGED && !diverged) {
            diverged = 1;
            why = *err;
        } else if (rc != 0 && rc != NN_TRAIN_DIVERGED) {
            return -1;
        }
        add_stats(st, &one);
    }
    for (int64_t s = mine; s < most; s++)
        if (nn_trainer_shadow_step(x->t, shadow_grads, x, err) != 0)
            return -1;
    if (diverged)
        *err = why;
    return diverged ? NN_TRAIN_DIVERGED : 0;
}

static int train_epoch(rank_ctx *x)
{
    cds_err err;
    cds_res_mark mark;
    cds_res_start(&mark, x->gpu);
    const queue_mop_lease *l = &x->l;
    int W = l->shards, rank = l->shard, ddp = strcmp(l->mode, "ddp") == 0, dp = ddp || is_hybrid(x);
    if (start_model(x, &err) != 0)
        return end_gang(x, cds_err_is_nomem(&err) ? QUEUE_GANG_FINAL : QUEUE_GANG_ATTEMPT, &err);
    int batch = nn_trainer_cfg(x->t)->batch;
    if (dp && batch % W != 0) {
        cds_errf(&err, "batch %d does not divide over %d ranks: give a batch that is a multiple of %d", batch, W, W);
        return end_gang(x, QUEUE_GANG_FINAL, &err);
    }
    char scope[64];
    snprintf(scope, sizeof scope, "%s.g%lld", x->sweep, (long long)l->gang);
    ddp_comm_opts o = {.q = x->q, .scope = scope, .rank = rank, .size = W, .timeout_ms = x->timeout_ms,
                       .addr = x->addr[0] ? x->addr : NULL, .iface = x->iface[0] ? x->iface : NULL,
                       .device = x->place.index};
    line_progress(x, 0, 0, 1);
    if (x->nccl && x->place.dev != NN_CUDA) {
        cds_errf(&err, "--ddp-transport nccl reduces device memory, and this worker trains on the %s: give every "
                       "worker of the sweep --device cuda:N, or use gloo", x->device);
        return end_gang(x, QUEUE_GANG_FINAL, &err);
    }
    if ((x->nccl ? ddp_comm_nccl(&o, &x->c, &err) : ddp_comm_gloo(&o, &x->c, &err)) != 0)
        return broken(x, &err);
    nn_model *m = nn_trainer_model(x->t);
    if (dp && ddp_reducer_new_sparse(m, x->c, DDP_BUCKET_BYTES, x->sparse, &x->r, &err) != 0)
        return end_gang(x, QUEUE_GANG_FINAL, &err);
    if (ddp_model_broadcast(m, x->c, 0, &err) != 0)
        return broken(x, &err);

    int64_t rows = 0, steps = 0;
    nn_pass_stats st;
    int rc = is_hybrid(x) ? hybrid_pass(x, batch / W, &st, &steps, &rows, &err)
                      : gang_pass(x, ddp, batch, &st, &steps, &rows, &err);
    if (rc == PASS_BROKEN)
        return broken(x, &err);
    if (rc != 0 && rc != NN_TRAIN_DIVERGED) {
        /* A failed reduction broke the communicator; anything else is this
         * rank's own failure (its shard, its memory). */
        if (x->reduce_failed)
            return broken(x, &err);
        return end_gang(x, cds_err_is_nomem(&err) ? QUEUE_GANG_FINAL : QUEUE_GANG_ATTEMPT, &err);
    }
    line_progress(x, st.rows, st.rows, 1);
    /* A diverged loss anywhere: every rank stops here, rank 0 says why. */
    float bad = rc == NN_TRAIN_DIVERGED ? 1.0f : 0.0f;
    cds_err why = err;
    if (ddp_allreduce(x->c, &bad, 1, DDP_SUM, &err) != 0)
        return broken(x, &err);
    if (bad > 0) {
        if (rank != 0)
            return WORKER_RANK_ENDED;
        if (rc != NN_TRAIN_DIVERGED)
            cds_errf(&why, "the loss diverged on another rank of the gang");
        return end_gang(x, QUEUE_GANG_FINAL, &why);
    }
    if (!dp && (ddp_model_average(m, x->c, &err) != 0 || (W > 1 && gather_opt_states(x, &err) != 0)))
        return cds_err_is_nomem(&err) ? end_gang(x, QUEUE_GANG_FINAL, &err) : broken(x, &err);
    nn_trainer_end_epoch(x->t);

    cds_res_use use;
    cds_res_stop(&mark, st.bytes, &use);
    char *mine = metrics_json(x, &st, steps, rows, &use);
    char **metrics = calloc((size_t)W, sizeof *metrics);
    rc = metrics ? share_metrics(x, scope, mine, metrics, &err) : cds_err_nomem(&err, "out of memory");
    free(mine);
    int code = rc != 0 ? broken(x, &err) : 0;
    if (code == 0 && rank == 0)
        code = publish(x, metrics);
    for (int r = 0; metrics && r < W; r++)
        free(metrics[r]);
    free(metrics);
    if (code != 0)
        return code;
    /* Nobody leaves before rank 0 has written and committed: a longer
     * time-out than the collectives', for the checkpoint's write. */
    if (ddp_barrier(x->c, WORKER_RANK_COMMIT_TIMEOUT(x->timeout_ms), &err) != 0)
        return rank == 0 ? 0 : broken(x, &err);
    return 0;
}

/* A diag.sleep model's epoch in a gang (the header's last paragraph): the
 * slowest rank reads ceil(K/W) shards, each as long as a visit (W ranks at
 * b/W rows a step take a visit's time over a shard), and every rank sleeps
 * that long; rank 0 then writes the text checkpoint and commits. */
static int sleep_epoch(rank_ctx *x, int64_t ms)
{
    const queue_mop_lease *l = &x->l;
    int64_t slowest = (l->data_shards + l->shards - 1) / l->shards;
    /* In slices, each with a progress line: the worker kills a rank it has
     * not heard from for a while. */
    int64_t total = slowest * ms, t0 = cds_mono_ms(), done;
    line_progress(x, 0, total, 1);
    while ((done = cds_mono_ms() - t0) < total) {
        cds_sleep_ms(total - done < PROGRESS_EVERY_MS ? total - done : PROGRESS_EVERY_MS);
        line_progress(x, cds_mono_ms() - t0, total, 0);
    }
    line_progress(x, total, total, 1);
    if (l->shard != 0)
        return 0;
    cds_err err;
    char dir[QUEUE_MOP_PATH_MAX - 64], path[QUEUE_MOP_PATH_MAX], tmp[QUEUE_MOP_PATH_MAX + 8];
    if (cds_layout_model_dir(dir, sizeof dir, x->cfg->data_root, x->sweep, l->model, &err) != 0 ||
        cds_layout_visit_ckpt(path, sizeof path, dir, l->version + 1, l->token, &err) != 0 ||
        cds_mkdirs(dir, &err) != 0)
        return end_gang(x, QUEUE_GANG_ATTEMPT, &err);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    int ok = f && fprintf(f, "diag.sleep model %d epoch %d gang of %d version %lld\n", l->model, l->epoch, l->shards,
                          (long long)l->version + 1) > 0;
    ok = f && fclose(f) == 0 && ok && rename(tmp, path) == 0;
    if (!ok) {
        unlink(tmp);
        cds_errf(&err, "could not write its checkpoint %s", tmp);
        return end_gang(x, QUEUE_GANG_ATTEMPT, &err);
    }
    char **none = calloc((size_t)l->shards, sizeof *none);
    int code = none ? publish_path(x, path, 0, none) : WORKER_RANK_BROKEN;
    free(none);
    return code;
}

int worker_rank_main(const worker_cfg *cfg, int task_fd, int out_fd)
{
    rank_ctx x;
    memset(&x, 0, sizeof x);
    x.cfg = cfg;
    cds_err err;
    char *text = NULL;
    char who[160];
    x.out = fdopen(out_fd, "w");
    if (!x.out || read_all(task_fd, &text, &err) != 0 || parse_task(&x, text, &err) != 0) {
        free(text);
        fprintf(stderr, "cds-worker: rank task: %s\n", x.out ? err.msg : strerror(errno));
        queue_mop_lease_clear(&x.l);
        return 1;
    }
    free(text);
    close(task_fd);
    snprintf(who, sizeof who, "%s rank %d", cfg->id, x.l.shard);
    cds_log_init(&x.log, stderr, cfg->log_level, who);
    nn_par_set_threads(cfg->threads);
    queue_opts qo = {.url = cfg->url, .password_file = cfg->password_file, .prefix = cfg->prefix, .writes = 1};
    x.q = queue_connect(&qo, &err);
    int code;
    if (!x.q) {
        cds_logf(&x.log, CDS_LOG_ERROR, "%s", err.msg);
        code = WORKER_RANK_BROKEN;
    } else {
        int64_t sleep_ms = worker_mop_sleep_ms(x.l.spec);
        /* Its worker said at start whether NVML is there: a DEBUG line. */
        if (sleep_ms < 0 && x.place.dev == NN_CUDA && !(x.gpu = cds_nvml_open(x.place.index, &err)))
            cds_logf(&x.log, CDS_LOG_DEBUG, "%s", err.msg);
        code = sleep_ms >= 0 ? sleep_epoch(&x, sleep_ms) : train_epoch(&x);
    }
    if (x.c && code != 0)
        ddp_comm_abort(x.c);
    ddp_reducer_free(x.r);
    ddp_comm_destroy(x.c);
    nn_trainer_free(x.t);
    free(x.opt_states);
    cds_nvml_close(x.gpu);
    queue_close(x.q);
    queue_mop_lease_clear(&x.l);
    fclose(x.out);
    return code;
}
