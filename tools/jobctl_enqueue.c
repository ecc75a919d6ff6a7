/* jobctl_enqueue: `jobctl enqueue TYPE` of a queue job and `jobctl enqueue
 * etl` (docs/jobctl.md).
 *
 * Everything an enqueue needs is checked before Redis is contacted
 * (parse_enqueue): the options, the TYPE (one of queue_jobtype.h's table, or
 * the two kinds expanded here: etl, and sweep in jobctl_enqueue_sweep.c),
 * the payload's JSON and, for a queue job, the shape its type's check
 * accepts, so a job no worker could run is never enqueued.  Options a kind
 * does not take are refused by name (jobctl_refuse_options), never dropped
 * without a word.  `etl` plans the unload here (the database must be
 * reachable) and enqueues its shard jobs and the job that finishes the
 * dataset (etl_queue.h); --count N enqueues N copies of one job in one
 * batch. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobctl.h"
#include "etl_queue.h"
#include "etl_unload.h"
#include "queue_jobtype.h"

/* ---- enqueue ------------------------------------------------------------- */

static const char usage_enqueue[] =
    "usage: jobctl enqueue TYPE [--payload JSON | --spec FILE.json] [--queue Q] [--priority N]\n"
    "                      [--delay SECONDS] [--unique KEY] [--max-attempts N] [--max-stalls N]\n"
    "                      [--backoff-base SECONDS] [--backoff-cap SECONDS] [--after ID]... [--count N]\n"
    "Adds a job of TYPE (one of the types below) and prints its id.  An unknown TYPE, or a\n"
    "payload without the shape TYPE needs, is refused here (exit 2) and nothing is enqueued.\n"
    "  --payload JSON         the job's input (default {})\n"
    "  --spec FILE.json       read the payload from a file (e.g. jobs/diag-sleep.json)\n"
    "  --queue Q              queue to put it in (default: default)\n"
    "  --priority N           -1000000 to 1000000; larger runs first, FIFO among equals (default 0)\n"
    "  --delay SECONDS        not runnable before then (decimals allowed)\n"
    "  --unique KEY           at most one live job holds KEY: if one does, print its id, create\n"
    "                         nothing and exit 0 (for cron); the key frees when that job is done,\n"
    "                         dead or cancelled\n"
    "  --max-attempts N       failed runs before the dead-letter set, 1 to 1000 (default 5)\n"
    "  --max-stalls N         expired leases tolerated, 0 to 1000 (default 3)\n"
    "  --backoff-base SECONDS retry delay after failure n is min(cap, base*2^(n-1)) * U[0.5, 1]\n"
    "  --backoff-cap SECONDS  (defaults 1 and 3600)\n"
    "  --after ID             run only after job ID is done (repeatable); if it goes dead or is\n"
    "                         cancelled this job goes dead; an unknown ID is refused (exit 1)\n"
    "  --count N              enqueue N identical jobs in one batch, one id per line\n"
    "With --json: {\"id\", \"duplicate\", \"state\"}, or an array of them for --count N > 1.\n";

/* Printed after usage_enqueue, below the table of job types. */
static const char usage_enqueue_kinds[] =
    "Three kinds of enqueue that are not one job:\n"
    "  etl --spec FILE.json   unload a table into shards as etl.* jobs (jobctl enqueue etl --help)\n"
    "  sweep --spec FILE.json create a model-selection sweep (jobctl enqueue sweep --help)\n"
    "  predict --sweep S ...  score a table with a sweep's model into a new table (jobctl enqueue predict --help)\n";

static const char usage_enqueue_etl[] =
    "usage: jobctl enqueue etl --spec FILE.json [--queue Q] [--priority N]\n"
    "Plans the unload of a PostgreSQL or Greenplum table into shards (docs/etl.md, e.g.\n"
    "jobs/etl-fashion-mnist.json) from here, so the database must be reachable from here; records\n"
    "the dataset <prefix>dataset:<name> as loading, enqueues one etl.shard job per split and shard\n"
    "and an etl.finish job after them, and prints the finishing job's id (wait on it with --after).\n"
    "  --spec FILE.json       the ETL spec (--payload JSON works too)\n"
    "  --queue Q              queue of the jobs (default: default)\n"
    "  --priority N           their priority, -1000000 to 1000000 (default 0)\n"
    "With --json: {\"id\", \"dataset\", \"shard_jobs\"}.\n";

