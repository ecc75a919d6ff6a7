/* The reaper: what keeps the queue live when workers die or forget.
 *
 * Each pass (under <prefix>reaper:lock, SET NX PX, released by compare and
 * delete) does four things per queue:
 *   reap     leases past their deadline go back to wait (a stall) or, past
 *            max_stalls, to the dead-letter set;
 *   promote  delayed jobs that are due go to wait;
 *   resolve  blocked jobs whose dependencies moved are released or buried
 *            (this repairs a worker that died between an ack and releasing
 *            the dependents);
 *   trim     finished jobs beyond the kept count or age are deleted.
 * Candidates are read without a lock; the script of each step re-checks them
 * atomically, so running two reapers at once is safe, only wasteful. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"

#define SCAN_LIMIT 1000

void queue_maint_opts_init(queue_maint_opts *o)
{
    o->lock_ms = 10000;
    o->keep_done = 10000;
    o->keep_done_ms = 7LL * 24 * 3600 * 1000;
    o->keep_dead = 10000;
    o->keep_dead_ms = 30LL * 24 * 3600 * 1000;
}

static long long server_now_ms(queue_conn *q, cds_err *err)
{
    qargs cmd = {0};
    qargs_add(&cmd, "TIME");
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    long long ms = qc_reply_int(r, 0) * 1000 + qc_reply_int(r, 1) / 1000;
    freeReplyObject(r);
    return ms;
}

/* Runs cmd and returns its reply if it is an array (of ids), else NULL. */
static redisReply *read_ids(queue_conn *q, qargs *cmd, cds_err *err)
{
    redisReply *r = qc_command(q, cmd, err);
    qargs_reset(cmd);
    if (r && r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        cds_errf(err, "unexpected reply listing job ids");
        return NULL;
    }
    return r;
}

/* Ids of a queue's set (active: by lease deadline, delayed: by due time)
 * whose score has passed, by the server's clock, oldest first. */
static redisReply *ids_due(queue_conn *q, const char *queue, const char *set, cds_err *err)
{
    long long now = server_now_ms(q, err);
    if (now < 0)
        return NULL;
    qargs cmd = {0};
    qargs_add(&cmd, "ZRANGEBYSCORE");
    qargs_key(&cmd, q, "q:%s:%s", queue, set);
    qargs_add(&cmd, "-inf");
    qargs_addf(&cmd, "%lld", now);
    qargs_add(&cmd, "LIMIT");
    qargs_add(&cmd, "0");
    qargs_addf(&cmd, "%d", SCAN_LIMIT);
    redisReply *ids = read_ids(q, &cmd, err);
    qargs_free(&cmd);
    return ids;
}

/* Fetches one field of many job hashes in one round trip. */
static int job_fields(queue_conn *q, const redisReply *ids, const char *field, qbatch *b, cds_err *err)
{
    if (qbatch_init(b, ids->elements, err) != 0)
        return -1;
    for (size_t i = 0; i < ids->elements; i++) {
        qargs_add(&b->cmd[i], "HGET");
        qargs_key(&b->cmd[i], q, "job:%s", ids->element[i]->str);
        qargs_add(&b->cmd[i], field);
    }
    return qbatch_run(q, b, err);
}

static const char *reply_text(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? r->str : NULL;
}

