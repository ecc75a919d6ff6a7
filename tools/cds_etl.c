/* cds-etl: unload a table into a sharded dataset, or inspect a shard.
 *
 * The command line is turned into the same JSON spec that `jobctl enqueue
 * etl --spec` takes, and read by etl_spec_from_json, so both entry points
 * accept exactly the same things and refuse them with the same messages. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_cli.h"
#include "cds_log.h"
#include "cds_util.h"
#include "etl_shard.h"
#include "etl_unload.h"

static void usage_unload(FILE *out)
{
    fputs("usage: cds-etl unload --table T --features COLS --label COL --dataset NAME --shards N --data-root DIR\n"
          "                      [--dsn DSN] [--valid-table T2 | --valid-fraction F] [--test-table T3]\n"
          "                      [--where SQL] [--shard-key COL] [--dtype float32|uint8]\n"
          "                      [--feature-shape D1xD2x...] [--feature-encoding uint8|float32le]\n"
          "                      [--transform criteo] [--jobs J] [--replace] [--verbose]\n"
          "Unloads a Greenplum or PostgreSQL table into DIR/datasets/NAME/{train,valid,test}/shard-K/\n"
          "(x.npy, y.npy, manifest.json), one COPY BINARY stream per shard or segment, J at once.\n"
          "The DSN is anything libpq accepts (default: the PG* environment); give the password\n"
          "in PGPASSWORD or ~/.pgpass, not in the DSN.\n"
          "  --features COLS     comma-separated feature columns: numbers, numeric arrays, or one bytea\n"
          "  --label COL         integer class id, one-hot array, or text (dictionary-encoded)\n"
          "  (a MADlib training_preprocessor_dl table: --features independent_var --label dependent_var,\n"
          "   or the source column names its _summary table records)\n"
          "  --valid-fraction F  hold out a fraction F of the rows (by a hash of the shard key) as valid\n"
          "  --shard-key COL     column to hash rows to shards (default: the primary key)\n"
          "  --transform criteo  raw Criteo rows (label, I1..I13, C1..C26) to 39 one-hot indices\n"
          "  --replace           overwrite an existing dataset of that name\n"
          "  --verbose           log the plan and each shard as it finishes (stderr)\n"
          "Exit status: 0 done, 1 the unload failed, 2 bad usage.\n",
          out);
}

static void usage(FILE *out)
{
    fputs("usage: cds-etl unload ...      unload a table into shards (cds-etl unload --help)\n"
          "       cds-etl inspect DIR     print a shard's manifest and check its files [--no-verify] [--json]\n",
          out);
}

static int cmd_unload(int argc, char **argv)
{
    enum { O_HELP = 300, O_REPLACE, O_VERBOSE };
    static const struct option opts[] = {
        {"dsn", required_argument, 0, 'd'},           {"table", required_argument, 0, 't'},
        {"features", required_argument, 0, 'f'},      {"label", required_argument, 0, 'l'},
        {"dataset", required_argument, 0, 'n'},       {"shards", required_argument, 0, 's'},
        {"data-root", required_argument, 0, 'r'},     {"valid-table", required_argument, 0, 'v'},
        {"valid-fraction", required_argument, 0, 'F'}, {"test-table", required_argument, 0, 'T'},
        {"where", required_argument, 0, 'w'},         {"shard-key", required_argument, 0, 'k'},
        {"dtype", required_argument, 0, 'D'},         {"feature-shape", required_argument, 0, 'S'},
        {"feature-encoding", required_argument, 0, 'E'}, {"transform", required_argument, 0, 'X'},
        {"jobs", required_argument, 0, 'j'},          {"replace", no_argument, 0, O_REPLACE},
        {"verbose", no_argument, 0, O_VERBOSE},       {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    json_t *j = json_object();
    int c, verbose = 0;
    cds_cli cli;
    cds_cli_init(&cli, "cds-etl", "cds-etl unload --help", argc, argv, "", opts);
    while ((c = cds_cli_next(&cli)) != CDS_CLI_END) {
        const char *val = cli.arg;
        const char *key = NULL;
        int64_t iv;
        double dv;
        switch (c) {
        case 'd': key = "dsn"; break;
        case 't': key = "table"; break;
        case 'f': key = "features"; break;
        case 'l': key = "label"; break;
        case 'n': key = "dataset"; break;
        case 'r': key = "data_root"; break;
        case 'v': key = "valid_table"; break;
        case 'T': key = "test_table"; break;
        case 'w': key = "where"; break;
        case 'k': key = "shard_key"; break;
        case 'D': key = "dtype"; break;
        case 'S': key = "feature_shape"; break;
        case 'E': key = "feature_encoding"; break;
        case 'X': key = "transform"; break;
        case 's':
        case 'j':
            if (cds_parse_i64(val, 1, 1 << 20, &iv) != 0) {
                json_decref(j);
                return cds_cli_usage(&cli, "bad --%s '%s': give a positive integer", c == 's' ? "shards" : "jobs", val);
            }
            json_object_set_new(j, c == 's' ? "shards" : "jobs", json_integer(iv));
            continue;
        case 'F':
            if (cds_parse_double(val, &dv) != 0) {
                json_decref(j);
                return cds_cli_usage(&cli, "bad --valid-fraction '%s': give a number between 0 and 1", val);
            }
            json_object_set_new(j, "valid_fraction", json_real(dv));
            continue;
        case O_REPLACE: json_object_set_new(j, "replace", json_true()); continue;
        case O_VERBOSE: verbose = 1; continue;
        case O_HELP: usage_unload(stdout); json_decref(j); return 0;
        default: json_decref(j); return cds_cli_fail(&cli);
        }
        json_object_set_new(j, key, json_string(val));
    }
    if (optind < argc) {
        json_decref(j);
        return cds_cli_usage(&cli, "unexpected argument '%s'", argv[optind]);
    }
    etl_spec spec;
    cds_err err;
    if (etl_spec_from_json(j, &spec, &err) != 0) {
        json_decref(j);
        /* "$.shards: ..." reads better as "--shards: ..." here. */
        char *m = err.msg;
        if (m[0] == '$' && m[1] == '.') {
            m += 2;
            for (char *p = m; *p && *p != ':'; p++)
                if (*p == '_')
                    *p = '-';
            fprintf(stderr, "cds-etl: --%s (see cds-etl unload --help)\n", m);
        } else {
            fprintf(stderr, "cds-etl: %s\n", m);
        }
        return 2;
    }
    json_decref(j);
    cds_log log;
    cds_log_init(&log, stderr, verbose ? CDS_LOG_INFO : CDS_LOG_WARN, "cds-etl");
    signal(SIGXFSZ, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    int64_t t0 = cds_mono_ms();
    etl_plan *p = etl_plan_make(&spec, &log, &err);
    int rc = 0;
    char version[65] = "";
    if (!p || etl_unload_all(p, &log, version, &err) != 0) {
        fprintf(stderr, "cds-etl: %s\n", err.msg);
        rc = 1;
    } else {
        printf("dataset %s version %s in %s (%.2f s)\n", spec.dataset, version, etl_plan_dataset_dir(p),
               (cds_mono_ms() - t0) / 1000.0);
    }
    etl_plan_free(p);
    etl_spec_free(&spec);
    return rc;
}

