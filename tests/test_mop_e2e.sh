#!/usr/bin/env bash
# MOP end to end against the real Redis and PostgreSQL of scripts/with-services:
# a Fashion-MNIST subset goes through jobctl enqueue etl into 2 shards, a
# sweep of 4 small models × 2 epochs is enqueued, and two cds-worker
# processes (--shard 0 and --shard 1) train it by hopping models between
# them.  Checks: the sweep finishes; the recorded schedule holds every
# (model, epoch, shard) exactly once; each model directory keeps only its
# committed checkpoint, which the Python reader of docs/checkpoint.md loads
# and whose epoch is 2; both workers trained; a worker SIGKILLed while it
# evaluates, then one SIGKILLed while it scores the test split, lose
# nothing (the next worker takes each over; strace holds them there); every
# finished sweep leaves the active set; a first SIGTERM drains a worker
# without losing its visit.  The workers run with the default --device auto:
# each says where it trains (one WARN line when it falls back to the CPU),
# and every visit, evaluation, test score, results.csv line and cds_results
# row records that device.  usage: test_mop_e2e.sh BUILD_ROOT
set -u
src=${CDS_SOURCE_ROOT:?CDS_SOURCE_ROOT is not set}
py=/usr/bin/python3
. "$(dirname "${BASH_SOURCE[0]}")/mop_env.sh" mop "${1:?usage: test_mop_e2e.sh BUILD_ROOT}"

fm_dataset "id < 2000" 0.1
dev=$(auto_device)

cat >"$root/sweep.json" <<'JSON'
{"mode": "mop", "dataset": "fm", "epochs": 2, "seed": 3,
 "models": [{"arch": "cnn", "input": [1, 28, 28], "classes": 10, "width": 0.25},
            {"arch": "mlp", "input": [784], "hidden": [32], "classes": 10}],
 "train": {"normalize": {"scale": 0.00392156862745098, "mean": [0.286], "std": [0.353]}},
 "grid": {"optimizer": ["adam"], "lr": [0.003, 0.001], "batch": [64]}}
JSON
sid=$(jobctl enqueue sweep --spec "$root/sweep.json" --id e2e 2>"$root/err")
ok $? "jobctl enqueue sweep creates sweep '$sid' ($(tail -1 "$root/err"))"
ok "$([ "$(rcli HGET "${prefix}sweep:{e2e}" models)" = 4 ] && [ "$(rcli HGET "${prefix}sweep:{e2e}" shards)" = 2 ]; echo $?)" \
    "4 models over 2 shards"

worker w0 --shard 0 --idle-exit 4
worker w1 --shard 1 --idle-exit 4
for _ in $(seq 1200); do
    [ "$(rcli HGET "${prefix}sweep:{e2e}" state)" = done ] && break
    sleep 0.1
done
ok "$([ "$(rcli HGET "${prefix}sweep:{e2e}" state)" = done ]; echo $?)" "the sweep finishes"
wait "${pids[@]}"; pids=()
rcli LRANGE "${prefix}sweep:{e2e}:schedule" 0 -1 >"$root/schedule"
ok "$([ "$(wc -l <"$root/schedule")" = 16 ] && [ "$(cut -d' ' -f1-3 "$root/schedule" | sort -u | wc -l)" = 16 ]; echo $?)" \
    "the schedule holds 16 visits, every (model, epoch, shard) once"
ok "$([ "$(awk '$3 == 0' "$root/schedule" | awk '{print $5}' | sort -u)" = w0 ] && [ "$(awk '$3 == 1' "$root/schedule" | awk '{print $5}' | sort -u)" = w1 ]; echo $?)" \
    "shard 0 was trained by w0 only, shard 1 by w1 only"
