/* worker_mop_search: proposing the trials of TPE searches (DESIGN.md §9,
 * docs/search.md).  There is no central proposer: a worker with nothing to
 * train looks at each active sweep, and when a TPE sweep owes a trial (one
 * per finished model, up to its budget: queue_mop_trials_owed) it makes
 * trial t = the model count from the sweep's stored spec (its space, seed,
 * base model and train) and the finished trials' points and scores, and
 * adds it (queue_mop_add_trial, which adds t once, whoever proposes it).
 *
 * A trial's score is its last evaluated metric: the early-stopping metric
 * when the sweep has one (valid_top1 otherwise) at the last epoch it
 * trained (a done model's last epoch; a stopped model's rung), negated
 * when larger is better, since TPE minimises.  A finished model whose last
 * epoch is not evaluated yet is not in the history: proposals use what is
 * known.  The proposal is a pure function of that history, the search seed
 * and t (search_tpe.h), so a proposal lost with its worker is made again
 * by the next, from the history then.  A proposal training would refuse
 * (which the checks at enqueue make rare) is added as a failed model with
 * the reason, so the budget is still spent and the sweep ends. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "nn_model.h"
#include "nn_optim.h"
#include "search_tpe.h"
#include "worker_mop_int.h"

#define DUMP_FLAGS (JSON_SORT_KEYS | JSON_COMPACT | JSON_REAL_PRECISION(17))

/* What a proposal is made from. */
typedef struct tpe_sweep {
    json_t *spec;             /* the stored sweep spec */
    search_space *space;
    uint64_t seed, model_seed;
    const json_t *base_model, *base_train;
    int multiple;             /* batches rounded to multiples of it (a DDP or MA sweep's K) */
    char metric[32];
    int maximize;
    double *points, *losses;  /* the history */
    size_t n;
} tpe_sweep;

static void tpe_sweep_free(tpe_sweep *t)
{
    search_space_free(t->space);
    json_decref(t->spec);
    free(t->points);
    free(t->losses);
}

