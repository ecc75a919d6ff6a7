/* etl_unload: from a table in Greenplum or PostgreSQL to a sharded dataset.
 *
 * An unload has three phases, so that it can run in one process (cds-etl
 * unload) or as queue jobs spread over workers (jobctl enqueue etl):
 *
 *   plan     one connection: detect the server (Greenplum or PostgreSQL),
 *            resolve the table and columns and their types, decide the row
 *            layout (feature shape, dtype, label form), compute what every
 *            shard must agree on (text-label dictionary, Criteo bucket edges),
 *            and name the streams of each (split, shard).  The plan is plain
 *            JSON, so the queue can carry it to the workers.
 *   shards   each (split, shard) is unloaded by its COPY streams into a shard
 *            directory under the dataset's staging directory.
 *   finish   once every shard exists: the dataset version (SHA-256 over the
 *            checksums of every shard file) is stamped into each manifest, a
 *            dataset.json is written, and the staging directory is renamed to
 *            DATA_ROOT/datasets/<name> (replacing an old one only if asked).
 *
 * On PostgreSQL one process exports a snapshot and every stream reads through
 * it, so the shards are one consistent cut; on Greenplum (and for queue jobs)
 * each stream records its own snapshot point in the manifest. */
#ifndef CDS_ETL_UNLOAD_H
#define CDS_ETL_UNLOAD_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "cds_err.h"
#include "cds_log.h"
#include "etl_npy.h"

#define ETL_MAX_SHARDS 4096
#define ETL_MAX_CLASSES 1000000

/* What the user asked for: the options of cds-etl unload, or the JSON spec of
 * `jobctl enqueue etl` (same names, '-' written as '_'). */
typedef struct etl_spec {
    char *dsn;
    char *table;
    char **features;
    size_t n_features;
    char *label;
    char *dataset;
    int shards;
    char *data_root;
    char *valid_table;
    double valid_fraction;
    char *test_table;
    char *where;
    char *shard_key;
    etl_dtype dtype;
    int64_t feature_shape[ETL_NPY_MAX_DIMS];
    int feature_ndim;
    char *feature_encoding; /* "uint8" or "float32le", for bytea features */
    char *transform;        /* NULL or "criteo" */
    int jobs;
    int replace;
} etl_spec;

/* Reads a spec; errors name the JSON path ("$.shards: must be ..."). */
int etl_spec_from_json(const json_t *j, etl_spec *s, cds_err *err);
/* The spec as JSON; the DSN's password is removed. */
json_t *etl_spec_to_json(const etl_spec *s);
void etl_spec_free(etl_spec *s);
/* A DSN (URI or key=value) with any password removed, for logs and Redis. */
char *etl_dsn_redacted(const char *dsn);

typedef struct etl_plan etl_plan;

etl_plan *etl_plan_make(const etl_spec *s, const cds_log *log, cds_err *err);
json_t *etl_plan_to_json(const etl_plan *p);
etl_plan *etl_plan_from_json(const json_t *j, const char *dsn, cds_err *err);
void etl_plan_free(etl_plan *p);

/* The (split, shard) pairs of a plan, in order. */
size_t etl_plan_tasks(const etl_plan *p);
const char *etl_plan_task_split(const etl_plan *p, size_t i);
int etl_plan_task_shard(const etl_plan *p, size_t i);
const char *etl_plan_staging_dir(const etl_plan *p);
const char *etl_plan_dataset_dir(const etl_plan *p);

/* What a task did: the rows it wrote, and the bytes of COPY data it read
 * from the database (what the COPY parser was fed). */
typedef struct etl_task_stats {
    int64_t rows;
    int64_t bytes_read;
} etl_task_stats;

/* Unloads task i into the staging directory.  snapshot: an exported
 * snapshot id to read through, or NULL.  *st (may be NULL) gets what it
 * did, as far as it went on failure. */
int etl_unload_task(const etl_plan *p, size_t i, const char *snapshot, etl_task_stats *st, cds_err *err);
/* Runs every task with at most spec.jobs streams at once, through one
 * exported snapshot on PostgreSQL, then finishes the dataset. */
int etl_unload_all(const etl_plan *p, const cds_log *log, char version[65], cds_err *err);
/* Stamps the version and moves the staging directory into place. */
int etl_dataset_finish(const etl_plan *p, char version[65], cds_err *err);
/* Removes the staging directory (a failed unload). */
void etl_dataset_discard(const etl_plan *p);

#endif
