/* etl_shard: writing and reading one shard directory (DESIGN.md §3).
 *
 * Writer.  begin() makes the split directory (mkdir -p) and a fresh
 * temporary directory <split>/.shard-<k>.tmp-<8 hex> in it, and opens x.npy
 * and y.npy there.  commit() then:
 *
 *   1. closes both files (each flushes, rewrites its header and fsyncs, and
 *      hands back its checksum (XXH3-128) and size);
 *   2. writes manifest.json through a temporary file, fsync and rename;
 *   3. fsyncs the temporary directory, so its entries are durable;
 *   4. renames it to shard-<k> with RENAME_NOREPLACE, so an existing shard is
 *      never overwritten by accident (or by a concurrent writer).  If one is
 *      there and replace is set, the old one is first renamed aside to
 *      .shard-<k>.old-<hex>, the new one renamed in, and the old one put back
 *      if that fails;
 *   5. fsyncs the split directory (on failure the new shard is moved out and
 *      the old one back), then removes the old shard recursively.
 *
 * Invariant: at every moment shard-<k> is absent, the complete old shard, or
 * the complete new one; a failed commit, and abort(), remove the temporary
 * directory, so nothing of a failed writer remains.  Names starting with '.'
 * are never shards: readers and dataset listings skip them.
 *
 * Reader.  open() parses manifest.json, checks its format and version, the
 * rows, and for each file its presence, its size against the manifest's
 * "bytes", and (after mapping it) its dtype and shape against the manifest's;
 * both files must have `rows` rows and y must be int32 with one dimension.
 * With verify, the checksum of each file's data (the bytes after the 128-byte
 * header, which is what the writer's checksum covers) is recomputed from the
 * mapping: XXH3-128 ("xxh128") in format 2, SHA-256 ("sha256") in the
 * format-1 manifests of earlier versions, which are still read.  Every refusal names the shard directory, what is wrong, and that
 * re-running the unload rebuilds it. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cds_layout.h"
#include "cds_util.h"
#include "etl_shard.h"

#define FIX "re-run the unload to rebuild it"

struct etl_shard_writer {
    char split_dir[PATH_MAX];
    char tmp_dir[PATH_MAX];
    int shard;
    etl_npy_writer *x, *y;
    etl_dtype x_dtype;
    int x_ndim;
    int64_t x_row_shape[ETL_NPY_MAX_DIMS];
    int64_t rows;
};

struct etl_shard {
    char *dir;
    json_t *manifest;
    etl_npy_view x, y;
    int64_t rows;
};

/* snprintf into a path buffer; -1 (with err) if it does not fit. */
static int path_join(char *out, size_t cap, cds_err *err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int path_join(char *out, size_t cap, cds_err *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap)
        return cds_errf(err, "path too long: %.80s... (choose a shorter --data-root)", out);
    return 0;
}

/* ---- writing JSON durably ------------------------------------------------ */

/* Writes j to dir/name through dir/.name.tmp-<hex>, fsync and rename. */
static int write_json_atomic(const char *dir, const char *name, const json_t *j, cds_err *err)
{
    char path[PATH_MAX], tmp[PATH_MAX], hex[9];
    if (path_join(path, sizeof path, err, "%s/%s", dir, name) != 0 || cds_random_hex(hex, 4, err) != 0 ||
        path_join(tmp, sizeof tmp, err, "%s/.%s.tmp-%s", dir, name, hex) != 0)
        return -1;
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!text)
        return cds_err_nomem(err, "out of memory formatting %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    int rc = fd < 0 ? -1 : 0;
    if (rc == 0)
        rc = cds_write_all(fd, text, strlen(text));
    if (rc == 0)
        rc = cds_write_all(fd, "\n", 1);
    if (rc == 0)
        rc = fsync(fd);
    int e = errno;
    if (fd >= 0 && close(fd) != 0 && rc == 0) {
        rc = -1;
        e = errno;
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = -1;
        e = errno;
    }
    free(text);
    if (rc != 0) {
        unlink(tmp);
        return cds_errf(err, "writing %s: %s (%s)", path, strerror(e),
                        e == ENOSPC || e == EDQUOT ? "free some space or choose another --data-root"
                                                   : "check the --data-root filesystem");
    }
    return 0;
}

/* ---- writer -------------------------------------------------------------- */

