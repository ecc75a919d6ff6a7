/* sweep_spec: reads a sweep spec and expands its grid (see sweep_spec.h and
 * docs/sweeps.md).
 *
 * Algorithm.  The spec is checked from the outside in: the top-level fields,
 * then the base train object and the grid (structure first, then the number
 * of models the grid would give, and only then every value, so that a huge
 * grid is refused before anything is quadratic in its size), then the models.
 * Expansion first builds the G = |optimizer|·|lr|·|batch|·|l2| train objects
 * (base train plus one value per grid axis plus the sweep's seed), parsing
 * each with nn_train_cfg_parse; then model m (outer) paired with train g
 * (inner) is model id m·G + g.  The grid axes nest in the fixed order
 * optimizer, lr, batch, l2, so ids do not depend on the order of the keys in
 * the file.
 *
 * Invariants.  Every model spec produced has a "train" with optimizer, lr,
 * batch, l2 and seed all present (batch and l2 take nn_optim's defaults when
 * neither the grid nor the base gives them), so a model's hyper-parameters
 * can be read from its spec alone.  A field is set in one place only: the
 * base train may not hold a field the grid varies, nor the seed (the sweep's
 * "seed" sets it, the same for every model, so models differ only in their
 * hyper-parameters).  Grid values are kept as the JSON values given (an l2 of
 * 0 stays the integer 0), so the same file always gives the same bytes. */
#include "sweep_spec.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_json.h"
#include "nn_model.h"
#include "nn_optim.h"
#include "search_space.h"

#define DUMP_FLAGS (JSON_SORT_KEYS | JSON_COMPACT | JSON_REAL_PRECISION(17))
#define DATASET_NAME_MAX 128
#define PATH_MAX_LEN 96

struct sweep_spec {
    char mode[8];     /* mop | ddp | ma */
    char *dataset;
    int epochs;
    int max_attempts; /* 0: not given */
    uint64_t seed;
    int n_models;
    char **specs;     /* n_models canonical {"model","train"} texts */
    char **summaries; /* n_models "model i: ..." lines */
    char *json;       /* the canonical whole spec */
    char search[8];   /* "" (a grid), grid, random or tpe */
    int trials;       /* random and tpe: the budget of trials (models); 0 otherwise */
    uint64_t search_seed;
    char early_stop[96]; /* "metric mode grace eta max brackets", or "" */
    char **points;       /* a search's model points (JSON arrays), n_models of them; NULL for a plain grid */
    char init[96];       /* "SWEEP/MODEL[@EPOCH]", or "" */
    char init_sweep[32];
    int init_model, init_epoch;
    int hybrid; /* a MOP sweep lends idle workers to the models left (docs/search.md) */
};

/* The grid axes, outermost first: this order fixes the model ids. */
enum axis { AX_OPTIMIZER, AX_LR, AX_BATCH, AX_L2, N_AXES };
static const char *const axis_names[N_AXES] = {"optimizer", "lr", "batch", "l2"};

/* Fields of docs/models.md's train object (nn_optim.c's list). */
static const char *const train_fields[] = {"optimizer", "lr", "momentum", "beta1", "beta2", "eps", "l2", "batch",
                                           "seed", "schedule", "normalize", "lazy", "tf32", "cuda_graphs",
                                           "init", NULL};
static const char *const top_fields[] = {"mode", "dataset", "epochs", "seed", "models", "train", "grid",
                                         "max_attempts", "search", "early_stop", "init", "hybrid", NULL};

/* Fills err with "sweep spec <path>: <message>"; returns -1. */
static int spec_err(cds_err *err, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int spec_err(cds_err *err, const char *path, const char *fmt, ...)
{
    char msg[CDS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cds_errf(err, "sweep spec %s: %s", path, msg);
}

/* Refuses a key of object o (at path, e.g. "$.train") that is not in known:
 * "sweep spec $.train.warmup: unknown field; the fields are: ...". */
static int check_fields(const json_t *o, const char *path, const char *const *known, const char *hint,
                        cds_err *err)
{
    char where[64];
    snprintf(where, sizeof where, "sweep spec %s", path);
    return cds_json_check_fields(o, where, known, hint, err);
}

/* ---- top-level fields ---------------------------------------------------- */

static int parse_mode(const json_t *root, sweep_spec *s, cds_err *err)
{
    const json_t *v = json_object_get(root, "mode");
    if (!v)
        return spec_err(err, "$.mode", "required: write \"mode\": \"mop\" (Model Hopper Parallelism), \"ddp\" "
                        "(data-parallel) or \"ma\" (model averaging)");
    const char *m = json_string_value(v);
    if (!m || (strcmp(m, "mop") != 0 && strcmp(m, "ddp") != 0 && strcmp(m, "ma") != 0))
        return spec_err(err, "$.mode", "must be \"mop\" (Model Hopper Parallelism), \"ddp\" (data-parallel) or "
                        "\"ma\" (model averaging), not %s%.40s%s", m ? "\"" : "", m ? m : "a non-string",
                        m ? "\"" : "");
    snprintf(s->mode, sizeof s->mode, "%s", m);
    return 0;
}

/* "hybrid": on by default in a MOP sweep (bench/hybrid measured it
 * better: docs/search.md); DDP and MA sweeps train every model as a gang
 * already. */
#define HYBRID_DEFAULT 1

static int parse_hybrid(const json_t *root, sweep_spec *s, cds_err *err)
{
    const json_t *v = json_object_get(root, "hybrid");
    int mop = strcmp(s->mode, "mop") == 0;
    if (v && !json_is_boolean(v))
        return spec_err(err, "$.hybrid", "must be true or false (idle workers lent to the models left as a gang)");
    if (v && !mop)
        return spec_err(err, "$.hybrid", "a %s sweep trains every model as a gang already: drop it (it is for "
                        "\"mode\": \"mop\")", s->mode);
    s->hybrid = mop && (v ? json_is_true(v) : HYBRID_DEFAULT);
    return 0;
}

static int dataset_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > DATASET_NAME_MAX || s[0] == '.')
        return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == n;
}

