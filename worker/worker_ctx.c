/* worker_ctx: the services every runner of the worker may use, on the
 * worker's context (worker_int.h): the connection with its reconnection
 * (capped exponential backoff with jitter, given up when the worker must
 * stop), what the main thread is doing (for the registration and the
 * signal thread), the MOP slot the heartbeat renews, and the queue-job
 * runner's view (worker.h: should it abort, its log, its connection).
 *
 * This is the bottom of worker/: it calls nothing else in it.  The state it
 * touches is shared by the main, heartbeat and signal threads: `current`,
 * the held jobs and the slot under w->mu, the flags as atomics. */
#include <stdio.h>
#include <string.h>

#include "cds_util.h"
#include "worker_int.h"

int worker_run_should_abort(const worker_run_ctx *ctx)
{
    return atomic_load(&ctx->w->stop) >= 2 || atomic_load(&ctx->h->lost);
}

const cds_log *worker_run_log(const worker_run_ctx *ctx) { return &ctx->w->log; }
queue_conn *worker_run_queue(const worker_run_ctx *ctx) { return ctx->w->q; }

/* Reconnects *q with backoff until it works or `give_up` says so. */
int worker_reconnect_with_backoff(worker *w, queue_conn *q, const char *who, int (*give_up)(worker *))
{
    int64_t delay = 100;
    for (int attempt = 1;; attempt++) {
        cds_err err;
        if (queue_reconnect(q, &err) == 0) {
            cds_logf(&w->log, CDS_LOG_INFO, "%s: reconnected to Redis at %s", who, queue_url_redacted(q));
            return 0;
        }
        if (attempt == 1 || attempt % 10 == 0)
            cds_logf(&w->log, CDS_LOG_WARN, "%s: %s; retrying in %lld ms", who, err.msg, (long long)delay);
        int64_t until = cds_mono_ms() + (int64_t)(delay * (0.5 + 0.5 * cds_random_unit()));
        while (cds_mono_ms() < until) {
            if (give_up(w))
                return -1;
            cds_sleep_ms(50);
        }
        delay = delay * 2 > 5000 ? 5000 : delay * 2;
    }
}

/* The main thread stops retrying Redis when told to stop at once, or when
 * told to drain with nothing in hand to ack or commit. */
int worker_main_gives_up(worker *w)
{
    int stop = atomic_load(&w->stop);
    if (stop >= 2)
        return 1;
    if (stop == 0)
        return 0;
    pthread_mutex_lock(&w->mu);
    int idle = w->current[0] == '\0';
    pthread_mutex_unlock(&w->mu);
    return idle;
}

void worker_set_current(worker *w, const char *id)
{
    pthread_mutex_lock(&w->mu);
    snprintf(w->current, sizeof w->current, "%s", id ? id : "");
    pthread_mutex_unlock(&w->mu);
}

void worker_slot_set(worker *w, const char *sweep, const queue_mop_lease *l)
{
    pthread_mutex_lock(&w->mu);
    w->mop.active = l != NULL;
    w->mop.finishing = 0;
    w->mop.started_ms = cds_mono_ms();
    atomic_store(&w->mop.rows_done, 0);
    atomic_store(&w->mop.rows_total, 0);
    w->mop.progress_shown = 0;
    if (l) {
        snprintf(w->mop.sweep, sizeof w->mop.sweep, "%s", sweep);
        w->mop.lease = *l;
        atomic_store(&w->mop.lost, 0);
    }
    pthread_mutex_unlock(&w->mu);
}

/* From here on the main thread ends the lease in hand (commit, release,
 * fail, record): the heartbeat stops renewing it and does not call its end
 * a loss.  A renew already in flight that finds the lease ended reports
 * back after this is set, so it is never logged as lost. */
void worker_slot_finishing(worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->mop.finishing = 1;
    pthread_mutex_unlock(&w->mu);
}
