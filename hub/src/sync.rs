//! The QUIC server agents upload to: one connection per plant, identity from the client
//! certificate only, one ordered bidirectional stream running a [`HubSession`].
//!
//! Records are stored durably before the session acknowledges them; each record's body must
//! name the plant of the certificate (I6), or the session ends with an identity error and nothing
//! of the batch is stored. A hello that claims another plant ends the session the same way, and
//! is audited. Revocations (`holdfast-hub certs revoke`, written to the store while the hub
//! runs) are read every [`REVOCATION_POLL`]: a revoked certificate's live connection is closed
//! then, and a new one is refused at once.
//!
//! A session stores in a pipeline: while one store call commits, the batches that arrive are
//! read, verified and staged, and go to the store together in the next call (one SQLite
//! transaction, one fsync). Under load the commits grow on their own, up to
//! [`STAGED_RECORDS_MAX`] records; reading pauses while that many wait. Acks still follow
//! each commit, and anything else that touches the store waits until the staged records are
//! stored, so the store sees the session's work in the order it arrived.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use holdfast_protocol::frame::{self, Decoder};
use holdfast_protocol::session::{HubOutput, HubSession};
use holdfast_protocol::{ErrorCode, ErrorMsg, Message, Record};
use quinn::{RecvStream, SendStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::certs;
use crate::shared::{Connection, Shared, now_ms};
use crate::store::{JournalState, NewRecord, Store, StoreError};

/// Records staged behind a store call that is committing, at most (sixteen full batches, an agent's whole window).
pub const STAGED_RECORDS_MAX: usize = 16 * holdfast_protocol::msg::BATCH_RECORDS_MAX;
/// Bytes read from the stream at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// How often the revocations are read: a revoked plant's live connection closes within this
/// (and the time to close it), well inside the 10 seconds operators are promised.
pub const REVOCATION_POLL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a refusal waits for the peer to receive the error before the connection closes.
const REFUSAL_DELIVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// QUIC application close codes.
pub const CLOSE_DONE: u32 = 0;
pub const CLOSE_IDENTITY: u32 = 1;
pub const CLOSE_REVOKED: u32 = 2;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Accepts agents until `shutdown` flips, then closes every connection and waits for them.
pub async fn serve<S: Store>(endpoint: quinn::Endpoint, shared: Arc<Shared<S>>, mut shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let mut revocations = tokio::time::interval(REVOCATION_POLL);
    revocations.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = revocations.tick() => close_revoked(&shared).await,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let shared = shared.clone();
                connections.spawn(async move {
                    if let Err(e) = handle(incoming, shared).await {
                        info!(error = %e, "agent connection ended");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    endpoint.close(CLOSE_DONE.into(), b"hub shutting down");
    while connections.join_next().await.is_some() {}
    endpoint.wait_idle().await;
}

async fn handle<S: Store>(incoming: quinn::Incoming, shared: Arc<Shared<S>>) -> anyhow::Result<()> {
    let conn = incoming.await?;
    let remote = conn.remote_address().to_string();
    let (plant, cert_issued_at_ms) = match plant_identity(&conn) {
        Ok(p) => p,
        Err(reason) => {
            warn!(%remote, %reason, "refused an agent without a plant identity");
            conn.close(CLOSE_IDENTITY.into(), reason.as_bytes());
            return Ok(());
        }
    };
    if let Some(r) = shared.store.revocations().await?.into_iter().find(|r| r.covers(&plant, cert_issued_at_ms)) {
        let reason = revoked_reason(&r);
        warn!(%plant, %remote, %reason, "refused a revoked certificate");
        conn.close(CLOSE_REVOKED.into(), reason.as_bytes());
        return Ok(());
    }
    let (send, recv) = conn.accept_bi().await?;
    let conn_id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    shared.connections.lock().expect("connections lock").insert(
        plant.clone(),
        Connection {
            journal_id: None,
            since_ms: now_ms(),
            remote: remote.clone(),
            conn_id,
            cert_issued_at_ms,
            handle: conn.clone(),
        },
    );
    info!(%plant, %remote, "agent connected");
    let result = run_session(&plant, conn_id, send, recv, &shared).await;
    {
        let mut map = shared.connections.lock().expect("connections lock");
        if map.get(&plant).is_some_and(|c| c.conn_id == conn_id) {
            map.remove(&plant);
        }
    }
    info!(%plant, "agent disconnected");
    conn.close(CLOSE_DONE.into(), b"session over");
    result
}

/// The plant the verified client certificate names, and when that certificate was issued.
fn plant_identity(conn: &quinn::Connection) -> Result<(String, i64), String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok())
        .ok_or("no client certificate")?;
    let leaf = certs.first().ok_or("empty client certificate chain")?;
    Ok((certs::plant_of(leaf)?, certs::issued_at_ms(leaf)?))
}

fn revoked_reason(r: &crate::store::Revocation) -> String {
    format!(
        "the certificates of plant {} issued before {} ms were revoked by {} ({}); enrol again: holdfast-agent certs request",
        r.plant, r.issued_before_ms, r.actor, r.reason
    )
}

/// Closes every live connection whose certificate a revocation now covers.
async fn close_revoked<S: Store>(shared: &Shared<S>) {
    let revocations = match shared.store.revocations().await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "could not read the revocations; live connections are checked again shortly");
            return;
        }
    };
    let live: Vec<(String, Connection)> =
        shared.connections.lock().expect("connections lock").iter().map(|(p, c)| (p.clone(), c.clone())).collect();
    for (plant, c) in live {
        if let Some(r) = revocations.iter().find(|r| r.covers(&plant, c.cert_issued_at_ms)) {
            let reason = revoked_reason(r);
            warn!(%plant, remote = %c.remote, %reason, "closing a revoked plant's connection");
            c.handle.close(CLOSE_REVOKED.into(), reason.as_bytes());
        }
    }
}

