/* sweep_spec: a model-selection sweep (docs/sweeps.md) read from JSON and
 * expanded into the training specs of its models.
 *
 * A sweep names a dataset, a number of epochs, a seed, a list of model
 * objects, a base train object and a grid of optimizer, lr, batch and l2
 * values.  Expansion is models (outer) × optimizer × lr × batch × l2 (inner),
 * in that fixed order: model id i is the i-th configuration, so the same spec
 * always gives the same ids and byte-identical model specs.  Every model spec
 * is {"model": ..., "train": ...} as docs/models.md defines it, checked with
 * nn_model_validate and nn_train_cfg_parse, printed canonically (keys sorted,
 * compact, 17 significant digits).
 *
 * Errors are one line, "sweep spec <JSON path>: <problem and fix>". */
#ifndef CDS_SWEEP_SPEC_H
#define CDS_SWEEP_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "cds_err.h"

#define SWEEP_MAX_MODELS 4096
#define SWEEP_MAX_EPOCHS 10000

typedef struct sweep_spec sweep_spec;

/* Parses, checks and expands a sweep spec (JSON text). */
sweep_spec *sweep_spec_parse(const char *json, cds_err *err);
/* The same with a search's sampled batches rounded to whole multiples of
 * batch_multiple (a DDP or MA sweep's W ranks: docs/search.md). */
sweep_spec *sweep_spec_parse_for(const char *json, int batch_multiple, cds_err *err);
/* What only the queue knows when the spec is read: the multiple above, and
 * the checkpoint path the spec's "init" (SWEEP/MODEL[@EPOCH], a warm start)
 * names, which every model's train then gets as its "init" (NULL: the
 * models start from their seed; a spec with "init" parsed without it is
 * only checked). */
typedef struct sweep_spec_opts {
    int batch_multiple;
    const char *init_ckpt;
} sweep_spec_opts;
sweep_spec *sweep_spec_parse_with(const char *json, const sweep_spec_opts *o, cds_err *err);
/* The spec's "init" as written (NULL: none), and its parts: the sweep, the
 * model and the epoch (0: the latest checkpoint). */
const char *sweep_spec_init(const sweep_spec *s, char sweep_out[32], int *model, int *epoch);
void sweep_spec_free(sweep_spec *s);

const char *sweep_spec_mode(const sweep_spec *s); /* "mop", "ddp" or "ma" */
const char *sweep_spec_dataset(const sweep_spec *s);
int sweep_spec_epochs(const sweep_spec *s);
/* Failed attempts of a visit, evaluation or test scoring before it fails
 * ("max_attempts", 1 to 1000); 0 when the spec leaves the default (5). */
int sweep_spec_max_attempts(const sweep_spec *s);
uint64_t sweep_spec_seed(const sweep_spec *s);
/* M, the number of models after expansion (1 to SWEEP_MAX_MODELS). */
int sweep_spec_model_count(const sweep_spec *s);
/* Model i's spec, {"model":..,"train":..} as canonical JSON; NULL if i is
 * out of range. */
const char *sweep_spec_model(const sweep_spec *s, int i);
/* The M model specs as an array (for queue_sweep_def.model_specs). */
const char *const *sweep_spec_model_specs(const sweep_spec *s);
/* "model 3: cnn adam lr=0.001 batch=256 l2=0"; NULL if i is out of range. */
const char *sweep_spec_summary(const sweep_spec *s, int i);
/* The whole spec as canonical JSON, with the seed's default made explicit:
 * what is stored with the sweep, for display and replay. */
const char *sweep_spec_json(const sweep_spec *s);
/* The spec's "search": "" for the plain grid form, else "grid", "random" or
 * "tpe"; its budget of trials (random and tpe; 0 otherwise), and the seed
 * that draws them.  A TPE sweep starts with min(trials, 20) random models
 * (sweep_spec_model_count); the rest are proposed as trials finish. */
const char *sweep_spec_search(const sweep_spec *s);
int sweep_spec_trials(const sweep_spec *s);
uint64_t sweep_spec_search_seed(const sweep_spec *s);
/* Early stopping as the queue keeps it ("metric mode grace eta max_epochs
 * brackets": queue_sweep_def.early_stop), or NULL when the spec has none. */
const char *sweep_spec_early_stop(const sweep_spec *s);
/* Whether a MOP sweep lends idle workers to its models left as gangs
 * ("hybrid", on by default; queue_sweep_def.hybrid); 0 for DDP and MA. */
int sweep_spec_hybrid(const sweep_spec *s);
/* A search's model points, one JSON array of values (a choice: its option
 * index) per model in the space's order, for queue_sweep_def.points; NULL
 * for the plain grid form. */
const char *const *sweep_spec_points(const sweep_spec *s);

#endif
