/* queue_outbox: cds_results rows that wait in Redis for their database.
 *
 * An evaluated epoch becomes a row of cds_results in the database its
 * dataset came from.  That database may be down, unreachable or refusing
 * logins when the evaluation ends, and the worker may die right after, so
 * the row is never handed straight to the database: mop_result.lua appends
 * it to the outbox of that database in the same script call that records
 * the result (queue_mop_record_result_row), and workers write the outbox to
 * the database afterwards.
 *
 * One outbox per database (per DSN text, named by a 64-bit FNV-1a hash of
 * it, 16 hex digits): a list of rows, oldest first, a state hash (which
 * holds the DSN, once: the rows do not repeat it), and an entry in the
 * index zset scored by the time the list may next be tried.
 * A drainer (any worker) takes the list's claim (lua/outbox.lua "take"),
 * writes the head row, and says "done" (the head leaves the list, the
 * backoff resets, the answer is the next head) or "fail".  A failed try
 * moves the index score by min(cap, base·2^(n−1))·U[0.5, 1] for the n-th
 * failure in a row (the prelude's backoff_ms, as for a model's failed
 * visits), one schedule shared by every worker through Redis; a
 * row the database refuses for its own data is set aside after a few tries
 * (at once if it is not readable) into results:aside, with the reason.
 * Invariants (kept by the scripts): a DSN id is in the index iff its list
 * has rows; rows leave the list only from the head, under a claim that
 * holds, after the database accepted them or when set aside; so rows reach
 * a database in the order they were recorded, and a row is removed only
 * once written.  A drainer that dies between the insert and "done" leaves
 * the row at the head: the next one writes it again, and the table's
 * primary key (sweep, model, epoch) makes that an update to the same
 * values, so each row is in the table exactly once.  The index is global
 * (not per sweep), so rows of a sweep that finished and left the active
 * set are still drained.
 *
 * queue_outbox_report is the read-only view for jobctl results --check-db;
 * it reads with plain commands (not atomic, which a report need not be). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "queue_int.h"
#include "queue_mop.h"

/* How many rows one LRANGE of the report reads. */
#define REPORT_CHUNK 512

void queue_outbox_id(const char *dsn, char id[QUEUE_OUTBOX_ID_LEN])
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)(dsn ? dsn : ""); *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    snprintf(id, QUEUE_OUTBOX_ID_LEN, "%016llx", (unsigned long long)h);
}

void qoutbox_keys(qargs *keys, const queue_conn *q, const char *id, int with_aside)
{
    qargs_key(keys, q, "results:outbox");
    qargs_key(keys, q, "results:outbox:{%s}", id);
    qargs_key(keys, q, "results:outbox:{%s}:state", id);
    if (with_aside)
        qargs_key(keys, q, "results:aside");
}

static int id_ok(const char *id, cds_err *err)
{
    if (id && strlen(id) == QUEUE_OUTBOX_ID_LEN - 1 && strspn(id, "0123456789abcdef") == QUEUE_OUTBOX_ID_LEN - 1)
        return 0;
    return cds_errf(err, "bad outbox id '%.40s': use the 16 hex digits queue_outbox_id gives", id ? id : "");
}

void queue_outbox_head_clear(queue_outbox_head *h)
{
    free(h->row);
    free(h->dsn);
    memset(h, 0, sizeof *h);
}

static int64_t int_or(const redisReply *r, size_t i, int64_t none)
{
    const char *s = qc_reply_str(r, i);
    if (s && !*s)
        return none;
    return qc_reply_int(r, i);
}

