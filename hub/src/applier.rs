//! The applier's decisions, as a pure state machine: which transactions to send to Odoo next,
//! in which batches, and what each outcome means.
//!
//! Rules it keeps:
//! - Per ordering key (within a plant), one call in flight at a time, in ledger order (I3).
//! - Per record, one call in flight at a time, whatever the ordering keys: two transactions
//!   writing the same record would make Odoo's workers serialize and fail with
//!   `SerializationFailure` ([`records_of`] names the records a call touches).
//! - At most `calls_max` calls in flight in all (the hub must never take all of Odoo's workers).
//! - A call is an inbox batch for one plant: the addon skips ids it already recorded, so a call
//!   whose outcome is unknown is simply sent again (I2).
//! - Odoo's refusals are classified by `data.name`, never by code (ODOO.md): business refusals
//!   quarantine the transaction and block only its key; conflicts and outages retry the key with
//!   exponential backoff; refused credentials halt everything and raise an alarm.
//!
//! It reads no clock, does no I/O and holds no store: the shell feeds pending rows in
//! ([`Applier::handle_pending`]), runs the calls [`Applier::poll_call`] returns, reports their
//! outcomes ([`Applier::handle_outcome`]), and persists the [`ApplierEvent`]s.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use holdfast_protocol::{OdooCall, Operation, Record, Transaction};
use uuid::Uuid;

/// Tuning; validated by the config.
#[derive(Clone, Debug)]
pub struct ApplierConfig {
    pub calls_max: usize,
    pub batch_max: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Tries of a key that keeps conflicting in Odoo (or whose call Odoo keeps refusing
    /// whole) before its first transaction is quarantined; outages and lost answers are
    /// retried without limit.
    pub retry_budget: u32,
    /// Transactions held in memory, at most; beyond it the shell stops loading.
    pub queued_max: usize,
    /// What each plant may call.
    pub policies: crate::policy::LivePolicies,
}

/// A transaction ready to be applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub lsn: u64,
    pub plant: String,
    pub journal_id: Uuid,
    pub seq: u64,
    pub id: Uuid,
    pub order_key: String,
    pub occurred_at_ms: Option<i64>,
    pub call: OdooCall,
}

/// One Odoo call the shell must make: an inbox batch for one plant.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub id: u64,
    pub plant: String,
    pub items: Vec<Item>,
}

/// An error Odoo returned, by its exception name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OdooError {
    /// `data.name`, such as `odoo.exceptions.UserError`.
    pub name: String,
    pub message: String,
}

/// What an error name means for the transaction (ODOO.md's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad or expired credentials: stop applying, alarm.
    Credentials,
    /// A business refusal, access rule, constraint or missing record: quarantine.
    Refusal,
    /// A conflict Odoo gave up retrying: retry later.
    Conflict,
    /// The database is unreachable: retry later.
    Outage,
    /// An unknown route or model.
    NotFound,
}

pub fn classify(name: &str) -> ErrorClass {
    match name {
        "odoo.exceptions.AccessDenied" => ErrorClass::Credentials,
        "psycopg2.errors.SerializationFailure"
        | "psycopg2.errors.DeadlockDetected"
        | "psycopg2.errors.LockNotAvailable" => ErrorClass::Conflict,
        "psycopg2.OperationalError" | "psycopg2.errors.OperationalError" => ErrorClass::Outage,
        "werkzeug.exceptions.NotFound" => ErrorClass::NotFound,
        // AccessError, UserError, ValidationError, MissingError, RedirectWarning, and anything
        // unrecognised: a person must look, so nothing is retried blindly.
        _ => ErrorClass::Refusal,
    }
}

