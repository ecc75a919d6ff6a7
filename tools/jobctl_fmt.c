/* See jobctl_fmt.h.  A table is a grid of owned strings whose columns are
 * padded to their widest cell (numbers right-aligned), printed at the end;
 * every printer builds one from the library's JSON and prints it.  Missing or
 * empty values show as "-" so columns stay aligned and greppable. */
#include "jobctl_fmt.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- tables -------------------------------------------------------------- */

typedef struct table {
    size_t ncols, nrows, cap;
    const char *align; /* per column: 'l' or 'r' */
    char **cell;       /* nrows * ncols, row-major; row 0 is the header */
} table;

static void table_init(table *t, size_t ncols, const char *align)
{
    memset(t, 0, sizeof *t);
    t->ncols = ncols;
    t->align = align;
}

/* Appends a row of ncols cells (NULL or "" print as "-"). */
static void table_add(table *t, const char *const *cells)
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        char **grown = realloc(t->cell, cap * t->ncols * sizeof *grown);
        if (!grown)
            return; /* out of memory: the row is dropped, nothing worse */
        t->cell = grown;
        t->cap = cap;
    }
    for (size_t c = 0; c < t->ncols; c++)
        t->cell[t->nrows * t->ncols + c] = strdup(cells[c] && *cells[c] ? cells[c] : "-");
    t->nrows++;
}

static void table_print(const table *t, FILE *out)
{
    size_t width[16] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols && c < 16; c++) {
            const char *s = t->cell[r * t->ncols + c];
            size_t n = s ? strlen(s) : 0;
            if (n > width[c])
                width[c] = n;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = t->cell[r * t->ncols + c];
            int w = (int)width[c < 16 ? c : 15];
            int last = c + 1 == t->ncols;
            if (t->align[c] == 'r')
                fprintf(out, "%*s", w, s ? s : "");
            else if (last)
                fputs(s ? s : "", out);
            else
                fprintf(out, "%-*s", w, s ? s : "");
            fputs(last ? "\n" : "  ", out);
        }
    }
}

static void table_free(table *t)
{
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cell[i]);
    free(t->cell);
    memset(t, 0, sizeof *t);
}

/* ---- values -------------------------------------------------------------- */

void fmt_duration(char *buf, size_t n, int64_t ms)
{
    if (ms < 0)
        ms = 0;
    int64_t s = ms / 1000;
    if (ms < 1000)
        snprintf(buf, n, "%" PRId64 "ms", ms);
    else if (s < 60)
        snprintf(buf, n, "%" PRId64 "s", s);
    else if (s < 3600)
        snprintf(buf, n, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, n, "%" PRId64 "h%02" PRId64 "m", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, n, "%" PRId64 "d%02" PRId64 "h", s / 86400, s % 86400 / 3600);
}

/* A field as text: strings as they are, numbers in decimal, else "". */
static void field_text(const json_t *o, const char *key, char *buf, size_t n)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_string(v))
        snprintf(buf, n, "%s", json_string_value(v));
    else if (json_is_integer(v))
        snprintf(buf, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_boolean(v))
        snprintf(buf, n, "%s", json_is_true(v) ? "yes" : "no");
    else
        buf[0] = '\0';
}

/* A field as a number (integers, or strings holding one); 0 if neither. */
static int64_t field_int(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return 0;
}

/* "2026-11-22 02:00:01 (3m07s ago)" or "(in 5s)", in local time. */
static void fmt_when(char *buf, size_t n, int64_t at_ms, int64_t now_ms)
{
    time_t t = (time_t)(at_ms / 1000);
    struct tm tm;
    char stamp[32] = "";
    if (localtime_r(&t, &tm))
        strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
    char d[32];
    fmt_duration(d, sizeof d, at_ms > now_ms ? at_ms - now_ms : now_ms - at_ms);
    snprintf(buf, n, "%s (%s%s%s)", stamp, at_ms > now_ms ? "in " : "", d, at_ms > now_ms ? "" : " ago");
}

/* ---- show ---------------------------------------------------------------- */

