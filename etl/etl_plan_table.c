/* etl_plan_table: what the planner learns of a source table: its
 * qualified name (as one identifier as written, or schema.table, each part
 * through PQescapeIdentifier), its columns with their type oids, its primary
 * key, the dimensions of an array column (from its first non-NULL row); and
 * the column list of the plan the planner builds from them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etl_planner_int.h"

void etl_table_info_free(etl_table_info *t)
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
int etl_table_resolve(PGconn *c, const char *name, etl_table_info *t, cds_err *err)
{
    memset(t, 0, sizeof *t);
    char *candidates[2] = {etl_pq_quote_ident(c, name), NULL};
    const char *dot = strchr(name, '.');
    if (dot) {
        char *schema = strndup(name, (size_t)(dot - name));
        char *qs = etl_pq_quote_ident(c, schema), *qt = etl_pq_quote_ident(c, dot + 1);
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

int etl_table_column_oid(const etl_table_info *t, const char *name, uint32_t *oid)
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
void etl_join_names(char *out, size_t n, char *const *names, size_t k)
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

int etl_table_no_such_column(const etl_table_info *t, const char *name, const char *option, cds_err *err)
{
    char list[512];
    etl_join_names(list, sizeof list, t->names, t->n);
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
int etl_table_array_dims(PGconn *c, const etl_table_info *t, const char *col, int *dims, int *ndim, cds_err *err)
{
    char *q = etl_pq_quote_ident(c, col);
    etl_sbuf sql = {0};
    etl_sb_add(&sql, "SELECT array_dims(%s) FROM %s WHERE %s IS NOT NULL LIMIT 1", q, t->qualified, q);
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

json_t *etl_dims_json(const int *dims, int ndim)
{
    json_t *a = json_array();
    for (int i = 0; i < ndim; i++)
        json_array_append_new(a, json_integer(dims[i]));
    return a;
}

json_t *etl_shape_json(const int64_t *dims, int ndim)
{
    json_t *a = json_array();
    for (int i = 0; i < ndim; i++)
        json_array_append_new(a, json_integer(dims[i]));
    return a;
}

int64_t etl_product(const int64_t *d, int n)
{
    int64_t p = 1;
    for (int i = 0; i < n; i++)
        p *= d[i];
    return p;
}

/* Appends a column to the plan; returns its object (owned by the plan) for
 * the caller to add to. */
json_t *etl_planner_add_column(etl_planner *pl, const char *name, uint32_t oid, const char *kind, const int *dims, int ndim,
                          int64_t count)
{
    json_t *c = json_object();
    json_object_set_new(c, "name", json_string(name));
    json_object_set_new(c, "type", json_integer(oid));
    json_object_set_new(c, "kind", json_string(kind));
    if (ndim)
        json_object_set_new(c, "dims", etl_dims_json(dims, ndim));
    json_object_set_new(c, "count", json_integer(count));
    json_array_append_new(pl->cols, c);
    pl->row_elems += count;
    return c;
}
