#!/usr/bin/env bash
# Faults in a MOP sweep that a worker must account for, not loop on:
#
# 1. A committed checkpoint corrupted on disk (one byte flipped in the middle
#    of the model's v<N>-*.ckpt, which its epoch-<e>.ckpt shares): the next
#    visit's load fails its CRC; that is a failed attempt, as a queue job's
#    (DESIGN.md §4), with a backoff, and after the sweep's max_attempts (3
#    here) the model fails with the reason, which names the intact older
#    checkpoint it kept; its stall count stays 0; the evaluation of the
#    corrupt epoch fails the same way, alone; the other model and the sweep
#    finish.  Then `jobctl retry S/0 --from epoch-N` puts the model back on
#    that older checkpoint and the sweep finishes with it done.
# 2. The heartbeat's renewal racing a commit: with a lease of 0.1 s the
#    heartbeat renews every ~35 ms while a worker commits hundreds of short
#    visits; a lease that a commit ended must never be logged as lost (a
#    "lease lost" line for a visit that then commits).
# usage: test_mop_faults.sh BUILD_ROOT
set -u
. "$(dirname "${BASH_SOURCE[0]}")/mop_env.sh" faults "${1:?usage: test_mop_faults.sh BUILD_ROOT}"
py=/usr/bin/python3

psql -X -q -c "CREATE TABLE pts AS SELECT i AS id, array_fill((i % 7)::real / 7, ARRAY[16]) AS x, i % 2 AS label
               FROM generate_series(1, 6000) i; ALTER TABLE pts ADD PRIMARY KEY (id)" || { echo "Bail out! cannot create the table"; exit 1; }
cat >"$root/etl.json" <<JSON
{"table": "pts", "features": ["x"], "label": "label", "valid_fraction": 0.1, "test_table": "pts",
 "dataset": "pts", "shards": 1, "data_root": "$root"}
JSON
jobctl enqueue etl --spec "$root/etl.json" >/dev/null 2>"$root/err"
worker etl --idle-exit 2
wait "${pids[@]}"; pids=()
ok "$([ "$(rcli HGET "${prefix}dataset:pts" state)" = ready ]; echo $?)" "the dataset is ready ($(tail -1 "$root/err"))"

# ---- 1. a corrupt committed checkpoint --------------------------------------------
cat >"$root/sweep.json" <<'JSON'
{"mode": "mop", "dataset": "pts", "epochs": 40, "seed": 5, "max_attempts": 3,
 "models": [{"arch": "mlp", "input": [16], "hidden": [64], "classes": 2}],
 "grid": {"optimizer": ["sgd"], "lr": [0.01, 0.02], "batch": [32]}}
JSON
jobctl enqueue sweep --spec "$root/sweep.json" --id bad --backoff-base 0.2 >/dev/null 2>"$root/err"
ok "$?" "a sweep of 2 models x 40 epochs, max_attempts 3 from the spec, backoff base 0.2 s"
ok "$([ "$(rcli HGET "${prefix}sweep:{bad}" max_attempts)" = 3 ] && [ "$(rcli HGET "${prefix}sweep:{bad}" backoff_base_ms)" = 200 ]; echo $?)" \
    "the sweep holds max_attempts 3 and backoff_base_ms 200"
worker w0 --shard 0
w0=${pids[0]}
# Stop the worker while model 0 is idle after a few epochs, so that what it
# leases next is the checkpoint corrupted here.
corrupted=""
for _ in $(seq 400); do
    v=$(rcli HGET "${prefix}sweep:{bad}:models" 0.version)
    if [ "${v:-0}" -ge 3 ]; then
        kill -STOP "$w0"
        if [ "$(rcli HGET "${prefix}sweep:{bad}:models" 0.state)" = idle ]; then
            corrupted=$(rcli HGET "${prefix}sweep:{bad}:models" 0.ckpt)
            cepoch=$(( $(rcli HGET "${prefix}sweep:{bad}:models" 0.epoch) - 1 ))
            "$py" - "$corrupted" <<'PY'
