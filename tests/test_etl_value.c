/* Binary send formats to numbers: every scalar type at its edges, numeric
 * (zero, negative, fractional, tiny and huge weights, long digit strings,
 * NaN and the infinities, corrupt values), and arrays of every element type
 * in 1 to 6 dimensions, read one by one and in bulk into float and uint8,
 * with the refusals: NULL elements, wrong element type or length, too many
 * dimensions, more elements than bytes, values outside uint8. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etl_testbuf.h"
#include "etl_value.h"
#include "tap.h"

static int decode(uint32_t oid, const tbuf *b, double *out, cds_err *err)
{
    return etl_decode_number(oid, b->p, (int32_t)b->len, out, err);
}

static void check_number(uint32_t oid, const tbuf *b, double want, const char *name)
{
    double got = -12345;
    cds_err err = {0};
    int rc = decode(oid, b, &got, &err);
    ok(rc == 0 && (got == want || (isnan(want) && isnan(got))) && signbit(got) == signbit(want), "%s = %.17g", name,
       want);
    if (rc != 0)
        tap_diag("%s", err.msg);
    else if (got != want && !(isnan(want) && isnan(got)))
        tap_diag("got %.17g", got);
}

static void check_refused(uint32_t oid, const tbuf *b, const char *want, const char *name)
{
    double got;
    cds_err err = {0};
    ok(decode(oid, b, &got, &err) != 0 && strstr(err.msg, want), "%s refused: %s", name, err.msg);
}

/* ---- scalars ------------------------------------------------------------- */

static void test_ints_and_floats(void)
{
    tbuf b = {0};
    tb_be16(&b, (uint16_t)-32768);
    check_number(ETL_OID_INT2, &b, -32768, "int2 minimum");
    b.len = 0;
    tb_be16(&b, 32767);
    check_number(ETL_OID_INT2, &b, 32767, "int2 maximum");
    b.len = 0;
    tb_be32(&b, (uint32_t)-2147483647 - 1);
    check_number(ETL_OID_INT4, &b, -2147483648.0, "int4 minimum");
    b.len = 0;
    tb_be32(&b, 123456789);
    check_number(ETL_OID_INT4, &b, 123456789, "int4");
    b.len = 0;
    tb_be64(&b, (uint64_t)-9007199254740993LL);
    check_number(ETL_OID_INT8, &b, -9007199254740992.0, "int8 beyond 2^53 rounds to nearest");
    b.len = 0;
    tb_be64(&b, 42);
    check_number(ETL_OID_INT8, &b, 42, "int8");
    b.len = 0;
    tb_f32(&b, -1.5f);
    check_number(ETL_OID_FLOAT4, &b, -1.5, "float4");
    b.len = 0;
    tb_f32(&b, 0.1f);
    check_number(ETL_OID_FLOAT4, &b, (double)0.1f, "float4 0.1 widened exactly");
    b.len = 0;
    tb_f32(&b, NAN);
    check_number(ETL_OID_FLOAT4, &b, NAN, "float4 NaN");
    b.len = 0;
    tb_f64(&b, -0.0);
    check_number(ETL_OID_FLOAT8, &b, -0.0, "float8 negative zero");
    b.len = 0;
    tb_f64(&b, 6.02214076e23);
    check_number(ETL_OID_FLOAT8, &b, 6.02214076e23, "float8");
    b.len = 0;
    tb_f64(&b, -INFINITY);
    check_number(ETL_OID_FLOAT8, &b, -INFINITY, "float8 -Infinity");
    b.len = 0;
    tb_u8(&b, 1);
    check_number(ETL_OID_BOOL, &b, 1, "bool true");

    b.len = 0;
    tb_be32(&b, 7);
    check_refused(ETL_OID_INT8, &b, "int8 value has 4 bytes, expected 8", "int8 of 4 bytes");
    check_refused(ETL_OID_INT2, &b, "int2 value has 4 bytes, expected 2", "int2 of 4 bytes");
    check_refused(ETL_OID_FLOAT8, &b, "expected 8", "float8 of 4 bytes");
    check_refused(ETL_OID_TEXT, &b, "cannot read a value of type text", "text as a number");
    double d;
    cds_err err;
    ok(etl_decode_number(ETL_OID_INT4, NULL, -1, &d, &err) != 0 && strstr(err.msg, "NULL"), "NULL refused: %s",
       err.msg);
    tb_free(&b);
}

