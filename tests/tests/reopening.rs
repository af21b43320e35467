//! The reopening with real processes: three agents, the hub and the Odoo double. Odoo's database
//! goes down; the hub classifies a platform-wide incident from its own probe and holds every
//! plant; producers keep sending; Odoo comes back and a plan is armed; an operator starts it,
//! pauses it, aborts it (every plant back to held, nothing lost), arms and starts it again; the
//! hub is SIGKILLed mid-plan and comes back with the plan paused and every plant where it was;
//! resumed, the waves open in priority order (checked from the double's own record of which
//! plant's transactions arrived when) and every acknowledged transaction is in Odoo exactly once,
//! in order per ordering key. Every act is in the audit trail.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, hub_cli, plan_stage as stage, set_faults, test_reopening, try_wait_for, wait_for};

const WAIT: Duration = Duration::from_secs(90);
const PLANTS: [&str; 3] = ["plant-a", "plant-b", "plant-c"];
/// Transactions each plant sends while Odoo is down.
const BACKLOG: usize = 30;

fn txn(plant: &str, i: usize) -> Value {
    json!({"source": "mes", "device": "line-1", "key": format!("{plant}-{i}"), "order_key": "line-1",
           "odoo": {"model": "res.users", "method": "context_get", "args": []}})
}

