//! The lease to lead: of the replicas sharing one store, one at a time runs the coordinator and
//! the applier (the only writer into Odoo); the others take agents' uploads and API requests.
//!
//! A follower asks for the lease every fifth of its time and meanwhile keeps its copy of the
//! coordinator's plan (its agents' notices) and of plant IT's manual holds from the store. Once
//! it has the lease it restores the coordinator from the store (a running plan comes back
//! paused, as after a restart) and starts the leader's tasks; every Odoo call then carries the
//! lease's epoch, which Odoo's inbox compares with the newest it saw. The leader renews every
//! fifth of the lease; when two thirds of it passed without a renewal (the store unreachable,
//! or another replica holds it), it is fenced: no Odoo call starts any more, its tasks are
//! stopped where they are (calls in flight abandoned: the inbox makes them safe to send
//! again), and this task ends, which ends the process (systemd or Kubernetes starts it again,
//! as a follower). A replica stopping cleanly gives the lease up at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::reopening::{Coord, Persist};
use crate::shared::{Shared, now_ms};
use crate::store::Store;

/// This replica in the lease.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// `name/process id`: a restarted replica is a new holder, under a new epoch.
    pub holder: String,
    /// Where its API answers, for followers forwarding to it.
    pub address: String,
    pub ttl: Duration,
    /// Whether other replicas share the store. A hub alone on its SQLite file has nobody to
    /// hand over to: a store that stops answering for a while (its disk, a backup's lock) is
    /// the watchdog's business, and it keeps leading; only another holder deposes it.
    pub replicated: bool,
}

impl Candidate {
    /// How often the lease is asked for or renewed.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 5
    }

    /// How long a leader goes on without a renewal before it fences itself: a third of the
    /// lease before another replica may take it.
    pub fn deadline(&self) -> Duration {
        self.ttl * 2 / 3
    }
}

/// What a replica starts once it leads: the tasks, given the coordinator's changes to store
/// and a stop signal.
pub type LeaderTasks =
    Box<dyn FnOnce(&mut JoinSet<()>, mpsc::UnboundedReceiver<Persist>, watch::Receiver<bool>) + Send>;

