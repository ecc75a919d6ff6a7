/* queue_mop_eval: the side leases of a sweep, evaluations and the test
 * scoring (queue_mop.h).
 *
 * A finished epoch waits in the evals list until a worker takes it
 * (mop_eval_take: moved to the evaling hash under a token and a deadline),
 * renews it from its heartbeat, and records the result (mop_result, which
 * also appends the cds_results row to the outbox) or gives it back / drops
 * it / counts a failed attempt (mop_eval_end).  The test scoring of a done
 * sweep is one claim on the sweep hash (mop_test_claim), with the same
 * renew, record and failed-attempt scripts.  Each of them holds iff its
 * token is in place and now <= deadline, judged the same way by its renew,
 * its record and the reaper, so a holder that lost it can never overwrite
 * the worker that took it over.  A sweep that finishes with the test score
 * frees its unique key here (qmop_free_unique_key). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "queue_int.h"
#include "queue_mop.h"

/* ---- evaluation and test leases ------------------------------------------ */

int qmop_renew_side_lease(queue_conn *q, const char *sweep, const queue_mop_lease *l, int64_t lease_ms,
                            cds_err *err)
{
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs args = {0};
    qargs_add(&args, l->token);
    qargs_addf(&args, "%lld", (long long)(lease_ms > 0 ? lease_ms : 1));
    return qmop_run_on_lease(q, l->kind == QUEUE_MOP_TEST ? QS_MOP_TEST_RENEW : QS_MOP_EVAL_RENEW,
                        "renew", "renewed", sweep, l, &args, NULL, err);
}

/* Takes a side lease (an evaluation or the test scoring) with one of the
 * scripts that hand them out: checks the arguments, draws the token into l
 * and runs the script with (worker, lease_ms, token).  NULL on error. */
static redisReply *side_lease_take(queue_conn *q, int script, const char *sweep, const char *worker,
                                   int64_t lease_ms, queue_mop_lease *l, cds_err *err)
{
    if (queue_sweep_id_check(sweep, err) != 0)
        return NULL;
    if (!worker || !*worker)
        return cds_errf(err, "taking work from sweep '%s' needs a worker id", sweep), NULL;
    if (lease_ms < 1)
        return cds_errf(err, "lease of %lld ms is too short: use 1 ms or more", (long long)lease_ms), NULL;
    memset(l, 0, sizeof *l);
    l->shard = -1;
    if (cds_random_hex(l->token, (QUEUE_TOKEN_MAX - 1) / 2, err) != 0)
        return NULL;
    qargs args = {0};
    qargs_add(&args, worker);
    qargs_addf(&args, "%lld", (long long)lease_ms);
    qargs_add(&args, l->token);
    return qmop_run(q, script, sweep, &args, NULL, err);
}

int queue_mop_take_eval(queue_conn *q, const char *sweep, const char *worker, int64_t lease_ms, queue_mop_lease *l,
                        cds_err *err)
{
    redisReply *r = side_lease_take(q, QS_MOP_EVAL_TAKE, sweep, worker, lease_ms, l, err);
    if (!r)
        return -1;
    if (qc_reply_is(r, 0, "none")) {
        freeReplyObject(r);
        return 0;
    }
    if (!qc_reply_is(r, 0, "taken") || r->elements != 3)
        return qmop_unexpected(r, "eval_take", err);
    long long v = 0;
    const char *entry = qc_reply_str(r, 1);
    if (!entry || sscanf(entry, "%d %d %lld", &l->model, &l->epoch, &v) != 3) {
        cds_errf(err, "sweep '%s': bad evaluation entry '%s'", sweep, entry ? entry : "");
        freeReplyObject(r);
        return -1;
    }
    l->kind = QUEUE_MOP_EVAL;
    l->version = v;
    l->deadline_ms = qc_reply_int(r, 2);
    freeReplyObject(r);
    return 1;
}

int queue_mop_put_eval(queue_conn *q, const char *sweep, const queue_mop_lease *l, int how, const char *why,
                       int *failed, cds_err *err)
{
    if (failed)
        *failed = 0;
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs args = {0};
    qargs_add(&args, l->token);
    qargs_add(&args, how == QUEUE_EVAL_DROP ? "drop" : how == QUEUE_EVAL_RETRY ? "retry" : "back");
    qargs_add(&args, why ? why : "");
    qargs_addf(&args, "%.6f", 0.5 + 0.5 * cds_random_unit());
    redisReply *r = NULL;
    int rc = qmop_run_on_lease(q, QS_MOP_EVAL_END, "eval_end", "ended", sweep, l, &args, &r, err);
    if (rc != 0)
        return rc;
    if (failed)
        *failed = qc_reply_is(r, 1, "failed");
    freeReplyObject(r);
    return 0;
}

