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
 * queue script. */
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
static redisReply *mop_run_keys(queue_conn *q, int script, const char *sweep, qargs *extra_keys, qargs *args,
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

static redisReply *mop_run(queue_conn *q, int script, const char *sweep, qargs *args, int *missing,
                           cds_err *err)
{
    return mop_run_keys(q, script, sweep, NULL, args, missing, err);
}

static int unexpected(redisReply *r, const char *what, cds_err *err)
{
    const char *s = qc_reply_str(r, 0);
    cds_errf(err, "unexpected answer '%s' from the sweep %s script", s ? s : "?", what);
    freeReplyObject(r);
    return -1;
}

static void copy_reply_str(char *dst, size_t n, const redisReply *r, size_t i)
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
                         strspn(d->plans[m], "0123456789") != strlen(d->plans[m])))
            return cds_errf(err, "sweep '%s': the plan of model %d must be %d shard numbers of 4 digits", d->id, m,
                            d->epochs * d->shards);
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
    redisReply *r = mop_run_keys(q, QS_MOP_CREATE, d->id, d->unique ? &keys : NULL, &args, NULL, err);
    if (!r)
        return -1;
    int rc = 0;
    if (qc_reply_is(r, 0, "exists")) {
        rc = cds_errf(err, "sweep '%s' already exists under prefix %s: choose another id", d->id, q->prefix);
    } else if (qc_reply_is(r, 0, "duplicate")) {
        if (duplicate_of)
            copy_reply_str(duplicate_of, QUEUE_SWEEP_ID_MAX, r, 1);
        rc = QUEUE_MOP_DUPLICATE;
    } else if (qc_reply_is(r, 0, "changed")) {
        *changed = 1;
        rc = -1;
    } else if (!qc_reply_is(r, 0, "created")) {
        return unexpected(r, "create", err);
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
    redisReply *r = mop_run(q, QS_MOP_STATE, sweep, &args, &missing, err);
    if (!r)
        return missing ? QUEUE_NOT_FOUND : -1;
    int rc = 0;
    if (qc_reply_is(r, 0, "final"))
        rc = cds_errf(err, "sweep '%s' is %s: it cannot be set to %s", sweep, qc_reply_str(r, 1), state);
    else if (!qc_reply_is(r, 0, "ok"))
        return unexpected(r, "state", err);
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
    redisReply *r = mop_run(q, QS_MOP_MODEL, sweep, &args, &missing, err);
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
        return unexpected(r, "model", err);
    }
    freeReplyObject(r);
    return rc;
}

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
    redisReply *r = mop_run(q, QS_MOP_LEASE, sweep, &args, NULL, err);
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
    if (qc_reply_is(r, 0, "none")) {
        if (sweep_done)
            *sweep_done = qc_reply_int(r, 1) != 0;
        freeReplyObject(r);
        return 0;
    }
    if (!qc_reply_is(r, 0, "leased") || r->elements != 12)
        return unexpected(r, "lease", err);
    memset(l, 0, sizeof *l);
    l->model = (int)qc_reply_int(r, 1);
    l->epoch = (int)qc_reply_int(r, 2);
    l->shard = shard;
    l->version = qc_reply_int(r, 3);
    copy_reply_str(l->ckpt, sizeof l->ckpt, r, 4);
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
    else
        cds_errf(err, "lease of model %d of sweep '%s' is gone (expired, reaped or cancelled)", l->model, sweep);
}

/* Runs a script that ends or extends a lease of any kind (a visit, an
 * evaluation, the test scoring).  Returns 0 for the script's success word
 * (reply in *out, or freed when out is NULL), QUEUE_NOT_FOUND when the lease
 * is gone (the script's "lost", or the sweep itself is gone), -1 on error. */
