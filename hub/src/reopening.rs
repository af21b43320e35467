//! The coordinator's shell: feeds [`Coordinator`] what the hub observes (its probe's verdict,
//! heartbeats, backlogs, the canary probe, the applier's calls), carries out its actions (audit
//! entries and the durable state in one store transaction, alarms, the preflight, the wave
//! webhook), and publishes the [`Gating`] the applier's shell follows.
//!
//! An operator's verb answers only after its state and audit entry are stored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::audit::AuditEntry;
use crate::coordinator::gates::Ended;
use crate::coordinator::{Action, Coordinator, CoordinatorConfig, Durable, VerbError};
use crate::odoo::{OdooClient, RpcError};
use crate::shared::{Shared, now_ms};
use crate::store::{Store, StoreError};

/// What the applier's shell follows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gating {
    /// A platform-wide incident holds every plant.
    pub hold_all: bool,
    /// Plants the coordinator does not let the applier send for now.
    pub held: BTreeSet<String>,
    /// The limit on calls in flight while a plan runs.
    pub limit: Option<usize>,
    pub priorities: BTreeMap<String, u32>,
    pub caps: BTreeMap<String, f64>,
    /// The scheduling round (the drain window).
    pub round: Duration,
}

/// A change of the coordinator's, for the writer.
#[derive(Debug)]
pub struct Persist {
    /// Its place in the order changes were made: the writer reports it stored.
    seq: u64,
    state: Option<String>,
    actions: Vec<Action>,
    done: Option<oneshot::Sender<()>>,
}

/// The coordinator as the hub's shells share it.
pub struct Coord {
    inner: Mutex<Coordinator>,
    persist: mpsc::UnboundedSender<Persist>,
    /// The last change handed to the writer, and the last it stored.
    made: std::sync::atomic::AtomicU64,
    stored: watch::Sender<u64>,
    pub gating: watch::Sender<Gating>,
}

impl std::fmt::Debug for Coord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coord").finish_non_exhaustive()
    }
}

impl Coord {
    /// Runs `f` on the coordinator at the wall clock's now, then hands what changed to the
    /// writer and republishes the gating.
    pub fn with<R>(&self, f: impl FnOnce(&mut Coordinator, i64) -> R) -> R {
        self.run(f, None)
    }

    /// An operator's verb: answers once its state and audit entries are stored.
    pub async fn verb(&self, f: impl FnOnce(&mut Coordinator, i64) -> Result<(), VerbError>) -> Result<(), VerbError> {
        let (tx, rx) = oneshot::channel();
        self.run(f, Some(tx))?;
        rx.await.map_err(|_| VerbError::Invalid("the hub is stopping".into()))
    }

    fn run<R>(&self, f: impl FnOnce(&mut Coordinator, i64) -> R, done: Option<oneshot::Sender<()>>) -> R {
        let mut c = self.inner.lock().expect("coordinator lock");
        let out = f(&mut c, now_ms());
        let actions: Vec<Action> = std::iter::from_fn(|| c.poll_action()).collect();
        let state = c.take_dirty().then(|| serde_json::to_string(c.durable()).expect("the state serializes"));
        let gating = gating_of(&c);
        // Sent under the lock: the writer stores states in the order they were made.
        if state.is_some() || !actions.is_empty() || done.is_some() {
            let seq = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let _ = self.persist.send(Persist { seq, state, actions, done });
        }
        drop(c);
        self.gating.send_if_modified(|g| {
            let changed = *g != gating;
            *g = gating;
            changed
        });
        out
    }

    /// What `GET /api/v1/reopening` shows: only what is stored (a change still on its way to
    /// the store is waited for), so nothing shown is undone by a crash.
    pub async fn view(&self) -> Result<serde_json::Value, NotStored> {
        let (view, made) = {
            let c = self.inner.lock().expect("coordinator lock");
            (Self::view_of(&c), self.made.load(std::sync::atomic::Ordering::Relaxed))
        };
        let mut stored = self.stored.subscribe();
        match tokio::time::timeout(Duration::from_secs(10), stored.wait_for(|s| *s >= made)).await {
            Ok(Ok(_)) => Ok(view),
            _ => Err(NotStored),
        }
    }

