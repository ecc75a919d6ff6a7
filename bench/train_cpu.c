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

#include "cds_cli.h"
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

/* 1 if every name of the comma-separated list is a row (else prints which
 * is not). */
static int rows_known(const cds_cli *cli, const char *want)
{
    char list[512];
    snprintf(list, sizeof list, "%s", want);
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < sizeof rows / sizeof rows[0] && strcmp(rows[i].name, name) != 0)
            i++;
        if (i == sizeof rows / sizeof rows[0]) {
            cds_cli_usage(cli, "--rows: no row '%.40s' (the rows: confA-dense, confA-sparse, confA-sparse-lazy, "
                               "cnn, resnet18)", name);
            return 0;
        }
    }
    return 1;
}

static int selected(const char *want, const char *name)
{
    if (!want)
        return 1;
    char pad[512], key[64];
    snprintf(pad, sizeof pad, ",%s,", want);
    snprintf(key, sizeof key, ",%s,", name);
    return strstr(pad, key) != NULL;
}

int main(int argc, char **argv)
{
    enum { O_THREADS = 1, O_SECONDS, O_ROWS, O_BATCH };
    static const struct option opts[] = {{"threads", required_argument, 0, O_THREADS},
                                         {"seconds", required_argument, 0, O_SECONDS},
                                         {"rows", required_argument, 0, O_ROWS},
                                         {"batch", required_argument, 0, O_BATCH},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int64_t threads = 0, batch = 0;
    double seconds = 5;
    const char *want = NULL;
    cds_cli cli;
    cds_cli_init(&cli, "train_cpu", NULL, argc, argv, "h", opts);
    int c;
    while ((c = cds_cli_next(&cli)) != CDS_CLI_END) {
        if (c == CDS_CLI_BAD)
            return cds_cli_fail(&cli);
        if (c == 'h') {
            puts("usage: train_cpu --threads T [--seconds S] [--rows a,b] [--batch B]\n"
                 "Training samples/s of the CPU engine per row, one JSON line each (bench/train-cpu).");
            return 0;
        }
        if (c == O_THREADS && cds_parse_i64(cli.arg, 1, 1024, &threads) != 0)
            return cds_cli_usage(&cli, "--threads must be a whole number from 1 to 1024");
        if (c == O_SECONDS && (cds_parse_double(cli.arg, &seconds) != 0 || !(seconds > 0 && seconds <= 3600)))
            return cds_cli_usage(&cli, "--seconds must be a number above 0 and at most 3600");
        if (c == O_BATCH && cds_parse_i64(cli.arg, 1, 1 << 20, &batch) != 0)
            return cds_cli_usage(&cli, "--batch must be a whole number from 1 to 1048576");
        if (c == O_ROWS)
            want = cli.arg;
    }
    if (optind < argc)
        return cds_cli_usage(&cli, "unexpected argument '%.40s': train_cpu takes options only", argv[optind]);
    if (threads < 1)
        return cds_cli_usage(&cli, "--threads T is required");
    if (want && !rows_known(&cli, want))
        return 2;
    nn_par_set_threads((int)threads);
    int rc = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (selected(want, rows[i].name))
            rc |= measure(&rows[i], (int)threads, seconds, (int)batch) != 0;
    return rc;
}