int queue_reap(queue_conn *q, const char *queue, queue_maint_stats *st, cds_err *err)
{
    redisReply *ids = ids_due(q, queue, "active", err);
    if (!ids)
        return -1;
    size_t n = ids->elements;
    qbatch uniq = {0}, reap = {0};
    int rc = job_fields(q, ids, "unique", &uniq, err);
    if (rc == 0)
        rc = qbatch_init(&reap, n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *id = ids->element[i]->str;
        qargs keys = {0}, args = {0};
        qargs_key(&keys, q, "q:%s:active", queue);
        qargs_key(&keys, q, "q:%s:lease", queue);
        qargs_key(&keys, q, "q:%s:wait", queue);
        qargs_key(&keys, q, "q:%s:dead", queue);
        qargs_key(&keys, q, "q:%s:stats", queue);
        qargs_key(&keys, q, "job:%s", id);
        qargs_unique_key(&keys, q, reply_text(uniq.reply[i]), id);
        qargs_key(&keys, q, "q:%s:wake", queue);
        qargs_add(&args, id);
        qc_build_eval(q, QS_REAP, &keys, &args, &reap.cmd[i]);
        qargs_free(&keys);
        qargs_free(&args);
    }
    if (rc == 0)
        rc = qbatch_run(q, &reap, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const redisReply *r = reap.reply[i];
        if (qc_reply_is(r, 0, "requeued")) {
            if (st)
                st->requeued++;
        } else if (qc_reply_is(r, 0, "dead")) {
            if (st)
                st->buried++;
            if (qc_reply_int(r, 1) == 1)
                rc = queue_resolve_dependents(q, ids->element[i]->str, st, err);
        } else if (r->type == REDIS_REPLY_ERROR) {
            rc = cds_errf(err, "reaping job %s: %s", ids->element[i]->str, r->str);
        }
    }
    qbatch_free(&uniq);
    qbatch_free(&reap);
    freeReplyObject(ids);
    return rc;
}

int queue_promote(queue_conn *q, const char *queue, queue_maint_stats *st, cds_err *err)
{
    redisReply *ids = ids_due(q, queue, "delayed", err);
    if (!ids)
        return -1;
    int rc = 0;
    if (ids->elements > 0) {
        qargs keys = {0}, args = {0};
        qargs_key(&keys, q, "q:%s:delayed", queue);
        qargs_key(&keys, q, "q:%s:wait", queue);
        qargs_key(&keys, q, "q:%s:wake", queue);
        for (size_t i = 0; i < ids->elements; i++) {
            qargs_key(&keys, q, "job:%s", ids->element[i]->str);
            qargs_add(&args, ids->element[i]->str);
        }
        redisReply *r = qc_run(q, QS_PROMOTE, &keys, &args, err);
        if (!r)
            rc = -1;
        else {
            if (st && r->type == REDIS_REPLY_INTEGER)
                st->promoted += (long)r->integer;
            freeReplyObject(r);
        }
    }
    freeReplyObject(ids);
    return rc;
}

/* Runs resolve.lua for one blocked job; *dead_with_deps = 1 when it was buried
 * and has dependents of its own. */
static int resolve_one(queue_conn *q, const char *id, queue_maint_stats *st, int *dead_with_deps, cds_err *err)
{
    *dead_with_deps = 0;
    qargs cmd = {0};
    qargs_add(&cmd, "HMGET");
    qargs_key(&cmd, q, "job:%s", id);
    qargs_add(&cmd, "queue");
    qargs_add(&cmd, "after");
    qargs_add(&cmd, "unique");
    redisReply *h = qc_take(q, &cmd, err);
    if (!h)
        return -1;
    const char *queue = qc_reply_str(h, 0);
    const char *after = qc_reply_str(h, 1);
    if (!queue || !after) {
        freeReplyObject(h);
        return 0; /* trimmed or never existed */
    }
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "job:%s", id);
    qargs_key(&keys, q, "q:%s:blocked", queue);
    qargs_key(&keys, q, "q:%s:wait", queue);
    qargs_key(&keys, q, "q:%s:delayed", queue);
    qargs_key(&keys, q, "q:%s:dead", queue);
    qargs_unique_key(&keys, q, reply_text(h->element[2]), id);
    qargs_key(&keys, q, "q:%s:wake", queue);
    qargs_key(&keys, q, "q:%s:stats", queue);
    qargs_add(&args, id);
    char *list = strdup(after);
    if (!list) {
        qargs_free(&keys);
        qargs_free(&args);
        freeReplyObject(h);
        return cds_err_nomem(err, "out of memory resolving the dependencies of job %s", id);
    }
    char *save = NULL;
    for (char *tok = strtok_r(list, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        qargs_key(&keys, q, "job:%s", tok);
        qargs_add(&args, tok);
    }
    free(list);
    freeReplyObject(h);
    redisReply *r = qc_run(q, QS_RESOLVE, &keys, &args, err);
    if (!r)
        return -1;
    if (qc_reply_is(r, 0, "released") && st)
        st->released++;
    if (qc_reply_is(r, 0, "dead")) {
        if (st)
            st->buried++;
        *dead_with_deps = qc_reply_int(r, 1) == 1;
    }
    freeReplyObject(r);
    return 0;
}

