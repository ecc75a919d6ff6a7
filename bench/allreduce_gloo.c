/* allreduce_gloo: the C half of bench/allreduce: bus bandwidth of the
 * communicator's all-reduce (ddp_comm.h over Gloo) at W ranks on this
 * machine, one JSON line per size:
 *
 *   allreduce_gloo --redis URL --ranks W --sizes-mb 1,4,...,256 [--seconds S]
 *
 * Forks W ranks that meet through rendezvous keys in the Redis at URL.
 * For each size, after WARMUP calls, rank 0 times back-to-back
 * all-reduces (sum) of that many bytes of float32 for about S seconds, each
 * preceded by nothing else (the same loop as the PyTorch side,
 * bench/allreduce/torch_side.py).  Bus bandwidth, as nccl-tests defines it:
 * bytes · 2(W-1)/W / time per call. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cds_cli.h"
#include "cds_util.h"
#include "ddp_comm.h"

#define MAX_SIZES 16
#define WARMUP 5 /* calls before timing a size: the first ones after connecting run slow */

static int rank_main(const char *url, int rank, int W, const int *mb, int n_sizes, double seconds)
{
    char scope[64], prefix[64];
    snprintf(prefix, sizeof prefix, "bench:allreduce:%d:", (int)getppid());
    snprintf(scope, sizeof scope, "gang-%d", (int)getppid());
    cds_err err;
    queue_opts qo = {.url = url, .prefix = prefix};
    queue_conn *q = queue_connect(&qo, &err);
    ddp_comm_opts o = {.q = q, .scope = scope, .rank = rank, .size = W, .timeout_ms = 60000, .addr = "127.0.0.1"};
    ddp_comm *c = NULL;
    if (!q || ddp_comm_gloo(&o, &c, &err) != 0) {
        fprintf(stderr, "allreduce_gloo: rank %d: %s\n", rank, err.msg);
        return 1;
    }
    for (int s = 0; s < n_sizes; s++) {
        size_t n = (size_t)mb[s] * (1u << 20) / sizeof(float);
        float *buf = malloc(n * sizeof(float));
        if (!buf) {
            fprintf(stderr, "allreduce_gloo: out of memory for %d MB\n", mb[s]);
            return 1;
        }
        for (size_t i = 0; i < n; i++)
            buf[i] = (float)(i & 7);
        for (int w = 0; w < WARMUP; w++)
            if (ddp_allreduce(c, buf, n, DDP_SUM, &err) != 0) {
                fprintf(stderr, "allreduce_gloo: %s\n", err.msg);
                return 1;
            }
        /* Rank 0 decides the count and tells the others, so all make the
         * same number of calls. */
        float iters = 0;
        if (rank == 0) {
            int64_t t0 = cds_mono_ms();
            if (ddp_allreduce(c, buf, n, DDP_SUM, &err) != 0)
                return fprintf(stderr, "allreduce_gloo: %s\n", err.msg), 1;
            double one = (double)(cds_mono_ms() - t0) / 1000.0;
            iters = (float)(one > 0 ? seconds / one : 100);
            if (iters < 3)
                iters = 3;
            if (iters > 1000)
                iters = 1000;
        } else if (ddp_allreduce(c, buf, n, DDP_SUM, &err) != 0) {
            return fprintf(stderr, "allreduce_gloo: %s\n", err.msg), 1;
        }
        if (ddp_broadcast(c, &iters, 1, 0, &err) != 0 || ddp_barrier(c, 0, &err) != 0)
            return fprintf(stderr, "allreduce_gloo: %s\n", err.msg), 1;
        int k = (int)iters;
        int64_t t0 = cds_mono_ms();
        for (int i = 0; i < k; i++)
            if (ddp_allreduce(c, buf, n, DDP_SUM, &err) != 0)
                return fprintf(stderr, "allreduce_gloo: %s\n", err.msg), 1;
        double t = (double)(cds_mono_ms() - t0) / 1000.0 / k;
        if (rank == 0) {
            double bytes = (double)n * sizeof(float);
            printf("{\"side\": \"cds\", \"mb\": %d, \"ranks\": %d, \"calls\": %d, \"seconds_per_call\": %.6f, "
                   "\"bus_gb_per_s\": %.3f}\n",
                   mb[s], W, k, t, bytes * 2.0 * (W - 1) / W / t / 1e9);
            fflush(stdout);
        }
        free(buf);
    }
    ddp_comm_destroy(c);
    queue_close(q);
    return 0;
}

int main(int argc, char **argv)
{
    enum { O_REDIS = 1, O_RANKS, O_SIZES, O_SECONDS };
    static const struct option opts[] = {{"redis", required_argument, 0, O_REDIS},
                                         {"ranks", required_argument, 0, O_RANKS},
                                         {"sizes-mb", required_argument, 0, O_SIZES},
                                         {"seconds", required_argument, 0, O_SECONDS},
                                         {0, 0, 0, 0}};
    const char *url = NULL, *sizes = "1,4,16,64,256";
    int64_t W = 2;
    double seconds = 2;
    cds_cli cli;
    cds_cli_init(&cli, "allreduce_gloo", NULL, argc, argv, "", opts);
    int c;
    while ((c = cds_cli_next(&cli)) != CDS_CLI_END) {
        if (c == CDS_CLI_BAD)
            return cds_cli_fail(&cli);
        if (c == O_REDIS)
            url = cli.arg;
        if (c == O_RANKS && cds_parse_i64(cli.arg, 1, 16, &W) != 0)
            return cds_cli_usage(&cli, "--ranks must be a whole number from 1 to 16");
        if (c == O_SIZES)
            sizes = cli.arg;
        if (c == O_SECONDS && (cds_parse_double(cli.arg, &seconds) != 0 || !(seconds > 0 && seconds <= 600)))
            return cds_cli_usage(&cli, "--seconds must be above 0 and at most 600");
    }
    if (!url)
        return cds_cli_usage(&cli, "--redis URL is required (the ranks meet through it)");
    int mb[MAX_SIZES], n_sizes = 0;
    char list[256];
    snprintf(list, sizeof list, "%s", sizes);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int64_t v;
        if (n_sizes == MAX_SIZES || cds_parse_i64(t, 1, 4096, &v) != 0)
            return cds_cli_usage(&cli, "--sizes-mb: give up to %d sizes of 1 to 4096 MB, comma-separated", MAX_SIZES);
        mb[n_sizes++] = (int)v;
    }
    pid_t pid[16];
    for (int r = 0; r < W; r++) {
        fflush(stdout);
        if ((pid[r] = fork()) == 0)
            _exit(rank_main(url, r, (int)W, mb, n_sizes, seconds));
    }
    int rc = 0;
    for (int r = 0; r < W; r++) {
        int st = 0;
        waitpid(pid[r], &st, 0);
        rc |= !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    return rc;
}
