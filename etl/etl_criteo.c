/* etl_criteo: see etl_criteo.h for the layout of the 39 positions.
 *
 * Integer features: a value is decoded to a double (int2/4/8, float4/8 and
 * numeric through etl_decode_number; text by a strict strtod of the trimmed
 * bytes) and placed by a binary search for the number of edges <= value in
 * the feature's 48 sorted edges.  The +inf padding sorts last, so it needs no
 * special case.  NULL, empty text and NaN are "missing".
 *
 * Categorical features: the field's bytes (bpchar without its trailing
 * blanks) are hashed with MurmurHash3_x86_32; NULL and empty are "missing".
 *
 * Invariants: every edge row is strictly increasing over its finite prefix
 * and +inf after it (etl_criteo_set_edges and etl_criteo_from_json both
 * establish it), so a row always yields 39 positions, each inside its
 * feature's range, in increasing order.  Nothing here allocates per row. */
#include "etl_criteo.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "etl_value.h"

/* ---- MurmurHash3_x86_32 ------------------------------------------------- */

static uint32_t rotl32(uint32_t x, int r)
{
    return (x << r) | (x >> (32 - r));
}

static uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t murmur_mix_k(uint32_t k)
{
    k *= 0xcc9e2d51u;
    k = rotl32(k, 15);
    return k * 0x1b873593u;
}

static uint32_t murmur_fmix(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

uint32_t etl_murmur3_32(const void *key, size_t len, uint32_t seed)
{
    const uint8_t *p = key;
    size_t nblocks = len / 4;
    uint32_t h = seed;
    for (size_t i = 0; i < nblocks; i++) {
        h ^= murmur_mix_k(load_le32(p + 4 * i));
        h = rotl32(h, 13);
        h = h * 5 + 0xe6546b64u;
    }
    const uint8_t *tail = p + 4 * nblocks;
    uint32_t k = 0;
    switch (len & 3) {
    case 3: k ^= (uint32_t)tail[2] << 16; /* fall through */
    case 2: k ^= (uint32_t)tail[1] << 8;  /* fall through */
    case 1:
        k ^= tail[0];
        h ^= murmur_mix_k(k);
        break;
    default: break;
    }
    h ^= (uint32_t)len; /* the reference takes len as a 32-bit int */
    return murmur_fmix(h);
}

/* ---- parameters --------------------------------------------------------- */

static const char *const field_names[ETL_CRITEO_FIELDS] = {
    "label", "I1",  "I2",  "I3",  "I4",  "I5",  "I6",  "I7",  "I8",  "I9",  "I10", "I11", "I12", "I13",
    "C1",    "C2",  "C3",  "C4",  "C5",  "C6",  "C7",  "C8",  "C9",  "C10", "C11", "C12", "C13", "C14",
    "C15",   "C16", "C17", "C18", "C19", "C20", "C21", "C22", "C23", "C24", "C25", "C26",
};

const char *etl_criteo_field_name(int field)
{
    return field >= 0 && field < ETL_CRITEO_FIELDS ? field_names[field] : "?";
}

void etl_criteo_init(etl_criteo *c)
{
    for (int i = 0; i < ETL_CRITEO_INT_FEATURES; i++)
        for (int k = 0; k < ETL_CRITEO_EDGES; k++)
            c->edges[i][k] = INFINITY;
    c->seed = 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int check_feature(int feature, cds_err *err)
{
    if (feature < 0 || feature >= ETL_CRITEO_INT_FEATURES)
        return cds_errf(err, "criteo integer feature index %d is out of range: use 0..%d (I1..I13)", feature,
                        ETL_CRITEO_INT_FEATURES - 1);
    return 0;
}

int etl_criteo_set_edges(etl_criteo *c, int feature, const double *quantiles, size_t n, cds_err *err)
{
    if (check_feature(feature, err) != 0)
        return -1;
    if (n > ETL_CRITEO_EDGES)
        return cds_errf(err, "criteo feature %s: %zu quantiles given, at most %d (use etl_criteo_edges_from_sample for a sample)",
                        etl_criteo_field_name(feature + 1), n, ETL_CRITEO_EDGES);
    double v[ETL_CRITEO_EDGES];
    size_t m = 0;
    for (size_t k = 0; k < n; k++)
        if (isfinite(quantiles[k]))
            v[m++] = quantiles[k];
    qsort(v, m, sizeof v[0], cmp_double);
    size_t out = 0;
    for (size_t k = 0; k < m; k++)
        if (out == 0 || v[k] > c->edges[feature][out - 1])
            c->edges[feature][out++] = v[k];
    for (; out < ETL_CRITEO_EDGES; out++)
        c->edges[feature][out] = INFINITY;
    return 0;
}

int etl_criteo_edges_from_sample(etl_criteo *c, int feature, const double *sorted, size_t n, cds_err *err)
{
    if (check_feature(feature, err) != 0)
        return -1;
    double q[ETL_CRITEO_EDGES];
    size_t nq = 0;
    for (size_t k = 1; n > 0 && k <= ETL_CRITEO_EDGES; k++) {
        /* percentile_disc(k/49): the first row whose rank r has r/n >= k/49,
         * i.e. r = ceil(k*n/49), in exact integer arithmetic. */
        size_t r = (k * n + ETL_CRITEO_EDGES) / (ETL_CRITEO_EDGES + 1);
        q[nq++] = sorted[r > 0 ? r - 1 : 0];
    }
    return etl_criteo_set_edges(c, feature, q, nq, err);
}

json_t *etl_criteo_to_json(const etl_criteo *c)
{
    json_t *edges = json_array();
    for (int i = 0; edges && i < ETL_CRITEO_INT_FEATURES; i++) {
        json_t *row = json_array();
        for (int k = 0; row && k < ETL_CRITEO_EDGES && isfinite(c->edges[i][k]); k++)
            json_array_append_new(row, json_real(c->edges[i][k]));
        json_array_append_new(edges, row);
    }
    return json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:I, s:o*}", "format", "criteo-onehot", "version",
                     ETL_CRITEO_FORMAT_VERSION, "width", ETL_CRITEO_WIDTH, "int_features", ETL_CRITEO_INT_FEATURES,
                     "int_slots", ETL_CRITEO_INT_SLOTS, "cat_features", ETL_CRITEO_CAT_FEATURES, "cat_slots",
                     ETL_CRITEO_CAT_SLOTS, "hash", "murmur3_x86_32", "seed", (json_int_t)c->seed, "edges", edges);
}

