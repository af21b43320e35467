//! The hub's HTTP API (axum), under `/api/v1`. Errors are JSON with a stable code and a
//! sentence.
//!
//! Reads of plants and status are open (role-based access on every route comes with the
//! dashboard); the quarantine and token routes take `Authorization: Bearer <token>` (see
//! [`crate::tokens`]): listing needs `viewer`, retry and park `operator`, making tokens `admin`.
//! Every retry and park is audited with the token's name as the actor.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crate::shared::{Alarm, Shared, now_ms};
use crate::store::{Release, Selection, Store, StoreError};
use crate::tokens::{Role, TokenError, Tokens};

/// One plant in `GET /api/v1/plants`.
#[derive(Debug, Serialize)]
pub struct PlantView {
    pub plant: String,
    pub connected: bool,
    /// The plant as the hub sees it: `manual_offline` or `isolated` while plant IT's manual
    /// state holds (nothing more is applied for it), else `online` while its session is up,
    /// else `offline`.
    pub mode: &'static str,
    /// Plant IT's manual state, from the plant's heartbeats (kept across hub restarts).
    pub manual: Option<holdfast_protocol::ManualNotice>,
    /// When the last heartbeat arrived, and what it said of the gateway and its journal.
    pub last_heartbeat_ms: Option<i64>,
    pub health: Option<holdfast_protocol::Health>,
    pub gateway_journal: Option<holdfast_protocol::JournalFigures>,
    /// The plant's own view of Odoo and of its hub link, with the changes it saw while the hub
    /// could not hear it (from the heartbeat; absent when the gateway does not probe Odoo).
    pub diagnosis: Option<holdfast_protocol::Diagnosis>,
    pub journal_id: String,
    pub epoch: u32,
    pub stored_seq: u64,
    pub applied_seq: u64,
    pub quarantined: u64,
}

/// What the operations routes need.
#[derive(Debug)]
pub struct Ops<S> {
    pub shared: Arc<Shared<S>>,
    pub tokens: Tokens,
    /// Odoo's settings from the config: a failover's target is checked with them.
    pub odoo: Option<crate::config::OdooConfig>,
}

pub fn router<S: Store>(shared: Arc<Shared<S>>, tokens: Tokens, odoo: Option<crate::config::OdooConfig>) -> Router {
    let ops = Arc::new(Ops { shared: shared.clone(), tokens, odoo });
    Router::new()
        .route("/api/v1/plants", get(plants::<S>))
        .route("/api/v1/status", get(status::<S>))
        .route("/metrics", get(metrics::<S>))
        .with_state(shared)
        .merge(
            Router::new()
                .route("/api/v1/tokens", post(create_token::<S>))
                .route("/api/v1/quarantine", get(list_quarantine::<S>))
                .route("/api/v1/quarantine/retry", post(retry::<S>))
                .route("/api/v1/quarantine/park", post(park::<S>))
                .route("/api/v1/plants/{plant}/revoke", post(revoke::<S>))
                .route("/api/v1/incidents/failover", post(failover::<S>))
                .route("/api/v1/reopening", get(reopening_view::<S>))
                .route("/api/v1/reopening/{verb}", post(reopening_verb::<S>))
                .route("/api/v1/plants/{plant}/{verb}", post(plant_verb::<S>))
                .with_state(ops),
        )
        .fallback(not_found)
}

/// The caller's token name, if its role is at least `need`.
fn authorize<S>(ops: &Ops<S>, headers: &HeaderMap, need: Role) -> Result<String, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "this route needs Authorization: Bearer <token>".into())
        })?;
    match ops.tokens.authenticate(bearer)? {
        None => Err(ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "this token is not known to the hub".into())),
        Some((name, role)) if role < need => Err(ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {name:?} has the role {}; this needs {}", role.as_str(), need.as_str()),
        )),
        Some((name, _)) => Ok(name),
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Refused(m) => ApiError(StatusCode::BAD_REQUEST, "refused", m),
            other => ApiError(StatusCode::SERVICE_UNAVAILABLE, "tokens_unavailable", other.to_string()),
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: Role,
}

async fn create_token<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    headers: HeaderMap,
    Json(req): Json<NewToken>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let by = authorize(&ops, &headers, Role::Admin)?;
    let token = ops.tokens.create(&req.name, req.role, false, now_ms())?;
    ops.shared
        .store
        .append_audit(crate::audit::AuditEntry {
            at_ms: now_ms(),
            actor: format!("token:{by}"),
            action: "api_token_created".into(),
            target: format!("token:{}", req.name),
            reason: format!("role {}", req.role.as_str()),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"name": req.name, "role": req.role, "token": token}))))
}

