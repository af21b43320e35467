//! The embedded store: one SQLite file.
//!
//! On-disk format (schema version 6, in `PRAGMA user_version`; a new store is made as version 1
//! and migrated, so every migration runs on every new store):
//! - `journals (jn, plant, journal_id, epoch, created_at_ms, stored_seq, applied_seq, pending)`:
//!   one row per journal a plant's gateway has had; the newest epoch is the plant's current
//!   journal. `jn` (since version 3) is the number the ledger refers to the journal by.
//!   `pending` (since version 6) counts its pending rows, changed in the transaction that changes
//!   them, so a backlog is read without counting the ledger.
//! - `ledger (lsn, plant, journal, seq, id, dedup, order_key, body, crc, state, duplicate_of,
//!   ...)`: every stored record; `body` is the transaction's exact canonical bytes as the agent
//!   encoded them, `crc` their CRC-32C. `state` is one of `pending`, `applied`, `quarantined`,
//!   `duplicate`, `parked` (since version 3: set aside by an operator; done, like `applied`, with
//!   `applied_at_ms` the moment it was parked). A journal's sequences are unique because [`Store::store_records`] takes only the
//!   next one (`stored_seq + 1`) in the transaction that raises `stored_seq`; since version 3
//!   no index repeats that check, and open rows are found by `ledger_open (journal, seq)`.
//!   Every index a row enters costs its insert a B-tree descent; version 3 keeps four
//!   (`ledger_once`, `ledger_pending`, `ledger_open`, and `ledger_blocked`/`ledger_done`
//!   only for rows in those states), and writes the state conditions as `=`/`OR` terms because
//!   SQLite builds a temporary table to evaluate an `IN` list for every row (BENCHMARKS.md).
//! - `audit (seq, at_ms, actor, action, target, reason, prev_hash, hash)`: append-only hash chain;
//!   triggers refuse updates and deletes, and the chain shows any change made around them.
//! - `plant_manual (plant, kind, who, why, since_ms, until_ms)` (since version 2): plant IT's
//!   manual state as each plant's heartbeat last reported it; while a plant has a row, its
//!   pending transactions are not loaded for applying (it survives a hub restart).
//! - `gateway_audit (plant, journal_id, id)` (since version 2): the gateway audit records already
//!   in the trail, so a record sent again is not added twice.
//! - `audit_checkpoints (head_seq, head_hash, at_ms, mac)` (since version 2): the chain's head,
//!   signed with the HMAC key kept outside the store (see [`crate::audit`]).
//! - Applied and parked rows are pruned after the store's retention (`ledger_done` index since
//!   version 3, `ledger_applied` on applied rows in version 2), with the duplicates recorded
//!   against them.
//! - `revocations (plant, issued_before_ms, at_ms, actor, reason)` (since version 2): a plant's
//!   certificates issued before `issued_before_ms` are refused; written by `certs revoke` while
//!   the hub runs, read by its sync server every [`crate::sync::REVOCATION_POLL`].
//! - `lease (id = 1, holder, address, epoch, expires_at_ms)` (since version 5): the lease to lead,
//!   as on PostgreSQL ([`super::postgres`]), by the hub's own clock.
//! - `coordinator (id = 1, state, saved_at_ms)` (since version 4): the coordinator's durable
//!   state as JSON ([`crate::coordinator::Durable`]: holds, the reopening plan and its history,
//!   incidents, baselines), saved with the audit entries of the change in one transaction.
//!
//! Durability: WAL with `synchronous=FULL`; every change is one SQLite transaction committed
//! before the method returns. The log is copied into the database file by a thread of its own
//! ([`checkpoint_loop`]), not inside a commit. `PRAGMA integrity_check` runs at open; a failure refuses to start.
//! All access goes through one connection on blocking threads, so the ledger has one writer.

use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use holdfast_protocol::ManualNotice;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

use super::entries;
use super::{
    AuditFilter, Backlog, JournalRow, JournalState, NewRecord, Outcome, PendingRow, PlantRow, QuarantinedRow, Release,
    Released, Revocation, Selection, Store, StoreError, TxnQuery, TxnRow,
};
use crate::audit::{self, AuditEntry, ChainedEntry, Checkpoint, GENESIS, Hash};

const SCHEMA_VERSION: i64 = 6;
/// Version 5 to 6: each journal's pending rows counted in `journals`. Counting them in the
/// ledger took 0.3 s at 750,000 pending rows, holding the one connection every observation
/// round (2 s), while plants uploaded their backlogs after an outage (BENCHMARKS.md, upload).
const MIGRATE_TO_6: &str = r#"
ALTER TABLE journals ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
UPDATE journals SET pending = (SELECT COUNT(*) FROM ledger l WHERE l.journal = journals.jn AND l.state = 'pending');
PRAGMA user_version = 6;
"#;
/// Version 4 to 5: the lease to lead (one hub on SQLite holds it; its epoch fences a hub
/// that was replaced by another on a copy of the file).
const MIGRATE_TO_5: &str = r#"
CREATE TABLE lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    address TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
PRAGMA user_version = 5;
"#;
/// Version 3 to 4: the coordinator's durable state.
const MIGRATE_TO_4: &str = r#"
CREATE TABLE coordinator (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,
    saved_at_ms INTEGER NOT NULL
);
PRAGMA user_version = 4;
"#;
/// Version 1 to 2: certificate revocations.
const MIGRATE_TO_2: &str = r#"
ALTER TABLE ledger ADD COLUMN dedup BLOB;
DROP INDEX ledger_once;
CREATE INDEX ledger_applied ON ledger (applied_at_ms) WHERE state = 'applied';
CREATE TABLE plant_manual (
    plant TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    who TEXT NOT NULL,
    why TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    until_ms INTEGER
);
CREATE TABLE gateway_audit (
    plant TEXT NOT NULL,
    journal_id BLOB NOT NULL,
    id INTEGER NOT NULL,
    PRIMARY KEY (plant, journal_id, id)
) WITHOUT ROWID;
CREATE TABLE audit_checkpoints (
    head_seq INTEGER PRIMARY KEY,
    head_hash BLOB NOT NULL,
    at_ms INTEGER NOT NULL,
    mac BLOB NOT NULL
);
CREATE TABLE revocations (
    plant TEXT PRIMARY KEY,
    issued_before_ms INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
"#;

/// Version 1, as first released: a new store starts here and is migrated.
const SCHEMA_V1: &str = r#"
CREATE TABLE journals (
    plant TEXT NOT NULL,
    journal_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    stored_seq INTEGER NOT NULL DEFAULT 0,
    applied_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (plant, journal_id),
    UNIQUE (plant, epoch)
);
CREATE TABLE ledger (
    lsn INTEGER PRIMARY KEY,
    plant TEXT NOT NULL,
    journal_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    id BLOB NOT NULL,
    order_key TEXT NOT NULL,
    body BLOB NOT NULL,
    crc INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'applied', 'quarantined', 'duplicate')),
    duplicate_of INTEGER REFERENCES ledger (lsn),
    stored_at_ms INTEGER NOT NULL,
    applied_at_ms INTEGER,
    result TEXT,
    error_name TEXT,
    error_message TEXT,
    UNIQUE (plant, journal_id, seq)
);
CREATE UNIQUE INDEX ledger_once ON ledger (plant, id) WHERE duplicate_of IS NULL;
CREATE INDEX ledger_pending ON ledger (lsn) WHERE state = 'pending';
CREATE INDEX ledger_open ON ledger (plant, journal_id, seq) WHERE state IN ('pending', 'quarantined');
CREATE INDEX ledger_blocked ON ledger (plant, order_key) WHERE state = 'quarantined';
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"#;

