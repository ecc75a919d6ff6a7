/* nn_export_onnx: a model's inference graph as ONNX (nn_export.h,
 * docs/export.md).
 *
 * The graph is the engine's own node list (nn_model_int.h), walked in
 * order, each node one or a few ONNX operators of opset 17:
 *
 *   linear      Gemm(x, W, b, transB=1): W is [out, in], as PyTorch keeps it
 *   sparse fc0  Gather(W [dim, out], idx) -> ReduceSum over the nnz axis ->
 *               Add(b): the sum of one weight row per index, a repeated
 *               index counting twice, as the engine and EmbeddingBag do
 *   conv        Conv, kernel, stride and symmetric padding, bias if any
 *   batch norm  BatchNormalization with the running statistics (evaluation
 *               mode) and the model's epsilon
 *   relu, add   Relu, Add
 *   max-pool    MaxPool (floor mode, as the engine)
 *   global pool GlobalAveragePool, then Flatten: the engine's is [N, C]
 *   flatten     Flatten(axis 1): (C, H, W) order, as the engine
 *   dropout     nothing: inference
 *
 * Input "input": float [N, C, H, W] or [N, features], or a sparse model's
 * int32 [N, nnz] indices; output "logits" [N, classes]; N is symbolic.
 * Weights and running statistics are initializers under the checkpoint's
 * names, raw little-endian float32.
 *
 * The protobuf is written by hand (pb below): a model is a few nested
 * messages of varints, strings, packed bytes and floats, far less than
 * protobuf-c and its generated code.  Field numbers are onnx.proto's
 * (ONNX 1.12, IR version 8). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_export.h"
#include "nn_model_int.h"
#include "nn_train.h"

/* ---- protobuf's wire format -------------------------------------------------- */

typedef struct pb {
    unsigned char *b;
    size_t n, cap;
    int failed; /* out of memory: everything after is dropped, and said at the end */
} pb;

static void pb_raw(pb *p, const void *d, size_t n)
{
    if (p->failed || n == 0)
        return;
    if (p->n + n > p->cap) {
        size_t cap = p->cap ? p->cap : 256;
        while (cap < p->n + n)
            cap *= 2;
        unsigned char *nb = realloc(p->b, cap);
        if (!nb) {
            p->failed = 1;
            return;
        }
        p->b = nb;
        p->cap = cap;
    }
    memcpy(p->b + p->n, d, n);
    p->n += n;
}

