//! The double's `holdfast.inbox`: the batch contract of DESIGN.md, as the `holdfast_inbox` addon
//! implements it in a real Odoo.
//!
//! `apply_batch(transactions, plant=...)`: for each transaction, in order: one whose id is
//! already recorded is skipped (`duplicate`, with the recorded result); otherwise its references
//! are resolved and the call runs in a savepoint; the id is recorded only on success, in the same
//! database transaction. After a failure in an ordering key, the rest of that key in the batch
//! is returned `not_executed`. Private methods are refused as Odoo's dispatcher refuses them.
//! With `epoch=` (a replicated hub's lease): a batch under an older epoch than the newest seen
//! runs nothing (every transaction `not_executed`, reason `stale_epoch`) and is recorded in
//! [`Inbox::refused`]; a newer one is recorded first.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::model::{Db, Fault};

/// One applied transaction, in the order the double applied them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Applied {
    /// 1 for the first transaction this double ever applied.
    pub order: u64,
    pub id: String,
    pub plant: String,
    pub order_key: String,
    pub model: String,
    pub method: String,
    /// Arguments after reference resolution.
    pub args: Value,
    pub result: Value,
    /// The lease epoch of the hub leader that sent it (none: a hub on its own).
    pub epoch: Option<u64>,
}

/// The inbox table and the log of what it applied.
#[derive(Clone, Debug, Default)]
pub struct Inbox {
    pub recorded: std::collections::HashMap<String, Value>,
    pub applied: Vec<Applied>,
    /// The newest lease epoch a batch came with.
    pub newest_epoch: u64,
    /// Batches refused for a stale epoch.
    pub refused: Vec<Refused>,
}

/// A batch a deposed hub leader sent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Refused {
    pub epoch: u64,
    /// The newest epoch seen when it came.
    pub newest: u64,
    pub plant: String,
    pub ids: Vec<String>,
}

impl Inbox {
    pub fn apply_batch(&mut self, db: &mut Db, args: &[Value], kwargs: &Map<String, Value>) -> Result<Value, Fault> {
        let items = args
            .first()
            .and_then(Value::as_array)
            .ok_or_else(|| Fault::value("apply_batch() needs a list of transactions"))?;
        let plant = kwargs.get("plant").and_then(Value::as_str).unwrap_or("").to_owned();
        let mut batch_epoch = None;
        if let Some(epoch) = kwargs.get("epoch").filter(|e| !e.is_null()) {
            let epoch =
                epoch.as_u64().filter(|e| *e >= 1).ok_or_else(|| Fault::value("epoch must be a positive integer"))?;
            self.newest_epoch = self.newest_epoch.max(epoch);
            if epoch < self.newest_epoch {
                let reason =
                    format!("stale_epoch: sent under lease epoch {epoch}; epoch {} leads now", self.newest_epoch);
                let ids: Vec<String> =
                    items.iter().map(|i| i.get("id").and_then(Value::as_str).unwrap_or("").to_owned()).collect();
                self.refused.push(Refused { epoch, newest: self.newest_epoch, plant, ids: ids.clone() });
                return Ok(Value::Array(
                    ids.into_iter().map(|id| json!({"id": id, "status": "not_executed", "reason": reason})).collect(),
                ));
            }
            batch_epoch = Some(epoch);
        }
        let mut failed_keys: HashSet<String> = HashSet::new();
        let mut answers = Vec::with_capacity(items.len());
        for item in items {
            let id = item
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| Fault::value("each transaction needs an id"))?
                .to_owned();
            let order_key = item.get("order_key").and_then(Value::as_str).unwrap_or("").to_owned();
            if failed_keys.contains(&order_key) {
                answers.push(json!({"id": id, "status": "not_executed"}));
                continue;
            }
            if let Some(result) = self.recorded.get(&id) {
                answers.push(json!({"id": id, "status": "duplicate", "result": result}));
                continue;
            }
            match self.apply_one(db, item) {
                Ok((model, method, args, result)) => {
                    self.recorded.insert(id.clone(), result.clone());
                    let order = self.applied.len() as u64 + 1;
                    self.applied.push(Applied {
                        order,
                        id: id.clone(),
                        plant: plant.clone(),
                        order_key,
                        model,
                        method,
                        args,
                        result: result.clone(),
                        epoch: batch_epoch,
                    });
                    answers.push(json!({"id": id, "status": "applied", "result": result}));
                }
                Err(fault) => {
                    failed_keys.insert(order_key);
                    answers.push(
                        json!({"id": id, "status": "failed", "error": {"name": fault.name, "message": fault.message}}),
                    );
                }
            }
        }
        Ok(Value::Array(answers))
    }

    fn apply_one(&self, db: &mut Db, item: &Value) -> Result<(String, String, Value, Value), Fault> {
        let model = item
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| Fault::value("a transaction needs a model"))?
            .to_owned();
        let method = item
            .get("method")
            .and_then(Value::as_str)
            .ok_or_else(|| Fault::value("a transaction needs a method"))?
            .to_owned();
        let args = resolve(db, &self.recorded, item.get("args").cloned().unwrap_or(json!([])))?;
        let kwargs = resolve(db, &self.recorded, item.get("kwargs").cloned().unwrap_or(json!({})))?;
        let positional = args.as_array().cloned().unwrap_or_default();
        let kw = kwargs.as_object().cloned().unwrap_or_default();
        // The savepoint: on failure nothing of the call stays.
        let result = db.savepoint(|db| {
            let result = db.call(&model, &method, &positional, &kw)?;
            check_result(&result)?;
            Ok(result)
        })?;
        Ok((model, method, args, result))
    }
}

