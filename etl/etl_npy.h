/* etl_npy: NumPy .npy files (format version 1.0), written as a stream and
 * read by mmap.
 *
 * A writer does not know the row count until the end, so it reserves a fixed
 * 128-byte header (magic, version, header length, the dict padded with spaces
 * to a multiple of 64 bytes, as the format requires) and rewrites it with the
 * final shape on close.  While writing it keeps the XXH3-128 of the data bytes
 * (the header is rewritten, so the checksum covers what follows it), counts
 * bytes, and on close flushes and fsyncs.  Any write error (ENOSPC, EFBIG)
 * becomes a message naming the file. */
#ifndef CDS_ETL_NPY_H
#define CDS_ETL_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "cds_err.h"

#define ETL_NPY_MAX_DIMS 8
#define ETL_NPY_HEADER 128
#define ETL_SUM_HEX 33 /* XXH3-128 as 32 hex digits and a NUL */

typedef enum { ETL_F32, ETL_U8, ETL_I32 } etl_dtype;

const char *etl_dtype_descr(etl_dtype t); /* "<f4", "|u1", "<i4" */
const char *etl_dtype_name(etl_dtype t);  /* "float32", "uint8", "int32" */
size_t etl_dtype_size(etl_dtype t);
int etl_dtype_parse(const char *name, etl_dtype *out); /* a name or a descr; -1 if neither */

typedef struct etl_npy_writer etl_npy_writer;

/* row_shape: the shape of one row (ndim may be 0 for a scalar per row). */
etl_npy_writer *etl_npy_create(const char *path, etl_dtype dtype, const int64_t *row_shape, int ndim,
                               cds_err *err);
/* Appends n rows of raw little-endian values (n * row elements * dtype size bytes). */
int etl_npy_append(etl_npy_writer *w, const void *data, size_t n_rows, cds_err *err);
/* Writes the final header, flushes, fsyncs and closes.  sum_hex gets 32
 * hex digits and a NUL (the XXH3-128 of the data, i.e. of the file from byte
 * ETL_NPY_HEADER on, in xxhsum's canonical form); *bytes the file size.  The writer is freed either way,
 * and on failure the file is removed.
 *
 * A write past RLIMIT_FSIZE comes back as EFBIG only if the process ignores
 * SIGXFSZ (whose default action kills it): callers set SIGXFSZ to SIG_IGN. */
int etl_npy_close(etl_npy_writer *w, char sum_hex[ETL_SUM_HEX], int64_t *bytes, cds_err *err);
/* Closes and deletes the file (a failed unload). */
void etl_npy_abort(etl_npy_writer *w);
int64_t etl_npy_rows(const etl_npy_writer *w);

typedef struct etl_npy_view {
    etl_dtype dtype;
    int ndim;                       /* including the row dimension */
    int64_t shape[ETL_NPY_MAX_DIMS];
    const void *data;               /* into the mapping */
    size_t data_bytes;
    void *map;
    size_t map_bytes;
} etl_npy_view;

/* Maps a .npy file read-only and checks its header against its size. */
int etl_npy_map(const char *path, etl_npy_view *v, cds_err *err);
void etl_npy_unmap(etl_npy_view *v);

/* XXH3-128 of n bytes in memory, as the writer computes it (the data of a
 * mapped view is what a writer's checksum covers). */
void etl_sum_buf(const void *data, size_t n, char hex[ETL_SUM_HEX]);
/* SHA-256 of n bytes, the checksum of format-1 manifests (still read). */
int etl_sha256_buf(const void *data, size_t n, char hex[65], cds_err *err);

#endif
