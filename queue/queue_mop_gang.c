/* queue_mop_gang: the gangs of DDP and MA sweeps as leases (queue_mop.h,
 * DESIGN.md §6).
 *
 * take (mop_gang.lua) picks this worker's rank up, or marks it ready and
 * forms a gang when every shard has a ready worker; the rank is a lease of
 * kind QUEUE_MOP_RANK that the heartbeat renews through queue_mop_renew
 * (mop_gang_renew.lua); rank 0 commits the epoch (mop_gang_commit.lua); any
 * rank ends the gang without one (mop_gang_end.lua).  A rank is named to
 * those scripts by its model, the gang's number G, its rank and its token:
 * tokens are written only by take and forgotten by every script that ends
 * the gang, so an ended gang's ranks can change nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "queue_int.h"
#include "queue_mop.h"

/* A base token short enough that "<base>-<rank>" fits QUEUE_TOKEN_MAX. */
#define GANG_BASE_BYTES 12

static int rank_reply(const redisReply *r, const char *sweep, queue_mop_lease *l, cds_err *err)
{
    memset(l, 0, sizeof *l);
    l->kind = QUEUE_MOP_RANK;
    l->model = (int)qc_reply_int(r, 1);
    l->shard = (int)qc_reply_int(r, 2);
    l->shards = (int)qc_reply_int(r, 3);
    l->gang = qc_reply_int(r, 4);
    qmop_copy_reply_str(l->token, sizeof l->token, r, 5);
    l->epoch = (int)qc_reply_int(r, 6);
    l->version = qc_reply_int(r, 7);
    qmop_copy_reply_str(l->ckpt, sizeof l->ckpt, r, 8);
    l->deadline_ms = qc_reply_int(r, 9);
    l->attempts = (int)qc_reply_int(r, 10);
    l->data_shards = (int)qc_reply_int(r, 13);
    const char *ds = qc_reply_str(r, 11), *ver = qc_reply_str(r, 12), *spec = qc_reply_str(r, 14),
               *mode = qc_reply_str(r, 15);
    if (!ds || !ver || !spec || !mode || strlen(ds) >= sizeof l->dataset ||
        strlen(ver) >= sizeof l->dataset_version || strlen(mode) >= sizeof l->mode)
        return cds_errf(err, "sweep '%s': the gang's rank names no dataset, or one too long (%d bytes at most)",
                        sweep, (int)sizeof l->dataset - 1);
    snprintf(l->dataset, sizeof l->dataset, "%s", ds);
    snprintf(l->dataset_version, sizeof l->dataset_version, "%s", ver);
    snprintf(l->mode, sizeof l->mode, "%s", mode);
    if (!(l->spec = strdup(spec)))
        return cds_err_nomem(err, "out of memory reading the spec of model %d of sweep '%s'", l->model, sweep);
    return 0;
}

int queue_mop_gang_take(queue_conn *q, const char *sweep, const char *worker, int64_t lease_ms, int64_t ready_ms,
                        const int *shards, int nshards, const char *where, queue_mop_lease *l, int *sweep_done,
                        cds_err *err)
{
    if (sweep_done)
        *sweep_done = 0;
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    if (!worker || !*worker)
        return cds_errf(err, "a gang of sweep '%s' needs a worker id", sweep);
    if (lease_ms < 1 || ready_ms < 1)
        return cds_errf(err, "lease of %lld ms / ready mark of %lld ms is too short: use 1 ms or more",
                        (long long)lease_ms, (long long)ready_ms);
    if (nshards < 1)
        return cds_errf(err, "a worker of sweep '%s' joins a gang for a shard it serves: give at least one", sweep);
    char list[512] = "", token[QUEUE_TOKEN_MAX];
    size_t at = 0;
    for (int i = 0; i < nshards && at < sizeof list - 16; i++)
        at += (size_t)snprintf(list + at, sizeof list - at, "%s%d", i ? "," : "", shards[i]);
    if (cds_random_hex(token, GANG_BASE_BYTES, err) != 0)
        return -1;
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "sweep:{%s}:ready", sweep);
    qargs_add(&args, worker);
    qargs_addf(&args, "%lld", (long long)lease_ms);
    qargs_addf(&args, "%lld", (long long)ready_ms);
    qargs_add(&args, list);
    qargs_add(&args, token);
    qargs_add(&args, where && !strchr(where, '@') ? where : "");
    redisReply *r = qmop_run_keys(q, QS_MOP_GANG, sweep, &keys, &args, NULL, err);
    if (!r)
        return -1;
    int rc = 0;
    if (qc_reply_is(r, 0, "rank") && r->elements == 16) {
        rc = rank_reply(r, sweep, l, err) == 0 ? 1 : -1;
        if (rc < 0) {
            /* A rank the caller cannot use ends the gang now rather than at
             * its deadline. */
            cds_err e;
            queue_mop_gang_end(q, sweep, l, QUEUE_GANG_ABORT, err->msg, NULL, NULL, &e);
            queue_mop_lease_clear(l);
        }
    } else if (qc_reply_is(r, 0, "none")) {
        if (sweep_done)
            *sweep_done = qc_reply_int(r, 1) != 0;
    } else if (qc_reply_is(r, 0, "waiting")) {
        rc = QUEUE_MOP_WAITING;
    } else if (qc_reply_is(r, 0, "not_gang")) {
        rc = cds_errf(err, "sweep '%s' is a MOP sweep: its models are leased one visit at a time, not to gangs",
                      sweep);
    } else if (!qc_reply_is(r, 0, "ready")) {
        return qmop_unexpected(r, "gang", err);
    }
    freeReplyObject(r);
    return rc;
}