static int lease_script(queue_conn *q, int script, const char *sweep, const queue_mop_lease *l, qargs *args,
                        redisReply **out, cds_err *err)
{
    int missing;
    redisReply *r = mop_run(q, script, sweep, args, &missing, err);
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

static int run_on_lease(queue_conn *q, int script, const char *what, const char *success,
                        const char *sweep, const queue_mop_lease *l, qargs *args, redisReply **out, cds_err *err)
{
    redisReply *r = NULL;
    int rc = lease_script(q, script, sweep, l, args, &r, err);
    if (rc != 0)
        return rc;
    if (!qc_reply_is(r, 0, success))
        return unexpected(r, what, err);
    if (out)
        *out = r;
    else
        freeReplyObject(r);
    return 0;
}

/* A finished sweep frees its unique key, if it still names it, so that the
 * next cron enqueue with the key makes a new sweep (mop_create also takes
 * over a key whose sweep finished, should this never run). */
static int free_unique_key(queue_conn *q, const char *sweep, cds_err *err)
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

/* ---- evaluation and test leases ------------------------------------------ */

static int renew_side_lease(queue_conn *q, const char *sweep, const queue_mop_lease *l, int64_t lease_ms,
                            cds_err *err)
{
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs args = {0};
    qargs_add(&args, l->token);
    qargs_addf(&args, "%lld", (long long)(lease_ms > 0 ? lease_ms : 1));
    return run_on_lease(q, l->kind == QUEUE_MOP_TEST ? QS_MOP_TEST_RENEW : QS_MOP_EVAL_RENEW,
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
    return mop_run(q, script, sweep, &args, NULL, err);
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
        return unexpected(r, "eval_take", err);
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
    int rc = run_on_lease(q, QS_MOP_EVAL_END, "eval_end", "ended", sweep, l, &args, &r, err);
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
    r = mop_run_keys(q, QS_MOP_RESULT, sweep, row ? &outbox : NULL, &args, &missing, err);
    if (!r)
        return missing ? QUEUE_NOT_FOUND : -1;
    if (qc_reply_is(r, 0, "lost")) {
        freeReplyObject(r);
        cds_errf(err, "the evaluation of model %d epoch %d of sweep '%s' was lost (expired and put back): its "
                      "result is not recorded", l->model, l->epoch, sweep);
        return QUEUE_NOT_FOUND;
    }
    if ((!qc_reply_is(r, 0, "best") && !qc_reply_is(r, 0, "kept")) || r->elements != 2)
        return unexpected(r, "result", err);
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
        return unexpected(r, "test_claim", err);
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
    int rc = run_on_lease(q, QS_MOP_TEST_RECORD, "test_record", "recorded", sweep, l, &args, NULL, err);
    return rc == 0 ? free_unique_key(q, sweep, err) : rc;
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
    int rc = lease_script(q, QS_MOP_TEST_FAIL, sweep, l, &args, &r, err);
    if (rc != 0)
        return rc;
    if (!qc_reply_is(r, 0, "retry") && !qc_reply_is(r, 0, "failed"))
        return unexpected(r, "test_fail", err);
    int final = qc_reply_is(r, 0, "failed");
    if (failed)
        *failed = final;
    freeReplyObject(r);
    return final ? free_unique_key(q, sweep, err) : 0;
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
    redisReply *r = mop_run(q, QS_MOP_RETRY, sweep, &args, &missing, err);
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
        return unexpected(r, "retry", err);
    }
    freeReplyObject(r);
    return rc;
}

int queue_mop_renew_with_progress(queue_conn *q, const char *sweep, const queue_mop_lease *l, int64_t lease_ms,
                                  const char *progress, cds_err *err)
{
    qargs args = {0};
    if (l->kind != QUEUE_MOP_VISIT)
        return renew_side_lease(q, sweep, l, lease_ms, err);
    if (lease_args(sweep, l, &args, err) != 0)
        return -1;
    qargs_addf(&args, "%lld", (long long)(lease_ms > 0 ? lease_ms : 1));
    qargs_add(&args, progress ? progress : "");
    return run_on_lease(q, QS_MOP_RENEW, "renew", "renewed", sweep, l, &args, NULL, err);
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
    redisReply *r = NULL;
    int rc = run_on_lease(q, QS_MOP_COMMIT, "commit", "committed", sweep, l, &args, &r, err);
    if (rc == QUEUE_NOT_FOUND)
        return 0; /* refused: accepted stays 0 */
    if (rc != 0)
        return -1;
    if (r->elements != 5)
        return unexpected(r, "commit", err);
    res->accepted = 1;
    res->epoch_done = qc_reply_int(r, 1) != 0;
    res->model_done = qc_reply_int(r, 2) != 0;
    res->version = qc_reply_int(r, 3);
    copy_reply_str(res->superseded, sizeof res->superseded, r, 4);
    freeReplyObject(r);
    return 0;
}

int queue_mop_release(queue_conn *q, const char *sweep, const queue_mop_lease *l, cds_err *err)
{
    qargs args = {0};
    if (lease_args(sweep, l, &args, err) != 0)
        return -1;
    return run_on_lease(q, QS_MOP_RELEASE, "release", "released", sweep, l, &args, NULL, err);
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
    int rc = lease_script(q, QS_MOP_FAIL, sweep, l, &args, &r, err);
    if (rc != 0)
        return rc;
    if (qc_reply_is(r, 0, "retry") && r->elements == 4) {
        if (delay_ms)
            *delay_ms = qc_reply_int(r, 3);
    } else if (qc_reply_is(r, 0, "failed")) {
        if (failed)
            *failed = 1;
    } else {
        return unexpected(r, "fail", err);
    }
    freeReplyObject(r);
    return 0;
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
    redisReply *r = mop_run(q, QS_MOP_REAP, sweep, &args, &missing, err);
    if (!r)
        return missing ? QUEUE_NOT_FOUND : -1;
    if (!qc_reply_is(r, 0, "reaped") || r->elements != 4)
        return unexpected(r, "reap", err);
    *n = (int)qc_reply_int(r, 1);
    if (evals)
        *evals = (int)qc_reply_int(r, 2);
    int left = qc_reply_int(r, 3) != 0;
    freeReplyObject(r);
    return left ? free_unique_key(q, sweep, err) : 0;
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
        redisReply *e = mop_run(q, QS_MOP_ENROLL, ids[i], &args, &missing, err);
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