static int parse_dataset(const json_t *root, sweep_spec *s, cds_err *err)
{
    const json_t *v = json_object_get(root, "dataset");
    if (!v)
        return spec_err(err, "$.dataset", "required: the name of a dataset loaded by jobctl enqueue etl");
    if (!json_is_string(v) || !dataset_name_ok(json_string_value(v)))
        return spec_err(err, "$.dataset", "must be a dataset name: 1 to %d letters, digits, '_', '-' or '.' "
                        "(the \"dataset\" of its ETL spec)", DATASET_NAME_MAX);
    s->dataset = strdup(json_string_value(v));
    return s->dataset ? 0 : cds_err_nomem(err, "out of memory");
}

/* A whole number in [lo, hi]; absent gives def (or an error when def < 0). */
static int parse_whole(const json_t *root, const char *field, long long lo, long long hi, long long def,
                       long long *out, cds_err *err)
{
    char path[PATH_MAX_LEN];
    snprintf(path, sizeof path, "$.%s", field);
    const json_t *v = json_object_get(root, field);
    if (!v && def >= 0) {
        *out = def;
        return 0;
    }
    if (!v || !json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return spec_err(err, path, "%s a whole number from %lld to %lld", v ? "must be" : "required:", lo, hi);
    *out = json_integer_value(v);
    return 0;
}

/* ---- grid and base train ------------------------------------------------- */

typedef struct grid {
    const json_t *axis[N_AXES]; /* the grid's list, or NULL: not varied */
    size_t size[N_AXES];        /* 1 for an axis not varied */
    const json_t *base;         /* the base train object (owned by root, or the empty object) */
} grid;

/* Checks one value of an axis (from the grid or the base train). */
static int check_value(enum axis a, const json_t *v, const char *path, cds_err *err)
{
    double x = json_number_value(v);
    switch (a) {
    case AX_OPTIMIZER:
        if (!json_is_string(v) || (strcmp(json_string_value(v), "sgd") != 0 && strcmp(json_string_value(v), "adam") != 0))
            return spec_err(err, path, "must be \"sgd\" or \"adam\"");
        return 0;
    case AX_LR:
        if (!json_is_number(v) || !(x > 0 && x <= 1000))
            return spec_err(err, path, "must be a positive number (a learning rate, at most 1000)");
        return 0;
    case AX_BATCH:
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 20))
            return spec_err(err, path, "must be a whole number from 1 to %d (a mini-batch size)", 1 << 20);
        return 0;
    case AX_L2:
        if (!json_is_number(v) || !(x >= 0 && x <= 10))
            return spec_err(err, path, "must be a number from 0 to 10 (the L2 factor)");
        return 0;
    case N_AXES: break;
    }
    return spec_err(err, path, "internal: unknown axis");
}

static int same_value(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b);
    return json_equal((json_t *)a, (json_t *)b);
}

/* Every value of a grid list valid and given once. */
static int check_axis_values(enum axis a, const json_t *list, cds_err *err)
{
    char path[PATH_MAX_LEN], first[PATH_MAX_LEN];
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *v = json_array_get(list, i);
        snprintf(path, sizeof path, "$.grid.%s[%zu]", axis_names[a], i);
        if (check_value(a, v, path, err) != 0)
            return -1;
        for (size_t k = 0; k < i; k++) {
            if (!same_value(v, json_array_get(list, k)))
                continue;
            snprintf(first, sizeof first, "$.grid.%s[%zu]", axis_names[a], k);
            if (json_is_string(v))
                return spec_err(err, path, "duplicate of %s (\"%s\"): give each value once", first,
                                json_string_value(v));
            return spec_err(err, path, "duplicate of %s (%g): give each value once", first, json_number_value(v));
        }
    }
    return 0;
}

/* The grid's structure: an object of non-empty lists over the known axes. */
static int parse_grid_shape(const json_t *root, grid *g, cds_err *err)
{
    static const char *const known[N_AXES + 1] = {"optimizer", "lr", "batch", "l2", NULL};
    const json_t *gj = json_object_get(root, "grid");
    for (int a = 0; a < N_AXES; a++)
        g->size[a] = 1;
    if (!gj)
        return 0;
    if (!json_is_object(gj))
        return spec_err(err, "$.grid", "must be an object of lists, e.g. {\"lr\": [0.001, 0.0001], \"batch\": [64]}");
    if (check_fields(gj, "$.grid", known, "put other hyper-parameters, fixed, in $.train", err) != 0)
        return -1;
    for (int a = 0; a < N_AXES; a++) {
        const json_t *list = json_object_get(gj, axis_names[a]);
        char path[PATH_MAX_LEN];
        snprintf(path, sizeof path, "$.grid.%s", axis_names[a]);
        if (!list)
            continue;
        if (!json_is_array(list))
            return spec_err(err, path, "must be a list of values, e.g. %s", a == AX_OPTIMIZER ? "[\"adam\", \"sgd\"]"
                            : a == AX_BATCH ? "[64, 256]" : "[0.001, 0.0001]");
        if (json_array_size(list) == 0)
            return spec_err(err, path, "empty list: give at least one value, or drop the field");
        g->axis[a] = list;
        g->size[a] = json_array_size(list);
    }
    return 0;
}

/* The base train's structure: an object of known fields, none of them set
 * by the grid or the sweep. */
static int parse_base_train(const json_t *root, grid *g, cds_err *err)
{
    const json_t *t = json_object_get(root, "train");
    if (!t)
        return 0;
    if (!json_is_object(t))
        return spec_err(err, "$.train", "must be a train object (docs/models.md), e.g. {\"schedule\": {\"kind\": \"constant\"}}");
    if (check_fields(t, "$.train", train_fields, "", err) != 0)
        return -1;
    if (json_object_get(t, "seed"))
        return spec_err(err, "$.train.seed", "the sweep sets every model's seed: move it to $.seed");
    for (int a = 0; a < N_AXES; a++) {
        const json_t *v = json_object_get(t, axis_names[a]);
        char path[PATH_MAX_LEN];
        snprintf(path, sizeof path, "$.train.%s", axis_names[a]);
        if (v && g->axis[a])
            return spec_err(err, path, "also set by $.grid.%s: give it in one place (the grid to vary it)",
                            axis_names[a]);
        if (v && check_value((enum axis)a, v, path, err) != 0)
            return -1;
    }
    g->base = t;
    return 0;
}