/// Wizards that need a person, as the addon lists them (`logic.WIZARD_MODELS`).
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

/// A result that is not a success refuses the transaction, as the addon's
/// `logic.check_result` does: a wizard (`holdfast.Wizard`), any other action but closing the
/// window or a notification (`holdfast.UnknownAction`, verbatim), a `load` answering errors
/// (`holdfast.LoadRefused`).
fn check_result(result: &Value) -> Result<(), Fault> {
    let Some(obj) = result.as_object() else { return Ok(()) };
    if let Some(kind) = obj.get("type").and_then(Value::as_str).filter(|k| k.starts_with("ir.actions.")) {
        let res_model = obj.get("res_model").and_then(Value::as_str).unwrap_or("");
        return match kind {
            "ir.actions.act_window_close" => Ok(()),
            "ir.actions.client" if obj.get("tag").and_then(Value::as_str) == Some("display_notification") => Ok(()),
            "ir.actions.act_window" if WIZARD_MODELS.contains(&res_model) => Err(Fault {
                name: "holdfast.Wizard",
                message: format!(
                    "Odoo asks a person to decide in the {res_model} wizard ({})",
                    obj.get("name").and_then(Value::as_str).unwrap_or("")
                ),
            }),
            _ => Err(Fault { name: "holdfast.UnknownAction", message: result.to_string() }),
        };
    }
    if obj.get("ids") == Some(&Value::Bool(false))
        && let Some(messages) = obj.get("messages").and_then(Value::as_array)
    {
        let errors: Vec<&str> = messages
            .iter()
            .filter(|m| m.get("type").and_then(Value::as_str) == Some("error"))
            .filter_map(|m| m.get("message").and_then(Value::as_str))
            .collect();
        return Err(Fault { name: "holdfast.LoadRefused", message: errors.join("; ") });
    }
    Ok(())
}

