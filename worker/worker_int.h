/* worker_int: the worker's context, what every file of worker/ shares: the
 * state of one cds-worker (struct worker) and the few services on it that
 * runners use (worker_ctx.c): the connection with its reconnection, the job
 * in hand for the logs and the signal thread, the MOP slot the heartbeat
 * renews.  Calls flow one way: worker.c (the loop and its threads) calls the
 * runners (worker_jobs.c, worker_mop*.c) and the results sinks; they call
 * worker_ctx.c and the modules below worker/, never worker.c.  Not a public
 * interface. */
#ifndef CDS_WORKER_INT_H
#define CDS_WORKER_INT_H

#ifndef CDS_WORKER_INTERNAL
#error "worker_int.h is private to worker/: include worker.h (a white-box test under tests/ adds c_args : worker_private_args)"
#endif

#include <pthread.h>
#include <signal.h>

#include "cds_nvml.h"
#include "nn_tensor.h"
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
 * (worker_mop_eval.c): the next results tick runs at once and tries its outbox
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
    /* The device every trainer of this worker is made on (cfg->device as
     * resolved at start), and its name as visits and results record it. */
    nn_place place;
    char device[16];
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
    /* What was done, for the last log line, the registration and the
     * metrics port (written by the main thread, read by the others): jobs
     * acked and failed, visits (and gang epochs) committed, evaluations and
     * test scores recorded; released work and refused acks or commits are
     * not counted. */
    atomic_llong jobs_done, jobs_failed, visits_committed, evals_recorded, tests_recorded;
    int64_t started_ms; /* when the worker started (wall clock) */
    struct worker_metrics *metrics; /* --metrics-port's server, or NULL */
    /* The card's NVML, opened once at start when the worker trains on
     * cuda:N and the driver has it, else NULL (a CPU worker never loads
     * it): visits and evaluations record its samples (cds_res), the
     * heartbeat samples it once a second, a scrape once.  Set before any
     * thread starts, closed after they end. */
    cds_nvml *nvml;
    /* With --metrics-port: the jobs waiting in each queue served
     * (cfg->queues' order), as the heartbeat read them last (once a
     * second); -1 until it has. */
    atomic_llong queue_depth[WORKER_MAX_QUEUES];
};

struct worker_run_ctx {
    worker *w;
    held *h;
};

/* Reconnects q with capped exponential backoff and jitter until it works
 * (0) or give_up(w) says to stop (-1); who names the thread in the logs. */
int worker_reconnect_with_backoff(worker *w, queue_conn *q, const char *who, int (*give_up)(worker *));
/* The main thread stops retrying Redis when told to stop at once, or when
 * told to drain with nothing in hand to ack or commit. */
int worker_main_gives_up(worker *w);
/* What the main thread works on ("" or NULL: nothing), for the registration
 * and the signal thread's log lines. */
void worker_set_current(worker *w, const char *what);
/* The MOP lease in hand: set (l and sweep) or cleared (NULL), with the
 * visit's progress reset; the heartbeat renews it from here. */
void worker_slot_set(worker *w, const char *sweep, const queue_mop_lease *l);
/* From here on the main thread ends the lease in hand (commit, release,
 * fail, record): the heartbeat stops renewing it and does not call its end
 * a loss. */
void worker_slot_finishing(worker *w);

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

#endif
