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
#include "etl_planner_int.h"
#include "etl_value.h"

/* ---- the planner --------------------------------------------------------- */

int etl_planner_server(etl_planner *pl, cds_err *err)
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

static int plan_plain_columns(etl_planner *pl, cds_err *err)
{
    const etl_spec *s = pl->s;
    int single_shape = 0;
    for (size_t i = 0; i < s->n_features; i++) {
        const char *name = s->features[i];
        uint32_t oid;
        if (etl_table_column_oid(&pl->train, name, &oid) != 0)
            return etl_table_no_such_column(&pl->train, name, "--features", err);
        if (etl_oid_is_numeric(oid)) {
            etl_planner_add_column(pl, name, oid, "number", NULL, 0, 1);
        } else if (etl_array_elem_oid(oid)) {
            int dims[ETL_NPY_MAX_DIMS], ndim = 0;
            if (etl_table_array_dims(pl->c, &pl->train, name, dims, &ndim, err) != 0)
                return -1;
            int64_t count = 1;
            for (int d = 0; d < ndim; d++)
                count *= dims[d];
            etl_planner_add_column(pl, name, oid, "array", dims, ndim, count);
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
            int64_t count = etl_product(s->feature_shape, s->feature_ndim);
            etl_planner_add_column(pl, name, oid, "bytea", NULL, 0, count);
        } else {
            return cds_errf(err, "column \"%s\" of table \"%s\" has type %s, which cannot be cast to %s features; use numeric columns, numeric arrays, or bytea with --feature-shape",
                            name, pl->train.display, etl_oid_name(oid), etl_dtype_name(s->dtype));
        }
    }
    if (s->feature_ndim) {
        if (etl_product(s->feature_shape, s->feature_ndim) != pl->row_elems)
            return cds_errf(err, "--feature-shape has %lld values per row but the feature columns give %lld; make them agree",
                            (long long)etl_product(s->feature_shape, s->feature_ndim), (long long)pl->row_elems);
        memcpy(pl->x_shape, s->feature_shape, sizeof pl->x_shape);
        pl->x_ndim = s->feature_ndim;
    } else if (!single_shape) {
        pl->x_shape[0] = pl->row_elems;
        pl->x_ndim = 1;
    }
    return 0;
}

