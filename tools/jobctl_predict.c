/* jobctl enqueue predict: a table scored by a model of a sweep into a new
 * table (docs/predict.md; etl/etl_predict.h plans it, cds-workers run it).
 *
 * From here (the database and Redis must be reachable): the model is
 * resolved as jobctl export resolves it (SWEEP alone: the test scoring's
 * choice at its best epoch; --model M its latest checkpoint; M@EPOCH one
 * it keeps), its class count read from the checkpoint, the plan of the
 * dataset it trained on taken from the dataset's record, whose version must
 * be the one the sweep pinned (the casts, the Criteo edges and the class
 * names are that version's), and the prediction planned.  Then one
 * predict.part job per part and a predict.finish job after them; the
 * finishing job's id is printed (wait on it, or jobctl show it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etl_dataset_record.h"
#include "etl_predict.h"
#include "jobctl.h"
#include "jobctl_sweep.h"
#include "nn_ckpt.h"
#include "queue_mop.h"

const char jobctl_usage_enqueue_predict[] =
    "usage: jobctl enqueue predict --sweep SWEEP [--model M[@EPOCH]] --table T --out-table T2\n"
    "                              [--features COLS] [--id COL] [--where SQL] [--dsn DSN]\n"
    "                              [--type class|prob|topk] [--k K] [--parts N] [--replace]\n"
    "                              [--queue Q] [--priority N] [--max-attempts N]\n"
    "Scores table T with a model of a sweep and writes T2(id, class, prob[, probs | top_classes,\n"
    "top_probs]) (docs/predict.md).  Rows are cast as the model's dataset was unloaded (its types,\n"
    "its Criteo transform, its class names) and normalised as the model trained; predicting the\n"
    "rows of the test split gives the sweep's test top-1.  Prints the id of the job that makes T2.\n"
    "  --sweep SWEEP          the sweep; alone, the model its test scoring chose, at its best epoch\n"
    "  --model M[@EPOCH]      model M's latest checkpoint, or one it keeps (its latest or best epoch)\n"
    "  --table T              the rows to score (a table or a view; T or SCHEMA.T)\n"
    "  --out-table T2         the table to make (T2 or SCHEMA.T2); it appears whole, or not at all\n"
    "  --features COLS        T's columns in the dataset's order (default: the dataset's names)\n"
    "  --id COL               the column naming a row, copied into T2 (default: T's primary key)\n"
    "  --where SQL            only the rows this filter keeps (your own SQL)\n"
    "  --dsn DSN              where T lives (default: the dataset's database)\n"
    "  --type class|prob|topk the predicted class and its probability; with every class's\n"
    "                         probability (probs); with the K best (top_classes, top_probs)\n"
    "  --k K                  classes of --type topk (default 5, at most the model's classes)\n"
    "  --parts N              jobs that score T, 1 to 4096 (default: one per shard of the dataset;\n"
    "                         on Greenplum one per segment)\n"
    "  --replace              write over an existing T2\n"
    "  --max-attempts N       failed runs of a part before the prediction fails (default 3)\n";

enum {
    P_SWEEP = OPT_COMMAND, P_MODEL, P_TABLE, P_OUT, P_FEATURES, P_ID, P_WHERE, P_DSN, P_TYPE, P_K, P_PARTS, P_REPLACE,
    P_QUEUE, P_PRIORITY, P_MAX_ATTEMPTS
};

typedef struct predict_args {
    const char *sweep, *model, *table, *out, *features, *id, *where, *dsn, *type, *queue;
    int64_t k, parts, priority, max_attempts;
    int replace;
} predict_args;

static int parse(jobctl *j, int argc, char **argv, predict_args *a)
{
    static const struct option opts[] = {
        {"sweep", required_argument, 0, P_SWEEP},     {"model", required_argument, 0, P_MODEL},
        {"table", required_argument, 0, P_TABLE},     {"out-table", required_argument, 0, P_OUT},
        {"features", required_argument, 0, P_FEATURES}, {"id", required_argument, 0, P_ID},
        {"where", required_argument, 0, P_WHERE},     {"dsn", required_argument, 0, P_DSN},
        {"type", required_argument, 0, P_TYPE},       {"k", required_argument, 0, P_K},
        {"parts", required_argument, 0, P_PARTS},     {"replace", no_argument, 0, P_REPLACE},
        {"queue", required_argument, 0, P_QUEUE},     {"priority", required_argument, 0, P_PRIORITY},
        {"max-attempts", required_argument, 0, P_MAX_ATTEMPTS}, GLOBAL_OPTIONS};
    int c, rc = 0;
    a->k = -1;
    a->max_attempts = 3;
    while (rc == 0 && (c = jobctl_next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        switch (c) {
        case NEXT_HELP: return fputs(jobctl_usage_enqueue_predict, stdout), -1;
        case NEXT_BAD: return EXIT_USAGE;
        case P_SWEEP: a->sweep = optarg; break;
        case P_MODEL: a->model = optarg; break;
        case P_TABLE: a->table = optarg; break;
        case P_OUT: a->out = optarg; break;
        case P_FEATURES: a->features = optarg; break;
        case P_ID: a->id = optarg; break;
        case P_WHERE: a->where = optarg; break;
        case P_DSN: a->dsn = optarg; break;
        case P_TYPE: a->type = optarg; break;
        case P_K: rc = jobctl_parse_int(j, "--k", optarg, 1, 1000000, &a->k); break;
        case P_PARTS: rc = jobctl_parse_int(j, "--parts", optarg, 1, ETL_PREDICT_MAX_PARTS, &a->parts); break;
        case P_REPLACE: a->replace = 1; break;
        case P_QUEUE: rc = jobctl_check_queue_name(j, optarg); a->queue = optarg; break;
        case P_PRIORITY:
            rc = jobctl_parse_int(j, "--priority", optarg, -QUEUE_PRIORITY_MAX, QUEUE_PRIORITY_MAX, &a->priority);
            break;
        case P_MAX_ATTEMPTS: rc = jobctl_parse_int(j, "--max-attempts", optarg, 1, 1000, &a->max_attempts); break;
        default: return jobctl_usage(j, "unexpected option");
        }
    }
    if (rc != 0)
        return EXIT_USAGE;
    if (jobctl_want_args(j, argc, argv, 0, "") != 0)
        return EXIT_USAGE;
    if (!a->sweep)
        return jobctl_usage(j, "enqueue predict needs --sweep SWEEP (and --model M to pick another than its choice)");
    if (!a->table || !a->out)
        return jobctl_usage(j, a->table ? "enqueue predict needs --out-table T2, the table to make"
                                        : "enqueue predict needs --table T, the rows to score");
    const char *type = a->type ? a->type : "class";
    if (strcmp(type, "class") != 0 && strcmp(type, "prob") != 0 && strcmp(type, "topk") != 0)
        return jobctl_fail(j, EXIT_USAGE, "enqueue predict: --type %.40s: give class, prob or topk", type);
    if (a->k >= 0 && strcmp(type, "topk") != 0)
        return jobctl_usage(j, "--k goes with --type topk");
    return 0;
}

/* --sweep S [--model M[@EPOCH]] as jobctl export's SWEEP[/M[@EPOCH]]. */
static int resolve_model(const jobctl *j, queue_conn *q, const predict_args *a, int *m, int *epoch, char *path,
                         size_t n)
{
    char target[256];
    int k = snprintf(target, sizeof target, "%s%s%s", a->sweep, a->model ? "/" : "", a->model ? a->model : "");
    if (k < 0 || (size_t)k >= sizeof target)
        return jobctl_fail(j, EXIT_USAGE, "enqueue predict: --sweep %.40s --model %.40s: too long", a->sweep,
                           a->model ? a->model : "");
    return jobctl_resolve_model(j, q, "predict", target, path, n, m, epoch);
}

