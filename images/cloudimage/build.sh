#!/bin/bash
# Build a Debian cloud image locally, from Debian packages, for herd's qemu driver.
#
#   sudo images/cloudimage/build.sh OUT_DIR
#
# leaves OUT_DIR/disk.qcow2: a bootable disk shaped like Debian's "genericcloud"
# image (cloud kernel, systemd, cloud-init with the NoCloud data source,
# qemu-guest-agent, openssh-server), plus OUT_DIR/BUILD-INFO (versions, sizes,
# checksum) and OUT_DIR/packages.txt (every package in the image). Import it with
#
#   herd image import --urn Debian:Bookworm:12:1.0.0 --disk OUT_DIR/disk.qcow2 --guest-agent true
#
# Use it where the official image (https://cloud.debian.org/images/cloud/) cannot
# be downloaded. herd takes the official image the same way (--disk); it was not
# tested here because it could not be downloaded.
#
# How: debootstrap (minbase) into OUT_DIR/.cache/rootfs, then apt-get install the
# packages inside it, then a few settings files (below). The disk is put together
# from image files alone, without loop devices or mounts: an MBR with SYSLINUX's
# boot code, partition 1 = a small FAT filesystem holding vmlinuz, initrd.img and
# syslinux.cfg (mkfs.vfat --offset, mcopy, syslinux --install --offset), and
# partition 2 = the ext4 root filesystem written straight from the rootfs tree
# (mke2fs -d -E offset=). The guest never mounts the FAT partition; a kernel
# upgrade inside a VM therefore does not change what boots (a new image does).
#
# Needs root (debootstrap, chroot, and a /proc mount inside the chroot while
# packages install) and network access to the Debian mirror. Cached and
# idempotent: the installed rootfs is kept while the suite, mirror and package
# list are unchanged; the disk is rebuilt only when the rootfs or this script
# changed. Each step says what it does on stderr.
#
# Environment:
#   HERD_CLOUDIMAGE_SUITE     Debian suite (default: the host's codename if the host
#                             is Debian, else bookworm)
#   HERD_CLOUDIMAGE_MIRROR    Debian mirror (default: the host's first Debian mirror
#                             in /etc/apt, else http://deb.debian.org/debian)
#   HERD_CLOUDIMAGE_SECURITY  security mirror, or "none" (default: the mirror's
#                             sibling .../debian-security)
#   HERD_CLOUDIMAGE_KERNEL    kernel meta package (default linux-image-cloud-amd64)
#   HERD_CLOUDIMAGE_EXTRA     more packages to install (space separated)
#   HERD_CLOUDIMAGE_SIZE_GIB  size of the disk (default 4; the qcow2 is sparse)
#   HERD_CLOUDIMAGE_CMDLINE   kernel command line (default below)
#   HERD_CLOUDIMAGE_VERSION   written to /etc/herd-image-version (default 1.0.0)
#   HERD_CLOUDIMAGE_CACHE     cache directory (default OUT_DIR/.cache); share one
#                             between versions so the rootfs is installed once:
#     for v in 1.0.0 1.0.1; do
#         HERD_CLOUDIMAGE_CACHE=OUT/.cache HERD_CLOUDIMAGE_VERSION=$v build.sh OUT/$v
#     done
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi

log() { echo "cloudimage: $*" >&2; }
die() { echo "cloudimage: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot need it)"

SELF=$(readlink -f "$0")
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
CACHE=${HERD_CLOUDIMAGE_CACHE:-$OUT/.cache}
ROOTFS=$CACHE/rootfs
# Everything below edits files under $ROOTFS as root: never let that be the host.
case "$(readlink -m "$ROOTFS")" in
    "" | / | /etc* | /usr* | /var | /tmp) die "refusing to build in $ROOTFS" ;;
esac

