/* etl_copy: the streaming decoder of COPY ... (FORMAT binary).
 *
 * The parser is a small state machine over an arbitrary split of the stream:
 *
 *   HEADER  the 11-byte signature, the flags word and the header extension;
 *   ROWS    rows, each an int16 field count and its fields, until the
 *           trailer (a field count of -1);
 *   DONE    after the trailer: any further byte is an error;
 *   FAILED  after any error: every later call fails.
 *
 * Two paths decode rows:
 *
 *   direct  while nothing is pending, rows are walked straight in the piece
 *           given to feed() and the callback gets views into that piece: no
 *           copy, no allocation.  This is the path of a libpq stream, where
 *           every CopyData message holds exactly one row.
 *   carry   a row cut by the end of a piece is copied into `carry`, one
 *           growable buffer that is kept for the parser's life.  Later pieces
 *           top it up with only the bytes the row still needs (`need`, a
 *           lower bound found by walking the field headers already there), so
 *           each byte is copied at most once and the walk resumes where it
 *           stopped (`scan`, `fi`).  The buffer grows with the bytes that
 *           arrive, not with the lengths the stream claims, so a corrupt
 *           length cannot make it allocate a gigabyte.  When the row is whole, the views point
 *           into `carry` and the rest of the piece goes back to the direct
 *           path.  The header is always assembled in `carry`.
 *
 * Invariants: in ROWS state, carry_len == 0 means no row is pending; when
 * carry_len > 0, carry[0, scan) holds the field count and the first `fi`
 * complete fields of the pending row, and need > carry_len.
 *
 * Checks: the signature; the flags (bit 16, OIDs, is refused, as is any other
 * bit in the critical half 16..31; bits 0..15 are ignored as the format
 * says); a field count below -1, or different from the first row's (every
 * row of one COPY has the same number of columns, so a difference means the
 * stream lost its framing); a field length below -1 or above PostgreSQL's
 * 1 GiB limit; and, at finish, a stream without its trailer or with a partial
 * row.  A length that runs past the real end of its row swallows the next
 * bytes as data, and is caught by one of these: a field count that no longer
 * matches, an absurd length, or the stream ending inside a field. */
#include <stdlib.h>
#include <string.h>

#include "etl_copy.h"

#define SIGNATURE "PGCOPY\n\377\r\n\0"
#define SIGNATURE_LEN 11
#define HEADER_FIXED (SIGNATURE_LEN + 4 + 4)
#define FLAG_OIDS (1u << 16)
#define FLAGS_CRITICAL 0xFFFF0000u
#define MAX_FIELD_LEN 0x3FFFFFFF /* PostgreSQL's MaxAllocSize - 1: no datum is longer */
#define MAX_HEADER_EXT (1 << 20)

typedef enum { ST_HEADER, ST_ROWS, ST_DONE, ST_FAILED } parse_state;

struct etl_copy_parser {
    etl_row_fn fn;
    void *ctx;
    parse_state state;
    int64_t rows;
    int nfields_first; /* field count of the first row, -1 before it */

    etl_field *fields; /* views handed to the callback */
    int fields_cap;

    uint8_t *carry; /* the pending row (or header) */
    size_t carry_len, carry_cap;
    size_t need;  /* bytes carry must hold before the walk can go on */
    size_t scan;  /* offset in carry of the next unread field header */
    int fi;       /* complete fields in carry */
    int nf;       /* field count of the pending row, -2 before it is read */
};

static inline uint16_t load_be16(const uint8_t *p) { return (uint16_t)((uint16_t)p[0] << 8 | p[1]); }

static inline uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

