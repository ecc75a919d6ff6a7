/* cds_results through worker_results_db against the real PostgreSQL of
 * scripts/with-services: the table is created on first use, one connection
 * serves many rows, a row inserted twice stays one, a connection the server
 * terminated between two rows is replaced without losing the second, and a
 * database that cannot be reached is a one-line error. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"
#include "worker_int.h"

static PGconn *admin;

static long long scalar(const char *sql)
{
    PGresult *r = PQexec(admin, sql);
    long long v = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 ? atoll(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return v;
}

/* The backends of this database other than the admin connection. */
static long long others(void)
{
    return scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> "
                  "pg_backend_pid() AND backend_type = 'client backend'");
}

static const char metrics[] = "{\"train_rows\": 100, \"train_loss\": 0.5, \"train_top1\": 0.8, \"valid_rows\": 20,"
                              " \"valid_loss\": 0.6, \"valid_top1\": 0.75, \"valid_top5\": 1.0}";
static const char spec[] = "{\"model\": {\"arch\": \"mlp\"}, \"train\": {\"lr\": 0.01}}";

int main(void)
{
    if (!getenv("PGHOST"))
        tap_skip_all("no PostgreSQL: run through scripts/with-services");
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

    cds_err err = {0};
    worker_results_db *rdb = worker_results_db_new();
    ok(rdb != NULL, "a results writer");
    int first = worker_results_db_insert(rdb, dsn, "s1", 0, 1, spec, metrics, &err);
    ok(first == 0, "first row (creates the table)%s%s", first ? ": " : "", first ? err.msg : "");
    ok(worker_results_db_insert(rdb, dsn, "s1", 0, 2, spec, metrics, &err) == 0 &&
           worker_results_db_insert(rdb, dsn, "s1", 1, 1, spec, metrics, &err) == 0,
       "two more rows");
    is_int(others(), 1, "three rows, one connection kept open");
    ok(worker_results_db_insert(rdb, dsn, "s1", 0, 1, spec, metrics, &err) == 0, "the same (sweep, model, epoch) again is not an error");
    is_int(scalar("SELECT count(*) FROM cds_results"), 3, "and stays one row");
    is_int(scalar("SELECT round(valid_top1 * 100) FROM cds_results WHERE sweep = 's1' AND model = 1 AND epoch = 1"), 75,
           "metrics land in their columns");

    /* The server drops the connection between two evaluations. */
    is_int(scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
                  "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"),
           1, "the writer's backend terminated");
    int rc = worker_results_db_insert(rdb, dsn, "s1", 1, 2, spec, metrics, &err);
    ok(rc == 0, "the next row goes through a new connection%s%s", rc ? ": " : "", rc ? err.msg : "");
    is_int(scalar("SELECT count(*) FROM cds_results WHERE sweep = 's1' AND model = 1 AND epoch = 2"), 1,
           "and is there");
    is_int(others(), 1, "one connection again");

    /* Another DSN (another dataset's database) gets its own connection. */
    cds_err e2 = {0};
    ok(worker_results_db_insert(rdb, "host=/nonexistent-dir port=1", "s1", 2, 1, spec, metrics, &e2) != 0 &&
           strstr(e2.msg, "connecting to the dataset's database") && !strchr(e2.msg, '\n'),
       "an unreachable database is a one-line error: %s", e2.msg);
    ok(worker_results_db_insert(rdb, dsn, "s1", 2, 1, spec, metrics, &err) == 0, "and the right one works after it");
    is_int(scalar("SELECT count(*) FROM cds_results"), 5, "five rows in all");
    worker_results_db_free(rdb);

    PQfinish(admin);
    admin = PQconnectdb("");
    snprintf(sql, sizeof sql, "DROP DATABASE %s", db);
    PQclear(PQexec(admin, sql));
    PQfinish(admin);
    return tap_done();
}
