//! Starting and stopping the hub: binds every listener, spawns the shells, and on shutdown
//! waits for them (sessions end, in-flight Odoo calls are abandoned and re-sent after restart,
//! which the inbox makes safe).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::applier::ApplierConfig;
use crate::config::Config;
use crate::odoo::OdooClient;
use crate::shared::Shared;
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::{api, certs, delivery, sync};

/// UDP receive buffer asked for (the kernel caps it at `net.core.rmem_max`): the default loses
/// packets under load even on loopback.
pub const UDP_RECV_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// A running hub.
#[derive(Debug)]
pub struct RunningHub {
    pub sync_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// What a config reload may replace while the hub runs.
    pub live: Live,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// The settings a running hub takes from a reload (see [`crate::reload`]).
#[derive(Clone)]
pub struct Live {
    pub policies: crate::policy::LivePolicies,
    /// `store.retention`.
    pub retention: Arc<std::sync::Mutex<Duration>>,
    /// The sync listener: a reload gives it a server configuration from the files again.
    pub sync: quinn::Endpoint,
    /// The API's TLS settings, when it serves HTTPS.
    pub api_tls: Option<crate::tls_api::LiveTls>,
    /// Where a reload is audited.
    pub audit: AuditSink,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("policies", &self.policies)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// Appends to the store's audit trail, whichever the store.
pub type AuditSink = Arc<
    dyn Fn(crate::audit::AuditEntry) -> crate::odoo::BoxFuture<'static, Result<u64, crate::store::StoreError>>
        + Send
        + Sync,
>;

impl RunningHub {
    /// Stops every shell and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits until a shell ends by itself (which only a fatal error does).
    pub async fn wait(&mut self) {
        self.tasks.join_next().await;
    }
}

/// Opens the store the config names (SQLite, or PostgreSQL for replicas) and starts the hub on it.
pub async fn start(cfg: Config) -> anyhow::Result<RunningHub> {
    // The recorder counts from the start, not from the first scrape.
    crate::metrics::handle();
    match open_store(&cfg.store, None).await? {
        OpenedStore::Postgres(store) => start_with(store, cfg, true).await,
        OpenedStore::Sqlite(store) => start_with(store, cfg, false).await,
    }
}

/// The store `[store]` names, opened (and migrated).
#[derive(Debug)]
pub enum OpenedStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Opens the store `[store]` names: SQLite's file, or PostgreSQL with at most `connections`
/// (a command needs few; `None`: `store.postgres_connections`).
pub async fn open_store(store: &crate::config::StoreConfig, connections: Option<usize>) -> anyhow::Result<OpenedStore> {
    match (store.postgres_options(), &store.path) {
        (Some(mut opts), _) => {
            opts.connections = connections.unwrap_or(opts.connections);
            let store = PgStore::connect(&opts).await.context("connecting to the PostgreSQL store (store.postgres)")?;
            Ok(OpenedStore::Postgres(store))
        }
        (None, Some(path)) => Ok(OpenedStore::Sqlite(
            SqliteStore::open(path).with_context(|| format!("opening the store {}", path.display()))?,
        )),
        (None, None) => anyhow::bail!("store: give store.path or store.postgres"),
    }
}

/// The hub on `store`. `replicated`: other replicas may share it, so this one's name in the
/// lease is new at every start (a restarted replica takes the lease under a new epoch).
async fn start_with<S: Store>(store: S, cfg: Config, replicated: bool) -> anyhow::Result<RunningHub> {
    let shared = Arc::new(Shared::new(store));
    {
        let held = shared.store.plant_manuals().await?.into_iter().map(|(plant, _)| plant).collect();
        shared.held.send_replace(held);
    }
    let coord_cfg = cfg.reopening.coordinator().map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    let (coord, persist) = crate::reopening::start(&shared, coord_cfg).await.context("starting the coordinator")?;
    shared.coord.set(coord.clone()).expect("the coordinator is set once");
    // The active endpoint: the config's, or the one a failover chose (with its epoch).
    let (url, epoch) = coord
        .with(|c, _| c.durable().endpoint.as_ref().map(|e| (e.url.clone(), e.epoch)))
        .unwrap_or_else(|| (cfg.odoo.url.clone(), 0));
    if epoch > 0 {
        tracing::info!(%url, epoch, configured = %cfg.odoo.url, "writing to the endpoint of the last failover");
    }
    shared.odoo_url.send_replace((url.clone(), epoch));
    let active = crate::config::OdooConfig { url, ..cfg.odoo.clone() };
    let short = active.timeout.min(Duration::from_secs(10));
    // One budget of calls to Odoo for the whole hub: the applier's and the probe's.
    let odoo_calls = Arc::new(tokio::sync::Semaphore::new(cfg.applier.calls_max));
    let client = |timeout: Duration| -> anyhow::Result<OdooClient> {
        let cfg = crate::config::OdooConfig { timeout, ..active.clone() };
        Ok(OdooClient::new(&cfg).context("building an Odoo HTTP client")?.at_epoch(epoch))
    };
    let leadership = shared.leadership.clone();
    let odoo = Arc::new(client(active.timeout)?.sharing(odoo_calls.clone()).leading(leadership.clone()));
    let probe_client = Arc::new(client(short)?.sharing(odoo_calls.clone()).leading(leadership.clone()));
    // The canary takes its permit itself, to time its call from the permit on.
    let canary = Arc::new(client(short)?.leading(leadership));
    let canary_permits = odoo_calls.clone();

    let endpoint = quic_endpoint(&cfg)?;
    let policies = crate::policy::LivePolicies::new(
        crate::policy::Policies::new(&cfg.plants).map_err(|p| anyhow::anyhow!(p.join("; ")))?,
    );
    let retention = Arc::new(std::sync::Mutex::new(cfg.store.retention));
    let mut live = Live {
        policies: policies.clone(),
        retention: retention.clone(),
        sync: endpoint.clone(),
        api_tls: None,
        audit: {
            let shared = shared.clone();
            Arc::new(move |entry| {
                let shared = shared.clone();
                Box::pin(async move { shared.store.append_audit(entry).await })
            })
        },
    };
    let sync_addr = endpoint.local_addr()?;
    let listener = tokio::net::TcpListener::bind(cfg.api.listen)
        .await
        .with_context(|| format!("binding the API on {}", cfg.api.listen))?;
    let api_addr = listener.local_addr()?;

    let (shutdown, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(sync::serve(endpoint, shared.clone(), rx.clone()));
    let applier_cfg = ApplierConfig {
        calls_max: cfg.applier.calls_max,
        // Plain mode sends one transaction per call: there is no batch entry point without the inbox.
        batch_max: if cfg.odoo.mode == crate::config::DeliveryMode::Plain { 1 } else { cfg.applier.batch_max },
        retry_initial: cfg.applier.retry_initial,
        retry_max: cfg.applier.retry_max,
        retry_budget: cfg.applier.retry_budget,
        queued_max: delivery::QUEUED_MAX,
        policies,
    };
    let mode = match cfg.odoo.mode {
        crate::config::DeliveryMode::Inbox => delivery::Delivery::Inbox,
        crate::config::DeliveryMode::Plain => delivery::Delivery::Plain {
            checks: Arc::new(cfg.odoo.checks.clone()),
            limit_time_real: cfg.odoo.limit_time_real,
        },
    };
    let wiring = crate::reopening::Wiring {
        odoo: odoo.clone(),
        clients: vec![(odoo.clone(), active.timeout), (probe_client.clone(), short), (canary.clone(), short)],
        odoo_cfg: cfg.odoo.clone(),
        applier: applier_cfg.clone(),
        plain: cfg.odoo.mode == crate::config::DeliveryMode::Plain,
        webhook: cfg.reopening.webhook.clone(),
    };
    let hmac_key = cfg.audit.key().map_err(anyhow::Error::msg)?;
    if hmac_key.is_none() {
        tracing::warn!(
            "audit.hmac_key is not set: the audit chain is kept but not anchored (a rewrite of the whole \
             store would go unnoticed); make a key with `holdfast-hub audit keygen`"
        );
    }
    // What only the leader runs: the coordinator's writer and its observers, the applier, the
    // probe, pruning, the backlog history and the audit checkpoints.
    let leader_tasks: crate::lead::LeaderTasks = {
        let (shared, coord, probe_odoo) = (shared.clone(), coord.clone(), cfg.odoo.clone());
        let (canary_every, checkpoint_every) = (cfg.reopening.canary_every, cfg.audit.checkpoint_every);
        Box::new(move |tasks, persist, rx| {
            tasks.spawn(crate::reopening::write(shared.clone(), coord.clone(), wiring, persist, rx.clone()));
            tasks.spawn(crate::reopening::observe(shared.clone(), coord.clone(), rx.clone()));
            tasks.spawn(crate::reopening::canary(coord, canary, canary_permits, canary_every, rx.clone()));
            tasks.spawn(delivery::run(shared.clone(), odoo, applier_cfg, mode, rx.clone()));
            tasks.spawn(prune(shared.clone(), retention, rx.clone()));
            tasks.spawn(sample_history(shared.clone(), rx.clone()));
            tasks.spawn(crate::probe::run(shared.clone(), probe_odoo, probe_client, rx.clone()));
            if let Some(key) = hmac_key {
                tasks.spawn(checkpoints(shared, key, checkpoint_every, rx));
            }
        })
    };
    let name = cfg.cluster.name.clone().unwrap_or_else(host_name);
    let scheme = if cfg.api.cert.is_some() { "https" } else { "http" };
    let address =
        cfg.cluster.advertise.as_ref().map_or_else(|| format!("{scheme}://{api_addr}"), |a| a.replace("{name}", &name));
    let me = crate::lead::Candidate {
        holder: if replicated { format!("{name}/{}", &uuid::Uuid::new_v4().simple().to_string()[..8]) } else { name },
        address,
        ttl: cfg.cluster.lease,
        replicated,
    };
    // A follower forwards API requests to the leader; a hub on SQLite has no other replica.
    let forwarder = if replicated { Some(api::Forwarder::new(cfg.cluster.ca.as_deref(), &me.address)?) } else { None };
    tasks.spawn(crate::lead::run(shared.clone(), coord, me, persist, leader_tasks, rx.clone()));
    if let Some(every) = sd_notify::watchdog_enabled() {
        tasks.spawn(watchdog(shared.clone(), every, rx.clone()));
    }
    let mut api_shutdown = rx;
    let mut app = api::router(shared, crate::tokens::Tokens::new(&cfg.tokens_path()), Some(cfg.odoo.clone()))
        .layer(axum::Extension(api::TrustedProxies(cfg.api.trusted_proxies.clone())));
    if let Some(forwarder) = forwarder {
        app = app.layer(axum::Extension(forwarder));
    }
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let stopped = async move {
        let _ = api_shutdown.changed().await;
    };
    match (&cfg.api.cert, &cfg.api.key) {
        (Some(cert), Some(key)) => {
            let config = Arc::new(std::sync::RwLock::new(crate::tls_api::server_config(cert, key)?));
            live.api_tls = Some(config.clone());
            let tls = crate::tls_api::TlsListener::new(listener, config)?;
            let listener = axum::serve::ListenerExt::tap_io(tls, |_| {});
            tasks.spawn(async move {
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                    tracing::error!(error = %e, "the API server failed");
                }
            });
        }
        _ => {
            // Answers go out at once: with Nagle's algorithm a response split in two writes
            // waits for the client's delayed ACK (about 40 ms) before its second part.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tasks.spawn(async move {
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                    tracing::error!(error = %e, "the API server failed");
                }
            });
        }
    }
    Ok(RunningHub { sync_addr, api_addr, live, shutdown, tasks })
}

