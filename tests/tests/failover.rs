//! Failover with real processes: three agents, the hub, a primary Odoo double and a
//! disaster-recovery double started as a snapshot of the primary some hundred applied
//! transactions back. Producers keep sending; the primary dies; the hub classifies and holds;
//! the operator declares the failover with its recovery point; the lost tail is applied again
//! first (the recovered inbox skips what it has), then the plants reopen in waves (paused and
//! resumed, then aborted, armed and started again in the middle); the old
//! primary, brought back, receives nothing. At the end every acknowledged transaction is in the
//! disaster-recovery double exactly once, in order per ordering key.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{
    Env, Proc, bin, hub_cli, rfc3339, set_faults, sim_stats, test_reopening, try_wait_for, wait_for, wall,
};

const WAIT: Duration = Duration::from_secs(90);
const PLANTS: [&str; 3] = ["plant-a", "plant-b", "plant-c"];

fn txn(plant: &str, i: usize) -> Value {
    json!({"source": "mes", "device": "line-1", "key": format!("{plant}-{i}"), "order_key": "line-1",
           "odoo": {"model": "res.users", "method": "context_get", "args": []}})
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
    let (admin, admin_file) = env.bootstrap_admin(&config, &api).await;

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
    let reopening = || reopening_of(&api, &admin);
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

    // In the middle of the waves: pause and resume, then abort (every plant held again), arm
    // and start a new plan (the replay is through: it goes straight to the waves).
    let verb = |args: &'static [&'static str]| {
        let (config, api, admin_file) = (&config, &api, &admin_file);
        async move {
            let (code, _, err) = hub_cli(config, api, args, Some(admin_file)).await;
            assert_eq!(code, 0, "{args:?}: {err}");
        }
    };
    let at_wave = |index: u64| {
        let reopening = &reopening;
        async move {
            wait_for(WAIT, "the plan at a wave", || async {
                let v = reopening().await?;
                (v["plan"]["stage"]["index"] == index && v["plan"]["paused"].is_null()).then_some(v)
            })
            .await
        }
    };
    at_wave(1).await;
    verb(&["reopen", "pause", "--reason", "a look at the canary"]).await;
    let v = reopening().await.unwrap();
    assert_eq!(v["plan"]["paused"]["reason"], "a look at the canary", "{v}");
    verb(&["reopen", "resume", "--reason", "canary fine"]).await;
    at_wave(2).await;
    verb(&["reopen", "abort", "--reason", "wrong change window"]).await;
    let v = reopening().await.unwrap();
    assert_eq!(v["plan"]["stage"]["stage"], "aborted", "{v}");
    let history: Vec<String> =
        v["plan"]["history"].as_array().unwrap().iter().map(|s| s["what"].as_str().unwrap().to_owned()).collect();
    let replayed = history.iter().position(|h| h.starts_with("replay done: ")).expect("a replay step");
    let opened = history.iter().position(|h| h == "opened").expect("a wave opened");
    assert!(replayed < opened, "the lost tail first, then the waves: {history:?}");
    assert!(v["plants"].as_object().unwrap().values().all(|p| p["state"] == "held"), "{v}");
    verb(&["reopen", "arm", "--reason", "second try"]).await;
    verb(&["reopen", "start", "--reason", "second try"]).await;
    assert_eq!(reopening().await.unwrap()["plan"]["replay"], false, "the replay is through");

    let done = try_wait_for(WAIT, || async {
        let v = reopening().await?;
        (v["plan"]["stage"]["stage"] == "completed").then_some(v)
    })
    .await;
    let Some(view) = done else {
        let v = reopening().await.unwrap_or_default();
        panic!("the plan did not complete: {}\n{}", serde_json::to_string_pretty(&v["plan"]).unwrap(), hub.log_text());
    };
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

