#!/usr/bin/env bash
# Installs the Debian packages of scripts/packages.txt (the one list) that are missing, then
# checks that every one of them is really usable, whether it was installed now or before.
#
#   scripts/packages.sh [GROUP...]     groups: build testguest tests metrics demo (default: all)
#
# - Asks dpkg-query what is missing and installs only that (apt-get update only when the
#   package lists are absent or an install fails), never removing a package (--no-remove).
# - qemu-utils and qemu-system-x86 are installed together, from the suite the installed
#   qemu-utils came from (a ~bpo version means <codename>-backports), so installing one never
#   replaces the other; afterwards `qemu-img --version` and `qemu-system-x86_64 --version`
#   must report the same version.
# - Not root: prints the apt-get command that installs what is missing and exits 1.
# - After installing, each package's proof (a command, or a file) is checked; the script
#   fails naming every package that is still not usable.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
LIST=$HERE/packages.txt
say() { echo "packages: $*" >&2; }
die() {
    echo "packages: error: $*" >&2
    exit 1
}

want_groups=("$@")
[ ${#want_groups[@]} -gt 0 ] || want_groups=(all)
for g in "${want_groups[@]}"; do
    case $g in
        all | build | testguest | tests | metrics | demo) ;;
        *) die "unknown group '$g' (allowed: all build testguest tests metrics demo)" ;;
    esac
done

# selected: "package proofs" lines of the wanted groups; "demo" also takes build and testguest.
selected=()
while read -r pkg proofs groups; do
    case $pkg in '' | '#'*) continue ;; esac
    take=no
    for g in "${want_groups[@]}"; do
        case ",$groups," in *",$g,"*) take=yes ;; esac
        [ "$g" = all ] && take=yes
        if [ "$g" = demo ]; then
            case ",$groups," in *,build,* | *,testguest,*) take=yes ;; esac
        fi
    done
    [ $take = yes ] && selected+=("$pkg $proofs")
done <"$LIST"
[ ${#selected[@]} -gt 0 ] || die "no package in groups: ${want_groups[*]}"

# has PROOF: a command (on PATH or in an sbin directory) or an absolute path that exists.
has() {
    case $1 in
        /*) [ -e "$1" ] ;;
        *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] ;;
    esac
}
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'; }
version_of() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }

# The proofs that still fail: "package (proof)" words.
unusable() {
    local line pkg proofs p bad=()
    for line in "${selected[@]}"; do
        read -r pkg proofs <<<"$line"
        for p in ${proofs//,/ }; do
            has "$p" || bad+=("$pkg($p)")
        done
    done
    echo "${bad[*]:-}"
}

# qemu_version TOOL: "10.0.2 (Debian 1:10.0.2+ds-2~bpo12+1)" from `TOOL --version`.
qemu_version() {
    "$1" --version 2>/dev/null | sed -n 's/.*version \([^ ]*\( ([^)]*)\)\{0,1\}\).*/\1/p' | head -n 1
}

check_qemu_pair() {
    local wanted=no line
    for line in "${selected[@]}"; do
        case $line in "qemu-system-x86 "*) wanted=yes ;; esac
    done
    [ $wanted = yes ] || return 0
    local img sys
    img=$(qemu_version qemu-img)
    sys=$(qemu_version qemu-system-x86_64)
    if [ -z "$img" ] || [ "$img" != "$sys" ]; then
        die "qemu-img reports version '${img:-?}' but qemu-system-x86_64 reports '${sys:-?}': install both from one suite, e.g. apt-get install --no-remove ${QEMU_SUITE:+-t $QEMU_SUITE }qemu-utils qemu-system-x86"
    fi
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    bad=$(unusable)
    [ -z "$bad" ] || die "not a Debian/Ubuntu machine (no apt-get); install the equivalents of: $bad"
    check_qemu_pair
    say "ok (no apt-get here; every tool found)"
    exit 0
fi

missing=()
for line in "${selected[@]}"; do
    read -r pkg _ <<<"$line"
    installed "$pkg" || missing+=("$pkg")
done

# The qemu pair: when either is missing, both are installed, from qemu-utils' suite.
QEMU_SUITE=""
if installed qemu-utils; then
    v=$(version_of qemu-utils)
    case $v in
        *~bpo*)
            codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
            [ -n "$codename" ] || die "qemu-utils $v is a backport, but /etc/os-release names no VERSION_CODENAME"
            QEMU_SUITE=$codename-backports
            ;;
    esac
fi
qemu_batch=()
rest=()
for p in "${missing[@]}"; do
    case $p in
        qemu-utils | qemu-system-x86) ;;
        *) rest+=("$p") ;;
    esac
