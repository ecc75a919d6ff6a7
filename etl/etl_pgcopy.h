/* etl_pgcopy: what writes into PostgreSQL (the loader tools, and predict's
 * staging tables) shares: a connection
 * from libpq's defaults or a DSN (never printed), one-line server messages,
 * a buffer that builds a COPY ... (FORMAT binary) stream in big-endian
 * fields and hands it to libpq in large pieces, and the one way a loader
 * makes a table (etl_pg_load_table): created, filled through one COPY and given
 * its primary key in one transaction, so a failure leaves nothing half-made.
 *
 * The end of a COPY stream is written once, here (etl_copy_end): the trailer
 * (-1) and the last flush when the rows went well, PQputCopyEnd with an
 * error message otherwise (so the server aborts the COPY), then every result
 * drained, the first failure kept. */
#ifndef CDS_ETL_PGCOPY_H
#define CDS_ETL_PGCOPY_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "cds_err.h"

/* Copies a libpq message into out as one line: runs of blanks, tabs and
 * newlines become one space, trailing ones go. */
void etl_pg_one_line(const char *m, char *out, size_t outsz);
/* The server's primary message of a failed result, else the connection's. */
int etl_pg_fail(PGconn *c, PGresult *r, const char *what, cds_err *err);
int etl_pg_exec(PGconn *c, const char *sql, const char *what, cds_err *err);
/* Connects with libpq's defaults overridden by dsn (may be NULL); prog is
 * the application name the server shows. */
PGconn *etl_pg_connect(const char *dsn, const char *prog, cds_err *err);
/* 1 if the (quoted) table exists, 0 if not, -1 on error. */
int etl_pg_table_exists(PGconn *c, const char *quoted, cds_err *err);

typedef struct etl_copybuf {
    PGconn *c;
    uint8_t *buf;
    size_t len;
    size_t chunk; /* etl_copy_row_end flushes once len reaches it */
} etl_copybuf;

void etl_copy_put16(etl_copybuf *b, int v);
void etl_copy_put32(etl_copybuf *b, uint32_t v);
void etl_copy_put64(etl_copybuf *b, uint64_t v);
/* The binary COPY signature, flags and header extension length. */
void etl_copy_put_header(etl_copybuf *b);
int etl_copy_flush(etl_copybuf *b, cds_err *err);
/* After a row: flushes when the buffer holds a chunk or more. */
int etl_copy_row_end(etl_copybuf *b, cds_err *err);
/* Ends the COPY: with rc 0 (the rows went well) writes the trailer, flushes
 * and ends the stream; otherwise aborts it with message stop.  Drains the
 * results; returns rc if it was not 0, else 0 or the first failure. */
int etl_copy_end(etl_copybuf *b, int rc, const char *stop, cds_err *err);

/* Appends every row to b, calling etl_copy_row_end after each. */
typedef int (*etl_pg_rows_fn)(etl_copybuf *b, void *ctx, cds_err *err);

typedef struct etl_pg_table_load {
    const char *table;        /* the table's name, unquoted (quoted here) */
    const char *columns;      /* the CREATE TABLE column list: "(id int NOT NULL, ...)" */
    const char *copy_columns; /* the COPY column list, or "" for all in order */
    int replace;              /* DROP TABLE IF EXISTS first, in the same transaction */
    size_t chunk;             /* bytes sent to libpq at once */
    size_t row_max;           /* the largest row rows() appends */
    etl_pg_rows_fn rows;
    void *ctx;
    const char *stop;         /* the COPY's abort message, e.g. "gen-criteo stopped" */
} etl_pg_table_load;

/* BEGIN, [DROP,] CREATE, COPY the rows, ADD PRIMARY KEY (id), COMMIT; on
 * any failure ROLLBACK and an error ending "(nothing was kept)". */
int etl_pg_load_table(PGconn *c, const etl_pg_table_load *l, cds_err *err);

#endif
