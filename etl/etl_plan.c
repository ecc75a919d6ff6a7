/* etl_plan: deciding everything about an unload before any row moves.
 *
 * The planner talks to the database once: it learns the server kind (a
 * Greenplum server has gp_segment_configuration), resolves the table (as one
 * identifier, or schema.table) and each column's type, picks the layout
 * (plain columns, MADlib's packed buffers, or the Criteo transform), sizes the
 * feature rows (array dimensions from the first non-NULL row, bytea from
 * --feature-shape), and computes what all shards must share: the sorted
 * dictionary of text labels, the class count, the Criteo bucket edges.  Then it
 * writes one COPY query per stream.  The result is a JSON document from which
 * etl_plan_from_json builds the working struct, so a plan made here and one
 * received through the queue are the same thing.
 *
 * Every identifier from the user goes through PQescapeIdentifier; --where is
 * the user's own SQL and is only wrapped in parentheses.  Shards and the
 * validation split come from two independent 31-bit slices of md5(key::text),
 * which every PostgreSQL and Greenplum computes the same way. */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cds_layout.h"
#include "cds_util.h"
#include "etl_plan_int.h"
#include "etl_value.h"

/* ---- libpq helpers ------------------------------------------------------- */

PGconn *etl_pq_connect(const char *dsn, cds_err *err)
{
    PGconn *c = PQconnectdb(dsn ? dsn : "");
    if (PQstatus(c) != CONNECTION_OK) {
        char *red = etl_dsn_redacted(dsn);
        cds_errf(err, "cannot connect to the database (%s): %s (check the DSN, PGHOST/PGPORT, and the password in PGPASSWORD or ~/.pgpass)",
                 red[0] ? red : "libpq defaults", PQerrorMessage(c));
        free(red);
        PQfinish(c);
        return NULL;
    }
    return c;
}

PGresult *etl_pq_exec(PGconn *c, const char *what, const char *sql, int nparams, const char *const *params,
                      ExecStatusType want, cds_err *err)
{
    PGresult *r = nparams ? PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0) : PQexec(c, sql);
    if (PQresultStatus(r) != want) {
        const char *msg = PQresultErrorMessage(r);
        cds_errf(err, "%s: %s", what, msg && *msg ? msg : PQerrorMessage(c));
        PQclear(r);
        return NULL;
    }
    return r;
}

static char *quote_ident(PGconn *c, const char *name)
{
    char *q = PQescapeIdentifier(c, name, strlen(name));
    char *out = strdup(q ? q : "\"\"");
    PQfreemem(q);
    return out;
}

/* ---- a tiny string builder ----------------------------------------------- */

typedef struct sbuf {
    char *s;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->n + (size_t)need + 1 > b->cap) {
        b->cap = 2 * (b->n + (size_t)need + 1);
        b->s = realloc(b->s, b->cap);
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)need;
}

/* ---- the connection the plan names -------------------------------------- */

static void sb_conninfo(sbuf *b, const char *key, const char *val)
{
    etl_conninfo_append(&b->s, &b->n, &b->cap, key, val);
}

/* Settings that are secret, or name something of this machine only, or that
 * host/port/dbname/user below already say. */
static int conninfo_skipped(const PQconninfoOption *o)
{
    static const char *const skip[] = {"host", "hostaddr", "port", "dbname", "user", "passfile", "service",
                                       "fallback_application_name", NULL};
    if (etl_conninfo_secret(o))
        return 1;
    for (int i = 0; skip[i]; i++)
        if (strcmp(o->keyword, skip[i]) == 0)
            return 1;
    /* dispchar "D": a debug setting. */
    return o->dispchar && strchr(o->dispchar, 'D');
}

/* The server and database c is connected to, as a conninfo string without
 * any password: host (a socket directory stays a path), port, dbname and
 * user as libpq resolved them from the DSN, the PG* variables, a service
 * file or its defaults, then every other setting in force that differs from
 * libpq's built-in default (sslmode=require, application_name, ...).  A
 * process on another host given this string reaches the same server and
 * database whatever its own environment says. */
char *etl_dsn_resolved(PGconn *c)
{
    sbuf b = {0};
    sb_add(&b, "%s", "");
    const char *v;
    if ((v = PQhost(c)) && *v)
        sb_conninfo(&b, "host", v);
    if ((v = PQport(c)) && *v)
        sb_conninfo(&b, "port", v);
    if ((v = PQdb(c)) && *v)
        sb_conninfo(&b, "dbname", v);
    if ((v = PQuser(c)) && *v)
        sb_conninfo(&b, "user", v);
    PQconninfoOption *opts = PQconninfo(c);
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!o->val || !*o->val || conninfo_skipped(o) || (o->compiled && strcmp(o->val, o->compiled) == 0))
            continue;
        sb_conninfo(&b, o->keyword, o->val);
    }
    PQconninfoFree(opts);
    return b.s;
}

/* ---- what the planner learns --------------------------------------------- */

typedef struct table_info {
    char *qualified; /* quoted, as used in SQL */
    char *display;
    char oid[32];    /* pg_class oid, as text */
    size_t n;
    char **names;
    uint32_t *oids;
    char **pk;
    size_t n_pk;
} table_info;

static void table_info_free(table_info *t)
{
    free(t->qualified);
    free(t->display);
    for (size_t i = 0; i < t->n; i++)
        free(t->names[i]);
    free(t->names);
    free(t->oids);
    for (size_t i = 0; i < t->n_pk; i++)
        free(t->pk[i]);
    free(t->pk);
    memset(t, 0, sizeof *t);
}

/* Resolves a table name: first as one identifier (a name with a space or a
 * dot is a name), then as schema.table. */
static int resolve_table(PGconn *c, const char *name, table_info *t, cds_err *err)
{
    memset(t, 0, sizeof *t);
    char *candidates[2] = {quote_ident(c, name), NULL};
    const char *dot = strchr(name, '.');
    if (dot) {
        char *schema = strndup(name, (size_t)(dot - name));
        char *qs = quote_ident(c, schema), *qt = quote_ident(c, dot + 1);
        candidates[1] = malloc(strlen(qs) + strlen(qt) + 2);
        sprintf(candidates[1], "%s.%s", qs, qt);
        free(schema);
        free(qs);
        free(qt);
    }
    char oid[32] = "";
    for (int i = 0; i < 2 && candidates[i] && !oid[0]; i++) {
        const char *params[1] = {candidates[i]};
        PGresult *r = etl_pq_exec(c, "looking up the table", "SELECT to_regclass($1)::oid", 1, params,
                                  PGRES_TUPLES_OK, err);
        if (!r) {
            free(candidates[0]);
            free(candidates[1]);
            return -1;
        }
        if (!PQgetisnull(r, 0, 0)) {
            snprintf(oid, sizeof oid, "%s", PQgetvalue(r, 0, 0));
            t->qualified = strdup(candidates[i]);
        }
        PQclear(r);
    }
    free(candidates[0]);
    free(candidates[1]);
    if (!oid[0])
        return cds_errf(err, "table \"%s\" does not exist (check --table; the name is taken as written, case and spaces included, or as schema.table)",
                        name);
    t->display = strdup(name);
    snprintf(t->oid, sizeof t->oid, "%s", oid);
    const char *params[1] = {oid};
    PGresult *r = etl_pq_exec(c, "reading the columns",
                              "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 "
                              "AND NOT attisdropped ORDER BY attnum",
                              1, params, PGRES_TUPLES_OK, err);
    if (!r)
        return -1;
    t->n = (size_t)PQntuples(r);
    t->names = calloc(t->n ? t->n : 1, sizeof *t->names);
    t->oids = calloc(t->n ? t->n : 1, sizeof *t->oids);
    for (size_t i = 0; i < t->n; i++) {
        t->names[i] = strdup(PQgetvalue(r, (int)i, 0));
        t->oids[i] = (uint32_t)strtoul(PQgetvalue(r, (int)i, 1), NULL, 10);
    }
    PQclear(r);
    r = etl_pq_exec(c, "reading the primary key",
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY a.attnum",
                    1, params, PGRES_TUPLES_OK, err);
    if (!r)
        return -1;
    t->n_pk = (size_t)PQntuples(r);
    t->pk = calloc(t->n_pk ? t->n_pk : 1, sizeof *t->pk);
    for (size_t i = 0; i < t->n_pk; i++)
        t->pk[i] = strdup(PQgetvalue(r, (int)i, 0));
    PQclear(r);
    return 0;
}

