# Shared set-up of the shell tests that need Redis alone (sourced, not run):
# test_export.sh, test_metrics.sh, test_simulate.sh.  mop_env.sh is the same
# with PostgreSQL and workers.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/redis_env.sh" NAME BUILD_ROOT
#
# Bails out unless run through scripts/with-services; gives the test its
# own Redis key prefix (t:NAME:<pid>:) and scratch directory ($root),
# removed on exit together with every process whose pid the test put in
# pids; and defines ok (TAP), jobctl, rcli, $build and $py.
build=${2:?usage: . redis_env.sh NAME BUILD_ROOT}
[ -n "${CDS_TEST_REDIS_URL:-}" ] || { echo "Bail out! CDS_TEST_REDIS_URL is not set: run through scripts/with-services"; exit 1; }
. "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
py=/usr/bin/python3
prefix="t:$1:$$:"
root=$(mktemp -d "/tmp/cds-$1.XXXXXX") # a mktemp template
pids=()
trap 'for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$root"' EXIT
rcli() { redis-cli -u "$CDS_TEST_REDIS_URL" "$@"; }
jobctl() { "$build/tools/jobctl" --redis "$CDS_TEST_REDIS_URL" --prefix "$prefix" "$@"; }