    fn view_of(c: &Coordinator) -> serde_json::Value {
        let now = now_ms();
        let d = c.durable();
        let plants: serde_json::Map<String, serde_json::Value> = d
            .plants
            .iter()
            .map(|(name, p)| {
                let wave = p.wave.map(|w| w + 1);
                let value = json!({
                    "state": if p.manual { "manual_offline" } else { p.state.as_str() },
                    "coordinator_state": p.state.as_str(),
                    "why": p.why,
                    "wave": wave,
                    "hold": p.hold,
                    "rate_cap": p.rate_cap,
                    "backlog": p.backlog,
                    "applies": c.applies(name),
                    "eta_ms": c.eta_ms(now, name),
                });
                (name.clone(), value)
            })
            .collect();
        json!({
            "endpoint": d.endpoint,
            "plan": d.plan,
            "plants": plants,
            "limit": c.limit(),
            "incidents": {"open": d.incidents.open, "closed": d.incidents.closed},
            "baselines": d.baselines,
        })
    }

    /// What the metrics show of the coordinator.
    pub fn figures(&self) -> Figures {
        let c = self.inner.lock().expect("coordinator lock");
        let d = c.durable();
        let plan = d.plan.as_ref();
        Figures {
            stage: plan.map(|p| {
                use crate::coordinator::{Phase, Stage};
                match p.stage {
                    Stage::Armed => ("armed", None),
                    Stage::Preflight => ("preflight", None),
                    Stage::Replaying => ("replaying", None),
                    Stage::Wave { index, phase: Phase::Opening } => ("opening", Some(index + 1)),
                    Stage::Wave { index, phase: Phase::Draining } => ("draining", Some(index + 1)),
                    Stage::Wave { index, phase: Phase::Baking { .. } } => ("baking", Some(index + 1)),
                    Stage::Wave { index, phase: Phase::Promoted } => ("promoted", Some(index + 1)),
                    Stage::Completed => ("completed", None),
                    Stage::Aborted => ("aborted", None),
                }
            }),
            paused: plan.is_some_and(|p| p.paused.is_some()),
            limit: c.limit(),
            gates: plan
                .and_then(|p| p.decision.as_ref())
                .map(|d| {
                    // A gate judged several times (one per operation class) shows its worst.
                    let mut gates = std::collections::BTreeMap::<String, i64>::new();
                    for r in &d.results {
                        let v = match r.verdict {
                            crate::coordinator::gates::Verdict::Pass => 1,
                            crate::coordinator::gates::Verdict::Fail(_) => -1,
                            crate::coordinator::gates::Verdict::Inconclusive(_) => 0,
                        };
                        let worst = gates.entry(r.gate.clone()).or_insert(v);
                        *worst = (*worst).min(v);
                    }
                    gates.into_iter().collect()
                })
                .unwrap_or_default(),
            incidents: d.incidents.open.iter().map(|i| i.class.as_str()).collect(),
            plants: d.plants.iter().map(|(name, p)| (name.clone(), p.state.as_str(), p.wave.map(|w| w + 1))).collect(),
        }
    }

    /// A plant's place in the plan, for its agent: state, wave (from 1) and ETA.
    pub fn plant_notice(&self, plant: &str) -> Option<(String, Option<usize>, Option<i64>)> {
        let c = self.inner.lock().expect("coordinator lock");
        let p = c.plant(plant)?;
        Some((p.state.as_str().to_owned(), p.wave.map(|w| w + 1), c.eta_ms(now_ms(), plant)))
    }
}

