/* test_ddp_nccl: the communicator's NCCL transport at W = 1 (NCCL refuses
 * two ranks on one device, and the GPU machine has one), with no Redis: a
 * gang of one meets no one, so this runs where tests/gpu/run runs.
 *
 * Without a device (or in a build without CUDA) the join must fail in one
 * line that says why and what to do, and the device checks are TAP skips
 * carrying that line.  With a device: all-reduce (sum and ncclAvg) and
 * broadcast on device memory in place, the same on host buffers (staged),
 * an all-gather of bytes, a barrier; a reducer refuses a CPU model on an
 * NCCL gang, and on a CUDA model a data-parallel step over the gang of one
 * (buckets reduced in place from the gradient block) gives the same
 * weights, bit for bit, as a plain step; after ddp_comm_abort every call is
 * refused at once.  NN_HAVE_CUDA is defined when nn/ was built with CUDA. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef NN_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "ddp_comm.h"
#include "ddp_reducer.h"
#include "nn_train.h"
#include "tap.h"

#define PLAN_DEVICE 10

static void skip(int count, const char *why)
{
    for (int i = 0; i < count; i++) {
        tap_global_state.n++;
        printf("ok %d # SKIP %s\n", tap_global_state.n, why);
    }
    fflush(stdout);
}

#ifdef NN_HAVE_CUDA
static const char *SPEC = "{\"model\":{\"arch\":\"mlp\",\"input\":[20],\"hidden\":[16],\"classes\":3},"
                          "\"train\":{\"optimizer\":\"adam\",\"lr\":0.01,\"batch\":8,\"seed\":5}}";

/* Two steps of a trainer on cuda:0, through a reducer on c or plainly;
 * the weights after into w (room for them all). */
