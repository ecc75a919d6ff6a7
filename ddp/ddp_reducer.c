/* ddp_reducer: see ddp_reducer.h for the algorithm.
 *
 * Two threads.  Backward's thread runs the hook: it counts a bucket's
 * parameters down and, at zero, appends the bucket to `queue`.  The
 * reducer's own thread takes buckets from the queue in order and averages
 * each over the gang (copy out, all-reduce, copy back) while backward goes
 * on.  ddp_reducer_finish appends what the hook did not (the unbucketed
 * case), waits until every bucket of the step is done, and resets.  With a
 * communicator on device memory (NCCL) and a model on a CUDA device there
 * is no copy: a bucket is reduced in place in the gradient block, after
 * the work queued so far on the model's stream (which has the bucket's
 * gradients: the hook ran after backward queued them).
 *
 * Invariants: buckets[b] covers block floats [start, start + n) and the
 * parameters whose gradients lie there; param_bucket[i] names parameter i's
 * bucket (-1 for a parameter outside the block); bucket.left and .queued
 * belong to backward's thread, queue/head/tail/done/stop to mu, and
 * failed/first to the reducer's thread until finish has waited for it; a
 * bucket is queued, and reduced, exactly once per step; the communicator is
 * used by one thread at a time (the reducer's during a step, the caller's
 * for broadcast_model between steps). */
#include "ddp_reducer.h"

#include "ddp_rows.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bucket {
    size_t start, n; /* floats of the grad block, or of ext */
    nn_tensor *ext;  /* a gradient outside the block (a sparse mlp's embedding, taken dense), or NULL */
    int params;      /* how many parameters it holds */
    int left;        /* of them, not final yet this step (-1: never counted down, unbucketed) */
    int queued;      /* handed to the reducer's thread this step */
} bucket;

struct ddp_reducer {
    nn_model *m;
    ddp_comm *c;
    nn_tensor block;
    bucket *buckets;
    size_t n_buckets;
    int *param_bucket;
    float *host; /* staging, as long as the largest bucket (NULL on device) */
    float *zeros; /* ddp_reducer_shadow's source, as long as the largest gradient it clears (made on first use) */
    size_t zeros_n;
    void *stream; /* on device: the model's stream, whose work a reduction waits for */
    size_t host_n;
    int unbucketed; /* bucket_bytes 0 */
    size_t last_early; /* buckets the hook handed over during the last step's backward */
    int failed;
    cds_err first;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t work, done_cv;
    size_t *queue; /* bucket numbers in the order backward finished them */
    size_t head, tail, done;
    int stop;
    ddp_rows *rows; /* a sparse mlp's embedding exchanged as rows (DDP_SPARSE_ROWS), or NULL */
};

/* Where parameter i's gradient starts in the block (the layout of
 * nn_model_grad_block: each on the next multiple of 16 floats). */
static size_t offset_of(const nn_tensor *block, const nn_param *p)
{
    return (size_t)(p->g.data - block->data);
}

