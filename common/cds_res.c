/* cds_res: see cds_res.h. */
#include "cds_res.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t cpu_us(void)
{
    struct rusage r;
    if (getrusage(RUSAGE_SELF, &r) != 0)
        return 0;
    return ((int64_t)r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1000000 + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
}

/* "5" to clear_refs resets the peak RSS to the current RSS (proc(5)). */
static int reset_peak(void)
{
    int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    int ok = write(fd, "5", 1) == 1;
    close(fd);
    return ok;
}

static int64_t peak_kb(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    if (!f)
        return -1;
    char line[256];
    long long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0 && sscanf(line + 6, "%lld", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

void cds_res_start(cds_res_mark *m, cds_nvml *gpu)
{
    m->gpu = gpu;
    if (gpu)
        cds_nvml_mark_start(gpu, &m->gpu_at);
    m->peak_reset = reset_peak();
    m->cpu_us = cpu_us();
    m->wall_us = now_us();
}

void cds_res_stop(const cds_res_mark *m, int64_t bytes_read, cds_res_use *u)
{
    u->wall_s = (double)(now_us() - m->wall_us) / 1e6;
    u->cpu_s = (double)(cpu_us() - m->cpu_us) / 1e6;
    u->peak_rss_kb = peak_kb();
    u->peak_reset = m->peak_reset;
    u->bytes_read = bytes_read;
    u->gpu = 0;
    u->gpu_util_pct = u->gpu_mem_mb = u->gpu_wall_s = 0.0;
    if (!m->gpu)
        return;
    /* A failed sample leaves the ones taken before it: a card that went
     * away mid-work is not this record's to report. */
    cds_nvml_sample s;
    cds_err err;
    (void)cds_nvml_sample_now(m->gpu, &s, &err);
    uint64_t peak = 0;
    if (cds_nvml_since(m->gpu, &m->gpu_at, &u->gpu_util_pct, &peak)) {
        u->gpu = 1;
        u->gpu_mem_mb = (double)peak / (1024.0 * 1024.0);
        u->gpu_wall_s = u->wall_s;
    }
}

json_t *cds_res_json(const cds_res_use *u)
{
    json_t *j = json_pack("{s:f, s:f, s:f, s:I, s:b}", "wall_s", u->wall_s, "cpu_s", u->cpu_s, "peak_rss_mb",
                          u->peak_rss_kb >= 0 ? (double)u->peak_rss_kb / 1024.0 : -1.0, "bytes_read",
                          (json_int_t)u->bytes_read, "peak_reset", u->peak_reset);
    if (j && u->gpu &&
        (json_object_set_new(j, "gpu_util_pct", json_real(u->gpu_util_pct)) != 0 ||
         json_object_set_new(j, "gpu_mem_mb", json_real(u->gpu_mem_mb)) != 0)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

void cds_res_add_json(cds_res_use *sum, const json_t *res)
{
    if (!json_is_object(res))
        return;
    double wall = json_number_value(json_object_get(res, "wall_s"));
    sum->wall_s += wall;
    sum->cpu_s += json_number_value(json_object_get(res, "cpu_s"));
    sum->bytes_read += json_integer_value(json_object_get(res, "bytes_read"));
    int64_t kb = (int64_t)(json_number_value(json_object_get(res, "peak_rss_mb")) * 1024.0);
    sum->peak_rss_kb = kb > sum->peak_rss_kb ? kb : sum->peak_rss_kb;
    sum->peak_reset = 1;
    const json_t *util = json_object_get(res, "gpu_util_pct"), *mem = json_object_get(res, "gpu_mem_mb");
    if (!json_is_number(util) || !json_is_number(mem))
        return;
    /* Weighted by wall time: a long visit at 90% outweighs a short one at 10%. */
    double w = sum->gpu_wall_s + wall;
    sum->gpu_util_pct = w > 0 ? (sum->gpu_util_pct * sum->gpu_wall_s + json_number_value(util) * wall) / w
                              : json_number_value(util);
    sum->gpu_wall_s = w;
    if (!sum->gpu || json_number_value(mem) > sum->gpu_mem_mb)
        sum->gpu_mem_mb = json_number_value(mem);
    sum->gpu = 1;
}
