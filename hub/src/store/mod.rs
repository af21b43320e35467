//! The hub's durable state behind one trait: the ledger of every plant's transactions, the
//! journals (epochs) they came from with their watermarks, and the audit trail.
//!
//! Every method that changes state returns only after the change is durable, so callers
//! acknowledge after it (invariant I4). Implementations: [`sqlite::SqliteStore`], the embedded
//! default. Rows here are storage types, converted explicitly from wire types; none is ever
//! serialised onto the wire.

use std::future::Future;

use holdfast_protocol::ManualNotice;
use uuid::Uuid;

use crate::audit::{AuditEntry, ChainedEntry, Checkpoint, Hash};

#[cfg(test)]
pub(crate) mod conformance;
pub mod entries;
pub mod postgres;
pub mod sqlite;

/// Where a plant's journal stands at the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalState {
    /// Every record up to here is stored.
    pub stored_seq: u64,
    /// Every record up to here is applied in Odoo (or a duplicate of one that was).
    pub applied_seq: u64,
    /// 1 for a plant's first journal, then one more for each replacement.
    pub epoch: u32,
}

/// A verified record to store, with the fields the applier needs decoded from its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    pub seq: u64,
    pub id: Uuid,
    /// What makes the same transaction the same within the plant: [`dedup_of`].
    pub dedup: Vec<u8>,
    pub order_key: String,
    pub body: Vec<u8>,
    pub crc: u32,
}

/// A transaction's identity within its plant for the ledger's `ledger_once` index: for a keyed
/// one `k` and its source, device and key (the name its UUIDv5 id is hashed from, less the
/// plant), for an unkeyed one `i` and its id (a UUIDv7, which ascends). Either way new rows land
/// at the end of the index, not on a random page as the hashed id did (BENCHMARKS.md, upload).
pub fn dedup_of(txn: &holdfast_protocol::Transaction) -> Vec<u8> {
    match &txn.key {
        Some(key) => {
            [b"k".as_slice(), txn.source.as_str().as_bytes(), b"\0", txn.device.as_bytes(), b"\0", key.as_bytes()]
                .concat()
        }
        None => [b"i".as_slice(), txn.id.as_bytes()].concat(),
    }
}

/// Where the applier's loading stands in each plant's part of the ledger.
pub type Cursor = std::collections::BTreeMap<String, u64>;

/// A stored transaction waiting to be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRow {
    /// Ledger position: the order transactions of one ordering key are applied in.
    pub lsn: u64,
    pub plant: String,
    pub journal_id: Uuid,
    pub seq: u64,
    pub body: Vec<u8>,
    pub crc: u32,
}

/// What became of a transaction the applier finished with.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Applied {
        lsn: u64,
        result: serde_json::Value,
        at_ms: i64,
    },
    /// Set aside for a person, with Odoo's error name and message; blocks its ordering key.
    Quarantined {
        lsn: u64,
        error_name: String,
        error_message: String,
        at_ms: i64,
    },
}

impl Outcome {
    pub fn lsn(&self) -> u64 {
        match self {
            Outcome::Applied { lsn, .. } | Outcome::Quarantined { lsn, .. } => *lsn,
        }
    }
}

/// One plant as the status API shows it: its current (newest) journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlantRow {
    pub plant: String,
    pub journal_id: Uuid,
    pub state: JournalState,
    pub quarantined: u64,
}

/// A plant's pending transactions at the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backlog {
    pub plant: String,
    pub pending: u64,
    pub oldest_stored_ms: i64,
}

/// Which ledger rows `Store::transactions` returns.
#[derive(Clone, Debug, Default)]
pub struct TxnQuery {
    pub id: Option<Uuid>,
    pub plant: Option<String>,
    /// `pending`, `applied`, `quarantined`, `duplicate` or `parked`.
    pub state: Option<String>,
    pub after_lsn: u64,
    pub limit: usize,
}

