//! The `holdfast-hub` command line, as an operator runs it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use holdfast_hub::audit::AuditEntry;
use holdfast_hub::store::Store;
use holdfast_hub::store::sqlite::SqliteStore;

fn hub(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_holdfast-hub")).args(args).output().expect("running holdfast-hub")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn certs_init_and_issue_make_private_keys_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("certs");
    let d = d.to_str().unwrap();
    let out = hub(&["certs", "init", "--dir", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = hub(&["certs", "issue", "--dir", d, "--plant", "plant-a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in ["ca.key", "hub.key", "plant-a.key"] {
        let mode = std::fs::metadata(Path::new(d).join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let again = hub(&["certs", "init", "--dir", d]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        text(&again.stderr),
        format!("holdfast-hub: {d}/ca.key already exists; refusing to overwrite a certificate authority\n")
    );
    let bad = hub(&["certs", "issue", "--dir", d, "--plant", "Plant_A"]);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        text(&bad.stderr),
        "holdfast-hub: plant id \"Plant_A\" must be 1 to 64 characters of a-z, 0-9 and '-'\n"
    );
}

#[test]
fn check_config_reports_unknown_keys_with_exit_64() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/hub.example.toml");
    let ok = hub(&["check-config", "--config", example.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("hub.toml");
    std::fs::write(&bad, std::fs::read_to_string(&example).unwrap().replace("[applier]", "[applier]\ncalls = 3"))
        .unwrap();
    let out = hub(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("unknown field `calls`"), "{}", text(&out.stderr));
}

/// The example config in `dir`, its store holding three audit entries made by `entry`.
async fn example_with_audit(dir: &Path, entry: impl Fn(i64) -> AuditEntry) -> std::path::PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/hub.example.toml");
    let config = dir.join("hub.toml");
    std::fs::copy(&example, &config).unwrap();
    let store = SqliteStore::open(&dir.join("hub.db")).unwrap();
    for i in 0..3 {
        store.append_audit(entry(i)).await.unwrap();
    }
    config
}

#[tokio::test]
async fn audit_verify_finds_a_tampered_entry() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_with_audit(dir.path(), |i| AuditEntry {
        at_ms: i,
        actor: "operator:ana".into(),
        action: "test".into(),
        target: "plant-a".into(),
        reason: format!("entry {i}"),
    })
    .await;
    let out = hub(&["audit", "verify", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "audit trail intact: 3 entries (no audit.hmac_key: the chain is checked, not anchored)\n"
    );

    let db = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
    let refused = db.execute("UPDATE audit SET reason = 'nothing happened' WHERE seq = 2", []).unwrap_err();
    assert_eq!(refused.to_string(), "the audit trail is append-only");
    // Someone with the file can drop the guard; the chain still shows what they did.
    db.execute_batch("DROP TRIGGER audit_append_only_update").unwrap();
    db.execute("UPDATE audit SET reason = 'nothing happened' WHERE seq = 2", []).unwrap();
    drop(db);
    let out = hub(&["audit", "verify", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "holdfast-hub: audit entry 2: its hash does not match its contents (the entry was altered)\n"
    );
}

#[tokio::test]
async fn audit_export_writes_the_trail_as_ndjson_and_continues_after_a_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_with_audit(dir.path(), |i| AuditEntry {
        at_ms: 1_795_000_000_000 + i,
        actor: "token:ana".into(),
        action: "plan_paused".into(),
        target: "plan:1".into(),
        reason: format!("entry \"{i}\""),
    })
    .await;
    let out = hub(&["audit", "export", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["time"], "2026-11-18T11:06:40Z");
    assert_eq!(lines[2]["reason"], "entry \"2\"");
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"], "the chain, for the SIEM to check");
    assert_eq!(text(&out.stderr), "holdfast-hub: exported 3 audit entries (the last is 3; continue with --after 3)\n");
    let file = dir.path().join("audit.ndjson");
    let out = hub(&[
        "audit",
        "export",
        "--config",
        config.to_str().unwrap(),
        "--after",
        "2",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written.lines().count(), 1);
    assert!(written.starts_with("{\"action\":\"plan_paused\""), "{written}");
}
