#!/bin/bash
# End-to-end check of the demo app in a real VM: the static binary, the install scripts under
# busybox, and the guest reaching the host's database as 10.0.2.2.
#
#   images/app/guest-smoke.sh TESTGUEST_OUT [APP_OUT]
#
# TESTGUEST_OUT is images/testguest/build.sh's output (its 1.0.0 image is booted); APP_OUT
# (default <repo>/target/guest-app/out) receives build.sh's output. The script starts a
# PostgreSQL test cluster (pg-test-cluster.sh) and a file server for APP_OUT on the host's
# loopback, boots the guest under TCG with port 80 forwarded to a loopback address, then does
# what the Custom Script extension does, through the guest agent: download installapp-v1.sh
# with wget and run it with sh, check `Version 1 from webscales000002` through the forward,
# add a TODO item, run installapp-v2.sh, and check version 2 serves the same item.
#
# Needs: qemu-system-x86, postgresql, python3, genisoimage, curl. Traffic stays on loopback
# (and QEMU's user network). Environment: HERD_APP_SMOKE_ADDR (127.3.0.19),
# HERD_APP_SMOKE_PORT (18090), HERD_APP_SMOKE_KEEP=1 keeps the temporary directory.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 TESTGUEST_OUT [APP_OUT]" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
IMG=$1/1.0.0
APP_OUT=${2:-$REPO/target/guest-app/out}
ADDR=${HERD_APP_SMOKE_ADDR:-127.3.0.19}
PORT=${HERD_APP_SMOKE_PORT:-18090}
QGA_PY=$REPO/images/testguest/qga.py
[ -f "$IMG/initrd.img" ] || {
    echo "guest-smoke: no test guest in $IMG (run images/testguest/build.sh $1)" >&2
    exit 1
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "guest-smoke: $*"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

T0=$(now)
"$HERE/build.sh" "$APP_OUT"
say "app build: $(elapsed "$T0")s"

TMP=$(mktemp -d /tmp/herd-app-smoke.XXXXXX)
chmod 755 "$TMP"
QEMU_PID=""
SRV_PID=""
cleanup() {
    [ -z "$SRV_PID" ] || kill "$SRV_PID" 2>/dev/null || true
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    "$HERE/pg-test-cluster.sh" stop "$TMP/pg" || true
    if [ "${HERD_APP_SMOKE_KEEP:-0}" = 1 ]; then say "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
fail() {
    echo "guest-smoke: FAIL: $*" >&2
    [ ! -f "$TMP/console.log" ] || tail -n 30 "$TMP/console.log" >&2
    if [ -S "$TMP/qga.sock" ]; then
        echo "guest-smoke: the guest's /opt/herd-todo/app.log:" >&2
        python3 "$QGA_PY" "$TMP/qga.sock" exec /usr/bin/tail -n 30 /opt/herd-todo/app.log >&2 || true
    fi
    exit 1
}

# The database, on the host's loopback (the guest sees it as 10.0.2.2).
PG_PORT=$(free_port)
PASSWORD="smoke-$$-$RANDOM"
PG_TEST_PASSWORD=$PASSWORD "$HERE/pg-test-cluster.sh" start "$TMP/pg" "$PG_PORT" todo - todo

# The file server the extension's fileUris point at.
SRV_PORT=$(free_port)
python3 -m http.server "$SRV_PORT" --bind 127.0.0.1 --directory "$APP_OUT" >"$TMP/http.log" 2>&1 &
SRV_PID=$!

# A NoCloud seed that only names the VM. QEMU gets a virtio-rng device as herd's qemu driver
# gives every VM: without it the guest's CRNG is not ready until several seconds after boot
# under TCG, and the app's first database login (SCRAM needs a random nonce) waits for it.
mkdir -p "$TMP/seed"
printf 'instance-id: iid-app-smoke\nlocal-hostname: webscales000002\n' >"$TMP/seed/meta-data"
printf '#!/bin/sh\ntrue\n' >"$TMP/seed/user-data"
genisoimage -quiet -V cidata -J -r -o "$TMP/seed.img" "$TMP/seed"

B0=$(now)
qemu-system-x86_64 -accel tcg -m 256 -smp 1 -display none -monitor none -no-reboot \
    -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" -append "$(cat "$IMG/cmdline")" \
    -serial "file:$TMP/console.log" \
    -device virtio-serial \
    -chardev "socket,path=$TMP/qga.sock,server=on,wait=off,id=qga0" \
    -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
    -netdev "user,id=n0,hostfwd=tcp:$ADDR:$PORT-:80" -device virtio-net-pci,netdev=n0 \
    -device virtio-rng-pci \
    -drive "file=$TMP/seed.img,if=virtio,format=raw,readonly=on" \
    </dev/null >"$TMP/qemu.out" 2>&1 &
QEMU_PID=$!
until grep -aq 'HERD-GUEST-READY' "$TMP/console.log" 2>/dev/null; do
    kill -0 "$QEMU_PID" 2>/dev/null || fail "qemu exited: $(cat "$TMP/qemu.out")"
    awk -v a="$B0" -v b="$(now)" 'BEGIN { exit !(b - a > 90) }' && fail "guest not ready within 90s"
    sleep 0.2
done
say "guest ready after $(elapsed "$B0")s"

# install VERSION: what the Custom Script extension runs (download the script into a fresh
# extension directory, run it there with the guest's sh).
install() {
    local v=$1 t
    t=$(now)
    QGA_TIMEOUT=20 python3 "$QGA_PY" "$TMP/qga.sock" exec /bin/sh -c "
        mkdir -p /var/lib/ext-v$v && cd /var/lib/ext-v$v &&
        timeout 30 wget -q -O installapp-v$v.sh http://10.0.2.2:$SRV_PORT/installapp-v$v.sh &&
        TODO_DB_PORT=$PG_PORT TODO_APP_URL=http://10.0.2.2:$SRV_PORT/herd-todo \
            sh installapp-v$v.sh todo todo '$PASSWORD'" || fail "installapp-v$v.sh failed in the guest"
    say "installapp-v$v.sh: $(elapsed "$t")s"
}

expect_version() {
    local got
    got=$(curl -fsS --max-time 10 "http://$ADDR:$PORT/api/version") || fail "GET /api/version through the forward"
    [ "$got" = "Version $1 from webscales000002" ] || fail "/api/version said '$got'"
    say "/api/version: $got"
}

install 1
expect_version 1
[ "$(curl -fsS --max-time 10 "http://$ADDR:$PORT/healthz")" = ok ] || fail "/healthz (the database through 10.0.2.2)"
curl -fsS --max-time 10 -H 'Content-Type: application/json' -d '{"title":"from the guest smoke"}' \
    "http://$ADDR:$PORT/api/todos" >/dev/null || fail "POST /api/todos"
# shellcheck disable=SC2016 # expanded by the guest's shell
argv=$(python3 "$QGA_PY" "$TMP/qga.sock" exec /bin/sh -c \
    'tr "\0" " " </proc/$(cat /opt/herd-todo/herd-todo.pid)/cmdline') || fail "reading the app's cmdline"
case $argv in
    *"$PASSWORD"*) fail "the password is in the app's argv" ;;
    *--db-password-file*) ;;
    *) fail "unexpected app argv: $argv" ;;
esac
install 2
expect_version 2
curl -fsS --max-time 10 "http://$ADDR:$PORT/api/todos" | grep -q 'from the guest smoke' || fail "the item is gone"
say "ok: static app, busybox install v1 -> v2, database via 10.0.2.2 ($(elapsed "$T0")s in all)"
