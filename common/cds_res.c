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

void cds_res_start(cds_res_mark *m)
{
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
}

json_t *cds_res_json(const cds_res_use *u)
{
    return json_pack("{s:f, s:f, s:f, s:I, s:b}", "wall_s", u->wall_s, "cpu_s", u->cpu_s, "peak_rss_mb",
                     u->peak_rss_kb >= 0 ? (double)u->peak_rss_kb / 1024.0 : -1.0, "bytes_read",
                     (json_int_t)u->bytes_read, "peak_reset", u->peak_reset);
}
