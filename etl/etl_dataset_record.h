/* etl_dataset_record: the dataset record <prefix>dataset:<name>, its one
 * owner.  Every reader and writer of the record goes through here, so its
 * fields are spelled, and their missing values decided, in one place.
 *
 * Written by an unload enqueued as queue jobs (etl_queue.c): "loading" with
 * the unload's token and plan when it is enqueued; rows:<split>:<k> and
 * res:<split>:<k> as each shard is unloaded; "ready" with the version and
 * the splits when the finish job has moved the dataset into place;
 * "failed" with the reason when one of its jobs goes dead.  Read by jobctl
 * (a sweep pins the version and the train split's shard count), by the
 * worker (a sweep created while its dataset was loading is pinned once it
 * is ready; an evaluation's cds_results row goes to the database the plan
 * names) and by the ETL jobs themselves (the plan).
 *
 * Fields, all strings as Redis holds them (docs/redis-keys.md):
 *   state       loading | ready | failed
 *   token       the current unload; a job of another token is obsolete
 *   plan        the plan as JSON (its spec.dsn has no password)
 *   spec        the ETL spec as JSON
 *   shards      shards per split that the spec asked for
 *   version     "" until ready, then the dataset version (64 hex digits)
 *   error       "" unless failed: the reason
 *   splits      once ready: {"<split>": {"shards", "rows", "rows_per_shard"}}
 *   finish_job  the id of the etl.finish job (jobctl wait --after)
 *   rows:<split>:<k>  the rows of each shard unloaded so far
 *   res:<split>:<k>   what unloading it cost the worker that did (JSON of
 *                     common/cds_res.h: wall_s, cpu_s, peak_rss_mb,
 *                     bytes_read of COPY data, peak_reset); absent from a
 *                     record written before it was recorded
 * A record written by hand (tests, repairs) may lack any field: a missing
 * string reads as "", a missing number as 0, a missing plan as none. */
#ifndef CDS_ETL_DATASET_RECORD_H
#define CDS_ETL_DATASET_RECORD_H

#include <stdint.h>

#include <jansson.h>

#include "cds_err.h"
#include "queue.h"

typedef enum {
    ETL_DATASET_LOADING,
    ETL_DATASET_READY,
    ETL_DATASET_FAILED,
    ETL_DATASET_OTHER /* missing or unknown: the record was not written by an unload */
} etl_dataset_state;

typedef struct etl_dataset_record {
    etl_dataset_state state;
    /* Owned copies ("" when the field is missing; plan NULL then). */
    char *state_text; /* as recorded, for messages */
    char *token, *version, *error, *finish_job;
    char *plan; /* the plan's JSON text */
    int shards;       /* shards per split the spec asked for (0: none or not a count) */
    int train_shards; /* the train split's shards once ready ("splits"), else shards */
} etl_dataset_record;

/* Reads the record of dataset `name`: 0, QUEUE_NOT_FOUND (no such record:
 * err says which key under which prefix) or -1 (Redis failed), with *r
 * zeroed on every path but 0.  Free with etl_dataset_record_free. */
int etl_dataset_record_read(queue_conn *q, const char *name, etl_dataset_record *r, cds_err *err);
void etl_dataset_record_free(etl_dataset_record *r);

/* The DSN of the record's plan (spec.dsn, "" when the plan names none: the
 * reader's libpq defaults), malloc'd in *dsn, as the plan holds it (without
 * a password).  1 with *dsn NULL: the record holds no plan (a dataset made by
 * `cds-etl unload`, or a record written by hand).  -1 with *dsn NULL and why
 * saying what is wrong: the plan is not JSON, or its spec.dsn is not a
 * conninfo libpq can parse (such a record is mended by unloading again). */
int etl_dataset_record_plan_dsn(const etl_dataset_record *r, char **dsn, cds_err *why);

/* Writers (etl_queue.c).  Each is one HSET, so a reader sees a field's old
 * value or its new one. */
/* A new unload: state loading, its token and plan (JSON; its spec and the
 * spec's shards are copied out), no version, no error. */
int etl_dataset_record_loading(queue_conn *q, const char *name, const char *token, const json_t *plan,
                               cds_err *err);
int etl_dataset_record_finish_job(queue_conn *q, const char *name, const char *job_id, cds_err *err);
/* A shard unloaded: its rows, and what it cost (res, cds_res_json's
 * object; NULL: none), in one HSET. */
int etl_dataset_record_shard_rows(queue_conn *q, const char *name, const char *split, int shard, int64_t rows,
                                  const json_t *res, cds_err *err);
/* splits: the "splits" object of dataset.json (NULL: null). */
int etl_dataset_record_ready(queue_conn *q, const char *name, const char *version, const json_t *splits,
                             cds_err *err);
/* State failed with the reason, only while token is the record's own (a job
 * of an unload enqueued again since marks nothing); 0 when nothing was
 * marked for that reason, or no such record. */
int etl_dataset_record_failed(queue_conn *q, const char *name, const char *token, const char *reason,
                              cds_err *err);

#endif
