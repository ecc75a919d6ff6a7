/* worker_results_db: each evaluated epoch of a MOP sweep as a row of the
 * cds_results table in the database the dataset came from, so results sit
 * next to the data they were learnt from and can be queried with SQL.
 *
 * Rows travel through Redis.  Recording an evaluation appends its row to the
 * outbox of its database in the same script call (queue_mop_record_result_row),
 * and workers drain the outboxes into their databases (queue_outbox.c has the
 * protocol), all through one path: the main loop's results tick, which runs
 * once a second and at once after the worker recorded an evaluation (then
 * trying that row's outbox first, after the epoch files were dealt with), so
 * rows left by a database that was down, or by a worker that died, are
 * written by whoever is there when the database is back.  A pass holds
 * an outbox's claim, writes its rows head first, and removes each only after
 * the database accepted it; a failed try backs the whole outbox off, on one
 * schedule shared through Redis.  A row the database refuses for its data
 * (SQLSTATE class 22 or 23) is tried max_refusals times, then set aside with
 * the reason; a row that is not even readable is set aside at once; every
 * other failure (no route, no such database, authentication, permissions,
 * time-outs) waits for the database, however long that takes.
 *
 * Time.  This runs on the main thread between visits, never on the heartbeat
 * thread, so leases keep being renewed whatever the database does.  Every
 * database try (connect, create the table, insert) has one deadline,
 * bound_ms: libpq's non-blocking connect and query calls are polled against
 * it, and a connection that overran it is dropped.  A pass takes no new row
 * once pass_ms have gone by; so a pass holds up training for at most about
 * pass_ms + bound_ms.  (libpq resolves host names in the connect call
 * itself, outside the bound: use hostaddr, or a resolver that answers.)
 *
 * The connection string is the one the dataset's ETL plan recorded (without
 * a password: libpq takes it from PGPASSWORD or ~/.pgpass, as for ETL).  The
 * worker keeps one connection open between rows and opens another when the
 * DSN changes or the server dropped it; an insert that finds the connection
 * gone reconnects and tries once more.  The table is created once per
 * connection, and given the columns added since an older worker created it
 * (add_columns); each row is one INSERT in its own implicit transaction, so a
 * row is either there whole or not at all.  A row whose (sweep, model,
 * epoch) is there already (a unique violation) is written by an UPDATE of
 * the other columns: either it is the same row again (its drainer died
 * before removing it from Redis: the same values), or the epoch was trained
 * again (jobctl retry S/m --from) and its new metrics replace the old; rows
 * reach the table in the order they were recorded, so the newest wins.
 * recorded_at is when the result was recorded in Redis, not when the row
 * reached the database.  The SQL stays within PostgreSQL 9.4 (Greenplum 6):
 * jsonb, CREATE TABLE IF NOT EXISTS, no ON CONFLICT. */
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cds_util.h"
#include "etl_unload.h"
#include "worker_results.h"

static const char create_sql[] =
    "CREATE TABLE IF NOT EXISTS cds_results ("
    " sweep text NOT NULL, model int NOT NULL, epoch int NOT NULL, spec jsonb NOT NULL,"
    " train_rows bigint, train_loss double precision, train_top1 double precision,"
    " valid_rows bigint, valid_loss double precision, valid_top1 double precision, valid_top5 double precision,"
    " recorded_at timestamptz NOT NULL DEFAULT now(), device text, train_device text,"
    " PRIMARY KEY (sweep, model, epoch))";

/* Columns added after the table's first version, which a table made by an
 * older worker lacks: added once per connection, before the first insert
 * (PostgreSQL 9.4 has no ADD COLUMN IF NOT EXISTS, so those present are
 * looked up first).  A new column goes here and into create_sql alike. */
static const char *const added_columns[][2] = {
    {"device", "ALTER TABLE cds_results ADD COLUMN device text"},
    {"train_device", "ALTER TABLE cds_results ADD COLUMN train_device text"},
};
static const char present_sql[] = "SELECT attname FROM pg_attribute WHERE attrelid = 'cds_results'::regclass"
                                  " AND attnum > 0 AND NOT attisdropped AND attname IN ('device', 'train_device')";

