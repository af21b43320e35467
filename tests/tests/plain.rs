//! `plain` delivery against the double, with answers lost after Odoo committed (commit then
//! drop): a `create` with a declared `reference_search` check is found by its marker and not
//! made twice; an absolute `write` is simply sent again; a button with a declared `state_read`
//! check is found done and not pressed again; a call with no check is quarantined as
//! `holdfast.OutcomeUnknown` rather than risked twice. References resolve hub-side.

use std::time::Duration;

use holdfast_hub::config::{DeliveryMode, OdooConfig};
use holdfast_hub::odoo::OdooClient;
use serde_json::{Value, json};
use tests::harness::{Env, set_faults, set_odoo_mode, sim_stats, wait_for};
use tests::odoo_sim::SimConfig;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn lost_answers_are_checked_by_the_registry_before_anything_is_sent_twice() {
    let env = Env::new(&["plant-a"]);
    let odoo_sim = env.odoo_sim("odoo").await;
    let config = env.hub_config(&odoo_sim.url, "127.0.0.1:0", "", "");
    let checks = "limit_time_real = \"1s\"\n\
                  checks = [{ model = \"mrp.production\", method = \"create\", check = { reference_search = { field = \"origin\" } } },\
                            { model = \"mrp.production\", method = \"button_mark_done\", check = { state_read = { field = \"state\", value = \"done\" } } }]\n";
    set_odoo_mode(&config, "plain", checks);
    let hub = env.hub_from(&config).await;
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let http = agent.field("http");
    let sim = SimConfig::default();
    let odoo = OdooClient::new(&OdooConfig {
        url: odoo_sim.url.clone(),
        database: sim.database,
        login: sim.login,
        api_key: sim.api_key,
        api_key_file: None,
        mode: DeliveryMode::Plain,
        timeout: Duration::from_secs(10),
        probe_interval: Duration::from_secs(10),
        limit_time_real: Duration::from_secs(1),
        checks: Vec::new(),
    })
    .unwrap();
    // Only the call under test loses its answer (the hub's probe calls Odoo too).
    let drop_next = |only: &'static str| set_faults(&odoo_sim.url, json!({"commit_then_drop": 1, "drop_only": only}));
    let count = |name: &'static str| {
        let odoo = &odoo;
        async move {
            odoo.execute_kw("mrp.production", "search_count", json!([[["name", "=", name]]]), json!({})).await.unwrap()
        }
    };
    let mo1 =
        odoo.execute_kw("mrp.production", "search", json!([[["name", "=", "WH/MO/00001"]]]), json!({})).await.unwrap()
            [0]
        .clone();
    let applied_seq = |n: u64| {
        let (env, http) = (&env, http.clone());
        async move { (env.agent_status(&http).await["hub"]["applied_seq"] == n).then_some(()) }
    };
    let post = |t: Value| {
        let (env, http) = (&env, http.clone());
        async move {
            let (status, answer) = env.post(&http, &json!([t])).await;
            assert_eq!(status, 202, "{answer}");
            answer["accepted"][0]["id"].as_str().unwrap().to_owned()
        }
    };

    // A create whose answer is lost: found by its marker after limit_time_real, made once.
    drop_next("mrp.production.create").await;
    post(json!({"source": "mes", "device": "line-3", "key": "mo-6001", "order_key": "a",
                "odoo": {"model": "mrp.production", "method": "create", "args": [{"name": "WH/MO/06001"}]}}))
    .await;
    wait_for(WAIT, "the create applied", || applied_seq(1)).await;
    let dropped = || async { sim_stats(&odoo_sim.url).await["dropped"].clone() };
    assert_eq!(dropped().await, 1, "the create's answer was lost");
    assert_eq!(count("WH/MO/06001").await, 1, "made once");
    let origin = odoo
        .execute_kw(
            "mrp.production",
            "search_read",
            json!([[["name", "=", "WH/MO/06001"]]]),
            json!({"fields": ["origin"]}),
        )
        .await
        .unwrap();
    assert!(origin[0]["origin"].as_str().unwrap().starts_with("holdfast:"), "{origin}");

    // An absolute write whose answer is lost: sent again, the same result. A $ref resolves here.
    drop_next("mrp.production.write").await;
    post(json!({"source": "mes", "device": "line-3", "key": "q-1", "order_key": "a",
                "odoo": {"model": "mrp.production", "method": "write",
                         "args": [[mo1.clone()], {"qty_producing": 7.0}]}}))
    .await;
    wait_for(WAIT, "the write applied", || applied_seq(2)).await;
    assert_eq!(dropped().await, 2, "the write's answer was lost");
    post(json!({"source": "mes", "device": "line-3", "key": "q-2", "order_key": "a",
                "odoo": {"model": "mrp.production", "method": "write",
                         "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", "WH/MO/00002"]]}}], {"qty_producing": 3.0}]}}))
    .await;
    wait_for(WAIT, "the referenced write applied", || applied_seq(3)).await;
    let qty = odoo
        .execute_kw(
            "mrp.production",
            "search_read",
            json!([[["name", "in", ["WH/MO/00001", "WH/MO/00002"]]]]),
            json!({"fields": ["name", "qty_producing"]}),
        )
        .await
        .unwrap();
    assert_eq!(qty.as_array().unwrap().len(), 2, "{qty}");
    for row in qty.as_array().unwrap() {
        let want = if row["name"] == "WH/MO/00001" { 7.0 } else { 3.0 };
        assert_eq!(row["qty_producing"], want, "{qty}");
    }

    // A button whose answer is lost: the order's state is read, it landed, it is not pressed again.
    drop_next("mrp.production.button_mark_done").await;
    post(json!({"source": "mes", "device": "line-3", "key": "done-1", "order_key": "c",
                "odoo": {"model": "mrp.production", "method": "button_mark_done", "args": [[mo1.clone()]],
                         "kwargs": {"context": {"skip_backorder": true, "skip_consumption": true}}}}))
    .await;
    wait_for(WAIT, "the button applied", || applied_seq(4)).await;
    assert_eq!(dropped().await, 3, "the button's answer was lost");
    let calls = env.get_json(&format!("{}/holdfast-sim/applied", odoo_sim.url)).await;
    let pressed = calls["calls"].as_array().unwrap().iter().filter(|c| c["method"] == "button_mark_done").count();
    assert_eq!(pressed, 1, "pressed once: {calls}");

    // No check for a write with x2many commands: quarantined, never sent twice.
    drop_next("mrp.production.write").await;
    let risky = post(json!({"source": "mes", "device": "line-3", "key": "lines-1", "order_key": "b",
                            "odoo": {"model": "mrp.production", "method": "write",
                                     "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", "WH/MO/00002"]]}}],
                                              {"move_raw_ids": [[0, 0, {"product_id": 1}]]}]}}))
    .await;
    let fate = wait_for(WAIT, "the plant to hear of the unknown outcome", || {
        let (env, http, id) = (&env, http.clone(), risky.clone());
        async move {
            let fate = env.get_json(&format!("http://{http}/v1/transactions/{id}")).await;
            (fate["state"] == "quarantined").then_some(fate)
        }
    })
    .await;
    assert!(fate["message"].as_str().unwrap().starts_with("holdfast.OutcomeUnknown: no answer from Odoo ("), "{fate}");
    agent.stop().await;
    hub.stop().await;
}
