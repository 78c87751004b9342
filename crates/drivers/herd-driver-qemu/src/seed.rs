//! The cloud-init NoCloud seed: how a QEMU guest learns who it is.
//!
//! A VM in herd is a plain cloud image, so everything instance-specific (hostname, instance id,
//! the admin user with its SSH keys or password hash, the user's custom data, the network
//! configuration) reaches the guest through cloud-init's NoCloud data source: a small disk
//! whose filesystem label is `cidata` (case-insensitive) holding the files `meta-data`,
//! `user-data` and optionally `network-config`. This module renders those files and packs them
//! into a FAT12 filesystem image written entirely in Rust, so the driver needs no external
//! tools (`genisoimage`, `mkfs.vfat`, `mtools`) and no root privileges (no loop mounts).
//!
//! # Files
//!
//! - [`meta_data`]: `instance-id` and `local-hostname`.
//! - [`user_data`]: a `#cloud-config` document with `hostname` and the admin user (passwordless
//!   sudo, `/bin/bash`, SSH keys, optionally a password *hash*). With custom data (Azure's
//!   `customData`) the result is a MIME `multipart/mixed` document instead (see below).
//! - [`network_config_dhcp`]: network-config version 2, DHCPv4 on every interface whose name
//!   matches `e*` (a glob only netplan honours; see there), or [`network_config_dhcp_mac`]: the
//!   same for the interface with a given MAC address, which every cloud-init renderer handles.
//!
//! Every value that comes from a user is written as a double-quoted scalar (see
//! [`yaml_quote`]): quotes, backslashes, newlines and all non-ASCII characters are escaped, so a
//! value can never break out of its line. The YAML we write is pure ASCII.
//!
//! # Passwords
//!
//! The seed never holds a plaintext password. [`UserDataInput::password_hash`] is a crypt(3)
//! hash (SHA-512 crypt, `$6$salt$...`, as `mkpasswd -m sha-512` or `openssl passwd -6` make it)
//! computed by the caller; it is written as `passwd:` with `lock_passwd: false` and
//! `ssh_pwauth: true` (password login over SSH, as on Azure when password authentication is
//! enabled). Without a hash the account is locked for passwords (`lock_passwd: true`) and only
//! the SSH keys let the admin in. Because the hash is still sensitive, [`write_seed`] creates the
//! image with mode 0600.
//!
//! # Custom data
//!
//! Merging the user's cloud-config into ours textually is not safe, so custom data is attached
//! as its own part of a MIME multipart user-data, which cloud-init splits and processes part by
//! part (exactly as it would process that custom data alone):
//!
//! 1. the custom data, base64-encoded (byte-exact, and base64 can never contain the boundary),
//!    with `Content-Type` `text/x-shellscript` (starts with `#!`), `text/cloud-config` (starts
//!    with `#cloud-config`), `text/cloud-config-jsonp` (starts with `#cloud-config-jsonp`) or
//!    `text/plain`, for which cloud-init detects the type from the content (`#include`,
//!    `#cloud-boothook`, `## template: jinja`, ...). Custom data that is itself a MIME document
//!    (starts with `Content-Type:` or `MIME-Version:`) is embedded verbatim as a nested part, so
//!    cloud-init unpacks it too.
//! 2. our cloud-config, with the header `Merge-Type: dict(no_replace,recurse_array)+list(append)+str()`:
//!    lists such as `users` are appended to what the custom data declared (the admin user is
//!    always created, next to the custom data's users), while for any other key the custom
//!    data wins (e.g. its `hostname`).
//!
//! Empty custom data counts as none: the user-data is then the plain `#cloud-config`.
//!
//! # The image
//!
//! [`build_vfat`] makes a FAT12 filesystem without a partition table: 512-byte sectors, one
//! reserved sector, two FATs, 512 root directory entries, media descriptor 0xF8, at least 1 MiB
//! (the cluster size grows with the content, up to 32 KiB clusters, so up to about 127 MiB of
//! files fit). The volume label `CIDATA` is in the boot sector and, as a volume-label entry, in
//! the root directory (where `blkid` looks first). `meta-data` and friends are not 8.3 names, so
//! each file gets a VFAT long-name entry plus an 8.3 alias (`META-D~1`, `USER-D~1`,
//! `NETWOR~1`, as Windows and mtools would pick). Timestamps are fixed (2020-01-01 00:00) and
//! the volume serial number is a hash of the content: the same files give the same bytes.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;

/// The filesystem label cloud-init's NoCloud data source looks for (it matches `cidata`
/// case-insensitively; FAT labels are conventionally upper case).
pub const SEED_LABEL: &str = "CIDATA";
/// File name of the meta-data in the seed.
pub const META_DATA_FILE: &str = "meta-data";
/// File name of the user-data in the seed.
pub const USER_DATA_FILE: &str = "user-data";
/// File name of the (optional) network configuration in the seed.
pub const NETWORK_CONFIG_FILE: &str = "network-config";

/// The files of a NoCloud seed, as they will appear in its root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    /// `meta-data` (see [`meta_data`]).
    pub meta_data: String,
    /// `user-data` (see [`user_data`]).
    pub user_data: String,
    /// `network-config` (see [`network_config_dhcp`]); absent: cloud-init's default (DHCP on the
    /// first NIC).
    pub network_config: Option<String>,
}

/// Why a seed image cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// More data than a FAT12 image with 32 KiB clusters can hold (about 127 MiB).
    #[error("seed files too large for a FAT12 seed image: {bytes} bytes (at most about 127 MiB fit)")]
    TooLarge {
        /// Total size of the files.
        bytes: u64,
    },
}

