/* sweep_eta: the time a MOP sweep has left (the model is in sweep_eta.h).
 *
 * Everything is read from the sweep document once; a model's own timed
 * visits come first, then its group's (same architecture and batch), then
 * everyone's, and the estimate says when it had to borrow. */
#include "sweep_eta.h"

#include <stdlib.h>
#include <string.h>

/* What one model has left and what is known of its speed. */
typedef struct model_left {
    const char *group;
    double own_visit;    /* mean seconds of its timed visits (0: none) */
    double flight_visit; /* seconds the visit in flight takes at its rate (0: none) */
    double flight_left;  /* fraction of that visit left */
    long long visits;    /* visits left, the one in flight included */
    long long evals;     /* evaluations still to come (its epochs not yet evaluated) */
} model_left;

static int int_of(const json_t *o, const char *key, int def)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        return (int)json_integer_value(v);
    const char *s = json_string_value(v);
    return s && *s ? atoi(s) : def;
}

static int finished_state(const char *st)
{
    return st && (strcmp(st, "done") == 0 || strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0);
}

/* Reads model m's work left and timings; adds its timed visits and
 * evaluations to the sweep-wide sums. */
static void read_model(const json_t *m, int epochs, int shards, model_left *ml, double *visit_sum, long long *visit_n,
                       double *eval_sum, long long *eval_n)
{
    memset(ml, 0, sizeof *ml);
    ml->group = json_string_value(json_object_get(m, "group")) ?: "";
    size_t i;
    const json_t *v;
    double own = 0;
    long long own_n = 0;
    json_array_foreach(json_object_get(m, "visits"), i, v) {
        double sec = json_number_value(json_object_get(v, "seconds"));
        if (sec > 0) {
            own += sec;
            own_n++;
        }
    }
    *visit_sum += own;
    *visit_n += own_n;
    ml->own_visit = own_n ? own / (double)own_n : 0;
    long long evaluated = 0;
    json_array_foreach(json_object_get(m, "epochs"), i, v) {
        double sec = json_number_value(json_object_get(v, "valid_seconds"));
        if (sec > 0) {
            *eval_sum += sec;
            (*eval_n)++;
        }
        evaluated++;
    }
    evaluated += (long long)json_object_size(json_object_get(m, "eval_errors"));
    const char *st = json_string_value(json_object_get(m, "state"));
    if (st && (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0))
        return; /* nothing more of it will run (epochs it finished are still evaluated: too few to count) */
    int epoch = int_of(m, "epoch", 1);
    long long visited = 0;
    for (const char *c = json_string_value(json_object_get(m, "visited")); c && *c; c++)
        visited += *c == '1';
    long long done_visits = finished_state(st) ? (long long)epochs * shards : (long long)(epoch - 1) * shards + visited;
    ml->visits = (long long)epochs * shards - done_visits;
    if (ml->visits < 0)
        ml->visits = 0;
    ml->evals = (long long)epochs - evaluated;
    if (ml->evals < 0)
        ml->evals = 0;
    const json_t *p = json_object_get(m, "progress");
    double rate = json_number_value(json_object_get(p, "samples_per_s"));
    double done = json_number_value(json_object_get(p, "rows_done")), total = json_number_value(json_object_get(p, "rows_total"));
    if (p && rate > 0 && total > 0 && done > 0 && ml->visits > 0) {
        ml->flight_visit = total / rate;
        ml->flight_left = done >= total ? 0 : 1.0 - done / total;
    }
}

/* The mean visit of the models of group g that have a rate (0: none). */
static double group_visit(const model_left *ml, size_t n, const char *g)
{
    double sum = 0;
    long long k = 0;
    for (size_t i = 0; i < n; i++) {
        double t = ml[i].own_visit > 0 ? ml[i].own_visit : ml[i].flight_visit;
        if (t > 0 && strcmp(ml[i].group, g) == 0) {
            sum += t;
            k++;
        }
    }
    return k ? sum / (double)k : 0;
}

void sweep_eta_estimate(const json_t *s, sweep_eta *out)
{
    memset(out, 0, sizeof *out);
    out->seconds_left = -1;
    const json_t *sw = json_object_get(s, "sweep"), *models = json_object_get(s, "models");
    int epochs = int_of(sw, "epochs", 0), shards = int_of(sw, "shards", 0);
    size_t n = json_array_size(models);
    if (epochs < 1 || shards < 1 || n == 0)
        return;
    model_left *ml = calloc(n, sizeof *ml);
    if (!ml)
        return;
    double visit_sum = 0, eval_sum = 0, any_rate_sum = 0;
    long long visit_n = 0, eval_n = 0, any_rate_n = 0;
    for (size_t i = 0; i < n; i++) {
        read_model(json_array_get(models, i), epochs, shards, &ml[i], &visit_sum, &visit_n, &eval_sum, &eval_n);
        double t = ml[i].own_visit > 0 ? ml[i].own_visit : ml[i].flight_visit;
        if (t > 0) {
            any_rate_sum += t;
            any_rate_n++;
        }
    }
    out->visit_seconds = visit_n ? visit_sum / (double)visit_n : 0;
    out->eval_seconds = eval_n ? eval_sum / (double)eval_n : 0;
    double work = 0, longest = 0;
    long long evals_left = 0;
    for (size_t i = 0; i < n; i++) {
        model_left *m = &ml[i];
        evals_left += m->evals;
        if (m->visits == 0) {
            work += (double)m->evals * out->eval_seconds; /* trained: only its evaluations are left */
            continue;
        }
        out->models_left++;
        double t = m->own_visit > 0 ? m->own_visit : m->flight_visit;
        if (t > 0) {
            out->models_measured++;
        } else {
            t = group_visit(ml, n, m->group);
            if (t <= 0 && any_rate_n)
                t = any_rate_sum / (double)any_rate_n;
            out->rough = 1;
        }
        if (t <= 0)
            continue; /* nothing measured anywhere yet */
        /* The visit in flight: what its own rate says is left of it. */
        double mine = m->flight_visit > 0 ? (double)(m->visits - 1) * t + m->flight_left * m->flight_visit
                                          : (double)m->visits * t;
        mine += (double)m->evals * out->eval_seconds;
        work += mine;
        if (mine > longest)
            longest = mine;
    }
    if (any_rate_n == 0 && !(out->models_left == 0 && evals_left > 0 && out->eval_seconds > 0)) {
        free(ml);
        return; /* never an estimate before a measurement */
    }
    if (out->models_left == 0) {
        /* Training is over: the evaluations left, shared by the workers,
         * then the test scoring. */
        work = (double)evals_left * out->eval_seconds;
        longest = 0;
    }
    if (evals_left > 0 && out->eval_seconds <= 0)
        out->rough = 1;
    double spread = work / (double)shards;
    out->seconds_left = (spread > longest ? spread : longest) + out->eval_seconds;
    free(ml);
}
