/* cds_results through worker_results_db against the real PostgreSQL and
 * redis-server of scripts/with-services.
 *
 * The writer: the table is created on first use, one connection serves many
 * rows, a row inserted twice stays one, a new row for a (sweep, model,
 * epoch) that is there replaces its values (the epoch trained again), with
 * the time it was recorded, a connection the server terminated between two
 * rows is replaced without losing the second, a database that cannot be
 * reached is a one-line error, one that never answers is given up within
 * the bound, a CREATE TABLE that times out is the error reported (not what
 * the busy connection answers next), a row the database refuses for its
 * data says so, and a DSN keeps no password.  Devices: a row's device and
 * train_device land in their columns (NULL for a row an older worker
 * recorded without them); a table an older worker made without those
 * columns gets them from the first row written through a new connection,
 * its old rows kept; a user who may write that table but not alter it
 * leaves the row unwritten, with an error naming the ALTER TABLE its owner
 * can run, and the row goes in once the owner has.
 *
 * The outbox (rows kept in Redis while their database is away): rows
 * recorded while the database does not exist yet stay in Redis, each failed
 * try backs the database off (the first failure logs one line, the retries
 * none), the backoff follows min(cap, base·2^(n−1))·U[0.5, 1] and holds
 * every drainer off until it passes, a sweep that left the active set is
 * drained all the same, and once the database exists the rows go in, in the
 * order they were recorded, exactly once, with one line saying so; a worker
 * that died between the insert and the removal leaves its row for the next,
 * whose write changes nothing; an outage ends at the first row written after
 * it (a later one starts its own time) and its backlog is reported written
 * once all of it is, whichever pass writes it; rows do not repeat the DSN
 * (the outbox's state holds it) and the next try is only the index score;
 * an epoch recorded again reaches the table with its new values and its
 * recording time; a row that is not JSON and a row the database
 * refuses are set aside (at once, and after max_refusals tries) without
 * holding up the rows behind them; and jobctl results --check-db reports it
 * all, exiting 0, 3 or 4.  The backoff clock is the test's: a zero base, or
 * the index score set by hand; no step waits on wall time but the lapse of a
 * 1 ms claim. */
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cds_util.h"
#include "queue_mop.h"
#include "tap.h"
#include "testutil.h"
#include "worker_results.h"

static PGconn *admin;
static redisContext *raw;
static char prefix[64];
static const char *build_root;

static long long scalar_on(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    long long v = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 ? atoll(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return v;
}

static long long scalar(const char *sql) { return scalar_on(admin, sql); }

static void text_on(PGconn *c, const char *sql, char *out, size_t n)
{
    PGresult *r = PQexec(c, sql);
    snprintf(out, n, "%s", PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "?");
    PQclear(r);
}

/* The backends of this database other than the admin connection. */
static long long others(void)
{
    return scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> "
                  "pg_backend_pid() AND backend_type = 'client backend'");
}

static const char metrics[] = "{\"train_rows\": 100, \"train_loss\": 0.5, \"train_top1\": 0.8, \"valid_rows\": 20,"
                              " \"valid_loss\": 0.6, \"valid_top1\": 0.75, \"valid_top5\": 1.0}";
static const char metrics2[] = "{\"train_rows\": 200, \"train_loss\": 0.3, \"train_top1\": 0.9, \"valid_rows\": 20,"
                               " \"valid_loss\": 0.4, \"valid_top1\": 0.9, \"valid_top5\": 1.0}";
static const char spec[] = "{\"model\": {\"arch\": \"mlp\"}, \"train\": {\"lr\": 0.01}}";

/* The table as the first workers made it, before the device columns. */
#define OLD_TABLE(name)                                                                                         \
    "CREATE TABLE " name " (sweep text NOT NULL, model int NOT NULL, epoch int NOT NULL, spec jsonb NOT NULL,"   \
    " train_rows bigint, train_loss double precision, train_top1 double precision, valid_rows bigint,"          \
    " valid_loss double precision, valid_top1 double precision, valid_top5 double precision,"                   \
    " recorded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (sweep, model, epoch))"

