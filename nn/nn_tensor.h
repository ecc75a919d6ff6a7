/* nn_tensor: a float32 tensor that knows where its memory lives, and the
 * arena that activation tensors are carved from.
 *
 * A tensor is a descriptor (device, shape, pointer), not an owner: its memory
 * belongs to an arena or to the model's parameter block.  Operations in
 * nn_ops take tensors and dispatch on the device they carry, so model code is
 * written once for the CPU and the CUDA backend.
 *
 * The arena is planned, then allocated once: a model reserves every
 * activation, gradient and scratch buffer it needs for its largest batch while
 * it is built, so a training step allocates nothing.  Reservations are
 * aligned to 64 bytes (a cache line, and what AVX-512 loads like). */
#ifndef CDS_NN_TENSOR_H
#define CDS_NN_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include "cds_err.h"

#define NN_MAX_DIMS 4

typedef enum nn_device { NN_CPU = 0, NN_CUDA = 1 } nn_device;

typedef struct nn_tensor {
    nn_device dev;
    int ndim;
    int shape[NN_MAX_DIMS];
    size_t n;   /* product of shape */
    float *data;
} nn_tensor;

/* Fills shape/ndim/n; data stays as it is. */
void nn_tensor_shape(nn_tensor *t, int ndim, const int *shape);
/* Elements per sample: the product of shape[1..]. */
size_t nn_tensor_per_row(const nn_tensor *t);
const char *nn_device_name(nn_device d);

typedef struct nn_arena nn_arena;

nn_arena *nn_arena_new(nn_device dev);
/* Reserves bytes (rounded up to 64) and returns the reservation's offset;
 * only valid before nn_arena_commit. */
size_t nn_arena_reserve(nn_arena *a, size_t bytes);
/* Allocates the block; zeroed.  Fails with a message naming the size. */
int nn_arena_commit(nn_arena *a, cds_err *err);
/* The address of a reservation (after commit). */
void *nn_arena_at(const nn_arena *a, size_t offset);
size_t nn_arena_bytes(const nn_arena *a);
void nn_arena_free(nn_arena *a);

#endif