static const char usage_enqueue_sweep[] =
    "usage: jobctl enqueue sweep --spec FILE.json [--id ID] [--unique KEY] [--max-attempts N]\n"
    "                            [--max-stalls N] [--backoff-base SECONDS] [--backoff-cap SECONDS]\n"
    "Creates a model-selection sweep (docs/sweeps.md, e.g. jobs/sweep-fashion-mnist.json) on a\n"
    "dataset loaded by jobctl enqueue etl, pinned to its version, and prints the sweep's id; one\n"
    "line per model goes to stderr.  Exit 1 if the dataset is unknown or failed to load.\n"
    "  --id ID                the sweep's id, 1 to 31 letters, digits, '_' or '-' (default: s1, s2, ...)\n"
    "  --unique KEY           for cron: while a sweep made with KEY is not finished, print its id,\n"
    "                         create nothing and exit 0; the key frees when that sweep is done or\n"
    "                         cancelled\n"
    "  --max-attempts N       failed attempts of a visit, evaluation or test scoring before it fails\n"
    "                         (default: the spec's max_attempts, else 5)\n"
    "  --max-stalls N         expired leases of a model before it fails (default 10)\n"
    "  --backoff-base S, --backoff-cap S\n"
    "                         the wait after the n-th failed attempt: min(cap, base*2^(n-1)) scaled\n"
    "                         by a random factor in [0.5, 1] (default 1 s and 60 s)\n"
    "With --json: {\"id\", \"models\", \"shards\", \"epochs\", \"dataset\", \"dataset_version\"}; a\n"
    "duplicate: {\"id\", \"duplicate\": true, \"unique\"}.\n";

/* The job types of the table jobctl shares with the worker, one per line
 * with the payload each takes. */
void jobctl_print_job_types(FILE *out)
{
    for (int i = 0; i < QUEUE_JOB_TYPES; i++) {
        const queue_jobtype *t = queue_jobtype_get((queue_jobtype_id)i);
        fprintf(out, "  %-12s %s\n  %-12s --payload '%s'\n", t->name, t->summary, "", t->example);
    }
}

/* `jobctl enqueue [KIND] --help`: etl and sweep have their own usage. */
void jobctl_print_enqueue_help(const char *kind)
{
    if (kind && strcmp(kind, "etl") == 0) {
        fputs(usage_enqueue_etl, stdout);
    } else if (kind && strcmp(kind, "predict") == 0) {
        fputs(jobctl_usage_enqueue_predict, stdout);
    } else if (kind && strcmp(kind, "sweep") == 0) {
        fputs(usage_enqueue_sweep, stdout);
    } else {
        fputs(usage_enqueue, stdout);
        fputs("Job types (TYPE):\n", stdout);
        jobctl_print_job_types(stdout);
        fputs(usage_enqueue_kinds, stdout);
    }
}

static const struct option enqueue_options[] = {
    {"payload", required_argument, 0, E_PAYLOAD},
    {"spec", required_argument, 0, E_SPEC},
    {"queue", required_argument, 0, E_QUEUE},
    {"priority", required_argument, 0, E_PRIORITY},
    {"delay", required_argument, 0, E_DELAY},
    {"unique", required_argument, 0, E_UNIQUE},
    {"max-attempts", required_argument, 0, E_MAX_ATTEMPTS},
    {"max-stalls", required_argument, 0, E_MAX_STALLS},
    {"backoff-base", required_argument, 0, E_BACKOFF_BASE},
    {"backoff-cap", required_argument, 0, E_BACKOFF_CAP},
    {"after", required_argument, 0, E_AFTER},
    {"count", required_argument, 0, E_COUNT},
    {"id", required_argument, 0, E_ID},
    GLOBAL_OPTIONS};

