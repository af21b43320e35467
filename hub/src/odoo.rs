//! The hub's HTTP driver for Odoo's JSON-RPC endpoint (`POST /jsonrpc`), following ODOO.md:
//! errors arrive as HTTP 200 with `error.data.name`, a method returning None answers with
//! neither `result` nor `error`, and `common.authenticate` answers `false` on bad credentials.
//! The uid is cached: authentication is never retried in a loop (Odoo's login cooldown).
//!
//! It makes calls and reports what came back; every decision about them is the applier's.

use std::time::Duration;

use serde_json::{Value, json};
use std::sync::Arc;

use tokio::sync::{Mutex, Semaphore};

use crate::applier::{Call, CallFailure, CallOutcome, ItemOutcome, OdooError};
use crate::config::OdooConfig;

/// The model and method of the `holdfast_inbox` addon's batch entry point.
pub const INBOX_MODEL: &str = "holdfast.inbox";
pub const INBOX_METHOD: &str = "apply_batch";

/// A JSON-RPC call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RpcError {
    /// No usable answer: the call may or may not have run.
    #[error("no answer from Odoo: {0}")]
    Unknown(String),
    /// Odoo answered with an error.
    #[error("{}: {}", .0.name, .0.message)]
    Odoo(OdooError),
    /// `common.authenticate` answered false.
    #[error("Odoo refused the login {0:?} (wrong login or API key, or an expired key)")]
    CredentialsRefused(String),
}

/// A boxed future, as a [`Transport`] returns them (the trait is used as an object).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How the hub reaches Odoo: its three verbs, whatever the wire. [`JsonRpc`] serves 16.0 to
/// 18.0 (and 19, where `/jsonrpc` is deprecated); Odoo 19's JSON-2 (`POST /json/2/<model>/<method>`
/// with a bearer key) is another implementation of the same trait. Errors keep Odoo's
/// exception names, so the applier classifies them the same way over any transport.
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// The server's version, in JSON-RPC's `common.version` shape.
    fn version(&self) -> BoxFuture<'_, Result<Value, RpcError>>;
    /// Checks the login once: the uid, or `None` when the credentials are refused.
    fn authenticate(&self) -> BoxFuture<'_, Result<Option<i64>, RpcError>>;
    /// `model.method(*args, **kwargs)` as user `uid`; `Ok(Value::Null)` when it returned None.
    fn execute_kw<'a>(
        &'a self,
        uid: i64,
        model: &'a str,
        method: &'a str,
        args: Value,
        kwargs: Value,
    ) -> BoxFuture<'a, Result<Value, RpcError>>;
}

/// A shared transport is a transport.
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn version(&self) -> BoxFuture<'_, Result<Value, RpcError>> {
        (**self).version()
    }
    fn authenticate(&self) -> BoxFuture<'_, Result<Option<i64>, RpcError>> {
        (**self).authenticate()
    }
    fn execute_kw<'a>(
        &'a self,
        uid: i64,
        model: &'a str,
        method: &'a str,
        args: Value,
        kwargs: Value,
    ) -> BoxFuture<'a, Result<Value, RpcError>> {
        (**self).execute_kw(uid, model, method, args, kwargs)
    }
}

/// Odoo's JSON-RPC endpoint (`POST /jsonrpc`), stateless: credentials on every call.
#[derive(Debug)]
pub struct JsonRpc {
    http: reqwest::Client,
    endpoint: String,
    database: String,
    login: String,
    api_key: String,
}

impl JsonRpc {
    pub fn new(cfg: &OdooConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(cfg.timeout).connect_timeout(Duration::from_secs(10)).build()?;
        Ok(Self {
            http,
            endpoint: format!("{}/jsonrpc", cfg.url.trim_end_matches('/')),
            database: cfg.database.clone(),
            login: cfg.login.clone(),
            api_key: cfg.api_key.clone(),
        })
    }

