/* nn_data: batches from shards written with the ETL writer into a temporary
 * directory.  uint8 channels-last images come out channels first and
 * normalised, value by value; float32 and flat rows; sparse int32 indices
 * passed through; every row exactly once per pass, with and without shuffle,
 * with a partial last batch; the order is the documented generator's (checked
 * against values computed by an independent Python transcription of the
 * header comment), the same for the same (seed, epoch, shard) and different
 * otherwise; prefetch on and off give identical bytes; wrong shapes and
 * dtypes, out-of-range labels and indices, and bad options are refused with
 * one line naming what to fix; begin and close in the middle of a pass; a
 * truncated shard is refused at open; an empty shard has no batches. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cds_util.h"
#include "etl_shard.h"
#include "nn_data.h"
#include "nn_ops.h"
#include "tap.h"

static char root[256], split[300];

/* Writes shard-<k> of split and returns its directory in out. */
static void write_shard(int k, etl_dtype t, const int64_t *row_shape, int ndim, const void *x, const int32_t *y,
                        size_t rows, char *out, size_t cap)
{
    cds_err err = {0};
    etl_shard_writer *w = etl_shard_begin(split, k, t, row_shape, ndim, &err);
    if (!w || (rows && etl_shard_append(w, x, y, rows, &err) != 0) || etl_shard_commit(w, NULL, 1, &err) != 0)
        tap_bail(err.msg);
    snprintf(out, cap, "%s/shard-%d", split, k);
}

static nn_data_opts dense_opts(int batch, int ndim, int s0, int s1, int s2)
{
    nn_data_opts o;
    memset(&o, 0, sizeof o);
    o.batch = batch;
    o.seed = 7;
    o.sample_ndim = ndim;
    o.sample_shape[0] = s0;
    o.sample_shape[1] = s1;
    o.sample_shape[2] = s2;
    return o;
}

static nn_data *open_or_bail(const char *dir, int shard_index, const nn_data_opts *o)
{
    cds_err err = {0};
    nn_data *d = nn_data_open(dir, shard_index, o, &err);
    if (!d)
        tap_bail(err.msg);
    return d;
}

/* Every value of a pass of one-batch-per-call: n per batch, x and y concatenated. */
typedef struct pass {
    int nb, n[512];
    float *x;
    int32_t *y, *idx;
    int64_t rows;
} pass;

static int run_pass(nn_data *d, int64_t epoch, int64_t elems, pass *p)
{
    cds_err err = {0};
    memset(p, 0, sizeof *p);
    int64_t rows = nn_data_rows(d);
    p->x = calloc((size_t)(rows * elems + 1), sizeof *p->x);
    p->idx = calloc((size_t)(rows * elems + 1), sizeof *p->idx);
    p->y = calloc((size_t)rows + 1, sizeof *p->y);
    if (nn_data_begin(d, epoch, &err) != 0)
        return -1;
    nn_batch b;
    int n;
    while ((n = nn_data_next(d, &b, &err)) > 0) {
        if (p->nb == 512 || p->rows + n > rows)
            return -1;
        p->n[p->nb++] = n;
        if (b.x)
            memcpy(p->x + p->rows * elems, b.x, (size_t)(n * elems) * sizeof *b.x);
        if (b.idx)
            memcpy(p->idx + p->rows * elems, b.idx, (size_t)(n * elems) * sizeof *b.idx);
        memcpy(p->y + p->rows, b.y, (size_t)n * sizeof *b.y);
        p->rows += n;
    }
    if (n < 0)
        tap_diag("pass failed: %s", err.msg);
    return n;
}

static void free_pass(pass *p)
{
    free(p->x);
    free(p->idx);
    free(p->y);
}

static int same_pass(const pass *a, const pass *b, int64_t elems)
{
    return a->nb == b->nb && a->rows == b->rows && memcmp(a->n, b->n, sizeof a->n) == 0 &&
           memcmp(a->x, b->x, (size_t)(a->rows * elems) * sizeof *a->x) == 0 &&
           memcmp(a->idx, b->idx, (size_t)(a->rows * elems) * sizeof *a->idx) == 0 &&
           memcmp(a->y, b->y, (size_t)a->rows * sizeof *a->y) == 0;
}

/* ---- values --------------------------------------------------------------- */

static uint8_t u8_raw(int64_t r, int j) { return (uint8_t)((r * 24 + j * 7 + 3) % 256); }

