/* Model Hopper Parallelism in Redis (DESIGN.md §5; the API and the keys are
 * described in queue_mop.h, the keys also in docs/redis-keys.md).
 *
 * Every state change of a sweep is one Lua script (queue/lua/mop_*.lua) over
 * the same six keys, so it is atomic and takes its time from the server:
 *   create   the sweep hash, every model idle at epoch 0, version 0;
 *   lease    picks, for a free worker serving shard k, the idle model with
 *            the least progress that has not visited k in its epoch, and
 *            leases it (token, deadline);
 *   renew    moves the deadline while the lease holds;
 *   commit   publishes the visit's checkpoint while the lease holds, appends
 *            the visit to the schedule, queues an evaluation at the end of an
 *            epoch and finishes the model after its last epoch;
 *   release  gives the model back without a visit; fail marks it failed;
 *   reap     frees every lease whose deadline passed (the only place that
 *            frees an expired lease, so "expired" is decided in one script),
 *            puts expired evaluations back, and takes a finished sweep out
 *            of the active set;
 *   state    pauses, resumes or cancels the sweep; model does the same for
 *            one model (its pause is a flag beside its state);
 *   eval_take, eval_renew, result, eval_end
 *            lease a finished epoch for evaluation, renew it, record its
 *            result (ending the lease), or give it back / drop it;
 *   test_claim, test_renew, test_record
 *            the same for the test scoring of a done sweep, on its hash;
 *   enroll   builds the active set once for sweeps made before it existed.
 * Invariants the scripts keep: a model has at most one lease token at a
 * time, and a token is written only by lease and cleared by every script that
 * ends the lease, so a worker whose lease ended (expired, reaped, cancelled)
 * can neither renew nor commit; a lease holds iff the model is leased with
 * that token and now <= deadline, judged the same way by renew, commit and
 * reap; visited[k] is set only by a commit for shard k, and lease never hands
 * out a shard already visited in the model's epoch, so each (model, epoch,
 * shard) is committed exactly once; the sweep's `live` counts the models not
 * done, failed or cancelled, and the sweep is done when it reaches 0.  An
 * evaluation or test lease holds iff its token is in place and now <=
 * deadline, judged the same way by its renew, its record and the reaper.
 *
 * The scripts are called by SHA1 through the connection's table
 * (queue_int.h, qc_eval), with the same NOSCRIPT recovery as every other
 * queue script.
 *
 * The module is three files: this one runs the scripts on a sweep's keys
 * (qmop_run, shared by the others) and holds what the control side calls:
 * create, the sweep's and a model's state, retry, reap, the active set and
 * the wait; queue_mop_lease.c the worker's visits (lease, renew, commit,
 * release, a failed visit); queue_mop_eval.c the evaluation and test-scoring
 * leases. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "queue_int.h"
#include "queue_mop.h"

/* Bounds on a sweep's shape.  The lease and reap scripts scan every model
 * (about 2 ms per thousand models, during which Redis serves nobody else), so
 * the model count is kept where a lease stays in the tens of milliseconds. */
#define MOP_SHARDS_MAX 4096
#define MOP_MODELS_MAX 10000
#define MOP_EPOCHS_MAX 100000
/* The longest a wait blocks (hiredis 0.14 cannot be interrupted). */
#define MOP_WAIT_MAX_MS 1000

/* The nine keys every MOP script takes, in the order the scripts expect. */
static void add_sweep_keys(qargs *keys, const queue_conn *q, const char *sweep)
{
    qargs_key(keys, q, "sweep:{%s}", sweep);
    qargs_key(keys, q, "sweep:{%s}:models", sweep);
    qargs_key(keys, q, "sweep:{%s}:schedule", sweep);
    qargs_key(keys, q, "sweep:{%s}:evals", sweep);
    qargs_key(keys, q, "sweeps");
    qargs_key(keys, q, "mop:wake");
    qargs_key(keys, q, "sweep:{%s}:evaling", sweep);
    qargs_key(keys, q, "sweep:{%s}:results", sweep);
    qargs_key(keys, q, "sweeps:active");
}

