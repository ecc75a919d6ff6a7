/* jobctl export: a model of a sweep, or a checkpoint file, written in a
 * format other tools load (safetensors, ONNX) (docs/export.md; nn/nn_export.h writes it).
 *
 * SWEEP alone names the chosen model at its best epoch (the test scoring's
 * choice, recorded in the sweep's `test`); SWEEP/MODEL its latest
 * committed checkpoint; SWEEP/MODEL@EPOCH one it keeps (jobctl_model_ckpt);
 * --ckpt FILE a checkpoint on disk, no Redis needed.  The output appears
 * whole or not at all, and an existing one is kept unless --replace. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cds_layout.h"
#include "cds_util.h"
#include "jobctl.h"
#include "jobctl_sweep.h"
#include "nn_ckpt.h"
#include "nn_export.h"
#include "queue_mop.h"

const char jobctl_usage_export[] =
    "usage: jobctl export SWEEP[/MODEL[@EPOCH]] --format safetensors|onnx --out FILE [--replace]\n"
    "       jobctl export --ckpt FILE.ckpt --format safetensors|onnx --out FILE [--replace]\n"
    "Writes a model's weights and buffers as safetensors, under PyTorch's names, so that\n"
    "model.load_state_dict(safetensors.torch.load_file(FILE)) loads them into the matching\n"
    "torch module; or its inference graph as ONNX (opset 17) (docs/export.md).  SWEEP alone is the chosen model at its best epoch;\n"
    "SWEEP/MODEL its latest checkpoint; @EPOCH one it keeps (the latest or the best).\n"
    "FILE is written whole or not at all; an existing FILE is kept unless --replace.\n";

int jobctl_model_ckpt(const jobctl *j, queue_conn *q, const char *sweep, int m, int epoch, const char *what, char *path,
                      size_t n)
{
    cds_err err;
    json_t *sw = NULL, *models = NULL;
    int rc = queue_sweep_get(q, sweep, &sw, &err);
    if (rc == QUEUE_NOT_FOUND)
        return jobctl_fail(j, EXIT_USAGE, "%s: there is no sweep %s (see jobctl sweeps)", what, sweep);
    if (rc == 0 && m >= jobctl_sweep_int_field(sw, "models", 0)) {
        int M = jobctl_sweep_int_field(sw, "models", 0);
        json_decref(sw);
        return jobctl_fail(j, EXIT_USAGE, "%s: sweep %s has no model %d: its models are 0 to %d (see jobctl status %s)",
                           what, sweep, m, M - 1, sweep);
    }
    if (rc != 0 || queue_mop_models(q, sweep, &models, &err) < 0) {
        json_decref(sw);
        return jobctl_fail(j, EXIT_REFUSED, "%s: reading sweep %s: %s", what, sweep, err.msg);
    }
    int K = jobctl_sweep_int_field(sw, "shards", 1);
    long long version = atoll(jobctl_sweep_field(models, "%d.version", m) ?: "0");
    const char *ckpt = jobctl_sweep_field(models, "%d.ckpt", m) ?: "";
    int best = atoi(jobctl_sweep_field(models, "%d.best_epoch", m) ?: "0");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", ckpt);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    rc = 0;
    if (version < 1 || !*ckpt)
        rc = jobctl_fail(j, EXIT_REFUSED, "%s: model %d of sweep %s has no checkpoint yet (it has not committed a "
                         "visit): name a model that trained", what, m, sweep);
    else if (epoch == 0 || (K > 0 && version == (long long)epoch * K))
        snprintf(path, n, "%s", ckpt);
    else if (epoch == best && slash && cds_layout_best_ckpt(path, n, dir, best, &err) == 0)
        ;
    else
        rc = jobctl_fail(j, EXIT_REFUSED, "%s: model %d of sweep %s keeps only its latest checkpoint (version %lld%s) "
                         "and its best (%s%d): epoch %d is gone; name %s/%d or %s/%d@%d", what, m, sweep, version,
                         version % (K > 0 ? K : 1) == 0 ? "" : ", inside an epoch", best ? "epoch " : "none ", best,
                         epoch, sweep, m, sweep, m, best > 0 ? best : 1);
    json_decref(sw);
    json_decref(models);
    return rc;
}

/* SWEEP[/MODEL[@EPOCH]] into its parts (model -1: SWEEP alone). */
static int parse_target(const jobctl *j, const char *what, const char *arg, char sweep[QUEUE_SWEEP_ID_MAX], int *m,
                        int *epoch)
{
    char buf[256];
    *m = -1;
    *epoch = 0;
    snprintf(buf, sizeof buf, "%s", arg);
    char *at = strchr(buf, '@');
    if (at) {
        int64_t e;
        if (!strchr(buf, '/') || cds_parse_i64(at + 1, 1, INT32_MAX, &e) != 0)
            return jobctl_fail(j, EXIT_USAGE, "%s: '%.60s': write SWEEP/MODEL@EPOCH, EPOCH from 1", what, arg);
        *at = '\0';
        *epoch = (int)e;
    }
    if (strchr(buf, '/'))
        return jobctl_parse_sweep_model(j, buf, sweep, m);
    cds_err err;
    if (strlen(buf) >= QUEUE_SWEEP_ID_MAX || queue_sweep_id_check(buf, &err) != 0)
        return jobctl_fail(j, EXIT_USAGE, "%s: bad sweep id '%.60s': give SWEEP[/MODEL[@EPOCH]] as jobctl enqueue "
                           "sweep printed it", what, arg);
    memcpy(sweep, buf, strlen(buf) + 1); /* shorter than QUEUE_SWEEP_ID_MAX: checked above */
    return 0;
}