static int column_oid(const table_info *t, const char *name, uint32_t *oid)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->names[i], name) == 0) {
            *oid = t->oids[i];
            return 0;
        }
    return -1;
}

/* "a, b, c" into out (of size n), ending in "..." where the rest does not
 * fit: lists of names for messages. */
static void join_names(char *out, size_t n, char *const *names, size_t k)
{
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < k; i++) {
        const char *sep = i ? ", " : "";
        if (len + strlen(sep) + strlen(names[i]) + 6 > n) { /* keep room for ", ..." */
            snprintf(out + len, n - len, "%s...", sep);
            return;
        }
        len += (size_t)snprintf(out + len, n - len, "%s%s", sep, names[i]);
    }
}

static int no_such_column(const table_info *t, const char *name, const char *option, cds_err *err)
{
    char list[512];
    join_names(list, sizeof list, t->names, t->n);
    return cds_errf(err, "column \"%s\" (%s) not found in table \"%s\" (its columns: %s)", name, option, t->display,
                    list);
}

/* Parses array_dims() output such as "[1:28][1:28]". */
static int parse_dims(const char *s, int *dims, int *ndim)
{
    *ndim = 0;
    while (*s == '[') {
        long lo, hi;
        if (sscanf(s, "[%ld:%ld]", &lo, &hi) != 2 || *ndim == ETL_NPY_MAX_DIMS - 1 || hi < lo)
            return -1;
        dims[(*ndim)++] = (int)(hi - lo + 1);
        s = strchr(s, ']') + 1;
    }
    return *ndim > 0 ? 0 : -1;
}

/* The dimensions of an array column, from its first non-NULL value. */
static int array_dims_of(PGconn *c, const table_info *t, const char *col, int *dims, int *ndim, cds_err *err)
{
    char *q = quote_ident(c, col);
    sbuf sql = {0};
    sb_add(&sql, "SELECT array_dims(%s) FROM %s WHERE %s IS NOT NULL LIMIT 1", q, t->qualified, q);
    PGresult *r = etl_pq_exec(c, "reading array dimensions", sql.s, 0, NULL, PGRES_TUPLES_OK, err);
    free(sql.s);
    free(q);
    if (!r)
        return -1;
    int rc = 0;
    if (PQntuples(r) == 0)
        rc = cds_errf(err, "column \"%s\" of table \"%s\" has no non-NULL value to take the array shape from", col,
                      t->display);
    else if (parse_dims(PQgetvalue(r, 0, 0), dims, ndim) != 0)
        rc = cds_errf(err, "column \"%s\" of table \"%s\": cannot read array dimensions '%s'", col, t->display,
                      PQgetvalue(r, 0, 0));
    PQclear(r);
    return rc;
}

static json_t *dims_json(const int *dims, int ndim)
{
    json_t *a = json_array();
    for (int i = 0; i < ndim; i++)
        json_array_append_new(a, json_integer(dims[i]));
    return a;
}

static json_t *shape_json(const int64_t *dims, int ndim)
{
    json_t *a = json_array();
    for (int i = 0; i < ndim; i++)
        json_array_append_new(a, json_integer(dims[i]));
    return a;
}

static int64_t product(const int64_t *d, int n)
{
    int64_t p = 1;
    for (int i = 0; i < n; i++)
        p *= d[i];
    return p;
}

/* ---- the planner --------------------------------------------------------- */

typedef struct planner {
    const etl_spec *s;
    PGconn *c;
    table_info train, valid, test;
    json_t *plan;
    json_t *cols;
    int64_t row_elems;
    int64_t x_shape[ETL_NPY_MAX_DIMS];
    int x_ndim;
    char *key_expr; /* SQL text of the shard key */
    int madlib;     /* a MADlib packed table: the label is one of its columns */
} planner;

static int detect_server(planner *pl, cds_err *err)
{
    PGresult *r = etl_pq_exec(pl->c, "reading the server version",
                              "SELECT version(), current_setting('server_version_num'), "
                              "to_regclass('pg_catalog.gp_segment_configuration') IS NOT NULL",
                              0, NULL, PGRES_TUPLES_OK, err);
    if (!r)
        return -1;
    json_t *srv = json_object();
    int gp = strcmp(PQgetvalue(r, 0, 2), "t") == 0;
    json_object_set_new(srv, "kind", json_string(gp ? "greenplum" : "postgresql"));
    json_object_set_new(srv, "version", json_string(PQgetvalue(r, 0, 0)));
    json_object_set_new(srv, "version_num", json_integer(strtol(PQgetvalue(r, 0, 1), NULL, 10)));
    PQclear(r);
    if (gp) {
        r = etl_pq_exec(pl->c, "listing Greenplum segments",
                        "SELECT content FROM pg_catalog.gp_segment_configuration WHERE role = 'p' AND content >= 0 "
                        "ORDER BY content",
                        0, NULL, PGRES_TUPLES_OK, err);
        if (!r) {
            json_decref(srv);
            return -1;
        }
        json_t *segs = json_array();
        for (int i = 0; i < PQntuples(r); i++)
            json_array_append_new(segs, json_integer(strtol(PQgetvalue(r, i, 0), NULL, 10)));
        json_object_set_new(srv, "segments", segs);
        PQclear(r);
    }
    json_object_set_new(pl->plan, "server", srv);
    return 0;
}

/* Appends a column to the plan; returns its object (owned by the plan) for
 * the caller to add to. */
static json_t *add_column(planner *pl, const char *name, uint32_t oid, const char *kind, const int *dims, int ndim,
                          int64_t count)
{
    json_t *c = json_object();
    json_object_set_new(c, "name", json_string(name));
    json_object_set_new(c, "type", json_integer(oid));
    json_object_set_new(c, "kind", json_string(kind));
    if (ndim)
        json_object_set_new(c, "dims", dims_json(dims, ndim));
    json_object_set_new(c, "count", json_integer(count));
    json_array_append_new(pl->cols, c);
    pl->row_elems += count;
    return c;
}

