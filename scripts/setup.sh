#!/usr/bin/env bash
# Everything the tests need besides the Rust toolchain, idempotently; scripts/test.sh runs it
# first. A second run installs and rebuilds nothing and takes seconds.
#
#   scripts/setup.sh
#
#  1. Debian packages (scripts/packages.sh: the one list, scripts/packages.txt). As root it
#     installs what is missing; otherwise it prints the apt-get command and fails.
#  2. Python test tools in the venv target/venv, from scripts/requirements-test.txt (PEP 668
#     blocks pip on the system Python); reinstalled only when that file changes.
#  3. The QEMU test guest in $HERD_TESTGUEST_OUT (default target/testguest; cached by
#     images/testguest/build.sh), booted once by images/testguest/smoke.sh after each change
#     of the guest or of QEMU.
#  4. The demo app the walkthrough installs in VMs, in $HERD_APP_OUT (default
#     target/guest-app-out; cargo-cached).
#
# Nothing is written outside target/ except by apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TG=${HERD_TESTGUEST_OUT:-$REPO/target/testguest}
APP=${HERD_APP_OUT:-$REPO/target/guest-app-out}
VENV=$REPO/target/venv
REQS=$REPO/scripts/requirements-test.txt

say() { echo "setup: $*" >&2; }
die() {
    echo "setup: error: $*" >&2
    exit 1
}
step_start=$(date +%s)
step() {
    local now
    now=$(date +%s)
    say "$* ($((now - step_start))s)"
    step_start=$now
}

command -v cargo >/dev/null 2>&1 ||
    die "cargo is not installed: install a Rust toolchain (https://rustup.rs), then run this again"
mkdir -p "$REPO/target"

# 1. Packages.
scripts/packages.sh all
step "packages ok"

# 2. The Python venv. Debian's python3 is the one python3-venv serves.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3) || die "python3 is not installed"
stamp=$VENV/.requirements.sha256
want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$VENV/bin/python" ]; then
    say "installing $REQS into $VENV"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV" || die "$PY -m venv failed (Debian: apt-get install python3-venv)"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS" ||
        die "pip install -r $REQS into $VENV failed"
    echo "$want" >"$stamp"
fi
# Every pinned tool must run from the venv.
while read -r req _; do
    case $req in '' | '#'*) continue ;; esac
    tool=${req%%[=<>!~ ]*}
    [ -x "$VENV/bin/$tool" ] || die "$tool is not in $VENV/bin after installing $REQS"
    "$VENV/bin/$tool" --version >/dev/null 2>&1 || die "$VENV/bin/$tool --version fails"
done <"$REQS"
step "venv ok: $VENV"

# 3. The test guest, then its smoke test when the guest or QEMU changed since the last pass.
images/testguest/build.sh "$TG" >&2 || die "images/testguest/build.sh $TG failed"
smoke_key=$({
    qemu-system-x86_64 --version | head -n 1
    sha256sum "$REPO/images/testguest/smoke.sh" "$REPO/images/testguest/qga.py"
    find "$TG" -mindepth 2 -maxdepth 2 -type f \( -name vmlinuz -o -name initrd.img -o -name cmdline -o -name disk.qcow2 \) \
        -printf '%p %s %T@\n' | sort
} | sha256sum | cut -d' ' -f1)
if [ "$(cat "$TG/.smoke-ok" 2>/dev/null)" != "$smoke_key" ]; then
    scale=${HERD_TEST_TIME_SCALE:-1}
    # smoke.sh's wait for each boot (60 s), stretched like every test deadline.
    timeout=$(awk -v s="$scale" 'BEGIN { t = 60 * s; if (t < 1) t = 1; printf "%d", t + 0.5 }')
    HERD_SMOKE_TIMEOUT=${HERD_SMOKE_TIMEOUT:-$timeout} images/testguest/smoke.sh "$TG" >&2 ||
        die "images/testguest/smoke.sh $TG failed"
    echo "$smoke_key" >"$TG/.smoke-ok"
fi
step "test guest ok: $TG"

# 4. The demo app.
images/app/build.sh "$APP" >&2 || die "images/app/build.sh $APP failed"
step "demo app ok: $APP"

say "ready: HERD_TESTGUEST_OUT=$TG HERD_APP_OUT=$APP"
