/* ddp_nccl: the communicator's NCCL transport (ddp_comm.h, ddp_int.h), for
 * ranks whose buffers live on a CUDA device.
 *
 * Join: rank 0 draws NCCL's unique id and publishes it as hex under the
 * gang's scope (queue_rdv_set, with an expiry of four time-outs); the other
 * ranks poll for it until the time-out.  Every rank then makes its
 * communicator with ncclCommInitRankConfig in non-blocking mode, so no
 * NCCL call waits: an operation is enqueued on the rank's own stream and
 * this file polls until the stream is done, NCCL reports an error, or the
 * time-out passes, in which case it calls ncclCommAbort (which is what frees
 * a rank whose peer died or stopped) and reports the collective failed.
 * Average is NCCL's own ncclAvg; the barrier is an all-reduce of one float
 * in a scratch word of device memory made at join.
 *
 * Built only with the CUDA option (meson: have_cuda); ddp_nccl_none.c
 * answers otherwise.  Not exercised beyond W = 1 on this project's
 * machines: NCCL refuses two ranks on one device. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "cds_util.h"
#include "ddp_int.h"

typedef struct nccl_rank {
    ncclComm_t comm;
    cudaStream_t stream;
    float *scratch; /* one float: the barrier's */
    int device;
    int64_t timeout_ms;
    int aborted;
} nccl_rank;

static void say_cuda(char *msg, size_t n, const char *what, cudaError_t e)
{
    snprintf(msg, n, "%s: %s (CUDA error %d)", what, cudaGetErrorString(e), (int)e);
}

static void say_nccl(nccl_rank *r, char *msg, size_t n, const char *what, ncclResult_t e)
{
    const char *last = r && r->comm ? ncclGetLastError(r->comm) : NULL;
    snprintf(msg, n, "%s (NCCL): %s%s%s", what, ncclGetErrorString(e), last && *last ? ": " : "", last ? last : "");
}

/* Waits until NCCL has finished what it was asked (the non-blocking
 * communicator's own state, then the stream), or fails: an error, or the
 * time-out, after which the communicator is aborted. */
static int wait_done(nccl_rank *r, const char *what, int64_t timeout_ms, int stream_too, char *msg, size_t n)
{
    int64_t start = cds_mono_ms();
    struct timespec nap = {.tv_sec = 0, .tv_nsec = 20000};
    for (;;) {
        ncclResult_t st = ncclSuccess;
        ncclResult_t rc = ncclCommGetAsyncError(r->comm, &st);
        if (rc != ncclSuccess || (st != ncclSuccess && st != ncclInProgress)) {
            say_nccl(r, msg, n, what, rc != ncclSuccess ? rc : st);
            break;
        }
        if (st == ncclSuccess) {
            if (!stream_too)
                return 0;
            cudaError_t q = cudaStreamQuery(r->stream);
            if (q == cudaSuccess)
                return 0;
            if (q != cudaErrorNotReady) {
                say_cuda(msg, n, what, q);
                break;
            }
        }
        if (cds_mono_ms() - start > timeout_ms) {
            snprintf(msg, n, "%s (NCCL): timed out after %lld ms (is every rank of the gang up?)", what,
                     (long long)timeout_ms);
            break;
        }
        nanosleep(&nap, NULL);
    }
    if (!r->aborted) {
        r->aborted = 1;
        ncclCommAbort(r->comm); /* frees what waits on this communicator */
        r->comm = NULL;
    }
    return -1;
}

static int nccl_allreduce(void *impl, float *buf, size_t n, int size, int avg, char *msg, size_t msg_n)
{
    (void)size;
    nccl_rank *r = impl;
    if (r->aborted)
        return snprintf(msg, msg_n, "all-reduce (NCCL): the communicator was aborted"), -1;
    ncclResult_t e = ncclAllReduce(buf, buf, n, ncclFloat, avg ? ncclAvg : ncclSum, r->comm, r->stream);
    if (e != ncclSuccess && e != ncclInProgress)
        return say_nccl(r, msg, msg_n, "all-reduce", e), -1;
    return wait_done(r, "all-reduce", r->timeout_ms, 1, msg, msg_n);
}

static int nccl_broadcast(void *impl, float *buf, size_t n, int root, char *msg, size_t msg_n)
{
    nccl_rank *r = impl;
    if (r->aborted)
        return snprintf(msg, msg_n, "broadcast (NCCL): the communicator was aborted"), -1;
    ncclResult_t e = ncclBroadcast(buf, buf, n, ncclFloat, root, r->comm, r->stream);
    if (e != ncclSuccess && e != ncclInProgress)
        return say_nccl(r, msg, msg_n, "broadcast", e), -1;
    return wait_done(r, "broadcast", r->timeout_ms, 1, msg, msg_n);
}

static int nccl_barrier(void *impl, int64_t timeout_ms, char *msg, size_t msg_n)
{
    nccl_rank *r = impl;
    if (r->aborted)
        return snprintf(msg, msg_n, "barrier (NCCL): the communicator was aborted"), -1;
    ncclResult_t e = ncclAllReduce(r->scratch, r->scratch, 1, ncclFloat, ncclSum, r->comm, r->stream);
    if (e != ncclSuccess && e != ncclInProgress)
        return say_nccl(r, msg, msg_n, "barrier", e), -1;
    return wait_done(r, "barrier", timeout_ms, 1, msg, msg_n);
}