/* optimizer and lr have no default: one of grid and base must give them. */
static int check_required_axes(const grid *g, cds_err *err)
{
    static const enum axis required[] = {AX_OPTIMIZER, AX_LR};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        enum axis a = required[i];
        char path[PATH_MAX_LEN];
        snprintf(path, sizeof path, "$.grid.%s", axis_names[a]);
        if (!g->axis[a] && !json_object_get(g->base, axis_names[a]))
            return spec_err(err, path, "required: give \"%s\" as a list in $.grid or as one value in $.train",
                            axis_names[a]);
    }
    return 0;
}

/* ---- models -------------------------------------------------------------- */

static int parse_models_shape(const json_t *root, const json_t **models, cds_err *err)
{
    *models = json_object_get(root, "models");
    if (!*models)
        return spec_err(err, "$.models", "required: a list of model objects (docs/models.md)");
    if (!json_is_array(*models) || json_array_size(*models) == 0)
        return spec_err(err, "$.models", "must be a non-empty list of model objects, e.g. "
                        "[{\"arch\": \"cnn\", \"input\": [1, 28, 28], \"classes\": 10}]");
    return 0;
}

/* The number of channels normalize must have for this model: C of [C, H, W]
 * (or [C, I]), 1 for a flat input, 0 for a sparse one (never normalised);
 * the same rule as nn_data. */
static int model_channels(const json_t *model)
{
    if (json_object_get(model, "sparse"))
        return 0;
    const json_t *in = json_object_get(model, "input");
    return json_array_size(in) >= 2 ? (int)json_integer_value(json_array_get(in, 0)) : 1;
}

/* "diag.sleep" stands for a model whose visits only sleep: for benchmarks
 * of the scheduler and chaos tests, where training would only cost time.
 * {"arch": "diag.sleep", "ms": N}, and for tests of search and early
 * stopping a score its evaluation records as valid_top1 (worker_mop_sleep.c):
 * "curve": [top-1 after epoch 1, 2, ...], or "objective": {field: target}
 * with those fields numbers of the model (a search sets them), scored
 * exp(-Σ (field - target)²)·(1 - 2^-epoch). */
static int check_diag_sleep(const json_t *model, const char *path, cds_err *err)
{
    const json_t *ms = json_object_get(model, "ms");
    if (!json_is_integer(ms) || json_integer_value(ms) < 0 || json_integer_value(ms) > 3600000)
        return spec_err(err, path, "a diag.sleep model is {\"arch\": \"diag.sleep\", \"ms\": N} with N from 0 to "
                        "3600000 (and optionally \"curve\" or \"objective\")");
    const json_t *curve = json_object_get(model, "curve"), *obj = json_object_get(model, "objective");
    size_t extra = json_object_size(model) - 2 - (curve != NULL) - (obj != NULL), fields = 0;
    if (curve && (!json_is_array(curve) || json_array_size(curve) == 0 || json_array_size(curve) > SWEEP_MAX_EPOCHS))
        return spec_err(err, path, "a diag.sleep \"curve\" is a list of 1 to %d top-1 values", SWEEP_MAX_EPOCHS);
    for (size_t i = 0; curve && i < json_array_size(curve); i++)
        if (!json_is_number(json_array_get(curve, i)))
            return spec_err(err, path, "a diag.sleep \"curve\" holds numbers only");
    if (obj && !json_is_object(obj))
        return spec_err(err, path, "a diag.sleep \"objective\" is an object {field: target}");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        if (!json_is_number(v) || !json_is_number(json_object_get(model, key)))
            return spec_err(err, path, "diag.sleep \"objective\".%s: both the target and the model's %s must be "
                            "numbers", key, key);
        fields++;
    }
    if (extra != fields)
        return spec_err(err, path, "a diag.sleep model has arch, ms, curve, objective and the objective's fields "
                        "only");
    return 0;
}

/* Checks a model object (at path) alone, then against the normalisation of
 * the train objects (n_norm means/stds, the same for every grid point: it
 * comes from the base). */
static int check_model_at(const json_t *model, const char *path, int n_norm, cds_err *err)
{
    if (!json_is_object(model))
        return spec_err(err, path, "must be a model object like {\"arch\": \"cnn\", \"input\": [1, 28, 28], "
                        "\"classes\": 10} (docs/models.md)");
    const char *arch = json_string_value(json_object_get(model, "arch"));
    if (arch && strcmp(arch, "diag.sleep") == 0)
        return check_diag_sleep(model, path, err);
    char *text = json_dumps(model, DUMP_FLAGS);
    if (!text)
        return cds_err_nomem(err, "out of memory");
    cds_err merr;
    int rc = nn_model_validate(text, NULL, &merr);
    free(text);
    if (rc != 0)
        return spec_err(err, path, "%s", merr.msg);
    int c = model_channels(model);
    if (n_norm > 0 && c == 0)
        return spec_err(err, "$.train.normalize", "%s is sparse, which is not normalised: drop mean and std", path);
    if (n_norm > 0 && n_norm != c)
        return spec_err(err, "$.train.normalize", "has %d mean/std values but %s has %d input channel%s: give one "
                        "per channel (models of different channel counts need separate sweeps)", n_norm, path, c,
                        c == 1 ? "" : "s");
    return 0;
}

static int check_model(const json_t *model, size_t i, int n_norm, cds_err *err)
{
    char path[PATH_MAX_LEN];
    snprintf(path, sizeof path, "$.models[%zu]", i);
    return check_model_at(model, path, n_norm, err);
}

/* ---- expansion ----------------------------------------------------------- */

/* One grid point: its train object (complete) and what the summary shows. */
typedef struct point {
    json_t *train;
    int adam, batch, lazy;
    double lr, l2;
} point;

/* Checks p->train (at path in errors), writes its defaults out and fills
 * the rest of p. */