static int two_steps(ddp_comm *c, float *w, size_t *n, cds_err *err)
{
    nn_trainer *t = nn_trainer_new_at(SPEC, (nn_place){.dev = NN_CUDA, .index = 0}, err);
    ddp_reducer *r = NULL;
    if (!t || (c && ddp_reducer_new(nn_trainer_model(t), c, 256, &r, err) != 0)) {
        nn_trainer_free(t);
        return -1;
    }
    float x[8 * 20];
    int32_t y[8];
    for (int i = 0; i < 8 * 20; i++)
        x[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
    for (int i = 0; i < 8; i++)
        y[i] = i % 3;
    int rc = 0;
    for (int s = 0; s < 2 && rc == 0; s++)
        rc = nn_trainer_forward_backward(t, x, NULL, y, 8, err) != 0 || (r && ddp_reducer_finish(r, err) != 0) ||
                     nn_trainer_optim_step(t, err) != 0
                 ? -1
                 : 0;
    nn_model *m = nn_trainer_model(t);
    *n = 0;
    for (size_t i = 0; rc == 0 && i < nn_model_param_count(m); i++) {
        nn_tensor *p = &nn_model_param(m, i)->w;
        nn_model_read(m, p, w + *n);
        *n += p->n;
    }
    if (rc == 0)
        rc = nn_ctx_check(nn_model_ctx(m), err);
    ddp_reducer_free(r);
    nn_trainer_free(t);
    return rc;
}

/* The device checks, on a communicator that joined. */
static void device_checks(ddp_comm *c)
{
    cds_err err;
    enum { N = 1000 };
    float host[N], back[N], *dev = NULL;
    for (int i = 0; i < N; i++)
        host[i] = (float)i * 0.5f - 17.0f;
    int copied = cudaMalloc((void **)&dev, sizeof host) == cudaSuccess &&
                 cudaMemcpy(dev, host, sizeof host, cudaMemcpyHostToDevice) == cudaSuccess;
    ok(ddp_comm_on_device(c), "an NCCL communicator reduces device memory");
    int rc = copied ? ddp_allreduce_device(c, dev, N, DDP_SUM, NULL, &err) : -1;
    ok(rc == 0 && cudaMemcpy(back, dev, sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess &&
           memcmp(back, host, sizeof host) == 0,
       "all-reduce sum over one rank leaves the device buffer as it was%s%s", rc ? ": " : "", rc ? err.msg : "");
    rc = copied ? ddp_allreduce_device(c, dev, N, DDP_AVG, NULL, &err) : -1;
    ok(rc == 0 && cudaMemcpy(back, dev, sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess &&
           memcmp(back, host, sizeof host) == 0,
       "all-reduce average (ncclAvg) over one rank too%s%s", rc ? ": " : "", rc ? err.msg : "");
    rc = copied ? ddp_broadcast_device(c, dev, N, 0, NULL, &err) : -1;
    ok(rc == 0 && cudaMemcpy(back, dev, sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess &&
           memcmp(back, host, sizeof host) == 0,
       "broadcast from rank 0%s%s", rc ? ": " : "", rc ? err.msg : "");
    memcpy(back, host, sizeof back);
    rc = ddp_allreduce(c, back, N, DDP_AVG, &err) || ddp_broadcast(c, back, N, 0, &err);
    ok(rc == 0 && memcmp(back, host, sizeof host) == 0, "all-reduce and broadcast of host buffers, staged%s%s",
       rc ? ": " : "", rc ? err.msg : "");
    size_t each[1] = {37};
    char got[37] = {0};
    rc = ddp_allgatherv(c, "all-gather of one rank's thirty-seven", 37, got, each, &err);
    ok(rc == 0 && memcmp(got, "all-gather of one rank's thirty-seven", 37) == 0, "all-gather of bytes%s%s",
       rc ? ": " : "", rc ? err.msg : "");
    rc = ddp_barrier(c, 0, &err);
    ok(rc == 0, "barrier%s%s", rc ? ": " : "", rc ? err.msg : "");

    nn_trainer *cpu = nn_trainer_new(SPEC, &err);
    ddp_reducer *r = NULL;
    rc = cpu ? ddp_reducer_new(nn_trainer_model(cpu), c, 0, &r, &err) : 0;
    ok(rc == -1 && r == NULL && strstr(err.msg, "CUDA device") && strstr(err.msg, "Gloo"),
       "a reducer refuses a cpu model on an NCCL gang: %s", err.msg);
    nn_trainer_free(cpu);
    float plain[2048], reduced[2048];
    size_t n1 = 0, n2 = 0;
    rc = two_steps(NULL, plain, &n1, &err) || two_steps(c, reduced, &n2, &err);
    ok(rc == 0 && n1 == n2 && n1 > 0 && memcmp(plain, reduced, n1 * sizeof(float)) == 0,
       "two steps of a cuda model reduced in place over a gang of one equal plain steps (%zu weights)%s%s", n1,
       rc ? ": " : "", rc ? err.msg : "");

    ddp_comm_abort(c);
    rc = copied ? ddp_allreduce_device(c, dev, N, DDP_SUM, NULL, &err) : 0;
    ok(rc == -1 && strstr(err.msg, "broken") && strstr(err.msg, "aborted"),
       "after ddp_comm_abort (ncclCommAbort) a call is refused at once: %s", err.msg);
    cudaFree(dev);
}
#endif

int main(void)
{
    char scope[64];
    snprintf(scope, sizeof scope, "nccl-%d", (int)getpid());
    ddp_comm_opts o = {.q = NULL, .scope = scope, .rank = 0, .size = 1, .timeout_ms = 20000};
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
        ok(c != NULL && ddp_comm_rank(c) == 0 && ddp_comm_size(c) == 1, "rank 0 of 1 joins over NCCL, meeting no one");
#ifdef NN_HAVE_CUDA
        device_checks(c);
#else
        skip(PLAN_DEVICE, "joined without CUDA?");
#endif
    }
    ddp_comm_destroy(c);
    /* A bad rank is refused before anything is asked of CUDA, and a gang
     * of two needs a rendezvous. */
    o.rank = 3;
    ok(ddp_comm_nccl(&o, &c, &err) == -1 && strstr(err.msg, "give 0 <= rank < size"), "rank 3 of 1 is refused: %s",
       err.msg);
    o.rank = 0;
    o.size = 2;
    ok(ddp_comm_nccl(&o, &c, &err) == -1 && strstr(err.msg, "Redis"), "a gang of two without Redis is refused: %s",
       err.msg);
    return tap_done();
}
