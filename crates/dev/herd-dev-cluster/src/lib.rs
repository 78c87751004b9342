//! `herd dev cluster`: a whole herd cluster on one machine, for tests, benchmarks and the demo.
//!
//! Why namespaces and not containers or VMs: the many-hosts code must meet real separate
//! machines — its own network stack, its own `/run`, its own process table (so one agent's
//! orphan scan never finds another host's QEMUs), its own hostname — and the kernel gives all
//! of that with network, mount, PID and UTS namespaces, in well under a second per host, with
//! nothing to install beyond iproute2 and util-linux. Every link of the cluster is a veth on a
//! fabric bridge inside a namespace the rig creates; the root namespace's network is never
//! touched, and several clusters (different `--name`s) run side by side on one kernel.
//!
//! - [`layout`]: the pure plan (names, addresses, zones, racks).
//! - [`rig`]: the executor (`up`, `down`, entering a member, starting and signalling its herd).
//! - [`host_init`]: PID 1 of each member.
#![forbid(unsafe_code)]

pub mod host_init;
pub mod layout;
pub mod rig;

pub use layout::{ClusterSpec, Layout};
pub use rig::{Cluster, UpOptions};
