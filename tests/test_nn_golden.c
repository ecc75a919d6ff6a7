/* test_nn_golden: the engine against PyTorch, on the golden files that
 * tests/golden/gen_golden.py writes with Debian's python3-torch: on the CPU,
 * and with a device argument (cuda:0) through the CUDA backend, held to the
 * same tolerances (cuBLAS and cuDNN sum in other orders than OpenBLAS, and
 * land as far from float64 as PyTorch's own float32 does).
 *
 * For every file: build the model from the same spec, load PyTorch's
 * weights by name (which checks that names, order and shapes agree), run the
 * same batch and compare.  Errors are measured as max|ours - torch| /
 * max|torch| over a tensor, so one number per tensor is reported.
 *
 * Tolerances, and why.  tests/golden/README.md lists, per case, how far
 * PyTorch's own float32 result lies from its float64 one (the "gap"); an
 * engine that sums in another order lands about as far away, so each
 * tolerance is about ten times that gap, and never below 1e-5:
 *   logits, running statistics   2e-4 (resnet50: gap 2.1e-5 → 2e-4; all others ≤ 1.1e-5)
 *   loss                         1e-5 relative (a mean of logsumexp in double)
 *   gradients                    per case, grad_tolerance() below; a tensor's error is measured
 *                                against max(its own max, 1e-3 × the largest gradient of the
 *                                model), because some gradients are zero in exact arithmetic
 *                                (resnet50's bn1.bias) and hold only rounding noise
 *   10 optimiser steps: losses   1e-4 relative (worst gap 4.3e-5, the deliberately unstable SGD cnn)
 *   10 optimiser steps: weights  2e-4 of each tensor's largest weight (worst gap 1.7e-5)
 * The same two bounds hold the lazy Adam cases (SparseAdam on the sparse
 * fc0.weight, ten different batches; gaps in tests/golden/README.md), whose
 * untouched rows are also compared exactly. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden_reader.h"
#include "nn_model.h"
#include "nn_optim.h"
#include "tap.h"

static double max_abs(const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fabs((double)b[i]) > m ? fabs((double)b[i]) : m;
    return m;
}

/* max|a - b| / max(max|b|, floor). */
static double max_rel_floor(const float *a, const float *b, size_t n, double floor)
{
    double num = 0, den = floor;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= num)) /* NaN counts as infinitely wrong */
            num = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > den)
            den = fabs((double)b[i]);
    }
    return num / (den > 1e-12 ? den : 1e-12);
}

static double max_rel(const float *a, const float *b, size_t n)
{
    return max_rel_floor(a, b, n, 0);
}

/* Ten times the float32-vs-float64 gradient gap of each case (README), at least 1e-5. */
static double grad_tolerance(const char *name)
{
    static const struct {
        const char *name;
        double tol;
    } t[] = {{"mlp_dense", 1e-5}, {"mlp_sparse", 1e-5}, {"cnn", 1e-5},    {"resnet18", 1e-4},
             {"resnet34", 5e-3},  {"resnet50", 1e-2},   {"vgg11", 1e-5}, {"vgg16", 5e-4}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(name, t[i].name) == 0)
            return t[i].tol;
    return 1e-5;
}

/* Loads PyTorch's tensors into the model's parameters (or buffers) by name,
 * in order; returns the number of mismatches and prints them. */
static int load_named(nn_model *m, const golden_tensor *ts, int n, int buffers)
{
    size_t have = buffers ? nn_model_buffer_count(m) : nn_model_param_count(m);
    int bad = (size_t)n != have;
    if (bad)
        printf("# %s: model has %zu, torch has %d\n", buffers ? "buffers" : "params", have, n);
    for (int i = 0; i < n && (size_t)i < have; i++) {
        const char *name = buffers ? nn_model_buffer(m, i)->name : nn_model_param(m, i)->name;
        nn_tensor *t = buffers ? &nn_model_buffer(m, i)->t : &nn_model_param(m, i)->w;
        int same = strcmp(name, ts[i].name) == 0 && t->n == ts[i].n && t->ndim == ts[i].ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = t->shape[d] == ts[i].shape[d];
        if (!same) {
            printf("# %d: ours %s (%zu), torch %s (%zu)\n", i, name, t->n, ts[i].name, ts[i].n);
            bad++;
            continue;
        }
        nn_model_write(m, t, ts[i].data);
    }
    return bad;
}

/* A host copy of a model's tensor (device memory is read only by copies). */
static float *host_copy(nn_model *m, const nn_tensor *t)
{
    float *h = malloc((t->n ? t->n : 1) * sizeof *h);
    if (h)
        nn_model_read(m, t, h);
    return h;
}