import os, sys
p = sys.argv[1]
with open(p, "r+b") as f:
    f.seek(os.path.getsize(p) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0x40]))
PY
            kill -CONT "$w0"
            break
        fi
        kill -CONT "$w0"
    fi
    sleep 0.02
done
ok "$([ -n "$corrupted" ]; echo $?)" "one byte flipped in the middle of model 0's committed $(basename "${corrupted:-none}") (end of epoch ${cepoch:-?})"
for _ in $(seq 1200); do [ -n "$(rcli HGET "${prefix}sweep:{bad}" test)" ] && break; sleep 0.1; done
reason=$(rcli HGET "${prefix}sweep:{bad}:models" 0.reason)
ok "$([ "$(rcli HGET "${prefix}sweep:{bad}:models" 0.state)" = failed ] && [[ "$reason" == "failed 3 of 3 attempts: "*CRC-32* ]] && \
      [ "$(rcli HGET "${prefix}sweep:{bad}:models" 0.stalls)" = 0 ]; echo $?)" \
    "model 0 failed after 3 attempts with the reason, no stall counted: $reason"
# The newest intact file it kept: epoch-<e>.ckpt while that epoch waits for
# its evaluation, best-e<e>.ckpt once evaluated as the model's best (which
# one depends on whether the worker evaluated in between).
from=$(sed -n 's/.*`jobctl retry bad\/0 --from \([a-z0-9-]*\)`.*/\1/p' <<<"$reason")
kept=$(sed -n 's/.*an intact older checkpoint is kept: .*\/\(epoch-\|best-e\)\([0-9]*\)\.ckpt (end of epoch \([0-9]*\).*/\2 \3/p' <<<"$reason")
kept_e=${kept%% *}
ok "$([ -n "$kept" ] && [ "$kept_e" = "${kept##* }" ] && [ "$kept_e" -ge 1 ] && [ "$kept_e" -lt "$cepoch" ] && \
      { [ "$from" = best ] || [ "$from" = "epoch-$kept_e" ]; }; echo $?)" \
    "the reason names the newest intact older checkpoint (end of epoch ${kept_e:-?}) and how to train on from it (--from $from)"
attempt_lines=$(grep -c "model 0 .*attempt [0-9]" "$root/w0.log")
ok "$([ "$attempt_lines" = 3 ] && [ "$(grep -c "model 0 failed after attempt 3" "$root/w0.log")" = 1 ]; echo $?)" \
    "the worker tried it 3 times, one log line each ($attempt_lines lines), not in a loop"
ok "$([ "$(rcli HGET "${prefix}sweep:{bad}:models" 1.state)" = done ] && [ "$(rcli HGET "${prefix}sweep:{bad}" state)" = done ] && \
      rcli HGET "${prefix}sweep:{bad}" test | grep -q '"model":1,'; echo $?)" \
    "model 1 trained its 40 epochs; the sweep is done and scored model 1 on the test split"
jobctl results bad >"$root/lb" 2>&1
ok "$(grep -q "^model 0 failed: failed 3 of 3 attempts" "$root/lb" && [ -n "$(rcli HGET "${prefix}sweep:{bad}:results" "0.$((cepoch - 1))")" ]; echo $?)" \
    "jobctl results says why model 0 failed; the epoch before the corrupt one was evaluated"

jobctl retry bad/0 --from "$from" >"$root/out" 2>&1
ok "$([ $? = 0 ] && grep -q "model 0 of sweep bad is idle again, to train epoch $((kept_e + 1)) from .*-e*$kept_e.ckpt" "$root/out"; echo $?)" \
    "jobctl retry bad/0 --from $from: $(cat "$root/out")"
for _ in $(seq 1200); do [ -n "$(rcli HGET "${prefix}sweep:{bad}" test)" ] && break; sleep 0.1; done
ok "$([ "$(rcli HGET "${prefix}sweep:{bad}:models" 0.state)" = done ] && [ "$(rcli HGET "${prefix}sweep:{bad}:models" 0.epoch)" = 40 ] && \
      [ "$(rcli HGET "${prefix}sweep:{bad}" state)" = done ] && [ -n "$(rcli HGET "${prefix}sweep:{bad}" test)" ]; echo $?)" \
    "model 0 trained on to epoch 40 from there; the sweep is done again, with a test score"