#define SPEC_FILE_MAX (64 << 20)

int jobctl_read_spec_file(const jobctl *j, const char *path, char **text)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return jobctl_fail(j, EXIT_USAGE, "cannot read --spec file %s: %s (check the path)", path, strerror(errno));
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len - 1, f);
        if (len < cap - 1 || len >= SPEC_FILE_MAX)
            break;
        char *grown = realloc(buf, cap * 2);
        if (!grown) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = grown;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf)
        return jobctl_fail(j, EXIT_USAGE, "out of memory reading --spec file %s", path);
    if (bad || len >= SPEC_FILE_MAX) {
        free(buf);
        return jobctl_fail(j, EXIT_USAGE, bad ? "cannot read --spec file %s: read error" : "--spec file %s is over 64 MiB: "
                                         "put large data in a dataset and name it in the payload", path);
    }
    buf[len] = '\0';
    *text = buf;
    return 0;
}

/* What a JSON text given to enqueue TYPE should look like, for a syntax
 * error in it: a spec's documentation and an example to copy, or the
 * example payload of the job type. */
static void json_hint(const char *type, char *buf, size_t n)
{
    const queue_jobtype *t = queue_jobtype_find(type);
    if (strcmp(type, "sweep") == 0)
        snprintf(buf, n, "a sweep spec is described in docs/sweeps.md; jobs/sweep-quickstart.json is one to copy");
    else if (strcmp(type, "etl") == 0)
        snprintf(buf, n, "an ETL spec is described in docs/etl.md; jobs/etl-fashion-mnist.json is one to copy");
    else
        snprintf(buf, n, "write the payload like '%s'", t ? t->example : "{}");
}

/* The payload or spec of enqueue TYPE must be JSON; say where it is not
 * (the --spec file, or --payload; line and column), and what it should look
 * like for TYPE. */
static int check_payload_json(const jobctl *j, const char *text, const char *type, const char *path)
{
    json_error_t je;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &je);
    if (v) {
        json_decref(v);
        return 0;
    }
    char hint[160];
    json_hint(type, hint, sizeof hint);
    return jobctl_fail(j, EXIT_USAGE, "%s%s is not valid JSON: %s at line %d column %d (%s)",
                path ? "--spec file " : "--payload", path ? path : "", je.text, je.line, je.column, hint);
}

/* TYPE is one of the queue job types (the table the worker runs by) or one
 * of the two kinds enqueue expands itself; refuses any other, naming them. */
static int check_job_type(const jobctl *j, const char *type)
{
    if (strcmp(type, "predict") == 0)
        return jobctl_usage(j, "write the word predict right after enqueue, then its options: jobctl enqueue predict "
                               "--sweep S ... (jobctl enqueue predict --help)");
    if (strcmp(type, "etl") == 0 || strcmp(type, "sweep") == 0 || queue_jobtype_find(type))
        return 0;
    char names[256];
    return jobctl_fail(j, EXIT_USAGE, "unknown job type '%.64s': use one of %s (or enqueue etl or enqueue sweep with a "
                               "spec, or enqueue predict; see jobctl enqueue --help)", type, queue_jobtype_names(names, sizeof names));
}

/* The payload has the shape its job type needs (the worker checks the
 * same, so a job it would only dead-letter is never enqueued). */
static int check_job_payload(const jobctl *j, const enqueue_args *a)
{
    cds_err err;
    if (queue_jobtype_check(a->spec.type, a->spec.payload, NULL, &err) == 0)
        return 0;
    if (a->spec_file)
        return jobctl_fail(j, EXIT_USAGE, "--spec file %s: %s", a->spec_file, err.msg);
    return jobctl_fail(j, EXIT_USAGE, "%s", err.msg);
}

