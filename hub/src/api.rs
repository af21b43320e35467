//! The hub's HTTP API (axum), under `/api/v1`, described by the OpenAPI 3 document it serves at
//! `/api/v1/openapi.json`. Every route is registered through [`Routes::add`], which takes the
//! route's path and methods from its `#[utoipa::path]` description and puts the route's role
//! into both the document (`x-holdfast-role`) and the guard in front of it: the router and
//! the document cannot drift apart, and no route goes unguarded.
//!
//! Access: `Authorization: Bearer <token>` (see [`crate::tokens`]); roles `viewer` (reads),
//! `operator` (quarantine and reopening verbs), `admin` (tokens, failover, revocation), each
//! including the ones before. No token or an unknown one is 401, too small a role 403. Failed
//! authentications are rate-limited per client address (429 once the budget is spent). Errors
//! are JSON with a stable code and a sentence; collections are paged (`limit`, and `after` from
//! the previous page's `next`). State changes are audited with the token's name as the actor.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{OpenApi, ToSchema};

use crate::shared::{Alarm, Shared, now_ms};
use crate::store::{AuditFilter, Release, Selection, Store, StoreError, TxnQuery};
use crate::tokens::{Role, TokenError, Tokens};

/// What the routes need.
#[derive(Debug)]
pub struct Ops<S> {
    pub shared: Arc<Shared<S>>,
    pub tokens: Tokens,
    /// Odoo's settings from the config: a failover's target is checked with them.
    pub odoo: Option<crate::config::OdooConfig>,
    failures: Failures,
}

/// Who is calling: the guard puts it in the request for the handler.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
}

impl Caller {
    fn actor(&self) -> String {
        format!("token:{}", self.name)
    }
}

/// Failed authentications per client address: a budget of [`FAILURES_PER_MINUTE`] a minute
/// (governor's keyed limiter); an address past it gets 429 for every request, checked or not,
/// until the budget refills.
struct Failures {
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failures").finish_non_exhaustive()
    }
}

/// Failed authentications a client address may make a minute.
pub const FAILURES_PER_MINUTE: u32 = 20;

impl Failures {
    fn new() -> Self {
        let quota = governor::Quota::per_minute(NonZeroU32::new(FAILURES_PER_MINUTE).expect("non-zero"));
        Self { limiter: governor::RateLimiter::keyed(quota), blocked: Mutex::new(HashMap::new()) }
    }

    /// How long `ip` must still wait, if it spent its budget.
    fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let mut blocked = self.blocked.lock().expect("failures lock");
        let now = Instant::now();
        blocked.retain(|_, until| *until > now);
        blocked.get(&ip).map(|until| *until - now)
    }

    /// Counts a failed authentication; past the budget, the address is blocked and this
    /// answers how long for.
    fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let over = self.limiter.check_key(&ip).err().map(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            let wait = wait.max(Duration::from_secs(1));
            self.blocked.lock().expect("failures lock").insert(ip, Instant::now() + wait);
            wait
        });
        self.limiter.retain_recent();
        over
    }
}

fn too_many(ip: IpAddr, wait: Duration) -> ApiError {
    let message = format!(
        "too many failed authentications from {ip}: at most {FAILURES_PER_MINUTE} a minute; try again in {} s",
        wait.as_secs() + 1
    );
    ApiError(StatusCode::TOO_MANY_REQUESTS, "too_many_failures", message)
}

/// The router and the document, built together.
struct Routes<S> {
    ops: Arc<Ops<S>>,
    router: Router<Arc<Ops<S>>>,
    doc: utoipa::openapi::OpenApi,
}

impl<S: Store> Routes<S> {
    /// Adds the route `P` describes (path and methods from its `#[utoipa::path]`), behind a
    /// guard requiring `role`.
    fn add<P: utoipa::Path>(mut self, role: Role, handler: MethodRouter<Arc<Ops<S>>>) -> Self {
        let path = P::path();
        let mut op = P::operation();
        let mut ext = utoipa::openapi::extensions::Extensions::default();
        ext.insert("x-holdfast-role".into(), json!(role.as_str()));
        op.extensions = Some(ext);
        op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new())]);
        let error = |text: &str| {
            utoipa::openapi::ResponseBuilder::new()
                .description(text)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (code, text) in [
            ("401", "no token, or one the hub does not know"),
            ("403", "the token's role is too small for this route"),
            ("429", "too many failed authentications from this address"),
            ("503", "the store is unavailable, or the hub is starting"),
        ] {
            op.responses.responses.entry(code.into()).or_insert_with(|| error(text).into());
        }
        self.doc.paths.add_path_operation(&path, P::methods(), op);
        let guard = axum::middleware::from_fn_with_state((self.ops.clone(), role), guard::<S>);
        self.router = self.router.route(&path, handler.layer(guard));
        self
    }
}

/// `[api] trusted_proxies`: the reverse proxies whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

