/* See cds_log.h. */
#include "cds_log.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>

void cds_log_init(cds_log *log, FILE *out, cds_log_level min, const char *who)
{
    log->out = out;
    log->min = min;
    snprintf(log->who, sizeof log->who, "%s", who);
}

void cds_logf(const cds_log *log, cds_log_level level, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (!log || !log->out || level < log->min)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    for (char *p = text; *p; p++)
        if (*p == '\n')
            *p = ' ';
    fprintf(log->out, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: %s\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
            names[level], log->who, text);
    fflush(log->out);
}