/* Applies one enqueue option to a; returns 0 or an exit code. */
static int enqueue_option(const jobctl *j, int c, enqueue_args *a, size_t *n_after)
{
    queue_job_spec *s = &a->spec;
    switch (c) {
    case E_PAYLOAD: a->payload_arg = optarg; return 0;
    case E_SPEC: a->spec_file = optarg; return 0;
    case E_QUEUE: s->queue = optarg; return 0;
    case E_PRIORITY:
        return jobctl_parse_int(j, "--priority", optarg, -QUEUE_PRIORITY_MAX, QUEUE_PRIORITY_MAX, &s->priority);
    case E_DELAY: return jobctl_parse_seconds(j, "--delay", optarg, &s->delay_ms);
    case E_UNIQUE: s->unique = optarg; return 0;
    case E_MAX_ATTEMPTS: return jobctl_parse_int(j, "--max-attempts", optarg, 1, 1000, &s->max_attempts);
    case E_MAX_STALLS: return jobctl_parse_int(j, "--max-stalls", optarg, 0, 1000, &s->max_stalls);
    case E_BACKOFF_BASE: return jobctl_parse_seconds(j, "--backoff-base", optarg, &s->backoff_base_ms);
    case E_BACKOFF_CAP: return jobctl_parse_seconds(j, "--backoff-cap", optarg, &s->backoff_cap_ms);
    case E_AFTER:
        if (jobctl_check_job_id(j, optarg) != 0)
            return EXIT_USAGE;
        a->after[(*n_after)++] = optarg;
        return 0;
    case E_COUNT: return jobctl_parse_int(j, "--count", optarg, 1, 1000000, &a->count);
    case E_ID: a->sweep_id = optarg; return 0;
    default: return jobctl_usage(j, "unexpected option");
    }
}

/* Parses and checks everything an enqueue needs before Redis: the options,
 * the type, the payload's JSON and, for a queue job, its shape.  --help
 * anywhere prints the usage of the kind named (enqueue etl --help). */
static int parse_enqueue(jobctl *j, int argc, char **argv, enqueue_args *a)
{
    size_t n_after = 0;
    int c = NEXT_END, rc = 0, help = 0;
    queue_job_spec_init(&a->spec);
    a->count = 1;
    a->after = calloc((size_t)argc + 1, sizeof *a->after);
    if (!a->after)
        return jobctl_fail(j, EXIT_USAGE, "out of memory");
    while (rc == 0 && ((c = jobctl_next_option(j, argc, argv, ":h", enqueue_options)) >= 0 || c == NEXT_HELP)) {
        if (c == NEXT_HELP) {
            help = 1;
            continue;
        }
        a->seen |= 1u << (c - OPT_COMMAND);
        rc = enqueue_option(j, c, a, &n_after);
    }
    if (rc != 0 || c == NEXT_BAD)
        return EXIT_USAGE;
    if (help)
        return jobctl_print_enqueue_help(optind < argc ? argv[optind] : NULL), -1;
    if (jobctl_want_args(j, argc, argv, 1, "needs the job TYPE (e.g. jobctl enqueue diag.sleep)") != 0)
        return EXIT_USAGE;
    a->spec.type = argv[optind];
    a->spec.after = a->after;
    a->spec.n_after = n_after;
    int job = strcmp(a->spec.type, "etl") != 0 && strcmp(a->spec.type, "sweep") != 0;
    if (check_job_type(j, a->spec.type) != 0)
        return EXIT_USAGE;
    if (a->payload_arg && a->spec_file)
        return jobctl_usage(j, "give the payload with --payload or --spec, not both");
    if (a->spec.unique && a->count > 1)
        return jobctl_usage(j, "--unique admits one live job, so it cannot go with --count N > 1");
    if (a->sweep_id && strcmp(a->spec.type, "sweep") != 0)
        return jobctl_usage(j, "--id names a sweep: it goes with enqueue sweep only (job ids are handed out by the "
                              "queue)");
    if (a->spec_file) {
        if (jobctl_read_spec_file(j, a->spec_file, &a->payload_text) != 0 ||
            check_payload_json(j, a->payload_text, a->spec.type, a->spec_file) != 0)
            return EXIT_USAGE;
        a->spec.payload = a->payload_text;
    } else if (a->payload_arg) {
        if (check_payload_json(j, a->payload_arg, a->spec.type, NULL) != 0)
            return EXIT_USAGE;
        a->spec.payload = a->payload_arg;
    }
    if (job && check_job_payload(j, a) != 0)
        return EXIT_USAGE;
    cds_err err;
    if (queue_job_spec_check(&a->spec, &err) != 0)
        return jobctl_fail(j, EXIT_USAGE, "%s", err.msg);
    return 0;
}

