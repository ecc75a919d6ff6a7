/* nn_ckpt: msgpack checkpoints (docs/checkpoint.md is the format).
 *
 * Writing.  The checkpoint is packed by msgpack-c's packer straight into a
 * small buffered writer over the temporary file <path>.tmp-<16 hex>, so a
 * 300 MB checkpoint never exists in memory: tensor data goes from the
 * caller's arrays to write(2) in bin chunks.  The writer feeds every byte to
 * zlib's crc32() as it passes, so when the last optimiser tensor is out the
 * CRC of everything written so far is the one the "crc32" entry stores.  The
 * first failing write or fsync is remembered (with the byte offset) and every
 * later write is a no-op, so the packing code need not test each call; the
 * error is reported once, the temporary file unlinked, and the old file at
 * path never touched.  Only after fsync and close succeed is the file renamed
 * over path, then the directory is fsynced so the rename survives a crash.
 *
 * Bytes depend on the content only: keys are in a fixed order, the integers
 * of the format use fixed-width encodings, JSON objects are packed with their
 * keys sorted (so the key order of the caller's JSON text does not matter),
 * and nothing about the host or the time is stored.
 *
 * Reading.  Two passes over the file through pread(2): first the CRC of all
 * but the last 11 bytes (the "crc32" key and its uint32) is compared with the
 * stored one, so any truncation or bit flip is reported as such before
 * anything is parsed; then a small pull parser of our own walks the map in
 * its fixed order.  It is ours rather than msgpack-c's unpacker because it
 * copies bin chunks straight into the float arrays (the unpacker would hold
 * the whole file) and checks every length against the bytes left in the file
 * before allocating, so a crafted file that passes the CRC still cannot make
 * it allocate more than a small multiple of the file's size (a JSON value
 * costs jansson more than its msgpack byte) or read past its end.  The reader
 * accepts any valid msgpack encoding of an integer and any chunking of the
 * tensor data; only the writer is strict about encodings.
 *
 * Tensor data is float32 little-endian and copied as bytes, so this file
 * assumes a little-endian host (checked at compile time). */
#include "nn_ckpt.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <msgpack.h>
#include <zlib.h>

#include "cds_util.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "nn_ckpt copies float32 data as little-endian bytes; add byte swapping for this host"
#endif

#define N_TOP_KEYS 13
#define N_TENSOR_KEYS 4
/* The "crc32" key (fixstr of 5) and its value (uint32: 0xce + 4 bytes). */
#define TAIL_LEN 11
static const unsigned char tail_tag[7] = {0xa5, 'c', 'r', 'c', '3', '2', 0xce};
/* Every version-1 file starts with these bytes: fixmap of 13, "format",
 * "cds-checkpoint", "format_version", positive fixint 1. */
static const unsigned char head_magic[] = {
    0x8d, 0xa6, 'f', 'o', 'r', 'm', 'a', 't', 0xae, 'c', 'd', 's', '-', 'c', 'h', 'e', 'c', 'k', 'p', 'o',
    'i',  'n',  't', 0xae, 'f', 'o', 'r', 'm', 'a', 't', '_', 'v', 'e', 'r', 's', 'i', 'o', 'n', 0x01};
#define JSON_MAX_DEPTH 128
#define IO_BUF (64 * 1024)

/* zlib's crc32() takes a 32-bit length. */
static uLong crc_update(uLong crc, const void *p, size_t n)
{
    const Bytef *b = p;
    while (n > 0) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = crc32(crc, b, k);
        b += k;
        n -= k;
    }
    return crc;
}

static int tensor_bytes(const nn_ckpt_tensor *t, size_t *bytes)
{
    size_t b = sizeof(float);
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0)
            return -1;
        if (t->shape[d] == 0) {
            *bytes = 0;
            return 0;
        }
    }
    for (int d = 0; d < t->ndim; d++) {
        if ((uint64_t)t->shape[d] > ((size_t)1 << 62) / b)
            return -1;
        b *= (size_t)t->shape[d];
    }
    *bytes = b;
    return 0;
}

/* ======================================================================
 * writing
 * ====================================================================== */

typedef struct ck_writer {
    const char *path, *tmp;
    const nn_ckpt_save_opts *o;
    int fd;
    unsigned char *buf;
    size_t len;
    uint64_t off;     /* bytes given to w_put so far */
    uint64_t written; /* bytes the file has taken: where a failing write was */
    uLong crc;
    int failed;
    cds_err first_err;
} ck_writer;

static const char *write_hint(int e)
{
    switch (e) {
    case ENOSPC: case EDQUOT: return "free some space or checkpoint to another directory";
    case EFBIG: return "the file size limit (ulimit -f) or the filesystem's largest file was reached; raise the limit";
    case EIO: return "the disk reported an I/O error; check it, then retry";
    case EROFS: return "the filesystem is read-only; checkpoint to another directory";
    case EACCES: case EPERM: return "this user may not write there; fix the permissions or choose another directory";
    case ENOENT: return "the directory does not exist; create it or fix the path";
    case ENOTDIR: return "a part of the path is not a directory; fix the path";
    default: return "check the filesystem, then retry";
    }
}

static int w_fail(ck_writer *w, const char *doing, int e)
{
    if (!w->failed) {
        w->failed = 1;
        cds_errf(&w->first_err, "saving checkpoint %s: %s %s at byte %llu: %s (%s)", w->path, doing, w->tmp,
                 (unsigned long long)w->written, strerror(e), write_hint(e));
    }
    return -1;
}

/* pack_json fails without a write error only when it runs out of memory. */
static int w_oom(ck_writer *w, const char *what)
{
    if (!w->failed) {
        w->failed = 1;
        cds_err_nomem(&w->first_err, "saving checkpoint %s: out of memory packing %s", w->path, what);
    }
    return -1;
}

