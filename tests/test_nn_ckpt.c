/* nn_ckpt: msgpack checkpoints.
 *
 * Round trip of every field bit for bit (NaN payloads, -0, infinities and
 * empty and scalar tensors included); the same content gives the same bytes
 * whatever the key order of the JSON; the header, the tail and the CRC rule
 * of docs/checkpoint.md hold byte for byte; tensors split into many chunks.
 * Damage: every truncation of a small checkpoint and thousands of a larger
 * one, a bit flip at every byte, and crafted files whose CRC is right but
 * whose structure is not are refused with one line naming the file, never
 * accepted, never a crash; random mutations with a fixed-up CRC never crash.
 * Faults: a full disk at many byte offsets, short writes, EINTR, a failing
 * fsync (through the write hooks), RLIMIT_FSIZE in a child (EFBIG), a missing
 * directory, a path under a file, a path that is a directory: each is an
 * error naming the file, leaves no temporary file, and the previous
 * checkpoint still loads unchanged.  The Python reader of the doc (the same
 * text as tests/ckpt_reader.py, at most 30 lines) reads what C wrote, with
 * the same names, shapes and sums, and refuses a corrupt file. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "cds_util.h"
#include "etl_shard.h"
#include "nn_ckpt.h"
#include "nn_par.h"
#include "nn_rng.h"
#include "nn_train.h"
#include "tap.h"

#define PY "/usr/bin/python3"

static char root[256];
static char src_root[1024];

static void skip(const char *name, const char *why) { tap_ok_at(1, "", __FILE__, __LINE__, "%s # SKIP %s", name, why); }

static void in_root(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", root, name); }

/* ---- files ---- */

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(len > 0 ? (size_t)len : 1);
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return b;
}

/* A new file each time: truncating one with data in it makes ext4 flush
 * it (auto_da_alloc), which for thousands of damaged copies is slow. */
static void spit(const char *path, const void *b, size_t n)
{
    unlink(path);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, n, f) != n || fclose(f) != 0)
        tap_bail("cannot write a test file");
}

