/* Helpers for the queue integration tests: a connection to the harness's
 * redis-server under a key prefix of the test's own, so tests run in
 * parallel without seeing each other's keys. */
#ifndef CDS_TESTUTIL_H
#define CDS_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

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

#endif
