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
    /* Progress through a visit, set by the main thread after each batch and
     * published by the heartbeat with the lease's renewal. */
    int64_t started_ms, rows_done, rows_total;
} mop_slot;

typedef struct worker_results_db worker_results_db;

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
int worker_mop_reap(worker *w, queue_conn *q, cds_err *err);

/* cds_results in the dataset's database (worker_results_db.c), through a
 * connection kept between calls. */
worker_results_db *worker_results_db_new(void);
void worker_results_db_free(worker_results_db *db);
int worker_results_db_insert(worker_results_db *db, const char *dsn, const char *sweep, int model, int epoch,
                             const char *spec_json, const char *metrics_json, cds_err *err);

#endif
