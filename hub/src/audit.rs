//! The audit trail's hash chain.
//!
//! Each entry's hash is SHA-256 over the previous entry's hash and the entry's fields, each
//! length-prefixed, so no entry can be changed, removed or reordered without every later hash
//! changing. The first entry chains from 32 zero bytes. Storage of the chain lives in the store;
//! this module only computes and checks it.

use serde::Serialize;
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];
pub const GENESIS: Hash = [0; 32];

/// Something a person or a component did that operators must be able to trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// Who: `operator:<name>`, `gateway:<plant>`, `hub`, `applier`.
    pub actor: String,
    /// What, as a stable snake_case verb such as `journal_epoch_started`.
    pub action: String,
    /// What it was done to, such as a plant or a transaction id.
    pub target: String,
    /// Why, in a sentence.
    pub reason: String,
}

/// A stored entry with its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainedEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    #[serde(serialize_with = "as_hex")]
    pub prev_hash: Hash,
    #[serde(serialize_with = "as_hex")]
    pub hash: Hash,
}

fn as_hex<S: serde::Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(h))
}

/// The hash of `entry` chained after `prev`.
pub fn chain(prev: &Hash, seq: u64, entry: &AuditEntry) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(entry.at_ms.to_be_bytes());
    for field in [&entry.actor, &entry.action, &entry.target, &entry.reason] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

/// Where a chain stopped being valid.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("audit entry {seq}: its previous hash does not match entry {}'s hash (an entry was removed or reordered)", seq - 1)]
    Broken { seq: u64 },
    #[error("audit entry {seq}: its hash does not match its contents (the entry was altered)")]
    Altered { seq: u64 },
    #[error("audit entry {seq} follows entry {prev}: sequence numbers must be consecutive")]
    Gap { seq: u64, prev: u64 },
}

/// Checks entries in order, starting from the genesis; returns how many were checked.
pub fn verify<'a>(entries: impl IntoIterator<Item = &'a ChainedEntry>) -> Result<u64, ChainError> {
    let mut prev = GENESIS;
    let mut prev_seq = 0;
    for e in entries {
        if e.seq != prev_seq + 1 {
            return Err(ChainError::Gap { seq: e.seq, prev: prev_seq });
        }
        if e.prev_hash != prev {
            return Err(ChainError::Broken { seq: e.seq });
        }
        if chain(&prev, e.seq, &e.entry) != e.hash {
            return Err(ChainError::Altered { seq: e.seq });
        }
        prev = e.hash;
        prev_seq = e.seq;
    }
    Ok(prev_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(n: u64) -> Vec<ChainedEntry> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let entry = AuditEntry {
                    at_ms: seq as i64,
                    actor: "hub".into(),
                    action: "test".into(),
                    target: format!("t{seq}"),
                    reason: "r".into(),
                };
                let hash = chain(&prev, seq, &entry);
                let e = ChainedEntry { seq, entry, prev_hash: prev, hash };
                prev = hash;
                e
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain_of(5)), Ok(5));
    }

    #[test]
    fn altering_removing_or_reordering_is_detected() {
        let mut altered = chain_of(5);
        altered[2].entry.reason = "edited".into();
        assert_eq!(verify(&altered), Err(ChainError::Altered { seq: 3 }));

        let mut removed = chain_of(5);
        removed.remove(2);
        assert_eq!(verify(&removed), Err(ChainError::Gap { seq: 4, prev: 2 }));

        let mut resequenced = chain_of(5);
        resequenced.remove(2);
        for (i, e) in resequenced.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        assert_eq!(verify(&resequenced), Err(ChainError::Broken { seq: 3 }));
    }
}
