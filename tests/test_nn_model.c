/* test_nn_model: models built from specs: parameter counts of the full-size
 * networks, output shapes, determinism of initialisation, the sparse input
 * against the dense one, and the errors a bad spec or bad batch gets. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "nn_model.h"
#include "nn_optim.h"
#include "nn_rng.h"
#include "tap.h"

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
        for (int i = 0; finite && i < 2 * 1000; i++)
            finite = isfinite(nn_model_logits(m)[i]);
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
        if (p->w.n != q->w.n || memcmp(p->w.data, q->w.data, p->w.n * sizeof(float)) != 0)
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
    for (size_t i = 0; i < conv1->w.n; i++)
        ss += (double)conv1->w.data[i] * conv1->w.data[i];
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
    for (int i = 0; i < D; i++)
        for (int o = 0; o < H; o++)
            dw->w.data[o * D + i] = sw->w.data[i * H + o];
    for (size_t p = 1; p < nn_model_param_count(s); p++)
        memcpy(nn_model_param(d, p)->w.data, nn_model_param(s, p)->w.data, nn_model_param(s, p)->w.n * sizeof(float));
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
    for (int i = 0; i < N * 3; i++)
        e = fmax(e, fabs(nn_model_logits(s)[i] - nn_model_logits(d)[i]));
    ok(e < 1e-5 && fabs(ms.loss - md.loss) < 1e-6, "same logits (max diff %.1e, tolerance 1e-5: float sums in another "
                                                   "order) and loss (incl. L2)", e);
    nn_model_backward(s, &err);
    nn_model_backward(d, &err);
    double eg = 0;
    for (int i = 0; i < D; i++)
        for (int o = 0; o < H; o++)
            eg = fmax(eg, fabs(sw->g.data[i * H + o] - dw->g.data[o * D + i]));
    ok(eg < 1e-6, "same fc0 weight gradient, transposed (max diff %.1e, tolerance 1e-6)", eg);
    nn_model_free(s);
    nn_model_free(d);
}

static void expect_error(const char *spec, const char *needle, const char *what)
{
    cds_err err = {{0}}, verr = {{0}};
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
    expect_error("{\"arch\":\"cnn\",\"input\":[1,28,28],\"classes\":10,\"widht\":2}", "unknown field \"widht\"",
                 "a misspelt field");
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
        cds_err err = {{0}};
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
    cds_err err = {{0}};
    int rc = nn_train_cfg_parse(train, &c, &err);
    ok(rc != 0 && strstr(err.msg, needle) != NULL, "%s is refused: %s", what, err.msg);
    if (rc == 0)
        nn_train_cfg_free(&c);
}

static void test_train_specs(void)
{
    expect_train_error("{\"optimizer\":\"adam\"}", "\"lr\"", "a train spec without lr");
    expect_train_error("{\"optimizer\":\"adam\",\"lr\":0.1,\"learning_rate\":0.1}", "unknown field \"learning_rate\"",
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

int main(void)
{
    test_train_specs();
    test_example_specs();
    test_param_counts();
    test_seeded_init();
    test_sparse_equals_dense();
    test_bad_specs();
    test_bad_batches();
    test_full_size_forward();
    return tap_done();
}
