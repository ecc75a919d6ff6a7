/* jobctl simulate: a sweep's makespan on W workers under MOP, the study's
 * rotation, DDP and MA, predicted by tools/sweep_sim.c from each model's
 * visit time (docs/sweeps.md, "Simulating a sweep").
 *
 * A model's visit time is its diag.sleep `ms`, or what --from-sweep S
 * measured: the mean wall time of S's visits of that model (lease to
 * checkpoint written) in each epoch (the model's mean for an epoch with
 * none), scaled from S's K shards to W shards of the same rows (a shard of
 * 1/W of the rows takes K/W of a visit of 1/K; a diag.sleep visit does not
 * scale), its evaluations' mean, and the epochs it ran (a model stopped
 * early trains only those). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "jobctl.h"
#include "jobctl_sweep.h"
#include "sweep_sim.h"
#include "sweep_spec.h"

const char jobctl_usage_simulate[] =
    "usage: jobctl simulate --spec SWEEP.json --workers W [--from-sweep S] [--overhead SECONDS]\n"
    "                       [--gang-overhead SECONDS] [--host-slots N]\n"
    "Predicts the makespan and the workers' utilisation of the sweep of SWEEP.json on W\n"
    "workers (W shards, one worker each): MOP as its scheduler runs it, visit by visit; the\n"
    "study's rotation (each sub-epoch as long as its slowest visit); MOP with the hybrid (gangs\n"
    "of idle workers for the models left, as the scheduler forms them); DDP and MA (one model at\n"
    "a time on a gang of W; estimates).  Visit times: a diag.sleep model's ms, or with\n"
    "--from-sweep S what sweep S measured for the same models (its visits' wall times,\n"
    "scaled to W shards).  --overhead: seconds added to every visit (lease and commit;\n"
    "default 0.005); --gang-overhead: to every DDP/MA epoch and every gang's (default 0.5);\n"
    "--host-slots: the most ranks a hybrid gang takes (the host's cores / --threads; default\n"
    "0, no limit: GPU workers).\n";

/* A model's batch (its spec's train.batch), what a gang's W must divide; 0 if none. */
static int model_batch(const char *spec)
{
    json_t *o = json_loads(spec, 0, NULL);
    int b = (int)json_integer_value(json_object_get(json_object_get(o, "train"), "batch"));
    json_decref(o);
    return b;
}

/* A diag.sleep model's visit in seconds, or -1. */
static double sleep_seconds(const char *spec)
{
    json_t *o = json_loads(spec, 0, NULL), *m = json_object_get(o, "model");
    const char *arch = json_string_value(json_object_get(m, "arch"));
    double s = arch && strcmp(arch, "diag.sleep") == 0 ? (double)json_integer_value(json_object_get(m, "ms")) / 1000.0
                                                        : -1;
    json_decref(o);
    return s;
}

/* The mean of res_key (else fallback) over the records of a; with epoch
 * > 0 only that epoch's.  A hybrid gang's rank records (field "hybrid")
 * are not visits of one shard, and are left out. */
static double mean_of(const json_t *a, const char *res_key, const char *fallback, int epoch, int *n)
{
    double sum = 0;
    size_t i;
    const json_t *v;
    *n = 0;
    json_array_foreach(a, i, v) {
        if (json_object_get(v, "hybrid") || (epoch > 0 && json_integer_value(json_object_get(v, "epoch")) != epoch))
            continue;
        const json_t *r = json_object_get(json_object_get(v, "res"), res_key);
        const json_t *x = r ? r : json_object_get(v, fallback);
        if (json_is_number(x)) {
            sum += json_number_value(x);
            (*n)++;
        }
    }
    return *n ? sum / *n : 0;
}

/* The epochs model mo trained in its sweep: all when done (or still going),
 * its rung when stopped early, those it finished when it failed. */
static int epochs_ran(const json_t *mo, int E)
{
    const char *st = json_string_value(json_object_get(mo, "state")) ?: "";
    int e = E;
    if (strcmp(st, "stopped") == 0)
        e = atoi(json_string_value(json_object_get(mo, "rung")) ?: "0");
    else if (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0)
        e = (int)json_integer_value(json_object_get(mo, "epoch")) - 1;
    return e < 0 ? 0 : e > E ? E : e;
}

/* The measured times of sweep S's models into visit (M·W) and eval (M),
 * and the epochs each ran into epochs (M); *stopped counts those that ran
 * fewer than E. */
