/* nn_ckpt_int: what the checkpoint writer (nn_ckpt_write.c) and reader
 * (nn_ckpt_read.c, over the pull parser of nn_ckpt_mp.c) share: the
 * format's fixed bytes and counts, the CRC and the size of a tensor's data.
 * docs/checkpoint.md is the format; the writer's and the reader's
 * algorithms are described atop their files. */
#ifndef CDS_NN_CKPT_INT_H
#define CDS_NN_CKPT_INT_H

#ifndef CDS_NN_INTERNAL
#error "nn_ckpt_int.h is private to nn/: include nn_model.h, nn_train.h, nn_ops.h and the other public nn headers (a white-box test under tests/ adds c_args : nn_private_args)"
#endif

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
extern const unsigned char nn_ckpt_tail_tag[7];
/* Every version-1 file starts with these bytes: fixmap of 13, "format",
 * "cds-checkpoint", "format_version", positive fixint 1. */
extern const unsigned char nn_ckpt_head_magic[39];
#define JSON_MAX_DEPTH 128
#define IO_BUF (64 * 1024)

/* zlib's crc32() over any length. */
uLong nn_ckpt_crc(uLong crc, const void *p, size_t n);
/* Bytes of a tensor's data, or -1 when its shape is negative or too large. */
int nn_ckpt_tensor_bytes(const nn_ckpt_tensor *t, size_t *bytes);

/* ---- reading: a pull parser over the file (nn_ckpt_mp.c) ---- */
typedef enum mp_kind { MP_NIL, MP_BOOL, MP_UINT, MP_INT, MP_REAL, MP_STR, MP_BIN, MP_ARRAY, MP_MAP, MP_EXT } mp_kind;

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

/* Each fails with a message naming the byte offset (kept in r->err) and
 * returns -1; nn_ckr_fail formats that message. */
int nn_ckr_fail(ck_reader *r, uint64_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int nn_ckr_pread_all(int fd, void *dst, size_t n, uint64_t off);
int nn_ckr_io_fail(ck_reader *r, int e);
int nn_ckr_oom(ck_reader *r, const char *what);
int nn_ckr_bytes(ck_reader *r, void *dst, uint64_t n);
uint64_t nn_ckr_be_load(const unsigned char *b, int n);
int nn_ckr_expect(ck_reader *r, mp_head *h, mp_kind kind, const char *what);
int nn_ckr_str(ck_reader *r, const char *what, char **out);
int nn_ckr_key(ck_reader *r, const char *key);
int nn_ckr_int(ck_reader *r, const char *what, int64_t min, int64_t max, int64_t *out);
int nn_ckr_u64(ck_reader *r, const char *what, uint64_t *out);
int nn_ckr_count(ck_reader *r, mp_kind kind, const char *what, uint64_t *n);
int nn_ckr_json_object(ck_reader *r, const char *what, char **out);

#endif
