/* worker_results: where an evaluated epoch's results go besides Redis.
 * worker_results_db.c writes cds_results rows into the dataset's database
 * from the outboxes in Redis (usable without a running worker, as the tests
 * do); worker_results.c is the cds-worker's side: results.csv, the DSN of a
 * row, and the main loop's results tick.  Not a public interface. */
#ifndef CDS_WORKER_RESULTS_H
#define CDS_WORKER_RESULTS_H

#ifndef CDS_WORKER_INTERNAL
#error "worker_results.h is private to worker/: include worker.h (a white-box test under tests/ adds c_args : worker_private_args)"
#endif

#include "worker_int.h"

/* cds_results in the dataset's database (worker_results_db.c), through a
 * connection kept between calls.  Rows wait in the outbox of their database
 * in Redis (queue_outbox.c) until a worker has written them. */
/* Every database try (connect, create the table, insert) of the writer
 * ends within bound_ms (<= 0: WORKER_RESULTS_BOUND_MS). */
#define WORKER_RESULTS_BOUND_MS 4000
worker_results_db *worker_results_db_new(int64_t bound_ms);
void worker_results_db_free(worker_results_db *db);
/* The database refused the row itself (its data: SQLSTATE class 22 or 23):
 * it would refuse it again. */
#define WORKER_RESULTS_REFUSED 2
/* Writes one row, recorded at recorded_ms (wall clock; <= 0: now): 0 (when
 * its (sweep, model, epoch) was there already, its other columns take the
 * new values), -1 (the database failed: try again later) or
 * WORKER_RESULTS_REFUSED, with err saying why. */
int worker_results_db_insert(worker_results_db *db, const char *dsn, const char *sweep, int model, int epoch,
                             int64_t recorded_ms, const char *spec_json, const char *metrics_json, cds_err *err);

typedef struct worker_results_opts {
    const char *worker;  /* claims on outboxes are taken in this name */
    int64_t pass_ms;     /* a pass takes no new row after this */
    int64_t base_ms, cap_ms; /* backoff of the n-th failure in a row: min(cap, base*2^(n-1)) * U[0.5, 1] */
    int max_refusals;    /* a row the database refuses this often is set aside */
    int64_t claim_ms;    /* an outbox claim lapses after this (a worker that died) */
} worker_results_opts;
/* pass 1 s, backoff 1 s doubling to 60 s, 3 refusals, claim 30 s. */
void worker_results_default_opts(worker_results_opts *o, const char *worker);

/* What one pass over an outbox did. */
typedef struct worker_results_pass {
    int written, set_aside;
    int failed_now;   /* this pass's try of the database failed */
    int deferred;     /* rows wait because the database has been failing (now or before) */
    int64_t left;     /* rows still waiting in the outbox */
    int64_t failures; /* failed tries in a row */
    char why[CDS_ERR_MAX]; /* the last error */
} worker_results_pass;
/* Writes the rows of the outbox of DSN id `id` in order, as long as its
 * claim is free and its next try has come, for at most about pass_ms + the
 * writer's bound.  Logs a set-aside row (WARN) and a backlog written after a
 * failure (INFO).  -1 only when Redis failed. */
int worker_results_drain(worker_results_db *db, queue_conn *q, const char *id, const worker_results_opts *o,
                         const cds_log *log, worker_results_pass *p, cds_err *err);
/* worker_results_drain over the outboxes whose next try has come; logs one
 * WARN when it finds a database failing after it worked. */
int worker_results_drain_due(worker_results_db *db, queue_conn *q, const worker_results_opts *o, const cds_log *log,
                             cds_err *err);
/* The DSN of a dataset's ETL plan as its outbox names it, malloc'd:
 * etl_dsn_redacted's (Redis holds no passwords; libpq finds it in
 * PGPASSWORD or ~/.pgpass).  NULL for NULL and for a DSN libpq cannot
 * parse. */
char *worker_results_dsn(const char *dsn);

/* ---- in cds-worker (worker_results.c) ---------------------------------------- */

/* This worker recorded model's epoch with a row for the database dsn: the
 * next worker_results_tick runs at once and writes that outbox first. */
void worker_results_recorded(worker *w, const char *sweep, int model, int epoch, const char *dsn);
/* The main loop's share: once a second (*next_ms, monotonic), and at once
 * after worker_results_recorded, worker_results_drain_due with the default
 * options; logs one WARN when the recorded row stays in Redis because its
 * database failed. */
void worker_results_tick(worker *w, int64_t *next_ms);
/* Appends one line to DATA_ROOT/sweeps/<S>/results.csv (the header first
 * when the file is new), under a lock; a failure is logged, not returned. */
void worker_results_csv_append(worker *w, const char *sweep, const char *line);
/* A resource record's two GPU columns of results.csv ("util,mem", or ","
 * when it has none) into out; returns out. */
struct cds_res_use;
const char *worker_results_gpu_cols(const struct cds_res_use *u, char out[48]);
/* The database an evaluation's cds_results row goes to, from the dataset
 * record (see worker_results.c for the three outcomes). */
int worker_results_row_dsn(worker *w, const char *dataset, char **dsn, cds_err *err);

#endif
