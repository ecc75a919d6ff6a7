/* etl_predict: a table scored by a model of a sweep and written back as a
 * table (jobctl enqueue predict, docs/predict.md), MADlib's
 * madlib_keras_predict for Cerebro-DS.
 *
 * Three phases, as an unload's (etl_unload.h), run as queue jobs:
 *
 *   plan     (jobctl, one connection) the source table's feature columns are
 *            checked against the plan of the dataset the model trained on
 *            (as many columns, the same types, the same array shapes), the
 *            id column found (--id, else the primary key), the output table
 *            named (refused when it exists, unless replace) and the parts
 *            chosen: one per Greenplum segment, or the rows of one hash
 *            slice of the id on PostgreSQL.  The plan is the dataset's ETL
 *            plan with the source table's columns, its label the row id
 *            (kind "rowid"), a task per part (split "predict"), and a
 *            "predict" object: the output, the checkpoint, the kind of
 *            output.
 *   part k   (any worker) the rows of part k go through the dataset's own
 *            casts (etl_rows.c: the same code as the unload, the Criteo
 *            transform with the dataset's edges) into a shard in a scratch
 *            directory, each row's id kept in order as the COPY gave it
 *            (etl_predict_read).  The worker scores that shard through the
 *            path that scores a sweep's test split and hands each batch's
 *            ranked classes to a staging writer (etl_predict_stage_*), which
 *            fills <schema>.cds_predict_<token>_<k> by COPY FROM STDIN BINARY
 *            inside one transaction that also drops what an earlier attempt
 *            of the part left: a part's table holds one attempt, whole.
 *   finish   (any worker, once every part is done) one transaction creates
 *            the output table from the staging tables and drops them, so the
 *            output appears whole or not at all.  An output table that
 *            appeared since the plan is refused (kept) unless replace.
 *
 * A prediction that fails for good drops its staging tables
 * (etl_predict_discard).  Ids pass through untouched: the output's id
 * column has the source column's name and type (format_type), its values
 * the bytes the server sent. */
#ifndef CDS_ETL_PREDICT_H
#define CDS_ETL_PREDICT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "cds_err.h"
#include "etl_unload.h"

/* Row ids as COPY's binary format has them: per row a 4-byte big-endian
 * length, then the value's bytes. */
typedef struct etl_keys {
    uint8_t *buf;
    size_t len, cap;
    int64_t n;
} etl_keys;

int etl_keys_add(etl_keys *k, const uint8_t *data, int32_t len, cds_err *err);
void etl_keys_free(etl_keys *k);

#define ETL_PREDICT_MAX_PARTS 4096

typedef enum { ETL_PREDICT_CLASS, ETL_PREDICT_PROB, ETL_PREDICT_TOPK } etl_predict_type;

typedef struct etl_predict_spec {
    const char *dsn;        /* NULL or "": the dataset's database (its plan's DSN) */
    const char *table;      /* as written, or schema.table */
    char **features;        /* NULL: the dataset's feature columns, by name */
    size_t n_features;
    const char *id;         /* NULL: the table's primary key (one column) */
    const char *where;      /* the user's SQL filter, or NULL */
    const char *out_table;  /* table, or schema.table */
    int parts;              /* 0: the dataset's shard count (PostgreSQL), its segments (Greenplum) */
    etl_predict_type type;
    int k;                  /* top-k (TOPK), 1..classes */
    int replace;
    /* The model: its checkpoint (read by the workers) and what it is. */
    const char *ckpt;
    int classes;
    const char *sweep;
    int model, epoch;
} etl_predict_spec;

/* The plan of a prediction (see above), or NULL with one line naming what
 * does not match and the fix.  dataset_plan: the JSON plan of the dataset
 * the model trained on (its record's; a MADlib packed dataset is refused). */
json_t *etl_predict_plan(const etl_predict_spec *s, const json_t *dataset_plan, cds_err *err);
int etl_predict_parts(const json_t *plan);
/* The plan of part k alone (its task only), what the part's job carries; a
 * new reference, NULL when out of memory. */
json_t *etl_predict_part_plan(const json_t *plan, int k);
/* The plan without its tasks, what the finish job carries. */
json_t *etl_predict_finish_plan(const json_t *plan);

/* Part: the rows of a part plan (etl_predict_part_plan) into a shard under
 * scratch (its directory into shard_dir), the ids into keys (empty); *st
 * the rows and the COPY bytes read from the database. */
int etl_predict_read(const json_t *part_plan, const char *scratch, char *shard_dir, size_t n, etl_keys *keys,
                     etl_task_stats *st, cds_err *err);

/* The part's staging table: BEGIN, the table (re)made, COPY started. */
typedef struct etl_predict_stage etl_predict_stage;
etl_predict_stage *etl_predict_stage_begin(const json_t *part_plan, const etl_keys *keys, cds_err *err);
/* The next n rows, in the shard's order: top[n·k] ranked class ids and
 * top_prob[n·k] their probabilities (k: the plan's, 1 for CLASS and PROB),
 * probs[n·K] every class's for PROB (else NULL). */
int etl_predict_stage_rows(etl_predict_stage *s, int n, const int32_t *top, const double *top_prob,
                           const double *probs, cds_err *err);
/* Ends the COPY (every key given a row) and commits; frees s.  Before the
 * commit, under the prediction's advisory lock (shared), alive(ctx) says
 * whether the prediction still stands: 1 yes, 0 it failed for good
 * elsewhere (the part then rolls back and fails with *permanent 1), -1
 * could not tell (err set; rolled back, worth another try).  With
 * etl_predict_discard taking the lock alone after the failure is recorded,
 * no staging table outlives a failed prediction. */
typedef int (*etl_predict_alive_fn)(void *ctx, cds_err *err);
int etl_predict_stage_commit(etl_predict_stage *s, etl_predict_alive_fn alive, void *ctx, int *permanent,
                             cds_err *err);
/* Rolls back; frees s (NULL allowed). */
void etl_predict_stage_abort(etl_predict_stage *s);
/* What the plan asks per row: k ranked classes (1 but for TOPK), and K,
 * every class's probability (PROB), else 0. */
void etl_predict_shape(const json_t *plan, int *k, int *all);

/* Finish (the finish plan): 0 with the output's rows; -1 with err, and
 * *permanent 1 when trying again cannot help (the output table exists
 * without replace, a staging table is gone). */
int etl_predict_finish(const json_t *plan, int64_t *rows, int *permanent, cds_err *err);
/* Drops every staging table of the prediction that exists, holding its
 * advisory lock alone (so it waits for a part that is committing).  Record
 * the failure where alive() looks first. */
int etl_predict_discard(const json_t *plan, cds_err *err);

#endif
