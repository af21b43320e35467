//! Wizards, as they come after an outage: inventory counts taken while Odoo was away, applied
//! after a receipt moved the same stock. Odoo answers each with its `stock.inventory.conflict`
//! wizard instead of finishing; the hub quarantines each as `holdfast.Wizard` naming the
//! wizard, blocking only its own key, shown at the plant; an operator parks them all by error
//! name in one act, audited, and what waited behind them is applied. In both delivery modes:
//! the inbox rolls the wizard's call back itself, plain delivery recognises the answer at the hub.

use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, hub_cli, set_odoo_mode, wait_for};

const WAIT: Duration = Duration::from_secs(90);
const BARCODES: [&str; 3] = ["5901234123457", "4006381333931", "8712345678906"];

fn product(barcode: &str) -> Value {
    json!({"$ref": {"model": "product.product", "domain": [["barcode", "=", barcode]]}})
}

fn txn(key: &str, order_key: &str, model: &str, method: &str, args: Value, context: Value) -> Value {
    json!({"source": "scanner", "device": "gun-7", "key": key, "order_key": order_key,
           "odoo": {"model": model, "method": method, "args": args, "kwargs": {"context": context}}})
}

fn count(key: &str, barcode: &str, qty: f64) -> Value {
    let values = json!([{"product_id": product(barcode), "location_id": {"$xmlid": "stock.stock_location_stock"}, "inventory_quantity": qty}]);
    txn(key, &format!("count:{barcode}"), "stock.quant", "create", values, json!({"inventory_mode": true}))
}

fn apply_count(key: &str, barcode: &str) -> Value {
    let quant = json!({"$ref": {"model": "stock.quant", "domain": [["product_id.barcode", "=", barcode]]}});
    txn(key, &format!("count:{barcode}"), "stock.quant", "action_apply_inventory", json!([[quant]]), json!({}))
}

async fn run(mode: &str) {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let config = env.hub_config(&odoo.url, "127.0.0.1:0", "", "");
    set_odoo_mode(&config, mode, "");
    let hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let http = agent.field("http");
    let applied_seq = |n: u64| {
        let (env, http) = (&env, http.clone());
        async move { (env.agent_status(&http).await["hub"]["applied_seq"] == n).then_some(()) }
    };
    let post = |batch: Value| {
        let (env, http) = (&env, http.clone());
        async move {
            let (status, answer) = env.post(&http, &batch).await;
            assert_eq!(status, 202, "{answer}");
            answer["accepted"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };

    // The counts are taken; then a receipt brings 5 of each product into the counted location.
    post(json!(BARCODES.iter().enumerate().map(|(i, b)| count(&format!("c{i}"), b, 12.0)).collect::<Vec<_>>())).await;
    wait_for(WAIT, "the counts recorded", || applied_seq(3)).await;
    let mut receipt: Vec<Value> = BARCODES
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mv = json!({"$ref": {"model": "stock.move", "domain": [["picking_id.name", "=", "WH/IN/00001"], ["product_id.barcode", "=", b]]}});
            txn(&format!("r{i}"), "picking:WH/IN/00001", "stock.move", "write", json!([[mv], {"quantity": 5.0, "picked": true}]), json!({}))
        })
        .collect();
    let picking = json!({"$ref": {"model": "stock.picking", "domain": [["name", "=", "WH/IN/00001"]]}});
    receipt.push(txn(
        "validate",
        "picking:WH/IN/00001",
        "stock.picking",
        "button_validate",
        json!([[picking]]),
        json!({"skip_backorder": true}),
    ));
    post(json!(receipt)).await;
    wait_for(WAIT, "the receipt validated", || applied_seq(7)).await;

    // Now the counts are applied: each is a conflict wizard. Behind the first waits a recount.
    let mut late: Vec<Value> = BARCODES.iter().enumerate().map(|(i, b)| apply_count(&format!("a{i}"), b)).collect();
    late.push(count("recount", BARCODES[0], 17.0));
    let ids = post(json!(late)).await;
    let status = wait_for(WAIT, "three wizards quarantined, shown at the plant", || async {
        let status = env.agent_status(&http).await;
        (status["quarantined"].as_array()?.len() == 3).then_some(status)
    })
    .await;
    let seqs: Vec<&Value> = status["quarantined"].as_array().unwrap().iter().map(|q| &q["seq"]).collect();
    assert_eq!(seqs, vec![8, 9, 10], "{status}");
    for q in status["quarantined"].as_array().unwrap() {
        assert_eq!(
            q["message"],
            "holdfast.Wizard: Odoo asks a person to decide in the stock.inventory.conflict wizard (Conflict in Inventory Adjustment)",
            "{status}"
        );
    }
    let quants = odoo_quants(&env, &odoo.url).await;
    assert_eq!(quants, vec![5.0, 5.0, 5.0], "no count was applied over the receipt");

    // One act parks them all, by error name; the recount behind the first then applies.
    let (_, token) = env.bootstrap_admin(&config, &api).await;
    let args = ["quarantine", "park", "--plant", "plant-a", "--error-name", "holdfast.Wizard", "--reason", "recounted"];
    let (code, out, err) = hub_cli(&config, &api, &args, Some(&token)).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("3 transaction(s) parked\n"), "{out}");
    wait_for(WAIT, "everything done at the plant", || applied_seq(11)).await;
    let status = env.agent_status(&http).await;
    let kinds: Vec<&Value> = status["quarantined"].as_array().unwrap().iter().map(|q| &q["kind"]).collect();
    assert_eq!(kinds, vec!["parked"; 3], "{status}");
    for id in &ids[..3] {
        let fate = env.get_json(&format!("http://{http}/v1/transactions/{id}")).await;
        assert_eq!(fate["state"], "parked", "{fate}");
    }
    let quant = odoo_quant_record(&env, &odoo.url, BARCODES[0]).await;
    assert_eq!(quant["inventory_quantity"], json!(17.0), "the recount was applied after the park");
    assert_eq!(quant["inventory_quantity_set"], json!(true));
    let db =
        rusqlite::Connection::open_with_flags(env.path().join("hub.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let parked: i64 = db
        .query_row("SELECT count(*) FROM audit WHERE action = 'transaction_parked' AND actor = 'token:root'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(parked, 3);
    agent.stop().await;
    hub.stop().await;
}

/// The on-hand quantities of the three products' quants at WH/Stock, read from the double.
async fn odoo_quants(env: &Env, url: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for b in BARCODES {
        out.push(odoo_quant_record(env, url, b).await["quantity"].as_f64().unwrap());
    }
    out
}

async fn odoo_quant_record(env: &Env, url: &str, barcode: &str) -> Value {
    let sim = tests::odoo_sim::SimConfig::default();
    let body = json!({"jsonrpc": "2.0", "method": "call", "id": 1, "params": {"service": "object", "method": "execute_kw",
        "args": [sim.database, tests::odoo_sim::HUB_UID, sim.api_key, "stock.quant", "search_read", [[["product_id.barcode", "=", barcode]]], {}]}});
    let answer: Value = env.http.post(format!("{url}/jsonrpc")).json(&body).send().await.unwrap().json().await.unwrap();
    answer["result"][0].clone()
}

#[tokio::test]
async fn conflict_wizards_after_an_outage_are_quarantined_by_name_and_parked_in_one_act_inbox() {
    run("inbox").await;
}

#[tokio::test]
async fn conflict_wizards_after_an_outage_are_quarantined_by_name_and_parked_in_one_act_plain() {
    run("plain").await;
}
