#!/bin/sh
# Installs and (re)starts herd's demo TODO app, version APP_VERSION below, on this instance.
# Run by a Custom Script extension, as root, in the extension's directory:
#
#   bash installapp-v1.sh <db> <user> <password>      (any POSIX sh works: sh, busybox ash)
#
# installapp-v2.sh is this file with APP_VERSION=2 (build.sh writes it; a test checks that
# they differ only there), so each works when it alone is downloaded. Where things are:
#
# - Under herd's process driver (HERD_ADDRESS is set: the instance is a process sandbox on the
#   host) the database is on 127.0.0.1, the app listens on $HERD_ADDRESS:${TODO_PORT:-80},
#   and installs into $HOME/todo.
# - Otherwise (a QEMU VM with user networking) the database is on 10.0.2.2, QEMU's alias for
#   the host's loopback, the app listens on 0.0.0.0:80 and installs into /opt/herd-todo.
# - TODO_DB_HOST / TODO_DB_PORT override the database's address (port 5432 by default),
#   TODO_APP_URL where the binary comes from when ./herd-todo is not here (default
#   http://<db host>:8000/herd-todo), TODO_WAIT_SECONDS how long to wait for the app (30).
#
# The password goes to <install dir>/db-password (mode 0600) and the app reads it from there:
# it never appears in the app's argv, in the environment, or in any output. A previous app
# started by this script (its pid file) is stopped first. The script exits 0 only once the
# new app answers /api/version locally with this version; otherwise it prints the tail of
# app.log to stderr and exits non-zero.
set -eu

APP_VERSION=1

say() { echo "installapp: $*"; }
die() {
    echo "installapp: $*" >&2
    exit 1
}

if [ $# -ne 3 ]; then
    echo "usage: $0 <db> <user> <password>" >&2
    exit 2
fi
DB_NAME=$1
DB_USER=$2
DB_PASSWORD=$3
if [ -z "$DB_NAME" ] || [ -z "$DB_USER" ]; then die "<db> and <user> must not be empty"; fi

if [ -n "${HERD_ADDRESS:-}" ]; then
    DB_HOST=${TODO_DB_HOST:-127.0.0.1}
    LISTEN_HOST=$HERD_ADDRESS
    LISTEN_PORT=${TODO_PORT:-80}
    INSTALL_DIR=${HOME:?HOME must be set}/todo
    DETACH="" # stay in the instance's process group: stopping the instance stops the app
else
    DB_HOST=${TODO_DB_HOST:-10.0.2.2}
    LISTEN_HOST=0.0.0.0
    LISTEN_PORT=${TODO_PORT:-80}
    INSTALL_DIR=/opt/herd-todo
    DETACH=setsid # leave the guest agent's session: the app outlives the script
fi
DB_PORT=${TODO_DB_PORT:-5432}
APP_URL=${TODO_APP_URL:-http://$DB_HOST:8000/herd-todo}
WAIT_SECONDS=${TODO_WAIT_SECONDS:-30}
case $LISTEN_HOST in
    0.0.0.0) CHECK_HOST=127.0.0.1 ;;
    *:*) CHECK_HOST="[$LISTEN_HOST]" ;;
    *) CHECK_HOST=$LISTEN_HOST ;;
esac
case $LISTEN_HOST in
    *:*) LISTEN="[$LISTEN_HOST]:$LISTEN_PORT" ;;
    *) LISTEN="$LISTEN_HOST:$LISTEN_PORT" ;;
esac
CHECK_URL="http://$CHECK_HOST:$LISTEN_PORT/api/version"
if [ -z "$DETACH" ] || ! command -v "$DETACH" >/dev/null 2>&1; then DETACH=""; fi

with_timeout() {
    if command -v timeout >/dev/null 2>&1; then timeout "$@"; else
        shift
        "$@"
    fi
}

# fetch URL OUT SECONDS: GET URL into file OUT ("-" for stdout). Busybox wget's -T crashes
# in the test guest, so the time limit comes from timeout(1).
fetch() {
    if command -v wget >/dev/null 2>&1; then
        with_timeout "$3" wget -q -O "$2" "$1"
    elif command -v curl >/dev/null 2>&1; then
        with_timeout "$3" curl -fsS -o "$2" "$1"
    else
        die "neither wget nor curl is installed"
    fi
}

