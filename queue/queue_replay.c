/* queue_replay: a sweep that repeats a finished one visit for visit.
 *
 * A replay makes a new sweep with the same dataset version, shape, specs
 * and sweep spec as the original, and gives each model a plan: the shards
 * it visited, in the order it visited them, read from the original's
 * schedule (the committed visits in commit order).  A model's visits are
 * one at a time, so its entries in the commit order are its visit order;
 * mop_lease.lua then leases model m for shard k only when k is the next
 * shard of m's plan, so every model sees the same data in the same order
 * and its checkpoints come out bit for bit the same.
 * Only a sweep whose every model committed exactly its E·K visits can be
 * replayed: a model that is unfinished has no full order, and one retried
 * from an older checkpoint visited some shards twice.  Sweeps recorded with
 * epochs from 0 (format 1) are refused: their schedule means something
 * else.  A plan is E·K shard numbers of 4 digits (queue_sweep_def.plans).
 * A hybrid gang's epoch (entries "m e k v worker g<W>", one per shard)
 * becomes "h" and W in 3 digits in each of its K places, and the replay
 * has the hybrid on: prelude's hybrid_plan forms a gang of exactly W
 * ranks for that model at that epoch, and no other gang.
 * A DDP or MA sweep is replayed in its mode: its gangs read every shard at
 * once, so the plans (its ranks' shards) constrain nothing, and a gang's
 * epoch depends only on the checkpoint it starts from. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_mop.h"

/* A field of a JSON object of strings as an int (def when absent). */
static int int_field(const json_t *o, const char *key, int def)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v && *v ? atoi(v) : def;
}

static const char *model_field(const json_t *models, int m, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "%d.%s", m, name);
    return json_string_value(json_object_get(models, key));
}

/* The plans of a replay of sweep orig (M of them, each E*K entries) from
 * its schedule, into plans[m] (each of per bytes, zeroed). */
static int plans_from_schedule(const char *orig, char **lines, size_t n_lines, int M, int K, size_t per, char **plans,
                               int *hybrid, cds_err *err)
{
    for (size_t i = 0; i < n_lines; i++) {
        int m, e, k, W = 0;
        long long v;
        char who[128];
        int got = sscanf(lines[i], "%d %d %d %lld %127s g%d", &m, &e, &k, &v, who, &W);
        if (got < 3 || m < 0 || m >= M || k < 0 || k >= K || (got == 6 && (W < 2 || W > 999)))
            return cds_errf(err, "sweep %s: schedule entry %zu ('%s') does not fit the sweep", orig, i, lines[i]);
        size_t used = strlen(plans[m]);
        if (used + 4 >= per)
            return cds_errf(err, "sweep %s: model %d visited more than its %zu shards x epochs (it was retried from "
                                 "an older checkpoint): its visit order cannot be replayed", orig, m, (per - 1) / 4);
        if (got == 6) {
            snprintf(plans[m] + used, 5, "h%03d", W);
            *hybrid = 1;
        } else {
            snprintf(plans[m] + used, 5, "%04u", (unsigned)k % 10000u); /* 0 <= k < 4096: the scripts cap shards */
        }
    }
    return 0;
}

int queue_sweep_replay(queue_conn *q, const char *orig, const char *new_id, cds_err *err)
{
    if (queue_sweep_id_check(orig, err) != 0 || queue_sweep_id_check(new_id, err) != 0)
        return -1;
    json_t *sw = NULL, *models = NULL;
    char **lines = NULL, **plans = NULL;
    const char **specs = NULL;
    size_t n_lines = 0;
    int rc = queue_sweep_get(q, orig, &sw, err);
    if (rc != 0)
        return rc;
    int M = int_field(sw, "models", 0), E = int_field(sw, "epochs", 0), K = int_field(sw, "shards", 0);
    if (int_field(sw, "format", 1) < 2) {
        rc = cds_errf(err, "sweep %s was recorded by an older version that numbered epochs from 0: it cannot be "
                           "replayed (enqueue its spec again as a new sweep)", orig);
        goto out;
    }
    if (M < 1 || E < 1 || K < 1) {
        rc = cds_errf(err, "sweep %s has no models, epochs or shards in Redis: it cannot be replayed", orig);
        goto out;
    }
    if (queue_mop_models(q, orig, &models, err) != 0 || queue_mop_schedule(q, orig, &lines, &n_lines, err) != 0) {
        rc = -1;
        goto out;
    }
    size_t per = (size_t)E * K * 4 + 1;
    plans = calloc((size_t)M, sizeof *plans);
    specs = calloc((size_t)M, sizeof *specs);
    for (int m = 0; plans && m < M; m++)
        if (!(plans[m] = calloc(per, 1))) {
            rc = cds_err_nomem(err, "out of memory for the plans of a replay of sweep %s", orig);
            goto out;
        }
    if (!plans || !specs) {
        rc = cds_err_nomem(err, "out of memory for the plans of a replay of sweep %s", orig);
        goto out;
    }
    for (int m = 0; m < M; m++)
        if (!(specs[m] = model_field(models, m, "spec"))) {
            rc = cds_errf(err, "sweep %s: model %d has no spec in Redis", orig, m);
            goto out;
        }
    int hybrid = 0;
    if ((rc = plans_from_schedule(orig, lines, n_lines, M, K, per, plans, &hybrid, err)) != 0)
        goto out;
    for (int m = 0; m < M; m++)
        if (strlen(plans[m]) != per - 1) {
            rc = cds_errf(err, "sweep %s: model %d committed %zu of its %d visits (state %s): only a finished model "
                               "can be replayed", orig, m, strlen(plans[m]) / 4, E * K,
                          model_field(models, m, "state") ?: "?");
            goto out;
        }
    queue_sweep_def def = {.id = new_id, .dataset = json_string_value(json_object_get(sw, "dataset")),
                           .dataset_version = json_string_value(json_object_get(sw, "dataset_version")) ?: "",
                           .shards = K, .epochs = E, .models = M, .model_specs = specs,
                           .spec_json = json_string_value(json_object_get(sw, "spec")),
                           .plans = (const char *const *)plans, .replay_of = orig,
                           .mode = json_string_value(json_object_get(sw, "mode")),
                           .early_stop = json_string_value(json_object_get(sw, "es")), .hybrid = hybrid};
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
