/* etl_value: decoding PostgreSQL binary send formats into numbers.
 *
 * Scalars are big-endian; each decoder first checks that the value has the
 * exact length of its type, so a misread column (or a corrupt stream) is
 * reported instead of read as garbage.
 *
 * numeric is a sign, a weight and base-10000 digits: value = sum of
 * digit[i] * 10000^(weight - i).  Summing powers of 10000 in floating point
 * would round at every step, so the value is rebuilt as an integer mantissa
 * m and a decimal exponent e (value = m * 10^e): when m < 2^53 and |e| <= 22,
 * both m and 10^e are exact doubles and one multiplication or division gives
 * the correctly rounded result (the classic strtod fast path); otherwise the
 * digits are printed as "<digits>e<exp>" and handed to strtod, which rounds
 * correctly.  NaN and the infinities have their own sign codes; a finite
 * numeric too large for a double is refused.
 *
 * Arrays: the header is read by etl_array_open, which checks ndim, the
 * dimensions, and that the bytes left can hold `count` elements (each has at
 * least a 4-byte length) before anyone trusts `count`.  Elements are then
 * read one by one (etl_array_next) or in bulk (etl_array_read_f32/_u8).  The
 * bulk readers have one tight loop per fixed-size element type: for
 * float4[] (the hot path of image tables) the loop only moves bytes, and the
 * element lengths are checked by OR-ing them together and testing once at
 * the end; if anything is off, the slow path re-reads from the same start and
 * names the offending element. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etl_value.h"

#define NUMERIC_POS 0x0000
#define NUMERIC_NEG 0x4000
#define NUMERIC_NAN 0xC000
#define NUMERIC_PINF 0xD000
#define NUMERIC_NINF 0xF000
#define NUMERIC_MAX_GROUPS 200 /* 800 significant digits: far past what rounding to a double can depend on */

static inline uint16_t load_be16(const uint8_t *p) { return (uint16_t)((uint16_t)p[0] << 8 | p[1]); }

static inline uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t load_be64(const uint8_t *p) { return (uint64_t)load_be32(p) << 32 | load_be32(p + 4); }

