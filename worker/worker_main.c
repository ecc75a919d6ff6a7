/* cds-worker: command-line parsing; the loop is in worker.c.  Options are
 * parsed by common/cds_cli (exact names only, one usage-error style); each
 * value is checked here, before anything connects, and a bad one is one line
 * naming the option and what to give, exit 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cds_cli.h"
#include "cds_util.h"
#include "nn_backend.h"
#include "worker.h"

static void usage(FILE *out)
{
    fputs("usage: cds-worker [options]\n"
          "Claims jobs from Redis queues and runs them (one worker per GPU).\n"
          "\n"
          "  --redis URL               redis://[:password@]host:port/db or unix:///path?db=N\n"
          "                            (default: $CDS_REDIS_URL, else redis://127.0.0.1:6379/0)\n"
          "  --redis-password-file F   read the Redis password from F (keeps it out of ps)\n"
          "  --prefix P                key prefix (default cds:)\n"
          "  --queue Q                 queue to serve; repeat for several (default: default)\n"
          "  --id NAME                 worker id (default: host-pid-random)\n"
          "  --lease SECONDS           lease per claimed job, renewed by heartbeats (default 30)\n"
          "  --batch N                 jobs claimed per call (default 1; more for tiny jobs)\n"
          "  --idle-exit SECONDS       exit after this long without work (default: never)\n"
          "  --max-jobs N              exit after running N jobs\n"
          "  --reap-every SECONDS      reaper pass interval (default 1)\n"
          "  --keep-done N             finished jobs kept per queue (default 10000)\n"
          "  --keep-done-age SECONDS   ... and for how long (default 7 days)\n"
          "  --log-level LEVEL         debug, info, warn or error (default info)\n"
          "  --shard K                 also train MOP sweeps on shard K (needs --data-root)\n"
          "  --data-root DIR           where datasets/ and sweeps/ are (a shared filesystem)\n"
          "  --device D                cpu, cuda:N (cuda is cuda:0) or auto, the default: cuda:0\n"
          "                            when a CUDA device is visible, else the CPU (said in one\n"
          "                            log line); cuda:N with no such device is an error at start\n"
          "  --threads T               engine threads: MOP visits, evaluations, predictions (default: all cores)\n"
          "  --shard-grace SECONDS     also serve a shard whose worker has been silent this long\n"
          "                            (default 60; 0: never)\n"
          "  --ddp-timeout SECONDS     DDP/MA gangs: time-out of every collective (default 10)\n"
          "  --ddp-addr ADDR           the address gang ranks listen on (default: --ddp-iface's,\n"
          "                            else the host name's; a gang across hosts needs one)\n"
          "  --ddp-iface NAME          take that address from this network interface\n"
          "  --ddp-sparse rows|dense   DDP: a sparse mlp's embedding gradient exchanged as the\n"
          "                            rows the ranks touched (default) or all-reduced dense\n"
          "  --ddp-transport gloo|nccl DDP/MA gangs: Gloo over TCP through host memory (default,\n"
          "                            any device), or NCCL from device memory (every worker of\n"
          "                            the sweep on a GPU, --device cuda:N)\n"
          "  --metrics-port P          serve Prometheus metrics at http://127.0.0.1:P/metrics\n"
          "                            (docs/operations.md)\n"
          "  --metrics-bind ADDR       the address the metrics port binds (default 127.0.0.1)\n"
          "  --help                    this text\n"
          "\n"
          "Signals: the first SIGTERM or SIGINT finishes the job (or MOP visit) in hand, acks\n"
          "(commits) it and exits; a second one releases it at once and exits.\n"
          "One worker per GPU: on a node with several, one per card, with --device cuda:N, or\n"
          "with CUDA_VISIBLE_DEVICES naming that card and --device cuda:0, as\n"
          "jobs/workers-per-gpu.sh starts them.\n"
          "Exit status: 0 stopped cleanly, 2 bad usage, or at start no such device or Redis\n"
          "unreachable.\n",
          out);
}

static int parse_seconds(const char *s, int64_t *ms)
{
    double v;
    if (cds_parse_double(s, &v) != 0 || v < 0 || v > 1e9)
        return -1;
    *ms = (int64_t)(v * 1000.0);
    return 0;
}

int main(int argc, char **argv)
{
    worker_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.lease_ms = 30000;
    cfg.batch = 1;
    cfg.reap_every_ms = 1000;
    cfg.log_level = CDS_LOG_INFO;
    cfg.shard = -1;
    cfg.shard_grace_ms = 60000;
    cfg.ddp_timeout_ms = 10000;
    int rank_task = -1, rank_out = -1;
    queue_maint_opts_init(&cfg.maint);

    enum { O_REDIS = 256, O_PWFILE, O_PREFIX, O_QUEUE, O_ID, O_LEASE, O_BATCH, O_IDLE, O_MAXJOBS, O_REAP,
           O_KEEP, O_KEEPAGE, O_LOG, O_HELP, O_SHARD, O_DATAROOT, O_THREADS, O_GRACE, O_DDPTIMEOUT, O_DDPADDR,
           O_DDPIFACE, O_DDPSPARSE, O_RANKTASK, O_RANKOUT, O_DEVICE, O_DDPTRANSPORT, O_METRICSPORT, O_METRICSBIND };
    static const struct option opts[] = {
        {"redis", required_argument, 0, O_REDIS},         {"redis-password-file", required_argument, 0, O_PWFILE},
        {"prefix", required_argument, 0, O_PREFIX},       {"queue", required_argument, 0, O_QUEUE},
        {"id", required_argument, 0, O_ID},               {"lease", required_argument, 0, O_LEASE},
        {"batch", required_argument, 0, O_BATCH},         {"idle-exit", required_argument, 0, O_IDLE},
        {"max-jobs", required_argument, 0, O_MAXJOBS},    {"reap-every", required_argument, 0, O_REAP},
        {"keep-done", required_argument, 0, O_KEEP},      {"keep-done-age", required_argument, 0, O_KEEPAGE},
        {"log-level", required_argument, 0, O_LOG},       {"help", no_argument, 0, O_HELP},
        {"shard", required_argument, 0, O_SHARD},         {"data-root", required_argument, 0, O_DATAROOT},
        {"threads", required_argument, 0, O_THREADS},     {"shard-grace", required_argument, 0, O_GRACE},
        {"ddp-timeout", required_argument, 0, O_DDPTIMEOUT}, {"ddp-addr", required_argument, 0, O_DDPADDR},
        {"ddp-iface", required_argument, 0, O_DDPIFACE},  {"rank-task", required_argument, 0, O_RANKTASK},
        {"rank-out", required_argument, 0, O_RANKOUT},    {"ddp-sparse", required_argument, 0, O_DDPSPARSE},
        {"ddp-transport", required_argument, 0, O_DDPTRANSPORT},
        {"device", required_argument, 0, O_DEVICE},
        {"metrics-port", required_argument, 0, O_METRICSPORT}, {"metrics-bind", required_argument, 0, O_METRICSBIND},
        {0, 0, 0, 0},
    };
    int c;
    int64_t v;
    cds_cli cli;
    cds_cli_init(&cli, "cds-worker", NULL, argc, argv, "", opts);
    while ((c = cds_cli_next(&cli)) != CDS_CLI_END) {
        switch (c) {
        case O_REDIS: cfg.url = cli.arg; break;
        case O_PWFILE: cfg.password_file = cli.arg; break;
        case O_PREFIX: cfg.prefix = cli.arg; break;
        case O_QUEUE:
            if (cfg.n_queues == WORKER_MAX_QUEUES)
                return cds_cli_usage(&cli, "too many --queue options (at most 16)");
            cfg.queues[cfg.n_queues++] = cli.arg;
            break;
        case O_ID:
            if (strlen(cli.arg) == 0 || strlen(cli.arg) >= sizeof cfg.id || strpbrk(cli.arg, " \t\r\n"))
                return cds_cli_usage(&cli, "bad --id '%s': use up to 127 characters without spaces", cli.arg);
            snprintf(cfg.id, sizeof cfg.id, "%s", cli.arg);
            break;
        case O_LEASE:
            if (parse_seconds(cli.arg, &cfg.lease_ms) != 0 || cfg.lease_ms < 100)
                return cds_cli_usage(&cli, "bad --lease '%s': give seconds, at least 0.1", cli.arg);
            break;
        case O_BATCH:
            if (cds_parse_i64(cli.arg, 1, 1000, &v) != 0)
                return cds_cli_usage(&cli, "bad --batch '%s': use 1 to 1000", cli.arg);
            cfg.batch = (size_t)v;
            break;
        case O_IDLE:
            if (parse_seconds(cli.arg, &cfg.idle_exit_ms) != 0)
                return cds_cli_usage(&cli, "bad --idle-exit '%s': give seconds", cli.arg);
            break;
        case O_MAXJOBS:
            if (cds_parse_i64(cli.arg, 1, INT64_MAX, &cfg.max_jobs) != 0)
                return cds_cli_usage(&cli, "bad --max-jobs '%s': use a positive integer", cli.arg);
            break;
        case O_REAP:
            if (parse_seconds(cli.arg, &cfg.reap_every_ms) != 0 || cfg.reap_every_ms < 10)
                return cds_cli_usage(&cli, "bad --reap-every '%s': give seconds, at least 0.01", cli.arg);
            break;
        case O_KEEP:
            if (cds_parse_i64(cli.arg, 0, INT64_MAX, &cfg.maint.keep_done) != 0)
                return cds_cli_usage(&cli, "bad --keep-done '%s': use a count", cli.arg);
            break;
        case O_KEEPAGE:
            if (parse_seconds(cli.arg, &cfg.maint.keep_done_ms) != 0)
                return cds_cli_usage(&cli, "bad --keep-done-age '%s': give seconds", cli.arg);
            break;
        case O_LOG:
            if (strcmp(cli.arg, "debug") == 0) cfg.log_level = CDS_LOG_DEBUG;
            else if (strcmp(cli.arg, "info") == 0) cfg.log_level = CDS_LOG_INFO;
            else if (strcmp(cli.arg, "warn") == 0) cfg.log_level = CDS_LOG_WARN;
            else if (strcmp(cli.arg, "error") == 0) cfg.log_level = CDS_LOG_ERROR;
            else return cds_cli_usage(&cli, "bad --log-level '%s': use debug, info, warn or error", cli.arg);
            break;
        case O_HELP: usage(stdout); return 0;
        case O_SHARD:
            if (cds_parse_i64(cli.arg, 0, 1 << 20, &v) != 0)
                return cds_cli_usage(&cli, "bad --shard '%s': use a shard number from 0", cli.arg);
            cfg.shard = (int)v;
            break;
        case O_DATAROOT: cfg.data_root = cli.arg; break;
        case O_GRACE:
            if (parse_seconds(cli.arg, &cfg.shard_grace_ms) != 0)
                return cds_cli_usage(&cli, "bad --shard-grace '%s': give seconds", cli.arg);
            break;
        case O_THREADS:
            if (cds_parse_i64(cli.arg, 1, 1024, &v) != 0)
                return cds_cli_usage(&cli, "bad --threads '%s': use 1 to 1024", cli.arg);
            cfg.threads = (int)v;
            break;
        case O_DDPTIMEOUT:
            if (parse_seconds(cli.arg, &cfg.ddp_timeout_ms) != 0 || cfg.ddp_timeout_ms < 100)
                return cds_cli_usage(&cli, "bad --ddp-timeout '%s': give seconds, at least 0.1", cli.arg);
            break;
        case O_DDPADDR:
            if (!*cli.arg || strlen(cli.arg) > 200)
                return cds_cli_usage(&cli, "bad --ddp-addr '%s': give an IP address or host name", cli.arg);
            cfg.ddp_addr = cli.arg;
            break;
        case O_DDPIFACE:
            if (!*cli.arg || strlen(cli.arg) >= 16)
                return cds_cli_usage(&cli, "bad --ddp-iface '%s': give a network interface name (ip link)", cli.arg);
            cfg.ddp_iface = cli.arg;
            break;
        case O_DDPSPARSE:
            if (strcmp(cli.arg, "rows") != 0 && strcmp(cli.arg, "dense") != 0)
                return cds_cli_usage(&cli, "bad --ddp-sparse '%s': use rows or dense", cli.arg);
            cfg.ddp_sparse_dense = strcmp(cli.arg, "dense") == 0;
            break;
        case O_DDPTRANSPORT:
            if (strcmp(cli.arg, "gloo") != 0 && strcmp(cli.arg, "nccl") != 0)
                return cds_cli_usage(&cli, "bad --ddp-transport '%s': use gloo or nccl", cli.arg);
            cfg.ddp_nccl = strcmp(cli.arg, "nccl") == 0;
            break;
        case O_METRICSPORT:
            if (cds_parse_i64(cli.arg, 1, 65535, &v) != 0)
                return cds_cli_usage(&cli, "bad --metrics-port '%s': give a TCP port, 1 to 65535", cli.arg);
            cfg.metrics_port = (int)v;
            break;
        case O_METRICSBIND:
            if (!*cli.arg || strlen(cli.arg) > 45)
                return cds_cli_usage(&cli, "bad --metrics-bind '%s': give an IPv4 address (127.0.0.1, 0.0.0.0)", cli.arg);
            cfg.metrics_bind = cli.arg;
            break;
        case O_DEVICE: {
            nn_place where;
            cds_err err;
            /* Only the spelling here: whether this machine has the device
             * is worker_run's to find out, once, before it connects. */
            if (nn_place_parse(cli.arg, &where, NULL, &err) != 0)
                return cds_cli_usage(&cli, "bad --device '%s': use cpu, cuda:N (N a device ordinal) or auto",
                                     cli.arg);
            cfg.device = cli.arg;
            break;
        }
        case O_RANKTASK:
        case O_RANKOUT:
            if (cds_parse_i64(cli.arg, 3, 1024, &v) != 0)
                return cds_cli_usage(&cli, "bad --%s '%s': a file descriptor the worker passed", c == O_RANKTASK ?
                                     "rank-task" : "rank-out", cli.arg);
            *(c == O_RANKTASK ? &rank_task : &rank_out) = (int)v;
            break;
        default:
            return cds_cli_fail(&cli);
        }
    }
    if (optind < argc)
        return cds_cli_usage(&cli, "unexpected argument '%s'", argv[optind]);
    if (cfg.shard >= 0 && !cfg.data_root)
        return cds_cli_usage(&cli, "--shard needs --data-root DIR (where datasets/ and sweeps/ are)");
    if (cfg.data_root && access(cfg.data_root, W_OK) != 0)
        return cds_cli_usage(&cli, "--data-root %s is not a writable directory", cfg.data_root);
    if (!cfg.threads)
        cfg.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if ((rank_task >= 0) != (rank_out >= 0))
        return cds_cli_usage(&cli, "--rank-task and --rank-out go together (the worker starts its ranks so)");
    if (cfg.n_queues == 0)
        cfg.queues[cfg.n_queues++] = QUEUE_DEFAULT_NAME;
    for (size_t i = 0; i < cfg.n_queues; i++)
        if (strlen(cfg.queues[i]) == 0 || strlen(cfg.queues[i]) >= QUEUE_NAME_MAX ||
            strspn(cfg.queues[i], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") !=
                strlen(cfg.queues[i]))
            return cds_cli_usage(&cli, "bad --queue '%s': use letters, digits, '.', '_' or '-'", cfg.queues[i]);
    if (!cfg.id[0]) {
        char host[64] = "host", rnd[9];
        gethostname(host, sizeof host - 1);
        if (cds_random_hex(rnd, 4, NULL) != 0)
            snprintf(rnd, sizeof rnd, "0");
        snprintf(cfg.id, sizeof cfg.id, "%s-%d-%s", host, (int)getpid(), rnd);
    }
    if (rank_task >= 0) {
        if (!cfg.data_root || !cfg.id[0])
            return cds_cli_usage(&cli, "--rank-task needs --data-root and --id (the worker starts its ranks so)");
        return worker_rank_main(&cfg, rank_task, rank_out);
    }
    return worker_run(&cfg);
}