static void numeric(tbuf *b, uint16_t sign, int16_t weight, int nd, ...)
{
    uint16_t digits[64];
    va_list ap;
    va_start(ap, nd);
    for (int i = 0; i < nd; i++)
        digits[i] = (uint16_t)va_arg(ap, int);
    va_end(ap);
    b->len = 0;
    tb_numeric(b, sign, weight, digits, nd);
}

#define POS 0x0000
#define NEG 0x4000

static void test_numeric(void)
{
    tbuf b = {0};
    numeric(&b, POS, 0, 0);
    check_number(ETL_OID_NUMERIC, &b, 0, "numeric 0");
    numeric(&b, NEG, -1, 1, 5000);
    check_number(ETL_OID_NUMERIC, &b, -0.5, "numeric -0.5");
    numeric(&b, POS, 1, 3, 1, 2345, 6789);
    check_number(ETL_OID_NUMERIC, &b, 12345.6789, "numeric 12345.6789");
    numeric(&b, POS, -5, 1, 1);
    check_number(ETL_OID_NUMERIC, &b, 1e-20, "numeric 1e-20 (weight -5)");
    numeric(&b, NEG, -1, 2, 1, 2);
    check_number(ETL_OID_NUMERIC, &b, -0.00010002, "numeric -0.00010002");
    numeric(&b, POS, 2, 1, 7);
    check_number(ETL_OID_NUMERIC, &b, 7e8, "numeric 700000000 (trailing groups implied)");
    numeric(&b, POS, 0, 1, 9999);
    check_number(ETL_OID_NUMERIC, &b, 9999, "numeric 9999");
    numeric(&b, POS, 7, 8, 12, 3456, 7890, 1234, 5678, 9012, 3456, 7890);
    check_number(ETL_OID_NUMERIC, &b, 123456789012345678901234567890.0, "numeric with 30 digits (strtod path)");
    numeric(&b, POS, 0, 6, 3, 1415, 9265, 3589, 7932, 3846);
    check_number(ETL_OID_NUMERIC, &b, strtod("3.14159265358979323846", NULL), "numeric pi to 20 places");
    numeric(&b, NEG, -30, 1, 123);
    check_number(ETL_OID_NUMERIC, &b, -strtod("123e-120", NULL), "numeric -1.23e-118");
    numeric(&b, POS, 70, 1, 1);
    check_number(ETL_OID_NUMERIC, &b, 1e280, "numeric 1e280");
    numeric(&b, 0xC000, 0, 0);
    check_number(ETL_OID_NUMERIC, &b, NAN, "numeric NaN");
    numeric(&b, 0xD000, 0, 0);
    check_number(ETL_OID_NUMERIC, &b, INFINITY, "numeric Infinity");
    numeric(&b, 0xF000, 0, 0);
    check_number(ETL_OID_NUMERIC, &b, -INFINITY, "numeric -Infinity");

    numeric(&b, POS, 100, 1, 1);
    check_refused(ETL_OID_NUMERIC, &b, "too large for float8", "numeric 1e400");
    numeric(&b, POS, 0, 1, 10000);
    check_refused(ETL_OID_NUMERIC, &b, "not base-10000", "numeric digit 10000");
    numeric(&b, 0x1234, 0, 1, 1);
    check_refused(ETL_OID_NUMERIC, &b, "sign code", "numeric with a bad sign");
    numeric(&b, POS, 0, 2, 1, 2);
    b.len -= 2;
    check_refused(ETL_OID_NUMERIC, &b, "claims 2 digits", "numeric shorter than its digits");
    b.len = 5;
    check_refused(ETL_OID_NUMERIC, &b, "8-byte header", "numeric shorter than its header");
    tb_free(&b);
}

/* ---- arrays -------------------------------------------------------------- */

