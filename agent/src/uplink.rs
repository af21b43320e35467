//! The uplink: a QUIC client (mutual TLS, ALPN `holdfast/1`, no 0-RTT) that runs an
//! [`AgentSession`] against the hub over one ordered stream, and reconnects with full-jitter
//! backoff whenever the session ends.
//!
//! The hub's watermarks are persisted in the journal as they arrive; the journal keeps every
//! row until the hub reports it applied (and its retention passed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use holdfast_protocol::Message;
use holdfast_protocol::frame::{self, Decoder};
use holdfast_protocol::identity::{ALPN, plant_of};
use holdfast_protocol::session::{AgentOutput, AgentSession, AgentSessionConfig};
use quinn::crypto::rustls::QuicClientConfig;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::HubConfig;
use crate::mode::{ManualKind, ManualState};
use crate::run::{Shared, now_ms};

pub const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
/// How long an isolation waits for the hub to receive the heartbeat that announces it.
const ISOLATION_NOTICE: Duration = Duration::from_secs(2);
pub const RECONNECT_MAX: Duration = Duration::from_secs(15);
/// UDP receive buffer asked for (capped by the kernel's `net.core.rmem_max`).
pub const UDP_RECV_BUFFER_BYTES: usize = 4 * 1024 * 1024;
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Builds the client endpoint and its TLS configuration, after checking that the client
/// certificate names this agent's plant (the hub would refuse every record otherwise).
pub fn endpoint(plant: &str, hub: &HubConfig) -> anyhow::Result<quinn::Endpoint> {
    endpoint_with(client_config(plant, hub)?)
}

/// The TLS and transport settings of a connection to the hub, from the files `hub` names; the
/// client certificate must name `plant`. A reload builds them again (a renewed certificate).
pub fn client_config(plant: &str, hub: &HubConfig) -> anyhow::Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&hub.ca).with_context(|| format!("reading {}", hub.ca.display()))? {
        roots.add(cert?)?;
    }
    let chain = CertificateDer::pem_file_iter(&hub.cert)
        .with_context(|| format!("reading {}", hub.cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = chain.first().with_context(|| format!("{}: no certificate in the file", hub.cert.display()))?;
    let named = plant_of(leaf).map_err(|e| anyhow::anyhow!("{}: {e}", hub.cert.display()))?;
    anyhow::ensure!(
        named == plant,
        "{}: the certificate is for plant {named:?}, but this agent is configured for plant {plant:?}",
        hub.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&hub.key).with_context(|| format!("reading {}", hub.key.display()))?;
    let mut tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(hub.idle_timeout / 3));
    transport.max_idle_timeout(Some(hub.idle_timeout.try_into()?));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// A client endpoint whose connections use `client` unless told otherwise.
pub fn endpoint_with(client: quinn::ClientConfig) -> anyhow::Result<quinn::Endpoint> {
    // One dual-stack socket reaches the hub whichever family its name resolves to (quinn maps
    // IPv4 addresses); a host without IPv6 gets an IPv4 socket.
    let dual = || -> std::io::Result<(socket2::Socket, SocketAddr)> {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        s.set_only_v6(false)?;
        Ok((s, "[::]:0".parse().expect("address")))
    };
    let (socket, local) = match dual() {
        Ok(pair) => pair,
        Err(_) => (
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?,
            "0.0.0.0:0".parse()?,
        ),
    };
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER_BYTES);
    match holdfast_protocol::identity::udp_buffer_note(socket.recv_buffer_size().ok(), UDP_RECV_BUFFER_BYTES) {
        Ok(note) => tracing::info!("{note}"),
        Err(note) => tracing::warn!("{note}"),
    }
    socket.bind(&local.into())?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    let mut endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket.into(), runtime)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// How long the uplink driver allows itself to connect (QUIC's handshake gives up well before).
const CONNECT_PROGRESS: Duration = Duration::from_secs(60);

