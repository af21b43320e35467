//! SIGHUP re-reads the config: what can change while running is in force once systemd hears
//! `READY=1` again (the test is the service manager: a notify socket of its own), the reload's
//! `STATUS=` names every key changed since start, live or waiting for a restart, and a file
//! with a problem changes nothing.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, NotifySocket, Proc, bin, hub_cli, try_wait_for, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// Sends SIGHUP to `proc` and returns the reload's `STATUS=` line, which comes with `READY=1`
/// after `RELOADING=1`.
async fn reload(proc: &Proc, socket: &NotifySocket) -> String {
    let pid = proc.child.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill");
    assert!(status.success());
    socket.expect("RELOADING=1", WAIT).await;
    let ready = socket.expect("READY=1", WAIT).await;
    ready.lines().find_map(|l| l.strip_prefix("STATUS=")).expect("a status line").to_owned()
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} in {text}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn tokens(names: &[&str]) -> String {
    names
        .iter()
        .map(|t| format!("[[http.tokens]]\nname = \"{t}\"\nsha256 = \"{}\"\n", holdfast_agent::http::token_digest(t)))
        .collect()
}

async fn post(http: &str, token: &str, key: &str) -> (u16, Value) {
    let txn = json!({"source": "mes", "device": "line-1", "key": key,
                     "odoo": {"model": "res.users", "method": "context_get", "args": []}});
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/v1/transactions"))
        .bearer_auth(token)
        .json(&txn)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn the_agent_takes_tokens_and_limits_on_sighup_and_names_what_waits_for_a_restart() {
    let env = Env::new(&["plant-a", "plant-b"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let config = env.agent_config("plant-a", &hub.field("sync"));
    edit(&config, "[control]", &format!("{}[control]", tokens(&["tok-1"])));
    let socket = NotifySocket::bind(env.path().join("notify.sock"));
    let agent = Proc::spawn_env(
        &bin("holdfast-agent"),
        &["run", "--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", socket.path.to_str().unwrap())],
        env.path().join("agent.log"),
        "holdfast-agent ready",
    )
    .await;
    socket.expect("READY=1", WAIT).await;
    let http = agent.field("http");
    assert_eq!(post(&http, "tok-1", "k1").await.0, 202);
    assert_eq!(post(&http, "tok-2", "k2").await.0, 401);

    // tok-2 replaces tok-1, the journal may hold only the row it has, and the HTTP listener
    // moves (which needs a restart).
    edit(&config, &tokens(&["tok-1"]), &tokens(&["tok-2"]));
    edit(&config, "[journal]\n", "[journal]\nrows_max = 1\n");
    edit(&config, "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    assert_eq!(
        reload(&agent, &socket).await,
        "config reloaded; changed since start and in force: http.tokens, journal.rows_max; \
         changed but waiting for a restart: http.listen"
    );
    assert_eq!(post(&http, "tok-1", "k3").await.0, 401, "the removed token is refused");
    let (status, answer) = post(&http, "tok-2", "k3").await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "journal_full");
    assert!(answer["error"]["message"].as_str().unwrap().contains("journal.rows_max"), "{answer}");

    // Room again.
    edit(&config, "rows_max = 1\n", "rows_max = 1000\n");
    assert!(reload(&agent, &socket).await.contains("in force: http.tokens, journal.rows_max;"));
    assert_eq!(post(&http, "tok-2", "k3").await.0, 202);

    // A file with a problem, then a certificate for another plant: nothing changes.
    edit(&config, "rows_max = 1000\n", "rows_maximum = 1000\n");
    let said = reload(&agent, &socket).await;
    assert!(said.starts_with("config reload refused, nothing changed: "), "{said}");
    assert!(said.contains("unknown field `rows_maximum`"), "{said}");
    edit(&config, "rows_maximum = 1000\n", "rows_max = 1000\n");
    edit(&config, "certs/plant-a.pem", "certs/plant-b.pem");
    let said = reload(&agent, &socket).await;
    assert!(said.starts_with("config reload refused, nothing changed: "), "{said}");
    assert!(
        said.contains("the certificate is for plant \"plant-b\", but this agent is configured for plant \"plant-a\""),
        "{said}"
    );
    assert_eq!(post(&http, "tok-2", "k4").await.0, 202, "still the tokens of the last good reload");
    assert_eq!(post(&http, "tok-1", "k5").await.0, 401);
    // Everything accepted reaches Odoo.
    wait_for(WAIT, "three applied", || async { (odoo.applied(&env).await.len() == 3).then_some(()) }).await;
}

#[tokio::test]
async fn the_hub_takes_plant_policies_on_sighup_and_audits_each_reload() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let config = env.hub_config(&odoo.url, "127.0.0.1:0", "", "");
    // plant-a starts allowed only a read: its write waits in quarantine.
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("[plants.plant-a]\nallow = [").unwrap();
    let end = start + text[start..].find("\"]\n").unwrap() + 3;
    let full_policy = text[start..end].to_owned();
    std::fs::write(&config, text.replace(&full_policy, "[plants.plant-a]\nallow = [\"res.users:context_get\"]\n"))
        .unwrap();
    let socket = NotifySocket::bind(env.path().join("notify.sock"));
    let hub = Proc::spawn_env(
        &bin("holdfast-hub"),
        &["run", "--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", socket.path.to_str().unwrap())],
        env.path().join("hub.log"),
        "holdfast-hub ready",
    )
    .await;
    socket.expect("READY=1", WAIT).await;
    let api = hub.field("api");
    let (_, admin_file) = env.bootstrap_admin(&config, &api).await;
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let write = json!({"source": "mes", "device": "line-1", "key": "w1", "order_key": "mo:1",
                       "odoo": {"model": "mrp.production", "method": "write",
                                "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", "WH/MO/00001"]]}}], {"qty_producing": 1.0}]}});
    let (status, _) = env.post(&agent.field("http"), &write).await;
    assert_eq!(status, 202);
    let quarantined = format!("http://{api}/api/v1/transactions?plant=plant-a&state=quarantined");
    let row = wait_for(WAIT, "the write refused by the policy", || async {
        env.get_json(&quarantined).await["transactions"].as_array()?.first().cloned()
    })
    .await;
    assert_eq!(row["error_name"], "holdfast.NotPermitted", "{row}");

    // A policy with a mistake is refused whole, and audited.
    edit(&config, "allow = [\"res.users:context_get\"]", "allow = [\"res.users\"]");
    let said = reload(&hub, &socket).await;
    assert!(said.starts_with("config reload refused, nothing changed: plants.plant-a.allow: \"res.users\""), "{said}");
    // The full policy, and a sync certificate path that changes nothing but is read again.
    edit(&config, "[plants.plant-a]\nallow = [\"res.users\"]\n", &full_policy);
    assert_eq!(
        reload(&hub, &socket).await,
        "config reloaded; changed since start and in force: plants.plant-a.allow; \
         changed but waiting for a restart: none"
    );
    let (code, _, err) = hub_cli(
        &config,
        &api,
        &["quarantine", "retry", "--plant", "plant-a", "--reason", "policy widened"],
        Some(&admin_file),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let applied = try_wait_for(WAIT, || async { (odoo.applied(&env).await.len() == 1).then_some(()) }).await;
    assert!(
        applied.is_some(),
        "not applied: {}",
        env.get_json(&format!("http://{api}/api/v1/transactions?plant=plant-a")).await
    );

    let audit = env.get_json(&format!("http://{api}/api/v1/audit?actor=hub")).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str().filter(|a| a.starts_with("config_")))
        .collect();
    assert_eq!(actions, ["config_reload_refused", "config_reloaded"], "{audit}");
}
