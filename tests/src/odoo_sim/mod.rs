//! `odoo-sim`: the Odoo double. It follows ODOO.md to the letter, because no real Odoo can run
//! where Holdfast is tested: `/web/health` as 16.0 or 17.0/18.0 answer it, JSON-RPC's quirks
//! (the ignored top-level method, errors as HTTP 200 named in `error.data.name`, no `result` key
//! for None, HTTP 400 for a bad content type or body, `authenticate` answering `false`, the
//! login cooldown per client address), and
//! `execute_kw` over a small stock and manufacturing database with the `holdfast.inbox` addon.
//!
//! Beyond Odoo's own routes it has an admin API under `/holdfast-sim/` that tests use to read
//! what was applied (in order), to inject faults (database down, refused or hung calls, slow
//! calls, commit then drop the connection; concurrent writers of one record fail to serialize
//! as PostgreSQL makes them), and to set the capacity model ([`capacity`]:
//! workers, service times, `limit_time_real`) and read its figures.

pub mod capacity;
pub mod inbox;
pub mod model;
pub mod xmlrpc;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use inbox::Inbox;
use model::{Db, Fault};

/// Odoo major versions whose behaviour the double reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V16,
    V17,
    V18,
}

impl Version {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "16" | "16.0" => Some(Self::V16),
            "17" | "17.0" => Some(Self::V17),
            "18" | "18.0" => Some(Self::V18),
            _ => None,
        }
    }

    fn number(self) -> u64 {
        match self {
            Self::V16 => 16,
            Self::V17 => 17,
            Self::V18 => 18,
        }
    }
}

/// How the double starts.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub version: Version,
    pub database: String,
    pub login: String,
    pub api_key: String,
    pub manufacturing_orders: i64,
    /// Whether the `holdfast_inbox` addon is installed (its module record, and its model).
    pub inbox_installed: bool,
    /// The capacity model for JSON-RPC calls; none answers at once.
    pub capacity: Option<capacity::Capacity>,
    /// A call that writes a record another call committed since it began fails with
    /// `psycopg2.errors.SerializationFailure` with probability `1 - (1 - rate)^k`, k the
    /// records so written: what is left after Odoo's own five retries. 0 never fails.
    pub serialization_rate: f64,
    /// Start as a copy of another double's data as of one of its commits: a disaster-recovery
    /// Odoo holding the primary's data up to its recovery point (`GET /holdfast-sim/snapshot`).
    pub snapshot: Option<Snapshot>,
    /// Runs on tokio's paused clock (tests): service times are waited on the timer alone.
    pub virtual_time: bool,
}

/// Another double's data up to a commit: the seed it started from and the data-changing calls
/// it committed, in order, replayed on the same seed.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub manufacturing_orders: i64,
    pub inbox_installed: bool,
    /// How many of the primary's commits it holds.
    pub as_of: usize,
    /// The `execute_kw` arguments of each, in commit order.
    pub calls: Vec<Value>,
}

impl Default for SimConfig {
    /// The database, login and key of `deploy/config/hub.example.toml`.
    fn default() -> Self {
        Self {
            version: Version::V17,
            database: "holdfast".into(),
            login: "holdfast-hub".into(),
            api_key: "0f3b8e1c4d2a6f9e7b5c3a1d8e6f4b2c9a7d5e3f".into(),
            manufacturing_orders: 200,
            inbox_installed: true,
            capacity: None,
            serialization_rate: 0.5,
            snapshot: None,
            virtual_time: false,
        }
    }
}

/// Faults an admin can switch on (`POST /holdfast-sim/faults` replaces them all).
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// PostgreSQL unreachable: health fails (17+) and calls raise `psycopg2.OperationalError`.
    #[serde(default)]
    pub db_down: bool,
    /// Every JSON-RPC request's connection is dropped before anything runs (Odoo down behind
    /// a proxy, or its port closed).
    #[serde(default)]
    pub refuse: bool,
    /// Added to every JSON-RPC call's service, in milliseconds.
    #[serde(default)]
    pub slow_ms: u64,
    /// Only this call is slowed (`common.version`, or `model.method` for `execute_kw`).
    #[serde(default)]
    pub slow_only: Option<String>,
    /// JSON-RPC calls wait, unanswered, until this is switched off (a stuck worker).
    #[serde(default)]
    pub hang: bool,
    /// The next this many `execute_kw` calls commit their effect, then drop the connection
    /// without an answer: the outcome the caller cannot know.
    #[serde(default)]
    pub commit_then_drop: u32,
    /// Only calls of this `model.method` count for `commit_then_drop` (others are answered).
    #[serde(default)]
    pub drop_only: Option<String>,
    /// Overrides the configured `serialization_rate` (0 to 1) while set.
    #[serde(default)]
    pub serialization_rate: Option<f64>,
}

