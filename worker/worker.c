/* The cds-worker loop.
 *
 * Three threads, each with its own Redis connection where it needs one:
 *   main       claims up to `batch` jobs from its queues (round robin), runs
 *              them one after another, acks or fails each, and when there is
 *              nothing to claim waits on the queues' wake-up lists (BLPOP of at
 *              most a second: hiredis 0.14 cannot interrupt a blocking call, so
 *              a stop is noticed within a second); a MOP worker also writes,
 *              between steps, the cds_results rows that wait in Redis: once
 *              a second, and at once after it recorded an evaluation
 *              (worker_results.c);
 *   heartbeat  extends the leases of the jobs in hand every lease/3, marks a
 *              job lost when its lease is gone (cancelled or reaped, so the
 *              runner stops and never acks), renews the worker's registration
 *              key (with --metrics-port, reads its queues' depths in the
 *              same second), samples the GPU's NVML once a second, and runs
 *              the reaper pass under its mutex;
 *   signals    waits in sigwait() for SIGTERM/SIGINT: the first asks the main
 *              thread to finish the job in hand, ack it and exit; the second to
 *              release its lease at once (the job goes back to the queue, no
 *              attempt counted) and exit.
 * Signals are blocked in every thread but the signal thread, so no handler and
 * no global flag is needed.  The held-jobs table is the only state the threads
 * share, under one mutex.
 *
 * A lost Redis connection is retried with capped exponential backoff and
 * jitter; jobs in hand keep running meanwhile and are acked once Redis is back
 * (if their lease expired meanwhile the ack is refused and the job's other run
 * counts: delivery is at least once).
 *
 * This file is the top of worker/: it calls the runners (worker_jobs.c for
 * queue jobs, worker_mop.c for MOP leases) and the results tick; they reach
 * the worker only through its context (worker_ctx.c), never back here. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cds_util.h"
#include "nn_backend.h"
#include "nn_par.h"
#include "worker_metrics.h"
#include "worker_mop.h"
#include "worker_results.h"

/* ---- connections --------------------------------------------------------- */

static queue_conn *connect_once(const worker_cfg *cfg, cds_err *err)
{
    queue_opts o = {.url = cfg->url, .password_file = cfg->password_file, .prefix = cfg->prefix, .writes = 1};
    return queue_connect(&o, err);
}

/* The heartbeat thread retries Redis until the worker exits. */
static int helper_gives_up(worker *w) { return atomic_load(&w->done); }

/* ---- signals ------------------------------------------------------------- */

/* Threads that libraries start before main() (OpenBLAS starts its pool from
 * a constructor) do not have the stop signals blocked, so the kernel may
 * deliver SIGTERM to one of them.  This handler, the only one installed,
 * hands such a signal on to the signal thread, where sigwait() takes it.  Its
 * target is written once, before the handler is installed. */
static pthread_t signal_thread_id;

static void forward_signal(int sig)
{
    pthread_kill(signal_thread_id, sig);
}

static void install_forwarding(pthread_t target)
{
    signal_thread_id = target;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    sigfillset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

static void *signal_thread(void *arg)
{
    worker *w = arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&w->sigs, &sig) != 0)
            continue;
        if (sig == SIGUSR1) /* sent by worker_run itself at exit */
            return NULL;
        int level = atomic_fetch_add(&w->stop, 1) + 1;
        pthread_mutex_lock(&w->mu);
        char cur[64];
        snprintf(cur, sizeof cur, "%s", w->current);
        pthread_mutex_unlock(&w->mu);
        if (!cur[0])
            cds_logf(&w->log, CDS_LOG_INFO, "%s: no job in hand, exiting", strsignal(sig));
        else if (level == 1)
            cds_logf(&w->log, CDS_LOG_INFO, "%s: finishing job %s, then exiting (send it again to release the job now)",
                     strsignal(sig), cur);
        else
            cds_logf(&w->log, CDS_LOG_INFO, "%s again: releasing job %s and exiting now", strsignal(sig), cur);
    }
}

/* ---- heartbeat ----------------------------------------------------------- */

