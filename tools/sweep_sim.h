/* sweep_sim: the makespan of a sweep on W workers, predicted from the time
 * each model's visit of each shard takes (DESIGN.md §10, the study's
 * heterogeneous-workload simulator; jobctl simulate, docs/sweeps.md).
 *
 * MOP is simulated event by event as the scheduler runs it (queue/lua/
 * mop_lease.lua and worker_mop.c): worker k serves shard k; a worker that
 * is free first takes an evaluation that waits, else leases, among the
 * idle models that have not visited its shard this epoch, the one with the
 * least progress, the lowest index among equals; with nothing to take it
 * waits for the next commit.  With the hybrid, a worker with nothing to
 * visit asks for a gang, and one forms by prelude.lua's hybrid_plan rule:
 * at least 2 idle workers (itself and the waiting ones), fewer runnable
 * models than idle and busy workers, a model idle at an epoch boundary
 * (the least progress); W the fewest shards per rank among the sizes that
 * divide its batch, at most the idle workers less one for each other idle
 * model, the host's slots and K.  The gang is the asker and the longest
 * idle others by index; its forming wakes W waiters, a member not woken
 * joins at its next poll, and the epoch starts once all have joined, plus
 * the gang overhead.  Rank r reads shards r, r+W, ...: the epoch lasts as
 * long as the slowest rank's visits of its shards (a diag.sleep gang
 * sleeps ceil(K/W) visits, the same for equal visits).  A visit takes its time plus the per-visit
 * overhead (lease, checkpoint load and save, commit); an epoch's last
 * commit queues its evaluation.  The makespan ends at the last commit, as
 * a sweep's `finished` does.
 *
 * The rotation is the study's alternative: every model visits the shards
 * in lockstep, sub-epoch by sub-epoch, each sub-epoch as long as its
 * slowest visit (models in groups of W; a group short of W leaves workers
 * idle).  DDP and MA train one model at a time on a gang of all W workers:
 * an epoch as long as its slowest rank's shard (a rank's pass at b/W rows
 * a step costs about what the shard's visit at b costs) plus the
 * per-epoch gang overhead; their figures are estimates, not checked
 * against runs. */
#ifndef CDS_SWEEP_SIM_H
#define CDS_SWEEP_SIM_H

typedef struct sweep_sim_in {
    int models, shards, epochs; /* M, K (= the workers W), E */
    const double *visit_s;      /* M·K: model m's visit of shard k, seconds (row m) */
    const double *eval_s;       /* M: an evaluation of model m's epoch (NULL: none) */
    const int *model_epochs;    /* M: the epochs each model trains, 0..E (NULL: all E; fewer: stopped early) */
    /* M·E: model m's visit of any shard in epoch e (from 0), seconds, where
     * a measured sweep says (a visit's time depends on what else ran beside
     * it); a negative entry, or NULL: visit_s. */
    const double *epoch_visit_s;
    double visit_overhead_s;    /* added to every MOP visit */
    double gang_overhead_s;     /* added to every DDP/MA epoch, and to every hybrid gang's */
    /* The hybrid (sweep_sim_mop only): 1 forms gangs as hybrid_plan does. */
    int hybrid;
    const int *batch;           /* M: each model's batch (a gang's W divides it); NULL: no gang forms */
    int host_slots;             /* ranks one gang takes at most (the workers' host's cores / threads); 0: no limit */
} sweep_sim_in;

typedef struct sweep_sim_out {
    double makespan_s;
    double busy_s;      /* worker-seconds spent on visits and evaluations */
    double utilisation; /* busy / (W · makespan) */
} sweep_sim_out;

/* Each returns 0, or -1 when the input is not a sweep (no model, shard or
 * epoch, a negative time). */
int sweep_sim_mop(const sweep_sim_in *in, sweep_sim_out *out);
int sweep_sim_rotation(const sweep_sim_in *in, sweep_sim_out *out);
int sweep_sim_gang(const sweep_sim_in *in, sweep_sim_out *out);

#endif
