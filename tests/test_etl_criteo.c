/* The Criteo transform: MurmurHash3_x86_32 against published vectors (the
 * SMHasher verification value pins the whole algorithm), bucket edges at and
 * around every boundary, missing values, categorical slots, the order and
 * ranges of the 39 positions, the JSON round trip of the parameters, and the
 * errors for a bad label or an unreadable column. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etl_criteo.h"
#include "etl_value.h"
#include "tap.h"

/* ---- MurmurHash3 ---------------------------------------------------------- */

static void test_murmur_vectors(void)
{
    static const struct {
        const char *key;
        size_t len;
        uint32_t seed, want;
    } v[] = {
        /* Ian Boyd's vectors from SMHasher (stackoverflow.com/questions/14747343) */
        {"", 0, 0, 0},
        {"", 0, 1, 0x514E28B7u},
        {"", 0, 0xffffffffu, 0x81F16F39u},
        {"\xff\xff\xff\xff", 4, 0, 0x76293B50u},
        {"\x21\x43\x65\x87", 4, 0, 0xF55B516Bu},
        {"\x21\x43\x65\x87", 4, 0x5082EDEEu, 0x2362F9DEu},
        {"\x21\x43\x65", 3, 0, 0x7E4A8634u},
        {"\x21\x43", 2, 0, 0xA0F7B07Au},
        {"\x21", 1, 0, 0x72661CF4u},
        {"\0\0\0\0", 4, 0, 0x2362F9DEu},
        {"\0\0\0", 3, 0, 0x85F0B427u},
        {"\0\0", 2, 0, 0x30F4C306u},
        {"\0", 1, 0, 0x514E28B7u},
        /* string vectors (spaolacci/murmur3, mmh3) */
        {"hello", 5, 0, 0x248BFA47u},
        {"test", 4, 0, 0xBA6BD213u},
        {"Hello, world!", 13, 0, 0xC0363E43u},
        {"Hello, world!", 13, 0x9747b28cu, 0x24884CBAu},
        {"The quick brown fox jumps over the lazy dog", 43, 0, 0x2E4FF723u},
        {"The quick brown fox jumps over the lazy dog", 43, 0x9747b28cu, 0x2FA826CDu},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint32_t got = etl_murmur3_32(v[i].key, v[i].len, v[i].seed);
        if (!ok(got == v[i].want, "murmur3(%zu bytes \"%.12s\", seed 0x%x) = 0x%08X", v[i].len, v[i].key, v[i].seed,
                v[i].want))
            tap_diag("got 0x%08X", got);
    }
}

/* SMHasher's VerificationTest: hash {0}, {0,1}, ... {0..254} with seed
 * 256 - len, hash the 256 little-endian results with seed 0. */
static void test_murmur_smhasher(void)
{
    uint8_t key[256], hashes[1024];
    for (int i = 0; i < 256; i++) {
        key[i] = (uint8_t)i;
        uint32_t h = etl_murmur3_32(key, (size_t)i, (uint32_t)(256 - i));
        for (int b = 0; b < 4; b++)
            hashes[4 * i + b] = (uint8_t)(h >> (8 * b));
    }
    uint32_t final = etl_murmur3_32(hashes, sizeof hashes, 0);
    is_int(final, 0xB0F57EE3u, "SMHasher verification value of MurmurHash3_x86_32 is 0xB0F57EE3");

    /* an unaligned key gives the same value (no word loads from odd addresses) */
    char buf[64];
    memcpy(buf + 1, "The quick brown fox jumps over the lazy dog", 43);
    is_int(etl_murmur3_32(buf + 1, 43, 0), 0x2E4FF723u, "an unaligned key hashes the same");
}

/* ---- integer buckets ----------------------------------------------------- */

