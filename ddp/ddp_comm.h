/* ddp_comm: the communicator of a data-parallel gang (DESIGN.md §6).
 *
 * One interface over the collectives the trainer needs: all-reduce of
 * float32 in place (sum or average), broadcast, barrier; abort and destroy.
 * Gloo over TCP serves CPUs (ddp_comm_gloo: buffers in host memory); NCCL
 * serves GPUs behind the same calls (ddp_comm_nccl: buffers in device
 * memory).  Ranks find each other
 * through rendezvous keys in Redis (queue_rdv_set/get) under a scope that
 * names one attempt of one gang, so a restarted gang never meets the
 * addresses of an earlier one.  Every call returns 0, or -1 with a message
 * naming the collective and the fix; none exits.  Every collective is
 * bounded by the time-out given at init: a rank that was killed fails the
 * others' call at once, one that is stopped fails it at the time-out.  A
 * communicator that failed once is broken (its peers may be anywhere in
 * their sequence of calls): every later call fails at once, and the gang
 * starts again with a new scope. */
#ifndef CDS_DDP_COMM_H
#define CDS_DDP_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "cds_err.h"
#include "queue.h"

typedef struct ddp_comm ddp_comm;

typedef enum { DDP_SUM, DDP_AVG } ddp_op;

#define DDP_DEFAULT_TIMEOUT_MS 10000
/* The largest model a gang trains: every rank keeps a host copy of each
 * bucket, tensor or model it shares, besides Gloo's own buffers, and each
 * collective must end within the time-out; jobctl refuses a DDP or MA
 * sweep with a bigger model. */
#define DDP_MAX_MODEL_BYTES ((size_t)2 << 30)

typedef struct ddp_comm_opts {
    queue_conn *q;      /* the rendezvous goes through it (used during init only) */
    const char *scope;  /* the gang attempt's rendezvous scope (queue_rdv_set) */
    int rank, size;     /* 0 <= rank < size */
    int64_t timeout_ms; /* the rendezvous and every collective (0: DDP_DEFAULT_TIMEOUT_MS) */
    const char *addr;   /* the address to listen on and publish (NULL: iface's, else the host name's) */
    const char *iface;  /* a network interface to take the address from (NULL: none) */
    int device;         /* NCCL: the CUDA device of this rank */
    const char *host;   /* this rank's host name as the gang compares them (NULL: gethostname) */
} ddp_comm_opts;

/* Joins the gang over Gloo's TCP transport.  A process whose SIGPIPE takes
 * the default action is switched to ignoring it (Gloo writes to sockets a
 * dead peer closed; the collective then fails instead of the process).  The
 * ranks first compare their host names through the rendezvous: a gang
 * across hosts refuses, in one line, a rank that would listen on a loopback
 * address. */
int ddp_comm_gloo(const ddp_comm_opts *o, ddp_comm **out, cds_err *err);
/* Joins the gang over NCCL on CUDA device o->device: rank 0 publishes
 * NCCL's unique id (hex) under the scope, the others read it; the
 * communicator is made non-blocking, so the join and every collective are
 * bounded by the time-out, after which ncclCommAbort frees the ranks that
 * wait.  The calls below take host buffers as for Gloo (staged through
 * device memory of the communicator's own); ddp_allreduce_device and
 * ddp_broadcast_device reduce device memory in place, with no copy to the
 * host.  A gang of one (size 1) needs no rendezvous (q may be NULL).  Built
 * without CUDA, or on a machine without a device, it fails with one line
 * saying so.  NCCL refuses two ranks on one device: a machine with one GPU
 * runs W = 1 only. */
int ddp_comm_nccl(const ddp_comm_opts *o, ddp_comm **out, cds_err *err);

int ddp_comm_rank(const ddp_comm *c);
int ddp_comm_size(const ddp_comm *c);
/* 1 when the communicator reduces device memory itself (NCCL): a model on
 * a CUDA device hands it its gradient block with ddp_allreduce_device. */
int ddp_comm_on_device(const ddp_comm *c);
/* buf (n floats, host memory) becomes the sum, or the mean, over the
 * ranks; every rank gets the same bits. */
int ddp_allreduce(ddp_comm *c, float *buf, size_t n, ddp_op op, cds_err *err);
/* Every rank's buf (n floats) becomes root's. */
int ddp_broadcast(ddp_comm *c, float *buf, size_t n, int root, cds_err *err);
/* The same two on device memory of the communicator's device, for a
 * communicator on device (ddp_comm_on_device): the collective waits for
 * the work queued so far on `after` (the cudaStream_t that writes buf, an
 * nn_ctx's stream) and returns when buf holds the result. */
int ddp_allreduce_device(ddp_comm *c, float *buf, size_t n, ddp_op op, void *after, cds_err *err);
int ddp_broadcast_device(ddp_comm *c, float *buf, size_t n, int root, void *after, cds_err *err);
/* Every rank's bytes, each[r] of them from rank r (every rank passes the
 * same each[], its own entry being bytes), into recv (Σ each bytes, host
 * memory), in rank order: a gang's row-sparse gradients. */
int ddp_allgatherv(ddp_comm *c, const void *send, size_t bytes, void *recv, const size_t *each, cds_err *err);
/* Every rank's `mine` into all[0..size): the sizes an all-gather needs. */
int ddp_allgather_sizes(ddp_comm *c, size_t mine, size_t *all, cds_err *err);
/* Returns once every rank called it; timeout_ms (0: the communicator's)
 * may be longer than the collectives' own, for a rank that checkpoints
 * while the others wait. */
int ddp_barrier(ddp_comm *c, int64_t timeout_ms, cds_err *err);
/* Marks the communicator broken: every later call fails at once.  NCCL's
 * communicator is aborted (ncclCommAbort); Gloo cannot interrupt a call in
 * flight (the worker bounds that by running the rank in a child process it
 * can kill). */
void ddp_comm_abort(ddp_comm *c);
void ddp_comm_destroy(ddp_comm *c);

#endif