/* {"id", "duplicate", "state"}; a duplicate's state is not known here. */
static json_t *enqueued_json(const queue_enqueued *e)
{
    if (e->duplicate)
        return json_pack("{s:s, s:b}", "id", e->id, "duplicate", 1);
    return json_pack("{s:s, s:b, s:s}", "id", e->id, "duplicate", 0, "state", e->state);
}

/* Prints the ids (or JSON), and a notice on stderr for a duplicate or a job
 * born dead (a job it waits for is dead or cancelled). */
static void print_enqueued(const jobctl *j, const enqueue_args *a, const queue_enqueued *out, size_t n)
{
    if (j->json && n == 1) {
        json_t *o = enqueued_json(&out[0]);
        jobctl_print_json(o);
        json_decref(o);
    } else if (j->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, enqueued_json(&out[i]));
        jobctl_print_json(arr);
        json_decref(arr);
    } else {
        for (size_t i = 0; i < n; i++)
            printf("%s\n", out[i].id);
    }
    if (out[0].duplicate)
        jobctl_fail(j, EXIT_DONE, "job %s already holds unique key %s", out[0].id, a->spec.unique);
    else if (strcmp(out[0].state, "dead") == 0)
        jobctl_fail(j, EXIT_DONE, "job %s%s%s %s created dead: a job it waits for (--after) is dead or cancelled "
                           "(see jobctl show %s)", out[0].id, n > 1 ? " to " : "", n > 1 ? out[n - 1].id : "",
             n > 1 ? "were" : "was", out[0].id);
}

/* Whether an enqueue option was given. */
int jobctl_enqueue_seen(const enqueue_args *a, int opt) { return (a->seen & 1u << (opt - OPT_COMMAND)) != 0; }

/* The options of enqueue that a KIND (etl, sweep) ignores would be lost
 * without a word: refuses the first one given that is not in allowed[n],
 * naming those it takes (why: what KIND is, or NULL). */
int jobctl_refuse_options(const jobctl *j, const enqueue_args *a, const char *kind, const int *allowed, size_t n,
                          const char *why)
{
    const struct option *bad = NULL;
    for (const struct option *o = enqueue_options; o->name && !bad; o++) {
        int ok = o->val < OPT_COMMAND || o->val == E_PAYLOAD || !jobctl_enqueue_seen(a, o->val); /* --payload: --spec inline */
        for (size_t i = 0; i < n && !ok; i++)
            ok = o->val == allowed[i];
        if (!ok)
            bad = o;
    }
    if (!bad)
        return 0;
    char what[400];
    int k = snprintf(what, sizeof what, "--%s does not apply to enqueue %s, which takes", bad->name, kind);
    for (size_t i = 0; i < n; i++)
        for (const struct option *o = enqueue_options; o->name; o++)
            if (o->val == allowed[i] && k > 0 && (size_t)k < sizeof what)
                k += snprintf(what + k, sizeof what - (size_t)k, "%s --%s", i == 0 ? "" : i + 1 == n ? " and" : ",",
                              o->name);
    if (why && k > 0 && (size_t)k < sizeof what)
        snprintf(what + k, sizeof what - (size_t)k, ": %s", why);
    return jobctl_usage(j, what);
}

static int refuse_etl_options(const jobctl *j, const enqueue_args *a)
{
    static const int allowed[] = {E_SPEC, E_QUEUE, E_PRIORITY};
    return jobctl_refuse_options(j, a, "etl", allowed, sizeof allowed / sizeof allowed[0], NULL);
}