static void test_u8_images(void)
{
    /* 5 rows of 3x4 pixels, 2 channels, channels last as ETL writes images. */
    enum { R = 5, H = 3, W = 4, C = 2 };
    uint8_t x[R * H * W * C];
    int32_t y[R];
    for (int r = 0; r < R; r++) {
        for (int j = 0; j < H * W * C; j++)
            x[r * H * W * C + j] = u8_raw(r, j);
        y[r] = r % 3;
    }
    char dir[400];
    const int64_t hwc[3] = {H, W, C};
    write_shard(0, ETL_U8, hwc, 3, x, y, R, dir, sizeof dir);

    nn_data_opts o = dense_opts(2, 3, C, H, W);
    o.scale = 1.0f / 255.0f;
    o.n_norm = 2;
    o.mean[0] = 0.5f, o.mean[1] = 0.25f;
    o.std[0] = 0.2f, o.std[1] = 0.5f;
    nn_data *d = open_or_bail(dir, 0, &o);
    is_int(nn_data_rows(d), R, "5 rows");
    is_int(nn_data_batches(d), 3, "batch 2: 3 batches");
    is_int(nn_data_classes_max(d), 3, "labels 0..2: classes_max 3");
    pass p;
    ok(run_pass(d, 0, C * H * W, &p) == 0 && p.nb == 3 && p.n[0] == 2 && p.n[1] == 2 && p.n[2] == 1,
       "batches of 2, 2, 1 rows");
    int bad = 0, bad_y = 0;
    for (int r = 0; r < R; r++) {
        for (int c = 0; c < C; c++)
            for (int h = 0; h < H; h++)
                for (int w = 0; w < W; w++) {
                    float raw = (float)x[r * H * W * C + (h * W + w) * C + c];
                    float want = (raw * o.scale - o.mean[c]) / o.std[c];
                    bad += p.x[((r * C + c) * H + h) * W + w] != want;
                }
        bad_y += p.y[r] != y[r];
    }
    /* Exact: the header promises the value of this very float expression. */
    ok(bad == 0, "HWC uint8 -> CHW floats, ((raw*scale)-mean[c])/std[c] bit for bit (%d of %d differ)", bad,
       R * C * H * W);
    ok(bad_y == 0, "labels in file order");
    /* One value worked out by hand, in double: row 1, c 1, h 2, w 3 reads raw
     * index (2*4+3)*2+1 = 23 of row 1, (24+161+3)%256 = 188;
     * (188/255 - 0.25)/0.5 = 0.974509...  Tolerance 1e-6: float rounding of
     * three operations on values of order 1 (a few ulp, ~1e-7). */
    double hand = (188.0 / 255.0 - 0.25) / 0.5;
    float got = p.x[((1 * C + 1) * H + 2) * W + 3];
    ok(fabs(got - hand) < 1e-6, "hand-computed value: got %.8f want %.8f", (double)got, hand);
    free_pass(&p);
    nn_data_close(d);

    /* The same rows into a flat model input: file order, raw values (scale 0
     * means 1: exact, small integers are exact floats). */
    o = dense_opts(4, 1, H * W * C, 0, 0);
    d = open_or_bail(dir, 0, &o);
    run_pass(d, 0, H * W * C, &p);
    bad = 0;
    for (int j = 0; j < R * H * W * C; j++)
        bad += p.x[j] != (float)x[j];
    ok(p.rows == R && bad == 0, "3x4x2 rows into input [24]: file order, raw values");
    free_pass(&p);
    nn_data_close(d);

    /* Channels-first uint8 rows and a flat [24] row into a C,H,W input: file
     * order, channel c normalised over elements [c*12, c*12+12). */
    const int64_t chw[3] = {C, H, W}, flat[1] = {H * W * C};
    char dir_chw[400], dir_flat[400];
    write_shard(1, ETL_U8, chw, 3, x, y, R, dir_chw, sizeof dir_chw);
    write_shard(2, ETL_U8, flat, 1, x, y, R, dir_flat, sizeof dir_flat);
    o = dense_opts(3, 3, C, H, W);
    o.scale = 2.0f;
    o.n_norm = 2;
    o.mean[0] = 1.0f, o.mean[1] = -3.0f;
    o.std[0] = 4.0f, o.std[1] = 0.125f;
    for (int v = 0; v < 2; v++) {
        d = open_or_bail(v ? dir_flat : dir_chw, v + 1, &o);
        run_pass(d, 0, C * H * W, &p);
        bad = 0;
        for (int r = 0; r < R; r++)
            for (int j = 0; j < C * H * W; j++) {
                int c = j / (H * W);
                bad += p.x[r * C * H * W + j] != ((float)x[r * C * H * W + j] * o.scale - o.mean[c]) / o.std[c];
            }
        ok(p.rows == R && bad == 0, "%s uint8 rows into [2,3,4]: file order, per-channel normalisation exact",
           v ? "flat [24]" : "2x3x4");
        free_pass(&p);
        nn_data_close(d);
    }

    /* One channel, channels last (28x28x1-like): a plain copy. */
    const int64_t hw1[3] = {H, W, 1};
    char dir1[400];
    write_shard(3, ETL_U8, hw1, 3, x, y, R, dir1, sizeof dir1);
    o = dense_opts(5, 3, 1, H, W);
    o.scale = 1.0f / 255.0f;
    o.n_norm = 1;
    o.mean[0] = 0.2860f;
    o.std[0] = 0.3530f;
    d = open_or_bail(dir1, 3, &o);
    run_pass(d, 0, H * W, &p);
    bad = 0;
    for (int j = 0; j < R * H * W; j++)
        bad += p.x[j] != ((float)x[j] * o.scale - o.mean[0]) / o.std[0];
    ok(p.nb == 1 && p.rows == R && bad == 0, "3x4x1 rows into [1,3,4]: one batch, values exact");
    free_pass(&p);
    nn_data_close(d);
}