/// The coordinator as the metrics show it.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// The plan's stage (`opening`, `draining`, `baking` and `promoted` with their wave, from
    /// 1), if there is a plan.
    pub stage: Option<(&'static str, Option<usize>)>,
    pub paused: bool,
    pub limit: Option<usize>,
    /// Each gate's last verdict: 1 pass, 0 inconclusive, -1 fail.
    pub gates: Vec<(String, i64)>,
    /// The class of each open incident.
    pub incidents: Vec<&'static str>,
    /// Each plant's state and wave (from 1).
    pub plants: Vec<(String, &'static str, Option<usize>)>,
}

fn gating_of(c: &Coordinator) -> Gating {
    let d = c.durable();
    Gating {
        hold_all: d.incidents.is_open(crate::coordinator::incident::Class::PlatformWide),
        held: d.plants.keys().filter(|p| !c.applies(p)).cloned().collect(),
        limit: c.limit(),
        priorities: d.plants.keys().map(|p| (p.clone(), c.priority(p))).collect(),
        caps: d.plants.iter().filter_map(|(n, p)| p.rate_cap.map(|r| (n.clone(), r))).collect(),
        round: Duration::from_millis(c.config().drain.window_ms.max(1) as u64),
    }
}

/// The coordinator's state as last saved (none yet: the default).
async fn load_durable<S: Store>(shared: &Shared<S>) -> Result<(Durable, Option<String>), StoreError> {
    let text = shared.store.load_coordinator().await?;
    let durable = match &text {
        Some(text) => serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            path: "coordinator".into(),
            detail: format!("the coordinator's saved state does not read: {e}"),
        })?,
        None => Durable::default(),
    };
    Ok((durable, text))
}

/// A coordinator restored from `durable` (a plan comes back paused) knowing every plant.
async fn restored<S: Store>(
    shared: &Shared<S>,
    cfg: CoordinatorConfig,
    durable: Durable,
) -> Result<Coordinator, StoreError> {
    let mut coordinator = Coordinator::restore(cfg, durable, now_ms());
    let now = now_ms();
    for row in shared.store.plants().await? {
        coordinator.handle_backlog(now, &row.plant, 0);
    }
    Ok(coordinator)
}

/// Loads the saved state (a plan comes back paused) and makes the coordinator; its changes go
/// to the returned receiver, which the writer stores once this replica leads.
pub async fn start<S: Store>(
    shared: &Arc<Shared<S>>,
    cfg: CoordinatorConfig,
) -> Result<(Arc<Coord>, mpsc::UnboundedReceiver<Persist>), StoreError> {
    let (durable, _) = load_durable(shared).await?;
    let coordinator = restored(shared, cfg, durable).await?;
    let gating = gating_of(&coordinator);
    let (tx, rx) = mpsc::unbounded_channel();
    let coord = Arc::new(Coord {
        inner: Mutex::new(coordinator),
        persist: tx,
        made: 0.into(),
        stored: watch::Sender::new(0),
        gating: watch::Sender::new(gating),
    });
    // What the restore changed (a plan paused by the restart) is stored first.
    coord.with(|_, _| ());
    Ok((coord, rx))
}

/// Replaces the coordinator's state with the store's: a follower keeping up with the leader's
/// plan (for its agents' notices), when `seen` differs from what was saved; or, with
/// `taking_over`, a replica that just took the lease, whose restore (a running plan paused)
/// is stored by its writer. Returns the saved text it read.
pub async fn refresh<S: Store>(
    shared: &Shared<S>,
    coord: &Coord,
    seen: Option<&str>,
    taking_over: bool,
) -> Result<Option<String>, StoreError> {
    let (durable, text) = load_durable(shared).await?;
    if !taking_over && text.as_deref() == seen {
        return Ok(text);
    }
    let cfg = coord.inner.lock().expect("coordinator lock").config().clone();
    let mut fresh = restored(shared, cfg, durable).await?;
    if !taking_over {
        // A follower's copy: nothing of it is stored or acted upon.
        while fresh.poll_action().is_some() {}
        fresh.take_dirty();
    }
    *coord.inner.lock().expect("coordinator lock") = fresh;
    coord.with(|_, _| ());
    shared.plant_states.send_modify(|n| *n += 1);
    Ok(text)
}