static int same_file(const char *a, const char *b)
{
    size_t na, nb;
    unsigned char *x = slurp(a, &na), *y = slurp(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* Names in dir containing ".tmp-" (temporary files left behind). */
static int count_tmp(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strstr(e->d_name, ".tmp-") != NULL;
    if (d)
        closedir(d);
    return n;
}

static uint32_t stored_crc(const unsigned char *b, size_t n)
{
    return (uint32_t)b[n - 4] << 24 | (uint32_t)b[n - 3] << 16 | (uint32_t)b[n - 2] << 8 | b[n - 1];
}

/* Rewrites the stored CRC so that only the structure can be wrong. */
static void fix_crc(unsigned char *b, size_t n)
{
    uint32_t c = (uint32_t)crc32(0L, b, (uInt)(n - 11));
    b[n - 4] = (unsigned char)(c >> 24);
    b[n - 3] = (unsigned char)(c >> 16);
    b[n - 2] = (unsigned char)(c >> 8);
    b[n - 1] = (unsigned char)c;
}

/* ---- checkpoints to save ---- */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void add_tensor(nn_ckpt_tensor **t, size_t *n, const char *name, int ndim, const int64_t *shape, uint64_t *s)
{
    *t = realloc(*t, (*n + 1) * sizeof **t);
    nn_ckpt_tensor *x = &(*t)[(*n)++];
    memset(x, 0, sizeof *x);
    x->name = strdup(name);
    x->ndim = ndim;
    size_t count = 1;
    for (int d = 0; d < ndim; d++) {
        x->shape[d] = shape[d];
        count *= (size_t)shape[d];
    }
    x->data = malloc((count ? count : 1) * sizeof(float));
    for (size_t i = 0; i < count; i++)
        x->data[i] = (float)((double)(rng_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static const char *SPEC =
    "{\"arch\": \"cnn\", \"input\": [1, 28, 28], \"classes\": 10, \"width\": 1.0, \"dropout\": 0.0}";
static const char *SPEC_REORDERED =
    "{\"dropout\":0.0,\"width\":1.0,\"classes\":10,\"input\":[1,28,28],\"arch\":\"cnn\"}";
static const char *SPEC_CANON = "{\"arch\":\"cnn\",\"classes\":10,\"dropout\":0.0,\"input\":[1,28,28],\"width\":1.0}";
static const char *HPARAMS =
    "{\"optimizer\": \"adam\", \"lr\": 0.001, \"beta1\": 0.9, \"eps\": 1e-8, \"batch\": 64, \"seed\": 1, "
    "\"schedule\": {\"kind\": \"constant\"}, \"normalize\": {\"scale\": 0.00392156862745098, \"mean\": [0.0], "
    "\"std\": [1.0]}, \"misc\": [true, false, null, -5, 300, -40000, 9007199254740993, \"\\u00fc\\u6f22\", "
    "{\"z\": {}, \"a\": []}]}";

/* fc_rows sets the size: 16 gives a ~3 KB file, 1000 one of ~170 KB. */
static void make_ckpt(nn_ckpt *c, uint64_t seed, int64_t fc_rows, const char *spec)
{
    memset(c, 0, sizeof *c);
    uint64_t s = seed * 2654435761u + 1;
    c->spec_json = strdup(spec);
    c->hparams_json = strdup(HPARAMS);
    c->epoch = 3;
    c->step = 123456789012LL;
    static const int32_t visited[] = {5, 2, 0, 9, INT32_MAX, 7};
    c->n_visited = sizeof visited / sizeof *visited;
    c->visited = malloc(sizeof visited);
    memcpy(c->visited, visited, sizeof visited);
    c->optimizer = strdup("adam");
    c->opt_t = 77;
    c->rng[0] = UINT64_MAX;
    c->rng[1] = 0;
    c->rng[2] = 0x8000000000000001ULL;
    c->rng[3] = seed;
    int64_t conv[4] = {4, 1, 3, 3}, b4[1] = {4}, fc[2] = {fc_rows, 36}, empty[2] = {0, 3};
    add_tensor(&c->params, &c->n_params, "conv1.weight", 4, conv, &s);
    add_tensor(&c->params, &c->n_params, "conv1.bias", 1, b4, &s);
    add_tensor(&c->params, &c->n_params, "bn1.running_mean", 1, b4, &s);
    add_tensor(&c->params, &c->n_params, "fc.weight", 2, fc, &s);
    add_tensor(&c->params, &c->n_params, "scale", 0, NULL, &s);
    add_tensor(&c->params, &c->n_params, "empty", 2, empty, &s);
    add_tensor(&c->opt_state, &c->n_opt_state, "m:conv1.weight", 4, conv, &s);
    add_tensor(&c->opt_state, &c->n_opt_state, "v:conv1.weight", 4, conv, &s);
    add_tensor(&c->opt_state, &c->n_opt_state, "m:fc.weight", 2, fc, &s);
}

/* Values that only a bit-for-bit copy keeps. */
static void add_specials(nn_ckpt *c)
{
    uint32_t bits[] = {0x7fc00001u, 0xffc12345u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x00000001u, 0x7f7fffffu};
    int64_t shape[1] = {sizeof bits / sizeof *bits};
    uint64_t s = 1;
    add_tensor(&c->params, &c->n_params, "specials", 1, shape, &s);
    memcpy(c->params[c->n_params - 1].data, bits, sizeof bits);
}

static size_t tensor_count(const nn_ckpt_tensor *t)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

static int tensors_equal(const nn_ckpt_tensor *a, const nn_ckpt_tensor *b, size_t n, char *why, size_t wn)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(a[i].name, b[i].name) != 0 || a[i].ndim != b[i].ndim ||
            memcmp(a[i].shape, b[i].shape, (size_t)a[i].ndim * sizeof(int64_t)) != 0) {
            snprintf(why, wn, "tensor %zu: name or shape differs (%s / %s)", i, a[i].name, b[i].name);
            return 0;
        }
        if (memcmp(a[i].data, b[i].data, tensor_count(&a[i]) * sizeof(float)) != 0) {
            snprintf(why, wn, "tensor %s: data differs", a[i].name);
            return 0;
        }
    }
    return 1;
}

/* Every field, bit for bit; the JSON texts are compared as given. */
static int ckpt_equal(const nn_ckpt *a, const nn_ckpt *b, char *why, size_t wn)
{
    snprintf(why, wn, "equal");
    if (strcmp(a->spec_json, b->spec_json) != 0 || strcmp(a->hparams_json, b->hparams_json) != 0)
        return snprintf(why, wn, "JSON differs"), 0;
    if (a->epoch != b->epoch || a->step != b->step || a->opt_t != b->opt_t || strcmp(a->optimizer, b->optimizer) != 0)
        return snprintf(why, wn, "epoch, step, opt_t or optimizer differs"), 0;
    if (a->n_visited != b->n_visited || memcmp(a->visited, b->visited, a->n_visited * sizeof(int32_t)) != 0)
        return snprintf(why, wn, "visited differs"), 0;
    if (memcmp(a->rng, b->rng, sizeof a->rng) != 0)
        return snprintf(why, wn, "rng differs"), 0;
    if (a->n_params != b->n_params || a->n_opt_state != b->n_opt_state)
        return snprintf(why, wn, "tensor counts differ"), 0;
    return tensors_equal(a->params, b->params, a->n_params, why, wn) &&
           tensors_equal(a->opt_state, b->opt_state, a->n_opt_state, why, wn);
}

/* The JSON texts as load gives them back. */
static void canonicalise(nn_ckpt *c, const char *spec_canon)
{
    cds_err err;
    char p[512];
    nn_ckpt tmp;
    in_root(p, sizeof p, "canon.ckpt");
    if (nn_ckpt_save(p, c, &err) != 0 || nn_ckpt_load(p, &tmp, &err) != 0)
        tap_bail(err.msg);
    free(c->spec_json);
    free(c->hparams_json);
    c->spec_json = strdup(spec_canon ? spec_canon : tmp.spec_json);
    c->hparams_json = strdup(tmp.hparams_json);
    nn_ckpt_free(&tmp);
    unlink(p);
}

static int one_line(const char *msg) { return msg[0] && !strchr(msg, '\n'); }

/* ---- round trip ---- */

static void test_round_trip(void)
{
    char a[512], b[512], why[256];
    cds_err err = {0};
    nn_ckpt c, back;
    make_ckpt(&c, 1, 16, SPEC);
    add_specials(&c);
    in_root(a, sizeof a, "a.ckpt");
    in_root(b, sizeof b, "b.ckpt");
    ok(nn_ckpt_save(a, &c, &err) == 0, "save: %s", err.msg);
    ok(count_tmp(root) == 0, "no temporary file left after a save");
    ok(nn_ckpt_load(a, &back, &err) == 0, "load: %s", err.msg);
    ok(back.spec_json && strcmp(back.spec_json, SPEC_CANON) == 0, "the spec comes back canonical: %s",
       back.spec_json ? back.spec_json : "(null)");
    ok(back.hparams_json && strstr(back.hparams_json, "\"lr\":0.001,") &&
           strstr(back.hparams_json, "\"misc\":[true,false,null,-5,300,-40000,9007199254740993,") &&
           strstr(back.hparams_json, "{\"a\":[],\"z\":{}}") && strncmp(back.hparams_json, "{\"batch\":64,", 12) == 0,
       "the hyper-parameters come back canonical: %s", back.hparams_json ? back.hparams_json : "(null)");
    nn_ckpt expect = c;
    expect.spec_json = back.spec_json;
    expect.hparams_json = back.hparams_json;
    ok(ckpt_equal(&expect, &back, why, sizeof why), "every field and tensor round-trips bit for bit: %s", why);
    const nn_ckpt_tensor *t = nn_ckpt_find(back.params, back.n_params, "empty");
    ok(t && t->ndim == 2 && t->shape[0] == 0 && t->data != NULL, "an empty tensor comes back with a data pointer");
    t = nn_ckpt_find(back.params, back.n_params, "scale");
    ok(t && t->ndim == 0 && t->data[0] == c.params[4].data[0], "a scalar (ndim 0) comes back");
    ok(nn_ckpt_find(back.opt_state, back.n_opt_state, "m:fc.weight") == &back.opt_state[2] &&
           nn_ckpt_find(back.params, back.n_params, "m:fc.weight") == NULL &&
           nn_ckpt_find(back.params, back.n_params, "conv1") == NULL,
       "nn_ckpt_find finds by exact name, in the list given");

    /* Same content, same bytes: twice; from the loaded copy; with the spec's keys reordered. */
    ok(nn_ckpt_save(b, &c, &err) == 0 && same_file(a, b), "saving twice gives the same bytes");
    ok(nn_ckpt_save(b, &back, &err) == 0 && same_file(a, b), "saving what was loaded gives the same bytes");
    free(c.spec_json);
    c.spec_json = strdup(SPEC_REORDERED);
    ok(nn_ckpt_save(b, &c, &err) == 0 && same_file(a, b), "the key order of the spec JSON does not change the bytes");
    c.epoch = 4;
    ok(nn_ckpt_save(b, &c, &err) == 0 && !same_file(a, b), "a different epoch does change them (the check can fail)");

    /* The byte-level promises of docs/checkpoint.md. */
    size_t n;
    unsigned char *d = slurp(a, &n);
    static const char head[] = "\x8d\xa6" "format\xae" "cds-checkpoint\xae" "format_version\x01";
    ok(d && n > 50 && memcmp(d, head, 39) == 0, "the file starts with the 39-byte header of the doc");
    ok(d && memcmp(d + n - 11, "\xa5" "crc32\xce", 7) == 0, "and ends with a5 \"crc32\" ce + 4 bytes");
    ok(d && (uint32_t)crc32(0L, d, (uInt)(n - 11)) == stored_crc(d, n), "the CRC covers exactly data[:-11]");
    static const unsigned char epoch[] = {0xa5, 'e', 'p', 'o', 'c', 'h', 0xd3, 0, 0, 0, 0, 0, 0, 0, 3};
    ok(d && memmem(d, n, epoch, sizeof epoch), "epoch is written as int64 (0xd3) even when small");
    static const unsigned char rng[] = {0xa3, 'r', 'n', 'g', 0x94, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                        0xff, 0xcf, 0, 0, 0, 0, 0, 0, 0, 0};
    ok(d && memmem(d, n, rng, sizeof rng), "rng is written as 4 uint64 (0xcf)");
    static const unsigned char vis[] = {0xa7, 'v', 'i', 's', 'i', 't', 'e', 'd', 0x96, 0xd2, 0, 0, 0, 5};
    ok(d && memmem(d, n, vis, sizeof vis), "visited is written as int32 (0xd2)");
    free(d);
    nn_ckpt_free(&back);
    nn_ckpt_free(&c);
    ok(c.params == NULL && c.n_params == 0, "nn_ckpt_free zeroes");
    nn_ckpt_free(&c); /* twice is harmless */
    unlink(b);
}

/* ---- chunks ---- */

static void test_chunks(void)
{
    char one[512], many[512], why[256];
    cds_err err = {0};
    nn_ckpt c, back;
    make_ckpt(&c, 2, 278, SPEC); /* fc.weight: 278*36*4 = 40032 bytes */
    canonicalise(&c, SPEC_CANON);
    in_root(one, sizeof one, "one.ckpt");
    in_root(many, sizeof many, "many.ckpt");
    nn_ckpt_save_opts o = {.chunk_bytes = 1000};
    ok(nn_ckpt_save(one, &c, &err) == 0 && nn_ckpt_save_with(many, &c, &o, &err) == 0,
       "save with 1 GiB and 1000-byte chunks: %s", err.msg);
    size_t n1 = 0, n2 = 0;
    free(slurp(one, &n1));
    free(slurp(many, &n2));
    /* fc.weight and m:fc.weight (40032 bytes each) become 41 chunks: 40 of
     * 1000 (bin16, 3-byte header) and one of 32 (bin8, 2 bytes), under an
     * array16 header (3 bytes), instead of one bin16 of 40032 under a
     * fixarray (1 byte).  The other tensors (144 bytes at most) are one
     * chunk either way.  So the difference is exact, and proves the
     * chunking happened. */
    long want = 2L * ((40 * 1003 + 34 + 3) - (3 + 40032 + 1));
    ok((long)n2 - (long)n1 == want, "1000-byte chunks add exactly %ld bytes (got %ld)", want, (long)n2 - (long)n1);
    ok(nn_ckpt_load(many, &back, &err) == 0 && ckpt_equal(&c, &back, why, sizeof why),
       "multi-chunk tensors round-trip: %s %s", err.msg, why);
    nn_ckpt_free(&back);
    o.chunk_bytes = 3; /* chunks that split floats */
    ok(nn_ckpt_save_with(many, &c, &o, &err) == 0 && nn_ckpt_load(many, &back, &err) == 0 &&
           ckpt_equal(&c, &back, why, sizeof why),
       "3-byte chunks (floats split across chunks) round-trip: %s %s", err.msg, why);
    nn_ckpt_free(&back);
    o.chunk_bytes = NN_CKPT_CHUNK_MAX + 1;
    ok(nn_ckpt_save_with(many, &c, &o, &err) != 0 && strstr(err.msg, "chunk size"), "a chunk over 1 GiB is refused: %s",
       err.msg);
    o.chunk_bytes = 1000;
    nn_ckpt_save_with(many, &c, &o, &err);
    nn_ckpt_free(&c);
}

/* ---- the Python reader ---- */

static int have_python(void) { return system(PY " -c 'import msgpack, numpy' >/dev/null 2>&1") == 0; }

/* Runs the reader; its output goes to out.  Returns its exit status. */
static int run_reader(const char *path, char *out, size_t n)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, PY " '%s/tests/ckpt_reader.py' '%s' 2>&1", src_root, path);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t got = fread(out, 1, n - 1, p);
    out[got] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void shape_text(const nn_ckpt_tensor *t, char *out, size_t n)
{
    out[0] = '\0';
    for (int d = 0; d < t->ndim; d++)
        snprintf(out + strlen(out), n - strlen(out), d ? "x%lld" : "%lld", (long long)t->shape[d]);
    if (t->ndim == 0)
        snprintf(out, n, "scalar");
}

/* Compares the reader's lines with the tensors; returns the number that match. */
static int check_reader_lines(char *out, const nn_ckpt *c, char *why, size_t wn)
{
    char *save = NULL, *line = strtok_r(out, "\n", &save);
    snprintf(why, wn, "no output");
    if (!line || strncmp(line, "epoch\t", 6) != 0)
        return 0;
    int good = 0;
    for (size_t i = 0; i < c->n_params + c->n_opt_state; i++) {
        const nn_ckpt_tensor *t = i < c->n_params ? &c->params[i] : &c->opt_state[i - c->n_params];
        line = strtok_r(NULL, "\n", &save);
        char name[256], shape[128], want_shape[128];
        double sum, want = 0, mag = 0;
        if (!line || sscanf(line, "%255[^\t]\t%127[^\t]\t%lf", name, shape, &sum) != 3) {
            snprintf(why, wn, "line %zu unreadable: %s", i + 2, line ? line : "(missing)");
            return good;
        }
        for (size_t k = 0; k < tensor_count(t); k++) {
            want += t->data[k];
            mag += fabs(t->data[k]);
        }
        shape_text(t, want_shape, sizeof want_shape);
        /* numpy sums pairwise, we sum in order, both in double: each of the
         * n ≤ 1e4 roundings is at most 2^-53 of a partial sum ≤ Σ|x|, far
         * below 1e-6 of Σ|x|. */
        if (strcmp(name, t->name) != 0 || strcmp(shape, want_shape) != 0 || fabs(sum - want) > 1e-6 * mag + 1e-30) {
            snprintf(why, wn, "%s %s %.17g vs %s %s %.17g", name, shape, sum, t->name, want_shape, want);
            return good;
        }
        good++;
    }
    snprintf(why, wn, "all match");
    return good;
}

/* The reader in the doc is the file the test runs, and fits in 30 lines. */
static void test_reader_is_the_doc(void)
{
    char rp[1200], dp[1200];
    snprintf(rp, sizeof rp, "%s/tests/ckpt_reader.py", src_root);
    snprintf(dp, sizeof dp, "%s/docs/checkpoint.md", src_root);
    size_t rn = 0, dn = 0;
    unsigned char *r = slurp(rp, &rn), *d = slurp(dp, &dn);
    int lines = 0;
    for (size_t i = 0; r && i < rn; i++)
        lines += r[i] == '\n';
    ok(r && lines > 0 && lines <= 30, "tests/ckpt_reader.py has %d lines (at most 30)", lines);
    char *block = NULL;
    if (d) {
        char *text = strndup((char *)d, dn), *start = strstr(text, "```python\n"), *end = NULL;
        if (start && (end = strstr(start + 10, "```\n")))
            block = strndup(start + 10, (size_t)(end - start - 10));
        free(text);
    }
    ok(r && block && strlen(block) == rn && memcmp(block, r, rn) == 0,
       "docs/checkpoint.md holds tests/ckpt_reader.py verbatim (%s)", block ? "block found" : "no python block");
    free(block);
    free(r);
    free(d);
}

static void test_python(void)
{
    test_reader_is_the_doc();
    if (!have_python()) {
        for (int i = 0; i < 5; i++)
            skip("python reader", PY " lacks msgpack or numpy (apt-get install python3-msgpack python3-numpy)");
        return;
    }
    char path[512], out[16384], why[512];
    cds_err err = {0};
    nn_ckpt c;
    make_ckpt(&c, 3, 278, SPEC);
    in_root(path, sizeof path, "py.ckpt");
    nn_ckpt_save(path, &c, &err);
    int rc = run_reader(path, out, sizeof out);
    int n = check_reader_lines(out, &c, why, sizeof why);
    ok(rc == 0 && n == (int)(c.n_params + c.n_opt_state), "the Python reader reads every tensor as C wrote it: %s",
       why);
    nn_ckpt_save_opts o = {.chunk_bytes = 1000};
    nn_ckpt_save_with(path, &c, &o, &err);
    rc = run_reader(path, out, sizeof out);
    n = check_reader_lines(out, &c, why, sizeof why);
    ok(rc == 0 && n == (int)(c.n_params + c.n_opt_state), "and 1000-byte chunks: %s", why);

    size_t len;
    unsigned char *d = slurp(path, &len);
    d[len / 2] ^= 0x10;
    spit(path, d, len);
    rc = run_reader(path, out, sizeof out);
    ok(rc != 0 && strstr(out, "CRC-32 mismatch"), "it refuses a flipped bit (exit %d): %.200s", rc, out);
    d[len / 2] ^= 0x10;
    spit(path, d, len - 5);
    rc = run_reader(path, out, sizeof out);
    ok(rc != 0 && strstr(out, "no crc32 entry"), "and a truncated file (exit %d): %.200s", rc, out);
    spit(path, d, len);
    rc = run_reader(path, out, sizeof out);
    ok(rc == 0, "and reads the repaired file again (exit %d)", rc);
    free(d);
    nn_ckpt_free(&c);
    unlink(path);
}

/* ---- damage ---- */

/* Loads path, which must be refused with one line naming it that contains
 * one of the expected phrases.  Returns 1 when it is. */
static int refused(const char *path, const char *const *phrases, char *msg, size_t mn)
{
    cds_err err = {0};
    nn_ckpt c;
    memset(&c, 0x5a, sizeof c);
    int rc = nn_ckpt_load(path, &c, &err);
    snprintf(msg, mn, "%s", err.msg);
    int zeroed = c.params == NULL && c.spec_json == NULL && c.n_params == 0;
    if (rc == 0) {
        snprintf(msg, mn, "ACCEPTED");
        nn_ckpt_free(&c);
        return 0;
    }
    if (!zeroed || !one_line(err.msg) || !strstr(err.msg, path))
        return 0;
    for (int i = 0; phrases[i]; i++)
        if (strstr(err.msg, phrases[i]))
            return 1;
    return 0;
}

static const char *const DAMAGE[] = {"truncated", "CRC-32 mismatch", "not a cds checkpoint", NULL};

static void test_truncation(void)
{
    char good[512], bad[512], msg[CDS_ERR_MAX], first_bad[CDS_ERR_MAX + 64] = "";
    cds_err err = {0};
    nn_ckpt c;
    make_ckpt(&c, 4, 16, SPEC);
    in_root(good, sizeof good, "trunc-src.ckpt");
    in_root(bad, sizeof bad, "trunc.ckpt");
    nn_ckpt_save(good, &c, &err);
    nn_ckpt_free(&c);
    size_t n;
    unsigned char *d = slurp(good, &n);
    int bad_count = 0;
    for (size_t len = 0; len < n; len++) {
        spit(bad, d, len);
        if (!refused(bad, DAMAGE, msg, sizeof msg) && bad_count++ == 0)
            snprintf(first_bad, sizeof first_bad, "at %zu: %s", len, msg);
    }
    ok(bad_count == 0, "every one of the %zu truncations of a small checkpoint is refused with one line: %s", n,
       first_bad);
    spit(bad, d, n / 2);
    refused(bad, DAMAGE, msg, sizeof msg);
    tap_diag("for example: %s", msg);
    free(d);

    /* A larger, multi-chunk one: random truncation points. */
    make_ckpt(&c, 5, 1000, SPEC);
    nn_ckpt_save_opts o = {.chunk_bytes = 4096};
    nn_ckpt_save_with(good, &c, &o, &err);
    nn_ckpt_free(&c);
    d = slurp(good, &n);
    uint64_t s = 99;
    bad_count = 0;
    for (int i = 0; i < 3000; i++) {
        size_t len = (size_t)(rng_next(&s) % n);
        spit(bad, d, len);
        if (!refused(bad, DAMAGE, msg, sizeof msg) && bad_count++ == 0)
            snprintf(first_bad, sizeof first_bad, "at %zu: %s", len, msg);
    }
    ok(bad_count == 0, "3000 random truncations of a %zu-byte checkpoint are refused: %s", n, first_bad);
    spit(bad, d, n - 11);
    ok(refused(bad, (const char *const[]){"truncated", NULL}, msg, sizeof msg),
       "losing the crc32 entry says truncated: %s", msg);
    free(d);
    unlink(good);
    unlink(bad);
}

static const char *const CORRUPT[] = {"CRC-32 mismatch", "truncated or damaged", NULL};

static void test_bit_flips(void)
{
    char good[512], bad[512], msg[CDS_ERR_MAX], first_bad[CDS_ERR_MAX + 64] = "";
    cds_err err = {0};
    nn_ckpt c;
    make_ckpt(&c, 6, 16, SPEC);
    in_root(good, sizeof good, "flip-src.ckpt");
    in_root(bad, sizeof bad, "flip.ckpt");
    nn_ckpt_save(good, &c, &err);
    nn_ckpt_free(&c);
    size_t n;
    unsigned char *d = slurp(good, &n);
    int bad_count = 0, tests = 0;
    for (size_t pos = 0; pos < n; pos++) {
        /* A different bit at each byte, all 8 in the header and the tail. */
        int all = pos < 39 || pos >= n - 11;
        for (int bit = all ? 0 : (int)(pos % 8); bit < (all ? 8 : (int)(pos % 8) + 1); bit++) {
            d[pos] ^= (unsigned char)(1u << bit);
            spit(bad, d, n);
            d[pos] ^= (unsigned char)(1u << bit);
            tests++;
            if (!refused(bad, CORRUPT, msg, sizeof msg) && bad_count++ == 0)
                snprintf(first_bad, sizeof first_bad, "byte %zu bit %d: %s", pos, bit, msg);
        }
    }
    ok(bad_count == 0, "%d single-bit flips over all %zu bytes are refused as corrupt: %s", tests, n, first_bad);
    free(d);
    unlink(good);
    unlink(bad);
}

/* Replaces the only occurrence of old (same length as new) and fixes the CRC. */
static int patch(unsigned char *d, size_t n, const void *old, const void *new_, size_t len)
{
    unsigned char *p = memmem(d, n, old, len);
    if (!p || memmem(p + 1, n - (size_t)(p + 1 - d), old, len))
        return -1;
    memcpy(p, new_, len);
    fix_crc(d, n);
    return 0;
}

static int no_fsync(void *ctx, int fd)
{
    (void)ctx;
    (void)fd;
    return 0;
}

/* Files whose CRC is right but whose structure is not. */
static void test_structure(void)
{
    char good[512], bad[512], msg[CDS_ERR_MAX];
    cds_err err = {0};
    nn_ckpt c;
    make_ckpt(&c, 7, 5, SPEC); /* fc.weight [5, 36] */
    in_root(good, sizeof good, "struct-src.ckpt");
    in_root(bad, sizeof bad, "struct.ckpt");
    nn_ckpt_save(good, &c, &err);
    nn_ckpt_free(&c);
    size_t n;
    unsigned char *orig = slurp(good, &n), *d = malloc(n + 1);
    /* fc.weight's shape [5, 36], found by what precedes it (m:fc.weight has
     * the same shape). */
    static const char fc_head[] = "\xa9" "fc.weight\xa5" "dtype\xa7" "float32\xa5" "shape";
    static const unsigned char dims[] = {0x92, 0xd3, 0, 0, 0, 0, 0, 0, 0, 5, 0xd3, 0, 0, 0, 0, 0, 0, 0, 36};
    enum { HL = sizeof fc_head - 1, SL = HL + sizeof dims };
    unsigned char shape5[SL], shape6[SL], shape4[SL], huge[SL], f64[HL];
    memcpy(shape5, fc_head, HL);
    memcpy(shape5 + HL, dims, sizeof dims);
    memcpy(shape6, shape5, SL);
    shape6[HL + 9] = 6;
    memcpy(shape4, shape5, SL);
    shape4[HL + 9] = 4;
    memcpy(huge, shape5, SL);
    huge[HL + 4] = 1; /* 2^40 + 5 rows */
    memcpy(f64, fc_head, HL);
    memcpy(f64 + HL - 8, "64", 2); /* "float32" -> "float64" */
    struct {
        const char *what;
        const void *old, *new_;
        size_t len;
        const char *phrase;
    } cases[] = {
        {"format_version 2", "format_version\x01", "format_version\x02", 15, "format_version 2 is not supported"},
        {"another format name", "cds-checkpoint", "cds-checkpoinx", 14, "format is \"cds-checkpoinx\""},
        {"a renamed key", "\xa5" "epoch", "\xa5" "epocx", 6, "expected the key \"epoch\""},
        {"dtype float64", fc_head, f64, HL, "has dtype \"float64\"; only float32 is supported"},
        {"a shape needing more data", shape5, shape6, SL, "the data chunks hold 720 bytes, its shape needs 864"},
        {"a shape needing less data", shape5, shape4, SL, "hold more than the 576 bytes"},
        {"a shape larger than the file", shape5, huge, SL, "needing more bytes than the file holds"},
        {"rng of 3 words", "\xa3rng\x94", "\xa3rng\x93", 5, "rng has 3 words"},
        {"epoch as a string", "\xa5" "epoch\xd3", "\xa5" "epoch\xa8", 7, "epoch should be an integer, found a string"},
        {"a map as the spec", "\xa4spec\x85", "\xa4spec\x95", 6, "spec should be a map"},
        {"a reserved type byte", "\xa5" "epoch\xd3", "\xa5" "epoch\xc1", 7, "byte 0xc1 is not a msgpack type"},
        {"a visited id beyond int32", "\xa7visited\x96\xd2", "\xa7visited\x96\xd3", 10,
         "not in -2147483648 .. 2147483647"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        memcpy(d, orig, n);
        int patched = patch(d, n, cases[i].old, cases[i].new_, cases[i].len) == 0;
        spit(bad, d, n);
        ok(patched && refused(bad, (const char *const[]){cases[i].phrase, NULL}, msg, sizeof msg),
           "%s is refused: %s", cases[i].what, patched ? msg : "(pattern not found)");
    }
    /* Trailing bytes before the crc32 entry. */
    memcpy(d, orig, n - 11);
    d[n - 11] = 0xc0;
    memcpy(d + n - 10, orig + n - 11, 11);
    fix_crc(d, n + 1);
    spit(bad, d, n + 1);
    ok(refused(bad, (const char *const[]){"1 unexpected bytes before the crc32 entry", NULL}, msg, sizeof msg),
       "a byte between opt_state and crc32 is refused: %s", msg);

    /* Random mutations with the CRC fixed up: the parser must never crash or
     * read out of bounds (ASan watches); what it accepts must re-save. */
    nn_ckpt_save_opts nosync = {.fsync_fn = no_fsync}; /* thousands of saves: spare the disk */
    uint64_t s = 7;
    int accepted = 0, resaved = 0, refused_n = 0, one_line_n = 0;
    for (int i = 0; i < 3000; i++) {
        memcpy(d, orig, n);
        int k = 1 + (int)(rng_next(&s) % 4);
        for (int j = 0; j < k; j++)
            d[rng_next(&s) % (n - 11)] = (unsigned char)rng_next(&s);
        fix_crc(d, n);
        spit(bad, d, n);
        nn_ckpt back;
        err.msg[0] = '\0';
        if (nn_ckpt_load(bad, &back, &err) == 0) {
            accepted++;
            resaved += nn_ckpt_save_with(good, &back, &nosync, &err) == 0;
            nn_ckpt_free(&back);
        } else {
            refused_n++;
            one_line_n += one_line(err.msg) && strstr(err.msg, bad) != NULL;
        }
    }
    ok(refused_n == one_line_n,
       "3000 random mutations with a valid CRC: %d refused, each with one line naming the file", refused_n);
    ok(accepted == resaved, "%d accepted (changed values, not structure) and each can be saved again", accepted);
    tap_diag("random mutations: %d refused, %d accepted", refused_n, accepted);
    free(d);
    free(orig);
    unlink(good);
    unlink(bad);
}

static void test_foreign(void)
{
    char p[512], msg[CDS_ERR_MAX];
    const char *const not_ours[] = {"not a cds checkpoint", NULL};
    in_root(p, sizeof p, "foreign.ckpt");
    spit(p, "", 0);
    ok(refused(p, (const char *const[]){"truncated: only 0 bytes", NULL}, msg, sizeof msg), "an empty file: %s", msg);
    const char *json = "{\"format\": \"cds-checkpoint\", \"this is\": \"JSON, not msgpack, and long enough\"}\n";
    spit(p, json, strlen(json));
    ok(refused(p, not_ours, msg, sizeof msg), "a JSON file: %s", msg);
    unsigned char rnd[5000];
    uint64_t s = 3;
    for (size_t i = 0; i < sizeof rnd; i++)
        rnd[i] = (unsigned char)rng_next(&s);
    spit(p, rnd, sizeof rnd);
    ok(refused(p, not_ours, msg, sizeof msg), "random bytes: %s", msg);
    /* Another msgpack file that happens to end like ours, with a right CRC. */
    unsigned char other[64] = {0x82, 0xa1, 'a', 0x01};
    size_t n = 4;
    memcpy(other + n, "\xa5" "crc32\xce\0\0\0\0", 11);
    n += 11;
    fix_crc(other, n);
    spit(p, other, n);
    ok(refused(p, not_ours, msg, sizeof msg), "a tiny msgpack map: %s", msg);
    unsigned char other2[200];
    memset(other2, 0, sizeof other2);
    other2[0] = 0x82; /* fixmap 2, then 188 bytes: str8 "format", nil ... */
    other2[1] = 0xa6;
    memcpy(other2 + 2, "format", 6);
    other2[8] = 0xa3;
    memcpy(other2 + 9, "xyz", 3);
    memset(other2 + 12, 0xc0, sizeof other2 - 12 - 11);
    memcpy(other2 + sizeof other2 - 11, "\xa5" "crc32\xce", 7);
    fix_crc(other2, sizeof other2);
    spit(p, other2, sizeof other2);
    ok(refused(p, (const char *const[]){"top-level map has 2 entries", NULL}, msg, sizeof msg),
       "a msgpack map of another shape with a right CRC: %s", msg);
    in_root(p, sizeof p, "no-such.ckpt");
    ok(refused(p, (const char *const[]){"cannot open it: No such file or directory", NULL}, msg, sizeof msg),
       "a missing file: %s", msg);
    ok(refused(root, (const char *const[]){"not a regular file", NULL}, msg, sizeof msg), "a directory: %s", msg);
}

/* ---- faults while saving ---- */

typedef struct fault {
    long long budget;   /* bytes that may still be written; -1: no limit */
    int err;            /* errno once the budget is spent */
    size_t short_max;   /* at most this much per call (0: no limit) */
    int eintr_every;    /* every k-th call fails with EINTR first (0: never) */
    int fsync_err;      /* fsync fails with this (0: real fsync) */
    int calls;
} fault;

static ssize_t fault_write(void *ctx, int fd, const void *buf, size_t n)
{
    fault *f = ctx;
    if (f->eintr_every && ++f->calls % f->eintr_every == 0) {
        errno = EINTR;
        return -1;
    }
    if (f->short_max && n > f->short_max)
        n = f->short_max;
    if (f->budget >= 0) {
        if (f->budget == 0) {
            errno = f->err;
            return -1;
        }
        if ((long long)n > f->budget)
            n = (size_t)f->budget; /* a short write first, as a filling disk does */
        f->budget -= (long long)n;
    }
    return write(fd, buf, n);
}

static int fault_fsync(void *ctx, int fd)
{
    fault *f = ctx;
    if (f->fsync_err) {
        errno = f->fsync_err;
        return -1;
    }
    return fsync(fd);
}

/* The previous checkpoint at path still loads and equals want. */
static int still_there(const char *path, const nn_ckpt *want)
{
    cds_err err;
    nn_ckpt c;
    char why[256];
    if (nn_ckpt_load(path, &c, &err) != 0)
        return 0;
    int same = ckpt_equal(want, &c, why, sizeof why);
    nn_ckpt_free(&c);
    return same;
}

static void test_write_faults(void)
{
    char path[512];
    cds_err err = {0};
    nn_ckpt old, big;
    make_ckpt(&old, 8, 16, SPEC);
    canonicalise(&old, SPEC_CANON);
    make_ckpt(&big, 9, 300, SPEC);
    canonicalise(&big, SPEC_CANON);
    in_root(path, sizeof path, "faults.ckpt");
    nn_ckpt_save(path, &old, &err);
    char ref[600];
    snprintf(ref, sizeof ref, "%s.ref", path);
    nn_ckpt_save(ref, &big, &err);
    size_t full;
    free(slurp(ref, &full));
    unlink(ref);

    /* A full disk at many offsets, including 0 and inside the tail. */
    fault f = {0};
    nn_ckpt_save_opts o = {.chunk_bytes = 4096, .write_fn = fault_write, .fsync_fn = fault_fsync, .io_ctx = &f};
    int bad = 0, cases = 0;
    char first[CDS_ERR_MAX + 64] = "";
    for (long long at = 0; at < (long long)full - 11; at += at < 64 ? 1 : 997) {
        f = (fault){.budget = at, .err = ENOSPC};
        o.chunk_bytes = 4096;
        cases++;
        int rc = nn_ckpt_save_with(path, &big, &o, &err);
        int good = rc != 0 && one_line(err.msg) && strstr(err.msg, path) && strstr(err.msg, ".tmp-") &&
                   strstr(err.msg, "No space left on device") && strstr(err.msg, "free some space") &&
                   count_tmp(root) == 0 && still_there(path, &old);
        if (!good && bad++ == 0)
            snprintf(first, sizeof first, "at %lld: rc %d: %s", at, rc, err.msg);
    }
    for (long long at = (long long)full - 11; at < (long long)full; at++) { /* every byte of the tail */
        f = (fault){.budget = at, .err = EIO};
        cases++;
        int rc = nn_ckpt_save_with(path, &big, &o, &err);
        if (!(rc != 0 && strstr(err.msg, "Input/output error") && count_tmp(root) == 0 && still_there(path, &old)) &&
            bad++ == 0)
            snprintf(first, sizeof first, "at %lld: rc %d: %s", at, rc, err.msg);
    }
    ok(bad == 0,
       "a write failing at %d offsets of %zu: an error naming the files and the fix, no temporary file, "
       "the old checkpoint intact: %s",
       cases, full, first);
    f = (fault){.budget = 1000, .err = ENOSPC};
    nn_ckpt_save_with(path, &big, &o, &err);
    ok(strstr(err.msg, "at byte 1000:") != NULL, "the error gives the byte offset: %s", err.msg);

    f = (fault){.budget = -1, .fsync_err = EIO};
    ok(nn_ckpt_save_with(path, &big, &o, &err) != 0 && strstr(err.msg, "fsync of") &&
           strstr(err.msg, "Input/output error") && count_tmp(root) == 0 && still_there(path, &old),
       "a failing fsync: error, no temporary file, old checkpoint intact: %s", err.msg);

    /* Short writes and EINTR are not errors. */
    f = (fault){.budget = -1, .short_max = 7, .eintr_every = 3};
    err.msg[0] = '\0';
    ok(nn_ckpt_save_with(path, &big, &o, &err) == 0 && count_tmp(root) == 0 && still_there(path, &big),
       "7-byte writes with EINTR every third call still write a whole checkpoint: %s", err.msg);
    nn_ckpt_save(path, &old, &err);
    nn_ckpt_free(&old);
    nn_ckpt_free(&big);
}

/* In a child, so the limit cannot hit the test itself. */
static void test_efbig(void)
{
    char path[512];
    cds_err err = {0};
    nn_ckpt old, big;
    make_ckpt(&old, 10, 16, SPEC);
    canonicalise(&old, SPEC_CANON);
    make_ckpt(&big, 11, 1000, SPEC); /* ~300 KB */
    in_root(path, sizeof path, "efbig.ckpt");
    nn_ckpt_save(path, &old, &err);
    int fds[2];
    if (pipe(fds) != 0)
        tap_bail("pipe");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit lim = {100 * 1000, 100 * 1000};
        setrlimit(RLIMIT_FSIZE, &lim);
        int rc = nn_ckpt_save(path, &big, &err);
        char msg[CDS_ERR_MAX + 16];
        int n = snprintf(msg, sizeof msg, "%d %s", rc, err.msg);
        if (write(fds[1], msg, (size_t)n) != n)
            _exit(3);
        _exit(0);
    }
    close(fds[1]);
    char msg[CDS_ERR_MAX + 16] = "";
    ssize_t got = 0, k;
    while ((k = read(fds[0], msg + got, sizeof msg - 1 - (size_t)got)) > 0)
        got += k;
    msg[got] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0,
       "RLIMIT_FSIZE does not kill a saver that ignores SIGXFSZ (status %d)", status);
    ok(strncmp(msg, "-1 ", 3) == 0 && strstr(msg, path) && strstr(msg, "File too large") && strstr(msg, "ulimit -f"),
       "EFBIG is an error naming the file and the limit: %s", msg);
    ok(count_tmp(root) == 0 && still_there(path, &old), "no temporary file, and the old checkpoint loads unchanged");
    nn_ckpt_free(&old);
    nn_ckpt_free(&big);
}

