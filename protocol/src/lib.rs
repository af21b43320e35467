//! Holdfast's wire protocol.
//!
//! This crate defines what crosses the network between a plant's agent and the hub: the
//! [`Transaction`] and its integrity [`Record`], the session [`Message`]s, the CBOR [`codec`],
//! length-prefixed [`frame`]s, and the sans-IO sync [`session`] for both ends.
//!
//! It does no I/O of its own: no tokio, no quinn, no SQLite. Time is passed in as
//! `std::time::Instant` arguments, so the session can be driven on virtual time in tests.
//! Storage rows on either side are separate types converted to and from these explicitly.
//!
//! Compatibility rule: wire types never reject unknown fields, so an older peer ignores optional
//! fields added later. The [`PROTOCOL_MAJOR`] version changes only on incompatible changes and a
//! peer with another major version is refused with [`ErrorCode::VersionMismatch`].

#![forbid(unsafe_code)]

pub mod backoff;
pub mod codec;
pub mod frame;
pub mod identity;
pub mod msg;
pub mod probe;
pub mod reload;
pub mod session;
pub mod txn;

pub use msg::{
    Ack, Batch, Compacted, DIAGNOSIS_EVENTS_MAX, Diagnosis, DiagnosisEvent, ErrorCode, ErrorMsg, GatewayAudit,
    GatewayAuditRecord, Health, Heartbeat, Hello, JournalFigures, ManualNotice, Message, Notice, PROTOCOL_MAJOR,
    PROTOCOL_MINOR, PlantState, Reopening, Welcome,
};
pub use txn::{OdooCall, Operation, Record, RecordError, Scan, SourceKind, Transaction};
