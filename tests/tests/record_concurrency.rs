//! Per-record concurrency of one: two plants, each on its own ordering keys, write the same
//! manufacturing orders while Odoo is slow enough that their calls would overlap. The double
//! fails every overlapping writer of a record with `SerializationFailure` (rate 1); the hub
//! never sends two calls writing one record at once, so none fails, and each transaction is
//! applied once, in order per key; and the hub's calls to Odoo, the probe's and the canary's
//! included, never exceed its `calls_max`. In both delivery modes.

use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, set_odoo_mode, sim_stats, wait_for};

const WAIT: Duration = Duration::from_secs(120);
const PER_PLANT: usize = 24;

fn write_mo(n: usize, mo: &str, qty: f64) -> Value {
    json!({"source": "mes", "device": "line-1", "key": format!("w{n}"), "order_key": format!("line-{}", n % 6),
           "odoo": {"model": "mrp.production", "method": "write",
                    "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", mo]]}}], {"qty_producing": qty}]}})
}

async fn run(mode: &str) {
    let env = Env::new(&["plant-a", "plant-b"]);
    let odoo = env.odoo_sim_with("odoo", &["--serialization-rate", "1", "--workers", "4", "--per-call", "40ms"]).await;
    let config = env.hub_config(&odoo.url, "127.0.0.1:0", "", "");
    set_odoo_mode(&config, mode, "");
    let hub = env.hub_from(&config).await;
    let mut agents = Vec::new();
    for plant in ["plant-a", "plant-b"] {
        let agent = env.agent(plant, &hub.field("sync")).await;
        // Every transaction writes WH/MO/00001 or WH/MO/00002, whatever its key.
        let batch: Vec<Value> =
            (0..PER_PLANT).map(|n| write_mo(n, &format!("WH/MO/0000{}", 1 + n % 2), n as f64)).collect();
        let (status, answer) = env.post(&agent.field("http"), &json!(batch)).await;
        assert_eq!(status, 202, "{answer}");
        agents.push(agent);
    }
    for agent in &agents {
        let http = agent.field("http");
        wait_for(WAIT, "every transaction applied", || async {
            (env.agent_status(&http).await["hub"]["applied_seq"] == PER_PLANT as u64).then_some(())
        })
        .await;
    }
    let stats = sim_stats(&odoo.url).await;
    assert_eq!(stats["serialization_failures"], 0, "{stats}");
    let most = stats["in_flight_max"].as_u64().unwrap();
    assert!(
        (1..=4).contains(&most),
        "the hub's calls_max (4) bounds the applier's, the probe's and the canary's calls together: {stats}"
    );
    let sent = env.get_json(&format!("{}/holdfast-sim/applied", odoo.url)).await;
    let writes = if mode == "inbox" { &sent["applied"] } else { &sent["calls"] };
    assert_eq!(writes.as_array().unwrap().len(), 2 * PER_PLANT, "each applied once: {sent}");
    for agent in agents {
        agent.stop().await;
    }
    hub.stop().await;
}

#[tokio::test]
async fn plants_writing_the_same_records_never_collide_in_odoo_inbox() {
    run("inbox").await;
}

#[tokio::test]
async fn plants_writing_the_same_records_never_collide_in_odoo_plain() {
    run("plain").await;
}