static void test_bad_paths(void)
{
    char path[600], file[512];
    cds_err err = {0};
    nn_ckpt c;
    make_ckpt(&c, 12, 16, SPEC);
    in_root(path, sizeof path, "no-such-dir/x.ckpt");
    ok(nn_ckpt_save(path, &c, &err) != 0 && strstr(err.msg, path) && strstr(err.msg, "No such file or directory") &&
           strstr(err.msg, "directory does not exist"),
       "a missing directory: %s", err.msg);
    in_root(file, sizeof file, "plain-file");
    spit(file, "x", 1);
    snprintf(path, sizeof path, "%s/x.ckpt", file);
    ok(nn_ckpt_save(path, &c, &err) != 0 && strstr(err.msg, "Not a directory"), "a path under a file: %s", err.msg);
    in_root(path, sizeof path, "a-dir");
    mkdir(path, 0755);
    ok(nn_ckpt_save(path, &c, &err) != 0 && strstr(err.msg, "cannot rename") && strstr(err.msg, "is a directory") &&
           count_tmp(root) == 0,
       "a path that is a directory: error, no temporary file: %s", err.msg);
    rmdir(path);
    if (geteuid() == 0) {
        skip("an unwritable directory", "running as root, which may write anywhere");
    } else {
        in_root(path, sizeof path, "ro");
        mkdir(path, 0555);
        char p2[700];
        snprintf(p2, sizeof p2, "%s/x.ckpt", path);
        ok(nn_ckpt_save(p2, &c, &err) != 0 && strstr(err.msg, "Permission denied"), "an unwritable directory: %s",
           err.msg);
        rmdir(path);
    }
    ok(nn_ckpt_save("", &c, &err) != 0 && strstr(err.msg, "path is empty"), "an empty path: %s", err.msg);
    unlink(file);
    nn_ckpt_free(&c);
}

