//! The producer contract (DESIGN.md): one JSON object per transaction, turned into a
//! [`Transaction`] or refused with the field to fix. Pure: the caller passes the plant and the
//! time of receipt.
//!
//! ```json
//! {"source": "mes", "device": "line-3", "key": "WO-1187-op20-qty5", "occurred_at": "2026-11-26T08:15:00Z",
//!  "order_key": "mo:WH/MO/01187",
//!  "odoo": {"model": "mrp.production", "method": "write", "args": [...], "kwargs": {}}}
//! ```

use holdfast_protocol::txn::NAME_BYTES_MAX;
use holdfast_protocol::{OdooCall, Operation, SourceKind, Transaction};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Fields a transaction object may have.
const FIELDS: [&str; 8] = ["source", "device", "key", "occurred_at", "order_key", "odoo", "scan", "plant"];
const ODOO_FIELDS: [&str; 4] = ["model", "method", "args", "kwargs"];

/// Why a transaction was refused, naming the field to fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Dotted path of the offending field; empty for the object itself.
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.to_owned(), message: message.into() }
}

/// Parses one producer object for `plant`, received at `received_at_ms`.
pub fn parse(value: Value, plant: &str, received_at_ms: i64) -> Result<Transaction, FieldError> {
    let Value::Object(mut obj) = value else {
        return Err(err("", "a transaction must be a JSON object"));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(err(unknown, format!("unknown field; a transaction has {}", FIELDS.join(", "))));
    }
    if let Some(p) = obj.get("plant")
        && p.as_str() != Some(plant)
    {
        return Err(err(
            "plant",
            format!("this gateway journals for plant {plant:?} only; leave the field out or set it to that"),
        ));
    }
    let source_name = required_str(&obj, "source")?;
    let source = SourceKind::parse(source_name).ok_or_else(|| {
        let kinds: Vec<&str> = SourceKind::ALL.iter().map(|k| k.as_str()).collect();
        err("source", format!("{source_name:?} is not a source kind; use one of {}", kinds.join(", ")))
    })?;
    let device = name(&obj, "device")?.ok_or_else(|| err("device", "required"))?;
    let key = name(&obj, "key")?;
    let order_key = name(&obj, "order_key")?.unwrap_or_else(|| plant.to_owned());
    let occurred_at_ms = match obj.get("occurred_at") {
        None | Some(Value::Null) => None,
        Some(v) => Some(timestamp(v)?),
    };
    let scan = obj.contains_key("scan");
    let op = match (obj.remove("odoo"), scan) {
        (Some(odoo), false) => Operation::OdooCall(odoo_call(odoo)?),
        (None, true) => {
            return Err(err(
                "scan",
                format!(
                    "no station template is configured for source {} device {device:?}; send an \"odoo\" operation",
                    source.as_str()
                ),
            ));
        }
        (Some(_), true) => return Err(err("scan", "give either \"odoo\" or \"scan\", not both")),
        (None, false) => return Err(err("odoo", "required: the Odoo call this transaction makes")),
    };
    let id = match &key {
        Some(k) => Transaction::keyed_id(plant, source, &device, k),
        None => Uuid::now_v7(),
    };
    Ok(Transaction { id, plant: plant.to_owned(), source, device, key, order_key, received_at_ms, occurred_at_ms, op })
}

/// The first level of every Holdfast MQTT topic: `holdfast/<plant>/<source>/<device>`.
pub const TOPIC_ROOT: &str = "holdfast";

