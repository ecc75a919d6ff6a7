/* Model Hopper Parallelism sweeps (queue_mop.h) against a real redis-server:
 * creation and its refusals, a full single-threaded sweep driven by two
 * simulated workers, lost leases (expiry, reap, late commits), failed models,
 * pause and cancel of the sweep and of single models, evaluations and the
 * test scoring as leases (taken, expired, reaped, taken over, late records
 * refused), the active set of sweeps (who leaves it when, and its one-off
 * rebuild), the wake-up list, and the invariants under concurrency:
 * four threads, each its own connection, lease and commit at random with
 * releases and simulated crashes, after which every (model, epoch, shard) must
 * have been committed exactly once and no model held by two workers at once;
 * the one sweep-id check that every call applies; drawing sweep ids; a
 * replay's plans from the original's schedule; the lease that carries the
 * dataset, shard count and spec a visit needs; last, that the MOP
 * scripts are in the connection's EVALSHA table (loaded
 * at connect, reloaded after a SCRIPT FLUSH).
 *
 * Redis state is read back with a plain hiredis connection, as an operator
 * with redis-cli would.  Leases meant to expire are short (150 ms) and waited
 * out with a margin; leases meant to hold are long (5 s) so a slow machine
 * cannot lose them by accident. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "cds_util.h"
#include "queue_mop.h"
#include "testutil.h"

static char prefix[64];

#define HOLD_MS 5000  /* a lease that must not expire during a test */
#define SHORT_MS 150  /* a lease that is meant to expire */
#define EXPIRE_WAIT_MS 400 /* waiting out a SHORT_MS lease: 250 ms of margin for a loaded machine */

/* ---- reading Redis as redis-cli would ------------------------------------ */

