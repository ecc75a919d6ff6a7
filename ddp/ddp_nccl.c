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
 * Buffers.  The *_dev calls reduce device memory in place: a model on the
 * GPU hands its gradient block straight over (ddp_reducer), after the
 * rank's stream was made to wait, by an event, for the work queued so far
 * on the stream that writes the buffer, so the gradients are final when
 * NCCL reads them.  The host-buffer calls (metrics, model-averaging
 * states, a sparse embedding's rows) go through a device staging area of
 * the rank's own that grows to the largest message; all-gather of unequal
 * sizes is one NCCL broadcast per rank into its slot, in one group.
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
#include "nn_backend.h"

typedef struct nccl_rank {
    ncclComm_t comm;
    cudaStream_t stream;
    cudaEvent_t ready;  /* recorded on a producer's stream, waited for by ours */
    float *scratch; /* one float: the barrier's */
    void *stage;    /* device copy of host buffers */
    size_t stage_bytes;
    int device, rank;
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
            cudaGetLastError(); /* "not ready" must not stay the thread's last error for a kernel launch to report */
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

static int refuse_aborted(nccl_rank *r, const char *what, char *msg, size_t msg_n)
{
    if (!r->aborted)
        return 0;
    snprintf(msg, msg_n, "%s (NCCL): the communicator was aborted", what);
    return -1;
}

/* Our stream waits for what is queued so far on `after`.  The calling
 * thread (a reducer's) is made to use our device first: CUDA's current
 * device is per thread. */
static int wait_for(nccl_rank *r, void *after, const char *what, char *msg, size_t msg_n)
{
    cudaError_t e;
    if ((e = cudaSetDevice(r->device)) != cudaSuccess)
        return say_cuda(msg, msg_n, what, e), -1;
    if (!after)
        return 0;
    if ((e = cudaEventRecord(r->ready, (cudaStream_t)after)) != cudaSuccess ||
        (e = cudaStreamWaitEvent(r->stream, r->ready, 0)) != cudaSuccess)
        return say_cuda(msg, msg_n, what, e), -1;
    return 0;
}

static int nccl_allreduce_dev(void *impl, float *buf, size_t n, int avg, void *after, char *msg, size_t msg_n)
{
    nccl_rank *r = impl;
    if (refuse_aborted(r, "all-reduce", msg, msg_n) || wait_for(r, after, "all-reduce", msg, msg_n))
        return -1;
    ncclResult_t e = ncclAllReduce(buf, buf, n, ncclFloat, avg ? ncclAvg : ncclSum, r->comm, r->stream);
    if (e != ncclSuccess && e != ncclInProgress)
        return say_nccl(r, msg, msg_n, "all-reduce", e), -1;
    return wait_done(r, "all-reduce", r->timeout_ms, 1, msg, msg_n);
}

static int nccl_broadcast_dev(void *impl, float *buf, size_t n, int root, void *after, char *msg, size_t msg_n)
{
    nccl_rank *r = impl;
    if (refuse_aborted(r, "broadcast", msg, msg_n) || wait_for(r, after, "broadcast", msg, msg_n))
        return -1;
    ncclResult_t e = ncclBroadcast(buf, buf, n, ncclFloat, root, r->comm, r->stream);
    if (e != ncclSuccess && e != ncclInProgress)
        return say_nccl(r, msg, msg_n, "broadcast", e), -1;
    return wait_done(r, "broadcast", r->timeout_ms, 1, msg, msg_n);
}

/* The staging area, at least bytes long. */
static int stage_room(nccl_rank *r, size_t bytes, char *msg, size_t msg_n)
{
    if (bytes <= r->stage_bytes)
        return 0;
    cudaError_t e;
    if (r->stage && (e = cudaFree(r->stage)) != cudaSuccess)
        return say_cuda(msg, msg_n, "freeing the staging area", e), -1;
    r->stage = NULL;
    r->stage_bytes = 0;
    if ((e = cudaMalloc(&r->stage, bytes)) != cudaSuccess)
        return say_cuda(msg, msg_n, "a device staging area for the gang's messages", e), -1;
    r->stage_bytes = bytes;
    return 0;
}

static int copy(nccl_rank *r, void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, char *msg,
                size_t msg_n)
{
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, r->stream);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(r->stream);
    return e == cudaSuccess ? 0 : (say_cuda(msg, msg_n, "staging a message", e), -1);
}

static int nccl_allreduce(void *impl, float *buf, size_t n, int size, int avg, char *msg, size_t msg_n)
{
    (void)size;
    nccl_rank *r = impl;
    size_t bytes = n * sizeof(float);
    if (stage_room(r, bytes, msg, msg_n) || copy(r, r->stage, buf, bytes, cudaMemcpyHostToDevice, msg, msg_n) ||
        nccl_allreduce_dev(r, r->stage, n, avg, NULL, msg, msg_n))
        return -1;
    return copy(r, buf, r->stage, bytes, cudaMemcpyDeviceToHost, msg, msg_n);
}

static int nccl_broadcast(void *impl, float *buf, size_t n, int root, char *msg, size_t msg_n)
{
    nccl_rank *r = impl;
    size_t bytes = n * sizeof(float);
    if (stage_room(r, bytes, msg, msg_n) || copy(r, r->stage, buf, bytes, cudaMemcpyHostToDevice, msg, msg_n) ||
        nccl_broadcast_dev(r, r->stage, n, root, NULL, msg, msg_n))
        return -1;
    return copy(r, buf, r->stage, bytes, cudaMemcpyDeviceToHost, msg, msg_n);
}

/* Rank k's bytes go out by a broadcast from k into its slot of the staged
 * receive buffer; the size broadcasts form one NCCL group. */
static int nccl_allgatherv(void *impl, const void *send, size_t bytes, void *recv, const size_t *each, int size,
                           char *msg, size_t msg_n)
{
    nccl_rank *r = impl;
    size_t total = 0, mine = 0;
    for (int k = 0; k < size; k++) {
        if (k == r->rank)
            mine = total;
        total += each[k];
    }
    if (refuse_aborted(r, "all-gather", msg, msg_n) || stage_room(r, total ? total : 1, msg, msg_n) ||
        (bytes && copy(r, (char *)r->stage + mine, send, bytes, cudaMemcpyHostToDevice, msg, msg_n)))
        return -1;
    ncclResult_t e = ncclGroupStart();
    size_t at = 0;
    for (int k = 0; k < size && (e == ncclSuccess || e == ncclInProgress); k++) {
        char *slot = (char *)r->stage + at;
        if (each[k])
            e = ncclBroadcast(slot, slot, each[k], ncclInt8, k, r->comm, r->stream);
        at += each[k];
    }
    ncclResult_t g = ncclGroupEnd();
    if (e == ncclSuccess || e == ncclInProgress)
        e = g;
    if (e != ncclSuccess && e != ncclInProgress)
        return say_nccl(r, msg, msg_n, "all-gather", e), -1;
    if (wait_done(r, "all-gather", r->timeout_ms, 1, msg, msg_n) != 0)
        return -1;
    return total ? copy(r, recv, r->stage, total, cudaMemcpyDeviceToHost, msg, msg_n) : 0;
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
    if (r->stage)
        cudaFree(r->stage);
    if (r->ready)
        cudaEventDestroy(r->ready);
    if (r->stream)
        cudaStreamDestroy(r->stream);
    free(r);
}

static const ddp_transport nccl_transport = {
    .name = "nccl", .allreduce = nccl_allreduce, .broadcast = nccl_broadcast, .allgatherv = nccl_allgatherv,
    .barrier = nccl_barrier, .allreduce_dev = nccl_allreduce_dev, .broadcast_dev = nccl_broadcast_dev,
    .abort = nccl_abort, .close = nccl_close,
};

/* Rank 0 publishes the unique id; the others poll for it.  A gang of one
 * meets no one. */
static int meet(const ddp_comm_opts *o, int64_t timeout_ms, ncclUniqueId *id, cds_err *err)
{
    char hex[2 * sizeof id->internal + 1];
    if (o->rank == 0) {
        ncclResult_t e = ncclGetUniqueId(id);
        if (e != ncclSuccess)
            return cds_errf(err, "rank 0 of %d, gang %s: ncclGetUniqueId: %s", o->size, o->scope,
                            ncclGetErrorString(e));
        if (o->size == 1)
            return 0;
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
    /* nn's count (through the CUDA backend's module, loaded only now: a
     * worker that never joins over NCCL never maps cuBLAS and cuDNN). */
    char why[768] = "";
    int devices = nn_cuda_devices(why, sizeof why);
    cudaError_t ce;
    if (devices <= 0)
        return cds_errf(err, "rank %d of %d: no CUDA device (%s): NCCL needs one; a CPU gang uses Gloo", o->rank,
                        o->size, why);
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
    r->rank = o->rank;
    r->timeout_ms = timeout;
    char msg[CDS_ERR_MAX];
    if ((ce = cudaSetDevice(o->device)) != cudaSuccess ||
        (ce = cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (ce = cudaMalloc((void **)&r->scratch, sizeof(float))) != cudaSuccess ||
        (ce = cudaEventCreateWithFlags(&r->ready, cudaEventDisableTiming)) != cudaSuccess) {
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
