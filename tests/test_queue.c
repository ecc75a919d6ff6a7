/* The queue library against a real redis-server: the semantics of DESIGN.md
 * §4, one check per rule.  Leases here are short (100-300 ms) so expiry can be
 * waited for; the reaper is called directly instead of from a worker. */
#include <pthread.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "cds_util.h"
#include "testutil.h"

static char prefix[64];

static void enqueue_one(queue_conn *q, queue_job_spec *s, queue_enqueued *out)
{
    cds_err err;
    if (queue_enqueue(q, s, 1, out, &err) != 0) {
        printf("# enqueue: %s\n", err.msg);
        tap_bail("enqueue failed");
    }
}

static const char *enqueue_simple(queue_conn *q, const char *queue, int64_t priority, queue_enqueued *out)
{
    queue_job_spec s;
    queue_job_spec_init(&s);
    s.type = "diag.sleep";
    s.queue = queue;
    s.priority = priority;
    enqueue_one(q, &s, out);
    return out->id;
}

static size_t claim(queue_conn *q, const char *queue, int64_t lease_ms, size_t max, queue_job *jobs)
{
    cds_err err;
    size_t n = 0;
    if (queue_claim(q, queue, "test-worker", lease_ms, max, jobs, &n, NULL, &err) != 0) {
        printf("# claim: %s\n", err.msg);
        tap_bail("claim failed");
    }
    return n;
}

static json_t *show(queue_conn *q, const char *id)
{
    json_t *o = NULL;
    cds_err err;
    if (queue_show(q, id, &o, &err) != 0) {
        printf("# show %s: %s\n", id, err.msg);
        tap_bail("show failed");
    }
    return o;
}

static int state_is(queue_conn *q, const char *id, const char *want)
{
    json_t *o = show(q, id);
    const char *st = json_string_value(json_object_get(o, "state"));
    int same = st && strcmp(st, want) == 0;
    if (!same)
        printf("# job %s is %s, want %s\n", id, st ? st : "(none)", want);
    json_decref(o);
    return same;
}

static long long field_int(queue_conn *q, const char *id, const char *field)
{
    json_t *o = show(q, id);
    long long v = json_integer_value(json_object_get(o, field));
    json_decref(o);
    return v;
}

static void test_basic(queue_conn *q)
{
    queue_enqueued e;
    enqueue_simple(q, "basic", 0, &e);
    ok(!e.duplicate && strcmp(e.state, "waiting") == 0, "enqueue creates a waiting job");
    queue_job j[2];
    ok(claim(q, "basic", 5000, 2, j) == 1, "claim returns the one job");
    ok(strcmp(j[0].id, e.id) == 0 && strcmp(j[0].type, "diag.sleep") == 0, "claimed job carries id and type");
    ok(state_is(q, e.id, "active"), "claimed job is active");
    int acked = 0;
    cds_err err;
    const char *res = "{\"ok\":true}";
    ok(queue_ack(q, j, 1, &res, &acked, &err) == 0 && acked == 1, "ack with the token succeeds");
    ok(state_is(q, e.id, "done"), "acked job is done");
    queue_job_clear(&j[0]);
    ok(claim(q, "basic", 5000, 2, j) == 0, "nothing left to claim");
}

static void test_priority(queue_conn *q)
{
    queue_enqueued e[5];
    enqueue_simple(q, "prio", 0, &e[0]);
    enqueue_simple(q, "prio", 5, &e[1]);
    enqueue_simple(q, "prio", 0, &e[2]);
    enqueue_simple(q, "prio", 5, &e[3]);
    enqueue_simple(q, "prio", -3, &e[4]);
    const int want[5] = {1, 3, 0, 2, 4};
    int order_ok = 1;
    for (int i = 0; i < 5; i++) {
        queue_job j;
        if (claim(q, "prio", 5000, 1, &j) != 1 || strcmp(j.id, e[want[i]].id) != 0) {
            order_ok = 0;
            printf("# claim %d got %s, want %s\n", i, j.id, e[want[i]].id);
        }
        queue_job_clear(&j);
    }
    ok(order_ok, "higher priority claimed first, FIFO among equals");
}