/// The client's address: the peer's, unless the peer is a trusted proxy; then the nearest
/// address in `X-Forwarded-For` (read from the right) that is not a trusted proxy itself. A
/// client cannot pose as another: whatever it writes into the header stands left of what the
/// trusted proxies appended.
fn client_ip(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).map(str::trim).collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return ip,
            // Something unreadable: stop believing the header there.
            Err(_) => break,
        }
    }
    peer
}

/// Authenticates the caller and checks its role, or answers 401, 403 or 429.
async fn guard<S: Store>(
    State((ops, need)): State<(Arc<Ops<S>>, Role)>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let trusted = req.extensions().get::<TrustedProxies>().map_or(&[][..], |t| t.0.as_slice());
    let ip = client_ip(peer, req.headers(), trusted);
    if let Some(wait) = ops.failures.blocked(ip) {
        return Err(too_many(ip, wait));
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = presented else {
        if let Some(wait) = ops.failures.failed(ip) {
            return Err(too_many(ip, wait));
        }
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs Authorization: Bearer <token>".into(),
        ));
    };
    let caller = match ops.tokens.authenticate(token)? {
        None => {
            if let Some(wait) = ops.failures.failed(ip) {
                return Err(too_many(ip, wait));
            }
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this token is not known to the hub".into(),
            ));
        }
        Some((name, role)) if role < need => {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token {name:?} has the role {}; this needs {}", role.as_str(), need.as_str()),
            ));
        }
        Some((name, _)) => Caller { name },
    };
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Holdfast hub API",
        description = "Where every plant stands, the incident and the reopening plan, quarantine, failover, tokens and the audit trail. Every route needs a bearer token; its role is in x-holdfast-role."
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        StatusView,
        PlantView,
        PlantPage,
        PlantDetail,
        HistorySample,
        BacklogHistories,
        crate::store::JournalRow,
        crate::store::TxnRow,
        TxnPage,
        crate::store::QuarantinedRow,
        QuarantinePage,
        ReleaseRequest,
        Released,
        VerbRequest,
        PlantVerb,
        PlanVerb,
        FailoverRequest,
        NewToken,
        CreatedToken,
        TokenView,
        TokenList,
        AuditView,
        AuditPage,
        RevokeRequest,
        Revoked,
    ))
)]
struct Doc;

/// The API's router, serving its OpenAPI document at `/api/v1/openapi.json`.
pub fn router<S: Store>(shared: Arc<Shared<S>>, tokens: Tokens, odoo: Option<crate::config::OdooConfig>) -> Router {
    let ops = Arc::new(Ops { shared, tokens, odoo, failures: Failures::new() });
    let mut doc = Doc::openapi();
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    let routes = Routes { ops: ops.clone(), router: Router::new(), doc }
        .add::<__path_status>(Role::Viewer, get(status::<S>))
        .add::<__path_plants>(Role::Viewer, get(plants::<S>))
        .add::<__path_plant>(Role::Viewer, get(plant::<S>))
        .add::<__path_backlog_history>(Role::Viewer, get(backlog_history::<S>))
        .add::<__path_plant_verb>(Role::Operator, post(plant_verb::<S>))
        .add::<__path_revoke>(Role::Admin, post(revoke::<S>))
        .add::<__path_transactions>(Role::Viewer, get(transactions::<S>))
        .add::<__path_transaction>(Role::Viewer, get(transaction::<S>))
        .add::<__path_list_quarantine>(Role::Viewer, get(list_quarantine::<S>))
        .add::<__path_retry>(Role::Operator, post(retry::<S>))
        .add::<__path_park>(Role::Operator, post(park::<S>))
        .add::<__path_reopening_view>(Role::Viewer, get(reopening_view::<S>))
        .add::<__path_reopening_verb>(Role::Operator, post(reopening_verb::<S>))
        .add::<__path_failover>(Role::Admin, post(failover::<S>))
        .add::<__path_list_tokens>(Role::Admin, get(list_tokens::<S>))
        .add::<__path_create_token>(Role::Admin, post(create_token::<S>))
        .add::<__path_remove_token>(Role::Admin, delete(remove_token::<S>))
        .add::<__path_audit>(Role::Viewer, get(audit::<S>))
        .add::<__path_metrics>(Role::Viewer, get(metrics::<S>));
    // Serialized once: the document does not change while the hub runs.
    let doc = axum::body::Bytes::from(serde_json::to_vec(&routes.doc).expect("the document serializes"));
    routes
        .router
        // A follower forwards what only the leader knows (outside every route's guard: the
        // leader checks the token).
        .route_layer(axum::middleware::from_fn_with_state(ops.clone(), to_leader::<S>))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
        .route("/", get(crate::dashboard::page))
        .route("/healthz", get(healthz::<S>))
        .route("/readyz", get(readyz::<S>))
        .fallback(not_found)
        .with_state(ops)
}

/// How a follower reaches the leader's API (`cluster.ca` trusted when it serves HTTPS).
#[derive(Clone, Debug)]
pub struct Forwarder {
    client: reqwest::Client,
    /// This replica's own advertised address: never forwarded to.
    me: String,
}

