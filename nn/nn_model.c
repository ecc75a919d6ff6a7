/* nn_model: networks built from a spec, run forward and backward over a
 * planned arena (see nn_model.h and docs/models.md).
 *
 * Building happens in two phases.  The builders (mb_conv, mb_bn, ...) append
 * nodes and record each parameter's shape, initialiser and offset in one
 * parameter block; each node's output buffer, gradient buffer and auxiliary
 * state (batch-norm statistics, max-pool winners, dropout masks) is reserved
 * in an arena for the largest batch.  Then the blocks are allocated once and
 * the weights initialised in parameter order from the seed, so the same seed
 * always gives the same model.
 *
 * Invariants:
 *   - nodes[0] is the input; node i reads only nodes before i;
 *   - every gradient buffer lives in the `grad` arena, so one memset clears
 *     them all before a backward pass, and backward kernels accumulate;
 *   - a flatten node owns no memory: its output and gradient are its input's,
 *     re-shaped, so it costs nothing in either direction;
 *   - parameter names and order are PyTorch's named_parameters() for the same
 *     module, which golden tests and checkpoints depend on;
 *   - in row-sparse mode (lazy optimisers) the embedding weight's gradient
 *     is the exception to clearing-then-accumulating: its backward writes
 *     the touched rows packed, and nothing ever clears the [dim, out] g. */
#include "nn_model.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_ops.h"
#include "nn_par.h"
#include "nn_rng.h"

enum node_kind { K_INPUT, K_LINEAR, K_SPARSE, K_CONV, K_BN, K_RELU, K_MAXPOOL, K_AVGPOOL, K_GAP, K_DROPOUT,
                 K_FLATTEN, K_ADD };

enum init_kind { INIT_TORCH, INIT_TORCH_BIAS, INIT_KAIMING_OUT, INIT_GLOROT, INIT_ZERO, INIT_ONE };

typedef struct node {
    enum node_kind kind;
    int in, in2;
    int ndim;               /* 2: [N, c]; 4: [N, c, h, w] */
    int c, h, w;
    int pw, pb;             /* parameters (weight, bias / gamma, beta), -1 if none */
    int bmean, bvar;        /* batch-norm buffers */
    nn_conv_geom cg;
    nn_pool_geom pg;
    float p;                /* dropout probability */
    int has_grad;           /* the backward pass needs this node's gradient */
    int zeroed;             /* this backward pass has cleared dy already */
    size_t y_off, dy_off, aux_off;
    nn_tensor y, dy;
    void *aux;
} node;

typedef struct param_plan {
    size_t off;             /* into the parameter block, floats */
    enum init_kind init;
    int fan_in, fan_out;
} param_plan;

struct nn_model {
    char *spec;
    char arch[16];
    int classes;
    int in_ndim, in_shape[3];
    int sparse_dim, nnz;
    float width, dropout, bn_momentum, bn_eps;
    int max_batch;

    node *nodes;
    size_t n_nodes, cap_nodes;
    nn_param *params;
    param_plan *plans;
    size_t n_params, cap_params;
    nn_buffer *bufs;
    size_t *buf_off;
    size_t n_bufs, cap_bufs;
    char **names;
    size_t n_names, cap_names;
    size_t p_total, b_total;
    float *pblock, *gblock, *bblock;

    nn_arena *act, *grad;
    size_t work_floats;
    float *work;

    int n_cur;
    const int32_t *idx_cur;
    nn_sparse_plan sp;      /* sparse models: the last forward batch's indices grouped by row, in sp_work */
    void *sp_work;
    int trained;            /* the last forward was a training forward with labels */
    cds_err build_err;
    int failed;
};

/* ---------------------------------------------------------------- building */

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 16;
    while (nc < need)
        nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q)
        return -1;
    memset((char *)q + *cap * elem, 0, (nc - *cap) * elem);
    *p = q;
    *cap = nc;
    return 0;
}

static int mb_fail(nn_model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int mb_fail(nn_model *m, const char *fmt, ...)
{
    if (!m->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m->build_err.msg, sizeof m->build_err.msg, fmt, ap);
        va_end(ap);
        m->build_err.kind = CDS_ERR_FAILED;
    }
    m->failed = 1;
    return -1;
}

static int mb_nomem(nn_model *m)
{
    if (!m->failed)
        cds_err_nomem(&m->build_err, "out of memory building the model");
    m->failed = 1;
    return -1;
}

static const char *mb_name(nn_model *m, const char *prefix, const char *suffix)
{
    if (grow((void **)&m->names, &m->cap_names, m->n_names + 1, sizeof *m->names) != 0)
        return NULL;
    size_t len = strlen(prefix) + strlen(suffix) + 2;
    char *s = malloc(len);
    if (!s)
        return NULL;
    snprintf(s, len, "%s%s%s", prefix, *prefix ? "." : "", suffix);
    m->names[m->n_names++] = s;
    return s;
}

static int mb_param(nn_model *m, const char *layer, const char *what, int ndim, const int *shape, enum init_kind init,
                    int fan_in, int fan_out, int decay)
{
    if (m->failed)
        return -1;
    size_t cap = m->cap_params;
    if (grow((void **)&m->params, &m->cap_params, m->n_params + 1, sizeof *m->params) != 0)
        return mb_nomem(m);
    if (cap != m->cap_params) {
        param_plan *pl = realloc(m->plans, m->cap_params * sizeof *m->plans);
        if (!pl)
            return mb_nomem(m);
        m->plans = pl;
    }
    const char *name = mb_name(m, layer, what);
    if (!name)
        return mb_nomem(m);
    nn_param *p = &m->params[m->n_params];
    memset(p, 0, sizeof *p);
    p->name = name;
    p->decay = decay;
    nn_tensor_shape(&p->w, ndim, shape);
    nn_tensor_shape(&p->g, ndim, shape);
    m->plans[m->n_params] = (param_plan){m->p_total, init, fan_in, fan_out};
    m->p_total += (p->w.n + 15) / 16 * 16; /* 64-byte aligned tensors */
    return (int)m->n_params++;
}

