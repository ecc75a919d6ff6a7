/* worker_mop: Model Hopper Parallelism sub-epochs in cds-worker.
 *
 * A worker started with --shard k serves shard k of every running sweep: it
 * asks each sweep in turn (one Lua call, queue_mop_lease_model) for a model
 * that has not visited k this epoch, and runs the visit:
 *
 *   load     the model's committed checkpoint (version 0: a fresh model from
 *            its spec and seed);
 *   train    one pass over DATA_ROOT/datasets/<dataset>/train/shard-<k>,
 *            checking after every batch that the lease still holds and that
 *            the worker was not told to stop at once;
 *   write    the new checkpoint to DATA_ROOT/sweeps/<S>/models/<m>/
 *            v<version>-<token>.ckpt (temporary file, fsync, rename: the name
 *            is the lease's own, so a worker that lost its lease can never
 *            overwrite the file of the one that holds it now);
 *   commit   with the lease's token; refused (the lease was lost) → the file
 *            is deleted, nothing is published; accepted → the checkpoint it
 *            supersedes is deleted.
 *
 * The heartbeat thread renews the lease (worker_mop_beat) and flags it lost
 * when it is gone; the pass then stops at the next batch.  A first SIGTERM
 * lets the visit finish and commit; a second one stops it and releases the
 * model (its last committed checkpoint stays, so nothing is lost but the
 * partial pass).  A loss that becomes NaN or infinite marks the model failed;
 * any other error releases it for another try.
 *
 * Before training it evaluates a finished epoch that waits (so metrics land
 * as epochs end), and once a sweep is done it scores the chosen model on
 * the test split.  Both are
 * leases too (queue_mop_take_eval, queue_mop_claim_test), held in the same
 * slot as a visit's, so the heartbeat renews them; a worker that dies doing
 * one loses nothing but the time, as the reaper puts the evaluation back and
 * another worker takes an expired test claim over.  A worker whose lease was
 * lost records nothing and leaves the epoch's checkpoint to the new holder.
 * Workers look only at the active sweeps (queue_sweep_list_active), which
 * finished sweeps leave, so the list does not grow with history. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cds_layout.h"
#include "cds_util.h"
#include "etl_dataset_record.h"
#include "nn_ckpt.h"
#include "nn_train.h"
#include "worker_int.h"

typedef struct visit {
    worker *w;
    const char *sweep;
    queue_mop_lease lease;
    char dataset[256];
    int shards;
} visit;

/* After each batch: records how far the visit is (the heartbeat publishes
 * it) and says whether to stop (told to stop at once, or the lease lost). */
static int should_stop(void *ctx, int64_t done, int64_t total, const nn_pass_stats *st)
{
    (void)st;
    worker *w = ctx;
    if (total > 0) {
        atomic_store_explicit(&w->mop.rows_total, total, memory_order_relaxed);
        atomic_store_explicit(&w->mop.rows_done, done, memory_order_relaxed);
    }
    return atomic_load(&w->stop) >= 2 || atomic_load(&w->mop.lost);
}

static void slot_set(worker *w, const char *sweep, const queue_mop_lease *l)
{
    pthread_mutex_lock(&w->mu);
    w->mop.active = l != NULL;
    w->mop.finishing = 0;
    w->mop.started_ms = cds_mono_ms();
    atomic_store(&w->mop.rows_done, 0);
    atomic_store(&w->mop.rows_total, 0);
    w->mop.progress_shown = 0;
    if (l) {
        snprintf(w->mop.sweep, sizeof w->mop.sweep, "%s", sweep);
        w->mop.lease = *l;
        atomic_store(&w->mop.lost, 0);
    }
    pthread_mutex_unlock(&w->mu);
}

/* From here on the main thread ends the lease in hand (commit, release,
 * fail, record): the heartbeat stops renewing it and does not call its end
 * a loss.  A renew already in flight that finds the lease ended reports
 * back after this is set, so it is never logged as lost. */
static void slot_finishing(worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->mop.finishing = 1;
    pthread_mutex_unlock(&w->mu);
}

/* Reads the sweep's dataset and shard count. */
static int sweep_info(worker *w, visit *v, cds_err *err)
{
    json_t *o = NULL;
    int rc = WITH_RECONNECT(w, queue_sweep_get(w->q, v->sweep, &o, err));
    if (rc != 0)
        return -1;
    const char *ds = json_string_value(json_object_get(o, "dataset"));
    const char *k = json_string_value(json_object_get(o, "shards"));
    snprintf(v->dataset, sizeof v->dataset, "%s", ds ? ds : "");
    v->shards = k ? atoi(k) : 0;
    json_decref(o);
    if (!v->dataset[0] || v->shards < 1)
        return cds_errf(err, "sweep %s has no dataset or shard count in Redis", v->sweep);
    return 0;
}

static nn_trainer *load_model(const visit *v, const char *spec, cds_err *err)
{
    return v->lease.version == 0 ? nn_trainer_new(spec, err) : nn_trainer_load(v->lease.ckpt, err);
}

/* The model's directory and the checkpoint this visit writes in it. */
static int ckpt_path(const visit *v, char *out, size_t n, char *dir, size_t dn, cds_err *err)
{
    if (cds_layout_model_dir(dir, dn, v->w->cfg->data_root, v->sweep, v->lease.model, err) != 0)
        return -1;
    return cds_layout_visit_ckpt(out, n, dir, v->lease.version + 1, v->lease.token, err);
}

/* Gives the model back without counting an attempt: the worker stops, or
 * Redis failed the visit, neither of which is the model's doing. */
static void give_back(worker *w, visit *v, const char *why)
{
    cds_err err;
    slot_finishing(w);
    int rc = WITH_RECONNECT(w, queue_mop_release(w->q, v->sweep, &v->lease, &err));
    cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: %s; %s", v->sweep, v->lease.model, why,
             rc == 0 ? "released it" : rc == QUEUE_NOT_FOUND ? "its lease was already gone" : err.msg);
}

/* A visit that failed for any reason but a lost lease, a stop or Redis goes
 * through the accounting of a queue job's attempts (queue_mop_fail_visit):
 * a backoff and another try, and at the sweep's max_attempts the model
 * fails with the reason while the sweep goes on.  A model that does not fit
 * this worker's memory, or whose loss diverged (final), would fail the same
 * way on every try, so it fails at once.  note: added to the reason if the
 * model fails (an intact older checkpoint, say). */
