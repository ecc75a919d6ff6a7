/* etl_plan_load: the working struct of a plan, built from its JSON (which
 * etl_plan_make writes and the queue carries).  Everything the streams read
 * per row is resolved here once: column kinds, shapes, the label form and
 * the sorted dictionary of text labels. */
#include <stdlib.h>
#include <string.h>

#include "etl_plan_int.h"
#include "etl_value.h"

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static int bad_plan(cds_err *err, const char *what)
{
    return cds_errf(err, "malformed ETL plan: %s (was it written by another version? re-enqueue the ETL job)", what);
}

/* Each x buffer followed by its shape, then y and its shape, then
 * buffer_id: the number of x columns follows from the count, since the
 * streams read the columns by position (a plan made before buffer_id was
 * read with the buffers is refused), and must be one the streams can hold. */
static int madlib_columns_ok(etl_plan *p, cds_err *err)
{
    if (p->n_cols < 5 || p->n_cols % 2 == 0 || p->cols[p->n_cols - 1].kind != ETL_COL_BUFFER_ID)
        return bad_plan(err, "MADlib columns are not (buffer, shape) pairs then buffer_id");
    for (size_t i = 0; i + 1 < p->n_cols; i += 2)
        if ((p->cols[i].kind != ETL_COL_ARRAY && p->cols[i].kind != ETL_COL_BYTEA) ||
            p->cols[i + 1].kind != ETL_COL_SHAPE)
            return bad_plan(err, "MADlib columns are not (buffer, shape) pairs then buffer_id");
    p->madlib_nx = (p->n_cols - 3) / 2;
    if (p->madlib_nx > ETL_MADLIB_MAX_X)
        return bad_plan(err, "more MADlib independent variables than a stream reads");
    return 0;
}

