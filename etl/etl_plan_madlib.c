/* etl_plan_madlib: planning the unload of a MADlib packed table (the output
 * of training_preprocessor_dl): which columns are the packed independent
 * and dependent variables (the literal names of MADlib 1.16-1.17, else the
 * source names its <table>_summary records), their shapes from the first
 * buffer, and the class values; see etl_planner_int.h for what each MADlib
 * version wrote.  The streams unpack the buffers (etl_rows.c). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "etl_planner_int.h"
#include "etl_value.h"

void etl_madlib_info_free(etl_madlib_info *mi)
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

static int has_column(const etl_table_info *t, const char *name)
{
    uint32_t o;
    return etl_table_column_oid(t, name, &o) == 0;
}

/* Reads <table>_summary (same schema) if it exists and looks like MADlib's. */
static int madlib_read_summary(etl_planner *pl, etl_madlib_info *mi, cds_err *err)
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
    char *qn = etl_pq_quote_ident(pl->c, PQgetvalue(r, 0, 0)), *qr = etl_pq_quote_ident(pl->c, PQgetvalue(r, 0, 1));
    PQclear(r);
    etl_sbuf name = {0}, sql = {0};
    etl_sb_add(&name, "%s.%s", qn, qr);
    free(qn);
    free(qr);
    etl_sb_add(&sql, "SELECT row_to_json(s)::text FROM %s s LIMIT 1", name.s);
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
int etl_madlib_detect(etl_planner *pl, etl_madlib_info *mi, cds_err *err)
{
    memset(mi, 0, sizeof *mi);
    const etl_table_info *t = &pl->train;
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
static int madlib_find(const etl_madlib_info *mi, char *const *cols, size_t n, const json_t *src, const char *name)
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
static int madlib_select(etl_planner *pl, const etl_madlib_info *mi, int xsel[ETL_MADLIB_MAX_X], size_t *nsel, int *ysel,
                         cds_err *err)
{
    const etl_spec *s = pl->s;
    char xs[256], ys[256];
    etl_join_names(xs, sizeof xs, mi->x, mi->nx);
    etl_join_names(ys, sizeof ys, mi->y, mi->ny);
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
static int madlib_column(etl_planner *pl, const char *name, const char *role, madlib_col *mc, cds_err *err)
{
    const etl_table_info *t = &pl->train;
    etl_sbuf shape = {0};
    etl_sb_add(&shape, "%s_shape", name);
    mc->name = name;
    mc->shape = shape.s;
    if (etl_table_column_oid(t, name, &mc->oid) != 0)
        return etl_table_no_such_column(t, name, role, err);
    if (etl_table_column_oid(t, mc->shape, &mc->shape_oid) != 0)
        return etl_table_no_such_column(t, mc->shape, role, err);
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
static PGresult *madlib_first_shapes(etl_planner *pl, const madlib_col *mc, size_t n, cds_err *err)
{
    etl_sbuf sql = {0};
    etl_sb_add(&sql, "SELECT ");
    for (size_t i = 0; i < n; i++) {
        char *q = etl_pq_quote_ident(pl->c, mc[i].shape);
        etl_sb_add(&sql, "%s%s::text", i ? ", " : "", q);
        free(q);
    }
    etl_sb_add(&sql, " FROM %s LIMIT 1", pl->train.qualified);
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
static int madlib_add_x(etl_planner *pl, const madlib_col *mc, const char *text, int only, int64_t *flat, cds_err *err)
{
    int64_t dims[ETL_NPY_MAX_DIMS + 1];
    int n = parse_int_array(text, dims, ETL_NPY_MAX_DIMS);
    if (n < 2 || dims[0] < 1 || etl_product(dims + 1, n - 1) < 1)
        return cds_errf(err, "MADlib table \"%s\": %s is %s, not {rows, dims...} of a buffer", pl->train.display,
                        mc->shape, text);
    int d32[ETL_NPY_MAX_DIMS];
    for (int d = 1; d < n; d++)
        d32[d - 1] = (int)dims[d];
    *flat = etl_product(dims + 1, n - 1);
    json_t *c = etl_planner_add_column(pl, mc->name, mc->oid, mc->oid == ETL_OID_BYTEA ? "bytea" : "array", d32, n - 1, *flat);
    json_object_set_new(c, "role", json_string("x"));
    etl_planner_add_column(pl, mc->shape, mc->shape_oid, "shape", NULL, 0, 0);
    if (only) {
        pl->x_ndim = n - 1;
        memcpy(pl->x_shape, dims + 1, (size_t)(n - 1) * sizeof *dims);
    }
    return 0;
}

/* The dependent variable, one-hot by shape text {rows, classes}: the label
 * and the class count of the plan. */
static int madlib_add_y(etl_planner *pl, const madlib_col *mc, const char *text, cds_err *err)
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
    json_t *c = etl_planner_add_column(pl, mc->name, mc->oid, mc->oid == ETL_OID_BYTEA ? "bytea" : "array", NULL, 0, 0);
    json_object_set_new(c, "role", json_string("y"));
    json_object_set_new(c, "count", json_integer(dims[1]));
    etl_planner_add_column(pl, mc->shape, mc->shape_oid, "shape", NULL, 0, 0);
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
static int madlib_classes(etl_planner *pl, const etl_madlib_info *mi, int ysel, json_t **out, cds_err *err)
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
    char *q = etl_pq_quote_ident(pl->c, key);
    etl_sbuf sql = {0};
    etl_sb_add(&sql, "SELECT array_to_json(%s::text[])::text FROM %s LIMIT 1", q, mi->summary_table);
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
static json_t *madlib_json(const etl_madlib_info *mi, const int *xsel, size_t nsel, int ysel, json_t *classes)
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
int etl_madlib_plan(etl_planner *pl, const etl_madlib_info *mi, cds_err *err)
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
    etl_table_column_oid(&pl->train, "buffer_id", &bid);
    if (!etl_oid_is_numeric(bid))
        return cds_errf(err, "MADlib column \"buffer_id\" of table \"%s\" has type %s, not an integer", pl->train.display,
                        etl_oid_name(bid));
    etl_planner_add_column(pl, "buffer_id", bid, "buffer_id", NULL, 0, 0);
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
