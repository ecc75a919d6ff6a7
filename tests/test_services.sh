#!/usr/bin/env bash
# scripts/services as a user runs it, in directories of its own under /tmp
# (never var/quickstart, never the servers of scripts/with-services), whose
# name holds a space (services.env must quote it): up, status, down, each
# twice (idempotent); services.env works in a fresh shell, even one that set
# PGSSLMODE or PGOPTIONS; a key and a row written through it survive down and
# up on the same ports; a port taken meanwhile by another program stops `up`
# before anything starts, with one line naming the port and the fix, and `up
# --new-ports` then brings the same data back on new ports; a later start
# that fails for another reason is not taken for a port clash that an earlier
# start logged; a stale postmaster.pid naming another live process is not
# PostgreSQL (status and down leave that process alone, up starts the
# server); the servers do not hold the script's lock; `bash scripts/services`
# works without the exec bit; bad usage is one line.  As root, a directory
# postgres cannot reach (mode 700) puts the cluster under ~postgres,
# recorded in services.env.  Everything it started is stopped at the end.
# usage: test_services.sh (CDS_SOURCE_ROOT names the source tree)
# shellcheck disable=SC2016 # (the commands in single quotes run in a fresh shell, which expands them)
set -u
src=${CDS_SOURCE_ROOT:?CDS_SOURCE_ROOT is not set: run through meson test}
services=$src/scripts/services
py=/usr/bin/python3
tmp=$(mktemp -d /tmp/cds-services-test.XXXXXX)
chmod 755 "$tmp" # postgres may need to reach $tmp/qs (mktemp makes it 700)
dir="$tmp/q s"
closed=$tmp/closed/qs # under a mode 700 directory
listener=
sleeper=

