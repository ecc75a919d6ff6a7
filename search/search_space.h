/* search_space: a sweep's search space (docs/search.md): named dimensions,
 * each written as Hyperopt and Cerebro write them, parsed from JSON, sampled
 * at random, and turned into a model's {"model", "train"} spec.
 *
 *   {"lr": {"loguniform": [1e-4, 1e-1]}, "batch": {"choice": [32, 64, 128]},
 *    "momentum": {"uniform": [0.8, 0.99]}, "width": {"quniform": [0.25, 1, 0.25]},
 *    "model": {"choice": [{"arch": "cnn", ...}, {"arch": "mlp", ...}]}}
 *
 * Kinds: choice [options] (any JSON values), uniform [lo, hi], quniform
 * [lo, hi, q], loguniform [lo, hi] and qloguniform [lo, hi, q], with lo > 0
 * for the log kinds: bounds are VALUES, not logs (Hyperopt's loguniform(a, b)
 * is e^a..e^b; here [1e-4, 1e-1] means 1e-4..1e-1).  A q kind draws x from
 * its continuous kind and keeps round(x / q)·q, as Hyperopt does.
 *
 * A point is one double per dimension, in the space's order (dimensions
 * sorted by name, so the JSON's key order does not matter): the value, or
 * for a choice the option's index.
 *
 * Names.  lr, batch, l2, optimizer and momentum set the train object's
 * field; "model" is a choice of model objects (replacing the sweep's one
 * model); any other name sets that field of the model object (width,
 * hidden, dropout, ...).  batch, drawn or chosen, is rounded to a whole
 * number (and to a multiple of `multiple`, search_space_render's argument:
 * DDP and MA sweeps). */
#ifndef CDS_SEARCH_SPACE_H
#define CDS_SEARCH_SPACE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "cds_err.h"

#define SEARCH_MAX_DIMS 32

typedef enum search_kind {
    SEARCH_CHOICE,
    SEARCH_UNIFORM,
    SEARCH_QUNIFORM,
    SEARCH_LOGUNIFORM,
    SEARCH_QLOGUNIFORM
} search_kind;

typedef struct search_dim {
    const char *name;
    search_kind kind;
    double lo, hi; /* bounds as values (the log kinds too); unused for a choice */
    double q;      /* the step of a q kind; 0 otherwise */
    size_t n_options; /* a choice's option count; 0 otherwise */
} search_dim;

typedef struct search_space search_space;

/* Parses a space object; path names it in errors ("sweep spec $.search.space"):
 * each error is one line with the JSON path of the problem and the fix. */
search_space *search_space_parse(const json_t *space, const char *path, cds_err *err);
void search_space_free(search_space *s);

size_t search_space_dims(const search_space *s);
const search_dim *search_space_dim(const search_space *s, size_t d);
/* The index of dimension name, or -1. */
int search_space_find(const search_space *s, const char *name);
/* Option k of choice dimension d (borrowed). */
const json_t *search_space_option(const search_space *s, size_t d, size_t k);

/* v[d] for every dimension: a uniform draw of each from the stream of
 * (seed, trial) (search_rng.h), quantised for the q kinds. */
void search_space_sample(const search_space *s, uint64_t seed, uint64_t trial, double *v);
/* A q kind's round(x / q)·q; x itself for the others. */
double search_space_quantize(const search_dim *d, double x);

/* A point as the queue keeps it (<m>.point, read back by TPE): a JSON
 * array, one value a dimension, 17 significant digits; malloc'd, NULL when
 * out of memory.  search_space_point_parse reads one back into v: 0, or -1
 * when it is not an array of this space's size. */
char *search_space_point_json(const search_space *s, const double *v);
int search_space_point_parse(const search_space *s, const char *text, double *v);

/* Point v applied to a base model object and base train object: a new
 * {"model": ..., "train": ...} object (the caller's), or NULL with the
 * dimension at fault in err.  batch is rounded to a whole multiple of
 * `multiple` (at least one multiple). */
json_t *search_space_render(const search_space *s, const double *v, const json_t *base_model,
                            const json_t *base_train, int multiple, cds_err *err);

#endif
