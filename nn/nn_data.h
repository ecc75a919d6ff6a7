/* nn_data: the input pipeline of the training engine, over one ETL shard
 * (etl/etl_shard.h).
 *
 * A shard's x.npy holds rows of uint8, float32 or int32 values; nn_data turns
 * them into mini-batches of what the model takes: float32 samples in NCHW
 * order (dense models), or int32 indices passed through (sparse models), plus
 * one int32 class id per row.
 *
 * Row shape against the model's input (sample_shape, channels first):
 *   - the same shape: copied in file order;
 *   - channels last, i.e. the row is sample_shape rotated left (H,W,C for an
 *     input C,H,W, as ETL writes images: 28x28x1 for Fashion-MNIST): each row
 *     is transposed to channels first while the batch is built (with C = 1
 *     that is a plain copy);
 *   - either side flat ([D]) and both D elements: copied in file order;
 *   - when a row fits both ways (C = H = W) it is taken as channels first.
 * Dense features must be uint8 or float32; int32 features only feed a sparse
 * model, whose rows must be [nnz] int32 indices in [0, sparse_dim).
 *
 * Values: x = ((float)raw * scale - mean[c]) / std[c], evaluated in float in
 * that order (so bit-identical to that expression), c the channel of the
 * element (sample_shape[0] channels when sample_ndim >= 2, else one);
 * without n_norm mean is 0 and std 1.
 *
 * Order.  Batch k of a pass holds the rows order[k*batch .. k*batch+n), where
 * order is 0, 1, ..., rows-1 without shuffle, and with shuffle the permutation
 * nn_data_shuffle() writes, which depends only on (seed, epoch, shard_index,
 * rows):
 *
 *   mix(z)    = splitmix64's output for state z: z += 0x9E3779B97F4A7C15;
 *               z = (z ^ z>>30) * 0xBF58476D1CE4E5B9;
 *               z = (z ^ z>>27) * 0x94D049BB133111EB; return z ^ z>>31
 *               (all uint64_t, wrapping);
 *   key       = mix(mix(mix(seed) ^ (uint64_t)epoch) ^ (uint64_t)(int64_t)shard_index);
 *   s[0..3]   = four splitmix64 outputs from the state key (s[i] = mix(key +
 *               i * 0x9E3779B97F4A7C15), i = 0..3), the state of xoshiro256**:
 *               next(): r = rotl(s[1]*5, 7)*9; t = s[1]<<17; s[2] ^= s[0];
 *               s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t;
 *               s[3] = rotl(s[3], 45); return r;
 *   Fisher-Yates: order = 0..rows-1; for i = rows-1 down to 1:
 *               j = high 64 bits of the 128-bit product next() * (i+1);
 *               swap(order[i], order[j]).
 *
 * So the sequence of batches depends only on (shard contents, opts, epoch),
 * never on prefetch or timing.
 *
 * Prefetch: one worker thread builds batch k+1 while the caller trains on
 * batch k, in one of two buffers allocated at open; nothing is allocated per
 * batch.  An nn_data is used by one thread at a time (its caller); the worker
 * is internal. */
#ifndef CDS_NN_DATA_H
#define CDS_NN_DATA_H

#include <stdint.h>

#include "cds_err.h"

#define NN_DATA_MAX_NORM 16

