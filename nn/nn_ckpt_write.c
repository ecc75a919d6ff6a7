/* nn_ckpt_write: msgpack checkpoints, written (docs/checkpoint.md is the format).
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
 *
 * The format's shared bytes and helpers are in nn_ckpt_int.h; reading is
 * nn_ckpt_read.c. */
#include "nn_ckpt_int.h"

const unsigned char nn_ckpt_tail_tag[7] = {0xa5, 'c', 'r', 'c', '3', '2', 0xce};
const unsigned char nn_ckpt_head_magic[39] = {
    0x8d, 0xa6, 'f', 'o', 'r', 'm', 'a', 't', 0xae, 'c', 'd', 's', '-', 'c', 'h', 'e', 'c', 'k', 'p', 'o',
    'i',  'n',  't', 0xae, 'f', 'o', 'r', 'm', 'a', 't', '_', 'v', 'e', 'r', 's', 'i', 'o', 'n', 0x01};

/* zlib's crc32() takes a 32-bit length. */
uLong nn_ckpt_crc(uLong crc, const void *p, size_t n)
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

int nn_ckpt_tensor_bytes(const nn_ckpt_tensor *t, size_t *bytes)
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

/* The fix for a failed write of errno e (cds_err_io_hint's table), in buf. */
static const char *write_hint(int e, char *buf, size_t n)
{
    static const cds_io_hints where = {.fs = "the checkpoint's filesystem",
                                       .elsewhere = "checkpoint to another directory", .again = "retry"};
    return cds_err_io_hint(e, &where, buf, n);
}

static int w_fail(ck_writer *w, const char *doing, int e)
{
    if (!w->failed) {
        char hint[200];
        w->failed = 1;
        cds_errf(&w->first_err, "saving checkpoint %s: %s %s at byte %llu: %s (%s)", w->path, doing, w->tmp,
                 (unsigned long long)w->written, strerror(e), write_hint(e, hint, sizeof hint));
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
    w->crc = nn_ckpt_crc(w->crc, p, n);
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
    nn_ckpt_tensor_bytes(t, &bytes); /* checked by check_tensors */
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
        if (nn_ckpt_tensor_bytes(&t[i], &bytes) != 0)
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
    memcpy(tail, nn_ckpt_tail_tag, sizeof nn_ckpt_tail_tag);
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
        char hint[200];
        cds_errf(err, "saving checkpoint %s: cannot create %s: %s (%s)", path, tmp, strerror(e),
                 write_hint(e, hint, sizeof hint));
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
        char hint[200];
        cds_errf(err, "saving checkpoint %s: cannot rename %s over it: %s (%s)", path, tmp, strerror(e),
                 e == EISDIR ? "the path is a directory; choose a file name" : write_hint(e, hint, sizeof hint));
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

