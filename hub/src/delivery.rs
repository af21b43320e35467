//! The applier's shell: loads pending transactions from the store, makes the calls the
//! [`Applier`] decides on through the [`OdooClient`], and persists what it reports before anyone
//! is told (the `applied_seq` sent to agents moves only after the store committed).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use holdfast_protocol::Record;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use std::collections::BTreeSet;

use crate::applier::{Applier, ApplierConfig, ApplierEvent, CallFailure, CallOutcome, ErrorClass, ItemOutcome};
use crate::audit::AuditEntry;
use crate::coordinator::gates::Ended;
use crate::odoo::OdooClient;
use crate::reopening::{Coord, Gating};
use crate::shared::{Shared, now_ms};
use crate::store::{Outcome, Store, StoreError};

/// Rows loaded from the store per query.
const LOAD_ROWS_MAX: usize = 1000;
/// How often the applier looks for transactions stored by another replica (this one's own
/// uploads wake it at once).
const LOAD_POLL: std::time::Duration = std::time::Duration::from_millis(250);

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
    let coord = shared.coord.get().cloned();
    let mut gating_rx = match &coord {
        Some(c) => c.gating.subscribe(),
        None => watch::Sender::new(Gating::default()).subscribe(),
    };
    let mut gating = Gating::default();
    // (classes of each call's transactions, when it started)
    let mut started: Started = Default::default();
    let mut calls: JoinSet<(u64, crate::applier::CallOutcome)> = JoinSet::new();
    // Where loading stands in each plant's part of the ledger.
    let mut cursor = crate::store::Cursor::new();
    // Uploads stored by another replica wake nothing here: look for them this often too.
    let mut poll = tokio::time::interval(LOAD_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut load_again = true;
    let mut held_rx = shared.held.subscribe();
    let mut released_rx = shared.released.subscribe();
    let manual = held_rx.borrow_and_update().clone();
    let mut held = BTreeSet::new();
    apply_gating(&mut applier, &mut gating, gating_rx.borrow_and_update().clone(), &manual, &mut held);
    // The store commit of outcomes runs beside the loop, one at a time, so finished calls are
    // taken and new ones started while it syncs; what finishes meanwhile goes in the next.
    let mut recording: Option<tokio::task::JoinHandle<Result<(), StoreError>>> = None;
    // The ledger positions in that commit: until it is through they still read as pending,
    // and a load (from the start again, after a release) must not take them for new.
    let mut in_recording: HashSet<u64> = HashSet::new();
    loop {
        // Loads come in chunks: when a chunk's room is free, or the queue runs low.
        let room = applier.wants();
        if load_again && room > 0 && (room >= LOAD_ROWS_MAX || applier.queued() < LOAD_ROWS_MAX) {
            match shared.store.load_pending(cursor.clone(), applier.wants().min(LOAD_ROWS_MAX)).await {
                Ok(rows) => {
                    load_again = rows.len() == applier.wants().min(LOAD_ROWS_MAX);
                    for row in rows {
                        cursor.insert(row.plant.clone(), row.lsn);
                        if in_recording.contains(&row.lsn) {
                            continue;
                        }
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
            let classes = call.items.iter().map(|i| (format!("{}.{}", i.call.model, i.call.method), false)).collect();
            started.insert(call.id, (classes, Instant::now()));
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
        // Only a running plan's limit has demand to learn about.
        if let Some(c) = coord.as_ref().filter(|_| gating.limit.is_some()) {
            let in_flight = applier.in_flight();
            c.with(|c, _| c.handle_in_flight(in_flight));
        }
        if recording.is_none() {
            let batch = take_events(&shared, &mut applier);
            if !batch.is_empty() {
                in_recording = batch.outcomes.iter().map(Outcome::lsn).collect();
                let shared = shared.clone();
                recording = Some(tokio::spawn(async move { record(&shared, batch).await }));
            }
        }
        let wake = applier.poll_timeout().map(Instant::from_std);
        tokio::select! {
            done = async { recording.as_mut().expect("guarded").await }, if recording.is_some() => {
                recording = None;
                in_recording.clear();
                if !recorded(done) {
                    break;
                }
            }
            Some(done) = calls.join_next() => {
                if let Ok((id, outcome)) = done {
                    observe_call(coord.as_deref(), &mut started, id, &outcome);
                    applier.handle_outcome(Instant::now().into_std(), id, outcome);
                }
                // Every other call that finished meanwhile too: their outcomes are recorded in
                // one store transaction (one fsync) rather than one each.
                while let Some(done) = calls.try_join_next() {
                    if let Ok((id, outcome)) = done {
                        observe_call(coord.as_deref(), &mut started, id, &outcome);
                        applier.handle_outcome(Instant::now().into_std(), id, outcome);
                    }
                }
            }
            changed = gating_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let next = gating_rx.borrow_and_update().clone();
                let manual = held_rx.borrow().clone();
                if apply_gating(&mut applier, &mut gating, next, &manual, &mut held) {
                    cursor.clear();
                    load_again = true;
                }
            }
            _ = shared.stored.notified() => load_again = true,
            _ = poll.tick() => load_again = true,
            changed = held_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let manual = held_rx.borrow_and_update().clone();
                let same = gating.clone();
                if apply_gating(&mut applier, &mut gating, same, &manual, &mut held) {
                    // Their transactions were passed over while held: load from the start
                    // again (the applier ignores the ones it already has).
                    cursor.clear();
                    load_again = true;
                }
            }
            changed = released_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                // Keys an operator's retry or park freed: load them from the start.
                applier.unblock_all();
                cursor.clear();
                load_again = true;
            }
            _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
            _ = shutdown.changed() => break,
        }
    }
    if let Some(commit) = recording.take() {
        recorded(commit.await);
    }
    calls.shutdown().await;
}

/// Applies the coordinator's gating and plant IT's manual holds to the applier; whether a
/// plant was released (its rows must be loaded again).
fn apply_gating(
    applier: &mut Applier,
    current: &mut Gating,
    next: Gating,
    manual: &BTreeSet<String>,
    held: &mut BTreeSet<String>,
) -> bool {
    let now_held: BTreeSet<String> = manual.union(&next.held).cloned().collect();
    for plant in now_held.difference(held) {
        applier.set_held(plant, true);
    }
    let mut released = held.difference(&now_held).count() > 0;
    for plant in held.difference(&now_held) {
        applier.set_held(plant, false);
    }
    *held = now_held;
    if next.hold_all != current.hold_all {
        applier.set_hold_all(next.hold_all);
        released |= !next.hold_all;
    }
    applier.set_limit(next.limit.unwrap_or(usize::MAX));
    for (plant, priority) in &next.priorities {
        applier.set_priority(plant, *priority);
    }
    for plant in current.caps.keys() {
        if !next.caps.contains_key(plant) {
            applier.set_rate_cap(plant, None);
        }
    }
    for (plant, rate) in &next.caps {
        applier.set_rate_cap(plant, Some(*rate));
    }
    if next.round != current.round && !next.round.is_zero() {
        applier.set_round(Some(next.round), Instant::now().into_std());
    }
    *current = next;
    released
}

/// Calls in flight: their transactions' operation classes (with whether each was applied) and
/// when each started.
type Started = std::collections::HashMap<u64, (Vec<(String, bool)>, Instant)>;

/// Tells the coordinator how a call went: its latency, and whether Odoo itself was in trouble.
fn observe_call(coord: Option<&Coord>, started: &mut Started, id: u64, outcome: &CallOutcome) {
    let Some((mut classes, at)) = started.remove(&id) else { return };
    let latency = at.elapsed().as_secs_f64() * 1000.0;
    let ended = match outcome {
        CallOutcome::Items(items) => {
            for (class, item) in classes.iter_mut().zip(items) {
                class.1 = matches!(item, ItemOutcome::Applied { .. } | ItemOutcome::AlreadyApplied { .. });
            }
            Ended::Ok
        }
        CallOutcome::Failed(CallFailure::Unknown(_)) => Ended::Timeout,
        CallOutcome::Failed(CallFailure::Odoo(e))
            if matches!(crate::applier::classify(&e.name), ErrorClass::Conflict | ErrorClass::Outage) =>
        {
            Ended::Error
        }
        CallOutcome::Failed(_) => Ended::Ok,
    };
    let name = match ended {
        Ended::Ok => "ok",
        Ended::Error => "error",
        Ended::Timeout => "timeout",
    };
    crate::metrics::odoo_call(name, latency / 1000.0);
    if ended != Ended::Ok {
        for class in &mut classes {
            class.1 = false;
        }
    }
    let Some(coord) = coord else { return };
    coord.with(|c, now| c.handle_call(now, latency, ended, &classes));
}

/// Whether a store commit of outcomes went through; logged when not.
fn recorded(done: Result<Result<(), StoreError>, tokio::task::JoinError>) -> bool {
    match done {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            // Outcomes not recorded are re-applied after a restart; the inbox skips them.
            warn!(error = %e, "recording outcomes failed; the applier stops until the store recovers");
            false
        }
        Err(e) => {
            warn!(error = %e, "the task recording outcomes failed");
            false
        }
    }
}