/// The coordinator's last change could not be stored in time (the store is failing, or the
/// hub is stopping): nothing unstored is shown.
#[derive(Debug, thiserror::Error)]
#[error("the coordinator's latest change is not stored yet (the store is slow or failing); try again")]
pub struct NotStored;

/// What the writer needs to carry out the coordinator's actions.
#[derive(Debug)]
pub struct Wiring {
    /// The applier's client (the preflight and the replay use it too).
    pub odoo: Arc<OdooClient>,
    /// Every client a failover points elsewhere, with its timeout.
    pub clients: Vec<(Arc<OdooClient>, Duration)>,
    pub odoo_cfg: crate::config::OdooConfig,
    pub applier: crate::applier::ApplierConfig,
    /// `plain` delivery: the hub cannot tell what a recovered Odoo already holds.
    pub plain: bool,
    pub webhook: Option<String>,
}

/// Points every client at `url` under `epoch` (a failover).
async fn retarget<S: Store>(shared: &Shared<S>, wiring: &Wiring, url: &str, epoch: u64) {
    for (client, timeout) in &wiring.clients {
        let cfg = crate::config::OdooConfig { url: url.to_owned(), timeout: *timeout, ..wiring.odoo_cfg.clone() };
        match crate::odoo::JsonRpc::new(&cfg) {
            Ok(t) => client.retarget(Box::new(t), epoch).await,
            Err(e) => warn!(error = %e, %url, "cannot build a client for the new endpoint"),
        }
    }
    // What the probe said was of the old endpoint: unknown until it judges the new one (the
    // coordinator takes no verdict from "unknown").
    *shared.odoo.lock().expect("odoo view lock") = crate::probe::OdooView {
        verdict: "unknown".into(),
        since_ms: Some(now_ms()),
        detail: format!("failover to {url}: not probed yet"),
        epoch,
        ..Default::default()
    };
    shared.clear_alarm(crate::probe::ALARM);
    shared.odoo_url.send_replace((url.to_owned(), epoch));
    info!(%url, epoch, "the hub writes to a new Odoo endpoint from now on");
}

