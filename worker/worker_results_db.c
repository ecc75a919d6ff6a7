/* worker_results_db: each evaluated epoch of a MOP sweep as a row of the
 * cds_results table in the database the dataset came from, so results sit
 * next to the data they were learnt from and can be queried with SQL.
 *
 * The connection string is the one the dataset's ETL plan recorded (without
 * a password: libpq takes it from PGPASSWORD or ~/.pgpass, as for ETL).  The
 * table is created on first use; each row is one INSERT in its own implicit
 * transaction, so a row is either there whole or not at all.  The SQL stays
 * within PostgreSQL 9.4 (Greenplum 6): jsonb, CREATE TABLE IF NOT EXISTS. */
#include <libpq-fe.h>
#include <stdio.h>
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

int worker_results_db_insert(const char *dsn, const char *sweep, int model, int epoch, const char *spec_json,
                             const char *metrics_json, cds_err *err)
{
    PGconn *c = PQconnectdb(dsn ? dsn : "");
    if (PQstatus(c) != CONNECTION_OK) {
        cds_errf(err, "connecting to the dataset's database: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    PQsetNoticeProcessor(c, quiet, NULL);
    char m[16], e[16];
    snprintf(m, sizeof m, "%d", model);
    snprintf(e, sizeof e, "%d", epoch);
    const char *params[5] = {sweep, m, e, spec_json, metrics_json};
    /* Two workers creating the table at once can make one CREATE TABLE IF NOT
     * EXISTS fail (a unique violation in the catalog): the table exists
     * then, so go on to the insert, which says so if it really does not. */
    exec_ok(c, PQexec(c, create_sql), "creating cds_results", err);
    int rc = 0;
    {
        PGresult *r = PQexecParams(c, insert_sql, 5, NULL, params, NULL, NULL, 0);
        /* An evaluation run twice (its worker died after the insert) is the
         * same row: keep the first. */
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (PQresultStatus(r) != PGRES_COMMAND_OK && state && strcmp(state, "23505") == 0) {
            PQclear(r);
        } else {
            rc = exec_ok(c, r, "inserting into cds_results", err);
        }
    }
    PQfinish(c);
    return rc;
}
