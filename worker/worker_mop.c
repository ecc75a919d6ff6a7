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
 * With no model to train the worker evaluates a finished epoch, and once a
 * sweep is done it scores the chosen model on the test split.  Both are
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

#include "cds_util.h"
#include "nn_train.h"
#include "worker_int.h"

typedef struct visit {
    worker *w;
    const char *sweep;
    queue_mop_lease lease;
    char dataset[256];
    int shards;
} visit;

static int should_stop(void *ctx, int64_t done, int64_t total, const nn_pass_stats *st)
{
    (void)done, (void)total, (void)st;
    worker *w = ctx;
    return atomic_load(&w->stop) >= 2 || atomic_load(&w->mop.lost);
}

static void slot_set(worker *w, const char *sweep, const queue_mop_lease *l)
{
    pthread_mutex_lock(&w->mu);
    w->mop.active = l != NULL;
    if (l) {
        snprintf(w->mop.sweep, sizeof w->mop.sweep, "%s", sweep);
        w->mop.lease = *l;
        atomic_store(&w->mop.lost, 0);
    }
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

static void ckpt_path(const visit *v, char *out, size_t n, char *dir, size_t dn)
{
    snprintf(dir, dn, "%s/sweeps/%s/models/%d", v->w->cfg->data_root, v->sweep, v->lease.model);
    snprintf(out, n, "%s/v%lld-%.12s.ckpt", dir, (long long)v->lease.version + 1, v->lease.token);
}

static void give_back(worker *w, visit *v, const char *why)
{
    cds_err err;
    int rc = WITH_RECONNECT(w, queue_mop_release(w->q, v->sweep, &v->lease, &err));
    cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: %s; %s", v->sweep, v->lease.model, why,
             rc == 0 ? "released it" : rc == QUEUE_NOT_FOUND ? "its lease was already gone" : err.msg);
}

/* A model that does not fit this worker's memory (its parameters, optimiser
 * state or activations for its batch size) would fail the same way on every
 * retry, so it fails with the reason and the sweep goes on; any other error
 * gives the model back for another try. */
