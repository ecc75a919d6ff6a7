/* gen-criteo: make a table shaped like the raw Criteo click logs, with a
 * signal a model can learn, for tests and benchmarks of the Criteo pipeline
 * when the real 1 TB of logs is not at hand.
 *
 * Table (default criteo_raw): id bigint primary key, label int, i1..i13 int,
 * c1..c26 text, as the Criteo Kaggle/Terabyte files have them.
 *
 *   i_k   NULL with a per-column rate of 5..20%; otherwise a heavy-tailed
 *         non-negative count floor(exp(mu_k + sigma_k * z)) - 1, z ~ N(0,1)
 *         (many zeros and small counts, a long tail), capped at 2^31 - 1.
 *   c_j   missing with a per-column rate of 2..15% (half NULL, half the empty
 *         string); otherwise one of V_j values of 8 lowercase hex digits (V_j
 *         from 3 to 100000, like the real columns), drawn with a Zipf-like
 *         law: rank r = floor((V_j + 1)^u) - 1, u ~ U(0,1), so
 *         P(r) ~ 1 / (r + 1).  The string of rank r is a hash of the seed,
 *         the column and r.
 *   label 1 with probability sigmoid(b + 0.8 (log1p(i1) - 1.5)
 *         - 0.6 (log1p(i2) - 2) + 1.4 [c1 rank % 4 == 0] - 1.1 [c2 rank % 3 == 1]
 *         - 0.5 [i1 missing]); b puts the positive rate near 25%.
 *
 * Everything comes from one xoshiro256** stream seeded by splitmix64(--seed)
 * (the engine's generator, nn/nn_rng.h), consumed row by row in id order, so a seed always makes the same table
 * (with the same libm: exp, log and pow feed the draws).
 * Rows go through one COPY ... (FORMAT binary); the table is created, filled
 * and given its primary key in one transaction (nothing half-made on
 * failure), and an existing table is refused unless --replace.  Errors are
 * one line "gen-criteo: ..." on stderr, exit 1; bad usage exits 2. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "cds_cli.h"
#include "cds_err.h"
#include "cds_util.h"
#include "nn_rng.h"
#include "etl_pgcopy.h"

#define PROG "gen-criteo"
#define N_INT 13
#define N_CAT 26
#define COPY_CHUNK (1u << 20)
#define ROW_MAX (2 + 12 + 8 + N_INT * 8 + N_CAT * 12)

typedef struct options {
    const char *dsn;
    const char *table;
    int64_t rows;
    uint64_t seed;
    int replace;
} options;

/* ---- the columns ----------------------------------------------------------- */

/* Vocabulary sizes of c1..c26, spread like the real columns' cardinalities. */
static const uint32_t cat_vocab[N_CAT] = {
    1400, 550, 100000, 40000, 300, 24, 12000, 630, 3, 50000, 5500, 90000, 3200,
    27,   14000, 80000, 10, 5600, 2100, 4, 70000, 17, 15, 30000, 105, 25000,
};

static double int_null_rate(int k)
{
    return 0.05 + 0.15 * (double)((k * 7) % 13) / 12.0;
}

static double cat_missing_rate(int j)
{
    return 0.02 + 0.13 * (double)((j * 5) % 26) / 25.0;
}

/* A heavy-tailed count for integer column k, or -1 for NULL. */
static int64_t gen_int(nn_rng *r, int k)
{
    double mu = 0.5 + 0.25 * k, sigma = 1.0 + 0.15 * (k % 5);
    int null = nn_rng_unit(r) < int_null_rate(k);
    double x = mu + sigma * nn_rng_normal(r); /* drawn either way: a fixed stream */
    if (null)
        return -1;
    double v = floor(exp(fmin(x, 21.4))) - 1.0; /* exp(21.4) < 2^31 */
    return v < 0 ? 0 : (int64_t)v;
}

/* A Zipf-like rank in [0, V) for categorical column j, or -1 for missing
 * (*empty says whether missing is '' rather than NULL). */
static int64_t gen_cat_rank(nn_rng *r, int j, int *empty)
{
    double m = nn_rng_unit(r), u = nn_rng_unit(r);
    *empty = m < cat_missing_rate(j) / 2;
    if (m < cat_missing_rate(j))
        return -1;
    double v = cat_vocab[j];
    int64_t rank = (int64_t)floor(pow(v + 1.0, u)) - 1;
    return rank < 0 ? 0 : rank >= (int64_t)v ? (int64_t)v - 1 : rank;
}

