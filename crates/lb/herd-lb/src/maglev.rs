//! Maglev consistent hashing and flow hashing.
//!
//! Why it exists: when a backend joins or leaves a pool, only the flows that must move should
//! move, so sticky sessions (SourceIp) and long-running clients are not reshuffled. Maglev
//! (Eisenbud et al., NSDI 2016) gives near-perfect balance (every backend owns M/N ± 1 table
//! entries) with about 1/N disruption when one of N backends leaves, and lookup is one array
//! index. The table is a pure function of the *set* of backend ids (fill order is by sorted id),
//! so removing a backend and adding it back restores the original mapping exactly.
//!
//! All hashes here are fixed (no per-process seed) so the mapping is stable across restarts of
//! herd: a SourceIp client keeps its backend when the data plane restarts.

use std::net::{IpAddr, SocketAddr};

use crate::config::Distribution;

/// Default table size: a prime well above 100 × the largest expected pool.
pub const TABLE_SIZE: usize = 65537;

/// IANA protocol number of TCP, the only protocol the proxy carries.
pub const PROTO_TCP: u8 = 6;

/// 64-bit FNV-1a over `bytes` starting from `seed`, finished with MurmurHash3's fmix64 so every
/// input bit affects every output bit.
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Hash of a TCP flow under a distribution mode: `Default` hashes the 5-tuple
/// (src ip, src port, dst ip, dst port, protocol), `SourceIp` the source ip, `SourceIpProtocol`
/// (source ip, protocol).
pub fn flow_hash(distribution: Distribution, src: SocketAddr, dst: SocketAddr) -> u64 {
    let mut key = [0u8; 37];
    key[..16].copy_from_slice(&ip_bytes(src.ip()));
    let len = match distribution {
        Distribution::SourceIp => 16,
        Distribution::SourceIpProtocol => {
            key[16] = PROTO_TCP;
            17
        }
        Distribution::Default => {
            key[16..18].copy_from_slice(&src.port().to_be_bytes());
            key[18..34].copy_from_slice(&ip_bytes(dst.ip()));
            key[34..36].copy_from_slice(&dst.port().to_be_bytes());
            key[36] = PROTO_TCP;
            37
        }
    };
    // Distinct seeds per mode so e.g. SourceIp and Default never collide by construction.
    hash_bytes(0x5eed_0000 + distribution as u64, &key[..len])
}

/// A Maglev lookup table: `entries[hash % size]` is an index into the backend list it was built
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    entries: Box<[u32]>,
    backends: usize,
}

impl Maglev {
    /// Builds a table of [`TABLE_SIZE`] entries for `ids`. Entries refer to positions in `ids`;
    /// the mapping from a hash to an *id* depends only on the set of ids, not their order.
    /// Ids should be unique.
    pub fn new<S: AsRef<str>>(ids: &[S]) -> Self {
        Self::with_size(ids, TABLE_SIZE)
    }

    /// As [`Maglev::new`] with a custom size, which must be prime and larger than `ids.len()`.
    pub fn with_size<S: AsRef<str>>(ids: &[S], size: usize) -> Self {
        assert!(size >= 2 && ids.len() < size, "Maglev table size must exceed the backend count");
        if ids.is_empty() {
            return Maglev { entries: Box::new([]), backends: 0 };
        }
        // Fill in sorted-id order so the table is a function of the set.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by(|&a, &b| ids[a].as_ref().cmp(ids[b].as_ref()));
        let m = size as u64;
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let id = ids[i].as_ref().as_bytes();
                let offset = hash_bytes(0x0ff5e7, id) % m;
                let skip = hash_bytes(0x5c1b, id) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; order.len()];
        let mut entries = vec![u32::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for (k, &backend) in order.iter().enumerate() {
                let (offset, skip) = perms[k];
                let mut c = (offset + next[k] * skip) % m;
                while entries[c as usize] != u32::MAX {
                    next[k] += 1;
                    c = (offset + next[k] * skip) % m;
                }
                entries[c as usize] = backend as u32;
                next[k] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Maglev { entries: entries.into_boxed_slice(), backends: ids.len() }
    }

    /// Number of backends the table was built from.
    pub fn backends(&self) -> usize {
        self.backends
    }

    /// Table size (0 for an empty table).
    pub fn size(&self) -> usize {
        self.entries.len()
    }

    /// The backend index for a flow hash, `None` when the table is empty.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        Some(self.entries[(hash % self.entries.len() as u64) as usize] as usize)
    }

    /// Up to `max` distinct backend indices in table order starting at the flow's slot: the
    /// first is [`Maglev::lookup`], the rest are the fallbacks tried when connecting fails.
    pub fn candidates(&self, hash: u64, max: usize) -> Vec<usize> {
        let want = max.min(self.backends);
        let mut out = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let size = self.entries.len();
        let start = (hash % size as u64) as usize;
        for step in 0..size {
            let b = self.entries[(start + step) % size] as usize;
            if !out.contains(&b) {
                out.push(b);
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    /// How many entries each backend owns (index = backend position).
    pub fn entry_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.backends];
        for &e in self.entries.iter() {
            counts[e as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::net::Ipv4Addr;

    fn random_flow(rng: &mut StdRng) -> u64 {
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(rng.random::<u32>())), rng.random());
        let dst = SocketAddr::from(([127, 64, 0, 1], 80));
        flow_hash(Distribution::Default, src, dst)
    }

    fn ids(rng: &mut StdRng, n: usize) -> Vec<String> {
        let mut set = std::collections::BTreeSet::new();
        while set.len() < n {
            set.insert(format!("vm-{}", rng.random_range(0..1_000_000u32)));
        }
        set.into_iter().collect()
    }

    /// Maps flow hashes to backend ids (not indices) so tables over different sets compare.
    fn map<'a>(table: &Maglev, ids: &'a [String], flows: &[u64]) -> Vec<&'a str> {
        flows.iter().map(|&h| ids[table.lookup(h).unwrap()].as_str()).collect()
    }

