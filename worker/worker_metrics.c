/* worker_metrics: `cds-worker --metrics-port P`, the worker's state in
 * Prometheus's text format (version 0.0.4) at GET /metrics (DESIGN.md §10,
 * docs/operations.md).
 *
 * One thread of its own: it accepts a connection (polling, so the worker's
 * end stops it within 200 ms), reads the request line with a short
 * time-out, answers and closes: a scrape is one small response, so one
 * thread serves any scrape interval.  It reads the worker only under its
 * mutex or through atomics, never Redis, so a scrape costs the queue
 * nothing (the queue depths are the heartbeat's last reading).  The port
 * binds --metrics-bind, 127.0.0.1 unless told: what the worker does is
 * not the whole network's to read.
 *
 * What it says: the worker (id, device, shard, host as labels of an info
 * gauge), its state (idle, busy, draining), what it holds (the job or the
 * model, as a label), the visit in flight (rows done and to do, rows a
 * second since it began), counters of jobs done and failed, visits (gang
 * epochs included), evaluations and test scores, its uptime, the
 * process's CPU seconds and resident memory, the jobs waiting in each queue
 * it serves, and on a GPU with NVML the card's utilisation and memory in
 * use, sampled by the scrape (absent without NVML: no GPU, or no driver). */
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cds_util.h"
#include "worker_int.h"
#include "worker_metrics.h"

struct worker_metrics {
    worker *w;
    int fd;
    pthread_t thread;
};

/* A label value, escaped as the format wants (\\, \", \n). */
static void label(char *out, size_t n, const char *v)
{
    size_t k = 0;
    for (; v && *v && k + 3 < n; v++) {
        if (*v == '\\' || *v == '"') {
            out[k++] = '\\';
            out[k++] = *v;
        } else if (*v == '\n') {
            out[k++] = '\\';
            out[k++] = 'n';
        } else {
            out[k++] = *v;
        }
    }
    out[k] = '\0';
}

static void metric(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static long long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "re");
    long long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%lld %lld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * sysconf(_SC_PAGESIZE);
}

/* The card now; nothing when the worker has no NVML, or the sample
 * fails (a gauge that is absent is not a gauge at 0). */
static void gpu_gauges(FILE *f, worker *w, const char *id, const char *dev)
{
    cds_nvml_sample s;
    cds_err err;
    if (!w->nvml || cds_nvml_sample_now(w->nvml, &s, &err) != 0)
        return;
    metric(f, "cds_worker_gpu_utilization_ratio", "gauge",
           "Share of NVML's last sample period the worker's GPU ran kernels (0 to 1).");
    fprintf(f, "cds_worker_gpu_utilization_ratio{worker=\"%s\",device=\"%s\"} %.2f\n", id, dev, s.util_pct / 100.0);
    metric(f, "cds_worker_gpu_memory_used_bytes", "gauge",
           "Memory in use on the worker's GPU, by every process on it.");
    fprintf(f, "cds_worker_gpu_memory_used_bytes{worker=\"%s\",device=\"%s\"} %llu\n", id, dev,
            (unsigned long long)s.mem_used);
}

/* One sample per queue the heartbeat has read (once a second). */
static void queue_gauges(FILE *f, worker *w, const char *id)
{
    metric(f, "cds_worker_queue_depth", "gauge", "Jobs waiting in each queue the worker serves, read once a second.");
    for (size_t i = 0; i < w->cfg->n_queues; i++) {
        long long d = atomic_load(&w->queue_depth[i]);
        char qn[2 * QUEUE_NAME_MAX];
        label(qn, sizeof qn, w->cfg->queues[i]);
        if (d >= 0)
            fprintf(f, "cds_worker_queue_depth{worker=\"%s\",queue=\"%s\"} %lld\n", id, qn, d);
    }
}