# svc ARGS...: scripts/services on $dir; stdout in $tmp/out, stderr in
# $tmp/err, exit status in $rc.
svc() { "$services" --dir "$dir" "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; }
# in_env ENV_FILE CMD: CMD in a fresh bash that sourced ENV_FILE, with none of
# the harness's addresses (as a user's new shell).
in_env() {
    env -u CDS_REDIS_URL -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE \
        bash -c '. "$1" && eval "$2"' _ "$1" "$2" 2>&1
}
# pg_data_of ENV_FILE: CDS_PG_DATA from it.
# shellcheck source=/dev/null
pg_data_of() { (. "$1" && echo "$CDS_PG_DATA"); }

cleanup() {
    [ -n "$listener" ] && kill "$listener" 2>/dev/null && wait "$listener" 2>/dev/null
    [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null && wait "$sleeper" 2>/dev/null
    local d data
    for d in "$dir" "$closed"; do
        [ -f "$d/services.env" ] || continue
        "$services" --dir "$d" down >/dev/null 2>&1
        data=$(pg_data_of "$d/services.env")
        case $data in "$d"/*) ;; */cds-quickstart.*) rm -rf "$data" ;; esac
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

. "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
show() { sed 's/^/#   /' "$tmp/out" "$tmp/err"; }
# ok_rc WANT NAME: the last svc exited WANT (its output shown if not).
ok_rc() { is "$rc" "$1" "$2"; [ "$rc" = "$1" ] || show; }
# one_line NAME PATTERN: stderr is one line, "services: ..." matching PATTERN.
one_line() {
    local why=""
    [ "$(wc -l <"$tmp/err")" = 1 ] || why="$(wc -l <"$tmp/err") lines on stderr; "
    grep -q '^services: ' "$tmp/err" || why="${why}no 'services: ' prefix; "
    grep -q -- "$2" "$tmp/err" || why="${why}no '$2'; "
    ok "$([ -z "$why" ]; echo $?)" "$1: one line ($(head -n 1 "$tmp/err"))"
    [ -z "$why" ] || echo "#   $why"
}
# status_pid SERVICE: the pid `status` shows for it (empty when down).
status_pid() { "$services" --dir "$dir" status 2>/dev/null | awk -v s="$1" '$1 == s && $2 == "up" { print $4 }'; }
listening() { [ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]; }

# ---- before anything --------------------------------------------------------
svc status
ok_rc 3 "status before any up: exit 3"
grep -q 'no services' "$tmp/out"; ok $? "status before any up says there are none"

# ---- up, twice --------------------------------------------------------------
svc up
ok_rc 0 "up: exit 0"
env=$dir/services.env
[ -f "$env" ]; ok $? "up writes services.env"
# shellcheck source=/dev/null
redis_port=$(. "$env" && echo "$CDS_REDIS_PORT")
# shellcheck source=/dev/null
pg_port=$(. "$env" && echo "$PGPORT")
is "$(in_env "$env" 'redis-cli -u "$CDS_REDIS_URL" PING')" PONG "Redis answers at services.env's CDS_REDIS_URL"
is "$(in_env "$env" "psql -XtAc 'SELECT 1'")" 1 "PostgreSQL answers at services.env's PG* in a fresh shell"
is "$(PGSSLMODE=require PGOPTIONS='-c no_such_setting=1' PGPASSWORD=x in_env "$env" "psql -XtAc 'SELECT 3'")" 3 \
    "...and in one that had set PGSSLMODE=require and PGOPTIONS (services.env unsets them)"
rpid=$(status_pid redis)
ppid=$(status_pid postgresql)
[ -n "$rpid" ] && [ -n "$ppid" ]; ok $? "status shows both pids ($rpid, $ppid)"
locks=$(readlink "/proc/$rpid/fd/"* "/proc/$ppid/fd/"* 2>/dev/null | grep -c services.lock)
is "$locks" 0 "the servers do not hold services.lock open"

cp "$env" "$tmp/env.first"
svc up
ok_rc 0 "up when up: exit 0"
is "$(grep -c 'already up' "$tmp/out")" 2 "up when up says both are already up"
is "$(status_pid redis) $(status_pid postgresql)" "$rpid $ppid" "up when up starts nothing new"
cmp -s "$env" "$tmp/env.first"; ok $? "up when up leaves services.env as it was"

svc status
ok_rc 0 "status when up: exit 0"
grep -q "^redis .* up .*127.0.0.1:$redis_port " "$tmp/out"; ok $? "status shows Redis up on its port"
grep -q "^postgresql .* up .*127.0.0.1:$pg_port " "$tmp/out"; ok $? "status shows PostgreSQL up on its port"

# ---- data, then down and up -------------------------------------------------
in_env "$env" 'redis-cli -u "$CDS_REDIS_URL" SET t:services:key kept' >/dev/null
in_env "$env" "psql -Xqc 'CREATE TABLE kept (v text); INSERT INTO kept VALUES (\$\$row\$\$)'" >/dev/null

svc down
ok_rc 0 "down: exit 0"
is "$(grep -c stopped "$tmp/out")" 2 "down stops both"
listening "$redis_port" || listening "$pg_port"; ok $((!$?)) "nothing listens on the two ports after down"
svc status
ok_rc 3 "status when down: exit 3"
is "$(grep -c ' down ' "$tmp/out")" 2 "status shows both down"
svc down
ok_rc 0 "down when down: exit 0"
is "$(grep -c 'already down' "$tmp/out")" 2 "down when down says both are already down"

svc up
ok_rc 0 "up after down: exit 0"
cmp -s "$env" "$tmp/env.first"; ok $? "up after down keeps the ports (services.env unchanged)"
is "$(in_env "$env" 'redis-cli -u "$CDS_REDIS_URL" GET t:services:key')" kept "the Redis key is back after down and up"
is "$(in_env "$env" "psql -XtAc 'SELECT v FROM kept'")" row "the PostgreSQL row is back after down and up"

# ---- a port taken meanwhile -------------------------------------------------
svc up --new-ports
ok_rc 1 "up --new-ports while up: exit 1"
one_line "up --new-ports while up" "scripts/services down"
svc down
"$py" -c 'import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1) # the port may still be in TIME_WAIT after down
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
time.sleep(120)' "$redis_port" &
listener=$!
for _ in $(seq 100); do listening "$redis_port" && break; sleep 0.1; done
svc up
ok_rc 1 "up with the Redis port taken: exit 1"
one_line "up with the Redis port taken" "port $redis_port .*taken.*scripts/services up --new-ports"
listening "$pg_port"; ok $((!$?)) "up with a port taken starts nothing (PostgreSQL stays down)"
svc up --new-ports
ok_rc 0 "up --new-ports: exit 0"
# shellcheck source=/dev/null
new_port=$(. "$env" && echo "$CDS_REDIS_PORT")
[ "$new_port" != "$redis_port" ]; ok $? "up --new-ports moves Redis off the taken port ($redis_port -> $new_port)"
is "$(in_env "$env" 'redis-cli -u "$CDS_REDIS_URL" GET t:services:key')" kept "the Redis key is there on the new port"
is "$(in_env "$env" "psql -XtAc 'SELECT v FROM kept'")" row "the PostgreSQL row is there on the new port"
kill "$listener" 2>/dev/null; wait "$listener" 2>/dev/null; listener=

# ---- a failed start after an earlier port clash -----------------------------
# Both servers append to their logs at each start: an "Address already in
# use" that an earlier start logged must not make a later failure, for
# another reason, read as a taken port.
# shellcheck source=/dev/null
redis_port=$(. "$env" && echo "$CDS_REDIS_PORT")
# shellcheck source=/dev/null
pg_port=$(. "$env" && echo "$PGPORT")
pg_data=$(pg_data_of "$env")
svc down
manifest=$(ls "$dir"/redis/appendonlydir/*.manifest)
cp "$manifest" "$tmp/manifest"
echo "1:M 01 Jan 2024 00:00:00.000 # Warning: Could not create server TCP listening socket 127.0.0.1:$redis_port: bind: Address already in use" \
    >>"$dir/redis/redis.log"
echo bogus >"$manifest"
svc up
ok_rc 1 "up with Redis's append-only manifest damaged: exit 1"
grep -q "redis-server did not start on port $redis_port" "$tmp/err" && ! grep -q "taken by another program" "$tmp/err"
ok $? "...said as a failed start, not as a taken port (the clash in redis.log is an earlier start's)"
cp "$tmp/manifest" "$manifest"
cp -p "$pg_data/postgresql.conf" "$tmp/postgresql.conf"
echo "2024-01-01 00:00:00.000 UTC [1] LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use" \
    >>"$pg_data/postgresql.log"
echo "no_such_setting = on" >>"$pg_data/postgresql.conf"
svc up
ok_rc 1 "up with a bad setting in postgresql.conf: exit 1"
grep -q "PostgreSQL did not start on port $pg_port" "$tmp/err" && ! grep -q "taken by another program" "$tmp/err"
ok $? "...said as a failed start, not as a taken port (the clash in postgresql.log is an earlier start's)"
cp "$tmp/postgresql.conf" "$pg_data/postgresql.conf"
svc up
ok_rc 0 "up once both are mended: exit 0"
is "$(in_env "$env" 'redis-cli -u "$CDS_REDIS_URL" GET t:services:key')" kept "the Redis key is still there"

# ---- a stale postmaster.pid -------------------------------------------------
# After a reboot the pid in postmaster.pid may be another process: here a
# sleep of the user PostgreSQL runs as (so that a kill from it would
# succeed), with the default action for every signal (a background job of
# a script ignores SIGINT and SIGQUIT, which pg_ctl stop sends).
cp "$pg_data/postmaster.pid" "$tmp/postmaster.pid"
svc down
if [ "$(id -u)" -eq 0 ]; then
    setpriv --reuid=postgres --regid=postgres --clear-groups env --default-signal sleep 300 &
else
    env --default-signal sleep 300 &
fi
sleeper=$!
{ echo "$sleeper"; tail -n +2 "$tmp/postmaster.pid"; } >"$pg_data/postmaster.pid"
is "$(status_pid postgresql)" "" "status: a postmaster.pid naming another live process (pid $sleeper) is not PostgreSQL up"
svc down
ok_rc 0 "down with that postmaster.pid: exit 0"
grep -q "postgresql already down" "$tmp/out" && kill -0 "$sleeper" 2>/dev/null
ok $? "...says PostgreSQL is already down and leaves that process alone"
svc up
ok_rc 0 "up with that postmaster.pid: exit 0"
grep -q "removed a stale .*postmaster.pid" "$tmp/out"; ok $? "...removes the stale postmaster.pid, and says so"
is "$(in_env "$env" "psql -XtAc 'SELECT v FROM kept'")" row "...and starts PostgreSQL on its data"
kill -0 "$sleeper" 2>/dev/null; ok $? "...and leaves that process alone"
kill "$sleeper" 2>/dev/null; wait "$sleeper" 2>/dev/null; sleeper=

# ---- bash scripts/services, without the exec bit ---------------------------
# The quickstart runs `bash scripts/services`; the script runs itself again
# under its lock, which must not need the exec bit either.
mkdir -p "$tmp/noexec/scripts"
cp "$src/scripts/services" "$src/scripts/services-lib.bash" "$tmp/noexec/scripts/"
chmod 644 "$tmp/noexec/scripts/services" "$tmp/noexec/scripts/services-lib.bash"
bash "$tmp/noexec/scripts/services" --dir "$dir" status >"$tmp/out" 2>"$tmp/err"; rc=$?
ok_rc 0 "bash scripts/services status, the file not executable: exit 0"
grep -q "^postgresql .* up " "$tmp/out"; ok $? "...and shows the servers up"

# ---- usage ------------------------------------------------------------------
svc bogus
ok_rc 1 "an unknown command: exit 1"
one_line "an unknown command" "unknown argument 'bogus'"
svc status --new-ports
ok_rc 1 "--new-ports without up: exit 1"
one_line "--new-ports without up" "goes with up"
svc down

# ---- a directory postgres cannot reach ---------------------------------------
mkdir -p "$closed"
chmod 700 "$tmp/closed"
"$services" --dir "$closed" up >"$tmp/out" 2>"$tmp/err"; rc=$?
ok_rc 0 "up in a directory under a mode 700 one: exit 0"
data=$(pg_data_of "$closed/services.env")
if [ "$(id -u)" -eq 0 ]; then
    case $data in "$closed"/*) r=1 ;; */cds-quickstart.*) r=0 ;; *) r=1 ;; esac
    ok $r "as root, the cluster goes where postgres can reach it, recorded in services.env ($data)"
else
    is "$data" "$closed/pg" "as a user, the cluster stays in the directory"
fi
is "$(in_env "$closed/services.env" "psql -XtAc 'SELECT 2'")" 2 "PostgreSQL answers there"
"$services" --dir "$closed" down >"$tmp/out" 2>"$tmp/err"; rc=$?
ok_rc 0 "down there: exit 0"

tap_done
