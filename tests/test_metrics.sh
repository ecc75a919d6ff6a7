#!/usr/bin/env bash
# cds-worker --metrics-port and jobctl top (docs/operations.md) against the
# real Redis of scripts/with-services: a worker serving shard 0 of a
# diag.sleep sweep (2 models x 3 epochs of 1 shard) and a queue job; its
# /metrics, scraped during a visit and after, parsed by Prometheus's own
# text parser (Debian's python3-prometheus-client): the worker's labels, its
# state, the visit in flight, the counters equal to what it did; a path
# other than /metrics is a 404; a port in use and a bad port are one line
# each and a non-zero exit; jobctl top shows the worker with its counts.
# Then the depth of its queue: 0 idle, 3 while it runs a long job with 3
# more waiting, as jobctl stats counts them; and on the CPU no GPU gauges,
# and no NVML loaded at all (the dynamic loader's own log, LD_DEBUG=libs).
# usage: test_metrics.sh BUILD_ROOT
set -u
. "$(dirname "${BASH_SOURCE[0]}")/redis_env.sh" metrics "${1:?usage: test_metrics.sh BUILD_ROOT}"
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
scrape() { "$py" -c 'import sys, urllib.request
r = urllib.request.urlopen("http://127.0.0.1:%s%s" % (sys.argv[1], sys.argv[2]), timeout=5)
print(r.headers["Content-Type"]); sys.stdout.write(r.read().decode())' "$port" "${1:-/metrics}"; }

"$build/worker/cds-worker" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" --id mw0 --shard 0 --data-root "$root" \
    --threads 1 --metrics-port 0 >/dev/null 2>"$root/bad.err"
rc=$?
ok "$([ $rc = 2 ] && [ "$(wc -l <"$root/bad.err")" = 1 ] && grep -q 'metrics-port' "$root/bad.err"; echo $?)" \
    "--metrics-port 0 is a usage error in one line (exit $rc: $(head -1 "$root/bad.err"))"

rcli HSET "${prefix}dataset:sl" state ready version "$(printf '%064d' 1)" shards 1 splits '{"train":{"shards":1}}' >/dev/null
cat >"$root/s.json" <<JSON
{"mode": "mop", "dataset": "sl", "epochs": 3, "seed": 1, "models": [{"arch": "diag.sleep", "ms": 400}],
 "train": {"optimizer": "sgd"}, "grid": {"lr": [0.1, 0.2]}}
JSON
LD_DEBUG=libs LD_DEBUG_OUTPUT="$root/ld" "$build/worker/cds-worker" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" \
    --id mw0 --device cpu --shard 0 --data-root "$root" --threads 1 --metrics-port "$port" --idle-exit 30 2>"$root/w.log" &
wpid=$!; pids+=("$wpid")
up=1
for _ in $(seq 100); do scrape >/dev/null 2>&1 && { up=0; break; }; sleep 0.05; done
ok $up "the worker serves http://127.0.0.1:$port/metrics"

"$build/worker/cds-worker" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" --id mw1 --shard 0 --data-root "$root" \
    --threads 1 --metrics-port "$port" --idle-exit 5 >/dev/null 2>"$root/inuse.err"
rc=$?
ok "$([ $rc = 2 ] && [ "$(wc -l <"$root/inuse.err")" = 1 ] && grep -q 'another process has it' "$root/inuse.err"; echo $?)" \
    "a second worker on the same port stops at start in one line (exit $rc: $(head -1 "$root/inuse.err"))"

jobctl enqueue diag.sleep --payload '{"ms": 10}' >/dev/null
jobctl enqueue sweep --spec "$root/s.json" --id ms >/dev/null 2>"$root/err"
ok $? "a sweep of 2 diag.sleep models x 3 epochs enqueued"
during=""
for _ in $(seq 200); do
    scrape >"$root/during.txt" 2>/dev/null && grep -q '^cds_worker_current{' "$root/during.txt" && { during=1; break; }
    sleep 0.02
done
for _ in $(seq 300); do [ "$(rcli HGET "${prefix}sweep:{ms}" state)" = done ] && break; sleep 0.05; done
sleep 1.2 # the idle loop's second: the last commit is counted
scrape >"$root/after.txt" 2>/dev/null
scrape /nope >/dev/null 2>"$root/404.err"
ok "$(grep -q '404' "$root/404.err"; echo $?)" "a path other than /metrics is a 404"

check() { # FILE WHAT: the parser's view of a scrape, as "name{labels} value" lines
    "$py" - "$1" <<'PY'
import sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1]).read()
ctype, body = text.split("\n", 1)
assert ctype.startswith("text/plain; version=0.0.4"), ctype
for fam in text_string_to_metric_families(body):
    for s in fam.samples:
        print(s.name, ",".join("%s=%s" % kv for kv in sorted(s.labels.items())), s.value)
