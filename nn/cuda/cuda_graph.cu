/* cuda_graph: a context's training steps as CUDA graphs, one per key.
 *
 * A training step whose shapes are fixed enqueues the same kernels, library
 * calls and pointers every time; launching them one by one costs the host a
 * few microseconds each, and between small kernels the GPU waits for the
 * next launch.  A graph launches the whole step at once.
 *
 * Keys.  The trainer names each step it wants graphed by a key: the batch
 * size and the device buffers its batch was staged into
 * (nn_model_stage_key).  Staging alternates between two buffers per
 * destination, so a pass of full batches has two keys.  A key's first step
 * runs eagerly (its warm-up: cuDNN measures its algorithms, workspaces
 * grow, cuBLAS makes its handle, none of which may happen inside a
 * capture); its second is captured (the ops enqueue into a graph on the
 * stream instead of running), instantiated and launched; every later step
 * is a replay: the ops enqueue nothing, the wrappers of the kernels with
 * per-step values (the optimisers' coefficients, dropout's seed, the step
 * number: kern_cuda.h's cuk_vars) gather those values, and the end of the
 * step copies them to the device and launches the graph.
 *
 * Invariants.
 *  - A graph holds device pointers: whenever the context frees or moves
 *    memory (a workspace grows, a staging buffer is remade, a buffer is
 *    freed) every graph is dropped; the keys stay seen, so the next step of
 *    a key is captured again.  Memory moved during a capture spoils it.
 *  - A replay runs the capture's ops: each op folds its call site and main
 *    arguments into a running hash, and a replay whose hash or per-step
 *    bytes differ from its capture's fails the context.  That is a bug, and
 *    it is reported, never replayed wrongly.
 *  - A spoiled capture (memory moved, the values block full, a copy to the
 *    host inside the step, CUDA invalidating the capture) fails the context:
 *    the step never ran, so the pass cannot be trusted.  The error names the
 *    train spec's "cuda_graphs": false as the way around it.
 *  - A failure never leaves the stream capturing: cug_end always ends a
 *    capture it began. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_graph.h"

#define GRAPH_KEYS 4 /* a pass's two parities, and room for a second batch size */

typedef struct graph_entry {
    uint64_t key;
    int seen;
    cudaGraphExec_t exec; /* NULL: not captured (or dropped) */
    uint64_t hash;        /* the capture's op hash */
    size_t used;          /* the capture's per-step bytes */
} graph_entry;

struct cug_cache {
    graph_entry keys[GRAPH_KEYS];
    cug_mode mode;
    graph_entry *cur;
    uint64_t hash;
    char spoiled[160]; /* why the step in progress cannot be used; "" when it can */
    unsigned char host[CUK_VARS_CAP];
    cuk_vars vars;
    long captured, replayed;
};

static uint64_t fold(uint64_t h, uint64_t v)
{
    return (h ^ v) * 0x100000001b3ull + (h >> 29);
}

cug_cache *cug_new(void)
{
    cug_cache *g = (cug_cache *)calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->vars.host = g->host;
    g->vars.cap = sizeof g->host;
    return g;
}

static void drop_all(cug_cache *g)
{
    for (int i = 0; i < GRAPH_KEYS; i++)
        if (g->keys[i].exec) {
            cudaGraphExecDestroy(g->keys[i].exec);
            g->keys[i].exec = NULL;
        }
}

void cug_free(cug_cache *g)
{
    if (!g)
        return;
    drop_all(g);
    if (g->vars.dev)
        cudaFree(g->vars.dev);
    free(g);
}

static graph_entry *entry_for(cug_cache *g, uint64_t key)
{
    for (int i = 0; i < GRAPH_KEYS; i++)
        if (g->keys[i].seen && g->keys[i].key == key)
            return &g->keys[i];
    for (int i = 0; i < GRAPH_KEYS; i++)
        if (!g->keys[i].seen) {
            g->keys[i].seen = 1;
            g->keys[i].key = key;
            return &g->keys[i]; /* first sight: the caller's step is the warm-up */
        }
    return NULL;
}

static void step_reset(cug_cache *g, cug_mode mode, graph_entry *e)
{
    g->mode = mode;
    g->cur = e;
    g->hash = 0xcbf29ce484222325ull;
    g->spoiled[0] = 0;
    g->vars.used = 0;
    g->vars.n = 0;
    g->vars.overflow = 0;
    g->vars.replay = mode == CUG_REPLAY;
}

cug_mode cug_begin(cug_cache *g, cudaStream_t s, uint64_t key, cudaError_t *e)
{
    *e = cudaSuccess;
    step_reset(g, CUG_EAGER, NULL);
    for (int i = 0; i < GRAPH_KEYS; i++)
        if (g->keys[i].seen && g->keys[i].key == key && g->keys[i].exec) {
            step_reset(g, CUG_REPLAY, &g->keys[i]);
            return CUG_REPLAY;
        }
    int seen = 0;
    for (int i = 0; i < GRAPH_KEYS; i++)
        seen |= g->keys[i].seen && g->keys[i].key == key;
    graph_entry *en = entry_for(g, key);
    if (!en || !seen)
        return CUG_EAGER; /* no room, or the warm-up */
    if (!g->vars.dev && (*e = cudaMalloc(&g->vars.dev, g->vars.cap)) != cudaSuccess) {
        g->vars.dev = NULL;
        return CUG_EAGER;
    }
    /* The warm-up's work done before the capture starts. */
    if ((*e = cudaStreamSynchronize(s)) != cudaSuccess ||
        (*e = cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed)) != cudaSuccess)
        return CUG_EAGER;
    step_reset(g, CUG_CAPTURE, en);
    return CUG_CAPTURE;
}