static int cmd_inspect(int argc, char **argv)
{
    enum { O_NO_VERIFY = 300, O_JSON, O_HELP };
    static const struct option opts[] = {
        {"no-verify", no_argument, 0, O_NO_VERIFY}, {"json", no_argument, 0, O_JSON},
        {"help", no_argument, 0, O_HELP},           {0, 0, 0, 0},
    };
    int verify = 1, as_json = 0, c;
    cds_cli cli;
    cds_cli_init(&cli, "cds-etl", "cds-etl --help", argc, argv, "", opts);
    while ((c = cds_cli_next(&cli)) != CDS_CLI_END) {
        switch (c) {
        case O_NO_VERIFY: verify = 0; break;
        case O_JSON: as_json = 1; break;
        case O_HELP: usage(stdout); return 0;
        default: return cds_cli_fail(&cli);
        }
    }
    if (argc - optind > 1)
        return cds_cli_usage(&cli, "unexpected argument '%s'", argv[optind + 1]);
    if (argc - optind < 1)
        return cds_cli_usage(&cli, "inspect needs a shard directory");
    const char *dir = argv[optind];
    cds_err err;
    etl_shard *s = etl_shard_open(dir, verify, &err);
    if (!s) {
        fprintf(stderr, "cds-etl: %s\n", err.msg);
        return 1;
    }
    const json_t *m = etl_shard_manifest(s);
    if (as_json) {
        json_dumpf(m, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
        putchar('\n');
    } else {
        const etl_npy_view *x = etl_shard_x(s);
        printf("shard      %s\n", dir);
        printf("dataset    %s (%s split, shard %lld)\n", json_string_value(json_object_get(m, "dataset")),
               json_string_value(json_object_get(m, "split")), (long long)json_integer_value(json_object_get(m, "shard")));
        printf("version    %s\n", json_string_value(json_object_get(m, "dataset_version")) ?: "(not stamped)");
        printf("rows       %lld\n", (long long)etl_shard_nrows(s));
        printf("x          %s [", etl_dtype_name(x->dtype));
        for (int d = 0; d < x->ndim; d++)
            printf("%s%lld", d ? ", " : "", (long long)x->shape[d]);
        printf("]\n");
        printf("classes    %lld\n", (long long)json_integer_value(json_object_get(m, "num_classes")));
        const json_t *src = json_object_get(m, "source");
        printf("source     %s\n", json_string_value(json_object_get(src, "query")));
        printf("server     %s\n", json_string_value(json_object_get(json_object_get(src, "server"), "version")));
        printf("unloaded   %s\n", json_string_value(json_object_get(m, "unloaded_at")));
        const char *sum = json_integer_value(json_object_get(m, "format_version")) == 1 ? "SHA-256" : "XXH3-128";
        if (verify)
            printf("check      sizes, shapes and %s of every file match the manifest\n", sum);
        else
            printf("check      sizes and shapes match the manifest (checksums not verified)\n");
    }
    etl_shard_close(s);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "unload") == 0)
        return cmd_unload(argc - 1, argv + 1);
    if (strcmp(argv[1], "inspect") == 0)
        return cmd_inspect(argc - 1, argv + 1);
    fprintf(stderr, "cds-etl: unknown command '%s' (use unload or inspect)\n", argv[1]);
    return 2;
}