static json_t *registration(worker *w)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    char queues[1024] = "";
    for (size_t i = 0; i < w->cfg->n_queues; i++)
        snprintf(queues + strlen(queues), sizeof queues - strlen(queues), "%s%s", i ? "," : "", w->cfg->queues[i]);
    pthread_mutex_lock(&w->mu);
    char cur[64];
    snprintf(cur, sizeof cur, "%s", w->current);
    pthread_mutex_unlock(&w->mu);
    int stop = atomic_load(&w->stop);
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    /* Counters and the visit in flight, for jobctl top (docs/operations.md). */
    pthread_mutex_lock(&w->mu);
    int visit = w->mop.active && !w->mop.finishing;
    int64_t started = w->mop.started_ms;
    pthread_mutex_unlock(&w->mu);
    long long done = visit ? atomic_load(&w->mop.rows_done) : 0, total = visit ? atomic_load(&w->mop.rows_total) : 0;
    double secs = (double)(cds_mono_ms() - started) / 1000.0;
    /* One plain field each, as a registration's fields are strings. */
    char n[8][32];
    const long long v[7] = {atomic_load(&w->jobs_done), atomic_load(&w->jobs_failed), atomic_load(&w->visits_committed),
                            atomic_load(&w->evals_recorded), atomic_load(&w->tests_recorded), done, total};
    for (int i = 0; i < 7; i++)
        snprintf(n[i], sizeof n[i], "%lld", v[i]);
    snprintf(n[7], sizeof n[7], "%.1f", visit && secs > 0 ? (double)done / secs : 0.0);
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "host", host, "pid", pid,
                     "queues", queues, "job", cur, "state", stop ? "draining" : cur[0] ? "busy" : "idle", "device",
                     w->device, "jobs_done", n[0], "jobs_failed", n[1], "visits", n[2], "evals", n[3], "tests", n[4],
                     "rows_done", n[5], "rows_total", n[6], "samples_per_s", n[7]);
}

/* Extends the leases of every held job and flags the ones that are lost. */
static int beat_leases(worker *w, queue_conn *q, cds_err *err)
{
    pthread_mutex_lock(&w->mu);
    size_t n = w->n_held;
    queue_job *snap = n ? calloc(n, sizeof *snap) : NULL;
    size_t m = 0;
    for (size_t i = 0; snap && i < n; i++)
        if (!w->held[i].finished)
            snap[m++] = w->held[i].job; /* shallow: only id, token, queue are read */
    pthread_mutex_unlock(&w->mu);
    n = m;
    if (n == 0) {
        free(snap);
        return 0;
    }
    int *alive = calloc(n, sizeof *alive);
    int rc = alive ? queue_heartbeat(q, snap, n, w->cfg->lease_ms, alive, err) : cds_err_nomem(err, "out of memory");
    if (rc == 0) {
        pthread_mutex_lock(&w->mu);
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; !alive[i] && k < w->n_held; k++)
                if (strcmp(w->held[k].job.id, snap[i].id) == 0 && !w->held[k].finished &&
                    !atomic_exchange(&w->held[k].lost, 1))
                    cds_logf(&w->log, CDS_LOG_WARN, "lease on job %s lost (cancelled, or expired and requeued); abandoning it",
                             snap[i].id);
        pthread_mutex_unlock(&w->mu);
    }
    free(alive);
    free(snap);
    return rc;
}

/* With --metrics-port: the depth of every queue served, one pipelined
 * round trip, for the metrics thread (which never talks to Redis). */
static int beat_depths(worker *w, queue_conn *q, cds_err *err)
{
    if (w->cfg->metrics_port <= 0)
        return 0;
    int64_t d[WORKER_MAX_QUEUES];
    if (queue_waiting(q, w->cfg->queues, w->cfg->n_queues, d, err) != 0)
        return -1;
    for (size_t i = 0; i < w->cfg->n_queues; i++)
        atomic_store(&w->queue_depth[i], d[i]);
    return 0;
}

/* Samples between a visit's start and stop are what its res averages: a
 * failed one is simply not counted. */
static void beat_gpu(worker *w, int64_t now, int64_t *next)
{
    if (!w->nvml || now < *next)
        return;
    cds_nvml_sample s;
    cds_err err;
    (void)cds_nvml_sample_now(w->nvml, &s, &err);
    *next = now + 1000;
}

