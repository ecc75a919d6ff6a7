/* The life of a job as its producer and its worker see it: enqueue, claim
 * (pop + start), heartbeat, ack, fail, release, and waiting for work.
 *
 * Ids come from one INCRBY of <prefix>seq per batch, so a producer knows every
 * key its enqueue script touches.  Tokens are 128 random bits drawn here; the
 * lease hash of the queue is the only place a token is kept, and every
 * finishing script compares against it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "queue_int.h"

void queue_job_spec_init(queue_job_spec *s)
{
    memset(s, 0, sizeof *s);
    s->queue = QUEUE_DEFAULT_NAME;
    s->payload = "{}";
    s->max_attempts = 5;
    s->max_stalls = 3;
    s->backoff_base_ms = 1000;
    s->backoff_cap_ms = 3600 * 1000;
}

int queue_job_spec_check(const queue_job_spec *s, cds_err *err)
{
    if (!s->type || !qc_name_ok(s->type, QUEUE_NAME_MAX))
        return cds_errf(err, "bad job type '%s': use letters, digits, '.', '_' or '-' (e.g. diag.sleep)",
                        s->type ? s->type : "");
    const char *qn = s->queue ? s->queue : QUEUE_DEFAULT_NAME;
    if (!qc_name_ok(qn, QUEUE_NAME_MAX))
        return cds_errf(err, "bad queue name '%s': use up to %d letters, digits, '.', '_' or '-'", qn,
                        QUEUE_NAME_MAX - 1);
    if (s->priority < -QUEUE_PRIORITY_MAX || s->priority > QUEUE_PRIORITY_MAX)
        return cds_errf(err, "priority %lld is out of range: use -%d to %d", (long long)s->priority,
                        QUEUE_PRIORITY_MAX, QUEUE_PRIORITY_MAX);
    if (s->delay_ms < 0)
        return cds_errf(err, "delay %lld ms is negative: use 0 or more", (long long)s->delay_ms);
    if (s->max_attempts < 1 || s->max_attempts > 1000)
        return cds_errf(err, "max attempts %lld is out of range: use 1 to 1000", (long long)s->max_attempts);
    if (s->max_stalls < 0 || s->max_stalls > 1000)
        return cds_errf(err, "max stalls %lld is out of range: use 0 to 1000", (long long)s->max_stalls);
    if (s->backoff_base_ms < 0 || s->backoff_cap_ms < s->backoff_base_ms)
        return cds_errf(err, "backoff base %lld ms and cap %lld ms: need 0 <= base <= cap",
                        (long long)s->backoff_base_ms, (long long)s->backoff_cap_ms);
    if (s->unique && (!*s->unique || strlen(s->unique) > 200 || strpbrk(s->unique, " \t\r\n")))
        return cds_errf(err, "bad unique key '%s': use 1 to 200 characters without spaces", s->unique);
    for (size_t i = 0; i < s->n_after; i++) {
        int64_t v;
        if (cds_parse_i64(s->after[i], 1, INT64_MAX, &v) != 0)
            return cds_errf(err, "bad dependency id '%s': job ids are positive integers (as printed by jobctl enqueue)",
                            s->after[i]);
    }
    if (s->payload) {
        json_error_t je;
        json_t *j = json_loads(s->payload, JSON_DECODE_ANY, &je);
        if (!j)
            return cds_errf(err, "payload is not valid JSON: %s at line %d column %d", je.text, je.line,
                            je.column);
        json_decref(j);
    }
    return 0;
}

static const char *spec_queue(const queue_job_spec *s) { return s->queue ? s->queue : QUEUE_DEFAULT_NAME; }

/* Jobs per enqueue script call: big enough to amortise the call, small enough
 * that one call does not hold the server for long (about 10 ms). */
#define ENQUEUE_CALL_MAX 500