/* Content that cannot be saved is refused before any file is made. */
static void test_bad_content(void)
{
    char path[512];
    cds_err err = {0};
    nn_ckpt c;
    make_ckpt(&c, 13, 16, SPEC);
    in_root(path, sizeof path, "content.ckpt");
    char *spec = c.spec_json;
    c.spec_json = "{\"arch\": ";
    ok(nn_ckpt_save(path, &c, &err) != 0 && strstr(err.msg, "model spec is not valid JSON"), "bad JSON: %s", err.msg);
    c.spec_json = "[1, 2]";
    ok(nn_ckpt_save(path, &c, &err) != 0 && strstr(err.msg, "must be a JSON object"), "a JSON array as spec: %s",
       err.msg);
    c.spec_json = "{\"a\": 1, \"a\": 2}";
    ok(nn_ckpt_save(path, &c, &err) != 0 && strstr(err.msg, "duplicate"), "a duplicate key: %s", err.msg);
    c.spec_json = NULL;
    ok(nn_ckpt_save(path, &c, &err) != 0 && strstr(err.msg, "no model spec"), "no spec: %s", err.msg);
    c.spec_json = spec;
    char *opt = c.optimizer;
    c.optimizer = NULL;
    ok(nn_ckpt_save(path, &c, &err) != 0 && strstr(err.msg, "no optimizer"), "no optimizer: %s", err.msg);
    c.optimizer = opt;
    c.params[1].ndim = 9;
    ok(nn_ckpt_save(path, &c, &err) != 0 && strstr(err.msg, "conv1.bias has 9 dimensions"), "9 dimensions: %s",
       err.msg);
    c.params[1].ndim = 1;
    c.params[1].shape[0] = -4;
    ok(nn_ckpt_save(path, &c, &err) != 0 && strstr(err.msg, "negative or too large"), "a negative dimension: %s",
       err.msg);
    c.params[1].shape[0] = 4;
    float *data = c.opt_state[0].data;
    c.opt_state[0].data = NULL;
    ok(nn_ckpt_save(path, &c, &err) != 0 && strstr(err.msg, "m:conv1.weight has no data"), "missing data: %s",
       err.msg);
    c.opt_state[0].data = data;
    struct stat st;
    ok(stat(path, &st) != 0 && count_tmp(root) == 0, "no file was made by refused saves");
    nn_ckpt_free(&c);
}

