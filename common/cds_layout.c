/* cds_layout: see cds_layout.h.  Every path goes through one formatter that
 * refuses, rather than cuts, a path longer than its buffer; the names in a
 * model directory are read back with the same patterns they are written
 * with, so a name this module writes is one it recognises. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

#include "cds_layout.h"

__attribute__((format(printf, 4, 5))) static int path(char *out, size_t n, cds_err *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(out, n, fmt, ap);
    va_end(ap);
    if (len >= 0 && (size_t)len < n)
        return 0;
    if (n)
        out[0] = '\0';
    return cds_errf(err, "a path under DATA_ROOT would be %d bytes, more than the %zu this program takes: use a "
                         "shorter DATA_ROOT (--data-root) or shorter dataset and sweep names", len, n ? n - 1 : 0);
}

int cds_layout_dataset_dir(char *out, size_t n, const char *root, const char *dataset, cds_err *err)
{
    return path(out, n, err, "%s/datasets/%s", root, dataset);
}

int cds_layout_staging_dir(char *out, size_t n, const char *root, const char *dataset, const char *token,
                           cds_err *err)
{
    return path(out, n, err, "%s/datasets/.%s.incoming-%s", root, dataset, token);
}

int cds_layout_replaced_dir(char *out, size_t n, const char *staging_dir, const char *token, cds_err *err)
{
    return path(out, n, err, "%s.old-%s", staging_dir, token);
}

int cds_layout_dataset_json(char *out, size_t n, const char *dataset_dir, cds_err *err)
{
    return path(out, n, err, "%s/dataset.json", dataset_dir);
}

int cds_layout_split_dir(char *out, size_t n, const char *dataset_dir, const char *split, cds_err *err)
{
    return path(out, n, err, "%s/%s", dataset_dir, split);
}

int cds_layout_shard_dir(char *out, size_t n, const char *dataset_dir, const char *split, int shard, cds_err *err)
{
    return path(out, n, err, "%s/%s/shard-%d", dataset_dir, split, shard);
}

int cds_layout_split_shard(char *out, size_t n, const char *split_dir, int shard, cds_err *err)
{
    return path(out, n, err, "%s/shard-%d", split_dir, shard);
}

int cds_layout_shard_index(const char *name)
{
    int k;
    char tail;
    return sscanf(name, "shard-%d%c", &k, &tail) == 1 && k >= 0 ? k : -1;
}

int cds_layout_dataset_shard(char *out, size_t n, const char *root, const char *dataset, const char *split,
                             int shard, cds_err *err)
{
    return path(out, n, err, "%s/datasets/%s/%s/shard-%d", root, dataset, split, shard);
}

int cds_layout_results_csv(char *out, size_t n, const char *root, const char *sweep, cds_err *err)
{
    return path(out, n, err, "%s/sweeps/%s/results.csv", root, sweep);
}

int cds_layout_model_dir(char *out, size_t n, const char *root, const char *sweep, int model, cds_err *err)
{
    return path(out, n, err, "%s/sweeps/%s/models/%d", root, sweep, model);
}

int cds_layout_visit_ckpt(char *out, size_t n, const char *model_dir, int64_t version, const char *token,
                          cds_err *err)
{
    return path(out, n, err, "%s/v%" PRId64 "-%.*s.ckpt", model_dir, version, CDS_LAYOUT_TOKEN_CHARS, token);
}

int cds_layout_epoch_ckpt(char *out, size_t n, const char *model_dir, int epoch, cds_err *err)
{
    return path(out, n, err, "%s/epoch-%d.ckpt", model_dir, epoch);
}

int cds_layout_best_ckpt(char *out, size_t n, const char *model_dir, int epoch, cds_err *err)
{
    return path(out, n, err, "%s/best-e%d.ckpt", model_dir, epoch);
}

cds_layout_kind cds_layout_model_file(const char *name, int64_t *number)
{
    long long v;
    int e;
    char tail;
    if (sscanf(name, "v%lld-%c", &v, &tail) == 2) {
        *number = v;
        return CDS_LAYOUT_VISIT;
    }
    if (sscanf(name, "epoch-%d.ckp%c", &e, &tail) == 2) {
        *number = e;
        return CDS_LAYOUT_EPOCH;
    }
    if (sscanf(name, "best-e%d.ckp%c", &e, &tail) == 2) {
        *number = e;
        return CDS_LAYOUT_BEST;
    }
    return CDS_LAYOUT_OTHER;
}
