/* etl_plan_predict: planning a prediction (etl_predict.h).
 *
 * The plan is the dataset's own ETL plan made to read another table: its
 * layout, row shape, dtype, classes, Criteo edges and bytea encoding stay
 * (so a row is cast exactly as the model's training rows were), its
 * columns take the source table's names (each with the dataset column's
 * type, kind and shape, which the table's must equal), its label becomes
 * the row id (kind "rowid"), and its tasks are the parts.  The planner
 * reuses the unload's: server detection, table resolution and the COPY
 * queries of a shard (etl_planner_task_queries), with the id as the key
 * whose hash splits PostgreSQL's rows into parts.
 *
 * The output table is schema.table when its name has a dot, else a table
 * of the connection's current schema; the staging tables go to the same
 * schema, named cds_predict_<token>_<k>, so the finish is one transaction
 * inside one schema. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "etl_planner_int.h"
#include "etl_predict.h"
#include "etl_value.h"

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* The dataset's columns taken by the table's: the same count, and each
 * with the type and shape of the dataset's column at its place. */
static int match_columns(etl_planner *pl, const etl_predict_spec *s, const json_t *dcols, const char *dataset,
                         json_t *cols, cds_err *err)
{
    size_t n = json_array_size(dcols);
    char **names = calloc(n ? n : 1, sizeof *names);
    for (size_t i = 0; i < n; i++)
        names[i] = (char *)jstr(json_array_get(dcols, i), "name");
    char list[512];
    etl_join_names(list, sizeof list, names, n);
    free(names);
    size_t have = s->features ? s->n_features : n;
    if (have != n)
        return cds_errf(err, "--features names %zu column(s) but dataset %s was unloaded from %zu (%s): name the table's "
                        "columns in that order",
                        have, dataset, n, list);
    for (size_t i = 0; i < n; i++) {
        const json_t *dc = json_array_get(dcols, i);
        const char *name = s->features ? s->features[i] : jstr(dc, "name");
        uint32_t want = (uint32_t)json_integer_value(json_object_get(dc, "type")), got;
        if (etl_table_column_oid(&pl->train, name, &got) != 0)
            return etl_table_no_such_column(&pl->train, name, s->features ? "--features" : "the dataset's features", err);
        if (got != want)
            return cds_errf(err, "column \"%s\" of table \"%s\" is %s but dataset %s's column \"%s\" was %s: rows are cast "
                            "as the model's were; cast it in a view (CREATE VIEW v AS SELECT \"%s\"::%s ...)",
                            name, pl->train.display, etl_oid_name(got), dataset, jstr(dc, "name"), etl_oid_name(want),
                            name, etl_oid_name(want));
        json_t *c = json_deep_copy(dc);
        json_object_set_new(c, "name", json_string(name));
        json_array_append_new(cols, c);
        if (strcmp(jstr(dc, "kind"), "array") != 0)
            continue;
        int dims[ETL_NPY_MAX_DIMS], nd = 0;
        if (etl_table_array_dims(pl->c, &pl->train, name, dims, &nd, err) != 0)
            return -1;
        json_t *dd = json_object_get(dc, "dims");
        int same = (size_t)nd == json_array_size(dd);
        for (int d = 0; same && d < nd; d++)
            same = dims[d] == json_integer_value(json_array_get(dd, (size_t)d));
        if (!same) {
            char got_s[64] = "", want_s[64] = "";
            for (int d = 0; d < nd; d++)
                snprintf(got_s + strlen(got_s), sizeof got_s - strlen(got_s), "%s%d", d ? "x" : "", dims[d]);
            for (size_t d = 0; d < json_array_size(dd); d++)
                snprintf(want_s + strlen(want_s), sizeof want_s - strlen(want_s), "%s%lld", d ? "x" : "",
                         (long long)json_integer_value(json_array_get(dd, d)));
            return cds_errf(err, "column \"%s\" of table \"%s\" holds %s arrays but dataset %s's held %s: give the model "
                            "rows of the shape it trained on",
                            name, pl->train.display, got_s, dataset, want_s);
        }
    }
    return 0;
}

/* The id column (--id, else a one-column primary key): its name, oid and
 * SQL type (format_type, typmod included). */
