# services-lib.bash: starting and stopping a private redis-server and
# PostgreSQL 15, shared by scripts/with-services (a throwaway pair per test
# run) and scripts/services (the quickstart's pair, kept between runs).
# Sourced, never run; the caller sets `prog` (the name its errors start with)
# and `set -euo pipefail`.
#
# Both servers listen on 127.0.0.1 only.  Redis keeps an append-only file
# (every write logged, fsynced each second) and never evicts (the workers
# refuse an evicting Redis).  PostgreSQL refuses to run as root, so as root
# its programs run through `runuser -u postgres` and its data directory
# belongs to postgres (svc_pg_reachable tells whether postgres can reach a
# directory at all: a repository under /root, mode 700, is out of its reach).
#
# Redis runs in the foreground of a background process, not daemonized, so
# that its pid is known at once and a failed start (a taken port, a bad
# option) is noticed at once; svc_redis_start's DETACH puts it in a session
# of its own so that it outlives the caller and its terminal.

# die MESSAGE: one line on stderr, exit 1.
# shellcheck disable=SC2154 # prog: set by the caller
svc_die() {
    echo "$prog: $*" >&2
    exit 1
}

# Last lines of a log, indented, on stderr.
# shellcheck disable=SC2154 # prog: set by the caller
svc_show_log() {
    if [ -r "$1" ]; then
        echo "$prog: last lines of $1:" >&2
        tail -n 25 "$1" | sed 's/^/    /' >&2
    fi
}

# The libpq variables that would send psql and libpq elsewhere than the
# address we give (PGHOST, PGPORT), or make them fail against our servers (no
# SSL, trust authentication, no extra options): unset wherever we hand out
# addresses (with-services' CMD, the services.env that scripts/services writes).
# shellcheck disable=SC2034 # used by the scripts that source this file
svc_pg_unset_vars=(PGHOSTADDR PGSERVICE PGPASSWORD PGSSLMODE PGOPTIONS)

# Finds the programs (redis_server, redis_cli, pg_bin) and decides who runs
# PostgreSQL (as_pg: empty, or runuser as postgres when we are root).
svc_find_programs() {
    pg_bin=${CDS_PG_BIN:-/usr/lib/postgresql/15/bin}
    redis_server=$(command -v redis-server || true)
    redis_cli=$(command -v redis-cli || true)
    [ -n "$redis_server" ] || svc_die "redis-server not found: run scripts/install-deps"
    [ -n "$redis_cli" ] || svc_die "redis-cli not found: run scripts/install-deps"
    [ -x "$pg_bin/initdb" ] || svc_die "$pg_bin/initdb not found: run scripts/install-deps (postgresql-15)"
    as_pg=()
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || svc_die "user postgres does not exist: install postgresql-15 (scripts/install-deps)"
        as_pg=(runuser -u postgres --)
    fi
}

# ---- ports ------------------------------------------------------------------