    /// One JSON-RPC call; `Ok(Value::Null)` when the method returned None.
    pub async fn call(&self, service: &str, method: &str, args: Value) -> Result<Value, RpcError> {
        let body = json!({"jsonrpc": "2.0", "method": "call", "params": {"service": service, "method": method, "args": args}, "id": 1});
        let resp =
            self.http.post(&self.endpoint).json(&body).send().await.map_err(|e| RpcError::Unknown(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(RpcError::Unknown(format!("HTTP {status}")));
        }
        let mut answer: Value = resp.json().await.map_err(|e| RpcError::Unknown(format!("unreadable answer: {e}")))?;
        if let Some(error) = answer.get_mut("error") {
            let data = error.get("data");
            let name = data.and_then(|d| d.get("name")).and_then(Value::as_str).unwrap_or("unknown").to_owned();
            let message = data
                .and_then(|d| d.get("message"))
                .and_then(Value::as_str)
                .or_else(|| error.get("message").and_then(Value::as_str))
                .unwrap_or("")
                .to_owned();
            return Err(RpcError::Odoo(OdooError { name, message }));
        }
        Ok(answer.get_mut("result").map(Value::take).unwrap_or(Value::Null))
    }
}

impl Transport for JsonRpc {
    fn version(&self) -> BoxFuture<'_, Result<Value, RpcError>> {
        Box::pin(self.call("common", "version", json!([])))
    }

    fn authenticate(&self) -> BoxFuture<'_, Result<Option<i64>, RpcError>> {
        Box::pin(async move {
            let args = json!([self.database, self.login, self.api_key, {}]);
            Ok(self.call("common", "authenticate", args).await?.as_i64())
        })
    }

    fn execute_kw<'a>(
        &'a self,
        uid: i64,
        model: &'a str,
        method: &'a str,
        args: Value,
        kwargs: Value,
    ) -> BoxFuture<'a, Result<Value, RpcError>> {
        let args = json!([self.database, uid, self.api_key, model, method, args, kwargs]);
        Box::pin(self.call("object", "execute_kw", args))
    }
}

/// The hub's Odoo client over a [`Transport`]: it caches the uid, so authentication is never
/// retried in a loop (Odoo's login cooldown), and forgets it when Odoo refuses the key.
#[derive(Debug)]
pub struct OdooClient {
    /// The active endpoint's transport, replaced by a failover ([`Self::retarget`]).
    transport: std::sync::RwLock<Arc<dyn Transport>>,
    /// The active endpoint's fencing epoch: a call that began under an older one is not
    /// trusted (its answer came from the deposed primary, which is never written again).
    epoch: std::sync::atomic::AtomicU64,
    login: String,
    uid: Mutex<Option<i64>>,
    /// Calls in flight to Odoo, shared by every client of one hub ([`Self::sharing`]).
    permits: Option<Arc<Semaphore>>,
    /// The replica's lease: its epoch goes with every inbox batch, and once fenced no call
    /// starts ([`Self::leading`]).
    leadership: Option<Arc<crate::shared::Leadership>>,
}

impl OdooClient {
    /// A client over JSON-RPC.
    pub fn new(cfg: &OdooConfig) -> Result<Self, reqwest::Error> {
        Ok(Self::with_transport(Box::new(JsonRpc::new(cfg)?), &cfg.login))
    }

    pub fn with_transport(transport: Box<dyn Transport>, login: &str) -> Self {
        Self {
            transport: std::sync::RwLock::new(Arc::from(transport)),
            epoch: std::sync::atomic::AtomicU64::new(0),
            login: login.to_owned(),
            uid: Mutex::new(None),
            permits: None,
            leadership: None,
        }
    }

    /// Makes the client follow the replica's lease: batches carry its epoch (the inbox refuses
    /// one older than the newest it saw), and after the lease is lost nothing is called.
    pub fn leading(mut self, leadership: Arc<crate::shared::Leadership>) -> Self {
        self.leadership = Some(leadership);
        self
    }

