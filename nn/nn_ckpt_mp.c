/* nn_ckpt_mp: the checkpoint reader's msgpack pull parser (see
 * nn_ckpt_read.c for why it is ours and not msgpack-c's unpacker).
 *
 * A ck_reader reads the file through pread(2) into a 64 KiB window and
 * hands out one msgpack head at a time (type, length or value, offset);
 * every length is checked against the bytes left before the crc32 entry
 * (r->end) before anything is allocated or read, so a crafted file cannot
 * make it read past its end or allocate much more than its size.  Any valid
 * encoding of an integer is accepted; JSON values (spec, hyper-parameters)
 * are rebuilt as jansson objects, at most JSON_MAX_DEPTH deep. */
#include "nn_ckpt_int.h"

static const char *kind_name(mp_kind k)
{
    static const char *names[] = {"nil", "a boolean", "an integer", "an integer", "a float", "a string", "a bin",
                                  "an array", "a map", "an ext"};
    return names[k];
}

int nn_ckr_fail(ck_reader *r, uint64_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int nn_ckr_fail(ck_reader *r, uint64_t at, const char *fmt, ...)
{
    char what[CDS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return cds_errf(r->err, "checkpoint %s: %s (at byte %llu; the file is damaged or not a cds checkpoint)", r->path,
                    what, (unsigned long long)at);
}

int nn_ckr_pread_all(int fd, void *dst, size_t n, uint64_t off)
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

int nn_ckr_io_fail(ck_reader *r, int e)
{
    return cds_errf(r->err, "checkpoint %s: read failed at byte %llu: %s", r->path, (unsigned long long)r->off,
                    e ? strerror(e) : "the file became shorter while being read");
}

int nn_ckr_oom(ck_reader *r, const char *what)
{
    return cds_err_nomem(r->err, "checkpoint %s: out of memory reading %s", r->path, what);
}

/* Copies the next n bytes. */
int nn_ckr_bytes(ck_reader *r, void *dst, uint64_t n)
{
    if (n > r->end - r->off)
        return nn_ckr_fail(r, r->off, "a value of %llu bytes runs past the end of the data", (unsigned long long)n);
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
            if (nn_ckr_pread_all(r->fd, p, (size_t)n, r->off) != 0)
                return nn_ckr_io_fail(r, errno);
            r->off += n;
            n = 0;
        } else {
            uint64_t left = r->end - r->off;
            size_t k = left < IO_BUF ? (size_t)left : IO_BUF;
            if (nn_ckr_pread_all(r->fd, r->buf, k, r->off) != 0)
                return nn_ckr_io_fail(r, errno);
            r->buf_off = r->off;
            r->buf_len = k;
        }
    }
    return 0;
}

uint64_t nn_ckr_be_load(const unsigned char *b, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | b[i];
    return v;
}

static int r_uint(ck_reader *r, int n, uint64_t *v)
{
    unsigned char b[8];
    if (nn_ckr_bytes(r, b, (uint64_t)n) != 0)
        return -1;
    *v = nn_ckr_be_load(b, n);
    return 0;
}

static int r_head(ck_reader *r, mp_head *h)
{
    unsigned char t;
    memset(h, 0, sizeof *h);
    h->at = r->off;
    if (nn_ckr_bytes(r, &t, 1) != 0)
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
    return nn_ckr_fail(r, h->at, "byte 0x%02x is not a msgpack type", t);
}

int nn_ckr_expect(ck_reader *r, mp_head *h, mp_kind kind, const char *what)
{
    if (r_head(r, h) != 0)
        return -1;
    if (h->kind != kind && !(kind == MP_UINT && h->kind == MP_INT))
        return nn_ckr_fail(r, h->at, "%s should be %s, found %s", what, kind_name(kind), kind_name(h->kind));
    return 0;
}

/* A str body as a C string; embedded NULs are refused. */
static int r_str_body(ck_reader *r, const mp_head *h, const char *what, char **out)
{
    if (h->n > r->end - r->off)
        return nn_ckr_fail(r, h->at, "%s of %llu bytes runs past the end of the data", what, (unsigned long long)h->n);
    char *s = malloc((size_t)h->n + 1);
    if (!s)
        return nn_ckr_oom(r, what);
    if (nn_ckr_bytes(r, s, h->n) != 0) {
        free(s);
        return -1;
    }
    s[h->n] = '\0';
    if (strlen(s) != h->n) {
        free(s);
        return nn_ckr_fail(r, h->at, "%s holds a NUL byte", what);
    }
    *out = s;
    return 0;
}

int nn_ckr_str(ck_reader *r, const char *what, char **out)
{
    mp_head h;
    if (nn_ckr_expect(r, &h, MP_STR, what) != 0)
        return -1;
    return r_str_body(r, &h, what, out);
}

int nn_ckr_key(ck_reader *r, const char *key)
{
    char *s = NULL, what[64];
    uint64_t at = r->off;
    snprintf(what, sizeof what, "the key \"%s\"", key);
    if (nn_ckr_str(r, what, &s) != 0)
        return -1;
    int same = strcmp(s, key) == 0;
    if (!same)
        nn_ckr_fail(r, at, "expected the key \"%s\", found \"%.40s\"", key, s);
    free(s);
    return same ? 0 : -1;
}

