//! Plant IT's manual states, from the command line, with the agent running or stopped.

use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, bin, set_faults, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn txn() -> Value {
    json!({"source": "mes", "device": "line-3", "odoo": {"model": "res.users", "method": "context_get"}})
}

fn offline(env: &Env, args: &[&str]) -> String {
    let config = env.path().join("agent-plant-a.toml");
    let out = std::process::Command::new(bin("holdfast-agent"))
        .arg("offline")
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_offline_stops_uploads_isolation_cuts_the_link_and_both_are_audited() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let sync = hub.field("sync");
    let agent = env.agent("plant-a", &sync).await;
    let http = agent.field("http");
    let plants_url = format!("http://{}/api/v1/plants", hub.field("api"));

    assert_eq!(env.post(&http, &Value::Array(vec![txn(); 10])).await.0, 202);
    wait_for(WAIT, "the first 10 applied", || async {
        (env.agent_status(&http).await["hub"]["applied_seq"] == 10).then_some(())
    })
    .await;

    let said = offline(&env, &["on", "--reason", "line 3 maintenance", "--for", "2h"]);
    assert!(said.starts_with("plant plant-a is manually offline by "), "{said}");
    assert!(said.contains("recorded through the running agent: line 3 maintenance"), "{said}");
    let s = wait_for(WAIT, "manual_offline", || async {
        let s = env.agent_status(&http).await;
        (s["mode"] == "manual_offline").then_some(s)
    })
    .await;
    assert_eq!(s["manual"]["why"], "line 3 maintenance");
    assert_eq!(s["manual"]["kind"], "offline");
    assert!(s["manual"]["until_ms"].as_i64().unwrap() > s["manual"]["since_ms"].as_i64().unwrap());
    assert_eq!(s["hub"]["connected"], true, "the link stays up");

    // The floor keeps working; nothing goes up.
    assert_eq!(env.post(&http, &Value::Array(vec![txn(); 10])).await.0, 202);
    let s = env.agent_status(&http).await;
    assert_eq!((s["journal"]["last_seq"].as_u64(), s["unsent"].as_u64()), (Some(20), Some(10)));

    offline(&env, &["on", "--isolate", "--reason", "containment"]);
    wait_for(WAIT, "isolation to cut the link", || async {
        let plants = env.get_json(&plants_url).await;
        (env.agent_status(&http).await["mode"] == "isolated" && plants["plants"][0]["connected"] == false).then_some(())
    })
    .await;
    assert_eq!(env.get_json(&plants_url).await["plants"][0]["stored_seq"], 10, "nothing of the isolated time went up");

    // Set while the agent is stopped: it starts in that state.
    agent.stop().await;
    let said = offline(&env, &["on", "--reason", "weekend shutdown"]);
    assert!(said.contains("recorded in the journal; the agent is not running"), "{said}");
    let agent = env.agent("plant-a", &sync).await;
    let http = agent.field("http");
    let s = env.agent_status(&http).await;
    assert_eq!((s["mode"].as_str(), s["manual"]["why"].as_str()), (Some("manual_offline"), Some("weekend shutdown")));

    offline(&env, &["off", "--reason", "maintenance done"]);
    wait_for(WAIT, "the backlog to drain once back on", || async {
        let s = env.agent_status(&http).await;
        (s["mode"] == "online" && s["hub"]["applied_seq"] == 20).then_some(())
    })
    .await;
    assert_eq!(odoo.applied(&env).await.len(), 20);

    let db = rusqlite::Connection::open(env.path().join("journal-plant-a.db")).unwrap();
    let actions: Vec<(String, String)> = db
        .prepare("SELECT actor, action FROM audit ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let names: Vec<&str> = actions.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(names, ["manual_offline_on", "manual_isolated_on", "manual_offline_on", "manual_off"]);
    assert!(actions.iter().all(|(actor, _)| actor.starts_with("user:")), "{actions:?}");

    // The same records reach the hub's audit trail, those made while isolated or stopped too.
    let hub_db = env.path().join("hub.db");
    let at_hub = wait_for(WAIT, "the gateway's audit records in the hub's trail", || async {
        let db = rusqlite::Connection::open_with_flags(&hub_db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        let rows: Vec<(String, String)> = db
            .prepare("SELECT actor, action FROM audit WHERE actor LIKE 'gateway:plant-a/%' ORDER BY seq")
            .ok()?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .ok()?
            .collect::<Result<_, _>>()
            .ok()?;
        (rows.len() == 4).then_some(rows)
    })
    .await;
    let expected: Vec<(String, String)> =
        actions.iter().map(|(actor, action)| (format!("gateway:plant-a/{actor}"), action.clone())).collect();
    assert_eq!(at_hub, expected);
    agent.stop().await;
    hub.stop().await;
    let out = std::process::Command::new(bin("holdfast-hub"))
        .args(["audit", "verify", "--config", env.path().join("hub.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_state_with_an_expiry_ends_by_itself_and_says_so() {
    let env = Env::new(&["plant-a"]);
    let agent = env.agent("plant-a", "127.0.0.1:9").await;
    let http = agent.field("http");
    offline(&env, &["on", "--reason", "short stop", "--for", "1s"]);
    let db = rusqlite::Connection::open(env.path().join("journal-plant-a.db")).unwrap();
    let last = || -> (String, String) {
        db.query_row("SELECT actor, action FROM audit ORDER BY id DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
    };
    wait_for(WAIT, "the agent to end the expired state", || {
        let done = last().1 == "manual_offline_expired";
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(last(), ("agent".to_owned(), "manual_offline_expired".to_owned()));
    let s = env.agent_status(&http).await;
    assert!(s["manual"].is_null() && s["mode"] == "offline", "{s}");
    agent.stop().await;
}

/// The hub applies nothing more for a plant in manual offline (what it already stored waits),
/// shows who switched it off and why from the plant's heartbeats, and resumes when plant IT
/// switches it back on; another plant goes on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_applies_nothing_more_for_a_plant_in_manual_offline_until_it_is_back() {
    let env = Env::new(&["plant-a", "plant-b"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let sync = hub.field("sync");
    let (a, b) = (env.agent("plant-a", &sync).await, env.agent("plant-b", &sync).await);
    let (http_a, http_b) = (a.field("http"), b.field("http"));
    let plants_url = format!("http://{}/api/v1/plants", hub.field("api"));
    let plant =
        |plants: &Value, name: &str| plants["plants"].as_array().unwrap().iter().find(|p| p["plant"] == name).cloned();
    let set_db_down = |down: bool| set_faults(&odoo.url, json!({"db_down": down}));
    let applied = |http: String, n: u64| {
        let env = &env;
        async move { (env.agent_status(&http).await["hub"]["applied_seq"] == n).then_some(()) }
    };
    let stored = |http: String, n: u64| {
        let env = &env;
        async move { (env.agent_status(&http).await["hub"]["stored_seq"] == n).then_some(()) }
    };

    for http in [&http_a, &http_b] {
        assert_eq!(env.post(http, &Value::Array(vec![txn(); 5])).await.0, 202);
    }
    wait_for(WAIT, "5 applied for each plant", || async {
        applied(http_a.clone(), 5).await.and(applied(http_b.clone(), 5).await)
    })
    .await;
    // Heartbeats come every 5 s: one that has seen the 5.
    let p = wait_for(WAIT, "a heartbeat with the gateway's journal and health", || async {
        plant(&env.get_json(&plants_url).await, "plant-a").filter(|p| p["gateway_journal"]["last_seq"] == 5)
    })
    .await;
    assert_eq!(p["mode"], "online");
    let health = &p["health"];
    assert!(health["memory_total_bytes"].as_u64() > Some(0) && health["agent_rss_bytes"].as_u64() > Some(0), "{p}");
    assert!(health["disk_free_bytes"].as_u64() > Some(0), "{p}");

    // Odoo down: plant-a's next 5 are stored at the hub but cannot be applied yet.
    set_db_down(true).await;
    assert_eq!(env.post(&http_a, &Value::Array(vec![txn(); 5])).await.0, 202);
    wait_for(WAIT, "plant-a's next 5 stored", || stored(http_a.clone(), 10)).await;
    offline(&env, &["on", "--reason", "line 3 maintenance"]);
    let p = wait_for(WAIT, "the hub to show plant-a in manual offline", || async {
        plant(&env.get_json(&plants_url).await, "plant-a").filter(|p| p["mode"] == "manual_offline")
    })
    .await;
    assert_eq!(p["manual"]["why"], "line 3 maintenance");
    assert_eq!(
        p["manual"]["who"],
        env.agent_status(&http_a).await["manual"]["who"],
        "who switched it off, as plant IT set it"
    );

    // Odoo back: plant-b's new transactions go through; plant-a's stored ones wait. plant-b's
    // are later in the ledger, so plant-a's would have gone first had they not been held.
    assert_eq!(env.post(&http_b, &Value::Array(vec![txn(); 5])).await.0, 202);
    set_db_down(false).await;
    wait_for(WAIT, "plant-b's 10 applied", || applied(http_b.clone(), 10)).await;
    let p = plant(&env.get_json(&plants_url).await, "plant-a").unwrap();
    assert_eq!((p["stored_seq"].as_u64(), p["applied_seq"].as_u64()), (Some(10), Some(5)), "{p}");

    offline(&env, &["off", "--reason", "maintenance done"]);
    wait_for(WAIT, "plant-a's held 5 applied once it is back", || applied(http_a.clone(), 10)).await;
    assert_eq!(odoo.applied(&env).await.len(), 20, "every transaction once");
    a.stop().await;
    b.stop().await;
    hub.stop().await;
    let db = rusqlite::Connection::open(env.path().join("hub.db")).unwrap();
    let actions: Vec<String> = db
        .prepare(
            "SELECT action FROM audit WHERE actor = 'gateway:plant-a' AND action LIKE 'plant_manual%' ORDER BY seq",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(actions, ["plant_manual_state_seen", "plant_manual_state_cleared"]);
}