/// Parses an MQTT publish: the topic names plant, source and device; the payload is the producer
/// contract's object, whose `source` and `device`, if present, must agree with the topic.
pub fn parse_mqtt(topic: &str, payload: &[u8], plant: &str, received_at_ms: i64) -> Result<Transaction, FieldError> {
    let levels: Vec<&str> = topic.split('/').collect();
    let [root, topic_plant, source, device] = levels.as_slice() else {
        return Err(err("topic", format!("{topic:?} is not {TOPIC_ROOT}/<plant>/<source>/<device>")));
    };
    if *root != TOPIC_ROOT {
        return Err(err("topic", format!("{topic:?} is not {TOPIC_ROOT}/<plant>/<source>/<device>")));
    }
    if *topic_plant != plant {
        return Err(err(
            "topic",
            format!("the topic names plant {topic_plant:?}; this gateway journals for plant {plant:?} only"),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|e| err("", format!("the payload is not UTF-8: {e}")))?;
    let mut value: Value = serde_json::from_str(text).map_err(|e| err("", format!("the payload is not JSON: {e}")))?;
    let obj = value.as_object_mut().ok_or_else(|| err("", "a transaction must be a JSON object"))?;
    for (field, from_topic) in [("source", *source), ("device", *device)] {
        match obj.get(field) {
            None => {
                obj.insert(field.to_owned(), Value::String(from_topic.to_owned()));
            }
            Some(Value::String(s)) if s == from_topic => {}
            Some(other) => {
                return Err(err(field, format!("the payload says {other} but the topic says {from_topic:?}")));
            }
        }
    }
    parse(value, plant, received_at_ms)
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, FieldError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(err(field, "must be a string")),
        None => Err(err(field, "required")),
    }
}

/// An optional short name: non-empty, at most [`NAME_BYTES_MAX`] bytes, no control characters.
fn name(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(err(field, "must not be empty")),
        Some(Value::String(s)) if s.len() > NAME_BYTES_MAX => {
            Err(err(field, format!("is {} bytes; at most {NAME_BYTES_MAX}", s.len())))
        }
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(err(field, "must not contain control characters"))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(err(field, "must be a string")),
    }
}

