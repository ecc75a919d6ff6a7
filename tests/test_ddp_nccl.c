/* test_ddp_nccl: the communicator's NCCL transport at W = 1 (NCCL refuses
 * two ranks on one device, and no machine here has two), against the real
 * Redis of scripts/with-services for its rendezvous.
 *
 * Without a device (or in a build without CUDA) the join must fail in one
 * line that says why and what to do, and the device checks are TAP skips
 * carrying that line.  With a device: rank 0 publishes NCCL's id as hex
 * under the scope; an all-reduce sum and average, a broadcast and a barrier
 * on device memory give the values they must (with one rank the sum and
 * the mean are the input itself); after ddp_comm_abort every call is
 * refused at once.  NN_HAVE_CUDA is defined when nn/ was built with CUDA. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef NN_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "ddp_comm.h"
#include "tap.h"
#include "testutil.h"

#define PLAN_DEVICE 6

static void skip(int count, const char *why)
{
    for (int i = 0; i < count; i++) {
        tap_global_state.n++;
        printf("ok %d # SKIP %s\n", tap_global_state.n, why);
    }
    fflush(stdout);
}

#ifdef NN_HAVE_CUDA
/* The device checks, on a communicator that joined. */
static void device_checks(ddp_comm *c, queue_conn *q, const char *scope)
{
    cds_err err;
    void *data = NULL;
    size_t n = 0;
    ok(queue_rdv_get(q, scope, "nccl_id", &data, &n, &err) == 1 && n == 256 && strspn(data, "0123456789abcdef") == n,
       "rank 0 published NCCL's unique id as 256 hex digits under the scope (%zu bytes)", n);
    free(data);
    enum { N = 1000 };
    float host[N], back[N], *dev = NULL;
    for (int i = 0; i < N; i++)
        host[i] = (float)i * 0.5f - 17.0f;
    int copied = cudaMalloc((void **)&dev, sizeof host) == cudaSuccess &&
                 cudaMemcpy(dev, host, sizeof host, cudaMemcpyHostToDevice) == cudaSuccess;
    int rc = copied ? ddp_allreduce(c, dev, N, DDP_SUM, &err) : -1;
    ok(rc == 0 && cudaMemcpy(back, dev, sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess &&
           memcmp(back, host, sizeof host) == 0,
       "all-reduce sum over one rank leaves the device buffer as it was%s%s", rc ? ": " : "", rc ? err.msg : "");
    rc = copied ? ddp_allreduce(c, dev, N, DDP_AVG, &err) : -1;
    ok(rc == 0 && cudaMemcpy(back, dev, sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess &&
           memcmp(back, host, sizeof host) == 0,
       "all-reduce average (ncclAvg) over one rank too%s%s", rc ? ": " : "", rc ? err.msg : "");
    rc = copied ? ddp_broadcast(c, dev, N, 0, &err) : -1;
    ok(rc == 0 && cudaMemcpy(back, dev, sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess &&
           memcmp(back, host, sizeof host) == 0,
       "broadcast from rank 0%s%s", rc ? ": " : "", rc ? err.msg : "");
    rc = ddp_barrier(c, 0, &err);
    ok(rc == 0, "barrier%s%s", rc ? ": " : "", rc ? err.msg : "");
    ddp_comm_abort(c);
    rc = copied ? ddp_allreduce(c, dev, N, DDP_SUM, &err) : 0;
    ok(rc == -1 && strstr(err.msg, "broken") && strstr(err.msg, "aborted"),
       "after ddp_comm_abort (ncclCommAbort) a call is refused at once: %s", err.msg);
    cudaFree(dev);
}
#endif

int main(void)
{
    char prefix[96], scope[64];
    queue_conn *q = test_connect("ddpn", prefix, sizeof prefix);
    snprintf(scope, sizeof scope, "nccl-%d", (int)getpid());
    ddp_comm_opts o = {.q = q, .scope = scope, .rank = 0, .size = 1, .timeout_ms = 20000};
    ddp_comm *c = NULL;
    cds_err err;
    int rc = ddp_comm_nccl(&o, &c, &err);
    if (rc != 0) {
        ok(strchr(err.msg, '\n') == NULL &&
               (strstr(err.msg, "no CUDA device") || strstr(err.msg, "built without CUDA")) &&
               strstr(err.msg, "Gloo") && c == NULL,
           "without a device the join fails in one line naming the cause and Gloo: %s", err.msg);
        skip(PLAN_DEVICE, err.msg);
    } else {
        ok(c != NULL && ddp_comm_rank(c) == 0 && ddp_comm_size(c) == 1, "rank 0 of 1 joins over NCCL");
#ifdef NN_HAVE_CUDA
        device_checks(c, q, scope);
#else
        skip(PLAN_DEVICE, "joined without CUDA?");
#endif
    }
    ddp_comm_destroy(c);
    /* A bad rank is refused before anything is asked of CUDA. */
    o.rank = 3;
    ok(ddp_comm_nccl(&o, &c, &err) == -1 && strstr(err.msg, "give 0 <= rank < size"), "rank 3 of 1 is refused: %s",
       err.msg);
    queue_close(q);
    return tap_done();
}
