/* etl_pq: the libpq helpers of the planner and the streams, and the
 * connection a plan names.
 *
 * Queries that must succeed go through etl_pq_exec, so every failure says
 * what was being done.  The plan's DSN is the connection the planner
 * actually made (etl_dsn_resolved): host, port, database and user as libpq
 * resolved them, then every non-default setting, and never a secret, so a
 * worker on another host reaches the same database whatever its own
 * environment says, with its own password (PGPASSWORD or ~/.pgpass). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etl_planner_int.h"

PGconn *etl_pq_connect(const char *dsn, cds_err *err)
{
    PGconn *c = PQconnectdb(dsn ? dsn : "");
    if (PQstatus(c) != CONNECTION_OK) {
        char *red = etl_dsn_redacted(dsn);
        cds_errf(err, "cannot connect to the database (%s): %s (check the DSN, PGHOST/PGPORT, and the password in PGPASSWORD or ~/.pgpass)",
                 red[0] ? red : "libpq defaults", PQerrorMessage(c));
        free(red);
        PQfinish(c);
        return NULL;
    }
    return c;
}

PGresult *etl_pq_exec(PGconn *c, const char *what, const char *sql, int nparams, const char *const *params,
                      ExecStatusType want, cds_err *err)
{
    PGresult *r = nparams ? PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0) : PQexec(c, sql);
    if (PQresultStatus(r) != want) {
        const char *msg = PQresultErrorMessage(r);
        cds_errf(err, "%s: %s", what, msg && *msg ? msg : PQerrorMessage(c));
        PQclear(r);
        return NULL;
    }
    return r;
}

char *etl_pq_quote_ident(PGconn *c, const char *name)
{
    char *q = PQescapeIdentifier(c, name, strlen(name));
    char *out = strdup(q ? q : "\"\"");
    PQfreemem(q);
    return out;
}

/* ---- a tiny string builder ----------------------------------------------- */



void etl_sb_add(etl_sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->n + (size_t)need + 1 > b->cap) {
        b->cap = 2 * (b->n + (size_t)need + 1);
        b->s = realloc(b->s, b->cap);
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)need;
}

/* ---- the connection the plan names -------------------------------------- */

void etl_sb_conninfo(etl_sbuf *b, const char *key, const char *val)
{
    etl_conninfo_append(&b->s, &b->n, &b->cap, key, val);
}

/* Settings that are secret, or name something of this machine only, or that
 * host/port/dbname/user below already say. */
static int conninfo_skipped(const PQconninfoOption *o)
{
    static const char *const skip[] = {"host", "hostaddr", "port", "dbname", "user", "passfile", "service",
                                       "fallback_application_name", NULL};
    if (etl_conninfo_secret(o))
        return 1;
    for (int i = 0; skip[i]; i++)
        if (strcmp(o->keyword, skip[i]) == 0)
            return 1;
    /* dispchar "D": a debug setting. */
    return o->dispchar && strchr(o->dispchar, 'D');
}

/* The server and database c is connected to, as a conninfo string without
 * any password: host (a socket directory stays a path), port, dbname and
 * user as libpq resolved them from the DSN, the PG* variables, a service
 * file or its defaults, then every other setting in force that differs from
 * libpq's built-in default (sslmode=require, application_name, ...).  A
 * process on another host given this string reaches the same server and
 * database whatever its own environment says. */
char *etl_dsn_resolved(PGconn *c)
{
    etl_sbuf b = {0};
    etl_sb_add(&b, "%s", "");
    const char *v;
    if ((v = PQhost(c)) && *v)
        etl_sb_conninfo(&b, "host", v);
    if ((v = PQport(c)) && *v)
        etl_sb_conninfo(&b, "port", v);
    if ((v = PQdb(c)) && *v)
        etl_sb_conninfo(&b, "dbname", v);
    if ((v = PQuser(c)) && *v)
        etl_sb_conninfo(&b, "user", v);
    PQconninfoOption *opts = PQconninfo(c);
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!o->val || !*o->val || conninfo_skipped(o) || (o->compiled && strcmp(o->val, o->compiled) == 0))
            continue;
        etl_sb_conninfo(&b, o->keyword, o->val);
    }
    PQconninfoFree(opts);
    return b.s;
}
