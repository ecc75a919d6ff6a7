/* Sweep specs (tools/sweep_spec.c, docs/sweeps.md): expansion counts and
 * order, stable ids and byte-exact canonical model specs, defaults made
 * explicit, every refusal with its JSON path and fix in one line, and the
 * examples in jobs/ (found through CDS_SOURCE_ROOT). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_model.h"
#include "nn_optim.h"
#include "sweep_spec.h"
#include "tap.h"

/* The example of docs/sweeps.md: 2 models x 1 x 2 x 2 x 2 = 16. */
static const char example[] =
    "{\"mode\": \"mop\", \"dataset\": \"fmnist\", \"epochs\": 5, \"seed\": 1,"
    " \"models\": [{\"arch\": \"cnn\", \"input\": [1, 28, 28], \"classes\": 10},"
    "             {\"arch\": \"mlp\", \"input\": [784], \"hidden\": [256], \"classes\": 10}],"
    " \"train\": {\"schedule\": {\"kind\": \"constant\"},"
    "           \"normalize\": {\"scale\": 0.00392156862745098, \"mean\": [0.286], \"std\": [0.353]}},"
    " \"grid\": {\"optimizer\": [\"adam\"], \"lr\": [0.001, 0.0001], \"batch\": [64, 256], \"l2\": [0.0, 0.0001]}}";

/* The same spec with every object's keys in another order. */
static const char example_reordered[] =
    "{\"grid\": {\"l2\": [0.0, 0.0001], \"batch\": [64, 256], \"lr\": [0.001, 0.0001], \"optimizer\": [\"adam\"]},"
    " \"train\": {\"normalize\": {\"std\": [0.353], \"mean\": [0.286], \"scale\": 0.00392156862745098},"
    "           \"schedule\": {\"kind\": \"constant\"}},"
    " \"models\": [{\"classes\": 10, \"input\": [1, 28, 28], \"arch\": \"cnn\"},"
    "             {\"classes\": 10, \"hidden\": [256], \"input\": [784], \"arch\": \"mlp\"}],"
    " \"seed\": 1, \"epochs\": 5, \"dataset\": \"fmnist\", \"mode\": \"mop\"}";

/* The example with top-level key set to value (JSON text), or removed when
 * value is NULL.  Returns malloc'd JSON text. */
static char *variant(const char *key, const char *value)
{
    json_t *root = json_loads(example, 0, NULL);
    if (value)
        json_object_set_new(root, key, json_loads(value, JSON_DECODE_ANY, NULL));
    else
        json_object_del(root, key);
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return text;
}

/* n numbers start, start + step, ... as JSON text "[a, b, ...]". */
static char *number_list(int n, double start, double step)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_real(start + step * i));
    char *text = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    return text;
}

/* The parse of text is refused with one line that starts with "sweep spec
 * <path>: " and holds fix. */
static void refused(const char *text, const char *path, const char *fix, const char *name)
{
    cds_err err = {0};
    sweep_spec *s = sweep_spec_parse(text, &err);
    char want[160];
    snprintf(want, sizeof want, "sweep spec %s: ", path);
    int good = !s && strncmp(err.msg, want, strlen(want)) == 0 && strstr(err.msg, fix) && !strchr(err.msg, '\n');
    if (!ok(good, "refused: %s", name))
        tap_diag("got '%s', want '%s...%s'", s ? "(accepted)" : err.msg, want, fix);
    sweep_spec_free(s);
}

/* Same, for a variant of the example. */
static void refused_variant(const char *key, const char *value, const char *path, const char *fix,
                            const char *name)
{
    char *text = variant(key, value);
    refused(text, path, fix, name);
    free(text);
}

static sweep_spec *parse_ok(const char *text, const char *name)
{
    cds_err err = {0};
    sweep_spec *s = sweep_spec_parse(text, &err);
    if (!ok(s != NULL, "parses: %s", name))
        tap_diag("%s", err.msg);
    return s;
}

/* Every model spec of s is a {"model","train"} whose halves pass the nn
 * checks, with all five grid-set fields present in train. */
static int specs_valid(const sweep_spec *s)
{
    for (int i = 0; i < sweep_spec_model_count(s); i++) {
        json_t *o = json_loads(sweep_spec_model(s, i), 0, NULL);
        char *m = o ? json_dumps(json_object_get(o, "model"), JSON_COMPACT) : NULL;
        char *t = o ? json_dumps(json_object_get(o, "train"), JSON_COMPACT) : NULL;
        cds_err err;
        nn_train_cfg c;
        int good = m && t && json_object_size(o) == 2 && nn_model_validate(m, NULL, &err) == 0 &&
                   nn_train_cfg_parse(t, &c, &err) == 0;
        if (good)
            nn_train_cfg_free(&c);
        static const char *const fields[] = {"optimizer", "lr", "batch", "l2", "seed"};
        for (size_t f = 0; good && f < 5; f++)
            good = json_object_get(json_object_get(o, "train"), fields[f]) != NULL;
        free(m);
        free(t);
        json_decref(o);
        if (!good)
            return 0;
    }
    return 1;
}

