//! The API against its own OpenAPI document, with schemathesis (PyPI; `.ci/run` installs it):
//! generated requests to every operation, as an operator (not an admin), a bounded number of
//! examples each. Every response must match the document, and no request may get a 5xx.

use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, api_token, wait_for};

#[tokio::test]
async fn every_response_matches_the_openapi_document_and_nothing_gets_a_5xx() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let config = env.hub_config(&odoo.url, "127.0.0.1:0", "", "");
    let hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    // Something to read: a plant with applied transactions.
    let batch: Vec<Value> = (0..5)
        .map(|i| {
            json!({"source": "mes", "device": "line-1", "key": format!("c-{i}"), "order_key": "line-1",
                        "odoo": {"model": "res.users", "method": "context_get", "args": []}})
        })
        .collect();
    let (status, answer) = env.post(&agent.field("http"), &Value::Array(batch)).await;
    assert_eq!(status, 202, "{answer}");
    let http = agent.field("http");
    wait_for(Duration::from_secs(60), "applied", || async {
        (env.agent_status(&http).await["hub"]["applied_seq"] == 5).then_some(())
    })
    .await;
    let (admin, _) = env.bootstrap_admin(&config, &api).await;
    let operator = api_token(&api, &admin, "contract", "operator").await;

    let report = env.path().join("schemathesis");
    let out = tokio::process::Command::new("schemathesis")
        .args(["run", &format!("http://{api}/api/v1/openapi.json"), "--url", &format!("http://{api}")])
        .args(["--header", &format!("Authorization: Bearer {operator}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--max-examples", "15", "--seed", "4711", "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .arg("--report-dir")
        .arg(&report)
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("schemathesis runs (pip install schemathesis; .ci/run does)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{text}\n{}", hub.log_text());
    // It tested every operation of the document.
    let doc: Value = reqwest::get(format!("http://{api}/api/v1/openapi.json")).await.unwrap().json().await.unwrap();
    let operations: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert!(
        text.contains(&format!("{operations} selected")) || text.contains(&format!("{operations} total")),
        "{text}"
    );
    agent.stop().await;
    hub.stop().await;
}