/* The model, gang, rank and token that name a rank to every script. */
static int rank_args(const char *sweep, const queue_mop_lease *l, qargs *args, cds_err *err)
{
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    if (l->kind != QUEUE_MOP_RANK)
        return cds_errf(err, "model %d of sweep '%s': not a gang's rank", l->model, sweep);
    qargs_addf(args, "%d", l->model);
    qargs_addf(args, "%lld", (long long)l->gang);
    qargs_addf(args, "%d", l->shard);
    qargs_add(args, l->token);
    return 0;
}

int qmop_gang_renew(queue_conn *q, const char *sweep, const queue_mop_lease *l, int64_t lease_ms,
                    const char *progress, cds_err *err)
{
    qargs args = {0};
    if (rank_args(sweep, l, &args, err) != 0)
        return -1;
    qargs_addf(&args, "%lld", (long long)(lease_ms > 0 ? lease_ms : 1));
    qargs_add(&args, progress ? progress : "");
    redisReply *r = NULL;
    int rc = qmop_lease_script(q, QS_MOP_GANG_RENEW, sweep, l, &args, &r, err);
    if (rc != 0)
        return rc;
    if (qc_reply_is(r, 0, "done"))
        rc = QUEUE_MOP_GANG_DONE;
    else if (!qc_reply_is(r, 0, "renewed"))
        return qmop_unexpected(r, "gang renew", err);
    freeReplyObject(r);
    return rc;
}

int queue_mop_gang_commit(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *ckpt_path,
                          const char *const *metrics, queue_mop_commit_result *res, cds_err *err)
{
    memset(res, 0, sizeof *res);
    if (!ckpt_path || !*ckpt_path || strlen(ckpt_path) >= QUEUE_MOP_PATH_MAX)
        return cds_errf(err, "checkpoint path for model %d of sweep '%s' must be 1 to %d bytes", l->model, sweep,
                        QUEUE_MOP_PATH_MAX - 1);
    if (l->shard != 0)
        return cds_errf(err, "model %d of sweep '%s': rank %d commits nothing: rank 0 commits the gang's epoch",
                        l->model, sweep, l->shard);
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    if (l->kind != QUEUE_MOP_RANK)
        return cds_errf(err, "model %d of sweep '%s': not a gang's rank", l->model, sweep);
    qargs args = {0};
    qargs_addf(&args, "%d", l->model);
    qargs_addf(&args, "%lld", (long long)l->gang);
    qargs_add(&args, l->token);
    qargs_add(&args, ckpt_path);
    for (int i = 0; i < l->shards; i++)
        qargs_add(&args, metrics && metrics[i] ? metrics[i] : "");
    return qmop_commit_script(q, QS_MOP_GANG_COMMIT, "gang commit", sweep, l, &args, res, err);
}

int queue_mop_gang_end(queue_conn *q, const char *sweep, const queue_mop_lease *l, int how, const char *reason,
                       const char *note, int *failed, cds_err *err)
{
    if (failed)
        *failed = 0;
    static const char *const hows[] = {"abort", "attempt", "final"};
    if (how < QUEUE_GANG_ABORT || how > QUEUE_GANG_FINAL)
        return cds_errf(err, "ending a gang of sweep '%s': unknown way %d", sweep, how);
    qargs args = {0};
    if (rank_args(sweep, l, &args, err) != 0)
        return -1;
    qargs_add(&args, hows[how]);
    qargs_add(&args, reason ? reason : "");
    qargs_addf(&args, "%.6f", 0.5 + 0.5 * cds_random_unit());
    qargs_add(&args, note ? note : "");
    redisReply *r = NULL;
    int rc = qmop_lease_script(q, QS_MOP_GANG_END, sweep, l, &args, &r, err);
    if (rc != 0)
        return rc;
    if (qc_reply_is(r, 0, "failed")) {
        if (failed)
            *failed = 1;
    } else if (!qc_reply_is(r, 0, "aborted") && !qc_reply_is(r, 0, "retry")) {
        return qmop_unexpected(r, "gang end", err);
    }
    freeReplyObject(r);
    return 0;
}

int queue_mop_gang_unready(queue_conn *q, const char *sweep, const char *worker, cds_err *err)
{
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    qargs cmd = {0};
    qargs_add(&cmd, "HDEL");
    qargs_key(&cmd, q, "sweep:{%s}:ready", sweep);
    qargs_add(&cmd, worker);
    return qc_do(q, &cmd, err);
}
