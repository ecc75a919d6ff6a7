/* test_nn_cuda: whole training steps on the CUDA backend against the CPU
 * reference, and checkpoints moved between the two.
 *
 * For each model (the small CNN, ResNet-18, confA dense and sparse with
 * exact and lazy Adam, an mlp with dropout) two trainers are made from the
 * same spec and seed, one per device, and given the same STEPS batches; the
 * losses of every step and every parameter and buffer at the end are
 * compared as max|gpu - cpu| / max|cpu| per tensor.
 *
 * Tolerances, and why.  Each backend sums GEMMs and reductions in its own
 * order, so each step's gradients differ by float32 rounding (~1e-6 of
 * their scale, tests/test_nn_backend.c); Adam divides by sqrt(v), which
 * turns a rounding difference of a gradient near zero into a difference of
 * its update, so after STEPS steps weights agree to ~1e-5 of their scale
 * (the data-parallel equivalence test measures 2e-7..8e-7 for two CPU
 * orders after 20 steps).  Bounds: losses 1e-5 relative, weights and running
 * statistics 1e-4 of each tensor's largest value.  Dropout masks are the
 * same function on both (bit-identical), so the dropout model is held to
 * the same bounds: a different mask would miss them by orders.
 *
 * Checkpoints.  A trainer saved on the GPU, loaded on the CPU and saved
 * again gives the same bytes (cmp), and the reverse; and a run that moves
 * from one device to the other mid-way stays within the same bounds of one
 * that does not.
 *
 * CUDA graphs (the train spec's "cuda_graphs").  A graphed step runs the
 * kernels of an eager one with the same arguments (its per-step values
 * read from the device instead), so two trainers on the same device, one
 * graphed, must agree BIT FOR BIT over GSTEPS steps that include the
 * warm-up, the capture and replays of both staging buffers, a short batch
 * (eager) in between, and a learning rate that halves every epoch (the
 * optimisers read it from the graph's values block).  On the CPU, which has
 * no graphs, the spec runs every step eagerly through the same staging
 * path, also bit for bit; that half runs everywhere.
 *
 * Without a CUDA backend or device every GPU check is one TAP skip. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nn_rng.h"
#include "nn_train.h"
#include "tap.h"

#define STEPS 5
#define BATCH 16
#define GSTEPS 12 /* graphed steps: 2 warm-ups, 2 captures, a short batch, replays */
#define GSHORT 5  /* the step whose batch is short */

static const struct {
    const char *name;
    const char *spec;
} models[] = {
    {"cnn", "{\"model\":{\"arch\":\"cnn\",\"input\":[1,28,28],\"classes\":10},"
            "\"train\":{\"optimizer\":\"adam\",\"lr\":0.001,\"batch\":16,\"seed\":3}}"},
    {"resnet18", "{\"model\":{\"arch\":\"resnet18\",\"input\":[3,32,32],\"classes\":10,\"width\":0.25},"
                 "\"train\":{\"optimizer\":\"sgd\",\"lr\":0.05,\"momentum\":0.9,\"l2\":0.0001,\"batch\":16,\"seed\":3}}"},
    {"confA-dense", "{\"model\":{\"arch\":\"mlp\",\"input\":[7306],\"hidden\":[1000,500],\"classes\":2},"
                    "\"train\":{\"optimizer\":\"adam\",\"lr\":0.001,\"batch\":16,\"seed\":3}}"},
    {"confA-sparse", "{\"model\":{\"arch\":\"mlp\",\"sparse\":{\"dim\":7306,\"nnz\":39},\"hidden\":[1000,500],"
                     "\"classes\":2},\"train\":{\"optimizer\":\"adam\",\"lr\":0.001,\"batch\":16,\"seed\":3}}"},
    {"confA-sparse-lazy", "{\"model\":{\"arch\":\"mlp\",\"sparse\":{\"dim\":7306,\"nnz\":39},\"hidden\":[1000,500],"
                          "\"classes\":2},\"train\":{\"optimizer\":\"adam\",\"lr\":0.001,\"lazy\":true,\"batch\":16,"
                          "\"seed\":3}}"},
    {"mlp-dropout", "{\"model\":{\"arch\":\"mlp\",\"input\":[784],\"hidden\":[256,128],\"dropout\":0.4,\"classes\":10},"
                    "\"train\":{\"optimizer\":\"sgd\",\"lr\":0.01,\"momentum\":0.9,\"batch\":16,\"seed\":3}}"},
};
#define N_MODELS (sizeof models / sizeof models[0])