int jobctl_chosen_model(const jobctl *j, queue_conn *q, const char *sweep, const char *what, int *m, int *epoch)
{
    cds_err err;
    json_t *sw = NULL;
    int rc = queue_sweep_get(q, sweep, &sw, &err);
    if (rc == QUEUE_NOT_FOUND)
        return jobctl_fail(j, EXIT_USAGE, "%s: there is no sweep %s (see jobctl sweeps)", what, sweep);
    if (rc != 0)
        return jobctl_fail(j, EXIT_REFUSED, "%s: reading sweep %s: %s", what, sweep, err.msg);
    const char *test = json_string_value(json_object_get(sw, "test"));
    json_t *t = test ? json_loads(test, 0, NULL) : NULL;
    json_t *mj = json_object_get(t, "model"), *ej = json_object_get(t, "epoch");
    rc = 0;
    if (!json_is_integer(mj) || !json_is_integer(ej))
        rc = jobctl_fail(j, EXIT_REFUSED, "%s: sweep %s has no chosen model yet (its test split is not scored: "
                         "jobctl status %s): name one as %s/MODEL", what, sweep, sweep, sweep);
    else
        *m = (int)json_integer_value(mj), *epoch = (int)json_integer_value(ej);
    json_decref(t);
    json_decref(sw);
    return rc;
}

int jobctl_resolve_model(const jobctl *j, queue_conn *q, const char *what, const char *target, char *path, size_t n,
                         int *m, int *epoch)
{
    char sweep[QUEUE_SWEEP_ID_MAX];
    int rc = parse_target(j, what, target, sweep, m, epoch);
    if (rc == 0 && *m < 0)
        rc = jobctl_chosen_model(j, q, sweep, what, m, epoch);
    if (rc == 0)
        rc = jobctl_model_ckpt(j, q, sweep, *m, *epoch, what, path, n);
    return rc;
}

int jobctl_cmd_export(jobctl *j, int argc, char **argv)
{
    enum { O_FORMAT = 401, O_OUT, O_CKPT, O_REPLACE };
    static const struct option opts[] = {{"format", required_argument, 0, O_FORMAT},
                                         {"out", required_argument, 0, O_OUT},
                                         {"ckpt", required_argument, 0, O_CKPT},
                                         {"replace", no_argument, 0, O_REPLACE},
                                         GLOBAL_OPTIONS};
    const char *format = NULL, *out = NULL, *ckpt = NULL;
    int replace = 0, c;
    while ((c = jobctl_next_option(j, argc, argv, ":h", opts)) != NEXT_END) {
        if (c == NEXT_HELP)
            return fputs(jobctl_usage_export, stdout), EXIT_DONE;
        if (c == O_FORMAT)
            format = optarg;
        else if (c == O_OUT)
            out = optarg;
        else if (c == O_CKPT)
            ckpt = optarg;
        else if (c == O_REPLACE)
            replace = 1;
        else
            return EXIT_USAGE;
    }
    if (jobctl_want_args(j, argc, argv, ckpt ? 0 : 1,
                         ckpt ? "takes no SWEEP with --ckpt" : "needs SWEEP[/MODEL[@EPOCH]] or --ckpt FILE") != 0)
        return EXIT_USAGE;
    int onnx = format && strcmp(format, "onnx") == 0;
    if (!format || (!onnx && strcmp(format, "safetensors") != 0))
        return jobctl_fail(j, EXIT_USAGE, "export: --format %s: give --format safetensors or --format onnx",
                           format ? format : "missing");
    if (!out)
        return jobctl_usage(j, "export needs --out FILE");
    if (!replace && access(out, F_OK) == 0)
        return jobctl_fail(j, EXIT_REFUSED, "export: %s exists: give --replace to write over it, or another --out",
                           out);
    char path[QUEUE_MOP_PATH_MAX];
    int rc = 0;
    if (ckpt) {
        snprintf(path, sizeof path, "%s", ckpt);
    } else {
        int m, epoch;
        queue_conn *q = NULL;
        rc = jobctl_open_queue(j, &q);
        if (rc == 0)
            rc = jobctl_resolve_model(j, q, "export", argv[optind], path, sizeof path, &m, &epoch);
        queue_close(q);
        if (rc != 0)
            return rc;
    }
    cds_err err;
    nn_ckpt ck;
    if (nn_ckpt_load(path, &ck, &err) != 0)
        return jobctl_fail(j, EXIT_REFUSED, "export: %s", err.msg);
    rc = (onnx ? nn_export_onnx(path, out, &err) : nn_export_safetensors(&ck, out, &err)) != 0
             ? jobctl_fail(j, EXIT_REFUSED, "export: %s", err.msg)
             : 0;
    if (rc == 0 && !j->json)
        printf("%s\n", out);
    else if (rc == 0) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:I}", "out", out, "format", format, "checkpoint", path, "epoch",
                              (json_int_t)ck.epoch);
        jobctl_print_json(o);
        json_decref(o);
    }
    nn_ckpt_free(&ck);
    return rc;
}
