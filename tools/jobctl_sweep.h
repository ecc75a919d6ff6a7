/* jobctl_sweep: what jobctl shows of a MOP sweep: the leaderboard (results)
 * and the progress of every model (status). */
#ifndef CDS_JOBCTL_SWEEP_H
#define CDS_JOBCTL_SWEEP_H

#include <jansson.h>
#include <stdio.h>

#include "cds_err.h"
#include "queue.h"

/* Everything about a sweep the two views need, as one JSON object:
 * {"sweep": {...hash...}, "models": [{"model": m, "state" (idle, leased, done,
 * failed, cancelled, or paused / pausing for a model paused by itself), "epoch", "visited",
 * "best_epoch", "best_valid_top1", "summary", "epochs": [{metrics}...]}...]}.
 * QUEUE_NOT_FOUND if there is no such sweep. */
int jobctl_sweep_load(queue_conn *q, const char *sweep, json_t **out, cds_err *err);
/* Models ranked by their best validation top-1 (unevaluated ones last). */
void jobctl_sweep_print_results(FILE *out, const json_t *s);
/* One line per model: a bar of epochs and shards visited, state, best so far;
 * with throughput and an estimate of the time left from the sweep's pace. */
void jobctl_sweep_print_status(FILE *out, const json_t *s, int64_t now_ms);

/* Draws the learning curves of every model (validation top-1; training and
 * validation loss) by epoch into out (.png or .svg) with gnuplot. */
int jobctl_sweep_plot(const json_t *s, const char *out, cds_err *err);
/* Creates sweep new_id that trains the models of orig again, each visiting
 * its shards in the order the original's schedule recorded (so, with the
 * same seeds and thread counts, its checkpoints come out bit-identical).
 * Only a sweep whose every model finished can be replayed. */
int jobctl_sweep_replay(queue_conn *q, const char *orig, const char *new_id, cds_err *err);

#endif
