/* load-fashion-mnist: load Fashion-MNIST (Debian's dataset-fashion-mnist) into
 * two PostgreSQL/Greenplum tables, the source the Cerebro-DS study trained on.
 *
 * Input: the four IDX files train-{images-idx3,labels-idx1}-ubyte.gz and
 * t10k-... in /usr/share/datasets/fashion-mnist (--dir overrides; plain,
 * uncompressed files are read too).  IDX is big-endian: a magic number
 * (0x00000803 for a 3-D ubyte array, 0x00000801 for 1-D), one uint32 per
 * dimension, then the bytes in row-major order.  Each file is inflated whole
 * with zlib and checked: magic, 28x28 images, as many labels as images, and
 * exactly as many bytes as the header promises (a truncated or padded file
 * is refused).
 *
 * Output: PREFIX_train and PREFIX_test (id int primary key, pixels bytea of
 * 784 bytes, or smallint[] with --as-array, label int), where id is the
 * 0-based position in the IDX file.  Rows go through one COPY ... (FORMAT
 * binary) per table; each table is created, filled and given its primary key
 * in one transaction, so a failure leaves no half table.  Both tables are
 * checked before either is touched: an existing one is refused unless
 * --replace, which drops it inside the same transaction.
 *
 * The connection is libpq's defaults (PG* variables, ~/.pgpass) or --dsn; the
 * DSN is never printed (it may hold a password), only host, port and
 * database.  Errors are one line "load-fashion-mnist: ..." on stderr, exit 1;
 * bad usage exits 2. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <libpq-fe.h>
#include <zlib.h>

#include "cds_cli.h"
#include "cds_err.h"
#include "cds_util.h"
#include "etl_pgcopy.h"

#define PROG "load-fashion-mnist"
#define DEFAULT_DIR "/usr/share/datasets/fashion-mnist"
#define IDX_IMAGES_MAGIC 0x00000803u
#define IDX_LABELS_MAGIC 0x00000801u
#define IMG_SIDE 28
#define IMG_BYTES (IMG_SIDE * IMG_SIDE)
#define COPY_CHUNK (1u << 20)

typedef struct options {
    const char *dir;
    const char *dsn;
    const char *prefix;
    int as_array;
    int replace;
} options;

/* One IDX file inflated into memory. */
typedef struct idx_file {
    uint8_t *buf;
    size_t len;
    uint32_t count;       /* first dimension */
    const uint8_t *items; /* after the header */
} idx_file;

/* ---- IDX files ----------------------------------------------------------- */

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* DIR/NAME.gz, or DIR/NAME when only the uncompressed file is there. */
static void idx_path(const char *dir, const char *name, char *out, size_t outsz)
{
    struct stat st;
    snprintf(out, outsz, "%s/%s.gz", dir, name);
    if (stat(out, &st) != 0) {
        char plain[4096];
        snprintf(plain, sizeof plain, "%s/%s", dir, name);
        if (stat(plain, &st) == 0)
            snprintf(out, outsz, "%s", plain);
    }
}

