/* etl_criteo: the Criteo click-log transform of the Cerebro-DS study, from one
 * raw row to 39 one-hot positions in a 7306-wide space.
 *
 * A raw row has 40 columns, in this order: the label (0 or 1), 13 integer
 * features I1..I13 and 26 categorical features C1..C26 (8 hex digits in the
 * real data).  Any feature may be NULL or empty ("missing").  Each feature
 * sets exactly one position; the positions of one row are written in
 * increasing order, one per feature:
 *
 *   position      feature              meaning
 *   i*50          I(i+1), i = 0..12    missing (NULL, empty text, NaN)
 *   i*50 + b      b = 1..49            value bucket b = 1 + #{edges e : e <= v}
 *   650 + j*256   C(j+1), j = 0..25    missing (NULL, empty text)
 *   650 + j*256 + s, s = 1..255        s = 1 + murmur3_x86_32(bytes, seed) % 255
 *
 * so integer feature i owns [i*50, i*50+49], categorical j owns
 * [650+j*256, 650+j*256+255], and the width is 13*50 + 26*256 = 7306.  The
 * 48 edges of each integer feature are strictly increasing finite numbers
 * followed, when the data has fewer distinct quantiles, by +inf padding: a
 * finite value then never reaches the padded buckets, and the count of
 * buckets stays 49.  A value below the first edge goes to bucket 1, one equal
 * to an edge to the bucket above it, one at or above the last to bucket 49.
 *
 * The parameters (edges and seed) are computed once per dataset, stored in
 * every shard's manifest as JSON (etl_criteo_to_json) and read back bit for
 * bit (jansson prints doubles with 17 significant digits; the +inf padding is
 * left out and restored on reading), so the training side can rebuild or
 * apply the same mapping.
 *
 * The hash is Austin Appleby's MurmurHash3_x86_32 with little-endian block
 * reads, the value Python's mmh3.hash(key, seed, signed=False) returns. */
#ifndef CDS_ETL_CRITEO_H
#define CDS_ETL_CRITEO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "cds_err.h"
#include "etl_copy.h"

#define ETL_CRITEO_INT_FEATURES 13
#define ETL_CRITEO_CAT_FEATURES 26
#define ETL_CRITEO_FEATURES 39   /* one position per feature */
#define ETL_CRITEO_FIELDS 40     /* label + features */
#define ETL_CRITEO_EDGES 48      /* per integer feature */
#define ETL_CRITEO_INT_SLOTS 50  /* missing + 49 buckets */
#define ETL_CRITEO_CAT_SLOTS 256 /* missing + 255 hash slots */
#define ETL_CRITEO_CAT_BASE (ETL_CRITEO_INT_FEATURES * ETL_CRITEO_INT_SLOTS) /* 650 */
#define ETL_CRITEO_WIDTH (ETL_CRITEO_CAT_BASE + ETL_CRITEO_CAT_FEATURES * ETL_CRITEO_CAT_SLOTS) /* 7306 */
#define ETL_CRITEO_FORMAT_VERSION 1

typedef struct etl_criteo {
    /* Strictly increasing finite edges, then +inf up to ETL_CRITEO_EDGES. */
    double edges[ETL_CRITEO_INT_FEATURES][ETL_CRITEO_EDGES];
    uint32_t seed; /* of the categorical hash */
} etl_criteo;

/* MurmurHash3_x86_32 of len bytes. */
uint32_t etl_murmur3_32(const void *key, size_t len, uint32_t seed);

/* Seed 0 and every edge +inf (each present value in bucket 1). */
void etl_criteo_init(etl_criteo *c);

/* Sets the edges of integer feature 0..12 from up to 48 quantile values (as
 * percentile_disc returns them): sorted, NaN and infinities dropped,
 * duplicates dropped, padded with +inf. */
int etl_criteo_set_edges(etl_criteo *c, int feature, const double *quantiles, size_t n, cds_err *err);

/* The same from a whole sorted sample of the non-missing values: the edges
 * are its percentile_disc at k/49, k = 1..48 (the smallest value whose
 * cumulative fraction reaches k/49), so that the 49 buckets hold about equal
 * counts. */
int etl_criteo_edges_from_sample(etl_criteo *c, int feature, const double *sorted, size_t n, cds_err *err);

/* {"format": "criteo-onehot", "version": 1, "width": 7306, "int_features": 13,
 *  "int_slots": 50, "cat_features": 26, "cat_slots": 256,
 *  "hash": "murmur3_x86_32", "seed": S, "edges": [[finite edges of I1], ...]}
 * A new reference, NULL only when out of memory. */
json_t *etl_criteo_to_json(const etl_criteo *c);
/* Reads and checks what etl_criteo_to_json wrote. */
int etl_criteo_from_json(etl_criteo *c, const json_t *j, cds_err *err);

/* The absolute position of integer feature 0..12 for value v (NaN: missing). */
int32_t etl_criteo_int_position(const etl_criteo *c, int feature, double v);
/* The absolute position of categorical feature 0..25 for len bytes (0: missing). */
int32_t etl_criteo_cat_position(const etl_criteo *c, int feature, const void *bytes, size_t len);

/* Checks that the 40 column types can be read: label int2/int4/int8/float4/
 * float8/numeric/bool/text; I1..I13 those numbers or text/varchar/bpchar;
 * C1..C26 text/varchar/bpchar/bytea. */
int etl_criteo_check_oids(const uint32_t oids[ETL_CRITEO_FIELDS], cds_err *err);

/* Transforms one COPY BINARY row of nfields (must be 40) fields in the order
 * label, I1..I13, C1..C26, whose type OIDs are oids[0..39]: writes the label
 * (0 or 1) to *label_out and the 39 increasing positions to idx_out.  A NULL
 * label or one other than 0/1, a text integer that is not a number, or a type
 * the transform cannot read is an error naming the column.  Text integers
 * may be empty (missing) or carry surrounding blanks; bpchar trailing blanks
 * are not part of a categorical's value. */
int etl_criteo_row(const etl_criteo *c, const uint32_t oids[ETL_CRITEO_FIELDS], const etl_field *f, int nfields,
                   int32_t *label_out, int32_t idx_out[ETL_CRITEO_FEATURES], cds_err *err);

/* "label", "I1".."I13", "C1".."C26" for field 0..39. */
const char *etl_criteo_field_name(int field);

#endif
