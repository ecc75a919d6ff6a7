/* The connection: one hiredis context, its settings, and the SHA1 of every
 * script.  Scripts are loaded once at connect (SCRIPT LOAD) and called with
 * EVALSHA; a server that lost them (restart, SCRIPT FLUSH) answers NOSCRIPT,
 * and the call that saw it reloads them all and runs again.  A command that
 * fails on the transport marks the connection broken so the owner can
 * reconnect; the context itself is never reused after a transport error. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "queue_int.h"

extern const char queue_lua_enqueue[], queue_lua_claim[], queue_lua_start[], queue_lua_heartbeat[], queue_lua_ack[],
    queue_lua_fail[], queue_lua_release[], queue_lua_reap[], queue_lua_promote[], queue_lua_resolve[],
    queue_lua_cancel[], queue_lua_retry[], queue_lua_trim[], queue_lua_unlock[], queue_lua_beat[],
    queue_lua_mop_create[], queue_lua_mop_lease[], queue_lua_mop_renew[], queue_lua_mop_commit[],
    queue_lua_mop_release[], queue_lua_mop_fail[], queue_lua_mop_reap[], queue_lua_mop_state[],
    queue_lua_mop_model[], queue_lua_mop_eval_take[], queue_lua_mop_eval_renew[], queue_lua_mop_eval_end[],
    queue_lua_mop_result[], queue_lua_mop_test_claim[], queue_lua_mop_test_renew[], queue_lua_mop_test_record[],
    queue_lua_mop_test_fail[], queue_lua_mop_retry[], queue_lua_mop_enroll[], queue_lua_mop_shard_beat[],
    queue_lua_mop_orphans[], queue_lua_mop_gang[], queue_lua_mop_gang_renew[], queue_lua_mop_gang_commit[],
    queue_lua_mop_gang_end[], queue_lua_mop_add_trial[], queue_lua_outbox[], queue_lua_outbox_due[];

static const char *const script_source[QS_COUNT] = {
    [QS_ENQUEUE] = queue_lua_enqueue,
    [QS_CLAIM] = queue_lua_claim,
    [QS_START] = queue_lua_start,
    [QS_HEARTBEAT] = queue_lua_heartbeat,
    [QS_ACK] = queue_lua_ack,
    [QS_FAIL] = queue_lua_fail,
    [QS_RELEASE] = queue_lua_release,
    [QS_REAP] = queue_lua_reap,
    [QS_PROMOTE] = queue_lua_promote,
    [QS_RESOLVE] = queue_lua_resolve,
    [QS_CANCEL] = queue_lua_cancel,
    [QS_RETRY] = queue_lua_retry,
    [QS_TRIM] = queue_lua_trim,
    [QS_UNLOCK] = queue_lua_unlock,
    [QS_BEAT] = queue_lua_beat,
    [QS_MOP_CREATE] = queue_lua_mop_create,
    [QS_MOP_LEASE] = queue_lua_mop_lease,
    [QS_MOP_RENEW] = queue_lua_mop_renew,
    [QS_MOP_COMMIT] = queue_lua_mop_commit,
    [QS_MOP_RELEASE] = queue_lua_mop_release,
    [QS_MOP_FAIL] = queue_lua_mop_fail,
    [QS_MOP_REAP] = queue_lua_mop_reap,
    [QS_MOP_STATE] = queue_lua_mop_state,
    [QS_MOP_MODEL] = queue_lua_mop_model,
    [QS_MOP_EVAL_TAKE] = queue_lua_mop_eval_take,
    [QS_MOP_EVAL_RENEW] = queue_lua_mop_eval_renew,
    [QS_MOP_EVAL_END] = queue_lua_mop_eval_end,
    [QS_MOP_RESULT] = queue_lua_mop_result,
    [QS_MOP_TEST_CLAIM] = queue_lua_mop_test_claim,
    [QS_MOP_TEST_RENEW] = queue_lua_mop_test_renew,
    [QS_MOP_TEST_RECORD] = queue_lua_mop_test_record,
    [QS_MOP_TEST_FAIL] = queue_lua_mop_test_fail,
    [QS_MOP_RETRY] = queue_lua_mop_retry,
    [QS_MOP_ENROLL] = queue_lua_mop_enroll,
    [QS_MOP_SHARD_BEAT] = queue_lua_mop_shard_beat,
    [QS_MOP_ORPHANS] = queue_lua_mop_orphans,
    [QS_MOP_GANG] = queue_lua_mop_gang,
    [QS_MOP_GANG_RENEW] = queue_lua_mop_gang_renew,
    [QS_MOP_GANG_COMMIT] = queue_lua_mop_gang_commit,
    [QS_MOP_GANG_END] = queue_lua_mop_gang_end,
    [QS_MOP_ADD_TRIAL] = queue_lua_mop_add_trial,
    [QS_OUTBOX] = queue_lua_outbox,
    [QS_OUTBOX_DUE] = queue_lua_outbox_due,
};

/* ---- argv builder -------------------------------------------------------- */