static void pb_varint(pb *p, uint64_t v)
{
    unsigned char b[10];
    int n = 0;
    do {
        b[n++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    pb_raw(p, b, (size_t)n);
}

enum { WIRE_VARINT = 0, WIRE_BYTES = 2, WIRE_FIXED32 = 5 };

static void pb_key(pb *p, int field, int wire) { pb_varint(p, (uint64_t)field << 3 | (uint64_t)wire); }

static void pb_int(pb *p, int field, int64_t v)
{
    pb_key(p, field, WIRE_VARINT);
    pb_varint(p, (uint64_t)v);
}

static void pb_bytes(pb *p, int field, const void *d, size_t n)
{
    pb_key(p, field, WIRE_BYTES);
    pb_varint(p, n);
    pb_raw(p, d, n);
}

static void pb_str(pb *p, int field, const char *s) { pb_bytes(p, field, s, strlen(s)); }

static void pb_float(pb *p, int field, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                          (unsigned char)(u >> 24)};
    pb_key(p, field, WIRE_FIXED32);
    pb_raw(p, b, 4);
}

/* Appends sub as a message in field, and frees it. */
static void pb_msg(pb *p, int field, pb *sub)
{
    if (sub->failed)
        p->failed = 1;
    pb_bytes(p, field, sub->b, sub->n);
    free(sub->b);
    memset(sub, 0, sizeof *sub);
}

/* ---- onnx.proto ---------------------------------------------------------------- */

enum { T_FLOAT = 1, T_INT32 = 6, T_INT64 = 7 };                 /* TensorProto.DataType */
enum { A_FLOAT = 1, A_INT = 2, A_INTS = 7 };                     /* AttributeProto.AttributeType */

typedef struct attr {
    const char *name;
    int type;
    float f;
    int64_t ints[4];
    int n;
} attr;

static void node_msg(pb *graph, const char *op, const char *const *in, int n_in, const char *out, const attr *a,
                     int n_a)
{
    pb node = {0};
    for (int i = 0; i < n_in; i++)
        pb_str(&node, 1, in[i]);
    pb_str(&node, 2, out);
    pb_str(&node, 3, out);
    pb_str(&node, 4, op);
    for (int i = 0; i < n_a; i++) {
        pb at = {0};
        pb_str(&at, 1, a[i].name);
        if (a[i].type == A_FLOAT)
            pb_float(&at, 2, a[i].f);
        else if (a[i].type == A_INT)
            pb_int(&at, 3, a[i].ints[0]);
        else
            for (int k = 0; k < a[i].n; k++)
                pb_int(&at, 8, a[i].ints[k]);
        pb_int(&at, 20, a[i].type);
        pb_msg(&node, 5, &at);
    }
    pb_msg(graph, 1, &node);
}

/* An initializer: float32 data (host), or int64 when i64 is given. */
static void initializer(pb *graph, const char *name, const int *dims, int ndim, const float *f32, const int64_t *i64,
                        size_t n)
{
    pb t = {0};
    for (int d = 0; d < ndim; d++)
        pb_int(&t, 1, dims[d]);
    pb_int(&t, 2, i64 ? T_INT64 : T_FLOAT);
    pb_str(&t, 8, name);
    size_t bytes = n * (i64 ? 8 : 4);
    unsigned char *raw = malloc(bytes ? bytes : 1);
    if (!raw) {
        graph->failed = 1;
        free(t.b);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        uint64_t u = 0;
        if (i64) {
            u = (uint64_t)i64[k];
        } else {
            uint32_t v;
            memcpy(&v, &f32[k], 4);
            u = v;
        }
        for (size_t b = 0; b < (i64 ? 8u : 4u); b++)
            raw[k * (i64 ? 8 : 4) + b] = (unsigned char)(u >> (8 * b));
    }
    pb_bytes(&t, 9, raw, bytes);
    free(raw);
    pb_msg(graph, 5, &t);
}

/* A graph input or output: elem type, [N, dims...] with N symbolic. */
static void value_info(pb *graph, int field, const char *name, int elem, const int *dims, int ndim)
{
    pb shape = {0}, tensor = {0}, type = {0}, vi = {0}, dim = {0};
    pb_str(&dim, 2, "N");
    pb_msg(&shape, 1, &dim);
    for (int d = 0; d < ndim; d++) {
        pb_int(&dim, 1, dims[d]);
        pb_msg(&shape, 1, &dim);
    }
    pb_int(&tensor, 1, elem);
    pb_msg(&tensor, 2, &shape);
    pb_msg(&type, 1, &tensor);
    pb_str(&vi, 1, name);
    pb_msg(&vi, 2, &type);
    pb_msg(graph, field, &vi);
}

/* ---- the graph ----------------------------------------------------------------- */

typedef struct graph_ctx {
    nn_model *m;
    pb g;
    char (*out)[32];   /* each node's output name */
    float *host;       /* a tensor's staging */
    size_t host_n;
} graph_ctx;

static int weight(graph_ctx *x, const char *name, nn_tensor *t, cds_err *err)
{
    if (t->n > x->host_n) {
        float *h = realloc(x->host, t->n * sizeof *h);
        if (!h)
            return cds_err_nomem(err, "out of memory reading %s (%zu floats)", name, t->n);
        x->host = h;
        x->host_n = t->n;
    }
    nn_model_read(x->m, t, x->host);
    initializer(&x->g, name, t->shape, t->ndim, x->host, NULL, t->n);
    return 0;
}

static int param_init(graph_ctx *x, int i, cds_err *err)
{
    return i < 0 ? 0 : weight(x, x->m->params[i].name, &x->m->params[i].w, err);
}

static int buffer_init(graph_ctx *x, int i, cds_err *err)
{
    return weight(x, x->m->bufs[i].name, &x->m->bufs[i].t, err);
}

static int emit_node(graph_ctx *x, size_t i, int last, cds_err *err)
{
    node *d = &x->m->nodes[i];
    nn_model *m = x->m;
    char *out = x->out[i];
    if (last)
        snprintf(out, 32, "logits");
    else
        snprintf(out, 32, "n%zu", i);
    const char *in = d->kind == K_INPUT ? "input" : x->out[d->in];
    attr a[4];
    switch (d->kind) {
    case K_INPUT:
        snprintf(out, 32, "input");
        return 0;
    case K_DROPOUT: /* inference: the identity */
        if (last)
            node_msg(&x->g, "Identity", &in, 1, out, NULL, 0);
        else
            memmove(out, in, strlen(in) + 1); /* names are < 32 bytes */
        return 0;
    case K_LINEAR: {
        const char *ins[3] = {in, m->params[d->pw].name, d->pb >= 0 ? m->params[d->pb].name : ""};
        a[0] = (attr){.name = "transB", .type = A_INT, .ints = {1}};
        node_msg(&x->g, "Gemm", ins, d->pb >= 0 ? 3 : 2, out, a, 1);
        return param_init(x, d->pw, err) || param_init(x, d->pb, err) ? -1 : 0;
    }
    case K_SPARSE: {
        char gathered[40], summed[40], axes[40];
        snprintf(gathered, sizeof gathered, "%s.rows", out);
        snprintf(summed, sizeof summed, "%s.sum", out);
        snprintf(axes, sizeof axes, "%s.axes", out);
        const char *g_in[2] = {m->params[d->pw].name, in}, *s_in[2] = {gathered, axes};
        node_msg(&x->g, "Gather", g_in, 2, gathered, NULL, 0);
        a[0] = (attr){.name = "keepdims", .type = A_INT, .ints = {0}};
        node_msg(&x->g, "ReduceSum", s_in, 2, d->pb >= 0 ? summed : out, a, 1);
        int one = 1;
        int64_t axis = 1;
        initializer(&x->g, axes, &one, 1, NULL, &axis, 1);
        if (d->pb >= 0) {
            const char *b_in[2] = {summed, m->params[d->pb].name};
            node_msg(&x->g, "Add", b_in, 2, out, NULL, 0);
        }
        return param_init(x, d->pw, err) || param_init(x, d->pb, err) ? -1 : 0;
    }
    case K_CONV: {
        const char *ins[3] = {in, m->params[d->pw].name, d->pb >= 0 ? m->params[d->pb].name : ""};
        a[0] = (attr){.name = "kernel_shape", .type = A_INTS, .ints = {d->cg.KH, d->cg.KW}, .n = 2};
        a[1] = (attr){.name = "strides", .type = A_INTS, .ints = {d->cg.stride, d->cg.stride}, .n = 2};
        a[2] = (attr){.name = "pads", .type = A_INTS, .ints = {d->cg.pad, d->cg.pad, d->cg.pad, d->cg.pad}, .n = 4};
        node_msg(&x->g, "Conv", ins, d->pb >= 0 ? 3 : 2, out, a, 3);
        return param_init(x, d->pw, err) || param_init(x, d->pb, err) ? -1 : 0;
    }
    case K_BN: {
        const char *ins[5] = {in, m->params[d->pw].name, m->params[d->pb].name, m->bufs[d->bmean].name,
                              m->bufs[d->bvar].name};
        a[0] = (attr){.name = "epsilon", .type = A_FLOAT, .f = m->bn_eps};
        node_msg(&x->g, "BatchNormalization", ins, 5, out, a, 1);
        return param_init(x, d->pw, err) || param_init(x, d->pb, err) || buffer_init(x, d->bmean, err) ||
                       buffer_init(x, d->bvar, err)
                   ? -1
                   : 0;
    }
    case K_RELU:
        node_msg(&x->g, "Relu", &in, 1, out, NULL, 0);
        return 0;
    case K_ADD: {
        const char *ins[2] = {in, x->out[d->in2]};
        node_msg(&x->g, "Add", ins, 2, out, NULL, 0);
        return 0;
    }
    case K_MAXPOOL:
        a[0] = (attr){.name = "kernel_shape", .type = A_INTS, .ints = {d->pg.k, d->pg.k}, .n = 2};
        a[1] = (attr){.name = "strides", .type = A_INTS, .ints = {d->pg.stride, d->pg.stride}, .n = 2};
        a[2] = (attr){.name = "pads", .type = A_INTS, .ints = {d->pg.pad, d->pg.pad, d->pg.pad, d->pg.pad}, .n = 4};
        node_msg(&x->g, "MaxPool", &in, 1, out, a, 3);
        return 0;
    case K_GAP: {
        char pooled[40];
        snprintf(pooled, sizeof pooled, "%s.pool", out);
        node_msg(&x->g, "GlobalAveragePool", &in, 1, pooled, NULL, 0);
        const char *p_in = pooled;
        a[0] = (attr){.name = "axis", .type = A_INT, .ints = {1}};
        node_msg(&x->g, "Flatten", &p_in, 1, out, a, 1);
        return 0;
    }
    case K_FLATTEN:
        a[0] = (attr){.name = "axis", .type = A_INT, .ints = {1}};
        node_msg(&x->g, "Flatten", &in, 1, out, a, 1);
        return 0;
    case K_AVGPOOL:
        break;
    }
    return cds_errf(err, "node %zu of this %s has no ONNX form here: export it as safetensors", i, m->arch);
}

typedef struct model_bytes {
    const pb *p;
} model_bytes;

static int model_body(FILE *f, void *ctx)
{
    const model_bytes *b = ctx;
    return fwrite(b->p->b, 1, b->p->n, f) == b->p->n ? 0 : -1;
}

int nn_export_onnx(const char *ckpt_path, const char *path, cds_err *err)
{
    nn_trainer *t = nn_trainer_load(ckpt_path, err);
    if (!t)
        return -1;
    graph_ctx x = {.m = nn_trainer_model(t)};
    nn_model *m = x.m;
    int rc = (x.out = calloc(m->n_nodes ? m->n_nodes : 1, sizeof *x.out)) ? 0 : cds_err_nomem(err, "out of memory");
    size_t last = m->n_nodes - 1;
    for (size_t i = 0; rc == 0 && i < m->n_nodes; i++)
        rc = emit_node(&x, i, i == last, err);
    if (rc == 0) {
        pb_str(&x.g, 2, m->arch);
        int dims[3];
        int sparse = m->sparse_dim > 0;
        for (int d = 0; d < m->in_ndim; d++)
            dims[d] = m->in_shape[d];
        if (sparse)
            dims[0] = m->nnz;
        value_info(&x.g, 11, "input", sparse ? T_INT32 : T_FLOAT, dims, sparse ? 1 : m->in_ndim);
        value_info(&x.g, 12, "logits", T_FLOAT, &m->classes, 1);
        pb model = {0}, opset = {0};
        pb_int(&model, 1, 8); /* IR version 8: opset 17's */
        pb_str(&model, 2, "cerebro-ds");
        pb_str(&opset, 1, "");
        pb_int(&opset, 2, 17);
        pb_msg(&model, 7, &x.g);
        pb_msg(&model, 8, &opset);
        if (model.failed) {
            rc = cds_err_nomem(err, "out of memory building the ONNX graph of %s", ckpt_path);
        } else {
            model_bytes b = {.p = &model};
            rc = nn_export_write(path, model_body, &b, err);
        }
        free(model.b);
    }
    free(x.g.b);
    free(x.out);
    free(x.host);
    nn_trainer_free(t);
    return rc;
}
