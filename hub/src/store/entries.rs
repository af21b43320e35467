//! The audit entries the stores write together with the changes they record, worded once for
//! every backend.

use holdfast_protocol::ManualNotice;
use uuid::Uuid;

use super::{QuarantinedRow, Release, Revocation};
use crate::audit::AuditEntry;

/// A plant's journal opened under `epoch`; `previous` is the journal it replaces (its id and
/// epoch), if any.
pub fn epoch_started(
    plant: &str,
    journal_id: Uuid,
    epoch: u32,
    previous: Option<(Uuid, u32)>,
    now_ms: i64,
) -> AuditEntry {
    let reason = match previous {
        None => "first journal of this plant".to_owned(),
        Some((old, old_epoch)) => format!(
            "journal {journal_id} replaces journal {old} (epoch {old_epoch}): a replaced gateway or a reset journal; its sequences start over"
        ),
    };
    AuditEntry {
        at_ms: now_ms,
        actor: format!("gateway:{plant}"),
        action: "journal_epoch_started".into(),
        target: format!("{plant}/epoch/{epoch}"),
        reason,
    }
}

/// Plant IT's manual state as the plant's heartbeat now reports it (`None`: it ended).
pub fn manual_changed(plant: &str, manual: Option<&ManualNotice>, now_ms: i64) -> AuditEntry {
    let (action, reason) = match manual {
        Some(m) => (
            "plant_manual_state_seen",
            format!(
                "plant IT set {} by {} since {} ms: {}; nothing more is applied for the plant",
                m.kind, m.who, m.since_ms, m.why
            ),
        ),
        None => ("plant_manual_state_cleared", "plant IT's manual state ended; applying resumes".to_owned()),
    };
    AuditEntry {
        at_ms: now_ms,
        actor: format!("gateway:{plant}"),
        action: action.into(),
        target: plant.to_owned(),
        reason,
    }
}

/// Odoo refused a transaction: it waits for a person, blocking its ordering key.
pub fn quarantined(
    plant: &str,
    id: Uuid,
    order_key: &str,
    error_name: &str,
    error_message: &str,
    at_ms: i64,
) -> AuditEntry {
    AuditEntry {
        at_ms,
        actor: "applier".into(),
        action: "transaction_quarantined".into(),
        target: format!("{plant}/{id}"),
        reason: format!("{error_name}: {error_message} (ordering key {order_key:?} is blocked until an operator acts)"),
    }
}

/// An operator's retry or park of a quarantined transaction.
pub fn released(action: Release, actor: &str, reason: &str, row: &QuarantinedRow, now_ms: i64) -> AuditEntry {
    let verb = match action {
        Release::Retry => "retried",
        Release::Park => "parked",
    };
    AuditEntry {
        at_ms: now_ms,
        actor: actor.to_owned(),
        action: format!("transaction_{verb}"),
        target: format!("{}/{}", row.plant, row.id),
        reason: format!(
            "{reason} (sequence {} of journal {}, ordering key {:?}, quarantined for {}: {})",
            row.seq, row.journal_id, row.order_key, row.error_name, row.error_message
        ),
    }
}

/// A gateway's own audit record, entering the hub's trail.
pub fn gateway_record(plant: &str, r: holdfast_protocol::GatewayAuditRecord, now_ms: i64) -> AuditEntry {
    AuditEntry {
        at_ms: now_ms,
        actor: format!("gateway:{plant}/{}", r.actor),
        action: r.action,
        target: plant.to_owned(),
        reason: format!("{} (at {} ms on the gateway, its record {})", r.reason, r.at_ms, r.id),
    }
}

/// Records `stored + 1..=through` the gateway had compacted, which this ledger lacks.
pub fn gap_compacted(plant: &str, journal_id: Uuid, stored: u64, from: u64, through: u64, now_ms: i64) -> AuditEntry {
    AuditEntry {
        at_ms: now_ms,
        actor: format!("gateway:{plant}"),
        action: "journal_gap_compacted".into(),
        target: format!("{plant}/{journal_id}/{}..={through}", stored + 1),
        reason: format!(
            "the gateway had compacted records {from} to {through} after the hub reported them applied, and this ledger lacks them (was the hub restored from an older backup?); they were applied in Odoo then; reconcile them there if in doubt"
        ),
    }
}

/// A plant's certificates revoked.
pub fn revoked(r: &Revocation) -> AuditEntry {
    AuditEntry {
        at_ms: r.at_ms,
        actor: r.actor.clone(),
        action: "plant_certificates_revoked".into(),
        target: format!("{}/certificates issued before {}", r.plant, r.issued_before_ms),
        reason: r.reason.clone(),
    }
}

/// A replica took the lease to lead under `epoch`; `previous` is the holder and epoch whose
/// lease expired, if any.
pub fn leadership_taken(
    holder: &str,
    address: &str,
    epoch: u64,
    previous: Option<(&str, u64)>,
    now_ms: i64,
) -> AuditEntry {
    let why = match previous {
        None => "the first leader of this store".to_owned(),
        Some((was, e)) => format!("the lease of {was} (epoch {e}) expired"),
    };
    AuditEntry {
        at_ms: now_ms,
        actor: format!("hub:{holder}"),
        action: "leadership_taken".into(),
        target: format!("lease/epoch/{epoch}"),
        reason: format!("{why}; this replica now runs the coordinator and the applier (API at {address})"),
    }
}

/// A replica stopping gave its lease up.
pub fn leadership_released(holder: &str, epoch: u64, now_ms: i64) -> AuditEntry {
    AuditEntry {
        at_ms: now_ms,
        actor: format!("hub:{holder}"),
        action: "leadership_released".into(),
        target: format!("lease/epoch/{epoch}"),
        reason: "the replica is stopping; another takes the lease without waiting for it to expire".into(),
    }
}
