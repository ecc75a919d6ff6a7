/* jobctl_sweep: the leaderboard and progress views of a MOP sweep.
 *
 * Both read the sweep hash, the models hash and the results hash once and
 * build one JSON document (jobctl_sweep_load), which --json prints as is and
 * the text views format, so scripts and people see the same numbers.  The
 * --follow log (jobctl_sweep_print_news) compares two such documents; the
 * learning curves (jobctl_sweep_plot) are drawn from one by gnuplot.
 * Retrying a model is in jobctl_sweep_rerun.c; a replay is queue_sweep_replay. */
#include "jobctl_sweep.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cds_res.h"
#include "cds_util.h"
#include "jobctl_fmt.h"
#include "queue_mop.h"
#include "sweep_eta.h"

/* "cnn adam lr=0.001 batch=64 l2=0" from a model's spec. */
static json_t *summary(const char *spec)
{
    json_t *o = spec ? json_loads(spec, 0, NULL) : NULL;
    json_t *m = json_object_get(o, "model"), *t = json_object_get(o, "train");
    char s[256];
    snprintf(s, sizeof s, "%s %s lr=%g batch=%lld l2=%g", json_string_value(json_object_get(m, "arch")) ?: "?",
             json_string_value(json_object_get(t, "optimizer")) ?: "?", json_number_value(json_object_get(t, "lr")),
             (long long)json_number_value(json_object_get(t, "batch")), json_number_value(json_object_get(t, "l2")));
    json_decref(o);
    return json_string(s);
}

/* A model's state as people see it: a model paused by itself (its flag,
 * apart from the state) is "paused", or "pausing" while a visit it had
 * leased before the pause is still in flight (that visit still commits). */
static const char *shown_state(const json_t *models, int m)
{
    const char *st = jobctl_sweep_field(models, "%d.state", m) ?: "?";
    const char *paused = jobctl_sweep_field(models, "%d.paused", m);
    if (paused && strcmp(paused, "1") == 0 && (strcmp(st, "idle") == 0 || strcmp(st, "leased") == 0))
        return strcmp(st, "idle") == 0 ? "paused" : "pausing";
    return st;
}

/* Models that train at the same speed: the same architecture and batch. */
static json_t *speed_group(const char *spec)
{
    json_t *o = spec ? json_loads(spec, 0, NULL) : NULL;
    char *arch = json_dumps(json_object_get(o, "model"), JSON_COMPACT | JSON_SORT_KEYS);
    char g[512];
    snprintf(g, sizeof g, "%s|batch=%lld", arch ? arch : "?",
             (long long)json_number_value(json_object_get(json_object_get(o, "train"), "batch")));
    free(arch);
    json_decref(o);
    return json_string(g);
}

/* A field holding JSON, parsed (NULL when absent, empty or not JSON). */
static json_t *json_field(const json_t *hash, const char *key)
{
    const char *v = json_string_value(json_object_get(hash, key));
    return v && *v ? json_loads(v, 0, NULL) : NULL;
}

/* The committed visits of model m, each {"epoch", "shard", metrics...}
 * (results fields "<m>.<e>.train.<k>"), for the estimate of time left. */
static json_t *model_visits(const json_t *results, int m, int epochs, int shards)
{
    json_t *a = json_array();
    for (int e = 1; e <= epochs; e++)
        for (int k = 0; k < shards; k++) {
            char key[64];
            snprintf(key, sizeof key, "%d.%d.train.%d", m, e, k);
            json_t *v = json_field(results, key);
            if (!json_is_object(v)) {
                json_decref(v);
                continue;
            }
            json_object_set_new(v, "epoch", json_integer(e));
            json_object_set_new(v, "shard", json_integer(k));
            json_array_append_new(a, v);
        }
    return a;
}

/* Epochs of model m whose evaluation failed for good: {"<e>": why}. */
static json_t *eval_errors(const json_t *models, int m, int epochs)
{
    json_t *o = json_object();
    for (int e = 1; e <= epochs; e++) {
        char key[64], ek[16];
        snprintf(key, sizeof key, "%d.eval_error.%d", m, e);
        const char *why = json_string_value(json_object_get(models, key));
        snprintf(ek, sizeof ek, "%d", e);
        if (why && *why)
            json_object_set_new(o, ek, json_string(why));
    }
    return o;
}

