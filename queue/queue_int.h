/* Internals shared by the queue_*.c files: the connection struct, an argv
 * builder, and script calls with NOSCRIPT recovery.  Not installed.
 *
 * Private to queue/: the build defines CDS_QUEUE_INTERNAL only for queue's
 * own sources and for white-box tests (queue_private_args in
 * queue/meson.build), so any other file that includes this header, by any
 * path, fails to compile.  Other modules use queue.h and queue_mop.h. */
#ifndef CDS_QUEUE_INT_H
#define CDS_QUEUE_INT_H

#ifndef CDS_QUEUE_INTERNAL
#error "queue_int.h is private to queue/: include queue.h or queue_mop.h (a white-box test under tests/ adds c_args : queue_private_args)"
#endif

#include <hiredis/hiredis.h>

#include "queue.h"

/* Every script of lua/, one entry each in queue_conn.c's table: all are
 * loaded at connect and called by SHA1 (qc_eval). */
enum queue_script {
    QS_ENQUEUE, QS_CLAIM, QS_START, QS_HEARTBEAT, QS_ACK, QS_FAIL, QS_RELEASE, QS_REAP,
    QS_PROMOTE, QS_RESOLVE, QS_CANCEL, QS_RETRY, QS_TRIM, QS_UNLOCK, QS_BEAT,
    /* MOP sweeps (queue_mop*.c) */
    QS_MOP_CREATE, QS_MOP_LEASE, QS_MOP_RENEW, QS_MOP_COMMIT, QS_MOP_RELEASE, QS_MOP_FAIL, QS_MOP_REAP,
    QS_MOP_STATE, QS_MOP_MODEL, QS_MOP_EVAL_TAKE, QS_MOP_EVAL_RENEW, QS_MOP_EVAL_END, QS_MOP_RESULT,
    QS_MOP_TEST_CLAIM, QS_MOP_TEST_RENEW, QS_MOP_TEST_RECORD, QS_MOP_TEST_FAIL, QS_MOP_RETRY, QS_MOP_ENROLL,
    QS_MOP_SHARD_BEAT, QS_MOP_ORPHANS, QS_MOP_GANG, QS_MOP_GANG_RENEW, QS_MOP_GANG_COMMIT, QS_MOP_GANG_END,
    QS_MOP_ADD_TRIAL,
    /* the cds_results outbox (queue_outbox.c) */
    QS_OUTBOX, QS_OUTBOX_DUE,
    QS_COUNT
};

struct queue_conn {
    redisContext *c;
    queue_url url;
    char url_redacted[700];
    char prefix[QUEUE_NAME_MAX];
    int timeout_ms;
    int broken;
    int writes; /* queue_opts.writes */
    char sha[QS_COUNT][41];
};

/* A growable argv of owned strings: one Redis command.  Building one never
 * fails at the call site: an allocation that fails sets nomem, later adds
 * are dropped, and the command that carries it is refused (cds_err_nomem)
 * by whatever would send it (qc_command, qc_eval, qc_pipeline), so the
 * caller sees the error where it already checks the reply. */
typedef struct qargs {
    size_t n, cap;
    char **v;
    size_t *len;
    int nomem;
} qargs;