int queue_resolve_dependents(queue_conn *q, const char *id, queue_maint_stats *st, cds_err *err)
{
    /* A work list instead of recursion: a chain of dependencies may be long. */
    size_t cap = 16, n = 0;
    char **pending_ids = malloc(cap * sizeof *pending_ids);
    if (!pending_ids)
        return cds_err_nomem(err, "out of memory");
    int rc = 0;
    if (!(pending_ids[n] = strdup(id)))
        rc = cds_err_nomem(err, "out of memory");
    else
        n++;
    while (n > 0 && rc == 0) {
        char *cur = pending_ids[--n];
        qargs cmd = {0};
        qargs_add(&cmd, "SMEMBERS");
        qargs_key(&cmd, q, "job:%s:dependents", cur);
        redisReply *deps = read_ids(q, &cmd, err);
        qargs_free(&cmd);
        free(cur);
        if (!deps) {
            rc = -1;
            break;
        }
        for (size_t i = 0; i < deps->elements && rc == 0; i++) {
            int more = 0;
            rc = resolve_one(q, deps->element[i]->str, st, &more, err);
            if (rc == 0 && more) {
                if (n == cap) {
                    char **bigger = realloc(pending_ids, 2 * cap * sizeof *pending_ids);
                    if (!bigger) {
                        rc = cds_err_nomem(err, "out of memory");
                        break;
                    }
                    pending_ids = bigger;
                    cap *= 2;
                }
                if (!(pending_ids[n] = strdup(deps->element[i]->str)))
                    rc = cds_err_nomem(err, "out of memory");
                else
                    n++;
            }
        }
        freeReplyObject(deps);
    }
    while (n > 0)
        free(pending_ids[--n]);
    free(pending_ids);
    return rc;
}

int queue_resolve_blocked(queue_conn *q, const char *queue, queue_maint_stats *st, cds_err *err)
{
    qargs cmd = {0};
    qargs_add(&cmd, "ZRANGE");
    qargs_key(&cmd, q, "q:%s:blocked", queue);
    qargs_add(&cmd, "0");
    qargs_addf(&cmd, "%d", SCAN_LIMIT - 1);
    redisReply *ids = read_ids(q, &cmd, err);
    qargs_free(&cmd);
    if (!ids)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < ids->elements && rc == 0; i++) {
        int more = 0;
        rc = resolve_one(q, ids->element[i]->str, st, &more, err);
        if (rc == 0 && more)
            rc = queue_resolve_dependents(q, ids->element[i]->str, st, err);
    }
    freeReplyObject(ids);
    return rc;
}

