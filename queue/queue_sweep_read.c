/* queue_sweep_read: the plain reads of MOP sweeps for workers and jobctl
 * (every sweep, one sweep's hash, the schedule), and the one plain write,
 * queue_sweep_set_field (the worker pins a dataset version with it).  None
 * needs a script: each is one command on one key, atomic by itself; every
 * change that must keep the invariants of queue_mop.h is a script of
 * queue_mop*.c.  qc_sorted_set, the ZRANGE of a whole sorted set, serves
 * the active set (queue_mop.c) too. */
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"
#include "queue_mop.h"

int qc_sorted_set(queue_conn *q, const char *key, char ***ids, size_t *n, const char *what, cds_err *err)
{
    *ids = NULL;
    *n = 0;
    qargs cmd = {0};
    qargs_add(&cmd, "ZRANGE");
    qargs_key(&cmd, q, "%s", key);
    qargs_add(&cmd, "0");
    qargs_add(&cmd, "-1");
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    int rc = qc_reply_strings(r, ids, n) == 0 ? 0 : cds_err_nomem(err, "out of memory listing %s", what);
    freeReplyObject(r);
    return rc;
}

int queue_sweep_list(queue_conn *q, char ***ids, size_t *n, cds_err *err)
{
    return qc_sorted_set(q, "sweeps", ids, n, "sweeps", err);
}

void queue_sweep_list_free(char **ids, size_t n)
{
    for (size_t i = 0; ids && i < n; i++)
        free(ids[i]);
    free(ids);
}

int queue_sweep_get(queue_conn *q, const char *sweep, json_t **out, cds_err *err)
{
    char name[QUEUE_SWEEP_ID_MAX + 16];
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    snprintf(name, sizeof name, "sweep:{%s}", sweep);
    return queue_record_get(q, name, out, err);
}

int queue_mop_schedule(queue_conn *q, const char *sweep, char ***lines, size_t *n, cds_err *err)
{
    *lines = NULL;
    *n = 0;
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs cmd = {0};
    qargs_add(&cmd, "LRANGE");
    qargs_key(&cmd, q, "sweep:{%s}:schedule", sweep);
    qargs_add(&cmd, "0");
    qargs_add(&cmd, "-1");
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    int rc = qc_reply_strings(r, lines, n) == 0
                 ? 0
                 : cds_err_nomem(err, "out of memory reading the schedule of sweep %s", sweep);
    freeReplyObject(r);
    return rc;
}

/* ---- small fields of the sweep hash ---------------------------------------- */

int queue_sweep_set_field(queue_conn *q, const char *sweep, const char *field, const char *value, cds_err *err)
{
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs cmd = {0};
    qargs_add(&cmd, "HSET");
    qargs_key(&cmd, q, "sweep:{%s}", sweep);
    qargs_add(&cmd, field);
    qargs_add(&cmd, value);
    return qc_do(q, &cmd, err);
}