static void visit_failed(worker *w, visit *v, const cds_err *why, int final, const char *note)
{
    if (atomic_load(&w->stop) >= 2 || queue_conn_broken(w->q)) {
        give_back(w, v, why->msg);
        return;
    }
    cds_err err;
    char reason[2 * CDS_ERR_MAX];
    if (cds_err_is_nomem(why)) {
        snprintf(reason, sizeof reason, "out of memory on worker %s: %s", w->cfg->id, why->msg);
        final = 1;
    } else {
        snprintf(reason, sizeof reason, "%s", why->msg);
    }
    int failed = 0;
    int64_t delay = 0;
    slot_finishing(w);
    int rc = WITH_RECONNECT(
        w, queue_mop_fail_visit(w->q, v->sweep, &v->lease, reason, final, note, &failed, &delay, &err));
    if (rc == QUEUE_NOT_FOUND)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d shard %d: %s (its lease was already gone)",
                 v->sweep, v->lease.model, v->lease.epoch, v->lease.shard, reason);
    else if (rc != 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d shard %d: %s (could not record it: %s)",
                 v->sweep, v->lease.model, v->lease.epoch, v->lease.shard, reason, err.msg);
    else if (failed)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d failed after attempt %d: %s%s%s", v->sweep,
                 v->lease.model, v->lease.attempts + 1, reason, note && *note ? "; " : "", note ? note : "");
    else
        cds_logf(&w->log, CDS_LOG_WARN,
                 "sweep %s model %d epoch %d shard %d: attempt %d failed: %s; it is tried again in %.1f s",
                 v->sweep, v->lease.model, v->lease.epoch, v->lease.shard, v->lease.attempts + 1, reason,
                 (double)delay / 1000.0);
}

/* The newest intact checkpoint the model keeps besides the committed one
 * that failed to load (the best epoch's best-e<E>.ckpt, epoch-<e>.ckpt files
 * waiting for evaluation), said in a form a person can act on; never used
 * to train from without being asked (jobctl retry --from); or that there
 * is none. */
static void intact_older_note(worker *w, const visit *v, const char *failing, char *note, size_t n)
{
    char dir[QUEUE_MOP_PATH_MAX - 64];
    cds_err err;
    snprintf(note, n, "no intact older checkpoint is kept");
    DIR *d = cds_layout_model_dir(dir, sizeof dir, w->cfg->data_root, v->sweep, v->lease.model, &err) == 0
                 ? opendir(dir)
                 : NULL;
    if (!d)
        return;
    /* The kept files by epoch, read back newest first until one is intact:
     * a checkpoint can be large, so only as many as needed. */
    enum { KEPT_MAX = 256 };
    struct kept { int epoch, best; char name[64]; } kept[KEPT_MAX];
    int nk = 0;
    struct dirent *e;
    while ((e = readdir(d)) && nk < KEPT_MAX) {
        int64_t ep;
        cds_layout_kind kind = cds_layout_model_file(e->d_name, &ep);
        size_t len = strlen(e->d_name);
        if ((kind == CDS_LAYOUT_BEST || kind == CDS_LAYOUT_EPOCH) && len < sizeof kept[0].name) {
            kept[nk] = (struct kept){.epoch = (int)ep, .best = kind == CDS_LAYOUT_BEST};
            memcpy(kept[nk++].name, e->d_name, len + 1);
        }
    }
    closedir(d);
    for (;;) {
        int top = -1;
        for (int i = 0; i < nk; i++)
            if (kept[i].epoch >= 0 && (top < 0 || kept[i].epoch > kept[top].epoch))
                top = i;
        if (top < 0)
            return;
        char path[QUEUE_MOP_PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/%s", dir, kept[top].name);
        nn_ckpt c;
        if (strcmp(path, failing) != 0 && nn_ckpt_load(path, &c, &err) == 0) {
            nn_ckpt_free(&c);
            if (kept[top].best)
                snprintf(note, n, "an intact older checkpoint is kept: %s (end of epoch %d, its best): `jobctl retry "
                                  "%s/%d --from best` trains on from it", path, kept[top].epoch, v->sweep, v->lease.model);
            else
                snprintf(note, n, "an intact older checkpoint is kept: %s (end of epoch %d): `jobctl retry %s/%d "
                                  "--from epoch-%d` trains on from it", path, kept[top].epoch, v->sweep,
                         v->lease.model, kept[top].epoch);
            return;
        }
        kept[top].epoch = -1;
    }
}

/* Deletes what dead or refused leases left in a model directory: every
 * v<i>-<token>.ckpt (and its temporary files) with i <= version other than
 * the one just committed.  Only the lease holder can commit, so such a file
 * can never be published; its worker died between writing and committing,
 * or between committing and deleting what it superseded. */
static void prune_model_dir(worker *w, const char *dir, int64_t version, const char *keep)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    const char *keep_name = strrchr(keep, '/') ? strrchr(keep, '/') + 1 : keep;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t i;
        if (cds_layout_model_file(e->d_name, &i) != CDS_LAYOUT_VISIT || i > version ||
            strcmp(e->d_name, keep_name) == 0)
            continue;
        char path[QUEUE_MOP_PATH_MAX + 256];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) == 0)
            cds_logf(&w->log, CDS_LOG_INFO, "removed %s, left by a lease that cannot commit", path);
    }
    closedir(d);
}

/* Commits the visit's checkpoint at path: 1 accepted (superseded and
 * orphaned files removed), 0 refused (the file is deleted: the lease was
 * lost), -1 when Redis could not say (the file is kept: the commit may have
 * gone through, and deleting it could remove what Redis now points to). */
static int commit_visit(worker *w, visit *v, const char *path, const char *dir, int keep_epoch, const char *metrics,
                        queue_mop_commit_result *r)
{
    cds_err err;
    slot_finishing(w);
    if (WITH_RECONNECT(w, queue_mop_commit(w->q, v->sweep, &v->lease, path, metrics, r, &err)) != 0) {
        cds_logf(&w->log, CDS_LOG_ERROR, "sweep %s model %d: commit failed (%s); %s is kept in case it went through",
                 v->sweep, v->lease.model, err.msg, path);
        return -1;
    }
    if (!r->accepted) {
        unlink(path);
        cds_logf(&w->log, CDS_LOG_WARN,
                 "sweep %s model %d epoch %d shard %d: commit refused (the lease was lost); checkpoint discarded",
                 v->sweep, v->lease.model, v->lease.epoch, v->lease.shard);
        return 0;
    }
    w->visits_committed++;
    if (r->epoch_done && keep_epoch) {
        /* The epoch's checkpoint must outlive the next commit, which deletes
         * the file it supersedes, until an evaluation has read it. */
        char epoch_file[QUEUE_MOP_PATH_MAX];
        if (cds_layout_epoch_ckpt(epoch_file, sizeof epoch_file, dir, v->lease.epoch, &err) != 0)
            cds_logf(&w->log, CDS_LOG_WARN, "could not keep the epoch's checkpoint for evaluation: %s", err.msg);
        else if (link(path, epoch_file) != 0 && errno != EEXIST)
            cds_logf(&w->log, CDS_LOG_WARN, "could not keep %s for evaluation: %s", epoch_file, strerror(errno));
    }
    /* Only a v<N>- file: a model retried from an older checkpoint supersedes
     * that file (a best-e or epoch file), which retention keeps. */
    const char *base = strrchr(r->superseded, '/') ? strrchr(r->superseded, '/') + 1 : r->superseded;
    if (r->superseded[0] && base[0] == 'v' && strcmp(r->superseded, path) != 0 && unlink(r->superseded) != 0 &&
        errno != ENOENT)
        cds_logf(&w->log, CDS_LOG_WARN, "could not delete superseded checkpoint %s: %s", r->superseded,
                 strerror(errno));
    prune_model_dir(w, dir, r->version, path);
    return 1;
}

/* Writes and commits the trained model; returns 0 when committed.
 * epoch_end: this visit completes the model's epoch, so the commit will put
 * the epoch on the evaluation list, where another worker may take it at
 * once: its epoch-<e>.ckpt must exist before the commit. */
