/* The binary COPY decoder: a stream built by hand (int4, float8, NULL, bytea
 * of 0 to 10,000 bytes, a 2-D int4[] and numeric in every row) is fed whole,
 * byte by byte, and in seeded random pieces, each piece in a heap buffer of
 * its exact size (so AddressSanitizer sees any read past a piece or through a
 * stale view), and every field of every row is checked.  Then the streams it
 * must refuse: a bad signature, OIDs, unknown critical flags, a stream
 * without its trailer, a row cut short, a field length running past its row,
 * a changing field count, a negative length, bytes after the trailer, and a
 * callback that stops the stream.  Last, the two ends of the request that
 * opens such a stream: a spec that is not a JSON object is refused naming
 * what it is and where a good one is, and the DSN shown in messages has no
 * secret setting (the password, sslpassword) while keeping libpq's quoting. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etl_copy.h"
#include "etl_testbuf.h"
#include "etl_unload.h"
#include "etl_value.h"
#include "tap.h"

#define NROWS 64
#define NFIELDS 6
#define BIG_ROW 7
#define BIG_LEN 10000

/* ---- the stream ---------------------------------------------------------- */

static int bytea_len(int i) { return i == 5 ? 0 : i == BIG_ROW ? BIG_LEN : (i * 37) % 300; }
static int32_t want_int(int i) { return i * 7 - 100; }
static double want_f8(int i) { return i * 0.25 - 3; }
static double want_numeric(int i) { return i % 2 ? -(i + 0.5) : i + 0.5; }

static void put_row(tbuf *s, int i)
{
    tbuf v = {0};
    tb_be16(s, NFIELDS);
    tb_be32(s, 4); /* int4 */
    tb_be32(s, (uint32_t)want_int(i));
    tb_be32(s, 8); /* float8 */
    tb_f64(s, want_f8(i));
    tb_be32(s, 0xFFFFFFFFu); /* NULL */
    for (int j = 0; j < bytea_len(i); j++)
        tb_u8(&v, (uint8_t)(i + j));
    tb_field(s, &v);
    v.len = 0;
    int dims[2] = {2, 3};
    tb_array_header(&v, ETL_OID_INT4, 2, dims, 0);
    for (int k = 0; k < 6; k++) {
        tb_be32(&v, 4);
        tb_be32(&v, (uint32_t)(i * 10 + k));
    }
    tb_field(s, &v);
    v.len = 0;
    uint16_t digits[2] = {(uint16_t)i, 5000};
    if (i == 0)
        tb_numeric(&v, 0x0000, -1, digits + 1, 1);
    else
        tb_numeric(&v, i % 2 ? 0x4000 : 0x0000, 0, digits, 2);
    tb_field(s, &v);
    tb_free(&v);
}

static tbuf good_stream(uint32_t ext)
{
    tbuf s = {0};
    tb_copy_header(&s, 0, ext);
    for (int i = 0; i < NROWS; i++)
        put_row(&s, i);
    tb_copy_trailer(&s);
    return s;
}

/* ---- checking rows ------------------------------------------------------- */

typedef struct check {
    int rows;
    int bad;
    const uint8_t *lo, *hi; /* when set, every view must lie in [lo, hi) */
    int outside;
    int stop_at; /* row at which the callback fails, or -1 */
} check;

static void mismatch(check *c, const char *what)
{
    if (c->bad++ < 5)
        tap_diag("row %d: %s", c->rows, what);
}

