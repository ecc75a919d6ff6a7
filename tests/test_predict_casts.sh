#!/usr/bin/env bash
# jobctl enqueue predict through the casts other than Fashion-MNIST's bytea
# (test_predict.sh has those), against the real Redis and PostgreSQL of
# scripts/with-services; each dataset's test split is its own table, so
# predicting the table must give the sweep's test top-1 exactly:
#   - text labels and a real[] feature: the class columns hold the class
#     names (class text, top_classes text[]);
#   - the Criteo transform (gen-criteo's raw rows, the dataset's bucket
#     edges and hashes) into a sparse mlp, --dsn given as a URI, 3 parts;
#   - a worker SIGKILLed in the middle of a part: the part is taken over
#     and the table is the one an undisturbed run makes.
# usage: test_predict_casts.sh BUILD_ROOT
set -u
py=/usr/bin/python3
. "$(dirname "${BASH_SOURCE[0]}")/mop_env.sh" predcast "${1:?usage: test_predict_casts.sh BUILD_ROOT}"

# exact SWEEP TABLE OUT LABEL-EXPR: the test split's top-1 against the
# predictions' hits, counted by SQL.
exact() {
    local t
    t=$(rcli HGET "${prefix}sweep:{$1}" test)
    "$py" - "$t" "$2" "$3" "$4" <<'PY'
import json, subprocess, sys
t = json.loads(sys.argv[1])
def q(sql):
    return subprocess.run(["psql", "-XAtc", sql], capture_output=True, text=True, check=True).stdout.split("\n")[0]
rows, hits = map(int, q("SELECT count(*), sum((p.class = %s)::int) FROM %s p JOIN %s t USING (id)"
                        % (sys.argv[4], sys.argv[3], sys.argv[2])).split("|"))
print("# test:", t["rows"], "rows, top1", t["top1"], "| predict:", rows, "rows,", hits, "hits", file=sys.stderr)
print(0 if rows == t["rows"] and hits == round(t["top1"] * t["rows"]) else 1)
PY
}
# sweep_done ID: waits until the sweep has its test score.
sweep_done() {
    for _ in $(seq 900); do
        [ -n "$(rcli HGET "${prefix}sweep:{$1}" test)" ] && return 0
        sleep 0.1
    done
    return 1
}
# train ID DATASET-WHAT SWEEP-WHAT: $root/etl.json unloaded, then sweep ID
# of $root/sweep.json trained by one worker until its test score (3 checks).
train() {
    jobctl enqueue etl --spec "$root/etl.json" >/dev/null 2>"$root/err"
    ok $? "$2 ($(tail -1 "$root/err"))"
    jobctl enqueue sweep --spec "$root/sweep.json" --id "$1" >/dev/null 2>"$root/err"
    ok $? "$3 ($(tail -1 "$root/err"))"
    worker w0 --shard 0 --idle-exit 3
    sweep_done "$1"
    ok $? "the sweep scores the test split: $(rcli HGET "${prefix}sweep:{$1}" test | cut -c1-120)"
    wait "${pids[@]}"; pids=()
}
# predict_run ARGS...: enqueues, one worker runs it until idle; echoes the finishing job's state.
predict_run() {
    local f
    f=$(jobctl enqueue predict "$@" 2>>"$root/err") || { echo refused; return; }
    worker w0 --idle-exit 1.5
    wait "${pids[@]}"; pids=()
    jobctl show "$f" --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["state"])'
}

# --- text labels ---------------------------------------------------------------
psql -Xqc "CREATE TABLE animals AS SELECT i AS id,
             ARRAY[(i % 3)::real, ((i * 7) % 5)::real / 5, random()::real, 1] AS x,
             (ARRAY['cat', 'dog', 'fox'])[i % 3 + 1] AS kind
           FROM generate_series(1, 900) i; ALTER TABLE animals ADD PRIMARY KEY (id)"
cat >"$root/etl.json" <<JSON
{"table": "animals", "features": ["x"], "label": "kind", "valid_fraction": 0.2, "test_table": "animals",
 "dataset": "animals", "shards": 1, "data_root": "$root"}
JSON
cat >"$root/sweep.json" <<'JSON'
{"mode": "mop", "dataset": "animals", "epochs": 2, "seed": 1,
 "models": [{"arch": "mlp", "input": [4], "hidden": [8], "classes": 3}],
 "grid": {"optimizer": ["adam"], "lr": [0.01], "batch": [32]}}
