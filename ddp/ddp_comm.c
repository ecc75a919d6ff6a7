/* ddp_comm: the communicator (ddp_comm.h): the checks, the broken state
 * and the messages every transport shares, over a transport's table
 * (ddp_int.h): Gloo here (ddp_gloo.h), with its rendezvous store over
 * Redis; NCCL in ddp_nccl.c.
 *
 * The store's keys are Gloo's own names ("rank_0" and so on) under the
 * gang's scope; each is written with an expiry of a few time-outs, long
 * enough for every rank to read it during the rendezvous and short enough
 * that an abandoned gang leaves nothing behind.  Sum is Gloo's all-reduce;
 * average divides the sum by the size afterwards, on every rank alike, so
 * the ranks keep identical bits. */
#include "ddp_comm.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cds_util.h"

#include "ddp_gloo.h"
#include "ddp_int.h"

struct ddp_comm {
    int rank, size;
    int64_t timeout_ms;
    int broken;
    char broke_by[160]; /* the call that broke it */
    const ddp_transport *t;
    void *impl;
};

/* ---- Gloo ------------------------------------------------------------------ */

static int gloo_allreduce(void *impl, float *buf, size_t n, int size, int avg, char *msg, size_t msg_n)
{
    if (ddp_gloo_allreduce_sum(impl, buf, n, msg, msg_n) != 0)
        return -1;
    if (avg && size > 1) {
        float inv = 1.0f / (float)size;
        for (size_t i = 0; i < n; i++)
            buf[i] *= inv;
    }
    return 0;
}

static int gloo_broadcast(void *impl, float *buf, size_t n, int root, char *msg, size_t msg_n)
{
    return ddp_gloo_broadcast(impl, buf, n, root, msg, msg_n);
}

static int gloo_allgatherv(void *impl, const void *send, size_t bytes, void *recv, const size_t *each, int size,
                           char *msg, size_t msg_n)
{
    return ddp_gloo_allgatherv(impl, send, bytes, recv, each, size, msg, msg_n);
}

static int gloo_barrier(void *impl, int64_t timeout_ms, char *msg, size_t msg_n)
{
    return ddp_gloo_barrier(impl, timeout_ms, msg, msg_n);
}

static void gloo_close(void *impl) { ddp_gloo_close(impl); }

static const ddp_transport gloo_transport = {
    .name = "gloo", .allreduce = gloo_allreduce, .broadcast = gloo_broadcast, .allgatherv = gloo_allgatherv,
    .barrier = gloo_barrier,
    .close = gloo_close,
};

int ddp_comm_make(const ddp_comm_opts *o, int64_t timeout_ms, const ddp_transport *t, void *impl, ddp_comm **out,
                  cds_err *err)
{
    ddp_comm *c = calloc(1, sizeof *c);
    if (!c) {
        t->close(impl);
        return cds_err_nomem(err, "out of memory for a communicator");
    }
    c->rank = o->rank;
    c->size = o->size;
    c->timeout_ms = timeout_ms;
    c->t = t;
    c->impl = impl;
    *out = c;
    return 0;
}

int ddp_comm_check_opts(const ddp_comm_opts *o, cds_err *err)
{
    if (o->size < 1 || o->rank < 0 || o->rank >= o->size)
        return cds_errf(err, "rank %d of a gang of %d: give 0 <= rank < size", o->rank, o->size);
    if ((!o->q && o->size > 1) || !o->scope || !*o->scope)
        return cds_errf(err, "a gang needs a Redis connection and a rendezvous scope to meet through");
    return 0;
}

typedef struct rdv_ctx {
    queue_conn *q;
    const char *scope;
    int64_t ttl_ms;
} rdv_ctx;

static int rdv_set(void *ctx, const char *key, const void *data, size_t n, char *msg, size_t msg_n)
{
    rdv_ctx *r = ctx;
    cds_err err;
    if (queue_rdv_set(r->q, r->scope, key, data, n, r->ttl_ms, &err) == 0)
        return 0;
    snprintf(msg, msg_n, "%s", err.msg);
    return -1;
}

static int rdv_get(void *ctx, const char *key, void **data, size_t *n, char *msg, size_t msg_n)
{
    rdv_ctx *r = ctx;
    cds_err err;
    int rc = queue_rdv_get(r->q, r->scope, key, data, n, &err);
    if (rc < 0)
        snprintf(msg, msg_n, "%s", err.msg);
    return rc;
}

/* Gloo writes to its peers' sockets without MSG_NOSIGNAL: a write to a
 * peer that just died would end this process by SIGPIPE instead of failing
 * the collective.  A process that takes the default action is switched to
 * ignoring it (the write then fails with EPIPE, which Gloo reports); one
 * that set its own handler keeps it. */
static void ignore_sigpipe(void)
{
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
}

/* 1 when the address this rank would listen on is a loopback one: the
 * given address (or host name) resolves to 127/8 or ::1, or the interface
 * is lo; with neither, the host name's (Debian maps it to 127.0.1.1). */
