//! The arbiter's working state: every declared host with what is reserved on it, and each
//! host's Spot instances in eviction order.
//!
//! Why this shape: a decision touches at most a few hosts per request, so holders are indexed
//! by host once (O(n log n) for the eviction order) and every request then costs
//! O(hosts × log(instances per host)): the fewest evictions on a host is a binary search over
//! the prefix sums of its youngest-first Spot list, and the instances chosen on a host are
//! always the next ones of that list (a cursor), never a rescan of all holders.
//!
//! Spreading and fault domains keep per-set books (instances per host, and per zone and fault
//! domain index) filled once from the holders and updated as requests are placed, and each
//! zone's fault domains are grouped once per call: a request then costs a look-up per host of
//! its pool, not a scan of the set's instances.

use crate::model::{DomainShortfall, Holder, Placement, Request, Size, Tier};
use herd_model::spot::HostSpec;
use herd_model::{GroupName, InstanceKey, ScaleSetName};
use std::collections::{BTreeMap, HashMap};
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::rc::Rc;

/// vCPUs and memory as signed numbers, so "free" may go below zero (a host over capacity).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Amount {
    pub v: i64,
    pub m: i64,
}

impl Amount {
    pub fn of(s: Size) -> Self {
        Self { v: i64::from(s.vcpus), m: i64::try_from(s.memory_mib).unwrap_or(i64::MAX) }
    }

    pub fn covers(self, s: Size) -> bool {
        let need = Self::of(s);
        self.v >= need.v && self.m >= need.m
    }

    /// Clamped at zero on each resource.
    pub fn size(self) -> Size {
        Size { vcpus: u32::try_from(self.v.max(0)).unwrap_or(u32::MAX), memory_mib: self.m.max(0) as u64 }
    }

    pub fn clamp0(self) -> Self {
        Self { v: self.v.max(0), m: self.m.max(0) }
    }

    /// The order "more free first": vCPU, then memory.
    pub fn key(self) -> (i64, i64) {
        (self.v, self.m)
    }
}

impl Add for Amount {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self { v: self.v + o.v, m: self.m + o.m }
    }
}

impl Sub for Amount {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self { v: self.v - o.v, m: self.m - o.m }
    }
}

impl AddAssign for Amount {
    fn add_assign(&mut self, o: Self) {
        *self = *self + o;
    }
}

impl SubAssign for Amount {
    fn sub_assign(&mut self, o: Self) {
        *self = *self - o;
    }
}

/// One host's books.
#[derive(Debug)]
pub(crate) struct Host<'a> {
    pub spec: &'a HostSpec,
    pub cap: Amount,
    /// Regular holders, plus Regular requests placed or waiting in this call.
    pub committed: Amount,
    /// Spot holders not leaving, plus Spot requests placed in this call.
    pub spot: Amount,
    /// Holders with a Preempt posted (before or in this call): still here, going away.
    pub leaving: Amount,
    /// As reported by `usage` (holders only, fixed after build).
    pub alloc_regular: Amount,
    pub alloc_spot: Amount,
    pub alloc_preempting: Amount,
    pub regular_n: u32,
    pub spot_n: u32,
    pub preempting_n: u32,
    /// Spot holders on this host that are not leaving (holder indices), filled by `seal`.
    pub spot_members: Vec<usize>,
    /// `spot_members` youngest first, after `seal`.
    pub evictable: Vec<usize>,
    /// `prefix[i]` = total size of `evictable[..i]`.
    pub prefix: Vec<Amount>,
    /// `evictable[..cursor]` are chosen for eviction in this call.
    pub cursor: usize,
}

