/* export_fixture DIR: checkpoints for tests/test_export.sh, and the engine's
 * logits to compare an exported model's with.
 *
 * For each model of the list (an mlp with dropout, the cnn, a resnet18 with
 * batch norm, a sparse mlp): a trainer, 3 Adam steps on random batches (so
 * weights, running statistics and the step count are not the
 * initialisation's), DIR/<name>.ckpt, then an evaluation-mode forward of 4
 * random rows: DIR/<name>.x (float32 samples, or int32 indices for the
 * sparse model) and DIR/<name>.logits (float32, 4 x classes), and
 * DIR/<name>.json (the model spec). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_par.h"
#include "nn_rng.h"
#include "nn_train.h"

static const struct {
    const char *name, *model;
    int in, classes, sparse;
} models[] = {
    {"mlp", "{\"arch\": \"mlp\", \"input\": [20], \"hidden\": [16, 12], \"classes\": 5, \"dropout\": 0.3}", 20, 5, 0},
    {"cnn", "{\"arch\": \"cnn\", \"input\": [1, 28, 28], \"classes\": 10, \"width\": 0.25}", 784, 10, 0},
    {"resnet18", "{\"arch\": \"resnet18\", \"input\": [3, 32, 32], \"classes\": 7, \"width\": 0.0625}", 3072, 7, 0},
    {"mlp_sparse", "{\"arch\": \"mlp\", \"sparse\": {\"dim\": 50, \"nnz\": 6}, \"hidden\": [16, 8], \"classes\": 3}", 6,
     3, 50},
};

static int write_file(const char *dir, const char *name, const char *ext, const void *p, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.%s", dir, name, ext);
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(p, 1, n, f) == n;
    return f && fclose(f) == 0 && ok ? 0 : -1;
}

static void batch(nn_rng *r, int in, int sparse, int classes, int n, float *x, int32_t *idx, int32_t *y)
{
    for (int i = 0; i < n * in; i++) {
        if (sparse)
            idx[i] = (int32_t)(nn_rng_next(r) % (uint64_t)sparse);
        else
            x[i] = (float)(nn_rng_unit(r) * 2.0 - 1.0);
    }
    for (int i = 0; y && i < n; i++)
        y[i] = (int32_t)(nn_rng_next(r) % (uint64_t)classes);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: export_fixture DIR\n");
        return 2;
    }
    nn_par_set_threads(1);
    for (size_t k = 0; k < sizeof models / sizeof models[0]; k++) {
        enum { B = 8, N = 4 };
        int in = models[k].in, sp = models[k].sparse;
        char spec[1024], path[1024];
        snprintf(spec, sizeof spec, "{\"model\": %s, \"train\": {\"optimizer\": \"adam\", \"lr\": 0.01, \"batch\": %d, "
                 "\"seed\": 3}}", models[k].model, B);
        cds_err err;
        nn_trainer *t = nn_trainer_new(spec, &err);
        float *x = calloc((size_t)B * (size_t)in, sizeof *x), *logits = calloc(N * 16, sizeof *logits);
        int32_t *idx = calloc((size_t)B * (size_t)in, sizeof *idx), y[B];
        if (!t || !x || !idx || !logits) {
            fprintf(stderr, "export_fixture: %s: %s\n", models[k].name, t ? "out of memory" : err.msg);
            return 1;
        }
        nn_rng r;
        nn_rng_seed(&r, 77 + k);
        for (int s = 0; s < 3; s++) {
            batch(&r, in, sp, models[k].classes, B, x, idx, y);
            if (nn_trainer_step_batch(t, sp ? NULL : x, sp ? idx : NULL, y, B, &err) != 0) {
                fprintf(stderr, "export_fixture: %s step %d: %s\n", models[k].name, s, err.msg);
                return 1;
            }
        }
        snprintf(path, sizeof path, "%s/%s.ckpt", argv[1], models[k].name);
        nn_metrics met;
        batch(&r, in, sp, models[k].classes, N, x, idx, NULL);
        if (nn_trainer_save(t, path, &err) != 0 ||
            nn_model_forward(nn_trainer_model(t), sp ? NULL : x, sp ? idx : NULL, NULL, N, 0, 0, 0.0, &met, &err) != 0) {
            fprintf(stderr, "export_fixture: %s: %s\n", models[k].name, err.msg);
            return 1;
        }
        nn_model_logits(nn_trainer_model(t), logits);
        if (write_file(argv[1], models[k].name, "x", sp ? (const void *)idx : (const void *)x,
                       (size_t)N * (size_t)in * 4) != 0 ||
            write_file(argv[1], models[k].name, "logits", logits, (size_t)N * (size_t)models[k].classes * 4) != 0 ||
            write_file(argv[1], models[k].name, "json", models[k].model, strlen(models[k].model)) != 0) {
            fprintf(stderr, "export_fixture: %s: cannot write under %s\n", models[k].name, argv[1]);
            return 1;
        }
        free(x);
        free(idx);
        free(logits);
        nn_trainer_free(t);
    }
    return 0;
}