/* Adds one job's keys and arguments to an enqueue call (see enqueue.lua). */
static void add_enqueue_job(queue_conn *q, const queue_job_spec *s, long long id, qargs *keys, qargs *args)
{
    char idstr[QUEUE_ID_MAX];
    snprintf(idstr, sizeof idstr, "%lld", id);
    qargs_key(keys, q, "job:%s", idstr);
    qargs_unique_key(keys, q, s->unique, idstr);
    for (size_t i = 0; i < s->n_after; i++) {
        qargs_key(keys, q, "job:%s", s->after[i]);
        qargs_key(keys, q, "job:%s:dependents", s->after[i]);
    }
    qargs_addf(args, "%lld", id);
    qargs_add(args, s->type);
    qargs_add(args, s->payload ? s->payload : "{}");
    qargs_addf(args, "%lld", (long long)s->priority);
    qargs_addf(args, "%lld", (long long)s->delay_ms);
    qargs_addf(args, "%lld", (long long)s->max_attempts);
    qargs_addf(args, "%lld", (long long)s->max_stalls);
    qargs_addf(args, "%lld", (long long)s->backoff_base_ms);
    qargs_addf(args, "%lld", (long long)s->backoff_cap_ms);
    qargs_add(args, s->unique ? s->unique : "");
    qargs_addf(args, "%zu", s->n_after);
    for (size_t i = 0; i < s->n_after; i++)
        qargs_add(args, s->after[i]);
}

/* Builds one enqueue call for specs[0..n), which share a queue. */
static void build_enqueue(queue_conn *q, const queue_job_spec *specs, size_t n, long long first_id, qargs *cmd)
{
    const char *qn = spec_queue(&specs[0]);
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "q:%s:wait", qn);
    qargs_key(&keys, q, "q:%s:delayed", qn);
    qargs_key(&keys, q, "q:%s:blocked", qn);
    qargs_key(&keys, q, "q:%s:dead", qn);
    qargs_key(&keys, q, "queues");
    qargs_key(&keys, q, "q:%s:wake", qn);
    qargs_key(&keys, q, "q:%s:stats", qn);
    qargs_add(&args, qn);
    qargs_addf(&args, "%zu", n);
    for (size_t i = 0; i < n; i++)
        add_enqueue_job(q, &specs[i], first_id + (long long)i, &keys, &args);
    qc_build_eval(q, QS_ENQUEUE, &keys, &args, cmd);
    qargs_free(&keys);
    qargs_free(&args);
}

/* Length of the run of specs from i on that share a queue (at most max). */
static size_t same_spec_queue_run(const queue_job_spec *specs, size_t i, size_t n, size_t max)
{
    size_t k = i + 1;
    while (k < n && k - i < max && strcmp(spec_queue(&specs[k]), spec_queue(&specs[i])) == 0)
        k++;
    return k - i;
}

static long long alloc_ids(queue_conn *q, size_t n, cds_err *err)
{
    qargs cmd = {0};
    qargs_add(&cmd, "INCRBY");
    qargs_key(&cmd, q, "seq");
    qargs_addf(&cmd, "%zu", n);
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    long long last = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    if (last < 0)
        return cds_errf(err, "unexpected reply to INCRBY %sseq", q->prefix);
    return last - (long long)n + 1;
}

