/* worker_predict: the runners of a prediction's jobs (jobctl enqueue
 * predict; etl/etl_predict.h is the plan and the tables).
 *
 * predict.part: the part's rows are read through the dataset's casts into a
 * shard in a scratch directory of this host ($TMPDIR, else /tmp), the
 * model's checkpoint is loaded on this worker's device, and the shard is
 * scored by nn_trainer_predict_shard, the pass that scores a sweep's test
 * split, batch by batch: each batch's rows ranked (nn_predict.h) go
 * straight into the part's staging table, so nothing but the ids is held
 * for the whole part.  The scratch directory is removed on every path.  A
 * lost lease or a stop aborts the COPY, and its transaction with it: a
 * part's staging table is an attempt's, whole, or nothing.  The result
 * records the part's rows and what it cost (cds_res: wall, CPU, peak RSS,
 * the COPY bytes read from the database; on a GPU its utilisation and
 * memory).
 *
 * predict.finish: the output table from the staging tables, in one
 * transaction; its refusals (the output appeared meanwhile, a staging table
 * gone) are permanent.
 *
 * A job of either kind that goes dead records the prediction failed
 * (<prefix>predict:<token>, a hash: state, error, job) and drops its
 * staging tables; a part checks that record under the prediction's
 * advisory lock before it commits (etl_predict_stage_commit), so a part
 * that ends after the failure leaves no table either. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cds_res.h"
#include "cds_util.h"
#include "etl_predict.h"
#include "nn_predict.h"
#include "nn_train.h"
#include "worker_int.h"
#include "worker_predict.h"

static json_t *payload_plan(const queue_job *job)
{
    json_t *p = json_loads(job->payload, 0, NULL);
    json_t *plan = json_incref(json_object_get(p, "plan")); /* checked: queue_jobtype.c */
    json_decref(p);
    return plan;
}

/* One part's scoring: the ranks of each batch into the staging table. */
typedef struct part_run {
    worker_run_ctx *ctx;
    etl_predict_stage *stage;
    int k, K;
    int32_t *top;
    double *top_prob, *probs;
    int cap; /* rows the buffers hold */
} part_run;

static int grow(part_run *r, int n, cds_err *err)
{
    if (n <= r->cap)
        return 0;
    free(r->top);
    free(r->top_prob);
    free(r->probs);
    r->top = malloc((size_t)n * (size_t)r->k * sizeof *r->top);
    r->top_prob = malloc((size_t)n * (size_t)r->k * sizeof *r->top_prob);
    r->probs = r->K ? malloc((size_t)n * (size_t)r->K * sizeof *r->probs) : NULL;
    r->cap = n;
    if (!r->top || !r->top_prob || (r->K && !r->probs)) {
        r->cap = 0;
        return cds_err_nomem(err, "out of memory ranking a batch of %d rows", n);
    }
    return 0;
}

static int on_logits(void *ctx, const float *logits, int n, int K, cds_err *err)
{
    part_run *r = ctx;
    if (worker_run_should_abort(r->ctx))
        return cds_errf(err, "stopped: the job's lease was lost or the worker was told to stop");
    if (r->K && K != r->K)
        return cds_errf(err, "the model gives %d classes where the plan has %d", K, r->K);
    if (grow(r, n, err) != 0)
        return -1;
    for (int i = 0; i < n; i++) {
        const float *row = logits + (size_t)i * (size_t)K;
        nn_predict_rank(row, K, r->k, r->top + (size_t)i * (size_t)r->k, r->top_prob + (size_t)i * (size_t)r->k);
        if (r->K)
            nn_predict_probs(row, K, r->probs + (size_t)i * (size_t)K);
    }
    return etl_predict_stage_rows(r->stage, n, r->top, r->top_prob, r->probs, err);
}

/* The record <prefix>predict:<token> says "failed" once a job of the
 * prediction died (worker_predict_dead). */
static void record_name(const json_t *plan, char *out, size_t n)
{
    snprintf(out, n, "predict:%s",
             json_string_value(json_object_get(json_object_get(plan, "predict"), "token")) ?: "");
}

typedef struct alive_ctx {
    worker *w;
    const json_t *plan;
} alive_ctx;

static int prediction_alive(void *ctx, cds_err *err)
{
    alive_ctx *a = ctx;
    char name[64];
    record_name(a->plan, name, sizeof name);
    json_t *rec = NULL;
    int rc = queue_record_get(a->w->q, name, &rec, err);
    if (rc == QUEUE_NOT_FOUND)
        return 1;
    if (rc != 0)
        return -1;
    const char *state = json_string_value(json_object_get(rec, "state"));
    int failed = state && strcmp(state, "failed") == 0;
    json_decref(rec);
    return !failed;
}

/* Scores the shard with the plan's checkpoint into the part's staging table. */
static int score_part(worker_run_ctx *ctx, const json_t *plan, const char *shard, const etl_keys *keys,
                      nn_pass_stats *st, int *permanent, cds_err *err)
{
    const json_t *pr = json_object_get(plan, "predict");
    const char *ckpt = json_string_value(json_object_get(pr, "ckpt"));
    int classes = (int)json_integer_value(json_object_get(pr, "classes"));
    nn_trainer *t = nn_trainer_load_at(ckpt ? ckpt : "", 0, ctx->w->place, err);
    if (!t)
        return cds_err_wrap(err, "the model's checkpoint (it must stay until the prediction is done)");
    part_run r = {.ctx = ctx};
    etl_predict_shape(plan, &r.k, &r.K);
    int rc = 0;
    if (nn_model_classes(nn_trainer_model(t)) != classes)
        rc = cds_errf(err, "checkpoint %s has %d classes where the plan has %d: it changed since the prediction was "
                      "enqueued; enqueue it again", ckpt, nn_model_classes(nn_trainer_model(t)), classes);
    if (rc == 0 && !(r.stage = etl_predict_stage_begin(plan, keys, err)))
        rc = -1;
    if (rc == 0)
        rc = nn_trainer_predict_shard(t, shard, on_logits, &r, st, err);
    if (rc == 0) {
        alive_ctx a = {ctx->w, plan};
        rc = etl_predict_stage_commit(r.stage, prediction_alive, &a, permanent, err);
        r.stage = NULL;
    }
    etl_predict_stage_abort(r.stage);
    free(r.top);
    free(r.top_prob);
    free(r.probs);
    nn_trainer_free(t);
    return rc;
}

