/* nn_export: see nn_export.h.
 *
 * The safetensors layout: 8 bytes, the header's length N (little-endian
 * u64); N bytes of JSON, {name: {"dtype", "shape", "data_offsets": [begin,
 * end]}, ..., "__metadata__": {string: string}}, padded with spaces to a
 * multiple of 8; then every tensor's bytes back to back, little-endian, in
 * the header's order, begin and end counted from there.  The readers want
 * the tensors to tile the data exactly (no gap, no overlap).
 *
 * A batch-norm layer (a parameter "<p>.running_var") gets
 * "<p>.num_batches_tracked", an int64 scalar, beside its running
 * statistics: PyTorch keeps it and a strict load_state_dict asks for it.
 * Its value is the checkpoint's step count, the number of training
 * batches the statistics saw.  The int64 scalars come first, so that every
 * tensor starts at a multiple of its element's size.  The metadata says
 * the format ("pt") and the model's spec and epoch. */
#include "nn_export.h"

#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cds_util.h"

#define BN_VAR ".running_var"

/* The batch-norm prefix of parameter t ("layer1.0.bn1"), or 0 when t is no
 * running variance; into out. */
static int bn_prefix(const nn_ckpt_tensor *t, char *out, size_t n)
{
    size_t len = strlen(t->name), suf = strlen(BN_VAR);
    if (len <= suf || strcmp(t->name + len - suf, BN_VAR) != 0 || len - suf + 32 > n)
        return 0;
    snprintf(out, n, "%.*s", (int)(len - suf), t->name);
    return 1;
}

static size_t tensor_floats(const nn_ckpt_tensor *t)
{
    size_t k = 1;
    for (int d = 0; d < t->ndim; d++)
        k *= (size_t)t->shape[d];
    return k;
}

static json_t *entry(const char *dtype, const nn_ckpt_tensor *t, size_t begin, size_t end)
{
    json_t *shape = json_array();
    for (int d = 0; t && shape && d < t->ndim; d++)
        json_array_append_new(shape, json_integer(t->shape[d]));
    return json_pack("{s:s, s:o, s:[I, I]}", "dtype", dtype, "shape", shape, "data_offsets", (json_int_t)begin,
                     (json_int_t)end);
}

/* The header: the int64 counters, then the float tensors; *data_bytes the
 * data's length. */
static char *header_json(const nn_ckpt *c, size_t *data_bytes, cds_err *err)
{
    json_t *h = json_object();
    size_t at = 0;
    char name[512];
    for (size_t i = 0; h && i < c->n_params; i++)
        if (bn_prefix(&c->params[i], name, sizeof name)) {
            strcat(name, ".num_batches_tracked");
            json_object_set_new(h, name, entry("I64", NULL, at, at + 8));
            at += 8;
        }
    for (size_t i = 0; h && i < c->n_params; i++) {
        size_t bytes = tensor_floats(&c->params[i]) * sizeof(float);
        json_object_set_new(h, c->params[i].name, entry("F32", &c->params[i], at, at + bytes));
        at += bytes;
    }
    char epoch[32];
    snprintf(epoch, sizeof epoch, "%lld", (long long)c->epoch);
    if (h)
        json_object_set_new(h, "__metadata__", json_pack("{s:s, s:s, s:s}", "format", "pt", "cds_model",
                                                         c->spec_json ? c->spec_json : "{}", "cds_epoch", epoch));
    char *text = h ? json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(h);
    if (!text)
        return cds_err_nomem(err, "out of memory writing a safetensors header"), NULL;
    *data_bytes = at;
    return text;
}

static int write_all(FILE *f, const void *p, size_t n)
{
    return n == 0 || fwrite(p, 1, n, f) == n ? 0 : -1;
}

/* Little-endian, whatever the host. */
static void put_u64(unsigned char *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

static int write_body(FILE *f, const nn_ckpt *c, const char *header)
{
    size_t hn = strlen(header), padded = (hn + 7) / 8 * 8;
    unsigned char len[8];
    put_u64(len, padded);
    int rc = write_all(f, len, 8) || write_all(f, header, hn) || write_all(f, "        ", padded - hn);
    char name[512];
    for (size_t i = 0; rc == 0 && i < c->n_params; i++)
        if (bn_prefix(&c->params[i], name, sizeof name)) {
            unsigned char v[8];
            put_u64(v, (uint64_t)c->step);
            rc = write_all(f, v, 8);
        }
    for (size_t i = 0; rc == 0 && i < c->n_params; i++) {
        const nn_ckpt_tensor *t = &c->params[i];
        size_t k = tensor_floats(t);
        for (size_t j = 0; rc == 0 && j < k; j++) {
            uint32_t u;
            memcpy(&u, &t->data[j], 4);
            unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                                  (unsigned char)(u >> 24)};
            rc = write_all(f, b, 4);
        }
    }
    return rc;
}

int nn_export_write(const char *path, int (*body)(FILE *f, void *ctx), void *ctx, cds_err *err)
{
    size_t n = strlen(path) + 16;
    char *tmp = malloc(n);
    if (!tmp)
        return cds_err_nomem(err, "out of memory");
    snprintf(tmp, n, "%s.tmp-XXXXXX", path); /* a mkstemp template */
    int fd = mkstemp(tmp);
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    int rc = -1;
    if (!f) {
        cds_errf(err, "cannot write beside %s: %s (a directory you may write to, for --out)", path, strerror(errno));
        if (fd >= 0)
            close(fd);
    } else {
        int bad = body(f, ctx) != 0 || fflush(f) != 0 || fsync(fileno(f)) != 0;
        int saved = errno;
        bad = fclose(f) != 0 || bad;
        if (!bad && rename(tmp, path) == 0)
            rc = 0;
        else
            cds_errf(err, "writing %s: %s", path, strerror(bad ? saved : errno));
    }
    if (rc != 0 && fd >= 0)
        unlink(tmp);
    free(tmp);
    return rc;
}

typedef struct st_ctx {
    const nn_ckpt *c;
    const char *header;
} st_ctx;

static int st_body(FILE *f, void *ctx)
{
    st_ctx *x = ctx;
    return write_body(f, x->c, x->header);
}

int nn_export_safetensors(const nn_ckpt *c, const char *path, cds_err *err)
{
    size_t data_bytes = 0;
    char *header = header_json(c, &data_bytes, err);
    if (!header)
        return -1;
    st_ctx x = {.c = c, .header = header};
    int rc = nn_export_write(path, st_body, &x, err);
    free(header);
    return rc;
}