/// The reason every state-changing route requires, for the audit trail; trimmed.
fn required_reason(reason: &str) -> Result<String, ApiError> {
    match reason.trim() {
        "" => Err(ApiError(StatusCode::BAD_REQUEST, "reason_required", "say why, for the audit trail: reason".into())),
        reason => Ok(reason.to_owned()),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    reason: String,
}

/// Revokes every certificate issued to a plant until now (admin): the revocation is stored and
/// audited in one transaction; the sync server closes the plant's live connection at its next
/// reread of the revocations and refuses those certificates from then on.
async fn revoke<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    axum::extract::Path(plant): axum::extract::Path<String>,
    headers: HeaderMap,
    Json(req): Json<RevokeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let by = authorize(&ops, &headers, Role::Admin)?;
    if !crate::certs::valid_plant_id(&plant) {
        let message = format!("plant id {plant:?} must be 1 to 64 characters of a-z, 0-9 and '-'");
        return Err(ApiError(StatusCode::BAD_REQUEST, "bad_plant", message));
    }
    let reason = required_reason(&req.reason)?;
    let now = now_ms();
    let revocation = crate::store::Revocation {
        plant: plant.clone(),
        issued_before_ms: now,
        at_ms: now,
        actor: format!("token:{by}"),
        reason,
    };
    ops.shared.store.revoke(revocation).await?;
    let within_s = crate::sync::REVOCATION_POLL.as_secs() + 1;
    Ok(Json(json!({"plant": plant, "issued_before_ms": now, "closed_within_s": within_s})))
}

/// The coordinator, once the hub has started it.
fn coord<S>(ops: &Ops<S>) -> Result<Arc<crate::reopening::Coord>, ApiError> {
    ops.shared.coord.get().cloned().ok_or_else(|| {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "starting", "the hub's coordinator is starting".into())
    })
}

impl From<crate::coordinator::VerbError> for ApiError {
    fn from(e: crate::coordinator::VerbError) -> Self {
        use crate::coordinator::VerbError as V;
        let (status, code) = match &e {
            V::ReasonRequired => (StatusCode::BAD_REQUEST, "reason_required"),
            V::NoPlan => (StatusCode::CONFLICT, "no_plan"),
            V::NotNow { .. } => (StatusCode::CONFLICT, "not_now"),
            V::UnknownPlant(_) => (StatusCode::NOT_FOUND, "unknown_plant"),
            V::BadWave(_) => (StatusCode::BAD_REQUEST, "bad_wave"),
            V::Invalid(_) => (StatusCode::CONFLICT, "refused"),
        };
        ApiError(status, code, e.to_string())
    }
}

/// Incidents, the reopening plan with its history and last gate decision, every plant's state,
/// wave and ETA, and the drain limit (viewer).
async fn reopening_view<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&ops, &headers, Role::Viewer)?;
    Ok(Json(coord(&ops)?.view().await?))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VerbRequest {
    #[serde(default)]
    reason: String,
    /// `cap`: transactions per second (absent or null lifts the cap).
    #[serde(default)]
    per_second: Option<f64>,
    /// `move`: the wave, from 1.
    #[serde(default)]
    wave: Option<usize>,
}

/// `start`, `pause`, `resume`, `promote`, `abort`, `retry` (operator): answered once stored and
/// audited with the token's name.
async fn reopening_verb<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    axum::extract::Path(verb): axum::extract::Path<String>,
    headers: HeaderMap,
    Json(req): Json<VerbRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let by = format!("token:{}", authorize(&ops, &headers, Role::Operator)?);
    let reason = required_reason(&req.reason)?;
    let coord = coord(&ops)?;
    let run =
        |f: fn(&mut crate::coordinator::Coordinator, i64, &str, &str) -> Result<(), crate::coordinator::VerbError>| {
            let (by, reason) = (by.clone(), reason.clone());
            move |c: &mut crate::coordinator::Coordinator, now: i64| f(c, now, &by, &reason)
        };
    match verb.as_str() {
        "start" => coord.verb(run(|c, n, b, r| c.start(n, b, r))).await?,
        "pause" => coord.verb(run(|c, n, b, r| c.pause(n, b, r))).await?,
        "resume" => coord.verb(run(|c, n, b, r| c.resume(n, b, r))).await?,
        "promote" => coord.verb(run(|c, n, b, r| c.promote(n, b, r))).await?,
        "abort" => coord.verb(run(|c, n, b, r| c.abort(n, b, r))).await?,
        "retry" => coord.verb(run(|c, n, b, r| c.retry(n, b, r))).await?,
        "arm" => coord.verb(run(|c, n, b, r| c.arm(n, b, r, false).map(|_| ()))).await?,
        other => {
            let message = format!("unknown verb {other:?}: start, pause, resume, promote, abort, retry or arm");
            return Err(ApiError(StatusCode::NOT_FOUND, "unknown_verb", message));
        }
    }
    Ok(Json(coord.view().await?))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverRequest {
    odoo_url: String,
    /// RFC 3339: up to when the disaster-recovery Odoo holds the primary's data.
    recovery_point: String,
    /// Seconds before the recovery point from which applied transactions are applied again.
    #[serde(default = "default_margin_s")]
    margin_s: u64,
    #[serde(default)]
    reason: String,
}