/// Plain delivery has no inbox to ask: the replay runs each transaction's check against the
/// recovered Odoo. What it finds is not sent again, what is missing is, and what no check can
/// decide is named for the operator (its key waits), who judges and promotes.
#[tokio::test]
async fn a_plain_mode_replay_asks_each_transactions_check_and_names_what_none_decides() {
    let env = Env::new(&["plant-a"]);
    let primary = env.odoo_sim("primary").await;
    let reopening = test_reopening("soak = \"1s\"", &[("plant-a", 1)]);
    let config = env.hub_config(&primary.url, "127.0.0.1:0", "", &reopening);
    let checks = "limit_time_real = \"1s\"\n\
                  checks = [{ model = \"mrp.production\", method = \"create\", check = { reference_search = { field = \"origin\" } } },\
                            { model = \"mrp.production\", method = \"button_mark_done\", check = { state_read = { field = \"state\", value = \"done\" } } }]\n";
    tests::harness::set_odoo_mode(&config, "plain", checks);
    let mut hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let sync = hub.field("sync");
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let http = agent.field("http");
    let (token, admin_file) = env.bootstrap_admin(&config, &api).await;
    let applied_seq = |n: u64| {
        let (env, http) = (&env, http.clone());
        async move { (env.agent_status(&http).await["hub"]["applied_seq"] == n).then_some(()) }
    };
    let post = |key: &str, order_key: &str, odoo: Value| {
        let (env, http) = (&env, http.clone());
        let t = json!({"source": "mes", "device": "line-3", "key": key, "order_key": order_key, "odoo": odoo});
        async move {
            let (status, answer) = env.post(&http, &json!([t])).await;
            assert_eq!(status, 202, "{answer}");
        }
    };
    let create = |name: &str| json!({"model": "mrp.production", "method": "create", "args": [{"name": name}]});
    let mo = |name: &str| json!({"$ref": {"model": "mrp.production", "domain": [["name", "=", name]]}});

    let recovery_point = wall();
    post("mo-7000", "a", create("WH/MO/07000")).await;
    wait_for(WAIT, "the first create applied", || applied_seq(1)).await;
    let commits = env.get_json(&format!("{}/holdfast-sim/applied", primary.url)).await["commits"].as_u64().unwrap();
    post("mo-7001", "a", create("WH/MO/07001")).await;
    post(
        "qty-1",
        "b",
        json!({"model": "mrp.production", "method": "write", "args": [[mo("WH/MO/00001")], {"qty_producing": 9.0}]}),
    )
    .await;
    post(
        "done-1",
        "b",
        json!({"model": "mrp.production", "method": "button_mark_done", "args": [[mo("WH/MO/00001")]],
                              "kwargs": {"context": {"skip_backorder": true, "skip_consumption": true}}}),
    )
    .await;
    post(
        "lines-3",
        "d",
        json!({"model": "mrp.production", "method": "write",
                               "args": [[mo("WH/MO/00003")], {"move_raw_ids": [[0, 0, {"product_id": 1}]]}]}),
    )
    .await;
    post("mo-7005", "d", create("WH/MO/07005")).await;
    if try_wait_for(WAIT, || applied_seq(6)).await.is_none() {
        panic!("not all six applied: {}\n{}", env.agent_status(&http).await, hub.log_text());
    }

    // The recovered Odoo holds the first create only.
    let dr = env.odoo_sim_with("dr", &["--snapshot-of", &primary.url, "--as-of", &commits.to_string()]).await;
    let sim = tests::odoo_sim::SimConfig::default();
    let odoo = holdfast_hub::odoo::OdooClient::new(&holdfast_hub::config::OdooConfig {
        url: dr.url.clone(),
        database: sim.database,
        login: sim.login,
        api_key: sim.api_key,
        api_key_file: None,
        mode: holdfast_hub::config::DeliveryMode::Plain,
        timeout: Duration::from_secs(10),
        probe_interval: Duration::from_secs(10),
        limit_time_real: Duration::from_secs(1),
        checks: Vec::new(),
    })
    .unwrap();
    let read = |name: &'static str| {
        let odoo = &odoo;
        async move {
            let rows = odoo
                .execute_kw(
                    "mrp.production",
                    "search_read",
                    json!([[["name", "=", name]]]),
                    json!({"fields": ["state", "qty_producing", "move_raw_ids"]}),
                )
                .await
                .unwrap();
            rows.as_array().unwrap().clone()
        }
    };
    assert_eq!(read("WH/MO/07000").await.len(), 1);
    assert_eq!(read("WH/MO/07001").await.len(), 0);

    primary.proc.kill().await;
    let status_url = format!("http://{api}/api/v1/status");
    wait_for(WAIT, "the hub sees Odoo unusable", || async {
        let s = env.get_json(&status_url).await;
        (s["odoo"]["verdict"] != "reachable" && s["odoo"]["verdict"] != "unknown").then_some(())
    })
    .await;
    let rp = rfc3339(recovery_point);
    let failover = [
        "incident",
        "failover",
        "--odoo-url",
        &dr.url,
        "--recovery-point",
        &rp,
        "--margin",
        "0s",
        "--reason",
        "primary lost",
    ];
    let (code, _, err) = hub_cli(&config, &api, &failover, Some(&admin_file)).await;
    assert_eq!(code, 0, "{err}");
    wait_for(WAIT, "the hub's probe finds the recovered Odoo usable", || async {
        (env.get_json(&status_url).await["odoo"]["verdict"] == "reachable").then_some(())
    })
    .await;
    // The recovered Odoo's version call answers slowly: the hub is killed in the preflight, and comes back
    // with the plan paused there, the plant still held.
    set_faults(&dr.url, json!({"slow_ms": 1000, "slow_only": "common.version"})).await;
    let (code, _, err) = hub_cli(&config, &api, &["reopen", "start", "--reason", "DR is up"], Some(&admin_file)).await;
    assert_eq!(code, 0, "{err}");
    wait_for(WAIT, "the preflight under way", || async {
        (plan_of(&api, &token).await?["stage"]["stage"] == "preflight").then_some(())
    })
    .await;
    // The same sync address, so the agent finds the hub again.
    let restart = |hub: Proc| {
        let (env, config, reopening, primary, sync) = (&env, &config, &reopening, &primary.url, &sync);
        async move {
            hub.kill().await;
            let config_again = env.hub_config(primary, sync, "", reopening);
            assert_eq!(config_again, *config);
            tests::harness::set_odoo_mode(config, "plain", checks);
            env.hub_from(config).await
        }
    };
    hub = restart(hub).await;
    let api = hub.field("api");
    let p = plan_of(&api, &token).await.unwrap();
    assert_eq!(p["stage"]["stage"], "preflight", "{p}");
    assert_eq!(p["paused"]["reason"], "the hub restarted while the plan was preflight", "{p}");
    // Now the checks' searches answer slowly: the hub is killed in the replay itself.
    set_faults(&dr.url, json!({"slow_ms": 3000, "slow_only": "mrp.production.search"})).await;
    let (code, _, err) = hub_cli(&config, &api, &["reopen", "resume", "--reason", "hub back"], Some(&admin_file)).await;
    assert_eq!(code, 0, "{err}");
    wait_for(WAIT, "the replay under way", || async {
        let p = plan_of(&api, &token).await?;
        (p["stage"]["stage"] == "replaying" && p["paused"].is_null()).then_some(())
    })
    .await;
    hub = restart(hub).await;
    let api = hub.field("api");
    let p = plan_of(&api, &token).await.unwrap();
    assert_eq!(p["stage"]["stage"], "replaying", "{p}");
    assert_eq!(p["paused"]["reason"], "the hub restarted while the plan was replaying", "{p}");
    set_faults(&dr.url, json!({})).await;
    let (code, _, err) =
        hub_cli(&config, &api, &["reopen", "resume", "--reason", "hub back again"], Some(&admin_file)).await;
    assert_eq!(code, 0, "{err}");

    let replay_paused = || async {
        wait_for(WAIT, "the replay to stop for the operator", || async {
            let p = plan_of(&api, &token).await?;
            p["paused"]["reason"].as_str().map(str::to_owned)
        })
        .await
    };
    let paused = replay_paused().await;
    assert!(paused.starts_with("the replay needs an operator: 6 transactions applied from "), "{paused}");
    assert!(paused.contains(" ms, replayed by their checks: 1 held already, 3 sent again, 0 reads; 1 could not be put back (and 1 after them in their keys were not sent): ledger "), "{paused}");
    assert!(
        paused.contains(" undecided: holdfast.ReplayUndecided: mrp.production.write has no declared check"),
        "{paused}"
    );
    assert_eq!(plan_of(&api, &token).await.unwrap()["stage"]["stage"], "replaying");
    // Killed while paused for the operator: still paused, for the same reason.
    hub = restart(hub).await;
    let api = hub.field("api");
    let p = plan_of(&api, &token).await.unwrap();
    assert_eq!(
        (p["stage"]["stage"].as_str(), p["paused"]["reason"].as_str()),
        (Some("replaying"), Some(paused.as_str()))
    );

    // Held already: not made twice. Missing: put back. Undecided, and what follows it: not sent.
    assert_eq!(read("WH/MO/07000").await.len(), 1, "held already, not made twice");
    assert_eq!(read("WH/MO/07001").await.len(), 1, "missing, made again");
    assert_eq!(read("WH/MO/00001").await[0]["qty_producing"], 9.0);
    assert_eq!(read("WH/MO/00001").await[0]["state"], "done");
    let calls = env.get_json(&format!("{}/holdfast-sim/applied", dr.url)).await;
    let lines_written =
        calls["calls"].as_array().unwrap().iter().filter(|c| c.to_string().contains("move_raw_ids")).count();
    assert_eq!(lines_written, 0, "undecided: not sent: {calls}");
    assert_eq!(read("WH/MO/07005").await.len(), 0, "behind the undecided one in its key");

    // The operator checks in Odoo, then judges the replay; the plant reopens.
    let (code, _, err) =
        hub_cli(&config, &api, &["reopen", "promote", "--reason", "MO/00003 lines entered by hand"], Some(&admin_file))
            .await;
    assert_eq!(code, 0, "{err}");
    wait_for(WAIT, "the plan completes", || async {
        (plan_of(&api, &token).await?["stage"]["stage"] == "completed").then_some(())
    })
    .await;
    hub.stop().await;
    agent.stop().await;
}

/// The hub's `GET /api/v1/reopening`, if it answers.
async fn reopening_of(api: &str, token: &str) -> Option<Value> {
    reqwest::Client::new()
        .get(format!("http://{api}/api/v1/reopening"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Its plan.
async fn plan_of(api: &str, token: &str) -> Option<Value> {
    Some(reopening_of(api, token).await?["plan"].clone())
}