static void check_row(check *c, const etl_field *f, int nf)
{
    int i = c->rows;
    cds_err err;
    double d;
    if (nf != NFIELDS) {
        mismatch(c, "field count");
        return;
    }
    if (etl_decode_number(ETL_OID_INT4, f[0].data, f[0].len, &d, &err) != 0 || d != want_int(i))
        mismatch(c, "int4");
    if (etl_decode_number(ETL_OID_FLOAT8, f[1].data, f[1].len, &d, &err) != 0 || d != want_f8(i))
        mismatch(c, "float8");
    if (f[2].len != -1 || f[2].data != NULL)
        mismatch(c, "NULL");
    if (f[3].len != bytea_len(i))
        mismatch(c, "bytea length");
    for (int j = 0; j < f[3].len && j < bytea_len(i); j++)
        if (f[3].data[j] != (uint8_t)(i + j)) {
            mismatch(c, "bytea content");
            break;
        }
    etl_array a;
    if (etl_array_open(f[4].data, f[4].len, &a, &err) != 0 || a.ndim != 2 || a.dims[0] != 2 || a.dims[1] != 3 ||
        a.count != 6 || a.elem_oid != ETL_OID_INT4) {
        mismatch(c, "int4[] header");
    } else {
        for (int k = 0; k < 6; k++)
            if (etl_array_next(&a, &d, &err) != 0 || d != i * 10 + k)
                mismatch(c, "int4[] element");
    }
    if (etl_decode_number(ETL_OID_NUMERIC, f[5].data, f[5].len, &d, &err) != 0 || d != want_numeric(i))
        mismatch(c, "numeric");
    for (int k = 0; c->lo && k < nf; k++)
        if (f[k].data && (f[k].data < c->lo || f[k].data + f[k].len > c->hi))
            c->outside++;
}

static int on_row(void *ctx, const etl_field *f, int nf, cds_err *err)
{
    check *c = ctx;
    if (c->rows == c->stop_at)
        return cds_errf(err, "callback stops at row %d", c->rows);
    check_row(c, f, nf);
    c->rows++;
    return 0;
}

static int count_row(void *ctx, const etl_field *f, int nf, cds_err *err)
{
    (void)f;
    (void)err;
    *(int *)ctx += nf == 0;
    return 0;
}

/* ---- feeding ------------------------------------------------------------- */

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

/* Feeds s in pieces: max_piece 0 = whole, 1 = byte by byte, else random
 * sizes 1..max_piece from seed.  Returns feed/finish's result. */
static int feed_pieces(etl_copy_parser *p, const tbuf *s, size_t max_piece, uint64_t seed, check *c, cds_err *err)
{
    size_t at = 0;
    while (at < s->len) {
        size_t n = max_piece == 0 ? s->len : max_piece == 1 ? 1 : 1 + lcg(&seed) % max_piece;
        if (n > s->len - at)
            n = s->len - at;
        uint8_t *piece = malloc(n);
        memcpy(piece, s->p + at, n);
        if (c && max_piece == 0) {
            c->lo = piece;
            c->hi = piece + n;
        }
        int rc = etl_copy_parser_feed(p, piece, n, err);
        if (c)
            c->lo = c->hi = NULL;
        free(piece);
        if (rc != 0)
            return -1;
        at += n;
    }
    return etl_copy_parser_finish(p, err);
}

static void test_good(const char *name, size_t max_piece, uint64_t seed, uint32_t ext)
{
    tbuf s = good_stream(ext);
    check c = {.stop_at = -1};
    cds_err err = {0};
    etl_copy_parser *p = etl_copy_parser_new(on_row, &c, &err);
    int rc = feed_pieces(p, &s, max_piece, seed, &c, &err);
    ok(rc == 0, "%s: stream accepted", name);
    if (rc != 0)
        tap_diag("%s", err.msg);
    is_int(c.rows, NROWS, "%s: every row seen", name);
    is_int(etl_copy_parser_rows(p), NROWS, "%s: parser counts the rows", name);
    is_int(c.bad, 0, "%s: every field decodes to its value", name);
    if (max_piece == 0)
        is_int(c.outside, 0, "%s: fields are views into the fed buffer", name);
    etl_copy_parser_free(p);
    tb_free(&s);
}

/* Feeds s (whole, or byte by byte) and expects a failure whose message holds
 * want. */
