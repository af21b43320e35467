//! An agent given several hub addresses (`hub.address = [...]`, the replicas of one hub) starts
//! with the first, moves on to the next when one fails, stays with the one that works, and
//! nothing it acknowledged is lost or applied twice on the way. (Here the two hubs have stores
//! of their own, as a hub restored elsewhere would: the second is sent what it lacks and Odoo's
//! inbox skips what it already holds.)

use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, Proc, bin, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn txn(i: usize) -> Value {
    json!({"source": "mes", "device": "line-1", "key": format!("k-{i}"), "order_key": "line-1",
           "odoo": {"model": "res.users", "method": "context_get", "args": []}})
}

#[tokio::test]
async fn the_agent_moves_to_the_next_hub_address_when_one_fails_and_loses_nothing() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let config_a = env.hub_config(&odoo.url, "127.0.0.1:0", "", "");
    let hub_a = env.hub_from(&config_a).await;
    // The second hub: the same settings, its own store and log.
    let text = std::fs::read_to_string(&config_a).unwrap();
    assert!(text.contains("path = \"hub.db\""));
    let config_b = env.path().join("hub-b.toml");
    std::fs::write(&config_b, text.replace("path = \"hub.db\"", "path = \"hub-b.db\"")).unwrap();
    let hub_b = Proc::spawn(
        &bin("holdfast-hub"),
        &["run", "--config", config_b.to_str().unwrap()],
        env.path().join("hub-b.log"),
        "holdfast-hub ready",
    )
    .await;
    let (a, b) = (hub_a.field("sync"), hub_b.field("sync"));

    // A short idle timeout: a dead address is given up within seconds.
    let config = env.agent_config("plant-a", &a);
    let agent_text = std::fs::read_to_string(&config).unwrap();
    let list = format!("address = [\"{a}\", \"{b}\"]\nidle_timeout = \"2s\"");
    std::fs::write(&config, agent_text.replace(&format!("address = \"{a}\""), &list)).unwrap();
    let agent = env.agent_from("plant-a", &config).await;
    let http = agent.field("http");
    let status = || env.agent_status(&http);

    let (code, _) = env.post(&http, &Value::Array((0..5).map(txn).collect())).await;
    assert_eq!(code, 202);
    wait_for(WAIT, "five applied through the first hub", || async {
        let s = status().await;
        (s["backlog"] == 0 && s["hub"]["address"] == a.as_str()).then_some(())
    })
    .await;

    // The first hub dies; the plant keeps working, and the agent moves to the second.
    hub_a.kill().await;
    let (code, _) = env.post(&http, &Value::Array((5..10).map(txn).collect())).await;
    assert_eq!(code, 202);
    wait_for(WAIT, "the agent on the second hub with nothing left", || async {
        let s = status().await;
        (s["hub"]["connected"] == true && s["hub"]["address"] == b.as_str() && s["backlog"] == 0).then_some(())
    })
    .await;
    let applied = wait_for(WAIT, "ten in Odoo", || async {
        let a = odoo.applied(&env).await;
        (a.len() >= 10).then_some(a)
    })
    .await;
    let mut ids: Vec<&str> = applied.iter().map(|a| a["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((applied.len(), ids.len()), (10, 10), "each once: {applied:?}");
    assert!(agent.log_text().contains("hub session ended"), "{}", agent.log_text());
}