#[derive(Debug)]
struct Sim {
    cfg: SimConfig,
    db: Db,
    inbox: Inbox,
    faults: Faults,
    /// Tells hung calls that `hang` changed.
    unhang: Arc<tokio::sync::Notify>,
    pool: Option<capacity::Pool>,
    /// Every successful `execute_kw` that may change data, outside the inbox, in order:
    /// (model, method, arguments). What plain delivery did.
    calls: Vec<Value>,
    started: tokio::time::Instant,
    stats: Stats,
    /// Commits of calls that wrote records, counted; and the last that wrote each record.
    commits: u64,
    last_write: std::collections::HashMap<String, u64>,
    rng: rand::rngs::SmallRng,
    /// Every committed data-changing `execute_kw`, its arguments, in order: what a snapshot
    /// replays.
    journal: Vec<Value>,
    /// Failed logins per client address, and when the last failed: Odoo's login cooldown.
    login_failures: std::collections::HashMap<std::net::IpAddr, (u32, tokio::time::Instant)>,
}

/// Failed logins from one address after which its logins are refused for [`LOGIN_COOLDOWN`]
/// (Odoo's `base.login_cooldown_after` and `base.login_cooldown_duration`).
pub const LOGIN_COOLDOWN_AFTER: u32 = 5;
pub const LOGIN_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(60);

/// What the capacity model saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// JSON-RPC calls answered.
    pub answered: u64,
    /// Calls killed at `limit_time_real` (their effect recorded, no answer).
    pub killed: u64,
    /// Calls whose connection the `commit_then_drop` fault dropped after their effect.
    pub dropped: u64,
    /// Times a call started waiting on the `hang` fault.
    pub hung: u64,
    /// Most calls inside the double (queued or served) at once.
    pub in_flight_max: usize,
    /// Longest wait for a worker, in milliseconds.
    pub queued_max_ms: u64,
    /// Calls failed with `SerializationFailure`: they wrote a record that another call
    /// committed while they ran.
    pub serialization_failures: u64,
}

type Shared = Arc<Mutex<Sim>>;

/// The uid of the hub's user in the seeded database.
pub const HUB_UID: i64 = 2;

/// The seeded database a double starts from.
fn seeded(version: Version, manufacturing_orders: i64, inbox_installed: bool) -> Db {
    let mut db =
        if version == Version::V16 { Db::seeded_16(manufacturing_orders) } else { Db::seeded(manufacturing_orders) };
    let inbox_state = if inbox_installed { "installed" } else { "uninstalled" };
    db.create("ir.module.module", json!({"name": "holdfast_inbox", "state": inbox_state}));
    db
}

pub fn router(mut cfg: SimConfig) -> Router {
    let snapshot = cfg.snapshot.take();
    if let Some(snap) = &snapshot {
        cfg.manufacturing_orders = snap.manufacturing_orders;
        cfg.inbox_installed = snap.inbox_installed;
    }
    let pool = cfg.capacity.map(capacity::Pool::new);
    let mut sim = Sim {
        db: seeded(cfg.version, cfg.manufacturing_orders, cfg.inbox_installed),
        cfg,
        inbox: Inbox::default(),
        faults: Faults::default(),
        unhang: Arc::new(tokio::sync::Notify::new()),
        pool,
        calls: Vec::new(),
        started: tokio::time::Instant::now(),
        stats: Stats::default(),
        commits: 0,
        last_write: std::collections::HashMap::new(),
        rng: rand::SeedableRng::seed_from_u64(0x5eed),
        login_failures: std::collections::HashMap::new(),
        journal: Vec::new(),
    };
    if let Some(snap) = snapshot {
        sim.replay(&snap.calls);
    }
    Router::new()
        .route("/web/health", get(health))
        .route("/jsonrpc", post(jsonrpc))
        .route("/xmlrpc/2/{service}", post(xmlrpc_2))
        .route("/web/webclient/version_info", post(version_info))
        .route("/holdfast-sim/applied", get(applied))
        .route("/holdfast-sim/faults", post(set_faults))
        .route("/holdfast-sim/capacity", post(set_capacity))
        .route("/holdfast-sim/stats", get(stats))
        .route("/holdfast-sim/snapshot", get(snapshot_of))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], "<h1>404: Not Found</h1>")
        })
        .with_state(Arc::new(Mutex::new(sim)))
}