static void expect_refused(const tbuf *s, int bytewise, const char *want, const char *name)
{
    check c = {.stop_at = -1};
    cds_err err = {0};
    etl_copy_parser *p = etl_copy_parser_new(on_row, &c, &err);
    int rc = feed_pieces(p, s, bytewise ? 1 : 0, 0, NULL, &err);
    ok(rc != 0 && strstr(err.msg, want), "%s%s refused: %s", name, bytewise ? " (byte by byte)" : "", err.msg);
    etl_copy_parser_free(p);
}

static void expect_both(const tbuf *s, const char *want, const char *name)
{
    expect_refused(s, 0, want, name);
    expect_refused(s, 1, want, name);
}

/* ---- bad streams --------------------------------------------------------- */

static void test_refusals(void)
{
    tbuf s = {0};
    tb_bytes(&s, "PGCOPY\n\377\r\n\1", 11);
    tb_be32(&s, 0);
    tb_be32(&s, 0);
    tb_copy_trailer(&s);
    expect_both(&s, "signature", "bad signature");

    s.len = 0;
    tb_copy_header(&s, 1u << 16, 0);
    tb_copy_trailer(&s);
    expect_both(&s, "OIDs", "OIDs flag");

    s.len = 0;
    tb_copy_header(&s, 1u << 20, 0);
    tb_copy_trailer(&s);
    expect_refused(&s, 0, "critical flags", "unknown critical flag");

    s.len = 0;
    expect_refused(&s, 0, "inside its header", "empty stream");
    tb_bytes(&s, "PGCOPY\n", 7);
    expect_refused(&s, 0, "inside its header", "cut header");

    s.len = 0;
    tb_copy_header(&s, 0, 0);
    for (int i = 0; i < 3; i++)
        put_row(&s, i);
    expect_both(&s, "without its end-of-data marker", "stream without trailer");

    size_t three = s.len;
    put_row(&s, 3);
    s.len = three + (s.len - three) / 2;
    expect_both(&s, "row 4", "row cut short");

    /* A field that claims 100 bytes but has 4, then the trailer: the length
     * runs past the row and the stream. */
    s.len = 0;
    tb_copy_header(&s, 0, 0);
    tb_be16(&s, 1);
    tb_be32(&s, 100);
    tb_be32(&s, 42);
    tb_copy_trailer(&s);
    expect_both(&s, "runs past", "field length past its row");

    /* The same in the middle of a stream: the next row's bytes are read as
     * data, so the field count after it no longer matches. */
    s.len = 0;
    tb_copy_header(&s, 0, 0);
    put_row(&s, 0);
    tb_be16(&s, NFIELDS);
    tb_be32(&s, 6); /* an int4 that claims 6 bytes */
    tb_be32(&s, 1);
    tb_be32(&s, 8);
    tb_f64(&s, 1.0);
    for (int k = 2; k < NFIELDS; k++)
        tb_be32(&s, 0xFFFFFFFFu);
    put_row(&s, 2);
    put_row(&s, 3);
    tb_copy_trailer(&s);
    expect_both(&s, "runs past", "field length past its row, mid-stream");

    s.len = 0;
    tb_copy_header(&s, 0, 0);
    put_row(&s, 0);
    tb_be16(&s, 2);
    tb_be32(&s, 0xFFFFFFFFu);
    tb_be32(&s, 0xFFFFFFFFu);
    tb_copy_trailer(&s);
    expect_both(&s, "2 fields where the first row had 6", "changing field count");

    s.len = 0;
    tb_copy_header(&s, 0, 0);
    tb_be16(&s, 1);
    tb_be32(&s, (uint32_t)-7);
    tb_copy_trailer(&s);
    expect_both(&s, "length -7", "negative field length");

    s.len = 0;
    tb_copy_header(&s, 0, 0);
    tb_be16(&s, 0xFFFE);
    expect_both(&s, "field count -2", "field count below -1");

    s.len = 0;
    tb_copy_header(&s, 0, 0);
    put_row(&s, 0);
    tb_copy_trailer(&s);
    tb_be16(&s, 1);
    expect_both(&s, "after its end-of-data marker", "bytes after the trailer");
    tb_free(&s);
}