fn default_margin_s() -> u64 {
    300
}

/// Declares a failover (admin): `odoo check`'s ladder must pass on the target first; then a new
/// fencing epoch, every plant held, the old endpoint fenced, and a plan armed whose first step
/// applies again what was applied from the recovery point less the margin.
async fn failover<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    headers: HeaderMap,
    Json(req): Json<FailoverRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let by = format!("token:{}", authorize(&ops, &headers, Role::Admin)?);
    let reason = required_reason(&req.reason)?;
    let rp = time::OffsetDateTime::parse(&req.recovery_point, &time::format_description::well_known::Rfc3339).map_err(
        |e| {
            let message = format!("recovery_point {:?} is not an RFC 3339 time ({e})", req.recovery_point);
            ApiError(StatusCode::BAD_REQUEST, "bad_recovery_point", message)
        },
    )?;
    let rp_ms = (rp.unix_timestamp_nanos() / 1_000_000) as i64;
    let url = req.odoo_url.trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        let message = format!("odoo_url {url:?} must start with http:// or https://");
        return Err(ApiError(StatusCode::BAD_REQUEST, "bad_url", message));
    }
    let Some(odoo) = &ops.odoo else {
        return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "starting", "the hub is starting".into()));
    };
    let target = crate::config::OdooConfig { url: url.clone(), ..odoo.clone() };
    let checked = crate::odoo_check::check(&target).await;
    if checked.exit_code != 0 {
        let message = format!("the preflight on {url} failed, nothing changed:\n{}", checked.text());
        return Err(ApiError(StatusCode::CONFLICT, "preflight_failed", message));
    }
    let current = ops.shared.odoo_url.borrow().0.clone();
    let coord = coord(&ops)?;
    let margin_ms = (req.margin_s as i64).saturating_mul(1000);
    coord.verb(|c, now| c.failover(now, &by, &current, &url, rp_ms, margin_ms, &reason).map(|_| ())).await?;
    Ok(Json(coord.view().await?))
}

/// `hold`, `release`, `cap` (`per_second`), `move` (`wave`) one plant (operator).
async fn plant_verb<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    axum::extract::Path((plant, verb)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    Json(req): Json<VerbRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let by = format!("token:{}", authorize(&ops, &headers, Role::Operator)?);
    let reason = required_reason(&req.reason)?;
    let coord = coord(&ops)?;
    match verb.as_str() {
        "hold" => coord.verb(|c, now| c.hold(now, &by, &plant, &reason)).await?,
        "release" => coord.verb(|c, now| c.release(now, &by, &plant, &reason)).await?,
        "cap" => coord.verb(|c, now| c.cap(now, &by, &plant, req.per_second, &reason)).await?,
        "move" => {
            let wave = req.wave.ok_or_else(|| {
                ApiError(StatusCode::BAD_REQUEST, "wave_required", "say which wave (from 1): wave".into())
            })?;
            coord.verb(|c, now| c.move_plant(now, &by, &plant, wave, &reason)).await?
        }
        other => {
            let message = format!("unknown verb {other:?}: hold, release, cap or move");
            return Err(ApiError(StatusCode::NOT_FOUND, "unknown_verb", message));
        }
    }
    Ok(Json(coord.view().await?["plants"][&plant].clone()))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    plant: Option<String>,
    order_key: Option<String>,
    error_name: Option<String>,
    id: Option<uuid::Uuid>,
    limit: Option<usize>,
}

async fn list_quarantine<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&ops, &headers, Role::Viewer)?;
    let sel =
        Selection { plant: q.plant, order_key: q.order_key, error_name: q.error_name, ids: q.id.into_iter().collect() };
    let rows = ops.shared.store.quarantine_list(sel, q.limit.unwrap_or(1000).min(10_000)).await?;
    Ok(Json(json!({"quarantined": rows})))
}