static void test_lease_expiry(queue_conn *q)
{
    queue_enqueued e;
    enqueue_simple(q, "lease", 0, &e);
    queue_job j, j2;
    claim(q, "lease", 100, 1, &j);
    cds_err err;
    queue_maint_stats st = {0};
    ok(queue_reap(q, "lease", &st, &err) == 0 && st.requeued == 0, "a live lease is not reaped");
    cds_sleep_ms(200);
    ok(queue_reap(q, "lease", &st, &err) == 0 && st.requeued == 1, "an expired lease is requeued");
    ok(state_is(q, e.id, "waiting"), "requeued job is waiting");
    is_int(field_int(q, e.id, "stalls"), 1, "expiry counts one stall");
    is_int(field_int(q, e.id, "attempts"), 0, "expiry does not count an attempt");
    ok(claim(q, "lease", 5000, 1, &j2) == 1 && strcmp(j2.id, e.id) == 0, "the requeued job is claimed again");
    int acked = 1;
    queue_ack(q, &j, 1, NULL, &acked, &err);
    ok(acked == 0, "the first holder's ack is refused (token no longer holds)");
    int alive = 1;
    queue_heartbeat(q, &j, 1, 1000, &alive, &err);
    ok(alive == 0, "the first holder's heartbeat learns it lost the lease");
    queue_ack(q, &j2, 1, NULL, &acked, &err);
    ok(acked == 1 && state_is(q, e.id, "done"), "the new holder completes it");
    acked = 0;
    queue_ack(q, &j2, 1, NULL, &acked, &err);
    ok(acked == 1, "the same ack sent again (a reply lost with the connection) is still a success");
    acked = 1;
    queue_ack(q, &j, 1, NULL, &acked, &err);
    ok(acked == 0, "while the lost lease's ack stays refused");
    queue_job_clear(&j);
    queue_job_clear(&j2);
}

static void test_heartbeat_keeps_lease(queue_conn *q)
{
    queue_enqueued e;
    enqueue_simple(q, "hb", 0, &e);
    queue_job j;
    claim(q, "hb", 150, 1, &j);
    cds_err err;
    int alive = 0;
    for (int i = 0; i < 4; i++) {
        cds_sleep_ms(80);
        queue_heartbeat(q, &j, 1, 150, &alive, &err);
    }
    queue_maint_stats st = {0};
    queue_reap(q, "hb", &st, &err);
    ok(alive == 1 && st.requeued == 0, "heartbeats keep a lease past its first deadline");
    int acked = 0;
    queue_ack(q, &j, 1, NULL, &acked, &err);
    ok(acked == 1, "and the job is acked");
    queue_job_clear(&j);
}

static void test_stall_limit(queue_conn *q)
{
    queue_job_spec s;
    queue_job_spec_init(&s);
    s.type = "diag.sleep";
    s.queue = "stall";
    s.max_stalls = 1;
    queue_enqueued e;
    enqueue_one(q, &s, &e);
    cds_err err;
    queue_maint_stats st = {0};
    for (int i = 0; i < 2; i++) {
        queue_job j;
        claim(q, "stall", 50, 1, &j);
        queue_job_clear(&j);
        cds_sleep_ms(100);
        queue_reap(q, "stall", &st, &err);
    }
    ok(st.requeued == 1 && st.buried == 1, "second expiry with max_stalls=1 dead-letters");
    json_t *o = show(q, e.id);
    const char *why = json_string_value(json_object_get(o, "dead_reason"));
    ok(strcmp(json_string_value(json_object_get(o, "state")), "dead") == 0 && why && strstr(why, "stalled 2 times"),
       "dead-lettered for stalling, with the reason (%s)", why ? why : "none");
    json_decref(o);
}

