/* cds_err: an error value that carries one human-readable line.
 *
 * Libraries never print and never exit: a failing call fills a cds_err with a
 * line that names the thing that went wrong and how to fix it, and returns -1
 * (or NULL).  The caller decides whether to print it, wrap it, or retry.  The
 * buffer is fixed-size so that reporting an error can never itself fail for
 * lack of memory. */
#ifndef CDS_ERR_H
#define CDS_ERR_H

#include <stddef.h>

#define CDS_ERR_MAX 512

/* What kind of failure, for the one a caller acts on differently: a job
 * that ran out of memory would do so again on every retry, so a scheduler
 * fails it instead of handing it to another worker.  Every other failure
 * is CDS_ERR_FAILED, which is also what a zeroed cds_err holds. */
typedef enum cds_err_kind {
    CDS_ERR_FAILED = 0,
    CDS_ERR_NOMEM,
} cds_err_kind;

typedef struct cds_err {
    char msg[CDS_ERR_MAX];
    cds_err_kind kind;
} cds_err;

/* Formats the message into err (if err is not NULL) and returns -1, so a
 * failing path can be written as `return cds_errf(err, "...", ...);`. */
int cds_errf(cds_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The same for an allocation that failed: the kind is CDS_ERR_NOMEM, and the
 * message should still say "out of memory" and for what. */
int cds_err_nomem(cds_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* err is set and says that memory ran out. */
int cds_err_is_nomem(const cds_err *err);

/* Prepends "context: " to an existing message (truncating if needed),
 * keeps its kind, and returns -1. */
int cds_err_wrap(cds_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void cds_err_clear(cds_err *err);

/* What a writer's messages say of where it writes, for cds_err_io_hint. */
typedef struct cds_io_hints {
    const char *fs;        /* the filesystem written to: "the --data-root filesystem" */
    const char *elsewhere; /* how to write somewhere else: "choose another --data-root" */
    const char *again;     /* what to do once fixed: "re-run the unload" */
    const char *smaller;   /* how to write smaller files ("use more shards"), or NULL */
} cds_io_hints;

/* How to fix a write that failed with errno e, as one clause for a message
 * "writing F: <strerror> (<hint>)": the one table of errno hints.  Writes it
 * into out (n bytes) and returns out. */
const char *cds_err_io_hint(int e, const cds_io_hints *h, char *out, size_t n);

#endif
