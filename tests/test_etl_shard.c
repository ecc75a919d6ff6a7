/* Shards: commit then open with verify and compare every value and the
 * manifest; no shard-<k> before the commit and no temporary directory after;
 * the reader refuses a bit flip (with verify), a truncated file, a missing
 * file or manifest, a manifest whose rows, shape, format or version disagree,
 * and a y.npy that is not int32; a commit over an existing shard is refused
 * without replace (leaving the old one and nothing else), and replaces it
 * with; two writers of one shard cannot both win; abort leaves nothing; and
 * manifest fields are stamped atomically. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cds_util.h"
#include "etl_shard.h"
#include "tap.h"

static char root[256], split[300];

static float x_value(int seed, int64_t r, int j) { return (float)seed + (float)(r * 6 + j) * 0.25f; }
static int32_t y_value(int seed, int64_t r) { return (int32_t)((r + seed) % 10); }

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Entries of dir whose names start with prefix. */
static int count_entries(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strncmp(e->d_name, prefix, strlen(prefix)) == 0)
            n++;
    closedir(d);
    return n;
}

static etl_shard_writer *begin(int k, cds_err *err)
{
    const int64_t shape[2] = {2, 3};
    return etl_shard_begin(split, k, ETL_F32, shape, 2, err);
}

static int append_rows(etl_shard_writer *w, int seed, int64_t rows, cds_err *err)
{
    float x[100 * 6];
    int32_t y[100];
    for (int64_t at = 0; at < rows; at += 100) {
        int64_t n = rows - at < 100 ? rows - at : 100;
        for (int64_t r = 0; r < n; r++) {
            for (int j = 0; j < 6; j++)
                x[r * 6 + j] = x_value(seed, at + r, j);
            y[r] = y_value(seed, at + r);
        }
        if (etl_shard_append(w, x, y, (size_t)n, err) != 0)
            return -1;
    }
    return 0;
}

static json_t *extra_fields(void)
{
    return json_pack("{s:s, s:s, s:i, s:i, s:{s:s}}", "dataset", "fashion", "split", "train", "num_classes", 10, "rows",
                     999, "source", "query", "SELECT 1");
}

static int write_shard(int k, int seed, int64_t rows, int replace, cds_err *err)
{
    etl_shard_writer *w = begin(k, err);
    if (!w)
        return -1;
    if (append_rows(w, seed, rows, err) != 0) {
        etl_shard_abort(w);
        return -1;
    }
    json_t *extra = extra_fields();
    int rc = etl_shard_commit(w, extra, replace, err);
    json_decref(extra);
    return rc;
}

/* 1 if the shard at dir holds rows rows of the values for seed. */
static int holds(const char *dir, int seed, int64_t rows)
{
    cds_err err;
    etl_shard *s = etl_shard_open(dir, 1, &err);
    if (!s) {
        tap_diag("%s", err.msg);
        return 0;
    }
    const etl_npy_view *x = etl_shard_x(s);
    const float *f = x->data;
    const int32_t *y = etl_shard_y(s);
    int good = etl_shard_nrows(s) == rows && x->ndim == 3 && x->shape[0] == rows && x->shape[1] == 2 && x->shape[2] == 3;
    for (int64_t r = 0; good && r < rows; r++) {
        for (int j = 0; j < 6; j++)
            good &= f[r * 6 + j] == x_value(seed, r, j);
        good &= y[r] == y_value(seed, r);
    }
    etl_shard_close(s);
    return good;
}

static void shard_dir(char *out, size_t n, int k) { snprintf(out, n, "%s/shard-%d", split, k); }

/* ---- writing ------------------------------------------------------------- */

