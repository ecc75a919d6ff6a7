#!/usr/bin/env bash
# DDP and MA sweeps end to end against the real Redis and PostgreSQL of
# scripts/with-services: a Fashion-MNIST subset in 2 shards, a sweep of 4
# small models x 2 epochs run with "mode": "ddp" by two cds-worker
# processes (--shard 0, --shard 1) whose ranks train in child processes
# over Gloo, then the same sweep with "mode": "ma".  Checks: the bad inputs
# of a DDP/MA spec are refused in one line; both sweeps finish; every
# (model, epoch, rank) is in the schedule exactly once, rank r from shard
# r's worker; the order is round-robin by epoch (every model's epoch 1
# before any model's epoch 2); every epoch was evaluated and every rank's
# metrics recorded with the mode and the steps; each model keeps its
# committed checkpoint, which the Python reader loads; a replay runs in the
# same mode and gives bit-identical checkpoints; jobctl status, results and
# plot show the mode; pause, resume and the cancel of one model work on an
# MA sweep; on a dataset of one shard, MA and DDP (W = 1) give checkpoints
# bit-identical to MOP's; with shard 1's worker gone, a spare worker of
# shard 0 stands in for rank 1 (MOP's grace rule).
# usage: test_ddp_e2e.sh BUILD_ROOT
set -u
src=${CDS_SOURCE_ROOT:?CDS_SOURCE_ROOT is not set}
py=/usr/bin/python3
. "$(dirname "${BASH_SOURCE[0]}")/mop_env.sh" ddp "${1:?usage: test_ddp_e2e.sh BUILD_ROOT}"

fm_dataset "id < 1600" 0.1

# sweep MODE BATCH: the sweep spec of this test.
sweep() {
    cat <<JSON
{"mode": "$1", "dataset": "fm", "epochs": 2, "seed": 5,
 "models": [{"arch": "cnn", "input": [1, 28, 28], "classes": 10, "width": 0.25},
            {"arch": "mlp", "input": [784], "hidden": [32], "classes": 10, "dropout": 0.2}],
 "train": {"normalize": {"scale": 0.00392156862745098, "mean": [0.286], "std": [0.353]}},
 "grid": {"optimizer": ["adam"], "lr": [0.003, 0.001], "batch": [$2]}}
JSON
}

# Bad inputs first (no worker has beaten yet: the shard check waits for one).
sweep ddp 63 >"$root/odd.json"
jobctl enqueue sweep --spec "$root/odd.json" --id odd >/dev/null 2>"$root/err"
rc=$?
ok "$([ $rc = 2 ] && [ "$(wc -l <"$root/err")" = 1 ] && grep -q 'batch 63, which the 2 ranks of a DDP gang' "$root/err" &&
      grep -q 'multiples of 2' "$root/err" && [ -z "$(rcli EXISTS "${prefix}sweep:{odd}" | grep 1)" ]; echo $?)" \
    "a DDP batch that 2 ranks cannot split is refused in one line, nothing created (exit $rc: $(cat "$root/err"))"
sweep ma 63 >"$root/odd-ma.json"
jobctl enqueue sweep --spec "$root/odd-ma.json" --id oddma >/dev/null 2>"$root/err"
ok $? "MA takes the configuration's batch on every rank: batch 63 is accepted"
jobctl cancel oddma >/dev/null 2>&1
"$py" - "$root/big.json" <<'PY'
import json, sys
spec = {"mode": "ddp", "dataset": "fm", "epochs": 1,
        "models": [{"arch": "mlp", "input": [784], "hidden": [700000], "classes": 10}],
        "grid": {"optimizer": ["sgd"], "lr": [0.1], "batch": [64]}}
json.dump(spec, open(sys.argv[1], "w"))
PY
jobctl enqueue sweep --spec "$root/big.json" --id big >/dev/null 2>"$root/err"
rc=$?
ok "$([ $rc = 2 ] && [ "$(wc -l <"$root/err")" = 1 ] && grep -q 'more than a ddp gang shares' "$root/err"; echo $?)" \
    "a model bigger than a gang shares is refused in one line (exit $rc: $(cat "$root/err"))"

