/* test_cds_nvml: common/cds_nvml and the GPU fields of cds_res.
 *
 * Without the library, with a library that is not NVML, with a
 * CUDA_VISIBLE_DEVICES that has no entry for the device: cds_nvml_open
 * gives NULL and one line naming the cause.  Through fake_nvml (a stand-in
 * for libnvidia-ml.so.1, argv[1]): a device absent by index and found by
 * UUID, a driver that is not loaded, a card that cannot be sampled, and
 * the mean and peak that a cds_res mark reports of the samples taken while
 * it ran, and how cds_res_add_json sums them.  Then the real library: on a
 * machine without a GPU (or without the driver) one line and a skip of
 * the device checks; with one, a sample that makes sense.
 * usage: test_cds_nvml FAKE_NVML.so */
#include <dlfcn.h>
#include <math.h>
#include <string.h>

#include "cds_nvml.h"
#include "cds_res.h"
#include "tap.h"

typedef void (*fake_set_fn)(int init_error, int sample_error, unsigned util, unsigned long long used);

#define MIB (1024ull * 1024ull)

static int one_line(const cds_err *err) { return err->msg[0] && !strchr(err->msg, '\n'); }

static void absent(void)
{
    cds_err err = {0};
    cds_nvml *g = cds_nvml_open_lib("libcds-no-such-nvml.so.1", 0, NULL, &err);
    ok(!g && one_line(&err) && strstr(err.msg, "cannot load libcds-no-such-nvml.so.1") && strstr(err.msg, "driver"),
       "no library: NULL and one line naming it and the driver: %s", err.msg);
    g = cds_nvml_open_lib("libm.so.6", 0, NULL, &err);
    ok(!g && one_line(&err) && strstr(err.msg, "libm.so.6 has no nvmlInit_v2"),
       "a library that is not NVML: NULL, naming the entry point it lacks: %s", err.msg);
    g = cds_nvml_open_lib("libcds-no-such-nvml.so.1", 1, "GPU-a", &err);
    ok(!g && one_line(&err) && strstr(err.msg, "CUDA_VISIBLE_DEVICES=GPU-a has no entry for cuda:1"),
       "CUDA_VISIBLE_DEVICES without an entry for the device, before any loading: %s", err.msg);
}

static void through_fake(const char *lib, fake_set_fn set)
{
    cds_err err = {0};
    set(0, 0, 10, 100 * MIB);
    cds_nvml *g = cds_nvml_open_lib(lib, 1, NULL, &err);
    ok(!g && one_line(&err) && strstr(err.msg, "NVML has no NVML device 1 for cuda:1: Not Found"),
       "a device NVML does not have: %s", err.msg);
    g = cds_nvml_open_lib(lib, 0, "GPU-other", &err);
    ok(!g && strstr(err.msg, "NVML has no GPU-other for cuda:0"), "a UUID NVML does not have: %s", err.msg);
    set(9, 0, 10, 100 * MIB);
    g = cds_nvml_open_lib(lib, 0, NULL, &err);
    ok(!g && one_line(&err) && strstr(err.msg, "nvmlInit_v2: Driver Not Loaded"), "a driver not loaded: %s", err.msg);
    set(0, 3, 10, 100 * MIB);
    g = cds_nvml_open_lib(lib, 0, NULL, &err);
    ok(!g && one_line(&err) && strstr(err.msg, "NVML cannot sample NVML device 0: Not Supported"),
       "a card that cannot be sampled is refused at open: %s", err.msg);

    set(0, 0, 10, 100 * MIB);
    g = cds_nvml_open_lib(lib, 1, "5,GPU-fake-0", &err);
    ok(g && strcmp(cds_nvml_name(g), "GPU-fake-0") == 0, "cuda:1 is CUDA_VISIBLE_DEVICES's second entry, by UUID");
    cds_nvml_close(g);
    g = cds_nvml_open_lib(lib, 1, "2,0", &err);
    ok(g && strcmp(cds_nvml_name(g), "NVML device 0") == 0, "a number there is NVML's index");
    if (!g)
        return;

    cds_nvml_sample s;
    set(0, 0, 120, 512 * MIB);
    ok(cds_nvml_sample_now(g, &s, &err) == 0 && s.util_pct == 100 && s.mem_used == 512 * MIB &&
           s.mem_total == 80ull << 30,
       "a sample: utilisation (capped at 100), memory used and total");
    /* A mark: samples at 60% / 300 MiB, then the stop's at 40% / 200 MiB. */
    cds_res_mark m;
    cds_res_start(&m, g);
    set(0, 0, 60, 300 * MIB);
    cds_nvml_sample_now(g, &s, &err);
    set(0, 0, 40, 200 * MIB);
    cds_res_use u;
    cds_res_stop(&m, 7, &u);
    ok(u.gpu && fabs(u.gpu_util_pct - 50.0) < 1e-9 && fabs(u.gpu_mem_mb - 300.0) < 1e-9,
       "the mark's utilisation is the mean of the samples since its start, memory their peak (%.1f%%, %.1f MB)",
       u.gpu_util_pct, u.gpu_mem_mb);
    json_t *j = cds_res_json(&u);
    ok(fabs(json_number_value(json_object_get(j, "gpu_util_pct")) - 50.0) < 1e-9 &&
           fabs(json_number_value(json_object_get(j, "gpu_mem_mb")) - 300.0) < 1e-9,
       "cds_res_json has gpu_util_pct and gpu_mem_mb");
    json_decref(j);
    set(0, 15, 40, 200 * MIB);
    cds_res_start(&m, g);
    cds_res_stop(&m, 0, &u);
    j = cds_res_json(&u);
    ok(!u.gpu && !json_object_get(j, "gpu_util_pct") && !json_object_get(j, "gpu_mem_mb"),
       "no sample taken while it ran: no GPU fields, not zeros");
    json_decref(j);
    cds_nvml_close(g);
}