static int complete_train(point *p, const char *path, int *n_norm, cds_err *err)
{
    char *text = json_dumps(p->train, DUMP_FLAGS);
    if (!text)
        return cds_err_nomem(err, "out of memory");
    nn_train_cfg c;
    cds_err terr;
    int rc = nn_train_cfg_parse(text, &c, &terr);
    free(text);
    if (rc != 0)
        return spec_err(err, path, "%s", terr.msg);
    /* Explicit defaults: a model's spec then says what it trains with. */
    if (!json_object_get(p->train, "batch"))
        json_object_set_new(p->train, "batch", json_integer(c.batch));
    if (!json_object_get(p->train, "l2"))
        json_object_set_new(p->train, "l2", json_real(c.l2));
    p->adam = c.adam;
    p->lazy = c.lazy;
    p->batch = c.batch;
    p->lr = c.lr;
    p->l2 = c.l2;
    *n_norm = c.n_norm;
    nn_train_cfg_free(&c);
    return 0;
}

/* Builds the train object of grid point idx[] and checks it. */
static int build_point(const grid *g, const size_t idx[N_AXES], uint64_t seed, point *p, int *n_norm, cds_err *err)
{
    p->train = g->base ? json_deep_copy(g->base) : json_object();
    if (!p->train)
        return cds_err_nomem(err, "out of memory");
    for (int a = 0; a < N_AXES; a++)
        if (g->axis[a])
            json_object_set(p->train, axis_names[a], json_array_get(g->axis[a], idx[a]));
    json_object_set_new(p->train, "seed", json_integer((json_int_t)seed));
    return complete_train(p, "$.train", n_norm, err);
}

/* Grid point number k (0-based, l2 fastest) as one index per axis. */
static void point_index(const grid *g, size_t k, size_t idx[N_AXES])
{
    for (int a = N_AXES - 1; a >= 0; a--) {
        idx[a] = k % g->size[a];
        k /= g->size[a];
    }
}

static int emit_model(sweep_spec *s, int id, const json_t *model, const point *p, cds_err *err)
{
    json_t *spec = json_pack("{s:O, s:O}", "model", model, "train", p->train);
    s->specs[id] = spec ? json_dumps(spec, DUMP_FLAGS) : NULL;
    json_decref(spec);
    char line[256];
    snprintf(line, sizeof line, "model %d: %s %s lr=%g batch=%d l2=%g", id,
             json_string_value(json_object_get(model, "arch")), p->adam ? "adam" : "sgd", p->lr, p->batch, p->l2);
    s->summaries[id] = strdup(line);
    if (!s->specs[id] || !s->summaries[id])
        return cds_err_nomem(err, "out of memory for %d model specs", s->n_models);
    return 0;
}

/* What a train object demands of the model it trains ("lazy" needs a sparse
 * mlp), so the sweep is refused here rather than by the worker. */
static int check_pair_at(const json_t *model, const char *path, const point *p, cds_err *err)
{
    const char *arch = json_string_value(json_object_get(model, "arch"));
    if (!p->lazy || (arch && strcmp(arch, "diag.sleep") == 0))
        return 0;
    char *text = json_dumps(model, DUMP_FLAGS);
    if (!text)
        return cds_err_nomem(err, "out of memory");
    nn_train_cfg c = {.adam = 1, .lazy = 1};
    cds_err merr;
    int rc = nn_train_cfg_check_model(&c, text, &merr);
    free(text);
    return rc != 0 ? spec_err(err, path, "%s", merr.msg) : 0;
}

static int check_pair(const json_t *model, size_t m, const point *p, cds_err *err)
{
    char path[64];
    snprintf(path, sizeof path, "$.models[%zu]", m);
    return check_pair_at(model, path, p, err);
}

/* Builds the G grid points, checks every model against them, and writes the
 * M = models·G specs, model-major. */
static int expand(sweep_spec *s, const grid *g, const json_t *models, size_t n_points, cds_err *err)
{
    point *pts = calloc(n_points, sizeof *pts);
    s->specs = calloc((size_t)s->n_models, sizeof *s->specs);
    s->summaries = calloc((size_t)s->n_models, sizeof *s->summaries);
    int rc = pts && s->specs && s->summaries ? 0 : cds_err_nomem(err, "out of memory for %d models", s->n_models);
    int n_norm = 0;
    size_t idx[N_AXES];
    for (size_t k = 0; rc == 0 && k < n_points; k++) {
        point_index(g, k, idx);
        rc = build_point(g, idx, s->seed, &pts[k], &n_norm, err);
    }
    for (size_t m = 0; rc == 0 && m < json_array_size(models); m++)
        rc = check_model(json_array_get(models, m), m, n_norm, err);
    for (size_t m = 0; rc == 0 && m < json_array_size(models); m++)
        for (size_t k = 0; rc == 0 && k < n_points; k++)
            rc = check_pair(json_array_get(models, m), m, &pts[k], err);
    for (size_t m = 0; rc == 0 && m < json_array_size(models); m++)
        for (size_t k = 0; rc == 0 && k < n_points; k++)
            rc = emit_model(s, (int)(m * n_points + k), json_array_get(models, m), &pts[k], err);
    for (size_t k = 0; pts && k < n_points; k++)
        json_decref(pts[k].train);
    free(pts);
    return rc;
}


/* ---- search (docs/search.md) --------------------------------------------- */

#define TPE_STARTUP 20 /* search_tpe_defaults' n_startup: TPE's first trials are random */

typedef struct search_plan {
    const json_t *obj;        /* $.search */
    search_space *space;
    const json_t *base_train; /* $.train, or NULL */
    const json_t *models;     /* $.models, or NULL when the space chooses the model */
    size_t n_grid;            /* a grid: the product of the choices (per model) */
} search_plan;