static int w_write_all(ck_writer *w, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = w->o->write_fn ? w->o->write_fn(w->o->io_ctx, w->fd, p, n) : write(w->fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return w_fail(w, "writing", k < 0 ? errno : EIO);
        p += k;
        n -= (size_t)k;
        w->written += (uint64_t)k;
    }
    return 0;
}

static int w_flush(ck_writer *w)
{
    if (w->failed)
        return -1;
    int rc = w_write_all(w, w->buf, w->len);
    w->len = 0;
    return rc;
}

/* Small pieces are gathered in the buffer; a piece as large as the buffer
 * (tensor chunks) is written from the caller's memory. */
static int w_put(ck_writer *w, const void *p, size_t n)
{
    if (w->failed)
        return -1;
    w->crc = crc_update(w->crc, p, n);
    w->off += n;
    if (n <= IO_BUF - w->len) {
        memcpy(w->buf + w->len, p, n);
        w->len += n;
        return 0;
    }
    if (w_flush(w) != 0)
        return -1;
    if (n >= IO_BUF)
        return w_write_all(w, p, n);
    memcpy(w->buf, p, n);
    w->len = n;
    return 0;
}

static int pk_write(void *data, const char *buf, size_t len) { return w_put(data, buf, len); }

static void pack_text(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str_with_body(pk, s, n);
}

static int cmp_keys(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* JSON -> msgpack with object keys sorted, so equal JSON values give equal
 * bytes whatever order their keys were written in. */
static int pack_json(msgpack_packer *pk, const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(j), i = 0;
        const char **keys = malloc((n ? n : 1) * sizeof *keys);
        if (!keys)
            return -1;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) keys[i++] = k;
        qsort(keys, n, sizeof *keys, cmp_keys);
        msgpack_pack_map(pk, n);
        int rc = 0;
        for (i = 0; i < n && rc == 0; i++) {
            pack_text(pk, keys[i]);
            rc = pack_json(pk, json_object_get(j, keys[i]));
        }
        free(keys);
        return rc;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++)
            if (pack_json(pk, json_array_get(j, i)) != 0)
                return -1;
        return 0;
    }
    case JSON_STRING:
        msgpack_pack_str_with_body(pk, json_string_value(j), json_string_length(j));
        return 0;
    case JSON_INTEGER: msgpack_pack_int64(pk, json_integer_value(j)); return 0;
    case JSON_REAL: msgpack_pack_double(pk, json_real_value(j)); return 0;
    case JSON_TRUE: msgpack_pack_true(pk); return 0;
    case JSON_FALSE: msgpack_pack_false(pk); return 0;
    case JSON_NULL: msgpack_pack_nil(pk); return 0;
    }
    return -1;
}

static void pack_tensor(msgpack_packer *pk, const nn_ckpt_tensor *t, size_t chunk)
{
    size_t bytes = 0;
    tensor_bytes(t, &bytes); /* checked by check_tensors */
    msgpack_pack_map(pk, N_TENSOR_KEYS);
    pack_text(pk, "name");
    pack_text(pk, t->name);
    pack_text(pk, "dtype");
    pack_text(pk, "float32");
    pack_text(pk, "shape");
    msgpack_pack_array(pk, (size_t)t->ndim);
    for (int d = 0; d < t->ndim; d++)
        msgpack_pack_fix_int64(pk, t->shape[d]);
    pack_text(pk, "data");
    msgpack_pack_array(pk, (bytes + chunk - 1) / chunk);
    const char *p = (const char *)t->data;
    for (size_t at = 0; at < bytes; at += chunk) {
        size_t n = bytes - at < chunk ? bytes - at : chunk;
        msgpack_pack_bin_with_body(pk, p + at, n);
    }
}

static int pack_tensors(ck_writer *w, msgpack_packer *pk, const nn_ckpt_tensor *t, size_t n, size_t chunk)
{
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n && !w->failed; i++)
        pack_tensor(pk, &t[i], chunk);
    return w->failed ? -1 : 0;
}

static int check_tensors(const char *path, const char *list, const nn_ckpt_tensor *t, size_t n, cds_err *err)
{
    if (n > 0 && !t)
        return cds_errf(err, "saving checkpoint %s: %s has %zu tensors but no array", path, list, n);
    for (size_t i = 0; i < n; i++) {
        size_t bytes;
        if (!t[i].name || !t[i].name[0])
            return cds_errf(err, "saving checkpoint %s: %s[%zu] has no name", path, list, i);
        if (strlen(t[i].name) > UINT32_MAX)
            return cds_errf(err, "saving checkpoint %s: %s[%zu] has a name of 4 GiB or more", path, list, i);
        if (t[i].ndim < 0 || t[i].ndim > NN_CKPT_MAX_DIMS)
            return cds_errf(err, "saving checkpoint %s: tensor %s has %d dimensions (0 to %d allowed)", path, t[i].name,
                            t[i].ndim, NN_CKPT_MAX_DIMS);
        if (tensor_bytes(&t[i], &bytes) != 0)
            return cds_errf(err, "saving checkpoint %s: tensor %s has a negative or too large dimension", path,
                            t[i].name);
        if (bytes > 0 && !t[i].data)
            return cds_errf(err, "saving checkpoint %s: tensor %s has no data", path, t[i].name);
    }
    return 0;
}

