/* ddp_reducer: see ddp_reducer.h for the algorithm.
 *
 * Invariants: buckets[b] covers block floats [start, start + n) and the
 * parameters whose gradients lie there; param_bucket[i] names parameter i's
 * bucket (-1 for a parameter outside the block); left[b] counts the
 * parameters of bucket b not yet final in this step and is reset by
 * ddp_reducer_finish; a bucket is reduced exactly once per step. */
#include "ddp_reducer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bucket {
    size_t start, n; /* floats of the grad block */
    int params;      /* how many parameters it holds */
    int left;        /* of them, not final yet this step */
    int done;        /* reduced this step */
} bucket;

struct ddp_reducer {
    nn_model *m;
    ddp_comm *c;
    nn_tensor block;
    bucket *buckets;
    size_t n_buckets;
    int *param_bucket;
    float *host; /* staging, as long as the largest bucket */
    size_t host_n;
    int unbucketed; /* bucket_bytes 0 */
    int failed;
    cds_err first;
};

/* Where parameter i's gradient starts in the block (the layout of
 * nn_model_grad_block: each on the next multiple of 16 floats). */
static size_t offset_of(const nn_tensor *block, const nn_param *p)
{
    return (size_t)(p->g.data - block->data);
}

static int plan_buckets(ddp_reducer *r, size_t bucket_bytes, cds_err *err)
{
    size_t np = nn_model_param_count(r->m);
    r->param_bucket = malloc(np * sizeof *r->param_bucket);
    r->buckets = calloc(np ? np : 1, sizeof *r->buckets);
    if (!r->param_bucket || !r->buckets)
        return cds_err_nomem(err, "out of memory planning gradient buckets");
    size_t cap = bucket_bytes ? bucket_bytes / sizeof(float) : SIZE_MAX;
    size_t end = r->block.n; /* the current bucket's end, walking down */
    bucket *cur = NULL;
    for (size_t k = np; k-- > 0;) {
        nn_param *p = nn_model_param(r->m, k);
        r->param_bucket[k] = -1;
        if (p->embedding)
            return cds_errf(err, "parameter %s is a row-sparse embedding: data-parallel reduction of a sparse mlp's "
                                 "first layer is not supported yet (use a dense mlp, or MOP)", p->name);
        size_t off = offset_of(&r->block, p);
        if (!cur || (end - off > cap && cur->params > 0)) {
            if (cur) {
                cur->n = end - cur->start;
                end = cur->start;
            }
            cur = &r->buckets[r->n_buckets++];
        }
        cur->start = off;
        cur->params++;
        r->param_bucket[k] = (int)(cur - r->buckets);
    }
    if (cur)
        cur->n = end - cur->start;
    for (size_t b = 0; b < r->n_buckets; b++) {
        r->buckets[b].left = r->buckets[b].params;
        if (r->buckets[b].n > r->host_n)
            r->host_n = r->buckets[b].n;
    }
    if (r->host_n && !(r->host = malloc(r->host_n * sizeof(float))))
        return cds_err_nomem(err, "out of memory for a %zu-float gradient bucket", r->host_n);
    return 0;
}

/* Averages bucket b over the gang: device -> host -> all-reduce -> device. */
static void reduce_bucket(ddp_reducer *r, bucket *b)
{
    b->done = 1;
    if (r->failed || b->n == 0)
        return;
    nn_tensor view = r->block;
    view.data += b->start;
    view.n = b->n;
    view.ndim = 1;
    view.shape[0] = (int)b->n;
    nn_model_read(r->m, &view, r->host);
    if (ddp_allreduce(r->c, r->host, b->n, DDP_AVG, &r->first) != 0) {
        r->failed = 1;
        return;
    }
    nn_model_write(r->m, &view, r->host);
}

static void on_grad(void *ctx, size_t param)
{
    ddp_reducer *r = ctx;
    int b = r->param_bucket[param];
    if (b < 0)
        return;
    if (--r->buckets[b].left == 0)
        reduce_bucket(r, &r->buckets[b]);
}

int ddp_reducer_new(nn_model *m, ddp_comm *c, size_t bucket_bytes, ddp_reducer **out, cds_err *err)
{
    *out = NULL;
    ddp_reducer *r = calloc(1, sizeof *r);
    if (!r)
        return cds_err_nomem(err, "out of memory for a gradient reducer");
    r->m = m;
    r->c = c;
    r->block = nn_model_grad_block(m);
    if (plan_buckets(r, bucket_bytes, err) != 0) {
        ddp_reducer_free(r);
        return -1;
    }
    r->unbucketed = bucket_bytes == 0;
    if (r->unbucketed && r->n_buckets) /* one bucket, reduced after backward: the hook never counts it to 0 */
        r->buckets[0].left = -1;
    nn_model_set_grad_hook(m, on_grad, r);
    *out = r;
    return 0;
}

int ddp_reducer_finish(ddp_reducer *r, cds_err *err)
{
    for (size_t b = 0; b < r->n_buckets; b++) {
        if (!r->buckets[b].done)
            reduce_bucket(r, &r->buckets[b]);
        r->buckets[b].done = 0;
        r->buckets[b].left = r->unbucketed ? -1 : r->buckets[b].params;
    }
    int failed = r->failed;
    r->failed = 0;
    if (failed) {
        *err = r->first;
        return -1;
    }
    return 0;
}

static int broadcast_tensor(ddp_reducer *r, nn_tensor *t, int root, float **buf, size_t *cap, cds_err *err)
{
    if (t->n > *cap) {
        float *nb = realloc(*buf, t->n * sizeof(float));
        if (!nb)
            return cds_err_nomem(err, "out of memory broadcasting a %zu-float tensor", t->n);
        *buf = nb;
        *cap = t->n;
    }
    nn_model_read(r->m, t, *buf);
    if (ddp_broadcast(r->c, *buf, t->n, root, err) != 0)
        return -1;
    nn_model_write(r->m, t, *buf);
    return 0;
}

int ddp_reducer_broadcast_model(ddp_reducer *r, int root, cds_err *err)
{
    float *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < nn_model_param_count(r->m); i++)
        rc = broadcast_tensor(r, &nn_model_param(r->m, i)->w, root, &buf, &cap, err);
    for (size_t i = 0; rc == 0 && i < nn_model_buffer_count(r->m); i++)
        rc = broadcast_tensor(r, &nn_model_buffer(r->m, i)->t, root, &buf, &cap, err);
    free(buf);
    return rc;
}

size_t ddp_reducer_buckets(const ddp_reducer *r) { return r->n_buckets; }

void ddp_reducer_free(ddp_reducer *r)
{
    if (!r)
        return;
    if (r->m)
        nn_model_set_grad_hook(r->m, NULL, NULL);
    free(r->buckets);
    free(r->param_bucket);
    free(r->host);
    free(r);
}
