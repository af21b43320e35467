//! The replicated hubs' store: PostgreSQL, shared by every replica.
//!
//! The tables are SQLite's ([`super::sqlite`]) in PostgreSQL's types, and what one process's
//! single writer guaranteed there is guaranteed by the database here:
//! - `ledger_lsn` (a sequence, since version 2; version 1 took them from a locked `ledger_head`
//!   row, which made every upload wait for the one before it to commit): ledger positions. A
//!   plant's uploads are stored one at a time (an advisory lock on the plant, and its journal's
//!   row lock, `FOR UPDATE`, under which contiguity is checked), so within a plant positions
//!   become visible in order; across plants they need not, which is why the applier keeps a
//!   position per plant ([`super::Cursor`]).
//! - `ledger_once (plant, dedup)`: the unique index that makes a transaction sent again, to any
//!   replica, a duplicate of the first.
//! - `audit_head (id = 1, seq, hash)`: the audit chain's head; an append locks it, so the chain
//!   stays linear whichever replica appends. Triggers refuse updates and deletes of `audit`.
//! - `lease (id = 1, holder, address, epoch, expires_at)`: who leads (runs the coordinator and the
//!   applier) until when, by the database's clock; each new holder raises the epoch, which
//!   fences a deposed leader's batches in Odoo's inbox.
//!
//! - `plant_heartbeats (plant, at_ms, heartbeat)` (since version 3): each plant's latest
//!   heartbeat, written by the replica holding its agent, read by the leader's coordinator.
//! - No foreign keys on the ledger (since version 4): a trigger per stored row for what holds by
//!   construction (a row is inserted under its journal's row lock; see [`MIGRATE_TO_4`]).
//! - `journals.pending` (since version 5): the journal's pending rows, counted as they change.
//!
//! Migrations are numbered in `schema_version` and applied at start inside one transaction
//! holding an advisory lock, so replicas starting together migrate once. Durability is the
//! server's: a commit returns once PostgreSQL made it durable (`synchronous_commit`, which the
//! hub checks at start and refuses when it is `off`).

use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use holdfast_protocol::ManualNotice;
use tokio_postgres::Row;
use uuid::Uuid;

use super::entries;
use super::{
    AuditFilter, Backlog, JournalRow, JournalState, Leader, NewRecord, Outcome, PendingRow, PlantRow, QuarantinedRow,
    Release, Released, Revocation, Selection, Store, StoreError, TxnQuery, TxnRow,
};
use crate::audit::{self, AuditEntry, ChainedEntry, Checkpoint, Hash};

/// The schema this hub writes; a newer one in the database refuses to start.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
/// Version `k + 1` is made by `MIGRATIONS[k]` from version `k` (0: an empty database).
const MIGRATIONS: [&str; 5] = [SCHEMA_V1, MIGRATE_TO_2, MIGRATE_TO_3, MIGRATE_TO_4, MIGRATE_TO_5];
/// `pg_advisory_xact_lock` key of migrations ("holdfast" in ASCII, as a number).
const MIGRATION_LOCK: i64 = 0x686f6c6466617374;

