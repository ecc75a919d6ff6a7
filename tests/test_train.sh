#!/usr/bin/env bash
# cds-train end to end against the real PostgreSQL of scripts/with-services:
# Fashion-MNIST (a subset) goes through load-fashion-mnist and cds-etl into
# shards, the small CNN trains one epoch and must score far above chance on
# the test split; re-runs and resumes give byte-identical checkpoints; the
# Python reader of docs/checkpoint.md loads them; bad input gets one line and
# the documented exit status.  usage: test_train.sh BUILD_ROOT
set -u
build=${1:?usage: test_train.sh BUILD_ROOT}
src=${CDS_SOURCE_ROOT:?CDS_SOURCE_ROOT is not set}
train=$build/tools/cds-train
py=/usr/bin/python3
[ -n "${PGHOST:-}" ] || { echo "Bail out! PGHOST is not set: run through scripts/with-services"; exit 1; }
export PGDATABASE=cds_train_$$
createdb "$PGDATABASE" || { echo "Bail out! createdb $PGDATABASE failed"; exit 1; }
tmp=$(mktemp -d /tmp/cds-train-test.XXXXXX)
cleanup() { dropdb --if-exists "$PGDATABASE" >/dev/null 2>&1; rm -rf "$tmp"; }
trap cleanup EXIT

. "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
one_line_err() { [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "^cds-train: " "$tmp/err"; }
json_field() { "$py" -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])[sys.argv[2]])" "$1" "$2"; }

"$build/tools/load-fashion-mnist" >/dev/null 2>"$tmp/err"
ok $? "Fashion-MNIST loaded into PostgreSQL"
mkdir -p "$tmp/data"
"$build/tools/cds-etl" unload --table fashion_mnist_train --features pixels --label label --dataset fm \
    --shards 2 --data-root "$tmp/data" --where "id < 4000" --test-table fashion_mnist_test \
    --dtype uint8 --feature-shape 28x28x1 >/dev/null 2>"$tmp/err"
rc=$?
ok $rc "4000 training rows unloaded into 2 shards, with the test split"
[ $rc = 0 ] || { sed 's/^/# /' "$tmp/err"; echo "Bail out! the unload failed"; exit 1; }
ds=$tmp/data/datasets/fm

# A narrower CNN than jobs/models/fashion-cnn.json keeps the test quick.
cat >"$tmp/spec.json" <<'JSON'
{"model": {"arch": "cnn", "input": [1, 28, 28], "classes": 10, "width": 0.5, "dropout": 0.25},
 "train": {"optimizer": "adam", "lr": 0.002, "batch": 32, "seed": 7,
           "normalize": {"scale": 0.00392156862745098, "mean": [0.286], "std": [0.353]}}}
JSON

# ---- one epoch learns something ----------------------------------------------
# --device auto: cuda:0 where cds-gpu-info finds a device (it exits 3 when
# there is none), else the CPU, said in exactly one line on stderr.
"$build/tools/cds-gpu-info" >/dev/null 2>&1
if [ $? = 3 ]; then auto_dev=cpu; else auto_dev=cuda:0; fi
"$train" --data "$ds/train" --valid "$ds/test" --spec "$tmp/spec.json" --epochs 1 --threads 1 --json \
    --device auto --out "$tmp/a" >"$tmp/out" 2>"$tmp/err"
ok $? "cds-train runs one epoch"
dev=$(json_field "$tmp/out" device 2>/dev/null)
if [ "$auto_dev" = cpu ]; then
    ok "$([ "$dev" = cpu ] && [ "$(wc -l <"$tmp/err")" = 1 ] &&
          grep -q '^cds-train: device auto: no CUDA device (.*): training on the cpu (give --device cpu when that is meant)$' "$tmp/err"
          echo $?)" "--device auto without a GPU trains on the cpu ($dev), said in exactly one line: $(head -2 "$tmp/err")"
else
    ok "$([ "$dev" = cuda:0 ] && [ ! -s "$tmp/err" ]; echo $?)" "--device auto with a GPU trains on cuda:0 ($dev), silently"
