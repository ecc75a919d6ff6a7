/* jobctl_sweep: the leaderboard and progress views of a MOP sweep.
 *
 * Both read the sweep hash, the models hash and the results hash once and
 * build one JSON document (jobctl_sweep_load), which --json prints as is and
 * the text views format, so scripts and people see the same numbers. */
#include "jobctl_sweep.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "queue_mop.h"

static const char *field(const json_t *o, const char *fmt, int m)
{
    char key[64];
    snprintf(key, sizeof key, fmt, m);
    return json_string_value(json_object_get(o, key));
}

static int int_field(const json_t *o, const char *key, int def)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v && *v ? atoi(v) : def;
}

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
    const char *st = field(models, "%d.state", m) ?: "?";
    const char *paused = field(models, "%d.paused", m);
    if (paused && strcmp(paused, "1") == 0 && (strcmp(st, "idle") == 0 || strcmp(st, "leased") == 0))
        return strcmp(st, "idle") == 0 ? "paused" : "pausing";
    return st;
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
    int n = int_field(sw, "models", 0), epochs = int_field(sw, "epochs", 0);
    json_t *list = json_array();
    for (int m = 0; m < n; m++) {
        json_t *e = json_array();
        for (int k = 0; k < epochs; k++) {
            char key[32];
            snprintf(key, sizeof key, "%d.%d", m, k);
            const char *r = json_string_value(json_object_get(results, key));
            json_t *metrics = r ? json_loads(r, 0, NULL) : NULL;
            if (metrics)
                json_array_append_new(e, metrics);
        }
        const char *best = field(models, "%d.best_epoch", m), *top1 = field(models, "%d.best_top1", m);
        json_t *mo = json_pack("{s:i, s:s, s:i, s:s, s:o, s:o}", "model", m, "state", shown_state(models, m),
                               "epoch", atoi(field(models, "%d.epoch", m) ?: "0"),
                               "visited", field(models, "%d.visited", m) ?: "", "summary",
                               summary(field(models, "%d.spec", m)), "epochs", e);
        if (best && *best) {
            json_object_set_new(mo, "best_epoch", json_integer(atoi(best) + 1));
            json_object_set_new(mo, "best_valid_top1", json_real(atof(top1 ? top1 : "0")));
        }
        const char *reason = field(models, "%d.reason", m);
        if (reason && *reason)
            json_object_set_new(mo, "reason", json_string(reason));
        json_array_append_new(list, mo);
    }
    json_object_del(sw, "spec"); /* long, and in `jobctl show`-like detail only */
    *out = json_pack("{s:o, s:o}", "sweep", sw, "models", list);
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

void jobctl_sweep_print_results(FILE *out, const json_t *s)
{
    const json_t *sw = json_object_get(s, "sweep"), *models = json_object_get(s, "models");
    size_t n = json_array_size(models);
    json_t **order = calloc(n ? n : 1, sizeof *order);
    for (size_t i = 0; order && i < n; i++)
        order[i] = json_array_get(models, i);
    if (order)
        qsort(order, n, sizeof *order, by_best);
    fprintf(out, "sweep %s (%s): %zu models on dataset %s, ranked by validation top-1\n",
            json_string_value(json_object_get(sw, "id")) ?: "?", json_string_value(json_object_get(sw, "state")) ?: "?",
            n, json_string_value(json_object_get(sw, "dataset")) ?: "?");
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
    const char *test = json_string_value(json_object_get(sw, "test"));
    int tm, te;
    long long rows;
    double loss, t1, t5;
    if (test && sscanf(test, "%d %d %lld %lf %lf %lf", &tm, &te, &rows, &loss, &t1, &t5) == 6)
        fprintf(out, "chosen model %d (epoch %d), on the test split: top-1 %.4f, top-5 %.4f, loss %.4f over %lld rows\n",
                tm, te, t1, t5, loss, rows);
    else if (test && strncmp(test, "error ", 6) == 0)
        fprintf(out, "the chosen model could not be scored on the test split: %s\n", test + 6);
}

/* Visits a model has committed: all of them once done. */
static long long model_units(const json_t *m, int epochs, int shards)
{
    const char *st = json_string_value(json_object_get(m, "state"));
    const char *vis = json_string_value(json_object_get(m, "visited"));
    long long v = 0;
    for (const char *c = vis; c && *c; c++)
        v += *c == '1';
    return st && strcmp(st, "done") == 0 ? (long long)epochs * shards
                                          : json_integer_value(json_object_get(m, "epoch")) * shards + v;
}

