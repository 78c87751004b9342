#!/usr/bin/env bash
# herd's main job in one command, on a fresh Debian/Ubuntu machine: install what is missing,
# build herd, the test guest image and the demo app, then play the whole walkthrough (the
# classic scale-set tutorial: load balancer, Custom Script app, upgrades, rolling upgrade,
# scale, autoscale) on real QEMU VMs, printing every command and what came back.
#
#   ./demo.sh                     # real VMs (QEMU; TCG when KVM is not usable)
#   ./demo.sh --driver process    # process instances instead of VMs
#   ./demo.sh --keep              # leave everything running at the end
#   ./demo.sh --window 5m         # the autoscale window as in the tutorial (default 1m)
#
# Root (or sudo) is needed to install packages, and for ports 80 (as in the tutorial);
# without root the app and the load balancer use port 8080.
set -euo pipefail
cd "$(dirname "$0")"
REPO=$PWD

say() { echo "demo.sh: $*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    say "herd is written in Rust and cargo is not installed."
    say "Install a toolchain (https://rustup.rs, or 'apt-get install cargo' on a recent Debian/Ubuntu), then run ./demo.sh again."
    exit 1
fi

# Host packages (the "demo" group of scripts/packages.txt, the project's one list): QEMU and
# the test guest's build tools, PostgreSQL for the demo app's database, util-linux for instance
# hostnames. Installs what is missing as root (or with passwordless sudo) and checks every tool
# afterwards; otherwise it prints the apt-get command and stops.
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo scripts/packages.sh demo
else
    scripts/packages.sh demo || { say "install the packages above, then run ./demo.sh again"; exit 1; }
fi

# Debug builds are what the tests use, and build much faster than release on small machines.
say "building herd (the first build takes several minutes)..."
cargo build --quiet -p herd --bin herd
HERD=$REPO/target/debug/herd

args=("$@")
driver=qemu
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[$i]} in
        --driver) driver=${args[$((i + 1))]:-qemu} ;;
        --driver=*) driver=${args[$i]#--driver=} ;;
    esac
done

TG=${HERD_TESTGUEST_OUT:-$REPO/target/testguest}
if [ "$driver" = qemu ]; then
    say "building the test guest image into $TG (cached)..."
    images/testguest/build.sh "$TG" >&2
fi
APP=${HERD_APP_OUT:-$REPO/target/guest-app-out}
say "building the demo app into $APP (cached)..."
images/app/build.sh "$APP" >&2

if [ "$driver" = qemu ]; then
    exec "$HERD" demo --testguest "$TG" --app "$APP" "$@"
fi
exec "$HERD" demo --app "$APP" "$@"