/* The raw uint8 path a GPU takes (raw_u8: rows as stored, normalised on
 * the device by nn_op_u8_normalize through nn_data_u8_form's tables) gives
 * the floats nn_data gives, bit for bit, channels last, channels first and
 * flat; here through the CPU backend's kernel, on a GPU through the CUDA
 * one (tests/test_nn_backend.c holds the two kernels equal). */
static void test_u8_raw(void)
{
    static const struct {
        int shard, C, H, W;
        const char *what;
    } cases[] = {{0, 2, 3, 4, "3x4x2 (channels last)"}, {1, 2, 3, 4, "2x3x4 (channels first)"},
                 {2, 2, 3, 4, "flat [24] into [2,3,4]"}, {3, 1, 3, 4, "3x4x1"}};
    nn_ctx c;
    cds_err err;
    if (nn_ctx_init(&c, NN_CPU, &err) != 0)
        tap_bail(err.msg);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char dir[400];
        snprintf(dir, sizeof dir, "%s/shard-%d", split, cases[k].shard);
        nn_data_opts o = dense_opts(2, 3, cases[k].C, cases[k].H, cases[k].W);
        o.scale = 1.0f / 255.0f;
        o.n_norm = cases[k].C;
        o.mean[0] = 0.5f, o.mean[1] = 0.25f;
        o.std[0] = 0.2f, o.std[1] = 0.5f;
        o.shuffle = 1;
        nn_data *plain = open_or_bail(dir, 0, &o);
        o.raw_u8 = 1;
        nn_data *raw = open_or_bail(dir, 0, &o);
        nn_u8_form f;
        int formed = nn_data_u8_form(raw, &f) == 0 && nn_data_u8_form(plain, &f) == -1 && nn_data_u8_form(raw, &f) == 0;
        size_t per = (size_t)cases[k].C * cases[k].H * cases[k].W;
        float *y = nn_ctx_alloc(&c, 2 * per * sizeof(float));
        uint8_t *dev_raw = nn_ctx_alloc(&c, 2 * per);
        float *lut = nn_ctx_alloc(&c, (size_t)cases[k].C * 256 * sizeof(float));
        float got[2 * 24];
        int bad = !formed || !y || !dev_raw || !lut, batches = 0;
        if (!bad)
            nn_ctx_from_host(&c, lut, f.lut, (size_t)f.C * 256 * sizeof(float));
        nn_batch a, b;
        bad |= nn_data_begin(plain, 1, &err) != 0 || nn_data_begin(raw, 1, &err) != 0;
        while (!bad) {
            int na = nn_data_next(plain, &a, &err), nb = nn_data_next(raw, &b, &err);
            if (na != nb || na < 0) {
                bad = 1;
                break;
            }
            if (na == 0)
                break;
            batches++;
            bad |= b.x != NULL || !b.x_u8 || a.x_u8 != NULL || memcmp(a.y, b.y, (size_t)na * sizeof *a.y) != 0;
            nn_ctx_from_host(&c, dev_raw, b.x_u8, (size_t)na * per);
            nn_buf rb = {.dev = NN_CPU, .bytes = 2 * per, .data = dev_raw};
            nn_buf lb = {.dev = NN_CPU, .bytes = (size_t)f.C * 256 * sizeof(float), .data = lut};
            nn_tensor yt = {.dev = NN_CPU, .ndim = 1, .shape = {(int)(2 * per)}, .n = 2 * per, .data = y};
            bad |= nn_op_u8_normalize(&c, &rb, &lb, &yt, na, f.C, f.P, f.channels_last, &err) != 0;
            nn_ctx_to_host(&c, got, y, (size_t)na * per * sizeof(float));
            bad |= memcmp(got, a.x, (size_t)na * per * sizeof(float)) != 0;
        }
        ok(!bad && batches == 3, "%s: raw uint8 batches normalised by the backend equal nn_data's floats bit for bit "
                                 "(%d batches)", cases[k].what, batches);
        nn_ctx_free(&c, y, 2 * per * sizeof(float));
        nn_ctx_free(&c, dev_raw, 2 * per);
        nn_ctx_free(&c, lut, (size_t)cases[k].C * 256 * sizeof(float));
        nn_data_close(plain);
        nn_data_close(raw);
    }
    nn_ctx_release(&c);
}

