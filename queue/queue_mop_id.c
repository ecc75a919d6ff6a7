/* queue_mop_id: sweep ids, their one check and their allocation.
 *
 * A sweep id is part of every key of the sweep (sweep:{S}...) and of paths
 * under DATA_ROOT, so one alphabet, [A-Za-z0-9_-], 1 to 31 characters, is
 * checked here and by every call that takes one (queue_sweep_id_check).
 *
 * Ids that nobody chose are "s<N>" with N from the counter <prefix>sweep:seq
 * (INCR: atomic, so two jobctl runs never draw the same N).  A sweep may
 * also be created under an id of the caller's choosing, which can be a
 * future "s<N>": such values are skipped, up to SWEEP_ID_TRIES in a row.
 * The check and the create are not one step, so a drawn id may still be
 * taken by a concurrent --id create before it is used; the create then
 * refuses it as existing, which is the caller's signal to draw again. */
#include <stdio.h>
#include <string.h>

#include "queue_int.h"
#include "queue_mop.h"

/* Counter values skipped in a row because a sweep already has that id. */
#define SWEEP_ID_TRIES 100

int queue_sweep_id_check(const char *id, cds_err *err)
{
    size_t n = id ? strlen(id) : 0;
    if (n >= 1 && n < QUEUE_SWEEP_ID_MAX &&
        strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n)
        return 0;
    return cds_errf(err, "bad sweep id '%.40s': use 1 to %d letters, digits, '_' or '-'", id ? id : "",
                    QUEUE_SWEEP_ID_MAX - 1);
}

/* The next value of the counter: 1 or more, 0 when the key holds no
 * counter, -1 on a Redis error. */
static long long next_seq(queue_conn *q, cds_err *err)
{
    qargs cmd = {0};
    qargs_add(&cmd, "INCR");
    qargs_key(&cmd, q, "sweep:seq");
    cds_err e;
    redisReply *r = qc_command(q, &cmd, &e);
    qargs_free(&cmd);
    if (!r) {
        /* INCR of a key that holds no integer is an error reply. */
        if (!queue_conn_broken(q) && !cds_err_is_nomem(&e) &&
            (strstr(e.msg, "not an integer") || strstr(e.msg, "WRONGTYPE")))
            return 0;
        if (err)
            *err = e;
        return -1;
    }
    long long n = r->type == REDIS_REPLY_INTEGER && r->integer > 0 ? r->integer : 0;
    freeReplyObject(r);
    return n;
}

int queue_sweep_new_id(queue_conn *q, char id[QUEUE_SWEEP_ID_MAX], cds_err *err)
{
    id[0] = '\0';
    for (int t = 0; t < SWEEP_ID_TRIES; t++) {
        long long n = next_seq(q, err);
        if (n < 0)
            return -1;
        if (n == 0) {
            cds_errf(err, "%ssweep:seq does not hold a counter: delete it, or give the sweep an id", q->prefix);
            return QUEUE_MOP_NO_ID;
        }
        snprintf(id, QUEUE_SWEEP_ID_MAX, "s%lld", n);
        json_t *existing = NULL;
        int rc = queue_sweep_get(q, id, &existing, err);
        json_decref(existing);
        if (rc == QUEUE_NOT_FOUND)
            return 0;
        if (rc != 0)
            return -1;
    }
    cds_errf(err, "sweep ids s<N> up to %s are all taken: give the sweep an id", id);
    id[0] = '\0';
    return QUEUE_MOP_NO_ID;
}
