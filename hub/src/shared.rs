//! State the hub's shells share while running: the store, which plants are connected, the
//! alarms, and the signals between the sync server and the applier. Nothing here is needed for
//! correctness after a restart: what must survive is in the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::store::Store;

/// A plant's live connection.
#[derive(Clone, Debug, Serialize)]
pub struct Connection {
    pub journal_id: Option<Uuid>,
    pub since_ms: i64,
    pub remote: String,
    /// Distinguishes a replaced connection from the one replacing it.
    #[serde(skip)]
    pub conn_id: u64,
    /// When the connection's certificate was issued (what a revocation compares).
    #[serde(skip)]
    pub cert_issued_at_ms: i64,
    /// To close it when its certificate is revoked.
    #[serde(skip)]
    pub handle: quinn::Connection,
}

/// A condition an operator must see: on the API and in status, never only in a log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alarm {
    pub name: String,
    pub since_ms: i64,
    pub message: String,
}

#[derive(Debug)]
pub struct Shared<S> {
    pub store: S,
    pub connections: Mutex<HashMap<String, Connection>>,
    pub alarms: Mutex<BTreeMap<String, Alarm>>,
    /// Signalled when new records are stored, so the applier loads them.
    pub stored: Notify,
    /// Bumped when any journal's `applied_seq` moves, so sessions send fresh watermarks.
    pub applied: watch::Sender<u64>,
    /// Bumped when transactions are quarantined, so sessions send fresh notices (a separate
    /// signal: the notices are a query, and `applied` moves many times a second).
    pub quarantined: watch::Sender<u64>,
    /// Bumped when an operator retries or parks quarantined transactions, so the applier loads
    /// the keys they held back.
    pub released: watch::Sender<u64>,
    /// Odoo as the hub's own probe last saw it.
    pub odoo: Mutex<crate::probe::OdooView>,
    /// Each plant's last heartbeat, with when it arrived.
    pub heartbeats: Mutex<HashMap<String, (i64, holdfast_protocol::Heartbeat)>>,
    /// Plants in plant IT's manual state: the applier sends nothing more for them. Set from the
    /// store at start and from heartbeats after.
    pub held: watch::Sender<std::collections::BTreeSet<String>>,
    /// Whether this replica leads, and under which epoch.
    pub leadership: std::sync::Arc<Leadership>,
    /// The coordinator (set once at start).
    pub coord: std::sync::OnceLock<std::sync::Arc<crate::reopening::Coord>>,
    /// Bumped when the coordinator changes a plant's state, so sessions tell their agents.
    pub plant_states: watch::Sender<u64>,
    /// The active Odoo endpoint and its fencing epoch (the config's `odoo.url` at epoch 0 until
    /// a failover).
    pub odoo_url: watch::Sender<(String, u64)>,
    /// Each plant's backlog and applied sequence over the last hour ([`HISTORY_EVERY`] apart),
    /// for the dashboard's charts and the applied rate.
    pub history: Mutex<HashMap<String, std::collections::VecDeque<crate::api::HistorySample>>>,
}

/// This replica's part in the lease to lead ([`crate::lead`]), read by every Odoo client.
#[derive(Debug, Default)]
pub struct Leadership {
    /// The lease's epoch while this replica leads, 0 while it follows.
    epoch: std::sync::atomic::AtomicU64,
    /// Set for good once a lease could not be renewed in time: no call to Odoo starts after.
    fenced: std::sync::atomic::AtomicBool,
}

impl Leadership {
    pub fn lead(&self, epoch: u64) {
        self.epoch.store(epoch, std::sync::atomic::Ordering::SeqCst);
    }

    /// The epoch this replica leads under (0: it does not).
    pub fn epoch(&self) -> u64 {
        if self.fenced() { 0 } else { self.epoch.load(std::sync::atomic::Ordering::SeqCst) }
    }

    pub fn fence(&self) {
        self.fenced.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// How often each plant's backlog is sampled, and how many samples are kept (an hour).
pub const HISTORY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
pub const HISTORY_KEPT: usize = 360;

impl<S: Store> Shared<S> {
    pub fn new(store: S) -> Self {
        Self {
            store,
            connections: Mutex::new(HashMap::new()),
            alarms: Mutex::new(BTreeMap::new()),
            stored: Notify::new(),
            applied: watch::Sender::new(0),
            quarantined: watch::Sender::new(0),
            released: watch::Sender::new(0),
            odoo: Mutex::new(crate::probe::OdooView { verdict: "unknown".into(), ..Default::default() }),
            heartbeats: Mutex::new(HashMap::new()),
            held: watch::Sender::new(std::collections::BTreeSet::new()),
            leadership: std::sync::Arc::new(Leadership::default()),
            coord: std::sync::OnceLock::new(),
            plant_states: watch::Sender::new(0),
            odoo_url: watch::Sender::new((String::new(), 0)),
            history: Mutex::new(HashMap::new()),
        }
    }

    pub fn raise_alarm(&self, name: &str, now_ms: i64, message: String) {
        let mut alarms = self.alarms.lock().expect("alarms lock");
        alarms.entry(name.to_owned()).or_insert(Alarm { name: name.to_owned(), since_ms: now_ms, message });
    }

    pub fn clear_alarm(&self, name: &str) {
        self.alarms.lock().expect("alarms lock").remove(name);
    }

    /// A plant's backlog history, oldest first.
    pub fn history(&self, plant: &str) -> Vec<crate::api::HistorySample> {
        self.history.lock().expect("history lock").get(plant).map(|h| h.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every plant's backlog history, oldest first each.
    pub fn histories(&self) -> std::collections::BTreeMap<String, Vec<crate::api::HistorySample>> {
        let history = self.history.lock().expect("history lock");
        history.iter().map(|(plant, h)| (plant.clone(), h.iter().cloned().collect())).collect()
    }

    /// Samples every plant's backlog and applied sequence once.
    pub async fn sample_history(&self) -> Result<(), crate::store::StoreError> {
        let rows = self.store.plants().await?;
        let backlogs: HashMap<String, u64> =
            self.store.pending_by_plant().await?.into_iter().map(|b| (b.plant, b.pending)).collect();
        let at_ms = now_ms();
        let mut history = self.history.lock().expect("history lock");
        for r in rows {
            let samples = history.entry(r.plant.clone()).or_default();
            let backlog = backlogs.get(&r.plant).copied().unwrap_or(0);
            samples.push_back(crate::api::HistorySample { at_ms, backlog, applied_seq: r.state.applied_seq });
            while samples.len() > HISTORY_KEPT {
                samples.pop_front();
            }
        }
        Ok(())
    }

    pub fn alarms(&self) -> Vec<Alarm> {
        self.alarms.lock().expect("alarms lock").values().cloned().collect()
    }
}

/// Milliseconds since the Unix epoch, from the system clock (shells only).
#[allow(clippy::disallowed_methods)] // The hub's one wall-clock read.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
