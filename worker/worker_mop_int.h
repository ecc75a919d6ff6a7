/* worker_mop_int: what the files of the MOP runner share.  The calls among
 * them flow one way:
 *
 *   worker_mop.c          the step: which lease to take, which runner runs it
 *     worker_mop_visit.c    a visit that trains (the production path)
 *     worker_mop_sleep.c    diag.sleep models (tests and benchmarks)
 *     worker_mop_gang.c     a rank of a DDP or MA gang, in a child process
 *                           (worker_rank.c, cds-worker --rank-task)
 *     worker_mop_eval.c     evaluation and test scoring
 *     worker_mop_search.c   proposing the trials of TPE searches
 *     worker_mop_dataset.c  a sweep's dataset, pinning, orphan shards
 *       worker_mop_lease.c    ending the lease in hand (commit, give back, fail)
 *       worker_results.c      results.csv and the cds_results rows
 *         worker_ctx.c          the worker's context (worker_int.h)
 *
 * Not a public interface. */
#ifndef CDS_WORKER_MOP_INT_H
#define CDS_WORKER_MOP_INT_H

#ifndef CDS_WORKER_INTERNAL
#error "worker_mop_int.h is private to worker/: include worker.h (a white-box test under tests/ adds c_args : worker_private_args)"
#endif

#include "nn_train.h"
#include "worker_mop.h"

/* A visit: the lease in hand, which carries what the visit needs besides
 * the model (queue_mop_lease_visit): lease.dataset, lease.shards (K: a visit
 * that makes the model's visited count K ends its epoch), lease.spec. */
typedef struct worker_visit {
    worker *w;
    const char *sweep;
    queue_mop_lease lease;
} worker_visit;

/* ---- worker_mop_lease.c ---- */
/* The training callback after each batch (ctx: the worker): records how
 * far the visit is, for the heartbeat to publish, and says whether to stop
 * (told to stop at once, or the lease lost). */
int worker_visit_should_stop(void *ctx, int64_t done, int64_t total, const nn_pass_stats *st);
/* The model's directory and the checkpoint this visit writes in it. */
int worker_visit_ckpt_path(const worker_visit *v, char *out, size_t n, char *dir, size_t dn, cds_err *err);
/* Gives the model back without counting an attempt (a stop, Redis). */
void worker_visit_give_back(worker *w, worker_visit *v, const char *why);
/* A failed attempt (final: the model fails at once); note is added to the
 * reason if the model fails. */
void worker_visit_failed(worker *w, worker_visit *v, const cds_err *why, int final, const char *note);
/* Commits the checkpoint at path: 1 accepted, 0 refused (file deleted), -1
 * when Redis could not say (file kept). */
int worker_visit_commit(worker *w, worker_visit *v, const char *path, const char *dir, int keep_epoch,
                        const char *metrics, queue_mop_commit_result *r);
/* After a commit of version at path in the model's directory dir: deletes
 * the superseded checkpoint (a v<N>- file) and the files dead leases left. */
void worker_mop_retain(worker *w, const char *dir, const char *path, int64_t version, const char *superseded);
/* Ends an evaluation lease without a result (how: QUEUE_EVAL_*). */
void worker_eval_end(worker *w, const char *sweep, const queue_mop_lease *l, int how, const char *why);

/* ---- worker_mop_visit.c ---- */
/* Trains the visit v (its lease in the slot, its dataset and spec filled)
 * and commits it, or ends its lease as its failure requires. */
void worker_mop_train_visit(worker *w, worker_visit *v);

/* ---- worker_mop_gang.c ---- */
/* This worker's rank in a gang of the DDP or MA sweep, when one is due:
 * runs it in a child process (worker_rank.c) and watches it; 1 if one ran. */
int worker_mop_gang_step(worker *w, const char *sweep);

/* The last epoch a finished model trained (a done model's epoch: early
 * stopping's max_epochs may end it before the sweep's; a stopped model's
 * rung), or 0 when it is not done or stopped (worker_mop_eval.c). */
int worker_mop_last_epoch(const json_t *models, int m);

/* ---- worker_mop_search.c ---- */

/* Proposes and adds one trial owed by a TPE sweep among ids: 1 if it did. */
int worker_mop_propose_step(worker *w, char **ids, size_t n);

/* ---- worker_mop_sleep.c ---- */
/* The ms of a diag.sleep model's spec, or -1 for any other model. */
int64_t worker_mop_sleep_ms(const char *spec);
void worker_mop_sleep_visit(worker *w, worker_visit *v, int64_t ms);
/* A diag.sleep model's epoch: nothing to evaluate, the evaluation dropped. */
void worker_mop_sleep_eval(worker *w, const char *sweep, const queue_mop_lease *l, const char *spec);

/* ---- worker_mop_eval.c ---- */
/* Evaluates the epoch of the evaluation lease l (in the slot). */
void worker_mop_eval(worker *w, const char *sweep, const queue_mop_lease *l);
/* Claims and runs the test scoring of one done sweep of ids: 1 if one ran. */
int worker_mop_test_step(worker *w, char **ids, size_t n);

/* ---- worker_mop_dataset.c ---- */
/* The sweep's dataset (into dataset, n bytes) and shard count. */
int worker_mop_sweep_info(worker *w, const char *sweep, char *dataset, size_t n, int *shards, cds_err *err);
/* A sweep whose leases wait for its dataset: pins it once ready, cancels
 * the sweep if it failed. */
void worker_mop_pin_dataset(worker *w, const char *sweep);
/* Up to max shards, other than this worker's, whose worker has been silent
 * for the grace period (none when the grace is 0 or Redis fails). */
int worker_mop_orphan_shards(worker *w, int *shards, int max);

#endif
