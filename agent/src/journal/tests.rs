use super::*;

/// A keyed entry: the same `id` is the same key, so a resend.
fn entry(id: u128) -> Entry {
    Entry {
        id: Uuid::from_u128(id),
        dedup: Some(id.to_be_bytes().to_vec()),
        received_at_ms: id as i64 * 1000,
        body: vec![id as u8; 8],
    }
}

fn open() -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("journal.db"), 1, Limits::NONE).unwrap();
    (dir, j)
}

#[tokio::test]
async fn appends_are_consecutive_deduplicated_and_durable() {
    let (dir, j) = open();
    let a = j.append(vec![entry(1), entry(2), entry(1)]).await.unwrap();
    assert_eq!(
        a,
        vec![
            Appended { id: Uuid::from_u128(1), seq: 1, duplicate: false },
            Appended { id: Uuid::from_u128(2), seq: 2, duplicate: false },
            Appended { id: Uuid::from_u128(1), seq: 1, duplicate: true },
        ]
    );
    assert_eq!(*j.last_seq().borrow(), 2);
    let id = j.reader().state().await.unwrap().journal_id;
    drop(j);
    let j = Journal::open(&dir.path().join("journal.db"), 2, Limits::NONE).unwrap();
    let state = j.reader().state().await.unwrap();
    assert_eq!(
        (state.journal_id, state.last_seq, j.usage().rows),
        (id, 2, 2),
        "the journal id and rows survive a restart"
    );
    assert_eq!(
        j.append(vec![entry(2), entry(3)]).await.unwrap()[1],
        Appended { id: Uuid::from_u128(3), seq: 3, duplicate: false }
    );
    let records = j.reader().read(1, 10).await.unwrap();
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
    records[0].check().unwrap();
}

#[tokio::test]
async fn concurrent_appends_share_commits_and_get_distinct_sequences() {
    let (_dir, j) = open();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u128 {
        let j = j.clone();
        tasks.spawn(async move { j.append(vec![entry(1000 + i)]).await.unwrap()[0].seq });
    }
    let mut seqs = Vec::new();
    while let Some(s) = tasks.join_next().await {
        seqs.push(s.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
}

#[tokio::test]
async fn compaction_keeps_what_odoo_does_not_have_and_what_is_within_retention() {
    let (_dir, j) = open();
    j.append((1..=10).map(entry).collect()).await.unwrap();
    j.set_watermarks(Ack { stored_seq: 8, applied_seq: 6 }).await.unwrap();
    // Rows 1..=10 were received at 1 s .. 10 s; compact those older than 4.5 s and applied.
    assert_eq!(j.compact(4_500).await.unwrap(), 4);
    let state = j.reader().state().await.unwrap();
    assert_eq!((state.stored_seq, state.applied_seq, j.usage().rows), (8, 6, 6));
    assert_eq!(j.compact(1_000_000).await.unwrap(), 2, "only up to applied_seq 6, whatever the age");
    assert_eq!(j.reader().find(Uuid::from_u128(7)).await.unwrap(), Some(7));
}

#[tokio::test]
async fn watermarks_never_go_backwards_or_beyond_the_journal() {
    let (_dir, j) = open();
    j.append((1..=3).map(entry).collect()).await.unwrap();
    j.set_watermarks(Ack { stored_seq: 3, applied_seq: 2 }).await.unwrap();
    j.set_watermarks(Ack { stored_seq: 1, applied_seq: 1 }).await.unwrap();
    j.set_watermarks(Ack { stored_seq: 99, applied_seq: 99 }).await.unwrap();
    let s = j.reader().state().await.unwrap();
    assert_eq!((s.stored_seq, s.applied_seq), (3, 3));
}

#[test]
fn a_corrupted_journal_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    assert!(Journal::open(&path, 1, Limits::NONE).is_err());
}

#[tokio::test]
async fn a_full_journal_refuses_whole_requests_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { rows_max: 5, bytes_max: u64::MAX, disk_free_min: 0 };
    let j = Journal::open(&dir.path().join("journal.db"), 1, limits).unwrap();
    j.append((1..=3).map(entry).collect()).await.unwrap();
    let refused = j.append((4..=6).map(entry).collect()).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "the journal is full: it holds 3 transactions and its limit is 5 (journal.rows_max)"
    );
    let usage = j.usage();
    assert_eq!((usage.rows, usage.full.as_ref().map(|f| f.since_ms)), (3, Some(4_000)), "the alarm is raised");
    // A compaction pass that frees nothing changes nothing: the alarm stays.
    assert_eq!(j.compact(i64::MAX).await.unwrap(), 0);
    assert!(j.usage().full.is_some(), "a compaction that deleted nothing must not clear the alarm");
    assert_eq!(j.reader().state().await.unwrap().last_seq, 3, "nothing of the refused request was journaled");
    // A smaller request still fits, and clears the alarm.
    j.append((4..=5).map(entry).collect()).await.unwrap();
    assert_eq!(j.usage().full, None);
    assert!(j.append(vec![entry(6)]).await.is_err());
    // Compaction of applied rows makes room; nothing unapplied is ever dropped.
    j.set_watermarks(Ack { stored_seq: 5, applied_seq: 2 }).await.unwrap();
    assert_eq!(j.compact(i64::MAX).await.unwrap(), 2);
    assert_eq!(j.usage().full, None, "compaction below the limits clears the alarm");
    j.append(vec![entry(6), entry(7)]).await.unwrap();
    assert_eq!(j.reader().read(0, 10).await.unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn byte_and_disk_limits_refuse_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("journal.db"), 1, Limits { rows_max: 100, bytes_max: 20, disk_free_min: 0 })
        .unwrap();
    j.append(vec![entry(1), entry(2)]).await.unwrap();
    assert_eq!(
        j.append(vec![entry(3)]).await.unwrap_err().to_string(),
        "the journal is full: it holds 16 bytes and its limit is 20 (journal.bytes_max)"
    );
    drop(j);
    let j = Journal::open(
        &dir.path().join("journal.db"),
        1,
        Limits { rows_max: 100, bytes_max: 1000, disk_free_min: u64::MAX },
    )
    .unwrap();
    assert_eq!(j.usage().bytes, 16, "usage is counted again at open");
    let e = j.append(vec![entry(3)]).await.unwrap_err().to_string();
    assert!(e.ends_with("must stay free (journal.disk_free_min)"), "{e}");
}

