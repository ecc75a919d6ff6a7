/* cds_err: see cds_err.h.  Messages are kept to one line: any newline that
 * sneaks in from a server reply is replaced by a space, so a message always
 * prints as exactly one line on stderr or in a log. */
#include "cds_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void flatten_newlines(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '\r')
            *s = ' ';
}

static int set_msg(cds_err *err, cds_err_kind kind, const char *fmt, va_list ap)
{
    if (!err)
        return -1;
    err->kind = kind;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    flatten_newlines(err->msg);
    return -1;
}

int cds_errf(cds_err *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_msg(err, CDS_ERR_FAILED, fmt, ap);
    va_end(ap);
    return -1;
}

int cds_err_nomem(cds_err *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_msg(err, CDS_ERR_NOMEM, fmt, ap);
    va_end(ap);
    return -1;
}

int cds_err_is_nomem(const cds_err *err)
{
    return err && err->kind == CDS_ERR_NOMEM;
}

int cds_err_wrap(cds_err *err, const char *fmt, ...)
{
    if (!err)
        return -1;
    char prefix[CDS_ERR_MAX];
    char old[CDS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    size_t plen = strlen(prefix);
    if (plen > sizeof err->msg - 3)
        plen = sizeof err->msg - 3;
    memcpy(err->msg, prefix, plen);
    memcpy(err->msg + plen, ": ", 2);
    size_t room = sizeof err->msg - plen - 3;
    size_t olen = strnlen(old, room);
    memcpy(err->msg + plen + 2, old, olen);
    err->msg[plen + 2 + olen] = '\0';
    flatten_newlines(err->msg);
    return -1;
}

void cds_err_clear(cds_err *err)
{
    if (err) {
        err->kind = CDS_ERR_FAILED;
        err->msg[0] = '\0';
    }
}
