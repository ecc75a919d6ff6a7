/* etl_copy: a streaming decoder of PostgreSQL's COPY ... (FORMAT binary).
 *
 * The stream is fed in whatever pieces libpq hands out (PQgetCopyData returns
 * one CopyData message at a time; a message may hold the header, one row, or
 * the trailer, and a decoder must not assume more).  For each complete row the
 * callback receives the fields as views into the parser's buffer: no
 * allocation per row, and a row that straddles two pieces is assembled in one
 * growable buffer that is reused.
 *
 * Format (PostgreSQL docs, "COPY", binary format): an 11-byte signature
 * "PGCOPY\n\377\r\n\0", int32 flags (bit 16: OIDs included, refused here),
 * int32 header-extension length and that many bytes; then per row an int16
 * field count, and per field an int32 length (-1 for NULL) and the value in the
 * type's binary send format; a field count of -1 ends the data. */
#ifndef CDS_ETL_COPY_H
#define CDS_ETL_COPY_H

#include <stddef.h>
#include <stdint.h>

#include "cds_err.h"

typedef struct etl_field {
    const uint8_t *data;
    int32_t len; /* -1: NULL */
} etl_field;

/* Called once per row; returns 0 to go on, -1 (with err filled) to stop. */
typedef int (*etl_row_fn)(void *ctx, const etl_field *fields, int nfields, cds_err *err);

typedef struct etl_copy_parser etl_copy_parser;

etl_copy_parser *etl_copy_parser_new(etl_row_fn fn, void *ctx, cds_err *err);
void etl_copy_parser_free(etl_copy_parser *p);
/* Feeds the next piece of the stream. */
int etl_copy_parser_feed(etl_copy_parser *p, const uint8_t *buf, size_t len, cds_err *err);
/* At the end of the stream: refuses a stream cut short (no trailer, or a
 * partial row left over). */
int etl_copy_parser_finish(etl_copy_parser *p, cds_err *err);
/* Rows seen so far. */
int64_t etl_copy_parser_rows(const etl_copy_parser *p);

#endif