host_codename() {
    # shellcheck disable=SC1091
    (. /etc/os-release 2>/dev/null && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}") || true
}
host_mirror() {
    # The first Debian (not security) mirror in the host's apt sources, deb822 or one-line.
    {
        awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/*.sources 2>/dev/null
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
    } | grep -E '/debian/?$' | head -n1 | sed 's,/$,,' || true
}

SUITE=${HERD_CLOUDIMAGE_SUITE:-$(host_codename)}
SUITE=${SUITE:-bookworm}
MIRROR=${HERD_CLOUDIMAGE_MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${HERD_CLOUDIMAGE_SECURITY:-${MIRROR%/debian}/debian-security}
KERNEL=${HERD_CLOUDIMAGE_KERNEL:-linux-image-cloud-amd64}
SIZE_GIB=${HERD_CLOUDIMAGE_SIZE_GIB:-4}
CMDLINE=${HERD_CLOUDIMAGE_CMDLINE:-root=LABEL=cloudimg-rootfs ro console=ttyS0,115200n8 consoleblank=0}
VERSION=${HERD_CLOUDIMAGE_VERSION:-1.0.0}
case $VERSION in
    *[!0-9A-Za-z.+~-]* | "") die "HERD_CLOUDIMAGE_VERSION '$VERSION': use letters, digits and . + ~ -" ;;
esac
# What Debian's genericcloud image has that matters to herd, and little else:
# systemd, cloud-init (NoCloud seed: hostname, users, customData), the QEMU guest
# agent (herd's readiness and in-place Custom Script runs), ifupdown + dhclient
# (cloud-init's "eni" renderer, as in Debian's images), dbus (hostnamectl), ssh.
PACKAGES="$KERNEL systemd-sysv udev dbus cloud-init qemu-guest-agent openssh-server sudo
          ifupdown isc-dhcp-client netbase iproute2 iputils-ping ca-certificates curl
          procps less locales ${HERD_CLOUDIMAGE_EXTRA:-}"
PACKAGES=$(echo "$PACKAGES" | tr -s ' \n' '  ' | sed 's/^ //; s/ $//')
LABEL=cloudimg-rootfs
SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin

for tool in debootstrap chroot mount umount flock sha256sum sfdisk mkfs.vfat mcopy syslinux \
    mke2fs qemu-img truncate; do
    command -v "$tool" >/dev/null ||
        die "$tool not found (apt-get install debootstrap dosfstools mtools syslinux syslinux-common fdisk e2fsprogs qemu-utils)"
done
[ -f "$SYSLINUX_MBR" ] || die "$SYSLINUX_MBR not found (apt-get install syslinux-common)"
# mke2fs -d (populate from a directory) appeared in e2fsprogs 1.43.
mke2fs -V 2>&1 | awk 'NR == 1 { split($2, v, "."); exit !(v[1] > 1 || v[2] >= 43) }' ||
    die "mke2fs is too old for -d (need e2fsprogs 1.43 or later)"

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9

# --- 1. the root filesystem: debootstrap + packages ------------------------------
ROOTFS_FP=$(printf '%s\n' "v1" "$SUITE" "$MIRROR" "$SECURITY" "$PACKAGES" | sha256sum | cut -c1-16)

chroot_mounted=no
umount_chroot() {
    if [ "$chroot_mounted" = yes ]; then
        umount -l "$ROOTFS/proc" 2>/dev/null || true
        umount -l "$ROOTFS/sys" 2>/dev/null || true
        umount -l "$ROOTFS/dev/pts" 2>/dev/null || true
        chroot_mounted=no
    fi
}
trap umount_chroot EXIT
in_chroot() {
    LC_ALL=C DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
        chroot "$ROOTFS" "$@"
}

if [ -d "$ROOTFS" ] && [ -f "$CACHE/rootfs.fp" ] && [ "$(cat "$CACHE/rootfs.fp")" = "$ROOTFS_FP" ]; then
    log "rootfs: cached ($ROOTFS, $SUITE from $MIRROR)"
else
    rm -f "$CACHE/rootfs.fp"
    if [ -d "$ROOTFS" ]; then
        log "rootfs: inputs changed or an earlier build stopped half-way: starting over"
        # Never follow a mount left inside by a killed run.
        for m in proc sys dev/pts; do umount -l "$ROOTFS/$m" 2>/dev/null || true; done
        rm -rf --one-file-system "$ROOTFS"
    fi
    log "rootfs: debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
    debootstrap --variant=minbase --components=main "$SUITE" "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $CACHE/debootstrap.log"

    {
        echo "deb $MIRROR $SUITE main"
        echo "deb $MIRROR $SUITE-updates main"
        if [ "$SECURITY" != none ]; then echo "deb $SECURITY $SUITE-security main"; fi
    } >"$ROOTFS/etc/apt/sources.list"
    # No service starts inside the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
    chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
    # Only what is asked for, as in Debian's cloud images' minimal package sets.
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$ROOTFS/etc/apt/apt.conf.d/90herd-norecommends"

    mount -t proc proc "$ROOTFS/proc"
    chroot_mounted=yes
    mount -t sysfs sysfs "$ROOTFS/sys"
    mkdir -p "$ROOTFS/dev/pts"
    mount -t devpts devpts "$ROOTFS/dev/pts"
    log "rootfs: apt-get install $PACKAGES"
    # shellcheck disable=SC2086 # $PACKAGES: one word per package
    {
        in_chroot apt-get update -q &&
            in_chroot apt-get install -y -q $PACKAGES &&
            in_chroot apt-get clean
    } >"$CACHE/apt.log" 2>&1 || die "installing packages in the rootfs failed; see $CACHE/apt.log"
    umount_chroot
    rm -f "$ROOTFS/usr/sbin/policy-rc.d"
    rm -rf "$ROOTFS"/var/lib/apt/lists/*
    echo "$ROOTFS_FP" >"$CACHE/rootfs.fp"
    log "rootfs: installed ($(du -sh --exclude=./proc "$ROOTFS" | cut -f1))"
fi

# --- 2. image settings ------------------------------------------------------------
# Idempotent without touching what is already right: put() rewrites a file only
# when its content differs, so an unchanged tree keeps its mtimes and the disk
# below stays cached.
put() {
    local f=$ROOTFS/$1 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$f" ] && [ ! -L "$f" ] && cmp -s "$tmp" "$f"; then
        rm -f "$tmp"
    else
        rm -f "$f"
        mkdir -p "$(dirname "$f")"
        mv "$tmp" "$f"
        chmod 644 "$f"
    fi
}
mask() {
    [ "$(readlink "$ROOTFS/etc/systemd/system/$1" 2>/dev/null)" = /dev/null ] ||
        ln -sfn /dev/null "$ROOTFS/etc/systemd/system/$1"
}
log "rootfs: image settings (fstab, network, cloud-init, first-boot state)"
put etc/fstab <<EOF
# Written by herd's images/cloudimage/build.sh
LABEL=$LABEL / ext4 rw,discard,errors=remount-ro 0 1
EOF
echo localhost | put etc/hostname
# The image's own version, as herd's test guest has it: the walkthrough reads it to
# see a reimage land on the new image.
echo "$VERSION" | put etc/herd-image-version
put etc/hosts <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
# cloud-init writes the NIC's stanza to interfaces.d/50-cloud-init.
put etc/network/interfaces <<'EOF'
# Written by herd's images/cloudimage/build.sh; cloud-init adds interfaces.d/50-cloud-init.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
EOF
mkdir -p "$ROOTFS/etc/network/interfaces.d"
# herd seeds NoCloud only; naming it skips probing for other clouds at boot.
# manage_etc_hosts: the hostname herd gives the VM resolves (sudo complains otherwise).
put etc/cloud/cloud.cfg.d/90-herd.cfg <<'EOF'
# Written by herd's images/cloudimage/build.sh: herd (and any NoCloud seed) only.
datasource_list: [ NoCloud, None ]
manage_etc_hosts: true
EOF
# cloud-init's locale module sets en_US.UTF-8, which must exist already, or the
# module fails and `cloud-init status` says error.
put etc/locale.gen <<'EOF'
en_US.UTF-8 UTF-8
EOF
if ! in_chroot locale -a 2>/dev/null | grep -qx 'en_US.utf8'; then
    in_chroot locale-gen >"$CACHE/locale-gen.log" 2>&1 || die "locale-gen failed; see $CACHE/locale-gen.log"
fi
# A guest should not reach the internet unless its own cloud-init config asks
# for it (package_update, packages): no unattended apt runs.
mask apt-daily.timer
mask apt-daily-upgrade.timer
# First-boot state: every VM makes its own machine id and SSH host keys.
[ ! -s "$ROOTFS/etc/machine-id" ] || : >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id" "$ROOTFS"/etc/ssh/ssh_host_*
rm -rf "$ROOTFS/var/lib/cloud" "$ROOTFS"/var/log/*.log "$ROOTFS/root/.bash_history"
find "$ROOTFS/tmp" -mindepth 1 -delete
# The host's resolv.conf came in with debootstrap; dhclient writes the guest's own.
rm -f "$ROOTFS/etc/resolv.conf"
for m in proc sys dev/pts; do
    if mountpoint -q "$ROOTFS/$m"; then die "$ROOTFS/$m is still mounted"; fi
done

# --- 3. the disk -----------------------------------------------------------------
VMLINUZ=$(find "$ROOTFS/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)
[ -n "$VMLINUZ" ] || die "no kernel in $ROOTFS/boot"
KVER=${VMLINUZ##*/vmlinuz-}
INITRD=$ROOTFS/boot/initrd.img-$KVER
[ -f "$INITRD" ] || die "no initrd for $KVER in $ROOTFS/boot"

tree_fp() {
    # Every file's path, type, size, mode, owner and mtime (not the contents: fast).
    (cd "$ROOTFS" && find . -xdev -printf '%p %y %s %m %U %G %T@ %l\n' | LC_ALL=C sort | sha256sum | cut -c1-16)
}
DISK_FP=$(printf '%s\n' "$(sha256sum <"$SELF")" "$(tree_fp)" "$SIZE_GIB" "$CMDLINE" "$VERSION" | sha256sum | cut -c1-16)
if [ -f "$OUT/disk.qcow2" ] && [ -f "$OUT/.disk.fp" ] && [ "$(cat "$OUT/.disk.fp")" = "$DISK_FP" ]; then
    log "disk: cached ($OUT/disk.qcow2)"
    exit 0
fi

# Layout: MBR (SYSLINUX mbr.bin), p1 = FAT boot partition at sector 2048
# (bootable, type 0x0c), p2 = ext4 root (type 0x83) up to the end of the disk.
raw=$CACHE/disk.raw
start=2048
boot_mib=$(( ($(stat -c %s "$VMLINUZ") + $(stat -c %s "$INITRD")) * 5 / 4 / 1048576 + 8 ))
boot_mib=$(( (boot_mib + 7) / 8 * 8 ))
root_start=$(( start + boot_mib * 2048 ))
total=$(( SIZE_GIB * 1024 * 1048576 ))
root_bytes=$(( total - root_start * 512 ))
[ "$root_bytes" -gt $((1024 * 1048576)) ] || die "HERD_CLOUDIMAGE_SIZE_GIB=$SIZE_GIB is too small"

log "disk: partitioning a ${SIZE_GIB} GiB disk (FAT boot ${boot_mib} MiB, ext4 root)"
rm -f "$raw" "$OUT/disk.qcow2.tmp"
truncate -s "$total" "$raw"
printf 'label: dos\nlabel-id: 0x48455244\nstart=%s, size=%s, type=c, bootable\nstart=%s, type=83\n' \
    "$start" $((boot_mib * 2048)) "$root_start" | sfdisk -q "$raw" >/dev/null
dd if="$SYSLINUX_MBR" of="$raw" bs=440 count=1 conv=notrunc status=none

log "disk: boot partition: kernel $KVER, its initrd, SYSLINUX"
# FAT16, sized by the partition (not by the whole file, which is what mkfs.vfat
# would otherwise look at when it picks the FAT type).
mkfs.vfat -F 16 -i 48455244 -n HERDBOOT -h "$start" --offset="$start" "$raw" $((boot_mib * 1024)) \
    >"$CACHE/mkfs.vfat.log" 2>&1 || die "mkfs.vfat failed; see $CACHE/mkfs.vfat.log"
{
    echo "# Written by herd's images/cloudimage/build.sh"
    echo "SERIAL 0 115200"
    echo "DEFAULT debian"
    echo "PROMPT 0"
    echo "TIMEOUT 0"
    echo "LABEL debian"
    echo "  LINUX /vmlinuz"
    echo "  INITRD /initrd.img"
    echo "  APPEND $CMDLINE"
} >"$CACHE/syslinux.cfg"
(
    export MTOOLS_SKIP_CHECK=1
    mcopy -i "$raw@@$((start * 512))" "$VMLINUZ" ::vmlinuz
    mcopy -i "$raw@@$((start * 512))" "$INITRD" ::initrd.img
    mcopy -i "$raw@@$((start * 512))" "$CACHE/syslinux.cfg" ::syslinux.cfg
    syslinux --install --offset $((start * 512)) "$raw"
) || die "installing SYSLINUX on the boot partition failed"

log "disk: root partition: ext4 '$LABEL' from the rootfs tree (mke2fs -d)"
mke2fs -q -F -t ext4 -L "$LABEL" -E offset=$((root_start * 512)) -d "$ROOTFS" \
    "$raw" $((root_bytes / 1024))k >"$CACHE/mke2fs.log" 2>&1 || die "mke2fs failed; see $CACHE/mke2fs.log"

log "disk: converting to qcow2"
qemu-img convert -f raw -O qcow2 "$raw" "$OUT/disk.qcow2.tmp"
rm -f "$raw" "$CACHE/syslinux.cfg"
# A rename: a VM still running on the old image keeps its (unlinked) file.
mv "$OUT/disk.qcow2.tmp" "$OUT/disk.qcow2"

# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
in_chroot dpkg-query -W -f='${Package} ${Version}\n' >"$OUT/packages.txt"
ver() { awk -v p="$1" '$1 == p { print $2 }' "$OUT/packages.txt"; }
{
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "version=$VERSION"
    echo "suite=$SUITE"
    echo "mirror=$MIRROR"
    echo "security=$SECURITY"
    echo "kernel=$KVER"
    echo "cloud_init=$(ver cloud-init)"
    echo "qemu_guest_agent=$(ver qemu-guest-agent)"
    echo "systemd=$(ver systemd)"
    echo "packages=$(wc -l <"$OUT/packages.txt")"
    echo "cmdline=$CMDLINE"
    echo "disk_virtual_gib=$SIZE_GIB"
    echo "disk_file_bytes=$(stat -c %s "$OUT/disk.qcow2")"
    echo "disk_sha256=$(sha256sum "$OUT/disk.qcow2" | cut -d' ' -f1)"
} >"$OUT/BUILD-INFO"
echo "$DISK_FP" >"$OUT/.disk.fp"
log "done: $OUT/disk.qcow2 ($(du -h "$OUT/disk.qcow2" | cut -f1)); kernel $KVER, cloud-init $(ver cloud-init)"
