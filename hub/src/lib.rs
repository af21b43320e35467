//! The Holdfast hub: it stores every plant's transactions durably, applies them to Odoo as the
//! one writer (in order per ordering key, exactly once through the inbox addon), and shows where
//! every plant stands.
//!
//! Deciding code is pure and takes time as an argument: [`applier`] (what to call next and what
//! each outcome means) and the sync session in `holdfast-protocol`. The shells own all I/O:
//! [`sync`] (QUIC server), [`delivery`] (the applier against Odoo), [`odoo`] (JSON-RPC driver),
//! [`store`] (durable state), [`api`] (HTTP status). The hub never trusts a payload for a
//! plant's identity: that comes from the client certificate only ([`certs`]).

#![forbid(unsafe_code)]

pub mod api;
pub mod applier;
pub mod audit;
pub mod backup;
pub mod certs;
pub mod config;
pub mod coordinator;
pub mod dashboard;
pub mod delivery;
pub mod lead;
pub mod metrics;
pub mod odoo;
pub mod odoo_check;
pub mod plain;
pub mod policy;
pub mod probe;
pub mod reload;
pub mod reopening;
pub mod run;
pub mod shared;
pub mod store;
pub mod sync;
pub mod tls_api;
pub mod tokens;
