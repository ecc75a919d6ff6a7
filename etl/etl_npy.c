/* etl_npy: NumPy .npy files, written as a stream and read by mmap.
 *
 * Writer.  The file starts with a fixed 128-byte header: the magic
 * "\x93NUMPY", version 1.0, a little-endian uint16 header length (118), and
 * the dict "{'descr': '<f4', 'fortran_order': False, 'shape': (N, ...), }"
 * padded with spaces and ended by '\n', so that data starts at a multiple of
 * 64 as the format asks.  Since N is not known until the end, create()
 * writes the header with N = 0 and close() rewrites it in place with pwrite;
 * create() refuses a row shape whose header would not fit 128 bytes even with
 * a 12-digit row count.  Appends go through a 1 MiB buffer (an append larger
 * than the buffer is written straight from the caller's memory after the
 * buffer is flushed), and every appended byte goes into a running XXH3-128:
 * the checksum covers the data only, i.e. the file from byte 128 on, since
 * the header changes at close.  XXH3 rather than a cryptographic hash: the
 * checksum guards against truncation and corruption, not against an
 * attacker, and at tens of GB/s it costs the unload (and every verifying
 * reader) almost nothing, where SHA-256 took a fifth of the CPU of a
 * single-stream unload.  `tail -c +129 x.npy | xxhsum -H2` gives the same
 * digits.
 *
 * Errors.  The first failed write (ENOSPC, EDQUOT, EFBIG, EIO...) is kept in
 * the writer as a message naming the file and the fix; every later append
 * and the close return it, and close and abort unlink the file, so a failed
 * writer leaves nothing behind.  EFBIG is how a write past RLIMIT_FSIZE
 * fails only when the process ignores SIGXFSZ (its default action kills the
 * process): callers that may run under `ulimit -f` must set SIGXFSZ to
 * SIG_IGN, as etl_unload_all does.
 *
 * Reader.  etl_npy_map maps the whole file read-only, parses the header dict
 * (keys 'descr', 'fortran_order' and 'shape', in any order, nothing else, as
 * numpy itself requires), accepts only the three dtypes ETL writes, C order,
 * 1 to ETL_NPY_MAX_DIMS dimensions, and a file size of exactly header +
 * product(shape) * itemsize.  Versions 1.0, 2.0 and 3.0 are read (they
 * differ only in the width of the header length).
 *
 * Data is little-endian on disk, as on every machine this runs on; a
 * big-endian build is refused at compile time rather than writing files that
 * numpy would misread. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <xxhash.h>

#include "etl_npy.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "etl_npy writes the host's bytes as little-endian data; port it before building on a big-endian machine"
#endif

#define MAGIC "\x93NUMPY"
#define MAGIC_LEN 6
#define WRITE_BUF (1u << 20)

static const struct {
    const char *descr, *name;
    size_t size;
} dtypes[] = {
    [ETL_F32] = {"<f4", "float32", 4},
    [ETL_U8] = {"|u1", "uint8", 1},
    [ETL_I32] = {"<i4", "int32", 4},
};

const char *etl_dtype_descr(etl_dtype t) { return dtypes[t].descr; }
const char *etl_dtype_name(etl_dtype t) { return dtypes[t].name; }
size_t etl_dtype_size(etl_dtype t) { return dtypes[t].size; }

int etl_dtype_parse(const char *name, etl_dtype *out)
{
    for (int t = 0; name && t < (int)(sizeof dtypes / sizeof *dtypes); t++) {
        if (strcmp(name, dtypes[t].name) == 0 || strcmp(name, dtypes[t].descr) == 0) {
            *out = (etl_dtype)t;
            return 0;
        }
    }
    return -1;
}

/* ---- checksums ----------------------------------------------------------- */

static void hex_of(const unsigned char *d, unsigned n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (unsigned i = 0; i < n; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[2 * n] = '\0';
}

/* The canonical (big-endian) form, as xxhsum prints it. */
static void xxh128_hex(XXH128_hash_t h, char hex[ETL_SUM_HEX])
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    hex_of(c.digest, sizeof c.digest, hex);
}

void etl_sum_buf(const void *data, size_t n, char hex[ETL_SUM_HEX])
{
    xxh128_hex(XXH3_128bits(data, n), hex);
}

