//! The Odoo double follows ODOO.md's wire facts, quirks included, and the hub's JSON-RPC driver
//! reads them correctly.

use std::time::Duration;

use holdfast_hub::config::{DeliveryMode, OdooConfig};
use holdfast_hub::odoo::{OdooClient, RpcError};
use serde_json::{Value, json};
use tests::harness::{set_faults, sim_stats};
use tests::odoo_sim::{self, SimConfig, Version};

async fn start(version: Version) -> String {
    start_with(SimConfig { version, ..SimConfig::default() }).await
}

async fn start_with(cfg: SimConfig) -> String {
    tests::harness::install_crypto();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(odoo_sim::serve(listener, cfg));
    url
}

fn client_cfg(url: &str, api_key: &str) -> OdooConfig {
    let sim = SimConfig::default();
    OdooConfig {
        url: url.to_owned(),
        database: sim.database,
        login: sim.login,
        api_key: api_key.to_owned(),
        api_key_file: None,
        mode: DeliveryMode::Inbox,
        timeout: Duration::from_secs(10),
        probe_interval: Duration::from_secs(10),
        limit_time_real: Duration::from_secs(120),
        checks: Vec::new(),
    }
}

async fn set_db_down(url: &str, down: bool) {
    set_faults(url, json!({"db_down": down})).await;
}

async fn health(url: &str, query: &str) -> (u16, String, String, Value) {
    let resp = reqwest::get(format!("{url}/web/health{query}")).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let cache = resp.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(resp.headers().get("set-cookie").is_none(), "health sets no cookie");
    (status, ct, cache, resp.json().await.unwrap())
}