impl Host<'_> {
    /// Room a new instance can take now.
    pub fn free_now(&self) -> Amount {
        self.cap - self.committed - self.spot - self.leaving
    }

    /// Room once the announced Preempts complete.
    pub fn room_after_leaving(&self) -> Amount {
        self.cap - self.committed - self.spot
    }

    /// Room for Regular if every Spot instance not yet chosen were evicted too.
    pub fn room_regular(&self) -> Amount {
        self.room_after_leaving() + self.remaining_evictable()
    }

    fn remaining_evictable(&self) -> Amount {
        match self.prefix.last() {
            Some(last) => *last - self.prefix[self.cursor],
            None => Amount::default(),
        }
    }

    /// The fewest further evictions (youngest first) that make room for `size`, if any do.
    pub fn evictions_needed(&self, size: Size) -> Option<usize> {
        let base = self.room_after_leaving();
        let need = Amount::of(size) - base;
        if self.prefix.is_empty() {
            return (need.v <= 0 && need.m <= 0).then_some(0);
        }
        let start = self.prefix[self.cursor];
        let rest = &self.prefix[self.cursor..];
        let iv = rest.partition_point(|p| p.v - start.v < need.v);
        let im = rest.partition_point(|p| p.m - start.m < need.m);
        let k = iv.max(im);
        (k < rest.len()).then_some(k)
    }
}

/// All hosts, and where each holder is counted.
#[derive(Debug)]
pub(crate) struct Cluster<'a> {
    /// Sorted by name: index order is name order, which breaks every tie.
    pub hosts: Vec<Host<'a>>,
    by_name: BTreeMap<&'a str, usize>,
    /// Per holder: the host it is counted on (None: unlimited, or an undeclared host).
    pub holder_host: Vec<Option<usize>>,
    /// Per holder: a Preempt is posted (before or in this call).
    pub leaving: Vec<bool>,
    pub adopted: Vec<Placement>,
    pub warnings: Vec<String>,
    eligible_cache: BTreeMap<Option<String>, Vec<usize>>,
    domain_cache: BTreeMap<Option<String>, Rc<Vec<Domain>>>,
    /// Per scale set (group, then name: looked up without copying the names): its index in
    /// `books`.
    sets: HashMap<GroupName, HashMap<ScaleSetName, usize>>,
    pub books: Vec<SetBooks>,
}

/// One fault domain of a zone: the hosts serving the zone that share a fault-domain label (or
/// one host without a label), in name order.
#[derive(Debug)]
pub(crate) struct Domain {
    pub name: String,
    pub hosts: Vec<usize>,
}

/// Where one scale set's instances are: per host, and per (zone, fault domain index).
#[derive(Debug, Default)]
pub(crate) struct SetBooks {
    pub per_host: HashMap<usize, u32>,
    /// Zone → fault domain index → instances.
    pub per_domain: HashMap<Option<String>, HashMap<u32, u32>>,
}

impl SetBooks {
    pub fn on_host(&self, hi: usize) -> u32 {
        self.per_host.get(&hi).copied().unwrap_or(0)
    }

    pub fn in_domain(&self, zone: &Option<String>, fd: u32) -> u32 {
        self.per_domain.get(zone).and_then(|z| z.get(&fd)).copied().unwrap_or(0)
    }
}

/// `floor(vcpus × overcommit)`; a non-finite or negative overcommit counts as 1.
pub(crate) fn vcpu_cap(h: &HostSpec) -> u32 {
    let o = if h.overcommit.is_finite() && h.overcommit >= 0.0 { h.overcommit } else { 1.0 };
    // The epsilon keeps 10 × 0.7 = 6.999… from flooring to 6.
    let v = (f64::from(h.vcpus) * o + 1e-9).floor();
    if v >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        v as u32
    }
}