/// Version 1 to 2: the tables above, and `ledger_once` keyed by `dedup` (filled from each
/// stored body) instead of the hashed id. One transaction: a crash leaves version 1 as it was.
fn migrate_to_2(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(MIGRATE_TO_2)?;
    {
        let mut rows = tx.prepare("SELECT lsn, body FROM ledger")?;
        let mut set = tx.prepare("UPDATE ledger SET dedup = ?2 WHERE lsn = ?1")?;
        let mut rows = rows.query([])?;
        while let Some(row) = rows.next()? {
            let (lsn, body): (i64, Vec<u8>) = (row.get(0)?, row.get(1)?);
            let txn: holdfast_protocol::Transaction = holdfast_protocol::codec::from_slice(&body).map_err(|e| {
                StoreError::Worker(format!("migrating to version 2: ledger row {lsn} does not decode: {e}"))
            })?;
            set.execute(params![lsn, super::dedup_of(&txn)])?;
        }
    }
    tx.execute_batch(
        "CREATE UNIQUE INDEX ledger_once ON ledger (plant, dedup) WHERE duplicate_of IS NULL; PRAGMA user_version = 2;",
    )?;
    tx.commit()?;
    Ok(())
}

/// Version 2 to 3: the ledger names its journal by `journals.jn` instead of (plant, journal_id),
/// loses the unique index on (plant, journal_id, seq) that `store_records` already guarantees, and
/// its state conditions become `=`/`OR` terms (a `CHECK` or partial index with `IN` built a
/// temporary table per inserted row). Both tables are rebuilt, keeping every `lsn`, in one
/// transaction (run with foreign keys off, as SQLite's table rebuild procedure asks).
const MIGRATE_TO_3: &str = r#"
ALTER TABLE ledger RENAME TO ledger_v2;
ALTER TABLE journals RENAME TO journals_v2;
CREATE TABLE journals (
    jn INTEGER PRIMARY KEY,
    plant TEXT NOT NULL,
    journal_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    stored_seq INTEGER NOT NULL DEFAULT 0,
    applied_seq INTEGER NOT NULL DEFAULT 0,
    UNIQUE (plant, journal_id),
    UNIQUE (plant, epoch)
);
INSERT INTO journals (plant, journal_id, epoch, created_at_ms, stored_seq, applied_seq)
    SELECT plant, journal_id, epoch, created_at_ms, stored_seq, applied_seq FROM journals_v2 ORDER BY plant, epoch;
CREATE TABLE ledger (
    lsn INTEGER PRIMARY KEY,
    plant TEXT NOT NULL,
    journal INTEGER NOT NULL REFERENCES journals (jn),
    seq INTEGER NOT NULL,
    id BLOB NOT NULL,
    dedup BLOB NOT NULL,
    order_key TEXT NOT NULL,
    body BLOB NOT NULL,
    crc INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state = 'pending' OR state = 'applied' OR state = 'quarantined' OR state = 'duplicate' OR state = 'parked'),
    duplicate_of INTEGER REFERENCES ledger (lsn),
    stored_at_ms INTEGER NOT NULL,
    applied_at_ms INTEGER,
    result TEXT,
    error_name TEXT,
    error_message TEXT
);
INSERT INTO ledger (lsn, plant, journal, seq, id, dedup, order_key, body, crc, state, duplicate_of, stored_at_ms, applied_at_ms, result, error_name, error_message)
    SELECT l.lsn, l.plant, j.jn, l.seq, l.id, l.dedup, l.order_key, l.body, l.crc, l.state, l.duplicate_of, l.stored_at_ms, l.applied_at_ms, l.result, l.error_name, l.error_message
    FROM ledger_v2 l JOIN journals j ON j.plant = l.plant AND j.journal_id = l.journal_id ORDER BY l.lsn;
DROP TABLE ledger_v2;
DROP TABLE journals_v2;
CREATE UNIQUE INDEX ledger_once ON ledger (plant, dedup) WHERE duplicate_of IS NULL;
CREATE INDEX ledger_pending ON ledger (lsn) WHERE state = 'pending';
CREATE INDEX ledger_open ON ledger (journal, seq) WHERE state = 'pending' OR state = 'quarantined';
CREATE INDEX ledger_blocked ON ledger (plant, order_key) WHERE state = 'quarantined';
CREATE INDEX ledger_done ON ledger (applied_at_ms) WHERE state = 'applied' OR state = 'parked';
PRAGMA user_version = 3;
"#;