/// What became of one transaction of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum ItemOutcome {
    /// Applied now; `result` is what the method returned (null for None).
    Applied { result: serde_json::Value },
    /// The inbox had already recorded this id: applied earlier.
    AlreadyApplied { result: serde_json::Value },
    /// Refused; nothing of it was committed.
    Failed(OdooError),
    /// Not run, because an earlier transaction of its key failed in this batch.
    NotExecuted,
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq)]
pub enum CallOutcome {
    /// The inbox answered for each item, in order.
    Items(Vec<ItemOutcome>),
    /// The whole call failed before the inbox answered.
    Failed(CallFailure),
}

#[derive(Clone, Debug, PartialEq)]
pub enum CallFailure {
    /// Timeout, dropped connection, HTTP 502/503/504: it may or may not have run.
    Unknown(String),
    /// Odoo refused the call itself.
    Odoo(OdooError),
    /// Authentication returned false.
    CredentialsRefused,
}

/// What the shell must persist or show.
#[derive(Clone, Debug, PartialEq)]
pub enum ApplierEvent {
    Applied {
        lsn: u64,
        result: serde_json::Value,
    },
    Quarantined {
        lsn: u64,
        error: OdooError,
    },
    /// Applying stopped for every plant until an operator acts (an alarm).
    Halted {
        reason: String,
    },
    /// A key will be retried after a delay (shown, not persisted).
    Retrying {
        plant: String,
        order_key: String,
        after: Duration,
        reason: String,
    },
}

#[derive(Debug, Default)]
struct KeyQueue {
    items: VecDeque<Item>,
    busy: bool,
    not_before: Option<Instant>,
    failures: u32,
    /// Failures in a row that count against the retry budget.
    budgeted: u32,
}

type KeyId = (String, String);

/// The applier's state.
#[derive(Debug)]
pub struct Applier {
    cfg: ApplierConfig,
    keys: HashMap<KeyId, KeyQueue>,
    /// Keys in the order they first had work: a fair round.
    order: VecDeque<KeyId>,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    queued: usize,
    halted: Option<String>,
    events: VecDeque<ApplierEvent>,
    /// Ledger positions handed in whose outcome the shell has not taken yet: the shell may load
    /// from an earlier position again (a plant back from manual offline) without doubling any.
    known: std::collections::HashSet<u64>,
    /// Plants in plant IT's manual offline: nothing more is sent for them.
    held: std::collections::HashSet<String>,
    /// A platform-wide incident: nothing is sent for any plant.
    hold_all: bool,
    /// Records written by calls in flight, with the call writing each.
    claimed: HashMap<String, u64>,
    /// Keys with a transaction quarantined before it was queued (not permitted, not an Odoo
    /// call): what is loaded behind it waits, as behind any quarantine, even before the store
    /// has recorded it and leaves the key out of its loads.
    refused: std::collections::HashSet<KeyId>,
    /// The coordinator's limit on calls in flight (the adaptive drain), within `calls_max`.
    limit: usize,
    /// Plants' priorities (lower first; unset is [`PRIORITY_DEFAULT`]).
    priorities: HashMap<String, u32>,
    /// Plants served in the current scheduling round: each plant with work gets a batch per
    /// round, the round's order by priority.
    round: std::collections::HashSet<String>,
    /// A round's length, when rounds are timed (the coordinator's drain window): within it,
    /// once each plant had its batch, the rest go by priority and then to the plant with the
    /// longest key (the critical path). Untimed, a round ends when each plant was served.
    round_every: Option<(Duration, Instant)>,
    /// Operators' caps on a plant's rate (transactions per second), and when each capped plant
    /// may be sent its next batch.
    caps: HashMap<String, (f64, Option<Instant>)>,
}

/// A plant's priority when none was set.
pub const PRIORITY_DEFAULT: u32 = u32::MAX;

impl Applier {
    pub fn new(cfg: ApplierConfig) -> Self {
        Self {
            cfg,
            keys: HashMap::new(),
            order: VecDeque::new(),
            calls: BTreeMap::new(),
            next_call: 1,
            queued: 0,
            halted: None,
            events: VecDeque::new(),
            known: std::collections::HashSet::new(),
            held: std::collections::HashSet::new(),
            hold_all: false,
            refused: std::collections::HashSet::new(),
            claimed: HashMap::new(),
            limit: usize::MAX,
            priorities: HashMap::new(),
            round: std::collections::HashSet::new(),
            round_every: None,
            caps: HashMap::new(),
        }
    }

