//! Starting and stopping the agent: opens the journal, binds the HTTP listener, starts the
//! uplink and the compactor, and on shutdown stops them (the journal's writer finishes what is
//! queued; anything acknowledged is already committed).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::Config;
use crate::journal::{AuditRecord, Journal, JournalError};
use crate::mode::{self, ManualState};
use crate::mqtt::MqttState;
use crate::status::{Inputs, LinkState, Status};
use crate::{control, http, mqtt, station, uplink};

/// How often applied rows past their retention are deleted.
pub const COMPACT_EVERY: Duration = Duration::from_secs(60);

/// State the agent's shells share.
#[derive(Debug)]
pub struct Shared {
    pub plant: String,
    pub journal: Journal,
    pub journal_path: String,
    /// The hub address in use (the one connected, or being tried).
    pub hub_address: Mutex<String>,
    pub link: Mutex<LinkState>,
    /// The MQTT link, when MQTT ingest is configured.
    pub mqtt: Mutex<Option<MqttState>>,
    /// Plant IT's manual state, as last read from the journal.
    pub manual: watch::Sender<Option<ManualState>>,
    /// New transactions journaled since the agent started, per ingest path (`http`, `mqtt`,
    /// `station:<name>`); resends of keyed transactions are not counted again.
    pub ingested: Mutex<std::collections::BTreeMap<String, u64>>,
    /// What the hub last said of this plant's transactions it could not apply, by sequence.
    pub notices: Mutex<std::collections::BTreeMap<u64, holdfast_protocol::Notice>>,
    /// The plant's place in the hub's reopening, as the hub last said.
    pub reopening: Mutex<Option<holdfast_protocol::Reopening>>,
    /// `[reopening] on_reopened`: run when the plant goes from held to reopened.
    pub on_reopened: Mutex<Vec<String>>,
    /// The upload bandwidth cap, if configured (shared by every session).
    pub upload_cap: Mutex<Option<crate::uplink::UploadCap>>,
    /// The producer tokens' SHA-256 digests (lower-case hex); none: no token needed.
    pub tokens: Mutex<Arc<Vec<String>>>,
    /// How long applied rows stay in the journal.
    pub retention: Mutex<Duration>,
    /// The TLS settings of the next connection to the hub (a reload renews the certificate).
    pub client: Mutex<quinn::ClientConfig>,
    /// The agent's own view of Odoo and of the hub link, when `[odoo]` is configured.
    pub diagnosis: Option<Mutex<crate::probe::DiagnosisLog>>,
    /// Until when the uplink driver vouches for itself (ms): each of its steps says how long
    /// it may take; the service watchdog stops pinging once that passes.
    pub uplink_alive_until_ms: std::sync::atomic::AtomicI64,
}

