/* jobctl_enqueue_sweep: `jobctl enqueue sweep --spec FILE.json`, and the
 * sweep ids that replay shares with it.
 *
 * A sweep is expanded here (sweep_spec.h), pinned to its dataset's version
 * and shard count read from the dataset record (etl_dataset_record.h, its
 * one owner), and created in Redis in one call (queue_sweep_create); workers
 * take its models from there.  Sweep ids are checked and drawn by queue
 * (queue_sweep_id_check, queue_sweep_new_id).  A --unique sweep whose key a
 * live sweep holds prints that sweep's id and exits 0, for cron. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jobctl.h"
#include "jobctl_sweep.h"
#include "cds_layout.h"
#include "cds_util.h"
#include "ddp_comm.h"
#include "etl_dataset_record.h"
#include "nn_model.h"
#include "queue_mop.h"
#include "sweep_spec.h"

/* ---- enqueue sweep ------------------------------------------------------- */

#define SWEEP_SUMMARY_LINES 64 /* model lines printed on stderr; the rest are counted */

/* What a sweep pins of its dataset record. */
typedef struct pinned_dataset {
    char version[QUEUE_MOP_VERSION_MAX]; /* "" while the dataset is loading: the workers wait for ready */
    int shards;       /* K: the train split's shards */
    int loading;
} pinned_dataset;

/* Options of enqueue that make no sense for a sweep (it is not a queue job). */
static int refuse_job_options(const jobctl *j, const enqueue_args *a)
{
    static const int allowed[] = {E_SPEC,       E_ID,           E_UNIQUE,     E_MAX_ATTEMPTS,
                                  E_MAX_STALLS, E_BACKOFF_BASE, E_BACKOFF_CAP};
    return jobctl_refuse_options(j, a, "sweep", allowed, sizeof allowed / sizeof allowed[0], "a sweep is not a queue job");
}

int jobctl_check_sweep_id(const jobctl *j, const char *id)
{
    cds_err err;
    if (queue_sweep_id_check(id, &err) == 0)
        return 0;
    return jobctl_fail(j, EXIT_USAGE, "%s (or leave out --id)", err.msg);
}

/* Pins the version and shard count of dataset name from its record;
 * refuses a dataset that is unknown or failed (exit 1). */
static int pin_dataset(const jobctl *j, queue_conn *q, const char *name, pinned_dataset *d)
{
    cds_err err;
    etl_dataset_record r;
    int qrc = etl_dataset_record_read(q, name, &r, &err);
    if (qrc == QUEUE_NOT_FOUND)
        return jobctl_fail(j, EXIT_REFUSED, "no dataset %s under prefix %s (load it first: jobctl enqueue etl --spec "
                                            "FILE.json with \"dataset\": \"%s\")", name, queue_prefix(q), name);
    if (qrc != 0)
        return jobctl_op_failed(j, q, qrc, &err);
    memset(d, 0, sizeof *d);
    d->shards = r.train_shards;
    d->loading = r.state == ETL_DATASET_LOADING;
    int rc = 0;
    if (r.state == ETL_DATASET_FAILED)
        rc = jobctl_fail(j, EXIT_REFUSED, "dataset %s failed to load: %s (fix the cause and run jobctl enqueue etl "
                                          "again)", name, r.error[0] ? r.error : "no reason recorded");
    else if (!d->loading && (r.state != ETL_DATASET_READY || !r.version[0] || strlen(r.version) >= sizeof d->version))
        rc = jobctl_fail(j, EXIT_REFUSED, "dataset %s is in state '%.20s' with version '%.16s': a sweep needs it "
                                          "ready or loading (see redis-cli HGETALL %sdataset:%s)", name, r.state_text,
                         r.version, queue_prefix(q), name);
    else if (d->shards == 0)
        rc = jobctl_fail(j, EXIT_REFUSED, "dataset %s has no train shard count in its record (reload it with jobctl "
                                          "enqueue etl)", name);
    else if (!d->loading)
        snprintf(d->version, sizeof d->version, "%s", r.version);
    etl_dataset_record_free(&r);
    return rc;
}

/* The next free s<N> (queue_sweep_new_id). */
int jobctl_new_sweep_id(const jobctl *j, queue_conn *q, char id[QUEUE_SWEEP_ID_MAX])
{
    cds_err err;
    int qrc = queue_sweep_new_id(q, id, &err);
    if (qrc == QUEUE_MOP_NO_ID)
        return jobctl_fail(j, EXIT_REFUSED, "%s (--id ID)", err.msg);
    if (qrc != 0)
        return jobctl_op_failed(j, q, qrc, &err);
    return 0;
}