const SCHEMA_V1: &str = r#"
CREATE TABLE journals (
    jn BIGSERIAL PRIMARY KEY,
    plant TEXT NOT NULL,
    journal_id UUID NOT NULL,
    epoch BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    stored_seq BIGINT NOT NULL DEFAULT 0,
    applied_seq BIGINT NOT NULL DEFAULT 0,
    UNIQUE (plant, journal_id),
    UNIQUE (plant, epoch)
);
CREATE TABLE ledger_head (id INT PRIMARY KEY CHECK (id = 1), lsn BIGINT NOT NULL);
INSERT INTO ledger_head VALUES (1, 0);
CREATE TABLE ledger (
    lsn BIGINT PRIMARY KEY,
    plant TEXT NOT NULL,
    journal BIGINT NOT NULL REFERENCES journals (jn),
    seq BIGINT NOT NULL,
    id UUID NOT NULL,
    dedup BYTEA NOT NULL,
    order_key TEXT NOT NULL,
    body BYTEA NOT NULL,
    crc BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'applied', 'quarantined', 'duplicate', 'parked')),
    duplicate_of BIGINT REFERENCES ledger (lsn),
    stored_at_ms BIGINT NOT NULL,
    applied_at_ms BIGINT,
    result TEXT,
    error_name TEXT,
    error_message TEXT
);
CREATE UNIQUE INDEX ledger_once ON ledger (plant, dedup) WHERE duplicate_of IS NULL;
CREATE INDEX ledger_pending ON ledger (lsn) WHERE state = 'pending';
CREATE INDEX ledger_open ON ledger (journal, seq) WHERE state IN ('pending', 'quarantined');
CREATE INDEX ledger_blocked ON ledger (plant, order_key) WHERE state = 'quarantined';
CREATE INDEX ledger_done ON ledger (applied_at_ms) WHERE state IN ('applied', 'parked');
CREATE INDEX ledger_duplicates ON ledger (duplicate_of) WHERE duplicate_of IS NOT NULL;
CREATE TABLE audit_head (id INT PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash BYTEA NOT NULL);
INSERT INTO audit_head VALUES (1, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL
);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TABLE plant_manual (
    plant TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    who TEXT NOT NULL,
    why TEXT NOT NULL,
    since_ms BIGINT NOT NULL,
    until_ms BIGINT
);
CREATE TABLE gateway_audit (
    plant TEXT NOT NULL,
    journal_id UUID NOT NULL,
    id BIGINT NOT NULL,
    PRIMARY KEY (plant, journal_id, id)
);
CREATE TABLE audit_checkpoints (
    head_seq BIGINT PRIMARY KEY,
    head_hash BYTEA NOT NULL,
    at_ms BIGINT NOT NULL,
    mac BYTEA NOT NULL
);
CREATE TABLE revocations (
    plant TEXT PRIMARY KEY,
    issued_before_ms BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE coordinator (
    id INT PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,
    saved_at_ms BIGINT NOT NULL
);
CREATE TABLE lease (
    id INT PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    address TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
"#;

/// Version 1 to 2: ledger positions from a sequence, each plant's uploads serialized by an
/// advisory lock instead of every upload by the `ledger_head` row (uploads of different plants
/// commit side by side; the applier keeps a position per plant).
const MIGRATE_TO_2: &str = r#"
CREATE SEQUENCE ledger_lsn INCREMENT BY 1024;
SELECT setval('ledger_lsn', GREATEST((SELECT lsn FROM ledger_head WHERE id = 1), (SELECT COALESCE(MAX(lsn), 0) FROM ledger)) + 1, false);
DROP TABLE ledger_head;
"#;

/// Version 2 to 3: each plant's latest heartbeat, from whichever replica holds its agent, for
/// the leader's coordinator.
const MIGRATE_TO_3: &str = r#"
CREATE TABLE plant_heartbeats (
    plant TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    heartbeat TEXT NOT NULL
);
"#;

/// Version 3 to 4: no foreign keys on the ledger. Each one was a trigger fired per stored row (a
/// lookup of the journal, and of the original for a duplicate: in `psql`, 200,000 ledger rows
/// took 2.05 s with them and 1.39 s without), and what they guarded holds by construction: a
/// row is inserted only in the transaction that holds its journal's row `FOR UPDATE`, journals
/// are never deleted, a duplicate points at the original found under the plant's lock in the
/// same transaction, and pruning deletes a duplicate with its original.
const MIGRATE_TO_4: &str = r#"
ALTER TABLE ledger DROP CONSTRAINT ledger_journal_fkey, DROP CONSTRAINT ledger_duplicate_of_fkey;
"#;

/// Version 4 to 5: each journal's pending rows counted in `journals`, changed in the
/// transaction that changes them, so a backlog (every observation round, every status page)
/// is read without counting the ledger.
const MIGRATE_TO_5: &str = r#"
ALTER TABLE journals ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;
UPDATE journals SET pending = (SELECT COUNT(*) FROM ledger l WHERE l.journal = journals.jn AND l.state = 'pending');
"#;

/// Positions each `nextval('ledger_lsn')` stands for (the sequence's increment).
const LSN_BLOCK: usize = 1024;

/// How the hub reaches PostgreSQL (`[store] postgres`).
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// A libpq connection string (`host=db.example port=5432 user=holdfast dbname=holdfast
    /// sslmode=require`) or URL.
    pub url: String,
    /// The authority that signed the server's certificate, for `sslmode=require`.
    pub ca: Option<std::path::PathBuf>,
    /// A file whose first line is the password.
    pub password_file: Option<std::path::PathBuf>,
    /// Connections the replica keeps at most.
    pub connections: usize,
}

/// The PostgreSQL store. Cloning shares the pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: Pool,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Unavailable(match e.as_db_error() {
            Some(db) => format!("PostgreSQL: {}: {}", db.code().code(), db.message()),
            None => format!("PostgreSQL: {e}"),
        })
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => StoreError::Unavailable(format!("PostgreSQL connection pool: {e}")),
        }
    }
}

fn u(v: i64) -> u64 {
    v as u64
}

fn i(v: u64) -> i64 {
    v as i64
}

fn to_hash(bytes: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    let n = bytes.len().min(32);
    h[..n].copy_from_slice(&bytes[..n]);
    h
}