void qargs_init(qargs *a) { memset(a, 0, sizeof *a); }

void qargs_reset(qargs *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i]);
    a->n = 0;
    a->nomem = 0;
}

void qargs_free(qargs *a)
{
    qargs_reset(a);
    free(a->v);
    free(a->len);
    qargs_init(a);
}

/* Grows a's arrays to hold one more string; 0, or -1 (nomem set). */
static int qargs_grow(qargs *a)
{
    if (a->n < a->cap)
        return 0;
    size_t cap = a->cap ? a->cap * 2 : 16;
    char **v = realloc(a->v, cap * sizeof *v);
    if (v)
        a->v = v;
    size_t *len = v ? realloc(a->len, cap * sizeof *len) : NULL;
    if (!len) {
        a->nomem = 1;
        return -1;
    }
    a->len = len;
    a->cap = cap;
    return 0;
}

void qargs_addn(qargs *a, const char *s, size_t n)
{
    if (a->nomem || qargs_grow(a) != 0)
        return;
    char *copy = n < SIZE_MAX ? malloc(n + 1) : NULL;
    if (!copy) {
        a->nomem = 1;
        return;
    }
    memcpy(copy, s, n);
    copy[n] = '\0';
    a->v[a->n] = copy;
    a->len[a->n] = n;
    a->n++;
}

void qargs_append(qargs *a, const qargs *src)
{
    for (size_t i = 0; src && i < src->n; i++)
        qargs_addn(a, src->v[i], src->len[i]);
    if (src && src->nomem)
        a->nomem = 1;
}

void qargs_add(qargs *a, const char *s) { qargs_addn(a, s, strlen(s)); }

static void qargs_vaddf(qargs *a, const char *pre, const char *fmt, va_list ap)
{
    if (a->nomem)
        return;
    char *body = NULL;
    int n = vasprintf(&body, fmt, ap);
    size_t plen = strlen(pre);
    char *s = n >= 0 ? malloc(plen + (size_t)n + 1) : NULL;
    if (!s) {
        if (n >= 0)
            free(body);
        a->nomem = 1;
        return;
    }
    memcpy(s, pre, plen);
    memcpy(s + plen, body, (size_t)n + 1);
    free(body);
    qargs_addn(a, s, plen + (size_t)n);
    free(s);
}

void qargs_addf(qargs *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qargs_vaddf(a, "", fmt, ap);
    va_end(ap);
}

void qargs_key(qargs *a, const queue_conn *q, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qargs_vaddf(a, q->prefix, fmt, ap);
    va_end(ap);
}

void qargs_unique_key(qargs *keys, const queue_conn *q, const char *unique, const char *id)
{
    if (unique && *unique)
        qargs_key(keys, q, "unique:%s", unique);
    else
        qargs_key(keys, q, "job:%s", id);
}

/* ---- replies ------------------------------------------------------------- */

int qc_reply_is(const redisReply *r, size_t i, const char *s)
{
    const char *v = qc_reply_str(r, i);
    return v && strcmp(v, s) == 0;
}

const char *qc_reply_str(const redisReply *r, size_t i)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements)
        return NULL;
    const redisReply *e = r->element[i];
    if (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS)
        return e->str;
    return NULL;
}

long long qc_reply_int(const redisReply *r, size_t i)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements)
        return 0;
    const redisReply *e = r->element[i];
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type == REDIS_REPLY_STRING)
        return strtoll(e->str, NULL, 10);
    return 0;
}

int qc_reply_strings(const redisReply *r, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0)
        return 0;
    char **v = calloc(r->elements, sizeof *v);
    if (!v)
        return -1;
    for (size_t i = 0; i < r->elements; i++) {
        const char *s = qc_reply_str(r, i);
        if (!(v[i] = strdup(s ? s : ""))) {
            while (i)
                free(v[--i]);
            free(v);
            return -1;
        }
    }
    *out = v;
    *n = r->elements;
    return 0;
}