/// What goes into the `#cloud-config` part of the user-data.
#[derive(Debug, Clone, Copy)]
pub struct UserDataInput<'a> {
    /// The admin user to create (passwordless sudo, `/bin/bash`).
    pub admin_username: &'a str,
    /// A crypt(3) hash (SHA-512 crypt, `$6$...`) of the admin password, computed by the caller;
    /// never the plaintext password. `None`: password login locked.
    pub password_hash: Option<&'a str>,
    /// OpenSSH public keys (one `authorized_keys` line each) for the admin user.
    pub ssh_keys: &'a [String],
    /// The user's custom data (Azure `customData`, already decoded); `None` or empty: none.
    pub custom_data: Option<&'a str>,
    /// The hostname (also written to meta-data's `local-hostname` by [`meta_data`]).
    pub hostname: &'a str,
}

/// Quotes `s` as a YAML double-quoted scalar that is pure printable ASCII.
///
/// `"` and `\` are backslash-escaped, `\n`, `\r`, `\t` use their short escapes, and every other
/// character outside printable ASCII is written as `\uXXXX` (or `\UXXXXXXXX` beyond the Basic
/// Multilingual Plane). Without astral characters the result is also a valid JSON string.
pub fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08X}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// The NoCloud `meta-data`: `instance-id` and `local-hostname` (both quoted).
///
/// cloud-init runs its once-per-instance modules again whenever `instance-id` changes, so it
/// must be stable for the life of an instance and new for a reimage.
pub fn meta_data(instance_id: &str, hostname: &str) -> String {
    format!("instance-id: {}\nlocal-hostname: {}\n", yaml_quote(instance_id), yaml_quote(hostname))
}

/// The `user-data`: a plain `#cloud-config`, or a MIME multipart with the custom data (see the
/// module documentation).
pub fn user_data(input: &UserDataInput) -> String {
    let cloud_config = cloud_config(input);
    match input.custom_data.filter(|c| !c.is_empty()) {
        None => cloud_config,
        Some(custom) => mime_multipart(&cloud_config, custom),
    }
}

/// network-config version 2: DHCPv4 on every interface whose name starts with `e` (`eth0`,
/// `ens3`, `enp0s3`, ...).
///
/// Caveat: only netplan (Ubuntu, and distributions that render network configuration through
/// netplan) honours the `match: name` glob. cloud-init's other renderers (ifupdown's ENI,
/// systemd-networkd without netplan, sysconfig) ignore it and configure the interface named by
/// the entry's key, so the key is `eth0`: right for guests that name their NIC `eth0`, and
/// nothing else. For guests with predictable names on those renderers prefer
/// [`network_config_dhcp_mac`], or no network-config at all (cloud-init's fallback: DHCP on
/// the first NIC).
pub fn network_config_dhcp() -> String {
    "version: 2\nethernets:\n  eth0:\n    match:\n      name: \"e*\"\n    dhcp4: true\n".to_string()
}

/// network-config version 2: DHCPv4 on the interface with MAC address `mac` (as given to QEMU's
/// `-device virtio-net-pci,mac=...`). Every cloud-init renderer resolves a MAC match to the
/// interface's real name, so this works whatever the guest calls its NIC. The address is written
/// in lower case (netplan gets it verbatim).
pub fn network_config_dhcp_mac(mac: &str) -> String {
    let mac = yaml_quote(&mac.to_ascii_lowercase());
    format!("version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: {mac}\n    dhcp4: true\n")
}

/// network-config version 2 for a bridged NIC: the interface with MAC address `mac` gets
/// `address/prefix_len`, the default route and DNS through `gateway`, and `mtu`: the same
/// address and MTU herd's DHCP reservation hands out, for guests that read the seed instead.
pub fn network_config_static(
    mac: &str,
    address: std::net::Ipv4Addr,
    prefix_len: u8,
    gateway: std::net::Ipv4Addr,
    mtu: u16,
) -> String {
    let mac = yaml_quote(&mac.to_ascii_lowercase());
    format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: {mac}\n    addresses: [\"{address}/{prefix_len}\"]\n    \
         routes:\n      - to: \"0.0.0.0/0\"\n        via: \"{gateway}\"\n    nameservers:\n      addresses: [\"{gateway}\"]\n    \
         mtu: {mtu}\n"
    )
}

fn cloud_config(input: &UserDataInput) -> String {
    let mut y = String::from("#cloud-config\n");
    let _ = writeln!(y, "hostname: {}", yaml_quote(input.hostname));
    if input.password_hash.is_some() {
        y.push_str("ssh_pwauth: true\n");
    }
    y.push_str("users:\n");
    let _ = writeln!(y, "  - name: {}", yaml_quote(input.admin_username));
    y.push_str("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n");
    y.push_str("    shell: /bin/bash\n");
    match input.password_hash {
        Some(hash) => {
            y.push_str("    lock_passwd: false\n");
            let _ = writeln!(y, "    passwd: {}", yaml_quote(hash));
        }
        None => y.push_str("    lock_passwd: true\n"),
    }
    if !input.ssh_keys.is_empty() {
        y.push_str("    ssh_authorized_keys:\n");
        for key in input.ssh_keys {
            let _ = writeln!(y, "      - {}", yaml_quote(key));
        }
    }
    y
}

/// How cloud-init merges our cloud-config part into what the custom data declared.
pub const MERGE_TYPE: &str = "dict(no_replace,recurse_array)+list(append)+str()";
const BOUNDARY: &str = "==herd-seed-boundary==";

fn looks_like_mime(s: &str) -> bool {
    let head = s.get(..13).unwrap_or(s).to_ascii_lowercase();
    head.starts_with("content-type:") || head.starts_with("mime-version:")
}

fn custom_data_type(custom: &str) -> (&'static str, &'static str) {
    if custom.starts_with("#!") {
        ("text/x-shellscript", "custom-data.sh")
    } else if custom.starts_with("#cloud-config-jsonp") {
        ("text/cloud-config-jsonp", "custom-data.json")
    } else if custom.starts_with("#cloud-config") {
        ("text/cloud-config", "custom-data.yaml")
    } else {
        ("text/plain", "custom-data")
    }
}