/* The columns a row sets besides its key, and their values from $4 (the
 * spec), m (the metrics, $5) and $6 (recorded_ms, NULL: now).  A row
 * recorded by an older worker has no device in its metrics: NULL. */
#define ROW_COLUMNS                                                                                                 \
    "spec, train_rows, train_loss, train_top1, valid_rows, valid_loss, valid_top1, valid_top5, recorded_at,"        \
    " device, train_device"
#define ROW_VALUES                                                                                                  \
    "$4::jsonb, (m->>'train_rows')::bigint, (m->>'train_loss')::float8, (m->>'train_top1')::float8,"                \
    " (m->>'valid_rows')::bigint, (m->>'valid_loss')::float8, (m->>'valid_top1')::float8,"                          \
    " (m->>'valid_top5')::float8, coalesce(to_timestamp($6::bigint / 1000.0), now()),"                              \
    " nullif(m->>'device', ''), nullif(m->>'train_device', '')"

static const char insert_sql[] = "INSERT INTO cds_results (sweep, model, epoch, " ROW_COLUMNS ")"
                                 " SELECT $1, $2::int, $3::int, " ROW_VALUES " FROM (SELECT $5::jsonb AS m) s";

static const char update_sql[] = "UPDATE cds_results SET (" ROW_COLUMNS ") = (" ROW_VALUES ")"
                                 " FROM (SELECT $5::jsonb AS m) s"
                                 " WHERE sweep = $1 AND model = $2::int AND epoch = $3::int";

void worker_results_default_opts(worker_results_opts *o, const char *worker)
{
    *o = (worker_results_opts){.worker = worker, .pass_ms = 1000, .base_ms = 1000, .cap_ms = 60000,
                               .max_refusals = 3, .claim_ms = 30000};
}

/* "relation cds_results already exists, skipping" and the like: the table
 * is created on every first use, and its notices would fill worker logs. */
static void quiet(void *arg, const char *message)
{
    (void)arg, (void)message;
}

struct worker_results_db {
    PGconn *c;
    char *dsn;   /* what c was opened with */
    int created; /* CREATE TABLE ran on c */
    int64_t bound_ms;
};

worker_results_db *worker_results_db_new(int64_t bound_ms)
{
    worker_results_db *db = calloc(1, sizeof(worker_results_db));
    if (db)
        db->bound_ms = bound_ms > 0 ? bound_ms : WORKER_RESULTS_BOUND_MS;
    return db;
}

static void drop_conn(worker_results_db *db)
{
    if (db->c)
        PQfinish(db->c);
    db->c = NULL;
    free(db->dsn);
    db->dsn = NULL;
    db->created = 0;
}

void worker_results_db_free(worker_results_db *db)
{
    if (!db)
        return;
    drop_conn(db);
    free(db);
}

/* libpq's messages end in a newline (cds_errf turns the ones inside into
 * spaces): without it. */
static int pg_errf(cds_err *err, const char *what, const char *pgmsg)
{
    size_t n = pgmsg ? strlen(pgmsg) : 0;
    while (n && (pgmsg[n - 1] == '\n' || pgmsg[n - 1] == ' '))
        n--;
    return n ? cds_errf(err, "%s: %.*s", what, (int)n, pgmsg) : cds_errf(err, "%s: no message from libpq", what);
}

/* Waits until c's socket is ready for one of events (POLLIN, POLLOUT) or
 * the deadline passes; returns the events that came, or -1. */
static int wait_socket(PGconn *c, short events, int64_t deadline, const char *what, cds_err *err)
{
    for (;;) {
        int64_t left = deadline - cds_mono_ms();
        if (left <= 0)
            return cds_errf(err, "%s: timed out (a database try is bounded so that training goes on); the "
                                 "database or the network is too slow or gone", what);
        struct pollfd p = {.fd = PQsocket(c), .events = events};
        if (p.fd < 0)
            return pg_errf(err, what, PQerrorMessage(c));
        int r = poll(&p, 1, left > 1000 ? 1000 : (int)left);
        if (r > 0)
            return p.revents & (POLLERR | POLLHUP | POLLNVAL) ? events : p.revents; /* libpq says what broke */
        if (r < 0 && errno != EINTR)
            return cds_errf(err, "%s: poll: %s", what, strerror(errno));
    }
}

