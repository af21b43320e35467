//! The agent's journal: every transaction, committed durably before it is acknowledged.
//!
//! On-disk format (SQLite, schema version 1 in `PRAGMA user_version`):
//! - `state`: one row with the `journal_id` (a UUIDv7 made when the journal is created), the
//!   last assigned sequence, and the hub's watermarks `stored_seq` and `applied_seq`.
//! - `manual` (since version 3): plant IT's manual state (offline or isolated, who, why, since,
//!   until), at most one row; `audit (id, at_ms, actor, action, reason)`: every change of it.
//! - `rejected (id, at_ms, ingest, topic, reason, payload)` (since version 2): payloads that could
//!   not be transactions, kept with their raw bytes so nothing a producer sent is lost unseen.
//! - `txn (seq, id, dedup, received_at_ms, body, crc)`: `seq` is assigned here, consecutive
//!   from 1; `dedup` (since version 4) is a keyed transaction's source, device and key, unique
//!   (a resend finds its first sequence), NULL for an unkeyed one; `body` is the transaction's
//!   canonical encoding, exactly the bytes that travel to the hub, `crc` their CRC-32C.
//!   Indexes: `txn_dedup` on `dedup`, and `txn_id` on `(seq >> ID_BUCKET_BITS, id)` for lookups
//!   by id. Neither is keyed on the id alone: a keyed id is a hash, and an index on it takes
//!   every new row to a random page, which made every commit and every checkpoint write pages
//!   all over the index (BENCHMARKS.md, "the id index"). Keys that ascend per device, as
//!   counters and work-order steps do, append to `txn_dedup`; `txn_id` is written within its
//!   newest bucket only. A lookup by id probes each bucket held, newest first.
//!
//! Migrations run at open, one version at a time, each in its own transaction.
//!
//! Durability: WAL with `synchronous=FULL`. One writer thread owns the write connection and
//! group-commits whatever is queued (up to [`GROUP_REQUESTS_MAX`] requests) in one SQLite
//! transaction, then answers every request of the group: nothing is acknowledged before its
//! commit. A failed commit answers the whole group with the error and assigns nothing.
//! Checkpoints run on a thread of their own, never inside a commit. `PRAGMA integrity_check` runs at open. Rows are deleted only when the hub reports them
//! applied (`applied_seq`) and they are older than the retention.
//!
//! Capacity: [`Limits`] in rows, body bytes and free disk. A request that would pass one is
//! refused whole with [`JournalError::Full`] (nothing of it is journaled) and the journal raises
//! its `journal_full` alarm until a later request fits again; nothing journaled is ever dropped
//! to make room. [`Usage`] is published after every commit.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_protocol::Record;
use holdfast_protocol::msg::Ack;
use holdfast_protocol::txn::{SourceKind, Transaction, body_checksum};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::mode::{ManualKind, ManualState};

/// Requests queued for the writer, at most; producers wait (back-pressure) beyond it.
pub const WRITER_QUEUE_MAX: usize = 1024;
/// Requests committed together in one SQLite transaction, at most.
pub const GROUP_REQUESTS_MAX: usize = 256;

const SCHEMA_VERSION: i64 = 4;
/// Rows per bucket of the `txn_id` index (2^10): a new row's entry lands among the newest
/// bucket's few pages (about 8), and a lookup by id probes one bucket per 1,024 sequences held
/// (about 1 ms per 200,000 rows). With 2^13 a commit still rewrote about 10 of a bucket's 60
/// pages and (d)'s p99.9 was longer (BENCHMARKS.md).
pub const ID_BUCKET_BITS: u32 = 10;
const SCHEMA: &str = r#"
CREATE TABLE state (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    journal_id BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    stored_seq INTEGER NOT NULL,
    applied_seq INTEGER NOT NULL
);
CREATE TABLE txn (
    seq INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    received_at_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    crc INTEGER NOT NULL
);
"#;
/// Version 1 to 2: the `rejected` table.
const MIGRATE_TO_2: &str = r#"
CREATE TABLE rejected (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    ingest TEXT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL
);
"#;
/// Version 2 to 3: plant IT's manual state and the local audit records.
const MIGRATE_TO_3: &str = r#"
CREATE TABLE manual (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    kind TEXT NOT NULL CHECK (kind IN ('offline', 'isolated')),
    who TEXT NOT NULL,
    why TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    until_ms INTEGER
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL
);
"#;
/// Version 3 to 4: resends are found by `dedup` (source, device, key) instead of by a unique
/// index on the id; the table is rebuilt (a column constraint cannot be dropped) and `dedup`
/// filled from each keyed row's body by [`migrate_to_4`].
const MIGRATE_TO_4: &str = r#"
CREATE TABLE txn_v4 (
    seq INTEGER PRIMARY KEY,
    id BLOB NOT NULL,
    dedup BLOB,
    received_at_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    crc INTEGER NOT NULL
);
INSERT INTO txn_v4 (seq, id, dedup, received_at_ms, body, crc) SELECT seq, id, NULL, received_at_ms, body, crc FROM txn;
DROP TABLE txn;
ALTER TABLE txn_v4 RENAME TO txn;
"#;
const INDEXES_4: &str = r#"
CREATE UNIQUE INDEX txn_dedup ON txn (dedup) WHERE dedup IS NOT NULL;
CREATE INDEX txn_id ON txn (seq >> 10, id);
"#;
/// Most rejected payloads kept; the oldest are deleted beyond it (they are counted, not needed).
pub const REJECTED_ROWS_MAX: u64 = 10_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("the journal is full: {0}")]
    Full(String),
    #[error("journal {path}: integrity check failed: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("journal schema version {found} is newer than this agent understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("journal error: {0}")]
    Database(String),
    #[error("the journal writer has stopped")]
    Stopped,
}

