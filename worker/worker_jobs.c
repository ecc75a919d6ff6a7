/* Built-in job types.  The diagnostic ones exist for tests, demos and
 * benchmarks: diag.sleep stands in for any job that takes time (it sleeps in
 * short slices so that a stop or a lost lease interrupts it promptly),
 * diag.fail for one that fails, diag.noop for measuring the queue itself.  etl.shard and
 * etl.finish run an unload enqueued by `jobctl enqueue etl`; predict.part and
 * predict.finish a prediction enqueued by `jobctl enqueue predict`
 * (worker_predict.c).
 *
 * Which types exist, and what their payloads hold, is the table that jobctl
 * shares (queue/queue_jobtype.h): runners[] here has one row per row there,
 * in the same order, so a type is found by name once, there, and its
 * payload passes the same check that jobctl ran at enqueue before its runner
 * sees it.  A runner may therefore trust the payload's shape. */
#include <string.h>

#include <jansson.h>

#include "cds_util.h"
#include "etl_queue.h"
#include "queue_jobtype.h"
#include "worker.h"
#include "worker_predict.h"

static int run_diag_sleep(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err)
{
    (void)err;
    json_t *p = json_loads(job->payload, 0, NULL);
    int64_t total = json_integer_value(json_object_get(p, "ms")); /* checked: 0 to a day */
    json_decref(p);
    int64_t end = cds_mono_ms() + total;
    for (int64_t now = cds_mono_ms(); now < end; now = cds_mono_ms()) {
        if (worker_run_should_abort(ctx))
            return WORKER_RUN_ABORTED;
        cds_sleep_ms(end - now < 10 ? end - now : 10);
    }
    if (worker_run_should_abort(ctx))
        return WORKER_RUN_ABORTED;
    (void)result;
    return 0;
}

static int run_diag_fail(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err)
{
    (void)ctx;
    (void)result;
    json_t *p = json_loads(job->payload, 0, NULL);
    const char *msg = p ? json_string_value(json_object_get(p, "message")) : NULL;
    int permanent = p && json_is_true(json_object_get(p, "permanent"));
    cds_errf(err, "%s", msg ? msg : "diag.fail: failing as asked");
    json_decref(p);
    return permanent ? WORKER_RUN_PERMANENT : WORKER_RUN_FAILED;
}

static int run_diag_noop(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err)
{
    (void)ctx;
    (void)job;
    (void)result;
    (void)err;
    return 0;
}

/* Its result (the shard's rows and resources) is what jobctl show prints. */
static int run_etl_shard(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err)
{
    return etl_run_shard_job(worker_run_queue(ctx), job->payload, worker_run_log(ctx), result, err) == 0
               ? 0
               : WORKER_RUN_FAILED;
}

static int run_etl_finish(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err)
{
    (void)result;
    return etl_run_finish_job(worker_run_queue(ctx), job->payload, worker_run_log(ctx), err) == 0 ? 0
                                                                                                : WORKER_RUN_FAILED;
}

static void etl_dead(queue_conn *q, const queue_job *job, const char *reason, const cds_log *log)
{
    cds_err err;
    if (etl_mark_failed(q, job->payload, reason, &err) != 0)
        cds_logf(log, CDS_LOG_WARN, "could not mark the dataset of job %s failed: %s", job->id, err.msg);
}

typedef struct runner {
    worker_run_fn run;
    worker_dead_fn on_dead;
} runner;

/* One per queue_jobtype_id.  A type added at the end of the shared table
 * without a runner here stops the build (the assert below); one added in
 * the middle leaves a hole, which worker_find_runner refuses by name. */
static const runner runners[] = {
    [QUEUE_JOB_DIAG_SLEEP] = {run_diag_sleep, NULL},
    [QUEUE_JOB_DIAG_FAIL] = {run_diag_fail, NULL},
    [QUEUE_JOB_DIAG_NOOP] = {run_diag_noop, NULL},
    [QUEUE_JOB_ETL_SHARD] = {run_etl_shard, etl_dead},
    [QUEUE_JOB_ETL_FINISH] = {run_etl_finish, etl_dead},
    [QUEUE_JOB_PREDICT_PART] = {worker_run_predict_part, worker_predict_dead},
    [QUEUE_JOB_PREDICT_FINISH] = {worker_run_predict_finish, worker_predict_dead},
};
_Static_assert(sizeof runners / sizeof runners[0] == QUEUE_JOB_TYPES,
               "every job type of queue/queue_jobtype.c needs a runner here");

worker_run_fn worker_find_runner(const queue_job *job, worker_dead_fn *on_dead, cds_err *err)
{
    const queue_jobtype *t = NULL;
    int rc = queue_jobtype_check(job->type, job->payload, &t, err);
    const runner *r = t ? &runners[t->id] : NULL;
    if (on_dead)
        *on_dead = r ? r->on_dead : NULL;
    if (rc != 0)
        return NULL;
    if (!r->run)
        return cds_errf(err, "no runner for job type '%s' in this worker (build a worker that has one)", t->name),
               NULL;
    return r->run;
}
