/* nn_backend: choosing a device's table once, the few calls on a context
 * that are the same for every backend, and device names as users write
 * them (see nn_backend.h). */
#include "nn_backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


int nn_ctx_init_backend(nn_ctx *c, const nn_backend *be, cds_err *err)
{
    int index = c->index, tf32 = c->tf32;
    memset(c, 0, sizeof *c);
    c->be = be;
    c->dev = be->dev;
    c->index = be->dev == NN_CPU ? 0 : index;
    c->tf32 = tf32;
    if (be->ctx_init(c, err) != 0) {
        c->be = NULL;
        return -1;
    }
    return 0;
}

int nn_ctx_init_at(nn_ctx *c, nn_place where, cds_err *err)
{
    memset(c, 0, sizeof *c);
    if (where.table) {
        c->index = where.index;
        return nn_ctx_init_backend(c, where.table, err);
    }
    switch (where.dev) {
    case NN_CPU:
        return nn_ctx_init_backend(c, &nn_backend_cpu, err);
    case NN_CUDA: {
        const nn_backend *be = nn_backend_cuda();
        if (!be)
            return cds_errf(err, "device cuda:%d: this build has no CUDA backend: rebuild with -Dcuda=enabled, or "
                                 "train on the cpu device", where.index);
        c->index = where.index;
        return nn_ctx_init_backend(c, be, err);
    }
    }
    return cds_errf(err, "device %d is not one the engine knows: use cpu or cuda:N", (int)where.dev);
}

int nn_ctx_init(nn_ctx *c, nn_device dev, cds_err *err)
{
    return nn_ctx_init_at(c, (nn_place){.dev = dev, .index = 0}, err);
}

void nn_ctx_release(nn_ctx *c)
{
    if (c->be)
        c->be->ctx_release(c);
}

int nn_ctx_check(const nn_ctx *c, cds_err *err)
{
    return c->be ? c->be->check(c, err) : 0;
}

int nn_ctx_mem(const nn_ctx *c, size_t *now, size_t *peak)
{
    *now = *peak = 0;
    return c->be ? c->be->mem(c, now, peak) : -1;
}

int nn_ctx_graph_begin(const nn_ctx *c, uint64_t key)
{
    return c->be && c->be->graph_begin ? c->be->graph_begin(c, key) : NN_GRAPH_EAGER;
}

int nn_ctx_graph_end(const nn_ctx *c, int ok)
{
    if (c->be && c->be->graph_end)
        return c->be->graph_end(c, ok);
    return ok ? 0 : -1;
}

void nn_ctx_graph_counts(const nn_ctx *c, long *captured, long *replayed)
{
    *captured = *replayed = 0;
    if (c->be && c->be->graph_counts)
        c->be->graph_counts(c, captured, replayed);
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

void *nn_ctx_host_alloc(const nn_ctx *c, size_t bytes)
{
    return c->be->host_alloc(c, bytes ? bytes : 1);
}

void nn_ctx_host_free(const nn_ctx *c, void *p, size_t bytes)
{
    if (p)
        c->be->host_free(c, p, bytes ? bytes : 1);
}

/* ------------------------------------------------------------ device names */

int nn_place_parse(const char *s, nn_place *where, int *is_auto, cds_err *err)
{
    *where = NN_PLACE_CPU;
    if (is_auto)
        *is_auto = 0;
    if (!s || strcmp(s, "auto") == 0) {
        if (is_auto)
            *is_auto = 1;
        return 0;
    }
    if (strcmp(s, "cpu") == 0)
        return 0;
    if (strcmp(s, "cuda") == 0) {
        *where = (nn_place){.dev = NN_CUDA, .index = 0};
        return 0;
    }
    if (strncmp(s, "cuda:", 5) == 0 && s[5] >= '0' && s[5] <= '9') {
        char *end;
        errno = 0;
        long v = strtol(s + 5, &end, 10);
        if (*end == '\0' && errno == 0 && v >= 0 && v < 1024) {
            *where = (nn_place){.dev = NN_CUDA, .index = (int)v};
            return 0;
        }
    }
    return cds_errf(err, "device '%s': not one the engine knows: use cpu, cuda:N (N a device ordinal) or auto", s);
}

int nn_place_pick(const char *s, nn_place *where, char *note, size_t note_len, cds_err *err)
{
    int is_auto;
    if (note && note_len)
        note[0] = '\0';
    if (nn_place_parse(s, where, &is_auto, err) != 0)
        return -1;
    if (!is_auto && where->dev == NN_CPU)
        return 0;
    char why[768] = "";
    int n = nn_cuda_devices(why, sizeof why);
    if (is_auto) {
        if (n > 0) {
            *where = (nn_place){.dev = NN_CUDA, .index = 0};
            return 0;
        }
        *where = NN_PLACE_CPU;
        if (note && note_len)
            snprintf(note, note_len, "device auto: no CUDA device (%s): training on the cpu", why);
        return 0;
    }
    if (!nn_backend_cuda())
        return cds_errf(err, "device cuda:%d: %s; or use --device cpu or auto", where->index, why);
    if (n <= 0)
        return cds_errf(err, "device cuda:%d: no CUDA device here (%s): use --device cpu or auto", where->index, why);
    if (where->index >= n)
        return cds_errf(err, "device cuda:%d: this machine has %d CUDA device%s (cuda:0%s%s): name one of them, or use "
                             "--device auto", where->index, n, n == 1 ? "" : "s", n > 1 ? " to cuda:" : "",
                        n > 1 ? (snprintf(why, sizeof why, "%d", n - 1), why) : "");
    return 0;
}

const char *nn_place_name(nn_place where, char *buf, size_t len)
{
    if (where.dev == NN_CPU)
        snprintf(buf, len, "cpu");
    else
        snprintf(buf, len, "cuda:%d", where.index);
    return buf;
}