/* An array of count elements of oid, with values base + i. */
static void make_array(tbuf *b, uint32_t oid, int ndim, const int *dims, int base)
{
    int64_t count = ndim ? 1 : 0;
    for (int d = 0; d < ndim; d++)
        count *= dims[d];
    b->len = 0;
    tb_array_header(b, oid, ndim, dims, 0);
    for (int64_t i = 0; i < count; i++) {
        int v = base + (int)i;
        switch (oid) {
        case ETL_OID_INT2: tb_be32(b, 2); tb_be16(b, (uint16_t)v); break;
        case ETL_OID_INT4: tb_be32(b, 4); tb_be32(b, (uint32_t)v); break;
        case ETL_OID_INT8: tb_be32(b, 8); tb_be64(b, (uint64_t)(int64_t)v); break;
        case ETL_OID_FLOAT4: tb_be32(b, 4); tb_f32(b, (float)v); break;
        case ETL_OID_FLOAT8: tb_be32(b, 8); tb_f64(b, v); break;
        case ETL_OID_NUMERIC: {
            tbuf n = {0};
            uint16_t digit = (uint16_t)(v < 0 ? -v : v);
            tb_numeric(&n, v < 0 ? NEG : POS, 0, &digit, v == 0 ? 0 : 1);
            tb_field(b, &n);
            tb_free(&n);
            break;
        }
        }
    }
}

static void test_array_types(void)
{
    static const uint32_t oids[] = {ETL_OID_INT2, ETL_OID_INT4, ETL_OID_INT8, ETL_OID_FLOAT4, ETL_OID_FLOAT8,
                                    ETL_OID_NUMERIC};
    tbuf b = {0};
    for (size_t t = 0; t < sizeof oids / sizeof *oids; t++) {
        const char *name = etl_oid_name(oids[t]);
        int dims[3] = {2, 3, 4};
        make_array(&b, oids[t], 3, dims, -5);
        etl_array a;
        cds_err err = {0};
        ok(etl_array_open(b.p, (int32_t)b.len, &a, &err) == 0 && a.ndim == 3 && a.dims[0] == 2 && a.dims[1] == 3 &&
               a.dims[2] == 4 && a.count == 24 && a.elem_oid == oids[t] && !a.has_nulls,
           "%s[] 2x3x4 header", name);
        ok(etl_array_expect(&a, oids[t], &err) == 0, "%s[] has the expected element type", name);
        int bad = 0;
        for (int i = 0; i < 24; i++) {
            double d;
            if (etl_array_next(&a, &d, &err) != 0 || d != -5 + i)
                bad++;
        }
        is_int(bad, 0, "%s[] elements one by one", name);
        double d;
        ok(etl_array_next(&a, &d, &err) != 0 && strstr(err.msg, "read past its end"), "%s[]: no 25th element", name);

        float f[24];
        etl_array_open(b.p, (int32_t)b.len, &a, &err);
        ok(etl_array_read_f32(&a, f, 10, &err) == 0 && etl_array_read_f32(&a, f + 10, 14, &err) == 0,
           "%s[] read in bulk as float32", name);
        bad = 0;
        for (int i = 0; i < 24; i++)
            bad += f[i] != (float)(-5 + i);
        is_int(bad, 0, "%s[] bulk float32 values", name);
        ok(etl_array_read_f32(&a, f, 1, &err) != 0 && strstr(err.msg, "only 0 are left"), "%s[]: bulk read past the end refused", name);

        uint8_t u[24];
        make_array(&b, oids[t], 3, dims, 240);
        etl_array_open(b.p, (int32_t)b.len, &a, &err);
        ok(etl_array_read_u8(&a, u, 24, &err) != 0 && strstr(err.msg, "element 17 of 24") &&
               strstr(err.msg, "256 does not fit uint8"),
           "%s[] with 256 refused as uint8: %s", name, err.msg);
        make_array(&b, oids[t], 3, dims, 0);
        etl_array_open(b.p, (int32_t)b.len, &a, &err);
        ok(etl_array_read_u8(&a, u, 24, &err) == 0 && u[0] == 0 && u[23] == 23, "%s[] 0..23 read as uint8", name);
    }
    tb_free(&b);
}