static int plan_plain_columns(planner *pl, cds_err *err)
{
    const etl_spec *s = pl->s;
    int single_shape = 0;
    for (size_t i = 0; i < s->n_features; i++) {
        const char *name = s->features[i];
        uint32_t oid;
        if (column_oid(&pl->train, name, &oid) != 0)
            return no_such_column(&pl->train, name, "--features", err);
        if (etl_oid_is_numeric(oid)) {
            add_column(pl, name, oid, "number", NULL, 0, 1);
        } else if (etl_array_elem_oid(oid)) {
            int dims[ETL_NPY_MAX_DIMS], ndim = 0;
            if (array_dims_of(pl->c, &pl->train, name, dims, &ndim, err) != 0)
                return -1;
            int64_t count = 1;
            for (int d = 0; d < ndim; d++)
                count *= dims[d];
            add_column(pl, name, oid, "array", dims, ndim, count);
            if (s->n_features == 1) {
                for (int d = 0; d < ndim; d++)
                    pl->x_shape[d] = dims[d];
                pl->x_ndim = ndim;
                single_shape = 1;
            }
        } else if (oid == ETL_OID_BYTEA) {
            if (!s->feature_ndim)
                return cds_errf(err, "column \"%s\" of table \"%s\" is bytea: give --feature-shape (e.g. 28x28x1) so each row's bytes can be shaped",
                                name, pl->train.display);
            int64_t count = product(s->feature_shape, s->feature_ndim);
            add_column(pl, name, oid, "bytea", NULL, 0, count);
        } else {
            return cds_errf(err, "column \"%s\" of table \"%s\" has type %s, which cannot be cast to %s features; use numeric columns, numeric arrays, or bytea with --feature-shape",
                            name, pl->train.display, etl_oid_name(oid), etl_dtype_name(s->dtype));
        }
    }
    if (s->feature_ndim) {
        if (product(s->feature_shape, s->feature_ndim) != pl->row_elems)
            return cds_errf(err, "--feature-shape has %lld values per row but the feature columns give %lld; make them agree",
                            (long long)product(s->feature_shape, s->feature_ndim), (long long)pl->row_elems);
        memcpy(pl->x_shape, s->feature_shape, sizeof pl->x_shape);
        pl->x_ndim = s->feature_ndim;
    } else if (!single_shape) {
        pl->x_shape[0] = pl->row_elems;
        pl->x_ndim = 1;
    }
    return 0;
}

/* ---- MADlib packed tables ------------------------------------------------ */

/* What training_preprocessor_dl wrote, as far as the planner can tell.
 *
 * MADlib 1.16 wrote independent_var real[] and dependent_var smallint[] as
 * 2-D arrays with no shape columns (refused: re-run the preprocessor);
 * 1.17 packs both as bytea (float32 and int16 one-hot, the server's byte
 * order, which is little-endian on every platform MADlib supports) under the
 * same literal names with smallint[] shapes; 1.18 and later name the packed
 * columns after the source columns (<x>, <y>, <x>_shape, <y>_shape, several
 * of each when asked), with integer[] shapes, and add __dist_key__ on
 * Greenplum.  Every version records the source names, the class values and
 * normalizing_const in <table>_summary.  So: the literal names when the table
 * has them, else the names in the summary. */
typedef struct madlib_info {
    json_t *summary; /* the summary row as JSON, or NULL */
    char *summary_table;
    int literal;     /* independent_var / dependent_var columns */
    char **x, **y;   /* the packed columns present */
    size_t nx, ny;
    json_t *x_src, *y_src; /* the summary's source names (array), or NULL */
} madlib_info;

static void madlib_info_free(madlib_info *mi)
{
    json_decref(mi->summary);
    free(mi->summary_table);
    for (size_t i = 0; i < mi->nx; i++)
        free(mi->x[i]);
    for (size_t i = 0; i < mi->ny; i++)
        free(mi->y[i]);
    free(mi->x);
    free(mi->y);
    json_decref(mi->x_src);
    json_decref(mi->y_src);
    memset(mi, 0, sizeof *mi);
}

/* A name as the summary records it, as the column MADlib made from it:
 * "Quoted" keeps its case (and "" is a quote); anything else was folded
 * to lower case by PostgreSQL. */
static char *madlib_colname(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(n + 1), *o = out;
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
        for (size_t i = 1; i + 1 < n; i++) {
            *o++ = s[i];
            if (s[i] == '"' && s[i + 1] == '"')
                i++;
        }
    } else {
        for (size_t i = 0; i < n; i++)
            *o++ = (char)tolower((unsigned char)s[i]);
    }
    *o = '\0';
    return out;
}

/* The summary's list of names: text (1.17) or text[] (1.18+). */
static json_t *name_list(json_t *v)
{
    if (json_is_string(v))
        return json_pack("[O]", v);
    if (json_is_array(v) && json_array_size(v) > 0) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) if (!json_is_string(e)) return NULL;
        return json_incref(v);
    }
    return NULL;
}

static int has_column(const table_info *t, const char *name)
{
    uint32_t o;
    return column_oid(t, name, &o) == 0;
}

/* Reads <table>_summary (same schema) if it exists and looks like MADlib's. */
static int madlib_read_summary(planner *pl, madlib_info *mi, cds_err *err)
{
    const char *params[1] = {pl->train.oid};
    PGresult *r = etl_pq_exec(pl->c, "looking for the MADlib summary table",
                              "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                              "JOIN pg_class t ON t.oid = $1::oid WHERE c.relnamespace = t.relnamespace "
                              "AND c.relname::text = t.relname::text || '_summary' AND c.relkind IN ('r', 'v', 'm', 'p')",
                              1, params, PGRES_TUPLES_OK, err);
    if (!r)
        return -1;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return 0;
    }
    char *qn = quote_ident(pl->c, PQgetvalue(r, 0, 0)), *qr = quote_ident(pl->c, PQgetvalue(r, 0, 1));
    PQclear(r);
    sbuf name = {0}, sql = {0};
    sb_add(&name, "%s.%s", qn, qr);
    free(qn);
    free(qr);
    sb_add(&sql, "SELECT row_to_json(s)::text FROM %s s LIMIT 1", name.s);
    r = etl_pq_exec(pl->c, "reading the MADlib summary table", sql.s, 0, NULL, PGRES_TUPLES_OK, err);
    free(sql.s);
    if (!r) {
        free(name.s);
        return -1;
    }
    json_t *row = PQntuples(r) ? json_loads(PQgetvalue(r, 0, 0), 0, NULL) : NULL;
    PQclear(r);
    mi->x_src = name_list(json_object_get(row, "independent_varname"));
    mi->y_src = name_list(json_object_get(row, "dependent_varname"));
    if (!mi->x_src || !mi->y_src) { /* not MADlib's (or empty): ignored */
        json_decref(row);
        json_decref(mi->x_src);
        json_decref(mi->y_src);
        mi->x_src = mi->y_src = NULL;
        free(name.s);
        return 0;
    }
    mi->summary = row;
    mi->summary_table = name.s;
    return 0;
}