static void test_commit_and_open(void)
{
    cds_err err = {0};
    char dir[400];
    shard_dir(dir, sizeof dir, 0);
    etl_shard_writer *w = begin(0, &err);
    ok(w != NULL, "begin makes the split directory");
    if (!w)
        tap_bail(err.msg);
    ok(count_entries(split, ".shard-0.tmp-") == 1, "the shard is built in .shard-0.tmp-<hex>");
    ok(append_rows(w, 3, 1234, &err) == 0 && etl_shard_rows(w) == 1234, "1234 rows appended");
    ok(!exists(dir), "no shard-0 before the commit");
    etl_shard *s = etl_shard_open(dir, 1, &err);
    ok(s == NULL && strstr(err.msg, "no manifest.json"), "a reader finds no shard before the commit: %s", err.msg);
    json_t *extra = extra_fields();
    ok(etl_shard_commit(w, extra, 0, &err) == 0, "commit");
    json_decref(extra);
    ok(exists(dir) && count_entries(split, ".") == 0, "shard-0 is in place and no temporary directory is left");
    ok(holds(dir, 3, 1234), "open with verify gives back every value");

    s = etl_shard_open(dir, 1, &err);
    const json_t *m = s ? etl_shard_manifest(s) : NULL;
    ok(m && strcmp(json_string_value(json_object_get(m, "format")), "cds-shard") == 0 &&
           json_integer_value(json_object_get(m, "format_version")) == 2 &&
           json_integer_value(json_object_get(m, "shard")) == 0 && json_integer_value(json_object_get(m, "rows")) == 1234,
       "manifest: format, version, shard, and the real rows (not extra's)");
    ok(m && strcmp(json_string_value(json_object_get(m, "dataset")), "fashion") == 0 &&
           strcmp(json_string_value(json_object_get(m, "split")), "train") == 0 &&
           json_integer_value(json_object_get(m, "num_classes")) == 10 &&
           json_is_object(json_object_get(m, "source")),
       "manifest: dataset, split and the caller's fields");
    const json_t *fx = json_object_get(json_object_get(m, "files"), "x.npy");
    const json_t *fy = json_object_get(json_object_get(m, "files"), "y.npy");
    ok(fx && strcmp(json_string_value(json_object_get(fx, "dtype")), "float32") == 0 &&
           json_array_size(json_object_get(fx, "shape")) == 3 &&
           json_integer_value(json_array_get(json_object_get(fx, "shape"), 0)) == 1234 &&
           json_integer_value(json_object_get(fx, "bytes")) == 128 + 1234 * 24 &&
           strlen(json_string_value(json_object_get(fx, "xxh128"))) == 32,
       "manifest: x.npy dtype, shape, bytes, xxh128");
    ok(fy && strcmp(json_string_value(json_object_get(fy, "dtype")), "int32") == 0 &&
           json_integer_value(json_object_get(fy, "bytes")) == 128 + 1234 * 4,
       "manifest: y.npy is int32");
    etl_shard_close(s);

    char mpath[450];
    snprintf(mpath, sizeof mpath, "%s/manifest.json", dir);
    FILE *f = fopen(mpath, "r");
    char line[64] = "";
    ok(f && fgets(line, sizeof line, f) && strcmp(line, "{\n") == 0 && fgets(line, sizeof line, f) &&
           strncmp(line, "  \"", 3) == 0,
       "manifest.json is indented by 2");
    if (f)
        fclose(f);

    ok(etl_shard_manifest_set(dir, "dataset_version", json_string("abc123"), &err) == 0, "stamp a manifest field");
    s = etl_shard_open(dir, 1, &err);
    ok(s && strcmp(json_string_value(json_object_get(etl_shard_manifest(s), "dataset_version")), "abc123") == 0 &&
           json_integer_value(json_object_get(etl_shard_manifest(s), "num_classes")) == 10,
       "the stamped field is there, the others kept");
    etl_shard_close(s);
    ok(etl_shard_manifest_set(dir, "rows", json_integer(5), &err) != 0 && strstr(err.msg, "cannot be changed"),
       "the checked fields cannot be stamped: %s", err.msg);
    ok(count_entries(dir, ".") == 0, "no temporary manifest left");

    /* No extra: split from the directory name. */
    w = begin(9, &err);
    ok(w && append_rows(w, 1, 3, &err) == 0 && etl_shard_commit(w, NULL, 0, &err) == 0, "commit without extra fields");
    shard_dir(dir, sizeof dir, 9);
    s = etl_shard_open(dir, 0, &err);
    ok(s && strcmp(json_string_value(json_object_get(etl_shard_manifest(s), "split")), "train") == 0,
       "split defaults to the split directory's name");
    etl_shard_close(s);

    /* An empty shard is a shard. */
    w = begin(8, &err);
    ok(w && etl_shard_commit(w, NULL, 0, &err) == 0, "commit of zero rows");
    shard_dir(dir, sizeof dir, 8);
    ok(holds(dir, 0, 0), "an empty shard opens");
}