/* Fields shown first, in this order, with these labels; the rest follow. */
static const char *const show_order[][2] = {
    {"id", "id"},
    {"type", "type"},
    {"queue", "queue"},
    {"state", "state"},
    {"priority", "priority"},
    {"attempts", NULL}, /* "attempts  1 of 5" */
    {"stalls", NULL},   /* "stalls    0 of 3" */
    {"backoff_base_ms", NULL},
    {"unique", "unique"},
    {"after", "after"},
    {"dependents", "dependents"},
    {"created_ms", "created"},
    {"due_ms", "due"},
    {"started_ms", "started"},
    {"finished_ms", "finished"},
    {"worker", "worker"},
    {"error", "error"},
    {"dead_reason", "dead reason"},
    {"payload", "payload"},
    {"result", "result"},
};
/* Shown as part of another line, or not at all. */
static const char *const show_skip[] = {"max_attempts", "max_stalls", "backoff_cap_ms", "has_dependents"};

static int known_field(const char *key)
{
    for (size_t i = 0; i < sizeof show_order / sizeof show_order[0]; i++)
        if (strcmp(key, show_order[i][0]) == 0)
            return 1;
    for (size_t i = 0; i < sizeof show_skip / sizeof show_skip[0]; i++)
        if (strcmp(key, show_skip[i]) == 0)
            return 1;
    return 0;
}

static void add_pair(table *t, const char *label, const char *value)
{
    if (!value || !*value)
        return; /* an empty field says nothing */
    const char *row[2] = {label, value};
    table_add(t, row);
}

static void add_show_field(table *t, const json_t *job, const char *key, const char *label, int64_t now_ms)
{
    char v[512];
    if (strcmp(key, "attempts") == 0 || strcmp(key, "stalls") == 0) {
        const char *max = key[0] == 'a' ? "max_attempts" : "max_stalls";
        snprintf(v, sizeof v, "%" PRId64 " of %" PRId64, field_int(job, key), field_int(job, max));
        add_pair(t, key, v);
    } else if (strcmp(key, "backoff_base_ms") == 0) {
        snprintf(v, sizeof v, "base %gs, cap %gs", (double)field_int(job, key) / 1000.0,
                 (double)field_int(job, "backoff_cap_ms") / 1000.0);
        add_pair(t, "backoff", v);
    } else if (strcmp(key, "dependents") == 0) {
        const json_t *a = json_object_get(job, key);
        size_t i, len = 0;
        const json_t *e;
        v[0] = '\0';
        json_array_foreach(a, i, e)
        {
            len += (size_t)snprintf(v + len, len < sizeof v ? sizeof v - len : 0, "%s%s", i ? " " : "",
                                    json_string_value(e));
            if (len >= sizeof v)
                break;
        }
        add_pair(t, label, v);
    } else if (strlen(key) > 3 && strcmp(key + strlen(key) - 3, "_ms") == 0) {
        int64_t at = field_int(job, key);
        if (at > 0) {
            fmt_when(v, sizeof v, at, now_ms);
            add_pair(t, label, v);
        }
    } else {
        /* Long values (payload, result, error) are printed whole. */
        const json_t *s = json_object_get(job, key);
        if (json_is_string(s))
            add_pair(t, label, json_string_value(s));
        else {
            field_text(job, key, v, sizeof v);
            add_pair(t, label, v);
        }
    }
}

void fmt_show(FILE *out, const json_t *job, int64_t now_ms)
{
    table t;
    table_init(&t, 2, "ll");
    for (size_t i = 0; i < sizeof show_order / sizeof show_order[0]; i++)
        if (json_object_get(job, show_order[i][0]))
            add_show_field(&t, job, show_order[i][0], show_order[i][1], now_ms);
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)job, key, v)
    {
        if (!known_field(key))
            add_show_field(&t, job, key, key, now_ms);
    }
    table_print(&t, out);
    table_free(&t);
}

/* ---- list ---------------------------------------------------------------- */

