/* etl_queue: see etl_queue.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_layout.h"
#include "cds_res.h"
#include "etl_dataset_record.h"
#include "etl_plan_int.h"
#include "etl_queue.h"
#include "etl_unload.h"

int etl_enqueue(queue_conn *q, const json_t *spec_json, const char *queue_name, int64_t priority, etl_enqueued *out,
                const cds_log *log, cds_err *err)
{
    memset(out, 0, sizeof *out);
    etl_spec spec;
    if (etl_spec_from_json(spec_json, &spec, err) != 0)
        return -1;
    etl_plan *p = etl_plan_make(&spec, log, err);
    etl_spec_free(&spec);
    if (!p)
        return -1;
    const char *token = json_string_value(json_object_get(p->json, "token"));
    snprintf(out->dataset, sizeof out->dataset, "%s", p->dataset);
    int rc = etl_dataset_record_loading(q, p->dataset, token, p->json, err);

    size_t n = p->n_tasks;
    queue_job_spec *jobs = calloc(n, sizeof *jobs);
    queue_enqueued *done = calloc(n, sizeof *done);
    char **payloads = calloc(n + 1, sizeof *payloads);
    char **ids = calloc(n, sizeof *ids);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        json_t *pl = json_pack("{s:s, s:s, s:i}", "dataset", p->dataset, "token", token, "task", (int)i);
        payloads[i] = json_dumps(pl, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(pl);
        queue_job_spec_init(&jobs[i]);
        jobs[i].type = "etl.shard";
        jobs[i].queue = queue_name;
        jobs[i].payload = payloads[i];
        jobs[i].priority = priority;
        /* A stream cut by the server is worth retrying soon. */
        jobs[i].backoff_base_ms = 2000;
        jobs[i].backoff_cap_ms = 60000;
    }
    if (rc == 0)
        rc = queue_enqueue(q, jobs, n, done, err);
    for (size_t i = 0; rc == 0 && i < n; i++)
        ids[i] = done[i].id;
    if (rc == 0) {
        json_t *pl = json_pack("{s:s, s:s}", "dataset", p->dataset, "token", token);
        payloads[n] = json_dumps(pl, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(pl);
        queue_job_spec fin;
        queue_job_spec_init(&fin);
        fin.type = "etl.finish";
        fin.queue = queue_name;
        fin.payload = payloads[n];
        fin.priority = priority;
        fin.after = (const char *const *)ids;
        fin.n_after = n;
        queue_enqueued f;
        rc = queue_enqueue(q, &fin, 1, &f, err);
        if (rc == 0) {
            snprintf(out->finish_id, sizeof out->finish_id, "%s", f.id);
            out->n_shard_jobs = n;
            etl_dataset_record_finish_job(q, p->dataset, f.id, err);
        }
    }
    for (size_t i = 0; i <= n; i++)
        free(payloads[i]);
    free(payloads);
    free(ids);
    free(jobs);
    free(done);
    etl_plan_free(p);
    return rc;
}

/* Reads a job payload and the plan it refers to. */
static etl_plan *plan_of(queue_conn *q, const char *payload, json_t **pl, cds_err *err)
{
    json_error_t je;
    *pl = json_loads(payload, 0, &je);
    const char *dataset = *pl ? json_string_value(json_object_get(*pl, "dataset")) : NULL;
    const char *token = *pl ? json_string_value(json_object_get(*pl, "token")) : NULL;
    if (!dataset || !token)
        return cds_errf(err, "ETL job payload must hold dataset and token, got %s", payload), NULL;
    etl_dataset_record r;
    if (etl_dataset_record_read(q, dataset, &r, err) != 0)
        return cds_err_wrap(err, "dataset record of %s", dataset), NULL;
    etl_plan *p = NULL;
    if (strcmp(r.token, token) != 0) {
        cds_errf(err, "dataset %s was enqueued again (unload %s is no longer current); this job is obsolete", dataset,
                 token);
    } else {
        json_t *plan = json_loads(r.plan ?: "", 0, &je);
        /* The plan's DSN has no password: libpq finds it in the worker's
         * PGPASSWORD or ~/.pgpass. */
        p = plan ? etl_plan_from_json(plan, NULL, err) : NULL;
        if (!plan)
            cds_errf(err, "dataset record of %s holds no readable plan: %s", dataset, je.text);
        json_decref(plan);
    }
    etl_dataset_record_free(&r);
    return p;
}

