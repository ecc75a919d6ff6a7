/* The communicator (ddp/ddp_comm.h) over Gloo, between real processes that
 * meet through the harness's redis-server.
 *
 * Each scenario forks its ranks; a rank checks what it sees and sends one
 * line back through a pipe ("ok" or what went wrong), which the parent turns
 * into a TAP line.  Values are chosen so that every sum is exact in float32,
 * so each rank's result is compared bit for bit with the expected one.
 * Time bounds carry wide margins (a loaded machine is slow, never fast): a
 * time-out of T must fail no sooner than 0.9 T and no later than T + 8 s. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cds_util.h"
#include "ddp_comm.h"
#include "testutil.h"

#define MAX_RANKS 4
#define MSG 600

static char prefix[96];

typedef int (*rank_fn)(int rank, int size, const char *scope, char *why, size_t n);

/* A rank's own connection (a child must not share its parent's socket). */
static queue_conn *rank_connect(void)
{
    queue_opts o = {.url = test_redis_url(), .prefix = prefix};
    cds_err err;
    return queue_connect(&o, &err);
}

static int join(queue_conn *q, int rank, int size, const char *scope, int64_t timeout_ms, ddp_comm **c, cds_err *err)
{
    ddp_comm_opts o = {.q = q, .scope = scope, .rank = rank, .size = size, .timeout_ms = timeout_ms,
                       .addr = "127.0.0.1"};
    return ddp_comm_gloo(&o, c, err);
}

/* Forks size ranks of fn (only those with run[r] set, when run is given),
 * waits for them and reports one TAP line per rank that ran. */
static void run_gang(const char *name, int size, rank_fn fn, const int *run)
{
    static int gang = 0;
    char scope[64];
    snprintf(scope, sizeof scope, "gang-%d-%d", (int)getpid(), gang++);
    int fds[MAX_RANKS][2];
    pid_t pid[MAX_RANKS] = {0};
    for (int r = 0; r < size; r++) {
        if (run && !run[r])
            continue;
        if (pipe(fds[r]) != 0)
            tap_bail("pipe failed");
        fflush(stdout);
        pid[r] = fork();
        if (pid[r] == 0) {
            close(fds[r][0]);
            char why[MSG] = "ok";
            int rc = fn(r, size, scope, why, sizeof why);
            if (write(fds[r][1], why, strlen(why)) < 0)
                _exit(3);
            _exit(rc == 0 ? 0 : 1);
        }
        close(fds[r][1]);
    }
    for (int r = 0; r < size; r++) {
        if (!pid[r])
            continue;
        char why[MSG] = "";
        ssize_t got = read(fds[r][0], why, sizeof why - 1);
        why[got > 0 ? got : 0] = '\0';
        close(fds[r][0]);
        int st = 0;
        waitpid(pid[r], &st, 0);
        if (WIFSIGNALED(st))
            snprintf(why, sizeof why, "killed by signal %d", WTERMSIG(st));
        ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: rank %d of %d: %s", name, r, size, why);
    }
}

/* ---- the collectives -------------------------------------------------------- */

static int check_bits(const float *got, const float *want, size_t n, const char *what, char *why, size_t wn)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            snprintf(why, wn, "%s: element %zu is %g, not %g", what, i, (double)got[i], (double)want[i]);
            return -1;
        }
    return 0;
}

/* All-reduce sum and average on 1, 1000 and 1M floats, broadcast from the
 * last rank, a barrier; every rank must see exactly the expected values. */
