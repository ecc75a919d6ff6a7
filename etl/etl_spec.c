/* etl_spec: the unload request, read from JSON with errors that name the
 * JSON path of the problem, so a bad `jobctl enqueue etl --spec` file says
 * exactly which field to fix.  Also the one writer of libpq conninfo
 * strings (one escaping, one rule for which settings are secret), used for
 * the redacted DSN of messages and the spec, and by etl_plan.c for the DSN
 * the plan records. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "cds_json.h"
#include "etl_plan_int.h"
#include "etl_unload.h"

static int get_string(const json_t *j, const char *key, int required, char **out, cds_err *err)
{
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) {
        if (required)
            return cds_errf(err, "$.%s: required (a string)", key);
        return 0;
    }
    if (!json_is_string(v) || json_string_length(v) == 0)
        return cds_errf(err, "$.%s: must be a non-empty string", key);
    *out = strdup(json_string_value(v));
    return 0;
}

static int get_int(const json_t *j, const char *key, int64_t min, int64_t max, int64_t dflt, int64_t *out,
                   cds_err *err)
{
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return cds_errf(err, "$.%s: must be an integer from %lld to %lld", key, (long long)min, (long long)max);
    *out = json_integer_value(v);
    return 0;
}

static int get_features(const json_t *j, etl_spec *s, cds_err *err)
{
    json_t *v = json_object_get(j, "features");
    if (json_is_string(v)) {
        /* "a,b,c" as on the command line */
        char *list = strdup(json_string_value(v)), *save = NULL;
        for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            s->features = realloc(s->features, (s->n_features + 1) * sizeof *s->features);
            s->features[s->n_features++] = strdup(t);
        }
        free(list);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            if (!json_is_string(e) || json_string_length(e) == 0)
                return cds_errf(err, "$.features[%zu]: must be a column name", i);
            s->features = realloc(s->features, (s->n_features + 1) * sizeof *s->features);
            s->features[s->n_features++] = strdup(json_string_value(e));
        }
    } else {
        return cds_errf(err, "$.features: required (a list of column names, or \"a,b,c\")");
    }
    if (s->n_features == 0)
        return cds_errf(err, "$.features: name at least one column");
    return 0;
}

static int get_shape(const json_t *j, etl_spec *s, cds_err *err)
{
    json_t *v = json_object_get(j, "feature_shape");
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        /* "28x28x1" as on the command line */
        const char *p = json_string_value(v);
        while (*p) {
            char *end;
            long long d = strtoll(p, &end, 10);
            if (end == p || d < 1 || d > (1LL << 31) || s->feature_ndim == ETL_NPY_MAX_DIMS - 1 ||
                (*end && *end != 'x'))
                return cds_errf(err, "$.feature_shape: '%s' is not a shape like 28x28x1", json_string_value(v));
            s->feature_shape[s->feature_ndim++] = d;
            p = *end ? end + 1 : end;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            if (!json_is_integer(e) || json_integer_value(e) < 1 || i >= ETL_NPY_MAX_DIMS - 1)
                return cds_errf(err, "$.feature_shape[%zu]: must be a positive integer (at most %d dimensions)", i,
                                ETL_NPY_MAX_DIMS - 1);
            s->feature_shape[s->feature_ndim++] = json_integer_value(e);
        }
    } else {
        return cds_errf(err, "$.feature_shape: must be a list of sizes or a string like 28x28x1");
    }
    if (s->feature_ndim == 0)
        return cds_errf(err, "$.feature_shape: empty");
    return 0;
}

static const char *const known_keys[] = {
    "dsn", "table", "features", "label", "dataset", "shards", "data_root", "valid_table", "valid_fraction",
    "test_table", "where", "shard_key", "dtype", "feature_shape", "feature_encoding", "transform", "jobs",
    "replace", NULL,
};

/* What a JSON value is, for "$: is ..., not an object". */
static const char *json_kind(const json_t *j)
{
    switch (j ? json_typeof(j) : JSON_NULL) {
    case JSON_OBJECT: return "a JSON object";
    case JSON_ARRAY: return "a JSON array";
    case JSON_STRING: return "a JSON string";
    case JSON_INTEGER:
    case JSON_REAL: return "a JSON number";
    case JSON_TRUE:
    case JSON_FALSE: return "a JSON boolean";
    default: return j ? "JSON null" : "nothing (no JSON value)";
    }
}

