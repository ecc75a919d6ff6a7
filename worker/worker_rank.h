/* worker_rank: what the worker and its rank processes agree on
 * (worker_rank.c runs a rank; worker_mop_gang.c starts and watches it).
 * Not a public interface. */
#ifndef CDS_WORKER_RANK_H
#define CDS_WORKER_RANK_H

#ifndef CDS_WORKER_INTERNAL
#error "worker_rank.h is private to worker/: include worker.h (a white-box test under tests/ adds c_args : worker_private_args)"
#endif

#include "queue_mop.h"
#include "worker.h"

/* A rank's exit status besides 0 (the epoch went through). */
enum {
    WORKER_RANK_BROKEN = 10, /* a collective failed: the worker ends the gang as a stall, if nobody has */
    WORKER_RANK_ENDED = 11,  /* the rank ended the gang itself, or found it gone: nothing left to do */
};

/* The barrier around rank 0's checkpoint and commit waits longer than a
 * collective: the others wait there while it writes. */
#define WORKER_RANK_COMMIT_TIMEOUT(timeout_ms) ((timeout_ms) * 6 > 60000 ? (timeout_ms) * 6 : 60000)

#endif