/// The SQLite store. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Pages in the write-ahead log after the last commit (SQLite's WAL hook).
    in_wal: Arc<AtomicI32>,
}

/// New WAL pages after which the checkpoint thread copies the log into the database file
/// (SQLite's own automatic cadence, moved off the commit path).
const CHECKPOINT_FRAMES: c_int = 1000;

/// How long the store must have committed nothing before the checkpoint thread copies what is
/// left of the log, so that the next commit starts it afresh.
const CHECKPOINT_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

/// WAL pages past which a store call copies the log itself after it commits: the log's bound
/// under a load that never pauses (64 MiB of 4 KiB pages).
const WAL_FRAMES_MAX: c_int = 16_384;

/// Copies committed WAL pages into the database file on its own connection, without blocking
/// the store's (`PASSIVE`): when the WAL hook counts [`CHECKPOINT_FRAMES`] new pages, and when
/// the store has been quiet for [`CHECKPOINT_QUIET`] with pages left uncopied. SQLite's
/// automatic checkpoint ran inside the commit that crossed its threshold, fsyncing the
/// database file while every upload and outcome waited (a fifth of the upload's time,
/// BENCHMARKS.md). Ends when the store's connection is closed (its hook holds `wake`).
fn checkpoint_loop(conn: Connection, wake: std::sync::mpsc::Receiver<()>, in_wal: &AtomicI32) {
    use std::sync::mpsc::RecvTimeoutError;
    let (mut last_seen, mut copied_at) = (-1, -1);
    loop {
        match wake.recv_timeout(CHECKPOINT_QUIET) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => {
                let now = in_wal.load(Ordering::Acquire);
                let quiet = now == last_seen;
                last_seen = now;
                if !quiet || now == 0 || now == copied_at {
                    continue;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        match conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, c_int>(1)?, r.get::<_, c_int>(2)?)))
        {
            Ok((log, copied)) => copied_at = if copied == log { log } else { -1 },
            Err(e) => tracing::warn!(error = %e, "hub store checkpoint failed; the next one retries"),
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store, checks its integrity and applies the schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        // Every statement the store runs stays prepared (rusqlite keeps 16 by default; the
        // store has more, and one re-parsed per outcome was a fifth of the applier's CPU).
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StoreError::Corrupt { path: path.display().to_string(), detail: check });
        }
        let mut version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found: version, supported: SCHEMA_VERSION });
        }
        if version == 0 {
            conn.execute_batch(&format!("BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"))?;
            version = 1;
        }
        if version == 1 {
            migrate_to_2(&mut conn)?;
            version = 2;
        }
        if version == 2 {
            // Foreign keys are still off here: the rebuild renames and drops the tables.
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {MIGRATE_TO_3} COMMIT;"))?;
            let violations: i64 = conn.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
            if violations > 0 {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    detail: format!("{violations} rows refer to missing rows after migrating to version 3"),
                });
            }
            version = 3;
        }
        if version == 3 {
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {MIGRATE_TO_4} COMMIT;"))?;
            version = 4;
        }
        if version == 4 {
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {MIGRATE_TO_5} COMMIT;"))?;
            version = 5;
        }
        if version == 5 {
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {MIGRATE_TO_6} COMMIT;"))?;
        }
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Connection::open(path)?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let in_wal = Arc::new(AtomicI32::new(0));
        let seen = in_wal.clone();
        let mut next_wake = CHECKPOINT_FRAMES;
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, frames: c_int| {
            seen.store(frames, Ordering::Release);
            if frames < next_wake - CHECKPOINT_FRAMES {
                next_wake = CHECKPOINT_FRAMES; // the log started afresh
            }
            if frames >= next_wake {
                next_wake = frames + CHECKPOINT_FRAMES;
                let _ = wake.try_send(()); // full: a pass is already due
            }
            Ok(())
        }))?;
        let copied = in_wal.clone();
        std::thread::Builder::new()
            .name("hub-store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, woken, &copied))
            .map_err(|e| StoreError::Worker(e.to_string()))?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), in_wal })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (conn, in_wal) = (self.conn.clone(), self.in_wal.clone());
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| StoreError::Worker("a store call panicked earlier".into()))?;
            let result = f(&mut guard);
            // A load that never lets the checkpoint thread catch up: copy the rest here.
            if in_wal.load(Ordering::Acquire) > WAL_FRAMES_MAX
                && let Err(e) = guard.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            {
                tracing::warn!(error = %e, "hub store checkpoint failed; the next call retries");
            }
            result
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }
}

/// A journal's number in the ledger (`journals.jn`) and its state.
fn journal_row(c: &Connection, plant: &str, journal_id: Uuid) -> Result<(i64, JournalState), StoreError> {
    c.prepare_cached("SELECT jn, stored_seq, applied_seq, epoch FROM journals WHERE plant = ?1 AND journal_id = ?2")?
        .query_row(params![plant, journal_id.as_bytes()], |r| {
            Ok((r.get(0)?, JournalState { stored_seq: r.get(1)?, applied_seq: r.get(2)?, epoch: r.get(3)? }))
        })
        .optional()?
        .ok_or_else(|| StoreError::UnknownJournal { plant: plant.to_owned(), journal_id })
}

fn journal_state(c: &Connection, plant: &str, journal_id: Uuid) -> Result<JournalState, StoreError> {
    Ok(journal_row(c, plant, journal_id)?.1)
}

/// Recomputes journal `jn`'s `applied_seq`: everything below its first open (pending or
/// quarantined) record, or everything stored. The condition is `ledger_open`'s own.
fn refresh_applied(c: &Connection, jn: i64) -> Result<JournalState, StoreError> {
    let first_open: Option<u64> = c
        .prepare_cached(
            "SELECT MIN(seq) FROM ledger WHERE journal = ?1 AND (state = 'pending' OR state = 'quarantined')",
        )?
        .query_row(params![jn], |r| r.get(0))?;
    c.prepare_cached("UPDATE journals SET applied_seq = COALESCE(?2 - 1, stored_seq) WHERE jn = ?1")?
        .execute(params![jn, first_open])?;
    state_of(c, jn)
}

