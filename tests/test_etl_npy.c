/* .npy files: write (appends of every size around the 1 MiB buffer), map
 * and compare; numpy.load(mmap_mode='r') of what we write, and our reader on
 * what numpy writes; every header corruption and truncation refused with the
 * file named; ENOSPC on a 1 MiB tmpfs (skipped where mounting is not
 * allowed) and EFBIG under RLIMIT_FSIZE in a child process come back as
 * errors naming the file, and leave no file behind; so does abort. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cds_util.h"
#include "etl_npy.h"
#include "tap.h"

#define PY "/usr/bin/python3"

static char root[256];

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void path_in_root(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", root, name); }

static void skip(const char *name, const char *why)
{
    tap_ok_at(1, "", __FILE__, __LINE__, "%s # SKIP %s", name, why);
}

static int read_file(const char *path, unsigned char **data, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    *data = malloc(*n ? *n : 1);
    size_t got = fread(*data, 1, *n, f);
    fclose(f);
    return got == *n ? 0 : -1;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n)
        tap_bail("cannot write a test file");
    fclose(f);
}

/* Runs the python snippet on path; its first output line goes to out. */
static int python(const char *snippet, const char *path, char *out, size_t n)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, PY " -c \"%s\" '%s' 2>&1", snippet, path);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    out[0] = '\0';
    if (!fgets(out, (int)n, p))
        out[0] = '\0';
    out[strcspn(out, "\n")] = '\0';
    char rest[256];
    while (fgets(rest, sizeof rest, p))
        ;
    return pclose(p);
}

static int have_numpy(void) { return system(PY " -c 'import numpy' >/dev/null 2>&1") == 0; }

/* ---- writing and reading back ------------------------------------------- */

static float x_value(int64_t row, int k) { return (float)((row * 12 + k) % 1000) * 0.5f; }

/* Writes rows x 3 x 4 float32 in appends of varied sizes. */
static int write_f32(const char *path, int64_t rows, char sha[65], int64_t *bytes, cds_err *err)
{
    const int64_t shape[2] = {3, 4};
    etl_npy_writer *w = etl_npy_create(path, ETL_F32, shape, 2, err);
    if (!w)
        return -1;
    static const int64_t chunks[] = {1, 7, 1000, 50000, 3, 30000};
    float *buf = malloc(50000 * 12 * sizeof *buf);
    int64_t at = 0;
    for (size_t c = 0; at < rows; c = (c + 1) % 6) {
        int64_t n = chunks[c] < rows - at ? chunks[c] : rows - at;
        for (int64_t r = 0; r < n; r++)
            for (int k = 0; k < 12; k++)
                buf[r * 12 + k] = x_value(at + r, k);
        if (etl_npy_append(w, buf, (size_t)n, err) != 0) {
            free(buf);
            etl_npy_abort(w);
            return -1;
        }
        at += n;
    }
    free(buf);
    if (etl_npy_rows(w) != rows) {
        etl_npy_abort(w);
        return cds_errf(err, "etl_npy_rows is wrong");
    }
    return etl_npy_close(w, sha, bytes, err);
}