int nn_ckr_int(ck_reader *r, const char *what, int64_t min, int64_t max, int64_t *out)
{
    mp_head h;
    if (nn_ckr_expect(r, &h, MP_UINT, what) != 0)
        return -1;
    if (h.kind == MP_UINT && h.u > (uint64_t)INT64_MAX)
        return nn_ckr_fail(r, h.at, "%s is %llu, not in %lld .. %lld", what, (unsigned long long)h.u, (long long)min,
                      (long long)max);
    int64_t v = h.kind == MP_UINT ? (int64_t)h.u : h.i;
    if (v < min || v > max)
        return nn_ckr_fail(r, h.at, "%s is %lld, not in %lld .. %lld", what, (long long)v, (long long)min,
                           (long long)max);
    *out = v;
    return 0;
}

int nn_ckr_u64(ck_reader *r, const char *what, uint64_t *out)
{
    mp_head h;
    if (nn_ckr_expect(r, &h, MP_UINT, what) != 0)
        return -1;
    if (h.kind == MP_INT && h.i < 0)
        return nn_ckr_fail(r, h.at, "%s is negative", what);
    *out = h.kind == MP_UINT ? h.u : (uint64_t)h.i;
    return 0;
}

int nn_ckr_count(ck_reader *r, mp_kind kind, const char *what, uint64_t *n)
{
    mp_head h;
    if (nn_ckr_expect(r, &h, kind, what) != 0)
        return -1;
    /* Each item takes at least one byte, so a count larger than what is left
     * is a lie, and checking it here bounds every allocation by the file. */
    if (h.n > r->end - r->off)
        return nn_ckr_fail(r, h.at, "%s claims %llu items, more than the bytes left", what, (unsigned long long)h.n);
    *n = h.n;
    return 0;
}

static json_t *r_json(ck_reader *r, const char *what, int depth);

static json_t *r_json_array(ck_reader *r, const mp_head *h, const char *what, int depth)
{
    json_t *j = json_array();
    if (!j) {
        nn_ckr_oom(r, what);
        return NULL;
    }
    for (uint64_t i = 0; i < h->n; i++) {
        json_t *v = r_json(r, what, depth + 1);
        if (!v || json_array_append_new(j, v) != 0) {
            if (v)
                nn_ckr_oom(r, what);
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
        nn_ckr_oom(r, what);
        return NULL;
    }
    for (uint64_t i = 0; i < h->n; i++) {
        char *k = NULL;
        uint64_t at = r->off;
        if (nn_ckr_str(r, what, &k) != 0) {
            json_decref(j);
            return NULL;
        }
        json_t *v = NULL;
        int ok = 0;
        if (json_object_get(j, k))
            nn_ckr_fail(r, at, "%s has the key \"%.40s\" twice", what, k);
        else if ((v = r_json(r, what, depth + 1)) != NULL) /* else r_json said why */
            ok = json_object_set_new(j, k, v) == 0 ||
                 nn_ckr_fail(r, at, "%s has the key \"%.40s\", which is not UTF-8", what, k) == 0;
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
        nn_ckr_fail(r, r->off, "%s nests deeper than %d levels", what, JSON_MAX_DEPTH);
        return NULL;
    }
    if (r_head(r, &h) != 0)
        return NULL;
    switch (h.kind) {
    case MP_NIL: j = json_null(); break;
    case MP_BOOL: j = json_boolean(h.u); break;
    case MP_UINT:
        if (h.u > (uint64_t)INT64_MAX) {
            nn_ckr_fail(r, h.at, "%s holds the integer %llu, beyond JSON's int64", what, (unsigned long long)h.u);
            return NULL;
        }
        j = json_integer((json_int_t)h.u);
        break;
    case MP_INT: j = json_integer(h.i); break;
    case MP_REAL:
        if (h.d != h.d || h.d - h.d != 0) {
            nn_ckr_fail(r, h.at, "%s holds a NaN or an infinity, which JSON cannot", what);
            return NULL;
        }
        j = json_real(h.d);
        break;
    case MP_STR: {
        char *s = NULL;
        if (r_str_body(r, &h, what, &s) != 0)
            return NULL;
        j = json_string(s);
        free(s);
        if (!j) {
            nn_ckr_fail(r, h.at, "%s holds a string that is not UTF-8", what);
            return NULL;
        }
        break;
    }
    case MP_ARRAY:
    case MP_MAP:
        if (h.n > r->end - r->off) {
            nn_ckr_fail(r, h.at, "%s claims %llu items, more than the bytes left", what, (unsigned long long)h.n);
            return NULL;
        }
        return h.kind == MP_ARRAY ? r_json_array(r, &h, what, depth) : r_json_map(r, &h, what, depth);
    case MP_BIN:
    case MP_EXT:
        nn_ckr_fail(r, h.at, "%s holds %s, which JSON cannot", what, kind_name(h.kind));
        return NULL;
    }
    if (!j)
        nn_ckr_oom(r, what);
    return j;
}

int nn_ckr_json_object(ck_reader *r, const char *what, char **out)
{
    uint64_t at = r->off;
    json_t *j = r_json(r, what, 0);
    if (!j)
        return -1;
    if (!json_is_object(j)) {
        json_decref(j);
        return nn_ckr_fail(r, at, "%s should be a map", what);
    }
    *out = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    if (!*out)
        return cds_err_nomem(r->err, "checkpoint %s: out of memory writing %s as JSON", r->path, what);
    return 0;
}