static json_t *load_model(const json_t *models, const json_t *results, int m, int epochs, int shards)
{
    json_t *e = json_array();
    for (int k = 1; k <= epochs; k++) {
        char key[32];
        snprintf(key, sizeof key, "%d.%d", m, k);
        json_t *metrics = json_field(results, key);
        if (metrics)
            json_array_append_new(e, metrics);
    }
    const char *spec = jobctl_sweep_field(models, "%d.spec", m);
    json_t *mo = json_pack("{s:i, s:s, s:i, s:s, s:o, s:o, s:o, s:o, s:o}", "model", m, "state",
                           shown_state(models, m), "epoch", atoi(jobctl_sweep_field(models, "%d.epoch", m) ?: "1"), "visited",
                           jobctl_sweep_field(models, "%d.visited", m) ?: "", "summary", summary(spec), "group", speed_group(spec),
                           "epochs", e, "visits", model_visits(results, m, epochs, shards), "eval_errors",
                           eval_errors(models, m, epochs));
    const char *best = jobctl_sweep_field(models, "%d.best_epoch", m), *top1 = jobctl_sweep_field(models, "%d.best_top1", m);
    if (best && *best) {
        json_object_set_new(mo, "best_epoch", json_integer(atoi(best)));
        json_object_set_new(mo, "best_valid_top1", json_real(atof(top1 ? top1 : "0")));
    }
    static const char *const text_fields[] = {"reason", "error", "worker", "not_before", "rung", "rung_note"};
    for (size_t i = 0; i < sizeof text_fields / sizeof text_fields[0]; i++) {
        char key[64];
        snprintf(key, sizeof key, "%%d.%s", text_fields[i]);
        const char *v = jobctl_sweep_field(models, key, m);
        if (v && *v)
            json_object_set_new(mo, text_fields[i], json_string(v));
    }
    int attempts = atoi(jobctl_sweep_field(models, "%d.attempts", m) ?: "0");
    if (attempts > 0)
        json_object_set_new(mo, "attempts", json_integer(attempts));
    const char *st = jobctl_sweep_field(models, "%d.state", m);
    char pk[32];
    snprintf(pk, sizeof pk, "%d.progress", m);
    json_t *progress = st && strcmp(st, "leased") == 0 ? json_field(models, pk) : NULL;
    if (json_is_object(progress)) {
        json_object_set_new(progress, "shard", json_integer(atoi(jobctl_sweep_field(models, "%d.shard", m) ?: "-1")));
        json_object_set_new(mo, "progress", progress);
    } else {
        json_decref(progress);
    }
    return mo;
}

int jobctl_sweep_load(queue_conn *q, const char *sweep, json_t **out, cds_err *err)
{
    *out = NULL;
    json_t *sw = NULL, *models = NULL, *results = NULL;
    int rc = queue_sweep_get(q, sweep, &sw, err);
    if (rc != 0)
        return rc;
    if (queue_mop_models(q, sweep, &models, err) < 0 || queue_mop_results(q, sweep, &results, err) < 0) {
        json_decref(sw);
        json_decref(models);
        return -1;
    }
    int n = jobctl_sweep_int_field(sw, "models", 0), epochs = jobctl_sweep_int_field(sw, "epochs", 0), shards = jobctl_sweep_int_field(sw, "shards", 0);
    json_t *list = json_array();
    for (int m = 0; m < n; m++)
        json_array_append_new(list, load_model(models, results, m, epochs, shards));
    json_object_del(sw, "spec"); /* long, and in `jobctl show`-like detail only */
    json_t *test = json_field(sw, "test");
    *out = json_pack("{s:o, s:o}", "sweep", sw, "models", list);
    if (test)
        json_object_set_new(*out, "test", test);
    json_decref(models);
    json_decref(results);
    return 0;
}

static double best_of(const json_t *m)
{
    const json_t *b = json_object_get(m, "best_valid_top1");
    return b ? json_number_value(b) : -1.0;
}

