/* nn_data: batches from one shard (see nn_data.h for the contract, the value
 * formula and the shuffle generator).
 *
 * Open.  The shard is mapped by etl_shard_open; the row shape is matched to
 * the model's input once and reduced to a layout: COPY (file order) or CLAST
 * (channels last, transposed while building), with C channels of P elements
 * each.  For uint8 features the value formula is tabulated per channel (256
 * floats each), so converting a byte is one load, exactly the formula's
 * result.  y is scanned once for the largest label and for labels the model
 * cannot take.  The batch buffers (one, or two with prefetch) are sized for
 * min(batch, rows) rows here and never reallocated.
 *
 * A pass.  Batch k holds the rows order[k*B ..), order being the identity or
 * the permutation of (seed, epoch, shard index) written by begin(); building
 * batch k reads only the mapping, order and the fixed settings, so which
 * thread builds it, and when, cannot change its contents.
 *
 * Prefetch.  The worker builds batches 0, 1, 2, ... in order; batch k goes to
 * buffer k % 2 once that buffer is FREE.  next() frees the buffer it handed
 * out last time, waits for buffer next_take % 2 to be READY and marks it HELD.
 * Invariants (under mu): READY buffers hold batches in [next_take, next_build)
 * and HELD the one before next_take, so with two buffers the READY buffer of
 * next_take's parity is batch next_take; the worker writes a buffer only while
 * it is FREE and it has set busy, and only while the pass is active.  begin()
 * clears active, waits for busy to drop (at most the batch being built), then
 * frees every buffer, writes the new order and sets active again: the worker
 * never sees half an order, and nothing of the old pass survives.  close()
 * sets stop and joins the worker.  Every hand-off goes through mu, so each
 * buffer's writes happen before its reads. */
#include "nn_data.h"
#include "nn_rng.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etl_shard.h"

#define NBUF 2

enum { LAYOUT_COPY, LAYOUT_CLAST };
enum { BUF_FREE, BUF_READY, BUF_HELD };

typedef struct nn_buf {
    void *data;      /* one allocation holding x (or x8, or idx) and then y */
    size_t bytes;
    float *x;
    uint8_t *x8;     /* raw uint8 rows (nn_data_opts.raw_u8) */
    int32_t *idx;
    int32_t *y;
    int n;
    int64_t k;       /* batch index it holds (READY/HELD) */
    int state;
    int failed;
    cds_err err;
} nn_buf;

struct nn_data {
    char *dir;
    etl_shard *shard;
    const uint8_t *x;          /* the mapped rows */
    const int32_t *y;
    etl_dtype dtype;
    int64_t rows, n_batches;
    int batch;
    int classes_max;

    /* layout: a sample is C channels of P elements; raw rows are row_elems
     * values of dtype */
    int layout, C;
    int64_t P, row_elems;
    int sparse, sparse_dim;
    float scale, mean[NN_DATA_MAX_NORM], std[NN_DATA_MAX_NORM];
    int n_norm, identity;      /* identity: scale 1, no mean/std */
    float (*lut)[256];         /* uint8: one table per normalised channel (1 without n_norm) */
    int raw;                   /* batches hold raw uint8 rows (nn_data_opts.raw_u8 on a uint8 dense shard) */
    float *form_lut;           /* raw: C tables of 256 floats, one per channel (nn_data_u8_form) */

    uint64_t seed;
    int shuffle, shard_index;
    int64_t *order;            /* shuffle, or a pass longer than the shard */
    int64_t pass_rows;         /* rows a pass takes (nn_data_opts.pass_rows; rows when 0) */
    void *(*buf_alloc)(void *ctx, size_t bytes); /* nn_data_opts: where batch buffers come from */
    void (*buf_free)(void *ctx, void *p, size_t bytes);
    void *buf_ctx;

    nn_buf buf[NBUF];
    int nbuf;

    /* pass state; with prefetch, guarded by mu */
    int began, failed;
    cds_err fail_err;
    int64_t next_take, next_build;
    int held;

    int prefetch, sync_init, thread_started;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv_work;    /* the worker waits here */
    pthread_cond_t cv_done;    /* next() and begin() wait here */
    int active, busy, stop;
};

/* ---- the shuffle --------------------------------------------------------- */

#define GOLDEN 0x9E3779B97F4A7C15ull