static int open_conn(worker_results_db *db, const char *dsn, int64_t deadline, cds_err *err)
{
    static const char what[] = "connecting to the dataset's database";
    if (db->c && PQstatus(db->c) == CONNECTION_OK && strcmp(db->dsn, dsn) == 0)
        return 0;
    drop_conn(db);
    /* dbname with expand_dbname is the whole conninfo (key=value or URI). */
    const char *const keys[] = {"dbname", "fallback_application_name", NULL};
    const char *const vals[] = {dsn, "cds-worker", NULL};
    if (!(db->c = PQconnectStartParams(keys, vals, 1)))
        return cds_err_nomem(err, "out of memory connecting to the dataset's database");
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (PQstatus(db->c) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        if (wait_socket(db->c, st == PGRES_POLLING_WRITING ? POLLOUT : POLLIN, deadline, what, err) < 0) {
            drop_conn(db);
            return -1;
        }
        st = PQconnectPoll(db->c);
    }
    if (PQstatus(db->c) != CONNECTION_OK) {
        pg_errf(err, what, PQerrorMessage(db->c));
        drop_conn(db);
        return -1;
    }
    if (!(db->dsn = strdup(dsn))) {
        drop_conn(db);
        return cds_err_nomem(err, "out of memory connecting to the dataset's database");
    }
    PQsetNoticeProcessor(db->c, quiet, NULL);
    PQsetnonblocking(db->c, 1);
    return 0;
}

/* Sends one statement and returns its result (NULL with err set when the
 * connection failed or the deadline passed: the connection is then of no
 * further use). */
static PGresult *exec_bounded(PGconn *c, const char *sql, int n, const char *const *params, int64_t deadline,
                              const char *what, cds_err *err)
{
    if (!PQsendQueryParams(c, sql, n, NULL, params, NULL, NULL, 0)) {
        pg_errf(err, what, PQerrorMessage(c));
        return NULL;
    }
    /* Docs of PQflush: while it has more to send, wait for either
     * direction, and read what the server sent meanwhile. */
    for (int f; (f = PQflush(c)) != 0;) {
        int ev = f < 0 ? -1 : wait_socket(c, POLLIN | POLLOUT, deadline, what, err);
        if (f < 0 || (ev >= 0 && (ev & POLLIN) && !PQconsumeInput(c))) {
            pg_errf(err, what, PQerrorMessage(c));
            return NULL;
        }
        if (ev < 0)
            return NULL;
    }
    PGresult *keep = NULL;
    for (;;) {
        while (PQisBusy(c)) {
            if (wait_socket(c, POLLIN, deadline, what, err) < 0) {
                PQclear(keep);
                return NULL;
            }
            if (!PQconsumeInput(c)) {
                pg_errf(err, what, PQerrorMessage(c));
                PQclear(keep);
                return NULL;
            }
        }
        PGresult *r = PQgetResult(c);
        if (!r)
            break;
        if (!keep)
            keep = r;
        else
            PQclear(r);
    }
    if (!keep)
        pg_errf(err, what, PQerrorMessage(c));
    return keep;
}

/* 0 when the statement ran (*affected, may be NULL, gets the rows it
 * touched); otherwise err says why and *state (may be NULL) gets the
 * SQLSTATE ("" when there is none: the connection failed). */
static int run(worker_results_db *db, const char *sql, int n, const char *const *params, int64_t deadline,
               const char *what, char state[6], long long *affected, cds_err *err)
{
    if (state)
        state[0] = '\0';
    err->msg[0] = '\0';
    PGresult *r = exec_bounded(db->c, sql, n, params, deadline, what, err);
    if (!r)
        return -1;
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (ok && affected)
        *affected = atoll(PQcmdTuples(r));
    if (!ok) {
        const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (state && s)
            snprintf(state, 6, "%s", s);
        pg_errf(err, what, PQresultErrorMessage(r));
    }
    PQclear(r);
    return ok ? 0 : -1;
}

/* Adds the columns of added_columns that the table lacks.  Another worker
 * adding the same column at once makes this one's ALTER fail with
 * duplicate_column (42701): the column is there, which is all that counts.
 * Any other failure (say, this user does not own the table) leaves the rows
 * waiting in Redis, the error naming the statement its owner can run.
 * *no_table: the failure was that there is no table to add to. */
