//! The agent's journal: every transaction, committed durably before it is acknowledged.
//!
//! On-disk format (SQLite, schema version 1 in `PRAGMA user_version`):
//! - `state`: one row with the `journal_id` (a UUIDv7 made when the journal is created), the
//!   last assigned sequence, and the hub's watermarks `stored_seq` and `applied_seq`.
//! - `txn (seq, id, received_at_ms, body, crc)`: `seq` is assigned here, consecutive from 1;
//!   `id` is unique (a resend of a keyed transaction finds its first sequence); `body` is the
//!   transaction's canonical encoding, exactly the bytes that travel to the hub, `crc` their
//!   CRC-32C.
//!
//! Durability: WAL with `synchronous=FULL`. One writer thread owns the write connection and
//! group-commits whatever is queued (up to [`GROUP_REQUESTS_MAX`] requests) in one SQLite
//! transaction, then answers every request of the group: nothing is acknowledged before its
//! commit. A failed commit answers the whole group with the error and assigns nothing.
//! `PRAGMA integrity_check` runs at open. Rows are deleted only when the hub reports them
//! applied (`applied_seq`) and they are older than the retention.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_protocol::Record;
use holdfast_protocol::msg::Ack;
use holdfast_protocol::txn::body_checksum;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

/// Requests queued for the writer, at most; producers wait (back-pressure) beyond it.
pub const WRITER_QUEUE_MAX: usize = 1024;
/// Requests committed together in one SQLite transaction, at most.
pub const GROUP_REQUESTS_MAX: usize = 256;

const SCHEMA_VERSION: i64 = 1;
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

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("the journal's disk is full: {0}")]
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

/// A transaction ready to journal: its id and canonical body.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: Uuid,
    pub received_at_ms: i64,
    pub body: Vec<u8>,
}

/// The journal's answer for one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Rows still held (not yet compacted).
    pub rows: u64,
}

enum Request {
    Append { entries: Vec<Entry>, reply: oneshot::Sender<Result<Vec<Appended>, JournalError>> },
    Watermarks { ack: Ack, reply: oneshot::Sender<Result<(), JournalError>> },
    Compact { older_than_ms: i64, reply: oneshot::Sender<Result<u64, JournalError>> },
}

/// Writes to the journal through its writer thread. Cloning shares the writer.
#[derive(Clone, Debug)]
pub struct Journal {
    tx: mpsc::Sender<Request>,
    last_seq: watch::Receiver<u64>,
    reader: Reader,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Request::Append { .. } => "Append",
            Request::Watermarks { .. } => "Watermarks",
            Request::Compact { .. } => "Compact",
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
    let conn = Connection::open(path)?;
    configure(&conn)?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(JournalError::Corrupt { path: path.display().to_string(), detail: check });
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        0 => {
            let id = Uuid::now_v7();
            conn.execute_batch(&format!("BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};"))?;
            conn.execute("INSERT INTO state VALUES (1, ?1, ?2, 0, 0, 0)", params![id.as_bytes(), now_ms])?;
            conn.execute_batch("COMMIT;")?;
        }
        SCHEMA_VERSION => {}
        found => return Err(JournalError::SchemaTooNew { found, supported: SCHEMA_VERSION }),
    }
    Ok(conn)
}

impl Journal {
    /// Opens the journal and starts its writer thread.
    pub fn open(path: &Path, now_ms: i64) -> Result<Self, JournalError> {
        let writer = open_connection(path, now_ms)?;
        let read = Connection::open(path)?;
        configure(&read)?;
        let reader = Reader { conn: Arc::new(Mutex::new(read)) };
        let state = reader.state_blocking()?;
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_MAX);
        let (seq_tx, last_seq) = watch::channel(state.last_seq);
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(writer, rx, seq_tx, state.last_seq))
            .map_err(|e| JournalError::Database(e.to_string()))?;
        Ok(Self { tx, last_seq, reader })
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

    /// The last assigned sequence, updated after each commit.
    pub fn last_seq(&self) -> watch::Receiver<u64> {
        self.last_seq.clone()
    }

    pub fn reader(&self) -> &Reader {
        &self.reader
    }
}