jobctl retry bad/1 >/dev/null 2>"$root/err"
ok "$([ $? = 1 ] && [ "$(wc -l <"$root/err")" = 1 ] && grep -q "not failed" "$root/err"; echo $?)" "retrying a model that did not fail: exit 1, one line"

# ---- 1b. a damaged validation shard: evaluations fail alone -----------------------
# The validation shard's features file cut short by 8 bytes (its size no
# longer the manifest's): every evaluation fails, each after 3 attempts with
# the reason; training goes on and the sweep finishes, with no model to
# choose for the test.
vf=$(ls "$root"/datasets/pts/valid/shard-0/x.npy)
cp "$vf" "$root/x.npy.good"
truncate -s -8 "$vf"
sed 's/"epochs": 40/"epochs": 2/; s/"lr": \[0.01, 0.02\]/"lr": [0.01]/' "$root/sweep.json" >"$root/vbad.json"
jobctl enqueue sweep --spec "$root/vbad.json" --id vbad --backoff-base 0.05 >/dev/null 2>"$root/err"
for _ in $(seq 1200); do [ -n "$(rcli HGET "${prefix}sweep:{vbad}" test)" ] && break; sleep 0.1; done
e1=$(rcli HGET "${prefix}sweep:{vbad}:models" 0.eval_error.1); e2=$(rcli HGET "${prefix}sweep:{vbad}:models" 0.eval_error.2)
ok "$([[ "$e1" == "evaluation failed 3 of 3 attempts: "* ]] && [[ "$e2" == "evaluation failed 3 of 3 attempts: "* ]] && \
      [ "$(rcli HGET "${prefix}sweep:{vbad}:models" 0.state)" = done ] && rcli HGET "${prefix}sweep:{vbad}" test | grep -q '"none"'; echo $?)" \
    "each evaluation failed after 3 attempts with the reason ($e1); the model trained on, and the sweep finished with no test score"
jobctl results vbad >"$root/lb2" 2>&1
ok "$([ "$(grep -c "^model 0 epoch [12] not evaluated: evaluation failed 3 of 3 attempts" "$root/lb2")" = 2 ] && grep -q "^no test score: " "$root/lb2"; echo $?)" \
    "jobctl results says which epochs were not evaluated and why there is no test score"
cp "$root/x.npy.good" "$vf"
kill -TERM "$w0"; wait "${pids[@]}"; pids=()

# ---- 2. no lease is reported lost because a commit ended it -------------------------
cat >"$root/fast.json" <<'JSON'
{"mode": "mop", "dataset": "pts", "epochs": 100, "seed": 1, "train": {"optimizer": "sgd", "lr": 0.1},
 "models": [{"arch": "diag.sleep", "ms": 5}, {"arch": "diag.sleep", "ms": 5}, {"arch": "diag.sleep", "ms": 5}]}
