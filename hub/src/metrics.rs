//! The hub's metrics, in Prometheus text format at `GET /metrics`. Every metric is defined
//! once, in [`DEFS`] (ARCHITECTURE.md lists the same names; a test checks a running hub exports
//! each). Counters and the call histogram are counted where things happen; the gauges are read
//! from the hub's state at each scrape (the same state the API shows, so the two never differ).

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::shared::{Shared, now_ms};
use crate::store::{Store, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: its name, kind, labels and what it means.
#[derive(Clone, Copy, Debug)]
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(name: &'static str, kind: Kind, labels: &'static [&'static str], help: &'static str) -> Def {
    Def { name, kind, labels, help }
}

use Kind::{Counter, Gauge, Histogram};

pub const APPLIED: Def = def("holdfast_hub_applied_total", Counter, &[], "Transactions applied in Odoo.");
pub const QUARANTINED: Def = def(
    "holdfast_hub_quarantined_total",
    Counter,
    &[],
    "Transactions quarantined (Odoo refused them, or no check could decide).",
);
pub const ODOO_CALLS: Def = def(
    "holdfast_hub_odoo_calls_total",
    Counter,
    &["outcome"],
    "The applier's calls to Odoo by outcome: ok, error (conflict or outage), timeout (outcome unknown).",
);
pub const ODOO_CALL_SECONDS: Def =
    def("holdfast_hub_odoo_call_seconds", Histogram, &[], "How long the applier's calls to Odoo took.");
pub const APPLIER_HALTED: Def = def(
    "holdfast_hub_applier_halts_total",
    Counter,
    &[],
    "Times the applier halted (Odoo refused the hub's credentials).",
);
pub const PLANT_CONNECTED: Def =
    def("holdfast_hub_plant_connected", Gauge, &["plant"], "1 while the plant's sync session is up.");
pub const PLANT_HEARTBEAT_AGE: Def = def(
    "holdfast_hub_plant_heartbeat_age_seconds",
    Gauge,
    &["plant"],
    "Seconds since the plant's last heartbeat (absent until the first).",
);
pub const PLANT_MANUAL: Def =
    def("holdfast_hub_plant_manual", Gauge, &["plant"], "1 while plant IT holds the plant in a manual state.");
pub const PLANT_BACKLOG: Def =
    def("holdfast_hub_plant_backlog", Gauge, &["plant"], "Transactions stored at the hub and not yet applied.");
pub const PLANT_OLDEST_PENDING_AGE: Def = def(
    "holdfast_hub_plant_oldest_pending_age_seconds",
    Gauge,
    &["plant"],
    "Age of the plant's oldest transaction not yet applied (0 when none).",
);
pub const PLANT_QUARANTINED: Def = def(
    "holdfast_hub_plant_quarantined",
    Gauge,
    &["plant"],
    "The plant's quarantined transactions: each blocks its ordering key until retried or parked.",
);
pub const PLANT_STORED_SEQ: Def =
    def("holdfast_hub_plant_stored_seq", Gauge, &["plant"], "The plant's journal sequence stored at the hub.");
pub const PLANT_APPLIED_SEQ: Def =
    def("holdfast_hub_plant_applied_seq", Gauge, &["plant"], "The plant's journal sequence applied in Odoo, in order.");
pub const PLANT_STATE: Def = def(
    "holdfast_hub_plant_state",
    Gauge,
    &["plant", "state"],
    "1 for the plant's reopening state (live, held, draining, caught_up), 0 for the others.",
);
pub const PLANT_WAVE: Def =
    def("holdfast_hub_plant_wave", Gauge, &["plant"], "The plant's wave in the reopening plan, from 1 (0: none).");
pub const GATEWAY_DISK_FREE: Def = def(
    "holdfast_hub_gateway_disk_free_bytes",
    Gauge,
    &["plant"],
    "Free space on the gateway journal's filesystem, from its last heartbeat.",
);
pub const ODOO_UP: Def = def(
    "holdfast_hub_odoo_up",
    Gauge,
    &[],
    "1 while the hub's probe finds Odoo usable (reachable, database up, login accepted).",
);
pub const ODOO_PROBE_SECONDS: Def = def(
    "holdfast_hub_odoo_probe_seconds",
    Gauge,
    &[],
    "The last probe's time, from the health route to the authenticated call.",
);
pub const ODOO_EPOCH: Def =
    def("holdfast_hub_odoo_epoch", Gauge, &[], "The active Odoo endpoint's fencing epoch (0 until a failover).");
pub const ALARM: Def = def("holdfast_hub_alarm", Gauge, &["name"], "1 while the alarm is raised.");
pub const INCIDENT_OPEN: Def = def(
    "holdfast_hub_incident_open",
    Gauge,
    &["class"],
    "Open incidents by class (platform_wide, plant_network, hub_link, degraded).",
);
pub const PLAN_STAGE: Def = def(
    "holdfast_hub_plan_stage",
    Gauge,
    &["stage"],
    "1 for the reopening plan's stage (armed, preflight, replaying, opening, draining, baking, promoted, completed, aborted).",
);
pub const PLAN_WAVE: Def =
    def("holdfast_hub_plan_wave", Gauge, &[], "The plan's current wave, from 1 (0 outside the waves).");
pub const PLAN_PAUSED: Def = def("holdfast_hub_plan_paused", Gauge, &[], "1 while the reopening plan is paused.");
pub const DRAIN_LIMIT: Def =
    def("holdfast_hub_drain_limit", Gauge, &[], "The coordinator's limit on calls in flight to Odoo (0: none set).");
pub const GATE: Def = def(
    "holdfast_hub_gate",
    Gauge,
    &["gate"],
    "Each health gate's last verdict in the plan: 1 pass, 0 inconclusive or not judged, -1 fail.",
);
pub const AUDIT_HEAD: Def = def("holdfast_hub_audit_head_seq", Gauge, &[], "The audit chain's newest entry.");
pub const AUDIT_SIGNED: Def =
    def("holdfast_hub_audit_signed_seq", Gauge, &[], "The newest audit entry a checkpoint signed (0: none).");
pub const AUDIT_CHECKPOINT_TIME: Def = def(
    "holdfast_hub_audit_checkpoint_timestamp_seconds",
    Gauge,
    &[],
    "When the newest audit checkpoint was signed, in Unix seconds (0: none).",
);
pub const LEADER_EPOCH: Def = def(
    "holdfast_hub_leader_epoch",
    Gauge,
    &[],
    "The lease epoch this replica leads under (0: it follows; only the leader calls Odoo).",
);

/// Every metric the hub exports.
pub const DEFS: &[Def] = &[
    APPLIED,
    QUARANTINED,
    ODOO_CALLS,
    ODOO_CALL_SECONDS,
    APPLIER_HALTED,
    PLANT_CONNECTED,
    PLANT_HEARTBEAT_AGE,
    PLANT_MANUAL,
    PLANT_BACKLOG,
    PLANT_OLDEST_PENDING_AGE,
    PLANT_QUARANTINED,
    PLANT_STORED_SEQ,
    PLANT_APPLIED_SEQ,
    PLANT_STATE,
    PLANT_WAVE,
    GATEWAY_DISK_FREE,
    ODOO_UP,
    ODOO_PROBE_SECONDS,
    ODOO_EPOCH,
    ALARM,
    INCIDENT_OPEN,
    PLAN_STAGE,
    PLAN_WAVE,
    PLAN_PAUSED,
    DRAIN_LIMIT,
    GATE,
    AUDIT_HEAD,
    AUDIT_SIGNED,
    AUDIT_CHECKPOINT_TIME,
    LEADER_EPOCH,
];

const PLANT_STATES: [&str; 4] = ["live", "held", "draining", "caught_up"];
const INCIDENT_CLASSES: [&str; 4] = ["platform_wide", "plant_network", "hub_link", "degraded"];
const STAGES: [&str; 9] =
    ["armed", "preflight", "replaying", "opening", "draining", "baking", "promoted", "completed", "aborted"];
const CALL_OUTCOMES: [&str; 3] = ["ok", "error", "timeout"];

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(ODOO_CALL_SECONDS.name.into()), &buckets)
            .expect("buckets are given")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder already installed (a second hub in one test process) keeps counting
        // for both: the handle renders whatever this one holds.
        let _ = metrics::set_global_recorder(recorder);
        for d in DEFS {
            match d.kind {
                Counter => metrics::describe_counter!(d.name, d.help),
                Gauge => metrics::describe_gauge!(d.name, d.help),
                Histogram => metrics::describe_histogram!(d.name, metrics::Unit::Seconds, d.help),
            }
        }
        // Unlabelled counters show from the start, at 0.
        for d in [APPLIED, QUARANTINED, APPLIER_HALTED] {
            counter!(d.name).absolute(0);
        }
        audit_signed(0, 0);
        leading(0);
        for outcome in CALL_OUTCOMES {
            counter!(ODOO_CALLS.name, "outcome" => outcome).absolute(0);
        }
        handle
    })
}

