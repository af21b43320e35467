//! The coordinator: which plants are applied, and how fast. Pure, like the applier: the shell
//! passes in what it observes (the probe's verdict, plants heard, call outcomes, the canary's
//! latency, backlogs) with the time, carries out the [`Action`]s, and saves [`Durable`] when it
//! changed.
//!
//! - Incidents are classified from the hub's own observations ([`incident`]); a
//!   `platform_wide` one holds every plant's applies.
//! - The reopening plan: `armed → preflight → (replaying) → wave k: opening → draining → baking →
//!   promoted → … → completed`, with `paused` and `aborted` from every non-terminal state.
//!   Abort returns plants to `held`; nothing is discarded. A plan restored after a restart comes
//!   back paused.
//! - Health gates ([`gates`]) are evaluated every drain window while a wave drains or bakes; an
//!   inconclusive decision pauses, a failing one slows the drain ([`drain`]) and, at its floor,
//!   pauses.
//! - Precedence: plant IT's manual state > an operator's hold > the plan. The plan skips a plant
//!   it may not open and says why.

pub mod drain;
pub mod gates;
pub mod incident;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use drain::{Adjust, DrainConfig, DrainLimit, Window};
use gates::{Baselines, Decision, Ended, GateConfig, Measurements, Verdict};
use incident::{Change, Class, IncidentConfig, Incidents, Observed};

/// A plant's place in the reopening order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlantSpec {
    /// Lower reopens first; plants of one priority form a tier.
    pub priority: u32,
    /// A shipment deadline (wall time, milliseconds): its wave should have caught up by then.
    pub deadline_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorConfig {
    pub gates: GateConfig,
    pub drain: DrainConfig,
    pub incidents: IncidentConfig,
    /// How long a wave soaks after it caught up before it is promoted.
    pub soak_ms: i64,
    /// The most plants one wave opens (every draining plant gets a batch each scheduling round).
    pub wave_plants_max: usize,
    /// A plant opened alone first, as a canary.
    pub canary_plant: Option<String>,
    /// Plants' priorities and deadlines; a plant not listed comes last.
    pub plants: BTreeMap<String, PlantSpec>,
    /// The canary's baseline p95 when the hub measured none before the incident.
    pub canary_baseline_ms: Option<f64>,
    /// Start an armed plan by itself once Odoo has been reachable this long (`None`: a person
    /// starts it).
    pub auto_start_after_ms: Option<i64>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            gates: GateConfig::default(),
            drain: DrainConfig::default(),
            incidents: IncidentConfig::default(),
            soak_ms: 60_000,
            wave_plants_max: 16,
            canary_plant: None,
            plants: BTreeMap::new(),
            canary_baseline_ms: None,
            auto_start_after_ms: None,
        }
    }
}

/// A plant as the hub's coordinator sees it (`silent` and `manual_offline` are shown beside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlantState {
    Live,
    Held,
    Draining,
    CaughtUp,
}

impl PlantState {
    pub fn as_str(self) -> &'static str {
        match self {
            PlantState::Live => "live",
            PlantState::Held => "held",
            PlantState::Draining => "draining",
            PlantState::CaughtUp => "caught_up",
        }
    }
}

/// Who did what, why and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Act {
    pub by: String,
    pub reason: String,
    pub at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plant {
    pub state: PlantState,
    /// Why it is in that state.
    pub why: String,
    /// Its wave in the current plan.
    pub wave: Option<usize>,
    /// An operator's hold.
    pub hold: Option<Act>,
    /// An operator's cap on its rate (transactions per second).
    pub rate_cap: Option<f64>,
    /// Plant IT's manual offline (from its heartbeats; not the coordinator's to keep).
    #[serde(skip)]
    pub manual: bool,
    /// Transactions pending in the ledger (from the shell).
    #[serde(skip)]
    pub backlog: u64,
}

impl Plant {
    fn new() -> Self {
        Self {
            state: PlantState::Live,
            why: String::new(),
            wave: None,
            hold: None,
            rate_cap: None,
            manual: false,
            backlog: 0,
        }
    }

    /// Why the plan may not open it now, if it may not.
    fn skipped(&self) -> Option<String> {
        if self.manual {
            return Some("plant IT switched it to manual offline".into());
        }
        self.hold.as_ref().map(|h| format!("held by {}: {}", h.by, h.reason))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Opening,
    Draining,
    Baking { until_ms: i64 },
    Promoted,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    Armed,
    Preflight,
    /// A failover's re-apply of what the disaster-recovery Odoo lost, before any backlog.
    Replaying,
    Wave {
        index: usize,
        #[serde(flatten)]
        phase: Phase,
    },
    Completed,
    Aborted,
}

impl Stage {
    pub fn terminal(self) -> bool {
        matches!(self, Stage::Completed | Stage::Aborted)
    }

    pub fn name(self) -> String {
        match self {
            Stage::Armed => "armed".into(),
            Stage::Preflight => "preflight".into(),
            Stage::Replaying => "replaying".into(),
            Stage::Wave { index, phase } => {
                let phase = match phase {
                    Phase::Opening => "opening",
                    Phase::Draining => "draining",
                    Phase::Baking { .. } => "baking",
                    Phase::Promoted => "promoted",
                };
                format!("wave {}: {phase}", index + 1)
            }
            Stage::Completed => "completed".into(),
            Stage::Aborted => "aborted".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    pub plants: Vec<String>,
    pub deadline_ms: Option<i64>,
    pub opened_ms: Option<i64>,
    pub caught_up_ms: Option<i64>,
    pub promoted_ms: Option<i64>,
    /// The deadline alarm was raised for this wave.
    #[serde(default)]
    pub deadline_alarmed: bool,
}

/// One step of a plan's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub at_ms: i64,
    pub stage: String,
    pub by: String,
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub id: u64,
    pub stage: Stage,
    pub paused: Option<Act>,
    pub waves: Vec<Wave>,
    /// A failover's replay runs before the first wave.
    pub replay: bool,
    pub history: Vec<Step>,
    /// The newest gate decision.
    pub decision: Option<Decision>,
    /// Since when the gates judge (Odoo reachable again, or the plan's start).
    #[serde(default)]
    pub started_ms: Option<i64>,
    /// The shell's preflight passed; the gates' first full judgement is awaited.
    #[serde(default)]
    pub preflight_passed: bool,
}

impl Plan {
    pub fn running(&self) -> bool {
        !self.stage.terminal() && self.stage != Stage::Armed
    }
}

/// The Odoo endpoint the hub writes to, after a failover.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub url: String,
    /// Raised at each failover; a call begun under an older epoch is not trusted.
    pub epoch: u64,
    pub since_ms: i64,
    pub by: String,
    pub reason: String,
    /// Up to when the disaster-recovery Odoo holds the primary's data.
    pub recovery_point_ms: i64,
    /// What was applied from here on is applied again, first (the recovery point less a margin).
    pub replay_from_ms: i64,
    /// Endpoints deposed by a failover: never written again without an explicit, audited
    /// failback (a failover back to one of them).
    pub fenced: Vec<String>,
    /// When the replay was through (or an operator judged what it left); until then every plan
    /// armed replays first, whatever ended the one before.
    #[serde(default)]
    pub replayed_ms: Option<i64>,
}

/// What survives a restart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Durable {
    /// The active endpoint when a failover chose one (otherwise the config's `odoo.url`).
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    pub plants: BTreeMap<String, Plant>,
    pub plan: Option<Plan>,
    pub incidents: Incidents,
    pub baselines: Baselines,
    pub limit: Option<DrainLimit>,
    pub plans_made: u64,
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// An audit entry (every change of an incident, the plan or a plant).
    Audit { actor: String, action: String, target: String, reason: String },
    /// Raise (`on`) or clear an alarm.
    Alarm { name: String, on: bool, message: String },
    /// A plant's state changed: its agent is told, applies follow [`Coordinator::applies`].
    Plant { plant: String, state: PlantState, wave: Option<usize> },
    /// Run the preflight (`odoo check` on the active endpoint and a canary write through the
    /// inbox), then report it with [`Coordinator::handle_preflight`].
    Preflight,
    /// A wave opens: call the operator's webhook, then report with
    /// [`Coordinator::handle_wave_opened`].
    OpenWave { index: usize, plants: Vec<String> },
    /// Apply again, through the idempotent path and before any backlog, what was applied from
    /// `from_ms` on; report with [`Coordinator::handle_replay_done`].
    Replay { from_ms: i64 },
    /// The active endpoint changed: point every Odoo client at it.
    Retarget { url: String, epoch: u64 },
}