static void test_backoff_and_dead(queue_conn *q)
{
    queue_job_spec s;
    queue_job_spec_init(&s);
    s.type = "diag.fail";
    s.queue = "backoff";
    s.max_attempts = 6;
    s.backoff_base_ms = 100;
    s.backoff_cap_ms = 500;
    queue_enqueued e;
    enqueue_one(q, &s, &e);
    cds_err err;
    const long long expect[5] = {100, 200, 400, 500, 500};
    int bounds_ok = 1;
    for (int attempt = 1; attempt <= 6; attempt++) {
        queue_job j;
        size_t got = 0;
        for (int tries = 0; tries < 200 && got == 0; tries++) {
            queue_maint_stats st;
            queue_promote(q, "backoff", &st, &err);
            got = claim(q, "backoff", 5000, 1, &j);
            if (!got)
                cds_sleep_ms(10);
        }
        if (!got) {
            ok(0, "retry %d became claimable", attempt);
            return;
        }
        queue_fail_result fr;
        queue_fail(q, &j, "boom: disk on fire", 0, &fr, &err);
        queue_job_clear(&j);
        if (attempt < 6) {
            long long d = expect[attempt - 1];
            if (fr.dead || fr.delay_ms < d / 2 || fr.delay_ms > d) {
                bounds_ok = 0;
                printf("# attempt %d: delay %lld, want in [%lld, %lld]\n", attempt, (long long)fr.delay_ms, d / 2, d);
            }
        } else {
            ok(fr.dead && fr.attempts == 6, "the 6th failure of max_attempts=6 dead-letters");
        }
    }
    ok(bounds_ok, "retry delays are min(cap, base*2^(n-1)) scaled by [0.5, 1]");
    json_t *o = show(q, e.id);
    const char *why = json_string_value(json_object_get(o, "dead_reason"));
    ok(why && strstr(why, "boom: disk on fire") && strstr(why, "6 of 6"), "dead reason keeps the error (%s)",
       why ? why : "none");
    json_decref(o);
    json_t *dead = NULL;
    queue_list(q, "backoff", "dead", 10, &dead, &err);
    ok(dead && json_array_size(dead) == 1, "the job is in the dead-letter set");
    json_decref(dead);
    ok(queue_retry(q, e.id, &err) == 0 && state_is(q, e.id, "waiting"), "retry puts a dead job back to waiting");
    is_int(field_int(q, e.id, "attempts"), 0, "retry resets attempts");
}

static void test_delayed(queue_conn *q)
{
    queue_job_spec s;
    queue_job_spec_init(&s);
    s.type = "diag.sleep";
    s.queue = "delay";
    s.delay_ms = 300;
    queue_enqueued e;
    int64_t t0 = cds_mono_ms();
    enqueue_one(q, &s, &e);
    ok(strcmp(e.state, "delayed") == 0, "a job with a delay starts delayed");
    cds_err err;
    queue_job j;
    queue_maint_stats st = {0};
    size_t got = 0;
    int64_t t_claim = 0;
    while (!got && cds_mono_ms() - t0 < 3000) {
        queue_promote(q, "delay", &st, &err);
        got = claim(q, "delay", 5000, 1, &j);
        t_claim = cds_mono_ms();
        if (!got)
            cds_sleep_ms(5);
    }
    /* Both clocks count whole milliseconds (the script's due time is Redis'
     * TIME cut to a millisecond, t0 and t_claim are cds_mono_ms), so a
     * claim right at the due time can read one short: 299 was seen once. */
    ok(got == 1 && t_claim - t0 >= 299, "claimed no earlier than due (after %lld ms)", (long long)(t_claim - t0));
    if (got)
        queue_job_clear(&j);
}

static void test_unique(queue_conn *q)
{
    queue_job_spec s;
    queue_job_spec_init(&s);
    s.type = "diag.sleep";
    s.queue = "uniq";
    s.unique = "nightly-2026-11-22";
    queue_enqueued a, b, c;
    enqueue_one(q, &s, &a);
    enqueue_one(q, &s, &b);
    ok(!a.duplicate && b.duplicate && strcmp(a.id, b.id) == 0, "a duplicate unique enqueue returns the live id");
    queue_job j;
    claim(q, "uniq", 5000, 1, &j);
    cds_err err;
    int acked;
    queue_ack(q, &j, 1, NULL, &acked, &err);
    queue_job_clear(&j);
    enqueue_one(q, &s, &c);
    ok(!c.duplicate && strcmp(c.id, a.id) != 0, "the unique key frees when the job is done");
    char prev[16];
    queue_cancel(q, c.id, prev, &err);
    queue_enqueued d;
    enqueue_one(q, &s, &d);
    ok(!d.duplicate, "and when it is cancelled");
}

static void test_cancel(queue_conn *q)
{
    queue_enqueued a, b;
    enqueue_simple(q, "cancel", 0, &a);
    enqueue_simple(q, "cancel", 0, &b);
    char prev[16] = "";
    cds_err err;
    ok(queue_cancel(q, a.id, prev, &err) == 0 && strcmp(prev, "waiting") == 0, "cancel a waiting job");
    ok(state_is(q, a.id, "cancelled"), "it is cancelled");
    queue_job j;
    ok(claim(q, "cancel", 5000, 1, &j) == 1 && strcmp(j.id, b.id) == 0, "the cancelled job is never claimed");
    ok(queue_cancel(q, b.id, prev, &err) == 0 && strcmp(prev, "active") == 0, "cancel a running job");
    int alive = 1, acked = 1;
    queue_heartbeat(q, &j, 1, 5000, &alive, &err);
    queue_ack(q, &j, 1, NULL, &acked, &err);
    ok(alive == 0 && acked == 0, "its worker's heartbeat and ack are refused");
    ok(state_is(q, b.id, "cancelled"), "and it stays cancelled");
    queue_job_clear(&j);
    ok(queue_cancel(q, b.id, prev, &err) == -1 && strstr(err.msg, "already cancelled"),
       "cancelling twice says so (%s)", err.msg);
    ok(queue_cancel(q, "999999999", prev, &err) == QUEUE_NOT_FOUND, "cancel of an unknown id is not found");
}