fn write_loop(mut conn: Connection, mut rx: mpsc::Receiver<Request>, seq_tx: watch::Sender<u64>, mut last_seq: u64) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let mut answers = Vec::with_capacity(group.len());
        let result = commit_group(&mut conn, &group, &mut last_seq, &mut answers);
        match result {
            Ok(()) => {
                seq_tx.send_replace(last_seq);
                for (request, answer) in group.into_iter().zip(answers) {
                    answer_request(request, Ok(answer));
                }
            }
            Err(e) => {
                // Nothing of the group was committed: reload what the disk holds.
                last_seq = conn.query_row("SELECT last_seq FROM state", [], |r| r.get(0)).unwrap_or(last_seq);
                for request in group {
                    answer_request(request, Err(e.clone()));
                }
            }
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
        (_, Ok(_)) => unreachable!("answers are made per request kind"),
    }
}

fn commit_group(
    conn: &mut Connection,
    group: &[Request],
    last_seq: &mut u64,
    answers: &mut Vec<Answer>,
) -> Result<(), JournalError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut seq = *last_seq;
    {
        let mut find = tx.prepare_cached("SELECT seq FROM txn WHERE id = ?1")?;
        let mut insert =
            tx.prepare_cached("INSERT INTO txn (seq, id, received_at_ms, body, crc) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for request in group {
            match request {
                Request::Append { entries, .. } => {
                    let mut out = Vec::with_capacity(entries.len());
                    for e in entries {
                        if let Some(first) =
                            find.query_row(params![e.id.as_bytes()], |r| r.get::<_, u64>(0)).optional()?
                        {
                            out.push(Appended { id: e.id, seq: first, duplicate: true });
                            continue;
                        }
                        seq += 1;
                        insert.execute(params![
                            seq,
                            e.id.as_bytes(),
                            e.received_at_ms,
                            e.body,
                            body_checksum(&e.body)
                        ])?;
                        out.push(Appended { id: e.id, seq, duplicate: false });
                    }
                    answers.push(Answer::Appended(out));
                }
                Request::Watermarks { ack, .. } => {
                    tx.execute(
                        "UPDATE state SET stored_seq = MAX(stored_seq, ?1), applied_seq = MAX(applied_seq, ?2)",
                        params![ack.stored_seq.min(seq), ack.applied_seq.min(ack.stored_seq).min(seq)],
                    )?;
                    answers.push(Answer::Done);
                }
                Request::Compact { older_than_ms, .. } => {
                    let n = tx.execute(
                        "DELETE FROM txn WHERE seq <= (SELECT applied_seq FROM state) AND received_at_ms < ?1",
                        params![older_than_ms],
                    )?;
                    answers.push(Answer::Compacted(n as u64));
                }
            }
        }
    }
    tx.execute("UPDATE state SET last_seq = ?1", params![seq])?;
    tx.commit()?;
    *last_seq = seq;
    Ok(())
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
        let state = c.query_row(
            "SELECT journal_id, last_seq, stored_seq, applied_seq, (SELECT COUNT(*) FROM txn) FROM state",
            [],
            |r| {
                Ok(JournalState {
                    journal_id: Uuid::from_slice(&r.get::<_, Vec<u8>>(0)?).unwrap_or_default(),
                    last_seq: r.get(1)?,
                    stored_seq: r.get(2)?,
                    applied_seq: r.get(3)?,
                    rows: r.get(4)?,
                })
            },
        )?;
        Ok(state)
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

    /// The sequence of a journaled id, if it is still held.
    pub fn find_blocking(&self, id: Uuid) -> Result<Option<u64>, JournalError> {
        let c = self.lock()?;
        Ok(c.query_row("SELECT seq FROM txn WHERE id = ?1", params![id.as_bytes()], |r| r.get(0)).optional()?)
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

    pub async fn find(&self, id: Uuid) -> Result<Option<u64>, JournalError> {
        let r = self.clone();
        tokio::task::spawn_blocking(move || r.find_blocking(id))
            .await
            .map_err(|e| JournalError::Database(e.to_string()))?
    }
}

#[cfg(test)]
mod tests;
