//! The agent's Odoo probe against the real double: its verdicts follow the double's health and
//! reachability, and the hub shows the plant's diagnosis, with the changes the plant saw.

use serde_json::{Value, json};
use tests::harness::{Env, START_TIMEOUT, set_faults, wait_for};

async fn set_db_down(url: &str, down: bool) {
    set_faults(url, json!({"db_down": down})).await;
}

#[tokio::test]
async fn the_agent_tells_odoo_reachable_database_down_and_unreachable_and_the_hub_shows_it() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let config = env.agent_config("plant-a", &hub.field("sync"));
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!("[odoo]\nurl = \"{}\"\nprobe_interval = \"500ms\"\nprobe_timeout = \"2s\"\n", odoo.url);
    std::fs::write(&config, text).unwrap();
    let agent = env.agent_from("plant-a", &config).await;
    let http = agent.field("http");
    let verdict = |want: &'static str| {
        let (env, http) = (&env, http.clone());
        async move {
            let status = env.agent_status(&http).await;
            (status["odoo"]["odoo"] == want).then_some(status["odoo"].clone())
        }
    };

    let seen = wait_for(START_TIMEOUT, "the probe to find Odoo reachable", || verdict("reachable")).await;
    assert_eq!(seen["odoo_version"], "17.0");
    assert_eq!(seen["odoo_detail"], "Odoo 17.0 answers and its database server is reachable");

    set_db_down(&odoo.url, true).await;
    let seen = wait_for(START_TIMEOUT, "the probe to find the database down", || verdict("database_down")).await;
    assert_eq!(
        seen["odoo_detail"],
        "Odoo answers but reports its database server unreachable (/web/health db_server_status false)"
    );

    // The hub hears it in the next heartbeat, with the changes in order.
    let plants_url = format!("http://{}/api/v1/plants", hub.field("api"));
    let diagnosis = wait_for(START_TIMEOUT, "the hub to show the plant's diagnosis", || {
        let (env, url) = (&env, plants_url.clone());
        async move {
            let plants = env.get_json(&url).await;
            let d = plants["plants"].as_array()?.iter().find(|p| p["plant"] == "plant-a")?["diagnosis"].clone();
            (d["odoo"] == "database_down").then_some(d)
        }
    })
    .await;
    let events: Vec<(String, String)> = diagnosis["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e: &Value| (e["subject"].as_str().unwrap().to_owned(), e["state"].as_str().unwrap().to_owned()))
        .collect();
    let odoo_events: Vec<&str> = events.iter().filter(|(s, _)| s == "odoo").map(|(_, v)| v.as_str()).collect();
    assert_eq!(odoo_events, vec!["reachable", "database_down"], "{events:?}");
    assert!(events.contains(&("hub_link".into(), "connected".into())), "{events:?}");

    // Odoo gone altogether: the connection is refused.
    odoo.proc.kill().await;
    let seen = wait_for(START_TIMEOUT, "the probe to find Odoo unreachable", || verdict("unreachable")).await;
    let detail = seen["odoo_detail"].as_str().unwrap();
    assert!(detail.starts_with("GET /web/health: "), "{detail}");
    assert_eq!(seen["odoo_version"], "17.0", "the last version seen is kept");
    agent.stop().await;
    hub.stop().await;
}

/// The hub's own probe, with its credentials: `GET /api/v1/status` shows Odoo usable, then its
/// database down with the `odoo_unusable` alarm, then usable again with the alarm gone.
#[tokio::test]
async fn the_hub_probes_odoo_with_its_credentials_and_raises_an_alarm_while_it_is_unusable() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let status_url = format!("http://{}/api/v1/status", hub.field("api"));
    let seen = |want: &'static str| {
        let (env, url) = (&env, status_url.clone());
        async move {
            let status = env.get_json(&url).await;
            (status["odoo"]["verdict"] == want).then_some(status)
        }
    };
    let status = wait_for(START_TIMEOUT, "the hub to find Odoo usable", || seen("reachable")).await;
    assert_eq!(status["odoo"]["detail"], "Odoo 17.0 answers an authenticated call");
    assert_eq!(status["odoo"]["version"], "17.0");
    assert!(status["alarms"].as_array().unwrap().iter().all(|a| a["name"] != "odoo_unusable"), "{status}");

    set_db_down(&odoo.url, true).await;
    let status = wait_for(START_TIMEOUT, "the hub to find the database down", || seen("database_down")).await;
    let alarm = status["alarms"].as_array().unwrap().iter().find(|a| a["name"] == "odoo_unusable").cloned();
    let message = alarm.expect("the alarm is raised")["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("Odoo is database_down since "), "{message}");

    set_db_down(&odoo.url, false).await;
    let status = wait_for(START_TIMEOUT, "the hub to find Odoo usable again", || seen("reachable")).await;
    assert!(status["alarms"].as_array().unwrap().iter().all(|a| a["name"] != "odoo_unusable"), "{status}");
    hub.stop().await;
}
