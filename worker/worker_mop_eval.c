/* worker_mop_eval: evaluation and test scoring, the two MOP leases that
 * train nothing.
 *
 * Evaluation.  A visit that ends a model's epoch queues the epoch; any
 * worker takes it (queue_mop_take_eval: a lease in the same slot as a
 * visit's, so the heartbeat renews it), scores epoch-<e>.ckpt on every
 * validation shard, sums the train metrics of the epoch's visits, and
 * records the result with one script call that also keeps the model's best
 * epoch and appends the cds_results row to its database's outbox
 * (worker_results.c writes it).  Then the files: the best epoch's checkpoint
 * is kept as best-e<E>.ckpt, every other epoch file goes, but for a failed
 * model's (jobctl retry --from epoch-N trains on from them).  A lost lease
 * records nothing and leaves the file to the worker that took it over; a
 * failure is an attempt, counted against the sweep's max_attempts.
 *
 * Test scoring.  Once a sweep is done and no evaluation waits or is in
 * flight, one worker claims the scoring (a lease on the sweep hash: a
 * claimant that dies is taken over once its claim expires), chooses the
 * model with the best validation top-1 among those that finished, scores its
 * best epoch's checkpoint on the test split and records the figures apart
 * from the validation results. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cds_layout.h"
#include "cds_res.h"
#include "cds_util.h"
#include "worker_mop_int.h"
#include "worker_results.h"

/* Adds name to the comma-separated list devs (n bytes) unless it is there:
 * the devices an epoch's visits trained on, in the order first seen. */
static void add_device(char *devs, size_t n, const char *name)
{
    size_t len = strlen(name);
    for (const char *p = devs; *p;) {
        size_t k = strcspn(p, ",");
        if (k == len && strncmp(p, name, len) == 0)
            return;
        p += k + (p[k] == ',');
    }
    size_t used = strlen(devs);
    if (len && used + len + 2 <= n)
        snprintf(devs + used, n - used, "%s%s", used ? "," : "", name);
}

/* Sums the recorded visits of epoch e of model m (train metrics), and lists
 * the devices they ran on in devs ("" when no visit recorded one). */
static void train_metrics(worker *w, const char *sweep, int m, int e, int shards, nn_pass_stats *tr, char *devs,
                          size_t dn, cds_res_use *ru)
{
    memset(tr, 0, sizeof *tr);
    memset(ru, 0, sizeof *ru);
    devs[0] = '\0';
    json_t *res = NULL;
    cds_err err;
    if (WITH_RECONNECT(w, queue_mop_results(w->q, sweep, &res, &err)) != 0)
        return;
    for (int k = 0; k < shards; k++) {
        char field[64];
        snprintf(field, sizeof field, "%d.%d.train.%d", m, e, k);
        json_t *v = json_loads(json_string_value(json_object_get(res, field)) ?: "", 0, NULL);
        if (v) {
            tr->rows += json_integer_value(json_object_get(v, "rows"));
            tr->loss_sum += json_number_value(json_object_get(v, "loss_sum"));
            tr->xent_sum += json_number_value(json_object_get(v, "xent_sum"));
            tr->top1 += json_integer_value(json_object_get(v, "top1"));
            tr->top5 += json_integer_value(json_object_get(v, "top5"));
            tr->seconds += json_number_value(json_object_get(v, "seconds"));
            add_device(devs, dn, json_string_value(json_object_get(v, "device")) ?: "");
            /* The epoch's training cost: its visits' (or ranks') summed,
             * the highest peaks. */
            cds_res_add_json(ru, json_object_get(v, "res"));
        }
        json_decref(v);
    }
    json_decref(res);
}