static void test_round_trip(void)
{
    char path[512], sha[65], sha2[65];
    int64_t bytes = 0, rows = 100000;
    cds_err err = {0};
    path_in_root(path, sizeof path, "x.npy");
    int rc = write_f32(path, rows, sha, &bytes, &err);
    ok(rc == 0, "wrote 100000 x 3 x 4 float32 in appends of 1 to 50000 rows");
    if (rc != 0)
        tap_bail(err.msg);
    is_int(bytes, 128 + rows * 48, "close reports the file size");
    etl_npy_view v;
    ok(etl_npy_map(path, &v, &err) == 0, "mapped it back");
    ok(v.dtype == ETL_F32 && v.ndim == 3 && v.shape[0] == rows && v.shape[1] == 3 && v.shape[2] == 4,
       "dtype and shape as written");
    ok(v.data_bytes == (size_t)rows * 48 && (const char *)v.data - (const char *)v.map == 128, "data after the 128-byte header");
    const float *f = v.data;
    int64_t bad = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int k = 0; k < 12; k++)
            bad += f[r * 12 + k] != x_value(r, k);
    is_int(bad, 0, "every value as written");
    etl_sum_buf(v.data, v.data_bytes, sha2);
    ok(strlen(sha) == 32 && strcmp(sha, sha2) == 0, "the writer's XXH3-128 is that of the data: %s", sha);
    etl_sum_buf(v.map, v.map_bytes, sha2);
    ok(strcmp(sha, sha2) != 0, "and not that of the whole file (the header is rewritten at close)");
    etl_npy_unmap(&v);
    ok(v.map == NULL, "unmap clears the view");

    /* Known answers, as `printf abc | xxhsum -H2` and `sha256sum` print them. */
    etl_sum_buf("abc", 3, sha2);
    ok(strcmp(sha2, "06b05ab6733a618578af5f94892f3950") == 0, "XXH3-128 of \"abc\" in xxhsum's canonical form: %s",
       sha2);
    char sha256[65];
    ok(etl_sha256_buf("abc", 3, sha256, &err) == 0 &&
           strcmp(sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0,
       "SHA-256 (format-1 manifests) of \"abc\" is the FIPS 180-2 test vector");

    /* One value per row: uint8 and int32 with shape (N,). */
    const uint8_t u[5] = {0, 1, 128, 254, 255};
    path_in_root(path, sizeof path, "u.npy");
    etl_npy_writer *w = etl_npy_create(path, ETL_U8, NULL, 0, &err);
    ok(w && etl_npy_append(w, u, 5, &err) == 0 && etl_npy_append(w, u, 0, &err) == 0 &&
           etl_npy_close(w, sha, &bytes, &err) == 0 && bytes == 133,
       "uint8 with one value per row");
    ok(etl_npy_map(path, &v, &err) == 0 && v.dtype == ETL_U8 && v.ndim == 1 && v.shape[0] == 5 &&
           memcmp(v.data, u, 5) == 0,
       "uint8 (5,) read back");
    etl_npy_unmap(&v);

    path_in_root(path, sizeof path, "empty.npy");
    w = etl_npy_create(path, ETL_I32, NULL, 0, &err);
    ok(w && etl_npy_close(w, sha, &bytes, &err) == 0 && bytes == 128 &&
           strcmp(sha, "99aa06d3014798d86001c324468d497f") == 0,
       "an empty int32 file: 128 bytes, the XXH3-128 of nothing");
    ok(etl_npy_map(path, &v, &err) == 0 && v.shape[0] == 0 && v.data_bytes == 0, "an empty file maps");
    etl_npy_unmap(&v);
}

static void test_numpy(void)
{
    if (!have_numpy()) {
        for (int i = 0; i < 6; i++)
            skip("numpy checks", PY " has no numpy (apt-get install python3-numpy)");
        return;
    }
    char path[512], out[512], want[512], sha[65];
    int64_t bytes;
    cds_err err = {0};
    path_in_root(path, sizeof path, "np.npy");
    int64_t rows = 5000;
    if (write_f32(path, rows, sha, &bytes, &err) != 0)
        tap_bail(err.msg);
    double sum = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int k = 0; k < 12; k++)
            sum += x_value(r, k);
    snprintf(want, sizeof want, "memmap float32 (%lld, 3, 4) %.1f %.1f %.1f", (long long)rows, sum, x_value(0, 1),
             x_value(rows - 1, 11));
    int rc = python("import sys, numpy as np; a = np.load(sys.argv[1], mmap_mode='r'); "
                    "print(type(a).__name__, a.dtype, a.shape, '%.1f' % a.astype('float64').sum(), "
                    "'%.1f' % a[0, 0, 1], '%.1f' % a[-1, 2, 3])",
                    path, out, sizeof out);
    ok(rc == 0 && strcmp(out, want) == 0, "numpy.load(mmap_mode='r') reads our float32 file: %s", out);
    if (strcmp(out, want) != 0)
        tap_diag("want %s", want);

    int32_t y[4] = {-1, 0, 7, 2147483647};
    path_in_root(path, sizeof path, "npy_y.npy");
    etl_npy_writer *w = etl_npy_create(path, ETL_I32, NULL, 0, &err);
    if (!w || etl_npy_append(w, y, 4, &err) != 0 || etl_npy_close(w, sha, &bytes, &err) != 0)
        tap_bail(err.msg);
    rc = python("import sys, numpy as np; a = np.load(sys.argv[1], mmap_mode='r'); print(a.dtype, a.shape, list(map(int, a)))",
                path, out, sizeof out);
    ok(rc == 0 && strcmp(out, "int32 (4,) [-1, 0, 7, 2147483647]") == 0, "numpy reads our int32 (N,) file: %s", out);

    /* The other way: files numpy writes. */
    path_in_root(path, sizeof path, "from_numpy.npy");
    rc = python("import sys, numpy as np; np.save(sys.argv[1], np.arange(15, dtype='<f4').reshape(5, 3) * 2); print('ok')",
                path, out, sizeof out);
    etl_npy_view v;
    ok(rc == 0 && etl_npy_map(path, &v, &err) == 0 && v.dtype == ETL_F32 && v.ndim == 2 && v.shape[0] == 5 &&
           v.shape[1] == 3 && ((const float *)v.data)[14] == 28.0f,
       "we read a float32 (5, 3) file numpy wrote");
    etl_npy_unmap(&v);
    python("import sys, numpy as np; np.save(sys.argv[1], np.zeros((2, 2), dtype='<f8'))", path, out, sizeof out);
    ok(etl_npy_map(path, &v, &err) != 0 && strstr(err.msg, "'<f8'") && strstr(err.msg, path),
       "a float64 file is refused by name: %s", err.msg);
    python("import sys, numpy as np; np.save(sys.argv[1], np.asfortranarray(np.zeros((2, 3), dtype='<f4')))", path, out,
           sizeof out);
    ok(etl_npy_map(path, &v, &err) != 0 && strstr(err.msg, "Fortran order"), "a Fortran-order file is refused: %s",
       err.msg);
    python("import sys, numpy as np; np.save(sys.argv[1], np.zeros((), dtype='<f4'))", path, out, sizeof out);
    ok(etl_npy_map(path, &v, &err) != 0 && strstr(err.msg, "scalar"), "a 0-d array is refused: %s", err.msg);
}