static int inflate_file(const char *path, idx_file *f, cds_err *err)
{
    gzFile gz = gzopen(path, "rb");
    if (!gz)
        return cds_errf(err, "cannot open %s: install dataset-fashion-mnist or pass --dir DIR holding the IDX files",
                        path);
    size_t cap = 1u << 22, len = 0;
    uint8_t *buf = malloc(cap);
    int n = 0;
    while (buf && (n = gzread(gz, buf + len, (unsigned)(cap - len))) > 0) {
        len += (size_t)n;
        if (len == cap) {
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    int zerr = Z_OK;
    const char *zmsg = gzerror(gz, &zerr);
    char zcopy[200];
    snprintf(zcopy, sizeof zcopy, "%s", zmsg && zmsg[0] ? zmsg : "gzip error");
    int close_rc = gzclose_r(gz);
    if (!buf)
        return cds_err_nomem(err, "out of memory reading %s", path);
    if (n < 0 || zerr != Z_OK || close_rc != Z_OK) {
        free(buf);
        return cds_errf(err, "%s is corrupt or truncated (%s): reinstall dataset-fashion-mnist or fetch the file again",
                        path, zcopy);
    }
    f->buf = buf;
    f->len = len;
    return 0;
}

/* Reads and checks an IDX file: magic, shape, and exact size. */
static int idx_load(const char *path, uint32_t magic, idx_file *f, cds_err *err)
{
    memset(f, 0, sizeof *f);
    if (inflate_file(path, f, err) != 0)
        return -1;
    size_t hdr = magic == IDX_IMAGES_MAGIC ? 16 : 8;
    size_t item = magic == IDX_IMAGES_MAGIC ? IMG_BYTES : 1;
    int bad = 0;
    if (f->len < hdr || be32(f->buf) != magic) {
        bad = cds_errf(err, "%s is not an IDX %s file (magic 0x%08x expected): check --dir", path,
                       magic == IDX_IMAGES_MAGIC ? "image" : "label", magic);
    } else if (magic == IDX_IMAGES_MAGIC && (be32(f->buf + 8) != IMG_SIDE || be32(f->buf + 12) != IMG_SIDE)) {
        bad = cds_errf(err, "%s holds %ux%u images, expected 28x28: check --dir", path, be32(f->buf + 8),
                       be32(f->buf + 12));
    } else {
        f->count = be32(f->buf + 4);
        if (f->len != hdr + (size_t)f->count * item)
            bad = cds_errf(err, "%s is %zu bytes, but its header promises %u items (%zu bytes): the file is truncated or corrupt",
                           path, f->len, f->count, hdr + (size_t)f->count * item);
    }
    if (bad) {
        free(f->buf);
        f->buf = NULL;
        return -1;
    }
    f->items = f->buf + hdr;
    return 0;
}

/* ---- COPY (FORMAT binary) ------------------------------------------------- */

/* One row: (id int4, pixels bytea | int2[], label int4). */
static void put_row(etl_copybuf *b, uint32_t id, const uint8_t *img, uint8_t label, int as_array)
{
    etl_copy_put16(b, 3);
    etl_copy_put32(b, 4);
    etl_copy_put32(b, id);
    if (as_array) {
        etl_copy_put32(b, 20 + IMG_BYTES * 6);
        etl_copy_put32(b, 1);  /* ndim */
        etl_copy_put32(b, 0);  /* no NULLs */
        etl_copy_put32(b, 21); /* int2 */
        etl_copy_put32(b, IMG_BYTES);
        etl_copy_put32(b, 1); /* lower bound */
        for (int k = 0; k < IMG_BYTES; k++) {
            etl_copy_put32(b, 2);
            etl_copy_put16(b, img[k]);
        }
    } else {
        etl_copy_put32(b, IMG_BYTES);
        memcpy(b->buf + b->len, img, IMG_BYTES);
        b->len += IMG_BYTES;
    }
    etl_copy_put32(b, 4);
    etl_copy_put32(b, label);
}

/* What the rows callback reads: one split's images and labels. */
typedef struct row_source {
    const idx_file *img, *lab;
    int as_array;
} row_source;

static int put_rows(etl_copybuf *b, void *ctx, cds_err *err)
{
    const row_source *src = ctx;
    int rc = 0;
    for (uint32_t i = 0; rc == 0 && i < src->img->count; i++) {
        put_row(b, i, src->img->items + (size_t)i * IMG_BYTES, src->lab->items[i], src->as_array);
        rc = etl_copy_row_end(b, err);
    }
    return rc;
}

/* ---- one table ------------------------------------------------------------ */

/* Creates, fills and indexes one table in one transaction. */
static int load_table(PGconn *c, const options *o, const char *table, const idx_file *img, const idx_file *lab,
                      cds_err *err)
{
    row_source src = {img, lab, o->as_array};
    etl_pg_table_load l = {
        .table = table,
        .columns = o->as_array ? "(id int NOT NULL, pixels smallint[] NOT NULL, label int NOT NULL)"
                               : "(id int NOT NULL, pixels bytea NOT NULL, label int NOT NULL)",
        .copy_columns = "(id, pixels, label)", .replace = o->replace, .chunk = COPY_CHUNK, .row_max = 8192,
        .rows = put_rows, .ctx = &src, .stop = PROG " stopped"};
    return etl_pg_load_table(c, &l, err);
}

/* ---- main ----------------------------------------------------------------- */

static void usage(FILE *out)
{
    fputs("usage: load-fashion-mnist [--dir DIR] [--dsn DSN] [--table-prefix P] [--as-array] [--replace]\n"
          "Loads Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist into\n"
          "P_train (60000 rows) and P_test (10000 rows): id int primary key (position in the\n"
          "file, from 0), pixels bytea (784 bytes, row-major 28x28), label int (0..9).\n"
          "  --dir DIR          where the *-ubyte.gz files are (default " DEFAULT_DIR ")\n"
          "  --dsn DSN          libpq connection string or URI (default: PGHOST, PGPORT, PGUSER,\n"
          "                     PGDATABASE); give the password in PGPASSWORD or ~/.pgpass\n"
          "  --table-prefix P   table name prefix (default fashion_mnist)\n"
          "  --as-array         store pixels as smallint[] instead of bytea\n"
          "  --replace          drop existing tables first (otherwise they are refused)\n"
          "Exit status: 0 loaded, 1 failed (nothing half-loaded), 2 bad usage.\n",
          out);
}

static int parse_args(int argc, char **argv, options *o)
{
    enum { O_DIR = 256, O_DSN, O_PREFIX, O_ARRAY, O_REPLACE, O_HELP };
    static const struct option opts[] = {
        {"dir", required_argument, 0, O_DIR},          {"dsn", required_argument, 0, O_DSN},
        {"table-prefix", required_argument, 0, O_PREFIX}, {"as-array", no_argument, 0, O_ARRAY},
        {"replace", no_argument, 0, O_REPLACE},        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    *o = (options){DEFAULT_DIR, NULL, "fashion_mnist", 0, 0};
    cds_cli cli;
    cds_cli_init(&cli, PROG, NULL, argc, argv, "", opts);
    int ch;
    while ((ch = cds_cli_next(&cli)) != CDS_CLI_END) {
        switch (ch) {
        case O_DIR: o->dir = cli.arg; break;
        case O_DSN: o->dsn = cli.arg; break;
        case O_PREFIX: o->prefix = cli.arg; break;
        case O_ARRAY: o->as_array = 1; break;
        case O_REPLACE: o->replace = 1; break;
        case O_HELP: usage(stdout); exit(0);
        default: cds_cli_fail(&cli); return -1;
        }
    }
    if (optind < argc) {
        cds_cli_usage(&cli, "unexpected argument '%s'", argv[optind]);
        return -1;
    }
    if (!o->prefix[0] || strlen(o->prefix) > 50) {
        cds_cli_usage(&cli, "bad --table-prefix: give a prefix of 1 to 50 characters");
        return -1;
    }
    return 0;
}

typedef struct split {
    const char *file_stem; /* "train" or "t10k" */
    const char *suffix;    /* table suffix */
    char table[128];
    idx_file img, lab;
} split;

static int read_split(const options *o, split *s, cds_err *err)
{
    char ipath[4096], lpath[4096], name[64];
    snprintf(name, sizeof name, "%s-images-idx3-ubyte", s->file_stem);
    idx_path(o->dir, name, ipath, sizeof ipath);
    snprintf(name, sizeof name, "%s-labels-idx1-ubyte", s->file_stem);
    idx_path(o->dir, name, lpath, sizeof lpath);
    if (idx_load(ipath, IDX_IMAGES_MAGIC, &s->img, err) != 0 || idx_load(lpath, IDX_LABELS_MAGIC, &s->lab, err) != 0)
        return -1;
    if (s->img.count != s->lab.count)
        return cds_errf(err, "%s has %u images but %s has %u labels: the files do not belong together", ipath,
                        s->img.count, lpath, s->lab.count);
    return 0;
}

/* Refuses an existing table unless --replace, before anything is changed. */
static int check_tables(PGconn *c, const options *o, split *splits, int n, cds_err *err)
{
    for (int i = 0; i < n && !o->replace; i++) {
        char *q = PQescapeIdentifier(c, splits[i].table, strlen(splits[i].table));
        int ex = q ? etl_pg_table_exists(c, q, err) : etl_pg_fail(c, NULL, "quoting the table name", err);
        PQfreemem(q);
        if (ex < 0)
            return -1;
        if (ex)
            return cds_errf(err, "table %s already exists: pass --replace to drop and reload it, or --table-prefix to load elsewhere",
                            splits[i].table);
    }
    return 0;
}

int main(int argc, char **argv)
{
    options o;
    if (parse_args(argc, argv, &o) != 0)
        return 2;
    split splits[2] = {{.file_stem = "train", .suffix = "train"}, {.file_stem = "t10k", .suffix = "test"}};
    cds_err err = {0};
    PGconn *c = NULL;
    int rc = 0;
    for (int i = 0; i < 2; i++)
        snprintf(splits[i].table, sizeof splits[i].table, "%s_%s", o.prefix, splits[i].suffix);
    for (int i = 0; rc == 0 && i < 2; i++)
        rc = read_split(&o, &splits[i], &err);
    if (rc == 0 && !(c = etl_pg_connect(o.dsn, PROG, &err)))
        rc = -1;
    if (rc == 0)
        rc = check_tables(c, &o, splits, 2, &err);
    for (int i = 0; rc == 0 && i < 2; i++) {
        int64_t t0 = cds_mono_ms();
        rc = load_table(c, &o, splits[i].table, &splits[i].img, &splits[i].lab, &err);
        if (rc == 0)
            printf(PROG ": %s: %u rows in %.2f s\n", splits[i].table, splits[i].img.count,
                   (double)(cds_mono_ms() - t0) / 1000.0);
        fflush(stdout);
    }
    if (rc != 0)
        fprintf(stderr, PROG ": %s\n", err.msg);
    for (int i = 0; i < 2; i++) {
        free(splits[i].img.buf);
        free(splits[i].lab.buf);
    }
    PQfinish(c);
    return rc == 0 ? 0 : 1;
}