int qc_name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n >= max)
        return 0;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

/* ---- commands ------------------------------------------------------------ */

static int transport_error(queue_conn *q, cds_err *err)
{
    q->broken = 1;
    const char *why = q->c->errstr[0] ? q->c->errstr : "connection lost";
    return cds_errf(err, "lost connection to Redis at %s: %s (is redis-server running?)",
                    q->url_redacted, why);
}

static redisReply *reply_or_error(queue_conn *q, redisReply *r, cds_err *err)
{
    if (!r) {
        transport_error(q, err);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        cds_errf(err, "Redis at %s answered: %s", q->url_redacted, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

static redisReply *raw_command(queue_conn *q, const qargs *cmd)
{
    if (q->broken || !q->c)
        return NULL;
    return redisCommandArgv(q->c, (int)cmd->n, (const char **)cmd->v, cmd->len);
}

static int refuse_nomem(const queue_conn *q, cds_err *err)
{
    return cds_err_nomem(err, "out of memory building a command for Redis at %s", q->url_redacted);
}

redisReply *qc_command(queue_conn *q, const qargs *cmd, cds_err *err)
{
    if (cmd->nomem)
        return refuse_nomem(q, err), NULL;
    if (q->broken)
        return transport_error(q, err), NULL;
    return reply_or_error(q, raw_command(q, cmd), err);
}

redisReply *qc_take(queue_conn *q, qargs *cmd, cds_err *err)
{
    redisReply *r = qc_command(q, cmd, err);
    qargs_free(cmd);
    return r;
}

int qc_do(queue_conn *q, qargs *cmd, cds_err *err)
{
    redisReply *r = qc_take(q, cmd, err);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

/* Every script in one round trip (there are a few dozen, and a connect
 * must stay quick for jobctl); all replies are read even after a bad one, so
 * the connection stays in step. */
static int load_scripts(queue_conn *q, cds_err *err)
{
    for (int i = 0; i < QS_COUNT; i++)
        if (redisAppendCommand(q->c, "SCRIPT LOAD %s", script_source[i]) != REDIS_OK)
            return transport_error(q, err);
    int rc = 0;
    for (int i = 0; i < QS_COUNT; i++) {
        void *v = NULL;
        if (redisGetReply(q->c, &v) != REDIS_OK)
            return transport_error(q, err);
        redisReply *r = v;
        if (rc == 0 && r->type == REDIS_REPLY_ERROR) {
            cds_errf(err, "Redis at %s answered: %s", q->url_redacted, r->str);
            rc = cds_err_wrap(err, "loading queue script %d", i);
        }
        else if (rc == 0 && (r->type != REDIS_REPLY_STRING || r->len != 40))
            rc = cds_errf(err, "Redis at %s gave no SHA1 for SCRIPT LOAD", q->url_redacted);
        else if (rc == 0)
            memcpy(q->sha[i], r->str, 41);
        freeReplyObject(r);
    }
    return rc;
}

void qc_build_eval(const queue_conn *q, int script, const qargs *keys, const qargs *args, qargs *cmd)
{
    qargs_add(cmd, "EVALSHA");
    qargs_add(cmd, q->sha[script]);
    qargs_addf(cmd, "%zu", keys ? keys->n : 0);
    qargs_append(cmd, keys);
    qargs_append(cmd, args);
}

static int is_noscript(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

redisReply *qc_eval(queue_conn *q, int script, const qargs *keys, const qargs *args, cds_err *err)
{
    qargs cmd;
    qargs_init(&cmd);
    qc_build_eval(q, script, keys, args, &cmd);
    redisReply *out = NULL;
    if (qc_pipeline(q, &cmd, 1, &out, err) != 0)
        out = NULL;
    qargs_free(&cmd);
    if (out && out->type == REDIS_REPLY_ERROR) {
        cds_errf(err, "Redis at %s answered: %s", q->url_redacted, out->str);
        freeReplyObject(out);
        out = NULL;
    }
    return out;
}

redisReply *qc_run(queue_conn *q, int script, qargs *keys, qargs *args, cds_err *err)
{
    redisReply *r = qc_eval(q, script, keys, args, err);
    qargs_free(keys);
    qargs_free(args);
    return r;
}

void qc_free_replies(redisReply **r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (r[i])
            freeReplyObject(r[i]);
        r[i] = NULL;
    }
}

int qc_pipeline(queue_conn *q, qargs *cmds, size_t n, redisReply **out, cds_err *err)
{
    for (size_t i = 0; i < n; i++)
        out[i] = NULL;
    for (size_t i = 0; i < n; i++)
        if (cmds[i].nomem)
            return refuse_nomem(q, err);
    if (q->broken || !q->c)
        return transport_error(q, err);
    for (size_t i = 0; i < n; i++)
        if (redisAppendCommandArgv(q->c, (int)cmds[i].n, (const char **)cmds[i].v, cmds[i].len) !=
            REDIS_OK)
            return transport_error(q, err);
    int reloaded = 0;
    for (size_t i = 0; i < n; i++) {
        void *r = NULL;
        if (redisGetReply(q->c, &r) != REDIS_OK) {
            qc_free_replies(out, i);
            return transport_error(q, err);
        }
        out[i] = r;
    }
    for (size_t i = 0; i < n; i++) {
        if (!is_noscript(out[i]))
            continue;
        if (!reloaded) {
            if (load_scripts(q, err) != 0) {
                qc_free_replies(out, n);
                return -1;
            }
            reloaded = 1;
        }
        /* The SHA is the same (same source), so the argv can be resent. */
        freeReplyObject(out[i]);
        out[i] = raw_command(q, &cmds[i]);
        if (!out[i]) {
            qc_free_replies(out, n);
            return transport_error(q, err);
        }
    }
    return 0;
}

int qbatch_init(qbatch *b, size_t n, cds_err *err)
{
    b->n = n;
    b->cmd = calloc(n ? n : 1, sizeof *b->cmd);
    b->reply = calloc(n ? n : 1, sizeof *b->reply);
    if (!b->cmd || !b->reply) {
        qbatch_free(b);
        return cds_err_nomem(err, "out of memory for a pipeline of %zu commands", n);
    }
    return 0;
}

int qbatch_run(queue_conn *q, qbatch *b, cds_err *err)
{
    return b->n ? qc_pipeline(q, b->cmd, b->n, b->reply, err) : 0;
}

void qbatch_free(qbatch *b)
{
    for (size_t i = 0; b->cmd && i < b->n; i++)
        qargs_free(&b->cmd[i]);
    if (b->reply)
        qc_free_replies(b->reply, b->n);
    free(b->cmd);
    free(b->reply);
    memset(b, 0, sizeof *b);
}

/* ---- connect ------------------------------------------------------------- */

static int open_socket(queue_conn *q, cds_err *err)
{
    struct timeval tv = {.tv_sec = q->timeout_ms / 1000, .tv_usec = (q->timeout_ms % 1000) * 1000};
    q->c = q->url.is_unix ? redisConnectUnixWithTimeout(q->url.path, tv)
                          : redisConnectWithTimeout(q->url.host, q->url.port, tv);
    if (!q->c)
        return cds_err_nomem(err, "cannot connect to Redis at %s: out of memory", q->url_redacted);
    if (q->c->err)
        return cds_errf(err, "cannot connect to Redis at %s: %s (is redis-server running? set --redis or CDS_REDIS_URL)",
                        q->url_redacted, q->c->errstr);
    redisSetTimeout(q->c, tv);
    /* Keep-alive notices a peer that vanished without closing (a dead node);
     * it is a TCP option, so unix sockets go without. */
    if (!q->url.is_unix && redisEnableKeepAlive(q->c) != REDIS_OK)
        return cds_errf(err, "cannot enable TCP keep-alive to Redis at %s: %s", q->url_redacted, q->c->errstr);
    q->broken = 0;
    return 0;
}

static int authenticate(queue_conn *q, cds_err *err)
{
    if (!q->url.password[0])
        return 0;
    redisReply *r = q->url.user[0] ? redisCommand(q->c, "AUTH %s %s", q->url.user, q->url.password)
                                   : redisCommand(q->c, "AUTH %s", q->url.password);
    if (!r)
        return transport_error(q, err);
    int bad = r->type == REDIS_REPLY_ERROR;
    if (bad)
        cds_errf(err, "Redis at %s refused AUTH: %s (check the password in the URL, CDS_REDIS_URL or --redis-password-file)",
                 q->url_redacted, r->str);
    freeReplyObject(r);
    return bad ? -1 : 0;
}

static int select_db(queue_conn *q, cds_err *err)
{
    redisReply *r = redisCommand(q->c, "SELECT %d", q->url.db);
    if (!r)
        return transport_error(q, err);
    int bad = r->type == REDIS_REPLY_ERROR;
    if (bad) {
        const char *hint = strstr(r->str, "NOAUTH")
                               ? "the server needs a password: put it in the URL, CDS_REDIS_URL or --redis-password-file"
                               : "choose a database the server has";
        cds_errf(err, "Redis at %s refused SELECT %d: %s (%s)", q->url_redacted, q->url.db, r->str, hint);
    }
    freeReplyObject(r);
    return bad ? -1 : 0;
}

static int establish(queue_conn *q, cds_err *err)
{
    if (open_socket(q, err) != 0 || authenticate(q, err) != 0 || select_db(q, err) != 0 ||
        load_scripts(q, err) != 0 || (q->writes && queue_check_eviction_policy(q, err) != 0)) {
        if (q->c)
            redisFree(q->c);
        q->c = NULL;
        q->broken = 1;
        return -1;
    }
    return 0;
}

queue_conn *queue_connect(const queue_opts *opts, cds_err *err)
{
    queue_opts none = {0};
    if (!opts)
        opts = &none;
    const char *url = opts->url ? opts->url : getenv("CDS_REDIS_URL");
    if (!url || !*url)
        url = QUEUE_DEFAULT_URL;
    const char *prefix = opts->prefix ? opts->prefix : QUEUE_DEFAULT_PREFIX;
    if (strlen(prefix) >= QUEUE_NAME_MAX || strpbrk(prefix, " \t\r\n"))
        return cds_errf(err, "bad key prefix '%s': use up to %d characters without spaces", prefix,
                        QUEUE_NAME_MAX - 1),
               NULL;

    queue_conn *q = calloc(1, sizeof *q);
    if (!q)
        return cds_err_nomem(err, "out of memory"), NULL;
    if (queue_url_parse(url, &q->url, err) != 0) {
        free(q);
        return NULL;
    }
    cds_redact_url(url, q->url_redacted, sizeof q->url_redacted);
    if (opts->password_file &&
        cds_read_secret_file(opts->password_file, q->url.password, sizeof q->url.password, err) != 0) {
        free(q);
        return NULL;
    }
    snprintf(q->prefix, sizeof q->prefix, "%s", prefix);
    q->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 5000;
    q->writes = opts->writes;
    if (establish(q, err) != 0) {
        queue_close(q);
        return NULL;
    }
    return q;
}

int queue_reconnect(queue_conn *q, cds_err *err)
{
    if (q->c)
        redisFree(q->c);
    q->c = NULL;
    return establish(q, err);
}

void queue_close(queue_conn *q)
{
    if (!q)
        return;
    if (q->c)
        redisFree(q->c);
    /* The password must not linger in freed memory. */
    memset(&q->url, 0, sizeof q->url);
    free(q);
}

const char *queue_url_redacted(const queue_conn *q) { return q->url_redacted; }
const char *queue_prefix(const queue_conn *q) { return q->prefix; }
int queue_conn_broken(const queue_conn *q) { return q->broken; }

int queue_check_eviction_policy(queue_conn *q, cds_err *err)
{
    /* INFO works where CONFIG is renamed away (managed Redis services). */
    qargs cmd;
    qargs_init(&cmd);
    qargs_add(&cmd, "INFO");
    qargs_add(&cmd, "memory");
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    char policy[64] = "";
    const char *p = r->type == REDIS_REPLY_STRING ? strstr(r->str, "maxmemory_policy:") : NULL;
    if (p)
        sscanf(p + strlen("maxmemory_policy:"), "%63[^\r\n]", policy);
    freeReplyObject(r);
    if (!policy[0])
        return cds_errf(err, "Redis at %s does not report its maxmemory-policy; cannot check that it keeps queue keys",
                        q->url_redacted);
    if (strcmp(policy, "noeviction") != 0)
        return cds_errf(err,
                        "Redis at %s has maxmemory-policy %s, which can evict queue keys and lose jobs; "
                        "set it to noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf)",
                        q->url_redacted, policy);
    return 0;
}
