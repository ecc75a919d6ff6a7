/* cds-gpu-info: tell an operator, in one glance, whether this machine can
 * train on a GPU.
 *
 * It prints the CUDA library versions the binary was linked against (these
 * need no device) and what nn_cuda_probe() found: the first device, its
 * compute capability and memory, and whether a small kernel produced the
 * right answer.  --json prints the same as one JSON object for scripts.
 *
 * The exit status is the answer scripts care about: 0 when a device passed
 * the probe, 3 when there is none (or the build has no CUDA), 1 when a device
 * is there but fails the probe (both with the reason as one line on stderr),
 * and 2 for a usage error.  "No GPU" has its own code so that a wrapper can
 * tell "use the CPU backend" from a broken GPU or a crash. */

#include <stdio.h>
#include <string.h>

#include "cds_cli.h"
#include "cds_err.h"
#include "nn_cuda.h"

#define EXIT_BAD_GPU 1
#define EXIT_USAGE 2
#define EXIT_NO_GPU 3

static void usage(FILE *out)
{
    fprintf(out,
        "usage: cds-gpu-info [--json] [--help]\n"
        "\n"
        "Probes the first CUDA device: prints the CUDA runtime, driver, cuBLAS,\n"
        "cuDNN and NCCL versions, the device's name, compute capability and\n"
        "memory, and runs a small kernel whose result is checked.\n"
        "\n"
        "  --json   print one JSON object instead of text\n"
        "  --help   print this help\n"
        "\n"
        "Exit status:\n"
        "  0  a CUDA device was found and passed the probe\n"
        "  1  a CUDA device was found but failed the probe (reason on stderr)\n"
        "  2  usage error\n"
        "  3  no usable CUDA device (or built without CUDA); the reason is\n"
        "     printed as one line on stderr and the CPU backend will be used\n");
}

/* Versions are encoded as in the libraries' headers: runtime/driver
 * 1000*major + 10*minor, cuBLAS 10000*major + 100*minor + patch, cuDNN 9.x
 * 10000*major + 100*minor + patch, NCCL >= 2.9 10000*major + 100*minor + patch. */
static void fmt_cuda(char *out, size_t n, int v)
{
    if (v <= 0)
        snprintf(out, n, "none");
    else
        snprintf(out, n, "%d.%d", v / 1000, (v % 1000) / 10);
}

static void fmt_10000(char *out, size_t n, long long v)
{
    if (v <= 0)
        snprintf(out, n, "none");
    else
        snprintf(out, n, "%lld.%lld.%lld", v / 10000, (v % 10000) / 100, v % 100);
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    enum { O_JSON = 300, O_HELP };
    static const struct option opts[] = {
        {"json", no_argument, 0, O_JSON}, {"help", no_argument, 0, O_HELP}, {0, 0, 0, 0}};
    int json = 0, c;
    cds_cli cli;
    cds_cli_init(&cli, "cds-gpu-info", NULL, argc, argv, "h", opts);
    while ((c = cds_cli_next(&cli)) != CDS_CLI_END) {
        if (c == O_JSON) {
            json = 1;
        } else if (c == O_HELP || c == 'h') {
            usage(stdout);
            return 0;
        } else {
            return cds_cli_fail(&cli);
        }
    }
    if (optind < argc)
        return cds_cli_usage(&cli, "unexpected argument '%s'", argv[optind]);

    nn_cuda_info info;
    cds_err err = {0};
    int rc = nn_cuda_probe(&info, &err);

    char rt[32], drv[32], blas[32], dnn[32], nccl[32];
    fmt_cuda(rt, sizeof rt, info.runtime_version);
    fmt_cuda(drv, sizeof drv, info.driver_version);
    fmt_10000(blas, sizeof blas, info.cublas_version);
    fmt_10000(dnn, sizeof dnn, (long long)info.cudnn_version);
    fmt_10000(nccl, sizeof nccl, info.nccl_version);

    if (json) {
        printf("{\"ok\": %s, ", rc == 0 ? "true" : "false");
        printf("\"error\": ");
        if (rc == 0)
            printf("null");
        else
            json_str(err.msg);
        printf(", \"device_count\": %d, \"name\": ", info.device_count);
        json_str(info.name);
        printf(", \"compute_capability\": \"%d.%d\", \"total_mem\": %zu, "
               "\"runtime_version\": %d, \"driver_version\": %d, \"cublas_version\": %d, "
               "\"cudnn_version\": %zu, \"nccl_version\": %d}\n",
               info.cc_major, info.cc_minor, info.total_mem, info.runtime_version,
               info.driver_version, info.cublas_version, info.cudnn_version,
               info.nccl_version);
    } else {
        printf("CUDA runtime %s, driver %s, cuBLAS %s, cuDNN %s, NCCL %s\n",
               rt, drv, blas, dnn, nccl);
        if (rc == 0) {
            printf("devices: %d\n", info.device_count);
            printf("device 0: %s, compute capability %d.%d, %.1f GiB\n", info.name,
                   info.cc_major, info.cc_minor,
                   (double)info.total_mem / (1024.0 * 1024.0 * 1024.0));
            printf("probe kernel: ok\n");
        }
    }
    fflush(stdout);

    if (rc != 0) {
        fprintf(stderr, "cds-gpu-info: %s\n", err.msg);
        return info.device_count > 0 ? EXIT_BAD_GPU : EXIT_NO_GPU;
    }
    return 0;
}
