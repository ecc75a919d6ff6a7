/* What operators do to a queue from outside: cancel, retry, look at jobs,
 * count them, and see the workers.  Read paths use plain commands (they need
 * no atomicity); writes go through the scripts like everything else. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "queue_int.h"

static const char *const job_states[] = {"waiting", "delayed", "blocked", "active", "done", "dead", "cancelled"};
/* The sorted set of a queue that holds jobs in each state. */
static const char *const state_sets[] = {"wait", "delayed", "blocked", "active", "done", "dead", "cancelled"};
#define N_STATES (sizeof job_states / sizeof job_states[0])

/* Hash fields shown as numbers rather than strings. */
static int numeric_field(const char *f)
{
    static const char *const nums[] = {"id", "priority", "attempts", "max_attempts", "stalls",
                                       "max_stalls", "backoff_base_ms", "backoff_cap_ms", "created_ms",
                                       "due_ms", "started_ms", "finished_ms", "last_seen_ms", "pid"};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
        if (strcmp(f, nums[i]) == 0)
            return 1;
    return 0;
}

static json_t *hash_to_json(const redisReply *r)
{
    json_t *o = json_object();
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        const char *k = r->element[i]->str, *v = r->element[i + 1]->str;
        int64_t n;
        if (numeric_field(k) && cds_parse_i64(v, INT64_MIN, INT64_MAX, &n) == 0)
            json_object_set_new(o, k, json_integer(n));
        else
            json_object_set_new(o, k, json_string(v));
    }
    return o;
}

static int check_id(const char *id, cds_err *err)
{
    int64_t v;
    if (cds_parse_i64(id, 1, INT64_MAX, &v) != 0)
        return cds_errf(err, "bad job id '%s': job ids are positive integers (as printed by jobctl enqueue)", id);
    return 0;
}

/* Reads fields of a job hash; QUEUE_NOT_FOUND if the job does not exist. */
static int job_get(queue_conn *q, const char *id, const char *f1, const char *f2, char *v1, char *v2,
                   size_t vsz, cds_err *err)
{
    qargs cmd = {0};
    qargs_add(&cmd, "HMGET");
    qargs_key(&cmd, q, "job:%s", id);
    qargs_add(&cmd, f1);
    qargs_add(&cmd, f2);
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    const char *a = qc_reply_str(r, 0), *b = qc_reply_str(r, 1);
    int rc = a ? 0 : QUEUE_NOT_FOUND;
    if (rc == QUEUE_NOT_FOUND)
        cds_errf(err, "no job %s under prefix %s (see jobctl list)", id, q->prefix);
    snprintf(v1, vsz, "%s", a ? a : "");
    snprintf(v2, vsz, "%s", b ? b : "");
    freeReplyObject(r);
    return rc;
}

/* The queue and unique key of a job, which name the keys its scripts touch. */
static int job_locate(queue_conn *q, const char *id, char *queue, char *unique, size_t sz, cds_err *err)
{
    if (check_id(id, err) != 0)
        return -1;
    return job_get(q, id, "queue", "unique", queue, unique, sz, err);
}

int queue_cancel(queue_conn *q, const char *id, char prev_state[16], cds_err *err)
{
    char queue[256], unique[256];
    int rc = job_locate(q, id, queue, unique, sizeof queue, err);
    if (rc != 0)
        return rc;
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "job:%s", id);
    for (int i = 0; i < 4; i++)
        qargs_key(&keys, q, "q:%s:%s", queue, state_sets[i]);
    qargs_key(&keys, q, "q:%s:lease", queue);
    qargs_key(&keys, q, "q:%s:cancelled", queue);
    qargs_unique_key(&keys, q, unique, id);
    qargs_key(&keys, q, "q:%s:stats", queue);
    qargs_add(&args, id);
    qargs_add(&args, queue);
    redisReply *r = qc_run(q, QS_CANCEL, &keys, &args, err);
    if (!r)
        return -1;
    int deps = 0;
    if (qc_reply_is(r, 0, "cancelled")) {
        if (prev_state)
            snprintf(prev_state, 16, "%s", qc_reply_str(r, 1));
        deps = qc_reply_int(r, 2) == 1;
        rc = 0;
    } else if (qc_reply_is(r, 0, "unknown")) {
        rc = QUEUE_NOT_FOUND;
        cds_errf(err, "no job %s under prefix %s (see jobctl list)", id, q->prefix);
    } else {
        rc = cds_errf(err, "job %s is already %s: nothing to cancel", id, qc_reply_str(r, 1));
    }
    freeReplyObject(r);
    if (rc == 0 && deps)
        rc = queue_resolve_dependents(q, id, NULL, err);
    return rc;
}