static int run_part(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err)
{
    worker *w = ctx->w;
    json_t *plan = payload_plan(job);
    const json_t *pr = json_object_get(plan, "predict");
    int part = (int)json_integer_value(
        json_object_get(json_array_get(json_object_get(plan, "tasks"), 0), "shard"));
    const char *tmp = getenv("TMPDIR");
    char scratch[4096];
    /* mkdtemp's template: the six X are replaced by the call. */
    snprintf(scratch, sizeof scratch, "%s/cds-predict-%s-%d.XXXXXX", tmp && *tmp ? tmp : "/tmp",
             json_string_value(json_object_get(pr, "token")) ?: "", part);
    cds_res_mark mark;
    cds_res_start(&mark, w->nvml);
    etl_keys keys = {0};
    nn_pass_stats st = {0};
    etl_task_stats read = {0};
    int permanent = 0;
    char shard[4096];
    int rc = mkdtemp(scratch) ? 0 : cds_errf(err, "cannot make a scratch directory %s: %s (set TMPDIR to a "
                                                 "writable directory with room for a part's rows)",
                                              scratch, strerror(errno));
    int made = rc == 0;
    if (rc == 0)
        rc = etl_predict_read(plan, scratch, shard, sizeof shard, &keys, &read, err);
    if (rc == 0 && worker_run_should_abort(ctx))
        rc = WORKER_RUN_ABORTED;
    if (rc == 0)
        rc = score_part(ctx, plan, shard, &keys, &st, &permanent, err);
    if (made)
        cds_rmtree(scratch);
    etl_keys_free(&keys);
    if (rc != 0) {
        json_decref(plan);
        return worker_run_should_abort(ctx) ? WORKER_RUN_ABORTED : permanent ? WORKER_RUN_PERMANENT : WORKER_RUN_FAILED;
    }
    cds_res_use use;
    cds_res_stop(&mark, read.bytes_read, &use);
    json_t *res = json_pack("{s:i, s:I, s:s, s:o*}", "part", part, "rows", (json_int_t)read.rows, "device", w->device,
                            "res", cds_res_json(&use));
    *result = res ? json_dumps(res, JSON_COMPACT) : NULL;
    json_decref(res);
    cds_logf(&w->log, CDS_LOG_INFO, "prediction %s part %d: %lld rows scored on %s into its staging table",
             json_string_value(json_object_get(pr, "token")) ?: "", part, (long long)read.rows, w->device);
    json_decref(plan);
    return 0;
}

static int run_finish(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err)
{
    json_t *plan = payload_plan(job);
    const json_t *pr = json_object_get(plan, "predict");
    int64_t rows = 0;
    int permanent = 0;
    int rc = etl_predict_finish(plan, &rows, &permanent, err);
    if (rc == 0) {
        json_t *res = json_pack("{s:s, s:I}", "table", json_string_value(json_object_get(pr, "out_display")) ?: "",
                                "rows", (json_int_t)rows);
        *result = res ? json_dumps(res, JSON_COMPACT) : NULL;
        json_decref(res);
        cds_logf(&ctx->w->log, CDS_LOG_INFO, "prediction %s: table %s made, %lld rows",
                 json_string_value(json_object_get(pr, "token")) ?: "",
                 json_string_value(json_object_get(pr, "out_display")) ?: "", (long long)rows);
    }
    json_decref(plan);
    return rc == 0 ? 0 : permanent ? WORKER_RUN_PERMANENT : WORKER_RUN_FAILED;
}

int worker_run_predict_part(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err)
{
    return run_part(ctx, job, result, err);
}

int worker_run_predict_finish(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err)
{
    return run_finish(ctx, job, result, err);
}

void worker_predict_dead(queue_conn *q, const queue_job *job, const char *reason, const cds_log *log)
{
    json_t *plan = payload_plan(job);
    if (!plan)
        return;
    char name[64];
    record_name(plan, name, sizeof name);
    json_t *rec = json_pack("{s:s, s:s, s:s}", "state", "failed", "error", reason ? reason : "", "job", job->id);
    cds_err err;
    /* Recorded first: a part about to commit then sees it under the lock
     * that the discard below waits for. */
    if (rec && queue_record_set(q, name, rec, &err) != 0)
        cds_logf(log, CDS_LOG_WARN, "job %s: the prediction's failure was not recorded: %s", job->id, err.msg);
    json_decref(rec);
    if (etl_predict_discard(plan, &err) != 0)
        cds_logf(log, CDS_LOG_WARN, "job %s: the prediction's staging tables were not dropped: %s", job->id, err.msg);
    else
        cds_logf(log, CDS_LOG_INFO, "job %s: the prediction failed for good; its staging tables were dropped",
                 job->id);
    json_decref(plan);
}
