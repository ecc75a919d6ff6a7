/* etl_rows: the row converter of a task's COPY streams (etl_rows.c), for
 * etl_stream.c.  Not installed. */
#ifndef CDS_ETL_ROWS_H
#define CDS_ETL_ROWS_H

#ifndef CDS_ETL_INTERNAL
#error "etl_rows.h is private to etl/: include etl_queue.h, etl_unload.h, etl_dataset_record.h and the other public etl headers (a white-box test under tests/ adds c_args : etl_private_args)"
#endif

#include "etl_copy.h"
#include "etl_plan_int.h"
#include "etl_predict.h"
#include "etl_shard.h"
#include "etl_writeq.h"

/* Rows per batch handed to the writer thread. */
#define ETL_BATCH_ROWS 1024

/* One task's converter: the stream fills the batch row by row; a full batch
 * goes to the shard writer's thread (etl_writeq). */
typedef struct etl_converter {
    const etl_plan *p;
    const etl_task *task;
    etl_shard_writer *w;
    etl_writeq *wq; /* hands full batches to the writer thread */
    uint8_t *x;    /* the batch being filled: BATCH_ROWS rows of features */
    int32_t *y;
    int32_t max_label; /* the largest class id seen (for integer labels) */
    size_t n;      /* rows in the batch */
    size_t xrow;   /* bytes per feature row */
    int64_t rows;  /* rows converted so far */
    int64_t buffer_id; /* the MADlib buffer being unpacked, -1 if unknown */
    etl_keys *keys; /* a prediction's (label kind ROWID): each row's id, in row order */
} etl_converter;

/* The row callback of the COPY decoder (ctx: the converter): one row of
 * fields into one row of features and a class id; an error names the
 * column, the table and the row (the buffer, for MADlib). */
int etl_converter_on_row(void *ctx, const etl_field *f, int nf, cds_err *err);
/* Hands the rows batched so far to the writer; tracks the largest label. */
int etl_converter_flush(etl_converter *cv, cds_err *err);

#endif
