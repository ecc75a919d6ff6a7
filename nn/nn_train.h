/* nn_train: a model, its optimiser and its place in training, moved through
 * shards one pass at a time, and saved to and restored from checkpoints.
 *
 * The unit of work is one pass over one shard (a MOP sub-epoch); an epoch is
 * a sequence of passes ended by nn_trainer_end_epoch.  Everything a pass does
 * is a function of the trainer's state and the shard: the batch order comes
 * from (seed, epoch, shard), dropout masks from a generator whose state is
 * checkpointed, so a run resumed from a checkpoint is bit-identical to one
 * that never stopped (with the same OpenBLAS thread count). */
#ifndef CDS_NN_TRAIN_H
#define CDS_NN_TRAIN_H

#include <stdint.h>
#include "cds_err.h"
#include "nn_model.h"
#include "nn_optim.h"

typedef struct nn_pass_stats {
    int64_t rows;
    double loss_sum;        /* Σ over batches of mean loss × rows (incl. L2) */
    double xent_sum;        /* the same for the cross-entropy alone */
    int64_t top1, top5;
    double seconds;
    int64_t bytes;          /* of the shards' rows the pass read (samples and labels, as stored) */
} nn_pass_stats;

/* Called after each batch with rows done so far out of the pass's total
 * (nn_trainer_train_steps: total is done); so_far holds the pass's sums as
 * last read from the device, at most a second old (rows, loss and counts
 * agree with one another; done may be ahead of so_far->rows).  A non-zero
 * return stops the pass (nn_trainer_train_shard then fails with
 * NN_TRAIN_STOPPED and the trainer must not be saved: its state is mid-pass). */
typedef int (*nn_progress_fn)(void *ctx, int64_t done, int64_t total, const nn_pass_stats *so_far);
#define NN_TRAIN_STOPPED 2
/* nn_trainer_train_shard's return when the loss became NaN or infinite: the
 * model diverged (its hyper-parameters are at fault, not the worker). */
#define NN_TRAIN_DIVERGED 3

typedef struct nn_trainer nn_trainer;


/* A fresh trainer from a spec {"model": {...}, "train": {...}} (JSON text). */
nn_trainer *nn_trainer_new(const char *spec_json, cds_err *err);
/* A trainer restored from a checkpoint: spec, weights, running statistics,
 * optimiser state, epoch, step, visited shards and generator state. */
nn_trainer *nn_trainer_load(const char *ckpt_path, cds_err *err);
/* The same two on a device (nn_place_pick): nn_trainer_new and
 * nn_trainer_load train on the CPU.  A checkpoint holds no device: one
 * saved on a GPU resumes on the CPU and the reverse.  rank: as
 * nn_trainer_load_rank (0: the plain optimiser state). */
nn_trainer *nn_trainer_new_at(const char *spec_json, nn_place where, cds_err *err);
nn_trainer *nn_trainer_load_at(const char *ckpt_path, int rank, nn_place where, cds_err *err);
void nn_trainer_free(nn_trainer *t);

/* One training pass over a shard directory (shard-<k>); shard_index seeds its
 * order and is recorded as visited in the current epoch. */
int nn_trainer_train_shard(nn_trainer *t, const char *shard_dir, int shard_index, nn_progress_fn progress,
                           void *ctx, nn_pass_stats *st, cds_err *err);
/* Exactly `steps` training steps (at least 1) over a shard, starting it
 * again when it ends (round r in the order of epoch + r); the shard is not
 * recorded as visited.  Data-parallel training runs the same number of
 * steps on every rank's shard this way. */
int nn_trainer_train_steps(nn_trainer *t, const char *shard_dir, int shard_index, int64_t steps,
                           nn_progress_fn progress, void *ctx, nn_pass_stats *st, cds_err *err);
/* A data-parallel pass (DESIGN.md §6): one pass of o->rows rows (0: the
 * shard's own) in batches of o->batch (0: the configuration's), going on
 * past the shard's end in the next epoch's order (nn_data_opts.pass_rows),
 * so every rank of a DDP gang takes the longest shard's rows in the same
 * steps, only the last one short, with o->after_backward (may be NULL) called
 * between each step's backward and its optimiser step (DDP: the gradients
 * averaged over the gang).  o->row_offset is this rank's first row in each
 * global batch: dropout masks are drawn by global row.  The shard is not
 * recorded as visited, and a diverged loss is found at the pass's end only
 * (every rank of a gang runs the whole pass). */
