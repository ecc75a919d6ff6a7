/* queue_jobtype: the table of job types and their payload checks (see
 * queue_jobtype.h).
 *
 * Every payload is a JSON object whose fields are all known to its type: a
 * field the runner would ignore is refused too, because it is nearly always
 * a misspelling ("permanant") whose intent would otherwise be lost without
 * a word.  A check reports the first problem it finds as "<JSON path>:
 * <what is wrong>", and queue_jobtype_check_json adds the type and an
 * example payload, so every refusal says what to write instead.
 *
 * The table is indexed by queue_jobtype_id (rows[i].id == i), which is what
 * lets the worker keep its runners in an array of the same order. */
#include "queue_jobtype.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_json.h"

#define SLEEP_MS_MAX 86400000 /* a day: past that a diag.sleep is a mistake */
#define VALUE_SHOWN 40        /* characters of an offending value quoted in a message */

/* ---- shapes -------------------------------------------------------------- */

/* What a JSON value is, for "must be X, not Y" messages. */
static const char *kind_of(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "a whole number";
    case JSON_REAL: return "a number with a fraction";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* The value as compact JSON, cut to VALUE_SHOWN characters. */
static void shown(const json_t *v, char *buf, size_t n)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    snprintf(buf, n, "%.*s%s", VALUE_SHOWN, s ? s : "?", s && strlen(s) > VALUE_SHOWN ? "..." : "");
    free(s);
}

/* p is an object and has no field outside fields (NULL-terminated). */
static int check_fields(const json_t *p, const char *const *fields, cds_err *err)
{
    if (!json_is_object(p))
        return cds_errf(err, "$: must be a JSON object, not %s", kind_of(p));
    return cds_json_check_fields(p, "$", fields, NULL, err);
}

/* Field key, if required or present, is a whole number in [min, max]. */
static int check_whole(const json_t *p, const char *key, int required, json_int_t min, json_int_t max,
                       cds_err *err)
{
    const json_t *v = json_object_get(p, key);
    if (!v)
        return required ? cds_errf(err, "$.%s: missing: give a whole number from %lld to %lld", key, (long long)min,
                                   (long long)max)
                        : 0;
    if (json_is_integer(v) && json_integer_value(v) >= min && json_integer_value(v) <= max)
        return 0;
    char got[VALUE_SHOWN + 8];
    shown(v, got, sizeof got);
    return cds_errf(err, "$.%s: must be a whole number from %lld to %lld, not %s", key, (long long)min,
                    (long long)max, got);
}

/* Field key, if required or present, is a string, non-empty if required. */
static int check_string(const json_t *p, const char *key, int required, cds_err *err)
{
    const json_t *v = json_object_get(p, key);
    if (!v)
        return required ? cds_errf(err, "$.%s: missing: give a non-empty string", key) : 0;
    if (json_is_string(v) && (!required || json_string_length(v) > 0))
        return 0;
    return json_is_string(v) ? cds_errf(err, "$.%s: must not be empty", key)
                             : cds_errf(err, "$.%s: must be a string, not %s", key, kind_of(v));
}

static int check_bool(const json_t *p, const char *key, cds_err *err)
{
    const json_t *v = json_object_get(p, key);
    if (!v || json_is_boolean(v))
        return 0;
    return cds_errf(err, "$.%s: must be true or false, not %s", key, kind_of(v));
}

/* ---- the types ----------------------------------------------------------- */

static int check_diag_sleep(const json_t *p, cds_err *err)
{
    static const char *const fields[] = {"ms", NULL};
    if (check_fields(p, fields, err) != 0)
        return -1;
    return check_whole(p, "ms", 1, 0, SLEEP_MS_MAX, err);
}

static int check_diag_fail(const json_t *p, cds_err *err)
{
    static const char *const fields[] = {"message", "permanent", NULL};
    if (check_fields(p, fields, err) != 0 || check_string(p, "message", 0, err) != 0)
        return -1;
    return check_bool(p, "permanent", err);
}

static int check_diag_noop(const json_t *p, cds_err *err)
{
    static const char *const fields[] = {NULL};
    return check_fields(p, fields, err);
}

/* What etl_queue.c writes: the dataset, the unload's token, and for a shard
 * job the task number in the plan. */
static int check_etl(const json_t *p, int shard, cds_err *err)
{
    static const char *const shard_fields[] = {"dataset", "token", "task", NULL};
    static const char *const finish_fields[] = {"dataset", "token", NULL};
    if (check_fields(p, shard ? shard_fields : finish_fields, err) != 0 ||
        check_string(p, "dataset", 1, err) != 0 || check_string(p, "token", 1, err) != 0)
        return -1;
    return shard ? check_whole(p, "task", 1, 0, INT32_MAX, err) : 0;
}

static int check_etl_shard(const json_t *p, cds_err *err) { return check_etl(p, 1, err); }
static int check_etl_finish(const json_t *p, cds_err *err) { return check_etl(p, 0, err); }

/* What jobctl enqueue predict writes: the plan (etl/etl_predict.h) of one
 * part (its one task) or of the finish (no tasks).  The plan's inside is
 * etl's to check; here only that it is a prediction's. */
