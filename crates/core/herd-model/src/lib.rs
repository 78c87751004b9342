//! The herd resource model.
//!
//! Why a crate of its own: every other crate (store, reconciler, API, CLI, drivers) speaks in
//! these types, so they must not depend on any of them. The model follows Azure VM Scale Sets'
//! camelCase JSON so users can carry their `az` habits over, and it carries the validation that
//! turns bad input into an error naming the field and the allowed values.

#![forbid(unsafe_code)]

#[macro_use]
mod string_enum;

pub mod activity;
pub mod cidr;
pub mod clock;
pub mod controller;
pub mod duration;
pub mod error;
pub mod extension;
pub mod group;
pub mod health;
pub mod host;
pub mod ids;
pub mod image;
pub mod instance;
pub mod join_token;
pub mod network;
pub mod nsg;
pub mod patch;
pub mod public_pool;
pub mod repair;
pub mod scale_set;
pub mod sku;
pub mod spot;
pub mod tls;
pub mod upgrade;

pub use error::{FieldError, ModelError};
pub use ids::{GroupName, ImageUrn, InstanceId, InstanceKey, ScaleSetName};
