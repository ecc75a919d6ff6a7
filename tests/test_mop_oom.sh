#!/usr/bin/env bash
# A model that does not fit the worker's memory fails alone, with the reason,
# and the rest of its sweep goes on (issue: "Control and failure").
#
# A sweep of three MLPs on a small synthetic table: two tiny ones and one
# whose parameters alone are 4.3 GB (16 -> 32768 -> 32768 -> 2).  The worker
# runs with its memory capped so that allocation fails: `ulimit -v` (3 GB of
# address space) in a plain build; in an AddressSanitizer build, whose shadow
# memory rules out an address-space limit, ASan's own max_allocation_size_mb
# with allocator_may_return_null.  Checks: the big model is failed with an
# "out of memory" reason naming the worker, after one try (no retry loop);
# the two others finish both epochs; the sweep is done; the worker is still
# running afterwards.  usage: test_mop_oom.sh BUILD_ROOT
set -u
. "$(dirname "${BASH_SOURCE[0]}")/mop_env.sh" oom "${1:?usage: test_mop_oom.sh BUILD_ROOT}"

if ldd "$build/worker/cds-worker" | grep -q libasan; then
    cap_env=("ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}allocator_may_return_null=1:max_allocation_size_mb=2048")
    how="ASan max_allocation_size_mb=2048"
else
    cap_env=()
    worker_wrap="ulimit -v 3000000;"
    how="ulimit -v 3 GB"
fi
worker() { worker_bg "$1" "${cap_env[@]}" -- "${@:2}"; } # ID ARGS...: a worker under the memory cap

psql -X -q -c "CREATE TABLE pts AS SELECT i AS id, array_fill((i % 7)::real / 7, ARRAY[16]) AS x, i % 2 AS label
               FROM generate_series(1, 600) i; ALTER TABLE pts ADD PRIMARY KEY (id)" || { echo "Bail out! cannot create the table"; exit 1; }
cat >"$root/etl.json" <<JSON
{"table": "pts", "features": ["x"], "label": "label", "valid_fraction": 0.2,
 "dataset": "pts", "shards": 1, "data_root": "$root"}
JSON
jobctl enqueue etl --spec "$root/etl.json" >/dev/null 2>"$root/err"
ok $? "jobctl enqueue etl $(tail -1 "$root/err")"
worker etl --idle-exit 2
wait "${pids[@]}"; pids=()
ok "$([ "$(rcli HGET "${prefix}dataset:pts" state)" = ready ]; echo $?)" "the dataset is ready"

cat >"$root/sweep.json" <<'JSON'
{"mode": "mop", "dataset": "pts", "epochs": 2, "seed": 5,
 "models": [{"arch": "mlp", "input": [16], "hidden": [8], "classes": 2},
            {"arch": "mlp", "input": [16], "hidden": [32768, 32768], "classes": 2}],
 "grid": {"optimizer": ["adam"], "lr": [0.01, 0.001], "batch": [32]}}
JSON
jobctl enqueue sweep --spec "$root/sweep.json" --id oom >/dev/null 2>"$root/err"
ok $? "a sweep of 4 models, two of them too big for the worker's memory ($how)"

worker w0 --shard 0 --idle-exit 6
w0=${pids[0]}
for _ in $(seq 600); do
    [ "$(rcli HGET "${prefix}sweep:{oom}" state)" = done ] && break
    sleep 0.1
done
ok "$([ "$(rcli HGET "${prefix}sweep:{oom}" state)" = done ]; echo $?)" "the sweep finishes"
for m in 2 3; do
    reason=$(rcli HGET "${prefix}sweep:{oom}:models" "$m.reason")
    ok "$([ "$(rcli HGET "${prefix}sweep:{oom}:models" "$m.state")" = failed ] &&
          [[ "$reason" == "out of memory on worker w0: "*"out of memory"* ]]; echo $?)" \
        "model $m (32768 x 32768) failed with the reason: $reason"
    ok "$([ "$(rcli HGET "${prefix}sweep:{oom}:models" "$m.version")" = 0 ] &&
          [ "$(grep -c "model $m failed" "$root/w0.log")" = 1 ]; echo $?)" \
        "model $m was tried once, not released and retried"
done
for m in 0 1; do
    ok "$([ "$(rcli HGET "${prefix}sweep:{oom}:models" "$m.state")" = done ] &&
          [ "$(rcli HGET "${prefix}sweep:{oom}:models" "$m.epoch")" = 2 ]; echo $?)" \
        "model $m (hidden 8) trained both epochs"
done
ok "$(kill -0 "$w0" 2>/dev/null; echo $?)" "the worker survived the failed allocations"
kill -TERM "$w0" 2>/dev/null
wait "${pids[@]}"; pids=()
if [ "$failed" != 0 ]; then
    echo "# w0.log:"; sed 's/^/# /' "$root/w0.log" | tail -30
fi
tap_done