static const char *str_field(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* The sweep hash's spec, search and early stopping. */
static int read_setup(const json_t *sw, tpe_sweep *t, cds_err *err)
{
    json_error_t je;
    t->spec = json_loads(str_field(sw, "spec") ?: "", 0, &je);
    const json_t *search = json_object_get(t->spec, "search");
    if (!search)
        return cds_errf(err, "its stored spec has no search");
    if (!(t->space = search_space_parse(json_object_get(search, "space"), "sweep spec $.search.space", err)))
        return -1;
    t->seed = (uint64_t)json_integer_value(json_object_get(search, "seed"));
    t->model_seed = (uint64_t)json_integer_value(json_object_get(t->spec, "seed"));
    t->base_model = json_array_get(json_object_get(t->spec, "models"), 0);
    t->base_train = json_object_get(t->spec, "train");
    const char *mode = str_field(sw, "mode");
    t->multiple = mode && strcmp(mode, "mop") != 0 ? atoi(str_field(sw, "shards") ?: "1") : 1;
    char metric[32] = "valid_top1", dir[8] = "max";
    const char *es = str_field(sw, "es");
    if (es && *es && sscanf(es, "%31s %7s", metric, dir) != 2)
        return cds_errf(err, "its early stopping '%s' does not parse", es);
    snprintf(t->metric, sizeof t->metric, "%s", metric);
    t->maximize = strcmp(dir, "max") == 0;
    return 0;
}

/* Model m's point, if it has one of the space's size. */
static int read_point(const json_t *models, int m, const search_space *s, double *v)
{
    char key[32];
    snprintf(key, sizeof key, "%d.point", m);
    return search_space_point_parse(s, str_field(models, key), v) == 0;
}

/* Model m's score, if it finished and its last epoch was evaluated. */
static int read_score(const json_t *models, const json_t *results, int m, const tpe_sweep *t, double *loss)
{
    int last = worker_mop_last_epoch(models, m);
    if (last == 0)
        return 0;
    char key[32];
    snprintf(key, sizeof key, "%d.%d", m, last);
    json_t *r = json_loads(str_field(results, key) ?: "", 0, NULL);
    const json_t *v = json_object_get(r, t->metric);
    int good = json_is_number(v);
    if (good)
        *loss = t->maximize ? -json_number_value(v) : json_number_value(v);
    json_decref(r);
    return good;
}

static int read_history(const json_t *models, const json_t *results, int M, tpe_sweep *t, cds_err *err)
{
    size_t dims = search_space_dims(t->space);
    t->points = malloc((size_t)(M > 0 ? M : 1) * dims * sizeof *t->points);
    t->losses = malloc((size_t)(M > 0 ? M : 1) * sizeof *t->losses);
    if (!t->points || !t->losses)
        return cds_err_nomem(err, "out of memory for the history of %d trials", M);
    for (int m = 0; m < M; m++)
        if (read_point(models, m, t->space, t->points + t->n * dims) &&
            read_score(models, results, m, t, &t->losses[t->n]))
            t->n++;
    return 0;
}

/* The proposal as a model spec (canonical JSON, with the sweep's seed and
 * the train's defaults written out), or NULL with why training would
 * refuse it (or memory ran out) in err. */
static char *render_trial(const tpe_sweep *t, const double *v, cds_err *err)
{
    json_t *spec = search_space_render(t->space, v, t->base_model, t->base_train, t->multiple, err);
    if (!spec)
        return NULL;
    json_t *train = json_object_get(spec, "train");
    json_object_set_new(train, "seed", json_integer((json_int_t)t->model_seed));
    char *text = json_dumps(train, DUMP_FLAGS), *out = NULL;
    nn_train_cfg c;
    if (text && nn_train_cfg_parse(text, &c, err) == 0) {
        if (!json_object_get(train, "batch"))
            json_object_set_new(train, "batch", json_integer(c.batch));
        if (!json_object_get(train, "l2"))
            json_object_set_new(train, "l2", json_real(c.l2));
        nn_train_cfg_free(&c);
        const json_t *model = json_object_get(spec, "model");
        const char *arch = str_field(model, "arch");
        char *mt = json_dumps(model, DUMP_FLAGS);
        if (mt && ((arch && strcmp(arch, "diag.sleep") == 0) || nn_model_validate(mt, NULL, err) == 0))
            out = json_dumps(spec, DUMP_FLAGS);
        free(mt);
    }
    free(text);
    json_decref(spec);
    return out;
}

/* Proposes and adds trial `next` of the sweep: 1 when this worker added it. */
static int propose(worker *w, const char *sweep, int next, cds_err *err)
{
    json_t *sw = NULL, *models = NULL, *results = NULL;
    tpe_sweep t = {0};
    double v[SEARCH_MAX_DIMS];
    int rc = -1;
    if (WITH_RECONNECT(w, queue_sweep_get(w->q, sweep, &sw, err)) != 0 || read_setup(sw, &t, err) != 0 ||
        WITH_RECONNECT(w, queue_mop_models(w->q, sweep, &models, err)) < 0 ||
        WITH_RECONNECT(w, queue_mop_results(w->q, sweep, &results, err)) < 0 ||
        read_history(models, results, next, &t, err) != 0 ||
        search_tpe_propose(t.space, NULL, t.points, t.losses, t.n, t.seed, (uint64_t)next, v, err) != 0)
        goto out;
    cds_err why;
    char *spec = render_trial(&t, v, &why), *point = search_space_point_json(t.space, v);
    if (!point || (!spec && cds_err_is_nomem(&why))) {
        rc = cds_err_nomem(err, "out of memory proposing trial %d", next);
    } else {
        rc = WITH_RECONNECT(w, queue_mop_add_trial(w->q, sweep, next, spec ? spec : "{}", point,
                                                   spec ? NULL : why.msg, err));
        if (rc == 1)
            cds_logf(&w->log, spec ? CDS_LOG_INFO : CDS_LOG_WARN, "sweep %s: proposed trial %d by TPE from %zu "
                     "finished trials%s%s", sweep, next, t.n, spec ? "" : ", which training refuses: ",
                     spec ? "" : why.msg);
    }
    free(spec);
    free(point);
out:
    tpe_sweep_free(&t);
    json_decref(sw);
    json_decref(models);
    json_decref(results);
    return rc;
}

int worker_mop_propose_step(worker *w, char **ids, size_t n)
{
    cds_err err;
    for (size_t i = 0; i < n && atomic_load(&w->stop) == 0; i++) {
        int owed = 0, next = 0;
        if (WITH_RECONNECT(w, queue_mop_trials_owed(w->q, ids[i], &owed, &next, &err)) != 0 || owed <= 0)
            continue;
        int rc = propose(w, ids[i], next, &err);
        if (rc < 0)
            cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: proposing trial %d: %s", ids[i], next, err.msg);
        if (rc == 1)
            return 1;
    }
    return 0;
}