# One worker only: the gang cannot be manned.
worker w0 --shard 0 --ddp-timeout 5
for _ in $(seq 100); do [ -n "$(rcli HGET "${prefix}mop:shards" 0)" ] && break; sleep 0.1; done
sweep ddp 64 >"$root/ddp.json"
jobctl enqueue sweep --spec "$root/ddp.json" --id lone >/dev/null 2>"$root/err"
rc=$?
ok "$([ $rc = 1 ] && [ "$(wc -l <"$root/err")" = 1 ] && grep -q 'no worker serves shard 1' "$root/err"; echo $?)" \
    "with shard 1 unserved a DDP sweep is refused in one line (exit $rc: $(cat "$root/err"))"

# run_sweep ID SPEC: enqueue, serve with w0 and w1, wait until done.
run_sweep() {
    if [ ${#pids[@]} -lt 2 ]; then
        [ ${#pids[@]} -gt 0 ] || worker w0 --shard 0 --ddp-timeout 5
        worker w1 --shard 1 --ddp-timeout 5
        for _ in $(seq 100); do [ -n "$(rcli HGET "${prefix}mop:shards" 1)" ] && break; sleep 0.1; done
    fi
    jobctl enqueue sweep --spec "$2" --id "$1" >/dev/null 2>"$root/err" || { cat "$root/err"; return 1; }
    for _ in $(seq 1800); do
        [ "$(rcli HGET "${prefix}sweep:{$1}" state)" = done ] && [ -n "$(rcli HGET "${prefix}sweep:{$1}" test)" ] && break
        sleep 0.1
    done
    [ "$(rcli HGET "${prefix}sweep:{$1}" state)" = done ]
}
run_sweep ddp1 "$root/ddp.json"
ok $? "the DDP sweep finishes with two workers (enqueued while both serve)"
rcli LRANGE "${prefix}sweep:{ddp1}:schedule" 0 -1 >"$root/schedule"
ok "$([ "$(wc -l <"$root/schedule")" = 16 ] && [ "$(cut -d' ' -f1-3 "$root/schedule" | sort -u | wc -l)" = 16 ]; echo $?)" \
    "the schedule holds 16 entries, every (model, epoch, rank) once"
ok "$([ "$(awk '$3 == 0' "$root/schedule" | awk '{print $5}' | sort -u)" = w0 ] &&
      [ "$(awk '$3 == 1' "$root/schedule" | awk '{print $5}' | sort -u)" = w1 ]; echo $?)" \
    "rank 0 ran on shard 0's worker, rank 1 on shard 1's"
ok "$(awk '{ if ($2 < last) bad = 1; last = $2 } END { exit bad }' "$root/schedule"; echo $?)" \
    "round-robin by epoch: every model's epoch 1 was committed before any model's epoch 2"
rcli HGETALL "${prefix}sweep:{ddp1}:results" >"$root/results"
ok "$("$py" - "$root/results" "$(auto_device)" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().split("\n")
f = dict(zip(lines[0::2], lines[1::2]))
evals = [k for k in f if k.count(".") == 1]
train = [json.loads(f[k]) for k in f if ".train." in k]
# batch 64 = 32 rows a rank a step; every rank takes the longer shard's rows (the shorter wraps).
longest = max(t["shard_rows"] for t in train)
steps = (longest + 31) // 32
# Each rank trains on its worker's device, passed in the rank's task.
good = (len(evals) == 8 and len(train) == 16 and len({t["shard_rows"] for t in train}) == 2 and
        all(t["mode"] == "ddp" and t["steps"] == steps and t["rows"] == longest and t.get("device") == sys.argv[2]
            for t in train))
print(0 if good else 1)
if not good:
    print("# %d evaluations; train records: %s" % (len(evals), train[:2]), file=sys.stderr)
PY
)" "every epoch evaluated (8), every rank's metrics recorded (16) with mode ddp: the same steps, the longer shard's rows, the worker's device"
good=0
for m in 0 1 2 3; do
    d="$root/sweeps/ddp1/models/$m"
    ck=$(rcli HGET "${prefix}sweep:{ddp1}:models" "$m.ckpt")
    [ "$(ls "$d" | grep -c '^v.*\.ckpt$')" = 1 ] && [ -f "$ck" ] &&
        "$py" "$src/tests/ckpt_reader.py" "$ck" >/dev/null 2>&1 && good=$((good + 1))
done
ok "$([ $good = 4 ]; echo $?)" "each model keeps only its committed checkpoint, which the Python reader loads ($good of 4)"
jobctl status ddp1 >"$root/status" 2>&1
ok "$(grep -q '^sweep ddp1 (done, ddp, gangs of 2 ranks): 16 of 16 rank-epochs' "$root/status"; echo $?)" "jobctl status shows the mode: $(head -1 "$root/status")"

# A replay: the same mode, bit-identical checkpoints.
jobctl replay ddp1 --id ddp2 >/dev/null 2>"$root/err"
ok $? "jobctl replay ddp1 makes sweep ddp2"
for _ in $(seq 1800); do [ "$(rcli HGET "${prefix}sweep:{ddp2}" state)" = done ] && break; sleep 0.1; done
ok "$([ "$(rcli HGET "${prefix}sweep:{ddp2}" state)" = done ] && [ "$(rcli HGET "${prefix}sweep:{ddp2}" mode)" = ddp ]; echo $?)" \
    "the replay runs in the original's mode (ddp) and finishes"
same=0
for m in 0 1 2 3; do
    cmp -s "$(rcli HGET "${prefix}sweep:{ddp1}:models" "$m.ckpt")" "$(rcli HGET "${prefix}sweep:{ddp2}:models" "$m.ckpt")" &&
        same=$((same + 1))
done
ok "$([ $same = 4 ]; echo $?)" "its final checkpoints are bit-identical to the original's ($same of 4)"

# MA, paused at once (a gang in flight finishes), model 3 cancelled, resumed.
sweep ma 64 >"$root/ma.json"
jobctl enqueue sweep --spec "$root/ma.json" --id ma1 >/dev/null 2>"$root/err"
jobctl pause ma1 >/dev/null 2>&1
jobctl cancel ma1/3 >/dev/null 2>&1
# A gang taken before the pause finishes (its ranks' entries land when it
# commits, however loaded the machine): wait until the schedule has not
# grown for 2 s (at most 60 s), then check that it stays so.
n1=-1
for _ in $(seq 30); do
    cur=$(rcli LLEN "${prefix}sweep:{ma1}:schedule")
    [ "$cur" = "$n1" ] && break
    n1=$cur
    sleep 2
done
sleep 1.5
n2=$(rcli LLEN "${prefix}sweep:{ma1}:schedule")
ok "$([ "$n1" = "$n2" ] && [ "$n1" -le 2 ] && [ "$(rcli HGET "${prefix}sweep:{ma1}:models" 3.state)" = cancelled ]; echo $?)" \
    "a paused MA sweep forms no gang ($n1 then $n2 schedule entries: at most the one in flight), model 3 cancelled"
jobctl resume ma1 >/dev/null 2>&1
for _ in $(seq 1800); do
    [ "$(rcli HGET "${prefix}sweep:{ma1}" state)" = done ] && [ -n "$(rcli HGET "${prefix}sweep:{ma1}" test)" ] && break
    sleep 0.1
done
ok "$([ "$(rcli HGET "${prefix}sweep:{ma1}" state)" = done ]; echo $?)" "the MA sweep finishes once resumed"
jobctl results ma1 >"$root/res.txt" 2>&1
jobctl plot ma1 --out "$root/ma1.svg" >/dev/null 2>&1
ok "$([ -s "$root/ma1.svg" ] && grep -q 'sweep ma1 (ma, gangs of 2 ranks)' "$root/ma1.svg" &&
      grep -q '^sweep ma1 (done, ma, gangs of 2 ranks)' "$root/res.txt"; echo $?)" \
    "jobctl results and plot work for an MA sweep: $(head -1 "$root/res.txt")"
rcli HGETALL "${prefix}sweep:{ma1}:results" >"$root/results"
ok "$("$py" - "$root/results" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().split("\n")
f = dict(zip(lines[0::2], lines[1::2]))
evals = [k for k in f if k.count(".") == 1]
train = [json.loads(f[k]) for k in f if ".train." in k]
good = len(evals) == 6 and len(train) == 12 and all(t["mode"] == "ma" and t["rows"] == t["shard_rows"] for t in train)
print(0 if good else 1)
PY
)" "MA: every epoch of the 3 models left evaluated, every rank one pass over its own shard"
ok "$("$py" - "$src/tests" "$(rcli HGET "${prefix}sweep:{ma1}:models" 0.ckpt)" "$root/results" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1])
import ckpt_reader
ck, t = ckpt_reader.load(sys.argv[2])
lines = open(sys.argv[3]).read().split("\n")
f = dict(zip(lines[0::2], lines[1::2]))
rows = {json.loads(f[k])["rank"]: json.loads(f[k])["shard_rows"] for k in f if k.startswith("0.1.train.")}
steps = [2 * ((rows[r] + 63) // 64) for r in (0, 1)]
r1 = t.get("r1/t")
t1 = int(r1[0]) * 2**24 + int(r1[1]) if r1 is not None else -1
names = [n for n in t if n.startswith("r1/") and n != "r1/t"]
good = ck["opt_t"] == steps[0] and t1 == steps[1] and len(names) > 0 and all(n[3:] in t for n in names)
print(0 if good else 1)
print("# rank 0 t %d, rank 1 t %d (expected %s), %d rank-1 tensors" % (ck["opt_t"], t1, steps, len(names)), file=sys.stderr)
PY
)" "an MA checkpoint holds each rank's own optimiser state, each rank going on from its own (t = its steps)"

# W = 1: a gang of one rank trains exactly as MOP on one shard does.
sed 's/"dataset": "fm", "shards": 2/"dataset": "fm1", "shards": 1/' "$root/etl.json" >"$root/etl1.json"
jobctl enqueue etl --spec "$root/etl1.json" >/dev/null 2>"$root/err"
for _ in $(seq 100); do [ "$(rcli HGET "${prefix}dataset:fm1" state)" = ready ] && break; sleep 0.1; done
one=0
for mode in mop ma ddp; do
    sweep $mode 64 | sed 's/"dataset": "fm"/"dataset": "fm1"/; s/"lr": \[0.003, 0.001\]/"lr": [0.003]/' >"$root/one-$mode.json"
    jobctl enqueue sweep --spec "$root/one-$mode.json" --id "one$mode" >/dev/null 2>"$root/err" || break
    for _ in $(seq 1200); do [ "$(rcli HGET "${prefix}sweep:{one$mode}" state)" = done ] && break; sleep 0.1; done
    [ "$(rcli HGET "${prefix}sweep:{one$mode}" state)" = done ] && one=$((one + 1))
done
same=0
for m in 0 1; do
    a=$(rcli HGET "${prefix}sweep:{onemop}:models" "$m.ckpt")
    cmp -s "$a" "$(rcli HGET "${prefix}sweep:{onema}:models" "$m.ckpt")" &&
        cmp -s "$a" "$(rcli HGET "${prefix}sweep:{oneddp}:models" "$m.ckpt")" && same=$((same + 1))
done
ok "$([ $one = 3 ] && [ $same = 2 ]; echo $?)" \
    "one shard: MA and DDP with W = 1 give checkpoints bit-identical to MOP's ($one of 3 sweeps done, $same of 2 models equal)"

# Placement: shard 1's worker is gone; a spare worker of shard 0 stands in
# for rank 1 once shard 1 has been silent for its grace period, while w0
# keeps rank 0.
kill -KILL "${pids[1]}"
wait "${pids[1]}" 2>/dev/null
sed 's/"epochs": 2/"epochs": 1/; s/"lr": \[0.003, 0.001\]/"lr": [0.003]/' "$root/ddp.json" >"$root/orphan.json"
jobctl enqueue sweep --spec "$root/orphan.json" --id orphan >/dev/null 2>"$root/err"
worker w2 --shard 0 --shard-grace 1 --ddp-timeout 5
for _ in $(seq 600); do [ "$(rcli HGET "${prefix}sweep:{orphan}" state)" = done ] && break; sleep 0.1; done
rcli LRANGE "${prefix}sweep:{orphan}:schedule" 0 -1 >"$root/schedule"
ok "$([ "$(rcli HGET "${prefix}sweep:{orphan}" state)" = done ] && [ "$(wc -l <"$root/schedule")" = 4 ] &&
      [ "$(awk '$3 == 0 {print $5}' "$root/schedule" | sort -u)" = w0 ] &&
      [ "$(awk '$3 == 1 {print $5}' "$root/schedule" | sort -u)" = w2 ]; echo $?)" \
    "shard 1's worker gone: a spare worker of shard 0 ran rank 1 of every gang, w0 rank 0"

for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
wait "${pids[@]}" 2>/dev/null; pids=()
ok "$(! pgrep -f -- "--rank-task.*--prefix $prefix" >/dev/null; echo $?)" "no rank process is left behind"
[ "$failed" = 0 ] || for f in "$root"/*.log; do echo "# --- $(basename "$f")"; tail -n 15 "$f" | sed "s/^/#   /"; done
tap_done