static int rank_collectives(int rank, int size, const char *scope, char *why, size_t n)
{
    queue_conn *q = rank_connect();
    ddp_comm *c = NULL;
    cds_err err;
    int rc = -1;
    static const size_t sizes[] = {1, 1000, 1 << 20};
    float *buf = malloc(sizeof(float) * (1 << 20)), *want = malloc(sizeof(float) * (1 << 20));
    if (!q || !buf || !want || join(q, rank, size, scope, 10000, &c, &err) != 0) {
        snprintf(why, n, "joining: %s", q ? err.msg : "no Redis connection");
        goto out;
    }
    if (ddp_comm_rank(c) != rank || ddp_comm_size(c) != size) {
        snprintf(why, n, "the communicator says rank %d of %d", ddp_comm_rank(c), ddp_comm_size(c));
        goto out;
    }
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t m = sizes[s];
        /* Small integers and halves: every partial sum is exact. */
        for (size_t i = 0; i < m; i++) {
            buf[i] = (float)(i % 1000) * 0.5f + (float)rank;
            want[i] = (float)(i % 1000) * 0.5f * (float)size + (float)(size * (size - 1) / 2);
        }
        if (ddp_allreduce(c, buf, m, DDP_SUM, &err) != 0) {
            snprintf(why, n, "sum of %zu: %s", m, err.msg);
            goto out;
        }
        if (check_bits(buf, want, m, "sum", why, n) != 0)
            goto out;
        for (size_t i = 0; i < m; i++) {
            buf[i] = (float)(rank * 2 + 2) * (float)(i % 7);
            want[i] = (float)(size + 1) * (float)(i % 7);
        }
        if (ddp_allreduce(c, buf, m, DDP_AVG, &err) != 0) {
            snprintf(why, n, "average of %zu: %s", m, err.msg);
            goto out;
        }
        if (check_bits(buf, want, m, "average", why, n) != 0)
            goto out;
        int root = size - 1;
        for (size_t i = 0; i < m; i++) {
            buf[i] = rank == root ? (float)i : -1.0f;
            want[i] = (float)i;
        }
        if (ddp_broadcast(c, buf, m, root, &err) != 0) {
            snprintf(why, n, "broadcast of %zu: %s", m, err.msg);
            goto out;
        }
        if (check_bits(buf, want, m, "broadcast", why, n) != 0)
            goto out;
    }
    if (ddp_barrier(c, 0, &err) != 0) {
        snprintf(why, n, "barrier: %s", err.msg);
        goto out;
    }
    if (ddp_broadcast(c, buf, 1, size, &err) != -1 || !strstr(err.msg, "0 <= root < size")) {
        snprintf(why, n, "a root outside the gang was not refused");
        goto out;
    }
    snprintf(why, n, "sum, average and broadcast of 1, 1000 and 1M floats exact, barrier passed");
    rc = 0;
out:
    ddp_comm_destroy(c);
    queue_close(q);
    free(buf);
    free(want);
    return rc;
}

/* ---- failures --------------------------------------------------------------- */

/* Rank 0 alone: the rendezvous fails at its time-out, naming what is missing. */
static int rank_alone(int rank, int size, const char *scope, char *why, size_t n)
{
    queue_conn *q = rank_connect();
    ddp_comm *c = NULL;
    cds_err err;
    int64_t t0 = cds_mono_ms();
    int rc = q ? join(q, rank, size, scope, 1000, &c, &err) : -1;
    int64_t ms = cds_mono_ms() - t0;
    queue_close(q);
    if (rc == 0) {
        ddp_comm_destroy(c);
        return snprintf(why, n, "joined a gang whose other rank never started"), -1;
    }
    if (!strstr(err.msg, "within 1000 ms (is every rank") || ms < 900 || ms > 9000)
        return snprintf(why, n, "after %lld ms: %s", (long long)ms, err.msg), -1;
    return snprintf(why, n, "rendezvous refused after %lld ms: %s", (long long)ms, err.msg), 0;
}

/* Rank 1 joins, then dies (how: 'k' exits at once, 's' stops itself);
 * rank 0's next all-reduce must fail (at once for a dead peer, at the
 * time-out for a stopped one), and every later call must be refused. */