/* ---- lazy Adam through the trainer: resumes and re-runs ---- */

static const char *LAZY_SPEC =
    "{\"model\":{\"arch\":\"mlp\",\"sparse\":{\"dim\":200,\"nnz\":6},\"hidden\":[16],\"classes\":3},"
    "\"train\":{\"optimizer\":\"adam\",\"lr\":0.01,\"l2\":0.001,\"lazy\":%s,\"batch\":16,\"seed\":5}}";

/* Two shards of 120 rows of 6 indices into [0, 200), mostly from a skewed
 * draw so that some rows are hot, some rarely seen, some never. */
static void write_sparse_shards(char dirs[2][512], const char *where)
{
    enum { R = 120, K = 6 };
    char split[400];
    in_root(split, sizeof split, where);
    uint64_t s = 77;
    for (int k = 0; k < 2; k++) {
        int32_t x[R * K], y[R];
        for (int r = 0; r < R; r++) {
            for (int j = 0; j < K; j++) {
                uint64_t u = rng_next(&s);
                x[r * K + j] = (int32_t)(u % 4 == 0 ? u % 180 : (u >> 8) % 20);
            }
            y[r] = (int32_t)(rng_next(&s) % 3);
        }
        const int64_t shape[1] = {K};
        cds_err err = {0};
        etl_shard_writer *w = etl_shard_begin(split, k, ETL_I32, shape, 1, &err);
        if (!w || etl_shard_append(w, x, y, R, &err) != 0 || etl_shard_commit(w, NULL, 1, &err) != 0)
            tap_bail(err.msg);
        snprintf(dirs[k], 512, "%s/shard-%d", split, k);
    }
}