static int publish(worker *w, visit *v, nn_trainer *t, const nn_pass_stats *st, int epoch_end)
{
    cds_err err;
    char path[QUEUE_MOP_PATH_MAX], dir[QUEUE_MOP_PATH_MAX - 64]; /* room for the file name */
    char epoch_file[QUEUE_MOP_PATH_MAX];
    if (ckpt_path(v, path, sizeof path, dir, sizeof dir, &err) != 0 ||
        cds_layout_epoch_ckpt(epoch_file, sizeof epoch_file, dir, v->lease.epoch, &err) != 0 ||
        cds_mkdirs(dir, &err) != 0 || nn_trainer_save(t, path, &err) != 0) {
        visit_failed(w, v, &err, 0, NULL);
        return -1;
    }
    int linked = epoch_end && link(path, epoch_file) == 0;
    if (epoch_end && !linked && errno != EEXIST)
        cds_logf(&w->log, CDS_LOG_WARN, "could not keep %s for evaluation: %s", epoch_file, strerror(errno));
    /* The visit's metrics ride on the commit, so they are in Redis before
     * the epoch it may complete is queued for evaluation. */
    json_t *j = json_pack("{s:I, s:f, s:f, s:I, s:I, s:f, s:f, s:s, s:I}", "rows", (json_int_t)st->rows, "loss_sum",
                          st->loss_sum, "xent_sum", st->xent_sum, "top1", (json_int_t)st->top1, "top5",
                          (json_int_t)st->top5, "seconds", st->seconds, "samples_per_s",
                          st->seconds > 0 ? (double)st->rows / st->seconds : 0.0, "worker", w->cfg->id, "version",
                          (json_int_t)v->lease.version + 1);
    char *metrics = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(j);
    if (!metrics)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: out of memory: the visit's metrics are not recorded",
                 v->sweep, v->lease.model);
    queue_mop_commit_result r;
    int c = commit_visit(w, v, path, dir, 1, metrics, &r);
    free(metrics);
    if (c == 0 && linked)
        unlink(epoch_file); /* refused: that epoch is someone else's to finish */
    if (c != 1)
        return -1;
    double rows = st->rows ? (double)st->rows : 1.0;
    cds_logf(&w->log, CDS_LOG_INFO,
             "sweep %s model %d epoch %d shard %d: loss %.4f top1 %.4f over %lld rows in %.1f s; committed v%lld%s",
             v->sweep, v->lease.model, v->lease.epoch, v->lease.shard, st->loss_sum / rows, (double)st->top1 / rows,
             (long long)st->rows, st->seconds, (long long)r.version,
             r.model_done ? " (model done)" : r.epoch_done ? " (epoch done)" : "");
    return 0;
}

/* The model of a spec, if it is a diag.sleep one: its ms, else -1. */
static int64_t sleep_model_ms(const char *spec)
{
    json_t *o = json_loads(spec, 0, NULL);
    json_t *m = json_object_get(o, "model");
    const char *arch = json_string_value(json_object_get(m, "arch"));
    int64_t ms = arch && strcmp(arch, "diag.sleep") == 0 ? json_integer_value(json_object_get(m, "ms")) : -1;
    json_decref(o);
    return ms;
}

/* A diag.sleep visit: no training, the same lease, checkpoint and commit
 * path as a real one (the "checkpoint" is a small text file naming the
 * visit), so the scheduler and its failure handling can be exercised and
 * measured without spending the time training takes. */
static void run_sleep_visit(worker *w, visit *v, int64_t ms)
{
    cds_err err;
    if (v->lease.version > 0 && access(v->lease.ckpt, R_OK) != 0) {
        cds_errf(&err, "its committed checkpoint %s is missing", v->lease.ckpt);
        visit_failed(w, v, &err, 0, NULL);
        return;
    }
    int64_t until = cds_mono_ms() + ms;
    while (cds_mono_ms() < until) {
        if (should_stop(w, 0, 0, NULL)) {
            if (atomic_load(&w->mop.lost))
                cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: lease lost mid-visit; abandoning it", v->sweep,
                         v->lease.model);
            else
                give_back(w, v, "stopping now");
            return;
        }
        int64_t left = until - cds_mono_ms();
        cds_sleep_ms(left < 10 ? (left > 0 ? left : 0) : 10);
    }
    char path[QUEUE_MOP_PATH_MAX], dir[QUEUE_MOP_PATH_MAX - 64], tmp[QUEUE_MOP_PATH_MAX + 8];
    if (ckpt_path(v, path, sizeof path, dir, sizeof dir, &err) != 0) {
        visit_failed(w, v, &err, 0, NULL);
        return;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = cds_mkdirs(dir, &err) == 0 ? fopen(tmp, "w") : NULL;
    int ok = f && fprintf(f, "diag.sleep model %d epoch %d shard %d version %lld\n", v->lease.model, v->lease.epoch,
                          v->lease.shard, (long long)v->lease.version + 1) > 0;
    ok = f && fclose(f) == 0 && ok && rename(tmp, path) == 0;
    if (!ok) {
        unlink(tmp);
        cds_errf(&err, "could not write its checkpoint %s", tmp);
        visit_failed(w, v, &err, 0, NULL);
        return;
    }
    queue_mop_commit_result r;
    if (commit_visit(w, v, path, dir, 0, NULL, &r) != 1) /* diag.sleep: nothing to evaluate */
        return;
    cds_logf(&w->log, CDS_LOG_INFO, "sweep %s model %d epoch %d shard %d: slept %lld ms; committed v%lld", v->sweep,
             v->lease.model, v->lease.epoch, v->lease.shard, (long long)ms, (long long)r.version);
}

static void run_visit(worker *w, visit *v)
{
    cds_err err;
    char what[64];
    snprintf(what, sizeof what, "%s/%d", v->sweep, v->lease.model);
    worker_set_current(w, what);
    slot_set(w, v->sweep, &v->lease);
    nn_trainer *t = NULL;
    char *spec = NULL;
    if (sweep_info(w, v, &err) != 0 ||
        WITH_RECONNECT(w, queue_mop_model_spec(w->q, v->sweep, v->lease.model, &spec, &err)) != 0) {
        visit_failed(w, v, &err, 0, NULL);
        goto out;
    }
    int64_t sleep_ms = sleep_model_ms(spec);
    if (sleep_ms >= 0) {
        run_sleep_visit(w, v, sleep_ms);
        goto out;
    }
    if (!(t = load_model(v, spec, &err))) {
        char note[2 * QUEUE_MOP_PATH_MAX] = "";
        if (v->lease.version > 0 && !cds_err_is_nomem(&err))
            intact_older_note(w, v, v->lease.ckpt, note, sizeof note);
        visit_failed(w, v, &err, 0, note);
        goto out;
    }
    /* The checkpoint counts the epochs it completed; the lease names the
     * one in progress, from 1. */
    if (nn_trainer_epoch(t) + 1 != v->lease.epoch)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: checkpoint is in epoch %lld, the lease says %d",
                 v->sweep, v->lease.model, (long long)nn_trainer_epoch(t) + 1, v->lease.epoch);
    char dir[4096];
    nn_pass_stats st;
    int rc = cds_layout_dataset_shard(dir, sizeof dir, w->cfg->data_root, v->dataset, "train", v->lease.shard, &err);
    if (rc == 0)
        rc = nn_trainer_train_shard(t, dir, v->lease.shard, should_stop, w, &st, &err);
    if (rc == NN_TRAIN_DIVERGED) {
        visit_failed(w, v, &err, 1, NULL);
    } else if (rc == NN_TRAIN_STOPPED) {
        if (atomic_load(&w->mop.lost))
            cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: lease lost mid-pass; abandoning the visit", v->sweep,
                     v->lease.model);
        else
            give_back(w, v, "stopping now");
    } else if (rc != 0) {
        visit_failed(w, v, &err, 0, NULL);
    } else {
        int epoch_end = nn_trainer_visited(t, NULL) >= (size_t)v->shards;
        if (epoch_end)
            nn_trainer_end_epoch(t);
        publish(w, v, t, &st, epoch_end);
    }