type StoreCall = Pin<Box<dyn Future<Output = Result<JournalState, StoreError>> + Send>>;

/// A session's store pipeline: at most one call committing, and the records staged behind it.
struct Pipeline {
    committing: Option<StoreCall>,
    staged: Vec<NewRecord>,
    journal_id: Option<uuid::Uuid>,
}

impl Pipeline {
    /// Starts a store call with the staged records if none is committing.
    fn start<S: Store>(&mut self, shared: &Shared<S>, plant: &str) {
        let Some(journal_id) = self.journal_id else { return };
        if self.committing.is_some() || self.staged.is_empty() {
            return;
        }
        let (store, plant, records) = (shared.store.clone(), plant.to_owned(), std::mem::take(&mut self.staged));
        self.committing =
            Some(Box::pin(async move { store.store_records(&plant, journal_id, records, now_ms()).await }));
    }

    /// Waits for the committing call, if any, and returns its result.
    async fn finish(&mut self) -> Option<Result<JournalState, StoreError>> {
        let call = self.committing.as_mut()?;
        let result = call.await;
        self.committing = None;
        Some(result)
    }
}

/// What a finished store call means for the session.
fn stored<S: Store>(
    shared: &Shared<S>,
    session: &mut HubSession,
    result: Result<JournalState, StoreError>,
) -> Result<(), String> {
    let state = result.map_err(|e| format!("the hub could not store the batch, nothing of it is acknowledged: {e}"))?;
    shared.stored.notify_one();
    session.handle_stored(state.stored_seq);
    session.handle_applied(state.applied_seq);
    Ok(())
}

/// Stores everything staged and waits for it: before anything else touches the store.
async fn drain<S: Store>(
    shared: &Shared<S>,
    plant: &str,
    pipeline: &mut Pipeline,
    session: &mut HubSession,
) -> Result<(), String> {
    loop {
        if let Some(result) = pipeline.finish().await {
            stored(shared, session, result)?;
        }
        if pipeline.staged.is_empty() {
            return Ok(());
        }
        pipeline.start(shared, plant);
    }
}

