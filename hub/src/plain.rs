//! `plain` delivery: one `execute_kw` per transaction against any stock Odoo (Odoo Online
//! included, which allows no addon). References are resolved here, before the call: `$ref` by a
//! search that must match exactly one record, `$xmlid` through `ir.model.data`; `$result` needs
//! the inbox and is refused by name.
//!
//! Without the inbox nothing in Odoo records which transactions ran, so a call whose answer is
//! lost is checked before it is sent again, by what the registry declares for its (model,
//! method), once the first call can no longer commit (`odoo.limit_time_real` after it was sent:
//! Odoo kills a request's worker then):
//! - `read_only` (`read`, `search`, `context_get`, ...): nothing to check; sent again.
//! - `absolute_write`: a `write` of plain values (no one2many/many2many commands) leaves the same
//!   record whether it ran once or twice; sent again.
//! - `state_read`: the records (the call's first argument) are read; if `field` equals `value`
//!   on all, it landed.
//! - `reference_search`: the call's values carry a marker, `holdfast:<transaction id>`, in
//!   `field` (put there before the first call); a search for it says whether it landed.
//!
//! Anything else is quarantined as `holdfast.OutcomeUnknown` for a person to check in Odoo,
//! rather than risk applying it twice.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::applier::{Call, CallFailure, CallOutcome, Item, ItemOutcome, OdooError};
use crate::odoo::{OdooClient, RpcError};

/// How an unknown outcome is checked.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    ReadOnly,
    AbsoluteWrite,
    StateRead { field: String, value: Value },
    ReferenceSearch { field: String },
}

/// One declared check: `[[odoo.checks]]` in the hub's config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    pub model: String,
    pub method: String,
    pub check: Check,
}

/// The check for a call: the configuration's, else the built-in ones.
pub fn check_for(declared: &[Declared], item: &Item) -> Option<Check> {
    let call = &item.call;
    if let Some(d) = declared.iter().find(|d| d.model == call.model && d.method == call.method) {
        return Some(d.check.clone());
    }
    if crate::applier::READ_ONLY.contains(&call.method.as_str()) {
        return Some(Check::ReadOnly);
    }
    if call.method == "write" && call.args.get(1).is_some_and(is_plain_values) {
        return Some(Check::AbsoluteWrite);
    }
    None
}

/// Values without x2many commands (`[[0, 0, {...}], [4, id], ...]`), which a second run repeats.
fn is_plain_values(values: &Value) -> bool {
    values
        .as_object()
        .is_some_and(|o| o.values().all(|v| !v.as_array().is_some_and(|a| a.iter().any(|c| c.is_array()))))
}

/// The marker a `reference_search` check looks for.
pub fn marker(item: &Item) -> String {
    format!("holdfast:{}", item.id)
}

/// Applies a call of one transaction in plain mode.
pub async fn apply(odoo: &OdooClient, call: &Call, declared: &[Declared], limit_time_real: Duration) -> CallOutcome {
    let Some(item) = call.items.first() else { return CallOutcome::Items(Vec::new()) };
    let check = check_for(declared, item);
    let mut args = match resolve(odoo, item.call.args.clone()).await {
        Ok(a) => a,
        Err(Resolve::Refused(e)) => return CallOutcome::Items(vec![ItemOutcome::Failed(e)]),
        Err(Resolve::Failed(f)) => return CallOutcome::Failed(f),
    };
    let kwargs = match resolve(odoo, Value::Object(item.call.kwargs.clone())).await {
        Ok(k) => k,
        Err(Resolve::Refused(e)) => return CallOutcome::Items(vec![ItemOutcome::Failed(e)]),
        Err(Resolve::Failed(f)) => return CallOutcome::Failed(f),
    };
    if let Some(Check::ReferenceSearch { field }) = &check
        && let Some(values) = args.get_mut(0).and_then(Value::as_object_mut)
    {
        values.entry(field.clone()).or_insert_with(|| json!(marker(item)));
    }
    let sent = tokio::time::Instant::now();
    match odoo.execute_kw(&item.call.model, &item.call.method, args.clone(), kwargs).await {
        Ok(result) => CallOutcome::Items(vec![ItemOutcome::Applied { result }]),
        Err(RpcError::Odoo(e)) => CallOutcome::Items(vec![ItemOutcome::Failed(e)]),
        Err(RpcError::CredentialsRefused(_)) => CallOutcome::Failed(CallFailure::CredentialsRefused),
        Err(RpcError::Unknown(reason)) => {
            let Some(check) = check else {
                return CallOutcome::Items(vec![ItemOutcome::Failed(OdooError {
                    name: "holdfast.OutcomeUnknown".into(),
                    message: format!(
                        "no answer from Odoo ({reason}) and no check declared for {}.{}: it may or may not have been applied; check in Odoo, then retry or park it",
                        item.call.model, item.call.method
                    ),
                })]);
            };
            // The first call can commit until Odoo kills its worker: only then is a check final.
            tokio::time::sleep_until(sent + limit_time_real).await;
            match landed(odoo, item, &check, &args).await {
                Ok(Some(result)) => CallOutcome::Items(vec![ItemOutcome::Applied { result }]),
                // Not landed (or safe to run again): the applier sends it again after its backoff.
                Ok(None) => {
                    CallOutcome::Failed(CallFailure::Unknown(format!("{reason}; checked: not applied, sent again")))
                }
                Err(e) => CallOutcome::Failed(CallFailure::Unknown(format!("{reason}; the check failed too: {e}"))),
            }
        }
    }
}