static int by_best(const void *a, const void *b)
{
    double x = best_of(*(json_t *const *)a), y = best_of(*(json_t *const *)b);
    if (x != y)
        return x < y ? 1 : -1;
    return (int)(json_integer_value(json_object_get(*(json_t *const *)a, "model")) -
                 json_integer_value(json_object_get(*(json_t *const *)b, "model")));
}

/* The metrics of a model's best epoch. */
static const json_t *best_epoch_metrics(const json_t *m)
{
    int best = (int)json_integer_value(json_object_get(m, "best_epoch"));
    size_t i;
    const json_t *e;
    json_array_foreach(json_object_get(m, "epochs"), i, e)
        if (json_integer_value(json_object_get(e, "epoch")) == best)
            return e;
    return NULL;
}

/* Why models failed and which epochs could not be evaluated. */
static void print_model_notes(FILE *out, const json_t *models)
{
    size_t i;
    const json_t *m;
    json_array_foreach(models, i, m) {
        long long id = (long long)json_integer_value(json_object_get(m, "model"));
        const char *st = json_string_value(json_object_get(m, "state"));
        const char *reason = json_string_value(json_object_get(m, "reason"));
        if (st && (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0 || strcmp(st, "stopped") == 0) &&
            reason)
            fprintf(out, "model %lld %s: %s\n", id, st, reason);
        const char *e;
        const json_t *why;
        json_object_foreach((json_t *)json_object_get(m, "eval_errors"), e, why)
            fprintf(out, "model %lld epoch %s not evaluated: %s\n", id, e, json_string_value(why) ?: "");
    }
}

/* The chosen model's test score, or why there is none. */
static void print_test(FILE *out, const json_t *s)
{
    const json_t *t = json_object_get(s, "test");
    if (!t)
        return;
    const char *error = json_string_value(json_object_get(t, "error"));
    const char *none = json_string_value(json_object_get(t, "none"));
    if (error)
        fprintf(out, "the chosen model could not be scored on the test split: %s\n", error);
    else if (none)
        fprintf(out, "no test score: %s\n", none);
    else
        fprintf(out, "chosen model %lld (epoch %lld, valid top-1 %.4f), on the test split: top-1 %.4f, top-5 %.4f, "
                     "loss %.4f over %lld rows\n",
                (long long)json_integer_value(json_object_get(t, "model")),
                (long long)json_integer_value(json_object_get(t, "epoch")),
                json_number_value(json_object_get(t, "valid_top1")), json_number_value(json_object_get(t, "top1")),
                json_number_value(json_object_get(t, "top5")), json_number_value(json_object_get(t, "loss")),
                (long long)json_integer_value(json_object_get(t, "rows")));
}

/* "mop" ("mop, hybrid" with the hybrid on: docs/search.md), or "ddp, gangs
 * of 2 ranks" for a gang sweep (docs/ddp.md); a sweep made before modes
 * existed is MOP. */
static const char *mode_label(const json_t *sw, char *buf, size_t n)
{
    const char *mode = json_string_value(json_object_get(sw, "mode"));
    const char *hybrid = json_string_value(json_object_get(sw, "hybrid"));
    if (!mode || !*mode || strcmp(mode, "mop") == 0)
        return hybrid && strcmp(hybrid, "1") == 0 ? "mop, hybrid" : "mop";
    snprintf(buf, n, "%s, gangs of %d ranks", mode, jobctl_sweep_int_field(sw, "shards", 0));
    return buf;
}

