#!/usr/bin/env bash
# The hybrid (DESIGN.md §6, docs/search.md) through real workers, against
# the real Redis and PostgreSQL of scripts/with-services: in a MOP sweep
# with fewer models than workers, idle workers train a model left as a
# data-parallel gang, an epoch at a time.
#   spec     "hybrid" takes true or false, and only in a MOP sweep: the
#            rest is refused in one line, nothing created;
#   sleep    one diag.sleep model on 4 shards and 4 workers, 3 epochs, with
#            the hybrid and without: every (epoch, shard) once in both
#            schedules; with it, gangs of W >= 2 ranks dividing the batch
#            trained some epochs whole (their K entries carry g<W> and one
#            version), without it none did; the makespans are printed;
#   training one mlp on a Fashion-MNIST subset in 4 shards, 4 workers, 3
#            epochs: some epochs trained by gangs, no bigger than the
#            host's cores hold (the workers' ready marks say so), whose ranks between them
#            read every training row exactly once (Join: a rank past its
#            shards takes shadow steps), every epoch evaluated; a replay
#            forms the same gangs at the same epochs and its checkpoints
#            are bit-identical to the original's.
# usage: test_mop_hybrid.sh BUILD_ROOT
set -u
py=/usr/bin/python3
. "$(dirname "${BASH_SOURCE[0]}")/mop_env.sh" hybrid "${1:?usage: test_mop_hybrid.sh BUILD_ROOT}"
K=4

# ---- the spec ------------------------------------------------------------------------
rcli HSET "${prefix}dataset:sl" state ready version "$(printf '%064d' 1)" shards $K \
    splits "{\"train\":{\"shards\":$K}}" >/dev/null
# sleep_spec HYBRID MODE: a sweep of one diag.sleep model (300 ms a visit).
sleep_spec() {
    cat <<JSON
{"mode": "$2", "dataset": "sl", "epochs": 3, "seed": 1, "hybrid": $1,
 "models": [{"arch": "diag.sleep", "ms": 300}], "train": {"optimizer": "sgd", "lr": 0.1, "batch": 64}}
JSON
}
refused() { # FILE ID WHAT PATTERN
    jobctl enqueue sweep --spec "$1" --id "$2" >/dev/null 2>"$root/err"
    local rc=$?
    ok "$([ $rc = 2 ] && [ "$(wc -l <"$root/err")" = 1 ] && grep -q "$4" "$root/err" &&
          [ "$(rcli EXISTS "${prefix}sweep:{$2}")" = 0 ]; echo $?)" "$3 is refused in one line, nothing created (exit $rc: $(cat "$root/err"))"
}
sleep_spec '"yes"' mop >"$root/bad1.json"
refused "$root/bad1.json" bad1 '"hybrid": "yes"' '\$.hybrid: must be true or false'
sleep_spec true ddp >"$root/bad2.json"
refused "$root/bad2.json" bad2 'the hybrid in a DDP sweep' '\$.hybrid: a ddp sweep trains every model as a gang already'

