/* train_gpu: the C half of bench/train-gpu: training samples/s and peak
 * device memory of the engine on a GPU, with Adam (lr 1e-3), on one fixed
 * random batch per row, the same rows, batches and step as
 * bench/train-gpu/torch_eager.py:
 *
 *   train_gpu [--device cuda:0|cpu] [--seconds S] [--rows a,b] [--tf32 0|1]
 *             [--graphs 0|1] [--batch B] [--image H] [--warmup N]
 *
 * Rows: resnet50 and vgg16 (docs/models.md) on 3×H×H (H 112), 1000
 * classes, batch 32 and 256; confA with dense and with sparse input, batch
 * 256.  Each row runs in float32 ("precision": "fp32") and with TF32 allowed
 * ("tf32": the train spec's "tf32": true, nn_model_new_at's tf32); --tf32
 * picks one.  Each row also runs in float32 with the step as a CUDA graph
 * (the train spec's "cuda_graphs": true: the batch staged first, then the
 * step captured once and replayed, as the trainer does); --graphs 0 leaves
 * those out, --graphs 1 runs graphed steps only (in the precisions --tf32
 * picks).  --batch and --image override every row's batch and image side
 * (hand runs and CPU smoke runs only: the run script and the PyTorch side
 * use the rows' own).
 *
 * A step is: the batch staged from the host (nn_model_forward_acc copies
 * it, as training does), forward with the mean cross-entropy, backward, Adam
 * step.  The batch's metrics stay on the device (nn_model_forward_acc), so
 * nothing waits for the device inside the timed region; after N warm-up
 * steps and a wait for the device, whole steps are queued back to back for
 * about S seconds and the clock stops after the next wait for the device
 * (nn_model_acc_get), so every timed step is done.  Peak memory is the
 * model context's (nn_ctx_mem: its arenas, convolution workspace and
 * staging buffers, not the libraries' own); null on the CPU.
 *
 * One JSON line per row, precision and graphing: {"row", "precision",
 * "graphs", "samples_per_s", "peak_mib", "batch", "steps", "seconds", "device",
 * "finite"}.  Exit status: 0, 1 when a row failed (its line on stderr,
 * the other rows still run), 2 for a usage error, 3 when the device named
 * is not here (one line on stderr). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cds_cli.h"
#include "cds_util.h"
#include "nn_backend.h"
#include "nn_optim.h"
#include "nn_rng.h"

#define EXIT_NO_DEVICE 3

enum { DIM = 7306, NNZ = 39 };

typedef struct row {
    const char *name, *arch; /* arch: resnet50, vgg16, or NULL for the confA rows (model below) */
    const char *model;
    int batch;
} row;

#define CONFA_DENSE "{\"arch\":\"mlp\",\"input\":[7306],\"hidden\":[1000,500],\"classes\":2}"
#define CONFA_SPARSE "{\"arch\":\"mlp\",\"sparse\":{\"dim\":7306,\"nnz\":39},\"hidden\":[1000,500],\"classes\":2}"

static const row rows[] = {
    {"resnet50-b32", "resnet50", NULL, 32}, {"resnet50-b256", "resnet50", NULL, 256},
    {"vgg16-b32", "vgg16", NULL, 32},       {"vgg16-b256", "vgg16", NULL, 256},
    {"confA-dense", NULL, CONFA_DENSE, 256}, {"confA-sparse", NULL, CONFA_SPARSE, 256},
};
#define N_ROWS (sizeof rows / sizeof rows[0])

typedef struct opts {
    nn_place where;
    double seconds;
    int batch, image, warmup;
} opts;

/* A graphed step's first two keys run as warm-ups and the next two are
 * captured: timing starts after them. */
#define GRAPH_WARMUP 5

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The row's batch: normal images, or for confA 39 distinct indices a row
 * (a randperm prefix) and, for the dense input, their multi-hot vectors. */
