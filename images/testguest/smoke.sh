#!/bin/bash
# Smoke test of the herd test guest under QEMU TCG.
#
#   images/testguest/smoke.sh OUT_DIR [VERSION...]     (default: 1.0.0 1.0.1)
#
# Builds (cached) with build.sh, then for each version boots it with a NoCloud
# seed and checks: the READY marker (hostname from the seed, version), the guest
# agent (guest-sync-delimited, guest-ping, guest-exec + guest-exec-status,
# guest-file-open/write/close), that user-data ran (it starts busybox httpd on
# :8080, fetched through a hostfwd on 127.3.0.9:18080) and a clean
# guest-shutdown. Seeds alternate: odd runs use an ISO9660 seed with a
# "#!/bin/sh" user-data script, even runs a VFAT seed with #cloud-config
# (users + runcmd).
#
# Then boots the first version once more from its boot disk (disk.qcow2, through
# a qcow2 overlay, no -kernel) and checks READY, the kernel command line and that
# the image file is unchanged.
#
# Environment: HERD_SMOKE_ADDR (127.3.0.9), HERD_SMOKE_PORT (18080),
# HERD_SMOKE_TIMEOUT (seconds to READY, 60), HERD_SMOKE_KEEP=1 (keep temp dir),
# HERD_SMOKE_QEMU_EXTRA (extra qemu arguments), HERD_SMOKE_DISK=0 (skip the disk boot).
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [VERSION...]" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$1
shift
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(1.0.0 1.0.1)
ADDR=${HERD_SMOKE_ADDR:-127.3.0.9}
PORT=${HERD_SMOKE_PORT:-18080}
TIMEOUT=${HERD_SMOKE_TIMEOUT:-60}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "smoke: $*"; }

T0=$(now)
"$HERE/build.sh" "$OUT"
BUILD_TIME=$(elapsed "$T0")
say "build: ${BUILD_TIME}s"