/* SplitMix64's output for z (nn_rng.h's generator, one step from z). */
static uint64_t mix64(uint64_t z)
{
    return nn_splitmix64(&z);
}

void nn_data_shuffle(int64_t *order, int64_t n, uint64_t seed, int64_t epoch, int shard_index)
{
    uint64_t key = mix64(mix64(mix64(seed) ^ (uint64_t)epoch) ^ (uint64_t)(int64_t)shard_index);
    nn_rng r;
    for (int i = 0; i < 4; i++)
        r.s[i] = mix64(key + (uint64_t)i * GOLDEN);
    for (int64_t i = 0; i < n; i++)
        order[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        __extension__ unsigned __int128 prod = (unsigned __int128)nn_rng_next(&r) * (uint64_t)(i + 1);
        int64_t j = (int64_t)(prod >> 64);
        int64_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

/* ---- describing shapes in messages --------------------------------------- */

static void shard_shape_str(char *out, size_t cap, const int64_t *shape, int n)
{
    size_t at = 0;
    out[0] = '\0';
    if (n == 0)
        snprintf(out, cap, "scalar");
    for (int i = 0; i < n && at < cap; i++)
        at += (size_t)snprintf(out + at, cap - at, "%s%lld", i ? "x" : "", (long long)shape[i]);
}

static void model_shape_str(char *out, size_t cap, const int *shape, int n)
{
    size_t at = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < n && at < cap; i++)
        at += (size_t)snprintf(out + at, cap - at, "%s%d", i ? "," : "", shape[i]);
    if (at < cap)
        snprintf(out + at, cap - at, "]");
}

/* ---- checking the options and the shard against the model ----------------- */

static int check_opts(const nn_data_opts *o, cds_err *err)
{
    if (o->batch < 1)
        return cds_errf(err, "nn_data: batch is %d: give a batch size of at least 1", o->batch);
    if (o->sample_ndim < 1 || o->sample_ndim > 4)
        return cds_errf(err, "nn_data: the model's input has %d dimensions: give 1 to 4 (channels first)",
                        o->sample_ndim);
    int64_t elems = 1;
    for (int i = 0; i < o->sample_ndim; i++) {
        if (o->sample_shape[i] < 1)
            return cds_errf(err, "nn_data: dimension %d of the model's input is %d: every dimension must be >= 1", i,
                            o->sample_shape[i]);
        elems *= o->sample_shape[i];
        if (elems > INT32_MAX)
            return cds_errf(err, "nn_data: the model's input has more than 2^31 elements: give a smaller input");
    }
    if (o->sparse && (o->sample_ndim != 1 || o->sparse_dim < 1))
        return cds_errf(err, "nn_data: a sparse input is {nnz} with a dim >= 1 (got %d dimensions, dim %d): "
                        "give sparse {\"dim\": D, \"nnz\": K}", o->sample_ndim, o->sparse_dim);
    if (!isfinite(o->scale))
        return cds_errf(err, "nn_data: normalize scale is not finite: give a finite scale (0 means 1)");
    if (o->sparse && o->n_norm)
        return cds_errf(err, "nn_data: a sparse input is not normalised: drop normalize's mean and std");
    if (o->n_norm < 0 || o->n_norm > NN_DATA_MAX_NORM)
        return cds_errf(err, "nn_data: normalize has %d channels: at most %d are supported", o->n_norm,
                        NN_DATA_MAX_NORM);
    int C = o->sample_ndim >= 2 ? o->sample_shape[0] : 1;
    if (o->n_norm != 0 && o->n_norm != C) {
        char ms[64];
        model_shape_str(ms, sizeof ms, o->sample_shape, o->sample_ndim);
        return cds_errf(err, "nn_data: normalize has %d means/stds but the model's input %s has %d channel%s: "
                        "give one mean and one std per channel", o->n_norm, ms, C, C == 1 ? "" : "s");
    }
    for (int c = 0; c < o->n_norm; c++)
        if (!isfinite(o->mean[c]) || !isfinite(o->std[c]) || o->std[c] == 0.0f)
            return cds_errf(err, "nn_data: normalize channel %d has mean %g, std %g: give finite values and a "
                            "non-zero std", c, (double)o->mean[c], (double)o->std[c]);
    return 0;
}

static int64_t elems_of(const int64_t *shape, int n)
{
    int64_t e = 1;
    for (int i = 0; i < n; i++)
        e *= shape[i];
    return e;
}

/* The channels-last form of a channels-first shape: (S1, ..., Sn-1, S0). */
static int is_channels_last(const int64_t *row, int rn, const int *s, int sn)
{
    if (sn < 2 || rn != sn)
        return 0;
    for (int i = 1; i < sn; i++)
        if (row[i - 1] != s[i])
            return 0;
    return row[sn - 1] == s[0];
}

static int same_shape(const int64_t *row, int rn, const int *s, int sn)
{
    if (rn != sn)
        return 0;
    for (int i = 0; i < sn; i++)
        if (row[i] != s[i])
            return 0;
    return 1;
}

/* A suggestion for the model's input that would fit these rows. */
static void suggest_input(char *out, size_t cap, const int64_t *row, int rn)
{
    if (rn == 3) /* ETL writes images channels last */
        snprintf(out, cap, "[%lld,%lld,%lld]", (long long)row[2], (long long)row[0], (long long)row[1]);
    else
        snprintf(out, cap, "[%lld]", (long long)elems_of(row, rn));
}

/* The model's input as ETL's --feature-shape (channels last). */
static void feature_shape_for(char *out, size_t cap, const int *s, int sn)
{
    int64_t cl[4];
    for (int i = 1; i < sn; i++)
        cl[i - 1] = s[i];
    cl[sn - 1] = s[0];
    shard_shape_str(out, cap, cl, sn);
}

static int match_sparse(nn_data *d, const etl_npy_view *x, const nn_data_opts *o, cds_err *err)
{
    const int64_t *row = x->shape + 1;
    int rn = x->ndim - 1;
    char rs[96];
    shard_shape_str(rs, sizeof rs, row, rn);
    if (x->dtype != ETL_I32)
        return cds_errf(err, "shard %s: x.npy rows are %s %s, but the model is sparse (nnz %d, dim %d) and takes "
                        "int32 indices: unload with --transform criteo, or give the model a dense input [%lld]",
                        d->dir, etl_dtype_name(x->dtype), rs, o->sample_shape[0], o->sparse_dim,
                        (long long)elems_of(row, rn));
    if (rn != 1 || row[0] != o->sample_shape[0])
        return cds_errf(err, "shard %s: x.npy rows are int32 %s, but the model's sparse input takes %d indices per "
                        "row: set the model's sparse nnz to %lld, or use a shard unloaded for nnz %d", d->dir, rs,
                        o->sample_shape[0], (long long)elems_of(row, rn), o->sample_shape[0]);
    d->layout = LAYOUT_COPY;
    d->C = 1;
    d->P = d->row_elems = row[0];
    return 0;
}

static int match_dense(nn_data *d, const etl_npy_view *x, const nn_data_opts *o, cds_err *err)
{
    const int64_t *row = x->shape + 1;
    int rn = x->ndim - 1;
    const int *s = o->sample_shape;
    int sn = o->sample_ndim;
    char rs[96], ms[64], sug[96], fs[96];
    shard_shape_str(rs, sizeof rs, row, rn);
    model_shape_str(ms, sizeof ms, s, sn);
    int64_t r_el = elems_of(row, rn), s_el = 1;
    for (int i = 0; i < sn; i++)
        s_el *= s[i];
    if (x->dtype == ETL_I32)
        return cds_errf(err, "shard %s: x.npy rows are int32 %s (sparse indices), but the model takes a dense float "
                        "input %s: give the model a sparse input {\"dim\": D, \"nnz\": %lld}, or unload without "
                        "--transform", d->dir, rs, ms, (long long)r_el);
    d->C = sn >= 2 ? s[0] : 1;
    d->row_elems = r_el;
    if (same_shape(row, rn, s, sn) || ((rn <= 1 || sn == 1) && r_el == s_el)) {
        d->layout = LAYOUT_COPY;
    } else if (is_channels_last(row, rn, s, sn)) {
        d->layout = d->C == 1 ? LAYOUT_COPY : LAYOUT_CLAST;
    } else {
        suggest_input(sug, sizeof sug, row, rn);
        feature_shape_for(fs, sizeof fs, s, sn);
        return cds_errf(err, "shard %s: x.npy rows are %s %s, which fit neither the model's input %s channels first "
                        "nor %s channels last: set the model's input to %s, or re-run the unload with "
                        "--feature-shape %s", d->dir, etl_dtype_name(x->dtype), rs, ms, fs, sug, fs);
    }
    d->P = s_el / d->C;
    return 0;
}

/* Finds the largest label and refuses labels the model cannot take. */
static int scan_labels(nn_data *d, int classes, cds_err *err)
{
    int32_t max = -1;
    for (int64_t r = 0; r < d->rows; r++) {
        int32_t v = d->y[r];
        if (v < 0 || (classes > 0 && v >= classes)) {
            if (v < 0)
                return cds_errf(err, "shard %s: y.npy row %lld holds label %d: class ids must be >= 0; re-run the "
                                "unload with a label column of class ids", d->dir, (long long)r, (int)v);
            return cds_errf(err, "shard %s: y.npy row %lld holds label %d, but the model has %d classes (labels in "
                            "[0,%d)): set the model's classes to at least %d, or check the unload's label column",
                            d->dir, (long long)r, (int)v, classes, classes, (int)v + 1);
        }
        if (v > max)
            max = v;
    }
    d->classes_max = max + 1;
    return 0;
}

/* ---- converting rows ------------------------------------------------------ */

static void build_luts(nn_data *d)
{
    int n = d->n_norm ? d->n_norm : 1;
    for (int c = 0; c < n; c++)
        for (int v = 0; v < 256; v++)
            d->lut[c][v] = ((float)v * d->scale - d->mean[c]) / d->std[c];
}

/* One uint8 row to C*P floats. */
static void convert_u8(const nn_data *d, const uint8_t *restrict src, float *restrict dst)
{
    const int64_t P = d->P;
    const int C = d->C;
    for (int c = 0; c < C; c++) {
        const float *restrict lut = d->lut[d->n_norm ? c : 0];
        float *restrict out = dst + (int64_t)c * P;
        if (d->layout == LAYOUT_COPY) {
            const uint8_t *restrict in = src + (int64_t)c * P;
            for (int64_t p = 0; p < P; p++)
                out[p] = lut[in[p]];
        } else {
            const uint8_t *restrict in = src + c;
            for (int64_t p = 0; p < P; p++)
                out[p] = lut[in[p * C]];
        }
    }
}

/* One float32 row to C*P floats. */
static void convert_f32(const nn_data *d, const float *restrict src, float *restrict dst)
{
    const int64_t P = d->P;
    const int C = d->C;
    if (d->identity && d->layout == LAYOUT_COPY) {
        memcpy(dst, src, (size_t)(P * C) * sizeof *dst);
        return;
    }
    const float scale = d->scale;
    for (int c = 0; c < C; c++) {
        const float m = d->n_norm ? d->mean[c] : 0.0f, sd = d->n_norm ? d->std[c] : 1.0f;
        float *restrict out = dst + (int64_t)c * P;
        if (d->layout == LAYOUT_COPY) {
            const float *restrict in = src + (int64_t)c * P;
            for (int64_t p = 0; p < P; p++)
                out[p] = (in[p] * scale - m) / sd;
        } else {
            const float *restrict in = src + c;
            for (int64_t p = 0; p < P; p++)
                out[p] = (in[p * C] * scale - m) / sd;
        }
    }
}

/* One sparse row: copied, every index checked against sparse_dim. */
static int copy_indices(const nn_data *d, int64_t row, const int32_t *restrict src, int32_t *restrict dst,
                        cds_err *err)
{
    const int64_t K = d->row_elems;
    uint32_t bad = 0;
    for (int64_t k = 0; k < K; k++) {
        dst[k] = src[k];
        bad |= (uint32_t)src[k] >= (uint32_t)d->sparse_dim;
    }
    if (!bad)
        return 0;
    for (int64_t k = 0; k < K; k++) {
        if (src[k] < 0)
            return cds_errf(err, "shard %s: x.npy row %lld holds index %d at position %lld: sparse indices must be in "
                            "[0,%d), the model's sparse dim; re-run the unload with the transform the model expects",
                            d->dir, (long long)row, (int)src[k], (long long)k, d->sparse_dim);
        if (src[k] >= d->sparse_dim)
            return cds_errf(err, "shard %s: x.npy row %lld holds index %d at position %lld, outside the model's "
                            "sparse dim [0,%d): set the model's sparse dim to the shard's (at least %d), or re-run "
                            "the unload with the transform the model expects", d->dir, (long long)row, (int)src[k],
                            (long long)k, d->sparse_dim, (int)src[k] + 1);
    }
    return 0;
}

/* Builds batch k into b; reads only fixed state, the mapping and order. */
static void build_batch(const nn_data *d, int64_t k, nn_buf *b)
{
    int64_t first = k * d->batch;
    int n = (int)(d->pass_rows - first < d->batch ? d->pass_rows - first : d->batch);
    const size_t esz = etl_dtype_size(d->dtype);
    const size_t row_bytes = (size_t)d->row_elems * esz;
    const int64_t out_el = d->sparse ? d->row_elems : d->P * d->C;
    b->failed = 0;
    for (int i = 0; i < n; i++) {
        int64_t r = d->order ? d->order[first + i] : first + i;
        const uint8_t *src = d->x + (size_t)r * row_bytes;
        b->y[i] = d->y[r];
        if (d->sparse) {
            if (copy_indices(d, r, (const int32_t *)(const void *)src, b->idx + i * out_el, &b->err) != 0) {
                b->failed = 1;
                break;
            }
        } else if (d->raw) {
            memcpy(b->x8 + i * out_el, src, row_bytes); /* out_el bytes: the device converts */
        } else if (d->dtype == ETL_U8) {
            convert_u8(d, src, b->x + i * out_el);
        } else {
            convert_f32(d, (const float *)(const void *)src, b->x + i * out_el);
        }
    }
    b->n = n;
    b->k = k;
}

/* ---- the prefetch worker -------------------------------------------------- */

static int worker_has_job(const nn_data *d)
{
    return d->active && d->next_build < d->n_batches && d->buf[d->next_build % NBUF].state == BUF_FREE;
}

static void *worker_main(void *arg)
{
    nn_data *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->stop && !worker_has_job(d))
            pthread_cond_wait(&d->cv_work, &d->mu);
        if (d->stop)
            break;
        int64_t k = d->next_build++;
        nn_buf *b = &d->buf[k % NBUF];
        d->busy = 1;
        pthread_mutex_unlock(&d->mu);
        build_batch(d, k, b);
        pthread_mutex_lock(&d->mu);
        d->busy = 0;
        b->state = BUF_READY;
        pthread_cond_broadcast(&d->cv_done);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* ---- open / close --------------------------------------------------------- */

static int alloc_buffers(nn_data *d, cds_err *err)
{
    int64_t cap = d->pass_rows < d->batch ? (d->pass_rows > 0 ? d->pass_rows : 1) : d->batch;
    int64_t per_row = d->sparse ? d->row_elems : d->P * d->C;
    d->nbuf = d->prefetch ? NBUF : 1;
    size_t esz = d->sparse ? sizeof(int32_t) : d->raw ? 1 : sizeof(float);
    size_t xb = ((size_t)(cap * per_row) * esz + 63) / 64 * 64; /* y starts on a cache line */
    for (int i = 0; i < d->nbuf; i++) {
        nn_buf *b = &d->buf[i];
        b->bytes = xb + (size_t)cap * sizeof(int32_t);
        b->data = d->buf_alloc ? d->buf_alloc(d->buf_ctx, b->bytes) : malloc(b->bytes);
        if (!b->data)
            return cds_err_nomem(err, "shard %s: out of memory for batches of %lld rows of %lld values: use a smaller "
                            "batch", d->dir, (long long)cap, (long long)per_row);
        if (d->sparse)
            b->idx = b->data;
        else if (d->raw)
            b->x8 = b->data;
        else
            b->x = b->data;
        b->y = (int32_t *)(void *)((char *)b->data + xb);
    }
    return 0;
}

static int start_worker(nn_data *d, cds_err *err)
{
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv_work, NULL);
    pthread_cond_init(&d->cv_done, NULL);
    d->sync_init = 1;
    int rc = pthread_create(&d->thread, NULL, worker_main, d);
    if (rc != 0)
        return cds_errf(err, "shard %s: cannot start the prefetch thread (%s): raise the thread limit or set "
                        "prefetch to 0", d->dir, strerror(rc));
    d->thread_started = 1;
    return 0;
}