/// Why a verb was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerbError {
    #[error("a reason is required")]
    ReasonRequired,
    #[error("there is no reopening plan")]
    NoPlan,
    #[error("the plan is {stage}: {verb} does not apply")]
    NotNow { stage: String, verb: &'static str },
    #[error("unknown plant {0:?}")]
    UnknownPlant(String),
    #[error("wave {0} does not exist or has already opened")]
    BadWave(usize),
    #[error("{0}")]
    Invalid(String),
}

/// Drain windows in a row without the limit filled before a wave counts as caught up but for
/// its serial tails.
pub const TAIL_WINDOWS: u32 = 2;

/// Alarms the coordinator raises.
pub const ALARM_PLAN_PAUSED: &str = "reopening_paused";
pub const ALARM_DEADLINE: &str = "reopening_deadline";

#[derive(Debug)]
pub struct Coordinator {
    cfg: CoordinatorConfig,
    d: Durable,
    m: Measurements,
    odoo_reachable: Option<bool>,
    odoo_detail: String,
    reachable_since_ms: Option<i64>,
    last_heard: BTreeMap<String, i64>,
    next_tick_ms: Option<i64>,
    /// Calls in flight reached the limit during this window.
    saturated: bool,
    /// Drain windows in a row in which a draining wave never filled the limit: what is left
    /// are serial tails (ordering keys that go one call at a time), which waiting would not
    /// protect Odoo from, only idle it.
    tail_windows: u32,
    /// Transactions applied, with when: the rate behind ETAs and deadline projections.
    applied: VecDeque<(i64, u64)>,
    actions: VecDeque<Action>,
    dirty: bool,
}

impl Coordinator {
    pub fn new(cfg: CoordinatorConfig) -> Self {
        Self::restore(cfg, Durable::default(), 0)
    }

    /// Picks up what a previous run saved. A plan interrupted by a stop comes back paused, with
    /// every plant where it was.
    pub fn restore(cfg: CoordinatorConfig, mut d: Durable, now_ms: i64) -> Self {
        let mut dirty = false;
        if let Some(plan) = d.plan.as_mut()
            && plan.running()
            && plan.paused.is_none()
        {
            let reason = format!("the hub restarted while the plan was {}", plan.stage.name());
            plan.paused = Some(Act { by: "coordinator".into(), reason: reason.clone(), at_ms: now_ms });
            plan.history.push(Step {
                at_ms: now_ms,
                stage: plan.stage.name(),
                by: "coordinator".into(),
                what: format!("paused: {reason}"),
            });
            dirty = true;
        }
        let mut c = Self {
            cfg,
            d,
            m: Measurements::default(),
            odoo_reachable: None,
            odoo_detail: String::new(),
            reachable_since_ms: None,
            last_heard: BTreeMap::new(),
            next_tick_ms: None,
            saturated: false,
            tail_windows: 0,
            applied: VecDeque::new(),
            actions: VecDeque::new(),
            dirty,
        };
        if let Some(plan) = &c.d.plan
            && let Some(p) = &plan.paused
            && plan.running()
        {
            let message = format!("reopening plan {} paused at {}: {}", plan.id, plan.stage.name(), p.reason);
            if dirty {
                let target = format!("plan {}", plan.id);
                let reason = p.reason.clone();
                c.audit("coordinator", "plan_paused", &target, &reason);
            }
            c.actions.push_back(Action::Alarm { name: ALARM_PLAN_PAUSED.into(), on: true, message });
        }
        c
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.cfg
    }

    pub fn durable(&self) -> &Durable {
        &self.d
    }

    /// Whether the durable state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<i64> {
        let soak = match self.d.plan.as_ref() {
            Some(Plan { stage: Stage::Wave { phase: Phase::Baking { until_ms }, .. }, paused: None, .. }) => {
                Some(*until_ms)
            }
            _ => None,
        };
        match (self.next_tick_ms, soak) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn plan(&self) -> Option<&Plan> {
        self.d.plan.as_ref()
    }

    pub fn plant(&self, plant: &str) -> Option<&Plant> {
        self.d.plants.get(plant)
    }

    /// The limit on calls in flight while a plan runs; `None` otherwise.
    pub fn limit(&self) -> Option<usize> {
        self.d.limit.as_ref().map(|l| l.limit)
    }

    /// Whether the applier may send a plant's transactions now.
    pub fn applies(&self, plant: &str) -> bool {
        let Some(p) = self.d.plants.get(plant) else { return !self.platform_down() };
        if p.manual || p.hold.is_some() {
            return false;
        }
        match p.state {
            PlantState::Held => false,
            PlantState::Draining => self.d.plan.as_ref().is_some_and(|plan| plan.paused.is_none() && plan.running()),
            PlantState::Live | PlantState::CaughtUp => true,
        }
    }

    fn platform_down(&self) -> bool {
        self.d.incidents.is_open(Class::PlatformWide)
    }

    /// The plant's priority for the applier's scheduling rounds.
    pub fn priority(&self, plant: &str) -> u32 {
        self.cfg.plants.get(plant).map(|s| s.priority).unwrap_or(u32::MAX - 1)
    }

    // ---- observations ----

    /// The hub's own probe's verdict (it changes only with hysteresis).
    pub fn handle_probe(&mut self, now_ms: i64, reachable: bool, detail: &str) {
        if self.odoo_reachable != Some(reachable) {
            self.reachable_since_ms = reachable.then_some(now_ms);
        }
        self.odoo_reachable = Some(reachable);
        self.odoo_detail = detail.to_owned();
        self.schedule(now_ms);
        self.classify(now_ms);
    }

    /// A plant was heard (a heartbeat or any session traffic).
    pub fn handle_heard(&mut self, now_ms: i64, plant: &str) {
        self.last_heard.insert(plant.to_owned(), now_ms);
        self.ensure_plant(plant);
        self.schedule(now_ms);
    }

    /// A plant's own diagnosis, arrived when its link returned.
    pub fn handle_diagnosis(&mut self, now_ms: i64, plant: &str, diagnosis: &str) {
        let since = now_ms - 24 * 3600 * 1000;
        let changes = self.d.incidents.backfill(plant, since, diagnosis);
        self.incident_changes(changes);
    }

    /// Plant IT's manual state, from the plant's heartbeats.
    pub fn handle_manual(&mut self, now_ms: i64, plant: &str, manual: bool) {
        self.ensure_plant(plant);
        let p = self.d.plants.get_mut(plant).expect("ensured");
        if p.manual == manual {
            return;
        }
        p.manual = manual;
        if let Some(plan) = self.d.plan.as_mut()
            && plan.running()
            && p.wave.is_some()
        {
            let what = if manual {
                format!("plant {plant} skipped: plant IT switched it to manual offline")
            } else {
                format!("plant {plant}: plant IT's manual offline ended")
            };
            plan.history.push(Step { at_ms: now_ms, stage: plan.stage.name(), by: "coordinator".into(), what });
            self.dirty = true;
        }
        if !manual {
            self.rejoin(now_ms, plant);
        }
    }