impl From<rusqlite::Error> for JournalError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Self::Full(e.to_string()),
            _ => Self::Database(e.to_string()),
        }
    }
}

/// Capacity limits of the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub rows_max: u64,
    /// Sum of transaction body bytes held.
    pub bytes_max: u64,
    /// Free space to leave on the journal's filesystem.
    pub disk_free_min: u64,
}

impl Limits {
    /// No limit: for tools that open a journal only to read or export it.
    pub const NONE: Limits = Limits { rows_max: u64::MAX, bytes_max: u64::MAX, disk_free_min: 0 };
}

/// SQLite needs room beyond the body bytes (row overhead, index, WAL): the disk check counts this
/// many bytes per body byte.
const DISK_BYTES_PER_BODY_BYTE: u64 = 3;
/// The ingest rate is measured over this many seconds.
const RATE_WINDOW_S: i64 = 60;

/// The `journal_full` alarm.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FullAlarm {
    pub since_ms: i64,
    pub message: String,
}

/// How full the journal is, published after every commit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub rows: u64,
    pub bytes: u64,
    /// Free bytes on the journal's filesystem at the last commit, if known.
    pub disk_free: Option<u64>,
    pub full: Option<FullAlarm>,
    /// Rows and bytes appended per second over the last minute.
    pub rows_per_s: f64,
    pub bytes_per_s: f64,
    /// Payloads rejected since the journal was created.
    pub rejected: u64,
    /// Group commits and the transactions they journaled since the journal was opened: their ratio
    /// is the mean group size.
    pub commits: u64,
    pub committed_rows: u64,
}

impl Usage {
    /// Seconds until a limit is reached at the current ingest rate; `None` when nothing comes in.
    pub fn time_to_full_s(&self, limits: &Limits) -> Option<u64> {
        let mut best: Option<f64> = None;
        let mut consider = |headroom: f64, rate: f64| {
            if rate > 0.0 {
                let t = (headroom.max(0.0)) / rate;
                best = Some(best.map_or(t, |b: f64| b.min(t)));
            }
        };
        consider(limits.rows_max.saturating_sub(self.rows) as f64, self.rows_per_s);
        consider(limits.bytes_max.saturating_sub(self.bytes) as f64, self.bytes_per_s);
        if let Some(free) = self.disk_free {
            consider(
                free.saturating_sub(limits.disk_free_min) as f64,
                self.bytes_per_s * DISK_BYTES_PER_BODY_BYTE as f64,
            );
        }
        best.map(|t| t.round() as u64)
    }
}

/// Appends per second bucket over the last [`RATE_WINDOW_S`] seconds, keyed by the entries' own
/// receipt times (the writer reads no clock).
#[derive(Clone, Debug, Default)]
struct RateWindow {
    buckets: std::collections::VecDeque<(i64, u64, u64)>,
}

impl RateWindow {
    fn record(&mut self, at_ms: i64, rows: u64, bytes: u64) {
        let second = at_ms.div_euclid(1000);
        match self.buckets.back_mut() {
            Some((s, r, b)) if *s == second => {
                *r += rows;
                *b += bytes;
            }
            _ => self.buckets.push_back((second, rows, bytes)),
        }
        while self.buckets.front().is_some_and(|(s, _, _)| *s <= second - RATE_WINDOW_S) {
            self.buckets.pop_front();
        }
    }

    fn rates(&self) -> (f64, f64) {
        let (rows, bytes) = self.buckets.iter().fold((0, 0), |(r, b), (_, rr, bb)| (r + rr, b + bb));
        (rows as f64 / RATE_WINDOW_S as f64, bytes as f64 / RATE_WINDOW_S as f64)
    }
}

/// A transaction ready to journal: its id, resend identity and canonical body.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: Uuid,
    /// What makes a resend the same transaction: [`dedup_name`] of a keyed transaction, `None`
    /// for an unkeyed one (every arrival is a new transaction).
    pub dedup: Option<Vec<u8>>,
    pub received_at_ms: i64,
    pub body: Vec<u8>,
}

impl Entry {
    /// The entry for a parsed transaction and its encoded body.
    pub fn of(txn: &Transaction, body: Vec<u8>) -> Self {
        Self {
            id: txn.id,
            dedup: txn.key.as_deref().map(|k| dedup_name(txn.source, &txn.device, k)),
            received_at_ms: txn.received_at_ms,
            body,
        }
    }
}