async fn run_session<S: Store>(
    plant: &str,
    conn_id: u64,
    mut send: SendStream,
    mut recv: RecvStream,
    shared: &Shared<S>,
) -> anyhow::Result<()> {
    let mut session = HubSession::new();
    let mut decoder = Decoder::new();
    let mut applied = shared.applied.subscribe();
    let mut quarantined = shared.quarantined.subscribe();
    let mut plant_states = shared.plant_states.subscribe();
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut pipeline = Pipeline { committing: None, staged: Vec::new(), journal_id: None };
    loop {
        let committing = pipeline.committing.is_some();
        let room = pipeline.staged.len() < STAGED_RECORDS_MAX;
        tokio::select! {
            Some(result) = pipeline.finish(), if committing => {
                if let Err(message) = stored(shared, &mut session, result) {
                    return refuse(&mut send, ErrorCode::Storage, message).await;
                }
            }
            read = recv.read(&mut buf), if room => {
                let Some(n) = read? else {
                    if decoder.buffered() > 0 {
                        let message = format!("the stream ended inside a frame ({} bytes of it arrived)", decoder.buffered());
                        return refuse(&mut send, ErrorCode::Malformed, message).await;
                    }
                    // What arrived complete is stored: the agent resumes after it.
                    if let Err(message) = drain(shared, plant, &mut pipeline, &mut session).await {
                        warn!(%plant, %message, "storing the last records of a closed stream failed");
                    }
                    return Ok(());
                };
                decoder.push(&buf[..n]);
                loop {
                    match decoder.next_message() {
                        Ok(Some(Message::Hello(hello))) if hello.plant.as_ref().is_some_and(|p| p != plant) => {
                            let claimed = hello.plant.unwrap_or_default();
                            let reason = format!(
                                "the hello claims plant {claimed:?} but this connection's certificate is for plant {plant:?}"
                            );
                            warn!(%plant, %claimed, "refused a hello for another plant");
                            shared
                                .store
                                .append_audit(crate::audit::AuditEntry {
                                    at_ms: now_ms(),
                                    actor: format!("gateway:{plant}"),
                                    action: "hello_refused".into(),
                                    target: claimed.clone(),
                                    reason: reason.clone(),
                                })
                                .await?;
                            return refuse(&mut send, ErrorCode::Identity, reason).await;
                        }
                        Ok(Some(msg)) => session.handle_message(tokio::time::Instant::now().into_std(), msg),
                        Ok(None) => break,
                        Err(e) => return refuse(&mut send, ErrorCode::Malformed, e.to_string()).await,
                    }
                }
            }
            changed = applied.changed() => {
                changed?;
                if let Some(journal_id) = session.journal_id() {
                    let state = shared.store.journal_state(plant, journal_id).await?;
                    session.handle_applied(state.applied_seq);
                }
            }
            changed = quarantined.changed() => {
                changed?;
                if let Some(journal_id) = session.journal_id() {
                    session.handle_notices(notices(shared, plant, journal_id).await?);
                }
            }
            changed = plant_states.changed() => {
                changed?;
                if let Some(journal_id) = session.journal_id() {
                    session.handle_notices(notices(shared, plant, journal_id).await?);
                }
            }
        }
        while let Some(out) = session.poll_output() {
            if !matches!(
                out,
                HubOutput::Send(_) | HubOutput::Store { .. } | HubOutput::Heartbeat(_) | HubOutput::Close(_)
            ) && let Err(message) = drain(shared, plant, &mut pipeline, &mut session).await
            {
                return refuse(&mut send, ErrorCode::Storage, message).await;
            }
            match out {
                HubOutput::Send(msg) => send.write_all(&frame::encode(&msg)?).await?,
                HubOutput::Resume { journal_id, agent_last_seq } => {
                    let state = match shared.store.open_journal(plant, journal_id, now_ms()).await {
                        Ok(state) => state,
                        Err(e) => {
                            return refuse(
                                &mut send,
                                ErrorCode::Storage,
                                format!("the hub cannot open this journal's record: {e}"),
                            )
                            .await;
                        }
                    };
                    info!(%plant, %journal_id, epoch = state.epoch, stored_seq = state.stored_seq, agent_last_seq, "session resumed");
                    if let Some(c) = shared
                        .connections
                        .lock()
                        .expect("connections lock")
                        .get_mut(plant)
                        .filter(|c| c.conn_id == conn_id)
                    {
                        c.journal_id = Some(journal_id);
                    }
                    session.handle_resume(state.stored_seq, state.applied_seq);
                    session.handle_notices(notices(shared, plant, journal_id).await?);
                }
                HubOutput::Store { journal_id, records } => match to_rows(plant, records) {
                    Ok(rows) => {
                        pipeline.journal_id = Some(journal_id);
                        pipeline.staged.extend(rows);
                    }
                    Err(reason) => {
                        warn!(%plant, %journal_id, %reason, "refused a batch");
                        return refuse(&mut send, ErrorCode::Identity, reason).await;
                    }
                },
                HubOutput::GatewayAudit { journal_id, audit } => {
                    match shared.store.append_gateway_audit(plant, journal_id, audit.records, now_ms()).await {
                        Ok(0) => {}
                        Ok(n) => info!(%plant, records = n, "gateway audit records added to the trail"),
                        Err(e) => {
                            warn!(%plant, error = %e, "recording the gateway's audit records failed; they come again")
                        }
                    }
                }
                HubOutput::Heartbeat(beat) => {
                    // For the leader, which may be another replica (a no-op on the embedded store).
                    if let Ok(json) = serde_json::to_string(&*beat)
                        && let Err(e) = shared.store.save_heartbeat(plant, now_ms(), json).await
                    {
                        warn!(%plant, error = %e, "recording the heartbeat for the leader failed");
                    }
                    let manual = beat.manual.clone();
                    let previous =
                        shared.heartbeats.lock().expect("heartbeats lock").insert(plant.to_owned(), (now_ms(), *beat));
                    // The store is asked only when the state differs from the last heartbeat's
                    // (or is the first this hub has seen), not every 5 s per plant.
                    let unchanged = previous.is_some_and(|(_, b)| b.manual == manual);
                    let recorded = if unchanged {
                        Ok(false)
                    } else {
                        shared.store.set_plant_manual(plant, manual.clone(), now_ms()).await
                    };
                    match recorded {
                        Ok(true) if manual.is_none() => {
                            info!(%plant, "plant IT's manual state ended; applying resumes");
                            shared.held.send_modify(|held| {
                                held.remove(plant);
                            });
                        }
                        Ok(true) => {
                            warn!(%plant, "plant IT switched the plant to manual offline; nothing more is applied for it");
                            shared.held.send_modify(|held| {
                                held.insert(plant.to_owned());
                            });
                        }
                        Ok(false) => {}
                        Err(e) => {
                            // Forgotten, so the next heartbeat counts as changed and retries.
                            shared.heartbeats.lock().expect("heartbeats lock").remove(plant);
                            warn!(%plant, error = %e, "recording the plant's manual state failed; the next heartbeat retries")
                        }
                    }
                }
                HubOutput::Skip { journal_id, from, through } => {
                    let state = match shared.store.skip_compacted(plant, journal_id, from, through, now_ms()).await {
                        Ok(state) => state,
                        Err(e) => {
                            return refuse(
                                &mut send,
                                ErrorCode::Storage,
                                format!("the hub could not record the compacted records {from} to {through}: {e}"),
                            )
                            .await;
                        }
                    };
                    warn!(%plant, %journal_id, from, through, "the gateway had compacted records this ledger lacks");
                    shared.raise_alarm(
                        &format!("journal_gap:{plant}"),
                        now_ms(),
                        format!(
                            "plant {plant}: records {from} to {through} of journal {journal_id} were compacted on the gateway after being applied, and this ledger lacks them (a restore from an older backup?); they are in the audit trail; check them in Odoo if in doubt"
                        ),
                    );
                    session.handle_stored(state.stored_seq);
                    session.handle_applied(state.applied_seq);
                }
                HubOutput::Close(e) => {
                    // The session queued its error message just before: let it arrive.
                    send.finish()?;
                    let _ = tokio::time::timeout(REFUSAL_DELIVERY, send.stopped()).await;
                    anyhow::bail!(e);
                }
            }
        }
        pipeline.start(shared, plant);
    }
}