/// One ledger row, as operators see it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct TxnRow {
    pub lsn: u64,
    pub plant: String,
    pub journal_id: Uuid,
    pub seq: u64,
    pub id: Uuid,
    pub order_key: String,
    pub state: String,
    pub duplicate_of: Option<u64>,
    pub stored_at_ms: i64,
    pub applied_at_ms: Option<i64>,
    /// Odoo's answer, when applied.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub error_name: Option<String>,
    pub error_message: Option<String>,
    /// The transaction as the plant sent it (absent if its record does not verify).
    #[schema(value_type = Option<Object>)]
    pub transaction: Option<serde_json::Value>,
}

/// Which audit entries `Store::audit_search` returns: each given field must match.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Entries whose target starts with this.
    pub target: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// One of a plant's journals.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct JournalRow {
    pub journal_id: Uuid,
    pub epoch: u32,
    pub created_at_ms: i64,
    pub stored_seq: u64,
    pub applied_seq: u64,
}

/// A plant's revoked certificates: every one issued before `issued_before_ms`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Revocation {
    pub plant: String,
    pub issued_before_ms: i64,
    pub at_ms: i64,
    pub actor: String,
    pub reason: String,
}

impl Revocation {
    /// Whether a certificate of this plant issued at `issued_at_ms` is revoked.
    pub fn covers(&self, plant: &str, issued_at_ms: i64) -> bool {
        self.plant == plant && issued_at_ms < self.issued_before_ms
    }
}

/// Which quarantined transactions an operator names: every criterion given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default)]
    pub plant: Option<String>,
    #[serde(default)]
    pub order_key: Option<String>,
    /// Odoo's error name, such as `odoo.exceptions.UserError`.
    #[serde(default)]
    pub error_name: Option<String>,
    #[serde(default)]
    pub ids: Vec<Uuid>,
}

impl Selection {
    /// Names nothing: an operator must say which (a bulk action over every plant is refused).
    pub fn is_empty(&self) -> bool {
        self.plant.is_none() && self.order_key.is_none() && self.error_name.is_none() && self.ids.is_empty()
    }
}

/// A quarantined transaction as operators see it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct QuarantinedRow {
    pub lsn: u64,
    pub plant: String,
    pub journal_id: Uuid,
    pub seq: u64,
    pub id: Uuid,
    pub order_key: String,
    pub error_name: String,
    pub error_message: String,
    pub stored_at_ms: i64,
}

/// What an operator does with quarantined transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// Back to pending: applied again, in order, after the cause was fixed in Odoo.
    Retry,
    /// Set aside for good: counted as done, never applied; the plant is told.
    Park,
}

/// What a release did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub rows: Vec<QuarantinedRow>,
    /// Journals whose `applied_seq` moved (parked rows count as done).
    pub moved: Vec<(String, Uuid, JournalState)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("store {path}: integrity check failed: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("store schema version {found} is newer than this hub understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("plant {plant} journal {journal_id}: records must continue at {expected}, got {got}")]
    NotContiguous { plant: String, journal_id: Uuid, expected: u64, got: u64 },
    #[error("plant {plant} has no journal {journal_id}")]
    UnknownJournal { plant: String, journal_id: Uuid },
    #[error("the store's worker stopped: {0}")]
    Worker(String),
    /// The database server refused or could not be reached (PostgreSQL).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Who holds the lease to lead: the replica running the coordinator and the applier.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Leader {
    /// The replica's name and the process's own id (`hub-0/5f0c…`).
    pub holder: String,
    /// Where its API answers (`cluster.advertise`).
    pub address: String,
    /// Raised at each change of holder: Odoo's inbox refuses batches of an older one.
    pub epoch: u64,
    /// Until the lease expires, by the store's clock (negative: expired that long ago).
    pub expires_in_ms: i64,
}

