/* jobctl_sweep: what jobctl shows of a MOP sweep: the leaderboard (results)
 * and the progress of every model (status). */
#ifndef CDS_JOBCTL_SWEEP_H
#define CDS_JOBCTL_SWEEP_H

#include <jansson.h>
#include <stdio.h>

#include "cds_err.h"
#include "queue.h"

/* Everything about a sweep the views need, as one JSON object:
 * {"sweep": {...hash...}, "test": {the chosen model's test score, when
 * recorded}, "models": [{"model": m, "state" (idle, leased, done, failed,
 * cancelled, or paused / pausing for a model paused by itself), "epoch" (from
 * 1), "visited", "best_epoch", "best_valid_top1", "summary", "group" (models
 * of one speed: architecture and batch), "epochs": [{metrics of each
 * evaluated epoch}...], "visits": [{metrics of each committed visit}...],
 * "eval_errors": {"<epoch>": why}, and when there are: "reason", "attempts",
 * "error", "not_before", "worker", "progress" (the visit in flight: rows_done,
 * rows_total, samples_per_s, shard)}...]}.  QUEUE_NOT_FOUND if there is no
 * such sweep. */
int jobctl_sweep_load(queue_conn *q, const char *sweep, json_t **out, cds_err *err);
/* 1 when nothing will change any more: cancelled, or done with its test
 * result recorded. */
int jobctl_sweep_finished(const json_t *s);
/* Models ranked by their best validation top-1 (unevaluated ones last), why
 * models failed, and the chosen model's test score. */
void jobctl_sweep_print_results(FILE *out, const json_t *s);
/* One line: visits and evaluations done, the time left (sweep_eta: only
 * from measurements) and the time so far. */
void jobctl_sweep_print_summary(FILE *out, const json_t *s, int64_t now_ms);
/* The summary, then one line per model: a bar of epochs and shards visited,
 * state, best so far, the visit in flight (rows done, rate) or the retry a
 * failed attempt waits for. */
void jobctl_sweep_print_status(FILE *out, const json_t *s, int64_t now_ms);
/* jobctl status --resources: the "res" of every visit, rank and
 * evaluation (docs/sweeps.md, "Resources"), summed per model and per worker:
 * wall and CPU seconds and bytes read summed, the highest peak memory. */
void jobctl_sweep_print_resources(FILE *out, const json_t *s);
/* What happened between two loads of a sweep (before may be NULL): each
 * newly evaluated epoch as a line, models newly failed or cancelled, and
 * the test score once recorded (jobctl status --follow). */
void jobctl_sweep_print_news(FILE *out, const json_t *before, const json_t *now, int64_t now_ms);

/* Draws the learning curves of every model (validation top-1; training and
 * validation loss) by epoch into out (.png or .svg) with gnuplot. */
int jobctl_sweep_plot(const json_t *s, const char *out, cds_err *err);
/* Puts failed model m of sweep back (jobctl retry SWEEP/MODEL): from its
 * committed checkpoint (from NULL), or from an older one it kept: "best"
 * (its best epoch's), "epoch-N" (the end of epoch N) or "vN" (committed
 * version N, when a kept file holds it).  An older file is checked (read
 * and its CRC verified) before anything changes; *from_path (may be NULL,
 * QUEUE_MOP_PATH_MAX bytes) gets its path ("" for the committed one) and
 * *epoch the epoch the model trains next. */
int jobctl_sweep_retry(queue_conn *q, const char *sweep, int model, const char *from, char *from_path, int *epoch,
                       cds_err *err);

/* The string of field fmt (with %d: model m) of a hash read as JSON. */
static inline const char *jobctl_sweep_field(const json_t *o, const char *fmt, int m)
{
    char key[64];
    snprintf(key, sizeof key, fmt, m);
    return json_string_value(json_object_get(o, key));
}

/* An integer field of a hash read as JSON; def when missing or empty. */
static inline int jobctl_sweep_int_field(const json_t *o, const char *key, int def)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v && *v ? atoi(v) : def;
}

#endif