static int add_columns(worker_results_db *db, int64_t deadline, int *no_table, cds_err *err)
{
    static const char what[] = "adding columns to cds_results";
    *no_table = 0;
    PGresult *r = exec_bounded(db->c, present_sql, 0, NULL, deadline, what, err);
    if (!r)
        return -1;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        *no_table = st && strcmp(st, "42P01") == 0; /* undefined_table */
        pg_errf(err, what, PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    enum { N_ADDED = sizeof added_columns / sizeof added_columns[0] };
    int present[N_ADDED] = {0};
    for (int i = 0; i < PQntuples(r); i++)
        for (int k = 0; k < N_ADDED; k++)
            present[k] |= strcmp(PQgetvalue(r, i, 0), added_columns[k][0]) == 0;
    PQclear(r);
    for (int k = 0; k < N_ADDED; k++) {
        char state[6], how[160];
        snprintf(how, sizeof how, "adding column %s to cds_results (if this user may not, the table's owner can: "
                 "%s)", added_columns[k][0], added_columns[k][1]);
        if (!present[k] && run(db, added_columns[k][1], 0, NULL, deadline, how, state, NULL, err) != 0 &&
            strcmp(state, "42701") != 0)
            return -1;
    }
    return 0;
}

/* Bad data (class 22) or another constraint (23): this row will never go
 * in, whatever the database's health. */
static int refused(const char state[6])
{
    return strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0;
}

static int insert_once(worker_results_db *db, const char *const params[6], int64_t deadline, cds_err *err)
{
    char state[6];
    /* Two workers creating the table at once can make one CREATE TABLE IF NOT
     * EXISTS fail (a unique violation in the catalog), as can a user who may
     * write the table but not create in its schema: the table exists then,
     * so go on to its columns, which say so if it really does not (with the
     * CREATE's error, the one that tells why).  One that did not end (a
     * time-out, a broken connection) leaves the connection unusable: its
     * error is the one to report. */
    if (!db->created) {
        cds_err cerr = {0};
        int made = run(db, create_sql, 0, NULL, deadline, "creating cds_results", NULL, NULL, &cerr) == 0;
        if (!made && (PQstatus(db->c) != CONNECTION_OK || PQtransactionStatus(db->c) != PQTRANS_IDLE)) {
            *err = cerr;
            return -1;
        }
        int no_table;
        if (add_columns(db, deadline, &no_table, err) != 0) {
            if (!made && no_table)
                *err = cerr;
            return -1;
        }
        db->created = 1;
    }
    if (run(db, insert_sql, 6, params, deadline, "inserting into cds_results", state, NULL, err) == 0)
        return 0;
    if (strcmp(state, "23505") != 0)
        return refused(state) ? WORKER_RESULTS_REFUSED : -1;
    /* The key is there: the same row again, or the epoch trained again. */
    long long n = 0;
    if (run(db, update_sql, 6, params, deadline, "updating cds_results", state, &n, err) != 0)
        return refused(state) ? WORKER_RESULTS_REFUSED : -1;
    if (n != 1)
        return cds_errf(err, "updating cds_results: the row of sweep %s model %s epoch %s went away between the "
                             "insert and the update; it is tried again", params[0], params[1], params[2]);
    return 0;
}

int worker_results_db_insert(worker_results_db *db, const char *dsn, const char *sweep, int model, int epoch,
                             int64_t recorded_ms, const char *spec_json, const char *metrics_json, cds_err *err)
{
    char m[16], e[16], t[24];
    snprintf(m, sizeof m, "%d", model);
    snprintf(e, sizeof e, "%d", epoch);
    snprintf(t, sizeof t, "%lld", (long long)recorded_ms);
    const char *params[6] = {sweep, m, e, spec_json, metrics_json, recorded_ms > 0 ? t : NULL};
    int64_t deadline = cds_mono_ms() + db->bound_ms;
    for (int attempt = 0;; attempt++) {
        if (open_conn(db, dsn ? dsn : "", deadline, err) != 0)
            return -1;
        int rc = insert_once(db, params, deadline, err);
        if (rc != -1)
            return rc;
        /* A connection the server closed (restart, idle timeout) is found
         * out only by using it: once more on a fresh one.  One that ran out
         * of time is dropped: its state is unknown. */
        int broken = PQstatus(db->c) != CONNECTION_OK || PQtransactionStatus(db->c) != PQTRANS_IDLE;
        if (broken)
            drop_conn(db);
        if (!broken || attempt > 0 || cds_mono_ms() >= deadline)
            return -1;
    }
}

/* ---- draining the outboxes ------------------------------------------------- */

/* One row of an outbox, as mop_result.lua wrote it (the DSN is the
 * outbox's, in its state hash). */
typedef struct row {
    json_t *j;
    const char *sweep;
    int model, epoch;
    int64_t recorded_ms; /* 0: not known (now() then) */
    char *spec, *metrics;
} row;

static void row_free(row *r)
{
    json_decref(r->j);
    free(r->spec);
    free(r->metrics);
    memset(r, 0, sizeof *r);
}

static int row_parse(const char *text, row *r, cds_err *err)
{
    memset(r, 0, sizeof *r);
    json_error_t je;
    if (!(r->j = json_loads(text, 0, &je)))
        return cds_errf(err, "the row kept in Redis is not JSON (%s at column %d)", je.text, je.column);
    json_t *m = json_object_get(r->j, "model"), *e = json_object_get(r->j, "epoch");
    json_t *spec = json_object_get(r->j, "spec"), *metrics = json_object_get(r->j, "metrics");
    json_t *t = json_object_get(r->j, "recorded_ms");
    r->sweep = json_string_value(json_object_get(r->j, "sweep"));
    if (!r->sweep || !json_is_integer(m) || !json_is_integer(e) || !json_is_object(spec) ||
        !json_is_object(metrics)) {
        row_free(r);
        return cds_errf(err, "the row kept in Redis lacks sweep, model, epoch, spec or metrics");
    }
    r->model = (int)json_integer_value(m);
    r->epoch = (int)json_integer_value(e);
    r->recorded_ms = json_is_integer(t) ? json_integer_value(t) : 0;
    r->spec = json_dumps(spec, JSON_COMPACT);
    r->metrics = json_dumps(metrics, JSON_COMPACT);
    if (!r->spec || !r->metrics) {
        row_free(r);
        return cds_err_nomem(err, "out of memory reading a row kept in Redis");
    }
    return 0;
}

/* Writes one head row to dsn (NULL: the outbox's state lost it): 0
 * written, -1 the database failed (retry), or WORKER_RESULTS_REFUSED /
 * WORKER_RESULTS_MALFORMED; *r gets the row's identity for log lines
 * (row_free it). */
#define WORKER_RESULTS_MALFORMED 3
static int write_row(worker_results_db *db, const char *id, const char *dsn, const char *text, row *r, cds_err *err)
{
    if (row_parse(text, r, err) != 0)
        return WORKER_RESULTS_MALFORMED;
    /* Only a hand-made state could lack it: wait (a retry) for its fix. */
    if (!dsn)
        return cds_errf(err, "the outbox's state has no dsn: set it (redis-cli HSET results:outbox:{%s}:state dsn "
                             "'<conninfo of the dataset's database>', under the deployment's prefix)", id);
    return worker_results_db_insert(db, dsn, r->sweep, r->model, r->epoch, r->recorded_ms, r->spec, r->metrics, err);
}

static void log_aside(const cds_log *log, const row *r, const char *why)
{
    if (!log)
        return;
    if (r->sweep)
        cds_logf(log, CDS_LOG_WARN, "sweep %s model %d epoch %d: its cds_results row is set aside, not written: %s "
                 "(kept in Redis under results:aside; see jobctl results %s --check-db)", r->sweep, r->model, r->epoch,
                 why, r->sweep);
    else
        cds_logf(log, CDS_LOG_WARN, "a cds_results row is set aside, not written: %s (kept in Redis under "
                 "results:aside; see jobctl results --check-db)", why);
}

static void log_drained(const cds_log *log, const queue_outbox_head *h, const char *dsn)
{
    if (log && h->failing_since_ms >= 0)
        cds_logf(log, CDS_LOG_INFO, "cds_results at '%s': every row kept in Redis while the database failed is "
                 "written (it failed for %lld s)", dsn ? dsn : "",
                 (long long)((h->now_ms - h->failing_since_ms) / 1000));
}

int worker_results_drain(worker_results_db *db, queue_conn *q, const char *id, const worker_results_opts *o,
                         const cds_log *log, worker_results_pass *p, cds_err *err)
{
    memset(p, 0, sizeof *p);
    queue_outbox_claim c = {.worker = o->worker, .claim_ms = o->claim_ms};
    snprintf(c.id, sizeof c.id, "%s", id);
    queue_outbox_head h;
    if (queue_outbox_take(q, &c, &h, err) != 0)
        return -1;
    int64_t until = cds_mono_ms() + o->pass_ms;
    /* The outbox's DSN, as its first answer gave it (it is one DSN's). */
    char *dsn = h.dsn;
    h.dsn = NULL;
    int rc = 0;
    while (h.state == QUEUE_OUTBOX_ROW || (h.state == QUEUE_OUTBOX_ASIDE && h.row)) {
        if (cds_mono_ms() >= until) {
            queue_outbox_head_clear(&h);
            rc = queue_outbox_release(q, &c, &h, err);
            break;
        }
        char *text = h.row;
        h.row = NULL;
        row r;
        cds_err why = {0};
        int wrc = write_row(db, id, dsn, text, &r, &why);
        queue_outbox_head_clear(&h);
        if (wrc == 0) {
            rc = queue_outbox_done(q, &c, text, &h, err);
            p->written += rc == 0;
        } else {
            queue_outbox_failure f = {.why = why.msg, .kind = wrc == WORKER_RESULTS_MALFORMED ? "malformed"
                                                              : wrc == WORKER_RESULTS_REFUSED  ? "refused"
                                                                                               : "retry",
                                      .base_ms = o->base_ms, .cap_ms = o->cap_ms,
                                      .factor = 0.5 + 0.5 * cds_random_unit(), .max_refusals = o->max_refusals};
            rc = queue_outbox_fail(q, &c, text, &f, &h, err);
            if (rc == 0 && h.state == QUEUE_OUTBOX_ASIDE) {
                p->set_aside++;
                log_aside(log, &r, why.msg);
            } else if (rc == 0) {
                p->failed_now = 1;
            }
        }
        row_free(&r);
        free(text);
        if (rc != 0)
            break;
    }
    if (rc == 0) {
        p->left = h.waiting;
        p->failures = h.failures;
        snprintf(p->why, sizeof p->why, "%s", h.last_error);
        p->deferred = h.failures > 0 && h.waiting > 0;
        if (h.state == QUEUE_OUTBOX_EMPTY || (h.state == QUEUE_OUTBOX_ASIDE && !h.row))
            log_drained(log, &h, dsn);
    }
    queue_outbox_head_clear(&h);
    free(dsn);
    return rc;
}

int worker_results_drain_due(worker_results_db *db, queue_conn *q, const worker_results_opts *o, const cds_log *log,
                             cds_err *err)
{
    char **ids = NULL;
    size_t n = 0;
    if (queue_outbox_due(q, 16, &ids, &n, err) != 0)
        return -1;
    int rc = 0;
    int64_t until = cds_mono_ms() + o->pass_ms;
    /* The outboxes share the pass: at most one try runs past its end. */
    worker_results_opts left = *o;
    for (size_t i = 0; i < n && rc == 0 && (left.pass_ms = until - cds_mono_ms()) > 0; i++) {
        worker_results_pass p;
        rc = worker_results_drain(db, q, ids[i], &left, log, &p, err);
        /* One line per outage of a database, from whoever found it: the
         * recorder of each row says that row was kept. */
        if (rc == 0 && p.failed_now && p.failures == 1 && log)
            cds_logf(log, CDS_LOG_WARN, "cds_results: cannot write to the dataset's database (%s); %lld rows are kept "
                     "in Redis and retried with backoff (jobctl results --check-db)", p.why, (long long)p.left);
    }
    queue_sweep_list_free(ids, n);
    return rc;
}

/* ---- in cds-worker ------------------------------------------------------------ */

char *worker_results_dsn(const char *dsn)
{
    if (!dsn)
        return NULL;
    /* etl_dsn_redacted would name no database: a placeholder. */
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn, &msg);
    PQfreemem(msg);
    if (!opts)
        return NULL;
    PQconninfoFree(opts);
    return etl_dsn_redacted(dsn);
}
