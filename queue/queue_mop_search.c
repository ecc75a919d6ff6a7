/* queue_mop_search: the trials of a TPE search in Redis (docs/search.md).
 *
 * A TPE sweep starts with its random start-up trials (mop_create) and owes
 * one more each time a model finishes, up to its budget; a worker that
 * sees one owed proposes it (worker_mop_search.c) and adds it with
 * mop_add_trial.lua, which adds trial t only while the sweep has exactly t
 * models and still owes one: proposals are made at most once each, and one
 * lost with its worker stays owed for the next worker.  The count read
 * here is advisory (it decides whether proposing is worth the work); the
 * script decides. */
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"
#include "queue_mop.h"

int queue_mop_trials_owed(queue_conn *q, const char *sweep, int *owed, int *next, cds_err *err)
{
    *owed = 0;
    *next = 0;
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs cmd = {0};
    qargs_add(&cmd, "HMGET");
    qargs_key(&cmd, q, "sweep:{%s}", sweep);
    static const char *const fields[] = {"state", "search", "models", "live", "trials", "initial"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        qargs_add(&cmd, fields[i]);
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    const char *state = qc_reply_str(r, 0), *search = qc_reply_str(r, 1);
    if (!state) {
        freeReplyObject(r);
        cds_errf(err, "sweep '%s' does not exist", sweep);
        return QUEUE_NOT_FOUND;
    }
    int M = atoi(qc_reply_str(r, 2) ?: "0"), live = atoi(qc_reply_str(r, 3) ?: "0");
    int trials = atoi(qc_reply_str(r, 4) ?: "0"), initial = atoi(qc_reply_str(r, 5) ?: "0");
    *next = M;
    if (search && strcmp(search, "tpe") == 0 && strcmp(state, "cancelled") != 0 && strcmp(state, "done") != 0) {
        int target = initial + (M - live);
        *owed = (target < trials ? target : trials) - M;
        if (*owed < 0)
            *owed = 0;
    }
    freeReplyObject(r);
    return 0;
}

int queue_mop_add_trial(queue_conn *q, const char *sweep, int t, const char *spec, const char *point,
                        const char *why_failed, cds_err *err)
{
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs args = {0};
    qargs_addf(&args, "%d", t);
    qargs_add(&args, spec);
    qargs_add(&args, point ? point : "");
    qargs_add(&args, why_failed ? why_failed : "");
    int missing;
    redisReply *r = qmop_run_keys(q, QS_MOP_ADD_TRIAL, sweep, NULL, &args, &missing, err);
    if (!r)
        return missing ? QUEUE_NOT_FOUND : -1;
    int rc;
    if (qc_reply_is(r, 0, "added"))
        rc = 1;
    else if (qc_reply_is(r, 0, "taken") || qc_reply_is(r, 0, "not_owed"))
        rc = 0;
    else
        return qmop_unexpected(r, "add-trial", err);
    freeReplyObject(r);
    return rc;
}