void qargs_init(qargs *a);
void qargs_free(qargs *a);
void qargs_reset(qargs *a);
void qargs_add(qargs *a, const char *s);
void qargs_addn(qargs *a, const char *s, size_t n);
void qargs_addf(qargs *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Adds every string of src (and its nomem). */
void qargs_append(qargs *a, const qargs *src);
/* Adds prefix + formatted name. */
void qargs_key(qargs *a, const queue_conn *q, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Adds the key of a job's unique key, or, when it has none, the job's own key
 * as a stand-in (scripts take a fixed number of keys per job). */
void qargs_unique_key(qargs *keys, const queue_conn *q, const char *unique, const char *id);

/* Runs one command; an error reply becomes -1/NULL with the message. */
redisReply *qc_command(queue_conn *q, const qargs *cmd, cds_err *err);
/* qc_command, then frees cmd. */
redisReply *qc_take(queue_conn *q, qargs *cmd, cds_err *err);
/* qc_take for a command whose reply only matters as success. */
int qc_do(queue_conn *q, qargs *cmd, cds_err *err);
/* Runs a script: EVALSHA sha nkeys keys... args... */
redisReply *qc_eval(queue_conn *q, int script, const qargs *keys, const qargs *args, cds_err *err);
/* qc_eval, then frees keys and args (the common case). */
redisReply *qc_run(queue_conn *q, int script, qargs *keys, qargs *args, cds_err *err);
/* Builds the EVALSHA argv of a script call into cmd (for pipelines). */
void qc_build_eval(const queue_conn *q, int script, const qargs *keys, const qargs *args, qargs *cmd);
/* Sends n commands in one round trip and reads the n replies into out.  A
 * NOSCRIPT reply (the server lost its scripts) reloads them and re-runs that
 * command.  On a transport error every reply is freed and -1 returned. */
int qc_pipeline(queue_conn *q, qargs *cmds, size_t n, redisReply **out, cds_err *err);
void qc_free_replies(redisReply **r, size_t n);

/* n commands sent in one pipeline, and their replies. */
typedef struct qbatch {
    size_t n;
    qargs *cmd;
    redisReply **reply;
} qbatch;

int qbatch_init(qbatch *b, size_t n, cds_err *err);
int qbatch_run(queue_conn *q, qbatch *b, cds_err *err);
void qbatch_free(qbatch *b);

/* Reply helpers. */
/* Every member of the sorted set at key (under the prefix), in score order,
 * as malloc'd strings (queue_sweep_list_free); what names it in errors. */
int qc_sorted_set(queue_conn *q, const char *key, char ***ids, size_t *n, const char *what, cds_err *err);
int qc_reply_is(const redisReply *r, size_t i, const char *s);
const char *qc_reply_str(const redisReply *r, size_t i);
long long qc_reply_int(const redisReply *r, size_t i);
/* An array reply of strings as a malloc'd array of malloc'd strings (free
 * with queue_sweep_list_free); nothing (NULL, 0) for an empty or non-array
 * reply.  -1 only when out of memory. */
int qc_reply_strings(const redisReply *r, char ***out, size_t *n);

int qc_name_ok(const char *s, size_t max);

/* The keys of one DSN's cds_results outbox, in the order lua/outbox.lua and
 * lua/mop_result.lua take them: the index, the rows, the state; then the
 * set-aside list when with_aside (queue_outbox.c). */
void qoutbox_keys(qargs *keys, const queue_conn *q, const char *id, int with_aside);

/* Releases the jobs that wait on finished job id, recursively burying the
 * dependents of dependents that die with it. */
int queue_resolve_dependents(queue_conn *q, const char *id, queue_maint_stats *st, cds_err *err);

/* ---- MOP internals shared by queue_mop.c, queue_mop_lease.c and
 * queue_mop_eval.c ---- */

/* Runs a MOP script on a sweep's nine keys (then extra_keys, freed) with
 * args (freed).  A reply that is not an array is an error; so is the
 * script's {'missing'} (no such sweep), which also sets *missing (may be
 * NULL). */
redisReply *qmop_run_keys(queue_conn *q, int script, const char *sweep, qargs *extra_keys, qargs *args,
                          int *missing, cds_err *err);
redisReply *qmop_run(queue_conn *q, int script, const char *sweep, qargs *args, int *missing, cds_err *err);
/* Frees r, sets the error for an answer the caller did not expect; -1. */
int qmop_unexpected(redisReply *r, const char *what, cds_err *err);
void qmop_copy_reply_str(char *dst, size_t n, const redisReply *r, size_t i);
/* Runs a script that ends or extends a lease of any kind: 0 (reply in *out),
 * QUEUE_NOT_FOUND when the lease or its sweep is gone, -1. */
struct queue_mop_lease;
int qmop_lease_script(queue_conn *q, int script, const char *sweep, const struct queue_mop_lease *l, qargs *args,
                      redisReply **out, cds_err *err);
/* The same, and any answer but success is an error; out may be NULL. */
int qmop_run_on_lease(queue_conn *q, int script, const char *what, const char *success, const char *sweep,
                      const struct queue_mop_lease *l, qargs *args, redisReply **out, cds_err *err);
/* Renews an evaluation or test lease. */
/* Runs a commit script (a visit's, a gang's) and reads its receipt into
 * *res: 0 (res->accepted 0 when refused), -1 on error. */
struct queue_mop_commit_result;
int qmop_commit_script(queue_conn *q, int script, const char *what, const char *sweep,
                       const struct queue_mop_lease *l, qargs *args, struct queue_mop_commit_result *res,
                       cds_err *err);
/* The renewal of a gang's rank (queue_mop_gang.c), for queue_mop_renew. */
int qmop_gang_renew(queue_conn *q, const char *sweep, const struct queue_mop_lease *l, int64_t lease_ms,
                    const char *progress, cds_err *err);
int qmop_renew_side_lease(queue_conn *q, const char *sweep, const struct queue_mop_lease *l, int64_t lease_ms,
                          cds_err *err);
/* Frees a finished sweep's unique key if it still names the sweep. */
int qmop_free_unique_key(queue_conn *q, const char *sweep, cds_err *err);

#endif