/* Runs a MOP script on a sweep's keys with args; frees args.  A reply that is
 * not an array is an error; so is the script's {'missing'} (no such sweep),
 * which also sets *missing when the caller passes it. */
redisReply *qmop_run_keys(queue_conn *q, int script, const char *sweep, qargs *extra_keys, qargs *args,
                                int *missing, cds_err *err)
{
    if (missing)
        *missing = 0;
    qargs keys = {0};
    add_sweep_keys(&keys, q, sweep);
    qargs_append(&keys, extra_keys);
    if (extra_keys)
        qargs_free(extra_keys);
    redisReply *r = qc_run(q, script, &keys, args, err);
    if (!r)
        return NULL;
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0 || !qc_reply_str(r, 0)) {
        freeReplyObject(r);
        cds_errf(err, "unexpected reply from a sweep script at %s", q->url_redacted);
        return NULL;
    }
    if (qc_reply_is(r, 0, "missing")) {
        freeReplyObject(r);
        if (missing)
            *missing = 1;
        cds_errf(err, "no sweep '%s' under prefix %s (see the list of sweeps)", sweep, q->prefix);
        return NULL;
    }
    return r;
}

redisReply *qmop_run(queue_conn *q, int script, const char *sweep, qargs *args, int *missing,
                           cds_err *err)
{
    return qmop_run_keys(q, script, sweep, NULL, args, missing, err);
}

int qmop_unexpected(redisReply *r, const char *what, cds_err *err)
{
    const char *s = qc_reply_str(r, 0);
    cds_errf(err, "unexpected answer '%s' from the sweep %s script", s ? s : "?", what);
    freeReplyObject(r);
    return -1;
}

void qmop_copy_reply_str(char *dst, size_t n, const redisReply *r, size_t i)
{
    const char *s = qc_reply_str(r, i);
    snprintf(dst, n, "%s", s ? s : "");
}

/* ---- create -------------------------------------------------------------- */

static int check_json(const char *text, const char *what, cds_err *err)
{
    json_error_t je;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &je);
    if (!j)
        return cds_errf(err, "%s is not valid JSON: %s at line %d column %d", what, je.text, je.line, je.column);
    json_decref(j);
    return 0;
}

static int check_sweep_def(const queue_sweep_def *d, cds_err *err)
{
    if (queue_sweep_id_check(d->id, err) != 0)
        return -1;
    if (!d->dataset || !*d->dataset || !d->dataset_version)
        return cds_errf(err, "sweep '%s' names no dataset: give the dataset and its version", d->id);
    if (d->shards < 1 || d->shards > MOP_SHARDS_MAX)
        return cds_errf(err, "sweep '%s': %d shards is out of range: use 1 to %d", d->id, d->shards,
                        MOP_SHARDS_MAX);
    if (d->epochs < 1 || d->epochs > MOP_EPOCHS_MAX)
        return cds_errf(err, "sweep '%s': %d epochs is out of range: use 1 to %d", d->id, d->epochs,
                        MOP_EPOCHS_MAX);
    if (d->models < 1 || d->models > MOP_MODELS_MAX)
        return cds_errf(err, "sweep '%s': %d models is out of range: use 1 to %d", d->id, d->models,
                        MOP_MODELS_MAX);
    if (d->mode && strcmp(d->mode, "mop") != 0 && strcmp(d->mode, "ddp") != 0 && strcmp(d->mode, "ma") != 0)
        return cds_errf(err, "sweep '%s': mode '%s' is not one of mop, ddp, ma", d->id, d->mode);
    if (!d->model_specs)
        return cds_errf(err, "sweep '%s' has no model specs: give one per model", d->id);
    if (d->spec_json && check_json(d->spec_json, "the sweep spec", err) != 0)
        return -1;
    for (int m = 0; m < d->models; m++) {
        char what[64];
        snprintf(what, sizeof what, "the spec of model %d", m);
        if (!d->model_specs[m])
            return cds_errf(err, "sweep '%s': %s is missing", d->id, what);
        if (check_json(d->model_specs[m], what, err) != 0)
            return -1;
        if (d->plans && (!d->plans[m] || strlen(d->plans[m]) != (size_t)d->epochs * d->shards * 4 ||
                         strspn(d->plans[m], "0123456789h") != strlen(d->plans[m])))
            return cds_errf(err, "sweep '%s': the plan of model %d must be %d shard numbers of 4 digits (or a "
                            "hybrid gang's \"h\" and W)", d->id, m, d->epochs * d->shards);
    }
    return 0;
}