static void nccl_abort(void *impl)
{
    nccl_rank *r = impl;
    if (r && r->comm && !r->aborted) {
        r->aborted = 1;
        ncclCommAbort(r->comm);
        r->comm = NULL;
    }
}

static void nccl_close(void *impl)
{
    nccl_rank *r = impl;
    if (!r)
        return;
    if (r->comm && !r->aborted)
        ncclCommDestroy(r->comm);
    if (r->scratch)
        cudaFree(r->scratch);
    if (r->stream)
        cudaStreamDestroy(r->stream);
    free(r);
}

static const ddp_transport nccl_transport = {
    .name = "nccl", .allreduce = nccl_allreduce, .broadcast = nccl_broadcast, .barrier = nccl_barrier,
    .abort = nccl_abort, .close = nccl_close,
};

/* Rank 0 publishes the unique id; the others poll for it. */
static int meet(const ddp_comm_opts *o, int64_t timeout_ms, ncclUniqueId *id, cds_err *err)
{
    char hex[2 * sizeof id->internal + 1];
    if (o->rank == 0) {
        ncclResult_t e = ncclGetUniqueId(id);
        if (e != ncclSuccess)
            return cds_errf(err, "rank 0 of %d, gang %s: ncclGetUniqueId: %s", o->size, o->scope,
                            ncclGetErrorString(e));
        for (size_t i = 0; i < sizeof id->internal; i++)
            snprintf(hex + 2 * i, 3, "%02x", (unsigned char)id->internal[i]);
        return queue_rdv_set(o->q, o->scope, "nccl_id", hex, strlen(hex), 4 * timeout_ms, err);
    }
    int64_t start = cds_mono_ms();
    for (;;) {
        void *data = NULL;
        size_t n = 0;
        int rc = queue_rdv_get(o->q, o->scope, "nccl_id", &data, &n, err);
        if (rc < 0)
            return -1;
        if (rc == 1) {
            int good = n == 2 * sizeof id->internal;
            for (size_t i = 0; good && i < sizeof id->internal; i++) {
                unsigned v;
                good = sscanf((const char *)data + 2 * i, "%2x", &v) == 1;
                id->internal[i] = (char)v;
            }
            free(data);
            if (!good)
                return cds_errf(err, "rank %d of %d, gang %s: the NCCL id rank 0 published is not %zu hex digits",
                                o->rank, o->size, o->scope, 2 * sizeof id->internal);
            return 0;
        }
        if (cds_mono_ms() - start > timeout_ms)
            return cds_errf(err, "rank %d of %d, gang %s: rank 0 published no NCCL id within %lld ms (is every rank "
                                 "of the gang up?)", o->rank, o->size, o->scope, (long long)timeout_ms);
        cds_sleep_ms(10);
    }
}

int ddp_comm_nccl(const ddp_comm_opts *o, ddp_comm **out, cds_err *err)
{
    *out = NULL;
    if (ddp_comm_check_opts(o, err) != 0)
        return -1;
    int64_t timeout = o->timeout_ms > 0 ? o->timeout_ms : DDP_DEFAULT_TIMEOUT_MS;
    int devices = 0;
    cudaError_t ce = cudaGetDeviceCount(&devices);
    if (ce != cudaSuccess || devices == 0)
        return cds_errf(err, "rank %d of %d: no CUDA device (%s): NCCL needs one; a CPU gang uses Gloo", o->rank,
                        o->size, ce != cudaSuccess ? cudaGetErrorString(ce) : "none visible");
    if (o->device < 0 || o->device >= devices)
        return cds_errf(err, "rank %d of %d: CUDA device %d does not exist: this machine has devices 0 to %d",
                        o->rank, o->size, o->device, devices - 1);
    ncclUniqueId id;
    if (meet(o, timeout, &id, err) != 0)
        return -1;
    nccl_rank *r = calloc(1, sizeof *r);
    if (!r)
        return cds_err_nomem(err, "out of memory for an NCCL rank");
    r->device = o->device;
    r->timeout_ms = timeout;
    char msg[CDS_ERR_MAX];
    if ((ce = cudaSetDevice(o->device)) != cudaSuccess ||
        (ce = cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (ce = cudaMalloc((void **)&r->scratch, sizeof(float))) != cudaSuccess) {
        say_cuda(msg, sizeof msg, "setting up the device", ce);
        nccl_close(r);
        return cds_errf(err, "rank %d of %d, gang %s: %s", o->rank, o->size, o->scope, msg);
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t e = ncclCommInitRankConfig(&r->comm, o->size, id, o->rank, &cfg);
    if ((e != ncclSuccess && e != ncclInProgress) ||
        (e == ncclInProgress && wait_done(r, "joining the gang", timeout, 0, msg, sizeof msg) != 0)) {
        if (e != ncclInProgress)
            say_nccl(r, msg, sizeof msg, "joining the gang", e);
        nccl_close(r);
        return cds_errf(err, "rank %d of %d, gang %s: %s", o->rank, o->size, o->scope, msg);
    }
    return ddp_comm_make(o, timeout, &nccl_transport, r, out, err);
}