static void test_edges(void)
{
    etl_criteo c;
    cds_err err = {0};
    etl_criteo_init(&c);
    is_int(etl_criteo_int_position(&c, 0, 5.0), 1, "no edges: every present value in bucket 1");

    double q[] = {10, 1, 5, 5, NAN, 20, 10, INFINITY, 1};
    ok(etl_criteo_set_edges(&c, 2, q, sizeof q / sizeof q[0], &err) == 0, "set_edges accepts unsorted quantiles with duplicates");
    ok(c.edges[2][0] == 1 && c.edges[2][1] == 5 && c.edges[2][2] == 10 && c.edges[2][3] == 20 && isinf(c.edges[2][4]) &&
           isinf(c.edges[2][47]),
       "edges sorted, duplicates and NaN/inf dropped, padded with +inf");
    int base = 2 * 50;
    is_int(etl_criteo_int_position(&c, 2, 0.5), base + 1, "below the first edge: bucket 1");
    is_int(etl_criteo_int_position(&c, 2, -1e300), base + 1, "far below: bucket 1");
    is_int(etl_criteo_int_position(&c, 2, 1.0), base + 2, "equal to the first edge: bucket 2");
    is_int(etl_criteo_int_position(&c, 2, 4.999), base + 2, "between edges 1 and 2: bucket 2");
    is_int(etl_criteo_int_position(&c, 2, 5.0), base + 3, "equal to the second edge: bucket 3");
    is_int(etl_criteo_int_position(&c, 2, 20.0), base + 5, "equal to the last finite edge: bucket 5");
    is_int(etl_criteo_int_position(&c, 2, 1e12), base + 5, "above the last finite edge: bucket 5, never a padded one");
    is_int(etl_criteo_int_position(&c, 2, NAN), base, "NaN: the missing slot");

    double full[48];
    for (int k = 0; k < 48; k++)
        full[k] = k * 2.0;
    ok(etl_criteo_set_edges(&c, 12, full, 48, &err) == 0, "48 distinct edges");
    is_int(etl_criteo_int_position(&c, 12, -0.5), 12 * 50 + 1, "I13 below edge 0: bucket 1");
    is_int(etl_criteo_int_position(&c, 12, 94.0), 12 * 50 + 49, "I13 equal to the last edge: bucket 49");
    is_int(etl_criteo_int_position(&c, 12, 1e9), 12 * 50 + 49, "I13 above the last edge: bucket 49 (the last of its range)");
    is_int(etl_criteo_int_position(&c, 12, 46.0), 12 * 50 + 1 + 24, "I13 equal to edge 23 (46): bucket 25");

    double many[49] = {0};
    ok(etl_criteo_set_edges(&c, 0, many, 49, &err) == -1 && strstr(err.msg, "at most 48"),
       "49 quantiles refused (%s)", err.msg);
    ok(etl_criteo_set_edges(&c, 13, full, 3, &err) == -1 && strstr(err.msg, "0..12"), "feature 13 refused (%s)", err.msg);

    double sample[980];
    for (int k = 0; k < 980; k++)
        sample[k] = k;
    ok(etl_criteo_edges_from_sample(&c, 1, sample, 980, &err) == 0, "edges from a sorted sample of 980");
    ok(c.edges[1][0] == 19 && c.edges[1][1] == 39 && c.edges[1][47] == 959,
       "percentile_disc at k/49: edges 19, 39, ..., 959 (got %g %g %g)", c.edges[1][0], c.edges[1][1], c.edges[1][47]);
    int counts[50] = {0};
    for (int k = 0; k < 980; k++)
        counts[etl_criteo_int_position(&c, 1, sample[k]) - 50]++;
    int even = counts[0] == 0 && counts[1] == 19 && counts[49] == 21;
    for (int b = 2; b < 49; b++)
        even = even && counts[b] == 20;
    ok(even, "the 49 buckets hold 19, 20, ..., 20, 21 of the 980 values");
    double few[] = {0, 0, 0, 0, 1, 1, 3};
    ok(etl_criteo_edges_from_sample(&c, 1, few, 7, &err) == 0 && c.edges[1][0] == 0 && c.edges[1][1] == 1 &&
           c.edges[1][2] == 3 && isinf(c.edges[1][3]),
       "a small sample with duplicates gives its distinct values as edges");
    ok(etl_criteo_edges_from_sample(&c, 1, few, 0, &err) == 0 && isinf(c.edges[1][0]), "an empty sample: no edges");
}

/* ---- one row -------------------------------------------------------------- */

typedef struct rowbuf {
    uint8_t bytes[40][32];
    etl_field f[40];
    uint32_t oid[40];
} rowbuf;

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