# ---- scheduling, with diag.sleep models ----------------------------------------------
start_workers() {
    for ((k = 0; k < K; k++)); do worker "w$k" --shard $k --ddp-timeout 5; done
}
stop_workers() {
    kill -TERM "${pids[@]}" 2>/dev/null
    wait "${pids[@]}"
    pids=()
}
# run ID SPEC: enqueue, wait until the sweep is done; prints its makespan (ms).
run() {
    local t0
    jobctl enqueue sweep --spec "$2" --id "$1" >/dev/null 2>"$root/err" || { cat "$root/err" >&2; return 1; }
    t0=$(date +%s%3N)
    for _ in $(seq 1200); do
        [ "$(rcli HGET "${prefix}sweep:{$1}" state)" = done ] && break
        sleep 0.05
    done
    echo $(( $(rcli HGET "${prefix}sweep:{$1}" finished) - $(rcli HGET "${prefix}sweep:{$1}" created) ))
    [ "$(rcli HGET "${prefix}sweep:{$1}" state)" = done ]
}
# Each (epoch, shard) of model 0 once; every gang epoch whole: K entries,
# one version, one W (2 <= W <= K, dividing 64); prints the gang epochs.
check_schedule() { # ID EPOCHS
    rcli LRANGE "${prefix}sweep:{$1}:schedule" 0 -1 >"$root/$1.schedule"
    awk -v E="$2" -v K=$K '
        { n++; key = $2 " " $3; if (seen[key]++ || $3 < 0 || $3 >= K || $2 < 1 || $2 > E) bad = 1
          if (NF == 6) { w = substr($6, 2) + 0; g[$2]++; gv[$2 " " $4] = 1; gw[$2 " " w] = 1
                         if (w < 2 || w > K || 64 % w) bad = 1 } }
        END { if (n != E * K) bad = 1
              for (e in g) { nv = 0; nw = 0
                             for (k in gv) if (split(k, a, " ") && a[1] == e) nv++
                             for (k in gw) if (split(k, a, " ") && a[1] == e) nw++
                             if (g[e] != K || nv != 1 || nw != 1) bad = 1; out = out " " e }
              print (bad ? "bad" : "ok") out }' "$root/$1.schedule" | { read -r v e; echo "$v $(echo $e | tr ' ' '\n' | sort -n | xargs)"; }
}
start_workers
sleep_spec false mop >"$root/off.json"
sleep_spec true mop >"$root/on.json"
t_off=$(run off "$root/off.json")
ok $? "without the hybrid the sleep sweep finishes (${t_off} ms)"
t_on=$(run on "$root/on.json")
ok $? "with the hybrid the sleep sweep finishes (${t_on} ms)"
read -r v_off g_off <<<"$(check_schedule off 3)"
read -r v_on g_on <<<"$(check_schedule on 3)"
ok "$([ "$v_off" = ok ] && [ -z "$g_off" ]; echo $?)" "without the hybrid: every (epoch, shard) visited once, no gang"
ok "$([ "$v_on" = ok ] && [ -n "$g_on" ]; echo $?)" \
    "with it: every (epoch, shard) once, and gangs trained epoch(s)${g_on:- none}, each whole (K entries, one version and W)"
left=$(ls "$root/sweeps/on/models/0" | grep -vx "$(basename "$(rcli HGET "${prefix}sweep:{on}:models" 0.ckpt)")" | xargs)
ok "$([ -z "$left" ]; echo $?)" "the model's directory holds only its committed checkpoint${left:+ (also: $left)}"
st_on=$(jobctl status on 2>&1 | head -1) st_off=$(jobctl status off 2>&1 | head -1)
ok "$([[ $st_on == "sweep on (done, mop, hybrid): 12 of 12 visits"* ]] && [[ $st_off == "sweep off (done, mop): 12 of 12 visits"* ]]; echo $?)" \
    "jobctl status says whether the hybrid is on ($st_on / $st_off)"
echo "# makespan of 1 model x $K shards x 3 epochs of 300 ms visits on $K workers: ${t_off} ms MOP, ${t_on} ms hybrid"
stop_workers

# ---- training ------------------------------------------------------------------------
"$build/tools/load-fashion-mnist" >/dev/null
ok $? "Fashion-MNIST loaded"
cat >"$root/etl.json" <<JSON
{"table": "fashion_mnist_train", "features": ["pixels"], "label": "label", "feature_shape": [28, 28, 1],
 "dtype": "uint8", "where": "id < 1200", "valid_fraction": 0.1, "test_table": "fashion_mnist_test",
 "dataset": "fm4", "shards": $K, "data_root": "$root"}
JSON
jobctl enqueue etl --spec "$root/etl.json" >/dev/null 2>"$root/err"
worker etl --idle-exit 2
wait "${pids[@]}"; pids=()
ok "$([ "$(rcli HGET "${prefix}dataset:fm4" state)" = ready ]; echo $?)" "dataset fm4 in $K shards"
cat >"$root/fm.json" <<JSON
{"mode": "mop", "dataset": "fm4", "epochs": 3, "seed": 3,
 "models": [{"arch": "mlp", "input": [784], "hidden": [32], "classes": 10, "dropout": 0.1}],
 "train": {"normalize": {"scale": 0.00392156862745098, "mean": [0.286], "std": [0.353]}},
 "grid": {"optimizer": ["adam"], "lr": [0.003], "batch": [64]}}
JSON
start_workers
t_fm=$(run fm "$root/fm.json")
ok $? "the training sweep finishes (${t_fm} ms)"
read -r v_fm g_fm <<<"$(check_schedule fm 3)"
ok "$([ "$v_fm" = ok ] && [ -n "$g_fm" ]; echo $?)" \
    "every (epoch, shard) once; gangs trained epoch(s)${g_fm:- none}, each whole"