PY
}
check "$root/during.txt" >"$root/during.parsed" 2>"$root/parse.err"
ok "$([ -n "$during" ] && grep -q '^cds_worker_current .*what=ms/' "$root/during.parsed" &&
      grep -q '^cds_worker_state state=busy,worker=mw0 1.0' "$root/during.parsed"; echo $?)" \
    "during a visit the scrape parses and says busy, holding sweep ms's model$([ -s "$root/parse.err" ] && echo " ($(tail -1 "$root/parse.err"))")"
check "$root/after.txt" >"$root/after.parsed" 2>>"$root/parse.err"
val() { awk -v n="$1" -v l="$2" '$1 == n && $2 == l { print $3 }' "$root/after.parsed"; }
ok "$([ "$(val cds_worker_visits_total worker=mw0)" = 6.0 ] && [ "$(val cds_worker_jobs_total outcome=done,worker=mw0)" = 1.0 ] &&
      [ "$(val cds_worker_state state=idle,worker=mw0)" = 1.0 ] &&
      [ "$(val cds_worker_info device=cpu,host=$(hostname),shard=0,worker=mw0)" = 1.0 ] &&
      [ -n "$(val cds_worker_resident_bytes worker=mw0)" ]; echo $?)" \
    "after the sweep Prometheus's parser reads 6 visits, 1 job done, idle, the worker's labels and its memory"
# Every metric the Grafana dashboard draws is one the worker exports (the
# GPU gauges only with a GPU: they are absent here, and their names are
# checked against the source instead).
ok "$("$py" - "${CDS_SOURCE_ROOT:?}/jobs/grafana-workers.json" "$root/after.txt" "${CDS_SOURCE_ROOT}/worker/worker_metrics.c" <<'PY'
import json, re, sys
dash = json.load(open(sys.argv[1]))
names = {n for p in dash["panels"] for t in p.get("targets", []) for n in re.findall(r"cds_worker_[a-z_]+", t["expr"])}
scraped = set(re.findall(r"^(cds_worker_[a-z_]+)", open(sys.argv[2]).read(), re.M))
source = open(sys.argv[3]).read()
missing = sorted(n for n in names if n not in scraped and not (n.startswith("cds_worker_gpu_") and '"%s"' % n in source))
print("# dashboard metrics:", len(names), "missing:", missing, file=sys.stderr)
print(0 if names and not missing else 1)
PY
)" "every metric of jobs/grafana-workers.json is exported (the GPU ones by name in the source)"
jobctl top --once >"$root/top.txt" 2>&1
ok "$(grep -q '^workers under .*: 1 alive' "$root/top.txt" && grep -qE '^mw0 +idle +- +cpu +- +- +6 ' "$root/top.txt"; echo $?)" \
    "jobctl top --once shows the worker, idle, with its 6 visits"
jobctl top --json >/dev/null 2>"$root/err"
ok "$([ $? = 2 ] && grep -q 'needs --once' "$root/err"; echo $?)" "jobctl top --json without --once is refused"

# The queue's depth, as the heartbeat reads it once a second: a job of
# 2.5 s in hand and 3 more enqueued behind it hold the depth at 3.
depth() { scrape 2>/dev/null | awk '$1 ~ /^cds_worker_queue_depth\{/ && /queue="default"/ { print $2 }'; }
is "$(val cds_worker_queue_depth queue=default,worker=mw0)" 0.0 "an idle worker's queue depth is 0"
long=$(jobctl enqueue diag.sleep --payload '{"ms": 2500}' 2>/dev/null)
for _ in $(seq 100); do scrape 2>/dev/null | grep -q "^cds_worker_current{.*what=\"$long\"" && break; sleep 0.02; done
for _ in 1 2 3; do jobctl enqueue diag.sleep --payload '{"ms": 10}' >/dev/null; done
seen=""
for _ in $(seq 100); do seen=$(depth); [ "$seen" = 3 ] && break; sleep 0.02; done
waiting=$(jobctl stats --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["default"]["waiting"])')
ok "$([ "$seen" = 3 ] && [ "$waiting" = 3 ]; echo $?)" \
    "with a job in hand and 3 behind it: cds_worker_queue_depth{queue=\"default\"} $seen, jobctl stats $waiting waiting"
for _ in $(seq 200); do seen=$(depth); [ "$seen" = 0 ] && break; sleep 0.02; done
is "$seen" 0 "once they ran, the depth is 0 again"
ok "$(! grep -q '^cds_worker_gpu_' "$root/after.txt"; echo $?)" "a worker on the CPU has no GPU gauges"
ls "$root"/ld.* >/dev/null 2>&1 && grep -q 'find library=' "$root"/ld.* && ! grep -q 'nvidia-ml' "$root"/ld.*
ok $? "a worker on the CPU never loads NVML (the loader's log names no libnvidia-ml)"
kill -TERM "$wpid"; wait "$wpid"; wpid=""; pids=()
tap_done
