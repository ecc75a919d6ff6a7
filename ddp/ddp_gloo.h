/* ddp_gloo: the C face of the one C++ file, ddp_gloo.cc, which wraps Gloo
 * (its TCP transport, a full mesh, float32 collectives).  Every call
 * catches every C++ exception and returns -1 with the message in msg
 * (msg_n bytes); none throws or exits.  The key-value store of the
 * rendezvous is the caller's, given as two callbacks (ddp_comm.c puts
 * them over Redis), so this file knows nothing of Redis or the project's
 * error type.  Private to ddp/. */
#ifndef CDS_DDP_GLOO_H
#define CDS_DDP_GLOO_H

#ifndef CDS_DDP_INTERNAL
#error "ddp_gloo.h is private to ddp/: include ddp_comm.h (a white-box test under tests/ adds c_args : ddp_private_args)"
#endif

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ddp_gloo ddp_gloo;

/* The rendezvous store.  set: 0, or -1 with msg.  get: 1 with *data
 * (malloc'd, the caller frees), 0 when the key is not there yet, -1 with
 * msg. */
typedef struct ddp_gloo_store {
    void *ctx;
    int (*set)(void *ctx, const char *key, const void *data, size_t n, char *msg, size_t msg_n);
    int (*get)(void *ctx, const char *key, void **data, size_t *n, char *msg, size_t msg_n);
} ddp_gloo_store;

/* Connects rank of size ranks in a full mesh: each publishes its address
 * through store and connects to the others', all within timeout_ms (also
 * the bound of every later collective).  addr: the address to listen on
 * and publish (NULL or "": iface's, else the host name's); iface: a network
 * interface (NULL or ""). */
int ddp_gloo_open(const ddp_gloo_store *store, int rank, int size, int64_t timeout_ms, const char *addr,
                  const char *iface, ddp_gloo **out, char *msg, size_t msg_n);
/* In place: buf (n floats) becomes the sum over the ranks. */
int ddp_gloo_allreduce_sum(ddp_gloo *g, float *buf, size_t n, char *msg, size_t msg_n);
/* In place: every rank's buf (n floats) becomes root's. */
int ddp_gloo_broadcast(ddp_gloo *g, float *buf, size_t n, int root, char *msg, size_t msg_n);
/* Returns once every rank has called it, or fails after timeout_ms. */
/* Every rank's send (bytes; each[r] of them from rank r) into recv, rank
 * after rank. */
int ddp_gloo_allgatherv(ddp_gloo *g, const void *send, size_t bytes, void *recv, const size_t *each, int size,
                        char *msg, size_t msg_n);
int ddp_gloo_barrier(ddp_gloo *g, int64_t timeout_ms, char *msg, size_t msg_n);
void ddp_gloo_close(ddp_gloo *g);

#ifdef __cplusplus
}
#endif

#endif