static int measured(jobctl *j, const char *sweep, const sweep_spec *s, int W, double *visit, double *eval,
                    double *epoch_visit, int *epochs, int *stopped)
{
    queue_conn *q;
    int rc = jobctl_open_queue(j, &q);
    if (rc != 0)
        return rc;
    cds_err err;
    json_t *sw = NULL;
    int qrc = jobctl_sweep_load(q, sweep, &sw, &err);
    queue_close(q);
    if (qrc != 0)
        return jobctl_fail(j, qrc == QUEUE_NOT_FOUND ? EXIT_USAGE : EXIT_REFUSED, "simulate: --from-sweep %s: %s",
                           sweep, qrc == QUEUE_NOT_FOUND ? "there is no such sweep (see jobctl sweeps)" : err.msg);
    const json_t *models = json_object_get(sw, "models");
    int M = sweep_spec_model_count(s), K = jobctl_sweep_int_field(json_object_get(sw, "sweep"), "shards", 0);
    rc = 0;
    if ((int)json_array_size(models) != M)
        rc = jobctl_fail(j, EXIT_USAGE, "simulate: sweep %s has %zu models and the spec %d: give a sweep of this spec's "
                         "models", sweep, json_array_size(models), M);
    for (int m = 0; rc == 0 && m < M; m++) {
        const json_t *mo = json_array_get(models, (size_t)m);
        int n = 0, ne = 0;
        double t = mean_of(json_object_get(mo, "visits"), "wall_s", "seconds", 0, &n);
        eval[m] = mean_of(json_object_get(mo, "epochs"), "wall_s", "valid_seconds", 0, &ne);
        if (n == 0) {
            rc = jobctl_fail(j, EXIT_REFUSED, "simulate: model %d of sweep %s has no timed visit yet: simulate from a "
                             "sweep that trained it", m, sweep);
            break;
        }
        epochs[m] = epochs_ran(mo, sweep_spec_epochs(s));
        *stopped += epochs[m] < sweep_spec_epochs(s);
        double scale = sleep_seconds(sweep_spec_model_specs(s)[m]) >= 0 || K < 1 ? 1.0 : (double)K / W;
        for (int k = 0; k < W; k++)
            visit[(size_t)m * (size_t)W + (size_t)k] = t * scale;
        /* Each epoch's own mean where it has visits: the tail of a sweep
         * runs beside fewer visits than its start. */
        int E = sweep_spec_epochs(s);
        for (int e = 0; e < E; e++) {
            int ve = 0;
            double te = mean_of(json_object_get(mo, "visits"), "wall_s", "seconds", e + 1, &ve);
            epoch_visit[(size_t)m * (size_t)E + (size_t)e] = ve ? te * scale : -1;
        }
    }
    json_decref(sw);
    return rc;
}

static void print_row(const char *mode, const sweep_sim_out *o, const char *note)
{
    printf("%-9s %11.2f %12.3f  %s\n", mode, o->makespan_s, o->utilisation, note);
}