static void print_sweep(const jobctl *j, const sweep_spec *s, const char *id, const pinned_dataset *d)
{
    int m = sweep_spec_model_count(s);
    if (j->json) {
        json_t *o = json_pack("{s:s, s:i, s:i, s:i, s:s, s:s}", "id", id, "models", m, "shards", d->shards,
                              "epochs", sweep_spec_epochs(s), "dataset", sweep_spec_dataset(s), "dataset_version",
                              d->version);
        jobctl_print_json(o);
        json_decref(o);
        return;
    }
    printf("%s\n", id);
    fflush(stdout);
    fprintf(stderr, "jobctl: sweep %s: %d models x %d shards x %d epochs on dataset %s %s%.16s%s\n", id, m,
            d->shards, sweep_spec_epochs(s), sweep_spec_dataset(s), d->loading ? "(loading: workers wait until it "
            "is ready)" : "version ", d->version, d->loading ? "" : "...");
    for (int i = 0; i < m && i < SWEEP_SUMMARY_LINES; i++)
        fprintf(stderr, "  %s\n", sweep_spec_summary(s, i));
    if (m > SWEEP_SUMMARY_LINES)
        fprintf(stderr, "  ... and %d more (redis-cli HGET %ssweep:{%s}:models <m>.spec)\n", m - SWEEP_SUMMARY_LINES,
                j->prefix ? j->prefix : QUEUE_DEFAULT_PREFIX, id);
}

/* A DDP or MA sweep trains each model over a gang of K ranks, one per
 * shard, at once (docs/ddp.md); refused here, before anything is created:
 * a DDP model whose batch K ranks cannot split (each takes batch/K rows a
 * step), a model bigger than a gang shares (DDP_MAX_MODEL_BYTES), and a
 * dataset some of whose shards no worker serves while others are served
 * (with no worker seen at all, the workers may simply come later). */
static int check_gang(const jobctl *j, queue_conn *q, const sweep_spec *s, int K)
{
    const char *mode = sweep_spec_mode(s);
    if (strcmp(mode, "mop") == 0)
        return 0;
    for (int i = 0; i < sweep_spec_model_count(s); i++) {
        json_t *o = json_loads(sweep_spec_model(s, i), 0, NULL);
        json_int_t batch = json_integer_value(json_object_get(json_object_get(o, "train"), "batch"));
        char *model = json_dumps(json_object_get(o, "model"), JSON_COMPACT);
        json_decref(o);
        size_t nparams = 0;
        cds_err err;
        int valid = model && nn_model_validate(model, &nparams, &err) == 0;
        free(model);
        if (!valid)
            return jobctl_fail(j, EXIT_USAGE, "sweep spec $.models: model %d: %s", i, valid ? "" : err.msg);
        if (strcmp(mode, "ddp") == 0 && batch % K != 0)
            return jobctl_fail(j, EXIT_USAGE, "sweep spec $.grid.batch: model %d has batch %lld, which the %d ranks of "
                               "a DDP gang (one per shard of the dataset) cannot split: use batches that are multiples "
                               "of %d, or mode \"ma\" or \"mop\"", i, (long long)batch, K, K);
        if (nparams * sizeof(float) > DDP_MAX_MODEL_BYTES)
            return jobctl_fail(j, EXIT_USAGE, "sweep spec $.models: model %d has %zu parameters (%.1f GiB), more than a "
                               "%s gang shares (%zu GiB): make it smaller, or use mode \"mop\"", i, nparams,
                               (double)nparams * 4.0 / (1 << 30), mode, DDP_MAX_MODEL_BYTES >> 30);
    }
    int live[1024], n = 0;
    cds_err err;
    if (queue_mop_live_shards(q, 60000, live, 1024, &n, &err) != 0)
        return jobctl_op_failed(j, q, -1, &err);
    if (n == 0)
        return 0;
    for (int k = 0; k < K; k++) {
        int served = 0;
        for (int i = 0; i < n; i++)
            served |= live[i] == k;
        if (!served)
            return jobctl_fail(j, EXIT_REFUSED, "a %s gang needs a worker on each of the dataset's %d shards at once, "
                               "and no worker serves shard %d now (%d shards are served): start cds-worker --shard %d "
                               "--data-root DIR, then enqueue again", mode, K, k, n, k);
    }
    return 0;
}

/* `jobctl enqueue sweep --spec FILE.json [--id ID]`: expands the sweep
 * here, pins the dataset's version and shard count from its record, and
 * creates the sweep's state in Redis (queue_sweep_create); workers take
 * its models from there. */