/* One model's STEPS batches, the same for both devices. */
typedef struct batches {
    float *x;
    int32_t *idx, *y;
    size_t per_x, per_idx;
} batches;

static void batches_make(nn_trainer *t, batches *b, uint64_t seed)
{
    nn_model *m = nn_trainer_model(t);
    int shape[3], dim = 0;
    int nd = nn_model_input(m, shape, &dim);
    size_t per = 1;
    for (int i = 0; i < nd; i++)
        per *= (size_t)shape[i];
    memset(b, 0, sizeof *b);
    nn_rng r;
    nn_rng_seed(&r, seed);
    if (dim) {
        b->per_idx = per;
        b->idx = malloc((size_t)STEPS * BATCH * per * sizeof *b->idx);
        for (size_t i = 0; i < (size_t)STEPS * BATCH * per; i++)
            b->idx[i] = (int32_t)(nn_rng_next(&r) % (uint64_t)dim);
    } else {
        b->per_x = per;
        b->x = malloc((size_t)STEPS * BATCH * per * sizeof *b->x);
        for (size_t i = 0; i < (size_t)STEPS * BATCH * per; i++)
            b->x[i] = (float)(2 * nn_rng_unit(&r) - 1);
    }
    b->y = malloc((size_t)STEPS * BATCH * sizeof *b->y);
    for (int i = 0; i < STEPS * BATCH; i++)
        b->y[i] = (int32_t)(nn_rng_next(&r) % (uint64_t)nn_model_classes(m));
}

static void batches_free(batches *b)
{
    free(b->x);
    free(b->idx);
    free(b->y);
}

/* Steps [from, to) of the batches; the loss of each into loss[]. */
static int train_steps(nn_trainer *t, const batches *b, int from, int to, double *loss, cds_err *err)
{
    for (int s = from; s < to; s++) {
        nn_model *m = nn_trainer_model(t);
        nn_pass_acc start = {.bad_step = -1}, got;
        nn_model_acc_set(m, &start);
        const float *x = b->x ? b->x + (size_t)s * BATCH * b->per_x : NULL;
        const int32_t *idx = b->idx ? b->idx + (size_t)s * BATCH * b->per_idx : NULL;
        if (nn_trainer_forward_backward(t, x, idx, b->y + (size_t)s * BATCH, BATCH, err) != 0 ||
            nn_trainer_optim_step(t, err) != 0)
            return -1;
        nn_model_acc_get(m, &got);
        loss[s] = got.loss_sum / (double)got.rows;
        if (nn_ctx_check(nn_model_ctx(m), err) != 0)
            return -1;
    }
    return 0;
}

/* The worst max|a - b| / max|b| over every parameter and buffer. */
static double worst_tensor(nn_trainer *a, nn_trainer *b, const char **where)
{
    nn_model *ma = nn_trainer_model(a), *mb = nn_trainer_model(b);
    double worst = 0;
    size_t np = nn_model_param_count(ma), nb = nn_model_buffer_count(ma);
    for (size_t i = 0; i < np + nb; i++) {
        nn_tensor *ta = i < np ? &nn_model_param(ma, i)->w : &nn_model_buffer(ma, i - np)->t;
        nn_tensor *tb = i < np ? &nn_model_param(mb, i)->w : &nn_model_buffer(mb, i - np)->t;
        float *ha = malloc(ta->n * sizeof *ha), *hb = malloc(tb->n * sizeof *hb);
        nn_model_read(ma, ta, ha);
        nn_model_read(mb, tb, hb);
        double num = 0, den = 0;
        for (size_t j = 0; j < ta->n; j++) {
            double d = fabs((double)ha[j] - (double)hb[j]);
            num = d > num || isnan(d) ? (isnan(d) ? INFINITY : d) : num;
            den = fmax(den, fabs((double)hb[j]));
        }
        double e = num / (den > 0 ? den : 1);
        if (e > worst) {
            worst = e;
            *where = i < np ? nn_model_param(ma, i)->name : nn_model_buffer(ma, i - np)->name;
        }
        free(ha);
        free(hb);
    }
    return worst;
}