# Whether something listens on TCP port $1 of 127.0.0.1.
svc_port_busy() {
    if command -v ss >/dev/null 2>&1 && [ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]; then
        return 0
    fi
    (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The program listening on port $1, as "NAME pid N" when ss can tell (as
# root, or for our own processes), else nothing.
svc_port_owner() {
    command -v ss >/dev/null 2>&1 || return 0
    ss -ltnpH "sport = :$1" 2>/dev/null |
        sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 pid \2/p' | head -n 1
}

# A TCP port with no listener, below Linux's ephemeral range so that
# outgoing connections do not race us for it; never one of the ports given.
svc_free_port() { # [AVOID...]
    local p a taken
    for _ in $(seq 200); do
        p=$((15000 + RANDOM % 17000))
        taken=0
        for a in "$@"; do [ "$a" = "$p" ] && taken=1; done
        if [ "$taken" -eq 0 ] && ! svc_port_busy "$p"; then
            echo "$p"
            return 0
        fi
    done
    svc_die "no free TCP port found on 127.0.0.1"
}

# ---- logs -------------------------------------------------------------------

# The size of file $1 in bytes, 0 when it does not exist: noted before a
# server starts, so that what this start wrote to its (append-only) log can be
# told from what earlier starts wrote.
svc_log_size() {
    stat -c %s "$1" 2>/dev/null || echo 0
}

# svc_log_port_clash LOG SIZE: whether what LOG got after its first SIZE
# bytes says the port was taken (both servers log "Address already in use").
# No pipe: under pipefail, grep -q leaving early could fail the tail.
svc_log_port_clash() {
    [ -r "$1" ] && grep -q 'Address already in use' < <(tail -c +$(($2 + 1)) "$1")
}

# ---- Redis ------------------------------------------------------------------

# svc_redis_conf DIR PORT [SOCKET]: writes DIR/redis.conf: data (the
# append-only file), log and pid file in DIR; a unix socket when given.
svc_redis_conf() {
    local dir=$1 port=$2 sock=${3:-}
    {
        echo "bind 127.0.0.1"
        echo "port $port"
        if [ -n "$sock" ]; then
            echo "unixsocket \"$sock\""
            echo "unixsocketperm 700"
        fi
        echo "dir \"$dir\""
        echo "daemonize no"
        echo "pidfile \"$dir/redis.pid\""
        echo "logfile \"$dir/redis.log\""
        echo "appendonly yes"
        echo "appendfsync everysec"
        echo "maxmemory-policy noeviction"
        echo 'save ""'
    } >"$dir/redis.conf"
}

# svc_redis_start DIR PORT [DETACH]: starts redis-server on DIR/redis.conf
# and waits until it answers on PORT.  Sets redis_pid (empty when it did not
# start).  Fails, with the server's log kept in DIR/redis.log, when it exits
# or does not answer within 10 s; svc_log_port_clash on that log, from its
# size before the start, tells a taken port.
svc_redis_start() {
    local dir=$1 port=$2 detach=${3:-}
    if [ -n "$detach" ]; then
        setsid "$redis_server" "$dir/redis.conf" </dev/null >>"$dir/redis.log" 2>&1 &
    else
        "$redis_server" "$dir/redis.conf" </dev/null >>"$dir/redis.log" 2>&1 &
    fi
    redis_pid=$!
    for _ in $(seq 100); do
        if [ "$("$redis_cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
            return 0
        fi
        if ! kill -0 "$redis_pid" 2>/dev/null; then
            wait "$redis_pid" 2>/dev/null || true
            redis_pid=
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# svc_redis_stop PID [SECONDS]: SIGTERM (Redis then flushes its append-only
# file and exits), SIGKILL after SECONDS (default 5) if it is still there
# (only then: once it has exited, its pid may be another process's).
svc_redis_stop() {
    local pid=$1 secs=${2:-5}
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Reaps it when it is our child; a detached one was reaped by init.
    wait "$pid" 2>/dev/null || true
}

# ---- PostgreSQL -------------------------------------------------------------

# Runs a PostgreSQL program, as postgres when we are root, from / so that an
# unreadable current directory does not upset it.
svc_pg_run() {
    (cd / && "${as_pg[@]}" "$@")
}

# Whether the user that runs PostgreSQL can reach directory $1.
svc_pg_reachable() {
    if [ "${#as_pg[@]}" -gt 0 ]; then
        runuser -u postgres -- test -x "$1"
    else
        test -x "$1"
    fi
}

# svc_pg_initdb DATA LOG: an empty cluster in DATA (made if missing, mode 700,
# owned by postgres as root), superuser postgres, trust authentication.
svc_pg_initdb() {
    local data=$1 log=$2
    mkdir -p "$data"
    chmod 700 "$data"
    if [ "${#as_pg[@]}" -gt 0 ]; then
        chown postgres:postgres "$data"
    fi
    if ! svc_pg_run "$pg_bin/initdb" -D "$data" -A trust -U postgres --no-sync \
            -E UTF8 --locale=C >"$log" 2>&1; then
        svc_show_log "$log"
        svc_die "initdb failed in $data"
    fi
}

# svc_pg_conf DATA PORT SOCKET_DIR [fast]: writes DATA/postgresql.auto.conf,
# which wins over postgresql.conf.  An empty SOCKET_DIR means no unix socket
# (TCP only).  `fast` turns durability off (fsync and the rest): for a
# throwaway server only, a crash of the machine may corrupt it.
svc_pg_conf() {
    local data=$1 port=$2 sock_dir=$3 fast=${4:-}
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$sock_dir'"
        echo "max_connections = 200"
        if [ "$fast" = fast ]; then
            echo "fsync = off"
            echo "synchronous_commit = off"
            echo "full_page_writes = off"
        fi
    } >"$data/postgresql.auto.conf"
    if [ "${#as_pg[@]}" -gt 0 ]; then
        chown postgres:postgres "$data/postgresql.auto.conf"
    fi
}

# svc_pg_start DATA CTL_LOG: starts the server (its log appended to
# DATA/postgresql.log, pg_ctl's to CTL_LOG) and waits until it accepts
# connections: pg_ctl -w returns once postmaster.pid says "ready", which the
# postmaster writes after it has opened its sockets and finished recovery.
# pg_ctl puts the server in a session of its own, so it outlives the caller.
svc_pg_start() {
    local data=$1 ctl_log=$2
    svc_pg_run "$pg_bin/pg_ctl" -D "$data" -l "$data/postgresql.log" -w -t 60 start >>"$ctl_log" 2>&1
}

# svc_pg_pid DATA: the postmaster's pid when a server runs on DATA, else
# nothing (and status 1).
svc_pg_pid() {
    local out
    out=$(svc_pg_run "$pg_bin/pg_ctl" -D "$1" status 2>/dev/null) || return 1
    sed -n 's/.*(PID: \([0-9]*\)).*/\1/p' <<<"$out"
}

# svc_pg_stop DATA: a fast shutdown (connections cut, everything written),
# an immediate one if that takes over 20 s.
svc_pg_stop() {
    svc_pg_run "$pg_bin/pg_ctl" -D "$1" -m fast -t 20 -w stop >/dev/null 2>&1 ||
        svc_pg_run "$pg_bin/pg_ctl" -D "$1" -m immediate -w stop >/dev/null 2>&1
}