/* A loader's batches come from the allocator it is given (a GPU's pinned
 * memory) and all go back to it at close. */
typedef struct counting {
    int allocs, frees;
    size_t live;
} counting;
static void *count_alloc(void *ctx, size_t bytes)
{
    counting *c = ctx;
    c->allocs++;
    c->live += bytes;
    return malloc(bytes);
}
static void count_free(void *ctx, void *p, size_t bytes)
{
    counting *c = ctx;
    c->frees++;
    c->live -= bytes;
    free(p);
}

static void test_buffer_allocator(void)
{
    char dir[400];
    snprintf(dir, sizeof dir, "%s/shard-0", split);
    nn_data_opts o = dense_opts(2, 3, 2, 3, 4);
    o.prefetch = 1;
    counting c = {0};
    o.buf_alloc = count_alloc;
    o.buf_free = count_free;
    o.buf_ctx = &c;
    nn_data *d = open_or_bail(dir, 0, &o);
    pass p;
    int ran = run_pass(d, 0, 2 * 3 * 4, &p) == 0 && p.rows == 5;
    int during = c.allocs;
    free_pass(&p);
    nn_data_close(d);
    ok(ran && during > 0 && c.frees == c.allocs && c.live == 0,
       "batches are built in the allocator's memory (%d buffers) and all of it goes back at close", during);
}

static void test_f32_rows(void)
{
    enum { R = 4, H = 2, W = 2, C = 3 };
    float x[R * H * W * C];
    int32_t y[R] = {1, 0, 1, 1};
    for (int j = 0; j < R * H * W * C; j++)
        x[j] = (float)j * 0.37f - 5.0f;
    char dir[400], dir_flat[400];
    const int64_t hwc[3] = {H, W, C}, flat[1] = {H * W * C};
    write_shard(10, ETL_F32, hwc, 3, x, y, R, dir, sizeof dir);
    write_shard(11, ETL_F32, flat, 1, x, y, R, dir_flat, sizeof dir_flat);

    nn_data_opts o = dense_opts(3, 3, C, H, W);
    o.scale = 0.5f;
    o.n_norm = 3;
    for (int c = 0; c < C; c++)
        o.mean[c] = 0.1f * (float)(c + 1), o.std[c] = 1.5f + (float)c;
    nn_data *d = open_or_bail(dir, 10, &o);
    pass p;
    run_pass(d, 0, C * H * W, &p);
    int bad = 0;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            for (int q = 0; q < H * W; q++)
                bad += p.x[(r * C + c) * H * W + q] != (x[r * H * W * C + q * C + c] * o.scale - o.mean[c]) / o.std[c];
    ok(p.nb == 2 && p.rows == R && bad == 0, "float32 2x2x3 rows -> CHW, normalised exactly (%d differ)", bad);
    ok(memcmp(p.y, y, sizeof y) == 0, "float32 shard labels");
    free_pass(&p);
    nn_data_close(d);

    o = dense_opts(4, 1, H * W * C, 0, 0);
    d = open_or_bail(dir_flat, 11, &o);
    run_pass(d, 0, H * W * C, &p);
    ok(p.nb == 1 && p.rows == R && memcmp(p.x, x, sizeof x) == 0, "float32 [12] rows, no normalisation: the same bits");
    free_pass(&p);
    nn_data_close(d);

    o.scale = -0.25f;
    d = open_or_bail(dir_flat, 11, &o);
    run_pass(d, 0, H * W * C, &p);
    bad = 0;
    for (int j = 0; j < R * H * W * C; j++)
        bad += p.x[j] != x[j] * -0.25f;
    ok(bad == 0, "float32 [12] rows, scale only");
    free_pass(&p);
    nn_data_close(d);
}

static int32_t sparse_raw(int64_t r, int k) { return (int32_t)((r * 7 + k * 31) % 100); }