static int mb_buffer(nn_model *m, const char *layer, const char *what, int c)
{
    if (m->failed)
        return -1;
    size_t cap = m->cap_bufs;
    if (grow((void **)&m->bufs, &m->cap_bufs, m->n_bufs + 1, sizeof *m->bufs) != 0)
        return mb_nomem(m);
    if (cap != m->cap_bufs) {
        size_t *off = realloc(m->buf_off, m->cap_bufs * sizeof *m->buf_off);
        if (!off)
            return mb_nomem(m);
        m->buf_off = off;
    }
    const char *name = mb_name(m, layer, what);
    if (!name)
        return mb_nomem(m);
    nn_buffer *b = &m->bufs[m->n_bufs];
    b->name = name;
    nn_tensor_shape(&b->t, 1, &c);
    m->buf_off[m->n_bufs] = m->b_total;
    m->b_total += ((size_t)c + 15) / 16 * 16;
    return (int)m->n_bufs++;
}

/* Appends a node whose output is [N, c, h, w] (ndim 4) or [N, c] (ndim 2). */
static int mb_node(nn_model *m, enum node_kind kind, int in, int ndim, int c, int h, int w)
{
    if (m->failed)
        return -1;
    if (c <= 0 || (ndim == 4 && (h <= 0 || w <= 0)))
        return mb_fail(m, "input too small for %s: a layer's output would be empty (%dx%d); use a larger input", m->arch,
                       h, w);
    if (grow((void **)&m->nodes, &m->cap_nodes, m->n_nodes + 1, sizeof *m->nodes) != 0)
        return mb_nomem(m);
    node *n = &m->nodes[m->n_nodes];
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->in = in;
    n->in2 = -1;
    n->pw = n->pb = n->bmean = n->bvar = -1;
    n->ndim = ndim;
    n->c = c;
    n->h = ndim == 4 ? h : 1;
    n->w = ndim == 4 ? w : 1;
    return (int)m->n_nodes++;
}

static size_t node_per_row(const node *n)
{
    return (size_t)n->c * (size_t)n->h * (size_t)n->w;
}

static int ch(const nn_model *m, int c)
{
    int v = (int)floor((double)c * m->width + 0.5);
    return v < 1 ? 1 : v;
}

static int mb_conv(nn_model *m, const char *name, int in, int oc, int k, int stride, int pad, int bias,
                   enum init_kind init)
{
    if (m->failed)
        return -1;
    const node *x = &m->nodes[in];
    nn_conv_geom g = {.N = m->max_batch, .C = x->c, .H = x->h, .W = x->w, .OC = oc, .KH = k, .KW = k,
                      .stride = stride, .pad = pad};
    if (nn_conv_geom_init(&g) != 0)
        return mb_fail(m, "input %dx%d too small for %s: convolution %s would have an empty output; use a larger input",
                       x->h, x->w, m->arch, name);
    int id = mb_node(m, K_CONV, in, 4, oc, g.OH, g.OW);
    if (id < 0)
        return -1;
    int shape[4] = {oc, x->c, k, k};
    int fan_in = x->c * k * k, fan_out = oc * k * k;
    int pw = mb_param(m, name, "weight", 4, shape, init, fan_in, fan_out, 1);
    int pb = bias ? mb_param(m, name, "bias", 1, &oc, init == INIT_GLOROT ? INIT_ZERO : INIT_TORCH_BIAS, fan_in,
                             fan_out, 0)
                  : -1;
    node *n = &m->nodes[id];
    n->cg = g;
    n->pw = pw;
    n->pb = pb;
    size_t wf = nn_cpu_conv2d_work(&g);
    if (wf > m->work_floats)
        m->work_floats = wf;
    return id;
}

static int mb_bn(nn_model *m, const char *name, int in)
{
    if (m->failed)
        return -1;
    const node *x = &m->nodes[in];
    int c = x->c;
    int id = mb_node(m, K_BN, in, x->ndim, c, x->h, x->w);
    int pg = mb_param(m, name, "weight", 1, &c, INIT_ONE, 0, 0, 0);
    int pb = mb_param(m, name, "bias", 1, &c, INIT_ZERO, 0, 0, 0);
    int bm = mb_buffer(m, name, "running_mean", c);
    int bv = mb_buffer(m, name, "running_var", c);
    if (id < 0 || m->failed)
        return -1;
    node *n = &m->nodes[id];
    n->pw = pg;
    n->pb = pb;
    n->bmean = bm;
    n->bvar = bv;
    return id;
}

static int mb_unary(nn_model *m, enum node_kind kind, int in)
{
    if (m->failed)
        return -1;
    const node *x = &m->nodes[in];
    return mb_node(m, kind, in, x->ndim, x->c, x->h, x->w);
}

static int mb_pool(nn_model *m, enum node_kind kind, int in, int k, int stride, int pad)
{
    if (m->failed)
        return -1;
    const node *x = &m->nodes[in];
    nn_pool_geom g = {.N = m->max_batch, .C = x->c, .H = x->h, .W = x->w, .k = k, .stride = stride, .pad = pad};
    if (nn_pool_geom_init(&g) != 0)
        return mb_fail(m, "input too small for %s: a pooling layer would have an empty output (%dx%d before it); "
                          "use a larger input", m->arch, x->h, x->w);
    int id = mb_node(m, kind, in, 4, x->c, g.OH, g.OW);
    if (id >= 0)
        m->nodes[id].pg = g;
    return id;
}

static int mb_gap(nn_model *m, int in)
{
    return m->failed ? -1 : mb_node(m, K_GAP, in, 2, m->nodes[in].c, 1, 1);
}

static int mb_flatten(nn_model *m, int in)
{
    if (m->failed)
        return -1;
    const node *x = &m->nodes[in];
    if (x->ndim == 2)
        return in;
    return mb_node(m, K_FLATTEN, in, 2, (int)node_per_row(x), 1, 1);
}