static int find_id(etl_planner *pl, const etl_predict_spec *s, json_t *label, char **type, cds_err *err)
{
    const char *id = s->id;
    if (!id && pl->train.n_pk != 1)
        return cds_errf(err, "table \"%s\" has %s: name the column that identifies a row with --id COLUMN",
                        pl->train.display, pl->train.n_pk ? "a primary key of several columns" : "no primary key");
    if (!id)
        id = pl->train.pk[0];
    uint32_t oid;
    if (etl_table_column_oid(&pl->train, id, &oid) != 0)
        return etl_table_no_such_column(&pl->train, id, "--id", err);
    const char *params[2] = {pl->train.oid, id};
    PGresult *r = etl_pq_exec(pl->c, "reading the id column's type",
                              "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::oid "
                              "AND attname = $2",
                              2, params, PGRES_TUPLES_OK, err);
    if (!r)
        return -1;
    *type = PQntuples(r) == 1 ? strdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    if (!*type)
        return cds_errf(err, "column \"%s\" of table \"%s\" vanished while planning; try again", id, pl->train.display);
    json_object_set_new(label, "name", json_string(id));
    json_object_set_new(label, "type", json_integer(oid));
    json_object_set_new(label, "kind", json_string("rowid"));
    return 0;
}

/* The output table: schema and name quoted, refused when it exists
 * without replace, or when it is the source. */
static int plan_output(etl_planner *pl, const etl_predict_spec *s, json_t *pr, cds_err *err)
{
    const char *dot = strchr(s->out_table, '.');
    char *schema = NULL;
    if (dot) {
        schema = strndup(s->out_table, (size_t)(dot - s->out_table));
    } else {
        PGresult *r = etl_pq_exec(pl->c, "reading the current schema", "SELECT current_schema()", 0, NULL,
                                  PGRES_TUPLES_OK, err);
        if (!r)
            return -1;
        schema = PQgetisnull(r, 0, 0) ? NULL : strdup(PQgetvalue(r, 0, 0));
        PQclear(r);
        if (!schema)
            return cds_errf(err, "the connection has no current schema to create %s in: write --out-table SCHEMA.TABLE",
                            s->out_table);
    }
    const char *table = dot ? dot + 1 : s->out_table;
    if (!*schema || !*table || strchr(table, '.')) {
        free(schema);
        return cds_errf(err, "--out-table '%s': write TABLE or SCHEMA.TABLE", s->out_table);
    }
    const char *sp[1] = {schema};
    PGresult *sr = etl_pq_exec(pl->c, "looking up the output's schema",
                               "SELECT has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = $1", 1, sp,
                               PGRES_TUPLES_OK, err);
    int schema_rc = !sr ? -1
                    : PQntuples(sr) == 0 ? cds_errf(err, "--out-table %s: there is no schema \"%s\" (create it, or name "
                                                    "a table of an existing schema)", s->out_table, schema)
                    : strcmp(PQgetvalue(sr, 0, 0), "t") != 0
                        ? cds_errf(err, "--out-table %s: this role may not create tables in schema \"%s\" (GRANT CREATE "
                                   "ON SCHEMA, or name another schema)", s->out_table, schema)
                        : 0;
    PQclear(sr);
    if (schema_rc != 0) {
        free(schema);
        return -1;
    }
    char *qs = etl_pq_quote_ident(pl->c, schema), *qt = etl_pq_quote_ident(pl->c, table);
    etl_sbuf q = {0};
    etl_sb_add(&q, "%s.%s", qs, qt);
    json_object_set_new(pr, "schema", json_string(schema));
    json_object_set_new(pr, "table", json_string(table));
    json_object_set_new(pr, "out_table", json_string(q.s));
    json_object_set_new(pr, "out_display", json_string(s->out_table));
    const char *params[2] = {q.s, pl->train.oid};
    PGresult *r = etl_pq_exec(pl->c, "looking up the output table",
                              "SELECT to_regclass($1) IS NOT NULL, to_regclass($1)::oid = $2::oid", 2, params,
                              PGRES_TUPLES_OK, err);
    int rc = r ? 0 : -1;
    if (r && strcmp(PQgetvalue(r, 0, 1), "t") == 0)
        rc = cds_errf(err, "--out-table %s is the table being scored: write the predictions to another table",
                      s->out_table);
    else if (r && strcmp(PQgetvalue(r, 0, 0), "t") == 0 && !s->replace)
        rc = cds_errf(err, "table %s exists: pass --replace to write over it, or name another --out-table", s->out_table);
    PQclear(r);
    free(q.s);
    free(qs);
    free(qt);
    free(schema);
    return rc;
}

