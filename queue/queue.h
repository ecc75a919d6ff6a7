/* queue: the Redis job queue of Cerebro-DS (DESIGN.md §4), over hiredis.
 *
 * Every job is a hash `<prefix>job:<id>`; which sorted set of its queue holds
 * its id is where it stands (wait, delayed, blocked, active, done, dead,
 * cancelled).  A claim leases a job to one worker with a random token and a
 * deadline; heartbeats move the deadline; ack, fail and release check the
 * token, so a worker that lost its lease (reaped, cancelled) cannot publish.
 * Leases that expire are requeued by the reaper, which any worker runs under a
 * SET NX PX mutex, counting a stall rather than an attempt.
 *
 * All mutations are Lua scripts loaded once per connection (EVALSHA, reloaded
 * on NOSCRIPT) that take their time from the server's TIME and receive every
 * key they touch through KEYS.  Where the job keys are only known after a
 * first script ran (a claim pops ids, then marks their hashes), the work is
 * split in two scripts and the state between them is one the reaper repairs.
 * See docs/queue.md and docs/redis-keys.md. */
#ifndef CDS_QUEUE_H
#define CDS_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "cds_err.h"

#define QUEUE_DEFAULT_URL "redis://127.0.0.1:6379/0"
#define QUEUE_DEFAULT_PREFIX "cds:"
#define QUEUE_DEFAULT_NAME "default"
#define QUEUE_ID_MAX 24
#define QUEUE_TOKEN_MAX 33
#define QUEUE_NAME_MAX 64
#define QUEUE_PRIORITY_MAX 1000000

/* Return codes besides 0 and -1 (error, message in cds_err). */
#define QUEUE_NOT_FOUND 1

typedef struct queue_conn queue_conn;

/* ---- connection ---------------------------------------------------------- */

typedef struct queue_url {
    int is_unix;
    char host[256];
    int port;
    char path[512];
    int db;
    char user[128];
    char password[256];
} queue_url;

/* Parses redis://[[user]:password@]host[:port][/db] or
 * unix://[[user]:password@]/path/to.sock[?db=N]. */
int queue_url_parse(const char *url, queue_url *out, cds_err *err);

typedef struct queue_opts {
    const char *url;           /* NULL: $CDS_REDIS_URL, else QUEUE_DEFAULT_URL */
    const char *password_file; /* NULL: the URL's password, if any */
    const char *prefix;        /* NULL: QUEUE_DEFAULT_PREFIX */
    int timeout_ms;            /* connect and reply timeout; 0: 5000 */
    int writes;                /* 1: refuse a server whose maxmemory-policy could evict keys (at every connect
                                  and reconnect): whatever writes must, reading need not */
} queue_opts;

queue_conn *queue_connect(const queue_opts *opts, cds_err *err);
/* Drops the socket and connects again with the same settings. */
int queue_reconnect(queue_conn *q, cds_err *err);
void queue_close(queue_conn *q);
/* The URL with its password replaced by ***, for logs and messages. */
const char *queue_url_redacted(const queue_conn *q);
const char *queue_prefix(const queue_conn *q);
/* Refuses a server whose maxmemory-policy could evict queue keys. */
int queue_check_eviction_policy(queue_conn *q, cds_err *err);
/* 1 if the last error was a lost or refused connection (worth a reconnect). */
int queue_conn_broken(const queue_conn *q);

/* ---- producing ----------------------------------------------------------- */

typedef struct queue_job_spec {
    const char *type;     /* required: what runs it, e.g. "diag.sleep" */
    const char *queue;    /* NULL: "default" */
    const char *payload;  /* JSON text; NULL: "{}" */
    int64_t priority;     /* larger first; |p| <= QUEUE_PRIORITY_MAX */
    int64_t delay_ms;     /* not claimable before now + delay */
    int64_t max_attempts; /* failures before the dead-letter set */
    int64_t max_stalls;   /* lease expiries tolerated before dead-letter */
    int64_t backoff_base_ms;
    int64_t backoff_cap_ms;
    const char *unique;   /* NULL or a key held while the job is live */
    const char *const *after; /* ids this job waits for */
    size_t n_after;
} queue_job_spec;

