/* jobctl_sweep_cmds: the commands on MOP sweeps: status (once, --watch,
 * --follow), results (the leaderboard, or --check-db), plot, replay, pause,
 * resume, and cancel of a sweep or of one model (docs/jobctl.md).
 *
 * The views load the sweep once per screen (jobctl_sweep_load) and format
 * it with jobctl_sweep.c, so --json and the text show the same numbers.
 * --follow keeps going across a Redis restart for up to a minute (one try a
 * second) and ends when the sweep is finished: 0 done, 1 cancelled.
 * results --check-db has exit statuses of its own for cron: 3 when rows
 * wait for their database, 4 when rows were set aside. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobctl.h"
#include <unistd.h>

#include "cds_util.h"
#include "jobctl_fmt.h"
#include "jobctl_sweep.h"
#include "queue_mop.h"

/* ---- sweeps ------------------------------------------------------------------ */

const char jobctl_usage_results[] =
    "usage: jobctl results SWEEP\n"
    "       jobctl results [SWEEP] --check-db\n"
    "The leaderboard of a MOP sweep: every model ranked by the validation top-1 of its\n"
    "best epoch so far, with that epoch's top-5, validation and training loss (--json: every\n"
    "epoch's metrics of every model).\n"
    "--check-db: the sweep's rows for cds_results (every sweep's without SWEEP) that still\n"
    "wait in Redis for their database: how many, the oldest, and per database the failed\n"
    "tries, the last error and the next try; and the rows set aside because the database\n"
    "refused them.  Exit status: 0 none waits, 3 rows wait, 4 rows are set aside.\n";
const char jobctl_usage_status[] =
    "usage: jobctl status SWEEP [--watch | --follow] [--resources]\n"
    "Progress of a MOP sweep: visits and evaluations done, the time left (estimated from\n"
    "the measured speed of each model, none before the first measurement) and the time so\n"
    "far; per model a bar of epochs and shards visited, its state, its best validation\n"
    "top-1 so far, and the visit in flight (rows done, rows/s) or the retry it waits for.\n"
    "  --watch   redraws it every 2 s until the sweep is finished (Ctrl-C to stop)\n"
    "  --follow  prints each epoch's metrics as they are recorded, a progress line every\n"
    "            15 s, failures, and the chosen model's test score; exits when the sweep is\n"
    "            finished: 0 when done, 1 when cancelled\n"
    "  --resources  then what the work cost, per model and per worker: training (visits and\n"
    "            gang ranks) and evaluation wall and CPU time, peak memory, bytes read\n";
const char jobctl_usage_pause[] =
    "usage: jobctl pause SWEEP | SWEEP/MODEL\n"
    "Hands out no new model leases for the sweep, or for one model of it (MODEL: the index\n"
    "jobctl status shows); visits in flight still commit.  Exit 1 if the model is done,\n"
    "failed or cancelled, or the sweep has no such model.\n";
const char jobctl_usage_resume[] =
    "usage: jobctl resume SWEEP | SWEEP/MODEL\n"
    "Lets a paused sweep, or a paused model of it, go on.  Resuming the sweep does not resume\n"
    "models paused one by one: resume each with SWEEP/MODEL.  Exit 1 if the model is not\n"
    "paused.\n";

/* How jobctl status shows a sweep: once, redrawn, or as a log. */
enum { VIEW_ONCE = 0, VIEW_WATCH = 1, VIEW_FOLLOW = 2, VIEW_RESOURCES = 4 /* with either */ };

/* One positional SWEEP id (and --watch or --follow when watch is not NULL:
 * *watch = VIEW_WATCH or VIEW_FOLLOW). */
