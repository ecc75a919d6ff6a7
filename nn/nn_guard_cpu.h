/* nn_guard_cpu: the guard build's list of a CPU context's buffers, kept
 * PROT_NONE except while a backend call runs (-Dnn_guard=true; see
 * nn_backend_cpu.c).  Private to the CPU backend. */
#ifndef CDS_NN_GUARD_CPU_H
#define CDS_NN_GUARD_CPU_H

#ifndef CDS_NN_INTERNAL
#error "nn_guard_cpu.h is private to nn/: include nn_model.h, nn_train.h, nn_ops.h and the other public nn headers (a white-box test under tests/ adds c_args : nn_private_args)"
#endif

#include <stddef.h>

typedef struct nn_guard nn_guard;

nn_guard *nn_guard_new(void);
void nn_guard_free(nn_guard *g);
/* Whole pages, zeroed, listed, and protected unless a call is open. */
void *nn_guard_alloc(nn_guard *g, size_t bytes);
void nn_guard_release(nn_guard *g, void *p, size_t bytes);
/* Around every backend call: opens every listed buffer, then closes them
 * again (calls may nest; the outermost one decides). */
void nn_guard_open(nn_guard *g);
void nn_guard_close(nn_guard *g);

#endif
