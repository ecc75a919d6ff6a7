/* worker_results_db: each evaluated epoch of a MOP sweep as a row of the
 * cds_results table in the database the dataset came from, so results sit
 * next to the data they were learnt from and can be queried with SQL.
 *
 * The connection string is the one the dataset's ETL plan recorded (without
 * a password: libpq takes it from PGPASSWORD or ~/.pgpass, as for ETL).  The
 * worker keeps one connection open between evaluations (a backend start per
 * row would cost more than the row) and opens another when the DSN changes
 * or the server dropped it; an insert that finds the connection gone
 * reconnects and tries once more.  The table is created once per connection;
 * each row is one INSERT in its own implicit transaction, so a row is either
 * there whole or not at all.  The SQL stays within PostgreSQL 9.4
 * (Greenplum 6): jsonb, CREATE TABLE IF NOT EXISTS. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker_int.h"

static const char create_sql[] =
    "CREATE TABLE IF NOT EXISTS cds_results ("
    " sweep text NOT NULL, model int NOT NULL, epoch int NOT NULL, spec jsonb NOT NULL,"
    " train_rows bigint, train_loss double precision, train_top1 double precision,"
    " valid_rows bigint, valid_loss double precision, valid_top1 double precision, valid_top5 double precision,"
    " recorded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (sweep, model, epoch))";

static const char insert_sql[] =
    "INSERT INTO cds_results (sweep, model, epoch, spec, train_rows, train_loss, train_top1, valid_rows,"
    " valid_loss, valid_top1, valid_top5)"
    " SELECT $1, $2::int, $3::int, $4::jsonb, (m->>'train_rows')::bigint, (m->>'train_loss')::float8,"
    " (m->>'train_top1')::float8, (m->>'valid_rows')::bigint, (m->>'valid_loss')::float8,"
    " (m->>'valid_top1')::float8, (m->>'valid_top5')::float8 FROM (SELECT $5::jsonb AS m) s";

static int exec_ok(PGconn *c, PGresult *r, const char *what, cds_err *err)
{
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        cds_errf(err, "%s: %s", what, PQresultErrorMessage(r));
    PQclear(r);
    (void)c;
    return ok ? 0 : -1;
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
};

worker_results_db *worker_results_db_new(void) { return calloc(1, sizeof(worker_results_db)); }

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

static int open_conn(worker_results_db *db, const char *dsn, cds_err *err)
{
    if (db->c && PQstatus(db->c) == CONNECTION_OK && strcmp(db->dsn, dsn) == 0)
        return 0;
    drop_conn(db);
    db->c = PQconnectdb(dsn);
    if (PQstatus(db->c) != CONNECTION_OK) {
        cds_errf(err, "connecting to the dataset's database: %s", PQerrorMessage(db->c));
        drop_conn(db);
        return -1;
    }
    if (!(db->dsn = strdup(dsn))) {
        drop_conn(db);
        return cds_err_nomem(err, "out of memory connecting to the dataset's database");
    }
    PQsetNoticeProcessor(db->c, quiet, NULL);
    return 0;
}

static int insert_once(worker_results_db *db, const char *const params[5], cds_err *err)
{
    /* Two workers creating the table at once can make one CREATE TABLE IF NOT
     * EXISTS fail (a unique violation in the catalog): the table exists
     * then, so go on to the insert, which says so if it really does not. */
    if (!db->created)
        db->created = exec_ok(db->c, PQexec(db->c, create_sql), "creating cds_results", err) == 0;
    PGresult *r = PQexecParams(db->c, insert_sql, 5, NULL, params, NULL, NULL, 0);
    /* An evaluation run twice (its worker died after the insert) is the
     * same row: keep the first. */
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && state && strcmp(state, "23505") == 0) {
        PQclear(r);
        return 0;
    }
    return exec_ok(db->c, r, "inserting into cds_results", err);
}

int worker_results_db_insert(worker_results_db *db, const char *dsn, const char *sweep, int model, int epoch,
                             const char *spec_json, const char *metrics_json, cds_err *err)
{
    char m[16], e[16];
    snprintf(m, sizeof m, "%d", model);
    snprintf(e, sizeof e, "%d", epoch);
    const char *params[5] = {sweep, m, e, spec_json, metrics_json};
    for (int attempt = 0;; attempt++) {
        if (open_conn(db, dsn ? dsn : "", err) != 0)
            return -1;
        if (insert_once(db, params, err) == 0)
            return 0;
        /* A connection the server closed (restart, idle timeout) is found
         * out only by using it: once more on a fresh one. */
        if (PQstatus(db->c) == CONNECTION_OK || attempt > 0)
            return -1;
        drop_conn(db);
    }
}
