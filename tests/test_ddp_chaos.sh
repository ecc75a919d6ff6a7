#!/usr/bin/env bash
# A DDP sweep under chaos, against the real Redis and PostgreSQL of
# scripts/with-services: 2 models x 3 epochs over a gang of 2 ranks (two
# cds-worker processes, --shard 0 and --shard 1, 3 s leases, collectives
# bounded to 2 s) is run once undisturbed, then again while the test
#   - SIGKILLs a random rank process of a live gang, 6 times, each in a
#     different gang (the worker ends the gang; the peer's collective fails
#     at once; the gang starts again from the last committed checkpoint);
#   - SIGSTOPs a rank process alone past its peer's time-out: the peer ends
#     the gang, and the stopped rank's worker, told by its next renewal,
#     kills it;
#   - SIGSTOPs a whole rank, worker and rank process, past its lease, then
#     SIGCONTs it: the gang restarts without it only once it is back, and
#     what it had in flight is refused (its token is gone).
# Then: the sweep finishes; every (model, epoch, rank) is in the schedule
# exactly once and each model's versions run 1..3 in order (nothing is
# committed twice); each model's final weights equal the undisturbed run's
# within 1e-5 relative per tensor (max|a-b| / max|b|).  Victims and moments
# come from bash's RANDOM seeded with CDS_CHAOS_SEED (printed).  Runs in the
# plain build only (suite chaos).  usage: test_ddp_chaos.sh BUILD_ROOT
set -u
src=${CDS_SOURCE_ROOT:?CDS_SOURCE_ROOT is not set}
py=/usr/bin/python3
. "$(dirname "${BASH_SOURCE[0]}")/mop_env.sh" ddpchaos "${1:?usage: test_ddp_chaos.sh BUILD_ROOT}"
seed=${CDS_CHAOS_SEED:-$(( ($$ * 7919 + $(date +%s)) % 32768 ))}
RANDOM=$seed
echo "# seed $seed (CDS_CHAOS_SEED=$seed replays the victims and the moments)"
KILLS=6
LEASE=3
TIMEOUT=2

fm_dataset "id < 8000" 0.05
cat >"$root/sweep.json" <<'JSON'
{"mode": "ddp", "dataset": "fm", "epochs": 3, "seed": 11,
 "models": [{"arch": "cnn", "input": [1, 28, 28], "classes": 10, "width": 0.25, "dropout": 0.25}],
 "train": {"normalize": {"scale": 0.00392156862745098, "mean": [0.286], "std": [0.353]}},
 "grid": {"optimizer": ["adam"], "lr": [0.003, 0.001], "batch": [32]}}
JSON

wpid=()
start_workers() {
    worker w0 --shard 0 --lease $LEASE --ddp-timeout $TIMEOUT
    wpid[0]=${pids[-1]}
    worker w1 --shard 1 --lease $LEASE --ddp-timeout $TIMEOUT
    wpid[1]=${pids[-1]}
    for _ in $(seq 100); do [ -n "$(rcli HGET "${prefix}mop:shards" 1)" ] && [ -n "$(rcli HGET "${prefix}mop:shards" 0)" ] && break; sleep 0.1; done
}
sweep_state() { rcli HGET "${prefix}sweep:{$1}" state; }
# The rank process of worker WORKER_PID, if one runs.
rank_of() { pgrep -P "$1" -f -- '--rank-task' | head -1; }
# Waits up to $2 tenths of a second until both workers run a rank of a gang
# other than the one named $3; prints "gang pid0 pid1".
wait_gang() {
    local sweep=$1 tries=$2 last=$3 p0 p1 g
    for _ in $(seq "$tries"); do
        p0=$(rank_of "${wpid[0]}"); p1=$(rank_of "${wpid[1]}")
        g=$(rcli HGET "${prefix}sweep:{$sweep}" gangs)
        if [ -n "$p0" ] && [ -n "$p1" ] && [ "$g" != "$last" ]; then echo "$g $p0 $p1"; return 0; fi
        [ "$(sweep_state "$sweep")" = done ] && return 1
        sleep 0.1
    done
    return 1
}
wait_done() {
    for _ in $(seq "$2"); do [ "$(sweep_state "$1")" = done ] && return 0; sleep 0.1; done
    return 1
}

start_workers
jobctl enqueue sweep --spec "$root/sweep.json" --id calm --max-stalls 30 >/dev/null 2>"$root/err"
ok $? "the undisturbed sweep is enqueued"
t0=$(date +%s%3N)
wait_done calm 1200
ok $? "the undisturbed sweep finishes ($(( $(date +%s%3N) - t0 )) ms)"