void jobctl_sweep_print_results(FILE *out, const json_t *s)
{
    char mode[64];
    const json_t *sw = json_object_get(s, "sweep"), *models = json_object_get(s, "models");
    size_t n = json_array_size(models);
    json_t **order = calloc(n ? n : 1, sizeof *order);
    for (size_t i = 0; order && i < n; i++)
        order[i] = json_array_get(models, i);
    if (order)
        qsort(order, n, sizeof *order, by_best);
    fprintf(out, "sweep %s (%s, %s): %zu models on dataset %s, ranked by validation top-1\n",
            json_string_value(json_object_get(sw, "id")) ?: "?", json_string_value(json_object_get(sw, "state")) ?: "?",
            mode_label(sw, mode, sizeof mode), n, json_string_value(json_object_get(sw, "dataset")) ?: "?");
    fprintf(out, "%4s %5s %-40s %-9s %5s %10s %10s %10s %10s\n", "rank", "model", "configuration", "state", "epoch",
            "valid top1", "valid top5", "valid loss", "train loss");
    for (size_t i = 0; order && i < n; i++) {
        const json_t *m = order[i], *e = best_epoch_metrics(m);
        char ep[16] = "-", t1[16] = "-", t5[16] = "-", vl[16] = "-", tl[16] = "-";
        if (e) {
            snprintf(ep, sizeof ep, "%lld", (long long)json_integer_value(json_object_get(e, "epoch")));
            snprintf(t1, sizeof t1, "%.4f", json_number_value(json_object_get(e, "valid_top1")));
            snprintf(t5, sizeof t5, "%.4f", json_number_value(json_object_get(e, "valid_top5")));
            snprintf(vl, sizeof vl, "%.4f", json_number_value(json_object_get(e, "valid_loss")));
            snprintf(tl, sizeof tl, "%.4f", json_number_value(json_object_get(e, "train_loss")));
        }
        fprintf(out, "%4zu %5lld %-40.40s %-9s %5s %10s %10s %10s %10s\n", i + 1,
                (long long)json_integer_value(json_object_get(m, "model")),
                json_string_value(json_object_get(m, "summary")) ?: "", json_string_value(json_object_get(m, "state")),
                ep, t1, t5, vl, tl);
    }
    free(order);
    print_model_notes(out, models);
    print_test(out, s);
}

/* The count of visits a model has committed: all of them once done (or
 * stopped early: it will commit no more). */
static long long model_units(const json_t *m, int epochs, int shards)
{
    const char *st = json_string_value(json_object_get(m, "state"));
    const char *vis = json_string_value(json_object_get(m, "visited"));
    long long v = 0;
    for (const char *c = vis; c && *c; c++)
        v += *c == '1';
    return st && (strcmp(st, "done") == 0 || strcmp(st, "stopped") == 0) ? (long long)epochs * shards
                                          : (json_integer_value(json_object_get(m, "epoch")) - 1) * shards + v;
}

int jobctl_sweep_finished(const json_t *s)
{
    const json_t *sw = json_object_get(s, "sweep");
    const char *state = json_string_value(json_object_get(sw, "state"));
    const char *test = json_string_value(json_object_get(sw, "test"));
    return state && (strcmp(state, "cancelled") == 0 || (strcmp(state, "done") == 0 && test && *test));
}

void jobctl_sweep_print_summary(FILE *out, const json_t *s, int64_t now_ms)
{
    const json_t *sw = json_object_get(s, "sweep"), *models = json_object_get(s, "models");
    int epochs = jobctl_sweep_int_field(sw, "epochs", 0), shards = jobctl_sweep_int_field(sw, "shards", 0);
    long long created = atoll(json_string_value(json_object_get(sw, "created")) ?: "0");
    long long finished = atoll(json_string_value(json_object_get(sw, "finished")) ?: "0");
    long long total = (long long)json_array_size(models) * epochs * shards, done = 0, evaluated = 0;
    size_t i;
    const json_t *m;
    json_array_foreach(models, i, m) {
        done += model_units(m, epochs, shards);
        evaluated += (long long)json_array_size(json_object_get(m, "epochs"));
    }
    char so_far[32], left[32], mode[64];
    fmt_duration(so_far, sizeof so_far, (finished ? finished : now_ms) - created);
    fprintf(out, "sweep %s (%s, %s): %lld of %lld %s, %lld of %lld epochs evaluated",
            json_string_value(json_object_get(sw, "id")) ?: "?", json_string_value(json_object_get(sw, "state")) ?: "?",
            mode_label(sw, mode, sizeof mode), done, total,
            strncmp(mode_label(sw, mode, sizeof mode), "mop", 3) == 0 ? "visits" : "rank-epochs", evaluated,
            (long long)json_array_size(models) * epochs);
    if (!jobctl_sweep_finished(s)) {
        sweep_eta eta;
        sweep_eta_estimate(s, &eta);
        if (eta.seconds_left < 0) {
            fputs("; time left: after the first measured visit", out);
        } else {
            fmt_duration(left, sizeof left, (int64_t)(eta.seconds_left * 1000.0));
            fprintf(out, "; about %s left", left);
            if (eta.rough && eta.models_measured < eta.models_left)
                fprintf(out, " (rough: %d of %d models timed so far)", eta.models_measured, eta.models_left);
            else if (eta.rough)
                fputs(" (rough: no evaluation timed yet)", out);
        }
    }
    fprintf(out, "; %s %s\n", so_far, finished ? "in all" : "so far");
}

