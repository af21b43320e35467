//! What every [`Store`] implementation must do, as one suite each backend runs through
//! [`store_conformance!`]: contiguity and deduplication of the ledger, watermarks that stop at
//! the first open transaction, quarantine blocking only its key and released by a retry or a
//! park, epochs, pruning, the audit chain (linear, searchable, with checkpoints), revocations,
//! the coordinator's state, and everything surviving a reopening. Backend-specific behaviour
//! (file corruption, migrations, query plans) stays in the backend's own tests.

use serde_json::json;
use uuid::Uuid;

use super::*;

/// A backend under test: a fresh, empty store, and the same data through a new handle (a
/// restarted hub).
#[allow(async_fn_in_trait)]
pub(crate) trait Fixture: Sized {
    type S: Store;
    async fn open() -> Self;
    fn store(&self) -> &Self::S;
    async fn reopen(self) -> Self;
    /// A second handle on the same data, as another replica would have (`None`: the backend
    /// has one process only).
    async fn replica(&self) -> Option<Self::S>;
}

pub(crate) const J1: Uuid = Uuid::from_u128(0xa1);
pub(crate) const J2: Uuid = Uuid::from_u128(0xa2);

/// A record of `seq` with id `id` on ordering key `key`.
pub(crate) fn rec(seq: u64, id: u128, key: &str) -> NewRecord {
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

fn entry(actor: &str, action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        at_ms: 5,
        actor: actor.into(),
        action: action.into(),
        target: target.into(),
        reason: "change 4711".into(),
    }
}

/// Every ledger row's (plant, seq, state), in ledger order, through the trait.
async fn ledger<S: Store>(store: &S) -> Vec<(String, u64, String)> {
    let q = TxnQuery { id: None, plant: None, state: None, after_lsn: 0, limit: 1000 };
    store.transactions(q).await.unwrap().into_iter().map(|r| (r.plant, r.seq, r.state)).collect()
}

pub(crate) async fn stores_contiguously_and_survives_reopening<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
    assert_eq!(
        store.open_journal("plant-a", J1, 1).await.unwrap(),
        JournalState { stored_seq: 0, applied_seq: 0, epoch: 1 }
    );
    let state = store.store_records("plant-a", J1, vec![rec(1, 1, "k"), rec(2, 2, "k")], 2).await.unwrap();
    assert_eq!(state.stored_seq, 2);
    let err = store.store_records("plant-a", J1, vec![rec(4, 4, "k")], 3).await.unwrap_err();
    assert_eq!(err.to_string(), format!("plant plant-a journal {J1}: records must continue at 3, got 4"));
    let err = store.store_records("plant-a", J2, vec![rec(1, 5, "k")], 3).await.unwrap_err();
    assert_eq!(err.to_string(), format!("plant plant-a has no journal {J2}"));
    let f = f.reopen().await;
    let store = f.store();
    assert_eq!(store.journal_state("plant-a", J1).await.unwrap().stored_seq, 2);
    assert_eq!(store.load_pending(Cursor::default(), 10).await.unwrap().len(), 2);
}

pub(crate) async fn an_id_seen_again_is_a_duplicate_and_never_pending_twice<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
    store.open_journal("plant-a", J1, 1).await.unwrap();
    store.store_records("plant-a", J1, vec![rec(1, 7, "k")], 1).await.unwrap();
    // The same id again, under a new journal of the same plant (re-journaled after a reset).
    store.open_journal("plant-a", J2, 2).await.unwrap();
    let state = store.store_records("plant-a", J2, vec![rec(1, 7, "k"), rec(2, 8, "k")], 3).await.unwrap();
    assert_eq!(state, JournalState { stored_seq: 2, applied_seq: 1, epoch: 2 });
    let pending: Vec<u64> = store.load_pending(Cursor::default(), 10).await.unwrap().iter().map(|p| p.seq).collect();
    assert_eq!(pending, vec![1, 2], "journal 1 seq 1 and journal 2 seq 2; the duplicate is not pending");
    // Another plant may use the same id space without colliding.
    store.open_journal("plant-b", J1, 4).await.unwrap();
    store.store_records("plant-b", J1, vec![rec(1, 7, "k")], 4).await.unwrap();
    assert_eq!(store.load_pending(Cursor::default(), 10).await.unwrap().len(), 3);
    let states: Vec<String> = ledger(store).await.into_iter().map(|r| r.2).collect();
    assert_eq!(states, ["pending", "duplicate", "pending", "pending"]);
}