fi
top1=$(json_field "$tmp/out" valid_top1 2>/dev/null || echo 0)
rows=$(json_field "$tmp/out" train_rows 2>/dev/null || echo 0)
ok "$("$py" -c "print(0 if $top1 > 0.6 else 1)")" "test top-1 $top1 after one epoch on $rows rows is far above chance (0.1); bound 0.6"
ok "$([ "$rows" = 4000 ]; echo $?)" "the epoch saw every training row once ($rows)"
ok "$([ -s "$tmp/a/epoch-1.ckpt" ] && ! ls "$tmp/a" | grep -q tmp; echo $?)" "a checkpoint per epoch, no temporary file left"

# ---- determinism: the same run twice, and a resume, give the same bytes ------
"$train" --data "$ds/train" --spec "$tmp/spec.json" --epochs 2 --threads 1 --json --out "$tmp/b" >/dev/null 2>&1
"$train" --data "$ds/train" --spec "$tmp/spec.json" --epochs 1 --threads 1 --json --out "$tmp/c" >/dev/null 2>&1
ok "$(cmp -s "$tmp/b/epoch-1.ckpt" "$tmp/c/epoch-1.ckpt"; echo $?)" "the same spec, seed and thread count give a byte-identical checkpoint"
"$train" --data "$ds/train" --spec "$tmp/spec.json" --epochs 1 --threads 2 --json --out "$tmp/t2a" >/dev/null 2>&1
"$train" --data "$ds/train" --spec "$tmp/spec.json" --epochs 1 --threads 2 --json --out "$tmp/t2b" >/dev/null 2>&1
ok "$(cmp -s "$tmp/t2a/epoch-1.ckpt" "$tmp/t2b/epoch-1.ckpt"; echo $?)" "with 2 threads too, two runs give byte-identical checkpoints"
"$train" --data "$ds/train" --resume "$tmp/c/epoch-1.ckpt" --epochs 2 --threads 1 --json --out "$tmp/c" >"$tmp/out" 2>"$tmp/err"
ok $? "resume from epoch 1 to epoch 2"
ok "$(cmp -s "$tmp/b/epoch-2.ckpt" "$tmp/c/epoch-2.ckpt"; echo $?)" "resuming gives the same bytes as never stopping"
ok "$(cmp -s "$tmp/a/epoch-1.ckpt" "$tmp/b/epoch-1.ckpt"; [ $? = 0 ]; echo $?)" "…and --valid does not change training (epoch-1 of runs with and without it agree)"
"$train" --data "$ds/train" --resume "$tmp/c/epoch-1.ckpt" --spec "$tmp/spec.json" --epochs 2 --threads 1 \
    --out "$tmp/d" >/dev/null 2>&1
ok "$(cmp -s "$tmp/b/epoch-2.ckpt" "$tmp/d/epoch-2.ckpt"; echo $?)" "resume with the same --spec is accepted and equal too"

# ---- the Python reader of docs/checkpoint.md loads the weights -----------------
if "$py" -c "import msgpack, numpy" 2>/dev/null; then
    "$py" "$src/tests/ckpt_reader.py" "$tmp/b/epoch-2.ckpt" >"$tmp/py" 2>"$tmp/err"
    ok $? "tests/ckpt_reader.py reads a cds-train checkpoint"
    ok "$(grep -q "conv1.weight" "$tmp/py" && grep -q "m:fc2.bias" "$tmp/py"; echo $?)" "it lists the weights and the Adam state"
else
    echo "ok $((n + 1)) # SKIP /usr/bin/python3 lacks msgpack or numpy"; n=$((n + 1))
    echo "ok $((n + 1)) # SKIP /usr/bin/python3 lacks msgpack or numpy"; n=$((n + 1))
fi