static void check_steps(size_t k, nn_place gpu)
{
    cds_err err;
    nn_trainer *cpu = nn_trainer_new(models[k].spec, &err);
    nn_trainer *dev = cpu ? nn_trainer_new_at(models[k].spec, gpu, &err) : NULL;
    if (!dev) {
        ok(0, "%s: trainers on the cpu and cuda:%d (%s)", models[k].name, gpu.index, err.msg);
        nn_trainer_free(cpu);
        return;
    }
    batches b;
    batches_make(cpu, &b, 100 + k);
    double lc[STEPS], lg[STEPS], worst_loss = 0;
    int rc = train_steps(cpu, &b, 0, STEPS, lc, &err) == 0 && train_steps(dev, &b, 0, STEPS, lg, &err) == 0;
    for (int s = 0; rc && s < STEPS; s++)
        worst_loss = fmax(worst_loss, fabs(lg[s] - lc[s]) / fabs(lc[s]));
    const char *where = "";
    double worst_w = rc ? worst_tensor(dev, cpu, &where) : INFINITY;
    ok(rc && worst_loss <= 1e-5, "%s: %d steps on cuda:%d, losses within 1e-5 of the cpu's (worst %.1e)%s%s",
       models[k].name, STEPS, gpu.index, worst_loss, rc ? "" : ": ", rc ? "" : err.msg);
    ok(rc && worst_w <= 1e-4, "%s: weights and running statistics within 1e-4 of the cpu's (worst %.1e, %s)",
       models[k].name, worst_w, where);
    batches_free(&b);
    nn_trainer_free(cpu);
    nn_trainer_free(dev);
}

static int same_file(const char a[1024], const char b[1024])
{
    char cmd[2 * 1024 + 32];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    return system(cmd) == 0;
}

/* The spec of model k with a halving learning rate, graphed or not. */
static char *graph_spec(size_t k, int graphs)
{
    const char *at = strstr(models[k].spec, "\"train\":{");
    size_t head = (size_t)(at - models[k].spec) + strlen("\"train\":{");
    char *s = malloc(strlen(models[k].spec) + 128);
    snprintf(s, strlen(models[k].spec) + 128, "%.*s\"cuda_graphs\":%s,\"schedule\":{\"kind\":\"step\",\"every\":1,"
             "\"gamma\":0.5},%s", (int)head, models[k].spec, graphs ? "true" : "false", models[k].spec + head);
    return s;
}

/* GSTEPS steps through nn_trainer_step_batch, an epoch ending every four;
 * the loss of each into loss[]. */
static int graph_steps(nn_trainer *t, const batches *b, double *loss, cds_err *err)
{
    nn_model *m = nn_trainer_model(t);
    for (int s = 0; s < GSTEPS; s++) {
        int at = s % STEPS, n = s == GSHORT ? BATCH - 3 : BATCH;
        nn_pass_acc start = {.bad_step = -1}, got;
        nn_model_acc_set(m, &start);
        const float *x = b->x ? b->x + (size_t)at * BATCH * b->per_x : NULL;
        const int32_t *idx = b->idx ? b->idx + (size_t)at * BATCH * b->per_idx : NULL;
        if (nn_trainer_step_batch(t, x, idx, b->y + (size_t)at * BATCH, n, err) != 0)
            return -1;
        nn_model_acc_get(m, &got);
        loss[s] = got.loss_sum / (double)got.rows;
        if (nn_ctx_check(nn_model_ctx(m), err) != 0)
            return -1;
        if (s % 4 == 3)
            nn_trainer_end_epoch(t);
    }
    return 0;
}

