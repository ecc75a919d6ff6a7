/* sweep_sim: see sweep_sim.h for what is simulated.
 *
 * MOP's loop is event by event: the events are commits (a visit's or an
 * evaluation's end) and workers' tries.  A worker tries when its visit
 * ends, when a commit hands it a wake-up token, or when its idle wait
 * times out; a try evaluates, leases, or finds nothing, and then the
 * worker takes a token that waits (and tries again at once) or blocks on
 * the wake-up list, as cds-worker does: a commit wakes one worker, not
 * all, and the others wait out their second.  A commit and a try at the
 * same time: the commit first.  Ties between workers go to the lowest, so
 * a run is deterministic.  O(events · (M + K)). */
#include "sweep_sim.h"

#include <stdlib.h>
#include <string.h>

static int valid(const sweep_sim_in *in)
{
    if (!in || in->models < 1 || in->shards < 1 || in->epochs < 1 || !in->visit_s || in->visit_overhead_s < 0 ||
        in->gang_overhead_s < 0)
        return 0;
    for (int i = 0; i < in->models * in->shards; i++)
        if (!(in->visit_s[i] >= 0))
            return 0;
    for (int m = 0; in->eval_s && m < in->models; m++)
        if (!(in->eval_s[m] >= 0))
            return 0;
    for (int m = 0; in->model_epochs && m < in->models; m++)
        if (in->model_epochs[m] < 0 || in->model_epochs[m] > in->epochs)
            return 0;
    return 1;
}

/* The epochs model m trains. */
static int epochs_of(const sweep_sim_in *in, int m) { return in->model_epochs ? in->model_epochs[m] : in->epochs; }

/* Model m's visit of shard k in epoch e (from 0). */
static double visit_time(const sweep_sim_in *in, int m, int e, int k)
{
    double v = in->epoch_visit_s && e < in->epochs ? in->epoch_visit_s[(size_t)m * (size_t)in->epochs + (size_t)e] : -1;
    return v >= 0 ? v : in->visit_s[(size_t)m * (size_t)in->shards + (size_t)k];
}

typedef struct model_state {
    double busy_until;
    int epoch; /* from 0; == E: done */
    int n_visited;
    unsigned char *seen; /* K flags */
} model_state;

/* The wake-up list: a commit pushes a token (16 at most); a worker with
 * nothing to do takes one and tries again at once, or blocks until a
 * commit hands one to it (the longest waiter first, as BLPOP serves) or
 * its wait times out (SIM_POLL_S, the worker's idle wait). */
#define SIM_POLL_S 1.0
#define SIM_TOKENS 16
#define SIM_RETRY_S 0.001 /* a try that finds nothing: listing sweeps, asking for a lease */

typedef struct worker_state {
    double next;    /* its next try (busy: the end of its visit) */
    int waiting;    /* blocked on the wake-up list since `since` */
    double since;
    double busy_end; /* the end of its visit or gang (<= now: holds no model) */
    double mark_until; /* its ready mark for a gang lives until then (a gang ask, a gang's commit) */
} worker_state;

/* A ready mark's life (worker_mop_gang.c GANG_READY_MS, mop_gang_commit.lua). */
#define SIM_MARK_S 3.0

typedef struct sim {
    const sweep_sim_in *in;
    model_state *ms;
    worker_state *ws;
    double *commits; /* pending commit times (visits and evaluations), unsorted */
    size_t n_commits, cap_commits;
    int *evals;      /* models whose epoch waits for evaluation, in order */
    int n_evals, head, tokens, left;
    double busy, makespan;
} sim;

static int push_commit(sim *x, double t)
{
    if (x->n_commits == x->cap_commits) {
        size_t cap = x->cap_commits ? x->cap_commits * 2 : 64;
        double *c = realloc(x->commits, cap * sizeof *c);
        if (!c)
            return -1;
        x->commits = c;
        x->cap_commits = cap;
    }
    x->commits[x->n_commits++] = t;
    return 0;
}

/* A token for the longest waiter, or kept (16 at most). */
static void wake_one(sim *x, double t)
{
    int first = -1;
    for (int j = 0; j < x->in->shards; j++)
        if (x->ws[j].waiting && (first < 0 || x->ws[j].since < x->ws[first].since))
            first = j;
    if (first >= 0) {
        x->ws[first].waiting = 0;
        x->ws[first].next = t;
    } else if (x->tokens < SIM_TOKENS) {
        x->tokens++;
    }
}

/* An epoch of model m ends (a visit's last commit, or a gang's). */
static void end_epoch(sim *x, model_state *s, int m)
{
    s->epoch++;
    s->n_visited = 0;
    memset(s->seen, 0, (size_t)x->in->shards);
    if (s->epoch == epochs_of(x->in, m))
        x->left--;
    x->evals[x->n_evals++] = m; /* queued by the commit */
}