/* A model's live detail: the visit in flight, or the retry it waits for. */
static void model_detail(char *buf, size_t n, const json_t *m, int64_t now_ms)
{
    buf[0] = '\0';
    const json_t *p = json_object_get(m, "progress");
    long long attempts = json_integer_value(json_object_get(m, "attempts"));
    if (p) {
        double total = json_number_value(json_object_get(p, "rows_total"));
        const char *dev = json_string_value(json_object_get(p, "device"));
        snprintf(buf, n, "shard %lld: %.0f%% at %.0f rows/s%s%s",
                 (long long)json_integer_value(json_object_get(p, "shard")),
                 total > 0 ? 100.0 * json_number_value(json_object_get(p, "rows_done")) / total : 0.0,
                 json_number_value(json_object_get(p, "samples_per_s")), dev ? " on " : "", dev ? dev : "");
    } else if (attempts > 0) {
        long long nb = atoll(json_string_value(json_object_get(m, "not_before")) ?: "0");
        char wait[32];
        fmt_duration(wait, sizeof wait, nb > now_ms ? nb - now_ms : 0);
        snprintf(buf, n, "%lld failed attempt%s, next in %s: %.120s", attempts, attempts == 1 ? "" : "s", wait,
                 json_string_value(json_object_get(m, "error")) ?: "");
    }
}

void jobctl_sweep_print_status(FILE *out, const json_t *s, int64_t now_ms)
{
    const json_t *sw = json_object_get(s, "sweep"), *models = json_object_get(s, "models");
    int epochs = jobctl_sweep_int_field(sw, "epochs", 0), shards = jobctl_sweep_int_field(sw, "shards", 0);
    jobctl_sweep_print_summary(out, s, now_ms);
    size_t i;
    const json_t *m;
    json_array_foreach(models, i, m) {
        const char *st = json_string_value(json_object_get(m, "state"));
        const char *vis = json_string_value(json_object_get(m, "visited"));
        long long e = json_integer_value(json_object_get(m, "epoch"));
        long long units = model_units(m, epochs, shards);
        long long per_model = (long long)epochs * shards;
        int width = 24, fill = per_model > 0 ? (int)(width * units / per_model) : 0;
        char bar[32];
        for (int k = 0; k < width; k++)
            bar[k] = k < fill ? '#' : '.';
        bar[width] = 0;
        char best[48] = "", detail[200];
        if (json_object_get(m, "best_valid_top1"))
            snprintf(best, sizeof best, "best top1 %.4f (epoch %lld)", best_of(m),
                     (long long)json_integer_value(json_object_get(m, "best_epoch")));
        model_detail(detail, sizeof detail, m, now_ms);
        fprintf(out, "  model %-3lld [%s] epoch %lld/%d shards %s  %-9s %-34.34s %s%s%s\n",
                (long long)json_integer_value(json_object_get(m, "model")), bar, e, epochs, vis, st,
                json_string_value(json_object_get(m, "summary")) ?: "", best, *best && *detail ? "  " : "", detail);
    }
    print_model_notes(out, models);
    print_test(out, s);
}

/* ---- following a sweep ---------------------------------------------------------- */

static const json_t *model_at(const json_t *s, size_t i)
{
    return s ? json_array_get(json_object_get(s, "models"), i) : NULL;
}

/* Whether doc s has evaluation e (its "epoch") of its i-th model. */
static int has_epoch(const json_t *s, size_t i, json_int_t e)
{
    size_t k;
    const json_t *x;
    json_array_foreach(json_object_get(model_at(s, i), "epochs"), k, x)
        if (json_integer_value(json_object_get(x, "epoch")) == e)
            return 1;
    return 0;
}

