//! The messages of the agent-hub session, exchanged on one ordered QUIC stream.
//!
//! ```text
//! agent                                  hub
//!   Hello {major, journal_id, last_seq} ──►
//!                                     ◄── Welcome {stored_seq, applied_seq}   (resume point)
//!   Batch {records seq..}               ──►   (several in flight)
//!                                     ◄── Ack {stored_seq, applied_seq}       (after the durable commit)
//!   Compacted {through}                 ──►   (records the hub asks for were compacted away)
//!   Heartbeat {mode, manual, health, …} ──►   (every few seconds while streaming)
//!                                     ◄── PlantState {notices}              (quarantined transactions)
//!                                     ◄── Error {code, message}               (then the hub closes)
//! ```

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::txn::Record;

/// Changes only when an older peer could not understand a newer one.
pub const PROTOCOL_MAJOR: u16 = 1;
/// Grows with additive changes (new optional fields); informative only.
pub const PROTOCOL_MINOR: u16 = 1;

/// Most records in one batch.
pub const BATCH_RECORDS_MAX: usize = 512;
/// Most body bytes in one batch; a batch stops growing before it passes this
/// (a single larger record still travels alone, within [`crate::frame::FRAME_BYTES_MAX`]).
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;

/// The agent opens the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_major: u16,
    pub protocol_minor: u16,
    /// Identity of the agent's journal, created with it; sequences are per journal.
    pub journal_id: Uuid,
    /// The last sequence the agent's journal has assigned.
    pub last_seq: u64,
    /// The agent's software version, for operators.
    pub agent_version: String,
    /// The plant the agent is configured for (since 1.1; the certificate decides, and a hello
    /// that claims another plant is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plant: Option<String>,
}

/// The hub's answer to [`Hello`]: where to resume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_major: u16,
    pub protocol_minor: u16,
    /// Every record of this journal up to here is stored at the hub; send from the next one.
    pub stored_seq: u64,
    /// Every record up to here is applied in Odoo or parked by an operator.
    pub applied_seq: u64,
}

/// Consecutive records of the journal, in sequence order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub records: Vec<Record>,
}

/// The agent no longer holds its records up to `through`: it deleted them after the hub had
/// reported them applied, and the hub now asks for them (a hub restored from an older backup).
/// The hub records the gap (audited, with an alarm) and goes on after it; never silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compacted {
    pub through: u64,
}

/// The agent's periodic word while streaming (since 1.1, sent only to a hub that speaks it):
/// its mode, plant IT's manual state, the gateway's health and the journal's figures. Every field
/// is optional on the wire, so either side may add more.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub at_ms: i64,
    /// `online`, `manual_offline`: what the agent's status says.
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub manual: Option<ManualNotice>,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub journal: JournalFigures,
    /// The agent's own view of Odoo and of its hub link, with the changes it saw while the link
    /// was down (absent when the agent has no Odoo address to probe).
    #[serde(default)]
    pub diagnosis: Option<Diagnosis>,
}

/// What the agent's probe concludes of Odoo, and the changes it and the hub link went through.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// `unknown` (no answer yet), `reachable`, `database_down` or `unreachable`.
    pub odoo: String,
    #[serde(default)]
    pub odoo_since_ms: Option<i64>,
    /// What the last probe saw, in words.
    #[serde(default)]
    pub odoo_detail: String,
    /// The server version `common.version` last reported.
    #[serde(default)]
    pub odoo_version: Option<String>,
    /// Changes of Odoo's verdict and of the hub link, oldest first (the newest
    /// [`DIAGNOSIS_EVENTS_MAX`]): what the plant saw while the hub could not hear it.
    #[serde(default)]
    pub events: Vec<DiagnosisEvent>,
}

/// Most changes a diagnosis carries.
pub const DIAGNOSIS_EVENTS_MAX: usize = 50;

/// One change the agent saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosisEvent {
    pub at_ms: i64,
    /// `odoo` or `hub_link`.
    pub subject: String,
    /// For `odoo` a verdict; for `hub_link` `connected` or `disconnected`.
    pub state: String,
    #[serde(default)]
    pub detail: String,
}

/// Plant IT's manual state, as the gateway holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualNotice {
    /// `offline` (no uploads; the hub applies nothing more for the plant) or `isolated`.
    pub kind: String,
    pub who: String,
    pub why: String,
    pub since_ms: i64,
    #[serde(default)]
    pub until_ms: Option<i64>,
}