#[tokio::test]
async fn health_answers_as_each_version_does() {
    let v17 = start(Version::V17).await;
    let raw = |url: String| async move {
        let resp = reqwest::get(url).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    assert_eq!(raw(format!("{v17}/web/health")).await, (200, r#"{"status": "pass"}"#.into()));
    assert_eq!(
        raw(format!("{v17}/web/health?db_server_status=1")).await,
        (200, r#"{"status": "pass", "db_server_status": true}"#.into())
    );
    assert_eq!(health(&v17, "").await, (200, "application/json".into(), "no-store".into(), json!({"status": "pass"})));
    assert_eq!(
        health(&v17, "?db_server_status=0").await.3,
        json!({"status": "pass", "db_server_status": true}),
        "any non-empty value, even 0"
    );
    set_db_down(&v17, true).await;
    assert_eq!(
        health(&v17, "").await.3,
        json!({"status": "pass"}),
        "without the parameter it passes even with the database down"
    );
    let (status, _, _, body) = health(&v17, "?db_server_status=1").await;
    assert_eq!((status, body), (500, json!({"status": "fail", "db_server_status": false})));
    assert_eq!(
        raw(format!("{v17}/web/health?db_server_status=1")).await,
        (500, r#"{"status": "fail", "db_server_status": false}"#.into())
    );

    let v16 = start(Version::V16).await;
    set_db_down(&v16, true).await;
    assert_eq!(health(&v16, "?db_server_status=1").await.3, json!({"status": "pass"}), "16.0 ignores the parameter");
}

async fn rpc_raw(url: &str, content_type: &str, body: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/jsonrpc"))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn json_rpc_keeps_odoos_quirks() {
    let url = start(Version::V17).await;
    assert_eq!(rpc_raw(&url, "text/plain", "{}").await.0, 400);
    assert_eq!(rpc_raw(&url, "application/json", "{nope").await, (400, "Invalid JSON data".into()));
    assert_eq!(rpc_raw(&url, "application/json", "[1]").await, (400, "Invalid JSON-RPC data".into()));
    // The top-level method is ignored; application/json-rpc is accepted.
    let body = json!({"jsonrpc": "2.0", "method": "whatever", "params": {"service": "common", "method": "version", "args": []}, "id": 7});
    let (status, text) = rpc_raw(&url, "application/json-rpc", &body.to_string()).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["id"], 7);
    assert_eq!(v["result"]["server_version_info"], json!([17, 0, 0, "final", 0, ""]));

    // The bytes, as Odoo's json.dumps writes them: its key order and separators.
    assert_eq!(
        text,
        r#"{"jsonrpc": "2.0", "id": 7, "result": {"server_version": "17.0", "server_version_info": [17, 0, 0, "final", 0, ""], "server_serie": "17.0", "protocol_version": 1}}"#
    );
    let call = |id: u32, service: &str, method: &str, args: Value| {
        json!({"jsonrpc": "2.0", "method": "call", "params": {"service": service, "method": method, "args": args}, "id": id})
            .to_string()
    };
    let sim = SimConfig::default();
    let refused = call(3, "common", "authenticate", json!([sim.database, sim.login, "wrong", {}]));
    assert_eq!(
        rpc_raw(&url, "application/json", &refused).await,
        (200, r#"{"jsonrpc": "2.0", "id": 3, "result": false}"#.into())
    );
    // A method returning None: neither result nor error.
    let mo = call(
        4,
        "object",
        "execute_kw",
        json!([sim.database, 2, sim.api_key, "mrp.production", "search", [[["name", "=", "WH/MO/00001"]]]]),
    );
    let (_, found) = rpc_raw(&url, "application/json", &mo).await;
    let mo: Value = serde_json::from_str(&found).unwrap();
    let none = call(
        9,
        "object",
        "execute_kw",
        json!([sim.database, 2, sim.api_key, "mrp.production", "set_qty_producing", [mo["result"]]]),
    );
    assert_eq!(rpc_raw(&url, "application/json", &none).await, (200, r#"{"jsonrpc": "2.0", "id": 9}"#.into()));
    let missing = call(5, "object", "execute_kw", json!([sim.database, 2, sim.api_key, "no.such.model", "read", []]));
    assert_eq!(
        rpc_raw(&url, "application/json", &missing).await.1,
        r#"{"jsonrpc": "2.0", "id": 5, "error": {"code": 404, "message": "Odoo Server Error", "data": {"name": "werkzeug.exceptions.NotFound", "debug": "Traceback (most recent call last):\n  File \"odoo/http.py\", line 1, in _serve_db\nwerkzeug.exceptions.NotFound: Object no.such.model doesn't exist\n", "message": "Object no.such.model doesn't exist", "arguments": ["Object no.such.model doesn't exist"], "context": {}}}}"#
    );

    // Errors are HTTP 200 with the exception's name.
    let body = json!({"jsonrpc": "2.0", "method": "call", "params": {"service": "object", "method": "execute_kw",
        "args": ["holdfast", 2, "wrong", "res.users", "context_get", []]}, "id": 8});
    let resp = reqwest::Client::new().post(format!("{url}/jsonrpc")).json(&body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json; charset=utf-8");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], 200);
    assert_eq!(v["error"]["message"], "Odoo Server Error");
    assert_eq!(v["error"]["data"]["name"], "odoo.exceptions.AccessDenied");
    assert!(v.get("result").is_none());
}

#[tokio::test]
async fn the_hub_driver_reads_false_logins_none_results_and_named_errors() {
    let url = start(Version::V17).await;
    let sim = SimConfig::default();

    let bad = OdooClient::new(&client_cfg(&url, "0000000000000000000000000000000000000000")).unwrap();
    assert_eq!(
        bad.uid().await,
        Err(RpcError::CredentialsRefused(sim.login.clone())),
        "authenticate answers false, not an error"
    );

    let odoo = OdooClient::new(&client_cfg(&url, &sim.api_key)).unwrap();
    assert_eq!(odoo.uid().await, Ok(odoo_sim::HUB_UID));
    assert_eq!(odoo.version().await.unwrap()["server_serie"], "17.0");
    assert_eq!(odoo.execute_kw("res.users", "context_get", json!([]), json!({})).await.unwrap()["uid"], 2);

    // A method returning None answers with neither result nor error: success, as null.
    let mo =
        odoo.execute_kw("mrp.production", "search", json!([[["name", "=", "WH/MO/00001"]]]), json!({})).await.unwrap();
    assert_eq!(odoo.execute_kw("mrp.production", "set_qty_producing", json!([mo]), json!({})).await, Ok(Value::Null));

    match odoo.execute_kw("res.users", "_sudo", json!([]), json!({})).await {
        Err(RpcError::Odoo(e)) => assert_eq!(e.name, "odoo.exceptions.AccessError"),
        other => panic!("{other:?}"),
    }
    set_db_down(&url, true).await;
    match odoo.execute_kw("res.users", "context_get", json!([]), json!({})).await {
        Err(RpcError::Odoo(e)) => assert_eq!(e.name, "psycopg2.OperationalError"),
        other => panic!("{other:?}"),
    }
}

/// The capacity model over HTTP: a call served past `limit_time_real` gets no answer, yet its
/// effect is recorded; the worker it held serves the next call; the figures say so.
#[tokio::test]
async fn a_call_past_limit_time_real_gets_no_answer_but_its_effect_is_recorded() {
    let url = start(Version::V17).await;
    let http = reqwest::Client::new();
    let capacity = json!({"workers": 1, "per_call": "5ms", "per_operation": "2ms", "limit_time_real": "100ms"});
    let resp = http.post(format!("{url}/holdfast-sim/capacity")).json(&capacity).send().await.unwrap();
    assert!(resp.status().is_success());
    let odoo = OdooClient::new(&client_cfg(&url, &SimConfig::default().api_key)).unwrap();
    // 60 operations: 5 + 60 × 2 = 125 ms of service, past the 100 ms limit.
    let items: Vec<Value> = (0..60)
        .map(|n| {
            json!({"id": format!("00000000-0000-0000-0000-{n:012}"), "order_key": "k", "model": "res.users",
                   "method": "context_get", "args": [], "kwargs": {}})
        })
        .collect();
    let answer = odoo.execute_kw("holdfast.inbox", "apply_batch", json!([items]), json!({"plant": "plant-a"})).await;
    match answer {
        Err(RpcError::Unknown(reason)) => assert!(!reason.is_empty()),
        other => panic!("a killed worker answers nothing, got {other:?}"),
    }
    let applied = http.get(format!("{url}/holdfast-sim/applied")).send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(applied["applied"].as_array().unwrap().len(), 60, "the effect stays recorded");
    // The worker is free again: a small call is answered.
    assert_eq!(odoo.execute_kw("res.users", "context_get", json!([]), json!({})).await.unwrap()["uid"], 2);
    let stats = sim_stats(&url).await;
    assert_eq!(stats["killed"], 1, "{stats}");
    assert!(stats["answered"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats["in_flight_max"], 1, "{stats}");
}

/// Faults: commit-then-drop leaves the effect without an answer; a refused call runs nothing;
/// a hung call answers only once the hang is lifted.
#[tokio::test]
async fn faults_drop_after_commit_refuse_and_hang_as_configured() {
    let url = start(Version::V17).await;
    let odoo = OdooClient::new(&client_cfg(&url, &SimConfig::default().api_key)).unwrap();
    let count = |name: &'static str| {
        let odoo = &odoo;
        async move {
            odoo.execute_kw("mrp.production", "search_count", json!([[["name", "=", name]]]), json!({})).await.unwrap()
        }
    };
    odoo.uid().await.unwrap();

    set_faults(&url, json!({"commit_then_drop": 1})).await;
    let created = odoo.execute_kw("mrp.production", "create", json!([{"name": "WH/MO/05000"}]), json!({})).await;
    assert!(matches!(created, Err(RpcError::Unknown(_))), "{created:?}");
    assert_eq!(count("WH/MO/05000").await, 1, "the effect was committed");
    assert_eq!(sim_stats(&url).await["dropped"], 1);

    set_faults(&url, json!({"refuse": true})).await;
    let refused = odoo.execute_kw("mrp.production", "create", json!([{"name": "WH/MO/05001"}]), json!({})).await;
    assert!(matches!(refused, Err(RpcError::Unknown(_))), "{refused:?}");
    set_faults(&url, json!({})).await;
    assert_eq!(count("WH/MO/05001").await, 0, "a refused call runs nothing");

    set_faults(&url, json!({"hang": true})).await;
    let call = {
        let odoo = OdooClient::new(&client_cfg(&url, &SimConfig::default().api_key)).unwrap();
        tokio::spawn(async move { odoo.execute_kw("res.users", "context_get", json!([]), json!({})).await })
    };
    tests::harness::wait_for(Duration::from_secs(10), "the call to hang", || {
        let url = &url;
        async move { (sim_stats(url).await["hung"].as_u64()? >= 1).then_some(()) }
    })
    .await;
    assert!(!call.is_finished(), "a hung call has no answer");
    set_faults(&url, json!({})).await;
    assert_eq!(call.await.unwrap().unwrap()["uid"], 2, "answered once the hang is lifted");
}

/// Concurrent writers of one record: the first to commit wins, each of the others fails with
/// `psycopg2.errors.SerializationFailure` and changes nothing; writers of different records
/// never conflict; the chance of failing rises with the writers.
#[tokio::test]
async fn concurrent_writers_of_one_record_fail_to_serialize_and_change_nothing() {
    let url = start_with(SimConfig { serialization_rate: 1.0, ..SimConfig::default() }).await;
    let odoo = OdooClient::new(&client_cfg(&url, &SimConfig::default().api_key)).unwrap();
    odoo.uid().await.unwrap();
    let mos = odoo.execute_kw("mrp.production", "search", json!([[]]), json!({"limit": 4})).await.unwrap();
    let ids: Vec<i64> = mos.as_array().unwrap().iter().take(4).map(|v| v.as_i64().unwrap()).collect();
    // Every call takes 300 ms inside its transaction: the four below overlap.
    set_faults(&url, json!({"slow_ms": 300})).await;
    let write = |id: i64, qty: f64| {
        let odoo = &odoo;
        async move { odoo.execute_kw("mrp.production", "write", json!([[id], {"qty_producing": qty}]), json!({})).await }
    };
    let (a, b, c, d) = tokio::join!(write(ids[0], 1.0), write(ids[0], 2.0), write(ids[0], 3.0), write(ids[0], 4.0));
    let same = [a, b, c, d];
    let failed: Vec<String> = same
        .iter()
        .filter_map(|r| match r {
            Err(RpcError::Odoo(e)) => Some(format!("{}: {}", e.name, e.message)),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed,
        vec!["psycopg2.errors.SerializationFailure: could not serialize access due to concurrent update"; 3],
        "{same:?}"
    );
    let winner = same.iter().position(Result::is_ok).unwrap() + 1;
    let (a, b, c, d) = tokio::join!(write(ids[0], 9.0), write(ids[1], 9.0), write(ids[2], 9.0), write(ids[3], 9.0));
    let different = [a, b, c, d];
    assert!(different.iter().all(Result::is_ok), "{different:?}");
    // The admin API can switch them off (rate 0): the same four writers all commit.
    set_faults(&url, json!({"slow_ms": 300, "serialization_rate": 0.0})).await;
    let (a, b, c, d) = tokio::join!(write(ids[1], 1.0), write(ids[1], 2.0), write(ids[1], 3.0), write(ids[1], 4.0));
    assert!([a, b, c, d].iter().all(Result::is_ok));
    set_faults(&url, json!({})).await;
    let read =
        odoo.execute_kw("mrp.production", "read", json!([[ids[0]], ["qty_producing"]]), json!({})).await.unwrap();
    assert_eq!(read[0]["qty_producing"], 9.0, "the later write, after the winner's {winner}");
    assert_eq!(sim_stats(&url).await["serialization_failures"], 3);
    let chances: Vec<f64> = (0..5).map(|k| odoo_sim::failure_chance(0.5, k)).collect();
    assert_eq!(chances, vec![0.0, 0.5, 0.75, 0.875, 0.9375]);
}

/// A `<methodCall>` of `method` with `params`, each already an XML-RPC `<value>`.
fn method_call(method: &str, params: &[String]) -> String {
    let params: String = params.iter().map(|p| format!("<param>\n{p}</param>\n")).collect();
    format!(
        "<?xml version='1.0'?>\n<methodCall>\n<methodName>{method}</methodName>\n<params>\n{params}</params>\n</methodCall>\n"
    )
}

fn xml_string(s: &str) -> String {
    format!("<value><string>{s}</string></value>\n")
}

fn xml_int(i: i64) -> String {
    format!("<value><int>{i}</int></value>\n")
}

async fn xmlrpc(url: &str, service: &str, body: String) -> (u16, String, String) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/xmlrpc/2/{service}"))
        .header("content-type", "text/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    (resp.status().as_u16(), ct, resp.text().await.unwrap())
}

fn fault(code: i64, text: &str) -> String {
    format!(
        "<?xml version='1.0'?>\n<methodResponse>\n<fault>\n<value><struct>\n<member>\n<name>faultCode</name>\n<value><int>{code}</int></value>\n</member>\n<member>\n<name>faultString</name>\n<value><string>{text}</string></value>\n</member>\n</struct></value>\n</fault>\n</methodResponse>\n"
    )
}

/// XML-RPC, byte for byte: a uid, `false` for a bad login, faults 2, 3 and 4 by exception, and
/// the trap: a method returning None commits, then its answer fails to marshal (fault 1).
#[tokio::test]
async fn xml_rpc_answers_with_odoos_fault_codes_and_its_none_trap() {
    let url = start(Version::V17).await;
    let sim = SimConfig::default();
    let empty = "<value><struct>\n</struct></value>\n".to_owned();
    let login = |key: &str| {
        method_call(
            "authenticate",
            &[xml_string(&sim.database), xml_string(&sim.login), xml_string(key), empty.clone()],
        )
    };
    let answer = xmlrpc(&url, "common", login(&sim.api_key)).await;
    assert_eq!(
        answer,
        (
            200,
            "text/xml; charset=utf-8".into(),
            "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><int>2</int></value>\n</param>\n</params>\n</methodResponse>\n".into()
        )
    );
    assert!(
        xmlrpc(&url, "common", login("0000000000000000000000000000000000000000"))
            .await
            .2
            .contains("<value><boolean>0</boolean></value>")
    );
    let execute = |key: &str, model: &str, method: &str, args: &str| {
        method_call(
            "execute_kw",
            &[
                xml_string(&sim.database),
                xml_int(2),
                xml_string(key),
                xml_string(model),
                xml_string(method),
                args.to_owned(),
            ],
        )
    };
    let no_args = "<value><array><data>\n</data></array></value>\n";
    let denied = xmlrpc(&url, "object", execute("bad", "res.users", "context_get", no_args)).await;
    assert_eq!(denied.2, fault(3, "Access Denied"));
    let private = xmlrpc(&url, "object", execute(&sim.api_key, "res.users", "_sudo", no_args)).await;
    assert_eq!(private.2, fault(4, "Private methods (such as res.users._sudo) cannot be called remotely."));
    let odoo = OdooClient::new(&client_cfg(&url, &sim.api_key)).unwrap();
    let mo =
        odoo.execute_kw("mrp.production", "search", json!([[["name", "=", "WH/MO/00001"]]]), json!({})).await.unwrap()
            [0]
        .as_i64()
        .unwrap();
    let negative = format!(
        "<value><array><data>\n<value><array><data>\n{}</data></array></value>\n<value><struct>\n<member>\n<name>qty_producing</name>\n<value><double>-1.0</double></value>\n</member>\n</struct></value>\n</data></array></value>\n",
        xml_int(mo)
    );
    let refused = xmlrpc(&url, "object", execute(&sim.api_key, "mrp.production", "write", &negative)).await;
    assert_eq!(refused.2, fault(2, "The quantity producing must be a positive number, not -1.0."));

    // The trap: a count applied over XML-RPC returns None; Odoo committed, then faults.
    let product = odoo
        .execute_kw("product.product", "search", json!([[["barcode", "=", "5901234123457"]]]), json!({}))
        .await
        .unwrap()[0]
        .clone();
    let stock =
        odoo.execute_kw("stock.location", "search", json!([[["name", "=", "WH/Stock"]]]), json!({})).await.unwrap()[0]
            .clone();
    let count = json!([{"product_id": product, "location_id": stock, "inventory_quantity": 12.0}]);
    let quant =
        odoo.execute_kw("stock.quant", "create", count, json!({"context": {"inventory_mode": true}})).await.unwrap();
    let apply = format!(
        "<value><array><data>\n<value><array><data>\n{}</data></array></value>\n</data></array></value>\n",
        xml_int(quant.as_i64().unwrap())
    );
    let trap = xmlrpc(&url, "object", execute(&sim.api_key, "stock.quant", "action_apply_inventory", &apply)).await;
    assert_eq!(
        trap.2,
        fault(
            1,
            "Traceback (most recent call last):\n  File \"odoo/addons/base/controllers/rpc.py\", line 1, in xmlrpc_2\nTypeError: cannot marshal None unless allow_none is enabled\n"
        )
    );
    let read = odoo.execute_kw("stock.quant", "read", json!([[quant], ["quantity"]]), json!({})).await.unwrap();
    assert_eq!(read[0]["quantity"], 12.0, "the fault came after the commit");
    // Not XML at all: fault 1, with the parser's complaint.
    let (status, _, body) = xmlrpc(&url, "object", "{\"jsonrpc\": \"2.0\"}".into()).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("<name>faultCode</name>\n<value><int>1</int></value>") && body.contains("ExpatError"),
        "{body}"
    );
}

/// A disaster-recovery double: `odoo-sim --snapshot-of <primary> --as-of N` starts with the
/// primary's data up to its N-th commit. What the primary committed after it is missing (the
/// recovery-point gap); sent again, it is applied there once, and what it holds stays a duplicate.
#[tokio::test]
async fn a_snapshot_double_holds_the_primarys_data_up_to_a_commit() {
    let env = tests::harness::Env::new(&[]);
    let primary = env.odoo_sim("primary").await;
    let sim = SimConfig::default();
    let odoo = OdooClient::new(&client_cfg(&primary.url, &sim.api_key)).unwrap();
    odoo.execute_kw("mrp.production", "write", json!([[101], {"qty_producing": 3.0}]), json!({})).await.unwrap_err();
    let mo =
        odoo.execute_kw("mrp.production", "search", json!([[["name", "=", "WH/MO/00001"]]]), json!({})).await.unwrap();
    odoo.execute_kw("mrp.production", "write", json!([mo, {"qty_producing": 3.0}]), json!({})).await.unwrap();
    assert_eq!(apply(&odoo, &["t1", "t2"]).await, vec!["applied", "applied"]);
    assert_eq!(apply(&odoo, &["t3"]).await, vec!["applied"]);
    let applied = env.get_json(&format!("{}/holdfast-sim/applied", primary.url)).await;
    assert_eq!(applied["commits"], 3, "a failed call and reads commit nothing");

    let dr = env.odoo_sim_with("dr", &["--snapshot-of", &primary.url, "--as-of", "2"]).await;
    let recovered = env.get_json(&format!("{}/holdfast-sim/applied", dr.url)).await;
    let ids: Vec<&str> = recovered["applied"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["t1", "t2"], "t3 was committed after the recovery point");
    let standby = OdooClient::new(&client_cfg(&dr.url, &sim.api_key)).unwrap();
    let read = standby.execute_kw("mrp.production", "read", json!([mo, ["qty_producing"]]), json!({})).await.unwrap();
    assert_eq!(read[0]["qty_producing"], 3.0);
    assert_eq!(apply(&standby, &["t2", "t3"]).await, vec!["duplicate", "applied"], "the gap is sent again, once");
    let count =
        standby.execute_kw("mrp.production", "search_count", json!([[["name", "=", "WH/MO/t3"]]]), json!({})).await;
    assert_eq!(count.unwrap(), 1);
    let too_far = reqwest::get(format!("{}/holdfast-sim/snapshot?as_of=9", primary.url)).await.unwrap();
    assert_eq!(too_far.status().as_u16(), 400);
    assert_eq!(too_far.text().await.unwrap(), "as_of 9: this double has committed 3 calls");
}

/// Sends an inbox batch creating one order per id on key `k`; the statuses answered.
async fn apply(client: &OdooClient, ids: &[&str]) -> Vec<String> {
    let items: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"id": id, "order_key": "k", "model": "mrp.production", "method": "create",
                   "args": [{"name": format!("WH/MO/{id}")}], "kwargs": {}})
        })
        .collect();
    let answer =
        client.execute_kw("holdfast.inbox", "apply_batch", json!([items]), json!({"plant": "plant-a"})).await.unwrap();
    answer.as_array().unwrap().iter().map(|a| a["status"].as_str().unwrap().to_owned()).collect()
}
