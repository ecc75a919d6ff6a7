/* nn_ckpt_read: msgpack checkpoints, read (docs/checkpoint.md is the format;
 * writing is nn_ckpt_write.c).
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
#include "nn_ckpt_int.h"


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
    if (nn_ckr_key(r, "shape") != 0 || nn_ckr_count(r, MP_ARRAY, "a tensor shape", &n) != 0)
        return -1;
    if (n > NN_CKPT_MAX_DIMS)
        return nn_ckr_fail(r, at, "tensor %s has %llu dimensions (at most %d)", t->name, (unsigned long long)n,
                      NN_CKPT_MAX_DIMS);
    t->ndim = (int)n;
    for (int d = 0; d < t->ndim; d++)
        if (nn_ckr_int(r, "a tensor dimension", 0, INT64_MAX, &t->shape[d]) != 0)
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
            return nn_ckr_fail(r, at, "tensor %s has a shape needing more bytes than the file holds", t->name);
        b *= (uint64_t)t->shape[d];
    }
    *bytes = (size_t)b;
    return 0;
}

static int r_tensor_data(ck_reader *r, nn_ckpt_tensor *t, size_t bytes)
{
    uint64_t n, at = r->off;
    if (nn_ckr_key(r, "data") != 0 || nn_ckr_count(r, MP_ARRAY, "the tensor data", &n) != 0)
        return -1;
    /* At least one float, so an empty tensor still has a valid pointer. */
    if (!(t->data = malloc(bytes ? bytes : sizeof(float))))
        return cds_err_nomem(r->err, "checkpoint %s: out of memory for tensor %s (%zu bytes)", r->path, t->name, bytes);
    size_t got = 0;
    for (uint64_t i = 0; i < n; i++) {
        mp_head h;
        if (nn_ckr_expect(r, &h, MP_BIN, "a tensor data chunk") != 0)
            return -1;
        if (h.n > bytes - got)
            return nn_ckr_fail(r, h.at, "tensor %s: the data chunks hold more than the %zu bytes its shape needs",
                               t->name, bytes);
        if (nn_ckr_bytes(r, (char *)t->data + got, h.n) != 0)
            return -1;
        got += (size_t)h.n;
    }
    if (got != bytes)
        return nn_ckr_fail(r, at, "tensor %s: the data chunks hold %zu bytes, its shape needs %zu", t->name, got,
                           bytes);
    return 0;
}

static int r_tensor(ck_reader *r, nn_ckpt_tensor *t)
{
    uint64_t n, at = r->off;
    char *dtype = NULL;
    size_t bytes = 0;
    if (nn_ckr_count(r, MP_MAP, "a tensor", &n) != 0)
        return -1;
    if (n != N_TENSOR_KEYS)
        return nn_ckr_fail(r, at, "a tensor map has %llu entries, not %d", (unsigned long long)n, N_TENSOR_KEYS);
    if (nn_ckr_key(r, "name") != 0 || nn_ckr_str(r, "a tensor name", &t->name) != 0)
        return -1;
    if (!t->name[0])
        return nn_ckr_fail(r, at, "a tensor has an empty name");
    at = r->off;
    if (nn_ckr_key(r, "dtype") != 0 || nn_ckr_str(r, "a tensor dtype", &dtype) != 0)
        return -1;
    int f32 = strcmp(dtype, "float32") == 0;
    if (!f32)
        nn_ckr_fail(r, at, "tensor %s has dtype \"%.20s\"; only float32 is supported", t->name, dtype);
    free(dtype);
    if (!f32 || r_shape(r, t, &bytes) != 0)
        return -1;
    return r_tensor_data(r, t, bytes);
}

