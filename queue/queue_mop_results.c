/* queue_mop_results: what a sweep learnt, as workers report it.
 *
 *   sweep:{S}:results  hash  "<m>.<e>.train.<k>" = the JSON metrics of each committed visit (rows,
 *                             loss_sum, xent_sum, top1, top5, seconds, worker; written by the commit
 *                             script that accepted it), and "<m>.<e>" = the JSON metrics of epoch e (from 1) of
 *                             model m once it has been evaluated
 *
 * Finished epochs wait in sweep:{S}:evals ("m epoch version", pushed by the
 * commit that completed them).  Evaluation takes no model lease: any worker
 * takes one as an evaluation lease (queue_mop_take_eval, in
 * queue_mop_eval.c), scores the epoch's checkpoint on the validation
 * shards, and records the metrics with the lease (queue_mop_record_result),
 * where the script keeps each model's best epoch.  What is here: the plain
 * reads of the results and models hashes, and the beats of the workers
 * that serve shards (two small scripts on mop:shards). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"
#include "queue_mop.h"

int queue_mop_results(queue_conn *q, const char *sweep, json_t **out, cds_err *err)
{
    char name[QUEUE_SWEEP_ID_MAX + 24];
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    snprintf(name, sizeof name, "sweep:{%s}:results", sweep);
    return queue_record_get(q, name, out, err);
}

int queue_mop_models(queue_conn *q, const char *sweep, json_t **out, cds_err *err)
{
    char name[QUEUE_SWEEP_ID_MAX + 24];
    if (queue_sweep_id_check(sweep, err) != 0)
        return -1;
    snprintf(name, sizeof name, "sweep:{%s}:models", sweep);
    return queue_record_get(q, name, out, err);
}

/* ---- shards and the workers that serve them ----------------------------------- */

int queue_mop_shard_beat(queue_conn *q, int shard, cds_err *err)
{
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "mop:shards");
    qargs_addf(&args, "%d", shard);
    redisReply *r = qc_run(q, QS_MOP_SHARD_BEAT, &keys, &args, err);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

static int shard_beats(queue_conn *q, int64_t grace_ms, int live, int *shards, int max, int *n, cds_err *err)
{
    *n = 0;
    qargs keys = {0}, args = {0};
    qargs_key(&keys, q, "mop:shards");
    qargs_addf(&args, "%lld", (long long)grace_ms);
    if (live)
        qargs_add(&args, "live");
    redisReply *r = qc_run(q, QS_MOP_ORPHANS, &keys, &args, err);
    if (!r)
        return -1;
    int rc = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1)
        rc = cds_errf(err, "unexpected reply listing orphaned shards");
    for (size_t i = 1; rc == 0 && i < r->elements && *n < max; i++)
        shards[(*n)++] = atoi(qc_reply_str(r, i) ?: "-1");
    freeReplyObject(r);
    return rc;
}

int queue_mop_orphan_shards(queue_conn *q, int64_t grace_ms, int *shards, int max, int *n, cds_err *err)
{
    return shard_beats(q, grace_ms, 0, shards, max, n, err);
}

int queue_mop_live_shards(queue_conn *q, int64_t grace_ms, int *shards, int max, int *n, cds_err *err)
{
    return shard_beats(q, grace_ms, 1, shards, max, n, err);
}