jobctl enqueue sweep --spec "$root/sweep.json" --id storm --max-stalls 30 >/dev/null 2>"$root/err"
ok $? "the same sweep is enqueued again, for the storm"
kills=0 last=""
for i in $(seq $((3 * KILLS))); do
    [ $kills -ge $KILLS ] && break
    g=$(wait_gang storm 300 "$last") || break
    read -r last p0 p1 <<<"$g"
    sleep "0.$((RANDOM % 3))$((RANDOM % 10))"
    victim=$([ $((RANDOM % 2)) = 0 ] && echo "$p0" || echo "$p1")
    kill -KILL "$victim" 2>/dev/null && kills=$((kills + 1)) # a rank that finished first is not counted
done
ok "$([ $kills -ge 5 ]; echo $?)" "$kills rank processes SIGKILLed in $kills different gangs"

# A rank process stopped alone: its peer times out and ends the gang; its
# worker hears it at the next renewal and kills it.
stopped_alone=1
if g=$(wait_gang storm 300 "$last"); then
    read -r last p0 p1 <<<"$g"
    kill -STOP "$p1"
    for _ in $(seq 100); do kill -0 "$p1" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p1" 2>/dev/null || stopped_alone=0
    kill -CONT "$p1" 2>/dev/null
fi
ok $stopped_alone "a rank process SIGSTOPped alone is killed by its worker once its peer ended the gang (within 10 s)"

# A whole rank stopped past its lease: the other side ends the gang and can
# form no new one; back, the stopped rank's late work is refused.
stopped=1
if g=$(wait_gang storm 300 "$last"); then
    read -r last p0 p1 <<<"$g"
    gangs_before=$(rcli HGET "${prefix}sweep:{storm}" gangs)
    kill -STOP "${wpid[1]}" "$p1"
    sleep $((LEASE + TIMEOUT + 1))
    m_state=$(rcli HGETALL "${prefix}sweep:{storm}:models" | paste - - | awk '$1 ~ /^[0-9]+\.state$/ {print $2}' | sort | uniq -c | tr -s ' ' | tr '\n' ';')
    gangs_during=$(rcli HGET "${prefix}sweep:{storm}" gangs)
    kill -CONT "${wpid[1]}" "$p1"
    [ "$gangs_during" = "$gangs_before" ] && ! grep -q leased <<<"$m_state" && stopped=0
fi
ok $stopped "a whole rank SIGSTOPped past its lease: its gang ended, no gang formed without it (models: ${m_state:-?})"

wait_done storm 1800
ok $? "the sweep finishes after the storm"
sleep 1
ok "$(grep -q "gang .* ended\|the gang had already ended\|commit refused" "$root/w1.log"; echo $?)" \
    "the rank that came back late was refused (w1's log says so)"
rcli LRANGE "${prefix}sweep:{storm}:schedule" 0 -1 >"$root/schedule"
ok "$([ "$(wc -l <"$root/schedule")" = 12 ] && [ "$(cut -d' ' -f1-3 "$root/schedule" | sort -u | wc -l)" = 12 ] &&
      awk '$3 == 0 { if ($4 != ++v[$1]) bad = 1 } END { exit bad }' "$root/schedule"; echo $?)" \
    "every (model, epoch, rank) committed exactly once, each model's versions 1..3 in order"
ok "$("$py" - "$src/tests" \
    "$(rcli HGET "${prefix}sweep:{calm}:models" 0.ckpt)" "$(rcli HGET "${prefix}sweep:{storm}:models" 0.ckpt)" \
    "$(rcli HGET "${prefix}sweep:{calm}:models" 1.ckpt)" "$(rcli HGET "${prefix}sweep:{storm}:models" 1.ckpt)" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import ckpt_reader
worst = 0.0
for calm, storm in zip(sys.argv[2::2], sys.argv[3::2]):
    a, b = ckpt_reader.load(storm)[1], ckpt_reader.load(calm)[1]
    for name in b:
        d = float(np.max(np.abs(a[name].astype(np.float64) - b[name]))) / max(float(np.max(np.abs(b[name]))), 1e-30)
        worst = max(worst, d)
print(0 if worst <= 1e-5 else 1)
print("# worst relative difference over every tensor: %.3g" % worst, file=sys.stderr)
PY
)" "each model's final weights equal the undisturbed run's within 1e-5 relative"
ok "$(grep -c 'gang aborted' "$root/w0.log" "$root/w1.log" | awk -F: '{s += $2} END {exit !(s >= 5)}'; echo $?)" \
    "the workers ended the broken gangs themselves ($(cat "$root"/w*.log | grep -c 'gang aborted') aborts logged)"
[ "$failed" = 0 ] || for f in "$root"/w*.log; do echo "# --- $(basename "$f")"; grep -v "committed v\|rank [01] of 2" "$f" | tail -n 20 | sed 's/^/#   /'; done
tap_done