/* 1 when the train table is a MADlib packed table (mi filled), 0 if not. */
static int madlib_detect(planner *pl, madlib_info *mi, cds_err *err)
{
    memset(mi, 0, sizeof *mi);
    const table_info *t = &pl->train;
    if (!has_column(t, "buffer_id"))
        return 0;
    if (madlib_read_summary(pl, mi, err) != 0)
        return -1;
    mi->literal = has_column(t, "independent_var") && has_column(t, "dependent_var") &&
                  has_column(t, "independent_var_shape") && has_column(t, "dependent_var_shape");
    if (!mi->literal && has_column(t, "independent_var") && has_column(t, "dependent_var") &&
        !has_column(t, "independent_var_shape"))
        return cds_errf(err, "table \"%s\" looks like a MADlib 1.16 training_preprocessor_dl table (buffers without shape columns), which is not read; re-run training_preprocessor_dl with MADlib 1.17 or later",
                        t->display);
    if (mi->literal) {
        mi->x = calloc(1, sizeof *mi->x);
        mi->y = calloc(1, sizeof *mi->y);
        mi->x[mi->nx++] = strdup("independent_var");
        mi->y[mi->ny++] = strdup("dependent_var");
        return 1;
    }
    if (!mi->summary)
        return 0;
    mi->x = calloc(json_array_size(mi->x_src), sizeof *mi->x);
    mi->y = calloc(json_array_size(mi->y_src), sizeof *mi->y);
    for (size_t i = 0; i < json_array_size(mi->x_src); i++)
        mi->x[mi->nx++] = madlib_colname(json_string_value(json_array_get(mi->x_src, i)));
    for (size_t i = 0; i < json_array_size(mi->y_src); i++)
        mi->y[mi->ny++] = madlib_colname(json_string_value(json_array_get(mi->y_src, i)));
    return 1;
}

/* Index of name among the packed columns, accepting for the literal layout
 * the source name the summary records for it. */
static int madlib_find(const madlib_info *mi, char *const *cols, size_t n, const json_t *src, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(cols[i], name) == 0)
            return (int)i;
    if (mi->literal && src && json_array_size(src) == 1) {
        char *c = madlib_colname(json_string_value(json_array_get(src, 0)));
        int hit = strcmp(c, name) == 0 || strcmp(json_string_value(json_array_get(src, 0)), name) == 0;
        free(c);
        if (hit)
            return 0;
    }
    return -1;
}

/* Which packed columns the unload takes: --features among the independent
 * variables (independent_var: all of them), --label among the dependent
 * ones.  A dataset holds one class id per row, so of several dependent
 * variables exactly one is taken, and --label must say which.  The bound
 * applies to the variables taken, not to those the table has. */
static int madlib_select(planner *pl, const madlib_info *mi, int xsel[ETL_MADLIB_MAX_X], size_t *nsel, int *ysel,
                         cds_err *err)
{
    const etl_spec *s = pl->s;
    char xs[256], ys[256];
    join_names(xs, sizeof xs, mi->x, mi->nx);
    join_names(ys, sizeof ys, mi->y, mi->ny);
    *nsel = 0;
    if (s->n_features == 1 && strcmp(s->features[0], "independent_var") == 0) {
        if (mi->nx > ETL_MADLIB_MAX_X)
            return cds_errf(err, "MADlib table \"%s\" has %zu independent variables and at most %d are unloaded together: name up to %d of them in --features instead of independent_var",
                            pl->train.display, mi->nx, ETL_MADLIB_MAX_X, ETL_MADLIB_MAX_X);
        for (size_t i = 0; i < mi->nx; i++)
            xsel[(*nsel)++] = (int)i;
    } else {
        if (s->n_features > ETL_MADLIB_MAX_X)
            return cds_errf(err, "--features names %zu independent variables of MADlib table \"%s\"; at most %d are unloaded together: name fewer",
                            s->n_features, pl->train.display, ETL_MADLIB_MAX_X);
        for (size_t f = 0; f < s->n_features; f++) {
            int i = madlib_find(mi, mi->x, mi->nx, mi->x_src, s->features[f]);
            if (i < 0)
                return cds_errf(err, "--features \"%s\" is not a packed independent variable of MADlib table \"%s\" (it has: %s); name those, or give independent_var for all",
                                s->features[f], pl->train.display, xs);
            xsel[(*nsel)++] = i;
        }
    }
    *ysel = madlib_find(mi, mi->y, mi->ny, mi->y_src, s->label);
    if (*ysel < 0 && strcmp(s->label, "dependent_var") == 0 && mi->ny == 1)
        *ysel = 0;
    if (*ysel >= 0)
        return 0;
    if (mi->ny > 1)
        return cds_errf(err, "MADlib table \"%s\" has %zu dependent variables (%s) but a dataset holds one label per row: name one with --label",
                        pl->train.display, mi->ny, ys);
    return cds_errf(err, "--label \"%s\" is not the dependent variable of MADlib table \"%s\" (it is %s): give --label %s",
                    s->label, pl->train.display, ys, mi->y[0]);
}

/* "{1000,28,28,1}" -> 1000, 28, 28, 1 */
static int parse_int_array(const char *s, int64_t *dims, int max)
{
    int n = 0;
    for (const char *p = s; *p; p++) {
        if (*p == '{' || *p == '}' || *p == ',' || *p == ' ')
            continue;
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || n == max || v < 0)
            return -1;
        dims[n++] = v;
        p = end - 1;
    }
    return n;
}

/* A packed column the unload takes, with its shape column, as the catalog
 * gave them. */
typedef struct madlib_col {
    const char *name; /* mi's */
    char *shape;
    uint32_t oid, shape_oid;
} madlib_col;

/* One packed column and its shape column: both present, of types MADlib
 * writes. */
static int madlib_column(planner *pl, const char *name, const char *role, madlib_col *mc, cds_err *err)
{
    const table_info *t = &pl->train;
    sbuf shape = {0};
    sb_add(&shape, "%s_shape", name);
    mc->name = name;
    mc->shape = shape.s;
    if (column_oid(t, name, &mc->oid) != 0)
        return no_such_column(t, name, role, err);
    if (column_oid(t, mc->shape, &mc->shape_oid) != 0)
        return no_such_column(t, mc->shape, role, err);
    if (mc->oid != ETL_OID_BYTEA && !etl_array_elem_oid(mc->oid))
        return cds_errf(err, "MADlib column \"%s\" of table \"%s\" has type %s; a packed buffer is bytea or a numeric array",
                        name, t->display, etl_oid_name(mc->oid));
    uint32_t se = etl_array_elem_oid(mc->shape_oid);
    if (se != ETL_OID_INT2 && se != ETL_OID_INT4 && se != ETL_OID_INT8)
        return cds_errf(err, "MADlib column \"%s\" of table \"%s\" has type %s; a shape is an integer array",
                        mc->shape, t->display, etl_oid_name(mc->shape_oid));
    return 0;
}

/* The shapes of the first buffer, one text value per column of mc. */
static PGresult *madlib_first_shapes(planner *pl, const madlib_col *mc, size_t n, cds_err *err)
{
    sbuf sql = {0};
    sb_add(&sql, "SELECT ");
    for (size_t i = 0; i < n; i++) {
        char *q = quote_ident(pl->c, mc[i].shape);
        sb_add(&sql, "%s%s::text", i ? ", " : "", q);
        free(q);
    }
    sb_add(&sql, " FROM %s LIMIT 1", pl->train.qualified);
    PGresult *r = etl_pq_exec(pl->c, "reading MADlib buffer shapes", sql.s, 0, NULL, PGRES_TUPLES_OK, err);
    free(sql.s);
    if (r && PQntuples(r) == 0) {
        PQclear(r);
        return cds_errf(err, "MADlib table \"%s\" has no buffers", pl->train.display), NULL;
    }
    return r;
}

/* An independent variable, its dims those of shape text {rows, dims...};
 * *flat gets its values per row. */