static inline float f32_of_bits(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static inline double f64_of_bits(uint64_t b)
{
    double d;
    memcpy(&d, &b, 8);
    return d;
}

int etl_oid_is_numeric(uint32_t oid)
{
    switch (oid) {
    case ETL_OID_INT2: case ETL_OID_INT4: case ETL_OID_INT8:
    case ETL_OID_FLOAT4: case ETL_OID_FLOAT8: case ETL_OID_NUMERIC:
        return 1;
    default:
        return 0;
    }
}

uint32_t etl_array_elem_oid(uint32_t array_oid)
{
    switch (array_oid) {
    case ETL_OID_INT2_ARRAY: return ETL_OID_INT2;
    case ETL_OID_INT4_ARRAY: return ETL_OID_INT4;
    case ETL_OID_INT8_ARRAY: return ETL_OID_INT8;
    case ETL_OID_FLOAT4_ARRAY: return ETL_OID_FLOAT4;
    case ETL_OID_FLOAT8_ARRAY: return ETL_OID_FLOAT8;
    case ETL_OID_NUMERIC_ARRAY: return ETL_OID_NUMERIC;
    default: return 0;
    }
}

const char *etl_oid_name(uint32_t oid)
{
    switch (oid) {
    case ETL_OID_BOOL: return "bool";
    case ETL_OID_BYTEA: return "bytea";
    case ETL_OID_INT8: return "int8";
    case ETL_OID_INT2: return "int2";
    case ETL_OID_INT4: return "int4";
    case ETL_OID_TEXT: return "text";
    case ETL_OID_FLOAT4: return "float4";
    case ETL_OID_FLOAT8: return "float8";
    case ETL_OID_VARCHAR: return "varchar";
    case ETL_OID_BPCHAR: return "bpchar";
    case ETL_OID_NUMERIC: return "numeric";
    case ETL_OID_INT2_ARRAY: return "int2[]";
    case ETL_OID_INT4_ARRAY: return "int4[]";
    case ETL_OID_INT8_ARRAY: return "int8[]";
    case ETL_OID_FLOAT4_ARRAY: return "float4[]";
    case ETL_OID_FLOAT8_ARRAY: return "float8[]";
    case ETL_OID_NUMERIC_ARRAY: return "numeric[]";
    default: return "an unsupported type";
    }
}

/* ---- numeric ------------------------------------------------------------- */

static const double exact_pow10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                       1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* m * 10^e correctly rounded, when both are exact doubles; else returns 0. */
static int scale_exact(uint64_t m, int e, double *out)
{
    while (m != 0 && m % 10 == 0) {
        m /= 10;
        e++;
    }
    if (m > (UINT64_C(1) << 53) || e < -22 || e > 22)
        return 0;
    *out = e >= 0 ? (double)m * exact_pow10[e] : (double)m / exact_pow10[-e];
    return 1;
}

/* The slow path: "<digits>e<exp>" through strtod. */
static int scale_strtod(const uint8_t *digits, int nd, int weight, double *out)
{
    char buf[NUMERIC_MAX_GROUPS * 4 + 32];
    int used = nd < NUMERIC_MAX_GROUPS ? nd : NUMERIC_MAX_GROUPS;
    int n = 0;
    for (int i = 0; i < used; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "%04u", (unsigned)load_be16(digits + 2 * i));
    snprintf(buf + n, sizeof buf - (size_t)n, "e%d", 4 * (weight - used + 1));
    *out = strtod(buf, NULL);
    return isinf(*out) ? -1 : 0;
}

static int decode_numeric(const uint8_t *p, int32_t len, double *out, cds_err *err)
{
    if (len < 8)
        return cds_errf(err, "numeric value of %d bytes is shorter than its 8-byte header (corrupt COPY stream; re-run the unload)",
                        (int)len);
    int nd = (int16_t)load_be16(p);
    int weight = (int16_t)load_be16(p + 2);
    unsigned sign = load_be16(p + 4);
    if (nd < 0 || len != 8 + 2 * nd)
        return cds_errf(err, "numeric value of %d bytes claims %d digits (corrupt COPY stream; re-run the unload)", (int)len,
                        nd);
    switch (sign) {
    case NUMERIC_NAN: *out = NAN; return 0;
    case NUMERIC_PINF: *out = INFINITY; return 0;
    case NUMERIC_NINF: *out = -INFINITY; return 0;
    case NUMERIC_POS: case NUMERIC_NEG: break;
    default:
        return cds_errf(err, "numeric value has unknown sign code 0x%04x (corrupt COPY stream; re-run the unload)", sign);
    }
    const uint8_t *digits = p + 8;
    uint64_t m = 0;
    for (int i = 0; i < nd; i++) {
        unsigned d = load_be16(digits + 2 * i);
        if (d > 9999)
            return cds_errf(err, "numeric digit %u is not base-10000 (corrupt COPY stream; re-run the unload)", d);
        if (i < 4)
            m = m * 10000 + d;
    }
    double v = 0;
    if (nd > 0 && !(nd <= 4 && scale_exact(m, 4 * (weight - nd + 1), &v)) && scale_strtod(digits, nd, weight, &v) != 0)
        return cds_errf(err, "numeric value with %d digits before the point is too large for float8; scale it down in the query",
                        4 * (weight + 1));
    *out = sign == NUMERIC_NEG ? -v : v;
    return 0;
}

/* ---- scalars ------------------------------------------------------------- */

static int wrong_length(uint32_t oid, int32_t len, int want, cds_err *err)
{
    return cds_errf(err, "%s value has %d bytes, expected %d (the column is not of the type the plan says, or the COPY stream is corrupt; re-run the unload)",
                    etl_oid_name(oid), (int)len, want);
}

int etl_decode_number(uint32_t oid, const uint8_t *p, int32_t len, double *out, cds_err *err)
{
    if (len < 0)
        return cds_errf(err, "NULL where a %s number was expected; fill or filter NULLs in the query", etl_oid_name(oid));
    switch (oid) {
    case ETL_OID_INT2:
        if (len != 2)
            return wrong_length(oid, len, 2, err);
        *out = (int16_t)load_be16(p);
        return 0;
    case ETL_OID_INT4:
        if (len != 4)
            return wrong_length(oid, len, 4, err);
        *out = (int32_t)load_be32(p);
        return 0;
    case ETL_OID_INT8:
        if (len != 8)
            return wrong_length(oid, len, 8, err);
        *out = (double)(int64_t)load_be64(p);
        return 0;
    case ETL_OID_FLOAT4:
        if (len != 4)
            return wrong_length(oid, len, 4, err);
        *out = f32_of_bits(load_be32(p));
        return 0;
    case ETL_OID_FLOAT8:
        if (len != 8)
            return wrong_length(oid, len, 8, err);
        *out = f64_of_bits(load_be64(p));
        return 0;
    case ETL_OID_BOOL:
        if (len != 1)
            return wrong_length(oid, len, 1, err);
        *out = p[0] != 0;
        return 0;
    case ETL_OID_NUMERIC:
        return decode_numeric(p, len, out, err);
    default:
        return cds_errf(err, "cannot read a value of type %s (oid %u) as a number; cast the column to float8 in the query",
                        etl_oid_name(oid), (unsigned)oid);
    }
}

/* ---- arrays -------------------------------------------------------------- */

int etl_array_open(const uint8_t *p, int32_t len, etl_array *a, cds_err *err)
{
    memset(a, 0, sizeof *a);
    if (len < 0)
        return cds_errf(err, "NULL where an array was expected; fill or filter NULLs in the query");
    if (len < 12)
        return cds_errf(err, "array value of %d bytes is shorter than its 12-byte header (corrupt COPY stream; re-run the unload)",
                        (int)len);
    int32_t ndim = (int32_t)load_be32(p);
    uint32_t flags = load_be32(p + 4);
    a->elem_oid = load_be32(p + 8);
    if (ndim < 0 || ndim > ETL_MAX_DIMS)
        return cds_errf(err, "array has %d dimensions; at most %d are supported (reshape it in the query)", (int)ndim,
                        ETL_MAX_DIMS);
    if (flags > 1)
        return cds_errf(err, "array header flags 0x%x are not PostgreSQL's (corrupt COPY stream; re-run the unload)", flags);
    size_t hdr = 12 + 8 * (size_t)ndim;
    if ((size_t)len < hdr)
        return cds_errf(err, "array value of %d bytes is shorter than its header for %d dimensions (corrupt COPY stream; re-run the unload)",
                        (int)len, (int)ndim);
    int64_t max_elems = ((int64_t)len - (int64_t)hdr) / 4, count = ndim > 0 ? 1 : 0;
    for (int d = 0; d < ndim; d++) {
        int32_t size = (int32_t)load_be32(p + 12 + 8 * d);
        if (size < 0)
            return cds_errf(err, "array dimension %d has size %d (corrupt COPY stream; re-run the unload)", d + 1, (int)size);
        a->dims[d] = size;
        if (size > 0 && count > max_elems / size)
            count = max_elems + 1; /* saturate: too many for the bytes */
        else
            count *= size;
    }
    if (count > max_elems)
        return cds_errf(err, "array claims more elements than its %d bytes can hold (corrupt COPY stream; re-run the unload)",
                        (int)len);
    a->ndim = ndim;
    a->count = count;
    a->has_nulls = (int)flags;
    a->cur = p + hdr;
    a->end = p + len;
    return 0;
}

int etl_array_expect(const etl_array *a, uint32_t elem_oid, cds_err *err)
{
    if (a->elem_oid != elem_oid) {
        char got[32];
        snprintf(got, sizeof got, "%s", etl_oid_name(a->elem_oid));
        return cds_errf(err, "array elements are of type %s (oid %u) but the column is %s[] (the table changed since planning? re-run the unload)",
                        got, (unsigned)a->elem_oid, etl_oid_name(elem_oid));
    }
    return 0;
}

static int elem_error(const etl_array *a, const char *what, cds_err *err)
{
    return cds_errf(err, "array element %lld of %lld: %s", (long long)a->index + 1, (long long)a->count, what);
}

int etl_array_next(etl_array *a, double *out, cds_err *err)
{
    if (a->index >= a->count)
        return cds_errf(err, "array has only %lld elements; read past its end", (long long)a->count);
    if (a->end - a->cur < 4)
        return elem_error(a, "cut short (corrupt COPY stream; re-run the unload)", err);
    int32_t l = (int32_t)load_be32(a->cur);
    if (l == 4 && a->elem_oid == ETL_OID_FLOAT4 && a->end - a->cur >= 8) {
        *out = f32_of_bits(load_be32(a->cur + 4));
        a->cur += 8;
        a->index++;
        return 0;
    }
    if (l == -1)
        return elem_error(a, "NULL inside an array; replace NULL elements in the query (e.g. array_replace(col, NULL, 0))",
                          err);
    if (l < 0 || a->end - a->cur - 4 < l)
        return elem_error(a, "its length runs past the array (corrupt COPY stream; re-run the unload)", err);
    if (!etl_oid_is_numeric(a->elem_oid)) {
        char what[128];
        snprintf(what, sizeof what, "elements of type %s cannot be read as numbers; cast the column to float4[]",
                 etl_oid_name(a->elem_oid));
        return elem_error(a, what, err);
    }
    if (etl_decode_number(a->elem_oid, a->cur + 4, l, out, err) != 0)
        return cds_err_wrap(err, "array element %lld of %lld", (long long)a->index + 1, (long long)a->count);
    a->cur += 4 + l;
    a->index++;
    return 0;
}

static int check_bulk(const etl_array *a, int64_t n, cds_err *err)
{
    if (n < 0 || n > a->count - a->index)
        return cds_errf(err, "asked for %lld array elements but only %lld are left", (long long)n,
                        (long long)(a->count - a->index));
    return 0;
}

/* The fixed length of one element of a numeric type, or 0 (numeric). */
static int fixed_size(uint32_t oid)
{
    switch (oid) {
    case ETL_OID_INT2: return 2;
    case ETL_OID_INT4: case ETL_OID_FLOAT4: return 4;
    case ETL_OID_INT8: case ETL_OID_FLOAT8: return 8;
    default: return 0;
    }
}

/* One fixed-size element (its length already checked) as a double. */
static inline double fixed_value(uint32_t oid, const uint8_t *p)
{
    switch (oid) {
    case ETL_OID_INT2: return (int16_t)load_be16(p);
    case ETL_OID_INT4: return (int32_t)load_be32(p);
    case ETL_OID_FLOAT4: return f32_of_bits(load_be32(p));
    case ETL_OID_INT8: return (double)(int64_t)load_be64(p);
    default: return f64_of_bits(load_be64(p));
    }
}

/* 1 when the next n elements are all fixed-size, non-NULL and inside the
 * array, so the tight loops below may skip per-element checks. */
static int fixed_run(const etl_array *a, int64_t n, int *size)
{
    *size = fixed_size(a->elem_oid);
    if (*size == 0 || (a->end - a->cur) / (4 + *size) < n)
        return 0;
    uint32_t bad = 0;
    const uint8_t *c = a->cur;
    for (int64_t i = 0; i < n; i++, c += 4 + *size)
        bad |= load_be32(c) ^ (uint32_t)*size;
    return bad == 0;
}

int etl_array_read_f32(etl_array *a, float *out, int64_t n, cds_err *err)
{
    if (check_bulk(a, n, err) != 0)
        return -1;
    const uint8_t *c = a->cur;
    if (a->elem_oid == ETL_OID_FLOAT4 && (a->end - c) / 8 >= n) {
        /* The hot path: move bytes, check the lengths once at the end. */
        uint32_t bad = 0;
        for (int64_t i = 0; i < n; i++, c += 8) {
            bad |= load_be32(c) ^ 4u;
            uint32_t b = load_be32(c + 4);
            memcpy(out + i, &b, 4);
        }
        if (bad == 0) {
            a->cur = c;
            a->index += n;
            return 0;
        }
    } else {
        int size;
        if (fixed_run(a, n, &size)) {
            for (int64_t i = 0; i < n; i++, c += 4 + size)
                out[i] = (float)fixed_value(a->elem_oid, c + 4);
            a->cur = c;
            a->index += n;
            return 0;
        }
    }
    /* Numeric elements, or something is wrong: one by one, with messages. */
    for (int64_t i = 0; i < n; i++) {
        double d;
        if (etl_array_next(a, &d, err) != 0)
            return -1;
        out[i] = (float)d;
    }
    return 0;
}

static int not_u8(const etl_array *a, double v, cds_err *err)
{
    char what[160];
    snprintf(what, sizeof what, "value %g does not fit uint8 (integers 0..255); use --dtype float32", v);
    return elem_error(a, what, err);
}

static inline int is_u8(double v) { return v >= 0 && v <= 255 && v == (double)(int)v; }

int etl_array_read_u8(etl_array *a, uint8_t *out, int64_t n, cds_err *err)
{
    if (check_bulk(a, n, err) != 0)
        return -1;
    int size;
    if (fixed_run(a, n, &size)) {
        const uint8_t *c = a->cur;
        for (int64_t i = 0; i < n; i++, c += 4 + size) {
            double v = fixed_value(a->elem_oid, c + 4);
            if (!is_u8(v)) {
                a->index += i;
                a->cur = c;
                return not_u8(a, v, err);
            }
            out[i] = (uint8_t)v;
        }
        a->cur = c;
        a->index += n;
        return 0;
    }
    for (int64_t i = 0; i < n; i++) {
        double v;
        if (etl_array_next(a, &v, err) != 0)
            return -1;
        if (!is_u8(v)) {
            a->index--;
            return not_u8(a, v, err);
        }
        out[i] = (uint8_t)v;
    }
    return 0;
}