# ---- bad input ------------------------------------------------------------------
"$train" --data "$tmp/nowhere" --spec "$tmp/spec.json" --epochs 1 >/dev/null 2>"$tmp/err"
rc=$?
ok "$([ $rc = 2 ] && one_line_err && grep -q nowhere "$tmp/err"; echo $?)" "a missing data directory: exit 2, one line ($(cat "$tmp/err"))"
"$train" --data "$ds/train" --spec "$tmp/spec.json" >/dev/null 2>"$tmp/err"
rc=$?
ok "$([ $rc = 2 ] && one_line_err && grep -q -- "--epochs" "$tmp/err"; echo $?)" "no --epochs: exit 2, one line"
echo '{"model": {"arch": "cnn", "input": [1, 28, 28], "classes": 10}, "train": {"optimizer": "adagrad", "lr": 0.1}}' >"$tmp/bad.json"
"$train" --data "$ds/train" --spec "$tmp/bad.json" --epochs 1 >/dev/null 2>"$tmp/err"
rc=$?
ok "$([ $rc = 2 ] && one_line_err && grep -q '"optimizer" must be' "$tmp/err"; echo $?)" "an unknown optimiser: exit 2, one line ($(cat "$tmp/err"))"
echo '{"model": {"arch": "cnn", "input": [3, 32, 32], "classes": 10}, "train": {"optimizer": "sgd", "lr": 0.1}}' >"$tmp/shape.json"
# --device cpu here and below: auto's note, where it falls back, would be a second line.
"$train" --data "$ds/train" --spec "$tmp/shape.json" --epochs 1 --device cpu --out "$tmp/e" >/dev/null 2>"$tmp/err"
rc=$?
ok "$([ $rc = 1 ] && one_line_err && grep -q "shard-0" "$tmp/err" && [ ! -e "$tmp/e/epoch-1.ckpt" ]; echo $?)" \
    "shards that do not fit the model's input: exit 1, one line naming the shard, no checkpoint ($(cat "$tmp/err"))"
echo '{"model": {"arch": "cnn", "input": [1, 28, 28], "classes": 5}, "train": {"optimizer": "sgd", "lr": 0.1}}' >"$tmp/cls.json"
"$train" --data "$ds/train" --spec "$tmp/cls.json" --epochs 1 --device cpu >/dev/null 2>"$tmp/err"
rc=$?
ok "$([ $rc = 1 ] && one_line_err && grep -qi "label" "$tmp/err"; echo $?)" "labels beyond the model's classes: exit 1, one line ($(cat "$tmp/err"))"
cp "$tmp/b/epoch-2.ckpt" "$tmp/trunc.ckpt"
truncate -s 1000 "$tmp/trunc.ckpt"
"$train" --data "$ds/train" --resume "$tmp/trunc.ckpt" --epochs 3 --out "$tmp/f" >/dev/null 2>"$tmp/err"
rc=$?
ok "$([ $rc = 1 ] && one_line_err && grep -q "trunc.ckpt" "$tmp/err" && [ ! -e "$tmp/f" ]; echo $?)" \
    "a truncated checkpoint is refused: exit 1, one line, and --out is not made ($(cat "$tmp/err"))"
"$train" --data "$ds/train" --resume "$tmp/nosuch.ckpt" --epochs 3 --out "$tmp/g/h" >/dev/null 2>"$tmp/err"
rc=$?
ok "$([ $rc = 1 ] && one_line_err && [ ! -e "$tmp/g" ]; echo $?)" "a missing checkpoint: exit 1, one line, nothing made under --out"
touch "$tmp/afile"
"$train" --data "$ds/train" --spec "$tmp/spec.json" --epochs 1 --out "$tmp/afile/x" >/dev/null 2>"$tmp/err"
rc=$?
ok "$([ $rc = 2 ] && one_line_err && grep -q -- "--out" "$tmp/err"; echo $?)" "an --out that cannot be made is refused before training: exit 2 ($(cat "$tmp/err"))"
other='{"model": {"arch": "cnn", "input": [1, 28, 28], "classes": 10, "width": 0.25}, "train": {"optimizer": "adam", "lr": 0.002, "batch": 32, "seed": 7}}'
echo "$other" >"$tmp/other.json"
"$train" --data "$ds/train" --resume "$tmp/b/epoch-2.ckpt" --spec "$tmp/other.json" --epochs 3 >/dev/null 2>"$tmp/err"
rc=$?
ok "$([ $rc = 2 ] && one_line_err && grep -q "is not the spec" "$tmp/err"; echo $?)" "resume with another --spec: exit 2, one line"

tap_done