int etl_sha256_buf(const void *data, size_t n, char hex[65], cds_err *err)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned dn = 0;
    if (EVP_Digest(data, n, d, &dn, EVP_sha256(), NULL) != 1 || dn != 32)
        return cds_errf(err, "SHA-256 is not available from OpenSSL (check the libcrypto installation)");
    hex_of(d, dn, hex);
    return 0;
}

/* ---- header -------------------------------------------------------------- */

/* Formats the 128-byte header; -1 if the dict does not fit. */
static int format_header(char out[ETL_NPY_HEADER], etl_dtype dtype, int64_t rows, const int64_t *row_shape, int ndim)
{
    char dict[ETL_NPY_HEADER];
    size_t cap = ETL_NPY_HEADER - 10; /* dict and its '\n' */
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%lld,", dtypes[dtype].descr,
                     (long long)rows);
    for (int d = 0; d < ndim && n > 0 && (size_t)n < cap; d++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, " %lld,", (long long)row_shape[d]);
    if (n > 0 && (size_t)n < cap && ndim > 0)
        n--; /* numpy writes (N, a, b), with a trailing comma only for one dimension */
    if (n > 0 && (size_t)n < cap)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    if (n <= 0 || (size_t)n + 1 > cap)
        return -1;
    memcpy(out, MAGIC, MAGIC_LEN);
    out[6] = 1;
    out[7] = 0;
    out[8] = (char)(cap & 0xff);
    out[9] = (char)(cap >> 8);
    memcpy(out + 10, dict, (size_t)n);
    memset(out + 10 + n, ' ', cap - (size_t)n - 1);
    out[ETL_NPY_HEADER - 1] = '\n';
    return 0;
}

/* ---- writer -------------------------------------------------------------- */

struct etl_npy_writer {
    char *path;
    int fd;
    etl_dtype dtype;
    int ndim;
    int64_t row_shape[ETL_NPY_MAX_DIMS];
    size_t row_bytes;
    int64_t rows;
    uint64_t data_bytes;
    unsigned char *buf;
    size_t buf_len;
    XXH3_state_t *sum;
    int failed;
    cds_err first_err; /* the first write error, repeated by later calls */
    off_t written;     /* bytes written so far */
    off_t flushing;    /* write-back started up to here */
};

/* Start the disk writing every 8 MiB as the data arrives, so the fsync at
 * close finds little left to do: the unload overlaps its disk writes with
 * the network instead of paying for them all at the end. */
#define WRITE_BEHIND (8 << 20)

/* How to fix a failed write of errno e: common's one errno table, told
 * where an unload writes. */
static const char *write_hint(int e, char *buf, size_t n)
{
    static const cds_io_hints where = {.fs = "the --data-root filesystem", .elsewhere = "choose another --data-root",
                                       .again = "re-run the unload", .smaller = "use more shards"};
    return cds_err_io_hint(e, &where, buf, n);
}

/* Records the first error and returns -1. */
static int writer_fail(etl_npy_writer *w, const char *doing, int e, cds_err *err)
{
    if (!w->failed) {
        w->failed = 1;
        char hint[200];
        cds_errf(&w->first_err, "%s %s: %s (%s)", doing, w->path, strerror(e), write_hint(e, hint, sizeof hint));
    }
    if (err)
        *err = w->first_err;
    return -1;
}

/* The error that stopped the writer, again. */
static int writer_failed(const etl_npy_writer *w, cds_err *err)
{
    if (err)
        *err = w->first_err;
    return -1;
}

static int write_all(etl_npy_writer *w, const void *data, size_t n, cds_err *err)
{
    const unsigned char *p = data;
    while (n > 0) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return writer_fail(w, "writing", errno, err);
        if (k == 0)
            return writer_fail(w, "writing", EIO, err);
        p += k;
        n -= (size_t)k;
        w->written += k;
    }
    if (w->written - w->flushing >= WRITE_BEHIND) {
        /* Only a hint: a filesystem that cannot do it is synced by fsync. */
        sync_file_range(w->fd, w->flushing, w->written - w->flushing, SYNC_FILE_RANGE_WRITE);
        w->flushing = w->written;
    }
    return 0;
}

static int flush_buf(etl_npy_writer *w, cds_err *err)
{
    if (w->buf_len == 0)
        return 0;
    int rc = write_all(w, w->buf, w->buf_len, err);
    w->buf_len = 0;
    return rc;
}

static void writer_free(etl_npy_writer *w)
{
    if (w->fd >= 0)
        close(w->fd);
    XXH3_freeState(w->sum);
    free(w->buf);
    free(w->path);
    free(w);
}