static void test_replace(void)
{
    cds_err err = {0};
    char dir[400];
    shard_dir(dir, sizeof dir, 1);
    ok(write_shard(1, 5, 100, 0, &err) == 0, "shard-1 written");
    ok(write_shard(1, 6, 50, 0, &err) != 0 && strstr(err.msg, "already exists") && strstr(err.msg, dir) &&
           strstr(err.msg, "--replace"),
       "a second commit without replace is refused: %s", err.msg);
    ok(count_entries(split, ".") == 0, "and its temporary directory is gone");
    ok(holds(dir, 5, 100), "the old shard-1 is intact");
    ok(write_shard(1, 7, 60, 1, &err) == 0, "a commit with replace");
    ok(holds(dir, 7, 60), "shard-1 holds the new rows");
    ok(count_entries(split, ".") == 0, "no .shard-1.old-* or temporary directory left");

    /* Two writers of one shard: the first commit wins. */
    etl_shard_writer *a = begin(3, &err), *b = begin(3, &err);
    ok(a && b && count_entries(split, ".shard-3.tmp-") == 2, "two writers of shard-3 build side by side");
    append_rows(a, 1, 10, &err);
    append_rows(b, 2, 20, &err);
    ok(etl_shard_commit(b, NULL, 0, &err) == 0, "the second writer commits first");
    ok(etl_shard_commit(a, NULL, 0, &err) != 0 && strstr(err.msg, "already exists"), "the other one is refused");
    shard_dir(dir, sizeof dir, 3);
    ok(holds(dir, 2, 20) && count_entries(split, ".") == 0, "shard-3 is the winner's, nothing else left");
}

static void test_abort(void)
{
    cds_err err = {0};
    etl_shard_writer *w = begin(5, &err);
    ok(w && append_rows(w, 1, 500, &err) == 0, "a writer for shard-5");
    etl_shard_abort(w);
    ok(count_entries(split, "shard-5") == 0 && count_entries(split, ".") == 0, "abort leaves nothing");
    etl_shard_abort(NULL);

    w = begin(6, &err);
    json_t *bad = json_string("not an object");
    ok(w && etl_shard_commit(w, bad, 0, &err) != 0 && strstr(err.msg, "not a JSON object"),
       "a commit with bad extra fields fails: %s", err.msg);
    json_decref(bad);
    ok(count_entries(split, "shard-6") == 0 && count_entries(split, ".") == 0, "and leaves nothing");

    char file[400];
    snprintf(file, sizeof file, "%s/a-file", root);
    FILE *f = fopen(file, "w");
    if (f)
        fclose(f);
    char sub[450];
    snprintf(sub, sizeof sub, "%s/train", file);
    const int64_t shape[1] = {4};
    ok(etl_shard_begin(sub, 0, ETL_U8, shape, 1, &err) == NULL && strstr(err.msg, file),
       "begin under a file is refused by name: %s", err.msg);
}

/* ---- reading damaged shards ---------------------------------------------- */