/// How long a parked transaction stays among a plant's notices (its agent shows it `parked`).
const PARKED_NOTICE_MS: i64 = 24 * 3600 * 1000;
/// Most notices sent to a plant at once (the oldest; the hub's API lists them all).
const NOTICES_MAX: usize = 100;

/// The journal's quarantined transactions, as the agent is told them.
async fn notices<S: Store>(
    shared: &Shared<S>,
    plant: &str,
    journal_id: uuid::Uuid,
) -> Result<holdfast_protocol::PlantState, crate::store::StoreError> {
    let rows = shared.store.quarantined(plant, journal_id, NOTICES_MAX, now_ms() - PARKED_NOTICE_MS).await?;
    let reopening = shared
        .coord
        .get()
        .and_then(|c| c.plant_notice(plant))
        .map(|(state, wave, eta_ms)| holdfast_protocol::Reopening { state, wave: wave.map(|w| w as u32), eta_ms });
    Ok(holdfast_protocol::PlantState {
        reopening,
        notices: rows
            .into_iter()
            .map(|(seq, kind, name, message)| holdfast_protocol::Notice {
                seq,
                message: if kind == "parked" {
                    format!("parked by an operator after {name}: {message}; it will not be applied")
                } else {
                    format!("{name}: {message}")
                },
                kind,
            })
            .collect(),
    })
}