static void *heartbeat_thread(void *arg)
{
    worker *w = arg;
    cds_err err;
    queue_conn *q;
    int64_t delay = 100;
    while (!(q = connect_once(w->cfg, &err))) {
        /* Without this connection leases would silently expire: keep trying. */
        cds_logf(&w->log, CDS_LOG_WARN, "heartbeat: %s; retrying in %lld ms", err.msg, (long long)delay);
        for (int64_t until = cds_mono_ms() + delay; cds_mono_ms() < until; cds_sleep_ms(20))
            if (atomic_load(&w->done))
                return NULL;
        delay = delay * 2 > 5000 ? 5000 : delay * 2;
    }
    int64_t hb_every = w->cfg->lease_ms / 3 < 1000 ? w->cfg->lease_ms / 3 : 1000;
    int64_t next_hb = 0, next_reg = 0, next_gpu = 0, next_reap = cds_mono_ms() + w->cfg->reap_every_ms / 2;
    while (!atomic_load(&w->done)) {
        int64_t now = cds_mono_ms();
        int rc = 0;
        beat_gpu(w, now, &next_gpu);
        if (now >= next_hb || (w->cfg->shard >= 0 && worker_mop_progress_waiting(w))) {
            rc = beat_leases(w, q, &err);
            if (rc == 0 && w->cfg->shard >= 0)
                rc = worker_mop_beat(w, q, &err);
            next_hb = now + hb_every;
        }
        if (rc == 0 && now >= next_reg) {
            json_t *info = registration(w);
            rc = queue_worker_beat(q, w->cfg->id, info, 5000, &err);
            json_decref(info);
            if (rc == 0 && w->cfg->shard >= 0)
                rc = queue_mop_shard_beat(q, w->cfg->shard, &err);
            if (rc == 0)
                rc = beat_depths(w, q, &err);
            next_reg = now + 1000;
        }
        if (rc == 0 && now >= next_reap) {
            queue_maint_stats st;
            rc = queue_maintain(q, w->cfg->id, &w->cfg->maint, &st, &err);
            if (rc == 0 && (st.requeued || st.buried))
                cds_logf(&w->log, CDS_LOG_INFO, "reaper: requeued %ld expired leases, dead-lettered %ld jobs",
                         st.requeued, st.buried);
            if (rc == 0 && w->cfg->shard >= 0)
                rc = worker_mop_reap(w, q, &err);
            next_reap = now + w->cfg->reap_every_ms;
        }
        if (rc != 0) {
            if (queue_conn_broken(q)) {
                if (worker_reconnect_with_backoff(w, q, "heartbeat", helper_gives_up) != 0)
                    break;
            } else {
                cds_logf(&w->log, CDS_LOG_WARN, "heartbeat: %s", err.msg);
            }
        }
        cds_sleep_ms(20);
    }
    if (!queue_conn_broken(q))
        queue_worker_gone(q, w->cfg->id, &err);
    queue_close(q);
    return NULL;
}

/* ---- running jobs -------------------------------------------------------- */

static void release_job(worker *w, held *h)
{
    cds_err err;
    int released = 0;
    if (WITH_RECONNECT(w, queue_release(w->q, &h->job, &released, &err)) != 0)
        cds_logf(&w->log, CDS_LOG_WARN, "could not release job %s (%s); its lease will expire and it will be requeued",
                 h->job.id, err.msg);
    else if (released)
        cds_logf(&w->log, CDS_LOG_INFO, "released job %s back to queue %s", h->job.id, h->job.queue);
}

/* Acks the completed jobs among held[0..n) in one call: a batch of tiny jobs
 * costs one round trip, not one per job. */
static void ack_pending(worker *w, held *hs, size_t n)
{
    size_t k = 0;
    queue_job jobs[n];
    const char *results[n];
    size_t idx[n];
    for (size_t i = 0; i < n; i++)
        if (hs[i].to_ack) {
            jobs[k] = hs[i].job;
            results[k] = hs[i].result;
            idx[k++] = i;
        }
    if (k == 0)
        return;
    cds_err err;
    int acked[k];
    if (WITH_RECONNECT(w, queue_ack(w->q, jobs, k, results, acked, &err)) != 0) {
        cds_logf(&w->log, CDS_LOG_ERROR, "ack of %zu jobs failed: %s; their leases will expire and they will run again",
                 k, err.msg);
        memset(acked, 0, sizeof acked);
    }
    for (size_t j = 0; j < k; j++) {
        held *h = &hs[idx[j]];
        if (acked[j]) {
            w->jobs_done++;
            cds_logf(&w->log, CDS_LOG_INFO, "job %s %s done in %lld ms", h->job.id, h->job.type, (long long)h->ran_ms);
        }
        else
            cds_logf(&w->log, CDS_LOG_WARN,
                     "ack of job %s refused: the lease was lost (cancelled, or expired and given to another worker)",
                     h->job.id);
        h->to_ack = 0;
        free(h->result);
        h->result = NULL;
    }
}