ok "$([ "$(rcli LLEN "${prefix}sweep:{e2e}:evals")" = 0 ]; echo $?)" "no finished epoch is left waiting for evaluation"
good=0
for m in 0 1 2 3; do
    d="$root/sweeps/e2e/models/$m"
    ck=$(rcli HGET "${prefix}sweep:{e2e}:models" "$m.ckpt")
    best=$(rcli HGET "${prefix}sweep:{e2e}:models" "$m.best_epoch")
    [ "$(ls "$d" | grep -c '^v.*\.ckpt$')" = 1 ] && [ -f "$ck" ] && [ "$(ls "$d" | grep -c '^epoch-')" = 0 ] &&
        [ "$(ls "$d" | grep -c '^best-e')" = 1 ] && [ -f "$d/best-e$best.ckpt" ] &&
        "$py" "$src/tests/ckpt_reader.py" "$ck" >/dev/null 2>&1 && good=$((good + 1))
done
ok "$([ $good = 4 ]; echo $?)" "each model keeps its committed checkpoint and its best epoch's, nothing else; both load ($good of 4)"
[ $good = 4 ] || for m in 0 1 2 3; do
    echo "# model $m: best_epoch $(rcli HGET "${prefix}sweep:{e2e}:models" "$m.best_epoch"), files:" \
        $(ls "$root/sweeps/e2e/models/$m")
done
rcli HGETALL "${prefix}sweep:{e2e}:results" >"$root/results"
ok "$([ "$(grep -c '^[0-3]\.[12]$' "$root/results")" = 8 ] && [ "$(grep -c '^[0-3]\.[12]\.train\.[01]$' "$root/results")" = 16 ]; echo $?)" \
    "every epoch (1 and 2) of every model was evaluated (8 results) and every visit's metrics recorded (16)"
ok "$("$py" - "$root/results" "$dev" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().split("\n")
fields = dict(zip(lines[0::2], lines[1::2]))
visit = json.loads(fields["0.1.train.0"])
epoch = json.loads(fields["0.1"])
ok = visit["rows"] > 0 and visit["seconds"] > 0 and visit["samples_per_s"] > 0 and visit["worker"] == "w0" and \
     epoch["epoch"] == 1 and epoch["valid_seconds"] > 0 and epoch["time"].endswith("Z")
visits = [json.loads(v) for k, v in fields.items() if ".train." in k]
epochs = [json.loads(v) for k, v in fields.items() if k.count(".") == 1]
ok = ok and len(visits) == 16 and len(epochs) == 8 and all(v.get("device") == sys.argv[2] for v in visits) and \
     all(e.get("device") == sys.argv[2] and e.get("train_device") == sys.argv[2] for e in epochs)
print(0 if ok else 1)
PY
)" "the results hash reads as labelled JSON: a visit's rows, seconds, rate, worker and device ($dev, all 16); an epoch's metrics, ISO time, and the devices it was evaluated and trained on"
ok "$([ "$(grep -c " warn w0: device auto: " "$root/w0.log")" = "$([ "$dev" = cpu ] && echo 1 || echo 0)" ] &&
      grep -q "serving shard 0 of every MOP sweep on $dev " "$root/w0.log" && grep -q "over [0-9]* rows in [0-9.]* s on $dev; committed v" "$root/w0.log"
      echo $?)" "worker w0 (--device auto) logs where it trains, $dev, once at start ($(grep -c "device auto" "$root/w0.log") fallback line) and with each visit"
