/* test_nn_model: models built from specs: parameter counts of the full-size
 * networks, output shapes, determinism of initialisation, the sparse input
 * against the dense one, the errors a bad spec or bad batch gets, and the
 * "lazy" train option (its errors, the row-sparse gradient, the rows it
 * leaves alone). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <omp.h>

#include "nn_data.h"
#include "nn_model.h"
#include "nn_ops.h"
#include "nn_optim.h"
#include "nn_par.h"
#include "nn_rng.h"
#include "tap.h"

/* A host copy of a model's tensor: its memory is the device's, read only
 * through the backend's copies (the guard build faults on anything else). */
static float *hc(nn_model *m, const nn_tensor *t)
{
    float *h = malloc((t->n ? t->n : 1) * sizeof *h);
    if (!h)
        abort();
    nn_model_read(m, t, h);
    return h;
}

static nn_model *build(const char *spec, int batch, uint64_t seed, cds_err *err)
{
    return nn_model_new(spec, batch, seed, err);
}

/* Parameter counts: torchvision's for the ResNets, Keras's for VGG16 at
 * 112×112×3 (a 3×3×512 map before flatten). */
static void test_param_counts(void)
{
    static const struct {
        const char *spec;
        size_t params;
    } want[] = {
        {"{\"arch\":\"resnet18\",\"input\":[3,112,112],\"classes\":1000}", 11689512},
        {"{\"arch\":\"resnet34\",\"input\":[3,112,112],\"classes\":1000}", 21797672},
        {"{\"arch\":\"resnet50\",\"input\":[3,112,112],\"classes\":1000}", 25557032},
        {"{\"arch\":\"vgg11\",\"input\":[3,112,112],\"classes\":1000}", 48977256},
        {"{\"arch\":\"vgg16\",\"input\":[3,112,112],\"classes\":1000}", 54471464},
        {"{\"arch\":\"cnn\",\"input\":[1,28,28],\"classes\":10}", 421642},
        {"{\"arch\":\"mlp\",\"sparse\":{\"dim\":7306,\"nnz\":39},\"hidden\":[1000,500],\"classes\":2}", 7808502},
        {"{\"arch\":\"mlp\",\"input\":[7306],\"hidden\":[1000,500],\"classes\":2}", 7808502},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        cds_err err;
        nn_model *m = build(want[i].spec, 1, 1, &err);
        if (!m) {
            ok(0, "%s builds: %s", want[i].spec, err.msg);
            continue;
        }
        is_int((long long)nn_model_nparams(m), (long long)want[i].params, "%s: %zu parameters", nn_model_arch(m),
               want[i].params);
        size_t planned = 0;
        ok(nn_model_validate(want[i].spec, &planned, &err) == 0 && planned == want[i].params,
           "%s: nn_model_validate counts the same without allocating", nn_model_arch(m));
        nn_model_free(m);
    }
}

/* A forward pass at full size gives finite logits of shape [N, classes]. */
static void test_full_size_forward(void)
{
    static const char *const specs[] = {
        "{\"arch\":\"resnet50\",\"input\":[3,112,112],\"classes\":1000}",
        "{\"arch\":\"vgg16\",\"input\":[3,112,112],\"classes\":1000}",
    };
    for (size_t s = 0; s < 2; s++) {
        cds_err err;
        nn_model *m = build(specs[s], 2, 7, &err);
        if (!m) {
            ok(0, "builds: %s", err.msg);
            continue;
        }
        size_t in = 2 * 3 * 112 * 112;
        float *x = malloc(in * sizeof *x);
        nn_rng r;
        nn_rng_seed(&r, 3);
        for (size_t i = 0; i < in; i++)
            x[i] = (float)nn_rng_normal(&r);
        int32_t y[2] = {5, 999};
        nn_metrics mt;
        int rc = nn_model_forward(m, x, NULL, y, 2, 1, 0, 0, &mt, &err);
        int finite = rc == 0;
        float *lg = malloc(2 * 1000 * sizeof *lg);
        nn_model_logits(m, lg);
        for (int i = 0; finite && i < 2 * 1000; i++)
            finite = isfinite(lg[i]);
        free(lg);
        ok(finite && isfinite(mt.loss) && mt.n == 2, "%s at 3x112x112: forward gives 2x1000 finite logits, loss %.3f",
           nn_model_arch(m), mt.loss);
        ok(nn_model_backward(m, &err) == 0, "%s: backward at full size", nn_model_arch(m));
        free(x);
        nn_model_free(m);
    }
}

static int same_weights(nn_model *a, nn_model *b)
{
    if (nn_model_param_count(a) != nn_model_param_count(b))
        return 0;
    for (size_t i = 0; i < nn_model_param_count(a); i++) {
        nn_param *p = nn_model_param(a, i), *q = nn_model_param(b, i);
        if (p->w.n != q->w.n)
            return 0;
        float *pw = hc(a, &p->w), *qw = hc(b, &q->w);
        int same = memcmp(pw, qw, p->w.n * sizeof(float)) == 0;
        free(pw);
        free(qw);
        if (!same)
            return 0;
    }
    return 1;
}

