//! MQTT ingest from the plant's broker (rumqttc), QoS 1 with a persistent session.
//!
//! Two tasks: the *poller* drives rumqttc's event loop and hands each publish, tagged with the
//! connection it arrived on, to the *committer* through a bounded channel; the committer journals
//! a group of publishes in one request and only then acknowledges them to the broker. The poller
//! never awaits an acknowledgement (that deadlocks rumqttc), and neither does the committer: the
//! poller waits on the committer when the channel is full, so a committer waiting on rumqttc's
//! request queue (which only the poller drains) would close the circle. rumqttc drains one
//! request per turn of its event loop but reads incoming publishes in batches, so under a flood
//! the acknowledgements owed can outgrow any fixed queue: those that do not fit are kept in
//! [`Owed`] and queued as room appears.
//!
//! An acknowledgement goes out only for a publish received on the current connection: after a
//! reconnect the broker redelivers what was not acknowledged, and a stale PUBACK (its packet id
//! now means another message) must never go out. A payload that cannot be a transaction is kept
//! in the journal's `rejected` table, then acknowledged so it is not redelivered forever. When the
//! journal is full nothing is acknowledged: the committer retries the same publishes until they
//! fit, and the broker holds the rest.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::MqttConfig;
use crate::journal::{Entry, Rejected};
use crate::producer;
use crate::run::{Shared, now_ms};

/// Largest MQTT packet accepted or sent (rumqttc's default is 10 KiB).
pub const PACKET_BYTES_MAX: usize = 1024 * 1024;
/// Publishes handed from the poller to the committer and not yet journaled, at most.
pub const PENDING_PUBLISHES_MAX: usize = 1024;
/// Publishes journaled in one request, at most.
pub const GROUP_PUBLISHES_MAX: usize = 256;
/// rumqttc's request queue (acknowledgements and the subscription); what does not fit waits in
/// [`Owed`].
const REQUEST_QUEUE: usize = 4 * (PENDING_PUBLISHES_MAX + GROUP_PUBLISHES_MAX);
/// How soon the committer retries acknowledgements that found rumqttc's queue full.
const OWED_RETRY: Duration = Duration::from_millis(2);
/// Wait before retrying publishes the journal could not take.
const JOURNAL_RETRY: Duration = Duration::from_millis(500);
const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(15);

/// The MQTT link as status shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MqttState {
    pub broker: String,
    pub connected: bool,
    /// The broker holds this agent's subscription: a persistent session was resumed, or the
    /// broker acknowledged the subscription. Publishes made before the first subscription of a
    /// new session reach nobody (MQTT keeps messages only for existing subscriptions).
    pub subscribed: bool,
    pub last_error: Option<String>,
    /// Publishes journaled since the agent started, redeliveries included (the journal absorbs
    /// those of keyed transactions by id).
    pub journaled: u64,
}

/// Runs MQTT ingest until `shutdown` flips.
pub async fn run(shared: Arc<Shared>, cfg: MqttConfig, password: Option<String>, mut shutdown: watch::Receiver<bool>) {
    let (host, port) =
        cfg.broker.rsplit_once(':').map(|(h, p)| (h.to_owned(), p.parse().unwrap_or(1883))).unwrap_or_default();
    let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(cfg.keep_alive)
        .set_max_packet_size(PACKET_BYTES_MAX, PACKET_BYTES_MAX);
    if let (Some(user), Some(password)) = (&cfg.username, password) {
        opts.set_credentials(user.clone(), password);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_QUEUE);
    let generation = Arc::new(Mutex::new(0u64));
    let (tx, rx) = mpsc::channel(PENDING_PUBLISHES_MAX);
    let committer = tokio::spawn(commit(shared.clone(), client.clone(), generation.clone(), rx, shutdown.clone()));

    let seed = now_ms() as u64 ^ 0x6d71_7474;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = shutdown.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let g = next_connection(&generation, || {});
                backoff.reset();
                info!(broker = %cfg.broker, session_present = ack.session_present, connection = g, "MQTT connected");
                if !ack.session_present {
                    let filters = cfg.topics.iter().map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        warn!(error = %e, "could not queue the MQTT subscription");
                    }
                }
                shared.set_mqtt(|m| {
                    m.connected = true;
                    m.subscribed = ack.session_present;
                    m.last_error = None;
                });
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // Waiting here is back-pressure: the broker keeps what the journal has not taken.
                let g = *generation.lock().expect("generation lock");
                if tx.send((g, publish)).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if refused {
                    warn!(broker = %cfg.broker, "the broker refused a topic filter of the subscription (check its ACL)");
                }
                shared.set_mqtt(|m| m.subscribed = !refused);
            }
            Ok(_) => {}
            Err(e) => {
                // rumqttc dropped the acknowledgements queued for the lost connection, but one
                // may have been queued after that: move to a new generation and sweep again,
                // under the lock the committer holds while it queues (`Owed::flush`).
                next_connection(&generation, || eventloop.clean());
                warn!(broker = %cfg.broker, error = %e, "MQTT connection failed");
                shared.set_mqtt(|m| {
                    m.connected = false;
                    m.subscribed = false;
                    m.last_error = Some(e.to_string());
                });
                let delay = backoff.next_delay(&mut rng);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }
    drop(tx);
    let _ = committer.await;
    let _ = client.try_disconnect();
}

