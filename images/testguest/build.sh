#!/bin/bash
# Build the herd test guest: a Debian kernel plus a busybox + qemu-guest-agent
# initramfs, in two versions that differ only in /etc/herd-image-version and
# /etc/motd (and /etc/os-release's VERSION_ID).
#
#   images/testguest/build.sh OUT_DIR
#
# leaves OUT_DIR/<version>/{vmlinuz,initrd.img,cmdline,disk.qcow2} for each
# version (default 1.0.0 and 1.0.1). disk.qcow2 is the same guest as a bootable
# disk: an MBR disk whose one FAT partition holds vmlinuz, initrd.img and a
# SYSLINUX config booting them with the same command line. It is built from
# image files alone (mkfs.vfat --offset, mtools, syslinux's mtools installer,
# sfdisk): no loop devices, no mounts, no root. Host packages:
# images/testguest/deps.sh.
#
# Cached and idempotent: the kernel .deb and the unpacked trees live in
# OUT_DIR/.cache (or $HERD_TESTGUEST_CACHE); each step records a fingerprint of
# its inputs (path, size, mtime of every input file, plus settings) and is
# skipped while its outputs exist and the fingerprint is unchanged. The output
# is reproducible: same inputs, same bytes.
#
# Environment:
#   HERD_TESTGUEST_VERSIONS     versions to build (default "1.0.0 1.0.1")
#   HERD_TESTGUEST_KERNEL_PKG   exact kernel package, e.g. linux-image-6.1.0-56-cloud-amd64
#                               (default: what linux-image-cloud-amd64 depends on)
#   HERD_TESTGUEST_KERNEL_META  meta package to resolve (default linux-image-cloud-amd64)
#   HERD_TESTGUEST_CMDLINE      kernel command line (default below)
#   HERD_TESTGUEST_CACHE        cache directory (default OUT_DIR/.cache)
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi

HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
CACHE=${HERD_TESTGUEST_CACHE:-$OUT/.cache}
VERSIONS=${HERD_TESTGUEST_VERSIONS:-1.0.0 1.0.1}
KMETA=${HERD_TESTGUEST_KERNEL_META:-linux-image-cloud-amd64}
# cryptomgr.notests and pci=noacpi (PCI IRQ routing from the BIOS table instead
# of evaluating ACPI link devices) each save about a second under TCG.
CMDLINE=${HERD_TESTGUEST_CMDLINE:-console=ttyS0 quiet panic=-1 cryptomgr.notests pci=noacpi}
BUSYBOX=${HERD_TESTGUEST_BUSYBOX:-/bin/busybox}
QEMU_GA=${HERD_TESTGUEST_QEMU_GA:-/usr/sbin/qemu-ga}
# Fixed mtime for everything in the initramfs and on the boot disk (reproducible output).
EPOCH=1700000000
# The boot disk's MBR boot code (syslinux-common); the partition's boot sector,
# ldlinux.sys and ldlinux.c32 come from the syslinux installer itself.
SYSLINUX_MBR=${HERD_TESTGUEST_SYSLINUX_MBR:-/usr/lib/syslinux/mbr/mbr.bin}

# Modules wanted in the guest; their dependencies are added automatically and
# the load order is computed from each module's depends= field.
# button + evdev: the ACPI power button as an input device, which busybox acpid
# turns into a clean power-off (QMP system_powerdown stops the VM).
MODULES="virtio_pci virtio_net virtio_console virtio_blk virtio_rng virtio_balloon
         isofs vfat nls_cp437 nls_ascii nls_utf8 button evdev"
# Loaded only when no seed is found on a virtio disk: the seed as an IDE CD-ROM
# (i440fx "pc" machine). The cloud kernel has no AHCI, so no q35 SATA CD-ROM.
MODULES_CDROM="ata_piix sr_mod isofs"

log() { echo "testguest: $*" >&2; }
die() { echo "testguest: error: $*" >&2; exit 1; }

