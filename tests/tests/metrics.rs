//! Metrics: a running hub and agent export exactly the metrics ARCHITECTURE.md names, each of
//! the kind it says, and their figures follow what happened (a transaction ingested over HTTP
//! is counted at the agent and applied at the hub).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tests::harness::{Broker, Env, VIEWER_TOKEN, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// `name → kind` of every metric listed under `### {section}` in ARCHITECTURE.md's metrics.
fn documented(section: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../ARCHITECTURE.md")).unwrap();
    let metrics = text.split("\n## Metrics\n").nth(1).expect("a Metrics section").split("\n## ").next().unwrap();
    let table = metrics.split(&format!("### {section}\n")).nth(1).expect("the section").split("\n### ").next().unwrap();
    table
        .lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?.to_owned();
            Some((name, cells.next()?.to_owned()))
        })
        .collect()
}

/// `name → kind` of every Holdfast metric in a Prometheus text exposition (the exporter's own
/// are left out), and each sample's value.
fn exported(text: &str) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
    let mut kinds = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            if name.starts_with("holdfast_") {
                kinds.insert(name.to_owned(), kind.to_owned());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            samples.insert(series.to_owned(), value.parse::<f64>().unwrap_or_else(|_| panic!("a number: {line}")));
        }
    }
    (kinds, samples)
}

async fn scrape(url: &str) -> String {
    // The hub's needs a viewer token; the agent's listener takes none and ignores it.
    let resp = reqwest::Client::new().get(url).bearer_auth(VIEWER_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn the_hub_and_the_agent_export_every_documented_metric_and_count_what_happens() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let broker = Broker::start(env.path(), &["dock-1"]).await;
    let config = env.agent_config_with("plant-a", &hub.field("sync"), &broker.agent_table("plant-a"));
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!("[odoo]\nurl = \"{}\"\nprobe_interval = \"500ms\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n", odoo.url);
    std::fs::write(&config, text).unwrap();
    let agent = env.agent_from("plant-a", &config).await;
    let http = agent.field("http");
    let t = json!({"source": "mes", "device": "line-1", "key": "m-1", "order_key": "line-1",
                   "odoo": {"model": "res.users", "method": "context_get", "args": []}});
    let (status, answer) = env.post(&http, &json!([t])).await;
    assert_eq!(status, 202, "{answer}");
    wait_for(WAIT, "applied, and a heartbeat at the hub", || async {
        let applied = env.agent_status(&http).await["hub"]["applied_seq"] == 1;
        let plants = env.get_json(&format!("http://{}/api/v1/plants", hub.field("api"))).await;
        (applied && !plants["plants"][0]["last_heartbeat_ms"].is_null()).then_some(())
    })
    .await;

    let hub_url = format!("http://{}/metrics", hub.field("api"));
    let anonymous = reqwest::get(&hub_url).await.unwrap();
    assert_eq!(anonymous.status(), 401, "the hub's metrics need a viewer token");
    let (kinds, samples) = exported(&scrape(&hub_url).await);
    assert_eq!(kinds, documented("Hub"), "the hub's metrics against ARCHITECTURE.md");
    assert_eq!(samples["holdfast_hub_applied_total"], 1.0);
    assert_eq!(samples["holdfast_hub_odoo_calls_total{outcome=\"ok\"}"], 1.0);
    assert_eq!(samples["holdfast_hub_plant_connected{plant=\"plant-a\"}"], 1.0);
    assert_eq!(samples["holdfast_hub_plant_applied_seq{plant=\"plant-a\"}"], 1.0);
    assert_eq!(samples["holdfast_hub_plant_backlog{plant=\"plant-a\"}"], 0.0);
    assert_eq!(samples["holdfast_hub_odoo_up"], 1.0);

    let agent_url = format!("http://{}/metrics", agent.field("metrics"));
    let (kinds, samples) = exported(&scrape(&agent_url).await);
    assert_eq!(kinds, documented("Agent"), "the agent's metrics against ARCHITECTURE.md");
    assert_eq!(samples["holdfast_agent_ingested_total{path=\"http\"}"], 1.0);
    assert_eq!(samples["holdfast_agent_hub_applied_seq"], 1.0);
    assert_eq!(samples["holdfast_agent_backlog"], 0.0);
    assert_eq!(samples["holdfast_agent_mode{mode=\"online\"}"], 1.0);
    assert_eq!(samples["holdfast_agent_mode{mode=\"offline\"}"], 0.0);
    // The metrics listener serves nothing else: the producer and control APIs are not on it.
    let other = reqwest::get(format!("http://{}/v1/status", agent.field("metrics"))).await.unwrap();
    assert_eq!(other.status(), 404);
    agent.stop().await;
    hub.stop().await;
}