static int plan_buckets(ddp_reducer *r, size_t bucket_bytes, ddp_sparse how, cds_err *err)
{
    size_t np = nn_model_param_count(r->m);
    r->param_bucket = malloc(np * sizeof *r->param_bucket);
    r->buckets = calloc(np ? np : 1, sizeof *r->buckets);
    r->queue = calloc(np ? np : 1, sizeof *r->queue);
    if (!r->param_bucket || !r->buckets || !r->queue)
        return cds_err_nomem(err, "out of memory planning gradient buckets");
    size_t cap = bucket_bytes ? bucket_bytes / sizeof(float) : SIZE_MAX;
    size_t end = r->block.n; /* the current bucket's end, walking down */
    bucket *cur = NULL;
    for (size_t k = np; k-- > 0;) {
        nn_param *p = nn_model_param(r->m, k);
        r->param_bucket[k] = -1;
        if (p->embedding && how == DDP_SPARSE_ROWS) {
            if (ddp_rows_new(r->m, k, r->c, &r->rows, err) != 0)
                return -1;
            continue; /* exchanged by ddp_reducer_finish, after the buckets */
        }
        if (p->embedding) {
            /* Its dense gradient lives apart from the block: a bucket of its
             * own, after which the block's next bucket starts afresh. */
            if (cur) {
                cur->n = end - cur->start;
                end = cur->start;
                cur = NULL;
            }
            bucket *e = &r->buckets[r->n_buckets];
            e->ext = &p->g;
            e->n = p->g.n;
            e->params = 1;
            r->param_bucket[k] = (int)r->n_buckets++;
            continue;
        }
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
    if (r->host_n && !r->stream && !(r->host = malloc(r->host_n * sizeof(float))))
        return cds_err_nomem(err, "out of memory for a %zu-float gradient bucket", r->host_n);
    return 0;
}

/* Averages bucket b over the gang: device -> host -> all-reduce -> device.
 * On the reducer's thread; after a failure the step's later buckets are
 * left alone (the communicator is broken). */
static void reduce_bucket(ddp_reducer *r, bucket *b)
{
    if (r->failed || b->n == 0)
        return;
    nn_tensor view = b->ext ? *b->ext : r->block;
    if (!b->ext) {
        view.data += b->start;
        view.n = b->n;
        view.ndim = 1;
        view.shape[0] = (int)b->n;
    }
    if (r->stream) {
        if (ddp_allreduce_device(r->c, view.data, b->n, DDP_AVG, r->stream, &r->first) != 0)
            r->failed = 1;
        return;
    }
    nn_model_read(r->m, &view, r->host);
    if (ddp_allreduce(r->c, r->host, b->n, DDP_AVG, &r->first) != 0) {
        r->failed = 1;
        return;
    }
    nn_model_write(r->m, &view, r->host);
}

static void *reducer_thread(void *arg)
{
    ddp_reducer *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (r->head == r->tail && !r->stop)
            pthread_cond_wait(&r->work, &r->mu);
        if (r->head == r->tail)
            break; /* stop, nothing left */
        size_t b = r->queue[r->head++];
        pthread_mutex_unlock(&r->mu);
        reduce_bucket(r, &r->buckets[b]);
        pthread_mutex_lock(&r->mu);
        r->done++;
        pthread_cond_signal(&r->done_cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Hands bucket b to the reducer's thread (backward's thread). */
static void enqueue(ddp_reducer *r, size_t b)
{
    r->buckets[b].queued = 1;
    pthread_mutex_lock(&r->mu);
    r->queue[r->tail++] = b;
    pthread_cond_signal(&r->work);
    pthread_mutex_unlock(&r->mu);
}

static void on_grad(void *ctx, size_t param)
{
    ddp_reducer *r = ctx;
    int b = r->param_bucket[param];
    if (b >= 0 && --r->buckets[b].left == 0)
        enqueue(r, (size_t)b);
}

int ddp_reducer_new(nn_model *m, ddp_comm *c, size_t bucket_bytes, ddp_reducer **out, cds_err *err)
{
    return ddp_reducer_new_sparse(m, c, bucket_bytes, DDP_SPARSE_DEFAULT, out, err);
}

int ddp_reducer_new_sparse(nn_model *m, ddp_comm *c, size_t bucket_bytes, ddp_sparse how, ddp_reducer **out,
                           cds_err *err)
{
    *out = NULL;
    ddp_reducer *r = calloc(1, sizeof *r);
    if (!r)
        return cds_err_nomem(err, "out of memory for a gradient reducer");
    r->m = m;
    r->c = c;
    r->block = nn_model_grad_block(m);
    if (ddp_comm_on_device(c)) {
        if (nn_model_ctx(m)->dev != NN_CUDA) {
            ddp_reducer_free(r);
            return cds_errf(err, "an NCCL gang reduces device memory: the model must be on a CUDA device "
                                 "(cds-worker --device cuda:N), or the gang must use Gloo");
        }
        r->stream = nn_model_ctx(m)->stream;
    }
    /* A sparse mlp's embedding gradient: row-sparse, exchanged as rows; or
     * taken dense and reduced as any other (PyTorch DDP does the same for
     * a dense EmbeddingBag), the optimiser's dense step equalling its
     * row-sparse one (nn_optim.h). */
    for (size_t i = 0; i < nn_model_param_count(m); i++)
        if (nn_model_param(m, i)->embedding && nn_model_set_row_grads(m, how == DDP_SPARSE_ROWS, err) != 0) {
            ddp_reducer_free(r);
            return -1;
        }
    r->unbucketed = bucket_bytes == 0;
    if (plan_buckets(r, bucket_bytes, how, err) != 0) {
        ddp_reducer_free(r);
        return -1;
    }
    /* Unbucketed: one bucket for the block (and the embedding's own),
     * queued by finish: the hook never counts them to 0. */
    for (size_t b = 0; r->unbucketed && b < r->n_buckets; b++)
        r->buckets[b].left = -1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->work, NULL);
    pthread_cond_init(&r->done_cv, NULL);
    if (pthread_create(&r->thread, NULL, reducer_thread, r) != 0) {
        ddp_reducer_free(r);
        return cds_errf(err, "cannot start the gradient reducer's thread");
    }
    r->thread_started = 1;
    nn_model_set_grad_hook(m, on_grad, r);
    *out = r;
    return 0;
}

/* ddp_reducer_finish; a shadow step's rows are none of this rank's. */
static int finish_step(ddp_reducer *r, int shadow, cds_err *err)
{
    r->last_early = 0;
    for (size_t b = 0; b < r->n_buckets; b++) {
        if (r->buckets[b].queued)
            r->last_early++;
        else
            enqueue(r, b);
    }
    pthread_mutex_lock(&r->mu);
    while (r->done < r->n_buckets)
        pthread_cond_wait(&r->done_cv, &r->mu);
    r->head = r->tail = r->done = 0;
    pthread_mutex_unlock(&r->mu);
    for (size_t b = 0; b < r->n_buckets; b++) {
        r->buckets[b].queued = 0;
        r->buckets[b].left = r->unbucketed ? -1 : r->buckets[b].params;
    }
    int failed = r->failed;
    r->failed = 0;
    if (failed) {
        *err = r->first;
        return -1;
    }
    /* The embedding's rows last, on this thread: the reducer's is idle now,
     * and the communicator serves one thread at a time. */
    if (!r->rows)
        return 0;
    return shadow ? ddp_rows_reduce_none(r->rows, r->c, err) : ddp_rows_reduce(r->rows, r->c, err);
}

int ddp_reducer_finish(ddp_reducer *r, cds_err *err)
{
    return finish_step(r, 0, err);
}

/* Writes zeros over gradient t (device memory is reached only through the
 * model's copies). */
static int zero_grad(ddp_reducer *r, nn_tensor *t, cds_err *err)
{
    if (t->n > r->zeros_n) {
        free(r->zeros);
        r->zeros_n = 0;
        if (!(r->zeros = calloc(t->n, sizeof(float))))
            return cds_err_nomem(err, "out of memory for %zu zero gradients", t->n);
        r->zeros_n = t->n;
    }
    nn_model_write(r->m, t, r->zeros);
    return 0;
}

int ddp_reducer_shadow(ddp_reducer *r, cds_err *err)
{
    int rc = r->block.n ? zero_grad(r, &r->block, err) : 0;
    for (size_t b = 0; rc == 0 && b < r->n_buckets; b++)
        if (r->buckets[b].ext)
            rc = zero_grad(r, r->buckets[b].ext, err);
    /* A failure here is this rank's (memory), but the gang waits for its
     * share of the step: the communicator is broken, as a failed reduction
     * breaks it, so every rank hears of it. */
    if (rc != 0) {
        ddp_comm_abort(r->c);
        return -1;
    }
    return finish_step(r, 1, err);
}

const ddp_rows *ddp_reducer_rows(const ddp_reducer *r) { return r->rows; }

/* Tensor t of m made the same on every rank: root's (root >= 0) or the
 * mean over the ranks (root < 0), through the host buffer *buf. */
static int sync_tensor(nn_model *m, ddp_comm *c, nn_tensor *t, int root, float **buf, size_t *cap, cds_err *err)
{
    if (ddp_comm_on_device(c) && nn_model_ctx(m)->dev == NN_CUDA) {
        void *after = nn_model_ctx(m)->stream;
        return root >= 0 ? ddp_broadcast_device(c, t->data, t->n, root, after, err)
                         : ddp_allreduce_device(c, t->data, t->n, DDP_AVG, after, err);
    }
    if (t->n > *cap) {
        float *nb = realloc(*buf, t->n * sizeof(float));
        if (!nb)
            return cds_err_nomem(err, "out of memory sharing a %zu-float tensor over the gang", t->n);
        *buf = nb;
        *cap = t->n;
    }
    nn_model_read(m, t, *buf);
    if ((root >= 0 ? ddp_broadcast(c, *buf, t->n, root, err) : ddp_allreduce(c, *buf, t->n, DDP_AVG, err)) != 0)
        return -1;
    nn_model_write(m, t, *buf);
    return 0;
}

static int sync_model(nn_model *m, ddp_comm *c, int root, cds_err *err)
{
    float *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < nn_model_param_count(m); i++)
        rc = sync_tensor(m, c, &nn_model_param(m, i)->w, root, &buf, &cap, err);
    for (size_t i = 0; rc == 0 && i < nn_model_buffer_count(m); i++)
        rc = sync_tensor(m, c, &nn_model_buffer(m, i)->t, root, &buf, &cap, err);
    free(buf);
    return rc;
}