static void test_example(void)
{
    sweep_spec *s = parse_ok(example, "the docs/sweeps.md example");
    if (!s)
        return;
    is_int(sweep_spec_model_count(s), 16, "2 models x 1 optimizer x 2 lr x 2 batch x 2 l2 = 16 models");
    ok(strcmp(sweep_spec_mode(s), "mop") == 0, "mode mop");
    ok(strcmp(sweep_spec_dataset(s), "fmnist") == 0, "dataset");
    is_int(sweep_spec_epochs(s), 5, "epochs");
    is_int((long long)sweep_spec_seed(s), 1, "seed");
    /* Order: models outer, then optimizer, lr, batch, l2 (inner). */
    static const char *const want[][2] = {
        {"0", "model 0: cnn adam lr=0.001 batch=64 l2=0"},    {"1", "model 1: cnn adam lr=0.001 batch=64 l2=0.0001"},
        {"2", "model 2: cnn adam lr=0.001 batch=256 l2=0"},   {"4", "model 4: cnn adam lr=0.0001 batch=64 l2=0"},
        {"7", "model 7: cnn adam lr=0.0001 batch=256 l2=0.0001"}, {"8", "model 8: mlp adam lr=0.001 batch=64 l2=0"},
        {"15", "model 15: mlp adam lr=0.0001 batch=256 l2=0.0001"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *got = sweep_spec_summary(s, atoi(want[i][0]));
        if (!ok(got && strcmp(got, want[i][1]) == 0, "summary of model %s", want[i][0]))
            tap_diag("got '%s', want '%s'", got ? got : "(null)", want[i][1]);
    }
    /* Byte-exact canonical spec: keys sorted, compact, %.17g reals (0.286 is
     * 0.28599999999999998 in binary64), the grid's l2 0.0 kept a real, the
     * sweep's seed added. */
    const char *want0 =
        "{\"model\":{\"arch\":\"cnn\",\"classes\":10,\"input\":[1,28,28]},\"train\":{\"batch\":64,\"l2\":0.0,"
        "\"lr\":0.001,\"normalize\":{\"mean\":[0.28599999999999998],\"scale\":0.0039215686274509803,"
        "\"std\":[0.35299999999999998]},\"optimizer\":\"adam\",\"schedule\":{\"kind\":\"constant\"},\"seed\":1}}";
    if (!ok(strcmp(sweep_spec_model(s, 0), want0) == 0, "model 0's spec is canonical JSON"))
        tap_diag("got %s", sweep_spec_model(s, 0));
    const char *want15 =
        "{\"model\":{\"arch\":\"mlp\",\"classes\":10,\"hidden\":[256],\"input\":[784]},\"train\":{\"batch\":256,"
        "\"l2\":0.0001,\"lr\":0.0001,\"normalize\":{\"mean\":[0.28599999999999998],\"scale\":0.0039215686274509803,"
        "\"std\":[0.35299999999999998]},\"optimizer\":\"adam\",\"schedule\":{\"kind\":\"constant\"},\"seed\":1}}";
    if (!ok(strcmp(sweep_spec_model(s, 15), want15) == 0, "model 15's spec is canonical JSON"))
        tap_diag("got %s", sweep_spec_model(s, 15));
    ok(sweep_spec_model_specs(s)[3] == sweep_spec_model(s, 3), "the spec array is the per-model specs");
    ok(sweep_spec_model(s, -1) == NULL && sweep_spec_model(s, 16) == NULL && sweep_spec_summary(s, 16) == NULL,
       "out-of-range model ids give NULL");
    ok(specs_valid(s), "every model spec passes nn_model_validate and nn_train_cfg_parse, with all five fields");

    /* Stable: a second parse, and the same spec with its keys reordered, give
     * the same ids and bytes. */
    sweep_spec *again = parse_ok(example, "the example again");
    sweep_spec *reord = parse_ok(example_reordered, "the example with every key order changed");
    int same = again && reord && sweep_spec_model_count(again) == 16 && sweep_spec_model_count(reord) == 16;
    for (int i = 0; same && i < 16; i++)
        same = strcmp(sweep_spec_model(s, i), sweep_spec_model(again, i)) == 0 &&
               strcmp(sweep_spec_model(s, i), sweep_spec_model(reord, i)) == 0 &&
               strcmp(sweep_spec_summary(s, i), sweep_spec_summary(reord, i)) == 0;
    ok(same, "ids and specs are stable across parses and key orders");
    ok(reord && strcmp(sweep_spec_json(s), sweep_spec_json(reord)) == 0, "the canonical whole spec ignores key order");
    /* The canonical whole spec is a sweep spec that expands the same way. */
    sweep_spec *round = parse_ok(sweep_spec_json(s), "the canonical whole spec");
    same = round && sweep_spec_model_count(round) == 16 && strcmp(sweep_spec_json(round), sweep_spec_json(s)) == 0;
    for (int i = 0; same && i < 16; i++)
        same = strcmp(sweep_spec_model(s, i), sweep_spec_model(round, i)) == 0;
    ok(same, "the canonical whole spec round-trips to the same models");
    sweep_spec_free(round);
    sweep_spec_free(again);
    sweep_spec_free(reord);
    sweep_spec_free(s);
}

static void test_defaults(void)
{
    /* No seed, no grid: the base train gives optimizer and lr; batch and l2
     * take nn_optim's defaults (32 and 0), written into the spec. */
    const char *text = "{\"mode\": \"mop\", \"dataset\": \"d\", \"epochs\": 1,"
                       " \"models\": [{\"arch\": \"mlp\", \"input\": [4], \"classes\": 2}],"
                       " \"train\": {\"optimizer\": \"sgd\", \"lr\": 0.5}}";
    sweep_spec *s = parse_ok(text, "a spec without seed and grid");
    if (s) {
        is_int(sweep_spec_model_count(s), 1, "no grid: one model per model object");
        is_int((long long)sweep_spec_seed(s), 1, "the seed defaults to 1");
        const char *want = "{\"model\":{\"arch\":\"mlp\",\"classes\":2,\"input\":[4]},\"train\":{\"batch\":32,"
                           "\"l2\":0.0,\"lr\":0.5,\"optimizer\":\"sgd\",\"seed\":1}}";
        if (!ok(strcmp(sweep_spec_model(s, 0), want) == 0, "defaults of batch and l2 and the seed are explicit"))
            tap_diag("got %s", sweep_spec_model(s, 0));
        ok(strstr(sweep_spec_json(s), "\"seed\":1") != NULL, "the canonical whole spec holds the default seed");
        ok(strcmp(sweep_spec_summary(s, 0), "model 0: mlp sgd lr=0.5 batch=32 l2=0") == 0, "summary with defaults");
        ok(sweep_spec_hybrid(s) == 1, "a MOP sweep has the hybrid on by default");
    }
    sweep_spec_free(s);
    s = parse_ok("{\"mode\": \"mop\", \"dataset\": \"d\", \"epochs\": 1, \"hybrid\": false,"
                 " \"models\": [{\"arch\": \"mlp\", \"input\": [4], \"classes\": 2}],"
                 " \"train\": {\"optimizer\": \"sgd\", \"lr\": 0.5}}", "a MOP sweep with \"hybrid\": false");
    ok(s && sweep_spec_hybrid(s) == 0 && strstr(sweep_spec_json(s), "\"hybrid\":false"),
       "\"hybrid\": false turns it off, and the stored spec says so");
    sweep_spec_free(s);
    s = parse_ok("{\"mode\": \"ddp\", \"dataset\": \"d\", \"epochs\": 1,"
                 " \"models\": [{\"arch\": \"mlp\", \"input\": [4], \"classes\": 2}],"
                 " \"train\": {\"optimizer\": \"sgd\", \"lr\": 0.5}}", "a DDP sweep");
    ok(s && sweep_spec_hybrid(s) == 0, "a DDP sweep has no hybrid (its models are gangs already)");
    sweep_spec_free(s);
    /* One axis varied, the others from the base; seed 7 on every model. */
    text = "{\"mode\": \"mop\", \"dataset\": \"d\", \"epochs\": 3, \"seed\": 7,"
           " \"models\": [{\"arch\": \"mlp\", \"input\": [4], \"classes\": 2}, {\"arch\": \"mlp\", \"input\": [4],"
           " \"hidden\": [8], \"classes\": 2}],"
           " \"train\": {\"optimizer\": \"sgd\", \"lr\": 0.5, \"momentum\": 0.5, \"l2\": 0.001},"
           " \"grid\": {\"batch\": [8, 16, 4]}}";
    s = parse_ok(text, "one axis in the grid, the rest in the base");
    if (s) {
        is_int(sweep_spec_model_count(s), 6, "2 models x 3 batch sizes");
        ok(strcmp(sweep_spec_summary(s, 2), "model 2: mlp sgd lr=0.5 batch=4 l2=0.001") == 0 &&
               strcmp(sweep_spec_summary(s, 3), "model 3: mlp sgd lr=0.5 batch=8 l2=0.001") == 0,
           "grid values keep their listed order");
        int seeds = 1;
        for (int i = 0; i < 6; i++) {
            json_t *o = json_loads(sweep_spec_model(s, i), 0, NULL);
            json_t *t = json_object_get(o, "train");
            seeds &= json_integer_value(json_object_get(t, "seed")) == 7 &&
                     json_number_value(json_object_get(t, "momentum")) == 0.5;
            json_decref(o);
        }
        ok(seeds, "every model has the sweep's seed and the base's other fields");
    }
    sweep_spec_free(s);
}

static void test_refusals(void)
{
    refused("{\"mode\": \"mop\",", "$", "not valid JSON", "malformed JSON");
    refused("{\"mode\": \"mop\", \"mode\": \"mop\"}", "$", "duplicate", "a duplicate key");
    refused("[1]", "$", "must be a JSON object", "not an object");
    refused_variant("models_", "[]", "$.models_", "unknown field", "an unknown top-level field");
    refused_variant("mode", NULL, "$.mode", "required", "no mode");
    refused_variant("mode", "\"hybrid\"", "$.mode", "\"ddp\" (data-parallel) or \"ma\"", "an unknown mode");
    refused_variant("mode", "1", "$.mode", "not a non-string", "a mode that is not a string");
    for (int i = 0; i < 3; i++) {
        static const char *const modes[] = {"\"mop\"", "\"ddp\"", "\"ma\""};
        char *text = variant("mode", modes[i]);
        sweep_spec *s = parse_ok(text, modes[i]);
        char want[8];
        snprintf(want, sizeof want, "%.*s", (int)strlen(modes[i]) - 2, modes[i] + 1);
        ok(s && strcmp(sweep_spec_mode(s), want) == 0, "mode %s is kept as %s", modes[i], s ? sweep_spec_mode(s) : "?");
        sweep_spec_free(s);
        free(text);
    }
    refused_variant("dataset", NULL, "$.dataset", "required", "no dataset");
    refused_variant("dataset", "\"../x\"", "$.dataset", "must be a dataset name", "a dataset name with a slash");
    refused_variant("dataset", "\"\"", "$.dataset", "must be a dataset name", "an empty dataset name");
    refused_variant("epochs", NULL, "$.epochs", "required: a whole number from 1 to 10000", "no epochs");
    refused_variant("epochs", "0", "$.epochs", "must be a whole number from 1 to 10000", "epochs 0");
    refused_variant("epochs", "10001", "$.epochs", "from 1 to 10000", "epochs 10001");
    refused_variant("epochs", "2.5", "$.epochs", "whole number", "epochs 2.5");
    refused_variant("seed", "-1", "$.seed", "whole number from 0", "a negative seed");
    refused_variant("models", NULL, "$.models", "required", "no models");
    refused_variant("models", "[]", "$.models", "non-empty list", "an empty model list");
    refused_variant("models", "{\"arch\": \"cnn\"}", "$.models", "non-empty list", "models not a list");
    refused_variant("models", "[{\"arch\": \"mlp\", \"input\": [784], \"classes\": 10}, \"cnn\"]", "$.models[1]",
                    "must be a model object", "a model that is not an object");
    refused_variant("models", "[{\"arch\": \"mlp\", \"input\": [784], \"classes\": 10}, {\"arch\": \"lenet\", "
                    "\"input\": [1, 28, 28], \"classes\": 10}]", "$.models[1]",
                    "model spec: \"arch\" must be one of", "an unknown arch, with the model's path");
    refused_variant("models", "[{\"arch\": \"cnn\", \"input\": [1, 30, 30], \"classes\": 10}]", "$.models[0]",
                    "divisible by 4", "a cnn input nn_model_validate refuses");
    refused_variant("grid", "[1]", "$.grid", "must be an object of lists", "a grid that is not an object");
    refused_variant("grid", "{\"optimizer\": [\"adam\"], \"lr\": [0.1], \"momentum\": [0.9]}", "$.grid.momentum",
                    "unknown field", "an unknown grid axis");
    refused_variant("grid", "{\"optimizer\": [\"adam\"], \"lr\": 0.1}", "$.grid.lr", "must be a list",
                    "a grid value that is not a list");
    refused_variant("grid", "{\"optimizer\": [\"adam\"], \"lr\": []}", "$.grid.lr", "empty list", "an empty grid list");
    refused_variant("grid", "{\"optimizer\": [\"adam\"], \"lr\": [0.001, 0.01, -1]}", "$.grid.lr[2]",
                    "must be a positive number", "a negative learning rate");
    refused_variant("grid", "{\"optimizer\": [\"adam\"], \"lr\": [0.001, 0]}", "$.grid.lr[1]",
                    "must be a positive number", "a zero learning rate");
    refused_variant("grid", "{\"optimizer\": [\"adam\"], \"lr\": [\"0.1\"]}", "$.grid.lr[0]",
                    "must be a positive number", "a learning rate given as a string");
    refused_variant("grid", "{\"optimizer\": [\"adam\"], \"lr\": [0.001, 0.01, 0.001]}", "$.grid.lr[2]",
                    "duplicate of $.grid.lr[0]", "a duplicate learning rate");
    refused_variant("grid", "{\"optimizer\": [\"adam\"], \"lr\": [0.1], \"l2\": [0, 0.0]}", "$.grid.l2[1]",
                    "duplicate of $.grid.l2[0]", "0 and 0.0 are the same l2");
    refused_variant("grid", "{\"optimizer\": [\"adam\"], \"lr\": [0.1], \"l2\": [-0.1]}", "$.grid.l2[0]",
                    "must be a number from 0 to 10", "a negative l2");
    refused_variant("grid", "{\"optimizer\": [\"adam\"], \"lr\": [0.1], \"batch\": [64, 64.5]}", "$.grid.batch[1]",
                    "must be a whole number from 1", "a fractional batch size");
    refused_variant("grid", "{\"optimizer\": [\"adam\"], \"lr\": [0.1], \"batch\": [0]}", "$.grid.batch[0]",
                    "must be a whole number from 1", "a zero batch size");
    refused_variant("grid", "{\"optimizer\": [\"adamw\"], \"lr\": [0.1]}", "$.grid.optimizer[0]",
                    "must be \"sgd\" or \"adam\"", "an unknown optimizer");
    refused_variant("grid", "{\"optimizer\": [\"sgd\", \"sgd\"], \"lr\": [0.1]}", "$.grid.optimizer[1]",
                    "duplicate of $.grid.optimizer[0]", "a duplicate optimizer");
    refused_variant("grid", "{\"lr\": [0.1]}", "$.grid.optimizer", "required", "no optimizer anywhere");
    refused_variant("grid", "{\"optimizer\": [\"sgd\"]}", "$.grid.lr", "required", "no learning rate anywhere");
    refused_variant("train", "[]", "$.train", "must be a train object", "a train that is not an object");
    refused_variant("train", "{\"warmup\": 5}", "$.train.warmup", "unknown field", "an unknown train field");
    refused_variant("train", "{\"seed\": 5}", "$.train.seed", "move it to $.seed", "a seed in the base train");
    refused_variant("train", "{\"lr\": 0.1}", "$.train.lr", "also set by $.grid.lr", "lr in both base and grid");
    refused_variant("train", "{\"schedule\": {\"kind\": \"linear\"}}", "$.train", "train spec: \"schedule\"",
                    "a bad schedule, in nn_train_cfg_parse's words");
    refused_variant("train", "{\"momentum\": 2}", "$.train", "\"momentum\" must be a number",
                    "momentum out of range");
    refused_variant("train", "{\"normalize\": {\"mean\": [0.5, 0.5, 0.5], \"std\": [0.2, 0.2, 0.2]}}",
                    "$.train.normalize", "has 3 mean/std values but $.models[0] has 1 input channel",
                    "3 normalisation channels for 1-channel models");
    refused("{\"mode\": \"mop\", \"dataset\": \"c\", \"epochs\": 1, \"models\": [{\"arch\": \"mlp\", \"sparse\": "
            "{\"dim\": 10, \"nnz\": 2}, \"classes\": 2}], \"train\": {\"optimizer\": \"adam\", \"lr\": 0.1, "
            "\"normalize\": {\"mean\": [0.5], \"std\": [0.2]}}}",
            "$.train.normalize", "$.models[0] is sparse", "normalising a sparse model");
    refused("{\"mode\": \"mop\", \"dataset\": \"c\", \"epochs\": 1, \"models\": [{\"arch\": \"mlp\", \"input\": [4], "
            "\"classes\": 2}], \"train\": {\"optimizer\": \"adam\", \"lr\": -0.1}}",
            "$.train.lr", "must be a positive number", "a bad base value of a grid axis");
    refused("{\"mode\": \"mop\", \"dataset\": \"c\", \"epochs\": 1, \"models\": [{\"arch\": \"mlp\", \"sparse\": "
            "{\"dim\": 10, \"nnz\": 2}, \"classes\": 2}, {\"arch\": \"mlp\", \"input\": [4], \"classes\": 2}], "
            "\"train\": {\"optimizer\": \"adam\", \"lr\": 0.1, \"lazy\": true}}",
            "$.models[1]", "drop \"lazy\" or use a sparse mlp", "lazy Adam for a model with no sparse layer");
    sweep_spec *lazy = parse_ok("{\"mode\": \"mop\", \"dataset\": \"c\", \"epochs\": 1, \"models\": [{\"arch\": "
                                "\"mlp\", \"sparse\": {\"dim\": 10, \"nnz\": 2}, \"classes\": 2}], \"train\": "
                                "{\"optimizer\": \"adam\", \"lr\": 0.1, \"lazy\": true}}",
                                "lazy Adam for a sparse mlp");
    ok(lazy && strstr(sweep_spec_model(lazy, 0), "\"lazy\":true"), "and the model's train object keeps it");
    sweep_spec_free(lazy);
}

static void test_limits(void)
{
    /* 2 models x 2048 learning rates = 4096: the limit itself is accepted. */
    char *lrs = number_list(2048, 0.0001, 0.0001);
    char grid[65536];
    snprintf(grid, sizeof grid, "{\"optimizer\": [\"sgd\"], \"lr\": %s}", lrs);
    char *text = variant("grid", grid);
    sweep_spec *s = parse_ok(text, "2 x 2048 = 4096 models");
    is_int(s ? sweep_spec_model_count(s) : 0, 4096, "4096 models are allowed");
    ok(s && strcmp(sweep_spec_summary(s, 4095), "model 4095: mlp sgd lr=0.2048 batch=32 l2=0") == 0,
       "the last of 4096 models");
    sweep_spec_free(s);
    free(text);
    free(lrs);
    /* 2 models x 2049 = 4098. */
    lrs = number_list(2049, 0.0001, 0.0001);
    snprintf(grid, sizeof grid, "{\"optimizer\": [\"sgd\"], \"lr\": %s}", lrs);
    text = variant("grid", grid);
    refused(text, "$.grid", "gives over 4096 models: split it", "4098 models");
    free(text);
    free(lrs);
    /* Over the limit through the product of small lists: 2 x 2 x 32 x 33. */
    char *a = number_list(32, 1.0, 1.0), *b = number_list(33, 0.0, 0.1);
    snprintf(grid, sizeof grid, "{\"optimizer\": [\"sgd\", \"adam\"], \"lr\": %s, \"l2\": %s}", a, b);
    text = variant("grid", grid);
    refused(text, "$.grid", "2 models x 2 optimizer x 32 lr x 33 l2 gives over 4096", "4224 models from a product");
    free(text);
    free(a);
    free(b);
    char *e = variant("epochs", "10000");
    s = parse_ok(e, "epochs 10000");
    sweep_spec_free(s);
    free(e);
}

/* Reads SOURCE_ROOT/jobs/<name> and expands it. */
static sweep_spec *parse_job_file(const char *name)
{
    const char *root = getenv("CDS_SOURCE_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/jobs/%s", root ? root : ".", name);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    char *text = j ? json_dumps(j, 0) : NULL;
    json_decref(j);
    if (!text)
        tap_diag("cannot read %s: %s", path, je.text);
    sweep_spec *s = parse_ok(text ? text : "", name);
    free(text);
    return s;
}

static void test_job_files(void)
{
    sweep_spec *s = parse_job_file("sweep-fashion-mnist.json");
    ok(s && sweep_spec_model_count(s) >= 4 && strcmp(sweep_spec_dataset(s), "fmnist") == 0,
       "sweep-fashion-mnist: at least 4 models on fmnist (%d)", s ? sweep_spec_model_count(s) : 0);
    ok(s && specs_valid(s), "sweep-fashion-mnist: every spec valid");
    sweep_spec_free(s);

    s = parse_job_file("sweep-fashion-mnist-tpe.json");
    ok(s && strcmp(sweep_spec_search(s), "tpe") == 0 && sweep_spec_trials(s) == 40 &&
           sweep_spec_model_count(s) == 20 && sweep_spec_early_stop(s) &&
           strcmp(sweep_spec_early_stop(s), "valid_top1 max 1 3 9 1") == 0 && specs_valid(s),
       "sweep-fashion-mnist-tpe: TPE over 40 trials (20 random first) with ASHA, every spec valid");
    sweep_spec_free(s);
    s = parse_job_file("sweep-criteo.json");
    is_int(s ? sweep_spec_model_count(s) : 0, 16, "sweep-criteo: 2 lr x 4 batch x 2 l2 = 16 models");
    ok(s && strcmp(sweep_spec_summary(s, 0), "model 0: mlp adam lr=0.001 batch=32 l2=0.0001") == 0 &&
           strcmp(sweep_spec_summary(s, 15), "model 15: mlp adam lr=0.0001 batch=512 l2=1e-05") == 0,
       "sweep-criteo: first and last configurations");
    ok(s && strstr(sweep_spec_model(s, 0), "\"sparse\":{\"dim\":7306,\"nnz\":39}") != NULL,
       "sweep-criteo: the model is confA's sparse MLP");
    ok(s && specs_valid(s), "sweep-criteo: every spec valid");
    sweep_spec_free(s);

    s = parse_job_file("sweep-imagenet.json");
    is_int(s ? sweep_spec_model_count(s) : 0, 16, "sweep-imagenet: 2 models x 2 lr x 2 l2 x 2 batch = 16 models");
    ok(s && strncmp(sweep_spec_summary(s, 7), "model 7: resnet50 ", 18) == 0 &&
           strncmp(sweep_spec_summary(s, 8), "model 8: vgg16 ", 15) == 0,
       "sweep-imagenet: resnet50 then vgg16");
    ok(s && specs_valid(s), "sweep-imagenet: every spec valid (validation allocates no weights)");
    sweep_spec_free(s);

    /* The DDP and MA examples are the MOP ones in another mode. */
    static const char *const modes[][3] = {{"sweep-fashion-mnist-ddp.json", "sweep-fashion-mnist.json", "ddp"},
                                           {"sweep-fashion-mnist-ma.json", "sweep-fashion-mnist.json", "ma"},
                                           {"sweep-criteo-ddp.json", "sweep-criteo.json", "ddp"},
                                           {"sweep-criteo-ma.json", "sweep-criteo.json", "ma"}};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        sweep_spec *a = parse_job_file(modes[i][0]), *b = parse_job_file(modes[i][1]);
        int same = a && b && sweep_spec_model_count(a) == sweep_spec_model_count(b);
        for (int m = 0; same && m < sweep_spec_model_count(a); m++)
            same = strcmp(sweep_spec_model(a, m), sweep_spec_model(b, m)) == 0;
        ok(same && strcmp(sweep_spec_mode(a), modes[i][2]) == 0, "%s: mode %s, the models of %s", modes[i][0],
           modes[i][2], modes[i][1]);
        sweep_spec_free(a);
        sweep_spec_free(b);
    }
}


