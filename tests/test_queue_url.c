/* Redis URL parsing and password redaction: no server needed. */
#include <string.h>

#include "cds_util.h"
#include "queue.h"
#include "tap.h"

static void parses(const char *url, int is_unix, const char *host_or_path, int port, int db, const char *pw)
{
    queue_url u;
    cds_err err;
    int rc = queue_url_parse(url, &u, &err);
    ok(rc == 0 && u.is_unix == is_unix && strcmp(is_unix ? u.path : u.host, host_or_path) == 0 &&
           (is_unix || u.port == port) && u.db == db && strcmp(u.password, pw) == 0,
       "parses %s", url);
}

static void refuses(const char *url, const char *why)
{
    queue_url u;
    cds_err err = {0};
    int rc = queue_url_parse(url, &u, &err);
    ok(rc == -1 && strstr(err.msg, why) && strstr(err.msg, "bad Redis URL"), "refuses %s (%s)", url, err.msg);
    ok(!strstr(err.msg, "hunter2"), "the refusal does not print the password");
}

int main(void)
{
    parses("redis://127.0.0.1:6379/0", 0, "127.0.0.1", 6379, 0, "");
    parses("redis://localhost", 0, "localhost", 6379, 0, "");
    parses("redis://:hunter2@db.example:7000/3", 0, "db.example", 7000, 3, "hunter2");
    parses("redis://alice:hunter2@h:1/2", 0, "h", 1, 2, "hunter2");
    parses("unix:///run/redis.sock", 1, "/run/redis.sock", 0, 0, "");
    parses("unix://:hunter2@/run/redis.sock?db=5", 1, "/run/redis.sock", 0, 5, "hunter2");
    parses("redis://:pa/ss@h:2/1", 0, "h", 2, 1, "pa/ss");
    parses("redis://:p@ss@h:2/1", 0, "h", 2, 1, "p@ss");
    parses("unix://:pa/ss@/run/r.sock?db=2", 1, "/run/r.sock", 0, 2, "pa/ss");
    refuses("http://h:1/0", "unknown scheme");
    refuses("redis://:hunter2@h:99999/0", "port");
    refuses("redis://:hunter2@h:1/x", "database");
    refuses("unix://relative.sock", "absolute");
    refuses("redis://:hunter2@/0", "no host");

    char out[256];
    cds_redact_url("redis://:hunter2@h:1/0", out, sizeof out);
    ok(strcmp(out, "redis://:***@h:1/0") == 0, "redacts a password (%s)", out);
    cds_redact_url("redis://alice:hunter2@h:1/0", out, sizeof out);
    ok(strcmp(out, "redis://alice:***@h:1/0") == 0, "redacts a password after a user (%s)", out);
    cds_redact_url("redis://:hu/nter2@h:1/0", out, sizeof out);
    ok(strcmp(out, "redis://:***@h:1/0") == 0, "redacts a password holding '/' (%s)", out);
    cds_redact_url("redis://:hu@nter2@h:1/0", out, sizeof out);
    ok(strcmp(out, "redis://:***@h:1/0") == 0, "redacts a password holding '@' (%s)", out);
    cds_redact_url("unix://:hu/nter2@/run/r.sock", out, sizeof out);
    ok(strcmp(out, "unix://:***@/run/r.sock") == 0, "redacts a unix socket URL's password (%s)", out);
    cds_redact_url("redis://h:1/0", out, sizeof out);
    ok(strcmp(out, "redis://h:1/0") == 0, "leaves a URL without a password alone");
    return tap_done();
}
