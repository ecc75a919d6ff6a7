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
 * into a release.  A buffer of 2 MiB or more is aligned to 2 MiB and asked
 * for transparent huge pages, so mprotect changes one entry per 2 MiB
 * instead of one per 4 KiB page (a ResNet's arenas otherwise cost seconds
 * of page-table walks per step).  A failing mprotect aborts: the guard is a test harness,
 * and a guard that silently stopped guarding would prove nothing. */
#include "nn_guard_cpu.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct guarded {
    void *p;
    size_t size; /* whole pages */
} guarded;

/* The list and the depth are shared by every thread that calls the
 * backend (a data-parallel reducer copies a bucket out while backward runs
 * its ops), so both change under mu: the buffers open when the first call
 * enters and close when the last one leaves. */
struct nn_guard {
    pthread_mutex_t mu;
    guarded *v;
    size_t n, cap;
    int depth; /* open calls, over all threads */
};

#define HUGE_PAGE ((size_t)2 << 20)

static size_t round_up(size_t bytes, size_t unit)
{
    return (bytes + unit - 1) / unit * unit;
}

/* size bytes of zeroed pages, aligned to align (a power of two); NULL on failure. */
static void *map_aligned(size_t size, size_t align)
{
    size_t span = size + align;
    char *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    char *q = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
    if (q > p)
        munmap(p, (size_t)(q - p));
    if (q + size < p + span)
        munmap(q + size, (size_t)(p + span - (q + size)));
    return q;
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
    nn_guard *g = calloc(1, sizeof(nn_guard));
    if (g && pthread_mutex_init(&g->mu, NULL) != 0) {
        free(g);
        return NULL;
    }
    return g;
}

void nn_guard_free(nn_guard *g)
{
    if (!g)
        return;
    pthread_mutex_destroy(&g->mu);
    free(g->v);
    free(g);
}

static void *guard_alloc(nn_guard *g, size_t bytes)
{
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 16;
        guarded *v = realloc(g->v, cap * sizeof *v);
        if (!v)
            return NULL;
        g->v = v;
        g->cap = cap;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE), size;
    void *p;
    if (bytes >= HUGE_PAGE) {
        size = round_up(bytes, HUGE_PAGE);
        if ((p = map_aligned(size, HUGE_PAGE)))
            madvise(p, size, MADV_HUGEPAGE);
    } else {
        size = round_up(bytes ? bytes : 1, page);
        p = map_aligned(size, page);
    }
    if (!p)
        return NULL;
    g->v[g->n] = (guarded){p, size};
    if (g->depth == 0)
        protect(&g->v[g->n], PROT_NONE);
    g->n++;
    return p;
}

void *nn_guard_alloc(nn_guard *g, size_t bytes)
{
    pthread_mutex_lock(&g->mu);
    void *p = guard_alloc(g, bytes);
    pthread_mutex_unlock(&g->mu);
    return p;
}

void nn_guard_release(nn_guard *g, void *p, size_t bytes)
{
    (void)bytes;
    pthread_mutex_lock(&g->mu);
    for (size_t i = 0; i < g->n; i++)
        if (g->v[i].p == p) {
            munmap(p, g->v[i].size);
            g->v[i] = g->v[--g->n];
            pthread_mutex_unlock(&g->mu);
            return;
        }
    fprintf(stderr, "nn guard: freeing %p, which this context did not allocate\n", p);
    abort();
}

void nn_guard_open(nn_guard *g)
{
    pthread_mutex_lock(&g->mu);
    if (g->depth++ == 0)
        for (size_t i = 0; i < g->n; i++)
            protect(&g->v[i], PROT_READ | PROT_WRITE);
    pthread_mutex_unlock(&g->mu);
}

void nn_guard_close(nn_guard *g)
{
    pthread_mutex_lock(&g->mu);
    if (--g->depth == 0)
        for (size_t i = 0; i < g->n; i++)
            protect(&g->v[i], PROT_NONE);
    pthread_mutex_unlock(&g->mu);
}