static void fail_job(worker *w, held *h, const char *reason, int permanent, worker_dead_fn on_dead)
{
    cds_err err;
    queue_fail_result fr;
    int rc = WITH_RECONNECT(w, queue_fail(w->q, &h->job, reason, permanent, &fr, &err));
    if (rc == 0 && !fr.lost)
        w->jobs_failed++;
    if (rc != 0)
        cds_logf(&w->log, CDS_LOG_ERROR, "recording the failure of job %s failed: %s", h->job.id, err.msg);
    else if (fr.lost)
        cds_logf(&w->log, CDS_LOG_WARN, "job %s failed (%s) but its lease was already lost", h->job.id, reason);
    else if (fr.dead) {
        cds_logf(&w->log, CDS_LOG_WARN, "job %s failed (%s): dead-lettered after %lld attempts", h->job.id, reason,
                 (long long)fr.attempts);
        if (on_dead)
            on_dead(w->q, &h->job, reason, &w->log);
    }
    else
        cds_logf(&w->log, CDS_LOG_WARN, "job %s failed (%s): retry in %lld ms", h->job.id, reason,
                 (long long)fr.delay_ms);
}

/* From here on the job's lease may vanish (ack, fail, release) without the
 * heartbeat taking it for a loss. */
static void mark_finished(worker *w, held *h)
{
    pthread_mutex_lock(&w->mu);
    h->finished = 1;
    pthread_mutex_unlock(&w->mu);
}

static void run_one(worker *w, held *h)
{
    worker_set_current(w, h->job.id);
    worker_run_ctx ctx = {.w = w, .h = h};
    worker_dead_fn on_dead = NULL;
    cds_err err = {0};
    worker_run_fn run = worker_find_runner(&h->job, &on_dead, &err);
    char *result = NULL;
    int64_t t0 = cds_mono_ms();
    int rc;
    if (!run)
        rc = WORKER_RUN_PERMANENT;
    else
        rc = run(&ctx, &h->job, &result, &err);
    mark_finished(w, h);
    if (rc == 0) {
        h->to_ack = 1;
        h->result = result;
        h->ran_ms = cds_mono_ms() - t0;
        result = NULL;
    } else if (rc == WORKER_RUN_ABORTED) {
        if (!atomic_load(&h->lost))
            release_job(w, h);
    } else
        fail_job(w, h, err.msg[0] ? err.msg : "failed", rc == WORKER_RUN_PERMANENT, on_dead);
    free(result);
    worker_set_current(w, NULL);
}

/* Claims from the queues in turn, starting after the last one served. */
static size_t claim_some(worker *w, size_t *rr, int64_t *wait_ms)
{
    *wait_ms = 1000;
    for (size_t k = 0; k < w->cfg->n_queues; k++) {
        const char *qn = w->cfg->queues[(*rr + k) % w->cfg->n_queues];
        queue_job *jobs = calloc(w->cfg->batch, sizeof *jobs);
        size_t n = 0;
        queue_claim_info info = {0};
        cds_err err;
        if (!jobs || WITH_RECONNECT(w, queue_claim(w->q, qn, w->cfg->id, w->cfg->lease_ms, w->cfg->batch, jobs,
                                                   &n, &info, &err)) != 0) {
            if (jobs)
                cds_logf(&w->log, CDS_LOG_WARN, "claim from queue %s: %s", qn, err.msg);
            free(jobs);
            *wait_ms = 200;
            return 0;
        }
        if (n == 0 && info.next_due_ms >= 0) {
            /* A delayed job is due: promote it here rather than wait for the reaper. */
            if (info.next_due_ms <= info.now_ms) {
                queue_maint_stats st = {0};
                queue_promote(w->q, qn, &st, &err);
                *wait_ms = 0;
            } else if (info.next_due_ms - info.now_ms < *wait_ms) {
                *wait_ms = info.next_due_ms - info.now_ms;
            }
        }
        if (n > 0) {
            pthread_mutex_lock(&w->mu);
            for (size_t i = 0; i < n; i++) {
                w->held[i].job = jobs[i];
                atomic_store(&w->held[i].lost, 0);
                w->held[i].finished = 0;
            }
            w->n_held = n;
            pthread_mutex_unlock(&w->mu);
            free(jobs);
            *rr = (*rr + k + 1) % w->cfg->n_queues;
            return n;
        }
        free(jobs);
    }
    return 0;
}

