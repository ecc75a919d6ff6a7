/* ddp_rows: a sparse mlp's embedding gradient averaged over a DDP gang as
 * the rows the ranks' batches touched (DESIGN.md §6), the alternative to
 * all-reducing it dense.
 *
 * Each step every rank packs the rows its batch touched and their gradient,
 * all-gathers every rank's (sizes first, then the bytes), merges the W
 * sorted lists, and gives the union, averaged, back to the model as its
 * packed row-sparse gradient, which the optimiser's row-sparse steps (exact
 * SGD and Adam, and lazy Adam: the union of the rows any rank touched is
 * what one process with the whole batch touches) take.  The traffic is the
 * touched rows, not the whole weight.  Host memory, reached through the
 * model's copies (nn_model_row_grad_get/set), so any backend with a host
 * communicator (Gloo) serves. */
#ifndef CDS_DDP_ROWS_H
#define CDS_DDP_ROWS_H

#include <stddef.h>

#include "cds_err.h"
#include "ddp_comm.h"
#include "nn_model.h"

typedef struct ddp_rows ddp_rows;

/* For embedding parameter `param` of m (m must outlive it). */
int ddp_rows_new(nn_model *m, size_t param, ddp_comm *c, ddp_rows **out, cds_err *err);
/* After a backward (the parameter row-sparse): the exchange above; 0, or
 * -1 with the error (the communicator is then broken). */
int ddp_rows_reduce(ddp_rows *s, ddp_comm *c, cds_err *err);
/* The same exchange with no rows of this rank's: a step it takes without
 * data (ddp_reducer_shadow). */
int ddp_rows_reduce_none(ddp_rows *s, ddp_comm *c, cds_err *err);

/* The last step's exchange, counted. */
typedef struct ddp_rows_stats {
    size_t rows_mine, rows_union;     /* rows this rank touched; the gang's union */
    size_t bytes_sent, bytes_gathered; /* this rank's payload; every rank's */
} ddp_rows_stats;
ddp_rows_stats ddp_rows_last(const ddp_rows *s);
void ddp_rows_free(ddp_rows *s);

#endif