/* What the WHEN column says for a job in its state. */
static void list_when(const json_t *job, int64_t now_ms, char *buf, size_t n)
{
    const char *state = json_string_value(json_object_get(job, "state"));
    char d[32];
    int64_t at;
    if (!state)
        state = "";
    if (strcmp(state, "delayed") == 0) {
        at = field_int(job, "due_ms");
        fmt_duration(d, sizeof d, at - now_ms);
        snprintf(buf, n, at > now_ms ? "due in %s" : "due now", d);
    } else if (strcmp(state, "active") == 0) {
        fmt_duration(d, sizeof d, now_ms - field_int(job, "started_ms"));
        snprintf(buf, n, "started %s ago", d);
    } else if (strcmp(state, "done") == 0 || strcmp(state, "dead") == 0 || strcmp(state, "cancelled") == 0) {
        fmt_duration(d, sizeof d, now_ms - field_int(job, "finished_ms"));
        snprintf(buf, n, "finished %s ago", d);
    } else {
        fmt_duration(d, sizeof d, now_ms - field_int(job, "created_ms"));
        snprintf(buf, n, "queued %s ago", d);
    }
}

void fmt_list(FILE *out, const json_t *jobs, int64_t now_ms)
{
    table t;
    table_init(&t, 7, "rlllrrl");
    const char *head[7] = {"ID", "QUEUE", "TYPE", "STATE", "PRI", "ATTEMPTS", "WHEN"};
    table_add(&t, head);
    size_t i;
    const json_t *job;
    json_array_foreach(jobs, i, job)
    {
        char id[32], queue[80], type[80], state[16], pri[24], attempts[48], when[64];
        field_text(job, "id", id, sizeof id);
        field_text(job, "queue", queue, sizeof queue);
        field_text(job, "type", type, sizeof type);
        field_text(job, "state", state, sizeof state);
        field_text(job, "priority", pri, sizeof pri);
        snprintf(attempts, sizeof attempts, "%" PRId64 "/%" PRId64, field_int(job, "attempts"),
                 field_int(job, "max_attempts"));
        list_when(job, now_ms, when, sizeof when);
        const char *row[7] = {id, queue, type, state, pri, attempts, when};
        table_add(&t, row);
    }
    table_print(&t, out);
    table_free(&t);
}

/* ---- stats --------------------------------------------------------------- */

static const char *const stat_states[] = {"waiting", "delayed", "blocked", "active", "done", "dead", "cancelled"};
/* Counters that add to the state columns (done, dead and cancelled counters
 * equal those sets until finished jobs are trimmed: --json has them). */
static const char *const stat_counters[] = {"enqueued", "retried", "stalled"};
#define N_STAT_STATES (sizeof stat_states / sizeof stat_states[0])
#define N_STAT_COUNTERS (sizeof stat_counters / sizeof stat_counters[0])
#define N_STAT_COLS (1 + N_STAT_STATES + N_STAT_COUNTERS)

void fmt_stats(FILE *out, const json_t *stats)
{
    table t;
    table_init(&t, N_STAT_COLS, "lrrrrrrrrrr");
    const char *head[N_STAT_COLS] = {"QUEUE",     "WAITING",  "DELAYED", "BLOCKED", "ACTIVE", "DONE",
                                     "DEAD",      "CANCELLED", "ENQUEUED", "RETRIED", "STALLED"};
    table_add(&t, head);
    /* Sorted by queue name, so the output does not depend on hash order. */
    size_t n = json_object_size(stats), k = 0;
    const char **names = calloc(n ? n : 1, sizeof *names);
    const char *name;
    const json_t *q;
    json_object_foreach((json_t *)stats, name, q)
    {
        if (names)
            names[k++] = name;
    }
    for (size_t i = 0; i + 1 < k; i++)
        for (size_t j = i + 1; j < k; j++)
            if (strcmp(names[j], names[i]) < 0) {
                const char *tmp = names[i];
                names[i] = names[j];
                names[j] = tmp;
            }
    for (size_t i = 0; i < k; i++) {
        q = json_object_get(stats, names[i]);
        const json_t *counters = json_object_get(q, "counters");
        char cells[N_STAT_COLS][24];
        const char *row[N_STAT_COLS];
        cells[0][0] = '\0';
        for (size_t s = 0; s < N_STAT_STATES; s++)
            snprintf(cells[1 + s], sizeof cells[0], "%" PRId64, field_int(q, stat_states[s]));
        for (size_t c = 0; c < N_STAT_COUNTERS; c++)
            snprintf(cells[1 + N_STAT_STATES + c], sizeof cells[0], "%" PRId64, field_int(counters, stat_counters[c]));
        row[0] = names[i];
        for (size_t c = 1; c < N_STAT_COLS; c++)
            row[c] = cells[c];
        table_add(&t, row);
    }
    free(names);
    table_print(&t, out);
    table_free(&t);
}