    /// The canary probe: the same read at the same cadence before and during reopening.
    pub fn handle_canary(&mut self, now_ms: i64, latency_ms: f64, ended: Ended) {
        self.m.canary.push(now_ms, latency_ms, ended);
        self.schedule(now_ms);
        if self.d.plan.as_ref().is_some_and(|p| p.stage == Stage::Preflight && p.preflight_passed) {
            self.progress(now_ms);
        }
    }

    /// A call to Odoo ended: its latency, how it ended, and its transactions' operation classes
    /// (`model.method`) with whether each was applied.
    pub fn handle_call(&mut self, now_ms: i64, latency_ms: f64, ended: Ended, classes: &[(String, bool)]) {
        self.m.calls.push(now_ms, latency_ms, ended);
        if ended == Ended::Ok && !classes.is_empty() {
            let per = latency_ms / classes.len() as f64;
            for (class, _) in classes {
                self.m.classes.entry(class.clone()).or_default().push(now_ms, per, Ended::Ok);
            }
        }
        let applied = classes.iter().filter(|(_, a)| *a).count() as u64;
        if applied > 0 {
            self.applied.push_back((now_ms, applied));
        }
        self.schedule(now_ms);
    }

    /// How many calls are in flight now: at the limit, the drain has demand to grow on.
    pub fn handle_in_flight(&mut self, in_flight: usize) {
        if self.limit().is_some_and(|l| in_flight >= l) {
            self.saturated = true;
        }
    }

    /// A plant's pending backlog in the ledger.
    pub fn handle_backlog(&mut self, now_ms: i64, plant: &str, pending: u64) {
        self.ensure_plant(plant);
        self.d.plants.get_mut(plant).expect("ensured").backlog = pending;
        if pending == 0 {
            self.progress(now_ms);
        }
    }

    // ---- the shell's reports ----

    pub fn handle_preflight(&mut self, now_ms: i64, result: Result<String, String>) {
        let Some(plan) = self.d.plan.as_mut() else { return };
        if plan.stage != Stage::Preflight || plan.paused.is_some() {
            return;
        }
        match result {
            Ok(detail) => {
                plan.preflight_passed = true;
                self.history(now_ms, "coordinator", &format!("preflight passed: {detail}; the gates judge next"));
                self.progress(now_ms);
            }
            Err(why) => self.pause_plan(now_ms, "coordinator", &format!("preflight failed: {why}")),
        }
    }

    /// The failover's replay is through: every transaction applied after the recovery point is
    /// in the disaster-recovery Odoo.
    pub fn handle_replay_done(&mut self, now_ms: i64, result: Result<String, String>) {
        let Some(plan) = self.d.plan.as_ref() else { return };
        if plan.stage != Stage::Replaying || plan.paused.is_some() {
            return;
        }
        match result {
            Ok(detail) => {
                let next = Stage::Wave { index: 0, phase: Phase::Opening };
                if let Some(e) = self.d.endpoint.as_mut() {
                    e.replayed_ms = Some(now_ms);
                }
                self.audit("coordinator", "replay_done", &self.plan_target(), &detail);
                self.step(now_ms, "coordinator", &format!("replay done: {detail}"), next);
                self.enter(now_ms);
            }
            Err(why) => self.pause_plan(now_ms, "coordinator", &format!("the replay needs an operator: {why}")),
        }
    }

