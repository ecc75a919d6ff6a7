/* worker_int: the cds-worker's internals shared by worker.c (the claim loop,
 * heartbeat and signal threads) and worker_mop.c (MOP sub-epochs).  Not a
 * public interface. */
#ifndef CDS_WORKER_INT_H
#define CDS_WORKER_INT_H

#include <pthread.h>
#include <signal.h>

#include "queue_mop.h"
#include "worker.h"

typedef struct held {
    queue_job job;
    atomic_int lost;
    int finished;   /* the runner returned: a vanished lease is no news */
    int to_ack;     /* ran to completion; its ack is pending */
    char *result;
    int64_t ran_ms;
} held;

/* The MOP lease in hand, renewed by the heartbeat thread. */
typedef struct mop_slot {
    int active;
    /* The main thread is ending the lease (commit, release, fail, record):
     * the heartbeat neither renews it nor takes its end for a loss, so a
     * lease that a commit ended is never reported lost. */
    int finishing;
    char sweep[QUEUE_SWEEP_ID_MAX];
    queue_mop_lease lease;
    atomic_int lost;
    /* Progress through a visit, stored by the main thread after each batch
     * (atomics, so a training step takes no lock) and published by the
     * heartbeat with the lease's renewal. */
    int64_t started_ms;
    atomic_llong rows_done, rows_total;
    int progress_shown; /* the heartbeat published this visit's progress once */
} mop_slot;

typedef struct worker_results_db worker_results_db;

/* The evaluation this worker recorded last with a cds_results row
 * (worker_mop.c): the next results tick runs at once and tries its outbox
 * first (main thread only). */
typedef struct worker_results_row {
    int pending;
    char sweep[QUEUE_SWEEP_ID_MAX];
    int model, epoch;
    char id[QUEUE_OUTBOX_ID_LEN]; /* its database's outbox */
} worker_results_row;

struct worker {
    const worker_cfg *cfg;
    cds_log log;
    queue_conn *q;
    atomic_int stop; /* 0 run, 1 drain (finish the job in hand), 2 stop now */
    atomic_int done; /* tells the helper threads to exit */
    pthread_mutex_t mu;
    held *held;
    size_t n_held;
    char current[64];  /* the job id, or "sweep/model" for a MOP visit */
    sigset_t sigs;
    mop_slot mop;
    worker_results_db *results_db; /* made on first use by the main thread */
    worker_results_row results_row;
    char results_bad_plan[256];    /* the dataset whose unreadable ETL plan was logged (once) */
    /* What was done, for the last log line (main thread only): jobs acked
     * and failed, visits committed, evaluations and test scores recorded;
     * released work and refused acks or commits are not counted. */
    int64_t jobs_done, jobs_failed, visits_committed, evals_recorded, tests_recorded;
};

struct worker_run_ctx {
    worker *w;
    held *h;
};

int worker_reconnect_with_backoff(worker *w, queue_conn *q, const char *who, int (*give_up)(worker *));
int worker_main_gives_up(worker *w);
void worker_set_current(worker *w, const char *what);

/* Runs op until it succeeds, fails for a reason other than the connection, or
 * the worker must stop now.  Returns op's result. */
#define WITH_RECONNECT(w, call)                                                                \
    ({                                                                                         \
        int rc_;                                                                               \
        while ((rc_ = (call)) != 0 && queue_conn_broken((w)->q) &&                             \
               worker_reconnect_with_backoff((w), (w)->q, "worker", worker_main_gives_up) == 0) \
            ;                                                                                  \
        rc_;                                                                                   \
    })

/* MOP (worker_mop.c): one sub-epoch on the worker's shard if some sweep has a
 * model for it: 1 when a visit ran (committed or not), 0 when there was
 * nothing to do, -1 on a Redis error. */
int worker_mop_step(worker *w);
/* Heartbeat thread: renews the MOP lease in hand and reaps expired ones. */
int worker_mop_beat(worker *w, queue_conn *q, cds_err *err);
/* Whether the visit in hand has progress that was never published: the
 * heartbeat then beats at once rather than at its next period, so a visit
 * shows its progress from its first batch. */
int worker_mop_progress_waiting(worker *w);
int worker_mop_reap(worker *w, queue_conn *q, cds_err *err);

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
/* This worker recorded model's epoch with a row for the database dsn: the
 * next worker_results_tick runs at once and writes that outbox first. */
void worker_results_recorded(worker *w, const char *sweep, int model, int epoch, const char *dsn);
/* The main loop's share: once a second (*next_ms, monotonic), and at once
 * after worker_results_recorded, worker_results_drain_due with the default
 * options; logs one WARN when the recorded row stays in Redis because its
 * database failed. */
void worker_results_tick(worker *w, int64_t *next_ms);

#endif
