/* Helpers for the queue integration tests: a connection to the harness's
 * redis-server under a key prefix of the test's own, so tests run in
 * parallel without seeing each other's keys; and a plain hiredis
 * connection to read and write keys as redis-cli would. */
#ifndef CDS_TESTUTIL_H
#define CDS_TESTUTIL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "queue.h"
#include "tap.h"

static inline const char *test_redis_url(void)
{
    const char *url = getenv("CDS_TEST_REDIS_URL");
    if (!url || !*url)
        tap_bail("CDS_TEST_REDIS_URL is not set: run the tests through scripts/with-services");
    return url;
}

/* Connects under prefix "t:<name>:<pid>:" (written into prefix_out). */
static inline queue_conn *test_connect(const char *name, char *prefix_out, size_t n)
{
    snprintf(prefix_out, n, "t:%s:%d:", name, (int)getpid());
    queue_opts o = {.url = test_redis_url(), .prefix = prefix_out};
    cds_err err;
    queue_conn *q = queue_connect(&o, &err);
    if (!q) {
        printf("# %s\n", err.msg);
        tap_bail("cannot connect to the test Redis");
    }
    return q;
}

/* A hiredis connection to the test Redis (its database selected), outside
 * the library under test. */
static inline redisContext *test_raw_connect(void)
{
    queue_url u;
    cds_err err;
    if (queue_url_parse(test_redis_url(), &u, &err) != 0)
        tap_bail("cannot parse CDS_TEST_REDIS_URL");
    redisContext *c = u.is_unix ? redisConnectUnix(u.path) : redisConnect(u.host, u.port);
    if (!c || c->err)
        tap_bail("cannot connect to the test Redis");
    freeReplyObject(redisCommand(c, "SELECT %d", u.db));
    return c;
}

/* A command on a test_raw_connect connection; bails out if it is lost. */
static inline redisReply *test_rcmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r)
        tap_bail("lost the raw Redis connection");
    return r;
}

#endif