impl Shared {
    /// The uplink driver's progress: its next step will come within `within`.
    pub fn uplink_progress(&self, within: Duration) {
        let until = now_ms().saturating_add(i64::try_from(within.as_millis()).unwrap_or(i64::MAX));
        self.uplink_alive_until_ms.store(until, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_link(&self, connected: bool, error: Option<String>) {
        let mut link = self.link.lock().expect("link lock");
        if link.connected != connected {
            link.since_ms = Some(now_ms());
            if let Some(d) = &self.diagnosis {
                d.lock().expect("diagnosis lock").link_changed(now_ms(), connected, error.as_deref());
            }
        }
        link.connected = connected;
        if error.is_some() || connected {
            link.last_error = error;
        }
    }

    /// Updates the MQTT link's state.
    pub fn set_mqtt(&self, f: impl FnOnce(&mut MqttState)) {
        if let Some(m) = self.mqtt.lock().expect("mqtt lock").as_mut() {
            f(m);
        }
    }

    /// Counts the new (non-duplicate) transactions of an append.
    /// What the hub says of the plant's reopening; from `held` to anything else, the plant is
    /// reopened and `on_reopened` runs (in the background; its exit status is logged).
    pub fn set_reopening(&self, r: holdfast_protocol::Reopening) {
        let before = self.reopening.lock().expect("reopening lock").replace(r.clone());
        let reopened = before.as_ref().is_some_and(|b| b.state == "held") && r.state != "held";
        if reopened {
            tracing::info!(state = %r.state, wave = ?r.wave, "the hub reopened the plant");
        }
        let on_reopened = self.on_reopened.lock().expect("on_reopened lock").clone();
        let Some((program, args)) = on_reopened.split_first() else { return };
        if !reopened {
            return;
        }
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env("HOLDFAST_PLANT", &self.plant)
            .env("HOLDFAST_STATE", &r.state)
            .env("HOLDFAST_WAVE", r.wave.map(|w| w.to_string()).unwrap_or_default())
            .kill_on_drop(false);
        let program = program.clone();
        tokio::spawn(async move {
            match cmd.status().await {
                Ok(s) if s.success() => tracing::info!(%program, "reopening.on_reopened ran"),
                Ok(s) => tracing::warn!(%program, status = %s, "reopening.on_reopened failed"),
                Err(e) => tracing::warn!(%program, error = %e, "reopening.on_reopened could not start"),
            }
        });
    }

    pub fn count_ingested(&self, path: &str, appended: &[crate::journal::Appended]) {
        let new = appended.iter().filter(|a| !a.duplicate).count() as u64;
        *self.ingested.lock().expect("ingested lock").entry(path.to_owned()).or_default() += new;
    }

    pub async fn status(&self) -> Result<Status, JournalError> {
        let journal = self.journal.reader().state().await?;
        let link = self.link.lock().expect("link lock").clone();
        let mqtt = self.mqtt.lock().expect("mqtt lock").clone();
        let manual = self.manual.borrow().clone();
        let ingested = self.ingested.lock().expect("ingested lock").clone();
        let quarantined = self.notices.lock().expect("notices lock").values().cloned().collect();
        let reopening = self.reopening.lock().expect("reopening lock").clone();
        Ok(Status::new(Inputs {
            reopening,
            ingested: Some(ingested),
            quarantined,
            odoo: self.diagnosis.as_ref().map(|d| d.lock().expect("diagnosis lock").snapshot()),
            mqtt: mqtt.as_ref(),
            manual: manual.as_ref(),
            now_ms: now_ms(),
            plant: &self.plant,
            path: &self.journal_path,
            hub_address: &self.hub_address.lock().expect("hub address lock").clone(),
            journal: &journal,
            usage: &self.journal.usage(),
            limits: &self.journal.limits(),
            link: &link,
            running: true,
        }))
    }
}

/// A running agent.
#[derive(Debug)]
pub struct RunningAgent {
    pub http_addr: SocketAddr,
    /// Each station's name and bound address.
    pub station_addrs: Vec<(String, SocketAddr)>,
    /// The metrics listener's address, when `[metrics]` is configured.
    pub metrics_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl RunningAgent {
    /// Stops every task, then closes the journal (everything acknowledged was committed
    /// already; the close checkpoints the write-ahead log into the database).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        match self.shared.journal.close().await {
            Ok(()) => info!("journal closed, its write-ahead log checkpointed"),
            Err(e) => {
                warn!(error = %e, "closing the journal failed; it recovers from its write-ahead log at the next start")
            }
        }
    }

    /// Waits until a task ends by itself (only a fatal error does).
    pub async fn wait(&mut self) {
        self.tasks.join_next().await;
    }
}

pub async fn start(cfg: Config) -> anyhow::Result<RunningAgent> {
    let client = uplink::client_config(&cfg.plant, &cfg.hub)?;
    let journal = Journal::open(&cfg.journal.path, now_ms(), cfg.journal.limits())
        .with_context(|| format!("opening the journal {}", cfg.journal.path.display()))?;
    let shared = Arc::new(Shared {
        plant: cfg.plant.clone(),
        journal,
        journal_path: cfg.journal.path.display().to_string(),
        hub_address: Mutex::new(cfg.hub.addresses[0].clone()),
        link: Mutex::new(LinkState::default()),
        mqtt: Mutex::new(cfg.mqtt.as_ref().map(|m| MqttState { broker: m.broker.clone(), ..MqttState::default() })),
        manual: watch::Sender::new(None),
        ingested: Mutex::new(std::collections::BTreeMap::new()),
        notices: Mutex::new(std::collections::BTreeMap::new()),
        reopening: Mutex::new(None),
        on_reopened: Mutex::new(cfg.reopening.on_reopened.clone()),
        upload_cap: Mutex::new(cfg.hub.upload_bytes_per_s.map(|cap| crate::uplink::UploadCap::new(cap.as_u64()))),
        tokens: Mutex::new(Arc::new(cfg.http.token_digests())),
        retention: Mutex::new(cfg.journal.retention),
        client: Mutex::new(client.clone()),
        diagnosis: cfg.odoo.as_ref().map(|_| Mutex::new(crate::probe::DiagnosisLog::new())),
        uplink_alive_until_ms: i64::MAX.into(),
    });
    shared.manual.send_replace(shared.journal.reader().manual().await?);
    let mqtt_password = match cfg.mqtt.as_ref().and_then(|m| m.password_file.as_ref()) {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading mqtt.password_file {}", path.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        ),
        None => None,
    };
    let endpoint = uplink::endpoint_with(client)?;
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", cfg.http.listen))?;
    let http_addr = listener.local_addr()?;
    let control_path = cfg.control_socket();
    let control = control::bind(&control_path)
        .with_context(|| format!("binding the control socket {}", control_path.display()))?;
    let mut stations = Vec::new();
    for st in &cfg.stations {
        let l = tokio::net::TcpListener::bind(st.listen)
            .await
            .with_context(|| format!("binding station {} on {}", st.name, st.listen))?;
        stations.push((Arc::new(st.clone()), l));
    }
    let metrics = match &cfg.metrics {
        Some(m) => Some(
            tokio::net::TcpListener::bind(m.listen)
                .await
                .with_context(|| format!("binding the metrics listener on {}", m.listen))?,
        ),
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(|l| l.local_addr()).transpose()?;
    let station_addrs =
        stations.iter().map(|(st, l)| Ok((st.name.clone(), l.local_addr()?))).collect::<std::io::Result<Vec<_>>>()?;

    let (shutdown, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(uplink::run(shared.clone(), endpoint, cfg.hub.clone(), rx.clone()));
    tasks.spawn(compactor(shared.clone(), rx.clone()));
    tasks.spawn(manual_watch(shared.clone(), rx.clone()));
    tasks.spawn(control::serve(shared.clone(), control, rx.clone()));
    for (st, l) in stations {
        tasks.spawn(station::serve(shared.clone(), st, l, rx.clone()));
    }
    if let Some(every) = sd_notify::watchdog_enabled() {
        tasks.spawn(watchdog(shared.clone(), every, rx.clone()));
    }
    if let Some(l) = metrics {
        tasks.spawn(crate::metrics::serve(l, shared.clone(), rx.clone()));
    }
    if let Some(mqtt) = cfg.mqtt.clone() {
        tasks.spawn(mqtt::run(shared.clone(), mqtt, mqtt_password, rx.clone()));
    }
    if let Some(odoo) = cfg.odoo.clone() {
        tasks.spawn(crate::probe::run(shared.clone(), odoo, rx.clone()));
    }
    let app = http::router(shared.clone());
    let mut http_shutdown = rx;
    tasks.spawn(async move {
        // Answers go out at once: with Nagle's algorithm a response split in two writes waits
        // for the client's delayed ACK (about 40 ms) before its second part.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = http_shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "the HTTP listener failed");
        }
    });
    Ok(RunningAgent { http_addr, station_addrs, metrics_addr, shared, shutdown, tasks })
}

async fn compactor(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(COMPACT_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let retention = *shared.retention.lock().expect("retention lock");
                match shared.journal.compact(now_ms() - retention.as_millis() as i64).await {
                    Ok(0) => {}
                    Ok(n) => info!(rows = n, "compacted applied rows past retention"),
                    Err(e) => warn!(error = %e, "compaction failed"),
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// systemd's watchdog (`WatchdogSec=`): pings at half the interval, but only while the journal
/// writer answers (from inside a write transaction) and the uplink driver is within the time its
/// last step allowed itself. A stuck writer or driver stops the pings; systemd restarts the agent.
async fn watchdog(shared: Arc<Shared>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let half = every / 2;
    let mut tick = tokio::time::interval(half);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let writer = match tokio::time::timeout(half, shared.journal.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("the journal writer failed: {e}")),
            Err(_) => Some(format!("the journal writer did not answer within {} ms", half.as_millis())),
        };
        let until = shared.uplink_alive_until_ms.load(std::sync::atomic::Ordering::Relaxed);
        let uplink = (now_ms() > until).then(|| format!("the uplink driver is {} ms past its step", now_ms() - until));
        match writer.or(uplink) {
            None => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Some(why) => warn!("no watchdog ping: {why}"),
        }
    }
}

/// How often the journal's manual state is read (`holdfast-agent offline` writes it there).
pub const MANUAL_POLL: Duration = Duration::from_secs(1);

/// Follows the manual state in the journal, and ends it when its expiry passes.
async fn manual_watch(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(MANUAL_POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let current = match shared.journal.reader().manual().await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "reading the manual state failed");
                continue;
            }
        };
        let now = now_ms();
        let current = match current {
            Some(m) if mode::expired(&m, now) => {
                let audit = AuditRecord {
                    at_ms: now,
                    actor: "agent".into(),
                    action: format!("manual_{}_expired", m.kind.as_str()),
                    reason: format!("set by {} ({}) until {}", m.who, m.why, m.until_ms.unwrap_or_default()),
                };
                match shared.journal.set_manual(None, audit).await {
                    Ok(()) => {
                        info!("the manual state expired");
                        None
                    }
                    Err(e) => {
                        warn!(error = %e, "ending an expired manual state failed");
                        Some(m)
                    }
                }
            }
            other => other,
        };
        shared.manual.send_if_modified(|m| {
            let changed = *m != current;
            *m = current;
            changed
        });
    }
}

/// Milliseconds since the Unix epoch, from the system clock (shells only).
#[allow(clippy::disallowed_methods)] // The agent's one wall-clock read.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
