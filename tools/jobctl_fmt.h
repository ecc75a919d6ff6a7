/* jobctl_fmt: the human-readable output of jobctl (tables and a job sheet)
 * made from the JSON the queue library returns.  --json bypasses all of it.
 * Times shown as ages use this machine's clock (now_ms); the queue itself
 * only ever uses the Redis server's. */
#ifndef CDS_JOBCTL_FMT_H
#define CDS_JOBCTL_FMT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

/* "950ms", "42s", "3m07s", "2h05m", "4d03h" (ms >= 0). */
void fmt_duration(char *buf, size_t n, int64_t ms);

/* One job (queue_show): one "field  value" line per field. */
void fmt_show(FILE *out, const json_t *job, int64_t now_ms);
/* Jobs of one state (queue_list): id, queue, type, state, priority,
 * attempts, and when (queued, due, started or finished). */
void fmt_list(FILE *out, const json_t *jobs, int64_t now_ms);
/* Per queue (queue_stats): jobs in each state and the counters. */
void fmt_stats(FILE *out, const json_t *stats);
/* Workers (queue_workers): id, alive, host, pid, queues, job, last seen. */
void fmt_workers(FILE *out, const json_t *workers, int64_t now_ms);
/* jobctl top: a line of totals, then a row per worker (its registration's counts). */
void fmt_top(FILE *out, const json_t *workers, const char *prefix, int64_t now_ms);

#endif
