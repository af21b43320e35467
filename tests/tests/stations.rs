//! Scanner stations with the shipped example templates, end to end: receiving against a picking,
//! an inventory count and manufacturing progress land in the Odoo double as intended, and bad
//! lines get their exact `ERR` answers.

use std::time::Duration;

use holdfast_hub::config::{DeliveryMode, OdooConfig};
use holdfast_hub::odoo::OdooClient;
use serde_json::{Value, json};
use tests::harness::{Env, wait_for};
use tests::odoo_sim::SimConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The example config's stations, listening on free ports.
fn example_stations() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/agent.example.toml");
    let mut example: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let mut stations = example.remove("stations").expect("the example has stations");
    for st in stations.as_array_mut().unwrap() {
        st.as_table_mut().unwrap().insert("listen".into(), toml::Value::String("127.0.0.1:0".into()));
    }
    let mut wrapper = toml::Table::new();
    wrapper.insert("stations".into(), stations);
    toml::to_string(&wrapper).unwrap()
}

/// Sends lines on one connection and reads one answer per line.
async fn scan(addr: &str, lines: &[&[u8]]) -> Vec<String> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    for line in lines {
        w.write_all(line).await.unwrap();
        w.write_all(b"\n").await.unwrap();
    }
    let mut reader = BufReader::new(r).lines();
    let mut answers = Vec::new();
    while answers.len() < lines.len() {
        answers.push(reader.next_line().await.unwrap().expect("an answer per line"));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_example_templates_reach_odoo_as_intended() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let agent = env.agent_with("plant-a", &hub.field("sync"), &example_stations()).await;
    let http = agent.field("http");
    let (dock, aisle, line) = (
        agent.field("station:dock-1-receiving"),
        agent.field("station:aisle-4-count"),
        agent.field("station:line-3-progress"),
    );

    assert_eq!(
        scan(&dock, &[b"5901234123457*12", b"k-9 4006381333931", b"k-9 4006381333931"]).await,
        ["ACK 1", "ACK 2", "ACK 2"]
    );
    assert_eq!(scan(&aisle, &[b"8712345678906*7"]).await, ["ACK 3"]);
    assert_eq!(scan(&line, &[b"WH/MO/00007*5"]).await, ["ACK 4"]);
    let long = vec![b'7'; 2000];
    let answers = scan(&dock, &[b"a b c", &long, b"\xff\xfe", b"590*x", b"8712345678906"]).await;
    assert_eq!(
        answers,
        [
            "ERR 3 fields: send <code> or <key> <code>",
            "ERR line too long: at most 1024 bytes",
            "ERR invalid UTF-8",
            "ERR quantity \"x\" is not a positive number",
            "ACK 5",
        ]
    );

    wait_for(Duration::from_secs(60), "the scans to be applied", || async {
        let s = env.agent_status(&http).await;
        (s["hub"]["applied_seq"] == 5).then_some(())
    })
    .await;
    let s = env.agent_status(&http).await;
    assert_eq!(
        s["ingested"],
        json!({"station:dock-1-receiving": 3, "station:aisle-4-count": 1, "station:line-3-progress": 1}),
        "new transactions per path; the resent key is not counted again"
    );
    let applied = odoo.applied(&env).await;
    let calls: Vec<(String, String)> =
        applied.iter().map(|a| (a["model"].as_str().unwrap().into(), a["method"].as_str().unwrap().into())).collect();
    assert_eq!(calls.iter().filter(|c| c.0 == "stock.move" && c.1 == "write").count(), 3);
    assert!(calls.contains(&("stock.quant".into(), "create".into())));
    assert!(calls.contains(&("mrp.production".into(), "write".into())));

    let sim = SimConfig::default();
    let cfg = OdooConfig {
        url: odoo.url.clone(),
        database: sim.database,
        login: sim.login,
        api_key: sim.api_key,
        api_key_file: None,
        mode: DeliveryMode::Inbox,
        timeout: Duration::from_secs(10),
        probe_interval: Duration::from_secs(10),
        limit_time_real: Duration::from_secs(120),
        checks: Vec::new(),
    };
    let client = OdooClient::new(&cfg).unwrap();
    let read = |model: &'static str, domain: Value, fields: Value| {
        let client = &client;
        async move { client.execute_kw(model, "search_read", json!([domain]), json!({"fields": fields})).await.unwrap() }
    };
    let moves =
        read("stock.move", json!([["product_id.barcode", "=", "5901234123457"]]), json!(["quantity", "picked"])).await;
    assert_eq!((&moves[0]["quantity"], &moves[0]["picked"]), (&json!(12.0), &json!(true)), "received 12 at the dock");
    let quants =
        read("stock.quant", json!([["product_id.barcode", "=", "8712345678906"]]), json!(["inventory_quantity"])).await;
    assert_eq!(quants[0]["inventory_quantity"], json!(7.0), "counted 7 in aisle 4");
    let mo = read("mrp.production", json!([["name", "=", "WH/MO/00007"]]), json!(["qty_producing"])).await;
    assert_eq!(mo[0]["qty_producing"], json!(5.0), "5 in production on line 3");
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_refuses_addresses_it_does_not_allow() {
    let env = Env::new(&["plant-a"]);
    let station = r#"
[[stations]]
name = "gate"
listen = "127.0.0.1:0"
device = "gate-1"
allow = ["10.20.0.0/16"]
[stations.template]
model = "res.users"
method = "context_get"
"#;
    let agent = env.agent_with("plant-a", "127.0.0.1:9", station).await;
    let stream = TcpStream::connect(agent.field("station:gate")).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ERR forbidden: 127.0.0.1 may not use station gate"));
    assert_eq!(lines.next_line().await.unwrap(), None, "and the connection is closed");
    let status = env.agent_status(&agent.field("http")).await;
    assert_eq!(status["journal"]["last_seq"], 0);
    agent.stop().await;
}