#[test]
fn time_to_full_follows_the_nearest_limit() {
    let limits = Limits { rows_max: 1000, bytes_max: 100_000, disk_free_min: 0 };
    let idle = Usage { rows: 10, ..Usage::default() };
    assert_eq!(idle.time_to_full_s(&limits), None, "nothing comes in: never full");
    let busy = Usage { rows: 400, bytes: 40_000, rows_per_s: 10.0, bytes_per_s: 100.0, ..Usage::default() };
    assert_eq!(busy.time_to_full_s(&limits), Some(60), "600 rows left at 10/s before 60,000 bytes at 100/s");
    let disk = Usage { disk_free: Some(3_000), ..busy };
    assert_eq!(disk.time_to_full_s(&limits), Some(10), "3,000 bytes of disk at 3 × 100 bytes/s");
}

async fn append_bodies(j: &Journal, first_id: &mut u128, bytes: u64) {
    let body = vec![7u8; 4096];
    let mut written = 0;
    while written < bytes {
        let entries = (0..64)
            .map(|_| {
                *first_id += 1;
                Entry { id: Uuid::from_u128(*first_id), dedup: None, received_at_ms: 0, body: body.clone() }
            })
            .collect();
        j.append(entries).await.unwrap();
        written += 64 * body.len() as u64;
    }
}

#[tokio::test]
async fn under_load_that_never_pauses_the_wal_stays_bounded() {
    // Back-to-back commits give the checkpoint thread no quiet moment: only the writer's own
    // catch-up past WAL_FRAMES_MAX keeps the WAL from holding everything.
    let (dir, j) = open();
    let frame_bytes = 4096 + 24;
    let total = 3 * WAL_FRAMES_MAX as u64 * 4096;
    let mut id = 0;
    append_bodies(&j, &mut id, total).await;
    let wal = std::fs::metadata(dir.path().join("journal.db-wal")).unwrap().len();
    // Past the bound by at most a few passes: a catch-up that meets the thread mid-pass is
    // refused (one checkpointer at a time) and tried again CHECKPOINT_FRAMES later.
    let bound = (WAL_FRAMES_MAX + 4 * CHECKPOINT_FRAMES) as u64 * frame_bytes;
    assert!(wal <= bound, "the WAL grew to {wal} bytes (bound {bound}) for {total} bytes of bodies");
    assert_eq!(j.usage().rows, id as u64);
}

