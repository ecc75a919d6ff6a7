/* jobctl_enqueue_sweep: `jobctl enqueue sweep --spec FILE.json`, and the
 * sweep ids that replay shares with it.
 *
 * A sweep is expanded here (sweep_spec.h), pinned to its dataset's version
 * and shard count read from the dataset record, and created in Redis in one
 * call (queue_sweep_create); workers take its models from there.  Two pieces
 * stand alone on purpose, each in one small function, because the modules
 * that own the records will offer them: read_dataset_record (with
 * record_shards) reads the dataset record, which etl_queue.c writes, and
 * pin_dataset decides from what it read; next_sweep_seq runs the INCR of the sweep id
 * counter (queue.h has no counter call yet, so it uses queue_int.h).  A
 * --unique sweep whose key a live sweep holds prints that sweep's id and
 * exits 0, for cron. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobctl.h"
#include "cds_util.h"
#include "queue_int.h" /* qc_take: INCR of the sweep id counter (queue.h has no counter call) */
#include "queue_mop.h"
#include "sweep_spec.h"

/* ---- enqueue sweep ------------------------------------------------------- */

#define SWEEP_SUMMARY_LINES 64 /* model lines printed on stderr; the rest are counted */
#define SWEEP_ID_TRIES 100     /* counter values skipped when --id sweeps already took them */

/* What a sweep pins of its dataset record. */
typedef struct pinned_dataset {
    char version[72]; /* "" while the dataset is loading: the workers wait for ready */
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
    size_t n = strlen(id);
    if (n >= 1 && n < QUEUE_SWEEP_ID_MAX &&
        strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n)
        return 0;
    return jobctl_fail(j, EXIT_USAGE, "bad sweep id '%.40s': use 1 to %d letters, digits, '_' or '-' (or leave out --id)",
                id, QUEUE_SWEEP_ID_MAX - 1);
}

/* K from a dataset record: the train split's shard count once the dataset
 * is ready (its "splits"), else the shards per split its ETL spec asked for. */
static int record_shards(const json_t *rec)
{
    int64_t k = 0;
    json_t *splits = json_loads(json_string_value(json_object_get(rec, "splits")) ?: "", 0, NULL);
    json_t *train = json_object_get(json_object_get(splits, "train"), "shards");
    if (json_is_integer(train))
        k = json_integer_value(train);
    else if (cds_parse_i64(json_string_value(json_object_get(rec, "shards")) ?: "", 1, INT32_MAX, &k) != 0)
        k = 0;
    json_decref(splits);
    return k >= 1 && k <= INT32_MAX ? (int)k : 0;
}

/* What jobctl reads of a dataset record. */
typedef struct dataset_record {
    char state[16];   /* loading, ready, failed ("" if missing) */
    char version[72]; /* "" until ready; longer ones are cut and refused */
    char error[CDS_ERR_MAX]; /* why it failed */
    int shards;       /* record_shards; 0 if unknown */
    int version_fits; /* the version was not cut */
} dataset_record;

/* Reads <prefix>dataset:<name>, which etl_queue.c writes; the one place
 * jobctl parses that record (an etl/ API reading it will replace this).
 * Returns 0, QUEUE_NOT_FOUND, or another queue error (err set). */
static int read_dataset_record(queue_conn *q, const char *name, dataset_record *r, cds_err *err)
{
    char rec_name[200];
    snprintf(rec_name, sizeof rec_name, "dataset:%s", name);
    json_t *rec = NULL;
    int qrc = queue_record_get(q, rec_name, &rec, err);
    if (qrc != 0)
        return qrc;
    const char *version = json_string_value(json_object_get(rec, "version")) ?: "";
    memset(r, 0, sizeof *r);
    snprintf(r->state, sizeof r->state, "%s", json_string_value(json_object_get(rec, "state")) ?: "");
    snprintf(r->version, sizeof r->version, "%s", version);
    snprintf(r->error, sizeof r->error, "%s", json_string_value(json_object_get(rec, "error")) ?: "no reason recorded");
    r->version_fits = strlen(version) < sizeof r->version;
    r->shards = record_shards(rec);
    json_decref(rec);
    return 0;
}

/* Pins the version and shard count of dataset name; refuses a dataset that
 * is unknown or failed (exit 1). */
static int pin_dataset(const jobctl *j, queue_conn *q, const char *name, pinned_dataset *d)
{
    cds_err err;
    dataset_record r;
    int qrc = read_dataset_record(q, name, &r, &err);
    if (qrc == QUEUE_NOT_FOUND)
        return jobctl_fail(j, EXIT_REFUSED, "no dataset %s under prefix %s (load it first: jobctl enqueue etl --spec "
                                            "FILE.json with \"dataset\": \"%s\")", name, queue_prefix(q), name);
    if (qrc != 0)
        return jobctl_op_failed(j, q, qrc, &err);
    memset(d, 0, sizeof *d);
    d->shards = r.shards;
    d->loading = strcmp(r.state, "loading") == 0;
    if (strcmp(r.state, "failed") == 0)
        return jobctl_fail(j, EXIT_REFUSED, "dataset %s failed to load: %s (fix the cause and run jobctl enqueue etl "
                                            "again)", name, r.error);
    if (!d->loading && (strcmp(r.state, "ready") != 0 || !r.version[0] || !r.version_fits))
        return jobctl_fail(j, EXIT_REFUSED, "dataset %s is in state '%.20s' with version '%.16s': a sweep needs it "
                                            "ready or loading (see redis-cli HGETALL %sdataset:%s)", name, r.state,
                           r.version, queue_prefix(q), name);
    if (d->shards == 0)
        return jobctl_fail(j, EXIT_REFUSED, "dataset %s has no train shard count in its record (reload it with jobctl "
                                            "enqueue etl)", name);
    if (!d->loading)
        snprintf(d->version, sizeof d->version, "%s", r.version);
    return 0;
}

/* INCR <prefix>sweep:seq: the one raw Redis command of jobctl (queue.h has
 * no counter call yet; a queue API will replace this).  Returns 0 with *n,
 * or -1 (err set, or *n < 1 when the key holds no counter). */
static int next_sweep_seq(queue_conn *q, long long *n, cds_err *err)
{
    qargs cmd;
    qargs_init(&cmd);
    qargs_add(&cmd, "INCR");
    qargs_key(&cmd, q, "sweep:seq");
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    *n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return 0;
}

/* "s" + the next counter value, skipping values a --id sweep already took. */
int jobctl_new_sweep_id(const jobctl *j, queue_conn *q, char id[QUEUE_SWEEP_ID_MAX])
{
    cds_err err;
    for (int t = 0; t < SWEEP_ID_TRIES; t++) {
        long long n;
        if (next_sweep_seq(q, &n, &err) != 0)
            return jobctl_op_failed(j, q, -1, &err);
        if (n < 1)
            return jobctl_fail(j, EXIT_REFUSED, "%ssweep:seq does not hold a counter (delete it or give --id)",
                               queue_prefix(q));
        snprintf(id, QUEUE_SWEEP_ID_MAX, "s%lld", n);
        json_t *existing = NULL;
        int qrc = queue_sweep_get(q, id, &existing, &err);
        json_decref(existing);
        if (qrc == QUEUE_NOT_FOUND)
            return 0;
        if (qrc != 0)
            return jobctl_op_failed(j, q, qrc, &err);
    }
    return jobctl_fail(j, EXIT_REFUSED, "sweep ids s<N> up to %s are all taken (give --id)", id);
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
            .unique = a->spec.unique};
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