static void test_seeded_init(void)
{
    const char *spec = "{\"arch\":\"resnet18\",\"input\":[3,32,32],\"classes\":10,\"width\":0.25}";
    cds_err err;
    nn_model *a = build(spec, 2, 42, &err), *b = build(spec, 4, 42, &err), *c = build(spec, 2, 43, &err);
    ok(a && b && c, "three resnet18 models build");
    if (!a || !b || !c)
        return;
    ok(same_weights(a, b), "the same seed gives bit-identical weights (whatever the batch size)");
    ok(!same_weights(a, c), "another seed gives other weights");
    /* torchvision's initialisation: conv weights normal with std √(2/fan_out). */
    nn_param *conv1 = nn_model_param(a, 0);
    double ss = 0;
    float *w = hc(a, &conv1->w);
    for (size_t i = 0; i < conv1->w.n; i++)
        ss += (double)w[i] * w[i];
    free(w);
    double sd = sqrt(ss / (double)conv1->w.n), want = sqrt(2.0 / (16 * 49));
    ok(strcmp(conv1->name, "conv1.weight") == 0 && fabs(sd - want) < 0.1 * want,
       "conv1.weight has std %.4f, kaiming fan-out %.4f (within 10%%: %zu samples)", sd, want, conv1->w.n);
    nn_model_free(a);
    nn_model_free(b);
    nn_model_free(c);
}

/* The sparse mlp computes what the dense one computes on the multi-hot
 * vector, with fc0.weight transposed; gradients agree too. */
static void test_sparse_equals_dense(void)
{
    enum { D = 40, K = 5, N = 6, H = 8 };
    cds_err err;
    nn_model *s = build("{\"arch\":\"mlp\",\"sparse\":{\"dim\":40,\"nnz\":5},\"hidden\":[8],\"classes\":3}", N, 5, &err);
    nn_model *d = build("{\"arch\":\"mlp\",\"input\":[40],\"hidden\":[8],\"classes\":3}", N, 6, &err);
    ok(s && d, "sparse and dense mlps build");
    if (!s || !d)
        return;
    nn_param *sw = nn_model_param(s, 0), *dw = nn_model_param(d, 0);
    float *swh = hc(s, &sw->w), *dwh = hc(d, &dw->w);
    for (int i = 0; i < D; i++)
        for (int o = 0; o < H; o++)
            dwh[o * D + i] = swh[i * H + o];
    nn_model_write(d, &dw->w, dwh);
    free(swh);
    free(dwh);
    for (size_t p = 1; p < nn_model_param_count(s); p++) {
        float *h = hc(s, &nn_model_param(s, p)->w);
        nn_model_write(d, &nn_model_param(d, p)->w, h);
        free(h);
    }
    int32_t idx[N * K], y[N];
    float x[N * D] = {0};
    nn_rng r;
    nn_rng_seed(&r, 9);
    for (int n = 0; n < N; n++) {
        y[n] = (int32_t)(nn_rng_next(&r) % 3);
        for (int k = 0; k < K; k++) {
            idx[n * K + k] = n == 0 && k == 1 ? idx[0] : (int32_t)(nn_rng_next(&r) % D); /* row 0 repeats an index */
            x[n * D + idx[n * K + k]] += 1.0f;
        }
    }
    nn_metrics ms, md;
    ok(nn_model_forward(s, NULL, idx, y, N, 1, 0, 0.01, &ms, &err) == 0 &&
           nn_model_forward(d, x, NULL, y, N, 1, 0, 0.01, &md, &err) == 0,
       "both forward");
    double e = 0;
    float ls[N * 3], ld[N * 3];
    nn_model_logits(s, ls);
    nn_model_logits(d, ld);
    for (int i = 0; i < N * 3; i++)
        e = fmax(e, fabs(ls[i] - ld[i]));
    ok(e < 1e-5 && fabs(ms.loss - md.loss) < 1e-6, "same logits (max diff %.1e, tolerance 1e-5: float sums in another "
                                                   "order) and loss (incl. L2)", e);
    nn_model_backward(s, &err);
    nn_model_backward(d, &err);
    double eg = 0;
    float *sg = hc(s, &sw->g), *dg = hc(d, &dw->g);
    for (int i = 0; i < D; i++)
        for (int o = 0; o < H; o++)
            eg = fmax(eg, fabs(sg[i * H + o] - dg[o * D + i]));
    free(sg);
    free(dg);
    ok(eg < 1e-6, "same fc0 weight gradient, transposed (max diff %.1e, tolerance 1e-6)", eg);
    nn_model_free(s);
    nn_model_free(d);
}

static void expect_error(const char *spec, const char *needle, const char *what)
{
    cds_err err = {0}, verr = {0};
    nn_model *m = build(spec, 4, 1, &err);
    ok(!m && strstr(err.msg, needle) != NULL, "%s is refused: %s", what, err.msg);
    ok(nn_model_validate(spec, NULL, &verr) != 0 && strcmp(verr.msg, err.msg) == 0,
       "...and nn_model_validate refuses it with the same message");
    nn_model_free(m);
}

static void test_bad_specs(void)
{
    expect_error("{\"arch\":\"alexnet\",\"input\":[3,32,32],\"classes\":10}", "\"arch\" must be one of",
                 "an unknown arch");
    expect_error("{\"arch\":\"cnn\",\"input\":[1,28,28]}", "\"classes\"", "a missing class count");
    expect_error("{\"arch\":\"cnn\",\"input\":[1,28,28],\"classes\":10,\"widht\":2}",
                 "model spec $.widht: unknown field; the fields are: arch, input", "a misspelt field");
    expect_error("{\"arch\":\"cnn\",\"sparse\":{\"dim\":10,\"nnz\":2},\"classes\":10}", "for arch mlp only",
                 "sparse input on a cnn");
    expect_error("{\"arch\":\"vgg16\",\"input\":[3,16,16],\"classes\":10}", "too small", "an input too small for vgg16");
    expect_error("{\"arch\":\"resnet18\",\"input\":[32,32],\"classes\":10}", "[C, H, W]", "a 2-D image input");
    expect_error("{\"arch\":\"cnn\",\"input\":[1,30,30],\"classes\":10}", "divisible by 4", "a cnn input of 30x30");
    expect_error("[1,2]", "JSON object", "a spec that is not an object");
    expect_error("{\"arch\":", "not JSON", "a spec that is not JSON");
}