/// The hub's storage. Every future is `Send` so the shells can hold a store across tasks.
pub trait Store: Clone + Send + Sync + 'static {
    /// Registers (or finds) a plant's journal; a new journal for a known plant starts a new,
    /// audited epoch. Returns where it stands.
    fn open_journal(
        &self,
        plant: &str,
        journal_id: Uuid,
        now_ms: i64,
    ) -> impl Future<Output = Result<JournalState, StoreError>> + Send;

    fn journal_state(
        &self,
        plant: &str,
        journal_id: Uuid,
    ) -> impl Future<Output = Result<JournalState, StoreError>> + Send;

    /// Stores consecutive records durably, once per id within the plant: a record whose id is
    /// already in the ledger is kept as a duplicate of it and never applied again.
    fn store_records(
        &self,
        plant: &str,
        journal_id: Uuid,
        records: Vec<NewRecord>,
        now_ms: i64,
    ) -> impl Future<Output = Result<JournalState, StoreError>> + Send;

    /// Records plant IT's manual state as the plant's heartbeat reports it (`None`: none), and
    /// audits a change; returns whether it changed. While a plant has one, its pending
    /// transactions are not loaded for applying.
    fn set_plant_manual(
        &self,
        plant: &str,
        manual: Option<ManualNotice>,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The journal's notices for its plant, oldest first, at most `limit`: its quarantined
    /// transactions and those parked since `parked_since_ms`, as (sequence, `quarantined` or
    /// `parked`, Odoo's error name, its message).
    fn quarantined(
        &self,
        plant: &str,
        journal_id: Uuid,
        limit: usize,
        parked_since_ms: i64,
    ) -> impl Future<Output = Result<Vec<(u64, String, String, String)>, StoreError>> + Send;

    /// The quarantined transactions `sel` names after ledger position `after_lsn`, oldest
    /// first, at most `limit`.
    fn quarantine_list(
        &self,
        sel: Selection,
        after_lsn: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<QuarantinedRow>, StoreError>> + Send;

    /// An operator's retry (back to pending, Odoo's error forgotten) or park (set aside, done)
    /// of the quarantined transactions `sel` names, each audited with `actor` and `reason`, in
    /// one transaction. Returns the rows as they were, and the journals whose `applied_seq`
    /// moved.
    fn release(
        &self,
        sel: Selection,
        action: Release,
        actor: String,
        reason: String,
        now_ms: i64,
    ) -> impl Future<Output = Result<Released, StoreError>> + Send;

    /// Adds to the audit trail the gateway audit records of this journal not seen before (actor
    /// `gateway:<plant>/<who>`); returns how many were new.
    fn append_gateway_audit(
        &self,
        plant: &str,
        journal_id: Uuid,
        records: Vec<holdfast_protocol::GatewayAuditRecord>,
        now_ms: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every plant's manual state in force.
    fn plant_manuals(&self) -> impl Future<Output = Result<Vec<(String, ManualNotice)>, StoreError>> + Send;

    /// Records that the agent compacted this journal's records `from..=through` before the hub
    /// had them again (a hub restored from an older backup): the stored and applied points move
    /// to `through` (the agent compacts only what the hub had reported applied), audited in the
    /// same transaction. Returns where the journal now stands.
    fn skip_compacted(
        &self,
        plant: &str,
        journal_id: Uuid,
        from: u64,
        through: u64,
        now_ms: i64,
    ) -> impl Future<Output = Result<JournalState, StoreError>> + Send;

    /// Up to `limit` pending transactions, in ledger order, each after its plant's position in
    /// `after` (from the start for a plant not in it), leaving out ordering keys blocked by a
    /// quarantined transaction and plants in plant IT's manual state.
    ///
    /// The cursor is per plant because positions become visible in order only within a plant
    /// (its uploads are stored one at a time): on a shared store, two plants' uploads commit
    /// side by side, and a position of one can appear after a higher one of the other.
    fn load_pending(
        &self,
        after: Cursor,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<PendingRow>, StoreError>> + Send;

    /// Records outcomes durably (quarantines are audited) and returns the journals whose
    /// `applied_seq` moved, with their new state.
    fn record_outcomes(
        &self,
        outcomes: Vec<Outcome>,
    ) -> impl Future<Output = Result<Vec<(String, Uuid, JournalState)>, StoreError>> + Send;

    fn plants(&self) -> impl Future<Output = Result<Vec<PlantRow>, StoreError>> + Send;

    fn append_audit(&self, entry: AuditEntry) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes up to `limit` applied transactions applied before `before_ms` (and the duplicates
    /// recorded against them); returns how many rows went. Pending and quarantined ones stay.
    fn prune_applied(&self, before_ms: i64, limit: usize) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Revokes every certificate issued to the plant before the revocation's `issued_before_ms`
    /// (replacing an earlier revocation of the plant), audited in the same transaction.
    fn revoke(&self, revocation: Revocation) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every plant's revocation in force.
    fn revocations(&self) -> impl Future<Output = Result<Vec<Revocation>, StoreError>> + Send;

    /// Stores a signed checkpoint of the audit chain's head.
    fn add_checkpoint(&self, checkpoint: Checkpoint) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every checkpoint, oldest first.
    fn checkpoints(&self) -> impl Future<Output = Result<Vec<Checkpoint>, StoreError>> + Send;

    /// The audit chain's last entry (sequence and hash), if any.
    fn audit_head(&self) -> impl Future<Output = Result<Option<(u64, Hash)>, StoreError>> + Send;

    /// Audit entries with `seq > after`, oldest first, at most `limit`.
    fn audit_entries(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ChainedEntry>, StoreError>> + Send;

    /// Saves the coordinator's durable state (JSON: holds, the plan and its history, incidents,
    /// baselines) when given, and appends `audit` in the same transaction.
    fn save_coordinator(
        &self,
        state: Option<String>,
        audit: Vec<AuditEntry>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The coordinator's state as last saved.
    fn load_coordinator(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Begins and ends a write transaction: the service watchdog's proof that the store moves.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Pending transactions per plant, with when the oldest was stored.
    fn pending_by_plant(&self) -> impl Future<Output = Result<Vec<Backlog>, StoreError>> + Send;

    /// Ledger rows `q` selects, in ledger order after `q.after_lsn`, at most `q.limit`. By id it
    /// scans the ledger (no index on ids: the ingest path pays for every index).
    fn transactions(&self, q: TxnQuery) -> impl Future<Output = Result<Vec<TxnRow>, StoreError>> + Send;

    /// Audit entries `f` selects with `seq > after`, oldest first, at most `limit`.
    fn audit_search(
        &self,
        after: u64,
        limit: usize,
        f: AuditFilter,
    ) -> impl Future<Output = Result<Vec<ChainedEntry>, StoreError>> + Send;

    /// A plant's journals (one per epoch), oldest first.
    fn journals(&self, plant: &str) -> impl Future<Output = Result<Vec<JournalRow>, StoreError>> + Send;

    /// Transactions applied at or after `from_ms` (a failover's replay), in ledger order after
    /// `after_lsn`, at most `limit`.
    fn applied_since(
        &self,
        from_ms: i64,
        after_lsn: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<PendingRow>, StoreError>> + Send;

    /// Takes or keeps the lease to lead for `ttl` (by the store's clock): `Some(epoch)` while
    /// `holder` has it. A holder whose lease expired, even its own, gets it again only under a
    /// new epoch; each new epoch is audited (`leadership_taken`) in the same transaction.
    fn lease(
        &self,
        holder: &str,
        address: &str,
        ttl: std::time::Duration,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Who holds (or last held) the lease.
    fn leader(&self) -> impl Future<Output = Result<Option<Leader>, StoreError>> + Send;

    /// Records a plant's latest heartbeat (JSON) as the replica holding its agent heard it, for
    /// the leader, whose coordinator must hear every plant. The embedded store, which has one
    /// hub, keeps none.
    fn save_heartbeat(
        &self,
        plant: &str,
        at_ms: i64,
        heartbeat: String,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (plant, at_ms, heartbeat);
        async { Ok(()) }
    }

    /// Every plant's latest heartbeat recorded by [`Store::save_heartbeat`]: (plant, when, JSON).
    fn heartbeats(&self) -> impl Future<Output = Result<Vec<(String, i64, String)>, StoreError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Gives the lease up at once (a replica stopping cleanly), audited, if `holder` still has
    /// it under `epoch`.
    fn step_down(&self, holder: &str, epoch: u64, now_ms: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
}