static void set_null(rowbuf *r, int i, uint32_t oid)
{
    r->oid[i] = oid;
    r->f[i].data = NULL;
    r->f[i].len = -1;
}

static void set_bytes(rowbuf *r, int i, uint32_t oid, const void *p, size_t n)
{
    r->oid[i] = oid;
    memcpy(r->bytes[i], p, n);
    r->f[i].data = r->bytes[i];
    r->f[i].len = (int32_t)n;
}

static void set_text(rowbuf *r, int i, const char *s)
{
    set_bytes(r, i, ETL_OID_TEXT, s, strlen(s));
}

static void set_int(rowbuf *r, int i, uint32_t oid, int64_t v)
{
    int n = oid == ETL_OID_INT2 ? 2 : oid == ETL_OID_INT4 ? 4 : 8;
    uint8_t b[8];
    put_be(b, (uint64_t)v, n);
    set_bytes(r, i, oid, b, (size_t)n);
}

static void set_f8(rowbuf *r, int i, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    uint8_t b[8];
    put_be(b, u, 8);
    set_bytes(r, i, ETL_OID_FLOAT8, b, 8);
}

static void set_f4(rowbuf *r, int i, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    uint8_t b[4];
    put_be(b, u, 4);
    set_bytes(r, i, ETL_OID_FLOAT4, b, 4);
}

/* numeric: ndigits, weight, sign, dscale, then base-10000 digits */
static void set_numeric(rowbuf *r, int i, int weight, int sign, int dscale, const int *digits, int nd)
{
    uint8_t b[32];
    put_be(b, (uint64_t)nd, 2);
    put_be(b + 2, (uint64_t)(uint16_t)weight, 2);
    put_be(b + 4, (uint64_t)sign, 2);
    put_be(b + 6, (uint64_t)dscale, 2);
    for (int k = 0; k < nd; k++)
        put_be(b + 8 + 2 * k, (uint64_t)digits[k], 2);
    set_bytes(r, i, ETL_OID_NUMERIC, b, (size_t)(8 + 2 * nd));
}

/* A row with every feature present as int4 / 8-hex-digit text. */
static void plain_row(rowbuf *r, int label)
{
    set_int(r, 0, ETL_OID_INT4, label);
    for (int i = 1; i <= 13; i++)
        set_int(r, i, ETL_OID_INT4, i * 3);
    for (int j = 0; j < 26; j++) {
        char s[16];
        snprintf(s, sizeof s, "%08x", 0x68fd1e64u + (unsigned)j * 7919u);
        set_text(r, 14 + j, s);
    }
}

static int increasing_in_range(const int32_t idx[39])
{
    for (int i = 0; i < 39; i++) {
        int lo = i < 13 ? i * 50 : 650 + (i - 13) * 256;
        int hi = i < 13 ? lo + 49 : lo + 255;
        if (idx[i] < lo || idx[i] > hi || (i > 0 && idx[i] <= idx[i - 1]) || idx[i] >= 7306)
            return 0;
    }
    return 1;
}

