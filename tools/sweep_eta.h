/* sweep_eta: how long a MOP sweep has left, from what has been measured.
 *
 * The input is the document jobctl_sweep_load builds (its models' recorded
 * visits with their seconds, the visit in flight with its rows done and
 * samples per second, the recorded evaluations with theirs).  The estimate
 * is never made from nothing: until one visit has been timed (the first
 * heartbeat of the first visit carries a rate) there is none.
 *
 * Model.  A model's visit costs what its own visits cost so far (their mean
 * seconds); a model not timed yet costs what the timed models of the same
 * architecture and batch cost, else what every timed model costs (the
 * estimate is then "rough" and says how many models it rests on).  A visit
 * in flight has the part its rows-done leave.  Each remaining epoch adds an
 * evaluation at the mean measured evaluation time.  K workers serve the K
 * shards, and a model's visits run one after another, so the time left is
 * the larger of (all work left) / K and the longest single model's work
 * left, plus one evaluation and a test scoring for the sweep's tail.  This
 * follows the sweep's own schedule (no barrier between models, the least
 * advanced model first), so it neither assumes perfect packing nor idle
 * shards. */
#ifndef CDS_SWEEP_ETA_H
#define CDS_SWEEP_ETA_H

#include <jansson.h>

typedef struct sweep_eta {
    double seconds_left;  /* < 0: no estimate yet (nothing measured) */
    int models_left;      /* models still to train (not done, failed or cancelled) */
    int models_measured;  /* of those, how many have a rate of their own */
    int rough;            /* some model's rate is borrowed from other models */
    double visit_seconds; /* mean measured visit, over every timed visit (0: none) */
    double eval_seconds;  /* mean measured evaluation (0: none) */
} sweep_eta;

/* Estimates the time left of the sweep document s (jobctl_sweep_load). */
void sweep_eta_estimate(const json_t *s, sweep_eta *out);

#endif