int jobctl_enqueue_sweep(jobctl *j, const enqueue_args *a)
{
    if (refuse_job_options(j, a) != 0 || (a->sweep_id && jobctl_check_sweep_id(j, a->sweep_id) != 0))
        return EXIT_USAGE;
    if (!a->spec_file && !a->payload_arg)
        return jobctl_usage(j, "enqueue sweep needs the sweep spec: give --spec FILE.json (docs/sweeps.md)");
    cds_err err;
    sweep_spec *s = sweep_spec_parse(a->spec.payload, &err);
    if (!s)
        return jobctl_fail(j, EXIT_USAGE, "%s: %s", a->spec_file ? a->spec_file : "--payload", err.msg);
    queue_conn *q = NULL;
    pinned_dataset d;
    char id[QUEUE_SWEEP_ID_MAX] = "";
    int rc = jobctl_open_queue(j, &q);
    if (rc == 0)
        rc = pin_dataset(j, q, sweep_spec_dataset(s), &d);
    /* What only the queue knows: a DDP or MA sweep's W = K ranks split each
     * batch (its sampled batches are drawn again, rounded to multiples of
     * K); a warm start's checkpoint. */
    char init_sweep[32], init_path[1024] = "";
    int init_m = 0, init_e = 0;
    int multiple = strcmp(sweep_spec_mode(s), "mop") != 0 &&
                           (strcmp(sweep_spec_search(s), "random") == 0 || strcmp(sweep_spec_search(s), "tpe") == 0)
                       ? d.shards
                       : 1;
    if (rc == 0 && sweep_spec_init(s, init_sweep, &init_m, &init_e))
        rc = jobctl_model_ckpt(j, q, init_sweep, init_m, init_e, "sweep spec $.init", init_path, sizeof init_path);
    if (rc == 0 && (multiple > 1 || init_path[0])) {
        sweep_spec_opts o = {.batch_multiple = multiple, .init_ckpt = init_path[0] ? init_path : NULL};
        sweep_spec *k = sweep_spec_parse_with(a->spec.payload, &o, &err);
        if (!k)
            rc = jobctl_fail(j, EXIT_USAGE, "%s: %s", a->spec_file ? a->spec_file : "--payload", err.msg);
        else
            sweep_spec_free(s), s = k;
    }
    if (rc == 0)
        rc = check_gang(j, q, s, d.shards);
    if (rc == 0 && a->sweep_id)
        snprintf(id, sizeof id, "%s", a->sweep_id);
    else if (rc == 0)
        rc = jobctl_new_sweep_id(j, q, id);
    if (rc == 0) {
        /* An option overrides the spec's max_attempts; the spec, the default. */
        int attempts = jobctl_enqueue_seen(a, E_MAX_ATTEMPTS) ? a->spec.max_attempts
                                                                        : sweep_spec_max_attempts(s);
        queue_sweep_def def = {
            .id = id, .dataset = sweep_spec_dataset(s), .dataset_version = d.version, .shards = d.shards,
            .epochs = sweep_spec_epochs(s), .models = sweep_spec_model_count(s),
            .model_specs = sweep_spec_model_specs(s), .spec_json = sweep_spec_json(s),
            .max_attempts = attempts,
            .max_stalls = jobctl_enqueue_seen(a, E_MAX_STALLS) ? a->spec.max_stalls : 0,
            .backoff_base_ms = jobctl_enqueue_seen(a, E_BACKOFF_BASE) ? a->spec.backoff_base_ms : 0,
            .backoff_cap_ms = jobctl_enqueue_seen(a, E_BACKOFF_CAP) ? a->spec.backoff_cap_ms : 0,
            .unique = a->spec.unique, .mode = sweep_spec_mode(s), .early_stop = sweep_spec_early_stop(s),
            .search = sweep_spec_search(s)[0] ? sweep_spec_search(s) : NULL, .trials = sweep_spec_trials(s),
            .points = sweep_spec_points(s), .hybrid = sweep_spec_hybrid(s)};
        char live[QUEUE_SWEEP_ID_MAX];
        int crc = queue_sweep_create(q, &def, live, &err);
        if (crc == QUEUE_MOP_DUPLICATE) {
            /* A cron line runs again while its sweep is live: not an error. */
            if (j->json) {
                json_t *o = json_pack("{s:s, s:b, s:s}", "id", live, "duplicate", 1, "unique", def.unique);
                jobctl_print_json(o);
                json_decref(o);
            } else {
                printf("%s\n", live);
                fprintf(stderr, "jobctl: sweep %s holds unique key '%s' and is not finished: nothing enqueued\n",
                        live, def.unique);
            }
        } else if (crc != 0) {
            rc = jobctl_op_failed(j, q, -1, &err);
        } else {
            print_sweep(j, s, id, &d);
        }
    }
    queue_close(q);
    sweep_spec_free(s);
    return rc;
}
