/* etl_pgcopy: see etl_pgcopy.h.  A COPY buffer holds one chunk plus the largest
 * row, so a row is always appended whole and flushed after it: the buffer
 * never needs bounds checks per field. */
#include "etl_pgcopy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void etl_pg_one_line(const char *m, char *out, size_t outsz)
{
    size_t n = 0;
    int space = 0;
    for (; *m && n + 1 < outsz; m++) {
        if (*m == ' ' || *m == '\t' || *m == '\n' || *m == '\r') {
            space = n > 0;
            continue;
        }
        if (space && n + 2 < outsz)
            out[n++] = ' ';
        space = 0;
        out[n++] = *m;
    }
    out[n] = '\0';
}

int etl_pg_fail(PGconn *c, PGresult *r, const char *what, cds_err *err)
{
    const char *m = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char msg[400];
    etl_pg_one_line(m ? m : PQerrorMessage(c), msg, sizeof msg);
    return cds_errf(err, "%s: %s", what, msg);
}

int etl_pg_exec(PGconn *c, const char *sql, const char *what, cds_err *err)
{
    PGresult *r = PQexec(c, sql);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : etl_pg_fail(c, r, what, err);
    PQclear(r);
    return rc;
}

PGconn *etl_pg_connect(const char *dsn, const char *prog, cds_err *err)
{
    const char *keys[] = {"dbname", "fallback_application_name", NULL};
    const char *vals[] = {dsn ? dsn : "", prog, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        char msg[400];
        etl_pg_one_line(c ? PQerrorMessage(c) : "out of memory", msg, sizeof msg);
        cds_errf(err, "cannot connect to PostgreSQL (host %s, port %s, database %s): %s; set PGHOST, PGPORT, PGDATABASE or --dsn, and the password in PGPASSWORD or ~/.pgpass",
                 c && PQhost(c) ? PQhost(c) : "?", c && PQport(c) ? PQport(c) : "?", c && PQdb(c) ? PQdb(c) : "?",
                 msg);
        PQfinish(c);
        return NULL;
    }
    PGresult *r = PQexec(c, "SET client_min_messages = warning");
    PQclear(r);
    return c;
}

int etl_pg_table_exists(PGconn *c, const char *quoted, cds_err *err)
{
    const char *params[] = {quoted};
    PGresult *r = PQexecParams(c, "SELECT to_regclass($1) IS NOT NULL", 1, NULL, params, NULL, NULL, 0);
    int rc = PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0)[0] == 't'
                                                  : etl_pg_fail(c, r, "checking for the table", err);
    PQclear(r);
    return rc;
}

void etl_copy_put16(etl_copybuf *b, int v)
{
    b->buf[b->len++] = (uint8_t)((unsigned)v >> 8);
    b->buf[b->len++] = (uint8_t)v;
}

void etl_copy_put32(etl_copybuf *b, uint32_t v)
{
    for (int s = 24; s >= 0; s -= 8)
        b->buf[b->len++] = (uint8_t)(v >> s);
}

void etl_copy_put64(etl_copybuf *b, uint64_t v)
{
    etl_copy_put32(b, (uint32_t)(v >> 32));
    etl_copy_put32(b, (uint32_t)v);
}

void etl_copy_put_header(etl_copybuf *b)
{
    static const uint8_t sig[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0};
    memcpy(b->buf + b->len, sig, sizeof sig);
    b->len += sizeof sig;
    etl_copy_put32(b, 0); /* flags */
    etl_copy_put32(b, 0); /* header extension */
}

int etl_copy_flush(etl_copybuf *b, cds_err *err)
{
    if (b->len > 0 && PQputCopyData(b->c, (const char *)b->buf, (int)b->len) != 1)
        return etl_pg_fail(b->c, NULL, "sending COPY data", err);
    b->len = 0;
    return 0;
}

int etl_copy_row_end(etl_copybuf *b, cds_err *err)
{
    return b->len >= b->chunk ? etl_copy_flush(b, err) : 0;
}