static json_t *parse_object(const char *path, const char *what, const char *text, cds_err *err)
{
    if (!text) {
        cds_errf(err, "saving checkpoint %s: no %s JSON given", path, what);
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        cds_errf(err, "saving checkpoint %s: the %s is not valid JSON: %s (line %d, column %d)", path, what, je.text,
                 je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        cds_errf(err, "saving checkpoint %s: the %s must be a JSON object", path, what);
        return NULL;
    }
    return j;
}

static int check_ckpt(const char *path, const nn_ckpt *c, size_t chunk, cds_err *err)
{
    if (chunk == 0 || chunk > NN_CKPT_CHUNK_MAX)
        return cds_errf(err, "saving checkpoint %s: chunk size %zu is not in 1 .. %zu", path, chunk,
                        NN_CKPT_CHUNK_MAX);
    if (!c->optimizer || !c->optimizer[0])
        return cds_errf(err, "saving checkpoint %s: no optimizer name", path);
    if (c->n_visited > 0 && !c->visited)
        return cds_errf(err, "saving checkpoint %s: %zu visited shards but no array", path, c->n_visited);
    if (check_tensors(path, "params", c->params, c->n_params, err) != 0)
        return -1;
    return check_tensors(path, "opt_state", c->opt_state, c->n_opt_state, err);
}

/* Everything up to and including opt_state, in the order of the format. */
static int pack_body(ck_writer *w, const nn_ckpt *c, const json_t *spec, const json_t *hparams, size_t chunk)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, w, pk_write);
    msgpack_pack_map(&pk, N_TOP_KEYS);
    pack_text(&pk, "format");
    pack_text(&pk, NN_CKPT_FORMAT);
    pack_text(&pk, "format_version");
    msgpack_pack_uint8(&pk, NN_CKPT_VERSION); /* positive fixint */
    pack_text(&pk, "spec");
    if (pack_json(&pk, spec) != 0)
        return w_oom(w, "the model spec");
    pack_text(&pk, "hparams");
    if (pack_json(&pk, hparams) != 0)
        return w_oom(w, "the hyper-parameters");
    pack_text(&pk, "epoch");
    msgpack_pack_fix_int64(&pk, c->epoch);
    pack_text(&pk, "step");
    msgpack_pack_fix_int64(&pk, c->step);
    pack_text(&pk, "visited");
    msgpack_pack_array(&pk, c->n_visited);
    for (size_t i = 0; i < c->n_visited; i++)
        msgpack_pack_fix_int32(&pk, c->visited[i]);
    pack_text(&pk, "optimizer");
    pack_text(&pk, c->optimizer);
    pack_text(&pk, "opt_t");
    msgpack_pack_fix_int64(&pk, c->opt_t);
    pack_text(&pk, "rng");
    msgpack_pack_array(&pk, 4);
    for (int i = 0; i < 4; i++)
        msgpack_pack_fix_uint64(&pk, c->rng[i]);
    pack_text(&pk, "params");
    if (pack_tensors(w, &pk, c->params, c->n_params, chunk) != 0)
        return -1;
    pack_text(&pk, "opt_state");
    return pack_tensors(w, &pk, c->opt_state, c->n_opt_state, chunk);
}

/* The CRC of every byte so far, as the last entry. */
static int pack_tail(ck_writer *w)
{
    uint32_t crc = (uint32_t)w->crc;
    unsigned char tail[TAIL_LEN];
    memcpy(tail, tail_tag, sizeof tail_tag);
    tail[7] = (unsigned char)(crc >> 24);
    tail[8] = (unsigned char)(crc >> 16);
    tail[9] = (unsigned char)(crc >> 8);
    tail[10] = (unsigned char)crc;
    return w_put(w, tail, sizeof tail);
}

static int finish_file(ck_writer *w)
{
    if (w_flush(w) != 0)
        return -1;
    int rc = w->o->fsync_fn ? w->o->fsync_fn(w->o->io_ctx, w->fd) : fsync(w->fd);
    if (rc != 0)
        return w_fail(w, "fsync of", errno);
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0)
        return w_fail(w, "closing", errno);
    return 0;
}

static void dir_of(const char *path, char *dir, size_t n)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, n, ".");
    else if (slash == path)
        snprintf(dir, n, "/");
    else
        snprintf(dir, n, "%.*s", (int)(slash - path), path);
}

int nn_ckpt_save_with(const char *path, const nn_ckpt *c, const nn_ckpt_save_opts *o, cds_err *err)
{
    static const nn_ckpt_save_opts defaults = {0};
    if (!o)
        o = &defaults;
    size_t chunk = o->chunk_bytes ? o->chunk_bytes : NN_CKPT_CHUNK_MAX;
    char tmp[PATH_MAX], dir[PATH_MAX], hex[17];
    if (!path || !*path || strlen(path) + 21 >= sizeof tmp)
        return cds_errf(err, "saving checkpoint: the path is empty or longer than %d bytes", PATH_MAX - 22);
    if (!c)
        return cds_errf(err, "saving checkpoint %s: no checkpoint given", path);
    if (check_ckpt(path, c, chunk, err) != 0)
        return -1;
    json_t *spec = parse_object(path, "model spec", c->spec_json, err);
    if (!spec)
        return -1;
    json_t *hparams = parse_object(path, "hyper-parameters", c->hparams_json, err);
    if (!hparams) {
        json_decref(spec);
        return -1;
    }
    if (cds_random_hex(hex, 8, err) != 0) {
        json_decref(spec);
        json_decref(hparams);
        return cds_err_wrap(err, "saving checkpoint %s", path);
    }
    snprintf(tmp, sizeof tmp, "%s.tmp-%s", path, hex);
    dir_of(path, dir, sizeof dir);

    ck_writer w = {.path = path, .tmp = tmp, .o = o, .fd = -1, .crc = crc32(0L, Z_NULL, 0)};
    int rc = -1, created = 0;
    if (!(w.buf = malloc(IO_BUF))) {
        cds_err_nomem(err, "saving checkpoint %s: out of memory", path);
        goto out;
    }
    w.fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (w.fd < 0) {
        int e = errno;
        cds_errf(err, "saving checkpoint %s: cannot create %s: %s (%s)", path, tmp, strerror(e), write_hint(e));
        goto out;
    }
    created = 1;
    if (pack_body(&w, c, spec, hparams, chunk) != 0 || pack_tail(&w) != 0 || finish_file(&w) != 0) {
        if (err)
            *err = w.first_err;
        goto out;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        cds_errf(err, "saving checkpoint %s: cannot rename %s over it: %s (%s)", path, tmp, strerror(e),
                 e == EISDIR ? "the path is a directory; choose a file name" : write_hint(e));
        goto out;
    }
    created = 0; /* renamed: nothing to remove */
    cds_err derr;
    if (cds_fsync_dir(dir, &derr) != 0) {
        cds_errf(err, "saving checkpoint %s: written and renamed, but it may not survive a crash: %s", path, derr.msg);
        goto out;
    }
    rc = 0;
out:
    if (w.fd >= 0)
        close(w.fd);
    if (rc != 0 && created)
        unlink(tmp);
    free(w.buf);
    json_decref(spec);
    json_decref(hparams);
    return rc;
}