static int madlib_add_x(planner *pl, const madlib_col *mc, const char *text, int only, int64_t *flat, cds_err *err)
{
    int64_t dims[ETL_NPY_MAX_DIMS + 1];
    int n = parse_int_array(text, dims, ETL_NPY_MAX_DIMS);
    if (n < 2 || dims[0] < 1 || product(dims + 1, n - 1) < 1)
        return cds_errf(err, "MADlib table \"%s\": %s is %s, not {rows, dims...} of a buffer", pl->train.display,
                        mc->shape, text);
    int d32[ETL_NPY_MAX_DIMS];
    for (int d = 1; d < n; d++)
        d32[d - 1] = (int)dims[d];
    *flat = product(dims + 1, n - 1);
    json_t *c = add_column(pl, mc->name, mc->oid, mc->oid == ETL_OID_BYTEA ? "bytea" : "array", d32, n - 1, *flat);
    json_object_set_new(c, "role", json_string("x"));
    add_column(pl, mc->shape, mc->shape_oid, "shape", NULL, 0, 0);
    if (only) {
        pl->x_ndim = n - 1;
        memcpy(pl->x_shape, dims + 1, (size_t)(n - 1) * sizeof *dims);
    }
    return 0;
}

/* The dependent variable, one-hot by shape text {rows, classes}: the label
 * and the class count of the plan. */
static int madlib_add_y(planner *pl, const madlib_col *mc, const char *text, cds_err *err)
{
    int64_t dims[ETL_NPY_MAX_DIMS + 1];
    int n = parse_int_array(text, dims, ETL_NPY_MAX_DIMS);
    if (n == 2 && dims[1] == 1)
        return cds_errf(err, "MADlib table \"%s\": %s is %s: dependent variable \"%s\" holds one value per row (class ids, not one-hot); re-run training_preprocessor_dl with the class column itself (not an array of it) so that it one-hot encodes it",
                        pl->train.display, mc->shape, text, mc->name);
    if (n != 2 || dims[1] < 2)
        return cds_errf(err, "MADlib table \"%s\": %s is %s, not {rows, classes} with 2 or more classes (a dataset's label is one class per row)",
                        pl->train.display, mc->shape, text);
    if (dims[1] > ETL_MAX_CLASSES)
        return cds_errf(err, "MADlib table \"%s\": %s is %s: more than %d classes", pl->train.display, mc->shape, text,
                        ETL_MAX_CLASSES);
    json_t *c = add_column(pl, mc->name, mc->oid, mc->oid == ETL_OID_BYTEA ? "bytea" : "array", NULL, 0, 0);
    json_object_set_new(c, "role", json_string("y"));
    json_object_set_new(c, "count", json_integer(dims[1]));
    add_column(pl, mc->shape, mc->shape_oid, "shape", NULL, 0, 0);
    json_object_set_new(pl->plan, "num_classes", json_integer(dims[1]));
    json_object_set_new(pl->plan, "label",
                        json_pack("{s:s, s:I, s:s}", "name", mc->name, "type", (json_int_t)mc->oid, "kind", "onehot"));
    return 0;
}

/* The summary's class values of dependent variable y, as text (NULL
 * classes as null), in one-hot order; NULL when the summary has none.
 *
 * mi->summary holds them already, but as jansson read them: row_to_json
 * writes a number in its type's text form and jansson keeps only the
 * int64 or double, so a double precision class 0.1 would come back as
 * 0.10000000000000001, a numeric 2.50 as 2.5, and a numeric past int64 would
 * not parse at all.  MADlib keeps the dependent variable's type for them
 * (numeric labels are allowed), so they are read again, cast to text by the
 * server: the same strings as PostgreSQL prints and MADlib's predict
 * returns. */
static int madlib_classes(planner *pl, const madlib_info *mi, int ysel, json_t **out, cds_err *err)
{
    *out = NULL;
    if (!mi->summary)
        return 0;
    char col[300];
    const char *key = NULL;
    if (!mi->literal) {
        snprintf(col, sizeof col, "%s_class_values", mi->y[ysel]);
        if (json_object_get(mi->summary, col))
            key = col;
    }
    if (!key && json_object_get(mi->summary, "class_values"))
        key = "class_values";
    if (!key || json_is_null(json_object_get(mi->summary, key)))
        return 0;
    char *q = quote_ident(pl->c, key);
    sbuf sql = {0};
    sb_add(&sql, "SELECT array_to_json(%s::text[])::text FROM %s LIMIT 1", q, mi->summary_table);
    free(q);
    PGresult *r = etl_pq_exec(pl->c, "reading the MADlib class values", sql.s, 0, NULL, PGRES_TUPLES_OK, err);
    free(sql.s);
    if (!r)
        return -1;
    json_t *v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? json_loads(PQgetvalue(r, 0, 0), 0, NULL) : NULL;
    PQclear(r);
    if (json_is_array(v))
        *out = v;
    else
        json_decref(v);
    return 0;
}

/* The plan's "madlib" object: the form, the columns taken, what the summary
 * says of them. */
static json_t *madlib_json(const madlib_info *mi, const int *xsel, size_t nsel, int ysel, json_t *classes)
{
    json_t *m = json_object();
    json_object_set_new(m, "form", json_string(mi->literal ? "independent_var/dependent_var" : "source-named"));
    json_t *xs = json_array();
    for (size_t i = 0; i < nsel; i++)
        json_array_append_new(xs, json_string(mi->x[xsel[i]]));
    json_object_set_new(m, "x", xs);
    json_object_set_new(m, "y", json_string(mi->y[ysel]));
    if (mi->summary) {
        json_object_set_new(m, "summary_table", json_string(mi->summary_table));
        json_object_set(m, "independent_varname", mi->x_src);
        json_object_set(m, "dependent_varname", mi->y_src);
        json_t *nc = json_object_get(mi->summary, "normalizing_const");
        if (json_is_number(nc))
            json_object_set(m, "normalizing_const", nc);
        json_t *dt = json_object_get(mi->summary, "dependent_vartype");
        if (dt)
            json_object_set(m, "dependent_vartype", dt);
    }
    if (classes)
        json_object_set(m, "class_values", classes);
    return m;
}

/* The columns in COPY order: each x taken and its shape, y and its shape,
 * then buffer_id (named in messages); the row shape from the first buffer,
 * the class values from the summary. */
