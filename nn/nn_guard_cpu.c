/* nn_guard_cpu: keeps a CPU context's "device" buffers unreadable outside
 * the backend's calls (the guard build, -Dnn_guard=true).
 *
 * Every buffer is mapped as whole pages and listed; the list is
 * mprotect(PROT_NONE) except between nn_guard_open and nn_guard_close,
 * which wrap every entry of the CPU table.  A read or write of device
 * memory from anywhere else in the engine (a model, an optimiser, the
 * trainer, a caller holding a tensor's pointer) then faults at the line
 * that does it, which is the proof that nothing outside the backend touches
 * device data.  Two mprotect calls per buffer per op: slow, and never built
 * into a release.  A failing mprotect aborts: the guard is a test harness,
 * and a guard that silently stopped guarding would prove nothing. */
#include "nn_guard_cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct guarded {
    void *p;
    size_t size; /* whole pages */
} guarded;

struct nn_guard {
    guarded *v;
    size_t n, cap;
    int depth; /* open calls */
};

static size_t page_round(size_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return (bytes + page - 1) / page * page;
}

static void protect(const guarded *b, int prot)
{
    if (mprotect(b->p, b->size, prot) != 0) {
        perror("nn guard: mprotect");
        abort();
    }
}

nn_guard *nn_guard_new(void)
{
    return calloc(1, sizeof(nn_guard));
}

void nn_guard_free(nn_guard *g)
{
    if (!g)
        return;
    free(g->v);
    free(g);
}

void *nn_guard_alloc(nn_guard *g, size_t bytes)
{
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 16;
        guarded *v = realloc(g->v, cap * sizeof *v);
        if (!v)
            return NULL;
        g->v = v;
        g->cap = cap;
    }
    size_t size = page_round(bytes ? bytes : 1);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    g->v[g->n] = (guarded){p, size};
    if (g->depth == 0)
        protect(&g->v[g->n], PROT_NONE);
    g->n++;
    return p;
}

void nn_guard_release(nn_guard *g, void *p, size_t bytes)
{
    (void)bytes;
    for (size_t i = 0; i < g->n; i++)
        if (g->v[i].p == p) {
            munmap(p, g->v[i].size);
            g->v[i] = g->v[--g->n];
            return;
        }
    fprintf(stderr, "nn guard: freeing %p, which this context did not allocate\n", p);
    abort();
}

void nn_guard_open(nn_guard *g)
{
    if (g->depth++ == 0)
        for (size_t i = 0; i < g->n; i++)
            protect(&g->v[i], PROT_READ | PROT_WRITE);
}

void nn_guard_close(nn_guard *g)
{
    if (--g->depth == 0)
        for (size_t i = 0; i < g->n; i++)
            protect(&g->v[i], PROT_NONE);
}
