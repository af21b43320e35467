//! The reopening, simulated: the shipped `Coordinator` and `Applier` on virtual time against a
//! model of Odoo (the only thing modelled): 8 workers, 4 ms per call plus 1 ms per operation, a
//! FIFO queue beyond the workers, a serialization failure whose chance rises with the writers
//! of one record in service together, `limit_time_real` of 120 s, people using Odoo beside the
//! hub, and a canary read at a fixed cadence. 50 plants come back from an outage with
//! heavy-tailed backlogs; the phased plan and a naive "release everyone at once" run on the same
//! seed. Each run checks every transaction applied exactly once, in order per ordering key.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use holdfast_hub::applier::{
    Applier, ApplierConfig, ApplierEvent, Call, CallFailure, CallOutcome, ItemOutcome, OdooError,
};
use holdfast_hub::coordinator::drain::DrainConfig;
use holdfast_hub::coordinator::gates::{Ended, GateConfig};
use holdfast_hub::coordinator::{Action, Coordinator, CoordinatorConfig, PlantSpec, PlantState};
use holdfast_hub::policy::{PlantPolicy, Policies};
use holdfast_protocol::{OdooCall, Operation, Record, SourceKind, Transaction};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

const PLANTS: usize = 50;
const WORKERS: usize = 8;
const CALL_MS: f64 = 4.0;
const OP_MS: f64 = 1.0;
const LIMIT_TIME_REAL_MS: f64 = 120_000.0;
/// The hub's own timeout on a call (`odoo.timeout`): Odoo may still run it afterwards.
const CLIENT_TIMEOUT_MS: f64 = 30_000.0;
/// The chance one other writer of a record in service makes a call fail to serialize.
const SERIALIZATION_RATE: f64 = 0.3;
const CANARY_EVERY_MS: f64 = 250.0;
/// People's requests per second, and the operations in each (mean).
const USERS_PER_S: f64 = 60.0;
const USER_OPS_MEAN: f64 = 6.0;
const BATCH_MAX: usize = 50;
const SOAK_MS: i64 = 3_000;
/// Backlogs: Pareto from this many transactions, at most that many.
const BACKLOG_MIN: f64 = 100.0;
const BACKLOG_MAX: f64 = 12_000.0;
const OUTAGE_AT_MS: f64 = 30_000.0;
const RECOVERY_AT_MS: f64 = 60_000.0;
/// The probe's hysteresis: how long after a change its verdict follows.
const PROBE_LAG_MS: f64 = 3_000.0;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Phased,
    Naive,
}

/// What one run measured.
#[derive(Clone, Debug)]
struct Report {
    /// From the operator's start (phased) or the release (naive) to the last backlog applied.
    drain_ms: f64,
    ideal_ms: f64,
    canary_p95_ms: f64,
    baseline_p95_ms: f64,
    errors: usize,
    timeouts: usize,
    waves: usize,
    paused: Vec<String>,
}

#[derive(Clone, Debug)]
enum ReqKind {
    Hub { call: Call, sent_ms: f64, records: Vec<String> },
    Canary { sent_ms: f64 },
    User { records: Vec<String> },
}

#[derive(Clone, Debug)]
struct Req {
    kind: ReqKind,
    ops: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A request finishes in a worker.
    Finish(u64),
    /// The hub gives up waiting for a call.
    ClientTimeout(u64),
    Canary,
    User,
    Outage,
    Recovery,
    ProbeDown,
    ProbeUp,
    Start,
    Tick,
}

/// Virtual time in microseconds, so ordering is exact.
type Micros = u64;

struct Odoo {
    down: bool,
    busy: usize,
    queue: VecDeque<u64>,
    reqs: HashMap<u64, Req>,
    /// Writers of each record now in service.
    writers: HashMap<String, usize>,
    /// Serialization chance fixed when a request starts: other writers of its records then.
    chance: HashMap<u64, f64>,
    started: HashMap<u64, f64>,
}

