/* queue_jobtype: the queue job types Cerebro-DS runs, and what the payload of
 * each must hold.
 *
 * This is the one table the producer and the consumer share: `jobctl
 * enqueue` refuses a type that is not in it, or a payload its check refuses,
 * before anything reaches Redis; cds-worker finds a job's runner through it
 * (a runner per queue_jobtype_id) and runs the same check first, so a job
 * that reached Redis by another route (redis-cli, an older jobctl, a
 * library caller) with an unknown type or a payload of the wrong shape is
 * dead-lettered at once with the same message instead of failing somewhere
 * inside its runner.  A new job type is one row here and one runner in
 * worker/worker_jobs.c (a _Static_assert there catches a type added without a runner
 * at the end of the table; the worker refuses a hole by name).
 *
 * The queue library itself does not consult the table: queue_enqueue takes
 * any well-formed type, so tests and tools can still put odd jobs in a
 * queue on purpose. */
#ifndef CDS_QUEUE_JOBTYPE_H
#define CDS_QUEUE_JOBTYPE_H

#include <stddef.h>

#include <jansson.h>

#include "cds_err.h"

typedef enum queue_jobtype_id {
    QUEUE_JOB_DIAG_SLEEP,
    QUEUE_JOB_DIAG_FAIL,
    QUEUE_JOB_DIAG_NOOP,
    QUEUE_JOB_ETL_SHARD,
    QUEUE_JOB_ETL_FINISH,
    QUEUE_JOB_PREDICT_PART,
    QUEUE_JOB_PREDICT_FINISH,
    QUEUE_JOB_TYPES /* how many there are */
} queue_jobtype_id;

typedef struct queue_jobtype {
    queue_jobtype_id id;
    const char *name;    /* "diag.sleep" */
    const char *summary; /* one line, for help texts */
    const char *example; /* a payload the check accepts, for messages */
    /* 0 if payload (any JSON value) has the shape this type needs; else -1
     * with err set to "<JSON path>: <problem>". */
    int (*check)(const json_t *payload, cds_err *err);
} queue_jobtype;

/* The type with that id (id < QUEUE_JOB_TYPES). */
const queue_jobtype *queue_jobtype_get(queue_jobtype_id id);
/* The type named name, or NULL. */
const queue_jobtype *queue_jobtype_find(const char *name);
/* "diag.sleep, diag.fail, ..." (every name, in table order) into buf; returns
 * buf. */
const char *queue_jobtype_names(char *buf, size_t n);

/* Checks that type is known and that payload (JSON text; NULL means "{}")
 * has its shape.  On success *out (may be NULL) is the type.  On failure one
 * line naming the problem and the fix:
 *   unknown job type 'x': the known types are diag.sleep, ... (...)
 *   diag.sleep payload $.ms: must be ... (write the payload like '{"ms": 100}') */
int queue_jobtype_check(const char *type, const char *payload, const queue_jobtype **out, cds_err *err);

/* The same for a payload already parsed: the type's check with its message
 * ("<type> payload <path>: <problem> (write the payload like '...')"). */
int queue_jobtype_check_json(const queue_jobtype *t, const json_t *payload, cds_err *err);

#endif
