use super::*;
use serde_json::json;

use crate::store::Cursor;
use crate::store::conformance::{Fixture, J1, J2, rec, store_conformance};

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
    (dir, store)
}

/// The SQLite store in a temporary folder, for the shared conformance suite.
struct SqliteFixture {
    dir: tempfile::TempDir,
    store: SqliteStore,
}

impl Fixture for SqliteFixture {
    type S = SqliteStore;

    async fn open() -> Self {
        let (dir, store) = open();
        Self { dir, store }
    }

    fn store(&self) -> &SqliteStore {
        &self.store
    }

    async fn reopen(self) -> Self {
        let Self { dir, store } = self;
        drop(store);
        let store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
        Self { dir, store }
    }

    async fn replica(&self) -> Option<SqliteStore> {
        None
    }
}

store_conformance!(SqliteFixture);

#[test]
fn a_corrupted_file_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    std::fs::write(&path, b"this is not a database, just bytes that look nothing like one...").unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Database(_) | StoreError::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn a_version_1_store_is_migrated_and_still_finds_its_transactions_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let txn = holdfast_protocol::Transaction {
        id: holdfast_protocol::Transaction::keyed_id("plant-a", holdfast_protocol::SourceKind::Mes, "line-3", "wo-1"),
        plant: "plant-a".into(),
        source: holdfast_protocol::SourceKind::Mes,
        device: "line-3".into(),
        key: Some("wo-1".into()),
        order_key: "plant-a".into(),
        received_at_ms: 1,
        occurred_at_ms: None,
        op: holdfast_protocol::Operation::OdooCall(holdfast_protocol::OdooCall {
            model: "res.users".into(),
            method: "context_get".into(),
            args: json!([]),
            kwargs: Default::default(),
        }),
    };
    let body = txn.encode_body().unwrap();
    {
        // As version 1 left it: ledger_once on the id.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(&format!("BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;")).unwrap();
        c.execute("INSERT INTO journals (plant, journal_id, epoch, created_at_ms, stored_seq) VALUES ('plant-a', ?1, 1, 0, 1)", [J1.as_bytes()])
            .unwrap();
        c.execute(
            "INSERT INTO ledger (plant, journal_id, seq, id, order_key, body, crc, state, stored_at_ms) VALUES ('plant-a', ?1, 1, ?2, 'plant-a', ?3, 0, 'pending', 0)",
            rusqlite::params![J1.as_bytes(), txn.id.as_bytes(), body],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    // The same transaction from a replaced gateway's journal: a duplicate of the first.
    store.open_journal("plant-a", J2, 2).await.unwrap();
    let again = NewRecord {
        seq: 1,
        id: txn.id,
        dedup: crate::store::dedup_of(&txn),
        order_key: "plant-a".into(),
        body,
        crc: 0,
    };
    assert_eq!(again.dedup, b"kmes\0line-3\0wo-1".to_vec());
    store.store_records("plant-a", J2, vec![again], 3).await.unwrap();
    let pending: Vec<(Uuid, u64)> =
        store.load_pending(Cursor::default(), 10).await.unwrap().iter().map(|p| (p.journal_id, p.seq)).collect();
    assert_eq!(pending, vec![(J1, 1)], "the resend is a duplicate, never pending twice");
    let backlog: Vec<(String, u64)> =
        store.pending_by_plant().await.unwrap().into_iter().map(|b| (b.plant, b.pending)).collect();
    assert_eq!(backlog, [("plant-a".to_string(), 1)], "counted by the migration, not raised by the duplicate");
    let version: i64 = store.conn.lock().unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION, "migrated to the newest");
}