/* Defaults: queue "default", payload "{}", 5 attempts, 3 stalls, backoff base
 * 1 s and cap 1 h. */
void queue_job_spec_init(queue_job_spec *spec);
/* Checks a spec without talking to Redis. */
int queue_job_spec_check(const queue_job_spec *spec, cds_err *err);

typedef struct queue_enqueued {
    char id[QUEUE_ID_MAX]; /* the new job, or the live one for a duplicate */
    int duplicate;         /* 1: a live job held the unique key */
    char state[16];        /* waiting, delayed, blocked or dead */
} queue_enqueued;

/* Enqueues n jobs in one pipelined round trip (plus one to allocate ids).
 * On error no job of the batch after the failing one is reported; jobs already
 * created stay created (each job is atomic, a batch is not). */
int queue_enqueue(queue_conn *q, const queue_job_spec *specs, size_t n, queue_enqueued *out,
                  cds_err *err);

/* ---- consuming ----------------------------------------------------------- */

typedef struct queue_job {
    char id[QUEUE_ID_MAX];
    char token[QUEUE_TOKEN_MAX];
    char queue[QUEUE_NAME_MAX];
    char *type;
    char *payload;
    char *unique;
    int64_t attempts; /* failures so far */
    int64_t max_attempts;
} queue_job;

void queue_job_clear(queue_job *job);

typedef struct queue_claim_info {
    int64_t now_ms;      /* server time of the claim */
    int64_t next_due_ms; /* earliest delayed job of the queue, or -1 */
} queue_claim_info;

/* Leases up to max jobs of one queue for lease_ms.  *n is how many came back;
 * the caller owns them (queue_job_clear each). */
int queue_claim(queue_conn *q, const char *queue, const char *worker, int64_t lease_ms, size_t max,
                queue_job *out, size_t *n, queue_claim_info *info, cds_err *err);

/* Extends the leases of jobs (any queues); alive[i] = 1 if still held. */
int queue_heartbeat(queue_conn *q, const queue_job *jobs, size_t n, int64_t lease_ms, int *alive,
                    cds_err *err);

/* Completes jobs; acked[i] = 1 done, 0 refused (lease lost).  results may be
 * NULL.  Jobs waiting on a completed one are released. */
int queue_ack(queue_conn *q, const queue_job *jobs, size_t n, const char *const *results, int *acked,
              cds_err *err);

typedef struct queue_fail_result {
    int lost;          /* the lease was lost: nothing recorded */
    int dead;          /* dead-lettered */
    int64_t due_ms;    /* when retried: the server time it becomes due */
    int64_t delay_ms;  /* ... and the backoff drawn */
    int64_t attempts;  /* failures so far */
} queue_fail_result;

/* Records a failure; permanent = no retry whatever the attempts left. */
int queue_fail(queue_conn *q, const queue_job *job, const char *reason, int permanent,
               queue_fail_result *res, cds_err *err);
/* Returns the job to the wait set now, counting nothing; *released = 0 if the
 * lease was already lost. */
int queue_release(queue_conn *q, const queue_job *job, int *released, cds_err *err);

/* Blocks at most timeout_ms (capped at 1000) until a wake-up is pushed to one
 * of the queues; *woken = 1 if one was. */
int queue_wait(queue_conn *q, const char *const *queues, size_t nq, int timeout_ms, int *woken,
               cds_err *err);

/* ---- maintenance (the reaper) -------------------------------------------- */

typedef struct queue_maint_opts {
    int64_t lock_ms;            /* mutex expiry; 0: 10000 */
    int64_t keep_done;          /* finished jobs kept per queue and set */
    int64_t keep_done_ms;       /* ... and for how long */
    int64_t keep_dead;
    int64_t keep_dead_ms;
} queue_maint_opts;

void queue_maint_opts_init(queue_maint_opts *o);

typedef struct queue_maint_stats {
    int ran;        /* 0: another reaper held the mutex */
    long requeued;  /* expired leases put back */
    long buried;    /* jobs dead-lettered (stalls, dead dependencies) */
    long promoted;  /* delayed jobs now waiting */
    long released;  /* blocked jobs whose dependencies finished */
    long trimmed;   /* finished jobs deleted */
} queue_maint_stats;