static void test_bad_batches(void)
{
    cds_err err;
    nn_model *m = build("{\"arch\":\"mlp\",\"sparse\":{\"dim\":10,\"nnz\":2},\"hidden\":[4],\"classes\":3}", 2, 1, &err);
    int32_t idx[4] = {0, 1, 2, 10}, y[2] = {0, 1}, ybad[2] = {0, 3};
    nn_metrics mt;
    ok(nn_model_forward(m, NULL, idx, y, 2, 1, 0, 0, &mt, &err) != 0 && strstr(err.msg, "sparse index 10 of row 1"),
       "an index outside [0, dim) is refused: %s", err.msg);
    idx[3] = 9;
    ok(nn_model_forward(m, NULL, idx, ybad, 2, 1, 0, 0, &mt, &err) != 0 && strstr(err.msg, "label 3 of row 1"),
       "a label outside [0, classes) is refused: %s", err.msg);
    ok(nn_model_forward(m, NULL, idx, y, 3, 1, 0, 0, &mt, &err) != 0 && strstr(err.msg, "1 to 2"),
       "a batch larger than the model was built for is refused: %s", err.msg);
    nn_model *big = nn_model_new("{\"arch\":\"mlp\",\"sparse\":{\"dim\":10,\"nnz\":65536},\"hidden\":[4],"
                                 "\"classes\":3}",
                                 65536, 1, &err);
    ok(!big && strstr(err.msg, "below 2^32"), "a batch whose indices would not number in 32 bits is refused: %s",
       err.msg);
    ok(nn_model_backward(m, &err) != 0, "backward without a training forward is refused: %s", err.msg);
    ok(nn_model_forward(m, NULL, idx, y, 2, 1, 0, 0, &mt, &err) == 0 && nn_model_backward(m, &err) == 0,
       "a good batch then works");
    nn_model_free(m);
}

/* Every example spec users copy from jobs/models/ builds and parses. */
static void test_example_specs(void)
{
    static const char *const names[] = {"fashion-cnn", "criteo-confA", "cifar-resnet18", "imagenet-resnet50",
                                        "imagenet-vgg16"};
    const char *root = getenv("CDS_SOURCE_ROOT");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/jobs/models/%s.json", root ? root : ".", names[i]);
        json_error_t jerr;
        json_t *o = json_load_file(path, 0, &jerr);
        char *model = o ? json_dumps(json_object_get(o, "model"), 0) : NULL;
        char *train = o ? json_dumps(json_object_get(o, "train"), 0) : NULL;
        cds_err err = {0};
        nn_model *m = model ? nn_model_new(model, 1, 1, &err) : NULL;
        nn_train_cfg cfg;
        int cfg_ok = train && nn_train_cfg_parse(train, &cfg, &err) == 0;
        ok(m && cfg_ok, "jobs/models/%s.json: the model builds and the train spec parses%s%s", names[i],
           err.msg[0] ? ": " : "", err.msg);
        if (cfg_ok)
            nn_train_cfg_free(&cfg);
        nn_model_free(m);
        free(model);
        free(train);
        json_decref(o);
    }
}

static void expect_train_error(const char *train, const char *needle, const char *what)
{
    nn_train_cfg c;
    cds_err err = {0};
    int rc = nn_train_cfg_parse(train, &c, &err);
    ok(rc != 0 && strstr(err.msg, needle) != NULL, "%s is refused: %s", what, err.msg);
    if (rc == 0)
        nn_train_cfg_free(&c);
}

static void test_train_specs(void)
{
    expect_train_error("{\"optimizer\":\"adam\"}", "\"lr\"", "a train spec without lr");
    expect_train_error("{\"optimizer\":\"adam\",\"lr\":0.1,\"learning_rate\":0.1}",
                       "train spec $.learning_rate: unknown field; the fields are: optimizer, lr",
                       "a misspelt train field");
    expect_train_error("{\"optimizer\":\"sgd\",\"lr\":0.1,\"schedule\":{\"kind\":\"cosine\"}}", "needs \"epochs\"",
                       "a cosine schedule without a period");
    expect_train_error("{\"optimizer\":\"sgd\",\"lr\":0.1,\"normalize\":{\"mean\":[0,0],\"std\":[1]}}", "2 means and 1 stds",
                       "mismatched normalisation");
    expect_train_error("{\"optimizer\":\"sgd\",\"lr\":-1}", "\"lr\" must be", "a negative learning rate");
    nn_train_cfg c;
    cds_err err;
    int rc = nn_train_cfg_parse("{\"optimizer\":\"sgd\",\"lr\":0.1,\"schedule\":{\"kind\":\"step\",\"every\":2,"
                                "\"gamma\":0.5}}", &c, &err);
    ok(rc == 0 && nn_train_cfg_lr(&c, 0) == 0.1 && nn_train_cfg_lr(&c, 1) == 0.1 && nn_train_cfg_lr(&c, 2) == 0.05 &&
           nn_train_cfg_lr(&c, 5) == 0.1 * 0.25,
       "step schedule: lr·γ^⌊epoch/every⌋ (0.1, 0.1, 0.05, ..., 0.025 at epoch 5)");
    if (rc == 0)
        nn_train_cfg_free(&c);
    rc = nn_train_cfg_parse("{\"optimizer\":\"adam\",\"lr\":0.1,\"schedule\":{\"kind\":\"cosine\",\"epochs\":4,"
                            "\"min_lr\":0.01}}", &c, &err);
    ok(rc == 0 && fabs(nn_train_cfg_lr(&c, 0) - 0.1) < 1e-12 && fabs(nn_train_cfg_lr(&c, 2) - 0.055) < 1e-12 &&
           fabs(nn_train_cfg_lr(&c, 4) - 0.01) < 1e-12 && fabs(nn_train_cfg_lr(&c, 9) - 0.01) < 1e-12,
       "cosine schedule: 0.1 at epoch 0, midway 0.055 at 2, min_lr 0.01 from epoch 4 on");
    if (rc == 0)
        nn_train_cfg_free(&c);
}

