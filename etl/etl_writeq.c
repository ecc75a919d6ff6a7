/* etl_writeq: see etl_writeq.h.  Buffer states move
 *   FILLING (stream) -> QUEUED -> WRITING (writer) -> FREE -> FILLING
 * under one mutex; `queue` is a ring of QUEUED indexes in submit order, so
 * batches reach the shard in the order the rows arrived. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "etl_writeq.h"

#define NBUF 3

enum { FREE, FILLING, QUEUED, WRITING };

struct etl_writeq {
    etl_shard_writer *w;
    uint8_t *x[NBUF];
    int32_t *y[NBUF];
    size_t rows[NBUF];
    int state[NBUF];
    int queue[NBUF];
    int head, count;
    int fill;      /* the buffer the stream fills */
    int stopping;  /* no more batches will come */
    int failed;
    cds_err err;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static void *writer_main(void *arg)
{
    etl_writeq *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (q->count == 0 && !q->stopping)
            pthread_cond_wait(&q->cv, &q->mu);
        if (q->count == 0)
            break;
        int b = q->queue[q->head];
        q->head = (q->head + 1) % NBUF;
        q->count--;
        q->state[b] = WRITING;
        int failed = q->failed;
        pthread_mutex_unlock(&q->mu);
        cds_err err;
        int rc = failed ? 0 : etl_shard_append(q->w, q->x[b], q->y[b], q->rows[b], &err);
        pthread_mutex_lock(&q->mu);
        if (rc != 0 && !q->failed) {
            q->failed = 1;
            q->err = err;
        }
        q->state[b] = FREE;
        pthread_cond_broadcast(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

etl_writeq *etl_writeq_new(etl_shard_writer *w, size_t xrow, size_t batch_rows, cds_err *err)
{
    etl_writeq *q = calloc(1, sizeof *q);
    if (!q)
        return cds_err_nomem(err, "out of memory"), NULL;
    q->w = w;
    for (int i = 0; i < NBUF; i++) {
        q->x[i] = malloc(xrow * batch_rows > 0 ? xrow * batch_rows : 1);
        q->y[i] = malloc(sizeof(int32_t) * batch_rows);
        if (!q->x[i] || !q->y[i]) {
            etl_writeq_free(q);
            return cds_err_nomem(err, "out of memory for batches of %zu rows of %zu bytes", batch_rows, xrow), NULL;
        }
    }
    q->fill = 0;
    q->state[0] = FILLING;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    if (pthread_create(&q->thread, NULL, writer_main, q) != 0) {
        pthread_mutex_destroy(&q->mu);
        pthread_cond_destroy(&q->cv);
        q->thread = 0;
        for (int i = 0; i < NBUF; i++) {
            free(q->x[i]);
            free(q->y[i]);
        }
        free(q);
        return cds_errf(err, "cannot start the shard writer thread"), NULL;
    }
    return q;
}

void etl_writeq_batch(etl_writeq *q, uint8_t **x, int32_t **y)
{
    *x = q->x[q->fill];
    *y = q->y[q->fill];
}

int etl_writeq_submit(etl_writeq *q, size_t n, cds_err *err)
{
    pthread_mutex_lock(&q->mu);
    if (n > 0) {
        q->rows[q->fill] = n;
        q->state[q->fill] = QUEUED;
        q->queue[(q->head + q->count) % NBUF] = q->fill;
        q->count++;
        pthread_cond_broadcast(&q->cv);
        int next = -1;
        while (next < 0) {
            for (int i = 0; i < NBUF && next < 0; i++)
                if (q->state[i] == FREE)
                    next = i;
            if (next < 0)
                pthread_cond_wait(&q->cv, &q->mu);
        }
        q->fill = next;
        q->state[next] = FILLING;
    }
    int rc = 0;
    if (q->failed) {
        *err = q->err;
        rc = -1;
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int etl_writeq_finish(etl_writeq *q, cds_err *err)
{
    pthread_mutex_lock(&q->mu);
    while (q->count > 0 || q->state[0] == WRITING || q->state[1] == WRITING || q->state[2] == WRITING)
        pthread_cond_wait(&q->cv, &q->mu);
    int rc = 0;
    if (q->failed) {
        *err = q->err;
        rc = -1;
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

void etl_writeq_free(etl_writeq *q)
{
    if (!q)
        return;
    if (q->thread) {
        pthread_mutex_lock(&q->mu);
        q->stopping = 1;
        pthread_cond_broadcast(&q->cv);
        pthread_mutex_unlock(&q->mu);
        pthread_join(q->thread, NULL);
        pthread_mutex_destroy(&q->mu);
        pthread_cond_destroy(&q->cv);
    }
    for (int i = 0; i < NBUF; i++) {
        free(q->x[i]);
        free(q->y[i]);
    }
    free(q);
}