static int r_tensors(ck_reader *r, const char *key, nn_ckpt_tensor **out, size_t *count)
{
    uint64_t n;
    if (nn_ckr_key(r, key) != 0 || nn_ckr_count(r, MP_ARRAY, key, &n) != 0)
        return -1;
    /* Grown as tensors are read, so memory follows what the file holds,
     * not what its header claims. */
    size_t cap = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (*count == cap) {
            size_t nc = cap ? 2 * cap : 16;
            nn_ckpt_tensor *t = realloc(*out, nc * sizeof *t);
            if (!t)
                return nn_ckr_oom(r, key);
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
    if (nn_ckr_key(r, "visited") != 0 || nn_ckr_count(r, MP_ARRAY, "visited", &n) != 0)
        return -1;
    if (!(c->visited = malloc((n ? n : 1) * sizeof *c->visited)))
        return nn_ckr_oom(r, "visited");
    for (uint64_t i = 0; i < n; i++) {
        int64_t v;
        if (nn_ckr_int(r, "a visited shard id", INT32_MIN, INT32_MAX, &v) != 0)
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
    if (nn_ckr_count(r, MP_MAP, "the checkpoint", &n) != 0)
        return -1;
    if (n != N_TOP_KEYS)
        return nn_ckr_fail(r, 0, "the top-level map has %llu entries, not %d", (unsigned long long)n, N_TOP_KEYS);
    if (nn_ckr_key(r, "format") != 0 || nn_ckr_str(r, "format", &format) != 0)
        return -1;
    int ours = strcmp(format, NN_CKPT_FORMAT) == 0;
    if (!ours)
        nn_ckr_fail(r, 0, "format is \"%.40s\", not \"%s\"", format, NN_CKPT_FORMAT);
    free(format);
    if (!ours || nn_ckr_key(r, "format_version") != 0 ||
        nn_ckr_int(r, "format_version", INT64_MIN, INT64_MAX, &version) != 0)
        return -1;
    if (version != NN_CKPT_VERSION)
        return cds_errf(r->err, "checkpoint %s: format_version %lld is not supported (this build reads version %d); "
                        "use a build that matches the writer", r->path, (long long)version, NN_CKPT_VERSION);
    uint64_t rng_n;
    if (nn_ckr_key(r, "spec") != 0 || nn_ckr_json_object(r, "spec", &c->spec_json) != 0 ||
        nn_ckr_key(r, "hparams") != 0 || nn_ckr_json_object(r, "hparams", &c->hparams_json) != 0 ||
        nn_ckr_key(r, "epoch") != 0 || nn_ckr_int(r, "epoch", INT64_MIN, INT64_MAX, &c->epoch) != 0 ||
        nn_ckr_key(r, "step") != 0 || nn_ckr_int(r, "step", INT64_MIN, INT64_MAX, &c->step) != 0 ||
        r_visited(r, c) != 0 || nn_ckr_key(r, "optimizer") != 0 || nn_ckr_str(r, "optimizer", &c->optimizer) != 0 ||
        (!c->optimizer[0] && nn_ckr_fail(r, r->off, "optimizer is empty")) ||
        nn_ckr_key(r, "opt_t") != 0 ||
        nn_ckr_int(r, "opt_t", INT64_MIN, INT64_MAX, &c->opt_t) != 0 || nn_ckr_key(r, "rng") != 0 ||
        nn_ckr_count(r, MP_ARRAY, "rng", &rng_n) != 0)
        return -1;
    if (rng_n != 4)
        return nn_ckr_fail(r, r->off, "rng has %llu words, not 4", (unsigned long long)rng_n);
    for (int i = 0; i < 4; i++)
        if (nn_ckr_u64(r, "an rng word", &c->rng[i]) != 0)
            return -1;
    if (r_tensors(r, "params", &c->params, &c->n_params) != 0 ||
        r_tensors(r, "opt_state", &c->opt_state, &c->n_opt_state) != 0)
        return -1;
    if (r->off != r->end)
        return nn_ckr_fail(r, r->off, "%llu unexpected bytes before the crc32 entry",
                      (unsigned long long)(r->end - r->off));
    return 0;
}

/* The cheap checks that tell a foreign file, a truncated one and a corrupt
 * one apart, then the CRC over everything before the crc32 entry. */
static int check_frame(ck_reader *r, uint64_t size)
{
    unsigned char head[sizeof nn_ckpt_head_magic], tail[TAIL_LEN];
    size_t hn = size < sizeof head ? (size_t)size : sizeof head;
    if (nn_ckr_pread_all(r->fd, head, hn, 0) != 0)
        return nn_ckr_io_fail(r, errno);
    int head_ok = memcmp(head, nn_ckpt_head_magic, hn) == 0;
    if (size < sizeof nn_ckpt_head_magic + TAIL_LEN) {
        if (!head_ok)
            return cds_errf(r->err, "checkpoint %s: not a cds checkpoint (%llu bytes, without its header)", r->path,
                            (unsigned long long)size);
        return cds_errf(r->err, "checkpoint %s: truncated: only %llu bytes; use an older checkpoint", r->path,
                        (unsigned long long)size);
    }
    if (nn_ckr_pread_all(r->fd, tail, TAIL_LEN, size - TAIL_LEN) != 0)
        return nn_ckr_io_fail(r, errno);
    int tail_ok = memcmp(tail, nn_ckpt_tail_tag, sizeof nn_ckpt_tail_tag) == 0;
    if (!tail_ok && !head_ok)
        return cds_errf(r->err, "checkpoint %s: not a cds checkpoint (neither its header nor its crc32 entry is there)",
                        r->path);
    if (!tail_ok)
        return cds_errf(r->err, "checkpoint %s: truncated or damaged: it does not end with the crc32 entry "
                        "(%llu bytes); use an older checkpoint", r->path, (unsigned long long)size);
    uLong crc = crc32(0L, Z_NULL, 0);
    for (uint64_t off = 0; off < r->end;) {
        size_t k = r->end - off < IO_BUF ? (size_t)(r->end - off) : IO_BUF;
        if (nn_ckr_pread_all(r->fd, r->buf, k, off) != 0)
            return nn_ckr_io_fail(r, errno);
        crc = nn_ckpt_crc(crc, r->buf, k);
        off += k;
    }
    uint32_t stored = (uint32_t)nn_ckr_be_load(tail + 7, 4);
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
