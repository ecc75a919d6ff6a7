/* nn_cuda_probe.cu: the CUDA implementation of nn_cuda.h.
 *
 * This file is compiled by nvcc (see nn/meson.build, which names the GPU
 * architectures explicitly) and linked, together with cudart, cuBLAS, cuDNN
 * and NCCL, into the static library nn_gpu.  Everything here exists to answer
 * two questions with as little machinery as possible:
 *
 *   1. Did the build really link the CUDA libraries?  nn_cuda_versions() asks
 *      each of them for its version; none of those calls needs a device.
 *
 *   2. Can this machine run a kernel?  nn_cuda_probe() looks for a device,
 *      describes it, creates a cuBLAS handle (the first call that really
 *      initialises cuBLAS on the device) and runs saxpy on a few thousand
 *      floats, comparing the result with the exact answer on the host.
 *
 * The inputs of the kernel are chosen so that every result is an integer below
 * 2^24 and therefore exact in float arithmetic: the check is an equality, not
 * a tolerance, and a wrong answer means a broken device, driver or build.
 *
 * No device is a normal outcome (CI machines, laptops): cudaGetDeviceCount then
 * fails or reports zero and we return -1 with one line saying so, after which
 * callers fall back to the CPU backend.  Nothing here prints or exits. */

#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cudnn.h>
#include <nccl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_cuda.h"

#define NN_PROBE_N 4096
#define NN_PROBE_A 2.0f

/* y[i] = a * x[i] + y[i], one thread per element. */
__global__ static void nn_saxpy_kernel(int n, float a, const float *x, float *y)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = a * x[i] + y[i];
}

extern "C" int nn_cuda_versions(nn_cuda_info *info)
{
    memset(info, 0, sizeof(*info));
    /* Neither call needs a device; both succeed with version 0 at worst. */
    if (cudaRuntimeGetVersion(&info->runtime_version) != cudaSuccess)
        info->runtime_version = 0;
    if (cudaDriverGetVersion(&info->driver_version) != cudaSuccess)
        info->driver_version = 0;
    info->cudnn_version = cudnnGetVersion();
    if (ncclGetVersion(&info->nccl_version) != ncclSuccess)
        info->nccl_version = 0;
    return 0;
}

/* Runs the saxpy kernel on device memory and checks the result on the host.
 * Frees whatever it allocated on every path. */
static int nn_probe_kernel(cds_err *err)
{
    float *hx = NULL, *hy = NULL, *dx = NULL, *dy = NULL;
    const size_t bytes = sizeof(float) * NN_PROBE_N;
    cudaError_t rc;
    int ret = -1;

    hx = (float *)malloc(bytes);
    hy = (float *)malloc(bytes);
    if (hx == NULL || hy == NULL) {
        cds_errf(err, "out of memory allocating %zu bytes for the probe kernel", 2 * bytes);
        goto out;
    }
    for (int i = 0; i < NN_PROBE_N; i++) {
        hx[i] = (float)i;
        hy[i] = 1.0f;
    }
    if ((rc = cudaMalloc((void **)&dx, bytes)) != cudaSuccess ||
        (rc = cudaMalloc((void **)&dy, bytes)) != cudaSuccess) {
        cds_errf(err, "cudaMalloc of %zu bytes failed: %s", bytes, cudaGetErrorString(rc));
        goto out;
    }
    if ((rc = cudaMemcpy(dx, hx, bytes, cudaMemcpyHostToDevice)) != cudaSuccess ||
        (rc = cudaMemcpy(dy, hy, bytes, cudaMemcpyHostToDevice)) != cudaSuccess) {
        cds_errf(err, "cudaMemcpy to the device failed: %s", cudaGetErrorString(rc));
        goto out;
    }
    nn_saxpy_kernel<<<(NN_PROBE_N + 255) / 256, 256>>>(NN_PROBE_N, NN_PROBE_A, dx, dy);
    if ((rc = cudaGetLastError()) != cudaSuccess) {
        cds_errf(err, "launching the probe kernel failed: %s (was the build compiled for "
                 "this GPU? reconfigure with -Dcuda-arch=sm_XX)", cudaGetErrorString(rc));
        goto out;
    }
    if ((rc = cudaDeviceSynchronize()) != cudaSuccess) {
        cds_errf(err, "the probe kernel failed: %s", cudaGetErrorString(rc));
        goto out;
    }
    if ((rc = cudaMemcpy(hy, dy, bytes, cudaMemcpyDeviceToHost)) != cudaSuccess) {
        cds_errf(err, "cudaMemcpy from the device failed: %s", cudaGetErrorString(rc));
        goto out;
    }
    for (int i = 0; i < NN_PROBE_N; i++) {
        float want = NN_PROBE_A * (float)i + 1.0f;
        if (hy[i] != want) {
            cds_errf(err, "the probe kernel computed a wrong result: y[%d] = %g, want %g "
                     "(faulty device or driver)", i, (double)hy[i], (double)want);
            goto out;
        }
    }
    ret = 0;
out:
    cudaFree(dx);
    cudaFree(dy);
    free(hx);
    free(hy);
    return ret;
}

extern "C" int nn_cuda_probe(nn_cuda_info *info, cds_err *err)
{
    cudaError_t rc;
    cudaDeviceProp prop;
    cublasHandle_t blas = NULL;
    cublasStatus_t bs;

    nn_cuda_versions(info);

    rc = cudaGetDeviceCount(&info->device_count);
    if (rc != cudaSuccess) {
        /* cudart reports a missing driver as "insufficient", which sends
         * people looking for an upgrade; say which of the two it is. */
        const char *hint = "";
        char old[96];
        if (rc == cudaErrorInsufficientDriver && info->driver_version == 0) {
            hint = "; no NVIDIA driver (libcuda.so.1) is installed";
        } else if (rc == cudaErrorInsufficientDriver) {
            snprintf(old, sizeof old, "; the driver supports CUDA %d.%d, update it",
                     info->driver_version / 1000, (info->driver_version % 1000) / 10);
            hint = old;
        }
        info->device_count = 0;
        return cds_errf(err, "no CUDA device: %s%s (the CPU backend will be used)",
                        cudaGetErrorString(rc), hint);
    }
    if (info->device_count <= 0) {
        info->device_count = 0;
        return cds_errf(err, "no CUDA device: the driver reports 0 devices "
                        "(the CPU backend will be used)");
    }

    if ((rc = cudaSetDevice(0)) != cudaSuccess)
        return cds_errf(err, "cudaSetDevice(0) failed: %s", cudaGetErrorString(rc));
    if ((rc = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess)
        return cds_errf(err, "cudaGetDeviceProperties(0) failed: %s", cudaGetErrorString(rc));
    snprintf(info->name, sizeof(info->name), "%s", prop.name);
    info->cc_major = prop.major;
    info->cc_minor = prop.minor;
    info->total_mem = prop.totalGlobalMem;

    if ((bs = cublasCreate(&blas)) != CUBLAS_STATUS_SUCCESS)
        return cds_errf(err, "cublasCreate failed on %s: %s", info->name,
                        cublasGetStatusString(bs));
    bs = cublasGetVersion(blas, &info->cublas_version);
    cublasDestroy(blas);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return cds_errf(err, "cublasGetVersion failed: %s", cublasGetStatusString(bs));

    if (nn_probe_kernel(err) != 0)
        return cds_err_wrap(err, "%s (sm_%d%d)", info->name, info->cc_major, info->cc_minor);
    return 0;
}