static int check_json_int(const json_t *j, const char *key, json_int_t want, cds_err *err)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_integer(v) || json_integer_value(v) != want)
        return cds_errf(err, "criteo parameters: \"%s\" must be %lld for this build (written by another version?): unload the dataset again",
                        key, (long long)want);
    return 0;
}

static int read_json_edges(etl_criteo *c, int i, const json_t *row, cds_err *err)
{
    if (!json_is_array(row) || json_array_size(row) > ETL_CRITEO_EDGES)
        return cds_errf(err, "criteo parameters: edges[%d] must be an array of at most %d numbers", i,
                        ETL_CRITEO_EDGES);
    size_t n = json_array_size(row);
    for (size_t k = 0; k < n; k++) {
        json_t *v = json_array_get(row, k);
        double d = json_number_value(v);
        if (!json_is_number(v) || !isfinite(d) || (k > 0 && !(d > c->edges[i][k - 1])))
            return cds_errf(err, "criteo parameters: edges[%d][%zu] must be a finite number above the one before it", i,
                            k);
        c->edges[i][k] = d;
    }
    for (size_t k = n; k < ETL_CRITEO_EDGES; k++)
        c->edges[i][k] = INFINITY;
    return 0;
}

int etl_criteo_from_json(etl_criteo *c, const json_t *j, cds_err *err)
{
    if (!json_is_object(j))
        return cds_errf(err, "criteo parameters are missing or not a JSON object: unload the dataset again");
    const char *fmt = json_string_value(json_object_get(j, "format"));
    const char *hash = json_string_value(json_object_get(j, "hash"));
    if (!fmt || strcmp(fmt, "criteo-onehot") != 0)
        return cds_errf(err, "criteo parameters: \"format\" must be \"criteo-onehot\"");
    if (!hash || strcmp(hash, "murmur3_x86_32") != 0)
        return cds_errf(err, "criteo parameters: \"hash\" must be \"murmur3_x86_32\"");
    if (check_json_int(j, "version", ETL_CRITEO_FORMAT_VERSION, err) != 0 ||
        check_json_int(j, "width", ETL_CRITEO_WIDTH, err) != 0 ||
        check_json_int(j, "int_features", ETL_CRITEO_INT_FEATURES, err) != 0 ||
        check_json_int(j, "int_slots", ETL_CRITEO_INT_SLOTS, err) != 0 ||
        check_json_int(j, "cat_features", ETL_CRITEO_CAT_FEATURES, err) != 0 ||
        check_json_int(j, "cat_slots", ETL_CRITEO_CAT_SLOTS, err) != 0)
        return -1;
    json_t *seed = json_object_get(j, "seed");
    if (!json_is_integer(seed) || json_integer_value(seed) < 0 || json_integer_value(seed) > (json_int_t)UINT32_MAX)
        return cds_errf(err, "criteo parameters: \"seed\" must be an integer in 0..4294967295");
    json_t *edges = json_object_get(j, "edges");
    if (!json_is_array(edges) || json_array_size(edges) != ETL_CRITEO_INT_FEATURES)
        return cds_errf(err, "criteo parameters: \"edges\" must be an array of %d arrays (I1..I13)",
                        ETL_CRITEO_INT_FEATURES);
    etl_criteo tmp;
    tmp.seed = (uint32_t)json_integer_value(seed);
    for (int i = 0; i < ETL_CRITEO_INT_FEATURES; i++)
        if (read_json_edges(&tmp, i, json_array_get(edges, (size_t)i), err) != 0)
            return -1;
    *c = tmp;
    return 0;
}

