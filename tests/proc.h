/* Process helpers for tests that run daemons: spawn with output to a log
 * file, signal, wait with a deadline, and a private redis-server on a unix
 * socket in a temporary directory (for tests that stop or kill Redis). */
#ifndef CDS_TEST_PROC_H
#define CDS_TEST_PROC_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cds_util.h"

static inline pid_t proc_spawn(char *const argv[], const char *log_path)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execvp(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

/* Waits for pid up to ms; returns its exit status (or 128+signal), -1 on timeout. */
static inline int proc_wait(pid_t pid, int64_t ms)
{
    int64_t end = cds_mono_ms() + ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (cds_mono_ms() > end)
            return -1;
        cds_sleep_ms(10);
    }
}

static inline void proc_kill_wait(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGKILL);
        proc_wait(pid, 5000);
    }
}

/* Counts the lines of a file that contain needle. */
static inline int file_count(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

typedef struct test_redis {
    char dir[256];
    char sock[300];
    char url[320];
    pid_t pid;
} test_redis;

static inline int test_redis_ping(const test_redis *r)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "redis-cli -s %s ping 2>/dev/null | grep -q PONG", r->sock);
    return system(cmd) == 0;
}

/* Starts (or restarts, same dir) a private redis-server; extra: more
 * "--option value" words, NULL-terminated. */
static inline int test_redis_start(test_redis *r, const char *const *extra)
{
    if (!r->dir[0]) {
        snprintf(r->dir, sizeof r->dir, "/tmp/cds-test-redis.XXXXXX");
        if (!mkdtemp(r->dir))
            return -1;
        snprintf(r->sock, sizeof r->sock, "%s/redis.sock", r->dir);
        snprintf(r->url, sizeof r->url, "unix://%s", r->sock);
    }
    const char *bin = getenv("CDS_REDIS_SERVER");
    char *argv[64];
    int n = 0;
    argv[n++] = (char *)(bin && *bin ? bin : "redis-server");
    const char *base[] = {"--port", "0", "--unixsocket", r->sock, "--dir", r->dir, "--save", "",
                          "--appendonly", "yes", "--maxmemory-policy", "noeviction", NULL};
    for (int i = 0; base[i]; i++)
        argv[n++] = (char *)base[i];
    for (int i = 0; extra && extra[i] && n < 62; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    char log[300];
    snprintf(log, sizeof log, "%s/redis.log", r->dir);
    r->pid = proc_spawn(argv, log);
    for (int i = 0; i < 500; i++) {
        if (test_redis_ping(r))
            return 0;
        cds_sleep_ms(10);
    }
    return -1;
}

static inline void test_redis_cli(const test_redis *r, const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "redis-cli -s %s %s >/dev/null 2>&1", r->sock, args);
    if (system(cmd) != 0)
        printf("# redis-cli %s failed\n", args);
}

static inline void test_redis_stop(test_redis *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGTERM);
        if (proc_wait(r->pid, 10000) < 0)
            proc_kill_wait(r->pid);
    }
    r->pid = 0;
}

static inline void test_redis_destroy(test_redis *r)
{
    test_redis_stop(r);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", r->dir);
    if (r->dir[0] && system(cmd) != 0)
        printf("# could not remove %s\n", r->dir);
}

#endif