int etl_copy_end(etl_copybuf *b, int rc, const char *stop, cds_err *err)
{
    if (rc == 0) {
        etl_copy_put16(b, -1);
        rc = etl_copy_flush(b, err);
    }
    if (PQputCopyEnd(b->c, rc == 0 ? NULL : stop) != 1 && rc == 0)
        rc = etl_pg_fail(b->c, NULL, "ending COPY", err);
    PGresult *r;
    while ((r = PQgetResult(b->c)) != NULL) {
        if (rc == 0 && PQresultStatus(r) != PGRES_COMMAND_OK)
            rc = etl_pg_fail(b->c, r, "COPY", err);
        PQclear(r);
    }
    return rc;
}

/* COPY ... FROM STDIN started: every row through one buffer, then the end. */
static int copy_all_rows(PGconn *c, const etl_pg_table_load *l, cds_err *err)
{
    etl_copybuf b = {c, malloc(l->chunk + l->row_max + 32), 0, l->chunk};
    int rc = b.buf ? 0 : cds_err_nomem(err, "out of memory for the COPY buffer");
    if (rc == 0) {
        etl_copy_put_header(&b);
        rc = l->rows(&b, l->ctx, err);
    }
    rc = etl_copy_end(&b, rc, l->stop, err);
    free(b.buf);
    return rc;
}

/* Runs one statement made from fmt and the quoted name q. */
static int exec_q(PGconn *c, const char *fmt, const char *q, const char *arg, const char *what, cds_err *err)
{
    size_t n = strlen(fmt) + strlen(q) + strlen(arg) + 1;
    char *sql = malloc(n);
    if (!sql)
        return cds_err_nomem(err, "out of memory");
    snprintf(sql, n, fmt, q, arg);
    int rc = etl_pg_exec(c, sql, what, err);
    free(sql);
    return rc;
}

static int start_copy(PGconn *c, const char *q, const char *columns, cds_err *err)
{
    size_t n = strlen(q) + strlen(columns) + 64;
    char *sql = malloc(n);
    if (!sql)
        return cds_err_nomem(err, "out of memory");
    snprintf(sql, n, "COPY %s %s FROM STDIN (FORMAT binary)", q, columns);
    PGresult *r = PQexec(c, sql);
    int rc = PQresultStatus(r) == PGRES_COPY_IN ? 0 : etl_pg_fail(c, r, "starting COPY", err);
    PQclear(r);
    free(sql);
    return rc;
}

int etl_pg_load_table(PGconn *c, const etl_pg_table_load *l, cds_err *err)
{
    char *q = PQescapeIdentifier(c, l->table, strlen(l->table));
    if (!q)
        return etl_pg_fail(c, NULL, "quoting the table name", err);
    int rc = etl_pg_exec(c, "BEGIN", "BEGIN", err);
    if (rc == 0 && l->replace)
        rc = exec_q(c, "DROP TABLE IF EXISTS %s%s", q, "", "dropping the old table", err);
    if (rc == 0)
        rc = exec_q(c, "CREATE TABLE %s %s", q, l->columns, "creating the table", err);
    if (rc == 0)
        rc = start_copy(c, q, l->copy_columns, err);
    if (rc == 0)
        rc = copy_all_rows(c, l, err);
    if (rc == 0)
        rc = exec_q(c, "ALTER TABLE %s ADD PRIMARY KEY (id)%s", q, "", "adding the primary key", err);
    if (rc == 0)
        rc = etl_pg_exec(c, "COMMIT", "COMMIT", err);
    if (rc != 0 && PQtransactionStatus(c) != PQTRANS_IDLE) {
        PGresult *r = PQexec(c, "ROLLBACK");
        PQclear(r);
        cds_err_wrap(err, "table %s (nothing was kept)", l->table);
    }
    PQfreemem(q);
    return rc;
}