/* ---- search (docs/search.md) ---- */

static const char search_base[] =
    "{\"mode\": \"mop\", \"dataset\": \"fmnist\", \"epochs\": 3, \"seed\": 7,"
    " \"models\": [{\"arch\": \"mlp\", \"input\": [784], \"hidden\": [64], \"classes\": 10}],"
    " \"train\": {\"optimizer\": \"adam\"},"
    " \"search\": {\"kind\": \"random\", \"trials\": %d, \"seed\": %d, \"space\": {"
    "   \"lr\": {\"loguniform\": [1e-4, 1e-1]}, \"batch\": {\"choice\": [32, 64, 128]},"
    "   \"l2\": {\"quniform\": [0, 0.001, 0.0001]}, \"dropout\": {\"uniform\": [0, 0.5]}}}}";

static sweep_spec *random_search(int trials, int seed)
{
    char text[1024];
    snprintf(text, sizeof text, search_base, trials, seed);
    cds_err err = {0};
    sweep_spec *s = sweep_spec_parse(text, &err);
    if (!s)
        tap_diag("%s", err.msg);
    return s;
}

/* A field of model i's spec: half "model" or "train". */
static double spec_number(const sweep_spec *s, int i, const char *half, const char *field)
{
    json_t *o = json_loads(sweep_spec_model(s, i), 0, NULL);
    double v = json_number_value(json_object_get(json_object_get(o, half), field));
    json_decref(o);
    return v;
}