static int parse_head(redisReply *r, queue_outbox_head *h, cds_err *err)
{
    static const char *const states[] = {"row", "empty", "later", "busy", "lost", "released", "aside"};
    memset(h, 0, sizeof *h);
    h->state = -1;
    for (int i = 0; r && r->type == REDIS_REPLY_ARRAY && r->elements == 8 && i < 7; i++)
        if (qc_reply_is(r, 0, states[i]))
            h->state = i;
    if (h->state < 0) {
        const char *s = qc_reply_str(r, 0);
        cds_errf(err, "unexpected answer '%s' from the outbox script", s ? s : "?");
        freeReplyObject(r);
        return -1;
    }
    const char *row = qc_reply_str(r, 1), *dsn = qc_reply_str(r, 7);
    if ((((row && *row) || h->state == QUEUE_OUTBOX_ROW) && !(h->row = strdup(row ? row : ""))) ||
        (dsn && !(h->dsn = strdup(dsn)))) {
        freeReplyObject(r);
        queue_outbox_head_clear(h);
        return cds_err_nomem(err, "out of memory reading an outbox row");
    }
    h->waiting = qc_reply_int(r, 2);
    h->failures = qc_reply_int(r, 3);
    h->now_ms = qc_reply_int(r, 4);
    h->failing_since_ms = int_or(r, 5, -1);
    snprintf(h->last_error, sizeof h->last_error, "%s", qc_reply_str(r, 6) ?: "");
    freeReplyObject(r);
    return 0;
}

/* Runs one op of lua/outbox.lua on c's outbox; frees extra. */
static int outbox_op(queue_conn *q, const char *op, const queue_outbox_claim *c, qargs *extra, queue_outbox_head *h,
                     cds_err *err)
{
    memset(h, 0, sizeof *h);
    if (id_ok(c->id, err) != 0) {
        if (extra)
            qargs_free(extra);
        return -1;
    }
    qargs keys = {0}, args = {0};
    qoutbox_keys(&keys, q, c->id, 1);
    qargs_add(&args, op);
    qargs_add(&args, c->id);
    qargs_add(&args, c->worker ? c->worker : "");
    qargs_add(&args, c->token);
    qargs_addf(&args, "%lld", (long long)(c->claim_ms > 0 ? c->claim_ms : 30000));
    qargs_append(&args, extra);
    if (extra)
        qargs_free(extra);
    redisReply *r = qc_run(q, QS_OUTBOX, &keys, &args, err);
    return r ? parse_head(r, h, err) : -1;
}

int queue_outbox_take(queue_conn *q, queue_outbox_claim *c, queue_outbox_head *h, cds_err *err)
{
    if (cds_random_hex(c->token, 16, err) != 0)
        return -1;
    return outbox_op(q, "take", c, NULL, h, err);
}

int queue_outbox_done(queue_conn *q, const queue_outbox_claim *c, const char *row, queue_outbox_head *h,
                      cds_err *err)
{
    qargs extra = {0};
    qargs_add(&extra, row ? row : "");
    return outbox_op(q, "done", c, &extra, h, err);
}

int queue_outbox_fail(queue_conn *q, const queue_outbox_claim *c, const char *row, const queue_outbox_failure *f,
                      queue_outbox_head *h, cds_err *err)
{
    const char *kind = f->kind ? f->kind : "retry";
    if (strcmp(kind, "retry") != 0 && strcmp(kind, "refused") != 0 && strcmp(kind, "malformed") != 0)
        return cds_errf(err, "bad outbox failure kind '%.20s': use retry, refused or malformed", kind);
    double factor = f->factor < 0.5 ? 0.5 : f->factor > 1 ? 1 : f->factor;
    qargs extra = {0};
    qargs_add(&extra, row ? row : "");
    qargs_add(&extra, f->why && *f->why ? f->why : "failed");
    qargs_add(&extra, kind);
    qargs_addf(&extra, "%lld", (long long)(f->base_ms > 0 ? f->base_ms : 0));
    qargs_addf(&extra, "%lld", (long long)(f->cap_ms > 0 ? f->cap_ms : 0));
    qargs_addf(&extra, "%.6f", factor);
    qargs_addf(&extra, "%d", f->max_refusals > 0 ? f->max_refusals : 1);
    return outbox_op(q, "fail", c, &extra, h, err);
}

int queue_outbox_release(queue_conn *q, const queue_outbox_claim *c, queue_outbox_head *h, cds_err *err)
{
    return outbox_op(q, "release", c, NULL, h, err);
}

