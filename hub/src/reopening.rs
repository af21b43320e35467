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
    state: Option<String>,
    actions: Vec<Action>,
    done: Option<oneshot::Sender<()>>,
}

/// The coordinator as the hub's shells share it.
pub struct Coord {
    inner: Mutex<Coordinator>,
    persist: mpsc::UnboundedSender<Persist>,
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
        let _ = self.persist.send(Persist { state, actions, done });
        drop(c);
        self.gating.send_if_modified(|g| {
            let changed = *g != gating;
            *g = gating;
            changed
        });
        out
    }

    /// What `GET /api/v1/reopening` shows.
    pub fn view(&self) -> serde_json::Value {
        let c = self.inner.lock().expect("coordinator lock");
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
            "plan": d.plan,
            "plants": plants,
            "limit": c.limit(),
            "incidents": {"open": d.incidents.open, "closed": d.incidents.closed},
            "baselines": d.baselines,
        })
    }

    /// A plant's place in the plan, for its agent: state, wave (from 1) and ETA.
    pub fn plant_notice(&self, plant: &str) -> Option<(String, Option<usize>, Option<i64>)> {
        let c = self.inner.lock().expect("coordinator lock");
        let p = c.plant(plant)?;
        Some((p.state.as_str().to_owned(), p.wave.map(|w| w + 1), c.eta_ms(now_ms(), plant)))
    }
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

/// Loads the saved state (a plan comes back paused) and starts the writer.
pub async fn start<S: Store>(
    shared: &Arc<Shared<S>>,
    cfg: CoordinatorConfig,
) -> Result<(Arc<Coord>, mpsc::UnboundedReceiver<Persist>), StoreError> {
    let durable: Durable = match shared.store.load_coordinator().await? {
        Some(text) => serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: "coordinator".into(),
            detail: format!("the coordinator's saved state does not read: {e}"),
        })?,
        None => Durable::default(),
    };
    let mut coordinator = Coordinator::restore(cfg, durable, now_ms());
    let now = now_ms();
    for row in shared.store.plants().await? {
        coordinator.handle_backlog(now, &row.plant, 0);
    }
    let gating = gating_of(&coordinator);
    let (tx, rx) = mpsc::unbounded_channel();
    let coord = Arc::new(Coord { inner: Mutex::new(coordinator), persist: tx, gating: watch::Sender::new(gating) });
    // What the restore changed (a plan paused by the restart) is stored first.
    coord.with(|_, _| ());
    Ok((coord, rx))
}

/// The writer: stores each change with its audit entries, in order, then raises alarms and runs
/// the preflight and webhooks the coordinator asked for.
pub async fn write<S: Store>(
    shared: Arc<Shared<S>>,
    coord: Arc<Coord>,
    odoo: Arc<OdooClient>,
    webhook: Option<String>,
    mut rx: mpsc::UnboundedReceiver<Persist>,
    mut shutdown: watch::Receiver<bool>,
) {
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
        let Persist { state, actions, done } = next;
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
                    let (coord, odoo) = (coord.clone(), odoo.clone());
                    tokio::spawn(async move {
                        let result = preflight(&odoo).await;
                        coord.with(|c, now| c.handle_preflight(now, result));
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

/// `odoo check`'s ladder on the active endpoint, then a call through the inbox's entry point.
async fn preflight(odoo: &OdooClient) -> Result<String, String> {
    let version = odoo.version().await.map_err(|e| format!("common.version: {e}"))?;
    let version = version.get("server_version").and_then(|v| v.as_str()).unwrap_or("?").to_owned();
    odoo.execute_kw("res.users", "context_get", json!([]), json!({}))
        .await
        .map_err(|e| format!("an authenticated read: {e}"))?;
    Ok(format!("Odoo {version} answers an authenticated read"))
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
            for (plant, n) in &pending {
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
            match odoo.verdict.as_str() {
                "unknown" => {}
                "reachable" => c.handle_probe(now, true, &odoo.detail),
                _ => c.handle_probe(now, false, &odoo.detail),
            }
            c.handle_timeout(now);
        });
    }
}

/// The canary: the same authenticated read at the same cadence, before and during reopening,
/// one at a time on its own connection, outside the applier's budget of calls (waiting for a
/// permit would measure the hub's queue, not Odoo).
pub async fn canary(coord: Arc<Coord>, odoo: OdooClient, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
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