/* A fresh copy of shard-1 at <split>/dmg-<name>. */
static void damaged_copy(const char *name, char *out, size_t n)
{
    char cmd[1200];
    snprintf(out, n, "%s/dmg-%s", split, name);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -a '%s/shard-1' '%s'", out, split, out);
    if (system(cmd) != 0)
        tap_bail("cannot copy a shard");
}

static void edit_manifest(const char *dir, const char *key, json_t *value, const char *file_key)
{
    char path[600];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    json_t *m = json_load_file(path, 0, NULL);
    json_t *target = file_key ? json_object_get(json_object_get(m, "files"), file_key) : m;
    json_object_set_new(target, key, value);
    json_dump_file(m, path, JSON_INDENT(2));
    json_decref(m);
}

static void expect_refused(const char *dir, int verify, const char *want, const char *name)
{
    cds_err err = {0};
    etl_shard *s = etl_shard_open(dir, verify, &err);
    ok(s == NULL && strstr(err.msg, want) && strstr(err.msg, dir) && strstr(err.msg, "re-run the unload"),
       "%s refused%s: %s", name, verify ? " (verify)" : "", err.msg);
    etl_shard_close(s);
}

static void flip_bit(const char *path, long off)
{
    FILE *f = fopen(path, "r+b");
    fseek(f, off, SEEK_SET);
    int c = fgetc(f);
    fseek(f, off, SEEK_SET);
    fputc(c ^ 0x10, f);
    fclose(f);
}

