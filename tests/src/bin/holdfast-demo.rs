//! `holdfast-demo`: the whole path on this machine, with nothing to install.
//!
//! It starts the Odoo double, a hub and one plant's agent on loopback with fresh certificates,
//! posts shop-floor transactions, stops the hub to show the plant keeps working, brings it back,
//! and shows every transaction in Odoo exactly once. With `--keep-running` it then leaves
//! everything up for you to explore.

use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use tests::harness::{Env, wait_for};

#[derive(Debug, Parser)]
#[command(name = "holdfast-demo", about = "Runs Holdfast's whole path locally: Odoo double, hub, agent")]
struct Args {
    /// Leave everything running after the story, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

const WAIT: Duration = Duration::from_secs(60);

fn progress(n: u32, mo: u32) -> Value {
    json!({"source": "mes", "device": "line-3", "key": format!("WO-{mo}-op20-{n}"), "occurred_at": "2026-11-26T08:15:00Z",
           "order_key": format!("mo:WH/MO/{mo:05}"),
           "odoo": {"model": "mrp.production", "method": "write",
                    "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", format!("WH/MO/{mo:05}")]]}}], {"qty_producing": n as f64}]}})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = Env::new(&["plant-a"]);
    println!("Holdfast demo: everything lives in {}", env.path().display());
    let odoo = env.odoo_sim("odoo").await;
    println!("  Odoo double     {}", odoo.url);
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let sync = hub.field("sync");
    println!("  hub             sync (QUIC) {sync}, API http://{}/api/v1/plants", hub.field("api"));
    let agent = env.agent("plant-a", &sync).await;
    let http = agent.field("http");
    println!("  agent plant-a   http://{http}/v1/status");

    println!("\n1. The MES reports progress on WH/MO/00001..00003 (keyed, one ordering key per order).");
    let batch: Vec<Value> = (1..=3).flat_map(|mo| (1..=4).map(move |n| progress(n, mo))).collect();
    let (status, answer) = env.post(&http, &Value::Array(batch.clone())).await;
    println!(
        "   POST /v1/transactions -> {status}, {} accepted after the journal commit",
        answer["accepted"].as_array().map_or(0, Vec::len)
    );
    let (_, again) = env.post(&http, &batch[0]).await;
    println!("   a resend of the first one -> {}", again["accepted"][0]);
    wait_for(WAIT, "the first transactions to be applied", || async {
        (env.agent_status(&http).await["backlog"] == 0).then_some(())
    })
    .await;
    println!("   applied in Odoo: {} transactions", odoo.applied(&env).await.len());

    println!("\n2. The hub goes down. The plant keeps working: the agent journals and acknowledges.");
    hub.stop().await;
    wait_for(WAIT, "the agent to go offline", || async {
        (env.agent_status(&http).await["mode"] == "offline").then_some(())
    })
    .await;
    let during: Vec<Value> = (5..=10).map(|n| progress(n, 1)).collect();
    let (status, _) = env.post(&http, &Value::Array(during)).await;
    let s = env.agent_status(&http).await;
    println!("   POST -> {status}; agent mode {}, {} waiting for the hub", s["mode"], s["unsent"]);

    println!("\n3. The hub returns with its ledger; the backlog drains.");
    let hub = env.hub(&odoo.url, &sync).await;
    wait_for(WAIT, "the backlog to drain", || async {
        let s = env.agent_status(&http).await;
        (s["backlog"] == 0 && s["mode"] == "online").then_some(())
    })
    .await;
    let applied = odoo.applied(&env).await;
    let s = env.agent_status(&http).await;
    println!(
        "   agent: mode {}, stored_seq {}, applied_seq {}, backlog {}",
        s["mode"], s["hub"]["stored_seq"], s["hub"]["applied_seq"], s["backlog"]
    );
    println!(
        "   Odoo holds {} transactions, each exactly once; the last one set qty_producing = {}",
        applied.len(),
        applied.last().map_or(json!(null), |a| a["args"][1]["qty_producing"].clone())
    );
    let plants = env.get_json(&format!("http://{}/api/v1/plants", hub.field("api"))).await;
    println!("   hub: {}", plants["plants"][0]);

    if args.keep_running {
        println!(
            "\nEverything keeps running; try:\n  curl -s http://{http}/v1/status\n  curl -s -H 'Authorization: Bearer {token}' http://{api}/api/v1/plants\n  the dashboard: http://{api}/#token={token}\nCtrl-C ends the demo.",
            token = tests::harness::VIEWER_TOKEN,
            api = hub.field("api")
        );
        tokio::signal::ctrl_c().await?;
    }
    agent.stop().await;
    hub.stop().await;
    println!("\nDone.");
    Ok(())
}