    /// Times the scheduling rounds (`None`: a round ends when each plant was served).
    pub fn set_round(&mut self, every: Option<Duration>, now: Instant) {
        self.round_every = every.map(|d| (d, now));
    }

    /// The coordinator's limit on calls in flight; `calls_max` stays the ceiling. Calls already
    /// in flight above a lowered limit finish; no new one starts until the count is below it.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }

    /// The plant's priority (lower is served first in each round).
    pub fn set_priority(&mut self, plant: &str, priority: u32) {
        self.priorities.insert(plant.to_owned(), priority);
    }

    /// Caps a plant's rate at `per_second` transactions (`None` lifts the cap).
    pub fn set_rate_cap(&mut self, plant: &str, per_second: Option<f64>) {
        match per_second {
            Some(rate) if rate > 0.0 => {
                let next = self.caps.get(plant).and_then(|(_, next)| *next);
                self.caps.insert(plant.to_owned(), (rate, next));
            }
            _ => {
                self.caps.remove(plant);
            }
        }
    }

    /// Holds a plant (plant IT's manual offline) or releases it. A hold sends nothing more for
    /// the plant: its queued transactions are let go (they stay pending in the ledger, and the
    /// shell loads them again after the release), a call already in flight finishes.
    pub fn set_held(&mut self, plant: &str, held: bool) {
        if !held {
            self.held.remove(plant);
            return;
        }
        self.held.insert(plant.to_owned());
        for ((p, _), q) in self.keys.iter_mut() {
            if p == plant && !q.busy {
                for item in q.items.drain(..) {
                    self.known.remove(&item.lsn);
                    self.queued -= 1;
                }
            }
        }
    }

    /// Holds every plant (a platform-wide incident) or lifts that. Queued transactions stay
    /// queued; nothing is sent meanwhile.
    pub fn set_hold_all(&mut self, hold: bool) {
        self.hold_all = hold;
    }

    /// How many more transactions the shell may load now.
    pub fn wants(&self) -> usize {
        if self.halted.is_some() { 0 } else { self.cfg.queued_max.saturating_sub(self.queued) }
    }

    /// Transactions held in memory now.
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn is_halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    pub fn in_flight(&self) -> usize {
        self.calls.len()
    }

    /// Pending transactions loaded from the ledger, in ledger order. A record that fails its
    /// checksum or is not an Odoo call is quarantined at once, never applied (I5).
    pub fn handle_pending(&mut self, lsn: u64, plant: &str, journal_id: Uuid, record: &Record) {
        if self.held.contains(plant) || !self.known.insert(lsn) {
            return; // held, or loaded again while queued or in flight
        }
        let txn = match record.verify() {
            Ok(t) => t,
            Err(e) => {
                return self.events.push_back(ApplierEvent::Quarantined {
                    lsn,
                    error: OdooError { name: "holdfast.Corrupted".into(), message: e.to_string() },
                });
            }
        };
        let Transaction { id, plant: txn_plant, order_key, occurred_at_ms, op, source, device, .. } = txn;
        let key = (plant.to_owned(), order_key.clone());
        if self.refused.contains(&key) {
            // Behind a quarantine of its key: it stays pending in the ledger.
            self.known.remove(&lsn);
            return;
        }
        if txn_plant != plant {
            let message = format!("the transaction names plant {txn_plant:?} but was stored for plant {plant:?}");
            return self.refuse(lsn, key, "holdfast.WrongPlant", message);
        }
        let mut call = match op {
            Operation::OdooCall(call) => call,
            Operation::Scan(scan) => {
                let message = format!(
                    "scan {:?} reached the hub without a station template turning it into an Odoo call",
                    scan.code
                );
                return self.refuse(lsn, key, "holdfast.UntemplatedScan", message);
            }
        };
        if let Err(message) = self.cfg.policies.admit(plant, &mut call) {
            return self.refuse(lsn, key, "holdfast.NotPermitted", message);
        }
        let by_key = |k: &str| Transaction::keyed_id(plant, source, &device, k);
        call.args = name_results(std::mem::take(&mut call.args), &by_key);
        for value in call.kwargs.values_mut() {
            *value = name_results(std::mem::take(value), &by_key);
        }
        let queue = self.keys.entry(key.clone()).or_default();
        if queue.items.is_empty() && !queue.busy {
            self.order.push_back(key);
        }
        queue.items.push_back(Item {
            lsn,
            plant: plant.to_owned(),
            journal_id,
            seq: record.seq,
            id,
            order_key,
            occurred_at_ms,
            call,
        });
        self.queued += 1;
    }