/* "lazy": refused where it means nothing, with a line that says the fix. */
static void test_lazy_specs(void)
{
    expect_train_error("{\"optimizer\":\"sgd\",\"lr\":0.1,\"lazy\":true}", "\"lazy\" is a variant of Adam",
                       "lazy with sgd");
    expect_train_error("{\"optimizer\":\"adam\",\"lr\":0.1,\"lazy\":1}", "\"lazy\" must be true or false",
                       "a lazy that is not a boolean");
    expect_train_error("{\"optimizer\":\"adam\",\"lr\":0.1,\"lazy\":\"yes\"}", "must be true or false",
                       "a lazy that is a string");
    expect_train_error("{\"optimizer\":\"adam\",\"lr\":0.1,\"cuda_graphs\":1}", "\"cuda_graphs\" must be true or false",
                       "a cuda_graphs that is not a boolean");
    expect_train_error("{\"optimizer\":\"adam\",\"lr\":0.1,\"tf32\":\"on\"}", "\"tf32\" must be true or false",
                       "a tf32 that is not a boolean");
    const char *dense = "{\"arch\":\"mlp\",\"input\":[10],\"hidden\":[4],\"classes\":3}";
    const char *sparse = "{\"arch\":\"mlp\",\"sparse\":{\"dim\":10,\"nnz\":2},\"hidden\":[4],\"classes\":3}";
    nn_train_cfg c, plain;
    cds_err err = {0}, cerr = {0};
    int rc = nn_train_cfg_parse("{\"optimizer\":\"adam\",\"lr\":0.1,\"lazy\":true}", &c, &err);
    ok(rc == 0 && c.lazy && c.adam && strstr(c.json, "\"lazy\":true"), "lazy with adam parses, and stays in the canonical "
                                                                      "JSON (so checkpoints keep it)");
    int rp = nn_train_cfg_parse("{\"optimizer\":\"adam\",\"lr\":0.1}", &plain, &err);
    ok(rp == 0 && !plain.lazy, "lazy defaults to false");
    if (rc != 0 || rp != 0)
        return;
    nn_model *m = build(dense, 2, 1, &err);
    nn_optim *o = m ? nn_optim_new(m, &c, &err) : NULL;
    ok(m && !o && strstr(err.msg, "has none") && strstr(err.msg, "drop \"lazy\"") && !strchr(err.msg, '\n'),
       "lazy on a model without a sparse layer is refused by nn_optim_new: %s", err.msg);
    ok(nn_train_cfg_check_model(&c, dense, &cerr) != 0 && strcmp(cerr.msg, err.msg) == 0 &&
           nn_train_cfg_check_model(&c, sparse, &cerr) == 0 && nn_train_cfg_check_model(&plain, dense, &cerr) == 0,
       "nn_train_cfg_check_model refuses the same pair with the same line, and accepts lazy+sparse and plain+dense");
    nn_model_free(m);
    nn_train_cfg_free(&c);
    nn_train_cfg_free(&plain);
}

/* Lazy Adam through the model and the optimiser (l2 = 0.01, which lazy
 * applies to touched rows only): the backward lists the batch's distinct
 * rows with the dense gradient's rows, a row twice in a sample gets twice
 * the gradient, and rows absent from a batch keep their weights, m and v
 * bit for bit, also rows a previous batch moved. */