static int mb_linear(nn_model *m, const char *name, int in, int out, enum init_kind init)
{
    if (m->failed)
        return -1;
    in = mb_flatten(m, in);
    if (in < 0)
        return -1;
    int fan_in = (int)node_per_row(&m->nodes[in]);
    int id = mb_node(m, K_LINEAR, in, 2, out, 1, 1);
    int shape[2] = {out, fan_in};
    int pw = mb_param(m, name, "weight", 2, shape, init, fan_in, out, 1);
    int pb = mb_param(m, name, "bias", 1, &out, init == INIT_GLOROT ? INIT_ZERO : INIT_TORCH_BIAS, fan_in, out, 0);
    if (id < 0 || m->failed)
        return -1;
    m->nodes[id].pw = pw;
    m->nodes[id].pb = pb;
    return id;
}

/* The first layer of a sparse mlp: weight [dim, out], initialised like the
 * dense layer it stands for (fan-in dim). */
static int mb_sparse_linear(nn_model *m, const char *name, int out)
{
    int id = mb_node(m, K_SPARSE, 0, 2, out, 1, 1);
    int shape[2] = {m->sparse_dim, out};
    int pw = mb_param(m, name, "weight", 2, shape, INIT_TORCH, m->sparse_dim, out, 1);
    int pb = mb_param(m, name, "bias", 1, &out, INIT_TORCH_BIAS, m->sparse_dim, out, 0);
    if (id < 0 || m->failed)
        return -1;
    m->params[pw].embedding = 1;
    m->nodes[id].pw = pw;
    m->nodes[id].pb = pb;
    return id;
}

static int mb_dropout(nn_model *m, int in, float p)
{
    if (p <= 0)
        return in;
    int id = mb_unary(m, K_DROPOUT, in);
    if (id >= 0)
        m->nodes[id].p = p;
    return id;
}

static int mb_add(nn_model *m, int a, int b)
{
    if (m->failed)
        return -1;
    const node *x = &m->nodes[a], *y = &m->nodes[b];
    if (x->c != y->c || x->h != y->h || x->w != y->w)
        return mb_fail(m, "internal: residual shapes differ in %s (%d vs %d channels)", m->arch, x->c, y->c);
    int id = mb_node(m, K_ADD, a, x->ndim, x->c, x->h, x->w);
    if (id >= 0)
        m->nodes[id].in2 = b;
    return id;
}

/* ---------------------------------------------------------- architectures */

static void build_mlp(nn_model *m, const int *hidden, int n_hidden)
{
    int x = 0;
    char name[32];
    for (int i = 0; i <= n_hidden; i++) {
        int out = i < n_hidden ? ch(m, hidden[i]) : m->classes;
        snprintf(name, sizeof name, "fc%d", i);
        x = (i == 0 && m->sparse_dim) ? mb_sparse_linear(m, name, out) : mb_linear(m, name, x, out, INIT_TORCH);
        if (i < n_hidden)
            x = mb_dropout(m, mb_unary(m, K_RELU, x), m->dropout);
    }
}

static void build_cnn(nn_model *m)
{
    int x = mb_conv(m, "conv1", 0, ch(m, 32), 3, 1, 1, 1, INIT_TORCH);
    x = mb_pool(m, K_MAXPOOL, mb_unary(m, K_RELU, x), 2, 2, 0);
    x = mb_conv(m, "conv2", x, ch(m, 64), 3, 1, 1, 1, INIT_TORCH);
    x = mb_pool(m, K_MAXPOOL, mb_unary(m, K_RELU, x), 2, 2, 0);
    x = mb_linear(m, "fc1", x, ch(m, 128), INIT_TORCH);
    x = mb_dropout(m, mb_unary(m, K_RELU, x), m->dropout);
    mb_linear(m, "fc2", x, m->classes, INIT_TORCH);
}

/* One residual block of torchvision's ResNet (v1.5), named layer<L>.<B>. */
static int build_res_block(nn_model *m, int x, int L, int B, int planes, int stride, int bottleneck)
{
    char pre[32], name[48];
    snprintf(pre, sizeof pre, "layer%d.%d", L, B);
    int out_c = bottleneck ? planes * 4 : planes;
    int in_c = x >= 0 ? m->nodes[x].c : 0;
    int y;
#define RN(s) (snprintf(name, sizeof name, "%s.%s", pre, s), name)
    if (bottleneck) {
        y = mb_conv(m, RN("conv1"), x, planes, 1, 1, 0, 0, INIT_KAIMING_OUT);
        y = mb_unary(m, K_RELU, mb_bn(m, RN("bn1"), y));
        y = mb_conv(m, RN("conv2"), y, planes, 3, stride, 1, 0, INIT_KAIMING_OUT);
        y = mb_unary(m, K_RELU, mb_bn(m, RN("bn2"), y));
        y = mb_conv(m, RN("conv3"), y, out_c, 1, 1, 0, 0, INIT_KAIMING_OUT);
        y = mb_bn(m, RN("bn3"), y);
    } else {
        y = mb_conv(m, RN("conv1"), x, planes, 3, stride, 1, 0, INIT_KAIMING_OUT);
        y = mb_unary(m, K_RELU, mb_bn(m, RN("bn1"), y));
        y = mb_conv(m, RN("conv2"), y, planes, 3, 1, 1, 0, INIT_KAIMING_OUT);
        y = mb_bn(m, RN("bn2"), y);
    }
    int shortcut = x;
    if (stride != 1 || in_c != out_c) {
        shortcut = mb_conv(m, RN("downsample.0"), x, out_c, 1, stride, 0, 0, INIT_KAIMING_OUT);
        shortcut = mb_bn(m, RN("downsample.1"), shortcut);
    }
#undef RN
    return mb_unary(m, K_RELU, mb_add(m, y, shortcut));
}

