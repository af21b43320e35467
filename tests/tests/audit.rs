//! The audit trail's anchoring: checkpoints signed with a key kept outside the store catch a
//! rewrite that keeps the hash chain consistent, which the chain alone cannot.

use std::process::Command;

use holdfast_hub::audit::{AuditEntry, GENESIS, chain};
use tests::harness::{Env, START_TIMEOUT, bin, wait_for};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hub_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("holdfast-hub")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn a_rewritten_audit_trail_is_caught_by_its_signed_checkpoints() {
    let env = Env::new(&[]);
    let key = env.path().join("audit.key");
    let (ok, said) = hub_cli(&["audit", "keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{said}");
    let (ok, said) = hub_cli(&["audit", "keygen", "--out", key.to_str().unwrap()]);
    assert!(!ok && said.contains("an existing key is never overwritten"), "{said}");

    let odoo = env.odoo_sim("odoo").await;
    let hub = env
        .hub_with(&odoo.url, "127.0.0.1:0", "", "[audit]\nhmac_key = \"audit.key\"\ncheckpoint_every = \"1s\"")
        .await;
    let config = env.path().join("hub.toml");
    let config = config.to_str().unwrap();
    // Two audited acts: the first token (by bootstrap), then a second through the API.
    let (ok, root) =
        hub_cli(&["token", "create", "--name", "root", "--role", "admin", "--bootstrap", "--config", config]);
    assert!(ok, "{root}");
    let token = env.path().join("root.token");
    // The token is stdout's one line (what follows, if anything, is stderr).
    std::fs::write(&token, root.lines().next().unwrap_or_default()).unwrap();
    let api = format!("http://{}", hub.field("api"));
    let args = ["token", "create", "--name", "ops", "--role", "operator", "--config", config, "--api", &api];
    let (ok, said) = hub_cli(&[&args[..], &["--token-file", token.to_str().unwrap()]].concat());
    assert!(ok, "{said}");
    let head_hash: Vec<u8> = wait_for(START_TIMEOUT, "a checkpoint of both entries", || async {
        let db = rusqlite::Connection::open_with_flags(
            env.path().join("hub.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        // The hub's taking of its lease is audited too: the checkpoint that covers the second token.
        db.query_row(
            "SELECT head_hash FROM audit_checkpoints WHERE head_seq = (SELECT MAX(seq) FROM audit WHERE target = 'token:ops')",
            [],
            |r| r.get(0),
        )
        .ok()
    })
    .await;
    let logged = hub.log_text();
    assert!(
        logged.lines().any(|l| l.contains("audit checkpoint") && l.contains(&format!("head_hash={}", hex(&head_hash)))),
        "the checkpoint's head is in the hub's log:\n{logged}"
    );
    hub.stop().await;
    let entries: u64 = rusqlite::Connection::open(env.path().join("hub.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    let (ok, said) = hub_cli(&["audit", "verify", "--config", config]);
    // The lease taken and given up at the stop, the two tokens; one checkpoint a second while
    // the head moves, and one at the stop.
    assert_eq!(entries, 4);
    assert!(
        ok && said.contains(&format!("audit trail intact: {entries} entries, "))
            && said.contains(" signed checkpoints verified"),
        "{said}"
    );

    // Someone with write access to the store edits entry 1 and recomputes the chain after it.
    let db = rusqlite::Connection::open(env.path().join("hub.db")).unwrap();
    db.execute_batch("DROP TRIGGER audit_append_only_update; UPDATE audit SET reason = 'routine' WHERE seq = 1;")
        .unwrap();
    let rows: Vec<(u64, AuditEntry)> = db
        .prepare("SELECT seq, at_ms, actor, action, target, reason FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                AuditEntry {
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    reason: r.get(5)?,
                },
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut prev = GENESIS;
    for (seq, entry) in rows {
        let hash = chain(&prev, seq, &entry);
        db.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev.as_slice(), hash.as_slice(), seq],
        )
        .unwrap();
        prev = hash;
    }
    drop(db);
    let (ok, said) = hub_cli(&["audit", "verify", "--config", config]);
    assert!(!ok);
    assert!(
        said.contains("audit entries 1 to ") && said.contains("the first entry that may have changed is 1"),
        "{said}"
    );
}
