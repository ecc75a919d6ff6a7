/* test_harness_pg: the PostgreSQL that scripts/with-services starts is usable.
 *
 * The ETL tests will need a real server they can create databases in and COPY
 * into.  This test checks exactly that through the PG* environment the harness
 * exports (PGHOST, PGPORT, PGUSER, PGDATABASE), so that a broken harness fails
 * here, with a clear message, rather than inside a more complicated test:
 * connect, check the server is PostgreSQL 15 or later, create a scratch
 * database named after our pid, create a table, COPY FROM STDIN 1000 rows,
 * count them, and drop the database. */

#include <libpq-fe.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tap.h"

#define NROWS 1000

/* Runs one statement that returns no rows; prints the server's error. */
static int exec_ok(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    int good = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!good)
        tap_diag("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
    return good;
}

/* Runs a query returning one row and one bigint column; -1 on error. */
static long long query_int(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    long long v = -1;
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    else
        tap_diag("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
    return v;
}

/* Loads NROWS rows with COPY FROM STDIN in text format, several rows per
 * PQputCopyData call.  Returns the number of rows the server says it copied. */
static long long copy_rows(PGconn *conn)
{
    PGresult *res = PQexec(conn, "COPY t (id, name, x) FROM STDIN");
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        tap_diag("COPY: %s", PQresultErrorMessage(res));
        PQclear(res);
        return -1;
    }
    PQclear(res);

    char buf[8192];
    size_t len = 0;
    int sent = 1;
    for (int i = 1; i <= NROWS && sent; i++) {
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%d\trow-%d\t%d.5\n", i, i, i);
        if (sizeof buf - len < 64 || i == NROWS) {
            sent = PQputCopyData(conn, buf, (int)len) == 1;
            len = 0;
        }
    }
    if (PQputCopyEnd(conn, sent ? NULL : "client failed to send data") != 1) {
        tap_diag("PQputCopyEnd: %s", PQerrorMessage(conn));
        return -1;
    }
    long long copied = -1;
    while ((res = PQgetResult(conn)) != NULL) {
        if (PQresultStatus(res) == PGRES_COMMAND_OK)
            copied = strtoll(PQcmdTuples(res), NULL, 10);
        else
            tap_diag("COPY: %s", PQresultErrorMessage(res));
        PQclear(res);
    }
    return copied;
}

int main(void)
{
    if (getenv("PGHOST") == NULL && getenv("PGPORT") == NULL)
        tap_skip_all("PGHOST/PGPORT not set: run under scripts/with-services");

    PGconn *admin = PQconnectdb("");
    if (PQstatus(admin) != CONNECTION_OK) {
        char why[600];
        snprintf(why, sizeof why, "cannot connect to PostgreSQL (PGHOST=%s PGPORT=%s): %s",
                 getenv("PGHOST") ? getenv("PGHOST") : "", getenv("PGPORT") ? getenv("PGPORT") : "",
                 PQerrorMessage(admin));
        why[strcspn(why, "\n")] = '\0';
        PQfinish(admin);
        tap_bail(why);
    }
    ok(1, "connected to PostgreSQL through the PG* environment");
    ok(PQserverVersion(admin) >= 150000, "server_version_num %d >= 150000", PQserverVersion(admin));

    char dbname[64];
    snprintf(dbname, sizeof dbname, "cds_test_harness_%ld", (long)getpid());
    char *qdb = PQescapeIdentifier(admin, dbname, strlen(dbname));
    if (qdb == NULL) {
        PQfinish(admin);
        tap_bail("PQescapeIdentifier failed");
    }
    char sql[256];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", qdb);
    exec_ok(admin, sql); /* a leftover from a crashed run with the same pid */
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", qdb);
    int created = exec_ok(admin, sql);
    ok(created, "created scratch database %s", dbname);

    if (created) {
        const char *keys[] = {"dbname", NULL};
        const char *vals[] = {dbname, NULL};
        PGconn *conn = PQconnectdbParams(keys, vals, 0);
        ok(PQstatus(conn) == CONNECTION_OK, "connected to %s", dbname);
        if (PQstatus(conn) != CONNECTION_OK)
            tap_diag("%s", PQerrorMessage(conn));
        ok(exec_ok(conn, "CREATE TABLE t (id integer PRIMARY KEY, name text NOT NULL, "
                         "x double precision NOT NULL)"),
           "created table t");
        is_int(copy_rows(conn), NROWS, "COPY FROM STDIN reports %d rows", NROWS);
        is_int(query_int(conn, "SELECT count(*) FROM t"), NROWS, "count(*) is %d", NROWS);
        is_int(query_int(conn, "SELECT sum(id) FROM t WHERE name = 'row-' || id AND x = id + 0.5"),
               (long long)NROWS * (NROWS + 1) / 2, "every row arrived intact");
        PQfinish(conn);

        snprintf(sql, sizeof sql, "DROP DATABASE %s WITH (FORCE)", qdb);
        ok(exec_ok(admin, sql), "dropped %s", dbname);
        snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_database WHERE datname = '%s'", dbname);
        is_int(query_int(admin, sql), 0, "%s is gone", dbname);
    }

    PQfreemem(qdb);
    PQfinish(admin);
    return tap_done();
}