/// The writer: stores each change with its audit entries, in order, then raises alarms and runs
/// the preflight, webhooks, failover retargets and replays the coordinator asked for.
pub async fn write<S: Store>(
    shared: Arc<Shared<S>>,
    coord: Arc<Coord>,
    wiring: Wiring,
    mut rx: mpsc::UnboundedReceiver<Persist>,
    mut shutdown: watch::Receiver<bool>,
) {
    let wiring = Arc::new(wiring);
    // A replica taking over after another's failover writes to the endpoint that one chose.
    let chosen = coord.with(|c, _| c.durable().endpoint.as_ref().map(|e| (e.url.clone(), e.epoch)));
    if let Some((url, epoch)) = chosen.filter(|(_, epoch)| *epoch > wiring.odoo.epoch()) {
        retarget(&shared, &wiring, &url, epoch).await;
    }
    let (odoo, webhook) = (wiring.odoo.clone(), wiring.webhook.clone());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().ok();
    let mut stopping = false;
    loop {
        let next = if stopping {
            // What was made before the stop is still stored.
            match rx.try_recv() {
                Ok(p) => p,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                p = rx.recv() => match p { Some(p) => p, None => return },
                _ = shutdown.changed() => { stopping = true; continue; }
            }
        };
        let Persist { seq, state, actions, done } = next;
        let at_ms = now_ms();
        let audit: Vec<AuditEntry> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Audit { actor, action, target, reason } => Some(AuditEntry {
                    at_ms,
                    actor: actor.clone(),
                    action: action.clone(),
                    target: target.clone(),
                    reason: reason.clone(),
                }),
                _ => None,
            })
            .collect();
        // Until it is stored, nothing of the change shows: a failed save is retried with the
        // next change (the state is whole each time).
        let mut tries = 0;
        while let Err(e) = shared.store.save_coordinator(state.clone(), audit.clone()).await {
            tries += 1;
            warn!(error = %e, tries, "saving the coordinator's state failed; retrying");
            if stopping {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        coord.stored.send_replace(seq);
        for action in actions {
            match action {
                Action::Audit { .. } => {}
                Action::Alarm { name, on: true, message } => {
                    shared.clear_alarm(&name);
                    shared.raise_alarm(&name, at_ms, message);
                }
                Action::Alarm { name, on: false, .. } => shared.clear_alarm(&name),
                Action::Plant { plant, state, wave } => {
                    info!(%plant, state = state.as_str(), wave = ?wave.map(|w| w + 1), "plant state");
                    shared.plant_states.send_modify(|g| *g += 1);
                }
                Action::Preflight => {
                    let (coord, odoo, plain) = (coord.clone(), odoo.clone(), wiring.plain);
                    tokio::spawn(async move {
                        let result = preflight(&odoo, plain).await;
                        coord.with(|c, now| c.handle_preflight(now, result));
                    });
                }
                Action::Retarget { url, epoch } => retarget(&shared, &wiring, &url, epoch).await,
                Action::Replay { from_ms } => {
                    let (shared, coord, wiring) = (shared.clone(), coord.clone(), wiring.clone());
                    tokio::spawn(async move {
                        let result = replay(&shared, &wiring, from_ms).await;
                        coord.with(|c, now| c.handle_replay_done(now, result));
                    });
                }
                Action::OpenWave { index, plants } => {
                    let (coord, http, webhook) = (coord.clone(), http.clone(), webhook.clone());
                    tokio::spawn(async move {
                        let result = match (webhook, http) {
                            (None, _) => Ok(()),
                            (Some(url), Some(http)) => call_webhook(&http, &url, index, &plants).await,
                            (Some(_), None) => Err("no HTTP client".into()),
                        };
                        coord.with(|c, now| c.handle_wave_opened(now, index, result));
                    });
                }
            }
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// Applies again, through the inbox (which skips what it holds), every transaction applied from
/// `from_ms` on, in ledger order with the applier's own rules (one call per key at a time). What
/// the recovered Odoo refuses is listed for an operator; in plain mode nothing can be decided by
/// the hub, so the transactions are counted for an operator to check.
async fn replay<S: Store>(shared: &Shared<S>, wiring: &Wiring, from_ms: i64) -> Result<String, String> {
    use crate::applier::{Applier, ApplierEvent, CallOutcome, ItemOutcome};
    use crate::plain::Replayed;
    let mut applier = Applier::new(crate::applier::ApplierConfig { queued_max: usize::MAX, ..wiring.applier.clone() });
    let (mut after, mut total, mut fed) = (0u64, 0u64, 0u64);
    let mut refused: Vec<String> = Vec::new();
    let checks = Arc::new(wiring.odoo_cfg.checks.clone());
    let mut tally: std::collections::HashMap<Replayed, u64> = std::collections::HashMap::new();
    loop {
        let rows = shared.store.applied_since(from_ms, after, 1000).await.map_err(|e| e.to_string())?;
        let Some(last) = rows.last() else { break };
        after = last.lsn;
        fed += rows.len() as u64;
        for row in rows {
            let record = holdfast_protocol::Record { seq: row.seq, body: row.body, crc: row.crc };
            applier.handle_pending(row.lsn, &row.plant, row.journal_id, &record);
        }
        let mut calls = tokio::task::JoinSet::new();
        loop {
            let now = tokio::time::Instant::now().into_std();
            while let Some(call) = applier.poll_call(now) {
                let (odoo, checks, limit) = (wiring.odoo.clone(), checks.clone(), wiring.odoo_cfg.limit_time_real);
                let plain = wiring.plain;
                calls.spawn(async move {
                    if plain {
                        let (what, outcome) = crate::plain::replay(&odoo, &call, &checks, limit).await;
                        (call.id, Some(what), outcome)
                    } else {
                        (call.id, None, odoo.apply(&call).await)
                    }
                });
            }
            while let Some(event) = applier.poll_event() {
                match event {
                    ApplierEvent::Applied { .. } => total += 1,
                    ApplierEvent::Quarantined { lsn, error } => {
                        let what = if error.name == crate::plain::UNDECIDED { "undecided" } else { "refused" };
                        refused.push(format!("ledger {lsn} {what}: {}: {}", error.name, error.message))
                    }
                    ApplierEvent::Halted { reason } => return Err(reason),
                    ApplierEvent::Retrying { .. } => {}
                }
            }
            if applier.in_flight() == 0 && applier.queued() == 0 {
                break;
            }
            let wake = applier.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                Some(done) = calls.join_next() => {
                    if let Ok((id, what, outcome)) = done {
                        if let (Some(what), CallOutcome::Items(items)) = (what, &outcome)
                            && matches!(items.as_slice(), [ItemOutcome::Applied { .. }])
                        {
                            *tally.entry(what).or_default() += 1;
                        }
                        applier.handle_outcome(tokio::time::Instant::now().into_std(), id, outcome);
                    }
                }
                _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
            }
        }
    }
    let waiting = fed - total - refused.len() as u64;
    let done = if wiring.plain {
        let n = |w| tally.get(&w).copied().unwrap_or(0);
        format!(
            "{fed} transactions applied from {from_ms} ms, replayed by their checks: {} held already, {} sent again, {} reads",
            n(Replayed::Held),
            n(Replayed::Sent),
            n(Replayed::Read)
        )
    } else {
        format!(
            "{total} transactions applied from {from_ms} ms sent again; the recovered Odoo's inbox skipped what it held"
        )
    };
    if !refused.is_empty() {
        // Every one is named: this list is what the operator checks in the recovered Odoo.
        return Err(format!(
            "{done}; {} could not be put back (and {waiting} after them in their keys were not sent): {}",
            refused.len(),
            refused.join("; ")
        ));
    }
    Ok(done)
}

/// The plant a preflight's canary transaction is recorded under in Odoo's inbox.
pub const PREFLIGHT_PLANT: &str = "holdfast-preflight";

/// `odoo check`'s ladder on the active endpoint, then (inbox mode) a canary write through the
/// inbox: a transaction of its own, recorded by the inbox in the same database transaction as
/// its (read-only) call, so the write path the replay and the waves use is proven.
async fn preflight(odoo: &OdooClient, plain: bool) -> Result<String, String> {
    let version = odoo.version().await.map_err(|e| format!("common.version: {e}"))?;
    let version = version.get("server_version").and_then(|v| v.as_str()).unwrap_or("?").to_owned();
    odoo.execute_kw("res.users", "context_get", json!([]), json!({}))
        .await
        .map_err(|e| format!("an authenticated read: {e}"))?;
    if plain {
        return Ok(format!("Odoo {version} answers an authenticated read (plain mode: no inbox to write through)"));
    }
    let id = uuid::Uuid::now_v7();
    let call = crate::applier::Call {
        id: 0,
        plant: PREFLIGHT_PLANT.into(),
        items: vec![crate::applier::Item {
            lsn: 0,
            plant: PREFLIGHT_PLANT.into(),
            journal_id: uuid::Uuid::nil(),
            seq: 0,
            id,
            order_key: "preflight".into(),
            occurred_at_ms: None,
            call: holdfast_protocol::OdooCall {
                model: "res.users".into(),
                method: "context_get".into(),
                args: json!([]),
                kwargs: Default::default(),
            },
        }],
    };
    match odoo.apply(&call).await {
        crate::applier::CallOutcome::Items(items)
            if matches!(items.as_slice(), [crate::applier::ItemOutcome::Applied { .. }]) =>
        {
            Ok(format!("Odoo {version} answers, and its inbox recorded the canary transaction {id}"))
        }
        other => Err(format!("the canary write through the inbox: {other:?}")),
    }
}

async fn call_webhook(http: &reqwest::Client, url: &str, index: usize, plants: &[String]) -> Result<(), String> {
    let body = json!({"event": "wave_opening", "wave": index + 1, "plants": plants});
    match http.post(url).json(&body).send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("{url} answered HTTP {}", resp.status().as_u16())),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// Every drain window: what the hub observes, into the coordinator.
pub async fn observe<S: Store>(shared: Arc<Shared<S>>, coord: Arc<Coord>, mut shutdown: watch::Receiver<bool>) {
    let every = coord.gating.borrow().round;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut diagnoses: BTreeMap<String, Vec<holdfast_protocol::DiagnosisEvent>> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let pending = match shared.store.pending_by_plant().await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "reading the backlogs failed");
                continue;
            }
        };
        let odoo = shared.odoo.lock().expect("odoo view lock").clone();
        let heartbeats: Vec<(String, i64, holdfast_protocol::Heartbeat)> = shared
            .heartbeats
            .lock()
            .expect("heartbeats lock")
            .iter()
            .map(|(p, (at, hb))| (p.clone(), *at, hb.clone()))
            .collect();
        let connected: Vec<String> = shared.connections.lock().expect("connections lock").keys().cloned().collect();
        coord.with(|c, now| {
            let known: BTreeSet<String> = c.durable().plants.keys().cloned().collect();
            let mut counts: BTreeMap<&str, u64> = known.iter().map(|p| (p.as_str(), 0)).collect();
            for crate::store::Backlog { plant, pending: n, .. } in &pending {
                counts.insert(plant, *n);
            }
            for (plant, n) in counts {
                c.handle_backlog(now, plant, n);
            }
            for plant in &connected {
                c.handle_heard(now, plant);
            }
            for (plant, at, hb) in &heartbeats {
                c.handle_heard(*at, plant);
                c.handle_manual(now, plant, hb.manual.is_some());
                if let Some(d) = &hb.diagnosis {
                    let seen = diagnoses.entry(plant.clone()).or_default();
                    let new: Vec<&holdfast_protocol::DiagnosisEvent> =
                        d.events.iter().filter(|e| !seen.contains(e)).collect();
                    if !new.is_empty() {
                        let text = new
                            .iter()
                            .map(|e| format!("{} {} at {} ms ({})", e.subject, e.state, e.at_ms, e.detail))
                            .collect::<Vec<_>>()
                            .join("; ");
                        c.handle_diagnosis(now, plant, &text);
                        *seen = d.events.clone();
                    }
                }
            }
            // A verdict about a deposed endpoint says nothing of the active one.
            let active_epoch = c.durable().endpoint.as_ref().map_or(0, |e| e.epoch);
            match odoo.verdict.as_str() {
                _ if odoo.epoch != active_epoch => {}
                "unknown" => {}
                "reachable" => c.handle_probe(now, true, &odoo.detail),
                _ => c.handle_probe(now, false, &odoo.detail),
            }
            c.handle_timeout(now);
        });
    }
}