void jobctl_sweep_print_status(FILE *out, const json_t *s, int64_t now_ms)
{
    const json_t *sw = json_object_get(s, "sweep"), *models = json_object_get(s, "models");
    int epochs = int_field(sw, "epochs", 0), shards = int_field(sw, "shards", 0);
    long long created = atoll(json_string_value(json_object_get(sw, "created")) ?: "0");
    long long finished = atoll(json_string_value(json_object_get(sw, "finished")) ?: "0");
    long long total = (long long)json_array_size(models) * epochs * shards, done = 0;
    size_t i;
    const json_t *m;
    json_array_foreach(models, i, m)
        done += model_units(m, epochs, shards);
    double secs = ((finished ? finished : now_ms) - created) / 1000.0;
    double rate = secs > 0 ? (double)done / secs : 0;
    fprintf(out, "sweep %s (%s): %lld of %lld visits, %.1f visits/min", json_string_value(json_object_get(sw, "id")) ?: "?",
            json_string_value(json_object_get(sw, "state")) ?: "?", done, total, rate * 60);
    if (!finished && rate > 0 && done < total)
        fprintf(out, ", about %.0f s left", (double)(total - done) / rate);
    fprintf(out, ", %.0f s so far\n", secs);
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
        char best[48] = "";
        if (json_object_get(m, "best_valid_top1"))
            snprintf(best, sizeof best, "best top1 %.4f (epoch %lld)", best_of(m),
                     (long long)json_integer_value(json_object_get(m, "best_epoch")));
        fprintf(out, "  model %-3lld [%s] epoch %lld/%d shards %s  %-9s %-34.34s %s\n",
                (long long)json_integer_value(json_object_get(m, "model")), bar,
                e < epochs ? e + 1 : (long long)epochs, epochs, vis, st,
                json_string_value(json_object_get(m, "summary")) ?: "", best);
    }
}

/* ---- replay ------------------------------------------------------------------ */

int jobctl_sweep_replay(queue_conn *q, const char *orig, const char *new_id, cds_err *err)
{
    json_t *sw = NULL, *models = NULL;
    char **lines = NULL, **plans = NULL;
    const char **specs = NULL;
    size_t n_lines = 0;
    int rc = queue_sweep_get(q, orig, &sw, err);
    if (rc != 0)
        return rc;
    int M = int_field(sw, "models", 0), E = int_field(sw, "epochs", 0), K = int_field(sw, "shards", 0);
    if (queue_mop_models(q, orig, &models, err) != 0 || queue_mop_schedule(q, orig, &lines, &n_lines, err) != 0) {
        rc = -1;
        goto out;
    }
    plans = calloc((size_t)M, sizeof *plans);
    specs = calloc((size_t)M, sizeof *specs);
    size_t per = (size_t)E * K * 4 + 1;
    for (int m = 0; plans && m < M; m++)
        plans[m] = calloc(per, 1);
    for (int m = 0; specs && m < M; m++)
        if (!(specs[m] = field(models, "%d.spec", m)) || !plans[m]) {
            rc = cds_errf(err, "sweep %s: model %d has no spec in Redis", orig, m);
            goto out;
        }
    if (!plans || !specs) {
        rc = cds_err_nomem(err, "out of memory");
        goto out;
    }
    /* A model's visits are one at a time, so its entries in the commit
     * order are its visit order. */
    for (size_t i = 0; i < n_lines; i++) {
        int m, e, k;
        if (sscanf(lines[i], "%d %d %d", &m, &e, &k) != 3 || m < 0 || m >= M || k < 0 || k >= K ||
            strlen(plans[m]) + 4 >= per) {
            rc = cds_errf(err, "sweep %s: schedule entry %zu ('%s') does not fit the sweep", orig, i, lines[i]);
            goto out;
        }
        snprintf(plans[m] + strlen(plans[m]), 5, "%04u", (unsigned)k % 10000u); /* 0 <= k < 4096: the scripts cap shards */
    }
    for (int m = 0; m < M; m++)
        if (strlen(plans[m]) != per - 1) {
            rc = cds_errf(err, "sweep %s: model %d committed %zu of its %d visits (state %s): only a finished model "
                               "can be replayed", orig, m, strlen(plans[m]) / 4, E * K,
                          field(models, "%d.state", m) ?: "?");
            goto out;
        }
    queue_sweep_def def = {.id = new_id, .dataset = json_string_value(json_object_get(sw, "dataset")),
                           .dataset_version = json_string_value(json_object_get(sw, "dataset_version")) ?: "",
                           .shards = K, .epochs = E, .models = M, .model_specs = specs,
                           .spec_json = json_string_value(json_object_get(sw, "spec")),
                           .plans = (const char *const *)plans, .replay_of = orig};
    rc = queue_sweep_create(q, &def, NULL, err);
out:
    for (int m = 0; plans && m < M; m++)
        free(plans[m]);
    free(plans);
    free(specs);
    queue_sweep_list_free(lines, n_lines);
    json_decref(models);
    json_decref(sw);
    return rc;
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
        fprintf(g, "set terminal %s\nset output '%s'\nset multiplot layout 1,2 title 'sweep %s'\n", term, out,
                json_string_value(json_object_get(json_object_get(s, "sweep"), "id")) ?: "?");
        fprintf(g, "set key bottom right font ',8'\nset xlabel 'epoch'\nset xtics 1\nset grid\n"
                   "set ylabel 'validation top-1'\nplot");
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
        fprintf(g, "\nset key top right font ',8'\nset ylabel 'loss (solid: train, dashed: validation)'\n");
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