ok "$("$py" - "$root/sweeps/e2e/results.csv" "$root/datasets/fm" "$dev" <<'PY'
import csv, json, sys
from datetime import datetime
rows = list(csv.DictReader(open(sys.argv[1])))
valid = [r for r in rows if r["split"] == "valid"]
test = [r for r in rows if r["split"] == "test"]
train = sum(json.load(open(f"{sys.argv[2]}/train/shard-{k}/manifest.json"))["rows"] for k in (0, 1))
ok = len(valid) == 8 and all(int(r["rows"]) > 0 and int(r["train_rows"]) == train for r in valid)
ok = ok and all(r["device"] == sys.argv[3] for r in rows) and all(r["train_device"] == sys.argv[3] for r in valid)
ok = ok and len(test) == 1 and test[0]["train_device"] == ""
ok = ok and sorted({int(r["epoch"]) for r in valid}) == [1, 2]
ok = ok and len(test) == 1 and int(test[0]["rows"]) == 2000 and test[0]["train_rows"] == ""
ok = ok and all(datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%S.%fZ") for r in rows)
best = max(float(r["top1"]) for r in valid)
print(0 if ok and best > 0.5 else 1)
PY
)" "results.csv has 8 epochs (1 and 2) over all the training rows and the validation split, the test row of the chosen model, ISO 8601 UTC times, the device of each ($dev); the best validation top-1 is above 0.5"
ok "$("$py" - "$(rcli HGET "${prefix}sweep:{e2e}:models" 0.ckpt)" <<'PY'
import msgpack, sys
d = msgpack.unpackb(open(sys.argv[1], "rb").read(), raw=False, strict_map_key=False)
print(0 if d["epoch"] == 2 and d["visited"] == [] else 1)
PY
)" "the last checkpoint of model 0 is at epoch 2 with no shard visited yet"
ok "$(grep -q "committed v" "$root/w0.log" && grep -q "committed v" "$root/w1.log" && ! grep -q "refused" "$root/w0.log" "$root/w1.log"; echo $?)" \
    "both workers committed visits, none refused"

# ---- a first SIGTERM drains: the visit in hand is committed ---------------------
ok "$([ "$(psql -X -A -t -q -c "SELECT count(*), count(DISTINCT model), min(epoch), max(epoch), bool_and(valid_top1 > 0.3 AND valid_rows > 0 AND spec ? 'model'), string_agg(DISTINCT device || '/' || train_device, ' ') FROM cds_results WHERE sweep = 'e2e'")" = "8|4|1|2|t|$dev/$dev" ]; echo $?)" \
    "cds_results in the dataset's database holds the 8 evaluated epochs, with metrics, specs and devices ($dev)"
jobctl results e2e >"$root/lb" 2>&1
rc=$?
top=$(for m in 0 1 2 3; do echo "$(rcli HGET "${prefix}sweep:{e2e}:models" "$m.best_top1") $m"; done | sort -k1,1gr -k2,2n | head -1 | cut -d' ' -f2)
ok "$([ $rc = 0 ] && [ "$(grep -c '^ *[1-4] ' "$root/lb")" = 4 ] && [ "$(sed -n 3p "$root/lb" | awk '{print $2}')" = "$top" ]; echo $?)" \
    "jobctl results ranks the 4 models, model $top (the best validation top-1) first"
ok "$(grep -q "^chosen model $top (epoch [12], valid top-1 0\.[0-9]*), on the test split: top-1 0\.[5-9]" "$root/lb" && \
      "$py" -c 'import json, sys; t = json.loads(sys.argv[1]); sys.exit(0 if t["model"] == int(sys.argv[2]) and t["rows"] == 2000 and t["device"] == sys.argv[3] else 1)' \
        "$(rcli HGET "${prefix}sweep:{e2e}" test)" "$top" "$dev"; echo $?)" \
    "the chosen model was scored once on the test split ($dev), reported apart ($(grep '^chosen' "$root/lb"))"
jobctl status e2e >"$root/st" 2>&1
ok "$([ $? = 0 ] && grep -q "16 of 16 visits" "$root/st" && [ "$(grep -c '^  model ' "$root/st")" = 4 ]; echo $?)" "jobctl status shows 16 of 16 visits and a line per model"
timeout 10 "$build/tools/jobctl" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" status e2e --watch >"$root/st2" 2>&1
ok "$([ $? = 0 ] && grep -q "16 of 16 visits" "$root/st2"; echo $?)" "jobctl status --watch of a finished sweep prints once and exits"
jobctl plot e2e --out "$root/curves.png" >/dev/null 2>"$root/err"
ok "$([ $? = 0 ] && [ "$(head -c 8 "$root/curves.png" | od -An -tx1 | tr -d ' ')" = 89504e470d0a1a0a ]; echo $?)" \
    "jobctl plot writes the learning curves as a PNG"
