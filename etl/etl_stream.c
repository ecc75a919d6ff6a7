/* etl_stream: running the tasks of a plan.
 *
 * A task is one (split, shard).  It opens a shard writer in the staging
 * directory, then for each of its COPY queries opens a connection, starts a
 * read-only repeatable-read transaction (through the exported snapshot when
 * one is given), records the transaction's snapshot point, and streams the
 * COPY through the binary decoder (counting the bytes it is fed: what the
 * task read from the database) into the row converter (etl_rows.c), which
 * turns each row's fields into one row of features (float32, uint8, or the
 * 39 Criteo indices) and one int32 class id.  Any problem with a value or a
 * stream stops the task; the writer is then aborted so no partial shard
 * remains.
 *
 * etl_unload_all runs the tasks on at most `jobs` threads, each with its own
 * connections, under one exported snapshot on PostgreSQL. */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cds_layout.h"
#include "cds_util.h"
#include "etl_rows.h"

/* ---- one COPY stream ----------------------------------------------------- */

static int begin_read(PGconn *c, const char *snapshot, char *snap_point, size_t sz, cds_err *err)
{
    PGresult *r = etl_pq_exec(c, "starting the read transaction", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                              0, NULL, PGRES_COMMAND_OK, err);
    if (!r)
        return -1;
    PQclear(r);
    if (snapshot) {
        char *lit = PQescapeLiteral(c, snapshot, strlen(snapshot));
        char sql[256];
        snprintf(sql, sizeof sql, "SET TRANSACTION SNAPSHOT %s", lit ? lit : "''");
        PQfreemem(lit);
        if (!(r = etl_pq_exec(c, "joining the exported snapshot", sql, 0, NULL, PGRES_COMMAND_OK, err)))
            return -1;
        PQclear(r);
    }
    /* Parallel streams over one big table must each read it from the start:
     * a synchronized scan would hand them rows in rotated order. */
    if (!(r = etl_pq_exec(c, "setting up the stream", "SET LOCAL synchronize_seqscans = off", 0, NULL,
                          PGRES_COMMAND_OK, err)))
        return -1;
    PQclear(r);
    if (!(r = etl_pq_exec(c, "reading the snapshot point", "SELECT txid_current_snapshot()::text", 0, NULL,
                          PGRES_TUPLES_OK, err)))
        return -1;
    snprintf(snap_point, sz, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

/* *bytes grows by the COPY data fed to the parser: what the task read. */
static int stream_copy(PGconn *c, const char *query, etl_converter *cv, int64_t *bytes, cds_err *err)
{
    PGresult *r = PQexec(c, query);
    if (PQresultStatus(r) != PGRES_COPY_OUT) {
        cds_errf(err, "starting COPY: %s", PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    PQclear(r);
    etl_copy_parser *parser = etl_copy_parser_new(etl_converter_on_row, cv, err);
    if (!parser)
        return -1;
    int rc = 0;
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(c, &buf, 0);
        if (n > 0) {
            *bytes += n;
            if (rc == 0)
                rc = etl_copy_parser_feed(parser, (const uint8_t *)buf, (size_t)n, err);
            PQfreemem(buf);
            continue;
        }
        if (n == -2 && rc == 0)
            rc = cds_errf(err, "COPY stream broke: %s (the connection was lost; retry the unload)", PQerrorMessage(c));
        break;
    }
    /* Drain the results: the server's verdict on the COPY. */
    while ((r = PQgetResult(c)) != NULL) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0)
            rc = cds_errf(err, "COPY failed: %s", PQresultErrorMessage(r));
        PQclear(r);
    }
    if (rc == 0)
        rc = etl_copy_parser_finish(parser, err);
    etl_copy_parser_free(parser);
    return rc;
}

static int run_query(const etl_plan *p, const char *query, const char *snapshot, etl_converter *cv, json_t *points,
                     int64_t *bytes, cds_err *err)
{
    PGconn *c = etl_plan_conn(p, err);
    if (!c)
        return -1;
    char point[512] = "";
    int rc = begin_read(c, snapshot, point, sizeof point, err);
    if (rc == 0)
        rc = stream_copy(c, query, cv, bytes, err);
    if (rc == 0)
        json_array_append_new(points, json_string(point));
    if (rc == 0)
        rc = etl_converter_flush(cv, err);
    PGresult *r = PQexec(c, rc == 0 ? "COMMIT" : "ROLLBACK");
    PQclear(r);
    PQfinish(c);
    return rc;
}

static void iso_now(char *out, size_t n)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The manifest fields a shard gets besides the files. */
static json_t *manifest_extra(const etl_plan *p, const etl_task *t, const char *snapshot, json_t *points,
                              int32_t max_label)
{
    json_t *m = json_object();
    json_object_set_new(m, "max_label", json_integer(max_label));
    json_object_set_new(m, "dataset", json_string(p->dataset));
    json_object_set_new(m, "split", json_string(t->split));
    if (p->num_classes > 0)
        json_object_set_new(m, "num_classes", json_integer(p->num_classes));
    if (p->has_classes)
        json_object_set(m, "classes", json_object_get(p->json, "classes"));
    json_object_set(m, "layout", json_object_get(p->json, "layout"));
    if (p->layout == ETL_LAYOUT_CRITEO)
        json_object_set_new(m, "transform", json_pack("{s:s, s:O}", "name", "criteo", "params",
                                                      json_object_get(p->json, "criteo")));
    if (p->layout == ETL_LAYOUT_MADLIB)
        json_object_set(m, "madlib", json_object_get(p->json, "madlib"));
    json_t *src = json_object();
    json_object_set(src, "query", json_object_get(p->json, "source_query"));
    json_t *qs = json_array();
    for (size_t i = 0; i < t->n_queries; i++)
        json_array_append_new(qs, json_string(t->queries[i]));
    json_object_set_new(src, "copy", qs);
    json_object_set(src, "server", json_object_get(p->json, "server"));
    json_object_set_new(src, "snapshot", json_pack("{s:s?, s:O}", "exported", snapshot, "points", points));
    json_object_set(src, "spec", json_object_get(p->json, "spec"));
    json_object_set_new(m, "source", src);
    char when[32];
    iso_now(when, sizeof when);
    json_object_set_new(m, "unloaded_at", json_string(when));
    json_object_set(m, "unload", json_object_get(p->json, "token"));
    return m;
}

int etl_unload_task(const etl_plan *p, size_t i, const char *snapshot, etl_task_stats *st, cds_err *err)
{
    return etl_unload_task_keyed(p, i, snapshot, NULL, st, err);
}

int etl_unload_task_keyed(const etl_plan *p, size_t i, const char *snapshot, etl_keys *keys, etl_task_stats *st,
                          cds_err *err)
{
    if (i >= p->n_tasks)
        return cds_errf(err, "no task %zu in the plan (it has %zu)", i, p->n_tasks);
    if ((p->label_kind == ETL_LABEL_ROWID) != (keys != NULL))
        return cds_errf(err, "task %zu: a prediction's plan needs somewhere to keep row ids, and only it", i);
    const etl_task *t = &p->tasks[i];
    char split_dir[4096];
    if (cds_layout_split_dir(split_dir, sizeof split_dir, p->staging, t->split, err) != 0)
        return -1;
    etl_converter cv = {.p = p, .task = t, .max_label = -1, .keys = keys};
    cv.xrow = (size_t)p->row_elems * etl_dtype_size(p->x_dtype);
    cv.w = etl_shard_begin(split_dir, t->shard, p->x_dtype, p->x_shape, p->x_ndim, err);
    int rc = cv.w ? 0 : -1;
    if (rc == 0 && !(cv.wq = etl_writeq_new(cv.w, cv.xrow, ETL_BATCH_ROWS, err)))
        rc = -1;
    if (cv.wq)
        etl_writeq_batch(cv.wq, &cv.x, &cv.y);
    json_t *points = json_array();
    int64_t bytes = 0;
    for (size_t q = 0; rc == 0 && q < t->n_queries; q++)
        rc = run_query(p, t->queries[q], snapshot, &cv, points, &bytes, err);
    if (cv.wq) {
        cds_err werr;
        if (etl_writeq_finish(cv.wq, &werr) != 0 && rc == 0) {
            *err = werr;
            rc = -1;
        }
        etl_writeq_free(cv.wq); /* the writer thread is gone after this */
    }
    if (rc == 0) {
        json_t *extra = manifest_extra(p, t, snapshot, points, cv.max_label);
        rc = etl_shard_commit(cv.w, extra, 1, err);
        json_decref(extra);
    } else if (cv.w) {
        etl_shard_abort(cv.w);
    }
    json_decref(points);
    if (rc != 0)
        cds_err_wrap(err, "unloading %s shard %d of dataset %s", t->split, t->shard, p->dataset);
    if (st)
        *st = (etl_task_stats){.rows = cv.rows, .bytes_read = bytes};
    return rc;
}

/* ---- all tasks, in parallel ---------------------------------------------- */

typedef struct pool {
    const etl_plan *p;
    const cds_log *log;
    const char *snapshot;
    atomic_size_t next;
    atomic_int failed;
    pthread_mutex_t mu;
    cds_err err;
    int64_t rows;
} pool;

static void *pool_worker(void *arg)
{
    pool *pl = arg;
    for (;;) {
        size_t i = atomic_fetch_add(&pl->next, 1);
        if (i >= pl->p->n_tasks || atomic_load(&pl->failed))
            return NULL;
        cds_err err;
        etl_task_stats st = {0};
        int64_t t0 = cds_mono_ms();
        if (etl_unload_task(pl->p, i, pl->snapshot, &st, &err) != 0) {
            pthread_mutex_lock(&pl->mu);
            if (!atomic_exchange(&pl->failed, 1))
                pl->err = err;
            pthread_mutex_unlock(&pl->mu);
            return NULL;
        }
        pthread_mutex_lock(&pl->mu);
        pl->rows += st.rows;
        pthread_mutex_unlock(&pl->mu);
        if (pl->log)
            cds_logf(pl->log, CDS_LOG_INFO, "%s shard %d: %lld rows in %.2f s", pl->p->tasks[i].split,
                     pl->p->tasks[i].shard, (long long)st.rows, (cds_mono_ms() - t0) / 1000.0);
    }
}

/* On PostgreSQL: a transaction that exports its snapshot and stays open
 * while the streams read through it. */
static PGconn *export_snapshot(const etl_plan *p, char *id, size_t sz, cds_err *err)
{
    PGconn *c = etl_plan_conn(p, err);
    if (!c)
        return NULL;
    PGresult *r = etl_pq_exec(c, "starting the snapshot transaction", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                              0, NULL, PGRES_COMMAND_OK, err);
    if (r) {
        PQclear(r);
        r = etl_pq_exec(c, "exporting the snapshot", "SELECT pg_export_snapshot()", 0, NULL, PGRES_TUPLES_OK, err);
    }
    if (!r) {
        PQfinish(c);
        return NULL;
    }
    snprintf(id, sz, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return c;
}

int etl_unload_all(const etl_plan *p, const cds_log *log, char version[65], cds_err *err)
{
    char snap[128] = "";
    PGconn *holder = NULL;
    /* One stream is one transaction, already a consistent cut: only several
     * streams need a snapshot to share. */
    size_t streams = 0;
    for (size_t i = 0; i < p->n_tasks; i++)
        streams += p->tasks[i].n_queries;
    if (!p->greenplum && streams > 1 && !(holder = export_snapshot(p, snap, sizeof snap, err)))
        return -1;
    /* A writer hitting RLIMIT_FSIZE must see EFBIG, not die of SIGXFSZ. */
    signal(SIGXFSZ, SIG_IGN);
    pool pl = {.p = p, .log = log, .snapshot = snap[0] ? snap : NULL};
    pthread_mutex_init(&pl.mu, NULL);
    int jobs = p->jobs > 0 ? p->jobs : 4;
    if ((size_t)jobs > p->n_tasks)
        jobs = (int)p->n_tasks;
    pthread_t th[256];
    for (int i = 0; i < jobs; i++)
        pthread_create(&th[i], NULL, pool_worker, &pl);
    for (int i = 0; i < jobs; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&pl.mu);
    if (holder) {
        PQclear(PQexec(holder, "COMMIT"));
        PQfinish(holder);
    }
    if (atomic_load(&pl.failed)) {
        etl_dataset_discard(p);
        *err = pl.err;
        return -1;
    }
    if (etl_dataset_finish(p, version, err) != 0) {
        etl_dataset_discard(p);
        return -1;
    }
    if (log)
        cds_logf(log, CDS_LOG_INFO, "dataset %s version %.16s: %lld rows in %zu shards", p->dataset, version,
                 (long long)pl.rows, p->n_tasks);
    return 0;
}
