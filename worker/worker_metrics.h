/* worker_metrics: the Prometheus endpoint of --metrics-port
 * (worker_metrics.c).  Private to worker/. */
#ifndef CDS_WORKER_METRICS_H
#define CDS_WORKER_METRICS_H

#ifndef CDS_WORKER_INTERNAL
#error "worker_metrics.h is private to worker/: include worker.h (a white-box test under tests/ adds c_args : worker_private_args)"
#endif

#include "cds_err.h"

typedef struct worker worker;
typedef struct worker_metrics worker_metrics;

/* Binds cfg->metrics_port (nothing when 0) and starts serving; 0, or -1
 * with the line. */
int worker_metrics_start(worker *w, cds_err *err);
/* After w->done is set: waits for the thread and closes the port. */
void worker_metrics_stop(worker *w);

#endif
