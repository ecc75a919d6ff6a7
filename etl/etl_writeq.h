/* etl_writeq: batches of converted rows handed from a stream's thread to a
 * writer thread, so that checksumming and writing a shard overlap with
 * receiving and decoding the next rows instead of following them.
 *
 * Three batch buffers circulate: one being filled by the stream, up to two
 * queued for or being written by the writer.  The stream waits only when all
 * three are taken (the disk is slower than the network).  The first write
 * error stops the writer from writing (it still takes batches, so the stream
 * never waits forever) and is returned by the next submit and by finish. */
#ifndef CDS_ETL_WRITEQ_H
#define CDS_ETL_WRITEQ_H

#include <stddef.h>
#include <stdint.h>

#include "cds_err.h"
#include "etl_shard.h"

typedef struct etl_writeq etl_writeq;

/* Batches of batch_rows rows of xrow feature bytes and one int32 label. */
etl_writeq *etl_writeq_new(etl_shard_writer *w, size_t xrow, size_t batch_rows, cds_err *err);
/* The batch to fill next. */
void etl_writeq_batch(etl_writeq *q, uint8_t **x, int32_t **y);
/* Queues the current batch (its first n rows) and makes another current. */
int etl_writeq_submit(etl_writeq *q, size_t n, cds_err *err);
/* Waits until every queued batch is written; returns the first error. */
int etl_writeq_finish(etl_writeq *q, cds_err *err);
/* Stops the writer (after finish, or to give up) and frees everything. */
void etl_writeq_free(etl_writeq *q);

#endif