static int trim_set(queue_conn *q, const char *queue, const char *set, int64_t keep, int64_t keep_ms,
                    long long now, queue_maint_stats *st, cds_err *err)
{
    /* Old ones first, then the oldest of those beyond the count. */
    qargs cmd = {0};
    qargs_add(&cmd, "ZCARD");
    qargs_key(&cmd, q, "q:%s:%s", queue, set);
    redisReply *card = qc_command(q, &cmd, err);
    qargs_reset(&cmd);
    if (!card) {
        qargs_free(&cmd);
        return -1;
    }
    long long total = card->type == REDIS_REPLY_INTEGER ? card->integer : 0;
    freeReplyObject(card);
    long long excess = total - keep;
    if (excess > 0) {
        qargs_add(&cmd, "ZRANGE");
        qargs_key(&cmd, q, "q:%s:%s", queue, set);
        qargs_add(&cmd, "0");
        qargs_addf(&cmd, "%lld", (excess < SCAN_LIMIT ? excess : SCAN_LIMIT) - 1);
    } else {
        qargs_add(&cmd, "ZRANGEBYSCORE");
        qargs_key(&cmd, q, "q:%s:%s", queue, set);
        qargs_add(&cmd, "-inf");
        qargs_addf(&cmd, "(%lld", now - keep_ms);
        qargs_add(&cmd, "LIMIT");
        qargs_add(&cmd, "0");
        qargs_addf(&cmd, "%d", SCAN_LIMIT);
    }
    redisReply *ids = read_ids(q, &cmd, err);
    qargs_free(&cmd);
    if (!ids)
        return -1;
    int rc = 0;
    if (ids->elements > 0) {
        qargs keys = {0}, args = {0};
        qargs_key(&keys, q, "q:%s:%s", queue, set);
        for (size_t i = 0; i < ids->elements; i++) {
            qargs_key(&keys, q, "job:%s", ids->element[i]->str);
            qargs_key(&keys, q, "job:%s:dependents", ids->element[i]->str);
            qargs_add(&args, ids->element[i]->str);
        }
        redisReply *r = qc_run(q, QS_TRIM, &keys, &args, err);
        if (!r)
            rc = -1;
        else {
            if (st && r->type == REDIS_REPLY_INTEGER)
                st->trimmed += (long)r->integer;
            freeReplyObject(r);
        }
    }
    freeReplyObject(ids);
    return rc;
}

int queue_trim(queue_conn *q, const char *queue, const queue_maint_opts *o, queue_maint_stats *st, cds_err *err)
{
    long long now = server_now_ms(q, err);
    if (now < 0)
        return -1;
    if (trim_set(q, queue, "done", o->keep_done, o->keep_done_ms, now, st, err) != 0 ||
        trim_set(q, queue, "cancelled", o->keep_done, o->keep_done_ms, now, st, err) != 0 ||
        trim_set(q, queue, "dead", o->keep_dead, o->keep_dead_ms, now, st, err) != 0)
        return -1;
    return 0;
}

static int unlock(queue_conn *q, const char *owner, cds_err *err)
{
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "reaper:lock");
    qargs_add(&args, owner);
    redisReply *r = qc_run(q, QS_UNLOCK, &keys, &args, err);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

int queue_maintain(queue_conn *q, const char *owner, const queue_maint_opts *o, queue_maint_stats *st,
                   cds_err *err)
{
    queue_maint_opts defaults;
    if (!o) {
        queue_maint_opts_init(&defaults);
        o = &defaults;
    }
    memset(st, 0, sizeof *st);
    qargs cmd = {0};
    qargs_add(&cmd, "SET");
    qargs_key(&cmd, q, "reaper:lock");
    qargs_add(&cmd, owner);
    qargs_add(&cmd, "NX");
    qargs_add(&cmd, "PX");
    qargs_addf(&cmd, "%lld", (long long)o->lock_ms);
    redisReply *r = qc_command(q, &cmd, err);
    qargs_reset(&cmd);
    if (!r) {
        qargs_free(&cmd);
        return -1;
    }
    int got = r->type == REDIS_REPLY_STATUS;
    freeReplyObject(r);
    if (!got) {
        qargs_free(&cmd);
        return 0;
    }
    st->ran = 1;
    qargs_add(&cmd, "SMEMBERS");
    qargs_key(&cmd, q, "queues");
    redisReply *names = read_ids(q, &cmd, err);
    qargs_free(&cmd);
    int rc = names ? 0 : -1;
    for (size_t i = 0; names && i < names->elements && rc == 0; i++) {
        const char *qn = names->element[i]->str;
        rc = queue_reap(q, qn, st, err);
        if (rc == 0)
            rc = queue_promote(q, qn, st, err);
        if (rc == 0)
            rc = queue_resolve_blocked(q, qn, st, err);
        if (rc == 0)
            rc = queue_trim(q, qn, o, st, err);
    }
    if (names)
        freeReplyObject(names);
    cds_err ignored;
    if (!queue_conn_broken(q))
        unlock(q, owner, rc == 0 ? err : &ignored);
    return rc;
}