int ddp_model_broadcast(nn_model *m, ddp_comm *c, int root, cds_err *err)
{
    if (root < 0 || root >= ddp_comm_size(c))
        return cds_errf(err, "broadcast of a model from rank %d: the gang has ranks 0 to %d", root,
                        ddp_comm_size(c) - 1);
    return sync_model(m, c, root, err);
}

int ddp_model_average(nn_model *m, ddp_comm *c, cds_err *err)
{
    return sync_model(m, c, -1, err);
}

int ddp_reducer_broadcast_model(ddp_reducer *r, int root, cds_err *err)
{
    return ddp_model_broadcast(r->m, r->c, root, err);
}

size_t ddp_reducer_buckets(const ddp_reducer *r) { return r->n_buckets; }
size_t ddp_reducer_last_early(const ddp_reducer *r) { return r->last_early; }

void ddp_reducer_free(ddp_reducer *r)
{
    if (!r)
        return;
    if (r->m)
        nn_model_set_grad_hook(r->m, NULL, NULL);
    if (r->thread_started) {
        pthread_mutex_lock(&r->mu);
        r->stop = 1;
        pthread_cond_signal(&r->work);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->thread, NULL);
        pthread_cond_destroy(&r->work);
        pthread_cond_destroy(&r->done_cv);
        pthread_mutex_destroy(&r->mu);
    }
    ddp_rows_free(r->rows);
    free(r->buckets);
    free(r->param_bucket);
    free(r->queue);
    free(r->host);
    free(r->zeros);
    free(r);
}
