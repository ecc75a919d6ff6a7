#!/usr/bin/env bash
# jobctl simulate (docs/sweeps.md, "Simulating a sweep") against real runs
# on the real Redis of scripts/with-services: three diag.sleep sweeps served
# by 2 workers, one of 4 equal models and one heterogeneous (visits of 100
# to 1000 ms: long enough that a loaded machine's latencies between visits stay
# small beside them), both without the hybrid, and one model with it (its
# second epoch a gang of 2), each predicted from its spec and from its own
# measured visits (--from-sweep) within 10 % of its measured makespan
# (enqueue to the last commit, Redis' clock); the bad inputs are one line
# and a non-zero exit.
# usage: test_simulate.sh BUILD_ROOT
set -u
. "$(dirname "${BASH_SOURCE[0]}")/redis_env.sh" simulate "${1:?usage: test_simulate.sh BUILD_ROOT}"
rcli HSET "${prefix}dataset:sl" state ready version "$(printf '%064d' 1)" shards 2 splits '{"train":{"shards":2}}' >/dev/null
spec() { # ID HYBRID MS...: a MOP sweep of diag.sleep models, 2 epochs
    local id=$1 hybrid=$2 models=""; shift 2
    for ms in "$@"; do models+="${models:+, }{\"arch\": \"diag.sleep\", \"ms\": $ms}"; done
    printf '{"mode": "mop", "dataset": "sl", "epochs": 2, "seed": 1, "hybrid": %s, "models": [%s],\n "train": {"optimizer": "sgd", "lr": 0.1}}\n' \
        "$hybrid" "$models" >"$root/$id.json"
}
spec even false 400 400 400 400
spec mixed false 100 200 400 1000
spec gang true 500
for k in 0 1; do
    "$build/worker/cds-worker" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" --id "w$k" --shard $k --data-root "$root" \
        --threads 1 --idle-exit 60 2>>"$root/w$k.log" &
    pids+=($!)
done
for _ in $(seq 100); do [ -n "$(rcli HGET "${prefix}mop:shards" 1)" ] && break; sleep 0.05; done
for id in even mixed gang; do
    row=mop; [ $id = gang ] && row=hybrid
    jobctl enqueue sweep --spec "$root/$id.json" --id "$id" >/dev/null 2>"$root/err" || cat "$root/err"
    for _ in $(seq 600); do [ "$(rcli HGET "${prefix}sweep:{$id}" state)" = done ] && break; sleep 0.05; done
    meas=$(( $(rcli HGET "${prefix}sweep:{$id}" finished) - $(rcli HGET "${prefix}sweep:{$id}" created) ))
    for how in spec measured; do
        if [ $how = spec ]; then args=(); else args=(--from-sweep "$id"); fi
        # a diag.sleep gang's own cost (a child process, the commit): about 30 ms here
        [ $id = gang ] && args+=(--gang-overhead 0.03)
        pred=$(jobctl simulate --spec "$root/$id.json" --workers 2 "${args[@]}" --json 2>"$root/err" |
               "$py" -c 'import json, sys; print("%.0f" % (1000 * json.load(sys.stdin)[sys.argv[1]]["makespan_s"]))' $row)
        ok "$(awk -v p="${pred:-0}" -v m="$meas" 'BEGIN { exit !(m > 0 && p / m >= 0.9 && p / m <= 1.1) }'; echo $?)" \
            "sweep $id: simulated from the $how times, the $row makespan ${pred:-?} ms against the measured $meas ms (within 10 %)$([ -s "$root/err" ] && echo " ($(head -1 "$root/err"))")"
    done
done
g=$(rcli LRANGE "${prefix}sweep:{gang}:schedule" 0 -1 | grep -c ' g2$')
sim=$(jobctl simulate --spec "$root/gang.json" --workers 2 --gang-overhead 0.03 --json | "$py" -c 'import json,sys; d=json.load(sys.stdin); print("%.2f %.2f" % (d["mop"]["makespan_s"], d["hybrid"]["makespan_s"]))')
ok "$([ "$g" = 2 ] && awk -v a="${sim% *}" -v b="${sim#* }" 'BEGIN { exit !(b < 0.85 * a) }'; echo $?)" \
    "the gang sweep's second epoch ran as a gang of 2 ($g schedule entries say g2), and the simulation formed it too (MOP ${sim% *} s, hybrid ${sim#* } s)"
jobctl simulate --spec "$root/mixed.json" --workers 2 >"$root/table" 2>&1
ok "$(grep -qE '^mop +[0-9.]+ +[0-9.]+' "$root/table" && grep -qE '^rotation ' "$root/table" && grep -qE '^ddp ' "$root/table"; echo $?)" \
    "the table has MOP, the rotation, DDP and MA"
rot=$(jobctl simulate --spec "$root/mixed.json" --workers 2 --json | "$py" -c 'import json,sys; d=json.load(sys.stdin); print(int(d["rotation"]["makespan_s"] >= d["mop"]["makespan_s"]))')
ok "$([ "$rot" = 1 ]; echo $?)" "on heterogeneous models the rotation (each sub-epoch waits for its slowest visit) is no faster than MOP"

# refused ARGS... PATTERN: one line, exit 2
refused() {
    local pat=${*: -1}
    jobctl simulate "${@:1:$#-1}" >/dev/null 2>"$root/err"
    local rc=$?
    ok "$([ $rc = 2 ] && [ "$(wc -l <"$root/err")" = 1 ] && grep -q -- "$pat" "$root/err"; echo $?)" "simulate ${*:1:$#-1}: refused in one line ($(head -1 "$root/err"))"
}
refused --spec "$root/mixed.json" --workers 0 "bad --workers"
refused --workers 2 "needs --spec"
printf '{"mode": "mop", "dataset": "sl", "epochs": 1, "models": [{"arch": "mlp", "input": [4], "classes": 2}], "train": {"optimizer": "sgd", "lr": 0.1}}' >"$root/mlp.json"
refused --spec "$root/mlp.json" --workers 2 "give --from-sweep"
refused --spec "$root/mlp.json" --workers 2 --from-sweep nosuch "no such sweep"
kill -TERM "${pids[@]}"; wait "${pids[@]}"; pids=()
tap_done