static int load_columns(etl_plan *p, cds_err *err)
{
    json_t *cols = json_object_get(p->json, "columns");
    p->n_cols = json_array_size(cols);
    if (p->n_cols == 0)
        return bad_plan(err, "no columns");
    p->cols = calloc(p->n_cols, sizeof *p->cols);
    for (size_t i = 0; i < p->n_cols; i++) {
        json_t *c = json_array_get(cols, i);
        etl_col *col = &p->cols[i];
        col->name = strdup(jstr(c, "name"));
        col->oid = (uint32_t)json_integer_value(json_object_get(c, "type"));
        const char *kind = jstr(c, "kind");
        col->kind = strcmp(kind, "array") == 0       ? ETL_COL_ARRAY
                    : strcmp(kind, "bytea") == 0     ? ETL_COL_BYTEA
                    : strcmp(kind, "shape") == 0     ? ETL_COL_SHAPE
                    : strcmp(kind, "buffer_id") == 0 ? ETL_COL_BUFFER_ID
                                                     : ETL_COL_NUMBER;
        col->count = json_integer_value(json_object_get(c, "count"));
        json_t *dims = json_object_get(c, "dims");
        col->ndim = (int)json_array_size(dims);
        for (int d = 0; d < col->ndim && d < ETL_NPY_MAX_DIMS; d++)
            col->dims[d] = (int)json_integer_value(json_array_get(dims, (size_t)d));
    }
    return p->layout == ETL_LAYOUT_MADLIB ? madlib_columns_ok(p, err) : 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int load_label(etl_plan *p, cds_err *err)
{
    json_t *lab = json_object_get(p->json, "label");
    p->label_name = strdup(jstr(lab, "name"));
    p->label_oid = (uint32_t)json_integer_value(json_object_get(lab, "type"));
    const char *kind = jstr(lab, "kind");
    p->label_kind = strcmp(kind, "text") == 0     ? ETL_LABEL_TEXT
                    : strcmp(kind, "onehot") == 0 ? ETL_LABEL_ONEHOT
                    : strcmp(kind, "rowid") == 0  ? ETL_LABEL_ROWID
                                                  : ETL_LABEL_INT;
    /* 0 for integer labels: settled at finish from the largest id seen. */
    p->num_classes = (int)json_integer_value(json_object_get(p->json, "num_classes"));
    if (p->num_classes < 1 && p->label_kind != ETL_LABEL_INT && p->label_kind != ETL_LABEL_ROWID)
        return bad_plan(err, "no class count");
    json_t *classes = json_object_get(p->json, "classes");
    p->has_classes = json_array_size(classes) > 0;
    /* Only text labels are looked up; MADlib's class values (which may hold
     * null) are in one-hot order and only recorded. */
    p->n_dict = p->label_kind == ETL_LABEL_TEXT ? json_array_size(classes) : 0;
    p->dict = calloc(p->n_dict ? p->n_dict : 1, sizeof *p->dict);
    for (size_t i = 0; i < p->n_dict; i++) {
        const char *c = json_string_value(json_array_get(classes, i));
        if (!c)
            return bad_plan(err, "a text class that is not a string");
        p->dict[i] = strdup(c);
    }
    qsort(p->dict, p->n_dict, sizeof *p->dict, cmp_str);
    return 0;
}

static int load_tasks(etl_plan *p, cds_err *err)
{
    json_t *tasks = json_object_get(p->json, "tasks");
    p->n_tasks = json_array_size(tasks);
    if (p->n_tasks == 0)
        return bad_plan(err, "no tasks");
    p->tasks = calloc(p->n_tasks, sizeof *p->tasks);
    for (size_t i = 0; i < p->n_tasks; i++) {
        json_t *t = json_array_get(tasks, i);
        p->tasks[i].split = strdup(jstr(t, "split"));
        p->tasks[i].shard = (int)json_integer_value(json_object_get(t, "shard"));
        json_t *qs = json_object_get(t, "queries");
        p->tasks[i].n_queries = json_array_size(qs);
        p->tasks[i].queries = calloc(p->tasks[i].n_queries ? p->tasks[i].n_queries : 1, sizeof(char *));
        for (size_t k = 0; k < p->tasks[i].n_queries; k++)
            p->tasks[i].queries[k] = strdup(json_string_value(json_array_get(qs, k)));
    }
    return 0;
}

etl_plan *etl_plan_from_json(const json_t *j, const char *dsn, cds_err *err)
{
    if (!json_is_object(j) || strcmp(jstr(j, "format"), "cds-etl-plan") != 0 ||
        json_integer_value(json_object_get(j, "format_version")) != 1)
        return bad_plan(err, "not a cds-etl-plan of format version 1"), NULL;
    etl_plan *p = calloc(1, sizeof *p);
    p->json = json_deep_copy(j);
    json_t *spec = json_object_get(p->json, "spec");
    p->dsn = strdup(dsn ? dsn : jstr(spec, "dsn"));
    p->dataset = jstr(spec, "dataset");
    p->replace = json_is_true(json_object_get(spec, "replace"));
    p->jobs = (int)json_integer_value(json_object_get(spec, "jobs"));
    p->staging = jstr(p->json, "staging");
    p->dataset_dir = jstr(p->json, "dataset_dir");
    p->source_table = jstr(p->json, "source_table");
    p->greenplum = strcmp(jstr(json_object_get(p->json, "server"), "kind"), "greenplum") == 0;
    const char *layout = jstr(p->json, "layout");
    p->layout = strcmp(layout, "madlib") == 0 ? ETL_LAYOUT_MADLIB : strcmp(layout, "criteo") == 0 ? ETL_LAYOUT_CRITEO
                                                                                                   : ETL_LAYOUT_COLUMNS;
    json_t *x = json_object_get(p->json, "x");
    json_t *shape = json_object_get(x, "row_shape");
    p->x_ndim = (int)json_array_size(shape);
    p->row_elems = 1;
    for (int d = 0; d < p->x_ndim && d < ETL_NPY_MAX_DIMS - 1; d++) {
        p->x_shape[d] = json_integer_value(json_array_get(shape, (size_t)d));
        p->row_elems *= p->x_shape[d];
    }
    const char *enc = jstr(spec, "feature_encoding");
    p->bytea_f32 = strcmp(enc, "float32le") == 0;
    int rc = etl_dtype_parse(jstr(x, "dtype"), &p->x_dtype) == 0 ? 0 : bad_plan(err, "x.dtype");
    if (rc == 0)
        rc = load_columns(p, err);
    if (rc == 0)
        rc = load_label(p, err);
    if (rc == 0)
        rc = load_tasks(p, err);
    if (rc == 0 && p->layout == ETL_LAYOUT_CRITEO) {
        rc = etl_criteo_from_json(&p->criteo, json_object_get(p->json, "criteo"), err);
        for (size_t i = 0; rc == 0 && i < 39 && i < p->n_cols; i++)
            p->criteo_oids[i + 1] = p->cols[i].oid;
        /* A prediction's rows give the transform a class of 0 (int4). */
        p->criteo_oids[0] = p->label_kind == ETL_LABEL_ROWID ? ETL_OID_INT4 : p->label_oid;
    }
    if (rc != 0) {
        etl_plan_free(p);
        return NULL;
    }
    return p;
}

void etl_plan_free(etl_plan *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_cols; i++)
        free(p->cols[i].name);
    free(p->cols);
    for (size_t i = 0; i < p->n_dict; i++)
        free(p->dict[i]);
    free(p->dict);
    for (size_t i = 0; i < p->n_tasks; i++) {
        for (size_t k = 0; k < p->tasks[i].n_queries; k++)
            free(p->tasks[i].queries[k]);
        free(p->tasks[i].queries);
        free(p->tasks[i].split);
    }
    free(p->tasks);
    free(p->label_name);
    PGconn *spare = atomic_exchange(&p->spare, NULL);
    if (spare)
        PQfinish(spare);
    if (p->dsn)
        memset(p->dsn, 0, strlen(p->dsn));
    free(p->dsn);
    json_decref(p->json);
    free(p);
}

json_t *etl_plan_to_json(const etl_plan *p) { return json_incref(p->json); }
size_t etl_plan_tasks(const etl_plan *p) { return p->n_tasks; }
const char *etl_plan_task_split(const etl_plan *p, size_t i) { return p->tasks[i].split; }
int etl_plan_task_shard(const etl_plan *p, size_t i) { return p->tasks[i].shard; }
const char *etl_plan_staging_dir(const etl_plan *p) { return p->staging; }
const char *etl_plan_dataset_dir(const etl_plan *p) { return p->dataset_dir; }
