//! The audit trail's hash chain.
//!
//! Each entry's hash is SHA-256 over the previous entry's hash and the entry's fields, each
//! length-prefixed, so no entry can be changed, removed or reordered without every later hash
//! changing. The first entry chains from 32 zero bytes. Storage of the chain lives in the store;
//! this module only computes and checks it.
//!
//! A chain alone does not stop someone with write access to the store from rewriting every
//! hash after an entry they changed. **Checkpoints** anchor it: periodically the hub signs the
//! head (its sequence and hash, and the time) with HMAC-SHA256 under a key kept outside the store
//! (`[audit] hmac_key`), stores the checkpoint and writes the head to its log. Verifying with the
//! key then finds a rewritten stretch (the head a checkpoint signed is not the chain's), removed
//! entries at the end (a checkpoint signed a head beyond it), and forged checkpoints.

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

/// A signed head of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub head_seq: u64,
    #[serde(serialize_with = "as_hex")]
    pub head_hash: Hash,
    pub at_ms: i64,
    #[serde(serialize_with = "as_hex")]
    pub mac: Hash,
}

/// Bytes of a generated checkpoint key (`holdfast-hub audit keygen`), and the fewest accepted.
pub const KEY_BYTES: usize = 32;

fn checkpoint_message(head_seq: u64, head_hash: &Hash, at_ms: i64) -> Vec<u8> {
    let mut m = b"holdfast audit checkpoint v1".to_vec();
    m.extend_from_slice(&head_seq.to_be_bytes());
    m.extend_from_slice(head_hash);
    m.extend_from_slice(&at_ms.to_be_bytes());
    m
}

/// Signs the head `head_seq`/`head_hash` at `at_ms` with `key`.
pub fn sign_checkpoint(key: &[u8], head_seq: u64, head_hash: Hash, at_ms: i64) -> Checkpoint {
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        &checkpoint_message(head_seq, &head_hash, at_ms),
    );
    let mut mac = [0u8; 32];
    mac.copy_from_slice(tag.as_ref());
    Checkpoint { head_seq, head_hash, at_ms, mac }
}

/// What the checkpoints show that the chain alone cannot.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(
        "the checkpoint of {at_ms} ms (head {head_seq}) does not verify with this key: it was forged or altered, or the key is not the hub's"
    )]
    Forged { head_seq: u64, at_ms: i64 },
    #[error(
        "audit entries {first} to {head_seq} were rewritten: the checkpoint of {at_ms} ms signed another entry {head_seq}; the first entry that may have changed is {first}"
    )]
    Rewritten { first: u64, head_seq: u64, at_ms: i64 },
    #[error(
        "audit entries after {last} were removed: the checkpoint of {at_ms} ms signed entry {head_seq}; the first removed is {}", last + 1
    )]
    Removed { last: u64, head_seq: u64, at_ms: i64 },
}

/// Checks the chain, then every checkpoint against it with `key`; returns how many entries and
/// checkpoints were checked.
pub fn verify_anchored(
    entries: &[ChainedEntry],
    checkpoints: &[Checkpoint],
    key: &[u8],
) -> Result<(u64, u64), AnchorError> {
    let verify_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut checked = 0;
    // Entries up to here match a checkpoint (so a rewrite starts after it).
    let mut anchored = 0;
    for c in checkpoints {
        let message = checkpoint_message(c.head_seq, &c.head_hash, c.at_ms);
        if ring::hmac::verify(&verify_key, &message, &c.mac).is_err() {
            return Err(AnchorError::Forged { head_seq: c.head_seq, at_ms: c.at_ms });
        }
        let last = entries.last().map_or(0, |e| e.seq);
        if c.head_seq > last {
            // Removed at the end; a removal inside the chain shows as a gap below.
            verify(entries)?;
            return Err(AnchorError::Removed { last, head_seq: c.head_seq, at_ms: c.at_ms });
        }
        let at = entries.iter().find(|e| e.seq == c.head_seq);
        if at.is_none_or(|e| e.hash != c.head_hash) {
            verify(entries)?;
            return Err(AnchorError::Rewritten { first: anchored + 1, head_seq: c.head_seq, at_ms: c.at_ms });
        }
        anchored = anchored.max(c.head_seq);
        checked += 1;
    }
    Ok((verify(entries)?, checked))
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

    /// The chain rebuilt from `from` on, as someone with write access to the store could.
    fn rehash(entries: &mut [ChainedEntry]) {
        let mut prev = GENESIS;
        for e in entries.iter_mut() {
            e.prev_hash = prev;
            e.hash = chain(&prev, e.seq, &e.entry);
            prev = e.hash;
        }
    }

    #[test]
    fn checkpoints_find_a_rewritten_stretch_a_removed_tail_and_a_forgery() {
        let key = [7u8; KEY_BYTES];
        let entries = chain_of(6);
        let cps = vec![sign_checkpoint(&key, 2, entries[1].hash, 100), sign_checkpoint(&key, 5, entries[4].hash, 200)];
        assert_eq!(verify_anchored(&entries, &cps, &key), Ok((6, 2)));

        // Entry 4 edited and every later hash recomputed: the chain verifies, the checkpoints do not.
        let mut rewritten = entries.clone();
        rewritten[3].entry.reason = "nothing happened".into();
        rehash(&mut rewritten);
        assert_eq!(verify(&rewritten), Ok(6));
        let err = verify_anchored(&rewritten, &cps, &key).unwrap_err();
        assert_eq!(err, AnchorError::Rewritten { first: 3, head_seq: 5, at_ms: 200 });
        assert_eq!(
            err.to_string(),
            "audit entries 3 to 5 were rewritten: the checkpoint of 200 ms signed another entry 5; the first entry that may have changed is 3"
        );

        let mut truncated = entries.clone();
        truncated.truncate(4);
        assert_eq!(
            verify_anchored(&truncated, &cps, &key).unwrap_err().to_string(),
            "audit entries after 4 were removed: the checkpoint of 200 ms signed entry 5; the first removed is 5"
        );

        // A checkpoint made without the key, to cover a rewrite.
        let forged = vec![cps[0].clone(), sign_checkpoint(b"not the key", 5, rewritten[4].hash, 200)];
        assert_eq!(verify_anchored(&rewritten, &forged, &key), Err(AnchorError::Forged { head_seq: 5, at_ms: 200 }));
        // An edit without rehashing is named exactly by the chain.
        let mut altered = entries.clone();
        altered[3].entry.reason = "edited".into();
        assert_eq!(verify_anchored(&altered, &cps, &key), Err(AnchorError::Chain(ChainError::Altered { seq: 4 })));
    }
}
