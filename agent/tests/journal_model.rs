//! The journal against an in-memory model, under random appends (keyed and unkeyed), resends,
//! watermark moves, compactions and reopenings.

use std::collections::BTreeMap;

use holdfast_agent::journal::{Appended, Entry, Journal, Limits};
use holdfast_protocol::msg::Ack;
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Clone, Debug)]
enum Op {
    /// Append entries named from a small pool: below [`UNKEYED_FROM`] keyed, so resends happen;
    /// from it unkeyed, so every arrival is new.
    Append(Vec<u8>),
    Watermarks {
        stored: u64,
        applied: u64,
    },
    /// Compact applied rows received before this many ms.
    Compact(i64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop::collection::vec(0u8..40, 1..6).prop_map(Op::Append),
        2 => (0u64..80, 0u64..80).prop_map(|(stored, applied)| Op::Watermarks { stored, applied }),
        1 => (0i64..200).prop_map(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

const UNKEYED_FROM: u8 = 30;

/// What the journal must hold.
#[derive(Debug, Default)]
struct Model {
    /// seq → (name, id, received_at_ms) of rows still held.
    rows: BTreeMap<u64, (u8, Uuid, i64)>,
    /// Ids given to unkeyed arrivals so far.
    unkeyed: u128,
    last_seq: u64,
    stored: u64,
    applied: u64,
}

impl Model {
    /// The entries for `names`, and what appending them must answer.
    fn append(&mut self, names: &[u8], at_ms: i64) -> (Vec<Entry>, Vec<(u64, bool)>) {
        let mut entries = Vec::new();
        let mut answers = Vec::new();
        for &name in names {
            let keyed = name < UNKEYED_FROM;
            let id = if keyed {
                Uuid::from_u128(u128::from(name) + 1)
            } else {
                self.unkeyed += 1;
                Uuid::from_u128((1 << 64) + self.unkeyed)
            };
            entries.push(Entry {
                id,
                dedup: keyed.then(|| vec![b'k', name]),
                received_at_ms: at_ms,
                body: vec![name; 1 + usize::from(name % 7)],
            });
            match self.rows.iter().find(|(_, (n, _, _))| keyed && *n == name) {
                Some((seq, _)) => answers.push((*seq, true)),
                None => {
                    self.last_seq += 1;
                    self.rows.insert(self.last_seq, (name, id, at_ms));
                    answers.push((self.last_seq, false));
                }
            }
        }
        (entries, answers)
    }

    fn watermarks(&mut self, stored: u64, applied: u64) {
        self.stored = self.stored.max(stored.min(self.last_seq));
        self.applied = self.applied.max(applied.min(stored).min(self.last_seq));
    }

    fn compact(&mut self, older_than_ms: i64) -> u64 {
        let before = self.rows.len();
        let applied = self.applied;
        self.rows.retain(|seq, (_, _, at)| !(*seq <= applied && *at < older_than_ms));
        (before - self.rows.len()) as u64
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_journal_matches_its_model(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("journal.db");
            let mut journal = Journal::open(&path, 0, Limits::NONE).unwrap();
            let journal_id = journal.reader().state().await.unwrap().journal_id;
            let mut model = Model::default();
            let mut clock = 0i64;
            for op in ops {
                match op {
                    Op::Append(names) => {
                        clock += 7;
                        let (entries, want) = model.append(&names, clock);
                        let got = journal.append(entries).await.unwrap();
                        let got: Vec<(u64, bool)> = got.iter().map(|Appended { seq, duplicate, .. }| (*seq, *duplicate)).collect();
                        prop_assert_eq!(got, want);
                    }
                    Op::Watermarks { stored, applied } => {
                        journal.set_watermarks(Ack { stored_seq: stored, applied_seq: applied }).await.unwrap();
                        model.watermarks(stored, applied);
                    }
                    Op::Compact(t) => {
                        prop_assert_eq!(journal.compact(t).await.unwrap(), model.compact(t));
                    }
                    Op::Reopen => {
                        drop(journal);
                        journal = Journal::open(&path, 0, Limits::NONE).unwrap();
                    }
                }
                let state = journal.reader().state().await.unwrap();
                prop_assert_eq!(state.journal_id, journal_id);
                prop_assert_eq!((state.last_seq, state.stored_seq, state.applied_seq), (model.last_seq, model.stored, model.applied));
                prop_assert_eq!(journal.usage().rows, model.rows.len() as u64);
            }
            let held = journal.reader().read(0, 10_000).await.unwrap();
            let held: Vec<(u64, u8)> = held.iter().map(|r| { r.check().unwrap(); (r.seq, r.body[0]) }).collect();
            let want: Vec<(u64, u8)> = model.rows.iter().map(|(seq, (name, _, _))| (*seq, *name)).collect();
            prop_assert_eq!(held, want);
            // Every held row is found by its id; an id never given is not.
            for (seq, (_, id, _)) in &model.rows {
                prop_assert_eq!(journal.reader().find(*id).await.unwrap(), Some(*seq));
            }
            prop_assert_eq!(journal.reader().find(Uuid::from_u128(u128::MAX)).await.unwrap(), None);
            Ok(())
        })?;
    }
}