/* Evaluates on every shard-<k> under DATA_ROOT/datasets/<ds>/valid. */
static int eval_valid(worker *w, nn_trainer *t, const char *dataset, nn_pass_stats *va, cds_err *err)
{
    memset(va, 0, sizeof *va);
    char dir[4096];
    for (int k = 0;; k++) {
        if (cds_layout_dataset_shard(dir, sizeof dir, w->cfg->data_root, dataset, "valid", k, err) != 0)
            return -1;
        if (access(dir, F_OK) != 0 && k > 0)
            return 0;
        if (access(dir, F_OK) != 0) {
            *strrchr(dir, '/') = '\0'; /* the split's directory */
            return cds_errf(err, "dataset %s has no validation shards under %s: unload it with a validation split "
                                 "(valid_fraction or valid_table)", dataset, dir);
        }
        /* The evaluation lease went back to the list: someone else does it. */
        if (atomic_load(&w->mop.lost))
            return cds_errf(err, "its evaluation lease was lost");
        if (nn_trainer_eval_shard(t, dir, va, err) != 0)
            return -1;
    }
}

/* Two epochs of one model can be evaluated at once.  Recording a result
 * names the best epoch it replaces (prev), in Redis, atomically; the files
 * follow outside it.  When a better epoch is recorded after this one but
 * its worker removes best-e<prev> before this worker has renamed its file
 * there, that removal finds nothing: so, once renamed, this worker reads
 * the model's best epoch again and removes its own file if it was
 * superseded.  Whatever the order, one best-e file remains.  If Redis
 * cannot say, the file stays: a stale copy is better than none. */
static void drop_if_superseded(worker *w, const char *sweep, int m, int e, const char *best)
{
    json_t *models = NULL;
    cds_err err;
    if (WITH_RECONNECT(w, queue_mop_models(w->q, sweep, &models, &err)) != 0)
        return;
    char key[64];
    snprintf(key, sizeof key, "%d.best_epoch", m);
    const char *be = json_string_value(json_object_get(models, key));
    if (be && *be && atoi(be) != e)
        unlink(best);
    json_decref(models);
}

/* Whether model m is failed (when Redis cannot say: no, and its evaluated
 * epoch file goes, as for any model). */
static int model_failed(worker *w, const char *sweep, int m)
{
    cds_err err;
    char *st = NULL;
    int failed = WITH_RECONNECT(w, queue_mop_model_field(w->q, sweep, m, "state", &st, &err)) == 0 && st &&
                 strcmp(st, "failed") == 0;
    free(st);
    return failed;
}

/* Evaluates the epoch the evaluation lease l is for; the heartbeat renews
 * the lease meanwhile (it sits in the MOP slot).  Its result is recorded
 * only while the lease holds; a lost lease leaves the epoch's checkpoint in
 * place for the worker that took the evaluation over. */