impl Forwarder {
    pub fn new(ca: Option<&std::path::Path>, me: &str) -> anyhow::Result<Self> {
        let mut builder =
            reqwest::Client::builder().timeout(Duration::from_secs(60)).connect_timeout(Duration::from_secs(5));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("cluster.ca {}: {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Self { client: builder.build()?, me: me.to_owned() })
    }
}

/// Headers a forwarded request keeps.
const FORWARDED_HEADERS: [header::HeaderName; 3] = [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT];

/// On a follower, the API's routes (but its own metrics) are the leader's: the request goes to
/// the leader's advertised address as it came, and its answer comes back as it went, so every
/// replica answers alike. With no leader (a takeover under way) the answer is 503 `no_leader`.
async fn to_leader<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if ops.shared.leadership.epoch() > 0 || req.uri().path() == "/api/v1/metrics" {
        return next.run(req).await;
    }
    let Some(Forwarder { client, me }) = req.extensions().get::<Forwarder>().cloned() else {
        return next.run(req).await; // a hub built without replicas (tests of the API alone)
    };
    let leader = match ops.shared.store.leader().await {
        Ok(Some(l)) if l.expires_in_ms > 0 && l.address != me => l,
        Ok(_) => {
            return ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                "no hub replica leads right now (a takeover completes within cluster.lease); try again".into(),
            )
            .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let url =
        format!("{}{}", leader.address.trim_end_matches('/'), req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 * 1024 * 1024).await else {
        return ApiError(StatusCode::PAYLOAD_TOO_LARGE, "bad_body", "the request body is over 16 MiB".into())
            .into_response();
    };
    let mut out = client.request(parts.method, &url).body(body);
    for name in FORWARDED_HEADERS {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    match out.send().await {
        Ok(answer) => {
            let status = answer.status();
            let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
            match answer.bytes().await {
                Ok(bytes) => {
                    let mut response = (status, bytes).into_response();
                    if let Some(ct) = content_type {
                        response.headers_mut().insert(header::CONTENT_TYPE, ct);
                    }
                    if let Ok(v) = header::HeaderValue::from_str(&leader.holder) {
                        response.headers_mut().insert("x-holdfast-leader", v);
                    }
                    response
                }
                Err(e) => leader_unreachable(&leader.holder, &url, &e),
            }
        }
        Err(e) => leader_unreachable(&leader.holder, &url, &e),
    }
}

fn leader_unreachable(holder: &str, url: &str, e: &reqwest::Error) -> Response {
    ApiError(
        StatusCode::BAD_GATEWAY,
        "leader_unreachable",
        format!("this replica follows {holder}, whose API at {url} did not answer: {e}"),
    )
    .into_response()
}

/// How long the health checks wait for the store.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Liveness (Kubernetes' `livenessProbe`): the store completes a write transaction, as the
/// systemd watchdog checks. Public, like the document: it says nothing else.
async fn healthz<S: Store>(State(ops): State<Arc<Ops<S>>>) -> Result<Json<Value>, ApiError> {
    let unavailable = |why: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", why);
    match tokio::time::timeout(HEALTH_TIMEOUT, ops.shared.store.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({"status": "ok"}))),
        Ok(Err(e)) => Err(unavailable(format!("the store failed a write transaction: {e}"))),
        Err(_) => Err(unavailable(format!("the store did not complete a write transaction within {HEALTH_TIMEOUT:?}"))),
    }
}

/// Readiness (`readinessProbe`): alive, and the coordinator restored (the API answers fully).
async fn readyz<S: Store>(State(ops): State<Arc<Ops<S>>>) -> Result<Json<Value>, ApiError> {
    coord(&ops)?;
    healthz(State(ops)).await
}

/// An error: a stable code and a sentence.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for scripts: `unauthorized`, `forbidden`, `not_found`, `reason_required`, ...
    code: String,
    message: String,
}

struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": {"code": self.1, "message": self.2}}))).into_response()
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Refused(m) => ApiError(StatusCode::BAD_REQUEST, "refused", m),
            e @ TokenError::NotFound(_) => ApiError(StatusCode::NOT_FOUND, "unknown_token", e.to_string()),
            other => ApiError(StatusCode::SERVICE_UNAVAILABLE, "tokens_unavailable", other.to_string()),
        }
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

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "not_found", "no such route; the routes are in /api/v1/openapi.json".into())
}

/// The reason every state-changing route requires, for the audit trail; trimmed.
fn required_reason(reason: &str) -> Result<String, ApiError> {
    match reason.trim() {
        "" => Err(ApiError(StatusCode::BAD_REQUEST, "reason_required", "say why, for the audit trail: reason".into())),
        reason => Ok(reason.to_owned()),
    }
}

/// A page size: `limit` if given (at least 1), at most `max`.
fn page_size(limit: Option<usize>, default: usize, max: usize) -> usize {
    limit.unwrap_or(default).clamp(1, max)
}

/// Cuts `rows` (fetched with one more than `limit`) to `limit`; the key of the page's last row
/// when more follow, for the next page's `after`.
fn page<T, K>(rows: &mut Vec<T>, limit: usize, key: impl Fn(&T) -> K) -> Option<K> {
    let next = (rows.len() > limit).then(|| key(&rows[limit - 1]));
    rows.truncate(limit);
    next
}

