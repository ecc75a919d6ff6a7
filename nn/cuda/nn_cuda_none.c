/* nn_cuda_none.c: nn_cuda.h for a build without CUDA.
 *
 * When meson does not find nvcc (or is told -Dcuda=disabled) this file stands
 * in for nn_cuda_probe.cu, so that tools and tests link the same way on every
 * machine and a missing GPU backend is reported as an ordinary error with the
 * fix in it, rather than as a missing symbol or a special case in callers. */

#include <stdio.h>
#include <string.h>

#include "nn_cuda.h"

int nn_cuda_versions(nn_cuda_info *info)
{
    memset(info, 0, sizeof(*info));
    return -1;
}

int nn_cuda_probe(nn_cuda_info *info, cds_err *err)
{
    memset(info, 0, sizeof(*info));
    return cds_errf(err, "built without CUDA: reconfigure with -Dcuda=enabled");
}

