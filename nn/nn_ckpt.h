/* nn_ckpt: msgpack checkpoints of the training engine.
 *
 * One checkpoint is one msgpack map (docs/checkpoint.md is the format): the
 * model spec, the hyper-parameters, where training stands (epoch, visited
 * shards, step), the optimiser's state, the generator state and every tensor,
 * ending with a CRC-32 of everything before it.  Nothing that changes from run
 * to run (wall time, host name, lease token: those live in Redis) is inside,
 * so the same state always gives the same bytes and two runs can be compared
 * with cmp(1).  A checkpoint is written to a temporary file, fsynced and
 * renamed over the old one; it is never rewritten in place, so a crash leaves
 * either the old or the new checkpoint, never a mixture. */
#ifndef CDS_NN_CKPT_H
#define CDS_NN_CKPT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cds_err.h"

#define NN_CKPT_FORMAT "cds-checkpoint"
#define NN_CKPT_VERSION 1
#define NN_CKPT_MAX_DIMS 8
/* Tensor data is stored as bin chunks of at most this many bytes: msgpack's
 * bin32 holds up to 4 GiB, but some readers use a signed 32-bit length. */
#define NN_CKPT_CHUNK_MAX ((size_t)1 << 30)

typedef struct nn_ckpt_tensor {
    char *name;            /* "layer1.0.conv1.weight", "m:fc.weight", ... */
    int ndim;              /* 0 (a scalar) to NN_CKPT_MAX_DIMS */
    int64_t shape[NN_CKPT_MAX_DIMS];
    float *data;           /* product(shape) floats */
} nn_ckpt_tensor;

typedef struct nn_ckpt {
    char *spec_json;       /* the model spec, JSON text (stored as a msgpack map converted from JSON so Python sees
                              a dict; reading back gives canonical JSON text: keys sorted, compact) */
    char *hparams_json;    /* the training hyper-parameters, same treatment */
    int64_t epoch, step;
    int32_t *visited; size_t n_visited;   /* shard ids visited in the current epoch, in order */
    char *optimizer;       /* "sgd" | "adam" */
    int64_t opt_t;         /* optimiser step count (Adam's t) */
    uint64_t rng[4];       /* generator state */
    nn_ckpt_tensor *params; size_t n_params;       /* weights and buffers (batchnorm running stats), in model order */
    nn_ckpt_tensor *opt_state; size_t n_opt_state; /* optimiser tensors, e.g. "m:<param>", "v:<param>", "buf:<param>" */
} nn_ckpt;

/* Writes c to path: <path>.tmp-<random> in the same directory, streamed (never
 * the whole file in memory), CRC-32 computed while writing, fsync, rename,
 * fsync of the directory.  On any failure the temporary file is removed, the
 * previous file at path is untouched (unless only the final directory fsync
 * failed: the new file is then in place but maybe not durable, and err says
 * so), and err names the file and what went wrong. */
int nn_ckpt_save(const char *path, const nn_ckpt *c, cds_err *err);

/* Reads and verifies: CRC first, then the structure (format name and version,
 * every field present with the right type, tensor byte sizes equal to
 * product(shape)*4).  A truncated, corrupt or foreign file is refused with one
 * line naming the file and what is wrong.  On success c owns allocated memory
 * (free it with nn_ckpt_free); on failure c is left zeroed. */
int nn_ckpt_load(const char *path, nn_ckpt *c, cds_err *err);

/* Frees what nn_ckpt_load allocated and zeroes c; c may be zeroed already. */
void nn_ckpt_free(nn_ckpt *c);

/* Finds a tensor by name among params (or opt_state); NULL if absent. */
const nn_ckpt_tensor *nn_ckpt_find(const nn_ckpt_tensor *t, size_t n, const char *name);

/* ---- for tests: the chunk size and the I/O calls of nn_ckpt_save ---- */
typedef struct nn_ckpt_save_opts {
    size_t chunk_bytes;    /* bin chunk size, 1 .. NN_CKPT_CHUNK_MAX; 0 means NN_CKPT_CHUNK_MAX */
    /* Replace write(2) and fsync(2) of the temporary file (NULL: the real
     * calls); they return what the system calls return and set errno. */
    ssize_t (*write_fn)(void *ctx, int fd, const void *buf, size_t n);
    int (*fsync_fn)(void *ctx, int fd);
    void *io_ctx;
} nn_ckpt_save_opts;
int nn_ckpt_save_with(const char *path, const nn_ckpt *c, const nn_ckpt_save_opts *o, cds_err *err);

#endif