/// A keyed transaction's identity within its plant's journal: the name its id is derived from
/// ([`Transaction::keyed_id`]) without the plant, which is the same for every row. Keys that
/// ascend per device give ascending names, so new rows append to the index.
pub fn dedup_name(source: SourceKind, device: &str, key: &str) -> Vec<u8> {
    [source.as_str(), device, key].join("\0").into_bytes()
}

/// A payload that could not be a transaction, kept as received.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    pub at_ms: i64,
    /// Which ingest path it came by: `mqtt` or `tcp`.
    pub ingest: String,
    /// The MQTT topic, or the station's name.
    pub topic: String,
    pub reason: String,
    #[serde(serialize_with = "lossy_text")]
    pub payload: Vec<u8>,
}

fn lossy_text<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

/// The journal's answer for one entry (serialized as HTTP ingest's answer for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Appended {
    pub id: Uuid,
    pub seq: u64,
    /// The id was already journaled (a resend): `seq` is the first one's.
    pub duplicate: bool,
}

/// Where the journal stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalState {
    pub journal_id: Uuid,
    pub last_seq: u64,
    pub stored_seq: u64,
    pub applied_seq: u64,
}

enum Request {
    Append {
        entries: Vec<Entry>,
        reply: oneshot::Sender<Result<Vec<Appended>, JournalError>>,
    },
    Watermarks {
        ack: Ack,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    Compact {
        older_than_ms: i64,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    Reject {
        items: Vec<Rejected>,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    Manual {
        state: Option<ManualState>,
        audit: AuditRecord,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// Answered from inside a write transaction: the writer and the database both move.
    Ping {
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// After what was queued before it: the write-ahead log checkpointed into the database and
    /// truncated, then the writer stops.
    Close {
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
}

/// A local audit record: who did what to the gateway, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub at_ms: i64,
    /// `user:<name>` for plant IT, `agent` for the agent itself.
    pub actor: String,
    /// Such as `manual_offline_on`.
    pub action: String,
    pub reason: String,
}

/// Writes to the journal through its writer thread. Cloning shares the writer.
#[derive(Clone, Debug)]
pub struct Journal {
    tx: mpsc::Sender<Request>,
    last_seq: watch::Receiver<u64>,
    usage: watch::Receiver<Usage>,
    /// Shared with the writer thread; a config reload replaces them.
    limits: Arc<Mutex<Limits>>,
    reader: Reader,
    wal: Arc<WalFrames>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Request::Append { .. } => "Append",
            Request::Watermarks { .. } => "Watermarks",
            Request::Compact { .. } => "Compact",
            Request::Reject { .. } => "Reject",
            Request::Manual { .. } => "Manual",
            Request::Ping { .. } => "Ping",
            Request::Close { .. } => "Close",
        })
    }
}

/// Reads the journal on its own connection (WAL readers never block the writer).
#[derive(Clone, Debug)]
pub struct Reader {
    conn: Arc<Mutex<Connection>>,
}

fn configure(conn: &Connection) -> Result<(), JournalError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(())
}

/// Opens or creates the journal without starting a writer: for `status` while the agent is
/// stopped, and for the writer itself.
pub fn open_connection(path: &Path, now_ms: i64) -> Result<Connection, JournalError> {
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(JournalError::Corrupt { path: path.display().to_string(), detail: check });
    }
    let mut version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(JournalError::SchemaTooNew { found: version, supported: SCHEMA_VERSION });
    }
    if version == 0 {
        let id = Uuid::now_v7();
        conn.execute_batch(&format!("BEGIN; {SCHEMA} PRAGMA user_version = 1;"))?;
        conn.execute("INSERT INTO state VALUES (1, ?1, ?2, 0, 0, 0)", params![id.as_bytes(), now_ms])?;
        conn.execute_batch("COMMIT;")?;
        version = 1;
    }
    if version == 1 {
        conn.execute_batch(&format!("BEGIN; {MIGRATE_TO_2} PRAGMA user_version = 2; COMMIT;"))?;
        version = 2;
    }
    if version == 2 {
        conn.execute_batch(&format!("BEGIN; {MIGRATE_TO_3} PRAGMA user_version = 3; COMMIT;"))?;
        version = 3;
    }
    if version == 3 {
        migrate_to_4(&mut conn)?;
    }
    Ok(conn)
}

/// Rebuilds `txn` without the unique index on `id`, fills `dedup` from each keyed row's body,
/// then builds the indexes (one transaction: a crash leaves version 3 as it was).
fn migrate_to_4(conn: &mut Connection) -> Result<(), JournalError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(MIGRATE_TO_4)?;
    {
        let mut rows = tx.prepare("SELECT seq, body FROM txn")?;
        let mut set = tx.prepare("UPDATE txn SET dedup = ?2 WHERE seq = ?1")?;
        let mut rows = rows.query([])?;
        while let Some(row) = rows.next()? {
            let (seq, body): (i64, Vec<u8>) = (row.get(0)?, row.get(1)?);
            let txn: Transaction = holdfast_protocol::codec::from_slice(&body).map_err(|e| {
                JournalError::Database(format!("migrating to version 4: the body of seq {seq} does not decode: {e}"))
            })?;
            if let Some(key) = &txn.key {
                set.execute(params![seq, dedup_name(txn.source, &txn.device, key)])?;
            }
        }
    }
    tx.execute_batch(&format!("{INDEXES_4} PRAGMA user_version = 4;"))?;
    tx.commit()?;
    Ok(())
}

