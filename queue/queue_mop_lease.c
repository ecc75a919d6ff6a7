/* queue_mop_lease: a worker's visit of a model, as a lease (queue_mop.h).
 *
 * lease (mop_lease.lua) picks the model and answers with all the visit
 * needs besides it (dataset, version, K, the spec), so a worker starts
 * training without another round trip; renew moves the deadline (and
 * stores the visit's progress); commit publishes the checkpoint; release
 * gives the model back; fail counts a failed attempt or fails the model.
 * Every script that ends or extends a lease goes through qmop_lease_script,
 * which turns the script's "lost" into QUEUE_NOT_FOUND with the reason for
 * the lease's kind, so the evaluation and test leases (queue_mop_eval.c)
 * share it.  A lease is named to those scripts by its model and its token
 * alone: the token is written only by lease and cleared by every script
 * that ends it, so a worker whose lease ended can change nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "queue_int.h"
#include "queue_mop.h"

/* ---- the worker's side --------------------------------------------------- */

/* What a visit needs, from the lease script's reply (after its first 8):
 * the dataset, its version, K and, when keep_spec, the model's spec. */
static int visit_needs(const redisReply *r, const char *sweep, int keep_spec, queue_mop_lease *l, cds_err *err)
{
    const char *ds = qc_reply_str(r, 8), *ver = qc_reply_str(r, 9), *spec = qc_reply_str(r, 11);
    l->shards = (int)qc_reply_int(r, 10);
    if (!ds || !ver || !spec || strlen(ds) >= sizeof l->dataset || strlen(ver) >= sizeof l->dataset_version)
        return cds_errf(err, "sweep '%s': the lease names no dataset, or one too long (%d bytes at most)", sweep,
                        (int)sizeof l->dataset - 1);
    snprintf(l->dataset, sizeof l->dataset, "%s", ds);
    snprintf(l->dataset_version, sizeof l->dataset_version, "%s", ver);
    if (keep_spec && !(l->spec = strdup(spec)))
        return cds_err_nomem(err, "out of memory reading the spec of model %d of sweep '%s'", l->model, sweep);
    return 0;
}

/* The lease script, for queue_mop_lease_model and queue_mop_lease_visit. */
static int lease_model(queue_conn *q, const char *sweep, int shard, const char *worker, int64_t lease_ms,
                       queue_mop_lease *l, int *sweep_done, int keep_spec, cds_err *err)
{
    if (sweep_done)
        *sweep_done = 0;
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    if (shard < 0)
        return cds_errf(err, "shard %d of sweep '%s' is negative", shard, sweep);
    if (!worker || !*worker)
        return cds_errf(err, "leasing from sweep '%s' needs a worker id", sweep);
    if (lease_ms < 1)
        return cds_errf(err, "lease of %lld ms is too short: use 1 ms or more", (long long)lease_ms);
    char token[QUEUE_TOKEN_MAX];
    if (cds_random_hex(token, (QUEUE_TOKEN_MAX - 1) / 2, err) != 0)
        return -1;
    qargs args = {0};
    qargs_addf(&args, "%d", shard);
    qargs_add(&args, worker);
    qargs_addf(&args, "%lld", (long long)lease_ms);
    qargs_add(&args, token);
    qargs keys = {0};
    qargs_key(&keys, q, "sweep:{%s}:ready", sweep); /* the hybrid's ready workers */
    redisReply *r = qmop_run_keys(q, QS_MOP_LEASE, sweep, &keys, &args, NULL, err);
    if (!r)
        return -1;
    if (qc_reply_is(r, 0, "bad_shard")) {
        long long k = qc_reply_int(r, 1);
        freeReplyObject(r);
        /* A worker serves shard k of every sweep; a sweep with fewer shards
         * simply has nothing for it. */
        if (shard >= 0)
            return 0;
        return cds_errf(err, "shard %d is not a shard of sweep '%s': it has shards 0 to %lld", shard, sweep,
                        k - 1);
    }
    if (qc_reply_is(r, 0, "waiting")) {
        freeReplyObject(r);
        return QUEUE_MOP_WAITING;
    }
    if (qc_reply_is(r, 0, "gang")) {
        freeReplyObject(r);
        return QUEUE_MOP_GANG;
    }
    if (qc_reply_is(r, 0, "none")) {
        if (sweep_done)
            *sweep_done = qc_reply_int(r, 1) != 0;
        freeReplyObject(r);
        return 0;
    }
    if (!qc_reply_is(r, 0, "leased") || r->elements != 12)
        return qmop_unexpected(r, "lease", err);
    memset(l, 0, sizeof *l);
    l->model = (int)qc_reply_int(r, 1);
    l->epoch = (int)qc_reply_int(r, 2);
    l->shard = shard;
    l->version = qc_reply_int(r, 3);
    qmop_copy_reply_str(l->ckpt, sizeof l->ckpt, r, 4);
    l->deadline_ms = qc_reply_int(r, 5);
    l->attempts = (int)qc_reply_int(r, 7);
    memcpy(l->token, token, sizeof l->token);
    int rc = visit_needs(r, sweep, keep_spec, l, err);
    freeReplyObject(r);
    if (rc != 0) {
        /* A lease the caller cannot use goes straight back, so the model
         * does not wait out its deadline. */
        cds_err e;
        queue_mop_release(q, sweep, l, &e);
        queue_mop_lease_clear(l);
        return -1;
    }
    return 1;
}