/// Keeps a session with the hub going until `shutdown` flips.
pub async fn run(shared: Arc<Shared>, endpoint: quinn::Endpoint, hub: HubConfig, mut shutdown: watch::Receiver<bool>) {
    let seed = now_ms() as u64 ^ u64::from(std::process::id()).rotate_left(32);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
    let mut manual = shared.manual.subscribe();
    // Which of the hub's addresses to try: the last that worked, else the next after a failure.
    let mut current = 0usize;
    loop {
        // Isolated: no traffic at all until plant IT lifts it.
        while is_isolated(&manual.borrow_and_update()) {
            shared.uplink_progress(Duration::MAX);
            shared.set_link(false, None);
            tokio::select! {
                _ = manual.changed() => {}
                _ = shutdown.changed() => return close(endpoint).await,
            }
        }
        // Connecting takes at most the handshake's timeout; once streaming, each turn of the
        // session's loop renews this.
        shared.uplink_progress(CONNECT_PROGRESS);
        let address = &hub.addresses[current];
        *shared.hub_address.lock().expect("hub address lock") = address.clone();
        let result = tokio::select! {
            r = session(&shared, &endpoint, &hub, current, &mut backoff) => r,
            _ = shutdown.changed() => break,
        };
        let error = result.err().map(|e| format!("{e:#}"));
        if let Some(e) = &error {
            warn!(%address, error = %e, "hub session ended");
        }
        // A session that streamed keeps its address (tried first again); one that never got
        // there hands over to the next address.
        let streamed = shared.link.lock().expect("link lock").connected;
        if !streamed {
            current = (current + 1) % hub.addresses.len();
        }
        shared.set_link(false, error);
        let delay = backoff.next_delay(&mut rng);
        shared.uplink_progress(delay + CONNECT_PROGRESS);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
    }
    close(endpoint).await;
}

/// The upload bandwidth cap: a token bucket (governor) counted in KiB, one second deep. A frame
/// larger than the bucket waits for it piece by piece, so the average holds for any frame.
#[derive(Clone, Debug)]
pub struct UploadCap {
    limiter: Arc<governor::DefaultDirectRateLimiter>,
    burst_kib: u32,
}

impl UploadCap {
    pub fn new(bytes_per_s: u64) -> Self {
        let kib_per_s = (bytes_per_s / 1024).clamp(1, u64::from(u32::MAX)) as u32;
        let rate = std::num::NonZeroU32::new(kib_per_s).expect("at least 1");
        Self {
            limiter: Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(rate))),
            burst_kib: kib_per_s,
        }
    }

    /// Waits until `bytes` may go out.
    pub async fn until_ready(&self, bytes: usize) {
        let mut kib = bytes.div_ceil(1024).max(1) as u64;
        while kib > 0 {
            let n = kib.min(u64::from(self.burst_kib)) as u32;
            // `n` never exceeds the bucket, so this only waits.
            let _ = self.limiter.until_n_ready(std::num::NonZeroU32::new(n).expect("at least 1")).await;
            kib -= u64::from(n);
        }
    }
}

/// Audit records sent to the hub at once, at most (the newest; the hub keeps each once).
const AUDIT_RECORDS_MAX: usize = 1000;

/// The journal's newest audit records, for the hub's trail.
async fn gateway_audit(journal: &crate::journal::Journal) -> anyhow::Result<holdfast_protocol::GatewayAudit> {
    let reader = journal.reader().clone();
    let rows = tokio::task::spawn_blocking(move || reader.audit_for_hub_blocking(AUDIT_RECORDS_MAX)).await??;
    Ok(holdfast_protocol::GatewayAudit {
        records: rows
            .into_iter()
            .map(|(id, r)| holdfast_protocol::GatewayAuditRecord {
                id,
                at_ms: r.at_ms,
                actor: r.actor,
                action: r.action,
                reason: r.reason,
            })
            .collect(),
    })
}

async fn close(endpoint: quinn::Endpoint) {
    endpoint.close(0u32.into(), b"agent shutting down");
    endpoint.wait_idle().await;
}

fn is_isolated(manual: &Option<ManualState>) -> bool {
    manual.as_ref().is_some_and(|m| m.kind == ManualKind::Isolated)
}

fn is_manual_offline(manual: &Option<ManualState>) -> bool {
    manual.as_ref().is_some_and(|m| m.kind == ManualKind::Offline)
}

async fn session(
    shared: &Shared,
    endpoint: &quinn::Endpoint,
    hub: &HubConfig,
    index: usize,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let address = hub.resolve(index).await.map_err(anyhow::Error::msg)?;
    // The certificate of the last reload (the endpoint's default is the one it started with).
    let client = shared.client.lock().expect("client lock").clone();
    let conn = endpoint.connect_with(client, address, &hub.server_name)?.await.context("connecting to the hub")?;
    let result = stream(shared, &conn, backoff).await;
    conn.close(0u32.into(), b"session over");
    result
}