static int peer_failure(int rank, int size, const char *scope, char *why, size_t n, char how)
{
    const int64_t timeout = 1500;
    queue_conn *q = rank_connect();
    ddp_comm *c = NULL;
    cds_err err;
    if (!q || join(q, rank, size, scope, timeout, &c, &err) != 0)
        return snprintf(why, n, "joining: %s", q ? err.msg : "no Redis connection"), -1;
    float v[256] = {0};
    if (ddp_barrier(c, 0, &err) != 0)
        return snprintf(why, n, "first barrier: %s", err.msg), -1;
    if (rank == 1) {
        if (how == 's') {
            snprintf(why, n, "stopped itself");
            raise(SIGSTOP);
            return 0; /* the parent kills it once rank 0 is done */
        }
        snprintf(why, n, "exited without a word"); /* its sockets close as the process ends */
        return 0;
    }
    int64_t t0 = cds_mono_ms();
    int rc = ddp_allreduce(c, v, 256, DDP_SUM, &err);
    int64_t ms = cds_mono_ms() - t0;
    if (rc == 0)
        return snprintf(why, n, "an all-reduce with a %s peer succeeded", how == 's' ? "stopped" : "dead"), -1;
    int64_t lo = how == 's' ? timeout * 9 / 10 : 0;
    if (ms < lo || ms > timeout + 8000)
        return snprintf(why, n, "failed after %lld ms, outside [%lld, %lld]: %s", (long long)ms, (long long)lo,
                        (long long)timeout + 8000, err.msg), -1;
    char first[CDS_ERR_MAX];
    snprintf(first, sizeof first, "%s", err.msg);
    if (ddp_allreduce(c, v, 256, DDP_SUM, &err) != -1 || !strstr(err.msg, "broken"))
        return snprintf(why, n, "a call after the failure was not refused at once: %s", err.msg), -1;
    ddp_comm_destroy(c);
    queue_close(q);
    return snprintf(why, n, "failed after %lld ms (%.300s), then refused", (long long)ms, first), 0;
}

static int rank_peer_killed(int rank, int size, const char *scope, char *why, size_t n)
{
    return peer_failure(rank, size, scope, why, n, 'k');
}

/* A stopped rank never answers; run_stopped_gang reaps it. */
static void run_stopped_gang(void)
{
    char scope[64];
    snprintf(scope, sizeof scope, "stopped-%d", (int)getpid());
    int fd[2];
    if (pipe(fd) != 0)
        tap_bail("pipe failed");
    fflush(stdout);
    pid_t p1 = fork();
    if (p1 == 0) {
        char why[MSG];
        close(fd[0]);
        close(fd[1]);
        _exit(peer_failure(1, 2, scope, why, sizeof why, 's') == 0 ? 0 : 1);
    }
    pid_t p0 = fork();
    if (p0 == 0) {
        char why[MSG] = "";
        close(fd[0]);
        int rc = peer_failure(0, 2, scope, why, sizeof why, 's');
        if (write(fd[1], why, strlen(why)) < 0)
            _exit(3);
        _exit(rc == 0 ? 0 : 1);
    }
    close(fd[1]);
    char why[MSG] = "";
    ssize_t got = read(fd[0], why, sizeof why - 1);
    why[got > 0 ? got : 0] = '\0';
    close(fd[0]);
    int st = 0;
    waitpid(p0, &st, 0);
    ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a stopped peer: rank 0 of 2: %s", why);
    kill(p1, SIGKILL);
    waitpid(p1, NULL, 0);
}

/* ---- in one process --------------------------------------------------------- */

static void test_refusals(queue_conn *q)
{
    ddp_comm *c = (ddp_comm *)1;
    cds_err err;
    ddp_comm_opts o = {.q = q, .scope = "x", .rank = 2, .size = 2};
    ok(ddp_comm_gloo(&o, &c, &err) == -1 && c == NULL && strstr(err.msg, "0 <= rank < size"),
       "rank 2 of 2 is refused: %s", err.msg);
    o.rank = 0;
    o.scope = "";
    ok(ddp_comm_gloo(&o, &c, &err) == -1 && strstr(err.msg, "rendezvous scope"), "no scope is refused: %s", err.msg);

    /* A gang of one needs no peer: its collectives leave the data alone. */
    o.scope = "solo";
    o.size = 1;
    o.addr = "127.0.0.1";
    float v[3] = {1.5f, -2.0f, 3.25f};
    int rc = ddp_comm_gloo(&o, &c, &err);
    ok(rc == 0, "a gang of one joins: %s", rc ? err.msg : "ok");
    if (rc == 0) {
        ok(ddp_allreduce(c, v, 3, DDP_AVG, &err) == 0 && v[0] == 1.5f && v[1] == -2.0f && v[2] == 3.25f,
           "a gang of one: the average is the value itself");
        ddp_comm_abort(c);
        ok(ddp_allreduce(c, v, 3, DDP_SUM, &err) == -1 && strstr(err.msg, "broken (aborted)"),
           "after abort every call is refused: %s", err.msg);
        ok(ddp_barrier(c, 0, &err) == -1, "so is a barrier");
        ddp_comm_destroy(c);
    }
}