/// Follows, then leads until the lease is lost or the hub stops. Returns when either happens.
pub async fn run<S: Store>(
    shared: Arc<Shared<S>>,
    coord: Arc<Coord>,
    me: Candidate,
    mut persist: mpsc::UnboundedReceiver<Persist>,
    start: LeaderTasks,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(me.renew_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<String> = None;
    let (mut epoch, mut renewed) = loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // A follower's coordinator changes nothing: what it made is dropped.
        while persist.try_recv().is_ok() {}
        let asked = tokio::time::Instant::now();
        match tokio::time::timeout(me.ttl, shared.store.lease(&me.holder, &me.address, me.ttl, now_ms())).await {
            Ok(Ok(Some(epoch))) => break (epoch, asked),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "asking for the lease to lead failed; asking again"),
            Err(_) => tracing::warn!("asking for the lease to lead timed out; asking again"),
        }
        match tokio::time::timeout(me.ttl, crate::reopening::refresh(&shared, &coord, seen.as_deref(), false)).await {
            Ok(Ok(text)) => seen = text,
            Ok(Err(e)) => tracing::warn!(error = %e, "reading the leader's plan failed"),
            Err(_) => tracing::warn!("reading the leader's plan timed out"),
        }
        let _ = tokio::time::timeout(me.ttl, refresh_held(&shared)).await;
    };
    shared.leadership.lead(epoch);
    crate::metrics::leading(epoch);
    tracing::info!(holder = %me.holder, epoch, address = %me.address, "this replica leads: it runs the coordinator and the applier");
    while persist.try_recv().is_ok() {}
    let restored =
        tokio::time::timeout_at(renewed + me.deadline(), crate::reopening::refresh(&shared, &coord, None, true))
            .await
            .map_err(|_| crate::store::StoreError::Unavailable("the store did not answer in time".into()))
            .and_then(|r| r);
    if let Err(e) = restored {
        tracing::error!(error = %e, "restoring the coordinator from the store failed; giving the lease up");
        shared.leadership.fence();
        let _ = shared.store.step_down(&me.holder, epoch, now_ms()).await;
        return;
    }
    refresh_held(&shared).await;
    let (term, term_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    start(&mut tasks, persist, term_rx);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {
                let _ = term.send(true);
                while tasks.join_next().await.is_some() {}
                if let Err(e) = shared.store.step_down(&me.holder, epoch, now_ms()).await {
                    tracing::warn!(error = %e, "giving the lease up failed; another replica takes it when it expires");
                }
                return;
            }
            Some(_) = tasks.join_next() => {
                tracing::error!("a leader task stopped by itself; this replica stops leading");
                depose(&shared, &mut tasks);
                let _ = shared.store.step_down(&me.holder, epoch, now_ms()).await;
                return;
            }
        }
        // Nothing here waits past the deadline: a store that stopped answering is a lost lease.
        let asked = tokio::time::Instant::now();
        let limit = if me.replicated { renewed + me.deadline() } else { asked + me.ttl };
        match tokio::time::timeout_at(limit, shared.store.lease(&me.holder, &me.address, me.ttl, now_ms())).await {
            Ok(Ok(Some(e))) if e == epoch => renewed = asked,
            Ok(Ok(Some(e))) if !me.replicated => {
                // Alone on the store, which stalled past the lease: taken again, under a new epoch.
                tracing::warn!(epoch = e, "the lease lapsed while the store did not answer; taken again");
                (epoch, renewed) = (e, asked);
                shared.leadership.lead(e);
                crate::metrics::leading(e);
            }
            Ok(Ok(other)) => {
                depose(&shared, &mut tasks);
                tracing::error!(epoch, now = ?other, "this replica's lease was taken over; it stopped calling Odoo and exits");
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing the lease failed; trying again"),
            Err(_) => {}
        }
        let _ = tokio::time::timeout_at(renewed + me.deadline(), async {
            refresh_held(&shared).await;
            merge_heartbeats(&shared).await;
        })
        .await;
        if !me.replicated {
            continue;
        }
        if tokio::time::Instant::now() >= renewed + me.deadline() {
            depose(&shared, &mut tasks);
            tracing::error!(
                epoch,
                deadline_ms = me.deadline().as_millis() as u64,
                "the lease could not be renewed in time: this replica stopped calling Odoo before its lease expires, and exits"
            );
            return;
        }
    }
}

/// Stops leading at once: no Odoo call starts from now on, and the leader's tasks stop where
/// they are (a call in flight is abandoned; the inbox makes sending it again safe).
fn depose<S: Store>(shared: &Shared<S>, tasks: &mut JoinSet<()>) {
    shared.leadership.fence();
    tasks.abort_all();
}

/// The heartbeats other replicas heard, for the coordinator (which hears a plant by them):
/// each plant's newer than the one this replica has.
async fn merge_heartbeats<S: Store>(shared: &Shared<S>) {
    match shared.store.heartbeats().await {
        Ok(rows) => {
            let mut beats = shared.heartbeats.lock().expect("heartbeats lock");
            for (plant, at_ms, json) in rows {
                if beats.get(&plant).is_some_and(|(at, _)| *at >= at_ms) {
                    continue;
                }
                if let Ok(beat) = serde_json::from_str::<holdfast_protocol::Heartbeat>(&json) {
                    beats.insert(plant, (at_ms, beat));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading the plants' heartbeats failed"),
    }
}

/// Plant IT's manual holds as the store has them (an agent may be connected to another replica).
async fn refresh_held<S: Store>(shared: &Shared<S>) {
    match shared.store.plant_manuals().await {
        Ok(rows) => {
            let held: std::collections::BTreeSet<String> = rows.into_iter().map(|(plant, _)| plant).collect();
            shared.held.send_if_modified(|h| {
                let changed = *h != held;
                *h = held;
                changed
            });
        }
        Err(e) => tracing::warn!(error = %e, "reading plant IT's manual holds failed"),
    }
}