static void fail_or_give_back(worker *w, visit *v, const cds_err *why)
{
    if (!cds_err_is_nomem(why)) {
        give_back(w, v, why->msg);
        return;
    }
    cds_err err;
    char reason[2 * CDS_ERR_MAX];
    snprintf(reason, sizeof reason, "out of memory on worker %s: %s", w->cfg->id, why->msg);
    int rc = WITH_RECONNECT(w, queue_mop_fail_model(w->q, v->sweep, &v->lease, reason, &err));
    cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d failed: %s%s", v->sweep, v->lease.model, reason,
             rc == 0 ? "" : rc == QUEUE_NOT_FOUND ? " (its lease was already gone)" : " (could not record it)");
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
        long long i;
        char tail;
        if (sscanf(e->d_name, "v%lld-%c", &i, &tail) != 2 || i > version || strcmp(e->d_name, keep_name) == 0)
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
static int commit_visit(worker *w, visit *v, const char *path, const char *dir, int keep_epoch,
                        queue_mop_commit_result *r)
{
    cds_err err;
    if (WITH_RECONNECT(w, queue_mop_commit(w->q, v->sweep, &v->lease, path, r, &err)) != 0) {
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
    if (r->epoch_done && keep_epoch) {
        /* The epoch's checkpoint must outlive the next commit, which deletes
         * the file it supersedes, until an evaluation has read it. */
        char epoch_file[QUEUE_MOP_PATH_MAX];
        snprintf(epoch_file, sizeof epoch_file, "%s/epoch-%d.ckpt", dir, v->lease.epoch);
        if (link(path, epoch_file) != 0 && errno != EEXIST)
            cds_logf(&w->log, CDS_LOG_WARN, "could not keep %s for evaluation: %s", epoch_file, strerror(errno));
    }
    if (r->superseded[0] && strcmp(r->superseded, path) != 0 && unlink(r->superseded) != 0 && errno != ENOENT)
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
    ckpt_path(v, path, sizeof path, dir, sizeof dir);
    if (cds_mkdirs(dir, &err) != 0 || nn_trainer_save(t, path, &err) != 0) {
        give_back(w, v, err.msg);
        return -1;
    }
    char epoch_file[QUEUE_MOP_PATH_MAX];
    snprintf(epoch_file, sizeof epoch_file, "%s/epoch-%d.ckpt", dir, v->lease.epoch);
    int linked = epoch_end && link(path, epoch_file) == 0;
    if (epoch_end && !linked && errno != EEXIST)
        cds_logf(&w->log, CDS_LOG_WARN, "could not keep %s for evaluation: %s", epoch_file, strerror(errno));
    queue_mop_commit_result r;
    int c = commit_visit(w, v, path, dir, 1, &r);
    if (c == 0 && linked)
        unlink(epoch_file); /* refused: that epoch is someone else's to finish */
    if (c != 1)
        return -1;
    if (WITH_RECONNECT(w, queue_mop_record_visit(w->q, v->sweep, v->lease.model, v->lease.epoch, v->lease.shard,
                                                 st->rows, st->loss_sum, st->xent_sum, st->top1, st->top5, &err)) != 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: the visit's metrics were not recorded: %s", v->sweep,
                 v->lease.model, err.msg);
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
        give_back(w, v, "its committed checkpoint is missing");
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
    ckpt_path(v, path, sizeof path, dir, sizeof dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = cds_mkdirs(dir, &err) == 0 ? fopen(tmp, "w") : NULL;
    int ok = f && fprintf(f, "diag.sleep model %d epoch %d shard %d version %lld\n", v->lease.model, v->lease.epoch,
                          v->lease.shard, (long long)v->lease.version + 1) > 0;
    ok = f && fclose(f) == 0 && ok && rename(tmp, path) == 0;
    if (!ok) {
        unlink(tmp);
        give_back(w, v, "could not write its checkpoint");
        return;
    }
    queue_mop_commit_result r;
    if (commit_visit(w, v, path, dir, 0, &r) != 1) /* diag.sleep: nothing to evaluate */
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
        give_back(w, v, err.msg);
        goto out;
    }
    int64_t sleep_ms = sleep_model_ms(spec);
    if (sleep_ms >= 0) {
        run_sleep_visit(w, v, sleep_ms);
        goto out;
    }
    if (!(t = load_model(v, spec, &err))) {
        fail_or_give_back(w, v, &err);
        goto out;
    }
    if (nn_trainer_epoch(t) != v->lease.epoch)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: checkpoint is at epoch %lld, the lease says %d",
                 v->sweep, v->lease.model, (long long)nn_trainer_epoch(t), v->lease.epoch);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/datasets/%s/train/shard-%d", w->cfg->data_root, v->dataset, v->lease.shard);
    nn_pass_stats st;
    int rc = nn_trainer_train_shard(t, dir, v->lease.shard, should_stop, w, &st, &err);
    if (rc == NN_TRAIN_DIVERGED) {
        int frc = WITH_RECONNECT(w, queue_mop_fail_model(w->q, v->sweep, &v->lease, err.msg, &err));
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d failed: %s%s", v->sweep, v->lease.model, err.msg,
                 frc == 0 ? "" : " (could not record it)");
    } else if (rc == NN_TRAIN_STOPPED) {
        if (atomic_load(&w->mop.lost))
            cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: lease lost mid-pass; abandoning the visit", v->sweep,
                     v->lease.model);
        else
            give_back(w, v, "stopping now");
    } else if (rc != 0) {
        fail_or_give_back(w, v, &err);
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
        const char *v = json_string_value(json_object_get(res, field));
        long long rows, t1, t5;
        double loss, xent;
        if (v && sscanf(v, "%lld %lf %lf %lld %lld", &rows, &loss, &xent, &t1, &t5) == 5) {
            tr->rows += rows;
            tr->loss_sum += loss;
            tr->xent_sum += xent;
            tr->top1 += t1;
            tr->top5 += t5;
        }
    }
    json_decref(res);
}

