/* etl_dataset_record: see etl_dataset_record.h.
 *
 * The record is a Redis hash of plain strings (queue_record_get/set); this
 * file turns it into a struct and back.  Numbers are parsed strictly (a
 * count is 1 to INT32_MAX or it is 0), so a record written by hand with a
 * bad value reads as "unknown" rather than as a wrong count. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "cds_util.h"
#include "etl_dataset_record.h"

/* The record's key name (under the connection's prefix). */
static int key_of(char *out, size_t n, const char *name, cds_err *err)
{
    int len = snprintf(out, n, "dataset:%s", name ? name : "");
    if (len < 0 || (size_t)len >= n)
        return cds_errf(err, "dataset name '%.40s...' is too long for a dataset record (at most %zu characters)",
                        name, n - sizeof "dataset:");
    return 0;
}

static char *field_dup(const json_t *rec, const char *field)
{
    return strdup(json_string_value(json_object_get(rec, field)) ?: "");
}

static int count_of(const char *text)
{
    int64_t k = 0;
    if (!text || cds_parse_i64(text, 1, INT32_MAX, &k) != 0)
        return 0;
    return (int)k;
}

/* The train split's shard count from "splits" (a ready dataset), else the
 * shards per split its spec asked for. */
static int train_shards_of(const json_t *rec, int spec_shards)
{
    json_t *splits = json_loads(json_string_value(json_object_get(rec, "splits")) ?: "", 0, NULL);
    json_t *train = json_object_get(json_object_get(splits, "train"), "shards");
    int64_t k = json_is_integer(train) ? json_integer_value(train) : spec_shards;
    json_decref(splits);
    return k >= 1 && k <= INT32_MAX ? (int)k : 0;
}

static etl_dataset_state state_of(const char *s)
{
    if (strcmp(s, "loading") == 0)
        return ETL_DATASET_LOADING;
    if (strcmp(s, "ready") == 0)
        return ETL_DATASET_READY;
    if (strcmp(s, "failed") == 0)
        return ETL_DATASET_FAILED;
    return ETL_DATASET_OTHER;
}

void etl_dataset_record_free(etl_dataset_record *r)
{
    if (!r)
        return;
    free(r->state_text);
    free(r->token);
    free(r->version);
    free(r->error);
    free(r->finish_job);
    free(r->plan);
    memset(r, 0, sizeof *r);
}

int etl_dataset_record_read(queue_conn *q, const char *name, etl_dataset_record *r, cds_err *err)
{
    memset(r, 0, sizeof *r);
    char key[300];
    if (key_of(key, sizeof key, name, err) != 0)
        return -1;
    json_t *rec = NULL;
    int rc = queue_record_get(q, key, &rec, err);
    if (rc != 0)
        return rc;
    r->state_text = field_dup(rec, "state");
    r->token = field_dup(rec, "token");
    r->version = field_dup(rec, "version");
    r->error = field_dup(rec, "error");
    r->finish_job = field_dup(rec, "finish_job");
    const char *plan = json_string_value(json_object_get(rec, "plan"));
    r->plan = plan ? strdup(plan) : NULL;
    r->shards = count_of(json_string_value(json_object_get(rec, "shards")));
    r->train_shards = train_shards_of(rec, r->shards);
    json_decref(rec);
    if (!r->state_text || !r->token || !r->version || !r->error || !r->finish_job || (plan && !r->plan)) {
        etl_dataset_record_free(r);
        return cds_err_nomem(err, "out of memory reading the record of dataset %s", name);
    }
    r->state = state_of(r->state_text);
    return 0;
}

int etl_dataset_record_plan_dsn(const etl_dataset_record *r, char **dsn, cds_err *why)
{
    *dsn = NULL;
    if (!r->plan)
        return 1;
    json_error_t je;
    json_t *plan = json_loads(r->plan, 0, &je);
    if (!plan)
        return cds_errf(why, "%s", je.text);
    json_t *given = json_object_get(json_object_get(plan, "spec"), "dsn");
    const char *text = json_is_string(given) ? json_string_value(given) : given ? NULL : "";
    PQconninfoOption *opts = NULL;
    if (text) {
        char *msg = NULL;
        opts = PQconninfoParse(text, &msg);
        PQfreemem(msg);
    }
    int rc = 0;
    if (!opts)
        rc = cds_errf(why, "its spec.dsn is not a conninfo libpq can parse");
    else if (!(*dsn = strdup(text)))
        rc = cds_err_nomem(why, "out of memory");
    PQconninfoFree(opts);
    json_decref(plan);
    return rc;
}

/* ---- writers -------------------------------------------------------------- */

/* HSET of fields (consumed) into the record of name. */
static int set_fields(queue_conn *q, const char *name, json_t *fields, cds_err *err)
{
    char key[300];
    int rc = !fields ? cds_err_nomem(err, "out of memory") : key_of(key, sizeof key, name, err);
    if (rc == 0)
        rc = queue_record_set(q, key, fields, err);
    json_decref(fields);
    return rc;
}

int etl_dataset_record_loading(queue_conn *q, const char *name, const char *token, const json_t *plan,
                               cds_err *err)
{
    const json_t *spec = json_object_get(plan, "spec");
    json_t *f = json_object();
    if (f) {
        json_object_set_new(f, "state", json_string("loading"));
        json_object_set_new(f, "token", json_string(token));
        json_object_set(f, "plan", (json_t *)plan);
        json_object_set(f, "spec", (json_t *)spec);
        json_object_set_new(f, "shards", json_integer(json_integer_value(json_object_get(spec, "shards"))));
        json_object_set_new(f, "version", json_string(""));
        json_object_set_new(f, "error", json_string(""));
    }
    return set_fields(q, name, f, err);
}

int etl_dataset_record_finish_job(queue_conn *q, const char *name, const char *job_id, cds_err *err)
{
    return set_fields(q, name, json_pack("{s:s}", "finish_job", job_id), err);
}

int etl_dataset_record_shard_rows(queue_conn *q, const char *name, const char *split, int shard, int64_t rows,
                                  const json_t *res, cds_err *err)
{
    char field[64], res_field[64];
    snprintf(field, sizeof field, "rows:%s:%d", split, shard);
    snprintf(res_field, sizeof res_field, "res:%s:%d", split, shard);
    json_t *f = json_pack("{s:I}", field, (json_int_t)rows);
    if (f && res && json_object_set(f, res_field, (json_t *)res) != 0) {
        json_decref(f);
        f = NULL;
    }
    return set_fields(q, name, f, err);
}

int etl_dataset_record_ready(queue_conn *q, const char *name, const char *version, const json_t *splits,
                             cds_err *err)
{
    return set_fields(q, name,
                      json_pack("{s:s, s:s, s:O}", "state", "ready", "version", version, "splits",
                                splits ? (json_t *)splits : json_null()),
                      err);
}

int etl_dataset_record_failed(queue_conn *q, const char *name, const char *token, const char *reason,
                              cds_err *err)
{
    etl_dataset_record r;
    int rc = etl_dataset_record_read(q, name, &r, err);
    if (rc == QUEUE_NOT_FOUND)
        return 0;
    if (rc != 0)
        return -1;
    if (strcmp(r.token, token) == 0)
        rc = set_fields(q, name, json_pack("{s:s, s:s}", "state", "failed", "error", reason), err);
    etl_dataset_record_free(&r);
    return rc;
}
