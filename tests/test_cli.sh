#!/usr/bin/env bash
# Every tool parses its options with common/cds_cli: an abbreviation that
# getopt_long alone would take ("--epoch" for --epochs) is refused with exit
# 2 and one line "PROG: unknown option --epoch (did you mean --epochs?) (see
# ... --help)", before the tool does anything; and a value given with the
# abbreviation is never echoed.  --device is checked the same way, and a
# GPU that is not there is refused before anything else.  No server is
# needed: each refusal comes before any connection.
#
# usage: test_cli.sh BUILD_ROOT
set -u
build=${1:?usage: test_cli.sh BUILD_ROOT}
. "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
tmp=$(mktemp -d /tmp/cds-cli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# refused PROG_NAME WANT_OPTION CMD...: CMD exits 2 with one line naming
# the full option, and no SECRET in it.
refused() {
    local name=$1 want=$2
    shift 2
    "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    ok "$([ $rc = 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "^$name: unknown option .*(did you mean --$want?)" "$tmp/err" &&
          ! grep -q SECRET "$tmp/err"; echo $?)" "$name ${*:2}: exit 2, one line naming --$want ($(cat "$tmp/err"))"
}

b=$build
refused cds-train epochs "$b/tools/cds-train" --epoch 1 --data "$tmp" --spec "$tmp/s.json"
refused cds-train epochs "$b/tools/cds-train" --epoch=SECRET
refused jobctl redis-password-file "$b/tools/jobctl" --redis-pass SECRET stats
refused jobctl limit "$b/tools/jobctl" list --lim 5
refused jobctl max-attempts "$b/tools/jobctl" enqueue diag.noop --max-att 3
refused cds-etl shards "$b/tools/cds-etl" unload --table t --features a --label l --dataset d --shard 2 --data-root "$tmp"
refused cds-etl json "$b/tools/cds-etl" inspect --jso "$tmp"
refused cds-worker threads "$b/worker/cds-worker" --thread 2
refused cds-worker redis-password-file "$b/worker/cds-worker" --redis-password=SECRET
refused gen-criteo rows "$b/tools/gen-criteo" --row 5
refused load-fashion-mnist replace "$b/tools/load-fashion-mnist" --replac
refused cds-gpu-info json "$b/tools/cds-gpu-info" --js

# --device: a name the engine does not know is a usage error naming the
# option (exit 2, one line); a GPU this machine lacks is refused at start,
# exit 2, one line naming the device and the fix, before anything is read,
# made or connected (the spec does not exist, --out is not made, and the
# Redis address is one nothing listens on: that error would come second).
bad_device() { # NAME CMD...: exit 2, one usage line naming --device 'bogus' and the fix
    local name=$1
    shift
    "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    ok "$([ $rc = 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] &&
          grep -q "^$name: bad --device 'bogus': use cpu, cuda:N (N a device ordinal) or auto (see $name --help)$" "$tmp/err"
          echo $?)" "$name --device bogus: exit 2, one line naming the option ($(cat "$tmp/err"))"
}
mkdir -p "$tmp/data/shard-0" && touch "$tmp/data/shard-0/manifest.json"
bad_device cds-train "$b/tools/cds-train" --device bogus --data "$tmp/data/shard-0" --spec "$tmp/s.json" --epochs 1
bad_device cds-worker "$b/worker/cds-worker" --device bogus --redis redis://127.0.0.1:1/0
# cds-gpu-info exits 3 when there is no CUDA device (or the build has none).
"$b/tools/cds-gpu-info" >/dev/null 2>&1
if [ $? != 3 ]; then
    for what in cds-train cds-worker; do
        n=$((n + 1)); echo "ok $n - $what --device cuda:0 without a device # SKIP this machine has a CUDA device"
    done
else
    no_device() { # NAME CMD...: exit 2, one line naming cuda:0 and the fix
        local name=$1
        shift
        "$@" >"$tmp/out" 2>"$tmp/err"
        echo $? >"$tmp/rc"
        [ "$(cat "$tmp/rc")" = 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && [ ! -s "$tmp/out" ] &&
            grep -q "^$name: device cuda:0: .*use --device cpu or auto$" "$tmp/err"
    }
    no_device cds-train "$b/tools/cds-train" --device cuda:0 --data "$tmp/data/shard-0" --spec "$tmp/nospec.json" \
        --epochs 1 --out "$tmp/o"
    ok "$([ $? = 0 ] && [ ! -e "$tmp/o" ]; echo $?)" \
        "cds-train --device cuda:0 without a device: exit 2, one line, nothing read or made ($(cat "$tmp/err"))"
    no_device cds-worker "$b/worker/cds-worker" --device cuda:0 --redis redis://127.0.0.1:1/0 --shard 0 \
        --data-root "$tmp"
    ok $? "cds-worker --device cuda:0 without a device: exit 2, one line, before it connects ($(cat "$tmp/err"))"
fi
# NCCL gangs reduce GPU memory: a worker on the cpu refuses the transport
# before it connects (Redis here is a dead port), a bad name is a usage error.
"$b/worker/cds-worker" --ddp-transport nccl --device cpu --redis redis://127.0.0.1:1/0 >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "$([ $rc = 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "ddp-transport nccl.*--device cuda:N, or use --ddp-transport gloo" "$tmp/err"; echo $?)" \
    "cds-worker --ddp-transport nccl on the cpu: exit 2, one line naming the fix ($(cat "$tmp/err"))"
"$b/worker/cds-worker" --ddp-transport mpi --redis redis://127.0.0.1:1/0 >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "$([ $rc = 2 ] && grep -q "bad --ddp-transport 'mpi': use gloo or nccl" "$tmp/err"; echo $?)" \
    "cds-worker --ddp-transport mpi: a usage error ($(head -1 "$tmp/err"))"

# jobs/workers-per-gpu.sh with a stand-in nvidia-smi (two GPUs) and
# cds-worker (which writes what it was given, then waits for a signal): one
# worker per GPU, that GPU alone visible by UUID, --device cuda:0, the shard
# FIRST_SHARD + i, an id naming the card, the options passed on; a SIGTERM
# reaches every worker and the script exits with their status; with no GPU,
# exit 2 and one line.
src=${CDS_SOURCE_ROOT:-$(dirname "${BASH_SOURCE[0]}")/..}
mkdir -p "$tmp/bin" "$tmp/logs"
printf '#!/bin/sh\nprintf "0, GPU-aaa\\n1, GPU-bbb\\n"\n' >"$tmp/bin/nvidia-smi"
cat >"$tmp/bin/fake-worker" <<'SH'
#!/usr/bin/env bash
echo "$CUDA_VISIBLE_DEVICES $*" >"$FAKE_OUT.$$"
sleep 10 &
trap 'kill $!; echo term >>"$FAKE_OUT.$$"; exit 0' TERM
wait
SH
chmod +x "$tmp/bin/nvidia-smi" "$tmp/bin/fake-worker"
PATH=$tmp/bin:$PATH CDS_WORKER=$tmp/bin/fake-worker CDS_LOG_DIR=$tmp/logs FAKE_OUT=$tmp/started HOSTNAME=node7.example \
    "$src/jobs/workers-per-gpu.sh" 4 /shared/cds --prefix p: >"$tmp/out" 2>"$tmp/err" &
script=$!
for _ in $(seq 50); do [ "$(cat "$tmp"/started.* 2>/dev/null | wc -l)" = 2 ] && break; sleep 0.1; done
kill -TERM $script
wait $script
rc=$?
started=$(cat "$tmp"/started.* 2>/dev/null | grep -v '^term$' | sort)
want="GPU-aaa --device cuda:0 --id node7-gpu0 --shard 4 --data-root /shared/cds --prefix p:
GPU-bbb --device cuda:0 --id node7-gpu1 --shard 5 --data-root /shared/cds --prefix p:"
ok "$([ "$started" = "$want" ]; echo $?)" "workers-per-gpu.sh starts one worker per GPU, that GPU alone visible ($(echo $started))"
ok "$([ $rc = 0 ] && [ "$(cat "$tmp"/started.* | grep -c '^term$')" = 2 ] && [ "$(wc -l <"$tmp/out")" = 2 ]; echo $?)" \
    "a SIGTERM reaches both workers; the script exits with their status ($rc)"
printf '#!/bin/sh\nexit 9\n' >"$tmp/bin/nvidia-smi"
PATH=$tmp/bin:$PATH CDS_WORKER=$tmp/bin/fake-worker "$src/jobs/workers-per-gpu.sh" 0 /shared/cds >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "$([ $rc = 2 ] && [ "$(wc -l <"$tmp/err")" = 1 ] && grep -q "finds no GPU here: on a CPU node start one cds-worker --device cpu" "$tmp/err"
      echo $?)" "workers-per-gpu.sh without a GPU: exit 2, one line ($(cat "$tmp/err"))"

# A misspelling that is not a prefix gets the nearest option too.
refused cds-train epochs "$b/tools/cds-train" --epcohs 1
# The exact names still work (the help of each, exit 0).
for t in tools/cds-train tools/jobctl tools/gen-criteo tools/load-fashion-mnist tools/cds-gpu-info worker/cds-worker; do
    "$b/$t" --help >"$tmp/out" 2>&1
    ok $? "$(basename "$t") --help: exit 0"
done

tap_done