fn mime_multipart(cloud_config: &str, custom: &str) -> String {
    let nested = looks_like_mime(custom);
    // Base64 never contains the boundary (no '-' in its alphabet); only a verbatim nested MIME
    // document could.
    let mut boundary = BOUNDARY.to_string();
    let mut n = 0u32;
    while nested && custom.contains(&boundary) {
        n += 1;
        boundary = format!("==herd-seed-boundary-{n}==");
    }
    let mut m = String::new();
    let _ = write!(m, "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n");
    let _ = writeln!(m, "--{boundary}");
    if nested {
        m.push_str(custom);
        if !custom.ends_with('\n') {
            m.push('\n');
        }
    } else {
        let (ctype, filename) = custom_data_type(custom);
        let _ = write!(
            m,
            "Content-Type: {ctype}; charset=\"utf-8\"\nMIME-Version: 1.0\nContent-Transfer-Encoding: base64\n\
             Content-Disposition: attachment; filename=\"{filename}\"\n\n"
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(custom.as_bytes());
        for line in encoded.as_bytes().chunks(76) {
            // Base64 output is ASCII.
            m.push_str(&String::from_utf8_lossy(line));
            m.push('\n');
        }
    }
    let _ = write!(
        m,
        "--{boundary}\nContent-Type: text/cloud-config; charset=\"us-ascii\"\nMIME-Version: 1.0\n\
         Content-Transfer-Encoding: 7bit\nContent-Disposition: attachment; filename=\"herd.cfg\"\n\
         Merge-Type: {MERGE_TYPE}\n\n{cloud_config}--{boundary}--\n"
    );
    m
}

/// Builds the seed as a FAT12 filesystem image labelled `CIDATA` holding `meta-data`,
/// `user-data` and (when given) `network-config` (see the module documentation for the layout).
pub fn build_vfat(files: &SeedFiles) -> Result<Vec<u8>, SeedError> {
    let mut entries: Vec<(&str, &[u8])> =
        vec![(META_DATA_FILE, files.meta_data.as_bytes()), (USER_DATA_FILE, files.user_data.as_bytes())];
    if let Some(network_config) = &files.network_config {
        entries.push((NETWORK_CONFIG_FILE, network_config.as_bytes()));
    }
    build_fat12(SEED_LABEL, &entries)
}

/// Writes the seed image to `path` atomically (a temporary file in the same directory, then
/// rename) with mode 0600: the user-data may hold a password hash.
///
/// Fails with [`io::ErrorKind::InvalidInput`] when the files do not fit ([`SeedError`]).
pub fn write_seed(path: &Path, files: &SeedFiles) -> io::Result<()> {
    let image = build_vfat(files).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    write_private_atomically(path, &image)?;
    tracing::debug!(path = %path.display(), bytes = image.len(), "wrote NoCloud seed image");
    Ok(())
}

fn write_private_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name =
        path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seed path has no file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        // The umask can only take bits away; make sure it did not take the owner's.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename durable; not all filesystems allow fsync on a directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// FAT12

const SECTOR: u32 = 512;
const RESERVED_SECTORS: u32 = 1;
const NUM_FATS: u32 = 2;
const ROOT_ENTRIES: u32 = 512;
const DIR_ENTRY: usize = 32;
const ROOT_DIR_SECTORS: u32 = ROOT_ENTRIES * DIR_ENTRY as u32 / SECTOR;
/// 1 MiB: the smallest image we make.
const MIN_SECTORS: u32 = 2048;
/// FAT12 means fewer than 4085 clusters (Microsoft's rule, also Linux's and fsck.fat's).
const MAX_CLUSTERS: u32 = 4084;
/// Largest cluster: 64 sectors (32 KiB).
const MAX_SECTORS_PER_CLUSTER_SHIFT: u32 = 6;
const MEDIA_DESCRIPTOR: u8 = 0xF8;
const FAT12_EOC: u16 = 0xFFF;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LONG_NAME: u8 = 0x0F;
/// 2020-01-01 00:00:00 in FAT's encoding (time 0, date `(year-1980)<<9 | month<<5 | day`).
const FAT_TIME: u16 = 0;
const FAT_DATE: u16 = (40 << 9) | (1 << 5) | 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    sectors_per_cluster: u32,
    fat_sectors: u32,
    total_sectors: u32,
    /// Data clusters (numbered 2 ..= clusters + 1).
    clusters: u32,
}

impl Geometry {
    /// Sectors one FAT needs for `clusters` data clusters (plus the two reserved entries), at
    /// 12 bits an entry.
    fn fat_sectors_for(clusters: u32) -> u32 {
        ((clusters + 2) * 3).div_ceil(2).div_ceil(SECTOR)
    }

    /// The layout of a `total_sectors` image with the given cluster size: the smallest FAT that
    /// covers every cluster left after the FATs.
    fn fit(total_sectors: u32, sectors_per_cluster: u32) -> Geometry {
        let mut fat_sectors = 1;
        loop {
            let data = total_sectors.saturating_sub(RESERVED_SECTORS + ROOT_DIR_SECTORS + NUM_FATS * fat_sectors);
            let clusters = data / sectors_per_cluster;
            if Self::fat_sectors_for(clusters) <= fat_sectors {
                return Geometry { sectors_per_cluster, fat_sectors, total_sectors, clusters };
            }
            fat_sectors += 1;
        }
    }