static void without_gpu_and_sums(void)
{
    cds_res_mark m;
    cds_res_use u;
    cds_res_start(&m, NULL);
    cds_res_stop(&m, 0, &u);
    json_t *j = cds_res_json(&u);
    ok(!u.gpu && j && !json_object_get(j, "gpu_util_pct") && !json_object_get(j, "gpu_mem_mb"),
       "without a handle: no GPU fields");
    json_decref(j);

    cds_res_use sum;
    memset(&sum, 0, sizeof sum);
    json_t *a = json_pack("{s:f, s:f, s:f, s:I, s:f, s:f}", "wall_s", 1.0, "cpu_s", 2.0, "peak_rss_mb", 10.0,
                          "bytes_read", (json_int_t)5, "gpu_util_pct", 90.0, "gpu_mem_mb", 100.0);
    json_t *b = json_pack("{s:f, s:f, s:f, s:I, s:f, s:f}", "wall_s", 3.0, "cpu_s", 1.0, "peak_rss_mb", 30.0,
                          "bytes_read", (json_int_t)6, "gpu_util_pct", 10.0, "gpu_mem_mb", 300.0);
    json_t *c = json_pack("{s:f, s:f, s:f, s:I}", "wall_s", 2.0, "cpu_s", 1.0, "peak_rss_mb", 20.0, "bytes_read",
                          (json_int_t)7);
    cds_res_add_json(&sum, a);
    cds_res_add_json(&sum, b);
    cds_res_add_json(&sum, c);
    cds_res_add_json(&sum, NULL);
    ok(fabs(sum.wall_s - 6.0) < 1e-9 && fabs(sum.cpu_s - 4.0) < 1e-9 && sum.bytes_read == 18 &&
           sum.peak_rss_kb == 30 * 1024 && sum.gpu && fabs(sum.gpu_util_pct - 30.0) < 1e-9 &&
           fabs(sum.gpu_mem_mb - 300.0) < 1e-9 && fabs(sum.gpu_wall_s - 4.0) < 1e-9,
       "a sum: times and bytes added, the highest peaks, utilisation weighted by the wall time of the records "
       "that have it (%.1f%%)", sum.gpu_util_pct);
    json_decref(a);
    json_decref(b);
    json_decref(c);
}

static void real_library(void)
{
    cds_err err = {0};
    cds_nvml *g = cds_nvml_open(0, &err);
    if (!g) {
        ok(one_line(&err) && strstr(err.msg, "NVML"), "the real NVML here: NULL and one line: %s", err.msg);
        tap_skip("no NVML device here (%s)", err.msg);
        return;
    }
    cds_nvml_sample s;
    ok(cds_nvml_sample_now(g, &s, &err) == 0 && s.util_pct <= 100 && s.mem_total > 0 && s.mem_used <= s.mem_total,
       "cuda:0 through the real NVML (%s): %u%%, %llu of %llu MiB", cds_nvml_name(g), s.util_pct,
       (unsigned long long)(s.mem_used / MIB), (unsigned long long)(s.mem_total / MIB));
    cds_nvml_close(g);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        tap_bail("usage: test_cds_nvml FAKE_NVML.so");
    absent();
    void *fake = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    fake_set_fn set = fake ? (fake_set_fn)dlsym(fake, "fake_nvml_set") : NULL;
    if (!set)
        tap_bail("cannot load the stand-in NVML library");
    through_fake(argv[1], set);
    dlclose(fake);
    without_gpu_and_sums();
    real_library();
    return tap_done();
}