static void test_edges(void)
{
    /* Bits 0..15 of the flags are ignorable by definition. */
    tbuf s = {0};
    tb_copy_header(&s, 1u << 3, 0);
    put_row(&s, 0);
    tb_copy_trailer(&s);
    check c = {.stop_at = -1};
    cds_err err = {0};
    etl_copy_parser *p = etl_copy_parser_new(on_row, &c, &err);
    ok(feed_pieces(p, &s, 0, 0, NULL, &err) == 0 && c.rows == 1 && c.bad == 0, "non-critical flag bits are ignored");
    etl_copy_parser_free(p);

    /* Header and trailer only. */
    s.len = 0;
    tb_copy_header(&s, 0, 0);
    tb_copy_trailer(&s);
    c = (check){.stop_at = -1};
    p = etl_copy_parser_new(on_row, &c, &err);
    ok(feed_pieces(p, &s, 1, 0, NULL, &err) == 0 && etl_copy_parser_rows(p) == 0, "an empty table is a valid stream");
    ok(etl_copy_parser_feed(p, s.p, 0, &err) == 0, "feeding nothing after the end is harmless");
    etl_copy_parser_free(p);

    /* Zero-field rows (SELECT with no columns) are rows. */
    s.len = 0;
    tb_copy_header(&s, 0, 0);
    tb_be16(&s, 0);
    tb_be16(&s, 0);
    tb_copy_trailer(&s);
    p = etl_copy_parser_new(NULL, NULL, &err);
    ok(p == NULL, "a parser needs a callback");
    int n = 0;
    p = etl_copy_parser_new(count_row, &n, &err);
    ok(feed_pieces(p, &s, 1, 0, NULL, &err) == 0, "zero-field rows are accepted");
    is_int(n, 2, "zero-field rows reach the callback");
    is_int(etl_copy_parser_rows(p), 2, "zero-field rows are counted");
    etl_copy_parser_free(p);

    /* A callback error stops the stream and is returned as is. */
    tbuf g = good_stream(0);
    check stop = {.stop_at = 10};
    p = etl_copy_parser_new(on_row, &stop, &err);
    ok(etl_copy_parser_feed(p, g.p, g.len, &err) != 0 && strstr(err.msg, "callback stops at row 10"),
       "a callback error stops the stream: %s", err.msg);
    is_int(stop.rows, 10, "no row after the failing one reaches the callback");
    ok(etl_copy_parser_feed(p, g.p, 1, &err) != 0 && strstr(err.msg, "already failed"), "a failed parser stays failed");
    ok(etl_copy_parser_finish(p, &err) != 0, "and cannot finish");
    etl_copy_parser_free(p);
    etl_copy_parser_free(NULL);
    tb_free(&g);
    tb_free(&s);
}

/* Decodes whatever a corrupted row holds, ignoring the verdicts: only
 * memory safety is at stake (AddressSanitizer watches). */
static int tolerant_row(void *ctx, const etl_field *f, int nf, cds_err *err)
{
    (void)err;
    float out[64];
    for (int k = 0; k < nf; k++) {
        double d;
        cds_err e;
        etl_array a;
        etl_decode_number(ETL_OID_NUMERIC, f[k].data, f[k].len, &d, &e);
        etl_decode_number(ETL_OID_INT8, f[k].data, f[k].len, &d, &e);
        if (etl_array_open(f[k].data, f[k].len, &a, &e) == 0)
            etl_array_read_f32(&a, out, a.count < 64 ? a.count : 64, &e);
    }
    ++*(int *)ctx;
    return 0;
}

