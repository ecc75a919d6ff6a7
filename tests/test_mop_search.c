/* Search in the MOP scripts (DESIGN.md §9, docs/search.md).
 *
 * TPE's trials (mop_add_trial.lua): a sweep owes one trial per finished
 * model up to its budget; trial t is added once however many workers
 * propose it (the second hears it is taken), a proposal that never came is
 * still owed, a failed proposal spends the budget, and the sweep is done
 * only when its budget is spent and nothing is live.
 *
 * Early stopping: ASHA
 * as Ray Tune applies it, checked on scripted learning curves against a
 * reference implementation of the rule written here, apart from the Lua.
 *
 * A sweep of M models on K shards with "early_stop" is driven the way
 * workers drive it (evaluations first, then visits), with each epoch's
 * validation top-1 taken from a fixed curve per model.  The reference
 * follows the same events: when model m's evaluation of a rung epoch is
 * recorded, m continues iff its value is at least numpy's linear
 * percentile (1 - 1/eta) of the values recorded at that rung of its
 * bracket before it (none: it continues); either way the value is recorded.
 * Checked: every decision (stopped or not, at which epoch) is the
 * reference's; a model at a rung is not leased until its decision; a
 * stopped model is never leased again, keeps its results, and its state
 * and reason say where it stopped; survivors end at max_epochs; the sweep
 * is done when the last live model is.  Then the edges: an evaluation that
 * fails for good or is dropped releases its model without a decision
 * (noted), a model waiting at a rung can be cancelled, and a brackets > 1
 * (Hyperband) sweep puts models in brackets round-robin. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "queue_mop.h"
#include "testutil.h"

#define M 12
#define K 2
#define E 9
#define HOLD_MS 5000

static char prefix[64];
static const char *const specs[M] = {"{}", "{}", "{}", "{}", "{}", "{}", "{}", "{}", "{}", "{}", "{}", "{}"};

static void field(redisContext *c, const char *sweep, const char *suffix, const char *f, char *buf, size_t n)
{
    redisReply *r = test_rcmd(c, "HGET %ssweep:{%s}%s %s", prefix, sweep, suffix, f);
    snprintf(buf, n, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
}

static void model_f(redisContext *c, const char *sweep, int m, const char *f, char *buf, size_t n)
{
    char name[64];
    snprintf(name, sizeof name, "%d.%s", m, f);
    field(c, sweep, ":models", name, buf, n);
}

/* Model m's validation top-1 after epoch e: a curve rising to its own
 * ceiling, with a wobble, so that rankings change between rungs. */
static double curve(int m, int e)
{
    double ceiling = 0.35 + 0.05 * (double)((m * 7) % M);
    double wobble = 0.03 * sin(1.7 * m + 2.3 * e);
    return ceiling * (1.0 - pow(0.55, e)) + wobble;
}

/* ---- the reference rule ---- */

typedef struct ref {
    int grace, eta, max, brackets;
    double rec[8][E + 1][M]; /* values recorded per bracket and rung epoch */
    int n_rec[8][E + 1];
    int stopped_at[M];       /* epoch, or 0 */
} ref;

