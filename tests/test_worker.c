/* cds-worker as a process, against real redis-servers: the failure cases of
 * DESIGN.md §4 that need a daemon to be stopped, killed or cut off.
 * usage: test_worker PATH/TO/cds-worker */
#include <string.h>

#include "proc.h"
#include "testutil.h"

static const char *worker_bin;
static char logdir[256];

typedef struct wproc {
    pid_t pid;
    char log[300];
} wproc;

/* Starts a worker on url/prefix with extra options (NULL-terminated). */
static wproc start_worker(const char *name, const char *url, const char *prefix, const char *const *extra)
{
    wproc w;
    snprintf(w.log, sizeof w.log, "%s/%s.log", logdir, name);
    char *argv[40];
    int n = 0;
    argv[n++] = (char *)worker_bin;
    argv[n++] = "--redis";
    argv[n++] = (char *)url;
    argv[n++] = "--prefix";
    argv[n++] = (char *)prefix;
    argv[n++] = "--id";
    argv[n++] = (char *)name;
    for (int i = 0; extra && extra[i] && n < 38; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    w.pid = proc_spawn(argv, w.log);
    return w;
}

static queue_conn *connect_to(const char *url, const char *prefix)
{
    queue_opts o = {.url = url, .prefix = prefix};
    cds_err err;
    queue_conn *q = queue_connect(&o, &err);
    if (!q) {
        printf("# %s\n", err.msg);
        tap_bail("cannot connect");
    }
    return q;
}

static void enqueue_sleeps(queue_conn *q, int n, int ms, queue_enqueued *out)
{
    queue_job_spec *s = calloc((size_t)n, sizeof *s);
    char payload[64];
    snprintf(payload, sizeof payload, "{\"ms\": %d}", ms);
    for (int i = 0; i < n; i++) {
        queue_job_spec_init(&s[i]);
        s[i].type = "diag.sleep";
        s[i].payload = payload;
    }
    cds_err err;
    if (queue_enqueue(q, s, (size_t)n, out, &err) != 0) {
        printf("# %s\n", err.msg);
        tap_bail("enqueue failed");
    }
    free(s);
}

static json_t *job(queue_conn *q, const char *id)
{
    json_t *o = NULL;
    cds_err err;
    while (queue_show(q, id, &o, &err) != 0) {
        /* The connection may be down while Redis restarts. */
        if (!queue_conn_broken(q) || queue_reconnect(q, &err) != 0)
            cds_sleep_ms(100);
    }
    return o;
}

static int job_state_is(queue_conn *q, const char *id, const char *state)
{
    json_t *o = job(q, id);
    const char *s = json_string_value(json_object_get(o, "state"));
    int same = s && strcmp(s, state) == 0;
    json_decref(o);
    return same;
}

/* Waits up to ms until every job is done. */
static int all_done(queue_conn *q, queue_enqueued *e, int n, int64_t ms)
{
    int64_t end = cds_mono_ms() + ms;
    for (int i = 0; i < n; i++)
        while (!job_state_is(q, e[i].id, "done")) {
            if (cds_mono_ms() > end)
                return 0;
            cds_sleep_ms(50);
        }
    return 1;
}

static long long done_counter(queue_conn *q)
{
    json_t *st = NULL;
    cds_err err;
    if (queue_stats(q, &st, &err) != 0)
        return -1;
    long long v = json_integer_value(json_object_get(json_object_get(json_object_get(st, "default"), "counters"), "done"));
    json_decref(st);
    return v;
}

/* A job's "done" log lines across several worker logs. */
static int completions(const wproc *ws, int nw, const char *id)
{
    char needle[64];
    snprintf(needle, sizeof needle, "job %.24s diag.sleep done", id);
    int n = 0;
    for (int i = 0; i < nw; i++)
        n += file_count(ws[i].log, needle);
    return n;
}

static void test_zombie(const char *url)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, "t:zombie:%d:", (int)getpid());
    queue_conn *q = connect_to(url, prefix);
    queue_enqueued e;
    enqueue_sleeps(q, 1, 1500, &e);
    const char *fast[] = {"--lease", "0.6", "--reap-every", "0.2", NULL};
    wproc a = start_worker("zombie-a", url, prefix, fast);
    int64_t end = cds_mono_ms() + 5000;
    while (!job_state_is(q, e.id, "active") && cds_mono_ms() < end)
        cds_sleep_ms(20);
    kill(a.pid, SIGSTOP);
    wproc b = start_worker("zombie-b", url, prefix, fast);
    int done = all_done(q, &e, 1, 15000);
    json_t *o = job(q, e.id);
    ok(done && strcmp(json_string_value(json_object_get(o, "worker")), "zombie-b") == 0,
       "a job whose worker is stopped past its lease completes on another worker");
    is_int(json_integer_value(json_object_get(o, "stalls")), 1, "the expiry counted one stall");
    json_decref(o);
    kill(a.pid, SIGCONT);
    end = cds_mono_ms() + 5000;
    while (file_count(a.log, "lease on job") + file_count(a.log, "refused") == 0 && cds_mono_ms() < end)
        cds_sleep_ms(20);
    ok(file_count(a.log, "lease on job") + file_count(a.log, "refused") >= 1 && file_count(a.log, "done in") == 0,
       "the continued worker learns its lease is gone and does not ack");
    cds_sleep_ms(300);
    is_int(done_counter(q), 1, "the job was completed once");
    kill(a.pid, SIGTERM);
    kill(b.pid, SIGTERM);
    ok(proc_wait(a.pid, 5000) == 0 && proc_wait(b.pid, 5000) == 0, "both workers exit cleanly on SIGTERM");
    queue_close(q);
}