impl Journal {
    /// Opens the journal and starts its writer thread.
    pub fn open(path: &Path, now_ms: i64, limits: Limits) -> Result<Self, JournalError> {
        let mut writer = open_connection(path, now_ms)?;
        // Checkpoints run on their own thread and connection (see `checkpoint_loop`), not in
        // the commit path: an automatic checkpoint fsyncs the database file inside the commit
        // that crossed the threshold, and everything queued behind it waited (BENCHMARKS.md).
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Connection::open(path)?;
        configure(&checkpointer)?;
        let (checkpoint_tx, checkpoint_rx) = std::sync::mpsc::sync_channel(1);
        let wal = Arc::new(WalFrames::default());
        // After each commit SQLite reports the frames in the WAL; past the threshold the
        // checkpoint thread is woken (a full channel means it is already at work).
        let frames_seen = wal.clone();
        let mut next_wake = CHECKPOINT_FRAMES;
        writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, frames: std::ffi::c_int| {
            frames_seen.in_wal.store(frames, std::sync::atomic::Ordering::Release);
            if frames < next_wake - CHECKPOINT_FRAMES {
                next_wake = CHECKPOINT_FRAMES; // the WAL started afresh
            }
            // One pass per CHECKPOINT_FRAMES new frames, as SQLite's own cadence.
            if frames >= next_wake {
                next_wake = frames + CHECKPOINT_FRAMES;
                let _ = checkpoint_tx.try_send(());
            }
            Ok(())
        }))?;
        let frames_copied = wal.clone();
        let journal_wal = wal.clone();
        std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, checkpoint_rx, &frames_copied))
            .map_err(|e| JournalError::Database(e.to_string()))?;
        let read = Connection::open(path)?;
        configure(&read)?;
        let reader = Reader { conn: Arc::new(Mutex::new(read)) };
        let state = reader.state_blocking()?;
        let (rows, bytes) = reader.count_blocking()?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
        let rejected = reader.rejected_count_blocking()?;
        let usage = Usage { rows, bytes, disk_free: disk_free(&dir), rejected, ..Usage::default() };
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_MAX);
        let (seq_tx, last_seq) = watch::channel(state.last_seq);
        let (usage_tx, usage_rx) = watch::channel(usage.clone());
        let limits = Arc::new(Mutex::new(limits));
        let writer_state = Writer {
            conn: writer,
            limits: limits.clone(),
            dir,
            last_seq: state.last_seq,
            usage,
            rate: RateWindow::default(),
            wal,
            inline_at: 0,
        };
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(writer_state, rx, seq_tx, usage_tx))
            .map_err(|e| JournalError::Database(e.to_string()))?;
        Ok(Self { tx, last_seq, usage: usage_rx, limits, reader, wal: journal_wal })
    }

    /// The WAL's frames after the last commit, and those the last checkpoint pass left it
    /// fully copied at (-1 when it did not catch up).
    pub fn wal_frames(&self) -> (i32, i32) {
        use std::sync::atomic::Ordering;
        (self.wal.in_wal.load(Ordering::Acquire), self.wal.caught_up_at.load(Ordering::Acquire))
    }

    /// How full the journal is, as of the last commit.
    pub fn usage(&self) -> Usage {
        self.usage.borrow().clone()
    }

    pub fn limits(&self) -> Limits {
        *self.limits.lock().expect("limits lock")
    }

    /// Replaces the limits (a config reload): the next append is judged by them.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock().expect("limits lock") = limits;
    }

    /// Journals entries durably; the answer comes after the commit.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<Vec<Appended>, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Append { entries, reply }).await.map_err(|_| JournalError::Stopped)?;
        rx.await.map_err(|_| JournalError::Stopped)?
    }

    /// Persists the hub's watermarks.
    pub async fn set_watermarks(&self, ack: Ack) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Watermarks { ack, reply }).await.map_err(|_| JournalError::Stopped)?;
        rx.await.map_err(|_| JournalError::Stopped)?
    }

    /// Deletes applied rows received before `older_than_ms`; returns how many.
    pub async fn compact(&self, older_than_ms: i64) -> Result<u64, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Compact { older_than_ms, reply }).await.map_err(|_| JournalError::Stopped)?;
        rx.await.map_err(|_| JournalError::Stopped)?
    }

    /// Keeps payloads that could not be transactions, durably, before their producer is answered.
    pub async fn reject(&self, items: Vec<Rejected>) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Reject { items, reply }).await.map_err(|_| JournalError::Stopped)?;
        rx.await.map_err(|_| JournalError::Stopped)?
    }

    /// Sets (or clears) plant IT's manual state and journals the audit record of the change, in
    /// one transaction.
    pub async fn set_manual(&self, state: Option<ManualState>, audit: AuditRecord) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Manual { state, audit, reply }).await.map_err(|_| JournalError::Stopped)?;
        rx.await.map_err(|_| JournalError::Stopped)?
    }

    /// Answers once the writer has been through a write transaction (the service watchdog's
    /// proof that journaling moves: a writer stuck on its disk or its database never answers).
    pub async fn ping(&self) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Ping { reply }).await.map_err(|_| JournalError::Stopped)?;
        rx.await.map_err(|_| JournalError::Stopped)?
    }

    /// Stops the writer once everything queued before is committed, after checkpointing the
    /// write-ahead log into the database (a stopped agent leaves one file, whole). Appends after
    /// it answer [`JournalError::Stopped`].
    pub async fn close(&self) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Close { reply }).await.map_err(|_| JournalError::Stopped)?;
        rx.await.map_err(|_| JournalError::Stopped)?
    }

    /// The last assigned sequence, updated after each commit.
    pub fn last_seq(&self) -> watch::Receiver<u64> {
        self.last_seq.clone()
    }

    pub fn reader(&self) -> &Reader {
        &self.reader
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    limits: Arc<Mutex<Limits>>,
    dir: std::path::PathBuf,
    last_seq: u64,
    usage: Usage,
    rate: RateWindow,
    wal: Arc<WalFrames>,
    /// The WAL's frames at the writer's last own checkpoint.
    inline_at: std::ffi::c_int,
}

