//! `holdfast-hub odoo check` against the Odoo double in each state an operator meets: usable,
//! Odoo 16 (no database state), a wrong key, the database server down, no addon, nothing
//! listening. Each answer is asserted line by line and by exit code.

use serde_json::Value;
use tests::harness::{Env, bin, set_faults};

/// Runs the check with the hub config written for `odoo_url`; returns the exit code and the
/// JSON report.
async fn check(env: &Env, odoo_url: &str, extra_odoo: Option<(&str, &str)>) -> (i32, Value) {
    let config = env.hub_config(odoo_url, "127.0.0.1:0", "", "");
    if let Some((from, to)) = extra_odoo {
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains(from));
        std::fs::write(&config, text.replace(from, to)).unwrap();
    }
    run_json("holdfast-hub", &["odoo", "check", "--json", "--config", config.to_str().unwrap()]).await
}

/// Runs one of the workspace's binaries; its exit code and the JSON it printed.
async fn run_json(binary: &str, args: &[&str]) -> (i32, Value) {
    let out = tokio::process::Command::new(bin(binary)).args(args).output().await.unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code().unwrap(), report)
}

fn steps(report: &Value) -> Vec<(String, String)> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["outcome"].as_str().unwrap().to_owned()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[tokio::test]
async fn odoo_check_says_what_works_and_what_does_not_with_its_exit_code() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;

    let (code, report) = check(&env, &odoo.url, None).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        steps(&report),
        pairs(&[("reachable", "ok"), ("version", "ok"), ("authentication", "ok"), ("addon", "ok"), ("read", "ok")])
    );
    assert_eq!(report["steps"][1]["detail"], "Odoo 17.0");
    assert_eq!(report["steps"][2]["detail"], "login \"holdfast-hub\" on database \"holdfast\" is uid 2");
    assert!(report["verdict"].as_str().unwrap().starts_with("usable (median call "), "{report}");

    // A wrong key: refused at the login, which is tried once.
    let (code, report) = check(&env, &odoo.url, Some(("api_key = \"0f3b8e1c", "api_key = \"00000000"))).await;
    assert_eq!(code, 77, "{report}");
    assert_eq!(steps(&report).last().unwrap(), &("authentication".to_owned(), "fail".to_owned()));
    assert_eq!(
        report["verdict"],
        "not usable: authentication: Odoo refused the login \"holdfast-hub\" (wrong login or API key, or an expired key)"
    );

    // The database server down: the health route says so.
    set_faults(&odoo.url, serde_json::json!({"db_down": true})).await;
    let (code, report) = check(&env, &odoo.url, None).await;
    assert_eq!(code, 69, "{report}");
    assert_eq!(steps(&report), pairs(&[("reachable", "fail")]));
    assert_eq!(
        report["steps"][0]["detail"],
        "GET /web/health: 500, Odoo answers but its database server is unreachable"
    );

    // Odoo 16 does not report its database server: a warning, and the login decides.
    let odoo16 = env.odoo_sim_with("odoo16", &["--odoo-version", "16.0"]).await;
    let (code, report) = check(&env, &odoo16.url, None).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(steps(&report)[0], ("reachable".to_owned(), "warn".to_owned()));
    assert_eq!(report["steps"][1]["detail"], "Odoo 16.0");

    // No addon while the config asks for inbox mode.
    let bare = env.odoo_sim_with("bare", &["--without-inbox"]).await;
    let (code, report) = check(&env, &bare.url, None).await;
    assert_eq!(code, 78, "{report}");
    assert_eq!(
        report["steps"][3]["detail"],
        "holdfast_inbox is in state \"uninstalled\": install deploy/odoo/holdfast_inbox, or set odoo.mode = \"plain\""
    );

    // Nothing listening.
    let url = bare.url.clone();
    bare.proc.kill().await;
    let (code, report) = check(&env, &url, None).await;
    assert_eq!(code, 69, "{report}");
    let detail = report["steps"][0]["detail"].as_str().unwrap();
    assert!(detail.starts_with("GET /web/health: ") && detail.contains("onnect"), "{detail}");
}

/// Runs `holdfast-odoo-smoke --json` (what `tests/odoo-smoke` runs against a real Odoo) with a
/// hub config for `odoo_url` in `mode`; returns the exit code and the report.
async fn smoke(env: &Env, odoo_url: &str, mode: &str) -> (i32, Value) {
    let config = env.hub_config(odoo_url, "127.0.0.1:0", "", "");
    tests::harness::set_odoo_mode(&config, mode, "");
    run_json("holdfast-odoo-smoke", &["--json", "--config", config.to_str().unwrap()]).await
}

fn smoke_steps(report: &Value) -> Vec<(String, bool)> {
    let steps = report["steps"].as_array().unwrap();
    steps.iter().map(|s| (s["name"].as_str().unwrap().to_owned(), s["ok"].as_bool().unwrap())).collect()
}

/// The smoke test a user runs against a staging Odoo, run here against the double: every step
/// passes in both modes and leaves its product archived; an Odoo without the addon stops it at
/// the check with the check's exit code.
#[tokio::test]
async fn the_smoke_test_for_a_real_odoo_passes_against_the_double_in_both_modes() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let (code, report) = smoke(&env, &odoo.url, "inbox").await;
    assert_eq!(code, 0, "{report}");
    let names = [
        "create a product of its own",
        "inbox: a transaction is applied",
        "inbox: sent again, it is a duplicate",
        "inbox: a $ref resolves in Odoo",
        "inbox: a private method is refused",
        "archive the smoke product",
    ];
    assert_eq!(smoke_steps(&report), names.iter().map(|n| (n.to_string(), true)).collect::<Vec<_>>());
    assert_eq!(report["steps"][4]["detail"], "AccessError, and the rest of its key not run");
    let (code, report) = smoke(&env, &odoo.url, "plain").await;
    assert_eq!(code, 0, "{report}");
    let names = ["create a product of its own", "write, then read it back", "archive the smoke product"];
    assert_eq!(smoke_steps(&report), names.iter().map(|n| (n.to_string(), true)).collect::<Vec<_>>());

    let without = env.odoo_sim_with("bare", &["--without-inbox"]).await;
    let (code, report) = smoke(&env, &without.url, "inbox").await;
    assert_eq!(code, 78, "{report}");
    assert_eq!(report["passed"], false);
    assert_eq!(report["steps"], serde_json::json!([]));
}
