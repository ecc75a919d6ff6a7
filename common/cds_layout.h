/* cds_layout: the files under DATA_ROOT, spelled in one place.
 *
 * DATA_ROOT is the shared filesystem every worker and tool mounts at the
 * same path (docs/data-root.md documents it whole):
 *
 *   DATA_ROOT/datasets/<name>/                      a dataset (etl)
 *     dataset.json                                  its version, splits, classes
 *     <split>/shard-<k>/                            train | valid | test; a shard
 *   DATA_ROOT/datasets/.<name>.incoming-<token>/    an unload in progress
 *   DATA_ROOT/datasets/.<name>.incoming-<token>.old-<token>/
 *                                                   the dataset it replaces, for a moment
 *   DATA_ROOT/sweeps/<S>/results.csv                one line per evaluated epoch
 *   DATA_ROOT/sweeps/<S>/models/<m>/                one model's checkpoints:
 *     v<N>-<token>.ckpt                             a visit's (token: 12 chars of the lease's)
 *     epoch-<e>.ckpt                                epoch e's end, until evaluated
 *     best-e<e>.ckpt                                the model's best evaluated epoch
 *
 * Each function writes one path into out (n bytes) and returns 0, or -1 with
 * err naming the path and the fix when it does not fit: a path is never cut
 * short, since a cut path names another file.  What a shard directory holds
 * is the shard writer's (etl_shard.h), not this module's. */
#ifndef CDS_LAYOUT_H
#define CDS_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "cds_err.h"

/* The most of a lease token that a visit's checkpoint name carries. */
#define CDS_LAYOUT_TOKEN_CHARS 12

int cds_layout_dataset_dir(char *out, size_t n, const char *root, const char *dataset, cds_err *err);
/* Where an unload writes until the dataset is moved into place. */
int cds_layout_staging_dir(char *out, size_t n, const char *root, const char *dataset, const char *token,
                           cds_err *err);
/* Where the finish step moves an older dataset of the same name for the
 * moment of the swap (--replace): beside the staging directory. */
int cds_layout_replaced_dir(char *out, size_t n, const char *staging_dir, const char *token, cds_err *err);
/* dataset_dir: a dataset's directory or its staging directory. */
int cds_layout_dataset_json(char *out, size_t n, const char *dataset_dir, cds_err *err);
int cds_layout_split_dir(char *out, size_t n, const char *dataset_dir, const char *split, cds_err *err);
int cds_layout_shard_dir(char *out, size_t n, const char *dataset_dir, const char *split, int shard, cds_err *err);
/* Shard k in a split's directory (the shard writer's final name). */
int cds_layout_split_shard(char *out, size_t n, const char *split_dir, int shard, cds_err *err);
/* k when name is exactly a shard's directory name "shard-<k>" (k >= 0),
 * else -1 (a temporary or set-aside shard, anything else). */
int cds_layout_shard_index(const char *name);
/* Shard k of a split of the dataset in place under root. */
int cds_layout_dataset_shard(char *out, size_t n, const char *root, const char *dataset, const char *split,
                             int shard, cds_err *err);

int cds_layout_results_csv(char *out, size_t n, const char *root, const char *sweep, cds_err *err);
int cds_layout_model_dir(char *out, size_t n, const char *root, const char *sweep, int model, cds_err *err);
/* In a model directory: the checkpoint a visit writes (version N, the
 * lease's token), the end of an epoch, the best epoch. */
int cds_layout_visit_ckpt(char *out, size_t n, const char *model_dir, int64_t version, const char *token,
                          cds_err *err);
int cds_layout_epoch_ckpt(char *out, size_t n, const char *model_dir, int epoch, cds_err *err);
int cds_layout_best_ckpt(char *out, size_t n, const char *model_dir, int epoch, cds_err *err);

/* What a file in a model directory is, by its name.  A name that begins as
 * one of them counts as that one, so the temporary and set-aside files of a
 * checkpoint (".tmp", ".retried") come with it; *number gets the version or
 * the epoch. */
typedef enum {
    CDS_LAYOUT_OTHER,
    CDS_LAYOUT_VISIT, /* v<N>-... */
    CDS_LAYOUT_EPOCH, /* epoch-<e>.ckp... */
    CDS_LAYOUT_BEST,  /* best-e<e>.ckp... */
} cds_layout_kind;
cds_layout_kind cds_layout_model_file(const char *name, int64_t *number);

#endif