static void test_devices(const char *dsn)
{
    static const char dev_metrics[] = "{\"train_rows\": 100, \"valid_top1\": 0.5, \"device\": \"cuda:1\","
                                      " \"train_device\": \"cpu,cuda:1\"}";
    cds_err err = {0};
    char sql[512], dsn2[256], role[64];
    is_int(scalar("SELECT count(*) FROM cds_results WHERE device IS NULL AND train_device IS NULL"), 6,
           "rows whose metrics name no device (an older worker's) have NULL devices");
    worker_results_db *db = worker_results_db_new(0);
    int rc = worker_results_db_insert(db, dsn, "s2", 0, 1, 0, spec, dev_metrics, &err);
    char got[64];
    text_on(admin, "SELECT device || ' ' || train_device FROM cds_results WHERE sweep = 's2'", got, sizeof got);
    ok(rc == 0 && strcmp(got, "cuda:1 cpu,cuda:1") == 0, "a row's devices land in device and train_device ('%s')%s%s",
       got, rc ? ": " : "", rc ? err.msg : "");
    worker_results_db_free(db);

    /* A table an older worker made: the next connection adds the columns. */
    PQclear(PQexec(admin, "CREATE SCHEMA old"));
    PQclear(PQexec(admin, OLD_TABLE("old.cds_results")));
    PQclear(PQexec(admin, "INSERT INTO old.cds_results (sweep, model, epoch, spec) VALUES ('s0', 0, 1, '{}')"));
    snprintf(dsn2, sizeof dsn2, "%s options='-c search_path=old'", dsn);
    db = worker_results_db_new(0);
    rc = worker_results_db_insert(db, dsn2, "s2", 0, 1, 0, spec, dev_metrics, &err);
    ok(rc == 0, "a row into a table made before the device columns%s%s", rc ? ": " : "", rc ? err.msg : "");
    text_on(admin, "SELECT string_agg(sweep || ' ' || coalesce(device, '-') || ' ' || coalesce(train_device, '-'), "
                   "', ' ORDER BY sweep) FROM old.cds_results", got, sizeof got);
    ok(strcmp(got, "s0 - -, s2 cuda:1 cpu,cuda:1") == 0, "adds them: the new row has its devices, the old one NULL "
       "('%s')", got);
    ok(worker_results_db_insert(db, dsn2, "s2", 1, 1, 0, spec, dev_metrics, &err) == 0 &&
           scalar("SELECT count(*) FROM old.cds_results WHERE device = 'cuda:1'") == 2,
       "and the connection goes on writing rows");
    worker_results_db_free(db);

    /* Its owner is someone else: this user may insert but not alter it. */
    snprintf(role, sizeof role, "cds_writer_%d", (int)getpid());
    snprintf(sql, sizeof sql, "CREATE ROLE %s LOGIN", role);
    PQclear(PQexec(admin, sql));
    PQclear(PQexec(admin, "CREATE SCHEMA theirs"));
    PQclear(PQexec(admin, OLD_TABLE("theirs.cds_results")));
    snprintf(sql, sizeof sql, "GRANT USAGE ON SCHEMA theirs TO %s; GRANT SELECT, INSERT, UPDATE ON theirs.cds_results "
             "TO %s", role, role);
    PQclear(PQexec(admin, sql));
    snprintf(dsn2, sizeof dsn2, "%s user=%s options='-c search_path=theirs'", dsn, role);
    db = worker_results_db_new(0);
    err.msg[0] = '\0';
    rc = worker_results_db_insert(db, dsn2, "s2", 0, 1, 0, spec, dev_metrics, &err);
    ok(rc == -1 && strstr(err.msg, "adding column device to cds_results (if this user may not, the table's owner "
                                   "can: ALTER TABLE cds_results ADD COLUMN device text): ") &&
           strstr(err.msg, "must be owner") && !strchr(err.msg, '\n'),
       "a user who may not alter the table: the row waits (to retry), the error names the fix: %s", err.msg);
    is_int(scalar("SELECT count(*) FROM theirs.cds_results"), 0, "nothing half-written");
    PQclear(PQexec(admin, "ALTER TABLE theirs.cds_results ADD COLUMN device text, ADD COLUMN train_device text"));
    rc = worker_results_db_insert(db, dsn2, "s2", 0, 1, 0, spec, dev_metrics, &err);
    ok(rc == 0 && scalar("SELECT count(*) FROM theirs.cds_results WHERE device = 'cuda:1'") == 1,
       "once its owner has run it, the row goes in%s%s", rc ? ": " : "", rc ? err.msg : "");
    worker_results_db_free(db);
    PQclear(PQexec(admin, "DROP SCHEMA old CASCADE; DROP SCHEMA theirs CASCADE"));
    PQclear(PQexec(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND pid <> pg_backend_pid()"));
    snprintf(sql, sizeof sql, "DROP ROLE %s", role);
    PQclear(PQexec(admin, sql));
}

static void test_writer(const char *dsn)
{
    cds_err err = {0};
    worker_results_db *rdb = worker_results_db_new(0);
    ok(rdb != NULL, "a results writer");
    int first = worker_results_db_insert(rdb, dsn, "s1", 0, 1, 0, spec, metrics, &err);
    ok(first == 0, "first row (creates the table)%s%s", first ? ": " : "", first ? err.msg : "");
    ok(worker_results_db_insert(rdb, dsn, "s1", 0, 2, 0, spec, metrics, &err) == 0 &&
           worker_results_db_insert(rdb, dsn, "s1", 1, 1, 0, spec, metrics, &err) == 0,
       "two more rows");
    is_int(others(), 1, "three rows, one connection kept open");
    ok(worker_results_db_insert(rdb, dsn, "s1", 0, 1, 0, spec, metrics, &err) == 0, "the same (sweep, model, epoch) again is not an error");
    is_int(scalar("SELECT count(*) FROM cds_results"), 3, "and stays one row");
    is_int(scalar("SELECT round(valid_top1 * 100) FROM cds_results WHERE sweep = 's1' AND model = 1 AND epoch = 1"), 75,
           "metrics land in their columns");
    /* The epoch is trained again (jobctl retry S/m --from) and recorded
     * with other metrics, at another time: the new values replace the old. */
    int rc = worker_results_db_insert(rdb, dsn, "s1", 1, 1, 1000000000000, spec, metrics2, &err);
    ok(rc == 0, "a new row for a (sweep, model, epoch) that is there%s%s", rc ? ": " : "", rc ? err.msg : "");
    is_int(scalar("SELECT count(*) * 1000 + round(max(valid_top1) * 100) FROM cds_results WHERE sweep = 's1' "
                  "AND model = 1 AND epoch = 1"),
           1090, "replaces its values: one row, valid_top1 0.9 (count * 1000 + top1 %%)");
    is_int(scalar("SELECT round(extract(epoch FROM recorded_at) * 1000)::bigint + train_rows FROM cds_results "
                  "WHERE sweep = 's1' AND model = 1 AND epoch = 1"),
           1000000000000 + 200, "every column: train_rows 200, recorded_at the time it was recorded (ms)");
    is_int(scalar("SELECT count(*) FROM cds_results"), 3, "still three rows");

    /* The server drops the connection between two evaluations. */
    is_int(scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
                  "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"),
           1, "the writer's backend terminated");
    rc = worker_results_db_insert(rdb, dsn, "s1", 1, 2, 0, spec, metrics, &err);
    ok(rc == 0, "the next row goes through a new connection%s%s", rc ? ": " : "", rc ? err.msg : "");
    is_int(scalar("SELECT count(*) FROM cds_results WHERE sweep = 's1' AND model = 1 AND epoch = 2"), 1,
           "and is there");
    is_int(others(), 1, "one connection again");

    /* Another DSN (another dataset's database) gets its own connection. */
    cds_err e2 = {0};
    ok(worker_results_db_insert(rdb, "host=/nonexistent-dir port=1", "s1", 2, 1, 0, spec, metrics, &e2) == -1 &&
           strstr(e2.msg, "connecting to the dataset's database") && !strchr(e2.msg, '\n'),
       "an unreachable database is a one-line error, to retry: %s", e2.msg);
    ok(worker_results_db_insert(rdb, dsn, "s1", 2, 1, 0, spec, metrics, &err) == 0, "and the right one works after it");
    is_int(scalar("SELECT count(*) FROM cds_results"), 5, "five rows in all");

    /* A row whose data the database refuses would be refused again. */
    e2.msg[0] = '\0';
    rc = worker_results_db_insert(rdb, dsn, "s1", 3, 1, 0, spec, "{\"valid_rows\": \"many\"}", &e2);
    ok(rc == WORKER_RESULTS_REFUSED && strstr(e2.msg, "inserting into cds_results"),
       "a row with a bad value is refused, not to be retried: %s", e2.msg);
    ok(worker_results_db_insert(rdb, dsn, "s1", 3, 1, 0, spec, metrics, &err) == 0,
       "the connection serves the next row after the refusal");

    /* A server that takes the connection but never answers: the try ends
     * at its bound, so a worker's main loop is never held longer. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 4) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &alen) != 0)
        tap_bail("cannot open a silent listening socket");
    char silent[128];
    snprintf(silent, sizeof silent, "host=127.0.0.1 port=%d dbname=x user=x", ntohs(a.sin_port));
    worker_results_db *quick = worker_results_db_new(300);
    int64_t t0 = cds_mono_ms();
    e2.msg[0] = '\0';
    rc = worker_results_db_insert(quick, silent, "s1", 4, 1, 0, spec, metrics, &e2);
    int64_t took = cds_mono_ms() - t0;
    ok(rc == -1 && took >= 300 && took < 5000 && strstr(e2.msg, "timed out"),
       "a database that never answers is given up at the bound (300 ms; took %lld ms): %s", (long long)took, e2.msg);
    close(s);
    worker_results_db_free(rdb);

    /* CREATE TABLE waits on another session creating the same table (in
     * schema hang) past the bound: that time-out is the error, not what
     * the busy connection would answer to the insert after it. */
    PGconn *blocker = PQconnectdb(dsn);
    PQclear(PQexec(blocker, "CREATE SCHEMA hang"));
    PQclear(PQexec(blocker, "BEGIN"));
    PQclear(PQexec(blocker, "CREATE TABLE hang.cds_results (x int)"));
    char hang[256];
    snprintf(hang, sizeof hang, "%s options='-c search_path=hang'", dsn);
    e2.msg[0] = '\0';
    rc = worker_results_db_insert(quick, hang, "s1", 5, 1, 0, spec, metrics, &e2);
    ok(rc == -1 && strstr(e2.msg, "creating cds_results: timed out") && !strstr(e2.msg, "in progress"),
       "a CREATE TABLE that times out is the error reported: %s", e2.msg);
    PQclear(PQexec(blocker, "ROLLBACK"));
    PQfinish(blocker);
    worker_results_db_free(quick);
    PQclear(PQexec(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND pid <> pg_backend_pid()"));

    test_devices(dsn);

    char *d1 = worker_results_dsn("host=db1 port=5432 dbname=sales user=etl password=s3cret");
    char *d2 = worker_results_dsn("postgresql://etl:s3cret@db1:5432/sales");
    char *d3 = worker_results_dsn("host=db1 dbname=sales user=etl");
    ok(d1 && d2 && !strstr(d1, "s3cret") && !strstr(d2, "s3cret") && strstr(d1, "dbname='sales'") &&
           strstr(d2, "host='db1'") && strstr(d2, "user='etl'"),
       "a DSN loses its password before it goes to Redis ('%s', '%s')", d1 ? d1 : "", d2 ? d2 : "");
    char *d4 = worker_results_dsn("");
    PQconninfoOption *o3 = d3 ? PQconninfoParse(d3, NULL) : NULL;
    int same = o3 != NULL;
    for (PQconninfoOption *o = o3; o && o->keyword; o++) {
        const char *want = strcmp(o->keyword, "host") == 0     ? "db1"
                           : strcmp(o->keyword, "dbname") == 0 ? "sales"
                           : strcmp(o->keyword, "user") == 0   ? "etl"
                                                               : NULL;
        same &= want ? o->val && strcmp(o->val, want) == 0 : !o->val || !*o->val;
    }
    PQconninfoFree(o3);
    ok(same && d4 && !*d4 && !worker_results_dsn(NULL),
       "one without a password keeps its settings ('%s'), an empty one stays empty (libpq's defaults)", d3 ? d3 : "");
    ok(!worker_results_dsn("host='db1"), "one libpq cannot parse names no database");
    free(d1);
    free(d2);
    free(d3);
    free(d4);
}

/* ---- the outbox ------------------------------------------------------------- */

/* A command on the raw connection (test_rcmd). */
#define rcmd(...) test_rcmd(raw, __VA_ARGS__)

static long long rint_of(const char *fmt, const char *a, const char *b)
{
    redisReply *r = rcmd(fmt, a, b);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    freeReplyObject(r);
    return v;
}

static void state_field(const char *id, const char *field, char *out, size_t n)
{
    redisReply *r = rcmd("HGET %sresults:outbox:{%s}:state %s", prefix, id, field);
    snprintf(out, n, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
}

static long long outbox_len(const char *id) { return rint_of("LLEN %sresults:outbox:{%s}", prefix, id); }

static void make_due(const char *id)
{
    freeReplyObject(rcmd("ZADD %sresults:outbox 0 %s", prefix, id));
}

static const char *const model_specs[2] = {"{\"model\":\"m0\"}", "{\"model\":\"m1\"}"};

static void create_sweep(queue_conn *q, const char *id)
{
    queue_sweep_def d = {.id = id, .dataset = "mnist", .dataset_version = "v1", .shards = 1, .epochs = 3,
                         .models = 2, .model_specs = model_specs, .spec_json = "{}"};
    cds_err err;
    if (queue_sweep_create(q, &d, NULL, &err) != 0) {
        tap_diag("create %s: %s", id, err.msg);
        tap_bail("cannot create a sweep");
    }
}

/* Trains the next visit of the one-shard sweep (which ends an epoch),
 * evaluates it, and records the result with its row for cds_results, as a
 * worker does; "<m>.<epoch>" of the row into what. */
static void record(queue_conn *q, const char *sweep, const char *dsn, const char *m_json, char *what, size_t n)
{
    queue_mop_lease l, e;
    queue_mop_commit_result cr;
    cds_err err;
    int done = 0, is_best, prev;
    if (queue_mop_lease_model(q, sweep, 0, "trainer", 60000, &l, &done, &err) != 1 ||
        queue_mop_commit(q, sweep, &l, "ckpt/x", NULL, &cr, &err) != 0 || !cr.accepted ||
        queue_mop_take_eval(q, sweep, "evaluator", 60000, &e, &err) != 1)
        tap_bail("cannot train and take an evaluation");
    queue_outbox_row row = {.dsn = dsn};
    if (queue_mop_record_result_row(q, sweep, &e, m_json, 0.5, &row, &is_best, &prev, &err) != 0) {
        tap_diag("record: %s", err.msg);
        tap_bail("cannot record a result");
    }
    snprintf(what, n, "%d.%d", e.model, e.epoch);
}

/* Runs jobctl with args; its stdout and stderr into out; returns its exit
 * status. */
static int jobctl_raw(char *out, size_t n, const char *args)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s/tools/jobctl' --redis '%s' --prefix '%s' %s 2>&1", build_root,
             test_redis_url(), prefix, args);
    FILE *p = popen(cmd, "r");
    size_t got = p ? fread(out, 1, n - 1, p) : 0;
    out[got] = '\0';
    int st = p ? pclose(p) : -1;
    return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The same, its lines joined by '|' (to show in one TAP line). */
static int jobctl(char *out, size_t n, const char *args)
{
    int st = jobctl_raw(out, n, args);
    for (char *c = out; *c; c++)
        if (*c == '\n')
            *c = c[1] ? '|' : '\0';
    return st;
}

/* How many lines of the log hold needle. */
static int log_lines(FILE *f, const char *needle)
{
    char line[2048];
    int n = 0;
    fflush(f);
    rewind(f);
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fseek(f, 0, SEEK_END);
    return n;
}

static json_t *check_db_json(const char *args, int *status)
{
    static char out[65536];
    *status = jobctl_raw(out, sizeof out, args);
    json_t *j = json_loads(out, 0, NULL);
    if (!j)
        tap_diag("jobctl said: %s", out);
    return j;
}

static void test_outbox(queue_conn *q, const char *host, const char *port, const char *user)
{
    char dbname[64], dsn[512], id[QUEUE_OUTBOX_ID_LEN], a[16], b[16], c[16], x[64], sql[512];
    snprintf(dbname, sizeof dbname, "cds_outbox_%d", (int)getpid());
    snprintf(dsn, sizeof dsn, "host=%s port=%s user=%s dbname=%s", host, port, user, dbname);
    queue_outbox_id(dsn, id);
    FILE *logf = tmpfile();
    cds_log log;
    cds_log_init(&log, logf, CDS_LOG_DEBUG, "test");
    worker_results_db *db = worker_results_db_new(0);
    worker_results_opts o;
    worker_results_default_opts(&o, "w1");
    o.base_ms = 0; /* the test's clock: every failed try is due again at once */
    o.pass_ms = 60000;
    worker_results_pass p;
    cds_err err;

    /* The database does not exist yet. */
    create_sweep(q, "ob1");
    record(q, "ob1", dsn, metrics, a, sizeof a);
    is_int(outbox_len(id), 1, "a recorded result leaves its row in the outbox of its database");
    ok(worker_results_drain_due(db, q, &o, &log, &err) == 0 && outbox_len(id) == 1,
       "a drain while the database is missing keeps the row in Redis");
    is_int(log_lines(logf, "cannot write to the dataset's database"), 1, "and logs one WARN line");
    record(q, "ob1", dsn, metrics, b, sizeof b);
    ok(worker_results_drain(db, q, id, &o, &log, &p, &err) == 0 && p.failed_now && p.deferred && p.left == 2 &&
           p.written == 0 && strstr(p.why, "does not exist"),
       "the recorder's try fails too, and says why the rows wait: %s", p.why);
    record(q, "ob1", dsn, metrics, c, sizeof c);
    ok(worker_results_drain_due(db, q, &o, &log, &err) == 0 && outbox_len(id) == 3,
       "three rows kept in Redis, in the order recorded (%s %s %s)", a, b, c);
    state_field(id, "failures", x, sizeof x);
    ok(strcmp(x, "3") == 0 && log_lines(logf, "cannot write to the dataset's database") == 1,
       "three failed tries counted (%s), still one log line", x);

    /* The shared backoff: with a base of 60 s the 4th failure waits
     * min(60 s, 60 s·2^3)·U[0.5, 1], and nobody tries before. */
    worker_results_opts slow = o;
    slow.base_ms = 60000;
    char le[32], nt[32];
    ok(worker_results_drain(db, q, id, &slow, &log, &p, &err) == 0 && p.failed_now && p.failures == 4,
       "a 4th failed try");
    state_field(id, "last_error_ms", le, sizeof le);
    snprintf(nt, sizeof nt, "%lld", rint_of("ZSCORE %sresults:outbox %s", prefix, id));
    long long wait = atoll(nt) - atoll(le);
    ok(wait >= 30000 && wait <= 60000 && rint_of("HEXISTS %sresults:outbox:{%s}:state next_try_ms", prefix, id) == 0,
       "the next try is %lld ms later, in [30 s, 60 s], and the index alone says so", wait);
    ok(worker_results_drain(db, q, id, &o, &log, &p, &err) == 0 && !p.failed_now && p.deferred && p.failures == 4 &&
           p.left == 3,
       "a drainer before that time does not try the database");
    char **due = NULL;
    size_t ndue = 0;
    ok(queue_outbox_due(q, 16, &due, &ndue, &err) == 0 && ndue == 0, "and the outbox is not due");
    queue_sweep_list_free(due, ndue);

    int st;
    json_t *rep = check_db_json("--json results ob1 --check-db", &st);
    json_t *d0 = json_array_get(json_object_get(rep, "databases"), 0);
    ok(st == 3 && json_integer_value(json_object_get(rep, "waiting")) == 3 &&
           json_integer_value(json_object_get(d0, "failures")) == 4 &&
           strstr(json_string_value(json_object_get(d0, "last_error")) ?: "", "does not exist") &&
           json_integer_value(json_object_get(d0, "next_try_ms")) == atoll(nt) &&
           json_is_integer(json_object_get(rep, "oldest_ms")) && strcmp(json_string_value(json_object_get(d0, "dsn")) ?: "", dsn) == 0,
       "jobctl results ob1 --check-db --json: 3 rows wait, 4 failures, the last error and next try; exit 3 (%d)", st);
    json_decref(rep);
    char out[8192];
    st = jobctl(out, sizeof out, "results ob1 --check-db");
    ok(st == 3 && strstr(out, "3 cds_results rows of sweep ob1 wait") && strstr(out, "next try in"),
       "and as text (exit %d): %s", st, out);

    /* In cds-worker: the evaluation just recorded makes the next results
     * tick run at once; its row stays in Redis (the database backs off), and
     * one WARN says so; a tick after that logs nothing. */
    worker_cfg wcfg = {0};
    snprintf(wcfg.id, sizeof wcfg.id, "w3");
    worker wk = {.cfg = &wcfg, .log = log, .q = q};
    int64_t next_tick = cds_mono_ms() + 3600000;
    worker_results_recorded(&wk, "ob1", 1, 2, dsn);
    worker_results_tick(&wk, &next_tick);
    ok(!wk.results_row.pending && next_tick < cds_mono_ms() + 5000 &&
           log_lines(logf, "sweep ob1 model 1 epoch 2: not written to cds_results yet") == 1 &&
           log_lines(logf, "kept in Redis (3 rows wait") == 1 && outbox_len(id) == 3,
       "a tick runs at once after a recorded evaluation and logs one WARN: its row is kept in Redis");
    worker_results_tick(&wk, &next_tick);
    wk.results_row.pending = 0;
    next_tick = 0;
    worker_results_tick(&wk, &next_tick);
    ok(log_lines(logf, "not written to cds_results yet") == 1 && log_lines(logf, "cds_results") == 2,
       "later ticks while the database backs off log nothing");
    worker_results_db_free(wk.results_db);

    /* The sweep finishes (cancelled: it leaves the active set); its rows
     * are still drained. */
    int reaped, evals;
    char **act = NULL;
    size_t nact = 0;
    queue_sweep_set_state(q, "ob1", "cancelled", &err);
    queue_mop_reap(q, "ob1", &reaped, &evals, &err);
    ok(queue_sweep_list_active(q, &act, &nact, &err) == 0 && nact == 0, "sweep ob1 left the active set");
    queue_sweep_list_free(act, nact);

    /* The database comes; the test moves the backoff clock on. */
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", dbname);
    PGconn *pg = PQconnectdb("dbname=postgres");
    PQclear(PQexec(pg, sql));
    PQfinish(pg);
    make_due(id);
    ok(worker_results_drain_due(db, q, &o, &log, &err) == 0 && outbox_len(id) == 0, "the rows are drained");
    snprintf(sql, sizeof sql, "dbname=%s", dbname);
    PGconn *odb = PQconnectdb(sql);
    char order[256], want[64];
    text_on(odb, "SELECT string_agg(model || '.' || epoch, ' ' ORDER BY xmin::text::bigint) FROM cds_results "
                 "WHERE sweep = 'ob1'", order, sizeof order);
    snprintf(want, sizeof want, "%s %s %s", a, b, c);
    ok(strcmp(order, want) == 0, "written once each, in the order recorded: %s", order);
    ok(log_lines(logf, "every row kept in Redis while the database failed is written") == 1,
       "one INFO line says the backlog is written");
    ok(rint_of("EXISTS %sresults:outbox:{%s}:state", prefix, id) == 0 &&
           rint_of("ZSCORE %sresults:outbox %s", prefix, id) == -1,
       "the outbox's state and index entry are gone");
    st = jobctl(out, sizeof out, "results ob1 --check-db");
    ok(st == 0 && strstr(out, "no cds_results rows of sweep ob1 wait"), "jobctl results ob1 --check-db: exit 0: %s",
       out);

    /* An outage ends with the first row written after it; rows still kept
     * then are reported written once they all are, and a later outage
     * starts at its own first failure.  The test sets the state of an
     * outage that began long ago (1000 ms) by hand. */
    create_sweep(q, "ob3");
    record(q, "ob3", dsn, metrics, a, sizeof a);
    record(q, "ob3", dsn, metrics, b, sizeof b);
    int infos = log_lines(logf, "every row kept in Redis while the database failed is written");
    for (int outage = 0; outage < 2; outage++) {
        freeReplyObject(rcmd("HSET %sresults:outbox:{%s}:state failing_since_ms 1000 failures 2", prefix, id));
        queue_outbox_claim oc = {.worker = "w2", .claim_ms = 60000};
        snprintf(oc.id, sizeof oc.id, "%s", id);
        queue_outbox_head oh;
        char *head = NULL, *next = NULL;
        if (queue_outbox_take(q, &oc, &oh, &err) == 0 && oh.state == QUEUE_OUTBOX_ROW)
            head = oh.row, oh.row = NULL;
        queue_outbox_head_clear(&oh);
        int done = head && queue_outbox_done(q, &oc, head, &oh, &err) == 0 && oh.state == QUEUE_OUTBOX_ROW;
        state_field(id, "failing_since_ms", x, sizeof x);
        ok(done && oh.failing_since_ms == -1 && oh.failures == 0 && !*x,
           "outage %d: the first row written after failures ends it", outage + 1);
        next = oh.row, oh.row = NULL;
        queue_outbox_head_clear(&oh);
        if (outage == 0) {
            queue_outbox_release(q, &oc, &oh, &err);
            queue_outbox_head_clear(&oh);
            ok(worker_results_drain(db, q, id, &o, &log, &p, &err) == 0 && p.written == 1 && p.left == 0 &&
                   log_lines(logf, "every row kept in Redis while the database failed is written") == infos + 1,
               "the rest is written by another pass, and one INFO line says the backlog is written");
            record(q, "ob3", dsn, metrics, a, sizeof a);
            record(q, "ob3", dsn, metrics, b, sizeof b);
        } else {
            queue_outbox_failure f = {.why = "down again", .kind = "retry", .factor = 1, .max_refusals = 3};
            ok(next && queue_outbox_fail(q, &oc, next, &f, &oh, &err) == 0 && oh.state == QUEUE_OUTBOX_LATER,
               "the next row fails: another outage");
            queue_outbox_head_clear(&oh);
            state_field(id, "failing_since_ms", x, sizeof x);
            state_field(id, "last_error_ms", le, sizeof le);
            ok(*x && strcmp(x, le) == 0, "it starts at its first failure (%s), not at the first outage (1000)", x);
            /* Epoch <a> is trained again (jobctl retry --from) and recorded
             * again: another row for its key, recorded at 10^12 ms. */
            json_t *again = json_loads(head, 0, NULL);
            json_object_set_new(again, "metrics", json_loads(metrics2, 0, NULL));
            json_object_set_new(again, "recorded_ms", json_integer(1000000000000));
            char *text = json_dumps(again, JSON_COMPACT);
            freeReplyObject(rcmd("RPUSH %sresults:outbox:{%s} %s", prefix, id, text ? text : ""));
            free(text);
            json_decref(again);
            make_due(id);
            ok(worker_results_drain(db, q, id, &o, &log, &p, &err) == 0 && p.written == 2 && p.left == 0 &&
                   log_lines(logf, "every row kept in Redis while the database failed is written") == infos + 2,
               "its rows are written, with one INFO line");
            snprintf(sql, sizeof sql, "SELECT count(*) * 1000 + round(max(valid_top1) * 100) FROM cds_results "
                     "WHERE sweep = 'ob3' AND model || '.' || epoch = '%s'", a);
            is_int(scalar_on(odb, sql), 1090,
                   "the epoch recorded again has its new values, once (count * 1000 + top1 %%)");
            snprintf(sql, sizeof sql, "SELECT round(extract(epoch FROM recorded_at) * 1000)::bigint FROM cds_results "
                     "WHERE sweep = 'ob3' AND model || '.' || epoch = '%s'", a);
            is_int(scalar_on(odb, sql), 1000000000000, "and the time it was recorded, not the time it was written");
        }
        free(head);
        free(next);
    }

    /* A worker inserts the head row and dies before removing it. */
    create_sweep(q, "ob2");
    record(q, "ob2", dsn, metrics, a, sizeof a);
    queue_outbox_claim dead = {.worker = "dead", .claim_ms = 60000};
    snprintf(dead.id, sizeof dead.id, "%s", id);
    queue_outbox_head h;
    ok(queue_outbox_take(q, &dead, &h, &err) == 0 && h.state == QUEUE_OUTBOX_ROW && h.row, "a worker claims the row");
    json_t *row = json_loads(h.row ? h.row : "", 0, NULL);
    ok(row && !json_object_get(row, "dsn") && h.dsn && strcmp(h.dsn, dsn) == 0,
       "the row does not repeat the DSN: the outbox's state holds it (%s)", h.dsn ? h.dsn : "none");
    char *rs = json_dumps(json_object_get(row, "spec"), JSON_COMPACT);
    char *rm = json_dumps(json_object_get(row, "metrics"), JSON_COMPACT);
    worker_results_db *dying = worker_results_db_new(0);
    ok(rs && rm &&
           worker_results_db_insert(dying, dsn, "ob2", (int)json_integer_value(json_object_get(row, "model")),
                                    (int)json_integer_value(json_object_get(row, "epoch")),
                                    json_integer_value(json_object_get(row, "recorded_ms")), rs, rm, &err) == 0,
       "inserts it, and dies");
    worker_results_db_free(dying);
    free(rs);
    free(rm);
    json_decref(row);
    queue_outbox_head_clear(&h);
    ok(worker_results_drain(db, q, id, &o, &log, &p, &err) == 0 && p.written == 0 && p.left == 1 && !p.deferred &&
           outbox_len(id) == 1,
       "while its claim holds, nobody else writes the outbox");
    freeReplyObject(rcmd("HSET %sresults:outbox:{%s}:state claim_deadline 0", prefix, id));
    ok(worker_results_drain(db, q, id, &o, &log, &p, &err) == 0 && p.written == 1 && p.left == 0 &&
           outbox_len(id) == 0,
       "once it lapses the next worker writes the row again and removes it");
    snprintf(sql, sizeof sql, "SELECT count(*) FROM cds_results WHERE sweep = 'ob2' AND model || '.' || epoch = '%s'", a);
    is_int(scalar_on(odb, sql), 1, "the row is in the table once");

    /* A row that is not JSON, then a good one. */
    freeReplyObject(rcmd("RPUSH %sresults:outbox:{%s} %s", prefix, id, "{not json"));
    make_due(id);
    record(q, "ob2", dsn, metrics, b, sizeof b);
    ok(worker_results_drain(db, q, id, &o, &log, &p, &err) == 0 && p.set_aside == 1 && p.written == 1 && p.left == 0,
       "an unreadable row is set aside at once and the row behind it is written");
    /* A row the database refuses (a bad value), then a good one. */
    record(q, "ob2", dsn, "{\"valid_rows\": \"many\"}", c, sizeof c);
    char d[16];
    record(q, "ob2", dsn, metrics, d, sizeof d);
    int tries = 0;
    do {
        tries++;
        if (worker_results_drain(db, q, id, &o, &log, &p, &err) != 0)
            break;
    } while (p.set_aside == 0 && tries < 10);
    ok(tries == 3 && p.written == 1 && p.left == 0, "a refused row is set aside on its 3rd try, then the next is "
                                                   "written (tries %d)", tries);
    text_on(odb, "SELECT string_agg(model || '.' || epoch, ' ' ORDER BY xmin::text::bigint) FROM cds_results "
                 "WHERE sweep = 'ob2'", order, sizeof order);
    snprintf(want, sizeof want, "%s %s %s", a, b, d);
    ok(strcmp(order, want) == 0, "sweep ob2's good rows are written in order: %s", order);
    ok(log_lines(logf, "set aside, not written") == 2, "a WARN line for each row set aside");

    rep = check_db_json("--json results --check-db", &st);
    json_t *aside = json_object_get(rep, "aside");
    json_t *refused = json_array_get(aside, 1);
    ok(st == 4 && json_integer_value(json_object_get(rep, "set_aside")) == 2 &&
           json_integer_value(json_object_get(rep, "waiting")) == 0 &&
           strstr(json_string_value(json_object_get(json_array_get(aside, 0), "error")) ?: "", "not JSON") &&
           json_integer_value(json_object_get(refused, "attempts")) == 3 &&
           strstr(json_string_value(json_object_get(refused, "error")) ?: "", "invalid input syntax"),
       "jobctl results --check-db (every sweep): both rows set aside, with the reasons; exit 4 (%d)", st);
    json_decref(rep);
    st = jobctl(out, sizeof out, "results ob2 --check-db");
    snprintf(want, sizeof want, "sweep ob2 model %.*s epoch", (int)strcspn(c, "."), c);
    ok(st == 4 && strstr(out, "1 cds_results rows of sweep ob2 set aside") && strstr(out, want),
       "for sweep ob2, its refused row (exit %d): %s", st, out);
    st = jobctl(out, sizeof out, "results ob1 --check-db");
    ok(st == 0, "sweep ob1 has none (exit %d)", st);
    st = jobctl(out, sizeof out, "results nosuch --check-db");
    ok(st == 1 && strstr(out, "nosuch"), "an unknown sweep is exit 1: %s", out);

    worker_results_db_free(db);
    fclose(logf);
    PQfinish(odb);
    pg = PQconnectdb("dbname=postgres");
    snprintf(sql, sizeof sql, "DROP DATABASE %s", dbname);
    PQclear(PQexec(pg, sql));
    PQfinish(pg);
}

int main(int argc, char **argv)
{
    if (!getenv("PGHOST"))
        tap_skip_all("no PostgreSQL: run through scripts/with-services");
    if (argc < 2)
        tap_bail("usage: test_results_db BUILD_ROOT (meson passes it)");
    build_root = argv[1];
    char db[64];
    snprintf(db, sizeof db, "cds_results_%d", (int)getpid());
    admin = PQconnectdb("");
    if (PQstatus(admin) != CONNECTION_OK)
        tap_bail(PQerrorMessage(admin));
    char sql[256];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", db);
    PQclear(PQexec(admin, sql));
    PQfinish(admin);
    char dsn[128];
    snprintf(dsn, sizeof dsn, "dbname=%s", db);
    admin = PQconnectdb(dsn);
    if (PQstatus(admin) != CONNECTION_OK)
        tap_bail(PQerrorMessage(admin));

    test_writer(dsn);

    queue_conn *q = test_connect("results-db", prefix, sizeof prefix);
    raw = test_raw_connect();
    test_outbox(q, PQhost(admin), PQport(admin), PQuser(admin));
    redisFree(raw);
    queue_close(q);

    PQfinish(admin);
    admin = PQconnectdb("");
    snprintf(sql, sizeof sql, "DROP DATABASE %s", db);
    PQclear(PQexec(admin, sql));
    PQfinish(admin);
    return tap_done();
}
