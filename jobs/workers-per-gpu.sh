#!/usr/bin/env bash
# One cds-worker per GPU of this node, each serving its own shard of every
# MOP sweep (docs/sweeps.md, "Workers and devices").
#
#   jobs/workers-per-gpu.sh FIRST_SHARD DATA_ROOT [cds-worker options...]
#
# GPU i, as nvidia-smi numbers them, gets a worker with --shard FIRST_SHARD+i,
# --id <host>-gpu<i> and its log in $CDS_LOG_DIR/<host>-gpu<i>.log (default:
# the current directory); the options after DATA_ROOT go to every worker
# (--redis, --prefix, --threads, ...).  A node with 4 GPUs that holds shards
# 4 to 7 of the datasets:
#
#   jobs/workers-per-gpu.sh 4 /shared/cds --prefix prod: --threads 8
#
# Each worker sees only its own GPU: CUDA_VISIBLE_DEVICES=<that GPU's UUID>
# and --device cuda:0.  Hiding the other cards means no worker, nor any
# thread or library inside it, can make a CUDA context or allocate on a card
# that another worker owns (a stray context costs every card hundreds of
# MiB).  UUIDs rather than indices: CUDA numbers devices fastest first
# unless told otherwise, nvidia-smi by PCI bus, and a UUID names the same
# card for both.  So every worker records its device as cuda:0; its id
# names the card (jobctl workers, and the worker of every visit).  Plain
# `cds-worker --device cuda:$i` with every card visible works too, and
# records cuda:<i>.
#
# The first SIGTERM or SIGINT goes on to every worker, which finishes and
# commits the visit in hand, then exits; a second one makes them release it
# at once (cds-worker's own signals).  Exit status: 0 when every worker
# stopped cleanly, else the first worker's status that was not 0; 2 for bad
# usage or no GPU.  CDS_WORKER names the cds-worker binary (default: the
# build's, else the one on PATH).
set -u
prog=workers-per-gpu.sh
usage() { echo "$prog: $1 (usage: $prog FIRST_SHARD DATA_ROOT [cds-worker options...])" >&2; exit 2; }
[ $# -ge 2 ] || usage "give the first shard and the data root"
first=$1 root=$2
shift 2
[[ "$first" =~ ^[0-9]+$ ]] || usage "FIRST_SHARD '$first' is not a shard number (0, 1, ...)"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
worker=${CDS_WORKER:-}
[ -n "$worker" ] || { [ -x "$here/build/worker/cds-worker" ] && worker=$here/build/worker/cds-worker; } ||
    worker=$(command -v cds-worker) || usage "no cds-worker: build it, or set CDS_WORKER to its path"
gpus=$(nvidia-smi --query-gpu=index,uuid --format=csv,noheader 2>/dev/null) && [ -n "$gpus" ] ||
    { echo "$prog: nvidia-smi finds no GPU here: on a CPU node start one cds-worker --device cpu" >&2; exit 2; }
host=${HOSTNAME%%.*}
logs=${CDS_LOG_DIR:-.}

# Signals are passed on from before the first start, and no worker starts
# after one came (it would miss it).  A signal cuts a wait short: wait again
# until the worker is gone, then once more for its own exit status (bash
# keeps it).
pids=()
stop=0
trap 'stop=1; [ ${#pids[@]} = 0 ] || kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
while IFS=', ' read -r index uuid && [ $stop = 0 ]; do
    id=$host-gpu$index
    CUDA_VISIBLE_DEVICES=$uuid "$worker" --device cuda:0 --id "$id" --shard $((first + index)) \
        --data-root "$root" "$@" 2>>"$logs/$id.log" &
    pids+=($!)
    echo "$prog: $id (pid $!) serves shard $((first + index)) on GPU $index ($uuid); log $logs/$id.log"
done <<<"$gpus"

status=0
for p in "${pids[@]}"; do
    while ! wait "$p" && kill -0 "$p" 2>/dev/null; do :; done
    wait "$p"
    rc=$?
    [ "$status" = 0 ] && status=$rc
done
exit "$status"
