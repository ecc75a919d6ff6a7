/* etl_shard: one shard directory, DESIGN.md §3 "Shards".
 *
 *   <split_dir>/shard-<k>/x.npy          features, rows first
 *   <split_dir>/shard-<k>/y.npy          int32 class ids, one per row
 *   <split_dir>/shard-<k>/manifest.json  what the shard is and how to check it
 *
 * A writer builds the shard in <split_dir>/.shard-<k>.tmp-<random>/ and only
 * renames it to shard-<k> once every file is written, fsynced and described
 * in the manifest, so a reader never sees half a shard; a failed or aborted
 * writer removes its temporary directory.  A reader maps x and y read-only
 * and refuses a shard whose files disagree with the manifest (missing,
 * truncated, wrong shape, or, when asked, a wrong checksum).
 *
 * Manifest (JSON object): "format": "cds-shard", "format_version": 2,
 * "dataset", "split", "shard", "rows", "files": {"x.npy": {"dtype",
 * "shape", "bytes", "xxh128", "header_bytes"}, "y.npy": {...}}, plus
 * whatever the caller adds (classes, transform, source query, server,
 * snapshot, time).  "xxh128" (XXH3-128) covers the data, i.e. the file after
 * its header_bytes (128) bytes of .npy header: `tail -c +129 x.npy | xxhsum
 * -H2`.  Format 1 was the same with "sha256" (SHA-256) instead; readers
 * accept both. */
#ifndef CDS_ETL_SHARD_H
#define CDS_ETL_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "cds_err.h"
#include "etl_npy.h"

#define ETL_SHARD_FORMAT "cds-shard"
#define ETL_SHARD_FORMAT_VERSION 2

typedef struct etl_shard_writer etl_shard_writer;

/* x_row_shape: the shape of one row of features (e.g. 28,28,1 or 39). */
etl_shard_writer *etl_shard_begin(const char *split_dir, int shard, etl_dtype x_dtype,
                                  const int64_t *x_row_shape, int x_ndim, cds_err *err);
/* Appends n rows: x holds n rows of x_dtype values, y n class ids. */
int etl_shard_append(etl_shard_writer *w, const void *x, const int32_t *y, size_t n, cds_err *err);
/* Closes the files, writes manifest.json (the standard fields, then every
 * field of extra, which may be NULL; dataset and split are taken from extra's
 * "dataset" and "split", split defaulting to the split directory's name;
 * extra cannot override the standard fields), fsyncs, and renames the directory into place.  A
 * shard-<k> already there is replaced only if replace is set.  The writer is
 * freed either way; on failure nothing is left behind. */
int etl_shard_commit(etl_shard_writer *w, const json_t *extra, int replace, cds_err *err);
/* Removes everything the writer made and frees it. */
void etl_shard_abort(etl_shard_writer *w);
int64_t etl_shard_rows(const etl_shard_writer *w);

typedef struct etl_shard etl_shard;

/* Opens <dir> (a shard-<k> directory): parses the manifest, maps both files,
 * checks sizes, shapes and rows; verify = 1 also recomputes the SHA-256 of
 * each file. */
etl_shard *etl_shard_open(const char *dir, int verify, cds_err *err);
void etl_shard_close(etl_shard *s);
int64_t etl_shard_nrows(const etl_shard *s);
const etl_npy_view *etl_shard_x(const etl_shard *s);
const int32_t *etl_shard_y(const etl_shard *s);
const json_t *etl_shard_manifest(const etl_shard *s);

/* Rewrites one field of a committed shard's manifest atomically (temporary
 * file, fsync, rename): used to stamp the dataset version once every shard of
 * the dataset exists.  Takes the reference to value (as json_object_set_new),
 * also on failure.  The fields the reader checks (format, format_version,
 * shard, rows, files) are refused. */
int etl_shard_manifest_set(const char *dir, const char *field, json_t *value, cds_err *err);

#endif