static int plan_madlib(planner *pl, const madlib_info *mi, cds_err *err)
{
    int xsel[ETL_MADLIB_MAX_X];
    size_t nsel = 0;
    int ysel = -1;
    if (madlib_select(pl, mi, xsel, &nsel, &ysel, err) != 0)
        return -1;
    madlib_col mc[ETL_MADLIB_MAX_X + 1] = {{0}};
    size_t n = nsel + 1; /* the x taken, then y */
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = madlib_column(pl, i < nsel ? mi->x[xsel[i]] : mi->y[ysel], i < nsel ? "--features" : "--label", &mc[i],
                           err);
    PGresult *r = rc == 0 ? madlib_first_shapes(pl, mc, n, err) : NULL;
    if (!r)
        rc = -1;
    int64_t flat = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *text = PQgetisnull(r, 0, (int)i) ? "NULL" : PQgetvalue(r, 0, (int)i);
        int64_t per = 0;
        rc = i < nsel ? madlib_add_x(pl, &mc[i], text, nsel == 1, &per, err) : madlib_add_y(pl, &mc[i], text, err);
        flat += per;
    }
    PQclear(r);
    for (size_t i = 0; i < n; i++)
        free(mc[i].shape);
    if (rc != 0)
        return -1;
    uint32_t bid = 0;
    column_oid(&pl->train, "buffer_id", &bid);
    if (!etl_oid_is_numeric(bid))
        return cds_errf(err, "MADlib column \"buffer_id\" of table \"%s\" has type %s, not an integer", pl->train.display,
                        etl_oid_name(bid));
    add_column(pl, "buffer_id", bid, "buffer_id", NULL, 0, 0);
    pl->row_elems = flat;
    if (nsel > 1) {
        pl->x_shape[0] = flat;
        pl->x_ndim = 1;
    }
    json_t *classes = NULL;
    if (madlib_classes(pl, mi, ysel, &classes, err) != 0)
        return -1;
    int64_t k = json_integer_value(json_object_get(pl->plan, "num_classes"));
    if (classes && (int64_t)json_array_size(classes) != k) {
        size_t nc = json_array_size(classes);
        json_decref(classes);
        return cds_errf(err, "MADlib summary %s has %zu class values but %s_shape has %lld classes; re-run training_preprocessor_dl so they agree",
                        mi->summary_table, nc, mi->y[ysel], (long long)k);
    }
    json_object_set_new(pl->plan, "madlib", madlib_json(mi, xsel, nsel, ysel, classes));
    if (classes)
        json_object_set_new(pl->plan, "classes", classes);
    return 0;
}

static int plan_criteo(planner *pl, cds_err *err)
{
    const etl_spec *s = pl->s;
    if (s->n_features != 39)
        return cds_errf(err, "the criteo transform needs 39 feature columns (13 integer I1..I13, then 26 categorical C1..C26), got %zu",
                        s->n_features);
    etl_criteo cr;
    etl_criteo_init(&cr);
    for (size_t i = 0; i < 39; i++) {
        uint32_t oid;
        if (column_oid(&pl->train, s->features[i], &oid) != 0)
            return no_such_column(&pl->train, s->features[i], "--features", err);
        int want_int = i < 13;
        if (want_int ? !(etl_oid_is_numeric(oid) || oid == ETL_OID_TEXT || oid == ETL_OID_VARCHAR)
                     : !(oid == ETL_OID_TEXT || oid == ETL_OID_VARCHAR || oid == ETL_OID_BPCHAR))
            return cds_errf(err, "criteo column \"%s\" of table \"%s\" has type %s; the first 13 must be integer (or text), the last 26 text",
                            s->features[i], pl->train.display, etl_oid_name(oid));
        add_column(pl, s->features[i], oid, want_int ? "criteo_int" : "criteo_cat", NULL, 0, 1);
        if (!want_int)
            continue;
        /* 48 edges from the quantiles of the non-missing values, computed once
         * here so that every shard buckets alike. */
        char *q = quote_ident(pl->c, s->features[i]);
        sbuf sql = {0};
        const char *num = etl_oid_is_numeric(oid) ? "%s::float8" : "NULLIF(%s, '')::float8";
        sbuf expr = {0};
        sb_add(&expr, num, q);
        sb_add(&sql, "SELECT unnest(percentile_disc(ARRAY[");
        for (int k = 1; k <= ETL_CRITEO_EDGES; k++)
            sb_add(&sql, "%s%.6f", k > 1 ? "," : "", (double)k / (ETL_CRITEO_EDGES + 1));
        sb_add(&sql, "]) WITHIN GROUP (ORDER BY %s)) FROM %s WHERE %s IS NOT NULL", expr.s, pl->train.qualified,
               expr.s);
        if (s->where)
            sb_add(&sql, " AND (%s)", s->where);
        free(q);
        free(expr.s);
        PGresult *r = etl_pq_exec(pl->c, "computing Criteo bucket edges", sql.s, 0, NULL, PGRES_TUPLES_OK, err);
        free(sql.s);
        if (!r)
            return -1;
        double vals[ETL_CRITEO_EDGES];
        size_t nv = 0;
        for (int k = 0; k < PQntuples(r) && nv < ETL_CRITEO_EDGES; k++)
            if (!PQgetisnull(r, k, 0))
                vals[nv++] = strtod(PQgetvalue(r, k, 0), NULL);
        PQclear(r);
        if (etl_criteo_set_edges(&cr, (int)i, vals, nv, err) != 0)
            return -1;
    }
    json_object_set_new(pl->plan, "criteo", etl_criteo_to_json(&cr));
    pl->x_shape[0] = 39;
    pl->x_ndim = 1;
    pl->row_elems = 39;
    return 0;
}

static int strcmp_ptr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Class ids: the dictionary of text labels, or the count of integer ones,
 * over every split so that all agree. */
static int plan_label(planner *pl, cds_err *err)
{
    const etl_spec *s = pl->s;
    uint32_t oid;
    if (column_oid(&pl->train, s->label, &oid) != 0)
        return no_such_column(&pl->train, s->label, "--label", err);
    json_t *lab = json_object();
    json_object_set_new(lab, "name", json_string(s->label));
    json_object_set_new(lab, "type", json_integer(oid));
    json_object_set_new(pl->plan, "label", lab);
    if (s->transform) {
        json_object_set_new(lab, "kind", json_string("int"));
        json_object_set_new(pl->plan, "num_classes", json_integer(2));
        return 0;
    }
    const table_info *tabs[3] = {&pl->train, pl->valid.qualified ? &pl->valid : NULL,
                                 pl->test.qualified ? &pl->test : NULL};
    char *q = quote_ident(pl->c, s->label);
    sbuf sql = {0};
    const char *kind;
    if (oid == ETL_OID_INT2 || oid == ETL_OID_INT4 || oid == ETL_OID_INT8) {
        /* Integer ids need no scan here: the streams check each id and the
         * class count (largest id + 1) is settled when the dataset is
         * finished. */
        free(q);
        json_object_set_new(lab, "kind", json_string("int"));
        return 0;
    } else if (etl_array_elem_oid(oid)) {
        kind = "onehot";
        sb_add(&sql, "SELECT array_length(%s, 1) FROM %s WHERE %s IS NOT NULL LIMIT 1", q, pl->train.qualified, q);
    } else if (oid == ETL_OID_TEXT || oid == ETL_OID_VARCHAR || oid == ETL_OID_BPCHAR) {
        kind = "text";
        sb_add(&sql, "SELECT DISTINCT l FROM (");
        for (int t = 0, first = 1; t < 3; t++)
            if (tabs[t]) {
                sb_add(&sql, "%sSELECT %s::text AS l FROM %s", first ? "" : " UNION ALL ", q, tabs[t]->qualified);
                first = 0;
            }
        sb_add(&sql, ") s WHERE l IS NOT NULL");
    } else {
        free(q);
        return cds_errf(err, "label column \"%s\" of table \"%s\" has type %s; use an integer class id, a one-hot array, or text",
                        s->label, pl->train.display, etl_oid_name(oid));
    }
    free(q);
    json_object_set_new(lab, "kind", json_string(kind));
    PGresult *r = etl_pq_exec(pl->c, "reading the label classes", sql.s, 0, NULL, PGRES_TUPLES_OK, err);
    free(sql.s);
    if (!r)
        return -1;
    int rc = 0;
    if (strcmp(kind, "int") == 0) {
        rc = 0; /* not reached: integer labels return above */    } else if (strcmp(kind, "onehot") == 0) {
        if (PQntuples(r) == 0 || PQgetisnull(r, 0, 0))
            rc = cds_errf(err, "label column \"%s\" of table \"%s\" has no values", s->label, pl->train.display);
        else
            json_object_set_new(pl->plan, "num_classes", json_integer(strtol(PQgetvalue(r, 0, 0), NULL, 10)));
    } else {
        size_t n = (size_t)PQntuples(r);
        char **names = calloc(n ? n : 1, sizeof *names);
        for (size_t i = 0; i < n; i++)
            names[i] = PQgetvalue(r, (int)i, 0);
        /* Sorted bytewise here, not by the server's collation, so every
         * server orders the classes the same way. */
        qsort(names, n, sizeof *names, strcmp_ptr);
        json_t *classes = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(classes, json_string(names[i]));
        free(names);
        json_object_set_new(pl->plan, "classes", classes);
        json_object_set_new(pl->plan, "num_classes", json_integer((json_int_t)n));
        if (n < 2)
            rc = cds_errf(err, "label column \"%s\" of table \"%s\" has %zu distinct value(s); a classifier needs at least 2",
                          s->label, pl->train.display, n);
    }
    PQclear(r);
    return rc;
}

