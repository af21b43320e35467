//! The `holdfast-agent` command line, as plant IT runs it.

use std::path::Path;
use std::process::{Command, Output};

use holdfast_agent::journal::{Entry, Journal, Limits};
use uuid::Uuid;

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_holdfast-agent")).args(args).output().expect("running holdfast-agent")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/agent.example.toml")
}

/// A folder with the example config and certificates for `plant`, valid for `days`.
fn example_with_certs(plant: &str, days: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    holdfast_hub::certs::init(&certs, &["localhost".into()]).unwrap();
    let (cert, key) = holdfast_hub::certs::issue(&certs, plant, days).unwrap();
    if plant != "plant-a" {
        std::fs::rename(cert, certs.join("plant-a.pem")).unwrap();
        std::fs::rename(key, certs.join("plant-a.key")).unwrap();
    }
    let config = dir.path().join("agent.toml");
    std::fs::copy(example(), &config).unwrap();
    (dir, config)
}

#[test]
fn check_config_accepts_the_example_and_names_every_problem() {
    let (_dir, config) = example_with_certs("plant-a", 365);
    let ok = agent(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("agent.toml");
    let text_cfg = std::fs::read_to_string(example())
        .unwrap()
        .replace("plant = \"plant-a\"", "plant = \"Plant A\"")
        .replace("retention = \"7d\"", "retention = \"1s\"");
    std::fs::write(&bad, text_cfg).unwrap();
    let out = agent(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let p = bad.display();
    assert_eq!(
        text(&out.stderr),
        format!(
            "holdfast-agent: {p}: plant: \"Plant A\" must be 1 to 64 characters of a-z, 0-9 and '-'\nholdfast-agent: {p}: journal.retention: must be at least 1m\n"
        )
    );
}

#[tokio::test]
async fn status_reads_the_journal_when_the_agent_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    // Nothing listens on this port: the status command falls back to the journal.
    let text_cfg = std::fs::read_to_string(example()).unwrap().replace("127.0.0.1:8480", "127.0.0.1:9");
    std::fs::write(&config, text_cfg).unwrap();
    let journal = Journal::open(&dir.path().join("journal-plant-a.db"), 1, Limits::NONE).unwrap();
    let entries = (1..=3u128)
        .map(|i| Entry { id: Uuid::from_u128(i), dedup: None, received_at_ms: 1, body: vec![1, 2, 3] })
        .collect();
    journal.append(entries).await.unwrap();
    drop(journal);

    let out = agent(&["status", "--config", config.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["plant"], "plant-a");
    assert_eq!(status["mode"], "offline");
    assert_eq!(status["running"], false);
    assert_eq!(status["backlog"], 3);
    assert_eq!(status["journal"]["last_seq"], 3);
    assert_eq!(status["hub"]["connected"], false);
    assert_eq!(status["hub"]["stored_seq"], 0);
    assert_eq!(status["hub"]["applied_seq"], 0);

    let human = agent(&["status", "--config", config.to_str().unwrap()]);
    assert!(
        text(&human.stdout).contains("backlog    3 not yet in Odoo, 3 not yet at the hub"),
        "{}",
        text(&human.stdout)
    );
}

#[test]
fn an_api_reachable_beyond_loopback_needs_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, std::fs::read_to_string(example()).unwrap().replace("127.0.0.1:8480", "0.0.0.0:8480"))
        .unwrap();
    let out = agent(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        text(&out.stderr),
        format!(
            "holdfast-agent: {}: http.tokens: 0.0.0.0:8480 is reachable beyond this machine, so producers need tokens; add [[http.tokens]] (holdfast-agent token new)\n",
            config.display()
        )
    );
}

#[test]
fn token_new_prints_a_token_and_its_config_entry() {
    let out = agent(&["token", "new", "--name", "mes-line-3"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let token = stdout.lines().nth(1).unwrap().trim();
    assert!(token.starts_with("hft_") && token.len() == 68, "{token}");
    assert!(stdout.contains(&format!("sha256 = \"{}\"", holdfast_agent::http::token_digest(token))), "{stdout}");
}

#[test]
fn check_config_checks_the_certificate_plant_and_expiry() {
    let (dir, config) = example_with_certs("plant-b", 10);
    let out = agent(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let cert = dir.path().join("certs/plant-a.pem");
    let c = config.display();
    assert_eq!(
        text(&out.stderr),
        format!(
            "holdfast-agent: {c}: hub.cert: {p} is for plant \"plant-b\", but plant is \"plant-a\"\n\
             holdfast-agent: {c}: hub.cert: {p} expires in 10 days: renew it (within 30 days of expiry)\n",
            p = cert.display()
        )
    );
}

#[tokio::test]
async fn journal_export_writes_ndjson_from_a_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::copy(example(), &config).unwrap();
    let journal = Journal::open(&dir.path().join("journal-plant-a.db"), 1, Limits::NONE).unwrap();
    let txn = |n: u64| holdfast_protocol::Transaction {
        id: Uuid::from_u128(u128::from(n)),
        plant: "plant-a".into(),
        source: holdfast_protocol::SourceKind::Mes,
        device: "line-1".into(),
        key: None,
        order_key: "plant-a".into(),
        received_at_ms: 7,
        occurred_at_ms: None,
        op: holdfast_protocol::Operation::OdooCall(holdfast_protocol::OdooCall {
            model: "res.users".into(),
            method: "context_get".into(),
            args: serde_json::json!([]),
            kwargs: Default::default(),
        }),
    };
    let entries = (1..=3).map(|n| Entry::of(&txn(n), txn(n).encode_body().unwrap())).collect();
    journal.append(entries).await.unwrap();
    drop(journal);
    let out = agent(&["journal", "export", "--from", "2", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["seq"], 2);
    assert_eq!(lines[0]["transaction"]["id"], Uuid::from_u128(2).to_string());
    assert_eq!(lines[1]["transaction"]["op"]["odoo_call"]["method"], "context_get");
}