impl PgStore {
    /// Connects, checks the server keeps commits durable, and migrates the schema (under an
    /// advisory lock: replicas starting together migrate once).
    pub async fn connect(opts: &PgOptions) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            opts.url.parse().map_err(|e| StoreError::Unavailable(format!("store.postgres does not parse: {e}")))?;
        if let Some(file) = &opts.password_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                StoreError::Unavailable(format!("store.postgres_password_file {}: {e}", file.display()))
            })?;
            config.password(text.lines().next().unwrap_or("").trim_end());
        }
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match &opts.ca {
            Some(ca) => Manager::from_config(config, tls(ca)?, manager_config),
            None if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require => {
                return Err(StoreError::Unavailable(
                    "store.postgres asks for TLS (sslmode=require): name the authority that signed the server's \
                     certificate in store.postgres_ca"
                        .into(),
                ));
            }
            // Without an authority to verify the server by, no TLS: `sslmode=prefer` (libpq's
            // default) then connects in plain, as it would after a failed handshake.
            None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(opts.connections.max(2))
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL connection pool: {e}")))?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.pool.get().await?;
        let durable: String = c.query_one("SHOW synchronous_commit", &[]).await?.get(0);
        if durable == "off" {
            return Err(StoreError::Unavailable(
                "PostgreSQL has synchronous_commit = off: a commit could be lost after the hub acknowledged it; \
                 set it to on (or remote_write, remote_apply with a synchronous standby)"
                    .into(),
            ));
        }
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now())")
            .await?;
        let version: i64 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[]).await?.get(0);
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found: version, supported: SCHEMA_VERSION });
        }
        for (to, migration) in MIGRATIONS.iter().enumerate().map(|(k, m)| (k as i64 + 1, m)) {
            if version < to {
                tx.batch_execute(migration).await?;
                tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&to]).await?;
                tracing::info!(version = to, "PostgreSQL store: migrated");
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// TLS to the database, the server verified against `ca` (and its name against the host).
fn tls(ca: &std::path::Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let bad = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("store.postgres_ca {}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

async fn journal_row(
    c: &impl GenericClient,
    plant: &str,
    journal_id: Uuid,
    lock: bool,
) -> Result<(i64, JournalState), StoreError> {
    let sql = if lock {
        "SELECT jn, stored_seq, applied_seq, epoch FROM journals WHERE plant = $1 AND journal_id = $2 FOR UPDATE"
    } else {
        "SELECT jn, stored_seq, applied_seq, epoch FROM journals WHERE plant = $1 AND journal_id = $2"
    };
    let stmt = c.prepare_cached(sql).await?;
    let row = c
        .query_opt(&stmt, &[&plant, &journal_id])
        .await?
        .ok_or_else(|| StoreError::UnknownJournal { plant: plant.to_owned(), journal_id })?;
    Ok((row.get(0), state_from(&row, 1)))
}

/// A journal's state from columns `stored_seq, applied_seq, epoch` starting at `first`.
fn state_from(row: &Row, first: usize) -> JournalState {
    JournalState {
        stored_seq: u(row.get(first)),
        applied_seq: u(row.get(first + 1)),
        epoch: row.get::<_, i64>(first + 2) as u32,
    }
}

/// Appends to the audit chain, its head locked until the caller's transaction ends.
async fn append_audit(c: &impl GenericClient, entry: &AuditEntry) -> Result<u64, StoreError> {
    let head = c.prepare_cached("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE").await?;
    let row = c.query_one(&head, &[]).await?;
    let (prev_seq, prev_hash): (i64, Vec<u8>) = (row.get(0), row.get(1));
    let prev_hash = to_hash(&prev_hash);
    let seq = u(prev_seq) + 1;
    let hash = audit::chain(&prev_hash, seq, entry);
    let insert = c
        .prepare_cached(
            "INSERT INTO audit (seq, at_ms, actor, action, target, reason, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    c.execute(
        &insert,
        &[
            &i(seq),
            &entry.at_ms,
            &entry.actor,
            &entry.action,
            &entry.target,
            &entry.reason,
            &prev_hash.as_slice(),
            &hash.as_slice(),
        ],
    )
    .await?;
    let set = c.prepare_cached("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1").await?;
    c.execute(&set, &[&i(seq), &hash.as_slice()]).await?;
    Ok(seq)
}

/// Recomputes the `applied_seq` of each journal in `touched` (journal number, and how many more
/// rows it has pending now); returns those that moved. The journals' rows are locked in their
/// order, so two transactions touching the same journals cannot deadlock on them.
async fn refresh_touched(
    c: &impl GenericClient,
    touched: &std::collections::BTreeMap<i64, i64>,
) -> Result<Vec<(String, Uuid, JournalState)>, StoreError> {
    if touched.is_empty() {
        return Ok(Vec::new());
    }
    let journals: Vec<i64> = touched.keys().copied().collect();
    let stmt = c
        .prepare_cached(
            "SELECT j.jn, j.plant, j.journal_id, j.stored_seq, j.applied_seq, j.epoch,
                    (SELECT MIN(l.seq) FROM ledger l WHERE l.journal = j.jn AND l.state IN ('pending', 'quarantined'))
             FROM journals j WHERE j.jn = ANY($1) ORDER BY j.jn FOR UPDATE OF j",
        )
        .await?;
    let update = c.prepare_cached("UPDATE journals SET applied_seq = $2, pending = pending + $3 WHERE jn = $1").await?;
    let mut moved = Vec::new();
    for row in c.query(&stmt, &[&journals]).await? {
        let jn: i64 = row.get(0);
        let before = state_from(&row, 3);
        let first_open: Option<i64> = row.get(6);
        let applied_seq = first_open.map_or(before.stored_seq, |f| u(f) - 1);
        let added = touched.get(&jn).copied().unwrap_or(0);
        if applied_seq != before.applied_seq || added != 0 {
            c.execute(&update, &[&jn, &i(applied_seq), &added]).await?;
        }
        if applied_seq != before.applied_seq {
            moved.push((row.get(1), row.get(2), JournalState { applied_seq, ..before }));
        }
    }
    Ok(moved)
}

fn manual_notice(r: &Row, first: usize) -> ManualNotice {
    ManualNotice {
        kind: r.get(first),
        who: r.get(first + 1),
        why: r.get(first + 2),
        since_ms: r.get(first + 3),
        until_ms: r.get(first + 4),
    }
}

async fn select_quarantined(
    c: &impl GenericClient,
    sel: &Selection,
    after_lsn: u64,
    limit: usize,
    lock: bool,
) -> Result<Vec<(QuarantinedRow, i64)>, StoreError> {
    let sql = format!(
        "SELECT l.lsn, l.plant, j.journal_id, l.seq, l.id, l.order_key, COALESCE(l.error_name, ''), COALESCE(l.error_message, ''), l.stored_at_ms, j.jn
         FROM ledger l JOIN journals j ON j.jn = l.journal
         WHERE l.state = 'quarantined'
           AND ($1::text IS NULL OR l.plant = $1) AND ($2::text IS NULL OR l.order_key = $2) AND ($3::text IS NULL OR l.error_name = $3)
           AND (cardinality($4::uuid[]) = 0 OR l.id = ANY($4)) AND l.lsn > $6
         ORDER BY l.lsn LIMIT $5{}",
        if lock { " FOR UPDATE OF l" } else { "" }
    );
    let stmt = c.prepare_cached(&sql).await?;
    let rows = c
        .query(
            &stmt,
            &[
                &sel.plant,
                &sel.order_key,
                &sel.error_name,
                &sel.ids,
                &(limit.min(i64::MAX as usize) as i64),
                &i(after_lsn),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let row = QuarantinedRow {
                lsn: u(r.get(0)),
                plant: r.get(1),
                journal_id: r.get(2),
                seq: u(r.get(3)),
                id: r.get(4),
                order_key: r.get(5),
                error_name: r.get(6),
                error_message: r.get(7),
                stored_at_ms: r.get(8),
            };
            (row, r.get(9))
        })
        .collect())
}

fn pending_row(r: &Row) -> PendingRow {
    PendingRow {
        lsn: u(r.get(0)),
        plant: r.get(1),
        journal_id: r.get(2),
        seq: u(r.get(3)),
        body: r.get(4),
        crc: r.get::<_, i64>(5) as u32,
    }
}

fn chained(r: &Row) -> ChainedEntry {
    ChainedEntry {
        seq: u(r.get(0)),
        entry: AuditEntry { at_ms: r.get(1), actor: r.get(2), action: r.get(3), target: r.get(4), reason: r.get(5) },
        prev_hash: to_hash(r.get(6)),
        hash: to_hash(r.get(7)),
    }
}

impl Store for PgStore {
    async fn open_journal(&self, plant: &str, journal_id: Uuid, now_ms: i64) -> Result<JournalState, StoreError> {
        let mut c = self.client().await?;
        if let Ok((_, state)) = journal_row(&c, plant, journal_id, false).await {
            return Ok(state);
        }
        let tx = c.transaction().await?;
        // Two replicas opening a plant's new journal at once: the lock makes the second see the first's.
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&plant]).await?;
        if let Ok((_, state)) = journal_row(&tx, plant, journal_id, false).await {
            return Ok(state);
        }
        let previous = tx
            .query_opt("SELECT journal_id, epoch FROM journals WHERE plant = $1 ORDER BY epoch DESC LIMIT 1", &[&plant])
            .await?;
        let previous = previous.map(|row| (row.get::<_, Uuid>(0), row.get::<_, i64>(1) as u32));
        let epoch = previous.map_or(1, |(_, e)| e + 1);
        tx.execute(
            "INSERT INTO journals (plant, journal_id, epoch, created_at_ms) VALUES ($1, $2, $3, $4)",
            &[&plant, &journal_id, &(epoch as i64), &now_ms],
        )
        .await?;
        append_audit(&tx, &entries::epoch_started(plant, journal_id, epoch, previous, now_ms)).await?;
        let (_, state) = journal_row(&tx, plant, journal_id, false).await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn journal_state(&self, plant: &str, journal_id: Uuid) -> Result<JournalState, StoreError> {
        let c = self.client().await?;
        Ok(journal_row(&c, plant, journal_id, false).await?.1)
    }

    async fn store_records(
        &self,
        plant: &str,
        journal_id: Uuid,
        records: Vec<NewRecord>,
        now_ms: i64,
    ) -> Result<JournalState, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // One upload of the plant at a time, whichever replica took it (its journals too): its
        // positions, taken next from the ledger's sequence (no lock across plants), then
        // become visible in their order. The three go in one round trip (pipelined, run in
        // order by the server); the sequence hands out blocks of LSN_BLOCK positions.
        let n = records.len();
        let lock = tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 2))").await?;
        let next =
            tx.prepare_cached("SELECT nextval('ledger_lsn') FROM generate_series(1::bigint, $1::bigint)").await?;
        let blocks = n.div_ceil(LSN_BLOCK) as i64;
        let (_, (jn, before), starts) = tokio::try_join!(
            async { Ok::<_, StoreError>(tx.execute(&lock, &[&plant]).await?) },
            journal_row(&tx, plant, journal_id, true),
            async { Ok::<_, StoreError>(tx.query(&next, &[&blocks]).await?) },
        )?;
        let mut expected = before.stored_seq + 1;
        for r in &records {
            if r.seq != expected {
                return Err(StoreError::NotContiguous { plant: plant.to_owned(), journal_id, expected, got: r.seq });
            }
            expected += 1;
        }
        if records.is_empty() {
            return Ok(before);
        }
        let mut starts: Vec<i64> = starts.iter().map(|r| r.get(0)).collect();
        starts.sort_unstable();
        let positions: Vec<i64> = starts.iter().flat_map(|s| *s..*s + LSN_BLOCK as i64).take(n).collect();
        let (mut lsns, mut seqs, mut ids, mut dedups, mut keys, mut bodies, mut crcs) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (k, r) in records.iter().enumerate() {
            lsns.push(positions[k]);
            seqs.push(i(r.seq));
            ids.push(r.id);
            dedups.push(r.dedup.as_slice());
            keys.push(r.order_key.as_str());
            bodies.push(r.body.as_slice());
            crcs.push(r.crc as i64);
        }
        // Every row in one plain INSERT: a transaction already in the ledger (ledger_once, rare)
        // makes it fail, and only then the batch goes again with ON CONFLICT, which skips those
        // to store them below as duplicates of the first (a speculative insertion per row costs a
        // quarter more when nothing conflicts, the common case).
        const COLUMNS: &str = "SELECT r.lsn, $1, $2, r.seq, r.id, r.dedup, r.order_key, r.body, r.crc, 'pending', $3
             FROM unnest($4::bigint[], $5::bigint[], $6::uuid[], $7::bytea[], $8::text[], $9::bytea[], $10::bigint[])
                  AS r (lsn, seq, id, dedup, order_key, body, crc)";
        let plain = tx
            .prepare_cached(&format!(
                "INSERT INTO ledger (lsn, plant, journal, seq, id, dedup, order_key, body, crc, state, stored_at_ms) {COLUMNS}"
            ))
            .await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] =
            [&plant, &jn, &now_ms, &lsns, &seqs, &ids, &dedups, &keys, &bodies, &crcs];
        let set =
            tx.prepare_cached("UPDATE journals SET stored_seq = $2, pending = pending + $3 WHERE jn = $1").await?;
        // The savepoint, the rows and the journal's new point in one round trip.
        let (stored, all_pending) = (i(expected - 1), n as i64);
        let point_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&jn, &stored, &all_pending];
        let (savepoint, rows, point) = tokio::join!(
            tx.batch_execute("SAVEPOINT batch"),
            tx.execute(&plain, &params),
            tx.execute(&set, &point_params),
        );
        savepoint?;
        match rows {
            Ok(_) => {
                point?;
                tx.commit().await?;
                return Ok(JournalState { stored_seq: expected - 1, ..before });
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e.into()),
        }
        // A transaction already in the ledger: the batch again, skipping those, which are then
        // stored as duplicates of the first; the journal's new point again (the savepoint
        // undid it).
        tx.batch_execute("ROLLBACK TO SAVEPOINT batch").await?;
        let skipping = tx
            .prepare_cached(&format!(
                "INSERT INTO ledger (lsn, plant, journal, seq, id, dedup, order_key, body, crc, state, stored_at_ms) {COLUMNS}
                 ON CONFLICT (plant, dedup) WHERE duplicate_of IS NULL DO NOTHING RETURNING lsn"
            ))
            .await?;
        let taken: std::collections::HashSet<i64> =
            tx.query(&skipping, &params).await?.iter().map(|r| r.get(0)).collect();
        let find = tx
            .prepare_cached("SELECT lsn FROM ledger WHERE plant = $1 AND dedup = $2 AND duplicate_of IS NULL")
            .await?;
        let duplicate = tx
            .prepare_cached(
                "INSERT INTO ledger (lsn, plant, journal, seq, id, dedup, order_key, body, crc, state, duplicate_of, stored_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'duplicate', $10, $11)",
            )
            .await?;
        for (r, lsn) in records.iter().zip(&positions) {
            if taken.contains(lsn) {
                continue;
            }
            let original: i64 = tx.query_one(&find, &[&plant, &r.dedup]).await?.get(0);
            tx.execute(
                &duplicate,
                &[
                    lsn,
                    &plant,
                    &jn,
                    &i(r.seq),
                    &r.id,
                    &r.dedup,
                    &r.order_key,
                    &r.body,
                    &(r.crc as i64),
                    &original,
                    &now_ms,
                ],
            )
            .await?;
        }
        tx.execute(&set, &[&jn, &stored, &(taken.len() as i64)]).await?;
        // A duplicate counts as done, so it may move applied_seq.
        let state = match refresh_touched(&tx, &[(jn, 0)].into()).await?.into_iter().next() {
            Some((_, _, state)) => state,
            None => journal_row(&tx, plant, journal_id, false).await?.1,
        };
        tx.commit().await?;
        Ok(state)
    }

    async fn set_plant_manual(
        &self,
        plant: &str,
        manual: Option<ManualNotice>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))", &[&plant]).await?;
        let before = tx
            .query_opt("SELECT kind, who, why, since_ms, until_ms FROM plant_manual WHERE plant = $1", &[&plant])
            .await?
            .map(|r| manual_notice(&r, 0));
        if before == manual {
            return Ok(false);
        }
        tx.execute("DELETE FROM plant_manual WHERE plant = $1", &[&plant]).await?;
        if let Some(m) = &manual {
            tx.execute(
                "INSERT INTO plant_manual (plant, kind, who, why, since_ms, until_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&plant, &m.kind, &m.who, &m.why, &m.since_ms, &m.until_ms],
            )
            .await?;
        }
        append_audit(&tx, &entries::manual_changed(plant, manual.as_ref(), now_ms)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn quarantined(
        &self,
        plant: &str,
        journal_id: Uuid,
        limit: usize,
        parked_since_ms: i64,
    ) -> Result<Vec<(u64, String, String, String)>, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT l.seq, l.state, COALESCE(l.error_name, ''), COALESCE(l.error_message, '') FROM ledger l JOIN journals j ON j.jn = l.journal
                 WHERE l.plant = $1 AND j.plant = $1 AND j.journal_id = $2
                   AND (l.state = 'quarantined' OR (l.state = 'parked' AND l.applied_at_ms >= $4))
                 ORDER BY l.seq LIMIT $3",
            )
            .await?;
        let rows = c.query(&stmt, &[&plant, &journal_id, &(limit as i64), &parked_since_ms]).await?;
        Ok(rows.iter().map(|r| (u(r.get(0)), r.get(1), r.get(2), r.get(3))).collect())
    }

    async fn quarantine_list(
        &self,
        sel: Selection,
        after_lsn: u64,
        limit: usize,
    ) -> Result<Vec<QuarantinedRow>, StoreError> {
        let c = self.client().await?;
        Ok(select_quarantined(&c, &sel, after_lsn, limit, false).await?.into_iter().map(|(row, _)| row).collect())
    }

    async fn release(
        &self,
        sel: Selection,
        action: Release,
        actor: String,
        reason: String,
        now_ms: i64,
    ) -> Result<Released, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let selected = select_quarantined(&tx, &sel, 0, i64::MAX as usize, true).await?;
        let retry = tx
            .prepare_cached(
                "UPDATE ledger SET state = 'pending', error_name = NULL, error_message = NULL WHERE lsn = $1 AND state = 'quarantined'",
            )
            .await?;
        let park = tx
            .prepare_cached(
                "UPDATE ledger SET state = 'parked', applied_at_ms = $2 WHERE lsn = $1 AND state = 'quarantined'",
            )
            .await?;
        // Per journal, the rows pending again.
        let mut journals = std::collections::BTreeMap::new();
        for (row, jn) in &selected {
            let pending_again = match action {
                Release::Retry => tx.execute(&retry, &[&i(row.lsn)]).await? as i64,
                Release::Park => {
                    tx.execute(&park, &[&i(row.lsn), &now_ms]).await?;
                    0
                }
            };
            append_audit(&tx, &entries::released(action, &actor, &reason, row, now_ms)).await?;
            *journals.entry(*jn).or_insert(0) += pending_again;
        }
        let moved = refresh_touched(&tx, &journals).await?;
        tx.commit().await?;
        Ok(Released { rows: selected.into_iter().map(|(row, _)| row).collect(), moved })
    }

    async fn append_gateway_audit(
        &self,
        plant: &str,
        journal_id: Uuid,
        records: Vec<holdfast_protocol::GatewayAuditRecord>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO gateway_audit (plant, journal_id, id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .await?;
        let mut new = 0;
        for r in records {
            if tx.execute(&insert, &[&plant, &journal_id, &i(r.id)]).await? == 1 {
                new += 1;
                append_audit(&tx, &entries::gateway_record(plant, r, now_ms)).await?;
            }
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn plant_manuals(&self) -> Result<Vec<(String, ManualNotice)>, StoreError> {
        let c = self.client().await?;
        let rows =
            c.query("SELECT plant, kind, who, why, since_ms, until_ms FROM plant_manual ORDER BY plant", &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), manual_notice(r, 1))).collect())
    }

    async fn skip_compacted(
        &self,
        plant: &str,
        journal_id: Uuid,
        from: u64,
        through: u64,
        now_ms: i64,
    ) -> Result<JournalState, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let (jn, before) = journal_row(&tx, plant, journal_id, true).await?;
        if through > before.stored_seq {
            tx.execute("UPDATE journals SET stored_seq = $2 WHERE jn = $1", &[&jn, &i(through)]).await?;
            append_audit(&tx, &entries::gap_compacted(plant, journal_id, before.stored_seq, from, through, now_ms))
                .await?;
        }
        refresh_touched(&tx, &[(jn, 0)].into()).await?;
        let state = journal_row(&tx, plant, journal_id, false).await?.1;
        tx.commit().await?;
        Ok(state)
    }

    async fn load_pending(&self, after: super::Cursor, limit: usize) -> Result<Vec<PendingRow>, StoreError> {
        let c = self.client().await?;
        let (plants, positions): (Vec<String>, Vec<i64>) = after.into_iter().map(|(p, lsn)| (p, i(lsn))).unzip();
        // Each plant from its own position: uploads of different plants commit side by side.
        let stmt = c
            .prepare_cached(
                "SELECT l.lsn, l.plant, j.journal_id, l.seq, l.body, l.crc FROM ledger l JOIN journals j ON j.jn = l.journal
                 WHERE l.state = 'pending'
                   AND l.lsn > COALESCE((SELECT c.after FROM unnest($1::text[], $3::bigint[]) AS c (plant, after) WHERE c.plant = l.plant), 0)
                   AND NOT EXISTS (SELECT 1 FROM ledger q WHERE q.state = 'quarantined' AND q.plant = l.plant AND q.order_key = l.order_key)
                   AND NOT EXISTS (SELECT 1 FROM plant_manual m WHERE m.plant = l.plant)
                 ORDER BY l.lsn LIMIT $2",
            )
            .await?;
        Ok(c.query(&stmt, &[&plants, &(limit as i64), &positions]).await?.iter().map(pending_row).collect())
    }

    async fn record_outcomes(&self, outcomes: Vec<Outcome>) -> Result<Vec<(String, Uuid, JournalState)>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let applied = tx
            .prepare_cached(
                "UPDATE ledger SET state = 'applied', applied_at_ms = $2, result = $3 WHERE lsn = $1 AND state = 'pending' RETURNING journal",
            )
            .await?;
        let quarantined = tx
            .prepare_cached(
                "UPDATE ledger SET state = 'quarantined', error_name = $2, error_message = $3 WHERE lsn = $1 AND state = 'pending'
                 RETURNING journal, plant, id, order_key",
            )
            .await?;
        // Per journal, the rows no longer pending (a row recorded before changes nothing).
        let mut touched = std::collections::BTreeMap::new();
        for outcome in &outcomes {
            let jn: Option<i64> = match outcome {
                Outcome::Applied { lsn, result, at_ms } => {
                    tx.query_opt(&applied, &[&i(*lsn), at_ms, &result.to_string()]).await?.map(|r| r.get(0))
                }
                Outcome::Quarantined { lsn, error_name, error_message, at_ms } => {
                    match tx.query_opt(&quarantined, &[&i(*lsn), error_name, error_message]).await? {
                        Some(r) => {
                            let (plant, id, order_key): (String, Uuid, String) = (r.get(1), r.get(2), r.get(3));
                            append_audit(
                                &tx,
                                &entries::quarantined(&plant, id, &order_key, error_name, error_message, *at_ms),
                            )
                            .await?;
                            Some(r.get(0))
                        }
                        None => None,
                    }
                }
            };
            if let Some(jn) = jn {
                *touched.entry(jn).or_insert(0) -= 1;
            }
        }
        let moved = refresh_touched(&tx, &touched).await?;
        tx.commit().await?;
        Ok(moved)
    }

    async fn plants(&self) -> Result<Vec<PlantRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT j.plant, j.journal_id, j.stored_seq, j.applied_seq, j.epoch,
                        (SELECT COUNT(*) FROM ledger q WHERE q.plant = j.plant AND q.state = 'quarantined')
                 FROM journals j
                 WHERE j.epoch = (SELECT MAX(epoch) FROM journals k WHERE k.plant = j.plant)
                 ORDER BY j.plant",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| PlantRow {
                plant: r.get(0),
                journal_id: r.get(1),
                state: state_from(r, 2),
                quarantined: u(r.get(5)),
            })
            .collect())
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let seq = append_audit(&tx, &entry).await?;
        tx.commit().await?;
        Ok(seq)
    }

    async fn prune_applied(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let lsns: Vec<i64> = tx
            .query(
                "SELECT lsn FROM ledger WHERE state IN ('applied', 'parked') AND applied_at_ms < $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&before_ms, &(limit as i64)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let duplicates = tx.execute("DELETE FROM ledger WHERE duplicate_of = ANY($1)", &[&lsns]).await?;
        let applied = tx.execute("DELETE FROM ledger WHERE lsn = ANY($1)", &[&lsns]).await?;
        tx.commit().await?;
        Ok(duplicates + applied)
    }

    async fn revoke(&self, r: Revocation) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO revocations (plant, issued_before_ms, at_ms, actor, reason) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (plant) DO UPDATE SET issued_before_ms = EXCLUDED.issued_before_ms, at_ms = EXCLUDED.at_ms,
                 actor = EXCLUDED.actor, reason = EXCLUDED.reason",
            &[&r.plant, &r.issued_before_ms, &r.at_ms, &r.actor, &r.reason],
        )
        .await?;
        append_audit(&tx, &entries::revoked(&r)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT plant, issued_before_ms, at_ms, actor, reason FROM revocations ORDER BY plant", &[])
            .await?;
        Ok(rows
            .iter()
            .map(|r| Revocation {
                plant: r.get(0),
                issued_before_ms: r.get(1),
                at_ms: r.get(2),
                actor: r.get(3),
                reason: r.get(4),
            })
            .collect())
    }

    async fn add_checkpoint(&self, cp: Checkpoint) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO audit_checkpoints (head_seq, head_hash, at_ms, mac) VALUES ($1, $2, $3, $4)
             ON CONFLICT (head_seq) DO UPDATE SET head_hash = EXCLUDED.head_hash, at_ms = EXCLUDED.at_ms, mac = EXCLUDED.mac",
            &[&i(cp.head_seq), &cp.head_hash.as_slice(), &cp.at_ms, &cp.mac.as_slice()],
        )
        .await?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let c = self.client().await?;
        let rows =
            c.query("SELECT head_seq, head_hash, at_ms, mac FROM audit_checkpoints ORDER BY head_seq", &[]).await?;
        Ok(rows
            .iter()
            .map(|r| Checkpoint {
                head_seq: u(r.get(0)),
                head_hash: to_hash(r.get(1)),
                at_ms: r.get(2),
                mac: to_hash(r.get(3)),
            })
            .collect())
    }

    async fn audit_head(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        let c = self.client().await?;
        let row = c.query_one("SELECT seq, hash FROM audit_head WHERE id = 1", &[]).await?;
        let seq: i64 = row.get(0);
        Ok((seq > 0).then(|| (u(seq), to_hash(row.get(1)))))
    }

    async fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<ChainedEntry>, StoreError> {
        self.audit_search(after, limit, AuditFilter::default()).await
    }

    async fn save_coordinator(&self, state: Option<String>, audit: Vec<AuditEntry>) -> Result<(), StoreError> {
        if state.is_none() && audit.is_empty() {
            return Ok(());
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        for entry in &audit {
            append_audit(&tx, entry).await?;
        }
        if let Some(state) = state {
            let at_ms = audit.last().map_or_else(crate::shared::now_ms, |e| e.at_ms);
            tx.execute(
                "INSERT INTO coordinator (id, state, saved_at_ms) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, saved_at_ms = EXCLUDED.saved_at_ms",
                &[&state, &at_ms],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load_coordinator(&self) -> Result<Option<String>, StoreError> {
        let c = self.client().await?;
        Ok(c.query_opt("SELECT state FROM coordinator WHERE id = 1", &[]).await?.map(|r| r.get(0)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT txid_current()", &[]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn pending_by_plant(&self) -> Result<Vec<Backlog>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT j.plant, SUM(j.pending)::bigint, MIN((SELECT l.stored_at_ms FROM ledger l
                                                              WHERE l.journal = j.jn AND l.state = 'pending' ORDER BY l.seq LIMIT 1))
                 FROM journals j WHERE j.pending > 0 GROUP BY j.plant ORDER BY j.plant",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| Backlog { plant: r.get(0), pending: u(r.get(1)), oldest_stored_ms: r.get(2) }).collect())
    }

    async fn transactions(&self, q: TxnQuery) -> Result<Vec<TxnRow>, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT l.lsn, l.plant, j.journal_id, l.seq, l.id, l.order_key, l.state, l.duplicate_of, l.stored_at_ms,
                        l.applied_at_ms, l.result, l.error_name, l.error_message, l.body, l.crc
                 FROM ledger l JOIN journals j ON j.jn = l.journal
                 WHERE l.lsn > $1 AND ($2::uuid IS NULL OR l.id = $2) AND ($3::text IS NULL OR l.plant = $3) AND ($4::text IS NULL OR l.state = $4)
                 ORDER BY l.lsn LIMIT $5",
            )
            .await?;
        let rows = c.query(&stmt, &[&i(q.after_lsn), &q.id, &q.plant, &q.state, &(q.limit as i64)]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let seq = u(r.get(3));
                let record = holdfast_protocol::Record { seq, body: r.get(13), crc: r.get::<_, i64>(14) as u32 };
                let result: Option<String> = r.get(10);
                TxnRow {
                    lsn: u(r.get(0)),
                    plant: r.get(1),
                    journal_id: r.get(2),
                    seq,
                    id: r.get(4),
                    order_key: r.get(5),
                    state: r.get(6),
                    duplicate_of: r.get::<_, Option<i64>>(7).map(u),
                    stored_at_ms: r.get(8),
                    applied_at_ms: r.get(9),
                    result: result.and_then(|t| serde_json::from_str(&t).ok()),
                    error_name: r.get(11),
                    error_message: r.get(12),
                    transaction: record.verify().ok().and_then(|t| serde_json::to_value(t).ok()),
                }
            })
            .collect())
    }

    async fn audit_search(&self, after: u64, limit: usize, f: AuditFilter) -> Result<Vec<ChainedEntry>, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT seq, at_ms, actor, action, target, reason, prev_hash, hash FROM audit
                 WHERE seq > $1 AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR action = $3)
                   AND ($4::text IS NULL OR left(target, length($4)) = $4)
                   AND ($5::bigint IS NULL OR at_ms >= $5) AND ($6::bigint IS NULL OR at_ms < $6)
                 ORDER BY seq LIMIT $7",
            )
            .await?;
        let rows = c
            .query(
                &stmt,
                &[
                    &i(after),
                    &f.actor,
                    &f.action,
                    &f.target,
                    &f.since_ms,
                    &f.until_ms,
                    &(limit.min(i64::MAX as usize) as i64),
                ],
            )
            .await?;
        Ok(rows.iter().map(chained).collect())
    }

    async fn journals(&self, plant: &str) -> Result<Vec<JournalRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT journal_id, epoch, created_at_ms, stored_seq, applied_seq FROM journals WHERE plant = $1 ORDER BY epoch",
                &[&plant],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| JournalRow {
                journal_id: r.get(0),
                epoch: r.get::<_, i64>(1) as u32,
                created_at_ms: r.get(2),
                stored_seq: u(r.get(3)),
                applied_seq: u(r.get(4)),
            })
            .collect())
    }

    async fn applied_since(&self, from_ms: i64, after_lsn: u64, limit: usize) -> Result<Vec<PendingRow>, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT l.lsn, l.plant, j.journal_id, l.seq, l.body, l.crc FROM ledger l JOIN journals j ON j.jn = l.journal
                 WHERE l.state = 'applied' AND l.applied_at_ms >= $1 AND l.lsn > $2
                 ORDER BY l.lsn LIMIT $3",
            )
            .await?;
        Ok(c.query(&stmt, &[&from_ms, &i(after_lsn), &(limit as i64)]).await?.iter().map(pending_row).collect())
    }

    async fn lease(&self, holder: &str, address: &str, ttl: Duration, now_ms: i64) -> Result<Option<u64>, StoreError> {
        let ttl_ms = ttl.as_millis() as i64;
        let mut c = self.client().await?;
        // Kept: extended by the database's clock while this holder still has it.
        let renew = c
            .prepare_cached(
                "UPDATE lease SET expires_at = clock_timestamp() + $2 * interval '1 millisecond'
                 WHERE id = 1 AND holder = $1 AND expires_at > clock_timestamp() RETURNING epoch",
            )
            .await?;
        if let Some(row) = c.query_opt(&renew, &[&holder, &(ttl_ms as f64)]).await? {
            return Ok(Some(u(row.get(0))));
        }
        let tx = c.transaction().await?;
        let current = tx
            .query_opt("SELECT holder, epoch, expires_at <= clock_timestamp() FROM lease WHERE id = 1 FOR UPDATE", &[])
            .await?;
        let previous: Option<(String, i64)> = match current {
            None => None,
            Some(row) => {
                let (was, epoch, expired): (String, i64, bool) = (row.get(0), row.get(1), row.get(2));
                if !expired {
                    return Ok(None);
                }
                Some((was, epoch))
            }
        };
        let epoch = previous.as_ref().map_or(1, |(_, e)| e + 1);
        tx.execute(
            "INSERT INTO lease (id, holder, address, epoch, expires_at) VALUES (1, $1, $2, $3, clock_timestamp() + $4 * interval '1 millisecond')
             ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, address = EXCLUDED.address, epoch = EXCLUDED.epoch, expires_at = EXCLUDED.expires_at",
            &[&holder, &address, &epoch, &(ttl_ms as f64)],
        )
        .await?;
        append_audit(
            &tx,
            &entries::leadership_taken(
                holder,
                address,
                u(epoch),
                previous.as_ref().map(|(w, e)| (w.as_str(), u(*e))),
                now_ms,
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(u(epoch)))
    }

    async fn leader(&self) -> Result<Option<Leader>, StoreError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT holder, address, epoch, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint FROM lease WHERE id = 1",
            &[],
        )
        .await?
        .map(|r| Leader { holder: r.get(0), address: r.get(1), epoch: u(r.get(2)), expires_in_ms: r.get(3) }))
    }

    async fn save_heartbeat(&self, plant: &str, at_ms: i64, heartbeat: String) -> Result<(), StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO plant_heartbeats (plant, at_ms, heartbeat) VALUES ($1, $2, $3)
                 ON CONFLICT (plant) DO UPDATE SET at_ms = EXCLUDED.at_ms, heartbeat = EXCLUDED.heartbeat
                 WHERE plant_heartbeats.at_ms <= EXCLUDED.at_ms",
            )
            .await?;
        c.execute(&stmt, &[&plant, &at_ms, &heartbeat]).await?;
        Ok(())
    }

    async fn heartbeats(&self) -> Result<Vec<(String, i64, String)>, StoreError> {
        let c = self.client().await?;
        let rows = c.query("SELECT plant, at_ms, heartbeat FROM plant_heartbeats ORDER BY plant", &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    async fn step_down(&self, holder: &str, epoch: u64, now_ms: i64) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let gone = tx
            .execute(
                "UPDATE lease SET expires_at = clock_timestamp() WHERE id = 1 AND holder = $1 AND epoch = $2",
                &[&holder, &i(epoch)],
            )
            .await?;
        if gone == 1 {
            append_audit(&tx, &entries::leadership_released(holder, epoch, now_ms)).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
