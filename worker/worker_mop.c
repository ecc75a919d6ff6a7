/* worker_mop: Model Hopper Parallelism in cds-worker, the step.
 *
 * A worker started with --shard k serves shard k of every running sweep.
 * Between queue jobs the main loop calls worker_mop_step, which does one of,
 * in this order:
 *
 *   evaluate  a finished epoch of any sweep that waits for its evaluation
 *             (short, and its metrics are what people wait for, so they
 *             land as epochs end; any worker may take it);
 *   visit     a model of some sweep that has not visited shard k this epoch
 *             (one Lua call, queue_mop_lease_visit, which also answers the
 *             dataset, the shard count and the model's spec): one
 *             sub-epoch on it;
 *   orphan    the same for a shard whose worker has been gone for the grace
 *             period (DATA_ROOT is shared);
 *   test      the scoring of a done sweep's chosen model on the test split.
 *
 * The lease is held in the worker's slot, which the heartbeat thread renews
 * (worker_mop_beat, with the visit's progress) and flags lost when it is
 * gone; the runner then stops at its next check.  Which runner runs a lease
 * is decided here, once: a model of the engine goes to worker_mop_visit.c /
 * worker_mop_eval.c, a diag.sleep model to worker_mop_sleep.c.  A first
 * SIGTERM lets the visit finish and commit; a second stops it and gives the
 * model back.  Workers look only at the active sweeps
 * (queue_sweep_list_active), which finished sweeps leave, so the list does
 * not grow with history.  worker_mop_int.h draws the files and their calls. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "worker_mop_int.h"

/* Runs the visit whose lease v holds, by the runner its model needs, with
 * the lease in the slot for the heartbeat to renew. */
static void run_visit(worker *w, worker_visit *v)
{
    char what[64];
    snprintf(what, sizeof what, "%s/%d", v->sweep, v->lease.model);
    worker_set_current(w, what);
    worker_slot_set(w, v->sweep, &v->lease);
    int64_t sleep_ms = worker_mop_sleep_ms(v->lease.spec);
    if (sleep_ms >= 0)
        worker_mop_sleep_visit(w, v, sleep_ms);
    else
        worker_mop_train_visit(w, v);
    worker_slot_set(w, NULL, NULL);
    worker_set_current(w, NULL);
}

/* Runs the evaluation lease l (in the slot) by the runner its model needs:
 * diag.sleep models have nothing to evaluate.  A spec Redis cannot give
 * goes to the evaluation, which reports what fails. */
static void run_eval(worker *w, const char *sweep, const queue_mop_lease *l)
{
    cds_err err;
    char *spec = NULL, what[64];
    snprintf(what, sizeof what, "%s/%d eval", sweep, l->model);
    worker_set_current(w, what);
    worker_slot_set(w, sweep, l);
    if (WITH_RECONNECT(w, queue_mop_model_spec(w->q, sweep, l->model, &spec, &err)) == 0 &&
        worker_mop_sleep_ms(spec) >= 0)
        worker_mop_sleep_eval(w, sweep, l, spec);
    else
        worker_mop_eval(w, sweep, l);
    free(spec);
    worker_slot_set(w, NULL, NULL);
    worker_set_current(w, NULL);
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

/* The gang sweeps this worker said it is ready for during a step: before
 * it takes a MOP visit (long work) it withdraws the marks, so no gang forms
 * around a worker that is busy; one that forms anyway (a mark read just
 * before, or an evaluation taken at the next step) breaks at the
 * rendezvous's time-out and counts no stall (mop_gang_end, mop_reap: its
 * ranks were never all taken). */
typedef struct ready_marks {
    const char *sweeps[16];
    int n;
} ready_marks;

static void withdraw_ready(worker *w, ready_marks *rm)
{
    cds_err err;
    for (int i = 0; i < rm->n; i++)
        if (WITH_RECONNECT(w, queue_mop_gang_unready(w->q, rm->sweeps[i], w->cfg->id, &err)) != 0)
            cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: withdrawing the ready mark: %s", rm->sweeps[i], err.msg);
    rm->n = 0;
}

/* One visit of shard k for the first sweep that has a model for it; a
 * DDP or MA sweep (gangs: own shard only, which offers the orphans too)
 * asks for a rank instead, and is remembered in rm (may be NULL) when it
 * has none yet. */
static int lease_step(worker *w, char **ids, size_t n, int shard, ready_marks *rm)
{
    cds_err err;
    for (size_t i = 0; i < n && atomic_load(&w->stop) == 0; i++) {
        worker_visit v = {.w = w, .sweep = ids[i]};
        int done = 0;
        int rc = WITH_RECONNECT(w, queue_mop_lease_visit(w->q, ids[i], shard, w->cfg->id, w->cfg->lease_ms, &v.lease,
                                                         &done, &err));
        if (rc < 0) {
            cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: asking for a model for shard %d: %s", ids[i], shard, err.msg);
            continue;
        }
        if (rc == QUEUE_MOP_WAITING) {
            worker_mop_pin_dataset(w, ids[i]);
            continue;
        }
        if (rc == QUEUE_MOP_GANG) {
            if (shard == w->cfg->shard && worker_mop_gang_step(w, ids[i]))
                return 1;
            if (rm && shard == w->cfg->shard && rm->n < 16)
                rm->sweeps[rm->n++] = ids[i];
            continue;
        }
        if (rc == 1) {
            if (rm)
                withdraw_ready(w, rm);
            run_visit(w, &v);
            /* After the slot let go of it: the heartbeat's copy of the
             * lease shares the spec and never frees it. */
            queue_mop_lease_clear(&v.lease);
            return 1;
        }
    }
    return 0;
}

/* Shards whose worker has not been heard of for the grace period: this one
 * serves them too, so a lost node does not hang a sweep. */
static int orphan_step(worker *w, char **ids, size_t n, ready_marks *rm)
{
    int shards[64];
    int ns = worker_mop_orphan_shards(w, shards, 64);
    for (int i = 0; i < ns; i++)
        if (lease_step(w, ids, n, shards[i], rm)) {
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
    ready_marks rm = {.n = 0};
    int did = eval_step(w, ids, n);
    if (!did)
        did = lease_step(w, ids, n, w->cfg->shard, &rm);
    if (!did)
        did = orphan_step(w, ids, n, &rm);
    /* Nothing to train: a TPE search may owe a trial (a model finished). */
    if (!did)
        did = worker_mop_propose_step(w, ids, n);
    if (!did)
        did = worker_mop_test_step(w, ids, n);
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
    if ((l.kind == QUEUE_MOP_VISIT || l.kind == QUEUE_MOP_RANK) && total > 0)
        snprintf(progress, sizeof progress,
                 "{\"rows_done\":%lld,\"rows_total\":%lld,\"samples_per_s\":%.1f,\"device\":\"%s\"}",
                 (long long)done, (long long)total, ms > 0 ? (double)done * 1000.0 / (double)ms : 0.0, w->device);
    int rc = queue_mop_renew_with_progress(q, sweep, &l, w->cfg->lease_ms, progress, err);
    if (rc == QUEUE_MOP_GANG_DONE) /* rank 0 committed: the rank is finishing */
        return 0;
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
    else if (l.kind == QUEUE_MOP_RANK)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: gang %lld ended (another rank ended it, it expired, or "
                 "the model was cancelled); stopping rank %d", sweep, l.model, (long long)l.gang, l.shard);
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
                  (w->mop.lease.kind == QUEUE_MOP_VISIT || w->mop.lease.kind == QUEUE_MOP_RANK);
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
