/* worker_results: the cds-worker's results sinks besides Redis.
 *
 * results.csv: each evaluated epoch and each test score is one line of
 * DATA_ROOT/sweeps/<S>/results.csv, appended under an exclusive lock since
 * several workers append (the header goes first into a new file).
 *
 * cds_results: each evaluated epoch is also a row in the database its
 * dataset came from.  The row travels in Redis, in its database's outbox,
 * appended by the script that records the result; this file finds the
 * database (the DSN of the dataset's ETL plan, from its record) and drives
 * the outboxes from the main loop (the results tick, once a second and at
 * once after this worker recorded a row); worker_results_db.c writes them.
 * The tick never runs on the heartbeat thread, so leases are renewed
 * whatever a database does. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cds_layout.h"
#include "cds_util.h"
#include "etl_dataset_record.h"
#include "cds_res.h"
#include "worker_results.h"

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
int worker_results_row_dsn(worker *w, const char *dataset, char **dsn, cds_err *err)
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
 * UTC; device is where the split was scored, train_device where the
 * epoch's visits trained; the train_ resources are the epoch's visits'
 * (wall, CPU and bytes summed, the highest peak), the others the split's
 * scoring's, and on a GPU the card's mean utilisation and peak memory
 * (empty elsewhere).  New columns go last, so that readers by
 * position keep working.  docs/sweeps.md documents it. */
#define RESULTS_CSV_HEADER                                                                                     \
    "sweep,model,epoch,split,version,train_rows,train_loss,train_top1,rows,loss,top1,top5,time,device,"        \
    "train_device,train_wall_s,train_cpu_s,train_peak_rss_mb,train_bytes_read,wall_s,cpu_s,peak_rss_mb,"      \
    "bytes_read,train_gpu_util_pct,train_gpu_mem_mb,gpu_util_pct,gpu_mem_mb\n"

const char *worker_results_gpu_cols(const cds_res_use *u, char out[48])
{
    if (u && u->gpu)
        snprintf(out, 48, "%.1f,%.0f", u->gpu_util_pct, u->gpu_mem_mb);
    else
        snprintf(out, 48, ",");
    return out;
}

/* Appends one line to DATA_ROOT/sweeps/<S>/results.csv, with the header when
 * the file is new; under an exclusive lock, as several workers append. */
void worker_results_csv_append(worker *w, const char *sweep, const char *line)
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

void worker_results_recorded(worker *w, const char *sweep, int model, int epoch, const char *dsn)
{
    worker_results_row *r = &w->results_row;
    r->pending = 1;
    snprintf(r->sweep, sizeof r->sweep, "%s", sweep);
    r->model = model;
    r->epoch = epoch;
    queue_outbox_id(dsn, r->id);
}

/* The row of the evaluation this worker just recorded: its outbox is tried
 * first (with the rows before it, in order) unless the database is backing
 * off or another worker is writing that outbox; one WARN when the row stays
 * in Redis because the database failed (now or before). */
static void write_recorded(worker *w, const worker_results_row *r, const worker_results_opts *o)
{
    cds_err err;
    worker_results_pass p = {0};
    if (!w->results_db ||
        WITH_RECONNECT(w, worker_results_drain(w->results_db, w->q, r->id, o, &w->log, &p, &err)) != 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: its cds_results row is kept in Redis, not "
                 "written now: %s (any worker writes it later)", r->sweep, r->model, r->epoch,
                 w->results_db ? err.msg : "out of memory");
    else if (p.deferred)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: not written to cds_results yet: %s; the row is "
                 "kept in Redis (%lld rows wait for that database) and retried with backoff (jobctl results %s "
                 "--check-db)", r->sweep, r->model, r->epoch, p.why, (long long)p.left, r->sweep);
}

void worker_results_tick(worker *w, int64_t *next_ms)
{
    int64_t now = cds_mono_ms();
    if (now < *next_ms && !w->results_row.pending)
        return;
    *next_ms = now + 1000;
    if (!w->results_db)
        w->results_db = worker_results_db_new(0); /* without it, the rows wait for a worker with memory to spare */
    worker_results_opts o;
    worker_results_default_opts(&o, w->cfg->id);
    if (w->results_row.pending) {
        w->results_row.pending = 0;
        write_recorded(w, &w->results_row, &o);
        /* The other outboxes get what is left of the pass, or the next tick. */
        if ((o.pass_ms -= cds_mono_ms() - now) <= 0)
            return;
    }
    cds_err err;
    if (w->results_db && WITH_RECONNECT(w, worker_results_drain_due(w->results_db, w->q, &o, &w->log, &err)) != 0)
        cds_logf(&w->log, CDS_LOG_WARN, "writing the cds_results rows kept in Redis: %s", err.msg);
}
