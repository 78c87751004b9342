#!/bin/sh
# Installs the host packages images/testguest/build.sh and smoke.sh need (the "testguest"
# group of scripts/packages.txt, the project's one package list) and then checks every tool
# they use, whether installed now or before: it fails naming what is still missing. QEMU's
# qemu-utils and qemu-system-x86 come from one suite and must report the same version.
# Debian/Ubuntu; as root it installs, otherwise it prints the apt-get command and fails.
# Idempotent (scripts/setup.sh does this and everything else the tests need).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/../../scripts/packages.sh" testguest
echo "testguest deps: ok"