pub(crate) async fn applied_seq_stops_at_the_first_open_transaction_and_quarantine_blocks_only_its_key<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
    store.open_journal("plant-a", J1, 1).await.unwrap();
    store
        .store_records("plant-a", J1, vec![rec(1, 1, "a"), rec(2, 2, "b"), rec(3, 3, "a"), rec(4, 4, "b")], 1)
        .await
        .unwrap();
    let lsn = |rows: &Vec<PendingRow>, seq: u64| rows.iter().find(|r| r.seq == seq).unwrap().lsn;
    let rows = store.load_pending(Cursor::default(), 10).await.unwrap();
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
    let pending: Vec<u64> = store.load_pending(Cursor::default(), 10).await.unwrap().iter().map(|p| p.seq).collect();
    assert_eq!(pending, vec![3], "key b is blocked by its quarantined transaction; key a goes on");
    store.record_outcomes(vec![Outcome::Applied { lsn: lsn(&rows, 3), result: json!(null), at_ms: 6 }]).await.unwrap();
    assert_eq!(
        store.journal_state("plant-a", J1).await.unwrap().applied_seq,
        1,
        "the quarantined seq 2 holds the watermark"
    );
    assert_eq!(store.plants().await.unwrap()[0].quarantined, 1);
    let audit = store.audit_entries(0, 10).await.unwrap();
    assert_eq!(audit.last().unwrap().entry.action, "transaction_quarantined");
    assert_eq!(crate::audit::verify(&audit), Ok(2));
}

pub(crate) async fn a_retry_releases_a_quarantined_key_and_a_park_counts_it_done<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
    store.open_journal("plant-a", J1, 1).await.unwrap();
    store.store_records("plant-a", J1, vec![rec(1, 1, "a"), rec(2, 2, "a"), rec(3, 3, "b")], 1).await.unwrap();
    let rows = store.load_pending(Cursor::default(), 10).await.unwrap();
    let refused = |lsn| Outcome::Quarantined {
        lsn,
        error_name: "odoo.exceptions.UserError".into(),
        error_message: "no".into(),
        at_ms: 5,
    };
    store.record_outcomes(vec![refused(rows[0].lsn), refused(rows[2].lsn)]).await.unwrap();
    let listed = store.quarantine_list(Selection::default(), 0, 10).await.unwrap();
    assert_eq!(listed.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3]);
    assert!(store.load_pending(Cursor::default(), 10).await.unwrap().is_empty(), "both keys blocked");

    let key_a = Selection { order_key: Some("a".into()), ..Selection::default() };
    let released = store.release(key_a, Release::Retry, "token:alice".into(), "fixed in Odoo".into(), 6).await.unwrap();
    assert_eq!(released.rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1]);
    let pending: Vec<u64> = store.load_pending(Cursor::default(), 10).await.unwrap().iter().map(|p| p.seq).collect();
    assert_eq!(pending, [1, 2], "the retried one first, then what waited behind it");

    let key_b = Selection { order_key: Some("b".into()), ..Selection::default() };
    store.release(key_b, Release::Park, "token:alice".into(), "entered by hand".into(), 7).await.unwrap();
    assert!(store.quarantine_list(Selection::default(), 0, 10).await.unwrap().is_empty());
    let parked = store.quarantined("plant-a", J1, 10, 0).await.unwrap();
    assert_eq!(parked.iter().map(|n| (n.0, n.1.as_str())).collect::<Vec<_>>(), [(3, "parked")]);
    let actions: Vec<String> = store.audit_entries(0, 10).await.unwrap().into_iter().map(|e| e.entry.action).collect();
    assert_eq!(
        actions,
        [
            "journal_epoch_started",
            "transaction_quarantined",
            "transaction_quarantined",
            "transaction_retried",
            "transaction_parked"
        ]
    );
}

