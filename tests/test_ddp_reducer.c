/* Data-parallel steps (ddp/ddp_reducer.h) against one process.
 *
 * For a dense MLP and the small CNN (convolutions, max-pooling, no batch
 * norm), W = 2 ranks, each a process, train 20 steps: every step
 * the global batch of B rows is split, rank r taking rows [r·B/2, (r+1)·B/2),
 * forward and backward run on each rank's half, the gradients are averaged
 * over the gang in buckets as backward finishes them, and both ranks take
 * the same optimiser step.  One process trains the same model on the whole
 * B rows of each step.  Since the loss is a mean over rows, the averaged
 * gradient is the whole batch's, so the weights must agree within 1e-5
 * relative per tensor (max|a-b| / max|b|: the float sums of the two halves
 * run in another order).  Also: the two ranks end bit-identical; buckets of
 * 256 bytes (many) and one unbucketed reduction after backward give the
 * same bits; every bucket of a bucketed step goes out during backward,
 * before finish (the overlap); the gang starts from rank 0's weights
 * however each rank was initialised.  Join (a hybrid gang's rank past its
 * data, worker_rank.c): with rank 1 taking shadow steps for the last
 * JOIN steps (ddp_reducer_shadow: zero gradients into the reductions) the
 * ranks still end bit-identical, and equal within 1e-5 one process that
 * takes those steps on rank 0's half with its gradients halved (the
 * average over W = 2 of rank 0's and nothing).  Ranks are forked before the parent touches the engine (its
 * OpenMP runtime does not survive a fork). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ddp_reducer.h"
#include "ddp_rows.h"
#include "nn_par.h"
#include "nn_rng.h"
#include "nn_train.h"
#include "testutil.h"

#define STEPS 20
#define JOIN 5 /* rank 1's last steps as shadows, in the join gang */
#define B 8
#define IN_MAX 64
#define CLASSES 3

/* The models: a spec's "model" member and the floats of one sample. */
static const struct {
    const char *name, *model;
    int in;     /* floats of a sample; for a sparse model, its indices */
    int sparse; /* the sparse model's index range (0: dense) */
    int lazy;   /* lazy Adam */
} models[] = {
    {"mlp", "{\"arch\": \"mlp\", \"input\": [20], \"hidden\": [16, 8], \"classes\": 3}", 20, 0, 0},
    {"cnn", "{\"arch\": \"cnn\", \"input\": [1, 8, 8], \"classes\": 3, \"width\": 0.25}", 64, 0, 0},
    /* confA's shape, smaller: a sparse first layer over 500 features, 6 per row. */
    {"sparse-confA", "{\"arch\": \"mlp\", \"sparse\": {\"dim\": 500, \"nnz\": 6}, \"hidden\": [32, 16], "
                     "\"classes\": 3}", 6, 500, 0},
    /* Dropout: masks by global row (nn_model_set_row_offset), so W = 2 draws
     * what one process does. */
    {"mlp-dropout", "{\"arch\": \"mlp\", \"input\": [20], \"hidden\": [16, 8], \"classes\": 3, \"dropout\": 0.4}", 20,
     0, 0},
    {"sparse-confA-lazy", "{\"arch\": \"mlp\", \"sparse\": {\"dim\": 500, \"nnz\": 6}, \"hidden\": [32, 16], "
                          "\"classes\": 3}", 6, 500, 1},
};
static int IN;     /* the current model's sample size */
static int SPARSE; /* the current model's index range (0: dense) */

static const char *spec(int which, uint64_t seed, char *buf, size_t n)
{
    snprintf(buf, n,
             "{\"model\": %s, \"train\": {\"optimizer\": \"adam\", \"lr\": 0.01, \"l2\": 0.001, \"batch\": %d, "
             "\"seed\": %llu%s}}", models[which].model, B, (unsigned long long)seed,
             models[which].lazy ? ", \"lazy\": true" : "");
    return buf;
}

/* Step s's batch: B rows of IN floats (a sparse model: IN indices in
 * idx) and B labels, the same everywhere. */
static void batch(int s, float *x, int32_t *idx, int32_t *y)
{
    nn_rng r;
    nn_rng_seed(&r, 1000u + (uint64_t)s);
    for (int i = 0; i < B * IN; i++) {
        if (SPARSE)
            idx[i] = (int32_t)(nn_rng_next(&r) % (uint64_t)SPARSE);
        else
            x[i] = (float)(nn_rng_unit(&r) * 2.0 - 1.0);
    }
    for (int i = 0; i < B; i++)
        y[i] = (int32_t)(nn_rng_next(&r) % CLASSES);
}

