#!/usr/bin/env bash
# jobctl as a user runs it, against the test Redis of scripts/with-services
# (CDS_TEST_REDIS_URL) under a prefix of its own: what each command prints,
# valid JSON with --json, priority, delay, unique keys, cancel and retry, and
# for every refusal the exit status, exactly one line on stderr starting with
# "jobctl: ", and no password in any output; --help of every command; job
# types and payload shapes refused at enqueue with nothing written.  AUTH is
# tried against a private redis-server with requirepass on a unix socket,
# and the refusal of every writing command against another whose
# maxmemory-policy is allkeys-lru; both are stopped at the end.  Ages that
# jobctl prints are checked against bounds measured around the commands, so
# a loaded machine cannot make them fail.
# usage: test_jobctl.sh PATH/TO/jobctl
set -u
jobctl=${1:?usage: test_jobctl.sh PATH/TO/jobctl}
py=/usr/bin/python3 # Debian's, not a pyenv shim that may lack the stdlib we need
[ -n "${CDS_TEST_REDIS_URL:-}" ] || { echo "Bail out! CDS_TEST_REDIS_URL is not set: run through scripts/with-services"; exit 1; }
url=$CDS_TEST_REDIS_URL
prefix="t:jobctl:$$:"
pw=s3cret-pw
tmp=$(mktemp -d /tmp/cds-jobctl-test.XXXXXX)
redis_pid= lru_pid=
cleanup() {
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    [ -n "$lru_pid" ] && kill "$lru_pid" 2>/dev/null && wait "$lru_pid" 2>/dev/null
    if command -v redis-cli >/dev/null; then
        redis-cli -u "$url" --scan --pattern "$prefix*" 2>/dev/null | xargs -r redis-cli -u "$url" DEL >/dev/null 2>&1
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
unset CDS_REDIS_URL # every run names its Redis
sl='{"ms": 1}' # a diag.sleep payload

. "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
# jc ARGS...: jobctl on the test Redis and prefix; stdout in $tmp/out,
# stderr in $tmp/err, exit status in $rc.
jc() { "$jobctl" --redis "$url" --prefix "$prefix" "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; }
# raw ARGS...: jobctl with nothing added.
raw() { "$jobctl" "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; }
# ok_out STATUS NAME: ok, and on failure the last run's output as comments.
ok_out() { ok "$1" "$2"; [ "$1" = 0 ] || sed 's/^/#   /' "$tmp/out" "$tmp/err"; }
out() { cat "$tmp/out"; }
err() { cat "$tmp/err"; }
# valid_json: stdout of the last run is one JSON document.
valid_json() { "$py" -c 'import json,sys; json.load(sys.stdin)' <"$tmp/out" 2>/dev/null; }
# jget EXPR: evaluates a Python expression over the JSON document d on stdout.
jget() { "$py" -c "import json,sys; d = json.load(sys.stdin); print($1)" <"$tmp/out" 2>/dev/null; }
# refused WANT_RC PATTERN NAME: the last run exited WANT_RC with exactly one
# line on stderr, "jobctl: ..." matching PATTERN, and no password anywhere.
refused() {
    local lines why=""
    lines=$(wc -l <"$tmp/err")
    [ "$rc" = "$1" ] || why="exit $rc, want $1; "
    [ "$lines" = 1 ] || why="$why$lines lines on stderr; "
    grep -q '^jobctl: ' "$tmp/err" || why="${why}no 'jobctl: ' prefix; "
    grep -q -- "$2" "$tmp/err" || why="${why}no '$2' in it; "
    ! grep -q -e "$pw" -e wrongpw -e "pa/ss" "$tmp/out" "$tmp/err" || why="${why}a password leaked; "
    ok "$([ -z "$why" ]; echo $?)" "$3: exit $1, one line ($(head -c 300 "$tmp/err" | head -1))"
    [ -z "$why" ] || echo "#   $why"
}

# now_ms: this machine's clock, which a local Redis server's TIME shares.
now_ms() { date +%s%3N; }
# ms_of DURATION: the milliseconds jobctl's "123ms", "29s", "1m05s", "2h03m"
# stand for (it rounds down, so this is the low end); -1 if not a duration.
ms_of() {
    if [[ $1 =~ ^([0-9]+)ms$ ]]; then echo "${BASH_REMATCH[1]}"
    elif [[ $1 =~ ^([0-9]+)s$ ]]; then echo $((BASH_REMATCH[1] * 1000))
    elif [[ $1 =~ ^([0-9]+)m([0-9]+)s$ ]]; then echo $(((BASH_REMATCH[1] * 60 + 10#${BASH_REMATCH[2]}) * 1000))
    elif [[ $1 =~ ^([0-9]+)h([0-9]+)m$ ]]; then echo $(((BASH_REMATCH[1] * 60 + 10#${BASH_REMATCH[2]}) * 60000))
    else echo -1; fi
}
# within LO MS HI NAME: LO <= MS <= HI.  Ages are checked against bounds the
# test measured around the commands, never against a fixed guess: a loaded
# machine may take seconds between two commands.
within() {
    ok "$([ "$2" -ge "$1" ] && [ "$2" -le "$3" ]; echo $?)" "$4"
    [ "$2" -ge "$1" ] && [ "$2" -le "$3" ] || echo "#   got $2 ms, want $1 to $3"
}
# keyspace PATTERN REDIS-CLI-ARGS...: every key matching PATTERN with a hash
# of its value and whether it expires, sorted: two equal outputs mean nothing
# was written.  (redis-cli takes no unix:// URL: give -s SOCKET for those.)
keyspace() {
    local pattern=$1; shift
    redis-cli "$@" EVAL "local ks = redis.call('KEYS', ARGV[1]) table.sort(ks) local out = {}
        for _, k in ipairs(ks) do out[#out + 1] = k .. ' ' .. redis.sha1hex(redis.call('DUMP', k)) .. ' ' ..
            tostring(redis.call('PTTL', k) > 0) end return out" 0 "$pattern"
}

# ---- enqueue and show -------------------------------------------------------------
jc enqueue diag.sleep --payload '{"ms": 100}' --queue jq
id=$(out)
ok "$([ "$rc" = 0 ] && [[ "$id" =~ ^[0-9]+$ ]] && [ ! -s "$tmp/err" ]; echo $?)" "enqueue prints a job id ($id) and nothing on stderr"
jc show "$id" --json
ok "$(valid_json; echo $?)" "show --json is valid JSON"
is "$(jget 'd["type"], d["queue"], json.loads(d["payload"]), d["state"], d["id"]')" \
    "diag.sleep jq {'ms': 100} waiting $id" "show --json has the type, queue, payload, state and id"
jc show "$id"
ok_out "$([ "$rc" = 0 ] && grep -q '^type  *diag.sleep$' "$tmp/out" && grep -q '^payload  *{"ms": 100}$' "$tmp/out" &&
      grep -q '^attempts  *0 of 5$' "$tmp/out"; echo $?)" "show prints one field per line"

printf '{\n  "ms":\n    7\n}\n' >"$tmp/spec.json"
jc --json enqueue diag.sleep --spec "$tmp/spec.json" --queue jq --max-attempts 2 --max-stalls 0 \
    --backoff-base 0.25 --backoff-cap 1.5
sid=$(jget 'd["id"]')
is "$(jget 'd["duplicate"], d["state"]')" "False waiting" "enqueue --json (global option before the command) says created, waiting"
jc show "$sid" --json
is "$(jget 'json.loads(d["payload"])["ms"], d["max_attempts"], d["max_stalls"], d["backoff_base_ms"], d["backoff_cap_ms"]')" \
    "7 2 0 250 1500" "--spec, --max-attempts, --max-stalls and decimal backoff seconds are stored"

jc enqueue diag.sleep --payload "$sl" --count 3 --queue jq
ok "$([ "$rc" = 0 ] && [ "$(grep -cE '^[0-9]+$' "$tmp/out")" = 3 ] && [ "$(sort -u "$tmp/out" | wc -l)" = 3 ]; echo $?)" \
    "--count 3 prints three distinct ids"
jc enqueue diag.sleep --payload "$sl" --count 2 --queue jq --json
is "$(jget 'len(d), d[0]["state"]')" "2 waiting" "--count 2 --json is an array of two"

# ---- priority and delay ------------------------------------------------------------
t0=$(now_ms)
jc enqueue diag.sleep --payload "$sl" --queue jp; low=$(out)
jc enqueue diag.sleep --payload "$sl" --queue jp --priority 10; high=$(out)
jc enqueue diag.sleep --payload "$sl" --queue jp --priority -5; lowest=$(out)
jc list --queue jp --json
is "$(jget '" ".join(j["id"] for j in d)')" "$high $low $lowest" "list --queue orders waiting jobs by priority, FIFO among equals"
jc list --queue jp
t1=$(now_ms)
ok_out "$([ "$rc" = 0 ] && head -1 "$tmp/out" | grep -q '^ *ID  QUEUE  TYPE  *STATE  *PRI  ATTEMPTS  WHEN$' &&
      [ "$(wc -l <"$tmp/out")" = 4 ] && grep -qE "^ *$high +jp +diag.sleep +waiting +10 +0/5 +queued [0-9a-z]+ ago$" "$tmp/out" &&
      [ "$(awk 'NR == 1 { print index($0, "WHEN") } NR > 1 { print index($0, "queued") }' "$tmp/out" | sort -u | wc -l)" = 1 ]; echo $?)" \
    "list prints an aligned table"
# Queued after t0 and listed before t1: its age is at most t1 - t0.
within 0 "$(ms_of "$(sed -nE "s/^ *$high .* queued ([0-9a-z]+) ago$/\1/p" "$tmp/out")")" "$((t1 - t0))" \
    "list says how long ago a job was queued"
t0=$(now_ms)
jc enqueue diag.sleep --payload "$sl" --queue jp --delay 30.5; delayed=$(out)
jc show "$delayed" --json
is "$(jget 'd["state"], d["due_ms"] - d["created_ms"]')" "delayed 30500" "--delay 30.5 makes a delayed job due 30.5 s later"
jc list --state delayed --queue jp
t1=$(now_ms)
# Due 30.5 s after it was created (between t0 and t1), listed before t1: due
# in 30.5 s less at most t1 - t0 (rounded down to whole seconds), and never more.
due=$(sed -nE "s/^ *$delayed .*delayed .* due in ([0-9a-z]+)$/\1/p" "$tmp/out")
[ -z "$due" ] && grep -qE "^ *$delayed .*delayed .* due now$" "$tmp/out" && [ "$((t1 - t0))" -ge 30000 ] && due=0ms
within "$((30500 - (t1 - t0) - 1000))" "$(ms_of "$due")" 30500 "list --state delayed shows when it is due"
jc list --state active --json
is "$(out | tr -d '[:space:]')" "[]" "list --state active --json of an empty state is []"
jc list --queue jp --limit 2 --json
is "$(jget 'len(d)')" "2" "--limit 2 lists two jobs"

# ---- unique keys -------------------------------------------------------------------
key=nightly-$$
jc enqueue diag.sleep --payload "$sl" --queue jq --unique "$key"; first=$(out)
jc enqueue diag.sleep --payload "$sl" --queue jq --unique "$key"
ok "$([ "$rc" = 0 ] && [ "$(out)" = "$first" ] && [ "$(err)" = "jobctl: job $first already holds unique key $key" ]; echo $?)" \
    "a duplicate unique enqueue prints the live job's id, exits 0, and says so on stderr"
jc enqueue diag.sleep --payload "$sl" --queue jq --unique "$key" --json
is "$(jget 'd["id"], d["duplicate"]')" "$first True" "... and with --json says duplicate: true"

# ---- cancel and retry --------------------------------------------------------------
jc cancel "$first"
ok "$([ "$rc" = 0 ] && [ "$(out)" = "cancelled job $first (it was waiting)" ]; echo $?)" "cancel of a waiting job"
jc show "$first" --json
is "$(jget 'd["state"]')" "cancelled" "show says cancelled"
jc enqueue diag.sleep --payload "$sl" --queue jq --unique "$key"; second=$(out)
ok "$([ "$rc" = 0 ] && [ "$second" != "$first" ] && [ ! -s "$tmp/err" ]; echo $?)" "the cancel freed the unique key: a new job $second takes it"
jc retry "$first"
refused 1 "unique key '$key' is held by live job $second" "retry of a cancelled job whose key another job holds is refused"
jc cancel "$second"
jc retry "$first"
ok "$([ "$rc" = 0 ] && [ "$(out)" = "job $first is waiting again" ]; echo $?)" "retry of a cancelled job"
jc show "$first" --json
is "$(jget 'd["state"]')" "waiting" "show says waiting again"
jc cancel "$second" --json
refused 1 "already cancelled: nothing to cancel" "cancel of a finished job"
jc retry "$first"
refused 1 "only dead or cancelled jobs can be retried" "retry of a live job"
jc --json cancel "$id"
is "$(jget 'd["id"], d["state"], d["previous_state"]')" "$id cancelled waiting" "cancel --json"

# ---- dependencies ------------------------------------------------------------------
jc enqueue diag.sleep --payload "$sl" --queue jq --after "$sid"; blocked=$(out)
jc show "$blocked" --json
is "$(jget 'd["state"], d["after"]')" "blocked $sid" "--after a live job makes a blocked job"
jc enqueue diag.sleep --payload "$sl" --queue jq --after 999999999
refused 1 "unknown dependency job 999999999" "--after an unknown id exits 1"
jc enqueue diag.sleep --payload "$sl" --queue jq --after "$first" --after "$id"; orphan=$(out)
ok "$([ "$rc" = 0 ] && grep -q "^jobctl: job $orphan was created dead" "$tmp/err" && [ "$(wc -l <"$tmp/err")" = 1 ]; echo $?)" \
    "--after a cancelled job creates it dead, with a one-line notice"

# ---- stats and workers -------------------------------------------------------------
jc stats --json
ok "$(valid_json; echo $?)" "stats --json is valid JSON"
is "$(jget 'd["jp"]["waiting"], d["jp"]["delayed"], d["jq"]["counters"]["enqueued"] > 5')" "3 1 True" "stats counts jobs per state and queue"
jc stats
ok_out "$([ "$rc" = 0 ] && head -1 "$tmp/out" | grep -q '^QUEUE  WAITING  DELAYED  BLOCKED  ACTIVE  DONE  DEAD  CANCELLED  ENQUEUED  RETRIED  STALLED$' &&
      grep -qE '^jp  +3  +1  +0  +0  +0  +0  +0  +4  +0  +0$' "$tmp/out"; echo $?)" "stats prints one row per queue"
jc workers --json
is "$(out | tr -d '[:space:]')" "[]" "workers --json with no workers is []"
# Two workers as cds-worker registers them: one live (hash and set entry), one
# whose hash expired a minute ago.
now=$(now_ms)
redis-cli -u "$url" HSET "${prefix}worker:w-1" host node-1 pid 4242 queues jq,jp job "$id" state busy last_seen_ms "$now" \
    device cuda:1 >/dev/null
redis-cli -u "$url" ZADD "${prefix}workers" "$now" w-1 "$((now - 60000))" w-gone >/dev/null
jc workers --json
ok "$(valid_json; echo $?)" "workers --json is valid JSON"
is "$(jget '[(w["id"], w["alive"], w.get("host"), w.get("device")) for w in d]')" "[('w-1', True, 'node-1', 'cuda:1'), ('w-gone', False, None, None)]" "workers lists live and gone workers, with the device each trains on"
jc workers
t1=$(now_ms)
ok_out "$([ "$rc" = 0 ] && head -1 "$tmp/out" | grep -q '^ID *ALIVE  HOST *PID *DEVICE *QUEUES *JOB *STATE *LAST SEEN$' &&
      grep -qE "^w-1 +yes +node-1 +4242 +cuda:1 +jq,jp +$id +busy +[0-9a-z]+ ago$" "$tmp/out" &&
      grep -qE '^w-gone +no +- +- +- +- +- +gone +[0-9a-z]+ ago$' "$tmp/out"; echo $?)" "workers prints a table, the device after the pid"
within 0 "$(ms_of "$(sed -nE 's/^w-1 .* busy +([0-9a-z]+) ago$/\1/p' "$tmp/out")")" "$((t1 - now))" \
    "workers says when a live worker was last seen"
within 60000 "$(ms_of "$(sed -nE 's/^w-gone .* gone +([0-9a-z]+) ago$/\1/p' "$tmp/out")")" "$((t1 - now + 60000))" \
    "... and a gone one"

# ---- help --------------------------------------------------------------------------
types="diag.sleep diag.fail diag.noop etl.shard etl.finish"
raw --help
ok_out "$([ "$rc" = 0 ] && grep -q '^usage: jobctl' "$tmp/out" && [ ! -s "$tmp/err" ] &&
      grep -q '^  enqueue etl --spec FILE.json' "$tmp/out" && grep -q '^  enqueue sweep --spec FILE.json' "$tmp/out" &&
      for t in $types; do grep -q "^  $t " "$tmp/out" || exit 1; done; echo $?)" \
    "--help exits 0 and lists enqueue etl, enqueue sweep and every job type"
# Each command's --help (and `help COMMAND`) prints that command's usage
# first, exits 0 and touches nothing; enqueue etl and enqueue sweep have their own.
for c in "enqueue TYPE" "enqueue etl" "enqueue sweep" "show ID" "list" "cancel ID" "retry ID" "stats" "workers" \
         "status SWEEP" "results SWEEP" "replay SWEEP" "plot SWEEP" "pause SWEEP" "resume SWEEP"; do
    words=${c% [A-Z]*}
    for form in "$words --help" "help $words"; do
        # shellcheck disable=SC2086 # the words are the command line
        raw --redis "redis://127.0.0.1:1/0" $form
        ok_out "$([ "$rc" = 0 ] && [ ! -s "$tmp/err" ] && [ "$(head -1 "$tmp/out" | cut -d' ' -f1-$((2 + $(wc -w <<<"$c"))))" = "usage: jobctl $c" ]; echo $?)" \
            "jobctl $form prints the usage of $c"
    done
done
raw enqueue --help
ok "$(for t in $types; do grep -q "^  $t " "$tmp/out" || exit 1; done; grep -q "jobctl enqueue etl --help" "$tmp/out"; echo $?)" \
    "enqueue --help lists every job type, and points at enqueue etl --help"
raw enqueue etl --spec x.json --queue q --help
ok "$([ "$rc" = 0 ] && head -1 "$tmp/out" | grep -q '^usage: jobctl enqueue etl --spec' && ! grep -q 'enqueue TYPE' "$tmp/out"; echo $?)" \
    "enqueue etl --help after its options is still the etl usage, not the generic one"

# ---- bad usage (exit 2) ------------------------------------------------------------
jc frobnicate
refused 2 "unknown command 'frobnicate'" "an unknown command"
raw
refused 2 "no command given" "no command"
jc list --bogus
refused 2 "unknown option --bogus" "an unknown option"
jc enqueue diag.sleep --payload "$sl" --redis-pass "$pw"
refused 2 "unknown option --redis-pass " "an abbreviated option (--redis-pass SECRET) is refused without echoing its value"
jc enqueue diag.sleep --payload "$sl" --priority
refused 2 "option --priority needs a value" "a missing option value"
jc enqueue
refused 2 "needs the job TYPE" "enqueue without a type"
jc show 12 13
refused 2 "unexpected argument '13'" "an extra argument"
jc enqueue diag.sleep --payload "$sl" --priority 12abc
refused 2 "bad --priority '12abc'" "a bad number"
jc enqueue diag.sleep --payload "$sl" --priority 1000001
refused 2 "bad --priority '1000001'" "a priority out of range"
jc enqueue diag.sleep --payload "$sl" --delay -1
refused 2 "bad --delay '-1'" "a negative delay"
jc enqueue diag.sleep --payload '{"ms": 100'
refused 2 "payload is not valid JSON" "malformed JSON in --payload"
printf '{"ms": 100,}\n' >"$tmp/bad.json"
jc enqueue diag.sleep --spec "$tmp/bad.json"
refused 2 "spec file $tmp/bad.json is not valid JSON: .* line 1" "malformed JSON in --spec"
jc enqueue diag.sleep --spec "$tmp/missing.json"
refused 2 "cannot read --spec file" "a missing --spec file"
jc enqueue 'bad type!'
refused 2 "unknown job type 'bad type!'" "a malformed job type"
jc enqueue diag.sleep --payload "$sl" --unique u --count 2
refused 2 "cannot go with --count" "--unique with --count 2"
jc show abc
refused 2 "bad job id 'abc'" "a malformed job id"
jc list --state finished
refused 2 "unknown state 'finished'" "an unknown state"
jc list --queue 'no/such'
refused 2 "bad queue name 'no/such'" "a bad queue name"

# ---- job types and their payloads (exit 2, nothing enqueued) ------------------------
# The types and their checks are the table the worker runs by
# (queue/queue_jobtype.c): a job no worker could run is refused here.
before=$(keyspace "$prefix*" -u "$url")
ok "$(grep -q "^${prefix}job:$id " <<<"$before"; echo $?)" "the key space under the test's prefix can be read (job $id is there)"
jc enqueue diag.bogus --payload '{}'
refused 2 "unknown job type 'diag.bogus': use one of diag.sleep, diag.fail, diag.noop, etl.shard, etl.finish, predict.part, predict.finish (or enqueue etl or enqueue sweep" \
    "an unknown job type is refused, naming the known types"
# bad_payload TYPE PAYLOAD PATTERN: refused, the message naming the JSON path.
bad_payload() {
    jc enqueue "$1" --payload "$2" --queue jt
    refused 2 "$3" "$1 $2 is refused"
}
bad_payload diag.sleep '{}' "diag.sleep payload \$.ms: missing: give a whole number from 0 to 86400000 (write the payload like '{\"ms\": 100}')$"
bad_payload diag.sleep '{"ms": "soon"}' 'diag.sleep payload \$.ms: must be a whole number from 0 to 86400000, not "soon"'
bad_payload diag.sleep '{"ms": 86400001}' '\$.ms: must be a whole number from 0 to 86400000, not 86400001'
bad_payload diag.sleep '{"ms": 1.5}' '\$.ms: must be a whole number'
bad_payload diag.sleep '{"ms": 5, "extra": 1}' '\$.extra: unknown field; the fields are: ms'
bad_payload diag.sleep '[100]' 'diag.sleep payload \$: must be a JSON object, not an array'
bad_payload diag.fail '{"message": 42}' '\$.message: must be a string, not a whole number'
bad_payload diag.fail '{"permanent": "yes"}' '\$.permanent: must be true or false, not a string'
bad_payload diag.fail '{"permanant": true}' "\$.permanant: unknown field; the fields are: message, permanent (write the payload like '{\"message\": \"why\", \"permanent\": false}')"
bad_payload diag.noop '{"ms": 1}' '\$.ms: unknown field; the fields are: none'
bad_payload diag.noop '"x"' 'diag.noop payload \$: must be a JSON object, not a string'
bad_payload etl.shard '{"dataset": "fm", "token": "t"}' 'etl.shard payload \$.task: missing'
bad_payload etl.shard '{"dataset": "", "token": "t", "task": 0}' '\$.dataset: must not be empty'
bad_payload etl.shard '{"dataset": "fm", "token": 7, "task": 0}' '\$.token: must be a string'
bad_payload etl.finish '{"dataset": "fm"}' 'etl.finish payload \$.token: missing'
bad_payload etl.finish '{"dataset": "fm", "token": "t", "task": 0}' '\$.task: unknown field; the fields are: dataset, token'
jc enqueue diag.sleep --queue jt
refused 2 "diag.sleep payload \$.ms: missing" "diag.sleep with no payload (an empty object) is refused"
printf '{\n  "ms": -1\n}\n' >"$tmp/neg.json"
jc enqueue diag.sleep --spec "$tmp/neg.json" --count 3
refused 2 "^jobctl: --spec file $tmp/neg.json: diag.sleep payload \$.ms: must be a whole number from 0 to 86400000, not -1" \
    "a wrong payload in a --spec file names the file and the path"
is "$(keyspace "$prefix*" -u "$url")" "$before" "nothing was written to Redis for any refused type or payload"
# The right shapes still go in: the limits, the optional fields, the etl.* jobs
# exactly as jobctl enqueue etl writes them.
for tp in 'diag.sleep {"ms": 0}' 'diag.sleep {"ms": 86400000}' 'diag.fail {}' 'diag.fail {"message": "m", "permanent": true}' \
          'diag.noop {}' 'etl.shard {"dataset": "fm", "token": "t", "task": 3}' 'etl.finish {"dataset": "fm", "token": "t"}'; do
    jc enqueue "${tp%% *}" --payload "${tp#* }" --queue jt
    ok_out "$([ "$rc" = 0 ] && [[ "$(out)" =~ ^[0-9]+$ ]] && [ ! -s "$tmp/err" ]; echo $?)" "$tp is accepted"
done
jc enqueue diag.noop --queue jt
ok_out "$([ "$rc" = 0 ] && [[ "$(out)" =~ ^[0-9]+$ ]]; echo $?)" "diag.noop with no payload is accepted"
jc list --queue jt --json
is "$(jget '" ".join(sorted(set(j["type"] for j in d))), len(d)')" "diag.fail diag.noop diag.sleep etl.finish etl.shard 8" \
    "the eight accepted jobs are in their queue"

# ---- malformed specs: the hint fits what the file is --------------------------------
printf '{\n  "mode": "mop",\n  "dataset": "fm"\n  "epochs": 1\n}\n' >"$tmp/syntax.json"
jc enqueue sweep --spec "$tmp/syntax.json"
refused 2 "^jobctl: --spec file $tmp/syntax.json is not valid JSON: .* at line 4 column [0-9]* (a sweep spec is described in docs/sweeps.md; jobs/sweep-quickstart.json is one to copy)$" \
    "a sweep spec that is not JSON: the file, line and column, and where sweep specs are described"
ok "$(! grep -q '"ms"' "$tmp/err"; echo $?)" "... and no diag.sleep example in it"
jc enqueue sweep --payload '{"mode": "mop", "mode": "mop"}'
refused 2 "sweep spec \$: not valid JSON: duplicate object key .* see docs/sweeps.md, or copy jobs/sweep-quickstart.json" \
    "a sweep spec with a key twice gets the sweep hint too"
jc enqueue etl --spec "$tmp/syntax.json"
refused 2 "^jobctl: --spec file $tmp/syntax.json is not valid JSON: .* at line 4 column [0-9]* (an ETL spec is described in docs/etl.md; jobs/etl-fashion-mnist.json is one to copy)$" \
    "an ETL spec that is not JSON: where ETL specs are described"
jc enqueue etl --payload '[1]'
refused 2 "ETL spec (--payload): \$: is a JSON array, not an object: an ETL spec is .* described in docs/etl.md" "an ETL spec that is an array"
jc enqueue diag.fail --spec "$tmp/syntax.json"
refused 2 "^jobctl: --spec file $tmp/syntax.json is not valid JSON: .* at line 4 .*(write the payload like '{\"message\": \"why\", \"permanent\": false}')$" \
    "a job payload that is not JSON: the example of its own type"
jc enqueue etl --spec "$CDS_SOURCE_ROOT/jobs/etl-fashion-mnist.json" --delay 5
refused 2 "\-\-delay does not apply to enqueue etl" "a job option enqueue etl would ignore is refused"

# ---- unknown ids (exit 1) ----------------------------------------------------------
for c in show cancel retry; do
    jc "$c" 999999999
    refused 1 "no job 999999999 under prefix $prefix" "$c of an unknown id"
done

# ---- Redis unreachable, bad URLs, AUTH (exit 2) ------------------------------------
raw --redis http://x stats
refused 2 "bad Redis URL 'http://x': unknown scheme" "a bad URL"
raw --redis "http://:$pw@x" stats
refused 2 "bad Redis URL 'http://:\*\*\*@x'" "a bad URL with a password is redacted"
raw --redis "redis://:pa/ss@127.0.0.1:1/0" stats
refused 2 "cannot connect to Redis at redis://:\*\*\*@127.0.0.1:1/0" "a password holding '/' is parsed and redacted"
raw --redis "redis://:$pw@x@127.0.0.1:1/0" stats
refused 2 "cannot connect to Redis at redis://:\*\*\*@127.0.0.1:1/0" "a password holding '@' is parsed and redacted"
raw --redis "unix://:$pw/x@/tmp/r.sock" stats
refused 2 "cannot connect to Redis at unix://:\*\*\*@/tmp/r.sock" "... in a unix:// URL too"
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
raw --redis "redis://:$pw@127.0.0.1:$port/0" stats
refused 2 "cannot connect to Redis at redis://:\*\*\*@127.0.0.1:$port/0" "a down Redis"
CDS_REDIS_URL="redis://:$pw@127.0.0.1:$port/0" "$jobctl" show 1 >"$tmp/out" 2>"$tmp/err"; rc=$?
refused 2 "cannot connect to Redis" "a down Redis named by CDS_REDIS_URL"

server=${CDS_REDIS_SERVER:-redis-server}
printf 'port 0\nunixsocket %s/r.sock\nrequirepass %s\nsave ""\nappendonly no\ndir %s\n' "$tmp" "$pw" "$tmp" >"$tmp/redis.conf"
"$server" "$tmp/redis.conf" >"$tmp/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do [ -S "$tmp/r.sock" ] && break; sleep 0.05; done
[ -S "$tmp/r.sock" ] || { echo "Bail out! the private redis-server did not start: $(tail -3 "$tmp/redis.log")"; exit 1; }
raw --redis "unix://:wrongpw@$tmp/r.sock" --prefix "$prefix" stats
refused 2 "refused AUTH" "a refused AUTH"
raw --redis "unix://$tmp/r.sock" --prefix "$prefix" stats
refused 2 "NOAUTH" "no password for a server that needs one"
echo "$pw" >"$tmp/pw"
echo wrongpw >"$tmp/wrongpw"
raw --redis "unix://$tmp/r.sock" --redis-password-file "$tmp/wrongpw" --prefix "$prefix" stats
refused 2 "refused AUTH" "a wrong password in --redis-password-file"
raw enqueue diag.sleep --payload "$sl" --redis "unix://$tmp/r.sock" --redis-password-file "$tmp/pw" --prefix "$prefix"
aid=$(out)
ok "$([ "$rc" = 0 ] && [[ "$aid" =~ ^[0-9]+$ ]] && [ ! -s "$tmp/err" ]; echo $?)" "a good --redis-password-file works (global options after the command)"
raw --redis "unix://:$pw@$tmp/r.sock" --prefix "$prefix" show "$aid"
ok "$([ "$rc" = 0 ] && grep -q 'diag.sleep' "$tmp/out" && ! grep -q "$pw" "$tmp/out" "$tmp/err"; echo $?)" "a good password in the URL works and is not printed"
raw --redis "unix://:$pw@$tmp/r.sock" --prefix "$prefix" show 999999
refused 1 "no job 999999 under prefix" "errors after an AUTH with a URL password do not show it"
raw --redis "unix://$tmp/r.sock" --redis-password-file "$tmp/none" stats
refused 2 "cannot read password file $tmp/none" "a missing password file"

# ---- enqueue sweep -----------------------------------------------------------------
# Dataset records as etl_queue.c writes them: "shards" per split from the ETL
# spec while loading; state ready, the version and the splits (JSON) when done.
ds=fm$$
ver=$(printf '%064d' 7)
redis-cli -u "$url" HSET "${prefix}dataset:$ds" state ready token t1 shards 3 version "$ver" error "" \
    splits '{"train": {"shards": 3, "rows": 600, "rows_per_shard": [200, 200, 200]}, "valid": {"shards": 3, "rows": 60, "rows_per_shard": [20, 20, 20]}}' >/dev/null
redis-cli -u "$url" HSET "${prefix}dataset:$ds-loading" state loading token t2 shards 4 version "" error "" >/dev/null
redis-cli -u "$url" HSET "${prefix}dataset:$ds-failed" state failed token t3 shards 2 version "" error "COPY failed: disk full" >/dev/null
sed "s/\"fmnist\"/\"$ds\"/" "$CDS_SOURCE_ROOT/jobs/sweep-fashion-mnist.json" >"$tmp/sweep.json"
# sweep_field ID FIELD: one field of the sweep hash, read from HGETALL.
sweep_field() { redis-cli -u "$url" HGETALL "${prefix}sweep:{$1}" | paste -d '\t' - - | awk -F '\t' -v f="$2" '$1 == f { print $2 }'; }
jc enqueue sweep --spec "$tmp/sweep.json"
sw=$(out)
ok_out "$([ "$rc" = 0 ] && [[ "$sw" =~ ^s[0-9]+$ ]] &&
      [ "$(head -1 "$tmp/err")" = "jobctl: sweep $sw: 16 models x 3 shards x 5 epochs on dataset $ds version ${ver:0:16}..." ] &&
      [ "$(sed -n 2p "$tmp/err")" = "  model 0: cnn adam lr=0.001 batch=64 l2=0" ] &&
      [ "$(sed -n 17p "$tmp/err")" = "  model 15: mlp adam lr=0.0001 batch=256 l2=0.0001" ] && [ "$(wc -l <"$tmp/err")" = 17 ]; echo $?)" \
    "enqueue sweep prints the sweep id ($sw), and a line per model on stderr"
is "$(for f in state dataset dataset_version models shards epochs; do printf '%s ' "$(sweep_field "$sw" $f)"; done)" \
    "running $ds $ver 16 3 5 " "HGETALL of the sweep: running, the dataset pinned at its version, 16 models, 3 shards, 5 epochs"
is "$(redis-cli -u "$url" HGET "${prefix}sweep:{$sw}:models" 15.spec)" \
    '{"model":{"arch":"mlp","classes":10,"hidden":[256],"input":[784]},"train":{"batch":256,"l2":0.0001,"lr":0.0001,"normalize":{"mean":[0.28599999999999998],"scale":0.0039215686274509803,"std":[0.35299999999999998]},"optimizer":"adam","schedule":{"kind":"constant"},"seed":1}}' \
    "model 15's canonical spec is stored with the sweep"
ok "$(sweep_field "$sw" spec | "$py" -c 'import json,sys; d = json.load(sys.stdin); sys.exit(not (d["dataset"] == sys.argv[1] and d["seed"] == 1 and len(d["models"]) == 2))' "$ds"; echo $?)" \
    "the sweep spec is stored as JSON"
jc enqueue sweep --spec "$tmp/sweep.json"
ok "$([ "$rc" = 0 ] && [ "$(out)" = "s$((${sw#s} + 1))" ]; echo $?)" "the next sweep takes the next id ($(out))"
jc enqueue sweep --spec "$tmp/sweep.json" --id "s$((${sw#s} + 2))"
jc enqueue sweep --spec "$tmp/sweep.json"
ok "$([ "$rc" = 0 ] && [ "$(out)" = "s$((${sw#s} + 3))" ]; echo $?)" "an id taken by --id is skipped ($(out))"
jc --json enqueue sweep --spec "$tmp/sweep.json" --id my-sweep_1
is "$(jget 'd["id"], d["models"], d["shards"], d["epochs"], d["dataset"], d["dataset_version"] == "'"$ver"'"')" \
    "my-sweep_1 16 3 5 $ds True" "--id and --json: id, models, shards, epochs, dataset and version"
jc enqueue sweep --spec "$tmp/sweep.json" --id my-sweep_1
refused 1 "sweep 'my-sweep_1' already exists" "a sweep id that exists"
sed "s/\"$ds\"/\"$ds-loading\"/" "$tmp/sweep.json" >"$tmp/sweep-loading.json"
jc enqueue sweep --spec "$tmp/sweep-loading.json" --json
lsw=$(jget 'd["id"]')
is "$(jget 'd["shards"], repr(d["dataset_version"])')" "4 ''" "a loading dataset: its shards per split, no version yet (--json)"
is "$(sweep_field "$lsw" dataset)/$(sweep_field "$lsw" dataset_version)/$(sweep_field "$lsw" shards)" "$ds-loading//4" \
    "... and the sweep records the dataset with an empty version"
sed "s/\"$ds\"/\"$ds-failed\"/" "$tmp/sweep.json" >"$tmp/sweep-failed.json"
jc enqueue sweep --spec "$tmp/sweep-failed.json"
refused 1 "dataset $ds-failed failed to load: COPY failed: disk full" "a failed dataset"
sed "s/\"$ds\"/\"nosuch$$\"/" "$tmp/sweep.json" >"$tmp/sweep-missing.json"
jc enqueue sweep --spec "$tmp/sweep-missing.json"
refused 1 "no dataset nosuch$$ under prefix $prefix" "a dataset that does not exist"
sed 's/"lr": \[0.001, 0.0001\]/"lr": [0.001, -1]/' "$tmp/sweep.json" >"$tmp/sweep-bad.json"
jc enqueue sweep --spec "$tmp/sweep-bad.json"
refused 2 "$tmp/sweep-bad.json: sweep spec \$.grid.lr\[1\]: must be a positive number" "a bad spec: exit 2 with the JSON path"
sed 's/"arch": "mlp"/"arch": "lenet"/' "$tmp/sweep.json" >"$tmp/sweep-bad.json"
jc enqueue sweep --spec "$tmp/sweep-bad.json"
refused 2 "sweep spec \$.models\[1\]: model spec: \"arch\" must be one of" "a bad model: exit 2 with the JSON path"
raw --redis "redis://127.0.0.1:$port/0" enqueue sweep --spec "$tmp/sweep-bad.json"
refused 2 "sweep spec \$.models\[1\]" "a bad spec is refused before Redis is reached"
jc enqueue sweep --spec "$tmp/sweep.json" --id 'bad id!'
refused 2 "bad sweep id 'bad id!'" "a malformed --id"
jc enqueue sweep --spec "$tmp/sweep.json" --queue jq
refused 2 "--queue does not apply to enqueue sweep" "a job option with enqueue sweep"
jc enqueue sweep
refused 2 "enqueue sweep needs the sweep spec" "enqueue sweep without --spec"
jc enqueue diag.sleep --payload "$sl" --id x
refused 2 "--id names a sweep" "--id with a job type"
raw enqueue sweep --help
ok "$([ "$rc" = 0 ] && grep -q '^usage: jobctl enqueue sweep --spec FILE.json \[--id ID\]' "$tmp/out"; echo $?)" "enqueue sweep --help shows enqueue sweep"

# ---- warm start: a sweep's "init" names another sweep's model ------------------------
# my-sweep_1 (3 shards) has trained nothing yet: give its model 2 a history by hand, as commits and
# evaluations leave it: version 6 (the end of epoch 2), its best epoch 1.
mk=${prefix}sweep:{my-sweep_1}:models
redis-cli -u "$url" HSET "$mk" 2.version 6 2.ckpt /data/sweeps/my-sweep_1/models/2/v6-ab.ckpt 2.best_epoch 1 >/dev/null
warm_spec() { "$py" -c 'import json,sys; d = json.load(open(sys.argv[1])); d["init"] = sys.argv[2]; print(json.dumps(d))' "$tmp/sweep.json" "$1" >"$tmp/warm.json"; }
warm_spec my-sweep_1/2
jc enqueue sweep --spec "$tmp/warm.json" --id warm-latest
is "$(redis-cli -u "$url" HGET "${prefix}sweep:{warm-latest}:models" 5.spec | "$py" -c 'import json,sys; print(json.load(sys.stdin)["train"]["init"])')" \
    /data/sweeps/my-sweep_1/models/2/v6-ab.ckpt "init SWEEP/MODEL: every model's train starts from that model's latest checkpoint"
warm_spec my-sweep_1/2@2
jc enqueue sweep --spec "$tmp/warm.json" --id warm-e2
is "$(redis-cli -u "$url" HGET "${prefix}sweep:{warm-e2}:models" 0.spec | "$py" -c 'import json,sys; print(json.load(sys.stdin)["train"]["init"])')" \
    /data/sweeps/my-sweep_1/models/2/v6-ab.ckpt "init SWEEP/MODEL@2: epoch 2 ends at the latest checkpoint (version 6 of 3 shards)"
warm_spec my-sweep_1/2@1
jc enqueue sweep --spec "$tmp/warm.json" --id warm-best
is "$(redis-cli -u "$url" HGET "${prefix}sweep:{warm-best}:models" 0.spec | "$py" -c 'import json,sys; print(json.load(sys.stdin)["train"]["init"])')" \
    /data/sweeps/my-sweep_1/models/2/best-e1.ckpt "init SWEEP/MODEL@1: the best epoch's retained checkpoint"
warm_spec my-sweep_1/2@3
jc enqueue sweep --spec "$tmp/warm.json"
refused 1 "epoch 3 is gone; name my-sweep_1/2 or my-sweep_1/2@1" "init naming an epoch whose checkpoint was not kept"
warm_spec my-sweep_1/4
jc enqueue sweep --spec "$tmp/warm.json"
refused 1 "model 4 of sweep my-sweep_1 has no checkpoint yet" "init naming a model that has not trained"
warm_spec my-sweep_1/99
jc enqueue sweep --spec "$tmp/warm.json"
refused 2 "sweep my-sweep_1 has no model 99" "init naming a model the sweep does not have"
warm_spec nosuch/0
jc enqueue sweep --spec "$tmp/warm.json"
refused 2 "there is no sweep nosuch" "init naming a sweep that does not exist"
warm_spec my-sweep_1
jc enqueue sweep --spec "$tmp/warm.json"
refused 2 "sweep spec \$.init: must be \"SWEEP/MODEL\"" "a malformed init"

# ---- pause, resume and cancel of one model of a sweep -------------------------------
mfield() { redis-cli -u "$url" HGET "${prefix}sweep:{my-sweep_1}:models" "$1"; }
jc pause my-sweep_1/3
ok_out "$([ "$rc" = 0 ] && [ "$(out)" = "model 3 of sweep my-sweep_1 is paused (it was idle)" ] && [ "$(mfield 3.paused)" = 1 ] && \
      [ "$(mfield 3.state)" = idle ]; echo $?)" "pause SWEEP/MODEL pauses that model alone"
jc status my-sweep_1
ok_out "$([ "$rc" = 0 ] && grep -q '^  model 3 .* paused ' "$tmp/out" && [ "$(grep -c ' paused ' "$tmp/out")" = 1 ]; echo $?)" \
    "jobctl status shows model 3 paused, and no other"
jc --json status my-sweep_1
is "$(jget 'd["models"][3]["state"], d["models"][2]["state"]')" "paused idle" "status --json says paused too"
redis-cli -u "$url" HSET "${prefix}sweep:{my-sweep_1}:models" 5.state leased 5.paused 1 >/dev/null
jc status my-sweep_1
ok_out "$([ "$rc" = 0 ] && grep -q '^  model 5 .* pausing ' "$tmp/out"; echo $?)" "a paused model whose visit is still in flight shows as pausing"
redis-cli -u "$url" HSET "${prefix}sweep:{my-sweep_1}:models" 5.state idle 5.paused "" >/dev/null
jc pause my-sweep_1
jc resume my-sweep_1
ok_out "$([ "$rc" = 0 ] && [ "$(mfield 3.paused)" = 1 ]; echo $?)" "resuming the whole sweep leaves the model paused by itself paused"
jc resume my-sweep_1/3
ok_out "$([ "$rc" = 0 ] && [ "$(out)" = "model 3 of sweep my-sweep_1 is resumed (it was paused)" ] && [ "$(mfield 3.paused)" = "" ]; echo $?)" \
    "resume SWEEP/MODEL resumes it"
jc resume my-sweep_1/3
refused 1 "model 3 of sweep 'my-sweep_1' is idle, not paused: nothing to resume" "resuming a model that is not paused"
jc cancel my-sweep_1/3
ok_out "$([ "$rc" = 0 ] && [ "$(out)" = "model 3 of sweep my-sweep_1 is cancelled (it was idle)" ] && [ "$(mfield 3.state)" = cancelled ] && \
      [ "$(sweep_field my-sweep_1 live)" = 15 ] && [ "$(sweep_field my-sweep_1 state)" = running ]; echo $?)" \
    "cancel SWEEP/MODEL cancels that model for good: 15 live models left, the sweep runs on"
jc cancel my-sweep_1/3
refused 1 "model 3 of sweep 'my-sweep_1' is cancelled: it cannot be cancelled" "cancelling a cancelled model"
jc --json pause my-sweep_1/4
is "$(jget 'd["sweep"], d["model"], d["state"], d["previous_state"]')" "my-sweep_1 4 paused idle" "pause SWEEP/MODEL --json"
jc pause my-sweep_1/16
refused 1 "sweep 'my-sweep_1' has no model 16: its models are 0 to 15" "an unknown model index"
jc pause my-sweep_1/x
refused 2 "bad model 'x' in 'my-sweep_1/x': give SWEEP/MODEL with MODEL a model index" "a model that is not a number"
jc resume my-sweep_1/-1
refused 2 "bad model '-1'" "a negative model"
jc cancel my-sweep_1/
refused 2 "bad model ''" "no model after the slash"
jc pause /3
refused 2 "bad sweep id in '/3'" "no sweep before the slash"
jc cancel nosuch/1
refused 1 "no sweep 'nosuch'" "a model of an unknown sweep"
raw pause --help
ok "$([ "$rc" = 0 ] && grep -q '^usage: jobctl pause SWEEP | SWEEP/MODEL$' "$tmp/out"; echo $?)" "pause --help shows SWEEP/MODEL"

# ---- a Redis that can evict keys ----------------------------------------------------
# A private redis-server, filled while its policy is noeviction (a job waiting,
# one cancelled, a sweep), then switched to allkeys-lru: every command that
# writes is refused with the worker's message and writes nothing; the commands
# that read still work, to see what is there.
printf 'port 0\nunixsocket %s/lru.sock\nsave ""\nappendonly no\ndir %s\nmaxmemory-policy noeviction\n' "$tmp" "$tmp" >"$tmp/lru.conf"
"$server" "$tmp/lru.conf" >"$tmp/lru.log" 2>&1 &
lru_pid=$!
for _ in $(seq 100); do [ -S "$tmp/lru.sock" ] && break; sleep 0.05; done
[ -S "$tmp/lru.sock" ] || { echo "Bail out! the private redis-server did not start: $(tail -3 "$tmp/lru.log")"; exit 1; }
lru="unix://$tmp/lru.sock"
lc() { "$jobctl" --redis "$lru" --prefix "$prefix" "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; }
lcli() { redis-cli -s "$tmp/lru.sock" "$@"; }
lcli HSET "${prefix}dataset:$ds" state ready token t1 shards 3 version "$ver" error "" \
    splits '{"train": {"shards": 3, "rows": 600}, "valid": {"shards": 3, "rows": 60}}' >/dev/null
lc enqueue diag.sleep --payload "$sl"; lwait=$(out)
lc enqueue diag.sleep --payload "$sl"; lcan=$(out)
lc cancel "$lcan"
lc enqueue sweep --spec "$tmp/sweep.json" --id ev
ok_out "$([ "$rc" = 0 ] && [ "$(lcli HGET "${prefix}sweep:{ev}" state)" = running ]; echo $?)" "the private Redis holds a job, a cancelled job and sweep ev"
lcli CONFIG SET maxmemory-policy allkeys-lru >/dev/null
lbefore=$(keyspace '*' -s "$tmp/lru.sock")
ok "$(grep -q "^${prefix}sweep:{ev} " <<<"$lbefore" && grep -q "^${prefix}job:$lwait " <<<"$lbefore"; echo $?)" \
    "the private Redis's key space can be read (sweep ev and job $lwait are there)"
evict="jobctl: Redis at $lru has maxmemory-policy allkeys-lru, which can evict queue keys and lose jobs; set it to noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf)"
for cmd in 'enqueue diag.sleep --payload {"ms":1}' "enqueue diag.noop --count 3" 'enqueue diag.sleep --payload {"ms":1} --unique u1' \
           "enqueue etl --spec $CDS_SOURCE_ROOT/jobs/etl-fashion-mnist.json" "enqueue sweep --spec $tmp/sweep.json" \
           "enqueue sweep --spec $tmp/sweep.json --id ev2" "cancel $lwait" "retry $lcan" "cancel ev" "cancel ev/1" \
           "pause ev" "pause ev/1" "resume ev" "resume ev/1" "replay ev --id ev3"; do
    # shellcheck disable=SC2086 # the words are the command line
    lc $cmd
    ok "$([ "$rc" = 2 ] && [ "$(err)" = "$evict" ] && [ ! -s "$tmp/out" ]; echo $?)" "jobctl ${cmd//$tmp/TMP} is refused on an allkeys-lru Redis with the worker's message, exit 2"
    [ "$(err)" = "$evict" ] || echo "#   got rc $rc: $(head -c 300 "$tmp/err")"
done
is "$(keyspace '*' -s "$tmp/lru.sock")" "$lbefore" "the refused commands wrote nothing"
lc show "$lwait"
ok_out "$([ "$rc" = 0 ] && grep -q '^state  *waiting$' "$tmp/out"; echo $?)" "show still works there"
lc list --json
is "$(jget 'len(d)')" "1" "list still works there"
lc stats
ok_out "$([ "$rc" = 0 ] && grep -q '^default ' "$tmp/out"; echo $?)" "stats still works there"
lc workers
ok_out "$([ "$rc" = 0 ] && [ ! -s "$tmp/err" ]; echo $?)" "workers still works there"
lc status ev
ok_out "$([ "$rc" = 0 ] && grep -q 'model 15 ' "$tmp/out"; echo $?)" "status still works there"
lc results ev --json
ok_out "$([ "$rc" = 0 ] && valid_json; echo $?)" "results still works there"
lc plot ev --out "$tmp/ev.svg"
ok_out "$([ "$(err)" != "$evict" ] && ! grep -q maxmemory "$tmp/err"; echo $?)" "plot is not refused there (it only reads)"
is "$(keyspace '*' -s "$tmp/lru.sock")" "$lbefore" "... and the commands that read wrote nothing either"

tap_done