impl<'a> Cluster<'a> {
    /// Counts every holder on its host and places holders that have none.
    pub fn build(specs: &'a [HostSpec], holders: &'a [Holder]) -> Self {
        let mut sorted: Vec<&HostSpec> = specs.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut warnings = Vec::new();
        let mut hosts: Vec<Host<'a>> = Vec::with_capacity(sorted.len());
        let mut by_name = BTreeMap::new();
        for spec in sorted {
            if by_name.contains_key(spec.name.as_str()) {
                warnings.push(format!("host '{}' is declared more than once; the first declaration counts", spec.name));
                continue;
            }
            by_name.insert(spec.name.as_str(), hosts.len());
            hosts.push(Host {
                spec,
                cap: Amount { v: i64::from(vcpu_cap(spec)), m: i64::try_from(spec.memory_mib).unwrap_or(i64::MAX) },
                committed: Amount::default(),
                spot: Amount::default(),
                leaving: Amount::default(),
                alloc_regular: Amount::default(),
                alloc_spot: Amount::default(),
                alloc_preempting: Amount::default(),
                regular_n: 0,
                spot_n: 0,
                preempting_n: 0,
                spot_members: Vec::new(),
                evictable: Vec::new(),
                prefix: Vec::new(),
                cursor: 0,
            });
        }
        let mut c = Cluster {
            hosts,
            by_name,
            holder_host: vec![None; holders.len()],
            leaving: holders.iter().map(|h| h.preempting).collect(),
            adopted: Vec::new(),
            warnings,
            eligible_cache: BTreeMap::new(),
            domain_cache: BTreeMap::new(),
            sets: HashMap::new(),
            books: Vec::new(),
        };
        let unlimited = c.hosts.is_empty();
        let mut legacy = Vec::new();
        let mut undeclared: BTreeMap<&str, u32> = BTreeMap::new();
        for (i, h) in holders.iter().enumerate() {
            match h.host.as_deref() {
                _ if unlimited => {}
                Some(name) => match c.by_name.get(name) {
                    Some(&hi) => c.account(hi, i, h),
                    None => *undeclared.entry(name).or_default() += 1,
                },
                None => legacy.push(i),
            }
        }
        for (name, n) in undeclared {
            c.warnings.push(format!(
                "{n} instance(s) are on host '{name}', which is not declared; their room is not counted anywhere"
            ));
        }
        // Regular before Spot, oldest first: those have held their room the longest.
        legacy.sort_by(|&a, &b| {
            let (x, y) = (&holders[a], &holders[b]);
            (x.tier, x.created_at, &x.key).cmp(&(y.tier, y.created_at, &y.key))
        });
        for i in legacy {
            c.adopt(i, &holders[i]);
        }
        c
    }

    fn account(&mut self, hi: usize, i: usize, h: &Holder) {
        let a = Amount::of(h.size);
        let host = &mut self.hosts[hi];
        match h.tier {
            Tier::Regular => {
                host.alloc_regular += a;
                host.regular_n += 1;
            }
            Tier::Spot => {
                host.alloc_spot += a;
                host.spot_n += 1;
            }
        }
        if h.preempting {
            host.leaving += a;
            host.alloc_preempting += a;
            host.preempting_n += 1;
        } else {
            match h.tier {
                Tier::Regular => host.committed += a,
                Tier::Spot => {
                    host.spot += a;
                    host.spot_members.push(i);
                }
            }
        }
        self.holder_host[i] = Some(hi);
        let set = self.set_of(&h.key);
        self.count(set, hi, &h.zone, h.fault_domain);
    }

    /// The books of `key`'s scale set (created empty on first use).
    pub fn set_of(&mut self, key: &InstanceKey) -> usize {
        if let Some(&id) = self.sets.get(&key.group).and_then(|g| g.get(&key.set)) {
            return id;
        }
        let id = self.books.len();
        self.sets.entry(key.group.clone()).or_default().insert(key.set.clone(), id);
        self.books.push(SetBooks::default());
        id
    }

    /// Books an instance of `set` on host `hi`, in fault domain `fd` of `zone` when it has one.
    pub fn count(&mut self, set: usize, hi: usize, zone: &Option<String>, fd: Option<u32>) {
        let b = &mut self.books[set];
        *b.per_host.entry(hi).or_default() += 1;
        if let Some(fd) = fd {
            match b.per_domain.get_mut(zone) {
                Some(z) => *z.entry(fd).or_default() += 1,
                None => {
                    b.per_domain.insert(zone.clone(), HashMap::from([(fd, 1)]));
                }
            }
        }
    }

    /// The fault domains of `zone`: the hosts that may take its new instances (those labelled
    /// with the zone; only when it has none, those serving every zone), grouped by
    /// fault-domain label (a host without one is a domain of its own, named after it), sorted
    /// by name.
    pub fn domains(&mut self, zone: Option<&str>) -> Rc<Vec<Domain>> {
        let key = zone.map(str::to_string);
        if let Some(d) = self.domain_cache.get(&key) {
            return Rc::clone(d);
        }
        let mut by_name: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let (labelled, rest) = self.tiers(zone);
        let pool = if labelled.is_empty() { rest } else { labelled };
        for hi in pool {
            let spec = self.hosts[hi].spec;
            by_name.entry(spec.fault_domain.as_deref().unwrap_or(spec.name.as_str())).or_default().push(hi);
        }
        let d: Rc<Vec<Domain>> =
            Rc::new(by_name.into_iter().map(|(name, hosts)| Domain { name: name.to_string(), hosts }).collect());
        self.domain_cache.insert(key, Rc::clone(&d));
        d
    }

