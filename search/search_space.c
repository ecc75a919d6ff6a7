/* search_space: parsing, sampling and rendering of a search space
 * (search_space.h has the format).
 *
 * Invariants: dimensions are kept sorted by name (a point's layout does
 * not depend on the JSON's key order, so a stored point means the same
 * thing whoever reads it); a choice keeps its options in the JSON's order
 * (an index names an option); every bound is checked here, once, so
 * sampling and rendering cannot fail on the numbers. */
#include "search_space.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "search_rng.h"

#define MAX_OPTIONS 256

struct search_space {
    size_t n;
    search_dim dims[SEARCH_MAX_DIMS];
    json_t *options[SEARCH_MAX_DIMS]; /* a choice's array (owned); NULL otherwise */
    char *names[SEARCH_MAX_DIMS];
};

static const char *const train_names[] = {"lr", "batch", "l2", "optimizer", "momentum", NULL};
static const char *const kind_names[] = {"choice", "uniform", "quniform", "loguniform", "qloguniform", NULL};

static int path_err(cds_err *err, const char *path, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int path_err(cds_err *err, const char *path, const char *name, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (name)
        return cds_errf(err, "%s.%s: %s", path, name, msg);
    return cds_errf(err, "%s: %s", path, msg);
}

static int is_train_name(const char *name)
{
    for (int i = 0; train_names[i]; i++)
        if (strcmp(train_names[i], name) == 0)
            return 1;
    return 0;
}

static int name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 31)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(name[i] == '_' || (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9')))
            return 0;
    return 1;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The bounds of a continuous kind: [lo, hi] or [lo, hi, q]. */
static int parse_bounds(const json_t *arr, search_kind k, const char *path, const char *name, search_dim *d,
                        cds_err *err)
{
    const char *kn = kind_names[k];
    size_t want = k == SEARCH_QUNIFORM || k == SEARCH_QLOGUNIFORM ? 3 : 2;
    if (!json_is_array(arr) || json_array_size(arr) != want)
        return path_err(err, path, name, "\"%s\" takes [%s]", kn, want == 3 ? "lo, hi, q" : "lo, hi");
    double v[3] = {0, 0, 0};
    for (size_t i = 0; i < want; i++) {
        const json_t *x = json_array_get(arr, i);
        if (!json_is_number(x) || !isfinite(json_number_value(x)))
            return path_err(err, path, name, "\"%s\"[%zu] must be a finite number", kn, i);
        v[i] = json_number_value(x);
    }
    if (!(v[0] < v[1]))
        return path_err(err, path, name, "\"%s\" needs lo < hi (got [%g, %g])", kn, v[0], v[1]);
    if ((k == SEARCH_LOGUNIFORM || k == SEARCH_QLOGUNIFORM) && v[0] <= 0)
        return path_err(err, path, name,
                        "\"%s\" bounds are values, not logs (Hyperopt's loguniform(a, b) is [e^a, e^b]): give lo > 0 "
                        "(e.g. [1e-5, 1e-1])", kn);
    if (want == 3 && !(v[2] > 0))
        return path_err(err, path, name, "\"%s\" needs a step q > 0", kn);
    d->lo = v[0];
    d->hi = v[1];
    d->q = want == 3 ? v[2] : 0;
    return 0;
}

static int parse_choice(search_space *s, size_t i, const json_t *arr, const char *path, const char *name,
                        cds_err *err)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return path_err(err, path, name, "\"choice\" takes a non-empty list of options");
    if (json_array_size(arr) > MAX_OPTIONS)
        return path_err(err, path, name, "\"choice\" has %zu options: at most %d", json_array_size(arr), MAX_OPTIONS);
    for (size_t a = 0; a < json_array_size(arr); a++) {
        const json_t *o = json_array_get(arr, a);
        if (strcmp(name, "model") == 0 && !json_is_object(o))
            return path_err(err, path, name, "\"choice\"[%zu] must be a model object (docs/models.md)", a);
        if (strcmp(name, "optimizer") == 0 && !json_is_string(o))
            return path_err(err, path, name, "\"choice\"[%zu] must be \"sgd\" or \"adam\"", a);
        for (size_t b = 0; b < a; b++)
            if (json_equal((json_t *)o, json_array_get(arr, b)))
                return path_err(err, path, name, "\"choice\"[%zu] repeats option %zu: give each option once", a, b);
    }
    s->options[i] = json_deep_copy(arr);
    s->dims[i].n_options = json_array_size(arr);
    return s->options[i] ? 0 : cds_err_nomem(err, "out of memory for a search space");
}

static int parse_dim(search_space *s, size_t i, const char *name, const json_t *o, const char *path, cds_err *err)
{
    if (!name_ok(name))
        return path_err(err, path, name, "not a field name (lower-case letters, digits and _, at most 31)");
    if (!json_is_object(o) || json_object_size(o) != 1)
        return path_err(err, path, name,
                        "must be one of {\"choice\": [...]}, {\"uniform\": [lo, hi]}, {\"quniform\": [lo, hi, q]}, "
                        "{\"loguniform\": [lo, hi]}, {\"qloguniform\": [lo, hi, q]}");
    const char *kn = json_object_iter_key(json_object_iter((json_t *)o));
    int k = 0;
    while (kind_names[k] && strcmp(kind_names[k], kn) != 0)
        k++;
    if (!kind_names[k])
        return path_err(err, path, name, "\"%s\" is not a kind: use choice, uniform, quniform, loguniform or "
                                         "qloguniform", kn);
    search_dim *d = &s->dims[i];
    d->kind = (search_kind)k;
    if ((strcmp(name, "model") == 0 || strcmp(name, "optimizer") == 0) && d->kind != SEARCH_CHOICE)
        return path_err(err, path, name, "\"%s\" can only be a \"choice\"", name);
    const json_t *arg = json_object_get(o, kn);
    if (d->kind == SEARCH_CHOICE)
        return parse_choice(s, i, arg, path, name, err);
    return parse_bounds(arg, d->kind, path, name, d, err);
}

search_space *search_space_parse(const json_t *space, const char *path, cds_err *err)
{
    if (!json_is_object(space) || json_object_size(space) == 0) {
        path_err(err, path, NULL, "must be an object of dimensions, e.g. {\"lr\": {\"loguniform\": [1e-4, 1e-1]}}");
        return NULL;
    }
    if (json_object_size(space) > SEARCH_MAX_DIMS) {
        path_err(err, path, NULL, "has %zu dimensions: at most %d", json_object_size(space), SEARCH_MAX_DIMS);
        return NULL;
    }
    search_space *s = calloc(1, sizeof *s);
    if (!s) {
        cds_err_nomem(err, "out of memory for a search space");
        return NULL;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)space, key, v) {
        if (!(s->names[s->n] = strdup(key))) {
            cds_err_nomem(err, "out of memory for a search space");
            search_space_free(s);
            return NULL;
        }
        s->n++;
    }
    qsort(s->names, s->n, sizeof s->names[0], cmp_names);
    for (size_t i = 0; i < s->n; i++) {
        s->dims[i].name = s->names[i];
        if (parse_dim(s, i, s->names[i], json_object_get(space, s->names[i]), path, err) != 0) {
            search_space_free(s);
            return NULL;
        }
    }
    return s;
}