int nn_ckpt_save(const char *path, const nn_ckpt *c, cds_err *err) { return nn_ckpt_save_with(path, c, NULL, err); }

/* ======================================================================
 * reading
 * ====================================================================== */

typedef enum mp_kind { MP_NIL, MP_BOOL, MP_UINT, MP_INT, MP_REAL, MP_STR, MP_BIN, MP_ARRAY, MP_MAP, MP_EXT } mp_kind;

static const char *kind_name(mp_kind k)
{
    static const char *names[] = {"nil", "a boolean", "an integer", "an integer", "a float", "a string", "a bin",
                                  "an array", "a map", "an ext"};
    return names[k];
}

typedef struct mp_head {
    mp_kind kind;
    uint64_t u;    /* MP_UINT; MP_BOOL: 0 or 1 */
    int64_t i;     /* MP_INT (any signed encoding) */
    double d;      /* MP_REAL */
    uint64_t n;    /* MP_STR, MP_BIN, MP_EXT: bytes; MP_ARRAY: items; MP_MAP: pairs */
    uint64_t at;   /* offset of the type byte, for messages */
} mp_head;

typedef struct ck_reader {
    const char *path;
    int fd;
    unsigned char *buf;
    uint64_t buf_off; /* file offset of buf[0] */
    size_t buf_len;
    uint64_t off;     /* next byte to consume */
    uint64_t end;     /* where the crc32 entry starts: nothing before it may run past */
    cds_err *err;
} ck_reader;