struct Sim {
    mode: Mode,
    rng: SmallRng,
    now: Micros,
    seq: u64,
    events: BinaryHeap<Reverse<(Micros, u64, Ev)>>,
    odoo: Odoo,
    next_req: u64,
    applier: Applier,
    coord: Coordinator,
    base: Instant,
    /// Per plant, its ledger rows in order, and which are applied.
    rows: BTreeMap<String, Vec<(u64, Record, String)>>,
    applied_rows: HashMap<u64, u32>,
    cursor: BTreeMap<String, usize>,
    held: HashSet<String>,
    pending: BTreeMap<String, u64>,
    /// Order of applies per (plant, key): the lsns as applied.
    applied_order: HashMap<(String, String), Vec<u64>>,
    key_of: HashMap<u64, (String, String)>,
    /// Calls whose client timed out: Odoo's later answer is ignored.
    abandoned: HashSet<u64>,
    call_req: HashMap<u64, u64>,
    /// Ids Odoo committed (the inbox's record of applied ids).
    committed: HashSet<Uuid>,
    canary: Vec<(f64, f64)>,
    errors: usize,
    timeouts: usize,
    released_at: Option<f64>,
    last_applied_ms: f64,
    backlog_total: u64,
    initial: Vec<(String, String, usize)>,
    paused: Vec<String>,
    quarantined: Vec<String>,
    /// Ticks already queued, by time.
    ticks: HashSet<Micros>,
}

fn micros(ms: f64) -> Micros {
    (ms * 1000.0).round() as Micros
}

impl Sim {
    fn now_ms(&self) -> f64 {
        self.now as f64 / 1000.0
    }

