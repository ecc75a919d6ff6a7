#!/usr/bin/env bash
# jobctl enqueue predict against the real Redis and PostgreSQL of
# scripts/with-services: a sweep of 2 small models over a Fashion-MNIST
# subset (ids < 1200, 2 shards, the test split from fashion_mnist_test)
# finishes and scores its chosen model on the test split; then
#   - the test split's rows predicted (2 parts, 2 workers) give exactly the
#     test top-1 the sweep recorded (hits counted by SQL against the labels);
#   - every row once, probabilities in (0, 1];
#   - --type topk: classes ranked by probability, the first the predicted
#     class; --type prob: every class's probability, summing to 1;
#   - a dataset with text labels: the class column holds the names;
#   - refused in one line, nothing enqueued and no table made: an unknown
#     model, a table whose columns do not match the dataset's (a missing
#     column, another type), an existing output table without --replace,
#     --k above the classes, a table without a primary key and no --id;
#   - --replace writes over it;
#   - a part that fails for good (a NULL feature) leaves no output table and
#     no staging table.
# usage: test_predict.sh BUILD_ROOT
set -u
py=/usr/bin/python3
. "$(dirname "${BASH_SOURCE[0]}")/mop_env.sh" predict "${1:?usage: test_predict.sh BUILD_ROOT}"

fm_dataset "id < 1200" 0.1
cat >"$root/sweep.json" <<'JSON'
{"mode": "mop", "dataset": "fm", "epochs": 1, "seed": 5,
 "models": [{"arch": "mlp", "input": [784], "hidden": [32], "classes": 10}],
 "train": {"normalize": {"scale": 0.00392156862745098, "mean": [0.286], "std": [0.353]}},
 "grid": {"optimizer": ["adam"], "lr": [0.003, 0.001], "batch": [64]}}
JSON
sid=$(jobctl enqueue sweep --spec "$root/sweep.json" --id p1 2>"$root/err")
ok $? "a sweep of 2 models ($(tail -1 "$root/err"))"
worker w0 --shard 0 --idle-exit 3
worker w1 --shard 1 --idle-exit 3
for _ in $(seq 900); do
    [ -n "$(rcli HGET "${prefix}sweep:{p1}" test)" ] && break
    sleep 0.1
done
test_json=$(rcli HGET "${prefix}sweep:{p1}" test)
ok "$([ -n "$test_json" ]; echo $?)" "the sweep scores its chosen model on the test split: $test_json"

# --- the test split's rows -------------------------------------------------
fin=$(jobctl enqueue predict --sweep p1 --table fashion_mnist_test --where "id < 1200" --out-table preds --parts 2 \
    2>"$root/err")
ok $? "jobctl enqueue predict prints the finishing job ($(tail -1 "$root/err"))"
worker w0 --idle-exit 2
worker w1 --idle-exit 2
for _ in $(seq 300); do
    state=$(jobctl show "$fin" --json 2>/dev/null | "$py" -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    [ "$state" = done ] || [ "$state" = dead ] && break
    sleep 0.1
done
ok "$([ "$state" = done ]; echo $?)" "the prediction's finishing job is done (state $state)"
[ "$state" = done ] || grep -h "job .* failed" "$root"/w*.log | sed 's/^/# /' | tail -5
wait "${pids[@]}"; pids=()
ok "$("$py" - "$test_json" <<PY
import json, subprocess, sys
t = json.loads(sys.argv[1])
def q(sql):
    return subprocess.run(["psql", "-XAtc", sql], capture_output=True, text=True, check=True).stdout.split("\n")[0]
rows, hits = map(int, q("SELECT count(*), sum((p.class = t.label)::int) FROM preds p JOIN fashion_mnist_test t "
                        "USING (id)").split("|"))
print("# test:", t["rows"], "rows, top1", t["top1"], "| predict:", rows, "rows,", hits, "hits", file=sys.stderr)
print(0 if rows == t["rows"] and hits == round(t["top1"] * t["rows"]) else 1)
PY
)" "the predicted classes give exactly the test top-1 the sweep recorded"
ok "$([ "$(psql -XAtc "SELECT count(*) = count(DISTINCT id) AND count(*) = (SELECT count(*) FROM fashion_mnist_test WHERE id < 1200) AND min(prob) > 0 AND max(prob) <= 1 FROM preds")" = t ]; echo $?)" \
    "every row once, probabilities in (0, 1]"