pub(crate) async fn a_new_journal_for_a_known_plant_is_an_audited_epoch<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
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
    let journals: Vec<(Uuid, u32)> =
        store.journals("plant-a").await.unwrap().iter().map(|j| (j.journal_id, j.epoch)).collect();
    assert_eq!(journals, [(J1, 1), (J2, 2)]);
}

pub(crate) async fn pruning_takes_applied_rows_past_the_retention_with_their_duplicates_and_nothing_open<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
    store.open_journal("plant-a", J1, 1).await.unwrap();
    store.store_records("plant-a", J1, vec![rec(1, 1, "a"), rec(2, 2, "a"), rec(3, 3, "a")], 1).await.unwrap();
    let rows = store.load_pending(Cursor::default(), 10).await.unwrap();
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
    let seq_state = |rows: Vec<(String, u64, String)>| rows.into_iter().map(|r| (r.1, r.2)).collect::<Vec<_>>();
    assert_eq!(store.prune_applied(10, 100).await.unwrap(), 2, "seq 1 applied at 5, and its duplicate");
    assert_eq!(seq_state(ledger(store).await), [(2, "applied".to_owned()), (3, "pending".to_owned())]);
    assert_eq!(store.prune_applied(10, 100).await.unwrap(), 0);
    assert_eq!(store.prune_applied(i64::MAX, 100).await.unwrap(), 1, "the pending one stays");
    assert_eq!(seq_state(ledger(store).await), [(3, "pending".to_owned())]);
    assert_eq!(
        store.journal_state("plant-a", J1).await.unwrap(),
        JournalState { stored_seq: 3, applied_seq: 2, epoch: 1 },
        "the watermarks do not move"
    );
}

pub(crate) async fn the_audit_chain_is_linear_searchable_and_anchored<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
    assert_eq!(store.audit_head().await.unwrap(), None);
    for (actor, action, target) in [
        ("token:alice", "plan_started", "plan 1"),
        ("hub", "config_reloaded", "config:hub.toml"),
        ("token:bob", "plan_paused", "plan 1"),
    ] {
        store.append_audit(entry(actor, action, target)).await.unwrap();
    }
    let all = store.audit_entries(0, 10).await.unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(crate::audit::verify(&all), Ok(3));
    let (head_seq, head_hash) = store.audit_head().await.unwrap().unwrap();
    assert_eq!(head_seq, 3);
    let search = |f: AuditFilter| async move {
        store.audit_search(0, 10, f).await.unwrap().iter().map(|e| e.seq).collect::<Vec<_>>()
    };
    assert_eq!(search(AuditFilter { target: Some("plan".into()), ..AuditFilter::default() }).await, [1, 3]);
    assert_eq!(search(AuditFilter { actor: Some("hub".into()), ..AuditFilter::default() }).await, [2]);
    assert_eq!(store.audit_entries(1, 1).await.unwrap()[0].seq, 2, "paged after a sequence");

    let checkpoint = crate::audit::sign_checkpoint(&[7u8; 32], head_seq, head_hash, 9);
    store.add_checkpoint(checkpoint.clone()).await.unwrap();
    let f = f.reopen().await;
    assert_eq!(f.store().checkpoints().await.unwrap(), vec![checkpoint]);
    assert_eq!(f.store().audit_head().await.unwrap(), Some((head_seq, head_hash)));
}

pub(crate) async fn a_revocation_replaces_the_plants_earlier_one_and_is_audited<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
    let revocation = |before: i64, reason: &str| Revocation {
        plant: "plant-a".into(),
        issued_before_ms: before,
        at_ms: before,
        actor: "token:ops".into(),
        reason: reason.into(),
    };
    store.revoke(revocation(100, "gateway stolen")).await.unwrap();
    store.revoke(revocation(200, "replacement stolen too")).await.unwrap();
    let f = f.reopen().await;
    let store = f.store();
    assert_eq!(store.revocations().await.unwrap(), vec![revocation(200, "replacement stolen too")]);
    let audit = store.audit_entries(0, 10).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert!(audit.iter().all(|e| e.entry.actor == "token:ops" && e.entry.target.contains("plant-a")), "{audit:?}");
}

