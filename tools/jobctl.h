/* jobctl.h: what the files of jobctl share (the program's own header; no
 * library includes it).
 *
 * jobctl.c holds main, the command table, the messages and the option
 * parsing; each command family lives in a file of its own:
 * jobctl_enqueue.c (enqueue TYPE, enqueue etl), jobctl_enqueue_sweep.c
 * (enqueue sweep, sweep ids), jobctl_jobs.c (show, cancel, retry, list,
 * stats, workers) and jobctl_sweep_cmds.c (status, results, plot, replay,
 * pause, resume).  Every function here returns 0 or the exit status to end
 * with, having printed the one-line error already (jobctl_fail). */
#ifndef CDS_JOBCTL_H
#define CDS_JOBCTL_H

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "cds_cli.h"
#include "cds_err.h"
#include "queue.h"
#include "queue_mop.h"

enum exit_code { EXIT_DONE = 0, EXIT_REFUSED = 1, EXIT_USAGE = 2 };

typedef struct jobctl {
    const char *cmd;           /* the command being run, for messages */
    const char *url;           /* --redis; NULL: $CDS_REDIS_URL, else the default */
    const char *password_file; /* --redis-password-file */
    const char *prefix;        /* --prefix; NULL: the library's default */
    int json;                  /* --json */
    int writes;                /* the command changes Redis (see jobctl_open_queue) */
    cds_cli cli;               /* the scan in progress (jobctl_next_option) */
} jobctl;

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

/* jobctl_next_option() results besides an option code. */
#define NEXT_END (-1)
#define NEXT_HELP (-2)
#define NEXT_BAD (-3) /* a usage error was printed */

/* ---- enqueue ------------------------------------------------------------- */

enum enqueue_option {
    E_PAYLOAD = OPT_COMMAND, E_SPEC, E_QUEUE, E_PRIORITY, E_DELAY, E_UNIQUE, E_MAX_ATTEMPTS, E_MAX_STALLS,
    E_BACKOFF_BASE, E_BACKOFF_CAP, E_AFTER, E_COUNT, E_ID
};

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

/* ---- jobctl.c: messages, options, checks, Redis -------------------------- */

/* Prints "jobctl: <message>" as one line on stderr, the URL's password
 * scrubbed; returns code. */