    #[test]
    fn empty_table_has_no_backend() {
        let t = Maglev::new::<&str>(&[]);
        assert_eq!(t.lookup(42), None);
        assert!(t.candidates(42, 3).is_empty());
    }

    #[test]
    fn entries_are_balanced_to_one() {
        let mut rng = StdRng::seed_from_u64(1);
        for n in [1, 2, 3, 7, 50, 200] {
            let ids = ids(&mut rng, n);
            let counts = Maglev::new(&ids).entry_counts();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "n={n}: min {min} max {max}");
        }
    }

    #[test]
    fn table_depends_on_the_set_not_the_order() {
        let a = ["b", "a", "c"];
        let b = ["c", "b", "a"];
        let (ta, tb) = (Maglev::new(&a), Maglev::new(&b));
        for h in 0..10_000u64 {
            let h = fmix64(h);
            assert_eq!(a[ta.lookup(h).unwrap()], b[tb.lookup(h).unwrap()]);
        }
    }

    #[test]
    fn candidates_are_distinct_and_start_with_lookup() {
        let ids: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
        let t = Maglev::new(&ids);
        for h in 0..1000u64 {
            let h = fmix64(h);
            let c = t.candidates(h, 3);
            assert_eq!(c.len(), 3);
            assert_eq!(c[0], t.lookup(h).unwrap());
            assert!(c[0] != c[1] && c[1] != c[2] && c[0] != c[2]);
        }
        assert_eq!(Maglev::new(&ids[..2]).candidates(7, 3).len(), 2);
    }

    /// Property (seeded random loop): removing one of N backends moves few flows besides the
    /// removed backend's own, and adding it back restores the original mapping.
    #[test]
    fn removal_disruption_is_bounded_and_reversible() {
        let mut rng = StdRng::seed_from_u64(0x4d41_474c);
        let flows: Vec<u64> = (0..20_000).map(|_| random_flow(&mut rng)).collect();
        let mut worst_other = 0.0f64;
        for case in 0..60 {
            let n = 2 + case % 49; // 2..=50
            let all = ids(&mut rng, n);
            let full = Maglev::new(&all);
            let before = map(&full, &all, &flows);
            let victim = rng.random_range(0..n);
            let rest: Vec<String> =
                all.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, s)| s.clone()).collect();
            let after = map(&Maglev::new(&rest), &rest, &flows);

            let on_victim = before.iter().filter(|b| **b == all[victim]).count();
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            let moved_other = moved - on_victim;
            let total_share = moved as f64 / flows.len() as f64;
            let other_share = moved_other as f64 / (flows.len() - on_victim) as f64;
            worst_other = worst_other.max(other_share);
            let nf = n as f64;
            assert!(total_share <= 2.0 / nf + 0.02, "n={n}: moved {total_share:.4} > 2/N");
            assert!(other_share <= 1.0 / nf + 0.02, "n={n}: survivors' flows moved {other_share:.4}");

            // Add it back (in a different position): identical mapping.
            let mut again = rest.clone();
            again.insert(rng.random_range(0..=rest.len()), all[victim].clone());
            assert_eq!(map(&Maglev::new(&again), &again, &flows), before, "n={n}: re-adding differs");
        }
        eprintln!("worst share of survivors' flows moved: {worst_other:.4}");
    }

    #[test]
    fn random_flows_are_balanced() {
        let mut rng = StdRng::seed_from_u64(7);
        let flows: Vec<u64> = (0..100_000).map(|_| random_flow(&mut rng)).collect();
        for n in [2, 3, 5, 10, 25, 50] {
            let all = ids(&mut rng, n);
            let t = Maglev::new(&all);
            let mut counts = vec![0usize; n];
            for &h in &flows {
                counts[t.lookup(h).unwrap()] += 1;
            }
            let fair = flows.len() as f64 / n as f64;
            for (i, c) in counts.iter().enumerate() {
                let ratio = *c as f64 / fair;
                assert!((0.8..=1.2).contains(&ratio), "n={n} backend {i}: {ratio:.3} of fair share");
            }
        }
    }

    #[test]
    fn flow_hash_modes_use_the_right_fields() {
        let dst = SocketAddr::from(([127, 64, 0, 1], 80));
        let a = SocketAddr::from(([10, 0, 0, 1], 1000));
        let a2 = SocketAddr::from(([10, 0, 0, 1], 2000));
        for mode in [Distribution::SourceIp, Distribution::SourceIpProtocol] {
            assert_eq!(flow_hash(mode, a, dst), flow_hash(mode, a2, dst));
        }
        assert_ne!(flow_hash(Distribution::Default, a, dst), flow_hash(Distribution::Default, a2, dst));
        assert_ne!(flow_hash(Distribution::SourceIp, a, dst), flow_hash(Distribution::SourceIpProtocol, a, dst));
    }
}
