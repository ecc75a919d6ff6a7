/* ddp_nccl_none: ddp_comm_nccl in a build without CUDA (meson's cuda
 * option off, or no toolkit found): one line saying so. */
#include "ddp_int.h"

int ddp_comm_nccl(const ddp_comm_opts *o, ddp_comm **out, cds_err *err)
{
    *out = NULL;
    if (ddp_comm_check_opts(o, err) != 0)
        return -1;
    return cds_errf(err, "rank %d of %d: built without CUDA, so without NCCL: reconfigure with -Dcuda=enabled (a CPU "
                         "gang uses Gloo)", o->rank, o->size);
}