static void drop_held(worker *w)
{
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->n_held; i++)
        queue_job_clear(&w->held[i].job);
    w->n_held = 0;
    pthread_mutex_unlock(&w->mu);
}

static int64_t serve(worker *w)
{
    size_t rr = 0;
    int64_t jobs_run = 0;
    int64_t idle_since = cds_mono_ms(), next_results = 0;
    while (atomic_load(&w->stop) == 0) {
        if (w->cfg->max_jobs && jobs_run >= w->cfg->max_jobs)
            break;
        /* cds_results rows kept in Redis: here, between steps, never on the
         * heartbeat thread; at once after an evaluation was recorded. */
        if (w->cfg->shard >= 0)
            worker_results_tick(w, &next_results);
        if (w->cfg->shard >= 0 && worker_mop_step(w) > 0) {
            jobs_run++;
            idle_since = cds_mono_ms();
            continue;
        }
        if (atomic_load(&w->stop) != 0)
            break;
        int64_t wait_ms;
        size_t n = claim_some(w, &rr, &wait_ms);
        size_t acked_upto = 0;
        int64_t batch_start = cds_mono_ms();
        for (size_t i = 0; i < n; i++) {
            held *h = &w->held[i];
            int stop = atomic_load(&w->stop);
            if (stop >= 2 || (stop == 1 && i > 0) || (w->cfg->max_jobs && jobs_run >= w->cfg->max_jobs)) {
                mark_finished(w, h);
                release_job(w, h); /* not started: give it back */
            } else if (atomic_load(&h->lost)) {
                mark_finished(w, h); /* cancelled before it started */
            } else {
                run_one(w, h);
                jobs_run++;
            }
            /* Flush acks at the end of the batch, and early when the batch is
             * slow so that finished work is not held back. */
            if (i + 1 == n || cds_mono_ms() - batch_start >= 20) {
                ack_pending(w, &w->held[acked_upto], i + 1 - acked_upto);
                acked_upto = i + 1;
                batch_start = cds_mono_ms();
            }
        }
        drop_held(w);
        if (n > 0) {
            idle_since = cds_mono_ms();
            continue;
        }
        if (w->cfg->idle_exit_ms && cds_mono_ms() - idle_since >= w->cfg->idle_exit_ms) {
            cds_logf(&w->log, CDS_LOG_INFO, "idle for %lld ms: exiting", (long long)w->cfg->idle_exit_ms);
            break;
        }
        int woken;
        cds_err err;
        if (w->cfg->shard >= 0) {
            /* MOP commits wake this list; queue jobs are picked up within
             * the second it waits at most. */
            if (WITH_RECONNECT(w, queue_mop_wait(w->q, wait_ms > 0 && wait_ms < 1000 ? (int)wait_ms : 1000, &err)) != 0)
                cds_sleep_ms(100);
        } else if (wait_ms > 0 &&
                   WITH_RECONNECT(w, queue_wait(w->q, w->cfg->queues, w->cfg->n_queues, (int)wait_ms, &woken, &err)) != 0) {
            cds_sleep_ms(100);
        }
    }
    /* The row of an evaluation recorded just before the loop ended gets its
     * try too, unless the worker must stop now. */
    if (w->cfg->shard >= 0 && w->results_row.pending && atomic_load(&w->stop) < 2)
        worker_results_tick(w, &next_results);
    return jobs_run;
}