void search_space_free(search_space *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < SEARCH_MAX_DIMS; i++) {
        json_decref(s->options[i]);
        free(s->names[i]);
    }
    free(s);
}

size_t search_space_dims(const search_space *s) { return s->n; }

const search_dim *search_space_dim(const search_space *s, size_t d) { return d < s->n ? &s->dims[d] : NULL; }

int search_space_find(const search_space *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->names[i], name) == 0)
            return (int)i;
    return -1;
}

const json_t *search_space_option(const search_space *s, size_t d, size_t k)
{
    return d < s->n && s->options[d] ? json_array_get(s->options[d], k) : NULL;
}

double search_space_quantize(const search_dim *d, double x)
{
    if (d->kind == SEARCH_QUNIFORM || d->kind == SEARCH_QLOGUNIFORM)
        return round(x / d->q) * d->q;
    return x;
}

void search_space_sample(const search_space *s, uint64_t seed, uint64_t trial, double *v)
{
    search_rng r;
    search_rng_seed(&r, seed, trial);
    for (size_t i = 0; i < s->n; i++) {
        const search_dim *d = &s->dims[i];
        double u = search_rng_unit(&r);
        switch (d->kind) {
        case SEARCH_CHOICE:
            v[i] = (double)(uint64_t)(u * (double)d->n_options);
            break;
        case SEARCH_UNIFORM:
        case SEARCH_QUNIFORM:
            v[i] = search_space_quantize(d, d->lo + (d->hi - d->lo) * u);
            break;
        case SEARCH_LOGUNIFORM:
        case SEARCH_QLOGUNIFORM:
            v[i] = search_space_quantize(d, exp(log(d->lo) + (log(d->hi) - log(d->lo)) * u));
            break;
        }
    }
}

