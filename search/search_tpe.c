/* search_tpe: Hyperopt's TPE (hyperopt/tpe.py; checked against 0.3.0 by
 * bench/search/tpe_check.py) over a flat search_space; search_tpe.h has the
 * contract.
 *
 * The algorithm, per proposal (trial t, n finished trials):
 *  1. Split.  Rank the trials by loss (a loss that is not finite ranks as
 *     +inf; ties by trial order); the first n_below = min(ceil(gamma·√n),
 *     25) are "below", the rest "above".  Each side keeps trial order.
 *     The cap 25 is Hyperopt's gamma_cap, fixed whatever lf is.
 *  2. Per dimension, one estimator per side, from that side's values:
 *     - continuous kinds (adaptive_parzen_normal): a Gaussian mixture in the
 *       model space (the value; its log for the log kinds) with the prior
 *       N((a+b)/2, b-a) on the model-space bounds [a, b] and one component
 *       per observation.  The components, prior included, are sorted by
 *       centre (the prior goes before centres equal to it); a component's
 *       sigma is the larger gap to its sorted neighbours (the end ones: the
 *       one gap), clipped to [(b-a)/min(100, N+2), b-a]; with N = 1 the
 *       observation's sigma is (b-a)/2; the prior keeps b-a.  Weights: the
 *       prior prior_weight, the observations 1, or, when N > lf, linear
 *       forgetting in trial order (the oldest N-lf ramp from 1/N to 1, the
 *       last lf at 1); then normalised.  A qloguniform observation is first
 *       raised to max(1e-12, lo) (Hyperopt's guard for values rounded to 0).
 *     - choice (Hyperopt's hp.choice is a randint, ap_randint_sampler):
 *       p(k) ∝ (forgetting-weighted count of k) + prior_weight.
 *  3. Densities (GMM1_lpdf, LGMM1_lpdf, randint_via_categorical_lpdf):
 *     - uniform: the mixture density at x divided by its mass in [a, b];
 *     - quniform: the mixture's mass of [max(x-q/2, lo), min(x+q/2, hi)]
 *       divided by its mass in [lo, hi];
 *     - loguniform: the log-normal mixture density at x, NOT divided by its
 *       mass in [a, b] (Hyperopt's LGMM1_lpdf computes that mass and does
 *       not use it; see "Differences" for why this is kept);
 *     - qloguniform: the mass of [max(x-q/2, lo, 0), min(x+q/2, hi)] under
 *       the log-normal mixture, divided by its mass in [a, b];
 *     - choice: log p(x).
 *  4. Proposal: n_ei candidates drawn from each dimension's below estimator
 *     (a continuous one truncated to [a, b], then exp for the log kinds and
 *     round(x/q)·q for the q kinds), each scored log l(c) - log g(c); the
 *     first best wins, each dimension on its own (broadcast_best).
 *
 * Invariants: everything is a pure function of the arguments; the only
 * randomness is the search_rng stream (seed, trial), consumed dimension by
 * dimension, candidate by candidate, two draws each; a proposal lies in its
 * dimension's bounds (a q kind's rounding aside, exactly as search_space_sample
 * rounds), and a choice proposal is an option index.
 *
 * Numerics: a normal mass 0.5·(erf(zb) - erf(za)) loses every digit when
 * both ends lie in one tail, so there it is taken as a difference of erfc
 * of that tail; densities (uniform, loguniform) are summed with log-sum-exp
 * (Hyperopt's logsum_rows) so a far-off x gives a finite log, not log 0.
 * The q kinds sum masses directly, as Hyperopt does: the prior component
 * keeps the sum far from underflow anywhere in the rounding's reach.
 *
 * Differences from Hyperopt, all deliberate:
 *  - Ties (equal losses; equal values of one dimension) are broken by trial
 *    order.  Hyperopt orders them with np.argsort's default kind, which is
 *    not stable, and whose order among ties depends on the CPU (numpy 2
 *    dispatches to SIMD sorts); with equal losses that decides which trial
 *    is below, and with equal values (q kinds) which forgetting weight goes
 *    with which sigma.  Trial order is Hyperopt's result under a stable sort.
 *  - A truncated component is drawn exactly, by inverse CDF (bisection on
 *    the tail-safe mass), with the component chosen in proportion to its
 *    weight times its mass inside the bounds: the same distribution as
 *    Hyperopt's draw-and-reject loop, in bounded time.  The random numbers
 *    are search_rng's, so candidates differ from Hyperopt's for a seed.
 *  - A loss of -inf or NaN ranks as the worst (numpy's sort would put -inf
 *    first, NaN after +inf).
 *  - Random proposals while trial < n_startup (Hyperopt: while fewer than
 *    n_startup_jobs trials exist), per search_tpe.h.
 * Kept on purpose, though odd: the loguniform density without its
 * truncation mass.  Per side that mass is a constant, so it shifts log l -
 * log g by the same amount at every x and cannot change which candidate
 * wins; keeping it makes search_tpe_log_ratio comparable with Hyperopt's
 * figures (bench/search/tpe_check.py). */