static void test_sparse(void)
{
    enum { R = 10, K = 5 };
    int32_t x[R * K], y[R];
    for (int r = 0; r < R; r++) {
        for (int k = 0; k < K; k++)
            x[r * K + k] = sparse_raw(r, k);
        y[r] = r & 1;
    }
    char dir[400];
    const int64_t shape[1] = {K};
    write_shard(20, ETL_I32, shape, 1, x, y, R, dir, sizeof dir);
    nn_data_opts o = dense_opts(4, 1, K, 0, 0);
    o.sparse = 1;
    o.sparse_dim = 100;
    for (int pf = 0; pf < 2; pf++) {
        o.prefetch = pf;
        nn_data *d = open_or_bail(dir, 20, &o);
        cds_err err = {0};
        nn_batch b;
        nn_data_begin(d, 0, &err);
        int n = nn_data_next(d, &b, &err);
        ok(n == 4 && b.x == NULL && b.idx && b.y, "sparse batch: indices, no floats (prefetch %d)", pf);
        nn_data_close(d);
        d = open_or_bail(dir, 20, &o);
        pass p;
        run_pass(d, 0, K, &p);
        ok(p.nb == 3 && p.rows == R && memcmp(p.idx, x, sizeof x) == 0 && memcmp(p.y, y, sizeof y) == 0,
           "sparse int32 rows passed through, labels kept (prefetch %d)", pf);
        free_pass(&p);
        nn_data_close(d);
    }

    /* An index equal to dim in row 6 and a negative one in row 9. */
    x[6 * K + 2] = 100;
    x[9 * K + 4] = -1;
    char bad_dir[400];
    write_shard(21, ETL_I32, shape, 1, x, y, R, bad_dir, sizeof bad_dir);
    for (int pf = 0; pf < 2; pf++) {
        o.prefetch = pf;
        nn_data *d = open_or_bail(bad_dir, 21, &o);
        cds_err err = {0};
        nn_batch b;
        nn_data_begin(d, 0, &err);
        int n1 = nn_data_next(d, &b, &err);
        int n2 = nn_data_next(d, &b, &err);
        ok(n1 == 4 && n2 == -1 && strstr(err.msg, bad_dir) && strstr(err.msg, "row 6") &&
               strstr(err.msg, "index 100 at position 2") && strstr(err.msg, "[0,100)") && strstr(err.msg, "sparse dim"),
           "an index out of range fails its batch, naming shard and row (prefetch %d): %s", pf, err.msg);
        cds_err err2 = {0};
        ok(nn_data_next(d, &b, &err2) == -1 && strcmp(err.msg, err2.msg) == 0, "the error sticks until begin");
        nn_data_begin(d, 0, &err);
        ok(nn_data_next(d, &b, &err) == 4, "begin starts a fresh pass after an error");
        o.sparse_dim = 101;
        nn_data_close(d);
        d = open_or_bail(bad_dir, 21, &o);
        pass p;
        cds_err e3 = {0};
        ok(run_pass(d, 0, K, &p) == -1 && p.rows == 8 && nn_data_next(d, &b, &e3) == -1 &&
               strstr(e3.msg, "row 9 holds index -1") && strstr(e3.msg, "[0,101)"),
           "with dim 101 the negative index in row 9 fails the last batch: %s", e3.msg);
        free_pass(&p);
        o.sparse_dim = 100;
        nn_data_close(d);
    }
}

/* ---- order ---------------------------------------------------------------- */

enum { CR = 103, CB = 10 };
static char cover_dir[400];

static void write_cover_shard(void)
{
    float x[CR * 2];
    int32_t y[CR];
    for (int r = 0; r < CR; r++) {
        x[2 * r] = (float)r;
        x[2 * r + 1] = (float)-r;
        y[r] = r % 7;
    }
    const int64_t shape[1] = {2};
    write_shard(30, ETL_F32, shape, 1, x, y, CR, cover_dir, sizeof cover_dir);
}

/* The rows of a pass over the cover shard, in order; -1 if a row is not
 * consistent with itself (x, -x, x % 7). */
static int cover_rows(const pass *p, int64_t *rows)
{
    for (int64_t i = 0; i < p->rows; i++) {
        int64_t r = (int64_t)p->x[2 * i];
        if (p->x[2 * i + 1] != -p->x[2 * i] || p->y[i] != r % 7)
            return -1;
        rows[i] = r;
    }
    return 0;
}