static void test_dependencies(queue_conn *q)
{
    queue_enqueued a, b, c, d, x;
    enqueue_simple(q, "deps", 0, &a);
    queue_job_spec s;
    queue_job_spec_init(&s);
    s.type = "diag.sleep";
    s.queue = "deps2";
    const char *after_a[] = {a.id};
    s.after = after_a;
    s.n_after = 1;
    enqueue_one(q, &s, &b);
    ok(strcmp(b.state, "blocked") == 0, "a job after a waiting one is blocked");
    queue_job j;
    ok(claim(q, "deps2", 5000, 1, &j) == 0, "a blocked job cannot be claimed");
    claim(q, "deps", 5000, 1, &j);
    cds_err err;
    int acked;
    queue_ack(q, &j, 1, NULL, &acked, &err);
    queue_job_clear(&j);
    ok(state_is(q, b.id, "waiting"), "acking the dependency releases it (across queues)");

    enqueue_simple(q, "deps", 0, &c);
    const char *after_c[] = {c.id};
    s.after = after_c;
    enqueue_one(q, &s, &d);
    const char *after_d[] = {d.id};
    s.after = after_d;
    enqueue_one(q, &s, &x);
    claim(q, "deps", 5000, 1, &j);
    queue_fail_result fr;
    queue_fail(q, &j, "bad input", 1, &fr, &err);
    queue_job_clear(&j);
    ok(fr.dead && state_is(q, d.id, "dead"), "a job whose dependency dies goes dead");
    json_t *o = show(q, d.id);
    const char *why = json_string_value(json_object_get(o, "dead_reason"));
    char want[64];
    snprintf(want, sizeof want, "dependency %s is dead", c.id);
    ok(why && strstr(why, want) && strstr(why, "bad input"), "with that reason (%s)", why ? why : "none");
    json_decref(o);
    ok(state_is(q, x.id, "dead"), "and so does a job waiting on that one, transitively");
    json_t *st = NULL;
    queue_stats(q, &st, &err);
    long long dead2 = json_integer_value(json_object_get(json_object_get(json_object_get(st, "deps2"), "counters"), "dead"));
    json_decref(st);
    is_int(dead2, 2, "both dependency deaths are counted in the queue's dead counter");

    const char *unknown[] = {"987654321"};
    s.after = unknown;
    queue_enqueued u;
    ok(queue_enqueue(q, &s, 1, &u, &err) == -1 && strstr(err.msg, "unknown dependency job 987654321"),
       "an unknown dependency id is refused (%s)", err.msg);
}

typedef struct reaper_arg {
    queue_maint_stats st;
    int rc;
} reaper_arg;

static void *reaper_thread(void *p)
{
    reaper_arg *a = p;
    queue_opts o = {.url = test_redis_url(), .prefix = prefix};
    cds_err err;
    queue_conn *q = queue_connect(&o, &err);
    a->rc = q ? queue_reap(q, "reap2", &a->st, &err) : -1;
    queue_close(q);
    return NULL;
}