static void test_damage(void)
{
    char dir[400], path[500];
    cds_err err = {0};

    damaged_copy("flip", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/x.npy", dir);
    flip_bit(path, 128 + 777);
    expect_refused(dir, 1, "x.npy has checksum xxh128", "a bit flip in x.npy");
    etl_shard *s = etl_shard_open(dir, 0, &err);
    ok(s != NULL, "without verify the sizes still match, so it opens");
    etl_shard_close(s);

    damaged_copy("trunc", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/y.npy", dir);
    if (truncate(path, 128 + 59 * 4) != 0)
        tap_bail("truncate");
    expect_refused(dir, 0, "y.npy is 364 bytes but the manifest says 368", "a truncated y.npy");
    expect_refused(dir, 1, "truncated", "a truncated y.npy");

    damaged_copy("rows", dir, sizeof dir);
    edit_manifest(dir, "rows", json_integer(61), NULL);
    expect_refused(dir, 0, "the manifest 61", "a manifest with the wrong rows");

    damaged_copy("shape", dir, sizeof dir);
    edit_manifest(dir, "shape", json_pack("[i,i,i]", 60, 3, 2), "x.npy");
    expect_refused(dir, 0, "x.npy holds float32 60x2x3 but the manifest says float32 60x3x2", "a manifest with the wrong x shape");

    damaged_copy("dtype", dir, sizeof dir);
    edit_manifest(dir, "dtype", json_string("uint8"), "x.npy");
    expect_refused(dir, 0, "the manifest says uint8 60x2x3", "a manifest with the wrong x dtype");

    damaged_copy("missing", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/x.npy", dir);
    unlink(path);
    expect_refused(dir, 0, "x.npy is missing", "a missing x.npy");

    damaged_copy("version", dir, sizeof dir);
    edit_manifest(dir, "format_version", json_integer(3), NULL);
    cds_err e2 = {0};
    ok(etl_shard_open(dir, 0, &e2) == NULL && strstr(e2.msg, "format_version 3") && strstr(e2.msg, "upgrade cds"),
       "a newer format_version asks for an upgrade: %s", e2.msg);

    damaged_copy("format", dir, sizeof dir);
    edit_manifest(dir, "format", json_string("something-else"), NULL);
    expect_refused(dir, 0, "format \"something-else\"", "a foreign manifest");

    damaged_copy("sha", dir, sizeof dir);
    edit_manifest(dir, "xxh128", json_string("xyz"), "y.npy");
    expect_refused(dir, 0, "valid entry for y.npy", "a manifest entry without a valid xxh128");
    edit_manifest(dir, "xxh128", json_string("06B05AB6733A618578AF5F94892F3950"), "y.npy");
    expect_refused(dir, 0, "valid entry for y.npy", "an xxh128 in capitals (the format writes lower case)");

    damaged_copy("json", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    if (truncate(path, 40) != 0)
        tap_bail("truncate");
    expect_refused(dir, 0, "not valid JSON", "a cut manifest");
    unlink(path);
    expect_refused(dir, 0, "no manifest.json", "a missing manifest");

    /* y.npy as float32, consistently described: still refused. */
    damaged_copy("ydtype", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/y.npy", dir);
    etl_npy_writer *w = etl_npy_create(path, ETL_F32, NULL, 0, &err);
    float yf[60] = {0};
    char sha[65];
    int64_t bytes = 0;
    if (!w || etl_npy_append(w, yf, 60, &err) != 0 || etl_npy_close(w, sha, &bytes, &err) != 0)
        tap_bail(err.msg);
    edit_manifest(dir, "dtype", json_string("float32"), "y.npy");
    edit_manifest(dir, "xxh128", json_string(sha), "y.npy");
    expect_refused(dir, 1, "y.npy must be one int32 class id per row", "a float32 y.npy");

    snprintf(path, sizeof path, "%s/nowhere", split);
    expect_refused(path, 0, "no manifest.json", "a directory that does not exist");
}

/* Rewrites a shard's manifest as format 1 wrote it: "sha256" of each file's
 * data instead of "xxh128". */
static void make_format1(const char *dir)
{
    char path[600];
    cds_err err = {0};
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    json_t *m = json_load_file(path, 0, NULL);
    const char *names[2] = {"x.npy", "y.npy"};
    for (int f = 0; f < 2; f++) {
        char file[600], sha[65];
        etl_npy_view v;
        snprintf(file, sizeof file, "%s/%s", dir, names[f]);
        if (!m || etl_npy_map(file, &v, &err) != 0 || etl_sha256_buf(v.data, v.data_bytes, sha, &err) != 0)
            tap_bail("cannot build a format-1 manifest");
        etl_npy_unmap(&v);
        json_t *entry = json_object_get(json_object_get(m, "files"), names[f]);
        json_object_del(entry, "xxh128");
        json_object_set_new(entry, "sha256", json_string(sha));
    }
    json_object_set_new(m, "format_version", json_integer(1));
    json_dump_file(m, path, JSON_INDENT(2));
    json_decref(m);
}

static void test_format1(void)
{
    char dir[400], path[500];
    cds_err err = {0};
    damaged_copy("v1", dir, sizeof dir);
    make_format1(dir);
    etl_shard *s = etl_shard_open(dir, 1, &err);
    ok(s != NULL && etl_shard_nrows(s) == 60, "a format-1 shard (SHA-256 checksums) still opens and verifies%s%s",
       s ? "" : ": ", s ? "" : err.msg);
    etl_shard_close(s);
    snprintf(path, sizeof path, "%s/x.npy", dir);
    flip_bit(path, 128 + 5);
    expect_refused(dir, 1, "x.npy has checksum sha256", "a bit flip in a format-1 shard");
    damaged_copy("v1-mixed", dir, sizeof dir);
    edit_manifest(dir, "format_version", json_integer(1), NULL);
    expect_refused(dir, 0, "lacks a valid entry for x.npy (dtype, shape, bytes, sha256)",
                   "format 1 with format 2's checksum field");
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/etl-shard-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root))
        tap_bail("mkdtemp failed");
    snprintf(split, sizeof split, "%s/datasets/fashion/train", root);
    test_commit_and_open();
    test_replace();
    test_abort();
    test_damage();
    test_format1();
    cds_rmtree(root);
    return tap_done();
}