/// The coordinator, once the hub has started it.
fn coord<S>(ops: &Ops<S>) -> Result<Arc<crate::reopening::Coord>, ApiError> {
    ops.shared.coord.get().cloned().ok_or_else(|| {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "starting", "the hub's coordinator is starting".into())
    })
}

/// The query of a route that takes none: anything given is refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoQuery {}

/// A route's query string, refused as the API's JSON error (`400 bad_query`) when it does not
/// parse.
struct ApiQuery<T>(T);

impl<T: serde::de::DeserializeOwned, St: Send + Sync> axum::extract::FromRequestParts<St> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &St) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(Self(q)),
            Err(e) => Err(ApiError(StatusCode::BAD_REQUEST, "bad_query", e.body_text())),
        }
    }
}

/// A route's JSON body, refused as the API's JSON error (`400 bad_body`) when it does not parse.
struct ApiJson<T>(T);

impl<T: serde::de::DeserializeOwned, St: Send + Sync> axum::extract::FromRequest<St> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(body)) => Ok(Self(body)),
            Err(e) => Err(ApiError(StatusCode::BAD_REQUEST, "bad_body", e.body_text())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Status

/// The hub at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusView {
    /// Odoo as the hub's own probe sees it (verdict, since, detail, version, latency, epoch).
    #[schema(value_type = Object)]
    odoo: crate::probe::OdooView,
    #[schema(value_type = Vec<Object>)]
    alarms: Vec<Alarm>,
    plants_connected: usize,
    /// Open incidents with their class, plants and evidence (and the newest closed ones).
    #[schema(value_type = Object)]
    incidents: Value,
    /// The reopening plan, its stage, history and last gate decision with the values behind
    /// it; null when there is none.
    #[schema(value_type = Object, nullable)]
    plan: Value,
    /// The coordinator's limit on calls in flight to Odoo, while a plan drains.
    limit: Option<usize>,
}

/// The incident (class and evidence), alarms, Odoo, and the reopening plan with its gates.
#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, body = StatusView), (status = 400, body = ErrorBody)))]
async fn status<S: Store>(State(ops): State<Arc<Ops<S>>>, _: ApiQuery<NoQuery>) -> Result<Json<StatusView>, ApiError> {
    let shared = &ops.shared;
    let (incidents, plan, limit) = match shared.coord.get() {
        Some(c) => {
            let v = c.view().await?;
            (v["incidents"].clone(), v["plan"].clone(), v["limit"].as_u64().map(|l| l as usize))
        }
        None => (json!({"open": [], "closed": []}), Value::Null, None),
    };
    Ok(Json(StatusView {
        odoo: shared.odoo.lock().expect("odoo view lock").clone(),
        alarms: shared.alarms(),
        plants_connected: shared.connections.lock().expect("connections lock").len(),
        incidents,
        plan,
        limit,
    }))
}

// ---------------------------------------------------------------------------------------------
// Plants

/// One plant in `GET /api/v1/plants`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlantView {
    pub plant: String,
    pub connected: bool,
    /// The plant as the hub sees it: `manual_offline` or `isolated` while plant IT's manual
    /// state holds (nothing more is applied for it), else `online` while its session is up,
    /// else `offline`.
    pub mode: &'static str,
    /// Plant IT's manual state (kind, who, why, since, until), from the plant's heartbeats.
    #[schema(value_type = Option<Object>)]
    pub manual: Option<holdfast_protocol::ManualNotice>,
    /// When the last heartbeat arrived, and what it said of the gateway and its journal.
    pub last_heartbeat_ms: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub health: Option<holdfast_protocol::Health>,
    #[schema(value_type = Option<Object>)]
    pub gateway_journal: Option<holdfast_protocol::JournalFigures>,
    /// The plant's own view of Odoo and of its hub link, with the changes it saw while the hub
    /// could not hear it (absent when the gateway does not probe Odoo).
    #[schema(value_type = Option<Object>)]
    pub diagnosis: Option<holdfast_protocol::Diagnosis>,
    pub journal_id: String,
    pub epoch: u32,
    pub stored_seq: u64,
    pub applied_seq: u64,
    pub quarantined: u64,
    /// Transactions stored at the hub and not yet applied.
    pub backlog: u64,
    /// Age of the oldest of them, in seconds (0 when none).
    pub oldest_unapplied_age_s: f64,
    /// Transactions journaled at the gateway and not yet stored at the hub, from its last
    /// heartbeat (absent before the first).
    pub gateway_unsent: Option<u64>,
    /// The plant's state in the reopening (`live`, `held`, `draining`, `caught_up`), its wave
    /// (from 1) and when it should have caught up.
    pub reopening_state: String,
    pub wave: Option<usize>,
    pub eta_ms: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlantPage {
    pub plants: Vec<PlantView>,
    /// Pass as `after` for the next page; null on the last.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct PlantsQuery {
    /// Plants after this id (the previous page's `next`).
    after: Option<String>,
    /// At most this many (default 500, at most 5000).
    limit: Option<usize>,
}

