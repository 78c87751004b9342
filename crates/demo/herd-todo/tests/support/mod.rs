//! Test harness shared by this crate's integration tests. Each test binary uses a different
//! part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod app;
pub mod postgres;