/* Model k trained eagerly and graphed on one device: the same bits. */
static void check_graphs(size_t k, nn_place where)
{
    cds_err err;
    char *plain = graph_spec(k, 0), *graphed = graph_spec(k, 1), name[16];
    nn_place_name(where, name, sizeof name);
    nn_trainer *a = nn_trainer_new_at(plain, where, &err);
    nn_trainer *g = a ? nn_trainer_new_at(graphed, where, &err) : NULL;
    free(plain);
    free(graphed);
    if (!g) {
        ok(0, "%s: an eager and a graphed trainer on %s (%s)", models[k].name, name, err.msg);
        nn_trainer_free(a);
        return;
    }
    batches b;
    batches_make(a, &b, 300 + k);
    double la[GSTEPS], lg[GSTEPS];
    int rc = graph_steps(a, &b, la, &err) == 0 && graph_steps(g, &b, lg, &err) == 0;
    int same_loss = rc && memcmp(la, lg, sizeof la) == 0;
    const char *where_w = "none";
    double worst = rc ? worst_tensor(g, a, &where_w) : INFINITY;
    long captured = 0, replayed = 0;
    nn_trainer_graph_counts(g, &captured, &replayed);
    ok(same_loss && worst == 0, "%s: %d steps graphed on %s are bit-identical to eager ones (losses %s, worst "
       "tensor %.1e at %s)%s%s", models[k].name, GSTEPS, name, same_loss ? "equal" : "differ", worst, where_w,
       rc ? "" : ": ", rc ? "" : err.msg);
    if (where.dev == NN_CPU)
        ok(captured == 0 && replayed == 0, "%s: the cpu runs a graphed spec eagerly (captured %ld, replayed %ld)",
           models[k].name, captured, replayed);
    else /* the short step eager, steps 0-1 the warm-ups, every other step captured (2-3, and again after
          * memory moved) or replayed */
        ok(captured >= 2 && replayed >= 1 && captured + replayed == GSTEPS - 3,
           "%s: graphs captured %ld times and replayed %ld times on %s", models[k].name, captured, replayed, name);
    batches_free(&b);
    nn_trainer_free(a);
    nn_trainer_free(g);
}

/* Saved on one device, loaded on the other and saved again: the same
 * bytes; and moved mid-run, within the bounds of a run that stayed. */
static void check_ckpt(size_t k, nn_place gpu, const char *dir)
{
    cds_err err;
    char a[1024], b[1024], c[1024], d[1024];
    snprintf(a, sizeof a, "%s/%s-gpu.ckpt", dir, models[k].name);
    snprintf(b, sizeof b, "%s/%s-gpu-cpu.ckpt", dir, models[k].name);
    snprintf(c, sizeof c, "%s/%s-cpu.ckpt", dir, models[k].name);
    snprintf(d, sizeof d, "%s/%s-cpu-gpu.ckpt", dir, models[k].name);
    nn_trainer *g = nn_trainer_new_at(models[k].spec, gpu, &err), *cpu = g ? nn_trainer_new(models[k].spec, &err) : NULL;
    batches bt;
    double loss[STEPS];
    if (!cpu || !g) {
        ok(0, "%s: trainers for the checkpoint checks (%s)", models[k].name, err.msg);
        nn_trainer_free(g);
        return;
    }
    batches_make(cpu, &bt, 200 + k);
    int half = STEPS / 2;
    int rc = train_steps(g, &bt, 0, half, loss, &err) == 0 && nn_trainer_save(g, a, &err) == 0 &&
             train_steps(cpu, &bt, 0, half, loss, &err) == 0 && nn_trainer_save(cpu, c, &err) == 0;
    nn_trainer *g2c = rc ? nn_trainer_load(a, &err) : NULL;
    nn_trainer *c2g = g2c ? nn_trainer_load_at(c, 0, gpu, &err) : NULL;
    rc = rc && c2g && nn_trainer_save(g2c, b, &err) == 0 && nn_trainer_save(c2g, d, &err) == 0;
    ok(rc && same_file(a, b), "%s: a checkpoint saved on cuda:%d, loaded on the cpu and saved again is the same bytes%s%s",
       models[k].name, gpu.index, rc ? "" : ": ", rc ? "" : err.msg);
    ok(rc && same_file(c, d), "%s: a checkpoint saved on the cpu, loaded on cuda:%d and saved again is the same bytes",
       models[k].name, gpu.index);
    /* The rest of the run: the moved trainers against the ones that stayed. */
    rc = rc && train_steps(g, &bt, half, STEPS, loss, &err) == 0 && train_steps(g2c, &bt, half, STEPS, loss, &err) == 0 &&
         train_steps(cpu, &bt, half, STEPS, loss, &err) == 0 && train_steps(c2g, &bt, half, STEPS, loss, &err) == 0;
    const char *w1 = "", *w2 = "";
    double e1 = rc ? worst_tensor(g2c, g, &w1) : INFINITY, e2 = rc ? worst_tensor(c2g, cpu, &w2) : INFINITY;
    ok(rc && e1 <= 1e-4 && e2 <= 1e-4,
       "%s: resumed on the other device, training goes on within 1e-4 (gpu to cpu %.1e at %s, cpu to gpu %.1e at %s)",
       models[k].name, e1, w1, e2, w2);
    batches_free(&bt);
    nn_trainer_free(g);
    nn_trainer_free(cpu);
    nn_trainer_free(g2c);
    nn_trainer_free(c2g);
}

