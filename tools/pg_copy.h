/* pg_copy: what the loader tools share to talk to PostgreSQL: a connection
 * from libpq's defaults or a DSN (never printed), one-line server messages,
 * a buffer that builds a COPY ... (FORMAT binary) stream in big-endian
 * fields and hands it to libpq in large pieces, and the one way a loader
 * makes a table (pg_load_table): created, filled through one COPY and given
 * its primary key in one transaction, so a failure leaves nothing half-made.
 *
 * The end of a COPY stream is written once, here (copy_end): the trailer
 * (-1) and the last flush when the rows went well, PQputCopyEnd with an
 * error message otherwise (so the server aborts the COPY), then every result
 * drained, the first failure kept. */
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
    size_t chunk; /* copy_row_end flushes once len reaches it */
} copybuf;

void copy_put16(copybuf *b, int v);
void copy_put32(copybuf *b, uint32_t v);
void copy_put64(copybuf *b, uint64_t v);
/* The binary COPY signature, flags and header extension length. */
void copy_put_header(copybuf *b);
int copy_flush(copybuf *b, cds_err *err);
/* After a row: flushes when the buffer holds a chunk or more. */
int copy_row_end(copybuf *b, cds_err *err);
/* Ends the COPY: with rc 0 (the rows went well) writes the trailer, flushes
 * and ends the stream; otherwise aborts it with message stop.  Drains the
 * results; returns rc if it was not 0, else 0 or the first failure. */
int copy_end(copybuf *b, int rc, const char *stop, cds_err *err);

/* Appends every row to b, calling copy_row_end after each. */
typedef int (*pg_rows_fn)(copybuf *b, void *ctx, cds_err *err);

typedef struct pg_table_load {
    const char *table;        /* the table's name, unquoted (quoted here) */
    const char *columns;      /* the CREATE TABLE column list: "(id int NOT NULL, ...)" */
    const char *copy_columns; /* the COPY column list, or "" for all in order */
    int replace;              /* DROP TABLE IF EXISTS first, in the same transaction */
    size_t chunk;             /* bytes sent to libpq at once */
    size_t row_max;           /* the largest row rows() appends */
    pg_rows_fn rows;
    void *ctx;
    const char *stop;         /* the COPY's abort message, e.g. "gen-criteo stopped" */
} pg_table_load;

/* BEGIN, [DROP,] CREATE, COPY the rows, ADD PRIMARY KEY (id), COMMIT; on
 * any failure ROLLBACK and an error ending "(nothing was kept)". */
int pg_load_table(PGconn *c, const pg_table_load *l, cds_err *err);

#endif