/* Every parameter's weights, in order, into a malloc'd array (*n floats). */
static float *weights(nn_trainer *t, size_t *n)
{
    nn_model *m = nn_trainer_model(t);
    *n = nn_model_nparams(m);
    float *w = malloc(*n * sizeof(float)), *at = w;
    for (size_t i = 0; w && i < nn_model_param_count(m); i++) {
        nn_param *p = nn_model_param(m, i);
        nn_model_read(m, &p->w, at);
        at += p->w.n;
    }
    return w;
}

static int save(const char *path, const float *w, size_t n)
{
    FILE *f = fopen(path, "wb");
    int ok_ = f && fwrite(w, sizeof(float), n, f) == n;
    return (f && fclose(f) == 0 && ok_) ? 0 : -1;
}

/* One rank's 20 steps; writes its final weights to out.  seed differs per
 * rank on purpose (but for dropout, below): the broadcast must make the
 * start equal. */
/* The gangs each model is trained by: buckets of 256 bytes, one reduction
 * after backward, and for a sparse model with exact Adam its embedding
 * all-reduced dense besides exchanged as rows. */
static const struct {
    size_t bucket_bytes;
    ddp_sparse how;
    const char *name;
} gangs[] = {{256, DDP_SPARSE_DEFAULT, "buckets of 256 bytes"},
             {0, DDP_SPARSE_DEFAULT, "unbucketed"},
             {256, DDP_SPARSE_DENSE, "embedding all-reduced dense"},
             {256, DDP_SPARSE_DEFAULT, "rank 1 joined for the last steps"}};
#define GANG_JOIN 3

static int shadow(void *ctx, cds_err *err)
{
    return ddp_reducer_shadow(ctx, err);
}
static int gangs_of(int which)
{
    return models[which].sparse && !models[which].lazy ? 3 : 2;
}

static int rank_main(int which, const char *prefix, const char *scope, int rank, int gang, const char *out)
{
    size_t bucket_bytes = gangs[gang].bucket_bytes;
    nn_par_set_threads(1);
    char sbuf[512];
    cds_err err;
    queue_opts qo = {.url = test_redis_url(), .prefix = prefix};
    queue_conn *q = queue_connect(&qo, &err);
    /* A dropout model's ranks share the seed: their generators draw each
     * step's mask seed, as a gang's ranks loading one checkpoint do. */
    uint64_t seed = strstr(models[which].model, "dropout") ? 1 : 1 + (uint64_t)rank;
    nn_trainer *t = q ? nn_trainer_new(spec(which, seed, sbuf, sizeof sbuf), &err) : NULL;
    ddp_comm_opts o = {.q = q, .scope = scope, .rank = rank, .size = 2, .timeout_ms = 20000, .addr = "127.0.0.1"};
    ddp_comm *c = NULL;
    ddp_reducer *r = NULL;
    if (!t || ddp_comm_gloo(&o, &c, &err) != 0 ||
        ddp_reducer_new_sparse(nn_trainer_model(t), c, bucket_bytes, gangs[gang].how, &r, &err) != 0 ||
        ddp_reducer_broadcast_model(r, 0, &err) != 0) {
        fprintf(stderr, "rank %d: %s\n", rank, err.msg);
        return 1;
    }
    if (bucket_bytes && ddp_reducer_buckets(r) < 3) {
        fprintf(stderr, "rank %d: %zu buckets of %zu bytes: expected several\n", rank, ddp_reducer_buckets(r),
                bucket_bytes);
        return 1;
    }
    float x[B * IN_MAX];
    int32_t idx[B * IN_MAX], y[B];
    int half = B / 2;
    nn_model_set_row_offset(nn_trainer_model(t), (int64_t)rank * half);
    for (int s = 0; s < STEPS; s++) {
        batch(s, x, idx, y);
        if (gang == GANG_JOIN && rank == 1 && s >= STEPS - JOIN) {
            if (nn_trainer_shadow_step(t, shadow, r, &err) != 0) {
                fprintf(stderr, "rank %d shadow step %d: %s\n", rank, s, err.msg);
                return 1;
            }
            continue;
        }
        if (nn_trainer_forward_backward(t, SPARSE ? NULL : x + rank * half * IN, SPARSE ? idx + rank * half * IN : NULL,
                                        y + rank * half, half, &err) != 0 ||
            ddp_reducer_finish(r, &err) != 0 || nn_trainer_optim_step(t, &err) != 0) {
            fprintf(stderr, "rank %d step %d: %s\n", rank, s, err.msg);
            return 1;
        }
        if (SPARSE && gangs[gang].how == DDP_SPARSE_ROWS && (gang != GANG_JOIN || s < STEPS - JOIN)) {
            ddp_rows_stats rs = ddp_rows_last(ddp_reducer_rows(r));
            if (rs.rows_mine == 0 || rs.rows_union < rs.rows_mine || rs.rows_union > (size_t)SPARSE ||
                rs.bytes_sent != rs.rows_mine * (sizeof(int32_t) + 32 * sizeof(float)) ||
                rs.bytes_gathered < rs.bytes_sent) {
                fprintf(stderr, "rank %d step %d: rows exchanged: %zu mine, %zu in the union, %zu bytes sent, %zu "
                        "gathered\n", rank, s, rs.rows_mine, rs.rows_union, rs.bytes_sent, rs.bytes_gathered);
                return 1;
            }
        }
        size_t want = bucket_bytes ? ddp_reducer_buckets(r) : 0;
        if (ddp_reducer_last_early(r) != want) {
            fprintf(stderr, "rank %d step %d: %zu buckets went out during backward, not %zu\n", rank, s,
                    ddp_reducer_last_early(r), want);
            return 1;
        }
    }
    size_t n;
    float *w = weights(t, &n);
    int rc = w && save(out, w, n) == 0 ? 0 : 1;
    free(w);
    ddp_reducer_free(r);
    ddp_comm_destroy(c);
    nn_trainer_free(t);
    queue_close(q);
    return rc;
}