/* Epoch 0 over shards 0 and 1, then epoch 1 over shard 0, stopping (save,
 * free, load) after the first pass when stop_after_first; saves to out. */
static int lazy_run(const char *spec, char dirs[2][512], int stop_after_first, const char *out)
{
    cds_err err = {0};
    nn_pass_stats st;
    char mid[512];
    in_root(mid, sizeof mid, "lazy-mid.ckpt");
    nn_trainer *t = nn_trainer_new(spec, &err);
    int rc = t && nn_trainer_train_shard(t, dirs[0], 0, NULL, NULL, &st, &err) == 0 ? 0 : -1;
    if (rc == 0 && stop_after_first) {
        rc = nn_trainer_save(t, mid, &err);
        nn_trainer_free(t);
        t = rc == 0 ? nn_trainer_load(mid, &err) : NULL;
        rc = t ? 0 : -1;
    }
    if (rc == 0 && nn_trainer_train_shard(t, dirs[1], 1, NULL, NULL, &st, &err) != 0)
        rc = -1;
    if (rc == 0) {
        nn_trainer_end_epoch(t);
        rc = nn_trainer_train_shard(t, dirs[0], 0, NULL, NULL, &st, &err) == 0 ? nn_trainer_save(t, out, &err) : -1;
    }
    if (rc != 0)
        printf("# lazy run: %s\n", err.msg);
    nn_trainer_free(t);
    return rc;
}

