/* cds-train: train one model on one or more shards in a single process.
 *
 * It is the sequential baseline MOP is compared with, and the quickest way to
 * try a spec: every epoch visits the --data shards in the order given (each
 * in its own seeded order), evaluates on the --valid shards, prints one line
 * and, with --out, writes a checkpoint.  --resume continues from a
 * checkpoint exactly where it stopped (bit-identical to an uninterrupted run
 * with the same --threads), skipping shards it had already visited. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cds_cli.h"
#include "cds_layout.h"
#include "cds_util.h"
#include "nn_backend.h"
#include "nn_par.h"
#include "nn_train.h"

#define MAX_SHARDS 4096

typedef struct shard_list {
    char *dir[MAX_SHARDS];
    int index[MAX_SHARDS];
    int n;
} shard_list;

static void usage(FILE *out)
{
    fputs("usage: cds-train --data DIR... --spec MODEL.json --epochs N [--valid DIR...]\n"
          "                 [--resume CKPT] [--out DIR] [--device D] [--threads T] [--json]\n"
          "                 [--no-progress]\n"
          "Trains the model of a spec (docs/models.md) on shards written by cds-etl.\n"
          "  --data DIR     a shard directory (shard-K) or a split directory holding shard-K\n"
          "                 directories; repeat or list several after one --data\n"
          "  --valid DIR    the same, for evaluation after every epoch\n"
          "  --spec FILE    {\"model\": {...}, \"train\": {...}}; optional with --resume\n"
          "  --epochs N     train until N epochs are done (counting those of a resumed checkpoint)\n"
          "  --resume CKPT  continue from a checkpoint written by --out\n"
          "  --out DIR      write DIR/epoch-E.ckpt after every epoch\n"
          "  --device D     cpu, cuda:N (cuda is cuda:0) or auto, the default: cuda:0 when a\n"
          "                 CUDA device is visible, else the CPU (said once on stderr)\n"
          "  --threads T    threads (default: all cores); results are reproducible per T\n"
          "                 and device\n"
          "  --json         one JSON object per epoch on stdout instead of a text line\n"
          "Exit status: 0 done, 1 training failed, 2 bad usage or no such device.\n",
          out);
}

static int by_index(const void *a, const void *b)
{
    return cds_layout_shard_index(*(char *const *)a) - cds_layout_shard_index(*(char *const *)b);
}

/* Adds DIR if it is a shard, or its shard-K children (in K order) if it is a
 * split directory. */
static int add_shards(const cds_cli *cli, shard_list *l, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    const char *base = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
    if (access(path, F_OK) == 0) {
        if (l->n == MAX_SHARDS)
            return cds_cli_usage(cli, "more than %d shards: give fewer --data and --valid directories", MAX_SHARDS);
        l->dir[l->n] = strdup(dir);
        l->index[l->n] = cds_layout_shard_index(base) >= 0 ? cds_layout_shard_index(base) : l->n;
        l->n++;
        return 0;
    }
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "cds-train: %s: %s: give a shard directory (shard-K) or a split directory holding them\n",
                dir, strerror(errno));
        return 2;
    }
    char *names[MAX_SHARDS];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < MAX_SHARDS)
        if (cds_layout_shard_index(e->d_name) >= 0)
            names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, by_index);
    int rc = n == 0 ? (fprintf(stderr, "cds-train: %s holds no shard-K directories: run cds-etl unload first\n", dir), 2)
                    : 0;
    for (int i = 0; i < n; i++) {
        if (rc == 0 && l->n < MAX_SHARDS) {
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            l->dir[l->n] = strdup(path);
            l->index[l->n++] = cds_layout_shard_index(names[i]);
        }
        free(names[i]);
    }
    return rc;
}

static void free_shards(shard_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->dir[i]);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *s = malloc(cap);
    size_t r;
    while (s && (r = fread(s + len, 1, cap - len - 1, f)) > 0) {
        len += r;
        if (len + 1 == cap) {
            char *t = realloc(s, cap *= 2);
            if (!t) {
                free(s);
                s = NULL;
            }
            s = t;
        }
    }
    fclose(f);
    if (s)
        s[len] = 0;
    return s;
}

typedef struct progress_ctx {
    int enabled;
    int64_t t0, last;
} progress_ctx;