for tool in dpkg-deb apt-get apt-cache cpio gzip modinfo ldd flock sha256sum \
    sfdisk mkfs.vfat mcopy syslinux qemu-img; do
    command -v "$tool" >/dev/null || die "$tool not found (run images/testguest/deps.sh)"
done
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (apt-get install busybox-static)"
[ -x "$QEMU_GA" ] || die "$QEMU_GA not found (apt-get install qemu-guest-agent)"
[ -f "$SYSLINUX_MBR" ] || die "$SYSLINUX_MBR not found (apt-get install syslinux-common)"
# The guest needs a static busybox: it is the only libc-free binary in there.
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; install busybox-static"
fi

mkdir -p "$CACHE/debs"
exec 9>"$CACHE/lock"
flock 9

START=$(date +%s.%N)

# fingerprint: stable hash of "name size mtime" for each path (dirs: every
# file and symlink below them) plus any literal strings passed as =STRING.
fingerprint() {
    local a
    for a in "$@"; do
        case "$a" in
            =*) echo "$a" ;;
            *)
                if [ -d "$a" ]; then
                    (cd "$a" && find . \( -type f -o -type l \) -printf '%p %s %T@ %m %l\n' | LC_ALL=C sort)
                else
                    stat -L -c '%n %s %Y' "$a"
                fi
                ;;
        esac
    done | sha256sum | cut -c1-32
}
# fresh STAMP FP OUTPUT...: true when STAMP holds FP and every output exists.
fresh() {
    local stamp=$1 fp=$2 o
    shift 2
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fp" ] || return 1
    for o in "$@"; do [ -e "$o" ] || return 1; done
}

# --- 1. kernel package -------------------------------------------------------
KPKG=${HERD_TESTGUEST_KERNEL_PKG:-}
if [ -z "$KPKG" ]; then
    # apt-cache takes over a second here: remember the answer until the package
    # lists change (apt-get update touches /var/lib/apt/lists).
    key="$KMETA $(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo none)"
    if [ -f "$CACHE/kernel-pkg" ] && [ "$(head -n1 "$CACHE/kernel-pkg")" = "$key" ]; then
        KPKG=$(sed -n 2p "$CACHE/kernel-pkg")
    else
        KPKG=$(apt-cache depends "$KMETA" 2>/dev/null |
            awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }') || true
        [ -n "$KPKG" ] && printf '%s\n%s\n' "$key" "$KPKG" >"$CACHE/kernel-pkg"
    fi
fi
if [ -z "$KPKG" ]; then
    # No package lists (offline?): fall back to a kernel already in the cache.
    cached=$(ls -t "$CACHE"/debs/linux-image-*.deb 2>/dev/null | head -n1 || true)
    [ -n "$cached" ] || die "cannot resolve $KMETA (run apt-get update)"
    KPKG=$(basename "$cached" | cut -d_ -f1)