    /// The next call to make, if the limits allow one now.
    pub fn poll_call(&mut self, now: Instant) -> Option<Call> {
        if self.halted.is_some() || self.hold_all || self.calls.len() >= self.cfg.calls_max.min(self.limit) {
            return None;
        }
        // Expired waits are over: only future ones are deadlines for `poll_timeout`.
        for q in self.keys.values_mut() {
            if q.not_before.is_some_and(|t| t <= now) {
                q.not_before = None;
            }
        }
        for (_, next) in self.caps.values_mut() {
            if next.is_some_and(|t| t <= now) {
                *next = None;
            }
        }
        let id = self.next_call;
        // The plant: among those with a key ready, by priority, those not yet served in this
        // round first (a new round starts when each was served); ties go by the keys' round.
        let mut candidates: Vec<(bool, u32, Reverse<usize>, usize, String)> = Vec::new();
        let mut longest: HashMap<&str, usize> = HashMap::new();
        for (key, q) in &self.keys {
            let l = longest.entry(key.0.as_str()).or_default();
            *l = (*l).max(q.items.len());
        }
        for (position, key) in self.order.iter().enumerate() {
            let q = &self.keys[key];
            if q.busy || q.items.is_empty() || q.not_before.is_some_and(|t| now < t) || self.held.contains(&key.0) {
                continue;
            }
            if self.caps.get(&key.0).is_some_and(|(_, next)| next.is_some_and(|t| now < t)) {
                continue;
            }
            if candidates.iter().any(|c| c.4 == key.0) {
                continue;
            }
            let priority = self.priorities.get(&key.0).copied().unwrap_or(PRIORITY_DEFAULT);
            // Within a priority, the plant with the longest key first: the critical path.
            let critical = Reverse(longest.get(key.0.as_str()).copied().unwrap_or(0));
            candidates.push((self.round.contains(&key.0), priority, critical, position, key.0.clone()));
        }
        if let Some((every, started)) = self.round_every.as_mut()
            && now.duration_since(*started) >= *every
        {
            *started = now;
            self.round.clear();
            for c in &mut candidates {
                c.0 = false;
            }
        }
        candidates.sort();
        if self.round_every.is_none() && candidates.first().is_some_and(|c| c.0) {
            self.round.clear();
            for c in &mut candidates {
                c.0 = false;
            }
            candidates.sort();
        }
        let mut plant: Option<String> = None;
        let mut items = Vec::new();
        let mut taken_keys = Vec::new();
        for (.., chosen) in candidates {
            // The plant's keys, longest first: a long key gets whole batches, so its serial
            // time (one call at a time) is not stretched by sharing them.
            let mut keys: Vec<&KeyId> = self.order.iter().filter(|k| k.0 == chosen).collect();
            keys.sort_by_key(|k| Reverse(self.keys[*k].items.len()));
            let keys: Vec<KeyId> = keys.into_iter().cloned().collect();
            for key in &keys {
                if items.len() >= self.cfg.batch_max {
                    break;
                }
                if key.0 != chosen {
                    continue;
                }
                let q = self.keys.get_mut(key).expect("ordered keys exist");
                if q.busy || q.items.is_empty() || q.not_before.is_some_and(|t| now < t) {
                    continue;
                }
                // The key's transactions from the front, in order, while no other call in
                // flight writes their records.
                let room = self.cfg.batch_max - items.len();
                let mut taken = 0;
                for item in q.items.iter().take(room) {
                    let records = records_of(&item.call);
                    if records.iter().any(|r| self.claimed.get(r).is_some_and(|c| *c != id)) {
                        break;
                    }
                    for r in records {
                        self.claimed.insert(r, id);
                    }
                    items.push(item.clone());
                    taken += 1;
                }
                if taken == 0 {
                    continue;
                }
                plant.get_or_insert_with(|| key.0.clone());
                q.busy = true;
                taken_keys.push(key.clone());
            }
            if plant.is_some() {
                break;
            }
        }
        let plant = plant?;
        self.round.insert(plant.clone());
        if let Some((rate, next)) = self.caps.get_mut(&plant) {
            let from = next.filter(|t| *t > now).unwrap_or(now);
            *next = Some(from + Duration::from_secs_f64(items.len() as f64 / *rate));
        }
        // Keys served go to the back of the round.
        self.order.retain(|k| !taken_keys.contains(k));
        self.order.extend(taken_keys);
        self.next_call += 1;
        let call = Call { id, plant, items };
        self.calls.insert(id, call.clone());
        Some(call)
    }