static void test_coverage(void)
{
    for (int shuffle = 0; shuffle < 2; shuffle++)
        for (int pf = 0; pf < 2; pf++) {
            nn_data_opts o = dense_opts(CB, 1, 2, 0, 0);
            o.shuffle = shuffle;
            o.prefetch = pf;
            nn_data *d = open_or_bail(cover_dir, 30, &o);
            is_int(nn_data_classes_max(d), 7, "classes_max of labels r %% 7");
            for (int64_t epoch = 0; epoch < 2; epoch++) {
                pass p;
                int rc = run_pass(d, epoch, 2, &p);
                int sizes = p.nb == 11 && p.n[10] == 3;
                for (int i = 0; i < 10; i++)
                    sizes &= p.n[i] == CB;
                int64_t rows[CR], want[CR], seen[CR] = {0};
                int consistent = rc == 0 && cover_rows(&p, rows) == 0;
                int once = consistent;
                for (int64_t i = 0; once && i < CR; i++)
                    once = rows[i] >= 0 && rows[i] < CR && seen[rows[i]]++ == 0;
                if (shuffle)
                    nn_data_shuffle(want, CR, o.seed, epoch, 30);
                else
                    for (int64_t i = 0; i < CR; i++)
                        want[i] = i;
                int identity = 1;
                for (int64_t i = 0; i < CR; i++)
                    identity &= rows[i] == i;
                ok(sizes && consistent && once,
                   "shuffle %d prefetch %d epoch %lld: 10 batches of 10 and one of 3, every row exactly once", shuffle,
                   pf, (long long)epoch);
                ok(consistent && memcmp(rows, want, sizeof rows) == 0 && identity == !shuffle,
                   "  in %s", shuffle ? "the permutation of (seed, epoch, shard), not file order" : "file order");
                free_pass(&p);
            }
            nn_data_close(d);
        }
}

static int differs(const int64_t *a, const int64_t *b, int64_t n) { return memcmp(a, b, (size_t)n * sizeof *a) != 0; }

static void test_order(void)
{
    /* Values from an independent Python transcription of the generator as
     * nn_data.h documents it (splitmix64 key, xoshiro256**, Fisher-Yates with
     * the multiply-high index). */
    int64_t o[12];
    const int64_t want1[12] = {10, 6, 5, 1, 3, 9, 7, 4, 8, 0, 11, 2};
    const int64_t want2[12] = {9, 6, 0, 3, 7, 10, 8, 4, 2, 11, 1, 5};
    nn_data_shuffle(o, 12, 42, 3, 1);
    ok(!differs(o, want1, 12), "shuffle(seed 42, epoch 3, shard 1) matches the documented generator");
    nn_data_shuffle(o, 12, UINT64_MAX, -1, -2);
    ok(!differs(o, want2, 12), "shuffle(seed 2^64-1, epoch -1, shard -2) matches it too");

    enum { N = 1000 };
    static int64_t a[N], b[N];
    nn_data_shuffle(a, N, 9, 4, 2);
    nn_data_shuffle(b, N, 9, 4, 2);
    ok(!differs(a, b, N), "the same (seed, epoch, shard) gives the same order");
    nn_data_shuffle(b, N, 9, 5, 2);
    ok(differs(a, b, N), "another epoch another order");
    nn_data_shuffle(b, N, 9, 4, 3);
    ok(differs(a, b, N), "another shard another order");
    nn_data_shuffle(b, N, 10, 4, 2);
    ok(differs(a, b, N), "another seed another order");

    /* Through the pipeline: two opens, same epoch, same batches; another
     * epoch, others. */
    nn_data_opts op = dense_opts(CB, 1, 2, 0, 0);
    op.shuffle = 1;
    nn_data *d1 = open_or_bail(cover_dir, 30, &op), *d2 = open_or_bail(cover_dir, 30, &op);
    pass p1, p2, p3;
    run_pass(d1, 6, 2, &p1);
    run_pass(d2, 6, 2, &p2);
    run_pass(d2, 7, 2, &p3);
    ok(same_pass(&p1, &p2, 2), "two readers, epoch 6: identical batches");
    ok(!same_pass(&p1, &p3, 2), "epoch 7: different batches");
    free_pass(&p1);
    free_pass(&p2);
    free_pass(&p3);
    nn_data_close(d1);
    nn_data_close(d2);
}

static void test_prefetch_identical(void)
{
    enum { R = 257, H = 5, W = 6, C = 3 };
    static uint8_t x[R * H * W * C];
    int32_t y[R];
    uint64_t s = 12345;
    for (int j = 0; j < R * H * W * C; j++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[j] = (uint8_t)(s >> 56);
    }
    for (int r = 0; r < R; r++)
        y[r] = r % 10;
    char dir[400];
    const int64_t hwc[3] = {H, W, C};
    write_shard(40, ETL_U8, hwc, 3, x, y, R, dir, sizeof dir);
    nn_data_opts o = dense_opts(16, 3, C, H, W);
    o.shuffle = 1;
    o.scale = 1.0f / 255.0f;
    o.n_norm = 3;
    for (int c = 0; c < 3; c++)
        o.mean[c] = 0.4f + 0.05f * (float)c, o.std[c] = 0.25f;
    nn_data *a = open_or_bail(dir, 40, &o);
    o.prefetch = 1;
    nn_data *b = open_or_bail(dir, 40, &o);
    int same = 1;
    for (int64_t e = 0; e < 3; e++) {
        pass pa, pb;
        run_pass(a, e, C * H * W, &pa);
        run_pass(b, e, C * H * W, &pb);
        same &= pa.rows == R && same_pass(&pa, &pb, C * H * W);
        free_pass(&pa);
        free_pass(&pb);
    }
    ok(same, "prefetch on and off: identical batches over 3 shuffled epochs");
    nn_data_close(a);
    nn_data_close(b);
}