#[tokio::test]
async fn a_quiet_writer_gets_its_wal_copied_and_started_afresh() {
    let (_dir, j) = open();
    let mut id = 0;
    append_bodies(&j, &mut id, 2 * 1024 * 1024).await;
    let (frames, _) = j.wal_frames();
    assert!(frames > 100, "the burst left {frames} frames in the WAL");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while j.wal_frames().1 != j.wal_frames().0 {
        assert!(tokio::time::Instant::now() < deadline, "no checkpoint caught up while the writer was quiet");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    append_bodies(&j, &mut id, 4096 * 64).await;
    let (after, _) = j.wal_frames();
    assert!(after < frames / 2, "the next commit did not start the WAL afresh: {after} frames after {frames}");
}

fn transaction(n: u64, key: Option<&str>) -> Transaction {
    let id = match key {
        Some(k) => Transaction::keyed_id("plant-a", SourceKind::Mes, "line-3", k),
        None => Uuid::from_u128(u128::from(n) << 64),
    };
    Transaction {
        id,
        plant: "plant-a".into(),
        source: SourceKind::Mes,
        device: "line-3".into(),
        key: key.map(str::to_owned),
        order_key: "plant-a".into(),
        received_at_ms: n as i64,
        occurred_at_ms: None,
        op: holdfast_protocol::Operation::OdooCall(holdfast_protocol::OdooCall {
            model: "mrp.production".into(),
            method: "write".into(),
            args: serde_json::json!([[7], {"qty_producing": n}]),
            kwargs: Default::default(),
        }),
    }
}

#[tokio::test]
async fn a_version_3_journal_is_migrated_and_its_keyed_rows_still_catch_resends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    // A journal as version 3 wrote it: the unique index on the id, no `dedup` column.
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA} {MIGRATE_TO_2} {MIGRATE_TO_3} PRAGMA user_version = 3; \
             INSERT INTO state VALUES (1, x'01', 0, 2, 0, 0); COMMIT;"
        ))
        .unwrap();
        for (seq, t) in [(1u64, transaction(1, Some("wo-1"))), (2, transaction(2, None))] {
            let body = t.encode_body().unwrap();
            conn.execute(
                "INSERT INTO txn (seq, id, received_at_ms, body, crc) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![seq, t.id.as_bytes(), t.received_at_ms, body, body_checksum(&body)],
            )
            .unwrap();
        }
    }
    let j = Journal::open(&path, 3, Limits::NONE).unwrap();
    let version: i64 = j.reader().lock().unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 4);
    assert_eq!(j.usage().rows, 2);
    let resend = transaction(1, Some("wo-1"));
    let again = transaction(3, None);
    let answers = j
        .append(vec![
            Entry::of(&resend, resend.encode_body().unwrap()),
            Entry::of(&again, again.encode_body().unwrap()),
        ])
        .await
        .unwrap();
    assert_eq!(
        answers,
        vec![Appended { id: resend.id, seq: 1, duplicate: true }, Appended { id: again.id, seq: 3, duplicate: false }],
        "a keyed row journaled before the migration is found by its key"
    );
    assert_eq!(j.reader().find(transaction(2, None).id).await.unwrap(), Some(2));
    assert_eq!(j.reader().read(0, 10).await.unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[tokio::test]
async fn ids_are_found_in_every_bucket_and_not_after_compaction() {
    let (_dir, j) = open();
    let bucket = 1u64 << ID_BUCKET_BITS;
    let total = 2 * bucket + 100; // three buckets, the last one short
    let mut n = 0u64;
    while n < total {
        let entries = (n..(n + 1000).min(total))
            .map(|i| Entry {
                id: Uuid::from_u128(u128::from(i) * 0x9e37_79b9_7f4a_7c15), // scattered, as hashes are
                dedup: Some(i.to_be_bytes().to_vec()),
                received_at_ms: i as i64,
                body: vec![1; 16],
            })
            .collect::<Vec<_>>();
        n += entries.len() as u64;
        j.append(entries).await.unwrap();
    }
    let id = |i: u64| Uuid::from_u128(u128::from(i) * 0x9e37_79b9_7f4a_7c15);
    for i in [0, bucket - 2, bucket - 1, bucket, 2 * bucket + 99] {
        assert_eq!(j.reader().find(id(i)).await.unwrap(), Some(i + 1), "row {i} (seq {})", i + 1);
    }
    assert_eq!(j.reader().find(Uuid::from_u128(3)).await.unwrap(), None);
    j.set_watermarks(Ack { stored_seq: bucket + 10, applied_seq: bucket + 10 }).await.unwrap();
    assert_eq!(j.compact(i64::MAX).await.unwrap(), bucket + 10);
    assert_eq!(j.reader().find(id(5)).await.unwrap(), None, "compacted");
    assert_eq!(j.reader().find(id(bucket + 10)).await.unwrap(), Some(bucket + 11));
}

#[test]
fn lookups_by_key_and_by_id_use_their_indexes() {
    let (_dir, j) = open();
    let c = j.reader().lock().unwrap();
    let plan = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> String {
        c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params, |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let by_key = plan("SELECT seq FROM txn WHERE dedup = ?1", &[&1]);
    assert!(by_key.contains("INDEX txn_dedup"), "{by_key}");
    let by_id = plan(&find_sql(), &[&1]);
    assert!(by_id.contains("SEARCH txn USING COVERING INDEX txn_id (<expr>=? AND id=?)"), "{by_id}");
    assert!(!by_id.contains("SCAN txn"), "{by_id}");
}