/// Outcomes and halts the applier reported, to record together.
#[derive(Debug, Default)]
struct Events {
    outcomes: Vec<Outcome>,
    halts: Vec<String>,
    at_ms: i64,
}

impl Events {
    fn is_empty(&self) -> bool {
        self.outcomes.is_empty() && self.halts.is_empty()
    }
}

/// Takes what the applier reported: logs it, raises alarms, and returns what the store must
/// record.
fn take_events<S: Store>(shared: &Shared<S>, applier: &mut Applier) -> Events {
    let at_ms = now_ms();
    let mut events = Events { at_ms, ..Events::default() };
    let outcomes = &mut events.outcomes;
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
                events.halts.push(reason);
            }
            ApplierEvent::Retrying { plant, order_key, after, reason } => {
                info!(%plant, %order_key, after_ms = after.as_millis() as u64, %reason, "retrying later");
            }
        }
    }
    events
}

/// Records outcomes in one store transaction, audits halts, and tells who waits.
async fn record<S: Store>(shared: &Shared<S>, events: Events) -> Result<(), StoreError> {
    let Events { outcomes, halts, at_ms } = events;
    for reason in halts {
        crate::metrics::applier_halted();
        let entry = AuditEntry {
            at_ms,
            actor: "applier".into(),
            action: "applier_halted".into(),
            target: "odoo".into(),
            reason,
        };
        shared.store.append_audit(entry).await?;
    }
    if !outcomes.is_empty() {
        let quarantines = outcomes.iter().filter(|o| matches!(o, Outcome::Quarantined { .. })).count() as u64;
        let applied = outcomes.len() as u64 - quarantines;
        let moved = shared.store.record_outcomes(outcomes).await?;
        crate::metrics::applied(applied);
        crate::metrics::quarantined(quarantines);
        if !moved.is_empty() {
            shared.applied.send_modify(|generation| *generation += 1);
        }
        if quarantines > 0 {
            shared.quarantined.send_modify(|generation| *generation += 1);
        }
    }
    Ok(())
}