/// What the writer and the checkpoint thread know of the WAL.
#[derive(Debug, Default)]
pub struct WalFrames {
    /// Frames in the WAL after the last commit (SQLite's WAL hook).
    pub in_wal: std::sync::atomic::AtomicI32,
    /// The WAL's frames when the last checkpoint pass copied every one of them; -1 when it did not.
    pub caught_up_at: std::sync::atomic::AtomicI32,
}

/// How long the writer must have committed nothing before the checkpoint thread copies the
/// rest of the WAL, so that the next commit starts it afresh.
pub const CHECKPOINT_QUIET: Duration = Duration::from_millis(100);

/// WAL frames past which the writer copies the rest itself after a commit (a short checkpoint
/// in its own path): the bound on the WAL under load that never pauses (64 MiB of 4 KiB pages).
pub const WAL_FRAMES_MAX: std::ffi::c_int = 16_384;

/// New WAL frames after which the checkpoint thread makes a pass (16 MiB of 4 KiB pages), four
/// times SQLite's own cadence: ids are random, so commits rewrite index pages all over the
/// index, and rarer passes write each distinct page fewer times (BENCHMARKS.md has the runs).
pub const CHECKPOINT_FRAMES: std::ffi::c_int = 4000;

/// Copies committed WAL frames into the database file without blocking the writer
/// (`PASSIVE`): when the WAL hook passes [`CHECKPOINT_FRAMES`], and when the writer has been
/// quiet for [`CHECKPOINT_QUIET`] with frames left uncopied. SQLite starts the WAL afresh only
/// at a commit that finds every frame copied; under steady load a pass never catches up (the
/// writer keeps appending), so the quiet pass is what restarts it, and past [`WAL_FRAMES_MAX`]
/// the writer catches up itself. Ends when the journal is dropped.
fn checkpoint_loop(conn: Connection, wake: std::sync::mpsc::Receiver<()>, wal: &WalFrames) {
    use std::sync::atomic::Ordering;
    use std::sync::mpsc::RecvTimeoutError;
    let mut last_seen = -1;
    loop {
        match wake.recv_timeout(CHECKPOINT_QUIET) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => {
                let now = wal.in_wal.load(Ordering::Acquire);
                let quiet = now == last_seen;
                last_seen = now;
                if !quiet || now == 0 || wal.caught_up_at.load(Ordering::Acquire) == now {
                    continue;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i32>(1)?, r.get::<_, i32>(2)?))) {
            Ok((log, copied)) => wal.caught_up_at.store(if copied == log { log } else { -1 }, Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "journal checkpoint failed; the next one retries"),
        }
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn disk_free(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

fn write_loop(
    mut w: Writer,
    mut rx: mpsc::Receiver<Request>,
    seq_tx: watch::Sender<u64>,
    usage_tx: watch::Sender<Usage>,
) {
    while let Some(first) = rx.blocking_recv() {
        if let Request::Close { reply } = first {
            let _ = reply.send(w.close());
            return;
        }
        let mut group = vec![first];
        let mut close = None;
        while group.len() < GROUP_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(Request::Close { reply }) => {
                    close = Some(reply);
                    break;
                }
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let before = (w.last_seq, w.usage.clone(), w.rate.clone());
        match w.commit_group(&group) {
            Ok(answers) => {
                seq_tx.send_replace(w.last_seq);
                usage_tx.send_replace(w.usage.clone());
                for (request, answer) in group.into_iter().zip(answers) {
                    answer_request(request, answer);
                }
            }
            Err(e) => {
                // Nothing of the group was committed.
                (w.last_seq, w.usage, w.rate) = before;
                for request in group {
                    answer_request(request, Err(e.clone()));
                }
            }
        }
        if let Some(reply) = close {
            let _ = reply.send(w.close());
            return;
        }
    }
}

enum Answer {
    Appended(Vec<Appended>),
    Done,
    Compacted(u64),
}

fn answer_request(request: Request, answer: Result<Answer, JournalError>) {
    // A requester that went away (a dropped HTTP connection) simply misses its answer.
    match (request, answer) {
        (Request::Append { reply, .. }, Ok(Answer::Appended(a))) => drop(reply.send(Ok(a))),
        (Request::Watermarks { reply, .. }, Ok(Answer::Done)) => drop(reply.send(Ok(()))),
        (Request::Compact { reply, .. }, Ok(Answer::Compacted(n))) => drop(reply.send(Ok(n))),
        (Request::Append { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (Request::Watermarks { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (Request::Compact { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (Request::Reject { reply, .. }, Ok(Answer::Done)) => drop(reply.send(Ok(()))),
        (Request::Reject { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (Request::Manual { reply, .. }, Ok(Answer::Done)) => drop(reply.send(Ok(()))),
        (Request::Manual { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (Request::Ping { reply }, Ok(Answer::Done)) => drop(reply.send(Ok(()))),
        (Request::Ping { reply }, Err(e)) => drop(reply.send(Err(e))),
        (Request::Close { .. }, _) => unreachable!("the writer answers a close itself"),
        (_, Ok(_)) => unreachable!("answers are made per request kind"),
    }
}

/// Replaces the manual state and records the change, inside the caller's transaction.
fn write_manual(tx: &Connection, state: Option<&ManualState>, audit: &AuditRecord) -> Result<(), JournalError> {
    tx.execute("DELETE FROM manual", [])?;
    if let Some(m) = state {
        tx.execute(
            "INSERT INTO manual (only, kind, who, why, since_ms, until_ms) VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![m.kind.as_str(), m.who, m.why, m.since_ms, m.until_ms],
        )?;
    }
    tx.execute(
        "INSERT INTO audit (at_ms, actor, action, reason) VALUES (?1, ?2, ?3, ?4)",
        params![audit.at_ms, audit.actor, audit.action, audit.reason],
    )?;
    Ok(())
}

/// Sets the manual state in a journal file directly, whether or not an agent has it open (SQLite
/// serializes the writers; a running agent notices within [`crate::run::MANUAL_POLL`]).
pub fn set_manual_direct(path: &Path, state: Option<&ManualState>, audit: &AuditRecord) -> Result<(), JournalError> {
    let mut conn = open_connection(path, audit.at_ms)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    write_manual(&tx, state, audit)?;
    tx.commit()?;
    Ok(())
}

/// Why `rows` more rows of `bytes` body bytes do not fit, if they do not.
fn refusal(l: &Limits, u: &Usage, rows: u64, bytes: u64, disk_free: Option<u64>) -> Option<String> {
    if u.rows + rows > l.rows_max {
        return Some(format!("it holds {} transactions and its limit is {} (journal.rows_max)", u.rows, l.rows_max));
    }
    if u.bytes + bytes > l.bytes_max {
        return Some(format!("it holds {} bytes and its limit is {} (journal.bytes_max)", u.bytes, l.bytes_max));
    }
    if let Some(free) = disk_free
        && free.saturating_sub(bytes * DISK_BYTES_PER_BODY_BYTE) < l.disk_free_min
    {
        return Some(format!(
            "{free} bytes are free on its disk and at least {} must stay free (journal.disk_free_min)",
            l.disk_free_min
        ));
    }
    None
}

impl Writer {
    /// Checkpoints the whole write-ahead log into the database and truncates it.
    fn close(&mut self) -> Result<(), JournalError> {
        let busy: i32 = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            return Err(JournalError::Database("the closing checkpoint found the database busy".into()));
        }
        Ok(())
    }

    /// Runs a group in one SQLite transaction. A request that does not fit is answered with
    /// `Full` and the others go on; an error of SQLite itself fails the whole group.
    fn commit_group(&mut self, group: &[Request]) -> Result<Vec<Result<Answer, JournalError>>, JournalError> {
        let mut disk_free = disk_free(&self.dir);
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut seq = self.last_seq;
        let mut answers = Vec::with_capacity(group.len());
        {
            let mut find = tx.prepare_cached("SELECT seq FROM txn WHERE dedup = ?1")?;
            // One index probe per new keyed row: a resend inserts nothing and is then looked up.
            let mut insert = tx.prepare_cached(
                "INSERT INTO txn (seq, id, dedup, received_at_ms, body, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (dedup) WHERE dedup IS NOT NULL DO NOTHING",
            )?;
            for request in group {
                match request {
                    Request::Append { entries, .. } => {
                        let bytes: u64 = entries.iter().map(|e| e.body.len() as u64).sum();
                        let at_ms = entries.first().map_or(0, |e| e.received_at_ms);
                        let limits = *self.limits.lock().expect("limits lock");
                        if let Some(why) = refusal(&limits, &self.usage, entries.len() as u64, bytes, disk_free) {
                            let message = format!("the journal is full: {why}");
                            if self.usage.full.is_none() {
                                self.usage.full = Some(FullAlarm { since_ms: at_ms, message: message.clone() });
                            }
                            answers.push(Err(JournalError::Full(why)));
                            continue;
                        }
                        let mut out = Vec::with_capacity(entries.len());
                        let (mut rows_added, mut bytes_added) = (0, 0);
                        for e in entries {
                            let inserted = insert.execute(params![
                                seq + 1,
                                e.id.as_bytes(),
                                e.dedup,
                                e.received_at_ms,
                                e.body,
                                body_checksum(&e.body)
                            ])?;
                            if inserted == 0 {
                                let first = find.query_row(params![e.dedup], |r| r.get::<_, u64>(0))?;
                                out.push(Appended { id: e.id, seq: first, duplicate: true });
                                continue;
                            }
                            seq += 1;
                            out.push(Appended { id: e.id, seq, duplicate: false });
                            rows_added += 1;
                            bytes_added += e.body.len() as u64;
                        }
                        self.usage.rows += rows_added;
                        self.usage.bytes += bytes_added;
                        disk_free = disk_free.map(|f| f.saturating_sub(bytes_added * DISK_BYTES_PER_BODY_BYTE));
                        self.rate.record(at_ms, rows_added, bytes_added);
                        self.usage.full = None;
                        answers.push(Ok(Answer::Appended(out)));
                    }
                    Request::Watermarks { ack, .. } => {
                        tx.execute(
                            "UPDATE state SET stored_seq = MAX(stored_seq, ?1), applied_seq = MAX(applied_seq, ?2)",
                            params![ack.stored_seq.min(seq), ack.applied_seq.min(ack.stored_seq).min(seq)],
                        )?;
                        answers.push(Ok(Answer::Done));
                    }
                    Request::Reject { items, .. } => {
                        for r in items {
                            tx.execute(
                                "INSERT INTO rejected (at_ms, ingest, topic, reason, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
                                params![r.at_ms, r.ingest, r.topic, r.reason, r.payload],
                            )?;
                        }
                        tx.execute(
                            "DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - ?1",
                            params![REJECTED_ROWS_MAX],
                        )?;
                        self.usage.rejected += items.len() as u64;
                        answers.push(Ok(Answer::Done));
                    }
                    Request::Manual { state, audit, .. } => {
                        write_manual(&tx, state.as_ref(), audit)?;
                        answers.push(Ok(Answer::Done));
                    }
                    Request::Ping { .. } => answers.push(Ok(Answer::Done)),
                    Request::Close { .. } => unreachable!("the write loop keeps a close out of groups"),
                    Request::Compact { older_than_ms, .. } => {
                        const DONE: &str = "seq <= (SELECT applied_seq FROM state) AND received_at_ms < ?1";
                        let (rows, bytes): (u64, u64) = tx.query_row(
                            &format!("SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM txn WHERE {DONE}"),
                            params![older_than_ms],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )?;
                        tx.execute(&format!("DELETE FROM txn WHERE {DONE}"), params![older_than_ms])?;
                        self.usage.rows -= rows;
                        self.usage.bytes -= bytes;
                        // Only freed room can end the alarm: a pass that deleted nothing leaves
                        // the journal as full as when it refused.
                        let limits = *self.limits.lock().expect("limits lock");
                        if rows > 0 && refusal(&limits, &self.usage, 1, 0, disk_free).is_none() {
                            self.usage.full = None;
                        }
                        answers.push(Ok(Answer::Compacted(rows)));
                    }
                }
            }
        }
        tx.prepare_cached("UPDATE state SET last_seq = ?1")?.execute(params![seq])?;
        tx.commit()?;
        let in_wal = self.wal.in_wal.load(std::sync::atomic::Ordering::Acquire);
        if in_wal < self.inline_at {
            self.inline_at = 0; // the WAL started afresh
        }
        if in_wal >= WAL_FRAMES_MAX && in_wal >= self.inline_at + CHECKPOINT_FRAMES {
            // Committed already: a failure here only leaves the WAL to the next pass. When the
            // thread's pass is running (busy) this tries again after the next commit; otherwise
            // only after another CHECKPOINT_FRAMES, since a reader's old snapshot can keep a pass
            // from copying everything and this must not then run after every commit.
            match self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i32>(0)) {
                Ok(0) => self.inline_at = in_wal,
                Ok(_) => {}
                Err(e) => {
                    self.inline_at = in_wal;
                    tracing::warn!(error = %e, "journal checkpoint failed; the next one retries");
                }
            }
        }
        self.usage.commits += 1;
        self.usage.committed_rows += seq - self.last_seq;
        self.last_seq = seq;
        self.usage.disk_free = disk_free;
        (self.usage.rows_per_s, self.usage.bytes_per_s) = self.rate.rates();
        Ok(answers)
    }
}

/// The lookup by id: the buckets held, newest first, each searched in `txn_id`. Written as the
/// index is (`INDEXES_4`), or the planner would not use it; `CROSS JOIN` keeps the buckets the
/// outer loop (without statistics SQLite may otherwise scan the whole index).
fn find_sql() -> String {
    format!(
        "WITH RECURSIVE bucket(b) AS ( \
             SELECT MAX(seq) >> {ID_BUCKET_BITS} FROM txn \
             UNION ALL SELECT b - 1 FROM bucket WHERE b > (SELECT MIN(seq) >> {ID_BUCKET_BITS} FROM txn)) \
         SELECT seq FROM bucket CROSS JOIN txn WHERE seq >> {ID_BUCKET_BITS} = bucket.b AND id = ?1 LIMIT 1"
    )
}

impl Reader {
    /// Opens a reader on an existing journal (for `status` while the agent is stopped).
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, JournalError> {
        self.conn.lock().map_err(|_| JournalError::Database("a journal read panicked earlier".into()))
    }

    pub fn state_blocking(&self) -> Result<JournalState, JournalError> {
        let c = self.lock()?;
        let state = c.query_row("SELECT journal_id, last_seq, stored_seq, applied_seq FROM state", [], |r| {
            Ok(JournalState {
                journal_id: Uuid::from_slice(&r.get::<_, Vec<u8>>(0)?).unwrap_or_default(),
                last_seq: r.get(1)?,
                stored_seq: r.get(2)?,
                applied_seq: r.get(3)?,
            })
        })?;
        Ok(state)
    }

    /// Rows held and their body bytes, counted (a full scan: at open and for a stopped agent).
    pub fn count_blocking(&self) -> Result<(u64, u64), JournalError> {
        let c = self.lock()?;
        Ok(c.query_row("SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM txn", [], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    /// Plant IT's manual state, if any.
    pub fn manual_blocking(&self) -> Result<Option<ManualState>, JournalError> {
        let c = self.lock()?;
        let row = c
            .query_row("SELECT kind, who, why, since_ms, until_ms FROM manual", [], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        Ok(row.and_then(|(kind, who, why, since_ms, until_ms)| {
            Some(ManualState { kind: ManualKind::parse(&kind)?, who, why, since_ms, until_ms })
        }))
    }

    /// The newest local audit records, newest first.
    pub fn audit_blocking(&self, limit: usize) -> Result<Vec<AuditRecord>, JournalError> {
        let c = self.lock()?;
        let mut stmt = c.prepare_cached("SELECT at_ms, actor, action, reason FROM audit ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok(AuditRecord { at_ms: r.get(0)?, actor: r.get(1)?, action: r.get(2)?, reason: r.get(3)? })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The newest `limit` audit records with their ids, oldest first (for the hub's trail).
    pub fn audit_for_hub_blocking(&self, limit: usize) -> Result<Vec<(u64, AuditRecord)>, JournalError> {
        let c = self.lock()?;
        let mut stmt = c.prepare_cached(
            "SELECT id, at_ms, actor, action, reason FROM (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    AuditRecord { at_ms: r.get(1)?, actor: r.get(2)?, action: r.get(3)?, reason: r.get(4)? },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// How many payloads were ever rejected (ids are never reused).
    pub fn rejected_count_blocking(&self) -> Result<u64, JournalError> {
        let c = self.lock()?;
        Ok(c.query_row("SELECT COALESCE(MAX(id), 0) FROM rejected", [], |r| r.get(0))?)
    }

    /// The newest rejected payloads, newest first.
    pub fn rejected_blocking(&self, limit: usize) -> Result<Vec<Rejected>, JournalError> {
        let c = self.lock()?;
        let mut stmt =
            c.prepare_cached("SELECT at_ms, ingest, topic, reason, payload FROM rejected ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok(Rejected {
                    at_ms: r.get(0)?,
                    ingest: r.get(1)?,
                    topic: r.get(2)?,
                    reason: r.get(3)?,
                    payload: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Up to `max` consecutive records after `after_seq`.
    pub fn read_blocking(&self, after_seq: u64, max: usize) -> Result<Vec<Record>, JournalError> {
        let c = self.lock()?;
        let mut stmt = c.prepare_cached("SELECT seq, body, crc FROM txn WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt
            .query_map(params![after_seq, max as i64], |r| {
                Ok(Record { seq: r.get(0)?, body: r.get(1)?, crc: r.get(2)? })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The sequence of a journaled id, if it is still held: one probe of `txn_id` per bucket
    /// held, newest first, all in one statement.
    pub fn find_blocking(&self, id: Uuid) -> Result<Option<u64>, JournalError> {
        let c = self.lock()?;
        Ok(c.prepare_cached(&find_sql())?.query_row(params![id.as_bytes()], |r| r.get(0)).optional()?)
    }

    pub async fn state(&self) -> Result<JournalState, JournalError> {
        let r = self.clone();
        tokio::task::spawn_blocking(move || r.state_blocking())
            .await
            .map_err(|e| JournalError::Database(e.to_string()))?
    }

    pub async fn read(&self, after_seq: u64, max: usize) -> Result<Vec<Record>, JournalError> {
        let r = self.clone();
        tokio::task::spawn_blocking(move || r.read_blocking(after_seq, max))
            .await
            .map_err(|e| JournalError::Database(e.to_string()))?
    }

    pub async fn manual(&self) -> Result<Option<ManualState>, JournalError> {
        let r = self.clone();
        tokio::task::spawn_blocking(move || r.manual_blocking())
            .await
            .map_err(|e| JournalError::Database(e.to_string()))?
    }

    pub async fn find(&self, id: Uuid) -> Result<Option<u64>, JournalError> {
        let r = self.clone();
        tokio::task::spawn_blocking(move || r.find_blocking(id))
            .await
            .map_err(|e| JournalError::Database(e.to_string()))?
    }
}

#[cfg(test)]
mod tests;