int jobctl_cmd_simulate(jobctl *j, int argc, char **argv)
{
    enum { O_SPEC = 401, O_WORKERS, O_FROM, O_OVERHEAD, O_GANG, O_SLOTS };
    static const struct option opts[] = {{"spec", required_argument, 0, O_SPEC},
                                         {"workers", required_argument, 0, O_WORKERS},
                                         {"from-sweep", required_argument, 0, O_FROM},
                                         {"overhead", required_argument, 0, O_OVERHEAD},
                                         {"gang-overhead", required_argument, 0, O_GANG},
                                         {"host-slots", required_argument, 0, O_SLOTS},
                                         GLOBAL_OPTIONS};
    const char *spec_file = NULL, *from = NULL;
    int64_t W = 0, slots = 0;
    double overhead = 0.005, gang = 0.5;
    int c;
    while ((c = jobctl_next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(jobctl_usage_simulate, stdout), EXIT_DONE;
        if (c == O_SPEC)
            spec_file = optarg;
        else if (c == O_FROM)
            from = optarg;
        else if (c == O_WORKERS && cds_parse_i64(optarg, 1, 4096, &W) != 0)
            return jobctl_fail(j, EXIT_USAGE, "bad --workers '%s': give 1 to 4096", optarg);
        else if (c == O_SLOTS && cds_parse_i64(optarg, 0, 4096, &slots) != 0)
            return jobctl_fail(j, EXIT_USAGE, "bad --host-slots '%s': give 0 (no limit) to 4096", optarg);
        else if ((c == O_OVERHEAD || c == O_GANG) &&
                 (cds_parse_double(optarg, c == O_OVERHEAD ? &overhead : &gang) != 0 ||
                  (c == O_OVERHEAD ? overhead : gang) < 0))
            return jobctl_fail(j, EXIT_USAGE, "bad --%s '%s': give seconds, 0 or more",
                               c == O_OVERHEAD ? "overhead" : "gang-overhead", optarg);
        else if (c != O_WORKERS && c != O_OVERHEAD && c != O_GANG && c != O_SLOTS)
            return EXIT_USAGE;
    }
    if (jobctl_want_args(j, argc, argv, 0, "") != 0)
        return EXIT_USAGE;
    if (!spec_file || W < 1)
        return jobctl_usage(j, "simulate needs --spec SWEEP.json and --workers W");
    char *text = NULL;
    if (jobctl_read_spec_file(j, spec_file, &text) != 0)
        return EXIT_USAGE;
    cds_err err;
    sweep_spec *s = sweep_spec_parse(text, &err);
    free(text);
    if (!s)
        return jobctl_fail(j, EXIT_USAGE, "%s: %s", spec_file, err.msg);
    int M = sweep_spec_model_count(s), E = sweep_spec_epochs(s), rc = 0, stopped = 0;
    double *visit = calloc((size_t)M * (size_t)W, sizeof *visit), *eval = calloc((size_t)M, sizeof *eval);
    int *epochs = calloc((size_t)M, sizeof *epochs);
    double *epoch_visit = calloc((size_t)M * (size_t)E, sizeof *epoch_visit);
    if (!visit || !eval || !epochs || !epoch_visit)
        rc = jobctl_fail(j, EXIT_REFUSED, "simulate: out of memory");
    else if (from)
        rc = measured(j, from, s, (int)W, visit, eval, epoch_visit, epochs, &stopped);
    for (int m = 0; rc == 0 && !from && m < M; m++) {
        double t = sleep_seconds(sweep_spec_model_specs(s)[m]);
        if (t < 0) {
            rc = jobctl_fail(j, EXIT_USAGE, "simulate: %s is not a diag.sleep model, so its visit time is unknown: "
                             "give --from-sweep S, a sweep that trained these models", sweep_spec_summary(s, m));
            break;
        }
        for (int k = 0; k < W; k++)
            visit[(size_t)m * (size_t)W + (size_t)k] = t;
    }
    int *batch = calloc((size_t)M, sizeof *batch);
    if (rc == 0 && !batch)
        rc = jobctl_fail(j, EXIT_REFUSED, "simulate: out of memory");
    for (int m = 0; rc == 0 && m < M; m++)
        batch[m] = model_batch(sweep_spec_model_specs(s)[m]);
    sweep_sim_in in = {.models = M, .shards = (int)W, .epochs = E, .visit_s = visit, .eval_s = eval,
                       .model_epochs = from ? epochs : NULL, .epoch_visit_s = from ? epoch_visit : NULL,
                       .visit_overhead_s = overhead, .gang_overhead_s = gang, .batch = batch,
                       .host_slots = (int)slots};
    sweep_sim_out mop, hyb, rot, gng;
    sweep_sim_in hin = in;
    hin.hybrid = 1;
    if (rc == 0 && (sweep_sim_mop(&in, &mop) != 0 || sweep_sim_mop(&hin, &hyb) != 0 ||
                    sweep_sim_rotation(&in, &rot) != 0 || sweep_sim_gang(&in, &gng) != 0))
        rc = jobctl_fail(j, EXIT_REFUSED, "simulate: the sweep could not be simulated (no models or a bad time)");
    if (rc == 0 && j->json) {
        json_t *o = json_pack("{s:i, s:i, s:I, s:s, s:i, s:b, s:{s:f, s:f}, s:{s:f, s:f}, s:{s:f, s:f}, s:{s:f, s:f}, "
                              "s:{s:f, s:f}}",
                              "models", M, "epochs", E, "workers", (json_int_t)W, "times", from ? from : "spec",
                              "stopped_early", stopped, "spec_hybrid", sweep_spec_hybrid(s), "mop", "makespan_s", mop.makespan_s, "utilisation",
                              mop.utilisation, "hybrid", "makespan_s", hyb.makespan_s, "utilisation", hyb.utilisation,
                              "rotation", "makespan_s", rot.makespan_s, "utilisation", rot.utilisation, "ddp",
                              "makespan_s", gng.makespan_s, "utilisation", gng.utilisation, "ma", "makespan_s",
                              gng.makespan_s, "utilisation", gng.utilisation);
        jobctl_print_json(o);
        json_decref(o);
    } else if (rc == 0) {
        printf("simulate: %d models x %d epochs on %lld workers (%lld shards), visit times %s%s", M, E, (long long)W,
               (long long)W, from ? "measured by sweep " : "from the spec's diag.sleep ms", from ? from : "");
        if (stopped)
            printf(", its %d model(s) stopped early train only the epochs they ran there", stopped);
        printf("\n");
        printf("%-9s %11s %12s\n", "mode", "makespan s", "utilisation");
        print_row("mop", &mop, sweep_spec_hybrid(s) ? "the scheduler's greedy rule, visit by visit, the hybrid off"
                                                     : "the scheduler's greedy rule, visit by visit (as the spec runs)");
        print_row("hybrid", &hyb, sweep_spec_hybrid(s) ? "MOP with gangs for the models left (as the spec runs)"
                                                       : "MOP with gangs for the models left (\"hybrid\": true)");
        print_row("rotation", &rot, "each sub-epoch waits for its slowest visit");
        print_row("ddp", &gng, "estimate: one model at a time on a gang of all workers");
        print_row("ma", &gng, "estimate: as ddp (a pass per rank, then the average)");
    }
    free(visit);
    free(eval);
    free(batch);
    free(epochs);
    free(epoch_visit);
    sweep_spec_free(s);
    return rc;
}