static float *host_logits(nn_model *m, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof *h);
    if (h)
        nn_model_logits(m, h);
    return h;
}

typedef struct golden_case {
    char *name, *kind, *model, *train;
    double l2;
    golden_tensor x, y;
    golden_tensor *params, *buffers;
    int n_params, n_buffers;
} golden_case;

static int case_read(golden_file *g, golden_case *c)
{
    memset(c, 0, sizeof *c);
    c->name = golden_str(g->root, "case");
    c->kind = golden_str(g->root, "kind");
    c->model = golden_str(g->root, "model");
    c->train = golden_str(g->root, "train");
    c->l2 = golden_num(golden_get(g->root, "l2"));
    if (!c->name || !c->kind || !c->model || golden_tensor_read(golden_get(g->root, "x"), &c->x) != 0)
        return -1;
    if (golden_get(g->root, "y") && golden_tensor_read(golden_get(g->root, "y"), &c->y) != 0)
        return -1;
    c->n_params = golden_tensors(g->root, "params", &c->params);
    c->n_buffers = golden_get(g->root, "buffers") ? golden_tensors(g->root, "buffers", &c->buffers) : 0;
    return c->n_params < 0 || c->n_buffers < 0 ? -1 : 0;
}

static void case_free(golden_case *c)
{
    free(c->name);
    free(c->kind);
    free(c->model);
    free(c->train);
    free(c->x.data);
    free(c->y.data);
    golden_tensors_free(c->params, c->n_params);
    golden_tensors_free(c->buffers, c->n_buffers);
}

static nn_model *case_model(const golden_case *c, nn_place where)
{
    cds_err err;
    int n = (int)c->x.shape[0];
    nn_model *m = nn_model_new_at(c->model, n, 1, where, 0, &err);
    if (!m) {
        printf("# %s: %s\n", c->name, err.msg);
        return NULL;
    }
    int bad = load_named(m, c->params, c->n_params, 0) + load_named(m, c->buffers, c->n_buffers, 1);
    ok(bad == 0, "%s: %zu parameter tensors and %zu buffers match PyTorch's names, order and shapes", c->name,
       nn_model_param_count(m), nn_model_buffer_count(m));
    return m;
}

/* Forward over rows [r0, r0 + n) of the case's x and y. */
static int case_forward_rows(nn_model *m, const golden_case *c, int r0, int n, int train, nn_metrics *mt)
{
    cds_err err;
    size_t per = c->x.n / (size_t)c->x.shape[0];
    const float *x = c->x.is_int ? NULL : (const float *)c->x.data + (size_t)r0 * per;
    const int32_t *idx = c->x.is_int ? (const int32_t *)c->x.data + (size_t)r0 * per : NULL;
    int rc = nn_model_forward(m, x, idx, c->y.data ? (const int32_t *)c->y.data + r0 : NULL, n, train, 0, c->l2, mt,
                              &err);
    if (rc != 0)
        printf("# %s: %s\n", c->name, err.msg);
    return rc;
}

static int case_forward(nn_model *m, const golden_case *c, int train, nn_metrics *mt)
{
    return case_forward_rows(m, c, 0, (int)c->x.shape[0], train, mt);
}

/* Lazy cases: the rows of the embedding weight that PyTorch left exactly as
 * they were (rows no batch touched) must be exactly as they were here too,
 * with m and v still 0.  Returns how many such rows there are, -1 when one
 * of them differs. */
static int untouched_rows_kept(nn_optim *o, nn_model *m, const golden_case *c, const golden_tensor *after)
{
    for (size_t i = 0; i < nn_model_param_count(m); i++) {
        nn_param *p = nn_model_param(m, i);
        if (!p->embedding || (int)i >= c->n_params)
            continue;
        const float *before = c->params[i].data, *torch = after[i].data;
        float *mom = host_copy(m, nn_optim_state(o, 2 * i, NULL));
        float *vel = host_copy(m, nn_optim_state(o, 2 * i + 1, NULL));
        float *w = host_copy(m, &p->w);
        size_t cols = (size_t)p->w.shape[1];
        int kept = 0;
        for (size_t r = 0; kept >= 0 && r < (size_t)p->w.shape[0]; r++) {
            size_t at = r * cols;
            if (memcmp(before + at, torch + at, cols * sizeof(float)) != 0)
                continue;
            kept++;
            for (size_t j = 0; kept >= 0 && j < cols; j++)
                if (memcmp(&w[at + j], &before[at + j], sizeof(float)) != 0 || mom[at + j] != 0 || vel[at + j] != 0)
                    kept = -1;
        }
        free(mom);
        free(vel);
        free(w);
        return kept;
    }
    return -1;
}