jobctl plot e2e --out "$root/curves.svg" >/dev/null 2>&1
ok "$([ $? = 0 ] && grep -q "<svg" "$root/curves.svg" && grep -q "validation top-1" "$root/curves.svg" && \
      grep -q "chosen: model $top" "$root/curves.svg" && grep -q "test top-1 0\.[0-9]" "$root/curves.svg"; echo $?)" \
    "...and as SVG, the chosen model $top marked with its test top-1"
timeout 20 "$build/tools/jobctl" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" status e2e --follow >"$root/fol" 2>&1
ok "$([ $? = 0 ] && [ "$(grep -c "  model [0-3] epoch [12]/2: train loss [0-9.]* top1 [0-9.]* | valid loss" "$root/fol")" = 8 ] && \
      grep -q "^chosen model $top " "$root/fol" && grep -q "16 of 16 visits, 8 of 8 epochs evaluated" "$root/fol"; echo $?)" \
    "jobctl status --follow of a finished sweep prints its 8 epochs' metrics, the test score and the summary, then exits 0"
jobctl plot e2e --out "$root/curves.gif" >/dev/null 2>"$root/err"
ok "$([ $? = 1 ] && [ "$(wc -l <"$root/err")" = 1 ] && grep -q ".png or .svg" "$root/err"; echo $?)" "another extension: exit 1, one line"
jobctl results nosuch >/dev/null 2>"$root/err"
ok "$([ $? = 1 ] && [ "$(wc -l <"$root/err")" = 1 ]; echo $?)" "jobctl results of a missing sweep: exit 1, one line"

# ---- replay: the recorded order gives the same checkpoints, bit for bit ------------
rid=$(jobctl replay e2e --id e2r 2>"$root/err")
ok $? "jobctl replay e2e creates sweep $rid"
worker r0 --shard 0 --idle-exit 4
worker r1 --shard 1 --idle-exit 4
for _ in $(seq 1200); do [ "$(rcli HGET "${prefix}sweep:{e2r}" state)" = done ] && break; sleep 0.1; done
wait "${pids[@]}"; pids=()
same=0
for m in 0 1 2 3; do
    a=$(rcli HGET "${prefix}sweep:{e2e}:models" "$m.ckpt"); b=$(rcli HGET "${prefix}sweep:{e2r}:models" "$m.ckpt")
    [ "$a" != "$b" ] && cmp -s "$a" "$b" && same=$((same + 1))
done
ok "$([ $same = 4 ]; echo $?)" "the replay's final checkpoints are bit-identical to the original's ($same of 4)"
ok "$(for s in e2e e2r; do rcli LRANGE "${prefix}sweep:{$s}:schedule" 0 -1 | awk '{print $1, $2, $3}' | sort -k1,1n -s; done | \
      awk 'NR <= 16 {a[NR] = $0} NR > 16 && a[NR - 16] != $0 {bad = 1} END {exit bad}'; echo $?)" \
    "every model visited its shards in the same order as in the original"
jobctl replay e2r --id e2e >/dev/null 2>"$root/err"
ok "$([ $? = 1 ] && grep -q "already exists" "$root/err"; echo $?)" "a replay onto an existing id is refused"