/// Ends the session with a typed error the agent can show, then reports it.
async fn refuse(send: &mut SendStream, code: ErrorCode, message: String) -> anyhow::Result<()> {
    let msg = Message::Error(ErrorMsg { code, message: message.clone() });
    send.write_all(&frame::encode(&msg)?).await?;
    send.finish()?;
    // Closing the connection discards what the peer has not received yet: give the error the
    // time to arrive (bounded, so a silent peer cannot hold the session).
    let _ = tokio::time::timeout(REFUSAL_DELIVERY, send.stopped()).await;
    anyhow::bail!("{code:?}: {message}")
}

/// Decodes each verified record into a storage row, refusing any that names another plant.
fn to_rows(plant: &str, records: Vec<Record>) -> Result<Vec<NewRecord>, String> {
    records
        .into_iter()
        .map(|r| {
            let txn = r.verify().map_err(|e| e.to_string())?;
            if txn.plant != plant {
                return Err(format!(
                    "record {} names plant {:?} but this connection's certificate is for plant {plant:?}",
                    r.seq, txn.plant
                ));
            }
            let dedup = crate::store::dedup_of(&txn);
            Ok(NewRecord { seq: r.seq, id: txn.id, dedup, order_key: txn.order_key, body: r.body, crc: r.crc })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_protocol::{OdooCall, Operation, SourceKind, Transaction};

    fn record(plant: &str, seq: u64) -> Record {
        Transaction {
            id: uuid::Uuid::from_u128(seq as u128),
            plant: plant.into(),
            source: SourceKind::Mes,
            device: "d".into(),
            key: None,
            order_key: plant.into(),
            received_at_ms: 0,
            occurred_at_ms: None,
            op: Operation::OdooCall(OdooCall {
                model: "res.users".into(),
                method: "context_get".into(),
                args: serde_json::json!([]),
                kwargs: Default::default(),
            }),
        }
        .to_record(seq)
        .unwrap()
    }

    #[test]
    fn a_batch_naming_another_plant_is_refused_whole() {
        let rows = to_rows("plant-a", vec![record("plant-a", 1), record("plant-a", 2)]).unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            to_rows("plant-a", vec![record("plant-a", 1), record("plant-b", 2)]).unwrap_err(),
            "record 2 names plant \"plant-b\" but this connection's certificate is for plant \"plant-a\""
        );
    }
}
