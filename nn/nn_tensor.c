/* nn_tensor: tensor descriptors and the planned arena (see nn_tensor.h).
 * The arena is device-neutral: it sums reservations, then asks its
 * context's backend for one block and clears it there; the backend decides
 * what memory that is (aligned host pages, cudaMalloc). */
#include "nn_tensor.h"

#include "nn_backend.h"

#include <stdlib.h>

#define NN_ARENA_ALIGN 64

struct nn_arena {
    const nn_ctx *ctx;
    size_t size;
    size_t bytes; /* what was allocated: size, or one alignment unit for an empty plan */
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

nn_arena *nn_arena_new(const nn_ctx *ctx)
{
    nn_arena *a = calloc(1, sizeof *a);
    if (a)
        a->ctx = ctx;
    return a;
}

size_t nn_arena_reserve(nn_arena *a, size_t bytes)
{
    size_t off = a->size;
    a->size += (bytes + NN_ARENA_ALIGN - 1) / NN_ARENA_ALIGN * NN_ARENA_ALIGN;
    return off;
}

int nn_arena_commit(nn_arena *a, const char *what, cds_err *err)
{
    size_t size = a->size ? a->size : NN_ARENA_ALIGN;
    a->base = nn_ctx_alloc(a->ctx, size);
    if (!a->base)
        return cds_err_nomem(err, "out of memory allocating %.1f MiB of %s on the %s device: use a smaller batch or "
                             "model", (double)size / (1 << 20), what, nn_device_name(a->ctx->dev));
    a->bytes = size;
    return 0;
}

void *nn_arena_at(const nn_arena *a, size_t offset)
{
    return (char *)a->base + offset;
}

nn_buf nn_arena_buf(const nn_arena *a, size_t offset, size_t bytes)
{
    return (nn_buf){.dev = a->ctx->dev, .bytes = bytes, .data = (char *)a->base + offset};
}

size_t nn_arena_bytes(const nn_arena *a)
{
    return a->size;
}

void nn_arena_free(nn_arena *a)
{
    if (!a)
        return;
    if (a->base)
        nn_ctx_free(a->ctx, a->base, a->bytes);
    free(a);
}