/* The sweep a unique key names now ("" when none): read before the create
 * script, which is handed that sweep's hash as a key and refuses to go on
 * if the key moved meanwhile. */
static int unique_holder(queue_conn *q, const char *unique, char *holder, size_t n, cds_err *err)
{
    qargs cmd = {0};
    qargs_add(&cmd, "GET");
    qargs_key(&cmd, q, "sweeps:unique:%s", unique);
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    snprintf(holder, n, "%s", r->type == REDIS_REPLY_STRING && queue_sweep_id_check(r->str, NULL) == 0 ? r->str : "");
    freeReplyObject(r);
    return 0;
}

static int create_once(queue_conn *q, const queue_sweep_def *d, char *duplicate_of, int *changed, cds_err *err)
{
    *changed = 0;
    char holder[QUEUE_SWEEP_ID_MAX] = "";
    qargs keys = {0};
    if (d->unique) {
        if (unique_holder(q, d->unique, holder, sizeof holder, err) != 0)
            return -1;
        qargs_key(&keys, q, "sweeps:unique:%s", d->unique);
        qargs_key(&keys, q, "sweep:{%s}", holder[0] ? holder : d->id);
    }
    qargs args = {0};
    qargs_add(&args, d->id);
    qargs_add(&args, d->dataset);
    qargs_add(&args, d->dataset_version);
    qargs_addf(&args, "%d", d->shards);
    qargs_addf(&args, "%d", d->epochs);
    qargs_addf(&args, "%d", d->models);
    qargs_add(&args, d->spec_json ? d->spec_json : "{}");
    qargs_add(&args, d->replay_of ? d->replay_of : "");
    for (int m = 0; m < d->models; m++)
        qargs_add(&args, d->model_specs[m]);
    /* Plans (or as many empty ones) come before max_stalls, at a fixed place. */
    for (int m = 0; m < d->models; m++)
        qargs_add(&args, d->plans ? d->plans[m] : "");
    qargs_addf(&args, "%d", d->max_stalls > 0 ? d->max_stalls : 10);
    qargs_addf(&args, "%d", d->max_attempts > 0 ? d->max_attempts : 5);
    qargs_addf(&args, "%lld", (long long)(d->backoff_base_ms > 0 ? d->backoff_base_ms : 1000));
    qargs_addf(&args, "%lld", (long long)(d->backoff_cap_ms > 0 ? d->backoff_cap_ms : 60000));
    qargs_add(&args, d->unique ? d->unique : "");
    qargs_add(&args, holder);
    qargs_add(&args, d->mode ? d->mode : "mop");
    qargs_add(&args, d->early_stop ? d->early_stop : "");
    qargs_add(&args, d->search ? d->search : "");
    qargs_addf(&args, "%d", d->trials > 0 ? d->trials : d->models);
    for (int m = 0; m < d->models; m++)
        qargs_add(&args, d->points ? d->points[m] : "");
    qargs_add(&args, d->hybrid ? "1" : "0");
    redisReply *r = qmop_run_keys(q, QS_MOP_CREATE, d->id, d->unique ? &keys : NULL, &args, NULL, err);
    if (!r)
        return -1;
    int rc = 0;
    if (qc_reply_is(r, 0, "exists")) {
        rc = cds_errf(err, "sweep '%s' already exists under prefix %s: choose another id", d->id, q->prefix);
    } else if (qc_reply_is(r, 0, "duplicate")) {
        if (duplicate_of)
            qmop_copy_reply_str(duplicate_of, QUEUE_SWEEP_ID_MAX, r, 1);
        rc = QUEUE_MOP_DUPLICATE;
    } else if (qc_reply_is(r, 0, "changed")) {
        *changed = 1;
        rc = -1;
    } else if (!qc_reply_is(r, 0, "created")) {
        return qmop_unexpected(r, "create", err);
    }
    freeReplyObject(r);
    return rc;
}