    fn wall(&self) -> i64 {
        self.now_ms() as i64
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    fn at(&mut self, ms: f64, ev: Ev) {
        self.seq += 1;
        let t = micros(ms).max(self.now);
        self.events.push(Reverse((t, self.seq, ev)));
    }

    fn send(&mut self, kind: ReqKind, ops: usize) -> u64 {
        self.next_req += 1;
        let id = self.next_req;
        self.odoo.reqs.insert(id, Req { kind, ops });
        if self.odoo.busy < WORKERS {
            self.begin(id);
        } else {
            self.odoo.queue.push_back(id);
        }
        id
    }

    fn records_of(req: &Req) -> &[String] {
        match &req.kind {
            ReqKind::Hub { records, .. } | ReqKind::User { records } => records,
            ReqKind::Canary { .. } => &[],
        }
    }

    fn begin(&mut self, id: u64) {
        self.odoo.busy += 1;
        let req = &self.odoo.reqs[&id];
        let mut others = 0;
        for r in Self::records_of(req) {
            let w = self.odoo.writers.entry(r.clone()).or_default();
            others += *w;
            *w += 1;
        }
        let chance = 1.0 - (1.0 - SERIALIZATION_RATE).powi(others as i32);
        self.odoo.chance.insert(id, chance);
        let service = if self.odoo.down { 1.0 } else { CALL_MS + OP_MS * req.ops as f64 };
        let service = service.min(LIMIT_TIME_REAL_MS);
        self.odoo.started.insert(id, self.now_ms());
        let t = self.now_ms() + service;
        self.at(t, Ev::Finish(id));
    }

    fn finish(&mut self, id: u64) {
        self.odoo.busy -= 1;
        let req = self.odoo.reqs.remove(&id).expect("a request in service");
        for r in Self::records_of(&req) {
            let w = self.odoo.writers.get_mut(r).expect("counted at start");
            *w -= 1;
        }
        let chance = self.odoo.chance.remove(&id).unwrap_or(0.0);
        self.odoo.started.remove(&id);
        if let Some(next) = self.odoo.queue.pop_front() {
            self.begin(next);
        }
        let down = self.odoo.down;
        let conflict = !down && self.rng.random::<f64>() < chance;
        let now = self.now_ms();
        match req.kind {
            ReqKind::User { .. } => {}
            ReqKind::Canary { sent_ms } => {
                let latency = now - sent_ms;
                let ended = if down { Ended::Error } else { Ended::Ok };
                if self.released_at.is_some() && !down {
                    self.canary.push((now, latency));
                }
                if self.mode == Mode::Phased || self.released_at.is_none() {
                    self.coord.handle_canary(self.wall(), latency, ended);
                }
            }
            ReqKind::Hub { call, sent_ms, .. } => {
                // What Odoo did: a database down or a conflict commits nothing; otherwise the
                // inbox skips recorded ids and records the new ones.
                let outcome = if down {
                    CallOutcome::Failed(CallFailure::Odoo(OdooError {
                        name: "psycopg2.OperationalError".into(),
                        message: "connection refused".into(),
                    }))
                } else if conflict {
                    CallOutcome::Failed(CallFailure::Odoo(OdooError {
                        name: "psycopg2.errors.SerializationFailure".into(),
                        message: "could not serialize access due to concurrent update".into(),
                    }))
                } else {
                    let items = call
                        .items
                        .iter()
                        .map(|item| {
                            if self.committed.insert(item.id) {
                                ItemOutcome::Applied { result: json!(true) }
                            } else {
                                ItemOutcome::AlreadyApplied { result: json!(true) }
                            }
                        })
                        .collect();
                    CallOutcome::Items(items)
                };
                self.call_req.remove(&call.id);
                if self.abandoned.remove(&call.id) {
                    return;
                }
                let ended = match &outcome {
                    CallOutcome::Items(_) => Ended::Ok,
                    _ => Ended::Error,
                };
                if ended == Ended::Error && self.released_at.is_some() {
                    self.errors += 1;
                }
                let classes: Vec<(String, bool)> = call
                    .items
                    .iter()
                    .map(|i| (format!("{}.{}", i.call.model, i.call.method), ended == Ended::Ok))
                    .collect();
                self.coord.handle_call(self.wall(), now - sent_ms, ended, &classes);
                self.applier.handle_outcome(self.instant(), call.id, outcome);
            }
        }
    }

    fn client_timeout(&mut self, call_id: u64) {
        let Some(req) = self.call_req.get(&call_id).copied() else { return };
        let _ = req;
        self.abandoned.insert(call_id);
        if self.released_at.is_some() {
            self.timeouts += 1;
        }
        self.coord.handle_call(self.wall(), CLIENT_TIMEOUT_MS, Ended::Timeout, &[]);
        let failure = CallFailure::Unknown("no answer within odoo.timeout".into());
        self.applier.handle_outcome(self.instant(), call_id, CallOutcome::Failed(failure));
    }

    /// Everything the hub's shell does after an event: coordinator actions, holds, loads,
    /// calls, outcomes.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(action) = self.coord.poll_action() {
                progressed = true;
                match action {
                    Action::Preflight => self.coord.handle_preflight(self.wall(), Ok("simulated".into())),
                    Action::OpenWave { index, .. } => self.coord.handle_wave_opened(self.wall(), index, Ok(())),
                    Action::Alarm { name, on: true, message } if name == "reopening_paused" => {
                        self.paused.push(format!("{:.1}s {message}", self.now_ms() / 1000.0))
                    }
                    _ => {}
                }
            }
            // Holds follow the coordinator (the naive run releases everyone at once).
            let plants: Vec<String> = self.rows.keys().cloned().collect();
            for plant in &plants {
                let allowed = match self.mode {
                    Mode::Phased => self.coord.applies(plant),
                    Mode::Naive => {
                        self.released_at.is_some()
                            || !self.coord.plant(plant).is_some_and(|p| p.state == PlantState::Held)
                    }
                };
                if allowed && self.held.remove(plant) {
                    self.applier.set_held(plant, false);
                    self.cursor.insert(plant.clone(), 0);
                } else if !allowed && self.held.insert(plant.clone()) {
                    self.applier.set_held(plant, true);
                }
            }
            if self.mode == Mode::Phased {
                self.applier.set_limit(self.coord.limit().unwrap_or(usize::MAX));
            }
            // Loads: every unheld plant's rows not yet handed (the applier skips known ones).
            for plant in &plants {
                if self.held.contains(plant) {
                    continue;
                }
                let rows = &self.rows[plant];
                let cursor = self.cursor.get_mut(plant).expect("every plant has a cursor");
                while *cursor < rows.len() {
                    let (lsn, record, _) = &rows[*cursor];
                    if !self.applied_rows.contains_key(lsn) {
                        self.applier.handle_pending(*lsn, plant, Uuid::nil(), record);
                    }
                    *cursor += 1;
                }
            }
            let now = self.instant();
            while let Some(call) = self.applier.poll_call(now) {
                progressed = true;
                // Each record once: a call writing one record twice is one writer of it.
                let records: Vec<String> = call
                    .items
                    .iter()
                    .flat_map(|i| holdfast_hub::applier::records_of(&i.call))
                    .collect::<std::collections::BTreeSet<String>>()
                    .into_iter()
                    .collect();
                let ops = call.items.len();
                let id = call.id;
                let sent_ms = self.now_ms();
                let req = self.send(ReqKind::Hub { call, sent_ms, records }, ops);
                self.call_req.insert(id, req);
                self.at(sent_ms + CLIENT_TIMEOUT_MS, Ev::ClientTimeout(id));
            }
            self.coord.handle_in_flight(self.applier.in_flight());
            while let Some(event) = self.applier.poll_event() {
                progressed = true;
                match event {
                    ApplierEvent::Applied { lsn, .. } => {
                        *self.applied_rows.entry(lsn).or_default() += 1;
                        let key = self.key_of[&lsn].clone();
                        self.applied_order.entry(key.clone()).or_default().push(lsn);
                        let left = self.pending.get_mut(&key.0).expect("a known plant");
                        *left -= 1;
                        let left = *left;
                        self.backlog_total -= 1;
                        self.last_applied_ms = self.now_ms();
                        self.coord.handle_backlog(self.wall(), &key.0, left);
                    }
                    ApplierEvent::Quarantined { lsn, error } => self.quarantined.push(format!("{lsn}: {error:?}")),
                    ApplierEvent::Halted { reason } => panic!("halted: {reason}"),
                    ApplierEvent::Retrying { .. } => {}
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn step(&mut self, ev: Ev) {
        // People's requests change nothing the hub decides on: only their load counts.
        let people = match ev {
            Ev::User => true,
            Ev::Finish(id) => matches!(self.odoo.reqs.get(&id).map(|r| &r.kind), Some(ReqKind::User { .. })),
            _ => false,
        };
        match ev {
            Ev::Finish(id) => self.finish(id),
            Ev::ClientTimeout(call) => self.client_timeout(call),
            Ev::Canary => {
                let sent_ms = self.now_ms();
                self.send(ReqKind::Canary { sent_ms }, 1);
                self.at(sent_ms + CANARY_EVERY_MS, Ev::Canary);
            }
            Ev::User => {
                let ops = 1 + (self.rng.random::<f64>() * (2.0 * USER_OPS_MEAN - 1.0)) as usize;
                // People write the same shared products the plants do, now and then.
                let records = if self.rng.random::<f64>() < 0.2 {
                    vec![format!("stock.quant#{}", 1000 + self.rng.random_range(0..40))]
                } else {
                    Vec::new()
                };
                self.send(ReqKind::User { records }, ops);
                let gap = -(1.0 - self.rng.random::<f64>()).ln() / USERS_PER_S * 1000.0;
                let t = self.now_ms() + gap;
                self.at(t, Ev::User);
            }
            Ev::Outage => {
                self.odoo.down = true;
                self.load_backlog();
                // The shell reports each plant's pending count from the store.
                let pending: Vec<(String, u64)> = self.pending.iter().map(|(p, n)| (p.clone(), *n)).collect();
                for (plant, n) in pending {
                    self.coord.handle_backlog(self.wall(), &plant, n);
                }
            }
            Ev::Recovery => self.odoo.down = false,
            Ev::ProbeDown => self.coord.handle_probe(self.wall(), false, "database down"),
            Ev::ProbeUp => {
                self.coord.handle_probe(self.wall(), true, "reachable");
                if self.mode == Mode::Naive {
                    self.released_at = Some(self.now_ms());
                }
            }
            Ev::Start => {
                if self.mode == Mode::Phased {
                    self.coord.start(self.wall(), "operator", "Odoo is back").expect("an armed plan starts");
                    self.released_at = Some(self.now_ms());
                }
            }
            Ev::Tick => {}
        }
        if people {
            return;
        }
        let due = self.coord.poll_timeout();
        if due.is_some_and(|t| t <= self.wall()) {
            self.coord.handle_timeout(self.wall());
        }
        self.pump();
        if let Some(t) = self.coord.poll_timeout() {
            self.at_once(t as f64, Ev::Tick);
        }
        if let Some(t) = self.applier.poll_timeout() {
            let ms = t.duration_since(self.base).as_secs_f64() * 1000.0;
            self.at_once(ms, Ev::Tick);
        }
    }

    /// A tick at `ms` unless one is already queued for then.
    fn at_once(&mut self, ms: f64, ev: Ev) {
        let t = micros(ms).max(self.now);
        if !self.ticks.insert(t) {
            return;
        }
        self.at(ms, ev);
    }

    /// What the outage leaves: heavy-tailed backlogs (Pareto, shape 1.2), each plant's over
    /// ordering keys by its size; a tenth of the operations write products shared between
    /// plants.
    fn load_backlog(&mut self) {
        let mut lsn = 1_000_000;
        let plants: Vec<String> = self.rows.keys().cloned().collect();
        for plant in plants {
            let u: f64 = self.rng.random::<f64>().max(1e-9);
            let size = (BACKLOG_MIN / u.powf(1.0 / 1.2)).min(BACKLOG_MAX) as usize;
            // A bigger plant has more lines and stations, so more ordering keys; one key (say,
            // the receiving dock) carries a quarter of the plant's work.
            let keys = (1 + size / 250).min(32);
            let mut per_key = vec![0usize; keys];
            for i in 0..size {
                let k = if self.rng.random::<f64>() < 0.25 { 0 } else { i % keys };
                per_key[k] += 1;
            }
            for (k, n) in per_key.iter().enumerate() {
                self.initial.push((plant.clone(), format!("line-{k}"), *n));
            }
            let mut counts = per_key.clone();
            let mut k = 0;
            while counts.iter().any(|c| *c > 0) {
                k = (k + 1) % keys;
                if counts[k] == 0 {
                    continue;
                }
                counts[k] -= 1;
                lsn += 1;
                let record = if self.rng.random::<f64>() < 0.1 {
                    1000 + self.rng.random_range(0..40)
                } else {
                    self.rng.random_range(0..1000) + 10_000 * (lsn % 97)
                };
                let order_key = format!("line-{k}");
                self.push_row(&plant, lsn, &order_key, record);
            }
            let total = per_key.iter().sum::<usize>() as u64;
            *self.pending.get_mut(&plant).expect("known") += total;
            self.backlog_total += total;
        }
    }

    fn push_row(&mut self, plant: &str, lsn: u64, order_key: &str, record: u64) {
        let txn = Transaction {
            id: Uuid::from_u128(lsn as u128),
            plant: plant.into(),
            source: SourceKind::Mes,
            device: "mes".into(),
            key: None,
            order_key: order_key.into(),
            received_at_ms: 0,
            occurred_at_ms: None,
            op: Operation::OdooCall(OdooCall {
                model: "stock.quant".into(),
                method: "write".into(),
                args: json!([[record], {"inventory_quantity": 1.0}]),
                kwargs: Default::default(),
            }),
        };
        let rec = txn.to_record(lsn).expect("encodes");
        self.key_of.insert(lsn, (plant.to_owned(), order_key.to_owned()));
        self.rows.get_mut(plant).expect("known").push((lsn, rec, order_key.to_owned()));
    }
}

fn plant_name(i: usize) -> String {
    format!("plant-{i:02}")
}

fn run(seed: u64, mode: Mode) -> Report {
    // Virtual time starts at an arbitrary real instant and only moves with the simulation.
    #[allow(clippy::disallowed_methods)]
    let base = Instant::now();
    let mut rng = SmallRng::seed_from_u64(seed);
    let plants: Vec<String> = (0..PLANTS).map(plant_name).collect();
    let policies = Policies::new(
        &plants
            .iter()
            .map(|p| (p.clone(), PlantPolicy { allow: vec!["stock.quant:write".into()], company_id: None }))
            .collect(),
    )
    .expect("valid policies");
    let calls_max = match mode {
        Mode::Phased => 4,
        // Everyone at once: no global limit, every plant's keys draining together.
        Mode::Naive => PLANTS,
    };
    let applier = Applier::new(ApplierConfig {
        calls_max,
        batch_max: BATCH_MAX,
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(5),
        retry_budget: 10,
        queued_max: 1_000_000,
        policies: holdfast_hub::policy::LivePolicies::new(policies),
    });
    let mut applier = applier;
    if mode == Mode::Phased {
        // Rounds as long as the coordinator's drain window, as the hub's shell sets them.
        applier.set_round(Some(Duration::from_secs(1)), base);
    }
    let specs: BTreeMap<String, PlantSpec> = plants
        .iter()
        .map(|p| (p.clone(), PlantSpec { priority: rng.random_range(1..=3), deadline_ms: None }))
        .collect();
    let cfg = CoordinatorConfig {
        gates: GateConfig { window_ms: 10_000, samples_min: 10, ..GateConfig::default() },
        drain: DrainConfig { odoo_workers: WORKERS, window_ms: 1_000, ..DrainConfig::default() },
        soak_ms: SOAK_MS,
        wave_plants_max: 16,
        canary_plant: Some(plant_name(0)),
        plants: specs,
        ..CoordinatorConfig::default()
    };
    let mut sim = Sim {
        mode,
        rng,
        now: 0,
        seq: 0,
        events: BinaryHeap::new(),
        odoo: Odoo {
            down: false,
            busy: 0,
            queue: VecDeque::new(),
            reqs: HashMap::new(),
            writers: HashMap::new(),
            chance: HashMap::new(),
            started: HashMap::new(),
        },
        next_req: 0,
        applier,
        coord: Coordinator::new(cfg),
        base,
        rows: plants.iter().map(|p| (p.clone(), Vec::new())).collect(),
        applied_rows: HashMap::new(),
        cursor: plants.iter().map(|p| (p.clone(), 0)).collect(),
        held: HashSet::new(),
        pending: plants.iter().map(|p| (p.clone(), 0)).collect(),
        applied_order: HashMap::new(),
        key_of: HashMap::new(),
        abandoned: HashSet::new(),
        call_req: HashMap::new(),
        committed: HashSet::new(),
        canary: Vec::new(),
        errors: 0,
        timeouts: 0,
        released_at: None,
        last_applied_ms: 0.0,
        backlog_total: 0,
        initial: Vec::new(),
        paused: Vec::new(),
        quarantined: Vec::new(),
        ticks: HashSet::new(),
    };
    // Before the outage: every plant heard, a trickle of live applies (the baselines).
    for p in &plants {
        sim.coord.handle_heard(0, p);
    }
    let mut lsn = 0;
    for i in 0..600u64 {
        let plant = plant_name((i as usize * 7) % PLANTS);
        lsn += 1;
        sim.push_row(&plant, lsn, "live", 5000 + i);
        *sim.pending.get_mut(&plant).expect("known") += 1;
        sim.backlog_total += 1;
    }
    sim.at(0.0, Ev::Canary);
    sim.at(0.0, Ev::User);
    sim.at(OUTAGE_AT_MS, Ev::Outage);
    sim.at(OUTAGE_AT_MS + PROBE_LAG_MS, Ev::ProbeDown);
    sim.at(RECOVERY_AT_MS, Ev::Recovery);
    sim.at(RECOVERY_AT_MS + PROBE_LAG_MS, Ev::ProbeUp);
    // The operator starts the armed plan a little later.
    sim.at(RECOVERY_AT_MS + PROBE_LAG_MS + 2_000.0, Ev::Start);
    // Heartbeats keep every plant heard (no plant is silent in this scenario).
    let horizon = RECOVERY_AT_MS + 900_000.0;
    let mut heard_until = 0.0;
    while let Some(Reverse((t, _, ev))) = sim.events.pop() {
        sim.now = t;
        if ev == Ev::Tick {
            sim.ticks.remove(&t);
        }
        if sim.now_ms() > horizon {
            panic!("seed {seed} {mode:?}: not drained after 15 minutes: {} left", sim.backlog_total);
        }
        while heard_until + 5_000.0 <= sim.now_ms() {
            heard_until += 5_000.0;
            for p in &plants {
                sim.coord.handle_heard(heard_until as i64, p);
            }
        }
        sim.step(ev);
        let done = sim.released_at.is_some() && sim.backlog_total == 0;
        let plan_done =
            mode == Mode::Naive || sim.coord.plan().is_some_and(|p| p.stage.terminal() || p.paused.is_some());
        if done && plan_done {
            break;
        }
        if mode == Mode::Phased && sim.coord.plan().is_some_and(|p| p.paused.is_some()) {
            if std::env::var("SIM_DEBUG").is_ok() {
                for s in &sim.coord.plan().unwrap().history {
                    eprintln!("{} {} {} {}", s.at_ms, s.stage, s.by, s.what);
                }
                for (p, pl) in &sim.coord.durable().plants {
                    eprintln!(
                        "{p} {:?} wave {:?} backlog {} pending {}",
                        pl.state, pl.wave, pl.backlog, sim.pending[p]
                    );
                }
            }
            break;
        }
    }
    if std::env::var("SIM_DEBUG").is_ok() && mode == Mode::Phased {
        for s in &sim.coord.plan().expect("a plan").history {
            eprintln!("{} {} {} {}", s.at_ms, s.stage, s.by, s.what.chars().take(100).collect::<String>());
        }
    }
    // Exactly once, in order per ordering key.
    assert!(sim.quarantined.is_empty(), "seed {seed} {mode:?}: quarantined {:?}", sim.quarantined);
    if sim.paused.is_empty() {
        assert_eq!(sim.backlog_total, 0, "seed {seed} {mode:?}");
        for (plant, rows) in &sim.rows {
            for (lsn, _, _) in rows {
                assert_eq!(sim.applied_rows.get(lsn), Some(&1), "seed {seed} {mode:?}: {plant} row {lsn}");
            }
        }
        for (key, order) in &sim.applied_order {
            assert!(order.windows(2).all(|w| w[0] < w[1]), "seed {seed} {mode:?}: {key:?} out of order");
        }
    }
    let released = sim.released_at.expect("released");
    let mut latencies: Vec<f64> =
        sim.canary.iter().filter(|(t, _)| *t >= released && *t <= sim.last_applied_ms).map(|(_, l)| *l).collect();
    let canary_p95 = holdfast_hub::coordinator::gates::percentile(&mut latencies, 0.95).unwrap_or(f64::NAN);
    let baseline = sim.coord.durable().baselines.canary_p95_ms.expect("a baseline was measured");
    // The ideal: the backlog through the share of Odoo the hub may use, or the longest key's
    // serial time, plus the soaks between waves.
    let share = DrainConfig { odoo_workers: WORKERS, ..DrainConfig::default() }.ceiling() as f64;
    let service = |n: usize| n as f64 * OP_MS + (n as f64 / BATCH_MAX as f64).ceil() * CALL_MS;
    let total: f64 = sim.initial.iter().map(|(_, _, n)| service(*n)).sum();
    let longest = sim.initial.iter().map(|(_, _, n)| service(*n)).fold(0.0, f64::max);
    let waves = sim.coord.plan().map_or(0, |p| p.waves.len());
    let soaks = waves.saturating_sub(1) as f64 * SOAK_MS as f64;
    let ideal = (total / share).max(longest) + if mode == Mode::Phased { soaks } else { 0.0 };
    Report {
        drain_ms: sim.last_applied_ms - released,
        ideal_ms: ideal,
        canary_p95_ms: canary_p95,
        baseline_p95_ms: baseline,
        errors: sim.errors,
        timeouts: sim.timeouts,
        waves,
        paused: sim.paused,
    }
}

/// Seeds per test (two tests, so the two cores share the 200): `HOLDFAST_SIM_SEEDS` sets it.
fn seeds() -> u64 {
    std::env::var("HOLDFAST_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(100)
}

#[test]
fn the_phased_plan_keeps_odoo_within_its_bound_and_finishes_near_the_ideal_where_naive_breaches() {
    compare(0);
}

#[test]
fn the_same_over_a_second_hundred_seeds() {
    compare(100);
}

/// Both runs on each seed from `offset` (`HOLDFAST_SIM_FIRST` moves it, to replay a seed).
fn compare(offset: u64) {
    let mut worst_ratio: f64 = 0.0;
    let mut worst_latency: f64 = 0.0;
    let mut naive_breaches = 0;
    let mut naive_least: f64 = f64::INFINITY;
    let (mut errors_max, mut timeouts_max, mut naive_errors_max) = (0, 0, 0);
    let mut lines = Vec::new();
    let first = std::env::var("HOLDFAST_SIM_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(offset);
    for seed in first..first + seeds() {
        let phased = run(seed, Mode::Phased);
        let naive = run(seed, Mode::Naive);
        assert!(phased.paused.is_empty(), "seed {seed}: the phased plan paused: {:?}", phased.paused);
        let ratio = phased.drain_ms / phased.ideal_ms;
        let latency = phased.canary_p95_ms / phased.baseline_p95_ms;
        let naive_latency = naive.canary_p95_ms / naive.baseline_p95_ms;
        if seed < first + 5 {
            lines.push(format!(
                "seed {seed}: phased {:.1} s (ideal {:.1} s, {:.2}x, {} waves), canary p95 {:.1} ms / baseline {:.1} ms ({:.2}x), {} errors, {} timeouts | naive {:.1} s, canary p95 {:.1} ms ({:.2}x), {} errors, {} timeouts",
                phased.drain_ms / 1000.0,
                phased.ideal_ms / 1000.0,
                ratio,
                phased.waves,
                phased.canary_p95_ms,
                phased.baseline_p95_ms,
                latency,
                phased.errors,
                phased.timeouts,
                naive.drain_ms / 1000.0,
                naive.canary_p95_ms,
                naive_latency,
                naive.errors,
                naive.timeouts,
            ));
        }
        assert!(latency <= 2.0, "seed {seed}: phased canary p95 {latency:.2}x its baseline: {phased:?}");
        assert!(ratio <= 1.3, "seed {seed}: phased took {ratio:.2}x the ideal: {phased:?}");
        assert!(naive_latency > 2.0, "seed {seed}: naive stayed within the bound ({naive_latency:.2}x): {naive:?}");
        naive_breaches += 1;
        naive_least = naive_least.min(naive_latency);
        errors_max = errors_max.max(phased.errors);
        timeouts_max = timeouts_max.max(phased.timeouts + naive.timeouts);
        naive_errors_max = naive_errors_max.max(naive.errors);
        worst_ratio = worst_ratio.max(ratio);
        worst_latency = worst_latency.max(latency);
    }
    for l in &lines {
        println!("{l}");
    }
    println!(
        "{} seeds: phased worst {worst_ratio:.2}x the ideal, worst canary p95 {worst_latency:.2}x its baseline, at most {errors_max} errors; naive breached the bound on {naive_breaches}, the least by {naive_least:.2}x, at most {naive_errors_max} errors; {timeouts_max} timeouts in all",
        seeds()
    );
}
