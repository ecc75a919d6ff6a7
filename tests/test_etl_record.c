/* The dataset record through etl_dataset_record against the real Redis: what
 * an unload writes reads back (state, token, plan, the spec's shard count,
 * then the train split's once ready); a failure is marked only under the
 * record's own token; a record written by hand with fields missing or
 * malformed reads as unknown rather than wrong; the plan's DSN comes back as
 * the plan holds it, "" when it names none, and an unreadable plan or DSN is
 * an error that says which; an unknown dataset is QUEUE_NOT_FOUND. */
#include <stdlib.h>
#include <string.h>

#include "etl_dataset_record.h"
#include "testutil.h"

static char prefix[128];

static char *hget(redisContext *c, const char *name, const char *field)
{
    redisReply *r = test_rcmd(c, "HGET %sdataset:%s %s", prefix, name, field);
    char *v = r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return v;
}

static void hand_written(redisContext *c, const char *name, const char *plan)
{
    freeReplyObject(test_rcmd(c, "DEL %sdataset:%s", prefix, name));
    if (plan)
        freeReplyObject(test_rcmd(c, "HSET %sdataset:%s state ready version v1 plan %s", prefix, name, plan));
    else
        freeReplyObject(test_rcmd(c, "HSET %sdataset:%s state odd shards many", prefix, name));
}

/* The plan DSN outcome of a hand-written record holding plan. */
static int plan_dsn_of(queue_conn *q, redisContext *c, const char *plan, char **dsn, cds_err *why)
{
    hand_written(c, "h", plan);
    etl_dataset_record r;
    cds_err err;
    if (etl_dataset_record_read(q, "h", &r, &err) != 0)
        return 99;
    int rc = etl_dataset_record_plan_dsn(&r, dsn, why);
    etl_dataset_record_free(&r);
    return rc;
}