char *search_space_point_json(const search_space *s, const double *v)
{
    json_t *a = json_array();
    for (size_t d = 0; a && d < s->n; d++)
        json_array_append_new(a, json_real(v[d]));
    char *text = a ? json_dumps(a, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(a);
    return text;
}

int search_space_point_parse(const search_space *s, const char *text, double *v)
{
    json_t *a = json_loads(text ? text : "", 0, NULL);
    int good = json_is_array(a) && json_array_size(a) == s->n;
    for (size_t d = 0; good && d < s->n; d++) {
        const json_t *x = json_array_get(a, d);
        good = json_is_number(x);
        v[d] = json_number_value(x);
    }
    json_decref(a);
    return good ? 0 : -1;
}

/* A continuous value as JSON: a whole number when the dimension only makes
 * whole numbers (a q kind with whole q and lo), else a real. */
static json_t *number_json(const search_dim *d, double x)
{
    int whole = d->q > 0 && d->q == floor(d->q) && d->lo == floor(d->lo) && fabs(x) < 9007199254740992.0;
    return whole ? json_integer((json_int_t)llround(x)) : json_real(x);
}

static json_t *value_json(const search_space *s, size_t i, double x, int multiple)
{
    const search_dim *d = &s->dims[i];
    if (d->kind == SEARCH_CHOICE) {
        size_t k = x >= 0 && x < (double)d->n_options ? (size_t)x : 0;
        const json_t *o = json_array_get(s->options[i], k);
        if (strcmp(d->name, "batch") != 0 || !json_is_number(o))
            return json_deep_copy(o);
        x = json_number_value(o); /* a batch chosen is rounded as one drawn */
    }
    if (strcmp(d->name, "batch") == 0) {
        double m = multiple > 1 ? multiple : 1;
        double b = round(x / m) * m;
        if (b < m)
            b = m;
        return json_integer((json_int_t)b);
    }
    return number_json(d, x);
}

json_t *search_space_render(const search_space *s, const double *v, const json_t *base_model,
                            const json_t *base_train, int multiple, cds_err *err)
{
    int mi = search_space_find(s, "model");
    json_t *model = mi >= 0 ? value_json(s, (size_t)mi, v[mi], multiple) : json_deep_copy(base_model);
    json_t *train = base_train ? json_deep_copy(base_train) : json_object();
    json_t *out = json_object();
    if (!model || !train || !out || !json_is_object(model))
        goto nomem;
    for (size_t i = 0; i < s->n; i++) {
        if ((int)i == mi)
            continue;
        json_t *x = value_json(s, i, v[i], multiple);
        if (!x)
            goto nomem;
        if (json_object_set_new(is_train_name(s->names[i]) ? train : model, s->names[i], x) != 0)
            goto nomem;
    }
    if (json_object_set_new(out, "model", model) != 0 || json_object_set_new(out, "train", train) != 0) {
        model = train = NULL;
        goto nomem;
    }
    return out;
nomem:
    json_decref(model);
    json_decref(train);
    json_decref(out);
    cds_err_nomem(err, "out of memory rendering a search point");
    return NULL;
}