void worker_mop_eval(worker *w, const char *sweep, const queue_mop_lease *l)
{
    cds_err err;
    int m = l->model, e = l->epoch;
    int64_t version = l->version;
    char dataset[256];
    int shards = 0;
    char dir[QUEUE_MOP_PATH_MAX - 64], file[QUEUE_MOP_PATH_MAX], what[64];
    if (cds_layout_model_dir(dir, sizeof dir, w->cfg->data_root, sweep, m, &err) != 0 ||
        cds_layout_epoch_ckpt(file, sizeof file, dir, e, &err) != 0) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: evaluation failed: %s", sweep, m, e, err.msg);
        worker_eval_end(w, sweep, l, QUEUE_EVAL_RETRY, err.msg);
        return;
    }
    snprintf(what, sizeof what, "%s/%d eval", sweep, m);
    worker_set_current(w, what);
    nn_trainer *t = NULL;
    nn_pass_stats tr, va;
    int64_t t0 = cds_mono_ms();
    cds_res_mark mark;
    cds_res_start(&mark, w->nvml);
    if (worker_mop_sweep_info(w, sweep, dataset, sizeof dataset, &shards, &err) != 0 ||
        !(t = nn_trainer_load_at(file, 0, w->place, &err)) || eval_valid(w, t, dataset, &va, &err) != 0) {
        /* A lost lease is no longer this worker's to end; a stop or Redis
         * is not the evaluation's fault; a missing checkpoint will not come
         * back; anything else is a failed attempt. */
        int missing = access(file, R_OK) != 0;
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: evaluation failed: %s", sweep, m, e, err.msg);
        if (atomic_load(&w->mop.lost))
            ;
        else if (atomic_load(&w->stop) >= 2 || queue_conn_broken(w->q))
            worker_eval_end(w, sweep, l, QUEUE_EVAL_BACK, NULL);
        else if (missing)
            worker_eval_end(w, sweep, l, QUEUE_EVAL_DROP, "its checkpoint is gone: it cannot be evaluated");
        else
            worker_eval_end(w, sweep, l, QUEUE_EVAL_RETRY, err.msg);
        nn_trainer_free(t);
        worker_set_current(w, NULL);
        return;
    }
    nn_trainer_free(t);
    cds_res_use vuse, tuse;
    cds_res_stop(&mark, va.bytes, &vuse);
    char train_devs[128];
    train_metrics(w, sweep, m, e, shards, &tr, train_devs, sizeof train_devs, &tuse);
    double trn = tr.rows ? (double)tr.rows : 1.0, van = va.rows ? (double)va.rows : 1.0;
    double vtop1 = (double)va.top1 / van;
    double valid_seconds = (double)(cds_mono_ms() - t0) / 1000.0;
    int64_t now = cds_wall_ms();
    char iso[CDS_ISO8601_MAX];
    /* device: where this evaluation ran; train_device: where the epoch's
     * visits did (several, comma-separated, in a sweep of mixed workers). */
    json_t *j = json_pack("{s:i, s:i, s:I, s:I, s:f, s:f, s:f, s:I, s:f, s:f, s:f, s:f, s:I, s:s, s:s, s:s, s:s}",
                          "model", m, "epoch", e, "version", (json_int_t)version, "train_rows", (json_int_t)tr.rows,
                          "train_loss", tr.loss_sum / trn, "train_top1", (double)tr.top1 / trn, "train_seconds",
                          tr.seconds, "valid_rows", (json_int_t)va.rows, "valid_loss", va.loss_sum / van, "valid_top1",
                          vtop1, "valid_top5", (double)va.top5 / van, "valid_seconds", valid_seconds, "time_ms",
                          (json_int_t)now, "time", cds_iso8601_utc(now, iso), "worker", w->cfg->id, "device",
                          w->device, "train_device", train_devs);
    if (j) {
        json_object_set_new(j, "res", cds_res_json(&vuse));
        json_object_set_new(j, "train_res", cds_res_json(&tuse));
    }
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    int is_best = 0, prev = -1;
    char *dsn = NULL;
    if (text && worker_results_row_dsn(w, dataset, &dsn, &err) != 0) {
        /* Where its row goes is unknown: recording it without one would
         * lose the row.  The evaluation goes back (uncounted when Redis is
         * away or the worker stops; a refusal by Redis is an attempt, so it
         * cannot come back for ever). */
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: result not recorded: reading the ETL plan of "
                 "dataset %s: %s", sweep, m, e, dataset, err.msg);
        if (atomic_load(&w->stop) >= 2 || queue_conn_broken(w->q))
            worker_eval_end(w, sweep, l, QUEUE_EVAL_BACK, NULL);
        else
            worker_eval_end(w, sweep, l, QUEUE_EVAL_RETRY, err.msg);
        free(text);
        worker_set_current(w, NULL);
        return;
    }
    queue_outbox_row row = {.dsn = dsn};
    if (text)
        worker_slot_finishing(w);
    int rrc = text ? WITH_RECONNECT(w, queue_mop_record_result_row(w->q, sweep, l, text, vtop1, dsn ? &row : NULL,
                                                                   &is_best, &prev, &err))
                   : -1;
    if (rrc != 0) {
        /* Not recorded: the epoch file stays, for whoever evaluates it. */
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: result not recorded: %s", sweep, m, e,
                 text ? err.msg : "out of memory");
        if (!text)
            worker_eval_end(w, sweep, l, QUEUE_EVAL_BACK, NULL);
        free(text);
        free(dsn);
        worker_set_current(w, NULL);
        return;
    }
    free(text);
    w->evals_recorded++;
    char line[1024], tgpu[48], vgpu[48];
    /* A list of several train devices is quoted: its commas are not columns. */
    snprintf(line, sizeof line,
             "%s,%d,%d,valid,%lld,%lld,%.6f,%.6f,%lld,%.6f,%.6f,%.6f,%s,%s,%s%s%s,%.3f,%.3f,%.1f,%lld,%.3f,%.3f,%.1f,%lld,%s,%s\n",
             sweep, m, e, (long long)version, (long long)tr.rows, tr.loss_sum / trn, (double)tr.top1 / trn,
             (long long)va.rows, va.loss_sum / van, vtop1, (double)va.top5 / van, iso, w->device,
             strchr(train_devs, ',') ? "\"" : "", train_devs, strchr(train_devs, ',') ? "\"" : "", tuse.wall_s, tuse.cpu_s,
             (double)tuse.peak_rss_kb / 1024.0, (long long)tuse.bytes_read, vuse.wall_s, vuse.cpu_s,
             (double)vuse.peak_rss_kb / 1024.0, (long long)vuse.bytes_read, worker_results_gpu_cols(&tuse, tgpu),
             worker_results_gpu_cols(&vuse, vgpu));
    worker_results_csv_append(w, sweep, line);
    /* Retention: the best epoch's checkpoint is kept as best-e<E>.ckpt, every
     * other epoch file goes once evaluated, but for a failed model's: those
     * are what jobctl retry --from epoch-N can train on from. */
    char best[QUEUE_MOP_PATH_MAX];
    if (is_best && cds_layout_best_ckpt(best, sizeof best, dir, e, &err) == 0 && rename(file, best) == 0) {
        char old[QUEUE_MOP_PATH_MAX];
        if (prev >= 0 && cds_layout_best_ckpt(old, sizeof old, dir, prev, &err) == 0)
            unlink(old);
        drop_if_superseded(w, sweep, m, e, best);
    } else if (!model_failed(w, sweep, m)) {
        unlink(file);
    }
    /* Its cds_results row, kept in Redis with the result: the main loop's
     * next results tick, at once (after the files above), writes it. */
    if (dsn)
        worker_results_recorded(w, sweep, m, e, dsn);
    free(dsn);
    cds_logf(&w->log, CDS_LOG_INFO,
             "sweep %s model %d epoch %d: train loss %.4f top1 %.4f | valid loss %.4f top1 %.4f top5 %.4f%s", sweep, m,
             e, tr.loss_sum / trn, (double)tr.top1 / trn, va.loss_sum / van, vtop1, (double)va.top5 / van,
             is_best ? " (best so far)" : "");
    worker_set_current(w, NULL);
}