int queue_sweep_create(queue_conn *q, const queue_sweep_def *d, char *duplicate_of, cds_err *err)
{
    if (duplicate_of)
        duplicate_of[0] = '\0';
    if (check_sweep_def(d, err) != 0)
        return -1;
    if (d->unique && !qc_name_ok(d->unique, QUEUE_NAME_MAX))
        return cds_errf(err, "bad unique key '%s': use up to %d of [A-Za-z0-9._-]", d->unique, QUEUE_NAME_MAX - 1);
    /* The key moves only when a sweep is created with it: a few tries. */
    for (int i = 0; i < 8; i++) {
        int changed;
        int rc = create_once(q, d, duplicate_of, &changed, err);
        if (!changed)
            return rc;
    }
    return cds_errf(err, "unique key '%s' keeps changing hands: try again", d->unique);
}

int queue_sweep_set_state(queue_conn *q, const char *sweep, const char *state, cds_err *err)
{
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    if (!state || (strcmp(state, "running") != 0 && strcmp(state, "paused") != 0 &&
                   strcmp(state, "cancelled") != 0))
        return cds_errf(err, "cannot set sweep '%s' to '%s': use running, paused or cancelled", sweep,
                        state ? state : "");
    qargs args = {0};
    qargs_add(&args, state);
    int missing;
    redisReply *r = qmop_run(q, QS_MOP_STATE, sweep, &args, &missing, err);
    if (!r)
        return missing ? QUEUE_NOT_FOUND : -1;
    int rc = 0;
    if (qc_reply_is(r, 0, "final"))
        rc = cds_errf(err, "sweep '%s' is %s: it cannot be set to %s", sweep, qc_reply_str(r, 1), state);
    else if (!qc_reply_is(r, 0, "ok"))
        return qmop_unexpected(r, "state", err);
    freeReplyObject(r);
    return rc;
}

int queue_mop_set_model_state(queue_conn *q, const char *sweep, int model, const char *state, char *previous,
                              cds_err *err)
{
    if (previous)
        previous[0] = '\0';
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    if (!state || (strcmp(state, "running") != 0 && strcmp(state, "paused") != 0 &&
                   strcmp(state, "cancelled") != 0))
        return cds_errf(err, "cannot set model %d of sweep '%s' to '%s': use running, paused or cancelled", model,
                        sweep, state ? state : "");
    if (model < 0)
        return cds_errf(err, "model %d of sweep '%s': a model index is 0 or more (see jobctl status %s)", model,
                        sweep, sweep);
    qargs args = {0};
    qargs_addf(&args, "%d", model);
    qargs_add(&args, state);
    qargs_add(&args, "cancelled by jobctl");
    int missing;
    redisReply *r = qmop_run(q, QS_MOP_MODEL, sweep, &args, &missing, err);
    if (!r)
        return missing ? QUEUE_NOT_FOUND : -1;
    int rc = 0;
    const char *what = strcmp(state, "running") == 0 ? "resumed" : strcmp(state, "paused") == 0 ? "paused" : "cancelled";
    if (qc_reply_is(r, 0, "ok")) {
        if (previous)
            snprintf(previous, 16, "%s", qc_reply_str(r, 1) ?: "");
    } else if (qc_reply_is(r, 0, "no_model")) {
        long long m = atoll(qc_reply_str(r, 1) ?: "0");
        cds_errf(err, "sweep '%s' has no model %d: its models are 0 to %lld (see jobctl status %s)", sweep, model,
                 m - 1, sweep);
        rc = QUEUE_NOT_FOUND;
    } else if (qc_reply_is(r, 0, "final")) {
        rc = cds_errf(err, "model %d of sweep '%s' is %s: it cannot be %s (only an idle, leased or paused model can)",
                      model, sweep, qc_reply_str(r, 1) ?: "?", what);
    } else if (qc_reply_is(r, 0, "not_paused")) {
        rc = cds_errf(err, "model %d of sweep '%s' is %s, not paused: nothing to resume (jobctl resume %s resumes "
                           "the sweep)", model, sweep, qc_reply_str(r, 1) ?: "?", sweep);
    } else {
        return qmop_unexpected(r, "model", err);
    }
    freeReplyObject(r);
    return rc;
}