/// Serves the double on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, cfg: SimConfig) -> std::io::Result<()> {
    axum::serve(listener, router(cfg).into_make_service_with_connect_info::<SocketAddr>()).await
}

#[derive(Debug, Deserialize)]
struct HealthQuery {
    db_server_status: Option<String>,
}

async fn health(State(sim): State<Shared>, Query(q): Query<HealthQuery>) -> Response {
    let sim = sim.lock().expect("sim lock");
    // Any non-empty value switches the check on (even "0"); 16.0 ignores the parameter.
    let check = q.db_server_status.is_some_and(|v| !v.is_empty()) && sim.cfg.version != Version::V16;
    let (status, body) = match (check, sim.faults.db_down) {
        (false, _) => (StatusCode::OK, json!({"status": "pass"})),
        (true, false) => (StatusCode::OK, json!({"status": "pass", "db_server_status": true})),
        (true, true) => (StatusCode::INTERNAL_SERVER_ERROR, json!({"status": "fail", "db_server_status": false})),
    };
    let mut resp = (status, python_json(&body)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Keys in the order Odoo's dictionaries hold them (its JSON keeps insertion order): the
/// JSON-RPC envelope, its error and the error's data, the health answer, `common.version`.
/// Other keys follow, sorted.
const KEY_ORDER: [&str; 17] = [
    "jsonrpc",
    "id",
    "error",
    "result",
    "code",
    "name",
    "debug",
    "message",
    "arguments",
    "context",
    "data",
    "status",
    "db_server_status",
    "server_version",
    "server_version_info",
    "server_serie",
    "protocol_version",
];

/// JSON as Odoo writes it with Python's `json.dumps`: `", "` and `": "` separators, non-ASCII
/// escaped (`ensure_ascii`), keys in [`KEY_ORDER`].
pub fn python_json(v: &Value) -> String {
    let mut out = String::new();
    write_python(v, &mut out);
    out
}

fn write_python(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| (KEY_ORDER.iter().position(|o| o == k).unwrap_or(usize::MAX), k.as_str()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_str(k, out);
                out.push_str(": ");
                write_python(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_python_str(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_python_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn version_value(v: Version) -> Value {
    let n = v.number();
    json!({"server_version": format!("{n}.0"), "server_version_info": [n, 0, 0, "final", 0, ""], "server_serie": format!("{n}.0"), "protocol_version": 1})
}

async fn version_info(State(sim): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let version = sim.lock().expect("sim lock").cfg.version;
    match read_request(&headers, &body) {
        Ok(req) => rpc_response(req.get("id").cloned().unwrap_or(Value::Null), Ok(version_value(version)), version),
        Err(text) => bad_request(&text),
    }
}

/// Checks content type and body as Odoo's JSON request dispatcher does.
/// On refusal, the text of Odoo's HTTP 400 answer.
fn read_request(headers: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/json" && mime != "application/json-rpc" {
        return Err(format!("Bad Request: unsupported content type {content_type:?}"));
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| "Invalid JSON data".to_owned())?;
    if !value.is_object() {
        return Err("Invalid JSON-RPC data".to_owned());
    }
    Ok(value)
}

fn bad_request(text: &str) -> Response {
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], text.to_owned()).into_response()
}

/// A JSON-RPC answer: always HTTP 200; `result` only when not None.
fn rpc_response(id: Value, outcome: Result<Value, Fault>, version: Version) -> Response {
    let body = match outcome {
        Ok(Value::Null) => json!({"jsonrpc": "2.0", "id": id}),
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(fault) => {
            let code = if fault.name == "werkzeug.exceptions.NotFound" {
                404
            } else if version.number() > 18 {
                0
            } else {
                200
            };
            json!({"jsonrpc": "2.0", "id": id, "error": {
                "code": code,
                "message": "Odoo Server Error",
                "data": {
                    "name": fault.name,
                    "debug": format!("Traceback (most recent call last):\n  File \"odoo/http.py\", line 1, in _serve_db\n{}: {}\n", fault.name, fault.message),
                    "message": fault.message,
                    "arguments": [fault.message],
                    "context": {},
                },
            }})
        }
    };
    let mut resp = (StatusCode::OK, python_json(&body)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

async fn jsonrpc(
    State(sim): State<Shared>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = match read_request(&headers, &body) {
        Ok(r) => r,
        Err(text) => return bad_request(&text),
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    // The top-level "method" is ignored; params must be an object.
    let Some(params) = req.get("params").and_then(Value::as_object) else {
        return bad_request("Invalid JSON-RPC data");
    };
    let service = params.get("service").and_then(Value::as_str).unwrap_or("");
    let method = params.get("method").and_then(Value::as_str).unwrap_or("");
    let args = params.get("args").and_then(Value::as_array).cloned().unwrap_or_default();
    let version = sim.lock().expect("sim lock").cfg.version;
    match execute(&sim, client, service, method, &args).await {
        Some(outcome) => rpc_response(id, outcome, version),
        None => killed(),
    }
}

/// Runs one RPC through the faults, the capacity model and the database, as both JSON-RPC and
/// XML-RPC do; `None` when the connection breaks without an answer (refused, killed at
/// `limit_time_real`, or dropped after the commit).
async fn execute(
    sim: &Shared,
    client: SocketAddr,
    service: &str,
    method: &str,
    args: &[Value],
) -> Option<Result<Value, Fault>> {
    // Faults first: a refused connection runs nothing; a hang waits until it is lifted.
    loop {
        let (refuse, hang, unhang) = {
            let s = sim.lock().expect("sim lock");
            (s.faults.refuse, s.faults.hang, s.unhang.clone())
        };
        if refuse {
            return None;
        }
        if hang {
            let lifted = unhang.notified();
            {
                let mut s = sim.lock().expect("sim lock");
                if !s.faults.hang {
                    continue;
                }
                s.stats.hung += 1;
            }
            lifted.await;
            continue;
        }
        break;
    }
    // The call's database transaction begins: what it writes must not be committed by another
    // before it ends.
    let writes = written_records(service, method, args);
    let named = match method {
        "execute_kw" => format!(
            "{}.{}",
            args.get(3).and_then(Value::as_str).unwrap_or(""),
            args.get(4).and_then(Value::as_str).unwrap_or("")
        ),
        _ => format!("{service}.{method}"),
    };
    let (snapshot, slow) = {
        let s = sim.lock().expect("sim lock");
        let slowed = s.faults.slow_only.as_ref().is_none_or(|only| *only == named);
        (s.commits, if slowed { s.faults.slow_ms } else { 0 })
    };
    if slow > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
    }
    // The capacity model: wait for a worker and the service time; the effect is recorded at
    // the end, as Odoo commits when a request ends.
    let virtual_time = sim.lock().expect("sim lock").cfg.virtual_time;
    let plan = {
        let mut guard = sim.lock().expect("sim lock");
        let s = &mut *guard;
        let arrival = s.started.elapsed();
        let started = s.started;
        s.pool.as_mut().map(|pool| {
            let plan = pool.plan(arrival, operations(service, method, args));
            s.stats.in_flight_max = s.stats.in_flight_max.max(pool.in_flight());
            s.stats.queued_max_ms = s.stats.queued_max_ms.max(plan.queued(arrival).as_millis() as u64);
            (started, plan)
        })
    };
    if let Some((started, plan)) = plan {
        serve_until(started + plan.end, virtual_time).await;
    }
    let mut sim = sim.lock().expect("sim lock");
    let outcome = if sim.conflicts(&writes, snapshot) {
        sim.stats.serialization_failures += 1;
        Err(Fault {
            name: "psycopg2.errors.SerializationFailure",
            message: "could not serialize access due to concurrent update".into(),
        })
    } else {
        let outcome = sim.dispatch(client.ip(), service, method, args);
        if outcome.is_ok() && !writes.is_empty() {
            sim.commits += 1;
            let commit = sim.commits;
            for r in writes {
                sim.last_write.insert(r, commit);
            }
        }
        outcome
    };
    if plan.is_some_and(|(_, p)| p.killed) {
        sim.stats.killed += 1;
        return None;
    }
    let called = format!(
        "{}.{}",
        args.get(3).and_then(Value::as_str).unwrap_or(""),
        args.get(4).and_then(Value::as_str).unwrap_or("")
    );
    if method == "execute_kw"
        && sim.faults.commit_then_drop > 0
        && sim.faults.drop_only.as_ref().is_none_or(|only| *only == called)
    {
        sim.faults.commit_then_drop -= 1;
        sim.stats.dropped += 1;
        return None;
    }
    sim.stats.answered += 1;
    Some(outcome)
}

/// `POST /xmlrpc/2/<service>`: the same services over XML-RPC, errors as faults with integer
/// codes ([`xmlrpc`]). A method returning None has committed before its answer fails to
/// marshal (fault 1): the trap ODOO.md warns of.
async fn xmlrpc_2(
    State(sim): State<Shared>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    axum::extract::Path(service): axum::extract::Path<String>,
    body: Bytes,
) -> Response {
    let answer = match xmlrpc::parse_call(&body) {
        Err(error) => Some(xmlrpc::fault(1, &xmlrpc::traceback("xml.parsers.expat.ExpatError", &error))),
        Ok((method, args)) => execute(&sim, client, &service, &method, &args).await.map(|outcome| match outcome {
            Ok(value) => xmlrpc::response(&value),
            Err(fault) => xmlrpc::fault_of(&fault),
        }),
    };
    match answer {
        Some(xml) => ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], xml).into_response(),
        None => killed(),
    }
}

/// The resolution of tokio's timer.
const TIMER_TICK: std::time::Duration = std::time::Duration::from_millis(1);

/// Waits until `end`, to a tenth of a millisecond. Tokio's timer fires at the first
/// millisecond tick at or after a deadline, which would make a 5 ms call last 5.5 on average
/// (a tenth more than the model says); so the last tick is slept on a blocking thread, whose
/// sleep is precise. On virtual time the timer alone is exact.
#[allow(clippy::disallowed_methods)] // a modelled service time, not a wait on a condition
async fn serve_until(end: tokio::time::Instant, virtual_time: bool) {
    if virtual_time {
        return tokio::time::sleep_until(end).await;
    }
    tokio::time::sleep_until(end.checked_sub(TIMER_TICK).unwrap_or(end)).await;
    let now = tokio::time::Instant::now();
    if end > now {
        let rest = end - now;
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

/// Methods that write nothing.
const READS: [&str; 8] = [
    "read",
    "search",
    "search_read",
    "search_count",
    "context_get",
    "name_search",
    "fields_get",
    "check_access_rights",
];

/// The records an `execute_kw` writes, named `model#<id or reference>` from its first
/// argument (ids, one id, or a reference): a plain call's, or an inbox batch's transactions'.
/// New records (`create`, `load`) conflict with nothing.
fn written_records(service: &str, method: &str, args: &[Value]) -> Vec<String> {
    fn of(model: &str, method: &str, positional: Option<&Value>) -> Vec<String> {
        if READS.contains(&method) || method == "create" || method == "load" {
            return Vec::new();
        }
        match positional.and_then(|p| p.get(0)) {
            Some(Value::Array(ids)) => ids.iter().map(|id| format!("{model}#{id}")).collect(),
            Some(one @ (Value::Number(_) | Value::Object(_))) => vec![format!("{model}#{one}")],
            _ => Vec::new(),
        }
    }
    if service != "object" || method != "execute_kw" {
        return Vec::new();
    }
    let text = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or("");
    if text(3) == "holdfast.inbox" && text(4) == "apply_batch" {
        let items = args.get(5).and_then(|p| p.get(0)).and_then(Value::as_array);
        return items
            .into_iter()
            .flatten()
            .flat_map(|item| {
                let field = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                of(&field("model"), &field("method"), item.get("args"))
            })
            .collect();
    }
    of(text(3), text(4), args.get(5))
}

/// Operations in a call: an inbox batch's transactions, otherwise one.
fn operations(service: &str, method: &str, args: &[Value]) -> u32 {
    let inbox = service == "object"
        && method == "execute_kw"
        && args.get(3).and_then(Value::as_str) == Some("holdfast.inbox")
        && args.get(4).and_then(Value::as_str) == Some("apply_batch");
    if inbox {
        args.get(5).and_then(|p| p.get(0)).and_then(Value::as_array).map_or(1, |items| items.len().max(1) as u32)
    } else {
        1
    }
}

/// The answer of a worker killed at `limit_time_real`: the connection breaks, nothing arrives.
fn killed() -> Response {
    struct Broken;
    impl http_body::Body for Broken {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            std::task::Poll::Ready(Some(Err(std::io::Error::other("the worker was killed at limit_time_real"))))
        }
    }
    Response::new(axum::body::Body::new(Broken))
}

/// The chance that a call fails to serialize when `k` of its records were committed by others
/// while it ran: it rises with the concurrent writers.
pub fn failure_chance(rate: f64, k: usize) -> f64 {
    1.0 - (1.0 - rate.clamp(0.0, 1.0)).powi(k.min(i32::MAX as usize) as i32)
}

fn operational_error(database: &str) -> Fault {
    Fault {
        name: "psycopg2.OperationalError",
        message: format!(
            "connection to server at \"localhost\" (127.0.0.1), port 5432 failed: Connection refused (database {database:?})"
        ),
    }
}

impl Sim {
    /// Replays a primary's committed calls on this double's seed, in order.
    fn replay(&mut self, calls: &[Value]) {
        let nobody = std::net::IpAddr::from([0, 0, 0, 0]);
        for args in calls {
            let args = args.as_array().cloned().unwrap_or_default();
            // A call that committed on the primary commits here: same seed, same order.
            let replayed = self.dispatch(nobody, "object", "execute_kw", &args);
            debug_assert!(replayed.is_ok(), "a replayed commit failed: {replayed:?}");
        }
    }

    /// Whether a call that began at commit `snapshot` and writes `records` fails to serialize:
    /// each record another call committed since is a chance of failing that Odoo's retries did
    /// not absorb.
    fn conflicts(&mut self, records: &[String], snapshot: u64) -> bool {
        let k = records.iter().filter(|r| self.last_write.get(*r).is_some_and(|c| *c > snapshot)).count();
        let rate = self.faults.serialization_rate.unwrap_or(self.cfg.serialization_rate);
        k > 0 && rand::Rng::random::<f64>(&mut self.rng) < failure_chance(rate, k)
    }

    fn dispatch(
        &mut self,
        client: std::net::IpAddr,
        service: &str,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Fault> {
        match (service, method) {
            ("common", "version") => Ok(version_value(self.cfg.version)),
            ("common", "authenticate" | "login") => {
                let db = args.first().and_then(Value::as_str).unwrap_or("");
                self.check_db(db)?;
                // Odoo's cooldown: after 5 failures from an address, its logins are refused
                // (AccessDenied, which common.authenticate answers as false) until 60 s have
                // passed since the last failure; a failure after that starts it again.
                let now = tokio::time::Instant::now();
                if let Some((failures, last)) = self.login_failures.get(&client)
                    && *failures >= LOGIN_COOLDOWN_AFTER
                    && now.duration_since(*last) < LOGIN_COOLDOWN
                {
                    return Ok(json!(false));
                }
                let ok = args.get(1).and_then(Value::as_str) == Some(self.cfg.login.as_str())
                    && args.get(2).and_then(Value::as_str) == Some(self.cfg.api_key.as_str());
                if ok {
                    self.login_failures.remove(&client);
                    Ok(json!(HUB_UID))
                } else {
                    let entry = self.login_failures.entry(client).or_insert((0, now));
                    *entry = (entry.0 + 1, now);
                    Ok(json!(false))
                }
            }
            ("object", "execute_kw") => {
                let db = args.first().and_then(Value::as_str).unwrap_or("");
                self.check_db(db)?;
                let uid = args.get(1).and_then(Value::as_i64);
                let key = args.get(2).and_then(Value::as_str);
                if uid != Some(HUB_UID) || key != Some(self.cfg.api_key.as_str()) {
                    return Err(Fault { name: "odoo.exceptions.AccessDenied", message: "Access Denied".into() });
                }
                let model = args.get(3).and_then(Value::as_str).unwrap_or("");
                let method = args.get(4).and_then(Value::as_str).unwrap_or("");
                let positional = args.get(5).and_then(Value::as_array).cloned().unwrap_or_default();
                let kwargs = args.get(6).and_then(Value::as_object).cloned().unwrap_or_default();
                let result = if model == "holdfast.inbox" && !self.cfg.inbox_installed {
                    Err(Fault::not_found(format!("Object {model} doesn't exist")))
                } else if model == "holdfast.inbox" && method == "apply_batch" {
                    self.inbox.apply_batch(&mut self.db, &positional, &kwargs)
                } else {
                    // Like Odoo, a failed call leaves nothing behind.
                    let result = self.db.savepoint(|db| db.call(model, method, &positional, &kwargs))?;
                    if !READS.contains(&method) {
                        self.calls.push(json!({"model": model, "method": method, "args": positional}));
                    }
                    Ok(result)
                };
                if result.is_ok() && !READS.contains(&method) {
                    self.journal.push(Value::Array(args.to_vec()));
                }
                result
            }
            _ => Err(Fault::not_found(format!("No such service or method: {service}.{method}"))),
        }
    }

    fn check_db(&self, db: &str) -> Result<(), Fault> {
        if self.faults.db_down {
            return Err(operational_error(db));
        }
        if db != self.cfg.database {
            return Err(Fault {
                name: "psycopg2.OperationalError",
                message: format!("connection to server failed: FATAL:  database \"{db}\" does not exist"),
            });
        }
        Ok(())
    }
}

async fn applied(State(sim): State<Shared>) -> Json<Value> {
    let sim = sim.lock().expect("sim lock");
    Json(json!({
        "applied": sim.inbox.applied,
        "calls": sim.calls,
        "commits": sim.journal.len(),
        "newest_epoch": sim.inbox.newest_epoch,
        "refused_epochs": sim.inbox.refused,
    }))
}

/// Sets the capacity model (`null` for none); requests from now on are planned by it.
async fn set_capacity(State(sim): State<Shared>, Json(cap): Json<Option<capacity::Capacity>>) -> Json<Value> {
    let mut sim = sim.lock().expect("sim lock");
    sim.cfg.capacity = cap;
    sim.pool = cap.map(capacity::Pool::new);
    sim.started = tokio::time::Instant::now();
    sim.stats = Stats::default();
    Json(json!({"capacity": cap}))
}

#[derive(Debug, Deserialize)]
struct SnapshotQuery {
    as_of: Option<usize>,
}

/// This double's data as of its `as_of`-th commit (all of them by default).
async fn snapshot_of(State(sim): State<Shared>, Query(q): Query<SnapshotQuery>) -> Response {
    let sim = sim.lock().expect("sim lock");
    let total = sim.journal.len();
    let as_of = q.as_of.unwrap_or(total);
    if as_of > total {
        let text = format!("as_of {as_of}: this double has committed {total} calls");
        return (StatusCode::BAD_REQUEST, text).into_response();
    }
    Json(Snapshot {
        manufacturing_orders: sim.cfg.manufacturing_orders,
        inbox_installed: sim.cfg.inbox_installed,
        as_of,
        calls: sim.journal[..as_of].to_vec(),
    })
    .into_response()
}

async fn stats(State(sim): State<Shared>) -> Json<Stats> {
    Json(sim.lock().expect("sim lock").stats.clone())
}

async fn set_faults(State(sim): State<Shared>, Json(faults): Json<Faults>) -> Json<Value> {
    let mut sim = sim.lock().expect("sim lock");
    sim.faults = faults;
    sim.unhang.notify_waiters();
    Json(json!({"faults": sim.faults}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_written_as_pythons_json_dumps_writes_it() {
        let v = json!({"result": {"name": "Bolt \"M8\"\nø €", "del": "\u{7f}", "qty": 5.0, "ids": [1, 2]}, "id": 1, "jsonrpc": "2.0"});
        assert_eq!(
            python_json(&v),
            r#"{"jsonrpc": "2.0", "id": 1, "result": {"name": "Bolt \"M8\"\n\u00f8 \u20ac", "del": "\u007f", "ids": [1, 2], "qty": 5.0}}"#
        );
        assert_eq!(python_json(&json!({"emoji": "\u{1F600}"})), r#"{"emoji": "\ud83d\ude00"}"#);
    }
}