static void build_resnet(nn_model *m, const int blocks[4], int bottleneck)
{
    int x = mb_conv(m, "conv1", 0, ch(m, 64), 7, 2, 3, 0, INIT_KAIMING_OUT);
    x = mb_unary(m, K_RELU, mb_bn(m, "bn1", x));
    x = mb_pool(m, K_MAXPOOL, x, 3, 2, 1);
    static const int planes[4] = {64, 128, 256, 512};
    for (int L = 0; L < 4; L++)
        for (int B = 0; B < blocks[L]; B++)
            x = build_res_block(m, x, L + 1, B, ch(m, planes[L]), B == 0 && L > 0 ? 2 : 1, bottleneck);
    x = mb_gap(m, x);
    mb_linear(m, "fc", x, m->classes, INIT_TORCH);
}

static void build_vgg(nn_model *m, const int *cfg, int n_cfg)
{
    int x = 0, block = 1, conv = 1;
    char name[32];
    for (int i = 0; i < n_cfg; i++) {
        if (cfg[i] == 0) {
            x = mb_pool(m, K_MAXPOOL, x, 2, 2, 0);
            block++;
            conv = 1;
            continue;
        }
        snprintf(name, sizeof name, "block%d_conv%d", block, conv++);
        x = mb_unary(m, K_RELU, mb_conv(m, name, x, ch(m, cfg[i]), 3, 1, 1, 1, INIT_GLOROT));
    }
    x = mb_unary(m, K_RELU, mb_linear(m, "fc1", x, ch(m, 4096), INIT_GLOROT));
    x = mb_unary(m, K_RELU, mb_linear(m, "fc2", x, ch(m, 4096), INIT_GLOROT));
    mb_linear(m, "predictions", x, m->classes, INIT_GLOROT);
}

/* ------------------------------------------------------------- the spec */

static int spec_int_array(json_t *a, const char *field, int *out, int max, int *n, cds_err *err)
{
    if (!json_is_array(a) || json_array_size(a) == 0 || json_array_size(a) > (size_t)max)
        return cds_errf(err, "model spec: \"%s\" must be an array of 1 to %d positive integers", field, max);
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1 << 24)
            return cds_errf(err, "model spec: \"%s\"[%zu] must be a positive integer", field, i);
        out[i] = (int)json_integer_value(v);
    }
    *n = (int)json_array_size(a);
    return 0;
}

static int spec_number(json_t *o, const char *field, double def, double lo, double hi, double *out, cds_err *err)
{
    json_t *v = json_object_get(o, field);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v) || json_number_value(v) < lo || json_number_value(v) > hi)
        return cds_errf(err, "model spec: \"%s\" must be a number in [%g, %g]", field, lo, hi);
    *out = json_number_value(v);
    return 0;
}

static const char *const known_fields[] = {"arch", "input", "sparse", "classes", "width", "hidden", "dropout",
                                           "bn_momentum", "bn_eps", NULL};

static int spec_check_fields(json_t *o, cds_err *err)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        int known = 0;
        for (int i = 0; known_fields[i]; i++)
            known |= strcmp(k, known_fields[i]) == 0;
        if (!known)
            return cds_errf(err, "model spec: unknown field \"%s\" (known: arch, input, sparse, classes, width, "
                                 "hidden, dropout, bn_momentum, bn_eps)", k);
    }
    (void)v;
    return 0;
}

static int spec_parse(nn_model *m, json_t *o, int *hidden, int *n_hidden, cds_err *err)
{
    if (!json_is_object(o))
        return cds_errf(err, "model spec: must be a JSON object (see docs/models.md)");
    if (spec_check_fields(o, err) != 0)
        return -1;
    const char *arch = json_string_value(json_object_get(o, "arch"));
    static const char *const archs[] = {"mlp", "cnn", "resnet18", "resnet34", "resnet50", "vgg11", "vgg16", NULL};
    int ok = 0;
    for (int i = 0; arch && archs[i]; i++)
        ok |= strcmp(arch, archs[i]) == 0;
    if (!ok)
        return cds_errf(err, "model spec: \"arch\" must be one of mlp, cnn, resnet18, resnet34, resnet50, vgg11, vgg16");
    snprintf(m->arch, sizeof m->arch, "%s", arch);
    json_t *cl = json_object_get(o, "classes");
    if (!json_is_integer(cl) || json_integer_value(cl) < 2 || json_integer_value(cl) > 1 << 20)
        return cds_errf(err, "model spec: \"classes\" must be an integer of at least 2");
    m->classes = (int)json_integer_value(cl);
    double width = 1, dropout = 0, mom = 0.1, eps = 1e-5;
    if (spec_number(o, "width", 1.0, 1e-3, 64, &width, err) || spec_number(o, "dropout", 0, 0, 0.99, &dropout, err) ||
        spec_number(o, "bn_momentum", 0.1, 0, 1, &mom, err) || spec_number(o, "bn_eps", 1e-5, 1e-12, 1, &eps, err))
        return -1;
    m->width = (float)width;
    m->dropout = (float)dropout;
    m->bn_momentum = (float)mom;
    m->bn_eps = (float)eps;
    int is_mlp = strcmp(arch, "mlp") == 0;
    json_t *sparse = json_object_get(o, "sparse");
    if (sparse) {
        if (!is_mlp)
            return cds_errf(err, "model spec: \"sparse\" input is for arch mlp only");
        json_t *dim = json_object_get(sparse, "dim"), *nnz = json_object_get(sparse, "nnz");
        if (!json_is_integer(dim) || !json_is_integer(nnz) || json_integer_value(dim) < 1 ||
            json_integer_value(nnz) < 1 || json_integer_value(dim) > 1 << 28 || json_integer_value(nnz) > 1 << 16)
            return cds_errf(err, "model spec: \"sparse\" must be {\"dim\": D, \"nnz\": K} with positive integers");
        if (json_object_get(o, "input"))
            return cds_errf(err, "model spec: give either \"input\" or \"sparse\", not both");
        m->sparse_dim = (int)json_integer_value(dim);
        m->nnz = (int)json_integer_value(nnz);
        m->in_ndim = 1;
        m->in_shape[0] = m->nnz;
    } else {
        if (spec_int_array(json_object_get(o, "input"), "input", m->in_shape, 3, &m->in_ndim, err) != 0)
            return -1;
        if (!is_mlp && m->in_ndim != 3)
            return cds_errf(err, "model spec: \"input\" of %s must be [C, H, W]", arch);
    }
    *n_hidden = 0;
    json_t *h = json_object_get(o, "hidden");
    if (is_mlp) {
        if (h && spec_int_array(h, "hidden", hidden, 16, n_hidden, err) != 0)
            return -1;
    } else if (h) {
        return cds_errf(err, "model spec: \"hidden\" is for arch mlp only");
    }
    if (strcmp(arch, "cnn") == 0 && (m->in_shape[1] % 4 || m->in_shape[2] % 4))
        return cds_errf(err, "model spec: cnn needs H and W divisible by 4 (got %dx%d)", m->in_shape[1], m->in_shape[2]);
    return 0;
}