out:
    free(spec);
    nn_trainer_free(t);
    slot_set(w, NULL, NULL);
    worker_set_current(w, NULL);
}

/* ---- evaluation ------------------------------------------------------------ */

/* Sums the recorded visits of epoch e of model m (train metrics). */
static void train_metrics(worker *w, const char *sweep, int m, int e, int shards, nn_pass_stats *tr)
{
    memset(tr, 0, sizeof *tr);
    json_t *res = NULL;
    cds_err err;
    if (WITH_RECONNECT(w, queue_mop_results(w->q, sweep, &res, &err)) != 0)
        return;
    for (int k = 0; k < shards; k++) {
        char field[64];
        snprintf(field, sizeof field, "%d.%d.train.%d", m, e, k);
        json_t *v = json_loads(json_string_value(json_object_get(res, field)) ?: "", 0, NULL);
        if (v) {
            tr->rows += json_integer_value(json_object_get(v, "rows"));
            tr->loss_sum += json_number_value(json_object_get(v, "loss_sum"));
            tr->xent_sum += json_number_value(json_object_get(v, "xent_sum"));
            tr->top1 += json_integer_value(json_object_get(v, "top1"));
            tr->top5 += json_integer_value(json_object_get(v, "top5"));
            tr->seconds += json_number_value(json_object_get(v, "seconds"));
        }
        json_decref(v);
    }
    json_decref(res);
}

/* Evaluates on every shard-<k> under DATA_ROOT/datasets/<ds>/valid. */
static int eval_valid(worker *w, nn_trainer *t, const char *dataset, nn_pass_stats *va, cds_err *err)
{
    memset(va, 0, sizeof *va);
    char dir[4096];
    for (int k = 0;; k++) {
        if (cds_layout_dataset_shard(dir, sizeof dir, w->cfg->data_root, dataset, "valid", k, err) != 0)
            return -1;
        if (access(dir, F_OK) != 0 && k > 0)
            return 0;
        if (access(dir, F_OK) != 0) {
            *strrchr(dir, '/') = '\0'; /* the split's directory */
            return cds_errf(err, "dataset %s has no validation shards under %s: unload it with a validation split "
                                 "(valid_fraction or valid_table)", dataset, dir);
        }
        /* The evaluation lease went back to the list: someone else does it. */
        if (atomic_load(&w->mop.lost))
            return cds_errf(err, "its evaluation lease was lost");
        if (nn_trainer_eval_shard(t, dir, va, err) != 0)
            return -1;
    }
}

/* The database an evaluation's cds_results row goes to: the DSN of the
 * dataset's ETL plan, without secrets (worker_results_dsn), in *dsn
 * (malloc'd); "" (each worker's libpq defaults, PGHOST and so on) for a
 * plan that names none.  Three outcomes:
 *   0, *dsn set   a row is made;
 *   0, *dsn NULL  no row: the dataset was made without a plan in Redis (by
 *                 the cds-etl command), so there is no database to write
 *                 to; or its plan (or the plan's DSN) cannot be read, which
 *                 is logged once per dataset: the result is recorded all
 *                 the same, without its row (results.csv and Redis have it);
 *   -1            Redis failed (err says why): nothing can be known.
 */
static int results_dsn(worker *w, const char *dataset, char **dsn, cds_err *err)
{
    *dsn = NULL;
    etl_dataset_record rec;
    int rc = WITH_RECONNECT(w, etl_dataset_record_read(w->q, dataset, &rec, err));
    if (rc == QUEUE_NOT_FOUND)
        return 0;
    if (rc != 0)
        return -1;
    char *given = NULL;
    cds_err why;
    int prc = etl_dataset_record_plan_dsn(&rec, &given, &why);
    if (prc == 0 && !(*dsn = worker_results_dsn(given)))
        prc = cds_errf(&why, "its spec.dsn is not a conninfo libpq can parse");
    free(given);
    if (prc < 0 && strcmp(w->results_bad_plan, dataset) != 0) {
        snprintf(w->results_bad_plan, sizeof w->results_bad_plan, "%s", dataset);
        cds_logf(&w->log, CDS_LOG_WARN, "dataset %s: the ETL plan in Redis (dataset:%s, field plan) cannot be read "
                 "(%s): its evaluations are recorded without a cds_results row; unload the dataset again to mend it",
                 dataset, dataset, why.msg);
    }
    etl_dataset_record_free(&rec);
    return 0;
}

/* DATA_ROOT/sweeps/<S>/results.csv, one row per evaluated epoch (split
 * "valid") and one for the chosen model on the test split (split "test",
 * at its best epoch); rows, loss, top1 and top5 are of that split, and the
 * train columns of the epoch (empty on the test row); times in ISO 8601
 * UTC.  docs/sweeps.md documents it. */
#define RESULTS_CSV_HEADER                                                                                     \
    "sweep,model,epoch,split,version,train_rows,train_loss,train_top1,rows,loss,top1,top5,time\n"

/* Appends one line to DATA_ROOT/sweeps/<S>/results.csv, with the header when
 * the file is new; under an exclusive lock, as several workers append. */
static void append_csv(worker *w, const char *sweep, const char *line)
{
    char path[4096];
    cds_err err;
    if (cds_layout_results_csv(path, sizeof path, w->cfg->data_root, sweep, &err) != 0) {
        cds_logf(&w->log, CDS_LOG_WARN, "cannot append to the results.csv of sweep %s: %s", sweep, err.msg);
        return;
    }
    FILE *f = fopen(path, "a");
    if (!f) {
        cds_logf(&w->log, CDS_LOG_WARN, "cannot append to %s: %s", path, strerror(errno));
        return;
    }
    flockfile(f);
    int fd = fileno(f);
    if (lockf(fd, F_LOCK, 0) == 0) {
        if (ftell(f) == 0 && lseek(fd, 0, SEEK_END) == 0)
            fputs(RESULTS_CSV_HEADER, f);
        fputs(line, f);
        fflush(f);
        lockf(fd, F_ULOCK, 0);
    }
    funlockfile(f);
    fclose(f);
}

/* Ends an evaluation lease without a result (queue_mop_put_eval): back to
 * the list uncounted (the worker stops, Redis failed it), dropped (nothing
 * to evaluate, or a checkpoint gone for good: why says so), or a failed
 * attempt, tried again after a backoff until the sweep's max_attempts. */