static int plan_criteo(etl_planner *pl, cds_err *err)
{
    const etl_spec *s = pl->s;
    if (s->n_features != 39)
        return cds_errf(err, "the criteo transform needs 39 feature columns (13 integer I1..I13, then 26 categorical C1..C26), got %zu",
                        s->n_features);
    etl_criteo cr;
    etl_criteo_init(&cr);
    for (size_t i = 0; i < 39; i++) {
        uint32_t oid;
        if (etl_table_column_oid(&pl->train, s->features[i], &oid) != 0)
            return etl_table_no_such_column(&pl->train, s->features[i], "--features", err);
        int want_int = i < 13;
        if (want_int ? !(etl_oid_is_numeric(oid) || oid == ETL_OID_TEXT || oid == ETL_OID_VARCHAR)
                     : !(oid == ETL_OID_TEXT || oid == ETL_OID_VARCHAR || oid == ETL_OID_BPCHAR))
            return cds_errf(err, "criteo column \"%s\" of table \"%s\" has type %s; the first 13 must be integer (or text), the last 26 text",
                            s->features[i], pl->train.display, etl_oid_name(oid));
        etl_planner_add_column(pl, s->features[i], oid, want_int ? "criteo_int" : "criteo_cat", NULL, 0, 1);
        if (!want_int)
            continue;
        /* 48 edges from the quantiles of the non-missing values, computed once
         * here so that every shard buckets alike. */
        char *q = etl_pq_quote_ident(pl->c, s->features[i]);
        etl_sbuf sql = {0};
        const char *num = etl_oid_is_numeric(oid) ? "%s::float8" : "NULLIF(%s, '')::float8";
        etl_sbuf expr = {0};
        etl_sb_add(&expr, num, q);
        etl_sb_add(&sql, "SELECT unnest(percentile_disc(ARRAY[");
        for (int k = 1; k <= ETL_CRITEO_EDGES; k++)
            etl_sb_add(&sql, "%s%.6f", k > 1 ? "," : "", (double)k / (ETL_CRITEO_EDGES + 1));
        etl_sb_add(&sql, "]) WITHIN GROUP (ORDER BY %s)) FROM %s WHERE %s IS NOT NULL", expr.s, pl->train.qualified,
               expr.s);
        if (s->where)
            etl_sb_add(&sql, " AND (%s)", s->where);
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
static int plan_label(etl_planner *pl, cds_err *err)
{
    const etl_spec *s = pl->s;
    uint32_t oid;
    if (etl_table_column_oid(&pl->train, s->label, &oid) != 0)
        return etl_table_no_such_column(&pl->train, s->label, "--label", err);
    json_t *lab = json_object();
    json_object_set_new(lab, "name", json_string(s->label));
    json_object_set_new(lab, "type", json_integer(oid));
    json_object_set_new(pl->plan, "label", lab);
    if (s->transform) {
        json_object_set_new(lab, "kind", json_string("int"));
        json_object_set_new(pl->plan, "num_classes", json_integer(2));
        return 0;
    }
    const etl_table_info *tabs[3] = {&pl->train, pl->valid.qualified ? &pl->valid : NULL,
                                 pl->test.qualified ? &pl->test : NULL};
    char *q = etl_pq_quote_ident(pl->c, s->label);
    etl_sbuf sql = {0};
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
        etl_sb_add(&sql, "SELECT array_length(%s, 1) FROM %s WHERE %s IS NOT NULL LIMIT 1", q, pl->train.qualified, q);
    } else if (oid == ETL_OID_TEXT || oid == ETL_OID_VARCHAR || oid == ETL_OID_BPCHAR) {
        kind = "text";
        etl_sb_add(&sql, "SELECT DISTINCT l FROM (");
        for (int t = 0, first = 1; t < 3; t++)
            if (tabs[t]) {
                etl_sb_add(&sql, "%sSELECT %s::text AS l FROM %s", first ? "" : " UNION ALL ", q, tabs[t]->qualified);
                first = 0;
            }
        etl_sb_add(&sql, ") s WHERE l IS NOT NULL");
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
static int plan_key(etl_planner *pl, cds_err *err)
{
    const etl_spec *s = pl->s;
    etl_sbuf k = {0};
    if (s->shard_key) {
        uint32_t oid;
        if (etl_table_column_oid(&pl->train, s->shard_key, &oid) != 0)
            return etl_table_no_such_column(&pl->train, s->shard_key, "--shard-key", err);
        char *q = etl_pq_quote_ident(pl->c, s->shard_key);
        etl_sb_add(&k, "%s", q);
        free(q);
    } else if (pl->train.n_pk > 0) {
        etl_sb_add(&k, "ROW(");
        for (size_t i = 0; i < pl->train.n_pk; i++) {
            char *q = etl_pq_quote_ident(pl->c, pl->train.pk[i]);
            etl_sb_add(&k, "%s%s", i ? ", " : "", q);
            free(q);
        }
        etl_sb_add(&k, ")");
    } else {
        return cds_errf(err, "table \"%s\" has no primary key to shard by: give --shard-key COLUMN (a column with many distinct values)",
                        pl->train.display);
    }
    pl->key_expr = k.s;
    json_object_set_new(pl->plan, "shard_key", json_string(k.s));
    return 0;
}

/* A 31-bit hash of the key from md5, hex digits [from, from+8). */
static void sb_hash(etl_sbuf *b, const char *key, int from)
{
    etl_sb_add(b, "(('x' || substr(md5((%s)::text), %d, 8))::bit(32)::int & 2147483647)", key, from);
}

static char *select_list(etl_planner *pl)
{
    etl_sbuf b = {0};
    size_t n = json_array_size(pl->cols);
    for (size_t i = 0; i < n; i++) {
        char *q = etl_pq_quote_ident(pl->c, json_string_value(json_object_get(json_array_get(pl->cols, i), "name")));
        etl_sb_add(&b, "%s%s", i ? ", " : "", q);
        free(q);
    }
    if (!pl->madlib) {
        char *q = etl_pq_quote_ident(pl->c, pl->s->label);
        etl_sb_add(&b, ", %s", q);
        free(q);
    }
    return b.s;
}

/* The COPY queries of one (split, shard): one per PostgreSQL shard, one per
 * Greenplum segment that maps to it. */
json_t *etl_planner_task_queries(etl_planner *pl, const etl_table_info *t, const char *split_filter, int shard,
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
        etl_sbuf b = {0};
        etl_sb_add(&b, "COPY (SELECT %s FROM %s WHERE TRUE", select, t->qualified);
        if (s->where)
            etl_sb_add(&b, " AND (%s)", s->where);
        if (split_filter)
            etl_sb_add(&b, " AND %s", split_filter);
        if (nseg) {
            etl_sb_add(&b, " AND gp_segment_id = %lld", (long long)json_integer_value(json_array_get(segs, seg)));
            if (parts > 1) {
                etl_sb_add(&b, " AND ");
                sb_hash(&b, pl->key_expr, 1);
                etl_sb_add(&b, " %% %zu = %zu", parts, part);
            }
        } else if (s->shards > 1) {
            etl_sb_add(&b, " AND ");
            sb_hash(&b, pl->key_expr, 1);
            etl_sb_add(&b, " %% %d = %d", s->shards, shard);
        }
        etl_sb_add(&b, ") TO STDOUT (FORMAT binary)");
        json_array_append_new(qs, json_string(b.s));
        free(b.s);
    }
    return qs;
}

static void add_split_tasks(etl_planner *pl, json_t *tasks, const char *split, const etl_table_info *t,
                            const char *split_filter, const char *select)
{
    for (int k = 0; k < pl->s->shards; k++) {
        json_t *task = json_object();
        json_object_set_new(task, "split", json_string(split));
        json_object_set_new(task, "shard", json_integer(k));
        json_object_set_new(task, "queries", etl_planner_task_queries(pl, t, split_filter, k, select));
        json_array_append_new(tasks, task);
    }
}

static int plan_tasks(etl_planner *pl, cds_err *err)
{
    (void)err;
    const etl_spec *s = pl->s;
    char *select = select_list(pl);
    json_t *tasks = json_array();
    char *train_filter = NULL, *valid_filter = NULL;
    if (s->valid_fraction > 0) {
        long long cut = (long long)llround(s->valid_fraction * 2147483648.0);
        etl_sbuf a = {0}, b = {0};
        sb_hash(&a, pl->key_expr, 9);
        etl_sb_add(&a, " >= %lld", cut);
        sb_hash(&b, pl->key_expr, 9);
        etl_sb_add(&b, " < %lld", cut);
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
    etl_sbuf src = {0};
    etl_sb_add(&src, "SELECT %s FROM %s", select, pl->train.qualified);
    if (s->where)
        etl_sb_add(&src, " WHERE (%s)", s->where);
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
static int check_split_table(etl_planner *pl, const etl_table_info *t, const char *option, cds_err *err)
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
            if (etl_table_column_oid(&pl->train, name, &want) != 0)
                return 0;
        }
        if (etl_table_column_oid(t, name, &got) != 0)
            return etl_table_no_such_column(t, name, option, err);
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

static int plan_paths(etl_planner *pl, cds_err *err)
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
    etl_planner pl = {.s = s};
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
        rc = etl_planner_server(&pl, err);
    if (rc == 0)
        rc = etl_table_resolve(pl.c, s->table, &pl.train, err);
    if (rc == 0 && s->valid_table)
        rc = etl_table_resolve(pl.c, s->valid_table, &pl.valid, err);
    if (rc == 0 && s->test_table)
        rc = etl_table_resolve(pl.c, s->test_table, &pl.test, err);
    etl_madlib_info mi = {0};
    if (rc == 0 && !s->transform && (pl.madlib = etl_madlib_detect(&pl, &mi, err)) < 0)
        rc = -1;
    if (rc == 0) {
        const char *layout = s->transform ? "criteo" : pl.madlib ? "madlib" : "columns";
        json_object_set_new(pl.plan, "layout", json_string(layout));
        if (s->transform)
            rc = plan_criteo(&pl, err);
        else if (pl.madlib)
            rc = etl_madlib_plan(&pl, &mi, err);
        else
            rc = plan_plain_columns(&pl, err);
    }
    etl_madlib_info_free(&mi);
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
        json_object_set_new(x, "row_shape", etl_shape_json(pl.x_shape, pl.x_ndim));
        json_object_set_new(pl.plan, "x", x);
        json_object_set_new(pl.plan, "source_table", json_string(pl.train.qualified));
        rc = plan_tasks(&pl, err);
    }
    if (rc == 0) {
        /* This process's own streams connect where the planner did, with
         * the password it used (kept in memory only, in a buffer sized so
         * that no copy of it is left behind by a realloc). */
        const char *pw = PQpass(pl.c);
        etl_sbuf conn = {.cap = strlen(resolved) + 2 * (pw ? strlen(pw) : 0) + 32};
        conn.s = malloc(conn.cap);
        etl_sb_add(&conn, "%s", resolved);
        if (pw && *pw)
            etl_sb_conninfo(&conn, "password", pw);
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
    etl_table_info_free(&pl.train);
    etl_table_info_free(&pl.valid);
    etl_table_info_free(&pl.test);
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