/// Journal `jn`'s state.
fn state_of(c: &Connection, jn: i64) -> Result<JournalState, StoreError> {
    Ok(c.prepare_cached("SELECT stored_seq, applied_seq, epoch FROM journals WHERE jn = ?1")?
        .query_row(params![jn], |r| {
            Ok(JournalState { stored_seq: r.get(0)?, applied_seq: r.get(1)?, epoch: r.get(2)? })
        })?)
}

/// Refreshes the `applied_seq` of each journal touched (by `jn`, each once); returns those
/// whose `applied_seq` moved, with their plant, journal id and new state.
///
/// One query for all of them, their journal numbers written into the SQL: bound as
/// parameters, SQLite re-plans the statement at each new value (it weighs the ledger's
/// partial indexes against it), which cost a sixth of the applier's CPU per outcome.
///
/// `touched` also says how many more rows each journal has pending now (negative: fewer), which
/// goes into `journals.pending` in the same UPDATE.
fn refresh_touched(
    c: &Connection,
    touched: &std::collections::BTreeMap<i64, i64>,
) -> Result<Vec<(String, Uuid, JournalState)>, StoreError> {
    if touched.is_empty() {
        return Ok(Vec::new());
    }
    let list = touched.keys().map(i64::to_string).collect::<Vec<_>>().join(",");
    // Per journal, its first open sequence: one index seek each (ledger_open), not a scan.
    let mut stmt = c.prepare(&format!(
        "SELECT j.jn, j.plant, j.journal_id, j.stored_seq, j.applied_seq, j.epoch,
                (SELECT MIN(l.seq) FROM ledger l WHERE l.journal = j.jn AND (l.state = 'pending' OR l.state = 'quarantined'))
         FROM journals j WHERE j.jn IN ({list})"
    ))?;
    let journals = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                uuid_of(r.get(2)?),
                JournalState { stored_seq: r.get(3)?, applied_seq: r.get(4)?, epoch: r.get(5)? },
                r.get::<_, Option<u64>>(6)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut moved = Vec::new();
    for (jn, plant, journal_id, before, first_open) in journals {
        let applied_seq = match first_open {
            Some(first_open) => first_open - 1,
            None => before.stored_seq,
        };
        let added = touched.get(&jn).copied().unwrap_or(0);
        if applied_seq != before.applied_seq || added != 0 {
            c.prepare_cached("UPDATE journals SET applied_seq = ?2, pending = pending + ?3 WHERE jn = ?1")?
                .execute(params![jn, applied_seq, added])?;
        }
        if applied_seq != before.applied_seq {
            moved.push((plant, journal_id, JournalState { applied_seq, ..before }));
        }
    }
    Ok(moved)
}

fn append_audit(c: &Connection, entry: &AuditEntry) -> Result<u64, StoreError> {
    let last: Option<(u64, Vec<u8>)> = c
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (prev_seq, prev_hash) = match last {
        Some((seq, hash)) => (seq, to_hash(hash)),
        None => (0, GENESIS),
    };
    let seq = prev_seq + 1;
    let hash = audit::chain(&prev_hash, seq, entry);
    c.execute(
        "INSERT INTO audit (seq, at_ms, actor, action, target, reason, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![seq, entry.at_ms, entry.actor, entry.action, entry.target, entry.reason, prev_hash.as_slice(), hash.as_slice()],
    )?;
    Ok(seq)
}