static int parse_sweep_command(jobctl *j, int argc, char **argv, const char *usage, const char **sweep, int *watch)
{
    enum { O_WATCH = 400, O_FOLLOW = 404, O_RESOURCES = 405 };
    static const struct option opts[] = {{"watch", no_argument, 0, O_WATCH}, {"follow", no_argument, 0, O_FOLLOW},
                                         {"resources", no_argument, 0, O_RESOURCES}, GLOBAL_OPTIONS};
    int c;
    while ((c = jobctl_next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(usage, stdout), -1;
        if (c == O_RESOURCES && !watch)
            return jobctl_fail(j, EXIT_USAGE, "--resources is for jobctl status only");
        if (c == O_RESOURCES) {
            *watch |= VIEW_RESOURCES;
            continue;
        }
        if ((c == O_WATCH || c == O_FOLLOW) && !watch)
            return jobctl_fail(j, EXIT_USAGE, "--%s is for jobctl status only", c == O_WATCH ? "watch" : "follow");
        if (c == O_WATCH || c == O_FOLLOW) {
            int want = c == O_WATCH ? VIEW_WATCH : VIEW_FOLLOW;
            if ((*watch & ~VIEW_RESOURCES) && (*watch & ~VIEW_RESOURCES) != want)
                return jobctl_usage(j, "give --watch or --follow, not both");
            *watch |= want;
            continue;
        }
        return EXIT_USAGE;
    }
    if (watch && (*watch & VIEW_FOLLOW) && (*watch & VIEW_RESOURCES))
        return jobctl_usage(j, "--resources goes with the status table (or --watch), not --follow");
    if (watch && (*watch & ~VIEW_RESOURCES) == VIEW_FOLLOW && j->json)
        return jobctl_usage(j, "--follow prints lines for people: use jobctl status --json in a loop instead");
    if (jobctl_want_args(j, argc, argv, 1, "needs a SWEEP id, as printed by jobctl enqueue sweep") != 0)
        return EXIT_USAGE;
    *sweep = argv[optind];
    return 0;
}

/* Splits "SWEEP/MODEL" into the sweep id (into sweep) and the model index;
 * returns 0 or a usage error. */
int jobctl_parse_sweep_model(const jobctl *j, const char *arg, char sweep[QUEUE_SWEEP_ID_MAX], int *model)
{
    const char *slash = strchr(arg, '/');
    size_t n = (size_t)(slash - arg);
    cds_err err;
    if (n < QUEUE_SWEEP_ID_MAX) {
        memcpy(sweep, arg, n);
        sweep[n] = '\0';
    }
    if (n >= QUEUE_SWEEP_ID_MAX || queue_sweep_id_check(sweep, &err) != 0)
        return jobctl_fail(j, EXIT_USAGE, "bad sweep id in '%.60s': give SWEEP/MODEL, SWEEP as jobctl enqueue sweep printed "
                                   "it (1 to %d letters, digits, '_' or '-')", arg, QUEUE_SWEEP_ID_MAX - 1);
    int64_t m;
    if (cds_parse_i64(slash + 1, 0, INT32_MAX, &m) != 0)
        return jobctl_fail(j, EXIT_USAGE, "bad model '%.40s' in '%.60s': give SWEEP/MODEL with MODEL a model index, 0 or "
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
    int rc = jobctl_parse_sweep_model(j, arg, sweep, &model);
    if (rc != 0 || (rc = jobctl_open_queue(j, &q)) != 0)
        return rc;
    cds_err err;
    char prev[16] = "";
    int qrc = queue_mop_set_model_state(q, sweep, model, state, prev, &err);
    const char *shown = strcmp(state, "running") == 0 ? "resumed" : state;
    if (qrc != 0) {
        rc = jobctl_op_failed(j, q, qrc, &err);
    } else if (j->json) {
        json_t *o = json_pack("{s:s, s:i, s:s, s:s}", "sweep", sweep, "model", model, "state", shown, "previous_state",
                              prev);
        jobctl_print_json(o);
        json_decref(o);
    } else {
        printf("model %d of sweep %s is %s (it was %s)\n", model, sweep, shown, prev);
    }
    queue_close(q);
    return rc;
}

int jobctl_sweep_state_command(jobctl *j, int argc, char **argv, const char *usage, const char *state)
{
    const char *sweep = NULL;
    queue_conn *q;
    int rc = parse_sweep_command(j, argc, argv, usage, &sweep, NULL);
    if (rc != 0)
        return rc < 0 ? EXIT_DONE : rc;
    if (strchr(sweep, '/'))
        return model_state_command(j, sweep, state);
    if ((rc = jobctl_open_queue(j, &q)) != 0)
        return rc;
    cds_err err;
    int qrc = queue_sweep_set_state(q, sweep, state, &err);
    if (qrc != 0)
        rc = jobctl_op_failed(j, q, qrc, &err);
    else if (j->json) {
        json_t *o = json_pack("{s:s, s:s}", "sweep", sweep, "state", state);
        jobctl_print_json(o);
        json_decref(o);
    } else
        printf("sweep %s is %s\n", sweep, state);
    queue_close(q);
    return rc;
}

int jobctl_cmd_pause(jobctl *j, int argc, char **argv) { return jobctl_sweep_state_command(j, argc, argv, jobctl_usage_pause, "paused"); }
int jobctl_cmd_resume(jobctl *j, int argc, char **argv) { return jobctl_sweep_state_command(j, argc, argv, jobctl_usage_resume, "running"); }

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
            rc = jobctl_op_failed(j, q, qrc, &err);
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
    int resources = (watch & VIEW_RESOURCES) != 0;
    watch &= ~VIEW_RESOURCES;
    queue_conn *q;
    int rc = jobctl_open_queue(j, &q);
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
            rc = jobctl_op_failed(j, q, qrc, &err);
            break;
        }
        const char *state = json_string_value(json_object_get(json_object_get(s, "sweep"), "state"));
        if (watch && isatty(1))
            fputs("\033[H\033[2J", stdout);
        if (j->json)
            jobctl_print_json(s);
        else if (status)
            jobctl_sweep_print_status(stdout, s, cds_wall_ms());
        else
            jobctl_sweep_print_results(stdout, s);
        if (!j->json && status && resources)
            jobctl_sweep_print_resources(stdout, s);
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
    int rc = jobctl_open_queue(j, &q);
    if (rc != 0)
        return rc;
    cds_err err;
    json_t *rep = NULL, *sw = NULL;
    int qrc = sweep ? queue_sweep_get(q, sweep, &sw, &err) : 0;
    json_decref(sw);
    if (qrc == 0)
        qrc = queue_outbox_report(q, sweep, &rep, &err);
    if (qrc != 0) {
        rc = jobctl_op_failed(j, q, qrc, &err);
    } else {
        if (j->json)
            jobctl_print_json(rep);
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

int jobctl_cmd_results(jobctl *j, int argc, char **argv)
{
    enum { O_CHECK_DB = 401, O_WATCH, O_FOLLOW };
    static const struct option opts[] = {{"check-db", no_argument, 0, O_CHECK_DB}, {"watch", no_argument, 0, O_WATCH},
                                         {"follow", no_argument, 0, O_FOLLOW}, GLOBAL_OPTIONS};
    int c, check = 0;
    while ((c = jobctl_next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(jobctl_usage_results, stdout), EXIT_DONE;
        if (c == O_WATCH || c == O_FOLLOW)
            return jobctl_fail(j, EXIT_USAGE, "--%s is for jobctl status only", c == O_WATCH ? "watch" : "follow");
        if (c != O_CHECK_DB)
            return EXIT_USAGE;
        check = 1;
    }
    if (check) {
        if (argc - optind > 1)
            return jobctl_want_args(j, argc, argv, 1, "");
        return check_db(j, argc - optind == 1 ? argv[optind] : NULL);
    }
    if (jobctl_want_args(j, argc, argv, 1, "needs a SWEEP id, as printed by jobctl enqueue sweep") != 0)
        return EXIT_USAGE;
    return view_sweep(j, argv[optind], 0, VIEW_ONCE);
}

const char jobctl_usage_plot[] =
    "usage: jobctl plot SWEEP --out FILE.png|FILE.svg\n"
    "Draws the learning curves of every model of a sweep by epoch: validation top-1, and\n"
    "training (solid) and validation (dashed) loss, with gnuplot; once the sweep is scored,\n"
    "the chosen model is marked at its best epoch with its test top-1.\n";

int jobctl_cmd_plot(jobctl *j, int argc, char **argv)
{
    enum { O_OUT = 402 };
    static const struct option opts[] = {{"out", required_argument, 0, O_OUT}, GLOBAL_OPTIONS};
    const char *out = NULL;
    int c;
    while ((c = jobctl_next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(jobctl_usage_plot, stdout), EXIT_DONE;
        if (c != O_OUT)
            return EXIT_USAGE;
        out = optarg;
    }
    if (jobctl_want_args(j, argc, argv, 1, "needs the SWEEP id to plot") != 0)
        return EXIT_USAGE;
    if (!out)
        return jobctl_usage(j, "plot needs --out FILE.png or --out FILE.svg");
    queue_conn *q;
    int rc = jobctl_open_queue(j, &q);
    if (rc != 0)
        return rc;
    cds_err err;
    json_t *s = NULL;
    int qrc = jobctl_sweep_load(q, argv[optind], &s, &err);
    if (qrc != 0)
        rc = jobctl_op_failed(j, q, qrc, &err);
    else if (jobctl_sweep_plot(s, out, &err) != 0)
        rc = jobctl_fail(j, EXIT_REFUSED, "%s", err.msg);
    else if (!j->json)
        printf("%s\n", out);
    json_decref(s);
    queue_close(q);
    return rc;
}

const char jobctl_usage_replay[] =
    "usage: jobctl replay SWEEP [--id NEW]\n"
    "Creates a sweep (NEW, or the next s<N>) that trains the models of the finished SWEEP\n"
    "again, each visiting its shards in the order SWEEP's schedule recorded; with the same\n"
    "worker --threads its checkpoints are bit-identical to SWEEP's.  Prints the new id.\n";

int jobctl_cmd_replay(jobctl *j, int argc, char **argv)
{
    enum { O_ID = 401 };
    static const struct option opts[] = {{"id", required_argument, 0, O_ID}, GLOBAL_OPTIONS};
    const char *new_id = NULL;
    int c;
    while ((c = jobctl_next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(jobctl_usage_replay, stdout), EXIT_DONE;
        if (c != O_ID)
            return EXIT_USAGE;
        new_id = optarg;
    }
    if (jobctl_want_args(j, argc, argv, 1, "needs the SWEEP id to replay") != 0)
        return EXIT_USAGE;
    if (new_id && jobctl_check_sweep_id(j, new_id) != 0)
        return EXIT_USAGE;
    const char *orig = argv[optind];
    queue_conn *q;
    int rc = jobctl_open_queue(j, &q);
    if (rc != 0)
        return rc;
    char id[QUEUE_SWEEP_ID_MAX] = "";
    if (new_id)
        snprintf(id, sizeof id, "%s", new_id);
    else
        rc = jobctl_new_sweep_id(j, q, id);
    cds_err err;
    int qrc = rc == 0 ? queue_sweep_replay(q, orig, id, &err) : 0;
    if (rc == 0 && qrc != 0)
        rc = jobctl_op_failed(j, q, qrc, &err);
    else if (rc == 0)
        printf("%s\n", id);
    queue_close(q);
    return rc;
}
int jobctl_cmd_status(jobctl *j, int argc, char **argv)
{
    const char *sweep = NULL;
    int watch = VIEW_ONCE;
    int rc = parse_sweep_command(j, argc, argv, jobctl_usage_status, &sweep, &watch);
    if (rc != 0)
        return rc < 0 ? EXIT_DONE : rc;
    return view_sweep(j, sweep, 1, watch);
}

