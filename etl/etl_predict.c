/* etl_predict: a prediction's parts and its finish (etl_predict.h); the
 * plan is etl_plan_predict.c's.
 *
 * A part reads like an unload task (etl_unload_task_keyed, into a shard of
 * the scratch directory) and writes its staging table in one transaction:
 * DROP (an earlier attempt's), CREATE, COPY FROM STDIN BINARY, COMMIT.  A
 * row of the staging table is
 *
 *   <id> <its type>, class integer|text, prob float8
 *   [, probs float8[]]                           --type prob: every class
 *   [, top_classes integer[]|text[], top_probs float8[]]   --type topk
 *
 * written in COPY's binary format: the id's bytes as the server sent them,
 * a class as int4 or its name (the dataset's classes, whose order the
 * model's class ids follow), probabilities as float8, arrays in the
 * server's binary array format (one dimension, lower bound 1, the element
 * type's oid).
 *
 * The finish checks every staging table is there, then in one transaction
 * makes the output from them (the first renamed, the others appended) and
 * drops them; on Greenplum each table is distributed by the id. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_layout.h"
#include "etl_pgcopy.h"
#include "etl_planner_int.h"
#include "etl_predict.h"
#include "etl_value.h"

#define COPY_CHUNK ((size_t)1 << 20)

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static const json_t *pred(const json_t *plan) { return json_object_get(plan, "predict"); }

/* ---- row ids ----------------------------------------------------------- */

int etl_keys_add(etl_keys *k, const uint8_t *data, int32_t len, cds_err *err)
{
    size_t need = 4 + (size_t)len;
    if (k->len + need > k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 65536;
        while (cap < k->len + need)
            cap *= 2;
        uint8_t *b = realloc(k->buf, cap);
        if (!b)
            return cds_err_nomem(err, "out of memory keeping the ids of %lld rows", (long long)k->n);
        k->buf = b;
        k->cap = cap;
    }
    uint32_t l = (uint32_t)len;
    for (int i = 0; i < 4; i++)
        k->buf[k->len++] = (uint8_t)(l >> (24 - 8 * i));
    memcpy(k->buf + k->len, data, (size_t)len);
    k->len += (size_t)len;
    k->n++;
    return 0;
}

void etl_keys_free(etl_keys *k)
{
    free(k->buf);
    memset(k, 0, sizeof *k);
}

static int32_t key_len(const uint8_t *at)
{
    return (int32_t)((uint32_t)at[0] << 24 | (uint32_t)at[1] << 16 | (uint32_t)at[2] << 8 | at[3]);
}

/* ---- reading a part ---------------------------------------------------- */

int etl_predict_read(const json_t *part_plan, const char *scratch, char *shard_dir, size_t n, etl_keys *keys,
                     etl_task_stats *st, cds_err *err)
{
    json_t *j = json_copy((json_t *)part_plan);
    if (!j)
        return cds_err_nomem(err, "out of memory for the part's plan");
    json_object_set_new(j, "staging", json_string(scratch));
    etl_plan *p = etl_plan_from_json(j, NULL, err);
    json_decref(j);
    if (!p)
        return -1;
    int rc = 0;
    if (p->n_tasks != 1 || p->label_kind != ETL_LABEL_ROWID)
        rc = cds_errf(err, "not the plan of one part of a prediction (re-enqueue it with jobctl enqueue predict)");
    if (rc == 0)
        rc = cds_layout_shard_dir(shard_dir, n, scratch, p->tasks[0].split, p->tasks[0].shard, err);
    if (rc == 0)
        rc = etl_unload_task_keyed(p, 0, NULL, keys, st, err);
    etl_plan_free(p);
    return rc;
}

/* ---- the staging table ------------------------------------------------- */

struct etl_predict_stage {
    PGconn *c;
    etl_copybuf b;
    const etl_keys *keys;
    size_t at;        /* the next key's offset in keys->buf */
    int64_t written;  /* rows so far */
    int k, K;
    int text;         /* classes are the dataset's names */
    const json_t *classes;
    long long lock;   /* the prediction's advisory lock */
};

/* The prediction's advisory lock key: its token's 64 bits. */
static long long lock_key(const json_t *plan)
{
    return (long long)strtoull(jstr(pred(plan), "token"), NULL, 16);
}