JSON
jobctl enqueue sweep --spec "$root/fast.json" --id fast >/dev/null 2>"$root/err" || echo "# $(cat "$root/err")"
worker f0 --shard 0 --lease 0.1 --idle-exit 2
wait "${pids[@]}"; pids=()
commits=$(grep -c "committed v" "$root/f0.log")
# count_false_lost LOG: the "lease lost" lines that were false: the next line
# about that model commits.  A real loss is followed by the visit's end
# ("lease lost mid-visit; abandoning it", or "commit refused"), which clears
# it: the model's next commit is of a visit leased again, and no evidence.
count_false_lost() {
    awk '
    match($0, /model [0-9]+[: ]/) { m = substr($0, RSTART + 6, RLENGTH - 7)
        if (pending[m] && /committed v/) bad++
        pending[m] = /lease lost/ && !/abandoning|refused/ }
    END { print bad + 0 }' "$1"
}
# The counter itself, on a made-up log: model 0 loses its lease for real and
# commits its next visit; model 1's warning is false (its visit commits).
cat >"$root/lost.log" <<'LOG'
t warn f0: sweep fast model 0: lease lost (expired and reaped, or cancelled)
t warn f0: sweep fast model 0: lease lost mid-visit; abandoning it
t info f0: sweep fast model 0 epoch 3 shard 0: slept 5 ms; committed v3
t warn f0: sweep fast model 0: lease lost (expired and reaped, or cancelled)
t warn f0: sweep fast model 0 epoch 4 shard 0: commit refused (the lease was lost); checkpoint discarded
t info f0: sweep fast model 0 epoch 4 shard 0: slept 5 ms; committed v4
t warn f0: sweep fast model 1: lease lost (expired and reaped, or cancelled)
t info f0: sweep fast model 2 epoch 1 shard 0: slept 5 ms; committed v1
t info f0: sweep fast model 1 epoch 2 shard 0: slept 5 ms; committed v2
LOG
ok "$([ "$(count_false_lost "$root/lost.log")" = 1 ]; echo $?)" \
    "the false-warning count takes a lost lease whose visit ends as a real loss, one followed by its commit as false"
false_lost=$(count_false_lost "$root/f0.log")
ok "$([ "$commits" = 300 ] && [ "$false_lost" = 0 ]; echo $?)" \
    "$commits visits committed under a 0.1 s lease; none was reported lost before it committed ($false_lost false warnings; $(grep -c "lease lost" "$root/f0.log") real losses)"
# Its last line counts what was done: the dropped evaluations of diag.sleep
# epochs (nothing to evaluate) and visits whose commit was refused are not work.
last=$(tail -1 "$root/f0.log")
ok "$([[ "$last" == *"stopped: 0 jobs done, 0 failed; $commits visits committed, 0 evaluations and 1 test results recorded" ]]; echo $?)" \
    "the worker's last line counts what it did: ${last#*f0: }"

# ---- 3. a cron line: enqueue sweep --unique ----------------------------------------
a=$(jobctl enqueue sweep --spec "$root/fast.json" --unique nightly-sweep 2>/dev/null); rca=$?
b=$(jobctl enqueue sweep --spec "$root/fast.json" --unique nightly-sweep 2>"$root/err"); rcb=$?
ok "$([ $rca = 0 ] && [ $rcb = 0 ] && [ -n "$a" ] && [ "$a" = "$b" ] && grep -q "holds unique key 'nightly-sweep'" "$root/err" && \
      [ "$(rcli GET "${prefix}sweeps:unique:nightly-sweep")" = "$a" ]; echo $?)" \
    "enqueue sweep --unique twice while the first is live: the second prints its id ($a) and exits 0"
ok "$([ "$(rcli ZCARD "${prefix}sweeps")" = 4 ]; echo $?)" "...and creates nothing (4 sweeps in all)"
jobctl cancel "$a" >/dev/null 2>&1
c=$(jobctl enqueue sweep --spec "$root/fast.json" --unique nightly-sweep 2>/dev/null); rcc=$?
ok "$([ $rcc = 0 ] && [ -n "$c" ] && [ "$c" != "$a" ] && [ "$(rcli GET "${prefix}sweeps:unique:nightly-sweep")" = "$c" ]; echo $?)" \
    "once that sweep is cancelled the key makes a new sweep ($c)"

# ---- 4. a sweep recorded with epochs from 0 is not replayed ---------------------------
rcli HDEL "${prefix}sweep:{fast}" format >/dev/null
jobctl replay fast --id fast2 >/dev/null 2>"$root/err"
ok "$([ $? = 1 ] && [ "$(wc -l <"$root/err")" = 1 ] && grep -q "numbered epochs from 0" "$root/err" && \
      [ "$(rcli EXISTS "${prefix}sweep:{fast2}")" = 0 ]; echo $?)" "replay of a sweep recorded before epochs counted from 1: exit 1, one line, nothing made"

[ "$failed" = 0 ] || for f in "$root"/*.log; do echo "# --- $(basename "$f")"; grep -v " info .*committed v" "$f" | tail -n 15 | sed 's/^/#   /'; done
tap_done