/* A finished sweep frees its unique key, if it still names it, so that the
 * next cron enqueue with the key makes a new sweep (mop_create also takes
 * over a key whose sweep finished, should this never run). */
int qmop_free_unique_key(queue_conn *q, const char *sweep, cds_err *err)
{
    qargs cmd = {0};
    qargs_add(&cmd, "HGET");
    qargs_key(&cmd, q, "sweep:{%s}", sweep);
    qargs_add(&cmd, "unique");
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    char unique[QUEUE_NAME_MAX] = "";
    if (r->type == REDIS_REPLY_STRING && qc_name_ok(r->str, QUEUE_NAME_MAX))
        snprintf(unique, sizeof unique, "%s", r->str);
    freeReplyObject(r);
    if (!unique[0])
        return 0;
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "sweeps:unique:%s", unique);
    qargs_add(&args, sweep);
    if (!(r = qc_run(q, QS_UNLOCK, &keys, &args, err)))
        return -1;
    freeReplyObject(r);
    return 0;
}

int queue_mop_retry_model(queue_conn *q, const char *sweep, int model, const char *from_path, int from_epoch,
                          int64_t from_version, int *epoch, cds_err *err)
{
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    if (model < 0)
        return cds_errf(err, "model %d of sweep '%s': a model index is 0 or more (see jobctl status %s)", model,
                        sweep, sweep);
    if (from_path && (!*from_path || strlen(from_path) >= QUEUE_MOP_PATH_MAX))
        return cds_errf(err, "checkpoint path to retry model %d of sweep '%s' from must be 1 to %d bytes", model,
                        sweep, QUEUE_MOP_PATH_MAX - 1);
    qargs args = {0};
    qargs_addf(&args, "%d", model);
    qargs_add(&args, sweep);
    qargs_add(&args, from_path ? from_path : "");
    qargs_addf(&args, "%d", from_epoch);
    qargs_addf(&args, "%lld", (long long)from_version);
    int missing;
    redisReply *r = qmop_run(q, QS_MOP_RETRY, sweep, &args, &missing, err);
    if (!r)
        return missing ? QUEUE_NOT_FOUND : -1;
    int rc = 0;
    if (qc_reply_is(r, 0, "retried")) {
        if (epoch)
            *epoch = (int)qc_reply_int(r, 1);
    } else if (qc_reply_is(r, 0, "no_model")) {
        cds_errf(err, "sweep '%s' has no model %d: its models are 0 to %lld (see jobctl status %s)", sweep, model,
                 qc_reply_int(r, 1) - 1, sweep);
        rc = QUEUE_NOT_FOUND;
    } else if (qc_reply_is(r, 0, "not_failed")) {
        rc = cds_errf(err, "model %d of sweep '%s' is %s, not failed: only a failed model is retried", model, sweep,
                      qc_reply_str(r, 1) ?: "?");
    } else if (qc_reply_is(r, 0, "cancelled")) {
        rc = cds_errf(err, "sweep '%s' is cancelled: nothing in it is retried (enqueue the sweep again)", sweep);
    } else if (qc_reply_is(r, 0, "newer")) {
        rc = cds_errf(err, "version %lld is newer than model %d's committed version %s: retry from a kept older "
                           "checkpoint or the committed one", (long long)from_version, model,
                      qc_reply_str(r, 1) ?: "?");
    } else if (qc_reply_is(r, 0, "finished")) {
        rc = cds_errf(err, "that checkpoint ended epoch %d, the sweep's last: nothing is left to train from it",
                      from_epoch);
    } else {
        return qmop_unexpected(r, "retry", err);
    }
    freeReplyObject(r);
    return rc;
}

