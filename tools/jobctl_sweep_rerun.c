/* jobctl_sweep_rerun: training a failed model again (jobctl retry
 * SWEEP/MODEL [--from ...]).
 *
 * It reads the sweep's schedule ("m epoch shard version worker" per
 * committed visit).  retry --from resolves best / epoch-N / vN to a kept
 * checkpoint, checks that file (read, CRC verified) before anything changes,
 * and sets the later epochs' files aside while the model is put back, so a
 * refused retry restores them.  A replay is built by queue
 * (queue_sweep_replay), which owns the schedule and the visit plans. */
#include "jobctl_sweep.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cds_layout.h"
#include "cds_util.h"
#include "nn_ckpt.h"
#include "queue_mop.h"

/* ---- retry ----------------------------------------------------------------------- */

/* The version that ended epoch e of model m: its last visit in the
 * schedule ("m epoch shard version worker"); -1 if the epoch never ended. */
static long long epoch_end_version(char **lines, size_t n, int m, int e, int shards)
{
    long long v = -1;
    int visits = 0;
    for (size_t i = 0; i < n; i++) {
        int lm, le, lk;
        long long lv;
        if (sscanf(lines[i], "%d %d %d %lld", &lm, &le, &lk, &lv) == 4 && lm == m && le == e) {
            visits++;
            if (lv > v)
                v = lv;
        }
    }
    return visits >= shards ? v : -1;
}

/* The epoch whose end is version v of model m; -1 if none. */
static int epoch_of_version(char **lines, size_t n, int m, long long v, int epochs, int shards)
{
    for (int e = 1; e <= epochs; e++)
        if (epoch_end_version(lines, n, m, e, shards) == v)
            return e;
    return -1;
}

/* Resolves --from into a kept file of the model, its epoch and version, and
 * checks the file reads back whole. */
static int resolve_from(queue_conn *q, const char *sweep, int m, const char *from, char *path, int *epoch,
                        long long *version, cds_err *err)
{
    json_t *sw = NULL, *models = NULL;
    char **lines = NULL;
    size_t n = 0;
    int rc = queue_sweep_get(q, sweep, &sw, err);
    if (rc != 0)
        return rc;
    int E = jobctl_sweep_int_field(sw, "epochs", 0), K = jobctl_sweep_int_field(sw, "shards", 0);
    if (queue_mop_models(q, sweep, &models, err) != 0 || queue_mop_schedule(q, sweep, &lines, &n, err) != 0) {
        rc = -1;
        goto out;
    }
    const char *ckpt = jobctl_sweep_field(models, "%d.ckpt", m);
    long long committed = atoll(jobctl_sweep_field(models, "%d.version", m) ?: "0");
    const char *slash = ckpt ? strrchr(ckpt, '/') : NULL;
    if (!slash) {
        rc = cds_errf(err, "model %d of sweep %s has committed no checkpoint: there is nothing older to retry from "
                           "(retry it without --from)", m, sweep);
        goto out;
    }
    int e = -1;
    long long v;
    char *end = NULL;
    if (strcmp(from, "best") == 0) {
        e = atoi(jobctl_sweep_field(models, "%d.best_epoch", m) ?: "0");
        if (e < 1) {
            rc = cds_errf(err, "model %d of sweep %s has no evaluated epoch, so no best checkpoint: retry it without "
                               "--from, or --from epoch-N", m, sweep);
            goto out;
        }
    } else if (strncmp(from, "epoch-", 6) == 0 && (e = (int)strtol(from + 6, &end, 10), end && !*end && e >= 1)) {
        /* e set */
    } else if (from[0] == 'v' && (v = strtoll(from + 1, &end, 10), end && !*end && v >= 1)) {
        if (v == committed) {
            path[0] = '\0';
            *version = v;
            goto out; /* the committed checkpoint itself */
        }
        if ((e = epoch_of_version(lines, n, m, v, E, K)) < 0) {
            rc = cds_errf(err, "version %lld of model %d ended no epoch, and only the committed version (%lld) and "
                               "the checkpoints of epoch ends are kept: use --from best or --from epoch-N",
                          v, m, committed);
            goto out;
        }
    } else {
        rc = cds_errf(err, "--from %s: use best, epoch-N or vN (see jobctl retry --help)", from);
        goto out;
    }
    v = epoch_end_version(lines, n, m, e, K);
    if (v < 0) {
        rc = cds_errf(err, "model %d of sweep %s never finished epoch %d: nothing of it is kept", m, sweep, e);
        goto out;
    }
    char dir[QUEUE_MOP_PATH_MAX];
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - ckpt), ckpt);
    if ((rc = cds_layout_best_ckpt(path, QUEUE_MOP_PATH_MAX, dir, e, err)) != 0)
        goto out;
    if (access(path, F_OK) != 0 && (rc = cds_layout_epoch_ckpt(path, QUEUE_MOP_PATH_MAX, dir, e, err)) != 0)
        goto out;
    if (access(path, F_OK) != 0) {
        rc = cds_errf(err, "no kept checkpoint of epoch %d of model %d under %s (only the best epoch's and those "
                           "waiting for evaluation are kept; or DATA_ROOT is not mounted here: run jobctl retry where "
                           "it is)", e, m, dir);
        goto out;
    }
    nn_ckpt c;
    if (nn_ckpt_load(path, &c, err) != 0) {
        rc = cds_err_wrap(err, "the checkpoint to retry from is not intact");
        goto out;
    }
    nn_ckpt_free(&c);
    *epoch = e;
    *version = v;