typedef struct nn_dp_pass {
    int batch;
    int64_t rows;
    int64_t row_offset;
    int (*after_backward)(void *ctx, cds_err *err);
    void *hook_ctx;
} nn_dp_pass;
int nn_trainer_train_dp(nn_trainer *t, const char *shard_dir, int shard_index, const nn_dp_pass *o,
                        nn_progress_fn progress, void *ctx, nn_pass_stats *st, cds_err *err);
/* The rows of a shard (its files checked against the model as for training). */
int nn_trainer_shard_rows(nn_trainer *t, const char *shard_dir, int64_t *rows, cds_err *err);
/* One training step in two halves, for data-parallel training (reduce the
 * gradients between them): forward and backward on a batch (host data, as
 * nn_model_forward takes it; the batch's metrics go to the model's pass
 * sums, nn_model_acc_get), then the optimiser step at the current epoch's
 * learning rate, which counts the step. */
int nn_trainer_forward_backward(nn_trainer *t, const float *x, const int32_t *idx, const int32_t *labels, int n,
                                cds_err *err);
int nn_trainer_optim_step(nn_trainer *t, cds_err *err);
/* A data-parallel step without data, for a rank that has run out while its
 * gang goes on (PyTorch's Join): the step's dropout draw (so the ranks'
 * generators stay in step), reduce(ctx), which leaves the gang's averaged
 * gradients in the model (ddp_reducer_shadow), and the optimiser step. */
int nn_trainer_shadow_step(nn_trainer *t, int (*reduce)(void *ctx, cds_err *err), void *ctx, cds_err *err);
/* Evaluation over a shard: no updates, running statistics, file order.
 * Stats are added to *st (so several shards sum). */
int nn_trainer_eval_shard(nn_trainer *t, const char *shard_dir, nn_pass_stats *st, cds_err *err);
/* Prediction: the same pass as nn_trainer_eval_shard (so a shard's rows
 * get the logits its test score counted), with each batch's logits handed
 * to fn in file order: n rows of K floats, host memory valid during the
 * call.  fn's non-zero return stops the pass with its error.  The shard's
 * labels only feed the pass sums (a prediction shard's are 0). */
typedef int (*nn_logits_fn)(void *ctx, const float *logits, int n, int K, cds_err *err);
int nn_trainer_predict_shard(nn_trainer *t, const char *shard_dir, nn_logits_fn fn, void *ctx, nn_pass_stats *st,
                             cds_err *err);
void nn_trainer_end_epoch(nn_trainer *t);
int nn_trainer_save(nn_trainer *t, const char *path, cds_err *err);

/* Model averaging keeps one optimiser state per rank (DESIGN.md §6).  A
 * rank's state as one host vector of nn_trainer_opt_floats: the optimiser's
 * tensors in order, then its step count t as two floats (t >> 24, t &
 * 0xffffff).  nn_trainer_save_ranks saves rank 0's checkpoint with the
 * other ranks' states (n_others vectors, ranks 1..n_others) as optimiser
 * tensors named "r<k>/<name>" and "r<k>/t"; nn_trainer_load_rank restores
 * rank k's (rank 0: the plain names, as nn_trainer_load). */
size_t nn_trainer_opt_floats(nn_trainer *t);
void nn_trainer_opt_get(nn_trainer *t, float *host);
int nn_trainer_save_ranks(nn_trainer *t, const char *path, const float *others, int n_others, cds_err *err);
nn_trainer *nn_trainer_load_rank(const char *ckpt_path, int rank, cds_err *err);

/* One training step on a batch, as a pass takes it: forward, backward
 * and the optimiser's step, graphed when the train spec asks for
 * "cuda_graphs" and n is the spec's batch.  The pass's sums are the
 * model's (nn_model_acc_set / _get). */
int nn_trainer_step_batch(nn_trainer *t, const float *x, const int32_t *idx, const int32_t *labels, int n,
                          cds_err *err);

/* Training steps captured and replayed as CUDA graphs so far (the train
 * spec's "cuda_graphs"; 0 and 0 on the CPU). */
void nn_trainer_graph_counts(const nn_trainer *t, long *captured, long *replayed);

int64_t nn_trainer_epoch(const nn_trainer *t);
int64_t nn_trainer_step(const nn_trainer *t);
size_t nn_trainer_visited(const nn_trainer *t, const int32_t **shards);
double nn_trainer_lr(const nn_trainer *t);
nn_model *nn_trainer_model(nn_trainer *t);
const nn_train_cfg *nn_trainer_cfg(const nn_trainer *t);
/* {"model": ..., "train": ...} canonical. */
const char *nn_trainer_spec(const nn_trainer *t);

#endif