pub(crate) async fn the_coordinators_state_is_saved_with_its_audit_entries<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
    assert_eq!(store.load_coordinator().await.unwrap(), None);
    store
        .save_coordinator(Some("{\"v\":1}".into()), vec![entry("token:alice", "plan_started", "plan 1")])
        .await
        .unwrap();
    store
        .save_coordinator(
            Some("{\"v\":2}".into()),
            vec![entry("token:alice", "plan_paused", "plan 1"), entry("token:alice", "plan_resumed", "plan 1")],
        )
        .await
        .unwrap();
    store.save_coordinator(None, vec![]).await.unwrap();
    let f = f.reopen().await;
    let store = f.store();
    assert_eq!(store.load_coordinator().await.unwrap().as_deref(), Some("{\"v\":2}"));
    let actions: Vec<String> = store.audit_entries(0, 10).await.unwrap().into_iter().map(|e| e.entry.action).collect();
    assert_eq!(actions, ["plan_started", "plan_paused", "plan_resumed"]);
    assert!(store.pending_by_plant().await.unwrap().is_empty());
    store.ping().await.unwrap();
}

pub(crate) async fn loading_goes_on_from_each_plants_own_position<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
    store.open_journal("plant-a", J1, 1).await.unwrap();
    store.open_journal("plant-b", J2, 1).await.unwrap();
    store.store_records("plant-a", J1, vec![rec(1, 1, "k"), rec(2, 2, "k"), rec(3, 3, "k")], 1).await.unwrap();
    store.store_records("plant-b", J2, vec![rec(1, 11, "k"), rec(2, 12, "k")], 1).await.unwrap();
    let first = store.load_pending(Cursor::default(), 2).await.unwrap();
    let seen: Vec<(&str, u64)> = first.iter().map(|r| (r.plant.as_str(), r.seq)).collect();
    assert_eq!(seen, [("plant-a", 1), ("plant-a", 2)]);
    let after = Cursor::from([("plant-a".to_owned(), first[1].lsn)]);
    let next = store.load_pending(after, 10).await.unwrap();
    let seen: Vec<(&str, u64)> = next.iter().map(|r| (r.plant.as_str(), r.seq)).collect();
    assert_eq!(seen, [("plant-a", 3), ("plant-b", 1), ("plant-b", 2)]);
    let done = Cursor::from([("plant-a".to_owned(), next[0].lsn), ("plant-b".to_owned(), next[2].lsn)]);
    assert!(store.load_pending(done, 10).await.unwrap().is_empty());
}