# ---- a sweep enqueued while its dataset is still loading waits for it ---------------
sed 's/"dataset": "fm"/"dataset": "fm3"/; s/"id < 2000"/"id < 1000"/' "$root/etl.json" >"$root/etl3.json"
jobctl enqueue etl --spec "$root/etl3.json" >/dev/null 2>&1
sed 's/"dataset": "fm"/"dataset": "fm3"/; s/"epochs": 2/"epochs": 1/' "$root/sweep.json" >"$root/early.json"
jobctl enqueue sweep --spec "$root/early.json" --id early >/dev/null 2>&1
ok "$([ "$(rcli HGET "${prefix}sweep:{early}" dataset_version)" = "" ]; echo $?)" "a sweep on a loading dataset is created without a pinned version"
worker e0 --shard 0 --idle-exit 4
worker e1 --shard 1 --idle-exit 4
for _ in $(seq 600); do [ "$(rcli HGET "${prefix}sweep:{early}" state)" = done ] && break; sleep 0.1; done
wait "${pids[@]}"; pids=()
ok "$([ "$(rcli HGET "${prefix}sweep:{early}" state)" = done ] && [ "$(rcli LLEN "${prefix}sweep:{early}:schedule")" = 8 ] && \
      [ -n "$(rcli HGET "${prefix}dataset:fm3" version)" ] && \
      [ "$(rcli HGET "${prefix}sweep:{early}" dataset_version)" = "$(rcli HGET "${prefix}dataset:fm3" version)" ]; echo $?)" \
    "...the workers unload the dataset, pin its version in the sweep, and then train it to the end"

# ---- a model whose loss diverges fails alone -----------------------------------------
cat >"$root/nan.json" <<'JSON'
{"mode": "mop", "dataset": "fm", "epochs": 1, "seed": 3,
 "models": [{"arch": "mlp", "input": [784], "hidden": [32], "classes": 10}],
 "train": {"normalize": {"scale": 0.00392156862745098, "mean": [0.286], "std": [0.353]}},
 "grid": {"optimizer": ["sgd"], "lr": [1000, 0.01], "batch": [64]}}
JSON
jobctl enqueue sweep --spec "$root/nan.json" --id nan >/dev/null 2>&1
worker n0 --shard 0 --idle-exit 3
worker n1 --shard 1 --idle-exit 3
for _ in $(seq 600); do [ "$(rcli HGET "${prefix}sweep:{nan}" state)" = done ] && break; sleep 0.1; done
wait "${pids[@]}"; pids=()
ok "$([ "$(rcli HGET "${prefix}sweep:{nan}:models" 0.state)" = failed ] && \
      rcli HGET "${prefix}sweep:{nan}:models" 0.reason | grep -q "diverged" && \
      [ "$(rcli HGET "${prefix}sweep:{nan}:models" 1.state)" = done ] && [ "$(rcli HGET "${prefix}sweep:{nan}" state)" = done ]; echo $?)" \
    "a model whose loss diverges (lr 1000) is marked failed with the reason; the other finishes; so does the sweep"

# ---- a shard whose worker is gone is served by another -----------------------------
# Shard 1's worker (r1 above) has exited; w0 alone, with a grace of 1 s, must
# take shard 1 too and finish the sweep.
sed 's/"epochs": 2/"epochs": 1/' "$root/sweep.json" >"$root/orph.json"
jobctl enqueue sweep --spec "$root/orph.json" --id orph >/dev/null 2>&1
worker o0 --shard 0 --shard-grace 1 --idle-exit 4
for _ in $(seq 600); do [ "$(rcli HGET "${prefix}sweep:{orph}" state)" = done ] && break; sleep 0.1; done
wait "${pids[@]}"; pids=()
ok "$([ "$(rcli HGET "${prefix}sweep:{orph}" state)" = done ] && \
      [ "$(rcli LRANGE "${prefix}sweep:{orph}:schedule" 0 -1 | awk '$3 == 1 && $5 == "o0"' | wc -l)" = 4 ] && \
      grep -q "served shard 1, whose worker has been gone" "$root/o0.log"; echo $?)" \
    "a shard whose worker is gone is served by another worker after the grace period; the sweep finishes"

