/* sweep_eta: the time a sweep has left, on documents built by hand in the
 * shape jobctl_sweep_load gives, each with the figure worked out here.
 *
 * The rules checked: no estimate before a measurement; a model's own timed
 * visits, else its group's, else everyone's (then "rough"); the visit in
 * flight counts for what its rate says is left; the work spreads over the K
 * shard workers but is never shorter than one model's own chain; each epoch
 * still to evaluate adds the mean measured evaluation; the tail adds one
 * evaluation (the test scoring). */
#include <math.h>
#include <string.h>

#include "sweep_eta.h"
#include "tap.h"

/* A visit {"seconds": s}. */
static json_t *visit(double s) { return json_pack("{s:f, s:i}", "seconds", s, "rows", 1000); }

/* A model: state, epoch (from 1), visited, group, timed visits, evaluated
 * epochs (each with valid_seconds ev), progress (NULL: none). */
static json_t *model(const char *state, int epoch, const char *visited, const char *group, int n_visits,
                     double visit_s, int n_evals, double ev, json_t *progress)
{
    json_t *visits = json_array(), *epochs = json_array();
    for (int i = 0; i < n_visits; i++)
        json_array_append_new(visits, visit(visit_s));
    for (int i = 0; i < n_evals; i++)
        json_array_append_new(epochs, json_pack("{s:i, s:f}", "epoch", i + 1, "valid_seconds", ev));
    json_t *m = json_pack("{s:s, s:i, s:s, s:s, s:o, s:o, s:o}", "state", state, "epoch", epoch, "visited", visited,
                          "group", group, "visits", visits, "epochs", epochs, "eval_errors", json_object());
    if (progress)
        json_object_set_new(m, "progress", progress);
    return m;
}

static json_t *doc(int epochs, int shards, json_t *models)
{
    char e[16], k[16];
    snprintf(e, sizeof e, "%d", epochs);
    snprintf(k, sizeof k, "%d", shards);
    return json_pack("{s:{s:s, s:s}, s:o}", "sweep", "epochs", e, "shards", k, "models", models);
}

static int near(double a, double b) { return fabs(a - b) < 1e-6 * (1 + fabs(b)); }

int main(void)
{
    sweep_eta r;

    /* Nothing timed yet: no estimate, however much is known of the shape. */
    json_t *d = doc(2, 2, json_pack("[o, o]", model("leased", 1, "00", "a", 0, 0, 0, 0, NULL),
                                    model("idle", 1, "00", "a", 0, 0, 0, 0, NULL)));
    sweep_eta_estimate(d, &r);
    ok(r.seconds_left < 0 && r.models_left == 2, "nothing measured: no estimate (%g), 2 models left", r.seconds_left);
    json_decref(d);

    /* The first heartbeat of the first visit: 250 of 1000 rows at 100
     * rows/s, so a visit is 10 s and this one has 7.5 s left.  Model 0 has 4
     * visits to go (this one included): 3 x 10 + 7.5 = 37.5 s.  Model 1, of
     * the same group, has not run: 4 x 10 = 40 s (borrowed: rough).  Over 2
     * workers 77.5 / 2 = 38.75 s, but model 1 alone needs 40 s; no
     * evaluation is timed yet (0 s each). */
    d = doc(2, 2, json_pack("[o, o]",
                            model("leased", 1, "00", "a", 0, 0, 0, 0,
                                  json_pack("{s:i, s:i, s:f}", "rows_done", 250, "rows_total", 1000, "samples_per_s",
                                            100.0)),
                            model("idle", 1, "00", "a", 0, 0, 0, 0, NULL)));
    sweep_eta_estimate(d, &r);
    ok(near(r.seconds_left, 40.0) && r.rough && r.models_measured == 1 && r.models_left == 2,
       "one visit in flight: 40 s left, the longest model's chain, rough, 1 of 2 models timed (%g)", r.seconds_left);
    json_decref(d);

    /* Timed visits: model 0 (group a) took 10 s a visit and has done its
     * first epoch (2 of 4 visits; epoch 1 evaluated in 3 s); model 1 (group
     * b) took 20 s a visit, 1 visit done; model 2 (group b) not started.
     * Left: model 0: 2 x 10 + 1 evaluation x 3 = 23; model 1: 3 x 20 + 2 x 3
     * = 66; model 2: 4 x 20 (group b's rate) + 2 x 3 = 86.  Sum 175 over 2
     * workers = 87.5 > 86; plus the tail, one evaluation: 90.5 s. */
    d = doc(2, 2, json_pack("[o, o, o]", model("idle", 2, "00", "a", 2, 10, 1, 3, NULL),
                            model("idle", 1, "10", "b", 1, 20, 0, 0, NULL), model("idle", 1, "00", "b", 0, 0, 0, 0, NULL)));
    sweep_eta_estimate(d, &r);
    ok(near(r.seconds_left, 90.5) && r.rough && r.models_measured == 2 && near(r.eval_seconds, 3.0) &&
           near(r.visit_seconds, (2 * 10 + 20) / 3.0),
       "own, then group rates; evaluations added: 90.5 s left (%g), rough", r.seconds_left);
    json_decref(d);

    /* Failed and cancelled models cost nothing more; a done one only its
     * evaluations.  Model 0 done with 1 of 2 epochs evaluated (4 s each),
     * model 1 failed, model 2 with 1 visit of 2 left at 5 s a visit (1 shard,
     * epoch 2 of 2, epoch 1 evaluated): 5 + 4 = 9 s for it; the sum is 4 + 9
     * = 13 over 1 worker; plus the tail 4: 17 s; every rate is its own. */
    d = doc(2, 1, json_pack("[o, o, o]", model("done", 2, "1", "a", 2, 5, 1, 4, NULL),
                            model("failed", 1, "0", "a", 0, 0, 0, 0, NULL), model("idle", 2, "0", "a", 1, 5, 1, 4, NULL)));
    sweep_eta_estimate(d, &r);
    ok(near(r.seconds_left, 17.0) && !r.rough && r.models_left == 1 && r.models_measured == 1,
       "done and failed models: 17 s left (%g), not rough", r.seconds_left);
    json_decref(d);

    /* Training over, evaluations left: 3 epochs to evaluate at 6 s over 3
     * workers, then the test scoring: 6 + 6 = 12 s. */
    d = doc(1, 3, json_pack("[o, o, o, o]", model("done", 1, "111", "a", 3, 5, 1, 6, NULL),
                            model("done", 1, "111", "a", 3, 5, 0, 0, NULL), model("done", 1, "111", "a", 3, 5, 0, 0, NULL),
                            model("done", 1, "111", "a", 3, 5, 0, 0, NULL)));
    sweep_eta_estimate(d, &r);
    ok(near(r.seconds_left, 12.0) && r.models_left == 0, "only evaluations left: 12 s (%g)", r.seconds_left);
    json_decref(d);

    /* A malformed document (no shape) gives no estimate rather than a wrong one. */
    d = json_pack("{s:{}, s:[]}", "sweep", "models");
    sweep_eta_estimate(d, &r);
    ok(r.seconds_left < 0, "a document without a shape: no estimate");
    json_decref(d);
    return tap_done();
}