static void test_lazy_rows(void)
{
    enum { D = 30, K = 4, N = 4, H = 8 };
    const char *spec = "{\"arch\":\"mlp\",\"sparse\":{\"dim\":30,\"nnz\":4},\"hidden\":[8],\"classes\":3}";
    cds_err err;
    nn_train_cfg cfg;
    nn_model *lz = build(spec, N, 3, &err), *dn = build(spec, N, 3, &err);
    int rc = nn_train_cfg_parse("{\"optimizer\":\"adam\",\"lr\":0.01,\"l2\":0.01,\"lazy\":true}", &cfg, &err);
    nn_optim *o = lz && rc == 0 ? nn_optim_new(lz, &cfg, &err) : NULL;
    ok(lz && dn && o, "a sparse mlp with a lazy Adam");
    if (!o) {
        nn_model_free(lz), nn_model_free(dn);
        return;
    }
    /* step 1 touches rows 0..14 only; sample 0 holds 3 twice and 5 once, and no other sample holds either */
    int32_t b1[N * K] = {3, 5, 3, 0, 1, 2, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14}, y[N] = {0, 1, 2, 1};
    /* step 2 touches rows 0..6 only */
    int32_t b2[N * K] = {0, 1, 2, 3, 4, 5, 6, 0, 1, 1, 2, 2, 3, 4, 5, 6};
    nn_metrics mt;
    nn_param *p = nn_model_param(lz, 0), *q = nn_model_param(dn, 0);
    size_t nw = p->w.n;
    float *w0 = malloc(nw * sizeof *w0), *w1 = malloc(nw * sizeof *w1), *m1 = malloc(nw * sizeof *m1);
    float *v1 = malloc(nw * sizeof *v1);
    nn_model_read(lz, &p->w, w0);
    int fw = nn_model_forward(lz, NULL, b1, y, N, 1, 0, 0.01, &mt, &err) == 0 && nn_model_backward(lz, &err) == 0 &&
             nn_model_forward(dn, NULL, b1, y, N, 1, 0, 0.01, &mt, &err) == 0 && nn_model_backward(dn, &err) == 0;
    /* the plan is device data: its descriptor and row list come back by copies */
    const nn_ctx *cx = nn_model_ctx(lz);
    nn_sparse_plan pl = {0};
    if (fw && p->rows.plan)
        nn_ctx_to_host(cx, &pl, p->rows.plan, sizeof pl);
    int listed = fw && p->row_grad && pl.n_rows == 15, same = listed;
    int32_t rows[15];
    if (listed)
        nn_ctx_to_host(cx, rows, pl.rows, sizeof rows);
    for (size_t r = 0; listed && r < 15; r++)
        listed &= rows[r] == (int32_t)r;
    float packed[15 * H];
    if (listed) { /* the rows are left as sums: pack them as the optimiser step takes them */
        nn_buf plan = {.dev = p->w.dev, .data = (void *)p->rows.plan};
        nn_tensor dy = {.dev = p->w.dev, .data = (float *)p->rows.dy}, pk = {.dev = p->w.dev, .data = packed};
        nn_tensor_shape(&dy, 2, (int[]){N, H});
        nn_tensor_shape(&pk, 2, (int[]){15, H});
        listed = nn_op_sparse_linear_bwd_rows(cx, &plan, N, &dy, &pk, NULL, &err) == 0;
    }
    float *qg = hc(dn, &q->g);
    for (size_t r = 0; same && r < D; r++)
        for (int h = 0; h < H; h++) /* bitwise: the same adds in the same order */
            same &= r < 15 ? packed[r * H + h] == qg[r * H + h] : qg[r * H + h] == 0.0f;
    free(qg);
    ok(listed, "the backward lists the 15 distinct rows of the batch, ascending (%zu listed)", pl.n_rows);
    ok(same, "the packed gradient rows equal the dense gradient's rows exactly, and the dense one is 0 elsewhere");
    int twice = fw, nonzero = 0;
    for (int h = 0; h < H; h++) { /* dy0 + dy0 = 2·dy0 exactly in float */
        twice &= packed[3 * H + h] == 2.0f * packed[5 * H + h];
        nonzero |= packed[5 * H + h] != 0.0f;
    }
    ok(twice && nonzero, "row 3, twice in sample 0, gets exactly twice the gradient of row 5, once in it");
    nn_tensor *m = nn_optim_state(o, 0, NULL), *v = nn_optim_state(o, 1, NULL);
    int st1 = nn_optim_step(o, 0.01, &err) == 0;
    nn_model_read(lz, &p->w, w1);
    nn_model_read(lz, m, m1);
    nn_model_read(lz, v, v1);
    int st2 = nn_model_forward(lz, NULL, b2, y, N, 1, 0, 0.01, &mt, &err) == 0 && nn_model_backward(lz, &err) == 0 &&
              nn_optim_step(o, 0.01, &err) == 0;
    float *w2 = hc(lz, &p->w), *m2 = hc(lz, m), *v2 = hc(lz, v);
    size_t row = (size_t)H * sizeof(float);
    int never = st1 && st2, moved1 = st1, kept = st2, moved2 = st2;
    for (size_t r = 0; r < D; r++) {
        size_t at = r * H;
        if (r >= 15) /* in no batch: as initialised, m and v 0 (l2 > 0 did not reach them) */
            for (int h = 0; h < H; h++)
                never &= memcmp(&w2[at + h], &w0[at + h], sizeof(float)) == 0 && m2[at + h] == 0 && v2[at + h] == 0;
        else
            moved1 &= memcmp(w1 + at, w0 + at, row) != 0;
        if (r >= 7 && r < 15) /* in batch 1 only: as step 1 left them */
            kept &= memcmp(w2 + at, w1 + at, row) == 0 && memcmp(m2 + at, m1 + at, row) == 0 &&
                    memcmp(v2 + at, v1 + at, row) == 0;
        if (r < 7)
            moved2 &= memcmp(w2 + at, w1 + at, row) != 0 && memcmp(m2 + at, m1 + at, row) != 0;
    }
    ok(never, "rows 15..29, in no batch, keep their initial weights bit for bit, m and v 0, despite l2 > 0");
    ok(moved1 && kept && moved2, "rows 7..14, in batch 1 only, keep step 1's weights, m and v bit for bit in step 2; "
                                 "rows 0..6 move in both steps");
    ok(nn_optim_t(o) == 2, "the step count is shared: t = %lld after two steps", (long long)nn_optim_t(o));
    free(w0), free(w1), free(m1), free(v1), free(w2), free(m2), free(v2);
    nn_optim_free(o);
    nn_train_cfg_free(&cfg);
    nn_model_free(lz);
    nn_model_free(dn);
}

/* The exact optimisers take a sparse model's embedding gradient row-sparse
 * and must give bit for bit what they give from the dense gradient: two
 * copies of one model, the second switched back to the dense scatter, three
 * steps (rows 15..29 in no batch, so they move through l2 and momentum
 * alone), every weight and state float compared. */
