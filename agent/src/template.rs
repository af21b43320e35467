//! Station templates: a scanner sends only a code; the station's template turns it into an Odoo
//! call with references the hub resolves (a product by barcode, the open receipt at this dock, a
//! manufacturing order by name). Pure.
//!
//! A template is the producer contract's `odoo` object whose strings may hold placeholders:
//! `{code}`, `{key}`, `{device}`, `{station}`, `{occurred_at}` (Odoo's UTC datetime format), and
//! `{qty}`. A string that is exactly `"{qty}"` becomes a number. A scanned code may carry a
//! quantity after the station's `qty_separator` (`5901234123457*12`); without one the quantity is 1.

use holdfast_protocol::OdooCall;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Placeholders a template may use.
pub const PLACEHOLDERS: [&str; 6] = ["{code}", "{key}", "{device}", "{station}", "{occurred_at}", "{qty}"];

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub model: String,
    pub method: String,
    #[serde(default = "empty_array")]
    pub args: Value,
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

fn empty_array() -> Value {
    Value::Array(Vec::new())
}

/// What one scan supplies to a template.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanInput<'a> {
    pub code: &'a str,
    pub key: Option<&'a str>,
    pub qty: f64,
    pub device: &'a str,
    pub station: &'a str,
    pub occurred_at: &'a str,
}

impl Template {
    /// Problems with the template, for config validation.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.model.is_empty()
            || !self.model.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
        {
            out.push(format!("{at}.model: {:?} is not an Odoo model name", self.model));
        }
        if self.method.is_empty() || self.method.starts_with('_') {
            out.push(format!("{at}.method: {:?} must be a public method (not starting with '_')", self.method));
        }
        if !self.args.is_array() {
            out.push(format!("{at}.args: must be an array"));
        }
        let mut unknown = Vec::new();
        walk_strings(&self.args, &mut |s| unknown.extend(unknown_placeholders(s)));
        walk_strings(&Value::Object(self.kwargs.clone()), &mut |s| unknown.extend(unknown_placeholders(s)));
        for u in unknown {
            out.push(format!("{at}: unknown placeholder {u}; use {}", PLACEHOLDERS.join(", ")));
        }
        out
    }

    /// The Odoo call for one scan.
    pub fn render(&self, scan: &ScanInput<'_>) -> OdooCall {
        let Value::Object(kwargs) = fill(&Value::Object(self.kwargs.clone()), scan) else {
            unreachable!("an object stays an object")
        };
        OdooCall { model: self.model.clone(), method: self.method.clone(), args: fill(&self.args, scan), kwargs }
    }
}

fn walk_strings(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| walk_strings(x, f)),
        Value::Object(o) => o.values().for_each(|x| walk_strings(x, f)),
        _ => {}
    }
}

fn unknown_placeholders(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else { break };
        let candidate = &rest[start..start + len + 1];
        if !PLACEHOLDERS.contains(&candidate)
            && candidate.len() > 2
            && candidate[1..candidate.len() - 1].bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            out.push(candidate.to_owned());
        }
        rest = &rest[start + len + 1..];
    }
    out
}

fn fill(v: &Value, scan: &ScanInput<'_>) -> Value {
    match v {
        Value::String(s) if s == "{qty}" => serde_json::Number::from_f64(scan.qty).map_or(Value::Null, Value::Number),
        Value::String(s) => Value::String(
            s.replace("{code}", scan.code)
                .replace("{key}", scan.key.unwrap_or(""))
                .replace("{device}", scan.device)
                .replace("{station}", scan.station)
                .replace("{occurred_at}", scan.occurred_at)
                .replace("{qty}", &scan.qty.to_string()),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| fill(x, scan)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), fill(x, scan))).collect()),
        other => other.clone(),
    }
}

/// A scanned line: `<code>` or `<key> <code>`, the code optionally followed by
/// `<qty_separator><quantity>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Line<'a> {
    pub key: Option<&'a str>,
    pub code: &'a str,
    pub qty: f64,
}

/// Parses one line (without its newline), or says why it is not one.
pub fn parse_line(line: &str, qty_separator: Option<char>) -> Result<Line<'_>, String> {
    let line = line.trim_end_matches('\r');
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let (key, code) = match fields.as_slice() {
        [] => return Err("empty line: send <code> or <key> <code>".into()),
        [code] => (None, *code),
        [key, code] => (Some(*key), *code),
        _ => return Err(format!("{} fields: send <code> or <key> <code>", fields.len())),
    };
    if code.chars().chain(key.unwrap_or("").chars()).any(char::is_control) {
        return Err("control characters in the line".into());
    }
    let (code, qty) = match qty_separator.and_then(|sep| code.split_once(sep)) {
        None => (code, 1.0),
        Some((code, qty)) => match qty.parse::<f64>() {
            Ok(q) if q.is_finite() && q > 0.0 => (code, q),
            _ => return Err(format!("quantity {qty:?} is not a positive number")),
        },
    };
    if code.is_empty() {
        return Err("empty code".into());
    }
    Ok(Line { key, code, qty })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn receiving() -> Template {
        serde_json::from_value(json!({
            "model": "stock.move", "method": "write",
            "args": [[{"$ref": {"model": "stock.move", "domain": [["product_id.barcode", "=", "{code}"], ["picking_id.state", "=", "assigned"]]}}],
                     {"quantity": "{qty}", "picked": true, "note": "scanned at {station} on {occurred_at}"}]
        }))
        .unwrap()
    }

    #[test]
    fn a_scan_fills_the_template() {
        let scan = ScanInput {
            code: "5901234123457",
            key: None,
            qty: 12.0,
            device: "dock-1",
            station: "receiving",
            occurred_at: "2026-11-26 08:15:00",
        };
        let call = receiving().render(&scan);
        assert_eq!(call.model, "stock.move");
        assert_eq!(call.args[0][0]["$ref"]["domain"][0], json!(["product_id.barcode", "=", "5901234123457"]));
        assert_eq!(call.args[1]["quantity"], json!(12.0), "\"{{qty}}\" alone becomes a number");
        assert_eq!(call.args[1]["note"], "scanned at receiving on 2026-11-26 08:15:00");
    }

    #[test]
    fn unknown_placeholders_and_private_methods_are_reported() {
        let mut t = receiving();
        t.method = "_action_done".into();
        t.args[1]["lot"] = json!("{lot}");
        assert_eq!(
            t.problems("stations[0].template"),
            vec![
                "stations[0].template.method: \"_action_done\" must be a public method (not starting with '_')".to_owned(),
                "stations[0].template: unknown placeholder {lot}; use {code}, {key}, {device}, {station}, {occurred_at}, {qty}".to_owned(),
            ]
        );
    }

    #[test]
    fn lines_are_code_or_key_and_code_with_an_optional_quantity() {
        assert_eq!(parse_line("5901234123457\r", None), Ok(Line { key: None, code: "5901234123457", qty: 1.0 }));
        assert_eq!(
            parse_line("k-1 5901234123457*12", Some('*')),
            Ok(Line { key: Some("k-1"), code: "5901234123457", qty: 12.0 })
        );
        assert_eq!(parse_line("", None), Err("empty line: send <code> or <key> <code>".into()));
        assert_eq!(parse_line("a b c", None), Err("3 fields: send <code> or <key> <code>".into()));
        assert_eq!(parse_line("590*x", Some('*')), Err("quantity \"x\" is not a positive number".into()));
        assert_eq!(parse_line("590*-2", Some('*')), Err("quantity \"-2\" is not a positive number".into()));
    }
}