static int r_fail(ck_reader *r, uint64_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int r_fail(ck_reader *r, uint64_t at, const char *fmt, ...)
{
    char what[CDS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return cds_errf(r->err, "checkpoint %s: %s (at byte %llu; the file is damaged or not a cds checkpoint)", r->path,
                    what, (unsigned long long)at);
}

static int pread_all(int fd, void *dst, size_t n, uint64_t off)
{
    unsigned char *p = dst;
    while (n > 0) {
        ssize_t k = pread(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -1;
        if (k == 0) {
            errno = 0; /* the file shrank under us */
            return -1;
        }
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

static int r_io_fail(ck_reader *r, int e)
{
    return cds_errf(r->err, "checkpoint %s: read failed at byte %llu: %s", r->path, (unsigned long long)r->off,
                    e ? strerror(e) : "the file became shorter while being read");
}

static int r_oom(ck_reader *r, const char *what)
{
    return cds_err_nomem(r->err, "checkpoint %s: out of memory reading %s", r->path, what);
}

/* Copies the next n bytes. */
static int r_bytes(ck_reader *r, void *dst, uint64_t n)
{
    if (n > r->end - r->off)
        return r_fail(r, r->off, "a value of %llu bytes runs past the end of the data", (unsigned long long)n);
    unsigned char *p = dst;
    while (n > 0) {
        if (r->off >= r->buf_off && r->off < r->buf_off + r->buf_len) {
            size_t at = (size_t)(r->off - r->buf_off), k = r->buf_len - at;
            if (k > n)
                k = (size_t)n;
            memcpy(p, r->buf + at, k);
            p += k;
            r->off += k;
            n -= k;
        } else if (n >= IO_BUF) {
            /* Large bins go straight to their destination. */
            if (pread_all(r->fd, p, (size_t)n, r->off) != 0)
                return r_io_fail(r, errno);
            r->off += n;
            n = 0;
        } else {
            uint64_t left = r->end - r->off;
            size_t k = left < IO_BUF ? (size_t)left : IO_BUF;
            if (pread_all(r->fd, r->buf, k, r->off) != 0)
                return r_io_fail(r, errno);
            r->buf_off = r->off;
            r->buf_len = k;
        }
    }
    return 0;
}

static uint64_t be_load(const unsigned char *b, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | b[i];
    return v;
}

static int r_uint(ck_reader *r, int n, uint64_t *v)
{
    unsigned char b[8];
    if (r_bytes(r, b, (uint64_t)n) != 0)
        return -1;
    *v = be_load(b, n);
    return 0;
}

static int r_head(ck_reader *r, mp_head *h)
{
    unsigned char t;
    memset(h, 0, sizeof *h);
    h->at = r->off;
    if (r_bytes(r, &t, 1) != 0)
        return -1;
    uint64_t v;
    if (t <= 0x7f) {
        h->kind = MP_UINT, h->u = t;
        return 0;
    }
    if (t >= 0xe0) {
        h->kind = MP_INT, h->i = (int8_t)t;
        return 0;
    }
    if (t <= 0x8f || (t >= 0x90 && t <= 0x9f) || (t >= 0xa0 && t <= 0xbf)) {
        h->kind = t <= 0x8f ? MP_MAP : t <= 0x9f ? MP_ARRAY : MP_STR;
        h->n = t & (t <= 0x9f ? 0x0f : 0x1f);
        return 0;
    }
    switch (t) {
    case 0xc0: h->kind = MP_NIL; return 0;
    case 0xc2: case 0xc3: h->kind = MP_BOOL, h->u = t == 0xc3; return 0;
    case 0xc4: case 0xc5: case 0xc6:
        h->kind = MP_BIN;
        return r_uint(r, 1 << (t - 0xc4), &h->n);
    case 0xc7: case 0xc8: case 0xc9:
        h->kind = MP_EXT;
        if (r_uint(r, 1 << (t - 0xc7), &h->n) != 0)
            return -1;
        h->n += 1; /* the ext type byte */
        return 0;
    case 0xca: {
        if (r_uint(r, 4, &v) != 0)
            return -1;
        uint32_t u32 = (uint32_t)v;
        float f;
        memcpy(&f, &u32, sizeof f);
        h->kind = MP_REAL, h->d = f;
        return 0;
    }
    case 0xcb:
        if (r_uint(r, 8, &v) != 0)
            return -1;
        memcpy(&h->d, &v, sizeof h->d);
        h->kind = MP_REAL;
        return 0;
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
        h->kind = MP_UINT;
        return r_uint(r, 1 << (t - 0xcc), &h->u);
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        int n = 1 << (t - 0xd0);
        if (r_uint(r, n, &v) != 0)
            return -1;
        if (n < 8 && (v >> (8 * n - 1)) & 1) /* sign-extend */
            v |= ~(uint64_t)0 << (8 * n);
        h->kind = MP_INT, h->i = (int64_t)v;
        return 0;
    }
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        h->kind = MP_EXT, h->n = 1 + ((uint64_t)1 << (t - 0xd4));
        return 0;
    case 0xd9: case 0xda: case 0xdb:
        h->kind = MP_STR;
        return r_uint(r, 1 << (t - 0xd9), &h->n);
    case 0xdc: case 0xdd:
        h->kind = MP_ARRAY;
        return r_uint(r, 2 << (t - 0xdc), &h->n);
    case 0xde: case 0xdf:
        h->kind = MP_MAP;
        return r_uint(r, 2 << (t - 0xde), &h->n);
    }
    return r_fail(r, h->at, "byte 0x%02x is not a msgpack type", t);
}

static int r_expect(ck_reader *r, mp_head *h, mp_kind kind, const char *what)
{
    if (r_head(r, h) != 0)
        return -1;
    if (h->kind != kind && !(kind == MP_UINT && h->kind == MP_INT))
        return r_fail(r, h->at, "%s should be %s, found %s", what, kind_name(kind), kind_name(h->kind));
    return 0;
}

/* A str body as a C string; embedded NULs are refused. */
static int r_str_body(ck_reader *r, const mp_head *h, const char *what, char **out)
{
    if (h->n > r->end - r->off)
        return r_fail(r, h->at, "%s of %llu bytes runs past the end of the data", what, (unsigned long long)h->n);
    char *s = malloc((size_t)h->n + 1);
    if (!s)
        return r_oom(r, what);
    if (r_bytes(r, s, h->n) != 0) {
        free(s);
        return -1;
    }
    s[h->n] = '\0';
    if (strlen(s) != h->n) {
        free(s);
        return r_fail(r, h->at, "%s holds a NUL byte", what);
    }
    *out = s;
    return 0;
}

static int r_str(ck_reader *r, const char *what, char **out)
{
    mp_head h;
    if (r_expect(r, &h, MP_STR, what) != 0)
        return -1;
    return r_str_body(r, &h, what, out);
}

static int r_key(ck_reader *r, const char *key)
{
    char *s = NULL, what[64];
    uint64_t at = r->off;
    snprintf(what, sizeof what, "the key \"%s\"", key);
    if (r_str(r, what, &s) != 0)
        return -1;
    int same = strcmp(s, key) == 0;
    if (!same)
        r_fail(r, at, "expected the key \"%s\", found \"%.40s\"", key, s);
    free(s);
    return same ? 0 : -1;
}

static int r_int(ck_reader *r, const char *what, int64_t min, int64_t max, int64_t *out)
{
    mp_head h;
    if (r_expect(r, &h, MP_UINT, what) != 0)
        return -1;
    if (h.kind == MP_UINT && h.u > (uint64_t)INT64_MAX)
        return r_fail(r, h.at, "%s is %llu, not in %lld .. %lld", what, (unsigned long long)h.u, (long long)min,
                      (long long)max);
    int64_t v = h.kind == MP_UINT ? (int64_t)h.u : h.i;
    if (v < min || v > max)
        return r_fail(r, h.at, "%s is %lld, not in %lld .. %lld", what, (long long)v, (long long)min, (long long)max);
    *out = v;
    return 0;
}

static int r_u64(ck_reader *r, const char *what, uint64_t *out)
{
    mp_head h;
    if (r_expect(r, &h, MP_UINT, what) != 0)
        return -1;
    if (h.kind == MP_INT && h.i < 0)
        return r_fail(r, h.at, "%s is negative", what);
    *out = h.kind == MP_UINT ? h.u : (uint64_t)h.i;
    return 0;
}

static int r_count(ck_reader *r, mp_kind kind, const char *what, uint64_t *n)
{
    mp_head h;
    if (r_expect(r, &h, kind, what) != 0)
        return -1;
    /* Each item takes at least one byte, so a count larger than what is left
     * is a lie, and checking it here bounds every allocation by the file. */
    if (h.n > r->end - r->off)
        return r_fail(r, h.at, "%s claims %llu items, more than the bytes left", what, (unsigned long long)h.n);
    *n = h.n;
    return 0;
}

static json_t *r_json(ck_reader *r, const char *what, int depth);

static json_t *r_json_array(ck_reader *r, const mp_head *h, const char *what, int depth)
{
    json_t *j = json_array();
    if (!j) {
        r_oom(r, what);
        return NULL;
    }
    for (uint64_t i = 0; i < h->n; i++) {
        json_t *v = r_json(r, what, depth + 1);
        if (!v || json_array_append_new(j, v) != 0) {
            if (v)
                r_oom(r, what);
            json_decref(j);
            return NULL;
        }
    }
    return j;
}

static json_t *r_json_map(ck_reader *r, const mp_head *h, const char *what, int depth)
{
    json_t *j = json_object();
    if (!j) {
        r_oom(r, what);
        return NULL;
    }
    for (uint64_t i = 0; i < h->n; i++) {
        char *k = NULL;
        uint64_t at = r->off;
        if (r_str(r, what, &k) != 0) {
            json_decref(j);
            return NULL;
        }
        json_t *v = NULL;
        int ok = 0;
        if (json_object_get(j, k))
            r_fail(r, at, "%s has the key \"%.40s\" twice", what, k);
        else if ((v = r_json(r, what, depth + 1)) != NULL) /* else r_json said why */
            ok = json_object_set_new(j, k, v) == 0 ||
                 r_fail(r, at, "%s has the key \"%.40s\", which is not UTF-8", what, k) == 0;
        free(k);
        if (!ok) {
            json_decref(j);
            return NULL;
        }
    }
    return j;
}

/* msgpack -> JSON, for the spec and the hyper-parameters.  Returns NULL with
 * r->err set on any failure. */
static json_t *r_json(ck_reader *r, const char *what, int depth)
{
    mp_head h;
    json_t *j = NULL;
    if (depth > JSON_MAX_DEPTH) {
        r_fail(r, r->off, "%s nests deeper than %d levels", what, JSON_MAX_DEPTH);
        return NULL;
    }
    if (r_head(r, &h) != 0)
        return NULL;
    switch (h.kind) {
    case MP_NIL: j = json_null(); break;
    case MP_BOOL: j = json_boolean(h.u); break;
    case MP_UINT:
        if (h.u > (uint64_t)INT64_MAX) {
            r_fail(r, h.at, "%s holds the integer %llu, beyond JSON's int64", what, (unsigned long long)h.u);
            return NULL;
        }
        j = json_integer((json_int_t)h.u);
        break;
    case MP_INT: j = json_integer(h.i); break;
    case MP_REAL:
        if (h.d != h.d || h.d - h.d != 0) {
            r_fail(r, h.at, "%s holds a NaN or an infinity, which JSON cannot", what);
            return NULL;
        }
        j = json_real(h.d);
        break;
    case MP_STR: {
        char *s;
        if (r_str_body(r, &h, what, &s) != 0)
            return NULL;
        j = json_string(s);
        free(s);
        if (!j) {
            r_fail(r, h.at, "%s holds a string that is not UTF-8", what);
            return NULL;
        }
        break;
    }
    case MP_ARRAY:
    case MP_MAP:
        if (h.n > r->end - r->off) {
            r_fail(r, h.at, "%s claims %llu items, more than the bytes left", what, (unsigned long long)h.n);
            return NULL;
        }
        return h.kind == MP_ARRAY ? r_json_array(r, &h, what, depth) : r_json_map(r, &h, what, depth);
    case MP_BIN:
    case MP_EXT:
        r_fail(r, h.at, "%s holds %s, which JSON cannot", what, kind_name(h.kind));
        return NULL;
    }
    if (!j)
        r_oom(r, what);
    return j;
}

static int r_json_object(ck_reader *r, const char *what, char **out)
{
    uint64_t at = r->off;
    json_t *j = r_json(r, what, 0);
    if (!j)
        return -1;
    if (!json_is_object(j)) {
        json_decref(j);
        return r_fail(r, at, "%s should be a map", what);
    }
    *out = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    if (!*out)
        return cds_err_nomem(r->err, "checkpoint %s: out of memory writing %s as JSON", r->path, what);
    return 0;
}

static void tensor_free(nn_ckpt_tensor *t)
{
    free(t->name);
    free(t->data);
    memset(t, 0, sizeof *t);
}

static int r_shape(ck_reader *r, nn_ckpt_tensor *t, size_t *bytes)
{
    uint64_t n;
    uint64_t at = r->off;
    if (r_key(r, "shape") != 0 || r_count(r, MP_ARRAY, "a tensor shape", &n) != 0)
        return -1;
    if (n > NN_CKPT_MAX_DIMS)
        return r_fail(r, at, "tensor %s has %llu dimensions (at most %d)", t->name, (unsigned long long)n,
                      NN_CKPT_MAX_DIMS);
    t->ndim = (int)n;
    for (int d = 0; d < t->ndim; d++)
        if (r_int(r, "a tensor dimension", 0, INT64_MAX, &t->shape[d]) != 0)
            return -1;
    /* The data must fit in what is left of the file, which bounds the
     * allocation below by the file's size. */
    uint64_t left = r->end - r->off, b = sizeof(float);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] == 0) {
            *bytes = 0;
            return 0;
        }
    for (int d = 0; d < t->ndim; d++) {
        if ((uint64_t)t->shape[d] > left / b)
            return r_fail(r, at, "tensor %s has a shape needing more bytes than the file holds", t->name);
        b *= (uint64_t)t->shape[d];
    }
    *bytes = (size_t)b;
    return 0;
}

static int r_tensor_data(ck_reader *r, nn_ckpt_tensor *t, size_t bytes)
{
    uint64_t n, at = r->off;
    if (r_key(r, "data") != 0 || r_count(r, MP_ARRAY, "the tensor data", &n) != 0)
        return -1;
    /* At least one float, so an empty tensor still has a valid pointer. */
    if (!(t->data = malloc(bytes ? bytes : sizeof(float))))
        return cds_err_nomem(r->err, "checkpoint %s: out of memory for tensor %s (%zu bytes)", r->path, t->name, bytes);
    size_t got = 0;
    for (uint64_t i = 0; i < n; i++) {
        mp_head h;
        if (r_expect(r, &h, MP_BIN, "a tensor data chunk") != 0)
            return -1;
        if (h.n > bytes - got)
            return r_fail(r, h.at, "tensor %s: the data chunks hold more than the %zu bytes its shape needs", t->name,
                          bytes);
        if (r_bytes(r, (char *)t->data + got, h.n) != 0)
            return -1;
        got += (size_t)h.n;
    }
    if (got != bytes)
        return r_fail(r, at, "tensor %s: the data chunks hold %zu bytes, its shape needs %zu", t->name, got, bytes);
    return 0;
}

static int r_tensor(ck_reader *r, nn_ckpt_tensor *t)
{
    uint64_t n, at = r->off;
    char *dtype = NULL;
    size_t bytes = 0;
    if (r_count(r, MP_MAP, "a tensor", &n) != 0)
        return -1;
    if (n != N_TENSOR_KEYS)
        return r_fail(r, at, "a tensor map has %llu entries, not %d", (unsigned long long)n, N_TENSOR_KEYS);
    if (r_key(r, "name") != 0 || r_str(r, "a tensor name", &t->name) != 0)
        return -1;
    if (!t->name[0])
        return r_fail(r, at, "a tensor has an empty name");
    at = r->off;
    if (r_key(r, "dtype") != 0 || r_str(r, "a tensor dtype", &dtype) != 0)
        return -1;
    int f32 = strcmp(dtype, "float32") == 0;
    if (!f32)
        r_fail(r, at, "tensor %s has dtype \"%.20s\"; only float32 is supported", t->name, dtype);
    free(dtype);
    if (!f32 || r_shape(r, t, &bytes) != 0)
        return -1;
    return r_tensor_data(r, t, bytes);
}

static int r_tensors(ck_reader *r, const char *key, nn_ckpt_tensor **out, size_t *count)
{
    uint64_t n;
    if (r_key(r, key) != 0 || r_count(r, MP_ARRAY, key, &n) != 0)
        return -1;
    /* Grown as tensors are read, so memory follows what the file holds,
     * not what its header claims. */
    size_t cap = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (*count == cap) {
            size_t nc = cap ? 2 * cap : 16;
            nn_ckpt_tensor *t = realloc(*out, nc * sizeof *t);
            if (!t)
                return r_oom(r, key);
            memset(t + cap, 0, (nc - cap) * sizeof *t);
            *out = t;
            cap = nc;
        }
        (*count)++; /* counted before it is read, so a half-read one is freed */
        if (r_tensor(r, &(*out)[*count - 1]) != 0)
            return -1;
    }
    return 0;
}

static int r_visited(ck_reader *r, nn_ckpt *c)
{
    uint64_t n;
    if (r_key(r, "visited") != 0 || r_count(r, MP_ARRAY, "visited", &n) != 0)
        return -1;
    if (!(c->visited = malloc((n ? n : 1) * sizeof *c->visited)))
        return r_oom(r, "visited");
    for (uint64_t i = 0; i < n; i++) {
        int64_t v;
        if (r_int(r, "a visited shard id", INT32_MIN, INT32_MAX, &v) != 0)
            return -1;
        c->visited[c->n_visited++] = (int32_t)v;
    }
    return 0;
}

static int r_body(ck_reader *r, nn_ckpt *c)
{
    uint64_t n;
    int64_t version;
    char *format = NULL;
    if (r_count(r, MP_MAP, "the checkpoint", &n) != 0)
        return -1;
    if (n != N_TOP_KEYS)
        return r_fail(r, 0, "the top-level map has %llu entries, not %d", (unsigned long long)n, N_TOP_KEYS);
    if (r_key(r, "format") != 0 || r_str(r, "format", &format) != 0)
        return -1;
    int ours = strcmp(format, NN_CKPT_FORMAT) == 0;
    if (!ours)
        r_fail(r, 0, "format is \"%.40s\", not \"%s\"", format, NN_CKPT_FORMAT);
    free(format);
    if (!ours || r_key(r, "format_version") != 0 || r_int(r, "format_version", INT64_MIN, INT64_MAX, &version) != 0)
        return -1;
    if (version != NN_CKPT_VERSION)
        return cds_errf(r->err, "checkpoint %s: format_version %lld is not supported (this build reads version %d); "
                        "use a build that matches the writer", r->path, (long long)version, NN_CKPT_VERSION);
    uint64_t rng_n;
    if (r_key(r, "spec") != 0 || r_json_object(r, "spec", &c->spec_json) != 0 || r_key(r, "hparams") != 0 ||
        r_json_object(r, "hparams", &c->hparams_json) != 0 || r_key(r, "epoch") != 0 ||
        r_int(r, "epoch", INT64_MIN, INT64_MAX, &c->epoch) != 0 || r_key(r, "step") != 0 ||
        r_int(r, "step", INT64_MIN, INT64_MAX, &c->step) != 0 || r_visited(r, c) != 0 || r_key(r, "optimizer") != 0 ||
        r_str(r, "optimizer", &c->optimizer) != 0 || (!c->optimizer[0] && r_fail(r, r->off, "optimizer is empty")) ||
        r_key(r, "opt_t") != 0 ||
        r_int(r, "opt_t", INT64_MIN, INT64_MAX, &c->opt_t) != 0 || r_key(r, "rng") != 0 ||
        r_count(r, MP_ARRAY, "rng", &rng_n) != 0)
        return -1;
    if (rng_n != 4)
        return r_fail(r, r->off, "rng has %llu words, not 4", (unsigned long long)rng_n);
    for (int i = 0; i < 4; i++)
        if (r_u64(r, "an rng word", &c->rng[i]) != 0)
            return -1;
    if (r_tensors(r, "params", &c->params, &c->n_params) != 0 ||
        r_tensors(r, "opt_state", &c->opt_state, &c->n_opt_state) != 0)
        return -1;
    if (r->off != r->end)
        return r_fail(r, r->off, "%llu unexpected bytes before the crc32 entry",
                      (unsigned long long)(r->end - r->off));
    return 0;
}

/* The cheap checks that tell a foreign file, a truncated one and a corrupt
 * one apart, then the CRC over everything before the crc32 entry. */
static int check_frame(ck_reader *r, uint64_t size)
{
    unsigned char head[sizeof head_magic], tail[TAIL_LEN];
    size_t hn = size < sizeof head ? (size_t)size : sizeof head;
    if (pread_all(r->fd, head, hn, 0) != 0)
        return r_io_fail(r, errno);
    int head_ok = memcmp(head, head_magic, hn) == 0;
    if (size < sizeof head_magic + TAIL_LEN) {
        if (!head_ok)
            return cds_errf(r->err, "checkpoint %s: not a cds checkpoint (%llu bytes, without its header)", r->path,
                            (unsigned long long)size);
        return cds_errf(r->err, "checkpoint %s: truncated: only %llu bytes; use an older checkpoint", r->path,
                        (unsigned long long)size);
    }
    if (pread_all(r->fd, tail, TAIL_LEN, size - TAIL_LEN) != 0)
        return r_io_fail(r, errno);
    int tail_ok = memcmp(tail, tail_tag, sizeof tail_tag) == 0;
    if (!tail_ok && !head_ok)
        return cds_errf(r->err, "checkpoint %s: not a cds checkpoint (neither its header nor its crc32 entry is there)",
                        r->path);
    if (!tail_ok)
        return cds_errf(r->err, "checkpoint %s: truncated or damaged: it does not end with the crc32 entry "
                        "(%llu bytes); use an older checkpoint", r->path, (unsigned long long)size);
    uLong crc = crc32(0L, Z_NULL, 0);
    for (uint64_t off = 0; off < r->end;) {
        size_t k = r->end - off < IO_BUF ? (size_t)(r->end - off) : IO_BUF;
        if (pread_all(r->fd, r->buf, k, off) != 0)
            return r_io_fail(r, errno);
        crc = crc_update(crc, r->buf, k);
        off += k;
    }
    uint32_t stored = (uint32_t)be_load(tail + 7, 4);
    if ((uint32_t)crc != stored)
        return cds_errf(r->err, "checkpoint %s: CRC-32 mismatch (stored %08x, computed %08x over %llu bytes): the "
                        "file is corrupt or truncated; use an older checkpoint", r->path, stored, (unsigned)crc,
                        (unsigned long long)r->end);
    return 0;
}

int nn_ckpt_load(const char *path, nn_ckpt *c, cds_err *err)
{
    cds_err local;
    memset(c, 0, sizeof *c);
    if (!err)
        err = &local;
    ck_reader r = {.path = path, .fd = -1, .err = err};
    int rc = -1;
    struct stat st;
    r.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r.fd < 0) {
        cds_errf(err, "checkpoint %s: cannot open it: %s", path, strerror(errno));
        goto out;
    }
    if (fstat(r.fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        cds_errf(err, "checkpoint %s: not a regular file", path);
        goto out;
    }
    if (!(r.buf = malloc(IO_BUF))) {
        cds_err_nomem(err, "checkpoint %s: out of memory", path);
        goto out;
    }
    r.end = st.st_size >= TAIL_LEN ? (uint64_t)st.st_size - TAIL_LEN : 0;
    if (check_frame(&r, (uint64_t)st.st_size) != 0)
        goto out;
    rc = r_body(&r, c);
out:
    if (r.fd >= 0)
        close(r.fd);
    free(r.buf);
    if (rc != 0)
        nn_ckpt_free(c);
    return rc;
}

void nn_ckpt_free(nn_ckpt *c)
{
    if (!c)
        return;
    free(c->spec_json);
    free(c->hparams_json);
    free(c->visited);
    free(c->optimizer);
    for (size_t i = 0; i < c->n_params; i++)
        tensor_free(&c->params[i]);
    for (size_t i = 0; i < c->n_opt_state; i++)
        tensor_free(&c->opt_state[i]);
    free(c->params);
    free(c->opt_state);
    memset(c, 0, sizeof *c);
}

const nn_ckpt_tensor *nn_ckpt_find(const nn_ckpt_tensor *t, size_t n, const char *name)
{
    for (size_t i = 0; t && name && i < n; i++)
        if (t[i].name && strcmp(t[i].name, name) == 0)
            return &t[i];
    return NULL;
}