int queue_retry(queue_conn *q, const char *id, cds_err *err)
{
    char queue[256], unique[256];
    int rc = job_locate(q, id, queue, unique, sizeof queue, err);
    if (rc != 0)
        return rc;
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "job:%s", id);
    qargs_key(&keys, q, "q:%s:dead", queue);
    qargs_key(&keys, q, "q:%s:cancelled", queue);
    qargs_key(&keys, q, "q:%s:wait", queue);
    qargs_unique_key(&keys, q, unique, id);
    qargs_key(&keys, q, "q:%s:wake", queue);
    qargs_add(&args, id);
    redisReply *r = qc_run(q, QS_RETRY, &keys, &args, err);
    if (!r)
        return -1;
    if (qc_reply_is(r, 0, "ok"))
        rc = 0;
    else if (qc_reply_is(r, 0, "unknown"))
        rc = QUEUE_NOT_FOUND, cds_errf(err, "no job %s under prefix %s (see jobctl list)", id, q->prefix);
    else if (qc_reply_is(r, 0, "unique_taken"))
        rc = cds_errf(err, "job %s cannot be retried: its unique key '%s' is held by live job %s", id, unique,
                      qc_reply_str(r, 1));
    else
        rc = cds_errf(err, "job %s is %s: only dead or cancelled jobs can be retried", id, qc_reply_str(r, 1));
    freeReplyObject(r);
    return rc;
}

int queue_show(queue_conn *q, const char *id, json_t **out, cds_err *err)
{
    *out = NULL;
    if (check_id(id, err) != 0)
        return -1;
    qbatch b;
    if (qbatch_init(&b, 2, err) != 0)
        return -1;
    qargs_add(&b.cmd[0], "HGETALL");
    qargs_key(&b.cmd[0], q, "job:%s", id);
    qargs_add(&b.cmd[1], "SMEMBERS");
    qargs_key(&b.cmd[1], q, "job:%s:dependents", id);
    int rc = qbatch_run(q, &b, err);
    if (rc == 0 && (b.reply[0]->type != REDIS_REPLY_ARRAY || b.reply[0]->elements == 0)) {
        cds_errf(err, "no job %s under prefix %s (see jobctl list)", id, q->prefix);
        rc = QUEUE_NOT_FOUND;
    }
    if (rc == 0) {
        json_t *o = hash_to_json(b.reply[0]);
        json_t *deps = json_array();
        for (size_t i = 0; b.reply[1]->type == REDIS_REPLY_ARRAY && i < b.reply[1]->elements; i++)
            json_array_append_new(deps, json_string(b.reply[1]->element[i]->str));
        json_object_set_new(o, "dependents", deps);
        *out = o;
    }
    qbatch_free(&b);
    return rc;
}

static redisReply *smembers(queue_conn *q, const char *name, cds_err *err)
{
    qargs cmd = {0};
    qargs_add(&cmd, "SMEMBERS");
    qargs_key(&cmd, q, "%s", name);
    redisReply *r = qc_take(q, &cmd, err);
    return r;
}

int queue_names(queue_conn *q, json_t **out, cds_err *err)
{
    redisReply *r = smembers(q, "queues", err);
    if (!r)
        return -1;
    json_t *a = json_array();
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
        json_array_append_new(a, json_string(r->element[i]->str));
    freeReplyObject(r);
    *out = a;
    return 0;
}

static int state_index(const char *state)
{
    for (size_t i = 0; i < N_STATES; i++)
        if (strcmp(state, job_states[i]) == 0)
            return (int)i;
    return -1;
}

/* Runs a ZRANGE-like command with WITHSCORES and fetches the hash
 * "<kind>:<member>" of every member in one pipeline.  *ids keeps the
 * members and scores; b->reply[i] is the hash of member i. */
static int members_with_hashes(queue_conn *q, qargs *range, const char *kind, redisReply **ids, qbatch *b,
                               cds_err *err)
{
    memset(b, 0, sizeof *b);
    *ids = qc_command(q, range, err);
    qargs_free(range);
    if (!*ids)
        return -1;
    size_t n = (*ids)->type == REDIS_REPLY_ARRAY ? (*ids)->elements / 2 : 0;
    if (qbatch_init(b, n, err) != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        qargs_add(&b->cmd[i], "HGETALL");
        qargs_key(&b->cmd[i], q, "%s:%s", kind, (*ids)->element[2 * i]->str);
    }
    return qbatch_run(q, b, err);
}