/* The 8 hex digits of rank `rank` in column j. */
static void cat_string(uint64_t seed, int j, int64_t rank, char out[9])
{
    uint64_t x = seed ^ ((uint64_t)(j + 1) << 40) ^ (uint64_t)rank;
    snprintf(out, 9, "%08x", (unsigned)(nn_splitmix64(&x) & 0xffffffffu));
}

static int gen_label(nn_rng *r, int64_t i1, int64_t i2, int64_t c1, int64_t c2)
{
    double z = -1.33;
    z += i1 < 0 ? -0.5 : 0.8 * (log1p((double)i1) - 1.5);
    z += i2 < 0 ? 0.0 : -0.6 * (log1p((double)i2) - 2.0);
    z += c1 >= 0 && c1 % 4 == 0 ? 1.4 : 0.0;
    z += c2 >= 0 && c2 % 3 == 1 ? -1.1 : 0.0;
    return nn_rng_unit(r) < 1.0 / (1.0 + exp(-z));
}

static int refuse_existing(PGconn *c, const char *quoted, const char *table, cds_err *err)
{
    int ex = etl_pg_table_exists(c, quoted, err);
    if (ex == 1)
        return cds_errf(err, "table %s already exists: pass --replace to drop and regenerate it, or --table to write elsewhere",
                        table);
    return ex < 0 ? -1 : 0;
}

/* ---- COPY (FORMAT binary) -------------------------------------------------- */

/* Generates row `id` and appends it; returns its label. */
static int put_row(etl_copybuf *b, nn_rng *r, uint64_t seed, int64_t id)
{
    int64_t iv[N_INT], rank[N_CAT];
    int empty[N_CAT];
    for (int k = 0; k < N_INT; k++)
        iv[k] = gen_int(r, k);
    for (int j = 0; j < N_CAT; j++)
        rank[j] = gen_cat_rank(r, j, &empty[j]);
    int label = gen_label(r, iv[0], iv[1], rank[0], rank[1]);

    etl_copy_put16(b, 2 + N_INT + N_CAT);
    etl_copy_put32(b, 8);
    etl_copy_put64(b, (uint64_t)id);
    etl_copy_put32(b, 4);
    etl_copy_put32(b, (uint32_t)label);
    for (int k = 0; k < N_INT; k++) {
        if (iv[k] < 0) {
            etl_copy_put32(b, UINT32_MAX); /* -1: NULL */
        } else {
            etl_copy_put32(b, 4);
            etl_copy_put32(b, (uint32_t)iv[k]);
        }
    }
    for (int j = 0; j < N_CAT; j++) {
        if (rank[j] < 0) {
            etl_copy_put32(b, empty[j] ? 0 : UINT32_MAX);
            continue;
        }
        char s[9];
        cat_string(seed, j, rank[j], s);
        etl_copy_put32(b, 8);
        memcpy(b->buf + b->len, s, 8);
        b->len += 8;
    }
    return label;
}

/* The state of the rows callback. */
typedef struct row_source {
    const options *o;
    int64_t positives;
} row_source;

/* Every row, in id order, from one stream seeded by --seed. */
static int put_rows(etl_copybuf *b, void *ctx, cds_err *err)
{
    row_source *src = ctx;
    nn_rng r;
    nn_rng_seed(&r, src->o->seed);
    int rc = 0;
    for (int64_t id = 1; rc == 0 && id <= src->o->rows; id++) {
        src->positives += put_row(b, &r, src->o->seed, id);
        rc = etl_copy_row_end(b, err);
    }
    return rc;
}

/* The column list of the table. */
static void create_columns(char *out, size_t outsz)
{
    size_t n = (size_t)snprintf(out, outsz, "(id bigint NOT NULL, label int NOT NULL");
    for (int k = 1; k <= N_INT && n < outsz; k++)
        n += (size_t)snprintf(out + n, outsz - n, ", i%d int", k);
    for (int j = 1; j <= N_CAT && n < outsz; j++)
        n += (size_t)snprintf(out + n, outsz - n, ", c%d text", j);
    if (n < outsz)
        snprintf(out + n, outsz - n, ")");
}