/* -------------------------------------------------------------- planning */

static void plan_buffers(nn_model *m)
{
    size_t B = (size_t)m->max_batch;
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *n = &m->nodes[i];
        size_t elems = B * node_per_row(n);
        n->has_grad = i != 0 && !(n->kind == K_FLATTEN && !m->nodes[n->in].has_grad);
        if (n->kind == K_INPUT || n->kind == K_FLATTEN)
            continue; /* their memory is someone else's */
        n->y_off = nn_arena_reserve(m->act, elems * sizeof(float));
        n->dy_off = nn_arena_reserve(m->grad, elems * sizeof(float));
        if (n->kind == K_BN)
            n->aux_off = nn_arena_reserve(m->act, 2 * (size_t)n->c * sizeof(float));
        else if (n->kind == K_MAXPOOL)
            n->aux_off = nn_arena_reserve(m->act, elems * sizeof(int32_t));
        else if (n->kind == K_DROPOUT)
            n->aux_off = nn_arena_reserve(m->act, elems);
    }
    m->nodes[0].has_grad = 0;
}

static void resolve_buffers(nn_model *m)
{
    for (size_t i = 1; i < m->n_nodes; i++) {
        node *n = &m->nodes[i];
        n->y.dev = n->dy.dev = NN_CPU;
        if (n->kind == K_FLATTEN)
            continue;
        n->y.data = nn_arena_at(m->act, n->y_off);
        n->dy.data = nn_arena_at(m->grad, n->dy_off);
        if (n->kind == K_BN || n->kind == K_MAXPOOL || n->kind == K_DROPOUT)
            n->aux = nn_arena_at(m->act, n->aux_off);
    }
    m->work = m->work_floats ? nn_arena_at(m->act, 0) : NULL;
}

/* ---------------------------------------------------------- initialising */

static void init_params(nn_model *m, uint64_t seed)
{
    nn_rng rng;
    nn_rng_seed(&rng, seed);
    for (size_t i = 0; i < m->n_params; i++) {
        nn_param *p = &m->params[i];
        const param_plan *pl = &m->plans[i];
        float *w = p->w.data;
        double bound;
        switch (pl->init) {
        case INIT_TORCH: /* kaiming_uniform(a=√5): bound 1/√fan_in, as nn.Linear and nn.Conv2d */
        case INIT_TORCH_BIAS:
            bound = 1.0 / sqrt((double)pl->fan_in);
            for (size_t j = 0; j < p->w.n; j++)
                w[j] = (float)((2 * nn_rng_unit(&rng) - 1) * bound);
            break;
        case INIT_KAIMING_OUT: /* torchvision ResNet: normal, std √(2/fan_out) */
            bound = sqrt(2.0 / pl->fan_out);
            for (size_t j = 0; j < p->w.n; j++)
                w[j] = (float)(nn_rng_normal(&rng) * bound);
            break;
        case INIT_GLOROT: /* Keras glorot_uniform */
            bound = sqrt(6.0 / (pl->fan_in + pl->fan_out));
            for (size_t j = 0; j < p->w.n; j++)
                w[j] = (float)((2 * nn_rng_unit(&rng) - 1) * bound);
            break;
        case INIT_ZERO:
            memset(w, 0, p->w.n * sizeof *w);
            break;
        case INIT_ONE:
            for (size_t j = 0; j < p->w.n; j++)
                w[j] = 1.0f;
            break;
        }
    }
    for (size_t i = 0; i < m->n_bufs; i++) {
        int is_var = strstr(m->bufs[i].name, "running_var") != NULL;
        for (size_t j = 0; j < m->bufs[i].t.n; j++)
            m->bufs[i].t.data[j] = is_var ? 1.0f : 0.0f;
    }
}

/* The dense gradient of an embedding weight lives apart from the gradient
 * block: an optimiser takes that gradient row-sparse and frees it
 * (nn_model_set_row_grads), a quarter of a sparse model's memory with Adam.
 * calloc, so its pages cost nothing until a dense backward writes them. */
static int alloc_embedding_grad(nn_model *m, nn_param *p, cds_err *err)
{
    if (!p->g.data && !(p->g.data = calloc(p->g.n ? p->g.n : 1, sizeof(float))))
        return cds_err_nomem(err, "out of memory for the dense gradient of %s (%zu floats) of %s", p->name, p->g.n,
                             m->arch);
    return 0;
}