/// The canary: the same authenticated read at the same cadence, before and during reopening,
/// one at a time on its own connection. It takes one of `permits`, the hub's budget of calls in
/// flight to Odoo (`applier.calls_max`, shared with the applier and the probe), so the hub never
/// holds more of Odoo's workers than that; its latency is timed from the permit on (waiting for
/// one would measure the hub's queue, not Odoo).
pub async fn canary(
    coord: Arc<Coord>,
    odoo: Arc<OdooClient>,
    permits: Arc<tokio::sync::Semaphore>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let _permit = tokio::select! {
            permit = permits.acquire() => match permit {
                Ok(permit) => permit,
                Err(_) => return, // closed: the hub is stopping
            },
            _ = shutdown.changed() => return,
        };
        let started = tokio::time::Instant::now();
        let answer = tokio::select! {
            a = odoo.execute_kw("res.users", "context_get", json!([]), json!({})) => a,
            _ = shutdown.changed() => return,
        };
        let latency = started.elapsed().as_secs_f64() * 1000.0;
        let ended = match answer {
            Ok(_) => Ended::Ok,
            Err(RpcError::Unknown(_)) => Ended::Timeout,
            Err(_) => Ended::Error,
        };
        coord.with(|c, now| c.handle_canary(now, latency, ended));
    }
}
