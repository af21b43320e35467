//! XML-RPC as Odoo speaks it on `/xmlrpc/2/`: requests read as Python's `xmlrpc.client.loads`
//! reads them, answers written byte for byte as `xmlrpc.client.dumps(..., methodresponse=1,
//! allow_none=False)` writes them, and exceptions turned into faults with Odoo's integer codes
//! (`xmlrpc_handle_exception_int`): 2 for `UserError` and its subclasses (`ValidationError`,
//! `MissingError`) and `RedirectWarning`, 3 for `AccessDenied`, 4 for `AccessError`, 1 with
//! the traceback for anything else, including an answer of None that cannot be marshalled.

use serde_json::{Map, Value};

use super::model::Fault;

/// The method name and parameters of a `<methodCall>`.
pub fn parse_call(body: &[u8]) -> Result<(String, Vec<Value>), String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let doc = roxmltree::Document::parse(text).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if root.tag_name().name() != "methodCall" {
        return Err(format!("expected methodCall, found {}", root.tag_name().name()));
    }
    let method = child(root, "methodName").and_then(|n| n.text()).ok_or("methodCall without methodName")?.to_owned();
    let mut params = Vec::new();
    if let Some(list) = child(root, "params") {
        for param in elements(list).filter(|p| p.has_tag_name("param")) {
            params.push(value(child(param, "value").ok_or("param without value")?)?);
        }
    }
    Ok((method, params))
}

fn child<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    node.children().find(|c| c.has_tag_name(name))
}

fn elements<'a>(node: roxmltree::Node<'a, 'a>) -> impl Iterator<Item = roxmltree::Node<'a, 'a>> {
    node.children().filter(roxmltree::Node::is_element)
}

fn value(node: roxmltree::Node) -> Result<Value, String> {
    let Some(typed) = elements(node).next() else {
        // A bare <value>text</value> is a string.
        return Ok(Value::String(node.text().unwrap_or("").to_owned()));
    };
    let text = typed.text().unwrap_or("").trim();
    Ok(match typed.tag_name().name() {
        "int" | "i4" | "i8" => Value::from(text.parse::<i64>().map_err(|e| format!("bad int {text:?}: {e}"))?),
        "boolean" => match text {
            "0" => Value::Bool(false),
            "1" => Value::Bool(true),
            other => return Err(format!("bad boolean value {other:?}")),
        },
        "double" => Value::from(text.parse::<f64>().map_err(|e| format!("bad double {text:?}: {e}"))?),
        "string" | "dateTime.iso8601" | "base64" => Value::String(typed.text().unwrap_or("").to_owned()),
        "nil" => Value::Null,
        "array" => {
            let data = child(typed, "data").ok_or("array without data")?;
            Value::Array(elements(data).map(value).collect::<Result<_, _>>()?)
        }
        "struct" => {
            let mut map = Map::new();
            for member in elements(typed).filter(|m| m.has_tag_name("member")) {
                let name = child(member, "name").and_then(|n| n.text()).unwrap_or("").to_owned();
                map.insert(name, value(child(member, "value").ok_or("member without value")?)?);
            }
            Value::Object(map)
        }
        other => return Err(format!("unknown XML-RPC type {other}")),
    })
}

/// A successful answer; a value holding None cannot be marshalled (`allow_none=False`), which
/// Odoo answers with fault 1 after the call has committed.
pub fn response(result: &Value) -> String {
    let mut out = String::new();
    if dump(result, &mut out).is_err() {
        return fault(1, &traceback("TypeError", "cannot marshal None unless allow_none is enabled"));
    }
    format!("<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n{out}</param>\n</params>\n</methodResponse>\n")
}

/// The fault Odoo answers for an exception.
pub fn fault_of(f: &Fault) -> String {
    match f.name {
        "odoo.exceptions.UserError"
        | "odoo.exceptions.ValidationError"
        | "odoo.exceptions.MissingError"
        | "odoo.exceptions.RedirectWarning" => fault(2, &f.message),
        "odoo.exceptions.AccessDenied" => fault(3, &f.message),
        "odoo.exceptions.AccessError" => fault(4, &f.message),
        name => fault(1, &traceback(name, &f.message)),
    }
}