static void writer_discard(etl_shard_writer *w)
{
    etl_npy_abort(w->x);
    etl_npy_abort(w->y);
    if (w->tmp_dir[0])
        cds_rmtree(w->tmp_dir);
    free(w);
}

static int make_tmp_dir(etl_shard_writer *w, cds_err *err)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        char hex[9];
        if (cds_random_hex(hex, 4, err) != 0 ||
            path_join(w->tmp_dir, sizeof w->tmp_dir, err, "%s/.shard-%d.tmp-%s", w->split_dir, w->shard, hex) != 0) {
            w->tmp_dir[0] = '\0';
            return -1;
        }
        if (mkdir(w->tmp_dir, 0755) == 0)
            return 0;
        int e = errno;
        w->tmp_dir[0] = '\0';
        if (e != EEXIST)
            return cds_errf(err, "cannot create a shard directory in %s: %s (check the --data-root permissions and space)",
                            w->split_dir, strerror(e));
    }
    return cds_errf(err, "cannot find a free temporary name in %s (too many leftover .shard-%d.tmp-* directories? remove them)",
                    w->split_dir, w->shard);
}

etl_shard_writer *etl_shard_begin(const char *split_dir, int shard, etl_dtype x_dtype, const int64_t *x_row_shape,
                                  int x_ndim, cds_err *err)
{
    if (shard < 0 || x_ndim < 0 || x_ndim >= ETL_NPY_MAX_DIMS) {
        cds_errf(err, "shard %d with %d feature dimensions is not valid (shard >= 0, at most %d dimensions)", shard,
                 x_ndim, ETL_NPY_MAX_DIMS - 1);
        return NULL;
    }
    etl_shard_writer *w = calloc(1, sizeof *w);
    if (!w) {
        cds_err_nomem(err, "out of memory starting shard %d in %s", shard, split_dir);
        return NULL;
    }
    w->shard = shard;
    w->x_dtype = x_dtype;
    w->x_ndim = x_ndim;
    if (x_ndim > 0)
        memcpy(w->x_row_shape, x_row_shape, (size_t)x_ndim * sizeof *x_row_shape);
    char path[PATH_MAX];
    int rc = path_join(w->split_dir, sizeof w->split_dir, err, "%s", split_dir);
    if (rc == 0 && (rc = cds_mkdirs(split_dir, err)) != 0) {
        char why[CDS_ERR_MAX];
        snprintf(why, sizeof why, "%s", err ? err->msg : "");
        cds_errf(err, "%s (choose a --data-root this process can write to)", why);
    }
    if (rc == 0)
        rc = make_tmp_dir(w, err);
    if (rc == 0 && path_join(path, sizeof path, err, "%s/x.npy", w->tmp_dir) == 0)
        w->x = etl_npy_create(path, x_dtype, x_row_shape, x_ndim, err);
    if (w->x && path_join(path, sizeof path, err, "%s/y.npy", w->tmp_dir) == 0)
        w->y = etl_npy_create(path, ETL_I32, NULL, 0, err);
    if (!w->y) {
        writer_discard(w);
        return NULL;
    }
    return w;
}

int etl_shard_append(etl_shard_writer *w, const void *x, const int32_t *y, size_t n, cds_err *err)
{
    if (etl_npy_append(w->x, x, n, err) != 0 || etl_npy_append(w->y, y, n, err) != 0)
        return -1;
    w->rows += (int64_t)n;
    return 0;
}

int64_t etl_shard_rows(const etl_shard_writer *w) { return w->rows; }

void etl_shard_abort(etl_shard_writer *w)
{
    if (w)
        writer_discard(w);
}

static json_t *file_entry(etl_dtype dtype, int64_t rows, const int64_t *row_shape, int ndim, int64_t bytes,
                          const char *sum)
{
    json_t *shape = json_array();
    json_array_append_new(shape, json_integer(rows));
    for (int d = 0; d < ndim; d++)
        json_array_append_new(shape, json_integer(row_shape[d]));
    return json_pack("{s:s, s:o, s:I, s:s, s:i}", "dtype", etl_dtype_name(dtype), "shape", shape, "bytes",
                     (json_int_t)bytes, "xxh128", sum, "header_bytes", ETL_NPY_HEADER);
}