JSON
train an "a dataset with text labels" "a sweep on it"
st=$(predict_run --sweep an --table animals --out-table animal_preds --type topk --k 2)
ok "$([ "$st" = done ]; echo $?)" "predict --type topk --k 2: $st"
ok "$(exact an animals animal_preds t.kind)" "the predicted names give exactly the test top-1"
ok "$([ "$(psql -XAtc "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'animal_preds'::regclass AND attname IN ('class', 'top_classes') ORDER BY attname")" = "$(printf 'text\ntext[]')" ] && [ "$(psql -XAtc "SELECT bool_and(class IN ('cat', 'dog', 'fox') AND top_classes[1] = class AND top_classes[2] <> class) FROM animal_preds")" = t ]; echo $?)" \
    "class is text and top_classes text[], holding the dataset's names"

# --- the Criteo transform ------------------------------------------------------
"$build/tools/gen-criteo" --rows 3000 --seed 3 --table crit >/dev/null
ok $? "gen-criteo: 3000 raw rows"
feats=$(printf '"i%d",' $(seq 13); printf '"c%d",' $(seq 26))
cat >"$root/etl.json" <<JSON
{"table": "crit", "transform": "criteo", "label": "label", "features": [${feats%,}], "valid_fraction": 0.1,
 "test_table": "crit", "dataset": "crit", "shards": 1, "data_root": "$root"}
JSON
cat >"$root/sweep.json" <<'JSON'
{"mode": "mop", "dataset": "crit", "epochs": 1, "seed": 1,
 "models": [{"arch": "mlp", "sparse": {"dim": 7306, "nnz": 39}, "hidden": [16], "classes": 2}],
 "grid": {"optimizer": ["adam"], "lr": [0.003], "batch": [64]}}
JSON
train cr "a Criteo dataset" "a sparse mlp sweep on it"
st=$(predict_run --sweep cr --table crit --out-table crit_preds --parts 3 --dsn "postgresql:///$PGDATABASE")
ok "$([ "$st" = done ]; echo $?)" "predict in 3 parts with --dsn as a URI: $st"
ok "$(exact cr crit crit_preds t.label)" "the Criteo rows' predictions give exactly the test top-1"
# --- a worker killed in the middle of a part ---------------------------------------
# 100000 raw Criteo rows in 1 part, long enough to be caught: the part's
# worker is SIGKILLed once its scratch directory appears, its lease (2 s)
# expires, another worker takes the part over, and the table holds every
# row once, with the very classes and probabilities of an undisturbed run.
"$build/tools/gen-criteo" --rows 100000 --seed 4 --table crit_big >/dev/null
st=$(predict_run --sweep cr --table crit_big --out-table big_ref --parts 1)
ok "$([ "$st" = done ]; echo $?)" "an undisturbed prediction of 100000 rows: $st"
fin=$(jobctl enqueue predict --sweep cr --table crit_big --out-table big_kill --parts 1 2>>"$root/err")
mkdir -p "$root/scratch"
worker_bg wk1 TMPDIR="$root/scratch" -- --lease 2 --idle-exit 30
victim=${pids[-1]}
for _ in $(seq 400); do [ -n "$(ls "$root/scratch")" ] && break; sleep 0.025; done
caught=$(ls "$root/scratch" | wc -l)
kill -KILL "$victim"; wait "$victim" 2>/dev/null
worker_bg wk2 TMPDIR="$root/scratch" -- --lease 2 --idle-exit 30
# wk2 takes the part once the reaper finds wk1's lease expired: wait for the
# prediction's end rather than for wk2 to go idle (it is idle until then).
for _ in $(seq 600); do
    state=$(jobctl show "$fin" --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    [ "$state" = done ] || [ "$state" = dead ] && break
    sleep 0.05
done
kill -TERM "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; pids=()
same=$(psql -XAtc "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE k.class = r.class AND k.prob = r.prob) FROM big_kill k JOIN big_ref r USING (id)")
ok "$([ "$caught" = 1 ] && [ "$state" = done ] && [ "$same" = "100000|100000|100000" ] &&
      [ "$(psql -XAtc "SELECT count(*) FROM pg_class WHERE relname LIKE 'cds_predict_%'")" = 0 ]; echo $?)" \
    "a worker SIGKILLed in the part: another takes it over, every row once with the undisturbed classes and probabilities, no staging table (caught $caught, $state, rows|ids|same $same)"
san=$(grep -l "runtime error\|AddressSanitizer\|LeakSanitizer" "$root"/*.log 2>/dev/null)
ok "$([ -z "$san" ]; echo $?)" "no sanitizer report in the workers' logs"
[ "$failed" = 0 ] && [ -z "$san" ] || for l in "$root"/w*.log; do tail -n 15 "$l" | sed "s|^|# $(basename "$l"): |"; done
tap_done