pub(crate) async fn one_holder_leads_until_its_lease_expires_and_each_new_leader_raises_the_epoch<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
    let ttl = std::time::Duration::from_millis(400);
    assert_eq!(store.leader().await.unwrap(), None);
    let now = crate::shared::now_ms();
    assert_eq!(store.lease("hub-0/a", "http://hub-0:8440", ttl, now).await.unwrap(), Some(1));
    assert_eq!(store.lease("hub-1/b", "http://hub-1:8440", ttl, now).await.unwrap(), None, "held by hub-0");
    assert_eq!(store.lease("hub-0/a", "http://hub-0:8440", ttl, now).await.unwrap(), Some(1), "renewed, same epoch");
    let leader = store.leader().await.unwrap().unwrap();
    assert_eq!((leader.holder.as_str(), leader.address.as_str(), leader.epoch), ("hub-0/a", "http://hub-0:8440", 1));
    assert!(leader.expires_in_ms > 0 && leader.expires_in_ms <= 400, "{leader:?}");
    // hub-0 stops renewing: hub-1 gets the lease once it expired, not before, under epoch 2.
    let started = tokio::time::Instant::now();
    let epoch = loop {
        if let Some(epoch) = store.lease("hub-1/b", "http://hub-1:8440", ttl, crate::shared::now_ms()).await.unwrap() {
            break epoch;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(epoch, 2);
    assert!(started.elapsed() >= std::time::Duration::from_millis(200), "taken after {:?}", started.elapsed());
    assert_eq!(
        store.lease("hub-0/a", "http://hub-0:8440", ttl, crate::shared::now_ms()).await.unwrap(),
        None,
        "deposed"
    );
    // A clean stop hands it over at once.
    store.step_down("hub-1/b", 2, crate::shared::now_ms()).await.unwrap();
    assert_eq!(store.lease("hub-0/a", "http://hub-0:8440", ttl, crate::shared::now_ms()).await.unwrap(), Some(3));
    let f = f.reopen().await;
    let taken = f
        .store()
        .audit_search(0, 10, AuditFilter { action: Some("leadership_taken".into()), ..Default::default() })
        .await
        .unwrap();
    let targets: Vec<&str> = taken.iter().map(|e| e.entry.target.as_str()).collect();
    assert_eq!(targets, ["lease/epoch/1", "lease/epoch/2", "lease/epoch/3"]);
    assert_eq!(taken[1].entry.actor, "hub:hub-1/b");
    assert!(taken[1].entry.reason.starts_with("the lease of hub-0/a (epoch 1) expired"), "{}", taken[1].entry.reason);
    let released = f
        .store()
        .audit_search(0, 10, AuditFilter { action: Some("leadership_released".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(released.len(), 1);
}

pub(crate) async fn replicas_storing_one_plant_at_once_keep_it_contiguous_and_the_audit_chain_linear<F: Fixture>() {
    let f = F::open().await;
    let Some(other) = f.replica().await else { return };
    let store = f.store().clone();
    store.open_journal("plant-a", J1, 1).await.unwrap();
    other.open_journal("plant-b", J2, 1).await.unwrap();
    // Both replicas send plant-a's next records (an agent that moved to the other replica while
    // its last batch was still being stored) and audit at once, many times.
    let mut tasks = Vec::new();
    for (n, s) in [store.clone(), other.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut stored = Vec::new();
            for round in 0..40u64 {
                let state = s.journal_state("plant-a", J1).await.unwrap();
                let next = state.stored_seq + 1;
                let batch = vec![rec(next, 1000 + next as u128, "k"), rec(next + 1, 1001 + next as u128, "k")];
                match s.store_records("plant-a", J1, batch, 10).await {
                    Ok(_) => stored.push(next),
                    Err(StoreError::NotContiguous { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
                s.append_audit(entry(&format!("operator:{n}"), "noted", &format!("round/{round}"))).await.unwrap();
            }
            stored
        }));
    }
    let mut batches = 0;
    for t in tasks {
        batches += t.await.unwrap().len();
    }
    let rows = ledger(&store).await;
    let seqs: Vec<u64> = rows.iter().map(|(_, seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=2 * batches as u64).collect::<Vec<_>>(),
        "every accepted batch once, contiguous, in ledger order"
    );
    assert!(rows.iter().all(|(_, _, state)| state == "pending"));
    let chain = store.audit_entries(0, 1000).await.unwrap();
    assert_eq!(chain.len(), 2 + 80, "two epochs and every note");
    assert_eq!(crate::audit::verify(&chain).expect("one linear chain"), 82);
}

/// Each plant's backlog as (plant, pending, oldest stored).
async fn backlogs<S: Store>(store: &S) -> Vec<(String, u64, i64)> {
    store.pending_by_plant().await.unwrap().into_iter().map(|b| (b.plant, b.pending, b.oldest_stored_ms)).collect()
}

pub(crate) async fn a_backlog_counts_what_is_pending_through_every_change<F: Fixture>() {
    let f = F::open().await;
    let store = f.store();
    store.open_journal("plant-a", J1, 1).await.unwrap();
    store.open_journal("plant-b", J2, 1).await.unwrap();
    store.store_records("plant-a", J1, vec![rec(1, 1, "a"), rec(2, 2, "b")], 10).await.unwrap();
    store.store_records("plant-a", J1, vec![rec(3, 3, "a"), rec(4, 4, "b")], 11).await.unwrap();
    store.store_records("plant-b", J2, vec![rec(1, 5, "a")], 20).await.unwrap();
    assert_eq!(backlogs(store).await, [("plant-a".into(), 4, 10), ("plant-b".into(), 1, 20)]);

    let rows = store.load_pending(Cursor::default(), 10).await.unwrap();
    let lsn = |plant: &str, seq: u64| rows.iter().find(|r| r.plant == plant && r.seq == seq).unwrap().lsn;
    let refused =
        |lsn| Outcome::Quarantined { lsn, error_name: "UserError".into(), error_message: "no".into(), at_ms: 30 };
    store
        .record_outcomes(vec![
            Outcome::Applied { lsn: lsn("plant-a", 1), result: json!(true), at_ms: 30 },
            refused(lsn("plant-a", 2)),
            Outcome::Applied { lsn: lsn("plant-b", 1), result: json!(true), at_ms: 30 },
        ])
        .await
        .unwrap();
    // An outcome recorded twice (a retried call) changes nothing more.
    store
        .record_outcomes(vec![Outcome::Applied { lsn: lsn("plant-a", 1), result: json!(true), at_ms: 31 }])
        .await
        .unwrap();
    assert_eq!(backlogs(store).await, [("plant-a".into(), 2, 11)], "seq 3 and 4 wait; seq 2 is quarantined");

    // A transaction sent again is a duplicate, not more backlog.
    store.store_records("plant-a", J1, vec![rec(5, 3, "a")], 40).await.unwrap();
    assert_eq!(backlogs(store).await, [("plant-a".into(), 2, 11)]);
    let key_b = Selection { order_key: Some("b".into()), ..Selection::default() };
    store.release(key_b.clone(), Release::Retry, "token:alice".into(), "fixed".into(), 41).await.unwrap();
    assert_eq!(backlogs(store).await, [("plant-a".into(), 3, 10)], "the retried one is pending again");
    store.record_outcomes(vec![refused(lsn("plant-a", 2))]).await.unwrap();
    store.release(key_b, Release::Park, "token:alice".into(), "by hand".into(), 42).await.unwrap();
    assert_eq!(backlogs(store).await, [("plant-a".into(), 2, 11)], "a park is done, not pending");

    let f = f.reopen().await;
    assert_eq!(backlogs(f.store()).await, [("plant-a".into(), 2, 11)]);
    if let Some(other) = f.replica().await {
        assert_eq!(backlogs(&other).await, [("plant-a".into(), 2, 11)]);
    }
    let store = f.store();
    let outcomes = [3, 4].map(|seq| Outcome::Applied { lsn: lsn("plant-a", seq), result: json!(true), at_ms: 50 });
    store.record_outcomes(outcomes.to_vec()).await.unwrap();
    assert!(backlogs(store).await.is_empty());
}

/// The suite as tests of one backend: `store_conformance!(SqliteFixture);` in its test module.
macro_rules! store_conformance {
    ($fixture:ty) => {
        mod conformance {
            use super::*;
            use $crate::store::conformance as c;
            store_conformance!(@cases $fixture;
                stores_contiguously_and_survives_reopening,
                an_id_seen_again_is_a_duplicate_and_never_pending_twice,
                applied_seq_stops_at_the_first_open_transaction_and_quarantine_blocks_only_its_key,
                a_retry_releases_a_quarantined_key_and_a_park_counts_it_done,
                a_new_journal_for_a_known_plant_is_an_audited_epoch,
                pruning_takes_applied_rows_past_the_retention_with_their_duplicates_and_nothing_open,
                the_audit_chain_is_linear_searchable_and_anchored,
                a_revocation_replaces_the_plants_earlier_one_and_is_audited,
                the_coordinators_state_is_saved_with_its_audit_entries,
                one_holder_leads_until_its_lease_expires_and_each_new_leader_raises_the_epoch,
                loading_goes_on_from_each_plants_own_position,
                replicas_storing_one_plant_at_once_keep_it_contiguous_and_the_audit_chain_linear,
                a_backlog_counts_what_is_pending_through_every_change
            );
        }
    };
    (@cases $fixture:ty; $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                c::$case::<$fixture>().await;
            }
        )*
    };
}
pub(crate) use store_conformance;