int queue_outbox_due(queue_conn *q, size_t max, char ***ids, size_t *n, cds_err *err)
{
    *ids = NULL;
    *n = 0;
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "results:outbox");
    qargs_addf(&args, "%zu", max ? max : 1);
    redisReply *r = qc_run(q, QS_OUTBOX_DUE, &keys, &args, err);
    if (!r)
        return -1;
    int rc = r->type != REDIS_REPLY_ARRAY
                 ? cds_errf(err, "unexpected reply listing the due cds_results outboxes at %s", q->url_redacted)
             : qc_reply_strings(r, ids, n) != 0
                 ? cds_err_nomem(err, "out of memory listing the due cds_results outboxes")
                 : 0;
    freeReplyObject(r);
    return rc;
}

/* ---- the report ------------------------------------------------------------ */

static redisReply *command(queue_conn *q, cds_err *err, const char *verb, const char *key, const char *a,
                           const char *b, const char *c)
{
    qargs cmd = {0};
    qargs_add(&cmd, verb);
    if (key)
        qargs_key(&cmd, q, "%s", key);
    if (a)
        qargs_add(&cmd, a);
    if (b)
        qargs_add(&cmd, b);
    if (c)
        qargs_add(&cmd, c);
    return qc_take(q, &cmd, err);
}

static json_t *ms_or_null(int64_t ms) { return ms >= 0 ? json_integer(ms) : json_null(); }

/* A field of a hash reply as an integer, -1 when absent or empty. */
static int64_t hash_int(const json_t *o, const char *field)
{
    const char *s = json_string_value(json_object_get(o, field));
    return s && *s ? strtoll(s, NULL, 10) : -1;
}

/* The rows of one DSN's list that belong to sweep (all when NULL): how many
 * and the oldest recording time.  A row that does not parse counts only in
 * the report of every sweep (it is set aside at its first try anyway). */
static int scan_rows(queue_conn *q, const char *id, const char *sweep, int64_t *count, int64_t *oldest, cds_err *err)
{
    char key[64], from[24], to[24];
    snprintf(key, sizeof key, "results:outbox:{%s}", id);
    *count = 0;
    *oldest = -1;
    for (long long start = 0;; start += REPORT_CHUNK) {
        snprintf(from, sizeof from, "%lld", start);
        snprintf(to, sizeof to, "%lld", start + REPORT_CHUNK - 1);
        redisReply *r = command(q, err, "LRANGE", key, from, to, NULL);
        if (!r)
            return -1;
        size_t got = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
        for (size_t i = 0; i < got; i++) {
            const char *text = qc_reply_str(r, i);
            json_t *row = text ? json_loads(text, 0, NULL) : NULL;
            const char *s = json_string_value(json_object_get(row, "sweep"));
            if (sweep ? s && strcmp(s, sweep) == 0 : 1) {
                json_t *t = json_object_get(row, "recorded_ms");
                (*count)++;
                if (json_is_integer(t) && (*oldest < 0 || json_integer_value(t) < *oldest))
                    *oldest = json_integer_value(t);
            }
            json_decref(row);
        }
        freeReplyObject(r);
        if (got < REPORT_CHUNK)
            return 0;
    }
}

static json_t *database_entry(queue_conn *q, const char *id, int64_t score, const char *sweep, int64_t *count,
                              int64_t *oldest, cds_err *err)
{
    char key[64];
    json_t *st = NULL;
    snprintf(key, sizeof key, "results:outbox:{%s}:state", id);
    if (scan_rows(q, id, sweep, count, oldest, err) != 0 || (queue_record_get(q, key, &st, err) < 0))
        return NULL;
    const char *dsn = json_string_value(json_object_get(st, "dsn"));
    const char *last = json_string_value(json_object_get(st, "last_error"));
    const char *by = json_string_value(json_object_get(st, "claim_by"));
    json_t *o = json_pack("{s:s, s:s, s:I, s:o, s:I, s:s?, s:o, s:I, s:o, s:s?}", "id", id, "dsn", dsn ? dsn : "",
                          "waiting", (json_int_t)*count, "oldest_ms", ms_or_null(*oldest), "failures",
                          (json_int_t)(hash_int(st, "failures") > 0 ? hash_int(st, "failures") : 0), "last_error",
                          last && *last ? last : NULL, "last_error_ms", ms_or_null(hash_int(st, "last_error_ms")),
                          "next_try_ms", (json_int_t)score, "failing_since_ms",
                          ms_or_null(hash_int(st, "failing_since_ms")), "claimed_by", by && *by ? by : NULL);
    json_decref(st);
    if (!o)
        cds_err_nomem(err, "out of memory building the outbox report");
    return o;
}