TMP=$(mktemp -d /tmp/herd-testguest-smoke.XXXXXX)
QEMU_PID=""
HOSTSRV_PID=""
cleanup() {
    if [ -n "$HOSTSRV_PID" ]; then
        kill "$HOSTSRV_PID" 2>/dev/null || true
        wait "$HOSTSRV_PID" 2>/dev/null || true
    fi
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    if [ "${HERD_SMOKE_KEEP:-0}" = 1 ]; then
        echo "smoke: kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT

FAILED=0
fail() {
    echo "smoke: FAIL ($CUR): $*" >&2
    if [ -f "$CUR_DIR/console.log" ]; then
        echo "----- console ($CUR) -----" >&2
        tail -n 40 "$CUR_DIR/console.log" >&2
        echo "--------------------------" >&2
    fi
    exit 1
}

make_seed() { # DIR KIND HOSTNAME -> DIR/seed.img
    local dir=$1 kind=$2 host=$3 s=$1/seed
    mkdir -p "$s"
    printf 'instance-id: iid-%s\nlocal-hostname: %s\n' "$host" "$host" >"$s/meta-data"
    if [ "$kind" = iso-script ]; then
        cat >"$s/user-data" <<'EOF'
#!/bin/sh
set -e
mkdir -p /www
{ hostname; cat /etc/herd-image-version; } >/www/index.html
busybox httpd -p 8080 -h /www
echo "user-data: httpd started"
EOF
        genisoimage -quiet -V cidata -J -r -o "$dir/seed.img" "$s"
    else
        cat >"$s/user-data" <<'EOF'
#cloud-config
users:
  - default
  - name: smokeuser
    groups: [users]
runcmd:
  - mkdir -p /www
  - [ sh, -c, "{ hostname; cat /etc/herd-image-version; } >/www/index.html" ]
  - busybox httpd -p 8080 -h /www
  - echo "runcmd: httpd started"
EOF
        printf 'version: 2\nethernets:\n  eth0:\n    dhcp4: true\n' >"$s/network-config"
        rm -f "$dir/seed.img"
        mkfs.vfat -C -n CIDATA "$dir/seed.img" 1024 >/dev/null
        mcopy -o -i "$dir/seed.img" "$s/meta-data" "$s/user-data" "$s/network-config" ::
    fi
}

# A file server on the host's loopback, for the guest's wget (as 10.0.2.2).
mkdir -p "$TMP/hostsrv"
echo "from-host-$$" >"$TMP/hostsrv/probe.txt"
python3 -u -c '
import http.server, socketserver, sys, os, functools
os.chdir(sys.argv[1])
h = functools.partial(http.server.SimpleHTTPRequestHandler)
h.log_message = lambda *a: None
with socketserver.TCPServer(("127.0.0.1", 0), h) as srv:
    print(srv.server_address[1], flush=True)
    srv.serve_forever()
' "$TMP/hostsrv" >"$TMP/hostsrv.port" 2>"$TMP/hostsrv.err" &
HOSTSRV_PID=$!
for _ in $(seq 50); do [ -s "$TMP/hostsrv.port" ] && break; sleep 0.1; done
HOSTSRV_PORT=$(cat "$TMP/hostsrv.port")
[ -n "$HOSTSRV_PORT" ] || { echo "smoke: host file server did not start" >&2; exit 1; }

qga() { python3 "$HERE/qga.py" "$CUR_DIR/qga.sock" "$@"; }

# Waits (bounded) for the READY marker of $QEMU_PID (started at $B0) and checks
# its hostname and version; sets READY (seconds).
# boot HOST VERSION QEMU_ARGS...: starts QEMU (TCG, 256 MiB, the console to
# $CUR_DIR/console.log, the guest agent on $CUR_DIR/qga.sock, the seed image, then QEMU_ARGS
# and $HERD_SMOKE_QEMU_EXTRA) in the background as $QEMU_PID, and waits until HOST is ready.
boot() {
    local host=$1 v=$2
    shift 2
    # shellcheck disable=SC2086
    qemu-system-x86_64 \
        -accel tcg -m 256 -smp 1 \
        -display none -monitor none -no-reboot \
        -serial "file:$CUR_DIR/console.log" \
        -device virtio-serial \
        -chardev "socket,path=$CUR_DIR/qga.sock,server=on,wait=off,id=qga0" \
        -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
        "$@" \
        -drive "file=$CUR_DIR/seed.img,if=virtio,format=raw,readonly=on" \
        ${HERD_SMOKE_QEMU_EXTRA:-} \
        </dev/null >"$CUR_DIR/qemu.out" 2>&1 &
    QEMU_PID=$!
    B0=$(now)
    wait_ready "$host" "$v"
}

wait_ready() { # HOSTNAME VERSION
    local marker=""
    while [ -z "$marker" ]; do
        marker=$(grep -a -o -m1 'HERD-GUEST-READY .*' "$CUR_DIR/console.log" 2>/dev/null || true)
        [ -n "$marker" ] && break
        kill -0 "$QEMU_PID" 2>/dev/null || fail "qemu exited: $(cat "$CUR_DIR/qemu.out")"
        awk -v a="$B0" -v b="$(now)" -v t="$TIMEOUT" 'BEGIN { exit !(b - a > t) }' &&
            fail "no HERD-GUEST-READY within ${TIMEOUT}s"
        sleep 0.1
    done
    READY=$(elapsed "$B0")
    say "$CUR: READY after ${READY}s: $marker"
    marker=$(echo "$marker" | tr -d '\r')
    case " $marker " in *" hostname=$1 "*) ;; *) fail "marker lacks hostname=$1" ;; esac
    case " $marker " in *" version=$2 "*) ;; *) fail "marker lacks version=$2" ;; esac
}

# Clean shutdown through the agent (-no-reboot: QEMU exits on power-off); sets STOP.
power_off() {
    qga shutdown || fail "guest-shutdown"
    local s0
    s0=$(now)
    while kill -0 "$QEMU_PID" 2>/dev/null; do
        awk -v a="$s0" -v b="$(now)" 'BEGIN { exit !(b - a > 30) }' &&
            fail "guest did not power off within 30s of guest-shutdown"
        sleep 0.1
    done
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=""
    STOP=$(elapsed "$s0")
    grep -aq '^HERD-GUEST-SHUTDOWN' "$CUR_DIR/console.log" || fail "no shutdown marker"
}

