/* nn_optim: the "train" half of a spec (docs/models.md) and the optimisers
 * that apply it to a model's parameters.
 *
 * An optimiser owns one state tensor per parameter and per moment (SGD: the
 * momentum buffer "buf:<param>"; Adam: "m:<param>" and "v:<param>") and the
 * step count t.  nn_optim_step applies the gradient the model left in each
 * parameter's g, adding the L2 term (2·l2·w) for the decayed weights first,
 * in parameter order, so a step is a pure function of (weights, gradients,
 * state, lr): the basis of bit-identical resumes.
 *
 * An optimiser switches a sparse mlp's embedding weight (fc0.weight) to a
 * row-sparse gradient (nn_model_set_row_grads); exact SGD and Adam update
 * every row from it, bit for bit as from the dense gradient.
 * With "lazy", the embedding weight is updated by lazy Adam
 * (torch.optim.SparseAdam) from those rows instead: only the rows of the batch's
 * indices move, with their m and v, and the L2 term is added to those rows
 * only.  Every other parameter gets ordinary Adam.  The state keeps its
 * full shapes and the one step count t, so checkpoints do not change. */
#ifndef CDS_NN_OPTIM_H
#define CDS_NN_OPTIM_H

#include <stdint.h>
#include "cds_err.h"
#include "nn_model.h"

typedef enum nn_sched_kind { NN_SCHED_CONSTANT, NN_SCHED_STEP, NN_SCHED_COSINE } nn_sched_kind;

typedef struct nn_train_cfg {
    int adam;               /* 0: SGD with momentum */
    int lazy;               /* Adam only: the embedding weight gets lazy (sparse) Adam; see docs/models.md */
    int tf32;               /* a GPU may use TF32 for float32 GEMMs and convolutions (else exact float32) */
    int cuda_graphs;        /* a GPU replays each full-batch training step as one CUDA graph */
    char *init;             /* warm start: the checkpoint a new trainer takes its weights from (NULL: none) */
    double lr, momentum, beta1, beta2, eps, l2;
    int batch;
    uint64_t seed;
    nn_sched_kind sched;
    int sched_every;        /* step: epochs per decay */
    double sched_gamma;     /* step: factor */
    int sched_epochs;       /* cosine: period T */
    double sched_min_lr;    /* cosine: floor */
    float scale;            /* input normalisation */
    int n_norm;
    float mean[16], std[16];
    char *json;             /* canonical JSON of the object (keys sorted) */
} nn_train_cfg;

/* Parses a spec's "train" object (JSON text); errors name the field. */
int nn_train_cfg_parse(const char *train_json, nn_train_cfg *c, cds_err *err);
void nn_train_cfg_free(nn_train_cfg *c);
/* Whether a parsed train spec can train a model spec (JSON text of the
 * model object): "lazy" needs a sparse mlp.  nn_optim_new makes the same
 * check; this one lets a sweep refuse the pair before any worker runs it. */
int nn_train_cfg_check_model(const nn_train_cfg *c, const char *model_json, cds_err *err);
/* The learning rate of an epoch (counted from 0) under the schedule. */
double nn_train_cfg_lr(const nn_train_cfg *c, int64_t epoch);

typedef struct nn_optim nn_optim;

nn_optim *nn_optim_new(nn_model *m, const nn_train_cfg *c, cds_err *err);
void nn_optim_free(nn_optim *o);
int nn_optim_step(nn_optim *o, double lr, cds_err *err);
int64_t nn_optim_t(const nn_optim *o);
void nn_optim_set_t(nn_optim *o, int64_t t);
const char *nn_optim_name(const nn_optim *o); /* "sgd" or "adam" */
size_t nn_optim_state_count(const nn_optim *o);
/* The i-th state tensor and its name ("m:layer1.0.conv1.weight", ...). */
nn_tensor *nn_optim_state(nn_optim *o, size_t i, const char **name);

#endif