static int progress(void *ctx, int64_t done, int64_t total, const nn_pass_stats *st)
{
    progress_ctx *p = ctx;
    int64_t now = cds_mono_ms();
    if (!p->enabled || (now - p->last < 200 && done < total))
        return 0;
    p->last = now;
    int width = 30, fill = total ? (int)(width * done / total) : width;
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
    bar[width] = 0;
    double secs = (double)(now - p->t0) / 1000.0;
    fprintf(stderr, "\r[%s] %3d%% %lld/%lld  loss %.4f  top1 %.4f  %.0f samples/s ", bar,
            total ? (int)(100 * done / total) : 100, (long long)done, (long long)total,
            st->rows ? st->loss_sum / (double)st->rows : 0.0, st->rows ? (double)st->top1 / (double)st->rows : 0.0,
            secs > 0 ? (double)done / secs : 0.0);
    fflush(stderr);
    return 0;
}

/* Whether --out can be neither written nor made, checked before training
 * (errno says why); the directory itself is made only at the first save. */
static int out_unwritable(const char *out)
{
    struct stat st;
    if (stat(out, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            errno = ENOTDIR;
            return 1;
        }
        return access(out, W_OK | X_OK) != 0;
    }
    if (errno != ENOENT)
        return 1;
    /* The nearest existing ancestor must let us make the rest. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", out);
    for (;;) {
        char *slash = strrchr(dir, '/');
        if (!slash)
            return access(".", W_OK | X_OK) != 0;
        if (slash == dir)
            return access("/", W_OK | X_OK) != 0;
        *slash = '\0';
        if (stat(dir, &st) == 0)
            return !S_ISDIR(st.st_mode) ? (errno = ENOTDIR, 1) : access(dir, W_OK | X_OK) != 0;
        if (errno != ENOENT)
            return 1;
    }
}

typedef struct run_opts {
    shard_list data, valid;
    const char *spec, *resume, *out;
    const char *device; /* as given (NULL: auto) */
    nn_place place;     /* ... and as resolved on this machine */
    char device_name[16];
    int epochs, threads, json, show_progress;
} run_opts;

static int visited_already(nn_trainer *t, int index)
{
    const int32_t *v;
    size_t n = nn_trainer_visited(t, &v);
    for (size_t i = 0; i < n; i++)
        if (v[i] == index)
            return 1;
    return 0;
}

static void print_epoch(const run_opts *o, nn_trainer *t, const nn_pass_stats *tr, const nn_pass_stats *va,
                        double secs)
{
    double rows = tr->rows ? (double)tr->rows : 1.0, vrows = va->rows ? (double)va->rows : 1.0;
    double sps = secs > 0 ? (double)tr->rows / secs : 0;
    long long e = (long long)nn_trainer_epoch(t);
    if (o->json) {
        printf("{\"epoch\":%lld,\"lr\":%.9g,\"train_rows\":%lld,\"loss\":%.6f,\"top1\":%.6f,\"top5\":%.6f,"
               "\"samples_per_s\":%.1f,\"seconds\":%.3f,\"device\":\"%s\"",
               e, nn_trainer_lr(t), (long long)tr->rows, tr->loss_sum / rows, (double)tr->top1 / rows,
               (double)tr->top5 / rows, sps, secs, o->device_name);
        if (va->rows)
            printf(",\"valid_rows\":%lld,\"valid_loss\":%.6f,\"valid_top1\":%.6f,\"valid_top5\":%.6f",
                   (long long)va->rows, va->loss_sum / vrows, (double)va->top1 / vrows, (double)va->top5 / vrows);
        printf("}\n");
    } else {
        printf("epoch %lld/%d  loss %.4f  top1 %.4f  top5 %.4f", e, o->epochs, tr->loss_sum / rows,
               (double)tr->top1 / rows, (double)tr->top5 / rows);
        if (va->rows)
            printf("  |  valid loss %.4f  top1 %.4f  top5 %.4f", va->loss_sum / vrows, (double)va->top1 / vrows,
                   (double)va->top5 / vrows);
        printf("  |  %.0f samples/s  %.1f s\n", sps, secs);
    }
    fflush(stdout);
}