static void check_fwdbwd(golden_file *g, const golden_case *c, nn_model *m)
{
    nn_metrics mt;
    if (case_forward(m, c, 1, &mt) != 0) {
        ok(0, "%s: forward", c->name);
        return;
    }
    golden_tensor logits;
    golden_tensor_read(golden_get(g->root, "logits"), &logits);
    float *lg = host_logits(m, logits.n);
    double e = max_rel(lg, logits.data, logits.n);
    free(lg);
    ok(e <= 2e-4, "%s: logits match PyTorch (max rel err %.2e, tolerance 2e-4)", c->name, e);
    free(logits.data);
    double want = golden_num(golden_get(g->root, "loss"));
    ok(fabs(mt.loss - want) <= 1e-5 * fabs(want), "%s: loss %.8f vs PyTorch %.8f (tolerance 1e-5 relative)", c->name,
       mt.loss, want);
    cds_err err;
    ok(nn_model_backward(m, &err) == 0, "%s: backward", c->name);
    golden_tensor *grads;
    int ng = golden_tensors(g->root, "grads", &grads);
    double worst = 0, gmax = 0, tol = grad_tolerance(c->name);
    const char *worst_name = "";
    for (int i = 0; i < ng; i++)
        gmax = fmax(gmax, max_abs(grads[i].data, grads[i].n));
    for (int i = 0; i < ng && (size_t)i < nn_model_param_count(m); i++) {
        nn_param *p = nn_model_param(m, i);
        float *full = host_copy(m, &p->g), *w = host_copy(m, &p->w);
        for (size_t j = 0; j < p->g.n; j++) /* the L2 term's gradient is the optimiser's; torch's includes it */
            full[j] += p->decay ? (float)(2 * c->l2) * w[j] : 0.0f;
        double eg = max_rel_floor(full, grads[i].data, p->g.n, 1e-3 * gmax);
        free(full);
        free(w);
        if (eg > worst) {
            worst = eg;
            worst_name = p->name;
        }
    }
    ok(ng == (int)nn_model_param_count(m) && worst <= tol,
       "%s: gradients of all %d parameters match PyTorch (worst %.2e in %s, tolerance %.0e)", c->name, ng, worst,
       worst_name, tol);
    golden_tensors_free(grads, ng);
    golden_tensor *after = NULL;
    int na = golden_get(g->root, "buffers_after") ? golden_tensors(g->root, "buffers_after", &after) : 0;
    worst = 0;
    for (int i = 0; i < na && (size_t)i < nn_model_buffer_count(m); i++) {
        float *b = host_copy(m, &nn_model_buffer(m, i)->t);
        double eb = max_rel(b, after[i].data, after[i].n);
        free(b);
        worst = eb > worst ? eb : worst;
    }
    if (na > 0)
        ok(na == (int)nn_model_buffer_count(m) && worst <= 2e-4,
           "%s: running statistics after the step match PyTorch (worst %.2e, tolerance 2e-4)", c->name, worst);
    golden_tensors_free(after, na);
}

static void check_infer(golden_file *g, const golden_case *c, nn_model *m)
{
    nn_metrics mt;
    golden_tensor logits;
    if (case_forward(m, c, 0, &mt) != 0 || golden_tensor_read(golden_get(g->root, "logits"), &logits) != 0) {
        ok(0, "%s: inference forward", c->name);
        return;
    }
    float *lg = host_logits(m, logits.n);
    double e = max_rel(lg, logits.data, logits.n);
    free(lg);
    ok(e <= 2e-4, "%s: inference logits (running statistics) match PyTorch (max rel err %.2e, tolerance 2e-4)",
       c->name, e);
    free(logits.data);
}