/* "<schema>".cds_predict_<token>_<k>, malloc'd. */
static char *stage_name(PGconn *c, const json_t *plan, int k)
{
    char name[96];
    snprintf(name, sizeof name, "cds_predict_%s_%d", jstr(pred(plan), "token"), k);
    char *qs = etl_pq_quote_ident(c, jstr(pred(plan), "schema")), *qt = etl_pq_quote_ident(c, name);
    etl_sbuf b = {0};
    etl_sb_add(&b, "%s.%s", qs, qt);
    free(qs);
    free(qt);
    return b.s;
}

static int part_of(const json_t *part_plan)
{
    return (int)json_integer_value(json_object_get(json_array_get(json_object_get(part_plan, "tasks"), 0), "shard"));
}

void etl_predict_shape(const json_t *plan, int *k, int *all)
{
    const char *type = jstr(pred(plan), "type");
    *k = (int)json_integer_value(json_object_get(pred(plan), "k"));
    if (*k < 1)
        *k = 1;
    *all = strcmp(type, "prob") == 0 ? (int)json_integer_value(json_object_get(pred(plan), "classes")) : 0;
}

/* The column list of a staging table (and so of the output). */
static char *stage_columns(PGconn *c, const json_t *plan)
{
    const char *ct = jstr(pred(plan), "class_type"), *type = jstr(pred(plan), "type");
    char *qid = etl_pq_quote_ident(c, jstr(json_object_get(plan, "label"), "name"));
    etl_sbuf b = {0};
    etl_sb_add(&b, "(%s %s, \"class\" %s, \"prob\" double precision", qid, jstr(pred(plan), "id_type"), ct);
    if (strcmp(type, "prob") == 0)
        etl_sb_add(&b, ", \"probs\" double precision[]");
    else if (strcmp(type, "topk") == 0)
        etl_sb_add(&b, ", \"top_classes\" %s[], \"top_probs\" double precision[]", ct);
    etl_sb_add(&b, ")");
    if (json_is_true(json_object_get(pred(plan), "greenplum")))
        etl_sb_add(&b, " DISTRIBUTED BY (%s)", qid);
    free(qid);
    return b.s;
}

/* The longest row the COPY buffer must hold whole. */
static size_t row_max(const etl_predict_stage *s)
{
    size_t key = 0, name = 4;
    for (size_t at = 0; at < s->keys->len;) {
        size_t l = (size_t)key_len(s->keys->buf + at);
        key = l > key ? l : key;
        at += 4 + l;
    }
    for (size_t i = 0; s->text && i < json_array_size(s->classes); i++) {
        size_t l = strlen(json_string_value(json_array_get(s->classes, i)) ?: "");
        name = l > name ? l : name;
    }
    return 2 + 4 + key + 4 + name + 12 + 24 + (size_t)s->K * 12 + 2 * 24 + (size_t)s->k * (4 + name + 12);
}

static int stage_exec(PGconn *c, const char *sql, const char *what, cds_err *err)
{
    PGresult *r = etl_pq_exec(c, what, sql, 0, NULL, PGRES_COMMAND_OK, err);
    int rc = r ? 0 : -1;
    PQclear(r);
    return rc;
}