/// What a plain-mode replay after a failover did with one transaction the primary had applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Replayed {
    /// Its check found it in the recovered Odoo: not sent.
    Held,
    /// Not there (or safe to run again): sent.
    Sent,
    /// A read: nothing to put back.
    Read,
    /// No check can tell whether the recovered Odoo holds it: left for an operator.
    Undecided,
}

/// The name a replay gives a transaction no check can decide.
pub const UNDECIDED: &str = "holdfast.ReplayUndecided";

/// Replays one transaction against a recovered Odoo in plain mode: its check decides whether
/// Odoo already holds it; what no check decides is refused as [`UNDECIDED`] (its key waits),
/// never risked twice.
pub async fn replay(
    odoo: &OdooClient,
    call: &Call,
    declared: &[Declared],
    limit_time_real: Duration,
) -> (Replayed, CallOutcome) {
    let Some(item) = call.items.first() else { return (Replayed::Read, CallOutcome::Items(Vec::new())) };
    let applied = |result| CallOutcome::Items(vec![ItemOutcome::Applied { result }]);
    let check = match check_for(declared, item) {
        Some(Check::ReadOnly) => return (Replayed::Read, applied(Value::Null)),
        Some(Check::AbsoluteWrite) => return (Replayed::Sent, apply(odoo, call, declared, limit_time_real).await),
        Some(check) => check,
        None => {
            let message = format!(
                "{}.{} has no declared check: whether the recovered Odoo holds it cannot be told; check there, then promote",
                item.call.model, item.call.method
            );
            return (
                Replayed::Undecided,
                CallOutcome::Items(vec![ItemOutcome::Failed(OdooError { name: UNDECIDED.into(), message })]),
            );
        }
    };
    let args = match resolve(odoo, item.call.args.clone()).await {
        Ok(a) => a,
        Err(Resolve::Refused(e)) => {
            let message = format!("its check could not name its records: {}: {}", e.name, e.message);
            return (
                Replayed::Undecided,
                CallOutcome::Items(vec![ItemOutcome::Failed(OdooError { name: UNDECIDED.into(), message })]),
            );
        }
        Err(Resolve::Failed(f)) => return (Replayed::Sent, CallOutcome::Failed(f)),
    };
    match landed(odoo, item, &check, &args).await {
        Ok(Some(result)) => (Replayed::Held, applied(result)),
        Ok(None) => (Replayed::Sent, apply(odoo, call, declared, limit_time_real).await),
        Err(e) => (Replayed::Sent, CallOutcome::Failed(CallFailure::Unknown(format!("the replay's check: {e}")))),
    }
}

/// Whether the call landed, by its check: `Some(result)` if it did.
async fn landed(odoo: &OdooClient, item: &Item, check: &Check, args: &Value) -> Result<Option<Value>, RpcError> {
    let model = &item.call.model;
    match check {
        Check::ReadOnly | Check::AbsoluteWrite => Ok(None),
        Check::StateRead { field, value } => {
            let ids = args.get(0).cloned().unwrap_or(json!([]));
            let rows = odoo.execute_kw(model, "read", json!([ids]), json!({"fields": [field]})).await?;
            let rows = rows.as_array().cloned().unwrap_or_default();
            Ok((!rows.is_empty() && rows.iter().all(|r| r.get(field) == Some(value))).then_some(json!(true)))
        }
        Check::ReferenceSearch { field } => {
            let found = odoo.execute_kw(model, "search", json!([[[field, "=", marker(item)]]]), json!({})).await?;
            Ok(found.as_array().and_then(|ids| ids.first().cloned()))
        }
    }
}