etl_npy_writer *etl_npy_create(const char *path, etl_dtype dtype, const int64_t *row_shape, int ndim, cds_err *err)
{
    if ((unsigned)dtype >= sizeof dtypes / sizeof *dtypes || ndim < 0 || ndim >= ETL_NPY_MAX_DIMS) {
        cds_errf(err, "cannot create %s: dtype %d or %d row dimensions not supported (at most %d)", path, (int)dtype,
                 ndim, ETL_NPY_MAX_DIMS - 1);
        return NULL;
    }
    size_t row_bytes = dtypes[dtype].size;
    for (int d = 0; d < ndim; d++) {
        if (row_shape[d] <= 0 || (size_t)row_shape[d] > ((size_t)1 << 40) / row_bytes) {
            cds_errf(err, "cannot create %s: row dimension %d is %lld (each must be 1 or more, and a row under 1 TiB)",
                     path, d + 1, (long long)row_shape[d]);
            return NULL;
        }
        row_bytes *= (size_t)row_shape[d];
    }
    char hdr[ETL_NPY_HEADER];
    if (format_header(hdr, dtype, 999999999999LL, row_shape, ndim) != 0) {
        cds_errf(err, "cannot create %s: the row shape has too many digits for the %d-byte .npy header; use fewer dimensions",
                 path, ETL_NPY_HEADER);
        return NULL;
    }
    etl_npy_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path)) || !(w->buf = malloc(WRITE_BUF)) || !(w->sum = XXH3_createState()) ||
        XXH3_128bits_reset(w->sum) != XXH_OK) {
        cds_err_nomem(err, "out of memory creating %s", path);
        if (w) {
            w->fd = -1;
            writer_free(w);
        }
        return NULL;
    }
    w->dtype = dtype;
    w->ndim = ndim;
    if (ndim > 0)
        memcpy(w->row_shape, row_shape, (size_t)ndim * sizeof *row_shape);
    w->row_bytes = row_bytes;
    w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        int e = errno;
        char hint[200];
        cds_errf(err, "cannot create %s: %s (%s)", path, strerror(e), write_hint(e, hint, sizeof hint));
        writer_free(w);
        return NULL;
    }
    format_header(hdr, dtype, 0, row_shape, ndim);
    memcpy(w->buf, hdr, ETL_NPY_HEADER);
    w->buf_len = ETL_NPY_HEADER;
    return w;
}

int etl_npy_append(etl_npy_writer *w, const void *data, size_t n_rows, cds_err *err)
{
    if (w->failed)
        return writer_failed(w, err);
    if (n_rows > SIZE_MAX / w->row_bytes)
        return cds_errf(err, "appending %zu rows to %s: too many bytes", n_rows, w->path);
    size_t n = n_rows * w->row_bytes;
    if (n == 0)
        return 0;
    XXH3_128bits_update(w->sum, data, n);
    if (w->buf_len + n <= WRITE_BUF) {
        memcpy(w->buf + w->buf_len, data, n);
        w->buf_len += n;
    } else {
        if (flush_buf(w, err) != 0)
            return -1;
        if (n >= WRITE_BUF / 2) {
            if (write_all(w, data, n, err) != 0)
                return -1;
        } else {
            memcpy(w->buf, data, n);
            w->buf_len = n;
        }
    }
    w->rows += (int64_t)n_rows;
    w->data_bytes += n;
    return 0;
}

int64_t etl_npy_rows(const etl_npy_writer *w) { return w->rows; }

void etl_npy_abort(etl_npy_writer *w)
{
    if (!w)
        return;
    unlink(w->path);
    writer_free(w);
}

