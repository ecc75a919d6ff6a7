/* nn_cuda: the smallest proof that the GPU link path works.
 *
 * The training engine will have a CUDA backend (cuBLAS for dense layers,
 * cuDNN for convolutions, NCCL for data-parallel all-reduce in ddp/).  Before
 * any of that exists we want a build that fails loudly when those libraries
 * cannot be found or linked, and a run-time check that tells an operator, in
 * one line, whether this machine can train on a GPU at all.  That is all this
 * module does:
 *
 *   nn_cuda_versions() asks the libraries for their versions.  It needs no
 *   device, so it works on a CI machine without a GPU and proves the binary
 *   really linked cudart, cuDNN and NCCL.
 *
 *   nn_cuda_probe() finds the first device, fills in its name, compute
 *   capability and memory, creates a cuBLAS handle, and runs one small kernel
 *   whose result is checked on the host.  With no device (or no driver) it
 *   returns -1 with a one-line error and never crashes, because "no GPU" is an
 *   ordinary situation: the CPU backend is then used.
 *
 * The header is plain C; the implementation is either nn_cuda_probe.cu
 * (compiled by nvcc when meson finds CUDA) or nn_cuda_none.c (built without
 * CUDA), both exporting the same C symbols. */
#ifndef NN_CUDA_H
#define NN_CUDA_H

#include <stddef.h>

/* nvcc compiles the .cu implementation as C++: keep every symbol, cds_errf
 * included, with C linkage so the C callers and common/ link against it. */
#ifdef __cplusplus
extern "C" {
#endif

#include "cds_err.h"

typedef struct nn_cuda_info {
    int device_count;      /* devices visible to this process */
    char name[256];        /* name of device 0, e.g. "NVIDIA H100 80GB HBM3" */
    int cc_major, cc_minor; /* compute capability of device 0 */
    size_t total_mem;      /* bytes of global memory on device 0 */
    int runtime_version;   /* cudaRuntimeGetVersion, e.g. 13000 */
    int driver_version;    /* cudaDriverGetVersion; 0 when there is no driver */
    int cublas_version;    /* cublasGetVersion, e.g. 130000; needs a device */
    size_t cudnn_version;  /* cudnnGetVersion, e.g. 91300 */
    int nccl_version;      /* ncclGetVersion, e.g. 22708 */
} nn_cuda_info;

/* Fills info (zeroing it first) with what the libraries report without a
 * device: runtime, driver (0 if none), cuDNN and NCCL versions.  Returns 0, or
 * -1 when built without CUDA (the fields are then left zero). */
int nn_cuda_versions(nn_cuda_info *info);

/* Fills info for device 0 and runs a small saxpy kernel, checking its result.
 * Returns 0, or -1 with a one-line message in err: no device, a failing CUDA
 * call, a wrong kernel result, or a build without CUDA. */
int nn_cuda_probe(nn_cuda_info *info, cds_err *err);

#ifdef __cplusplus
}
#endif

#endif