wmax=$(awk 'NF == 6 { w = substr($6, 2) + 0; if (w > m) m = w } END { print m + 0 }' "$root/fm.schedule")
ok "$([ "$wmax" -ge 2 ] && [ "$wmax" -le "$(nproc)" ]; echo $?)" \
    "no gang has more ranks than this host's $(nproc) cores hold at 1 thread a worker (largest: $wmax)"
rcli HGETALL "${prefix}sweep:{fm}:results" >"$root/fm.results"
ok "$("$py" - "$root/fm.results" "$root/fm.schedule" $K <<'PY'
import json, sys
lines = open(sys.argv[1]).read().split("\n")
f = dict(zip(lines[0::2], lines[1::2]))
K = int(sys.argv[3])
gangs = {}
for line in open(sys.argv[2]):
    p = line.split()
    if len(p) == 6:
        gangs[int(p[1])] = int(p[5][1:])
evals = sorted(int(k.split(".")[1]) for k in f if k.count(".") == 1)
# The training rows: a MOP epoch's visits (one per shard) sum them.
def recs(e):
    return [json.loads(v) for k, v in f.items() if k.startswith("0.%d.train." % e)]
mop = [e for e in (1, 2, 3) if e not in gangs]
total = sum(r["rows"] for r in recs(mop[0])) if mop else None
bad = []
for e, W in gangs.items():
    rs = recs(e)
    read = sorted(k for r in rs for k in r.get("shards_read", []))
    steps = {r["steps"] for r in rs}
    if len(rs) != W or read != list(range(K)) or len(steps) != 1 or any(r.get("hybrid") != W for r in rs):
        bad.append("epoch %d: %d ranks, shards read %s, steps %s" % (e, len(rs), read, steps))
    if total is not None and sum(r["rows"] for r in rs) != total:
        bad.append("epoch %d: %d rows, not %d" % (e, sum(r["rows"] for r in rs), total))
if evals != [1, 2, 3]:
    bad.append("evaluated epochs %s" % evals)
print(0 if not bad else 1)
print("# gang epochs %s; %s rows an epoch; %s" % (gangs, total, "; ".join(bad) or "ok"), file=sys.stderr)
PY
)" "each gang epoch: its ranks read every shard once between them, every row exactly once, in the same steps; every epoch evaluated"
# Resources (docs/sweeps.md): every visit, rank and evaluation says what it
# cost; the rows it read times the stored row (784 uint8 and a label).
ok "$("$py" - "$root/fm.results" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().split("\n")
f = dict(zip(lines[0::2], lines[1::2]))
bad = []
train = {k: json.loads(v) for k, v in f.items() if ".train." in k}
evals = {k: json.loads(v) for k, v in f.items() if k.count(".") == 1}
for k, v in list(train.items()) + list(evals.items()):
    r = v.get("res") or {}
    rows = v.get("rows", v.get("valid_rows"))
    # 1 engine thread, the data loader's prefetch thread beside it, the
    # heartbeat: CPU time within wall x 3, and a little clock slack
    if not (r.get("wall_s", 0) > 0 and 0 <= r.get("cpu_s", -1) <= 3 * r["wall_s"] + 0.05 and
            r.get("peak_rss_mb", 0) > 1 and r.get("bytes_read") == rows * 788):
        bad.append("%s: %s (rows %s)" % (k, r, rows))
for k, v in evals.items():
    m, e = k.split(".")
    tb = sum(t["res"]["bytes_read"] for kk, t in train.items() if kk.startswith("%s.%s.train." % (m, e)))
    if v.get("train_res", {}).get("bytes_read") != tb:
        bad.append("%s: train_res %s, the visits read %d" % (k, v.get("train_res"), tb))
print(0 if not bad and train and evals else 1)
print("# %d training records, %d evaluations; %s" % (len(train), len(evals), "; ".join(bad[:3]) or "ok"), file=sys.stderr)
PY
)" "every visit, rank and evaluation records its wall and CPU time (CPU within 3 x wall: a thread, the loader, the heartbeat), peak memory and the bytes of the rows it read; each evaluation sums its epoch's training"
jobctl status fm --resources >"$root/res.txt" 2>&1
ok "$(grep -q '^resources' "$root/res.txt" && grep -qE '^0 +[0-9]+ ' "$root/res.txt" && grep -qE '^w[0-3] +[0-9]+ ' "$root/res.txt"; echo $?)" \
    "jobctl status --resources shows them per model and per worker"