async fn plant_views<S: Store>(ops: &Ops<S>) -> Result<Vec<PlantView>, ApiError> {
    let shared = &ops.shared;
    let rows = shared.store.plants().await?;
    let manuals: HashMap<String, holdfast_protocol::ManualNotice> =
        shared.store.plant_manuals().await?.into_iter().collect();
    let backlogs: HashMap<String, crate::store::Backlog> =
        shared.store.pending_by_plant().await?.into_iter().map(|b| (b.plant.clone(), b)).collect();
    let now = now_ms();
    let connections = shared.connections.lock().expect("connections lock").clone();
    let heartbeats = shared.heartbeats.lock().expect("heartbeats lock").clone();
    let coord = shared.coord.get();
    Ok(rows
        .into_iter()
        .map(|r| {
            let connected = connections.contains_key(&r.plant);
            let manual = manuals.get(&r.plant).cloned();
            let beat = heartbeats.get(&r.plant);
            let (state, wave, eta_ms) =
                coord.and_then(|c| c.plant_notice(&r.plant)).unwrap_or(("live".into(), None, None));
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
                backlog: backlogs.get(&r.plant).map_or(0, |b| b.pending),
                oldest_unapplied_age_s: backlogs
                    .get(&r.plant)
                    .map_or(0.0, |b| (now - b.oldest_stored_ms).max(0) as f64 / 1000.0),
                gateway_unsent: beat.map(|(_, b)| b.journal.last_seq.saturating_sub(r.state.stored_seq)),
                reopening_state: state,
                wave,
                eta_ms,
                plant: r.plant,
            }
        })
        .collect())
}

/// Every plant: connection, mode and manual state, backlog, quarantine, reopening state.
#[utoipa::path(get, path = "/api/v1/plants", params(PlantsQuery), responses((status = 200, body = PlantPage), (status = 400, body = ErrorBody)))]
async fn plants<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    ApiQuery(q): ApiQuery<PlantsQuery>,
) -> Result<Json<PlantPage>, ApiError> {
    let limit = page_size(q.limit, 500, 5000);
    let mut plants: Vec<PlantView> =
        plant_views(&ops).await?.into_iter().filter(|p| q.after.as_ref().is_none_or(|a| p.plant > *a)).collect();
    plants.sort_by(|a, b| a.plant.cmp(&b.plant));
    let next = page(&mut plants, limit, |p| p.plant.clone());
    Ok(Json(PlantPage { plants, next }))
}

/// One backlog sample.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HistorySample {
    pub at_ms: i64,
    pub backlog: u64,
    pub applied_seq: u64,
}

/// One plant in detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlantDetail {
    #[serde(flatten)]
    pub plant: PlantView,
    /// Transactions a second applied over the last minute of samples.
    pub applied_per_s: f64,
    /// The last hour's backlog, sampled every 10 s.
    pub backlog_history: Vec<HistorySample>,
    /// The plant's journals, one per epoch (a rebuilt gateway starts a new one).
    pub journals: Vec<crate::store::JournalRow>,
    /// The plant's place in the coordinator (state, why, hold, rate cap, backlog, ETA).
    #[schema(value_type = Option<Object>)]
    pub coordinator: Option<Value>,
}

/// One plant: everything in the list, its journals (epochs), the applied rate and the last
/// hour's backlog.
#[utoipa::path(get, path = "/api/v1/plants/{plant}", params(("plant" = String, Path)), responses((status = 200, body = PlantDetail), (status = 404, body = ErrorBody)))]
async fn plant<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    axum::extract::Path(plant): axum::extract::Path<String>,
) -> Result<Json<PlantDetail>, ApiError> {
    let view = plant_views(&ops).await?.into_iter().find(|p| p.plant == plant).ok_or_else(|| {
        ApiError(StatusCode::NOT_FOUND, "unknown_plant", format!("no plant {plant:?} has connected to this hub"))
    })?;
    let shared = &ops.shared;
    let history: Vec<HistorySample> = shared.history(&plant);
    let applied_per_s = match (history.iter().rev().find(|h| h.at_ms <= now_ms() - 60_000), history.last()) {
        (Some(a), Some(b)) if b.at_ms > a.at_ms => {
            (b.applied_seq.saturating_sub(a.applied_seq)) as f64 * 1000.0 / (b.at_ms - a.at_ms) as f64
        }
        _ => 0.0,
    };
    let coordinator = match shared.coord.get() {
        Some(c) => Some(c.view().await?["plants"][&plant].clone()).filter(|v| !v.is_null()),
        None => None,
    };
    Ok(Json(PlantDetail {
        applied_per_s,
        backlog_history: history,
        journals: shared.store.journals(&plant).await?,
        coordinator,
        plant: view,
    }))
}

/// Every plant's backlog over the last hour.
#[derive(Debug, Serialize, ToSchema)]
pub struct BacklogHistories {
    /// By plant: samples every 10 s, oldest first.
    pub plants: std::collections::BTreeMap<String, Vec<HistorySample>>,
}

