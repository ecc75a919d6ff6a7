/* cuda_graph: the CUDA graphs of one context's training steps (private to
 * nn/cuda/; cuda_graph.cu says how they work). */
#ifndef CDS_NN_CUDA_GRAPH_H
#define CDS_NN_CUDA_GRAPH_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "kern_cuda.h"

typedef struct cug_cache cug_cache;

/* What the table's ops do during a step. */
typedef enum cug_mode {
    CUG_EAGER = 0,   /* run as always (no graph yet for this key, or none wanted) */
    CUG_CAPTURE = 1, /* enqueue into the graph being captured on the stream */
    CUG_REPLAY = 2   /* enqueue nothing: the step's graph holds the ops */
} cug_mode;

/* NULL when out of memory.  cug_free destroys the graphs: call it with the
 * context's device current and nothing of the graphs' still queued. */
cug_cache *cug_new(void);
void cug_free(cug_cache *g);

/* Starts a step named key on stream s: eager the first time the key is
 * seen, captured the second, replayed after that.  A CUDA error (the mode
 * is then CUG_EAGER) goes to *e. */
cug_mode cug_begin(cug_cache *g, cudaStream_t s, uint64_t key, cudaError_t *e);
cug_mode cug_mode_now(const cug_cache *g);

/* An op of the step, named by its call site and two of its arguments (its
 * main pointer and size): folded into the step's hash, which a replay must
 * match.  Returns 1 when the op must enqueue nothing (a replay) unless it
 * has per-step values (vars: it puts them and its kernel wrapper launches
 * nothing, kern_cuda.h). */
int cug_op(cug_cache *g, unsigned site, uint64_t a, uint64_t b, int vars);
/* The step's per-step values block, or NULL when the step is eager. */
cuk_vars *cug_vars(cug_cache *g);

/* Something a graphed step may not do happened (what: a line for the
 * error): a capture or replay in progress is spoiled. */
void cug_spoil(cug_cache *g, const char *what);
/* Device memory was freed or moved: a capture in progress is spoiled;
 * otherwise every graph is dropped (its pointers may be stale), and each
 * key is captured again the next time it comes. */
void cug_moved(cug_cache *g, const char *what);

/* Ends the step: launches its graph (after a capture or in a replay).
 * ok 0: the step failed on the host (its error is the caller's), nothing is
 * launched.  Returns 0, or -1 with why (empty when ok was 0). */
int cug_end(cug_cache *g, cudaStream_t s, int ok, char *why, size_t why_len);

/* Steps captured and replayed since the cache was made. */
void cug_counts(const cug_cache *g, long *captured, long *replayed);

#endif