static void test_row_types(void)
{
    etl_criteo c;
    cds_err err = {0};
    etl_criteo_init(&c);
    c.seed = 0;
    double e[] = {0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597};
    for (int i = 0; i < 13; i++)
        etl_criteo_set_edges(&c, i, e, sizeof e / sizeof e[0], &err);
    /* bucket of v with edges e: 1 + #{e <= v} */

    rowbuf r;
    memset(&r, 0, sizeof r);
    plain_row(&r, 1);
    set_int(&r, 1, ETL_OID_INT4, 4);        /* I1: edges <= 4: 0,1,2,3 -> bucket 5 */
    set_int(&r, 2, ETL_OID_INT8, 1000);     /* I2: 16 edges <= 1000 -> bucket 17 */
    set_f8(&r, 3, -2.0);                    /* I3: below 0 -> bucket 1 */
    int d123[] = {123};
    set_numeric(&r, 4, 0, 0, 0, d123, 1);   /* I4: 123 -> 11 edges <= 123 -> bucket 12 */
    set_text(&r, 5, "42");                  /* I5: 9 edges -> bucket 10 */
    set_text(&r, 6, "");                    /* I6: missing */
    set_null(&r, 7, ETL_OID_INT4);          /* I7: missing */
    set_f8(&r, 8, NAN);                     /* I8: missing */
    set_text(&r, 9, " 7 ");                 /* I9: 5 edges -> bucket 6 */
    set_int(&r, 10, ETL_OID_INT2, 2);       /* I10: 3 edges -> bucket 4 */
    set_f4(&r, 11, 1e6f);                   /* I11: 17 edges -> bucket 18 */
    set_bytes(&r, 12, ETL_OID_VARCHAR, "  ", 2); /* I12: blank text, missing */
    set_numeric(&r, 13, 0, 0xC000, 0, NULL, 0);  /* I13: numeric NaN, missing */
    set_text(&r, 14, "68fd1e64");
    set_text(&r, 15, "");
    set_null(&r, 16, ETL_OID_TEXT);
    set_bytes(&r, 17, ETL_OID_VARCHAR, "05db9164", 8);
    set_bytes(&r, 18, ETL_OID_BPCHAR, "abc     ", 8);
    set_bytes(&r, 19, ETL_OID_BYTEA, "\x01\x02", 2);

    int32_t label = -1, idx[39];
    int rc = etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err);
    ok(rc == 0, "a row with int4/int8/float8/numeric/text/int2/float4 integers (%s)", rc ? err.msg : "ok");
    is_int(label, 1, "label 1");
    is_int(idx[0], 0 * 50 + 5, "I1 int4 4 -> bucket 5");
    is_int(idx[1], 1 * 50 + 17, "I2 int8 1000 -> bucket 17");
    is_int(idx[2], 2 * 50 + 1, "I3 float8 -2 -> bucket 1 (below the first edge)");
    is_int(idx[3], 3 * 50 + 12, "I4 numeric 123 -> bucket 12");
    is_int(idx[4], 4 * 50 + 10, "I5 text '42' -> bucket 10");
    is_int(idx[5], 5 * 50, "I6 empty text -> missing slot");
    is_int(idx[6], 6 * 50, "I7 NULL -> missing slot");
    is_int(idx[7], 7 * 50, "I8 float8 NaN -> missing slot");
    is_int(idx[8], 8 * 50 + 6, "I9 text ' 7 ' -> bucket 6");
    is_int(idx[9], 9 * 50 + 4, "I10 int2 2 -> bucket 4 (equal to an edge)");
    is_int(idx[10], 10 * 50 + 18, "I11 float4 1e6 -> bucket 18 (above the last edge)");
    is_int(idx[11], 11 * 50, "I12 blank varchar -> missing slot");
    is_int(idx[12], 12 * 50, "I13 numeric NaN -> missing slot");
    is_int(idx[13], 650 + 1 + (int)(etl_murmur3_32("68fd1e64", 8, 0) % 255), "C1 text: 1 + murmur3 mod 255");
    is_int(idx[14], 650 + 256, "C2 empty text -> missing slot");
    is_int(idx[15], 650 + 2 * 256, "C3 NULL -> missing slot");
    is_int(idx[16], 650 + 3 * 256 + 1 + (int)(etl_murmur3_32("05db9164", 8, 0) % 255), "C4 varchar hashed alike");
    is_int(idx[17], etl_criteo_cat_position(&c, 4, "abc", 3), "C5 bpchar: trailing blanks are not hashed");
    is_int(idx[18], etl_criteo_cat_position(&c, 5, "\x01\x02", 2), "C6 bytea: its bytes");
    ok(increasing_in_range(idx), "all 39 positions increasing and inside their feature's range");

    /* the seed is part of the mapping */
    etl_criteo c2 = c;
    c2.seed = 0x9747b28cu;
    int differs = 0;
    for (int j = 0; j < 26; j++) {
        char s[16];
        snprintf(s, sizeof s, "%08x", 0x1000u * (unsigned)j);
        differs += etl_criteo_cat_position(&c, j, s, 8) != etl_criteo_cat_position(&c2, j, s, 8);
    }
    ok(differs > 20, "the seed changes the categorical slots (%d of 26 differ)", differs);

    /* every label type */
    plain_row(&r, 0);
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == 0 && label == 0 && increasing_in_range(idx),
       "label int4 0; a full row of plain values in range");
    set_text(&r, 0, "1");
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == 0 && label == 1, "label text '1'");
    set_bytes(&r, 0, ETL_OID_BOOL, "\x01", 1);
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == 0 && label == 1, "label bool true");
    set_f8(&r, 0, 0.0);
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == 0 && label == 0, "label float8 0.0");
    set_int(&r, 0, ETL_OID_INT8, 1);
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == 0 && label == 1, "label int8 1");

    /* a sweep of random rows stays in range and increasing */
    uint32_t s = 12345;
    int all = 1;
    for (int n = 0; n < 2000 && all; n++) {
        plain_row(&r, (int)(n & 1));
        for (int i = 1; i <= 39; i++) {
            s = s * 1103515245u + 12345u;
            if ((s >> 16) % 7 == 0) {
                set_null(&r, i, i <= 13 ? ETL_OID_INT8 : ETL_OID_TEXT);
            } else if (i <= 13) {
                set_int(&r, i, ETL_OID_INT8, (int64_t)((s >> 8) % 5000) - 10);
            } else {
                char t[16];
                snprintf(t, sizeof t, "%08x", s);
                set_text(&r, i, (s >> 20) % 11 == 0 ? "" : t);
            }
        }
        all = etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == 0 && increasing_in_range(idx);
    }
    ok(all, "2000 random rows with NULLs and empties: 39 increasing positions, each in range");
}