cug_mode cug_mode_now(const cug_cache *g)
{
    return g->mode;
}

int cug_op(cug_cache *g, unsigned site, uint64_t a, uint64_t b, int vars)
{
    if (g->mode == CUG_EAGER)
        return 0;
    g->hash = fold(fold(fold(g->hash, site), a), b);
    return g->mode == CUG_REPLAY && !vars;
}

cuk_vars *cug_vars(cug_cache *g)
{
    return g->mode == CUG_EAGER ? NULL : &g->vars;
}

void cug_spoil(cug_cache *g, const char *what)
{
    if (g->mode != CUG_EAGER && !g->spoiled[0])
        snprintf(g->spoiled, sizeof g->spoiled, "%s", what);
}

void cug_moved(cug_cache *g, const char *what)
{
    if (g->mode == CUG_EAGER)
        drop_all(g);
    else
        cug_spoil(g, what);
}

static int launch(cug_cache *g, cudaStream_t s, cudaGraphExec_t exec, char *why, size_t why_len)
{
    cudaError_t e = g->vars.used ? cuk_vars_set(s, &g->vars) : cudaSuccess;
    if (e == cudaSuccess)
        e = cudaGraphLaunch(exec, s);
    if (e != cudaSuccess) {
        snprintf(why, why_len, "launching a CUDA graph: %s", cudaGetErrorString(e));
        return -1;
    }
    return 0;
}

static int end_capture(cug_cache *g, cudaStream_t s, int ok, char *why, size_t why_len)
{
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(s, &graph);
    graph_entry *en = g->cur;
    if (e == cudaSuccess && !graph)
        e = cudaErrorStreamCaptureInvalidated;
    if (!ok) {
        if (graph)
            cudaGraphDestroy(graph);
        return -1;
    }
    if (e != cudaSuccess || g->spoiled[0] || g->vars.overflow) {
        if (graph)
            cudaGraphDestroy(graph);
        snprintf(why, why_len,
                 "a training step could not be captured as a CUDA graph (%s): set \"cuda_graphs\": false in the "
                 "train spec",
                 e != cudaSuccess ? cudaGetErrorString(e)
                 : g->spoiled[0]  ? g->spoiled
                                  : "its per-step values do not fit the graph's block");
        return -1;
    }
    cudaGraphExec_t exec = NULL;
    e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        snprintf(why, why_len, "instantiating a CUDA graph: %s: set \"cuda_graphs\": false in the train spec",
                 cudaGetErrorString(e));
        return -1;
    }
    en->exec = exec;
    en->hash = g->hash;
    en->used = g->vars.used;
    g->captured++;
    return launch(g, s, exec, why, why_len);
}

static int end_replay(cug_cache *g, cudaStream_t s, int ok, char *why, size_t why_len)
{
    const graph_entry *en = g->cur;
    if (!ok)
        return -1;
    if (g->spoiled[0] || g->hash != en->hash || g->vars.used != en->used) {
        snprintf(why, why_len,
                 "a replayed CUDA graph did not match its capture (%s): set \"cuda_graphs\": false in the train "
                 "spec and report it",
                 g->spoiled[0] ? g->spoiled : "the step's ops differ");
        return -1;
    }
    g->replayed++;
    return launch(g, s, en->exec, why, why_len);
}

int cug_end(cug_cache *g, cudaStream_t s, int ok, char *why, size_t why_len)
{
    why[0] = 0;
    cug_mode mode = g->mode;
    g->mode = CUG_EAGER;
    g->vars.replay = 0;
    if (mode == CUG_CAPTURE)
        return end_capture(g, s, ok, why, why_len);
    if (mode == CUG_REPLAY)
        return end_replay(g, s, ok, why, why_len);
    return ok ? 0 : -1;
}

void cug_counts(const cug_cache *g, long *captured, long *replayed)
{
    *captured = g->captured;
    *replayed = g->replayed;
}

/* ---- the per-step values' copy ---- */

typedef struct vars_bytes {
    unsigned char b[CUK_VARS_CAP];
} vars_bytes;

static __global__ void vars_set_k(unsigned char *dst, vars_bytes v, unsigned n)
{
    for (unsigned i = threadIdx.x; i < n; i += blockDim.x)
        dst[i] = v.b[i];
}

cudaError_t cuk_vars_set(cudaStream_t s, const cuk_vars *gv)
{
    vars_bytes v;
    memcpy(v.b, gv->host, gv->used);
    memset(v.b + gv->used, 0, sizeof v.b - gv->used);
    vars_set_k<<<1, 256, 0, s>>>(gv->dev, v, (unsigned)gv->used);
    return cudaGetLastError();
}