/* Evaluates on every shard-<k> under DATA_ROOT/datasets/<ds>/valid. */
static int eval_valid(worker *w, nn_trainer *t, const char *dataset, nn_pass_stats *va, cds_err *err)
{
    memset(va, 0, sizeof *va);
    char dir[4096];
    for (int k = 0;; k++) {
        snprintf(dir, sizeof dir, "%s/datasets/%s/valid/shard-%d", w->cfg->data_root, dataset, k);
        if (access(dir, F_OK) != 0)
            return k == 0 ? cds_errf(err, "dataset %s has no validation shards under %s/datasets/%s/valid: unload it "
                                          "with a validation split (valid_fraction or valid_table)",
                                     dataset, w->cfg->data_root, dataset)
                          : 0;
        /* The evaluation lease went back to the list: someone else does it. */
        if (atomic_load(&w->mop.lost))
            return cds_errf(err, "its evaluation lease was lost");
        if (nn_trainer_eval_shard(t, dir, va, err) != 0)
            return -1;
    }
}

/* The database an evaluation's cds_results row goes to: the DSN of the
 * dataset's ETL plan, without password (worker_results_dsn), malloc'd; ""
 * (each worker's libpq defaults, PGHOST and so on) for a plan that names
 * none.  A dataset made without a plan in Redis (by the cds-etl command)
 * has no database to write to: NULL, and no row is made. */
static char *results_dsn(worker *w, const char *dataset)
{
    cds_err err;
    char name[300];
    snprintf(name, sizeof name, "dataset:%s", dataset);
    json_t *rec = NULL;
    if (WITH_RECONNECT(w, queue_record_get(w->q, name, &rec, &err)) != 0)
        return NULL;
    json_t *plan = json_loads(json_string_value(json_object_get(rec, "plan")) ?: "", 0, NULL);
    const char *given = json_string_value(json_object_get(json_object_get(plan, "spec"), "dsn"));
    char *dsn = plan ? worker_results_dsn(given ? given : "") : NULL;
    json_decref(plan);
    json_decref(rec);
    return dsn;
}

/* The row for cds_results was appended to its database's outbox in Redis
 * with the result (queue_mop_record_result_row); the worker that recorded it
 * writes it at once (with the rows before it, in order) unless the database
 * is backing off or another worker is writing that outbox, and says so,
 * once per row, when it stays in Redis because the database failed. */
static void record_in_database(worker *w, const char *sweep, int m, int epoch, const char *dsn)
{
    /* The evaluation lease ended with the record: a database try may take
     * seconds, during which the heartbeat must not find it "lost". */
    slot_set(w, NULL, NULL);
    if (!dsn)
        return;
    cds_err err;
    worker_results_opts o;
    worker_results_pass p = {0};
    char id[QUEUE_OUTBOX_ID_LEN];
    queue_outbox_id(dsn, id);
    worker_results_default_opts(&o, w->cfg->id);
    if (!w->results_db && !(w->results_db = worker_results_db_new()))
        cds_err_nomem(&err, "out of memory");
    if (!w->results_db ||
        WITH_RECONNECT(w, worker_results_drain(w->results_db, w->q, id, &o, &w->log, &p, &err)) != 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: its cds_results row is kept in Redis, not "
                 "written now: %s (any worker writes it later)", sweep, m, epoch, err.msg);
    else if (p.deferred)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: not written to cds_results yet: %s; the row is "
                 "kept in Redis (%lld rows wait for that database) and retried with backoff (jobctl results %s "
                 "--check-db)", sweep, m, epoch, p.why, (long long)p.left, sweep);
}

/* Appends one line to DATA_ROOT/sweeps/<S>/results.csv, with the header when
 * the file is new; under an exclusive lock, as several workers append. */
