//! Stable names for what herd makes on the host: interface names that fit Linux's 15
//! characters, MACs, and file names under the runtime directory.
//!
//! Why one place: the same instance must get the same TAP, MAC and reservation file after a
//! server restart, from either driver, so each name is a pure function of stable inputs (the
//! server's tag, the instance key, the subnet).

pub use herd_driver::stable_hash;

/// `prefix` and 48 bits of the hash of `s` in hex: 14 characters for a two-letter prefix.
pub fn short_name(prefix: &str, s: &str) -> String {
    format!("{prefix}{:012x}", stable_hash(s) & 0xffff_ffff_ffff)
}

/// A stable, locally administered unicast MAC for the instance `key` (its path,
/// `group/set/id`): `52:54:` (QEMU's customary prefix; 0x52 has the locally-administered bit
/// set and the multicast bit clear) and 32 bits of a hash of the key.
pub fn mac_for(key: &str) -> String {
    let h = stable_hash(key).to_be_bytes();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3])
}

/// The TAP device of a VM's NIC (unique per server tag and instance key).
pub fn tap_name(tag: &str, key: &str) -> String {
    short_name("ht", &format!("{tag}|{key}"))
}

/// The file that holds one instance's reservation (the same name in the DHCP and DNS
/// directories).
pub(crate) fn owner_file(owner: &str) -> String {
    format!("{:016x}", stable_hash(owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_fit_linux_limits() {
        let tap = tap_name("herd:/var/lib/herd", "rg/web/12");
        assert_eq!(tap.len(), 14);
        assert_eq!(tap, tap_name("herd:/var/lib/herd", "rg/web/12"));
        assert_ne!(tap, tap_name("herd:/var/lib/herd", "rg/web/13"));
        assert_ne!(tap, tap_name("herd:/srv/other", "rg/web/12"));
        let mac = mac_for("rg/web/12");
        assert_eq!(mac.len(), 17);
        assert!(mac.starts_with("52:54:"));
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!((first & 1, first & 2), (0, 2), "unicast and locally administered");
        assert_ne!(mac, mac_for("rg/web/13"));
        // The hash is FNV-1a 64: its published value for "a".
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