# ---- a worker killed while it evaluates, or while it scores the test split -----------
# strace holds the worker's access() of the first validation (then test) shard
# for 6 s, which is the start of an evaluation (of a test scoring); the worker
# is SIGKILLed in that window, after its heartbeat has renewed the 1 s lease
# past its first deadline.  The next worker must find the evaluation put back
# by the reaper (the claim expired), do it, and record it; the sweep then
# leaves the active set.
held_worker() { # PATH ID ARGS...: a worker whose access() of PATH strace holds for 6 s
    strace -f -qq -o /dev/null -P "$1" -e trace=access,faccessat,faccessat2 \
        -e inject=access,faccessat,faccessat2:delay_enter=6000000 \
        "$build/worker/cds-worker" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" --id "$2" --reap-every 0.5 \
        --data-root "$root" --threads 1 --lease 1 "${@:3}" 2>>"$root/$2.log" &
    pids+=($!)
}
kill_held() { # kills the worker under the last held_worker's strace, then strace (which would sit out its delay)
    local wpid; wpid=$(pgrep -P "${pids[-1]}")
    [ -n "$wpid" ] && kill -KILL "$wpid"
    kill -KILL "${pids[-1]}" 2>/dev/null
    wait "${pids[-1]}" 2>/dev/null; pids=("${pids[@]:0:${#pids[@]}-1}")
}
if ! strace -f -qq -o /dev/null true 2>/dev/null || ! command -v pgrep >/dev/null; then
    for what in "evaluation" "test scoring"; do n=$((n + 1)); echo "ok $n - a worker killed during its $what # SKIP strace cannot trace here"; done
else
    cat >"$root/kev.json" <<'JSON'
{"mode": "mop", "dataset": "fm", "epochs": 1, "seed": 3,
 "models": [{"arch": "mlp", "input": [784], "hidden": [32], "classes": 10}],
 "train": {"normalize": {"scale": 0.00392156862745098, "mean": [0.286], "std": [0.353]}},
 "grid": {"optimizer": ["adam"], "lr": [0.003], "batch": [64]}}
JSON
    jobctl enqueue sweep --spec "$root/kev.json" --id kev >/dev/null 2>"$root/err"
    held_worker "$root/datasets/fm/valid/shard-0" ka --shard 0 --shard-grace 1
    for _ in $(seq 600); do [ "$(rcli HLEN "${prefix}sweep:{kev}:evaling")" = 1 ] && break; sleep 0.05; done
    first=$(rcli HVALS "${prefix}sweep:{kev}:evaling")
    sleep 1.5 # past the first deadline: only renewals keep the lease
    later=$(rcli HVALS "${prefix}sweep:{kev}:evaling")
    kill_held
    ok "$([ "$(rcli HGET "${prefix}sweep:{kev}" models)" = 1 ] && [ "${first%% *}" = 0 ] && [ "${first##* }" = ka ] && \
          [ "$(echo "$later" | cut -d' ' -f4)" -gt "$(echo "$first" | cut -d' ' -f4)" ] && [ "$(rcli LLEN "${prefix}sweep:{kev}:evals")" = 0 ]; echo $?)" \
        "an evaluation in flight is held by its worker, its deadline renewed while it evaluates ('$first' then '$later')"
    held_worker "$root/datasets/fm/test/shard-0" kb --shard 0
    for _ in $(seq 400); do [ "$(rcli HGET "${prefix}sweep:{kev}" test_by)" = kb ] && break; sleep 0.05; done
    first=$(rcli HGET "${prefix}sweep:{kev}" test_deadline)
    sleep 1.5 # past the claim's first deadline
    later=$(rcli HGET "${prefix}sweep:{kev}" test_deadline)
    kill_held
    ok "$(rcli HEXISTS "${prefix}sweep:{kev}:results" 0.1 | grep -qx 1 && grep -q "sweep kev: 1 expired evaluations put back" "$root/kb.log" && \
          grep -q "sweep kev model 0 epoch 1: train loss" "$root/kb.log" && [ "$(rcli HGET "${prefix}sweep:{kev}" test)" = "" ] && \
          [ -n "$first" ] && [ "$later" -gt "$((first + 1000))" ]; echo $?)" \
        "SIGKILL during an evaluation: the reaper puts it back and the next worker evaluates it; its test claim is renewed while it scores ($first, then $later)"
    worker kc --shard 0 --lease 1 --idle-exit 2
    for _ in $(seq 300); do [ -n "$(rcli HGET "${prefix}sweep:{kev}" test)" ] && break; sleep 0.05; done
    wait "${pids[@]}"; pids=()
    ok "$([ "$(rcli HGET "${prefix}sweep:{kev}" test_by)" = kc ] && rcli HGET "${prefix}sweep:{kev}" test | grep -q '"epoch":1,.*"model":0,' && \
          [ "$(rcli ZSCORE "${prefix}sweeps:active" kev)" = "" ] && [ -n "$(rcli ZSCORE "${prefix}sweeps" kev)" ] && \
          [ "$(rcli HLEN "${prefix}sweep:{kev}:evaling")" = 0 ]; echo $?)" \
        "SIGKILL during the test scoring: another worker takes the expired claim over and records it; the sweep leaves the active set"
