//! Quarantine operations as an operator runs them: tokens (the first by bootstrap, the rest
//! through the API), `holdfast-hub quarantine list`, `retry` after a fix in Odoo (applied in
//! order with what waited behind it), `park` (done, never applied, the plant told), each
//! audited; and the exact refusals for a missing token, a weak role and an empty selection.

use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, hub_cli, wait_for};

const WAIT: Duration = Duration::from_secs(90);

fn write_mo(key: &str, order_key: &str, mo: &str, qty: f64) -> Value {
    json!({"source": "mes", "device": "line-3", "key": key, "order_key": order_key,
           "odoo": {"model": "mrp.production", "method": "write",
                    "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", mo]]}}], {"qty_producing": qty}]}})
}

#[tokio::test]
async fn operators_list_retry_and_park_quarantined_transactions_with_tokens_and_every_act_is_audited() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let config = env.path().join("hub.toml");
    let api = hub.field("api");
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let http = agent.field("http");
    let batch = json!([
        write_mo("t1", "mo:9999", "WH/MO/09999", 1.0),
        write_mo("t2", "mo:9999", "WH/MO/00001", 2.0),
        write_mo("t3", "mo:8888", "WH/MO/08888", 3.0),
    ]);
    let (status, answer) = env.post(&http, &batch).await;
    assert_eq!(status, 202, "{answer}");
    let id = |i: usize| answer["accepted"][i]["id"].as_str().unwrap().to_owned();
    wait_for(WAIT, "two quarantined, shown at the plant", || async {
        (env.agent_status(&http).await["quarantined"].as_array()?.len() == 2).then_some(())
    })
    .await;

    // Tokens: the first by bootstrap, only once; the rest through the API.
    let (_, admin_file) = env.bootstrap_admin(&config, &api).await;
    let (code, _, err) =
        hub_cli(&config, &api, &["token", "create", "--name", "again", "--role", "admin", "--bootstrap"], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("already holds 1 admin token(s): --bootstrap makes only the first"), "{err}");
    let mut files = Vec::new();
    for (name, role) in [("alice", "operator"), ("bob", "viewer")] {
        let (code, token, err) =
            hub_cli(&config, &api, &["token", "create", "--name", name, "--role", role], Some(&admin_file)).await;
        assert_eq!(code, 0, "{err}");
        let file = env.path().join(format!("{name}.token"));
        std::fs::write(&file, token.trim()).unwrap();
        files.push(file);
    }
    let (alice, bob) = (&files[0], &files[1]);

    // The refusals, exactly.
    let (code, _, err) = hub_cli(&config, &api, &["quarantine", "list"], None).await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "holdfast-hub: no token: pass --token-file or set HOLDFAST_TOKEN (make one with holdfast-hub token create)\n"
    );
    let (code, _, err) =
        hub_cli(&config, &api, &["quarantine", "retry", "--plant", "plant-a", "--reason", "x"], Some(bob)).await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "holdfast-hub: the hub refused (403 forbidden): token \"bob\" has the role viewer; this needs operator\n"
    );
    let (code, _, err) = hub_cli(&config, &api, &["quarantine", "park", "--reason", "x"], Some(alice)).await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "holdfast-hub: the hub refused (400 selection_required): name the transactions: ids, plant, order_key or error_name\n"
    );

    // The list a viewer sees.
    let (code, out, err) =
        hub_cli(&config, &api, &["quarantine", "list", "--json", "--plant", "plant-a"], Some(bob)).await;
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = listed["quarantined"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![id(0).as_str(), id(2).as_str()], "t2 waits behind t1 and is not itself quarantined");

    // The cause is fixed in Odoo (the order exists now); the retry applies t1, then t2.
    let fix = json!({"source": "mes", "device": "line-3", "key": "fix", "order_key": "fix",
        "odoo": {"model": "mrp.production", "method": "create", "args": [{"name": "WH/MO/09999", "product_qty": 1.0}]}});
    let (status, answer_fix) = env.post(&http, &json!([fix])).await;
    assert_eq!(status, 202, "{answer_fix}");
    wait_for(WAIT, "the fix applied", || async { (odoo.applied(&env).await.len() == 1).then_some(()) }).await;
    let (code, out, err) = hub_cli(
        &config,
        &api,
        &["quarantine", "retry", "--plant", "plant-a", "--order-key", "mo:9999", "--reason", "WH/MO/09999 created"],
        Some(alice),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("1 transaction(s) retried\n"), "{out}");
    let applied = wait_for(WAIT, "t1 and t2 applied after the retry", || async {
        let applied = odoo.applied(&env).await;
        (applied.len() == 3).then_some(applied)
    })
    .await;
    let order: Vec<&str> = applied.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(order[1..], [id(0).as_str(), id(1).as_str()], "in order, t2 after t1");

    // Park t3: never applied, counted as done, the plant told.
    let (code, out, err) = hub_cli(
        &config,
        &api,
        &["quarantine", "park", "--id", &id(2), "--reason", "entered by hand in Odoo"],
        Some(alice),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("1 transaction(s) parked\n"), "{out}");
    let fate = wait_for(WAIT, "the plant to hear of the park", || async {
        let fate = env.get_json(&format!("http://{http}/v1/transactions/{}", id(2))).await;
        (fate["state"] == "parked").then_some(fate)
    })
    .await;
    assert!(
        fate["message"].as_str().unwrap().starts_with("parked by an operator after odoo.exceptions.UserError: "),
        "{fate}"
    );
    wait_for(WAIT, "everything done at the plant", || async {
        (env.agent_status(&http).await["hub"]["applied_seq"] == 4).then_some(())
    })
    .await;
    assert_eq!(odoo.applied(&env).await.len(), 3, "the parked one never reached Odoo");

    // Every act is in the audit trail, by token name.
    let db =
        rusqlite::Connection::open_with_flags(env.path().join("hub.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let acts: Vec<(String, String, String)> = db
        .prepare("SELECT actor, action, target FROM audit WHERE action IN ('api_token_created', 'transaction_retried', 'transaction_parked') ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let local = acts[0].0.clone();
    assert!(local.starts_with("local:"), "{acts:?}");
    assert_eq!(
        acts,
        vec![
            (local, "api_token_created".into(), "token:root".into()),
            ("token:root".into(), "api_token_created".into(), "token:alice".into()),
            ("token:root".into(), "api_token_created".into(), "token:bob".into()),
            ("token:alice".into(), "transaction_retried".into(), format!("plant-a/{}", id(0))),
            ("token:alice".into(), "transaction_parked".into(), format!("plant-a/{}", id(2))),
        ]
    );
    agent.stop().await;
    hub.stop().await;
}
