/* golden_reader.h: reads the PyTorch golden files of tests/golden/ (format in
 * tests/golden/README.md) with msgpack-c, for the engine's tests.
 *
 * A file is one msgpack map; tensors are maps {name, dtype, shape, data}.
 * Everything is copied out of the msgpack zone into plain arrays so a test
 * can free the file as soon as it has what it needs. */
#ifndef CDS_GOLDEN_READER_H
#define CDS_GOLDEN_READER_H

#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct golden_tensor {
    char name[128];
    int is_int;
    int ndim;
    int64_t shape[8];
    size_t n;
    void *data; /* float or int32 */
} golden_tensor;

typedef struct golden_file {
    char *bytes;
    size_t len;
    msgpack_unpacked up;
    const msgpack_object *root;
} golden_file;

static inline int golden_open(golden_file *g, const char *path)
{
    memset(g, 0, sizeof *g);
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    g->bytes = malloc(len > 0 ? (size_t)len : 1);
    if (!g->bytes || fread(g->bytes, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(g->bytes);
        return -1;
    }
    fclose(f);
    g->len = (size_t)len;
    msgpack_unpacked_init(&g->up);
    size_t off = 0;
    if (msgpack_unpack_next(&g->up, g->bytes, g->len, &off) != MSGPACK_UNPACK_SUCCESS ||
        g->up.data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(&g->up);
        free(g->bytes);
        return -1;
    }
    g->root = &g->up.data;
    return 0;
}

static inline void golden_close(golden_file *g)
{
    msgpack_unpacked_destroy(&g->up);
    free(g->bytes);
}

static inline const msgpack_object *golden_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            memcmp(kv->key.via.str.ptr, key, kv->key.via.str.size) == 0)
            return &kv->val;
    }
    return NULL;
}

/* A string member as a new NUL-terminated string (free it), or NULL. */
static inline char *golden_str(const msgpack_object *map, const char *key)
{
    const msgpack_object *o = golden_get(map, key);
    if (!o || o->type != MSGPACK_OBJECT_STR)
        return NULL;
    char *s = malloc(o->via.str.size + 1);
    if (s) {
        memcpy(s, o->via.str.ptr, o->via.str.size);
        s[o->via.str.size] = 0;
    }
    return s;
}

static inline double golden_num(const msgpack_object *o)
{
    if (!o)
        return 0;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return o->via.f64;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return (double)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return (double)o->via.i64;
    default:
        return 0;
    }
}

static inline int golden_tensor_read(const msgpack_object *o, golden_tensor *t)
{
    memset(t, 0, sizeof *t);
    const msgpack_object *name = golden_get(o, "name"), *dtype = golden_get(o, "dtype"),
                         *shape = golden_get(o, "shape"), *data = golden_get(o, "data");
    if (!dtype || dtype->type != MSGPACK_OBJECT_STR || !shape || shape->type != MSGPACK_OBJECT_ARRAY || !data ||
        data->type != MSGPACK_OBJECT_BIN || shape->via.array.size > 8)
        return -1;
    if (name && name->type == MSGPACK_OBJECT_STR)
        snprintf(t->name, sizeof t->name, "%.*s", (int)name->via.str.size, name->via.str.ptr);
    t->is_int = dtype->via.str.size == 5 && memcmp(dtype->via.str.ptr, "int32", 5) == 0;
    t->ndim = (int)shape->via.array.size;
    t->n = 1;
    for (int i = 0; i < t->ndim; i++) {
        t->shape[i] = (int64_t)golden_num(&shape->via.array.ptr[i]);
        t->n *= (size_t)t->shape[i];
    }
    if (data->via.bin.size != t->n * 4)
        return -1;
    t->data = malloc(t->n * 4 + 1);
    if (!t->data)
        return -1;
    memcpy(t->data, data->via.bin.ptr, t->n * 4);
    return 0;
}

/* Reads an array of tensors; returns the count or -1. */
static inline int golden_tensors(const msgpack_object *map, const char *key, golden_tensor **out)
{
    const msgpack_object *a = golden_get(map, key);
    *out = NULL;
    if (!a || a->type != MSGPACK_OBJECT_ARRAY)
        return -1;
    golden_tensor *ts = calloc(a->via.array.size + 1, sizeof *ts);
    if (!ts)
        return -1;
    for (uint32_t i = 0; i < a->via.array.size; i++)
        if (golden_tensor_read(&a->via.array.ptr[i], &ts[i]) != 0) {
            for (uint32_t j = 0; j < i; j++)
                free(ts[j].data);
            free(ts);
            return -1;
        }
    *out = ts;
    return (int)a->via.array.size;
}

static inline void golden_tensors_free(golden_tensor *ts, int n)
{
    for (int i = 0; ts && i < n; i++)
        free(ts[i].data);
    free(ts);
}

#endif