static int allocate(nn_model *m, cds_err *err)
{
    size_t g_total = 0;
    for (size_t i = 0; i < m->n_params; i++)
        g_total += m->params[i].embedding ? 0 : (m->params[i].w.n + 15) / 16 * 16;
    size_t pbytes = (m->p_total ? m->p_total : 16) * sizeof(float);
    size_t gbytes = (g_total ? g_total : 16) * sizeof(float);
    size_t bbytes = (m->b_total ? m->b_total : 16) * sizeof(float);
    m->pblock = aligned_alloc(64, pbytes);
    m->gblock = aligned_alloc(64, gbytes);
    m->bblock = aligned_alloc(64, bbytes);
    if (!m->pblock || !m->gblock || !m->bblock)
        return cds_err_nomem(err, "out of memory for %zu parameters of %s", nn_model_nparams(m), m->arch);
    if (m->sparse_dim && !(m->sp_work = malloc(nn_cpu_sparse_plan_work(m->max_batch, m->nnz))))
        return cds_err_nomem(err, "out of memory for the sparse input plan of a batch of %d", m->max_batch);
    memset(m->gblock, 0, gbytes);
    memset(m->pblock, 0, pbytes);
    for (size_t i = 0, goff = 0; i < m->n_params; i++) {
        nn_param *p = &m->params[i];
        p->w.dev = p->g.dev = NN_CPU;
        p->w.data = m->pblock + m->plans[i].off;
        if (p->embedding) {
            if (alloc_embedding_grad(m, p, err) != 0)
                return -1;
            continue;
        }
        p->g.data = m->gblock + goff;
        goff += (p->w.n + 15) / 16 * 16;
    }
    for (size_t i = 0; i < m->n_bufs; i++) {
        m->bufs[i].t.dev = NN_CPU;
        m->bufs[i].t.data = m->bblock + m->buf_off[i];
    }
    if (nn_arena_commit(m->act, err) != 0 || nn_arena_commit(m->grad, err) != 0)
        return -1;
    resolve_buffers(m);
    return 0;
}

/* Parses the spec and lays out the node list and parameter table (nothing
 * allocated for weights or activations yet). */
static nn_model *model_plan(const char *model_json, int max_batch, cds_err *err)
{
    if (max_batch < 1)
        return cds_errf(err, "batch size %d: must be at least 1", max_batch), NULL;
    json_error_t jerr;
    json_t *o = json_loads(model_json, 0, &jerr);
    if (!o)
        return cds_errf(err, "model spec: not JSON (%s at line %d)", jerr.text, jerr.line), NULL;
    nn_model *m = calloc(1, sizeof *m);
    if (!m) {
        json_decref(o);
        return cds_err_nomem(err, "out of memory"), NULL;
    }
    m->max_batch = max_batch;
    int hidden[16], n_hidden = 0;
    if (spec_parse(m, o, hidden, &n_hidden, err) != 0)
        goto fail;
    if (m->sparse_dim && (uint64_t)max_batch * (uint64_t)m->nnz >= (uint64_t)1 << 32) {
        /* the sparse plan numbers a batch's indices in 32 bits */
        cds_errf(err, "batch size %d × \"sparse\".nnz %d is %llu indices a batch: must be below 2^32; use a smaller "
                      "batch", max_batch, m->nnz, (unsigned long long)max_batch * (unsigned long long)m->nnz);
        goto fail;
    }
    m->spec = json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (!m->spec) {
        cds_err_nomem(err, "out of memory");
        goto fail;
    }
    if (m->in_ndim == 3)
        mb_node(m, K_INPUT, -1, 4, m->in_shape[0], m->in_shape[1], m->in_shape[2]);
    else
        mb_node(m, K_INPUT, -1, 2, m->in_shape[0], 1, 1);
    if (strcmp(m->arch, "mlp") == 0)
        build_mlp(m, hidden, n_hidden);
    else if (strcmp(m->arch, "cnn") == 0)
        build_cnn(m);
    else if (strncmp(m->arch, "resnet", 6) == 0) {
        static const int b18[4] = {2, 2, 2, 2}, b34[4] = {3, 4, 6, 3};
        build_resnet(m, strcmp(m->arch, "resnet18") == 0 ? b18 : b34, strcmp(m->arch, "resnet50") == 0);
    } else {
        static const int v11[] = {64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0};
        static const int v16[] = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
        if (strcmp(m->arch, "vgg11") == 0)
            build_vgg(m, v11, (int)(sizeof v11 / sizeof v11[0]));
        else
            build_vgg(m, v16, (int)(sizeof v16 / sizeof v16[0]));
    }
    if (m->failed) {
        *err = m->build_err;
        goto fail;
    }
    json_decref(o);
    return m;
fail:
    json_decref(o);
    nn_model_free(m);
    return NULL;
}

int nn_model_validate(const char *model_json, size_t *nparams, cds_err *err)
{
    nn_model *m = model_plan(model_json, 1, err);
    if (!m)
        return -1;
    if (nparams)
        *nparams = nn_model_nparams(m);
    nn_model_free(m);
    return 0;
}

nn_model *nn_model_new(const char *model_json, int max_batch, uint64_t seed, cds_err *err)
{
    nn_model *m = model_plan(model_json, max_batch, err);
    if (!m)
        return NULL;
    /* The convolution scratch goes first in the activation arena, so
     * resolve_buffers finds it at offset 0. */
    m->act = nn_arena_new(NN_CPU);
    m->grad = nn_arena_new(NN_CPU);
    if (!m->act || !m->grad) {
        cds_err_nomem(err, "out of memory");
        nn_model_free(m);
        return NULL;
    }
    if (m->work_floats)
        nn_arena_reserve(m->act, m->work_floats * sizeof(float));
    plan_buffers(m);
    if (allocate(m, err) != 0) {
        nn_model_free(m);
        return NULL;
    }
    init_params(m, seed);
    return m;
}

void nn_model_free(nn_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_names; i++)
        free(m->names[i]);
    free(m->names);
    free(m->nodes);
    for (size_t i = 0; m->params && i < m->n_params; i++)
        if (m->params[i].embedding)
            free(m->params[i].g.data);
    free(m->params);
    free(m->plans);
    free(m->bufs);
    free(m->buf_off);
    free(m->pblock);
    free(m->gblock);
    free(m->bblock);
    free(m->sp_work);
    nn_arena_free(m->act);
    nn_arena_free(m->grad);
    free(m->spec);
    free(m);
}

int nn_model_set_row_grads(nn_model *m, int on, cds_err *err)
{
    nn_param *p = NULL;
    for (size_t i = 0; i < m->n_params && !p; i++)
        p = m->params[i].embedding ? &m->params[i] : NULL;
    if (!p)
        return cds_errf(err, "row-sparse gradients need a sparse first layer, and this %s model has none", m->arch);
    if (!on && alloc_embedding_grad(m, p, err) != 0)
        return -1;
    if (on) {
        free(p->g.data);
        p->g.data = NULL;
    }
    p->row_grad = on;
    p->rows = (nn_row_grad){0};
    return 0;
}