/* Appends the jobs of one queue and state to arr, with a summary of each. */
static int list_one(queue_conn *q, const char *queue, int si, size_t limit, json_t *arr, cds_err *err)
{
    qargs cmd = {0};
    qargs_add(&cmd, "ZRANGE");
    qargs_key(&cmd, q, "q:%s:%s", queue, state_sets[si]);
    qargs_add(&cmd, "0");
    qargs_addf(&cmd, "%zu", limit - 1);
    qargs_add(&cmd, "WITHSCORES");
    redisReply *ids = NULL;
    qbatch b;
    int rc = members_with_hashes(q, &cmd, "job", &ids, &b, err);
    size_t n = b.n;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        json_t *o = hash_to_json(b.reply[i]);
        json_object_set_new(o, "id", json_string(ids->element[2 * i]->str));
        json_object_set_new(o, "state", json_string(job_states[si]));
        json_object_set_new(o, "queue", json_string(queue));
        json_object_del(o, "payload");
        json_object_del(o, "result");
        if (si == 3) /* active: the score is the lease deadline */
            json_object_set_new(o, "lease_deadline_ms", json_integer(strtoll(ids->element[2 * i + 1]->str, NULL, 10)));
        json_array_append_new(arr, o);
    }
    qbatch_free(&b);
    if (ids)
        freeReplyObject(ids);
    return rc;
}

int queue_list(queue_conn *q, const char *queue, const char *state, size_t limit, json_t **out, cds_err *err)
{
    *out = NULL;
    int si = state_index(state);
    if (si < 0)
        return cds_errf(err, "unknown state '%s': use waiting, delayed, blocked, active, done, dead or cancelled",
                        state);
    if (limit == 0)
        limit = 100;
    json_t *names;
    if (queue) {
        if (!qc_name_ok(queue, QUEUE_NAME_MAX))
            return cds_errf(err, "bad queue name '%s'", queue);
        names = json_array();
        json_array_append_new(names, json_string(queue));
    } else if (queue_names(q, &names, err) != 0) {
        return -1;
    }
    json_t *arr = json_array();
    size_t i;
    json_t *v;
    int rc = 0;
    json_array_foreach(names, i, v)
    {
        if (rc == 0)
            rc = list_one(q, json_string_value(v), si, limit, arr, err);
    }
    json_decref(names);
    if (rc != 0) {
        json_decref(arr);
        return -1;
    }
    *out = arr;
    return 0;
}

int queue_stats(queue_conn *q, json_t **out, cds_err *err)
{
    *out = NULL;
    json_t *names;
    if (queue_names(q, &names, err) != 0)
        return -1;
    json_t *all = json_object();
    size_t i;
    json_t *v;
    int rc = 0;
    json_array_foreach(names, i, v)
    {
        const char *qn = json_string_value(v);
        qbatch b;
        if (rc != 0 || (rc = qbatch_init(&b, N_STATES + 1, err)) != 0)
            break;
        for (size_t k = 0; k < N_STATES; k++) {
            qargs_add(&b.cmd[k], "ZCARD");
            qargs_key(&b.cmd[k], q, "q:%s:%s", qn, state_sets[k]);
        }
        qargs_add(&b.cmd[N_STATES], "HGETALL");
        qargs_key(&b.cmd[N_STATES], q, "q:%s:stats", qn);
        if ((rc = qbatch_run(q, &b, err)) != 0) {
            qbatch_free(&b);
            break;
        }
        redisReply **rep = b.reply;
        json_t *o = json_object();
        for (size_t k = 0; k < N_STATES; k++)
            json_object_set_new(o, job_states[k], json_integer(rep[k]->type == REDIS_REPLY_INTEGER ? rep[k]->integer : 0));
        json_t *counters = json_object();
        for (size_t k = 0; rep[N_STATES]->type == REDIS_REPLY_ARRAY && k + 1 < rep[N_STATES]->elements; k += 2)
            json_object_set_new(counters, rep[N_STATES]->element[k]->str,
                                json_integer(strtoll(rep[N_STATES]->element[k + 1]->str, NULL, 10)));
        json_object_set_new(o, "counters", counters);
        json_object_set_new(all, qn, o);
        qbatch_free(&b);
    }
    json_decref(names);
    if (rc != 0) {
        json_decref(all);
        return -1;
    }
    *out = all;
    return 0;
}

