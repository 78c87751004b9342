#!/bin/bash
# Build the walkthrough's demo app for VM guests:
#
#   images/app/build.sh OUT_DIR
#
# leaves OUT_DIR/herd-todo (a fully static x86_64 binary: the busybox test guest has glibc but
# maybe not libgcc_s) and OUT_DIR/installapp-v1.sh, installapp-v2.sh next to it, ready to be
# served as a Custom Script extension's fileUris.
#
# Cached and idempotent: the build uses its own target directory, <repo>/target/guest-app
# (or $HERD_APP_TARGET_DIR), so its static RUSTFLAGS do not invalidate the workspace's normal
# build, and cargo skips it while nothing changed. Files in OUT_DIR are replaced only when
# their content changed.
set -euo pipefail
# How installapp-v2.sh is made from installapp-v1.sh (crates/demo/herd-todo/tests/installapp.rs runs the same).
V2_SED='s/^APP_VERSION=1$/APP_VERSION=2/'

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
TARGET=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=${HERD_APP_TARGET_DIR:-$REPO/target/guest-app}
export RUSTFLAGS="-C target-feature=+crt-static"

die() {
    echo "build.sh: $*" >&2
    exit 1
}

(cd "$REPO" && cargo build --release -p herd-todo --target "$TARGET")
BIN=$CARGO_TARGET_DIR/$TARGET/release/herd-todo
[ -x "$BIN" ] || die "cargo built no $BIN"

# Static means no program interpreter and no shared libraries.
if command -v file >/dev/null 2>&1; then
    desc=$(file -b "$BIN")
    case $desc in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) die "$BIN is not static: $desc" ;;
    esac
fi
# ldd says "statically linked" (or "not a dynamic executable") for static binaries and lists
# libraries with "=>" otherwise.
if command -v ldd >/dev/null 2>&1 && ldd "$BIN" 2>&1 | grep -q "=>"; then
    die "$BIN is dynamically linked: $(ldd "$BIN" 2>&1 | tr '\n' ' ')"
fi

# install_file SRC DEST MODE: copy only when the content differs (keeps mtimes stable).
install_file() {
    if ! cmp -s "$1" "$2"; then
        cp "$1" "$2.tmp"
        chmod "$3" "$2.tmp"
        mv -f "$2.tmp" "$2"
    fi
}
install_file "$BIN" "$OUT/herd-todo" 755
install_file "$HERE/installapp-v1.sh" "$OUT/installapp-v1.sh" 755
# installapp-v2.sh is installapp-v1.sh with the version line changed (one source, two versions).
sed "$V2_SED" "$HERE/installapp-v1.sh" >"$OUT/installapp-v2.sh.new"
install_file "$OUT/installapp-v2.sh.new" "$OUT/installapp-v2.sh" 755
rm -f "$OUT/installapp-v2.sh.new"
echo "build.sh: $OUT/herd-todo ($(wc -c <"$OUT/herd-todo") bytes, static), installapp-v1.sh, installapp-v2.sh"