/* ---- corruption ---------------------------------------------------------- */

/* A version 1.0 file with this dict and n data bytes. */
static void write_raw(const char *path, const char *dict, size_t n)
{
    size_t hlen = 118;
    unsigned char *b = calloc(1, 128 + n);
    memcpy(b, "\x93NUMPY\x01\x00", 8);
    b[8] = (unsigned char)hlen;
    b[9] = 0;
    memset(b + 10, ' ', hlen);
    memcpy(b + 10, dict, strlen(dict));
    b[127] = '\n';
    write_file(path, b, 128 + n);
    free(b);
}

static void expect_map_refused(const char *path, const char *want, const char *name)
{
    etl_npy_view v;
    cds_err err = {0};
    int rc = etl_npy_map(path, &v, &err);
    ok(rc != 0 && strstr(err.msg, want) && strstr(err.msg, path), "%s refused: %s", name, err.msg);
    if (rc == 0)
        etl_npy_unmap(&v);
}

/* Copies good with one change at offset `at` into path. */
static void mutate(const char *path, const unsigned char *good, size_t n, size_t at, const char *bytes, size_t len)
{
    unsigned char *b = malloc(n);
    memcpy(b, good, n);
    memcpy(b + at, bytes, len);
    write_file(path, b, n);
    free(b);
}