static int one_line(const cds_err *err)
{
    return err->msg[0] && !strchr(err->msg, '\n');
}

static void test_row_errors(void)
{
    etl_criteo c;
    cds_err err = {0};
    etl_criteo_init(&c);
    rowbuf r;
    int32_t label, idx[39];

    memset(&r, 0, sizeof r);
    plain_row(&r, 1);
    set_null(&r, 0, ETL_OID_INT4);
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == -1 && strstr(err.msg, "label") &&
           strstr(err.msg, "NULL") && one_line(&err),
       "a NULL label is refused, naming the label column (%s)", err.msg);
    set_int(&r, 0, ETL_OID_INT4, 2);
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == -1 && strstr(err.msg, "label") &&
           strstr(err.msg, "0 or 1"),
       "label 2 is refused (%s)", err.msg);
    set_int(&r, 0, ETL_OID_INT4, -1);
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == -1 && strstr(err.msg, "label"), "label -1 is refused");
    set_f8(&r, 0, 0.5);
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == -1 && strstr(err.msg, "label"), "label 0.5 is refused");
    set_text(&r, 0, "yes");
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == -1 && strstr(err.msg, "label") && one_line(&err),
       "label text 'yes' is refused (%s)", err.msg);
    set_text(&r, 0, "");
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == -1 && strstr(err.msg, "label"),
       "an empty text label is refused (%s)", err.msg);

    plain_row(&r, 1);
    set_text(&r, 5, "12abc");
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == -1 && strstr(err.msg, "I5") &&
           strstr(err.msg, "12abc") && one_line(&err),
       "a text integer that is not a number names its column (%s)", err.msg);
    plain_row(&r, 1);
    set_bytes(&r, 3, ETL_OID_BYTEA, "\x01", 1);
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == -1 && strstr(err.msg, "I3") &&
           strstr(err.msg, "bytea"),
       "a bytea integer feature is refused, naming it and its type (%s)", err.msg);
    plain_row(&r, 1);
    set_int(&r, 20, ETL_OID_INT4, 7);
    ok(etl_criteo_row(&c, r.oid, r.f, 40, &label, idx, &err) == -1 && strstr(err.msg, "C7"),
       "an int4 categorical is refused, naming it (%s)", err.msg);
    plain_row(&r, 1);
    ok(etl_criteo_check_oids(r.oid, &err) == 0, "check_oids accepts int4 + text");
    ok(etl_criteo_row(&c, r.oid, r.f, 39, &label, idx, &err) == -1 && strstr(err.msg, "40"),
       "39 fields are refused (%s)", err.msg);
}

/* ---- JSON ----------------------------------------------------------------- */

static int same_params(const etl_criteo *a, const etl_criteo *b)
{
    if (a->seed != b->seed)
        return 0;
    for (int i = 0; i < 13; i++)
        for (int k = 0; k < 48; k++) {
            double x = a->edges[i][k], y = b->edges[i][k];
            if (memcmp(&x, &y, sizeof x) != 0)
                return 0;
        }
    return 1;
}