void jobctl_sweep_print_news(FILE *out, const json_t *before, const json_t *now, int64_t now_ms)
{
    char when[CDS_ISO8601_MAX];
    cds_iso8601_utc(now_ms, when);
    when[19] = '\0'; /* to the second, as a log line */
    const json_t *models = json_object_get(now, "models");
    size_t i;
    const json_t *m;
    json_array_foreach(models, i, m) {
        long long id = (long long)json_integer_value(json_object_get(m, "model"));
        size_t k;
        const json_t *e;
        json_array_foreach(json_object_get(m, "epochs"), k, e) {
            json_int_t ep = json_integer_value(json_object_get(e, "epoch"));
            if (has_epoch(before, i, ep))
                continue;
            int best = json_integer_value(json_object_get(m, "best_epoch")) == ep;
            fprintf(out, "%s  model %lld epoch %lld/%s: train loss %.4f top1 %.4f | valid loss %.4f top1 %.4f top5 "
                         "%.4f%s   (%s)\n",
                    when, id, (long long)ep, json_string_value(json_object_get(json_object_get(now, "sweep"), "epochs")) ?: "?",
                    json_number_value(json_object_get(e, "train_loss")), json_number_value(json_object_get(e, "train_top1")),
                    json_number_value(json_object_get(e, "valid_loss")), json_number_value(json_object_get(e, "valid_top1")),
                    json_number_value(json_object_get(e, "valid_top5")), best ? " best so far" : "",
                    json_string_value(json_object_get(m, "summary")) ?: "");
        }
        const char *st = json_string_value(json_object_get(m, "state"));
        const char *was = json_string_value(json_object_get(model_at(before, i), "state"));
        if (st && (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0 || strcmp(st, "stopped") == 0) &&
            (!was || strcmp(was, st) != 0))
            fprintf(out, "%s  model %lld %s: %s\n", when, id, st,
                    json_string_value(json_object_get(m, "reason")) ?: "");
    }
    if (json_object_get(now, "test") && !json_object_get(before, "test"))
        print_test(out, now);
}


/* ---- plot ------------------------------------------------------------------------ */

