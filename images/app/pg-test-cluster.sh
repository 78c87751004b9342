#!/bin/sh
# A throw-away PostgreSQL cluster for tests and demos, on a loopback port.
#
#   images/app/pg-test-cluster.sh start DIR PORT USER PASSWORD DB
#   images/app/pg-test-cluster.sh stop DIR
#
# start: creates the cluster in DIR/data if it is not there yet (initdb), starts the server on
#   127.0.0.1:PORT with its unix socket in DIR/sock and its log in DIR/postgres.log, and makes
#   sure the login role USER (password authentication, scram-sha-256 over TCP from 127.0.0.1
#   and ::1) and the database DB owned by it exist. Idempotent: starting a running cluster
#   only re-checks the role and database; starting a stopped one keeps its data.
#   PASSWORD "-" reads the password from the first line of stdin instead, so it does not
#   appear in this script's argv; the environment variable PG_TEST_PASSWORD, when set, is
#   used instead of either. The password reaches psql on its stdin, never its argv.
# stop: fast shutdown; succeeds when nothing runs. The data stays in DIR until you remove it.
#
# PostgreSQL refuses to run as root: run as root, every server command runs as the user
# `postgres` (runuser) and DIR is chowned to it (its parents must be searchable by it, as
# /tmp is); run as any other user, as that user. Binaries: $PG_BINDIR, else the newest
# /usr/lib/postgresql/*/bin (Debian's layout), else initdb on PATH.
# Needs: postgresql (Debian: apt-get install postgresql).
# Durability is traded for speed (fsync=off): this is for tests only.
set -eu

die() {
    echo "pg-test-cluster: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start DIR PORT USER PASSWORD DB | stop DIR" >&2
    exit 2
}

find_bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then
        echo "$PG_BINDIR"
        return
    fi
    best=""
    bestv=-1
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] || continue
        v=${d#/usr/lib/postgresql/}
        v=${v%/bin}
        case $v in "" | *[!0-9]*) continue ;; esac
        if [ "$v" -gt "$bestv" ]; then
            best=$d
            bestv=$v
        fi
    done
    if [ -z "$best" ] && command -v initdb >/dev/null 2>&1; then
        best=$(dirname "$(command -v initdb)")
    fi
    [ -n "$best" ] || die "PostgreSQL is not installed (apt-get install postgresql), or set PG_BINDIR"
    echo "$best"
}

# Runs a command as the cluster's owner.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

valid_name() {
    case $1 in
        "" | [!a-z_]* | *[!a-z0-9_]*) die "$2 '$1': use lower-case letters, digits and _ (not first)" ;;
    esac
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2

case $cmd in
    stop)
        [ $# -eq 2 ] || usage
        [ -f "$dir/data/postmaster.pid" ] || exit 0
        bindir=$(find_bindir)
        if ! as_pg "$bindir/pg_ctl" stop -D "$dir/data" -m fast -w -t 30 >/dev/null 2>&1; then
            # Not running (a stale pid file) is fine; still running is not.
            if as_pg "$bindir/pg_ctl" status -D "$dir/data" >/dev/null 2>&1; then
                die "could not stop the server in $dir"
            fi
        fi
        exit 0
        ;;
    start) [ $# -eq 6 ] || usage ;;
    *) usage ;;
esac

port=$3
user=$4
password=$5
db=$6
case $port in "" | *[!0-9]*) die "PORT '$port' is not a number" ;; esac
valid_name "$user" USER
valid_name "$db" DB
if [ -n "${PG_TEST_PASSWORD+x}" ]; then
    password=$PG_TEST_PASSWORD
elif [ "$password" = - ]; then
    IFS= read -r password || [ -n "$password" ] || die "no password on stdin"
fi
bindir=$(find_bindir)

mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "no user 'postgres' (apt-get install postgresql creates it)"
    chown postgres:postgres "$dir"
fi
chmod 700 "$dir"
as_pg test -w "$dir" || die "$dir is not reachable by the cluster's owner (are its parents searchable?)"
dir=$(cd "$dir" && pwd)

if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$bindir/initdb" -D "$dir/data" -U postgres -A trust --auth-host=scram-sha-256 \
        -E UTF8 --no-locale -N >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        die "initdb failed"
    }
    cat >>"$dir/data/postgresql.conf" <<'EOF'
# pg-test-cluster.sh: a disposable cluster, speed over durability.
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 50
shared_buffers = 16MB
EOF
fi
as_pg mkdir -p "$dir/sock"

if ! as_pg "$bindir/pg_ctl" status -D "$dir/data" >/dev/null 2>&1; then
    as_pg "$bindir/pg_ctl" start -D "$dir/data" -l "$dir/postgres.log" -w -t 30 \
        -o "-p $port -k $dir/sock -c listen_addresses=127.0.0.1" >/dev/null || {
        tail -n 20 "$dir/postgres.log" >&2 || true
        die "the server did not start on 127.0.0.1:$port"
    }
fi

# SQL string literal: double each single quote (standard_conforming_strings is on).
quoted=$(printf '%s' "$password" | sed "s/'/''/g")
as_pg "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir/sock" -p "$port" -U postgres -d postgres >/dev/null <<EOF
SELECT 'CREATE ROLE "$user" LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$user')\\gexec
ALTER ROLE "$user" LOGIN PASSWORD '$quoted';
SELECT 'CREATE DATABASE "$db" OWNER "$user"' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')\\gexec
EOF
echo "pg-test-cluster: postgres on 127.0.0.1:$port, database $db, user $user ($dir)" >&2
