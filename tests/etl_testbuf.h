/* etl_testbuf.h: building PostgreSQL binary values and COPY streams by hand,
 * byte by byte and big-endian, for the etl tests. */
#ifndef CDS_ETL_TESTBUF_H
#define CDS_ETL_TESTBUF_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"

typedef struct tbuf {
    uint8_t *p;
    size_t len, cap;
} tbuf;

static inline void tb_bytes(tbuf *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q)
            tap_bail("out of memory building a test stream");
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, src, n);
    b->len += n;
}

static inline void tb_u8(tbuf *b, uint8_t v) { tb_bytes(b, &v, 1); }
static inline void tb_be16(tbuf *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    tb_bytes(b, x, 2);
}
static inline void tb_be32(tbuf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    tb_bytes(b, x, 4);
}
static inline void tb_be64(tbuf *b, uint64_t v)
{
    tb_be32(b, (uint32_t)(v >> 32));
    tb_be32(b, (uint32_t)v);
}
static inline void tb_f32(tbuf *b, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    tb_be32(b, u);
}
static inline void tb_f64(tbuf *b, double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    tb_be64(b, u);
}
static inline void tb_free(tbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Binary numeric: sign code, weight, base-10000 digits. */
static inline void tb_numeric(tbuf *b, uint16_t sign, int16_t weight, const uint16_t *digits, int nd)
{
    tb_be16(b, (uint16_t)nd);
    tb_be16(b, (uint16_t)weight);
    tb_be16(b, sign);
    tb_be16(b, 0); /* dscale: display only */
    for (int i = 0; i < nd; i++)
        tb_be16(b, digits[i]);
}

/* An array header; the caller appends count elements (len + value each). */
static inline void tb_array_header(tbuf *b, uint32_t elem_oid, int ndim, const int *dims, int has_nulls)
{
    tb_be32(b, (uint32_t)ndim);
    tb_be32(b, (uint32_t)has_nulls);
    tb_be32(b, elem_oid);
    for (int d = 0; d < ndim; d++) {
        tb_be32(b, (uint32_t)dims[d]);
        tb_be32(b, 1); /* lower bound */
    }
}

/* COPY framing. */
static inline void tb_copy_header(tbuf *b, uint32_t flags, uint32_t ext)
{
    tb_bytes(b, "PGCOPY\n\377\r\n\0", 11);
    tb_be32(b, flags);
    tb_be32(b, ext);
    for (uint32_t i = 0; i < ext; i++)
        tb_u8(b, 0xAB);
}
static inline void tb_copy_trailer(tbuf *b) { tb_be16(b, 0xFFFF); }

/* A field with the bytes of another buffer as its value. */
static inline void tb_field(tbuf *b, const tbuf *value)
{
    tb_be32(b, (uint32_t)value->len);
    tb_bytes(b, value->p, value->len);
}

#endif