static void test_rows_exact(void)
{
    enum { N = 4, K = 4 };
    const char *spec = "{\"arch\":\"mlp\",\"sparse\":{\"dim\":30,\"nnz\":4},\"hidden\":[8],\"classes\":3}";
    static const char *const train[] = {
        "{\"optimizer\":\"adam\",\"lr\":0.01,\"l2\":0.01}",
        "{\"optimizer\":\"sgd\",\"lr\":0.05,\"momentum\":0.9,\"l2\":0.01}",
        "{\"optimizer\":\"sgd\",\"lr\":0.05,\"momentum\":0,\"l2\":0.01}",
    };
    int32_t b1[N * K] = {3, 5, 3, 0, 1, 2, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14}, y[N] = {0, 1, 2, 1};
    int32_t b2[N * K] = {0, 1, 2, 3, 4, 5, 6, 0, 1, 1, 2, 2, 3, 4, 5, 6};
    for (size_t c = 0; c < sizeof train / sizeof *train; c++) {
        cds_err err;
        nn_train_cfg cfg;
        nn_model *rw = build(spec, N, 3, &err), *dn = build(spec, N, 3, &err);
        int rc = nn_train_cfg_parse(train[c], &cfg, &err);
        nn_optim *orw = rw && rc == 0 ? nn_optim_new(rw, &cfg, &err) : NULL;
        nn_optim *odn = dn && rc == 0 ? nn_optim_new(dn, &cfg, &err) : NULL;
        int freed = orw && nn_model_param(rw, 0)->row_grad && !nn_model_param(rw, 0)->g.data;
        int ran = freed && odn && nn_model_set_row_grads(dn, 0, &err) == 0 && nn_model_param(dn, 0)->g.data;
        if (c == 0)
            ok(freed, "under an optimiser the embedding's dense gradient buffer is freed; switching back to dense "
                      "gives it a new one");
        float *w0 = ran ? malloc(nn_model_param(rw, 0)->w.n * sizeof *w0) : NULL;
        if (w0)
            nn_model_read(rw, &nn_model_param(rw, 0)->w, w0);
        for (int step = 0; ran && step < 3; step++) {
            const int32_t *b = step == 1 ? b2 : b1;
            nn_metrics mt;
            nn_model *ms[2] = {rw, dn};
            nn_optim *os[2] = {orw, odn};
            for (int k = 0; k < 2 && ran; k++)
                ran = nn_model_forward(ms[k], NULL, b, y, N, 1, 0, 0.01, &mt, &err) == 0 &&
                      nn_model_backward(ms[k], &err) == 0 && nn_optim_step(os[k], 0.01, &err) == 0;
        }
        int same = ran && !nn_model_param(dn, 0)->row_grad;
        for (size_t i = 0; same && i < nn_model_param_count(rw); i++) {
            float *a = hc(rw, &nn_model_param(rw, i)->w), *d = hc(dn, &nn_model_param(dn, i)->w);
            same = memcmp(a, d, nn_model_param(rw, i)->w.n * sizeof(float)) == 0;
            free(a);
            free(d);
        }
        for (size_t i = 0; same && i < nn_optim_state_count(orw); i++) {
            float *a = hc(rw, nn_optim_state(orw, i, NULL)), *d = hc(dn, nn_optim_state(odn, i, NULL));
            same = memcmp(a, d, nn_optim_state(orw, i, NULL)->n * sizeof(float)) == 0;
            free(a);
            free(d);
        }
        float *w3 = ran ? hc(rw, &nn_model_param(rw, 0)->w) : NULL;
        int untouched_moved = same; /* row 20 was in no batch: l2 alone moves it */
        for (int h = 0; untouched_moved && h < 8; h++)
            untouched_moved = w3[20 * 8 + h] != w0[20 * 8 + h];
        free(w3);
        ok(same && untouched_moved, "%s: the row-sparse gradient steps every weight and state float exactly as the "
                                    "dense one (rows in no batch included)",
           train[c]);
        free(w0);
        nn_optim_free(orw), nn_optim_free(odn);
        nn_train_cfg_free(&cfg);
        nn_model_free(rw), nn_model_free(dn);
    }
}

/* 1e-30·1e-10 is a denormal (about 1e-40) unless the thread flushes.  Not
 * inlined: GCC does not order float arithmetic against a change of MXCSR,
 * and could otherwise move the product across nn_par_fp_enter. */
__attribute__((noinline)) static int flushes(void)
{
    volatile float a = 1e-30f, b = 1e-10f;
    float p = a * b;
    return p == 0.0f;
}

/* The engine's kernels run with denormals flushed (nn_par.h): on the calling
 * thread and on every OpenMP thread while inside, and the caller gets its
 * own mode back on the way out, also from a model's forward pass. */
static void test_denormals(void)
{
    ok(!flushes(), "outside the engine a denormal product is kept (the process's default mode)");
    nn_par_fp fp;
    nn_par_fp_enter(&fp);
    int inside = flushes(), all = 1, team = 0;
#pragma omp parallel num_threads(3) reduction(&& : all) reduction(+ : team)
    {
        all = flushes();
        team = 1;
    }
    nn_par_fp_leave(&fp);
    ok(inside && all && team >= 1, "inside the engine denormals flush, on the caller and on all %d OpenMP threads", team);
    ok(!flushes(), "leaving gives the caller its own floating-point mode back");
    cds_err err;
    nn_model *m = build("{\"arch\":\"mlp\",\"input\":[5],\"hidden\":[4],\"classes\":2}", 2, 1, &err);
    float x[10] = {1e-39f, 0, 1, 2, 3, 4, 5, 6, 7, 8};
    int32_t y[2] = {0, 1};
    nn_metrics mt;
    int ran = m && nn_model_forward(m, x, NULL, y, 2, 1, 0, 0, &mt, &err) == 0 && nn_model_backward(m, &err) == 0;
    ok(ran && !flushes() && isfinite(mt.loss), "a forward and backward pass leave the caller's mode as it was");
    nn_model_free(m);
}

/* The one error kind callers act on: running out of memory.  It survives
 * wrapping with context and is cleared by any other error. */
