use super::*;

fn entry(id: u128) -> Entry {
    Entry { id: Uuid::from_u128(id), received_at_ms: id as i64 * 1000, body: vec![id as u8; 8] }
}

fn open() -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("journal.db"), 1).unwrap();
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
    let j = Journal::open(&dir.path().join("journal.db"), 2).unwrap();
    let state = j.reader().state().await.unwrap();
    assert_eq!((state.journal_id, state.last_seq, state.rows), (id, 2, 2), "the journal id and rows survive a restart");
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
    assert_eq!((state.stored_seq, state.applied_seq, state.rows), (8, 6, 6));
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
    assert!(Journal::open(&path, 1).is_err());
}