/* The select list (the features, then the id) and the parts' tasks. */
static int plan_parts(etl_planner *pl, const etl_predict_spec *s, json_t *plan, int parts, cds_err *err)
{
    json_t *cols = json_object_get(plan, "columns");
    etl_sbuf sel = {0};
    for (size_t i = 0; i < json_array_size(cols); i++) {
        char *q = etl_pq_quote_ident(pl->c, jstr(json_array_get(cols, i), "name"));
        etl_sb_add(&sel, "%s, ", q);
        free(q);
    }
    char *qid = etl_pq_quote_ident(pl->c, jstr(json_object_get(plan, "label"), "name"));
    etl_sb_add(&sel, "%s", qid);
    pl->key_expr = qid;
    json_object_set_new(plan, "shard_key", json_string(qid)); /* the id hashes PostgreSQL's rows into parts */
    etl_spec ps = {.shards = parts, .where = (char *)s->where};
    pl->s = &ps;
    json_t *tasks = json_array();
    for (int k = 0; k < parts; k++) {
        json_t *t = json_object();
        json_object_set_new(t, "split", json_string("predict"));
        json_object_set_new(t, "shard", json_integer(k));
        json_object_set_new(t, "queries", etl_planner_task_queries(pl, &pl->train, NULL, k, sel.s));
        json_array_append_new(tasks, t);
    }
    pl->s = NULL;
    json_object_set_new(plan, "tasks", tasks);
    etl_sbuf src = {0};
    etl_sb_add(&src, "SELECT %s FROM %s", sel.s, pl->train.qualified);
    if (s->where)
        etl_sb_add(&src, " WHERE (%s)", s->where);
    json_object_set_new(plan, "source_query", json_string(src.s));
    free(src.s);
    free(sel.s);
    (void)err;
    return 0;
}

/* The "predict" object's fields that come from the spec alone. */
static json_t *predict_object(const etl_predict_spec *s, const json_t *dplan, int parts, const char *token)
{
    static const char *const types[] = {"class", "prob", "topk"};
    json_t *pr = json_object();
    json_object_set_new(pr, "token", json_string(token));
    json_object_set_new(pr, "type", json_string(types[s->type]));
    json_object_set_new(pr, "k", json_integer(s->type == ETL_PREDICT_TOPK ? s->k : 1));
    json_object_set_new(pr, "classes", json_integer(s->classes));
    json_object_set_new(pr, "replace", json_boolean(s->replace));
    json_object_set_new(pr, "parts", json_integer(parts));
    json_object_set_new(pr, "ckpt", json_string(s->ckpt));
    json_object_set_new(pr, "sweep", json_string(s->sweep ? s->sweep : ""));
    json_object_set_new(pr, "model", json_integer(s->model));
    json_object_set_new(pr, "epoch", json_integer(s->epoch));
    json_t *classes = json_object_get(dplan, "classes");
    json_object_set_new(pr, "class_type", json_string(json_array_size(classes) ? "text" : "integer"));
    return pr;
}

static int check_spec(const etl_predict_spec *s, const json_t *dplan, const char *dataset, cds_err *err)
{
    if (strcmp(jstr(dplan, "layout"), "madlib") == 0)
        return cds_errf(err, "dataset %s was unloaded from a MADlib packed table, whose buffers hold training rows: "
                        "predict reads a table of plain rows, so unload those rows as a dataset and train on it",
                        dataset);
    if (s->parts < 0 || s->parts > ETL_PREDICT_MAX_PARTS)
        return cds_errf(err, "--parts %d is out of range: use 1 to %d (0: one per shard of the dataset)", s->parts,
                        ETL_PREDICT_MAX_PARTS);
    if (s->classes < 2)
        return cds_errf(err, "the model has %d classes; a prediction needs a classifier of at least 2", s->classes);
    if (s->type == ETL_PREDICT_TOPK && (s->k < 1 || s->k > s->classes))
        return cds_errf(err, "--k %d is out of range: the model has %d classes (use 1 to %d)", s->k, s->classes,
                        s->classes);
    size_t nc = json_array_size(json_object_get(dplan, "classes"));
    if (nc && nc != (size_t)s->classes)
        return cds_errf(err, "the model has %d classes but dataset %s names %zu: was the dataset replaced since the "
                        "sweep trained? predict with a model of this dataset",
                        s->classes, dataset, nc);
    if (!s->out_table || !*s->out_table)
        return cds_errf(err, "a prediction needs --out-table TABLE");
    return 0;
}