static int generate(PGconn *c, const options *o, int64_t *positives, cds_err *err)
{
    char *q = PQescapeIdentifier(c, o->table, strlen(o->table));
    if (!q)
        return etl_pg_fail(c, NULL, "quoting the table name", err);
    int rc = o->replace ? 0 : refuse_existing(c, q, o->table, err);
    PQfreemem(q);
    char columns[1024];
    create_columns(columns, sizeof columns);
    row_source src = {o, 0};
    etl_pg_table_load l = {.table = o->table, .columns = columns, .copy_columns = "", .replace = o->replace,
                       .chunk = COPY_CHUNK, .row_max = ROW_MAX, .rows = put_rows, .ctx = &src,
                       .stop = PROG " stopped"};
    if (rc == 0)
        rc = etl_pg_load_table(c, &l, err);
    *positives = src.positives;
    return rc;
}

/* ---- main ------------------------------------------------------------------ */

static void usage(FILE *out)
{
    fputs("usage: gen-criteo [--rows N] [--seed S] [--table T] [--replace] [--dsn DSN]\n"
          "Generates N rows shaped like raw Criteo (id bigint primary key, label int,\n"
          "i1..i13 int with NULLs, c1..c26 text of 8 hex digits with NULLs and empties)\n"
          "into table T, with a planted signal (label depends on i1, i2, c1, c2; about 25%\n"
          "positive).  The same seed makes the same table.\n"
          "  --rows N      rows to make (default 100000)\n"
          "  --seed S      random seed (default 1)\n"
          "  --table T     table name (default criteo_raw)\n"
          "  --replace     drop an existing table first (otherwise it is refused)\n"
          "  --dsn DSN     libpq connection string or URI (default: PGHOST, PGPORT, PGUSER,\n"
          "                PGDATABASE); give the password in PGPASSWORD or ~/.pgpass\n"
          "Exit status: 0 done, 1 failed (no table left half-made), 2 bad usage.\n",
          out);
}

static int parse_args(int argc, char **argv, options *o)
{
    enum { O_ROWS = 256, O_SEED, O_TABLE, O_REPLACE, O_DSN, O_HELP };
    static const struct option opts[] = {
        {"rows", required_argument, 0, O_ROWS},   {"seed", required_argument, 0, O_SEED},
        {"table", required_argument, 0, O_TABLE}, {"replace", no_argument, 0, O_REPLACE},
        {"dsn", required_argument, 0, O_DSN},     {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    *o = (options){NULL, "criteo_raw", 100000, 1, 0};
    cds_cli cli;
    cds_cli_init(&cli, PROG, NULL, argc, argv, "", opts);
    int ch;
    int64_t v;
    while ((ch = cds_cli_next(&cli)) != CDS_CLI_END) {
        switch (ch) {
        case O_ROWS:
            if (cds_parse_i64(cli.arg, 1, INT64_C(1) << 40, &o->rows) != 0) {
                cds_cli_usage(&cli, "bad --rows '%s': give a whole number from 1 to 2^40", cli.arg);
                return -1;
            }
            break;
        case O_SEED:
            if (cds_parse_i64(cli.arg, 0, INT64_MAX, &v) != 0) {
                cds_cli_usage(&cli, "bad --seed '%s': give a whole number, 0 or more", cli.arg);
                return -1;
            }
            o->seed = (uint64_t)v;
            break;
        case O_TABLE: o->table = cli.arg; break;
        case O_REPLACE: o->replace = 1; break;
        case O_DSN: o->dsn = cli.arg; break;
        case O_HELP: usage(stdout); exit(0);
        default: cds_cli_fail(&cli); return -1;
        }
    }
    if (optind < argc) {
        cds_cli_usage(&cli, "unexpected argument '%s'", argv[optind]);
        return -1;
    }
    if (!o->table[0] || strlen(o->table) > 63) {
        cds_cli_usage(&cli, "bad --table: give a name of 1 to 63 characters");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    options o;
    if (parse_args(argc, argv, &o) != 0)
        return 2;
    cds_err err = {0};
    int64_t t0 = cds_mono_ms(), positives = 0;
    PGconn *c = etl_pg_connect(o.dsn, PROG, &err);
    int rc = c ? generate(c, &o, &positives, &err) : -1;
    if (rc == 0)
        printf(PROG ": %s: %lld rows, positive rate %.4f, %.2f s\n", o.table, (long long)o.rows,
               (double)positives / (double)o.rows, (double)(cds_mono_ms() - t0) / 1000.0);
    else
        fprintf(stderr, PROG ": %s\n", err.msg);
    PQfinish(c);
    return rc == 0 ? 0 : 1;
}