int queue_waiting(queue_conn *q, const char *const *queues, size_t n, int64_t *waiting, cds_err *err)
{
    for (size_t i = 0; i < n; i++)
        if (!qc_name_ok(queues[i], QUEUE_NAME_MAX))
            return cds_errf(err, "bad queue name '%s'", queues[i]);
    qbatch b;
    if (n == 0 || qbatch_init(&b, n, err) != 0)
        return n == 0 ? 0 : -1;
    for (size_t i = 0; i < n; i++) {
        qargs_add(&b.cmd[i], "ZCARD");
        qargs_key(&b.cmd[i], q, "q:%s:wait", queues[i]);
    }
    int rc = qbatch_run(q, &b, err);
    for (size_t i = 0; rc == 0 && i < n; i++)
        waiting[i] = b.reply[i]->type == REDIS_REPLY_INTEGER ? b.reply[i]->integer : 0;
    qbatch_free(&b);
    return rc;
}

/* ---- records ------------------------------------------------------------- */

static void add_json_value(qargs *a, const json_t *v)
{
    if (json_is_string(v)) {
        qargs_add(a, json_string_value(v));
    } else {
        char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        qargs_add(a, t ? t : "");
        free(t);
    }
}

int queue_record_set(queue_conn *q, const char *name, const json_t *fields, cds_err *err)
{
    if (json_object_size(fields) == 0)
        return 0;
    qargs cmd = {0};
    qargs_add(&cmd, "HSET");
    qargs_key(&cmd, q, "%s", name);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)fields, k, v)
    {
        qargs_add(&cmd, k);
        add_json_value(&cmd, v);
    }
    return qc_do(q, &cmd, err);
}

int queue_record_get(queue_conn *q, const char *name, json_t **out, cds_err *err)
{
    *out = NULL;
    qargs cmd = {0};
    qargs_add(&cmd, "HGETALL");
    qargs_key(&cmd, q, "%s", name);
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    int rc = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
        rc = QUEUE_NOT_FOUND;
        cds_errf(err, "no %s under prefix %s", name, q->prefix);
    } else {
        json_t *o = json_object();
        for (size_t i = 0; i + 1 < r->elements; i += 2)
            json_object_set_new(o, r->element[i]->str, json_string(r->element[i + 1]->str));
        *out = o;
    }
    freeReplyObject(r);
    return rc;
}

/* ---- workers ------------------------------------------------------------- */

int queue_worker_beat(queue_conn *q, const char *worker, const json_t *info, int64_t ttl_ms, cds_err *err)
{
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "worker:%s", worker);
    qargs_key(&keys, q, "workers");
    qargs_add(&args, worker);
    qargs_addf(&args, "%lld", (long long)ttl_ms);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)info, k, v)
    {
        qargs_add(&args, k);
        add_json_value(&args, v);
    }
    redisReply *r = qc_run(q, QS_BEAT, &keys, &args, err);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

int queue_worker_gone(queue_conn *q, const char *worker, cds_err *err)
{
    qargs cmd = {0};
    qargs_add(&cmd, "DEL");
    qargs_key(&cmd, q, "worker:%s", worker);
    return qc_do(q, &cmd, err);
}

int queue_workers(queue_conn *q, json_t **out, cds_err *err)
{
    *out = NULL;
    qargs cmd = {0};
    qargs_add(&cmd, "ZREVRANGE");
    qargs_key(&cmd, q, "workers");
    qargs_add(&cmd, "0");
    qargs_add(&cmd, "999");
    qargs_add(&cmd, "WITHSCORES");
    redisReply *ids = NULL;
    qbatch b;
    int rc = members_with_hashes(q, &cmd, "worker", &ids, &b, err);
    size_t n = b.n;
    json_t *arr = json_array();
    for (size_t i = 0; rc == 0 && i < n; i++) {
        long long seen = strtoll(ids->element[2 * i + 1]->str, NULL, 10);
        json_t *o = hash_to_json(b.reply[i]);
        json_object_set_new(o, "id", json_string(ids->element[2 * i]->str));
        json_object_set_new(o, "alive", json_boolean(b.reply[i]->type == REDIS_REPLY_ARRAY && b.reply[i]->elements > 0));
        json_object_set_new(o, "last_seen_ms", json_integer(seen));
        json_array_append_new(arr, o);
    }
    qbatch_free(&b);
    if (ids)
        freeReplyObject(ids);
    if (rc != 0) {
        json_decref(arr);
        return -1;
    }
    *out = arr;
    return 0;
}