/* Staging (nn_backend.h's stage): batches from pinned memory of the
 * context's (copied from where they are) and from ordinary memory (copied
 * through the slot's pinned buffers), five in turn into one destination,
 * each read back from the buffer stage returned after the host buffer was
 * overwritten; the double buffering keeps the batch before it too. */
static void check_stage(nn_place gpu)
{
    enum { N = 1 << 18 };
    nn_ctx c;
    cds_err err;
    if (nn_ctx_init_at(&c, gpu, &err) != 0) {
        ok(0, "a context on cuda:%d: %s", gpu.index, err.msg);
        return;
    }
    float *pinned = nn_ctx_host_alloc(&c, N * sizeof(float)), *plain = malloc(N * sizeof(float));
    float *dst = nn_ctx_alloc(&c, N * sizeof(float)), *back = malloc(N * sizeof(float));
    const float *prev = NULL;
    int good = pinned && plain && dst && back, k;
    for (k = 0; good && k < 5; k++) {
        float *h = k % 2 ? plain : pinned;
        for (int i = 0; i < N; i++)
            h[i] = (float)(k * N + i);
        const float *dev = nn_ctx_stage(&c, dst, h, N * sizeof(float));
        for (int i = 0; i < N; i++)
            h[i] = -1.0f; /* the caller may reuse the host buffer at once */
        nn_ctx_to_host(&c, back, dev, N * sizeof(float));
        for (int i = 0; good && i < N; i++)
            good = back[i] == (float)(k * N + i);
        if (prev && good) {
            nn_ctx_to_host(&c, back, prev, N * sizeof(float));
            for (int i = 0; good && i < N; i++)
                good = back[i] == (float)((k - 1) * N + i);
        }
        prev = dev;
    }
    good = good && nn_ctx_check(&c, &err) == 0;
    ok(good, "stage: five batches from pinned and ordinary memory in turn reach the device whole, the one before "
             "each still there (failed at %d)%s%s", k, good ? "" : ": ", good ? "" : err.msg);
    nn_ctx_host_free(&c, pinned, N * sizeof(float));
    nn_ctx_free(&c, dst, N * sizeof(float));
    free(plain);
    free(back);
    nn_ctx_release(&c);
}

int main(void)
{
    nn_place gpu, cpu = {.dev = NN_CPU};
    cds_err err;
    const size_t graphed[] = {0, 3, 5}; /* cnn, confA-sparse (the staged indices), mlp-dropout */
    for (size_t i = 0; i < sizeof graphed / sizeof graphed[0]; i++)
        check_graphs(graphed[i], cpu);
    if (nn_place_pick("cuda:0", &gpu, NULL, 0, &err) != 0) {
        tap_skip("every GPU check: %s", err.msg);
        return tap_done();
    }
    char dir[] = "/tmp/cds-nn-cuda.XXXXXX";
    if (!mkdtemp(dir))
        tap_bail("mkdtemp failed");
    check_stage(gpu);
    for (size_t k = 0; k < N_MODELS; k++)
        check_steps(k, gpu);
    for (size_t k = 0; k < N_MODELS; k++)
        check_ckpt(k, gpu, dir);
    for (size_t k = 0; k < N_MODELS; k++)
        check_graphs(k, gpu);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        tap_diag("could not remove %s", dir);
    return tap_done();
}
