/* ddp_reducer: the gradients of a data-parallel step, averaged over the
 * gang in buckets as backward finishes them (DESIGN.md §6).
 *
 * The dense parameters' gradients are one block in parameter order
 * (nn_model_grad_block).  Walking the parameters from the last to the first,
 * as backward finishes them, the reducer cuts that block into buckets of
 * about bucket_bytes (PyTorch DDP's 25 MB by default): each bucket is a
 * contiguous range of the block holding whole parameters.  The model's
 * gradient hook counts each bucket's parameters down, and the bucket whose
 * last parameter is final goes to the reducer's own thread, which averages
 * it over the gang while backward goes on through the earlier layers.  ddp_reducer_finish, after
 * backward, reduces what is left (nothing, when every parameter reported)
 * and returns the first error.  Buckets go out in the same order on every
 * rank, since every rank runs the same backward.
 *
 * Device memory is reached only through the model (nn_model_read/write):
 * each bucket is copied to a host buffer, reduced there and copied back, so
 * the reducer works on any backend with a host communicator (Gloo).
 *
 * bucket_bytes 0 makes one bucket, reduced by ddp_reducer_finish after
 * backward (the unbucketed reference: a sum of two floats does not depend
 * on how the block was cut, so both give the same bits at W = 2).
 *
 * A sparse mlp's embedding (fc0.weight) is averaged one of two ways
 * (ddp_sparse): as rows (the default): its row-sparse gradient's touched
 * rows all-gathered and merged after backward (ddp_rows.h), any optimiser,
 * lazy Adam included; or dense: its gradient taken dense
 * (nn_model_set_row_grads off) and all-reduced as a bucket of its own, as
 * PyTorch DDP does for a dense EmbeddingBag, exact SGD and Adam then taking
 * their dense step, which equals the row-sparse one. */
#ifndef CDS_DDP_REDUCER_H
#define CDS_DDP_REDUCER_H

#include <stddef.h>

#include "cds_err.h"
#include "ddp_comm.h"
#include "nn_model.h"

#define DDP_BUCKET_BYTES (25u << 20)

typedef struct ddp_reducer ddp_reducer;
typedef struct ddp_rows ddp_rows;

/* How a sparse mlp's embedding gradient is averaged: as the rows the
 * ranks touched (ddp_rows.h: all-gather, merge), or dense, all-reduced as a
 * bucket of its own.  DDP_SPARSE_DEFAULT is the faster by measurement
 * (docs/ddp.md, "Sparse models"). */
typedef enum { DDP_SPARSE_ROWS = 0, DDP_SPARSE_DENSE = 1 } ddp_sparse;
#define DDP_SPARSE_DEFAULT DDP_SPARSE_ROWS

/* Installs the reducer as m's gradient hook (m must outlive it). */
int ddp_reducer_new(nn_model *m, ddp_comm *c, size_t bucket_bytes, ddp_reducer **out, cds_err *err);
/* The same, choosing how a sparse mlp's embedding is averaged. */
int ddp_reducer_new_sparse(nn_model *m, ddp_comm *c, size_t bucket_bytes, ddp_sparse how, ddp_reducer **out,
                           cds_err *err);
/* The row exchange of a sparse mlp under DDP_SPARSE_ROWS (ddp_rows_last
 * counts its last step), or NULL. */
const ddp_rows *ddp_reducer_rows(const ddp_reducer *r);
/* After a backward pass: reduces the buckets not yet reduced; returns 0, or
 * -1 with the first error of this step (the communicator is then broken). */
int ddp_reducer_finish(ddp_reducer *r, cds_err *err);
/* A step this rank takes without data (a hybrid gang's rank past its
 * shards, as PyTorch's Join shadows one): zero gradients, dense and
 * row-sparse, reduced as ddp_reducer_finish reduces a real step's, so the
 * gang's collectives stay matched and every rank gets the same average
 * (which still divides by W).  Returns as ddp_reducer_finish. */
int ddp_reducer_shadow(ddp_reducer *r, cds_err *err);
/* Rank root's parameters and buffers (running statistics) copied to every
 * rank: the gang starts from the same weights. */
int ddp_reducer_broadcast_model(ddp_reducer *r, int root, cds_err *err);
/* The same without a reducer (MA has none): root's weights and buffers on
 * every rank; or their mean over the ranks (model averaging: the running
 * statistics are averaged too). */
int ddp_model_broadcast(nn_model *m, ddp_comm *c, int root, cds_err *err);
int ddp_model_average(nn_model *m, ddp_comm *c, cds_err *err);
size_t ddp_reducer_buckets(const ddp_reducer *r);
/* How many buckets of the last step went to the reducer's thread during
 * backward, before ddp_reducer_finish (all of them when bucketed, none
 * unbucketed): the overlap, counted. */
size_t ddp_reducer_last_early(const ddp_reducer *r);
/* Removes the hook. */
void ddp_reducer_free(ddp_reducer *r);

#endif
