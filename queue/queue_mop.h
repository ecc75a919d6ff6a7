/* queue_mop: the state of Model Hopper Parallelism sweeps in Redis
 * (DESIGN.md §5), and the Lua-scheduled hops that move models between the
 * workers that hold the shards.
 *
 * A sweep has M models and K shards; every epoch each model visits every
 * shard exactly once, in any order.  A visit (a "sub-epoch") is a lease on a
 * model, not a queue job: a worker serving shard k asks one script for work,
 * and the script picks a model that is idle and has not visited k in its
 * current epoch, leases it (token, deadline) and returns it.  Invariants, at
 * every moment:
 *   - a model is leased to at most one worker;
 *   - a worker holds at most one model (it asks again only after commit,
 *     release or loss of its lease);
 *   - within an epoch a model visits each shard at most once, and a visit
 *     counts only when committed with the lease's token before its deadline;
 *   - there is no barrier between models: model A may be in epoch 3 while
 *     model B is in epoch 1.
 * The commit publishes the new checkpoint version (the path the worker wrote
 * under a temporary name and renamed), records the visit in the sweep's
 * schedule (an append-only list, the basis of replay) and wakes idle workers.
 * A lease that is not renewed expires; the reaper returns the model to idle at
 * its last committed checkpoint, so a dead worker loses only its sub-epoch.
 *
 * Keys (all under the prefix, with the sweep id in braces so one sweep's keys
 * share a Redis Cluster hash slot; docs/redis-keys.md):
 *   sweep:{S}           hash   the sweep: state (running|paused|done|cancelled), dataset, dataset_version,
 *                              shards, epochs, models, created, spec (JSON), updated, and (added by mop) id,
 *                              live (models not yet done/failed/cancelled), finished (ms, or "")
 *   sweep:{S}:models    hash   per model m, fields "m.<field>": state (idle|leased|done|failed|cancelled),
 *                              epoch (0-based, the epoch in progress), visited (K characters '0'/'1': shards
 *                              visited this epoch), version (committed checkpoint version, 0 = initial), ckpt
 *                              (its path), token, worker, shard, deadline (ms), spec (the model's JSON), reason,
 *                              and (added by mop) stalls (leases reaped), commit (receipt of the last commit)
 *   sweep:{S}:schedule  list   committed visits in commit order: "m epoch shard version worker"
 *   sweep:{S}:evals     list   "m epoch version" of finished epochs waiting for evaluation
 *   sweeps              zset   sweep ids by creation time
 *   mop:wake            list   a token pushed on every commit, release and reap; idle workers BLPOP it
 */
#ifndef CDS_QUEUE_MOP_H
#define CDS_QUEUE_MOP_H

#include <stdint.h>

#include "cds_err.h"
#include "queue.h"

#define QUEUE_SWEEP_ID_MAX 32
/* queue_mop_lease_model: the sweep waits for its dataset to be ready (it was
 * created while the dataset was loading: no version pinned yet). */
#define QUEUE_MOP_WAITING 2
#define QUEUE_MOP_PATH_MAX 1024

typedef struct queue_sweep_def {
    const char *id;              /* caller-chosen, [A-Za-z0-9_-], at most 31 chars */
    const char *dataset;         /* dataset name and the version pinned at creation */
    const char *dataset_version;
    int shards;                  /* K */
    int epochs;                  /* E */
    int models;                  /* M */
    const char *const *model_specs; /* M JSON texts ({"model":..,"train":..}), stored per model */
    const char *spec_json;       /* the sweep spec as given, stored for display and replay */
    /* A replay's visit plans (NULL: none): for each model, the shards it must
     * visit, in order, E·K of them, each as 4 decimal digits ("00010000..."
     * is shard 1, then shard 0, ...).  A model with a plan is leased for
     * shard k only when the next shard of its plan is k. */
    const char *const *plans;
    const char *replay_of;       /* the sweep a replay follows, or NULL */
    int max_stalls;              /* a model whose lease expires more often than this fails (0: 10) */
} queue_sweep_def;

/* Creates the sweep with every model idle at epoch 0, version 0.  Refuses an
 * id that exists (QUEUE_NOT_FOUND is not used: -1 with a message). */
int queue_sweep_create(queue_conn *q, const queue_sweep_def *d, cds_err *err);

typedef struct queue_mop_lease {
    int model;                   /* m */
    int epoch;                   /* the epoch this visit belongs to */
    int shard;                   /* the shard it is for (the one asked for) */
    int64_t version;             /* committed checkpoint version to start from (0: initialise from the seed) */
    char ckpt[QUEUE_MOP_PATH_MAX]; /* its path ("" for version 0) */
    char token[QUEUE_TOKEN_MAX];
    int64_t deadline_ms;
} queue_mop_lease;

/* Asks for a model to train on shard k: returns 1 with *l filled, 0 when no
 * model can visit k now (all busy, all visited k this epoch, the sweep is
 * paused/finished, or it has fewer than k+1 shards), QUEUE_MOP_WAITING when
 * the sweep has no dataset version pinned yet, -1 on error.  *sweep_done (may be NULL) is set when every
 * model of the sweep is done, failed or cancelled. */
int queue_mop_lease_model(queue_conn *q, const char *sweep, int shard, const char *worker, int64_t lease_ms,
                          queue_mop_lease *l, int *sweep_done, cds_err *err);
/* The model's spec ({"model":..,"train":..} JSON text, malloc'd into *out). */
int queue_mop_model_spec(queue_conn *q, const char *sweep, int model, char **out, cds_err *err);

