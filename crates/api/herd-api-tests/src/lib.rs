//! No code: this crate holds the API's in-process handler suite (`tests/handlers.rs`).
//!
//! Why apart from `herd-api`: the suite builds its instances with the sim driver and a real
//! reconciler pass, and implements the API's service traits over the real load-balancer
//! controller and metric sources. As dev-dependencies of `herd-api` those crates would sit in
//! its Cargo.toml; here `herd-api` itself depends on the state layer and the model only.
#![forbid(unsafe_code)]
