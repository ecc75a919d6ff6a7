/* etl_value: PostgreSQL binary send formats of the types ETL reads, decoded
 * into numbers.
 *
 * Scalars: int2, int4, int8 (big-endian two's complement), float4, float8
 * (big-endian IEEE 754), numeric (int16 ndigits, weight, sign, dscale, then
 * ndigits base-10000 digits; NaN and infinities by sign code).  Arrays: int32
 * ndim, int32 has-nulls flag, uint32 element type OID, ndim pairs of int32
 * (size, lower bound), then each element as int32 length (-1 NULL) and value.
 * bytea and text are their bytes.
 *
 * Type OIDs are those of pg_type in every PostgreSQL and Greenplum release. */
#ifndef CDS_ETL_VALUE_H
#define CDS_ETL_VALUE_H

#include <stddef.h>
#include <stdint.h>

#include "cds_err.h"

enum {
    ETL_OID_BOOL = 16, ETL_OID_BYTEA = 17, ETL_OID_INT8 = 20, ETL_OID_INT2 = 21, ETL_OID_INT4 = 23,
    ETL_OID_TEXT = 25, ETL_OID_FLOAT4 = 700, ETL_OID_FLOAT8 = 701, ETL_OID_VARCHAR = 1043,
    ETL_OID_BPCHAR = 1042, ETL_OID_NUMERIC = 1700,
    ETL_OID_INT2_ARRAY = 1005, ETL_OID_INT4_ARRAY = 1007, ETL_OID_INT8_ARRAY = 1016,
    ETL_OID_FLOAT4_ARRAY = 1021, ETL_OID_FLOAT8_ARRAY = 1022, ETL_OID_NUMERIC_ARRAY = 1231,
};

#define ETL_MAX_DIMS 6

/* 1 if oid is one of the numeric scalar types above. */
int etl_oid_is_numeric(uint32_t oid);
/* The element type of an array type above, or 0. */
uint32_t etl_array_elem_oid(uint32_t array_oid);
/* A readable type name for messages ("int4", "float8[]"...). */
const char *etl_oid_name(uint32_t oid);

/* Decodes one non-NULL numeric scalar of type oid (or a bool, as 0 or 1) into
 * a double; NaN and the infinities come back as such, for the caller to judge.
 * A value whose length is not its type's, or a finite numeric beyond the
 * range of a double, is an error. */
int etl_decode_number(uint32_t oid, const uint8_t *p, int32_t len, double *out, cds_err *err);

/* A decoded array header; elements are walked with etl_array_next. */
typedef struct etl_array {
    int ndim;
    int dims[ETL_MAX_DIMS];
    int64_t count;      /* product of dims */
    int has_nulls;
    uint32_t elem_oid;
    const uint8_t *cur; /* next element */
    const uint8_t *end;
    int64_t index;      /* elements read so far (for messages) */
} etl_array;

/* Reads the array header; checks ndim (0..ETL_MAX_DIMS), the dimensions and
 * that the bytes can hold count elements.  Elements are checked as read. */
int etl_array_open(const uint8_t *p, int32_t len, etl_array *a, cds_err *err);
/* Refuses an array whose element type is not elem_oid (the column's type as
 * the catalog gave it), naming both types. */
int etl_array_expect(const etl_array *a, uint32_t elem_oid, cds_err *err);
/* Decodes the next element into *out; a NULL element, an element of the
 * wrong length or a non-numeric element type is an error. */
int etl_array_next(etl_array *a, double *out, cds_err *err);
/* Bulk forms of etl_array_next, one loop for n elements (at most those
 * left): into floats (float8, int8 and numeric rounded to nearest), or into
 * bytes, where every value must be an integer 0..255. */
int etl_array_read_f32(etl_array *a, float *out, int64_t n, cds_err *err);
int etl_array_read_u8(etl_array *a, uint8_t *out, int64_t n, cds_err *err);

#endif