/* ---- positions ---------------------------------------------------------- */

int32_t etl_criteo_int_position(const etl_criteo *c, int feature, double v)
{
    int32_t base = (int32_t)feature * ETL_CRITEO_INT_SLOTS;
    if (isnan(v))
        return base;
    const double *e = c->edges[feature];
    int lo = 0, hi = ETL_CRITEO_EDGES; /* lo = number of edges <= v */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (e[mid] <= v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return base + 1 + lo;
}

int32_t etl_criteo_cat_position(const etl_criteo *c, int feature, const void *bytes, size_t len)
{
    int32_t base = ETL_CRITEO_CAT_BASE + (int32_t)feature * ETL_CRITEO_CAT_SLOTS;
    if (len == 0)
        return base;
    return base + 1 + (int32_t)(etl_murmur3_32(bytes, len, c->seed) % (ETL_CRITEO_CAT_SLOTS - 1));
}

/* ---- decoding one row --------------------------------------------------- */

static int is_text_oid(uint32_t oid)
{
    return oid == ETL_OID_TEXT || oid == ETL_OID_VARCHAR || oid == ETL_OID_BPCHAR;
}

static int is_number_oid(uint32_t oid)
{
    return oid == ETL_OID_INT2 || oid == ETL_OID_INT4 || oid == ETL_OID_INT8 || oid == ETL_OID_FLOAT4 ||
           oid == ETL_OID_FLOAT8 || oid == ETL_OID_NUMERIC;
}

int etl_criteo_check_oids(const uint32_t oids[ETL_CRITEO_FIELDS], cds_err *err)
{
    for (int i = 0; i < ETL_CRITEO_FIELDS; i++) {
        uint32_t o = oids[i];
        int fine = i == 0                               ? is_number_oid(o) || o == ETL_OID_BOOL || is_text_oid(o)
                   : i <= ETL_CRITEO_INT_FEATURES ? is_number_oid(o) || is_text_oid(o)
                                                        : is_text_oid(o) || o == ETL_OID_BYTEA;
        if (!fine)
            return cds_errf(err, "criteo column %d (%s) has type %s, which the transform cannot read: %s", i + 1,
                            field_names[i], etl_oid_name(o),
                            i == 0 ? "use an integer 0/1 label"
                            : i <= ETL_CRITEO_INT_FEATURES ? "use an integer, float, numeric or text column"
                                                           : "use a text or varchar column");
    }
    return 0;
}

/* Trims ASCII blanks from both ends of [*p, *p + *len). */
static void trim_blanks(const uint8_t **p, size_t *len)
{
    while (*len > 0 && isspace((*p)[0]))
        (*p)++, (*len)--;
    while (*len > 0 && isspace((*p)[*len - 1]))
        (*len)--;
}

/* A text number: 1 with *out set, 0 if empty (missing), -1 if not a number. */
static int parse_text_number(const uint8_t *p, size_t len, double *out)
{
    char buf[64];
    trim_blanks(&p, &len);
    if (len == 0)
        return 0;
    if (len >= sizeof buf)
        return -1;
    memcpy(buf, p, len);
    buf[len] = '\0';
    char *end;
    *out = strtod(buf, &end);
    return end == buf + len ? 1 : -1;
}

/* Decodes field i (a number or text) into *v; NaN means missing. */
static int field_number(const etl_field *f, uint32_t oid, int i, double *v, cds_err *err)
{
    *v = NAN;
    if (f->len < 0)
        return 0;
    if (is_text_oid(oid)) {
        if (parse_text_number(f->data, (size_t)f->len, v) < 0)
            return cds_errf(err, "criteo column %s: text \"%.*s\" is not a number: clean the column or cast it in a view",
                            field_names[i], f->len > 40 ? 40 : (int)f->len, (const char *)f->data);
        return 0;
    }
    if (oid == ETL_OID_BOOL && f->len == 1) {
        *v = f->data[0] ? 1.0 : 0.0;
        return 0;
    }
    if (etl_decode_number(oid, f->data, f->len, v, err) != 0)
        return cds_err_wrap(err, "criteo column %s", field_names[i]);
    return 0;
}

static int read_label(const etl_field *f, uint32_t oid, int32_t *label, cds_err *err)
{
    double v = NAN;
    if (is_text_oid(oid) && f->len >= 0) {
        int rc = parse_text_number(f->data, (size_t)f->len, &v);
        if (rc < 0)
            return cds_errf(err, "criteo label column holds \"%.*s\": it must be 0 or 1 (filter other rows out with a where clause)",
                            f->len > 40 ? 40 : (int)f->len, (const char *)f->data);
    } else if (field_number(f, oid, 0, &v, err) != 0) {
        return -1;
    }
    if (isnan(v))
        return cds_errf(err, "criteo label column is NULL or empty in a row: every row needs 0 or 1 (filter such rows out with a where clause)");
    if (v != 0.0 && v != 1.0)
        return cds_errf(err, "criteo label column holds %g: it must be 0 or 1 (filter other rows out with a where clause)", v);
    *label = (int32_t)v;
    return 0;
}

static int32_t cat_field_position(const etl_criteo *c, int j, const etl_field *f, uint32_t oid)
{
    if (f->len <= 0)
        return etl_criteo_cat_position(c, j, NULL, 0);
    size_t len = (size_t)f->len;
    if (oid == ETL_OID_BPCHAR)
        while (len > 0 && f->data[len - 1] == ' ')
            len--;
    return etl_criteo_cat_position(c, j, f->data, len);
}

int etl_criteo_row(const etl_criteo *c, const uint32_t oids[ETL_CRITEO_FIELDS], const etl_field *f, int nfields,
                   int32_t *label_out, int32_t idx_out[ETL_CRITEO_FEATURES], cds_err *err)
{
    if (nfields != ETL_CRITEO_FIELDS)
        return cds_errf(err, "criteo row has %d columns, expected %d (label, I1..I13, C1..C26)", nfields,
                        ETL_CRITEO_FIELDS);
    if (read_label(&f[0], oids[0], label_out, err) != 0)
        return -1;
    for (int i = 0; i < ETL_CRITEO_INT_FEATURES; i++) {
        int fi = 1 + i;
        double v;
        if (!is_number_oid(oids[fi]) && !is_text_oid(oids[fi]))
            return etl_criteo_check_oids(oids, err);
        if (field_number(&f[fi], oids[fi], fi, &v, err) != 0)
            return -1;
        idx_out[i] = etl_criteo_int_position(c, i, v);
    }
    for (int j = 0; j < ETL_CRITEO_CAT_FEATURES; j++) {
        int fi = 1 + ETL_CRITEO_INT_FEATURES + j;
        if (!is_text_oid(oids[fi]) && oids[fi] != ETL_OID_BYTEA)
            return etl_criteo_check_oids(oids, err);
        idx_out[ETL_CRITEO_INT_FEATURES + j] = cat_field_position(c, j, &f[fi], oids[fi]);
    }
    return 0;
}
