/* worker_mop_visit: a visit that trains, the production path of a MOP
 * sub-epoch (worker_mop.c takes the lease and hands it here):
 *
 *   load     the model's committed checkpoint (version 0: a fresh model from
 *            its spec and seed); one that does not load fails the attempt,
 *            naming the newest intact older checkpoint the model keeps, for
 *            `jobctl retry --from`;
 *   train    one pass over DATA_ROOT/datasets/<dataset>/train/shard-<k>,
 *            checking after every batch that the lease still holds and that
 *            the worker was not told to stop at once;
 *   write    the new checkpoint to DATA_ROOT/sweeps/<S>/models/<m>/
 *            v<version>-<token>.ckpt (temporary file, fsync, rename: the name
 *            is the lease's own, so a worker that lost its lease can never
 *            overwrite the file of the one that holds it now), and for a
 *            visit that ends the model's epoch the hard link epoch-<e>.ckpt
 *            that its evaluation reads, made before the commit queues it;
 *   commit   with the lease's token, the visit's metrics riding on it
 *            (worker_mop_lease.c).
 *
 * A loss that becomes NaN or infinite fails the model at once; a stop or a
 * lost lease abandons the pass (a second SIGTERM gives the model back; its
 * last committed checkpoint stays, so nothing is lost but the pass). */
#include <errno.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cds_layout.h"
#include "cds_res.h"
#include "cds_util.h"
#include "nn_ckpt.h"
#include "worker_mop_int.h"

static nn_trainer *load_model(const worker *w, const worker_visit *v, const char *spec, cds_err *err)
{
    return v->lease.version == 0 ? nn_trainer_new_at(spec, w->place, err)
                                 : nn_trainer_load_at(v->lease.ckpt, 0, w->place, err);
}

/* The newest intact checkpoint the model keeps besides the committed one
 * that failed to load (the best epoch's best-e<E>.ckpt, epoch-<e>.ckpt files
 * waiting for evaluation), said in a form a person can act on; never used
 * to train from without being asked (jobctl retry --from); or that there
 * is none. */
static void intact_older_note(worker *w, const worker_visit *v, const char *failing, char *note, size_t n)
{
    char dir[QUEUE_MOP_PATH_MAX - 64];
    cds_err err;
    snprintf(note, n, "no intact older checkpoint is kept");
    DIR *d = cds_layout_model_dir(dir, sizeof dir, w->cfg->data_root, v->sweep, v->lease.model, &err) == 0
                 ? opendir(dir)
                 : NULL;
    if (!d)
        return;
    /* The kept files by epoch, read back newest first until one is intact:
     * a checkpoint can be large, so only as many as needed. */
    enum { KEPT_MAX = 256 };
    struct kept { int epoch, best; char name[64]; } kept[KEPT_MAX];
    int nk = 0;
    struct dirent *e;
    while ((e = readdir(d)) && nk < KEPT_MAX) {
        int64_t ep;
        cds_layout_kind kind = cds_layout_model_file(e->d_name, &ep);
        size_t len = strlen(e->d_name);
        if ((kind == CDS_LAYOUT_BEST || kind == CDS_LAYOUT_EPOCH) && len < sizeof kept[0].name) {
            kept[nk] = (struct kept){.epoch = (int)ep, .best = kind == CDS_LAYOUT_BEST};
            memcpy(kept[nk++].name, e->d_name, len + 1);
        }
    }
    closedir(d);
    for (;;) {
        int top = -1;
        for (int i = 0; i < nk; i++)
            if (kept[i].epoch >= 0 && (top < 0 || kept[i].epoch > kept[top].epoch))
                top = i;
        if (top < 0)
            return;
        char path[QUEUE_MOP_PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/%s", dir, kept[top].name);
        nn_ckpt c;
        if (strcmp(path, failing) != 0 && nn_ckpt_load(path, &c, &err) == 0) {
            nn_ckpt_free(&c);
            if (kept[top].best)
                snprintf(note, n, "an intact older checkpoint is kept: %s (end of epoch %d, its best): `jobctl retry "
                                  "%s/%d --from best` trains on from it", path, kept[top].epoch, v->sweep, v->lease.model);
            else
                snprintf(note, n, "an intact older checkpoint is kept: %s (end of epoch %d): `jobctl retry %s/%d "
                                  "--from epoch-%d` trains on from it", path, kept[top].epoch, v->sweep,
                         v->lease.model, kept[top].epoch);
            return;
        }
        kept[top].epoch = -1;
    }
}

/* Writes and commits the trained model; returns 0 when committed.
 * epoch_end: this visit completes the model's epoch, so the commit will put
 * the epoch on the evaluation list, where another worker may take it at
 * once: its epoch-<e>.ckpt must exist before the commit. */
static int publish(worker *w, worker_visit *v, nn_trainer *t, const nn_pass_stats *st, int epoch_end,
                   const cds_res_mark *mark)
{
    cds_err err;
    char path[QUEUE_MOP_PATH_MAX], dir[QUEUE_MOP_PATH_MAX - 64]; /* room for the file name */
    char epoch_file[QUEUE_MOP_PATH_MAX];
    if (worker_visit_ckpt_path(v, path, sizeof path, dir, sizeof dir, &err) != 0 ||
        cds_layout_epoch_ckpt(epoch_file, sizeof epoch_file, dir, v->lease.epoch, &err) != 0 ||
        cds_mkdirs(dir, &err) != 0 || nn_trainer_save(t, path, &err) != 0) {
        worker_visit_failed(w, v, &err, 0, NULL);
        return -1;
    }
    int linked = epoch_end && link(path, epoch_file) == 0;
    if (epoch_end && !linked && errno != EEXIST)
        cds_logf(&w->log, CDS_LOG_WARN, "could not keep %s for evaluation: %s", epoch_file, strerror(errno));
    /* The visit's metrics ride on the commit, so they are in Redis before
     * the epoch it may complete is queued for evaluation. */
    /* The device rides along: a replay is bit-identical only where each
     * visit runs on the backend it was recorded on (docs/sweeps.md). */
    json_t *j = json_pack("{s:I, s:f, s:f, s:I, s:I, s:f, s:f, s:s, s:I, s:s}", "rows", (json_int_t)st->rows,
                          "loss_sum", st->loss_sum, "xent_sum", st->xent_sum, "top1", (json_int_t)st->top1, "top5",
                          (json_int_t)st->top5, "seconds", st->seconds, "samples_per_s",
                          st->seconds > 0 ? (double)st->rows / st->seconds : 0.0, "worker", w->cfg->id, "version",
                          (json_int_t)v->lease.version + 1, "device", w->device);
    /* What the visit cost, from its lease to its checkpoint written
     * (docs/sweeps.md, "Resources"). */
    cds_res_use use;
    cds_res_stop(mark, st->bytes, &use);
    if (j)
        json_object_set_new(j, "res", cds_res_json(&use));
    char *metrics = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(j);
    if (!metrics)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: out of memory: the visit's metrics are not recorded",
                 v->sweep, v->lease.model);
    queue_mop_commit_result r;
    int c = worker_visit_commit(w, v, path, dir, 1, metrics, &r);
    free(metrics);
    if (c == 0 && linked)
        unlink(epoch_file); /* refused: that epoch is someone else's to finish */
    if (c != 1)
        return -1;
    double rows = st->rows ? (double)st->rows : 1.0;
    cds_logf(&w->log, CDS_LOG_INFO,
             "sweep %s model %d epoch %d shard %d: loss %.4f top1 %.4f over %lld rows in %.1f s on %s; committed v%lld%s",
             v->sweep, v->lease.model, v->lease.epoch, v->lease.shard, st->loss_sum / rows, (double)st->top1 / rows,
             (long long)st->rows, st->seconds, w->device, (long long)r.version,
             r.model_done ? " (model done)" : r.epoch_done ? " (epoch done)" : "");
    return 0;
}