static void check_optim(golden_file *g, const golden_case *c, nn_model *m)
{
    nn_train_cfg cfg;
    cds_err err;
    if (!c->train || nn_train_cfg_parse(c->train, &cfg, &err) != 0) {
        ok(0, "%s: train spec parses (%s)", c->name, c->train ? err.msg : "missing");
        return;
    }
    nn_optim *o = nn_optim_new(m, &cfg, &err);
    if (!o)
        printf("# %s: %s\n", c->name, err.msg);
    const msgpack_object *losses = golden_get(g->root, "losses");
    int steps = losses && losses->type == MSGPACK_OBJECT_ARRAY ? (int)losses->via.array.size : 0;
    /* step_rows: step s trains on rows [s·step_rows, (s+1)·step_rows) of x; else all of x every step */
    int step_rows = (int)golden_num(golden_get(g->root, "step_rows"));
    double worst = 0;
    int failed = !o || steps == 0 || (step_rows > 0 && (int64_t)step_rows * steps != c->x.shape[0]);
    for (int s = 0; s < steps && !failed; s++) {
        nn_metrics mt;
        failed |= (step_rows > 0 ? case_forward_rows(m, c, s * step_rows, step_rows, 1, &mt)
                                 : case_forward(m, c, 1, &mt)) != 0 ||
                  nn_model_backward(m, &err) != 0 || nn_optim_step(o, nn_train_cfg_lr(&cfg, 0), &err) != 0;
        double want = golden_num(&losses->via.array.ptr[s]);
        double e = fabs(mt.loss - want) / fabs(want);
        if (e > worst)
            worst = e;
        printf("# %s step %d: loss %.7f, PyTorch %.7f\n", c->name, s, mt.loss, want);
    }
    ok(!failed && worst <= 1e-4, "%s: %d optimiser steps' losses match PyTorch (worst rel err %.2e, tolerance 1e-4)",
       c->name, steps, worst);
    golden_tensor *after = NULL;
    int na = golden_tensors(g->root, "params_after", &after);
    worst = 0;
    for (int i = 0; i < na && (size_t)i < nn_model_param_count(m); i++) {
        float *w = host_copy(m, &nn_model_param(m, i)->w);
        double e = max_rel(w, after[i].data, after[i].n);
        free(w);
        worst = e > worst ? e : worst;
    }
    ok(na == (int)nn_model_param_count(m) && worst <= 2e-4,
       "%s: weights after %d steps match PyTorch (worst %.2e, tolerance 2e-4)", c->name, steps, worst);
    if (cfg.lazy && o) {
        /* exact: an untouched row is never read into any arithmetic */
        int kept = na == (int)nn_model_param_count(m) ? untouched_rows_kept(o, m, c, after) : -1;
        ok(kept > 0, "%s: the %d embedding rows no batch touched keep their weights bit for bit, m and v 0 "
                     "(as PyTorch's SparseAdam leaves them)", c->name, kept);
    }
    golden_tensors_free(after, na);
    nn_optim_free(o);
    nn_train_cfg_free(&cfg);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* test_nn_golden [DEVICE]: on the CPU, or on DEVICE (cuda:0: the same
 * files and tolerances through the CUDA backend; a TAP skip where this
 * build or machine has none). */
int main(int argc, char **argv)
{
    nn_place where = NN_PLACE_CPU;
    cds_err err;
    char note[512];
    if (argc > 1 && nn_place_parse(argv[1], &where, NULL, &err) != 0) {
        fprintf(stderr, "test_nn_golden: %s\n", err.msg);
        return 2;
    }
    if (where.dev != NN_CPU && nn_place_pick(argv[1], &where, note, sizeof note, &err) != 0) {
        tap_skip_all(err.msg);
        return 0;
    }
    const char *root = getenv("CDS_SOURCE_ROOT");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/golden", root ? root : ".");
    DIR *d = opendir(dir);
    ok(d != NULL, "golden directory %s exists", dir);
    char *files[256];
    int nf = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) && nf < 256)
        if (strstr(e->d_name, ".msgpack"))
            files[nf++] = strdup(e->d_name);
    if (d)
        closedir(d);
    qsort(files, (size_t)nf, sizeof *files, by_name);
    ok(nf >= 10, "%d golden files found (expected at least 10)", nf);
    for (int i = 0; i < nf; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        golden_file g;
        golden_case c;
        if (golden_open(&g, path) != 0 || case_read(&g, &c) != 0) {
            ok(0, "%s: readable golden file", files[i]);
            free(files[i]);
            continue;
        }
        nn_model *m = case_model(&c, where);
        if (m && strcmp(c.kind, "fwdbwd") == 0)
            check_fwdbwd(&g, &c, m);
        else if (m && strcmp(c.kind, "infer") == 0)
            check_infer(&g, &c, m);
        else if (m && strcmp(c.kind, "optim") == 0)
            check_optim(&g, &c, m);
        else
            ok(0, "%s: known kind and a model (%s)", files[i], c.kind);
        nn_model_free(m);
        case_free(&c);
        golden_close(&g);
        free(files[i]);
    }
    return tap_done();
}