    /// The outcome of a call from [`Self::poll_call`].
    pub fn handle_outcome(&mut self, now: Instant, call_id: u64, outcome: CallOutcome) {
        let Some(call) = self.calls.remove(&call_id) else { return };
        self.claimed.retain(|_, c| *c != call_id);
        match outcome {
            CallOutcome::Items(results) if results.len() == call.items.len() => self.on_items(now, call, results),
            CallOutcome::Items(results) => {
                let reason =
                    format!("the inbox answered {} results for {} transactions", results.len(), call.items.len());
                self.retry_call(now, &call, reason, None);
            }
            CallOutcome::Failed(CallFailure::Unknown(reason)) => {
                self.retry_call(now, &call, format!("outcome unknown: {reason}"), None)
            }
            CallOutcome::Failed(CallFailure::CredentialsRefused) => {
                self.halt(&call, "Odoo refused the hub's login: check odoo.login and odoo.api_key".into());
            }
            CallOutcome::Failed(CallFailure::Odoo(e)) => match classify(&e.name) {
                ErrorClass::Credentials => {
                    self.halt(&call, format!("Odoo refused the hub's credentials ({}: {})", e.name, e.message))
                }
                ErrorClass::NotFound => self.halt(
                    &call,
                    format!("Odoo has no holdfast.inbox ({}: {}): install the holdfast_inbox addon", e.name, e.message),
                ),
                ErrorClass::Outage => self.retry_call(now, &call, format!("{}: {}", e.name, e.message), None),
                ErrorClass::Conflict | ErrorClass::Refusal => {
                    self.retry_call(now, &call, format!("{}: {}", e.name, e.message), Some(e))
                }
            },
        }
    }