typedef struct nn_data_opts {
    int batch;                 /* rows per batch (the last batch of a pass may be smaller) */
    uint64_t seed;             /* the model's seed */
    int shuffle;               /* 1: the permutation above per (seed, epoch, shard index); 0: file order */
    int sample_ndim;           /* 1..4: the model's input shape, channels first, e.g. {1,28,28}, {3,32,32}, {784}; */
    int sample_shape[4];       /*   sparse: {nnz} */
    int sparse;                /* 1: features are int32 indices, passed through, each checked to be in [0,sparse_dim) */
    int sparse_dim;
    float scale;               /* x = (raw*scale - mean[c]) / std[c], per channel c; scale 0 means 1 */
    int n_norm;                /* 0 (no mean/std) or the channel count */
    float mean[NN_DATA_MAX_NORM], std[NN_DATA_MAX_NORM];
    int prefetch;              /* 1: a thread prepares the next batch while the caller trains on this one */
    int classes;               /* > 0: a label outside [0, classes) refuses the shard at open; 0: unchecked */
    int verify;                /* 1: recompute the checksums of the shard's files at open (reads them all) */
    /* Rows a pass takes (0: the shard's rows).  More than the shard's: the
     * pass goes on past its end in the order of the next epoch (round r of
     * the shard in epoch + r's order), so a data-parallel rank whose shard
     * is shorter than the longest takes as many rows as every other rank,
     * and only the pass's last batch is short, on every rank alike. */
    int64_t pass_rows;
    /* 1: a uint8 dense shard's batches are its rows as stored (nn_batch.x_u8,
     * x NULL), normalised by the model on its device (nn_model_input_u8,
     * through nn_data_u8_form's tables): a GPU is sent a quarter of the
     * bytes and does the conversion; other shards ignore it. */
    int raw_u8;
    /* Where batches are built (NULL: malloc): a GPU's pinned host memory
     * (nn_ctx_host_alloc), staged to the device without a copy on the
     * host.  Each batch is one allocation, freed by buf_free at close. */
    void *(*buf_alloc)(void *ctx, size_t bytes);
    void (*buf_free)(void *ctx, void *p, size_t bytes);
    void *buf_ctx;
} nn_data_opts;

typedef struct nn_batch {
    int n;                     /* rows in this batch */
    const float *x;            /* n * prod(sample_shape) floats, NCHW (dense); NULL when sparse */
    const int32_t *idx;        /* n * nnz indices (sparse); NULL when dense */
    const int32_t *y;          /* n labels */
    const uint8_t *x_u8;       /* raw_u8: n rows of C·P bytes as the shard stores them; x is then NULL */
} nn_batch;

/* How raw uint8 rows become the model's input: value (c, p) of row i (of
 * C channels of P elements) is byte i·C·P + (channels_last ? p·C + c :
 * c·P + p), mapped through lut[c·256 + byte] (the formula above,
 * tabulated, so the result is bit-identical to x). */
typedef struct nn_u8_form {
    int C;
    int64_t P;
    int channels_last;
    const float *lut; /* C × 256 */
} nn_u8_form;

typedef struct nn_data nn_data;

/* Opens one shard directory (a shard-<k> directory) and checks that its rows
 * fit the model (see above) and that every label is >= 0 (and < classes when
 * set); a mismatch is one error line naming the shard directory, its
 * shape/dtype, the model's, and how to fix it.  Errors of the shard itself
 * (missing, truncated, corrupt) come from etl_shard_open unchanged.
 * shard_index is the shard's id in the shuffle key.  With prefetch the worker
 * thread starts here and waits for nn_data_begin. */
nn_data *nn_data_open(const char *shard_dir, int shard_index, const nn_data_opts *o, cds_err *err);
/* Stops the worker (finishing the batch it may be building) and frees
 * everything; NULL is allowed.  Safe in the middle of a pass. */
void nn_data_close(nn_data *d);
int64_t nn_data_rows(const nn_data *d);
/* Bytes of one stored row: its sample (as the shard stores it) and label. */
int64_t nn_data_row_bytes(const nn_data *d);
int64_t nn_data_batches(const nn_data *d);  /* batches per pass: ceil(pass rows / batch) */
int nn_data_classes_max(const nn_data *d);  /* largest label + 1 (0 for an empty shard) */
/* The form of raw batches (valid while d is open): 0, or -1 when its
 * batches are floats (not raw_u8, or not a uint8 dense shard). */
int nn_data_u8_form(const nn_data *d, nn_u8_form *f);

/* Starts a pass over the shard for the given epoch, abandoning any pass in
 * progress (the batch last returned becomes invalid). */
int nn_data_begin(nn_data *d, int64_t epoch, cds_err *err);
/* Gives the next batch, valid until the next call to nn_data_next or
 * nn_data_begin; returns its row count, 0 at the end of the pass (and on
 * every call after it), -1 on error (a sparse index out of range, naming the
 * shard and row; a call before nn_data_begin).  An error ends the pass: every
 * later call returns it again until nn_data_begin. */
int nn_data_next(nn_data *d, nn_batch *b, cds_err *err);

/* Writes the permutation of 0..n-1 for (seed, epoch, shard_index) described
 * above into order. */
void nn_data_shuffle(int64_t *order, int64_t n, uint64_t seed, int64_t epoch, int shard_index);

#endif