int queue_enqueue(queue_conn *q, const queue_job_spec *specs, size_t n, queue_enqueued *out, cds_err *err)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (queue_job_spec_check(&specs[i], err) != 0)
            return -1;
    long long first = alloc_ids(q, n, err);
    if (first < 0)
        return -1;
    /* One call per run of jobs of the same queue, all calls in one pipeline. */
    size_t ncalls = 0;
    for (size_t i = 0; i < n; i += same_spec_queue_run(specs, i, n, ENQUEUE_CALL_MAX))
        ncalls++;
    qbatch b;
    if (qbatch_init(&b, ncalls, err) != 0)
        return -1;
    size_t *starts = calloc(ncalls, sizeof *starts);
    if (!starts) {
        qbatch_free(&b);
        return cds_err_nomem(err, "out of memory enqueueing %zu jobs", n);
    }
    for (size_t i = 0, c = 0; i < n; c++) {
        size_t run = same_spec_queue_run(specs, i, n, ENQUEUE_CALL_MAX);
        starts[c] = i;
        build_enqueue(q, &specs[i], run, first + (long long)i, &b.cmd[c]);
        i += run;
    }
    int rc = qbatch_run(q, &b, err);
    for (size_t c = 0; rc == 0 && c < ncalls; c++) {
        redisReply *r = b.reply[c];
        if (r->type == REDIS_REPLY_ERROR) {
            rc = cds_errf(err, "enqueue refused by Redis at %s: %s", q->url_redacted, r->str);
            break;
        }
        for (size_t j = 0; rc == 0 && j < r->elements; j++) {
            size_t i = starts[c] + j;
            const redisReply *e = r->element[j];
            memset(&out[i], 0, sizeof out[i]);
            if (qc_reply_is(e, 0, "created")) {
                snprintf(out[i].id, sizeof out[i].id, "%lld", first + (long long)i);
                snprintf(out[i].state, sizeof out[i].state, "%s", qc_reply_str(e, 1));
            } else if (qc_reply_is(e, 0, "duplicate")) {
                out[i].duplicate = 1;
                snprintf(out[i].id, sizeof out[i].id, "%s", qc_reply_str(e, 1));
                snprintf(out[i].state, sizeof out[i].state, "live");
            } else if (qc_reply_is(e, 0, "unknown_dep")) {
                rc = cds_errf(err, "unknown dependency job %s: --after needs the id of an existing job (see jobctl list)",
                              qc_reply_str(e, 1));
            } else {
                rc = cds_errf(err, "job id %lld is already taken: is another deployment using prefix %s?",
                              first + (long long)i, q->prefix);
            }
        }
    }
    qbatch_free(&b);
    free(starts);
    return rc;
}

/* ---- claim --------------------------------------------------------------- */

void queue_job_clear(queue_job *j)
{
    free(j->type);
    free(j->payload);
    free(j->unique);
    memset(j, 0, sizeof *j);
}

static char *dup_or_empty(const redisReply *r, size_t i)
{
    const char *s = qc_reply_str(r, i);
    return strdup(s ? s : "");
}

/* Phase 2: mark the popped jobs active and fetch what running them needs. */
static int start_jobs(queue_conn *q, const char *queue, const char *worker, queue_job *cand, size_t m,
                      queue_job *out, size_t *n, cds_err *err)
{
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "q:%s:lease", queue);
    qargs_add(&args, worker);
    for (size_t i = 0; i < m; i++) {
        qargs_key(&keys, q, "job:%s", cand[i].id);
        qargs_add(&args, cand[i].id);
        qargs_add(&args, cand[i].token);
    }
    redisReply *r = qc_run(q, QS_START, &keys, &args, err);
    if (!r)
        return -1;
    int nomem = 0;
    for (size_t i = 0; i < m && i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY)
            continue; /* lease lost between the two phases */
        queue_job *j = &out[*n];
        *j = cand[i];
        j->type = dup_or_empty(e, 0);
        j->payload = dup_or_empty(e, 1);
        j->attempts = qc_reply_int(e, 2);
        j->max_attempts = qc_reply_int(e, 3);
        j->unique = dup_or_empty(e, 4);
        if (!j->type || !j->payload || !j->unique) {
            /* The job stays active under a lease nobody renews: the reaper
             * gives it back, as for a worker that died here. */
            queue_job_clear(j);
            nomem = 1;
            continue;
        }
        (*n)++;
    }
    freeReplyObject(r);
    if (nomem && *n == 0)
        return cds_err_nomem(err, "out of memory reading the jobs claimed from queue %s", queue);
    return 0;
}