    /// Declares a failover to the disaster-recovery Odoo at `url`, whose data reaches
    /// `recovery_point_ms`: a new fencing epoch (the deposed endpoint, `current_url`, is never
    /// written again without an explicit failback), every plant held, and a plan armed that
    /// first applies again what was applied from the recovery point less `margin_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn failover(
        &mut self,
        now_ms: i64,
        by: &str,
        current_url: &str,
        url: &str,
        recovery_point_ms: i64,
        margin_ms: i64,
        reason: &str,
    ) -> Result<u64, VerbError> {
        need_reason(reason)?;
        let url = url.trim_end_matches('/');
        if url == current_url.trim_end_matches('/') {
            return Err(VerbError::Invalid(format!("{url} is already the active endpoint")));
        }
        if recovery_point_ms > now_ms {
            return Err(VerbError::Invalid("the recovery point is in the future".into()));
        }
        let (epoch, mut fenced) = self.d.endpoint.as_ref().map_or((0, Vec::new()), |e| (e.epoch, e.fenced.clone()));
        let epoch = epoch + 1;
        fenced.retain(|f| f != url);
        fenced.push(current_url.trim_end_matches('/').to_owned());
        let why = format!("failover to {url} (epoch {epoch}): {reason}");
        if self.d.plan.as_ref().is_some_and(|p| !p.stage.terminal()) {
            let _ = self.abort(now_ms, by, &why);
        }
        let plants: Vec<String> = self.d.plants.keys().cloned().collect();
        for plant in plants {
            self.set_state(&plant, PlantState::Held, &why);
        }
        let replay_from_ms = recovery_point_ms - margin_ms.max(0);
        let fenced_list = fenced.join(", ");
        self.d.endpoint = Some(Endpoint {
            url: url.to_owned(),
            epoch,
            since_ms: now_ms,
            by: by.into(),
            reason: reason.into(),
            recovery_point_ms,
            replay_from_ms,
            fenced,
            replayed_ms: None,
        });
        self.audit(
            by,
            "failover",
            &format!("odoo epoch {epoch}"),
            &format!("to {url}, recovery point {recovery_point_ms} ms, replay from {replay_from_ms} ms, fenced {fenced_list}: {reason}"),
        );
        self.actions.push_back(Action::Retarget { url: url.to_owned(), epoch });
        // What the probe said was of the deposed endpoint: the new one is unknown until the
        // probe judges it, and an incident about the old one ends here.
        self.arm(now_ms, by, &why, true)?;
        self.odoo_reachable = None;
        self.reachable_since_ms = None;
        self.classify(now_ms);
        // The baselines stay the primary's: the recovered Odoo is held to what the plants had
        // before the incident (a slower one reopens more slowly, behind the same gates).
        self.dirty = true;
        Ok(epoch)
    }

    /// The wave's webhook answered (or none is configured).
    pub fn handle_wave_opened(&mut self, now_ms: i64, index: usize, result: Result<(), String>) {
        let Some(plan) = self.d.plan.as_ref() else { return };
        if plan.stage != (Stage::Wave { index, phase: Phase::Opening }) || plan.paused.is_some() {
            return;
        }
        match result {
            Ok(()) => {
                self.step(now_ms, "coordinator", "opened", Stage::Wave { index, phase: Phase::Draining });
                self.progress(now_ms);
            }
            Err(why) => self.pause_plan(now_ms, "coordinator", &format!("the wave's webhook failed: {why}")),
        }
    }

    /// Every drain window: incidents, baselines, gates, the limit, the plan's timers.
    pub fn handle_timeout(&mut self, now_ms: i64) {
        if self.next_tick_ms.is_none_or(|t| now_ms < t) {
            // A soak may have ended between windows.
            return self.progress(now_ms);
        }
        self.next_tick_ms = Some(now_ms + self.cfg.drain.window_ms);
        let keep = self.cfg.gates.window_ms.max(self.cfg.drain.window_ms);
        self.m.prune(now_ms - keep);
        while self.applied.front().is_some_and(|(t, _)| *t < now_ms - keep) {
            self.applied.pop_front();
        }
        let plan_running = self.d.plan.as_ref().is_some_and(Plan::running);
        if !plan_running && self.d.incidents.open.is_empty() {
            // Healthy: keep the baselines current.
            let fresh = self.m.baselines(now_ms - self.cfg.gates.window_ms, self.cfg.gates.samples_min);
            if fresh.canary_p95_ms.is_some() && fresh != self.d.baselines {
                let mut merged = self.d.baselines.clone();
                merged.canary_p95_ms = fresh.canary_p95_ms;
                merged.classes.extend(fresh.classes);
                self.d.baselines = merged;
                self.dirty = true;
            }
        }
        self.classify(now_ms);
        self.auto_start(now_ms);
        self.drain_window(now_ms);
        self.progress(now_ms);
        self.deadlines(now_ms);
        self.saturated = false;
    }

    // ---- operator verbs ----

    /// Prepares a plan over every held plant (the shell arms one after a failover; one is armed
    /// by itself when a platform-wide incident closes).
    pub fn arm(&mut self, now_ms: i64, by: &str, reason: &str, replay: bool) -> Result<u64, VerbError> {
        need_reason(reason)?;
        if let Some(plan) = &self.d.plan
            && !plan.stage.terminal()
        {
            return Err(VerbError::NotNow { stage: plan.stage.name(), verb: "arm" });
        }
        // A failover's replay not yet through comes first in any plan.
        let replay = replay || self.d.endpoint.as_ref().is_some_and(|e| e.replayed_ms.is_none());
        let held: Vec<String> =
            self.d.plants.iter().filter(|(_, p)| p.state == PlantState::Held).map(|(n, _)| n.clone()).collect();
        let waves = self.waves_for(&held);
        self.d.plans_made += 1;
        let id = self.d.plans_made;
        for (index, wave) in waves.iter().enumerate() {
            for plant in &wave.plants {
                let p = self.d.plants.get_mut(plant).expect("held plants exist");
                p.wave = Some(index);
                let state = p.state;
                // Its agent learns its wave.
                self.actions.push_back(Action::Plant { plant: plant.clone(), state, wave: Some(index) });
            }
        }
        let summary = waves.iter().map(|w| w.plants.join(",")).collect::<Vec<_>>().join(" | ");
        self.d.plan = Some(Plan {
            id,
            stage: Stage::Armed,
            paused: None,
            waves,
            replay,
            history: vec![Step {
                at_ms: now_ms,
                stage: "armed".into(),
                by: by.into(),
                what: format!("armed: {reason}; waves {summary}"),
            }],
            decision: None,
            started_ms: None,
            preflight_passed: false,
        });
        self.audit(by, "plan_armed", &format!("plan {id}"), &format!("{reason}; waves {summary}"));
        self.dirty = true;
        Ok(id)
    }

    pub fn start(&mut self, now_ms: i64, by: &str, reason: &str) -> Result<(), VerbError> {
        need_reason(reason)?;
        let plan = self.d.plan.as_ref().ok_or(VerbError::NoPlan)?;
        if plan.stage != Stage::Armed {
            return Err(VerbError::NotNow { stage: plan.stage.name(), verb: "start" });
        }
        if self.platform_down() {
            return Err(VerbError::Invalid("Odoo is still unusable (a platform-wide incident is open)".into()));
        }
        self.d.limit = Some(DrainLimit::new(&self.cfg.drain));
        // The gates judge what came since Odoo became reachable again (or since the start, if
        // the hub saw no outage): what the incident itself looked like is left out.
        let since = self.reachable_since_ms.filter(|t| *t <= now_ms).unwrap_or(now_ms);
        if let Some(plan) = self.d.plan.as_mut() {
            plan.started_ms = Some(since);
            plan.preflight_passed = false;
        }
        self.step(now_ms, by, &format!("started: {reason}"), Stage::Preflight);
        self.audit(by, "plan_started", &self.plan_target(), reason);
        self.enter(now_ms);
        self.schedule(now_ms);
        Ok(())
    }

    pub fn pause(&mut self, now_ms: i64, by: &str, reason: &str) -> Result<(), VerbError> {
        need_reason(reason)?;
        let plan = self.d.plan.as_ref().ok_or(VerbError::NoPlan)?;
        if plan.stage.terminal() || plan.paused.is_some() {
            return Err(VerbError::NotNow { stage: self.stage_name(), verb: "pause" });
        }
        self.pause_plan(now_ms, by, reason);
        Ok(())
    }

    pub fn resume(&mut self, now_ms: i64, by: &str, reason: &str) -> Result<(), VerbError> {
        need_reason(reason)?;
        let plan = self.d.plan.as_mut().ok_or(VerbError::NoPlan)?;
        if plan.paused.is_none() {
            return Err(VerbError::NotNow { stage: plan.stage.name(), verb: "resume" });
        }
        if self.d.incidents.is_open(Class::PlatformWide) {
            return Err(VerbError::Invalid("Odoo is still unusable (a platform-wide incident is open)".into()));
        }
        plan.paused = None;
        // A soak interrupted by a pause is observed again in full: the pause may have been long.
        if let Stage::Wave { index, phase: Phase::Baking { .. } } = plan.stage {
            plan.stage = Stage::Wave { index, phase: Phase::Baking { until_ms: now_ms + self.cfg.soak_ms } };
        }
        if let Some(limit) = self.d.limit.as_mut() {
            limit.troubled_at_floor = 0;
        }
        let stage = plan.stage;
        self.history(now_ms, by, &format!("resumed: {reason}"));
        self.audit(by, "plan_resumed", &self.plan_target(), reason);
        self.actions.push_back(Action::Alarm { name: ALARM_PLAN_PAUSED.into(), on: false, message: String::new() });
        // A step that was under way when the plan paused is taken up again.
        if matches!(stage, Stage::Preflight | Stage::Replaying | Stage::Wave { phase: Phase::Opening, .. }) {
            self.enter(now_ms);
        }
        self.progress(now_ms);
        self.dirty = true;
        Ok(())
    }

    /// Moves on without waiting for the current wave's gates: its plants go live, the next
    /// wave opens.
    pub fn promote(&mut self, now_ms: i64, by: &str, reason: &str) -> Result<(), VerbError> {
        need_reason(reason)?;
        let plan = self.d.plan.as_ref().ok_or(VerbError::NoPlan)?;
        if plan.stage == Stage::Replaying {
            // The operator judged what the replay left (plain mode's undecided transactions,
            // or refusals by the recovered Odoo): the waves go on.
            self.audit(by, "replay_promoted", &self.plan_target(), reason);
            if let Some(e) = self.d.endpoint.as_mut() {
                e.replayed_ms = Some(now_ms);
            }
            if let Some(plan) = self.d.plan.as_mut() {
                plan.paused = None;
            }
            self.actions.push_back(Action::Alarm { name: ALARM_PLAN_PAUSED.into(), on: false, message: String::new() });
            let next = Stage::Wave { index: 0, phase: Phase::Opening };
            self.step(now_ms, by, &format!("replay judged by hand: {reason}"), next);
            self.enter(now_ms);
            return Ok(());
        }
        let Stage::Wave { index, phase: Phase::Draining | Phase::Baking { .. } } = plan.stage else {
            return Err(VerbError::NotNow { stage: plan.stage.name(), verb: "promote" });
        };
        if plan.paused.is_some() {
            return Err(VerbError::NotNow { stage: self.stage_name(), verb: "promote" });
        }
        self.audit(by, "wave_promoted", &format!("{} wave {}", self.plan_target(), index + 1), reason);
        self.promote_wave(now_ms, by, index, &format!("promoted by hand: {reason}"));
        Ok(())
    }

    /// Ends the plan: its plants go back to held, nothing is discarded.
    pub fn abort(&mut self, now_ms: i64, by: &str, reason: &str) -> Result<(), VerbError> {
        need_reason(reason)?;
        let plan = self.d.plan.as_ref().ok_or(VerbError::NoPlan)?;
        if plan.stage.terminal() {
            return Err(VerbError::NotNow { stage: plan.stage.name(), verb: "abort" });
        }
        let plants: Vec<String> = plan.waves.iter().flat_map(|w| w.plants.clone()).collect();
        self.step(now_ms, by, &format!("aborted: {reason}"), Stage::Aborted);
        if let Some(plan) = self.d.plan.as_mut() {
            plan.paused = None;
        }
        let target = self.plan_target();
        self.audit(by, "plan_aborted", &target, reason);
        for plant in plants {
            self.set_state(&plant, PlantState::Held, &format!("{target} aborted by {by}: {reason}"));
        }
        self.d.limit = None;
        self.actions.push_back(Action::Alarm { name: ALARM_PLAN_PAUSED.into(), on: false, message: String::new() });
        self.actions.push_back(Action::Alarm { name: ALARM_DEADLINE.into(), on: false, message: String::new() });
        Ok(())
    }

    /// Runs the current step again from its start: the preflight, a wave's opening (its
    /// webhook), or a wave's soak.
    pub fn retry(&mut self, now_ms: i64, by: &str, reason: &str) -> Result<(), VerbError> {
        need_reason(reason)?;
        let plan = self.d.plan.as_ref().ok_or(VerbError::NoPlan)?;
        if !plan.running() {
            return Err(VerbError::NotNow { stage: plan.stage.name(), verb: "retry" });
        }
        let stage = match plan.stage {
            Stage::Wave { index, phase: Phase::Baking { .. } } => {
                Stage::Wave { index, phase: Phase::Baking { until_ms: now_ms + self.cfg.soak_ms } }
            }
            other => other,
        };
        self.audit(by, "plan_retried", &self.plan_target(), reason);
        if let Some(plan) = self.d.plan.as_mut() {
            plan.paused = None;
        }
        self.actions.push_back(Action::Alarm { name: ALARM_PLAN_PAUSED.into(), on: false, message: String::new() });
        self.step(now_ms, by, &format!("retried: {reason}"), stage);
        if matches!(stage, Stage::Preflight | Stage::Replaying | Stage::Wave { phase: Phase::Opening, .. }) {
            self.enter(now_ms);
        }
        self.progress(now_ms);
        Ok(())
    }

    /// An operator's hold on one plant: nothing more is applied for it until released.
    pub fn hold(&mut self, now_ms: i64, by: &str, plant: &str, reason: &str) -> Result<(), VerbError> {
        need_reason(reason)?;
        let p = self.d.plants.get_mut(plant).ok_or_else(|| VerbError::UnknownPlant(plant.into()))?;
        p.hold = Some(Act { by: by.into(), reason: reason.into(), at_ms: now_ms });
        let state = p.state;
        let wave = p.wave;
        self.audit(by, "plant_held", plant, reason);
        self.actions.push_back(Action::Plant { plant: plant.into(), state, wave });
        if self.d.plan.as_ref().is_some_and(Plan::running) && wave.is_some() {
            self.history(now_ms, "coordinator", &format!("plant {plant} skipped: held by {by}: {reason}"));
        }
        self.dirty = true;
        self.progress(now_ms);
        Ok(())
    }

    /// Lifts an operator's hold; a plant held by no plan (and no incident) goes live.
    pub fn release(&mut self, now_ms: i64, by: &str, plant: &str, reason: &str) -> Result<(), VerbError> {
        need_reason(reason)?;
        let platform_down = self.platform_down();
        let in_plan = self.d.plan.as_ref().is_some_and(|p| !p.stage.terminal());
        let p = self.d.plants.get_mut(plant).ok_or_else(|| VerbError::UnknownPlant(plant.into()))?;
        if p.hold.is_none() && p.state != PlantState::Held {
            return Err(VerbError::Invalid(format!("plant {plant} is not held")));
        }
        p.hold = None;
        let planned = in_plan && p.wave.is_some();
        self.audit(by, "plant_released", plant, reason);
        self.dirty = true;
        if planned {
            self.rejoin(now_ms, plant);
        } else if !platform_down {
            self.set_state(plant, PlantState::Live, &format!("released by {by}: {reason}"));
        } else {
            let state = self.d.plants[plant].state;
            self.actions.push_back(Action::Plant { plant: plant.into(), state, wave: None });
        }
        Ok(())
    }

    /// Caps a plant's apply rate (transactions per second), or lifts the cap.
    pub fn cap(
        &mut self,
        _now_ms: i64,
        by: &str,
        plant: &str,
        per_second: Option<f64>,
        reason: &str,
    ) -> Result<(), VerbError> {
        need_reason(reason)?;
        if per_second.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err(VerbError::Invalid("a rate cap is a positive number of transactions per second".into()));
        }
        let p = self.d.plants.get_mut(plant).ok_or_else(|| VerbError::UnknownPlant(plant.into()))?;
        p.rate_cap = per_second;
        let what = per_second.map_or("cap lifted".to_owned(), |r| format!("capped at {r}/s"));
        self.audit(by, "plant_capped", plant, &format!("{what}: {reason}"));
        self.dirty = true;
        Ok(())
    }

    /// Moves a plant to another wave that has not opened yet (`wave` counts from 1).
    pub fn move_plant(
        &mut self,
        now_ms: i64,
        by: &str,
        plant: &str,
        wave: usize,
        reason: &str,
    ) -> Result<(), VerbError> {
        need_reason(reason)?;
        let plan = self.d.plan.as_mut().ok_or(VerbError::NoPlan)?;
        if plan.stage.terminal() {
            return Err(VerbError::NotNow { stage: plan.stage.name(), verb: "move" });
        }
        let p = self.d.plants.get_mut(plant).ok_or_else(|| VerbError::UnknownPlant(plant.into()))?;
        let current = match plan.stage {
            Stage::Wave { index, phase: Phase::Opening } => index,
            Stage::Wave { index, .. } => index + 1,
            _ => 0,
        };
        let to = wave.checked_sub(1).ok_or(VerbError::BadWave(wave))?;
        if to >= plan.waves.len() || to < current {
            return Err(VerbError::BadWave(wave));
        }
        if p.wave.is_some_and(|w| w < current) || p.state != PlantState::Held {
            return Err(VerbError::Invalid(format!("plant {plant} is {}: its wave has opened", p.state.as_str())));
        }
        if let Some(from) = p.wave {
            plan.waves[from].plants.retain(|x| x != plant);
        }
        plan.waves[to].plants.push(plant.to_owned());
        p.wave = Some(to);
        self.audit(by, "plant_moved", plant, &format!("to wave {wave}: {reason}"));
        self.history(now_ms, by, &format!("plant {plant} moved to wave {wave}: {reason}"));
        let state = self.d.plants[plant].state;
        self.actions.push_back(Action::Plant { plant: plant.into(), state, wave: Some(to) });
        self.dirty = true;
        Ok(())
    }

    // ---- the machine ----

    fn ensure_plant(&mut self, plant: &str) {
        if !self.d.plants.contains_key(plant) {
            let mut p = Plant::new();
            if self.platform_down() {
                p.state = PlantState::Held;
                p.why = "a platform-wide incident holds every plant".into();
            }
            self.d.plants.insert(plant.to_owned(), p);
            self.dirty = true;
        }
    }

    fn schedule(&mut self, now_ms: i64) {
        if self.next_tick_ms.is_none() {
            self.next_tick_ms = Some(now_ms + self.cfg.drain.window_ms);
        }
    }

    fn stage_name(&self) -> String {
        match &self.d.plan {
            Some(p) if p.paused.is_some() => format!("{} (paused)", p.stage.name()),
            Some(p) => p.stage.name(),
            None => "none".into(),
        }
    }

    fn plan_target(&self) -> String {
        self.d.plan.as_ref().map_or("plan".into(), |p| format!("plan {}", p.id))
    }

    /// The waves: the canary alone, then tiers by priority (within a tier by deadline, then
    /// the largest backlog, then name), each tier cut into waves of at most `wave_plants_max`.
    fn waves_for(&self, plants: &[String]) -> Vec<Wave> {
        let spec = |p: &String| {
            self.cfg.plants.get(p).cloned().unwrap_or(PlantSpec { priority: u32::MAX - 1, deadline_ms: None })
        };
        let mut rest: Vec<&String> = plants.iter().collect();
        let mut waves = Vec::new();
        if let Some(canary) = &self.cfg.canary_plant
            && let Some(i) = rest.iter().position(|p| *p == canary)
        {
            rest.remove(i);
            waves.push(Wave::of(vec![canary.clone()], spec(canary).deadline_ms));
        }
        // Within a tier: the nearest deadline, then the largest backlog (its serial tail is the
        // critical path: it should start early, not in a tier's last wave).
        rest.sort_by_key(|p| {
            let s = spec(p);
            let backlog = self.d.plants.get(*p).map_or(0, |x| x.backlog);
            (s.priority, s.deadline_ms.unwrap_or(i64::MAX), std::cmp::Reverse(backlog), (*p).clone())
        });
        let max = self.cfg.wave_plants_max.max(1);
        let mut current: Vec<String> = Vec::new();
        let mut tier = None;
        for p in rest {
            let s = spec(p);
            if !current.is_empty() && (tier != Some(s.priority) || current.len() >= max) {
                let deadline = current.iter().filter_map(|p| spec(p).deadline_ms).min();
                waves.push(Wave::of(std::mem::take(&mut current), deadline));
            }
            tier = Some(s.priority);
            current.push(p.clone());
        }
        if !current.is_empty() {
            let deadline = current.iter().filter_map(|p| spec(p).deadline_ms).min();
            waves.push(Wave::of(current, deadline));
        }
        waves
    }

    fn set_state(&mut self, plant: &str, state: PlantState, why: &str) {
        let p = self.d.plants.get_mut(plant).expect("a known plant");
        if p.state == state && p.why == why {
            return;
        }
        let changed = p.state != state;
        p.state = state;
        p.why = why.to_owned();
        let wave = p.wave;
        self.dirty = true;
        if changed {
            self.actions.push_back(Action::Plant { plant: plant.into(), state, wave });
            self.audit("coordinator", &format!("plant_{}", state.as_str()), plant, why);
        }
    }

    fn audit(&mut self, actor: &str, action: &str, target: &str, reason: &str) {
        self.actions.push_back(Action::Audit {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            reason: reason.into(),
        });
    }

    fn history(&mut self, now_ms: i64, by: &str, what: &str) {
        if let Some(plan) = self.d.plan.as_mut() {
            plan.history.push(Step { at_ms: now_ms, stage: plan.stage.name(), by: by.into(), what: what.into() });
            self.dirty = true;
        }
    }

    /// Moves the plan to `stage`, in its history.
    fn step(&mut self, now_ms: i64, by: &str, what: &str, stage: Stage) {
        let Some(plan) = self.d.plan.as_mut() else { return };
        plan.stage = stage;
        plan.history.push(Step { at_ms: now_ms, stage: stage.name(), by: by.into(), what: what.into() });
        self.dirty = true;
    }

    /// What entering the current stage does.
    fn enter(&mut self, now_ms: i64) {
        let Some(plan) = self.d.plan.as_ref() else { return };
        if plan.paused.is_some() {
            return;
        }
        match plan.stage {
            Stage::Preflight => self.actions.push_back(Action::Preflight),
            Stage::Replaying => {
                let from_ms = self.d.endpoint.as_ref().map_or(now_ms, |e| e.replay_from_ms);
                self.actions.push_back(Action::Replay { from_ms });
            }
            Stage::Wave { index, phase: Phase::Opening } if index >= plan.waves.len() => {
                // Nothing was held when the plan was armed (or every wave is done).
                self.step(now_ms, "coordinator", "no plant left to reopen", Stage::Completed);
                let target = self.plan_target();
                self.audit("coordinator", "plan_completed", &target, "no plant left to reopen");
                self.d.limit = None;
            }
            Stage::Wave { index, phase: Phase::Opening } => {
                let target = format!("{} wave {}", self.plan_target(), index + 1);
                let plants = plan.waves[index].plants.clone();
                let mut opened = Vec::new();
                for plant in &plants {
                    let p = &self.d.plants[plant];
                    if let Some(why) = p.skipped() {
                        self.history(now_ms, "coordinator", &format!("plant {plant} skipped: {why}"));
                        continue;
                    }
                    if p.state == PlantState::Held {
                        self.set_state(plant, PlantState::Draining, &format!("{target} opened"));
                    }
                    opened.push(plant.clone());
                }
                if let Some(plan) = self.d.plan.as_mut() {
                    plan.waves[index].opened_ms = Some(now_ms);
                }
                self.audit("coordinator", "wave_opening", &target, &plants.join(","));
                self.actions.push_back(Action::OpenWave { index, plants: opened });
            }
            _ => {}
        }
    }

    /// A plant whose skip ended: if its wave has opened, it drains now.
    fn rejoin(&mut self, now_ms: i64, plant: &str) {
        let Some(plan) = self.d.plan.as_ref() else { return };
        let Some(wave) = self.d.plants[plant].wave else { return };
        let opened = match plan.stage {
            Stage::Wave { index, phase: Phase::Opening } => wave < index,
            Stage::Wave { index, .. } => wave <= index,
            Stage::Completed => true,
            _ => false,
        };
        let p = &self.d.plants[plant];
        if opened && p.skipped().is_none() && p.state == PlantState::Held && plan.running() {
            let why = format!("{} wave {} opened (it rejoins)", self.plan_target(), wave + 1);
            self.set_state(plant, PlantState::Draining, &why);
            if let Some(Stage::Wave { index, phase: Phase::Baking { .. } }) = self.d.plan.as_ref().map(|p| p.stage) {
                self.step(
                    now_ms,
                    "coordinator",
                    &format!("plant {plant} rejoined: draining again"),
                    Stage::Wave { index, phase: Phase::Draining },
                );
            }
        }
    }

    fn pause_plan(&mut self, now_ms: i64, by: &str, reason: &str) {
        let Some(plan) = self.d.plan.as_mut() else { return };
        if plan.paused.is_some() || plan.stage.terminal() {
            return;
        }
        plan.paused = Some(Act { by: by.into(), reason: reason.into(), at_ms: now_ms });
        let message = format!("reopening plan {} paused at {}: {reason}", plan.id, plan.stage.name());
        self.history(now_ms, by, &format!("paused: {reason}"));
        self.audit(by, "plan_paused", &self.plan_target(), reason);
        self.actions.push_back(Action::Alarm { name: ALARM_PLAN_PAUSED.into(), on: true, message });
        self.dirty = true;
    }

    fn classify(&mut self, now_ms: i64) {
        let since = now_ms - self.cfg.gates.window_ms;
        let (calls, call_errors, _) = self.m.calls.counts(since);
        let (probes, probe_errors, _) = self.m.canary.counts(since);
        let canary = match (self.m.canary.p95(since), self.d.baselines.canary_p95_ms) {
            ((Some(p), n), Some(b)) if n >= self.cfg.gates.samples_min && b > 0.0 => Some((p, b)),
            _ => None,
        };
        let observed = Observed {
            odoo_reachable: self.odoo_reachable,
            odoo_detail: self.odoo_detail.clone(),
            last_heard_ms: self.last_heard.clone(),
            errors: (call_errors + probe_errors, calls + probes),
            canary,
        };
        let was_down = self.platform_down();
        let changes = self.d.incidents.observe(now_ms, &self.cfg.incidents, &observed);
        self.incident_changes(changes);
        let down = self.platform_down();
        if down && !was_down {
            let id = self.d.incidents.open.iter().find(|i| i.class == Class::PlatformWide).map_or(0, |i| i.id);
            let why = format!("platform-wide incident {id}: Odoo is unusable, applies held");
            // A plan under way was made for the Odoo that just failed again: it ends (its
            // plants held, nothing discarded), and this incident's end arms a new one.
            if self.d.plan.as_ref().is_some_and(|p| !p.stage.terminal()) {
                let _ = self.abort(now_ms, "coordinator", &why);
            }
            let plants: Vec<String> = self.d.plants.keys().cloned().collect();
            for plant in plants {
                self.set_state(&plant, PlantState::Held, &why);
            }
        }
        if was_down && !down {
            let held = self.d.plants.values().any(|p| p.state == PlantState::Held);
            let free = self.d.plan.as_ref().is_none_or(|p| p.stage.terminal());
            if held && free {
                let _ = self.arm(now_ms, "coordinator", "Odoo is usable again after a platform-wide incident", false);
            }
        }
    }

    fn incident_changes(&mut self, changes: Vec<Change>) {
        for change in changes {
            let (action, incident, on) = match &change {
                Change::Opened(i) => ("incident_opened", i, true),
                Change::Updated(i) => ("incident_updated", i, true),
                Change::Closed(i) => ("incident_closed", i, false),
            };
            let name = format!("incident_{}", incident.class.as_str());
            let mut reason = incident.evidence.last().cloned().unwrap_or_default();
            if let (Change::Updated(_), Some(cause)) = (&change, incident.cause.last()) {
                reason = format!("cause: {cause}");
            }
            let target = if incident.plants.is_empty() {
                format!("incident {} {}", incident.id, incident.class.as_str())
            } else {
                format!("incident {} {} {}", incident.id, incident.class.as_str(), incident.plants.join(","))
            };
            self.audit("coordinator", action, &target, &reason);
            let still_open = self.d.incidents.open.iter().any(|i| i.class == incident.class);
            let message = format!("{target}: {reason}");
            self.actions.push_back(Action::Alarm { name, on: on || still_open, message });
            self.dirty = true;
        }
    }

    fn auto_start(&mut self, now_ms: i64) {
        let Some(after) = self.cfg.auto_start_after_ms else { return };
        let armed = self.d.plan.as_ref().is_some_and(|p| p.stage == Stage::Armed);
        let calm = self.reachable_since_ms.is_some_and(|t| now_ms - t >= after) && !self.platform_down();
        if armed && calm {
            let _ = self.start(now_ms, "coordinator", &format!("Odoo reachable for {} s", after / 1000));
        }
    }

    /// The drain window: gates, then the limit.
    fn drain_window(&mut self, now_ms: i64) {
        let Some(plan) = self.d.plan.as_ref() else { return };
        let Stage::Wave { phase, .. } = plan.stage else { return };
        if plan.paused.is_some() || !matches!(phase, Phase::Draining | Phase::Baking { .. }) {
            return;
        }
        let draining = phase == Phase::Draining;
        self.tail_windows = if draining && !self.saturated { self.tail_windows + 1 } else { 0 };
        // Too few applies is inconclusive once the wave has drained a whole gate window; before
        // that the applier gate has not had its chance (the canary's gate always judges).
        let Stage::Wave { index, .. } = plan.stage else { return };
        let opened = plan.waves[index].opened_ms.unwrap_or(now_ms);
        let applying = draining && now_ms - opened >= self.cfg.gates.window_ms;
        let floor = plan.started_ms.unwrap_or(i64::MIN);
        let decision = self.m.decide(now_ms, floor, &self.cfg.gates, &self.effective_baselines(), applying);
        let verdict = decision.verdict();
        if let Some(plan) = self.d.plan.as_mut() {
            plan.decision = Some(decision.clone());
        }
        if let Verdict::Inconclusive(why) = &verdict {
            return self.pause_plan(now_ms, "coordinator", &format!("gates inconclusive: {why}"));
        }
        let since = now_ms - self.cfg.drain.window_ms;
        let (calls, errors, timeouts) = self.m.calls.counts(since);
        let (probes, probe_errors, probe_timeouts) = self.m.canary.counts(since);
        let canary_ratio = match (self.m.canary.p95(since).0, self.effective_baselines().canary_p95_ms) {
            (Some(p), Some(b)) if b > 0.0 => Some(p / b),
            _ => None,
        };
        let failing =
            decision.results.iter().find(|r| matches!(r.verdict, Verdict::Fail(_))).map(|r| match r.gate.as_str() {
                "canary_latency" => "canary_latency",
                "apply_latency" => "apply_latency",
                "error_ratio" => "error_ratio",
                _ => "timeouts",
            });
        let window = Window {
            calls: calls + probes,
            errors: errors + probe_errors,
            timeouts: timeouts + probe_timeouts,
            canary_ratio,
            saturated: self.saturated,
            failing,
        };
        let Some(limit) = self.d.limit.as_mut() else { return };
        match limit.on_window(&self.cfg.drain, window) {
            Adjust::Held => {}
            Adjust::Increased { .. } => self.dirty = true,
            Adjust::Decreased { from, to, why } => {
                self.dirty = true;
                self.history(now_ms, "coordinator", &format!("drain limit {from} → {to}: {why}"));
            }
            Adjust::Exhausted { why } => {
                let values = decision.summary();
                self.pause_plan(now_ms, "coordinator", &format!("{why} ({values})"));
            }
        }
    }

    fn effective_baselines(&self) -> Baselines {
        let mut b = self.d.baselines.clone();
        if b.canary_p95_ms.is_none() {
            b.canary_p95_ms = self.cfg.canary_baseline_ms;
        }
        b
    }

    /// Plants that caught up, a wave that caught up, a soak that ended.
    fn progress(&mut self, now_ms: i64) {
        let Some(plan) = self.d.plan.as_ref() else { return };
        if plan.paused.is_some() {
            return;
        }
        if plan.stage == Stage::Preflight && plan.preflight_passed {
            return self.preflight_gates(now_ms);
        }
        let Stage::Wave { index, phase } = plan.stage else { return };
        let draining: Vec<String> = self
            .d
            .plants
            .iter()
            .filter(|(_, p)| p.state == PlantState::Draining && p.skipped().is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for plant in &draining {
            if self.d.plants[plant].backlog == 0 {
                self.set_state(plant, PlantState::CaughtUp, "its backlog is applied");
            }
        }
        let tails: Vec<String> = self
            .d
            .plants
            .iter()
            .filter(|(_, p)| p.state == PlantState::Draining && p.skipped().is_none())
            .map(|(n, p)| format!("{n} ({} left)", p.backlog))
            .collect();
        let tail_bound = self.tail_windows >= TAIL_WINDOWS;
        match phase {
            Phase::Draining if tails.is_empty() || tail_bound => {
                let until_ms = now_ms + self.cfg.soak_ms;
                if let Some(plan) = self.d.plan.as_mut() {
                    plan.waves[index].caught_up_ms = Some(now_ms);
                }
                let what = if tails.is_empty() {
                    "caught up; soaking".to_owned()
                } else {
                    format!(
                        "caught up but for serial tails that leave the limit unfilled ({}); soaking while they finish",
                        tails.join(", ")
                    )
                };
                self.tail_windows = 0;
                self.step(now_ms, "coordinator", &what, Stage::Wave { index, phase: Phase::Baking { until_ms } });
                self.actions.push_back(Action::Alarm {
                    name: ALARM_DEADLINE.into(),
                    on: false,
                    message: String::new(),
                });
            }
            Phase::Baking { until_ms } if now_ms >= until_ms => {
                let floor = self.d.plan.as_ref().and_then(|p| p.started_ms).unwrap_or(i64::MIN);
                let decision = self.m.decide(now_ms, floor, &self.cfg.gates, &self.effective_baselines(), false);
                let verdict = decision.verdict();
                let values = decision.summary();
                if let Some(plan) = self.d.plan.as_mut() {
                    plan.decision = Some(decision);
                }
                match verdict {
                    Verdict::Pass => {
                        self.promote_wave(now_ms, "coordinator", index, &format!("gates passed: {values}"))
                    }
                    Verdict::Fail(why) => {
                        self.pause_plan(now_ms, "coordinator", &format!("gates failed after the soak: {why}"))
                    }
                    Verdict::Inconclusive(why) => {
                        self.pause_plan(now_ms, "coordinator", &format!("gates inconclusive after the soak: {why}"))
                    }
                }
            }
            _ => {}
        }
    }

    /// After the shell's preflight, the gates judge Odoo on what came since the plan started
    /// before anything opens: a pass goes on, a failure pauses, too few samples wait up to one
    /// gate window and then pause.
    fn preflight_gates(&mut self, now_ms: i64) {
        let Some(plan) = self.d.plan.as_ref() else { return };
        let started = plan.started_ms.unwrap_or(now_ms);
        let replay = plan.replay;
        let decision = self.m.decide(now_ms, started, &self.cfg.gates, &self.effective_baselines(), false);
        let values = decision.summary();
        let verdict = decision.verdict();
        if let Some(plan) = self.d.plan.as_mut() {
            plan.decision = Some(decision);
        }
        match verdict {
            Verdict::Pass => {
                let next = if replay { Stage::Replaying } else { Stage::Wave { index: 0, phase: Phase::Opening } };
                self.step(now_ms, "coordinator", &format!("gates passed: {values}"), next);
                self.enter(now_ms);
            }
            Verdict::Fail(why) => {
                self.pause_plan(now_ms, "coordinator", &format!("gates failed before opening: {why}"))
            }
            Verdict::Inconclusive(why) if now_ms - started >= self.cfg.gates.window_ms => {
                self.pause_plan(now_ms, "coordinator", &format!("gates inconclusive before opening: {why}"))
            }
            Verdict::Inconclusive(_) => {}
        }
    }

    fn promote_wave(&mut self, now_ms: i64, by: &str, index: usize, what: &str) {
        let Some(plan) = self.d.plan.as_mut() else { return };
        plan.waves[index].promoted_ms = Some(now_ms);
        let waves = plan.waves.len();
        let target = format!("plan {} wave {}", plan.id, index + 1);
        self.step(now_ms, by, what, Stage::Wave { index, phase: Phase::Promoted });
        let plants: Vec<String> = self
            .d
            .plants
            .iter()
            .filter(|(_, p)| {
                matches!(p.state, PlantState::Draining | PlantState::CaughtUp) && p.wave.is_some_and(|w| w <= index)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for plant in plants {
            self.set_state(&plant, PlantState::Live, &format!("{target} promoted"));
        }
        if index + 1 < waves {
            self.step(now_ms, "coordinator", "next wave", Stage::Wave { index: index + 1, phase: Phase::Opening });
            self.enter(now_ms);
        } else {
            self.step(now_ms, "coordinator", "every wave promoted", Stage::Completed);
            let target = self.plan_target();
            self.audit("coordinator", "plan_completed", &target, "every wave promoted");
            self.d.limit = None;
        }
    }

    /// Progress against each wave's deadline.
    fn deadlines(&mut self, now_ms: i64) {
        let Some(plan) = self.d.plan.as_ref() else { return };
        let Stage::Wave { index, phase: Phase::Draining | Phase::Opening } = plan.stage else { return };
        let wave = &plan.waves[index];
        let Some(deadline) = wave.deadline_ms else { return };
        if wave.deadline_alarmed {
            return;
        }
        let remaining: u64 = wave.plants.iter().filter_map(|p| self.d.plants.get(p)).map(|p| p.backlog).sum();
        let rate = self.rate_per_ms(now_ms);
        let eta = if remaining == 0 { Some(now_ms) } else { rate.map(|r| now_ms + (remaining as f64 / r) as i64) };
        let message = if now_ms > deadline {
            Some(format!("wave {} missed its deadline: {remaining} transactions left", index + 1))
        } else {
            match eta {
                Some(eta) if eta > deadline => Some(format!(
                    "wave {} projected to catch up {} s after its deadline ({remaining} left at {:.0}/s)",
                    index + 1,
                    (eta - deadline) / 1000,
                    rate.unwrap_or(0.0) * 1000.0
                )),
                _ => None,
            }
        };
        if let Some(message) = message {
            if let Some(plan) = self.d.plan.as_mut() {
                plan.waves[index].deadline_alarmed = true;
            }
            self.history(now_ms, "coordinator", &message);
            self.audit("coordinator", "deadline_at_risk", &self.plan_target(), &message);
            self.actions.push_back(Action::Alarm { name: ALARM_DEADLINE.into(), on: true, message });
        }
    }

    /// Transactions applied per millisecond over the gate window.
    fn rate_per_ms(&self, now_ms: i64) -> Option<f64> {
        let since = now_ms - self.cfg.gates.window_ms;
        let n: u64 = self.applied.iter().filter(|(t, _)| *t >= since).map(|(_, n)| n).sum();
        let first = self.applied.iter().find(|(t, _)| *t >= since)?.0;
        let span = (now_ms - first).max(self.cfg.drain.window_ms) as f64;
        (n > 0).then(|| n as f64 / span)
    }

    /// When a plant should have caught up, by the current rate: its wave's backlog and every
    /// earlier wave's, plus a soak per wave between.
    pub fn eta_ms(&self, now_ms: i64, plant: &str) -> Option<i64> {
        let plan = self.d.plan.as_ref().filter(|p| p.running())?;
        let p = self.d.plants.get(plant)?;
        if !matches!(p.state, PlantState::Held | PlantState::Draining) {
            return None;
        }
        let wave = p.wave?;
        let current = match plan.stage {
            Stage::Wave { index, .. } => index,
            _ => 0,
        };
        let ahead: u64 = plan.waves[..=wave]
            .iter()
            .flat_map(|w| &w.plants)
            .filter_map(|x| self.d.plants.get(x))
            .filter(|x| matches!(x.state, PlantState::Held | PlantState::Draining))
            .map(|x| x.backlog)
            .sum();
        let rate = self.rate_per_ms(now_ms)?;
        let soaks = wave.saturating_sub(current) as i64 * self.cfg.soak_ms;
        Some(now_ms + (ahead as f64 / rate) as i64 + soaks)
    }
}

impl Wave {
    fn of(plants: Vec<String>, deadline_ms: Option<i64>) -> Self {
        Self { plants, deadline_ms, opened_ms: None, caught_up_ms: None, promoted_ms: None, deadline_alarmed: false }
    }
}

fn need_reason(reason: &str) -> Result<(), VerbError> {
    if reason.trim().is_empty() { Err(VerbError::ReasonRequired) } else { Ok(()) }
}
