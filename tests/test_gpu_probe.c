/* test_gpu_probe: the CUDA link path and, where there is a GPU, the device.
 *
 * The version checks need no device, so on a CI machine without a GPU they
 * still prove that the build linked cudart, cuDNN 9 and NCCL.  The device
 * checks run when nn_cuda_probe() finds a device (it has then already run a
 * saxpy kernel and compared its result on the host); without one they are
 * reported as TAP skips carrying the probe's one-line reason, so `meson test`
 * shows why they did not run instead of silently passing.
 *
 * NN_HAVE_CUDA is defined by tests/meson.build when nn/ was built with CUDA. */

#include <stdio.h>
#include <string.h>

#include "cds_err.h"
#include "nn_cuda.h"
#include "tap.h"

#define PLAN_VERSIONS 4
#define PLAN_PROBE 1
#define PLAN_DEVICE 6
#define PLAN (PLAN_VERSIONS + PLAN_PROBE + PLAN_DEVICE)

/* Reports the next count checks as skipped, keeping tap.h's counter right. */
static void skip(int count, const char *why)
{
    for (int i = 0; i < count; i++) {
        tap_global_state.n++;
        printf("ok %d # SKIP %s\n", tap_global_state.n, why);
    }
    fflush(stdout);
}

static int one_line(const char *s)
{
    return s[0] != '\0' && strchr(s, '\n') == NULL;
}

int main(void)
{
    /* The plan comes first: a crash inside the CUDA runtime then shows up as
     * missing tests rather than as a shorter, passing run. */
    printf("1..%d\n", PLAN);
    fflush(stdout);

    nn_cuda_info v;
    int vrc = nn_cuda_versions(&v);
#ifdef NN_HAVE_CUDA
    is_int(vrc, 0, "nn_cuda_versions succeeds without a device");
    is_int(v.cudnn_version / 10000, 9, "linked cuDNN major version is 9 (cudnnGetVersion = %zu)",
           v.cudnn_version);
    ok(v.nccl_version > 0, "linked NCCL reports a version (%d)", v.nccl_version);
    ok(v.runtime_version >= 12000, "CUDA runtime version %d", v.runtime_version);
#else
    is_int(vrc, -1, "nn_cuda_versions reports a build without CUDA");
    skip(PLAN_VERSIONS - 1, "built without CUDA");
#endif

    nn_cuda_info info;
    cds_err err = {0};
    int rc = nn_cuda_probe(&info, &err);
    if (rc != 0)
        tap_diag("nn_cuda_probe: %s", err.msg);

#ifdef NN_HAVE_CUDA
    const char *prefix = "no CUDA device: ";
#else
    const char *prefix = "built without CUDA: ";
#endif
    int no_device = rc != 0 && info.device_count == 0;
    ok(rc == 0 || (no_device && one_line(err.msg) && strncmp(err.msg, prefix, strlen(prefix)) == 0),
       "nn_cuda_probe succeeds or says in one line that there is no device");

    if (no_device) {
        char why[CDS_ERR_MAX];
        snprintf(why, sizeof why, "%s", err.msg);
        skip(PLAN_DEVICE, why);
    } else {
        is_int(rc, 0, "probe kernel (saxpy on 4096 floats) gives the exact result on %s",
               info.name);
        ok(info.device_count >= 1, "device count %d", info.device_count);
        ok(info.name[0] != '\0', "device 0 has a name");
        ok(info.cc_major >= 7, "compute capability %d.%d is one CUDA 13 supports",
           info.cc_major, info.cc_minor);
        ok(info.total_mem > 0, "device memory %zu bytes", info.total_mem);
        ok(info.cublas_version > 0, "cuBLAS version %d from a live handle", info.cublas_version);
    }

    if (tap_global_state.n != PLAN)
        printf("# planned %d checks but ran %d\n", PLAN, tap_global_state.n);
    return tap_global_state.failed || tap_global_state.n != PLAN ? 1 : 0;
}