static float *load(const char *path, size_t n)
{
    float *w = malloc(n * sizeof(float));
    FILE *f = fopen(path, "rb");
    if (!w || !f || fread(w, sizeof(float), n, f) != n) {
        free(w);
        w = NULL;
    }
    if (f)
        fclose(f);
    return w;
}

/* max|a-b| / max|b| of each parameter tensor, the worst of them. */
static double worst_relative(nn_trainer *t, const float *a, const float *b, const char **where)
{
    nn_model *m = nn_trainer_model(t);
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < nn_model_param_count(m); i++) {
        nn_param *p = nn_model_param(m, i);
        double diff = 0, mag = 0;
        for (size_t k = 0; k < p->w.n; k++) {
            diff = fmax(diff, fabs((double)a[at + k] - (double)b[at + k]));
            mag = fmax(mag, fabs((double)b[at + k]));
        }
        double rel = mag > 0 ? diff / mag : diff;
        if (rel >= worst) {
            worst = rel;
            *where = p->name;
        }
        at += p->w.n;
    }
    return worst;
}

/* Halves the last backward's gradients, dense and row-sparse: the average
 * over W = 2 of one rank's and a shadow's zeros. */
static void halve_grads(nn_model *m)
{
    cds_err err;
    nn_tensor block = nn_model_grad_block(m);
    float *g = malloc(block.n * sizeof(float));
    if (!g)
        tap_bail("out of memory");
    nn_model_read(m, &block, g);
    for (size_t i = 0; i < block.n; i++)
        g[i] *= 0.5f;
    nn_model_write(m, &block, g);
    free(g);
    nn_param *p = nn_model_param(m, 0);
    if (!p->embedding)
        return;
    size_t rows = (size_t)p->w.shape[0], cols = (size_t)p->w.shape[1], n = 0;
    int32_t *r = malloc(rows * sizeof *r);
    float *v = malloc(rows * cols * sizeof *v);
    if (!r || !v || nn_model_row_grad_get(m, 0, r, v, &n, &err) != 0)
        tap_bail("reading the row-sparse gradient");
    for (size_t i = 0; i < n * cols; i++)
        v[i] *= 0.5f;
    if (nn_model_row_grad_set(m, 0, r, v, n, &err) != 0)
        tap_bail(err.msg);
    free(r);
    free(v);
}