int jobctl_fail(const jobctl *j, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A one-line usage error that points at the command's help; returns 2. */
int jobctl_usage(const jobctl *j, const char *what);
/* The next option of the command (its code), NEXT_END, NEXT_HELP or
 * NEXT_BAD (a usage error was printed); global options are stored in j. */
int jobctl_next_option(jobctl *j, int argc, char **argv, const char *shortopts, const struct option *opts);
/* Strict whole number in [min, max] for option opt. */
int jobctl_parse_int(const jobctl *j, const char *opt, const char *s, int64_t min, int64_t max, int64_t *out);
/* Seconds, decimals allowed (2.5), as milliseconds; 0 to ten years. */
int jobctl_parse_seconds(const jobctl *j, const char *opt, const char *s, int64_t *ms);
int jobctl_check_job_id(const jobctl *j, const char *id);
int jobctl_check_queue_name(const jobctl *j, const char *queue);
/* Exactly n positional arguments after the options. */
int jobctl_want_args(const jobctl *j, int argc, char **argv, int n, const char *missing);
/* Connects (refusing a Redis that can evict keys for a command that
 * writes); *q is NULL on failure. */
int jobctl_open_queue(const jobctl *j, queue_conn **q);
/* A failed library call: 1 when Redis answered, 2 when it was not reached. */
int jobctl_op_failed(const jobctl *j, const queue_conn *q, int rc, const cds_err *err);
void jobctl_print_json(const json_t *v);

/* ---- the commands -------------------------------------------------------- */

void jobctl_print_job_types(FILE *out);
void jobctl_print_enqueue_help(const char *kind);
int jobctl_enqueue_seen(const enqueue_args *a, int opt);
int jobctl_refuse_options(const jobctl *j, const enqueue_args *a, const char *kind, const int *allowed, size_t n,
                          const char *why);
int jobctl_enqueue_sweep(jobctl *j, const enqueue_args *a);
int jobctl_check_sweep_id(const jobctl *j, const char *id);
/* A --spec file's text (malloc'd into *text; 64 MiB at most): 0, or a
 * usage error with its line printed. */
int jobctl_read_spec_file(const jobctl *j, const char *path, char **text);
/* A fresh sweep id s<N> from the counter, skipping ids --id sweeps took. */
int jobctl_new_sweep_id(const jobctl *j, queue_conn *q, char id[QUEUE_SWEEP_ID_MAX]);
int jobctl_parse_sweep_model(const jobctl *j, const char *arg, char sweep[QUEUE_SWEEP_ID_MAX], int *model);
/* The checkpoint SWEEP/MODEL[@EPOCH] names, into path (what: the start of
 * an error's line, "sweep spec $.init", "export"): the model's latest
 * committed checkpoint (epoch 0), or with an epoch the one of those it
 * keeps (the latest, when it ends that epoch, or its best): other epochs'
 * files are deleted once evaluated (docs/sweeps.md).  0, or an exit code
 * with the line printed. */
int jobctl_model_ckpt(const jobctl *j, queue_conn *q, const char *sweep, int m, int epoch, const char *what, char *path,
                      size_t n);
/* SWEEP alone: the model and epoch its test scoring chose (what: the
 * start of an error's line).  0, or an exit code with the line printed. */
int jobctl_chosen_model(const jobctl *j, queue_conn *q, const char *sweep, const char *what, int *m, int *epoch);
/* SWEEP[/MODEL[@EPOCH]] to its checkpoint (SWEEP alone: the chosen model
 * at its best epoch), for export and predict (what: the start of an error's
 * line); *m and *epoch the model and epoch named (epoch 0: the latest). */
int jobctl_resolve_model(const jobctl *j, queue_conn *q, const char *what, const char *target, char *path, size_t n,
                         int *m, int *epoch);
/* `jobctl enqueue predict ...` (jobctl_predict.c): argv[0] is "predict". */
int jobctl_enqueue_predict(jobctl *j, int argc, char **argv);
extern const char jobctl_usage_enqueue_predict[];
int jobctl_sweep_state_command(jobctl *j, int argc, char **argv, const char *usage, const char *state);

/* The help of each command (jobctl help COMMAND). */
extern const char jobctl_usage_show[], jobctl_usage_cancel[], jobctl_usage_retry[], jobctl_usage_list[], jobctl_usage_stats[], jobctl_usage_workers[], jobctl_usage_status[], jobctl_usage_results[], jobctl_usage_pause[], jobctl_usage_resume[], jobctl_usage_replay[], jobctl_usage_plot[], jobctl_usage_export[], jobctl_usage_top[], jobctl_usage_simulate[];

int jobctl_cmd_enqueue(jobctl *j, int argc, char **argv);
int jobctl_cmd_show(jobctl *j, int argc, char **argv);
int jobctl_cmd_cancel(jobctl *j, int argc, char **argv);
int jobctl_cmd_retry(jobctl *j, int argc, char **argv);
int jobctl_cmd_list(jobctl *j, int argc, char **argv);
int jobctl_cmd_stats(jobctl *j, int argc, char **argv);
int jobctl_cmd_workers(jobctl *j, int argc, char **argv);
int jobctl_cmd_status(jobctl *j, int argc, char **argv);
int jobctl_cmd_results(jobctl *j, int argc, char **argv);
int jobctl_cmd_pause(jobctl *j, int argc, char **argv);
int jobctl_cmd_resume(jobctl *j, int argc, char **argv);
int jobctl_cmd_replay(jobctl *j, int argc, char **argv);
int jobctl_cmd_plot(jobctl *j, int argc, char **argv);
int jobctl_cmd_export(jobctl *j, int argc, char **argv);
int jobctl_cmd_top(jobctl *j, int argc, char **argv);
int jobctl_cmd_simulate(jobctl *j, int argc, char **argv);

#endif