etl_copy_parser *etl_copy_parser_new(etl_row_fn fn, void *ctx, cds_err *err)
{
    if (!fn) {
        cds_errf(err, "etl_copy_parser_new: no row callback given");
        return NULL;
    }
    etl_copy_parser *p = calloc(1, sizeof *p);
    if (!p) {
        cds_err_nomem(err, "out of memory creating a COPY parser");
        return NULL;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->state = ST_HEADER;
    p->nfields_first = -1;
    p->nf = -2;
    p->need = HEADER_FIXED;
    return p;
}

void etl_copy_parser_free(etl_copy_parser *p)
{
    if (!p)
        return;
    free(p->fields);
    free(p->carry);
    free(p);
}

int64_t etl_copy_parser_rows(const etl_copy_parser *p) { return p->rows; }

/* Puts the parser in FAILED state; the message is already in err. */
static int fail(etl_copy_parser *p) { p->state = ST_FAILED; return -1; }

static int fail_corrupt(etl_copy_parser *p, cds_err *err, const char *what, long long value)
{
    cds_errf(err, "COPY stream corrupt at row %lld: %s %lld (the data is not PostgreSQL binary COPY output or lost its framing; re-run the unload)",
             (long long)p->rows + 1, what, value);
    return fail(p);
}

static int grow_fields(etl_copy_parser *p, int n, cds_err *err)
{
    if (n <= p->fields_cap)
        return 0;
    etl_field *f = realloc(p->fields, (size_t)n * sizeof *f);
    if (!f) {
        cds_err_nomem(err, "out of memory for %d COPY fields", n);
        return fail(p);
    }
    p->fields = f;
    p->fields_cap = n;
    return 0;
}

static int carry_reserve(etl_copy_parser *p, size_t n, cds_err *err)
{
    if (n <= p->carry_cap)
        return 0;
    size_t cap = p->carry_cap ? p->carry_cap : 4096;
    while (cap < n)
        cap *= 2;
    uint8_t *c = realloc(p->carry, cap);
    if (!c) {
        cds_err_nomem(err, "out of memory assembling a COPY row of %zu bytes", n);
        return fail(p);
    }
    p->carry = c;
    p->carry_cap = cap;
    return 0;
}

/* Copies up to `need - carry_len` bytes of the piece into carry; returns the
 * number taken. */
static int carry_take(etl_copy_parser *p, const uint8_t *buf, size_t len, size_t *taken, cds_err *err)
{
    size_t want = p->need - p->carry_len;
    size_t n = want < len ? want : len;
    if (carry_reserve(p, p->carry_len + n, err) != 0)
        return -1;
    memcpy(p->carry + p->carry_len, buf, n);
    p->carry_len += n;
    *taken = n;
    return 0;
}

/* A row's field count: -1 (trailer) or 0..32767, the same in every row. */
static int check_nfields(etl_copy_parser *p, int nf, cds_err *err)
{
    if (nf < -1)
        return fail_corrupt(p, err, "field count", nf);
    if (nf >= 0 && p->nfields_first >= 0 && nf != p->nfields_first) {
        cds_errf(err, "COPY stream corrupt at row %lld: %d fields where the first row had %d (a field length ran past its row, or the stream lost its framing; re-run the unload)",
                 (long long)p->rows + 1, nf, p->nfields_first);
        return fail(p);
    }
    if (nf >= 0) {
        p->nfields_first = nf;
        if (grow_fields(p, nf, err) != 0)
            return -1;
    }
    return 0;
}

static int check_field_len(etl_copy_parser *p, int32_t l, int field, cds_err *err)
{
    if (l < -1 || l > MAX_FIELD_LEN) {
        cds_errf(err, "COPY stream corrupt at row %lld: field %d has length %d, outside -1..%d (the stream lost its framing; re-run the unload)",
                 (long long)p->rows + 1, field + 1, (int)l, MAX_FIELD_LEN);
        return fail(p);
    }
    return 0;
}

/* ---- header -------------------------------------------------------------- */

/* Consumes header bytes from the piece; sets *taken. */
static int feed_header(etl_copy_parser *p, const uint8_t *buf, size_t len, size_t *taken, cds_err *err)
{
    size_t t = 0, n;
    while (p->state == ST_HEADER && t < len) {
        if (carry_take(p, buf + t, len - t, &n, err) != 0)
            return -1;
        t += n;
        if (p->carry_len < p->need)
            break;
        if (p->need == HEADER_FIXED) {
            if (memcmp(p->carry, SIGNATURE, SIGNATURE_LEN) != 0) {
                cds_errf(err, "not a binary COPY stream: the PGCOPY signature is missing (use COPY ... TO STDOUT (FORMAT binary))");
                return fail(p);
            }
            uint32_t flags = load_be32(p->carry + SIGNATURE_LEN);
            if (flags & FLAG_OIDS) {
                cds_errf(err, "binary COPY stream includes OIDs, which this reader does not take (COPY without the OIDS option)");
                return fail(p);
            }
            if (flags & FLAGS_CRITICAL) {
                cds_errf(err, "binary COPY stream has unknown critical flags 0x%08x (a newer PostgreSQL format; upgrade cds)",
                         flags);
                return fail(p);
            }
            int32_t ext = (int32_t)load_be32(p->carry + SIGNATURE_LEN + 4);
            if (ext < 0 || ext > MAX_HEADER_EXT) {
                cds_errf(err, "binary COPY header extension length %d is out of range (corrupt stream; re-run the unload)",
                         (int)ext);
                return fail(p);
            }
            p->need = HEADER_FIXED + (size_t)ext;
        }
        if (p->carry_len == p->need) {
            p->state = ST_ROWS;
            p->carry_len = 0;
            p->need = 0;
        }
    }
    *taken = t;
    return 0;
}

/* ---- rows ---------------------------------------------------------------- */

static int emit_row(etl_copy_parser *p, int nf, cds_err *err)
{
    p->rows++;
    if (p->fn(p->ctx, p->fields, nf, err) != 0)
        return fail(p);
    return 0;
}

static void reset_pending(etl_copy_parser *p)
{
    p->carry_len = 0;
    p->need = 0;
    p->scan = 0;
    p->fi = 0;
    p->nf = -2;
}

/* The trailer was read: the stream must end here. */
static int end_of_data(etl_copy_parser *p, size_t left_in_piece, cds_err *err)
{
    p->state = ST_DONE;
    if (left_in_piece) {
        cds_errf(err, "COPY stream has %zu bytes after its end-of-data marker (corrupt stream; re-run the unload)",
                 left_in_piece);
        return fail(p);
    }
    return 0;
}

/* Walks the pending row in carry as far as its bytes go.  Returns 1 when it
 * is complete (or is the trailer, then nf = -1), 0 when `need` bytes are
 * needed, -1 on error. */
static int carry_walk(etl_copy_parser *p, cds_err *err)
{
    if (p->nf == -2) {
        if (p->carry_len < 2) {
            p->need = 2;
            return 0;
        }
        int nf = (int16_t)load_be16(p->carry);
        if (check_nfields(p, nf, err) != 0)
            return -1;
        p->nf = nf;
        p->scan = 2;
        p->fi = 0;
        if (nf == -1)
            return 1;
    }
    while (p->fi < p->nf) {
        if (p->carry_len < p->scan + 4) {
            p->need = p->scan + 4;
            return 0;
        }
        int32_t l = (int32_t)load_be32(p->carry + p->scan);
        if (check_field_len(p, l, p->fi, err) != 0)
            return -1;
        size_t end = p->scan + 4 + (l > 0 ? (size_t)l : 0);
        if (p->carry_len < end) {
            p->need = end;
            return 0;
        }
        p->scan = end;
        p->fi++;
    }
    return 1;
}

/* Points the field views at the complete row in carry. */
static void carry_views(etl_copy_parser *p)
{
    size_t at = 2;
    for (int i = 0; i < p->nf; i++) {
        int32_t l = (int32_t)load_be32(p->carry + at);
        at += 4;
        p->fields[i].data = l >= 0 ? p->carry + at : NULL;
        p->fields[i].len = l;
        at += l > 0 ? (size_t)l : 0;
    }
}

/* Tops up the pending row from the piece; emits it when complete. */
static int feed_carry(etl_copy_parser *p, const uint8_t *buf, size_t len, size_t *taken, cds_err *err)
{
    size_t t = 0, n;
    for (;;) {
        int r = carry_walk(p, err);
        if (r < 0)
            return -1;
        if (r == 1)
            break;
        if (t == len) {
            *taken = t;
            return 0;
        }
        if (carry_take(p, buf + t, len - t, &n, err) != 0)
            return -1;
        t += n;
    }
    *taken = t;
    if (p->nf == -1) {
        reset_pending(p);
        return end_of_data(p, len - t, err);
    }
    int nf = p->nf;
    carry_views(p);
    reset_pending(p);
    return emit_row(p, nf, err);
}

/* Saves the incomplete row at [row, end) in carry, with the walk state. */
static int stash_partial(etl_copy_parser *p, const uint8_t *row, const uint8_t *end, int nf, int fi,
                         const uint8_t *scan, size_t need, cds_err *err)
{
    size_t n = (size_t)(end - row);
    if (carry_reserve(p, n, err) != 0) /* not `need`: a corrupt length must not allocate 1 GiB */
        return -1;
    memcpy(p->carry, row, n);
    p->carry_len = n;
    p->nf = nf;
    p->fi = fi;
    p->scan = (size_t)(scan - row);
    p->need = need;
    return 0;
}

/* Decodes every whole row of the piece in place; a cut row goes to carry. */
static int feed_direct(etl_copy_parser *p, const uint8_t *buf, size_t len, cds_err *err)
{
    const uint8_t *q = buf, *end = buf + len;
    while (q < end) {
        const uint8_t *row = q;
        if (end - q < 2)
            return stash_partial(p, row, end, -2, 0, row, 2, err);
        int nf = (int16_t)load_be16(q);
        q += 2;
        if (nf != p->nfields_first && check_nfields(p, nf, err) != 0)
            return -1;
        if (nf == -1)
            return end_of_data(p, (size_t)(end - q), err);
        etl_field *f = p->fields;
        for (int i = 0; i < nf; i++) {
            if (end - q < 4)
                return stash_partial(p, row, end, nf, i, q, (size_t)(q - row) + 4, err);
            int32_t l = (int32_t)load_be32(q);
            if (l > 0 && l <= MAX_FIELD_LEN) {
                if (end - q - 4 < l)
                    return stash_partial(p, row, end, nf, i, q, (size_t)(q - row) + 4 + (size_t)l, err);
                f[i].data = q + 4;
                f[i].len = l;
                q += 4 + l;
            } else {
                if (check_field_len(p, l, i, err) != 0)
                    return -1;
                f[i].data = l == 0 ? q + 4 : NULL;
                f[i].len = l;
                q += 4;
            }
        }
        if (emit_row(p, nf, err) != 0)
            return -1;
    }
    return 0;
}

int etl_copy_parser_feed(etl_copy_parser *p, const uint8_t *buf, size_t len, cds_err *err)
{
    size_t t;
    switch (p->state) {
    case ST_FAILED:
        return cds_errf(err, "COPY parser already failed; start a new stream");
    case ST_DONE:
        if (len == 0)
            return 0;
        cds_errf(err, "COPY stream has %zu bytes after its end-of-data marker (corrupt stream; re-run the unload)", len);
        return fail(p);
    case ST_HEADER:
        if (feed_header(p, buf, len, &t, err) != 0)
            return -1;
        buf += t;
        len -= t;
        if (p->state == ST_HEADER || len == 0)
            return 0;
        break;
    case ST_ROWS:
        break;
    }
    if (p->carry_len > 0) {
        if (feed_carry(p, buf, len, &t, err) != 0)
            return -1;
        buf += t;
        len -= t;
        if (p->state != ST_ROWS || len == 0)
            return 0;
    }
    return feed_direct(p, buf, len, err);
}

int etl_copy_parser_finish(etl_copy_parser *p, cds_err *err)
{
    switch (p->state) {
    case ST_DONE:
        return 0;
    case ST_FAILED:
        return cds_errf(err, "COPY parser already failed; start a new stream");
    case ST_HEADER:
        cds_errf(err, "COPY stream ended inside its header (%zu of at least %d bytes): the stream is truncated (the connection was lost? re-run the unload)",
                 p->carry_len, HEADER_FIXED);
        return fail(p);
    case ST_ROWS:
        break;
    }
    if (p->carry_len == 0)
        cds_errf(err, "COPY stream ended after %lld rows without its end-of-data marker: the stream is truncated (the connection was lost? re-run the unload)",
                 (long long)p->rows);
    else if (p->nf >= 0 && p->fi < p->nf && p->carry_len >= p->scan + 4)
        cds_errf(err, "COPY stream ended inside field %d of row %lld: its length %d runs past the %zu bytes left (the stream is truncated or corrupt; re-run the unload)",
                 p->fi + 1, (long long)p->rows + 1, (int)(int32_t)load_be32(p->carry + p->scan),
                 p->carry_len - p->scan - 4);
    else
        cds_errf(err, "COPY stream ended inside row %lld (%zu bytes of it received): the stream is truncated (the connection was lost? re-run the unload)",
                 (long long)p->rows + 1, p->carry_len);
    return fail(p);
}
