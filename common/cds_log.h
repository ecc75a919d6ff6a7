/* cds_log: one line per event on stderr, "2026-11-22T20:17:11.123Z level who: text".
 * A logger is a small value (no global state): each program makes one and passes
 * it down.  Every line goes through one fprintf so lines from threads do not
 * interleave. */
#ifndef CDS_LOG_H
#define CDS_LOG_H

#include <stdio.h>

typedef enum { CDS_LOG_DEBUG, CDS_LOG_INFO, CDS_LOG_WARN, CDS_LOG_ERROR } cds_log_level;

typedef struct cds_log {
    FILE *out;
    cds_log_level min;
    char who[64];
} cds_log;

void cds_log_init(cds_log *log, FILE *out, cds_log_level min, const char *who);
void cds_logf(const cds_log *log, cds_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