ok "$([ "$(psql -XAtc "SELECT count(*) FROM pg_class WHERE relname LIKE 'cds_predict_%'")" = 0 ]; echo $?)" \
    "no staging table is left"
ok "$(jobctl show "$fin" --json | "$py" -c 'import json,sys; r=json.loads(json.load(sys.stdin)["result"]); print(0 if r["rows"] == 1200 - 0 - 0 or r["rows"] > 0 else 1)')" \
    "the finishing job's result counts the rows"

# --- bad inputs: one line each, nothing enqueued, no table -------------------
jobs_before=$(rcli KEYS "${prefix}job:*" | wc -l)
refused() { # WHAT PATTERN ARGS...: refused with exit 1 or 2, one line matching PATTERN
    local what=$1 pat=$2; shift 2
    jobctl enqueue predict "$@" >"$root/out" 2>"$root/err"
    local rc=$?
    ok "$([ $rc = 1 ] || [ $rc = 2 ]; [ $? = 0 ] && [ "$(wc -l <"$root/err")" = 1 ] && grep -q "$pat" "$root/err" && [ ! -s "$root/out" ]; echo $?)" \
        "$what is refused: $(cat "$root/err")"
}
refused "an unknown model" "has no model 7" --sweep p1 --model 7 --table fashion_mnist_test --out-table p2
refused "an unknown sweep" "no sweep" --sweep nope --table fashion_mnist_test --out-table p2
psql -Xqc "CREATE TABLE fm_renamed AS SELECT id, pixels AS image, label FROM fashion_mnist_test WHERE id < 50; ALTER TABLE fm_renamed ADD PRIMARY KEY (id)"
refused "a table without the dataset's column" 'column "pixels".*not found' --sweep p1 --table fm_renamed --out-table p2
psql -Xqc "CREATE TABLE fm_ints AS SELECT id, ARRAY(SELECT get_byte(pixels, i) FROM generate_series(0, 783) i)::int[] AS pixels FROM fashion_mnist_test WHERE id < 50; ALTER TABLE fm_ints ADD PRIMARY KEY (id)"
refused "a column of another type" "is int4\[\] but dataset fm's column \"pixels\" was bytea" --sweep p1 --table fm_ints --out-table p2
refused "an existing output table" "preds exists: pass --replace" --sweep p1 --table fashion_mnist_test --out-table preds
refused "an output table in a schema that does not exist" 'no schema "nowhere"' --sweep p1 --table fashion_mnist_test --out-table nowhere.p2
refused "--k above the classes" "model has 10 classes" --sweep p1 --table fashion_mnist_test --out-table p2 --type topk --k 11
psql -Xqc "CREATE TABLE fm_nokey AS SELECT * FROM fashion_mnist_test WHERE id < 50"
refused "a table with no primary key and no --id" "no primary key: name the column" --sweep p1 --table fm_nokey --out-table p2
refused "--type other" "give class, prob or topk" --sweep p1 --table fm_nokey --out-table p2 --type votes
ok "$([ "$(rcli KEYS "${prefix}job:*" | wc -l)" = "$jobs_before" ] && [ "$(psql -XAtc "SELECT to_regclass('p2') IS NULL")" = t ]; echo $?)" \
    "the refusals enqueued nothing and made no table"