/* The shard key: --shard-key, else the primary key (buffer_id for MADlib). */
static int plan_key(planner *pl, cds_err *err)
{
    const etl_spec *s = pl->s;
    sbuf k = {0};
    if (s->shard_key) {
        uint32_t oid;
        if (column_oid(&pl->train, s->shard_key, &oid) != 0)
            return no_such_column(&pl->train, s->shard_key, "--shard-key", err);
        char *q = quote_ident(pl->c, s->shard_key);
        sb_add(&k, "%s", q);
        free(q);
    } else if (pl->train.n_pk > 0) {
        sb_add(&k, "ROW(");
        for (size_t i = 0; i < pl->train.n_pk; i++) {
            char *q = quote_ident(pl->c, pl->train.pk[i]);
            sb_add(&k, "%s%s", i ? ", " : "", q);
            free(q);
        }
        sb_add(&k, ")");
    } else {
        return cds_errf(err, "table \"%s\" has no primary key to shard by: give --shard-key COLUMN (a column with many distinct values)",
                        pl->train.display);
    }
    pl->key_expr = k.s;
    json_object_set_new(pl->plan, "shard_key", json_string(k.s));
    return 0;
}

/* A 31-bit hash of the key from md5, hex digits [from, from+8). */
static void sb_hash(sbuf *b, const char *key, int from)
{
    sb_add(b, "(('x' || substr(md5((%s)::text), %d, 8))::bit(32)::int & 2147483647)", key, from);
}

static char *select_list(planner *pl)
{
    sbuf b = {0};
    size_t n = json_array_size(pl->cols);
    for (size_t i = 0; i < n; i++) {
        char *q = quote_ident(pl->c, json_string_value(json_object_get(json_array_get(pl->cols, i), "name")));
        sb_add(&b, "%s%s", i ? ", " : "", q);
        free(q);
    }
    if (!pl->madlib) {
        char *q = quote_ident(pl->c, pl->s->label);
        sb_add(&b, ", %s", q);
        free(q);
    }
    return b.s;
}

/* The COPY queries of one (split, shard): one per PostgreSQL shard, one per
 * Greenplum segment that maps to it. */
static json_t *task_queries(planner *pl, const table_info *t, const char *split_filter, int shard,
                            const char *select)
{
    const etl_spec *s = pl->s;
    json_t *segs = json_object_get(json_object_get(pl->plan, "server"), "segments");
    json_t *qs = json_array();
    size_t nseg = json_array_size(segs);
    /* Greenplum: segment g feeds shard g mod N when there are at least as many
     * segments as shards; otherwise each segment is split further by hash. */
    size_t parts = nseg ? (nseg >= (size_t)s->shards ? 1 : ((size_t)s->shards + nseg - 1) / nseg) : 1;
    size_t streams = nseg ? nseg * parts : 1;
    for (size_t st = 0; st < streams; st++) {
        size_t seg = nseg ? st % nseg : 0, part = nseg ? st / nseg : 0;
        if (nseg && (size_t)(part * nseg + seg) % (size_t)s->shards != (size_t)shard)
            continue;
        sbuf b = {0};
        sb_add(&b, "COPY (SELECT %s FROM %s WHERE TRUE", select, t->qualified);
        if (s->where)
            sb_add(&b, " AND (%s)", s->where);
        if (split_filter)
            sb_add(&b, " AND %s", split_filter);
        if (nseg) {
            sb_add(&b, " AND gp_segment_id = %lld", (long long)json_integer_value(json_array_get(segs, seg)));
            if (parts > 1) {
                sb_add(&b, " AND ");
                sb_hash(&b, pl->key_expr, 1);
                sb_add(&b, " %% %zu = %zu", parts, part);
            }
        } else if (s->shards > 1) {
            sb_add(&b, " AND ");
            sb_hash(&b, pl->key_expr, 1);
            sb_add(&b, " %% %d = %d", s->shards, shard);
        }
        sb_add(&b, ") TO STDOUT (FORMAT binary)");
        json_array_append_new(qs, json_string(b.s));
        free(b.s);
    }
    return qs;
}

static void add_split_tasks(planner *pl, json_t *tasks, const char *split, const table_info *t,
                            const char *split_filter, const char *select)
{
    for (int k = 0; k < pl->s->shards; k++) {
        json_t *task = json_object();
        json_object_set_new(task, "split", json_string(split));
        json_object_set_new(task, "shard", json_integer(k));
        json_object_set_new(task, "queries", task_queries(pl, t, split_filter, k, select));
        json_array_append_new(tasks, task);
    }
}

static int plan_tasks(planner *pl, cds_err *err)
{
    (void)err;
    const etl_spec *s = pl->s;
    char *select = select_list(pl);
    json_t *tasks = json_array();
    char *train_filter = NULL, *valid_filter = NULL;
    if (s->valid_fraction > 0) {
        long long cut = (long long)llround(s->valid_fraction * 2147483648.0);
        sbuf a = {0}, b = {0};
        sb_hash(&a, pl->key_expr, 9);
        sb_add(&a, " >= %lld", cut);
        sb_hash(&b, pl->key_expr, 9);
        sb_add(&b, " < %lld", cut);
        train_filter = a.s;
        valid_filter = b.s;
    }
    add_split_tasks(pl, tasks, "train", &pl->train, train_filter, select);
    if (valid_filter)
        add_split_tasks(pl, tasks, "valid", &pl->train, valid_filter, select);
    else if (pl->valid.qualified)
        add_split_tasks(pl, tasks, "valid", &pl->valid, NULL, select);
    if (pl->test.qualified)
        add_split_tasks(pl, tasks, "test", &pl->test, NULL, select);
    sbuf src = {0};
    sb_add(&src, "SELECT %s FROM %s", select, pl->train.qualified);
    if (s->where)
        sb_add(&src, " WHERE (%s)", s->where);
    json_object_set_new(pl->plan, "source_query", json_string(src.s));
    free(src.s);
    json_object_set_new(pl->plan, "tasks", tasks);
    free(select);
    free(train_filter);
    free(valid_filter);
    return 0;
}

/* A split table must have the train table's feature and label columns with
 * the same types. */