static void test_two_reapers(queue_conn *q)
{
    enum { N = 300 };
    queue_job_spec specs[N];
    queue_enqueued e[N];
    for (int i = 0; i < N; i++) {
        queue_job_spec_init(&specs[i]);
        specs[i].type = "diag.sleep";
        specs[i].queue = "reap2";
    }
    cds_err err;
    ok(queue_enqueue(q, specs, N, e, &err) == 0, "enqueue a batch of %d", N);
    static queue_job jobs[N];
    size_t n = claim(q, "reap2", 50, N, jobs);
    ok(n == N, "claim the batch in one call");
    for (size_t i = 0; i < n; i++)
        queue_job_clear(&jobs[i]);
    cds_sleep_ms(120);
    reaper_arg a = {0}, b = {0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, reaper_thread, &a);
    pthread_create(&tb, NULL, reaper_thread, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    ok(a.rc == 0 && b.rc == 0, "two reapers ran at once");
    is_int(a.st.requeued + b.st.requeued, N, "together they requeued each job once (%ld + %ld)", a.st.requeued,
           b.st.requeued);
    int stalls_ok = 1;
    for (int i = 0; i < N; i += 37)
        stalls_ok &= field_int(q, e[i].id, "stalls") == 1;
    ok(stalls_ok, "every sampled job counted exactly one stall");
}

static void test_trim(queue_conn *q)
{
    enum { N = 30 };
    queue_job_spec specs[N];
    queue_enqueued e[N];
    for (int i = 0; i < N; i++) {
        queue_job_spec_init(&specs[i]);
        specs[i].type = "diag.sleep";
        specs[i].queue = "trim";
    }
    cds_err err;
    queue_enqueue(q, specs, N, e, &err);
    queue_job jobs[N];
    size_t n = claim(q, "trim", 5000, N, jobs);
    int acked[N];
    queue_ack(q, jobs, n, NULL, acked, &err);
    for (size_t i = 0; i < n; i++)
        queue_job_clear(&jobs[i]);
    queue_maint_opts o;
    queue_maint_opts_init(&o);
    o.keep_done = 10;
    queue_maint_stats st = {0};
    ok(queue_trim(q, "trim", &o, &st, &err) == 0 && st.trimmed == N - 10, "trim by count keeps the newest 10");
    json_t *o1 = NULL;
    ok(queue_show(q, e[0].id, &o1, &err) == QUEUE_NOT_FOUND, "the oldest job is gone");
    ok(state_is(q, e[N - 1].id, "done"), "the newest is kept");
    cds_sleep_ms(50);
    o.keep_done_ms = 20;
    memset(&st, 0, sizeof st);
    ok(queue_trim(q, "trim", &o, &st, &err) == 0 && st.trimmed == 10, "trim by age removes the rest");
}

static void test_maintain_mutex(queue_conn *q)
{
    cds_err err;
    queue_maint_stats a, b;
    queue_opts o = {.url = test_redis_url(), .prefix = prefix};
    queue_conn *q2 = queue_connect(&o, &err);
    ok(queue_maintain(q, "reaper-a", NULL, &a, &err) == 0 && a.ran == 1, "a reaper takes the mutex and runs");
    ok(queue_maintain(q2, "reaper-b", NULL, &b, &err) == 0 && b.ran == 1, "the mutex is released after the pass");
    /* Hold the mutex from outside, as a reaper in the middle of its pass. */
    redisContext *c = test_raw_connect();
    freeReplyObject(redisCommand(c, "SET %sreaper:lock other-reaper PX 5000", prefix));
    ok(queue_maintain(q2, "reaper-b", NULL, &b, &err) == 0 && b.ran == 0, "a second reaper skips while the mutex is held");
    freeReplyObject(redisCommand(c, "DEL %sreaper:lock", prefix));
    redisFree(c);
    queue_close(q2);
}

static void test_bad_specs(queue_conn *q)
{
    queue_job_spec s;
    queue_job_spec_init(&s);
    s.type = "diag sleep";
    cds_err err;
    queue_enqueued e;
    ok(queue_enqueue(q, &s, 1, &e, &err) == -1 && strstr(err.msg, "bad job type"), "bad type refused (%s)", err.msg);
    s.type = "diag.sleep";
    s.payload = "{\"ms\": ";
    ok(queue_enqueue(q, &s, 1, &e, &err) == -1 && strstr(err.msg, "payload is not valid JSON"),
       "malformed payload refused (%s)", err.msg);
    s.payload = "{}";
    s.priority = 5000000;
    ok(queue_enqueue(q, &s, 1, &e, &err) == -1 && strstr(err.msg, "priority"), "priority out of range refused");
}

int main(void)
{
    queue_conn *q = test_connect("queue", prefix, sizeof prefix);
    test_basic(q);
    test_priority(q);
    test_lease_expiry(q);
    test_heartbeat_keeps_lease(q);
    test_stall_limit(q);
    test_backoff_and_dead(q);
    test_delayed(q);
    test_unique(q);
    test_cancel(q);
    test_dependencies(q);
    test_two_reapers(q);
    test_trim(q);
    test_maintain_mutex(q);
    test_bad_specs(q);
    queue_close(q);
    return tap_done();
}
