/* search_tpe_check: the C half of bench/search/tpe_check.py: log l(x) -
 * log g(x) of one dimension of a TPE history (search_tpe_log_ratio), for
 * comparison with Hyperopt's own estimators.
 *
 *   search_tpe_check [FILE]          (FILE, or stdin without one)
 *
 * The input is one case or {"cases": [case, ...]}, a case being
 *
 *   {"space": {...search space...},
 *    "points": [{"lr": 0.01, "batch": 2, ...}, ...],   trial order; a
 *                                                       choice by index
 *    "losses": [0.3, null, ...],                        null: not finite
 *    "dim": "lr", "xs": [...],
 *    "opts": {"gamma": 0.25, "prior_weight": 1, "lf": 25}}   (optional)
 *
 * and the output one line per case: the log ratio at each x, "%.17g"
 * separated by spaces (inf and nan as printf writes them).  Exit 1 with a
 * message on the first case that fails. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cds_err.h"
#include "search_space.h"
#include "search_tpe.h"

/* A case's history as search_tpe takes it: points[i·dims + d], losses[i]. */
typedef struct history {
    double *points, *losses;
    size_t n;
} history;

static int read_opts(const json_t *j, search_tpe_opts *o, cds_err *err)
{
    search_tpe_defaults(o);
    if (!j)
        return 0;
    if (!json_is_object(j))
        return cds_errf(err, "\"opts\" must be an object");
    const json_t *v;
    if ((v = json_object_get(j, "gamma")))
        o->gamma = json_number_value(v);
    if ((v = json_object_get(j, "prior_weight")))
        o->prior_weight = json_number_value(v);
    if ((v = json_object_get(j, "lf")))
        o->lf = (int)json_integer_value(v);
    return 0;
}

static int read_history(const json_t *c, const search_space *s, history *h, cds_err *err)
{
    const json_t *pts = json_object_get(c, "points"), *ls = json_object_get(c, "losses");
    if (!json_is_array(pts) || !json_is_array(ls) || json_array_size(pts) != json_array_size(ls))
        return cds_errf(err, "\"points\" and \"losses\" must be arrays of one length");
    size_t dims = search_space_dims(s);
    h->n = json_array_size(pts);
    h->points = calloc(h->n * dims + 1, sizeof *h->points);
    h->losses = calloc(h->n + 1, sizeof *h->losses);
    if (!h->points || !h->losses)
        return cds_err_nomem(err, "out of memory for %zu trials", h->n);
    for (size_t i = 0; i < h->n; i++) {
        const json_t *p = json_array_get(pts, i), *l = json_array_get(ls, i);
        h->losses[i] = json_is_number(l) ? json_number_value(l) : NAN;
        for (size_t d = 0; d < dims; d++) {
            const json_t *v = json_object_get(p, search_space_dim(s, d)->name);
            if (!json_is_number(v))
                return cds_errf(err, "points[%zu] has no number for %s", i, search_space_dim(s, d)->name);
            h->points[i * dims + d] = json_number_value(v);
        }
    }
    return 0;
}

/* Runs one case and prints its line. */
static int run_case(const json_t *c, cds_err *err)
{
    search_space *s = search_space_parse(json_object_get(c, "space"), "case.space", err);
    if (!s)
        return -1;
    history h = {0};
    double *xs = NULL, *out = NULL;
    search_tpe_opts o;
    int rc = -1;
    const json_t *jx = json_object_get(c, "xs");
    const char *dim = json_string_value(json_object_get(c, "dim"));
    int d = dim ? search_space_find(s, dim) : -1;
    if (d < 0) {
        cds_errf(err, "\"dim\" must name a dimension of the space");
        goto done;
    }
    if (!json_is_array(jx)) {
        cds_errf(err, "\"xs\" must be an array of numbers");
        goto done;
    }
    if (read_opts(json_object_get(c, "opts"), &o, err) != 0 || read_history(c, s, &h, err) != 0)
        goto done;
    size_t nx = json_array_size(jx);
    xs = calloc(nx + 1, sizeof *xs);
    out = calloc(nx + 1, sizeof *out);
    if (!xs || !out) {
        cds_err_nomem(err, "out of memory for %zu points", nx);
        goto done;
    }
    for (size_t i = 0; i < nx; i++)
        xs[i] = json_number_value(json_array_get(jx, i));
    if (search_tpe_log_ratio(s, &o, (size_t)d, h.points, h.losses, h.n, xs, nx, out, err) != 0)
        goto done;
    for (size_t i = 0; i < nx; i++)
        printf(i ? " %.17g" : "%.17g", out[i]);
    printf("\n");
    rc = 0;
done:
    free(xs);
    free(out);
    free(h.points);
    free(h.losses);
    search_space_free(s);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc > 2) {
        fprintf(stderr, "usage: search_tpe_check [FILE]   (a case or {\"cases\": [...]}; stdin without FILE)\n");
        return 2;
    }
    json_error_t jerr;
    json_t *in = argc == 2 ? json_load_file(argv[1], 0, &jerr) : json_loadf(stdin, 0, &jerr);
    if (!in) {
        fprintf(stderr, "search_tpe_check: %s: line %d: %s\n", argc == 2 ? argv[1] : "stdin", jerr.line, jerr.text);
        return 1;
    }
    const json_t *cases = json_object_get(in, "cases");
    size_t nc = cases ? json_array_size(cases) : 1;
    cds_err err = {0};
    for (size_t i = 0; i < nc; i++) {
        if (run_case(cases ? json_array_get(cases, i) : in, &err) != 0) {
            fprintf(stderr, "search_tpe_check: case %zu: %s\n", i, err.msg);
            json_decref(in);
            return 1;
        }
    }
    json_decref(in);
    return 0;
}