    /// The smallest cluster size (and then the smallest image, at least 1 MiB) that holds files
    /// of these sizes.
    fn for_sizes(sizes: &[usize]) -> Result<Geometry, SeedError> {
        for shift in 0..=MAX_SECTORS_PER_CLUSTER_SHIFT {
            let spc = 1u32 << shift;
            let cluster_bytes = u64::from(spc * SECTOR);
            let needed: u64 = sizes.iter().map(|&s| (s as u64).div_ceil(cluster_bytes)).sum();
            if needed > u64::from(MAX_CLUSTERS) {
                continue;
            }
            let needed = needed as u32;
            let overhead = RESERVED_SECTORS + ROOT_DIR_SECTORS + NUM_FATS * Self::fat_sectors_for(needed);
            let mut total = MIN_SECTORS.max(overhead + needed * spc);
            loop {
                let g = Self::fit(total, spc);
                if g.clusters > MAX_CLUSTERS {
                    break;
                }
                if g.clusters >= needed {
                    return Ok(g);
                }
                total += spc;
            }
        }
        Err(SeedError::TooLarge { bytes: sizes.iter().map(|&s| s as u64).sum() })
    }

    fn fat_start(&self) -> usize {
        (RESERVED_SECTORS * SECTOR) as usize
    }

    fn root_start(&self) -> usize {
        ((RESERVED_SECTORS + NUM_FATS * self.fat_sectors) * SECTOR) as usize
    }

    fn cluster_bytes(&self) -> usize {
        (self.sectors_per_cluster * SECTOR) as usize
    }

    /// Byte offset of data cluster `n` (n >= 2).
    fn cluster_offset(&self, n: u32) -> usize {
        self.root_start() + (ROOT_DIR_SECTORS * SECTOR) as usize + (n as usize - 2) * self.cluster_bytes()
    }
}

fn fat12_set(fat: &mut [u8], n: u32, value: u16) {
    let off = n as usize * 3 / 2;
    if n & 1 == 0 {
        fat[off] = value as u8;
        fat[off + 1] = (fat[off + 1] & 0xF0) | ((value >> 8) as u8 & 0x0F);
    } else {
        fat[off] = (fat[off] & 0x0F) | ((value as u8 & 0x0F) << 4);
        fat[off + 1] = (value >> 4) as u8;
    }
}

#[cfg(test)]
fn fat12_get(fat: &[u8], n: u32) -> u16 {
    let off = n as usize * 3 / 2;
    let pair = u16::from(fat[off]) | (u16::from(fat[off + 1]) << 8);
    if n & 1 == 0 {
        pair & 0x0FFF
    } else {
        pair >> 4
    }
}

/// The checksum of an 8.3 name that every long-name entry of the file carries.
fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

fn is_short_name_char(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || b"!#$%&'()-@^_`{}~".contains(&c)
}

