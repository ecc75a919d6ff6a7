/* worker_mop_lease: the MOP lease in hand, as the main thread ends it.
 *
 * A visit ends one of four ways, each one script call that checks the
 * lease's token: committed (its checkpoint becomes the model's; the one it
 * supersedes and any file a dead lease left in the model's directory are
 * deleted), refused (the lease was lost: its file is deleted, nothing is
 * published), given back (the worker stops, or Redis failed the visit: no
 * attempt counted), or failed (an attempt, with a backoff, and the model
 * fails at the sweep's max_attempts).  An evaluation lease ends by its
 * result (worker_mop_eval.c) or here, put back, dropped or failed.
 *
 * Before any of these calls the slot is marked finishing, so the heartbeat
 * neither renews the lease nor reports its end as a loss.  A checkpoint is
 * deleted only when Redis said it is not the model's: when Redis cannot say
 * whether a commit went through, the file stays. */
#include <errno.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cds_layout.h"
#include "cds_util.h"
#include "worker_mop_int.h"

/* After each batch: records how far the visit is (the heartbeat publishes
 * it) and says whether to stop (told to stop at once, or the lease lost). */
int worker_visit_should_stop(void *ctx, int64_t done, int64_t total, const nn_pass_stats *st)
{
    (void)st;
    worker *w = ctx;
    if (total > 0) {
        atomic_store_explicit(&w->mop.rows_total, total, memory_order_relaxed);
        atomic_store_explicit(&w->mop.rows_done, done, memory_order_relaxed);
    }
    return atomic_load(&w->stop) >= 2 || atomic_load(&w->mop.lost);
}

/* The model's directory and the checkpoint this visit writes in it. */
int worker_visit_ckpt_path(const worker_visit *v, char *out, size_t n, char *dir, size_t dn, cds_err *err)
{
    if (cds_layout_model_dir(dir, dn, v->w->cfg->data_root, v->sweep, v->lease.model, err) != 0)
        return -1;
    return cds_layout_visit_ckpt(out, n, dir, v->lease.version + 1, v->lease.token, err);
}

/* Gives the model back without counting an attempt: the worker stops, or
 * Redis failed the visit, neither of which is the model's doing. */
void worker_visit_give_back(worker *w, worker_visit *v, const char *why)
{
    cds_err err;
    worker_slot_finishing(w);
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
void worker_visit_failed(worker *w, worker_visit *v, const cds_err *why, int final, const char *note)
{
    if (atomic_load(&w->stop) >= 2 || queue_conn_broken(w->q)) {
        worker_visit_give_back(w, v, why->msg);
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
    worker_slot_finishing(w);
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
int worker_visit_commit(worker *w, worker_visit *v, const char *path, const char *dir, int keep_epoch, const char *metrics,
                        queue_mop_commit_result *r)
{
    cds_err err;
    worker_slot_finishing(w);
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
    worker_mop_retain(w, dir, path, r->version, r->superseded);
    return 1;
}

void worker_mop_retain(worker *w, const char *dir, const char *path, int64_t version, const char *superseded)
{
    /* Only a v<N>- file: a model retried from an older checkpoint supersedes
     * that file (a best-e or epoch file), which retention keeps. */
    const char *base = strrchr(superseded, '/') ? strrchr(superseded, '/') + 1 : superseded;
    if (superseded[0] && base[0] == 'v' && strcmp(superseded, path) != 0 && unlink(superseded) != 0 &&
        errno != ENOENT)
        cds_logf(&w->log, CDS_LOG_WARN, "could not delete superseded checkpoint %s: %s", superseded, strerror(errno));
    prune_model_dir(w, dir, version, path);
}

/* Ends an evaluation lease without a result (queue_mop_put_eval): back to
 * the list uncounted (the worker stops, Redis failed it), dropped (nothing
 * to evaluate, or a checkpoint gone for good: why says so), or a failed
 * attempt, tried again after a backoff until the sweep's max_attempts. */
void worker_eval_end(worker *w, const char *sweep, const queue_mop_lease *l, int how, const char *why)
{
    cds_err err;
    int failed = 0;
    worker_slot_finishing(w);
    int rc = WITH_RECONNECT(w, queue_mop_put_eval(w->q, sweep, l, how, why, &failed, &err));
    if (rc < 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: could not end the evaluation: %s (the reaper "
                 "puts it back when its lease expires)", sweep, l->model, l->epoch, err.msg);
    else if (rc == 0 && failed)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: evaluation failed for good (its last attempt): "
                 "%s", sweep, l->model, l->epoch, why ? why : "");
}