static void test_sigkill_mid_run(const char *url)
{
    enum { N = 100 };
    char prefix[64];
    snprintf(prefix, sizeof prefix, "t:kill:%d:", (int)getpid());
    queue_conn *q = connect_to(url, prefix);
    static queue_enqueued e[N];
    enqueue_sleeps(q, N, 20, e);
    const char *opts[] = {"--lease", "1", "--reap-every", "0.2", NULL};
    wproc w[2];
    w[0] = start_worker("kill-a", url, prefix, opts);
    w[1] = start_worker("kill-b", url, prefix, opts);
    cds_sleep_ms(700);
    kill(w[0].pid, SIGKILL);
    proc_wait(w[0].pid, 5000);
    ok(all_done(q, e, N, 30000), "after SIGKILL of one worker, all %d jobs finish", N);
    is_int(done_counter(q), N, "the queue counted exactly %d completions", N);
    /* A worker killed between its ack and its log line leaves a job that
     * Redis counts as done with no "done" line, so the logs can only prove
     * "never twice"; "at least once" is the done counter above. */
    int twice = 0, unlogged = 0;
    for (int i = 0; i < N; i++) {
        int c = completions(w, 2, e[i].id);
        unlogged += c == 0;
        if (c > 1) {
            twice++;
            printf("# job %s completed %d times\n", e[i].id, c);
        }
    }
    ok(twice == 0, "no job finished twice across the two workers' logs (%d acked by the killed worker before it logged)",
       unlogged);
    ok(file_count(w[0].log, "done in") > 0 && file_count(w[1].log, "done in") > 0, "both workers had done work");
    kill(w[1].pid, SIGTERM);
    proc_wait(w[1].pid, 5000);
    queue_close(q);
}

static void test_sigterm_drain(const char *url)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, "t:drain:%d:", (int)getpid());
    queue_conn *q = connect_to(url, prefix);
    queue_enqueued e[2];
    enqueue_sleeps(q, 2, 1000, e);
    wproc a = start_worker("drain-a", url, prefix, NULL);
    while (!job_state_is(q, e[0].id, "active"))
        cds_sleep_ms(20);
    kill(a.pid, SIGTERM);
    int64_t t0 = cds_mono_ms();
    int rc = proc_wait(a.pid, 5000);
    ok(rc == 0 && job_state_is(q, e[0].id, "done"), "first SIGTERM: the job in hand is finished and acked");
    ok(job_state_is(q, e[1].id, "waiting"), "and no new job is started");

    wproc b = start_worker("drain-b", url, prefix, NULL);
    while (!job_state_is(q, e[1].id, "active"))
        cds_sleep_ms(20);
    kill(b.pid, SIGTERM);
    cds_sleep_ms(100);
    kill(b.pid, SIGTERM);
    t0 = cds_mono_ms();
    rc = proc_wait(b.pid, 5000);
    int64_t took = cds_mono_ms() - t0;
    ok(rc == 0 && took < 900, "second SIGTERM: the worker exits at once (%lld ms)", (long long)took);
    json_t *o = job(q, e[1].id);
    ok(strcmp(json_string_value(json_object_get(o, "state")), "waiting") == 0 &&
           json_integer_value(json_object_get(o, "attempts")) == 0,
       "the released job is waiting again with no attempt counted");
    json_decref(o);
    queue_close(q);
}