int queue_claim(queue_conn *q, const char *queue, const char *worker, int64_t lease_ms, size_t max,
                queue_job *out, size_t *n, queue_claim_info *info, cds_err *err)
{
    *n = 0;
    if (!qc_name_ok(queue, QUEUE_NAME_MAX))
        return cds_errf(err, "bad queue name '%s'", queue);
    if (max == 0)
        return 0;
    queue_job *cand = calloc(max, sizeof *cand);
    if (!cand)
        return cds_err_nomem(err, "out of memory claiming %zu jobs", max);
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "q:%s:wait", queue);
    qargs_key(&keys, q, "q:%s:active", queue);
    qargs_key(&keys, q, "q:%s:lease", queue);
    qargs_key(&keys, q, "q:%s:delayed", queue);
    qargs_addf(&args, "%lld", (long long)lease_ms);
    qargs_addf(&args, "%zu", max);
    int rc = 0;
    for (size_t i = 0; i < max && rc == 0; i++) {
        rc = cds_random_hex(cand[i].token, 16, err);
        snprintf(cand[i].queue, sizeof cand[i].queue, "%s", queue);
        qargs_add(&args, cand[i].token);
    }
    redisReply *r = rc == 0 ? qc_eval(q, QS_CLAIM, &keys, &args, err) : NULL;
    qargs_free(&keys);
    qargs_free(&args);
    if (!r) {
        free(cand);
        return -1;
    }
    const redisReply *ids = r->type == REDIS_REPLY_ARRAY && r->elements == 3 ? r->element[0] : NULL;
    size_t m = ids ? ids->elements : 0;
    for (size_t i = 0; i < m; i++)
        snprintf(cand[i].id, sizeof cand[i].id, "%s", ids->element[i]->str);
    if (info) {
        const char *due = qc_reply_str(r, 1);
        info->next_due_ms = due && *due ? strtoll(due, NULL, 10) : -1;
        info->now_ms = qc_reply_int(r, 2);
    }
    freeReplyObject(r);
    rc = m ? start_jobs(q, queue, worker, cand, m, out, n, err) : 0;
    free(cand);
    return rc;
}

/* ---- finishing ----------------------------------------------------------- */

/* Length of the run of jobs from i on that share jobs[i]'s queue. */
static size_t same_queue_run(const queue_job *jobs, size_t i, size_t n)
{
    size_t k = i + 1;
    while (k < n && strcmp(jobs[k].queue, jobs[i].queue) == 0)
        k++;
    return k - i;
}

int queue_heartbeat(queue_conn *q, const queue_job *jobs, size_t n, int64_t lease_ms, int *alive, cds_err *err)
{
    for (size_t i = 0; i < n;) {
        size_t run = same_queue_run(jobs, i, n);
        qargs keys = {0}, args = {0};
        qargs_key(&keys, q, "q:%s:active", jobs[i].queue);
        qargs_key(&keys, q, "q:%s:lease", jobs[i].queue);
        qargs_addf(&args, "%lld", (long long)lease_ms);
        for (size_t k = i; k < i + run; k++) {
            qargs_add(&args, jobs[k].id);
            qargs_add(&args, jobs[k].token);
        }
        redisReply *r = qc_run(q, QS_HEARTBEAT, &keys, &args, err);
        if (!r)
            return -1;
        for (size_t k = 0; k < run; k++)
            alive[i + k] = (int)qc_reply_int(r, k);
        freeReplyObject(r);
        i += run;
    }
    return 0;
}

