/* nn_model_build: a model spec (docs/models.md) read into a node list and
 * a parameter table, nothing allocated yet (see nn_model_int.h).
 *
 * The builders (mb_conv, mb_bn, ...) append nodes and record each
 * parameter's shape, initialiser and offset in one parameter block, and each
 * convolution's scratch size as its backend reports it; the architectures
 * (mlp, cnn, resnet, vgg) are written with them.  Invariants:
 *   - nodes[0] is the input; node i reads only nodes before i;
 *   - parameter names and order are PyTorch's named_parameters() for the
 *     same module, which golden tests and checkpoints depend on;
 *   - a builder called after a failure does nothing and returns -1, so an
 *     architecture is written without a check per line; the first failure's
 *     message is kept (m->build_err). */
#include "nn_model_int.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_json.h"
#include "nn_ops.h"

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

size_t nn_model_node_per_row(const node *n)
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
    size_t wb = nn_op_conv2d_work(&m->ctx, &g);
    if (wb > m->work_bytes)
        m->work_bytes = wb;
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
    return mb_node(m, K_FLATTEN, in, 2, (int)nn_model_node_per_row(x), 1, 1);
}

static int mb_linear(nn_model *m, const char *name, int in, int out, enum init_kind init)
{
    if (m->failed)
        return -1;
    in = mb_flatten(m, in);
    if (in < 0)
        return -1;
    int fan_in = (int)nn_model_node_per_row(&m->nodes[in]);
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

static int spec_parse(nn_model *m, json_t *o, int *hidden, int *n_hidden, cds_err *err)
{
    if (!json_is_object(o))
        return cds_errf(err, "model spec: must be a JSON object (see docs/models.md)");
    if (cds_json_check_fields(o, "model spec $", known_fields, "see docs/models.md", err) != 0)
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

/* ---------------------------------------------------------------- the plan */

nn_model *nn_model_plan(const char *model_json, int max_batch, nn_place where, cds_err *err)
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
    if (nn_ctx_init_at(&m->ctx, where, err) != 0)
        goto fail;
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

