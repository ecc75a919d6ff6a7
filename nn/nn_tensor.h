/* nn_tensor: a float32 tensor that knows where its memory lives, an untyped
 * device buffer for the rest (scratch, argmax, masks, labels, the sparse
 * plan), and the arena both are carved from.
 *
 * A tensor or buffer is a descriptor (device, shape or size, pointer), not an
 * owner: its memory belongs to an arena.  Its pointer is a device pointer:
 * only the backend that owns the device reads or writes through it (nn_ops),
 * and everyone else copies (nn_ctx_to_host, nn_ctx_from_host).  Ops check that
 * their tensors are on their context's device, so model code is written once
 * for the CPU and the CUDA backend.
 *
 * The arena is planned, then allocated once, through the backend of its
 * context: a model reserves every parameter, activation, gradient and scratch
 * buffer it needs for its largest batch while it is built, so a training step
 * allocates nothing.  Reservations are aligned to 64 bytes (a cache line, and
 * what AVX-512 loads like). */
#ifndef CDS_NN_TENSOR_H
#define CDS_NN_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include "cds_err.h"

#define NN_MAX_DIMS 4

typedef enum nn_device { NN_CPU = 0, NN_CUDA = 1 } nn_device;

/* Where a model lives: a device kind and, for CUDA, the ordinal among the
 * devices this process sees (CUDA_VISIBLE_DEVICES applies).  table, when
 * set, is the backend to use instead of the device's own (a test's: a
 * backend that fails on purpose). */
struct nn_backend;
typedef struct nn_place {
    nn_device dev;
    int index;
    const struct nn_backend *table;
} nn_place;
#define NN_PLACE_CPU ((nn_place){.dev = NN_CPU, .index = 0, .table = NULL})

typedef struct nn_tensor {
    nn_device dev;
    int ndim;
    int shape[NN_MAX_DIMS];
    size_t n;   /* product of shape */
    float *data;
} nn_tensor;

/* Bytes of device memory that are not floats: a kernel's scratch, max-pool
 * winners (int32), dropout masks (uint8), labels and indices (int32), the
 * sparse plan. */
typedef struct nn_buf {
    nn_device dev;
    size_t bytes;
    void *data;
} nn_buf;

/* Fills shape/ndim/n; data stays as it is. */
void nn_tensor_shape(nn_tensor *t, int ndim, const int *shape);
/* Elements per sample: the product of shape[1..]. */
size_t nn_tensor_per_row(const nn_tensor *t);
const char *nn_device_name(nn_device d);

typedef struct nn_arena nn_arena;
struct nn_ctx;

/* An arena on the context's device; the context must outlive it. */
nn_arena *nn_arena_new(const struct nn_ctx *ctx);
/* Reserves bytes (rounded up to 64) and returns the reservation's offset;
 * only valid before nn_arena_commit. */
size_t nn_arena_reserve(nn_arena *a, size_t bytes);
/* Allocates the block through the backend; zeroed.  Fails with a message
 * naming the size and what: "activations", "parameters", ... */
int nn_arena_commit(nn_arena *a, const char *what, cds_err *err);
/* The device address of a reservation (after commit). */
void *nn_arena_at(const nn_arena *a, size_t offset);
/* A buffer of a reservation of `bytes` at offset (after commit). */
nn_buf nn_arena_buf(const nn_arena *a, size_t offset, size_t bytes);
size_t nn_arena_bytes(const nn_arena *a);
void nn_arena_free(nn_arena *a);

#endif
