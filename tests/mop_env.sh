# Shared set-up of the MOP shell tests that need Redis, PostgreSQL and
# workers (sourced, not run): test_mop_e2e.sh, test_mop_faults.sh and
# test_mop_oom.sh, and the DDP tests (test_ddp_e2e.sh, test_ddp_chaos.sh).
#
#   . "$(dirname "${BASH_SOURCE[0]}")/mop_env.sh" NAME BUILD_ROOT
#
# Bails out unless run through scripts/with-services; gives the test its own
# database (PGDATABASE=cds_NAME_<pid>), Redis key prefix (t:NAME:<pid>:) and
# data root ($root), removed on exit together with every worker started
# through worker_bg or worker; and defines ok (TAP), jobctl and rcli.  $n
# and $failed count the checks.
mop_name=$1
build=$2
[ -n "${PGHOST:-}" ] && [ -n "${CDS_TEST_REDIS_URL:-}" ] || { echo "Bail out! run through scripts/with-services"; exit 1; }
export PGDATABASE=cds_${mop_name}_$$
createdb "$PGDATABASE" || { echo "Bail out! createdb $PGDATABASE failed"; exit 1; }
prefix="t:$mop_name:$$:"
root=$(mktemp -d "/tmp/cds-mop-$mop_name.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
    dropdb --if-exists "$PGDATABASE" >/dev/null 2>&1
    rm -rf "$root"
}
trap cleanup EXIT
. "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
jobctl() { "$build/tools/jobctl" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" "$@"; }
rcli() { redis-cli -u "$CDS_TEST_REDIS_URL" "$@"; }
# worker_bg ID [ENV...] -- ARGS...: a cds-worker in the background, its log
# in $root/ID.log, its pid in pids; ENV (NAME=VALUE words, or a shell prefix
# in $worker_wrap, e.g. "ulimit -v N;") applies to it alone.
worker_wrap=""
worker_bg() {
    local id=$1; shift
    local env=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do env+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    bash -c "$worker_wrap exec \"\$@\"" worker env "${env[@]}" "$build/worker/cds-worker" --redis "$CDS_TEST_REDIS_URL" \
        --prefix "$prefix" --id "$id" --reap-every 0.5 --data-root "$root" --threads 1 "$@" 2>>"$root/$id.log" &
    pids+=($!)
}
# worker ID ARGS...: worker_bg without environment (a test may redefine it,
# as test_mop_oom.sh does to run every worker under its memory cap).
worker() { worker_bg "$1" -- "${@:2}"; }
# auto_device: what a worker's default --device auto resolves to here,
# cuda:0 when cds-gpu-info finds a device (it exits 3 when there is none),
# else cpu (a test that calls it depends on cds_gpu_info in meson.build).
auto_device() {
    "$build/tools/cds-gpu-info" >/dev/null 2>&1
    if [ $? = 3 ]; then echo cpu; else echo cuda:0; fi
}
# fm_dataset WHERE VALID_FRACTION: loads Fashion-MNIST and makes dataset fm
# in 2 shards of the rows WHERE selects, through jobctl enqueue etl and a
# worker (3 checks); $root/etl.json is its ETL spec, for variants.
fm_dataset() {
    "$build/tools/load-fashion-mnist" >/dev/null
    ok $? "Fashion-MNIST loaded"
    cat >"$root/etl.json" <<JSON
{"table": "fashion_mnist_train", "features": ["pixels"], "label": "label", "feature_shape": [28, 28, 1],
 "dtype": "uint8", "where": "$1", "valid_fraction": $2, "test_table": "fashion_mnist_test",
 "dataset": "fm", "shards": 2, "data_root": "$root"}
JSON
    jobctl enqueue etl --spec "$root/etl.json" >/dev/null 2>"$root/err"
    ok $? "jobctl enqueue etl"
    worker etl --idle-exit 2
    wait "${pids[@]}"; pids=()
    ok "$([ "$(rcli HGET "${prefix}dataset:fm" state)" = ready ]; echo $?)" "the dataset is ready"
}