/// A `plant_manual` row's `kind, who, why, since_ms, until_ms`, from column `first` on.
fn manual_notice(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<ManualNotice> {
    Ok(ManualNotice {
        kind: r.get(first)?,
        who: r.get(first + 1)?,
        why: r.get(first + 2)?,
        since_ms: r.get(first + 3)?,
        until_ms: r.get(first + 4)?,
    })
}

fn to_hash(bytes: Vec<u8>) -> Hash {
    let mut h = [0u8; 32];
    let n = bytes.len().min(32);
    h[..n].copy_from_slice(&bytes[..n]);
    h
}

/// The quarantined rows `sel` names (ids as a JSON list of hex, matched in SQL).
/// The quarantined rows `sel` names, each with its journal's `jn`.
/// The quarantined rows `sel` names after ledger position `after_lsn`, oldest first.
fn select_quarantined(
    c: &Connection,
    sel: &Selection,
    after_lsn: u64,
    limit: usize,
) -> Result<Vec<(QuarantinedRow, i64)>, StoreError> {
    let ids = (!sel.ids.is_empty())
        .then(|| serde_json::to_string(&sel.ids.iter().map(|i| hex::encode_upper(i.as_bytes())).collect::<Vec<_>>()))
        .transpose()
        .map_err(|e| StoreError::Worker(e.to_string()))?;
    let mut stmt = c.prepare_cached(
        "SELECT l.lsn, l.plant, j.journal_id, l.seq, l.id, l.order_key, COALESCE(l.error_name, ''), COALESCE(l.error_message, ''), l.stored_at_ms, j.jn
         FROM ledger l JOIN journals j ON j.jn = l.journal
         WHERE l.state = 'quarantined'
           AND (?1 IS NULL OR l.plant = ?1) AND (?2 IS NULL OR l.order_key = ?2) AND (?3 IS NULL OR l.error_name = ?3)
           AND (?4 IS NULL OR hex(l.id) IN (SELECT value FROM json_each(?4))) AND l.lsn > ?6
         ORDER BY l.lsn LIMIT ?5",
    )?;
    let rows = stmt
        .query_map(params![sel.plant, sel.order_key, sel.error_name, ids, limit as i64, after_lsn], |r| {
            let row = QuarantinedRow {
                lsn: r.get(0)?,
                plant: r.get(1)?,
                journal_id: uuid_of(r.get(2)?),
                seq: r.get(3)?,
                id: uuid_of(r.get(4)?),
                order_key: r.get(5)?,
                error_name: r.get(6)?,
                error_message: r.get(7)?,
                stored_at_ms: r.get(8)?,
            };
            Ok((row, r.get(9)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn uuid_of(bytes: Vec<u8>) -> Uuid {
    Uuid::from_slice(&bytes).unwrap_or_default()
}

impl Store for SqliteStore {
    async fn open_journal(&self, plant: &str, journal_id: Uuid, now_ms: i64) -> Result<JournalState, StoreError> {
        let plant = plant.to_owned();
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Ok(state) = journal_state(&tx, &plant, journal_id) {
                return Ok(state);
            }
            let previous: Option<(Vec<u8>, u32)> = tx
                .query_row(
                    "SELECT journal_id, epoch FROM journals WHERE plant = ?1 ORDER BY epoch DESC LIMIT 1",
                    params![plant],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let previous = previous.map(|(old, epoch)| (uuid_of(old), epoch));
            let epoch = previous.map_or(1, |(_, e)| e + 1);
            tx.execute(
                "INSERT INTO journals (plant, journal_id, epoch, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![plant, journal_id.as_bytes(), epoch, now_ms],
            )?;
            append_audit(&tx, &entries::epoch_started(&plant, journal_id, epoch, previous, now_ms))?;
            let state = journal_state(&tx, &plant, journal_id)?;
            tx.commit()?;
            Ok(state)
        })
        .await
    }

    async fn journal_state(&self, plant: &str, journal_id: Uuid) -> Result<JournalState, StoreError> {
        let plant = plant.to_owned();
        self.blocking(move |c| journal_state(c, &plant, journal_id)).await
    }

    async fn store_records(
        &self,
        plant: &str,
        journal_id: Uuid,
        records: Vec<NewRecord>,
        now_ms: i64,
    ) -> Result<JournalState, StoreError> {
        let plant = plant.to_owned();
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (jn, before) = journal_row(&tx, &plant, journal_id)?;
            let mut expected = before.stored_seq + 1;
            let mut duplicates = false;
            let mut pending_rows = 0;
            {
                // A new transaction's row goes in as pending; only when `ledger_once` already
                // holds its dedup name (rare) is the original looked up and the row stored as its
                // duplicate. One index descent per new row instead of a lookup and an insert.
                let mut pending = tx.prepare_cached(
                    "INSERT INTO ledger (plant, journal, seq, id, dedup, order_key, body, crc, state, stored_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9) ON CONFLICT DO NOTHING",
                )?;
                let mut find =
                    tx.prepare_cached("SELECT lsn FROM ledger WHERE plant = ?1 AND dedup = ?2 AND duplicate_of IS NULL")?;
                let mut duplicate = tx.prepare_cached(
                    "INSERT INTO ledger (plant, journal, seq, id, dedup, order_key, body, crc, state, duplicate_of, stored_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'duplicate', ?10, ?9)",
                )?;
                for r in &records {
                    if r.seq != expected {
                        return Err(StoreError::NotContiguous { plant: plant.clone(), journal_id, expected, got: r.seq });
                    }
                    expected += 1;
                    let row = params![plant, jn, r.seq, r.id.as_bytes(), r.dedup, r.order_key, r.body, r.crc, now_ms];
                    if pending.execute(row)? == 1 {
                        pending_rows += 1;
                        continue;
                    }
                    let original: u64 = find.query_row(params![plant, r.dedup], |found| found.get(0))?;
                    duplicates = true;
                    duplicate.execute(params![plant, jn, r.seq, r.id.as_bytes(), r.dedup, r.order_key, r.body, r.crc, now_ms, original])?;
                }
            }
            tx.prepare_cached("UPDATE journals SET stored_seq = ?2, pending = pending + ?3 WHERE jn = ?1")?
                .execute(params![jn, expected - 1, pending_rows])?;
            // A duplicate counts as done, so it may move applied_seq.
            let state = if duplicates {
                refresh_applied(&tx, jn)?
            } else {
                JournalState { stored_seq: expected - 1, ..before }
            };
            tx.commit()?;
            Ok(state)
        })
        .await
    }

    async fn load_pending(&self, after: super::Cursor, limit: usize) -> Result<Vec<PendingRow>, StoreError> {
        // One writer: positions become visible in order across plants too, so nothing below
        // the furthest plant's position can appear later (as with one cursor for the ledger).
        let floor = after.values().copied().max().unwrap_or(0);
        let after = serde_json::to_string(&after).map_err(|e| StoreError::Worker(e.to_string()))?;
        self.blocking(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT l.lsn, l.plant, (SELECT journal_id FROM journals j WHERE j.jn = l.journal), l.seq, l.body, l.crc FROM ledger l
                 WHERE l.state = 'pending' AND l.lsn > ?1 AND l.lsn > COALESCE((SELECT value FROM json_each(?3) WHERE key = l.plant), 0)
                   AND NOT EXISTS (SELECT 1 FROM ledger q WHERE q.state = 'quarantined' AND q.plant = l.plant AND q.order_key = l.order_key)
                   AND NOT EXISTS (SELECT 1 FROM plant_manual m WHERE m.plant = l.plant)
                 ORDER BY l.lsn LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![floor, limit as i64, after], |r| {
                    Ok(PendingRow { lsn: r.get(0)?, plant: r.get(1)?, journal_id: uuid_of(r.get(2)?), seq: r.get(3)?, body: r.get(4)?, crc: r.get(5)? })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn record_outcomes(&self, outcomes: Vec<Outcome>) -> Result<Vec<(String, Uuid, JournalState)>, StoreError> {
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Per journal touched, its rows no longer pending; a row recorded before touches none.
            let mut touched = std::collections::BTreeMap::new();
            for outcome in &outcomes {
                let jn: Option<i64> = match outcome {
                    Outcome::Applied { lsn, result, at_ms } => tx
                        .prepare_cached(
                            "UPDATE ledger SET state = 'applied', applied_at_ms = ?2, result = ?3 WHERE lsn = ?1 AND state = 'pending' RETURNING journal",
                        )?
                        .query_row(params![lsn, at_ms, result.to_string()], |r| r.get(0))
                        .optional()?,
                    Outcome::Quarantined { lsn, error_name, error_message, at_ms } => {
                        let jn: Option<i64> = tx
                            .prepare_cached(
                                "UPDATE ledger SET state = 'quarantined', error_name = ?2, error_message = ?3 WHERE lsn = ?1 AND state = 'pending' RETURNING journal",
                            )?
                            .query_row(params![lsn, error_name, error_message], |r| r.get(0))
                            .optional()?;
                        let (plant, id, order_key): (String, Vec<u8>, String) =
                            tx.query_row("SELECT plant, id, order_key FROM ledger WHERE lsn = ?1", params![lsn], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                        append_audit(
                            &tx,
                            &entries::quarantined(&plant, uuid_of(id), &order_key, error_name, error_message, *at_ms),
                        )?;
                        jn
                    }
                };
                if let Some(jn) = jn {
                    *touched.entry(jn).or_insert(0) -= 1;
                }
            }
            let moved = refresh_touched(&tx, &touched)?;
            tx.commit()?;
            Ok(moved)
        })
        .await
    }

    async fn plants(&self) -> Result<Vec<PlantRow>, StoreError> {
        self.blocking(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT j.plant, j.journal_id, j.stored_seq, j.applied_seq, j.epoch,
                        (SELECT COUNT(*) FROM ledger q WHERE q.plant = j.plant AND q.state = 'quarantined')
                 FROM journals j
                 WHERE j.epoch = (SELECT MAX(epoch) FROM journals k WHERE k.plant = j.plant)
                 ORDER BY j.plant",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(PlantRow {
                        plant: r.get(0)?,
                        journal_id: uuid_of(r.get(1)?),
                        state: JournalState { stored_seq: r.get(2)?, applied_seq: r.get(3)?, epoch: r.get(4)? },
                        quarantined: r.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<u64, StoreError> {
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let seq = append_audit(&tx, &entry)?;
            tx.commit()?;
            Ok(seq)
        })
        .await
    }

    async fn set_plant_manual(
        &self,
        plant: &str,
        manual: Option<ManualNotice>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let plant = plant.to_owned();
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let before = tx
                .query_row(
                    "SELECT kind, who, why, since_ms, until_ms FROM plant_manual WHERE plant = ?1",
                    params![plant],
                    |r| manual_notice(r, 0),
                )
                .optional()?;
            if before == manual {
                return Ok(false);
            }
            tx.execute("DELETE FROM plant_manual WHERE plant = ?1", params![plant])?;
            if let Some(m) = &manual {
                tx.execute(
                    "INSERT INTO plant_manual (plant, kind, who, why, since_ms, until_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![plant, m.kind, m.who, m.why, m.since_ms, m.until_ms],
                )?;
            }
            append_audit(
                &tx,
                &entries::manual_changed(&plant, manual.as_ref(), now_ms),
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn quarantined(
        &self,
        plant: &str,
        journal_id: Uuid,
        limit: usize,
        parked_since_ms: i64,
    ) -> Result<Vec<(u64, String, String, String)>, StoreError> {
        let plant = plant.to_owned();
        self.blocking(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT l.seq, l.state, COALESCE(l.error_name, ''), COALESCE(l.error_message, '') FROM ledger l JOIN journals j ON j.jn = l.journal
                 WHERE l.plant = ?1 AND j.plant = ?1 AND j.journal_id = ?2
                   AND (l.state = 'quarantined' OR (l.state = 'parked' AND l.applied_at_ms >= ?4))
                 ORDER BY l.seq LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![plant, journal_id.as_bytes(), limit as i64, parked_since_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn quarantine_list(
        &self,
        sel: Selection,
        after_lsn: u64,
        limit: usize,
    ) -> Result<Vec<QuarantinedRow>, StoreError> {
        self.blocking(move |c| {
            Ok(select_quarantined(c, &sel, after_lsn, limit)?.into_iter().map(|(row, _)| row).collect())
        })
        .await
    }

    async fn release(
        &self,
        sel: Selection,
        action: Release,
        actor: String,
        reason: String,
        now_ms: i64,
    ) -> Result<Released, StoreError> {
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let selected = select_quarantined(&tx, &sel, 0, usize::MAX >> 1)?;
            // Per journal, the rows pending again.
            let mut journals = std::collections::BTreeMap::new();
            for (row, jn) in &selected {
                let pending_again = match action {
                    Release::Retry => tx
                        .prepare_cached(
                            "UPDATE ledger SET state = 'pending', error_name = NULL, error_message = NULL WHERE lsn = ?1 AND state = 'quarantined'",
                        )?
                        .execute(params![row.lsn])? as i64,
                    Release::Park => {
                        tx.prepare_cached(
                            "UPDATE ledger SET state = 'parked', applied_at_ms = ?2 WHERE lsn = ?1 AND state = 'quarantined'",
                        )?
                        .execute(params![row.lsn, now_ms])?;
                        0
                    }
                };
                append_audit(
                    &tx,
                    &entries::released(action, &actor, &reason, row, now_ms),
                )?;
                *journals.entry(*jn).or_insert(0) += pending_again;
            }
            let moved = refresh_touched(&tx, &journals)?;
            tx.commit()?;
            Ok(Released { rows: selected.into_iter().map(|(row, _)| row).collect(), moved })
        })
        .await
    }

    async fn append_gateway_audit(
        &self,
        plant: &str,
        journal_id: Uuid,
        records: Vec<holdfast_protocol::GatewayAuditRecord>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let plant = plant.to_owned();
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut new = 0;
            for r in records {
                let inserted = tx.execute(
                    "INSERT OR IGNORE INTO gateway_audit (plant, journal_id, id) VALUES (?1, ?2, ?3)",
                    params![plant, journal_id.as_bytes(), r.id],
                )?;
                if inserted == 1 {
                    new += 1;
                    append_audit(&tx, &entries::gateway_record(&plant, r, now_ms))?;
                }
            }
            tx.commit()?;
            Ok(new)
        })
        .await
    }

    async fn plant_manuals(&self) -> Result<Vec<(String, ManualNotice)>, StoreError> {
        self.blocking(|c| {
            let mut stmt =
                c.prepare_cached("SELECT plant, kind, who, why, since_ms, until_ms FROM plant_manual ORDER BY plant")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, manual_notice(r, 1)?)))?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn skip_compacted(
        &self,
        plant: &str,
        journal_id: Uuid,
        from: u64,
        through: u64,
        now_ms: i64,
    ) -> Result<JournalState, StoreError> {
        let plant = plant.to_owned();
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (jn, before) = journal_row(&tx, &plant, journal_id)?;
            if through > before.stored_seq {
                tx.execute(
                    "UPDATE journals SET stored_seq = ?3 WHERE plant = ?1 AND journal_id = ?2",
                    params![plant, journal_id.as_bytes(), through],
                )?;
                append_audit(
                    &tx,
                    &entries::gap_compacted(&plant, journal_id, before.stored_seq, from, through, now_ms),
                )?;
            }
            let state = refresh_applied(&tx, jn)?;
            tx.commit()?;
            Ok(state)
        })
        .await
    }

    async fn prune_applied(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS prune (lsn INTEGER PRIMARY KEY); DELETE FROM temp.prune;",
            )?;
            tx.execute(
                "INSERT INTO temp.prune SELECT lsn FROM ledger WHERE (state = 'applied' OR state = 'parked') AND applied_at_ms < ?1 LIMIT ?2",
                params![before_ms, limit as i64],
            )?;
            let duplicates = tx.execute("DELETE FROM ledger WHERE duplicate_of IN (SELECT lsn FROM temp.prune)", [])?;
            let applied = tx.execute("DELETE FROM ledger WHERE lsn IN (SELECT lsn FROM temp.prune)", [])?;
            tx.commit()?;
            Ok((duplicates + applied) as u64)
        })
        .await
    }

    async fn revoke(&self, r: Revocation) -> Result<(), StoreError> {
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT OR REPLACE INTO revocations (plant, issued_before_ms, at_ms, actor, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.plant, r.issued_before_ms, r.at_ms, r.actor, r.reason],
            )?;
            append_audit(
                &tx,
                &entries::revoked(&r),
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn save_coordinator(&self, state: Option<String>, audit: Vec<AuditEntry>) -> Result<(), StoreError> {
        if state.is_none() && audit.is_empty() {
            return Ok(());
        }
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for entry in &audit {
                append_audit(&tx, entry)?;
            }
            if let Some(state) = state {
                let at_ms = audit.last().map_or_else(crate::shared::now_ms, |e| e.at_ms);
                tx.execute(
                    "INSERT INTO coordinator (id, state, saved_at_ms) VALUES (1, ?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, saved_at_ms = excluded.saved_at_ms",
                    params![state, at_ms],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|c| {
            c.transaction_with_behavior(TransactionBehavior::Immediate)?.commit()?;
            Ok(())
        })
        .await
    }

    async fn load_coordinator(&self) -> Result<Option<String>, StoreError> {
        self.blocking(|c| Ok(c.query_row("SELECT state FROM coordinator WHERE id = 1", [], |r| r.get(0)).optional()?))
            .await
    }

    async fn applied_since(&self, from_ms: i64, after_lsn: u64, limit: usize) -> Result<Vec<PendingRow>, StoreError> {
        self.blocking(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT l.lsn, l.plant, (SELECT journal_id FROM journals j WHERE j.jn = l.journal), l.seq, l.body, l.crc FROM ledger l
                 WHERE l.state = 'applied' AND l.applied_at_ms >= ?1 AND l.lsn > ?2
                 ORDER BY l.lsn LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![from_ms, after_lsn, limit as i64], |r| {
                    Ok(PendingRow { lsn: r.get(0)?, plant: r.get(1)?, journal_id: uuid_of(r.get(2)?), seq: r.get(3)?, body: r.get(4)?, crc: r.get(5)? })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn pending_by_plant(&self) -> Result<Vec<Backlog>, StoreError> {
        self.blocking(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT j.plant, SUM(j.pending), MIN((SELECT l.stored_at_ms FROM ledger l
                                                      WHERE l.journal = j.jn AND l.state = 'pending' ORDER BY l.seq LIMIT 1))
                 FROM journals j WHERE j.pending > 0 GROUP BY j.plant ORDER BY j.plant",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Backlog { plant: r.get(0)?, pending: r.get::<_, i64>(1)? as u64, oldest_stored_ms: r.get(2)? })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        self.blocking(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT plant, issued_before_ms, at_ms, actor, reason FROM revocations ORDER BY plant",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Revocation {
                        plant: r.get(0)?,
                        issued_before_ms: r.get(1)?,
                        at_ms: r.get(2)?,
                        actor: r.get(3)?,
                        reason: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn add_checkpoint(&self, c: Checkpoint) -> Result<(), StoreError> {
        self.blocking(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO audit_checkpoints (head_seq, head_hash, at_ms, mac) VALUES (?1, ?2, ?3, ?4)",
                params![c.head_seq, c.head_hash.as_slice(), c.at_ms, c.mac.as_slice()],
            )?;
            Ok(())
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.blocking(|c| {
            let mut stmt =
                c.prepare_cached("SELECT head_seq, head_hash, at_ms, mac FROM audit_checkpoints ORDER BY head_seq")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Checkpoint {
                        head_seq: r.get(0)?,
                        head_hash: to_hash(r.get(1)?),
                        at_ms: r.get(2)?,
                        mac: to_hash(r.get(3)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn audit_head(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        self.blocking(|c| {
            Ok(c.query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get::<_, u64>(0)?, to_hash(r.get(1)?)))
            })
            .optional()?)
        })
        .await
    }

    async fn transactions(&self, q: TxnQuery) -> Result<Vec<TxnRow>, StoreError> {
        self.blocking(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT l.lsn, l.plant, j.journal_id, l.seq, l.id, l.order_key, l.state, l.duplicate_of, l.stored_at_ms,
                        l.applied_at_ms, l.result, l.error_name, l.error_message, l.body, l.crc
                 FROM ledger l JOIN journals j ON j.jn = l.journal
                 WHERE l.lsn > ?1 AND (?2 IS NULL OR l.id = ?2) AND (?3 IS NULL OR l.plant = ?3) AND (?4 IS NULL OR l.state = ?4)
                 ORDER BY l.lsn LIMIT ?5",
            )?;
            let id = q.id.map(|i| i.as_bytes().to_vec());
            let rows = stmt
                .query_map(params![q.after_lsn, id, q.plant, q.state, q.limit as i64], |r| {
                    let seq: u64 = r.get(3)?;
                    let record = holdfast_protocol::Record { seq, body: r.get::<_, Vec<u8>>(13)?, crc: r.get(14)? };
                    let result: Option<String> = r.get(10)?;
                    Ok(TxnRow {
                        lsn: r.get(0)?,
                        plant: r.get(1)?,
                        journal_id: uuid_of(r.get(2)?),
                        seq,
                        id: uuid_of(r.get(4)?),
                        order_key: r.get(5)?,
                        state: r.get(6)?,
                        duplicate_of: r.get(7)?,
                        stored_at_ms: r.get(8)?,
                        applied_at_ms: r.get(9)?,
                        result: result.and_then(|t| serde_json::from_str(&t).ok()),
                        error_name: r.get(11)?,
                        error_message: r.get(12)?,
                        transaction: record.verify().ok().and_then(|t| serde_json::to_value(t).ok()),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn audit_search(&self, after: u64, limit: usize, f: AuditFilter) -> Result<Vec<ChainedEntry>, StoreError> {
        self.blocking(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, at_ms, actor, action, target, reason, prev_hash, hash FROM audit
                 WHERE seq > ?1 AND (?2 IS NULL OR actor = ?2) AND (?3 IS NULL OR action = ?3)
                   AND (?4 IS NULL OR substr(target, 1, length(?4)) = ?4)
                   AND (?5 IS NULL OR at_ms >= ?5) AND (?6 IS NULL OR at_ms < ?6)
                 ORDER BY seq LIMIT ?7",
            )?;
            let rows = stmt
                .query_map(params![after, f.actor, f.action, f.target, f.since_ms, f.until_ms, limit as i64], |r| {
                    Ok(ChainedEntry {
                        seq: r.get(0)?,
                        entry: AuditEntry {
                            at_ms: r.get(1)?,
                            actor: r.get(2)?,
                            action: r.get(3)?,
                            target: r.get(4)?,
                            reason: r.get(5)?,
                        },
                        prev_hash: to_hash(r.get(6)?),
                        hash: to_hash(r.get(7)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn journals(&self, plant: &str) -> Result<Vec<JournalRow>, StoreError> {
        let plant = plant.to_owned();
        self.blocking(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT journal_id, epoch, created_at_ms, stored_seq, applied_seq FROM journals WHERE plant = ?1 ORDER BY epoch",
            )?;
            let rows = stmt
                .query_map(params![plant], |r| {
                    Ok(JournalRow {
                        journal_id: uuid_of(r.get(0)?),
                        epoch: r.get(1)?,
                        created_at_ms: r.get(2)?,
                        stored_seq: r.get(3)?,
                        applied_seq: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<ChainedEntry>, StoreError> {
        self.audit_search(after, limit, AuditFilter::default()).await
    }

    async fn lease(
        &self,
        holder: &str,
        address: &str,
        ttl: std::time::Duration,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let (holder, address) = (holder.to_owned(), address.to_owned());
        let expires = now_ms + ttl.as_millis() as i64;
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<(String, i64, i64)> = tx
                .query_row("SELECT holder, epoch, expires_at_ms FROM lease WHERE id = 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let previous = match current {
                Some((was, epoch, until)) if until > now_ms => {
                    if was != holder {
                        return Ok(None);
                    }
                    tx.execute("UPDATE lease SET expires_at_ms = ?1 WHERE id = 1", params![expires])?;
                    tx.commit()?;
                    return Ok(Some(epoch as u64));
                }
                Some((was, epoch, _)) => Some((was, epoch as u64)),
                None => None,
            };
            let epoch = previous.as_ref().map_or(1, |(_, e)| e + 1);
            tx.execute(
                "INSERT OR REPLACE INTO lease (id, holder, address, epoch, expires_at_ms) VALUES (1, ?1, ?2, ?3, ?4)",
                params![holder, address, epoch, expires],
            )?;
            append_audit(
                &tx,
                &entries::leadership_taken(
                    &holder,
                    &address,
                    epoch,
                    previous.as_ref().map(|(w, e)| (w.as_str(), *e)),
                    now_ms,
                ),
            )?;
            tx.commit()?;
            Ok(Some(epoch))
        })
        .await
    }

    async fn leader(&self) -> Result<Option<super::Leader>, StoreError> {
        let now = crate::shared::now_ms();
        self.blocking(move |c| {
            Ok(c.query_row("SELECT holder, address, epoch, expires_at_ms FROM lease WHERE id = 1", [], |r| {
                Ok(super::Leader {
                    holder: r.get(0)?,
                    address: r.get(1)?,
                    epoch: r.get(2)?,
                    expires_in_ms: r.get::<_, i64>(3)? - now,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn step_down(&self, holder: &str, epoch: u64, now_ms: i64) -> Result<(), StoreError> {
        let holder = holder.to_owned();
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let gone = tx.execute(
                "UPDATE lease SET expires_at_ms = ?3 WHERE id = 1 AND holder = ?1 AND epoch = ?2",
                params![holder, epoch, now_ms],
            )?;
            if gone == 1 {
                append_audit(&tx, &entries::leadership_released(&holder, epoch, now_ms))?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests;
