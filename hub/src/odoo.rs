//! The hub's HTTP driver for Odoo's JSON-RPC endpoint (`POST /jsonrpc`), following ODOO.md:
//! errors arrive as HTTP 200 with `error.data.name`, a method returning None answers with
//! neither `result` nor `error`, and `common.authenticate` answers `false` on bad credentials.
//! The uid is cached: authentication is never retried in a loop (Odoo's login cooldown).
//!
//! It makes calls and reports what came back; every decision about them is the applier's.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Mutex;

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

/// A JSON-RPC client for one Odoo database.
#[derive(Debug)]
pub struct OdooClient {
    http: reqwest::Client,
    endpoint: String,
    database: String,
    login: String,
    api_key: String,
    uid: Mutex<Option<i64>>,
}

impl OdooClient {
    pub fn new(cfg: &OdooConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(cfg.timeout).connect_timeout(Duration::from_secs(10)).build()?;
        Ok(Self {
            http,
            endpoint: format!("{}/jsonrpc", cfg.url.trim_end_matches('/')),
            database: cfg.database.clone(),
            login: cfg.login.clone(),
            api_key: cfg.api_key.clone(),
            uid: Mutex::new(None),
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

    /// `common.version`.
    pub async fn version(&self) -> Result<Value, RpcError> {
        self.call("common", "version", json!([])).await
    }

    /// The cached uid, authenticating once if needed.
    pub async fn uid(&self) -> Result<i64, RpcError> {
        let mut uid = self.uid.lock().await;
        if let Some(uid) = *uid {
            return Ok(uid);
        }
        let answer = self.call("common", "authenticate", json!([self.database, self.login, self.api_key, {}])).await?;
        match answer.as_i64() {
            Some(id) => {
                *uid = Some(id);
                Ok(id)
            }
            None => Err(RpcError::CredentialsRefused(self.login.clone())),
        }
    }

    /// `object.execute_kw` as the hub's user.
    pub async fn execute_kw(&self, model: &str, method: &str, args: Value, kwargs: Value) -> Result<Value, RpcError> {
        let uid = self.uid().await?;
        let result = self
            .call("object", "execute_kw", json!([self.database, uid, self.api_key, model, method, args, kwargs]))
            .await;
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
        match self.execute_kw(INBOX_MODEL, INBOX_METHOD, json!([items]), json!({"plant": call.plant})).await {
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

    #[test]
    fn odoo_datetimes_are_utc_without_zone() {
        assert_eq!(odoo_datetime(1_795_680_000_000).as_deref(), Some("2026-11-26 08:00:00"));
    }
}
