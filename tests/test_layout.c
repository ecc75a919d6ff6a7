/* cds_layout: every path under DATA_ROOT as docs/data-root.md spells it; a
 * path that does not fit its buffer is refused with an error naming the
 * fix, never cut short; the names written into a model directory are the
 * ones its reader recognises, with their numbers. */
#include <string.h>

#include "cds_layout.h"
#include "tap.h"

static int is_path(int rc, const char *got, const char *want)
{
    if (rc == 0 && strcmp(got, want) == 0)
        return 1;
    tap_diag("got rc %d, '%s'; want '%s'", rc, got, want);
    return 0;
}

int main(void)
{
    char p[256];
    cds_err err;
    ok(is_path(cds_layout_dataset_dir(p, sizeof p, "/d", "fm", &err), p, "/d/datasets/fm"), "a dataset");
    ok(is_path(cds_layout_staging_dir(p, sizeof p, "/d", "fm", "tok", &err), p, "/d/datasets/.fm.incoming-tok"),
       "an unload in progress");
    ok(is_path(cds_layout_replaced_dir(p, sizeof p, "/d/datasets/.fm.incoming-tok", "tok", &err), p,
               "/d/datasets/.fm.incoming-tok.old-tok"),
       "the dataset an unload replaces, set aside");
    ok(is_path(cds_layout_dataset_json(p, sizeof p, "/d/datasets/fm", &err), p, "/d/datasets/fm/dataset.json"),
       "dataset.json");
    ok(is_path(cds_layout_split_dir(p, sizeof p, "/d/datasets/fm", "valid", &err), p, "/d/datasets/fm/valid"),
       "a split");
    ok(is_path(cds_layout_shard_dir(p, sizeof p, "/d/datasets/fm", "train", 3, &err), p,
               "/d/datasets/fm/train/shard-3"),
       "a shard of a dataset directory");
    ok(is_path(cds_layout_split_shard(p, sizeof p, "/s/train", 2, &err), p, "/s/train/shard-2"),
       "a shard in a split's directory");
    ok(is_path(cds_layout_dataset_shard(p, sizeof p, "/d", "fm", "test", 0, &err), p, "/d/datasets/fm/test/shard-0"),
       "a shard of a dataset in place");
    ok(is_path(cds_layout_results_csv(p, sizeof p, "/d", "s1", &err), p, "/d/sweeps/s1/results.csv"),
       "results.csv");
    ok(is_path(cds_layout_model_dir(p, sizeof p, "/d", "s1", 7, &err), p, "/d/sweeps/s1/models/7"), "a model");
    ok(is_path(cds_layout_visit_ckpt(p, sizeof p, "/m", 12, "0123456789abcdef", &err), p, "/m/v12-0123456789ab.ckpt"),
       "a visit's checkpoint carries 12 characters of the token");
    ok(is_path(cds_layout_epoch_ckpt(p, sizeof p, "/m", 4, &err), p, "/m/epoch-4.ckpt"), "an epoch's end");
    ok(is_path(cds_layout_best_ckpt(p, sizeof p, "/m", 4, &err), p, "/m/best-e4.ckpt"), "the best epoch");

    char small[16];
    ok(cds_layout_model_dir(small, sizeof small, "/data/root", "s1", 7, &err) == -1 && small[0] == '\0' &&
           strstr(err.msg, "DATA_ROOT") && strstr(err.msg, "--data-root"),
       "a path longer than its buffer is refused, nothing left in it (%s)", err.msg);
    ok(cds_layout_dataset_dir(small, sizeof small, "/d", "abc", &err) == 0 &&
           cds_layout_dataset_dir(small, sizeof small, "/d", "abcd", &err) == -1,
       "15 bytes fit in 16, 16 do not");

    ok(cds_layout_split_shard(p, sizeof p, ".", 12, &err) == 0 && cds_layout_shard_index(p + 2) == 12,
       "a shard's name reads back with its index");
    ok(cds_layout_shard_index(".shard-3.tmp-ab12") == -1 && cds_layout_shard_index("shard-3.old") == -1 &&
           cds_layout_shard_index("shard--1") == -1 && cds_layout_shard_index("x.npy") == -1,
       "temporary, set-aside and other names are no shard");
    int64_t num = -1;
    ok(cds_layout_visit_ckpt(p, sizeof p, ".", 5, "tok", &err) == 0 && cds_layout_model_file(p + 2, &num) ==
           CDS_LAYOUT_VISIT && num == 5, "a visit's name reads back as a visit of its version");
    ok(cds_layout_epoch_ckpt(p, sizeof p, ".", 9, &err) == 0 && cds_layout_model_file(p + 2, &num) ==
           CDS_LAYOUT_EPOCH && num == 9, "an epoch's name reads back with its epoch");
    ok(cds_layout_best_ckpt(p, sizeof p, ".", 2, &err) == 0 && cds_layout_model_file(p + 2, &num) == CDS_LAYOUT_BEST &&
           num == 2, "a best epoch's name reads back with its epoch");
    ok(cds_layout_model_file("v3-abc.ckpt.tmp", &num) == CDS_LAYOUT_VISIT && num == 3,
       "a visit's temporary file counts as the visit's");
    ok(cds_layout_model_file("results.csv", &num) == CDS_LAYOUT_OTHER &&
           cds_layout_model_file("epoch-x.ckpt", &num) == CDS_LAYOUT_OTHER &&
           cds_layout_model_file("v3-", &num) == CDS_LAYOUT_OTHER,
       "other names are other");
    return tap_done();
}