async fn stream(shared: &Shared, conn: &quinn::Connection, backoff: &mut Backoff) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let journal = &shared.journal;
    let state = journal.reader().state().await?;
    let mut last_seq = journal.last_seq();
    let mut session = AgentSession::new(
        AgentSessionConfig { plant: Some(shared.plant.clone()), ..AgentSessionConfig::default() },
        Instant::now().into_std(),
        state.journal_id,
        state.last_seq,
        env!("CARGO_PKG_VERSION"),
    );
    // Records up to the journal's applied watermark may have been compacted away.
    session.handle_journal_applied(state.applied_seq);
    session.handle_journal(*last_seq.borrow_and_update());
    let mut manual = shared.manual.subscribe();
    session.set_paused(is_manual_offline(&manual.borrow_and_update()));
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut announced = false;
    let mut gauges = crate::heartbeat::Gauges::default();
    let mut beat = tokio::time::interval(crate::heartbeat::HEARTBEAT_EVERY);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The heartbeat tick wakes this loop at least every HEARTBEAT_EVERY.
        shared.uplink_progress(crate::heartbeat::HEARTBEAT_EVERY * 3);
        while let Some(out) = session.poll_output() {
            match out {
                AgentOutput::Send(msg) => {
                    let bytes = frame::encode(&msg)?;
                    if let Message::Batch(_) = &msg {
                        // The cap in force (a reload may replace it); the lock is not held across the wait.
                        let cap = shared.upload_cap.lock().expect("upload cap lock").clone();
                        if let Some(cap) = cap {
                            cap.until_ready(bytes.len()).await;
                        }
                    }
                    send.write_all(&bytes).await?;
                }
                AgentOutput::Read { after_seq, max } => {
                    let records = journal.reader().read(after_seq, max).await?;
                    session.handle_records(Instant::now().into_std(), records);
                }
                AgentOutput::Watermarks(ack) => journal.set_watermarks(ack).await?,
                AgentOutput::PlantState(state) => {
                    *shared.notices.lock().expect("notices lock") =
                        state.notices.into_iter().map(|n| (n.seq, n)).collect();
                    if let Some(r) = state.reopening {
                        shared.set_reopening(r);
                    }
                }
                AgentOutput::Close(e) => {
                    let _ = send.finish();
                    return Err(e.into());
                }
            }
        }
        if session.is_streaming() && !announced {
            announced = true;
            backoff.reset();
            shared.set_link(true, None);
            info!(address = %conn.remote_address(), "hub session streaming");
            let m = manual.borrow().clone();
            session.heartbeat(crate::heartbeat::heartbeat(shared, &mut gauges, m.as_ref()));
            session.audit(gateway_audit(journal).await?);
            continue;
        }
        let wake = session.poll_timeout().map(Instant::from_std);
        tokio::select! {
            read = recv.read(&mut buf) => {
                let n = read?.context("the hub closed the stream")?;
                decoder.push(&buf[..n]);
                while let Some(msg) = decoder.next_message()? {
                    session.handle_message(Instant::now().into_std(), msg);
                }
            }
            changed = last_seq.changed() => {
                changed?;
                session.handle_journal(*last_seq.borrow_and_update());
            }
            _ = beat.tick() => {
                let m = manual.borrow().clone();
                session.heartbeat(crate::heartbeat::heartbeat(shared, &mut gauges, m.as_ref()));
            }
            changed = manual.changed() => {
                changed?;
                let m = manual.borrow_and_update().clone();
                // The hub hears of it at once: it stops (or resumes) applying for the plant, and
                // the change joins its audit trail.
                session.heartbeat(crate::heartbeat::heartbeat(shared, &mut gauges, m.as_ref()));
                session.audit(gateway_audit(journal).await?);
                if is_isolated(&m) {
                    info!("isolated by plant IT: telling the hub, then closing the link");
                    while let Some(out) = session.poll_output() {
                        if let AgentOutput::Send(msg) = out {
                            send.write_all(&frame::encode(&msg)?).await?;
                        }
                    }
                    let _ = send.finish();
                    let _ = tokio::time::timeout(ISOLATION_NOTICE, send.stopped()).await;
                    return Ok(());
                }
                session.set_paused(is_manual_offline(&m));
            }
            _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {
                session.handle_timeout(Instant::now().into_std());
            }
        }
    }
}