static int pwrite_all(etl_npy_writer *w, const void *data, size_t n, off_t off, cds_err *err)
{
    const char *p = data;
    while (n > 0) {
        ssize_t k = pwrite(w->fd, p, n, off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return writer_fail(w, "writing the header of", k < 0 ? errno : EIO, err);
        p += k;
        n -= (size_t)k;
        off += k;
    }
    return 0;
}

int etl_npy_close(etl_npy_writer *w, char sum_hex[ETL_SUM_HEX], int64_t *bytes, cds_err *err)
{
    char hdr[ETL_NPY_HEADER];
    int rc = w->failed ? writer_failed(w, err) : flush_buf(w, err);
    if (rc == 0 && format_header(hdr, w->dtype, w->rows, w->row_shape, w->ndim) != 0)
        rc = cds_errf(err, "closing %s: %lld rows do not fit the %d-byte .npy header; write fewer rows per file", w->path,
                      (long long)w->rows, ETL_NPY_HEADER);
    if (rc == 0)
        rc = pwrite_all(w, hdr, sizeof hdr, 0, err);
    if (rc == 0 && fsync(w->fd) != 0)
        rc = writer_fail(w, "fsync of", errno, err);
    if (rc == 0) {
        int fd = w->fd;
        w->fd = -1;
        if (close(fd) != 0)
            rc = writer_fail(w, "closing", errno, err);
    }
    if (rc == 0)
        xxh128_hex(XXH3_128bits_digest(w->sum), sum_hex);
    if (rc != 0) {
        etl_npy_abort(w);
        return -1;
    }
    if (bytes)
        *bytes = (int64_t)(ETL_NPY_HEADER + w->data_bytes);
    writer_free(w);
    return 0;
}

/* ---- reader -------------------------------------------------------------- */

/* A cursor over the header dict, a Python literal. */
typedef struct cursor {
    const char *p, *end;
} cursor;

static void skip_ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int eat(cursor *c, char ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A quoted string (no escapes: none of the values numpy writes have any). */
static int parse_str(cursor *c, char *out, size_t cap)
{
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
        return -1;
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        if (n + 1 >= cap || *c->p == '\\')
            return -1;
        out[n++] = *c->p++;
    }
    if (c->p >= c->end)
        return -1;
    c->p++;
    out[n] = '\0';
    return 0;
}

static int parse_word(cursor *c, const char *w)
{
    skip_ws(c);
    size_t n = strlen(w);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0)
        return 0;
    c->p += n;
    return 1;
}

static int parse_dim(cursor *c, int64_t *out)
{
    skip_ws(c);
    int64_t v = 0;
    const char *start = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (v > (INT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*c->p++ - '0');
    }
    if (c->p < c->end && *c->p == 'L') /* Python 2's long */
        c->p++;
    *out = v;
    return c->p > start ? 0 : -1;
}

static int parse_shape(cursor *c, etl_npy_view *v)
{
    if (!eat(c, '('))
        return -1;
    v->ndim = 0;
    while (!eat(c, ')')) {
        if (v->ndim == ETL_NPY_MAX_DIMS || parse_dim(c, &v->shape[v->ndim]) != 0)
            return -1;
        v->ndim++;
        if (!eat(c, ',')) {
            if (!eat(c, ')'))
                return -1;
            break;
        }
    }
    return 0;
}

static int dtype_of_descr(const char *d, etl_dtype *out)
{
    if (strcmp(d, "<f4") == 0)
        *out = ETL_F32;
    else if (strcmp(d, "|u1") == 0 || strcmp(d, "<u1") == 0 || strcmp(d, "u1") == 0)
        *out = ETL_U8;
    else if (strcmp(d, "<i4") == 0)
        *out = ETL_I32;
    else
        return -1;
    return 0;
}

static int bad_header(const char *path, const char *what, cds_err *err)
{
    return cds_errf(err, "%s: %s (the file is corrupt or not written by cds; re-run the unload)", path, what);
}

/* Parses the dict into v (dtype, ndim, shape). */
static int parse_dict(const char *s, size_t n, etl_npy_view *v, const char *path, cds_err *err)
{
    cursor c = {s, s + n};
    int seen_descr = 0, seen_order = 0, seen_shape = 0;
    if (!eat(&c, '{'))
        return bad_header(path, "the .npy header is not a dict", err);
    while (!eat(&c, '}')) {
        char key[32], descr[32];
        if (parse_str(&c, key, sizeof key) != 0 || !eat(&c, ':'))
            return bad_header(path, "the .npy header dict is malformed", err);
        if (strcmp(key, "descr") == 0) {
            if (parse_str(&c, descr, sizeof descr) != 0)
                return bad_header(path, "the .npy 'descr' is not a simple type string", err);
            if (dtype_of_descr(descr, &v->dtype) != 0)
                return cds_errf(err, "%s: dtype '%s' is not one cds reads (<f4, |u1, <i4); convert it with numpy's astype",
                                path, descr);
            seen_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0) {
            if (parse_word(&c, "True"))
                return cds_errf(err, "%s: the array is in Fortran order; save it in C order (numpy.ascontiguousarray)", path);
            if (!parse_word(&c, "False"))
                return bad_header(path, "the .npy 'fortran_order' is neither True nor False", err);
            seen_order = 1;
        } else if (strcmp(key, "shape") == 0) {
            if (parse_shape(&c, v) != 0)
                return bad_header(path, "the .npy 'shape' is not a tuple of at most 8 integers", err);
            seen_shape = 1;
        } else {
            return bad_header(path, "the .npy header has a key other than descr, fortran_order and shape", err);
        }
        if (!eat(&c, ',')) {
            if (!eat(&c, '}'))
                return bad_header(path, "the .npy header dict is malformed", err);
            break;
        }
    }
    skip_ws(&c);
    if (c.p != c.end)
        return bad_header(path, "the .npy header has bytes after its dict", err);
    if (!seen_descr || !seen_order || !seen_shape)
        return bad_header(path, "the .npy header lacks one of descr, fortran_order, shape", err);
    if (v->ndim < 1)
        return cds_errf(err, "%s: the array is a scalar; cds reads arrays with a row dimension", path);
    return 0;
}