static void end_eval(worker *w, const char *sweep, const queue_mop_lease *l, int how, const char *why)
{
    cds_err err;
    int failed = 0;
    slot_finishing(w);
    int rc = WITH_RECONNECT(w, queue_mop_put_eval(w->q, sweep, l, how, why, &failed, &err));
    if (rc < 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: could not end the evaluation: %s (the reaper "
                 "puts it back when its lease expires)", sweep, l->model, l->epoch, err.msg);
    else if (rc == 0 && failed)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: evaluation failed for good (its last attempt): "
                 "%s", sweep, l->model, l->epoch, why ? why : "");
}

/* Evaluates the epoch the evaluation lease l is for; the heartbeat renews
 * the lease meanwhile (it sits in the MOP slot).  Its result is recorded
 * only while the lease holds; a lost lease leaves the epoch's checkpoint in
 * place for the worker that took the evaluation over. */
/* Two epochs of one model can be evaluated at once.  Recording a result
 * names the best epoch it replaces (prev), in Redis, atomically; the files
 * follow outside it.  When a better epoch is recorded after this one but
 * its worker removes best-e<prev> before this worker has renamed its file
 * there, that removal finds nothing: so, once renamed, this worker reads
 * the model's best epoch again and removes its own file if it was
 * superseded.  Whatever the order, one best-e file remains.  If Redis
 * cannot say, the file stays: a stale copy is better than none. */
static void drop_if_superseded(worker *w, const char *sweep, int m, int e, const char *best)
{
    json_t *models = NULL;
    cds_err err;
    if (WITH_RECONNECT(w, queue_mop_models(w->q, sweep, &models, &err)) != 0)
        return;
    char key[64];
    snprintf(key, sizeof key, "%d.best_epoch", m);
    const char *be = json_string_value(json_object_get(models, key));
    if (be && *be && atoi(be) != e)
        unlink(best);
    json_decref(models);
}

/* Whether model m is failed (when Redis cannot say: no, and its evaluated
 * epoch file goes, as for any model). */
static int model_failed(worker *w, const char *sweep, int m)
{
    cds_err err;
    char *st = NULL;
    int failed = WITH_RECONNECT(w, queue_mop_model_field(w->q, sweep, m, "state", &st, &err)) == 0 && st &&
                 strcmp(st, "failed") == 0;
    free(st);
    return failed;
}

static void run_eval_leased(worker *w, const char *sweep, const queue_mop_lease *l)
{
    cds_err err;
    int m = l->model, e = l->epoch;
    int64_t version = l->version;
    visit v = {.w = w, .sweep = sweep};
    char dir[QUEUE_MOP_PATH_MAX - 64], file[QUEUE_MOP_PATH_MAX], what[64];
    if (cds_layout_model_dir(dir, sizeof dir, w->cfg->data_root, sweep, m, &err) != 0 ||
        cds_layout_epoch_ckpt(file, sizeof file, dir, e, &err) != 0) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: evaluation failed: %s", sweep, m, e, err.msg);
        end_eval(w, sweep, l, QUEUE_EVAL_RETRY, err.msg);
        return;
    }
    snprintf(what, sizeof what, "%s/%d eval", sweep, m);
    worker_set_current(w, what);
    char *spec = NULL;
    if (WITH_RECONNECT(w, queue_mop_model_spec(w->q, sweep, m, &spec, &err)) == 0 && sleep_model_ms(spec) >= 0) {
        free(spec); /* diag.sleep models have nothing to evaluate */
        unlink(file);
        end_eval(w, sweep, l, QUEUE_EVAL_DROP, NULL);
        worker_set_current(w, NULL);
        return;
    }
    free(spec);
    nn_trainer *t = NULL;
    nn_pass_stats tr, va;
    int64_t t0 = cds_mono_ms();
    if (sweep_info(w, &v, &err) != 0 || !(t = nn_trainer_load(file, &err)) ||
        eval_valid(w, t, v.dataset, &va, &err) != 0) {
        /* A lost lease is no longer this worker's to end; a stop or Redis
         * is not the evaluation's fault; a missing checkpoint will not come
         * back; anything else is a failed attempt. */
        int missing = access(file, R_OK) != 0;
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: evaluation failed: %s", sweep, m, e, err.msg);
        if (atomic_load(&w->mop.lost))
            ;
        else if (atomic_load(&w->stop) >= 2 || queue_conn_broken(w->q))
            end_eval(w, sweep, l, QUEUE_EVAL_BACK, NULL);
        else if (missing)
            end_eval(w, sweep, l, QUEUE_EVAL_DROP, "its checkpoint is gone: it cannot be evaluated");
        else
            end_eval(w, sweep, l, QUEUE_EVAL_RETRY, err.msg);
        nn_trainer_free(t);
        worker_set_current(w, NULL);
        return;
    }
    nn_trainer_free(t);
    train_metrics(w, sweep, m, e, v.shards, &tr);
    double trn = tr.rows ? (double)tr.rows : 1.0, van = va.rows ? (double)va.rows : 1.0;
    double vtop1 = (double)va.top1 / van;
    double valid_seconds = (double)(cds_mono_ms() - t0) / 1000.0;
    int64_t now = cds_wall_ms();
    char iso[CDS_ISO8601_MAX];
    json_t *j = json_pack("{s:i, s:i, s:I, s:I, s:f, s:f, s:f, s:I, s:f, s:f, s:f, s:f, s:I, s:s, s:s}", "model", m,
                          "epoch", e, "version", (json_int_t)version, "train_rows", (json_int_t)tr.rows, "train_loss",
                          tr.loss_sum / trn, "train_top1", (double)tr.top1 / trn, "train_seconds", tr.seconds,
                          "valid_rows", (json_int_t)va.rows, "valid_loss", va.loss_sum / van, "valid_top1", vtop1,
                          "valid_top5", (double)va.top5 / van, "valid_seconds", valid_seconds, "time_ms",
                          (json_int_t)now, "time", cds_iso8601_utc(now, iso), "worker", w->cfg->id);
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    int is_best = 0, prev = -1;
    char *dsn = NULL;
    if (text && results_dsn(w, v.dataset, &dsn, &err) != 0) {
        /* Where its row goes is unknown: recording it without one would
         * lose the row.  The evaluation goes back (uncounted when Redis is
         * away or the worker stops; a refusal by Redis is an attempt, so it
         * cannot come back for ever). */
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: result not recorded: reading the ETL plan of "
                 "dataset %s: %s", sweep, m, e, v.dataset, err.msg);
        if (atomic_load(&w->stop) >= 2 || queue_conn_broken(w->q))
            end_eval(w, sweep, l, QUEUE_EVAL_BACK, NULL);
        else
            end_eval(w, sweep, l, QUEUE_EVAL_RETRY, err.msg);
        free(text);
        worker_set_current(w, NULL);
        return;
    }
    queue_outbox_row row = {.dsn = dsn};
    if (text)
        slot_finishing(w);
    int rrc = text ? WITH_RECONNECT(w, queue_mop_record_result_row(w->q, sweep, l, text, vtop1, dsn ? &row : NULL,
                                                                   &is_best, &prev, &err))
                   : -1;
    if (rrc != 0) {
        /* Not recorded: the epoch file stays, for whoever evaluates it. */
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: result not recorded: %s", sweep, m, e,
                 text ? err.msg : "out of memory");
        if (!text)
            end_eval(w, sweep, l, QUEUE_EVAL_BACK, NULL);
        free(text);
        free(dsn);
        worker_set_current(w, NULL);
        return;
    }
    free(text);
    w->evals_recorded++;
    char line[1024];
    snprintf(line, sizeof line, "%s,%d,%d,valid,%lld,%lld,%.6f,%.6f,%lld,%.6f,%.6f,%.6f,%s\n", sweep, m, e,
             (long long)version, (long long)tr.rows, tr.loss_sum / trn, (double)tr.top1 / trn, (long long)va.rows,
             va.loss_sum / van, vtop1, (double)va.top5 / van, iso);
    append_csv(w, sweep, line);
    /* Retention: the best epoch's checkpoint is kept as best-e<E>.ckpt, every
     * other epoch file goes once evaluated, but for a failed model's: those
     * are what jobctl retry --from epoch-N can train on from. */
    char best[QUEUE_MOP_PATH_MAX];
    if (is_best && cds_layout_best_ckpt(best, sizeof best, dir, e, &err) == 0 && rename(file, best) == 0) {
        char old[QUEUE_MOP_PATH_MAX];
        if (prev >= 0 && cds_layout_best_ckpt(old, sizeof old, dir, prev, &err) == 0)
            unlink(old);
        drop_if_superseded(w, sweep, m, e, best);
    } else if (!model_failed(w, sweep, m)) {
        unlink(file);
    }
    /* Its cds_results row, kept in Redis with the result: the main loop's
     * next results tick, at once (after the files above), writes it. */
    if (dsn)
        worker_results_recorded(w, sweep, m, e, dsn);
    free(dsn);
    cds_logf(&w->log, CDS_LOG_INFO,
             "sweep %s model %d epoch %d: train loss %.4f top1 %.4f | valid loss %.4f top1 %.4f top5 %.4f%s", sweep, m,
             e, tr.loss_sum / trn, (double)tr.top1 / trn, va.loss_sum / van, vtop1, (double)va.top5 / van,
             is_best ? " (best so far)" : "");
    worker_set_current(w, NULL);
}