/// Every plant's backlog over the last hour, in one answer (the dashboard's charts).
#[utoipa::path(get, path = "/api/v1/backlog-history", responses((status = 200, body = BacklogHistories), (status = 400, body = ErrorBody)))]
async fn backlog_history<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    _: ApiQuery<NoQuery>,
) -> Result<Json<BacklogHistories>, ApiError> {
    Ok(Json(BacklogHistories { plants: ops.shared.histories() }))
}

/// What an operator does to one plant in the reopening.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum PlantVerb {
    Hold,
    Release,
    Cap,
    Move,
}

/// What an operator does to the reopening plan.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum PlanVerb {
    Start,
    Pause,
    Resume,
    Promote,
    Abort,
    Retry,
    Arm,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerbRequest {
    /// Why, for the audit trail (required).
    #[serde(default)]
    reason: String,
    /// `cap`: transactions per second (absent or null lifts the cap).
    #[serde(default)]
    per_second: Option<f64>,
    /// `move`: the wave, from 1.
    #[serde(default)]
    wave: Option<usize>,
}

/// `hold`, `release`, `cap` (`per_second`), `move` (`wave`) one plant in the reopening.
#[utoipa::path(
    post,
    path = "/api/v1/plants/{plant}/{verb}",
    params(("plant" = String, Path), ("verb" = PlantVerb, Path)),
    request_body = VerbRequest,
    responses((status = 200, description = "the plant's place in the plan", body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
async fn plant_verb<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path((plant, verb)): axum::extract::Path<(String, String)>,
    ApiJson(req): ApiJson<VerbRequest>,
) -> Result<Json<Value>, ApiError> {
    let by = caller.actor();
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    plant: String,
    issued_before_ms: i64,
    /// The plant's live connection closes within this many seconds.
    closed_within_s: u64,
}

/// Revokes every certificate issued to a plant until now: the revocation is stored and audited
/// in one transaction; the sync server closes the plant's live connection at its next reread
/// of the revocations and refuses those certificates from then on.
#[utoipa::path(post, path = "/api/v1/plants/{plant}/revoke", params(("plant" = String, Path)), request_body = RevokeRequest, responses((status = 200, body = Revoked), (status = 400, body = ErrorBody)))]
async fn revoke<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(plant): axum::extract::Path<String>,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<Json<Revoked>, ApiError> {
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
        actor: caller.actor(),
        reason,
    };
    ops.shared.store.revoke(revocation).await?;
    let closed_within_s = crate::sync::REVOCATION_POLL.as_secs() + 1;
    Ok(Json(Revoked { plant, issued_before_ms: now, closed_within_s }))
}

// ---------------------------------------------------------------------------------------------
// Transactions

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct TxnParams {
    plant: Option<String>,
    /// `pending`, `applied`, `quarantined`, `duplicate` or `parked`.
    state: Option<String>,
    /// Ledger rows after this position (the previous page's `next`).
    after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TxnPage {
    transactions: Vec<crate::store::TxnRow>,
    next: Option<u64>,
}

const STATES: [&str; 5] = ["pending", "applied", "quarantined", "duplicate", "parked"];

/// Transactions by plant and state, in ledger order.
#[utoipa::path(get, path = "/api/v1/transactions", params(TxnParams), responses((status = 200, body = TxnPage), (status = 400, body = ErrorBody)))]
async fn transactions<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    ApiQuery(q): ApiQuery<TxnParams>,
) -> Result<Json<TxnPage>, ApiError> {
    if let Some(state) = q.state.as_deref().filter(|s| !STATES.contains(s)) {
        let message = format!("state {state:?} is not one of {}", STATES.join(", "));
        return Err(ApiError(StatusCode::BAD_REQUEST, "bad_state", message));
    }
    let limit = page_size(q.limit, 100, 1000);
    let query =
        TxnQuery { id: None, plant: q.plant, state: q.state, after_lsn: q.after.unwrap_or(0), limit: limit + 1 };
    let mut rows = ops.shared.store.transactions(query).await?;
    let next = page(&mut rows, limit, |r| r.lsn);
    Ok(Json(TxnPage { transactions: rows, next }))
}

/// One transaction by its id: every ledger row holding it (a duplicate names the original).
#[utoipa::path(get, path = "/api/v1/transactions/{id}", params(("id" = uuid::Uuid, Path)), responses((status = 200, body = TxnPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn transaction<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<TxnPage>, ApiError> {
    let id = uuid::Uuid::parse_str(&id).map_err(|e| {
        ApiError(StatusCode::BAD_REQUEST, "bad_id", format!("{id:?} is not a transaction id (a UUID): {e}"))
    })?;
    let rows = ops.shared.store.transactions(TxnQuery { id: Some(id), limit: 100, ..Default::default() }).await?;
    if rows.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "unknown_transaction",
            format!("no transaction {id} in the ledger"),
        ));
    }
    Ok(Json(TxnPage { transactions: rows, next: None }))
}