static void fill_batch(const row *r, int batch, size_t per, int sparse_dim, int classes, float *x, int32_t *idx,
                       int32_t *y)
{
    nn_rng g;
    nn_rng_seed(&g, 2);
    for (int n = 0; n < batch; n++) {
        y[n] = (int32_t)(nn_rng_next(&g) % (uint64_t)classes);
        if (!r->arch) {
            for (int k = 0; k < NNZ; k++) {
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
}

static int fail(const row *r, const char *prec, const cds_err *err)
{
    fprintf(stderr, "train_gpu: %s (%s): %s\n", r->name, prec, err->msg);
    return -1;
}

/* One training step; graphed: the batch staged, then the step bracketed
 * for the device's graphs (nn_train.c's train_step). */
static int step_once(nn_model *m, nn_optim *o, const float *x, const int32_t *idx, const int32_t *y, int batch,
                     int64_t step, int graphs, cds_err *err)
{
    nn_ctx *ctx = nn_model_ctx(m);
    if (graphs) {
        if (nn_model_stage(m, x, idx, y, batch, err) != 0)
            return -1;
        nn_ctx_graph_begin(ctx, nn_model_stage_key(m));
    }
    int bad = nn_model_forward_acc(m, x, idx, y, batch, 1, 0, 0.0, step, err) != 0 || nn_model_backward(m, err) != 0 ||
              nn_optim_step(o, 1e-3, err) != 0;
    if (graphs && nn_ctx_graph_end(ctx, !bad) != 0 && !bad) {
        if (nn_ctx_check(ctx, err) == 0)
            cds_errf(err, "a graphed step failed");
        return -1;
    }
    return bad ? -1 : 0;
}

static int measure(const row *r, int tf32, int graphs, const opts *op)
{
    const char *prec = tf32 ? (graphs ? "tf32, graphs" : "tf32") : (graphs ? "fp32, graphs" : "fp32");
    int batch = op->batch > 0 ? op->batch : r->batch;
    char spec[256];
    if (r->arch)
        snprintf(spec, sizeof spec, "{\"arch\":\"%s\",\"input\":[3,%d,%d],\"classes\":1000}", r->arch, op->image,
                 op->image);
    else
        snprintf(spec, sizeof spec, "%s", r->model);
    const char *train =
        tf32 ? "{\"optimizer\":\"adam\",\"lr\":0.001,\"tf32\":true}" : "{\"optimizer\":\"adam\",\"lr\":0.001}";
    cds_err err;
    nn_train_cfg cfg;
    if (nn_train_cfg_parse(train, &cfg, &err) != 0)
        return fail(r, prec, &err);
    nn_model *m = nn_model_new_at(spec, batch, 1, op->where, cfg.tf32, &err);
    if (!m) {
        nn_train_cfg_free(&cfg);
        return fail(r, prec, &err);
    }
    nn_optim *o = nn_optim_new(m, &cfg, &err);
    if (!o) {
        nn_model_free(m);
        nn_train_cfg_free(&cfg);
        return fail(r, prec, &err);
    }
    int shape[3], sparse_dim;
    int nd = nn_model_input(m, shape, &sparse_dim);
    size_t per = 1;
    for (int i = 0; i < nd; i++)
        per *= (size_t)shape[i];
    /* The batch in the device's pinned host memory, where the trainer's
     * data loader builds its batches (and PyTorch's side copies from pinned
     * memory too). */
    const nn_ctx *hc = nn_model_ctx(m);
    size_t xn = (size_t)batch * (sparse_dim ? 1 : per), in = (size_t)batch * NNZ, yn = (size_t)batch;
    float *x = nn_ctx_host_alloc(hc, xn * sizeof *x);
    int32_t *idx = nn_ctx_host_alloc(hc, in * sizeof *idx), *y = nn_ctx_host_alloc(hc, yn * sizeof *y);
    int rc = 0;
    if (!x || !idx || !y) {
        fprintf(stderr, "train_gpu: %s (%s): out of host memory for a batch of %d\n", r->name, prec, batch);
        rc = -1;
        goto out;
    }
    fill_batch(r, batch, per, sparse_dim, nn_model_classes(m), x, idx, y);
    const float *xin = sparse_dim ? NULL : x;
    const int32_t *iin = sparse_dim ? idx : NULL;
    nn_model_acc_set(m, &(nn_pass_acc){.bad_step = -1});
    nn_ctx *ctx = nn_model_ctx(m);
    int64_t step = 0, timed = 0;
    double t0 = 0, t1 = 0;
    nn_pass_acc acc;
    for (int phase = 0; phase < 2 && rc == 0; phase++) {
        if (phase == 1)
            t0 = now_s();
        for (;;) {
            if (step_once(m, o, xin, iin, y, batch, step, graphs, &err) != 0) {
                rc = fail(r, prec, &err);
                break;
            }
            step++;
            if (phase == 0 && step >= (graphs && op->warmup < GRAPH_WARMUP ? GRAPH_WARMUP : op->warmup))
                break;
            if (phase == 1 && (++timed, now_s() - t0 >= op->seconds))
                break;
        }
        nn_model_acc_get(m, &acc); /* waits for the device: every queued step is done */
        if (phase == 1)
            t1 = now_s();
        if (rc == 0 && nn_ctx_check(ctx, &err) != 0)
            rc = fail(r, prec, &err);
    }
    if (rc == 0) {
        char dev[16], peak[32] = "null";
        size_t mem_now, mem_peak;
        if (nn_ctx_mem(ctx, &mem_now, &mem_peak) == 0)
            snprintf(peak, sizeof peak, "%.1f", (double)mem_peak / (1024.0 * 1024.0));
        double s = t1 - t0;
        printf("{\"row\": \"%s\", \"precision\": \"%s\", \"graphs\": %s, \"samples_per_s\": %.1f, \"peak_mib\": %s, \"batch\": %d, "
               "\"steps\": %lld, \"seconds\": %.3f, \"device\": \"%s\", \"finite\": %s}\n",
               r->name, tf32 ? "tf32" : "fp32", graphs ? "true" : "false", (double)timed * batch / s, peak, batch, (long long)timed, s,
               nn_place_name(op->where, dev, sizeof dev), acc.bad_step < 0 ? "true" : "false");
        fflush(stdout);
    }
out:
    nn_ctx_host_free(hc, x, xn * sizeof *x);
    nn_ctx_host_free(hc, idx, in * sizeof *idx);
    nn_ctx_host_free(hc, y, yn * sizeof *y);
    nn_optim_free(o);
    nn_train_cfg_free(&cfg);
    nn_model_free(m);
    return rc;
}

static void row_names(char *buf, size_t len)
{
    buf[0] = '\0';
    for (size_t i = 0; i < N_ROWS; i++)
        snprintf(buf + strlen(buf), len - strlen(buf), "%s%s", i ? ", " : "", rows[i].name);
}

/* 1 if every name of the comma-separated list is a row (else prints which
 * is not). */
static int rows_known(const cds_cli *cli, const char *want)
{
    char list[512], names[256];
    snprintf(list, sizeof list, "%s", want);
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < N_ROWS && strcmp(rows[i].name, name) != 0)
            i++;
        if (i == N_ROWS) {
            row_names(names, sizeof names);
            cds_cli_usage(cli, "--rows: no row '%.40s' (the rows: %s)", name, names);
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
    enum { O_DEVICE = 1, O_SECONDS, O_ROWS, O_TF32, O_GRAPHS, O_BATCH, O_IMAGE, O_WARMUP };
    static const struct option long_opts[] = {{"device", required_argument, 0, O_DEVICE},
                                              {"seconds", required_argument, 0, O_SECONDS},
                                              {"rows", required_argument, 0, O_ROWS},
                                              {"tf32", required_argument, 0, O_TF32},
                                              {"graphs", required_argument, 0, O_GRAPHS},
                                              {"batch", required_argument, 0, O_BATCH},
                                              {"image", required_argument, 0, O_IMAGE},
                                              {"warmup", required_argument, 0, O_WARMUP},
                                              {"help", no_argument, 0, 'h'},
                                              {0, 0, 0, 0}};
    int64_t tf32 = -1, graphs = -1, batch = 0, image = 112, warmup = 3;
    double seconds = 3;
    const char *want = NULL, *device = "cuda:0";
    cds_cli cli;
    cds_cli_init(&cli, "train_gpu", NULL, argc, argv, "h", long_opts);
    int c;
    while ((c = cds_cli_next(&cli)) != CDS_CLI_END) {
        if (c == CDS_CLI_BAD)
            return cds_cli_fail(&cli);
        if (c == 'h') {
            puts("usage: train_gpu [--device cuda:0|cpu] [--seconds S] [--rows a,b] [--tf32 0|1] [--graphs 0|1]\n"
                 "                 [--batch B] [--image H] [--warmup N]\n"
                 "Training samples/s and peak device memory of the engine per row and precision, one JSON line\n"
                 "each (bench/train-gpu).  Defaults: cuda:0, 3 s a row, every row, fp32 and tf32 eager and fp32\n"
                 "as CUDA graphs, the rows' own batches, 112x112 images, 3 warm-up steps (5 graphed).  Exit 3:\n"
                 "the device is not here.");
            return 0;
        }
        if (c == O_DEVICE)
            device = cli.arg;
        if (c == O_SECONDS && (cds_parse_double(cli.arg, &seconds) != 0 || !(seconds > 0 && seconds <= 3600)))
            return cds_cli_usage(&cli, "--seconds must be a number above 0 and at most 3600");
        if (c == O_TF32 && cds_parse_i64(cli.arg, 0, 1, &tf32) != 0)
            return cds_cli_usage(&cli, "--tf32 must be 0 (float32 only) or 1 (TF32 allowed)");
        if (c == O_GRAPHS && cds_parse_i64(cli.arg, 0, 1, &graphs) != 0)
            return cds_cli_usage(&cli, "--graphs must be 0 (eager steps only) or 1 (graphed steps only)");
        if (c == O_BATCH && cds_parse_i64(cli.arg, 1, 1 << 16, &batch) != 0)
            return cds_cli_usage(&cli, "--batch must be a whole number from 1 to 65536");
        if (c == O_IMAGE && cds_parse_i64(cli.arg, 32, 1024, &image) != 0)
            return cds_cli_usage(&cli, "--image must be a whole number from 32 to 1024 (the image side)");
        if (c == O_WARMUP && cds_parse_i64(cli.arg, 1, 1000, &warmup) != 0)
            return cds_cli_usage(&cli, "--warmup must be a whole number from 1 to 1000");
        if (c == O_ROWS)
            want = cli.arg;
    }
    if (optind < argc)
        return cds_cli_usage(&cli, "unexpected argument '%.40s': train_gpu takes options only", argv[optind]);
    if (want && !rows_known(&cli, want))
        return 2;
    opts op = {.seconds = seconds, .batch = (int)batch, .image = (int)image, .warmup = (int)warmup};
    cds_err err;
    if (nn_place_parse(device, &op.where, NULL, &err) != 0)
        return cds_cli_usage(&cli, "--device: %s", err.msg);
    if (nn_place_pick(device, &op.where, NULL, 0, &err) != 0) {
        fprintf(stderr, "train_gpu: %s\n", err.msg);
        return EXIT_NO_DEVICE;
    }
    int rc = 0;
    for (size_t i = 0; i < N_ROWS; i++)
        for (int g = 0; g < 2; g++)
            for (int t = 0; t < 2; t++) {
                /* by default: both precisions eager, float32 graphed */
                int wanted = graphs < 0 ? (!g || !t) : graphs == g;
                if (selected(want, rows[i].name) && (tf32 < 0 || tf32 == t) && wanted)
                    rc |= measure(&rows[i], t, g, &op) != 0;
            }
    return rc;
}