csvbad=$("$py" -c '
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(sum(1 for r in rows if r["split"] == "valid" and not (float(r["cpu_s"]) >= 0 and float(r["train_wall_s"]) > 0 and int(r["train_bytes_read"]) > 0)) + (len(rows) == 0))' "$root/sweeps/fm/results.csv")
ok "$([ "$csvbad" = 0 ]; echo $?)" "results.csv carries them (train_ and the evaluation's own columns)"
jobctl replay fm --id fm-replay >/dev/null 2>"$root/err"
ok $? "jobctl replay fm makes sweep fm-replay$([ -s "$root/err" ] && echo " ($(head -1 "$root/err"))")"
for _ in $(seq 1200); do [ "$(rcli HGET "${prefix}sweep:{fm-replay}" state)" = done ] && break; sleep 0.05; done
read -r v_rp g_rp <<<"$(check_schedule fm-replay 3)"
ok "$([ "$v_rp" = ok ] && [ "$g_rp" = "$g_fm" ] &&
      [ "$(awk 'NF == 6 { print $2, $3, $6 }' "$root/fm.schedule" | sort)" = \
        "$(awk 'NF == 6 { print $2, $3, $6 }' "$root/fm-replay.schedule" | sort)" ]; echo $?)" \
    "the replay finishes with the same gangs at the same epochs (${g_rp:- none} against ${g_fm:- none})"
a=$(rcli HGET "${prefix}sweep:{fm}:models" 0.ckpt) b=$(rcli HGET "${prefix}sweep:{fm-replay}:models" 0.ckpt)
ok "$([ -f "$a" ] && cmp -s "$a" "$b"; echo $?)" "the replay's final checkpoint is bit-identical to the original's"


# A gang's worker SIGKILLed once its rank is taken (the rank's process
# runs): the other rank's collectives break and the gang ends (a stall),
# or, when the commit came first, the epoch stands; either way the model
# goes on from its last checkpoint with the restarted worker, and every
# (epoch, shard) is trained once.  (A rank named but not yet taken would go
# to the restarted worker, which has the same id: no kill of a process.)
sed 's/"epochs": 3/"epochs": 4/' "$root/fm.json" >"$root/fmk.json"
jobctl enqueue sweep --spec "$root/fmk.json" --id fmk >/dev/null 2>"$root/err"
victim="" g=""
for _ in $(seq 1500); do
    g=$(rcli HGET "${prefix}sweep:{fmk}:models" 0.gang)
    [ -n "$g" ] && victim=$(rcli HGET "${prefix}sweep:{fmk}:models" 0.r1 | awk '$1 == 1 { print $4 }')
    [ -n "$victim" ] && break
    sleep 0.01
done
for ((k = 0; k < K; k++)); do
    if [ "w$k" = "$victim" ]; then
        kill -KILL "${pids[$k]}"
        wait "${pids[$k]}" 2>/dev/null
        echo "# SIGKILL $victim, rank 1 of gang $g (taken)"
        worker_bg "w$k" -- --shard $k --ddp-timeout 5
        pids[$k]=${pids[-1]}
        unset 'pids[-1]'
    fi
done
for _ in $(seq 1200); do [ "$(rcli HGET "${prefix}sweep:{fmk}" state)" = done ] && break; sleep 0.05; done
read -r v_k g_k <<<"$(check_schedule fmk 4)"
stalls=$(rcli HGET "${prefix}sweep:{fmk}:models" 0.stalls)
ok "$([ -n "$victim" ] && [ "$(rcli HGET "${prefix}sweep:{fmk}" state)" = done ] && [ "$v_k" = ok ]; echo $?)" \
    "a gang's rank SIGKILLed (${victim:-none found}) while it trains: the sweep finishes, every (epoch, shard) once (stalls counted: ${stalls:-0})${g_k:+, gangs at epoch(s)$g_k}"
stop_workers
san=$(grep -l "runtime error\|AddressSanitizer\|LeakSanitizer" "$root"/*.log 2>/dev/null)
ok "$([ -z "$san" ]; echo $?)" "no sanitizer report in the workers' logs"
[ "$failed" = 0 ] && [ -z "$san" ] || for l in "$root"/w*.log; do tail -n 15 "$l" | sed "s|^|# $(basename "$l"): |"; done
tap_done