    fn fenced(&self) -> Result<(), RpcError> {
        match &self.leadership {
            Some(l) if l.fenced() => Err(RpcError::Unknown(
                "this hub replica lost its lease to lead; it calls Odoo no more (another replica leads)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Points the client at another endpoint (a failover) under a newer `epoch`: calls from
    /// now on go there, and a call still running against the old one answers "outcome
    /// unknown" whatever the old one said, so it is sent again to the new one.
    pub async fn retarget(&self, transport: Box<dyn Transport>, epoch: u64) {
        *self.transport.write().expect("transport lock") = Arc::from(transport);
        self.epoch.store(epoch, std::sync::atomic::Ordering::SeqCst);
        *self.uid.lock().await = None;
    }

    /// The client at `epoch` from the start (a hub restarted after a failover).
    pub fn at_epoch(self, epoch: u64) -> Self {
        self.epoch.store(epoch, std::sync::atomic::Ordering::SeqCst);
        self
    }

    /// The active endpoint's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn active(&self) -> (Arc<dyn Transport>, u64) {
        let transport = self.transport.read().expect("transport lock").clone();
        (transport, self.epoch())
    }

    /// Makes each call take one of `permits` while it runs: clients sharing them (the
    /// applier's and the probe's) never have more calls in flight to Odoo than it holds, so
    /// the hub as a whole keeps within `applier.calls_max` of Odoo's workers.
    pub fn sharing(mut self, permits: Arc<Semaphore>) -> Self {
        self.permits = Some(permits);
        self
    }

    async fn permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        match &self.permits {
            Some(p) => p.acquire().await.ok(),
            None => None,
        }
    }

    /// `common.version`.
    pub async fn version(&self) -> Result<Value, RpcError> {
        self.fenced()?;
        let _permit = self.permit().await;
        let (transport, _) = self.active();
        transport.version().await
    }

    /// The cached uid, authenticating once if needed.
    pub async fn uid(&self) -> Result<i64, RpcError> {
        let mut uid = self.uid.lock().await;
        if let Some(uid) = *uid {
            return Ok(uid);
        }
        let _permit = self.permit().await;
        self.fenced()?;
        let (transport, epoch) = self.active();
        match transport.authenticate().await? {
            Some(id) => {
                if epoch == self.epoch() {
                    *uid = Some(id);
                }
                Ok(id)
            }
            None => Err(RpcError::CredentialsRefused(self.login.clone())),
        }
    }

    /// `object.execute_kw` as the hub's user.
    pub async fn execute_kw(&self, model: &str, method: &str, args: Value, kwargs: Value) -> Result<Value, RpcError> {
        let uid = self.uid().await?;
        let permit = self.permit().await;
        self.fenced()?;
        let (transport, epoch) = self.active();
        let result = transport.execute_kw(uid, model, method, args, kwargs).await;
        drop(permit);
        if epoch != self.epoch() {
            return Err(RpcError::Unknown(
                "the Odoo endpoint changed (a failover) while the call ran; it goes again to the new one".into(),
            ));
        }
        if let Err(RpcError::Odoo(e)) = &result
            && e.name == "odoo.exceptions.AccessDenied"
        {
            // An expired key: forget the uid so an operator's fix takes effect on the next call.
            *self.uid.lock().await = None;
        }
        result
    }

    /// Sends one applier call as an inbox batch and reads the per-transaction answers.
    pub async fn apply(&self, call: &Call) -> CallOutcome {
        let items: Vec<Value> = call
            .items
            .iter()
            .map(|i| {
                json!({
                    "id": i.id.to_string(),
                    "order_key": i.order_key,
                    "model": i.call.model,
                    "method": i.call.method,
                    "args": i.call.args,
                    "kwargs": i.call.kwargs,
                    "occurred_at": i.occurred_at_ms.and_then(odoo_datetime),
                })
            })
            .collect();
        let mut kwargs = json!({"plant": call.plant});
        if let Some(epoch) = self.leadership.as_ref().map(|l| l.epoch()).filter(|e| *e > 0) {
            kwargs["epoch"] = json!(epoch);
        }
        match self.execute_kw(INBOX_MODEL, INBOX_METHOD, json!([items]), kwargs).await {
            Ok(answer) => parse_inbox_answer(&answer, call),
            Err(RpcError::Unknown(reason)) => CallOutcome::Failed(CallFailure::Unknown(reason)),
            Err(RpcError::Odoo(e)) => CallOutcome::Failed(CallFailure::Odoo(e)),
            Err(RpcError::CredentialsRefused(_)) => CallOutcome::Failed(CallFailure::CredentialsRefused),
        }
    }
}

/// Odoo's datetime format (UTC, no zone): `2026-11-26 08:15:00`.
pub fn odoo_datetime(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok()?;
    t.format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")).ok()
}

fn parse_inbox_answer(answer: &Value, call: &Call) -> CallOutcome {
    let Some(rows) = answer.as_array() else {
        return CallOutcome::Failed(CallFailure::Unknown(format!("the inbox answered {answer} instead of a list")));
    };
    let mut outcomes = Vec::with_capacity(rows.len());
    for (row, item) in rows.iter().zip(&call.items) {
        if row.get("id").and_then(Value::as_str) != Some(item.id.to_string().as_str()) {
            return CallOutcome::Failed(CallFailure::Unknown(format!("the inbox answered out of order at {row}")));
        }
        let result = row.get("result").cloned().unwrap_or(Value::Null);
        outcomes.push(match row.get("status").and_then(Value::as_str) {
            Some("applied") => ItemOutcome::Applied { result },
            Some("duplicate") => ItemOutcome::AlreadyApplied { result },
            Some("not_executed") => ItemOutcome::NotExecuted,
            Some("failed") => {
                let err = row.get("error");
                let field = |f: &str| err.and_then(|e| e.get(f)).and_then(Value::as_str).unwrap_or("").to_owned();
                ItemOutcome::Failed(OdooError { name: field("name"), message: field("message") })
            }
            _ => {
                return CallOutcome::Failed(CallFailure::Unknown(format!(
                    "the inbox answered an unknown status in {row}"
                )));
            }
        });
    }
    CallOutcome::Items(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport that answers from a script and counts logins.
    #[derive(Debug, Default)]
    struct Scripted {
        logins: std::sync::atomic::AtomicU32,
        key_expired: std::sync::atomic::AtomicBool,
    }

    impl Transport for Scripted {
        fn version(&self) -> BoxFuture<'_, Result<Value, RpcError>> {
            Box::pin(async { Ok(json!({"server_version": "19.0"})) })
        }
        fn authenticate(&self) -> BoxFuture<'_, Result<Option<i64>, RpcError>> {
            self.logins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ok = !self.key_expired.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { Ok(ok.then_some(7)) })
        }
        fn execute_kw<'a>(
            &'a self,
            uid: i64,
            model: &'a str,
            method: &'a str,
            _args: Value,
            _kwargs: Value,
        ) -> BoxFuture<'a, Result<Value, RpcError>> {
            let expired = self.key_expired.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if expired {
                    Err(RpcError::Odoo(OdooError { name: "odoo.exceptions.AccessDenied".into(), message: "".into() }))
                } else {
                    Ok(json!(format!("{model}.{method} as {uid}")))
                }
            })
        }
    }

    #[tokio::test]
    async fn the_client_logs_in_once_over_any_transport_and_forgets_a_refused_key() {
        let transport = std::sync::Arc::new(Scripted::default());
        let odoo = OdooClient::with_transport(Box::new(transport.clone()), "hub");
        for _ in 0..3 {
            assert_eq!(
                odoo.execute_kw("res.users", "context_get", json!([]), json!({})).await,
                Ok(json!("res.users.context_get as 7"))
            );
        }
        assert_eq!(transport.logins.load(std::sync::atomic::Ordering::SeqCst), 1, "the uid is cached");
        transport.key_expired.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(
            odoo.execute_kw("res.users", "context_get", json!([]), json!({})).await,
            Err(RpcError::Odoo(_))
        ));
        assert_eq!(odoo.uid().await, Err(RpcError::CredentialsRefused("hub".into())), "logs in again, once");
        assert_eq!(transport.logins.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn odoo_datetimes_are_utc_without_zone() {
        assert_eq!(odoo_datetime(1_795_680_000_000).as_deref(), Some("2026-11-26 08:00:00"));
    }
}