/* One process's STEPS steps on the whole batch; with join, the last JOIN
 * on rank 0's half with the gradients halved.  Returns its weights. */
static float *reference(int which, int join, nn_trainer **out)
{
    char sbuf[512];
    cds_err err;
    nn_trainer *t = nn_trainer_new(spec(which, 1, sbuf, sizeof sbuf), &err);
    if (!t)
        tap_bail(err.msg);
    float x[B * IN_MAX];
    int32_t idx[B * IN_MAX], y[B];
    for (int s = 0; s < STEPS; s++) {
        batch(s, x, idx, y);
        int n = join && s >= STEPS - JOIN ? B / 2 : B;
        if (nn_trainer_forward_backward(t, SPARSE ? NULL : x, SPARSE ? idx : NULL, y, n, &err) != 0)
            tap_bail(err.msg);
        if (n < B)
            halve_grads(nn_trainer_model(t));
        if (nn_trainer_optim_step(t, &err) != 0)
            tap_bail(err.msg);
    }
    size_t nw;
    *out = t;
    return weights(t, &nw);
}

/* Trains model `which` both ways and compares. */
static void test_model(int which, const char *prefix, const char *dir)
{
    const char *mname = models[which].name;
    IN = models[which].in;
    SPARSE = models[which].sparse;
    char out[4][2][600];
    for (int g = 0; g <= GANG_JOIN; g++) {
        if (g >= gangs_of(which) && g != GANG_JOIN)
            continue;
        char scope[64];
        snprintf(scope, sizeof scope, "gang-%d-%s-%d", (int)getpid(), mname, g);
        pid_t pid[2];
        for (int rank = 0; rank < 2; rank++) {
            snprintf(out[g][rank], sizeof out[g][rank], "%s/%s-g%d-r%d.bin", dir, mname, g, rank);
            fflush(stdout);
            if ((pid[rank] = fork()) == 0)
                _exit(rank_main(which, prefix, scope, rank, g, out[g][rank]));
        }
        for (int rank = 0; rank < 2; rank++) {
            int st = 0;
            waitpid(pid[rank], &st, 0);
            ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s, %s: rank %d trained %d steps", mname, gangs[g].name, rank,
               STEPS);
        }
    }
}

/* The reference for model `which` (in this process, after every fork),
 * and the comparisons. */
static void compare_model(int which, const char *dir)
{
    const char *mname = models[which].name;
    IN = models[which].in;
    SPARSE = models[which].sparse;
    char sbuf[512], path[600];
    cds_err err;
    nn_trainer *t, *tj;
    float *ref = reference(which, 0, &t), *ref_join = reference(which, 1, &tj);
    size_t n = nn_model_nparams(nn_trainer_model(t));
    float *w[4][2] = {{NULL}};
    int G = gangs_of(which);
    for (int g = 0; g <= GANG_JOIN; g++)
        for (int rank = 0; rank < 2 && (g < G || g == GANG_JOIN); rank++) {
            snprintf(path, sizeof path, "%s/%s-g%d-r%d.bin", dir, mname, g, rank);
            w[g][rank] = load(path, n);
            unlink(path);
            if (!w[g][rank])
                tap_bail("a rank wrote no weights");
        }
    if (!ref || !ref_join)
        tap_bail("out of memory");
    ok(memcmp(w[0][0], w[0][1], n * sizeof(float)) == 0, "%s: the two ranks end bit-identical (%zu weights)", mname,
       n);
    ok(memcmp(w[0][0], w[1][0], n * sizeof(float)) == 0 && memcmp(w[1][0], w[1][1], n * sizeof(float)) == 0,
       "%s: bucketed and unbucketed reductions give the same bits", mname);
    if (G == 3)
        ok(memcmp(w[0][0], w[2][0], n * sizeof(float)) == 0 && memcmp(w[2][0], w[2][1], n * sizeof(float)) == 0,
           "%s: the embedding's rows all-gathered and its dense gradient all-reduced give the same bits", mname);
    const char *where = "";
    double rel = worst_relative(t, w[0][0], ref, &where);
    ok(rel <= 1e-5, "%s: W=2 with B/2 rows each equals one process with B rows after %d steps: worst %.3g relative "
                    "(%s), tolerance 1e-5", mname, STEPS, rel, where);
    ok(memcmp(w[GANG_JOIN][0], w[GANG_JOIN][1], n * sizeof(float)) == 0,
       "%s: with rank 1 joined (shadow steps) for the last %d steps, the ranks still end bit-identical", mname, JOIN);
    rel = worst_relative(t, w[GANG_JOIN][0], ref_join, &where);
    ok(rel <= 1e-5, "%s: ... and equal one process taking those steps on rank 0's half with halved gradients: worst "
                    "%.3g relative (%s), tolerance 1e-5", mname, rel, where);
    /* The join checks can fail: the joined steps move the weights away
     * from the plain run's by far more than that. */
    double apart = worst_relative(t, ref_join, ref, &where);
    ok(apart > 1e-4, "%s: the joined steps end %.3g relative away from the plain ones: the check is not vacuous",
       mname, apart);
    /* The check can fail: training moves the weights far more than that. */
    nn_trainer *fresh = nn_trainer_new(spec(which, 1, sbuf, sizeof sbuf), &err);
    size_t n0;
    float *w0 = fresh ? weights(fresh, &n0) : NULL;
    double moved = w0 ? worst_relative(t, w0, ref, &where) : 0;
    ok(moved > 1e-3, "%s: training moved the weights (%.3g relative from the start): the comparison is not vacuous",
       mname, moved);
    free(w0);
    nn_trainer_free(fresh);
    for (int g = 0; g <= GANG_JOIN; g++)
        for (int rank = 0; rank < 2; rank++)
            free(w[g][rank]);
    free(ref);
    free(ref_join);
    nn_trainer_free(t);
    nn_trainer_free(tj);
}