static void test_arrays_hot_path(void)
{
    /* float4[1024], the image-table case, through both readers. */
    tbuf b = {0};
    int dims[1] = {1024};
    tb_array_header(&b, ETL_OID_FLOAT4, 1, dims, 0);
    for (int i = 0; i < 1024; i++) {
        tb_be32(&b, 4);
        tb_f32(&b, (float)i * 0.5f - 7.25f);
    }
    etl_array a;
    cds_err err = {0};
    float *f = malloc(1024 * sizeof *f);
    ok(etl_array_open(b.p, (int32_t)b.len, &a, &err) == 0 && etl_array_read_f32(&a, f, 1024, &err) == 0,
       "float4[1024] in bulk");
    int bad = 0;
    for (int i = 0; i < 1024; i++)
        bad += f[i] != (float)i * 0.5f - 7.25f;
    is_int(bad, 0, "float4[1024] values");
    ok(a.cur == a.end && a.index == 1024, "the reader is at the end");

    /* A wrong element length in the middle: named by position. */
    b.p[12 + 8 + 8 * 700 + 3] = 8;
    etl_array_open(b.p, (int32_t)b.len, &a, &err);
    ok(etl_array_read_f32(&a, f, 1024, &err) != 0 && strstr(err.msg, "element 701 of 1024"),
       "a corrupt element length is named: %s", err.msg);
    free(f);
    tb_free(&b);
}

