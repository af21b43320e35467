//! The agent's metrics, in Prometheus text format on their own read-only listener
//! (`[metrics] listen`; it answers `GET /metrics` and nothing else, so it may face the plant's
//! monitoring network while the control API stays on loopback). Every metric is defined once,
//! in [`DEFS`] (ARCHITECTURE.md lists the same names; a test checks a running agent exports
//! each), and read from the agent's status at each scrape: the figures are the ones
//! `holdfast-agent status` shows.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::run::Shared;
use crate::status::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
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

use Kind::{Counter, Gauge};

pub const INGESTED: Def = def(
    "holdfast_agent_ingested_total",
    Counter,
    &["path"],
    "New transactions journaled since the agent started, per ingest path (http, mqtt, station:<name>).",
);
pub const REJECTED: Def = def(
    "holdfast_agent_rejected_payloads",
    Gauge,
    &[],
    "Payloads kept in the rejected table (holdfast-agent rejected list).",
);
pub const JOURNAL_LAST_SEQ: Def =
    def("holdfast_agent_journal_last_seq", Gauge, &[], "The newest sequence number in the journal.");
pub const JOURNAL_ROWS: Def =
    def("holdfast_agent_journal_rows", Gauge, &[], "Rows the journal holds (not yet compacted).");
pub const JOURNAL_BYTES: Def = def("holdfast_agent_journal_bytes", Gauge, &[], "Bytes the journal holds.");
pub const JOURNAL_ROWS_MAX: Def =
    def("holdfast_agent_journal_rows_max", Gauge, &[], "The journal's configured row limit.");
pub const JOURNAL_BYTES_MAX: Def =
    def("holdfast_agent_journal_bytes_max", Gauge, &[], "The journal's configured byte limit.");
pub const TIME_TO_FULL: Def = def(
    "holdfast_agent_journal_time_to_full_seconds",
    Gauge,
    &[],
    "Seconds until a journal limit is reached at the last minute's intake (+Inf when nothing comes in).",
);
pub const DISK_FREE: Def = def("holdfast_agent_disk_free_bytes", Gauge, &[], "Free space on the journal's filesystem.");
pub const INGEST_RATE: Def =
    def("holdfast_agent_ingest_rate", Gauge, &[], "Transactions a second journaled over the last minute.");
pub const BACKLOG: Def =
    def("holdfast_agent_backlog", Gauge, &[], "Transactions journaled and not yet applied in Odoo.");
pub const UNSENT: Def =
    def("holdfast_agent_unsent", Gauge, &[], "Transactions journaled and not yet stored at the hub.");
pub const HUB_CONNECTED: Def =
    def("holdfast_agent_hub_connected", Gauge, &[], "1 while the sync link to the hub is up.");
pub const HUB_STORED_SEQ: Def =
    def("holdfast_agent_hub_stored_seq", Gauge, &[], "The journal sequence the hub has stored (uploaded).");
pub const HUB_APPLIED_SEQ: Def =
    def("holdfast_agent_hub_applied_seq", Gauge, &[], "The journal sequence the hub has applied in Odoo, in order.");
pub const QUARANTINED: Def = def(
    "holdfast_agent_quarantined",
    Gauge,
    &[],
    "The plant's transactions the hub quarantined (each blocks its ordering key), as the hub last said.",
);
pub const MODE: Def = def(
    "holdfast_agent_mode",
    Gauge,
    &["mode"],
    "1 for the agent's mode (online, offline, manual_offline, isolated), 0 for the others.",
);
pub const ODOO_VERDICT: Def = def(
    "holdfast_agent_odoo_verdict",
    Gauge,
    &["verdict"],
    "1 for the agent's own verdict on Odoo (unknown, reachable, database_down, unreachable); absent without [odoo].",
);
pub const MQTT_CONNECTED: Def =
    def("holdfast_agent_mqtt_connected", Gauge, &[], "1 while the MQTT link is up; absent without [mqtt].");
pub const ALARM: Def = def("holdfast_agent_alarm", Gauge, &["name"], "1 while the alarm is raised.");
pub const REOPENING_STATE: Def = def(
    "holdfast_agent_reopening_state",
    Gauge,
    &["state"],
    "1 for the plant's state in the hub's reopening (live, held, draining, caught_up), as the hub last said.",
);
pub const REOPENING_WAVE: Def =
    def("holdfast_agent_reopening_wave", Gauge, &[], "The plant's wave in the hub's reopening, from 1 (0: none).");
pub const REOPENING_ETA: Def = def(
    "holdfast_agent_reopening_eta_seconds",
    Gauge,
    &[],
    "Seconds until the hub expects the plant to have caught up (0: no estimate).",
);

