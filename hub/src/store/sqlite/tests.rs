use super::*;
use serde_json::json;

fn rec(seq: u64, id: u128, key: &str) -> NewRecord {
    let id = Uuid::from_u128(id);
    NewRecord {
        seq,
        id,
        dedup: [b"i".as_slice(), id.as_bytes()].concat(),
        order_key: key.into(),
        body: vec![seq as u8],
        crc: 0,
    }
}

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
    (dir, store)
}

const J1: Uuid = Uuid::from_u128(0xa1);
const J2: Uuid = Uuid::from_u128(0xa2);

#[tokio::test]
async fn stores_contiguously_and_survives_reopening() {
    let (dir, store) = open();
    assert_eq!(
        store.open_journal("plant-a", J1, 1).await.unwrap(),
        JournalState { stored_seq: 0, applied_seq: 0, epoch: 1 }
    );
    let state = store.store_records("plant-a", J1, vec![rec(1, 1, "k"), rec(2, 2, "k")], 2).await.unwrap();
    assert_eq!(state.stored_seq, 2);
    let err = store.store_records("plant-a", J1, vec![rec(4, 4, "k")], 3).await.unwrap_err();
    assert_eq!(err.to_string(), format!("plant plant-a journal {J1}: records must continue at 3, got 4"));
    drop(store);
    let store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
    assert_eq!(store.journal_state("plant-a", J1).await.unwrap().stored_seq, 2);
    assert_eq!(store.load_pending(0, 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_id_seen_again_is_a_duplicate_and_never_pending_twice() {
    let (_dir, store) = open();
    store.open_journal("plant-a", J1, 1).await.unwrap();
    store.store_records("plant-a", J1, vec![rec(1, 7, "k")], 1).await.unwrap();
    // The same id again, under a new journal of the same plant (re-journaled after a reset).
    store.open_journal("plant-a", J2, 2).await.unwrap();
    let state = store.store_records("plant-a", J2, vec![rec(1, 7, "k"), rec(2, 8, "k")], 3).await.unwrap();
    assert_eq!(state, JournalState { stored_seq: 2, applied_seq: 1, epoch: 2 });
    let pending: Vec<u64> = store.load_pending(0, 10).await.unwrap().iter().map(|p| p.seq).collect();
    assert_eq!(pending, vec![1, 2], "journal 1 seq 1 and journal 2 seq 2; the duplicate is not pending");
    // Another plant may use the same id space without colliding.
    store.open_journal("plant-b", J1, 4).await.unwrap();
    store.store_records("plant-b", J1, vec![rec(1, 7, "k")], 4).await.unwrap();
    assert_eq!(store.load_pending(0, 10).await.unwrap().len(), 3);
}

#[tokio::test]
async fn applied_seq_stops_at_the_first_open_transaction_and_quarantine_blocks_only_its_key() {
    let (_dir, store) = open();
    store.open_journal("plant-a", J1, 1).await.unwrap();
    store
        .store_records("plant-a", J1, vec![rec(1, 1, "a"), rec(2, 2, "b"), rec(3, 3, "a"), rec(4, 4, "b")], 1)
        .await
        .unwrap();
    let lsn = |rows: &Vec<PendingRow>, seq: u64| rows.iter().find(|r| r.seq == seq).unwrap().lsn;
    let rows = store.load_pending(0, 10).await.unwrap();
    let moved = store
        .record_outcomes(vec![
            Outcome::Applied { lsn: lsn(&rows, 1), result: json!(true), at_ms: 5 },
            Outcome::Quarantined {
                lsn: lsn(&rows, 2),
                error_name: "odoo.exceptions.UserError".into(),
                error_message: "no".into(),
                at_ms: 5,
            },
        ])
        .await
        .unwrap();
    assert_eq!(moved, vec![("plant-a".to_owned(), J1, JournalState { stored_seq: 4, applied_seq: 1, epoch: 1 })]);
    let pending: Vec<u64> = store.load_pending(0, 10).await.unwrap().iter().map(|p| p.seq).collect();
    assert_eq!(pending, vec![3], "key b is blocked by its quarantined transaction; key a goes on");
    store.record_outcomes(vec![Outcome::Applied { lsn: lsn(&rows, 3), result: json!(null), at_ms: 6 }]).await.unwrap();
    assert_eq!(
        store.journal_state("plant-a", J1).await.unwrap().applied_seq,
        1,
        "the quarantined seq 2 holds the watermark"
    );
    let plants = store.plants().await.unwrap();
    assert_eq!(plants[0].quarantined, 1);
    let audit = store.audit_entries(0, 10).await.unwrap();
    assert_eq!(audit.last().unwrap().entry.action, "transaction_quarantined");
    assert_eq!(crate::audit::verify(&audit), Ok(2));
}

#[tokio::test]
async fn a_new_journal_for_a_known_plant_is_an_audited_epoch() {
    let (_dir, store) = open();
    store.open_journal("plant-a", J1, 1).await.unwrap();
    assert_eq!(store.open_journal("plant-a", J1, 2).await.unwrap().epoch, 1, "reopening is not a new epoch");
    assert_eq!(store.open_journal("plant-a", J2, 3).await.unwrap().epoch, 2);
    let audit = store.audit_entries(0, 10).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[1].entry.target, "plant-a/epoch/2");
    assert!(
        audit[1].entry.reason.starts_with(&format!("journal {J2} replaces journal {J1} (epoch 1)")),
        "{}",
        audit[1].entry.reason
    );
    assert_eq!(store.plants().await.unwrap()[0].journal_id, J2);
}

#[test]
fn a_corrupted_file_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    std::fs::write(&path, b"this is not a database, just bytes that look nothing like one...").unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Database(_) | StoreError::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn pruning_takes_applied_rows_past_the_retention_with_their_duplicates_and_nothing_open() {
    let (_dir, store) = open();
    store.open_journal("plant-a", J1, 1).await.unwrap();
    store.store_records("plant-a", J1, vec![rec(1, 1, "a"), rec(2, 2, "a"), rec(3, 3, "a")], 1).await.unwrap();
    let rows = store.load_pending(0, 10).await.unwrap();
    store
        .record_outcomes(vec![
            Outcome::Applied { lsn: rows[0].lsn, result: json!(true), at_ms: 5 },
            Outcome::Applied { lsn: rows[1].lsn, result: json!(true), at_ms: 50 },
        ])
        .await
        .unwrap();
    // Seq 1's id again, from a replaced gateway's journal: kept as its duplicate.
    store.open_journal("plant-a", J2, 6).await.unwrap();
    store.store_records("plant-a", J2, vec![rec(1, 1, "a")], 7).await.unwrap();
    let ledger = |store: &SqliteStore| {
        let c = store.conn.lock().unwrap();
        c.prepare("SELECT seq, state FROM ledger ORDER BY lsn")
            .unwrap()
            .query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    };
    assert_eq!(store.prune_applied(10, 100).await.unwrap(), 2, "seq 1 applied at 5, and its duplicate");
    assert_eq!(ledger(&store), vec![(2, "applied".to_owned()), (3, "pending".to_owned())]);
    assert_eq!(store.prune_applied(10, 100).await.unwrap(), 0);
    assert_eq!(store.prune_applied(i64::MAX, 100).await.unwrap(), 1, "the pending one stays");
    assert_eq!(ledger(&store), vec![(3, "pending".to_owned())]);
    assert_eq!(
        store.journal_state("plant-a", J1).await.unwrap(),
        JournalState { stored_seq: 3, applied_seq: 2, epoch: 1 },
        "the watermarks do not move"
    );
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
        store.load_pending(0, 10).await.unwrap().iter().map(|p| (p.journal_id, p.seq)).collect();
    assert_eq!(pending, vec![(J1, 1)], "the resend is a duplicate, never pending twice");
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
        store.load_pending(0, 10).await.unwrap().iter().map(|p| (p.lsn, p.journal_id, p.seq)).collect();
    assert_eq!(pending, vec![(12, J1, 3)]);
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
}

#[tokio::test]
async fn the_coordinators_state_is_saved_with_its_audit_entries_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
    assert_eq!(store.load_coordinator().await.unwrap(), None);
    let entry = |action: &str| AuditEntry {
        at_ms: 5,
        actor: "token:alice".into(),
        action: action.into(),
        target: "plan 1".into(),
        reason: "change 4711".into(),
    };
    store.save_coordinator(Some("{\"v\":1}".into()), vec![entry("plan_started")]).await.unwrap();
    store.save_coordinator(Some("{\"v\":2}".into()), vec![entry("plan_paused"), entry("plan_resumed")]).await.unwrap();
    store.save_coordinator(None, vec![]).await.unwrap();
    assert_eq!(store.load_coordinator().await.unwrap().as_deref(), Some("{\"v\":2}"));
    let actions: Vec<String> = store.audit_entries(0, 10).await.unwrap().into_iter().map(|e| e.entry.action).collect();
    assert_eq!(actions, ["plan_started", "plan_paused", "plan_resumed"]);
    let pending = store.pending_by_plant().await.unwrap();
    assert!(pending.is_empty(), "{pending:?}");
}