/* ---- restarting and closing mid-pass --------------------------------------- */

static void test_restart(void)
{
    for (int pf = 0; pf < 2; pf++) {
        nn_data_opts o = dense_opts(CB, 1, 2, 0, 0);
        o.shuffle = 1;
        o.prefetch = pf;
        nn_data *d = open_or_bail(cover_dir, 30, &o);
        pass ref0, ref1, p;
        run_pass(d, 0, 2, &ref0);
        run_pass(d, 1, 2, &ref1);
        cds_err err = {0};
        nn_batch b;
        nn_data_begin(d, 0, &err);
        for (int i = 0; i < 3; i++)
            nn_data_next(d, &b, &err);
        run_pass(d, 0, 2, &p);
        ok(same_pass(&p, &ref0, 2), "begin(0) after 3 batches: the whole pass again (prefetch %d)", pf);
        free_pass(&p);
        nn_data_begin(d, 0, &err);
        nn_data_next(d, &b, &err);
        run_pass(d, 1, 2, &p);
        ok(same_pass(&p, &ref1, 2), "begin(1) in the middle of epoch 0: epoch 1 from its start");
        free_pass(&p);
        ok(nn_data_next(d, &b, &err) == 0 && nn_data_next(d, &b, &err) == 0, "after the end, 0 again and again");

        /* Many begins at random points of a pass; every first batch must be
         * the first rows of that epoch's order. */
        int64_t first[4][CB];
        for (int e = 0; e < 4; e++) {
            int64_t ord[CR];
            nn_data_shuffle(ord, CR, o.seed, e, 30);
            memcpy(first[e], ord, sizeof first[e]);
        }
        uint64_t s = 99;
        int good = 1;
        for (int it = 0; it < 300; it++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            int e = (int)(s >> 62);
            int steps = (int)((s >> 40) % 14);
            nn_data_begin(d, e, &err);
            for (int i = 0; i < steps; i++) {
                int n = nn_data_next(d, &b, &err);
                if (i == 0) {
                    good &= n == CB;
                    for (int j = 0; good && j < CB; j++)
                        good &= b.x[2 * j] == (float)first[e][j];
                }
            }
        }
        ok(good, "300 begins at random points: each pass starts at its first batch");
        free_pass(&ref0);
        free_pass(&ref1);
        nn_data_close(d);

        /* Close mid-pass, right after begin, and without a begin. */
        d = open_or_bail(cover_dir, 30, &o);
        nn_data_begin(d, 3, &err);
        nn_data_next(d, &b, &err);
        nn_data_close(d);
        d = open_or_bail(cover_dir, 30, &o);
        nn_data_begin(d, 3, &err);
        nn_data_close(d);
        d = open_or_bail(cover_dir, 30, &o);
        ok(nn_data_next(d, &b, &err) == -1 && strstr(err.msg, "nn_data_begin"), "next before begin: %s", err.msg);
        nn_data_close(d); /* closes mid-pass above: checked by not hanging and by the ASan/TSan builds */
    }
    nn_data_close(NULL);
}

/* ---- refusals ------------------------------------------------------------- */

static void expect_open_error(const char *dir, const nn_data_opts *o, const char *const *want, const char *name)
{
    cds_err err = {0};
    nn_data *d = nn_data_open(dir, 0, o, &err);
    int found = d == NULL && strchr(err.msg, '\n') == NULL;
    for (int i = 0; found && want[i]; i++)
        found = strstr(err.msg, want[i]) != NULL;
    ok(found, "%s: %s", name, err.msg);
    nn_data_close(d);
}