static int train_epochs(const run_opts *o, nn_trainer *t)
{
    cds_err err;
    progress_ctx pc = {.enabled = o->show_progress};
    while (nn_trainer_epoch(t) < o->epochs) {
        nn_pass_stats sum = {0}, va = {0};
        int64_t t0 = cds_mono_ms();
        pc.t0 = t0;
        for (int i = 0; i < o->data.n; i++) {
            if (visited_already(t, o->data.index[i]))
                continue;
            nn_pass_stats st;
            if (nn_trainer_train_shard(t, o->data.dir[i], o->data.index[i], progress, &pc, &st, &err) != 0) {
                fprintf(stderr, "%scds-train: %s\n", pc.enabled ? "\n" : "", err.msg);
                return 1;
            }
            sum.rows += st.rows;
            sum.loss_sum += st.loss_sum;
            sum.top1 += st.top1;
            sum.top5 += st.top5;
        }
        double secs = (double)(cds_mono_ms() - t0) / 1000.0;
        if (pc.enabled)
            fputs("\r\033[K", stderr);
        nn_trainer_end_epoch(t);
        for (int i = 0; i < o->valid.n; i++)
            if (nn_trainer_eval_shard(t, o->valid.dir[i], &va, &err) != 0) {
                fprintf(stderr, "cds-train: %s\n", err.msg);
                return 1;
            }
        print_epoch(o, t, &sum, &va, secs);
        if (o->out) {
            /* --out is made at the first checkpoint, so a run that fails
             * before it leaves no directory behind. */
            char path[4096];
            snprintf(path, sizeof path, "%s/epoch-%lld.ckpt", o->out, (long long)nn_trainer_epoch(t));
            if (cds_mkdirs(o->out, &err) != 0 || nn_trainer_save(t, path, &err) != 0) {
                fprintf(stderr, "cds-train: %s\n", err.msg);
                return 1;
            }
        }
    }
    return 0;
}

static int parse_args(int argc, char **argv, run_opts *o)
{
    enum { O_HELP = 300, O_JSON, O_NOPROG, O_DEVICE };
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'},   {"valid", required_argument, 0, 'v'},
        {"spec", required_argument, 0, 's'},   {"epochs", required_argument, 0, 'e'},
        {"resume", required_argument, 0, 'r'}, {"out", required_argument, 0, 'o'},
        {"threads", required_argument, 0, 't'}, {"json", no_argument, 0, O_JSON},
        {"no-progress", no_argument, 0, O_NOPROG}, {"help", no_argument, 0, O_HELP},
        {"device", required_argument, 0, O_DEVICE}, {0, 0, 0, 0}};
    shard_list *last = NULL;
    int c, rc;
    int64_t v;
    cds_cli cli;
    cds_cli_init(&cli, "cds-train", NULL, argc, argv, "", opts);
    while ((c = cds_cli_next(&cli)) != CDS_CLI_END) {
        switch (c) {
        case 'd':
        case 'v':
            last = c == 'd' ? &o->data : &o->valid;
            if ((rc = add_shards(&cli, last, cli.arg)) != 0)
                return rc;
            /* further plain arguments belong to the same list: --data a b c */
            while (optind < argc && argv[optind][0] != '-')
                if ((rc = add_shards(&cli, last, argv[optind++])) != 0)
                    return rc;
            break;
        case 's': o->spec = cli.arg; break;
        case 'r': o->resume = cli.arg; break;
        case 'o': o->out = cli.arg; break;
        case 'e':
            if (cds_parse_i64(cli.arg, 1, 1000000, &v) != 0)
                return cds_cli_usage(&cli, "bad --epochs '%s': give a whole number of at least 1", cli.arg);
            o->epochs = (int)v;
            break;
        case 't':
            if (cds_parse_i64(cli.arg, 1, 1024, &v) != 0)
                return cds_cli_usage(&cli, "bad --threads '%s': give a whole number from 1 to 1024", cli.arg);
            o->threads = (int)v;
            break;
        case O_DEVICE: {
            cds_err err;
            /* The spelling only; main resolves it once the usage is sound. */
            if (nn_place_parse(cli.arg, &o->place, NULL, &err) != 0)
                return cds_cli_usage(&cli, "bad --device '%s': use cpu, cuda:N (N a device ordinal) or auto",
                                     cli.arg);
            o->device = cli.arg;
            break;
        }
        case O_JSON: o->json = 1; break;
        case O_NOPROG: o->show_progress = 0; break;
        case O_HELP: usage(stdout); return -1;
        default: return cds_cli_fail(&cli);
        }
    }
    if (optind < argc)
        return cds_cli_usage(&cli, "unexpected argument '%s'", argv[optind]);
    if (o->data.n == 0)
        return cds_cli_usage(&cli, "--data is required");
    if (!o->epochs)
        return cds_cli_usage(&cli, "--epochs is required");
    if (!o->spec && !o->resume)
        return cds_cli_usage(&cli, "--spec is required (or --resume a checkpoint)");
    return 0;
}