static void test_corruption(void)
{
    char good_path[512], path[512], sha[65];
    int64_t bytes;
    cds_err err = {0};
    path_in_root(good_path, sizeof good_path, "good.npy");
    if (write_f32(good_path, 10, sha, &bytes, &err) != 0)
        tap_bail(err.msg);
    unsigned char *good;
    size_t n;
    if (read_file(good_path, &good, &n) != 0)
        tap_bail("cannot read good.npy");
    const char *hdr = (const char *)good;
    ok(memcmp(hdr + 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 3, 4), }", 63) == 0 && hdr[127] == '\n',
       "the header dict is numpy's own: %.63s", hdr + 10);
    size_t descr = (size_t)(strstr(hdr + 10, "<f4") - hdr), order = (size_t)(strstr(hdr + 10, "False") - hdr),
           shape = (size_t)(strstr(hdr + 10, "(10,") - hdr);
    path_in_root(path, sizeof path, "bad.npy");

    mutate(path, good, n, 0, "\x92", 1);
    expect_map_refused(path, "not a .npy file", "bad magic");
    mutate(path, good, n, 6, "\x04", 1);
    expect_map_refused(path, "version 4.0", "unknown version");
    mutate(path, good, n, descr, "<f8", 3);
    expect_map_refused(path, "dtype '<f8'", "float64 descr");
    mutate(path, good, n, descr, ">f4", 3);
    expect_map_refused(path, "dtype '>f4'", "big-endian descr");
    mutate(path, good, n, order, "True ", 5);
    expect_map_refused(path, "Fortran order", "fortran_order True");
    mutate(path, good, n, order, "Fals ", 5);
    expect_map_refused(path, "fortran_order", "fortran_order garbage");
    mutate(path, good, n, shape, "(11,", 4);
    expect_map_refused(path, "header says float32 11x3x4", "shape with more rows than the data");
    mutate(path, good, n, 8, "\xff\xff", 2);
    expect_map_refused(path, "runs past the end", "header length past the end");
    mutate(path, good, n, 8, "\x30\x00", 2);
    expect_map_refused(path, "malformed", "header length cutting the dict");

    write_file(path, good, n - 1);
    expect_map_refused(path, "truncated or corrupt", "a file one byte short");
    unsigned char *longer = calloc(1, n + 1);
    memcpy(longer, good, n);
    write_file(path, longer, n + 1);
    free(longer);
    expect_map_refused(path, "truncated or corrupt", "a file one byte long");
    write_file(path, good, 100);
    expect_map_refused(path, "runs past the end", "a file cut inside its header");
    write_file(path, good, 5);
    expect_map_refused(path, "too short", "a 5-byte file");
    free(good);

    write_raw(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1, }", 8);
    expect_map_refused(path, "key other than", "an extra key");
    write_raw(path, "{'descr': '<f4', 'shape': (2,), }", 8);
    expect_map_refused(path, "lacks one of", "a missing key");
    write_raw(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 1, 2), }", 8);
    expect_map_refused(path, "at most 8", "nine dimensions");
    write_raw(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, }", 8);
    expect_map_refused(path, "'shape'", "an unclosed shape");
    write_raw(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", 8);
    expect_map_refused(path, "'shape'", "a negative dimension");
    write_raw(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999), }", 8);
    expect_map_refused(path, "truncated or corrupt", "a shape whose size overflows");
    write_raw(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk", 8);
    expect_map_refused(path, "bytes after its dict", "bytes after the dict");
    write_raw(path, "['descr']", 8);
    expect_map_refused(path, "not a dict", "a list for a dict");
    write_raw(path, "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2,)}", 8);
    etl_npy_view v;
    ok(etl_npy_map(path, &v, &err) == 0 && v.shape[0] == 2, "double quotes and no trailing comma are fine");
    etl_npy_unmap(&v);
    path_in_root(path, sizeof path, "missing.npy");
    expect_map_refused(path, "cannot open", "a missing file");
}

/* ---- write failures ------------------------------------------------------ */

static int dir_is_empty(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s')\"", dir);
    return system(cmd) == 0;
}

static void test_create_errors(void)
{
    char path[512];
    cds_err err = {0};
    path_in_root(path, sizeof path, "no/such/dir/x.npy");
    ok(etl_npy_create(path, ETL_F32, NULL, 0, &err) == NULL && strstr(err.msg, path) &&
           strstr(err.msg, "directory does not exist"),
       "creating in a missing directory: %s", err.msg);
    int64_t big[7] = {999999999, 999999999, 999999999, 999999999, 999999999, 999999999, 9};
    path_in_root(path, sizeof path, "wide.npy");
    ok(etl_npy_create(path, ETL_U8, big, 7, &err) == NULL && strstr(err.msg, "1 TiB"), "a 1 TiB row refused: %s",
       err.msg);
    int64_t zero[1] = {0};
    ok(etl_npy_create(path, ETL_U8, zero, 1, &err) == NULL && strstr(err.msg, "row dimension 1 is 0"),
       "a zero dimension refused: %s", err.msg);
    ok(!exists(path), "no file made by refused creates");

    /* abort removes the file. */
    etl_npy_writer *w = etl_npy_create(path, ETL_U8, NULL, 0, &err);
    uint8_t b[3] = {1, 2, 3};
    ok(w && etl_npy_append(w, b, 3, &err) == 0 && exists(path), "a writer's file exists while it writes");
    etl_npy_abort(w);
    ok(!exists(path), "abort removes it");
    etl_npy_abort(NULL);
}