    /// Where request `r` of `set` may go, in the order to try: (fault domain index, its hosts).
    /// With a count of 1, index 0: the hosts labelled with its zone, then those serving every
    /// zone. With N, the first N
    /// domains of its zone by name, least used by the set first (tie: lowest index), or only
    /// the domain it already has. Fewer than N domains: refused.
    pub fn candidates(&mut self, r: &Request, set: usize) -> Result<Vec<(u32, Vec<usize>)>, DomainShortfall> {
        let mut c = self.candidates_anywhere(r, set)?;
        if let Some(avoid) = &r.avoid_host {
            for (_, hosts) in c.iter_mut() {
                hosts.retain(|&hi| &self.hosts[hi].spec.name != avoid);
            }
            c.retain(|(_, hosts)| !hosts.is_empty());
        }
        Ok(c)
    }

    fn candidates_anywhere(&mut self, r: &Request, set: usize) -> Result<Vec<(u32, Vec<usize>)>, DomainShortfall> {
        let n = r.fault_domains.max(1);
        let zone = r.zone.as_deref();
        if n == 1 {
            let (labelled, rest) = self.tiers(zone);
            return Ok(match (labelled.is_empty(), rest.is_empty()) {
                (false, false) => vec![(0, labelled), (0, rest)],
                (false, true) => vec![(0, labelled)],
                _ => vec![(0, rest)],
            });
        }
        let domains = self.domains(zone);
        if domains.len() < n as usize {
            return Err(DomainShortfall {
                zone: r.zone.clone(),
                want: n,
                domains: domains.iter().map(|d| d.name.clone()).collect(),
                unlimited: false,
            });
        }
        let mut order: Vec<u32> = match r.fault_domain {
            Some(fd) if fd < n => vec![fd],
            _ => (0..n).collect(),
        };
        let books = &self.books[set];
        order.sort_by_key(|&fd| (books.in_domain(&r.zone, fd), fd));
        Ok(order.into_iter().map(|fd| (fd, domains[fd as usize].hosts.clone())).collect())
    }

    /// The hosts that may take a new instance of `zone`, split into those labelled with the
    /// zone (tried first) and those serving every zone (no zone: a fallback, such as the
    /// server's own machine beside joined hosts). Without a zone, every host is in the first.
    pub fn tiers(&mut self, zone: Option<&str>) -> (Vec<usize>, Vec<usize>) {
        let pool = self.eligible(zone);
        if zone.is_none() {
            return (pool, Vec::new());
        }
        pool.into_iter().partition(|&hi| self.hosts[hi].spec.zone.is_some())
    }

    /// Every host request `r` may use at all: its zone's eligible hosts, or with N fault
    /// domains those of the first N (fewer when the zone has fewer).
    pub fn pool_of(&mut self, r: &Request) -> Vec<usize> {
        let n = r.fault_domains.max(1) as usize;
        let mut pool = if n == 1 {
            self.eligible(r.zone.as_deref())
        } else {
            let domains = self.domains(r.zone.as_deref());
            let mut pool: Vec<usize> = domains.iter().take(n).flat_map(|d| d.hosts.iter().copied()).collect();
            pool.sort_unstable();
            pool
        };
        if let Some(avoid) = &r.avoid_host {
            pool.retain(|&hi| &self.hosts[hi].spec.name != avoid);
        }
        pool
    }

