#!/usr/bin/env bash
# ETL as queue jobs, against the harness's real Redis and PostgreSQL:
# Fashion-MNIST from the Debian package into PostgreSQL and out into 2 shards
# (with a 10% validation split and the test table) through jobctl enqueue etl
# and two cds-worker processes; then a backend killed in the middle of a shard
# job: the job fails with a clear error, no partial shard is visible, and the
# retry succeeds; then the plan records the database it was made against, so
# workers without PG* variables (or with others) unload from it.
# usage: test_etl_queue.sh BUILD_ROOT
set -u
build=${1:?usage: test_etl_queue.sh BUILD_ROOT}
py=/usr/bin/python3
[ -n "${PGHOST:-}" ] && [ -n "${CDS_TEST_REDIS_URL:-}" ] || { echo "Bail out! run through scripts/with-services"; exit 1; }
export PGDATABASE=cds_etlq_$$
createdb "$PGDATABASE" || { echo "Bail out! createdb failed"; exit 1; }
root=$(mktemp -d /tmp/cds-etlq-test.XXXXXX)
prefix="t:etlq:$$:"
jobctl() { "$build/tools/jobctl" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" "$@"; }
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    dropdb --if-exists "$PGDATABASE" >/dev/null 2>&1; dropdb --if-exists "${PGDATABASE}_other" >/dev/null 2>&1
    rm -rf "$root"
}
trap cleanup EXIT
. "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
worker() { "$build/worker/cds-worker" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" --id "$1" --reap-every 0.2 "${@:2}" 2>>"$root/$1.log" & pids+=($!); }
wait_state() { # JOB STATE SECONDS
    for _ in $(seq $(($3 * 10))); do
        [ "$(jobctl show "$1" --json | $py -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = "$2" ] && return 0
        sleep 0.1
    done
    return 1
}

"$build/tools/load-fashion-mnist" >/dev/null
ok $? "load-fashion-mnist fills fashion_mnist_train and fashion_mnist_test"
cat >"$root/fm.json" <<JSON
{"table": "fashion_mnist_train", "features": ["pixels"], "label": "label", "feature_shape": [28, 28, 1],
 "dtype": "uint8", "valid_fraction": 0.1, "test_table": "fashion_mnist_test",
 "dataset": "fmnist", "shards": 2, "data_root": "$root"}
JSON
id=$(jobctl enqueue etl --spec "$root/fm.json" 2>/dev/null)
ok $? "jobctl enqueue etl prints the finishing job's id ($id)"
rec=$(redis-cli -u "$CDS_TEST_REDIS_URL" HGET "${prefix}dataset:fmnist" state)
ok "$([ "$rec" = loading ]; echo $?)" "the dataset record says loading"
worker fm-a --idle-exit 3
worker fm-b --idle-exit 3
wait_state "$id" done 120
ok $? "two workers run the 6 shard jobs and the finishing job"
wait "${pids[@]}" 2>/dev/null; pids=()
ok "$([ "$(redis-cli -u "$CDS_TEST_REDIS_URL" HGET "${prefix}dataset:fmnist" state)" = ready ]; echo $?)" "the dataset record says ready"
ok "$([ "$(grep -c 'etl.shard done' "$root/fm-a.log")" -ge 1 ] && [ "$(grep -c 'etl.shard done' "$root/fm-b.log")" -ge 1 ]; echo $?)" "both workers unloaded shards"
$py - "$root/datasets/fmnist" "$(redis-cli -u "$CDS_TEST_REDIS_URL" HGET "${prefix}dataset:fmnist" version)" <<'PY'
import json, sys, numpy as np
d, version = sys.argv[1], sys.argv[2]
rows = {}
for split in ("train", "valid", "test"):
    rows[split] = 0
    for k in (0, 1):
        x = np.load(f"{d}/{split}/shard-{k}/x.npy", mmap_mode="r")
        y = np.load(f"{d}/{split}/shard-{k}/y.npy", mmap_mode="r")
        m = json.load(open(f"{d}/{split}/shard-{k}/manifest.json"))
        assert x.shape[1:] == (28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int32, (x.shape, x.dtype)
        assert len(x) == len(y) == m["rows"] and m["dataset_version"] == version
        assert y.min() >= 0 and y.max() <= 9
        rows[split] += len(y)
assert rows["train"] + rows["valid"] == 60000 and rows["test"] == 10000, rows
assert 5000 < rows["valid"] < 7000, rows
print("# rows", rows)
PY
ok $? "numpy loads every shard: 60,000 train+valid rows (about 10% valid), 10,000 test, one version"
# What each shard job cost: res:<split>:<k> in the record, and the same in
# the job's result (jobctl show).  A shard job runs on two threads (the COPY
# stream and the shard writer) beside the worker's idle ones: its CPU time
# is at most 3 times its wall time, with a margin for the clock's grain.
done_ids=$(jobctl list --state done --limit 100 --json | $py -c 'import json,sys; print(" ".join(j["id"] for j in json.load(sys.stdin) if j["type"] == "etl.shard"))')
for j in $done_ids; do jobctl show "$j" --json; done >"$root/shard-jobs.json"
jobctl show "${done_ids%% *}" >"$root/shard-show.txt" 2>&1
$py - "${prefix}dataset:fmnist" "$root/shard-jobs.json" <<'PY'
import json, os, subprocess, sys
def hget(field):
    return subprocess.run(["redis-cli", "-u", os.environ["CDS_TEST_REDIS_URL"], "HGET", sys.argv[1], field],
                          capture_output=True, text=True, check=True).stdout.strip()
rec = {f"{w}:{s}:{k}": hget(f"{w}:{s}:{k}") for w in ("rows", "res") for s in ("train", "valid", "test") for k in (0, 1)}
text, jobs, dec = open(sys.argv[2]).read(), [], json.JSONDecoder()
while text.strip():
    job, end = dec.raw_decode(text.strip())
    jobs.append(job)
    text = text.strip()[end:]
results = {(r["split"], r["shard"]): r for r in (json.loads(j["result"]) for j in jobs)}
assert len(results) == 6, sorted(results)
for split in ("train", "valid", "test"):
    for k in (0, 1):
        res = json.loads(rec[f"res:{split}:{k}"])
        rows = int(rec[f"rows:{split}:{k}"])
        assert res["wall_s"] > 0 and 0 <= res["cpu_s"] <= res["wall_s"] * 3 + 0.05, res
        assert res["bytes_read"] >= rows * 784, (rows, res)  # 784 pixels a row, a byte or more each
        assert res["peak_rss_mb"] > 0, res
        r = results[(split, k)]
        assert r["dataset"] == "fmnist" and r["rows"] == rows and r["res"] == res, (r, res)
        print(f"# {split} shard {k}: {rows} rows, {res['bytes_read']} bytes read, {res['wall_s']:.2f} s wall, "
              f"{res['cpu_s']:.2f} s CPU, {res['peak_rss_mb']:.0f} MB peak")
PY
ok $? "every shard's res:<split>:<k> (wall, CPU <= 3 x wall, bytes read >= 784 a row, peak memory) and its job's result"
grep -q '^result .*"bytes_read"' "$root/shard-show.txt"
ok $? "jobctl show prints a shard job's result with its resources"

# A backend killed in the middle of a shard job.
psql -X -q -c "CREATE TABLE slow (id int PRIMARY KEY, a real, lab int)"
psql -X -q -c "INSERT INTO slow SELECT i, i, i % 2 FROM generate_series(1, 3000) i"
cat >"$root/slow.json" <<JSON
{"table": "slow", "features": ["a"], "label": "lab", "dataset": "slow", "shards": 1, "data_root": "$root",
 "where": "pg_sleep(0.001) IS NOT NULL"}
JSON
id=$(jobctl enqueue etl --spec "$root/slow.json" 2>/dev/null)
worker slow-a
killed=1
for _ in $(seq 200); do
    pid=$(psql -X -At -c "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'COPY (SELECT%slow%' AND pid <> pg_backend_pid() LIMIT 1")
    if [ -n "$pid" ]; then psql -X -At -c "SELECT pg_terminate_backend($pid)" >/dev/null; killed=0; break; fi
    sleep 0.05
done
ok $killed "the shard job's COPY backend was terminated mid-stream"
for _ in $(seq 600); do grep -q "failed (" "$root/slow-a.log" && break; sleep 0.1; done
grep "failed (" "$root/slow-a.log" | head -1 | grep -q "terminating connection\|connection"
ok $? "the shard job fails with a clear error ($(grep -o 'failed (.\{0,90\}' "$root/slow-a.log" | head -1))"
ls -a "$root/datasets" | grep -q "^slow$"; [ $? -ne 0 ] && ! find "$root/datasets" -path '*slow*' -name 'shard-0' | grep -q .
ok $? "no shard of the failed attempt is visible"
wait_state "$id" done 60
ok $? "the retry succeeds and the dataset is finished"
$py -c "import numpy as np; y = np.load('$root/datasets/slow/train/shard-0/y.npy'); assert len(y) == 3000"
ok $? "with all 3000 rows"
# The plan names the database it was made against: enqueued with the
# connection only in PG* variables (no dsn), the stored plan holds host (the
# socket directory), port, dbname and user, and no password; workers with no
# PG* variables, or with PGDATABASE naming another database that has a table
# of the same name, unload from the planned database.
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; pids=()
other=${PGDATABASE}_other
createdb "$other" || { echo "Bail out! createdb $other failed"; exit 1; }
psql -X -q -c "CREATE TABLE twin (id int PRIMARY KEY, a real, lab int)" \
    -c "INSERT INTO twin SELECT i, i, i % 2 FROM generate_series(1, 20) i"
psql -X -q -d "$other" -c "CREATE TABLE twin (id int PRIMARY KEY, a real, lab int)" \
    -c "INSERT INTO twin SELECT i, -i, i % 2 FROM generate_series(1, 20) i"
for ds in twin twin2; do
    dsn=
    [ $ds = twin2 ] && dsn='"dsn": "password=sekrit2 application_name=cdsq",'
    echo "{$dsn \"table\": \"twin\", \"features\": [\"a\"], \"label\": \"lab\", \"dataset\": \"$ds\", \"shards\": 2, \"data_root\": \"$root\"}" >"$root/$ds.json"
done
id1=$(PGPASSWORD=sekrit1 jobctl enqueue etl --spec "$root/twin.json" 2>"$root/enq.err")
ok $? "jobctl enqueue etl with no dsn, the connection in PG* variables and PGPASSWORD"
$py - "$(redis-cli -u "$CDS_TEST_REDIS_URL" HGET "${prefix}dataset:twin" plan)" <<PY
import json, sys
dsn = json.loads(sys.argv[1])["spec"]["dsn"]
want = "host='$PGHOST' port='$PGPORT' dbname='$PGDATABASE' user='$PGUSER'"
print("# plan dsn:", dsn)
sys.exit(0 if dsn.startswith(want) and "password" not in dsn and "sekrit" not in dsn else 1)
PY
ok $? "the stored plan's dsn names the socket directory, port, database and user, and no password"
# Every hash and string value under the prefix, as text.
redis_text() {
    redis-cli -u "$CDS_TEST_REDIS_URL" --scan --pattern "${prefix}*" | while read -r k; do
        case $(redis-cli -u "$CDS_TEST_REDIS_URL" TYPE "$k") in
        hash) redis-cli -u "$CDS_TEST_REDIS_URL" HGETALL "$k" ;;
        string) redis-cli -u "$CDS_TEST_REDIS_URL" GET "$k" ;;
        esac
    done
}
nopg=()
for v in $(env | sed -n 's/^\(PG[A-Z_]*\)=.*/\1/p'); do nopg+=(-u "$v"); done
env "${nopg[@]}" "$build/worker/cds-worker" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" --id nopg --reap-every 0.2 --idle-exit 2 2>>"$root/nopg.log" & pids+=($!)
nopg_pid=$!
wait_state "$id1" done 60 && [ "$(grep -c 'etl.shard done' "$root/nopg.log")" -eq 2 ]
ok $? "a worker with no PG* variables unloads the shards of the plan"
wait "$nopg_pid" 2>/dev/null
id2=$(jobctl enqueue etl --spec "$root/twin2.json" 2>>"$root/enq.err")
dsn2=$(redis-cli -u "$CDS_TEST_REDIS_URL" HGET "${prefix}dataset:twin2" plan | $py -c 'import json,sys; print(json.load(sys.stdin)["spec"]["dsn"])')
case "$dsn2" in *"dbname='$PGDATABASE'"*"application_name='cdsq'"*) ! redis_text | grep -q sekrit ;; *) false ;; esac
ok $? "a DSN given with a password: stored with its other settings ($dsn2), no password anywhere in Redis"
PGDATABASE=$other worker otherdb --idle-exit 2
other_pid=$!
wait_state "$id2" done 60 && [ "$(grep -c 'etl.shard done' "$root/otherdb.log")" -eq 2 ]
ok $? "a worker whose PGDATABASE names another database unloads the shards from the planned one"
wait "$other_pid" 2>/dev/null
for ds in twin twin2; do
    $py -c "
import numpy as np
x = np.concatenate([np.load('$root/datasets/$ds/train/shard-%d/x.npy' % k)[:, 0] for k in (0, 1)])
assert sorted(x) == list(range(1, 21)), sorted(x)"
    ok $? "$ds: the 20 rows of twin in the planned database (not the same-named table in $other)"
done
dropdb --if-exists "$other" >/dev/null 2>&1

tap_done