/* Moves the deadline of a held lease; returns 0, QUEUE_NOT_FOUND when the
 * lease is gone (expired and reaped, cancelled), -1 on error.  A lease past
 * its deadline is gone even before a reaper frees the model: renew, commit
 * and reap all judge a lease alive iff now <= deadline (server time). */
int queue_mop_renew(queue_conn *q, const char *sweep, const queue_mop_lease *l, int64_t lease_ms, cds_err *err);

typedef struct queue_mop_commit_result {
    int accepted;                /* 0: the lease was lost; the caller must discard its file */
    int epoch_done;              /* this visit completed the model's epoch (an evaluation was queued) */
    int model_done;              /* ... and it was the model's last epoch */
    int64_t version;             /* the new committed version */
    char superseded[QUEUE_MOP_PATH_MAX]; /* the checkpoint this one replaces ("" if none), for retention */
} queue_mop_commit_result;

/* Publishes the checkpoint the leased visit produced (already renamed into
 * place at ckpt_path) if the lease still holds: records the visit, bumps the
 * version, frees the model (or finishes it), wakes idle workers. */
int queue_mop_commit(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *ckpt_path,
                     queue_mop_commit_result *r, cds_err *err);
/* Gives the model back without a visit (drain, error that is not the
 * model's fault); 0, QUEUE_NOT_FOUND if the lease was already gone. */
int queue_mop_release(queue_conn *q, const char *sweep, const queue_mop_lease *l, cds_err *err);
/* Marks the leased model failed with a reason (NaN loss, out of memory);
 * the rest of the sweep goes on.  0, QUEUE_NOT_FOUND if the lease was
 * already gone. */
int queue_mop_fail_model(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *reason,
                         cds_err *err);
/* Returns expired leases to idle (at their last committed version); *n gets
 * how many.  Safe to run from every worker. */
int queue_mop_reap(queue_conn *q, const char *sweep, int *n, cds_err *err);
/* Blocks up to timeout_ms (at most 1000) on the wake-up list. */
int queue_mop_wait(queue_conn *q, int timeout_ms, cds_err *err);

/* (added by mop) Pauses ("paused": no new leases; leases in flight may renew
 * and commit), resumes ("running") or cancels ("cancelled": final; every
 * unfinished model becomes cancelled and loses its lease, so its worker's
 * next renew or commit is refused) a sweep.  Setting the current state again
 * is a no-op.  Returns 0, QUEUE_NOT_FOUND (no such sweep), -1 (unknown
 * state, or the sweep is already done or cancelled). */
int queue_sweep_set_state(queue_conn *q, const char *sweep, const char *state, cds_err *err);

/* ---- results (queue_mop_results.c) ---- */

/* The metrics of a committed visit (after its commit was accepted). */
int queue_mop_record_visit(queue_conn *q, const char *sweep, int model, int epoch, int shard, int64_t rows,
                           double loss_sum, double xent_sum, int64_t top1, int64_t top5, cds_err *err);
/* Takes the oldest finished epoch waiting for evaluation: 1 with the fields
 * set, 0 when none waits, -1 on error.  A worker that cannot evaluate it
 * gives it back with queue_mop_put_eval. */
int queue_mop_take_eval(queue_conn *q, const char *sweep, int *model, int *epoch, int64_t *version, cds_err *err);
int queue_mop_put_eval(queue_conn *q, const char *sweep, int model, int epoch, int64_t version, cds_err *err);
/* Records epoch e's metrics (JSON) and keeps the model's best epoch by
 * validation top-1: *is_best says whether this one is it now, and
 * *prev_best_epoch which epoch was before (-1: none). */
int queue_mop_record_result(queue_conn *q, const char *sweep, int model, int epoch, const char *metrics_json,
                            double valid_top1, int *is_best, int *prev_best_epoch, cds_err *err);
/* The results hash / the models hash as JSON objects of strings. */
int queue_mop_results(queue_conn *q, const char *sweep, json_t **out, cds_err *err);
int queue_mop_models(queue_conn *q, const char *sweep, json_t **out, cds_err *err);

/* Records that this worker serves shard k now (hash mop:shards, server
 * time); the heartbeat thread calls it. */
int queue_mop_shard_beat(queue_conn *q, int shard, cds_err *err);
/* Shards whose last beat is older than grace_ms: their worker is gone; an
 * idle worker may serve them too.  Up to max ids into shards. */
int queue_mop_orphan_shards(queue_conn *q, int64_t grace_ms, int *shards, int max, int *n, cds_err *err);

/* ---- read-only views (queue_sweep_read.c) ---- */

/* Every sweep id, oldest first (malloc'd array of malloc'd strings). */
int queue_sweep_list(queue_conn *q, char ***ids, size_t *n, cds_err *err);
void queue_sweep_list_free(char **ids, size_t n);
/* The schedule: committed visits in commit order, "m epoch shard version
 * worker" (free with queue_sweep_list_free). */
int queue_mop_schedule(queue_conn *q, const char *sweep, char ***lines, size_t *n, cds_err *err);
/* Sets a field of the sweep hash only if it is not there yet (*claimed = 1
 * then): one worker wins a one-off task, such as scoring on the test split. */
int queue_sweep_claim_field(queue_conn *q, const char *sweep, const char *field, const char *value, int *claimed,
                            cds_err *err);
int queue_sweep_set_field(queue_conn *q, const char *sweep, const char *field, const char *value, cds_err *err);
/* The sweep hash as a JSON object of strings; QUEUE_NOT_FOUND if absent. */
int queue_sweep_get(queue_conn *q, const char *sweep, json_t **out, cds_err *err);

#endif
