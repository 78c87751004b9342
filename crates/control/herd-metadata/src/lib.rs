//! herd's instance metadata service: the equivalent of Azure's Instance Metadata Service
//! (IMDS), serving each instance its **Scheduled Events** and its **identity**.
//!
//! # Why one listener per instance
//!
//! A metadata service must know which instance is asking without trusting anything the
//! instance says. Azure knows from the network; herd gives every instance its own listener on
//! `(its reach address, DEFAULT_PORT)`, so the socket a request arrives on *is* the identity:
//! the endpoint of instance 3 serves instance 3's events and name, and an event id of
//! instance 4 is unknown there. Reach addresses are per-instance already (loopback addresses
//! from `127.128.0.0/9` in host-local networking), so this needs no setup and no source-address
//! checks. With bridged networking an instance's reach address is its own private address,
//! where no listener of the host can live: it gets a listener on a free port instead, and the
//! host's nftables redirect what its bridge port sends to `169.254.169.254:80` there
//! (`herd_hostnet::metadata`; [`MetadataService::vnet_listeners`] and
//! [`MetadataService::changes`] are what that routing follows).
//!
//! How instances find it:
//! - process instances get `HERD_METADATA_URL=http://<reach>:<port>/metadata` (the process
//!   driver sets it from `InstanceSpec::metadata_endpoint`);
//! - QEMU VMs reach it at a fixed guest address through QEMU's `guestfwd`, which runs
//!   `herd metadata-relay <reach>:<port>` for every guest connection; that program calls
//!   [`relay_stdio`].
//!
//! # What it serves (Azure IMDS's shapes; see `http` for the checks)
//!
//! | request | answer |
//! |---|---|
//! | `GET /metadata/scheduledevents?api-version=…` | `{"DocumentIncarnation": N, "Events": [...]}`: this instance's events only |
//! | `POST /metadata/scheduledevents?api-version=…` `{"StartRequests":[{"EventId":"…"}]}` | acknowledges: the event may start before its `NotBefore`; the reconciler is woken |
//! | `GET /metadata/instance?api-version=…` | `{"compute": {...}, "network": {...}}`; `/metadata/instance/compute/vmSize?format=text` walks into it |
//! | `GET /metadata/versions` | the accepted `api-version` values |
//! | `/metadata/identity`, `/metadata/attested`, `/metadata/loadbalancer` | 404: herd does not offer them |
//!
//! Every request needs the header `Metadata: true` and no `X-Forwarded-For`, as in Azure.
//! Nothing secret is ever served: no admin password, no protected settings, no `customData` or
//! `userData`.
//!
//! `DocumentIncarnation` is the store revision at which the service first saw the current
//! event list: it grows whenever the list changes, also across restarts, and needs no storage
//! (see `service::Shared::incarnation`).
//!
//! # Lifecycle of one listener
//!
//! ```text
//!                 sync: record with a reach address (or bridged), not Deallocated
//!   (none) ──────────────────────────────────────────────────────────▶ listening
//!     ▲  │ bind fails: warn once, retry on every sync                     │  │
//!     │  └──────────────▶ failed ──── bind succeeds ──────────────────────┘  │
//!     │                     │                                              │
//!     └─ record gone / Deallocated / reach address changed (then rebound) ─┘
//!        (sync closes the socket before it returns; open requests finish)
//! ```
//!
//! The server runs the service as a controller (`controller.rs`): it syncs when an instance
//! record changes and at least every 500 ms; the server may also call
//! [`MetadataService::sync`] right after a reconcile pass so a new instance's endpoint is up
//! before it boots.

#![forbid(unsafe_code)]

mod controller;
mod document;
mod http;
mod relay;
mod service;

pub use http::API_VERSIONS;
pub use relay::{relay, relay_stdio, RELAY_IDLE_TIMEOUT};
pub use service::{addr_for, MetadataService, DEFAULT_SYNC_INTERVAL};

/// The port of every instance's metadata listener unless configured otherwise: in the
/// registered range, away from common services and outside Linux's ephemeral range
/// (32768–60999), so outgoing connections never hold it.
pub const DEFAULT_PORT: u16 = 16925;
