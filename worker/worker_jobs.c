/* Built-in job types.  The diagnostic ones exist for tests, demos and
 * benchmarks: diag.sleep stands in for any job that takes time (it sleeps in
 * short slices so that a stop or a lost lease interrupts it promptly),
 * diag.fail for one that fails, diag.noop for measuring the queue itself.  etl.shard and
 * etl.finish run an unload enqueued by `jobctl enqueue etl`; DDP ranks come later. */
#include <string.h>

#include <jansson.h>

#include "cds_util.h"
#include "etl_queue.h"
#include "worker.h"

static int run_diag_sleep(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err)
{
    json_error_t je;
    json_t *p = json_loads(job->payload, 0, &je);
    json_t *ms = p ? json_object_get(p, "ms") : NULL;
    if (!ms || !json_is_integer(ms) || json_integer_value(ms) < 0 || json_integer_value(ms) > 86400000) {
        json_decref(p);
        cds_errf(err, "diag.sleep payload must be {\"ms\": N} with 0 <= N <= 86400000, got %s", job->payload);
        return WORKER_RUN_PERMANENT;
    }
    int64_t total = json_integer_value(ms);
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

static int run_etl_shard(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err)
{
    (void)result;
    return etl_run_shard_job(worker_run_queue(ctx), job->payload, worker_run_log(ctx), err) == 0 ? 0
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

static const struct {
    const char *type;
    worker_run_fn run;
    worker_dead_fn on_dead;
} runners[] = {
    {"diag.sleep", run_diag_sleep, NULL},
    {"diag.fail", run_diag_fail, NULL},
    {"diag.noop", run_diag_noop, NULL},
    {"etl.shard", run_etl_shard, etl_dead},
    {"etl.finish", run_etl_finish, etl_dead},
};

worker_run_fn worker_find_runner(const char *type, worker_dead_fn *on_dead)
{
    for (size_t i = 0; i < sizeof runners / sizeof runners[0]; i++)
        if (strcmp(runners[i].type, type) == 0) {
            if (on_dead)
                *on_dead = runners[i].on_dead;
            return runners[i].run;
        }
    if (on_dead)
        *on_dead = NULL;
    return NULL;
}

const char *worker_known_types(void) { return "diag.sleep, diag.fail, diag.noop, etl.shard, etl.finish"; }