static void test_random_search(void)
{
    sweep_spec *a = random_search(8, 3), *b = random_search(8, 3), *c = random_search(5, 3), *d = random_search(8, 4);
    if (!ok(a && b && c && d, "random searches parse")) {
        sweep_spec_free(a), sweep_spec_free(b), sweep_spec_free(c), sweep_spec_free(d);
        return;
    }
    is_int(sweep_spec_model_count(a), 8, "a random search has its trials as models");
    ok(strcmp(sweep_spec_search(a), "random") == 0 && sweep_spec_trials(a) == 8 && sweep_spec_search_seed(a) == 3,
       "search kind, budget and seed are kept");
    int same = 1, prefix = 1, differ = 0, inside = 1, distinct = 0;
    for (int i = 0; i < 8; i++) {
        same &= strcmp(sweep_spec_model(a, i), sweep_spec_model(b, i)) == 0;
        if (i < 5)
            prefix &= strcmp(sweep_spec_model(a, i), sweep_spec_model(c, i)) == 0;
        differ += strcmp(sweep_spec_model(a, i), sweep_spec_model(d, i)) != 0;
        double lr = spec_number(a, i, "train", "lr"), batch = spec_number(a, i, "train", "batch");
        double l2 = spec_number(a, i, "train", "l2"), p = spec_number(a, i, "model", "dropout");
        inside &= lr >= 1e-4 && lr <= 1e-1 && (batch == 32 || batch == 64 || batch == 128) && l2 >= 0 &&
                  l2 <= 0.001 + 1e-12 && fabs(l2 / 0.0001 - round(l2 / 0.0001)) < 1e-9 && p >= 0 && p <= 0.5 &&
                  spec_number(a, i, "train", "seed") == 7;
        distinct += i > 0 && lr != spec_number(a, i - 1, "train", "lr");
    }
    ok(same, "the same spec gives the same trials, byte for byte");
    ok(prefix, "trial i depends only on the search seed and i: a budget of 5 gives the first 5 of 8");
    ok(differ == 8, "another search seed draws other trials (%d of 8 differ)", differ);
    ok(inside, "every trial is inside its space (lr loguniform, batch a choice, l2 on its 0.0001 steps, dropout)");
    ok(distinct == 7, "the trials differ from one another");
    ok(strstr(sweep_spec_json(a), "\"seed\":3") != NULL, "the stored spec keeps the search seed");
    sweep_spec_free(a), sweep_spec_free(b), sweep_spec_free(c), sweep_spec_free(d);
}