/* The model's class count, from its checkpoint's spec. */
static int model_classes(const jobctl *j, const char *path, int *classes)
{
    nn_ckpt ck;
    cds_err err;
    if (nn_ckpt_load(path, &ck, &err) != 0)
        return jobctl_fail(j, EXIT_REFUSED, "predict: %s", err.msg);
    json_t *spec = json_loads(ck.spec_json, 0, NULL);
    json_t *model = json_object_get(spec, "model");
    json_t *cl = json_object_get(model ? model : spec, "classes");
    *classes = json_is_integer(cl) ? (int)json_integer_value(cl) : 0;
    json_decref(spec);
    nn_ckpt_free(&ck);
    return *classes > 0 ? 0 : jobctl_fail(j, EXIT_REFUSED, "predict: checkpoint %s names no class count", path);
}

/* The dataset plan the sweep's model trained on: its record's, when the
 * record still holds the version the sweep pinned. */
static int dataset_plan(const jobctl *j, queue_conn *q, const char *sweep, json_t **plan)
{
    cds_err err;
    json_t *sw = NULL;
    int qrc = queue_sweep_get(q, sweep, &sw, &err);
    if (qrc == QUEUE_NOT_FOUND)
        return jobctl_fail(j, EXIT_USAGE, "predict: there is no sweep %s (see jobctl sweeps)", sweep);
    if (qrc != 0)
        return jobctl_op_failed(j, q, qrc, &err);
    const char *name = jobctl_sweep_field(sw, "dataset", 0) ?: "";
    const char *pinned = jobctl_sweep_field(sw, "dataset_version", 0) ?: "";
    etl_dataset_record r;
    qrc = etl_dataset_record_read(q, name, &r, &err);
    int rc = 0;
    if (qrc == QUEUE_NOT_FOUND)
        rc = jobctl_fail(j, EXIT_REFUSED, "predict: the record of dataset %s, which sweep %s trained on, is gone: "
                         "predict needs its casts (reload the dataset with jobctl enqueue etl, then train again)",
                         name, sweep);
    else if (qrc != 0)
        rc = jobctl_op_failed(j, q, qrc, &err);
    else if (!*pinned || strcmp(r.version, pinned) != 0)
        rc = jobctl_fail(j, EXIT_REFUSED, "predict: dataset %s is at version %.12s but sweep %s trained on %.12s: its "
                         "casts and class names may differ; predict with a model trained on the current version",
                         name, r.version[0] ? r.version : "(none)", sweep, pinned[0] ? pinned : "(none)");
    else if (!r.plan || !(*plan = json_loads(r.plan, 0, NULL)))
        rc = jobctl_fail(j, EXIT_REFUSED, "predict: dataset %s's record holds no readable plan (reload it with "
                         "jobctl enqueue etl)", name);
    if (qrc == 0)
        etl_dataset_record_free(&r);
    json_decref(sw);
    return rc;
}