async fn view(env: &Env, api: &str, token: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("http://{api}/api/v1/reopening"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the hub's API");
    assert!(resp.status().is_success(), "GET /api/v1/reopening: {}", resp.status());
    let _ = env;
    resp.json().await.expect("JSON")
}

fn states(v: &Value) -> BTreeMap<String, String> {
    v["plants"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(p, s)| (p.clone(), s["coordinator_state"].as_str().unwrap_or("?").to_owned()))
        .collect()
}

async fn cli(config: &Path, api: &str, token: &Path, args: &[&str]) -> String {
    let (code, out, err) = hub_cli(config, api, args, Some(token)).await;
    assert_eq!(code, 0, "holdfast-hub {args:?}: {err}");
    out
}

fn audit_actions(db: &Path) -> Vec<(String, String, String)> {
    let db = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = db.prepare("SELECT actor, action, target FROM audit ORDER BY seq").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

/// The operator's webhook: records each wave opening it answered. A wave it is told to hold
/// is not answered until released (and then refused, unrecorded), so a test can act while
/// the hub waits on it.
struct Webhook {
    url: String,
    calls: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    /// The wave held (its number, from 1), or none.
    hold: std::sync::Arc<tokio::sync::watch::Sender<Option<u64>>>,
    /// Waves whose opening arrived while held.
    arrived: tokio::sync::watch::Receiver<Vec<u64>>,
}

async fn webhook() -> Webhook {
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hold = std::sync::Arc::new(tokio::sync::watch::channel(None::<u64>).0);
    let (arrived_tx, arrived) = tokio::sync::watch::channel(Vec::new());
    let arrived_tx = std::sync::Arc::new(arrived_tx);
    let (seen, held) = (calls.clone(), hold.clone());
    let app = axum::Router::new().route(
        "/wave",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let (seen, held, arrived_tx) = (seen.clone(), held.clone(), arrived_tx.clone());
            async move {
                let wave = body["wave"].as_u64();
                if wave.is_some() && *held.borrow() == wave {
                    arrived_tx.send_modify(|a| a.extend(wave));
                    let mut released = held.subscribe();
                    let _ = released.wait_for(|h| *h != wave).await;
                    return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "held");
                }
                seen.lock().unwrap().push(body);
                (axum::http::StatusCode::OK, "ok")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Webhook { url: format!("http://{addr}/wave"), calls, hold, arrived }
}

#[tokio::test]
async fn after_an_outage_plants_reopen_in_waves_that_operators_pause_abort_and_resume_across_a_hub_kill() {
    let env = Env::new(&PLANTS);
    let odoo = env.odoo_sim("odoo").await;
    let mut hook = webhook().await;
    let priorities = [("plant-c", 1), ("plant-a", 2), ("plant-b", 3)];
    let reopening = test_reopening(&format!("soak = \"2s\"\nwebhook = {:?}", hook.url), &priorities);
    let config = env.hub_config(&odoo.url, "127.0.0.1:0", "", &reopening);
    let mut hub = env.hub_from(&config).await;
    let sync = hub.field("sync");
    // Plant-b's gateway runs a local command when its plant is reopened.
    let marker = env.path().join("reopened-b.txt");
    let mut agents = Vec::new();
    for plant in PLANTS {
        let config = env.agent_config(plant, &sync);
        if plant == "plant-b" {
            let mut text = std::fs::read_to_string(&config).unwrap();
            let command = format!("echo $HOLDFAST_PLANT $HOLDFAST_WAVE > {}", marker.display());
            text.push_str(&format!("\n[reopening]\non_reopened = [\"sh\", \"-c\", {command:?}]\n"));
            text.push_str("[metrics]\nlisten = \"127.0.0.1:0\"\n");
            std::fs::write(&config, text).unwrap();
        }
        agents.push(env.agent_from(plant, &config).await);
    }
    let (_, admin_file) = env.bootstrap_admin(&config, &hub.field("api")).await;
    let (code, ops, err) = hub_cli(
        &config,
        &hub.field("api"),
        &["token", "create", "--name", "alice", "--role", "operator"],
        Some(&admin_file),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let token_file = env.path().join("alice.token");
    std::fs::write(&token_file, ops.trim()).unwrap();
    let token = ops.trim().to_owned();

    // Healthy: one transaction per plant goes through, and the hub measures its baselines.
    for (agent, plant) in agents.iter().zip(PLANTS) {
        let (status, answer) = env.post(&agent.field("http"), &json!([txn(plant, 0)])).await;
        assert_eq!(status, 202, "{answer}");
    }
    wait_for(WAIT, "the first three applied", || async { (odoo.applied(&env).await.len() == 3).then_some(()) }).await;

    // Odoo's database goes down: a platform-wide incident, every plant held.
    set_faults(&odoo.url, json!({"db_down": true})).await;
    let api = hub.field("api");
    let v = wait_for(WAIT, "a platform-wide incident holding every plant", || async {
        let v = view(&env, &api, &token).await;
        let open = v["incidents"]["open"].as_array()?.iter().any(|i| i["class"] == "platform_wide");
        (open && states(&v).values().filter(|s| *s == "held").count() == 3).then_some(v)
    })
    .await;
    let incident = v["incidents"]["open"].as_array().unwrap().iter().find(|i| i["class"] == "platform_wide").unwrap();
    assert!(incident["evidence"][0].as_str().unwrap().starts_with("the hub's probe finds Odoo unusable"), "{incident}");
    // Producers keep sending; everything is acknowledged.
    let mut sent: Vec<(String, String)> = Vec::new();
    for (agent, plant) in agents.iter().zip(PLANTS) {
        let batch: Vec<Value> = (1..=BACKLOG).map(|i| txn(plant, i)).collect();
        let (status, answer) = env.post(&agent.field("http"), &Value::Array(batch)).await;
        assert_eq!(status, 202, "{answer}");
        for a in answer["accepted"].as_array().unwrap() {
            sent.push((plant.to_owned(), a["id"].as_str().unwrap().to_owned()));
        }
    }
    // Odoo comes back: the incident closes and a plan is armed; nobody is applied yet.
    set_faults(&odoo.url, json!({})).await;
    let v = wait_for(WAIT, "the incident closed and a plan armed", || async {
        let v = view(&env, &api, &token).await;
        (v["incidents"]["open"].as_array()?.is_empty() && stage(&v) == "armed").then_some(v)
    })
    .await;
    let waves: Vec<Vec<String>> = serde_json::from_value(Value::Array(
        v["plan"]["waves"].as_array().unwrap().iter().map(|w| w["plants"].clone()).collect(),
    ))
    .unwrap();
    assert_eq!(waves, [vec!["plant-c"], vec!["plant-a"], vec!["plant-b"]], "tiers by priority");
    assert_eq!(odoo.applied(&env).await.len(), 3, "held until a person starts the plan");
    let b_http = agents[1].field("http");
    wait_for(WAIT, "plant-b's agent shows it held in wave 3", || async {
        let r = env.agent_status(&b_http).await["reopening"].clone();
        (r["state"] == "held" && r["wave"] == 3).then_some(())
    })
    .await;
    // And its metrics say the same, for the plant's monitoring.
    let b_metrics = format!("http://{}/metrics", agents[1].field("metrics"));
    let scrape = || async { reqwest::get(&b_metrics).await.unwrap().text().await.unwrap() };
    let text = scrape().await;
    for line in [
        "holdfast_agent_reopening_state{state=\"held\"} 1",
        "holdfast_agent_reopening_state{state=\"live\"} 0",
        "holdfast_agent_reopening_wave 3",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert!(!marker.exists(), "not reopened yet");

    // Start, pause, abort: every plant back to held.
    let out = cli(&config, &api, &token_file, &["reopen", "start", "--reason", "Odoo is back, change 4711"]).await;
    assert!(out.contains("plan 1: "), "{out}");
    cli(&config, &api, &token_file, &["reopen", "pause", "--reason", "checking the canary"]).await;
    let v = view(&env, &api, &token).await;
    assert_eq!(v["plan"]["paused"]["reason"], "checking the canary", "{v}");
    let status = env.get_json(&format!("http://{api}/api/v1/status")).await;
    assert!(status["alarms"].as_array().unwrap().iter().any(|a| a["name"] == "reopening_paused"), "{status}");
    let (code, _, err) = hub_cli(&config, &api, &["reopen", "pause", "--reason", "again"], Some(&token_file)).await;
    assert_eq!(code, 1);
    assert!(err.contains("(409 not_now)") && err.contains("(paused): pause does not apply"), "{err}");
    let (code, _, err) = hub_cli(&config, &api, &["reopen", "abort", "--reason", " "], Some(&token_file)).await;
    assert_eq!(code, 1);
    assert!(err.contains("(400 reason_required)"), "{err}");
    cli(&config, &api, &token_file, &["reopen", "abort", "--reason", "wrong change window"]).await;
    let v = view(&env, &api, &token).await;
    assert_eq!(stage(&v), "aborted");
    assert!(states(&v).values().all(|s| s == "held"), "{v}");
    // Killed once aborted: still aborted, every plant held.
    hub.kill().await;
    // The same sync address, so the agents find the hub again.
    let config = env.hub_config(&odoo.url, &sync, "", &reopening);
    hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let v = view(&env, &api, &token).await;
    assert_eq!((stage(&v), v["plan"]["paused"].clone()), ("aborted".to_owned(), Value::Null), "{v}");
    assert!(states(&v).values().all(|s| s == "held"), "{v}");

    // Armed again; the hub is killed while the plan is armed: it is still armed after.
    cli(&config, &api, &token_file, &["reopen", "arm", "--reason", "second try"]).await;
    hub.kill().await;
    hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let v = view(&env, &api, &token).await;
    assert_eq!((stage(&v), v["plan"]["paused"].clone()), ("armed".to_owned(), Value::Null), "{v}");
    assert!(states(&v).values().all(|s| s == "held"), "{v}");
    // Started; the hub is killed in the middle of the waves, while wave 2's webhook has not
    // answered (held: otherwise it could answer between the look and the kill).
    hook.hold.send_replace(Some(2));
    cli(&config, &api, &token_file, &["reopen", "start", "--reason", "second try"]).await;
    tokio::time::timeout(WAIT, hook.arrived.wait_for(|a| a.contains(&2)))
        .await
        .expect("wave 2's webhook called")
        .unwrap();
    let before = view(&env, &api, &token).await;
    assert_eq!(stage(&before), "wave 2: opening", "{before}");
    hub.kill().await;
    hook.hold.send_replace(None);
    hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let v = view(&env, &api, &token).await;
    let paused = v["plan"]["paused"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(paused.starts_with("the hub restarted while the plan was wave 2"), "{v}");
    assert_eq!(v["plan"]["stage"], before["plan"]["stage"], "the plan where it was");
    assert_eq!(states(&v), states(&before), "every plant where it was");
    assert_eq!(states(&v)["plant-b"], "held", "wave 3 has not opened");
    cli(&config, &api, &token_file, &["reopen", "resume", "--reason", "hub back after the kill"]).await;
    // And killed again while the last wave soaks.
    let before = wait_for(WAIT, "the last wave baking", || async {
        let v = view(&env, &api, &token).await;
        (stage(&v) == "wave 3: baking").then_some(v)
    })
    .await;
    hub.kill().await;
    hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let v = view(&env, &api, &token).await;
    let paused = v["plan"]["paused"]["reason"].as_str().unwrap_or_default().to_owned();
    assert_eq!(paused, "the hub restarted while the plan was wave 3: baking", "{v}");
    assert_eq!(states(&v), states(&before), "every plant where it was");
    cli(&config, &api, &token_file, &["reopen", "resume", "--reason", "hub back again"]).await;
    wait_for(WAIT, "the plan completed", || async {
        (stage(&view(&env, &api, &token).await) == "completed").then_some(())
    })
    .await;
    let v = view(&env, &api, &token).await;
    assert!(states(&v).values().all(|s| s == "live"), "{v}");
    let done = try_wait_for(WAIT, || async {
        let live = env.agent_status(&b_http).await["reopening"]["state"] == "live";
        let ran = std::fs::read_to_string(&marker).ok()? == "plant-b 3\n";
        (live && ran).then_some(())
    })
    .await;
    if done.is_none() {
        let status = env.agent_status(&b_http).await;
        let log = agents[1].log_text();
        panic!("plant-b's agent: {}, marker {:?}\n{log}", status["reopening"], std::fs::read_to_string(&marker));
    }
    let text = scrape().await;
    assert!(text.lines().any(|l| l == "holdfast_agent_reopening_state{state=\"live\"} 1"), "{text}");

    // Exactly once, in order per ordering key, and the waves in order: every one of a wave's
    // transactions arrived before any of the next wave's.
    let applied = wait_for(WAIT, "every transaction in Odoo", || async {
        let a = odoo.applied(&env).await;
        (a.len() == 3 + 3 * BACKLOG).then_some(a)
    })
    .await;
    let ids: HashSet<&str> = applied.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), applied.len(), "no transaction twice");
    for (plant, id) in &sent {
        assert!(ids.contains(id.as_str()), "{plant} {id} applied");
    }
    let backlog: Vec<&Value> = applied[3..].iter().collect();
    let first = |p: &str| backlog.iter().position(|a| a["plant"] == p).unwrap();
    let last = |p: &str| backlog.iter().rposition(|a| a["plant"] == p).unwrap();
    assert!(last("plant-c") < first("plant-a") && last("plant-a") < first("plant-b"), "waves in order");
    // Each plant's transactions share one ordering key: applied in the order sent.
    let position: BTreeMap<&str, usize> =
        backlog.iter().enumerate().map(|(i, a)| (a["id"].as_str().unwrap(), i)).collect();
    for plant in PLANTS {
        let order: Vec<usize> = sent.iter().filter(|(p, _)| p == plant).map(|(_, id)| position[id.as_str()]).collect();
        assert_eq!(order.len(), BACKLOG, "{plant}");
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{plant} in order: {order:?}");
    }

    // The operator's webhook heard each wave of the plan open, in order, with its plants.
    let heard: Vec<(Value, Value)> =
        hook.calls.lock().unwrap().iter().map(|b| (b["wave"].clone(), b["plants"].clone())).collect();
    assert!(
        heard.ends_with(&[
            (json!(1), json!(["plant-c"])),
            (json!(2), json!(["plant-a"])),
            (json!(3), json!(["plant-b"]))
        ]),
        "{heard:?}"
    );

    // The trail holds every act with its actor.
    hub.stop().await;
    let actions = audit_actions(&env.path().join("hub.db"));
    let has = |actor: &str, action: &str| actions.iter().any(|(a, b, _)| a == actor && b == action);
    assert!(has("coordinator", "incident_opened") && has("coordinator", "incident_closed"), "{actions:?}");
    assert!(has("coordinator", "plan_armed") && has("coordinator", "plan_completed"), "{actions:?}");
    for action in ["plan_started", "plan_paused", "plan_aborted", "plan_armed", "plan_resumed"] {
        assert!(has("token:alice", action), "{action} by alice: {actions:?}");
    }
    assert!(has("coordinator", "plan_paused"), "the restart's pause: {actions:?}");
    for agent in agents {
        agent.stop().await;
    }
}
