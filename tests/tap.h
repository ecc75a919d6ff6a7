/* tap.h: the Test Anything Protocol, as `meson test` (protocol: 'tap') reads it.
 *
 * A test program calls tap_plan() or finishes with tap_done(); each check
 * prints "ok N - name" or "not ok N - name" with the failing expression and
 * location as a diagnostic.  tap_skip_all() prints "1..0 # SKIP reason" for a
 * test that cannot run here (no GPU), which meson reports as skipped. */
#ifndef CDS_TAP_H
#define CDS_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct tap_state {
    int n;
    int failed;
} tap_state;

static tap_state tap_global_state; /* one per test process, by design of TAP */

static inline int tap_ok_at(int cond, const char *expr, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static inline int tap_ok_at(int cond, const char *expr, const char *file, int line, const char *fmt, ...)
{
    tap_global_state.n++;
    printf("%s %d - ", cond ? "ok" : "not ok", tap_global_state.n);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (!cond) {
        tap_global_state.failed++;
        printf("#   failed: %s\n#   at %s:%d\n", expr, file, line);
    }
    fflush(stdout);
    return cond;
}

#define ok(cond, ...) tap_ok_at(!!(cond), #cond, __FILE__, __LINE__, __VA_ARGS__)

#define is_int(got, want, ...)                                                            \
    do {                                                                                  \
        long long tap_g_ = (long long)(got), tap_w_ = (long long)(want);                  \
        if (!tap_ok_at(tap_g_ == tap_w_, #got " == " #want, __FILE__, __LINE__, __VA_ARGS__)) \
            printf("#   got %lld, want %lld\n", tap_g_, tap_w_);                          \
    } while (0)

static inline void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void tap_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

/* One check that cannot run here: "ok N # SKIP reason". */
static inline void tap_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void tap_skip(const char *fmt, ...)
{
    tap_global_state.n++;
    printf("ok %d # SKIP ", tap_global_state.n);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

static inline void tap_skip_all(const char *reason)
{
    printf("1..0 # SKIP %s\n", reason);
    fflush(stdout);
    exit(0);
}

/* A failure that makes the rest of the test meaningless. */
static inline void tap_bail(const char *reason)
{
    printf("Bail out! %s\n", reason);
    fflush(stdout);
    exit(1);
}

static inline int tap_done(void)
{
    printf("1..%d\n", tap_global_state.n);
    fflush(stdout);
    return tap_global_state.failed ? 1 : 0;
}

#endif
