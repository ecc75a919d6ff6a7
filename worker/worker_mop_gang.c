/* worker_mop_gang: this worker's part in the gangs of DDP and MA sweeps
 * (DESIGN.md §6, docs/ddp.md).
 *
 * The step asks mop_gang.lua for a rank (queue_mop_gang_take), offering
 * its own shard and the orphans it may serve; the answer is a rank that a
 * gang formed with this worker in it, or a ready mark.  A rank is trained
 * in a child process, cds-worker itself run with --rank-task
 * (worker_rank.c): Gloo cannot interrupt a collective in flight, and a
 * process can always be killed.  The rank's lease sits in the slot, so the
 * heartbeat renews it as any lease (queue_mop_renew, with rank 0's
 * progress); while the child runs this thread watches it:
 *
 *   a line "p <done> <total>"  progress, kept for the heartbeat;
 *   a line "c ..."             rank 0 committed: the model's directory is
 *                              kept here afterwards (worker_mop_retain);
 *   the lease lost             another rank ended the gang, or the reaper,
 *                              or a cancel: the child is killed;
 *   silence past the stall     the child hangs (or was stopped): killed, and
 *   limit                      the gang ended as a stall;
 *   a second SIGTERM           killed; the gang ended as a stall.
 *
 * When the child exits the worker does what its status leaves to do
 * (worker_rank.h): nothing after a commit or an end the child reported
 * itself; otherwise it ends the gang as a stall (a killed or broken rank is
 * not the model's fault), which Redis refuses harmlessly when another rank
 * ended it first.  The child is started with every signal unblocked and
 * only async-signal-safe calls between fork and exec. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "cds_layout.h"
#include "cds_util.h"
#include "worker_mop_int.h"
#include "worker_rank.h"

/* A ready mark outlives a few of the idle loop's waits (a second each). */
#define GANG_READY_MS 3000
#define RANK_FD_TASK 3
#define RANK_FD_OUT 4

typedef struct rank_child {
    pid_t pid;
    int out;             /* the child's lines */
    char buf[4 * QUEUE_MOP_PATH_MAX];
    size_t n;
    int64_t heard_ms;    /* the last line */
    int committed;
    int64_t version;
    int model_done;
    char path[QUEUE_MOP_PATH_MAX], superseded[QUEUE_MOP_PATH_MAX];
} rank_child;

/* The rank's task.  Its device is the one the worker resolved at start,
 * by name ("cpu", "cuda:N"), never "auto": the rank trains where the worker
 * said it would, without looking for devices again. */
