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
 * counts (shards are mapped, so the kernel's read counters miss them).
 *
 * On a GPU, given its NVML handle (cds_nvml.h), the work also gets the
 * card's mean utilisation and peak memory in use over the samples taken
 * while it ran: whatever else samples the handle meanwhile (the worker's
 * heartbeat, once a second; a scrape of its metrics) and one sample at
 * the stop, so a piece of work has at least one.  Without a handle, or
 * when no sample could be taken, the GPU fields are absent, not zero. */
#ifndef CDS_RES_H
#define CDS_RES_H

#include <stdint.h>

#include <jansson.h>

#include "cds_nvml.h"

typedef struct cds_res_mark {
    int64_t wall_us;
    int64_t cpu_us;
    int peak_reset; /* the high-water mark was reset at the start */
    cds_nvml *gpu;  /* NULL: no GPU fields */
    cds_nvml_mark gpu_at;
} cds_res_mark;

typedef struct cds_res_use {
    double wall_s, cpu_s;
    int64_t peak_rss_kb; /* -1: not known (no /proc) */
    int peak_reset;
    int64_t bytes_read;
    int gpu;             /* the GPU fields below hold something */
    double gpu_util_pct; /* mean utilisation of the card, 0 to 100 */
    double gpu_mem_mb;   /* peak memory in use on the card */
    double gpu_wall_s;   /* the wall time gpu_util_pct is the mean over (a sum's may be less than wall_s) */
} cds_res_use;

/* gpu: the card the work runs on, or NULL. */
void cds_res_start(cds_res_mark *m, cds_nvml *gpu);
/* The use since m; bytes_read as the caller counted them. */
void cds_res_stop(const cds_res_mark *m, int64_t bytes_read, cds_res_use *u);
/* {"wall_s", "cpu_s", "peak_rss_mb", "bytes_read", "peak_reset"}, and
 * "gpu_util_pct", "gpu_mem_mb" when u->gpu: a new object, or NULL when
 * memory ran out. */
json_t *cds_res_json(const cds_res_use *u);
/* Adds a recorded "res" object (cds_res_json's; NULL adds nothing) to sum,
 * zeroed at first: wall, CPU and bytes summed, the highest peaks, the GPU
 * utilisation averaged over the wall time of the records that have it. */
void cds_res_add_json(cds_res_use *sum, const json_t *res);

#endif
