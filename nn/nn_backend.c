/* nn_backend: choosing a device's table once, and the few calls on a
 * context that are the same for every backend (see nn_backend.h). */
#include "nn_backend.h"

#include <string.h>

int nn_ctx_init_backend(nn_ctx *c, const nn_backend *be, cds_err *err)
{
    memset(c, 0, sizeof *c);
    c->be = be;
    c->dev = be->dev;
    if (be->ctx_init(c, err) != 0) {
        c->be = NULL;
        return -1;
    }
    return 0;
}

int nn_ctx_init(nn_ctx *c, nn_device dev, cds_err *err)
{
    memset(c, 0, sizeof *c);
    switch (dev) {
    case NN_CPU:
        return nn_ctx_init_backend(c, &nn_backend_cpu, err);
    case NN_CUDA:
        return cds_errf(err, "no %s backend in this build: train on the cpu device", nn_device_name(dev));
    }
    return cds_errf(err, "device %d is not one the engine knows: use cpu", (int)dev);
}

void nn_ctx_release(nn_ctx *c)
{
    if (c->be)
        c->be->ctx_release(c);
}

void nn_ctx_to_host(const nn_ctx *c, void *host, const void *src, size_t bytes)
{
    if (bytes)
        c->be->to_host(c, host, src, bytes);
}

void nn_ctx_from_host(const nn_ctx *c, void *dst, const void *host, size_t bytes)
{
    if (bytes)
        c->be->from_host(c, dst, host, bytes);
}

const void *nn_ctx_stage(const nn_ctx *c, void *dst, const void *host, size_t bytes)
{
    return bytes ? c->be->stage(c, dst, host, bytes) : dst;
}

void *nn_ctx_alloc(const nn_ctx *c, size_t bytes)
{
    return c->be->alloc(c, bytes ? bytes : 1);
}

void nn_ctx_free(const nn_ctx *c, void *p, size_t bytes)
{
    if (p)
        c->be->free(c, p, bytes ? bytes : 1);
}
