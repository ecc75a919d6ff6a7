/* See cds_util.h. */
#include "cds_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cds_mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }
int64_t cds_wall_ms(void) { return clock_ms(CLOCK_REALTIME); }

const char *cds_iso8601_utc(int64_t ms, char out[CDS_ISO8601_MAX])
{
    time_t secs = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    struct tm tm;
    if (!gmtime_r(&secs, &tm)) {
        snprintf(out, CDS_ISO8601_MAX, "?");
        return out;
    }
    size_t n = strftime(out, CDS_ISO8601_MAX - 6, "%Y-%m-%dT%H:%M:%S", &tm);
    unsigned frac = (unsigned)(ms - (int64_t)secs * 1000) % 1000u;
    snprintf(out + n, CDS_ISO8601_MAX - n, ".%03uZ", frac);
    return out;
}

void cds_sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static int fill_random(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

int cds_random_hex(char *out, size_t nbytes, cds_err *err)
{
    unsigned char buf[64];
    if (nbytes > sizeof buf)
        return cds_errf(err, "random token of %zu bytes is too long (at most %zu)", nbytes, sizeof buf);
    if (fill_random(buf, nbytes) != 0)
        return cds_errf(err, "getrandom failed: %s", strerror(errno));
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < nbytes; i++) {
        out[2 * i] = hex[buf[i] >> 4];
        out[2 * i + 1] = hex[buf[i] & 15];
    }
    out[2 * nbytes] = '\0';
    return 0;
}

double cds_random_unit(void)
{
    uint64_t r = 0;
    if (fill_random(&r, sizeof r) != 0)
        r = (uint64_t)cds_mono_ms() * 0x9E3779B97F4A7C15ull;
    return (double)(r >> 11) * 0x1.0p-53;
}

int cds_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (!s || !*s)
        return -1;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int cds_parse_double(const char *s, double *out)
{
    if (!s || !*s)
        return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end != '\0' || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int cds_url_userinfo(const char *url, const char **start, const char **at)
{
    const char *scheme = strstr(url, "://");
    const char *rest = scheme ? scheme + 3 : url;
    const char *end;
    if (strncmp(url, "unix://", 7) == 0) {
        if (*rest == '/')
            return 0;
        end = strstr(rest, "@/");
    } else {
        end = strrchr(rest, '@');
    }
    if (!end)
        return 0;
    *start = rest;
    *at = end;
    return 1;
}

void cds_redact_url(const char *url, char *out, size_t outsz)
{
    if (outsz == 0)
        return;
    const char *start, *at;
    if (!cds_url_userinfo(url, &start, &at)) {
        snprintf(out, outsz, "%s", url);
        return;
    }
    const char *colon = memchr(start, ':', (size_t)(at - start));
    if (!colon) {
        /* redis://password@host is accepted as a bare password too. */
        snprintf(out, outsz, "%.*s***%s", (int)(start - url), url, at);
        return;
    }
    snprintf(out, outsz, "%.*s:***%s", (int)(colon - url), url, at);
}

int cds_read_secret_file(const char *path, char *out, size_t outsz, cds_err *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return cds_errf(err, "cannot read password file %s: %s (check the path and its permissions)",
                        path, strerror(errno));
    if (!fgets(out, (int)outsz, f)) {
        fclose(f);
        return cds_errf(err, "password file %s is empty (write the password on its first line)", path);
    }
    fclose(f);
    out[strcspn(out, "\r\n")] = '\0';
    if (!*out)
        return cds_errf(err, "password file %s is empty (write the password on its first line)", path);
    return 0;
}

int cds_mkdirs(const char *path, cds_err *err)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return cds_errf(err, "path too long: %.64s...", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return cds_errf(err, "cannot create directory %s: %s", buf, strerror(errno));
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

int cds_rmtree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int cds_fsync_dir(const char *path, cds_err *err)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return cds_errf(err, "cannot open directory %s: %s", path, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0)
        return cds_errf(err, "fsync of directory %s failed: %s", path, strerror(e));
    return 0;
}

int cds_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}