/* `jobctl enqueue etl --spec FILE.json`: plans the unload here (this needs
 * the database) and enqueues its shard jobs and the job that finishes the
 * dataset, whose id is printed (wait on it with --after). */
static int enqueue_etl(jobctl *j, const enqueue_args *a)
{
    if (refuse_etl_options(j, a) != 0)
        return EXIT_USAGE;
    if (!a->spec.payload)
        return jobctl_usage(j, "enqueue etl needs the ETL spec: --spec FILE.json (see docs/etl.md)");
    json_t *spec = json_loads(a->spec.payload, JSON_DECODE_ANY, NULL);
    etl_spec parsed;
    cds_err err;
    if (etl_spec_from_json(spec, &parsed, &err) != 0) {
        json_decref(spec);
        return jobctl_fail(j, EXIT_USAGE, "ETL spec %s: %s", a->spec_file ? a->spec_file : "(--payload)", err.msg);
    }
    etl_spec_free(&parsed);
    queue_conn *q = NULL;
    int rc = jobctl_open_queue(j, &q);
    if (rc == 0) {
        cds_log log;
        cds_log_init(&log, stderr, CDS_LOG_WARN, "jobctl");
        etl_enqueued res;
        if (etl_enqueue(q, spec, a->spec.queue, a->spec.priority, &res, &log, &err) != 0) {
            rc = queue_conn_broken(q) ? jobctl_fail(j, EXIT_USAGE, "%s", err.msg) : jobctl_fail(j, EXIT_REFUSED, "%s", err.msg);
        } else if (j->json) {
            json_t *o = json_pack("{s:s, s:s, s:i}", "id", res.finish_id, "dataset", res.dataset, "shard_jobs",
                                  (int)res.n_shard_jobs);
            jobctl_print_json(o);
            json_decref(o);
        } else {
            printf("%s\n", res.finish_id);
            fprintf(stderr, "jobctl: dataset %s: %zu shard jobs, finished by job %s\n", res.dataset, res.n_shard_jobs,
                    res.finish_id);
        }
    }
    queue_close(q);
    json_decref(spec);
    return rc;
}

int jobctl_cmd_enqueue(jobctl *j, int argc, char **argv)
{
    /* predict has options of its own (--id is a column there), so it
     * must come first: jobctl enqueue predict --sweep ... */
    if (argc > 1 && strcmp(argv[1], "predict") == 0)
        return jobctl_enqueue_predict(j, argc - 1, argv + 1);
    enqueue_args a = {0};
    queue_job_spec *specs = NULL;
    queue_enqueued *out = NULL;
    queue_conn *q = NULL;
    int rc = parse_enqueue(j, argc, argv, &a);
    if (rc == 0 && strcmp(a.spec.type, "etl") == 0) {
        rc = enqueue_etl(j, &a);
    } else if (rc == 0 && strcmp(a.spec.type, "sweep") == 0) {
        rc = jobctl_enqueue_sweep(j, &a);
    } else if (rc == 0) {
        size_t n = (size_t)a.count;
        specs = calloc(n, sizeof *specs);
        out = calloc(n, sizeof *out);
        if (!specs || !out)
            rc = jobctl_fail(j, EXIT_USAGE, "out of memory for %zu jobs: use a smaller --count", n);
        for (size_t i = 0; rc == 0 && i < n; i++)
            specs[i] = a.spec;
        if (rc == 0)
            rc = jobctl_open_queue(j, &q);
        cds_err err;
        int qrc = rc == 0 ? queue_enqueue(q, specs, n, out, &err) : 0;
        if (qrc != 0)
            rc = jobctl_op_failed(j, q, qrc, &err);
        else if (rc == 0)
            print_enqueued(j, &a, out, n);
    }
    queue_close(q);
    free(specs);
    free(out);
    free(a.after);
    free(a.payload_text);
    return rc < 0 ? EXIT_DONE : rc;
}