/// Journals publishes, then acknowledges those received on the current connection.
async fn commit(
    shared: Arc<Shared>,
    client: AsyncClient,
    generation: Arc<Mutex<u64>>,
    mut rx: mpsc::Receiver<(u64, Publish)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut owed = Owed::default();
    loop {
        let first = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => p,
                None => break,
            },
            _ = tokio::time::sleep(OWED_RETRY), if !owed.is_empty() => {
                owed.flush(&client, &generation);
                continue;
            }
        };
        let mut group = vec![first];
        while group.len() < GROUP_PUBLISHES_MAX {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let at_ms = now_ms();
        let mut entries = Vec::new();
        let mut rejected = Vec::new();
        for (_, p) in &group {
            let parsed = producer::parse_mqtt(&p.topic, &p.payload, &shared.plant, at_ms).and_then(|t| {
                t.encode_body()
                    .map(|b| Entry::of(&t, b))
                    .map_err(|e| producer::FieldError { field: String::new(), message: e.to_string() })
            });
            match parsed {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    warn!(topic = %p.topic, reason = %e, "rejected an MQTT payload");
                    rejected.push(Rejected {
                        at_ms,
                        ingest: "mqtt".into(),
                        topic: p.topic.clone(),
                        reason: e.to_string(),
                        payload: p.payload.to_vec(),
                    });
                }
            }
        }
        let journaled = entries.len() as u64;
        // Nothing is acknowledged until it is committed; a full or failing journal is retried.
        loop {
            let result = async {
                if !entries.is_empty() {
                    let appended = shared.journal.append(entries.clone()).await?;
                    shared.count_ingested("mqtt", &appended);
                }
                if !rejected.is_empty() {
                    shared.journal.reject(rejected.clone()).await?;
                }
                Ok::<_, crate::journal::JournalError>(())
            }
            .await;
            match result {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, publishes = group.len(), "MQTT publishes not journaled yet; not acknowledged");
                    tokio::select! {
                        _ = tokio::time::sleep(JOURNAL_RETRY) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
        shared.set_mqtt(|m| m.journaled += journaled);
        owed.extend(group.iter().map(|(g, p)| (*g, p.pkid)));
        owed.flush(&client, &generation);
    }
}

/// Starts a new connection generation (acknowledgements owed for earlier ones are stale) and
/// runs `sweep` before the committer can queue again.
fn next_connection(generation: &Mutex<u64>, sweep: impl FnOnce()) -> u64 {
    let mut g = generation.lock().expect("generation lock");
    *g += 1;
    sweep();
    *g
}

/// Acknowledgements owed to the broker for journaled publishes, by connection and packet id,
/// oldest first. Queued into rumqttc without ever waiting; those of an earlier connection are
/// dropped (the broker redelivers their publishes, which the journal absorbs by id).
#[derive(Debug, Default)]
pub struct Owed {
    acks: std::collections::VecDeque<(u64, u16)>,
}

impl Owed {
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    pub fn len(&self) -> usize {
        self.acks.len()
    }

    pub fn extend(&mut self, acks: impl IntoIterator<Item = (u64, u16)>) {
        self.acks.extend(acks);
    }

    /// Queues what fits into rumqttc's request queue, for the current connection only. The
    /// generation stays locked meanwhile: the poller moves to a new generation, and sweeps the
    /// queue, only between two flushes (see `run`).
    pub fn flush(&mut self, client: &AsyncClient, generation: &Mutex<u64>) {
        let held = generation.lock().expect("generation lock");
        let current = *held;
        while let Some(&(g, pkid)) = self.acks.front() {
            if g == current {
                let mut publish = Publish::new("", QoS::AtLeastOnce, Vec::new());
                publish.pkid = pkid;
                match client.try_ack(&publish) {
                    Ok(()) => {}
                    Err(rumqttc::ClientError::TryRequest(_)) => return,
                    Err(e) => warn!(error = %e, "could not queue an MQTT acknowledgement"),
                }
            }
            self.acks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_acknowledgements_wait_for_room_and_never_outlive_their_connection() {
        // A request queue of three that nobody drains: flush must return, never wait.
        let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 3);
        let generation = Mutex::new(1);
        let mut owed = Owed::default();
        owed.extend([(1, 10), (1, 11), (1, 12), (1, 13), (1, 14)]);
        owed.flush(&client, &generation);
        assert_eq!(owed.len(), 2, "three fit, two wait for room");
        owed.flush(&client, &generation);
        assert_eq!(owed.len(), 2, "still no room");

        // The connection fails: the poller moves to generation 2 and sweeps the queue, which
        // drops the acknowledgements already queued; the two owed from connection 1 are stale.
        next_connection(&generation, || eventloop.clean());
        owed.extend([(2, 10)]);
        owed.flush(&client, &generation);
        assert!(owed.is_empty());
        owed.extend([(2, 20), (2, 21), (2, 22)]);
        owed.flush(&client, &generation);
        assert_eq!(
            owed.len(),
            1,
            "one place was taken by connection 2's first acknowledgement, none by connection 1's"
        );
    }
}