static int check_predict(const json_t *p, int part, cds_err *err)
{
    static const char *const fields[] = {"plan", NULL};
    if (check_fields(p, fields, err) != 0)
        return -1;
    const json_t *plan = json_object_get(p, "plan");
    if (!json_is_object(plan))
        return cds_errf(err, "$.plan: missing or not an object: jobctl enqueue predict writes it");
    if (!json_is_object(json_object_get(plan, "predict")))
        return cds_errf(err, "$.plan.predict: missing: not a prediction's plan (jobctl enqueue predict writes it)");
    size_t tasks = json_array_size(json_object_get(plan, "tasks"));
    if (part && tasks != 1)
        return cds_errf(err, "$.plan.tasks: a part's plan has one task, not %zu", tasks);
    if (!part && json_object_get(plan, "tasks"))
        return cds_errf(err, "$.plan.tasks: the finishing job's plan has no tasks");
    return 0;
}

static int check_predict_part(const json_t *p, cds_err *err) { return check_predict(p, 1, err); }
static int check_predict_finish(const json_t *p, cds_err *err) { return check_predict(p, 0, err); }

static const queue_jobtype rows[QUEUE_JOB_TYPES] = {
    [QUEUE_JOB_DIAG_SLEEP] = {QUEUE_JOB_DIAG_SLEEP, "diag.sleep", "sleeps ms milliseconds (smoke tests, demos)",
                              "{\"ms\": 100}", check_diag_sleep},
    [QUEUE_JOB_DIAG_FAIL] = {QUEUE_JOB_DIAG_FAIL, "diag.fail",
                             "fails with message; for good if permanent (retries, dead letters)",
                             "{\"message\": \"why\", \"permanent\": false}", check_diag_fail},
    [QUEUE_JOB_DIAG_NOOP] = {QUEUE_JOB_DIAG_NOOP, "diag.noop", "does nothing (queue benchmarks)", "{}",
                             check_diag_noop},
    [QUEUE_JOB_ETL_SHARD] = {QUEUE_JOB_ETL_SHARD, "etl.shard",
                             "unloads one shard of a planned ETL (jobctl enqueue etl makes these)",
                             "{\"dataset\": \"fmnist\", \"token\": \"<unload token>\", \"task\": 0}", check_etl_shard},
    [QUEUE_JOB_ETL_FINISH] = {QUEUE_JOB_ETL_FINISH, "etl.finish",
                              "stamps and publishes an unloaded dataset (jobctl enqueue etl makes it)",
                              "{\"dataset\": \"fmnist\", \"token\": \"<unload token>\"}", check_etl_finish},
    [QUEUE_JOB_PREDICT_PART] = {QUEUE_JOB_PREDICT_PART, "predict.part",
                                "scores one part of a table into a staging table (jobctl enqueue predict makes these)",
                                "{\"plan\": {\"predict\": {}, \"tasks\": [{}]}}", check_predict_part},
    [QUEUE_JOB_PREDICT_FINISH] = {QUEUE_JOB_PREDICT_FINISH, "predict.finish",
                                  "makes the output table of a prediction from its parts (jobctl enqueue predict "
                                  "makes it)",
                                  "{\"plan\": {\"predict\": {}}}", check_predict_finish},
};

/* ---- lookups ------------------------------------------------------------- */

const queue_jobtype *queue_jobtype_get(queue_jobtype_id id)
{
    return (unsigned)id < QUEUE_JOB_TYPES ? &rows[id] : NULL;
}

const queue_jobtype *queue_jobtype_find(const char *name)
{
    for (size_t i = 0; name && i < QUEUE_JOB_TYPES; i++)
        if (strcmp(rows[i].name, name) == 0)
            return &rows[i];
    return NULL;
}

const char *queue_jobtype_names(char *buf, size_t n)
{
    size_t o = 0;
    if (n)
        buf[0] = '\0';
    for (size_t i = 0; i < QUEUE_JOB_TYPES && o < n; i++) {
        int w = snprintf(buf + o, n - o, "%s%s", i ? ", " : "", rows[i].name);
        o += w > 0 ? (size_t)w : 0;
    }
    return buf;
}

int queue_jobtype_check_json(const queue_jobtype *t, const json_t *payload, cds_err *err)
{
    cds_err why;
    if (t->check(payload, &why) == 0)
        return 0;
    return cds_errf(err, "%s payload %s (write the payload like '%s')", t->name, why.msg, t->example);
}

int queue_jobtype_check(const char *type, const char *payload, const queue_jobtype **out, cds_err *err)
{
    const queue_jobtype *t = queue_jobtype_find(type);
    if (out)
        *out = t;
    if (!t) {
        char names[256];
        return cds_errf(err, "unknown job type '%.64s': the known types are %s (see jobctl enqueue --help)",
                        type ? type : "", queue_jobtype_names(names, sizeof names));
    }
    json_error_t je;
    json_t *p = json_loads(payload ? payload : "{}", JSON_DECODE_ANY, &je);
    if (!p)
        return cds_errf(err, "%s payload $: not valid JSON: %s at line %d column %d (write the payload like '%s')",
                        t->name, je.text, je.line, je.column, t->example);
    int rc = queue_jobtype_check_json(t, p, err);
    json_decref(p);
    return rc;
}
