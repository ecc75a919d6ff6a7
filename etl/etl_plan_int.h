/* Internals of an unload plan shared by the planner (etl_plan*.c, making
 * it; etl_planner_int.h is the planner's own), etl_stream.c and etl_rows.c
 * (running its tasks) and etl_dataset.c (finishing), the libpq helpers of
 * etl_pq.c, and the libpq conninfo writing that etl_pq.c and etl_spec.c
 * share.  Not installed. */
#ifndef CDS_ETL_PLAN_INT_H
#define CDS_ETL_PLAN_INT_H

#ifndef CDS_ETL_INTERNAL
#error "etl_plan_int.h is private to etl/: include etl_queue.h, etl_unload.h, etl_dataset_record.h and the other public etl headers (a white-box test under tests/ adds c_args : etl_private_args)"
#endif

#include <stdatomic.h>

#include <libpq-fe.h>

#include "etl_criteo.h"
#include "etl_unload.h"

typedef enum { ETL_LAYOUT_COLUMNS, ETL_LAYOUT_MADLIB, ETL_LAYOUT_CRITEO } etl_layout;
/* MADlib's packed columns are ARRAY or BYTEA buffers, each followed by its
 * SHAPE column; the BUFFER_ID column comes last. */
typedef enum { ETL_COL_NUMBER, ETL_COL_ARRAY, ETL_COL_BYTEA, ETL_COL_SHAPE, ETL_COL_BUFFER_ID } etl_col_kind;
/* ROWID: a prediction's rows have no class; the label's place holds the
 * row's id, kept as the COPY gave it (etl_keys) for the output table. */
typedef enum { ETL_LABEL_INT, ETL_LABEL_ONEHOT, ETL_LABEL_TEXT, ETL_LABEL_ROWID } etl_label_kind;

/* The most MADlib independent variables one unload takes (a table may have
 * more; --features picks): a stream keeps a cursor per packed column of a
 * buffer on its stack.  The planner refuses more, and so does a plan read
 * from JSON. */
#define ETL_MADLIB_MAX_X 64

typedef struct etl_col {
    char *name;
    uint32_t oid;
    etl_col_kind kind;
    int ndim;
    int dims[ETL_NPY_MAX_DIMS];
    int64_t count; /* values per row (classes, for MADlib's dependent variable) */
} etl_col;

typedef struct etl_task {
    char *split;
    int shard;
    char **queries; /* one COPY per stream; a Greenplum shard may have several */
    size_t n_queries;
} etl_task;

struct etl_plan {
    json_t *json; /* the whole plan, as carried by the queue */
    char *dsn;    /* what streams connect with (may hold a password): never written anywhere */
    const char *dataset, *staging, *dataset_dir, *source_table;
    int replace;
    int jobs;
    int greenplum;
    etl_layout layout;
    etl_col *cols;
    size_t n_cols;
    char *label_name;
    uint32_t label_oid;
    etl_label_kind label_kind;
    int num_classes;
    char **dict; /* sorted text labels (text labels only) */
    size_t n_dict;
    int has_classes; /* the plan names the classes (text labels, MADlib class values) */
    size_t madlib_nx; /* MADlib: packed independent variables, first in cols (1..ETL_MADLIB_MAX_X) */
    etl_dtype x_dtype;
    int64_t x_shape[ETL_NPY_MAX_DIMS];
    int x_ndim;
    int64_t row_elems;
    int bytea_f32; /* bytea features hold little-endian float32 */
    etl_criteo criteo;
    uint32_t criteo_oids[40];
    etl_task *tasks;
    size_t n_tasks;
    /* The planner's connection, kept when the plan runs in the process that
     * made it, for the first stream (or snapshot holder) to take: that
     * saves a backend start, the largest fixed cost of a small unload.  A
     * plan read from JSON (a queue job) has none. */
    _Atomic(PGconn *) spare;
};

/* etl_unload_task, keeping each row's id in keys (a prediction's plan,
 * label kind ROWID; NULL for any other plan). */
typedef struct etl_keys etl_keys;
int etl_unload_task_keyed(const etl_plan *p, size_t i, const char *snapshot, etl_keys *keys, etl_task_stats *st,
                          cds_err *err);

/* The plan's spare connection (once; NULL after), or a new one. */
PGconn *etl_plan_conn(const etl_plan *p, cds_err *err);

/* Runs a query that must succeed, for the planner and the streams. */
PGresult *etl_pq_exec(PGconn *c, const char *what, const char *sql, int nparams, const char *const *params,
                      ExecStatusType want, cds_err *err);
PGconn *etl_pq_connect(const char *dsn, cds_err *err);
/* The connection c made, as a libpq conninfo string with no password
 * (host, port, dbname, user as resolved, then the non-default settings). */
char *etl_dsn_resolved(PGconn *c);

/* 1 if the setting is a secret: the password, or any libpq marks with '*'
 * in its dispchar (sslpassword...).  Secrets are never written anywhere. */
int etl_conninfo_secret(const PQconninfoOption *o);
/* Appends key='val' to the string *s of length *n (after a space unless *n
 * is 0), escaping ' and \ as libpq reads them; grows *s (capacity *cap) by
 * realloc only when the worst case, 2 x strlen(val) + strlen(key) + 5
 * bytes, does not fit, so a buffer sized for it never leaves a copy of a
 * password behind. */
void etl_conninfo_append(char **s, size_t *n, size_t *cap, const char *key, const char *val);

#endif