/// A retry or park: what it applies to, and why (for the audit trail).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseRequest {
    #[serde(default)]
    plant: Option<String>,
    #[serde(default)]
    order_key: Option<String>,
    #[serde(default)]
    error_name: Option<String>,
    #[serde(default)]
    ids: Vec<uuid::Uuid>,
    reason: String,
}

async fn retry<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    headers: HeaderMap,
    Json(req): Json<ReleaseRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    release(&ops, &headers, req, Release::Retry).await
}

async fn park<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    headers: HeaderMap,
    Json(req): Json<ReleaseRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    release(&ops, &headers, req, Release::Park).await
}

async fn release<S: Store>(
    ops: &Ops<S>,
    headers: &HeaderMap,
    req: ReleaseRequest,
    action: Release,
) -> Result<Json<serde_json::Value>, ApiError> {
    let by = authorize(ops, headers, Role::Operator)?;
    let reason = required_reason(&req.reason)?;
    let selection = Selection { plant: req.plant, order_key: req.order_key, error_name: req.error_name, ids: req.ids };
    if selection.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "selection_required",
            "name the transactions: ids, plant, order_key or error_name".into(),
        ));
    }
    let shared = &ops.shared;
    let released = shared.store.release(selection, action, format!("token:{by}"), reason, now_ms()).await?;
    if !released.rows.is_empty() {
        shared.quarantined.send_modify(|g| *g += 1);
        shared.released.send_modify(|g| *g += 1);
        shared.stored.notify_one();
    }
    if !released.moved.is_empty() {
        shared.applied.send_modify(|g| *g += 1);
    }
    let verb = match action {
        Release::Retry => "retried",
        Release::Park => "parked",
    };
    Ok(Json(json!({"action": verb, "count": released.rows.len(), "transactions": released.rows})))
}

struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": {"code": self.1, "message": self.2}}))).into_response()
    }
}

impl From<crate::reopening::NotStored> for ApiError {
    fn from(e: crate::reopening::NotStored) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "not_stored", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
    }
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "not_found", "no such route; see /api/v1/plants and /api/v1/status".into())
}

async fn plants<S: Store>(State(shared): State<Arc<Shared<S>>>) -> Result<Json<serde_json::Value>, ApiError> {
    let rows = shared.store.plants().await?;
    let manuals: std::collections::HashMap<String, holdfast_protocol::ManualNotice> =
        shared.store.plant_manuals().await?.into_iter().collect();
    let connections = shared.connections.lock().expect("connections lock").clone();
    let heartbeats = shared.heartbeats.lock().expect("heartbeats lock").clone();
    let plants: Vec<PlantView> = rows
        .into_iter()
        .map(|r| {
            let connected = connections.contains_key(&r.plant);
            let manual = manuals.get(&r.plant).cloned();
            let beat = heartbeats.get(&r.plant);
            PlantView {
                connected,
                mode: match (&manual, connected) {
                    (Some(m), _) if m.kind == "isolated" => "isolated",
                    (Some(_), _) => "manual_offline",
                    (None, true) => "online",
                    (None, false) => "offline",
                },
                manual,
                last_heartbeat_ms: beat.map(|(at, _)| *at),
                health: beat.map(|(_, b)| b.health.clone()),
                gateway_journal: beat.map(|(_, b)| b.journal.clone()),
                diagnosis: beat.and_then(|(_, b)| b.diagnosis.clone()),
                journal_id: r.journal_id.to_string(),
                epoch: r.state.epoch,
                stored_seq: r.state.stored_seq,
                applied_seq: r.state.applied_seq,
                quarantined: r.quarantined,
                plant: r.plant,
            }
        })
        .collect();
    Ok(Json(json!({ "plants": plants })))
}

#[derive(Debug, Serialize)]
struct StatusView {
    /// Odoo as the hub's own probe sees it.
    odoo: crate::probe::OdooView,
    alarms: Vec<Alarm>,
    plants_connected: usize,
}

/// Every metric in Prometheus text format (see [`crate::metrics`]).
async fn metrics<S: Store>(State(shared): State<Arc<Shared<S>>>) -> Result<Response, ApiError> {
    let text = crate::metrics::render(&shared).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

async fn status<S: Store>(State(shared): State<Arc<Shared<S>>>) -> Json<serde_json::Value> {
    let view = StatusView {
        odoo: shared.odoo.lock().expect("odoo view lock").clone(),
        alarms: shared.alarms(),
        plants_connected: shared.connections.lock().expect("connections lock").len(),
    };
    Json(json!(view))
}
