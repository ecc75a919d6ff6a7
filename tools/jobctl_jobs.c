/* jobctl_jobs: the commands on queue jobs: show, cancel, retry, list,
 * stats, workers (docs/jobctl.md).
 *
 * Each parses its arguments with jobctl_next_option, checks the ids and
 * names it can without Redis, connects, makes one library call and prints
 * the library's JSON (--json) or a table or a job sheet (jobctl_fmt.c).
 * cancel and retry also take a sweep (SWEEP, SWEEP/MODEL): a job id is a
 * number, anything else names a sweep, and those are handed to the sweep
 * commands (jobctl_sweep_cmds.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobctl.h"
#include "cds_util.h"
#include "jobctl_fmt.h"
#include "jobctl_sweep.h"

/* ---- show, cancel, retry ------------------------------------------------- */

const char jobctl_usage_show[] =
    "usage: jobctl show ID\n"
    "Prints one job: type, queue, state, priority, attempts, times, worker, last error,\n"
    "dead reason, payload and result.  Exit 1 if there is no such job.\n";
const char jobctl_usage_cancel[] =
    "usage: jobctl cancel ID | SWEEP | SWEEP/MODEL\n"
    "Cancels a waiting, delayed, blocked or running job (a running job's worker loses its\n"
    "lease: its result is refused).  Jobs waiting on it (--after) go dead.  Exit 1 if there is\n"
    "no such job or it already finished (done, dead or cancelled).  A SWEEP id (not a number)\n"
    "cancels the sweep for good: every unfinished model stops, commits in flight are refused.\n"
    "SWEEP/MODEL (MODEL: the index jobctl status shows) cancels one model for good the same\n"
    "way; the sweep is done when no live model is left.  Exit 1 if the model is done, failed\n"
    "or cancelled already, or the sweep has no such model.\n";
const char jobctl_usage_retry[] =
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
    int c = jobctl_next_option(j, argc, argv, ":h", opts);
    if (c == NEXT_HELP)
        return fputs(usage, stdout), -1;
    if (c != NEXT_END)
        return EXIT_USAGE;
    if (jobctl_want_args(j, argc, argv, 1, "needs a job ID, as printed by jobctl enqueue or jobctl list") != 0)
        return EXIT_USAGE;
    *id = argv[optind];
    return jobctl_check_job_id(j, *id);
}

int jobctl_cmd_show(jobctl *j, int argc, char **argv)
{
    const char *id;
    queue_conn *q;
    int rc = parse_id_command(j, argc, argv, jobctl_usage_show, &id);
    if (rc != 0 || (rc = jobctl_open_queue(j, &q)) != 0)
        return rc < 0 ? EXIT_DONE : rc;
    cds_err err;
    json_t *job;
    int qrc = queue_show(q, id, &job, &err);
    if (qrc != 0)
        rc = jobctl_op_failed(j, q, qrc, &err);
    else if (j->json)
        jobctl_print_json(job);
    else
        fmt_show(stdout, job, cds_wall_ms());
    json_decref(job);
    queue_close(q);
    return rc;
}

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

int jobctl_cmd_cancel(jobctl *j, int argc, char **argv)
{
    /* A job id is a number; anything else names a sweep. */
    const char *target = first_positional(argc, argv);
    int64_t num;
    if (target && cds_parse_i64(target, 1, INT64_MAX, &num) != 0)
        return jobctl_sweep_state_command(j, argc, argv, jobctl_usage_cancel, "cancelled");
    const char *id;
    queue_conn *q;
    int rc = parse_id_command(j, argc, argv, jobctl_usage_cancel, &id);
    if (rc != 0 || (rc = jobctl_open_queue(j, &q)) != 0)
        return rc < 0 ? EXIT_DONE : rc;
    cds_err err;
    char prev[16] = "";
    int qrc = queue_cancel(q, id, prev, &err);
    if (qrc != 0) {
        rc = jobctl_op_failed(j, q, qrc, &err);
    } else if (j->json) {
        json_t *o = json_pack("{s:s, s:s, s:s}", "id", id, "state", "cancelled", "previous_state", prev);
        jobctl_print_json(o);
        json_decref(o);
    } else {
        printf("cancelled job %s (it was %s)\n", id, prev);
    }
    queue_close(q);
    return rc;
}