pub fn fault(code: i64, text: &str) -> String {
    format!(
        "<?xml version='1.0'?>\n<methodResponse>\n<fault>\n<value><struct>\n<member>\n<name>faultCode</name>\n<value><int>{code}</int></value>\n</member>\n<member>\n<name>faultString</name>\n<value><string>{}</string></value>\n</member>\n</struct></value>\n</fault>\n</methodResponse>\n",
        escape(text)
    )
}

/// The formatted traceback fault 1 carries.
pub fn traceback(name: &str, message: &str) -> String {
    format!(
        "Traceback (most recent call last):\n  File \"odoo/addons/base/controllers/rpc.py\", line 1, in xmlrpc_2\n{name}: {message}\n"
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Python's `Marshaller.__dump`; Err for None.
fn dump(v: &Value, out: &mut String) -> Result<(), ()> {
    match v {
        Value::Null => return Err(()),
        Value::Bool(b) => out.push_str(&format!("<value><boolean>{}</boolean></value>\n", u8::from(*b))),
        Value::Number(n) if n.is_i64() || n.is_u64() => out.push_str(&format!("<value><int>{n}</int></value>\n")),
        Value::Number(n) => {
            out.push_str(&format!("<value><double>{}</double></value>\n", python_repr(n.as_f64().unwrap_or(0.0))))
        }
        Value::String(s) => out.push_str(&format!("<value><string>{}</string></value>\n", escape(s))),
        Value::Array(items) => {
            out.push_str("<value><array><data>\n");
            for item in items {
                dump(item, out)?;
            }
            out.push_str("</data></array></value>\n");
        }
        Value::Object(map) => {
            out.push_str("<value><struct>\n");
            for (k, item) in map {
                out.push_str(&format!("<member>\n<name>{}</name>\n", escape(k)));
                dump(item, out)?;
                out.push_str("</member>\n");
            }
            out.push_str("</struct></value>\n");
        }
    }
    Ok(())
}

/// `repr(float)`: `5.0`, not `5`.
fn python_repr(f: f64) -> String {
    if f.fract() == 0.0 && f.is_finite() && f.abs() < 1e16 { format!("{f:.1}") } else { format!("{f}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_parse_and_answers_marshal_as_python_does() {
        let call = b"<?xml version='1.0'?>\n<methodCall>\n<methodName>execute_kw</methodName>\n<params>\n<param>\n<value><string>holdfast</string></value>\n</param>\n<param>\n<value><int>2</int></value>\n</param>\n<param>\n<value><array><data>\n<value><array><data>\n<value><int>7</int></value>\n</data></array></value>\n<value><struct>\n<member>\n<name>qty_producing</name>\n<value><double>5.0</double></value>\n</member>\n<member>\n<name>picked</name>\n<value><boolean>1</boolean></value>\n</member>\n</struct></value>\n</data></array></value>\n</param>\n<param>\n<value>bare</value>\n</param>\n</params>\n</methodCall>\n";
        let (method, params) = parse_call(call).unwrap();
        assert_eq!(method, "execute_kw");
        assert_eq!(
            params,
            vec![json!("holdfast"), json!(2), json!([[7], {"qty_producing": 5.0, "picked": true}]), json!("bare")]
        );
        assert_eq!(
            response(&json!([{"id": 7, "name": "A & <B>"}, 2.5, false])),
            "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><array><data>\n<value><struct>\n<member>\n<name>id</name>\n<value><int>7</int></value>\n</member>\n<member>\n<name>name</name>\n<value><string>A &amp; &lt;B&gt;</string></value>\n</member>\n</struct></value>\n<value><double>2.5</double></value>\n<value><boolean>0</boolean></value>\n</data></array></value>\n</param>\n</params>\n</methodResponse>\n"
        );
        assert!(parse_call(b"<methodCall><methodName>x</methodName><params><param><value><int>x</int></value></param></params></methodCall>").is_err());
    }
}
