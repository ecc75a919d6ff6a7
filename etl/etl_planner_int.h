/* etl_planner_int: what the files of the planner share (etl_plan.c, the
 * plan; etl_plan_table.c, tables and columns; etl_plan_madlib.c, MADlib
 * packed tables; etl_pq.c, libpq and the string builder).  Calls flow one
 * way: etl_plan.c -> etl_plan_madlib.c -> etl_plan_table.c -> etl_pq.c.
 * Not installed. */
#ifndef CDS_ETL_PLANNER_INT_H
#define CDS_ETL_PLANNER_INT_H

#ifndef CDS_ETL_INTERNAL
#error "etl_planner_int.h is private to etl/: include etl_queue.h, etl_unload.h, etl_dataset_record.h and the other public etl headers (a white-box test under tests/ adds c_args : etl_private_args)"
#endif

#include "etl_plan_int.h"

/* ---- etl_pq.c ----------------------------------------------------------- */

/* A growing string: s holds n bytes and a NUL, in cap. */
typedef struct etl_sbuf {
    char *s;
    size_t n, cap;
} etl_sbuf;

/* Appends printf-style; the buffer grows by realloc. */
void etl_sb_add(etl_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends key='val' as libpq reads it (etl_conninfo_append). */
void etl_sb_conninfo(etl_sbuf *b, const char *key, const char *val);
/* name as a quoted SQL identifier (PQescapeIdentifier), malloc'd. */
char *etl_pq_quote_ident(PGconn *c, const char *name);

/* ---- etl_plan_table.c --------------------------------------------------- */

/* A source table as the planner learnt it. */
typedef struct etl_table_info {
    char *qualified; /* quoted, as used in SQL */
    char *display;
    char oid[32];    /* pg_class oid, as text */
    size_t n;
    char **names;
    uint32_t *oids;
    char **pk;
    size_t n_pk;
} etl_table_info;

void etl_table_info_free(etl_table_info *t);
/* Resolves name (one identifier as written, or schema.table) with its
 * columns, their types and its primary key. */
int etl_table_resolve(PGconn *c, const char *name, etl_table_info *t, cds_err *err);
/* 0 with the column's type oid, -1 if the table has no such column. */
int etl_table_column_oid(const etl_table_info *t, const char *name, uint32_t *oid);
/* "a, b, c" of k names into out (n bytes), cut with "..." if long. */
void etl_join_names(char *out, size_t n, char *const *names, size_t k);
/* The error for a column the table lacks, naming the option and the
 * columns it has. */
int etl_table_no_such_column(const etl_table_info *t, const char *name, const char *option, cds_err *err);
/* The dimensions of an array column, from its first non-NULL row. */
int etl_table_array_dims(PGconn *c, const etl_table_info *t, const char *col, int *dims, int *ndim, cds_err *err);
json_t *etl_dims_json(const int *dims, int ndim);
json_t *etl_shape_json(const int64_t *dims, int ndim);
int64_t etl_product(const int64_t *d, int n);

/* ---- the planner's state (etl_plan.c) ------------------------------------ */

typedef struct etl_planner {
    const etl_spec *s;
    PGconn *c;
    etl_table_info train, valid, test;
    json_t *plan;
    json_t *cols;
    int64_t row_elems;
    int64_t x_shape[ETL_NPY_MAX_DIMS];
    int x_ndim;
    char *key_expr; /* SQL text of the shard key */
    int madlib;     /* a MADlib packed table: the label is one of its columns */
} etl_planner;

/* The server kind and version into the plan ("server"), with Greenplum's
 * primary segments. */
int etl_planner_server(etl_planner *pl, cds_err *err);
/* The COPY queries of one (split, shard) of table t: one per PostgreSQL
 * shard (the rows whose key hash is shard mod s->shards), one per
 * Greenplum segment that maps to it; select is the select list,
 * split_filter an extra condition or NULL. */
json_t *etl_planner_task_queries(etl_planner *pl, const etl_table_info *t, const char *split_filter, int shard,
                                 const char *select);

/* Appends a column to the plan; returns its object (owned by the plan) for
 * the caller to add to (etl_plan_table.c). */
json_t *etl_planner_add_column(etl_planner *pl, const char *name, uint32_t oid, const char *kind, const int *dims,
                               int ndim, int64_t count);

/* ---- etl_plan_madlib.c -------------------------------------------------- */

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
typedef struct etl_madlib_info {
    json_t *summary; /* the summary row as JSON, or NULL */
    char *summary_table;
    int literal;     /* independent_var / dependent_var columns */
    char **x, **y;   /* the packed columns present */
    size_t nx, ny;
    json_t *x_src, *y_src; /* the summary's source names (array), or NULL */
} etl_madlib_info;

void etl_madlib_info_free(etl_madlib_info *mi);
/* 1 when the train table is a MADlib packed table (mi filled), 0 when it
 * is not, -1 on an error. */
int etl_madlib_detect(etl_planner *pl, etl_madlib_info *mi, cds_err *err);
/* The columns, shapes and classes of a MADlib packed table. */
int etl_madlib_plan(etl_planner *pl, const etl_madlib_info *mi, cds_err *err);

#endif
