/* etl_queue: an unload as queue jobs (jobctl enqueue etl --spec FILE.json).
 *
 * Enqueueing plans the unload (one connection to the database, from where
 * jobctl runs), stores the plan once in the dataset record
 * <prefix>dataset:<name> (state "loading"; etl_dataset_record.h owns it), and creates one `etl.shard` job
 * per (split, shard) and an `etl.finish` job after all of them; the finish
 * job's id is the one to wait on (--after).  Workers run the shard jobs
 * (each reads through its own snapshot, recorded in its manifest) and the
 * finish job stamps the version, moves the dataset into place and sets the
 * record to "ready" with the version and rows per shard.  A shard job that
 * goes dead sets the record to "failed" with the reason.  Jobs carry only
 * the dataset name, the unload token and a task number: a job whose token no
 * longer matches the record (the dataset was enqueued again) fails for good. */
#ifndef CDS_ETL_QUEUE_H
#define CDS_ETL_QUEUE_H

#include <jansson.h>

#include "cds_err.h"
#include "cds_log.h"
#include "queue.h"

typedef struct etl_enqueued {
    char finish_id[QUEUE_ID_MAX];
    size_t n_shard_jobs;
    char dataset[160];
} etl_enqueued;

/* spec: the JSON spec.  queue_name may be NULL (the default queue). */
int etl_enqueue(queue_conn *q, const json_t *spec, const char *queue_name, int64_t priority, etl_enqueued *out,
                const cds_log *log, cds_err *err);

/* Worker side: run the payload of an etl.shard / etl.finish job.  A shard
 * job records its rows and what it cost (wall and CPU time, peak memory,
 * bytes of COPY data read: res:<split>:<k>) in the dataset record, and
 * returns them in *result (malloc'd JSON {"dataset", "split", "shard",
 * "rows", "res"}, for the job's result; NULL when it failed). */
int etl_run_shard_job(queue_conn *q, const char *payload, const cds_log *log, char **result, cds_err *err);
int etl_run_finish_job(queue_conn *q, const char *payload, const cds_log *log, cds_err *err);
/* Marks the dataset of a dead etl.* job failed, with the reason. */
int etl_mark_failed(queue_conn *q, const char *payload, const char *reason, cds_err *err);

#endif