static void test_refusals(void)
{
    enum { R = 3 };
    uint8_t xu[R * 24] = {0};
    int32_t xi[R * 24] = {0}, y[R] = {0, 1, 2};
    char d_u8[400], d_i32[400], d_neg[400];
    const int64_t hwc[3] = {3, 4, 2}, flat[1] = {24};
    write_shard(50, ETL_U8, hwc, 3, xu, y, R, d_u8, sizeof d_u8);
    write_shard(51, ETL_I32, flat, 1, xi, y, R, d_i32, sizeof d_i32);
    int32_t yneg[R] = {0, -1, 0};
    write_shard(52, ETL_U8, hwc, 3, xu, yneg, R, d_neg, sizeof d_neg);

    nn_data_opts o = dense_opts(8, 3, 1, 28, 28);
    expect_open_error(d_u8, &o,
                      (const char *const[]){d_u8, "uint8 3x4x2", "[1,28,28]", "input to [2,3,4]",
                                            "--feature-shape 28x28x1", NULL},
                      "a 3x4x2 shard for a 1x28x28 model");
    o = dense_opts(8, 3, 2, 4, 3);
    expect_open_error(d_u8, &o, (const char *const[]){d_u8, "3x4x2", "[2,4,3]", "--feature-shape 4x3x2", NULL},
                      "a 3x4x2 shard for a 2x4x3 model (same count, neither layout)");
    o = dense_opts(8, 1, 24, 0, 0);
    expect_open_error(d_i32, &o, (const char *const[]){d_i32, "int32 24", "dense", "sparse input", NULL},
                      "int32 features for a dense model");
    o.sparse = 1;
    o.sparse_dim = 10;
    expect_open_error(d_u8, &o, (const char *const[]){d_u8, "uint8 3x4x2", "int32 indices", "--transform", NULL},
                      "uint8 features for a sparse model");
    o.sample_shape[0] = 39;
    expect_open_error(d_i32, &o, (const char *const[]){d_i32, "int32 24", "39 indices", "nnz to 24", NULL},
                      "24 indices a row for an nnz 39 model");

    o = dense_opts(8, 3, 2, 3, 4);
    o.classes = 2;
    expect_open_error(d_u8, &o, (const char *const[]){d_u8, "row 2", "label 2", "2 classes", "at least 3", NULL},
                      "a label beyond the model's classes");
    o.classes = 0;
    expect_open_error(d_neg, &o, (const char *const[]){d_neg, "row 1", "label -1", ">= 0", NULL}, "a negative label");
    o.classes = 3;
    cds_err err = {0};
    nn_data *d = nn_data_open(d_u8, 0, &o, &err);
    ok(d != NULL, "labels 0..2 fit 3 classes");
    nn_data_close(d);

    o.n_norm = 3;
    expect_open_error(d_u8, &o, (const char *const[]){"3 means", "[2,3,4]", "2 channels", NULL},
                      "three means for two channels");
    o.n_norm = 2;
    o.std[0] = 1.0f;
    expect_open_error(d_u8, &o, (const char *const[]){"channel 1", "std 0", NULL}, "a zero std");
    o = dense_opts(0, 3, 2, 3, 4);
    expect_open_error(d_u8, &o, (const char *const[]){"batch is 0", NULL}, "batch 0");
    o = dense_opts(8, 5, 2, 3, 4);
    expect_open_error(d_u8, &o, (const char *const[]){"5 dimensions", NULL}, "a 5-D input");

    /* A truncated x.npy: the ETL reader's refusal passes through. */
    char trunc[400], cmd[1000], path[500];
    snprintf(trunc, sizeof trunc, "%s/shard-53", split);
    snprintf(cmd, sizeof cmd, "cp -a '%s' '%s'", d_u8, trunc);
    snprintf(path, sizeof path, "%s/x.npy", trunc);
    if (system(cmd) != 0 || truncate(path, 128 + 30) != 0)
        tap_bail("cannot make a truncated shard");
    o = dense_opts(8, 3, 2, 3, 4);
    expect_open_error(trunc, &o, (const char *const[]){trunc, "x.npy", "158 bytes", "re-run the unload", NULL},
                      "a truncated shard");
    snprintf(path, sizeof path, "%s/nowhere", split);
    expect_open_error(path, &o, (const char *const[]){path, "no manifest.json", NULL}, "a missing shard");
}

static void test_empty(void)
{
    char dir[400];
    const int64_t shape[1] = {4};
    write_shard(60, ETL_F32, shape, 1, NULL, NULL, 0, dir, sizeof dir);
    for (int pf = 0; pf < 2; pf++) {
        nn_data_opts o = dense_opts(8, 1, 4, 0, 0);
        o.shuffle = 1;
        o.prefetch = pf;
        nn_data *d = open_or_bail(dir, 60, &o);
        cds_err err = {0};
        nn_batch b;
        ok(nn_data_rows(d) == 0 && nn_data_batches(d) == 0 && nn_data_classes_max(d) == 0 &&
               nn_data_begin(d, 0, &err) == 0 && nn_data_next(d, &b, &err) == 0,
           "an empty shard: no rows, no batches (prefetch %d)", pf);
        nn_data_close(d);
    }
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/nn-data-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root))
        tap_bail("mkdtemp failed");
    snprintf(split, sizeof split, "%s/ds/train", root);
    write_cover_shard();
    test_u8_images();
    test_u8_raw();
    test_buffer_allocator();
    test_f32_rows();
    test_sparse();
    test_coverage();
    test_order();
    test_prefetch_identical();
    test_restart();
    test_refusals();
    test_empty();
    cds_rmtree(root);
    return tap_done();
}