#include "search_tpe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "search_rng.h"

#define GAMMA_CAP 25    /* Hyperopt's cap on n_below (ap_split_trials' gamma_cap) */
#define TPE_EPS 1e-12   /* Hyperopt's floor on scales and on log arguments (EPS) */
#define SQRT2 1.4142135623730951
#define LOG_SQRT_2PI 0.91893853320467274178
#define MAX_BISECT 200

void search_tpe_defaults(search_tpe_opts *o)
{
    o->n_startup = 20;
    o->gamma = 0.25;
    o->n_ei = 24;
    o->prior_weight = 1.0;
    o->lf = 25;
}

/* ---- tail-safe normal masses ---- */

/* 0.5·(erf(tb) - erf(ta)), signed, for ta and tb in erf units ((x-mu)/(√2σ)):
 * within one tail the difference of erfc keeps the digits erf loses. */
static double erf_mass(double ta, double tb)
{
    if (ta > 0 && tb > 0)
        return 0.5 * (erfc(ta) - erfc(tb));
    if (ta < 0 && tb < 0)
        return 0.5 * (erfc(-tb) - erfc(-ta));
    return 0.5 * (erf(tb) - erf(ta));
}

/* Hyperopt's normal_cdf scale: √2σ, floored so that a degenerate sigma
 * does not divide by zero. */
static double erf_scale(double sigma) { return fmax(SQRT2 * sigma, TPE_EPS); }

/* The mass of N(mu, sigma) between a and b (signed: negative for a > b). */
static double normal_mass(double a, double b, double mu, double sigma)
{
    double s = erf_scale(sigma);
    return erf_mass((a - mu) / s, (b - mu) / s);
}

/* log Σ exp(v[i]) without overflow or needless underflow. */
static double log_sum_exp(const double *v, size_t n)
{
    double m = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (v[i] > m)
            m = v[i];
    if (!isfinite(m))
        return m;
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += exp(v[i] - m);
    return m + log(s);
}

/* ---- the split into below and above ---- */

typedef struct keyed {
    double key;
    size_t idx;
} keyed;

/* By key, then by index: a total order, so qsort's instability cannot show
 * and ties go by trial order. */