int queue_mop_lease_model(queue_conn *q, const char *sweep, int shard, const char *worker, int64_t lease_ms,
                          queue_mop_lease *l, int *sweep_done, cds_err *err)
{
    return lease_model(q, sweep, shard, worker, lease_ms, l, sweep_done, 0, err);
}

int queue_mop_lease_visit(queue_conn *q, const char *sweep, int shard, const char *worker, int64_t lease_ms,
                          queue_mop_lease *l, int *sweep_done, cds_err *err)
{
    return lease_model(q, sweep, shard, worker, lease_ms, l, sweep_done, 1, err);
}

void queue_mop_lease_clear(queue_mop_lease *l)
{
    free(l->spec);
    memset(l, 0, sizeof *l);
}

int queue_mop_model_spec(queue_conn *q, const char *sweep, int model, char **out, cds_err *err)
{
    return queue_mop_model_field(q, sweep, model, "spec", out, err);
}

int queue_mop_model_field(queue_conn *q, const char *sweep, int model, const char *field, char **out, cds_err *err)
{
    *out = NULL;
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs cmd = {0};
    qargs_add(&cmd, "HGET");
    qargs_key(&cmd, q, "sweep:{%s}:models", sweep);
    qargs_addf(&cmd, "%d.%s", model, field);
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    if (r->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        cds_errf(err, "sweep '%s' has no model %d under prefix %s", sweep, model, q->prefix);
        return QUEUE_NOT_FOUND;
    }
    *out = strdup(r->str);
    freeReplyObject(r);
    return *out ? 0 : cds_err_nomem(err, "out of memory reading the %s of model %d of sweep '%s'", field, model, sweep);
}

/* The model and token that name a lease to every script that ends it. */
static int lease_args(const char *sweep, const queue_mop_lease *l, qargs *args, cds_err *err)
{
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs_addf(args, "%d", l->model);
    qargs_add(args, l->token);
    return 0;
}

/* Why a lease is gone, for each kind. */
static void lease_gone(const char *sweep, const queue_mop_lease *l, cds_err *err)
{
    if (l->kind == QUEUE_MOP_TEST)
        cds_errf(err, "the test-scoring claim on sweep '%s' is gone (expired, and maybe taken over)", sweep);
    else if (l->kind == QUEUE_MOP_EVAL)
        cds_errf(err, "the evaluation of model %d epoch %d of sweep '%s' is gone (expired and put back)", l->model,
                 l->epoch, sweep);
    else if (l->kind == QUEUE_MOP_RANK)
        cds_errf(err, "gang %lld of model %d of sweep '%s' is gone (another rank ended it, it expired, or the model "
                      "was cancelled)", (long long)l->gang, l->model, sweep);
    else
        cds_errf(err, "lease of model %d of sweep '%s' is gone (expired, reaped or cancelled)", l->model, sweep);
}

/* Runs a script that ends or extends a lease of any kind (a visit, an
 * evaluation, the test scoring).  Returns 0 for the script's success word
 * (reply in *out, or freed when out is NULL), QUEUE_NOT_FOUND when the lease
 * is gone (the script's "lost", or the sweep itself is gone), -1 on error. */
int qmop_lease_script(queue_conn *q, int script, const char *sweep, const queue_mop_lease *l, qargs *args,
                        redisReply **out, cds_err *err)
{
    int missing;
    redisReply *r = qmop_run(q, script, sweep, args, &missing, err);
    if (!r)
        return missing ? QUEUE_NOT_FOUND : -1;
    if (qc_reply_is(r, 0, "lost")) {
        freeReplyObject(r);
        lease_gone(sweep, l, err);
        return QUEUE_NOT_FOUND;
    }
    *out = r;
    return 0;
}

