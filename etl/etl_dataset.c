/* etl_dataset: turning a staging directory full of committed shards into a
 * dataset.
 *
 * The version is the SHA-256 of a text listing, in task order, of every
 * shard file with its own checksum (XXH3-128, from the shard manifests): the same rows
 * unloaded the same way give the same version, and any change to any shard
 * gives another.  It is stamped into every manifest and into dataset.json;
 * then the staging directory is renamed to DATA_ROOT/datasets/<name>.  An old
 * dataset of that name (only with --replace) is first renamed aside and
 * removed after the new one is in place, so at every moment the name holds a
 * complete dataset or nothing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cds_layout.h"
#include "cds_util.h"
#include "etl_plan_int.h"
#include "etl_shard.h"

static int read_manifest(const char *path, json_t **out, cds_err *err)
{
    json_error_t je;
    *out = json_load_file(path, 0, &je);
    if (!*out)
        return cds_errf(err, "cannot read %s: %s (the shard is missing or damaged; re-run the unload)", path, je.text);
    return 0;
}

static void hex(const unsigned char *d, unsigned n, char *out)
{
    for (unsigned i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

/* Also finds the largest class id over all shards (*max_label). */
static int compute_version(const etl_plan *p, char version[65], json_t *splits, int64_t *max_label, cds_err *err)
{
    *max_label = -1;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    int rc = 0;
    for (size_t i = 0; i < p->n_tasks && rc == 0; i++) {
        const etl_task *t = &p->tasks[i];
        char dir[4096], path[4200];
        if ((rc = cds_layout_shard_dir(dir, sizeof dir, p->staging, t->split, t->shard, err)) != 0)
            break;
        char rel[256]; /* the shard as the version's hash names it: <split>/shard-<k> */
        if ((rc = cds_layout_split_shard(rel, sizeof rel, t->split, t->shard, err)) != 0)
            break;
        snprintf(path, sizeof path, "%s/manifest.json", dir);
        json_t *m;
        if ((rc = read_manifest(path, &m, err)) != 0)
            break;
        const char *files[2] = {"x.npy", "y.npy"};
        for (int f = 0; f < 2; f++) {
            const json_t *entry = json_object_get(json_object_get(m, "files"), files[f]);
            const char *sum = json_string_value(json_object_get(entry, "xxh128"));
            char line[4200];
            int n = snprintf(line, sizeof line, "%s/%s %s\n", rel, files[f], sum ? sum : "");
            EVP_DigestUpdate(md, line, (size_t)n);
        }
        json_t *sp = json_object_get(splits, t->split);
        if (!sp) {
            sp = json_pack("{s:i, s:i, s:[]}", "shards", 0, "rows", 0, "rows_per_shard");
            json_object_set_new(splits, t->split, sp);
        }
        json_int_t rows = json_integer_value(json_object_get(m, "rows"));
        if (json_integer_value(json_object_get(m, "max_label")) > *max_label)
            *max_label = json_integer_value(json_object_get(m, "max_label"));
        json_object_set_new(sp, "shards", json_integer(json_integer_value(json_object_get(sp, "shards")) + 1));
        json_object_set_new(sp, "rows", json_integer(json_integer_value(json_object_get(sp, "rows")) + rows));
        json_array_append_new(json_object_get(sp, "rows_per_shard"), json_integer(rows));
        json_decref(m);
    }
    unsigned char d[32];
    unsigned dn = 0;
    EVP_DigestFinal_ex(md, d, &dn);
    EVP_MD_CTX_free(md);
    hex(d, dn, version);
    return rc;
}

static int write_dataset_json(const etl_plan *p, const char *version, json_t *splits, int num_classes, cds_err *err)
{
    char path[4096], tmp[4200];
    if (cds_layout_dataset_json(path, sizeof path, p->staging, err) != 0)
        return -1;
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    char when[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *d = json_pack("{s:s, s:i, s:s, s:s, s:O, s:i, s:s, s:O, s:O}", "format", "cds-dataset", "format_version", 1,
                          "dataset", p->dataset, "version", version, "splits", splits, "num_classes", num_classes,
                          "finished_at", when, "x", json_object_get(p->json, "x"), "spec",
                          json_object_get(p->json, "spec"));
    if (p->has_classes)
        json_object_set(d, "classes", json_object_get(p->json, "classes"));
    if (p->layout == ETL_LAYOUT_MADLIB)
        json_object_set(d, "madlib", json_object_get(p->json, "madlib"));
    int rc = json_dump_file(d, tmp, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(d);
    if (rc != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return cds_errf(err, "cannot write %s: %s", path, strerror(errno));
    }
    return 0;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int etl_dataset_finish(const etl_plan *p, char version[65], cds_err *err)
{
    json_t *splits = json_object();
    int64_t max_label;
    int rc = compute_version(p, version, splits, &max_label, err);
    int num_classes = p->num_classes > 0 ? p->num_classes : (int)max_label + 1;
    if (rc == 0 && num_classes < 2)
        rc = cds_errf(err, "label column \"%s\" holds %d class(es) in dataset %s; a classifier needs at least 2",
                      p->label_name, num_classes, p->dataset);
    for (size_t i = 0; i < p->n_tasks && rc == 0; i++) {
        char dir[4096];
        rc = cds_layout_shard_dir(dir, sizeof dir, p->staging, p->tasks[i].split, p->tasks[i].shard, err);
        if (rc == 0)
            rc = etl_shard_manifest_set(dir, "dataset_version", json_string(version), err);
        if (rc == 0 && p->num_classes < 1)
            rc = etl_shard_manifest_set(dir, "num_classes", json_integer(num_classes), err);
    }
    if (rc == 0)
        rc = write_dataset_json(p, version, splits, num_classes, err);
    json_decref(splits);
    if (rc == 0)
        rc = cds_fsync_dir(p->staging, err);
    if (rc != 0)
        return -1;
    char aside[4200] = "";
    if (exists(p->dataset_dir)) {
        if (!p->replace)
            return cds_errf(err, "dataset %s already exists at %s; pass --replace to overwrite it", p->dataset,
                            p->dataset_dir);
        if (cds_layout_replaced_dir(aside, sizeof aside, p->staging,
                                    json_string_value(json_object_get(p->json, "token")) ?: "", err) != 0)
            return -1;
        if (rename(p->dataset_dir, aside) != 0)
            return cds_errf(err, "cannot move the old dataset %s aside: %s", p->dataset_dir, strerror(errno));
    }
    if (rename(p->staging, p->dataset_dir) != 0) {
        int e = errno;
        if (aside[0])
            rename(aside, p->dataset_dir);
        return cds_errf(err, "cannot move %s to %s: %s", p->staging, p->dataset_dir, strerror(e));
    }
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", p->dataset_dir);
    char *slash = strrchr(parent, '/');
    if (slash)
        *slash = '\0';
    if (cds_fsync_dir(parent, err) != 0)
        return -1;
    if (aside[0])
        cds_rmtree(aside);
    return 0;
}

void etl_dataset_discard(const etl_plan *p) { cds_rmtree(p->staging); }