static void run_eval(worker *w, const char *sweep, const queue_mop_lease *l)
{
    slot_set(w, sweep, l);
    run_eval_leased(w, sweep, l);
    slot_set(w, NULL, NULL);
}

/* One waiting evaluation of any sweep: 1 if one ran. */
static int eval_step(worker *w, char **ids, size_t n)
{
    cds_err err;
    for (size_t i = 0; i < n && atomic_load(&w->stop) == 0; i++) {
        queue_mop_lease l;
        int rc = WITH_RECONNECT(w, queue_mop_take_eval(w->q, ids[i], w->cfg->id, w->cfg->lease_ms, &l, &err));
        if (rc < 0)
            cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: taking an evaluation: %s", ids[i], err.msg);
        if (rc == 1) {
            run_eval(w, ids[i], &l);
            return 1;
        }
    }
    return 0;
}

/* ---- the chosen model on the test split ---------------------------------------- */

/* The model with the best validation top-1 among the models that finished
 * (failed and cancelled ones are not candidates), at its best epoch: 0 with
 * *m, *e set (-1 when there is none), -1 when Redis could not say.
 * *unevaluated counts epochs of finished models with no result: only ones
 * whose evaluation was given up (a checkpoint gone), since the claim is
 * granted when nothing waits or is in flight. */
static int choose_model(worker *w, const char *sweep, int M, int E, int *m_out, int *e_out, double *top1,
                        int *unevaluated, cds_err *err)
{
    json_t *models = NULL, *results = NULL;
    *m_out = *e_out = -1;
    *top1 = -1;
    *unevaluated = 0;
    /* No results hash at all is no result (a sweep of diag.sleep models),
     * not an error: the test scoring then records that there is none. */
    if (WITH_RECONNECT(w, queue_mop_models(w->q, sweep, &models, err)) < 0 ||
        WITH_RECONNECT(w, queue_mop_results(w->q, sweep, &results, err)) < 0) {
        json_decref(models);
        return -1;
    }
    for (int m = 0; m < M; m++) {
        char key[64];
        snprintf(key, sizeof key, "%d.state", m);
        const char *st = json_string_value(json_object_get(models, key));
        if (!st || strcmp(st, "done") != 0)
            continue;
        for (int e = 1; e <= E; e++) {
            snprintf(key, sizeof key, "%d.%d", m, e);
            *unevaluated += json_object_get(results, key) == NULL;
        }
        snprintf(key, sizeof key, "%d.best_top1", m);
        const char *b = json_string_value(json_object_get(models, key));
        snprintf(key, sizeof key, "%d.best_epoch", m);
        const char *be = json_string_value(json_object_get(models, key));
        if (b && *b && be && *be && atof(b) > *top1) {
            *top1 = atof(b);
            *m_out = m;
            *e_out = atoi(be);
        }
    }
    json_decref(models);
    json_decref(results);
    return 0;
}

/* The chosen model's checkpoint: best-e<E>.ckpt, which the evaluation that
 * found it renames right after recording it (so it may take a moment to
 * appear), or the epoch file itself if that worker died in between. */
static int find_best_file(worker *w, const char *sweep, int m, int e, char *file, size_t n)
{
    char dir[QUEUE_MOP_PATH_MAX - 64], epoch_file[QUEUE_MOP_PATH_MAX];
    cds_err err;
    if (cds_layout_model_dir(dir, sizeof dir, w->cfg->data_root, sweep, m, &err) != 0 ||
        cds_layout_best_ckpt(file, n, dir, e, &err) != 0 ||
        cds_layout_epoch_ckpt(epoch_file, sizeof epoch_file, dir, e, &err) != 0)
        return -1;
    for (int64_t until = cds_mono_ms() + 5000; cds_mono_ms() < until && !atomic_load(&w->mop.lost); cds_sleep_ms(50)) {
        if (access(file, R_OK) == 0)
            return 0;
        if (access(epoch_file, R_OK) == 0 && access(file, R_OK) != 0) {
            cds_sleep_ms(200); /* a rename in progress lands in this time */
            if (access(file, R_OK) == 0)
                return 0;
            snprintf(file, n, "%s", epoch_file);
            return 0;
        }
    }
    return -1;
}

/* Scores checkpoint file on every shard of the dataset's test split. */
static int score_test(worker *w, const char *file, const char *dataset, nn_pass_stats *te, cds_err *err)
{
    memset(te, 0, sizeof *te);
    nn_trainer *t = nn_trainer_load(file, err);
    int rc = t ? 0 : -1;
    char dir[4096];
    for (int k = 0; rc == 0; k++) {
        if ((rc = cds_layout_dataset_shard(dir, sizeof dir, w->cfg->data_root, dataset, "test", k, err)) != 0)
            break;
        if (access(dir, F_OK) != 0) {
            if (k == 0)
                rc = cds_errf(err, "dataset %s has no test split: unload it with a test table", dataset);
            break;
        }
        if (atomic_load(&w->mop.lost))
            rc = cds_errf(err, "its test-scoring claim was lost");
        else
            rc = nn_trainer_eval_shard(t, dir, te, err);
    }
    nn_trainer_free(t);
    return rc;
}