/* The page, into a malloc'd buffer (*len bytes). */
static char *page(worker *w, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f)
        return NULL;
    pthread_mutex_lock(&w->mu);
    char current[sizeof w->current], sweep[QUEUE_SWEEP_ID_MAX];
    snprintf(current, sizeof current, "%s", w->current);
    int visit = w->mop.active && !w->mop.finishing;
    snprintf(sweep, sizeof sweep, "%s", visit ? w->mop.sweep : "");
    int64_t started = w->mop.started_ms;
    pthread_mutex_unlock(&w->mu);
    long long done = atomic_load(&w->mop.rows_done), total = atomic_load(&w->mop.rows_total);
    int stop = atomic_load(&w->stop);
    const char *state = stop ? "draining" : current[0] ? "busy" : "idle";
    char id[256], dev[64], host[256] = "", hl[300], cur[160];
    gethostname(host, sizeof host - 1);
    label(id, sizeof id, w->cfg->id);
    label(dev, sizeof dev, w->device);
    label(hl, sizeof hl, host);
    label(cur, sizeof cur, current);

    metric(f, "cds_worker_info", "gauge", "The worker: its id, device, shard (-1: none) and host.");
    fprintf(f, "cds_worker_info{worker=\"%s\",device=\"%s\",shard=\"%d\",host=\"%s\"} 1\n", id, dev, w->cfg->shard,
            hl);
    metric(f, "cds_worker_state", "gauge", "1 for the state the worker is in: idle, busy or draining.");
    static const char *const states[] = {"idle", "busy", "draining"};
    for (int i = 0; i < 3; i++)
        fprintf(f, "cds_worker_state{worker=\"%s\",state=\"%s\"} %d\n", id, states[i], strcmp(state, states[i]) == 0);
    metric(f, "cds_worker_current", "gauge", "What the worker holds: a queue job's id or a sweep's model, as a label.");
    if (current[0])
        fprintf(f, "cds_worker_current{worker=\"%s\",what=\"%s\"} 1\n", id, cur);
    metric(f, "cds_worker_visit_rows", "gauge", "The visit in flight: rows done and rows it has (0 between visits).");
    fprintf(f, "cds_worker_visit_rows{worker=\"%s\",of=\"done\"} %lld\n", id, visit ? done : 0);
    fprintf(f, "cds_worker_visit_rows{worker=\"%s\",of=\"total\"} %lld\n", id, visit ? total : 0);
    double secs = visit ? (double)(cds_mono_ms() - started) / 1000.0 : 0.0;
    metric(f, "cds_worker_samples_per_second", "gauge", "Rows a second of the visit in flight since it began.");
    fprintf(f, "cds_worker_samples_per_second{worker=\"%s\"} %.3f\n", id, visit && secs > 0 ? (double)done / secs : 0.0);
    metric(f, "cds_worker_jobs_total", "counter", "Queue jobs run to the end: acked (done) or failed.");
    fprintf(f, "cds_worker_jobs_total{worker=\"%s\",outcome=\"done\"} %lld\n", id, (long long)atomic_load(&w->jobs_done));
    fprintf(f, "cds_worker_jobs_total{worker=\"%s\",outcome=\"failed\"} %lld\n", id,
            (long long)atomic_load(&w->jobs_failed));
    metric(f, "cds_worker_visits_total", "counter", "MOP visits (and gang epochs) this worker committed.");
    fprintf(f, "cds_worker_visits_total{worker=\"%s\"} %lld\n", id, (long long)atomic_load(&w->visits_committed));
    metric(f, "cds_worker_evaluations_total", "counter", "Evaluations of finished epochs recorded.");
    fprintf(f, "cds_worker_evaluations_total{worker=\"%s\"} %lld\n", id, (long long)atomic_load(&w->evals_recorded));
    metric(f, "cds_worker_tests_total", "counter", "Test-split scores of finished sweeps recorded.");
    fprintf(f, "cds_worker_tests_total{worker=\"%s\"} %lld\n", id, (long long)atomic_load(&w->tests_recorded));
    metric(f, "cds_worker_uptime_seconds", "gauge", "Seconds since the worker started.");
    fprintf(f, "cds_worker_uptime_seconds{worker=\"%s\"} %.3f\n", id, (double)(cds_wall_ms() - w->started_ms) / 1000.0);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    metric(f, "cds_worker_cpu_seconds_total", "counter", "CPU time of the worker process, user and system.");
    fprintf(f, "cds_worker_cpu_seconds_total{worker=\"%s\"} %.3f\n", id,
            (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
    metric(f, "cds_worker_resident_bytes", "gauge", "Resident memory of the worker process.");
    fprintf(f, "cds_worker_resident_bytes{worker=\"%s\"} %lld\n", id, rss_bytes());
    queue_gauges(f, w, id);
    gpu_gauges(f, w, id, dev);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* A scraper that went away loses its answer: nothing else to do. */
static void write_all(int fd, const char *p, size_t n) { (void)cds_write_all(fd, p, n); }

/* One connection: its request line (1 s at most), one answer. */
static void serve_one(worker *w, int c)
{
    char req[1024];
    size_t n = 0;
    while (n < sizeof req - 1 && !memchr(req, '\n', n)) {
        struct pollfd p = {.fd = c, .events = POLLIN};
        if (poll(&p, 1, 1000) <= 0)
            break;
        ssize_t k = read(c, req + n, sizeof req - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    req[n] = '\0';
    char head[256];
    if (strncmp(req, "GET /metrics ", 13) == 0 || strncmp(req, "GET /metrics?", 13) == 0) {
        size_t len = 0;
        char *body = page(w, &len);
        if (body) {
            snprintf(head, sizeof head, "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n", len);
            write_all(c, head, strlen(head));
            write_all(c, body, len);
            free(body);
            return;
        }
        const char *e = "HTTP/1.0 500 Internal Server Error\r\nConnection: close\r\n\r\nout of memory\n";
        write_all(c, e, strlen(e));
        return;
    }
    const char *nf = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                     "cds-worker serves GET /metrics only\n";
    write_all(c, nf, strlen(nf));
}

static void *metrics_thread(void *arg)
{
    worker_metrics *m = arg;
    while (!atomic_load(&m->w->done)) {
        struct pollfd p = {.fd = m->fd, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0)
            continue;
        int c = accept(m->fd, NULL, NULL);
        if (c < 0)
            continue;
        serve_one(m->w, c);
        close(c);
    }
    return NULL;
}

int worker_metrics_start(worker *w, cds_err *err)
{
    w->metrics = NULL;
    if (w->cfg->metrics_port <= 0)
        return 0;
    const char *addr = w->cfg->metrics_bind ? w->cfg->metrics_bind : "127.0.0.1";
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)w->cfg->metrics_port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        return cds_errf(err, "--metrics-bind %s is not an IPv4 address: give one such as 127.0.0.1 or 0.0.0.0", addr);
    worker_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return cds_err_nomem(err, "out of memory");
    m->w = w;
    m->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (m->fd < 0 || setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(m->fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(m->fd, 16) != 0) {
        int e = errno;
        if (m->fd >= 0)
            close(m->fd);
        free(m);
        return cds_errf(err, "--metrics-port %d on %s: %s%s", w->cfg->metrics_port, addr, strerror(e),
                        e == EADDRINUSE ? " (another process has it: give another port)" : "");
    }
    if (pthread_create(&m->thread, NULL, metrics_thread, m) != 0) {
        close(m->fd);
        free(m);
        return cds_errf(err, "cannot start the metrics thread");
    }
    w->metrics = m;
    return 0;
}

void worker_metrics_stop(worker *w)
{
    worker_metrics *m = w->metrics;
    if (!m)
        return;
    pthread_join(m->thread, NULL); /* it sees w->done within 200 ms */
    close(m->fd);
    free(m);
    w->metrics = NULL;
}
