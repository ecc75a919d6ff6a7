/* nn_rows: a sparse batch grouped by weight row, and the row-sparse
 * gradient made from it.
 *
 * A sparse mlp's first layer reads, per batch, only the weight rows of the
 * batch's indices.  nn_sparse_plan lists those rows once, ascending, each
 * with the positions (n·K + k) that hold it; the forward and the gradient
 * walk it instead of the batch, so a row is visited once however often it
 * occurs.  nn_row_grad is that layer's weight gradient: zero except on the
 * listed rows, whose values are either packed or still the sums of dy rows
 * the plan names, taken by the optimiser step as it reaches each row (the
 * packed form costs a write and a read of every listed row, 11 % of a
 * confA step).  Both forms hold the same values bit for bit. */
#ifndef CDS_NN_ROWS_H
#define CDS_NN_ROWS_H

#include <stddef.h>
#include <stdint.h>

/* rows[0..n_rows) are the distinct indices, ascending; the positions
 * p = n·K + k of rows[r] are the low 32 bits of keys[start[r] ..
 * start[r+1]), ascending. */
typedef struct nn_sparse_plan {
    size_t n_rows;
    const int32_t *rows;
    const uint32_t *start;
    const uint64_t *keys;
    int K;
} nn_sparse_plan;

/* The batch row (sample) of the plan's p-th position. */
static inline uint32_t nn_sparse_plan_sample(const nn_sparse_plan *pl, uint32_t p)
{
    return (uint32_t)pl->keys[p] / (uint32_t)pl->K;
}

/* The gradient of a [n_total, cols] weight that is zero outside
 * rows[0..n_rows) (ascending).  Listed row r is rg[r·cols ..] when rg is
 * set; otherwise it is Σ dy[n,:] over the positions of plan row r, summed
 * in ascending position from a copy of the first (dy is [N, cols]). */
typedef struct nn_row_grad {
    const int32_t *rows;
    size_t n_rows;
    const float *rg;
    const nn_sparse_plan *plan;
    const float *dy;
} nn_row_grad;

#endif
