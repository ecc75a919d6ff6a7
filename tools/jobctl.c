/* jobctl: the job queue from a shell or from cron (docs/jobctl.md).
 *
 *   jobctl [--redis URL] [--redis-password-file FILE] [--prefix P] [--json]
 *          COMMAND ARGS...
 *
 * Structure.  main() reads the global options that come before the command
 * (getopt_long with "+", so it stops at the command word), finds the command
 * in commands[] and hands it the rest of argv.  Each cmd_*() parses its own
 * options with next_option(), over a table that ends with GLOBAL_OPTIONS, so
 * the global options are accepted after the command too; next_option()
 * stores those in the struct jobctl, refuses abbreviated option names, and
 * turns getopt's complaints into one-line usage errors.  A command then checks
 * everything it can without Redis (numbers, JSON, names, ids), connects
 * (open_queue), makes one library call, and prints the result: the library's
 * JSON with --json, else a table or a job sheet (jobctl_fmt.c).  Two enqueue
 * types are not plain jobs: `etl` plans an unload and enqueues its jobs
 * (etl_queue.h), and `sweep` expands a sweep spec (sweep_spec.h), pins the
 * dataset's version from its record and creates the sweep (queue_mop.h).
 * Every other TYPE must be in the job-type table the worker runs by
 * (queue_jobtype.h), and its payload pass that type's check, before Redis is
 * contacted: a job no worker could run is never enqueued.
 *
 * Writing.  commands[] marks the commands that write (enqueue, cancel,
 * retry, pause, resume, replay); for those open_queue refuses a Redis whose
 * maxmemory-policy can evict keys, with the worker's message, before the
 * first write.  The others only read, and work on any Redis.
 *
 * Errors.  Every failure is one line on stderr, "jobctl: <what went wrong>
 * (<how to fix it>)", from fail(), and an exit status:
 *   0  done, including an enqueue whose --unique key a live job holds (it
 *      prints that job's id: a cron rerun is a no-op);
 *   1  the job named is not there (show, cancel, retry, --after; the
 *      dataset of a sweep, or it failed to load), or its state refuses the
 *      operation (cancel a finished job, retry a live one), or Redis refused
 *      the command;
 *   2  bad usage or input (command, option, number, JSON, URL, id, job type,
 *      payload shape), or Redis unreachable, refusing AUTH, lost
 *      mid-command, or (for a command that writes) able to evict keys.
 * The library's cds_err messages already name the problem and the fix and
 * redact the password of a URL; fail() passes them through.  jobctl never
 * prints the raw --redis argument, and scrubs the URL's password from every
 * message it prints anyway (scrub_password).
 *
 * State.  No globals: the global options live in a struct jobctl handed to
 * each command; getopt's optind and optarg are the only shared variables. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cds_log.h"
#include "cds_util.h"
#include "etl_queue.h"
#include "etl_unload.h"
#include "jobctl_fmt.h"
#include "queue.h"
#include "queue_int.h" /* qc_take: INCR of the sweep id counter (queue.h has no counter call) */
#include "queue_jobtype.h"
#include "jobctl_sweep.h"
#include "queue_mop.h"
#include "sweep_spec.h"

enum exit_code { EXIT_DONE = 0, EXIT_REFUSED = 1, EXIT_USAGE = 2 };

typedef struct jobctl {
    const char *cmd;           /* the command being run, for messages */
    const char *url;           /* --redis; NULL: $CDS_REDIS_URL, else the default */
    const char *password_file; /* --redis-password-file */
    const char *prefix;        /* --prefix; NULL: the library's default */
    int json;                  /* --json */
    int writes;                /* the command changes Redis (see open_queue) */
} jobctl;

/* ---- messages ------------------------------------------------------------ */

/* The URL jobctl will connect to, as the library chooses it. */
static const char *effective_url(const jobctl *j)
{
    const char *env = getenv("CDS_REDIS_URL");
    if (j->url)
        return j->url;
    return env && *env ? env : QUEUE_DEFAULT_URL;
}