static void test_lazy_resume(void)
{
    char dirs[2][512], a[512], b[512], c[512], d[512], e[512], f[512], spec[512], exact[512];
    write_sparse_shards(dirs, "lazy/train");
    snprintf(spec, sizeof spec, LAZY_SPEC, "true");
    snprintf(exact, sizeof exact, LAZY_SPEC, "false");
    in_root(a, sizeof a, "lazy-a.ckpt");
    in_root(b, sizeof b, "lazy-b.ckpt");
    in_root(c, sizeof c, "lazy-c.ckpt");
    in_root(d, sizeof d, "lazy-d.ckpt");
    in_root(e, sizeof e, "lazy-e.ckpt");
    in_root(f, sizeof f, "lazy-exact.ckpt");
    int ran = lazy_run(spec, dirs, 0, a) == 0 && lazy_run(spec, dirs, 1, b) == 0 && lazy_run(spec, dirs, 0, c) == 0 &&
              lazy_run(exact, dirs, 0, f) == 0;
    ok(ran, "lazy Adam trains three passes over two sparse shards, straight through and with a resume");
    ok(ran && same_file(a, b), "lazy: resuming after the first pass gives the same checkpoint bytes as never stopping");
    ok(ran && same_file(a, c), "lazy: the same run twice gives the same checkpoint bytes");
    ok(ran && !same_file(a, f), "...and lazy changes the result (the exact-Adam run differs)");
    nn_par_set_threads(3); /* the row split of the lazy kernels depends on the thread count; the result must not */
    int ran3 = lazy_run(spec, dirs, 0, d) == 0 && lazy_run(spec, dirs, 1, e) == 0;
    ok(ran3 && same_file(d, e), "lazy with 3 threads: resume = no stop, byte for byte");
    nn_ckpt ck;
    cds_err err = {0};
    int loaded = nn_ckpt_load(a, &ck, &err) == 0;
    const nn_ckpt_tensor *m = loaded ? nn_ckpt_find(ck.opt_state, ck.n_opt_state, "m:fc0.weight") : NULL;
    const nn_ckpt_tensor *v = loaded ? nn_ckpt_find(ck.opt_state, ck.n_opt_state, "v:fc0.weight") : NULL;
    ok(m && v && m->ndim == 2 && m->shape[0] == 200 && m->shape[1] == 16 && v->shape[0] == 200 &&
           strcmp(ck.optimizer, "adam") == 0 && ck.opt_t == 24 &&  strstr(ck.hparams_json, "\"lazy\":true"),
       "the lazy checkpoint keeps the format: full-shape m and v of fc0.weight, optimizer adam, t = 24 steps, "
       "\"lazy\" in the hyper-parameters");
    if (loaded)
        nn_ckpt_free(&ck);
}

/* ---- steps that wrap around a shard, the split step, divergence ---- */

static int count_calls(void *ctx, int64_t done, int64_t total, const nn_pass_stats *so_far)
{
    (void)done, (void)total, (void)so_far;
    ++*(int *)ctx;
    return 0;
}

/* Whether two trainers' weights are bit-identical (read through copies). */
static int same_weights(nn_trainer *a, nn_trainer *b)
{
    nn_model *ma = nn_trainer_model(a), *mb = nn_trainer_model(b);
    int same = nn_model_param_count(ma) == nn_model_param_count(mb);
    for (size_t i = 0; same && i < nn_model_param_count(ma); i++) {
        size_t n = nn_model_param(ma, i)->w.n;
        float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
        nn_model_read(ma, &nn_model_param(ma, i)->w, x);
        nn_model_read(mb, &nn_model_param(mb, i)->w, y);
        same = memcmp(x, y, n * sizeof *x) == 0;
        free(x);
        free(y);
    }
    return same;
}

static void test_steps(void)
{
    char dirs[2][512], spec[512];
    write_sparse_shards(dirs, "steps/train");
    snprintf(spec, sizeof spec, LAZY_SPEC, "false");
    cds_err err = {0};
    nn_pass_stats a, b, c;
    int calls = 0;
    /* 120 rows in batches of 16: 8 steps a pass; 20 steps are 2 passes and 4 batches */
    nn_trainer *t1 = nn_trainer_new(spec, &err), *t2 = nn_trainer_new(spec, &err), *t3 = nn_trainer_new(spec, &err);
    int ran = t1 && t2 && t3 && nn_trainer_train_shard(t1, dirs[0], 0, NULL, NULL, &a, &err) == 0 &&
              nn_trainer_train_steps(t2, dirs[0], 0, 8, NULL, NULL, &b, &err) == 0 &&
              nn_trainer_train_steps(t3, dirs[0], 0, 20, count_calls, &calls, &c, &err) == 0;
    if (!ran)
        printf("# %s\n", err.msg);
    ok(ran && same_weights(t1, t2) && a.rows == b.rows && a.loss_sum == b.loss_sum && a.top1 == b.top1 &&
           nn_trainer_visited(t2, NULL) == 0 && nn_trainer_visited(t1, NULL) == 1,
       "8 steps over a shard of 8 batches are its pass, bit for bit (weights, loss sum %.6f), without marking it "
       "visited", b.loss_sum);
    ok(ran && nn_trainer_step(t3) == 20 && c.rows == 2 * 120 + 4 * 16 && calls == 20,
       "20 steps wrap around the shard: %lld steps, %lld rows (2 x 120 + 4 x 16), progress called per batch (%d)",
       t3 ? (long long)nn_trainer_step(t3) : -1LL, (long long)c.rows, calls);
    nn_trainer_free(t1);
    nn_trainer_free(t2);
    nn_trainer_free(t3);

    /* an L2 step multiplies the weights by 1 - lr·2·l2 = -19999 a step: the loss soon stops being finite, and
     * the pass stops with the step it first did */
    const char *wild = "{\"model\":{\"arch\":\"mlp\",\"sparse\":{\"dim\":200,\"nnz\":6},\"hidden\":[16],"
                       "\"classes\":3},\"train\":{\"optimizer\":\"sgd\",\"lr\":1000,\"l2\":10,"
                       "\"batch\":16,\"seed\":5}}";
    nn_trainer *t = nn_trainer_new(wild, &err);
    int rc = t ? nn_trainer_train_steps(t, dirs[0], 0, 5000, NULL, NULL, &c, &err) : -1;
    char want[64];
    snprintf(want, sizeof want, "at step %lld (", t ? (long long)nn_trainer_step(t) : -1LL);
    ok(rc == NN_TRAIN_DIVERGED && strstr(err.msg, want) && strstr(err.msg, "diverged") && nn_trainer_step(t) < 5000,
       "a diverging run is reported with the step its loss first became NaN or infinite, and the trainer counts the "
       "steps before it (%s)", err.msg);
    nn_trainer_free(t);
}

/* A device that fails: the CPU table, whose check reports an error once
 * armed, as a CUDA context does after a launch or a library call failed
 * (the ops return nothing; the error is kept and reported later). */
static int device_failed; /* armed by the test; read by the table's check */
static int failing_check(const nn_ctx *c, cds_err *err)
{
    (void)c;
    return device_failed ? cds_errf(err, "device cuda:9 failed: convolution forward: an injected fault") : 0;
}

/* A device error is never saved: the pass fails with the device's line,
 * and a checkpoint is not written, the one already there kept whole. */