/* ------------------------------------------------------------- accessors */

const char *nn_model_spec(const nn_model *m) { return m->spec; }
const char *nn_model_arch(const nn_model *m) { return m->arch; }
int nn_model_classes(const nn_model *m) { return m->classes; }
int nn_model_max_batch(const nn_model *m) { return m->max_batch; }
size_t nn_model_param_count(const nn_model *m) { return m->n_params; }
nn_param *nn_model_param(nn_model *m, size_t i) { return &m->params[i]; }
size_t nn_model_buffer_count(const nn_model *m) { return m->n_bufs; }
nn_buffer *nn_model_buffer(nn_model *m, size_t i) { return &m->bufs[i]; }
size_t nn_model_activation_bytes(const nn_model *m) { return nn_arena_bytes(m->act) + nn_arena_bytes(m->grad); }
const float *nn_model_logits(const nn_model *m) { return m->nodes[m->n_nodes - 1].y.data; }

int nn_model_input(const nn_model *m, int shape[3], int *sparse_dim)
{
    for (int i = 0; i < 3; i++)
        shape[i] = i < m->in_ndim ? m->in_shape[i] : 1;
    if (sparse_dim)
        *sparse_dim = m->sparse_dim;
    return m->in_ndim;
}

size_t nn_model_nparams(const nn_model *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->n_params; i++)
        n += m->params[i].w.n;
    return n;
}

double nn_model_l2(nn_model *m, double l2)
{
    if (l2 == 0)
        return 0;
    double s = 0;
    for (size_t i = 0; i < m->n_params; i++)
        if (m->params[i].decay)
            s += nn_cpu_sumsq(m->params[i].w.data, m->params[i].w.n);
    return l2 * s;
}

/* --------------------------------------------------------------- running */

/* Gives every node's tensors the batch size n. */
static void shape_for_batch(nn_model *m, int n, const float *x)
{
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *d = &m->nodes[i];
        int shape[4] = {n, d->c, d->h, d->w};
        nn_tensor_shape(&d->y, d->ndim, shape);
        nn_tensor_shape(&d->dy, d->ndim, shape);
        if (d->kind == K_INPUT) {
            d->y.data = (float *)x; /* read only: no op writes the input */
            d->dy.data = NULL;
        } else if (d->kind == K_FLATTEN) {
            d->y.data = m->nodes[d->in].y.data;
            d->dy.data = m->nodes[d->in].dy.data;
        }
        d->cg.N = n;
        d->pg.N = n;
    }
}

static nn_tensor *pw(nn_model *m, const node *d) { return d->pw >= 0 ? &m->params[d->pw].w : NULL; }
static nn_tensor *pb(nn_model *m, const node *d) { return d->pb >= 0 ? &m->params[d->pb].w : NULL; }
static nn_tensor *gw(nn_model *m, const node *d) { return d->pw >= 0 ? &m->params[d->pw].g : NULL; }
static nn_tensor *gb(nn_model *m, const node *d) { return d->pb >= 0 ? &m->params[d->pb].g : NULL; }

static int forward_node(nn_model *m, node *d, int train, uint64_t dropout_seed, size_t index, cds_err *err)
{
    node *a = d->in >= 0 ? &m->nodes[d->in] : NULL;
    switch (d->kind) {
    case K_INPUT:
    case K_FLATTEN:
        return 0;
    case K_LINEAR:
        return nn_op_linear_fwd(&a->y, pw(m, d), pb(m, d), &d->y, err);
    case K_SPARSE:
        if (nn_op_sparse_plan(m->idx_cur, m->n_cur, m->nnz, m->sparse_dim, m->sp_work, &m->sp, err) != 0)
            return -1;
        return nn_op_sparse_linear_fwd(&m->sp, m->n_cur, pw(m, d), pb(m, d), &d->y, err);
    case K_CONV:
        return nn_op_conv2d_fwd(&d->cg, &a->y, pw(m, d), pb(m, d), &d->y, m->work, err);
    case K_BN:
        return nn_op_bn_fwd(&a->y, pw(m, d), pb(m, d), &m->bufs[d->bmean].t, &m->bufs[d->bvar].t, &d->y, d->aux,
                            train, m->bn_momentum, m->bn_eps, err);
    case K_RELU:
        return nn_op_relu_fwd(&a->y, &d->y, err);
    case K_MAXPOOL:
        return nn_op_maxpool_fwd(&d->pg, &a->y, &d->y, d->aux, err);
    case K_AVGPOOL:
        return nn_op_avgpool_fwd(&d->pg, &a->y, &d->y, err);
    case K_GAP:
        return nn_op_gap_fwd(&a->y, &d->y, err);
    case K_DROPOUT:
        return nn_op_dropout_fwd(&a->y, &d->y, d->aux, train ? d->p : 0.0f, nn_rng_mix(dropout_seed, index, 0x64726f70),
                                 err);
    case K_ADD:
        return nn_op_add_fwd(&a->y, &m->nodes[d->in2].y, &d->y, err);
    }
    return 0;
}

static int check_inputs(const nn_model *m, const int32_t *idx, const int32_t *labels, int n, cds_err *err)
{
    if (labels)
        for (int i = 0; i < n; i++)
            if (labels[i] < 0 || labels[i] >= m->classes)
                return cds_errf(err, "label %d of row %d is outside [0, %d): the data has more classes than the "
                                     "model's \"classes\"", labels[i], i, m->classes);
    if (m->sparse_dim)
        for (size_t i = 0; i < (size_t)n * (size_t)m->nnz; i++)
            if (idx[i] < 0 || idx[i] >= m->sparse_dim)
                return cds_errf(err, "sparse index %d of row %zu is outside [0, %d): the data does not fit the "
                                     "model's \"sparse\".dim", idx[i], i / (size_t)m->nnz, m->sparse_dim);
    return 0;
}