/* A visit of a model of the engine: load its committed checkpoint (a fresh
 * model at version 0), train one pass over the lease's shard, and publish
 * the result (publish). */
void worker_mop_train_visit(worker *w, worker_visit *v)
{
    cds_err err;
    cds_res_mark mark;
    cds_res_start(&mark, w->nvml);
    nn_trainer *t = load_model(w, v, v->lease.spec, &err);
    if (!t) {
        char note[2 * QUEUE_MOP_PATH_MAX] = "";
        if (v->lease.version > 0 && !cds_err_is_nomem(&err))
            intact_older_note(w, v, v->lease.ckpt, note, sizeof note);
        worker_visit_failed(w, v, &err, 0, note);
        return;
    }
    /* The checkpoint counts the epochs it completed; the lease names the
     * one in progress, from 1. */
    if (nn_trainer_epoch(t) + 1 != v->lease.epoch)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: checkpoint is in epoch %lld, the lease says %d",
                 v->sweep, v->lease.model, (long long)nn_trainer_epoch(t) + 1, v->lease.epoch);
    char dir[4096];
    nn_pass_stats st;
    int rc = cds_layout_dataset_shard(dir, sizeof dir, w->cfg->data_root, v->lease.dataset, "train", v->lease.shard, &err);
    if (rc == 0)
        rc = nn_trainer_train_shard(t, dir, v->lease.shard, worker_visit_should_stop, w, &st, &err);
    if (rc == NN_TRAIN_DIVERGED) {
        worker_visit_failed(w, v, &err, 1, NULL);
    } else if (rc == NN_TRAIN_STOPPED) {
        if (atomic_load(&w->mop.lost))
            cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: lease lost mid-pass; abandoning the visit", v->sweep,
                     v->lease.model);
        else
            worker_visit_give_back(w, v, "stopping now");
    } else if (rc != 0) {
        worker_visit_failed(w, v, &err, 0, NULL);
    } else {
        int epoch_end = nn_trainer_visited(t, NULL) >= (size_t)v->lease.shards;
        if (epoch_end)
            nn_trainer_end_epoch(t);
        publish(w, v, t, &st, epoch_end, &mark);
    }
    nn_trainer_free(t);
}