/* The data size the shape calls for, or -1 on overflow. */
static int64_t shape_bytes(const etl_npy_view *v)
{
    int64_t n = (int64_t)dtypes[v->dtype].size;
    for (int d = 0; d < v->ndim; d++) {
        if (v->shape[d] != 0 && n > INT64_MAX / v->shape[d])
            return -1;
        n *= v->shape[d];
    }
    return n;
}

static int check_mapped(const unsigned char *m, size_t size, etl_npy_view *v, const char *path, cds_err *err)
{
    if (size < 10 || memcmp(m, MAGIC, MAGIC_LEN) != 0)
        return cds_errf(err, "%s is not a .npy file (no \\x93NUMPY magic; truncated or overwritten? re-run the unload)", path);
    size_t hstart, hlen;
    if (m[6] == 1) {
        hstart = 10;
        hlen = (size_t)m[8] | (size_t)m[9] << 8;
    } else if ((m[6] == 2 || m[6] == 3) && size >= 12) {
        hstart = 12;
        hlen = (size_t)m[8] | (size_t)m[9] << 8 | (size_t)m[10] << 16 | (size_t)m[11] << 24;
    } else {
        return cds_errf(err, "%s: .npy format version %d.%d is not one cds reads (1.0 to 3.0)", path, m[6], m[7]);
    }
    if (hlen > size - hstart)
        return bad_header(path, "the .npy header runs past the end of the file", err);
    if (parse_dict((const char *)m + hstart, hlen, v, path, err) != 0)
        return -1;
    size_t off = hstart + hlen;
    int64_t want = shape_bytes(v);
    if (want < 0 || (uint64_t)want != size - off) {
        char shape[160] = "";
        for (int d = 0; d < v->ndim; d++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", d ? "x" : "", (long long)v->shape[d]);
        return cds_errf(err, "%s holds %zu data bytes but its header says %s %s = %lld bytes (truncated or corrupt; re-run the unload)",
                        path, size - off, etl_dtype_name(v->dtype), shape, (long long)want);
    }
    if (off % dtypes[v->dtype].size != 0)
        return bad_header(path, "the .npy data is not aligned to its item size", err);
    v->data = m + off;
    v->data_bytes = size - off;
    return 0;
}

int etl_npy_map(const char *path, etl_npy_view *v, cds_err *err)
{
    memset(v, 0, sizeof *v);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cds_errf(err, "cannot open %s: %s%s", path, strerror(errno),
                        errno == ENOENT ? " (the shard is incomplete; re-run the unload)" : "");
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return cds_errf(err, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode) || st.st_size < 10) {
        close(fd);
        return cds_errf(err, "%s is not a .npy file (%s; re-run the unload)", path,
                        S_ISREG(st.st_mode) ? "too short" : "not a regular file");
    }
    size_t size = (size_t)st.st_size;
    void *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED)
        return cds_errf(err, "cannot map %s: %s", path, strerror(e));
    if (check_mapped(m, size, v, path, err) != 0) {
        munmap(m, size);
        memset(v, 0, sizeof *v);
        return -1;
    }
    v->map = m;
    v->map_bytes = size;
    return 0;
}

void etl_npy_unmap(etl_npy_view *v)
{
    if (v->map)
        munmap(v->map, v->map_bytes);
    memset(v, 0, sizeof *v);
}