static int parse_search_obj(const json_t *root, sweep_spec *s, search_plan *sp, cds_err *err)
{
    static const char *const known[] = {"kind", "trials", "seed", "space", NULL};
    sp->obj = json_object_get(root, "search");
    if (!json_is_object(sp->obj))
        return spec_err(err, "$.search", "must be an object like {\"kind\": \"random\", \"trials\": 20, \"space\": "
                        "{\"lr\": {\"loguniform\": [1e-4, 1e-1]}}} (docs/search.md)");
    if (check_fields(sp->obj, "$.search", known, "", err) != 0)
        return -1;
    if (json_object_get(root, "grid"))
        return spec_err(err, "$.grid", "also given $.search: give one of them (a grid in $.search is "
                        "{\"kind\": \"grid\", \"space\": {\"lr\": {\"choice\": [0.1, 0.01]}}})");
    const char *kind = json_string_value(json_object_get(sp->obj, "kind"));
    if (!kind || (strcmp(kind, "grid") != 0 && strcmp(kind, "random") != 0 && strcmp(kind, "tpe") != 0))
        return spec_err(err, "$.search.kind", "must be \"grid\", \"random\" or \"tpe\"");
    snprintf(s->search, sizeof s->search, "%s", kind);
    const json_t *trials = json_object_get(sp->obj, "trials");
    if (strcmp(kind, "grid") == 0 && trials)
        return spec_err(err, "$.search.trials", "a grid's models are its choices' product: drop \"trials\"");
    if (strcmp(kind, "grid") != 0) {
        if (!json_is_integer(trials) || json_integer_value(trials) < 1 ||
            json_integer_value(trials) > SWEEP_MAX_MODELS)
            return spec_err(err, "$.search.trials", "%s a whole number from 1 to %d (the budget of models)",
                            trials ? "must be" : "required:", SWEEP_MAX_MODELS);
        s->trials = (int)json_integer_value(trials);
    }
    const json_t *seed = json_object_get(sp->obj, "seed");
    if (seed && (!json_is_integer(seed) || json_integer_value(seed) < 0 ||
                 json_integer_value(seed) > 9007199254740992LL))
        return spec_err(err, "$.search.seed", "must be a whole number from 0 to 9007199254740992 (it draws the "
                        "configurations; $.seed stays every model's initialisation seed)");
    s->search_seed = seed ? (uint64_t)json_integer_value(seed) : s->seed;
    const json_t *space = json_object_get(sp->obj, "space");
    if (!space)
        return spec_err(err, "$.search.space", "required: the dimensions to search, e.g. {\"lr\": {\"loguniform\": "
                        "[1e-4, 1e-1]}, \"batch\": {\"choice\": [32, 64]}}");
    if (!(sp->space = search_space_parse(space, "sweep spec $.search.space", err)))
        return -1;
    for (size_t d = 0; strcmp(kind, "grid") == 0 && d < search_space_dims(sp->space); d++) {
        const search_dim *dim = search_space_dim(sp->space, d);
        if (dim->kind != SEARCH_CHOICE) {
            char path[PATH_MAX_LEN];
            snprintf(path, sizeof path, "$.search.space.%s", dim->name);
            return spec_err(err, path, "a grid takes \"choice\" dimensions only: use \"kind\": \"random\" or "
                            "\"tpe\" to search a range");
        }
    }
    return 0;
}

/* The base train of a search: known fields, no seed, none the space sets;
 * optimizer and lr given by one of the two. */
static int parse_search_train(const json_t *root, search_plan *sp, cds_err *err)
{
    const json_t *t = json_object_get(root, "train");
    if (t && !json_is_object(t))
        return spec_err(err, "$.train", "must be a train object (docs/models.md)");
    if (t && check_fields(t, "$.train", train_fields, "", err) != 0)
        return -1;
    if (t && json_object_get(t, "seed"))
        return spec_err(err, "$.train.seed", "the sweep sets every model's seed: move it to $.seed");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)t, key, v) {
        char path[PATH_MAX_LEN];
        snprintf(path, sizeof path, "$.train.%s", key);
        if (search_space_find(sp->space, key) >= 0)
            return spec_err(err, path, "also set by $.search.space.%s: give it in one place (the space to vary it)",
                            key);
    }
    static const char *const required[] = {"optimizer", "lr"};
    for (size_t i = 0; i < 2; i++)
        if (!(t && json_object_get(t, required[i])) && search_space_find(sp->space, required[i]) < 0) {
            char path[PATH_MAX_LEN];
            snprintf(path, sizeof path, "$.search.space.%s", required[i]);
            return spec_err(err, path, "required: give \"%s\" as a dimension here or as one value in $.train",
                            required[i]);
        }
    sp->base_train = t;
    return 0;
}

/* The models: the space's "model" choice, or $.models (one model for a
 * random or TPE search, whose other dimensions set its fields). */
static int parse_search_models(const json_t *root, const sweep_spec *s, search_plan *sp, cds_err *err)
{
    const json_t *models = json_object_get(root, "models");
    int chosen = search_space_find(sp->space, "model") >= 0;
    if (chosen && models)
        return spec_err(err, "$.models", "the search chooses the model ($.search.space.model): drop $.models");
    if (!chosen && parse_models_shape(root, &models, err) != 0)
        return -1;
    if (!chosen && strcmp(s->search, "grid") != 0 && json_array_size(models) != 1)
        return spec_err(err, "$.models", "a %s search trains one model, its fields set by the space: give one "
                        "model here, or several as $.search.space.model {\"choice\": [...]}", s->search);
    for (size_t m = 0; !chosen && m < json_array_size(models); m++)
        if (!json_is_object(json_array_get(models, m))) {
            char path[PATH_MAX_LEN];
            snprintf(path, sizeof path, "$.models[%zu]", m);
            return spec_err(err, path, "must be a model object (docs/models.md)");
        }
    sp->models = chosen ? NULL : models;
    return 0;
}

/* How many models the sweep starts with: a grid's product (times its
 * models), a random search's trials, a TPE search's random start-up trials
 * (the rest are proposed as trials finish). */
static int count_search_models(sweep_spec *s, search_plan *sp, cds_err *err)
{
    size_t n = sp->models ? json_array_size(sp->models) : 1;
    if (strcmp(s->search, "grid") == 0) {
        sp->n_grid = 1;
        for (size_t d = 0; d < search_space_dims(sp->space); d++) {
            sp->n_grid *= search_space_dim(sp->space, d)->n_options;
            if (sp->n_grid * n > SWEEP_MAX_MODELS)
                return spec_err(err, "$.search.space", "the choices give over %d models: split it into several "
                                "sweeps", SWEEP_MAX_MODELS);
        }
        s->n_models = (int)(sp->n_grid * n);
    } else
        s->n_models = strcmp(s->search, "tpe") == 0 && s->trials > TPE_STARTUP ? TPE_STARTUP : s->trials;
    return 0;
}

