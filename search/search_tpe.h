/* search_tpe: the Tree-structured Parzen Estimator (Bergstra et al. 2011)
 * as Hyperopt implements it (hyperopt/tpe.py), over a flat search_space.
 *
 * Given the finished trials (their points and losses, lower is better, in
 * trial order), the first n_below = min(ceil(gamma·sqrt(n)), 25) by loss
 * (ties by trial order) are "below", the rest "above".  Each dimension gets
 * two Parzen estimators, l(x) from the below points and g(x) from the above
 * ones, each a mixture with one component per observation plus a prior
 * component (weight prior_weight), observations weighted by Hyperopt's
 * linear forgetting (the last lf at weight 1, older ones ramping down):
 *  - uniform / quniform: a truncated normal mixture on [lo, hi], the prior
 *    at (lo+hi)/2 with sigma hi-lo, each component's sigma from its
 *    neighbours' distances clipped to [prior_sigma/min(100, N+2), prior_sigma]
 *    for N observations (adaptive_parzen_normal); a q kind's likelihood is
 *    the mass of [x - q/2, x + q/2] cut at the bounds;
 *  - loguniform / qloguniform: the same in log space (a log-normal mixture);
 *  - choice: a categorical, each option's weight the forgetting-weighted
 *    count plus prior_weight (Hyperopt's hp.choice is a randint, whose
 *    posterior adds prior_weight to every option).
 * search_tpe.c's top comment has the details and the few deliberate
 * differences (ties go by trial order; Hyperopt's unstable argsort leaves
 * them to the CPU).
 * A proposal draws n_ei candidates of each dimension from l(x) and keeps,
 * per dimension, the one with the largest log l(x) - log g(x) (Hyperopt
 * chooses each dimension independently).  The first n_startup trials are
 * random (search_space_sample).
 *
 * Everything is a pure function of its arguments: the proposal for trial t
 * draws from the stream (seed, t), so a proposal lost with its worker is
 * made again, identical, from the same history. */
#ifndef CDS_SEARCH_TPE_H
#define CDS_SEARCH_TPE_H

#include <stddef.h>
#include <stdint.h>

#include "cds_err.h"
#include "search_space.h"

typedef struct search_tpe_opts {
    int n_startup;       /* random trials first (Hyperopt: 20) */
    double gamma;        /* the below fraction (0.25) */
    int n_ei;            /* expected-improvement candidates (24) */
    double prior_weight; /* (1.0) */
    int lf;              /* linear forgetting: observations at full weight (25) */
} search_tpe_opts;

/* Hyperopt's defaults. */
void search_tpe_defaults(search_tpe_opts *o);

/* Proposes trial `trial` into out[dims]: random when trial < n_startup or
 * no trial has finished, else TPE over the n finished trials (points[i·dims
 * + d], losses[i]; a loss that is not finite counts as the worst).  o NULL
 * means the defaults.  0, or -1 with err: options out of range, or a stored
 * value the space cannot hold (not finite, a choice index out of range, a
 * loguniform value <= 0). */
int search_tpe_propose(const search_space *s, const search_tpe_opts *o, const double *points, const double *losses,
                       size_t n, uint64_t seed, uint64_t trial, double *out, cds_err *err);

/* log l(x) - log g(x) of dimension d at each of xs[0..nx) (a value, or an
 * option index for a choice), over the same history: what a proposal
 * maximises, exposed for the check against Hyperopt (bench/search).  An x
 * outside a q kind's reach (its rounding cell misses [lo, hi]) gives NaN or
 * -inf, as in Hyperopt; an x the dimension cannot hold (as for the history)
 * is an error. */
int search_tpe_log_ratio(const search_space *s, const search_tpe_opts *o, size_t d, const double *points,
                         const double *losses, size_t n, const double *xs, size_t nx, double *out, cds_err *err);

#endif
