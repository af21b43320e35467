//! The applier's shell: loads pending transactions from the store, makes the calls the
//! [`Applier`] decides on through the [`OdooClient`], and persists what it reports before anyone
//! is told (the `applied_seq` sent to agents moves only after the store committed).

use std::sync::Arc;
use std::time::Duration;

use holdfast_protocol::Record;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::applier::{Applier, ApplierConfig, ApplierEvent};
use crate::audit::AuditEntry;
use crate::odoo::OdooClient;
use crate::shared::{Shared, now_ms};
use crate::store::{Outcome, Store, StoreError};

/// Rows loaded from the store per query.
const LOAD_ROWS_MAX: usize = 1000;
/// Transactions held in the applier's memory, at most.
pub const QUEUED_MAX: usize = 20_000;
/// Wait after a store error before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// How calls reach Odoo.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// Batches through the `holdfast_inbox` addon.
    Inbox,
    /// One transaction per call, lost answers checked by the registry (`crate::plain`).
    Plain { checks: Arc<Vec<crate::plain::Declared>>, limit_time_real: Duration },
}

pub async fn run<S: Store>(
    shared: Arc<Shared<S>>,
    odoo: Arc<OdooClient>,
    cfg: ApplierConfig,
    delivery: Delivery,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut applier = Applier::new(cfg);
    let mut calls: JoinSet<(u64, crate::applier::CallOutcome)> = JoinSet::new();
    let mut cursor = 0u64;
    let mut load_again = true;
    let mut held_rx = shared.held.subscribe();
    let mut released_rx = shared.released.subscribe();
    let mut held = held_rx.borrow_and_update().clone();
    for plant in &held {
        applier.set_held(plant, true);
    }
    loop {
        if load_again && applier.wants() > 0 {
            match shared.store.load_pending(cursor, applier.wants().min(LOAD_ROWS_MAX)).await {
                Ok(rows) => {
                    load_again = rows.len() == applier.wants().min(LOAD_ROWS_MAX);
                    for row in rows {
                        cursor = row.lsn;
                        applier.handle_pending(
                            row.lsn,
                            &row.plant,
                            row.journal_id,
                            &Record { seq: row.seq, body: row.body, crc: row.crc },
                        );
                    }
                }
                Err(e) => {
                    warn!(error = %e, "loading pending transactions failed");
                    tokio::select! { _ = tokio::time::sleep(STORE_RETRY) => continue, _ = shutdown.changed() => break }
                }
            }
        }
        let now = Instant::now().into_std();
        while let Some(call) = applier.poll_call(now) {
            let odoo = odoo.clone();
            let delivery = delivery.clone();
            calls.spawn(async move {
                let outcome = match delivery {
                    Delivery::Inbox => odoo.apply(&call).await,
                    Delivery::Plain { checks, limit_time_real } => {
                        crate::plain::apply(&odoo, &call, &checks, limit_time_real).await
                    }
                };
                (call.id, outcome)
            });
        }
        if let Err(e) = persist_events(&shared, &mut applier).await {
            warn!(error = %e, "recording outcomes failed; the applier stops until the store recovers");
            // Outcomes not recorded are re-applied after a restart; the inbox skips them.
            break;
        }
        let wake = applier.poll_timeout().map(Instant::from_std);
        tokio::select! {
            Some(done) = calls.join_next() => {
                if let Ok((id, outcome)) = done {
                    applier.handle_outcome(Instant::now().into_std(), id, outcome);
                }
                // Every other call that finished meanwhile too: their outcomes are recorded in
                // one store transaction (one fsync) rather than one each.
                while let Some(done) = calls.try_join_next() {
                    if let Ok((id, outcome)) = done {
                        applier.handle_outcome(Instant::now().into_std(), id, outcome);
                    }
                }
            }
            _ = shared.stored.notified() => load_again = true,
            changed = held_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let now_held = held_rx.borrow_and_update().clone();
                for plant in now_held.difference(&held) {
                    applier.set_held(plant, true);
                }
                let released: Vec<&String> = held.difference(&now_held).collect();
                for plant in &released {
                    applier.set_held(plant, false);
                }
                if !released.is_empty() {
                    // Their transactions were passed over while held: load from the start
                    // again (the applier ignores the ones it already has).
                    cursor = 0;
                    load_again = true;
                }
                held = now_held;
            }
            changed = released_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                // Keys an operator's retry or park freed: load them from the start.
                applier.unblock_all();
                cursor = 0;
                load_again = true;
            }
            _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
            _ = shutdown.changed() => break,
        }
    }
    calls.shutdown().await;
}

async fn persist_events<S: Store>(shared: &Shared<S>, applier: &mut Applier) -> Result<(), StoreError> {
    let mut outcomes = Vec::new();
    let at_ms = now_ms();
    while let Some(event) = applier.poll_event() {
        match event {
            ApplierEvent::Applied { lsn, result } => outcomes.push(Outcome::Applied { lsn, result, at_ms }),
            ApplierEvent::Quarantined { lsn, error } => {
                warn!(lsn, name = %error.name, message = %error.message, "transaction quarantined");
                outcomes.push(Outcome::Quarantined {
                    lsn,
                    error_name: error.name,
                    error_message: error.message,
                    at_ms,
                });
            }
            ApplierEvent::Halted { reason } => {
                warn!(%reason, "applying halted");
                shared.raise_alarm("applier_halted", at_ms, reason.clone());
                shared
                    .store
                    .append_audit(AuditEntry {
                        at_ms,
                        actor: "applier".into(),
                        action: "applier_halted".into(),
                        target: "odoo".into(),
                        reason,
                    })
                    .await?;
            }
            ApplierEvent::Retrying { plant, order_key, after, reason } => {
                info!(%plant, %order_key, after_ms = after.as_millis() as u64, %reason, "retrying later");
            }
        }
    }
    if !outcomes.is_empty() {
        let quarantines = outcomes.iter().any(|o| matches!(o, Outcome::Quarantined { .. }));
        let moved = shared.store.record_outcomes(outcomes).await?;
        if !moved.is_empty() {
            shared.applied.send_modify(|generation| *generation += 1);
        }
        if quarantines {
            shared.quarantined.send_modify(|generation| *generation += 1);
        }
    }
    Ok(())
}