/* hybrid_plan's model and W for worker k asking at t, or -1. */
static int plan_gang(const sim *x, int k, double t, int *ready, int *n_ready, int *W_out)
{
    const sweep_sim_in *in = x->in;
    int K = in->shards, runnable = 0, idle = 0, best = -1, nbusy = 0, idle_workers = 1;
    for (int m = 0; m < in->models; m++) {
        const model_state *s = &x->ms[m];
        if (s->epoch >= epochs_of(in, m))
            continue;
        runnable++;
        if (s->busy_until > t)
            continue;
        idle++;
        if (s->n_visited == 0 && (best < 0 || s->epoch < x->ms[best].epoch))
            best = m;
    }
    *n_ready = 0;
    ready[(*n_ready)++] = k;
    for (int j = 0; j < K; j++) {
        if (x->ws[j].busy_end > t)
            nbusy++;
        else if (j != k && x->ws[j].mark_until >= t) {
            idle_workers++;
            if (in->host_slots < 1 || *n_ready < in->host_slots)
                ready[(*n_ready)++] = j;
        }
    }
    if (best < 0 || idle_workers < 2 || runnable >= idle_workers + nbusy || !in->batch)
        return -1;
    int cap = *n_ready, W = 0, fewest = 0;
    cap = cap < idle_workers - (idle - 1) ? cap : idle_workers - (idle - 1);
    cap = cap < K ? cap : K;
    for (int w = 2; w <= cap; w++)
        if (in->batch[best] >= w && in->batch[best] % w == 0 && (!W || (K + w - 1) / w < fewest))
            W = w, fewest = (K + w - 1) / w;
    *W_out = W;
    return W ? best : -1;
}

/* Worker k, with nothing to visit at t, asks for a gang: 1 if one formed. */
static int try_gang(sim *x, int k, double t)
{
    const sweep_sim_in *in = x->in;
    int K = in->shards, W = 0, n_ready = 0;
    int *ready = malloc((size_t)K * sizeof *ready);
    if (!ready)
        return -1;
    int m = plan_gang(x, k, t, ready, &n_ready, &W);
    if (m < 0) {
        free(ready);
        return 0;
    }
    for (int i = 0; i < W; i++)
        wake_one(x, t);
    double start = t, longest = 0;
    for (int i = 1; i < W; i++)
        start = x->ws[ready[i]].next > start ? x->ws[ready[i]].next : start;
    for (int r = 0; r < W; r++) {
        double d = 0;
        for (int sh = r; sh < K; sh += W)
            d += visit_time(in, m, x->ms[m].epoch, sh);
        longest = d > longest ? d : longest;
    }
    double end = start + in->gang_overhead_s + longest;
    for (int i = 0; i < W; i++) {
        worker_state *w = &x->ws[ready[i]];
        w->waiting = 0;
        w->next = w->busy_end = end;
        w->mark_until = end + SIM_MARK_S; /* the gang's commit marks its workers again */
    }
    free(ready);
    model_state *s = &x->ms[m];
    s->busy_until = end;
    x->busy += (double)W * (end - t);
    end_epoch(x, s, m);
    x->makespan = end > x->makespan ? end : x->makespan;
    return push_commit(x, end) == 0 ? 1 : -1;
}

/* Worker k tries at time t: an evaluation, else a lease; 1 if it took one. */
static int try_work(sim *x, int k, double t)
{
    const sweep_sim_in *in = x->in;
    int K = in->shards;
    if (in->eval_s && x->head < x->n_evals) {
        double d = in->eval_s[x->evals[x->head++]];
        x->ws[k].next = t + d;
        x->busy += d;
        return push_commit(x, t + d) == 0 ? 1 : -1;
    }
    /* The lease script leaves alone the model hybrid_plan would give a
     * gang; the gang forms when a worker with nothing else asks. */
    int gang_m = -1;
    if (in->hybrid) {
        int W, n_ready, *ready = malloc((size_t)K * sizeof *ready);
        if (!ready)
            return -1;
        gang_m = plan_gang(x, k, t, ready, &n_ready, &W);
        free(ready);
    }
    int best = -1, best_progress = 0;
    for (int m = 0; m < in->models; m++) {
        model_state *s = &x->ms[m];
        if (m == gang_m || s->epoch >= epochs_of(in, m) || s->busy_until > t || s->seen[k])
            continue;
        int progress = s->epoch * K + s->n_visited;
        if (best < 0 || progress < best_progress)
            best = m, best_progress = progress;
    }
    if (best < 0 && in->hybrid)
        x->ws[k].mark_until = t + SIM_MARK_S; /* nothing to visit: the worker asks for a gang */
    if (best < 0)
        return in->hybrid ? try_gang(x, k, t) : 0;
    model_state *s = &x->ms[best];
    double d = visit_time(in, best, s->epoch, k) + in->visit_overhead_s;
    s->busy_until = t + d;
    x->ws[k].next = x->ws[k].busy_end = t + d;
    x->busy += d;
    s->seen[k] = 1;
    if (++s->n_visited == K)
        end_epoch(x, s, best);
    x->makespan = s->busy_until > x->makespan ? s->busy_until : x->makespan;
    return push_commit(x, t + d) == 0 ? 1 : -1;
}