static char *task_json(worker *w, const char *sweep, const queue_mop_lease *l)
{
    json_t *j = json_pack("{s:s, s:i, s:I, s:i, s:i, s:i, s:s, s:i, s:I, s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:b, s:s, s:b}",
                          "sweep", sweep, "model", l->model, "gang", (json_int_t)l->gang, "rank", l->shard, "world",
                          l->shards, "shards", l->data_shards ? l->data_shards : l->shards, "token", l->token, "epoch", l->epoch, "version", (json_int_t)l->version, "ckpt",
                          l->ckpt, "dataset", l->dataset, "mode", l->mode, "spec", l->spec ? l->spec : "",
                          "timeout_ms", (json_int_t)w->cfg->ddp_timeout_ms, "addr",
                          w->cfg->ddp_addr ? w->cfg->ddp_addr : "", "iface", w->cfg->ddp_iface ? w->cfg->ddp_iface : "",
                          "sparse_dense", w->cfg->ddp_sparse_dense, "device", w->device, "nccl", w->cfg->ddp_nccl);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

/* The child's command line: this program, the worker's connection, data
 * root, id and threads, and the two descriptors. */
static int child_argv(worker *w, char **argv, size_t max, char store[][32])
{
    const worker_cfg *c = w->cfg;
    size_t n = 0;
#define ARG(s) do { if (n + 2 >= max) return -1; argv[n++] = (char *)(s); } while (0)
    ARG("cds-worker");
    ARG("--rank-task");
    snprintf(store[0], 32, "%d", RANK_FD_TASK);
    ARG(store[0]);
    ARG("--rank-out");
    snprintf(store[1], 32, "%d", RANK_FD_OUT);
    ARG(store[1]);
    if (c->url) { ARG("--redis"); ARG(c->url); }
    if (c->password_file) { ARG("--redis-password-file"); ARG(c->password_file); }
    if (c->prefix) { ARG("--prefix"); ARG(c->prefix); }
    ARG("--id");
    ARG(c->id);
    ARG("--data-root");
    ARG(c->data_root);
    ARG("--threads");
    snprintf(store[2], 32, "%d", c->threads);
    ARG(store[2]);
    ARG("--log-level");
    ARG(c->log_level == CDS_LOG_DEBUG ? "debug" : c->log_level == CDS_LOG_WARN ? "warn"
        : c->log_level == CDS_LOG_ERROR ? "error" : "info");
#undef ARG
    argv[n] = NULL;
    return 0;
}

/* Starts the rank's process and hands it its task. */
static int spawn(worker *w, const char *sweep, const queue_mop_lease *l, rank_child *ch, cds_err *err)
{
    char *argv[32], store[3][32];
    char *task = task_json(w, sweep, l);
    if (!task || child_argv(w, argv, 32, store) != 0) {
        free(task);
        return cds_err_nomem(err, "out of memory starting a rank");
    }
    int tp[2], op[2];
    if (pipe2(tp, O_CLOEXEC) != 0 || pipe2(op, O_CLOEXEC) != 0) {
        free(task);
        return cds_errf(err, "starting a rank: pipe: %s", strerror(errno));
    }
    sigset_t all;
    sigemptyset(&all);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* Only async-signal-safe calls until exec.  A rank outlives no
         * worker: it dies with it (the gang then expires and restarts). */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(127);
        if (dup2(tp[0], RANK_FD_TASK) < 0 || dup2(op[1], RANK_FD_OUT) < 0)
            _exit(127);
        sigprocmask(SIG_SETMASK, &all, NULL);
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(tp[0]);
    close(op[1]);
    if (pid < 0) {
        close(tp[1]);
        close(op[0]);
        free(task);
        return cds_errf(err, "starting a rank: fork: %s", strerror(errno));
    }
    /* A child that died before reading gets EPIPE (SIGPIPE is ignored);
     * its exit status says the rest. */
    cds_write_all(tp[1], task, strlen(task));
    close(tp[1]);
    free(task);
    fcntl(op[0], F_SETFL, O_NONBLOCK);
    ch->pid = pid;
    ch->out = op[0];
    ch->heard_ms = cds_mono_ms();
    return 0;
}

static void child_line(worker *w, rank_child *ch, char *line)
{
    long long a, b;
    if (line[0] == 'p' && sscanf(line, "p %lld %lld", &a, &b) == 2) {
        atomic_store(&w->mop.rows_done, a);
        atomic_store(&w->mop.rows_total, b > 0 ? b : a);
        return;
    }
    int md;
    char *tab = strchr(line, '\t');
    if (line[0] == 'c' && tab && sscanf(line, "c %lld %d ", &a, &md) == 2) {
        *tab = '\0';
        char *path = strchr(strchr(line + 2, ' ') + 1, ' ');
        if (!path)
            return;
        ch->committed = 1;
        ch->version = a;
        ch->model_done = md;
        snprintf(ch->path, sizeof ch->path, "%s", path + 1);
        snprintf(ch->superseded, sizeof ch->superseded, "%s", tab + 1);
    }
}

/* Reads what the child wrote; 1 at its end of the pipe. */
static int read_child(worker *w, rank_child *ch)
{
    for (;;) {
        ssize_t k = read(ch->out, ch->buf + ch->n, sizeof ch->buf - ch->n - 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return 0;
        if (k == 0)
            return 1;
        ch->heard_ms = cds_mono_ms();
        ch->n += (size_t)k;
        ch->buf[ch->n] = '\0';
        char *nl;
        while ((nl = strchr(ch->buf, '\n'))) {
            *nl = '\0';
            child_line(w, ch, ch->buf);
            ch->n -= (size_t)(nl + 1 - ch->buf);
            memmove(ch->buf, nl + 1, ch->n + 1);
        }
        if (ch->n == sizeof ch->buf - 1)
            ch->n = 0; /* a line that long is not one of ours */
    }
}

/* How long a rank may say nothing: a collective's time-out three times
 * over, plus the wait at the commit barrier. */
static int64_t stall_ms(const worker *w)
{
    return 3 * w->cfg->ddp_timeout_ms + WORKER_RANK_COMMIT_TIMEOUT(w->cfg->ddp_timeout_ms);
}

/* Watches the child until it exits; returns its wait status, and in *why
 * why it was killed ("" when it was not). */
static int watch(worker *w, rank_child *ch, char *why, size_t wn)
{
    why[0] = '\0';
    int status = 0, eof = 0;
    for (;;) {
        struct pollfd p = {.fd = ch->out, .events = POLLIN};
        if (!eof && poll(&p, 1, 100) > 0)
            eof = read_child(w, ch);
        else if (eof)
            cds_sleep_ms(20);
        pid_t r = waitpid(ch->pid, &status, WNOHANG);
        if (r == ch->pid)
            break;
        if (!why[0]) {
            if (atomic_load(&w->mop.lost))
                snprintf(why, wn, "the gang ended elsewhere");
            else if (atomic_load(&w->stop) >= 2)
                snprintf(why, wn, "worker %s stopping now", w->cfg->id);
            else if (cds_mono_ms() - ch->heard_ms > stall_ms(w))
                snprintf(why, wn, "rank silent for %lld ms (hung or stopped)", (long long)stall_ms(w));
            if (why[0])
                kill(ch->pid, SIGKILL);
        }
    }
    if (!eof)
        read_child(w, ch);
    close(ch->out);
    return status;
}

static void describe_status(int status, char *out, size_t n)
{
    if (WIFSIGNALED(status))
        snprintf(out, n, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else if (WEXITSTATUS(status) == WORKER_RANK_BROKEN)
        snprintf(out, n, "a collective of the gang failed");
    else
        snprintf(out, n, "exited with status %d", WEXITSTATUS(status));
}

/* After the child: a commit's retention, or the gang ended as a stall when
 * nobody ended it yet. */
static void settle(worker *w, const char *sweep, const queue_mop_lease *l, const rank_child *ch, int status,
                   const char *why)
{
    cds_err err;
    worker_slot_finishing(w);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        if (ch->committed) {
            char dir[QUEUE_MOP_PATH_MAX];
            w->visits_committed++;
            if (cds_layout_model_dir(dir, sizeof dir, w->cfg->data_root, sweep, l->model, &err) == 0)
                worker_mop_retain(w, dir, ch->path, ch->version, ch->superseded);
            cds_logf(&w->log, CDS_LOG_INFO, "sweep %s model %d epoch %d: the gang of %d ranks committed v%lld%s",
                     sweep, l->model, l->epoch, l->shards, (long long)ch->version, ch->model_done ? " (model done)" : "");
        }
        return;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == WORKER_RANK_ENDED)
        return;
    char st[128], reason[512];
    describe_status(status, st, sizeof st);
    snprintf(reason, sizeof reason, "rank %d on worker %s %s%s%s", l->shard, w->cfg->id, st, why[0] ? ": " : "", why);
    if (atomic_load(&w->mop.lost)) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: %s", sweep, l->model, l->epoch, reason);
        return;
    }
    int rc = WITH_RECONNECT(w, queue_mop_gang_end(w->q, sweep, l, QUEUE_GANG_ABORT, reason, NULL, NULL, &err));
    cds_logf(&w->log, CDS_LOG_WARN, "sweep %s model %d epoch %d: %s; %s", sweep, l->model, l->epoch, reason,
             rc == 0 ? "gang aborted (the model starts the epoch again from its last checkpoint)"
             : rc == QUEUE_NOT_FOUND ? "the gang had already ended"
                                     : err.msg);
}

static void run_rank(worker *w, const char *sweep, queue_mop_lease *l)
{
    cds_err err;
    char what[96];
    snprintf(what, sizeof what, "%s/%d rank %d", sweep, l->model, l->shard);
    worker_set_current(w, what);
    worker_slot_set(w, sweep, l);
    rank_child ch;
    memset(&ch, 0, sizeof ch);
    if (spawn(w, sweep, l, &ch, &err) != 0) {
        worker_slot_finishing(w);
        WITH_RECONNECT(w, queue_mop_gang_end(w->q, sweep, l, QUEUE_GANG_ABORT, err.msg, NULL, NULL, &err));
        cds_logf(&w->log, CDS_LOG_ERROR, "sweep %s model %d: %s", sweep, l->model, err.msg);
    } else {
        cds_logf(&w->log, CDS_LOG_INFO, "sweep %s model %d epoch %d: rank %d of %d (gang %lld, %s) in process %d",
                 sweep, l->model, l->epoch, l->shard, l->shards, (long long)l->gang, l->mode, (int)ch.pid);
        char why[160];
        int status = watch(w, &ch, why, sizeof why);
        settle(w, sweep, l, &ch, status, why);
    }
    worker_slot_set(w, NULL, NULL);
    worker_set_current(w, NULL);
}

/* "<host> <slots>" for the ready mark: the ranks of one gang this host
 * holds without their threads sharing cores (its cores over --threads; a
 * GPU worker's device is its own: no limit).  A hybrid gang of CPU workers
 * on one host gains nothing past that: its ranks would only take turns. */
static void gang_where(const worker *w, char *out, size_t n)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    for (char *c = host; *c; c++)
        if (*c == ' ' || *c == '@')
            *c = '_';
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long slots = w->place.dev == NN_CPU ? (cores > 0 ? cores : 1) / (w->cfg->threads > 0 ? w->cfg->threads : 1) : 0;
    snprintf(out, n, "%s %ld", host[0] ? host : "?", w->place.dev == NN_CPU && slots < 1 ? 1 : slots);
}

int worker_mop_gang_step(worker *w, const char *sweep)
{
    cds_err err;
    int shards[65];
    shards[0] = w->cfg->shard;
    int n = 1 + worker_mop_orphan_shards(w, shards + 1, 64);
    queue_mop_lease l;
    memset(&l, 0, sizeof l);
    char where[300];
    gang_where(w, where, sizeof where);
    int rc = WITH_RECONNECT(w, queue_mop_gang_take(w->q, sweep, w->cfg->id, w->cfg->lease_ms, GANG_READY_MS, shards,
                                                   n, where, &l, NULL, &err));
    if (rc < 0) {
        cds_logf(&w->log, CDS_LOG_WARN, "sweep %s: asking for a rank in a gang: %s", sweep, err.msg);
        return 0;
    }
    if (rc == QUEUE_MOP_WAITING) {
        worker_mop_pin_dataset(w, sweep);
        return 0;
    }
    if (rc != 1)
        return 0;
    run_rank(w, sweep, &l);
    queue_mop_lease_clear(&l);
    return 1;
}