static void test_array_refusals(void)
{
    tbuf b = {0};
    etl_array a;
    cds_err err = {0};
    double d;
    float f[8];

    /* NULL element (has-nulls set, element length -1). */
    int dims[1] = {3};
    tb_array_header(&b, ETL_OID_FLOAT4, 1, dims, 1);
    tb_be32(&b, 4);
    tb_f32(&b, 1);
    tb_be32(&b, 0xFFFFFFFFu);
    tb_be32(&b, 4);
    tb_f32(&b, 3);
    ok(etl_array_open(b.p, (int32_t)b.len, &a, &err) == 0 && a.has_nulls, "an array with NULLs opens, has_nulls set");
    ok(etl_array_read_f32(&a, f, 3, &err) != 0 && strstr(err.msg, "element 2 of 3") && strstr(err.msg, "NULL"),
       "a NULL element is refused by position: %s", err.msg);
    etl_array_open(b.p, (int32_t)b.len, &a, &err);
    ok(etl_array_next(&a, &d, &err) == 0 && d == 1 && etl_array_next(&a, &d, &err) != 0 && strstr(err.msg, "NULL"),
       "etl_array_next refuses it too");

    /* Element type mismatch: int4 data where float8 is expected. */
    int d2[2] = {2, 2};
    make_array(&b, ETL_OID_INT4, 2, d2, 0);
    etl_array_open(b.p, (int32_t)b.len, &a, &err);
    ok(etl_array_expect(&a, ETL_OID_FLOAT8, &err) != 0 && strstr(err.msg, "int4") && strstr(err.msg, "float8[]"),
       "element type mismatch refused: %s", err.msg);

    /* Header says int8 but elements are 4 bytes. */
    make_array(&b, ETL_OID_INT4, 2, d2, 0);
    b.p[11] = ETL_OID_INT8;
    etl_array_open(b.p, (int32_t)b.len, &a, &err);
    ok(etl_array_read_f32(&a, f, 4, &err) != 0 && strstr(err.msg, "int8 value has 4 bytes"),
       "element length not matching the element type refused: %s", err.msg);

    /* Elements that are not numbers. */
    b.len = 0;
    tb_array_header(&b, ETL_OID_TEXT, 1, dims, 0);
    for (int i = 0; i < 3; i++) {
        tb_be32(&b, 1);
        tb_u8(&b, 'a');
    }
    etl_array_open(b.p, (int32_t)b.len, &a, &err);
    ok(etl_array_next(&a, &d, &err) != 0 && strstr(err.msg, "text cannot be read as numbers"),
       "text[] elements refused: %s", err.msg);

    /* Up to ETL_MAX_DIMS dimensions, not more. */
    int d6[7] = {1, 2, 1, 2, 1, 2, 2};
    make_array(&b, ETL_OID_INT2, ETL_MAX_DIMS, d6, 0);
    ok(etl_array_open(b.p, (int32_t)b.len, &a, &err) == 0 && a.ndim == 6 && a.count == 8, "a 6-D array opens");
    make_array(&b, ETL_OID_INT2, 7, d6, 0);
    ok(etl_array_open(b.p, (int32_t)b.len, &a, &err) != 0 && strstr(err.msg, "7 dimensions"),
       "a 7-D array is refused: %s", err.msg);

    /* Empty array. */
    make_array(&b, ETL_OID_FLOAT4, 0, NULL, 0);
    ok(etl_array_open(b.p, (int32_t)b.len, &a, &err) == 0 && a.count == 0 && a.ndim == 0, "an empty array has no elements");

    /* Dimensions claiming more than the bytes hold, including overflow. */
    int huge[3] = {65536, 65536, 65536};
    b.len = 0;
    tb_array_header(&b, ETL_OID_FLOAT4, 3, huge, 0);
    tb_be32(&b, 4);
    tb_f32(&b, 1);
    ok(etl_array_open(b.p, (int32_t)b.len, &a, &err) != 0 && strstr(err.msg, "more elements than"),
       "2^48 claimed elements refused: %s", err.msg);
    int neg[1] = {-1};
    b.len = 0;
    tb_array_header(&b, ETL_OID_FLOAT4, 1, neg, 0);
    ok(etl_array_open(b.p, (int32_t)b.len, &a, &err) != 0 && strstr(err.msg, "size -1"), "negative size refused");
    ok(etl_array_open(b.p, 8, &a, &err) != 0 && strstr(err.msg, "12-byte header"), "short header refused");
    ok(etl_array_open(NULL, -1, &a, &err) != 0 && strstr(err.msg, "NULL"), "NULL array refused");

    /* Cut in the middle of an element. */
    make_array(&b, ETL_OID_FLOAT8, 1, dims, 0);
    etl_array_open(b.p, (int32_t)b.len - 3, &a, &err);
    ok(etl_array_read_f32(&a, f, 3, &err) != 0 && strstr(err.msg, "element 3 of 3"), "a cut element is refused: %s",
       err.msg);

    /* uint8 range: fractions and negatives. */
    b.len = 0;
    tb_array_header(&b, ETL_OID_FLOAT4, 1, dims, 0);
    float vals[3] = {0, 255, 1.5f};
    for (int i = 0; i < 3; i++) {
        tb_be32(&b, 4);
        tb_f32(&b, vals[i]);
    }
    uint8_t u[3];
    etl_array_open(b.p, (int32_t)b.len, &a, &err);
    ok(etl_array_read_u8(&a, u, 3, &err) != 0 && strstr(err.msg, "element 3 of 3") && strstr(err.msg, "1.5"),
       "1.5 is not a uint8: %s", err.msg);
    make_array(&b, ETL_OID_INT4, 1, dims, -1);
    etl_array_open(b.p, (int32_t)b.len, &a, &err);
    ok(etl_array_read_u8(&a, u, 3, &err) != 0 && strstr(err.msg, "element 1 of 3") && strstr(err.msg, "-1"),
       "-1 is not a uint8: %s", err.msg);
    tb_free(&b);
}

static void test_oid_helpers(void)
{
    ok(etl_oid_is_numeric(ETL_OID_NUMERIC) && etl_oid_is_numeric(ETL_OID_INT2) && !etl_oid_is_numeric(ETL_OID_TEXT) &&
           !etl_oid_is_numeric(ETL_OID_FLOAT4_ARRAY),
       "etl_oid_is_numeric");
    ok(etl_array_elem_oid(ETL_OID_FLOAT4_ARRAY) == ETL_OID_FLOAT4 && etl_array_elem_oid(ETL_OID_NUMERIC_ARRAY) == ETL_OID_NUMERIC &&
           etl_array_elem_oid(ETL_OID_FLOAT4) == 0,
       "etl_array_elem_oid");
    ok(strcmp(etl_oid_name(ETL_OID_FLOAT8_ARRAY), "float8[]") == 0 && strcmp(etl_oid_name(ETL_OID_INT8), "int8") == 0,
       "etl_oid_name");
}

int main(void)
{
    test_ints_and_floats();
    test_numeric();
    test_array_types();
    test_arrays_hot_path();
    test_array_refusals();
    test_oid_helpers();
    return tap_done();
}