int main(void)
{
    char prefix[96], dir[] = "/tmp/test_ddp_reducer.XXXXXX";
    queue_conn *q = test_connect("ddpr", prefix, sizeof prefix);
    queue_close(q);
    if (!mkdtemp(dir))
        tap_bail("mkdtemp failed");
    int n_models = (int)(sizeof models / sizeof models[0]);
    for (int i = 0; i < n_models; i++)
        test_model(i, prefix, dir);
    nn_par_set_threads(1); /* the engine's first use in this process: every fork is done */
    for (int i = 0; i < n_models; i++)
        compare_model(i, dir);
    /* The sparse model's reference ran row-sparse (the optimiser's way), its
     * ranks both ways: the comparisons above cover them. */
    cds_err err;
    char sbuf[512];
    nn_trainer *sp = nn_trainer_new(spec(2, 1, sbuf, sizeof sbuf), &err);
    ddp_reducer *r = NULL;
    ok(sp && nn_model_param(nn_trainer_model(sp), 0)->row_grad, "the sparse model trains row-sparse alone");
    ddp_comm_opts o = {.scope = "solo", .rank = 0, .size = 1, .timeout_ms = 5000, .addr = "127.0.0.1"};
    ddp_comm *c = NULL;
    queue_conn *q1 = test_connect("ddpr1", prefix, sizeof prefix);
    o.q = q1;
    int made = sp && ddp_comm_gloo(&o, &c, &err) == 0 &&
               ddp_reducer_new_sparse(nn_trainer_model(sp), c, DDP_BUCKET_BYTES, DDP_SPARSE_DENSE, &r, &err) == 0;
    ok(made && !nn_model_param(nn_trainer_model(sp), 0)->row_grad && ddp_reducer_buckets(r) == 2 &&
           ddp_reducer_rows(r) == NULL,
       "embedding all-reduced dense: its gradient is dense, a bucket of its own (%zu buckets)%s%s",
       r ? ddp_reducer_buckets(r) : 0, made ? "" : ": ", made ? "" : err.msg);
    ddp_reducer_free(r);
    r = NULL;
    made = made && ddp_reducer_new(nn_trainer_model(sp), c, DDP_BUCKET_BYTES, &r, &err) == 0;
    ok(made && nn_model_param(nn_trainer_model(sp), 0)->row_grad && ddp_reducer_buckets(r) == 1 &&
           ddp_reducer_rows(r) != NULL,
       "by default its rows are exchanged: the gradient stays row-sparse, no bucket holds it (%zu buckets)",
       r ? ddp_reducer_buckets(r) : 0);
    ddp_reducer_free(r);
    ddp_comm_destroy(c);
    queue_close(q1);
    nn_trainer_free(sp);
    rmdir(dir);
    return tap_done();
}
