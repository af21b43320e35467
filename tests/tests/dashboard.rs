//! The dashboard in a real headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol: during a reopening of three plants it shows every plant, a pause made elsewhere
//! appears within one refresh, an operator resumes the plan from the page with a reason, the
//! console stays free of errors, and a screenshot is kept (`target/ci-artifacts/dashboard.png`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tests::harness::{Env, api_token, hub_cli, set_faults, test_reopening, wait_for};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);
const PLANTS: [&str; 3] = ["plant-a", "plant-b", "plant-c"];
/// The page refreshes this often in the test.
const REFRESH_MS: u64 = 1000;

/// A headless Chromium with one page, over the DevTools protocol.
struct Browser {
    child: tokio::process::Child,
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
    /// Console errors, uncaught exceptions and failed loads the page reported.
    errors: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium runs (Debian's chromium package; .ci/run installs it)");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let browser_ws = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium ended without a DevTools address");
        })
        .await
        .expect("chromium's DevTools address");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port = browser_ws.trim_start_matches("ws://127.0.0.1:").split('/').next().unwrap().to_owned();
        let targets: Value =
            reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await.unwrap().json().await.unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(page.as_str()).await.unwrap();
        let mut b = Browser { child, ws, next_id: 0, errors: Vec::new(), _profile: profile };
        for method in ["Runtime.enable", "Log.enable", "Page.enable"] {
            b.send(method, json!({})).await;
        }
        b
    }

    /// Sends a command and waits for its answer, noting the events that arrive meanwhile.
    async fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let text = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::Text(text.into())).await.unwrap();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next()).await.expect("DevTools answers").unwrap().unwrap();
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
            self.note(&v);
        }
    }

    fn note(&mut self, event: &Value) {
        let p = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") if p["type"] == "error" || p["type"] == "assert" => {
                self.errors.push(format!("console.{}: {}", p["type"], p["args"]))
            }
            Some("Runtime.exceptionThrown") => self.errors.push(format!("exception: {}", p["exceptionDetails"])),
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {}", p["entry"]["text"]))
            }
            _ => {}
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .send("Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true}))
            .await;
        assert!(r["exceptionDetails"].is_null(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    async fn refreshed(&mut self) -> u64 {
        self.eval("Number(document.body.dataset.refreshed || 0)").await.as_u64().unwrap()
    }

    /// Waits until `expr` is true in the page; returns the refresh count then.
    async fn wait_true(&mut self, what: &str, expr: &str) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.eval(expr).await == json!(true) {
                return self.refreshed().await;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            // Polls the page at a tenth of its refresh: the DevTools round trip is the wait.
            let _ = tokio::time::timeout(Duration::from_millis(REFRESH_MS / 10), self.ws.next()).await.map(|m| {
                if let Some(Ok(Message::Text(t))) = m { serde_json::from_str::<Value>(&t).ok() } else { None }
            });
        }
    }
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ci-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_dashboard_shows_every_plant_reflects_a_pause_within_a_refresh_and_resumes_from_the_page() {
    let env = Env::new(&PLANTS);
    let odoo = env.odoo_sim("odoo").await;
    let reopening =
        test_reopening("soak = \"120s\"\nauto_start_after = \"1s\"", &[("plant-a", 1), ("plant-b", 2), ("plant-c", 3)]);
    let config = env.hub_config(&odoo.url, "127.0.0.1:0", "", &reopening);
    let hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let mut agents = Vec::new();
    for plant in PLANTS {
        agents.push(env.agent(plant, &hub.field("sync")).await);
    }
    let (admin, admin_file) = env.bootstrap_admin(&config, &api).await;
    let operator = api_token(&api, &admin, "shift-lead", "operator").await;

    // An outage: the plants keep sending; Odoo returns and the plan starts by itself, its first
    // wave soaking for two minutes.
    set_faults(&odoo.url, json!({"db_down": true})).await;
    for (p, agent) in agents.iter().enumerate() {
        let batch: Vec<Value> = (0..5)
            .map(|i| {
                json!({"source": "mes", "device": "line-1", "key": format!("{p}-{i}"), "order_key": "line-1",
                            "odoo": {"model": "res.users", "method": "context_get", "args": []}})
            })
            .collect();
        let (status, answer) = env.post(&agent.field("http"), &Value::Array(batch)).await;
        assert_eq!(status, 202, "{answer}");
    }
    let status_url = format!("http://{api}/api/v1/status");
    wait_for(WAIT, "the outage classified platform-wide", || async {
        let open = env.get_json(&status_url).await["incidents"]["open"].clone();
        open.as_array()?.iter().any(|i| i["class"] == "platform_wide").then_some(())
    })
    .await;
    set_faults(&odoo.url, json!({})).await;
    let reopening_url = format!("http://{api}/api/v1/reopening");
    let soaking = tests::harness::try_wait_for(WAIT, || async {
        let v = env.get_json(&reopening_url).await;
        (v["plan"]["stage"]["phase"] == "baking").then_some(())
    })
    .await;
    if soaking.is_none() {
        panic!("no wave soaking: {:#}\n{}", env.get_json(&reopening_url).await, hub.log_text());
    }

    // Every plant's chart comes from one answer, the same samples as each plant's detail.
    let histories = wait_for(WAIT, "a backlog sample of every plant", || async {
        let h = env.get_json(&format!("http://{api}/api/v1/backlog-history")).await;
        let plants = h["plants"].as_object()?;
        (plants.len() == 3 && plants.values().all(|s| s.as_array().is_some_and(|s| !s.is_empty()))).then(|| h.clone())
    })
    .await;
    for plant in PLANTS {
        let detail = env.get_json(&format!("http://{api}/api/v1/plants/{plant}")).await;
        let from_list = histories["plants"][plant].as_array().unwrap();
        let from_detail = detail["backlog_history"].as_array().unwrap();
        assert_eq!(from_list[..], from_detail[..from_list.len()], "{plant}");
    }

    let mut browser = Browser::start().await;
    let url = format!("http://{api}/#token={operator}&refresh={REFRESH_MS}");
    browser.send("Page.navigate", json!({"url": url})).await;
    browser.wait_true("every plant shown", "document.querySelectorAll('.plant').length === 3").await;
    let shown: BTreeSet<String> = serde_json::from_value(
        browser.eval("[...document.querySelectorAll('.plant')].map(e => e.dataset.plant)").await,
    )
    .unwrap();
    assert_eq!(shown, PLANTS.iter().map(|p| p.to_string()).collect());
    let states = browser
        .eval(
            "Object.fromEntries([...document.querySelectorAll('.plant')].map(e => [e.dataset.plant, e.dataset.state]))",
        )
        .await;
    assert_eq!(states["plant-b"], "held", "{states}");
    assert_eq!(browser.eval("document.querySelectorAll('.plant svg').length").await, 3);
    browser.wait_true("the gates shown", "document.querySelectorAll('#gates li.gate.pass').length > 0").await;
    let banner = browser.eval("document.getElementById('plan-state').textContent").await;
    assert!(banner.as_str().unwrap().contains("wave 1: baking — running"), "{banner}");

    // Paused elsewhere (the CLI): the page shows it by its next refresh.
    let before = browser.refreshed().await;
    let (code, _, err) =
        hub_cli(&config, &api, &["reopen", "pause", "--reason", "checking the canary"], Some(&admin_file)).await;
    assert_eq!(code, 0, "{err}");
    let seen_at = browser
        .wait_true(
            "the pause shown",
            "document.getElementById('plan-state').textContent.includes('paused (checking the canary')",
        )
        .await;
    assert!(seen_at <= before + 2, "shown after {} refreshes (from {before} to {seen_at})", seen_at - before);

    // The operator resumes from the page, with a reason.
    browser.eval("document.getElementById('reason').value = 'canary fine, change 4711'").await;
    browser.eval("document.querySelector('#verbs button[data-verb=resume]').click()").await;
    browser
        .wait_true("the resume shown", "document.getElementById('plan-state').textContent.includes('running')")
        .await;
    let v = env.get_json(&reopening_url).await;
    assert!(v["plan"]["paused"].is_null(), "{v}");
    let resumed = v["plan"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|h| h["what"] == "resumed: canary fine, change 4711");
    assert_eq!(resumed.map(|h| h["by"].clone()), Some(json!("token:shift-lead")), "{v}");

    let shot = browser.send("Page.captureScreenshot", json!({"format": "png"})).await;
    let png =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, shot["data"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = artifacts().join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());
    assert!(browser.errors.is_empty(), "the page's console: {:#?}", browser.errors);
    let _ = browser.child.kill().await;
    for agent in agents {
        agent.stop().await;
    }
    hub.stop().await;
}