static int run_gnuplot(const char *script, cds_err *err)
{
    pid_t pid = fork();
    if (pid < 0)
        return cds_errf(err, "cannot start gnuplot: %s", strerror(errno));
    if (pid == 0) {
        execlp("gnuplot", "gnuplot", script, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
        return cds_errf(err, "gnuplot is not installed: apt-get install gnuplot-nox (scripts/install-deps does)");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return cds_errf(err, "gnuplot failed (exit %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return 0;
}

/* Marks the chosen model on the validation plot: a ring at its best epoch
 * and a label with its test score (once the sweep recorded one). */
static void mark_chosen(FILE *g, const json_t *s)
{
    const json_t *t = json_object_get(s, "test");
    if (!json_object_get(t, "top1"))
        return;
    json_int_t m = json_integer_value(json_object_get(t, "model")), e = json_integer_value(json_object_get(t, "epoch"));
    fprintf(g, "set label 1 \"chosen: model %lld, epoch %lld\\ntest top-1 %.4f\" at %lld, %.6f point pt 6 ps 3 "
               "offset 1.5,-1.5 font ',9'\n",
            (long long)m, (long long)e, json_number_value(json_object_get(t, "top1")), (long long)e,
            json_number_value(json_object_get(t, "valid_top1")));
    fprintf(g, "set title 'chosen: model %lld (epoch %lld), test top-1 %.4f' font ',10'\n", (long long)m, (long long)e,
            json_number_value(json_object_get(t, "top1")));
}

int jobctl_sweep_plot(const json_t *s, const char *out, cds_err *err)
{
    const char *ext = strrchr(out, '.');
    const char *term = ext && strcmp(ext, ".png") == 0 ? "pngcairo size 1200,500 font ',10'"
                       : ext && strcmp(ext, ".svg") == 0 ? "svg size 1200,500 dynamic font ',10'"
                                                         : NULL;
    if (!term)
        return cds_errf(err, "--out %s: the plot is written as .png or .svg: name the file so", out);
    char dir[] = "/tmp/cds-plot.XXXXXX";
    if (!mkdtemp(dir))
        return cds_errf(err, "cannot make a temporary directory: %s", strerror(errno));
    const json_t *models = json_object_get(s, "models");
    char path[4096];
    snprintf(path, sizeof path, "%s/curves.dat", dir);
    FILE *d = fopen(path, "w");
    size_t i, n_curves = 0;
    const json_t *m;
    json_array_foreach(models, i, m) {
        const json_t *epochs = json_object_get(m, "epochs");
        if (!d || json_array_size(epochs) == 0)
            continue;
        /* One gnuplot data block per model, separated by two blank lines. */
        fprintf(d, "# model %lld: %s\n", (long long)json_integer_value(json_object_get(m, "model")),
                json_string_value(json_object_get(m, "summary")) ?: "");
        size_t k;
        const json_t *e;
        json_array_foreach(epochs, k, e)
            fprintf(d, "%lld %.6f %.6f %.6f\n", (long long)json_integer_value(json_object_get(e, "epoch")),
                    json_number_value(json_object_get(e, "valid_top1")),
                    json_number_value(json_object_get(e, "train_loss")),
                    json_number_value(json_object_get(e, "valid_loss")));
        fprintf(d, "\n\n");
        n_curves++;
    }
    int rc = 0;
    if (!d || fclose(d) != 0)
        rc = cds_errf(err, "cannot write %s: %s", path, strerror(errno));
    else if (n_curves == 0)
        rc = cds_errf(err, "sweep %s has no evaluated epoch yet: nothing to plot",
                      json_string_value(json_object_get(json_object_get(s, "sweep"), "id")) ?: "?");
    char gp[4096];
    snprintf(gp, sizeof gp, "%s/plot.gp", dir);
    FILE *g = rc == 0 ? fopen(gp, "w") : NULL;
    if (rc == 0 && !g)
        rc = cds_errf(err, "cannot write %s: %s", gp, strerror(errno));
    if (g) {
        char mode[64];
        fprintf(g, "set terminal %s\nset output '%s'\nset multiplot layout 1,2 title 'sweep %s (%s)'\n", term, out,
                json_string_value(json_object_get(json_object_get(s, "sweep"), "id")) ?: "?",
                mode_label(json_object_get(s, "sweep"), mode, sizeof mode));
        fprintf(g, "set key bottom right font ',8'\nset xlabel 'epoch'\nset xtics 1\nset grid\n"
                   "set ylabel 'validation top-1'\n");
        mark_chosen(g, s);
        fputs("plot", g);
        /* Explicit titles: a data block cannot carry one without losing a
         * row to gnuplot's columnheader. */
        size_t c = 0;
        json_array_foreach(models, i, m) {
            if (json_array_size(json_object_get(m, "epochs")) == 0)
                continue;
            char title[160];
            snprintf(title, sizeof title, "%lld: %s", (long long)json_integer_value(json_object_get(m, "model")),
                     json_string_value(json_object_get(m, "summary")) ?: "");
            for (char *t = title; *t; t++)
                if (*t == '\'' || *t == '\\')
                    *t = ' ';
            fprintf(g, "%s '%s' index %zu using 1:2 with linespoints lc %zu title '%s'", c ? "," : "", path, c, c + 1,
                    title);
            c++;
        }
        fprintf(g, "\nunset label\nset key top right font ',8'\nset ylabel 'loss (solid: train, dashed: validation)'\n");
        fprintf(g, "plot for [i=0:%zu] '%s' index i using 1:3 with linespoints lc i+1 notitle, "
                   "for [i=0:%zu] '%s' index i using 1:4 with lines dt 2 lc i+1 notitle\nunset multiplot\n",
                n_curves - 1, path, n_curves - 1, path);
        if (fclose(g) != 0)
            rc = cds_errf(err, "cannot write %s: %s", gp, strerror(errno));
        else
            rc = run_gnuplot(gp, err);
    }
    unlink(gp);
    unlink(path);
    rmdir(dir);
    return rc;
}

/* ---- jobctl status --resources ------------------------------------------------ */

typedef struct res_sum {
    char who[64];
    int n;
    cds_res_use u; /* summed by cds_res_add_json */
} res_sum;

static void res_add(res_sum *r, const json_t *res)
{
    if (!json_is_object(res))
        return;
    r->n++;
    cds_res_add_json(&r->u, res);
}

/* The sum named who in a (train, eval) pair of arrays of n, added if new. */
static res_sum *res_slot(res_sum *t, res_sum *e, size_t *n, size_t cap, const char *who, res_sum **ev)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(t[i].who, who) == 0)
            return *ev = &e[i], &t[i];
    if (*n == cap)
        return *ev = NULL, NULL;
    memset(&t[*n], 0, sizeof t[*n]);
    memset(&e[*n], 0, sizeof e[*n]);
    snprintf(t[*n].who, sizeof t[*n].who, "%s", who);
    *ev = &e[*n];
    return &t[(*n)++];
}

/* A row: training's sums, then evaluation's; the GPU columns are "-"
 * where no record had a GPU sample. */
static void res_row(FILE *out, const char *who, const res_sum *t, const res_sum *e)
{
    char gu[16] = "-", gm[16] = "-";
    if (t->u.gpu) {
        snprintf(gu, sizeof gu, "%.0f", t->u.gpu_util_pct);
        snprintf(gm, sizeof gm, "%.0f", t->u.gpu_mem_mb);
    }
    fprintf(out, "%-16.16s %6d %9.1f %9.1f %8.0f %10.1f %6s %7s %6d %9.1f %9.1f %8.0f\n", who, t->n, t->u.wall_s,
            t->u.cpu_s, (double)t->u.peak_rss_kb / 1024.0, (double)t->u.bytes_read / 1e6, gu, gm, e->n, e->u.wall_s,
            e->u.cpu_s, (double)e->u.peak_rss_kb / 1024.0);
}

void jobctl_sweep_print_resources(FILE *out, const json_t *s)
{
    enum { MAX_WORKERS = 256 };
    const json_t *models = json_object_get(s, "models");
    res_sum *wt = calloc(MAX_WORKERS, sizeof *wt), *we = calloc(MAX_WORKERS, sizeof *we);
    size_t nw = 0, i, k;
    const json_t *m, *v;
    if (!wt || !we) {
        free(wt);
        free(we);
        fputs("resources: out of memory\n", out);
        return;
    }
    const char *head = "%-16s %6s %9s %9s %8s %10s %6s %7s %6s %9s %9s %8s\n";
    fputs("\nresources (training: visits and gang ranks; evaluation: validation passes; peak: the highest; gpu: the\n"
          "card's mean utilisation, by wall time, and its peak memory, where a GPU was sampled)\n", out);
    fprintf(out, head, "model", "train", "wall s", "cpu s", "peak MB", "read MB", "gpu %", "gpu MB", "evals", "wall s",
            "cpu s", "peak MB");
    json_array_foreach(models, i, m) {
        res_sum t = {0}, e = {0}, *ws, *wes;
        json_array_foreach(json_object_get(m, "visits"), k, v) {
            res_add(&t, json_object_get(v, "res"));
            if ((ws = res_slot(wt, we, &nw, MAX_WORKERS, json_string_value(json_object_get(v, "worker")) ?: "?",
                               &wes)))
                res_add(ws, json_object_get(v, "res"));
        }
        json_array_foreach(json_object_get(m, "epochs"), k, v) {
            res_add(&e, json_object_get(v, "res"));
            if ((ws = res_slot(wt, we, &nw, MAX_WORKERS, json_string_value(json_object_get(v, "worker")) ?: "?",
                               &wes)))
                res_add(wes, json_object_get(v, "res"));
        }
        char who[24];
        snprintf(who, sizeof who, "%lld", (long long)json_integer_value(json_object_get(m, "model")));
        res_row(out, who, &t, &e);
    }
    fprintf(out, head, "worker", "train", "wall s", "cpu s", "peak MB", "read MB", "gpu %", "gpu MB", "evals", "wall s",
            "cpu s", "peak MB");
    for (size_t w = 0; w < nw; w++)
        res_row(out, wt[w].who, &wt[w], &we[w]);
    free(wt);
    free(we);
}