/* The point and base model of model id: a grid's choice indices (models
 * outer, the last dimension fastest), or the random draw of trial id. */
static const json_t *trial_point(const sweep_spec *s, const search_plan *sp, int id, double *v)
{
    size_t dims = search_space_dims(sp->space);
    if (strcmp(s->search, "grid") != 0) {
        search_space_sample(sp->space, s->search_seed, (uint64_t)id, v);
        return sp->models ? json_array_get(sp->models, 0) : NULL;
    }
    size_t k = (size_t)id % sp->n_grid;
    for (size_t d = dims; d-- > 0;) {
        size_t n = search_space_dim(sp->space, d)->n_options;
        v[d] = (double)(k % n);
        k /= n;
    }
    return sp->models ? json_array_get(sp->models, (size_t)id / sp->n_grid) : NULL;
}

/* Point v applied to the base, the sweep's seed set, checked as training
 * will check it; emitted as model id unless id < 0 (a check only). */
static int emit_trial(sweep_spec *s, const search_plan *sp, int id, const json_t *model, const double *v,
                      int multiple, const char *where, cds_err *err)
{
    json_t *spec = search_space_render(sp->space, v, model, sp->base_train, multiple, err);
    if (!spec)
        return -1;
    point p = {.train = json_object_get(spec, "train")};
    const json_t *m = json_object_get(spec, "model");
    json_object_set_new(p.train, "seed", json_integer((json_int_t)s->seed));
    int n_norm = 0;
    int rc = complete_train(&p, where, &n_norm, err);
    if (rc == 0)
        rc = check_model_at(m, where, n_norm, err);
    if (rc == 0)
        rc = check_pair_at(m, where, &p, err);
    if (rc == 0 && id >= 0)
        rc = emit_model(s, id, m, &p, err);
    if (rc == 0 && id >= 0 && !(s->points[id] = search_space_point_json(sp->space, v)))
        rc = cds_err_nomem(err, "out of memory");
    json_decref(spec);
    return rc;
}

/* A TPE search proposes points no one has seen yet: its bounds and every
 * option are checked now, so that a proposal cannot make a spec training
 * refuses.  Point c puts every range at its low end (c even) or high end
 * (odd) and each choice at option min(c, n-1). */
static int check_corners(sweep_spec *s, const search_plan *sp, int multiple, cds_err *err)
{
    size_t dims = search_space_dims(sp->space), most = 2;
    for (size_t d = 0; d < dims; d++)
        if (search_space_dim(sp->space, d)->n_options > most)
            most = search_space_dim(sp->space, d)->n_options;
    double v[SEARCH_MAX_DIMS];
    for (size_t c = 0; c < most; c++) {
        for (size_t d = 0; d < dims; d++) {
            const search_dim *dim = search_space_dim(sp->space, d);
            v[d] = dim->kind == SEARCH_CHOICE ? (double)(c < dim->n_options ? c : dim->n_options - 1)
                                              : search_space_quantize(dim, c % 2 ? dim->hi : dim->lo);
        }
        char where[PATH_MAX_LEN];
        snprintf(where, sizeof where, "$.search.space (its %s ends, option %zu)", c % 2 ? "high" : "low", c);
        if (emit_trial(s, sp, -1, sp->models ? json_array_get(sp->models, 0) : NULL, v, multiple, where, err) != 0)
            return -1;
    }
    return 0;
}

static int expand_search(json_t *root, sweep_spec *s, int multiple, cds_err *err)
{
    search_plan sp = {0};
    int rc = parse_search_obj(root, s, &sp, err);
    if (rc == 0)
        rc = parse_search_train(root, &sp, err);
    if (rc == 0)
        rc = parse_search_models(root, s, &sp, err);
    if (rc == 0)
        rc = count_search_models(s, &sp, err);
    if (rc == 0) {
        s->specs = calloc((size_t)s->n_models, sizeof *s->specs);
        s->summaries = calloc((size_t)s->n_models, sizeof *s->summaries);
        s->points = calloc((size_t)s->n_models, sizeof *s->points);
        if (!s->specs || !s->summaries || !s->points)
            rc = cds_err_nomem(err, "out of memory for %d models", s->n_models);
    }
    for (int id = 0; rc == 0 && id < s->n_models; id++) {
        double v[SEARCH_MAX_DIMS];
        const json_t *model = trial_point(s, &sp, id, v);
        char where[PATH_MAX_LEN];
        snprintf(where, sizeof where, "$.search.space (trial %d)", id);
        rc = emit_trial(s, &sp, id, model, v, multiple, where, err);
    }
    if (rc == 0 && strcmp(s->search, "tpe") == 0)
        rc = check_corners(s, &sp, multiple, err);
    /* The stored spec says which seed drew the trials (a TPE worker reads it). */
    if (rc == 0 && strcmp(s->search, "grid") != 0 && !json_object_get(sp.obj, "seed"))
        json_object_set_new((json_t *)sp.obj, "seed", json_integer((json_int_t)s->search_seed));
    search_space_free(sp.space);
    return rc;
}


/* ---- early stopping (docs/search.md) ------------------------------------- */

static const char *const es_metrics[] = {"valid_top1", "valid_top5", "valid_loss", "train_top1", "train_loss", NULL};

/* A whole number field of $.early_stop in [lo, hi], def when absent. */
static int es_whole(const json_t *o, const char *field, long long lo, long long hi, long long def, long long *out,
                    cds_err *err)
{
    char path[PATH_MAX_LEN];
    snprintf(path, sizeof path, "$.early_stop.%s", field);
    const json_t *v = json_object_get(o, field);
    *out = def;
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return spec_err(err, path, "must be a whole number from %lld to %lld", lo, hi);
    *out = json_integer_value(v);
    return 0;
}

/* The number of brackets Hyperband has: s_max + 1, where grace·eta^s_max is
 * the last rung below max. */
static long long es_most_brackets(long long grace, long long eta, long long max)
{
    long long n = 0;
    for (long long m = grace; m < max; m *= eta)
        n++;
    return n;
}

