#!/bin/sh
# Install every host package that images/testguest/build.sh and smoke.sh need.
# Debian/Ubuntu only; run as root (or with sudo). Idempotent.
set -eu

PKGS="
qemu-system-x86
busybox-static
qemu-guest-agent
cpio
gzip
kmod
genisoimage
dosfstools
mtools
syslinux
syslinux-common
fdisk
qemu-utils
python3
curl
"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing="$missing $p"
    fi
done
# python3 may come from elsewhere (pyenv etc.); only install it if absent.
if command -v python3 >/dev/null 2>&1; then
    missing=$(echo "$missing" | tr ' ' '\n' | grep -vx python3 | tr '\n' ' ')
fi

if [ -n "$(echo "$missing" | tr -d ' ')" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may never have fetched package lists.
    have_lists=no
    for f in /var/lib/apt/lists/*_Packages*; do [ -e "$f" ] && have_lists=yes && break; done
    if [ "$have_lists" = no ] || [ "${HERD_APT_UPDATE:-0}" = 1 ]; then
        $SUDO apt-get update -q
    fi
    # shellcheck disable=SC2086
    if ! $SUDO apt-get install -y -q --no-install-recommends $missing; then
        $SUDO apt-get update -q
        # shellcheck disable=SC2086
        $SUDO apt-get install -y -q --no-install-recommends $missing
    fi
fi
echo "testguest deps: ok"