fi
KDEB=$(ls "$CACHE/debs/${KPKG}"_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$KDEB" ]; then
    log "downloading $KPKG"
    (cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root "$KPKG" >&2) ||
        die "apt-get download $KPKG failed"
    KDEB=$(ls "$CACHE/debs/${KPKG}"_*.deb | head -n1)
fi
KVER_DEB=$(basename "$KDEB" .deb | cut -d_ -f2)

KTREE=$CACHE/kernel/$KPKG
KFP=$(fingerprint "$KDEB")
if ! fresh "$KTREE.stamp" "$KFP" "$KTREE/boot"; then
    log "unpacking $(basename "$KDEB")"
    rm -rf "$KTREE" "$KTREE.stamp"
    mkdir -p "$KTREE"
    dpkg-deb -x "$KDEB" "$KTREE"
    echo "$KFP" >"$KTREE.stamp"
fi
VMLINUZ=$(ls "$KTREE"/boot/vmlinuz-* | head -n1)
KREL=${VMLINUZ##*/vmlinuz-}
MODDIR=$KTREE/lib/modules/$KREL
[ -d "$MODDIR" ] || die "no modules in $KDEB"

# --- 2. base root filesystem (shared by all versions) ---------------------------
QGA_LIBS=$(ldd "$QEMU_GA" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' | sort -u)
[ -n "$QGA_LIBS" ] || die "ldd $QEMU_GA listed no libraries"

BASE=$CACHE/rootfs
# shellcheck disable=SC2086 # word splitting of $QGA_LIBS intended
BFP=$(fingerprint "$HERE/build.sh" "$HERE/rootfs" "$BUSYBOX" "$QEMU_GA" $QGA_LIBS \
    "=$KFP" "=$KPKG" "=$MODULES" "=$MODULES_CDROM")
if ! fresh "$BASE.stamp" "$BFP" "$BASE"; then
    log "assembling base rootfs"
    rm -rf "$BASE" "$BASE.stamp"
    mkdir -p "$BASE"
    (
        cd "$BASE"
        mkdir -p bin sbin usr/bin usr/sbin etc root tmp proc sys dev run var/log var/lib \
            lib/modules lib64 home mnt
        chmod 0700 root
        chmod 1777 tmp
        ln -s ../run var/run
        cp "$BUSYBOX" bin/busybox
        # Applet links (bin/sh, sbin/init, usr/bin/wget, ...).
        bin/busybox --list-full | while read -r applet; do
            [ -e "$applet" ] || [ -L "$applet" ] && continue
            mkdir -p "$(dirname "$applet")"
            rel=$(dirname "$applet" | sed 's#[^/][^/]*#..#g')
            ln -s "$rel/bin/busybox" "$applet"
        done
        # qemu-ga and its shared libraries (and the dynamic loader) at the
        # paths ldd reports; no ld.so.cache needed for these standard dirs.
        cp "$QEMU_GA" usr/sbin/qemu-ga
        for lib in $QGA_LIBS; do
            mkdir -p ".$(dirname "$lib")"
            cp -L "$lib" ".$lib"
        done
    )

    # Kernel modules: closure over depends=, in load order, flat in /lib/modules.
    declare -A KO_PATH=() SEEN=()
    while IFS= read -r ko; do
        name=$(basename "$ko")
        name=${name%%.ko*}
        KO_PATH[${name//-/_}]=$ko
    done < <(find "$MODDIR/kernel" -name '*.ko*')
    builtin_has() { grep -q "/$1.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; }
    ORDER=()
    visit() {
        local m=${1//-/_} d
        [ -n "${SEEN[$m]:-}" ] && return 0
        SEEN[$m]=1
        if [ -z "${KO_PATH[$m]:-}" ]; then
            builtin_has "$m" || builtin_has "${1}" || die "module $m neither in $KPKG nor built in"
            return 0
        fi
        case "${KO_PATH[$m]}" in
            *.ko) ;;
            *) die "module ${KO_PATH[$m]} is compressed; only plain .ko is supported" ;;
        esac
        for d in $(modinfo -F depends "${KO_PATH[$m]}" | tr ',' ' '); do visit "$d"; done
        ORDER+=("$m")
    }
    write_order() {
        local list=$1 m
        ORDER=()
        for m in $list; do visit "$m"; done
        for m in "${ORDER[@]}"; do
            cp "${KO_PATH[$m]}" "$BASE/lib/modules/$m.ko"
            echo "$m"
        done
    }
    write_order "$MODULES" >"$BASE/lib/modules/load-order"
    write_order "$MODULES_CDROM" >"$BASE/lib/modules/load-order-cdrom"
    echo "$KREL" >"$BASE/lib/modules/kernel-release"

    # Guest scripts and config from images/testguest/rootfs (they win over
    # applet links of the same name).
    (cd "$HERE/rootfs" && find . -type f) | while read -r f; do
        mkdir -p "$BASE/$(dirname "$f")"
        rm -f "$BASE/$f"
        cp "$HERE/rootfs/$f" "$BASE/$f"
    done
    (cd "$HERE/rootfs" && find . -type f -perm -u+x) | while read -r f; do chmod 0755 "$BASE/$f"; done

    cat >"$BASE/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$BASE/etc/group" <<'EOF'
root:x:0:
tty:x:5:
nogroup:x:65534:
EOF
    # Root has no password: nothing in the guest logs in over the network.
    printf 'root:*:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n' >"$BASE/etc/shadow"
    chmod 0640 "$BASE/etc/shadow"
    echo 'export PATH=/sbin:/bin:/usr/sbin:/usr/bin' >"$BASE/etc/profile"
    printf 'hosts: files dns\n' >"$BASE/etc/nsswitch.conf"

    echo "$BFP" >"$BASE.stamp"
fi

# --- 3. one initramfs per version ---------------------------------------------
# --- 4. and one boot disk per version (after its initramfs) ----------------------

# build_disk DST FP: DST/disk.qcow2 from DST/{vmlinuz,initrd.img,cmdline}.
# Layout: MBR (syslinux mbr.bin, one bootable FAT partition of type 0x0c at
# sector 2048); the partition's FAT boot sector is SYSLINUX's, and its root
# holds vmlinuz, initrd.img, syslinux.cfg, ldlinux.sys and ldlinux.c32. The
# guest never mounts it (everything runs from the initramfs), so it stays the
# image it was built as. Reproducible: fixed disk id, volume id and label, and
# every FAT timestamp is $EPOCH (mtools honours SOURCE_DATE_EPOCH).
build_disk() {
    local dst=$1 fp=$2 raw start=2048 need part_mib
    raw=$CACHE/disk-$(basename "$dst").img
    # Room for the files plus a quarter, FAT and ldlinux: whole 8 MiB steps
    # (32 MiB for the cloud kernel), so the size only moves with a new kernel.
    need=$(($(stat -c %s "$dst/vmlinuz") + $(stat -c %s "$dst/initrd.img")))
    part_mib=$(((need * 5 / 4 / 1048576 + 4 + 7) / 8 * 8))
    rm -f "$raw" "$dst/disk.qcow2.tmp"
    truncate -s $((start * 512 + part_mib * 1048576)) "$raw"
    printf 'label: dos\nlabel-id: 0x48455244\nstart=%s, type=c, bootable\n' "$start" |
        sfdisk -q "$raw" >/dev/null
    dd if="$SYSLINUX_MBR" of="$raw" bs=440 count=1 conv=notrunc status=none
    # -h: hidden sectors = the partition's start, which the boot sector adds to
    # its reads when it is not chain-loaded with a partition entry.
    mkfs.vfat --invariant -i 48455244 -n HERDBOOT -h "$start" --offset="$start" \
        "$raw" $((part_mib * 1024)) >/dev/null
    {
        echo "# herd test guest $(basename "$dst"): generated by images/testguest/build.sh"
        echo "SERIAL 0 115200"
        echo "DEFAULT herd"
        echo "PROMPT 0"
        echo "TIMEOUT 0"
        echo "LABEL herd"
        echo "  LINUX /vmlinuz"
        echo "  INITRD /initrd.img"
        echo "  APPEND $(cat "$dst/cmdline")"
    } >"$CACHE/syslinux.cfg"
    (
        export SOURCE_DATE_EPOCH=$EPOCH TZ=UTC MTOOLS_SKIP_CHECK=1
        mcopy -i "$raw@@$((start * 512))" "$dst/vmlinuz" "$dst/initrd.img" "$CACHE/syslinux.cfg" ::
        syslinux --install --offset $((start * 512)) "$raw"
    ) || die "installing SYSLINUX on the boot disk failed"
    qemu-img convert -f raw -O qcow2 "$raw" "$dst/disk.qcow2.tmp"
    rm -f "$raw" "$CACHE/syslinux.cfg"
    # A rename: a VM still running on the old image keeps its (unlinked) file.
    mv "$dst/disk.qcow2.tmp" "$dst/disk.qcow2"
    if [ -f "$dst/BUILD-INFO" ]; then
        sed -i '/^disk_/d' "$dst/BUILD-INFO"
        {
            echo "disk_bootloader=$(syslinux --version 2>&1 | awk 'NR == 1 { print $1 "-" $2 }')"
            echo "disk_partition_mib=$part_mib"
            echo "disk_qcow2_sha256=$(sha256sum "$dst/disk.qcow2" | cut -d' ' -f1)"
        } >>"$dst/BUILD-INFO"
    fi
    echo "$fp" >"$dst/.disk-stamp"
}
DISK_TOOLS_FP=$(fingerprint "$SYSLINUX_MBR" "$(command -v syslinux)" "$(command -v mkfs.vfat)" \
    "$(command -v mcopy)" "$(command -v sfdisk)" "$(command -v qemu-img)")

for v in $VERSIONS; do
    case "$v" in
        *[!A-Za-z0-9._-]* | '') die "bad version '$v'" ;;
    esac
    dst=$OUT/$v
    VFP=$(fingerprint "=$BFP" "=$v" "=$CMDLINE" "$VMLINUZ")
    DFP=$(fingerprint "=$VFP" "=$DISK_TOOLS_FP")
    if fresh "$dst/.stamp" "$VFP" "$dst/vmlinuz" "$dst/initrd.img" "$dst/cmdline"; then
        if fresh "$dst/.disk-stamp" "$DFP" "$dst/disk.qcow2"; then
            log "$v: up to date"
        else
            log "$v: building boot disk"
            build_disk "$dst" "$DFP"
        fi
        continue
    fi
    log "$v: building initrd"
    stage=$CACHE/stage-$v
    rm -rf "$stage"
    cp -a "$BASE" "$stage"
    echo "$v" >"$stage/etc/herd-image-version"
    printf 'herd test guest %s\n' "$v" >"$stage/etc/motd"
    cat >"$stage/etc/os-release" <<EOF
NAME="herd test guest"
ID=herd-testguest
ID_LIKE=debian
VERSION="$v"
VERSION_ID="$v"
PRETTY_NAME="herd test guest $v"
EOF
    find "$stage" -exec touch -h -d "@$EPOCH" {} +
    mkdir -p "$dst"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -n -9 >"$dst/initrd.img.tmp"
    cp "$VMLINUZ" "$dst/vmlinuz.tmp"
    echo "$CMDLINE" >"$dst/cmdline.tmp"
    mv "$dst/initrd.img.tmp" "$dst/initrd.img"
    mv "$dst/vmlinuz.tmp" "$dst/vmlinuz"
    mv "$dst/cmdline.tmp" "$dst/cmdline"
    cat >"$dst/BUILD-INFO" <<EOF
version=$v
kernel_package=$KPKG
kernel_package_version=$KVER_DEB
kernel_release=$KREL
busybox=$("$BUSYBOX" 2>&1 | head -n1 | awk '{print $2}')
qemu_ga=$("$QEMU_GA" -V 2>&1 | head -n1 | awk '{print $NF}')
initrd_sha256=$(sha256sum "$dst/initrd.img" | cut -d' ' -f1)
EOF
    echo "$VFP" >"$dst/.stamp"
    rm -rf "$stage"
    log "$v: building boot disk"
    build_disk "$dst" "$DFP"
done

END=$(date +%s.%N)
for v in $VERSIONS; do
    log "$v: $(du -b "$OUT/$v/initrd.img" | cut -f1) bytes initrd, $(du -b "$OUT/$v/disk.qcow2" | cut -f1) bytes disk.qcow2, kernel $KREL"
done
log "done in $(awk -v a="$START" -v b="$END" 'BEGIN { printf "%.1f", b - a }') s"