#[tokio::test]
async fn a_version_2_ledger_is_rebuilt_keeping_every_lsn_state_and_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        // Version 2 as it was: filled through the version 2 schema's own columns.
        let mut c = Connection::open(&path).unwrap();
        c.execute_batch(&format!("BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;")).unwrap();
        migrate_to_2(&mut c).unwrap();
        for (jid, epoch, stored, applied) in [(J1, 1, 3, 1), (J2, 2, 1, 1)] {
            c.execute(
                "INSERT INTO journals (plant, journal_id, epoch, created_at_ms, stored_seq, applied_seq) VALUES ('plant-a', ?1, ?2, 0, ?3, ?4)",
                rusqlite::params![jid.as_bytes(), epoch, stored, applied],
            )
            .unwrap();
        }
        let row = |lsn: i64, jid: Uuid, seq: u64, dedup: &[u8], state: &str, dup: Option<i64>, error: Option<&str>| {
            c.execute(
                "INSERT INTO ledger (lsn, plant, journal_id, seq, id, dedup, order_key, body, crc, state, duplicate_of, stored_at_ms, error_name)
                 VALUES (?1, 'plant-a', ?2, ?3, x'00', ?4, CASE ?5 WHEN 'quarantined' THEN 'q' ELSE 'k' END, x'01', 0, ?5, ?6, 0, ?7)",
                rusqlite::params![lsn, jid.as_bytes(), seq, dedup, state, dup, error],
            )
            .unwrap();
        };
        row(10, J1, 1, b"ia", "applied", None, None);
        row(11, J1, 2, b"ib", "quarantined", None, Some("ValidationError"));
        row(12, J1, 3, b"ic", "pending", None, None);
        row(20, J2, 1, b"ia", "duplicate", Some(10), None);
    }
    let store = SqliteStore::open(&path).unwrap();
    let rows: Vec<(i64, i64, u64, String, Option<i64>)> = {
        let c = store.conn.lock().unwrap();
        assert_eq!(c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(), SCHEMA_VERSION);
        c
        .prepare(
            "SELECT l.lsn, j.epoch, l.seq, l.state, l.duplicate_of FROM ledger l JOIN journals j ON j.jn = l.journal ORDER BY l.lsn",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    assert_eq!(
        rows,
        vec![
            (10, 1, 1, "applied".into(), None),
            (11, 1, 2, "quarantined".into(), None),
            (12, 1, 3, "pending".into(), None),
            (20, 2, 1, "duplicate".into(), Some(10)),
        ]
    );
    assert_eq!(
        store.quarantined("plant-a", J1, 10, 0).await.unwrap(),
        vec![(2, "quarantined".into(), "ValidationError".into(), String::new())]
    );
    let pending: Vec<(u64, Uuid, u64)> =
        store.load_pending(Cursor::default(), 10).await.unwrap().iter().map(|p| (p.lsn, p.journal_id, p.seq)).collect();
    assert_eq!(pending, vec![(12, J1, 3)]);
    // The backlog counted once by the migration (version 6), then kept by each change.
    let backlog = |b: Vec<crate::store::Backlog>| b.into_iter().map(|b| (b.plant, b.pending)).collect::<Vec<_>>();
    assert_eq!(backlog(store.pending_by_plant().await.unwrap()), [("plant-a".to_string(), 1)]);
    // New rows continue after the highest lsn, and the dedup names carried over still match.
    let state = store.store_records("plant-a", J2, vec![rec(2, 0, "k")], 9).await.unwrap();
    assert_eq!(state.stored_seq, 2);
    let again = NewRecord { dedup: b"ic".to_vec(), ..rec(3, 0, "k") };
    assert_eq!(store.store_records("plant-a", J2, vec![again], 9).await.unwrap().stored_seq, 3);
    let c = store.conn.lock().unwrap();
    let last: (i64, String, Option<i64>) = c
        .query_row("SELECT lsn, state, duplicate_of FROM ledger ORDER BY lsn DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(last, (22, "duplicate".into(), Some(12)));
}

#[test]
fn the_hot_queries_use_their_indexes() {
    let (_dir, store) = open();
    let c = store.conn.lock().unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let mut rows = stmt.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get::<_, String>(3).unwrap());
        }
        steps.join("; ")
    };
    // The statements as the store prepares them, with their parameters bound to NULL.
    let first_open =
        plan("SELECT MIN(seq) FROM ledger WHERE journal = ?1 AND (state = 'pending' OR state = 'quarantined')");
    assert!(first_open.contains("INDEX ledger_open (journal=?)"), "{first_open}");
    let duplicate = plan("SELECT lsn FROM ledger WHERE plant = ?1 AND dedup = ?2 AND duplicate_of IS NULL");
    assert!(duplicate.contains("INDEX ledger_once (plant=? AND dedup=?)"), "{duplicate}");
    let quarantined = plan(
        "SELECT l.seq FROM ledger l JOIN journals j ON j.jn = l.journal
         WHERE l.plant = ?1 AND j.plant = ?1 AND j.journal_id = ?2 AND l.state = 'quarantined' ORDER BY l.seq",
    );
    assert!(quarantined.contains("ledger_blocked") || quarantined.contains("ledger_open"), "{quarantined}");
    let pending = plan(
        "SELECT l.lsn FROM ledger l WHERE l.state = 'pending' AND l.lsn > ?1
           AND NOT EXISTS (SELECT 1 FROM ledger q WHERE q.state = 'quarantined' AND q.plant = l.plant AND q.order_key = l.order_key)
         ORDER BY l.lsn",
    );
    assert!(pending.contains("USING INDEX ledger_pending") && pending.contains("ledger_blocked"), "{pending}");
    // A backlog's age: each journal's first pending row, one seek each, not a count of them.
    let oldest =
        plan("SELECT l.stored_at_ms FROM ledger l WHERE l.journal = ?1 AND l.state = 'pending' ORDER BY l.seq LIMIT 1");
    assert!(oldest.contains("INDEX ledger_open (journal=?)"), "{oldest}");
}