/* The standard fields, then those of extra that do not clash with them. */
static json_t *build_manifest(const etl_shard_writer *w, const json_t *extra, const char *xsum, int64_t xbytes,
                              const char *ysum, int64_t ybytes)
{
    json_t *m = json_object(), *files = json_object();
    json_object_set_new(m, "format", json_string(ETL_SHARD_FORMAT));
    json_object_set_new(m, "format_version", json_integer(ETL_SHARD_FORMAT_VERSION));
    json_object_set_new(m, "shard", json_integer(w->shard));
    json_object_set_new(m, "rows", json_integer(w->rows));
    const json_t *split = extra ? json_object_get(extra, "split") : NULL;
    if (!json_is_string(split)) { /* the split directory's last component */
        char name[PATH_MAX];
        snprintf(name, sizeof name, "%s", w->split_dir);
        size_t n = strlen(name);
        while (n > 1 && name[n - 1] == '/')
            name[--n] = '\0';
        const char *slash = strrchr(name, '/');
        json_object_set_new(m, "split", json_string(slash ? slash + 1 : name));
    }
    json_object_set_new(files, "x.npy", file_entry(w->x_dtype, w->rows, w->x_row_shape, w->x_ndim, xbytes, xsum));
    json_object_set_new(files, "y.npy", file_entry(ETL_I32, w->rows, NULL, 0, ybytes, ysum));
    json_object_set_new(m, "files", files);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)extra, key, value) {
        if (!json_object_get(m, key))
            json_object_set(m, key, value);
    }
    return m;
}

/* rename(2) that fails with EEXIST instead of replacing the target. */
static int rename_noreplace(const char *from, const char *to)
{
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    struct stat st; /* a filesystem without RENAME_NOREPLACE: check, then rename */
    if (lstat(to, &st) == 0) {
        errno = EEXIST;
        return -1;
    }
    return rename(from, to);
}

/* Steps 4 and 5 of the commit; on failure the split dir is as it was. */
static int install(etl_shard_writer *w, int replace, cds_err *err)
{
    char final[PATH_MAX], aside[PATH_MAX] = "", hex[9];
    if (cds_layout_split_shard(final, sizeof final, w->split_dir, w->shard, err) != 0)
        return -1;
    if (rename_noreplace(w->tmp_dir, final) != 0) {
        int e = errno;
        if (e != EEXIST && e != ENOTEMPTY)
            return cds_errf(err, "cannot rename %s to %s: %s", w->tmp_dir, final, strerror(e));
        if (!replace)
            return cds_errf(err, "shard %s already exists; remove it or pass --replace to overwrite it", final);
        if (cds_random_hex(hex, 4, err) != 0 ||
            path_join(aside, sizeof aside, err, "%s/.shard-%d.old-%s", w->split_dir, w->shard, hex) != 0)
            return -1;
        if (rename(final, aside) != 0)
            return cds_errf(err, "cannot move the old shard %s aside: %s", final, strerror(errno));
        if (rename_noreplace(w->tmp_dir, final) != 0) {
            e = errno;
            rename(aside, final);
            return cds_errf(err, "cannot rename %s to %s: %s", w->tmp_dir, final, strerror(e));
        }
    }
    if (cds_fsync_dir(w->split_dir, err) != 0) {
        rename(final, w->tmp_dir); /* undo, so that the caller's cleanup removes it */
        if (aside[0])
            rename(aside, final);
        return -1;
    }
    if (aside[0])
        cds_rmtree(aside);
    return 0;
}

int etl_shard_commit(etl_shard_writer *w, const json_t *extra, int replace, cds_err *err)
{
    char xsum[ETL_SUM_HEX], ysum[ETL_SUM_HEX];
    int64_t xbytes = 0, ybytes = 0;
    int rc = etl_npy_close(w->x, xsum, &xbytes, err);
    w->x = NULL;
    if (rc == 0) {
        rc = etl_npy_close(w->y, ysum, &ybytes, err);
        w->y = NULL;
    }
    if (rc == 0 && extra && !json_is_object(extra))
        rc = cds_errf(err, "committing shard %d: the extra manifest fields are not a JSON object", w->shard);
    if (rc == 0) {
        json_t *m = build_manifest(w, extra, xsum, xbytes, ysum, ybytes);
        rc = write_json_atomic(w->tmp_dir, "manifest.json", m, err);
        json_decref(m);
    }
    if (rc == 0)
        rc = cds_fsync_dir(w->tmp_dir, err);
    if (rc == 0)
        rc = install(w, replace, err);
    if (rc == 0)
        w->tmp_dir[0] = '\0'; /* it is shard-<k> now */
    writer_discard(w);
    return rc;
}