static int ref_is_rung(const ref *r, int m, int e)
{
    long milestone = r->grace;
    for (int b = 0; b < m % r->brackets; b++)
        milestone *= r->eta;
    for (; milestone < r->max; milestone *= r->eta)
        if (milestone == e)
            return 1;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy.percentile(values, q·100), method 'linear' (its lerp: from the
 * upper end when the fraction is at least one half). */
static double percentile(const double *values, int n, double q)
{
    double v[M];
    memcpy(v, values, (size_t)n * sizeof *v);
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double rank = q * (n - 1), lo = floor(rank), t = rank - lo;
    double a = v[(int)lo], b = v[(int)lo + 1 < n ? (int)lo + 1 : n - 1];
    return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
}

/* 1 when the reference stops m at rung epoch e with value v. */
static int ref_decide(ref *r, int m, int e, double v)
{
    int b = m % r->brackets, n = r->n_rec[b][e];
    int stop = n > 0 && v < percentile(r->rec[b][e], n, ((1 - 1.0 / r->eta) * 100) / 100);
    r->rec[b][e][r->n_rec[b][e]++] = v;
    if (stop)
        r->stopped_at[m] = e;
    return stop;
}

/* ---- driving a sweep as workers do ---- */

static void make_sweep(queue_conn *q, const char *id, const char *es, int models, int epochs)
{
    queue_sweep_def d = {.id = id, .dataset = "d", .dataset_version = "v1", .shards = K, .epochs = epochs,
                         .models = models, .model_specs = specs, .spec_json = "{}", .early_stop = es};
    cds_err err;
    if (queue_sweep_create(q, &d, NULL, &err) != 0)
        tap_bail(err.msg);
}

static int record(queue_conn *q, const char *sweep, const queue_mop_lease *l, double v, cds_err *err)
{
    char json[128];
    snprintf(json, sizeof json, "{\"valid_top1\":%.17g,\"valid_loss\":%.17g}", v, 1 - v);
    int best, prev;
    return queue_mop_record_result(q, sweep, l, json, v, &best, &prev, err);
}

typedef struct run {
    int decisions, agree, rung_leased, stopped_leased, stuck, bad_state;
} run;

static void drive(queue_conn *q, redisContext *c, const char *sweep, ref *r, run *out)
{
    cds_err err;
    int waiting[M] = {0}; /* rung epoch a model waits at (reference), or 0 */
    char buf[512];
    memset(out, 0, sizeof *out);
    for (int step = 0, shard = 0; step < 20000; step++) {
        queue_mop_lease l;
        int got = queue_mop_take_eval(q, sweep, "w-eval", HOLD_MS, &l, &err);
        if (got < 0)
            tap_bail(err.msg);
        if (got == 1) {
            double v = curve(l.model, l.epoch);
            int at_rung = waiting[l.model] == l.epoch;
            int stop = at_rung ? ref_decide(r, l.model, l.epoch, v) : 0;
            if (record(q, sweep, &l, v, &err) != 0)
                tap_bail(err.msg);
            model_f(c, sweep, l.model, "state", buf, sizeof buf);
            if (at_rung) {
                out->decisions++;
                out->agree += stop == (strcmp(buf, "stopped") == 0) && (stop || strcmp(buf, "rung") != 0);
                waiting[l.model] = 0;
            }
            continue;
        }
        int done = 0, leased = 0;
        for (int tries = 0; tries < K && !leased; tries++, shard = (shard + 1) % K) {
            int rc = queue_mop_lease_model(q, sweep, shard, "w", HOLD_MS, &l, &done, &err);
            if (rc < 0)
                tap_bail(err.msg);
            leased = rc == 1;
        }
        if (!leased) {
            field(c, sweep, "", "state", buf, sizeof buf);
            out->stuck = strcmp(buf, "done") != 0;
            return;
        }
        out->rung_leased += waiting[l.model] != 0;
        out->stopped_leased += r->stopped_at[l.model] != 0;
        queue_mop_commit_result cr;
        if (queue_mop_commit(q, sweep, &l, "ckpt", NULL, &cr, &err) != 0 || !cr.accepted)
            tap_bail("commit refused");
        if (cr.epoch_done && !cr.model_done && ref_is_rung(r, l.model, l.epoch)) {
            waiting[l.model] = l.epoch;
            model_f(c, sweep, l.model, "state", buf, sizeof buf);
            out->bad_state += strcmp(buf, "rung") != 0;
        }
    }
    out->stuck = 1;
}

static void check_sweep(queue_conn *q, redisContext *c, const char *sweep, int brackets)
{
    ref r = {.grace = 1, .eta = 3, .max = E, .brackets = brackets};
    char es[64], buf[512];
    snprintf(es, sizeof es, "valid_top1 max 1 3 %d %d", E, brackets);
    make_sweep(q, sweep, es, M, E);
    run out;
    drive(q, c, sweep, &r, &out);
    int n_stopped = 0, states = 1, results = 1, reasons = 1;
    for (int m = 0; m < M; m++) {
        model_f(c, sweep, m, "state", buf, sizeof buf);
        int stopped = r.stopped_at[m] != 0;
        n_stopped += stopped;
        states &= strcmp(buf, stopped ? "stopped" : "done") == 0;
        model_f(c, sweep, m, "reason", buf, sizeof buf);
        char want[64];
        snprintf(want, sizeof want, "stopped by ASHA at epoch %d ", r.stopped_at[m]);
        reasons &= !stopped || strncmp(buf, want, strlen(want)) == 0;
        int last = stopped ? r.stopped_at[m] : E;
        for (int e = 1; e <= last; e++) {
            char f[32];
            snprintf(f, sizeof f, "%d.%d", m, e);
            field(c, sweep, ":results", f, buf, sizeof buf);
            results &= buf[0] == '{';
        }
    }
    ok(!out.stuck, "brackets %d: the sweep runs to its end", brackets);
    ok(out.decisions > 0 && out.agree == out.decisions, "brackets %d: all %d rung decisions are the reference's "
       "(%d agree)", brackets, out.decisions, out.agree);
    ok(n_stopped > 0 && n_stopped < M, "brackets %d: the curves stop some models and not all (%d of %d stopped)",
       brackets, n_stopped, M);
    ok(out.bad_state == 0 && out.rung_leased == 0, "brackets %d: a model at a rung waits for its decision (%d "
       "states wrong, %d leased early)", brackets, out.bad_state, out.rung_leased);
    ok(out.stopped_leased == 0, "brackets %d: a stopped model is never leased again", brackets);
    ok(states && reasons, "brackets %d: stopped models say where and why; the rest are done", brackets);
    ok(results, "brackets %d: every model keeps the results of every epoch it trained", brackets);
    field(c, sweep, "", "live", buf, sizeof buf);
    ok(strcmp(buf, "0") == 0, "brackets %d: nothing is live at the end", brackets);
}

/* The edges: no decision without a metric, a cancel at a rung, an
 * early max_epochs. */
static void check_edges(queue_conn *q, redisContext *c)
{
    cds_err err;
    char buf[512];
    /* max 3, grace 1, eta 2: rungs at epochs 1 and 2, the models end at 3 of the sweep's 5 */
    make_sweep(q, "asha-edge", "valid_top1 max 1 2 3 1", 3, 5);
    queue_mop_lease l;
    queue_mop_commit_result cr;
    int done;
    for (int k = 0; k < K; k++) /* models 0, 1, 2 each finish epoch 1 (K visits) */
        for (int m = 0; m < 3; m++)
            if (queue_mop_lease_model(q, "asha-edge", k, "w", HOLD_MS, &l, &done, &err) != 1 ||
                queue_mop_commit(q, "asha-edge", &l, "ckpt", NULL, &cr, &err) != 0)
                tap_bail("edge: a visit failed");
    model_f(c, "asha-edge", 0, "state", buf, sizeof buf);
    ok(strcmp(buf, "rung") == 0, "a model that finished a rung epoch waits (state %s)", buf);
    /* model 0: its evaluation fails for good: it goes on without a decision */
    ok(queue_mop_take_eval(q, "asha-edge", "we", HOLD_MS, &l, &err) == 1 && l.model == 0 &&
           queue_mop_put_eval(q, "asha-edge", &l, QUEUE_EVAL_DROP, "checkpoint gone", NULL, &err) == 0,
       "the rung evaluation of model 0 is dropped");
    model_f(c, "asha-edge", 0, "state", buf, sizeof buf);
    char note[512];
    model_f(c, "asha-edge", 0, "rung_note", note, sizeof note);
    ok(strcmp(buf, "idle") == 0 && strstr(note, "without a decision: checkpoint gone"),
       "...and model 0 goes on without a decision, noted (%s: %s)", buf, note);
    /* model 1: cancelled while it waits */
    char prev[16];
    ok(queue_mop_set_model_state(q, "asha-edge", 1, "cancelled", prev, &err) == 0 && strcmp(prev, "rung") == 0,
       "a model waiting at a rung can be cancelled");
    /* model 2: no metric in its evaluation: it goes on, noted */
    queue_mop_lease ev2;
    int best, pb;
    ok(queue_mop_take_eval(q, "asha-edge", "we", HOLD_MS, &ev2, &err) == 1 && ev2.model == 1 &&
           queue_mop_put_eval(q, "asha-edge", &ev2, QUEUE_EVAL_DROP, "", NULL, &err) == 0 &&
           queue_mop_take_eval(q, "asha-edge", "we", HOLD_MS, &ev2, &err) == 1 && ev2.model == 2 &&
           queue_mop_record_result(q, "asha-edge", &ev2, "{\"valid_loss\":0.5}", 0.1, &best, &pb, &err) == 0,
       "model 2's evaluation is recorded without its metric");
    model_f(c, "asha-edge", 2, "state", buf, sizeof buf);
    model_f(c, "asha-edge", 2, "rung_note", note, sizeof note);
    ok(strcmp(buf, "idle") == 0 && strstr(note, "gave no valid_top1"), "...and it goes on, noted (%s: %s)", buf,
       note);
    /* models 0 and 2 run on (every metric equal: none is below the cutoff)
     * to early stopping's max_epochs 3, not the sweep's 5 */
    int last = 0;
    for (int step = 0; step < 200; step++) {
        queue_mop_lease ev;
        if (queue_mop_take_eval(q, "asha-edge", "we", HOLD_MS, &ev, &err) == 1) {
            record(q, "asha-edge", &ev, 0.5, &err);
            continue;
        }
        int leased = 0;
        for (int k = 0; k < K && !leased; k++)
            if (queue_mop_lease_model(q, "asha-edge", k, "w", HOLD_MS, &l, &done, &err) == 1) {
                leased = 1;
                last = l.epoch > last ? l.epoch : last;
                if (queue_mop_commit(q, "asha-edge", &l, "ckpt", NULL, &cr, &err) != 0)
                    tap_bail("edge: commit");
            }
        if (!leased)
            break;
    }
    char e0[16], e2[16], s0[16], s2[16];
    model_f(c, "asha-edge", 0, "state", s0, sizeof s0);
    model_f(c, "asha-edge", 2, "state", s2, sizeof s2);
    model_f(c, "asha-edge", 0, "epoch", e0, sizeof e0);
    model_f(c, "asha-edge", 2, "epoch", e2, sizeof e2);
    field(c, "asha-edge", "", "state", buf, sizeof buf);
    ok(strcmp(s0, "done") == 0 && strcmp(s2, "done") == 0 && strcmp(e0, "3") == 0 && strcmp(e2, "3") == 0 &&
           last == 3 && strcmp(buf, "done") == 0,
       "models end at early stopping's max_epochs (3), not the sweep's 5 (states %s %s, epochs %s %s, last leased "
       "%d; sweep %s)", s0, s2, e0, e2, last, buf);
}

/* TPE's trials, driven by hand: create, finish, propose. */
static void check_tpe_trials(queue_conn *q, redisContext *c)
{
    cds_err err;
    char buf[256];
    static const char *const pts[2] = {"[0.5]", "[0.25]"};
    queue_sweep_def d = {.id = "tpe-t", .dataset = "d", .dataset_version = "v1", .shards = 1, .epochs = 1,
                         .models = 2, .model_specs = specs, .spec_json = "{}", .search = "tpe", .trials = 4,
                         .points = pts};
    if (queue_sweep_create(q, &d, NULL, &err) != 0)
        tap_bail(err.msg);
    int owed, next, orc;
    orc = queue_mop_trials_owed(q, "tpe-t", &owed, &next, &err);
    ok(orc == 0 && owed == 0 && next == 2,
       "a TPE sweep owes nothing while its start-up trials run (owed %d, next %d)", owed, next);
    model_f(c, "tpe-t", 1, "point", buf, sizeof buf);
    ok(strcmp(buf, "[0.25]") == 0, "each model keeps its point (%s)", buf);
    queue_mop_lease l;
    queue_mop_commit_result cr;
    int done;
    ok(queue_mop_lease_model(q, "tpe-t", 0, "w", HOLD_MS, &l, &done, &err) == 1 &&
           queue_mop_commit(q, "tpe-t", &l, "ckpt", NULL, &cr, &err) == 0 && cr.model_done,
       "model 0 finishes");
    orc = queue_mop_trials_owed(q, "tpe-t", &owed, &next, &err);
    ok(orc == 0 && owed == 1 && next == 2,
       "...and the sweep owes trial 2 (owed %d, next %d)", owed, next);
    ok(queue_mop_add_trial(q, "tpe-t", 3, "{}", "[0.1]", NULL, &err) == 0,
       "a proposal of the wrong trial number is not added");
    ok(queue_mop_add_trial(q, "tpe-t", 2, "{\"t\":2}", "[0.75]", NULL, &err) == 1,
       "trial 2 is added");
    ok(queue_mop_add_trial(q, "tpe-t", 2, "{\"t\":2,\"again\":1}", "[0.9]", NULL, &err) == 0,
       "a second proposal of trial 2 (another worker) is not added");
    model_f(c, "tpe-t", 2, "spec", buf, sizeof buf);
    char models[16], live[16];
    field(c, "tpe-t", "", "models", models, sizeof models);
    field(c, "tpe-t", "", "live", live, sizeof live);
    ok(strcmp(buf, "{\"t\":2}") == 0 && strcmp(models, "3") == 0 && strcmp(live, "2") == 0,
       "trial 2 is the first proposal, live and counted (spec %s, models %s, live %s)", buf, models, live);
    orc = queue_mop_trials_owed(q, "tpe-t", &owed, &next, &err);
    ok(orc == 0 && owed == 0,
       "nothing more is owed until another model finishes (owed %d)", owed);
    /* models 1 and 2 finish: trial 3 is owed, then the budget (4) is spent */
    for (int i = 0; i < 2; i++)
        if (queue_mop_lease_model(q, "tpe-t", 0, "w", HOLD_MS, &l, &done, &err) != 1 ||
            queue_mop_commit(q, "tpe-t", &l, "ckpt", NULL, &cr, &err) != 0)
            tap_bail("tpe: a visit failed");
    field(c, "tpe-t", "", "state", buf, sizeof buf);
    orc = queue_mop_trials_owed(q, "tpe-t", &owed, &next, &err);
    ok(orc == 0 && owed == 1 && next == 3 &&
           strcmp(buf, "running") == 0,
       "with nothing live and budget left the sweep runs on, owing trial 3 (owed %d, state %s)", owed, buf);
    ok(queue_mop_add_trial(q, "tpe-t", 3, "{}", "[0.3]", "model spec: \"width\" must be a number", &err) == 1,
       "a proposal training refuses is added as failed");
    model_f(c, "tpe-t", 3, "state", buf, sizeof buf);
    field(c, "tpe-t", "", "state", live, sizeof live);
    ok(strcmp(buf, "failed") == 0 && strcmp(live, "done") == 0,
       "...which spends the budget: the sweep is done (model 3 %s, sweep %s)", buf, live);
    ok(queue_mop_add_trial(q, "tpe-t", 4, "{}", "[0.3]", NULL, &err) == 0,
       "nothing is added past the budget");
}

int main(void)
{
    queue_conn *q = test_connect("asha", prefix, sizeof prefix);
    redisContext *c = test_raw_connect();
    check_sweep(q, c, "asha-1", 1);
    check_sweep(q, c, "asha-hb", 2);
    check_edges(q, c);
    check_tpe_trials(q, c);
    redisFree(c);
    queue_close(q);
    return tap_done();
}
