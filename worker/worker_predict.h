/* worker_predict: the runners of predict.part and predict.finish, and what
 * a dead one leaves to do (worker_predict.c), for worker_jobs.c's table. */
#ifndef CDS_WORKER_PREDICT_H
#define CDS_WORKER_PREDICT_H

#include "worker.h"

int worker_run_predict_part(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err);
int worker_run_predict_finish(worker_run_ctx *ctx, const queue_job *job, char **result, cds_err *err);
/* Drops the prediction's staging tables. */
void worker_predict_dead(queue_conn *q, const queue_job *job, const char *reason, const cds_log *log);

#endif
