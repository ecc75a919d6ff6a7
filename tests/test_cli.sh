#!/usr/bin/env bash
# Every tool parses its options with common/cds_cli: an abbreviation that
# getopt_long alone would take ("--epoch" for --epochs) is refused with exit
# 2 and one line "PROG: unknown option --epoch (did you mean --epochs?) (see
# ... --help)", before the tool does anything; and a value given with the
# abbreviation is never echoed.  No server is needed: each refusal comes
# before any connection.
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

# A misspelling that is not a prefix gets the nearest option too.
refused cds-train epochs "$b/tools/cds-train" --epcohs 1
# The exact names still work (the help of each, exit 0).
for t in tools/cds-train tools/jobctl tools/gen-criteo tools/load-fashion-mnist tools/cds-gpu-info worker/cds-worker; do
    "$b/$t" --help >"$tmp/out" 2>&1
    ok $? "$(basename "$t") --help: exit 0"
done

tap_done
