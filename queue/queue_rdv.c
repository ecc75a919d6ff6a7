/* queue_rdv: rendezvous keys, the short-lived values through which the
 * ranks of a data-parallel gang find each other (ddp/).
 *
 * A value lives at <prefix>rdv:{<scope>}:<key>, where the scope names one
 * attempt of one gang, so a restarted gang never reads a value an earlier
 * attempt left.  Every value is written with an expiry (SET .. PX): a gang
 * that dies leaves nothing behind for long.  Values are bytes (a Gloo
 * address, NCCL's unique id as hex), written once and read by polling; the
 * poll and its deadline are the caller's (ddp_store.c), since only it knows
 * how long a rendezvous may take. */
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"

#define RDV_NAME_MAX 128

static int rdv_names_ok(const char *scope, const char *key, cds_err *err)
{
    if (!scope || !qc_name_ok(scope, RDV_NAME_MAX))
        return cds_errf(err, "rendezvous scope '%.60s' must be 1 to %d letters, digits, '_', '-' or '.'",
                        scope ? scope : "", RDV_NAME_MAX - 1);
    if (!key || !qc_name_ok(key, RDV_NAME_MAX))
        return cds_errf(err, "rendezvous key '%.60s' must be 1 to %d letters, digits, '_', '-' or '.'",
                        key ? key : "", RDV_NAME_MAX - 1);
    return 0;
}

int queue_rdv_set(queue_conn *q, const char *scope, const char *key, const void *data, size_t n, int64_t ttl_ms,
                  cds_err *err)
{
    if (rdv_names_ok(scope, key, err) != 0)
        return -1;
    if (ttl_ms < 1)
        return cds_errf(err, "rendezvous key %s:%s: an expiry of %lld ms is too short: use 1 ms or more", scope, key,
                        (long long)ttl_ms);
    qargs cmd;
    qargs_init(&cmd);
    qargs_add(&cmd, "SET");
    qargs_key(&cmd, q, "rdv:{%s}:%s", scope, key);
    qargs_addn(&cmd, n ? (const char *)data : "", n); /* an empty value may come without a buffer */
    qargs_add(&cmd, "PX");
    qargs_addf(&cmd, "%lld", (long long)ttl_ms);
    return qc_do(q, &cmd, err);
}

int queue_rdv_get(queue_conn *q, const char *scope, const char *key, void **data, size_t *n, cds_err *err)
{
    *data = NULL;
    *n = 0;
    if (rdv_names_ok(scope, key, err) != 0)
        return -1;
    qargs cmd;
    qargs_init(&cmd);
    qargs_add(&cmd, "GET");
    qargs_key(&cmd, q, "rdv:{%s}:%s", scope, key);
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_STRING) {
        /* One byte more, so a text value is also a C string. */
        if (!(*data = malloc(r->len + 1))) {
            rc = cds_err_nomem(err, "out of memory reading rendezvous key %s:%s (%zu bytes)", scope, key,
                               (size_t)r->len);
        } else {
            memcpy(*data, r->str, r->len);
            ((char *)*data)[r->len] = '\0';
            *n = r->len;
            rc = 1;
        }
    }
    freeReplyObject(r);
    return rc;
}