json_t *etl_predict_plan(const etl_predict_spec *s, const json_t *dplan, cds_err *err)
{
    const json_t *dspec = json_object_get(dplan, "spec");
    const char *dataset = jstr(dspec, "dataset");
    if (!json_is_object(dplan) || strcmp(jstr(dplan, "format"), "cds-etl-plan") != 0)
        return cds_errf(err, "dataset %s has no ETL plan in its record (reload it with jobctl enqueue etl)", dataset),
               NULL;
    if (check_spec(s, dplan, dataset, err) != 0)
        return NULL;
    const char *dsn = s->dsn && *s->dsn ? s->dsn : jstr(dspec, "dsn");
    etl_planner pl = {0};
    if (!(pl.c = etl_pq_connect(dsn, err)))
        return NULL;
    pl.plan = json_object();
    char token[17];
    int rc = cds_random_hex(token, 8, err);
    if (rc == 0)
        rc = etl_planner_server(&pl, err);
    if (rc == 0)
        rc = etl_table_resolve(pl.c, s->table, &pl.train, err);
    json_t *cols = json_array(), *label = json_object();
    char *id_type = NULL;
    if (rc == 0)
        rc = match_columns(&pl, s, json_object_get(dplan, "columns"), dataset, cols, err);
    if (rc == 0)
        rc = find_id(&pl, s, label, &id_type, err);
    json_t *segs = json_object_get(json_object_get(pl.plan, "server"), "segments");
    int parts = s->parts ? s->parts
                : json_array_size(segs) ? (int)json_array_size(segs)
                                        : (int)json_integer_value(json_object_get(dspec, "shards"));
    if (parts < 1)
        parts = 1;
    json_t *pr = predict_object(s, dplan, parts, token);
    if (rc == 0)
        rc = plan_output(&pl, s, pr, err);
    json_t *plan = NULL;
    if (rc == 0) {
        plan = json_deep_copy(dplan);
        json_object_del(plan, "dataset_dir");
        json_object_del(plan, "token");
        json_object_set_new(plan, "staging", json_string(""));
        json_object_set(plan, "server", json_object_get(pl.plan, "server"));
        json_object_set(plan, "columns", cols);
        json_object_set(plan, "label", label);
        json_object_set_new(plan, "source_table", json_string(pl.train.qualified));
        json_object_set_new(pr, "id_type", json_string(id_type));
        json_object_set_new(pr, "greenplum", json_boolean(json_array_size(segs) > 0));
        json_object_set(plan, "predict", pr);
        /* The spec keeps what the casts read (feature_encoding), reaches
         * this connection's database, and filters with the prediction's
         * --where, never the dataset's. */
        json_t *spec = json_object_get(plan, "spec");
        char *resolved = etl_dsn_resolved(pl.c);
        json_object_set_new(spec, "dsn", json_string(resolved));
        free(resolved);
        json_object_del(spec, "where");
        if (s->where)
            json_object_set_new(spec, "where", json_string(s->where));
        rc = plan_parts(&pl, s, plan, parts, err);
    }
    if (rc != 0) {
        json_decref(plan);
        plan = NULL;
    }
    json_decref(pr);
    json_decref(cols);
    json_decref(label);
    free(id_type);
    free(pl.key_expr);
    json_decref(pl.plan);
    etl_table_info_free(&pl.train);
    PQfinish(pl.c);
    return plan;
}

int etl_predict_parts(const json_t *plan)
{
    return (int)json_integer_value(json_object_get(json_object_get(plan, "predict"), "parts"));
}

json_t *etl_predict_part_plan(const json_t *plan, int k)
{
    json_t *p = json_copy((json_t *)plan);
    if (!p)
        return NULL;
    json_t *one = json_array();
    json_array_append(one, json_array_get(json_object_get(plan, "tasks"), (size_t)k));
    json_object_set_new(p, "tasks", one);
    return p;
}

json_t *etl_predict_finish_plan(const json_t *plan)
{
    json_t *p = json_copy((json_t *)plan);
    if (p)
        json_object_del(p, "tasks");
    return p;
}