/* ---- workers ------------------------------------------------------------- */

void fmt_workers(FILE *out, const json_t *workers, int64_t now_ms)
{
    table t;
    table_init(&t, 9, "lllllllll");
    const char *head[9] = {"ID", "ALIVE", "HOST", "PID", "DEVICE", "QUEUES", "JOB", "STATE", "LAST SEEN"};
    table_add(&t, head);
    size_t i;
    const json_t *w;
    json_array_foreach(workers, i, w)
    {
        char id[256], alive[8], host[256], pid[24], device[32], queues[512], job[32], state[32], seen[48], d[32];
        field_text(w, "id", id, sizeof id);
        field_text(w, "alive", alive, sizeof alive);
        field_text(w, "host", host, sizeof host);
        field_text(w, "pid", pid, sizeof pid);
        field_text(w, "device", device, sizeof device); /* none ("-") from a worker older than --device */
        field_text(w, "queues", queues, sizeof queues);
        field_text(w, "job", job, sizeof job);
        field_text(w, "state", state, sizeof state);
        fmt_duration(d, sizeof d, now_ms - field_int(w, "last_seen_ms"));
        snprintf(seen, sizeof seen, "%s ago", d);
        if (!json_is_true(json_object_get(w, "alive")))
            snprintf(state, sizeof state, "gone");
        const char *row[9] = {id, alive, host, pid, device, queues, job, state, seen};
        table_add(&t, row);
    }
    table_print(&t, out);
    table_free(&t);
}

void fmt_top(FILE *out, const json_t *workers, const char *prefix, int64_t now_ms)
{
    size_t i, alive = 0, busy = 0;
    const json_t *w;
    json_array_foreach(workers, i, w) {
        int a = json_is_true(json_object_get(w, "alive"));
        alive += (size_t)a;
        busy += (size_t)(a && strcmp(json_string_value(json_object_get(w, "state")) ?: "", "busy") == 0);
    }
    fprintf(out, "workers under %s: %zu alive, %zu busy, %zu gone\n", prefix, alive, busy,
            json_array_size(workers) - alive);
    table t;
    table_init(&t, 11, "llllrrrrrll");
    const char *head[11] = {"ID", "STATE", "DOING", "DEVICE", "ROWS", "ROWS/S", "VISITS", "EVALS", "JOBS", "HOST",
                            "SEEN"};
    table_add(&t, head);
    json_array_foreach(workers, i, w) {
        char id[256], state[32], job[64], device[32], host[256], rows[48] = "-", rate[32] = "-", visits[24] = "-",
             evals[24] = "-", jobs[48] = "-", seen[48], d[32];
        field_text(w, "id", id, sizeof id);
        field_text(w, "state", state, sizeof state);
        field_text(w, "job", job, sizeof job);
        field_text(w, "device", device, sizeof device);
        field_text(w, "host", host, sizeof host);
        /* A registration of a worker older than its counters has none. */
        if (json_object_get(w, "visits")) {
            long long rt = (long long)field_int(w, "rows_total");
            snprintf(visits, sizeof visits, "%lld", (long long)field_int(w, "visits"));
            snprintf(evals, sizeof evals, "%lld", (long long)(field_int(w, "evals") + field_int(w, "tests")));
            snprintf(jobs, sizeof jobs, "%lld/%lld", (long long)field_int(w, "jobs_done"), (long long)field_int(w, "jobs_failed"));
            if (rt > 0) {
                snprintf(rows, sizeof rows, "%lld/%lld", (long long)field_int(w, "rows_done"), rt);
                snprintf(rate, sizeof rate, "%.0f", atof(json_string_value(json_object_get(w, "samples_per_s")) ?: "0"));
            }
        }
        fmt_duration(d, sizeof d, now_ms - field_int(w, "last_seen_ms"));
        snprintf(seen, sizeof seen, "%s ago", d);
        if (!json_is_true(json_object_get(w, "alive")))
            snprintf(state, sizeof state, "gone");
        const char *row[11] = {id, state, job, device, rows, rate, visits, evals, jobs, host, seen};
        table_add(&t, row);
    }
    table_print(&t, out);
    table_free(&t);
}