/* `jobctl retry SWEEP/MODEL [--from ...]`. */
static int retry_model(jobctl *j, const char *arg, const char *from)
{
    char sweep[QUEUE_SWEEP_ID_MAX], path[QUEUE_MOP_PATH_MAX];
    int model = -1, epoch = 0;
    queue_conn *q;
    int rc = jobctl_parse_sweep_model(j, arg, sweep, &model);
    if (rc != 0 || (rc = jobctl_open_queue(j, &q)) != 0)
        return rc;
    cds_err err;
    int qrc = jobctl_sweep_retry(q, sweep, model, from, path, &epoch, &err);
    if (qrc != 0) {
        rc = jobctl_op_failed(j, q, qrc, &err);
    } else if (j->json) {
        json_t *o = json_pack("{s:s, s:i, s:s, s:i, s:s}", "sweep", sweep, "model", model, "state", "idle", "epoch",
                              epoch, "from", path[0] ? path : "committed");
        jobctl_print_json(o);
        json_decref(o);
    } else {
        printf("model %d of sweep %s is idle again, to train epoch %d from %s\n", model, sweep, epoch,
               path[0] ? path : "its committed checkpoint");
    }
    queue_close(q);
    return rc;
}

int jobctl_cmd_retry(jobctl *j, int argc, char **argv)
{
    enum { O_FROM = 403 };
    static const struct option opts[] = {{"from", required_argument, 0, O_FROM}, GLOBAL_OPTIONS};
    const char *from = NULL;
    int c;
    while ((c = jobctl_next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(jobctl_usage_retry, stdout), EXIT_DONE;
        if (c != O_FROM)
            return EXIT_USAGE;
        from = optarg;
    }
    if (jobctl_want_args(j, argc, argv, 1, "needs a job ID, or SWEEP/MODEL for a failed model of a sweep") != 0)
        return EXIT_USAGE;
    const char *id = argv[optind];
    if (strchr(id, '/'))
        return retry_model(j, id, from);
    if (from)
        return jobctl_usage(j, "--from is for a model of a sweep (jobctl retry SWEEP/MODEL --from best)");
    if (jobctl_check_job_id(j, id) != 0)
        return EXIT_USAGE;
    queue_conn *q;
    int rc = jobctl_open_queue(j, &q);
    if (rc != 0)
        return rc;
    cds_err err;
    int qrc = queue_retry(q, id, &err);
    if (qrc != 0) {
        rc = jobctl_op_failed(j, q, qrc, &err);
    } else if (j->json) {
        json_t *o = json_pack("{s:s, s:s}", "id", id, "state", "waiting");
        jobctl_print_json(o);
        json_decref(o);
    } else {
        printf("job %s is waiting again\n", id);
    }
    queue_close(q);
    return rc;
}

/* ---- list ---------------------------------------------------------------- */

const char jobctl_usage_list[] =
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
    return jobctl_fail(j, EXIT_USAGE, "unknown state '%.40s': use waiting, delayed, blocked, active, done, dead or "
                               "cancelled (see jobctl list --help)", state);
}

/* The library lists up to limit jobs per queue; keep limit in all. */
static void truncate_array(json_t *arr, size_t limit)
{
    while (json_array_size(arr) > limit)
        json_array_remove(arr, json_array_size(arr) - 1);
}