/* What an etl.* job works on: its payload and the plan of its dataset. */
typedef struct job_ctx {
    json_t *payload;
    etl_plan *plan;
} job_ctx;

static int job_open(queue_conn *q, const char *payload, job_ctx *j, cds_err *err)
{
    j->plan = plan_of(q, payload, &j->payload, err);
    if (!j->plan) {
        json_decref(j->payload);
        return -1;
    }
    return 0;
}

static void job_close(job_ctx *j)
{
    etl_plan_free(j->plan);
    json_decref(j->payload);
}

/* The job's result: the shard, its rows and what it cost; NULL when
 * memory ran out (the record has them all the same). */
static char *shard_result(const etl_plan *p, size_t task, int64_t rows, json_t *res)
{
    json_t *o = json_pack("{s:s, s:s, s:i, s:I, s:O?}", "dataset", p->dataset, "split", etl_plan_task_split(p, task),
                          "shard", etl_plan_task_shard(p, task), "rows", (json_int_t)rows, "res", res);
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    return text;
}

int etl_run_shard_job(queue_conn *q, const char *payload, const cds_log *log, char **result, cds_err *err)
{
    *result = NULL;
    job_ctx j;
    if (job_open(q, payload, &j, err) != 0)
        return -1;
    etl_plan *p = j.plan;
    json_t *pl = j.payload;
    size_t task = (size_t)json_integer_value(json_object_get(pl, "task"));
    etl_task_stats st = {0};
    /* The unload alone: reading the plan from Redis is not the shard's cost. */
    cds_res_mark mark;
    cds_res_start(&mark, NULL);
    int rc = etl_unload_task(p, task, NULL, &st, err);
    cds_res_use use;
    cds_res_stop(&mark, st.bytes_read, &use);
    if (rc == 0) {
        json_t *res = cds_res_json(&use);
        rc = etl_dataset_record_shard_rows(q, p->dataset, etl_plan_task_split(p, task), etl_plan_task_shard(p, task),
                                           st.rows, res, err);
        if (rc == 0)
            *result = shard_result(p, task, st.rows, res);
        json_decref(res);
        if (log)
            cds_logf(log, CDS_LOG_INFO, "dataset %s: %s shard %d unloaded, %lld rows, %.1f MB read in %.2f s",
                     p->dataset, etl_plan_task_split(p, task), etl_plan_task_shard(p, task), (long long)st.rows,
                     (double)st.bytes_read / 1e6, use.wall_s);
    }
    job_close(&j);
    return rc;
}

int etl_run_finish_job(queue_conn *q, const char *payload, const cds_log *log, cds_err *err)
{
    job_ctx j;
    if (job_open(q, payload, &j, err) != 0)
        return -1;
    etl_plan *p = j.plan;
    char version[65];
    int rc = etl_dataset_finish(p, version, err);
    if (rc == 0) {
        char path[4200];
        json_error_t je;
        json_t *d = cds_layout_dataset_json(path, sizeof path, p->dataset_dir, err) == 0
                        ? json_load_file(path, 0, &je)
                        : NULL;
        rc = etl_dataset_record_ready(q, p->dataset, version, json_object_get(d, "splits"), err);
        json_decref(d);
        if (log)
            cds_logf(log, CDS_LOG_INFO, "dataset %s ready, version %.16s", p->dataset, version);
    }
    job_close(&j);
    return rc;
}

int etl_mark_failed(queue_conn *q, const char *payload, const char *reason, cds_err *err)
{
    json_t *pl = json_loads(payload, 0, NULL);
    const char *dataset = pl ? json_string_value(json_object_get(pl, "dataset")) : NULL;
    const char *token = pl ? json_string_value(json_object_get(pl, "token")) : NULL;
    int rc = dataset && token ? etl_dataset_record_failed(q, dataset, token, reason, err) : 0;
    json_decref(pl);
    return rc;
}