fi
ok "$([ "$(rcli ZCARD "${prefix}sweeps:active")" = 0 ] && [ "$(rcli ZCARD "${prefix}sweeps")" -ge 5 ]; echo $?)" \
    "every finished sweep left the active set ($(rcli ZRANGE "${prefix}sweeps:active" 0 -1 | tr '\n' ' ')), and all stay in the index"

# A full-width CNN with small batches makes a visit last long enough to be
# interrupted in the middle.
cat >"$root/sweep2.json" <<'JSON'
{"mode": "mop", "dataset": "fm", "epochs": 1, "seed": 3,
 "models": [{"arch": "cnn", "input": [1, 28, 28], "classes": 10}],
 "train": {"normalize": {"scale": 0.00392156862745098, "mean": [0.286], "std": [0.353]}},
 "grid": {"optimizer": ["sgd"], "lr": [0.01], "batch": [8]}}
JSON
jobctl enqueue sweep --spec "$root/sweep2.json" --id drain >/dev/null 2>&1
worker d0 --shard 0
for _ in $(seq 600); do [ "$(rcli HGET "${prefix}sweep:{drain}:models" 0.state)" = leased ] && break; sleep 0.02; done
kill -TERM "${pids[0]}"
# While it drains, the heartbeat publishes the visit's progress (from its
# first batch on); status shows it, with a time left.
for _ in $(seq 300); do rcli HGET "${prefix}sweep:{drain}:models" 0.progress | grep -q '"rows_done":[1-9]' && break; sleep 0.01; done
progress=$(rcli HGET "${prefix}sweep:{drain}:models" 0.progress)
jobctl status drain >"$root/dst" 2>&1
wait "${pids[0]}"; rc=$?; pids=()
shown=$("$py" -c 'import json, sys; p = json.loads(sys.argv[1]); sys.exit(0 if 0 < p["rows_done"] <= p["rows_total"] and p["samples_per_s"] > 0 and p["device"] == sys.argv[2] else 1)' \
        "$progress" "$dev" && grep -q "shard 0: [0-9]*% at [0-9]* rows/s on $dev" "$root/dst" && grep -q "about .* left" "$root/dst"; echo $?)
ok "$shown" "a visit in flight: its progress in Redis ($progress), shown by status with a time left"
[ "$shown" = 0 ] || sed 's/^/# /' "$root/dst"
ok "$([ $rc = 0 ] && grep -q "finishing job drain/0" "$root/d0.log" && grep -q "sweep drain model 0 .*committed v1" "$root/d0.log" && \
      [ "$(rcli LLEN "${prefix}sweep:{drain}:schedule")" = 1 ] && [ "$(rcli HGET "${prefix}sweep:{drain}:models" 0.state)" = idle ]; echo $?)" \
    "SIGTERM during a visit: the worker finishes and commits it, then exits 0"

[ "$failed" = 0 ] || for f in "$root"/*.log; do echo "# --- $(basename "$f")"; grep -v " info .*committed v" "$f" | tail -n 12 | sed 's/^/#   /'; done
tap_done