/* A field of the sweep hash ("" when absent), into buf. */
static const char *sweep_field(redisContext *c, const char *sweep, const char *field, char *buf, size_t n)
{
    redisReply *r = test_rcmd(c, "HGET %ssweep:{%s} %s", prefix, sweep, field);
    snprintf(buf, n, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
    return buf;
}

static const char *model_field(redisContext *c, const char *sweep, int m, const char *field, char *buf, size_t n)
{
    redisReply *r = test_rcmd(c, "HGET %ssweep:{%s}:models %d.%s", prefix, sweep, m, field);
    snprintf(buf, n, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
    return buf;
}

static int sweep_is(redisContext *c, const char *sweep, const char *field, const char *want)
{
    char buf[256];
    int same = strcmp(sweep_field(c, sweep, field, buf, sizeof buf), want) == 0;
    if (!same)
        printf("# sweep %s field %s is '%s', want '%s'\n", sweep, field, buf, want);
    return same;
}

static int model_is(redisContext *c, const char *sweep, int m, const char *field, const char *want)
{
    char buf[256];
    int same = strcmp(model_field(c, sweep, m, field, buf, sizeof buf), want) == 0;
    if (!same)
        printf("# sweep %s model %d field %s is '%s', want '%s'\n", sweep, m, field, buf, want);
    return same;
}

static long long list_len(redisContext *c, const char *key_suffix, const char *sweep)
{
    redisReply *r = sweep ? test_rcmd(c, "LLEN %ssweep:{%s}:%s", prefix, sweep, key_suffix)
                          : test_rcmd(c, "LLEN %s%s", prefix, key_suffix);
    long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return n;
}

/* ---- sweeps -------------------------------------------------------------- */

#define MAX_MODELS 8
#define MAX_EPOCHS 4
#define MAX_SHARDS 4

static const char *const model_specs[MAX_MODELS] = {
    "{\"model\":\"m0\"}", "{\"model\":\"m1\"}", "{\"model\":\"m2\"}", "{\"model\":\"m3\"}",
    "{\"model\":\"m4\"}", "{\"model\":\"m5\"}", "{\"model\":\"m6\"}", "{\"model\":\"m7\"}"};

static queue_sweep_def sweep_def(const char *id, int models, int shards, int epochs)
{
    queue_sweep_def d = {.id = id, .dataset = "mnist", .dataset_version = "v1", .shards = shards,
                         .epochs = epochs, .models = models, .model_specs = model_specs,
                         .spec_json = "{\"grid\":{\"lr\":[0.1,0.01]}}"};
    return d;
}

static void create_sweep(queue_conn *q, const char *id, int models, int shards, int epochs)
{
    queue_sweep_def d = sweep_def(id, models, shards, epochs);
    cds_err err;
    if (queue_sweep_create(q, &d, NULL, &err) != 0) {
        printf("# create %s: %s\n", id, err.msg);
        tap_bail("cannot create a sweep");
    }
}

/* Leases or bails; returns 1/0 as queue_mop_lease_model. */
static int lease(queue_conn *q, const char *sweep, int shard, const char *worker, int64_t ms, queue_mop_lease *l,
                 int *done)
{
    cds_err err;
    int rc = queue_mop_lease_model(q, sweep, shard, worker, ms, l, done, &err);
    if (rc < 0) {
        printf("# lease %s shard %d: %s\n", sweep, shard, err.msg);
        tap_bail("lease failed");
    }
    return rc;
}

static queue_mop_commit_result commit(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *path)
{
    queue_mop_commit_result r;
    cds_err err;
    if (queue_mop_commit(q, sweep, l, path, NULL, &r, &err) != 0) {
        printf("# commit %s model %d: %s\n", sweep, l->model, err.msg);
        tap_bail("commit failed");
    }
    return r;
}

/* One schedule entry, "m epoch shard version worker". */
typedef struct visit {
    int m, epoch, shard;
    long long version;
    char worker[64];
} visit;

/* Reads the schedule; returns the number of entries (at most max), -1 if one is malformed. */
static int read_schedule(redisContext *c, const char *sweep, visit *v, int max)
{
    redisReply *r = test_rcmd(c, "LRANGE %ssweep:{%s}:schedule 0 -1", prefix, sweep);
    int n = 0;
    for (size_t i = 0; i < r->elements && n < max; i++, n++)
        if (sscanf(r->element[i]->str, "%d %d %d %lld %63s", &v[n].m, &v[n].epoch, &v[n].shard, &v[n].version,
                   v[n].worker) != 5) {
            printf("# malformed schedule entry '%s'\n", r->element[i]->str);
            n = -1;
            break;
        }
    freeReplyObject(r);
    return n;
}

/* The checks every finished sweep must pass: each (model, epoch, shard) of
 * the models that did not fail committed exactly once, versions of a model
 * counting up by one in schedule order, and each visit by a worker of the
 * visit's shard (worker names end in the shard). */
static void check_schedule(redisContext *c, const char *sweep, int models, int shards, int epochs,
                           const int *failed, const char *what)
{
    visit v[MAX_MODELS * MAX_EPOCHS * MAX_SHARDS + 8];
    int n = read_schedule(c, sweep, v, (int)(sizeof v / sizeof v[0]));
    int live = 0;
    for (int m = 0; m < models; m++)
        live += !(failed && failed[m]);
    is_int(n, live * epochs * shards, "%s: the schedule holds one entry per (model, epoch, shard)", what);
    int seen[MAX_MODELS][MAX_EPOCHS][MAX_SHARDS] = {{{0}}};
    long long last_version[MAX_MODELS] = {0};
    int dup = 0, bad_version = 0, bad_worker = 0, out_of_range = 0;
    for (int i = 0; i < n; i++) {
        /* Epochs count from 1. */
        if (v[i].m < 0 || v[i].m >= models || v[i].epoch < 1 || v[i].epoch > epochs || v[i].shard < 0 ||
            v[i].shard >= shards || (failed && failed[v[i].m])) {
            out_of_range++;
            continue;
        }
        dup += seen[v[i].m][v[i].epoch - 1][v[i].shard]++ > 0;
        bad_version += v[i].version != last_version[v[i].m] + 1;
        last_version[v[i].m] = v[i].version;
        size_t wl = strlen(v[i].worker);
        bad_worker += wl == 0 || v[i].worker[wl - 1] - '0' != v[i].shard;
    }
    int missing = 0;
    for (int m = 0; m < models; m++)
        for (int e = 0; e < epochs; e++)
            for (int k = 0; k < shards; k++)
                missing += !(failed && failed[m]) && seen[m][e][k] == 0;
    is_int(out_of_range, 0, "%s: no entry names a model, epoch or shard outside the sweep (or a failed model)",
           what);
    is_int(dup, 0, "%s: no (model, epoch, shard) committed twice", what);
    is_int(missing, 0, "%s: every (model, epoch, shard) committed", what);
    is_int(bad_version, 0, "%s: each model's versions count up by one in schedule order", what);
    is_int(bad_worker, 0, "%s: each visit was made by a worker serving its shard", what);
}

static void test_create(queue_conn *q, redisContext *c)
{
    cds_err err;
    queue_sweep_def d = sweep_def("create", 3, 2, 3);
    ok(queue_sweep_create(q, &d, NULL, &err) == 0, "create a sweep of 3 models x 2 shards x 3 epochs");
    ok(sweep_is(c, "create", "state", "running") && sweep_is(c, "create", "shards", "2") &&
           sweep_is(c, "create", "epochs", "3") && sweep_is(c, "create", "models", "3") &&
           sweep_is(c, "create", "live", "3") && sweep_is(c, "create", "dataset", "mnist") &&
           sweep_is(c, "create", "dataset_version", "v1") &&
           sweep_is(c, "create", "spec", "{\"grid\":{\"lr\":[0.1,0.01]}}"),
       "the sweep hash holds state, shape, dataset and spec");
    char created[64];
    int64_t t;
    ok(cds_parse_i64(sweep_field(c, "create", "created", created, sizeof created), 1, INT64_MAX, &t) == 0,
       "created is a server time in ms (%s)", created);
    int models_ok = 1;
    for (int m = 0; m < 3; m++)
        models_ok &= model_is(c, "create", m, "state", "idle") && model_is(c, "create", m, "epoch", "1") &&
                     model_is(c, "create", m, "visited", "00") && model_is(c, "create", m, "version", "0") &&
                     model_is(c, "create", m, "ckpt", "") && model_is(c, "create", m, "token", "");
    ok(models_ok, "every model starts idle at epoch 1, version 0, no shard visited, no checkpoint");
    ok(sweep_is(c, "create", "format", "2") && sweep_is(c, "create", "max_attempts", "5") &&
           sweep_is(c, "create", "backoff_base_ms", "1000") && sweep_is(c, "create", "backoff_cap_ms", "60000"),
       "the sweep says its epochs count from 1 (format 2) and holds the retry defaults (5 attempts, 1 s to 60 s)");
    redisReply *r = test_rcmd(c, "ZSCORE %ssweeps create", prefix);
    ok(r->type == REDIS_REPLY_STRING && strcmp(r->str, created) == 0, "the sweeps index holds it at its creation time");
    freeReplyObject(r);

    char *spec = NULL;
    ok(queue_mop_model_spec(q, "create", 1, &spec, &err) == 0 && spec && strcmp(spec, model_specs[1]) == 0,
       "model_spec returns the model's JSON");
    free(spec);
    ok(queue_mop_model_spec(q, "create", 3, &spec, &err) == QUEUE_NOT_FOUND && !spec,
       "model_spec of a model past the last is QUEUE_NOT_FOUND");

    ok(queue_sweep_create(q, &d, NULL, &err) == -1 && strstr(err.msg, "already exists"),
       "an existing id is refused (%s)", err.msg);
    ok(sweep_is(c, "create", "live", "3"), "the refused create changed nothing");

    const char *bad_ids[] = {"", "a b", "x{y}", "dots.no", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" /* 32 */};
    for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
        queue_sweep_def b = sweep_def(bad_ids[i], 1, 1, 1);
        ok(queue_sweep_create(q, &b, NULL, &err) == -1 && strstr(err.msg, "bad sweep id"), "sweep id '%s' refused",
           bad_ids[i]);
    }
    queue_sweep_def longest = sweep_def("Aa0_-aaaaaaaaaaaaaaaaaaaaaaaaaa" /* 31 */, 1, 1, 1);
    ok(queue_sweep_create(q, &longest, NULL, &err) == 0, "a 31-character id of every allowed kind is accepted");
    queue_sweep_def b = sweep_def("shape", 0, 1, 1);
    ok(queue_sweep_create(q, &b, NULL, &err) == -1 && strstr(err.msg, "models"), "0 models refused (%s)", err.msg);
    b = sweep_def("shape", 1, 0, 1);
    ok(queue_sweep_create(q, &b, NULL, &err) == -1 && strstr(err.msg, "shards"), "0 shards refused (%s)", err.msg);
    b = sweep_def("shape", 1, 1, 0);
    ok(queue_sweep_create(q, &b, NULL, &err) == -1 && strstr(err.msg, "epochs"), "0 epochs refused (%s)", err.msg);
    const char *bad_specs[] = {"{\"model\":"};
    b = sweep_def("shape", 1, 1, 1);
    b.model_specs = bad_specs;
    ok(queue_sweep_create(q, &b, NULL, &err) == -1 && strstr(err.msg, "not valid JSON"), "a malformed model spec refused (%s)",
       err.msg);
    r = test_rcmd(c, "EXISTS %ssweep:{shape}", prefix);
    ok(r->type == REDIS_REPLY_INTEGER && r->integer == 0, "refused sweeps leave no key");
    freeReplyObject(r);

    queue_mop_lease l;
    ok(queue_mop_lease_model(q, "nosuch", 0, "w", HOLD_MS, &l, NULL, &err) == -1 && strstr(err.msg, "no sweep"),
       "leasing from an unknown sweep is an error (%s)", err.msg);
    /* A worker serves shard k of every sweep: one with fewer shards simply
     * has nothing for it; a negative shard is a caller's error. */
    ok(queue_mop_lease_model(q, "create", 2, "w", HOLD_MS, &l, NULL, &err) == 0,
       "leasing for a shard beyond the sweep's finds nothing, without an error");
    ok(queue_mop_lease_model(q, "create", -1, "w", HOLD_MS, &l, NULL, &err) == -1 && strstr(err.msg, "negative"),
       "leasing for a negative shard is an error (%s)", err.msg);
}

/* Two simulated workers, serving shards 0 and 1, each lease a model, and then
 * both commit, until the sweep is done: two models are in flight at once. */
static void test_simulation(queue_conn *q, redisContext *c)
{
    enum { M = 4, K = 2, E = 2 };
    create_sweep(q, "sim", M, K, E);
    queue_mop_lease l[K];
    int held[K] = {0}, done[K] = {0};
    int committed[M][E][K] = {{{0}}};
    long long version[M] = {0};
    char path[M][64] = {{0}};
    int order[8], norder = 0;
    int revisit = 0, bad_version = 0, bad_superseded = 0, bad_start = 0, epoch_flags = 0, model_flags = 0;
    int rounds = 0;
    for (; rounds < 100 && !(done[0] && done[1]); rounds++) {
        for (int k = 0; k < K; k++) {
            char worker[16];
            snprintf(worker, sizeof worker, "sim-w%d", k);
            held[k] = lease(q, "sim", k, worker, HOLD_MS, &l[k], &done[k]);
            if (!held[k])
                continue;
            if (norder < 8)
                order[norder++] = l[k].model;
            revisit += committed[l[k].model][l[k].epoch - 1][k] != 0;
            bad_start += l[k].version != version[l[k].model] || strcmp(l[k].ckpt, path[l[k].model]) != 0;
        }
        for (int k = 0; k < K; k++) {
            if (!held[k])
                continue;
            int m = l[k].model;
            char p[64];
            snprintf(p, sizeof p, "ckpt/m%d-v%lld", m, version[m] + 1);
            queue_mop_commit_result r = commit(q, "sim", &l[k], p);
            if (!r.accepted) {
                printf("# commit of model %d refused\n", m);
                bad_version++;
                continue;
            }
            bad_version += r.version != version[m] + 1;
            bad_superseded += strcmp(r.superseded, path[m]) != 0;
            committed[m][l[k].epoch - 1][k]++;
            int visits = 0;
            for (int s = 0; s < K; s++)
                visits += committed[m][l[k].epoch - 1][s];
            epoch_flags += r.epoch_done != (visits == K);
            model_flags += r.model_done != (visits == K && l[k].epoch == E);
            version[m] = r.version;
            snprintf(path[m], sizeof path[m], "%s", p);
        }
    }
    ok(done[0] && done[1], "both workers hear the sweep is done (after %d rounds)", rounds);
    is_int(revisit, 0, "no lease sends a model to a shard it already visited this epoch");
    is_int(bad_start, 0, "each lease starts from the model's last committed version and path");
    is_int(bad_version, 0, "each commit is accepted and bumps the version by one");
    is_int(bad_superseded, 0, "each commit returns the path it supersedes");
    is_int(epoch_flags, 0, "epoch_done is set exactly on the visit that completes an epoch");
    is_int(model_flags, 0, "model_done is set exactly on the last visit of the last epoch");
    /* The documented rule: least progress first, lowest index among equals.
     * Round 1: models 0 and 1 (all at 0); round 2: models 2 and 3 (still at 0)
     * before 0 and 1 (one visit each). */
    ok(norder >= 4 && order[0] == 0 && order[1] == 1 && order[2] == 2 && order[3] == 3,
       "leases go to the least advanced model, lowest index first (0 1 2 3)");
    check_schedule(c, "sim", M, K, E, NULL, "simulation");

    redisReply *r = test_rcmd(c, "LRANGE %ssweep:{sim}:evals 0 -1", prefix);
    int evals_ok = r->elements == M * E;
    int eval_seen[M][E] = {{0}};
    for (size_t i = 0; evals_ok && i < r->elements; i++) {
        int m, e;
        long long v;
        evals_ok = sscanf(r->element[i]->str, "%d %d %lld", &m, &e, &v) == 3 && m >= 0 && m < M && e >= 1 &&
                   e <= E && v == (long long)e * K && !eval_seen[m][e - 1]++;
    }
    freeReplyObject(r);
    ok(evals_ok, "evals hold M x E entries 'm epoch version', one per finished epoch (from 1), at version epoch*K");

    int models_ok = 1;
    char want_version[16];
    snprintf(want_version, sizeof want_version, "%d", K * E);
    for (int m = 0; m < M; m++)
        models_ok &= model_is(c, "sim", m, "state", "done") && model_is(c, "sim", m, "epoch", "2") &&
                     model_is(c, "sim", m, "version", want_version) && model_is(c, "sim", m, "token", "");
    ok(models_ok, "every model is done, at its last epoch %d and version %d", E, K * E);
    char fin[64];
    ok(sweep_is(c, "sim", "state", "done") && sweep_is(c, "sim", "live", "0") &&
           *sweep_field(c, "sim", "finished", fin, sizeof fin),
       "the sweep is done, with no live model and a finish time");
    int d = 0;
    queue_mop_lease extra;
    ok(lease(q, "sim", 0, "sim-w0", HOLD_MS, &extra, &d) == 0 && d == 1, "a lease after the end returns 0, sweep done");
    long long wl = list_len(c, "mop:wake", NULL);
    ok(wl >= 1 && wl <= 64, "the wake-up list was pushed and stays bounded (%lld <= 64)", wl);
}

static void test_lost_lease(queue_conn *q, redisContext *c)
{
    cds_err err;
    create_sweep(q, "lost", 1, 2, 1);
    queue_mop_lease l;
    ok(lease(q, "lost", 0, "lost-w0", SHORT_MS, &l, NULL) == 1 && l.model == 0 && l.version == 0 && !*l.ckpt &&
           strlen(l.token) == 32,
       "lease returns model 0 at version 0 with a 32-hex token");
    ok(model_is(c, "lost", 0, "state", "leased") && model_is(c, "lost", 0, "token", l.token) &&
           model_is(c, "lost", 0, "worker", "lost-w0") && model_is(c, "lost", 0, "shard", "0"),
       "the model records state, token, worker and shard of its lease");
    ok(queue_mop_renew(q, "lost", &l, SHORT_MS, &err) == 0, "renew of a live lease succeeds");
    cds_sleep_ms(EXPIRE_WAIT_MS);
    ok(queue_mop_renew(q, "lost", &l, SHORT_MS, &err) == QUEUE_NOT_FOUND,
       "renew past the deadline is QUEUE_NOT_FOUND, before any reap");
    queue_mop_commit_result r = commit(q, "lost", &l, "ckpt/late");
    ok(!r.accepted, "a commit past the deadline is refused");
    ok(model_is(c, "lost", 0, "version", "0") && model_is(c, "lost", 0, "ckpt", "") &&
           model_is(c, "lost", 0, "visited", "00") && list_len(c, "schedule", "lost") == 0,
       "the refused commit changed neither version, checkpoint, visits nor schedule");
    int n = -1;
    int rc = queue_mop_reap(q, "lost", &n, NULL, &err);
    ok(rc == 0 && n == 1, "reap frees the expired lease (n=%d)", n);
    ok(model_is(c, "lost", 0, "state", "idle") && model_is(c, "lost", 0, "token", "") &&
           model_is(c, "lost", 0, "stalls", "1"),
       "the reaped model is idle, its token cleared, one stall counted");
    ok(queue_mop_reap(q, "lost", &n, NULL, &err) == 0 && n == 0, "a second reap finds nothing");
    ok(queue_mop_renew(q, "lost", &l, HOLD_MS, &err) == QUEUE_NOT_FOUND, "renew after the reap is QUEUE_NOT_FOUND");
    ok(queue_mop_release(q, "lost", &l, &err) == QUEUE_NOT_FOUND, "release after the reap is QUEUE_NOT_FOUND");
    ok(queue_mop_fail_visit(q, "lost", &l, "x", 1, NULL, NULL, NULL, &err) == QUEUE_NOT_FOUND, "fail after the reap is QUEUE_NOT_FOUND");
    r = commit(q, "lost", &l, "ckpt/late");
    ok(!r.accepted && model_is(c, "lost", 0, "version", "0") && model_is(c, "lost", 0, "ckpt", ""),
       "a late commit after the reap is refused and changes nothing");

    queue_mop_lease l2;
    ok(lease(q, "lost", 0, "lost-w1", HOLD_MS, &l2, NULL) == 1 && l2.model == 0 && l2.version == 0 &&
           strcmp(l2.token, l.token) != 0,
       "the model is leased again from its last committed version, with a new token");
    r = commit(q, "lost", &l, "ckpt/zombie");
    ok(!r.accepted && model_is(c, "lost", 0, "token", l2.token), "the old token cannot commit over the new lease");
    queue_mop_lease wrong = l2;
    wrong.shard = 1;
    r = commit(q, "lost", &wrong, "ckpt/wrong-shard");
    ok(!r.accepted, "a commit for another shard than the lease's is refused");
    r = commit(q, "lost", &l2, "ckpt/a");
    ok(r.accepted && r.version == 1 && !*r.superseded && !r.epoch_done,
       "the commit of the new lease is accepted at version 1, superseding nothing");
    r = commit(q, "lost", &l2, "ckpt/a");
    ok(r.accepted && r.version == 1 && model_is(c, "lost", 0, "version", "1") &&
           list_len(c, "schedule", "lost") == 1,
       "the same commit resent (lost reply) hears the same answer and records nothing twice");
    int done = 1;
    queue_mop_lease l3;
    ok(lease(q, "lost", 0, "lost-w1", HOLD_MS, &l3, &done) == 0 && done == 0,
       "no lease for shard 0 again in the same epoch; the sweep is not done");
    ok(lease(q, "lost", 1, "lost-w2", HOLD_MS, &l3, &done) == 1 && l3.version == 1 &&
           strcmp(l3.ckpt, "ckpt/a") == 0,
       "shard 1 gets the model at version 1 from ckpt/a");
    r = commit(q, "lost", &l3, "ckpt/b");
    ok(r.accepted && r.epoch_done && r.model_done && r.version == 2 && strcmp(r.superseded, "ckpt/a") == 0,
       "the last visit finishes epoch and model, superseding ckpt/a");
    ok(sweep_is(c, "lost", "state", "done"), "the one-model sweep is done");

    /* A lease kept alive by renewals survives reapers running all the while. */
    create_sweep(q, "renewed", 1, 1, 1);
    ok(lease(q, "renewed", 0, "ren-w0", 200, &l, NULL) == 1, "lease a model for 200 ms");
    int renew_ok = 1, reaped = 0;
    for (int i = 0; i < 5; i++) {
        cds_sleep_ms(80);
        renew_ok &= queue_mop_renew(q, "renewed", &l, 200, &err) == 0;
        queue_mop_reap(q, "renewed", &n, NULL, &err);
        reaped += n;
    }
    ok(renew_ok && reaped == 0, "renewed every 80 ms over 400 ms, the lease is never reaped");
    r = commit(q, "renewed", &l, "ckpt/renewed");
    ok(r.accepted, "and its commit, after twice the first lease time, is accepted");
}

static void test_fail_model(queue_conn *q, redisContext *c)
{
    enum { M = 3, K = 1, E = 2 };
    cds_err err;
    create_sweep(q, "failing", M, K, E);
    queue_mop_lease l;
    ok(lease(q, "failing", 0, "fail-w0", HOLD_MS, &l, NULL) == 1 && l.model == 0, "lease model 0");
    ok(queue_mop_fail_visit(q, "failing", &l, "loss is NaN", 1, NULL, NULL, NULL, &err) == 0, "fail_model with the token succeeds");
    ok(model_is(c, "failing", 0, "state", "failed") && model_is(c, "failing", 0, "reason", "loss is NaN") &&
           model_is(c, "failing", 0, "token", "") && sweep_is(c, "failing", "live", "2"),
       "the model is failed with its reason, and no longer live");
    ok(queue_mop_fail_visit(q, "failing", &l, "again", 1, NULL, NULL, NULL, &err) == QUEUE_NOT_FOUND,
       "failing it again with the same token is QUEUE_NOT_FOUND");
    ok(!commit(q, "failing", &l, "ckpt/after-fail").accepted, "a commit after fail is refused");
    int done = 0, leased_failed = 0, steps = 0;
    queue_mop_lease x;
    while (steps < 20 && lease(q, "failing", 0, "fail-w0", HOLD_MS, &x, &done) == 1) {
        leased_failed += x.model == 0;
        commit(q, "failing", &x, "ckpt/f");
        steps++;
    }
    ok(done && steps == (M - 1) * E * K, "the other models finish (%d visits) and the sweep is done", steps);
    is_int(leased_failed, 0, "the failed model is never leased again");
    ok(sweep_is(c, "failing", "state", "done") && model_is(c, "failing", 0, "state", "failed"),
       "the sweep is done; the failed model stays failed");
    int failed[M] = {1, 0, 0};
    check_schedule(c, "failing", M, K, E, failed, "with a failed model");

    create_sweep(q, "failall", 1, 1, 1);
    lease(q, "failall", 0, "fail-w0", HOLD_MS, &l, NULL);
    ok(queue_mop_fail_visit(q, "failall", &l, "out of memory", 1, NULL, NULL, NULL, &err) == 0 && sweep_is(c, "failall", "state", "done"),
       "failing the last live model finishes the sweep");
}

/* A model whose every lease expires fails after max_stalls stalls, with the
 * reason, and does not hold the sweep forever. */
static void test_stall_limit(queue_conn *q, redisContext *c)
{
    queue_sweep_def d = sweep_def("stally", 2, 1, 1);
    d.max_stalls = 2;
    cds_err err;
    ok(queue_sweep_create(q, &d, NULL, &err) == 0 && sweep_is(c, "stally", "max_stalls", "2"), "a sweep with max_stalls 2");
    queue_mop_lease l;
    int n = 0;
    for (int i = 0; i < 3; i++) {
        lease(q, "stally", 0, "stall-w", SHORT_MS, &l, NULL);
        cds_sleep_ms(EXPIRE_WAIT_MS);
        queue_mop_reap(q, "stally", &n, NULL, &err);
    }
    ok(model_is(c, "stally", 0, "state", "failed") && model_is(c, "stally", 0, "stalls", "3") &&
           sweep_is(c, "stally", "live", "1"),
       "after its third stall (more than 2) model 0 is failed and no longer live");
    char reason[256];
    ok(strstr(model_field(c, "stally", 0, "reason", reason, sizeof reason), "stalled 3 times") != NULL,
       "its reason says so (%s)", reason);
    ok(lease(q, "stally", 0, "stall-w", HOLD_MS, &l, NULL) == 1 && l.model == 1 && commit(q, "stally", &l, "ck").accepted &&
           sweep_is(c, "stally", "state", "done"),
       "the other model is leased and committed, and the sweep is done");
}

static void test_states(queue_conn *q, redisContext *c)
{
    cds_err err;
    create_sweep(q, "states", 2, 1, 1);
    queue_mop_lease a, b;
    int done = 1;
    lease(q, "states", 0, "st-w0", HOLD_MS, &a, NULL);
    ok(queue_sweep_set_state(q, "states", "paused", &err) == 0 && sweep_is(c, "states", "state", "paused"),
       "pause a running sweep");
    ok(lease(q, "states", 0, "st-w1", HOLD_MS, &b, &done) == 0 && done == 0,
       "a paused sweep grants no lease and is not done");
    ok(queue_mop_renew(q, "states", &a, HOLD_MS, &err) == 0 && commit(q, "states", &a, "ckpt/p").accepted,
       "a lease in flight renews and commits while paused");
    ok(queue_sweep_set_state(q, "states", "paused", &err) == 0, "pausing again is a no-op");
    ok(queue_sweep_set_state(q, "states", "running", &err) == 0 && lease(q, "states", 0, "st-w1", HOLD_MS, &b, NULL) == 1,
       "resumed, it grants leases again");
    ok(queue_sweep_set_state(q, "states", "cancelled", &err) == 0, "cancel the sweep with a lease in flight");
    ok(sweep_is(c, "states", "state", "cancelled") && sweep_is(c, "states", "live", "0") &&
           model_is(c, "states", b.model, "state", "cancelled") && model_is(c, "states", a.model, "state", "done"),
       "unfinished models are cancelled, finished ones stay done");
    ok(queue_mop_renew(q, "states", &b, HOLD_MS, &err) == QUEUE_NOT_FOUND, "the holder's renew is QUEUE_NOT_FOUND");
    ok(!commit(q, "states", &b, "ckpt/c").accepted && model_is(c, "states", b.model, "version", "0"),
       "the holder's commit is refused and publishes nothing");
    ok(lease(q, "states", 0, "st-w2", HOLD_MS, &b, &done) == 0 && done == 1, "a cancelled sweep reports done");
    ok(queue_sweep_set_state(q, "states", "running", &err) == -1 && strstr(err.msg, "cancelled"),
       "a cancelled sweep cannot run again (%s)", err.msg);
    ok(queue_sweep_set_state(q, "states", "bogus", &err) == -1, "an unknown state is refused");
    ok(queue_sweep_set_state(q, "nosuch", "paused", &err) == QUEUE_NOT_FOUND, "an unknown sweep is QUEUE_NOT_FOUND");
}

/* The lease and reap scripts read the models in chunks of 1000 (Lua's
 * unpack() limit): a sweep of 2500 models whose first 1200 are finished must
 * lease and reap model 1200, in the second chunk. */
static void test_many_models(queue_conn *q, redisContext *c)
{
    enum { M = 2500, FIRST_FREE = 1200 };
    static const char *specs[M];
    for (int m = 0; m < M; m++)
        specs[m] = "{}";
    queue_sweep_def d = sweep_def("many", M, 1, 1);
    d.model_specs = specs;
    cds_err err;
    int64_t t0 = cds_mono_ms();
    int rc = queue_sweep_create(q, &d, NULL, &err);
    ok(rc == 0, "create a sweep of %d models (%lld ms)", M, (long long)(cds_mono_ms() - t0));
    for (int m = 0; m < FIRST_FREE; m++)
        redisAppendCommand(c, "HSET %ssweep:{many}:models %d.state done", prefix, m);
    for (int m = 0; m < FIRST_FREE; m++) {
        void *r = NULL;
        if (redisGetReply(c, &r) != REDIS_OK)
            tap_bail("lost the raw Redis connection");
        freeReplyObject(r);
    }
    queue_mop_lease l;
    t0 = cds_mono_ms();
    int got = lease(q, "many", 0, "many-w0", SHORT_MS, &l, NULL);
    int64_t dt = cds_mono_ms() - t0;
    ok(got == 1 && l.model == FIRST_FREE, "the lease scans past the first chunk to model %d (got %d, %lld ms)",
       FIRST_FREE, got ? l.model : -1, (long long)dt);
    cds_sleep_ms(EXPIRE_WAIT_MS);
    int n = -1;
    rc = queue_mop_reap(q, "many", &n, NULL, &err);
    ok(rc == 0 && n == 1 && model_is(c, "many", FIRST_FREE, "state", "idle"),
       "the reaper frees an expired lease in the second chunk (n=%d)", n);
}

/* ---- control of single models ---------------------------------------------- */

static int set_model(queue_conn *q, const char *sweep, int m, const char *state, char *prev, cds_err *err)
{
    return queue_mop_set_model_state(q, sweep, m, state, prev, err);
}

static void test_model_control(queue_conn *q, redisContext *c)
{
    cds_err err;
    char prev[16];
    queue_mop_lease a, b, x;
    int done = 1;
    create_sweep(q, "ctl", 4, 2, 1);
    ok(set_model(q, "ctl", 0, "paused", prev, &err) == 0 && strcmp(prev, "idle") == 0 &&
           model_is(c, "ctl", 0, "paused", "1") && model_is(c, "ctl", 0, "state", "idle"),
       "pause an idle model: its flag is set, its state stays idle (was %s)", prev);
    ok(lease(q, "ctl", 0, "ctl-w0", HOLD_MS, &a, NULL) == 1 && a.model == 1,
       "the next lease skips the paused model 0 and takes model 1");
    ok(set_model(q, "ctl", 1, "paused", prev, &err) == 0 && strcmp(prev, "leased") == 0 &&
           model_is(c, "ctl", 1, "state", "leased") && model_is(c, "ctl", 1, "token", a.token),
       "pause a model with a lease in flight: the lease is untouched");
    ok(queue_mop_renew(q, "ctl", &a, HOLD_MS, &err) == 0 && commit(q, "ctl", &a, "ckpt/ctl1").accepted,
       "the paused model's lease in flight still renews and commits");
    ok(model_is(c, "ctl", 1, "state", "idle") && model_is(c, "ctl", 1, "paused", "1"),
       "after its commit the model is idle and still paused");
    ok(set_model(q, "ctl", 0, "paused", prev, &err) == 0 && strcmp(prev, "paused") == 0,
       "pausing a paused model is a no-op");
    /* Model 1 has the most progress and is paused; 0 is paused: only 2 and 3. */
    int got[4] = {0}, n = 0;
    while (n < 8 && lease(q, "ctl", 1, "ctl-w1", HOLD_MS, &x, &done) == 1) {
        got[x.model]++;
        commit(q, "ctl", &x, "ckpt/ctl");
        n++;
    }
    ok(got[0] == 0 && got[1] == 0 && got[2] == 1 && got[3] == 1 && done == 0,
       "shard 1 is visited by models 2 and 3 only; the sweep is not done (got %d %d %d %d)", got[0], got[1], got[2],
       got[3]);
    ok(queue_sweep_set_state(q, "ctl", "paused", &err) == 0 && set_model(q, "ctl", 0, "running", prev, &err) == 0 &&
           strcmp(prev, "paused") == 0 && lease(q, "ctl", 1, "ctl-w1", HOLD_MS, &x, &done) == 0,
       "resuming model 0 in a paused sweep leases nothing yet");
    ok(queue_sweep_set_state(q, "ctl", "running", &err) == 0 && model_is(c, "ctl", 1, "paused", "1"),
       "resuming the sweep leaves model 1, paused by itself, paused");
    ok(lease(q, "ctl", 1, "ctl-w1", HOLD_MS, &x, &done) == 1 && x.model == 0 && commit(q, "ctl", &x, "c").accepted,
       "the resumed model 0 is leased again (and not model 1)");
    ok(lease(q, "ctl", 1, "ctl-w1", HOLD_MS, &x, &done) == 0, "model 1 is never leased while paused");
    ok(set_model(q, "ctl", 1, "running", prev, &err) == 0 && model_is(c, "ctl", 1, "paused", ""),
       "resume model 1: its flag is cleared");
    ok(set_model(q, "ctl", 1, "running", prev, &err) == -1 && strstr(err.msg, "not paused") &&
           strstr(err.msg, "model 1"),
       "resuming a model that is not paused is refused (%s)", err.msg);

    /* Cancel: with a lease in flight, then the last one. */
    ok(lease(q, "ctl", 1, "ctl-w1", HOLD_MS, &b, &done) == 1 && b.model == 1, "model 1 is leased for shard 1");
    ok(set_model(q, "ctl", 1, "cancelled", prev, &err) == 0 && strcmp(prev, "leased") == 0 &&
           model_is(c, "ctl", 1, "state", "cancelled") && model_is(c, "ctl", 1, "token", "") &&
           model_is(c, "ctl", 1, "reason", "cancelled by jobctl") && sweep_is(c, "ctl", "live", "3"),
       "cancel the leased model: cancelled, token cleared, with a reason; live goes from 4 to 3");
    ok(queue_mop_renew(q, "ctl", &b, HOLD_MS, &err) == QUEUE_NOT_FOUND, "its holder's renew is refused");
    ok(!commit(q, "ctl", &b, "ckpt/cancelled").accepted && model_is(c, "ctl", 1, "ckpt", "ckpt/ctl1"),
       "its holder's commit is refused and publishes nothing");
    ok(set_model(q, "ctl", 1, "cancelled", prev, &err) == -1 && strstr(err.msg, "is cancelled"),
       "cancelling it again is refused (%s)", err.msg);
    ok(set_model(q, "ctl", 1, "running", prev, &err) == -1 && strstr(err.msg, "is cancelled"),
       "resuming a cancelled model is refused (%s)", err.msg);
    ok(lease(q, "ctl", 0, "ctl-w0", HOLD_MS, &x, &done) == 1 && x.model == 0 && commit(q, "ctl", &x, "c").accepted &&
           model_is(c, "ctl", 0, "state", "done"),
       "model 0 visits shard 0 and is done");
    ok(set_model(q, "ctl", 0, "cancelled", prev, &err) == -1 && strstr(err.msg, "is done"),
       "cancelling a done model is refused (%s)", err.msg);
    ok(set_model(q, "ctl", 0, "paused", prev, &err) == -1 && strstr(err.msg, "is done"),
       "pausing a done model is refused (%s)", err.msg);
    ok(set_model(q, "ctl", 9, "paused", prev, &err) == QUEUE_NOT_FOUND && strstr(err.msg, "no model 9") &&
           strstr(err.msg, "0 to 3"),
       "an unknown model index is QUEUE_NOT_FOUND (%s)", err.msg);
    ok(set_model(q, "ctl", -1, "paused", prev, &err) == -1, "a negative model index is refused");
    ok(set_model(q, "ctl", 0, "bogus", prev, &err) == -1 && strstr(err.msg, "use running"),
       "an unknown state is refused (%s)", err.msg);
    ok(set_model(q, "nosuch", 0, "paused", prev, &err) == QUEUE_NOT_FOUND, "an unknown sweep is QUEUE_NOT_FOUND");
    ok(set_model(q, "ctl", 2, "cancelled", prev, &err) == 0 && sweep_is(c, "ctl", "live", "1") &&
           sweep_is(c, "ctl", "state", "running"),
       "cancel model 2: one live model is left, the sweep runs on");
    ok(set_model(q, "ctl", 3, "cancelled", prev, &err) == 0 && sweep_is(c, "ctl", "live", "0") &&
           sweep_is(c, "ctl", "state", "done"),
       "cancelling the last live model makes the sweep done");
    ok(lease(q, "ctl", 0, "ctl-w0", HOLD_MS, &x, &done) == 0 && done == 1, "and leases report it done");
}

/* ---- evaluations and the test scoring are leases ------------------------------- */

static long long hash_len(redisContext *c, const char *sweep, const char *suffix)
{
    redisReply *r = test_rcmd(c, "HLEN %ssweep:{%s}:%s", prefix, sweep, suffix);
    long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return n;
}

static int has_result(redisContext *c, const char *sweep, const char *field)
{
    redisReply *r = test_rcmd(c, "HEXISTS %ssweep:{%s}:results %s", prefix, sweep, field);
    int yes = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return yes;
}

static int is_active(redisContext *c, const char *sweep)
{
    redisReply *r = test_rcmd(c, "ZSCORE %ssweeps:active %s", prefix, sweep);
    int yes = r->type == REDIS_REPLY_STRING;
    freeReplyObject(r);
    return yes;
}

/* Leases and commits every visit of a one-shard sweep's epoch for model m. */
static void finish_epoch(queue_conn *q, const char *sweep, const char *path)
{
    queue_mop_lease l;
    if (lease(q, sweep, 0, "ev-w0", HOLD_MS, &l, NULL) != 1 || !commit(q, sweep, &l, path).accepted)
        tap_bail("could not finish an epoch");
}

/* A visit's metrics are stored by the commit that accepts it, so an
 * evaluation taken at once already sees them; a refused commit stores none. */
static void test_commit_metrics(queue_conn *q, redisContext *c)
{
    cds_err err;
    queue_mop_lease l, e;
    queue_mop_commit_result r;
    create_sweep(q, "cm", 1, 1, 1);
    ok(lease(q, "cm", 0, "cm-w0", SHORT_MS, &l, NULL) == 1, "lease a visit");
    cds_sleep_ms(EXPIRE_WAIT_MS);
    redisReply *x = test_rcmd(c, "HEXISTS %ssweep:{cm}:results 0.1.train.0", prefix);
    ok(queue_mop_commit(q, "cm", &l, "ckpt/late", "{\"rows\":7}", &r, &err) == 0 && !r.accepted &&
           x->type == REDIS_REPLY_INTEGER && x->integer == 0,
       "a refused commit stores no metrics");
    freeReplyObject(x);
    x = test_rcmd(c, "HEXISTS %ssweep:{cm}:results 0.1.train.0", prefix);
    ok(x->type == REDIS_REPLY_INTEGER && x->integer == 0, "...none after it either");
    freeReplyObject(x);
    int n, ne;
    ok(queue_mop_reap(q, "cm", &n, &ne, &err) == 0 && n == 1 && lease(q, "cm", 0, "cm-w0", HOLD_MS, &l, NULL) == 1 &&
           queue_mop_commit(q, "cm", &l, "ckpt/cm", "{\"rows\":7}", &r, &err) == 0 && r.accepted && r.epoch_done &&
           queue_mop_take_eval(q, "cm", "cm-e", HOLD_MS, &e, &err) == 1,
       "an accepted commit ends the epoch, whose evaluation is taken at once");
    x = test_rcmd(c, "HGET %ssweep:{cm}:results 0.1.train.0", prefix);
    ok(x->type == REDIS_REPLY_STRING && strcmp(x->str, "{\"rows\":7}") == 0,
       "the visit's metrics are already there, stored by the commit");
    freeReplyObject(x);
}

static void test_eval_lease(queue_conn *q, redisContext *c)
{
    cds_err err;
    queue_mop_lease a, b, x;
    int is_best = 0, prev = 7, n = 0, ne = 0;
    create_sweep(q, "ev", 1, 1, 2);
    finish_epoch(q, "ev", "ckpt/ev1");
    ok(list_len(c, "evals", "ev") == 1, "a finished epoch waits for evaluation");
    ok(queue_mop_take_eval(q, "ev", "ev-a", SHORT_MS, &a, &err) == 1 && a.kind == QUEUE_MOP_EVAL && a.model == 0 &&
           a.epoch == 1 && a.version == 1 && strlen(a.token) == 32,
       "take_eval leases model 0 epoch 1 version 1 with a token");
    char v[256] = "";
    redisReply *r = test_rcmd(c, "HGET %ssweep:{ev}:evaling %s", prefix, a.token);
    if (r->type == REDIS_REPLY_STRING)
        snprintf(v, sizeof v, "%s", r->str);
    freeReplyObject(r);
    long long dl = 0;
    ok(list_len(c, "evals", "ev") == 0 && sscanf(v, "0 1 1 %lld ev-a", &dl) == 1 && dl == a.deadline_ms,
       "it moved from the list to the in-flight hash with its deadline and worker ('%s')", v);
    ok(queue_mop_take_eval(q, "ev", "ev-b", SHORT_MS, &x, &err) == 0, "nothing else waits: take_eval returns 0");
    ok(queue_mop_renew(q, "ev", &a, SHORT_MS, &err) == 0, "queue_mop_renew renews an evaluation lease");
    cds_sleep_ms(EXPIRE_WAIT_MS);
    ok(queue_mop_renew(q, "ev", &a, SHORT_MS, &err) == QUEUE_NOT_FOUND, "past its deadline the renew is refused");
    ok(queue_mop_record_result(q, "ev", &a, "{\"late\":1}", 0.5, &is_best, &prev, &err) == QUEUE_NOT_FOUND &&
           !has_result(c, "ev", "0.1"),
       "a record past the deadline is refused and records nothing (%s)", err.msg);
    ok(queue_mop_reap(q, "ev", &n, &ne, &err) == 0 && n == 0 && ne == 1 && list_len(c, "evals", "ev") == 1 &&
           hash_len(c, "ev", "evaling") == 0,
       "the reaper puts the expired evaluation back on the list (models %d, evaluations %d)", n, ne);
    ok(queue_mop_take_eval(q, "ev", "ev-b", HOLD_MS, &b, &err) == 1 && b.model == 0 && b.epoch == 1 &&
           b.version == 1 && strcmp(a.token, b.token) != 0,
       "another worker takes it again, with a new token");
    ok(queue_mop_record_result(q, "ev", &a, "{\"late\":1}", 0.9, &is_best, &prev, &err) == QUEUE_NOT_FOUND &&
           queue_mop_put_eval(q, "ev", &a, QUEUE_EVAL_BACK, NULL, NULL, &err) == QUEUE_NOT_FOUND && hash_len(c, "ev", "evaling") == 1,
       "the first worker, late, can neither record nor give it back");
    queue_mop_lease wrong = b;
    wrong.epoch = 2;
    ok(queue_mop_record_result(q, "ev", &wrong, "{}", 0.9, &is_best, &prev, &err) == QUEUE_NOT_FOUND,
       "a record for another epoch than the lease's is refused");
    ok(queue_mop_record_result(q, "ev", &b, "{\"e\":1}", 0.5, &is_best, &prev, &err) == 0 && is_best && prev == -1 &&
           has_result(c, "ev", "0.1") && hash_len(c, "ev", "evaling") == 0 && model_is(c, "ev", 0, "best_epoch", "1"),
       "the holder records it: the best epoch so far, the lease ended");
    ok(queue_mop_record_result(q, "ev", &b, "{\"e\":1}", 0.5, &is_best, &prev, &err) == QUEUE_NOT_FOUND,
       "recording twice with the same lease is refused");

    finish_epoch(q, "ev", "ckpt/ev2");
    ok(queue_mop_take_eval(q, "ev", "ev-a", HOLD_MS, &a, &err) == 1 && a.epoch == 2 &&
           queue_mop_put_eval(q, "ev", &a, QUEUE_EVAL_BACK, NULL, NULL, &err) == 0 && list_len(c, "evals", "ev") == 1 &&
           hash_len(c, "ev", "evaling") == 0,
       "put_eval gives an evaluation back to the list, uncounted");
    ok(queue_mop_take_eval(q, "ev", "ev-a", HOLD_MS, &a, &err) == 1 && queue_mop_put_eval(q, "ev", &a, QUEUE_EVAL_DROP, NULL, NULL, &err) == 0 &&
           list_len(c, "evals", "ev") == 0 && hash_len(c, "ev", "evaling") == 0,
       "put_eval with drop forgets it");

    /* Renewed, an evaluation lease survives reapers running all the while. */
    create_sweep(q, "evr", 1, 1, 1);
    finish_epoch(q, "evr", "ckpt/evr");
    queue_mop_take_eval(q, "evr", "ev-a", 200, &a, &err);
    int renew_ok = 1, reaped = 0;
    for (int i = 0; i < 5; i++) {
        cds_sleep_ms(80);
        renew_ok &= queue_mop_renew(q, "evr", &a, 200, &err) == 0;
        queue_mop_reap(q, "evr", &n, &ne, &err);
        reaped += ne;
    }
    ok(renew_ok && reaped == 0 &&
           queue_mop_record_result(q, "evr", &a, "{}", 0.1, &is_best, &prev, &err) == 0,
       "renewed every 80 ms over 400 ms, an evaluation is never reaped and its record is accepted");

    /* A failed attempt is counted and waits out a backoff; after
     * max_attempts the evaluation fails with the reason.  Giving it back
     * (a drain) counts nothing; dying (the reaper) counts a stall, and past
     * max_stalls the evaluation is given up. */
    queue_sweep_def d = sweep_def("evx", 1, 1, 2);
    d.max_stalls = 2;
    d.max_attempts = 3;
    d.backoff_base_ms = 60000; /* far beyond the test: "time passes" when the test moves the due time */
    if (queue_sweep_create(q, &d, NULL, &err) != 0)
        tap_bail(err.msg);
    finish_epoch(q, "evx", "ckpt/evx1");
    int back = 0;
    for (int i = 0; i < 4; i++)
        back += queue_mop_take_eval(q, "evx", "ev-a", HOLD_MS, &a, &err) == 1 &&
                queue_mop_put_eval(q, "evx", &a, QUEUE_EVAL_BACK, NULL, NULL, &err) == 0 && list_len(c, "evals", "evx") == 1;
    r = test_rcmd(c, "HGET %ssweep:{evx}:models 0.eval_attempts.1", prefix);
    ok(back == 4 && r->type == REDIS_REPLY_NIL, "given back 4 times (a drain): still waiting, no attempt counted");
    freeReplyObject(r);
    int failed = 1;
    ok(queue_mop_take_eval(q, "evx", "ev-a", HOLD_MS, &a, &err) == 1 &&
           queue_mop_put_eval(q, "evx", &a, QUEUE_EVAL_RETRY, "CRC-32 mismatch", &failed, &err) == 0 && !failed &&
           model_is(c, "evx", 0, "eval_attempts.1", "1") && model_is(c, "evx", 0, "eval_last_error.1", "CRC-32 mismatch"),
       "a failed attempt is counted with its error, and is not the last (1 of 3)");
    r = test_rcmd(c, "LINDEX %ssweep:{evx}:evals 0", prefix);
    long long due = 0;
    int parsed = r->type == REDIS_REPLY_STRING && sscanf(r->str, "0 1 1 %lld", &due) == 1;
    freeReplyObject(r);
    ok(parsed && due > 0 && queue_mop_take_eval(q, "evx", "ev-a", HOLD_MS, &x, &err) == 0,
       "it waits in the list with its due time, and is not taken before it");
    for (int i = 2; i <= 3; i++) {
        freeReplyObject(test_rcmd(c, "LSET %ssweep:{evx}:evals 0 %s", prefix, "0 1 1 1")); /* its backoff has passed */
        ok(queue_mop_take_eval(q, "evx", "ev-a", HOLD_MS, &a, &err) == 1 && a.epoch == 1 &&
               queue_mop_put_eval(q, "evx", &a, QUEUE_EVAL_RETRY, "CRC-32 mismatch", &failed, &err) == 0 &&
               failed == (i == 3),
           "once due it is taken again; attempt %d of 3 %s", i, i == 3 ? "fails the evaluation" : "is not the last");
    }
    char why[256];
    ok(list_len(c, "evals", "evx") == 0 && hash_len(c, "evx", "evaling") == 0 &&
           strstr(model_field(c, "evx", 0, "eval_error.1", why, sizeof why), "failed 3 of 3 attempts: CRC-32 mismatch"),
       "the evaluation failed with the reason: %s", why);
    finish_epoch(q, "evx", "ckpt/evx2");
    int reaped_back = 0;
    for (int i = 0; i < 3; i++) {
        if (queue_mop_take_eval(q, "evx", "ev-dies", SHORT_MS, &a, &err) != 1)
            break;
        cds_sleep_ms(EXPIRE_WAIT_MS);
        reaped_back += queue_mop_reap(q, "evx", &n, &ne, &err) == 0 && ne == 1;
    }
    ok(reaped_back == 3 && list_len(c, "evals", "evx") == 0 && hash_len(c, "evx", "evaling") == 0 &&
           model_is(c, "evx", 0, "eval_stalls.2", "3") &&
           strstr(model_field(c, "evx", 0, "eval_error.2", why, sizeof why), "stalled 3 times"),
       "an evaluation whose workers die is reaped back twice, then given up (%d reaps): %s", reaped_back, why);
    ok(sweep_is(c, "evx", "state", "done"), "the sweep is done and nothing holds it");
}

static void test_test_claim(queue_conn *q, redisContext *c)
{
    cds_err err;
    queue_mop_lease a, b, x, e;
    int is_best, prev;
    create_sweep(q, "tc", 1, 1, 1);
    ok(queue_mop_claim_test(q, "tc", "tc-a", HOLD_MS, &x, &err) == 0, "a running sweep's test cannot be claimed");
    finish_epoch(q, "tc", "ckpt/tc");
    ok(sweep_is(c, "tc", "state", "done") && queue_mop_claim_test(q, "tc", "tc-a", HOLD_MS, &x, &err) == 0,
       "nor a done one whose evaluation waits");
    queue_mop_take_eval(q, "tc", "tc-e", HOLD_MS, &e, &err);
    ok(queue_mop_claim_test(q, "tc", "tc-a", HOLD_MS, &x, &err) == 0, "nor while its evaluation is in flight");
    queue_mop_record_result(q, "tc", &e, "{}", 0.7, &is_best, &prev, &err);
    ok(queue_mop_claim_test(q, "tc", "tc-a", SHORT_MS, &a, &err) == 1 && a.kind == QUEUE_MOP_TEST &&
           sweep_is(c, "tc", "test_by", "tc-a") && sweep_is(c, "tc", "test_token", a.token),
       "once everything is evaluated, a worker claims it (test_by, test_token)");
    ok(queue_mop_claim_test(q, "tc", "tc-b", SHORT_MS, &b, &err) == 0, "a second worker cannot while the claim holds");
    ok(queue_mop_renew(q, "tc", &a, SHORT_MS, &err) == 0, "queue_mop_renew renews the claim");
    cds_sleep_ms(EXPIRE_WAIT_MS);
    ok(queue_mop_renew(q, "tc", &a, SHORT_MS, &err) == QUEUE_NOT_FOUND, "past its deadline the claim's renew is refused");
    ok(queue_mop_claim_test(q, "tc", "tc-b", HOLD_MS, &b, &err) == 1 && sweep_is(c, "tc", "test_by", "tc-b") &&
           strcmp(a.token, b.token) != 0,
       "the expired claim is taken over by another worker");
    ok(queue_mop_record_test(q, "tc", &a, "0 1 10 0.1 0.9 1", &err) == QUEUE_NOT_FOUND && sweep_is(c, "tc", "test", ""),
       "the first claimant's late record is refused (%s)", err.msg);
    ok(is_active(c, "tc"), "the sweep is still active: its test score is not recorded");
    ok(queue_mop_record_test(q, "tc", &b, "0 1 10 0.2 0.8 1", &err) == 0 && sweep_is(c, "tc", "test", "0 1 10 0.2 0.8 1") &&
           sweep_is(c, "tc", "test_token", ""),
       "the new claimant records the score; the claim's token is cleared");
    ok(!is_active(c, "tc"), "recording the test score takes the finished sweep out of the active set");
    ok(queue_mop_claim_test(q, "tc", "tc-c", HOLD_MS, &x, &err) == 0 &&
           queue_mop_record_test(q, "tc", &b, "x", &err) == QUEUE_NOT_FOUND,
       "a recorded test can be neither claimed nor recorded again");
}

/* ---- failed attempts, retry, unique keys ---------------------------------------- */

/* "Time passes" for a model waiting out its backoff: the test moves its
 * not_before into the past rather than sleep (the backoffs here are a
 * minute, so nothing expires by itself while the test runs). */
static void backoff_passes(redisContext *c, const char *sweep, int m)
{
    freeReplyObject(test_rcmd(c, "HSET %ssweep:{%s}:models %d.not_before 1", prefix, sweep, m));
}

/* A visit that fails (a corrupt checkpoint, say) is an attempt, as a queue
 * job's: counted, with a backoff during which the model is not leased, and
 * the model fails with the reason at max_attempts; a drain (release) counts
 * nothing; a commit clears the count. */
static void test_visit_attempts(queue_conn *q, redisContext *c)
{
    cds_err err;
    queue_sweep_def d = sweep_def("att", 2, 1, 1);
    d.max_attempts = 3;
    d.backoff_base_ms = 60000;
    ok(queue_sweep_create(q, &d, NULL, &err) == 0 && sweep_is(c, "att", "max_attempts", "3") &&
           sweep_is(c, "att", "backoff_base_ms", "60000"),
       "a sweep with max_attempts 3 and a backoff base of 60 s");
    queue_mop_lease l, o;
    int failed = 1;
    int64_t delay = 0;
    ok(lease(q, "att", 0, "att-w0", HOLD_MS, &l, NULL) == 1 && l.model == 0 && l.attempts == 0, "lease model 0");
    ok(queue_mop_fail_visit(q, "att", &l, "CRC-32 mismatch", 0, "an older checkpoint is intact", &failed, &delay,
                            &err) == 0 && !failed && delay >= 30000 && delay <= 60000,
       "a failed visit is attempt 1 of 3, retried after %lld ms (base 60 s scaled by [0.5, 1])", (long long)delay);
    char nb[64];
    ok(model_is(c, "att", 0, "state", "idle") && model_is(c, "att", 0, "attempts", "1") &&
           model_is(c, "att", 0, "error", "CRC-32 mismatch") && model_is(c, "att", 0, "token", "") &&
           atoll(model_field(c, "att", 0, "not_before", nb, sizeof nb)) > 0 && sweep_is(c, "att", "live", "2"),
       "the model is idle with its attempt, error and not_before (%s), still live", nb);
    ok(lease(q, "att", 0, "att-w0", HOLD_MS, &o, NULL) == 1 && o.model == 1,
       "while it waits out its backoff the other model is leased instead");
    ok(queue_mop_release(q, "att", &o, &err) == 0 && model_is(c, "att", 1, "attempts", "0"),
       "a release (a drain) counts no attempt");
    ok(queue_mop_renew(q, "att", &l, HOLD_MS, &err) == QUEUE_NOT_FOUND, "the failed lease cannot be renewed");
    queue_mop_lease x;
    int leased_early = 0;
    for (int i = 0; i < 3; i++)
        if (lease(q, "att", 0, "att-w0", HOLD_MS, &x, NULL) == 1) {
            leased_early += x.model == 0;
            queue_mop_release(q, "att", &x, &err);
        }
    is_int(leased_early, 0, "model 0 is not leased before its backoff has passed");
    for (int i = 2; i <= 3; i++) {
        backoff_passes(c, "att", 0);
        ok(lease(q, "att", 0, "att-w0", HOLD_MS, &l, NULL) == 1 && l.model == 0 && l.attempts == i - 1 &&
               queue_mop_fail_visit(q, "att", &l, "CRC-32 mismatch", 0, "an older checkpoint is intact", &failed,
                                    &delay, &err) == 0 && failed == (i == 3),
           "once due it is leased again (attempts so far %d); attempt %d %s", i - 1, i,
           i == 3 ? "fails the model" : "is not the last");
    }
    char reason[512];
    ok(model_is(c, "att", 0, "state", "failed") && sweep_is(c, "att", "live", "1") &&
           strcmp(model_field(c, "att", 0, "reason", reason, sizeof reason),
                  "failed 3 of 3 attempts: CRC-32 mismatch; an older checkpoint is intact") == 0,
       "the model failed with the reason and the note: %s", reason);
    /* A commit ends a run of failed attempts. */
    ok(lease(q, "att", 0, "att-w0", HOLD_MS, &l, NULL) == 1 && l.model == 1 &&
           queue_mop_fail_visit(q, "att", &l, "disk full", 0, NULL, &failed, &delay, &err) == 0 && !failed,
       "model 1 fails an attempt");
    backoff_passes(c, "att", 1);
    ok(lease(q, "att", 0, "att-w0", HOLD_MS, &l, NULL) == 1 && l.attempts == 1 && commit(q, "att", &l, "ckpt/att1").accepted &&
           model_is(c, "att", 1, "attempts", "0") && model_is(c, "att", 1, "not_before", "") &&
           model_is(c, "att", 1, "state", "done") && sweep_is(c, "att", "state", "done"),
       "its next visit commits: the count is cleared; the sweep is done (one model failed, one done)");
}

/* jobctl retry S/m puts a failed model back: at its committed checkpoint or
 * at an older one, and a done sweep runs again. */
static void test_retry_model(queue_conn *q, redisContext *c)
{
    cds_err err;
    int epoch = 0, n, ne;
    ok(queue_mop_retry_model(q, "att", 1, NULL, 0, 0, &epoch, &err) == -1 && strstr(err.msg, "not failed"),
       "a model that is not failed is not retried (%s)", err.msg);
    ok(queue_mop_retry_model(q, "att", 9, NULL, 0, 0, &epoch, &err) == QUEUE_NOT_FOUND, "nor one that does not exist");
    /* As if its evaluations and test scoring were done. */
    freeReplyObject(test_rcmd(c, "HSET %ssweep:{att} test {\"top1\":0.5}", prefix));
    freeReplyObject(test_rcmd(c, "DEL %ssweep:{att}:evals", prefix));
    ok(queue_mop_reap(q, "att", &n, &ne, &err) == 0 && !is_active(c, "att"), "the done sweep left the active set");
    ok(queue_mop_retry_model(q, "att", 0, NULL, 0, 0, &epoch, &err) == 0 && epoch == 1 &&
           model_is(c, "att", 0, "state", "idle") && model_is(c, "att", 0, "attempts", "0") &&
           model_is(c, "att", 0, "reason", "") && model_is(c, "att", 0, "stalls", "0") &&
           sweep_is(c, "att", "live", "1") && sweep_is(c, "att", "state", "running") && sweep_is(c, "att", "test", "") &&
           is_active(c, "att"),
       "the failed model is idle at epoch 1 again: the sweep runs, its test score cleared, active again");
    queue_mop_lease l;
    ok(lease(q, "att", 0, "att-w0", HOLD_MS, &l, NULL) == 1 && l.model == 0 && l.attempts == 0 &&
           commit(q, "att", &l, "ckpt/att0").accepted && sweep_is(c, "att", "state", "done"),
       "it is leased at once and finishes the sweep");

    /* From an older checkpoint: the epoch after it, no shard visited. */
    create_sweep(q, "rt", 1, 1, 3);
    char path[32];
    for (int e = 1; e <= 2; e++) {
        snprintf(path, sizeof path, "ckpt/rt-v%d", e);
        finish_epoch(q, "rt", path);
    }
    ok(lease(q, "rt", 0, "ev-w0", HOLD_MS, &l, NULL) == 1 && l.epoch == 3 &&
           queue_mop_fail_visit(q, "rt", &l, "CRC-32 mismatch", 1, NULL, NULL, NULL, &err) == 0,
       "a model fails in epoch 3");
    ok(queue_mop_retry_model(q, "rt", 0, "ckpt/best-e3.ckpt", 3, 2, &epoch, &err) == -1 &&
           strstr(err.msg, "the sweep's last") && model_is(c, "rt", 0, "state", "failed"),
       "a checkpoint of the last epoch leaves nothing to train, and changes nothing (%s)", err.msg);
    ok(queue_mop_retry_model(q, "rt", 0, "ckpt/x", 1, 7, &epoch, &err) == -1 && strstr(err.msg, "newer") &&
           model_is(c, "rt", 0, "state", "failed"),
       "a version above the committed one is refused (%s)", err.msg);
    ok(queue_mop_retry_model(q, "rt", 0, "ckpt/best-e1.ckpt", 1, 1, &epoch, &err) == 0 && epoch == 2 &&
           model_is(c, "rt", 0, "epoch", "2") && model_is(c, "rt", 0, "visited", "0") &&
           model_is(c, "rt", 0, "version", "2") && model_is(c, "rt", 0, "ckpt", "ckpt/best-e1.ckpt"),
       "retried from the checkpoint of epoch 1: epoch 2 next, its version kept rising from 2");
    ok(lease(q, "rt", 0, "ev-w0", HOLD_MS, &l, NULL) == 1 && l.epoch == 2 && l.version == 2 &&
           strcmp(l.ckpt, "ckpt/best-e1.ckpt") == 0,
       "the next lease starts from that file");
    queue_mop_commit_result r = commit(q, "rt", &l, "ckpt/rt-v3");
    ok(r.accepted && r.version == 3 && strcmp(r.superseded, "ckpt/best-e1.ckpt") == 0,
       "its commit is version 3 and names the older file as superseded (the worker keeps best-e files)");
    ok(queue_sweep_set_state(q, "rt", "cancelled", &err) == 0 &&
           queue_mop_retry_model(q, "rt", 0, NULL, 0, 0, &epoch, &err) == -1 && strstr(err.msg, "cancelled"),
       "nothing in a cancelled sweep is retried (%s)", err.msg);
}

/* A cron line enqueues with a unique key: while its sweep is live a second
 * enqueue names it and creates nothing; once that sweep finished the key
 * makes a new one; the reaper frees the key of a finished sweep. */
static void test_unique_sweep(queue_conn *q, redisContext *c)
{
    cds_err err;
    char dup[QUEUE_SWEEP_ID_MAX] = "?";
    queue_sweep_def d = sweep_def("u1", 1, 1, 1);
    d.unique = "nightly-2026-12-02";
    ok(queue_sweep_create(q, &d, dup, &err) == 0 && dup[0] == '\0' && sweep_is(c, "u1", "unique", d.unique),
       "a sweep created with a unique key");
    redisReply *r = test_rcmd(c, "GET %ssweeps:unique:nightly-2026-12-02", prefix);
    ok(r->type == REDIS_REPLY_STRING && strcmp(r->str, "u1") == 0, "the key names it");
    freeReplyObject(r);
    queue_sweep_def d2 = sweep_def("u2", 1, 1, 1);
    d2.unique = d.unique;
    ok(queue_sweep_create(q, &d2, dup, &err) == QUEUE_MOP_DUPLICATE && strcmp(dup, "u1") == 0,
       "a second create with the key names the live sweep u1 (%s)", dup);
    r = test_rcmd(c, "EXISTS %ssweep:{u2}", prefix);
    ok(r->type == REDIS_REPLY_INTEGER && r->integer == 0, "and creates nothing");
    freeReplyObject(r);
    freeReplyObject(test_rcmd(c, "HSET %ssweep:{u1} state done", prefix)); /* finished, not yet reaped */
    ok(queue_sweep_create(q, &d2, dup, &err) == 0, "once u1 is done the key makes a new sweep (%s)", err.msg);
    r = test_rcmd(c, "GET %ssweeps:unique:nightly-2026-12-02", prefix);
    ok(r->type == REDIS_REPLY_STRING && strcmp(r->str, "u2") == 0, "and names it");
    freeReplyObject(r);
    int n, ne;
    ok(queue_sweep_set_state(q, "u2", "cancelled", &err) == 0 && queue_mop_reap(q, "u2", &n, &ne, &err) == 0 &&
           !is_active(c, "u2"),
       "u2 is cancelled and reaped");
    r = test_rcmd(c, "EXISTS %ssweeps:unique:nightly-2026-12-02", prefix);
    ok(r->type == REDIS_REPLY_INTEGER && r->integer == 0, "the reaper freed the key with it");
    freeReplyObject(r);
    queue_sweep_def bad = sweep_def("u3", 1, 1, 1);
    bad.unique = "no spaces";
    ok(queue_sweep_create(q, &bad, dup, &err) == -1 && strstr(err.msg, "bad unique key"), "a bad key is refused (%s)",
       err.msg);
}

/* The test scoring's failed attempts: a backoff, then the failure is
 * recorded as the result at max_attempts, which finishes the sweep. */
static void test_test_attempts(queue_conn *q, redisContext *c)
{
    cds_err err;
    queue_sweep_def d = sweep_def("ta", 1, 1, 1);
    d.max_attempts = 2;
    d.backoff_base_ms = 60000;
    if (queue_sweep_create(q, &d, NULL, &err) != 0)
        tap_bail(err.msg);
    finish_epoch(q, "ta", "ckpt/ta");
    queue_mop_lease e, a, x;
    int is_best, prev, failed = 1;
    queue_mop_take_eval(q, "ta", "ta-e", HOLD_MS, &e, &err);
    queue_mop_record_result(q, "ta", &e, "{}", 0.7, &is_best, &prev, &err);
    ok(queue_mop_claim_test(q, "ta", "ta-a", HOLD_MS, &a, &err) == 1 &&
           queue_mop_fail_test(q, "ta", &a, "best-e1.ckpt: CRC-32 mismatch", &failed, &err) == 0 && !failed &&
           sweep_is(c, "ta", "test_attempts", "1") && sweep_is(c, "ta", "test", "") && sweep_is(c, "ta", "test_token", ""),
       "a failed test scoring is attempt 1 of 2; the claim ends, nothing recorded");
    ok(queue_mop_claim_test(q, "ta", "ta-b", HOLD_MS, &x, &err) == 0, "nobody claims it during its backoff");
    ok(queue_mop_fail_test(q, "ta", &a, "again", &failed, &err) == QUEUE_NOT_FOUND, "the ended claim cannot fail again");
    freeReplyObject(test_rcmd(c, "HSET %ssweep:{ta} test_not_before 1", prefix));
    char test[512];
    ok(queue_mop_claim_test(q, "ta", "ta-b", HOLD_MS, &a, &err) == 1 &&
           queue_mop_fail_test(q, "ta", &a, "best-e1.ckpt: CRC-32 mismatch", &failed, &err) == 0 && failed &&
           strstr(sweep_field(c, "ta", "test", test, sizeof test),
                  "{\"error\":\"test scoring failed 2 of 2 attempts: best-e1.ckpt: CRC-32 mismatch\"}") &&
           !is_active(c, "ta"),
       "the second attempt fails it: the reason is the result (%s), the sweep finished", test);
}

/* ---- the active set ------------------------------------------------------------ */

static int in_list(char **ids, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(ids[i], id) == 0)
            return 1;
    return 0;
}

static void test_active_set(queue_conn *q, redisContext *c)
{
    cds_err err;
    queue_mop_lease e;
    int n, ne, is_best, prev;
    create_sweep(q, "act", 2, 1, 1);
    ok(is_active(c, "act"), "a new sweep is in the active set");
    finish_epoch(q, "act", "ckpt/act");
    ok(queue_sweep_set_state(q, "act", "cancelled", &err) == 0 && queue_mop_reap(q, "act", &n, &ne, &err) == 0 &&
           is_active(c, "act"),
       "cancelled with an evaluation waiting, it stays active");
    queue_mop_take_eval(q, "act", "act-w", HOLD_MS, &e, &err);
    queue_mop_reap(q, "act", &n, &ne, &err);
    ok(is_active(c, "act"), "... and with the evaluation in flight");
    ok(queue_mop_record_result(q, "act", &e, "{}", 0.5, &is_best, &prev, &err) == 0 &&
           queue_mop_reap(q, "act", &n, &ne, &err) == 0 && !is_active(c, "act"),
       "once the evaluation is recorded, the next reap takes it out");

    /* A sweep done with nothing to evaluate still waits for its test record. */
    create_sweep(q, "act2", 1, 1, 1);
    queue_mop_lease l;
    lease(q, "act2", 0, "act-w", HOLD_MS, &l, NULL);
    queue_mop_fail_visit(q, "act2", &l, "loss is NaN", 1, NULL, NULL, NULL, &err);
    queue_mop_reap(q, "act2", &n, &ne, &err);
    ok(sweep_is(c, "act2", "state", "done") && is_active(c, "act2"),
       "a done sweep whose test is not recorded stays active");

    char **ids = NULL;
    size_t nid = 0;
    ok(queue_sweep_list_active(q, &ids, &nid, &err) == 0 && !in_list(ids, nid, "act") && in_list(ids, nid, "act2") &&
           in_list(ids, nid, "ev") && !in_list(ids, nid, "tc"),
       "list_active lists act2 and ev, not the finished act and tc (%zu active)", nid);
    queue_sweep_list_free(ids, nid);
    ok(queue_sweep_list(q, &ids, &nid, &err) == 0 && in_list(ids, nid, "act") && in_list(ids, nid, "tc"),
       "the index of every sweep still lists them (%zu)", nid);
    queue_sweep_list_free(ids, nid);

    /* A deployment whose sweeps predate the active set: it is built once. */
    freeReplyObject(test_rcmd(c, "DEL %ssweeps:active %ssweeps:active:built", prefix, prefix));
    ok(queue_sweep_list_active(q, &ids, &nid, &err) == 0 && !in_list(ids, nid, "act") && in_list(ids, nid, "act2") &&
           !in_list(ids, nid, "tc") && in_list(ids, nid, "ev"),
       "without an active set, the first listing rebuilds it from the index: unfinished sweeps only (%zu)", nid);
    queue_sweep_list_free(ids, nid);
    freeReplyObject(test_rcmd(c, "ZREM %ssweeps:active ev", prefix));
    ok(queue_sweep_list_active(q, &ids, &nid, &err) == 0 && !in_list(ids, nid, "ev"),
       "it is rebuilt only once (a marker key says so)");
    queue_sweep_list_free(ids, nid);
    freeReplyObject(test_rcmd(c, "ZADD %ssweeps:active 1 ev", prefix));

    freeReplyObject(test_rcmd(c, "DEL %ssweep:{act2}", prefix));
    ok(queue_mop_reap(q, "act2", &n, &ne, &err) == QUEUE_NOT_FOUND && !is_active(c, "act2"),
       "a sweep whose hash was deleted leaves the active set at the next reap");
}

/* ---- waiting ------------------------------------------------------------- */

typedef struct late_commit {
    const char *sweep;
    queue_mop_lease l;
    int64_t delay_ms;
    int accepted;
} late_commit;

static void *commit_later(void *arg)
{
    late_commit *lc = arg;
    queue_opts o = {.url = test_redis_url(), .prefix = prefix};
    cds_err err;
    queue_conn *q = queue_connect(&o, &err);
    if (!q)
        return NULL;
    cds_sleep_ms(lc->delay_ms);
    queue_mop_commit_result r;
    lc->accepted = queue_mop_commit(q, lc->sweep, &lc->l, "ckpt/late", NULL, &r, &err) == 0 && r.accepted;
    queue_close(q);
    return NULL;
}

static void test_wait(queue_conn *q, redisContext *c)
{
    cds_err err;
    freeReplyObject(test_rcmd(c, "DEL %smop:wake", prefix));
    int64_t t0 = cds_mono_ms();
    int rc = queue_mop_wait(q, 1000, &err);
    int64_t dt = cds_mono_ms() - t0;
    /* BLPOP with a 1 s timeout: 900 ms allows coarse timers, 1600 a loaded machine. */
    ok(rc == 0 && dt >= 900 && dt <= 1600, "wait with nothing pushed returns after about 1 s (%lld ms)", (long long)dt);
    t0 = cds_mono_ms();
    rc = queue_mop_wait(q, 5000, &err);
    dt = cds_mono_ms() - t0;
    ok(rc == 0 && dt <= 1600, "a 5 s wait is capped at 1 s (%lld ms)", (long long)dt);

    create_sweep(q, "waiting", 1, 1, 1);
    late_commit lc = {.sweep = "waiting", .delay_ms = 200};
    lease(q, "waiting", 0, "wait-w0", HOLD_MS, &lc.l, NULL);
    freeReplyObject(test_rcmd(c, "DEL %smop:wake", prefix));
    pthread_t th;
    pthread_create(&th, NULL, commit_later, &lc);
    t0 = cds_mono_ms();
    rc = queue_mop_wait(q, 1000, &err);
    dt = cds_mono_ms() - t0;
    pthread_join(th, NULL);
    /* The commit comes 200 ms in; 150 allows timer slack, 800 a slow thread
     * start while staying clearly below the 1 s timeout. */
    ok(rc == 0 && lc.accepted && dt >= 150 && dt <= 800, "a commit wakes a waiting worker promptly (%lld ms)",
       (long long)dt);
}

/* ---- concurrency --------------------------------------------------------- */

enum { CM = 6, CK = 2, CE = 3, CT = 4 };

typedef struct hammer {
    atomic_int holder[CM];      /* thread that believes it holds the model, or -1 */
    pthread_mutex_t mu;
    int committed[CM][CE][CK];  /* under mu */
    atomic_int double_holder, revisit, double_commit, zombie_accepted, unexpected_loss, errors;
    atomic_int commits, crashes, releases;
    int64_t stop_at;            /* a safety net: the sweep takes well under a second normally */
} hammer;

typedef struct hammer_arg {
    hammer *h;
    int t;
} hammer_arg;

/* A worker: lease, "train" a few ms, renew, then commit (or, at random,
 * release, or crash: stop renewing, let the lease expire and try to commit
 * late as a zombie would).  holder[m] is claimed after a lease and given up
 * before the lease ends, so a successful claim that finds another holder is a
 * model leased to two workers at once. */
static void *hammer_worker(void *arg)
{
    hammer_arg *a = arg;
    hammer *h = a->h;
    int t = a->t, shard = t % CK;
    char worker[32];
    snprintf(worker, sizeof worker, "c-t%d-s%d", t, shard);
    queue_opts o = {.url = test_redis_url(), .prefix = prefix};
    cds_err err;
    queue_conn *q = queue_connect(&o, &err);
    if (!q) {
        h->errors++;
        return NULL;
    }
    unsigned seed = 7919u * (unsigned)t + 1u;
    int nleases = 0;
    while (cds_mono_ms() < h->stop_at) {
        int n;
        if (queue_mop_reap(q, "hammer", &n, NULL, &err) != 0) {
            h->errors++;
            break;
        }
        /* Thread 0 crashes on its first lease and thread 1 releases its
         * second, so both paths run whatever the random draws. */
        int crash = (t == 0 && nleases == 0) || rand_r(&seed) % 10 == 0;
        int release = !crash && ((t == 1 && nleases == 1) || rand_r(&seed) % 10 == 0);
        queue_mop_lease l;
        int done = 0;
        int rc = queue_mop_lease_model(q, "hammer", shard, worker, crash ? SHORT_MS : HOLD_MS, &l, &done, &err);
        if (rc < 0) {
            h->errors++;
            break;
        }
        if (rc == 0) {
            if (done)
                break;
            queue_mop_wait(q, 20, &err);
            continue;
        }
        nleases++;
        int m = l.model, free_mark = -1;
        if (!atomic_compare_exchange_strong(&h->holder[m], &free_mark, t))
            h->double_holder++;
        pthread_mutex_lock(&h->mu);
        h->revisit += h->committed[m][l.epoch - 1][shard] != 0;
        pthread_mutex_unlock(&h->mu);
        if (crash) {
            atomic_store(&h->holder[m], -1); /* dead: it will touch nothing but a zombie commit */
            h->crashes++;
            cds_sleep_ms(EXPIRE_WAIT_MS);
            queue_mop_commit_result r;
            if (queue_mop_commit(q, "hammer", &l, "zombie", NULL, &r, &err) == 0 && r.accepted)
                h->zombie_accepted++;
            continue;
        }
        cds_sleep_ms(rand_r(&seed) % 4);
        if (queue_mop_renew(q, "hammer", &l, HOLD_MS, &err) != 0)
            h->unexpected_loss++;
        atomic_store(&h->holder[m], -1);
        if (release) {
            h->releases++;
            if (queue_mop_release(q, "hammer", &l, &err) != 0)
                h->unexpected_loss++;
            continue;
        }
        char path[64];
        snprintf(path, sizeof path, "ckpt/m%d-e%d-k%d", m, l.epoch, shard);
        queue_mop_commit_result r;
        if (queue_mop_commit(q, "hammer", &l, path, NULL, &r, &err) != 0 || !r.accepted) {
            h->unexpected_loss++;
            continue;
        }
        h->commits++;
        pthread_mutex_lock(&h->mu);
        h->double_commit += h->committed[m][l.epoch - 1][shard]++ != 0;
        pthread_mutex_unlock(&h->mu);
    }
    queue_close(q);
    return NULL;
}

static void test_concurrency(queue_conn *q, redisContext *c)
{
    queue_sweep_def hd = sweep_def("hammer", CM, CK, CE);
    hd.max_stalls = 1000; /* crashes are random: no model may fail of them here */
    cds_err cerr;
    if (queue_sweep_create(q, &hd, NULL, &cerr) != 0)
        tap_bail("cannot create the hammer sweep");
    static hammer h; /* large enough to keep off the stack; zeroed once */
    for (int m = 0; m < CM; m++)
        atomic_init(&h.holder[m], -1);
    pthread_mutex_init(&h.mu, NULL);
    h.stop_at = cds_mono_ms() + 15000;
    pthread_t th[CT];
    hammer_arg args[CT];
    int64_t t0 = cds_mono_ms();
    for (int t = 0; t < CT; t++) {
        args[t] = (hammer_arg){.h = &h, .t = t};
        pthread_create(&th[t], NULL, hammer_worker, &args[t]);
    }
    for (int t = 0; t < CT; t++)
        pthread_join(th[t], NULL);
    tap_diag("%d threads: %d commits, %d crashes, %d releases in %lld ms", CT, (int)h.commits, (int)h.crashes,
             (int)h.releases, (long long)(cds_mono_ms() - t0));
    is_int(h.errors, 0, "concurrency: no call failed");
    ok(sweep_is(c, "hammer", "state", "done"), "concurrency: the sweep finished before the 15 s safety net");
    is_int(h.commits, CM * CE * CK, "concurrency: one accepted commit per (model, epoch, shard)");
    is_int(h.double_holder, 0, "concurrency: no model was leased to two workers at once");
    is_int(h.revisit, 0, "concurrency: no lease sent a model to a shard it had visited in its epoch");
    is_int(h.double_commit, 0, "concurrency: no (model, epoch, shard) was committed twice");
    is_int(h.zombie_accepted, 0, "concurrency: no commit of an expired lease was accepted");
    is_int(h.unexpected_loss, 0, "concurrency: no lease held with renewals was lost");
    ok(h.crashes >= 1 && h.releases >= 1, "concurrency: crashes (%d) and releases (%d) happened", (int)h.crashes,
       (int)h.releases);
    int stalls = 0, zombie_ckpt = 0;
    char buf[64];
    for (int m = 0; m < CM; m++) {
        stalls += atoi(model_field(c, "hammer", m, "stalls", buf, sizeof buf));
        zombie_ckpt += strcmp(model_field(c, "hammer", m, "ckpt", buf, sizeof buf), "zombie") == 0;
    }
    is_int(stalls, h.crashes, "concurrency: every crashed lease was reaped exactly once");
    is_int(zombie_ckpt, 0, "concurrency: no zombie path was published");
    check_schedule(c, "hammer", CM, CK, CE, NULL, "concurrency");
    pthread_mutex_destroy(&h.mu);
}

/* ---- the sweep id: one check for every call ------------------------------ */

static void test_sweep_id(queue_conn *q)
{
    cds_err err;
    ok(queue_sweep_id_check("s12_a-B", &err) == 0 && queue_sweep_id_check("a.b", NULL) == -1 &&
           queue_sweep_id_check("", NULL) == -1 && queue_sweep_id_check(NULL, NULL) == -1 &&
           queue_sweep_id_check("0123456789012345678901234567890", NULL) == 0 &&
           queue_sweep_id_check("01234567890123456789012345678901", NULL) == -1,
       "queue_sweep_id_check takes 1 to 31 of [A-Za-z0-9_-]");
    /* The views used to take '.' (a queue name's alphabet): an id no sweep
     * can have must be refused by them as by create, with the same words. */
    json_t *o = NULL;
    char **lines = NULL;
    size_t n = 0;
    ok(queue_sweep_get(q, "a.b", &o, &err) == -1 && strstr(err.msg, "bad sweep id 'a.b': use 1 to 31"),
       "queue_sweep_get refuses 'a.b': %s", err.msg);
    ok(queue_mop_results(q, "a.b", &o, &err) == -1 && strstr(err.msg, "bad sweep id"), "so do the results");
    ok(queue_mop_schedule(q, "a.b", &lines, &n, &err) == -1 && strstr(err.msg, "bad sweep id"),
       "and the schedule");
    ok(queue_outbox_report(q, "a.b", &o, &err) == -1 && strstr(err.msg, "bad sweep id 'a.b': use 1 to 31"),
       "and the outbox report");
}

/* ---- drawing a sweep id ----------------------------------------------------- */

static void test_new_id(queue_conn *q, redisContext *c)
{
    cds_err err;
    char id[QUEUE_SWEEP_ID_MAX];
    ok(queue_sweep_new_id(q, id, &err) == 0 && strcmp(id, "s1") == 0, "the first drawn sweep id is s1 (%s)", id);
    create_sweep(q, "s2", 1, 1, 1); /* as jobctl enqueue sweep --id s2 */
    create_sweep(q, "s3", 1, 1, 1);
    ok(queue_sweep_new_id(q, id, &err) == 0 && strcmp(id, "s4") == 0, "ids that sweeps already have are skipped (%s)",
       id);
    freeReplyObject(test_rcmd(c, "SET %ssweep:seq abc", prefix));
    ok(queue_sweep_new_id(q, id, &err) == QUEUE_MOP_NO_ID && strstr(err.msg, "sweep:seq does not hold a counter") &&
           !id[0],
       "a counter key holding something else is refused: %s", err.msg);
    freeReplyObject(test_rcmd(c, "SET %ssweep:seq 0", prefix));
    ok(queue_sweep_new_id(q, id, &err) == 0 && strcmp(id, "s1") == 0, "and drawing goes on once it is a counter");
}

/* ---- replay: the plans come from the original's schedule ------------------ */

static void visit_once(queue_conn *q, const char *sweep, int shard, int want_model)
{
    queue_mop_lease l;
    if (lease(q, sweep, shard, "rp-w", HOLD_MS, &l, NULL) != 1 || l.model != want_model ||
        !commit(q, sweep, &l, "/tmp/rp.ckpt").accepted)
        tap_bail("could not make a replay's original visit");
}

static void test_replay(queue_conn *q, redisContext *c)
{
    cds_err err;
    char buf[64];
    create_sweep(q, "rp", 2, 2, 1);
    visit_once(q, "rp", 1, 0); /* model 0 sees shard 1 first */
    ok(queue_sweep_replay(q, "rp", "rp-early", &err) == -1 && strstr(err.msg, "only a finished model"),
       "an unfinished sweep is not replayed: %s", err.msg);
    visit_once(q, "rp", 0, 1);
    visit_once(q, "rp", 0, 0);
    visit_once(q, "rp", 1, 1);
    int rc = queue_sweep_replay(q, "rp", "rp2", &err);
    ok(rc == 0, "a finished sweep is replayed (%s)", rc ? err.msg : "");
    ok(strcmp(model_field(c, "rp2", 0, "plan", buf, sizeof buf), "00010000") == 0 &&
           strcmp(model_field(c, "rp2", 1, "plan", buf, sizeof buf), "00000001") == 0,
       "each model's plan is its visits in the original's order");
    ok(sweep_is(c, "rp2", "replay_of", "rp") && sweep_is(c, "rp2", "dataset_version", "v1") &&
           strcmp(model_field(c, "rp2", 1, "spec", buf, sizeof buf), model_specs[1]) == 0,
       "with the original's dataset version and specs");
    queue_mop_lease l;
    ok(lease(q, "rp2", 0, "rp-w", HOLD_MS, &l, NULL) == 1 && l.model == 1,
       "shard 0 goes to model 1, whose plan starts with it");
    ok(queue_sweep_replay(q, "rp", "rp2", &err) == -1 && strstr(err.msg, "already exists"),
       "a replay into a taken id is refused");
    ok(queue_sweep_replay(q, "nosuch", "rp3", &err) == QUEUE_NOT_FOUND, "no replay of a sweep that does not exist");
}

/* ---- the lease carries what the visit needs -------------------------------- */

static void test_lease_visit(queue_conn *q)
{
    cds_err err;
    create_sweep(q, "lv", 3, 2, 1);
    queue_mop_lease l;
    int rc = queue_mop_lease_visit(q, "lv", 1, "lv-w", HOLD_MS, &l, NULL, &err);
    ok(rc == 1 && l.model == 0 && l.shard == 1, "a visit is leased (%s)", rc < 0 ? err.msg : "");
    ok(strcmp(l.dataset, "mnist") == 0 && strcmp(l.dataset_version, "v1") == 0 && l.shards == 2,
       "with its dataset, version and shard count (%s %s %d)", l.dataset, l.dataset_version, l.shards);
    ok(l.spec && strcmp(l.spec, model_specs[0]) == 0, "and its model's spec (%s)", l.spec ? l.spec : "NULL");
    queue_mop_lease_clear(&l);
    ok(!l.spec && l.model == 0 && !l.token[0], "queue_mop_lease_clear frees and zeroes it");
    rc = queue_mop_lease_model(q, "lv", 1, "lv-w2", HOLD_MS, &l, NULL, &err);
    ok(rc == 1 && l.model == 1 && !l.spec && strcmp(l.dataset, "mnist") == 0 && l.shards == 2,
       "queue_mop_lease_model fills the same but the spec");
    queue_mop_lease_clear(&l);
}

/* ---- one script path: every MOP script by SHA1, loaded at connect ------ */

extern const char queue_lua_mop_lease[], queue_lua_mop_orphans[], queue_lua_outbox[];

/* Whether the server holds script src (by its SHA1, which Redis computes). */
static int script_loaded(redisContext *c, const char *src)
{
    redisReply *h = test_rcmd(c, "EVAL %s 0 %s", "return redis.sha1hex(ARGV[1])", src);
    int loaded = 0;
    if (h->type == REDIS_REPLY_STRING) {
        redisReply *e = test_rcmd(c, "SCRIPT EXISTS %s", h->str);
        loaded = e->type == REDIS_REPLY_ARRAY && e->elements == 1 && e->element[0]->integer == 1;
        freeReplyObject(e);
    }
    freeReplyObject(h);
    return loaded;
}

static void test_script_table(queue_conn *q, redisContext *c)
{
    cds_err err;
    freeReplyObject(test_rcmd(c, "SCRIPT FLUSH"));
    queue_opts o = {.url = test_redis_url(), .prefix = prefix};
    queue_conn *q2 = queue_connect(&o, &err);
    if (!q2)
        tap_bail("cannot connect a second time");
    /* Sent with EVAL, the MOP and outbox scripts were cached by the server
     * only once called; in the connection's table they are loaded at once. */
    ok(script_loaded(c, queue_lua_mop_lease) && script_loaded(c, queue_lua_mop_orphans) &&
           script_loaded(c, queue_lua_outbox),
       "connecting loads the MOP and outbox scripts with the others");
    queue_close(q2);
    /* A server that lost them: the call sees NOSCRIPT, reloads, runs. */
    create_sweep(q, "scripts", 1, 1, 1);
    freeReplyObject(test_rcmd(c, "SCRIPT FLUSH"));
    queue_mop_lease l;
    ok(lease(q, "scripts", 0, "w1", HOLD_MS, &l, NULL) == 1 && l.model == 0, "a MOP lease survives SCRIPT FLUSH");
    ok(script_loaded(c, queue_lua_outbox), "NOSCRIPT reloads every script");
}

/* Gangs (mop_gang*.lua): a gang forms only when every shard has a ready
 * worker, all ranks at once; its end counts a stall only when every rank
 * had joined; rank 0's commit ends the epoch and the other ranks hear
 * 'done'; a rank of an ended gang is refused. */
static int gang_take(queue_conn *q, const char *sweep, const char *worker, int shard, int64_t lease_ms,
                     queue_mop_lease *l)
{
    cds_err err;
    queue_mop_lease_clear(l); /* a rank taken earlier into l: its spec */
    int rc = queue_mop_gang_take(q, sweep, worker, lease_ms, 3000, &shard, 1, NULL, l, NULL, &err);
    if (rc < 0)
        printf("# gang take: %s\n", err.msg);
    return rc;
}

static void test_gangs(queue_conn *q, redisContext *c)
{
    cds_err err;
    queue_sweep_def d = sweep_def("gang", 1, 2, 1);
    d.mode = "ddp";
    ok(queue_sweep_create(q, &d, NULL, &err) == 0 && sweep_is(c, "gang", "mode", "ddp"), "a DDP sweep is created");
    queue_mop_lease a = {0}, b = {0}, a2 = {0};
    int done = 0;
    ok(queue_mop_lease_model(q, "gang", 0, "wa", 1000, &a, &done, &err) == QUEUE_MOP_GANG,
       "its models are not leased one visit at a time: the lease answers 'gang'");
    ok(gang_take(q, "gang", "wa", 0, 60000, &a) == 0 && model_is(c, "gang", 0, "state", "idle"),
       "one ready worker of two shards forms no gang");
    ok(gang_take(q, "gang", "wb", 1, 60000, &b) == 1 && b.kind == QUEUE_MOP_RANK && b.shard == 1 && b.shards == 2 &&
           strcmp(b.mode, "ddp") == 0 && model_is(c, "gang", 0, "state", "leased"),
       "the second forms the gang at once and takes rank 1 of 2");
    /* wa is named for rank 0 but, busy elsewhere, never takes it. */
    ok(queue_mop_gang_end(q, "gang", &b, QUEUE_GANG_ABORT, "peer never came", NULL, NULL, &err) == 0 &&
           model_is(c, "gang", 0, "state", "idle") && model_is(c, "gang", 0, "stalls", "0"),
       "a gang that broke before every rank joined counts no stall");
    ok(gang_take(q, "gang", "wa", 0, 60000, &a) == 0 && gang_take(q, "gang", "wb", 1, 60000, &b) == 1 &&
           gang_take(q, "gang", "wa", 0, 60000, &a) == 1 && a.shard == 0 && a.gang == b.gang,
       "a new gang: both ranks taken, the same gang");
    ok(queue_mop_renew(q, "gang", &a, 60000, &err) == 0, "rank 0 renews");
    ok(queue_mop_gang_end(q, "gang", &a, QUEUE_GANG_ABORT, "rank 1 killed", NULL, NULL, &err) == 0 &&
           model_is(c, "gang", 0, "stalls", "1"),
       "a whole gang that broke counts one stall");
    ok(queue_mop_gang_end(q, "gang", &b, QUEUE_GANG_ABORT, "collective failed", NULL, NULL, &err) ==
           QUEUE_NOT_FOUND && model_is(c, "gang", 0, "stalls", "1"),
       "the other rank's end of the same gang is refused: counted once");
    ok(queue_mop_renew(q, "gang", &b, 60000, &err) == QUEUE_NOT_FOUND, "and so is its renewal: its worker kills it");
    /* An expired gang some rank never joined: freed without a stall. */
    ok(gang_take(q, "gang", "wa", 0, 100, &a) == 0 && gang_take(q, "gang", "wb", 1, 100, &b) == 1,
       "a gang with 100 ms ranks");
    usleep(250000);
    int reaped = 0;
    ok(queue_mop_reap(q, "gang", &reaped, NULL, &err) == 0 && reaped == 1 && model_is(c, "gang", 0, "state", "idle") &&
           model_is(c, "gang", 0, "stalls", "1"),
       "the reaper frees it past its deadline, counting no stall (a rank never joined)");
    ok(gang_take(q, "gang", "wa", 0, 60000, &a) == 0 && gang_take(q, "gang", "wb", 1, 60000, &b) == 1 &&
           gang_take(q, "gang", "wa", 0, 60000, &a2) == 1, "a last gang, both ranks taken");
    queue_mop_commit_result r;
    const char *metrics[2] = {"{\"rows\":1}", "{\"rows\":2}"};
    ok(queue_mop_gang_commit(q, "gang", &b, "/x/v1.ckpt", metrics, &r, &err) == -1 && strstr(err.msg, "rank 0"),
       "rank 1 commits nothing: %s", err.msg);
    ok(queue_mop_gang_commit(q, "gang", &a2, "/x/v1.ckpt", metrics, &r, &err) == 0 && r.accepted && r.model_done &&
           r.version == 1 && model_is(c, "gang", 0, "state", "done") && sweep_is(c, "gang", "state", "done") &&
           list_len(c, "schedule", "gang") == 2 && list_len(c, "evals", "gang") == 1,
       "rank 0 commits the epoch: one schedule entry per rank, the epoch queued, the model and sweep done");
    ok(queue_mop_renew(q, "gang", &b, 60000, &err) == QUEUE_MOP_GANG_DONE,
       "rank 1's renewal after the commit hears 'done', not 'lost'");
    queue_mop_commit_result r2;
    ok(queue_mop_gang_commit(q, "gang", &a2, "/x/v1.ckpt", metrics, &r2, &err) == 0 && r2.accepted &&
           r2.version == 1 && list_len(c, "schedule", "gang") == 2,
       "a commit resent after a lost reply hears the same receipt, nothing twice");
    queue_mop_lease_clear(&a);
    queue_mop_lease_clear(&a2);
    queue_mop_lease_clear(&b);
}

int main(void)
{
    queue_conn *q = test_connect("mop", prefix, sizeof prefix);
    redisContext *c = test_raw_connect();
    test_create(q, c);
    test_simulation(q, c);
    test_lost_lease(q, c);
    test_fail_model(q, c);
    test_stall_limit(q, c);
    test_states(q, c);
    test_many_models(q, c);
    test_model_control(q, c);
    test_commit_metrics(q, c);
    test_eval_lease(q, c);
    test_test_claim(q, c);
    test_active_set(q, c);
    test_visit_attempts(q, c);
    test_retry_model(q, c);
    test_unique_sweep(q, c);
    test_test_attempts(q, c);
    test_wait(q, c);
    test_concurrency(q, c);
    test_script_table(q, c);
    test_sweep_id(q);
    test_new_id(q, c);
    test_replay(q, c);
    test_lease_visit(q);
    test_gangs(q, c);
    redisFree(c);
    queue_close(q);
    return tap_done();
}
