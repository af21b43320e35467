//! Issue 5's end-to-end run, in both delivery modes: 10,000 keyed transactions from three
//! sources (HTTP, MQTT through a real Mosquitto, a scanner station over TCP) while the Odoo double
//! goes away twice (its calls refused, then its database down) and comes back. From the double's
//! own record: every transaction applied exactly once (I1, I2), and in order per ordering key
//! (I3), each key being one manufacturing order whose quantity the transactions count up.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Broker, Env, mo_station, set_faults, set_odoo_mode, wait_for};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(180);

fn write(key: String, mo: &str, qty: u64) -> Value {
    json!({"key": key, "order_key": format!("mo:{mo}"),
           "odoo": {"model": "mrp.production", "method": "write",
                    "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", mo]]}}], {"qty_producing": qty as f64}]}})
}

/// Which order each source's n-th transaction counts up, and its quantity.
fn http_mo(n: u64) -> String {
    format!("WH/MO/{:05}", 1 + n % 4)
}
fn mqtt_mo(n: u64) -> String {
    format!("WH/MO/{:05}", 10 + n % 3)
}
fn tcp_mo(n: u64) -> String {
    format!("WH/MO/{:05}", 20 + n % 3)
}

const HTTP: u64 = 4_000;
const MQTT: u64 = 3_000;
const TCP: u64 = 3_000;

async fn post_http(env: &Env, http: &str, range: std::ops::Range<u64>) {
    let items: Vec<Value> = range
        .map(|n| {
            let mut t = write(format!("h-{n}"), &http_mo(n), n + 1);
            t["source"] = json!("mes");
            t["device"] = json!("line-9");
            t
        })
        .collect();
    for chunk in items.chunks(200) {
        let (status, answer) = env.post(http, &json!(chunk)).await;
        assert_eq!(status, 202, "{answer}");
    }
}

async fn publish(broker: &Broker, range: std::ops::Range<u64>) {
    let messages = range
        .map(|n| {
            (
                "holdfast/plant-a/barcode/dock-1".to_owned(),
                write(format!("m-{n}"), &mqtt_mo(n), n + 1).to_string().into_bytes(),
            )
        })
        .collect();
    broker.publish("dock-1", messages).await;
}

async fn scan(addr: &str, range: std::ops::Range<u64>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let lines: Vec<String> = range.clone().map(|n| format!("t-{n} {}*{}\n", tcp_mo(n), n + 1)).collect();
    let writer = tokio::spawn(async move {
        for line in lines {
            w.write_all(line.as_bytes()).await.unwrap();
        }
        w
    });
    let mut reader = BufReader::new(r).lines();
    for _ in range {
        let answer = reader.next_line().await.unwrap().expect("an answer per line");
        assert!(answer.starts_with("ACK "), "{answer}");
    }
    drop(writer.await.unwrap());
}

/// Waits for the hub's own probe to see Odoo so.
async fn hub_sees(env: &Env, api: &str, verdict: &'static str) {
    let url = format!("http://{api}/api/v1/status");
    wait_for(WAIT, verdict, || {
        let url = url.clone();
        async move { (env.get_json(&url).await["odoo"]["verdict"] == verdict).then_some(()) }
    })
    .await;
}

async fn run(mode: &str) {
    let env = Env::new(&["plant-a"]);
    let broker = Broker::start(env.path(), &["dock-1"]).await;
    let odoo = env.odoo_sim("odoo").await;
    let config = env.hub_config(&odoo.url, "127.0.0.1:0", "", "");
    set_odoo_mode(&config, mode, "limit_time_real = \"1s\"\n");
    let hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let agent =
        env.agent_with("plant-a", &hub.field("sync"), &(broker.agent_table("plant-a") + &mo_station("line-1"))).await;
    let http = agent.field("http");
    let station = agent.field("station:line-1");
    wait_for(WAIT, "the agent's MQTT session", || async {
        (env.agent_status(&http).await["mqtt"]["subscribed"] == true).then_some(())
    })
    .await;
    hub_sees(&env, &api, "reachable").await;

    // A first part from each source, then Odoo's calls are refused until the hub has seen it.
    post_http(&env, &http, 0..HTTP / 2).await;
    publish(&broker, 0..MQTT / 2).await;
    scan(&station, 0..TCP / 2).await;
    set_faults(&odoo.url, json!({"refuse": true})).await;
    hub_sees(&env, &api, "unreachable").await;
    post_http(&env, &http, HTTP / 2..HTTP).await;
    set_faults(&odoo.url, json!({})).await;
    hub_sees(&env, &api, "reachable").await;
    // Then its database goes down, while the rest arrives.
    publish(&broker, MQTT / 2..MQTT).await;
    set_faults(&odoo.url, json!({"db_down": true})).await;
    hub_sees(&env, &api, "database_down").await;
    scan(&station, TCP / 2..TCP).await;
    set_faults(&odoo.url, json!({})).await;

    let total = HTTP + MQTT + TCP;
    wait_for(WAIT, "all 10,000 applied at the plant", || async {
        (env.agent_status(&http).await["hub"]["applied_seq"] == total).then_some(())
    })
    .await;

    // The double's record: the inbox's in inbox mode, its write calls in plain mode.
    let record = env.get_json(&format!("{}/holdfast-sim/applied", odoo.url)).await;
    let entries = if mode == "inbox" { record["applied"].clone() } else { record["calls"].clone() };
    // Less the canaries the reopenings' preflights wrote through the inbox.
    let entries: Vec<Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["plant"] != holdfast_hub::reopening::PREFLIGHT_PLANT)
        .cloned()
        .collect();
    assert_eq!(entries.len() as u64, total, "each applied once ({mode})");
    if mode == "inbox" {
        let mut ids: Vec<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len() as u64, total, "no id twice");
    }
    // Per order (ordering key): the quantities in the order Odoo saw them.
    let mut seen: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for e in &entries {
        let mo = e["args"][0][0].as_i64().unwrap();
        seen.entry(mo).or_default().push(e["args"][1]["qty_producing"].as_f64().unwrap() as u64);
    }
    let mut expected: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for n in 0..HTTP {
        expected.entry(http_mo(n)).or_default().push(n + 1);
    }
    for n in 0..MQTT {
        expected.entry(mqtt_mo(n)).or_default().push(n + 1);
    }
    for n in 0..TCP {
        expected.entry(tcp_mo(n)).or_default().push(n + 1);
    }
    let mut got: Vec<Vec<u64>> = seen.into_values().collect();
    let mut want: Vec<Vec<u64>> = expected.into_values().collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), 10, "ten orders, one per ordering key");
    assert!(got == want, "every key's transactions exactly once and in order ({mode})");
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_from_three_sources_through_two_outages_land_once_in_order_in_inbox_mode() {
    run("inbox").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_from_three_sources_through_two_outages_land_once_in_order_in_plain_mode() {
    run("plain").await;
}