/* --features a,b,c split at commas (into *names, malloc'd, over buf). */
static size_t split_features(char *buf, char ***names)
{
    size_t n = 1;
    for (char *p = buf; *p; p++)
        n += *p == ',';
    *names = calloc(n, sizeof **names);
    size_t k = 0;
    for (char *tok = strtok(buf, ","); tok && *names; tok = strtok(NULL, ","))
        (*names)[k++] = tok;
    return *names ? k : 0;
}

/* One predict.part per part, then predict.finish after them. */
static int enqueue_jobs(const jobctl *j, queue_conn *q, const predict_args *a, const json_t *plan,
                        char finish_id[QUEUE_ID_MAX])
{
    int parts = etl_predict_parts(plan);
    queue_job_spec *jobs = calloc((size_t)parts + 1, sizeof *jobs);
    queue_enqueued *done = calloc((size_t)parts + 1, sizeof *done);
    char **payloads = calloc((size_t)parts + 1, sizeof *payloads);
    const char **ids = calloc((size_t)parts, sizeof *ids);
    int rc = jobs && done && payloads && ids ? 0 : jobctl_fail(j, EXIT_REFUSED, "predict: out of memory");
    for (int k = 0; rc == 0 && k <= parts; k++) {
        json_t *pp = k < parts ? etl_predict_part_plan(plan, k) : etl_predict_finish_plan(plan);
        json_t *pl = json_pack("{s:o}", "plan", pp);
        payloads[k] = pl ? json_dumps(pl, JSON_COMPACT) : NULL;
        json_decref(pl);
        if (!payloads[k]) {
            rc = jobctl_fail(j, EXIT_REFUSED, "predict: out of memory");
            break;
        }
        queue_job_spec_init(&jobs[k]);
        jobs[k].type = k < parts ? "predict.part" : "predict.finish";
        jobs[k].queue = a->queue;
        jobs[k].payload = payloads[k];
        jobs[k].priority = a->priority;
        jobs[k].max_attempts = a->max_attempts;
        jobs[k].backoff_base_ms = 1000;
        jobs[k].backoff_cap_ms = 30000;
    }
    cds_err err;
    int qrc = rc == 0 ? queue_enqueue(q, jobs, (size_t)parts, done, &err) : 0;
    for (int k = 0; rc == 0 && qrc == 0 && k < parts; k++)
        ids[k] = done[k].id;
    if (rc == 0 && qrc == 0) {
        jobs[parts].after = ids;
        jobs[parts].n_after = (size_t)parts;
        qrc = queue_enqueue(q, &jobs[parts], 1, &done[parts], &err);
    }
    if (rc == 0 && qrc != 0)
        rc = jobctl_op_failed(j, q, qrc, &err);
    if (rc == 0)
        snprintf(finish_id, QUEUE_ID_MAX, "%s", done[parts].id);
    for (int k = 0; payloads && k <= parts; k++)
        free(payloads[k]);
    free(payloads);
    free(jobs);
    free(done);
    free(ids);
    return rc;
}

