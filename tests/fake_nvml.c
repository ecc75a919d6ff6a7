/* fake_nvml: a stand-in for libnvidia-ml.so.1 that test_cds_nvml loads
 * through cds_nvml_open_lib, so the paths past dlopen (the entry points,
 * the device by index and by UUID, samples, errors) run on a machine with
 * no GPU.  One card: index 0, UUID GPU-fake-0.  The test sets what it
 * reports through fake_nvml_set (found with dlsym on the same handle): the
 * NVML library's own state is process-wide, and so is this one's.  The
 * return codes are NVML's: 0 success, 3 not supported, 6 not found, 9
 * driver not loaded. */
#include <string.h>

typedef struct fake_device *fake_handle;
typedef struct {
    unsigned int gpu, memory;
} fake_util;
typedef struct {
    unsigned long long total, free, used;
} fake_mem;

static struct fake_device {
    int init_error, sample_error;
    unsigned util;
    unsigned long long used;
} card;

void fake_nvml_set(int init_error, int sample_error, unsigned util, unsigned long long used)
{
    card = (struct fake_device){init_error, sample_error, util, used};
}

int nvmlInit_v2(void) { return card.init_error; }
int nvmlShutdown(void) { return 0; }

const char *nvmlErrorString(int r)
{
    return r == 3 ? "Not Supported" : r == 6 ? "Not Found" : r == 9 ? "Driver Not Loaded" : "Unknown Error";
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, fake_handle *d)
{
    if (index != 0)
        return 6;
    *d = &card;
    return 0;
}

int nvmlDeviceGetHandleByUUID(const char *uuid, fake_handle *d)
{
    if (strcmp(uuid, "GPU-fake-0") != 0)
        return 6;
    *d = &card;
    return 0;
}

int nvmlDeviceGetUtilizationRates(fake_handle d, fake_util *u)
{
    if (d->sample_error)
        return d->sample_error;
    *u = (fake_util){d->util, d->util / 2};
    return 0;
}

int nvmlDeviceGetMemoryInfo(fake_handle d, fake_mem *m)
{
    unsigned long long total = 80ull << 30;
    *m = (fake_mem){total, total - d->used, d->used};
    return d->sample_error;
}