/* Redis goes away under a running worker and comes back: nothing is lost. */
static void test_redis_restart(int hard)
{
    enum { N = 60 };
    test_redis r = {0};
    const char *always[] = {"--appendfsync", "always", NULL};
    if (test_redis_start(&r, hard ? always : NULL) != 0) {
        ok(0, "start a private redis-server");
        return;
    }
    const char *prefix = "cds:";
    queue_conn *q = connect_to(r.url, prefix);
    static queue_enqueued e[N];
    enqueue_sleeps(q, N, 30, e);
    const char *opts[] = {"--lease", "2", "--reap-every", "0.2", NULL};
    wproc w = start_worker(hard ? "restart-hard" : "restart-soft", r.url, prefix, opts);
    cds_sleep_ms(500);
    if (hard) {
        kill(r.pid, SIGKILL);
        proc_wait(r.pid, 5000);
    } else {
        test_redis_cli(&r, "SHUTDOWN");
        proc_wait(r.pid, 5000);
    }
    cds_sleep_ms(800);
    ok(test_redis_start(&r, hard ? always : NULL) == 0, "redis-server restarted after %s",
       hard ? "SIGKILL (appendfsync always)" : "a graceful SHUTDOWN");
    ok(all_done(q, e, N, 40000), "the worker reconnected and all %d jobs finished", N);
    int once = 1;
    for (int i = 0; i < N; i++)
        once &= completions(&w, 1, e[i].id) >= 1;
    ok(once, "every job was run");
    ok(file_count(w.log, "reconnected to Redis") >= 1, "the worker logged its reconnection");
    kill(w.pid, SIGTERM);
    ok(proc_wait(w.pid, 5000) == 0, "and exits cleanly");
    queue_close(q);
    test_redis_destroy(&r);
}

static void test_waiting_survive_restart(void)
{
    enum { N = 40 };
    test_redis r = {0};
    const char *always[] = {"--appendfsync", "always", NULL};
    if (test_redis_start(&r, always) != 0) {
        ok(0, "start a private redis-server");
        return;
    }
    queue_conn *q = connect_to(r.url, "cds:");
    queue_enqueued e[N];
    enqueue_sleeps(q, N, 1, e);
    queue_close(q);
    kill(r.pid, SIGKILL);
    proc_wait(r.pid, 5000);
    test_redis_start(&r, always);
    q = connect_to(r.url, "cds:");
    int waiting = 1;
    for (int i = 0; i < N; i++)
        waiting &= job_state_is(q, e[i].id, "waiting");
    ok(waiting, "%d enqueued jobs are all still waiting after Redis was SIGKILLed", N);
    queue_close(q);
    test_redis_destroy(&r);
}

static void test_eviction_policy_refused(void)
{
    test_redis r = {0};
    const char *lru[] = {"--maxmemory-policy", "allkeys-lru", NULL};
    if (test_redis_start(&r, lru) != 0) {
        ok(0, "start a private redis-server");
        return;
    }
    wproc w = start_worker("evict", r.url, "cds:", NULL);
    int rc = proc_wait(w.pid, 5000);
    ok(rc == 2 && file_count(w.log, "maxmemory-policy allkeys-lru") == 1 && file_count(w.log, "noeviction") == 1,
       "a worker refuses a Redis that can evict keys, saying how to fix it");
    test_redis_destroy(&r);
}

/* Waits up to ms until job id is in state. */
static int state_within(queue_conn *q, const char *id, const char *state, int64_t ms)
{
    int64_t end = cds_mono_ms() + ms;
    while (!job_state_is(q, id, state)) {
        if (cds_mono_ms() > end)
            return 0;
        cds_sleep_ms(50);
    }
    return 1;
}