static void copy_settings(nn_data *d, int shard_index, const nn_data_opts *o)
{
    d->batch = o->batch;
    d->seed = o->seed;
    d->shuffle = o->shuffle;
    d->shard_index = shard_index;
    d->sparse = o->sparse;
    d->sparse_dim = o->sparse_dim;
    d->scale = o->scale == 0.0f ? 1.0f : o->scale;
    d->n_norm = o->n_norm;
    for (int c = 0; c < NN_DATA_MAX_NORM; c++) {
        d->mean[c] = c < o->n_norm ? o->mean[c] : 0.0f;
        d->std[c] = c < o->n_norm ? o->std[c] : 1.0f;
    }
    d->identity = d->scale == 1.0f && d->n_norm == 0;
    d->prefetch = o->prefetch != 0;
    d->held = -1;
    if (o->buf_alloc && o->buf_free) {
        d->buf_alloc = o->buf_alloc;
        d->buf_free = o->buf_free;
        d->buf_ctx = o->buf_ctx;
    }
}

nn_data *nn_data_open(const char *shard_dir, int shard_index, const nn_data_opts *o, cds_err *err)
{
    if (check_opts(o, err) != 0)
        return NULL;
    nn_data *d = calloc(1, sizeof *d);
    if (!d || !(d->dir = strdup(shard_dir))) {
        free(d);
        cds_err_nomem(err, "shard %s: out of memory", shard_dir);
        return NULL;
    }
    copy_settings(d, shard_index, o);
    d->shard = etl_shard_open(shard_dir, o->verify, err);
    if (!d->shard)
        goto fail;
    const etl_npy_view *x = etl_shard_x(d->shard);
    d->x = x->data;
    d->y = etl_shard_y(d->shard);
    d->dtype = x->dtype;
    d->rows = etl_shard_nrows(d->shard);
    d->pass_rows = o->pass_rows > 0 ? o->pass_rows : d->rows;
    if (d->pass_rows > d->rows && d->rows == 0) {
        cds_errf(err, "shard %s is empty: a pass of %lld rows cannot wrap around it", d->dir, (long long)d->pass_rows);
        goto fail;
    }
    d->n_batches = (d->pass_rows + d->batch - 1) / d->batch;
    if ((d->sparse ? match_sparse(d, x, o, err) : match_dense(d, x, o, err)) != 0)
        goto fail;
    if (scan_labels(d, o->classes, err) != 0)
        goto fail;
    if (!d->sparse && d->dtype == ETL_U8) {
        d->lut = malloc((size_t)(d->n_norm ? d->n_norm : 1) * sizeof *d->lut);
        if (!d->lut) {
            cds_err_nomem(err, "shard %s: out of memory", d->dir);
            goto fail;
        }
        build_luts(d);
        d->raw = o->raw_u8 != 0;
        if (d->raw && !(d->form_lut = malloc((size_t)d->C * 256 * sizeof *d->form_lut))) {
            cds_err_nomem(err, "shard %s: out of memory", d->dir);
            goto fail;
        }
        for (int c = 0; d->raw && c < d->C; c++)
            memcpy(d->form_lut + (size_t)c * 256, d->lut[d->n_norm ? c : 0], 256 * sizeof(float));
    }
    /* Whole rounds of the shard: the last one's permutation is written in
     * full and read in part. */
    int64_t order_n = d->pass_rows > d->rows ? (d->pass_rows + d->rows - 1) / d->rows * d->rows : d->rows;
    if ((d->shuffle || d->pass_rows != d->rows) &&
        !(d->order = malloc((size_t)(order_n > 0 ? order_n : 1) * sizeof *d->order))) {
        cds_err_nomem(err, "shard %s: out of memory for the order of %lld rows", d->dir, (long long)order_n);
        goto fail;
    }
    if (alloc_buffers(d, err) != 0)
        goto fail;
    if (d->prefetch && start_worker(d, err) != 0)
        goto fail;
    return d;
fail:
    nn_data_close(d);
    return NULL;
}