/* ---- reader -------------------------------------------------------------- */

static int refuse(const char *dir, cds_err *err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int refuse(const char *dir, cds_err *err, const char *fmt, ...)
{
    char what[CDS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return cds_errf(err, "shard %s: %s; " FIX, dir, what);
}

static int is_hex(const char *s, size_t n)
{
    if (!s || strlen(s) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static int check_format(const char *dir, const json_t *m, int64_t *rows, int *version, cds_err *err)
{
    const char *format = json_string_value(json_object_get(m, "format"));
    if (!format || strcmp(format, ETL_SHARD_FORMAT) != 0)
        return refuse(dir, err, "manifest.json has format \"%s\", not \"%s\"", format ? format : "(none)",
                      ETL_SHARD_FORMAT);
    const json_t *v = json_object_get(m, "format_version");
    if (!json_is_integer(v))
        return refuse(dir, err, "manifest.json has no integer format_version");
    if (json_integer_value(v) != ETL_SHARD_FORMAT_VERSION && json_integer_value(v) != 1)
        return cds_errf(err, "shard %s: manifest format_version %lld is not %d, the one this cds reads (%s)", dir,
                        (long long)json_integer_value(v), ETL_SHARD_FORMAT_VERSION,
                        json_integer_value(v) > ETL_SHARD_FORMAT_VERSION ? "upgrade cds" : FIX);
    *version = (int)json_integer_value(v);
    const json_t *r = json_object_get(m, "rows");
    if (!json_is_integer(r) || json_integer_value(r) < 0)
        return refuse(dir, err, "manifest.json has no valid \"rows\"");
    *rows = json_integer_value(r);
    return 0;
}

/* Checks one file against its manifest entry and maps it. */
static int open_file(const char *dir, const json_t *files, const char *name, int format_version, int verify,
                     etl_npy_view *v, cds_err *err)
{
    const json_t *f = json_object_get(files, name);
    const json_t *shape = json_object_get(f, "shape"), *bytes = json_object_get(f, "bytes");
    int old = format_version == 1;
    const char *sum_field = old ? "sha256" : "xxh128";
    const char *sum = json_string_value(json_object_get(f, sum_field));
    etl_dtype dtype;
    if (!json_is_object(f) || etl_dtype_parse(json_string_value(json_object_get(f, "dtype")), &dtype) != 0 ||
        !json_is_array(shape) || json_array_size(shape) < 1 || json_array_size(shape) > ETL_NPY_MAX_DIMS ||
        !json_is_integer(bytes) || !is_hex(sum, old ? 64 : 32))
        return refuse(dir, err, "manifest.json lacks a valid entry for %s (dtype, shape, bytes, %s)", name, sum_field);
    char path[PATH_MAX];
    if (path_join(path, sizeof path, err, "%s/%s", dir, name) != 0)
        return -1;
    struct stat st;
    if (stat(path, &st) != 0)
        return refuse(dir, err, "%s is missing (%s)", name, strerror(errno));
    if (st.st_size != json_integer_value(bytes))
        return refuse(dir, err, "%s is %lld bytes but the manifest says %lld (truncated or replaced)", name,
                      (long long)st.st_size, (long long)json_integer_value(bytes));
    if (etl_npy_map(path, v, err) != 0)
        return -1;
    int same = v->dtype == dtype && (size_t)v->ndim == json_array_size(shape);
    for (int d = 0; same && d < v->ndim; d++)
        same = json_integer_value(json_array_get(shape, (size_t)d)) == v->shape[d];
    if (!same) {
        char got[160] = "", want[160] = "";
        for (int d = 0; d < v->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "x" : "", (long long)v->shape[d]);
        for (size_t d = 0; d < json_array_size(shape); d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? "x" : "",
                     (long long)json_integer_value(json_array_get(shape, d)));
        return refuse(dir, err, "%s holds %s %s but the manifest says %s %s", name, etl_dtype_name(v->dtype), got,
                      etl_dtype_name(dtype), want);
    }
    if (verify) {
        char got[65];
        if (old && etl_sha256_buf(v->data, v->data_bytes, got, err) != 0)
            return -1;
        if (!old)
            etl_sum_buf(v->data, v->data_bytes, got);
        if (strcmp(got, sum) != 0)
            return refuse(dir, err, "%s has checksum %s %.16s..., the manifest says %.16s... (the file is corrupt)", name,
                          sum_field, got, sum);
    }
    return 0;
}

etl_shard *etl_shard_open(const char *dir, int verify, cds_err *err)
{
    etl_shard *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        cds_err_nomem(err, "out of memory opening shard %s", dir);
        return NULL;
    }
    char path[PATH_MAX];
    json_error_t je;
    int rc = path_join(path, sizeof path, err, "%s/manifest.json", dir);
    if (rc == 0 && !(s->manifest = json_load_file(path, JSON_REJECT_DUPLICATES, &je)))
        rc = access(path, F_OK) != 0
                 ? refuse(dir, err, "no manifest.json (%s: the shard is incomplete or this is not a shard directory)",
                          strerror(errno))
                 : refuse(dir, err, "manifest.json is not valid JSON (%s at line %d)", je.text, je.line);
    if (rc == 0 && !json_is_object(s->manifest))
        rc = refuse(dir, err, "manifest.json is not a JSON object");
    int version = 0;
    if (rc == 0)
        rc = check_format(dir, s->manifest, &s->rows, &version, err);
    const json_t *files = json_object_get(s->manifest, "files");
    if (rc == 0)
        rc = open_file(dir, files, "x.npy", version, verify, &s->x, err);
    if (rc == 0)
        rc = open_file(dir, files, "y.npy", version, verify, &s->y, err);
    if (rc == 0 && (s->y.dtype != ETL_I32 || s->y.ndim != 1))
        rc = refuse(dir, err, "y.npy must be one int32 class id per row, but is %s with %d dimensions",
                    etl_dtype_name(s->y.dtype), s->y.ndim);
    if (rc == 0 && (s->x.shape[0] != s->rows || s->y.shape[0] != s->rows))
        rc = refuse(dir, err, "x.npy has %lld rows, y.npy %lld, the manifest %lld; they must agree",
                    (long long)s->x.shape[0], (long long)s->y.shape[0], (long long)s->rows);
    if (rc != 0) {
        etl_shard_close(s);
        return NULL;
    }
    return s;
}

void etl_shard_close(etl_shard *s)
{
    if (!s)
        return;
    etl_npy_unmap(&s->x);
    etl_npy_unmap(&s->y);
    json_decref(s->manifest);
    free(s->dir);
    free(s);
}

int64_t etl_shard_nrows(const etl_shard *s) { return s->rows; }
const etl_npy_view *etl_shard_x(const etl_shard *s) { return &s->x; }
const int32_t *etl_shard_y(const etl_shard *s) { return (const int32_t *)s->y.data; }
const json_t *etl_shard_manifest(const etl_shard *s) { return s->manifest; }

int etl_shard_manifest_set(const char *dir, const char *field, json_t *value, cds_err *err)
{
    static const char *const fixed[] = {"format", "format_version", "shard", "rows", "files"};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        if (strcmp(field, fixed[i]) == 0) {
            json_decref(value);
            return cds_errf(err, "shard %s: manifest field \"%s\" is written by the shard writer and cannot be changed",
                            dir, field);
        }
    }
    char path[PATH_MAX];
    json_error_t je;
    json_t *m = NULL;
    int rc = path_join(path, sizeof path, err, "%s/manifest.json", dir);
    if (rc == 0 && (!(m = json_load_file(path, JSON_REJECT_DUPLICATES, &je)) || !json_is_object(m)))
        rc = refuse(dir, err, "cannot read manifest.json (%s)", m ? "not a JSON object" : je.text);
    if (rc == 0 && json_object_set(m, field, value) != 0)
        rc = cds_errf(err, "shard %s: cannot set manifest field \"%s\" (out of memory?)", dir, field);
    if (rc == 0)
        rc = write_json_atomic(dir, "manifest.json", m, err);
    if (rc == 0)
        rc = cds_fsync_dir(dir, err);
    json_decref(m);
    json_decref(value);
    return rc;
}