static int listens_on_loopback(const ddp_comm_opts *o)
{
    if (!o->addr && o->iface)
        return strcmp(o->iface, "lo") == 0;
    char host[256] = "";
    if (!o->addr && gethostname(host, sizeof host - 1) != 0)
        return 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(o->addr ? o->addr : host, NULL, &hints, &res) != 0 || !res)
        return 0;
    int loop = 0;
    if (res->ai_family == AF_INET)
        loop = (ntohl(((const struct sockaddr_in *)(const void *)res->ai_addr)->sin_addr.s_addr) >> 24) == 127;
    else if (res->ai_family == AF_INET6)
        loop = memcmp(&((const struct sockaddr_in6 *)(const void *)res->ai_addr)->sin6_addr, &in6addr_loopback,
                      sizeof in6addr_loopback) == 0;
    freeaddrinfo(res);
    return loop;
}

/* A gang across hosts cannot meet on loopback addresses: every rank
 * publishes its host name under the scope and reads the others'; when they
 * differ, a rank about to listen on a loopback address refuses, naming the
 * fix, instead of leaving its peers to time out on an address they cannot
 * reach. */
static int check_hosts(const ddp_comm_opts *o, int64_t timeout_ms, cds_err *err)
{
    char host[256] = "", key[32], other[256] = "";
    if (o->host)
        snprintf(host, sizeof host, "%s", o->host);
    else if (gethostname(host, sizeof host - 1) != 0)
        snprintf(host, sizeof host, "unknown");
    snprintf(key, sizeof key, "host_%d", o->rank);
    if (queue_rdv_set(o->q, o->scope, key, host, strlen(host), 4 * timeout_ms, err) != 0)
        return -1;
    int64_t start = cds_mono_ms();
    for (int r = 0; r < o->size && !other[0]; r++) {
        if (r == o->rank)
            continue;
        snprintf(key, sizeof key, "host_%d", r);
        for (;;) {
            void *data = NULL;
            size_t n = 0;
            int rc = queue_rdv_get(o->q, o->scope, key, &data, &n, err);
            if (rc < 0)
                return -1;
            if (rc == 1) {
                if (n != strlen(host) || memcmp(data, host, n) != 0)
                    snprintf(other, sizeof other, "%.*s", (int)(n < 200 ? n : 200), (const char *)data);
                free(data);
                break;
            }
            if (cds_mono_ms() - start > timeout_ms)
                return cds_errf(err, "rank %d of %d, gang %s: no rank published rendezvous key '%s' within %lld ms "
                                     "(is every rank of the gang up?)", o->rank, o->size, o->scope, key,
                                (long long)timeout_ms);
            cds_sleep_ms(5);
        }
    }
    if (other[0] && listens_on_loopback(o))
        return cds_errf(err, "rank %d of %d, gang %s: the gang spans hosts %s and %s, and this rank would listen on a "
                             "loopback address (%s): give cds-worker --ddp-addr ADDR or --ddp-iface NAME", o->rank,
                        o->size, o->scope, host, other, o->addr ? o->addr : o->iface ? o->iface : "its host name's");
    return 0;
}

int ddp_comm_gloo(const ddp_comm_opts *o, ddp_comm **out, cds_err *err)
{
    *out = NULL;
    if (ddp_comm_check_opts(o, err) != 0)
        return -1;
    if (!o->q)
        return cds_errf(err, "a Gloo gang needs a Redis connection to meet through, even a gang of one");
    int64_t timeout = o->timeout_ms > 0 ? o->timeout_ms : DDP_DEFAULT_TIMEOUT_MS;
    ignore_sigpipe();
    if (o->size > 1 && check_hosts(o, timeout, err) != 0)
        return -1;
    rdv_ctx r = {.q = o->q, .scope = o->scope, .ttl_ms = 4 * timeout};
    ddp_gloo_store store = {.ctx = &r, .set = rdv_set, .get = rdv_get};
    char msg[CDS_ERR_MAX];
    ddp_gloo *g = NULL;
    if (ddp_gloo_open(&store, o->rank, o->size, timeout, o->addr, o->iface, &g, msg, sizeof msg) != 0)
        return cds_errf(err, "rank %d of %d, gang %s: %s", o->rank, o->size, o->scope, msg);
    return ddp_comm_make(o, timeout, &gloo_transport, g, out, err);
}

int ddp_comm_rank(const ddp_comm *c) { return c->rank; }
int ddp_comm_size(const ddp_comm *c) { return c->size; }

/* A failed call breaks the communicator: the peers' sequences of calls no
 * longer match. */
static int fail(ddp_comm *c, const char *msg, cds_err *err)
{
    if (!c->broken) {
        c->broken = 1;
        size_t n = strnlen(msg, sizeof c->broke_by - 1); /* cut to fit: it is quoted in later refusals */
        memcpy(c->broke_by, msg, n);
        c->broke_by[n] = '\0';
    }
    return cds_errf(err, "rank %d of %d: %s (the gang must start again)", c->rank, c->size, msg);
}

