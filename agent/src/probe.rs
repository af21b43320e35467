//! The agent's own view of Odoo. Gateways hold no Odoo credentials, so the probe climbs only the
//! first two rungs of ODOO.md's ladder: `GET /web/health?db_server_status=1`, then
//! `common.version` over JSON-RPC. What it concludes tells a plant network failure apart from an
//! Odoo or database outage, and is kept (with the hub link's changes) while the hub cannot hear
//! the plant, then sent in the heartbeats when the link returns.
//!
//! The machine (hysteresis, full-jitter schedule) is [`holdfast_protocol::probe`], shared with
//! the hub's own probe; here are the agent's observation and its diagnosis log.

use holdfast_protocol::probe::error_chain;
pub use holdfast_protocol::probe::{Observation, ProbeConfig, Prober, Verdict};
use holdfast_protocol::{DIAGNOSIS_EVENTS_MAX, Diagnosis, DiagnosisEvent};

/// The diagnosis the agent keeps and sends: the current verdict and the newest changes.
#[derive(Clone, Debug, Default)]
pub struct DiagnosisLog {
    current: Diagnosis,
}

impl DiagnosisLog {
    pub fn new() -> Self {
        Self { current: Diagnosis { odoo: Verdict::Unknown.as_str().into(), ..Diagnosis::default() } }
    }

    pub fn snapshot(&self) -> Diagnosis {
        self.current.clone()
    }

    /// Records a probe's result; `changed` is the prober's answer to it.
    pub fn observed(&mut self, at_ms: i64, obs: &Observation, changed: Option<Verdict>) {
        self.current.odoo_detail = obs.detail.clone();
        if obs.version.is_some() {
            self.current.odoo_version = obs.version.clone();
        }
        if let Some(v) = changed {
            self.current.odoo = v.as_str().into();
            self.current.odoo_since_ms = Some(at_ms);
            self.push(DiagnosisEvent {
                at_ms,
                subject: "odoo".into(),
                state: v.as_str().into(),
                detail: obs.detail.clone(),
            });
        }
    }

    /// Records a change of the hub link.
    pub fn link_changed(&mut self, at_ms: i64, connected: bool, detail: Option<&str>) {
        let state = if connected { "connected" } else { "disconnected" };
        self.push(DiagnosisEvent {
            at_ms,
            subject: "hub_link".into(),
            state: state.into(),
            detail: detail.unwrap_or_default().into(),
        });
    }

    fn push(&mut self, event: DiagnosisEvent) {
        self.current.events.push(event);
        let over = self.current.events.len().saturating_sub(DIAGNOSIS_EVENTS_MAX);
        self.current.events.drain(..over);
    }
}

/// Probes Odoo until shutdown, keeping the diagnosis in `shared`.
pub async fn run(
    shared: std::sync::Arc<crate::run::Shared>,
    cfg: crate::config::OdooProbeConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use rand::SeedableRng;
    let client = match reqwest::Client::builder().timeout(cfg.probe_timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the Odoo probe cannot start");
            return;
        }
    };
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let tuning = ProbeConfig { interval: cfg.probe_interval, ..ProbeConfig::default() };
    let mut prober = Prober::new(tuning, tokio::time::Instant::now().into_std());
    loop {
        let due = tokio::time::Instant::from_std(prober.poll_timeout());
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = shutdown.changed() => return,
        }
        let obs = tokio::select! {
            obs = observe(&client, &cfg.url) => obs,
            _ = shutdown.changed() => return,
        };
        let changed = prober.handle_observation(tokio::time::Instant::now().into_std(), obs.verdict, &mut rng);
        if let Some(v) = changed {
            match v {
                Verdict::Reachable => {
                    tracing::info!(url = %cfg.url, detail = %obs.detail, "Odoo is reachable from the plant")
                }
                _ => {
                    tracing::warn!(url = %cfg.url, verdict = v.as_str(), detail = %obs.detail, "Odoo is not usable from the plant")
                }
            }
        }
        if let Some(d) = &shared.diagnosis {
            d.lock().expect("diagnosis lock").observed(crate::run::now_ms(), &obs, changed);
        }
    }
}

/// Probes Odoo at `base` once: the health route, then `common.version`.
pub async fn observe(client: &reqwest::Client, base: &str) -> Observation {
    let base = base.trim_end_matches('/');
    let mut database = None;
    match client.get(format!("{base}/web/health?db_server_status=1")).send().await {
        Err(e) => return Observation::unreachable(format!("GET /web/health: {}", error_chain(&e))),
        Ok(resp) => {
            let status = resp.status();
            let body: Option<serde_json::Value> = resp.json().await.ok();
            let db = body.as_ref().and_then(|b| b.get("db_server_status")).and_then(|v| v.as_bool());
            match (status.as_u16(), db) {
                (200, Some(true)) => database = Some(true),
                // Odoo 16 ignores the parameter: the database's state is unknown, not healthy.
                (200, None) => {}
                (500, Some(false)) | (200, Some(false)) => {
                    return Observation {
                        verdict: Verdict::DatabaseDown,
                        detail: "Odoo answers but reports its database server unreachable (/web/health db_server_status false)".into(),
                        version: None,
                    };
                }
                // Before 15.0 there is no health route: the version call below decides.
                (404, _) => {}
                (code, _) => return Observation::unreachable(format!("GET /web/health answered HTTP {code}")),
            }
        }
    }
    let call = serde_json::json!({"jsonrpc": "2.0", "method": "call", "params": {"service": "common", "method": "version", "args": []}, "id": 1});
    let version = match client.post(format!("{base}/jsonrpc")).json(&call).send().await {
        Err(e) => return Observation::unreachable(format!("common.version: {}", error_chain(&e))),
        Ok(resp) if !resp.status().is_success() => {
            return Observation::unreachable(format!("common.version answered HTTP {}", resp.status().as_u16()));
        }
        Ok(resp) => match resp.json::<serde_json::Value>().await {
            Ok(v) => match v.pointer("/result/server_version").and_then(|s| s.as_str()) {
                Some(s) => s.to_owned(),
                None => return Observation::unreachable(format!("common.version gave no server_version: {v}")),
            },
            Err(e) => return Observation::unreachable(format!("common.version: not JSON: {e}")),
        },
    };
    let detail = match database {
        Some(true) => format!("Odoo {version} answers and its database server is reachable"),
        _ => format!("Odoo {version} answers; it does not report its database server's state"),
    };
    Observation { verdict: Verdict::Reachable, detail, version: Some(version) }
}

#[cfg(test)]
mod tests;