/* One pass over every queue under the reaper mutex: reap, promote, resolve
 * blocked jobs, trim finished ones. */
int queue_maintain(queue_conn *q, const char *owner, const queue_maint_opts *o,
                   queue_maint_stats *st, cds_err *err);
/* The steps, without the mutex (the mutex is an optimisation: each step
 * re-checks atomically, so two reapers never requeue a job twice). */
int queue_reap(queue_conn *q, const char *queue, queue_maint_stats *st, cds_err *err);
int queue_promote(queue_conn *q, const char *queue, queue_maint_stats *st, cds_err *err);
int queue_resolve_blocked(queue_conn *q, const char *queue, queue_maint_stats *st, cds_err *err);
int queue_trim(queue_conn *q, const char *queue, const queue_maint_opts *o, queue_maint_stats *st,
               cds_err *err);

/* ---- administration ------------------------------------------------------ */

/* Cancels a waiting, delayed, blocked or running job.  Returns 0, or
 * QUEUE_NOT_FOUND (no such job), or -1 (including: already finished). */
int queue_cancel(queue_conn *q, const char *id, char prev_state[16], cds_err *err);
/* Puts a dead or cancelled job back to waiting. */
int queue_retry(queue_conn *q, const char *id, cds_err *err);
/* The job hash as a JSON object (numbers as numbers). */
int queue_show(queue_conn *q, const char *id, json_t **out, cds_err *err);
/* Jobs in a state ("waiting", "delayed", "blocked", "active", "done", "dead",
 * "cancelled") of one queue, or (queue NULL) of each queue in turn: per queue
 * in the set's order (next to run first for waiting, oldest first for the
 * finished sets), at most limit per queue. */
int queue_list(queue_conn *q, const char *queue, const char *state, size_t limit, json_t **out,
               cds_err *err);
/* Per queue: the size of each set and the counters. */
int queue_stats(queue_conn *q, json_t **out, cds_err *err);
/* The jobs waiting in each of n queues (their wait sets' sizes, as
 * queue_stats's "waiting"), into waiting[0..n): one round trip of O(1)
 * commands, cheap enough for a worker's heartbeat. */
int queue_waiting(queue_conn *q, const char *const *queues, size_t n, int64_t *waiting, cds_err *err);
/* Queue names known to this prefix (a JSON array). */
int queue_names(queue_conn *q, json_t **out, cds_err *err);

/* ---- records ------------------------------------------------------------- */

/* Rendezvous keys (queue_rdv.c): bytes at <prefix>rdv:{<scope>}:<key>,
 * each with an expiry, for the ranks of a data-parallel gang to find each
 * other (scope: one attempt of one gang; both names 1 to 127 of
 * [A-Za-z0-9_.-]).  get: 1 with *data malloc'd (NUL-terminated beyond *n),
 * 0 when the key is not (or no longer) there, -1 on error. */
int queue_rdv_set(queue_conn *q, const char *scope, const char *key, const void *data, size_t n, int64_t ttl_ms,
                  cds_err *err);
int queue_rdv_get(queue_conn *q, const char *scope, const char *key, void **data, size_t *n, cds_err *err);

/* A record is a hash <prefix><name> of plain string fields (a dataset, later a
 * sweep), readable with redis-cli HGETALL.  set writes the string fields of a
 * JSON object (other values as JSON text). */
int queue_record_set(queue_conn *q, const char *name, const json_t *fields, cds_err *err);
/* The record's fields as a JSON object of strings; QUEUE_NOT_FOUND if none. */
int queue_record_get(queue_conn *q, const char *name, json_t **out, cds_err *err);

/* ---- workers ------------------------------------------------------------- */

/* Registers or renews a live worker (hash with a TTL, and the workers set).
 * info: a JSON object of string values (host, pid, queues, job, ...). */
int queue_worker_beat(queue_conn *q, const char *worker, const json_t *info, int64_t ttl_ms,
                      cds_err *err);
int queue_worker_gone(queue_conn *q, const char *worker, cds_err *err);
/* Workers seen in the last day, live or not. */
int queue_workers(queue_conn *q, json_t **out, cds_err *err);

#endif