/// One call to Odoo ended: `outcome` is `ok`, `error` or `timeout`.
pub fn odoo_call(outcome: &'static str, seconds: f64) {
    counter!(ODOO_CALLS.name, "outcome" => outcome).increment(1);
    histogram!(ODOO_CALL_SECONDS.name).record(seconds);
}

pub fn applied(n: u64) {
    counter!(APPLIED.name).increment(n);
}

pub fn quarantined(n: u64) {
    counter!(QUARANTINED.name).increment(n);
}

pub fn applier_halted() {
    counter!(APPLIER_HALTED.name).increment(1);
}

/// The health gates (`coordinator::gates`): each shows from the start.
const GATES: [&str; 4] = ["canary_latency", "error_ratio", "timeouts", "apply_latency"];

/// Alarms and gates seen since the start: a cleared one shows 0 rather than vanishing.
static SEEN: Mutex<(BTreeSet<String>, BTreeSet<String>)> = Mutex::new((BTreeSet::new(), BTreeSet::new()));

/// Reads the hub's state into the gauges, then renders every metric.
pub async fn render<S: Store>(shared: &Shared<S>) -> Result<String, StoreError> {
    let handle = handle();
    let now = now_ms();
    let age = |ms: i64| ((now - ms).max(0) as f64) / 1000.0;
    let rows = shared.store.plants().await?;
    let backlogs = shared.store.pending_by_plant().await?;
    let manuals: BTreeSet<String> = shared.store.plant_manuals().await?.into_iter().map(|(p, _)| p).collect();
    let audit_head = shared.store.audit_head().await?.map_or(0, |(seq, _)| seq);
    let connected: BTreeSet<String> = shared.connections.lock().expect("connections lock").keys().cloned().collect();
    let heartbeats = shared.heartbeats.lock().expect("heartbeats lock").clone();
    for r in &rows {
        let plant = r.plant.clone();
        gauge!(PLANT_CONNECTED.name, "plant" => plant.clone()).set(f64::from(u8::from(connected.contains(&plant))));
        gauge!(PLANT_MANUAL.name, "plant" => plant.clone()).set(f64::from(u8::from(manuals.contains(&plant))));
        gauge!(PLANT_QUARANTINED.name, "plant" => plant.clone()).set(r.quarantined as f64);
        gauge!(PLANT_STORED_SEQ.name, "plant" => plant.clone()).set(r.state.stored_seq as f64);
        gauge!(PLANT_APPLIED_SEQ.name, "plant" => plant.clone()).set(r.state.applied_seq as f64);
        let backlog = backlogs.iter().find(|b| b.plant == plant);
        gauge!(PLANT_BACKLOG.name, "plant" => plant.clone()).set(backlog.map_or(0.0, |b| b.pending as f64));
        gauge!(PLANT_OLDEST_PENDING_AGE.name, "plant" => plant.clone())
            .set(backlog.map_or(0.0, |b| age(b.oldest_stored_ms)));
        if let Some((at, beat)) = heartbeats.get(&plant) {
            gauge!(PLANT_HEARTBEAT_AGE.name, "plant" => plant.clone()).set(age(*at));
            if let Some(free) = beat.health.disk_free_bytes {
                gauge!(GATEWAY_DISK_FREE.name, "plant" => plant.clone()).set(free as f64);
            }
        }
    }
    let odoo = shared.odoo.lock().expect("odoo view lock").clone();
    gauge!(ODOO_UP.name).set(f64::from(u8::from(odoo.verdict == "reachable")));
    gauge!(ODOO_PROBE_SECONDS.name).set(odoo.latency_ms.map_or(0.0, |ms| ms as f64 / 1000.0));
    gauge!(ODOO_EPOCH.name).set(shared.odoo_url.borrow().1 as f64);
    let alarms: BTreeSet<String> = shared.alarms().into_iter().map(|a| a.name).collect();
    let mut seen = SEEN.lock().expect("seen lock");
    let known = [
        crate::probe::ALARM,
        "applier_halted",
        crate::coordinator::ALARM_PLAN_PAUSED,
        crate::coordinator::ALARM_DEADLINE,
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(INCIDENT_CLASSES.iter().map(|c| format!("incident_{c}")));
    seen.0.extend(known.chain(alarms.iter().cloned()));
    for name in &seen.0 {
        gauge!(ALARM.name, "name" => name.clone()).set(f64::from(u8::from(alarms.contains(name))));
    }
    if let Some(coord) = shared.coord.get() {
        let f = coord.figures();
        for class in INCIDENT_CLASSES {
            gauge!(INCIDENT_OPEN.name, "class" => class)
                .set(f.incidents.iter().filter(|c| **c == class).count() as f64);
        }
        for stage in STAGES {
            gauge!(PLAN_STAGE.name, "stage" => stage)
                .set(f64::from(u8::from(f.stage.is_some_and(|(s, _)| s == stage))));
        }
        gauge!(PLAN_WAVE.name).set(f.stage.and_then(|(_, w)| w).unwrap_or(0) as f64);
        gauge!(PLAN_PAUSED.name).set(f64::from(u8::from(f.paused)));
        gauge!(DRAIN_LIMIT.name).set(f.limit.unwrap_or(0) as f64);
        seen.1.extend(GATES.iter().map(|g| g.to_string()).chain(f.gates.iter().map(|(g, _)| g.clone())));
        for gate in &seen.1 {
            let v = f.gates.iter().find(|(g, _)| g == gate).map_or(0, |(_, v)| *v);
            gauge!(GATE.name, "gate" => gate.clone()).set(v as f64);
        }
        // A plant the coordinator has not had to place yet is live.
        let placed: std::collections::BTreeMap<String, (&str, Option<usize>)> =
            f.plants.into_iter().map(|(p, s, w)| (p, (s, w))).collect();
        for r in &rows {
            let (state, wave) = placed.get(&r.plant).copied().unwrap_or(("live", None));
            for s in PLANT_STATES {
                gauge!(PLANT_STATE.name, "plant" => r.plant.clone(), "state" => s).set(f64::from(u8::from(s == state)));
            }
            gauge!(PLANT_WAVE.name, "plant" => r.plant.clone()).set(wave.unwrap_or(0) as f64);
        }
    }
    drop(seen);
    gauge!(AUDIT_HEAD.name).set(audit_head as f64);
    handle.run_upkeep();
    Ok(handle.render())
}

/// The epoch this replica leads under (0: none).
pub fn leading(epoch: u64) {
    gauge!(LEADER_EPOCH.name).set(epoch as f64);
}

/// The last checkpoint signed: set at start (from the store) and at each one after.
pub fn audit_signed(head_seq: u64, at_ms: i64) {
    gauge!(AUDIT_SIGNED.name).set(head_seq as f64);
    gauge!(AUDIT_CHECKPOINT_TIME.name).set(at_ms as f64 / 1000.0);
}