int etl_spec_from_json(const json_t *j, etl_spec *s, cds_err *err)
{
    memset(s, 0, sizeof *s);
    /* Callers put the file's name in front ("ETL spec FILE: $: ..."). */
    if (!json_is_object(j))
        return cds_errf(err, "$: is %s, not an object: an ETL spec is one JSON object of named fields (table, features, label, dataset, shards...) described in docs/etl.md; jobs/etl-fashion-mnist.json is one to copy",
                        json_kind(j));
    if (cds_json_check_fields(j, "$", known_keys, "see docs/etl.md", err) != 0)
        return -1;
    int64_t v = 0;
    if (get_string(j, "dsn", 0, &s->dsn, err) || get_string(j, "table", 1, &s->table, err) ||
        get_features(j, s, err) || get_string(j, "label", 1, &s->label, err) ||
        get_string(j, "dataset", 1, &s->dataset, err) || get_string(j, "data_root", 1, &s->data_root, err) ||
        get_string(j, "valid_table", 0, &s->valid_table, err) || get_string(j, "test_table", 0, &s->test_table, err) ||
        get_string(j, "where", 0, &s->where, err) || get_string(j, "shard_key", 0, &s->shard_key, err) ||
        get_string(j, "feature_encoding", 0, &s->feature_encoding, err) ||
        get_string(j, "transform", 0, &s->transform, err) || get_shape(j, s, err))
        return -1;
    if (get_int(j, "shards", 1, ETL_MAX_SHARDS, -1, &v, err))
        return -1;
    if (v < 0)
        return cds_errf(err, "$.shards: required (the number of shards, one per worker)");
    s->shards = (int)v;
    if (get_int(j, "jobs", 1, 256, 0, &v, err))
        return -1;
    s->jobs = (int)v;
    json_t *f = json_object_get(j, "valid_fraction");
    if (f && !json_is_null(f)) {
        if (!json_is_number(f) || json_number_value(f) <= 0 || json_number_value(f) >= 1)
            return cds_errf(err, "$.valid_fraction: must be a number between 0 and 1 (e.g. 0.1)");
        if (s->valid_table)
            return cds_errf(err, "$.valid_fraction: give either valid_table or valid_fraction, not both");
        s->valid_fraction = json_number_value(f);
    }
    json_t *r = json_object_get(j, "replace");
    if (r && !json_is_boolean(r))
        return cds_errf(err, "$.replace: must be true or false");
    s->replace = r && json_is_true(r);
    s->dtype = ETL_F32;
    json_t *d = json_object_get(j, "dtype");
    if (d && (!json_is_string(d) || etl_dtype_parse(json_string_value(d), &s->dtype) != 0 || s->dtype == ETL_I32))
        return cds_errf(err, "$.dtype: must be \"float32\" or \"uint8\"");
    if (s->feature_encoding && strcmp(s->feature_encoding, "uint8") != 0 &&
        strcmp(s->feature_encoding, "float32le") != 0)
        return cds_errf(err, "$.feature_encoding: must be \"uint8\" or \"float32le\" (how bytea features are packed)");
    if (s->transform && strcmp(s->transform, "criteo") != 0)
        return cds_errf(err, "$.transform: the only transform is \"criteo\"");
    if (strpbrk(s->dataset, "/\\") || s->dataset[0] == '.' || strlen(s->dataset) > 128)
        return cds_errf(err, "$.dataset: '%s' must be a plain name (no '/', not starting with '.', at most 128 characters)",
                        s->dataset);
    return 0;
}

static void set_str(json_t *o, const char *k, const char *v)
{
    if (v)
        json_object_set_new(o, k, json_string(v));
}

int etl_conninfo_secret(const PQconninfoOption *o)
{
    return strcmp(o->keyword, "password") == 0 || (o->dispchar && strchr(o->dispchar, '*'));
}

void etl_conninfo_append(char **s, size_t *n, size_t *cap, const char *key, const char *val)
{
    size_t need = strlen(key) + 2 * strlen(val) + 5; /* " key='" escaped "'" NUL */
    if (!*s || *n + need > *cap) {
        *cap = 2 * (*n + need);
        *s = realloc(*s, *cap);
    }
    char *o = *s + *n;
    if (*n)
        *o++ = ' ';
    o += sprintf(o, "%s='", key);
    for (const char *c = val; *c; c++) {
        if (*c == '\'' || *c == '\\')
            *o++ = '\\';
        *o++ = *c;
    }
    *o++ = '\'';
    *o = '\0';
    *n = (size_t)(o - *s);
}

char *etl_dsn_redacted(const char *dsn)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn ? dsn : "", &msg);
    PQfreemem(msg);
    if (!opts)
        return strdup("(unparsable DSN)");
    size_t n = 0, cap = 256;
    char *out = calloc(1, cap);
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (o->val && *o->val && !etl_conninfo_secret(o))
            etl_conninfo_append(&out, &n, &cap, o->keyword, o->val);
    PQconninfoFree(opts);
    return out;
}

json_t *etl_spec_to_json(const etl_spec *s)
{
    json_t *o = json_object();
    if (s->dsn) {
        char *red = etl_dsn_redacted(s->dsn);
        set_str(o, "dsn", red);
        free(red);
    }
    set_str(o, "table", s->table);
    json_t *f = json_array();
    for (size_t i = 0; i < s->n_features; i++)
        json_array_append_new(f, json_string(s->features[i]));
    json_object_set_new(o, "features", f);
    set_str(o, "label", s->label);
    set_str(o, "dataset", s->dataset);
    json_object_set_new(o, "shards", json_integer(s->shards));
    set_str(o, "data_root", s->data_root);
    set_str(o, "valid_table", s->valid_table);
    if (s->valid_fraction > 0)
        json_object_set_new(o, "valid_fraction", json_real(s->valid_fraction));
    set_str(o, "test_table", s->test_table);
    set_str(o, "where", s->where);
    set_str(o, "shard_key", s->shard_key);
    set_str(o, "dtype", etl_dtype_name(s->dtype));
    if (s->feature_ndim) {
        json_t *sh = json_array();
        for (int i = 0; i < s->feature_ndim; i++)
            json_array_append_new(sh, json_integer(s->feature_shape[i]));
        json_object_set_new(o, "feature_shape", sh);
    }
    set_str(o, "feature_encoding", s->feature_encoding);
    set_str(o, "transform", s->transform);
    if (s->jobs)
        json_object_set_new(o, "jobs", json_integer(s->jobs));
    json_object_set_new(o, "replace", json_boolean(s->replace));
    return o;
}

void etl_spec_free(etl_spec *s)
{
    free(s->dsn);
    free(s->table);
    for (size_t i = 0; i < s->n_features; i++)
        free(s->features[i]);
    free(s->features);
    free(s->label);
    free(s->dataset);
    free(s->data_root);
    free(s->valid_table);
    free(s->test_table);
    free(s->where);
    free(s->shard_key);
    free(s->feature_encoding);
    free(s->transform);
    memset(s, 0, sizeof *s);
}

