/* etl_rows: turning the fields of a COPY row into a row of a shard.
 *
 * The layout of the plan decides how: plain columns (numbers, arrays, bytea
 * of float32 or uint8, and a label that is an integer, a one-hot array or a
 * text looked up in the plan's sorted dictionary), the Criteo transform
 * (39 indices per row), or MADlib's packed buffers (each buffer unpacked
 * into its rows, checked against its shape columns).  Rows are batched
 * (ETL_BATCH_ROWS) so the shard writer sees few large appends.  Any problem
 * with a value (NULL, a ragged array, a value outside uint8, an unknown
 * label) stops the task with a message that names the column, the table and
 * the row. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "etl_rows.h"
#include "etl_value.h"

int etl_converter_flush(etl_converter *cv, cds_err *err)
{
    if (cv->n == 0)
        return 0;
    for (size_t i = 0; i < cv->n; i++)
        if (cv->y[i] > cv->max_label)
            cv->max_label = cv->y[i];
    int rc = etl_writeq_submit(cv->wq, cv->n, err);
    etl_writeq_batch(cv->wq, &cv->x, &cv->y);
    cv->n = 0;
    return rc;
}

static int where_failed(const etl_converter *cv, cds_err *err)
{
    if (cv->p->layout == ETL_LAYOUT_MADLIB)
        return cds_err_wrap(err, "buffer_id %lld of table %s", (long long)cv->buffer_id, cv->p->source_table);
    return cds_err_wrap(err, "row %lld of table %s", (long long)cv->rows + 1, cv->p->source_table);
}

/* Stores one value at element i of the current feature row. */
static int put_value(etl_converter *cv, int64_t i, double v, const char *col, cds_err *err)
{
    uint8_t *row = cv->x + cv->n * cv->xrow;
    if (cv->p->x_dtype == ETL_U8) {
        if (!(v >= 0 && v <= 255 && v == floor(v)))
            return cds_errf(err, "value %g in column \"%s\" does not fit uint8 (0..255 integers); use --dtype float32", v,
                            col);
        row[i] = (uint8_t)v;
    } else {
        float f = (float)v;
        memcpy(row + i * 4, &f, 4);
    }
    return 0;
}

/* A little-endian float32, whatever this machine's order: bytea features
 * with --feature-encoding float32le, and MADlib's packed buffers (numpy
 * tobytes() or a memcpy in the server's order, little-endian on every
 * platform MADlib supports). */