/* The set-aside rows of sweep (all when NULL), as report entries. */
static int aside_entries(queue_conn *q, const char *sweep, json_t *out, cds_err *err)
{
    redisReply *r = command(q, err, "LRANGE", "results:aside", "0", "-1", NULL);
    if (!r)
        return -1;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const char *text = qc_reply_str(r, i);
        json_t *w = text ? json_loads(text, 0, NULL) : NULL;
        json_t *row = json_loads(json_string_value(json_object_get(w, "row")) ?: "", 0, NULL);
        const char *s = json_string_value(json_object_get(row, "sweep"));
        if (!sweep || (s && strcmp(s, sweep) == 0)) {
            json_t *e = json_pack("{s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?}", "sweep", json_object_get(row, "sweep"),
                                  "model", json_object_get(row, "model"), "epoch", json_object_get(row, "epoch"),
                                  "dsn", json_object_get(w, "dsn"), "error", json_object_get(w, "error"), "attempts",
                                  json_object_get(w, "attempts"), "aside_ms", json_object_get(w, "aside_ms"));
            if (e)
                json_array_append_new(out, e);
        }
        json_decref(row);
        json_decref(w);
    }
    freeReplyObject(r);
    return 0;
}

int queue_outbox_report(queue_conn *q, const char *sweep, json_t **out, cds_err *err)
{
    *out = NULL;
    if (sweep && queue_sweep_id_check(sweep, err) != 0)
        return -1;
    redisReply *t = command(q, err, "TIME", NULL, NULL, NULL, NULL);
    if (!t)
        return -1;
    int64_t now = qc_reply_int(t, 0) * 1000 + qc_reply_int(t, 1) / 1000;
    freeReplyObject(t);
    redisReply *idx = command(q, err, "ZRANGE", "results:outbox", "0", "-1", "WITHSCORES");
    if (!idx)
        return -1;
    json_t *dbs = json_array(), *aside = json_array();
    int64_t total = 0, oldest = -1;
    int rc = dbs && aside ? 0 : cds_err_nomem(err, "out of memory building the outbox report");
    for (size_t i = 0; rc == 0 && idx->type == REDIS_REPLY_ARRAY && i + 1 < idx->elements; i += 2) {
        int64_t count, first;
        const char *id = qc_reply_str(idx, i);
        json_t *e = database_entry(q, id ? id : "", qc_reply_int(idx, i + 1), sweep, &count, &first, err);
        if (!e) {
            rc = -1;
            break;
        }
        if (count == 0) {
            json_decref(e);
            continue;
        }
        total += count;
        if (first >= 0 && (oldest < 0 || first < oldest))
            oldest = first;
        json_array_append_new(dbs, e);
    }
    freeReplyObject(idx);
    if (rc == 0)
        rc = aside_entries(q, sweep, aside, err);
    if (rc == 0 && !(*out = json_pack("{s:s?, s:I, s:I, s:o, s:I, s:O, s:O}", "sweep", sweep, "now_ms",
                                      (json_int_t)now, "waiting", (json_int_t)total, "oldest_ms", ms_or_null(oldest),
                                      "set_aside", (json_int_t)json_array_size(aside), "databases", dbs, "aside",
                                      aside)))
        rc = cds_err_nomem(err, "out of memory building the outbox report");
    json_decref(dbs);
    json_decref(aside);
    return rc;
}
