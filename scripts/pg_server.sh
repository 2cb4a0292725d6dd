#!/usr/bin/env bash
# Starts or stops a private PostgreSQL cluster for the test suite: a fresh data
# directory under DIR, listening only on 127.0.0.1 at a free port (never the default
# cluster), password authentication over TCP. Installs Debian's server if missing.
#
#   eval "$(scripts/pg_server.sh start DIR)"   # prints PG* and COFFER_TEST_PG_* exports
#   scripts/pg_server.sh stop DIR
set -euo pipefail
action="${1:?start or stop}"
dir="${2:?state directory}"
PASSWORD=coffer-test-pg

bindir() {
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
    if [ -z "$found" ] || [ ! -x "$found/postgres" ]; then
        echo "installing PostgreSQL from Debian's packages (once)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql postgresql-contrib >&2
        found="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    fi
    echo "$found"
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$action" in
start)
    bin="$(bindir)"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        # The server runs as postgres, which must be able to reach its directory.
        chmod o+x "$(dirname "$dir")"
        chown postgres "$dir"
    fi
    printf '%s\n' "$PASSWORD" >"$dir/pwfile"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir/pwfile"; fi
    if ! as_owner "$bin/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1; then
        echo "initdb failed:" >&2
        cat "$dir/initdb.log" >&2
        exit 1
    fi
    port="$(free_port)"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c full_page_writes=off" start >&2
    cat <<ENV
export PGHOST=127.0.0.1
export PGPORT=$port
export PGUSER=postgres
export PGPASSWORD=$PASSWORD
export COFFER_TEST_PG=1
export COFFER_TEST_PG_BIN=$bin
ENV
    ;;
stop)
    bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
    if [ -n "$bin" ] && [ -d "$dir/data" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