int qmop_run_on_lease(queue_conn *q, int script, const char *what, const char *success,
                        const char *sweep, const queue_mop_lease *l, qargs *args, redisReply **out, cds_err *err)
{
    redisReply *r = NULL;
    int rc = qmop_lease_script(q, script, sweep, l, args, &r, err);
    if (rc != 0)
        return rc;
    if (!qc_reply_is(r, 0, success))
        return qmop_unexpected(r, what, err);
    if (out)
        *out = r;
    else
        freeReplyObject(r);
    return 0;
}

int queue_mop_renew_with_progress(queue_conn *q, const char *sweep, const queue_mop_lease *l, int64_t lease_ms,
                                  const char *progress, cds_err *err)
{
    qargs args = {0};
    if (l->kind == QUEUE_MOP_RANK)
        return qmop_gang_renew(q, sweep, l, lease_ms, progress, err);
    if (l->kind != QUEUE_MOP_VISIT)
        return qmop_renew_side_lease(q, sweep, l, lease_ms, err);
    if (lease_args(sweep, l, &args, err) != 0)
        return -1;
    qargs_addf(&args, "%lld", (long long)(lease_ms > 0 ? lease_ms : 1));
    qargs_add(&args, progress ? progress : "");
    return qmop_run_on_lease(q, QS_MOP_RENEW, "renew", "renewed", sweep, l, &args, NULL, err);
}

int queue_mop_renew(queue_conn *q, const char *sweep, const queue_mop_lease *l, int64_t lease_ms, cds_err *err)
{
    return queue_mop_renew_with_progress(q, sweep, l, lease_ms, NULL, err);
}

int queue_mop_commit(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *ckpt_path,
                     const char *metrics_json, queue_mop_commit_result *res, cds_err *err)
{
    memset(res, 0, sizeof *res);
    if (!ckpt_path || !*ckpt_path || strlen(ckpt_path) >= QUEUE_MOP_PATH_MAX)
        return cds_errf(err, "checkpoint path for model %d of sweep '%s' must be 1 to %d bytes", l->model,
                        sweep, QUEUE_MOP_PATH_MAX - 1);
    qargs args = {0};
    if (lease_args(sweep, l, &args, err) != 0)
        return -1;
    qargs_addf(&args, "%d", l->shard);
    qargs_add(&args, ckpt_path);
    qargs_add(&args, metrics_json ? metrics_json : "");
    return qmop_commit_script(q, QS_MOP_COMMIT, "commit", sweep, l, &args, res, err);
}

int qmop_commit_script(queue_conn *q, int script, const char *what, const char *sweep, const queue_mop_lease *l,
                       qargs *args, queue_mop_commit_result *res, cds_err *err)
{
    redisReply *r = NULL;
    int rc = qmop_run_on_lease(q, script, what, "committed", sweep, l, args, &r, err);
    if (rc == QUEUE_NOT_FOUND)
        return 0; /* refused: accepted stays 0 */
    if (rc != 0)
        return -1;
    if (r->elements != 5)
        return qmop_unexpected(r, what, err);
    res->accepted = 1;
    res->epoch_done = qc_reply_int(r, 1) != 0;
    res->model_done = qc_reply_int(r, 2) != 0;
    res->version = qc_reply_int(r, 3);
    qmop_copy_reply_str(res->superseded, sizeof res->superseded, r, 4);
    freeReplyObject(r);
    return 0;
}

int queue_mop_release(queue_conn *q, const char *sweep, const queue_mop_lease *l, cds_err *err)
{
    qargs args = {0};
    if (lease_args(sweep, l, &args, err) != 0)
        return -1;
    return qmop_run_on_lease(q, QS_MOP_RELEASE, "release", "released", sweep, l, &args, NULL, err);
}

int queue_mop_fail_visit(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *reason, int final,
                         const char *note, int *failed, int64_t *delay_ms, cds_err *err)
{
    if (failed)
        *failed = 0;
    if (delay_ms)
        *delay_ms = 0;
    qargs args = {0};
    if (lease_args(sweep, l, &args, err) != 0)
        return -1;
    qargs_add(&args, reason && *reason ? reason : "failed");
    qargs_add(&args, final ? "final" : "attempt");
    qargs_addf(&args, "%.6f", 0.5 + 0.5 * cds_random_unit());
    qargs_add(&args, note ? note : "");
    redisReply *r = NULL;
    int rc = qmop_lease_script(q, QS_MOP_FAIL, sweep, l, &args, &r, err);
    if (rc != 0)
        return rc;
    if (qc_reply_is(r, 0, "retry") && r->elements == 4) {
        if (delay_ms)
            *delay_ms = qc_reply_int(r, 3);
    } else if (qc_reply_is(r, 0, "failed")) {
        if (failed)
            *failed = 1;
    } else {
        return qmop_unexpected(r, "fail", err);
    }
    freeReplyObject(r);
    return 0;
}