static void append_csv(worker *w, const char *sweep, const char *line)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/sweeps/%s/results.csv", w->cfg->data_root, sweep);
    FILE *f = fopen(path, "a");
    if (!f) {
        cds_logf(&w->log, CDS_LOG_WARN, "cannot append to %s: %s", path, strerror(errno));
        return;
    }
    flockfile(f);
    int fd = fileno(f);
    if (lockf(fd, F_LOCK, 0) == 0) {
        if (ftell(f) == 0 && lseek(fd, 0, SEEK_END) == 0)
            fputs("sweep,model,epoch,version,train_rows,train_loss,train_top1,valid_rows,valid_loss,valid_top1,"
                  "valid_top5,time_ms\n", f);
        fputs(line, f);
        fflush(f);
        lockf(fd, F_ULOCK, 0);
    }
    funlockfile(f);
    fclose(f);
}

/* Ends an evaluation lease without a result: back to the list (another
 * worker tries it) or dropped (nothing to evaluate). */
static void end_eval(worker *w, const char *sweep, const queue_mop_lease *l, int drop)
{
    cds_err err;
    int rc = WITH_RECONNECT(w, queue_mop_put_eval(w->q, sweep, l, drop, &err));
    if (rc < 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: could not %s the evaluation: %s (the reaper "
                 "puts it back when its lease expires)", sweep, l->model, l->epoch, drop ? "drop" : "requeue", err.msg);
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

static void run_eval_leased(worker *w, const char *sweep, const queue_mop_lease *l)
{
    cds_err err;
    int m = l->model, e = l->epoch;
    int64_t version = l->version;
    visit v = {.w = w, .sweep = sweep};
    char dir[QUEUE_MOP_PATH_MAX - 64], file[QUEUE_MOP_PATH_MAX], what[64];
    snprintf(dir, sizeof dir, "%s/sweeps/%s/models/%d", w->cfg->data_root, sweep, m);
    snprintf(file, sizeof file, "%s/epoch-%d.ckpt", dir, e);
    snprintf(what, sizeof what, "%s/%d eval", sweep, m);
    worker_set_current(w, what);
    char *spec = NULL;
    if (WITH_RECONNECT(w, queue_mop_model_spec(w->q, sweep, m, &spec, &err)) == 0 && sleep_model_ms(spec) >= 0) {
        free(spec); /* diag.sleep models have nothing to evaluate */
        unlink(file);
        end_eval(w, sweep, l, 1);
        worker_set_current(w, NULL);
        return;
    }
    free(spec);
    nn_trainer *t = NULL;
    nn_pass_stats tr, va;
    if (sweep_info(w, &v, &err) != 0 || !(t = nn_trainer_load(file, &err)) ||
        eval_valid(w, t, v.dataset, &va, &err) != 0) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: evaluation failed: %s", sweep, m, e, err.msg);
        /* A missing checkpoint will not come back: only retry the others.
         * A lost lease is no longer this worker's to end. */
        if (!atomic_load(&w->mop.lost))
            end_eval(w, sweep, l, access(file, R_OK) != 0);
        nn_trainer_free(t);
        worker_set_current(w, NULL);
        return;
    }
    nn_trainer_free(t);
    train_metrics(w, sweep, m, e, v.shards, &tr);
    double trn = tr.rows ? (double)tr.rows : 1.0, van = va.rows ? (double)va.rows : 1.0;
    double vtop1 = (double)va.top1 / van;
    int64_t now = cds_wall_ms();
    json_t *j = json_pack("{s:i, s:i, s:I, s:I, s:f, s:f, s:I, s:f, s:f, s:f, s:I}", "model", m, "epoch", e + 1,
                          "version", (json_int_t)version, "train_rows", (json_int_t)tr.rows, "train_loss",
                          tr.loss_sum / trn, "train_top1", (double)tr.top1 / trn, "valid_rows", (json_int_t)va.rows,
                          "valid_loss", va.loss_sum / van, "valid_top1", vtop1, "valid_top5", (double)va.top5 / van,
                          "time_ms", (json_int_t)now);
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    int is_best = 0, prev = -1;
    char *dsn = results_dsn(w, v.dataset);
    queue_outbox_row row = {.dsn = dsn, .epoch = e + 1};
    int rrc = text ? WITH_RECONNECT(w, queue_mop_record_result_row(w->q, sweep, l, text, vtop1, dsn ? &row : NULL,
                                                                   &is_best, &prev, &err))
                   : -1;
    if (rrc != 0) {
        /* Not recorded: the epoch file stays, for whoever evaluates it. */
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: result not recorded: %s", sweep, m, e,
                 text ? err.msg : "out of memory");
        if (!text)
            end_eval(w, sweep, l, 0);
        free(text);
        free(dsn);
        worker_set_current(w, NULL);
        return;
    }
    free(text);
    char line[1024];
    snprintf(line, sizeof line, "%s,%d,%d,%lld,%lld,%.6f,%.6f,%lld,%.6f,%.6f,%.6f,%lld\n", sweep, m, e + 1,
             (long long)version, (long long)tr.rows, tr.loss_sum / trn, (double)tr.top1 / trn, (long long)va.rows,
             va.loss_sum / van, vtop1, (double)va.top5 / van, (long long)now);
    append_csv(w, sweep, line);
    record_in_database(w, sweep, m, row.epoch, dsn);
    free(dsn);
    /* Retention: the best epoch's checkpoint is kept as best-e<E>.ckpt, every
     * other epoch file goes once evaluated. */
    char best[QUEUE_MOP_PATH_MAX];
    snprintf(best, sizeof best, "%s/best-e%d.ckpt", dir, e + 1);
    if (is_best && rename(file, best) == 0) {
        if (prev >= 0) {
            char old[QUEUE_MOP_PATH_MAX];
            snprintf(old, sizeof old, "%s/best-e%d.ckpt", dir, prev + 1);
            unlink(old);
        }
        drop_if_superseded(w, sweep, m, e, best);
    } else {
        unlink(file);
    }
    cds_logf(&w->log, CDS_LOG_INFO,
             "sweep %s model %d epoch %d: train loss %.4f top1 %.4f | valid loss %.4f top1 %.4f top5 %.4f%s", sweep, m,
             e + 1, tr.loss_sum / trn, (double)tr.top1 / trn, va.loss_sum / van, vtop1, (double)va.top5 / van,
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
    if (WITH_RECONNECT(w, queue_mop_models(w->q, sweep, &models, err)) != 0 ||
        WITH_RECONNECT(w, queue_mop_results(w->q, sweep, &results, err)) != 0) {
        json_decref(models);
        return -1;
    }
    for (int m = 0; m < M; m++) {
        char key[64];
        snprintf(key, sizeof key, "%d.state", m);
        const char *st = json_string_value(json_object_get(models, key));
        if (!st || strcmp(st, "done") != 0)
            continue;
        for (int e = 0; e < E; e++) {
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
    char epoch_file[QUEUE_MOP_PATH_MAX];
    snprintf(file, n, "%s/sweeps/%s/models/%d/best-e%d.ckpt", w->cfg->data_root, sweep, m, e + 1);
    snprintf(epoch_file, sizeof epoch_file, "%s/sweeps/%s/models/%d/epoch-%d.ckpt", w->cfg->data_root, sweep, m, e);
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
        snprintf(dir, sizeof dir, "%s/datasets/%s/test/shard-%d", w->cfg->data_root, dataset, k);
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

/* Scores the chosen model of sweep on the test split under the claim l
 * (in the MOP slot, so the heartbeat renews it) and records the figure, or
 * why there is none. */
static void run_test(worker *w, const char *sweep, const char *dataset, int M, int E, const queue_mop_lease *l)
{
    cds_err err;
    char fields[CDS_ERR_MAX + QUEUE_MOP_PATH_MAX + 64], file[QUEUE_MOP_PATH_MAX], what[64];
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
        snprintf(fields, sizeof fields, "none no model finished with an evaluated epoch");
    } else if (find_best_file(w, sweep, best_m, best_e, file, sizeof file) != 0) {
        snprintf(fields, sizeof fields, "error the chosen model's checkpoint %s is missing", file);
    } else {
        snprintf(what, sizeof what, "%s/%d test", sweep, best_m);
        worker_set_current(w, what);
        rc = score_test(w, file, dataset, &te, &err);
        worker_set_current(w, NULL);
        double rows = te.rows ? (double)te.rows : 1.0;
        if (rc == 0)
            snprintf(fields, sizeof fields, "%d %d %lld %.17g %.17g %.17g", best_m, best_e + 1, (long long)te.rows,
                     te.loss_sum / rows, (double)te.top1 / rows, (double)te.top5 / rows);
        else
            snprintf(fields, sizeof fields, "error %s", err.msg);
    }
    if (atomic_load(&w->mop.lost)) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: the test-scoring claim was lost; another worker scores it", sweep);
        return;
    }
    rc = WITH_RECONNECT(w, queue_mop_record_test(w->q, sweep, l, fields, &err));
    if (rc != 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: the test result was not recorded: %s", sweep, err.msg);
    else if (strncmp(fields, "error ", 6) == 0 || strncmp(fields, "none ", 5) == 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: no test score: %s", sweep, fields);
    else
        cds_logf(&w->log, CDS_LOG_INFO, "sweep %s: chosen model %d (epoch %d, valid top1 %.4f): test top1 %.4f "
                 "top5 %.4f loss %.4f over %lld rows", sweep, best_m, best_e + 1, best_top1,
                 (double)te.top1 / (te.rows ? (double)te.rows : 1.0), (double)te.top5 / (te.rows ? (double)te.rows : 1.0),
                 te.loss_sum / (te.rows ? (double)te.rows : 1.0), (long long)te.rows);
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
    json_t *sw = NULL, *rec = NULL;
    if (queue_sweep_get(w->q, sweep, &sw, &err) != 0)
        return;
    char name[300];
    snprintf(name, sizeof name, "dataset:%s", json_string_value(json_object_get(sw, "dataset")) ?: "");
    if (queue_record_get(w->q, name, &rec, &err) == 0) {
        const char *state = json_string_value(json_object_get(rec, "state"));
        const char *version = json_string_value(json_object_get(rec, "version"));
        if (state && strcmp(state, "ready") == 0 && version && *version) {
            if (queue_sweep_set_field(w->q, sweep, "dataset_version", version, &err) == 0)
                cds_logf(&w->log, CDS_LOG_INFO, "sweep %s: dataset %s is ready, version %.16s pinned", sweep,
                         name + 8, version);
        } else if (state && strcmp(state, "failed") == 0) {
            queue_sweep_set_field(w->q, sweep, "reason", "its dataset failed to load", &err);
            if (queue_sweep_set_state(w->q, sweep, "cancelled", &err) == 0)
                cds_logf(&w->log, CDS_LOG_WARN, "sweep %s cancelled: dataset %s failed to load", sweep, name + 8);
        }
    }
    json_decref(rec);
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
    /* Its own shard first; then a shard whose worker is gone; then, with no
     * model to train, a finished epoch to evaluate (no lease: any worker,
     * and training of the next epoch does not wait for it); then the test
     * scoring of a finished sweep. */
    int did = lease_step(w, ids, n, w->cfg->shard);
    if (!did)
        did = orphan_step(w, ids, n);
    if (!did)
        did = eval_step(w, ids, n);
    if (!did)
        did = test_step(w, ids, n);
    queue_sweep_list_free(ids, n);
    return did;
}

int worker_mop_beat(worker *w, queue_conn *q, cds_err *err)
{
    pthread_mutex_lock(&w->mu);
    int active = w->mop.active && !atomic_load(&w->mop.lost);
    char sweep[QUEUE_SWEEP_ID_MAX];
    queue_mop_lease l = w->mop.lease;
    snprintf(sweep, sizeof sweep, "%s", w->mop.sweep);
    pthread_mutex_unlock(&w->mu);
    if (!active)
        return 0;
    int rc = queue_mop_renew(q, sweep, &l, w->cfg->lease_ms, err);
    if (rc == QUEUE_NOT_FOUND) {
        pthread_mutex_lock(&w->mu);
        /* Only the visit we looked at: the slot may hold a newer one by now. */
        if (w->mop.active && strcmp(w->mop.lease.token, l.token) == 0)
            atomic_store(&w->mop.lost, 1);
        pthread_mutex_unlock(&w->mu);
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
    return rc;
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