int worker_run(const worker_cfg *cfg)
{
    worker w;
    memset(&w, 0, sizeof w);
    w.cfg = cfg;
    cds_log_init(&w.log, stderr, cfg->log_level, cfg->id);
    pthread_mutex_init(&w.mu, NULL);
    w.held = calloc(cfg->batch, sizeof *w.held);
    for (size_t i = 0; i < WORKER_MAX_QUEUES; i++)
        atomic_init(&w.queue_depth[i], -1);

    /* Block the stop signals here so every thread inherits the mask and only
     * the signal thread sees them. */
    sigemptyset(&w.sigs);
    sigaddset(&w.sigs, SIGTERM);
    sigaddset(&w.sigs, SIGINT);
    sigaddset(&w.sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &w.sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* The device is settled before anything connects: a worker told to use
     * a GPU it does not have stops here, with nothing leased or registered. */
    cds_err err;
    char note[512];
    if (nn_place_pick(cfg->device, &w.place, note, sizeof note, &err) != 0) {
        fprintf(stderr, "cds-worker: %s\n", err.msg);
        free(w.held);
        pthread_mutex_destroy(&w.mu);
        return 2;
    }
    nn_place_name(w.place, w.device, sizeof w.device);
    if (cfg->ddp_nccl && w.place.dev != NN_CUDA) {
        fprintf(stderr, "cds-worker: --ddp-transport nccl reduces GPU memory, and this worker trains on the %s: give "
                        "--device cuda:N, or use --ddp-transport gloo\n", w.device);
        free(w.held);
        pthread_mutex_destroy(&w.mu);
        return 2;
    }
    /* NVML for the worker's own card, before the metrics thread reads
     * it; said in the log once connected. */
    cds_err nvml_err = {0};
    if (w.place.dev == NN_CUDA)
        w.nvml = cds_nvml_open(w.place.index, &nvml_err);
    /* The metrics port before Redis: a port another process holds stops
     * the worker before it takes anything. */
    w.started_ms = cds_wall_ms();
    if (worker_metrics_start(&w, &err) != 0) {
        fprintf(stderr, "cds-worker: %s\n", err.msg);
        cds_nvml_close(w.nvml);
        free(w.held);
        pthread_mutex_destroy(&w.mu);
        return 2;
    }
    w.q = connect_once(cfg, &err);
    if (!w.q) {
        fprintf(stderr, "cds-worker: %s\n", err.msg);
        queue_close(w.q);
        atomic_store(&w.done, 1);
        worker_metrics_stop(&w);
        cds_nvml_close(w.nvml);
        free(w.held);
        return 2;
    }
    char queues[512] = "";
    for (size_t i = 0; i < cfg->n_queues; i++)
        snprintf(queues + strlen(queues), sizeof queues - strlen(queues), "%s%s", i ? "," : "", cfg->queues[i]);
    cds_logf(&w.log, CDS_LOG_INFO, "serving queues %s on %s (prefix %s, lease %lld ms, batch %zu)", queues,
             queue_url_redacted(w.q), queue_prefix(w.q), (long long)cfg->lease_ms, cfg->batch);
    /* A WARN, not an INFO: a GPU node whose driver broke would otherwise
     * train on its CPU unnoticed; --device cpu says it is meant. */
    if (note[0])
        cds_logf(&w.log, CDS_LOG_WARN, "%s (give --device cpu when that is meant)", note);
    if (w.nvml)
        cds_logf(&w.log, CDS_LOG_INFO, "GPU utilisation and memory of %s from NVML (%s)", w.device,
                 cds_nvml_name(w.nvml));
    else if (w.place.dev == NN_CUDA)
        cds_logf(&w.log, CDS_LOG_WARN, "%s; resource records and metrics go without GPU utilisation and memory",
                 nvml_err.msg);
    /* Every engine pass this worker runs (a visit, an evaluation, a
     * prediction's part) takes its cores, so all share the setting. */
    nn_par_set_threads(cfg->threads);
    if (cfg->shard >= 0) {
        cds_logf(&w.log, CDS_LOG_INFO, "serving shard %d of every MOP sweep on %s (data root %s, %d training threads)",
                 cfg->shard, w.device, cfg->data_root, nn_par_threads());
    }

    pthread_t sig_t, hb_t;
    pthread_create(&sig_t, NULL, signal_thread, &w);
    install_forwarding(sig_t);
    pthread_create(&hb_t, NULL, heartbeat_thread, &w);
    int64_t n = serve(&w);
    atomic_store(&w.done, 1);
    pthread_join(hb_t, NULL);
    worker_metrics_stop(&w);
    pthread_kill(sig_t, SIGUSR1);
    pthread_join(sig_t, NULL);
    (void)n;
    cds_logf(&w.log, CDS_LOG_INFO, "stopped: %lld jobs done, %lld failed; %lld visits committed, %lld evaluations and "
             "%lld test results recorded", (long long)atomic_load(&w.jobs_done), (long long)atomic_load(&w.jobs_failed),
             (long long)atomic_load(&w.visits_committed), (long long)atomic_load(&w.evals_recorded),
             (long long)atomic_load(&w.tests_recorded));
    queue_close(w.q);
    worker_results_db_free(w.results_db);
    cds_nvml_close(w.nvml);
    free(w.held);
    pthread_mutex_destroy(&w.mu);
    return 0;
}