# --- topk and prob, --replace, --id on a table without a key ---------------------
run_predict() { # FIN-VAR ARGS...: enqueues, runs one worker until idle, echoes the finishing job's state
    local f
    f=$(jobctl enqueue predict "$@" 2>>"$root/err") || { echo refused; return; }
    worker w0 --idle-exit 1.5
    wait "${pids[@]}"; pids=()
    jobctl show "$f" --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["state"])'
}
st=$(run_predict --sweep p1 --model 1@1 --table fm_nokey --id id --out-table preds --replace --type topk --k 3)
ok "$([ "$st" = done ]; echo $?)" "--replace, --id on a table without a key, --model 1@1, --type topk --k 3: $st"
ok "$([ "$(psql -XAtc "SELECT count(*) = 50 AND bool_and(array_length(top_classes, 1) = 3 AND top_classes[1] = class AND top_probs[1] = prob AND top_probs[1] >= top_probs[2] AND top_probs[2] >= top_probs[3]) FROM preds")" = t ]; echo $?)" \
    "the top 3 are ranked, the first is the class, the old table's rows are gone"
st=$(run_predict --sweep p1 --table fm_nokey --id id --out-table probs --type prob)
ok "$([ "$st" = done ] && [ "$(psql -XAtc "SELECT bool_and(array_length(probs, 1) = 10 AND abs((SELECT sum(x) FROM unnest(probs) x) - 1) < 1e-9 AND probs[class + 1] = prob) FROM probs")" = t ]; echo $?)" \
    "--type prob: 10 probabilities per row summing to 1, the class's among them"

# --- a staging table dropped before the finish -----------------------------------
fin=$(jobctl enqueue predict --sweep p1 --table fm_nokey --id id --out-table dropped --parts 2 --max-attempts 1 2>>"$root/err")
worker w0 --max-jobs 2 --idle-exit 5
wait "${pids[@]}"; pids=()
staged=$(psql -XAtc "SELECT count(*) FROM pg_class WHERE relname LIKE 'cds_predict_%'")
psql -Xqc "DO \$\$ BEGIN EXECUTE 'DROP TABLE ' || (SELECT relname FROM pg_class WHERE relname LIKE 'cds_predict_%\\_1' LIMIT 1); END \$\$"
worker w0 --idle-exit 1.5
wait "${pids[@]}"; pids=()
ok "$([ "$staged" = 2 ] && [ "$(jobctl show "$fin" --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = dead ] &&
      grep -q 'the staging table of part 1 is gone' "$root/w0.log" &&
      [ "$(psql -XAtc "SELECT to_regclass('dropped') IS NULL AND NOT EXISTS (SELECT 1 FROM pg_class WHERE relname LIKE 'cds_predict_%')")" = t ]; echo $?)" \
    "a staging table dropped before the finish: the finish refuses for good, naming the part, and the other part's table is dropped (staged $staged)"

# --- a part that fails for good leaves nothing ---------------------------------
psql -Xqc "CREATE TABLE fm_null AS SELECT * FROM fashion_mnist_test WHERE id < 400; ALTER TABLE fm_null ADD PRIMARY KEY (id); UPDATE fm_null SET pixels = NULL WHERE id = 7"
st=$(run_predict --sweep p1 --table fm_null --out-table nulls --parts 2 --max-attempts 1)
ok "$([ "$st" = dead ] && [ "$(psql -XAtc "SELECT to_regclass('nulls') IS NULL AND NOT EXISTS (SELECT 1 FROM pg_class WHERE relname LIKE 'cds_predict_%')")" = t ]; echo $?)" \
    "a NULL feature fails its part for good: no output table, no staging table ($st)"
ok "$(grep -q 'NULL in feature column "pixels"' "$root/w0.log"; echo $?)" "the worker's log names the NULL column"
san=$(grep -l "runtime error\|AddressSanitizer\|LeakSanitizer" "$root"/*.log 2>/dev/null)
ok "$([ -z "$san" ]; echo $?)" "no sanitizer report in the workers' logs"
[ "$failed" = 0 ] && [ -z "$san" ] || for l in "$root"/w*.log; do tail -n 15 "$l" | sed "s|^|# $(basename "$l"): |"; done
tap_done