etl_predict_stage *etl_predict_stage_begin(const json_t *part_plan, const etl_keys *keys, cds_err *err)
{
    etl_predict_stage *s = calloc(1, sizeof *s);
    if (!s)
        return cds_err_nomem(err, "out of memory"), NULL;
    s->keys = keys;
    etl_predict_shape(part_plan, &s->k, &s->K);
    s->lock = lock_key(part_plan);
    s->classes = json_object_get(part_plan, "classes");
    s->text = strcmp(jstr(pred(part_plan), "class_type"), "text") == 0;
    s->c = etl_pq_connect(jstr(json_object_get(part_plan, "spec"), "dsn"), err);
    if (!s->c)
        return free(s), NULL;
    char *name = stage_name(s->c, part_plan, part_of(part_plan)), *cols = stage_columns(s->c, part_plan);
    etl_sbuf sql = {0};
    int rc = stage_exec(s->c, "BEGIN", "starting the staging transaction", err);
    etl_sb_add(&sql, "DROP TABLE IF EXISTS %s", name);
    if (rc == 0)
        rc = stage_exec(s->c, sql.s, "dropping an earlier attempt's staging table", err);
    sql.n = 0;
    etl_sb_add(&sql, "CREATE TABLE %s %s", name, cols);
    if (rc == 0)
        rc = stage_exec(s->c, sql.s, "creating the staging table", err);
    sql.n = 0;
    etl_sb_add(&sql, "COPY %s FROM STDIN (FORMAT binary)", name);
    if (rc == 0) {
        PGresult *r = PQexec(s->c, sql.s);
        rc = PQresultStatus(r) == PGRES_COPY_IN ? 0 : etl_pg_fail(s->c, r, "starting COPY into the staging table", err);
        PQclear(r);
    }
    free(sql.s);
    free(name);
    free(cols);
    size_t cap = COPY_CHUNK + row_max(s);
    s->b = (etl_copybuf){s->c, malloc(cap), 0, COPY_CHUNK};
    if (rc == 0 && !s->b.buf)
        rc = cds_err_nomem(err, "out of memory for a COPY buffer of %zu bytes", cap);
    if (rc != 0) {
        etl_predict_stage_abort(s);
        return NULL;
    }
    etl_copy_put_header(&s->b);
    return s;
}

static void put_f8(etl_copybuf *b, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    etl_copy_put64(b, u);
}

/* Class id c as its column holds it: int4, or its name (NULL when the
 * dataset's class value is). */
static void put_class(etl_predict_stage *s, int32_t c)
{
    if (!s->text) {
        etl_copy_put32(&s->b, 4);
        etl_copy_put32(&s->b, (uint32_t)c);
        return;
    }
    const char *name = json_string_value(json_array_get(s->classes, (size_t)c));
    if (!name) {
        etl_copy_put32(&s->b, UINT32_MAX);
        return;
    }
    size_t l = strlen(name);
    etl_copy_put32(&s->b, (uint32_t)l);
    memcpy(s->b.buf + s->b.len, name, l);
    s->b.len += l;
}

/* A one-dimensional array field: its header, then n elements by put. */
static size_t array_begin(etl_predict_stage *s, uint32_t elem_oid, int n, int may_null)
{
    size_t at = s->b.len;
    etl_copy_put32(&s->b, 0); /* the length, set by array_end */
    etl_copy_put32(&s->b, 1);
    etl_copy_put32(&s->b, may_null ? 1 : 0);
    etl_copy_put32(&s->b, elem_oid);
    etl_copy_put32(&s->b, (uint32_t)n);
    etl_copy_put32(&s->b, 1);
    return at;
}

static void array_end(etl_predict_stage *s, size_t at)
{
    uint32_t len = (uint32_t)(s->b.len - at - 4);
    for (int i = 0; i < 4; i++)
        s->b.buf[at + (size_t)i] = (uint8_t)(len >> (24 - 8 * i));
}

static void put_probs(etl_predict_stage *s, const double *p, int n)
{
    size_t at = array_begin(s, ETL_OID_FLOAT8, n, 0);
    for (int i = 0; i < n; i++) {
        etl_copy_put32(&s->b, 8);
        put_f8(&s->b, p[i]);
    }
    array_end(s, at);
}

int etl_predict_stage_rows(etl_predict_stage *s, int n, const int32_t *top, const double *top_prob,
                           const double *probs, cds_err *err)
{
    int topk = s->K == 0 && s->k > 1;
    for (int i = 0; i < n; i++) {
        if (s->at >= s->keys->len)
            return cds_errf(err, "more scored rows than rows read (%lld): the shard and the ids disagree",
                            (long long)s->keys->n);
        size_t kl = 4 + (size_t)key_len(s->keys->buf + s->at);
        etl_copy_put16(&s->b, s->K ? 4 : topk ? 5 : 3);
        memcpy(s->b.buf + s->b.len, s->keys->buf + s->at, kl);
        s->b.len += kl;
        s->at += kl;
        const int32_t *t = top + (size_t)i * (size_t)s->k;
        put_class(s, t[0]);
        etl_copy_put32(&s->b, 8);
        put_f8(&s->b, top_prob[(size_t)i * (size_t)s->k]);
        if (s->K)
            put_probs(s, probs + (size_t)i * (size_t)s->K, s->K);
        if (topk) {
            size_t at = array_begin(s, s->text ? ETL_OID_TEXT : ETL_OID_INT4, s->k, s->text);
            for (int j = 0; j < s->k; j++)
                put_class(s, t[j]);
            array_end(s, at);
            put_probs(s, top_prob + (size_t)i * (size_t)s->k, s->k);
        }
        s->written++;
        if (etl_copy_row_end(&s->b, err) != 0)
            return -1;
    }
    return 0;
}