/* Jobs that reached Redis without jobctl's checks (redis-cli, an older
 * jobctl, the library): an unknown type and a payload of the wrong shape
 * are dead-lettered on their first run, for good, with the message of the
 * shared type table, and the worker goes on to the next job. */
static void test_bad_jobs_dead_lettered(const char *url)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, "t:badjobs:%d:", (int)getpid());
    queue_conn *q = connect_to(url, prefix);
    const char *types[] = {"diag.bogus", "diag.sleep", "diag.sleep"};
    const char *payloads[] = {"{}", "{\"ms\": \"soon\"}", "{\"ms\": 1}"};
    queue_job_spec s[3];
    queue_enqueued e[3];
    for (int i = 0; i < 3; i++) {
        queue_job_spec_init(&s[i]);
        s[i].type = types[i];
        s[i].payload = payloads[i];
    }
    cds_err err;
    if (queue_enqueue(q, s, 3, e, &err) != 0) {
        printf("# %s\n", err.msg);
        tap_bail("enqueue failed");
    }
    const char *opts[] = {"--idle-exit", "1", NULL};
    wproc w = start_worker("badjobs", url, prefix, opts);
    int dead = state_within(q, e[0].id, "dead", 20000) && state_within(q, e[1].id, "dead", 20000);
    int done = state_within(q, e[2].id, "done", 20000);
    json_t *u = job(q, e[0].id), *p = job(q, e[1].id);
    const char *uerr = json_string_value(json_object_get(u, "error")), *perr = json_string_value(json_object_get(p, "error"));
    ok(dead && json_integer_value(json_object_get(u, "attempts")) == 1 && uerr &&
           strstr(uerr, "unknown job type 'diag.bogus': the known types are diag.sleep, diag.fail, diag.noop, etl.shard, "
                        "etl.finish"),
       "a job of an unknown type is dead-lettered on its first run, naming the known types (%s)", uerr ? uerr : "-");
    ok(dead && json_integer_value(json_object_get(p, "attempts")) == 1 && perr &&
           strstr(perr, "diag.sleep payload $.ms: must be a whole number from 0 to 86400000, not \"soon\""),
       "a diag.sleep whose payload has the wrong shape is dead-lettered with its JSON path (%s)", perr ? perr : "-");
    ok(done, "the worker goes on to run the next job");
    json_decref(u);
    json_decref(p);
    ok(proc_wait(w.pid, 20000) == 0, "the worker exits cleanly when idle");
    queue_close(q);
}

static void test_noscript_reload(void)
{
    test_redis r = {0};
    if (test_redis_start(&r, NULL) != 0) {
        ok(0, "start a private redis-server");
        return;
    }
    queue_conn *q = connect_to(r.url, "cds:");
    queue_enqueued e[3];
    enqueue_sleeps(q, 1, 1, &e[0]);
    test_redis_cli(&r, "SCRIPT FLUSH");
    enqueue_sleeps(q, 2, 1, &e[1]);
    const char *opts[] = {"--idle-exit", "1", NULL};
    wproc w = start_worker("noscript", r.url, "cds:", opts);
    ok(all_done(q, e, 3, 10000), "after SCRIPT FLUSH the scripts are reloaded and jobs still run");
    proc_wait(w.pid, 10000);
    queue_close(q);
    test_redis_destroy(&r);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        tap_bail("usage: test_worker PATH/TO/cds-worker");
    worker_bin = argv[1];
    signal(SIGPIPE, SIG_IGN); /* writes to a Redis that was just killed */
    snprintf(logdir, sizeof logdir, "/tmp/cds-test-worker.XXXXXX");
    if (!mkdtemp(logdir))
        tap_bail("mkdtemp failed");
    const char *url = test_redis_url();
    test_sigterm_drain(url);
    test_zombie(url);
    test_sigkill_mid_run(url);
    test_redis_restart(0);
    test_redis_restart(1);
    test_waiting_survive_restart();
    test_eviction_policy_refused();
    test_bad_jobs_dead_lettered(url);
    test_noscript_reload();
    int rc = tap_done();
    if (rc == 0) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", logdir);
        if (system(cmd) != 0)
            tap_diag("could not remove %s", logdir);
    } else {
        tap_diag("worker logs kept in %s", logdir);
    }
    return rc;
}
