/* worker_mop: what the worker's loop (worker.c) asks of the MOP runner
 * (worker_mop*.c): a step on the main thread, and the lease renewal, the
 * progress and the reaper pass on the heartbeat thread.  Not a public
 * interface. */
#ifndef CDS_WORKER_MOP_H
#define CDS_WORKER_MOP_H

#ifndef CDS_WORKER_INTERNAL
#error "worker_mop.h is private to worker/: include worker.h (a white-box test under tests/ adds c_args : worker_private_args)"
#endif

#include "worker_int.h"

/* MOP (worker_mop.c): one sub-epoch on the worker's shard if some sweep has a
 * model for it: 1 when a visit ran (committed or not), 0 when there was
 * nothing to do, -1 on a Redis error. */
int worker_mop_step(worker *w);
/* Heartbeat thread: renews the MOP lease in hand and reaps expired ones. */
int worker_mop_beat(worker *w, queue_conn *q, cds_err *err);
/* Whether the visit in hand has progress that was never published: the
 * heartbeat then beats at once rather than at its next period, so a visit
 * shows its progress from its first batch. */
int worker_mop_progress_waiting(worker *w);
int worker_mop_reap(worker *w, queue_conn *q, cds_err *err);

#endif
