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
    let out = tokio::process::Command::new(bin("holdfast-hub"))
        .args(["odoo", "check", "--json", "--config", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
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