int queue_ack(queue_conn *q, const queue_job *jobs, size_t n, const char *const *results, int *acked,
              cds_err *err)
{
    for (size_t i = 0; i < n;) {
        size_t run = same_queue_run(jobs, i, n);
        qargs keys = {0}, args = {0};
        qargs_key(&keys, q, "q:%s:active", jobs[i].queue);
        qargs_key(&keys, q, "q:%s:lease", jobs[i].queue);
        qargs_key(&keys, q, "q:%s:done", jobs[i].queue);
        qargs_key(&keys, q, "q:%s:stats", jobs[i].queue);
        for (size_t k = i; k < i + run; k++) {
            qargs_key(&keys, q, "job:%s", jobs[k].id);
            qargs_unique_key(&keys, q, jobs[k].unique, jobs[k].id);
            qargs_add(&args, jobs[k].id);
            qargs_add(&args, jobs[k].token);
            qargs_add(&args, results && results[k] ? results[k] : "");
        }
        redisReply *r = qc_run(q, QS_ACK, &keys, &args, err);
        if (!r)
            return -1;
        long long outcome[run];
        for (size_t k = 0; k < run; k++) {
            outcome[k] = qc_reply_int(r, k);
            acked[i + k] = outcome[k] > 0;
        }
        freeReplyObject(r);
        for (size_t k = 0; k < run; k++)
            if (outcome[k] == 2 && queue_resolve_dependents(q, jobs[i + k].id, NULL, err) != 0)
                return -1;
        i += run;
    }
    return 0;
}

int queue_fail(queue_conn *q, const queue_job *job, const char *reason, int permanent, queue_fail_result *res,
               cds_err *err)
{
    memset(res, 0, sizeof *res);
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "q:%s:active", job->queue);
    qargs_key(&keys, q, "q:%s:lease", job->queue);
    qargs_key(&keys, q, "q:%s:delayed", job->queue);
    qargs_key(&keys, q, "q:%s:dead", job->queue);
    qargs_key(&keys, q, "q:%s:stats", job->queue);
    qargs_key(&keys, q, "job:%s", job->id);
    qargs_unique_key(&keys, q, job->unique, job->id);
    qargs_add(&args, job->id);
    qargs_add(&args, job->token);
    qargs_add(&args, reason && *reason ? reason : "failed");
    /* The random factor of the backoff, in [0.5, 1]. */
    qargs_addf(&args, "%.6f", 0.5 + 0.5 * cds_random_unit());
    qargs_add(&args, permanent ? "1" : "0");
    redisReply *r = qc_run(q, QS_FAIL, &keys, &args, err);
    if (!r)
        return -1;
    int deps = 0;
    if (qc_reply_is(r, 0, "lost")) {
        res->lost = 1;
    } else if (qc_reply_is(r, 0, "dead")) {
        res->dead = 1;
        deps = qc_reply_int(r, 1) == 1;
        res->attempts = qc_reply_int(r, 2);
    } else {
        res->due_ms = qc_reply_int(r, 1);
        res->delay_ms = qc_reply_int(r, 2);
        res->attempts = qc_reply_int(r, 3);
    }
    freeReplyObject(r);
    return deps ? queue_resolve_dependents(q, job->id, NULL, err) : 0;
}

int queue_release(queue_conn *q, const queue_job *job, int *released, cds_err *err)
{
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "q:%s:active", job->queue);
    qargs_key(&keys, q, "q:%s:lease", job->queue);
    qargs_key(&keys, q, "q:%s:wait", job->queue);
    qargs_key(&keys, q, "job:%s", job->id);
    qargs_key(&keys, q, "q:%s:wake", job->queue);
    qargs_add(&args, job->id);
    qargs_add(&args, job->token);
    redisReply *r = qc_run(q, QS_RELEASE, &keys, &args, err);
    if (!r)
        return -1;
    *released = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return 0;
}

int queue_wait(queue_conn *q, const char *const *queues, size_t nq, int timeout_ms, int *woken, cds_err *err)
{
    *woken = 0;
    if (timeout_ms > 1000)
        timeout_ms = 1000;
    if (timeout_ms <= 0)
        return 0;
    qargs cmd = {0};
    qargs_add(&cmd, "BLPOP");
    for (size_t i = 0; i < nq; i++)
        qargs_key(&cmd, q, "q:%s:wake", queues[i]);
    qargs_addf(&cmd, "%.3f", timeout_ms / 1000.0);
    redisReply *r = qc_take(q, &cmd, err);
    if (!r)
        return -1;
    *woken = r->type == REDIS_REPLY_ARRAY;
    freeReplyObject(r);
    return 0;
}