/// Replaces `{"$ref": {model, domain}}` and `{"$xmlid": "module.name"}` with record ids, and
/// `{"$result": {"id", "path"?}}` with an applied transaction's recorded result (or what `path`,
/// keys and indexes, picks inside it), as the addon's `logic.py` does.
fn resolve(db: &Db, recorded: &std::collections::HashMap<String, Value>, value: Value) -> Result<Value, Fault> {
    match value {
        Value::Object(obj) if obj.len() == 1 && obj.contains_key("$ref") => {
            let r = &obj["$ref"];
            let model = r
                .get("model")
                .and_then(Value::as_str)
                .ok_or_else(|| Fault::value(format!("reference {r} needs a model")))?;
            let domain = r.get("domain").cloned().unwrap_or(json!([]));
            let ids = db.search(model, &domain)?;
            match ids.as_slice() {
                [one] => Ok(json!(one)),
                _ => Err(Fault::user(format!(
                    "reference {model} {domain} matched {} records; exactly one must match",
                    ids.len()
                ))),
            }
        }
        Value::Object(obj) if obj.len() == 1 && obj.contains_key("$xmlid") => {
            let name = obj["$xmlid"].as_str().unwrap_or("");
            db.xmlids
                .get(name)
                .map(|(_, id)| json!(id))
                .ok_or_else(|| Fault::user(format!("reference $xmlid {name:?} does not exist")))
        }
        Value::Object(obj) if obj.len() == 1 && obj.contains_key("$result") => {
            let spec = &obj["$result"];
            let Some(id) = spec.get("id").and_then(Value::as_str) else {
                return Err(Fault::user(format!("reference $result {spec} needs the id of an earlier transaction")));
            };
            let mut result = recorded.get(id).ok_or_else(|| {
                Fault::user(format!("reference $result names transaction {id}, which is not applied"))
            })?;
            for step in spec.get("path").and_then(Value::as_array).into_iter().flatten() {
                let next = match step {
                    Value::String(k) => result.get(k.as_str()),
                    Value::Number(n) => n.as_u64().and_then(|i| result.get(i as usize)),
                    _ => None,
                };
                result = next.ok_or_else(|| Fault::user(format!("reference $result {id} has nothing at {step}")))?;
            }
            Ok(result.clone())
        }
        Value::Object(obj) => Ok(Value::Object(
            obj.into_iter().map(|(k, v)| Ok((k, resolve(db, recorded, v)?))).collect::<Result<_, Fault>>()?,
        )),
        Value::Array(items) => {
            Ok(Value::Array(items.into_iter().map(|v| resolve(db, recorded, v)).collect::<Result<_, _>>()?))
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, key: &str, mo: &str, qty: f64) -> Value {
        json!({"id": id, "order_key": key, "model": "mrp.production", "method": "write",
               "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", mo]]}}], {"qty_producing": qty}], "kwargs": {}})
    }

    #[test]
    fn skips_recorded_ids_and_stops_a_key_after_a_failure() {
        let mut db = Db::seeded(3);
        let mut inbox = Inbox::default();
        let kw = Map::from_iter([("plant".to_owned(), json!("plant-a"))]);
        let first = inbox.apply_batch(&mut db, &[json!([item("t1", "a", "WH/MO/00001", 1.0)])], &kw).unwrap();
        assert_eq!(first[0]["status"], "applied");
        let batch = json!([
            item("t1", "a", "WH/MO/00001", 1.0),
            item("t2", "a", "WH/MO/09999", 2.0),
            item("t3", "a", "WH/MO/00001", 3.0),
            item("t4", "b", "WH/MO/00002", -1.0),
            item("t5", "c", "WH/MO/00003", 5.0),
        ]);
        let answers = inbox.apply_batch(&mut db, &[batch], &kw).unwrap();
        let statuses: Vec<&str> = answers.as_array().unwrap().iter().map(|a| a["status"].as_str().unwrap()).collect();
        assert_eq!(statuses, vec!["duplicate", "failed", "not_executed", "failed", "applied"]);
        assert_eq!(answers[1]["error"]["name"], "odoo.exceptions.UserError");
        assert_eq!(answers[3]["error"]["name"], "odoo.exceptions.ValidationError");
        assert_eq!(inbox.applied.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), vec!["t1", "t5"]);
        // A failed id is not recorded: after a fix, a retry runs it.
        assert!(!inbox.recorded.contains_key("t2"));
    }

    #[test]
    fn a_result_reference_is_an_earlier_transactions_recorded_result() {
        let mut db = Db::seeded(1);
        let mut inbox = Inbox::default();
        let kw = Map::from_iter([("plant".to_owned(), json!("plant-a"))]);
        let create = json!({"id": "t1", "order_key": "a", "model": "mrp.production", "method": "create",
                            "args": [{"name": "WH/MO/00100", "qty_producing": 0.0}], "kwargs": {}});
        let write = json!({"id": "t2", "order_key": "a", "model": "mrp.production", "method": "write",
                           "args": [[{"$result": {"id": "t1"}}], {"qty_producing": 2.0}], "kwargs": {}});
        let missing = json!({"id": "t3", "order_key": "b", "model": "mrp.production", "method": "write",
                             "args": [[{"$result": {"id": "t9"}}], {}], "kwargs": {}});
        let answers = inbox.apply_batch(&mut db, &[json!([create, write, missing])], &kw).unwrap();
        let statuses: Vec<&str> = answers.as_array().unwrap().iter().map(|a| a["status"].as_str().unwrap()).collect();
        assert_eq!(statuses, vec!["applied", "applied", "failed"]);
        assert_eq!(inbox.applied[1].args[0][0], answers[0]["result"], "t2 wrote the record t1 created");
        assert_eq!(answers[2]["error"]["message"], "reference $result names transaction t9, which is not applied");
    }

    #[test]
    fn a_batch_of_an_older_leader_epoch_runs_nothing_and_is_recorded_as_refused() {
        let mut db = Db::seeded(3);
        let mut inbox = Inbox::default();
        let at = |epoch: Value| Map::from_iter([("plant".to_owned(), json!("plant-a")), ("epoch".to_owned(), epoch)]);
        let first = inbox.apply_batch(&mut db, &[json!([item("t1", "a", "WH/MO/00001", 1.0)])], &at(json!(3))).unwrap();
        assert_eq!(first[0]["status"], "applied");
        let stale = inbox.apply_batch(&mut db, &[json!([item("t2", "a", "WH/MO/00001", 2.0)])], &at(json!(2))).unwrap();
        assert_eq!(
            stale,
            json!([{"id": "t2", "status": "not_executed", "reason": "stale_epoch: sent under lease epoch 2; epoch 3 leads now"}])
        );
        assert_eq!(
            inbox.refused,
            vec![Refused { epoch: 2, newest: 3, plant: "plant-a".into(), ids: vec!["t2".into()] }]
        );
        assert_eq!(inbox.applied.len(), 1, "nothing of the stale batch ran");
        let newer = inbox.apply_batch(&mut db, &[json!([item("t2", "a", "WH/MO/00001", 2.0)])], &at(json!(4))).unwrap();
        assert_eq!(newer[0]["status"], "applied");
        assert_eq!(inbox.newest_epoch, 4);
        let err = inbox.apply_batch(&mut db, &[json!([])], &at(json!(0))).unwrap_err();
        assert_eq!(err.message, "epoch must be a positive integer");
    }
}