void nn_data_close(nn_data *d)
{
    if (!d)
        return;
    if (d->prefetch && d->thread_started) {
        pthread_mutex_lock(&d->mu);
        d->stop = 1;
        pthread_cond_broadcast(&d->cv_work);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->thread, NULL);
    }
    if (d->sync_init) {
        pthread_cond_destroy(&d->cv_done);
        pthread_cond_destroy(&d->cv_work);
        pthread_mutex_destroy(&d->mu);
    }
    for (int i = 0; i < NBUF; i++) {
        if (d->buf[i].data && d->buf_free)
            d->buf_free(d->buf_ctx, d->buf[i].data, d->buf[i].bytes);
        else
            free(d->buf[i].data);
    }
    free(d->order);
    free(d->lut);
    free(d->form_lut);
    etl_shard_close(d->shard);
    free(d->dir);
    free(d);
}

int64_t nn_data_rows(const nn_data *d) { return d->rows; }

int64_t nn_data_row_bytes(const nn_data *d)
{
    return d->row_elems * (int64_t)etl_dtype_size(d->dtype) + (int64_t)sizeof(int32_t);
}

int nn_data_u8_form(const nn_data *d, nn_u8_form *f)
{
    if (!d->raw)
        return -1;
    *f = (nn_u8_form){.C = d->C, .P = d->P, .channels_last = d->layout == LAYOUT_CLAST, .lut = d->form_lut};
    return 0;
}
int64_t nn_data_batches(const nn_data *d) { return d->n_batches; }
int nn_data_classes_max(const nn_data *d) { return d->classes_max; }