int queue_mop_reap(queue_conn *q, const char *sweep, int *n, int *evals, cds_err *err)
{
    *n = 0;
    if (evals)
        *evals = 0;
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs args = {0};
    qargs_add(&args, sweep);
    int missing;
    redisReply *r = qmop_run(q, QS_MOP_REAP, sweep, &args, &missing, err);
    if (!r)
        return missing ? QUEUE_NOT_FOUND : -1;
    if (!qc_reply_is(r, 0, "reaped") || r->elements != 4)
        return qmop_unexpected(r, "reap", err);
    *n = (int)qc_reply_int(r, 1);
    if (evals)
        *evals = (int)qc_reply_int(r, 2);
    int left = qc_reply_int(r, 3) != 0;
    freeReplyObject(r);
    return left ? qmop_free_unique_key(q, sweep, err) : 0;
}

/* ---- the active set ---------------------------------------------------------- */

/* Builds the active set from the index of every sweep, once per deployment
 * (the marker key says it was done): sweeps made by a version that kept no
 * active set would otherwise never be looked at again. */
static int build_active_set(queue_conn *q, cds_err *err)
{
    qargs cmd = {0};
    qargs_add(&cmd, "EXISTS");
    qargs_key(&cmd, q, "sweeps:active:built");
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    int built = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    if (built)
        return 0;
    char **ids = NULL;
    size_t n = 0;
    if (queue_sweep_list(q, &ids, &n, err) != 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (!queue_sweep_id_check(ids[i], NULL) == 0)
            continue;
        qargs args = {0};
        qargs_add(&args, ids[i]);
        int missing;
        redisReply *e = qmop_run(q, QS_MOP_ENROLL, ids[i], &args, &missing, err);
        if (e)
            freeReplyObject(e);
        else if (!missing)
            rc = -1;
    }
    queue_sweep_list_free(ids, n);
    if (rc != 0)
        return -1;
    qargs set = {0};
    qargs_add(&set, "SET");
    qargs_key(&set, q, "sweeps:active:built");
    qargs_add(&set, "1");
    return qc_do(q, &set, err);
}

int queue_sweep_list_active(queue_conn *q, char ***ids, size_t *n, cds_err *err)
{
    *ids = NULL;
    *n = 0;
    if (build_active_set(q, err) != 0)
        return -1;
    return qc_sorted_set(q, "sweeps:active", ids, n, "the active sweeps", err);
}

int queue_mop_wait(queue_conn *q, int timeout_ms, cds_err *err)
{
    /* hiredis 0.14 cannot be interrupted by a signal, so a wait never blocks
     * longer than a second; and never as long as the reply timeout, which
     * would mark the connection broken. */
    if (timeout_ms > MOP_WAIT_MAX_MS)
        timeout_ms = MOP_WAIT_MAX_MS;
    if (timeout_ms > q->timeout_ms / 2)
        timeout_ms = q->timeout_ms / 2;
    if (timeout_ms <= 0)
        return 0;
    qargs cmd = {0};
    qargs_add(&cmd, "BLPOP");
    qargs_key(&cmd, q, "mop:wake");
    qargs_addf(&cmd, "%.3f", timeout_ms / 1000.0);
    return qc_do(q, &cmd, err);
}
