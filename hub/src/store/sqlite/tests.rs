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
        c.execute_batch(&format!("BEGIN; {SCHEMA} PRAGMA user_version = 1; COMMIT;")).unwrap();
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
    assert_eq!(version, 2);
}