/* ---- the chosen model on the test split ---------------------------------------- */

/* The model with the best validation top-1 among the models that finished
 * (done, or stopped early; failed and cancelled ones are not candidates),
 * at its best epoch: 0 with
 * *m, *e set (-1 when there is none), -1 when Redis could not say.
 * *unevaluated counts epochs of finished models with no result: only ones
 * whose evaluation was given up (a checkpoint gone), since the claim is
 * granted when nothing waits or is in flight. */
int worker_mop_last_epoch(const json_t *models, int m)
{
    char key[64];
    snprintf(key, sizeof key, "%d.state", m);
    const char *st = json_string_value(json_object_get(models, key));
    int stopped = st && strcmp(st, "stopped") == 0;
    if (!st || (strcmp(st, "done") != 0 && !stopped))
        return 0;
    snprintf(key, sizeof key, stopped ? "%d.rung" : "%d.epoch", m);
    const char *lt = json_string_value(json_object_get(models, key));
    return lt && *lt ? atoi(lt) : 0;
}

static int choose_model(worker *w, const char *sweep, int M, int E, int *m_out, int *e_out, double *top1,
                        int *unevaluated, cds_err *err)
{
    json_t *models = NULL, *results = NULL;
    *m_out = *e_out = -1;
    *top1 = -1;
    *unevaluated = 0;
    /* No results hash at all is no result (a sweep of diag.sleep models),
     * not an error: the test scoring then records that there is none. */
    if (WITH_RECONNECT(w, queue_mop_models(w->q, sweep, &models, err)) < 0 ||
        WITH_RECONNECT(w, queue_mop_results(w->q, sweep, &results, err)) < 0) {
        json_decref(models);
        return -1;
    }
    for (int m = 0; m < M; m++) {
        char key[64];
        int last = worker_mop_last_epoch(models, m);
        if (last == 0)
            continue;
        for (int e = 1; e <= last && e <= E; e++) {
            snprintf(key, sizeof key, "%d.%d", m, e);
            *unevaluated += json_object_get(results, key) == NULL;
        }
        snprintf(key, sizeof key, "%d.best_top1", m);
        const char *b = json_string_value(json_object_get(models, key));
        snprintf(key, sizeof key, "%d.best_epoch", m);
        const char *be = json_string_value(json_object_get(models, key));
        if (b && *b && be && *be && atof(b) > *top1) {
            *top1 = atof(b);
            *m_out = m;
            *e_out = atoi(be);
        }
    }
    json_decref(models);
    json_decref(results);
    return 0;
}