    /// The earliest moment a backed-off key becomes ready.
    /// At the limit it is `None`: what frees a slot is a call's outcome, not time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.halted.is_some() || self.hold_all || self.calls.len() >= self.cfg.calls_max.min(self.limit) {
            return None;
        }
        let waiting = self.keys.iter().filter(|(k, q)| !q.busy && !q.items.is_empty() && !self.held.contains(&k.0));
        waiting
            .filter_map(|(k, q)| {
                let capped = self.caps.get(&k.0).and_then(|(_, next)| *next);
                match (q.not_before, capped) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }

    /// The next outcome or notice; an outcome's transaction is forgotten here, since the shell
    /// records it before it loads again.
    pub fn poll_event(&mut self) -> Option<ApplierEvent> {
        let event = self.events.pop_front()?;
        if let ApplierEvent::Applied { lsn, .. } | ApplierEvent::Quarantined { lsn, .. } = &event {
            self.known.remove(lsn);
        }
        Some(event)
    }

    fn on_items(&mut self, now: Instant, call: Call, results: Vec<ItemOutcome>) {
        let mut retry: Vec<(KeyId, String, Option<OdooError>)> = Vec::new();
        let mut blocked: Vec<KeyId> = Vec::new();
        for (item, outcome) in call.items.iter().zip(results) {
            let key = (item.plant.clone(), item.order_key.clone());
            if blocked.contains(&key) || retry.iter().any(|(k, ..)| *k == key) {
                continue;
            }
            match outcome {
                ItemOutcome::Applied { result } if let Err(e) = check_result(&result) => {
                    // Plain mode: the call committed but did not finish (a wizard waits for a
                    // person). The inbox never answers so: it rolls such a call back itself.
                    self.block(&key);
                    blocked.push(key);
                    self.events.push_back(ApplierEvent::Quarantined { lsn: item.lsn, error: e });
                }
                ItemOutcome::Applied { result } | ItemOutcome::AlreadyApplied { result } => {
                    self.pop_front(&key, item.lsn);
                    self.events.push_back(ApplierEvent::Applied { lsn: item.lsn, result });
                }
                ItemOutcome::NotExecuted => {
                    retry.push((key, "an earlier transaction of its key did not run".into(), None))
                }
                ItemOutcome::Failed(e) => match classify(&e.name) {
                    ErrorClass::Refusal | ErrorClass::NotFound => {
                        self.block(&key);
                        blocked.push(key);
                        self.events.push_back(ApplierEvent::Quarantined { lsn: item.lsn, error: e });
                    }
                    ErrorClass::Outage => retry.push((key, format!("{}: {}", e.name, e.message), None)),
                    ErrorClass::Conflict => retry.push((key, format!("{}: {}", e.name, e.message), Some(e))),
                    ErrorClass::Credentials => {
                        return self
                            .halt(&call, format!("Odoo refused the hub's credentials ({}: {})", e.name, e.message));
                    }
                },
            }
        }
        for key in keys_of(&call) {
            if let Some((_, reason, budgeted)) = retry.iter().find(|(k, ..)| *k == key) {
                let (reason, budgeted) = (reason.clone(), budgeted.clone());
                self.schedule_retry(now, &key, reason, budgeted);
            } else if let Some(q) = self.keys.get_mut(&key) {
                q.busy = false;
                if !blocked.contains(&key) {
                    q.failures = 0;
                    q.budgeted = 0;
                    q.not_before = None;
                }
            }
            self.forget_if_idle(&key);
        }
    }

    fn retry_call(&mut self, now: Instant, call: &Call, reason: String, budgeted: Option<OdooError>) {
        for key in keys_of(call) {
            self.schedule_retry(now, &key, reason.clone(), budgeted.clone());
        }
    }

    /// Frees a key whose call failed and makes it wait its backoff before the next try. A
    /// failure `budgeted` against the retry budget that exhausts it quarantines the key's first
    /// transaction instead, with Odoo's error, and blocks the key.
    fn schedule_retry(&mut self, now: Instant, key: &KeyId, reason: String, budgeted: Option<OdooError>) {
        let Some(failures) = self.keys.get(key).map(|q| q.failures) else { return };
        let after = self.backoff(failures);
        let budget = self.cfg.retry_budget;
        let q = self.keys.get_mut(key).expect("checked above");
        if let Some(e) = budgeted {
            q.budgeted += 1;
            if q.budgeted > budget {
                q.busy = false;
                let Some(front) = q.items.pop_front() else { return };
                self.queued -= 1;
                let message = format!("{} (still failing after {} tries)", e.message, budget + 1);
                self.block(key);
                self.events.push_back(ApplierEvent::Quarantined {
                    lsn: front.lsn,
                    error: OdooError { name: e.name, message },
                });
                self.forget_if_idle(key);
                return;
            }
        }
        q.failures += 1;
        q.busy = false;
        q.not_before = Some(now + after);
        self.events.push_back(ApplierEvent::Retrying { plant: key.0.clone(), order_key: key.1.clone(), after, reason });
    }

    fn backoff(&self, failures: u32) -> Duration {
        self.cfg.retry_initial.saturating_mul(1u32 << failures.min(16)).min(self.cfg.retry_max)
    }

    fn halt(&mut self, call: &Call, reason: String) {
        for item in &call.items {
            if let Some(q) = self.keys.get_mut(&(item.plant.clone(), item.order_key.clone())) {
                q.busy = false;
            }
        }
        if self.halted.is_none() {
            self.halted = Some(reason.clone());
            self.events.push_back(ApplierEvent::Halted { reason });
        }
    }

    fn pop_front(&mut self, key: &KeyId, lsn: u64) {
        let q = self.keys.get_mut(key).expect("a key with a call in flight exists");
        let front = q.items.pop_front().expect("a key with a call in flight has items");
        q.budgeted = 0; // progress: the next transaction has its own retry budget
        assert_eq!(front.lsn, lsn, "outcomes arrive in the order of the key's queue");
        self.queued -= 1;
    }

    /// A quarantined transaction blocks its key: what is queued behind it is dropped from memory
    /// (the store leaves blocked keys out of later loads) and stays pending in the ledger.
    fn block(&mut self, key: &KeyId) {
        self.refused.insert(key.clone());
        if let Some(q) = self.keys.get_mut(key) {
            self.queued -= q.items.len();
            for item in q.items.drain(..) {
                self.known.remove(&item.lsn);
            }
        }
    }

    /// An operator retried or parked quarantined transactions: keys held back behind a
    /// quarantine may move again. The store decides which (it leaves out keys still blocked),
    /// so the shell loads from the start after this.
    pub fn unblock_all(&mut self) {
        self.refused.clear();
    }

    /// Quarantines a transaction before it is queued; its key waits behind it.
    fn refuse(&mut self, lsn: u64, key: KeyId, name: &str, message: String) {
        self.refused.insert(key);
        self.events.push_back(ApplierEvent::Quarantined { lsn, error: OdooError { name: name.into(), message } });
    }

    fn forget_if_idle(&mut self, key: &KeyId) {
        if self.keys.get(key).is_some_and(|q| q.items.is_empty() && !q.busy) {
            self.keys.remove(key);
            self.order.retain(|k| k != key);
        }
    }
}