static int parse_early_stop(const json_t *root, sweep_spec *s, cds_err *err)
{
    static const char *const known[] = {"kind", "metric", "mode", "grace", "eta", "max_epochs", "brackets", NULL};
    const json_t *o = json_object_get(root, "early_stop");
    if (!o)
        return 0;
    if (!json_is_object(o))
        return spec_err(err, "$.early_stop", "must be an object like {\"kind\": \"asha\", \"metric\": \"valid_top1\", "
                        "\"grace\": 1, \"eta\": 4}");
    if (check_fields(o, "$.early_stop", known, "", err) != 0)
        return -1;
    const char *kind = json_string_value(json_object_get(o, "kind"));
    if (!kind || (strcmp(kind, "asha") != 0 && strcmp(kind, "hyperband") != 0))
        return spec_err(err, "$.early_stop.kind", "must be \"asha\" or \"hyperband\" (ASHA's brackets)");
    const json_t *mj = json_object_get(o, "metric");
    const char *metric = mj ? json_string_value(mj) : "valid_top1";
    size_t k = 0;
    while (metric && es_metrics[k] && strcmp(es_metrics[k], metric) != 0)
        k++;
    if (!metric || !es_metrics[k])
        return spec_err(err, "$.early_stop.metric", "must be one of valid_top1, valid_top5, valid_loss, train_top1, "
                        "train_loss");
    const json_t *modej = json_object_get(o, "mode");
    const char *mode = modej ? json_string_value(modej) : strstr(metric, "loss") ? "min" : "max";
    if (!mode || (strcmp(mode, "min") != 0 && strcmp(mode, "max") != 0))
        return spec_err(err, "$.early_stop.mode", "must be \"max\" (higher is better) or \"min\"");
    long long grace, eta, max, brackets;
    if (es_whole(o, "grace", 1, SWEEP_MAX_EPOCHS, 1, &grace, err) != 0 ||
        es_whole(o, "eta", 2, 1000, 4, &eta, err) != 0 ||
        es_whole(o, "max_epochs", 1, SWEEP_MAX_EPOCHS, s->epochs, &max, err) != 0)
        return -1;
    if (max > s->epochs)
        return spec_err(err, "$.early_stop.max_epochs", "is %lld, more than the sweep's %d epochs: give at most %d",
                        max, s->epochs, s->epochs);
    if (grace >= max)
        return spec_err(err, "$.early_stop.grace", "is %lld, not below max_epochs %lld: no model would ever meet a "
                        "rung (lower grace, or raise the epochs)", grace, max);
    long long most = es_most_brackets(grace, eta, max);
    if (es_whole(o, "brackets", 1, most, strcmp(kind, "hyperband") == 0 ? most : 1, &brackets, err) != 0)
        return -1;
    snprintf(s->early_stop, sizeof s->early_stop, "%s %s %lld %lld %lld %lld", metric, mode, grace, eta, max,
             brackets);
    return 0;
}

/* ---- warm start --------------------------------------------------------- */

/* $.init, "SWEEP/MODEL" or "SWEEP/MODEL@EPOCH": checked, kept, and with the
 * checkpoint path the queue resolved it to (o->init_ckpt), written into the
 * base train as its "init", where every model's train takes it from. */
static int parse_init(json_t *root, sweep_spec *s, const sweep_spec_opts *o, cds_err *err)
{
    const json_t *v = json_object_get(root, "init");
    json_t *train = json_object_get(root, "train");
    if (train && json_object_get(train, "init"))
        return spec_err(err, "$.train.init", "a sweep starts warm from $.init: \"SWEEP/MODEL\" or "
                        "\"SWEEP/MODEL@EPOCH\" (docs/search.md)");
    if (!v)
        return 0;
    const char *text = json_string_value(v);
    char sweep[32] = "", tail[8] = "";
    int model = -1, epoch = 0, used = 0;
    int got = text ? sscanf(text, "%31[A-Za-z0-9_-]/%d%n", sweep, &model, &used) : 0;
    if (got == 2 && text[used] == '@' && (sscanf(text + used, "@%d%7s", &epoch, tail) != 1 || epoch < 1))
        got = 0;
    if (got != 2 || model < 0 || (text[used] != '\0' && text[used] != '@') || strlen(text) >= sizeof s->init)
        return spec_err(err, "$.init", "must be \"SWEEP/MODEL\" (that model's latest checkpoint) or "
                        "\"SWEEP/MODEL@EPOCH\" (its latest or best epoch), e.g. \"s3/7@4\"");
    snprintf(s->init, sizeof s->init, "%s", text);
    snprintf(s->init_sweep, sizeof s->init_sweep, "%s", sweep);
    s->init_model = model;
    s->init_epoch = epoch;
    if (!o->init_ckpt)
        return 0;
    if (!train) {
        json_object_set_new(root, "train", json_object());
        train = json_object_get(root, "train");
    }
    return json_object_set_new(train, "init", json_string(o->init_ckpt)) == 0 ? 0 : cds_err_nomem(err, "out of memory");
}

/* ---- the whole spec ------------------------------------------------------ */

static int parse_top(const json_t *root, sweep_spec *s, cds_err *err)
{
    if (!json_is_object(root))
        return spec_err(err, "$", "must be a JSON object {\"mode\", \"dataset\", \"epochs\", \"models\", ...} "
                        "(see docs/sweeps.md)");
    if (check_fields(root, "$", top_fields, "", err) != 0 || parse_mode(root, s, err) != 0 ||
        parse_dataset(root, s, err) != 0)
        return -1;
    long long epochs, seed, attempts;
    if (parse_whole(root, "epochs", 1, SWEEP_MAX_EPOCHS, -1, &epochs, err) != 0 ||
        parse_whole(root, "seed", 0, 9007199254740992LL, 1, &seed, err) != 0 ||
        parse_whole(root, "max_attempts", 1, 1000, 0, &attempts, err) != 0)
        return -1;
    s->epochs = (int)epochs;
    s->max_attempts = (int)attempts;
    s->seed = (uint64_t)seed;
    return 0;
}

/* models × grid points, refused past SWEEP_MAX_MODELS before anything is
 * built (each factor is at least 1, so the running product only grows). */
