#!/usr/bin/env bash
# Search through real workers (DESIGN.md §9, docs/search.md), against the
# real Redis of scripts/with-services: for 5 search seeds, a TPE sweep and a
# random sweep with the same budget over the same space train diag.sleep
# models whose evaluation scores a known function of their two fields,
# exp(-((x - 0.7)² + (y + 0.4)²))·(1 - 2^-epoch), so nothing trains and the
# best possible score is known.  One worker serves all ten sweeps: it
# proposes a TPE trial only when it has nothing else to do, so every
# proposal sees every trial before it finished and evaluated, and the run
# is the same whatever the machine's speed.
# Checked: every sweep spends exactly its budget and finishes; a random
# sweep's trials are the seed's first draws, and a TPE sweep's first 20
# (its random start-up) are the same draws; TPE's later trials are
# proposals (points no random draw of the seed made) that the worker logged;
# and TPE's best score, in mean over the 5 seeds, beats random search's.
# usage: test_search_e2e.sh BUILD_ROOT
set -u
build=${1:?usage: test_search_e2e.sh BUILD_ROOT}
[ -n "${CDS_TEST_REDIS_URL:-}" ] || { echo "Bail out! CDS_TEST_REDIS_URL is not set: run through scripts/with-services"; exit 1; }
. "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
BUDGET=36 SEEDS=5
prefix="t:search:$$:"
root=$(mktemp -d /tmp/cds-search-e2e.XXXXXX)
wpid=""
cleanup() { [ -z "$wpid" ] || kill -KILL "$wpid" 2>/dev/null; rm -rf "$root"; }
trap cleanup EXIT
rcli() { redis-cli -u "$CDS_TEST_REDIS_URL" "$@"; }
jobctl() { "$build/tools/jobctl" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" "$@"; }

rcli HSET "${prefix}dataset:fn" state ready version "$(printf '%064d' 1)" shards 1 splits '{"train":{"shards":1}}' >/dev/null
enq_rc=0
for ((s = 1; s <= SEEDS; s++)); do
    for kind in tpe random; do
        cat >"$root/$kind-$s.json" <<JSON
{"mode": "mop", "dataset": "fn", "epochs": 1, "seed": 1,
 "models": [{"arch": "diag.sleep", "ms": 0, "x": 0, "y": 0, "objective": {"x": 0.7, "y": -0.4}}],
 "train": {"optimizer": "sgd", "lr": 0.1},
 "search": {"kind": "$kind", "trials": $BUDGET, "seed": $s,
            "space": {"x": {"uniform": [-2, 2]}, "y": {"uniform": [-2, 2]}}}}
JSON
        jobctl enqueue sweep --spec "$root/$kind-$s.json" --id "$kind-$s" >/dev/null 2>>"$root/enqueue.err" || enq_rc=1
    done
done
ok "$enq_rc" "jobctl enqueue sweep: $SEEDS TPE and $SEEDS random sweeps of $BUDGET trials$([ $enq_rc = 0 ] || echo " ($(head -1 "$root/enqueue.err"))")"
is "$(rcli HGET "${prefix}sweep:{tpe-1}" models)" 20 "a TPE sweep starts with its 20 random start-up trials"

"$build/worker/cds-worker" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" --id w0 --shard 0 --data-root "$root" \
    --threads 1 --idle-exit 60 >>"$root/w0.log" 2>&1 &
wpid=$!
t0=$(date +%s%3N)
all_done() {
    for ((s = 1; s <= SEEDS; s++)); do
        for kind in tpe random; do [ "$(rcli HGET "${prefix}sweep:{$kind-$s}" state)" = done ] || return 1; done
    done
}
for _ in $(seq 1200); do all_done && break; sleep 0.1; done
ok "$(all_done; echo $?)" "all $((2 * SEEDS)) sweeps finish ($(( $(date +%s%3N) - t0 )) ms, one worker)"
kill -TERM "$wpid"; wait "$wpid"; wpid=""

# best valid_top1 of a sweep, and its models' points
best() { rcli HGETALL "${prefix}sweep:{$1}:models" | paste - - | awk '$1 ~ /\.best_top1$/ && $2 > b { b = $2 } END { printf "%.6f", b }'; }
points() { for ((m = 0; m < $2; m++)); do rcli HGET "${prefix}sweep:{$1}:models" "$m.point"; done; }
budget_bad="" prefix_bad="" sum_t=0 sum_r=0 lines=""
for ((s = 1; s <= SEEDS; s++)); do
    for kind in tpe random; do
        m=$(rcli HGET "${prefix}sweep:{$kind-$s}" models)
        [ "$m" = $BUDGET ] || budget_bad+=" $kind-$s:$m"
    done
    points "random-$s" $BUDGET >"$root/r$s.pts"
    points "tpe-$s" $BUDGET >"$root/t$s.pts"
    # the start-up: the same 20 draws; after it, TPE's own points
    [ "$(head -20 "$root/r$s.pts")" = "$(head -20 "$root/t$s.pts")" ] || prefix_bad+=" seed-$s:start-up-differs"
    [ "$(tail -n +21 "$root/t$s.pts" | grep -cxFf "$root/r$s.pts")" = 0 ] || prefix_bad+=" seed-$s:tpe-repeats-random"
    bt=$(best "tpe-$s") br=$(best "random-$s")
    lines+=" seed $s: TPE $bt, random $br;"
    sum_t=$(awk -v a="$sum_t" -v b="$bt" 'BEGIN { printf "%.6f", a + b }')
    sum_r=$(awk -v a="$sum_r" -v b="$br" 'BEGIN { printf "%.6f", a + b }')
done
ok "$([ -z "$budget_bad" ]; echo $?)" "every sweep spent exactly its budget of $BUDGET trials${budget_bad:+ (not:$budget_bad)}"
ok "$([ -z "$prefix_bad" ]; echo $?)" "TPE's first 20 trials are the random sweep's first 20 draws; its others are its own${prefix_bad:+ (wrong:$prefix_bad)}"
proposals=$(grep -c "proposed trial [0-9]* by TPE" "$root/w0.log")
is "$proposals" $((SEEDS * (BUDGET - 20))) "the worker proposed every trial after the start-up, each once"
echo "#$lines"
ok "$(awk -v t="$sum_t" -v r="$sum_r" 'BEGIN { exit !(t > r) }'; echo $?)" \
    "TPE's best score beats random search's in mean over $SEEDS seeds ($(awk -v t="$sum_t" -v r="$sum_r" -v n=$SEEDS 'BEGIN { printf "%.4f against %.4f; the optimum is 0.5", t / n, r / n }'))"
san=$(grep -l "runtime error\|AddressSanitizer\|LeakSanitizer" "$root"/*.log 2>/dev/null)
ok "$([ -z "$san" ]; echo $?)" "no sanitizer report in the worker's log"
[ "$failed" = 0 ] || tail -n 20 "$root/w0.log" | sed 's/^/#   /'
tap_done