int sweep_sim_mop(const sweep_sim_in *in, sweep_sim_out *out)
{
    if (!valid(in))
        return -1;
    int M = in->models, K = in->shards, E = in->epochs;
    sim x = {.in = in};
    for (int m = 0; m < M; m++)
        x.left += epochs_of(in, m) > 0;
    x.ms = calloc((size_t)M, sizeof *x.ms);
    x.ws = calloc((size_t)K, sizeof *x.ws);
    x.evals = calloc((size_t)M * (size_t)E + 1, sizeof *x.evals);
    unsigned char *seen = calloc((size_t)M * (size_t)K, 1);
    int rc = x.ms && x.ws && x.evals && seen ? 0 : -1;
    for (int m = 0; rc == 0 && m < M; m++)
        x.ms[m].seen = seen + (size_t)m * (size_t)K;
    for (int k = 0; rc == 0 && k < K; k++)
        x.ws[k].mark_until = -1;
    /* Every worker tries at 0 (the create's tokens wake them all). */
    while (rc == 0 && (x.left > 0 || x.n_commits > 0)) {
        size_t ci = 0;
        for (size_t i = 1; i < x.n_commits; i++)
            if (x.commits[i] < x.commits[ci])
                ci = i;
        int k = 0;
        for (int j = 1; j < K; j++)
            if (x.ws[j].next < x.ws[k].next)
                k = j;
        if (x.n_commits > 0 && x.commits[ci] <= x.ws[k].next) {
            /* A commit lands: a token for the longest waiter, if any. */
            double t = x.commits[ci];
            x.commits[ci] = x.commits[--x.n_commits];
            wake_one(&x, t);
            continue;
        }
        if (x.left == 0 && !(in->eval_s && x.head < x.n_evals))
            break; /* only commits of evaluations after the last visit: the makespan ends at the last visit */
        double t = x.ws[k].next;
        x.ws[k].waiting = 0;
        int took = try_work(&x, k, t);
        if (took < 0) {
            rc = -1;
        } else if (!took && x.tokens > 0) {
            x.tokens--;
            x.ws[k].next = t + SIM_RETRY_S;
        } else if (!took) {
            x.ws[k].waiting = 1;
            x.ws[k].since = t;
            x.ws[k].next = t + SIM_POLL_S;
        }
    }
    if (rc == 0) {
        out->makespan_s = x.makespan;
        out->busy_s = x.busy;
        out->utilisation = x.makespan > 0 ? x.busy / ((double)K * x.makespan) : 0;
    }
    free(x.ms), free(x.ws), free(x.evals), free(x.commits), free(seen);
    return rc;
}

int sweep_sim_rotation(const sweep_sim_in *in, sweep_sim_out *out)
{
    if (!valid(in))
        return -1;
    int M = in->models, K = in->shards;
    int *active = malloc((size_t)M * sizeof *active);
    if (!active)
        return -1;
    double span = 0, busy = 0;
    for (int e = 0; e < in->epochs; e++) {
        /* The models still training in epoch e, in groups of K. */
        int n = 0;
        for (int m = 0; m < M; m++)
            if (epochs_of(in, m) > e)
                active[n++] = m;
        for (int g = 0; g < n; g += K)
            for (int j = 0; j < K; j++) {
                /* sub-epoch j of group g: worker k trains the group's model (k + j) mod K, if there is one */
                double slowest = 0;
                for (int k = 0; k < K; k++) {
                    int i = g + (k + j) % K;
                    if (i >= n)
                        continue;
                    double d = visit_time(in, active[i], e, k) + in->visit_overhead_s;
                    busy += d;
                    slowest = d > slowest ? d : slowest;
                }
                span += slowest;
            }
    }
    free(active);
    out->makespan_s = span;
    out->busy_s = busy;
    out->utilisation = span > 0 ? busy / ((double)K * span) : 0;
    return 0;
}

int sweep_sim_gang(const sweep_sim_in *in, sweep_sim_out *out)
{
    if (!valid(in))
        return -1;
    int M = in->models, K = in->shards;
    double span = 0, busy = 0;
    for (int m = 0; m < M; m++) {
        for (int e = 0; e < epochs_of(in, m); e++) {
            double slowest = 0;
            for (int k = 0; k < K; k++) {
                double d = visit_time(in, m, e, k);
                busy += d;
                slowest = d > slowest ? d : slowest;
            }
            span += slowest + in->gang_overhead_s + (in->eval_s ? in->eval_s[m] : 0);
        }
    }
    out->makespan_s = span;
    out->busy_s = busy;
    out->utilisation = span > 0 ? busy / ((double)K * span) : 0;
    return 0;
}
