/* Small helpers shared by every module: clocks, sleeping, random tokens,
 * strict number parsing, password redaction and reading secret files. */
#ifndef CDS_UTIL_H
#define CDS_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "cds_err.h"

/* Milliseconds on CLOCK_MONOTONIC (for intervals) and CLOCK_REALTIME (only
 * for log lines: queue time always comes from the Redis server). */
int64_t cds_mono_ms(void);
int64_t cds_wall_ms(void);
void cds_sleep_ms(int64_t ms);
/* A time in ms since the epoch as ISO 8601 UTC with milliseconds,
 * "2026-12-02T09:30:00.125Z" (what files and JSON show people); returns out. */
#define CDS_ISO8601_MAX 32
const char *cds_iso8601_utc(int64_t ms, char out[CDS_ISO8601_MAX]);

/* Fills out with 2*nbytes lowercase hex characters from getrandom(2) and a
 * terminating NUL; out must hold 2*nbytes+1 bytes. */
int cds_random_hex(char *out, size_t nbytes, cds_err *err);
/* A uniform double in [0, 1) from getrandom(2). */
double cds_random_unit(void);

/* Strict parsers: the whole string must be a number in [min, max]. */
int cds_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);
int cds_parse_double(const char *s, double *out);

/* Finds the user info of a URL ("user:password" before the host): for
 * scheme://... it ends at the last '@' (a password may hold '@' or '/'); for
 * unix://..., whose socket path starts with '/', it ends at the first "@/".
 * Returns 1 and sets [*start, *at) when there is one, else 0. */
int cds_url_userinfo(const char *url, const char **start, const char **at);

/* Copies url into out with any password replaced by "***", e.g.
 * redis://:secret@host:6379/0 -> redis://:***@host:6379/0. */
void cds_redact_url(const char *url, char *out, size_t outsz);

/* Reads the first line of a file holding a secret (no trailing newline). */
int cds_read_secret_file(const char *path, char *out, size_t outsz, cds_err *err);

/* mkdir -p. */
int cds_mkdirs(const char *path, cds_err *err);
/* rm -rf (does not follow symlinks); 0 also when path does not exist. */
int cds_rmtree(const char *path);
/* fsync a directory, so a rename inside it is durable. */
int cds_fsync_dir(const char *path, cds_err *err);
/* write(2) until all n bytes are written, EINTR retried: 0, or -1 with errno. */
int cds_write_all(int fd, const void *p, size_t n);

#endif
