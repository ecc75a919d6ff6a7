/* cds_err: see cds_err.h.  Messages are kept to one line: any newline that
 * sneaks in from a server reply is replaced by a space, so a message always
 * prints as exactly one line on stderr or in a log. */
#include "cds_err.h"

#include <errno.h>
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

const char *cds_err_io_hint(int e, const cds_io_hints *h, char *out, size_t n)
{
    switch (e) {
    case ENOSPC:
    case EDQUOT: snprintf(out, n, "free some space or %s", h->elsewhere); break;
    case EFBIG:
        snprintf(out, n, "the file size limit (ulimit -f) or the filesystem's largest file was reached; raise the "
                         "limit%s%s", h->smaller ? " or " : "", h->smaller ? h->smaller : "");
        break;
    case EIO: snprintf(out, n, "the disk reported an I/O error; check it, then %s", h->again); break;
    case EROFS: snprintf(out, n, "the filesystem is read-only; %s", h->elsewhere); break;
    case EACCES:
    case EPERM: snprintf(out, n, "this user may not write there; fix the permissions or %s", h->elsewhere); break;
    case ENOENT: snprintf(out, n, "the directory does not exist; create it or fix the path"); break;
    case ENOTDIR: snprintf(out, n, "a part of the path is not a directory; fix the path"); break;
    default: snprintf(out, n, "check %s, then %s", h->fs, h->again); break;
    }
    return out;
}