static void test_err_kinds(void)
{
    cds_err e = {0};
    ok(!cds_err_is_nomem(&e) && !cds_err_is_nomem(NULL), "a zeroed error is not out of memory");
    cds_err_nomem(&e, "out of memory for %d parameters", 7);
    cds_err_wrap(&e, "model %d", 3);
    ok(cds_err_is_nomem(&e) && strcmp(e.msg, "model 3: out of memory for 7 parameters") == 0,
       "cds_err_nomem marks it, and wrapping keeps the mark: %s", e.msg);
    cds_errf(&e, "a failed write of %s", "x");
    ok(!cds_err_is_nomem(&e), "a later plain error clears the mark");
    cds_err_nomem(&e, "out of memory");
    cds_err_clear(&e);
    ok(!cds_err_is_nomem(&e) && e.msg[0] == '\0', "clearing clears the mark");
}

/* For data-parallel training: the hook sees every parameter once, last
 * first, as backward finishes it, and the dense gradients are one block in
 * the documented layout (parameter order, each on a multiple of 16 floats). */
typedef struct hook_log {
    size_t order[256];
    size_t n;
} hook_log;

static void log_param(void *ctx, size_t param)
{
    hook_log *h = ctx;
    if (h->n < 256)
        h->order[h->n] = param;
    h->n++;
}

static void test_grad_hook_and_block(void)
{
    cds_err err;
    nn_model *m = build("{\"arch\":\"resnet18\",\"input\":[3,16,16],\"classes\":5,\"width\":0.125}", 2, 4, &err);
    ok(m != NULL, "a small resnet18 builds");
    if (!m)
        return;
    hook_log h = {0};
    nn_model_set_grad_hook(m, log_param, &h);
    float x[2 * 3 * 16 * 16];
    nn_rng r;
    nn_rng_seed(&r, 8);
    for (size_t i = 0; i < sizeof x / sizeof *x; i++)
        x[i] = (float)nn_rng_normal(&r);
    int32_t y[2] = {1, 4};
    nn_metrics mt;
    int ran = nn_model_forward(m, x, NULL, y, 2, 1, 0, 0, &mt, &err) == 0 && nn_model_backward(m, &err) == 0;
    size_t np = nn_model_param_count(m);
    int reverse = ran && h.n == np;
    for (size_t i = 0; reverse && i < np; i++)
        reverse = h.order[i] == np - 1 - i;
    ok(reverse, "the gradient hook is called once per parameter (%zu of %zu), in reverse parameter order", h.n, np);
    nn_tensor block = nn_model_grad_block(m);
    float *all = hc(m, &block);
    size_t at = 0;
    int laid_out = ran;
    for (size_t i = 0; laid_out && i < np; i++) {
        const nn_param *p = nn_model_param(m, i);
        float *g = hc(m, &p->g);
        laid_out = at + p->g.n <= block.n && memcmp(all + at, g, p->g.n * sizeof *g) == 0;
        for (size_t j = at + p->g.n; laid_out && j < (at + p->g.n + 15) / 16 * 16; j++)
            laid_out = all[j] == 0.0f;
        at = (at + p->g.n + 15) / 16 * 16;
        free(g);
    }
    ok(laid_out && at == block.n, "the dense gradients are one block of %zu floats: each parameter's after the "
                                  "last, from a multiple of 16, zeros between", block.n);
    free(all);
    nn_model_free(m);
}

/* The optimiser steps runs of tensors in one call (nn_optim.c): the same
 * bits as stepping each tensor alone with its own state, for Adam without
 * L2 (one run), SGD with L2 (runs broken where the decay changes) and Adam
 * on a sparse mlp (its embedding stepped apart, row-sparse). */