/* ---- a pass --------------------------------------------------------------- */

/* Resets the pass to epoch's order; with prefetch the caller holds mu and the
 * worker is idle (not active, not busy). */
static void reset_pass(nn_data *d, int64_t epoch)
{
    for (int i = 0; i < NBUF; i++)
        d->buf[i].state = BUF_FREE;
    /* Round r of a pass longer than the shard: epoch + r's order. */
    for (int64_t at = 0, r = 0; d->order && at < d->pass_rows; at += d->rows, r++) {
        if (d->shuffle)
            nn_data_shuffle(d->order + at, d->rows, d->seed, epoch + r, d->shard_index);
        else
            for (int64_t i = 0; i < d->rows; i++)
                d->order[at + i] = i;
    }
    d->next_take = d->next_build = 0;
    d->held = -1;
    d->failed = 0;
    d->began = 1;
}

int nn_data_begin(nn_data *d, int64_t epoch, cds_err *err)
{
    (void)err;
    if (!d->prefetch) {
        reset_pass(d, epoch);
        return 0;
    }
    pthread_mutex_lock(&d->mu);
    d->active = 0;
    while (d->busy)
        pthread_cond_wait(&d->cv_done, &d->mu);
    reset_pass(d, epoch);
    d->active = 1;
    pthread_cond_broadcast(&d->cv_work);
    pthread_mutex_unlock(&d->mu);
    return 0;
}

