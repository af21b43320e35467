//! The hub's own probe of Odoo, with its credentials, on the whole ladder of ODOO.md: the health
//! route (with the database server's state), `common.version`, then an authenticated
//! `execute_kw` (`res.users` `context_get`), which alone proves Odoo usable. The verdict goes
//! through the shared machine ([`holdfast_protocol::probe`]: hysteresis, full-jitter schedule)
//! and shows in `GET /api/v1/status` as `odoo`; while it is not `reachable` the `odoo_unusable`
//! alarm is raised. This is the hub's evidence of its own for classifying incidents.
//!
//! A refused login is definitive: the probe then stops logging in (Odoo throttles failed logins
//! per client address) and reports `credentials_refused` until the hub restarts with a fixed key.

use std::sync::Arc;

use holdfast_protocol::probe::{Observation, ProbeConfig, Prober, Verdict};
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::OdooConfig;
use crate::odoo::{OdooClient, RpcError};
use crate::shared::{Shared, now_ms};
use crate::store::Store;

/// The alarm raised while Odoo is not usable.
pub const ALARM: &str = "odoo_unusable";

/// What `GET /api/v1/status` shows of Odoo.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OdooView {
    pub verdict: String,
    pub since_ms: Option<i64>,
    /// What the last probe saw.
    pub detail: String,
    pub version: Option<String>,
    /// The last probe's time, in milliseconds, from the health route to the authenticated call.
    pub latency_ms: Option<u64>,
    /// The fencing epoch of the endpoint this verdict is about (0 until a failover).
    pub epoch: u64,
}

/// Probes until shutdown.
/// Its calls take permits from `odoo_calls`, the hub's budget of calls in flight to Odoo.
/// `client` is the probe's own (a failover retargets it); the health route is read from the
/// active endpoint in `shared.odoo_url`.
pub async fn run<S: Store>(
    shared: Arc<Shared<S>>,
    cfg: OdooConfig,
    client: Arc<OdooClient>,
    mut shutdown: watch::Receiver<bool>,
) {
    let timeout = cfg.timeout.min(std::time::Duration::from_secs(10));
    let http = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "the Odoo probe cannot start");
            return;
        }
    };
    let mut url_rx = shared.odoo_url.subscribe();
    let (mut url, mut epoch) = url_rx.borrow_and_update().clone();
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let mut prober = Prober::new(ProbeConfig { interval: cfg.probe_interval, ..ProbeConfig::default() }, now());
    let mut refused: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(prober.poll_timeout())) => {}
            _ = shutdown.changed() => return,
        }
        if url_rx.has_changed().unwrap_or(false) {
            // A failover: what the probe knew was of the old endpoint; the new one is judged
            // afresh (and its credentials have not been refused yet).
            (url, epoch) = url_rx.borrow_and_update().clone();
            refused = None;
            prober = Prober::new(ProbeConfig { interval: cfg.probe_interval, ..ProbeConfig::default() }, now());
            shared.clear_alarm(ALARM);
            let mut view = shared.odoo.lock().expect("odoo view lock");
            *view = OdooView { verdict: "unknown".into(), since_ms: Some(now_ms()), epoch, ..OdooView::default() };
        }
        let started = tokio::time::Instant::now();
        let obs = tokio::select! {
            obs = observe(&http, &client, &url, &mut refused) => obs,
            _ = shutdown.changed() => return,
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        if url_rx.has_changed().unwrap_or(false) {
            continue; // it was of the old endpoint: a failover happened meanwhile
        }
        let changed = prober.handle_observation(now(), obs.verdict, &mut rng);
        let at = now_ms();
        // The alarm changes before the verdict shows: whoever reads a verdict finds its alarm.
        match changed {
            Some(Verdict::Reachable) => {
                info!(detail = %obs.detail, "Odoo is usable");
                shared.clear_alarm(ALARM);
            }
            Some(v) => {
                warn!(verdict = v.as_str(), detail = %obs.detail, "Odoo is not usable");
                shared.clear_alarm(ALARM);
                shared.raise_alarm(ALARM, at, format!("Odoo is {} since {at} ms: {}", v.as_str(), obs.detail));
            }
            None => {}
        }
        {
            let mut view = shared.odoo.lock().expect("odoo view lock");
            view.epoch = epoch;
            view.detail = obs.detail.clone();
            view.latency_ms = Some(latency_ms);
            if obs.version.is_some() {
                view.version = obs.version.clone();
            }
            if let Some(v) = changed {
                view.verdict = v.as_str().into();
                view.since_ms = Some(at);
            }
        }
    }
}

#[allow(clippy::disallowed_methods)] // The probe's clock: tokio's, so paused time drives it in tests.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// One climb of the ladder.
async fn observe(http: &reqwest::Client, odoo: &OdooClient, url: &str, refused: &mut Option<String>) -> Observation {
    let base = url.trim_end_matches('/');
    match http.get(format!("{base}/web/health?db_server_status=1")).send().await {
        Err(e) => return Observation::unreachable(format!("GET /web/health: {e}")),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let db = resp.json::<Value>().await.ok().and_then(|b| b.get("db_server_status").and_then(Value::as_bool));
            match (status, db) {
                (_, Some(false)) => {
                    return Observation {
                        verdict: Verdict::DatabaseDown,
                        detail: "Odoo answers but reports its database server unreachable".into(),
                        version: None,
                    };
                }
                (200 | 404, _) => {}
                (code, _) => return Observation::unreachable(format!("GET /web/health answered HTTP {code}")),
            }
        }
    }
    let version = match odoo.version().await {
        Ok(v) => v.get("server_version").and_then(Value::as_str).map(str::to_owned),
        Err(e) => return Observation::unreachable(format!("common.version: {e}")),
    };
    if let Some(why) = refused {
        return Observation { verdict: Verdict::CredentialsRefused, detail: why.clone(), version };
    }
    let verdict_of = |e: &RpcError| match e {
        RpcError::CredentialsRefused(_) => Verdict::CredentialsRefused,
        RpcError::Odoo(o) if o.name == "odoo.exceptions.AccessDenied" => Verdict::CredentialsRefused,
        RpcError::Odoo(o) if o.name == "psycopg2.OperationalError" => Verdict::DatabaseDown,
        _ => Verdict::Unreachable,
    };
    match odoo.execute_kw("res.users", "context_get", json!([]), json!({})).await {
        Ok(_) => Observation {
            verdict: Verdict::Reachable,
            detail: format!("Odoo {} answers an authenticated call", version.as_deref().unwrap_or("?")),
            version,
        },
        Err(e) => {
            let verdict = verdict_of(&e);
            let detail = format!("res.users context_get: {e}");
            if verdict == Verdict::CredentialsRefused {
                *refused = Some(format!("{detail} (the probe logs in no more until the hub restarts)"));
            }
            Observation { verdict, detail, version }
        }
    }
}