#[tokio::test]
async fn the_log_is_copied_into_the_database_by_the_checkpoint_thread_not_by_a_commit() {
    let (dir, store) = open();
    let db = dir.path().join("hub.db");
    store.open_journal("plant-a", J1, 1).await.unwrap();
    let body = |seq: u64| NewRecord { body: vec![seq as u8; 2048], ..rec(seq, seq as u128, "k") };
    let automatic: i64 = store.conn.lock().unwrap().query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
    assert_eq!(automatic, 0, "no checkpoint inside a commit");
    let before = std::fs::metadata(&db).unwrap().len();
    // More new log pages than one pass's worth, in commits of 64 rows.
    let mut seq = 0;
    while store.in_wal.load(Ordering::Acquire) < CHECKPOINT_FRAMES + 100 {
        let batch: Vec<NewRecord> = (seq + 1..=seq + 64).map(body).collect();
        seq += 64;
        store.store_records("plant-a", J1, batch, 1).await.unwrap();
    }
    // The database file grows without another commit: the thread copied the log.
    let grown = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let len = std::fs::metadata(&db).unwrap().len();
            if len > before + 2_000_000 {
                return len;
            }
            tokio::time::sleep(CHECKPOINT_QUIET / 10).await;
        }
    })
    .await
    .expect("the checkpoint thread copies the log");
    assert!(grown > before);
    // Once it copied everything (the store quiet), the next commit starts the log afresh.
    let quiet_pass = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            store.store_records("plant-a", J1, vec![body(seq + 1)], 1).await.unwrap();
            seq += 1;
            let frames = store.in_wal.load(Ordering::Acquire);
            if frames < 10 {
                return frames;
            }
            tokio::time::sleep(CHECKPOINT_QUIET * 2).await;
        }
    })
    .await
    .expect("the log starts afresh after a quiet pass");
    assert!(quiet_pass > 0);
    assert_eq!(store.journal_state("plant-a", J1).await.unwrap().stored_seq, seq);
}