    /// Places a holder that has no host: where it fits, else on the least-loaded host.
    fn adopt(&mut self, i: usize, h: &Holder) {
        let eligible = self.eligible(h.zone.as_deref());
        let no_zone_host = eligible.is_empty();
        let pool: Vec<usize> = if no_zone_host { (0..self.hosts.len()).collect() } else { eligible };
        let fits = if no_zone_host { None } else { self.best(&pool, h.size, |x| x.free_now()) };
        let (hi, forced) = match fits {
            Some(hi) => (hi, None),
            None => {
                // The least-loaded: most free now, even if that is below zero; tie → first by name.
                let hi = pool
                    .iter()
                    .copied()
                    .max_by(|&a, &b| {
                        self.hosts[a].free_now().key().cmp(&self.hosts[b].free_now().key()).then(b.cmp(&a))
                    })
                    .unwrap_or(0);
                let why = match (&h.zone, no_zone_host) {
                    (Some(z), true) => format!("no host serves its zone {z}"),
                    _ => "no eligible host has room for it".to_string(),
                };
                (hi, Some(why))
            }
        };
        self.account(hi, i, h);
        if let Some(why) = forced {
            let free = self.hosts[hi].free_now();
            let over = if free.v < 0 || free.m < 0 { ", which is now over capacity" } else { "" };
            self.warnings.push(format!(
                "instance {} had no host recorded and {why}; counted on host '{}' anyway{over}",
                h.key, self.hosts[hi].spec.name
            ));
        }
        self.adopted.push(Placement { key: h.key.clone(), host: self.hosts[hi].spec.name.clone(), fault_domain: None });
    }

    /// Marks a holder as leaving (a Preempt posted in this call) before `seal`.
    pub fn mark_leaving(&mut self, i: usize, h: &Holder) {
        if self.leaving[i] {
            return;
        }
        self.leaving[i] = true;
        if let Some(hi) = self.holder_host[i] {
            let a = Amount::of(h.size);
            let host = &mut self.hosts[hi];
            host.spot -= a;
            host.leaving += a;
            host.spot_members.retain(|&x| x != i);
        }
    }

    /// Orders each host's remaining Spot holders youngest first (tie: highest id, then key).
    pub fn seal(&mut self, holders: &[Holder]) {
        for host in &mut self.hosts {
            let mut ev = std::mem::take(&mut host.spot_members);
            ev.sort_by(|&a, &b| {
                let (x, y) = (&holders[a], &holders[b]);
                (y.created_at, y.key.id, &y.key).cmp(&(x.created_at, x.key.id, &x.key))
            });
            let mut prefix = Vec::with_capacity(ev.len() + 1);
            let mut sum = Amount::default();
            prefix.push(sum);
            for &i in &ev {
                sum += Amount::of(holders[i].size);
                prefix.push(sum);
            }
            host.evictable = ev;
            host.prefix = prefix;
            host.cursor = 0;
        }
    }

    /// Hosts that may take a new instance of `zone`, in name order: not cordoned
    /// (`schedulable`), and serving the zone.
    pub fn eligible(&mut self, zone: Option<&str>) -> Vec<usize> {
        let key = zone.map(str::to_string);
        if let Some(v) = self.eligible_cache.get(&key) {
            return v.clone();
        }
        let v: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].spec.schedulable)
            .filter(|&i| match (zone, self.hosts[i].spec.zone.as_deref()) {
                (None, _) | (_, None) => true,
                (Some(z), Some(hz)) => z == hz,
            })
            .collect();
        self.eligible_cache.insert(key, v.clone());
        v
    }

    /// Of `pool`, the host whose `room` covers `size` with the most room (vCPU, then memory),
    /// tie → first by name.
    pub fn best(&self, pool: &[usize], size: Size, room: impl Fn(&Host) -> Amount) -> Option<usize> {
        self.best_for(pool, size, None, room)
    }

    /// [`Self::best`], but first the host holding the fewest instances of `set` (maximum
    /// spreading), then the most room, tie → first by name.
    pub fn best_for(
        &self,
        pool: &[usize],
        size: Size,
        set: Option<usize>,
        room: impl Fn(&Host) -> Amount,
    ) -> Option<usize> {
        let books = set.map(|s| &self.books[s]);
        let mut best: Option<(usize, (i64, i64, i64))> = None;
        for &hi in pool {
            let r = room(&self.hosts[hi]);
            if !r.covers(size) {
                continue;
            }
            let mine = books.map_or(0, |b| i64::from(b.on_host(hi)));
            let k = (-mine, r.v, r.m);
            if best.is_none_or(|(_, b)| k > b) {
                best = Some((hi, k));
            }
        }
        best.map(|(hi, _)| hi)
    }
}