static void test_search_kinds(void)
{
    const char *grid =
        "{\"mode\": \"mop\", \"dataset\": \"d\", \"epochs\": 1, \"train\": {\"optimizer\": \"sgd\"},"
        " \"models\": [{\"arch\": \"mlp\", \"input\": [4], \"hidden\": [2], \"classes\": 2},"
        "             {\"arch\": \"mlp\", \"input\": [4], \"hidden\": [3], \"classes\": 2}],"
        " \"search\": {\"kind\": \"grid\", \"space\": {\"lr\": {\"choice\": [0.1, 0.01]},"
        "   \"batch\": {\"choice\": [8, 16, 32]}}}}";
    sweep_spec *g = parse_ok(grid, "a grid search");
    is_int(g ? sweep_spec_model_count(g) : 0, 12, "a grid search: 2 models x 3 batches x 2 learning rates");
    ok(g && spec_number(g, 0, "train", "batch") == 8 && spec_number(g, 0, "train", "lr") == 0.1 &&
           spec_number(g, 1, "train", "lr") == 0.01 && spec_number(g, 2, "train", "batch") == 16 &&
           spec_number(g, 6, "train", "batch") == 8,
       "grid order: models outer, then the dimensions by name, the last fastest");
    sweep_spec_free(g);
    const char *tpe =
        "{\"mode\": \"mop\", \"dataset\": \"d\", \"epochs\": 1, \"train\": {\"optimizer\": \"sgd\"},"
        " \"search\": {\"kind\": \"tpe\", \"trials\": %d, \"space\": {\"lr\": {\"loguniform\": [0.001, 0.1]},"
        "   \"model\": {\"choice\": [{\"arch\": \"mlp\", \"input\": [4], \"hidden\": [2], \"classes\": 2},"
        "                          {\"arch\": \"mlp\", \"input\": [4], \"hidden\": [8, 8], \"classes\": 2}]}}}}";
    char text[1024];
    snprintf(text, sizeof text, tpe, 50);
    sweep_spec *t = parse_ok(text, "a TPE search choosing the model");
    ok(t && sweep_spec_model_count(t) == 20 && sweep_spec_trials(t) == 50,
       "TPE starts with its 20 random trials; the budget (50) is kept for the rest");
    int both = 0;
    for (int i = 0; t && i < 20; i++)
        both |= strstr(sweep_spec_model(t, i), "[8,8]") ? 2 : 1;
    ok(both == 3, "the model choice draws both models");
    sweep_spec_free(t);
    snprintf(text, sizeof text, tpe, 6);
    t = parse_ok(text, "a TPE budget below the start-up");
    is_int(t ? sweep_spec_model_count(t) : 0, 6, "a TPE budget of 6 is 6 random trials");
    sweep_spec_free(t);
    /* DDP and MA: a sampled batch rounded to a multiple of the W ranks */
    const char *ddp =
        "{\"mode\": \"ddp\", \"dataset\": \"d\", \"epochs\": 1, \"train\": {\"optimizer\": \"sgd\", \"lr\": 0.1},"
        " \"models\": [{\"arch\": \"mlp\", \"input\": [4], \"hidden\": [2], \"classes\": 2}],"
        " \"search\": {\"kind\": \"random\", \"trials\": 20, \"space\": {\"batch\": {\"quniform\": [1, 100, 1]}}}}";
    cds_err err;
    sweep_spec *w = sweep_spec_parse_for(ddp, 6, &err);
    int multiples = w != NULL;
    for (int i = 0; w && i < 20; i++)
        multiples &= (long)spec_number(w, i, "train", "batch") % 6 == 0 && spec_number(w, i, "train", "batch") >= 6;
    ok(multiples, "sampled batches are rounded to multiples of W = 6 (at least one multiple)%s%s", w ? "" : ": ",
       w ? "" : err.msg);
    sweep_spec_free(w);
}