static json_t *params_json(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j)
        tap_bail("test JSON does not parse");
    return j;
}

static void test_json(void)
{
    etl_criteo c, back;
    cds_err err = {0};
    etl_criteo_init(&c);
    c.seed = 0xdeadbeefu;
    double awkward[] = {-5, 0.1, 1.0 / 3, 2.5e-300, 7, 123456789.123456789, 1e300};
    etl_criteo_set_edges(&c, 0, awkward, 7, &err);
    double full[48];
    for (int k = 0; k < 48; k++)
        full[k] = exp(k * 0.37) - 1.0;
    etl_criteo_set_edges(&c, 12, full, 48, &err);

    json_t *j = etl_criteo_to_json(&c);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    ok(text && !strstr(text, "inf") && !strstr(text, "nan") && strstr(text, "\"width\":7306"),
       "to_json: no infinities, width 7306");
    json_t *j2 = params_json(text);
    memset(&back, 0x5a, sizeof back);
    ok(etl_criteo_from_json(&back, j2, &err) == 0, "from_json reads it back (%s)", err.msg);
    ok(same_params(&c, &back), "the parameters come back bit for bit (edges, padding, seed)");
    json_decref(j2);
    free(text);

    etl_criteo_init(&c);
    j = etl_criteo_to_json(&c);
    ok(etl_criteo_from_json(&back, j, &err) == 0 && same_params(&c, &back), "default parameters round-trip");
    json_decref(j);

    static const struct {
        const char *what, *json, *want;
    } bad[] = {
        {"not an object", "[]", "not a JSON object"},
        {"wrong format", "{\"format\":\"x\"}", "format"},
        {"wrong width", "{\"format\":\"criteo-onehot\",\"hash\":\"murmur3_x86_32\",\"version\":1,\"width\":7000}",
         "width"},
        {"seed too large",
         "{\"format\":\"criteo-onehot\",\"hash\":\"murmur3_x86_32\",\"version\":1,\"width\":7306,\"int_features\":13,"
         "\"int_slots\":50,\"cat_features\":26,\"cat_slots\":256,\"seed\":4294967296,\"edges\":[]}",
         "seed"},
        {"12 edge rows",
         "{\"format\":\"criteo-onehot\",\"hash\":\"murmur3_x86_32\",\"version\":1,\"width\":7306,\"int_features\":13,"
         "\"int_slots\":50,\"cat_features\":26,\"cat_slots\":256,\"seed\":1,\"edges\":[[],[],[],[],[],[],[],[],[],[],[],[]]}",
         "13 arrays"},
        {"non-increasing edges",
         "{\"format\":\"criteo-onehot\",\"hash\":\"murmur3_x86_32\",\"version\":1,\"width\":7306,\"int_features\":13,"
         "\"int_slots\":50,\"cat_features\":26,\"cat_slots\":256,\"seed\":1,\"edges\":[[],[],[],[1,1],[],[],[],[],[],[],[],[],[]]}",
         "edges[3][1]"},
        {"a string edge",
         "{\"format\":\"criteo-onehot\",\"hash\":\"murmur3_x86_32\",\"version\":1,\"width\":7306,\"int_features\":13,"
         "\"int_slots\":50,\"cat_features\":26,\"cat_slots\":256,\"seed\":1,\"edges\":[[\"1\"],[],[],[],[],[],[],[],[],[],[],[],[]]}",
         "edges[0][0]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *b = params_json(bad[i].json);
        etl_criteo_init(&back);
        back.seed = 77;
        int rc = etl_criteo_from_json(&back, b, &err);
        ok(rc == -1 && strstr(err.msg, bad[i].want) && one_line(&err) && back.seed == 77,
           "from_json refuses %s and leaves the params alone (%s)", bad[i].what, err.msg);
        json_decref(b);
    }
    ok(etl_criteo_from_json(&back, NULL, &err) == -1, "from_json refuses NULL");
}

int main(void)
{
    test_murmur_vectors();
    test_murmur_smhasher();
    test_edges();
    test_row_types();
    test_row_errors();
    test_json();
    return tap_done();
}
