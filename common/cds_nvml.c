/* cds_nvml: see cds_nvml.h.
 *
 * The few NVML types used are declared here, as the NVML API reference
 * gives them (nvml.h is not needed to build, nor is the library to link):
 * nvmlReturn_t is an enum whose 0 is NVML_SUCCESS, nvmlDevice_t a pointer
 * to an opaque struct, nvmlUtilization_t {unsigned int gpu, memory} (in
 * percent), nvmlMemory_t {unsigned long long total, free, used} (bytes).
 * The _v2 entry points are the ones current drivers export (the plain
 * names are their older forms). */
#include "cds_nvml.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvml_ret; /* nvmlReturn_t */
#define NVML_OK 0
typedef struct nvml_device_st *nvml_device; /* nvmlDevice_t */
typedef struct nvml_utilization {
    unsigned int gpu, memory;
} nvml_utilization;
typedef struct nvml_memory {
    unsigned long long total, free, used;
} nvml_memory;

typedef struct nvml_api {
    nvml_ret (*init)(void);
    nvml_ret (*shutdown)(void);
    const char *(*error_string)(nvml_ret);
    nvml_ret (*by_index)(unsigned int, nvml_device *);
    nvml_ret (*by_uuid)(const char *, nvml_device *);
    nvml_ret (*utilization)(nvml_device, nvml_utilization *);
    nvml_ret (*memory)(nvml_device, nvml_memory *);
} nvml_api;

struct cds_nvml {
    void *lib;
    nvml_api f;
    nvml_device dev;
    char name[96];
    pthread_mutex_t mu; /* the tally */
    int64_t n, util_sum;
    uint64_t peak;
};

/* Which card cuda:N is: uuid[0] set, or *index. */
typedef struct which_card {
    char uuid[96];
    unsigned index;
} which_card;

/* The N-th entry of CUDA_VISIBLE_DEVICES (visible NULL: unset). */
static int which(const char *visible, int cuda_index, which_card *w, cds_err *err)
{
    memset(w, 0, sizeof *w);
    if (cuda_index < 0)
        return cds_errf(err, "NVML: cuda:%d is not a device: give cuda:0 or above", cuda_index);
    if (!visible) {
        w->index = (unsigned)cuda_index;
        return 0;
    }
    const char *p = visible;
    for (int k = 0; k < cuda_index && p; k++)
        p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL;
    size_t len = p ? strcspn(p, ",") : 0;
    if (len == 0)
        return cds_errf(err, "NVML: CUDA_VISIBLE_DEVICES=%.200s has no entry for cuda:%d: name the worker's card there",
                        visible, cuda_index);
    char entry[96];
    snprintf(entry, sizeof entry, "%.*s", (int)(len < sizeof entry - 1 ? len : sizeof entry - 1), p);
    char *end;
    unsigned long idx = strtoul(entry, &end, 10);
    if (end != entry && *end == '\0' && idx <= UINT32_MAX) {
        w->index = (unsigned)idx;
        return 0;
    }
    snprintf(w->uuid, sizeof w->uuid, "%s", entry);
    return 0;
}

/* One line: a loader's message may hold a newline. */
static void one_line(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '\r')
            *s = ' ';
}

static int load(cds_nvml *g, const char *library, cds_err *err)
{
    g->lib = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (!g->lib) {
        char why[CDS_ERR_MAX / 2];
        snprintf(why, sizeof why, "%s", dlerror() ?: "not found");
        one_line(why);
        return cds_errf(err, "NVML: cannot load %s (%s): install the NVIDIA driver, which ships it", library, why);
    }
    struct {
        const char *name;
        void **slot;
    } syms[] = {
        {"nvmlInit_v2", (void **)&g->f.init},
        {"nvmlShutdown", (void **)&g->f.shutdown},
        {"nvmlErrorString", (void **)&g->f.error_string},
        {"nvmlDeviceGetHandleByIndex_v2", (void **)&g->f.by_index},
        {"nvmlDeviceGetHandleByUUID", (void **)&g->f.by_uuid},
        {"nvmlDeviceGetUtilizationRates", (void **)&g->f.utilization},
        {"nvmlDeviceGetMemoryInfo", (void **)&g->f.memory},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++)
        if (!(*syms[i].slot = dlsym(g->lib, syms[i].name)))
            return cds_errf(err, "NVML: %s has no %s: the NVIDIA driver is too old, update it", library,
                            syms[i].name);
    return 0;
}