done
case " ${missing[*]} " in
    *" qemu-utils "* | *" qemu-system-x86 "*) qemu_batch=(qemu-utils qemu-system-x86) ;;
esac

APT_OPTS=(-y -q --no-install-recommends --no-remove -o DPkg::Lock::Timeout=600)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "missing packages: ${missing[*]}"
        say "install them as root, then run this again:"
        line="apt-get install -y --no-install-recommends --no-remove"
        if [ ${#rest[@]} -gt 0 ]; then
            echo "  sudo $line ${rest[*]}" >&2
        fi
        if [ ${#qemu_batch[@]} -gt 0 ]; then
            echo "  sudo $line ${QEMU_SUITE:+-t $QEMU_SUITE }${qemu_batch[*]}" >&2
            if [ -n "$QEMU_SUITE" ] && ! apt-cache policy 2>/dev/null | grep -q " $QEMU_SUITE/"; then
                say "(the installed qemu-utils comes from $QEMU_SUITE, which is not in apt's sources: add it first)"
            fi
        fi
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    updated=no
    apt_update() {
        [ $updated = yes ] && return 0
        say "apt-get update"
        apt-get update -q -o DPkg::Lock::Timeout=600 >&2
        updated=yes
    }
    # A fresh machine may never have fetched package lists.
    have_lists=no
    for f in /var/lib/apt/lists/*_Packages*; do [ -e "$f" ] && have_lists=yes && break; done
    [ $have_lists = yes ] || apt_update
    # apt_install ARGS...: once, then after an update (stale lists give 404s).
    apt_install() {
        apt-get install "${APT_OPTS[@]}" "$@" >&2 && return 0
        [ $updated = no ] || return 1
        apt_update
        apt-get install "${APT_OPTS[@]}" "$@" >&2
    }
    if [ ${#rest[@]} -gt 0 ]; then
        say "installing: ${rest[*]}"
        apt_install "${rest[@]}" || die "apt-get install ${rest[*]} failed"
    fi
    if [ ${#qemu_batch[@]} -gt 0 ]; then
        if [ -n "$QEMU_SUITE" ]; then
            # The suite must be known to apt; a backport installed from a .deb or a since
            # removed source is not, so add Debian's own source for it.
            if ! apt-cache policy 2>/dev/null | grep -q " $QEMU_SUITE/"; then
                src=/etc/apt/sources.list.d/herd-$QEMU_SUITE.sources
                say "qemu-utils $(version_of qemu-utils) comes from $QEMU_SUITE, which apt does not know: adding $src"
                printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: $QEMU_SUITE" \
                    "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" >"$src"
                updated=no
                apt_update
            fi
            say "installing from $QEMU_SUITE (the suite of the installed qemu-utils): ${qemu_batch[*]}"
            apt_install -t "$QEMU_SUITE" "${qemu_batch[@]}" || die "apt-get install -t $QEMU_SUITE ${qemu_batch[*]} failed"
        else
            say "installing: ${qemu_batch[*]}"
            apt_install "${qemu_batch[@]}" || die "apt-get install ${qemu_batch[*]} failed"
        fi
    fi
fi

# Installed or not just now: everything must be usable.
still=()
for line in "${selected[@]}"; do
    read -r pkg _ <<<"$line"
    installed "$pkg" || still+=("$pkg(not installed)")
done
bad=$(unusable)
[ -z "$bad" ] || still+=($bad)
[ ${#still[@]} -eq 0 ] || die "still missing after installing: ${still[*]}"
check_qemu_pair
say "ok: ${#selected[@]} packages (groups: ${want_groups[*]})"
