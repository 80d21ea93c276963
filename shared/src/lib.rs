//! What the Lagwise node and proxy share.
//!
//! Layout:
//! - `codec`: RESP request framing with Valkey's limits (inline and multibulk).
//! - `resp`: writing replies in RESP2 or RESP3, and the error strings clients match on.
//! - `command_table`: every command's arity, flags and key positions.
//! - `slot`: CRC16 hash slots with `{hash tag}` rules.
//! - `shutdown`: one signal that every task listens to.
//! - `telemetry`: tracing set-up.
//! - `admin`: the admin HTTP listener (`/live`, `/ready`, `/metrics`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod codec;
pub mod command_table;
pub mod glob;
pub mod resp;
pub mod shutdown;
pub mod slot;
pub mod telemetry;
pub mod topology;
