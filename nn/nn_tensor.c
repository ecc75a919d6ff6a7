/* nn_tensor: tensor descriptors and the planned activation arena (see
 * nn_tensor.h).  Only the CPU arena is implemented here; a CUDA arena is the
 * same plan with cudaMalloc as the allocator, which nn_arena_commit refuses
 * with a clear line in a build without the CUDA backend. */
#include "nn_tensor.h"

#include <stdlib.h>
#include <string.h>

#define NN_ARENA_ALIGN 64

struct nn_arena {
    nn_device dev;
    size_t size;
    void *base;
};

void nn_tensor_shape(nn_tensor *t, int ndim, const int *shape)
{
    t->ndim = ndim;
    t->n = 1;
    for (int i = 0; i < NN_MAX_DIMS; i++) {
        t->shape[i] = i < ndim ? shape[i] : 1;
        if (i < ndim)
            t->n *= (size_t)shape[i];
    }
}

size_t nn_tensor_per_row(const nn_tensor *t)
{
    size_t n = 1;
    for (int i = 1; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

const char *nn_device_name(nn_device d)
{
    return d == NN_CPU ? "cpu" : "cuda";
}

nn_arena *nn_arena_new(nn_device dev)
{
    nn_arena *a = calloc(1, sizeof *a);
    if (a)
        a->dev = dev;
    return a;
}

size_t nn_arena_reserve(nn_arena *a, size_t bytes)
{
    size_t off = a->size;
    a->size += (bytes + NN_ARENA_ALIGN - 1) / NN_ARENA_ALIGN * NN_ARENA_ALIGN;
    return off;
}

int nn_arena_commit(nn_arena *a, cds_err *err)
{
    if (a->dev != NN_CPU)
        return cds_errf(err, "the %s arena is not available in this build: train on the cpu device",
                        nn_device_name(a->dev));
    size_t size = a->size ? a->size : NN_ARENA_ALIGN;
    a->base = aligned_alloc(NN_ARENA_ALIGN, size);
    if (!a->base)
        return cds_err_nomem(err, "out of memory allocating %.1f MiB of activations: use a smaller batch or model",
                        (double)size / (1 << 20));
    memset(a->base, 0, size);
    return 0;
}

void *nn_arena_at(const nn_arena *a, size_t offset)
{
    return (char *)a->base + offset;
}

size_t nn_arena_bytes(const nn_arena *a)
{
    return a->size;
}

void nn_arena_free(nn_arena *a)
{
    if (!a)
        return;
    free(a->base);
    free(a);
}
