/* ddp_int: what the communicator's transports share with ddp_comm.c.  A
 * transport is a table of calls on its own state (impl); ddp_comm.c wraps
 * it with the checks, the broken state and the messages of ddp_comm.h.
 * Gloo's is in ddp_comm.c, NCCL's in ddp_nccl.c.  Private to ddp/. */
#ifndef CDS_DDP_INT_H
#define CDS_DDP_INT_H

#ifndef CDS_DDP_INTERNAL
#error "ddp_int.h is private to ddp/: include ddp_comm.h (a white-box test under tests/ adds c_args : ddp_private_args)"
#endif

#include "ddp_comm.h"

/* Each call returns 0, or -1 with the cause in msg (n bytes). */
typedef struct ddp_transport {
    const char *name;
    /* buf becomes the sum over the size ranks, or the mean when avg. */
    int (*allreduce)(void *impl, float *buf, size_t n, int size, int avg, char *msg, size_t msg_n);
    int (*broadcast)(void *impl, float *buf, size_t n, int root, char *msg, size_t msg_n);
    /* Every rank's bytes (each[r] from rank r) into recv, in rank order;
     * NULL when the transport has none. */
    int (*allgatherv)(void *impl, const void *send, size_t bytes, void *recv, const size_t *each, int size, char *msg,
                      size_t msg_n);
    int (*barrier)(void *impl, int64_t timeout_ms, char *msg, size_t msg_n);
    /* allreduce and broadcast on device memory (NULL: a transport of host
     * buffers): they start after the work queued so far on `after` (the
     * cudaStream_t that wrote buf) and return when buf holds the result. */
    int (*allreduce_dev)(void *impl, float *buf, size_t n, int avg, void *after, char *msg, size_t msg_n);
    int (*broadcast_dev)(void *impl, float *buf, size_t n, int root, void *after, char *msg, size_t msg_n);
    void (*abort)(void *impl); /* may be NULL: nothing to interrupt */
    void (*close)(void *impl);
} ddp_transport;

/* The checks every join makes (rank, size, rendezvous). */
int ddp_comm_check_opts(const ddp_comm_opts *o, cds_err *err);
/* The communicator over a transport that joined; closes impl on failure. */
int ddp_comm_make(const ddp_comm_opts *o, int64_t timeout_ms, const ddp_transport *t, void *impl, ddp_comm **out,
                  cds_err *err);

#endif