int etl_predict_stage_commit(etl_predict_stage *s, etl_predict_alive_fn alive, void *ctx, int *permanent,
                             cds_err *err)
{
    *permanent = 0;
    int rc = s->written == s->keys->n ? 0
                                      : cds_errf(err, "%lld rows scored of %lld read: the shard and the ids disagree",
                                                 (long long)s->written, (long long)s->keys->n);
    rc = etl_copy_end(&s->b, rc, "the prediction's part stopped", err);
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_advisory_xact_lock_shared(%lld)", s->lock);
    PGresult *r = rc == 0 ? etl_pq_exec(s->c, "taking the prediction's lock", sql, 0, NULL, PGRES_TUPLES_OK, err) : NULL;
    if (rc == 0 && !r)
        rc = -1;
    PQclear(r);
    int live = rc == 0 ? alive(ctx, err) : -1;
    if (rc == 0 && live == 0) {
        *permanent = 1;
        rc = cds_errf(err, "the prediction failed for good in another of its jobs: this part's rows are dropped");
    } else if (rc == 0 && live < 0) {
        rc = cds_err_wrap(err, "checking that the prediction still stands");
    }
    if (rc == 0)
        rc = stage_exec(s->c, "COMMIT", "committing the staging table", err);
    etl_predict_stage_abort(s);
    return rc;
}

void etl_predict_stage_abort(etl_predict_stage *s)
{
    if (!s)
        return;
    if (s->c && PQtransactionStatus(s->c) != PQTRANS_IDLE) {
        PGresult *r = PQexec(s->c, "ROLLBACK");
        PQclear(r);
    }
    PQfinish(s->c);
    free(s->b.buf);
    free(s);
}

/* ---- finish and discard ------------------------------------------------ */

/* The first part whose staging table does not exist into *missing (-1:
 * every one does), in one query however many parts. */
