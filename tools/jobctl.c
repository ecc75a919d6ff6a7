/* jobctl: the job queue from a shell or from cron (docs/jobctl.md).
 *
 *   jobctl [--redis URL] [--redis-password-file FILE] [--prefix P] [--json]
 *          COMMAND ARGS...
 *
 * Structure.  main() reads the global options that come before the command
 * (getopt_long with "+", so it stops at the command word), finds the command
 * in commands[] and hands it the rest of argv.  Each jobctl_cmd_*() (one
 * file per family, see jobctl.h) parses its own options with
 * jobctl_next_option(), over a table that ends with GLOBAL_OPTIONS, so the
 * global options are accepted after the command too; jobctl_next_option()
 * stores those in the struct jobctl, and common/cds_cli refuses abbreviated
 * option names and words the usage errors as every tool does.  A command then checks
 * everything it can without Redis (numbers, JSON, names, ids), connects
 * (jobctl_open_queue), makes one library call, and prints the result: the library's
 * JSON with --json, else a table or a job sheet (jobctl_fmt.c).  Two enqueue
 * types are not plain jobs: `etl` plans an unload and enqueues its jobs
 * (etl_queue.h), and `sweep` expands a sweep spec (sweep_spec.h), pins the
 * dataset's version from its record and creates the sweep (queue_mop.h).
 * Every other TYPE must be in the job-type table the worker runs by
 * (queue_jobtype.h), and its payload pass that type's check, before Redis is
 * contacted: a job no worker could run is never enqueued.
 *
 * Writing.  commands[] marks the commands that write (enqueue, cancel,
 * retry, pause, resume, replay); for those jobctl_open_queue refuses a Redis whose
 * maxmemory-policy can evict keys, with the worker's message, before the
 * first write.  The others only read, and work on any Redis.
 *
 * Errors.  Every failure is one line on stderr, "jobctl: <what went wrong>
 * (<how to fix it>)", from jobctl_fail(), and an exit status:
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
 * redact the password of a URL; jobctl_fail() passes them through.  jobctl never
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

#include "cds_util.h"
#include "jobctl.h"
#include "queue_jobtype.h"

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
int jobctl_fail(const jobctl *j, int code, const char *fmt, ...)
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
int jobctl_usage(const jobctl *j, const char *what)
{
    if (j->cmd)
        return jobctl_fail(j, EXIT_USAGE, "%s (see jobctl %s --help)", what, j->cmd);
    return jobctl_fail(j, EXIT_USAGE, "%s (see jobctl --help)", what);
}

/* ---- options ------------------------------------------------------------- */

/* Returns the next option of the command (its code), NEXT_END, NEXT_HELP, or
 * NEXT_BAD.  A call with another table or argv than the last starts a new
 * scan (each command parses its argv once, after main parsed its own).
 * Global options are stored in j and skipped.  cds_cli refuses
 * abbreviations ("--redis-pass" for --redis-password-file): a misspelt
 * option must not quietly take a password as a file name. */
int jobctl_next_option(jobctl *j, int argc, char **argv, const char *shortopts, const struct option *opts)
{
    if (j->cli.opts != opts || j->cli.argv != argv)
        cds_cli_init(&j->cli, "jobctl", NULL, argc, argv, shortopts, opts);
    for (;;) {
        int c = cds_cli_next(&j->cli);
        switch (c) {
        case CDS_CLI_END: return NEXT_END;
        case CDS_CLI_BAD: jobctl_usage(j, j->cli.msg); return NEXT_BAD;
        case 'h':
        case OPT_HELP: return NEXT_HELP;
        case OPT_REDIS: j->url = j->cli.arg; break;
        case OPT_PASSWORD_FILE: j->password_file = j->cli.arg; break;
        case OPT_PREFIX: j->prefix = j->cli.arg; break;
        case OPT_JSON: j->json = 1; break;
        default: return c;
        }
    }
}

/* Strict whole number in [min, max] for option opt. */
int jobctl_parse_int(const jobctl *j, const char *opt, const char *s, int64_t min, int64_t max,
                            int64_t *out)
{
    char what[200];
    if (cds_parse_i64(s, min, max, out) == 0)
        return 0;
    snprintf(what, sizeof what, "bad %s '%.40s': give a whole number from %lld to %lld", opt, s, (long long)min,
             (long long)max);
    return jobctl_usage(j, what);
}

/* Seconds, decimals allowed (2.5), as milliseconds; 0 to ten years. */
int jobctl_parse_seconds(const jobctl *j, const char *opt, const char *s, int64_t *ms)
{
    char what[200];
    double v;
    if (cds_parse_double(s, &v) == 0 && v >= 0 && v <= 10.0 * 365 * 86400) {
        *ms = (int64_t)llround(v * 1000.0);
        return 0;
    }
    snprintf(what, sizeof what, "bad %s '%.40s': give seconds from 0 to 315360000, decimals allowed (e.g. 2.5)",
             opt, s);
    return jobctl_usage(j, what);
}

/* Job ids are what enqueue printed: positive integers. */
int jobctl_check_job_id(const jobctl *j, const char *id)
{
    int64_t v;
    if (cds_parse_i64(id, 1, INT64_MAX, &v) == 0)
        return 0;
    return jobctl_fail(j, EXIT_USAGE, "bad job id '%.40s': job ids are positive integers, as printed by jobctl enqueue "
                               "(see jobctl list)", id);
}