static int fail_pass(nn_data *d, const cds_err *why, cds_err *err)
{
    d->failed = 1;
    d->fail_err = *why;
    if (err)
        *err = *why;
    return -1;
}

static int give_batch(const nn_data *d, const nn_buf *b, nn_batch *out)
{
    out->n = b->n;
    out->x = d->sparse || d->raw ? NULL : b->x;
    out->x_u8 = d->raw ? b->x8 : NULL;
    out->idx = d->sparse ? b->idx : NULL;
    out->y = b->y;
    return b->n;
}

static int next_sync(nn_data *d, nn_batch *out, cds_err *err)
{
    if (d->next_take >= d->n_batches)
        return 0;
    nn_buf *b = &d->buf[0];
    build_batch(d, d->next_take++, b);
    if (b->failed)
        return fail_pass(d, &b->err, err);
    return give_batch(d, b, out);
}

static int next_prefetched(nn_data *d, nn_batch *out, cds_err *err)
{
    pthread_mutex_lock(&d->mu);
    if (d->held >= 0) {
        d->buf[d->held].state = BUF_FREE;
        d->held = -1;
        pthread_cond_signal(&d->cv_work);
    }
    if (d->next_take >= d->n_batches) {
        pthread_mutex_unlock(&d->mu);
        return 0;
    }
    int i = (int)(d->next_take % NBUF);
    nn_buf *b = &d->buf[i];
    while (b->state != BUF_READY)
        pthread_cond_wait(&d->cv_done, &d->mu);
    b->state = BUF_HELD;
    d->held = i;
    d->next_take++;
    pthread_mutex_unlock(&d->mu);
    if (b->failed)
        return fail_pass(d, &b->err, err);
    return give_batch(d, b, out);
}

int nn_data_next(nn_data *d, nn_batch *b, cds_err *err)
{
    memset(b, 0, sizeof *b);
    if (!d->began)
        return cds_errf(err, "shard %s: nn_data_next before nn_data_begin: start a pass first", d->dir);
    if (d->failed) {
        if (err)
            *err = d->fail_err;
        return -1;
    }
    return d->prefetch ? next_prefetched(d, b, err) : next_sync(d, b, err);
}
