//! Failover with real processes: three agents, the hub, a primary Odoo double and a
//! disaster-recovery double started as a snapshot of the primary some hundred applied
//! transactions back. Producers keep sending; the primary dies; the hub classifies and holds;
//! the operator declares the failover with its recovery point; the lost tail is applied again
//! first (the recovered inbox skips what it has), then the plants reopen in waves; the old
//! primary, brought back, receives nothing. At the end every acknowledged transaction is in the
//! disaster-recovery double exactly once, in order per ordering key.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, Proc, bin, hub_cli, sim_stats, test_reopening, try_wait_for, wait_for};

const WAIT: Duration = Duration::from_secs(90);
const PLANTS: [&str; 3] = ["plant-a", "plant-b", "plant-c"];

fn txn(plant: &str, i: usize) -> Value {
    json!({"source": "mes", "device": "line-1", "key": format!("{plant}-{i}"), "order_key": "line-1",
           "odoo": {"model": "res.users", "method": "context_get", "args": []}})
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// Sends `n` more transactions from each plant; records each acknowledged id with its plant.
async fn send(env: &Env, agents: &[Proc], next: &mut [usize; 3], n: usize, sent: &mut Vec<(String, String)>) {
    for (p, plant) in PLANTS.iter().enumerate() {
        let batch: Vec<Value> = (next[p]..next[p] + n).map(|i| txn(plant, i)).collect();
        next[p] += n;
        let (status, answer) = env.post(&agents[p].field("http"), &Value::Array(batch)).await;
        assert_eq!(status, 202, "{answer}");
        for a in answer["accepted"].as_array().unwrap() {
            sent.push((plant.to_string(), a["id"].as_str().unwrap().to_owned()));
        }
    }
}

#[allow(clippy::disallowed_methods)] // the operator's wall clock: the recovery point is a time of day
fn wall() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

#[tokio::test]
async fn a_failover_reapplies_what_the_recovered_odoo_lost_first_and_never_writes_the_old_primary_again() {
    let env = Env::new(&PLANTS);
    let primary = env.odoo_sim("primary").await;
    let reopening = test_reopening("soak = \"1s\"", &[("plant-b", 1), ("plant-a", 2), ("plant-c", 3)]);
    let config = env.hub_config(&primary.url, "127.0.0.1:0", "", &reopening);
    let hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let mut agents = Vec::new();
    for plant in PLANTS {
        agents.push(env.agent(plant, &hub.field("sync")).await);
    }
    let (code, admin, err) =
        hub_cli(&config, &api, &["token", "create", "--name", "root", "--role", "admin", "--bootstrap"], None).await;
    assert_eq!(code, 0, "{err}");
    let admin_file = env.path().join("admin.token");
    std::fs::write(&admin_file, admin.trim()).unwrap();

    let mut sent: Vec<(String, String)> = Vec::new();
    let mut next = [0usize; 3];
    let recovery_point = wall();
    send(&env, &agents, &mut next, 100, &mut sent).await;
    wait_for(WAIT, "300 applied in the primary", || async { (primary.applied(&env).await.len() == 300).then_some(()) })
        .await;

    // The disaster-recovery Odoo: the primary's data as of half its commits.
    let record = env.get_json(&format!("{}/holdfast-sim/applied", primary.url)).await;
    let commits = record["commits"].as_u64().expect("the primary's commits");
    let as_of = (commits / 2).to_string();
    let dr = env.odoo_sim_with("dr", &["--snapshot-of", &primary.url, "--as-of", &as_of]).await;
    let dr_had = dr.applied(&env).await.len();
    assert!(dr_had > 0 && dr_had < 300, "the snapshot holds part of it: {dr_had}");

    // More while the primary lives, then it dies; producers keep sending.
    send(&env, &agents, &mut next, 30, &mut sent).await;
    wait_for(WAIT, "390 applied in the primary", || async { (primary.applied(&env).await.len() == 390).then_some(()) })
        .await;
    let primary_addr = primary.url.trim_start_matches("http://").to_owned();
    primary.proc.kill().await;
    let status_url = format!("http://{api}/api/v1/status");
    wait_for(WAIT, "the hub sees Odoo unusable", || async {
        let s = env.get_json(&status_url).await;
        (s["odoo"]["verdict"] != "reachable" && s["odoo"]["verdict"] != "unknown").then_some(())
    })
    .await;
    send(&env, &agents, &mut next, 20, &mut sent).await;

    // A failover to a target that does not answer is refused, and changes nothing.
    let rp = rfc3339(recovery_point);
    let args = |url: &str| -> Vec<String> {
        [
            "incident",
            "failover",
            "--odoo-url",
            url,
            "--recovery-point",
            &rp,
            "--margin",
            "0s",
            "--reason",
            "primary lost",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let nowhere = args("http://127.0.0.1:9");
    let nowhere: Vec<&str> = nowhere.iter().map(String::as_str).collect();
    let (code, _, err) = hub_cli(&config, &api, &nowhere, Some(&admin_file)).await;
    assert_eq!(code, 1);
    assert!(err.contains("(409 preflight_failed)"), "{err}");
    // The failover, then the operator starts the armed plan.
    let to_dr = args(&dr.url);
    let to_dr: Vec<&str> = to_dr.iter().map(String::as_str).collect();
    let (code, out, err) = hub_cli(&config, &api, &to_dr, Some(&admin_file)).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": {\"stage\":\"armed\"}"), "{out}");
    // The hub's probe now watches the recovered Odoo; once it finds it usable, the operator
    // starts the armed plan.
    let token = admin.trim().to_owned();
    let reopening = || async {
        let v: Value = reqwest::Client::new()
            .get(format!("http://{api}/api/v1/reopening"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(v)
    };
    let v = reopening().await.unwrap();
    assert!(v["incidents"]["open"].as_array().unwrap().is_empty(), "the old endpoint's incident ends: {v}");
    assert_eq!(v["plan"]["replay"], true);
    wait_for(WAIT, "the hub's probe finds the recovered Odoo usable", || async {
        (env.get_json(&status_url).await["odoo"]["verdict"] == "reachable").then_some(())
    })
    .await;
    let (code, _, err) =
        hub_cli(&config, &api, &["reopen", "start", "--reason", "DR is up, change 4712"], Some(&admin_file)).await;
    assert_eq!(code, 0, "{err}");
    // The old primary comes back on its address: the hub must never write to it again.
    let old = Proc::spawn(
        &bin("odoo-sim"),
        &["--listen", &primary_addr],
        env.path().join("primary-again.log"),
        "odoo-sim listening on ",
    )
    .await;
    let old_url = old.ready.clone();

    let done = try_wait_for(WAIT, || async {
        let v = reopening().await?;
        (v["plan"]["stage"]["stage"] == "completed").then_some(v)
    })
    .await;
    let Some(view) = done else {
        let v = reopening().await.unwrap_or_default();
        panic!("the plan did not complete: {}\n{}", serde_json::to_string_pretty(&v["plan"]).unwrap(), hub.log_text());
    };
    let history: Vec<String> =
        view["plan"]["history"].as_array().unwrap().iter().map(|s| s["what"].as_str().unwrap().to_owned()).collect();
    let replayed = history.iter().position(|h| h.starts_with("replay done: ")).expect("a replay step");
    let opened = history.iter().position(|h| h == "opened").expect("a wave opened");
    assert!(replayed < opened, "the lost tail first, then the waves: {history:?}");
    assert_eq!(view["endpoint"]["epoch"], 1, "{view}");
    assert_eq!(view["endpoint"]["fenced"][0].as_str().unwrap(), format!("http://{primary_addr}"));

    // Every acknowledged transaction in the recovered Odoo, once, in order per key; waves in order.
    let applied = wait_for(WAIT, "every transaction in the recovered Odoo", || async {
        let a = dr.applied(&env).await;
        (a.len() == sent.len()).then_some(a)
    })
    .await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for a in &applied {
        *count.entry(a["id"].as_str().unwrap()).or_default() += 1;
    }
    let position: HashMap<&str, usize> =
        applied.iter().enumerate().map(|(i, a)| (a["id"].as_str().unwrap(), i)).collect();
    let mut per_plant: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (plant, id) in &sent {
        assert_eq!(count.get(id.as_str()), Some(&1), "{plant} {id} exactly once");
        per_plant.entry(plant).or_default().push(position[id.as_str()]);
    }
    for (plant, order) in &per_plant {
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{plant} in order");
    }
    // The held twenty per plant reopened by wave: b, then a, then c.
    let held_first = |plant: &str| per_plant[plant][130];
    let held_last = |plant: &str| per_plant[plant][149];
    assert!(held_last("plant-b") < held_first("plant-a") && held_last("plant-a") < held_first("plant-c"));

    // The old primary: no call at all, in all this time.
    let stats = sim_stats(&old_url).await;
    assert_eq!(stats["answered"], 0, "the fenced primary got calls: {stats}");
    hub.stop().await;
    for agent in agents {
        agent.stop().await;
    }
    old.kill().await;
}
