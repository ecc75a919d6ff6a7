/* worker: the cds-worker daemon.  One process serves one GPU (or the CPU) and
 * claims jobs from one or more queues; see worker.c for the loop. */
#ifndef CDS_WORKER_H
#define CDS_WORKER_H

#include <stdatomic.h>
#include <stdint.h>

#include "cds_err.h"
#include "cds_log.h"
#include "queue.h"

#define WORKER_MAX_QUEUES 16

typedef struct worker_cfg {
    const char *url;
    const char *password_file;
    const char *prefix;
    const char *queues[WORKER_MAX_QUEUES];
    size_t n_queues;
    char id[128];
    int64_t lease_ms;
    size_t batch;
    int64_t idle_exit_ms;  /* 0: never */
    int64_t max_jobs;      /* 0: no limit */
    int64_t reap_every_ms;
    queue_maint_opts maint;
    cds_log_level log_level;
    /* MOP: the shard this worker serves (-1: none), where datasets and sweeps
     * live, and the training threads. */
    int shard;
    const char *data_root;
    int threads;
    int64_t shard_grace_ms; /* serve a shard whose worker is silent this long (0: never) */
    /* DDP and MA gangs (docs/ddp.md): the time-out of every collective, and
     * the address ranks listen on and publish (NULL: the interface's, else
     * the host name's). */
    int64_t ddp_timeout_ms;
    const char *ddp_addr;
    const char *ddp_iface;
    int ddp_sparse_dense; /* a sparse mlp's embedding all-reduced dense, not exchanged as rows (--ddp-sparse dense) */
    int ddp_nccl;         /* gangs join over NCCL on the worker's GPU (--ddp-transport nccl), else Gloo */
    /* What --device named (cpu, cuda, cuda:N, auto; NULL: auto), already
     * parsed: worker_run resolves it on this machine once, before it
     * connects, so a worker never trains on a device it was not given. */
    const char *device;
    /* --metrics-port (0: none) and the address it binds (NULL: 127.0.0.1):
     * Prometheus's text format at GET /metrics (worker_metrics.c). */
    int metrics_port;
    const char *metrics_bind;
} worker_cfg;

typedef struct worker worker;

/* cds-worker --rank-task FD --rank-out FD: one rank of a gang, in a child
 * process the worker started (worker_rank.c); returns the exit status. */
int worker_rank_main(const worker_cfg *cfg, int task_fd, int out_fd);

/* What a runner returns besides 0 (done). */
enum { WORKER_RUN_FAILED = -1, WORKER_RUN_PERMANENT = -2, WORKER_RUN_ABORTED = -3 };

/* What a runner may ask of the worker while it runs. */
typedef struct worker_run_ctx worker_run_ctx;
/* 1 when the runner must stop now: the worker was told to stop at once, or
 * its lease on the job was lost (reaped or cancelled). */
int worker_run_should_abort(const worker_run_ctx *ctx);
const cds_log *worker_run_log(const worker_run_ctx *ctx);
/* The worker's own connection (the runner runs on the thread that owns it). */
queue_conn *worker_run_queue(const worker_run_ctx *ctx);

/* A job type: runs one job; on failure fills err with the reason and returns
 * one of the WORKER_RUN_* codes; may set *result to a malloc'd JSON text. */
typedef int (*worker_run_fn)(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err);

/* Called when a job of this type has gone to the dead-letter set, so the
 * state it belongs to (a dataset, a sweep) can be marked failed. */
typedef void (*worker_dead_fn)(queue_conn *q, const queue_job *job, const char *reason, const cds_log *log);

/* The runner for a job, or NULL with err saying why: its type is not in the
 * table jobctl shares (queue/queue_jobtype.h), or its payload fails that
 * type's check (a job that reached Redis without jobctl); the worker fails
 * such a job for good.  *on_dead (may be NULL) gets the type's hook even when
 * the payload is refused, so the state the job belongs to is marked. */
worker_run_fn worker_find_runner(const queue_job *job, worker_dead_fn *on_dead, cds_err *err);

/* Runs until told to stop; returns the process exit code. */
int worker_run(const worker_cfg *cfg);

#endif
