/* pg_copy: what the loader tools share to talk to PostgreSQL: a connection
 * from libpq's defaults or a DSN (never printed), one-line server messages,
 * and a buffer that builds a COPY ... (FORMAT binary) stream in big-endian
 * fields and hands it to libpq in large pieces. */
#ifndef CDS_PG_COPY_H
#define CDS_PG_COPY_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "cds_err.h"

/* Copies a libpq message into out as one line: runs of blanks, tabs and
 * newlines become one space, trailing ones go. */
void pg_one_line(const char *m, char *out, size_t outsz);
/* The server's primary message of a failed result, else the connection's. */
int pg_fail(PGconn *c, PGresult *r, const char *what, cds_err *err);
int pg_exec(PGconn *c, const char *sql, const char *what, cds_err *err);
/* Connects with libpq's defaults overridden by dsn (may be NULL); prog is
 * the application name the server shows. */
PGconn *pg_connect(const char *dsn, const char *prog, cds_err *err);
/* 1 if the (quoted) table exists, 0 if not, -1 on error. */
int pg_table_exists(PGconn *c, const char *quoted, cds_err *err);

typedef struct copybuf {
    PGconn *c;
    uint8_t *buf;
    size_t len;
} copybuf;

void copy_put16(copybuf *b, int v);
void copy_put32(copybuf *b, uint32_t v);
void copy_put64(copybuf *b, uint64_t v);
/* The binary COPY signature, flags and header extension length. */
void copy_put_header(copybuf *b);
int copy_flush(copybuf *b, cds_err *err);

#endif
