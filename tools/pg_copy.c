/* pg_copy: see pg_copy.h. */
#include "pg_copy.h"

#include <stdio.h>
#include <string.h>

void pg_one_line(const char *m, char *out, size_t outsz)
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

int pg_fail(PGconn *c, PGresult *r, const char *what, cds_err *err)
{
    const char *m = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char msg[400];
    pg_one_line(m ? m : PQerrorMessage(c), msg, sizeof msg);
    return cds_errf(err, "%s: %s", what, msg);
}

int pg_exec(PGconn *c, const char *sql, const char *what, cds_err *err)
{
    PGresult *r = PQexec(c, sql);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : pg_fail(c, r, what, err);
    PQclear(r);
    return rc;
}

PGconn *pg_connect(const char *dsn, const char *prog, cds_err *err)
{
    const char *keys[] = {"dbname", "fallback_application_name", NULL};
    const char *vals[] = {dsn ? dsn : "", prog, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        char msg[400];
        pg_one_line(c ? PQerrorMessage(c) : "out of memory", msg, sizeof msg);
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

int pg_table_exists(PGconn *c, const char *quoted, cds_err *err)
{
    const char *params[] = {quoted};
    PGresult *r = PQexecParams(c, "SELECT to_regclass($1) IS NOT NULL", 1, NULL, params, NULL, NULL, 0);
    int rc = PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0)[0] == 't'
                                                  : pg_fail(c, r, "checking for the table", err);
    PQclear(r);
    return rc;
}

void copy_put16(copybuf *b, int v)
{
    b->buf[b->len++] = (uint8_t)((unsigned)v >> 8);
    b->buf[b->len++] = (uint8_t)v;
}

void copy_put32(copybuf *b, uint32_t v)
{
    for (int s = 24; s >= 0; s -= 8)
        b->buf[b->len++] = (uint8_t)(v >> s);
}

void copy_put64(copybuf *b, uint64_t v)
{
    copy_put32(b, (uint32_t)(v >> 32));
    copy_put32(b, (uint32_t)v);
}

void copy_put_header(copybuf *b)
{
    static const uint8_t sig[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0};
    memcpy(b->buf + b->len, sig, sizeof sig);
    b->len += sizeof sig;
    copy_put32(b, 0); /* flags */
    copy_put32(b, 0); /* header extension */
}

int copy_flush(copybuf *b, cds_err *err)
{
    if (b->len > 0 && PQputCopyData(b->c, (const char *)b->buf, (int)b->len) != 1)
        return pg_fail(b->c, NULL, "sending COPY data", err);
    b->len = 0;
    return 0;
}
