/* worker_mop_sleep: the runner of diag.sleep models, which exist for tests,
 * demos and benchmarks of the scheduler: a model whose spec says
 * {"model": {"arch": "diag.sleep", "ms": N}} takes the same lease,
 * checkpoint and commit path as a real one, but its visit sleeps N ms (in
 * slices, so a stop or a lost lease interrupts it) instead of training, its
 * "checkpoint" is a small text file naming the visit, and its epochs have
 * nothing to evaluate.  worker_mop.c sends such a model here, so the
 * production visit and evaluation (worker_mop_visit.c, worker_mop_eval.c)
 * know nothing of it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cds_layout.h"
#include "cds_res.h"
#include "cds_util.h"
#include "worker_mop_int.h"

/* The model of a spec, if it is a diag.sleep one: its ms, else -1. */
int64_t worker_mop_sleep_ms(const char *spec)
{
    json_t *o = json_loads(spec, 0, NULL);
    json_t *m = json_object_get(o, "model");
    const char *arch = json_string_value(json_object_get(m, "arch"));
    int64_t ms = arch && strcmp(arch, "diag.sleep") == 0 ? json_integer_value(json_object_get(m, "ms")) : -1;
    json_decref(o);
    return ms;
}

/* A diag.sleep visit: no training, the same lease, checkpoint and commit
 * path as a real one (the "checkpoint" is a small text file naming the
 * visit), so the scheduler and its failure handling can be exercised and
 * measured without spending the time training takes. */
void worker_mop_sleep_visit(worker *w, worker_visit *v, int64_t ms)
{
    cds_err err;
    cds_res_mark mark;
    cds_res_start(&mark, w->nvml);
    if (v->lease.version > 0 && access(v->lease.ckpt, R_OK) != 0) {
        cds_errf(&err, "its committed checkpoint %s is missing", v->lease.ckpt);
        worker_visit_failed(w, v, &err, 0, NULL);
        return;
    }
    int64_t until = cds_mono_ms() + ms;
    while (cds_mono_ms() < until) {
        if (worker_visit_should_stop(w, 0, 0, NULL)) {
            if (atomic_load(&w->mop.lost))
                cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d: lease lost mid-visit; abandoning it", v->sweep,
                         v->lease.model);
            else
                worker_visit_give_back(w, v, "stopping now");
            return;
        }
        int64_t left = until - cds_mono_ms();
        cds_sleep_ms(left < 10 ? (left > 0 ? left : 0) : 10);
    }
    char path[QUEUE_MOP_PATH_MAX], dir[QUEUE_MOP_PATH_MAX - 64], tmp[QUEUE_MOP_PATH_MAX + 8];
    if (worker_visit_ckpt_path(v, path, sizeof path, dir, sizeof dir, &err) != 0) {
        worker_visit_failed(w, v, &err, 0, NULL);
        return;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = cds_mkdirs(dir, &err) == 0 ? fopen(tmp, "w") : NULL;
    int ok = f && fprintf(f, "diag.sleep model %d epoch %d shard %d version %lld\n", v->lease.model, v->lease.epoch,
                          v->lease.shard, (long long)v->lease.version + 1) > 0;
    ok = f && fclose(f) == 0 && ok && rename(tmp, path) == 0;
    if (!ok) {
        unlink(tmp);
        cds_errf(&err, "could not write its checkpoint %s", tmp);
        worker_visit_failed(w, v, &err, 0, NULL);
        return;
    }
    /* Its timing, as a real visit's: what jobctl simulate --from-sweep and
     * the time-left estimate read (no rows: it reads none). */
    cds_res_use use;
    cds_res_stop(&mark, 0, &use);
    json_t *j = json_pack("{s:i, s:f, s:s, s:I, s:s, s:o}", "rows", 0, "seconds", (double)ms / 1000.0, "worker",
                          w->cfg->id, "version", (json_int_t)v->lease.version + 1, "device", w->device, "res",
                          cds_res_json(&use));
    char *metrics = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(j);
    queue_mop_commit_result r;
    int c = worker_visit_commit(w, v, path, dir, 0, metrics, &r); /* diag.sleep: nothing to evaluate */
    free(metrics);
    if (c != 1)
        return;
    cds_logf(&w->log, CDS_LOG_INFO, "sweep %s model %d epoch %d shard %d: slept %lld ms; committed v%lld", v->sweep,
             v->lease.model, v->lease.epoch, v->lease.shard, (long long)ms, (long long)r.version);
}

/* The score a diag.sleep model's spec gives epoch e (tools/sweep_spec.c's
 * check_diag_sleep has the forms), into *top1: 1, or 0 when it has none. */
static int sleep_score(const char *spec, int e, double *top1)
{
    json_t *o = json_loads(spec ? spec : "", 0, NULL);
    const json_t *m = json_object_get(o, "model"), *curve = json_object_get(m, "curve");
    const json_t *obj = json_object_get(m, "objective");
    int have = 0;
    if (json_array_size(curve) > 0) {
        size_t at = (size_t)e < json_array_size(curve) ? (size_t)e : json_array_size(curve);
        *top1 = json_number_value(json_array_get(curve, at - 1));
        have = 1;
    } else if (json_is_object(obj)) {
        double d2 = 0;
        const char *key;
        json_t *target;
        json_object_foreach((json_t *)obj, key, target) {
            double d = json_number_value(json_object_get(m, key)) - json_number_value(target);
            d2 += d * d;
        }
        *top1 = exp(-d2) * (1.0 - ldexp(1.0, -e));
        have = 1;
    }
    json_decref(o);
    return have;
}

/* A diag.sleep evaluation: its "checkpoint" is deleted, and the score its
 * spec gives (if any) is recorded as the epoch's validation metrics, so
 * search and early stopping can be tested through real workers without
 * training; without one there is nothing to evaluate. */
void worker_mop_sleep_eval(worker *w, const char *sweep, const queue_mop_lease *l, const char *spec)
{
    char dir[QUEUE_MOP_PATH_MAX - 64], file[QUEUE_MOP_PATH_MAX];
    cds_err err;
    if (cds_layout_model_dir(dir, sizeof dir, w->cfg->data_root, sweep, l->model, &err) == 0 &&
        cds_layout_epoch_ckpt(file, sizeof file, dir, l->epoch, &err) == 0)
        unlink(file);
    double top1;
    if (!sleep_score(spec, l->epoch, &top1)) {
        worker_eval_end(w, sweep, l, QUEUE_EVAL_DROP, NULL);
        return;
    }
    char json[512];
    snprintf(json, sizeof json, "{\"epoch\":%d,\"model\":%d,\"valid_loss\":%.17g,\"valid_rows\":0,\"valid_top1\":%.17g,"
             "\"valid_top5\":%.17g,\"worker\":\"%s\"}", l->epoch, l->model, 1.0 - top1, top1, top1, w->cfg->id);
    int best, prev;
    int rc = WITH_RECONNECT(w, queue_mop_record_result(w->q, sweep, l, json, top1, &best, &prev, &err));
    if (rc != 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: recording its score: %s", sweep, l->model,
                 l->epoch, err.msg);
    else
        cds_logf(&w->log, CDS_LOG_INFO, "sweep %s model %d epoch %d: scored valid_top1 %.4f", sweep, l->model,
                 l->epoch, top1);
}
