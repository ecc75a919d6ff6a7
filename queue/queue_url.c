/* Redis URLs: redis://[[user]:password@]host[:port][/db] and
 * unix://[[user]:password@]/path[?db=N].  A password in a URL is accepted (it
 * may come from $CDS_REDIS_URL, which ps does not show), but every printed form
 * of the URL goes through cds_redact_url. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cds_util.h"
#include "queue.h"

static int bad(cds_err *err, const char *url, const char *why)
{
    char red[700];
    cds_redact_url(url, red, sizeof red);
    return cds_errf(err,
                    "bad Redis URL '%s': %s (expected redis://[:password@]host:port/db or "
                    "unix:///path/to/redis.sock?db=N)",
                    red, why);
}

/* Splits "[user][:password]@" off the front of rest. */
static int parse_userinfo(const char *url, const char **rest, queue_url *out, cds_err *err)
{
    const char *start, *at;
    if (!cds_url_userinfo(url, &start, &at))
        return 0;
    const char *colon = memchr(*rest, ':', (size_t)(at - *rest));
    size_t ulen = colon ? (size_t)(colon - *rest) : 0;
    const char *pw = colon ? colon + 1 : *rest;
    size_t plen = (size_t)(at - pw);
    if (ulen >= sizeof out->user || plen >= sizeof out->password)
        return bad(err, url, "user name or password too long");
    memcpy(out->user, *rest, ulen);
    out->user[ulen] = '\0';
    memcpy(out->password, pw, plen);
    out->password[plen] = '\0';
    *rest = at + 1;
    return 0;
}

int queue_url_parse(const char *url, queue_url *out, cds_err *err)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url || !*url)
        return bad(err, "", "empty");
    const char *rest;
    if (strncmp(url, "redis://", 8) == 0) {
        rest = url + 8;
    } else if (strncmp(url, "unix://", 7) == 0) {
        rest = url + 7;
        out->is_unix = 1;
    } else {
        return bad(err, url, "unknown scheme");
    }
    if (parse_userinfo(url, &rest, out, err) != 0)
        return -1;

    if (out->is_unix) {
        const char *q = strchr(rest, '?');
        size_t plen = q ? (size_t)(q - rest) : strlen(rest);
        if (plen == 0 || rest[0] != '/')
            return bad(err, url, "the socket path must be absolute");
        if (plen >= sizeof out->path)
            return bad(err, url, "socket path too long");
        memcpy(out->path, rest, plen);
        out->path[plen] = '\0';
        if (q) {
            int64_t db;
            if (strncmp(q, "?db=", 4) != 0 || cds_parse_i64(q + 4, 0, 1 << 20, &db) != 0)
                return bad(err, url, "the only query parameter is ?db=N");
            out->db = (int)db;
        }
        return 0;
    }

    const char *end = rest + strcspn(rest, "/");
    const char *colon = memchr(rest, ':', (size_t)(end - rest));
    size_t hlen = colon ? (size_t)(colon - rest) : (size_t)(end - rest);
    if (hlen == 0)
        return bad(err, url, "no host");
    if (hlen >= sizeof out->host)
        return bad(err, url, "host name too long");
    memcpy(out->host, rest, hlen);
    out->host[hlen] = '\0';
    if (colon) {
        char port[16];
        size_t n = (size_t)(end - colon - 1);
        int64_t p;
        if (n == 0 || n >= sizeof port)
            return bad(err, url, "bad port");
        memcpy(port, colon + 1, n);
        port[n] = '\0';
        if (cds_parse_i64(port, 1, 65535, &p) != 0)
            return bad(err, url, "the port must be a number from 1 to 65535");
        out->port = (int)p;
    }
    if (*end == '/' && end[1]) {
        int64_t db;
        if (cds_parse_i64(end + 1, 0, 1 << 20, &db) != 0)
            return bad(err, url, "the database after the last / must be a number");
        out->db = (int)db;
    }
    return 0;
}