out:
    queue_sweep_list_free(lines, n);
    json_decref(models);
    json_decref(sw);
    return rc;
}

/* The epoch-<e>.ckpt files of the epochs after from_epoch belong to the run
 * a retry from an older checkpoint discards, and the epochs trained again
 * need those names.  Moved aside (.retried) while the model is still
 * failed (no worker can write them), then removed once the retry is
 * recorded, or moved back if it is refused. */
static void set_aside_later_epochs(const char *path, int from_epoch, int epochs, int how)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return;
    char dir[QUEUE_MOP_PATH_MAX];
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    for (int e = from_epoch + 1; e <= epochs; e++) {
        char f[QUEUE_MOP_PATH_MAX + 32], aside[QUEUE_MOP_PATH_MAX + 48];
        cds_err err;
        if (cds_layout_epoch_ckpt(f, sizeof f, dir, e, &err) != 0)
            return; /* a name that does not fit was never written */
        snprintf(aside, sizeof aside, "%s.retried", f);
        if (how == 0)
            rename(f, aside);
        else if (how == 1)
            unlink(aside);
        else
            rename(aside, f);
    }
}

int jobctl_sweep_retry(queue_conn *q, const char *sweep, int model, const char *from, char *from_path, int *epoch,
                       cds_err *err)
{
    char path[QUEUE_MOP_PATH_MAX] = "";
    int from_epoch = 0, epochs = 0;
    long long version = 0;
    if (from) {
        int rc = resolve_from(q, sweep, model, from, path, &from_epoch, &version, err);
        if (rc != 0)
            return rc;
        json_t *sw = NULL;
        if ((rc = queue_sweep_get(q, sweep, &sw, err)) != 0)
            return rc;
        epochs = jobctl_sweep_int_field(sw, "epochs", 0);
        json_decref(sw);
    }
    if (from_path)
        snprintf(from_path, QUEUE_MOP_PATH_MAX, "%s", path);
    if (path[0])
        set_aside_later_epochs(path, from_epoch, epochs, 0);
    int rc = queue_mop_retry_model(q, sweep, model, path[0] ? path : NULL, from_epoch, version, epoch, err);
    if (path[0])
        set_aside_later_epochs(path, from_epoch, epochs, rc == 0 ? 1 : 2);
    return rc;
}