SUMMARY=()
i=0
for v in "${VERSIONS[@]}"; do
    i=$((i + 1))
    CUR=$v
    CUR_DIR=$TMP/$v
    mkdir -p "$CUR_DIR"
    img=$OUT/$v
    [ -f "$img/initrd.img" ] || fail "no image in $img"
    host="smoke-${v//./-}"
    if [ $((i % 2)) = 1 ]; then kind=iso-script; else kind=vfat-cloud-config; fi
    make_seed "$CUR_DIR" "$kind" "$host"

    boot "$host" "$v" \
        -kernel "$img/vmlinuz" -initrd "$img/initrd.img" -append "$(cat "$img/cmdline")" \
        -netdev "user,id=n0,hostfwd=tcp:$ADDR:$PORT-:8080" \
        -device virtio-net-pci,netdev=n0

    # Guest agent.
    [ "$(qga ping)" = pong ] || fail "guest-ping"
    got=$(qga exec /bin/cat /etc/herd-image-version) || fail "guest-exec cat"
    [ "$got" = "$v" ] || fail "guest-exec: /etc/herd-image-version is '$got', want '$v'"
    qga write /tmp/from-host "hello $v" || fail "guest-file-write"
    got=$(qga exec /bin/cat /tmp/from-host) || fail "guest-exec cat /tmp/from-host"
    [ "$got" = "hello $v" ] || fail "guest-file-write: read back '$got'"
    got=$(qga exec /bin/hostname) || fail "guest-exec hostname"
    [ "$got" = "$host" ] || fail "hostname is '$got', want '$host'"
    if [ "$kind" = vfat-cloud-config ]; then
        qga exec /bin/grep -q '^smokeuser:' /etc/passwd || fail "cloud-config user not created"
    fi
    # The guest reaches the host's loopback as 10.0.2.2 (wget from the guest).
    # (No "wget -T": Debian busybox 1.35 lacks FEATURE_WGET_TIMEOUT and -T segfaults.)
    got=$(qga exec /usr/bin/timeout 10 /usr/bin/wget -q -O - "http://10.0.2.2:$HOSTSRV_PORT/probe.txt") ||
        fail "guest wget from host"
    [ "$got" = "from-host-$$" ] || fail "guest wget got '$got'"
    AGENT_OK=$(elapsed "$B0")

    # user-data started httpd; fetch its page through the hostfwd (bounded poll).
    page=""
    H0=$(now)
    while :; do
        page=$(curl -s --max-time 3 "http://$ADDR:$PORT/" 2>/dev/null || true)
        [ -n "$page" ] && break
        awk -v a="$H0" -v b="$(now)" 'BEGIN { exit !(b - a > 30) }' &&
            fail "no answer on http://$ADDR:$PORT/ within 30s"
        sleep 0.2
    done
    [ "$page" = "$(printf '%s\n%s' "$host" "$v")" ] || fail "unexpected page: $page"
    HTTP_OK=$(elapsed "$B0")

    power_off
    say "$v: ok ($kind): ready ${READY}s, agent checks done ${AGENT_OK}s, http ${HTTP_OK}s, power-off ${STOP}s"
    SUMMARY+=("$v ready=${READY}s http=${HTTP_OK}s poweroff=${STOP}s seed=$kind")
done

# The first version once more, from its boot disk (OUT/<version>/disk.qcow2:
# SYSLINUX on an MBR disk) the way herd runs disk images: a qcow2 overlay on the
# image as the first virtio disk with bootindex=0, no -kernel; the seed (VFAT,
# like the boot partition) is the second virtio disk.
PASSED=${#VERSIONS[@]}
if [ "${HERD_SMOKE_DISK:-1}" = 1 ]; then
    v=${VERSIONS[0]}
    CUR="$v disk"
    CUR_DIR=$TMP/$v-disk
    mkdir -p "$CUR_DIR"
    img=$OUT/$v/disk.qcow2
    [ -f "$img" ] || fail "no $img"
    img_sum=$(sha256sum "$img" | cut -d' ' -f1)
    qemu-img create -q -f qcow2 -b "$img" -F qcow2 "$CUR_DIR/os.qcow2"
    host="smoke-disk-${v//./-}"
    make_seed "$CUR_DIR" vfat-cloud-config "$host"
    boot "$host" "$v" -nodefaults \
        -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
        -drive "file=$CUR_DIR/os.qcow2,if=none,id=os,format=qcow2" \
        -device virtio-blk-pci,drive=os,bootindex=0
    grep -aq '^SYSLINUX ' "$CUR_DIR/console.log" || fail "no SYSLINUX banner: not booted from the disk?"
    got=$(qga exec /bin/cat /proc/cmdline) || fail "guest-exec cat /proc/cmdline"
    case " $got " in *" $(cat "$OUT/$v/cmdline") "*) ;; *) fail "kernel command line '$got' lacks $(cat "$OUT/$v/cmdline")" ;; esac
    got=$(qga exec /bin/cat /etc/herd-image-version) || fail "guest-exec cat"
    [ "$got" = "$v" ] || fail "/etc/herd-image-version is '$got', want '$v'"
    power_off
    [ "$(sha256sum "$img" | cut -d' ' -f1)" = "$img_sum" ] || fail "$img changed"
    say "$CUR: ok (syslinux, vfat seed on vdb): ready ${READY}s, power-off ${STOP}s"
    SUMMARY+=("$v disk ready=${READY}s poweroff=${STOP}s")
    PASSED=$((PASSED + 1))
fi

say "build ${BUILD_TIME}s; $(printf '%s; ' "${SUMMARY[@]}")"
echo "$PASSED passed, $FAILED failed"