static void test_device_failure(void)
{
    char dirs[2][512], spec[512], path[512];
    write_sparse_shards(dirs, "devfail/train");
    snprintf(spec, sizeof spec, LAZY_SPEC, "false");
    in_root(path, sizeof path, "devfail.ckpt");
    nn_backend failing = nn_backend_cpu;
    failing.name = "cpu that fails";
    failing.check = failing_check;
    nn_place where = {.dev = NN_CPU, .index = 0, .table = &failing};
    cds_err err = {0};
    nn_pass_stats st;
    device_failed = 0;
    nn_trainer *t = nn_trainer_new_at(spec, where, &err);
    int rc = t && nn_trainer_train_shard(t, dirs[0], 0, NULL, NULL, &st, &err) == 0 && nn_trainer_save(t, path, &err) == 0;
    ok(rc, "a healthy pass on the test's table trains and saves%s%s", rc ? "" : ": ", rc ? "" : err.msg);
    struct stat before, after;
    int had = stat(path, &before) == 0;
    FILE *f = fopen(path, "rb");
    char first[4096] = {0}, again[4096] = {0};
    size_t n1 = f ? fread(first, 1, sizeof first, f) : 0;
    if (f)
        fclose(f);
    device_failed = 1;
    int pass = t ? nn_trainer_train_shard(t, dirs[1], 1, NULL, NULL, &st, &err) : 0;
    ok(pass == -1 && strstr(err.msg, "device cuda:9 failed") && strstr(err.msg, "injected"),
       "a pass on a failing device fails with the device's line: %s", err.msg);
    int saved = t ? nn_trainer_save(t, path, &err) : 0;
    f = fopen(path, "rb");
    size_t n2 = f ? fread(again, 1, sizeof again, f) : 0;
    if (f)
        fclose(f);
    ok(had && saved == -1 && strstr(err.msg, "device cuda:9 failed") && stat(path, &after) == 0 &&
           after.st_size == before.st_size && n1 == n2 && memcmp(first, again, n1) == 0,
       "a save from a failing device is refused and the checkpoint already there is kept whole: %s", err.msg);
    device_failed = 0;
    nn_trainer_free(t);
}


/* The params and buffers of a and b are the same bits. */
static int same_state(nn_trainer *a, nn_trainer *b)
{
    nn_model *ma = nn_trainer_model(a), *mb = nn_trainer_model(b);
    size_t np = nn_model_param_count(ma), nb = nn_model_buffer_count(ma);
    int same = np == nn_model_param_count(mb) && nb == nn_model_buffer_count(mb);
    for (size_t i = 0; same && i < np + nb; i++) {
        nn_tensor *x = i < np ? &nn_model_param(ma, i)->w : &nn_model_buffer(ma, i - np)->t;
        nn_tensor *y = i < np ? &nn_model_param(mb, i)->w : &nn_model_buffer(mb, i - np)->t;
        float *hx = malloc(x->n * sizeof *hx), *hy = malloc(y->n * sizeof *hy);
        nn_model_read(ma, x, hx);
        nn_model_read(mb, y, hy);
        same = x->n == y->n && memcmp(hx, hy, x->n * sizeof *hx) == 0;
        free(hx);
        free(hy);
    }
    return same;
}

/* n steps of random batches (seeded) through nn_trainer_step_batch. */
static int random_steps(nn_trainer *t, int n, uint64_t seed, cds_err *err)
{
    enum { B = 8, PER = 3 * 16 * 16 };
    static float x[B * PER];
    int32_t y[B];
    nn_rng r;
    nn_rng_seed(&r, seed);
    for (int s = 0; s < n; s++) {
        for (int i = 0; i < B * PER; i++)
            x[i] = (float)(2 * nn_rng_unit(&r) - 1);
        for (int i = 0; i < B; i++)
            y[i] = (int32_t)(nn_rng_next(&r) % 4);
        if (nn_trainer_step_batch(t, x, NULL, y, B, err) != 0)
            return -1;
    }
    return 0;
}

/* Warm start (the train spec's "init"): a new trainer takes the weights
 * and batch-norm statistics of the checkpoint, bit for bit, with a fresh
 * optimiser; two such trainers then train alike; a trainer loaded from its
 * own checkpoint no longer needs the one it started from; a missing file
 * or another model's checkpoint is refused with a line naming it. */
static void test_warm_start(void)
{
#define WS_MODEL "{\"arch\":\"resnet18\",\"input\":[3,16,16],\"classes\":4,\"width\":%s}"
    char src[600], warm[1400], other[1400], missing[1400], pa[512], pb[512], model[128];
    snprintf(pa, sizeof pa, "%s/warm-source.ckpt", root);
    snprintf(pb, sizeof pb, "%s/warm-started.ckpt", root);
    snprintf(model, sizeof model, WS_MODEL, "0.125");
    snprintf(src, sizeof src, "{\"model\":%s,\"train\":{\"optimizer\":\"sgd\",\"lr\":0.05,\"batch\":8,\"seed\":3}}",
             model);
    snprintf(warm, sizeof warm, "{\"model\":%s,\"train\":{\"optimizer\":\"adam\",\"lr\":0.001,\"batch\":8,"
             "\"seed\":9,\"init\":\"%s\"}}", model, pa);
    cds_err err = {0};
    nn_trainer *a = nn_trainer_new(src, &err);
    int rc = a && random_steps(a, 3, 11, &err) == 0 && nn_trainer_save(a, pa, &err) == 0;
    nn_trainer *b = rc ? nn_trainer_new(warm, &err) : NULL, *b2 = b ? nn_trainer_new(warm, &err) : NULL;
    if (!ok(rc && b && b2, "a source trained 3 steps and saved; two trainers warm-started from it"))
        tap_diag("%s", err.msg);
    int zero = b != NULL;
    size_t nf = b ? nn_trainer_opt_floats(b) : 0;
    float *opt = malloc((nf ? nf : 1) * sizeof *opt);
    if (b)
        nn_trainer_opt_get(b, opt);
    for (size_t i = 0; zero && i < nf; i++)
        zero = opt[i] == 0.0f;
    free(opt);
    ok(b && same_state(a, b), "the warm start holds the source's weights and batch-norm statistics, bit for bit");
    ok(b && zero && nf > 0 && nn_trainer_step(b) == 0 && nn_trainer_epoch(b) == 0,
       "...with a fresh optimiser (%zu state values, all zero), at step 0 of epoch 0", nf);
    rc = b && b2 && random_steps(b, 2, 12, &err) == 0 && random_steps(b2, 2, 12, &err) == 0;
    ok(rc && same_state(b, b2) && !same_state(a, b), "two warm-started trainers train on alike, bit for bit");
    rc = rc && nn_trainer_save(b, pb, &err) == 0 && unlink(pa) == 0;
    nn_trainer *c = rc ? nn_trainer_load(pb, &err) : NULL;
    ok(c && same_state(b, c), "a warm-started trainer resumes from its own checkpoint, the source gone%s%s",
       c ? "" : ": ", c ? "" : err.msg);
    nn_trainer *m1 = nn_trainer_new(warm, &err);
    ok(!m1 && strstr(err.msg, "warm start") && strstr(err.msg, pa),
       "a missing warm-start checkpoint is refused, naming it (%s)", err.msg);
    nn_trainer_free(m1);
    char wide[128];
    snprintf(wide, sizeof wide, WS_MODEL, "0.25");
    snprintf(other, sizeof other, "{\"model\":%s,\"train\":{\"optimizer\":\"adam\",\"lr\":0.001,\"batch\":8,"
             "\"init\":\"%s\"}}", wide, pb);
    nn_trainer *o = nn_trainer_new(other, &err);
    ok(!o && strstr(err.msg, "warm start") && strstr(err.msg, "another model"),
       "another model's checkpoint is refused (%s)", err.msg);
    nn_trainer_free(o);
    snprintf(missing, sizeof missing, "{\"model\":%s,\"train\":{\"optimizer\":\"sgd\",\"lr\":0.1,\"init\":7}}", model);
    o = nn_trainer_new(missing, &err);
    ok(!o && strstr(err.msg, "\"init\" must be the path of a checkpoint"), "an init that is not a path is refused (%s)",
       err.msg);
    nn_trainer_free(o);
    nn_trainer_free(a);
    nn_trainer_free(b);
    nn_trainer_free(b2);
    nn_trainer_free(c);
#undef WS_MODEL
}

int main(void)
{
    const char *src = getenv("CDS_SOURCE_ROOT");
    snprintf(src_root, sizeof src_root, "%s", src ? src : ".");
    snprintf(root, sizeof root, "/tmp/test_nn_ckpt.XXXXXX");
    if (!mkdtemp(root))
        tap_bail("mkdtemp failed");
    test_round_trip();
    test_chunks();
    test_python();
    test_truncation();
    test_bit_flips();
    test_structure();
    test_foreign();
    test_write_faults();
    test_efbig();
    test_bad_paths();
    test_bad_content();
    test_lazy_resume();
    test_steps();
    test_device_failure();
    test_warm_start();
    cds_rmtree(root);
    return tap_done();
}