/* Returns 0 with *out set, 1 (the checkpoint could not be used) or 2 (bad
 * spec or usage). */
static int make_trainer(const run_opts *o, nn_trainer **out)
{
    cds_err err;
    char *spec = NULL;
    *out = NULL;
    if (o->spec && !(spec = read_file(o->spec))) {
        fprintf(stderr, "cds-train: cannot read --spec %s: %s\n", o->spec, strerror(errno));
        return 2;
    }
    int rc = 0;
    nn_trainer *fresh = spec ? nn_trainer_new_at(spec, o->place, &err) : NULL;
    if (spec && !fresh) {
        fprintf(stderr, "cds-train: --spec %s: %s\n", o->spec, err.msg);
        rc = 2;
    } else if (o->resume) {
        nn_trainer *t = nn_trainer_load_at(o->resume, 0, o->place, &err);
        if (!t) {
            fprintf(stderr, "cds-train: %s\n", err.msg);
            rc = 1;
        } else if (fresh && strcmp(nn_trainer_spec(fresh), nn_trainer_spec(t)) != 0) {
            fprintf(stderr, "cds-train: --spec %s is not the spec checkpoint %s was trained with: drop --spec to use "
                            "the checkpoint's\n", o->spec, o->resume);
            nn_trainer_free(t);
            rc = 2;
        } else {
            *out = t;
        }
        nn_trainer_free(fresh);
    } else {
        *out = fresh;
    }
    free(spec);
    return rc;
}

int main(int argc, char **argv)
{
    static run_opts o;
    o.show_progress = isatty(2);
    int rc = parse_args(argc, argv, &o);
    if (rc != 0) {
        free_shards(&o.data);
        free_shards(&o.valid);
        return rc < 0 ? 0 : rc;
    }
    nn_par_set_threads(o.threads ? o.threads : (int)sysconf(_SC_NPROCESSORS_ONLN));
    /* The device first: asking for a GPU this machine lacks is refused
     * before any file is read or made.  A fallback's note waits until
     * training starts, so a run refused for its spec or checkpoint still
     * says only why. */
    cds_err err;
    char note[512] = "";
    if (nn_place_pick(o.device, &o.place, note, sizeof note, &err) != 0) {
        fprintf(stderr, "cds-train: %s\n", err.msg);
        rc = 2;
    }
    nn_place_name(o.place, o.device_name, sizeof o.device_name);
    if (rc == 0 && o.out && out_unwritable(o.out)) {
        fprintf(stderr, "cds-train: --out %s: %s: give a directory this user can write, or that can be made\n", o.out,
                strerror(errno));
        rc = 2;
    }
    nn_trainer *t = NULL;
    if (rc == 0)
        rc = make_trainer(&o, &t);
    if (t && note[0])
        fprintf(stderr, "cds-train: %s (give --device cpu when that is meant)\n", note);
    if (t && !o.json)
        printf("cds-train: %s, %zu parameters, %d training shards, %s epoch %lld of %d, on %s, %d threads\n",
                nn_model_arch(nn_trainer_model(t)), nn_model_nparams(nn_trainer_model(t)), o.data.n,
                nn_trainer_epoch(t) > 0 ? "resuming at" : "from", (long long)nn_trainer_epoch(t) + 1, o.epochs,
                o.device_name, nn_par_threads());
    if (t)
        rc = train_epochs(&o, t);
    nn_trainer_free(t);
    free_shards(&o.data);
    free_shards(&o.valid);
    return rc;
}