/* Two ranks that say they are on different hosts, listening on 127.0.0.1
 * and on localhost: both refuse in one line naming --ddp-addr. */
static int rank_two_hosts(int rank, int size, const char *scope, char *why, size_t n)
{
    queue_conn *q = rank_connect();
    ddp_comm *c = NULL;
    cds_err err;
    ddp_comm_opts o = {.q = q, .scope = scope, .rank = rank, .size = size, .timeout_ms = 5000,
                       .addr = rank == 0 ? "127.0.0.1" : "localhost", .host = rank == 0 ? "node-a" : "node-b"};
    int rc = q ? ddp_comm_gloo(&o, &c, &err) : -1;
    queue_close(q);
    if (rc == 0) {
        ddp_comm_destroy(c);
        return snprintf(why, n, "a gang across hosts joined on a loopback address"), -1;
    }
    if (!strstr(err.msg, "spans hosts") || !strstr(err.msg, "--ddp-addr") || strchr(err.msg, '\n'))
        return snprintf(why, n, "%s", err.msg), -1;
    return snprintf(why, n, "%s", err.msg), 0;
}

static void test_rdv_keys(queue_conn *q)
{
    cds_err err;
    void *data = NULL;
    size_t n = 0;
    ok(queue_rdv_get(q, "g1", "rank_0", &data, &n, &err) == 0 && data == NULL, "a key not yet written reads as 0");
    const char bytes[5] = {'a', 0, 'b', '\n', 'c'};
    ok(queue_rdv_set(q, "g1", "rank_0", bytes, sizeof bytes, 60000, &err) == 0, "a value is written");
    int rc = queue_rdv_get(q, "g1", "rank_0", &data, &n, &err);
    ok(rc == 1 && n == 5 && memcmp(data, bytes, 5) == 0 && ((char *)data)[5] == '\0',
       "it reads back byte for byte, NUL included");
    free(data);
    redisContext *raw = test_raw_connect();
    redisReply *r = test_rcmd(raw, "PTTL %srdv:{g1}:rank_0", prefix);
    ok(r && r->type == REDIS_REPLY_INTEGER && r->integer > 50000 && r->integer <= 60000,
       "it expires (PTTL %lld ms of 60000)", r ? r->integer : -1);
    freeReplyObject(r);
    redisFree(raw);
    ok(queue_rdv_set(q, "g1", "rank_0", "x", 1, 0, &err) == -1 && strstr(err.msg, "too short"),
       "a value without an expiry is refused: %s", err.msg);
    ok(queue_rdv_set(q, "g 1", "k", "x", 1, 10, &err) == -1 && strstr(err.msg, "scope"),
       "a scope with a space is refused: %s", err.msg);
    ok(queue_rdv_get(q, "g1", "a/b", &data, &n, &err) == -1 && strstr(err.msg, "key 'a/b'"),
       "a key with a slash is refused: %s", err.msg);
}

int main(void)
{
    queue_conn *q = test_connect("ddp", prefix, sizeof prefix);
    test_rdv_keys(q);
    test_refusals(q);
    queue_close(q);

    run_gang("collectives W=2", 2, rank_collectives, NULL);
    run_gang("collectives W=3", 3, rank_collectives, NULL);
    static const int only_rank0[] = {1, 0};
    run_gang("a missing peer", 2, rank_alone, only_rank0);
    run_gang("a killed peer", 2, rank_peer_killed, NULL);
    run_stopped_gang();
    run_gang("a gang across hosts on loopback addresses", 2, rank_two_hosts, NULL);
    return tap_done();
}