// ---------------------------------------------------------------------------------------------
// Quarantine

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct QuarantineParams {
    plant: Option<String>,
    order_key: Option<String>,
    error_name: Option<String>,
    id: Option<uuid::Uuid>,
    /// Ledger rows after this position (the previous page's `next`).
    after: Option<u64>,
    /// At most this many (default 1000, at most 10000).
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantinePage {
    quarantined: Vec<crate::store::QuarantinedRow>,
    next: Option<u64>,
}

/// Quarantined transactions (Odoo refused them, or no check could decide), oldest first.
#[utoipa::path(get, path = "/api/v1/quarantine", params(QuarantineParams), responses((status = 200, body = QuarantinePage), (status = 400, body = ErrorBody)))]
async fn list_quarantine<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    ApiQuery(q): ApiQuery<QuarantineParams>,
) -> Result<Json<QuarantinePage>, ApiError> {
    let limit = page_size(q.limit, 1000, 10_000);
    let sel =
        Selection { plant: q.plant, order_key: q.order_key, error_name: q.error_name, ids: q.id.into_iter().collect() };
    let mut rows = ops.shared.store.quarantine_list(sel, q.after.unwrap_or(0), limit + 1).await?;
    let next = page(&mut rows, limit, |r| r.lsn);
    Ok(Json(QuarantinePage { quarantined: rows, next }))
}

/// A retry or park: what it applies to, and why (for the audit trail).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
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

#[derive(Debug, Serialize, ToSchema)]
pub struct Released {
    /// `retried` or `parked`.
    action: &'static str,
    count: usize,
    transactions: Vec<crate::store::QuarantinedRow>,
}

/// Sends the selected quarantined transactions again (after a fix in Odoo), in order.
#[utoipa::path(post, path = "/api/v1/quarantine/retry", request_body = ReleaseRequest, responses((status = 200, body = Released), (status = 400, body = ErrorBody)))]
async fn retry<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ReleaseRequest>,
) -> Result<Json<Released>, ApiError> {
    release(&ops, &caller, req, Release::Retry).await
}

/// Sets the selected quarantined transactions aside for good: their keys move on.
#[utoipa::path(post, path = "/api/v1/quarantine/park", request_body = ReleaseRequest, responses((status = 200, body = Released), (status = 400, body = ErrorBody)))]
async fn park<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ReleaseRequest>,
) -> Result<Json<Released>, ApiError> {
    release(&ops, &caller, req, Release::Park).await
}

async fn release<S: Store>(
    ops: &Ops<S>,
    caller: &Caller,
    req: ReleaseRequest,
    action: Release,
) -> Result<Json<Released>, ApiError> {
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
    let released = shared.store.release(selection, action, caller.actor(), reason, now_ms()).await?;
    if !released.rows.is_empty() {
        shared.quarantined.send_modify(|g| *g += 1);
        shared.released.send_modify(|g| *g += 1);
        shared.stored.notify_one();
    }
    if !released.moved.is_empty() {
        shared.applied.send_modify(|g| *g += 1);
    }
    let action = match action {
        Release::Retry => "retried",
        Release::Park => "parked",
    };
    Ok(Json(Released { action, count: released.rows.len(), transactions: released.rows }))
}

// ---------------------------------------------------------------------------------------------
// Reopening and failover

/// Incidents, the reopening plan with its history and last gate decision, every plant's state,
/// wave and ETA, and the drain limit.
#[utoipa::path(get, path = "/api/v1/reopening", responses((status = 200, body = Object)))]
async fn reopening_view<S: Store>(State(ops): State<Arc<Ops<S>>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(coord(&ops)?.view().await?))
}

/// `start`, `pause`, `resume`, `promote`, `abort`, `retry`, `arm`: answered once stored and
/// audited with the token's name.
#[utoipa::path(
    post,
    path = "/api/v1/reopening/{verb}",
    params(("verb" = PlanVerb, Path)),
    request_body = VerbRequest,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
async fn reopening_verb<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(verb): axum::extract::Path<String>,
    ApiJson(req): ApiJson<VerbRequest>,
) -> Result<Json<Value>, ApiError> {
    let by = caller.actor();
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
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

/// Declares a failover: `odoo check`'s ladder must pass on the target first; then a new fencing
/// epoch, every plant held, the old endpoint fenced, and a plan armed whose first step applies
/// again what was applied from the recovery point less the margin.
#[utoipa::path(post, path = "/api/v1/incidents/failover", request_body = FailoverRequest, responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn failover<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<FailoverRequest>,
) -> Result<Json<Value>, ApiError> {
    let by = caller.actor();
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

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    #[schema(value_type = String, example = "operator")]
    role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    name: String,
    #[schema(value_type = String)]
    role: Role,
    /// Shown this once; the hub keeps only its hash.
    token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    name: String,
    #[schema(value_type = String)]
    role: Role,
    created_at_ms: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    tokens: Vec<TokenView>,
}

/// Every token's name, role and creation time (never the token).
#[utoipa::path(get, path = "/api/v1/tokens", responses((status = 200, body = TokenList)))]
async fn list_tokens<S: Store>(State(ops): State<Arc<Ops<S>>>) -> Result<Json<TokenList>, ApiError> {
    let tokens = ops
        .tokens
        .entries()?
        .into_iter()
        .map(|e| TokenView { name: e.name, role: e.role, created_at_ms: e.created_at_ms })
        .collect();
    Ok(Json(TokenList { tokens }))
}