/* The chosen model's checkpoint: best-e<E>.ckpt, which the evaluation that
 * found it renames right after recording it (so it may take a moment to
 * appear), or the epoch file itself if that worker died in between. */
static int find_best_file(worker *w, const char *sweep, int m, int e, char *file, size_t n)
{
    char dir[QUEUE_MOP_PATH_MAX - 64], epoch_file[QUEUE_MOP_PATH_MAX];
    cds_err err;
    if (cds_layout_model_dir(dir, sizeof dir, w->cfg->data_root, sweep, m, &err) != 0 ||
        cds_layout_best_ckpt(file, n, dir, e, &err) != 0 ||
        cds_layout_epoch_ckpt(epoch_file, sizeof epoch_file, dir, e, &err) != 0)
        return -1;
    for (int64_t until = cds_mono_ms() + 5000; cds_mono_ms() < until && !atomic_load(&w->mop.lost); cds_sleep_ms(50)) {
        if (access(file, R_OK) == 0)
            return 0;
        if (access(epoch_file, R_OK) == 0 && access(file, R_OK) != 0) {
            cds_sleep_ms(200); /* a rename in progress lands in this time */
            if (access(file, R_OK) == 0)
                return 0;
            snprintf(file, n, "%s", epoch_file);
            return 0;
        }
    }
    return -1;
}

/* Scores checkpoint file on every shard of the dataset's test split. */
static int score_test(worker *w, const char *file, const char *dataset, nn_pass_stats *te, cds_err *err)
{
    memset(te, 0, sizeof *te);
    nn_trainer *t = nn_trainer_load_at(file, 0, w->place, err);
    int rc = t ? 0 : -1;
    char dir[4096];
    for (int k = 0; rc == 0; k++) {
        if ((rc = cds_layout_dataset_shard(dir, sizeof dir, w->cfg->data_root, dataset, "test", k, err)) != 0)
            break;
        if (access(dir, F_OK) != 0) {
            if (k == 0)
                rc = cds_errf(err, "dataset %s has no test split: unload it with a test table", dataset);
            break;
        }
        if (atomic_load(&w->mop.lost))
            rc = cds_errf(err, "its test-scoring claim was lost");
        else
            rc = nn_trainer_eval_shard(t, dir, te, err);
    }
    nn_trainer_free(t);
    return rc;
}