static void test_search_refusals(void)
{
    const char *head = "{\"mode\": \"mop\", \"dataset\": \"d\", \"epochs\": 4, "
                       "\"models\": [{\"arch\": \"mlp\", \"input\": [4], \"hidden\": [2], \"classes\": 2}], ";
    static const struct {
        const char *rest, *path, *fix, *name;
    } cases[] = {
        {"\"train\": {\"optimizer\": \"sgd\"}, \"search\": {\"kind\": \"random\", \"trials\": 3, \"space\": "
         "{\"lr\": {\"loguniform\": [-9, -2]}}}}",
         "$.search.space.lr", "bounds are values, not logs", "loguniform bounds given as logs"},
        {"\"train\": {\"optimizer\": \"sgd\"}, \"grid\": {\"lr\": [0.1]}, \"search\": {\"kind\": \"random\", "
         "\"trials\": 3, \"space\": {\"batch\": {\"choice\": [8]}}}}",
         "$.grid", "give one of them", "a grid and a search"},
        {"\"train\": {\"optimizer\": \"sgd\", \"lr\": 0.1}, \"search\": {\"kind\": \"random\", \"space\": "
         "{\"batch\": {\"choice\": [8]}}}}",
         "$.search.trials", "required", "random without trials"},
        {"\"train\": {\"optimizer\": \"sgd\", \"lr\": 0.1}, \"search\": {\"kind\": \"bayes\", \"trials\": 3, "
         "\"space\": {\"batch\": {\"choice\": [8]}}}}",
         "$.search.kind", "\"grid\", \"random\" or \"tpe\"", "an unknown kind"},
        {"\"train\": {\"optimizer\": \"sgd\"}, \"search\": {\"kind\": \"grid\", \"space\": "
         "{\"lr\": {\"uniform\": [0.01, 0.1]}}}}",
         "$.search.space.lr", "\"choice\" dimensions only", "a range in a grid"},
        {"\"train\": {\"optimizer\": \"sgd\", \"lr\": 0.1}, \"search\": {\"kind\": \"random\", \"trials\": 3, "
         "\"space\": {\"lr\": {\"uniform\": [0.01, 0.1]}}}}",
         "$.train.lr", "also set by $.search.space.lr", "a field in the train and the space"},
        {"\"train\": {\"optimizer\": \"sgd\"}, \"search\": {\"kind\": \"random\", \"trials\": 3, "
         "\"space\": {\"batch\": {\"choice\": [8, 16]}}}}",
         "$.search.space.lr", "required", "no learning rate anywhere"},
        {"\"train\": {\"lr\": 0.1}, \"search\": {\"kind\": \"random\", \"trials\": 3, "
         "\"space\": {\"optimizer\": {\"uniform\": [0, 1]}}}}",
         "$.search.space.optimizer", "can only be a \"choice\"", "an optimizer range"},
        {"\"train\": {\"optimizer\": \"sgd\"}, \"search\": {\"kind\": \"random\", \"trials\": 3, "
         "\"space\": {\"lr\": {\"choice\": [0.1, 0.1]}}}}",
         "$.search.space.lr", "repeats option 0", "a repeated option"},
        {"\"train\": {\"optimizer\": \"sgd\"}, \"search\": {\"kind\": \"random\", \"trials\": 3, "
         "\"space\": {\"lr\": {\"uniform\": [0.1, 0.01]}}}}",
         "$.search.space.lr", "lo < hi", "bounds in the wrong order"},
        {"\"train\": {\"optimizer\": \"sgd\"}, \"search\": {\"kind\": \"random\", \"trials\": 3, "
         "\"space\": {\"lr\": [0.1, 0.01]}}}",
         "$.search.space.lr", "must be one of {\"choice\"", "a bare list"},
        {"\"train\": {\"optimizer\": \"sgd\"}, \"search\": {\"kind\": \"tpe\", \"trials\": 1, "
         "\"space\": {\"lr\": {\"loguniform\": [0.001, 0.1]}, \"dropout\": {\"uniform\": [0, 1.0]}}}}",
         "$.search.space (its high ends, option 1)", "\"dropout\"", "a TPE range training would refuse at its end"},
        {"\"train\": {\"optimizer\": \"sgd\"}, \"search\": {\"kind\": \"random\", \"trials\": 3, "
         "\"space\": {\"lr\": {\"loguniform\": [0.001, 0.1]}, \"model\": {\"choice\": [{\"arch\": \"cnn\"}]}}}}",
         "$.models", "drop $.models", "models given twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[2048];
        snprintf(text, sizeof text, "%s%s", head, cases[i].rest);
        refused(text, cases[i].path, cases[i].fix, cases[i].name);
    }
}


/* "init": checked offline; with the path the queue resolved, every
 * model's train starts from it, grid or search. */
static void test_init(void)
{
    refused_variant("init", "\"s3\"", "$.init", "must be \"SWEEP/MODEL\"", "an init without a model");
    refused_variant("init", "\"s3/x\"", "$.init", "must be \"SWEEP/MODEL\"", "an init with a bad model");
    refused_variant("init", "\"s3/2@0\"", "$.init", "must be \"SWEEP/MODEL\"", "an init at epoch 0");
    refused_variant("init", "\"s3/2@4x\"", "$.init", "must be \"SWEEP/MODEL\"", "an init with a tail");
    refused_variant("train", "{\"init\": \"/x.ckpt\"}", "$.train.init", "starts warm from $.init",
                    "an init in the base train");
    char *text = variant("init", "\"s3/2@4\"");
    cds_err err;
    sweep_spec *plain = sweep_spec_parse(text, &err);
    sweep_spec_opts o = {.init_ckpt = "/data/sweeps/s3/models/2/best-e4.ckpt"};
    sweep_spec *warm = sweep_spec_parse_with(text, &o, &err);
    char sw[32];
    int m = -1, e = -1;
    ok(plain && sweep_spec_init(plain, sw, &m, &e) && strcmp(sw, "s3") == 0 && m == 2 && e == 4 &&
           !strstr(sweep_spec_model(plain, 0), "\"init\""),
       "init s3/2@4 parses into its sweep, model and epoch; unresolved, the models are only checked");
    int all = warm != NULL;
    for (int i = 0; warm && i < sweep_spec_model_count(warm); i++)
        all &= strstr(sweep_spec_model(warm, i), "\"init\":\"/data/sweeps/s3/models/2/best-e4.ckpt\"") != NULL;
    ok(all && warm && strstr(sweep_spec_json(warm), "\"init\":\"s3/2@4\""),
       "resolved, every model's train has the checkpoint as its init, and the stored spec keeps the name");
    sweep_spec_free(plain);
    sweep_spec_free(warm);
    free(text);
}

int main(void)
{
    test_example();
    test_defaults();
    test_refusals();
    test_limits();
    test_job_files();
    test_random_search();
    test_search_kinds();
    test_search_refusals();
    test_init();
    return tap_done();
}