/// Makes a token (shown once), audited.
#[utoipa::path(post, path = "/api/v1/tokens", request_body = NewToken, responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody)))]
async fn create_token<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let token = ops.tokens.create(&req.name, req.role, false, now_ms())?;
    ops.shared
        .store
        .append_audit(crate::audit::AuditEntry {
            at_ms: now_ms(),
            actor: caller.actor(),
            action: "api_token_created".into(),
            target: format!("token:{}", req.name),
            reason: format!("role {}", req.role.as_str()),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { name: req.name, role: req.role, token })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct RemoveParams {
    /// Why, for the audit trail (required).
    reason: String,
}

/// Revokes a token: it is refused from the next request on; audited.
#[utoipa::path(delete, path = "/api/v1/tokens/{name}", params(("name" = String, Path), RemoveParams), responses((status = 200, body = TokenView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_token<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(name): axum::extract::Path<String>,
    ApiQuery(q): ApiQuery<RemoveParams>,
) -> Result<Json<TokenView>, ApiError> {
    let reason = required_reason(&q.reason)?;
    let removed = ops.tokens.remove(&name)?;
    ops.shared
        .store
        .append_audit(crate::audit::AuditEntry {
            at_ms: now_ms(),
            actor: caller.actor(),
            action: "api_token_revoked".into(),
            target: format!("token:{name}"),
            reason,
        })
        .await?;
    Ok(Json(TokenView { name: removed.name, role: removed.role, created_at_ms: removed.created_at_ms }))
}

// ---------------------------------------------------------------------------------------------
// Audit trail and metrics

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    actor: Option<String>,
    action: Option<String>,
    /// Entries whose target starts with this (a plant, `token:`, `plan:`, ...).
    target: Option<String>,
    /// From this time on (Unix milliseconds).
    since_ms: Option<i64>,
    /// Before this time (Unix milliseconds).
    until_ms: Option<i64>,
    /// Entries after this sequence number (the previous page's `next`).
    after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    seq: u64,
    at_ms: i64,
    actor: String,
    action: String,
    target: String,
    reason: String,
    /// The chain: each entry's hash covers the previous one's (hex).
    prev_hash: String,
    hash: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    entries: Vec<AuditView>,
    next: Option<u64>,
}

/// The tamper-evident audit trail, oldest first, filtered.
#[utoipa::path(get, path = "/api/v1/audit", params(AuditParams), responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody)))]
async fn audit<S: Store>(
    State(ops): State<Arc<Ops<S>>>,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = page_size(q.limit, 100, 1000);
    let filter =
        AuditFilter { actor: q.actor, action: q.action, target: q.target, since_ms: q.since_ms, until_ms: q.until_ms };
    let mut rows = ops.shared.store.audit_search(q.after.unwrap_or(0), limit + 1, filter).await?;
    let next = page(&mut rows, limit, |r| r.seq);
    let entries = rows
        .into_iter()
        .map(|c| AuditView {
            seq: c.seq,
            at_ms: c.entry.at_ms,
            actor: c.entry.actor,
            action: c.entry.action,
            target: c.entry.target,
            reason: c.entry.reason,
            prev_hash: hex::encode(c.prev_hash),
            hash: hex::encode(c.hash),
        })
        .collect();
    Ok(Json(AuditPage { entries, next }))
}

/// Every metric in Prometheus text format (see ARCHITECTURE.md, "Metrics").
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
async fn metrics<S: Store>(State(ops): State<Arc<Ops<S>>>) -> Result<Response, ApiError> {
    let text = crate::metrics::render(&ops.shared).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop_behind_a_trusted_proxy() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.42.0.0/16".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxy = ip("10.42.3.7");
        // Not behind a trusted proxy: the header is the client's own word, not believed.
        assert_eq!(client_ip(ip("192.0.2.9"), &headers(&["198.51.100.1"]), &trusted), ip("192.0.2.9"));
        // Behind one: the hop it appended.
        assert_eq!(client_ip(proxy, &headers(&["198.51.100.1"]), &trusted), ip("198.51.100.1"));
        // A client writing its own header stands left of what the proxy appended.
        assert_eq!(client_ip(proxy, &headers(&["203.0.113.5, 198.51.100.1"]), &trusted), ip("198.51.100.1"));
        // Two trusted hops, the header split over two lines.
        assert_eq!(client_ip(proxy, &headers(&["198.51.100.1", "10.42.0.2"]), &trusted), ip("198.51.100.1"));
        // No header, or an unreadable hop: the proxy itself.
        assert_eq!(client_ip(proxy, &headers(&[]), &trusted), proxy);
        assert_eq!(client_ip(proxy, &headers(&["198.51.100.1, junk"]), &trusted), proxy);
        // Nothing trusted: always the peer.
        assert_eq!(client_ip(proxy, &headers(&["198.51.100.1"]), &[]), proxy);
    }
}
