/* cds_res: what a piece of work cost the process (DESIGN.md §10): wall and
 * CPU time, peak resident memory, and the bytes it read, taken around it
 * as the study's loggers took them.
 *
 * CPU time is getrusage(RUSAGE_SELF): every thread of the process (the
 * engine's, the data loader's; the worker's heartbeat is idle by
 * comparison), so it may exceed the wall time up to the threads in use.
 * Peak memory is the resident high-water mark (VmHWM), reset at the start
 * through /proc/self/clear_refs ("5"), so it is this work's peak and not the
 * process's since it began; where the reset is refused the mark is the
 * process's own, and `peak_reset` says so.  Bytes read are what the caller
 * counts (shards are mapped, so the kernel's read counters miss them). */
#ifndef CDS_RES_H
#define CDS_RES_H

#include <stdint.h>

#include <jansson.h>

typedef struct cds_res_mark {
    int64_t wall_us;
    int64_t cpu_us;
    int peak_reset; /* the high-water mark was reset at the start */
} cds_res_mark;

typedef struct cds_res_use {
    double wall_s, cpu_s;
    int64_t peak_rss_kb; /* -1: not known (no /proc) */
    int peak_reset;
    int64_t bytes_read;
} cds_res_use;

void cds_res_start(cds_res_mark *m);
/* The use since m; bytes_read as the caller counted them. */
void cds_res_stop(const cds_res_mark *m, int64_t bytes_read, cds_res_use *u);
/* {"wall_s", "cpu_s", "peak_rss_mb", "bytes_read", "peak_reset"}: a new
 * object, or NULL when memory ran out. */
json_t *cds_res_json(const cds_res_use *u);

#endif