/// `name` as a space-padded 8.3 directory name, when it already is a valid upper-case 8.3 name.
fn exact_short_name(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.split_once('.') {
        Some((b, e)) => (b, e),
        None => (name, ""),
    };
    let ok = |s: &str, max: usize| s.len() <= max && s.bytes().all(is_short_name_char);
    if base.is_empty() || !ok(base, 8) || !ok(ext, 3) {
        return None;
    }
    let mut short = [b' '; 11];
    short[..base.len()].copy_from_slice(base.as_bytes());
    short[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(short)
}

/// A numbered 8.3 alias for a long name (`meta-data` -> `META-D~1`), the way Windows makes
/// them: upper case, invalid characters as `_`, the first characters of the base name plus
/// `~N`, the first three characters of the last extension; `N` counts up past aliases taken.
fn short_alias(name: &str, taken: &[[u8; 11]]) -> [u8; 11] {
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let convert = |s: &str| -> Vec<u8> {
        s.chars()
            .filter(|&c| c != ' ' && c != '.')
            .map(|c| {
                let u = c.to_ascii_uppercase();
                if u.is_ascii() && is_short_name_char(u as u8) {
                    u as u8
                } else {
                    b'_'
                }
            })
            .collect()
    };
    let mut base = convert(base);
    if base.is_empty() {
        base.push(b'_');
    }
    let mut ext = convert(ext);
    ext.truncate(3);
    let mut n = 1u32;
    loop {
        let tail = format!("~{n}");
        let keep = (8 - tail.len()).min(base.len());
        let mut short = [b' '; 11];
        short[..keep].copy_from_slice(&base[..keep]);
        short[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        short[8..8 + ext.len()].copy_from_slice(&ext);
        if !taken.contains(&short) {
            return short;
        }
        n += 1;
    }
}

/// The long-name entries for `name`, in directory order (last part first, ordinal | 0x40).
fn lfn_entries(name: &str, checksum: u8) -> Vec<[u8; DIR_ENTRY]> {
    const SLOTS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
    let units: Vec<u16> = name.encode_utf16().collect();
    let count = units.len().div_ceil(13).max(1);
    let mut entries = Vec::with_capacity(count);
    for part in (0..count).rev() {
        let mut e = [0u8; DIR_ENTRY];
        e[0] = (part + 1) as u8 | if part + 1 == count { 0x40 } else { 0 };
        e[11] = ATTR_LONG_NAME;
        e[13] = checksum;
        for (i, &slot) in SLOTS.iter().enumerate() {
            let idx = part * 13 + i;
            let unit = match idx.cmp(&units.len()) {
                std::cmp::Ordering::Less => units[idx],
                std::cmp::Ordering::Equal => 0x0000,
                std::cmp::Ordering::Greater => 0xFFFF,
            };
            e[slot..slot + 2].copy_from_slice(&unit.to_le_bytes());
        }
        entries.push(e);
    }
    entries
}

fn short_entry(name: &[u8; 11], attr: u8, first_cluster: u16, size: u32) -> [u8; DIR_ENTRY] {
    let mut e = [0u8; DIR_ENTRY];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[14..16].copy_from_slice(&FAT_TIME.to_le_bytes()); // created
    e[16..18].copy_from_slice(&FAT_DATE.to_le_bytes());
    e[18..20].copy_from_slice(&FAT_DATE.to_le_bytes()); // accessed
    e[22..24].copy_from_slice(&FAT_TIME.to_le_bytes()); // written
    e[24..26].copy_from_slice(&FAT_DATE.to_le_bytes());
    e[26..28].copy_from_slice(&first_cluster.to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// FNV-1a, for a volume serial number that depends only on the content.
fn fnv1a(chunks: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811C_9DC5;
    for chunk in chunks {
        for &b in *chunk {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        h = (h ^ 0xFF).wrapping_mul(0x0100_0193);
    }
    h
}

/// A FAT12 image labelled `label` (at most 11 upper-case characters) with `files` in its root
/// directory. Names must be valid long file names (at most 255 UTF-16 units, none of
/// `"*/:<>?\|`); there must be few enough of them for the 512-entry root directory.
fn build_fat12(label: &str, files: &[(&str, &[u8])]) -> Result<Vec<u8>, SeedError> {
    let sizes: Vec<usize> = files.iter().map(|(_, d)| d.len()).collect();
    if sizes.iter().any(|&s| u32::try_from(s).is_err()) {
        return Err(SeedError::TooLarge { bytes: sizes.iter().map(|&s| s as u64).sum() });
    }
    let g = Geometry::for_sizes(&sizes)?;
    let mut img = vec![0u8; (g.total_sectors * SECTOR) as usize];

    let mut label11 = [b' '; 11];
    let label = label.as_bytes();
    label11[..label.len().min(11)].copy_from_slice(&label[..label.len().min(11)]);

    // FAT: entry 0 holds the media descriptor, entry 1 end-of-chain; files get consecutive
    // clusters from 2 on, each chained to the next.
    let mut fat = vec![0u8; (g.fat_sectors * SECTOR) as usize];
    fat12_set(&mut fat, 0, 0xF00 | u16::from(MEDIA_DESCRIPTOR));
    fat12_set(&mut fat, 1, FAT12_EOC);
    let mut dir: Vec<[u8; DIR_ENTRY]> = vec![short_entry(&label11, ATTR_VOLUME_ID, 0, 0)];
    let mut taken: Vec<[u8; 11]> = Vec::new();
    let mut next_cluster = 2u32;
    let cluster_bytes = g.cluster_bytes();
    for (name, data) in files {
        let chunks: Vec<&[u8]> = data.chunks(cluster_bytes).collect();
        let first = if chunks.is_empty() { 0 } else { next_cluster };
        for (i, chunk) in chunks.iter().enumerate() {
            let cluster = next_cluster + i as u32;
            let next = if i + 1 == chunks.len() { FAT12_EOC } else { (cluster + 1) as u16 };
            fat12_set(&mut fat, cluster, next);
            let off = g.cluster_offset(cluster);
            img[off..off + chunk.len()].copy_from_slice(chunk);
        }
        next_cluster += chunks.len() as u32;
        let short = match exact_short_name(name) {
            Some(short) => short,
            None => {
                let short = short_alias(name, &taken);
                dir.extend(lfn_entries(name, lfn_checksum(&short)));
                short
            }
        };
        taken.push(short);
        dir.push(short_entry(&short, ATTR_ARCHIVE, first as u16, data.len() as u32));
    }
    assert!(dir.len() <= ROOT_ENTRIES as usize, "too many seed files for the root directory");

    // Boot sector with the BIOS parameter block (DOS 4.0 extended form).
    let serial = fnv1a(&files.iter().flat_map(|(n, d)| [n.as_bytes(), *d]).collect::<Vec<_>>());
    let b = &mut img[..SECTOR as usize];
    b[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]); // jmp 0x3E; nop
    b[3..11].copy_from_slice(b"MSWIN4.1"); // OEM name, the most compatible value
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = g.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    b[16] = NUM_FATS as u8;
    b[17..19].copy_from_slice(&(ROOT_ENTRIES as u16).to_le_bytes());
    if let Ok(total16) = u16::try_from(g.total_sectors) {
        b[19..21].copy_from_slice(&total16.to_le_bytes());
    } else {
        b[32..36].copy_from_slice(&g.total_sectors.to_le_bytes());
    }
    b[21] = MEDIA_DESCRIPTOR;
    b[22..24].copy_from_slice(&(g.fat_sectors as u16).to_le_bytes());
    b[24..26].copy_from_slice(&32u16.to_le_bytes()); // sectors per track (CHS, unused)
    b[26..28].copy_from_slice(&64u16.to_le_bytes()); // heads (CHS, unused)
    b[36] = 0x80; // drive number: hard disk
    b[38] = 0x29; // extended boot signature: serial, label and type follow
    b[39..43].copy_from_slice(&serial.to_le_bytes());
    b[43..54].copy_from_slice(&label11);
    b[54..62].copy_from_slice(b"FAT12   ");
    b[62..65].copy_from_slice(&[0xF4, 0xEB, 0xFD]); // not bootable: hlt; jmp back to hlt
    b[510] = 0x55;
    b[511] = 0xAA;

    for copy in 0..NUM_FATS as usize {
        let off = g.fat_start() + copy * fat.len();
        img[off..off + fat.len()].copy_from_slice(&fat);
    }
    let root = g.root_start();
    for (i, entry) in dir.iter().enumerate() {
        img[root + i * DIR_ENTRY..root + (i + 1) * DIR_ENTRY].copy_from_slice(entry);
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    fn files(user_data: &str) -> SeedFiles {
        SeedFiles {
            meta_data: meta_data("i-1", "vm-1"),
            user_data: user_data.to_string(),
            network_config: Some(network_config_dhcp()),
        }
    }

    /// The root directory's entries up to the end marker.
    fn root_entries(img: &[u8]) -> Vec<[u8; 32]> {
        let fat_sectors = u16_at(img, 22) as usize;
        let root = 512 + 2 * fat_sectors * 512;
        img[root..root + 512 * 32]
            .chunks(32)
            .take_while(|e| e[0] != 0)
            .map(|e| <[u8; 32]>::try_from(e).unwrap())
            .collect()
    }

    #[test]
    fn lfn_checksum_matches_known_values() {
        // Values read from the directory entries mtools (mcopy) wrote for these files.
        assert_eq!(lfn_checksum(b"META-D~1   "), 0xD4);
        assert_eq!(lfn_checksum(b"USER-D~1   "), 0xB0);
        // Rotate-right-and-add, not a plain sum.
        assert_ne!(lfn_checksum(b"USER-D~1   "), b"USER-D~1   ".iter().fold(0u8, |s, &b| s.wrapping_add(b)));
    }

    #[test]
    fn short_aliases_follow_the_windows_scheme() {
        assert_eq!(&short_alias("meta-data", &[]), b"META-D~1   ");
        assert_eq!(&short_alias("user-data", &[]), b"USER-D~1   ");
        assert_eq!(&short_alias("network-config", &[]), b"NETWOR~1   ");
        assert_eq!(&short_alias("meta-data", &[*b"META-D~1   "]), b"META-D~2   ");
        assert_eq!(&short_alias("some file.tar.gz", &[]), b"SOMEFI~1GZ ");
        assert_eq!(&short_alias("a+b", &[]), b"A_B~1      ");
        assert_eq!(exact_short_name("README.TXT"), Some(*b"README  TXT"));
        assert_eq!(exact_short_name("readme.txt"), None);
        assert_eq!(exact_short_name("meta-data"), None);
    }

    #[test]
    fn lfn_entries_hold_the_name_in_ucs2_with_terminator_and_padding() {
        let e = lfn_entries("meta-data", 0xD4);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0][0], 0x41);
        assert_eq!(e[0][11], 0x0F);
        assert_eq!(e[0][13], 0xD4);
        assert_eq!(&e[0][1..11], b"m\0e\0t\0a\0-\0");
        assert_eq!(&e[0][14..26], b"d\0a\0t\0a\0\0\0\xff\xff");
        assert_eq!(&e[0][28..32], b"\xff\xff\xff\xff");
        // 14 characters: two entries, last first.
        let e = lfn_entries("network-config", 1);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0][0], 0x42);
        assert_eq!(&e[0][1..5], b"g\0\0\0");
        assert_eq!(e[1][0], 0x01);
        assert_eq!(&e[1][28..32], b"f\0i\0");
    }

    #[test]
    fn boot_sector_fields() {
        let img = build_vfat(&files("#cloud-config\n")).unwrap();
        assert_eq!(img.len(), 1024 * 1024);
        assert_eq!(&img[0..3], &[0xEB, 0x3C, 0x90]);
        assert_eq!(u16_at(&img, 11), 512, "bytes per sector");
        assert_eq!(img[13], 1, "sectors per cluster");
        assert_eq!(u16_at(&img, 14), 1, "reserved sectors");
        assert_eq!(img[16], 2, "number of FATs");
        assert_eq!(u16_at(&img, 17), 512, "root entries");
        assert_eq!(u16_at(&img, 19), 2048, "total sectors");
        assert_eq!(img[21], 0xF8, "media descriptor");
        let fat_sectors = u16_at(&img, 22);
        assert_eq!(fat_sectors, 6);
        assert_eq!(u32_at(&img, 32), 0, "32-bit total unused");
        assert_eq!(img[38], 0x29);
        assert_eq!(&img[43..54], b"CIDATA     ");
        assert_eq!(&img[54..62], b"FAT12   ");
        assert_eq!(&img[510..512], &[0x55, 0xAA]);
        // FAT12: fewer than 4085 clusters, and the FAT covers them all.
        let data_sectors = 2048 - 1 - 2 * u32::from(fat_sectors) - 32;
        assert!(data_sectors < 4085);
        assert!(u32::from(fat_sectors) * 512 * 2 / 3 >= data_sectors + 2);
        // Both FAT copies are identical and start with the media descriptor.
        let fat1 = &img[512..512 + 6 * 512];
        let fat2 = &img[512 + 6 * 512..512 + 12 * 512];
        assert_eq!(fat1, fat2);
        assert_eq!(&fat1[..3], &[0xF8, 0xFF, 0xFF]);
        // The volume label entry comes first in the root directory.
        let root = root_entries(&img);
        assert_eq!(&root[0][..11], b"CIDATA     ");
        assert_eq!(root[0][11], ATTR_VOLUME_ID);
    }

    #[test]
    fn root_directory_has_long_names_and_aliases() {
        let img = build_vfat(&files("#cloud-config\n")).unwrap();
        let root = root_entries(&img);
        // label, then (LFN, short) for meta-data and user-data, (LFN, LFN, short) for
        // network-config.
        assert_eq!(root.len(), 1 + 2 + 2 + 3);
        let names: Vec<&[u8]> = root.iter().filter(|e| e[11] == ATTR_ARCHIVE).map(|e| &e[..11]).collect();
        assert_eq!(names, [&b"META-D~1   "[..], b"USER-D~1   ", b"NETWOR~1   "]);
        for (i, e) in root.iter().enumerate() {
            if e[11] == ATTR_LONG_NAME {
                let short = root[i..].iter().find(|s| s[11] == ATTR_ARCHIVE).unwrap();
                assert_eq!(e[13], lfn_checksum(&short[..11].try_into().unwrap()));
            }
        }
        assert_eq!(root[1][13], 0xD4);
    }

    #[test]
    fn multi_cluster_file_is_chained() {
        // 3 clusters + 1 byte of user-data: 4 clusters.
        let big: String = (0..512 * 3 + 1).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let f = SeedFiles { meta_data: "instance-id: x\n".into(), user_data: big.clone(), network_config: None };
        let img = build_vfat(&f).unwrap();
        let fat = &img[512..512 + 6 * 512];
        // meta-data: cluster 2 alone; user-data: 3 -> 4 -> 5 -> 6 -> end.
        assert_eq!(fat12_get(fat, 2), 0xFFF);
        assert_eq!(fat12_get(fat, 3), 4);
        assert_eq!(fat12_get(fat, 4), 5);
        assert_eq!(fat12_get(fat, 5), 6);
        assert_eq!(fat12_get(fat, 6), 0xFFF);
        assert_eq!(fat12_get(fat, 7), 0, "free after the last file");
        let root = root_entries(&img);
        let ud = root.iter().find(|e| &e[..11] == b"USER-D~1   ").unwrap();
        assert_eq!(u16_at(ud, 26), 3, "first cluster");
        assert_eq!(u32_at(ud, 28), big.len() as u32, "size");
        // Data region starts after boot sector, 2 FATs and the root directory.
        let data = (1 + 12 + 32) * 512;
        assert_eq!(&img[data..data + 15], b"instance-id: x\n");
        let ud_off = data + 512;
        assert_eq!(&img[ud_off..ud_off + big.len()], big.as_bytes());
        assert_eq!(img[ud_off + big.len()], 0);
    }

    #[test]
    fn fat12_entries_pack_two_per_three_bytes() {
        let mut fat = vec![0u8; 8];
        fat12_set(&mut fat, 2, 0xABC);
        fat12_set(&mut fat, 3, 0x123);
        assert_eq!(&fat[3..6], &[0xBC, 0x3A, 0x12]);
        assert_eq!(fat12_get(&fat, 2), 0xABC);
        assert_eq!(fat12_get(&fat, 3), 0x123);
    }

    #[test]
    fn empty_file_has_no_cluster() {
        let f = SeedFiles { meta_data: String::new(), user_data: "x".into(), network_config: None };
        let img = build_vfat(&f).unwrap();
        let root = root_entries(&img);
        let md = root.iter().find(|e| &e[..11] == b"META-D~1   ").unwrap();
        assert_eq!((u16_at(md, 26), u32_at(md, 28)), (0, 0));
        let ud = root.iter().find(|e| &e[..11] == b"USER-D~1   ").unwrap();
        assert_eq!(u16_at(ud, 26), 2);
    }

    #[test]
    fn geometry_grows_with_content_and_stays_fat12() {
        let g = Geometry::for_sizes(&[100, 100]).unwrap();
        assert_eq!((g.total_sectors, g.sectors_per_cluster), (2048, 1));
        let g = Geometry::for_sizes(&[512 * 1024]).unwrap();
        assert_eq!(g.sectors_per_cluster, 1);
        assert!(g.clusters >= 1024);
        let g = Geometry::for_sizes(&[3 * 1024 * 1024, 10]).unwrap();
        assert_eq!(g.sectors_per_cluster, 2);
        for sizes in [&[0usize][..], &[2_000_000, 2_000_000], &[100 * 1024 * 1024], &[127 * 1024 * 1024]] {
            let g = Geometry::for_sizes(sizes).unwrap();
            let needed: u64 = sizes.iter().map(|&s| (s as u64).div_ceil(g.cluster_bytes() as u64)).sum();
            assert!(g.clusters <= MAX_CLUSTERS, "{g:?}");
            assert!(u64::from(g.clusters) >= needed, "{g:?}");
            assert!(Geometry::fat_sectors_for(g.clusters) <= g.fat_sectors);
            let used = RESERVED_SECTORS + 2 * g.fat_sectors + ROOT_DIR_SECTORS + g.clusters * g.sectors_per_cluster;
            assert!(used <= g.total_sectors && g.total_sectors - used < g.sectors_per_cluster, "{g:?}");
        }
        assert!(matches!(Geometry::for_sizes(&[130 * 1024 * 1024]), Err(SeedError::TooLarge { .. })));
    }

    #[test]
    fn same_files_same_bytes() {
        let a = build_vfat(&files("#cloud-config\n")).unwrap();
        assert_eq!(a, build_vfat(&files("#cloud-config\n")).unwrap());
        let b = build_vfat(&files("#cloud-config\n#x\n")).unwrap();
        assert_ne!(u32_at(&a, 39), u32_at(&b, 39), "serial depends on the content");
    }

    #[test]
    fn yaml_quote_escapes() {
        assert_eq!(yaml_quote("plain"), "\"plain\"");
        assert_eq!(yaml_quote("a\"b\\c\nd\te\r"), r#""a\"b\\c\nd\te\r""#);
        assert_eq!(yaml_quote("\u{1}\u{7f}\u{85}\u{2028}é"), r#""\u0001\u007F\u0085\u2028\u00E9""#);
        assert_eq!(yaml_quote("😀"), r#""\U0001F600""#);
        // Without astral characters it is JSON, and decodes back to the input.
        let nasty = "ev\"il\n  - name: root\r\n#: ' \\ \u{0}\u{ff}\u{fffe}";
        let q = yaml_quote(nasty);
        assert!(q.is_ascii() && !q.contains('\n'));
        assert_eq!(serde_json::from_str::<String>(&q).unwrap(), nasty);
    }

    #[test]
    fn meta_data_is_quoted_yaml() {
        assert_eq!(meta_data("i-1", "vm-1"), "instance-id: \"i-1\"\nlocal-hostname: \"vm-1\"\n");
        let m = meta_data("i\n2", "h\"x");
        assert_eq!(m.lines().count(), 2);
        assert!(m.contains(r#"instance-id: "i\n2""#) && m.contains(r#"local-hostname: "h\"x""#));
    }

    fn input<'a>(keys: &'a [String], password_hash: Option<&'a str>, custom: Option<&'a str>) -> UserDataInput<'a> {
        UserDataInput {
            admin_username: "azureuser",
            password_hash,
            ssh_keys: keys,
            custom_data: custom,
            hostname: "vm-1",
        }
    }

    #[test]
    fn user_data_plain_cloud_config() {
        let keys = vec!["ssh-ed25519 AAAAC3Nza k@h".to_string(), "ssh-rsa AAAAB3 \"quoted\"\nx".to_string()];
        let ud = user_data(&input(&keys, Some("$6$salt$hash"), None));
        let expected = "#cloud-config\n\
            hostname: \"vm-1\"\n\
            ssh_pwauth: true\n\
            users:\n  - name: \"azureuser\"\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    shell: /bin/bash\n\
            \x20   lock_passwd: false\n    passwd: \"$6$salt$hash\"\n    ssh_authorized_keys:\n\
            \x20     - \"ssh-ed25519 AAAAC3Nza k@h\"\n      - \"ssh-rsa AAAAB3 \\\"quoted\\\"\\nx\"\n";
        assert_eq!(ud, expected);
        // No password: locked, no passwd, no password SSH login; no keys: no key list.
        let ud = user_data(&input(&[], None, Some("")));
        assert!(ud.starts_with("#cloud-config\n"));
        assert!(ud.contains("    lock_passwd: true\n"));
        assert!(!ud.contains("    passwd: "));
        assert!(!ud.contains("ssh_pwauth") && !ud.contains("ssh_authorized_keys"));
    }

    fn mime_parts(ud: &str) -> Vec<(String, String)> {
        let (head, rest) = ud.split_once("\n\n").unwrap();
        let boundary = head.split("boundary=\"").nth(1).unwrap().split('"').next().unwrap();
        let body = rest.strip_suffix(&format!("--{boundary}--\n")).expect("closing boundary");
        body.split(&format!("--{boundary}\n"))
            .skip(1)
            .map(|p| {
                let (h, b) = p.split_once("\n\n").unwrap();
                (h.to_string(), b.to_string())
            })
            .collect()
    }

    fn b64(body: &str) -> String {
        let joined: String = body.lines().collect();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(joined).unwrap()).unwrap()
    }

    #[test]
    fn user_data_with_custom_data_is_mime_multipart() {
        let keys = vec!["ssh-ed25519 AAAA k".to_string()];
        let custom = "#!/bin/sh\necho \"hello\" 'x'\nprintf '%s\\n' \"a\nb\"\n";
        let ud = user_data(&input(&keys, None, Some(custom)));
        assert!(
            ud.starts_with("Content-Type: multipart/mixed; boundary=\"==herd-seed-boundary==\"\nMIME-Version: 1.0\n\n")
        );
        assert!(ud.lines().all(|l| l.len() <= 998) && ud.is_ascii());
        let parts = mime_parts(&ud);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].0.starts_with("Content-Type: text/x-shellscript;"));
        assert!(parts[0].0.contains("Content-Transfer-Encoding: base64"));
        assert!(parts[0].1.lines().all(|l| l.len() <= 76));
        assert_eq!(b64(&parts[0].1), custom, "custom data round trip, byte for byte");
        assert!(parts[1].0.starts_with("Content-Type: text/cloud-config;"));
        assert!(parts[1].0.contains(&format!("Merge-Type: {MERGE_TYPE}")));
        assert_eq!(parts[1].1, user_data(&input(&keys, None, None)));

        for (custom, ctype) in [
            ("#cloud-config\nruncmd: [\"a\"]\n", "text/cloud-config;"),
            ("#cloud-config-jsonp\n[]", "text/cloud-config-jsonp;"),
            ("#include\nhttp://127.0.0.1/x\n", "text/plain;"),
        ] {
            let parts = mime_parts(&user_data(&input(&keys, None, Some(custom))));
            assert!(parts[0].0.starts_with(&format!("Content-Type: {ctype}")), "{custom}");
            assert_eq!(b64(&parts[0].1), custom);
        }
    }

    #[test]
    fn nested_mime_custom_data_is_embedded_with_a_fresh_boundary() {
        let custom = "Content-Type: multipart/mixed; boundary=\"==herd-seed-boundary==\"\n\n\
                      --==herd-seed-boundary==\nContent-Type: text/x-shellscript\n\n#!/bin/sh\n\
                      --==herd-seed-boundary==--\n";
        let ud = user_data(&input(&[], None, Some(custom)));
        assert!(ud.starts_with("Content-Type: multipart/mixed; boundary=\"==herd-seed-boundary-1==\""));
        assert!(ud.contains(&format!("--==herd-seed-boundary-1==\n{custom}--==herd-seed-boundary-1==\n")));
    }

    #[test]
    fn network_config_matches_e_star_or_mac_with_dhcp() {
        assert_eq!(
            network_config_dhcp(),
            "version: 2\nethernets:\n  eth0:\n    match:\n      name: \"e*\"\n    dhcp4: true\n"
        );
        assert_eq!(
            network_config_dhcp_mac("52:54:00:12:34:5F"),
            "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"52:54:00:12:34:5f\"\n    dhcp4: true\n"
        );
    }

    #[test]
    fn a_bridged_nic_gets_its_reserved_address_route_dns_and_mtu() {
        let y = network_config_static(
            "52:54:00:12:34:5F",
            "10.0.0.4".parse().unwrap(),
            24,
            "10.0.0.1".parse().unwrap(),
            1450,
        );
        assert_eq!(
            y,
            "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"52:54:00:12:34:5f\"\n    \
             addresses: [\"10.0.0.4/24\"]\n    routes:\n      - to: \"0.0.0.0/0\"\n        via: \"10.0.0.1\"\n    \
             nameservers:\n      addresses: [\"10.0.0.1\"]\n    mtu: 1450\n"
        );
    }

    #[test]
    fn write_seed_is_private_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        std::fs::write(&path, b"old").unwrap();
        write_seed(&path, &files("#cloud-config\n")).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), build_vfat(&files("#cloud-config\n")).unwrap());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["seed.img"], "no temporary file left behind");
        let err = write_seed(&dir.path().join("missing").join("seed.img"), &files("")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