static float le_f32(const uint8_t *b)
{
    uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int put_array(etl_converter *cv, const etl_col *col, const etl_field *f, int64_t at, cds_err *err)
{
    etl_array a;
    if (etl_array_open(f->data, f->len, &a, err) != 0)
        return cds_err_wrap(err, "column \"%s\"", col->name);
    int same = a.ndim == col->ndim;
    for (int d = 0; same && d < a.ndim; d++)
        same = a.dims[d] == col->dims[d];
    if (!same) {
        char want[64] = "", got[64] = "";
        for (int d = 0; d < col->ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%d", d ? "x" : "", col->dims[d]);
        for (int d = 0; d < a.ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%d", d ? "x" : "", a.dims[d]);
        return cds_errf(err, "ragged arrays in column \"%s\": shape %s after %s; all rows must have the same dimensions",
                        col->name, got[0] ? got : "(empty)", want);
    }
    uint8_t *row = cv->x + cv->n * cv->xrow;
    int rc = cv->p->x_dtype == ETL_U8 ? etl_array_read_u8(&a, row + at, a.count, err)
                                      : etl_array_read_f32(&a, (float *)(void *)(row + at * 4), a.count, err);
    return rc == 0 ? 0 : cds_err_wrap(err, "column \"%s\"", col->name);
}

static int put_bytea(etl_converter *cv, const etl_col *col, const etl_field *f, int64_t at, cds_err *err)
{
    int64_t want = cv->p->bytea_f32 ? col->count * 4 : col->count;
    if (f->len != want)
        return cds_errf(err, "column \"%s\" holds %d bytes but --feature-shape%s needs %lld; fix the shape or the encoding",
                        col->name, f->len, cv->p->bytea_f32 ? " with float32le" : "", (long long)want);
    uint8_t *row = cv->x + cv->n * cv->xrow;
    if (!cv->p->bytea_f32) {
        if (cv->p->x_dtype == ETL_U8) {
            memcpy(row + at, f->data, (size_t)f->len);
        } else {
            float *out = (float *)(void *)(row + at * 4);
            for (int64_t i = 0; i < col->count; i++)
                out[i] = (float)f->data[i];
        }
        return 0;
    }
    for (int64_t i = 0; i < col->count; i++)
        if (put_value(cv, at + i, le_f32(f->data + 4 * i), col->name, err) != 0)
            return -1;
    return 0;
}

static int strcmp_indirect(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int label_index(const etl_plan *p, const etl_field *f, int32_t *out, cds_err *err)
{
    if (f->len < 0)
        return cds_errf(err, "NULL in label column \"%s\"; filter it out (e.g. --where '\"%s\" IS NOT NULL')",
                        p->label_name, p->label_name);
    if (p->label_kind == ETL_LABEL_TEXT) {
        char buf[1024];
        size_t n = (size_t)f->len < sizeof buf - 1 ? (size_t)f->len : sizeof buf - 1;
        memcpy(buf, f->data, n);
        buf[n] = '\0';
        const char *key = buf;
        char **hit = bsearch(&key, p->dict, p->n_dict, sizeof *p->dict, strcmp_indirect);
        if (!hit)
            return cds_errf(err, "label '%s' in column \"%s\" is not in the class dictionary made at planning (was the table changed during the unload?)",
                            buf, p->label_name);
        *out = (int32_t)(hit - p->dict);
        return 0;
    }
    if (p->label_kind == ETL_LABEL_ONEHOT) {
        etl_array a;
        if (etl_array_open(f->data, f->len, &a, err) != 0)
            return cds_err_wrap(err, "label column \"%s\"", p->label_name);
        if (a.ndim != 1 || a.count != p->num_classes)
            return cds_errf(err, "one-hot label in column \"%s\" has %lld values, expected %d", p->label_name,
                            (long long)a.count, p->num_classes);
        int hot = -1, ones = 0;
        for (int64_t i = 0; i < a.count; i++) {
            double v;
            if (etl_array_next(&a, &v, err) != 0)
                return cds_err_wrap(err, "label column \"%s\"", p->label_name);
            if (v == 1) {
                hot = (int)i;
                ones++;
            } else if (v != 0) {
                ones = 99;
            }
        }
        if (ones != 1)
            return cds_errf(err, "label column \"%s\" is not one-hot (exactly one 1, the rest 0); use an integer class column",
                            p->label_name);
        *out = hot;
        return 0;
    }
    double v;
    if (etl_decode_number(p->label_oid, f->data, f->len, &v, err) != 0)
        return cds_err_wrap(err, "label column \"%s\"", p->label_name);
    /* The class count of integer labels is the largest id + 1 over every
     * shard, settled when the dataset is finished (no extra scan up front). */
    if (v < 0 || v != floor(v) || v >= ETL_MAX_CLASSES || (p->num_classes > 0 && v >= p->num_classes))
        return cds_errf(err, "label %g in column \"%s\" is not a class id (a whole number 0..%d)", v, p->label_name,
                        p->num_classes > 0 ? p->num_classes - 1 : ETL_MAX_CLASSES - 1);
    *out = (int32_t)v;
    return 0;
}

/* A prediction's row: its id kept for the output, its class 0. */
static int put_key(etl_converter *cv, const etl_field *f, int32_t *label, cds_err *err)
{
    if (f->len < 0)
        return cds_errf(err, "NULL in id column \"%s\"; give ids to every row, or filter them (--where '\"%s\" IS NOT NULL')",
                        cv->p->label_name, cv->p->label_name);
    *label = 0;
    return etl_keys_add(cv->keys, f->data, f->len, err);
}

static int convert_columns(etl_converter *cv, const etl_field *f, int nf, cds_err *err)
{
    const etl_plan *p = cv->p;
    if ((size_t)nf != p->n_cols + 1)
        return cds_errf(err, "COPY returned %d fields, expected %zu", nf, p->n_cols + 1);
    int64_t at = 0;
    for (size_t c = 0; c < p->n_cols; c++) {
        const etl_col *col = &p->cols[c];
        if (f[c].len < 0)
            return cds_errf(err, "NULL in feature column \"%s\"; fill or filter NULLs (e.g. --where '\"%s\" IS NOT NULL')",
                            col->name, col->name);
        int rc;
        if (col->kind == ETL_COL_ARRAY)
            rc = put_array(cv, col, &f[c], at, err);
        else if (col->kind == ETL_COL_BYTEA)
            rc = put_bytea(cv, col, &f[c], at, err);
        else {
            double v;
            rc = etl_decode_number(col->oid, f[c].data, f[c].len, &v, err);
            if (rc == 0)
                rc = put_value(cv, at, v, col->name, err);
        }
        if (rc != 0)
            return -1;
        at += col->count;
    }
    if (p->label_kind == ETL_LABEL_ROWID ? put_key(cv, &f[p->n_cols], &cv->y[cv->n], err) != 0
                                         : label_index(p, &f[p->n_cols], &cv->y[cv->n], err) != 0)
        return -1;
    cv->n++;
    cv->rows++;
    return cv->n == ETL_BATCH_ROWS ? etl_converter_flush(cv, err) : 0;
}

static int convert_criteo(etl_converter *cv, const etl_field *f, int nf, cds_err *err)
{
    /* The select list is the 39 features then the label; the transform wants
     * the label first. */
    etl_field row[40];
    if (nf != 40)
        return cds_errf(err, "COPY returned %d fields, expected 40 for the criteo transform", nf);
    row[0] = f[39];
    static const uint8_t zero[4] = {0, 0, 0, 0};
    int32_t unused;
    if (cv->p->label_kind == ETL_LABEL_ROWID) {
        if (put_key(cv, &f[39], &unused, err) != 0)
            return -1;
        row[0] = (etl_field){.data = zero, .len = 4};
    }
    memcpy(row + 1, f, 39 * sizeof *f);
    int32_t *idx = (int32_t *)(void *)(cv->x + cv->n * cv->xrow);
    if (etl_criteo_row(&cv->p->criteo, cv->p->criteo_oids, row, 40, &cv->y[cv->n], idx, err) != 0)
        return -1;
    cv->n++;
    cv->rows++;
    return cv->n == ETL_BATCH_ROWS ? etl_converter_flush(cv, err) : 0;
}

/* ---- MADlib buffers ------------------------------------------------------ */

/* MADlib's int16 one-hot values, little-endian as its float32 ones. */
static int16_t le_i16(const uint8_t *b) { return (int16_t)(uint16_t)(b[0] | b[1] << 8); }

/* One column's packed buffer, read row by row. */
typedef struct mbuf {
    const etl_col *col;
    int64_t per;          /* values per row */
    const uint8_t *bytes; /* bytea: the packed values */
    etl_array arr;        /* array: the cursor */
} mbuf;

/* A shape column's value: its rows and values per row; text gets "{r,d...}". */
static int madlib_shape(const etl_col *shape, const etl_field *f, int64_t *rows, int64_t *per, int *ndim, char *text,
                        size_t tn, cds_err *err)
{
    etl_array a;
    if (etl_array_open(f->data, f->len, &a, err) != 0)
        return cds_err_wrap(err, "MADlib column \"%s\"", shape->name);
    *rows = 0;
    *per = 1;
    *ndim = (int)a.count;
    snprintf(text, tn, "{");
    for (int64_t i = 0; i < a.count; i++) {
        double d;
        if (etl_array_next(&a, &d, err) != 0)
            return cds_err_wrap(err, "MADlib column \"%s\"", shape->name);
        if (d < 0 || d != floor(d) || d > 2147483647.0)
            return cds_errf(err, "MADlib column \"%s\" holds %g, not a dimension", shape->name, d);
        if (i == 0)
            *rows = (int64_t)d;
        else
            *per *= (int64_t)d;
        snprintf(text + strlen(text), tn - strlen(text), "%s%lld", i ? "," : "", (long long)d);
    }
    snprintf(text + strlen(text), tn - strlen(text), "}");
    return 0;
}

/* Opens buffer f of column col against its shape: the rows must be nrows
 * (or set it), the values per row the plan's, the bytes or elements
 * exactly rows x values of the packed type (float32 for x, int16 for y). */
static int madlib_open(const etl_col *col, const etl_col *shape_col, const etl_field *f, const etl_field *shape,
                       int is_y, int64_t *nrows, mbuf *b, cds_err *err)
{
    int64_t rows = 0, per = 0;
    int ndim = 0;
    char text[160];
    if (madlib_shape(shape_col, shape, &rows, &per, &ndim, text, sizeof text, err) != 0)
        return -1;
    if (is_y ? ndim != 2 : ndim != col->ndim + 1)
        return cds_errf(err, "MADlib column \"%s\" is %s, not {rows, %s}", shape_col->name, text,
                        is_y ? "classes" : "dims of the first buffer");
    if (per != col->count)
        return cds_errf(err, "MADlib column \"%s\" is %s: %lld %s per row where the first buffer has %lld",
                        shape_col->name, text, (long long)per, is_y ? "classes" : "values", (long long)col->count);
    if (*nrows >= 0 && rows != *nrows)
        return cds_errf(err, "MADlib column \"%s\" is %s: %lld rows where the other columns of the buffer have %lld",
                        shape_col->name, text, (long long)rows, (long long)*nrows);
    *nrows = rows;
    b->col = col;
    b->per = per;
    b->bytes = NULL;
    int64_t want = rows * per;
    if (col->kind == ETL_COL_BYTEA) {
        int size = is_y ? 2 : 4;
        const char *type = is_y ? "int16" : "float32";
        if (f->len % size != 0)
            return cds_errf(err, "MADlib column \"%s\" holds %d bytes, not a whole number of %s values (%d bytes each)",
                            col->name, f->len, type, size);
        if (f->len / size != want)
            return cds_errf(err, "MADlib column \"%s\" holds %d bytes (%d %s values) but %s is %s, %lld values",
                            col->name, f->len, f->len / size, type, shape_col->name, text, (long long)want);
        b->bytes = f->data;
        return 0;
    }
    if (etl_array_open(f->data, f->len, &b->arr, err) != 0)
        return cds_err_wrap(err, "MADlib column \"%s\"", col->name);
    if (b->arr.count != want)
        return cds_errf(err, "MADlib column \"%s\" holds %lld values but %s is %s, %lld values", col->name,
                        (long long)b->arr.count, shape_col->name, text, (long long)want);
    return 0;
}

/* Row r of an independent variable into the feature row at element at:
 * an array straight from its cursor, float32 bytes one by one (checked
 * against uint8 like any value). */
static int madlib_put_x(etl_converter *cv, mbuf *b, int64_t r, int64_t at, cds_err *err)
{
    uint8_t *row = cv->x + cv->n * cv->xrow;
    int f32 = cv->p->x_dtype == ETL_F32;
    if (!b->bytes) {
        int rc = f32 ? etl_array_read_f32(&b->arr, (float *)(void *)(row + at * 4), b->per, err)
                     : etl_array_read_u8(&b->arr, row + at, b->per, err);
        return rc == 0 ? 0 : cds_err_wrap(err, "MADlib column \"%s\"", b->col->name);
    }
    const uint8_t *src = b->bytes + r * b->per * 4;
    if (f32) {
        float *out = (float *)(void *)(row + at * 4);
        for (int64_t i = 0; i < b->per; i++)
            out[i] = le_f32(src + 4 * i);
        return 0;
    }
    for (int64_t i = 0; i < b->per; i++)
        if (put_value(cv, at + i, le_f32(src + 4 * i), b->col->name, err) != 0)
            return -1;
    return 0;
}

/* Row r of the dependent variable: the position of its single 1.  Any other
 * form is refused with what was found, since MADlib casts a numeric array
 * label to smallint[] without checking it. */
static int madlib_class(mbuf *b, int64_t r, int64_t nrows, int32_t *out, cds_err *err)
{
    int64_t first = -1, second = -1, odd_at = -1;
    double odd = 0;
    for (int64_t k = 0; k < b->per; k++) {
        double v;
        if (b->bytes)
            v = le_i16(b->bytes + (r * b->per + k) * 2);
        else if (etl_array_next(&b->arr, &v, err) != 0)
            return cds_err_wrap(err, "MADlib column \"%s\"", b->col->name);
        if (v == 1) {
            if (first < 0)
                first = k;
            else if (second < 0)
                second = k;
        } else if (v != 0 && odd_at < 0) {
            odd_at = k;
            odd = v;
        }
    }
    if (first >= 0 && second < 0 && odd_at < 0) {
        *out = (int32_t)first;
        return 0;
    }
    char form[96];
    if (odd_at >= 0)
        snprintf(form, sizeof form, "it holds %g at class position %lld (class ids or scores, not 0/1)", odd,
                 (long long)odd_at);
    else if (first < 0)
        snprintf(form, sizeof form, "it is all zeros (no class)");
    else
        snprintf(form, sizeof form, "it has 1 at class positions %lld and %lld (several classes)", (long long)first,
                 (long long)second);
    return cds_errf(err, "MADlib dependent variable \"%s\", row %lld of %lld in the buffer, is not one-hot: %s; MADlib casts a numeric array label unchecked, so give training_preprocessor_dl the class column itself",
                    b->col->name, (long long)r + 1, (long long)nrows, form);
}

/* A MADlib buffer: each independent variable (float32 bytea or a numeric
 * array) and its shape, the dependent variable (int16 one-hot bytea or an
 * array) and its shape, buffer_id; unpacked into rows. */
static int convert_madlib(etl_converter *cv, const etl_field *f, int nf, cds_err *err)
{
    const etl_plan *p = cv->p;
    if ((size_t)nf != p->n_cols)
        return cds_errf(err, "COPY returned %d fields, expected %zu for a MADlib table", nf, p->n_cols);
    const etl_col *bid = &p->cols[p->n_cols - 1];
    cv->buffer_id = -1;
    double d;
    if (f[nf - 1].len >= 0 && etl_decode_number(bid->oid, f[nf - 1].data, f[nf - 1].len, &d, err) == 0)
        cv->buffer_id = (int64_t)d;
    for (int i = 0; i < nf - 1; i++)
        if (f[i].len < 0)
            return cds_errf(err, "NULL in MADlib column \"%s\"", p->cols[i].name);
    mbuf bufs[ETL_MADLIB_MAX_X + 1];
    size_t nx = p->madlib_nx; /* at most ETL_MADLIB_MAX_X: checked when the plan was loaded */
    int64_t nrows = -1;
    for (size_t j = 0; j <= nx; j++)
        if (madlib_open(&p->cols[2 * j], &p->cols[2 * j + 1], &f[2 * j], &f[2 * j + 1], j == nx, &nrows, &bufs[j],
                        err) != 0)
            return -1;
    for (int64_t r = 0; r < nrows; r++) {
        int64_t at = 0;
        for (size_t j = 0; j < nx; j++) {
            if (madlib_put_x(cv, &bufs[j], r, at, err) != 0)
                return -1;
            at += bufs[j].per;
        }
        if (madlib_class(&bufs[nx], r, nrows, &cv->y[cv->n], err) != 0)
            return -1;
        cv->n++;
        cv->rows++;
        if (cv->n == ETL_BATCH_ROWS && etl_converter_flush(cv, err) != 0)
            return -1;
    }
    return 0;
}

int etl_converter_on_row(void *ctx, const etl_field *f, int nf, cds_err *err)
{
    etl_converter *cv = ctx;
    int rc;
    switch (cv->p->layout) {
    case ETL_LAYOUT_CRITEO: rc = convert_criteo(cv, f, nf, err); break;
    case ETL_LAYOUT_MADLIB: rc = convert_madlib(cv, f, nf, err); break;
    default: rc = convert_columns(cv, f, nf, err); break;
    }
    return rc == 0 ? 0 : where_failed(cv, err);
}
