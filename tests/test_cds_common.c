/* test_cds_common: the shared checks of common/ that messages rely on:
 * cds_json_check_fields (the one unknown-field message of every spec and
 * payload reader) and cds_err_io_hint (the one errno hint table of every
 * writer).  Each message is checked whole, since its words are the
 * contract: the path and key, the fields known, the hint. */
#include <errno.h>
#include <string.h>

#include "cds_err.h"
#include "cds_json.h"
#include "tap.h"

static void unknown_fields(void)
{
    static const char *const known[] = {"lr", "batch", NULL};
    static const char *const none[] = {NULL};
    cds_err err = {0};
    json_t *good = json_pack("{s:f, s:i}", "lr", 0.1, "batch", 32);
    json_t *bad = json_pack("{s:f, s:f}", "lr", 0.1, "learning_rate", 0.1);
    json_t *arr = json_array();
    ok(cds_json_check_fields(good, "$.train", known, NULL, &err) == 0, "known fields pass");
    ok(cds_json_check_fields(arr, "$", known, NULL, &err) == 0, "a non-object has no fields to refuse");
    int rc = cds_json_check_fields(bad, "$.train", known, NULL, &err);
    ok(rc == -1 && strcmp(err.msg, "$.train.learning_rate: unknown field; the fields are: lr, batch") == 0,
       "an unknown field names its path and the fields known: %s", err.msg);
    rc = cds_json_check_fields(bad, "sweep spec $.train", known, "see docs/sweeps.md", &err);
    ok(rc == -1 && strcmp(err.msg, "sweep spec $.train.learning_rate: unknown field; the fields are: lr, batch "
                                   "(see docs/sweeps.md)") == 0,
       "a hint goes in parentheses at the end: %s", err.msg);
    rc = cds_json_check_fields(good, "$", none, "", &err);
    ok(rc == -1 && strstr(err.msg, "the fields are: none") && !strstr(err.msg, "("),
       "an object that takes no fields says none: %s", err.msg);
    json_decref(good);
    json_decref(bad);
    json_decref(arr);
}

static void io_hints(void)
{
    static const cds_io_hints etl = {.fs = "the --data-root filesystem", .elsewhere = "choose another --data-root",
                                     .again = "re-run the unload", .smaller = "use more shards"};
    static const cds_io_hints ckpt = {.fs = "the filesystem", .elsewhere = "checkpoint to another directory",
                                      .again = "retry"};
    char h[200];
    ok(strcmp(cds_err_io_hint(ENOSPC, &etl, h, sizeof h), "free some space or choose another --data-root") == 0,
       "ENOSPC: %s", h);
    ok(strcmp(cds_err_io_hint(EDQUOT, &ckpt, h, sizeof h), "free some space or checkpoint to another directory") == 0,
       "EDQUOT: %s", h);
    ok(strstr(cds_err_io_hint(EFBIG, &etl, h, sizeof h), "ulimit -f") && strstr(h, "raise the limit or use more shards"),
       "EFBIG with a way to write smaller files: %s", h);
    cds_err_io_hint(EFBIG, &ckpt, h, sizeof h);
    ok(strlen(h) > 15 && strcmp(h + strlen(h) - 15, "raise the limit") == 0,
       "EFBIG without one: %s", h);
    ok(strcmp(cds_err_io_hint(EIO, &ckpt, h, sizeof h), "the disk reported an I/O error; check it, then retry") == 0,
       "EIO: %s", h);
    ok(strcmp(cds_err_io_hint(EINVAL, &etl, h, sizeof h), "check the --data-root filesystem, then re-run the unload") ==
           0,
       "any other errno: %s", h);
    char tiny[8];
    ok(strlen(cds_err_io_hint(ENOSPC, &etl, tiny, sizeof tiny)) == sizeof tiny - 1, "a short buffer is cut, not overrun");
}

int main(void)
{
    unknown_fields();
    io_hints();
    return tap_done();
}