int jobctl_cmd_list(jobctl *j, int argc, char **argv)
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
    while (rc == 0 && (c = jobctl_next_option(j, argc, argv, ":h", opts)) >= 0) {
        if (c == L_STATE)
            state = optarg;
        else if (c == L_QUEUE)
            queue = optarg;
        else
            rc = jobctl_parse_int(j, "--limit", optarg, 1, 100000, &limit);
    }
    if (rc != 0 || c == NEXT_BAD)
        return EXIT_USAGE;
    if (c == NEXT_HELP)
        return fputs(jobctl_usage_list, stdout), EXIT_DONE;
    if (jobctl_want_args(j, argc, argv, 0, "") != 0 || check_state(j, state) != 0 ||
        (queue && jobctl_check_queue_name(j, queue) != 0))
        return EXIT_USAGE;
    queue_conn *q;
    if ((rc = jobctl_open_queue(j, &q)) != 0)
        return rc;
    cds_err err;
    json_t *jobs;
    int qrc = queue_list(q, queue, state, (size_t)limit, &jobs, &err);
    if (qrc != 0) {
        rc = jobctl_op_failed(j, q, qrc, &err);
    } else {
        truncate_array(jobs, (size_t)limit);
        if (j->json)
            jobctl_print_json(jobs);
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

const char jobctl_usage_stats[] =
    "usage: jobctl stats\n"
    "One row per queue: how many jobs are in each state now, and the counters of jobs\n"
    "enqueued, retried and stalled since the queue was first used (--json adds the done,\n"
    "dead and cancelled counters, which outlive trimming).\n";
const char jobctl_usage_workers[] =
    "usage: jobctl workers\n"
    "Workers seen recently: id, alive (registration not expired), host, pid, device (cpu or\n"
    "cuda:N, what it trains on), queues, job in hand, state (idle, busy, draining; gone when\n"
    "not alive) and when last seen.\n";

/* Parses a command that takes only the global options. */
static int parse_no_args(jobctl *j, int argc, char **argv, const char *usage)
{
    static const struct option opts[] = {GLOBAL_OPTIONS};
    int c = jobctl_next_option(j, argc, argv, ":h", opts);
    if (c == NEXT_HELP)
        return fputs(usage, stdout), -1;
    if (c != NEXT_END || jobctl_want_args(j, argc, argv, 0, "") != 0)
        return EXIT_USAGE;
    return 0;
}

int jobctl_cmd_stats(jobctl *j, int argc, char **argv)
{
    queue_conn *q;
    int rc = parse_no_args(j, argc, argv, jobctl_usage_stats);
    if (rc != 0 || (rc = jobctl_open_queue(j, &q)) != 0)
        return rc < 0 ? EXIT_DONE : rc;
    cds_err err;
    json_t *stats;
    int qrc = queue_stats(q, &stats, &err);
    if (qrc != 0)
        rc = jobctl_op_failed(j, q, qrc, &err);
    else if (j->json)
        jobctl_print_json(stats);
    else if (json_object_size(stats) == 0)
        printf("no queues under prefix %s\n", queue_prefix(q));
    else
        fmt_stats(stdout, stats);
    json_decref(stats);
    queue_close(q);
    return rc;
}

int jobctl_cmd_workers(jobctl *j, int argc, char **argv)
{
    queue_conn *q;
    int rc = parse_no_args(j, argc, argv, jobctl_usage_workers);
    if (rc != 0 || (rc = jobctl_open_queue(j, &q)) != 0)
        return rc < 0 ? EXIT_DONE : rc;
    cds_err err;
    json_t *workers;
    int qrc = queue_workers(q, &workers, &err);
    if (qrc != 0)
        rc = jobctl_op_failed(j, q, qrc, &err);
    else if (j->json)
        jobctl_print_json(workers);
    else if (json_array_size(workers) == 0)
        printf("no workers under prefix %s\n", queue_prefix(q));
    else
        fmt_workers(stdout, workers, cds_wall_ms());
    json_decref(workers);
    queue_close(q);
    return rc;
}

const char jobctl_usage_top[] =
    "usage: jobctl top [--once] [--interval SECONDS]\n"
    "A live view of every worker of the deployment, from their registrations in Redis (no\n"
    "port needed): state, what it holds, the visit in flight (rows done of its rows, rows/s),\n"
    "visits, evaluations and jobs done and failed, device, host and when last seen; redrawn\n"
    "every SECONDS (default 2) until Ctrl-C, or printed once with --once.\n";

int jobctl_cmd_top(jobctl *j, int argc, char **argv)
{
    enum { O_ONCE = 401, O_INTERVAL };
    static const struct option opts[] = {{"once", no_argument, 0, O_ONCE},
                                         {"interval", required_argument, 0, O_INTERVAL}, GLOBAL_OPTIONS};
    int once = 0, c;
    double interval = 2.0;
    while ((c = jobctl_next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(jobctl_usage_top, stdout), EXIT_DONE;
        if (c == O_ONCE) {
            once = 1;
        } else if (c == O_INTERVAL) {
            if (cds_parse_double(optarg, &interval) != 0 || interval < 0.1 || interval > 3600)
                return jobctl_fail(j, EXIT_USAGE, "bad --interval '%s': give seconds, 0.1 to 3600", optarg);
        } else {
            return EXIT_USAGE;
        }
    }
    if (jobctl_want_args(j, argc, argv, 0, "") != 0)
        return EXIT_USAGE;
    if (j->json && !once)
        return jobctl_usage(j, "top --json needs --once (or use jobctl workers --json in a loop)");
    queue_conn *q;
    int rc = jobctl_open_queue(j, &q);
    if (rc != 0)
        return rc;
    for (;;) {
        cds_err err;
        json_t *workers;
        int qrc = queue_workers(q, &workers, &err);
        if (qrc != 0) {
            rc = jobctl_op_failed(j, q, qrc, &err);
            break;
        }
        if (!once && isatty(1))
            fputs("\033[H\033[2J", stdout);
        if (j->json)
            jobctl_print_json(workers);
        else
            fmt_top(stdout, workers, queue_prefix(q), cds_wall_ms());
        fflush(stdout);
        json_decref(workers);
        if (once)
            break;
        cds_sleep_ms((int64_t)(interval * 1000.0));
    }
    queue_close(q);
    return rc;
}