static int check_split_table(planner *pl, const table_info *t, const char *option, cds_err *err)
{
    size_t n = json_array_size(pl->cols);
    for (size_t i = 0; i <= n; i++) {
        const char *name;
        uint32_t want, got;
        if (i < n) {
            json_t *c = json_array_get(pl->cols, i);
            name = json_string_value(json_object_get(c, "name"));
            want = (uint32_t)json_integer_value(json_object_get(c, "type"));
        } else {
            name = pl->s->label;
            if (column_oid(&pl->train, name, &want) != 0)
                return 0;
        }
        if (column_oid(t, name, &got) != 0)
            return no_such_column(t, name, option, err);
        if (got != want)
            return cds_errf(err, "column \"%s\" is %s in table \"%s\" but %s in \"%s\" (%s); the splits must have the same types",
                            name, etl_oid_name(got), t->display, etl_oid_name(want), pl->train.display, option);
    }
    return 0;
}

static int dir_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int plan_paths(planner *pl, cds_err *err)
{
    const etl_spec *s = pl->s;
    char token[17];
    if (cds_random_hex(token, 8, err) != 0)
        return -1;
    char dir[4096], staging[4096];
    if (cds_layout_dataset_dir(dir, sizeof dir, s->data_root, s->dataset, err) != 0 ||
        cds_layout_staging_dir(staging, sizeof staging, s->data_root, s->dataset, token, err) != 0)
        return -1;
    int rc = 0;
    if (!dir_exists(s->data_root))
        rc = cds_errf(err, "data root %s is not a directory (create it, or fix --data-root)", s->data_root);
    else if (dir_exists(dir) && !s->replace)
        rc = cds_errf(err, "dataset %s already exists in %s/datasets; pass --replace to overwrite it", s->dataset,
                      s->data_root);
    json_object_set_new(pl->plan, "dataset_dir", json_string(dir));
    json_object_set_new(pl->plan, "staging", json_string(staging));
    json_object_set_new(pl->plan, "token", json_string(token));
    return rc;
}

etl_plan *etl_plan_make(const etl_spec *s, const cds_log *log, cds_err *err)
{
    if (s->shards < 1 || s->shards > ETL_MAX_SHARDS)
        return cds_errf(err, "--shards %d is out of range: use 1 to %d (one per worker)", s->shards, ETL_MAX_SHARDS),
               NULL;
    if (s->transform && s->dtype == ETL_U8)
        return cds_errf(err, "--dtype uint8 does not apply to the criteo transform (it stores int32 indices)"), NULL;
    planner pl = {.s = s};
    pl.c = etl_pq_connect(s->dsn, err);
    if (!pl.c)
        return NULL;
    pl.plan = json_object();
    pl.cols = json_array();
    json_object_set_new(pl.plan, "format", json_string("cds-etl-plan"));
    json_object_set_new(pl.plan, "format_version", json_integer(1));
    /* The spec's DSN becomes the connection actually made, so that shard
     * jobs and workers elsewhere reach this server and database even when
     * the DSN was empty and libpq took it from this shell's PG* variables. */
    json_t *spec = etl_spec_to_json(s);
    char *resolved = etl_dsn_resolved(pl.c);
    json_object_set_new(spec, "dsn", json_string(resolved));
    json_object_set_new(pl.plan, "spec", spec);
    etl_plan *p = NULL;
    int rc = plan_paths(&pl, err);
    if (rc == 0)
        rc = detect_server(&pl, err);
    if (rc == 0)
        rc = resolve_table(pl.c, s->table, &pl.train, err);
    if (rc == 0 && s->valid_table)
        rc = resolve_table(pl.c, s->valid_table, &pl.valid, err);
    if (rc == 0 && s->test_table)
        rc = resolve_table(pl.c, s->test_table, &pl.test, err);
    madlib_info mi = {0};
    if (rc == 0 && !s->transform && (pl.madlib = madlib_detect(&pl, &mi, err)) < 0)
        rc = -1;
    if (rc == 0) {
        const char *layout = s->transform ? "criteo" : pl.madlib ? "madlib" : "columns";
        json_object_set_new(pl.plan, "layout", json_string(layout));
        if (s->transform)
            rc = plan_criteo(&pl, err);
        else if (pl.madlib)
            rc = plan_madlib(&pl, &mi, err);
        else
            rc = plan_plain_columns(&pl, err);
    }
    madlib_info_free(&mi);
    if (rc == 0 && !pl.madlib)
        rc = plan_label(&pl, err);
    if (rc == 0 && pl.valid.qualified)
        rc = check_split_table(&pl, &pl.valid, "--valid-table", err);
    if (rc == 0 && pl.test.qualified)
        rc = check_split_table(&pl, &pl.test, "--test-table", err);
    if (rc == 0) {
        if (!s->shard_key && pl.madlib) {
            etl_spec copy = *s;
            copy.shard_key = "buffer_id";
            pl.s = &copy;
            rc = plan_key(&pl, err);
            pl.s = s;
        } else {
            rc = plan_key(&pl, err);
        }
    }
    if (rc == 0) {
        json_object_set_new(pl.plan, "columns", json_incref(pl.cols));
        json_t *x = json_object();
        const char *dtype = s->transform ? "int32" : etl_dtype_name(s->dtype);
        json_object_set_new(x, "dtype", json_string(dtype));
        json_object_set_new(x, "row_shape", shape_json(pl.x_shape, pl.x_ndim));
        json_object_set_new(pl.plan, "x", x);
        json_object_set_new(pl.plan, "source_table", json_string(pl.train.qualified));
        rc = plan_tasks(&pl, err);
    }
    if (rc == 0) {
        /* This process's own streams connect where the planner did, with
         * the password it used (kept in memory only, in a buffer sized so
         * that no copy of it is left behind by a realloc). */
        const char *pw = PQpass(pl.c);
        sbuf conn = {.cap = strlen(resolved) + 2 * (pw ? strlen(pw) : 0) + 32};
        conn.s = malloc(conn.cap);
        sb_add(&conn, "%s", resolved);
        if (pw && *pw)
            sb_conninfo(&conn, "password", pw);
        p = etl_plan_from_json(pl.plan, conn.s, err);
        memset(conn.s, 0, conn.n);
        free(conn.s);
    }
    if (p) {
        atomic_store(&p->spare, pl.c);
        pl.c = NULL;
    }
    if (p && log)
        cds_logf(log, CDS_LOG_INFO, "plan: %s %s (%s), table %s, %s layout, %zu tasks",
                 json_string_value(json_object_get(json_object_get(pl.plan, "server"), "kind")),
                 json_string_value(json_object_get(json_object_get(pl.plan, "server"), "version")), resolved,
                 pl.train.display, json_string_value(json_object_get(pl.plan, "layout")), p->n_tasks);
    free(resolved);
    json_decref(pl.plan);
    json_decref(pl.cols);
    table_info_free(&pl.train);
    table_info_free(&pl.valid);
    table_info_free(&pl.test);
    free(pl.key_expr);
    if (pl.c)
        PQfinish(pl.c);
    return p;
}

PGconn *etl_plan_conn(const etl_plan *p, cds_err *err)
{
    /* The field is the plan's only mutable state; it is atomic so that the
     * stream threads may race for it. */
    PGconn *c = atomic_exchange(&((etl_plan *)p)->spare, NULL);
    if (c && PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE)
        return c;
    if (c)
        PQfinish(c);
    return etl_pq_connect(p->dsn, err);
}
