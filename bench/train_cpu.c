/* train_cpu: the C half of bench/train-cpu: training samples/s of the CPU
 * engine with Adam (lr 1e-3), on one fixed random batch per row, the same
 * rows, batches and step as bench/train-cpu/torch_side.py:
 *
 *   train_cpu --threads T --seconds S [--rows a,b] [--batch B]
 *
 * --batch overrides every row's batch size (by hand only: the run script
 * and the PyTorch side always use the rows' own).
 *
 * confA-sparse-lazy is confA-sparse with "lazy": true (lazy Adam on the
 * sparse fc0.weight, ordinary Adam on the rest; PyTorch: SparseAdam on a
 * sparse-gradient EmbeddingBag).
 *
 * A step is forward with the mean cross-entropy, backward, Adam step; after
 * a warm-up, whole steps are timed back to back for about S seconds.  One
 * JSON line per row: {"row", "samples_per_s", "threads", "batch", "steps",
 * "seconds"}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "nn_optim.h"
#include "nn_par.h"
#include "nn_rng.h"

enum { DIM = 7306, NNZ = 39 };

typedef struct row {
    const char *name, *model;
    int batch;
    int lazy; /* "lazy": true (lazy Adam on the sparse fc0.weight) */
} row;

#define CONFA_SPARSE "{\"arch\":\"mlp\",\"sparse\":{\"dim\":7306,\"nnz\":39},\"hidden\":[1000,500],\"classes\":2}"

static const row rows[] = {
    {"confA-dense", "{\"arch\":\"mlp\",\"input\":[7306],\"hidden\":[1000,500],\"classes\":2}", 256, 0},
    {"confA-sparse", CONFA_SPARSE, 256, 0},
    {"confA-sparse-lazy", CONFA_SPARSE, 256, 1},
    {"cnn", "{\"arch\":\"cnn\",\"input\":[1,28,28],\"classes\":10}", 64, 0},
    {"resnet18", "{\"arch\":\"resnet18\",\"input\":[3,32,32],\"classes\":10,\"width\":1.0}", 32, 0},
};

static int measure(const row *r0, int threads, double seconds, int batch)
{
    row rb = *r0;
    if (batch > 0)
        rb.batch = batch;
    const row *r = &rb;
    cds_err err;
    nn_model *m = nn_model_new(r->model, r->batch, 1, &err);
    nn_train_cfg cfg;
    const char *train = r->lazy ? "{\"optimizer\":\"adam\",\"lr\":0.001,\"lazy\":true}"
                                : "{\"optimizer\":\"adam\",\"lr\":0.001}";
    if (!m || nn_train_cfg_parse(train, &cfg, &err) != 0) {
        fprintf(stderr, "train_cpu: %s: %s\n", r->name, err.msg);
        nn_model_free(m);
        return -1;
    }
    nn_optim *o = nn_optim_new(m, &cfg, &err);
    if (!o) {
        fprintf(stderr, "train_cpu: %s: %s\n", r->name, err.msg);
        nn_train_cfg_free(&cfg);
        nn_model_free(m);
        return -1;
    }
    int shape[3], sparse_dim;
    int nd = nn_model_input(m, shape, &sparse_dim);
    size_t per = 1;
    for (int i = 0; i < nd; i++)
        per *= (size_t)shape[i];
    float *x = calloc((size_t)r->batch * (sparse_dim ? 1 : per), sizeof *x);
    int32_t *idx = calloc((size_t)r->batch * NNZ, sizeof *idx), *y = calloc((size_t)r->batch, sizeof *y);
    nn_rng g;
    nn_rng_seed(&g, 2);
    for (int n = 0; n < r->batch; n++) {
        y[n] = (int32_t)(nn_rng_next(&g) % (uint64_t)nn_model_classes(m));
        if (strncmp(r->name, "confA", 5) == 0) {
            for (int k = 0; k < NNZ; k++) { /* 39 distinct indices, as a randperm prefix */
                int32_t v;
                int dup;
                do {
                    v = (int32_t)(nn_rng_next(&g) % DIM);
                    dup = 0;
                    for (int j = 0; j < k; j++)
                        dup |= idx[n * NNZ + j] == v;
                } while (dup);
                idx[n * NNZ + k] = v;
                if (!sparse_dim)
                    x[(size_t)n * DIM + (size_t)v] = 1.0f;
            }
        } else {
            for (size_t i = 0; i < per; i++)
                x[(size_t)n * per + i] = (float)nn_rng_normal(&g);
        }
    }
    const float *xin = sparse_dim ? NULL : x;
    const int32_t *iin = sparse_dim ? idx : NULL;
    int rc = 0;
    int64_t steps = 0, warm = 0, t0 = cds_mono_ms();
    int64_t warm_ms = (int64_t)(1000 * (seconds / 5 < 0.5 ? 0.5 : seconds / 5 > 2 ? 2 : seconds / 5));
    for (int timed = 0; timed < 2 && rc == 0; timed++) {
        int64_t start = cds_mono_ms();
        for (;;) {
            nn_metrics mt;
            if (nn_model_forward(m, xin, iin, y, r->batch, 1, 0, 0, &mt, &err) != 0 ||
                nn_model_backward(m, &err) != 0 || nn_optim_step(o, 1e-3, &err) != 0) {
                fprintf(stderr, "train_cpu: %s: %s\n", r->name, err.msg);
                rc = -1;
                break;
            }
            int64_t el = cds_mono_ms() - start;
            if (!timed && ++warm >= 3 && el >= warm_ms)
                break;
            if (timed && (++steps, el >= (int64_t)(seconds * 1000))) {
                double s = (double)el / 1000.0;
                printf("{\"row\": \"%s\", \"samples_per_s\": %.1f, \"threads\": %d, \"batch\": %d, \"steps\": %lld, "
                       "\"seconds\": %.3f}\n",
                       r->name, (double)steps * r->batch / s, threads, r->batch, (long long)steps, s);
                fflush(stdout);
                break;
            }
        }
    }
    (void)t0;
    free(x);
    free(idx);
    free(y);
    nn_optim_free(o);
    nn_train_cfg_free(&cfg);
    nn_model_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    int threads = 0;
    double seconds = 5;
    int batch = 0;
    const char *want = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--rows") == 0 && i + 1 < argc)
            want = argv[++i];
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            batch = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: train_cpu --threads T [--seconds S] [--rows a,b] [--batch B]\n");
            return 2;
        }
    }
    if (threads < 1 || seconds <= 0) {
        fprintf(stderr, "train_cpu: --threads must be at least 1 and --seconds above 0\n");
        return 2;
    }
    nn_par_set_threads(threads);
    int rc = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        if (want) {
            char pad[256];
            snprintf(pad, sizeof pad, ",%s,", want);
            char key[64];
            snprintf(key, sizeof key, ",%s,", rows[i].name);
            if (!strstr(pad, key))
                continue;
        }
        rc |= measure(&rows[i], threads, seconds, batch) != 0;
    }
    return rc;
}
