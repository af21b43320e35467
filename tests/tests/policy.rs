//! Per-plant policy end to end: a call the plant's policy does not allow is quarantined as
//! `holdfast.NotPermitted` before it reaches Odoo, audited, shown at the plant, and holds back
//! only its ordering key.

use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, TEST_CALLS, wait_for};

const WAIT: Duration = Duration::from_secs(90);

fn context_get(order_key: &str, n: u32) -> Value {
    json!({"source": "mes", "device": "line-3", "key": format!("{order_key}-{n}"), "order_key": order_key,
           "odoo": {"model": "res.users", "method": "context_get", "args": []}})
}

#[tokio::test]
async fn a_call_outside_the_plants_policy_is_quarantined_audited_and_holds_back_only_its_key() {
    assert!(!TEST_CALLS.contains(&"account.move:create"), "the refused call is outside the test policy");
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let http = agent.field("http");
    let forbidden = json!({"source": "mes", "device": "line-3", "key": "a-2", "order_key": "a",
        "odoo": {"model": "account.move", "method": "create", "args": [{"ref": "x"}]}});
    let batch = json!([context_get("a", 1), forbidden, context_get("a", 3), context_get("b", 1)]);
    let (status, answer) = env.post(&http, &batch).await;
    assert_eq!(status, 202, "{answer}");
    let id = |i: usize| answer["accepted"][i]["id"].as_str().unwrap().to_owned();

    let fate = wait_for(WAIT, "the plant to hear of the refusal", || async {
        let fate = env.get_json(&format!("http://{http}/v1/transactions/{}", id(1))).await;
        (fate["state"] == "quarantined").then_some(fate)
    })
    .await;
    assert_eq!(
        fate["message"],
        format!("holdfast.NotPermitted: plant \"plant-a\" may not call account.move.create (its policy allows {})", {
            let mut allowed: Vec<&str> = TEST_CALLS.to_vec();
            allowed.sort();
            allowed.join(", ")
        })
    );
    // a-1 and b-1 reach Odoo; a-3 waits behind the refusal; the refused call never reaches Odoo.
    wait_for(WAIT, "a-1 and b-1 applied", || async { (odoo.applied(&env).await.len() == 2).then_some(()) }).await;
    let applied: Vec<String> = odoo.applied(&env).await.iter().map(|a| a.to_string()).collect();
    assert!(applied.iter().all(|a| !a.contains("account.move")), "{applied:?}");
    let waiting = env.get_json(&format!("http://{http}/v1/transactions/{}", id(2))).await;
    assert_ne!(waiting["state"], "applied", "a-3 is held back behind its key's quarantine: {waiting}");

    // The refusal is in the hub's audit trail.
    let db =
        rusqlite::Connection::open_with_flags(env.path().join("hub.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let (actor, reason): (String, String) = db
        .query_row("SELECT actor, reason FROM audit WHERE action = 'transaction_quarantined'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(actor, "applier");
    assert!(
        reason.starts_with("holdfast.NotPermitted: plant \"plant-a\" may not call account.move.create"),
        "{reason}"
    );
    agent.stop().await;
    hub.stop().await;
}