static int refuse_broken(const ddp_comm *c, const char *what, cds_err *err)
{
    if (!c->broken)
        return 0;
    return cds_errf(err, "rank %d of %d: %s on a communicator that is broken (%.160s): start the gang again", c->rank,
                    c->size, what, c->broke_by[0] ? c->broke_by : "aborted");
}

int ddp_allreduce(ddp_comm *c, float *buf, size_t n, ddp_op op, cds_err *err)
{
    if (refuse_broken(c, "all-reduce", err) != 0)
        return -1;
    char msg[CDS_ERR_MAX];
    if (n > 0 && c->t->allreduce(c->impl, buf, n, c->size, op == DDP_AVG, msg, sizeof msg) != 0)
        return fail(c, msg, err);
    return 0;
}

int ddp_comm_on_device(const ddp_comm *c)
{
    return c->t->allreduce_dev != NULL;
}

static int refuse_host_only(ddp_comm *c, const char *what, cds_err *err)
{
    if (c->t->allreduce_dev)
        return 0;
    return cds_errf(err, "rank %d of %d: the %s communicator reduces host memory only, not a device's %s", c->rank,
                    c->size, c->t->name, what);
}

int ddp_allreduce_device(ddp_comm *c, float *buf, size_t n, ddp_op op, void *after, cds_err *err)
{
    if (refuse_host_only(c, "all-reduce", err) != 0 || refuse_broken(c, "all-reduce", err) != 0)
        return -1;
    char msg[CDS_ERR_MAX];
    if (n > 0 && c->t->allreduce_dev(c->impl, buf, n, op == DDP_AVG, after, msg, sizeof msg) != 0)
        return fail(c, msg, err);
    return 0;
}

int ddp_broadcast_device(ddp_comm *c, float *buf, size_t n, int root, void *after, cds_err *err)
{
    if (root < 0 || root >= c->size)
        return cds_errf(err, "broadcast from rank %d in a gang of %d: give 0 <= root < size", root, c->size);
    if (refuse_host_only(c, "broadcast", err) != 0 || refuse_broken(c, "broadcast", err) != 0)
        return -1;
    char msg[CDS_ERR_MAX];
    if (n > 0 && c->t->broadcast_dev(c->impl, buf, n, root, after, msg, sizeof msg) != 0)
        return fail(c, msg, err);
    return 0;
}

int ddp_broadcast(ddp_comm *c, float *buf, size_t n, int root, cds_err *err)
{
    if (root < 0 || root >= c->size)
        return cds_errf(err, "broadcast from rank %d in a gang of %d: give 0 <= root < size", root, c->size);
    if (refuse_broken(c, "broadcast", err) != 0)
        return -1;
    char msg[CDS_ERR_MAX];
    if (n > 0 && c->t->broadcast(c->impl, buf, n, root, msg, sizeof msg) != 0)
        return fail(c, msg, err);
    return 0;
}

int ddp_allgatherv(ddp_comm *c, const void *send, size_t bytes, void *recv, const size_t *each, cds_err *err)
{
    if (refuse_broken(c, "all-gather", err) != 0)
        return -1;
    if (!c->t->allgatherv)
        return cds_errf(err, "rank %d of %d: the %s communicator has no all-gather", c->rank, c->size, c->t->name);
    if (each[c->rank] != bytes)
        return cds_errf(err, "rank %d of %d: all-gather of %zu bytes, but the sizes say %zu for this rank", c->rank,
                        c->size, bytes, each[c->rank]);
    char msg[CDS_ERR_MAX];
    if (c->t->allgatherv(c->impl, send, bytes, recv, each, c->size, msg, sizeof msg) != 0)
        return fail(c, msg, err);
    return 0;
}

int ddp_allgather_sizes(ddp_comm *c, size_t mine, size_t *all, cds_err *err)
{
    size_t *each = malloc((size_t)c->size * sizeof *each);
    if (!each)
        return cds_err_nomem(err, "out of memory for %d sizes", c->size);
    for (int r = 0; r < c->size; r++)
        each[r] = sizeof(size_t);
    int rc = ddp_allgatherv(c, &mine, sizeof mine, all, each, err);
    free(each);
    return rc;
}

int ddp_barrier(ddp_comm *c, int64_t timeout_ms, cds_err *err)
{
    if (refuse_broken(c, "barrier", err) != 0)
        return -1;
    char msg[CDS_ERR_MAX];
    if (c->t->barrier(c->impl, timeout_ms > 0 ? timeout_ms : c->timeout_ms, msg, sizeof msg) != 0)
        return fail(c, msg, err);
    return 0;
}

void ddp_comm_abort(ddp_comm *c)
{
    if (c && !c->broken) {
        c->broken = 1;
        snprintf(c->broke_by, sizeof c->broke_by, "aborted");
        if (c->t->abort)
            c->t->abort(c->impl);
    }
}

void ddp_comm_destroy(ddp_comm *c)
{
    if (!c)
        return;
    c->t->close(c->impl);
    free(c);
}
