//! The transaction: what a producer asked for, as journaled at the agent and stored at the hub.
//!
//! A transaction's *body* is its canonical CBOR encoding (see [`crate::codec`]). The body is
//! encoded once, at the agent, and travels as those exact bytes; a CRC-32C over them is checked
//! at every hop ([`Record::verify`]), so corruption anywhere between the agent's journal and the
//! hub's applier is detected and never applied.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{self, CodecError};

/// Namespace of keyed transaction ids: `UUIDv5(NAMESPACE, plant \0 source \0 device \0 key)`.
pub const KEYED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_42a4_9d3c_4c2e_8f0a_5e7d_1c39_b802);

/// Longest plant, device, key or ordering key, in bytes. Longer values are refused at ingest.
pub const NAME_BYTES_MAX: usize = 256;

/// What kind of shop-floor system produced a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A manufacturing execution system.
    Mes,
    /// A barcode reader or handheld terminal.
    Barcode,
    /// A scanner station on the TCP line protocol.
    Scanner,
    /// A PLC gateway.
    Plc,
}

impl SourceKind {
    pub const ALL: [SourceKind; 4] = [Self::Mes, Self::Barcode, Self::Scanner, Self::Plc];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mes => "mes",
            Self::Barcode => "barcode",
            Self::Scanner => "scanner",
            Self::Plc => "plc",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// An Odoo model method call. `args` and `kwargs` may hold references (`$ref`, `$xmlid`,
/// `$result`) that the hub resolves at apply time; producers never need Odoo's database ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OdooCall {
    pub model: String,
    pub method: String,
    /// Positional arguments: always a JSON array.
    pub args: serde_json::Value,
    /// Keyword arguments: always a JSON object.
    #[serde(default)]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

/// A raw scan, for stations whose template forwards the code itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    pub code: String,
}

/// What the transaction asks Odoo to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    OdooCall(OdooCall),
    Scan(Scan),
}

/// One shop-floor transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// UUIDv7 when unkeyed, UUIDv5 of plant, source, device and key when keyed.
    pub id: Uuid,
    pub plant: String,
    pub source: SourceKind,
    pub device: String,
    /// The producer's idempotency key, if any.
    #[serde(default)]
    pub key: Option<String>,
    /// Transactions with the same ordering key are applied one at a time, in sequence order.
    pub order_key: String,
    /// When the agent received it (Unix milliseconds, the agent's clock).
    pub received_at_ms: i64,
    /// When it happened on the floor (Unix milliseconds), if the producer said.
    #[serde(default)]
    pub occurred_at_ms: Option<i64>,
    pub op: Operation,
}

impl Transaction {
    /// The id of a keyed transaction: the same plant, source, device and key always give the
    /// same id, which is what makes a resend the same transaction.
    pub fn keyed_id(plant: &str, source: SourceKind, device: &str, key: &str) -> Uuid {
        let name = [plant, source.as_str(), device, key].join("\0");
        Uuid::new_v5(&KEYED_ID_NAMESPACE, name.as_bytes())
    }

    /// The canonical encoded body, the bytes every CRC is computed over.
    pub fn encode_body(&self) -> Result<Vec<u8>, CodecError> {
        codec::to_vec(self)
    }

    /// Seals this transaction as a record with its sequence number and body checksum.
    pub fn to_record(&self, seq: u64) -> Result<Record, CodecError> {
        let body = self.encode_body()?;
        Ok(Record::new(seq, body))
    }
}

/// A journaled transaction as it travels: sequence, body bytes, and a CRC-32C of the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub crc: u32,
}

/// A record failed its integrity checks.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record {seq}: body checksum {found:#010x} does not match the expected {expected:#010x}")]
    Checksum { seq: u64, expected: u32, found: u32 },
    #[error("record {seq}: body is not a transaction: {reason}")]
    Body { seq: u64, reason: String },
}

/// The CRC-32C of a transaction body, as carried in every [`Record`].
pub fn body_checksum(body: &[u8]) -> u32 {
    crc32c::crc32c(body)
}

impl Record {
    /// Makes a record over body bytes, computing their checksum.
    pub fn new(seq: u64, body: Vec<u8>) -> Self {
        let crc = body_checksum(&body);
        Self { seq, body, crc }
    }

    /// Checks the body against its checksum.
    pub fn check(&self) -> Result<(), RecordError> {
        let found = body_checksum(&self.body);
        if found == self.crc { Ok(()) } else { Err(RecordError::Checksum { seq: self.seq, expected: self.crc, found }) }
    }

    /// Checks the checksum, then decodes the transaction.
    pub fn verify(&self) -> Result<Transaction, RecordError> {
        self.check()?;
        codec::from_slice(&self.body).map_err(|e| RecordError::Body { seq: self.seq, reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn sample() -> Transaction {
        Transaction {
            id: Transaction::keyed_id("plant-a", SourceKind::Mes, "line-3", "WO-1187-op20-qty5"),
            plant: "plant-a".into(),
            source: SourceKind::Mes,
            device: "line-3".into(),
            key: Some("WO-1187-op20-qty5".into()),
            order_key: "mo:WH/MO/01187".into(),
            received_at_ms: 1_795_680_000_000,
            occurred_at_ms: Some(1_795_679_700_000),
            op: Operation::OdooCall(OdooCall {
                model: "mrp.production".into(),
                method: "write".into(),
                args: json!([[{"$ref": {"model": "mrp.production", "domain": [["name", "=", "WH/MO/01187"]]}}], {"qty_producing": 5.0}]),
                kwargs: serde_json::Map::new(),
            }),
        }
    }

    #[test]
    fn keyed_ids_are_stable_and_distinct() {
        let a = Transaction::keyed_id("plant-a", SourceKind::Mes, "line-3", "k1");
        assert_eq!(a, Transaction::keyed_id("plant-a", SourceKind::Mes, "line-3", "k1"));
        assert_ne!(a, Transaction::keyed_id("plant-b", SourceKind::Mes, "line-3", "k1"));
        assert_ne!(a, Transaction::keyed_id("plant-a", SourceKind::Plc, "line-3", "k1"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            Transaction::keyed_id("p", SourceKind::Mes, "ab", "c"),
            Transaction::keyed_id("p", SourceKind::Mes, "a", "bc")
        );
        assert_eq!(a.get_version_num(), 5);
    }

    #[test]
    fn record_round_trips_and_detects_any_flipped_bit() {
        let txn = sample();
        let record = txn.to_record(42).unwrap();
        assert_eq!(record.verify().unwrap(), txn);
        for i in 0..record.body.len() {
            let mut bad = record.clone();
            bad.body[i] ^= 0x10;
            assert!(matches!(bad.verify(), Err(RecordError::Checksum { seq: 42, .. })), "byte {i}");
        }
    }

    #[test]
    fn body_encoding_is_canonical() {
        let txn = sample();
        let once = txn.encode_body().unwrap();
        let decoded: Transaction = codec::from_slice(&once).unwrap();
        assert_eq!(decoded.encode_body().unwrap(), once);
    }
}