/* Records the test result (JSON text) under the claim l, or logs why not. */
static int record_test(worker *w, const char *sweep, const queue_mop_lease *l, const char *result)
{
    cds_err err;
    slot_finishing(w);
    if (WITH_RECONNECT(w, queue_mop_record_test(w->q, sweep, l, result, &err)) == 0) {
        w->tests_recorded++;
        return 0;
    }
    cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: the test result was not recorded: %s", sweep, err.msg);
    return -1;
}

/* A failed attempt at the test scoring: a backoff and another try, or, at
 * the sweep's max_attempts, the failure recorded as the result. */
static void test_failed(worker *w, const char *sweep, const queue_mop_lease *l, const char *why)
{
    cds_err err;
    int failed = 0;
    slot_finishing(w);
    int rc = WITH_RECONNECT(w, queue_mop_fail_test(w->q, sweep, l, why, &failed, &err));
    if (rc != 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: test scoring failed (%s) and could not be recorded: %s", sweep,
                 why, err.msg);
    else
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: test scoring failed: %s%s", sweep, why,
                 failed ? "; that was its last attempt, the sweep has no test score" : "; it is tried again later");
}

/* Scores the chosen model of sweep on the test split under the claim l
 * (in the MOP slot, so the heartbeat renews it) and records the figures as
 * JSON in the sweep's `test` field ({"model", "epoch", "valid_top1", "rows",
 * "loss", "top1", "top5"}, or {"none": why} when no model can be chosen);
 * a failure to score is a failed attempt (test_failed). */
static void run_test(worker *w, const char *sweep, const char *dataset, int M, int E, const queue_mop_lease *l)
{
    cds_err err;
    char file[QUEUE_MOP_PATH_MAX], what[64];
    int best_m, best_e, unevaluated;
    double best_top1;
    nn_pass_stats te = {0};
    int rc = choose_model(w, sweep, M, E, &best_m, &best_e, &best_top1, &unevaluated, &err);
    if (rc != 0) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: reading the results to choose a model: %s", sweep, err.msg);
        return; /* the claim expires and is taken over */
    }
    if (unevaluated)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: %d epochs of finished models were never evaluated; choosing among "
                 "the others", sweep, unevaluated);
    if (best_m < 0) {
        record_test(w, sweep, l, "{\"none\":\"no model finished with an evaluated epoch\"}");
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: no test score: no model finished with an evaluated epoch", sweep);
        return;
    }
    if (find_best_file(w, sweep, best_m, best_e, file, sizeof file) != 0) {
        char why[QUEUE_MOP_PATH_MAX + 64];
        snprintf(why, sizeof why, "the chosen model's checkpoint %s is missing", file);
        if (!atomic_load(&w->mop.lost))
            test_failed(w, sweep, l, why);
        return;
    }
    snprintf(what, sizeof what, "%s/%d test", sweep, best_m);
    worker_set_current(w, what);
    rc = score_test(w, file, dataset, &te, &err);
    worker_set_current(w, NULL);
    if (atomic_load(&w->mop.lost)) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: the test-scoring claim was lost; another worker scores it", sweep);
        return;
    }
    if (rc != 0) {
        if (atomic_load(&w->stop) >= 2 || queue_conn_broken(w->q))
            cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: test scoring stopped (%s); its claim expires and another "
                     "worker takes it over", sweep, err.msg);
        else
            test_failed(w, sweep, l, err.msg);
        return;
    }
    double rows = te.rows ? (double)te.rows : 1.0;
    json_t *j = json_pack("{s:i, s:i, s:f, s:I, s:f, s:f, s:f}", "model", best_m, "epoch", best_e, "valid_top1",
                          best_top1, "rows", (json_int_t)te.rows, "loss", te.loss_sum / rows, "top1",
                          (double)te.top1 / rows, "top5", (double)te.top5 / rows);
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(j);
    if (!text) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: out of memory recording the test score; its claim expires and "
                 "another worker scores it", sweep);
        return;
    }
    int recorded = record_test(w, sweep, l, text) == 0;
    free(text);
    if (!recorded)
        return;
    char line[512], iso[CDS_ISO8601_MAX];
    snprintf(line, sizeof line, "%s,%d,%d,test,,,,,%lld,%.6f,%.6f,%.6f,%s\n", sweep, best_m, best_e,
             (long long)te.rows, te.loss_sum / rows, (double)te.top1 / rows, (double)te.top5 / rows,
             cds_iso8601_utc(cds_wall_ms(), iso));
    append_csv(w, sweep, line);
    cds_logf(&w->log, CDS_LOG_INFO, "sweep %s: chosen model %d (epoch %d, valid top1 %.4f): test top1 %.4f "
             "top5 %.4f loss %.4f over %lld rows", sweep, best_m, best_e, best_top1, (double)te.top1 / rows,
             (double)te.top5 / rows, te.loss_sum / rows, (long long)te.rows);
}

/* Once a sweep is done and no evaluation waits or is in flight, one worker
 * claims the scoring of its chosen model on the test split (a lease on the
 * sweep hash: a claimant that dies is taken over once its claim expires)
 * and records the figure apart from the validation results. */
static int test_step(worker *w, char **ids, size_t n)
{
    cds_err err;
    for (size_t i = 0; i < n && atomic_load(&w->stop) == 0; i++) {
        json_t *sw = NULL;
        if (queue_sweep_get(w->q, ids[i], &sw, &err) != 0)
            continue;
        const char *state = json_string_value(json_object_get(sw, "state"));
        const char *tested = json_string_value(json_object_get(sw, "test"));
        int M = atoi(json_string_value(json_object_get(sw, "models")) ?: "0");
        int E = atoi(json_string_value(json_object_get(sw, "epochs")) ?: "0");
        char dataset[256];
        snprintf(dataset, sizeof dataset, "%s", json_string_value(json_object_get(sw, "dataset")) ?: "");
        int awaits_test = state && strcmp(state, "done") == 0 && !(tested && *tested);
        json_decref(sw);
        queue_mop_lease l;
        if (!awaits_test || WITH_RECONNECT(w, queue_mop_claim_test(w->q, ids[i], w->cfg->id, w->cfg->lease_ms, &l, &err)) != 1)
            continue;
        slot_set(w, ids[i], &l);
        run_test(w, ids[i], dataset, M, E, &l);
        slot_set(w, NULL, NULL);
        return 1;
    }
    return 0;
}

/* A sweep created while its dataset was loading: once the dataset record
 * says ready, pin its version in the sweep (then leases flow); if it says
 * failed, cancel the sweep, with the reason. */
static void pin_dataset(worker *w, const char *sweep)
{
    cds_err err;
    json_t *sw = NULL;
    if (queue_sweep_get(w->q, sweep, &sw, &err) != 0)
        return;
    const char *name = json_string_value(json_object_get(sw, "dataset")) ?: "";
    etl_dataset_record rec;
    if (etl_dataset_record_read(w->q, name, &rec, &err) == 0) {
        if (rec.state == ETL_DATASET_READY && *rec.version) {
            if (queue_sweep_set_field(w->q, sweep, "dataset_version", rec.version, &err) == 0)
                cds_logf(&w->log, CDS_LOG_INFO, "sweep %s: dataset %s is ready, version %.16s pinned", sweep, name,
                         rec.version);
        } else if (rec.state == ETL_DATASET_FAILED) {
            queue_sweep_set_field(w->q, sweep, "reason", "its dataset failed to load", &err);
            if (queue_sweep_set_state(w->q, sweep, "cancelled", &err) == 0)
                cds_logf(&w->log, CDS_LOG_WARN, "sweep %s cancelled: dataset %s failed to load", sweep, name);
        }
        etl_dataset_record_free(&rec);
    }
    json_decref(sw);
}