int queue_mop_record_result(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *metrics_json,
                            double valid_top1, int *is_best, int *prev_best_epoch, cds_err *err)
{
    return queue_mop_record_result_row(q, sweep, l, metrics_json, valid_top1, NULL, is_best, prev_best_epoch, err);
}

int queue_mop_record_result_row(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *metrics_json,
                                double valid_top1, const queue_outbox_row *row, int *is_best, int *prev_best_epoch,
                                cds_err *err)
{
    *is_best = 0;
    *prev_best_epoch = -1;
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs args = {0}, outbox = {0};
    qargs_add(&args, l->token);
    qargs_addf(&args, "%d", l->model);
    qargs_addf(&args, "%d", l->epoch);
    qargs_add(&args, metrics_json);
    qargs_addf(&args, "%.17g", valid_top1);
    if (row) {
        char id[QUEUE_OUTBOX_ID_LEN];
        queue_outbox_id(row->dsn ? row->dsn : "", id);
        qoutbox_keys(&outbox, q, id, 0);
        qargs_add(&args, sweep);
        qargs_add(&args, row->dsn ? row->dsn : "");
        qargs_add(&args, id);
    }
    redisReply *r = NULL;
    int missing;
    r = qmop_run_keys(q, QS_MOP_RESULT, sweep, row ? &outbox : NULL, &args, &missing, err);
    if (!r)
        return missing ? QUEUE_NOT_FOUND : -1;
    if (qc_reply_is(r, 0, "lost")) {
        freeReplyObject(r);
        cds_errf(err, "the evaluation of model %d epoch %d of sweep '%s' was lost (expired and put back): its "
                      "result is not recorded", l->model, l->epoch, sweep);
        return QUEUE_NOT_FOUND;
    }
    if ((!qc_reply_is(r, 0, "best") && !qc_reply_is(r, 0, "kept")) || r->elements != 4)
        return qmop_unexpected(r, "result", err);
    *is_best = qc_reply_is(r, 0, "best");
    const char *prev = qc_reply_str(r, 1);
    *prev_best_epoch = prev && *prev ? atoi(prev) : -1;
    freeReplyObject(r);
    return 0;
}

int queue_mop_claim_test(queue_conn *q, const char *sweep, const char *worker, int64_t lease_ms, queue_mop_lease *l,
                         cds_err *err)
{
    redisReply *r = side_lease_take(q, QS_MOP_TEST_CLAIM, sweep, worker, lease_ms, l, err);
    if (!r)
        return -1;
    if (qc_reply_is(r, 0, "pending") || qc_reply_is(r, 0, "taken") || qc_reply_is(r, 0, "recorded")) {
        freeReplyObject(r);
        return 0;
    }
    if (!qc_reply_is(r, 0, "claimed") || r->elements != 2)
        return qmop_unexpected(r, "test_claim", err);
    l->kind = QUEUE_MOP_TEST;
    l->model = -1;
    l->epoch = -1;
    l->deadline_ms = qc_reply_int(r, 1);
    freeReplyObject(r);
    return 1;
}

int queue_mop_record_test(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *result,
                          cds_err *err)
{
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs args = {0};
    qargs_add(&args, l->token);
    qargs_add(&args, result && *result ? result : "error no result");
    qargs_add(&args, sweep);
    int rc = qmop_run_on_lease(q, QS_MOP_TEST_RECORD, "test_record", "recorded", sweep, l, &args, NULL, err);
    return rc == 0 ? qmop_free_unique_key(q, sweep, err) : rc;
}

int queue_mop_fail_test(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *why, int *failed,
                        cds_err *err)
{
    if (failed)
        *failed = 0;
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs args = {0};
    qargs_add(&args, l->token);
    qargs_add(&args, why && *why ? why : "failed");
    qargs_addf(&args, "%.6f", 0.5 + 0.5 * cds_random_unit());
    qargs_add(&args, sweep);
    redisReply *r = NULL;
    int rc = qmop_lease_script(q, QS_MOP_TEST_FAIL, sweep, l, &args, &r, err);
    if (rc != 0)
        return rc;
    if (!qc_reply_is(r, 0, "retry") && !qc_reply_is(r, 0, "failed"))
        return qmop_unexpected(r, "test_fail", err);
    int final = qc_reply_is(r, 0, "failed");
    if (failed)
        *failed = final;
    freeReplyObject(r);
    return final ? qmop_free_unique_key(q, sweep, err) : 0;
}