static int first_missing_stage(PGconn *c, const json_t *plan, int parts, int *missing, cds_err *err)
{
    char n[16];
    snprintf(n, sizeof n, "%d", parts);
    const char *params[3] = {jstr(pred(plan), "schema"), n, jstr(pred(plan), "token")};
    PGresult *r = etl_pq_exec(c, "looking up the staging tables",
                              "SELECT min(k) FROM generate_series(0, $2::int - 1) k "
                              "WHERE to_regclass(format('%I.%I', $1::text, 'cds_predict_' || $3 || '_' || k)) IS NULL",
                              3, params, PGRES_TUPLES_OK, err);
    if (!r)
        return -1;
    *missing = PQgetisnull(r, 0, 0) ? -1 : atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

static int finish_in_tx(PGconn *c, const json_t *plan, int parts, int64_t *rows, int *permanent, cds_err *err)
{
    const char *out = jstr(pred(plan), "out_table"), *display = jstr(pred(plan), "out_display");
    int missing;
    if (first_missing_stage(c, plan, parts, &missing, err) != 0)
        return -1;
    if (missing >= 0) {
        *permanent = 1;
        return cds_errf(err, "the staging table of part %d is gone (dropped by hand, or by a failed attempt's clean-up): "
                        "enqueue the prediction again", missing);
    }
    const char *params[1] = {out};
    PGresult *r = etl_pq_exec(c, "looking up the output table", "SELECT to_regclass($1) IS NOT NULL", 1, params,
                              PGRES_TUPLES_OK, err);
    if (!r)
        return -1;
    int exists = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    int replace = json_is_true(json_object_get(pred(plan), "replace"));
    if (exists && !replace) {
        *permanent = 1;
        return cds_errf(err, "table %s appeared after the prediction was enqueued: it is kept; enqueue again with "
                        "--replace to write over it", display);
    }
    etl_sbuf sql = {0};
    int rc = 0;
    if (exists) {
        etl_sb_add(&sql, "DROP TABLE %s", out);
        rc = stage_exec(c, sql.s, "dropping the table it replaces", err);
    }
    /* Part 0's table becomes the output (its rows stay where they are);
     * the others are appended to it and dropped. */
    char *first = stage_name(c, plan, 0), *bare = etl_pq_quote_ident(c, jstr(pred(plan), "table"));
    sql.n = 0;
    etl_sb_add(&sql, "SELECT count(*) FROM %s", first);
    r = rc == 0 ? etl_pq_exec(c, "counting part 0's rows", sql.s, 0, NULL, PGRES_TUPLES_OK, err) : NULL;
    if (r)
        *rows = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    else
        rc = -1;
    PQclear(r);
    sql.n = 0;
    etl_sb_add(&sql, "ALTER TABLE %s RENAME TO %s", first, bare);
    if (rc == 0)
        rc = stage_exec(c, sql.s, "making the output table", err);
    for (int k = 1; rc == 0 && k < parts; k++) {
        char *name = stage_name(c, plan, k);
        sql.n = 0;
        etl_sb_add(&sql, "INSERT INTO %s SELECT * FROM %s", out, name);
        r = etl_pq_exec(c, "appending a part to the output table", sql.s, 0, NULL, PGRES_COMMAND_OK, err);
        if (r)
            *rows += strtoll(PQcmdTuples(r), NULL, 10);
        else
            rc = -1;
        PQclear(r);
        sql.n = 0;
        etl_sb_add(&sql, "DROP TABLE %s", name);
        if (rc == 0)
            rc = stage_exec(c, sql.s, "dropping a staging table", err);
        free(name);
    }
    free(first);
    free(bare);
    free(sql.s);
    return rc;
}

int etl_predict_finish(const json_t *plan, int64_t *rows, int *permanent, cds_err *err)
{
    *rows = 0;
    *permanent = 0;
    int parts = etl_predict_parts(plan);
    if (parts < 1 || parts > ETL_PREDICT_MAX_PARTS) {
        *permanent = 1;
        return cds_errf(err, "a prediction plan of %d parts (re-enqueue it with jobctl enqueue predict)", parts);
    }
    PGconn *c = etl_pq_connect(jstr(json_object_get(plan, "spec"), "dsn"), err);
    if (!c)
        return -1;
    int rc = stage_exec(c, "BEGIN", "starting the finishing transaction", err);
    if (rc == 0)
        rc = finish_in_tx(c, plan, parts, rows, permanent, err);
    if (rc == 0)
        rc = stage_exec(c, "COMMIT", "committing the output table", err);
    if (rc != 0 && PQtransactionStatus(c) != PQTRANS_IDLE) {
        PGresult *r = PQexec(c, "ROLLBACK");
        PQclear(r);
    }
    PQfinish(c);
    return rc == 0 ? 0 : cds_err_wrap(err, "predictions into %s (nothing was written)", jstr(pred(plan), "out_display"));
}

int etl_predict_discard(const json_t *plan, cds_err *err)
{
    int parts = etl_predict_parts(plan);
    PGconn *c = etl_pq_connect(jstr(json_object_get(plan, "spec"), "dsn"), err);
    if (!c)
        return -1;
    char lock[96];
    snprintf(lock, sizeof lock, "SELECT pg_advisory_lock(%lld)", lock_key(plan));
    PGresult *r = etl_pq_exec(c, "taking the prediction's lock", lock, 0, NULL, PGRES_TUPLES_OK, err);
    int rc = r ? 0 : -1;
    PQclear(r);
    for (int k = 0; rc == 0 && k < parts && k < ETL_PREDICT_MAX_PARTS; k++) {
        char *name = stage_name(c, plan, k);
        etl_sbuf sql = {0};
        etl_sb_add(&sql, "DROP TABLE IF EXISTS %s", name);
        rc = stage_exec(c, sql.s, "dropping a staging table", err);
        free(sql.s);
        free(name);
    }
    PQfinish(c);
    return rc;
}