/* Records the test result (JSON text) under the claim l, or logs why not. */
static int record_test(worker *w, const char *sweep, const queue_mop_lease *l, const char *result)
{
    cds_err err;
    worker_slot_finishing(w);
    if (WITH_RECONNECT(w, queue_mop_record_test(w->q, sweep, l, result, &err)) == 0) {
        w->tests_recorded++;
        return 0;
    }
    cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: the test result was not recorded: %s", sweep, err.msg);
    return -1;
}

/* A failed attempt at the test scoring: a backoff and another try, or, at
 * the sweep's max_attempts, the failure recorded as the result. */
static void test_failed(worker *w, const char *sweep, const queue_mop_lease *l, const char *why)
{
    cds_err err;
    int failed = 0;
    worker_slot_finishing(w);
    int rc = WITH_RECONNECT(w, queue_mop_fail_test(w->q, sweep, l, why, &failed, &err));
    if (rc != 0)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: test scoring failed (%s) and could not be recorded: %s", sweep,
                 why, err.msg);
    else
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: test scoring failed: %s%s", sweep, why,
                 failed ? "; that was its last attempt, the sweep has no test score" : "; it is tried again later");
}

/* Scores the chosen model of sweep on the test split under the claim l
 * (in the MOP slot, so the heartbeat renews it) and records the figures as
 * JSON in the sweep's `test` field ({"model", "epoch", "valid_top1", "rows",
 * "loss", "top1", "top5"}, or {"none": why} when no model can be chosen);
 * a failure to score is a failed attempt (test_failed). */
