//! `herd agent`: the process on each extra host. It joins the host to a cluster with a join
//! token, then keeps one mutually authenticated TLS connection to the server and heartbeats
//! over it.
//!
//! Why the agent dials and the server never does: a host then needs no inbound port for the
//! control plane (NAT and firewalls in front of hosts stay closed), and the server learns a
//! host is gone from silence on a connection it did not have to open.
//!
//! - [`identity`]: the host's key, certificate and CA bundle in its data dir, made at join.
//! - [`join`]: first contact: pin the CA the token names, send the token and the public key.
//! - [`link`]: the connection: Hello, heartbeats, reconnects with backoff, and stopping for
//!   good when the server refuses the host (deleted, another certificate).
//! - [`capacity`]: what the host has, as reported in every heartbeat.
//! - [`calls`]: the server's driver calls, carried out with this host's own driver.
//! - [`metadata_relay`]: its instances' metadata endpoints, relayed to the server.
//! - [`network`]: this host's stretch of the cluster's segments (VXLAN), as the server says.
//! - [`lease`]: the leases the server grants in its acknowledgements, per instance.
//! - [`reboot`]: after a reboot of the host, its VMs start again only once an acknowledgement
//!   lists them.
//! - [`images`]: the host's image cache by content digest, pulled from the server on a
//!   connection of its own, and emptied of what the gallery no longer has.
//! - [`transfer`]: a cold move's state files, uploaded from the old host and fetched (and
//!   checked) by the new one, through the server.
//!
//! The agent's lifecycle:
//!
//! ```text
//!   start ──(identity in data dir?)──no──▶ Joining ──(token ok)──▶ Joined ─┐
//!                    │ yes                    │ refused: exit 1          │
//!                    └────────────────────────┴───────────────────────▶ Connecting
//!   Connecting ──(Welcome)──▶ Linked ──(error / close)──▶ Backoff ──▶ Connecting
//!        │                       │
//!        └──(Refused)────────────┴──▶ Stopped (exit 1: the host must join again)
//! ```
//! The server drives this host's instances through the `Driver` trait over the link
//! (`herd_host_link::remote::RemoteDriver` on its side, [`calls`] here). Placing instances on
//! joined hosts is the next step of the many-hosts work.
#![forbid(unsafe_code)]

pub mod calls;
pub mod capacity;
pub mod identity;
pub mod images;
pub mod join;
pub mod lease;
pub mod link;
pub mod metadata_relay;
pub mod network;
pub mod reboot;
pub mod transfer;

/// This agent's version, as it reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