# alive PID: the process exists and is not a zombie (an unreaped child still answers kill -0).
alive() {
    [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null
}

pid_of_app() {
    pid=$(cat "$INSTALL_DIR/herd-todo.pid" 2>/dev/null) || return 1
    case $pid in "" | *[!0-9]*) return 1 ;; esac
    # A pid file can outlive its process and the pid be reused: check it is our app.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "herd-todo" || return 1
    echo "$pid"
}

show_log() {
    if [ -s "$INSTALL_DIR/app.log" ]; then
        echo "installapp: last lines of $INSTALL_DIR/app.log:" >&2
        tail -n 20 "$INSTALL_DIR/app.log" >&2
    fi
}

command -v wget >/dev/null 2>&1 || command -v curl >/dev/null 2>&1 ||
    die "neither wget nor curl is installed"
mkdir -p "$INSTALL_DIR"
umask 077

# 1. The binary: shipped next to this script (fileUris), else downloaded. Replaced by
#    rename, so a running app's executable is never written to.
if [ -f ./herd-todo ]; then
    cp ./herd-todo "$INSTALL_DIR/herd-todo.new"
else
    say "downloading $APP_URL"
    fetch "$APP_URL" "$INSTALL_DIR/herd-todo.new" 30 || {
        rm -f "$INSTALL_DIR/herd-todo.new"
        die "cannot download $APP_URL"
    }
fi
[ -s "$INSTALL_DIR/herd-todo.new" ] || die "the app binary is empty"
chmod 755 "$INSTALL_DIR/herd-todo.new"
mv -f "$INSTALL_DIR/herd-todo.new" "$INSTALL_DIR/herd-todo"

# 2. The password, readable by root (the app's user) only. printf is a shell builtin, so the
#    password is in no process's argv here.
printf '%s\n' "$DB_PASSWORD" >"$INSTALL_DIR/db-password.new"
chmod 600 "$INSTALL_DIR/db-password.new"
mv -f "$INSTALL_DIR/db-password.new" "$INSTALL_DIR/db-password"

# 3. Stop the previous app, if we started one, so the port is free.
if old=$(pid_of_app); then
    say "stopping the running app (pid $old)"
    kill "$old" 2>/dev/null || true
    i=0
    while alive "$old" && [ $i -lt 50 ]; do
        sleep 0.2 2>/dev/null || sleep 1
        i=$((i + 1))
    done
    if alive "$old"; then kill -9 "$old" 2>/dev/null || true; fi
fi
rm -f "$INSTALL_DIR/herd-todo.pid"

# 4. Start the new one in the background, detached from our stdin/stdout/stderr (the caller
#    waits for those to close), appending to app.log (rotated once past 1 MiB).
cd "$INSTALL_DIR"
if [ -f app.log ] && [ "$(wc -c <app.log)" -gt 1048576 ]; then mv -f app.log app.log.1; fi
echo "--- $(date 2>/dev/null) installapp: starting version $APP_VERSION" >>app.log
# shellcheck disable=SC2086 # $DETACH is empty or one word
$DETACH "$INSTALL_DIR/herd-todo" --listen "$LISTEN" --app-version "$APP_VERSION" \
    --db-host "$DB_HOST" --db-port "$DB_PORT" --db-name "$DB_NAME" --db-user "$DB_USER" \
    --db-password-file "$INSTALL_DIR/db-password" --pid-file "$INSTALL_DIR/herd-todo.pid" \
    </dev/null >>app.log 2>&1 &
launcher=$!

# 5. Wait until it answers with this version. The app writes its pid file once it listens,
#    so nothing is asked of whatever else might hold the port before that.
start=$(date +%s)
answer=""
while :; do
    if pid_of_app >/dev/null; then
        answer=$(
            unset http_proxy HTTP_PROXY
            fetch "$CHECK_URL" - 3 2>/dev/null
        ) || answer=""
        case $answer in
            "Version $APP_VERSION from "*)
                say "app version $APP_VERSION running (pid $(cat herd-todo.pid)): $answer"
                exit 0
                ;;
        esac
    elif ! alive "$launcher"; then
        # (The launcher is the app itself unless setsid had to fork; then the pid file tells.)
        show_log
        die "the app exited instead of serving $CHECK_URL"
    fi
    if [ $(($(date +%s) - start)) -ge "$WAIT_SECONDS" ]; then
        show_log
        die "the app did not answer $CHECK_URL with version $APP_VERSION within ${WAIT_SECONDS}s${answer:+ (it said: $answer)}"
    fi
    sleep 0.2 2>/dev/null || sleep 1
done