static void run_test(worker *w, const char *sweep, const char *dataset, int M, int E, const queue_mop_lease *l)
{
    cds_err err;
    char file[QUEUE_MOP_PATH_MAX], what[64];
    int best_m, best_e, unevaluated;
    double best_top1;
    nn_pass_stats te = {0};
    int rc = choose_model(w, sweep, M, E, &best_m, &best_e, &best_top1, &unevaluated, &err);
    if (rc != 0) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: reading the results to choose a model: %s", sweep, err.msg);
        return; /* the claim expires and is taken over */
    }
    if (unevaluated)
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: %d epochs of finished models were never evaluated; choosing among "
                 "the others", sweep, unevaluated);
    if (best_m < 0) {
        record_test(w, sweep, l, "{\"none\":\"no model finished with an evaluated epoch\"}");
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: no test score: no model finished with an evaluated epoch", sweep);
        return;
    }
    char *spec = NULL;
    int diag = WITH_RECONNECT(w, queue_mop_model_spec(w->q, sweep, best_m, &spec, &err)) == 0 &&
               worker_mop_sleep_ms(spec) >= 0;
    free(spec);
    if (diag) { /* a scored diag.sleep model (tests of search): no checkpoint to score */
        char none[256];
        snprintf(none, sizeof none, "{\"model\":%d,\"epoch\":%d,\"valid_top1\":%.17g,\"none\":\"the chosen model is a "
                 "diag.sleep model: nothing to score on the test split\"}", best_m, best_e, best_top1);
        record_test(w, sweep, l, none);
        return;
    }
    if (find_best_file(w, sweep, best_m, best_e, file, sizeof file) != 0) {
        char why[QUEUE_MOP_PATH_MAX + 64];
        snprintf(why, sizeof why, "the chosen model's checkpoint %s is missing", file);
        if (!atomic_load(&w->mop.lost))
            test_failed(w, sweep, l, why);
        return;
    }
    snprintf(what, sizeof what, "%s/%d test", sweep, best_m);
    worker_set_current(w, what);
    cds_res_mark mark;
    cds_res_start(&mark, w->nvml);
    rc = score_test(w, file, dataset, &te, &err);
    cds_res_use use;
    cds_res_stop(&mark, te.bytes, &use);
    worker_set_current(w, NULL);
    if (atomic_load(&w->mop.lost)) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: the test-scoring claim was lost; another worker scores it", sweep);
        return;
    }
    if (rc != 0) {
        if (atomic_load(&w->stop) >= 2 || queue_conn_broken(w->q))
            cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: test scoring stopped (%s); its claim expires and another "
                     "worker takes it over", sweep, err.msg);
        else
            test_failed(w, sweep, l, err.msg);
        return;
    }
    double rows = te.rows ? (double)te.rows : 1.0;
    json_t *j = json_pack("{s:i, s:i, s:f, s:I, s:f, s:f, s:f, s:s}", "model", best_m, "epoch", best_e,
                          "valid_top1", best_top1, "rows", (json_int_t)te.rows, "loss", te.loss_sum / rows, "top1",
                          (double)te.top1 / rows, "top5", (double)te.top5 / rows, "device", w->device);
    if (j)
        json_object_set_new(j, "res", cds_res_json(&use));
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(j);
    if (!text) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: out of memory recording the test score; its claim expires and "
                 "another worker scores it", sweep);
        return;
    }
    int recorded = record_test(w, sweep, l, text) == 0;
    free(text);
    if (!recorded)
        return;
    char line[512], iso[CDS_ISO8601_MAX], gpu[48];
    snprintf(line, sizeof line, "%s,%d,%d,test,,,,,%lld,%.6f,%.6f,%.6f,%s,%s,,,,,,%.3f,%.3f,%.1f,%lld,,,%s\n", sweep,
             best_m, best_e, (long long)te.rows, te.loss_sum / rows, (double)te.top1 / rows, (double)te.top5 / rows,
             cds_iso8601_utc(cds_wall_ms(), iso), w->device, use.wall_s, use.cpu_s, (double)use.peak_rss_kb / 1024.0,
             (long long)use.bytes_read, worker_results_gpu_cols(&use, gpu));
    worker_results_csv_append(w, sweep, line);
    cds_logf(&w->log, CDS_LOG_INFO, "sweep %s: chosen model %d (epoch %d, valid top1 %.4f): test top1 %.4f "
             "top5 %.4f loss %.4f over %lld rows", sweep, best_m, best_e, best_top1, (double)te.top1 / rows,
             (double)te.top5 / rows, te.loss_sum / rows, (long long)te.rows);
}

/* Once a sweep is done and no evaluation waits or is in flight, one worker
 * claims the scoring of its chosen model on the test split (a lease on the
 * sweep hash: a claimant that dies is taken over once its claim expires)
 * and records the figure apart from the validation results. */
int worker_mop_test_step(worker *w, char **ids, size_t n)
{
    cds_err err;
    for (size_t i = 0; i < n && atomic_load(&w->stop) == 0; i++) {
        json_t *sw = NULL;
        if (queue_sweep_get(w->q, ids[i], &sw, &err) != 0)
            continue;
        const char *state = json_string_value(json_object_get(sw, "state"));
        const char *tested = json_string_value(json_object_get(sw, "test"));
        int M = atoi(json_string_value(json_object_get(sw, "models")) ?: "0");
        int E = atoi(json_string_value(json_object_get(sw, "epochs")) ?: "0");
        char dataset[256];
        snprintf(dataset, sizeof dataset, "%s", json_string_value(json_object_get(sw, "dataset")) ?: "");
        int awaits_test = state && strcmp(state, "done") == 0 && !(tested && *tested);
        json_decref(sw);
        queue_mop_lease l;
        if (!awaits_test || WITH_RECONNECT(w, queue_mop_claim_test(w->q, ids[i], w->cfg->id, w->cfg->lease_ms, &l, &err)) != 1)
            continue;
        worker_slot_set(w, ids[i], &l);
        run_test(w, ids[i], dataset, M, E, &l);
        worker_slot_set(w, NULL, NULL);
        return 1;
    }
    return 0;
}