int main(void)
{
    queue_conn *q = test_connect("etlrec", prefix, sizeof prefix);
    redisContext *c = test_raw_connect();
    cds_err err;
    etl_dataset_record r;

    json_t *plan = json_pack("{s:s, s:{s:s, s:i}}", "token", "t1", "spec", "dsn", "host=db1 dbname=sales", "shards", 3);
    ok(etl_dataset_record_read(q, "fm", &r, &err) == QUEUE_NOT_FOUND && strstr(err.msg, "dataset:fm"),
       "an unknown dataset is not found, and the error names its record (%s)", err.msg);
    ok(etl_dataset_record_loading(q, "fm", "t1", plan, &err) == 0 && etl_dataset_record_read(q, "fm", &r, &err) == 0,
       "a loading record is written and read back");
    ok(r.state == ETL_DATASET_LOADING && strcmp(r.state_text, "loading") == 0 && strcmp(r.token, "t1") == 0 &&
           !*r.version && !*r.error && r.shards == 3 && r.train_shards == 3 && r.plan,
       "loading: its token, no version, the spec's 3 shards per split, the plan");
    char *dsn = NULL;
    ok(etl_dataset_record_plan_dsn(&r, &dsn, &err) == 0 && dsn && strcmp(dsn, "host=db1 dbname=sales") == 0,
       "the plan's DSN as the plan holds it");
    free(dsn);
    etl_dataset_record_free(&r);

    json_t *res = json_pack("{s:f, s:I}", "wall_s", 1.5, "bytes_read", (json_int_t)4096);
    ok(etl_dataset_record_shard_rows(q, "fm", "train", 2, 1234, res, &err) == 0 &&
           etl_dataset_record_shard_rows(q, "fm", "train", 1, 7, NULL, &err) == 0 &&
           etl_dataset_record_finish_job(q, "fm", "j9", &err) == 0,
       "a shard's rows and resources and the finish job are recorded");
    json_decref(res);
    char *rows = hget(c, "fm", "rows:train:2"), *fin = hget(c, "fm", "finish_job");
    ok(rows && strcmp(rows, "1234") == 0 && fin && strcmp(fin, "j9") == 0, "as fields rows:train:2 and finish_job");
    free(rows);
    free(fin);
    char *rtext = hget(c, "fm", "res:train:2"), *none = hget(c, "fm", "res:train:1");
    ok(rtext && strcmp(rtext, "{\"wall_s\":1.5,\"bytes_read\":4096}") == 0 && !none,
       "the resources as JSON in res:train:2; none without them (%s)", rtext ? rtext : "missing");
    free(rtext);
    free(none);

    ok(etl_dataset_record_failed(q, "fm", "t0", "old news", &err) == 0 && etl_dataset_record_read(q, "fm", &r, &err) == 0 &&
           r.state == ETL_DATASET_LOADING,
       "a job of an older unload marks nothing");
    etl_dataset_record_free(&r);

    json_t *splits = json_pack("{s:{s:i, s:i}}", "train", "shards", 4, "rows", 100);
    ok(etl_dataset_record_ready(q, "fm", "abc123", splits, &err) == 0 && etl_dataset_record_read(q, "fm", &r, &err) == 0 &&
           r.state == ETL_DATASET_READY && strcmp(r.version, "abc123") == 0 && r.shards == 3 && r.train_shards == 4,
       "ready: its version, and the train split's shard count from its splits (4, not the spec's 3)");
    etl_dataset_record_free(&r);

    ok(etl_dataset_record_failed(q, "fm", "t1", "COPY failed: disk full", &err) == 0 &&
           etl_dataset_record_read(q, "fm", &r, &err) == 0 && r.state == ETL_DATASET_FAILED &&
           strcmp(r.error, "COPY failed: disk full") == 0,
       "a dead job of the current unload marks the record failed with the reason");
    etl_dataset_record_free(&r);
    ok(etl_dataset_record_failed(q, "nosuch", "t1", "x", &err) == 0, "marking an unknown dataset failed is no error");

    hand_written(c, "h", NULL);
    ok(etl_dataset_record_read(q, "h", &r, &err) == 0 && r.state == ETL_DATASET_OTHER && strcmp(r.state_text, "odd") == 0 &&
           r.shards == 0 && r.train_shards == 0 && !r.plan && !*r.token && !*r.version,
       "a record written by hand: unknown state, no count from 'many', missing fields empty");
    ok(etl_dataset_record_plan_dsn(&r, &dsn, &err) == 1 && !dsn, "and no plan: no DSN, no error");
    etl_dataset_record_free(&r);

    ok(plan_dsn_of(q, c, "{\"spec\":{}}", &dsn, &err) == 0 && dsn && !*dsn, "a plan that names no DSN: \"\"");
    free(dsn);
    ok(plan_dsn_of(q, c, "{\"spec\":", &dsn, &err) == -1 && !dsn && err.msg[0], "a plan that is not JSON: -1 (%s)",
       err.msg);
    ok(plan_dsn_of(q, c, "{\"spec\":{\"dsn\":5}}", &dsn, &err) == -1 && strstr(err.msg, "spec.dsn"),
       "a DSN that is not a string: -1 naming spec.dsn");
    ok(plan_dsn_of(q, c, "{\"spec\":{\"dsn\":\"host='db1\"}}", &dsn, &err) == -1 && strstr(err.msg, "libpq"),
       "a DSN libpq cannot parse: -1");

    char longname[400];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    ok(etl_dataset_record_read(q, longname, &r, &err) == -1 && strstr(err.msg, "too long"),
       "a name too long for a record is refused, not cut (%s)", err.msg);

    json_decref(plan);
    json_decref(splits);
    redisReply *keys = test_rcmd(c, "KEYS %s*", prefix);
    for (size_t i = 0; i < keys->elements; i++)
        freeReplyObject(test_rcmd(c, "DEL %s", keys->element[i]->str));
    freeReplyObject(keys);
    redisFree(c);
    queue_close(q);
    return tap_done();
}