static void test_corrupted_streams(void)
{
    tbuf good = good_stream(0);
    uint64_t seed = 42;
    int accepted = 0, refused = 0, silent = 0;
    for (int it = 0; it < 400; it++) {
        tbuf s = {0};
        tb_bytes(&s, good.p, good.len);
        int flips = 1 + (int)(lcg(&seed) % 3);
        for (int i = 0; i < flips; i++)
            s.p[lcg(&seed) % s.len] ^= (uint8_t)(1 + lcg(&seed) % 255);
        if (it % 4 == 0)
            s.len = lcg(&seed) % s.len;
        int rows = 0;
        cds_err err = {0};
        etl_copy_parser *p = etl_copy_parser_new(tolerant_row, &rows, &err);
        if (feed_pieces(p, &s, it % 2 ? 1 + lcg(&seed) % 3000 : 0, seed, NULL, &err) == 0)
            accepted++;
        else if (err.msg[0])
            refused++;
        else
            silent++;
        etl_copy_parser_free(p);
        tb_free(&s);
    }
    tap_diag("corrupted streams: %d decoded (damage inside values), %d refused", accepted, refused);
    ok(silent == 0 && accepted + refused == 400, "400 randomly corrupted or cut streams are decoded or refused with a message");
    tb_free(&good);
}

/* ---- the request around the stream ------------------------------------- */

static void test_spec_not_object(void)
{
    static const struct {
        const char *json, *kind;
    } v[] = {
        {"[{\"table\": \"t\"}]", "$: is a JSON array, not an object"},
        {"\"t\"", "$: is a JSON string, not an object"},
        {"42", "$: is a JSON number, not an object"},
        {"true", "$: is a JSON boolean, not an object"},
        {"null", "$: is JSON null, not an object"},
        {NULL, "$: is nothing (no JSON value), not an object"},
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        json_t *j = v[i].json ? json_loads(v[i].json, JSON_DECODE_ANY, NULL) : NULL;
        etl_spec s;
        cds_err err = {0};
        int rc = etl_spec_from_json(j, &s, &err);
        ok(rc != 0 && strncmp(err.msg, v[i].kind, strlen(v[i].kind)) == 0 && strstr(err.msg, "docs/etl.md") &&
               strstr(err.msg, "jobs/etl-fashion-mnist.json is one to copy") && !strchr(err.msg, '\n'),
           "a spec that is %s is refused, naming what it is, the docs and a spec to copy: %s",
           v[i].json ? v[i].json : "(nothing)", err.msg);
        json_decref(j);
    }
}

static void test_dsn_redacted(void)
{
    char *r = etl_dsn_redacted("host=db.example port=5433 user='o\\'neil' password=pw1 sslpassword=pw2 "
                               "application_name='a b\\\\c'");
    ok(r && !strstr(r, "pw1") && !strstr(r, "pw2") && !strstr(r, "password"),
       "neither password nor sslpassword is shown: %s", r ? r : "(null)");
    ok(r && strstr(r, "host='db.example'") && strstr(r, "port='5433'") && strstr(r, "user='o\\'neil'") &&
           strstr(r, "application_name='a b\\\\c'"),
       "the other settings are, quoted as libpq reads them");
    free(r);
    r = etl_dsn_redacted("host='unterminated");
    ok(r && strcmp(r, "(unparsable DSN)") == 0, "an unparsable DSN is not echoed: %s", r);
    free(r);
}

int main(void)
{
    test_good("whole", 0, 0, 0);
    test_good("byte by byte", 1, 0, 0);
    test_good("byte by byte, header extension", 1, 0, 13);
    static const size_t max_pieces[] = {3, 17, 64, 500, 4096, 20000};
    for (size_t i = 0; i < sizeof max_pieces / sizeof *max_pieces; i++) {
        char name[64];
        snprintf(name, sizeof name, "random pieces up to %zu", max_pieces[i]);
        test_good(name, max_pieces[i], 0x5eed + i, i % 2 ? 5 : 0);
    }
    test_refusals();
    test_edges();
    test_corrupted_streams();
    test_spec_not_object();
    test_dsn_redacted();
    return tap_done();
}