static void test_multi_tensor_steps(void)
{
    static const struct {
        const char *what, *model, *train;
    } cases[] = {
        {"adam, no l2", "{\"arch\":\"cnn\",\"input\":[1,12,12],\"classes\":5}",
         "{\"optimizer\":\"adam\",\"lr\":0.01}"},
        {"sgd with momentum and l2", "{\"arch\":\"resnet18\",\"input\":[3,16,16],\"classes\":4,\"width\":0.125}",
         "{\"optimizer\":\"sgd\",\"lr\":0.05,\"momentum\":0.9,\"l2\":0.001}"},
        {"adam with l2 on a sparse mlp", "{\"arch\":\"mlp\",\"sparse\":{\"dim\":50,\"nnz\":4},\"hidden\":[8,6],"
         "\"classes\":3}", "{\"optimizer\":\"adam\",\"lr\":0.01,\"l2\":0.01}"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        cds_err err;
        nn_train_cfg cfg;
        nn_model *a = build(cases[k].model, 4, 9, &err), *b = build(cases[k].model, 4, 9, &err);
        if (!a || !b || nn_train_cfg_parse(cases[k].train, &cfg, &err) != 0) {
            ok(0, "multi-tensor steps, %s: %s", cases[k].what, err.msg);
            nn_model_free(a);
            nn_model_free(b);
            continue;
        }
        nn_optim *oa = nn_optim_new(a, &cfg, &err), *ob = nn_optim_new(b, &cfg, &err);
        int shape[3], dim = 0, nd = nn_model_input(a, shape, &dim);
        size_t per = 1;
        for (int i = 0; i < nd; i++)
            per *= (size_t)shape[i];
        float *x = malloc(4 * per * sizeof *x);
        int32_t *idx = malloc(4 * per * sizeof *idx), y[4] = {0, 1, 2, 1};
        nn_rng r;
        nn_rng_seed(&r, 3);
        for (size_t i = 0; i < 4 * per; i++) {
            x[i] = (float)nn_rng_unit(&r);
            idx[i] = dim ? (int32_t)(nn_rng_next(&r) % (uint64_t)dim) : 0;
        }
        int rc = oa && ob;
        const nn_ctx *cb = nn_model_ctx(b);
        for (int s = 1; rc && s <= 3; s++) {
            nn_metrics ma, mb;
            rc = nn_model_forward(a, dim ? NULL : x, dim ? idx : NULL, y, 4, 1, 7, 0, &ma, &err) == 0 &&
                 nn_model_backward(a, &err) == 0 && nn_optim_step(oa, 0.01, &err) == 0 &&
                 nn_model_forward(b, dim ? NULL : x, dim ? idx : NULL, y, 4, 1, 7, 0, &mb, &err) == 0 &&
                 nn_model_backward(b, &err) == 0;
            /* b: tensor by tensor, through the ops, on b's optimiser state */
            nn_optim_set_t(ob, s);
            for (size_t i = 0; rc && i < nn_model_param_count(b); i++) {
                nn_param *p = nn_model_param(b, i);
                float l2 = p->decay ? (float)cfg.l2 : 0.0f;
                nn_tensor *s0 = nn_optim_state(ob, cfg.adam ? 2 * i : i, NULL);
                nn_tensor *s1 = cfg.adam ? nn_optim_state(ob, 2 * i + 1, NULL) : NULL;
                if (p->row_grad)
                    rc = (cfg.adam ? nn_op_adam_rows_step(cb, &p->w, &p->rows, s0, s1, 0.01f, (float)cfg.beta1,
                                                          (float)cfg.beta2, (float)cfg.eps, l2, s, &err)
                                   : nn_op_sgd_rows_step(cb, &p->w, &p->rows, s0, 0.01f, (float)cfg.momentum, l2,
                                                         &err)) == 0;
                else
                    rc = (cfg.adam ? nn_op_adam_step(cb, &p->w, &p->g, s0, s1, 0.01f, (float)cfg.beta1,
                                                     (float)cfg.beta2, (float)cfg.eps, l2, s, &err)
                                   : nn_op_sgd_step(cb, &p->w, &p->g, s0, 0.01f, (float)cfg.momentum, l2, &err)) == 0;
            }
        }
        ok(rc && same_weights(a, b), "multi-tensor steps, %s: 3 steps equal tensor-by-tensor steps bit for bit%s%s",
           cases[k].what, rc ? "" : ": ", rc ? "" : err.msg);
        free(x);
        free(idx);
        nn_optim_free(oa);
        nn_optim_free(ob);
        nn_train_cfg_free(&cfg);
        nn_model_free(a);
        nn_model_free(b);
    }
}

/* The uint8 input path a GPU takes (nn_model_input_u8: rows as stored,
 * normalised by the backend through tables), here through the CPU
 * backend: the same metrics and logits, bit for bit, as a forward given the
 * floats, channels last; and a forward given no input refuses. */
static void test_input_u8(void)
{
    enum { B = 3, C = 2, H = 4, W = 4 };
    cds_err err;
    nn_model *a = build("{\"arch\":\"cnn\",\"input\":[2,4,4],\"classes\":3}", B, 5, &err);
    nn_model *b = build("{\"arch\":\"cnn\",\"input\":[2,4,4],\"classes\":3}", B, 5, &err);
    uint8_t raw[B * H * W * C];
    float x[B * C * H * W], lut[C * 256];
    int32_t y[B] = {0, 2, 1};
    for (int c = 0; c < C; c++)
        for (int v = 0; v < 256; v++)
            lut[c * 256 + v] = ((float)v * (1.0f / 255.0f) - 0.5f * (float)c) / (0.25f + (float)c);
    for (int i = 0; i < B * H * W * C; i++)
        raw[i] = (uint8_t)(i * 37 + 11);
    for (int n = 0; n < B; n++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < H * W; p++)
                x[(n * C + c) * H * W + p] = lut[c * 256 + raw[(n * H * W + p) * C + c]];
    nn_u8_form f = {.C = C, .P = H * W, .channels_last = 1, .lut = lut};
    nn_metrics ma, mb;
    float la[B * 3], lb[B * 3];
    int rc = a && b && nn_model_forward(a, x, NULL, y, B, 0, 0, 0, &ma, &err) == 0 &&
             nn_model_input_u8(b, raw, B, &f, &err) == 0 && nn_model_forward(b, NULL, NULL, y, B, 0, 0, 0, &mb, &err) == 0;
    if (rc) {
        nn_model_logits(a, la);
        nn_model_logits(b, lb);
    }
    ok(rc && ma.xent == mb.xent && ma.top1 == mb.top1 && memcmp(la, lb, sizeof la) == 0,
       "uint8 rows normalised by the backend give the float input's logits and loss bit for bit%s%s", rc ? "" : ": ",
       rc ? "" : err.msg);
    rc = b ? nn_model_forward(b, NULL, NULL, y, B, 0, 0, 0, &mb, &err) : 0;
    ok(rc == -1 && strstr(err.msg, "dense input missing"), "the next forward without input refuses: %s", err.msg);
    nn_model_free(a);
    nn_model_free(b);
}

int main(void)
{
    test_input_u8();
    test_multi_tensor_steps();
    test_train_specs();
    test_lazy_specs();
    test_lazy_rows();
    test_grad_hook_and_block();
    test_rows_exact();
    test_denormals();
    test_err_kinds();
    test_example_specs();
    test_param_counts();
    test_seeded_init();
    test_sparse_equals_dense();
    test_bad_specs();
    test_bad_batches();
    test_full_size_forward();
    return tap_done();
}