/* The library checks queue names as part of a job spec. */
int jobctl_check_queue_name(const jobctl *j, const char *queue)
{
    queue_job_spec s;
    cds_err err;
    queue_job_spec_init(&s);
    s.type = "jobctl.check";
    s.queue = queue;
    if (queue_job_spec_check(&s, &err) == 0)
        return 0;
    return jobctl_fail(j, EXIT_USAGE, "%s", err.msg);
}

/* Exactly n positional arguments after the options; missing says what the
 * command needs ("needs a job ID"). */
int jobctl_want_args(const jobctl *j, int argc, char **argv, int n, const char *missing)
{
    char msg[200];
    if (argc - optind == n)
        return 0;
    if (argc - optind < n)
        snprintf(msg, sizeof msg, "%s %s", j->cmd, missing);
    else
        snprintf(msg, sizeof msg, "unexpected argument '%.40s'", argv[optind + n]);
    return jobctl_usage(j, msg);
}

/* ---- Redis --------------------------------------------------------------- */

/* Connects, or prints why not; returns 0 or an exit code (*q is NULL then).
 * A command that writes first checks the server's maxmemory-policy, as the
 * worker does and with its message: a Redis that can evict keys would lose
 * what the command writes without a word, so it is refused before anything
 * is written.  Commands that only read work on such a Redis, to look at
 * what is there. */
int jobctl_open_queue(const jobctl *j, queue_conn **q)
{
    cds_err err;
    *q = NULL;
    queue_opts o = {
        .url = effective_url(j), .password_file = j->password_file, .prefix = j->prefix, .timeout_ms = 5000,
        .writes = j->writes};
    *q = queue_connect(&o, &err);
    if (!*q)
        return jobctl_fail(j, EXIT_USAGE, "%s", err.msg);
    return 0;
}

/* Reports a failed library call: 1 when Redis answered (no such job, a state
 * that refuses), 2 when it could not be reached. */
int jobctl_op_failed(const jobctl *j, const queue_conn *q, int rc, const cds_err *err)
{
    int code = rc != QUEUE_NOT_FOUND && queue_conn_broken(q) ? EXIT_USAGE : EXIT_REFUSED;
    return jobctl_fail(j, code, "%s", err->msg);
}

void jobctl_print_json(const json_t *v)
{
    json_dumpf(v, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
    fputc('\n', stdout);
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
    jobctl_print_job_types(stdout);
}

enum { READS = 0, WRITES = 1 };

typedef struct command {
    const char *name;
    int (*run)(jobctl *j, int argc, char **argv);
    const char *usage; /* NULL: enqueue, whose help depends on its TYPE */
    int writes;        /* WRITES: refused on a Redis that can evict keys */
} command;

static const command commands[] = {
    {"enqueue", jobctl_cmd_enqueue, NULL, WRITES},           {"show", jobctl_cmd_show, jobctl_usage_show, READS},
    {"list", jobctl_cmd_list, jobctl_usage_list, READS},            {"cancel", jobctl_cmd_cancel, jobctl_usage_cancel, WRITES},
    {"retry", jobctl_cmd_retry, jobctl_usage_retry, WRITES},        {"stats", jobctl_cmd_stats, jobctl_usage_stats, READS},
    {"workers", jobctl_cmd_workers, jobctl_usage_workers, READS},   {"status", jobctl_cmd_status, jobctl_usage_status, READS},
    {"results", jobctl_cmd_results, jobctl_usage_results, READS},   {"pause", jobctl_cmd_pause, jobctl_usage_pause, WRITES},
    {"resume", jobctl_cmd_resume, jobctl_usage_resume, WRITES},     {"replay", jobctl_cmd_replay, jobctl_usage_replay, WRITES},
    {"plot", jobctl_cmd_plot, jobctl_usage_plot, READS},            {"export", jobctl_cmd_export, jobctl_usage_export, READS},
    {"top", jobctl_cmd_top, jobctl_usage_top, READS},              {"simulate", jobctl_cmd_simulate, jobctl_usage_simulate, READS},
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
        return jobctl_fail(j, EXIT_USAGE, "unknown command '%.40s': use enqueue, show, list, cancel, retry, stats, workers, status, results, replay, plot, pause or resume "
                                   "(see jobctl --help)", argv[1]);
    if (c->usage)
        fputs(c->usage, stdout);
    else
        jobctl_print_enqueue_help(argc > 2 ? argv[2] : NULL);
    return EXIT_DONE;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {GLOBAL_OPTIONS};
    jobctl j = {0};
    int c = jobctl_next_option(&j, argc, argv, "+:h", opts); /* "+": stop at the command */
    if (c == NEXT_HELP)
        return print_main_help(), EXIT_DONE;
    if (c != NEXT_END)
        return EXIT_USAGE;
    if (optind >= argc)
        return jobctl_fail(&j, EXIT_USAGE, "no command given: use enqueue, show, list, cancel, retry, stats, workers, status, results, replay, plot, pause or resume "
                                    "(see jobctl --help)");
    int first = optind;
    if (strcmp(argv[first], "help") == 0)
        return print_help(&j, argc - first, argv + first);
    const command *cmd = find_command(argv[first]);
    if (!cmd)
        return jobctl_fail(&j, EXIT_USAGE, "unknown command '%.40s': use enqueue, show, list, cancel, retry, stats, workers, status, results, replay, plot, pause or resume "
                                    "(see jobctl --help)", argv[first]);
    j.cmd = cmd->name;
    j.writes = cmd->writes;
    return cmd->run(&j, argc - first, argv + first);
}