enum Resolve {
    Refused(OdooError),
    Failed(CallFailure),
}

fn rpc_failure(e: RpcError) -> Resolve {
    match e {
        RpcError::Odoo(o) => Resolve::Refused(o),
        RpcError::Unknown(r) => Resolve::Failed(CallFailure::Unknown(r)),
        RpcError::CredentialsRefused(_) => Resolve::Failed(CallFailure::CredentialsRefused),
    }
}

fn user_error(message: String) -> Resolve {
    Resolve::Refused(OdooError { name: "odoo.exceptions.UserError".into(), message })
}

/// Replaces every reference in `value` by the id it names, asking Odoo.
async fn resolve(odoo: &OdooClient, value: Value) -> Result<Value, Resolve> {
    match value {
        Value::Object(mut obj) if obj.len() == 1 && obj.contains_key("$ref") => {
            let r = obj.remove("$ref").unwrap_or_default();
            let Some(model) = r.get("model").and_then(Value::as_str) else {
                return Err(user_error(format!("reference {r} needs a model")));
            };
            let domain = r.get("domain").cloned().unwrap_or(json!([]));
            let ids = odoo.execute_kw(model, "search", json!([domain.clone()]), json!({"limit": 2})).await.map_err(rpc_failure)?;
            match ids.as_array().map(Vec::as_slice) {
                Some([one]) => Ok(one.clone()),
                other => {
                    let n = other.map_or(0, <[Value]>::len);
                    let count = if n < 2 { n.to_string() } else { "several".into() };
                    Err(user_error(format!("reference {model} {domain} matched {count} records; exactly one must match")))
                }
            }
        }
        Value::Object(mut obj) if obj.len() == 1 && obj.contains_key("$xmlid") => {
            let name = obj.remove("$xmlid").unwrap_or_default();
            let (module, local) = name.as_str().and_then(|n| n.split_once('.')).unwrap_or(("", ""));
            let rows = odoo
                .execute_kw(
                    "ir.model.data",
                    "search_read",
                    json!([[["module", "=", module], ["name", "=", local]]]),
                    json!({"fields": ["res_id"], "limit": 1}),
                )
                .await
                .map_err(rpc_failure)?;
            rows.get(0)
                .and_then(|r| r.get("res_id"))
                .cloned()
                .ok_or_else(|| user_error(format!("reference $xmlid {name} does not exist")))
        }
        Value::Object(obj) if obj.len() == 1 && obj.contains_key("$result") => Err(user_error(
            "reference $result needs odoo.mode = \"inbox\" (the holdfast_inbox addon records results); plain mode cannot resolve it".into(),
        )),
        Value::Object(obj) => {
            let mut out = serde_json::Map::new();
            for (k, v) in obj {
                out.insert(k, Box::pin(resolve(odoo, v)).await?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for v in items {
                out.push(Box::pin(resolve(odoo, v)).await?);
            }
            Ok(Value::Array(out))
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_protocol::OdooCall;

    fn item(model: &str, method: &str, args: Value) -> Item {
        Item {
            lsn: 1,
            plant: "p".into(),
            journal_id: uuid::Uuid::nil(),
            seq: 1,
            id: uuid::Uuid::from_u128(7),
            order_key: "k".into(),
            occurred_at_ms: None,
            call: OdooCall { model: model.into(), method: method.into(), args, kwargs: Default::default() },
        }
    }

    #[test]
    fn the_registry_declares_then_falls_back_to_what_is_safe_by_construction() {
        let declared = vec![Declared {
            model: "mrp.production".into(),
            method: "button_mark_done".into(),
            check: Check::StateRead { field: "state".into(), value: json!("done") },
        }];
        let check = |m: &str, f: &str, a: Value| check_for(&declared, &item(m, f, a));
        assert_eq!(
            check("mrp.production", "button_mark_done", json!([[1]])),
            Some(Check::StateRead { field: "state".into(), value: json!("done") })
        );
        assert_eq!(check("res.users", "context_get", json!([])), Some(Check::ReadOnly));
        assert_eq!(check("mrp.production", "write", json!([[1], {"qty_producing": 3}])), Some(Check::AbsoluteWrite));
        assert_eq!(
            check("mrp.production", "write", json!([[1], {"move_raw_ids": [[0, 0, {"product_id": 1}]]}])),
            None,
            "x2many commands repeat on a second run"
        );
        assert_eq!(check("stock.picking", "button_validate", json!([[1]])), None);
        assert_eq!(marker(&item("a", "b", json!([]))), "holdfast:00000000-0000-0000-0000-000000000007");
    }
}