static int count_models(const grid *g, size_t n_models, size_t *n_points, cds_err *err)
{
    size_t total = n_models, points = 1;
    char factors[160];
    int o = snprintf(factors, sizeof factors, "%zu model%s", n_models, n_models == 1 ? "" : "s");
    for (int a = 0; a < N_AXES; a++) {
        points *= g->size[a];
        total *= g->size[a];
        if (g->axis[a] && o < (int)sizeof factors)
            o += snprintf(factors + o, sizeof factors - (size_t)o, " x %zu %s", g->size[a], axis_names[a]);
        if (total > SWEEP_MAX_MODELS)
            return spec_err(err, "$.grid", "%s%s gives over %d models: split it into several sweeps", factors,
                            a < N_AXES - 1 ? " x ..." : "", SWEEP_MAX_MODELS);
    }
    *n_points = points;
    return 0;
}

static int check_grid_values(const grid *g, cds_err *err)
{
    for (int a = 0; a < N_AXES; a++)
        if (g->axis[a] && check_axis_values((enum axis)a, g->axis[a], err) != 0)
            return -1;
    return 0;
}

/* The canonical whole spec: keys sorted, the seed explicit. */
static int canonical_spec(json_t *root, sweep_spec *s, cds_err *err)
{
    if (!json_object_get(root, "seed"))
        json_object_set_new(root, "seed", json_integer((json_int_t)s->seed));
    s->json = json_dumps(root, DUMP_FLAGS);
    return s->json ? 0 : cds_err_nomem(err, "out of memory");
}

sweep_spec *sweep_spec_parse(const char *json, cds_err *err)
{
    return sweep_spec_parse_for(json, 1, err);
}

sweep_spec *sweep_spec_parse_for(const char *json, int batch_multiple, cds_err *err)
{
    sweep_spec_opts o = {.batch_multiple = batch_multiple};
    return sweep_spec_parse_with(json, &o, err);
}

sweep_spec *sweep_spec_parse_with(const char *json, const sweep_spec_opts *o, cds_err *err)
{
    int batch_multiple = o->batch_multiple > 0 ? o->batch_multiple : 1;
    json_error_t je;
    json_t *root = json_loads(json ? json : "", JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return spec_err(err, "$", "not valid JSON: %s at line %d column %d (a sweep spec is one JSON object, "
                        "each key once: see docs/sweeps.md, or copy jobs/sweep-quickstart.json)", je.text, je.line,
                        je.column), NULL;
    sweep_spec *s = calloc(1, sizeof *s);
    grid g = {0};
    const json_t *models = NULL;
    size_t n_points = 0;
    int rc = s ? 0 : cds_err_nomem(err, "out of memory");
    if (rc == 0)
        rc = parse_top(root, s, err);
    if (rc == 0)
        rc = parse_early_stop(root, s, err);
    if (rc == 0)
        rc = parse_hybrid(root, s, err);
    if (rc == 0)
        rc = parse_init(root, s, o, err);
    if (rc == 0 && json_object_get(root, "search")) {
        rc = expand_search(root, s, batch_multiple, err);
        goto done;
    }
    if (rc == 0)
        rc = parse_grid_shape(root, &g, err);
    if (rc == 0)
        rc = parse_base_train(root, &g, err);
    if (rc == 0)
        rc = parse_models_shape(root, &models, err);
    if (rc == 0)
        rc = count_models(&g, json_array_size(models), &n_points, err);
    if (rc == 0)
        rc = check_grid_values(&g, err);
    if (rc == 0)
        rc = check_required_axes(&g, err);
    if (rc == 0) {
        s->n_models = (int)(json_array_size(models) * n_points);
        rc = expand(s, &g, models, n_points, err);
    }
done:
    if (rc == 0)
        rc = canonical_spec(root, s, err);
    json_decref(root);
    if (rc != 0) {
        sweep_spec_free(s);
        return NULL;
    }
    return s;
}

void sweep_spec_free(sweep_spec *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n_models; i++) {
        free(s->specs ? s->specs[i] : NULL);
        free(s->summaries ? s->summaries[i] : NULL);
        free(s->points ? s->points[i] : NULL);
    }
    free(s->points);
    free(s->specs);
    free(s->summaries);
    free(s->dataset);
    free(s->json);
    free(s);
}

/* ---- accessors ----------------------------------------------------------- */

const char *sweep_spec_mode(const sweep_spec *s)
{
    return s->mode;
}

const char *sweep_spec_dataset(const sweep_spec *s) { return s->dataset; }
int sweep_spec_epochs(const sweep_spec *s) { return s->epochs; }
uint64_t sweep_spec_seed(const sweep_spec *s) { return s->seed; }
int sweep_spec_model_count(const sweep_spec *s) { return s->n_models; }
const char *const *sweep_spec_model_specs(const sweep_spec *s) { return (const char *const *)s->specs; }
const char *sweep_spec_json(const sweep_spec *s) { return s->json; }

const char *sweep_spec_model(const sweep_spec *s, int i)
{
    return i >= 0 && i < s->n_models ? s->specs[i] : NULL;
}

const char *sweep_spec_summary(const sweep_spec *s, int i)
{
    return i >= 0 && i < s->n_models ? s->summaries[i] : NULL;
}

int sweep_spec_max_attempts(const sweep_spec *s) { return s->max_attempts; }
const char *sweep_spec_search(const sweep_spec *s) { return s->search; }
int sweep_spec_trials(const sweep_spec *s) { return s->trials; }
uint64_t sweep_spec_search_seed(const sweep_spec *s) { return s->search_seed; }
const char *sweep_spec_early_stop(const sweep_spec *s) { return s->early_stop[0] ? s->early_stop : NULL; }
int sweep_spec_hybrid(const sweep_spec *s) { return s->hybrid; }
const char *const *sweep_spec_points(const sweep_spec *s) { return (const char *const *)s->points; }

const char *sweep_spec_init(const sweep_spec *s, char sweep_out[32], int *model, int *epoch)
{
    if (!s->init[0])
        return NULL;
    snprintf(sweep_out, 32, "%s", s->init_sweep);
    *model = s->init_model;
    *epoch = s->init_epoch;
    return s->init;
}
