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
 * Control (jobctl): the sweep's state pauses (no new leases; leases in
 * flight renew and commit), resumes or cancels it; each model also has its
 * own pause flag (<m>.paused) and can be cancelled alone.  A model is leased
 * only when the sweep is running AND the model is not paused: the two are
 * apart, so resuming the sweep does not resume a model paused by itself.  A
 * pause never touches a lease in flight (the model stays "leased" until it
 * commits, releases or expires, then idles, paused); a cancel is final and
 * clears the token like a fail.
 *
 * Evaluations and the test scoring are leases too, so they outlive the
 * worker doing them: taking a finished epoch moves it from the evals list to
 * the in-flight hash under a token with the worker and a deadline, renewed
 * by the heartbeat; recording the result ends it (and is refused once lost);
 * the reaper puts expired ones back at the head of the list.  The test
 * scoring of a done sweep is claimed on the sweep hash (test_by, test_token,
 * test_deadline) only when no evaluation waits or is in flight, renewed the
 * same way, taken over once its deadline passes, and its record is refused
 * once lost.  Invariants, besides the ones above:
 *   - a finished epoch is at every moment in exactly one place: waiting in
 *     evals, in flight under one token, or recorded in the results (or
 *     dropped by its holder: nothing to evaluate);
 *   - an evaluation or a test score is recorded only by the holder of a
 *     lease that holds (token present, now <= deadline), so a worker that
 *     lost it (dead, hung, reaped) can never overwrite the one who took it
 *     over;
 *   - a sweep is in the active set from creation until it is finished:
 *     cancelled, or done with its test score recorded, and no evaluation
 *     waiting or in flight; a finished sweep never changes again.
 *
 * Keys (all under the prefix, with the sweep id in braces so one sweep's keys
 * share a Redis Cluster hash slot; docs/redis-keys.md).  Every script takes
 * the same nine: sweep, models, schedule, evals, sweeps, mop:wake, evaling,
 * results, sweeps:active.
 * Epochs count from 1 in every key (format 2 in the sweep hash).
 *   sweep:{S}           hash   the sweep: state (running|paused|done|cancelled), dataset, dataset_version,
 *                              shards, epochs, models, created, spec (JSON), updated, id, format, live
 *                              (models not yet done/failed/cancelled), finished (ms, or ""), max_stalls,
 *                              max_attempts, backoff_base_ms, backoff_cap_ms, unique, test_by, test_token,
 *                              test_deadline (the test-scoring claim), test_attempts, test_not_before,
 *                              test_error, test (its result, JSON), es (early stopping: "metric mode grace
 *                              eta max_epochs brackets", or ""; docs/search.md)
 *   sweep:{S}:models    hash   per model m, fields "m.<field>": state (idle|leased|rung|done|stopped|
 *                              failed|cancelled; rung: waiting for an early-stopping decision),
 *                              epoch (the epoch in progress, from 1; a done model keeps its last), visited
 *                              (K characters '0'/'1': shards visited this epoch), version (committed
 *                              checkpoint version, 0 = initial), ckpt (its path), token, worker, shard,
 *                              deadline (ms), spec (the model's JSON), reason, paused ('1' or ''), stalls
 *                              (leases reaped), attempts (failed visits since the last commit), not_before
 *                              (ms: no lease before, a failed attempt's backoff), error (the last failed
 *                              attempt), commit (receipt of the last commit), and per epoch e eval_attempts.e,
 *                              eval_stalls.e, eval_last_error.e, eval_error.e; rung (the rung epoch a model
 *                              waits at), rung_note (the last early-stopping decision); and per bracket b and
 *                              rung epoch e, asha.b.e (the metrics recorded there, space-separated)
 *   sweep:{S}:schedule  list   committed visits in commit order: "m epoch shard version worker"
 *   sweep:{S}:evals     list   "m epoch version" of finished epochs waiting for evaluation ("m epoch version
 *                              due_ms" while one waits out the backoff of a failed attempt)
 *   sweep:{S}:evaling   hash   evaluations in flight: token -> "m epoch version deadline worker"
 *   sweep:{S}:results   hash   visit metrics and evaluated epochs (queue_mop_results.c)
 *   sweeps              zset   every sweep id, by creation time (jobctl's listing)
 *   sweeps:active       zset   the sweeps not finished, by creation time (what workers iterate)
 *   mop:wake            list   a token pushed on every commit, release and reap; idle workers BLPOP it
 */
#ifndef CDS_QUEUE_MOP_H
#define CDS_QUEUE_MOP_H

#include <stdint.h>

#include "cds_err.h"
#include "queue.h"

#define QUEUE_SWEEP_ID_MAX 32
/* 0 when id names a sweep the queue accepts (1 to QUEUE_SWEEP_ID_MAX - 1
 * letters, digits, '_' or '-': it is part of Redis keys and file paths);
 * else -1 with the message (err may be NULL to only ask).  Every call that
 * takes a sweep id checks it with this. */
int queue_sweep_id_check(const char *id, cds_err *err);
/* Draws an id for a new sweep into id: "s<N>" from the counter
 * <prefix>sweep:seq, skipping values a sweep created under its own id
 * already has (queue_mop_id.c).  0; QUEUE_MOP_NO_ID with the message when
 * the counter key holds something else or too many values in a row are
 * taken (the fix: give the sweep an id); -1 on a Redis error. */
#define QUEUE_MOP_NO_ID 4
int queue_sweep_new_id(queue_conn *q, char id[QUEUE_SWEEP_ID_MAX], cds_err *err);
/* queue_mop_lease_model: the sweep waits for its dataset to be ready (it was
 * created while the dataset was loading: no version pinned yet). */
#define QUEUE_MOP_WAITING 2
#define QUEUE_MOP_PATH_MAX 1024
#define QUEUE_MOP_DATASET_MAX 256 /* a dataset name (etl allows 128 characters) */
#define QUEUE_MOP_VERSION_MAX 72  /* a dataset version (64 hex digits) */

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
     * shard k only when the next shard of its plan is k.  An epoch a hybrid
     * gang of W ranks trained is "h" and W in 3 digits in each of its K
     * places ("h002"): the replay forms that gang there (hybrid on). */
    const char *const *plans;
    const char *replay_of;       /* the sweep a replay follows, or NULL */
    int max_stalls;              /* a model whose lease expires more often than this fails (0: 10) */
    /* Failed attempts of a visit, an evaluation or the test scoring (0: 5),
     * and the backoff between them: min(cap, base * 2^(n-1)) * [0.5, 1]
     * (0: 1000 ms and 60000 ms). */
    int max_attempts;
    int64_t backoff_base_ms, backoff_cap_ms;
    /* A unique key (cron): while the sweep it names is live, a create with
     * the same key makes nothing and names that sweep; NULL: none. */
    const char *unique;
    /* "mop" (NULL: the same), or "ddp" / "ma": models trained by gangs of
     * `shards` ranks (queue_mop_gang_take). */
    const char *mode;
    /* Early stopping (ASHA, docs/search.md): "metric mode grace eta
     * max_epochs brackets", e.g. "valid_top1 max 1 4 16 1"; NULL: none. */
    const char *early_stop;
    /* A MOP sweep's hybrid (docs/search.md): idle workers train a model
     * left as a gang, an epoch at a time (1), or never (0). */
    int hybrid;
    /* The search (docs/search.md): its kind ("grid", "random", "tpe"; NULL:
     * a plain grid), its budget of trials (a TPE sweep starts with `models`
     * of them and adds the rest as models finish: queue_mop_add_trial), and
     * each model's point (JSON arrays; NULL: none), which TPE reads back. */
    const char *search;
    int trials;
    const char *const *points;
} queue_sweep_def;

/* Creates the sweep with every model idle at epoch 1, version 0.  Refuses an
 * id that exists (QUEUE_NOT_FOUND is not used: -1 with a message).  With a
 * unique key held by a live sweep, creates nothing, sets *duplicate_of (may
 * be NULL; QUEUE_SWEEP_ID_MAX bytes) to that sweep's id and returns
 * QUEUE_MOP_DUPLICATE. */
#define QUEUE_MOP_DUPLICATE 3
int queue_sweep_create(queue_conn *q, const queue_sweep_def *d, char *duplicate_of, cds_err *err);

/* What a queue_mop_lease holds: a model for one visit, an epoch to
 * evaluate, or a sweep's test scoring.  queue_mop_renew renews any of them. */
enum { QUEUE_MOP_VISIT = 0, QUEUE_MOP_EVAL = 1, QUEUE_MOP_TEST = 2, QUEUE_MOP_RANK = 3 };

typedef struct queue_mop_lease {
    int kind;                    /* QUEUE_MOP_VISIT (0, what a zeroed lease is), _EVAL or _TEST */
    int model;                   /* m (-1 for a test scoring) */
    int epoch;                   /* the epoch this visit belongs to, or that is evaluated (from 1) */
    int shard;                   /* the shard it is for (the one asked for); -1 unless a visit */
    int64_t version;             /* committed checkpoint version to start from (0: initialise from the seed) */
    char ckpt[QUEUE_MOP_PATH_MAX]; /* its path ("" for version 0) */
    char token[QUEUE_TOKEN_MAX];
    int64_t deadline_ms;
    int attempts;                /* a visit: failed attempts since the model's last commit */
    /* A visit: what it needs besides the model, read by the lease script
     * itself (no round trip more).  Empty / 0 for the other kinds. */
    char dataset[QUEUE_MOP_DATASET_MAX];         /* the sweep's dataset name */
    char dataset_version[QUEUE_MOP_VERSION_MAX]; /* the version the sweep pinned */
    int shards;                                  /* K */
    char *spec;                  /* queue_mop_lease_visit: the model's spec (JSON, malloc'd; queue_mop_lease_clear
                                  * frees it, so a copy of the struct must not be cleared too); else NULL */
    /* QUEUE_MOP_RANK (queue_mop_gang_take): rank `shard` of a gang of
     * `shards` ranks; the gang's attempt number (its rendezvous scope) and
     * the sweep's mode ("ddp" or "ma"; "mop": a hybrid gang, whose rank r
     * reads shards r, r + shards, ... of the sweep's data_shards). */
    int64_t gang;
    char mode[8];
    int data_shards;
} queue_mop_lease;

/* Asks for a model to train on shard k: returns 1 with *l filled, 0 when no
 * model can visit k now (all busy, all visited k this epoch, the sweep is
 * paused/finished, or it has fewer than k+1 shards), QUEUE_MOP_WAITING when
 * the sweep has no dataset version pinned yet, -1 on error.  *sweep_done (may be NULL) is set when every
 * model of the sweep is done, failed or cancelled. */
int queue_mop_lease_model(queue_conn *q, const char *sweep, int shard, const char *worker, int64_t lease_ms,
                          queue_mop_lease *l, int *sweep_done, cds_err *err);
/* The same, and l->spec gets the model's spec (the lease fills dataset,
 * dataset_version and shards either way): all a visit needs in one round
 * trip.  *l is overwritten; free it with queue_mop_lease_clear. */
int queue_mop_lease_visit(queue_conn *q, const char *sweep, int shard, const char *worker, int64_t lease_ms,
                          queue_mop_lease *l, int *sweep_done, cds_err *err);
/* Frees l->spec and zeroes l (any kind of lease; a zeroed one too). */
void queue_mop_lease_clear(queue_mop_lease *l);
/* queue_mop_lease_model / _visit: the sweep is a DDP or MA sweep, whose
 * models are trained by gangs, or a MOP sweep with the hybrid on and no
 * visit for this shard now: ask queue_mop_gang_take instead. */
#define QUEUE_MOP_GANG 5

/* The model's spec ({"model":..,"train":..} JSON text, malloc'd into *out). */
int queue_mop_model_spec(queue_conn *q, const char *sweep, int model, char **out, cds_err *err);
/* Any field of model m ("state", "reason", ...: see the keys above),
 * malloc'd into *out; QUEUE_NOT_FOUND when it is not there. */
int queue_mop_model_field(queue_conn *q, const char *sweep, int model, const char *field, char **out, cds_err *err);

/* Moves the deadline of a held lease of any kind; returns 0, QUEUE_NOT_FOUND
 * when the lease is gone (expired and reaped, cancelled), -1 on error (a
 * gang's rank: QUEUE_MOP_GANG_DONE once its gang committed).  A
 * lease past its deadline is gone even before a reaper frees the model:
 * renew, commit and reap all judge a lease alive iff now <= deadline (server
 * time). */
int queue_mop_renew(queue_conn *q, const char *sweep, const queue_mop_lease *l, int64_t lease_ms, cds_err *err);
/* The same, and for a visit stores progress (JSON: rows done, rows in the
 * shard, samples per second; NULL or "": nothing) as the model's progress
 * field, where jobctl status reads it. */
int queue_mop_renew_with_progress(queue_conn *q, const char *sweep, const queue_mop_lease *l, int64_t lease_ms,
                                  const char *progress, cds_err *err);

typedef struct queue_mop_commit_result {
    int accepted;                /* 0: the lease was lost; the caller must discard its file */
    int epoch_done;              /* this visit completed the model's epoch (an evaluation was queued) */
    int model_done;              /* ... and it was the model's last epoch */
    int64_t version;             /* the new committed version */
    char superseded[QUEUE_MOP_PATH_MAX]; /* the checkpoint this one replaces ("" if none), for retention */
} queue_mop_commit_result;

/* Publishes the checkpoint the leased visit produced (already renamed into
 * place at ckpt_path) if the lease still holds: records the visit, bumps the
 * version, frees the model (or finishes it), wakes idle workers.  The
 * visit's metrics (JSON, or NULL) go to the results hash as
 * "<m>.<epoch>.train.<shard>" in the same script, before the epoch is
 * queued for evaluation, so an evaluation never reads an epoch's visits
 * with one missing. */
int queue_mop_commit(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *ckpt_path,
                     const char *metrics_json, queue_mop_commit_result *r, cds_err *err);
/* Gives the model back without a visit (drain, error that is not the
 * model's fault); 0, QUEUE_NOT_FOUND if the lease was already gone. */
int queue_mop_release(queue_conn *q, const char *sweep, const queue_mop_lease *l, cds_err *err);
/* Records a failed visit of the leased model with its reason.  final = 0:
 * an attempt (a corrupt checkpoint, an unreadable shard, a full disk): the
 * model idles through a backoff and is tried again, and fails once the
 * sweep's max_attempts is reached; final = 1: it fails at once (out of
 * memory, a diverged loss: every try would end the same).  note (may be
 * NULL) is added to the reason if the model fails.  The rest of the sweep
 * goes on.  *failed (may be NULL) says whether the model failed now;
 * *delay_ms (may be NULL) the backoff otherwise.  0, QUEUE_NOT_FOUND if the
 * lease was already gone. */
int queue_mop_fail_visit(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *reason, int final,
                         const char *note, int *failed, int64_t *delay_ms, cds_err *err);
/* Returns expired leases to idle (at their last committed version) and
 * expired evaluations to the head of the evals list; *n gets how many
 * models, *evals (may be NULL) how many evaluations.  A finished sweep (see
 * the invariants above) leaves the active set here, and so does a sweep
 * whose hash is gone (QUEUE_NOT_FOUND then).  Safe to run from every
 * worker. */
int queue_mop_reap(queue_conn *q, const char *sweep, int *n, int *evals, cds_err *err);
/* Blocks up to timeout_ms (at most 1000) on the wake-up list. */
int queue_mop_wait(queue_conn *q, int timeout_ms, cds_err *err);

/* ---- gangs: DDP and MA sweeps (DESIGN.md §6; queue_mop_gang.c) ----
 *
 * A DDP or MA sweep trains one model's epoch at a time over a gang of W = K
 * ranks, rank r reading shard r.  A gang is formed all at once, by one
 * script call (mop_gang.lua), from workers that said they are ready; each
 * member picks its rank up with the same call, as a lease of kind
 * QUEUE_MOP_RANK (shard = the rank, shards = W, token = the rank's own),
 * renews it (queue_mop_renew, the heartbeat) and ends it: rank 0 commits
 * the epoch, any rank may end the gang without a commit.  Invariants:
 *   - a model is held by at most one gang, and a gang by W ranks on W
 *     distinct workers; a worker holds at most one rank;
 *   - the gang holds its model while no rank's deadline has passed (the
 *     model's deadline is the earliest rank's); past it the reaper frees
 *     the model and counts a stall, as for a MOP lease;
 *   - an epoch is committed once, by rank 0 of the gang that holds the
 *     model; an ended gang's ranks can change nothing (their tokens are
 *     gone), and its rendezvous scope is never used again (G counts up).
 * Keys: sweep:{S}:ready (hash: worker -> "<until ms> <shards>"), besides
 * the nine; the model's fields <m>.gang ("G W"), <m>.r<i> (each rank) and
 * <m>.gang_done (the last gang that committed). */
enum { QUEUE_GANG_ABORT = 0, QUEUE_GANG_ATTEMPT = 1, QUEUE_GANG_FINAL = 2 };
/* Asks for this worker's rank in a gang of sweep: 1 with *l filled (kind
 * QUEUE_MOP_RANK, spec malloc'd: queue_mop_lease_clear), 0 when there is
 * none for it now (marked ready until ready_ms from now: a gang forms when
 * every shard has a ready worker), QUEUE_MOP_WAITING (no dataset version
 * yet), -1 on error.  shards: what this worker may read, its own first,
 * then orphans (their worker gone for the grace period).  where: "<host>
 * <slots>", the worker's host and how many ranks of one gang it holds
 * without sharing cores (0: no limit, a GPU's), which the hybrid honours;
 * NULL: not said.  *sweep_done (may be NULL) as for queue_mop_lease_model. */
int queue_mop_gang_take(queue_conn *q, const char *sweep, const char *worker, int64_t lease_ms, int64_t ready_ms,
                        const int *shards, int nshards, const char *where, queue_mop_lease *l, int *sweep_done,
                        cds_err *err);
/* Rank 0 publishes the gang's epoch: ckpt_path as the new version, the W
 * ranks' metrics (JSON or NULL each) as "<m>.<epoch>.train.<r>".  As
 * queue_mop_commit: r->accepted 0 when the gang lost the model. */
int queue_mop_gang_commit(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *ckpt_path,
                          const char *const *metrics, queue_mop_commit_result *r, cds_err *err);
/* Ends the gang without a commit (how: QUEUE_GANG_ABORT, a stall; _ATTEMPT,
 * a failed attempt with a backoff; _FINAL, the model fails), reason and
 * note as queue_mop_fail_visit.  0; QUEUE_NOT_FOUND when the gang had
 * already ended (another rank ended it, or the reaper). */
int queue_mop_gang_end(queue_conn *q, const char *sweep, const queue_mop_lease *l, int how, const char *reason,
                       const char *note, int *failed, cds_err *err);
/* Withdraws this worker's ready mark (it is about to do other work: a gang
 * formed with it now would wait for it).  0, or -1 on error. */
int queue_mop_gang_unready(queue_conn *q, const char *sweep, const char *worker, cds_err *err);
/* A renewal of a rank whose gang committed: the rank may finish. */
#define QUEUE_MOP_GANG_DONE 6

/* (added by mop) Pauses ("paused": no new leases; leases in flight may renew
 * and commit), resumes ("running") or cancels ("cancelled": final; every
 * unfinished model becomes cancelled and loses its lease, so its worker's
 * next renew or commit is refused) a sweep.  Setting the current state again
 * is a no-op.  Returns 0, QUEUE_NOT_FOUND (no such sweep), -1 (unknown
 * state, or the sweep is already done or cancelled). */
int queue_sweep_set_state(queue_conn *q, const char *sweep, const char *state, cds_err *err);
/* Pauses ("paused": never leased until resumed; a lease in flight still
 * renews and commits), resumes ("running") or cancels ("cancelled": final,
 * its lease token cleared, `live` goes down and the sweep is done when none
 * is left) one model.  Pausing a paused model is a no-op.  Returns 0,
 * QUEUE_NOT_FOUND (no such sweep, or no model of that index), -1 with a
 * message (resume of a model that is not paused; any change to a model that
 * is done, failed or cancelled; an unknown state).  *previous (may be NULL,
 * 16 bytes) gets idle, leased or paused. */
int queue_mop_set_model_state(queue_conn *q, const char *sweep, int model, const char *state, char *previous,
                              cds_err *err);

/* ---- TPE trials (queue_mop_search.c) ---- */

/* The trials a TPE sweep owes now (0 for any other sweep, or one that is
 * cancelled or done): min(trials, initial + finished) - models, where a
 * finished model is done, stopped, failed or cancelled; *next gets the
 * number of the next trial (the model count).  0, QUEUE_NOT_FOUND, or -1. */
int queue_mop_trials_owed(queue_conn *q, const char *sweep, int *owed, int *next, cds_err *err);
/* Adds trial t as model t, with its spec and point (JSON), idle, or failed
 * with why (not NULL: a proposal training would refuse), if it is still
 * owed and nobody added it: 1 added, 0 not (taken by another worker, or no
 * longer owed), QUEUE_NOT_FOUND, -1 on error. */
int queue_mop_add_trial(queue_conn *q, const char *sweep, int t, const char *spec, const char *point,
                        const char *why_failed, cds_err *err);

/* ---- results (queue_mop_results.c) ---- */

/* Takes the oldest finished epoch waiting for evaluation, as a lease of
 * lease_ms (kind QUEUE_MOP_EVAL: model, epoch, version, token, deadline):
 * 1 with *l filled, 0 when none waits, -1 on error.  Renew it with
 * queue_mop_renew while evaluating; if it is not renewed the reaper puts the
 * epoch back for another worker.  It ends with queue_mop_record_result, or
 * queue_mop_put_eval: drop = 0 gives the epoch back (another worker tries
 * it), drop = 1 forgets it (nothing to evaluate); 0, QUEUE_NOT_FOUND if the
 * lease was already gone. */
int queue_mop_take_eval(queue_conn *q, const char *sweep, const char *worker, int64_t lease_ms, queue_mop_lease *l,
                        cds_err *err);
enum { QUEUE_EVAL_BACK = 0, QUEUE_EVAL_DROP = 1, QUEUE_EVAL_RETRY = 2 };
/* how: QUEUE_EVAL_BACK gives the epoch back uncounted (a drain); _DROP
 * forgets it (why, if not NULL or "", is recorded as the epoch's evaluation
 * error); _RETRY records a failed attempt with why: a backoff, then another
 * try, until max_attempts fails the evaluation.  *failed (may be NULL) says
 * whether this ended the evaluation for good. */
int queue_mop_put_eval(queue_conn *q, const char *sweep, const queue_mop_lease *l, int how, const char *why,
                       int *failed, cds_err *err);
/* Records the metrics (JSON) of the epoch the evaluation lease l is for and
 * ends the lease; keeps the model's best epoch by validation top-1: *is_best
 * says whether this one is it now, and *prev_best_epoch which epoch was
 * before (-1: none).  QUEUE_NOT_FOUND (nothing recorded) when the lease was
 * lost: the epoch went back to the list, someone else evaluates it. */
int queue_mop_record_result(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *metrics_json,
                            double valid_top1, int *is_best, int *prev_best_epoch, cds_err *err);
/* The same, and, in the same script call, appends the row this evaluation
 * makes in cds_results to the outbox of the dataset's database (below), so
 * the row survives a database that is down and a worker that dies right
 * after recording.  row NULL: no database to write to (a dataset made
 * without an ETL plan); as queue_mop_record_result then. */
typedef struct queue_outbox_row {
    const char *dsn; /* the database: a libpq conninfo without password ("": each worker's libpq defaults) */
} queue_outbox_row;
int queue_mop_record_result_row(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *metrics_json,
                                double valid_top1, const queue_outbox_row *row, int *is_best, int *prev_best_epoch,
                                cds_err *err);
/* Claims the test scoring of a done sweep as a lease of lease_ms (kind
 * QUEUE_MOP_TEST, model -1): 1 claimed, 0 not now (the sweep is not done,
 * evaluations wait or are in flight, another worker's claim holds, or the
 * score is recorded), -1 on error.  Renew with queue_mop_renew; a claim not
 * renewed past its deadline may be claimed by another worker.  The result
 * ("<m> <epoch> <rows> <loss> <top1> <top5>", "error <why>" or "none
 * <why>") is recorded with queue_mop_record_test: 0, or QUEUE_NOT_FOUND
 * (nothing recorded) when the claim was lost. */
int queue_mop_claim_test(queue_conn *q, const char *sweep, const char *worker, int64_t lease_ms, queue_mop_lease *l,
                         cds_err *err);
int queue_mop_record_test(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *result,
                          cds_err *err);
/* A failed attempt at the test scoring under claim l: below max_attempts
 * the claim ends and the scoring waits out a backoff; at max_attempts the
 * failure is recorded as the sweep's test result.  *failed (may be NULL)
 * says which.  0, QUEUE_NOT_FOUND when the claim was lost. */
int queue_mop_fail_test(queue_conn *q, const char *sweep, const queue_mop_lease *l, const char *why, int *failed,
                        cds_err *err);
/* Puts failed model m back (jobctl retry S/m): idle, no attempt or stall
 * counted, at its committed checkpoint (from_path NULL) or at the older
 * checkpoint from_path, which ended epoch from_epoch (from 1) at version
 * from_version.  A done sweep runs again.  *epoch (may be NULL) gets the
 * epoch it will train next.  QUEUE_NOT_FOUND: no such sweep or model. */
int queue_mop_retry_model(queue_conn *q, const char *sweep, int model, const char *from_path, int from_epoch,
                          int64_t from_version, int *epoch, cds_err *err);
/* The results hash / the models hash as JSON objects of strings. */
int queue_mop_results(queue_conn *q, const char *sweep, json_t **out, cds_err *err);
int queue_mop_models(queue_conn *q, const char *sweep, json_t **out, cds_err *err);

/* Records that this worker serves shard k now (hash mop:shards, server
 * time); the heartbeat thread calls it. */
int queue_mop_shard_beat(queue_conn *q, int shard, cds_err *err);
/* Shards whose last beat is older than grace_ms: their worker is gone; an
 * idle worker may serve them too.  Up to max ids into shards. */
int queue_mop_orphan_shards(queue_conn *q, int64_t grace_ms, int *shards, int max, int *n, cds_err *err);
/* The others: shards whose worker beat within grace_ms (served now). */
int queue_mop_live_shards(queue_conn *q, int64_t grace_ms, int *shards, int max, int *n, cds_err *err);

/* Creates sweep new_id as a replay of the finished sweep orig
 * (queue_replay.c): same dataset version, shape, specs and sweep spec, and
 * for each model a plan, its shards in the order it visited them (read
 * from orig's schedule), so every checkpoint comes out the same.  0,
 * QUEUE_NOT_FOUND (no sweep orig), -1 with the message: a model of orig
 * that did not commit exactly its E*K visits (unfinished, or retried from
 * an older checkpoint), a sweep of format 1, new_id taken. */
int queue_sweep_replay(queue_conn *q, const char *orig, const char *new_id, cds_err *err);

/* ---- the cds_results outbox (queue_outbox.c, lua/outbox.lua) ----
 *
 * Rows for cds_results wait in Redis, per database, until a worker has
 * written them; see queue_outbox.c for the protocol and docs/redis-keys.md
 * for the keys:
 *   results:outbox             zset  DSN id -> when its rows may next be tried (ms)
 *   results:outbox:{<id>}      list  the rows (JSON), oldest first
 *   results:outbox:{<id>}:state hash dsn, failures, last_error, last_error_ms, failing_since_ms,
 *                                    backlog_since_ms, head_refusals, claim_token, claim_by, claim_deadline
 *   results:aside              list  rows the database refused, set aside with the reason (JSON)
 * A DSN id is 16 hex digits of a 64-bit FNV-1a hash of the DSN text. */
#define QUEUE_OUTBOX_ID_LEN 17
void queue_outbox_id(const char *dsn, char id[QUEUE_OUTBOX_ID_LEN]);

/* What a call on one DSN's outbox answered (lua/outbox.lua). */
enum {
    QUEUE_OUTBOX_ROW,      /* the claim is held; row is the head, to write next */
    QUEUE_OUTBOX_EMPTY,    /* nothing waits */
    QUEUE_OUTBOX_LATER,    /* backing off (until the index score) */
    QUEUE_OUTBOX_BUSY,     /* another worker holds the claim */
    QUEUE_OUTBOX_LOST,     /* this claim was taken over: write nothing more */
    QUEUE_OUTBOX_RELEASED, /* the claim was given back */
    QUEUE_OUTBOX_ASIDE     /* the refused row was set aside; row is the next head (NULL: none), claim held */
};

typedef struct queue_outbox_head {
    int state;                /* QUEUE_OUTBOX_* */
    char *row;                /* malloc'd, or NULL */
    char *dsn;                /* the outbox's database (malloc'd), NULL when its state has none */
    int64_t waiting;          /* rows in the list */
    int64_t failures;         /* consecutive failed tries of the database */
    int64_t now_ms;           /* the server's time */
    int64_t failing_since_ms; /* first failure of the current outage, -1 if none; on EMPTY:
                               * of the outage whose kept rows were just written */
    char last_error[CDS_ERR_MAX];
} queue_outbox_head;
void queue_outbox_head_clear(queue_outbox_head *h);

/* A worker's claim on one DSN's outbox. */
typedef struct queue_outbox_claim {
    char id[QUEUE_OUTBOX_ID_LEN];
    const char *worker;
    char token[QUEUE_TOKEN_MAX]; /* drawn by queue_outbox_take */
    int64_t claim_ms;            /* each answer that keeps the claim moves its deadline to now + claim_ms */
} queue_outbox_claim;

/* How a try failed: retry (the database is away or refuses every row:
 * backoff of min(cap, base*2^(n-1)) * factor for the n-th failure in a
 * row), refused (the database refused this row for its data: set aside
 * after max_refusals), malformed (the row is not readable: set aside now). */
typedef struct queue_outbox_failure {
    const char *why;
    const char *kind; /* "retry", "refused" or "malformed" */
    int64_t base_ms, cap_ms;
    double factor;    /* in [0.5, 1], drawn by the caller */
    int max_refusals;
} queue_outbox_failure;

/* The DSN ids whose rows may be tried now, oldest due first, at most max
 * (free with queue_sweep_list_free). */
int queue_outbox_due(queue_conn *q, size_t max, char ***ids, size_t *n, cds_err *err);
/* Takes the claim of c->id (c->token drawn here): ROW, EMPTY, LATER or BUSY. */
int queue_outbox_take(queue_conn *q, queue_outbox_claim *c, queue_outbox_head *h, cds_err *err);
/* row was written (or was there already): removes it if it is still the
 * head, resets the backoff: ROW (the next), EMPTY or LOST. */
int queue_outbox_done(queue_conn *q, const queue_outbox_claim *c, const char *row, queue_outbox_head *h,
                      cds_err *err);
/* Writing row failed: LATER (claim given back, backoff), ASIDE or LOST. */
int queue_outbox_fail(queue_conn *q, const queue_outbox_claim *c, const char *row, const queue_outbox_failure *f,
                      queue_outbox_head *h, cds_err *err);
/* Gives the claim back without a failure (the pass ran out of time). */
int queue_outbox_release(queue_conn *q, const queue_outbox_claim *c, queue_outbox_head *h, cds_err *err);
/* What waits, for jobctl results --check-db: the rows of sweep (NULL: of
 * every sweep) still in an outbox and the ones set aside, as a JSON object
 * (documented in docs/sweeps.md). */
int queue_outbox_report(queue_conn *q, const char *sweep, json_t **out, cds_err *err);

/* ---- read-only views (queue_sweep_read.c) ---- */

/* Every sweep id, oldest first (malloc'd array of malloc'd strings). */
int queue_sweep_list(queue_conn *q, char ***ids, size_t *n, cds_err *err);
/* The active sweeps (not finished: see the invariants above), oldest first,
 * which is all a worker needs to look at.  The first call on a deployment
 * whose active set was never built builds it from the index of every sweep. */
int queue_sweep_list_active(queue_conn *q, char ***ids, size_t *n, cds_err *err);
void queue_sweep_list_free(char **ids, size_t n);
/* The schedule: committed visits in commit order, "m epoch shard version
 * worker" (free with queue_sweep_list_free). */
int queue_mop_schedule(queue_conn *q, const char *sweep, char ***lines, size_t *n, cds_err *err);
/* Sets one field of the sweep hash (the worker pins dataset_version and
 * records a reason with it). */
int queue_sweep_set_field(queue_conn *q, const char *sweep, const char *field, const char *value, cds_err *err);
/* The sweep hash as a JSON object of strings; QUEUE_NOT_FOUND if absent. */
int queue_sweep_get(queue_conn *q, const char *sweep, json_t **out, cds_err *err);

#endif