/// Rewrites each `{"$result": "<key>"}` (or `{"$result": {"key": K, "path": [...]}}`), a
/// producer's name for what an earlier transaction of the same source and device returned, into
/// `{"$result": {"id": "<that transaction's id>", ...}}`, which the inbox resolves from its
/// record of applied ids in the same database transaction.
pub fn name_results(value: serde_json::Value, id_of: &impl Fn(&str) -> Uuid) -> serde_json::Value {
    use serde_json::{Value, json};
    match value {
        Value::Object(mut obj) if obj.len() == 1 && obj.contains_key("$result") => {
            let spec = obj.remove("$result").unwrap_or_default();
            let named = match spec {
                Value::String(key) => json!({"id": id_of(&key).to_string()}),
                Value::Object(mut o) if o.get("key").is_some_and(Value::is_string) => {
                    let key = o.remove("key").and_then(|k| k.as_str().map(str::to_owned)).unwrap_or_default();
                    o.insert("id".into(), json!(id_of(&key).to_string()));
                    Value::Object(o)
                }
                other => other,
            };
            json!({"$result": named})
        }
        Value::Object(obj) => Value::Object(obj.into_iter().map(|(k, v)| (k, name_results(v, id_of))).collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| name_results(v, id_of)).collect()),
        other => other,
    }
}