/// Every metric the agent exports.
pub const DEFS: &[Def] = &[
    INGESTED,
    REJECTED,
    JOURNAL_LAST_SEQ,
    JOURNAL_ROWS,
    JOURNAL_BYTES,
    JOURNAL_ROWS_MAX,
    JOURNAL_BYTES_MAX,
    TIME_TO_FULL,
    DISK_FREE,
    INGEST_RATE,
    BACKLOG,
    UNSENT,
    HUB_CONNECTED,
    HUB_STORED_SEQ,
    HUB_APPLIED_SEQ,
    QUARANTINED,
    MODE,
    ODOO_VERDICT,
    MQTT_CONNECTED,
    ALARM,
    REOPENING_STATE,
    REOPENING_WAVE,
    REOPENING_ETA,
];

const MODES: [&str; 4] = ["online", "offline", "manual_offline", "isolated"];
const VERDICTS: [&str; 4] = ["unknown", "reachable", "database_down", "unreachable"];
const REOPENING_STATES: [&str; 4] = ["live", "held", "draining", "caught_up"];
/// Every alarm the agent raises: each shows, 0 while clear.
const ALARMS: [&str; 1] = ["journal_full"];

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder already installed (two agents in one test process) counts for both.
        let _ = metrics::set_global_recorder(recorder);
        for d in DEFS {
            match d.kind {
                Counter => metrics::describe_counter!(d.name, d.help),
                Gauge => metrics::describe_gauge!(d.name, d.help),
            }
        }
        handle
    })
}

/// Sets every gauge from `s`.
pub fn record(s: &Status, now_ms: i64) {
    let flag = |on: bool| f64::from(u8::from(on));
    for (path, n) in s.ingested.iter().flatten() {
        counter!(INGESTED.name, "path" => path.clone()).absolute(*n);
    }
    gauge!(REJECTED.name).set(s.rejected as f64);
    gauge!(JOURNAL_LAST_SEQ.name).set(s.journal.last_seq as f64);
    gauge!(JOURNAL_ROWS.name).set(s.journal.rows as f64);
    gauge!(JOURNAL_BYTES.name).set(s.journal.bytes as f64);
    gauge!(JOURNAL_ROWS_MAX.name).set(s.capacity.rows_max as f64);
    gauge!(JOURNAL_BYTES_MAX.name).set(s.capacity.bytes_max as f64);
    gauge!(TIME_TO_FULL.name).set(s.capacity.time_to_full_s.map_or(f64::INFINITY, |t| t as f64));
    if let Some(free) = s.capacity.disk_free {
        gauge!(DISK_FREE.name).set(free as f64);
    }
    gauge!(INGEST_RATE.name).set(s.capacity.rate_per_s);
    gauge!(BACKLOG.name).set(s.backlog as f64);
    gauge!(UNSENT.name).set(s.unsent as f64);
    gauge!(HUB_CONNECTED.name).set(flag(s.hub.connected));
    gauge!(HUB_STORED_SEQ.name).set(s.hub.stored_seq as f64);
    gauge!(HUB_APPLIED_SEQ.name).set(s.hub.applied_seq as f64);
    gauge!(QUARANTINED.name).set(s.quarantined.len() as f64);
    for mode in MODES {
        gauge!(MODE.name, "mode" => mode).set(flag(s.mode == mode));
    }
    if let Some(odoo) = &s.odoo {
        for verdict in VERDICTS {
            gauge!(ODOO_VERDICT.name, "verdict" => verdict).set(flag(odoo.odoo == verdict));
        }
    }
    if let Some(mqtt) = &s.mqtt {
        gauge!(MQTT_CONNECTED.name).set(flag(mqtt.connected));
    }
    for name in ALARMS {
        gauge!(ALARM.name, "name" => name).set(flag(s.alarms.iter().any(|a| a.name == name)));
    }
    let r = s.reopening.as_ref();
    for state in REOPENING_STATES {
        gauge!(REOPENING_STATE.name, "state" => state).set(flag(r.is_some_and(|r| r.state == state)));
    }
    gauge!(REOPENING_WAVE.name).set(r.and_then(|r| r.wave).unwrap_or(0) as f64);
    let eta = r.and_then(|r| r.eta_ms).map_or(0.0, |eta| ((eta - now_ms).max(0) as f64) / 1000.0);
    gauge!(REOPENING_ETA.name).set(eta);
}

/// Serves `GET /metrics` on `listener` until shutdown.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    handle();
    let app = Router::new().route("/metrics", get(scrape)).with_state(shared);
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
    });
    if let Err(e) = serve.await {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}

async fn scrape(State(shared): State<Arc<Shared>>) -> Response {
    match shared.status().await {
        Ok(status) => {
            record(&status, crate::run::now_ms());
            let handle = handle();
            handle.run_upkeep();
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("the journal cannot be read: {e}\n")).into_response(),
    }
}