/* One visit of shard k for the first sweep that has a model for it. */
static int lease_step(worker *w, char **ids, size_t n, int shard)
{
    cds_err err;
    for (size_t i = 0; i < n && atomic_load(&w->stop) == 0; i++) {
        visit v = {.w = w, .sweep = ids[i]};
        int done = 0;
        int rc = WITH_RECONNECT(w, queue_mop_lease_model(w->q, ids[i], shard, w->cfg->id, w->cfg->lease_ms, &v.lease,
                                                         &done, &err));
        if (rc < 0) {
            cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: asking for a model for shard %d: %s", ids[i], shard, err.msg);
            continue;
        }
        if (rc == QUEUE_MOP_WAITING) {
            pin_dataset(w, ids[i]);
            continue;
        }
        if (rc == 1) {
            run_visit(w, &v);
            return 1;
        }
    }
    return 0;
}

/* Shards whose worker has not been heard of for the grace period: this one
 * serves them too (DATA_ROOT is shared), so a lost node does not hang a
 * sweep.  Their own worker, back, simply shares them again. */
static int orphan_step(worker *w, char **ids, size_t n)
{
    if (w->cfg->shard_grace_ms <= 0)
        return 0;
    int shards[64], ns = 0;
    cds_err err;
    if (queue_mop_orphan_shards(w->q, w->cfg->shard_grace_ms, shards, 64, &ns, &err) != 0)
        return 0;
    for (int i = 0; i < ns; i++)
        if (shards[i] != w->cfg->shard && shards[i] >= 0 && lease_step(w, ids, n, shards[i])) {
            cds_logf(&w->log, CDS_LOG_INFO, "served shard %d, whose worker has been gone for more than %lld ms",
                     shards[i], (long long)w->cfg->shard_grace_ms);
            return 1;
        }
    return 0;
}

int worker_mop_step(worker *w)
{
    cds_err err;
    char **ids = NULL;
    size_t n = 0;
    if (WITH_RECONNECT(w, queue_sweep_list_active(w->q, &ids, &n, &err)) != 0) {
        cds_logf(&w->log, CDS_LOG_WARN, "listing the active sweeps: %s", err.msg);
        return -1;
    }
    /* A finished epoch waiting for evaluation first: it is short (the
     * validation split, forward only) and its metrics are what people wait
     * for, so they land as each epoch ends rather than all at the sweep's
     * end (when more models than workers keep every worker training, a
     * lower rank would starve them); training of the next epoch does not
     * wait for it, and any worker may take it.  Then its own shard, then a
     * shard whose worker is gone, then the test scoring of a finished
     * sweep. */
    int did = eval_step(w, ids, n);
    if (!did)
        did = lease_step(w, ids, n, w->cfg->shard);
    if (!did)
        did = orphan_step(w, ids, n);
    if (!did)
        did = test_step(w, ids, n);
    queue_sweep_list_free(ids, n);
    return did;
}

int worker_mop_beat(worker *w, queue_conn *q, cds_err *err)
{
    pthread_mutex_lock(&w->mu);
    int active = w->mop.active && !w->mop.finishing && !atomic_load(&w->mop.lost);
    char sweep[QUEUE_SWEEP_ID_MAX];
    queue_mop_lease l = w->mop.lease;
    snprintf(sweep, sizeof sweep, "%s", w->mop.sweep);
    int64_t done = atomic_load(&w->mop.rows_done), total = atomic_load(&w->mop.rows_total);
    int64_t ms = cds_mono_ms() - w->mop.started_ms;
    pthread_mutex_unlock(&w->mu);
    if (!active)
        return 0;
    /* Samples per second over the visit so far (loading the checkpoint
     * included: it is part of what a visit costs). */
    char progress[160] = "";
    if (l.kind == QUEUE_MOP_VISIT && total > 0)
        snprintf(progress, sizeof progress, "{\"rows_done\":%lld,\"rows_total\":%lld,\"samples_per_s\":%.1f}",
                 (long long)done, (long long)total, ms > 0 ? (double)done * 1000.0 / (double)ms : 0.0);
    int rc = queue_mop_renew_with_progress(q, sweep, &l, w->cfg->lease_ms, progress, err);
    if (rc == 0 && progress[0]) {
        pthread_mutex_lock(&w->mu);
        if (w->mop.active && strcmp(w->mop.lease.token, l.token) == 0)
            w->mop.progress_shown = 1;
        pthread_mutex_unlock(&w->mu);
    }
    if (rc != QUEUE_NOT_FOUND)
        return rc;
    /* Lost, unless the main thread ended the lease itself meanwhile (a
     * commit or a release that Redis ran before this renew): it set
     * `finishing` before sending it, so this check, made after the renew's
     * answer, sees it.  Only the lease we renewed: the slot may hold a newer
     * one by now. */
    pthread_mutex_lock(&w->mu);
    int lost = w->mop.active && !w->mop.finishing && strcmp(w->mop.lease.token, l.token) == 0;
    if (lost)
        atomic_store(&w->mop.lost, 1);
    pthread_mutex_unlock(&w->mu);
    if (!lost)
        return 0;
    if (l.kind == QUEUE_MOP_VISIT)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: lease lost (expired and reaped, or cancelled)", sweep,
                 l.model);
    else if (l.kind == QUEUE_MOP_EVAL)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: evaluation lease lost (expired and put back)",
                 sweep, l.model, l.epoch);
    else
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: test-scoring claim lost (expired)", sweep);
    return 0;
}

int worker_mop_progress_waiting(worker *w)
{
    pthread_mutex_lock(&w->mu);
    int waiting = w->mop.active && !w->mop.finishing && !w->mop.progress_shown && atomic_load(&w->mop.rows_total) > 0 &&
                  w->mop.lease.kind == QUEUE_MOP_VISIT;
    pthread_mutex_unlock(&w->mu);
    return waiting;
}

int worker_mop_reap(worker *w, queue_conn *q, cds_err *err)
{
    char **ids = NULL;
    size_t n = 0;
    if (queue_sweep_list_active(q, &ids, &n, err) != 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        int reaped = 0, evals = 0;
        rc = queue_mop_reap(q, ids[i], &reaped, &evals, err);
        if (rc == QUEUE_NOT_FOUND) /* deleted by hand: it just left the active set */
            rc = 0;
        if (rc == 0 && reaped)
            cds_logf(&w->log, CDS_LOG_INFO, "sweep %s: %d expired model leases returned to idle", ids[i], reaped);
        if (rc == 0 && evals)
            cds_logf(&w->log, CDS_LOG_INFO, "sweep %s: %d expired evaluations put back for another worker", ids[i],
                     evals);
    }
    queue_sweep_list_free(ids, n);
    return rc;
}