static void test_enospc(void)
{
    char dir[512], path[600], sha[65];
    path_in_root(dir, sizeof dir, "small");
    mkdir(dir, 0755);
    if (mount("tmpfs", dir, "tmpfs", 0, "size=1m") != 0) {
        char why[128];
        snprintf(why, sizeof why, "cannot mount a 1 MiB tmpfs here (%s)", strerror(errno));
        for (int i = 0; i < 3; i++)
            skip("ENOSPC", why);
        return;
    }
    snprintf(path, sizeof path, "%s/x.npy", dir);
    cds_err err = {0};
    int64_t shape[1] = {1024}, bytes;
    etl_npy_writer *w = etl_npy_create(path, ETL_F32, shape, 1, &err);
    float *row = calloc(1024 * 64, sizeof *row);
    int rc = w ? 0 : -1;
    for (int i = 0; rc == 0 && i < 32; i++) /* 8 MiB into 1 MiB */
        rc = etl_npy_append(w, row, 64, &err);
    if (rc == 0)
        rc = etl_npy_close(w, sha, &bytes, &err);
    else
        ok(etl_npy_close(w, sha, &bytes, &err) != 0, "close after a failed append fails too");
    free(row);
    ok(rc != 0 && strstr(err.msg, path) && strstr(err.msg, "No space left on device") &&
           strstr(err.msg, "free some space or choose another --data-root"),
       "a full disk is an error naming the file and the fix: %s", err.msg);
    ok(dir_is_empty(dir), "and the file is removed");
    umount2(dir, MNT_DETACH);
}

/* In a child, so the limit cannot hit the test itself. */
static void test_efbig(void)
{
    char path[512];
    path_in_root(path, sizeof path, "big.npy");
    int fds[2];
    if (pipe(fds) != 0)
        tap_bail("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit lim = {256 * 1024, 256 * 1024};
        setrlimit(RLIMIT_FSIZE, &lim);
        cds_err err = {0}, again = {0};
        char sha[65], msg[2 * CDS_ERR_MAX + 64];
        int64_t bytes;
        etl_npy_writer *w = etl_npy_create(path, ETL_U8, NULL, 0, &err);
        uint8_t *chunk = calloc(1, 512 * 1024);
        int failed_at = -1;
        for (int i = 0; w && i < 8 && failed_at < 0; i++)
            if (etl_npy_append(w, chunk, 512 * 1024, &err) != 0)
                failed_at = i;
        int repeat = failed_at >= 0 && etl_npy_append(w, chunk, 1, &again) != 0 && strcmp(err.msg, again.msg) == 0;
        int closed = etl_npy_close(w, sha, &bytes, failed_at >= 0 ? &again : &err);
        int n = snprintf(msg, sizeof msg, "%d %d %d %s", failed_at, repeat, closed == 0, err.msg);
        if (write(fds[1], msg, (size_t)n) != n)
            _exit(3);
        free(chunk);
        _exit(exists(path) ? 2 : 0);
    }
    close(fds[1]);
    char msg[2 * CDS_ERR_MAX + 64] = "";
    ssize_t got = 0, k;
    while ((k = read(fds[0], msg + got, sizeof msg - 1 - (size_t)got)) > 0)
        got += k;
    msg[got] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    ok(WIFEXITED(status), "RLIMIT_FSIZE does not kill a writer that ignores SIGXFSZ (status %d)", status);
    int failed_at = -1, repeat = 0, closed = 1;
    sscanf(msg, "%d %d %d", &failed_at, &repeat, &closed);
    ok(failed_at >= 0 && strstr(msg, path) && strstr(msg, "File too large") && strstr(msg, "ulimit -f"),
       "EFBIG is an error naming the file: %s", msg);
    ok(repeat && !closed, "later appends and the close repeat the error");
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0 && !exists(path), "no file left after the failed close");
}

static void test_dtypes(void)
{
    etl_dtype t;
    ok(etl_dtype_parse("float32", &t) == 0 && t == ETL_F32 && etl_dtype_parse("uint8", &t) == 0 && t == ETL_U8 &&
           etl_dtype_parse("int32", &t) == 0 && t == ETL_I32 && etl_dtype_parse("<f4", &t) == 0 && t == ETL_F32,
       "etl_dtype_parse takes names and descrs");
    ok(etl_dtype_parse("float64", &t) != 0 && etl_dtype_parse(NULL, &t) != 0, "etl_dtype_parse refuses others");
    ok(strcmp(etl_dtype_descr(ETL_U8), "|u1") == 0 && strcmp(etl_dtype_name(ETL_I32), "int32") == 0 &&
           etl_dtype_size(ETL_F32) == 4 && etl_dtype_size(ETL_U8) == 1,
       "descr, name and size");
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/etl-npy-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root))
        tap_bail("mkdtemp failed");
    test_dtypes();
    test_round_trip();
    test_numpy();
    test_corruption();
    test_create_errors();
    test_enospc();
    test_efbig();
    cds_rmtree(root);
    return tap_done();
}