/// Methods that change nothing, whatever their model: the applier claims no record for them,
/// and plain delivery sends them again when an answer is lost (`plain::check_for`).
pub const READ_ONLY: &[&str] =
    &["read", "search", "search_read", "search_count", "name_search", "fields_get", "context_get"];

/// The records a call writes, by name: `model#<id>` for each record id in its first argument
/// (a list of ids, or one), a reference (`$ref`, `$xmlid`, `$result`) named by its own text.
/// A `create` or `load` makes new records and claims none; reads claim none. Two names for the
/// same record (an id and a reference to it) are not seen as one: producers keep to one way of
/// naming a record per ordering key, and Odoo's own retries absorb the rare remaining clash.
pub fn records_of(call: &OdooCall) -> Vec<String> {
    use serde_json::Value;
    if READ_ONLY.contains(&call.method.as_str()) || call.method == "create" || call.method == "load" {
        return Vec::new();
    }
    match call.args.get(0) {
        Some(Value::Array(ids)) => ids.iter().map(|id| format!("{}#{id}", call.model)).collect(),
        Some(one @ (Value::Number(_) | Value::Object(_))) => vec![format!("{}#{one}", call.model)],
        _ => Vec::new(),
    }
}

/// Wizards by which Odoo asks a person instead of finishing (ODOO.md "Wizards"): the
/// addon's `logic.WIZARD_MODELS`.
pub const WIZARD_MODELS: [&str; 9] = [
    "stock.backorder.confirmation",
    "stock.immediate.transfer",
    "stock.inventory.conflict",
    "stock.track.confirmation",
    "stock.warn.insufficient.qty.scrap",
    "stock.inventory.warning",
    "mrp.production.backorder",
    "mrp.consumption.warning",
    "mrp.immediate.production",
];

/// Whether what a call returned means it finished. An action dictionary is not a success
/// unless it closes the window or shows a notification: a wizard of [`WIZARD_MODELS`] is
/// `holdfast.Wizard` naming its model, any other action `holdfast.UnknownAction` with the
/// action verbatim. A `load` whose `ids` is false answered errors: `holdfast.LoadRefused`.
pub fn check_result(result: &serde_json::Value) -> Result<(), OdooError> {
    use serde_json::Value;
    let Some(obj) = result.as_object() else { return Ok(()) };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("");
    let refusal = |name: &str, message: String| Err(OdooError { name: name.into(), message });
    if let Some(kind) = obj.get("type").and_then(Value::as_str).filter(|k| k.starts_with("ir.actions.")) {
        return match kind {
            "ir.actions.act_window_close" => Ok(()),
            "ir.actions.client" if text("tag") == "display_notification" => Ok(()),
            "ir.actions.act_window" if WIZARD_MODELS.contains(&text("res_model")) => refusal(
                "holdfast.Wizard",
                format!("Odoo asks a person to decide in the {} wizard ({})", text("res_model"), text("name")),
            ),
            _ => refusal("holdfast.UnknownAction", result.to_string()),
        };
    }
    match (obj.get("ids"), obj.get("messages").and_then(Value::as_array)) {
        (Some(Value::Bool(false)), Some(messages)) => {
            let errors: Vec<&str> = messages
                .iter()
                .filter(|m| m.get("type").and_then(Value::as_str) == Some("error"))
                .filter_map(|m| m.get("message").and_then(Value::as_str))
                .collect();
            refusal("holdfast.LoadRefused", errors.join("; "))
        }
        _ => Ok(()),
    }
}

/// The distinct keys of a call, in the order they first appear.
fn keys_of(call: &Call) -> Vec<KeyId> {
    let mut keys: Vec<KeyId> = Vec::new();
    for item in &call.items {
        let key = (item.plant.clone(), item.order_key.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

#[cfg(test)]
mod tests;