static int cmp_keyed(const void *pa, const void *pb)
{
    const keyed *a = pa, *b = pb;
    if (a->key != b->key)
        return a->key < b->key ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

static int cmp_size(const void *pa, const void *pb)
{
    size_t a = *(const size_t *)pa, b = *(const size_t *)pb;
    return (a > b) - (a < b);
}

static size_t n_below_of(size_t n, double gamma)
{
    double c = ceil(gamma * sqrt((double)n));
    size_t nb = c >= GAMMA_CAP ? GAMMA_CAP : (size_t)c;
    return nb < n ? nb : n;
}

/* One side's Gaussian mixture (model space), with each component's share
 * of the mass inside the bounds, which both the truncated density and the
 * truncated draw need. */
typedef struct mixture {
    size_t k;
    double *w, *mu, *sigma;
    double *inner;     /* w[i] times component i's mass in the bounds */
    double accept;     /* Σ inner: the mixture's mass in the bounds */
} mixture;

/* The working memory of one call, sized for n trials: one dimension's
 * estimators at a time. */
typedef struct tpe_work {
    keyed *key;             /* n: a ranking (losses, then one side's values) */
    size_t *below, *above;  /* trial indices, trial order */
    size_t nb, na;
    double *obs;            /* n: one side's values (model space) */
    double *fw;             /* n: forgetting weights */
    double *terms;          /* n + 1: log-sum-exp terms */
    mixture l, g;           /* n + 1 components each */
    double *pl, *pg;        /* a choice's probabilities */
} tpe_work;

static void work_free(tpe_work *w)
{
    free(w->key);
    free(w->below);
    free(w->above);
    free(w->obs);
    free(w->fw);
    free(w->terms);
    mixture *ms[2] = {&w->l, &w->g};
    for (int i = 0; i < 2; i++) {
        free(ms[i]->w);
        free(ms[i]->mu);
        free(ms[i]->sigma);
        free(ms[i]->inner);
    }
    free(w->pl);
    free(w->pg);
}

static int work_alloc(tpe_work *w, const search_space *s, size_t n, cds_err *err)
{
    memset(w, 0, sizeof *w);
    size_t n_opt = 1;
    for (size_t d = 0; d < search_space_dims(s); d++)
        if (search_space_dim(s, d)->n_options > n_opt)
            n_opt = search_space_dim(s, d)->n_options;
    size_t m = n ? n : 1, k = n + 1;
    w->key = malloc(m * sizeof *w->key);
    w->below = malloc(m * sizeof *w->below);
    w->above = malloc(m * sizeof *w->above);
    w->obs = malloc(m * sizeof *w->obs);
    w->fw = malloc(m * sizeof *w->fw);
    w->terms = malloc(k * sizeof *w->terms);
    int ok = w->key && w->below && w->above && w->obs && w->fw && w->terms;
    mixture *ms[2] = {&w->l, &w->g};
    for (int i = 0; i < 2; i++) {
        ms[i]->w = malloc(k * sizeof(double));
        ms[i]->mu = malloc(k * sizeof(double));
        ms[i]->sigma = malloc(k * sizeof(double));
        ms[i]->inner = malloc(k * sizeof(double));
        ok = ok && ms[i]->w && ms[i]->mu && ms[i]->sigma && ms[i]->inner;
    }
    w->pl = malloc(n_opt * sizeof *w->pl);
    w->pg = malloc(n_opt * sizeof *w->pg);
    if (ok && w->pl && w->pg)
        return 0;
    work_free(w);
    return cds_err_nomem(err, "out of memory for a TPE proposal over %zu trials", n);
}

/* below[] and above[] get the trial indices of each side, in trial order. */
static void split_trials(tpe_work *w, const double *losses, size_t n, double gamma)
{
    for (size_t i = 0; i < n; i++) {
        w->key[i].key = isfinite(losses[i]) ? losses[i] : INFINITY;
        w->key[i].idx = i;
    }
    qsort(w->key, n, sizeof *w->key, cmp_keyed);
    size_t cut = n_below_of(n, gamma);
    w->nb = w->na = 0;
    for (size_t r = 0; r < n; r++) {
        if (r < cut)
            w->below[w->nb++] = w->key[r].idx;
        else
            w->above[w->na++] = w->key[r].idx;
    }
    qsort(w->below, w->nb, sizeof *w->below, cmp_size);
    qsort(w->above, w->na, sizeof *w->above, cmp_size);
}

/* Hyperopt's linear_forgetting_weights: n observations in trial order, the
 * last lf at 1, the older ones np.linspace(1/n, 1, n - lf). */
static void forgetting_weights(size_t n, size_t lf, double *fw)
{
    if (n <= lf) {
        for (size_t i = 0; i < n; i++)
            fw[i] = 1.0;
        return;
    }
    size_t ramp = n - lf;
    double start = 1.0 / (double)n;
    double step = ramp > 1 ? (1.0 - start) / (double)(ramp - 1) : 0.0;
    for (size_t i = 0; i < ramp; i++)
        fw[i] = (double)i * step + start;
    if (ramp > 1)
        fw[ramp - 1] = 1.0;
    for (size_t i = ramp; i < n; i++)
        fw[i] = 1.0;
}

/* ---- the continuous estimators ---- */

/* A continuous dimension as the estimator sees it: the model space is the
 * value, or its log for the log kinds; [a, b] are the bounds there. */
typedef struct dim_model {
    const search_dim *d;
    int is_log, is_q;
    double a, b;
} dim_model;

static dim_model model_of(const search_dim *d)
{
    dim_model m = {d, d->kind == SEARCH_LOGUNIFORM || d->kind == SEARCH_QLOGUNIFORM,
                   d->kind == SEARCH_QUNIFORM || d->kind == SEARCH_QLOGUNIFORM, d->lo, d->hi};
    if (m.is_log) {
        m.a = log(d->lo);
        m.b = log(d->hi);
    }
    return m;
}

/* A stored value in the model space.  A qloguniform value rounded down to
 * 0 (or anything below lo) is raised to lo first, as Hyperopt does. */
static double to_model(const dim_model *m, double v)
{
    if (m->d->kind == SEARCH_QLOGUNIFORM)
        return log(fmax(v, fmax(TPE_EPS, m->d->lo)));
    return m->is_log ? log(v) : v;
}

/* Sigmas of the sorted centres mu[0..k), k >= 3: the larger gap to a
 * neighbour, the end ones their one gap. */
static void gap_sigmas(const double *mu, size_t k, double *sigma)
{
    sigma[0] = mu[1] - mu[0];
    sigma[k - 1] = mu[k - 1] - mu[k - 2];
    for (size_t j = 1; j + 1 < k; j++)
        sigma[j] = fmax(mu[j] - mu[j - 1], mu[j + 1] - mu[j]);
}

/* Hyperopt's adaptive_parzen_normal over obs[0..nobs) (model space, trial
 * order), then the mass of each component in [a, b].  w->key and w->fw are
 * scratch. */
static void build_mixture(tpe_work *w, const dim_model *dm, const double *obs, size_t nobs,
                          const search_tpe_opts *o, mixture *m)
{
    double prior_mu = 0.5 * (dm->b + dm->a), prior_sigma = dm->b - dm->a;
    for (size_t i = 0; i < nobs; i++) {
        w->key[i].key = obs[i];
        w->key[i].idx = i;
    }
    qsort(w->key, nobs, sizeof *w->key, cmp_keyed);
    size_t pos = 0; /* np.searchsorted(..., side="left"): before equal centres */
    while (pos < nobs && w->key[pos].key < prior_mu)
        pos++;
    size_t k = nobs + 1;
    int forget = (size_t)o->lf < nobs;
    if (forget)
        forgetting_weights(nobs, (size_t)o->lf, w->fw);
    for (size_t j = 0, i = 0; j < k; j++) {
        if (j == pos) {
            m->mu[j] = prior_mu;
            m->w[j] = o->prior_weight;
            continue;
        }
        m->mu[j] = w->key[i].key;
        m->w[j] = forget ? w->fw[w->key[i].idx] : 1.0;
        i++;
    }
    m->sigma[pos] = prior_sigma;
    if (nobs == 1)
        m->sigma[1 - pos] = 0.5 * prior_sigma;
    else if (nobs >= 2)
        gap_sigmas(m->mu, k, m->sigma);
    double min_sigma = prior_sigma / fmin(100.0, 1.0 + (double)k);
    double wsum = 0;
    for (size_t j = 0; j < k; j++) {
        m->sigma[j] = fmin(fmax(m->sigma[j], min_sigma), prior_sigma);
        wsum += m->w[j];
    }
    m->sigma[pos] = prior_sigma;
    m->accept = 0;
    for (size_t j = 0; j < k; j++) {
        m->w[j] /= wsum;
        m->inner[j] = m->w[j] * normal_mass(dm->a, dm->b, m->mu[j], m->sigma[j]);
        m->accept += m->inner[j];
    }
    m->k = k;
}

/* GMM1_lpdf without q: the truncated mixture's log density at x. */
static double log_density_normal(const mixture *m, double x, double *terms)
{
    double log_accept = log(m->accept);
    for (size_t j = 0; j < m->k; j++) {
        double z = (x - m->mu[j]) / fmax(m->sigma[j], TPE_EPS);
        terms[j] = -0.5 * z * z + log(m->w[j]) - log(m->sigma[j]) - LOG_SQRT_2PI - log_accept;
    }
    return log_sum_exp(terms, m->k);
}

/* LGMM1_lpdf without q: the log-normal mixture's log density at x > 0, not
 * divided by its mass in the bounds (as Hyperopt; see the top comment). */
static double log_density_lognormal(const mixture *m, double x, double *terms)
{
    double lx = log(x);
    for (size_t j = 0; j < m->k; j++) {
        double s = fmax(m->sigma[j], TPE_EPS);
        double z = (lx - m->mu[j]) / s;
        terms[j] = -0.5 * z * z - log(s) - lx - LOG_SQRT_2PI + log(m->w[j]);
    }
    return log_sum_exp(terms, m->k);
}

/* The q kinds: log of the mixture's mass of the values that round to x,
 * [max(x - q/2, lo), min(x + q/2, hi)] (for the log kinds also >= 0, and
 * mapped to the model space through log(max(v, 1e-12))), over its mass in
 * the bounds.  A negative or zero mass (x off the grid's reach) gives NaN
 * or -inf, as in Hyperopt. */
static double log_mass_quantized(const dim_model *dm, const mixture *m, double x)
{
    const search_dim *d = dm->d;
    double lb = fmax(x - 0.5 * d->q, d->lo), ub = fmin(x + 0.5 * d->q, d->hi);
    if (dm->is_log) {
        lb = log(fmax(fmax(lb, 0.0), TPE_EPS));
        ub = log(fmax(ub, TPE_EPS));
    }
    double p = 0;
    for (size_t j = 0; j < m->k; j++)
        p += m->w[j] * normal_mass(lb, ub, m->mu[j], m->sigma[j]);
    return log(p) - log(m->accept);
}

static double mixture_log_density(const dim_model *dm, const mixture *m, double x, double *terms)
{
    if (dm->is_q)
        return log_mass_quantized(dm, m, x);
    return dm->is_log ? log_density_lognormal(m, x, terms) : log_density_normal(m, x, terms);
}

/* One draw of standard-normal units t in [ta, tb] (erf units), by
 * bisection on the tail-safe mass: the inverse CDF of the truncated
 * normal. */
static double truncated_erf_units(double ta, double tb, double u)
{
    double target = u * erf_mass(ta, tb), lo = ta, hi = tb;
    for (int it = 0; it < MAX_BISECT; it++) {
        double mid = 0.5 * (lo + hi);
        if (mid <= lo || mid >= hi)
            break;
        if (erf_mass(ta, mid) < target)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* A draw from the mixture truncated to [a, b] (GMM1 / LGMM1 with bounds),
 * mapped back to a value: exp for the log kinds, rounded for the q kinds. */
static double sample_mixture(const dim_model *dm, const mixture *m, search_rng *r)
{
    double u = search_rng_unit(r) * m->accept, c = 0;
    size_t j = 0;
    while (j + 1 < m->k && (c += m->inner[j]) <= u)
        j++;
    while (j > 0 && m->inner[j] <= 0) /* rounding ran past the last live component */
        j--;
    double s = erf_scale(m->sigma[j]);
    double t = truncated_erf_units((dm->a - m->mu[j]) / s, (dm->b - m->mu[j]) / s, search_rng_unit(r));
    double v = fmin(fmax(m->mu[j] + t * s, dm->a), dm->b);
    if (dm->is_log)
        v = fmin(fmax(exp(v), dm->d->lo), dm->d->hi);
    return search_space_quantize(dm->d, v);
}

/* ---- the choice estimator ---- */

/* ap_randint_sampler: p[k] ∝ forgetting-weighted count of k + prior_weight. */
static void build_categorical(tpe_work *w, const double *obs, size_t nobs, size_t n_options,
                              const search_tpe_opts *o, double *p)
{
    forgetting_weights(nobs, (size_t)o->lf, w->fw);
    for (size_t k = 0; k < n_options; k++)
        p[k] = 0;
    for (size_t i = 0; i < nobs; i++)
        p[(size_t)obs[i]] += w->fw[i];
    double sum = 0;
    for (size_t k = 0; k < n_options; k++) {
        p[k] += o->prior_weight;
        sum += p[k];
    }
    for (size_t k = 0; k < n_options; k++)
        p[k] /= sum;
}

static size_t sample_categorical(const double *p, size_t n_options, search_rng *r)
{
    double u = search_rng_unit(r), c = 0;
    for (size_t k = 0; k + 1 < n_options; k++)
        if ((c += p[k]) > u)
            return k;
    return n_options - 1;
}

/* ---- one dimension's pair of estimators ---- */

/* Gathers dimension d's values of the trials idx[0..m) into w->obs (model
 * space for a continuous dimension, the option index for a choice). */
static void gather(tpe_work *w, const dim_model *dm, size_t dims, size_t d, const double *points, const size_t *idx,
                   size_t m)
{
    for (size_t i = 0; i < m; i++) {
        double v = points[idx[i] * dims + d];
        w->obs[i] = dm->d->kind == SEARCH_CHOICE ? v : to_model(dm, v);
    }
}

/* l (below) and g (above) of dimension d into w->l, w->g or w->pl, w->pg. */
static void build_dim(tpe_work *w, const dim_model *dm, size_t dims, size_t d, const double *points,
                      const search_tpe_opts *o)
{
    int choice = dm->d->kind == SEARCH_CHOICE;
    gather(w, dm, dims, d, points, w->below, w->nb);
    if (choice)
        build_categorical(w, w->obs, w->nb, dm->d->n_options, o, w->pl);
    else
        build_mixture(w, dm, w->obs, w->nb, o, &w->l);
    gather(w, dm, dims, d, points, w->above, w->na);
    if (choice)
        build_categorical(w, w->obs, w->na, dm->d->n_options, o, w->pg);
    else
        build_mixture(w, dm, w->obs, w->na, o, &w->g);
}

/* log l(x) - log g(x) of a built dimension; x an option index for a choice. */
static double dim_log_ratio(tpe_work *w, const dim_model *dm, double x)
{
    if (dm->d->kind == SEARCH_CHOICE)
        return log(w->pl[(size_t)x]) - log(w->pg[(size_t)x]);
    return mixture_log_density(dm, &w->l, x, w->terms) - mixture_log_density(dm, &w->g, x, w->terms);
}

static double dim_sample_below(tpe_work *w, const dim_model *dm, search_rng *r)
{
    if (dm->d->kind == SEARCH_CHOICE)
        return (double)sample_categorical(w->pl, dm->d->n_options, r);
    return sample_mixture(dm, &w->l, r);
}

/* ---- checks of the arguments ---- */

static int check_opts(const search_tpe_opts *o, cds_err *err)
{
    if (o->n_startup < 0 || o->n_ei < 1 || o->lf < 1)
        return cds_errf(err, "TPE options: n_startup (%d) must be >= 0, n_ei (%d) and lf (%d) >= 1", o->n_startup,
                        o->n_ei, o->lf);
    if (!(isfinite(o->gamma) && o->gamma > 0) || !(isfinite(o->prior_weight) && o->prior_weight > 0))
        return cds_errf(err, "TPE options: gamma (%g) and prior_weight (%g) must be finite and > 0", o->gamma,
                        o->prior_weight);
    return 0;
}

/* A stored value the estimators can use: finite, an option index for a
 * choice, positive for a loguniform (whose log is taken as is). */
static int value_ok(const search_dim *d, double v)
{
    if (!isfinite(v))
        return 0;
    if (d->kind == SEARCH_CHOICE)
        return v >= 0 && v < (double)d->n_options && v == floor(v);
    return d->kind != SEARCH_LOGUNIFORM || v > 0;
}

static const char *value_want(const search_dim *d)
{
    if (d->kind == SEARCH_CHOICE)
        return "an option index";
    return d->kind == SEARCH_LOGUNIFORM ? "a finite value > 0" : "a finite value";
}

static int check_history(const search_space *s, const double *points, const double *losses, size_t n, cds_err *err)
{
    if (n && (!points || !losses))
        return cds_errf(err, "TPE: %zu trials but no points or losses", n);
    size_t dims = search_space_dims(s);
    for (size_t i = 0; i < n; i++)
        for (size_t d = 0; d < dims; d++) {
            const search_dim *sd = search_space_dim(s, d);
            if (!value_ok(sd, points[i * dims + d]))
                return cds_errf(err, "TPE: trial %zu's %s is %g, not %s of that dimension: the history does not "
                                "match the search space", i, sd->name, points[i * dims + d], value_want(sd));
        }
    return 0;
}

static const search_tpe_opts *opts_or_defaults(const search_tpe_opts *o, search_tpe_opts *def)
{
    if (o)
        return o;
    search_tpe_defaults(def);
    return def;
}

/* ---- the entry points ---- */

int search_tpe_propose(const search_space *s, const search_tpe_opts *o, const double *points, const double *losses,
                       size_t n, uint64_t seed, uint64_t trial, double *out, cds_err *err)
{
    search_tpe_opts def;
    o = opts_or_defaults(o, &def);
    if (check_opts(o, err) != 0 || check_history(s, points, losses, n, err) != 0)
        return -1;
    if (n == 0 || trial < (uint64_t)o->n_startup) {
        search_space_sample(s, seed, trial, out);
        return 0;
    }
    tpe_work w;
    if (work_alloc(&w, s, n, err) != 0)
        return -1;
    split_trials(&w, losses, n, o->gamma);
    search_rng r;
    search_rng_seed(&r, seed, trial);
    size_t dims = search_space_dims(s);
    for (size_t d = 0; d < dims; d++) {
        dim_model dm = model_of(search_space_dim(s, d));
        build_dim(&w, &dm, dims, d, points, o);
        double best = 0, best_score = -INFINITY;
        for (int c = 0; c < o->n_ei; c++) {
            double x = dim_sample_below(&w, &dm, &r);
            double score = dim_log_ratio(&w, &dm, x);
            if (c == 0 || score > best_score) { /* np.argmax: the first best; NaN never wins */
                best = x;
                best_score = isnan(score) ? -INFINITY : score;
            }
        }
        out[d] = best;
    }
    work_free(&w);
    return 0;
}

int search_tpe_log_ratio(const search_space *s, const search_tpe_opts *o, size_t d, const double *points,
                         const double *losses, size_t n, const double *xs, size_t nx, double *out, cds_err *err)
{
    search_tpe_opts def;
    o = opts_or_defaults(o, &def);
    if (check_opts(o, err) != 0 || check_history(s, points, losses, n, err) != 0)
        return -1;
    const search_dim *sd = search_space_dim(s, d);
    if (!sd)
        return cds_errf(err, "TPE log ratio: dimension %zu out of range (the space has %zu)", d,
                        search_space_dims(s));
    for (size_t i = 0; i < nx; i++)
        if (!value_ok(sd, xs[i]))
            return cds_errf(err, "TPE log ratio: x[%zu] = %g is not %s of %s", i, xs[i], value_want(sd), sd->name);
    tpe_work w;
    if (work_alloc(&w, s, n, err) != 0)
        return -1;
    split_trials(&w, losses, n, o->gamma);
    dim_model dm = model_of(sd);
    build_dim(&w, &dm, search_space_dims(s), d, points, o);
    for (size_t i = 0; i < nx; i++)
        out[i] = dim_log_ratio(&w, &dm, xs[i]);
    work_free(&w);
    return 0;
}