fn timestamp(v: &Value) -> Result<i64, FieldError> {
    let s =
        v.as_str().ok_or_else(|| err("occurred_at", "must be an RFC 3339 string such as \"2026-11-26T08:15:00Z\""))?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| err("occurred_at", format!("{s:?} is not an RFC 3339 time with a zone ({e})")))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn odoo_call(v: Value) -> Result<OdooCall, FieldError> {
    let Value::Object(mut obj) = v else {
        return Err(err("odoo", "must be an object with model, method, args and kwargs"));
    };
    if let Some(unknown) = obj.keys().find(|k| !ODOO_FIELDS.contains(&k.as_str())) {
        return Err(err(
            &format!("odoo.{unknown}"),
            format!("unknown field; an Odoo call has {}", ODOO_FIELDS.join(", ")),
        ));
    }
    let model = required_str(&obj, "model").map_err(|e| err("odoo.model", e.message))?;
    if model.is_empty()
        || !model.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
    {
        return Err(err("odoo.model", format!("{model:?} is not an Odoo model name such as \"stock.picking\"")));
    }
    let method = required_str(&obj, "method").map_err(|e| err("odoo.method", e.message))?;
    if method.is_empty() || method.starts_with('_') {
        return Err(err(
            "odoo.method",
            format!("{method:?}: Odoo refuses private methods (starting with '_') over RPC"),
        ));
    }
    let (model, method) = (model.to_owned(), method.to_owned());
    let args = match obj.remove("args") {
        None => Value::Array(Vec::new()),
        Some(a @ Value::Array(_)) => a,
        Some(_) => return Err(err("odoo.args", "must be a JSON array of positional arguments")),
    };
    let kwargs = match obj.remove("kwargs") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(err("odoo.kwargs", "must be a JSON object of keyword arguments")),
    };
    Ok(OdooCall { model, method, args, kwargs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> Transaction {
        parse(v, "plant-a", 5).unwrap()
    }

    fn refused(v: Value) -> (String, String) {
        let e = parse(v, "plant-a", 5).unwrap_err();
        (e.field, e.message)
    }

    #[test]
    fn the_design_example_parses() {
        let t = ok(
            json!({"source": "mes", "device": "line-3", "key": "WO-1187-op20-qty5", "occurred_at": "2026-11-26T08:15:00Z",
            "order_key": "mo:WH/MO/01187",
            "odoo": {"model": "mrp.production", "method": "write",
                     "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", "WH/MO/01187"]]}}], {"qty_producing": 5.0}],
                     "kwargs": {}}}),
        );
        assert_eq!(t.id, Transaction::keyed_id("plant-a", SourceKind::Mes, "line-3", "WO-1187-op20-qty5"));
        assert_eq!(t.order_key, "mo:WH/MO/01187");
        assert_eq!(t.occurred_at_ms, Some(1_795_680_900_000));
        assert_eq!(t.received_at_ms, 5);
    }

    #[test]
    fn defaults_order_key_to_the_plant_and_unkeyed_ids_are_fresh() {
        let v = json!({"source": "plc", "device": "press-1", "odoo": {"model": "res.users", "method": "context_get"}});
        let (a, b) = (ok(v.clone()), ok(v));
        assert_eq!(a.order_key, "plant-a");
        assert_ne!(a.id, b.id, "without a key, a resend is a new transaction");
        assert_eq!(a.id.get_version_num(), 7);
    }

    #[test]
    fn mqtt_topics_name_plant_source_and_device() {
        let payload = br#"{"key": "k1", "odoo": {"model": "res.users", "method": "context_get"}}"#;
        let t = parse_mqtt("holdfast/plant-a/barcode/dock-1", payload, "plant-a", 9).unwrap();
        assert_eq!((t.source, t.device.as_str()), (SourceKind::Barcode, "dock-1"));
        assert_eq!(t.id, Transaction::keyed_id("plant-a", SourceKind::Barcode, "dock-1", "k1"));
        let refuse = |topic: &str, payload: &[u8]| {
            let e = parse_mqtt(topic, payload, "plant-a", 9).unwrap_err();
            (e.field, e.message)
        };
        assert_eq!(
            refuse("holdfast/plant-b/barcode/dock-1", payload),
            (
                "topic".into(),
                "the topic names plant \"plant-b\"; this gateway journals for plant \"plant-a\" only".into()
            )
        );
        assert_eq!(refuse("plants/plant-a/x", payload).0, "topic");
        assert_eq!(
            refuse(
                "holdfast/plant-a/barcode/dock-1",
                br#"{"device": "dock-2", "odoo": {"model": "res.users", "method": "x"}}"#
            ),
            ("device".into(), "the payload says \"dock-2\" but the topic says \"dock-1\"".into())
        );
        assert_eq!(
            refuse("holdfast/plant-a/barcode/dock-1", b"\xff\xfe").1,
            "the payload is not UTF-8: invalid utf-8 sequence of 1 bytes from index 0"
        );
        assert_eq!(refuse("holdfast/plant-a/barcode/dock-1", b"{").0, "");
    }

    #[test]
    fn each_mistake_names_its_field() {
        let base = json!({"source": "mes", "device": "d", "odoo": {"model": "res.users", "method": "context_get"}});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(refused(json!([1])), ("".into(), "a transaction must be a JSON object".into()));
        assert_eq!(refused(with("sorce", json!("x"))).0, "sorce");
        assert_eq!(
            refused(with("source", json!("erp"))),
            ("source".into(), "\"erp\" is not a source kind; use one of mes, barcode, scanner, plc".into())
        );
        assert_eq!(refused(with("device", json!(""))), ("device".into(), "must not be empty".into()));
        assert_eq!(refused(with("key", json!("x".repeat(300)))), ("key".into(), "is 300 bytes; at most 256".into()));
        assert_eq!(refused(with("occurred_at", json!("yesterday"))).0, "occurred_at");
        assert_eq!(refused(with("plant", json!("plant-b"))).0, "plant");
        assert_eq!(
            refused(with("odoo", json!({"model": "res.users", "method": "_sudo"}))),
            ("odoo.method".into(), "\"_sudo\": Odoo refuses private methods (starting with '_') over RPC".into())
        );
        assert_eq!(refused(with("odoo", json!({"model": "res.users", "method": "x", "args": {}}))).0, "odoo.args");
        assert_eq!(refused(with("odoo", json!({"model": "Res Users", "method": "x"}))).0, "odoo.model");
        assert_eq!(
            refused(with("odoo", json!({"model": "res.users", "method": "x", "context": {}}))).0,
            "odoo.context"
        );
        assert_eq!(
            refused(json!({"source": "mes", "device": "d"})),
            ("odoo".into(), "required: the Odoo call this transaction makes".into())
        );
        assert_eq!(refused(json!({"source": "barcode", "device": "dock-1", "scan": {"code": "1"}})).0, "scan");
    }
}