static int model_forward(nn_model *m, const float *x, const int32_t *idx, const int32_t *labels, int n, int train,
                         uint64_t dropout_seed, double l2, nn_metrics *out, cds_err *err)
{
    if (n < 1 || n > m->max_batch)
        return cds_errf(err, "batch of %d rows: the model was built for 1 to %d", n, m->max_batch);
    if ((m->sparse_dim && !idx) || (!m->sparse_dim && !x))
        return cds_errf(err, "%s input missing for a %s model", m->sparse_dim ? "sparse" : "dense",
                        m->sparse_dim ? "sparse" : "dense");
    if (check_inputs(m, idx, labels, n, err) != 0)
        return -1;
    m->trained = 0;
    m->n_cur = n;
    m->idx_cur = idx;
    shape_for_batch(m, n, x);
    for (size_t i = 0; i < m->n_nodes; i++)
        if (forward_node(m, &m->nodes[i], train, dropout_seed, i, err) != 0)
            return -1;
    memset(out, 0, sizeof *out);
    out->n = n;
    if (!labels)
        return 0;
    node *last = &m->nodes[m->n_nodes - 1];
    if (nn_op_softmax_xent(&last->y, labels, train ? &last->dy : NULL, &out->xent, &out->top1, &out->top5, err) != 0)
        return -1;
    out->loss = out->xent + nn_model_l2(m, l2);
    m->trained = train;
    return 0;
}

int nn_model_forward(nn_model *m, const float *x, const int32_t *idx, const int32_t *labels, int n, int train,
                     uint64_t dropout_seed, double l2, nn_metrics *out, cds_err *err)
{
    nn_par_fp fp;
    nn_par_fp_enter(&fp);
    int rc = model_forward(m, x, idx, labels, n, train, dropout_seed, l2, out, err);
    nn_par_fp_leave(&fp);
    return rc;
}

static int backward_node(nn_model *m, node *d, cds_err *err)
{
    node *a = d->in >= 0 ? &m->nodes[d->in] : NULL;
    nn_tensor *dx = a && a->has_grad ? &a->dy : NULL;
    switch (d->kind) {
    case K_INPUT:
    case K_FLATTEN:
        return 0;
    case K_LINEAR:
        return nn_op_linear_bwd(&a->y, pw(m, d), &d->dy, dx, gw(m, d), gb(m, d), err);
    case K_SPARSE:
        if (m->params[d->pw].row_grad) {
            nn_param *p = &m->params[d->pw];
            p->rows = (nn_row_grad){.rows = m->sp.rows, .n_rows = m->sp.n_rows, .plan = &m->sp, .dy = d->dy.data};
            return nn_op_sparse_linear_bwd_rows(&m->sp, m->n_cur, &d->dy, NULL, gb(m, d), err);
        }
        return nn_op_sparse_linear_bwd(m->idx_cur, m->n_cur, m->nnz, &d->dy, gw(m, d), gb(m, d), err);
    case K_CONV:
        return nn_op_conv2d_bwd(&d->cg, &a->y, pw(m, d), &d->dy, dx, gw(m, d), gb(m, d), m->work, err);
    case K_BN:
        return nn_op_bn_bwd(&a->y, pw(m, d), d->aux, &d->dy, dx, gw(m, d), gb(m, d), err);
    case K_RELU:
        return dx ? nn_op_relu_bwd(&d->y, &d->dy, dx, err) : 0;
    case K_MAXPOOL:
        return dx ? nn_op_maxpool_bwd(&d->pg, d->aux, &d->dy, dx, err) : 0;
    case K_AVGPOOL:
        return dx ? nn_op_avgpool_bwd(&d->pg, &d->dy, dx, err) : 0;
    case K_GAP:
        return dx ? nn_op_gap_bwd(&d->dy, dx, err) : 0;
    case K_DROPOUT:
        return dx ? nn_op_dropout_bwd(d->aux, &d->dy, dx, d->p, err) : 0;
    case K_ADD: {
        node *b = &m->nodes[d->in2];
        if (dx && nn_op_acc(&d->dy, dx, err) != 0)
            return -1;
        return b->has_grad ? nn_op_acc(&d->dy, &b->dy, err) : 0;
    }
    }
    return 0;
}

/* Clears a node's gradient just before its first consumer (in backward
 * order) accumulates into it: while that consumer's output is still in cache,
 * instead of one memset of the whole gradient arena per step. */
static int zero_grad_once(nn_model *m, int id, cds_err *err)
{
    node *a = id >= 0 ? &m->nodes[id] : NULL;
    if (!a || !a->has_grad || a->zeroed)
        return 0;
    a->zeroed = 1;
    if (a->kind == K_FLATTEN) /* its gradient is its input's memory */
        m->nodes[a->in].zeroed = 1;
    return nn_op_zero(&a->dy, err);
}

static int model_backward(nn_model *m, cds_err *err)
{
    if (!m->trained)
        return cds_errf(err, "backward pass without a training forward pass with labels before it");
    for (size_t i = 0; i < m->n_nodes; i++)
        m->nodes[i].zeroed = 0;
    m->nodes[m->n_nodes - 1].zeroed = 1; /* written by the loss */
    for (size_t i = m->n_nodes; i-- > 1;) {
        node *d = &m->nodes[i];
        /* A parameter belongs to one node: clear its gradient right before
         * that node accumulates into it, while it is about to be in cache. */
        int dense_w = d->pw >= 0 && !m->params[d->pw].row_grad; /* row-sparse: overwritten, never cleared */
        if ((dense_w && nn_op_zero(gw(m, d), err) != 0) || (d->pb >= 0 && nn_op_zero(gb(m, d), err) != 0))
            return -1;
        if (zero_grad_once(m, d->in, err) != 0 || zero_grad_once(m, d->in2, err) != 0 ||
            backward_node(m, d, err) != 0)
            return -1;
    }
    return 0;
}

int nn_model_backward(nn_model *m, cds_err *err)
{
    nn_par_fp fp;
    nn_par_fp_enter(&fp);
    int rc = model_backward(m, err);
    nn_par_fp_leave(&fp);
    return rc;
}