int jobctl_enqueue_predict(jobctl *j, int argc, char **argv)
{
    predict_args a = {0};
    int rc = parse(j, argc, argv, &a);
    if (rc != 0)
        return rc < 0 ? EXIT_DONE : rc;
    queue_conn *q = NULL;
    char path[QUEUE_MOP_PATH_MAX];
    int m = -1, epoch = 0, classes = 0;
    json_t *dplan = NULL, *plan = NULL;
    if ((rc = jobctl_open_queue(j, &q)) == 0)
        rc = resolve_model(j, q, &a, &m, &epoch, path, sizeof path);
    if (rc == 0)
        rc = model_classes(j, path, &classes);
    if (rc == 0)
        rc = dataset_plan(j, q, a.sweep, &dplan);
    char *fbuf = a.features ? strdup(a.features) : NULL;
    etl_predict_spec s = {.dsn = a.dsn, .table = a.table, .id = a.id, .where = a.where, .out_table = a.out,
                          .parts = (int)a.parts, .replace = a.replace, .ckpt = path, .classes = classes,
                          .sweep = a.sweep, .model = m, .epoch = epoch};
    s.type = !a.type || strcmp(a.type, "class") == 0 ? ETL_PREDICT_CLASS
             : strcmp(a.type, "prob") == 0          ? ETL_PREDICT_PROB
                                                    : ETL_PREDICT_TOPK;
    s.k = a.k > 0 ? (int)a.k : classes < 5 ? classes : 5;
    if (fbuf)
        s.n_features = split_features(fbuf, &s.features);
    cds_err err;
    if (rc == 0 && !(plan = etl_predict_plan(&s, dplan, &err)))
        rc = jobctl_fail(j, EXIT_REFUSED, "predict: %s", err.msg);
    char finish[QUEUE_ID_MAX];
    if (rc == 0)
        rc = enqueue_jobs(j, q, &a, plan, finish);
    if (rc == 0 && j->json) {
        json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:i, s:s}", "id", finish, "sweep", a.sweep, "model", m, "epoch",
                              epoch, "parts", etl_predict_parts(plan), "checkpoint", path);
        jobctl_print_json(o);
        json_decref(o);
    } else if (rc == 0) {
        printf("%s\n", finish);
        char which[32] = "latest";
        if (epoch)
            snprintf(which, sizeof which, "epoch %d", epoch);
        fprintf(stderr, "jobctl: predictions of %s model %d (%s) into %s: %d part jobs, finished by job %s\n", a.sweep,
                m, which, a.out, etl_predict_parts(plan), finish);
    }
    free(s.features);
    free(fbuf);
    json_decref(dplan);
    json_decref(plan);
    queue_close(q);
    return rc;
}
