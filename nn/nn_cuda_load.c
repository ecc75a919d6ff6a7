/* nn_cuda_load: the CUDA backend as a module, loaded the first time a
 * program asks for a GPU.
 *
 * The backend (nn/cuda/, over cuBLAS and cuDNN) is built as the shared
 * module libcds_nn_cuda.so instead of being linked into every program:
 * those libraries map a quarter of a gigabyte and cost a fifth of a second
 * at every start, which jobctl, cds-train on a CPU and every test paid for
 * nothing.  nn_backend_cuda() and nn_cuda_devices() load it once
 * (pthread_once), from the first of:
 *   1. $CDS_CUDA_MODULE, a path (a packed or installed tree that moved it);
 *   2. <the program's directory>/../nn/libcds_nn_cuda.so (the build tree:
 *      every program sits one directory below the root, the module in nn/);
 *   3. <the program's directory>/libcds_nn_cuda.so (beside the program);
 *   4. libcds_nn_cuda.so through the loader's own search (LD_LIBRARY_PATH).
 * What was loaded, or why nothing could be, is kept for the process: the
 * one state here, written once before anyone reads it (like the dynamic
 * loader's own), and what every device message quotes.
 *
 * A build without CUDA (NN_CUDA_MODULE undefined) loads nothing: no table,
 * and the reason says how to get one. */
#include "nn_backend.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct cuda_module {
    const nn_backend *table;
    int (*devices)(char *why, size_t why_len);
    char why[768]; /* why there is no table */
} cuda_module;

static pthread_once_t module_once = PTHREAD_ONCE_INIT;
static cuda_module module;

#ifdef NN_CUDA_MODULE
/* dlopen of path, or NULL with the loader's reason appended to tried. */
static void *try_open(const char *path, char *tried, size_t cap)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        size_t len = strlen(tried);
        snprintf(tried + len, cap - len, "%s%s", len ? "; " : "", e ? e : path);
    }
    return h;
}

static void *open_module(char *tried, size_t cap)
{
    const char *env = getenv("CDS_CUDA_MODULE");
    if (env && *env)
        return try_open(env, tried, cap);
    char exe[PATH_MAX], path[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            snprintf(path, sizeof path, "%s/../nn/%s", exe, NN_CUDA_MODULE);
            if (access(path, F_OK) == 0)
                return try_open(path, tried, cap);
            snprintf(path, sizeof path, "%s/%s", exe, NN_CUDA_MODULE);
            if (access(path, F_OK) == 0)
                return try_open(path, tried, cap);
        }
    }
    return try_open(NN_CUDA_MODULE, tried, cap);
}

static void load_module(void)
{
    char tried[600] = "";
    void *h = open_module(tried, sizeof tried);
    if (!h) {
        snprintf(module.why, sizeof module.why, "the CUDA backend module could not be loaded (%s): set "
                 "CDS_CUDA_MODULE to the path of %s", tried, NN_CUDA_MODULE);
        return;
    }
    const nn_backend *(*table)(void) = (const nn_backend *(*)(void))dlsym(h, "cds_cuda_module_table");
    int (*devices)(char *, size_t) = (int (*)(char *, size_t))dlsym(h, "cds_cuda_module_devices");
    if (!table || !devices) {
        snprintf(module.why, sizeof module.why, "%s is not this build's CUDA backend module (no entry points): "
                 "rebuild, or point CDS_CUDA_MODULE at the right one", NN_CUDA_MODULE);
        dlclose(h);
        return;
    }
    module.devices = devices;
    module.table = table(); /* the module stays loaded: the table lives in it */
}
#else
static void load_module(void)
{
    snprintf(module.why, sizeof module.why, "this build has no CUDA backend (rebuild with -Dcuda=enabled)");
}
#endif

const nn_backend *nn_backend_cuda(void)
{
    pthread_once(&module_once, load_module);
    return module.table;
}

int nn_cuda_devices(char *why, size_t why_len)
{
    char none[8];
    if (!why || !why_len)
        why = none, why_len = sizeof none;
    pthread_once(&module_once, load_module);
    if (!module.table) {
        snprintf(why, why_len, "%s", module.why);
        return -1;
    }
    why[0] = '\0';
    return module.devices(why, why_len);
}
