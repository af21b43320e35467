//! The Holdfast agent: it takes shop-floor transactions, commits each one durably in a local
//! journal before acknowledging it, and streams the journal to the hub.
//!
//! Pure parts: [`producer`] (the producer contract), [`backoff`], and the sync session in
//! `holdfast-protocol`. Shells: [`journal`] (SQLite, one writer thread), [`http`] (producer API
//! and local status), [`uplink`] (QUIC client), [`run`] (wiring). The agent holds no Odoo
//! credentials and never talks to Odoo's write path: the hub is the one writer.

#![forbid(unsafe_code)]

pub use holdfast_protocol::backoff;
pub mod config;
pub mod control;
pub mod enrol;
pub mod heartbeat;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod mode;
pub mod mqtt;
pub mod probe;
pub mod producer;
pub mod reload;
pub mod run;
pub mod station;
pub mod status;
pub mod template;
pub mod uplink;
