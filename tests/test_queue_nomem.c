/* Out of memory while building a Redis command (white-box: queue_int.h).
 *
 * The argv builder used to abort() the process when an allocation failed;
 * the worker expects cds_err_nomem instead, so it can give its work back
 * and go on.  An argument too large to copy stands for the allocation that
 * fails: the command must be refused with an out-of-memory error, nothing
 * sent, and the connection left usable.  Allocations that fail return NULL
 * under ASan too (allocator_may_return_null below) instead of a report. */
#include <stdint.h>
#include <string.h>

#include "queue_int.h"
#include "queue_mop.h"
#include "testutil.h"

const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

/* A length no allocator grants: the copy of the argument fails. */
#define HUGE_ARG (SIZE_MAX / 4)

int main(void)
{
    char prefix[64];
    queue_conn *q = test_connect("nomem", prefix, sizeof prefix);
    cds_err err;

    qargs cmd = {0};
    qargs_add(&cmd, "SET");
    qargs_key(&cmd, q, "k");
    qargs_addn(&cmd, "x", HUGE_ARG);
    ok(cmd.nomem, "a failed allocation marks the command");
    redisReply *r = qc_take(q, &cmd, &err);
    ok(!r && cds_err_is_nomem(&err), "the command is refused as out of memory: %s", err.msg);

    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "mop:shards");
    qargs_addn(&args, "1", HUGE_ARG);
    r = qc_run(q, QS_MOP_ORPHANS, &keys, &args, &err);
    ok(!r && cds_err_is_nomem(&err), "a script call too is refused as out of memory");

    qbatch b;
    if (qbatch_init(&b, 2, &err) != 0)
        tap_bail("qbatch_init");
    qargs_add(&b.cmd[0], "PING");
    qargs_add(&b.cmd[1], "ECHO");
    qargs_addn(&b.cmd[1], "x", HUGE_ARG);
    ok(qbatch_run(q, &b, &err) != 0 && cds_err_is_nomem(&err), "a pipeline with one such command sends none");
    qbatch_free(&b);

    ok(!queue_conn_broken(q), "the connection is not marked broken");
    int n = -1;
    int shards[4];
    ok(queue_mop_orphan_shards(q, 1000, shards, 4, &n, &err) == 0 && n == 0, "and the next command runs");
    queue_close(q);
    return tap_done();
}