/// The gateway's health, from cheap per-item readings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Whole-machine CPU use in per mille (1000 = every core busy).
    #[serde(default)]
    pub cpu_permille: u32,
    #[serde(default)]
    pub memory_used_bytes: u64,
    #[serde(default)]
    pub memory_total_bytes: u64,
    /// Free space on the journal's filesystem.
    #[serde(default)]
    pub disk_free_bytes: Option<u64>,
    /// The agent's own resident memory.
    #[serde(default)]
    pub agent_rss_bytes: u64,
}

/// The journal, as the agent's status counts it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalFigures {
    #[serde(default)]
    pub last_seq: u64,
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub rejected: u64,
    /// Transactions a second over the last minute, in thousandths.
    #[serde(default)]
    pub rate_milli_per_s: u64,
}

/// What the hub tells a plant about its transactions beyond the watermarks (since 1.1, sent
/// only to an agent that speaks it): the ones quarantined, with Odoo's message, so the plant's
/// status and `GET /v1/transactions/{id}` can show them. Sent after the welcome and whenever the
/// list changes; it replaces the previous one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlantState {
    #[serde(default)]
    pub notices: Vec<Notice>,
    /// The plant's place in the hub's reopening (absent from hubs before it, and never sent
    /// empty, so older agents read the same bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reopening: Option<Reopening>,
}

/// The plant as the hub's coordinator has it: `live`, `held`, `draining` or `caught_up`, its
/// wave in the plan (from 1), and when it should have caught up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reopening {
    pub state: String,
    #[serde(default)]
    pub wave: Option<u32>,
    #[serde(default)]
    pub eta_ms: Option<i64>,
}

/// The gateway's own audit records (plant IT's manual changes, made even while disconnected),
/// for the hub's audit trail (since 1.1). Sent after the welcome and after each change; the hub
/// keeps each (journal, id) once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayAudit {
    pub records: Vec<GatewayAuditRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayAuditRecord {
    /// Its id in the gateway's journal.
    pub id: u64,
    pub at_ms: i64,
    /// `user:<name>` for plant IT, `agent` for the agent itself.
    pub actor: String,
    pub action: String,
    pub reason: String,
}

/// One transaction the hub could not apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub seq: u64,
    /// `quarantined` (parked later).
    pub kind: String,
    /// Odoo's error name and message.
    pub message: String,
}

/// The hub's watermarks, sent after each durable store and whenever `applied_seq` moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub stored_seq: u64,
    pub applied_seq: u64,
}

/// Why a peer ends the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The peers' major protocol versions differ.
    VersionMismatch,
    /// A frame could not be decoded, or a message came out of turn.
    Malformed,
    /// A record's checksum did not match its body.
    Checksum,
    /// A batch did not continue where the stored records end.
    OutOfOrder,
    /// The hub could not store the batch; the agent retries later.
    Storage,
    /// The peer's certificate does not name exactly one plant.
    Identity,
    /// A code this peer does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

/// A typed refusal with a sentence saying what to fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
}

/// Every message of the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Batch(Batch),
    Ack(Ack),
    Error(ErrorMsg),
    /// Since 1.1; sent only to a hub that speaks 1.1.
    Compacted(Compacted),
    /// Since 1.1; sent only to a hub that speaks 1.1.
    Heartbeat(Box<Heartbeat>),
    /// Since 1.1; sent only to an agent that speaks 1.1.
    PlantState(PlantState),
    /// Since 1.1; sent only to a hub that speaks 1.1.
    GatewayAudit(GatewayAudit),
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Welcome(_) => "welcome",
            Self::Batch(_) => "batch",
            Self::Ack(_) => "ack",
            Self::Error(_) => "error",
            Self::Compacted(_) => "compacted",
            Self::Heartbeat(_) => "heartbeat",
            Self::PlantState(_) => "plant_state",
            Self::GatewayAudit(_) => "gateway_audit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1.0 peer's hello, without the fields added since.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct HelloV1_0 {
        protocol_major: u16,
        protocol_minor: u16,
        journal_id: Uuid,
        last_seq: u64,
        agent_version: String,
    }

    #[test]
    fn added_optional_fields_pass_between_old_and_new_peers() {
        let new = Hello {
            protocol_major: 1,
            protocol_minor: 1,
            journal_id: Uuid::from_u128(5),
            last_seq: 9,
            agent_version: "0.2.0".into(),
            plant: Some("plant-a".into()),
        };
        let old: HelloV1_0 = crate::codec::from_slice(&crate::codec::to_vec(&new).unwrap()).unwrap();
        assert_eq!((old.protocol_minor, old.last_seq), (1, 9), "an older peer ignores the plant");
        let back: Hello = crate::codec::from_slice(&crate::codec::to_vec(&old).unwrap()).unwrap();
        assert_eq!(back, Hello { plant: None, ..new }, "a newer peer reads an older hello");
    }
}