/* Replaces every copy of the password of url in msg with "***". */
static void scrub_password(char *msg, size_t size, const char *url)
{
    const char *s, *e;
    if (!url || !cds_url_userinfo(url, &s, &e))
        return;
    const char *colon = memchr(s, ':', (size_t)(e - s));
    const char *pw = colon ? colon + 1 : s;
    size_t n = (size_t)(e - pw);
    if (n < 3) /* too short to tell from ordinary text; still never echoed */
        return;
    char out[CDS_ERR_MAX * 2];
    size_t o = 0;
    for (const char *p = msg; *p && o + 4 < sizeof out;) {
        if (strncmp(p, pw, n) == 0) {
            memcpy(out + o, "***", 3);
            o += 3;
            p += n;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
    snprintf(msg, size, "%s", out);
}

/* Prints "jobctl: <message>" as exactly one line on stderr; returns code. */
static int fail(const jobctl *j, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(const jobctl *j, int code, const char *fmt, ...)
{
    char msg[CDS_ERR_MAX * 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    scrub_password(msg, sizeof msg, effective_url(j));
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fflush(stdout);
    fprintf(stderr, "jobctl: %s\n", msg);
    return code;
}

/* A one-line usage error that points at the command's help. */
static int usage_error(const jobctl *j, const char *what)
{
    if (j->cmd)
        return fail(j, EXIT_USAGE, "%s (see jobctl %s --help)", what, j->cmd);
    return fail(j, EXIT_USAGE, "%s (see jobctl --help)", what);
}

/* ---- options ------------------------------------------------------------- */

enum {
    OPT_REDIS = 1000, OPT_PASSWORD_FILE, OPT_PREFIX, OPT_JSON, OPT_HELP,
    OPT_COMMAND /* first code of a command's own options */
};

#define GLOBAL_OPTIONS                                                                   \
    {"redis", required_argument, 0, OPT_REDIS},                                          \
        {"redis-password-file", required_argument, 0, OPT_PASSWORD_FILE},                \
        {"prefix", required_argument, 0, OPT_PREFIX}, {"json", no_argument, 0, OPT_JSON}, \
        {"help", no_argument, 0, OPT_HELP}, { 0, 0, 0, 0 }

/* next_option() results besides an option code. */
#define NEXT_END (-1)
#define NEXT_HELP (-2)
#define NEXT_BAD (-3) /* a usage error was printed */

/* "--name" of an argv element "--name=value" (the value may be a secret). */
static void option_name(const char *arg, char *out, size_t n)
{
    snprintf(out, n, "%.*s", (int)strcspn(arg, "="), arg);
}

/* The argv element getopt_long just matched with option index idx. */
static const char *matched_element(char **argv, const struct option *o)
{
    if (o->has_arg == required_argument && optarg == argv[optind - 1])
        return argv[optind - 2]; /* "--name value" */
    return argv[optind - 1];     /* "--name" or "--name=value" */
}

/* Returns the next option of the command (its code), NEXT_END, NEXT_HELP, or
 * NEXT_BAD.  Global options are stored in j and skipped.  Abbreviations
 * ("--redis-pass" for --redis-password-file) are refused: a misspelt option
 * must not quietly take a password as a file name. */
static int next_option(jobctl *j, int argc, char **argv, const char *shortopts, const struct option *opts)
{
    for (;;) {
        int idx = -1;
        int c = getopt_long(argc, argv, shortopts, opts, &idx);
        char name[64], what[160];
        if (c == '?' || c == ':') {
            const char *arg = argv[optind - 1];
            if (strncmp(arg, "--", 2) == 0 || optopt <= 0 || optopt > 127)
                option_name(arg, name, sizeof name);
            else
                snprintf(name, sizeof name, "-%c", optopt);
            snprintf(what, sizeof what,
                     c == ':'              ? "option %s needs a value"
                     : optopt >= OPT_REDIS ? "option %s takes no value"
                                           : "unknown option %s",
                     name);
            usage_error(j, what);
            return NEXT_BAD;
        }
        if (idx >= 0) {
            option_name(matched_element(argv, &opts[idx]), name, sizeof name);
            if (strncmp(name, "--", 2) != 0 || strcmp(name + 2, opts[idx].name) != 0) {
                snprintf(what, sizeof what, "unknown option %s (write options in full, e.g. --%s)", name,
                         opts[idx].name);
                usage_error(j, what);
                return NEXT_BAD;
            }
        }
        switch (c) {
        case -1: return NEXT_END;
        case 'h':
        case OPT_HELP: return NEXT_HELP;
        case OPT_REDIS: j->url = optarg; break;
        case OPT_PASSWORD_FILE: j->password_file = optarg; break;
        case OPT_PREFIX: j->prefix = optarg; break;
        case OPT_JSON: j->json = 1; break;
        default: return c;
        }
    }
}

/* Strict whole number in [min, max] for option opt. */
static int parse_int_option(const jobctl *j, const char *opt, const char *s, int64_t min, int64_t max,
                            int64_t *out)
{
    char what[200];
    if (cds_parse_i64(s, min, max, out) == 0)
        return 0;
    snprintf(what, sizeof what, "bad %s '%.40s': give a whole number from %lld to %lld", opt, s, (long long)min,
             (long long)max);
    return usage_error(j, what);
}

/* Seconds, decimals allowed (2.5), as milliseconds; 0 to ten years. */
static int parse_seconds_option(const jobctl *j, const char *opt, const char *s, int64_t *ms)
{
    char what[200];
    double v;
    if (cds_parse_double(s, &v) == 0 && v >= 0 && v <= 10.0 * 365 * 86400) {
        *ms = (int64_t)llround(v * 1000.0);
        return 0;
    }
    snprintf(what, sizeof what, "bad %s '%.40s': give seconds from 0 to 315360000, decimals allowed (e.g. 2.5)",
             opt, s);
    return usage_error(j, what);
}

/* Job ids are what enqueue printed: positive integers. */
static int check_job_id(const jobctl *j, const char *id)
{
    int64_t v;
    if (cds_parse_i64(id, 1, INT64_MAX, &v) == 0)
        return 0;
    return fail(j, EXIT_USAGE, "bad job id '%.40s': job ids are positive integers, as printed by jobctl enqueue "
                               "(see jobctl list)", id);
}

/* The library checks queue names as part of a job spec. */
static int check_queue_name(const jobctl *j, const char *queue)
{
    queue_job_spec s;
    cds_err err;
    queue_job_spec_init(&s);
    s.type = "jobctl.check";
    s.queue = queue;
    if (queue_job_spec_check(&s, &err) == 0)
        return 0;
    return fail(j, EXIT_USAGE, "%s", err.msg);
}

/* Exactly n positional arguments after the options; missing says what the
 * command needs ("needs a job ID"). */
static int want_args(const jobctl *j, int argc, char **argv, int n, const char *missing)
{
    char msg[200];
    if (argc - optind == n)
        return 0;
    if (argc - optind < n)
        snprintf(msg, sizeof msg, "%s %s", j->cmd, missing);
    else
        snprintf(msg, sizeof msg, "unexpected argument '%.40s'", argv[optind + n]);
    return usage_error(j, msg);
}

/* ---- Redis --------------------------------------------------------------- */

/* Connects, or prints why not; returns 0 or an exit code (*q is NULL then).
 * A command that writes first checks the server's maxmemory-policy, as the
 * worker does and with its message: a Redis that can evict keys would lose
 * what the command writes without a word, so it is refused before anything
 * is written.  Commands that only read work on such a Redis, to look at
 * what is there. */
static int open_queue(const jobctl *j, queue_conn **q)
{
    cds_err err;
    *q = NULL;
    queue_opts o = {
        .url = effective_url(j), .password_file = j->password_file, .prefix = j->prefix, .timeout_ms = 5000,
        .writes = j->writes};
    *q = queue_connect(&o, &err);
    if (!*q)
        return fail(j, EXIT_USAGE, "%s", err.msg);
    return 0;
}

/* Reports a failed library call: 1 when Redis answered (no such job, a state
 * that refuses), 2 when it could not be reached. */
static int op_failed(const jobctl *j, const queue_conn *q, int rc, const cds_err *err)
{
    int code = rc != QUEUE_NOT_FOUND && queue_conn_broken(q) ? EXIT_USAGE : EXIT_REFUSED;
    return fail(j, code, "%s", err->msg);
}

static void print_json(const json_t *v)
{
    json_dumpf(v, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
    fputc('\n', stdout);
}

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
    "Two kinds of enqueue that are not one job:\n"
    "  etl --spec FILE.json   unload a table into shards as etl.* jobs (jobctl enqueue etl --help)\n"
    "  sweep --spec FILE.json create a model-selection sweep (jobctl enqueue sweep --help)\n";

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
static void print_job_types(FILE *out)
{
    for (int i = 0; i < QUEUE_JOB_TYPES; i++) {
        const queue_jobtype *t = queue_jobtype_get((queue_jobtype_id)i);
        fprintf(out, "  %-12s %s\n  %-12s --payload '%s'\n", t->name, t->summary, "", t->example);
    }
}

/* `jobctl enqueue [KIND] --help`: etl and sweep have their own usage. */
static void print_enqueue_help(const char *kind)
{
    if (kind && strcmp(kind, "etl") == 0) {
        fputs(usage_enqueue_etl, stdout);
    } else if (kind && strcmp(kind, "sweep") == 0) {
        fputs(usage_enqueue_sweep, stdout);
    } else {
        fputs(usage_enqueue, stdout);
        fputs("Job types (TYPE):\n", stdout);
        print_job_types(stdout);
        fputs(usage_enqueue_kinds, stdout);
    }
}

enum enqueue_option {
    E_PAYLOAD = OPT_COMMAND, E_SPEC, E_QUEUE, E_PRIORITY, E_DELAY, E_UNIQUE, E_MAX_ATTEMPTS, E_MAX_STALLS,
    E_BACKOFF_BASE, E_BACKOFF_CAP, E_AFTER, E_COUNT, E_ID
};

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

typedef struct enqueue_args {
    queue_job_spec spec;
    const char *payload_arg;
    const char *spec_file;
    char *payload_text; /* owned: the --spec file's contents */
    const char **after; /* argv strings */
    int64_t count;
    const char *sweep_id; /* --id (enqueue sweep) */
    unsigned seen;        /* bit (code - OPT_COMMAND) of each command option given */
} enqueue_args;

#define SPEC_FILE_MAX (64 << 20)

/* Reads a --spec file into a->payload_text. */
static int read_spec_file(const jobctl *j, const char *path, enqueue_args *a)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(j, EXIT_USAGE, "cannot read --spec file %s: %s (check the path)", path, strerror(errno));
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
        return fail(j, EXIT_USAGE, "out of memory reading --spec file %s", path);
    if (bad || len >= SPEC_FILE_MAX) {
        free(buf);
        return fail(j, EXIT_USAGE, bad ? "cannot read --spec file %s: read error" : "--spec file %s is over 64 MiB: "
                                         "put large data in a dataset and name it in the payload", path);
    }
    buf[len] = '\0';
    a->payload_text = buf;
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
    return fail(j, EXIT_USAGE, "%s%s is not valid JSON: %s at line %d column %d (%s)",
                path ? "--spec file " : "--payload", path ? path : "", je.text, je.line, je.column, hint);
}

/* TYPE is one of the queue job types (the table the worker runs by) or one
 * of the two kinds enqueue expands itself; refuses any other, naming them. */
static int check_job_type(const jobctl *j, const char *type)
{
    if (strcmp(type, "etl") == 0 || strcmp(type, "sweep") == 0 || queue_jobtype_find(type))
        return 0;
    char names[256];
    return fail(j, EXIT_USAGE, "unknown job type '%.64s': use one of %s (or enqueue etl or enqueue sweep with a "
                               "spec; see jobctl enqueue --help)", type, queue_jobtype_names(names, sizeof names));
}

/* The payload has the shape its job type needs (the worker checks the
 * same, so a job it would only dead-letter is never enqueued). */
static int check_job_payload(const jobctl *j, const enqueue_args *a)
{
    cds_err err;
    if (queue_jobtype_check(a->spec.type, a->spec.payload, NULL, &err) == 0)
        return 0;
    if (a->spec_file)
        return fail(j, EXIT_USAGE, "--spec file %s: %s", a->spec_file, err.msg);
    return fail(j, EXIT_USAGE, "%s", err.msg);
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
        return parse_int_option(j, "--priority", optarg, -QUEUE_PRIORITY_MAX, QUEUE_PRIORITY_MAX, &s->priority);
    case E_DELAY: return parse_seconds_option(j, "--delay", optarg, &s->delay_ms);
    case E_UNIQUE: s->unique = optarg; return 0;
    case E_MAX_ATTEMPTS: return parse_int_option(j, "--max-attempts", optarg, 1, 1000, &s->max_attempts);
    case E_MAX_STALLS: return parse_int_option(j, "--max-stalls", optarg, 0, 1000, &s->max_stalls);
    case E_BACKOFF_BASE: return parse_seconds_option(j, "--backoff-base", optarg, &s->backoff_base_ms);
    case E_BACKOFF_CAP: return parse_seconds_option(j, "--backoff-cap", optarg, &s->backoff_cap_ms);
    case E_AFTER:
        if (check_job_id(j, optarg) != 0)
            return EXIT_USAGE;
        a->after[(*n_after)++] = optarg;
        return 0;
    case E_COUNT: return parse_int_option(j, "--count", optarg, 1, 1000000, &a->count);
    case E_ID: a->sweep_id = optarg; return 0;
    default: return usage_error(j, "unexpected option");
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
        return fail(j, EXIT_USAGE, "out of memory");
    while (rc == 0 && ((c = next_option(j, argc, argv, ":h", enqueue_options)) >= 0 || c == NEXT_HELP)) {
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
        return print_enqueue_help(optind < argc ? argv[optind] : NULL), -1;
    if (want_args(j, argc, argv, 1, "needs the job TYPE (e.g. jobctl enqueue diag.sleep)") != 0)
        return EXIT_USAGE;
    a->spec.type = argv[optind];
    a->spec.after = a->after;
    a->spec.n_after = n_after;
    int job = strcmp(a->spec.type, "etl") != 0 && strcmp(a->spec.type, "sweep") != 0;
    if (check_job_type(j, a->spec.type) != 0)
        return EXIT_USAGE;
    if (a->payload_arg && a->spec_file)
        return usage_error(j, "give the payload with --payload or --spec, not both");
    if (a->spec.unique && a->count > 1)
        return usage_error(j, "--unique admits one live job, so it cannot go with --count N > 1");
    if (a->sweep_id && strcmp(a->spec.type, "sweep") != 0)
        return usage_error(j, "--id names a sweep: it goes with enqueue sweep only (job ids are handed out by the "
                              "queue)");
    if (a->spec_file) {
        if (read_spec_file(j, a->spec_file, a) != 0 ||
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
        return fail(j, EXIT_USAGE, "%s", err.msg);
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
        print_json(o);
        json_decref(o);
    } else if (j->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, enqueued_json(&out[i]));
        print_json(arr);
        json_decref(arr);
    } else {
        for (size_t i = 0; i < n; i++)
            printf("%s\n", out[i].id);
    }
    if (out[0].duplicate)
        fail(j, EXIT_DONE, "job %s already holds unique key %s", out[0].id, a->spec.unique);
    else if (strcmp(out[0].state, "dead") == 0)
        fail(j, EXIT_DONE, "job %s%s%s %s created dead: a job it waits for (--after) is dead or cancelled "
                           "(see jobctl show %s)", out[0].id, n > 1 ? " to " : "", n > 1 ? out[n - 1].id : "",
             n > 1 ? "were" : "was", out[0].id);
}

/* Whether an enqueue option was given. */
static int seen(const enqueue_args *a, int opt) { return (a->seen & 1u << (opt - OPT_COMMAND)) != 0; }

/* The options of enqueue that a KIND (etl, sweep) ignores would be lost
 * without a word: refuses the first one given that is not in allowed[n],
 * naming those it takes (why: what KIND is, or NULL). */
static int refuse_options(const jobctl *j, const enqueue_args *a, const char *kind, const int *allowed, size_t n,
                          const char *why)
{
    const struct option *bad = NULL;
    for (const struct option *o = enqueue_options; o->name && !bad; o++) {
        int ok = o->val < OPT_COMMAND || o->val == E_PAYLOAD || !seen(a, o->val); /* --payload: --spec inline */
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
    return usage_error(j, what);
}

static int refuse_etl_options(const jobctl *j, const enqueue_args *a)
{
    static const int allowed[] = {E_SPEC, E_QUEUE, E_PRIORITY};
    return refuse_options(j, a, "etl", allowed, sizeof allowed / sizeof allowed[0], NULL);
}

/* `jobctl enqueue etl --spec FILE.json`: plans the unload here (this needs
 * the database) and enqueues its shard jobs and the job that finishes the
 * dataset, whose id is printed (wait on it with --after). */
static int enqueue_etl(jobctl *j, const enqueue_args *a)
{
    if (refuse_etl_options(j, a) != 0)
        return EXIT_USAGE;
    if (!a->spec.payload)
        return usage_error(j, "enqueue etl needs the ETL spec: --spec FILE.json (see docs/etl.md)");
    json_t *spec = json_loads(a->spec.payload, JSON_DECODE_ANY, NULL);
    etl_spec parsed;
    cds_err err;
    if (etl_spec_from_json(spec, &parsed, &err) != 0) {
        json_decref(spec);
        return fail(j, EXIT_USAGE, "ETL spec %s: %s", a->spec_file ? a->spec_file : "(--payload)", err.msg);
    }
    etl_spec_free(&parsed);
    queue_conn *q = NULL;
    int rc = open_queue(j, &q);
    if (rc == 0) {
        cds_log log;
        cds_log_init(&log, stderr, CDS_LOG_WARN, "jobctl");
        etl_enqueued res;
        if (etl_enqueue(q, spec, a->spec.queue, a->spec.priority, &res, &log, &err) != 0) {
            rc = queue_conn_broken(q) ? fail(j, EXIT_USAGE, "%s", err.msg) : fail(j, EXIT_REFUSED, "%s", err.msg);
        } else if (j->json) {
            json_t *o = json_pack("{s:s, s:s, s:i}", "id", res.finish_id, "dataset", res.dataset, "shard_jobs",
                                  (int)res.n_shard_jobs);
            print_json(o);
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
    return refuse_options(j, a, "sweep", allowed, sizeof allowed / sizeof allowed[0], "a sweep is not a queue job");
}

static int check_sweep_id(const jobctl *j, const char *id)
{
    size_t n = strlen(id);
    if (n >= 1 && n < QUEUE_SWEEP_ID_MAX &&
        strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n)
        return 0;
    return fail(j, EXIT_USAGE, "bad sweep id '%.40s': use 1 to %d letters, digits, '_' or '-' (or leave out --id)",
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

/* Reads <prefix>dataset:<name> (etl_queue.c writes it) and pins its version
 * and shard count; refuses a dataset that is unknown or failed (exit 1). */
static int pin_dataset(const jobctl *j, queue_conn *q, const char *name, pinned_dataset *d)
{
    char rec_name[200];
    snprintf(rec_name, sizeof rec_name, "dataset:%s", name);
    cds_err err;
    json_t *rec = NULL;
    int qrc = queue_record_get(q, rec_name, &rec, &err);
    if (qrc == QUEUE_NOT_FOUND)
        return fail(j, EXIT_REFUSED, "no dataset %s under prefix %s (load it first: jobctl enqueue etl --spec "
                                     "FILE.json with \"dataset\": \"%s\")", name, queue_prefix(q), name);
    if (qrc != 0)
        return op_failed(j, q, qrc, &err);
    const char *state = json_string_value(json_object_get(rec, "state")) ?: "";
    const char *version = json_string_value(json_object_get(rec, "version")) ?: "";
    int rc = 0;
    memset(d, 0, sizeof *d);
    d->shards = record_shards(rec);
    d->loading = strcmp(state, "loading") == 0;
    if (strcmp(state, "failed") == 0)
        rc = fail(j, EXIT_REFUSED, "dataset %s failed to load: %s (fix the cause and run jobctl enqueue etl again)",
                  name, json_string_value(json_object_get(rec, "error")) ?: "no reason recorded");
    else if (!d->loading && (strcmp(state, "ready") != 0 || !*version || strlen(version) >= sizeof d->version))
        rc = fail(j, EXIT_REFUSED, "dataset %s is in state '%.20s' with version '%.16s': a sweep needs it ready or "
                                   "loading (see redis-cli HGETALL %sdataset:%s)", name, state, version,
                  queue_prefix(q), name);
    else if (d->shards == 0)
        rc = fail(j, EXIT_REFUSED, "dataset %s has no train shard count in its record (reload it with jobctl "
                                   "enqueue etl)", name);
    else if (!d->loading)
        snprintf(d->version, sizeof d->version, "%s", version);
    json_decref(rec);
    return rc;
}

/* "s" + INCR <prefix>sweep:seq, skipping values a --id sweep already took. */
static int new_sweep_id(const jobctl *j, queue_conn *q, char id[QUEUE_SWEEP_ID_MAX])
{
    cds_err err;
    for (int t = 0; t < SWEEP_ID_TRIES; t++) {
        qargs cmd;
        qargs_init(&cmd);
        qargs_add(&cmd, "INCR");
        qargs_key(&cmd, q, "sweep:seq");
        redisReply *r = qc_take(q, &cmd, &err);
        if (!r)
            return op_failed(j, q, -1, &err);
        long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
        freeReplyObject(r);
        if (n < 1)
            return fail(j, EXIT_REFUSED, "%ssweep:seq does not hold a counter (delete it or give --id)",
                        queue_prefix(q));
        snprintf(id, QUEUE_SWEEP_ID_MAX, "s%lld", n);
        json_t *existing = NULL;
        int qrc = queue_sweep_get(q, id, &existing, &err);
        json_decref(existing);
        if (qrc == QUEUE_NOT_FOUND)
            return 0;
        if (qrc != 0)
            return op_failed(j, q, qrc, &err);
    }
    return fail(j, EXIT_REFUSED, "sweep ids s<N> up to %s are all taken (give --id)", id);
}

static void print_sweep(const jobctl *j, const sweep_spec *s, const char *id, const pinned_dataset *d)
{
    int m = sweep_spec_model_count(s);
    if (j->json) {
        json_t *o = json_pack("{s:s, s:i, s:i, s:i, s:s, s:s}", "id", id, "models", m, "shards", d->shards,
                              "epochs", sweep_spec_epochs(s), "dataset", sweep_spec_dataset(s), "dataset_version",
                              d->version);
        print_json(o);
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
static int enqueue_sweep(jobctl *j, const enqueue_args *a)
{
    if (refuse_job_options(j, a) != 0 || (a->sweep_id && check_sweep_id(j, a->sweep_id) != 0))
        return EXIT_USAGE;
    if (!a->spec_file && !a->payload_arg)
        return usage_error(j, "enqueue sweep needs the sweep spec: give --spec FILE.json (docs/sweeps.md)");
    cds_err err;
    sweep_spec *s = sweep_spec_parse(a->spec.payload, &err);
    if (!s)
        return fail(j, EXIT_USAGE, "%s: %s", a->spec_file ? a->spec_file : "--payload", err.msg);
    queue_conn *q = NULL;
    pinned_dataset d;
    char id[QUEUE_SWEEP_ID_MAX] = "";
    int rc = open_queue(j, &q);
    if (rc == 0)
        rc = pin_dataset(j, q, sweep_spec_dataset(s), &d);
    if (rc == 0 && a->sweep_id)
        snprintf(id, sizeof id, "%s", a->sweep_id);
    else if (rc == 0)
        rc = new_sweep_id(j, q, id);
    if (rc == 0) {
        /* An option overrides the spec's max_attempts; the spec, the default. */
        int attempts = seen(a, E_MAX_ATTEMPTS) ? a->spec.max_attempts
                                                                        : sweep_spec_max_attempts(s);
        queue_sweep_def def = {
            .id = id, .dataset = sweep_spec_dataset(s), .dataset_version = d.version, .shards = d.shards,
            .epochs = sweep_spec_epochs(s), .models = sweep_spec_model_count(s),
            .model_specs = sweep_spec_model_specs(s), .spec_json = sweep_spec_json(s),
            .max_attempts = attempts,
            .max_stalls = seen(a, E_MAX_STALLS) ? a->spec.max_stalls : 0,
            .backoff_base_ms = seen(a, E_BACKOFF_BASE) ? a->spec.backoff_base_ms : 0,
            .backoff_cap_ms = seen(a, E_BACKOFF_CAP) ? a->spec.backoff_cap_ms : 0,
            .unique = a->spec.unique};
        char live[QUEUE_SWEEP_ID_MAX];
        int crc = queue_sweep_create(q, &def, live, &err);
        if (crc == QUEUE_MOP_DUPLICATE) {
            /* A cron line runs again while its sweep is live: not an error. */
            if (j->json) {
                json_t *o = json_pack("{s:s, s:b, s:s}", "id", live, "duplicate", 1, "unique", def.unique);
                print_json(o);
                json_decref(o);
            } else {
                printf("%s\n", live);
                fprintf(stderr, "jobctl: sweep %s holds unique key '%s' and is not finished: nothing enqueued\n",
                        live, def.unique);
            }
        } else if (crc != 0) {
            rc = op_failed(j, q, -1, &err);
        } else {
            print_sweep(j, s, id, &d);
        }
    }
    queue_close(q);
    sweep_spec_free(s);
    return rc;
}

static int cmd_enqueue(jobctl *j, int argc, char **argv)
{
    enqueue_args a = {0};
    queue_job_spec *specs = NULL;
    queue_enqueued *out = NULL;
    queue_conn *q = NULL;
    int rc = parse_enqueue(j, argc, argv, &a);
    if (rc == 0 && strcmp(a.spec.type, "etl") == 0) {
        rc = enqueue_etl(j, &a);
    } else if (rc == 0 && strcmp(a.spec.type, "sweep") == 0) {
        rc = enqueue_sweep(j, &a);
    } else if (rc == 0) {
        size_t n = (size_t)a.count;
        specs = calloc(n, sizeof *specs);
        out = calloc(n, sizeof *out);
        if (!specs || !out)
            rc = fail(j, EXIT_USAGE, "out of memory for %zu jobs: use a smaller --count", n);
        for (size_t i = 0; rc == 0 && i < n; i++)
            specs[i] = a.spec;
        if (rc == 0)
            rc = open_queue(j, &q);
        cds_err err;
        int qrc = rc == 0 ? queue_enqueue(q, specs, n, out, &err) : 0;
        if (qrc != 0)
            rc = op_failed(j, q, qrc, &err);
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

/* ---- show, cancel, retry ------------------------------------------------- */

static const char usage_show[] =
    "usage: jobctl show ID\n"
    "Prints one job: type, queue, state, priority, attempts, times, worker, last error,\n"
    "dead reason, payload and result.  Exit 1 if there is no such job.\n";
static const char usage_cancel[] =
    "usage: jobctl cancel ID | SWEEP | SWEEP/MODEL\n"
    "Cancels a waiting, delayed, blocked or running job (a running job's worker loses its\n"
    "lease: its result is refused).  Jobs waiting on it (--after) go dead.  Exit 1 if there is\n"
    "no such job or it already finished (done, dead or cancelled).  A SWEEP id (not a number)\n"
    "cancels the sweep for good: every unfinished model stops, commits in flight are refused.\n"
    "SWEEP/MODEL (MODEL: the index jobctl status shows) cancels one model for good the same\n"
    "way; the sweep is done when no live model is left.  Exit 1 if the model is done, failed\n"
    "or cancelled already, or the sweep has no such model.\n";
static const char usage_retry[] =
    "usage: jobctl retry ID\n"
    "       jobctl retry SWEEP/MODEL [--from best|epoch-N|vN]\n"
    "Puts a dead or cancelled job back to waiting with its attempts and stalls reset, taking\n"
    "its unique key back.  Exit 1 if there is no such job, it is not dead or cancelled, or\n"
    "another live job holds its unique key.\n"
    "With SWEEP/MODEL, puts a failed model of a MOP sweep back (its attempts and stalls\n"
    "reset; a done sweep runs again): from its committed checkpoint, or with --from from an\n"
    "older one the model kept, read and checked first: best (its best epoch's), epoch-N\n"
    "(the end of epoch N) or vN (committed version N).  Run it where DATA_ROOT is mounted\n"
    "when using --from.  Exit 1 if the model is not failed or the checkpoint is not kept or\n"
    "not intact.\n";

/* Parses "CMD ID" with only the global options; returns 0, -1 for --help, or
 * an exit code. */
static int parse_id_command(jobctl *j, int argc, char **argv, const char *usage, const char **id)
{
    static const struct option opts[] = {GLOBAL_OPTIONS};
    int c = next_option(j, argc, argv, ":h", opts);
    if (c == NEXT_HELP)
        return fputs(usage, stdout), -1;
    if (c != NEXT_END)
        return EXIT_USAGE;
    if (want_args(j, argc, argv, 1, "needs a job ID, as printed by jobctl enqueue or jobctl list") != 0)
        return EXIT_USAGE;
    *id = argv[optind];
    return check_job_id(j, *id);
}

static int cmd_show(jobctl *j, int argc, char **argv)
{
    const char *id;
    queue_conn *q;
    int rc = parse_id_command(j, argc, argv, usage_show, &id);
    if (rc != 0 || (rc = open_queue(j, &q)) != 0)
        return rc < 0 ? EXIT_DONE : rc;
    cds_err err;
    json_t *job;
    int qrc = queue_show(q, id, &job, &err);
    if (qrc != 0)
        rc = op_failed(j, q, qrc, &err);
    else if (j->json)
        print_json(job);
    else
        fmt_show(stdout, job, cds_wall_ms());
    json_decref(job);
    queue_close(q);
    return rc;
}

static int sweep_state_command(jobctl *j, int argc, char **argv, const char *usage, const char *state);

/* The first argument after the command that is not an option or an
 * option's value (the global options with values are the only ones here). */
static const char *first_positional(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--redis") == 0 || strcmp(argv[i], "--prefix") == 0 ||
            strcmp(argv[i], "--redis-password-file") == 0) {
            i++;
            continue;
        }
        if (argv[i][0] != '-')
            return argv[i];
    }
    return NULL;
}

static int cmd_cancel(jobctl *j, int argc, char **argv)
{
    /* A job id is a number; anything else names a sweep. */
    const char *target = first_positional(argc, argv);
    int64_t num;
    if (target && cds_parse_i64(target, 1, INT64_MAX, &num) != 0)
        return sweep_state_command(j, argc, argv, usage_cancel, "cancelled");
    const char *id;
    queue_conn *q;
    int rc = parse_id_command(j, argc, argv, usage_cancel, &id);
    if (rc != 0 || (rc = open_queue(j, &q)) != 0)
        return rc < 0 ? EXIT_DONE : rc;
    cds_err err;
    char prev[16] = "";
    int qrc = queue_cancel(q, id, prev, &err);
    if (qrc != 0) {
        rc = op_failed(j, q, qrc, &err);
    } else if (j->json) {
        json_t *o = json_pack("{s:s, s:s, s:s}", "id", id, "state", "cancelled", "previous_state", prev);
        print_json(o);
        json_decref(o);
    } else {
        printf("cancelled job %s (it was %s)\n", id, prev);
    }
    queue_close(q);
    return rc;
}

static int parse_sweep_model(const jobctl *j, const char *arg, char sweep[QUEUE_SWEEP_ID_MAX], int *model);

/* `jobctl retry SWEEP/MODEL [--from ...]`. */
static int retry_model(jobctl *j, const char *arg, const char *from)
{
    char sweep[QUEUE_SWEEP_ID_MAX], path[QUEUE_MOP_PATH_MAX];
    int model = -1, epoch = 0;
    queue_conn *q;
    int rc = parse_sweep_model(j, arg, sweep, &model);
    if (rc != 0 || (rc = open_queue(j, &q)) != 0)
        return rc;
    cds_err err;
    int qrc = jobctl_sweep_retry(q, sweep, model, from, path, &epoch, &err);
    if (qrc != 0) {
        rc = op_failed(j, q, qrc, &err);
    } else if (j->json) {
        json_t *o = json_pack("{s:s, s:i, s:s, s:i, s:s}", "sweep", sweep, "model", model, "state", "idle", "epoch",
                              epoch, "from", path[0] ? path : "committed");
        print_json(o);
        json_decref(o);
    } else {
        printf("model %d of sweep %s is idle again, to train epoch %d from %s\n", model, sweep, epoch,
               path[0] ? path : "its committed checkpoint");
    }
    queue_close(q);
    return rc;
}

static int cmd_retry(jobctl *j, int argc, char **argv)
{
    enum { O_FROM = 403 };
    static const struct option opts[] = {{"from", required_argument, 0, O_FROM}, GLOBAL_OPTIONS};
    const char *from = NULL;
    int c;
    while ((c = next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(usage_retry, stdout), EXIT_DONE;
        if (c != O_FROM)
            return EXIT_USAGE;
        from = optarg;
    }
    if (want_args(j, argc, argv, 1, "needs a job ID, or SWEEP/MODEL for a failed model of a sweep") != 0)
        return EXIT_USAGE;
    const char *id = argv[optind];
    if (strchr(id, '/'))
        return retry_model(j, id, from);
    if (from)
        return usage_error(j, "--from is for a model of a sweep (jobctl retry SWEEP/MODEL --from best)");
    if (check_job_id(j, id) != 0)
        return EXIT_USAGE;
    queue_conn *q;
    int rc = open_queue(j, &q);
    if (rc != 0)
        return rc;
    cds_err err;
    int qrc = queue_retry(q, id, &err);
    if (qrc != 0) {
        rc = op_failed(j, q, qrc, &err);
    } else if (j->json) {
        json_t *o = json_pack("{s:s, s:s}", "id", id, "state", "waiting");
        print_json(o);
        json_decref(o);
    } else {
        printf("job %s is waiting again\n", id);
    }
    queue_close(q);
    return rc;
}

/* ---- list ---------------------------------------------------------------- */

static const char usage_list[] =
    "usage: jobctl list [--state STATE] [--queue Q] [--limit N]\n"
    "Lists jobs in one state, per queue in run order (waiting: by priority, then FIFO) or\n"
    "oldest first: id, queue, type, state, priority, attempts, and when it was queued, is\n"
    "due, started or finished.\n"
    "  --state STATE  waiting (default), delayed, blocked, active, done, dead or cancelled\n"
    "  --queue Q      one queue (default: every queue)\n"
    "  --limit N      at most N jobs, 1 to 100000 (default 100)\n";

static int check_state(const jobctl *j, const char *state)
{
    static const char *const states[] = {"waiting", "delayed", "blocked", "active", "done", "dead", "cancelled"};
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
        if (strcmp(state, states[i]) == 0)
            return 0;
    return fail(j, EXIT_USAGE, "unknown state '%.40s': use waiting, delayed, blocked, active, done, dead or "
                               "cancelled (see jobctl list --help)", state);
}

/* The library lists up to limit jobs per queue; keep limit in all. */
static void truncate_array(json_t *arr, size_t limit)
{
    while (json_array_size(arr) > limit)
        json_array_remove(arr, json_array_size(arr) - 1);
}

static int cmd_list(jobctl *j, int argc, char **argv)
{
    enum { L_STATE = OPT_COMMAND, L_QUEUE, L_LIMIT };
    static const struct option opts[] = {
        {"state", required_argument, 0, E_PAYLOAD},
        {"queue", required_argument, 0, E_SPEC},
        {"limit", required_argument, 0, E_QUEUE},
        GLOBAL_OPTIONS};
    const char *state = "waiting", *queue = NULL;
    int64_t limit = 100;
    int c = NEXT_END, rc = 0;
    while (rc == 0 && (c = next_option(j, argc, argv, ":h", opts)) >= 0) {
        if (c == L_STATE)
            state = optarg;
        else if (c == L_QUEUE)
            queue = optarg;
        else
            rc = parse_int_option(j, "--limit", optarg, 1, 100000, &limit);
    }
    if (rc != 0 || c == NEXT_BAD)
        return EXIT_USAGE;
    if (c == NEXT_HELP)
        return fputs(usage_list, stdout), EXIT_DONE;
    if (want_args(j, argc, argv, 0, "") != 0 || check_state(j, state) != 0 ||
        (queue && check_queue_name(j, queue) != 0))
        return EXIT_USAGE;
    queue_conn *q;
    if ((rc = open_queue(j, &q)) != 0)
        return rc;
    cds_err err;
    json_t *jobs;
    int qrc = queue_list(q, queue, state, (size_t)limit, &jobs, &err);
    if (qrc != 0) {
        rc = op_failed(j, q, qrc, &err);
    } else {
        truncate_array(jobs, (size_t)limit);
        if (j->json)
            print_json(jobs);
        else if (json_array_size(jobs) == 0)
            printf("no %s jobs%s%s under prefix %s\n", state, queue ? " in queue " : "", queue ? queue : "",
                   queue_prefix(q));
        else
            fmt_list(stdout, jobs, cds_wall_ms());
        json_decref(jobs);
    }
    queue_close(q);
    return rc;
}

/* ---- stats, workers ------------------------------------------------------ */

static const char usage_stats[] =
    "usage: jobctl stats\n"
    "One row per queue: how many jobs are in each state now, and the counters of jobs\n"
    "enqueued, retried and stalled since the queue was first used (--json adds the done,\n"
    "dead and cancelled counters, which outlive trimming).\n";
static const char usage_workers[] =
    "usage: jobctl workers\n"
    "Workers seen recently: id, alive (registration not expired), host, pid, queues, job in\n"
    "hand, state (idle, busy, draining; gone when not alive) and when last seen.\n";

/* Parses a command that takes only the global options. */
static int parse_no_args(jobctl *j, int argc, char **argv, const char *usage)
{
    static const struct option opts[] = {GLOBAL_OPTIONS};
    int c = next_option(j, argc, argv, ":h", opts);
    if (c == NEXT_HELP)
        return fputs(usage, stdout), -1;
    if (c != NEXT_END || want_args(j, argc, argv, 0, "") != 0)
        return EXIT_USAGE;
    return 0;
}

static int cmd_stats(jobctl *j, int argc, char **argv)
{
    queue_conn *q;
    int rc = parse_no_args(j, argc, argv, usage_stats);
    if (rc != 0 || (rc = open_queue(j, &q)) != 0)
        return rc < 0 ? EXIT_DONE : rc;
    cds_err err;
    json_t *stats;
    int qrc = queue_stats(q, &stats, &err);
    if (qrc != 0)
        rc = op_failed(j, q, qrc, &err);
    else if (j->json)
        print_json(stats);
    else if (json_object_size(stats) == 0)
        printf("no queues under prefix %s\n", queue_prefix(q));
    else
        fmt_stats(stdout, stats);
    json_decref(stats);
    queue_close(q);
    return rc;
}

static int cmd_workers(jobctl *j, int argc, char **argv)
{
    queue_conn *q;
    int rc = parse_no_args(j, argc, argv, usage_workers);
    if (rc != 0 || (rc = open_queue(j, &q)) != 0)
        return rc < 0 ? EXIT_DONE : rc;
    cds_err err;
    json_t *workers;
    int qrc = queue_workers(q, &workers, &err);
    if (qrc != 0)
        rc = op_failed(j, q, qrc, &err);
    else if (j->json)
        print_json(workers);
    else if (json_array_size(workers) == 0)
        printf("no workers under prefix %s\n", queue_prefix(q));
    else
        fmt_workers(stdout, workers, cds_wall_ms());
    json_decref(workers);
    queue_close(q);
    return rc;
}

/* ---- sweeps ------------------------------------------------------------------ */

static const char usage_results[] =
    "usage: jobctl results SWEEP\n"
    "       jobctl results [SWEEP] --check-db\n"
    "The leaderboard of a MOP sweep: every model ranked by the validation top-1 of its\n"
    "best epoch so far, with that epoch's top-5, validation and training loss (--json: every\n"
    "epoch's metrics of every model).\n"
    "--check-db: the sweep's rows for cds_results (every sweep's without SWEEP) that still\n"
    "wait in Redis for their database: how many, the oldest, and per database the failed\n"
    "tries, the last error and the next try; and the rows set aside because the database\n"
    "refused them.  Exit status: 0 none waits, 3 rows wait, 4 rows are set aside.\n";
static const char usage_status[] =
    "usage: jobctl status SWEEP [--watch | --follow]\n"
    "Progress of a MOP sweep: visits and evaluations done, the time left (estimated from\n"
    "the measured speed of each model, none before the first measurement) and the time so\n"
    "far; per model a bar of epochs and shards visited, its state, its best validation\n"
    "top-1 so far, and the visit in flight (rows done, rows/s) or the retry it waits for.\n"
    "  --watch   redraws it every 2 s until the sweep is finished (Ctrl-C to stop)\n"
    "  --follow  prints each epoch's metrics as they are recorded, a progress line every\n"
    "            15 s, failures, and the chosen model's test score; exits when the sweep is\n"
    "            finished: 0 when done, 1 when cancelled\n";
static const char usage_pause[] =
    "usage: jobctl pause SWEEP | SWEEP/MODEL\n"
    "Hands out no new model leases for the sweep, or for one model of it (MODEL: the index\n"
    "jobctl status shows); visits in flight still commit.  Exit 1 if the model is done,\n"
    "failed or cancelled, or the sweep has no such model.\n";
static const char usage_resume[] =
    "usage: jobctl resume SWEEP | SWEEP/MODEL\n"
    "Lets a paused sweep, or a paused model of it, go on.  Resuming the sweep does not resume\n"
    "models paused one by one: resume each with SWEEP/MODEL.  Exit 1 if the model is not\n"
    "paused.\n";

/* How jobctl status shows a sweep: once, redrawn, or as a log. */
enum { VIEW_ONCE = 0, VIEW_WATCH = 1, VIEW_FOLLOW = 2 };

/* One positional SWEEP id (and --watch or --follow when watch is not NULL:
 * *watch = VIEW_WATCH or VIEW_FOLLOW). */
static int parse_sweep_command(jobctl *j, int argc, char **argv, const char *usage, const char **sweep, int *watch)
{
    enum { O_WATCH = 400, O_FOLLOW = 404 };
    static const struct option opts[] = {{"watch", no_argument, 0, O_WATCH}, {"follow", no_argument, 0, O_FOLLOW},
                                         GLOBAL_OPTIONS};
    int c;
    while ((c = next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(usage, stdout), -1;
        if ((c == O_WATCH || c == O_FOLLOW) && !watch)
            return fail(j, EXIT_USAGE, "--%s is for jobctl status only", c == O_WATCH ? "watch" : "follow");
        if (c == O_WATCH || c == O_FOLLOW) {
            int want = c == O_WATCH ? VIEW_WATCH : VIEW_FOLLOW;
            if (*watch && *watch != want)
                return usage_error(j, "give --watch or --follow, not both");
            *watch = want;
            continue;
        }
        return EXIT_USAGE;
    }
    if (watch && *watch == VIEW_FOLLOW && j->json)
        return usage_error(j, "--follow prints lines for people: use jobctl status --json in a loop instead");
    if (want_args(j, argc, argv, 1, "needs a SWEEP id, as printed by jobctl enqueue sweep") != 0)
        return EXIT_USAGE;
    *sweep = argv[optind];
    return 0;
}

/* Splits "SWEEP/MODEL" into the sweep id (into sweep) and the model index;
 * returns 0 or a usage error. */
static int parse_sweep_model(const jobctl *j, const char *arg, char sweep[QUEUE_SWEEP_ID_MAX], int *model)
{
    const char *slash = strchr(arg, '/');
    size_t n = (size_t)(slash - arg);
    if (n < 1 || n >= QUEUE_SWEEP_ID_MAX ||
        strspn(arg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != n)
        return fail(j, EXIT_USAGE, "bad sweep id in '%.60s': give SWEEP/MODEL, SWEEP as jobctl enqueue sweep printed "
                                   "it (1 to %d letters, digits, '_' or '-')", arg, QUEUE_SWEEP_ID_MAX - 1);
    memcpy(sweep, arg, n);
    sweep[n] = '\0';
    int64_t m;
    if (cds_parse_i64(slash + 1, 0, INT32_MAX, &m) != 0)
        return fail(j, EXIT_USAGE, "bad model '%.40s' in '%.60s': give SWEEP/MODEL with MODEL a model index, 0 or "
                                   "more, as jobctl status %s shows it", slash + 1, arg, sweep);
    *model = (int)m;
    return 0;
}

/* `jobctl pause|resume|cancel SWEEP/MODEL`: one model's own state. */
static int model_state_command(jobctl *j, const char *arg, const char *state)
{
    char sweep[QUEUE_SWEEP_ID_MAX];
    int model = -1;
    queue_conn *q;
    int rc = parse_sweep_model(j, arg, sweep, &model);
    if (rc != 0 || (rc = open_queue(j, &q)) != 0)
        return rc;
    cds_err err;
    char prev[16] = "";
    int qrc = queue_mop_set_model_state(q, sweep, model, state, prev, &err);
    const char *shown = strcmp(state, "running") == 0 ? "resumed" : state;
    if (qrc != 0) {
        rc = op_failed(j, q, qrc, &err);
    } else if (j->json) {
        json_t *o = json_pack("{s:s, s:i, s:s, s:s}", "sweep", sweep, "model", model, "state", shown, "previous_state",
                              prev);
        print_json(o);
        json_decref(o);
    } else {
        printf("model %d of sweep %s is %s (it was %s)\n", model, sweep, shown, prev);
    }
    queue_close(q);
    return rc;
}

static int sweep_state_command(jobctl *j, int argc, char **argv, const char *usage, const char *state)
{
    const char *sweep = NULL;
    queue_conn *q;
    int rc = parse_sweep_command(j, argc, argv, usage, &sweep, NULL);
    if (rc != 0)
        return rc < 0 ? EXIT_DONE : rc;
    if (strchr(sweep, '/'))
        return model_state_command(j, sweep, state);
    if ((rc = open_queue(j, &q)) != 0)
        return rc;
    cds_err err;
    int qrc = queue_sweep_set_state(q, sweep, state, &err);
    if (qrc != 0)
        rc = op_failed(j, q, qrc, &err);
    else if (j->json) {
        json_t *o = json_pack("{s:s, s:s}", "sweep", sweep, "state", state);
        print_json(o);
        json_decref(o);
    } else
        printf("sweep %s is %s\n", sweep, state);
    queue_close(q);
    return rc;
}

static int cmd_pause(jobctl *j, int argc, char **argv) { return sweep_state_command(j, argc, argv, usage_pause, "paused"); }
static int cmd_resume(jobctl *j, int argc, char **argv) { return sweep_state_command(j, argc, argv, usage_resume, "running"); }

/* `jobctl status SWEEP --follow`: a log of the sweep as it goes, for a
 * terminal or a file (no screen redraws): each epoch's metrics once
 * recorded, a progress line every 15 s, failures, the test score. */
static int follow_sweep(jobctl *j, queue_conn *q, const char *sweep)
{
    json_t *before = NULL;
    int64_t next_line = 0, give_up = cds_mono_ms() + 60000;
    int rc = EXIT_DONE;
    for (;;) {
        cds_err err;
        json_t *now = NULL;
        int qrc = jobctl_sweep_load(q, sweep, &now, &err);
        if (qrc != 0 && queue_conn_broken(q) && cds_mono_ms() < give_up) {
            /* Redis restarting: keep following, trying once a second for
             * up to a minute; anything else ends it. */
            cds_sleep_ms(1000);
            queue_reconnect(q, &err);
            continue;
        }
        if (qrc != 0) {
            rc = op_failed(j, q, qrc, &err);
            break;
        }
        give_up = cds_mono_ms() + 60000;
        int64_t t = cds_wall_ms();
        jobctl_sweep_print_news(stdout, before, now, t);
        int finished = jobctl_sweep_finished(now);
        if (finished || cds_mono_ms() >= next_line) {
            jobctl_sweep_print_summary(stdout, now, t);
            next_line = cds_mono_ms() + 15000;
        }
        fflush(stdout);
        json_decref(before);
        before = now;
        if (finished) {
            const char *state = json_string_value(json_object_get(json_object_get(now, "sweep"), "state"));
            rc = state && strcmp(state, "cancelled") == 0 ? EXIT_REFUSED : EXIT_DONE;
            break;
        }
        cds_sleep_ms(1000);
    }
    json_decref(before);
    return rc;
}

/* Shows sweep: its status (status) or its leaderboard, once, redrawn
 * every 2 s until it is finished (VIEW_WATCH), or as a log (VIEW_FOLLOW). */
static int view_sweep(jobctl *j, const char *sweep, int status, int watch)
{
    queue_conn *q;
    int rc = open_queue(j, &q);
    if (rc != 0)
        return rc;
    if (watch == VIEW_FOLLOW) {
        rc = follow_sweep(j, q, sweep);
        queue_close(q);
        return rc;
    }
    for (;;) {
        cds_err err;
        json_t *s = NULL;
        int qrc = jobctl_sweep_load(q, sweep, &s, &err);
        if (qrc != 0) {
            rc = op_failed(j, q, qrc, &err);
            break;
        }
        const char *state = json_string_value(json_object_get(json_object_get(s, "sweep"), "state"));
        if (watch && isatty(1))
            fputs("\033[H\033[2J", stdout);
        if (j->json)
            print_json(s);
        else if (status)
            jobctl_sweep_print_status(stdout, s, cds_wall_ms());
        else
            jobctl_sweep_print_results(stdout, s);
        fflush(stdout);
        int finished = !state || jobctl_sweep_finished(s);
        json_decref(s);
        if (!watch || finished)
            break;
        cds_sleep_ms(2000);
    }
    queue_close(q);
    return rc;
}

/* jobctl results --check-db: statuses besides 0 (nothing waits), for cron;
 * apart from the 1 and 2 of every command (see the top of this file). */
enum { EXIT_ROWS_WAIT = 3, EXIT_ROWS_ASIDE = 4 };

/* An age or a wait from the report's server time, as "42s ago" / "in 42s". */
static void report_when(char *buf, size_t n, int64_t now, const json_t *ms, int future)
{
    char d[32];
    if (!json_is_integer(ms)) {
        snprintf(buf, n, "?");
        return;
    }
    int64_t delta = future ? json_integer_value(ms) - now : now - json_integer_value(ms);
    fmt_duration(d, sizeof d, delta > 0 ? delta : 0);
    snprintf(buf, n, future ? "in %s" : "%s ago", d);
}

static void print_check_db(FILE *out, const json_t *rep)
{
    const char *sweep = json_string_value(json_object_get(rep, "sweep"));
    int64_t now = json_integer_value(json_object_get(rep, "now_ms"));
    json_int_t waiting = json_integer_value(json_object_get(rep, "waiting"));
    char of[64] = "", when[48], when2[48];
    if (sweep)
        snprintf(of, sizeof of, " of sweep %s", sweep);
    if (waiting == 0) {
        fprintf(out, "no cds_results rows%s wait in Redis for their database\n", of);
    } else {
        report_when(when, sizeof when, now, json_object_get(rep, "oldest_ms"), 0);
        fprintf(out, "%lld cds_results rows%s wait in Redis for their database (the oldest recorded %s)\n",
                (long long)waiting, of, when);
    }
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(rep, "databases"), i, d) {
        const char *dsn = json_string_value(json_object_get(d, "dsn"));
        if (dsn && *dsn)
            fprintf(out, "  database '%s'", dsn);
        else
            fprintf(out, "  the database of each worker's libpq defaults (PGHOST, PGDATABASE...)");
        fprintf(out, ": %lld rows", (long long)json_integer_value(json_object_get(d, "waiting")));
        json_int_t failures = json_integer_value(json_object_get(d, "failures"));
        if (failures > 0) {
            report_when(when, sizeof when, now, json_object_get(d, "failing_since_ms"), 0);
            report_when(when2, sizeof when2, now, json_object_get(d, "last_error_ms"), 0);
            fprintf(out, "; %lld failed tries in a row, failing since %s; last error (%s): %s", (long long)failures,
                    when, when2, json_string_value(json_object_get(d, "last_error")) ?: "?");
        }
        const char *by = json_string_value(json_object_get(d, "claimed_by"));
        int64_t next = json_integer_value(json_object_get(d, "next_try_ms"));
        report_when(when, sizeof when, now, json_object_get(d, "next_try_ms"), 1);
        if (by)
            fprintf(out, "; being written by worker %s\n", by);
        else if (next > now)
            fprintf(out, "; next try %s\n", when);
        else
            fprintf(out, "; due now (is a MOP worker running?)\n");
    }
    json_t *aside = json_object_get(rep, "aside");
    if (json_array_size(aside))
        fprintf(out, "%zu cds_results rows%s set aside: the database refused them; they are kept in Redis "
                "(results:aside) and not retried\n", json_array_size(aside), of);
    json_array_foreach(aside, i, d) {
        report_when(when, sizeof when, now, json_object_get(d, "aside_ms"), 0);
        if (json_is_string(json_object_get(d, "sweep")))
            fprintf(out, "  sweep %s model %lld epoch %lld", json_string_value(json_object_get(d, "sweep")),
                    (long long)json_integer_value(json_object_get(d, "model")),
                    (long long)json_integer_value(json_object_get(d, "epoch")));
        else
            fprintf(out, "  an unreadable row");
        fprintf(out, ", set aside %s after %lld tries: %s\n", when,
                (long long)json_integer_value(json_object_get(d, "attempts")),
                json_string_value(json_object_get(d, "error")) ?: "?");
    }
}

/* `jobctl results [SWEEP] --check-db`. */
static int check_db(jobctl *j, const char *sweep)
{
    queue_conn *q;
    int rc = open_queue(j, &q);
    if (rc != 0)
        return rc;
    cds_err err;
    json_t *rep = NULL, *sw = NULL;
    int qrc = sweep ? queue_sweep_get(q, sweep, &sw, &err) : 0;
    json_decref(sw);
    if (qrc == 0)
        qrc = queue_outbox_report(q, sweep, &rep, &err);
    if (qrc != 0) {
        rc = op_failed(j, q, qrc, &err);
    } else {
        if (j->json)
            print_json(rep);
        else
            print_check_db(stdout, rep);
        rc = json_integer_value(json_object_get(rep, "set_aside")) > 0 ? EXIT_ROWS_ASIDE
             : json_integer_value(json_object_get(rep, "waiting")) > 0 ? EXIT_ROWS_WAIT
                                                                        : EXIT_DONE;
    }
    json_decref(rep);
    queue_close(q);
    return rc;
}

static int cmd_results(jobctl *j, int argc, char **argv)
{
    enum { O_CHECK_DB = 401, O_WATCH, O_FOLLOW };
    static const struct option opts[] = {{"check-db", no_argument, 0, O_CHECK_DB}, {"watch", no_argument, 0, O_WATCH},
                                         {"follow", no_argument, 0, O_FOLLOW}, GLOBAL_OPTIONS};
    int c, check = 0;
    while ((c = next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(usage_results, stdout), EXIT_DONE;
        if (c == O_WATCH || c == O_FOLLOW)
            return fail(j, EXIT_USAGE, "--%s is for jobctl status only", c == O_WATCH ? "watch" : "follow");
        if (c != O_CHECK_DB)
            return EXIT_USAGE;
        check = 1;
    }
    if (check) {
        if (argc - optind > 1)
            return want_args(j, argc, argv, 1, "");
        return check_db(j, argc - optind == 1 ? argv[optind] : NULL);
    }
    if (want_args(j, argc, argv, 1, "needs a SWEEP id, as printed by jobctl enqueue sweep") != 0)
        return EXIT_USAGE;
    return view_sweep(j, argv[optind], 0, VIEW_ONCE);
}

static const char usage_plot[] =
    "usage: jobctl plot SWEEP --out FILE.png|FILE.svg\n"
    "Draws the learning curves of every model of a sweep by epoch: validation top-1, and\n"
    "training (solid) and validation (dashed) loss, with gnuplot; once the sweep is scored,\n"
    "the chosen model is marked at its best epoch with its test top-1.\n";

static int cmd_plot(jobctl *j, int argc, char **argv)
{
    enum { O_OUT = 402 };
    static const struct option opts[] = {{"out", required_argument, 0, O_OUT}, GLOBAL_OPTIONS};
    const char *out = NULL;
    int c;
    while ((c = next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(usage_plot, stdout), EXIT_DONE;
        if (c != O_OUT)
            return EXIT_USAGE;
        out = optarg;
    }
    if (want_args(j, argc, argv, 1, "needs the SWEEP id to plot") != 0)
        return EXIT_USAGE;
    if (!out)
        return usage_error(j, "plot needs --out FILE.png or --out FILE.svg");
    queue_conn *q;
    int rc = open_queue(j, &q);
    if (rc != 0)
        return rc;
    cds_err err;
    json_t *s = NULL;
    int qrc = jobctl_sweep_load(q, argv[optind], &s, &err);
    if (qrc != 0)
        rc = op_failed(j, q, qrc, &err);
    else if (jobctl_sweep_plot(s, out, &err) != 0)
        rc = fail(j, EXIT_REFUSED, "%s", err.msg);
    else if (!j->json)
        printf("%s\n", out);
    json_decref(s);
    queue_close(q);
    return rc;
}

static const char usage_replay[] =
    "usage: jobctl replay SWEEP [--id NEW]\n"
    "Creates a sweep (NEW, or the next s<N>) that trains the models of the finished SWEEP\n"
    "again, each visiting its shards in the order SWEEP's schedule recorded; with the same\n"
    "worker --threads its checkpoints are bit-identical to SWEEP's.  Prints the new id.\n";

static int cmd_replay(jobctl *j, int argc, char **argv)
{
    enum { O_ID = 401 };
    static const struct option opts[] = {{"id", required_argument, 0, O_ID}, GLOBAL_OPTIONS};
    const char *new_id = NULL;
    int c;
    while ((c = next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(usage_replay, stdout), EXIT_DONE;
        if (c != O_ID)
            return EXIT_USAGE;
        new_id = optarg;
    }
    if (want_args(j, argc, argv, 1, "needs the SWEEP id to replay") != 0)
        return EXIT_USAGE;
    if (new_id && check_sweep_id(j, new_id) != 0)
        return EXIT_USAGE;
    const char *orig = argv[optind];
    queue_conn *q;
    int rc = open_queue(j, &q);
    if (rc != 0)
        return rc;
    char id[QUEUE_SWEEP_ID_MAX] = "";
    if (new_id)
        snprintf(id, sizeof id, "%s", new_id);
    else
        rc = new_sweep_id(j, q, id);
    cds_err err;
    int qrc = rc == 0 ? jobctl_sweep_replay(q, orig, id, &err) : 0;
    if (rc == 0 && qrc != 0)
        rc = op_failed(j, q, qrc, &err);
    else if (rc == 0)
        printf("%s\n", id);
    queue_close(q);
    return rc;
}
static int cmd_status(jobctl *j, int argc, char **argv)
{
    const char *sweep = NULL;
    int watch = VIEW_ONCE;
    int rc = parse_sweep_command(j, argc, argv, usage_status, &sweep, &watch);
    if (rc != 0)
        return rc < 0 ? EXIT_DONE : rc;
    return view_sweep(j, sweep, 1, watch);
}

/* ---- main ---------------------------------------------------------------- */

/* usage_main ends with the heading of the job types, which print_main_help
 * lists from the table the worker shares. */
static const char usage_main[] =
    "usage: jobctl [--redis URL] [--redis-password-file FILE] [--prefix P] [--json] COMMAND ...\n"
    "The Cerebro-DS job queue from a shell or cron.\n"
    "\n"
    "commands:\n"
    "  enqueue TYPE [options]  add a job of TYPE and print its id (jobctl enqueue --help)\n"
    "  enqueue etl --spec FILE.json [--queue Q] [--priority N]\n"
    "                          plan an unload of a table into shards, enqueue its jobs and\n"
    "                          print the finishing job's id (jobctl enqueue etl --help)\n"
    "  enqueue sweep --spec FILE.json [--id ID] [--unique KEY]\n"
    "                          create a model-selection sweep and print its id\n"
    "                          (jobctl enqueue sweep --help)\n"
    "  show ID                 one job: state, attempts, times, error, payload\n"
    "  list [--state S] [--queue Q] [--limit N]\n"
    "                          jobs in a state (default waiting)\n"
    "  cancel ID               cancel a waiting, delayed, blocked or running job\n"
    "  retry ID                put a dead or cancelled job back to waiting\n"
    "  retry SWEEP/MODEL [--from best|epoch-N|vN]\n"
    "                          put a failed model of a sweep back\n"
    "  stats                   jobs per state and counters, per queue\n"
    "  workers                 workers seen recently, alive or not\n"
    "  status SWEEP [--watch|--follow]\n"
    "                          progress of a MOP sweep, per model, and the time left\n"
    "  results SWEEP           the leaderboard of a MOP sweep\n"
    "  results [SWEEP] --check-db\n"
    "                          cds_results rows still waiting in Redis for their database\n"
    "                          (exit 3 when rows wait, 4 when rows were set aside)\n"
    "  replay SWEEP [--id NEW] train a finished sweep again in its recorded order\n"
    "  plot SWEEP --out F.png  learning curves of every model (png or svg)\n"
    "  pause SWEEP, resume SWEEP, cancel SWEEP\n"
    "                          stop handing out models / go on / stop the sweep for good\n"
    "  pause|resume|cancel SWEEP/MODEL\n"
    "                          the same for one model (its index in jobctl status)\n"
    "  help [COMMAND]          this help, or a command's (also: jobctl COMMAND --help)\n"
    "\n"
    "global options (before or after the command):\n"
    "  --redis URL                 redis://[[user]:password@]host[:port][/db] or\n"
    "                              unix://[[user]:password@]/path/to.sock[?db=N]\n"
    "                              (default: $CDS_REDIS_URL, else redis://127.0.0.1:6379/0)\n"
    "  --redis-password-file FILE  the password, from FILE's first line (not seen by ps)\n"
    "  --prefix P                  the deployment's key prefix (default cds:)\n"
    "  --json                      print JSON instead of a table\n"
    "\n"
    "exit status: 0 done (a duplicate --unique enqueue too); 1 no such job, or its state\n"
    "refuses the operation; 2 bad usage or input, or Redis unreachable or refusing AUTH, or\n"
    "(for the commands that write: enqueue, cancel, retry, pause, resume, replay) a Redis\n"
    "whose maxmemory-policy can evict keys.\n"
    "\n"
    "job types (enqueue TYPE):\n";

static void print_main_help(void)
{
    fputs(usage_main, stdout);
    print_job_types(stdout);
}

enum { READS = 0, WRITES = 1 };

typedef struct command {
    const char *name;
    int (*run)(jobctl *j, int argc, char **argv);
    const char *usage; /* NULL: enqueue, whose help depends on its TYPE */
    int writes;        /* WRITES: refused on a Redis that can evict keys */
} command;

static const command commands[] = {
    {"enqueue", cmd_enqueue, NULL, WRITES},           {"show", cmd_show, usage_show, READS},
    {"list", cmd_list, usage_list, READS},            {"cancel", cmd_cancel, usage_cancel, WRITES},
    {"retry", cmd_retry, usage_retry, WRITES},        {"stats", cmd_stats, usage_stats, READS},
    {"workers", cmd_workers, usage_workers, READS},   {"status", cmd_status, usage_status, READS},
    {"results", cmd_results, usage_results, READS},   {"pause", cmd_pause, usage_pause, WRITES},
    {"resume", cmd_resume, usage_resume, WRITES},     {"replay", cmd_replay, usage_replay, WRITES},
    {"plot", cmd_plot, usage_plot, READS},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(name, commands[i].name) == 0)
            return &commands[i];
    return NULL;
}

/* jobctl help [COMMAND [KIND]] */
static int print_help(const jobctl *j, int argc, char **argv)
{
    if (argc < 2)
        return print_main_help(), EXIT_DONE;
    const command *c = find_command(argv[1]);
    if (!c)
        return fail(j, EXIT_USAGE, "unknown command '%.40s': use enqueue, show, list, cancel, retry, stats, workers, status, results, replay, plot, pause or resume "
                                   "(see jobctl --help)", argv[1]);
    if (c->usage)
        fputs(c->usage, stdout);
    else
        print_enqueue_help(argc > 2 ? argv[2] : NULL);
    return EXIT_DONE;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {GLOBAL_OPTIONS};
    jobctl j = {0};
    opterr = 0;
    optind = 0;
    int c = next_option(&j, argc, argv, "+:h", opts); /* "+": stop at the command */
    if (c == NEXT_HELP)
        return print_main_help(), EXIT_DONE;
    if (c != NEXT_END)
        return EXIT_USAGE;
    if (optind >= argc)
        return fail(&j, EXIT_USAGE, "no command given: use enqueue, show, list, cancel, retry, stats, workers, status, results, replay, plot, pause or resume "
                                    "(see jobctl --help)");
    int first = optind;
    if (strcmp(argv[first], "help") == 0)
        return print_help(&j, argc - first, argv + first);
    const command *cmd = find_command(argv[first]);
    if (!cmd)
        return fail(&j, EXIT_USAGE, "unknown command '%.40s': use enqueue, show, list, cancel, retry, stats, workers, status, results, replay, plot, pause or resume "
                                    "(see jobctl --help)", argv[first]);
    j.cmd = cmd->name;
    j.writes = cmd->writes;
    optind = 0; /* a fresh scan (GNU getopt: 0 also resets its internal state) */
    return cmd->run(&j, argc - first, argv + first);
}