static const char *why(const cds_nvml *g, nvml_ret r)
{
    const char *s = g->f.error_string ? g->f.error_string(r) : NULL;
    return s ? s : "unknown NVML error";
}

static int find_device(cds_nvml *g, const which_card *w, int cuda_index, cds_err *err)
{
    nvml_ret r;
    if (w->uuid[0]) {
        snprintf(g->name, sizeof g->name, "%s", w->uuid);
        r = g->f.by_uuid(w->uuid, &g->dev);
    } else {
        snprintf(g->name, sizeof g->name, "NVML device %u", w->index);
        r = g->f.by_index(w->index, &g->dev);
    }
    if (r != NVML_OK)
        return cds_errf(err, "NVML has no %s for cuda:%d: %s (check CUDA_VISIBLE_DEVICES and nvidia-smi -L)", g->name,
                        cuda_index, why(g, r));
    return 0;
}

static void unload(cds_nvml *g, int initialised)
{
    if (initialised)
        g->f.shutdown();
    if (g->lib)
        dlclose(g->lib);
    free(g);
}

cds_nvml *cds_nvml_open_lib(const char *library, int cuda_index, const char *visible, cds_err *err)
{
    which_card w;
    if (which(visible, cuda_index, &w, err) != 0)
        return NULL;
    cds_nvml *g = calloc(1, sizeof *g);
    if (!g)
        return cds_err_nomem(err, "out of memory opening NVML"), NULL;
    if (load(g, library, err) != 0) {
        unload(g, 0);
        return NULL;
    }
    nvml_ret r = g->f.init();
    if (r != NVML_OK) {
        cds_errf(err, "NVML: nvmlInit_v2: %s (is the NVIDIA driver loaded? nvidia-smi says)", why(g, r));
        unload(g, 0);
        return NULL;
    }
    pthread_mutex_init(&g->mu, NULL);
    cds_nvml_sample s;
    if (find_device(g, &w, cuda_index, err) != 0 || cds_nvml_sample_now(g, &s, err) != 0) {
        pthread_mutex_destroy(&g->mu);
        unload(g, 1);
        return NULL;
    }
    return g;
}

cds_nvml *cds_nvml_open(int cuda_index, cds_err *err)
{
    return cds_nvml_open_lib(CDS_NVML_LIBRARY, cuda_index, getenv("CUDA_VISIBLE_DEVICES"), err);
}

void cds_nvml_close(cds_nvml *g)
{
    if (!g)
        return;
    pthread_mutex_destroy(&g->mu);
    unload(g, 1);
}

const char *cds_nvml_name(const cds_nvml *g) { return g->name; }

int cds_nvml_sample_now(cds_nvml *g, cds_nvml_sample *s, cds_err *err)
{
    nvml_utilization u;
    nvml_memory m;
    nvml_ret r = g->f.utilization(g->dev, &u);
    if (r == NVML_OK)
        r = g->f.memory(g->dev, &m);
    if (r != NVML_OK)
        return cds_errf(err, "NVML cannot sample %s: %s (MIG slices have no utilisation to read)", g->name,
                        why(g, r));
    s->util_pct = u.gpu > 100 ? 100 : u.gpu;
    s->mem_used = m.used;
    s->mem_total = m.total;
    pthread_mutex_lock(&g->mu);
    g->n++;
    g->util_sum += s->util_pct;
    if (s->mem_used > g->peak)
        g->peak = s->mem_used;
    pthread_mutex_unlock(&g->mu);
    return 0;
}

void cds_nvml_mark_start(cds_nvml *g, cds_nvml_mark *m)
{
    pthread_mutex_lock(&g->mu);
    m->n = g->n;
    m->util_sum = g->util_sum;
    g->peak = 0;
    pthread_mutex_unlock(&g->mu);
}

int cds_nvml_since(cds_nvml *g, const cds_nvml_mark *m, double *util_pct, uint64_t *mem_peak)
{
    pthread_mutex_lock(&g->mu);
    int64_t n = g->n - m->n, sum = g->util_sum - m->util_sum;
    uint64_t peak = g->peak;
    pthread_mutex_unlock(&g->mu);
    if (n <= 0)
        return 0;
    *util_pct = (double)sum / (double)n;
    *mem_peak = peak;
    return 1;
}