/// The host's name, for the lease when `cluster.name` is not set.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hub".into())
}

/// Signs the audit chain's head every `every` when it moved, and once more at shutdown; each
/// checkpoint is stored and its head written to the log (outside the store).
async fn checkpoints<S: crate::store::Store>(
    shared: Arc<Shared<S>>,
    key: Vec<u8>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut signed = match shared.store.checkpoints().await {
        Ok(c) => c.last().map_or(0, |c| {
            crate::metrics::audit_signed(c.head_seq, c.at_ms);
            c.head_seq
        }),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the audit checkpoints; none will be made");
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        match shared.store.audit_head().await {
            Ok(Some((head_seq, head_hash))) if head_seq > signed => {
                let c = crate::audit::sign_checkpoint(&key, head_seq, head_hash, crate::shared::now_ms());
                match shared.store.add_checkpoint(c.clone()).await {
                    Ok(()) => {
                        signed = head_seq;
                        crate::metrics::audit_signed(head_seq, c.at_ms);
                        tracing::info!(
                            head_seq,
                            head_hash = %hex::encode(head_hash),
                            mac = %hex::encode(c.mac),
                            at_ms = c.at_ms,
                            "audit checkpoint"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "storing an audit checkpoint failed; the next one retries"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the audit head failed; the next checkpoint retries"),
        }
        if last {
            return;
        }
    }
}

/// systemd's watchdog (`WatchdogSec=`): pings at half the interval, only while the store
/// completes a write transaction within that half (a store stuck on its disk or its lock stops
/// the pings; systemd restarts the hub, which comes back with its plan paused).
async fn watchdog<S: crate::store::Store>(
    shared: Arc<Shared<S>>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let half = every / 2;
    let mut tick = tokio::time::interval(half);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match tokio::time::timeout(half, shared.store.ping()).await {
            Ok(Ok(())) => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Ok(Err(e)) => tracing::warn!("no watchdog ping: the store failed: {e}"),
            Err(_) => tracing::warn!("no watchdog ping: the store did not answer within {} ms", half.as_millis()),
        }
    }
}

/// Samples every plant's backlog for the dashboard every [`crate::shared::HISTORY_EVERY`].
async fn sample_history<S: crate::store::Store>(shared: Arc<Shared<S>>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(crate::shared::HISTORY_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = shared.sample_history().await {
                    tracing::warn!(error = %e, "sampling the backlogs failed");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// How often applied transactions past the retention are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Rows deleted per store transaction while pruning (short transactions: the ledger keeps taking
/// batches meanwhile).
const PRUNE_CHUNK: usize = 10_000;

/// Prunes the ledger of applied transactions older than `retention`, at start and every
/// [`PRUNE_EVERY`].
async fn prune<S: crate::store::Store>(
    shared: Arc<Shared<S>>,
    retention: Arc<std::sync::Mutex<Duration>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        let retention = *retention.lock().expect("retention lock");
        let before_ms = crate::shared::now_ms() - retention.as_millis() as i64;
        let mut total = 0;
        loop {
            match shared.store.prune_applied(before_ms, PRUNE_CHUNK).await {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!(error = %e, "pruning the ledger failed; the next pass retries");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(rows = total, before_ms, "pruned applied transactions past the retention");
        }
    }
}

/// The sync listener's TLS (client certificates of the hub's authority required) and transport,
/// from the files `sync` names.
pub fn sync_server_config(sync: &crate::config::SyncConfig) -> anyhow::Result<quinn::ServerConfig> {
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&sync.ca).with_context(|| format!("reading {}", sync.ca.display()))? {
            roots.add(cert?)?;
        }
        Arc::new(roots)
    };
    let chain = CertificateDer::pem_file_iter(&sync.cert)
        .with_context(|| format!("reading {}", sync.cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&sync.key).with_context(|| format!("reading {}", sync.key.display()))?;
    let verifier = WebPkiClientVerifier::builder(roots).build()?;
    let mut tls = rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![certs::ALPN.to_vec()];
    // No 0-RTT: early data is replayable and arrives before the client certificate is checked.
    tls.max_early_data_size = 0;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(sync.idle_timeout.try_into()?));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

fn quic_endpoint(cfg: &Config) -> anyhow::Result<quinn::Endpoint> {
    let sync = &cfg.sync;
    let server = sync_server_config(sync)?;

    let socket = socket2::Socket::new(
        socket2::Domain::for_address(sync.listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller buffer still works, with more retransmissions.
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER_BYTES);
    match holdfast_protocol::identity::udp_buffer_note(socket.recv_buffer_size().ok(), UDP_RECV_BUFFER_BYTES) {
        Ok(note) => tracing::info!("{note}"),
        Err(note) => tracing::warn!("{note}"),
    }
    socket.bind(&sync.listen.into()).with_context(|| format!("binding the sync listener on {}", sync.listen))?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    Ok(quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket.into(), runtime)?)
}
