//! The whole path with real processes on loopback: producer → agent journal → QUIC → hub ledger
//! → applier → the Odoo double.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, set_faults, sim_stats, wait_for};

const APPLY_TIMEOUT: Duration = Duration::from_secs(90);

/// The n-th transaction of the scenario: every 4th keyed, every 5th a `$ref` write to a
/// manufacturing order by name, the rest a harmless call.
fn transaction(n: usize) -> Value {
    let mut t = if n.is_multiple_of(5) {
        json!({"source": "mes", "device": "line-3", "occurred_at": "2026-11-26T08:15:00Z",
               "odoo": {"model": "mrp.production", "method": "write",
                        "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", format!("WH/MO/{:05}", n % 150 + 1)]]}}], {"qty_producing": n as f64}]}})
    } else {
        json!({"source": "barcode", "device": "dock-1", "odoo": {"model": "res.users", "method": "context_get", "args": []}})
    };
    if n.is_multiple_of(4) {
        t["key"] = json!(format!("txn-{n}"));
    }
    t
}

/// Posts transactions `range` in requests of `per_request`; returns id → seq.
async fn post_range(
    env: &Env,
    agent: &str,
    range: std::ops::Range<usize>,
    per_request: usize,
) -> BTreeMap<String, u64> {
    let mut ids = BTreeMap::new();
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(per_request) {
        let body = Value::Array(chunk.iter().map(|n| transaction(*n)).collect());
        let (status, answer) = env.post(agent, &body).await;
        assert_eq!(status, 202, "{answer}");
        let accepted = answer["accepted"].as_array().expect("accepted list");
        assert_eq!(accepted.len(), chunk.len());
        for a in accepted {
            assert_eq!(a["duplicate"], false);
            ids.insert(a["id"].as_str().unwrap().to_owned(), a["seq"].as_u64().unwrap());
        }
    }
    ids
}

/// Resends every keyed transaction of `range`: each must come back as the same id and seq.
async fn resend_keyed(env: &Env, agent: &str, range: std::ops::Range<usize>, ids: &BTreeMap<String, u64>) -> usize {
    let keyed: Vec<Value> = range.filter(|n| n.is_multiple_of(4)).map(transaction).collect();
    for chunk in keyed.chunks(50) {
        let (status, answer) = env.post(agent, &Value::Array(chunk.to_vec())).await;
        assert_eq!(status, 202, "{answer}");
        for a in answer["accepted"].as_array().unwrap() {
            assert_eq!(a["duplicate"], true, "{a}");
            let id = a["id"].as_str().unwrap();
            assert_eq!(ids.get(id), a["seq"].as_u64().as_ref(), "a resend answers the first sequence");
        }
    }
    keyed.len()
}

/// Checks the double's record against what the agent acknowledged: every transaction exactly
/// once, and in sequence order (the default ordering key is the plant).
fn check_applied_once_in_order(applied: &[Value], ids: &BTreeMap<String, u64>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for a in applied {
        *seen.entry(a["id"].as_str().unwrap()).or_default() += 1;
    }
    let doubles: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubles.is_empty(), "applied more than once: {doubles:?}");
    let missing: Vec<_> = ids.keys().filter(|id| !seen.contains_key(id.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged transactions never applied, such as {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(applied.len(), ids.len());
    let seqs: Vec<u64> = applied.iter().map(|a| ids[a["id"].as_str().unwrap()]).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "applied out of sequence order");
    for a in applied {
        assert_eq!(a["plant"], "plant-a");
        if a["model"] == "mrp.production" {
            assert!(a["args"][0][0].is_i64(), "the $ref was resolved to a record id: {a}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_transactions_reach_odoo_once_each_in_order() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let http = agent.field("http");

    let ids = post_range(&env, &http, 0..2000, 40).await;
    assert_eq!(ids.len(), 2000);
    let resent = resend_keyed(&env, &http, 0..2000, &ids).await;
    assert_eq!(resent, 500);
    let last_seq = *ids.values().max().unwrap();
    assert_eq!(last_seq, 2000, "resends took no new sequence");

    wait_for(APPLY_TIMEOUT, "applied_seq to reach the last sequence", || async {
        let s = env.agent_status(&http).await;
        (s["hub"]["applied_seq"] == last_seq).then_some(())
    })
    .await;
    check_applied_once_in_order(&odoo.applied(&env).await, &ids);

    let status = env.agent_status(&http).await;
    assert_eq!(status["plant"], "plant-a");
    assert_eq!(status["mode"], "online");
    assert_eq!(status["backlog"], 0);
    assert_eq!(status["hub"]["connected"], true);
    assert_eq!(status["hub"]["stored_seq"], last_seq);
    assert_eq!(status["ingested"], json!({"http": 2000}), "resends are not counted again");

    let plants = env.get_json(&format!("http://{}/api/v1/plants", hub.field("api"))).await;
    let p = &plants["plants"][0];
    assert_eq!((&p["plant"], &p["connected"], &p["mode"]), (&json!("plant-a"), &json!(true), &json!("online")));
    assert_eq!((p["stored_seq"].as_u64(), p["applied_seq"].as_u64()), (Some(last_seq), Some(last_seq)));

    let one = ids.iter().next().unwrap();
    let fate = env.get_json(&format!("http://{http}/v1/transactions/{}", one.0)).await;
    assert_eq!(fate, json!({"id": one.0, "seq": one.1, "state": "applied"}));

    agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_taken_while_the_hub_is_down_are_applied_after_it_returns() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let sync = hub.field("sync");
    let agent = env.agent("plant-a", &sync).await;
    let http = agent.field("http");

    let mut ids = post_range(&env, &http, 0..500, 25).await;
    wait_for(APPLY_TIMEOUT, "the first 500 to be stored", || async {
        (env.agent_status(&http).await["hub"]["stored_seq"] == 500).then_some(())
    })
    .await;

    hub.stop().await;
    wait_for(APPLY_TIMEOUT, "the agent to notice the hub is gone", || async {
        (env.agent_status(&http).await["mode"] == "offline").then_some(())
    })
    .await;

    // The floor keeps working: every transaction is still acknowledged after its commit.
    ids.extend(post_range(&env, &http, 500..1500, 25).await);
    let resent = resend_keyed(&env, &http, 0..1500, &ids).await;
    assert_eq!(resent, 375);
    let offline = env.agent_status(&http).await;
    assert_eq!(offline["hub"]["connected"], false);
    assert_eq!(offline["journal"]["last_seq"], 1500);
    assert_eq!(offline["unsent"], 1000, "what came in while the hub was down is journaled, not sent");
    let applied_while_down = odoo.applied(&env).await.len();
    assert!(applied_while_down <= 500);

    // The hub comes back on the same address with its ledger.
    let hub = env.hub(&odoo.url, &sync).await;
    ids.extend(post_range(&env, &http, 1500..2000, 25).await);
    wait_for(APPLY_TIMEOUT, "applied_seq to reach 2000 after the hub returned", || async {
        (env.agent_status(&http).await["hub"]["applied_seq"] == 2000).then_some(())
    })
    .await;
    check_applied_once_in_order(&odoo.applied(&env).await, &ids);
    agent.stop().await;
    hub.stop().await;
}

/// A hub restored from a backup taken mid-run (it knew 300 of 600 transactions). With `compact`,
/// the agent, stopped meanwhile, had compacted its oldest applied rows: it says so, and the hub
/// records the gap (audited, with an alarm). Either way the agent resends what it still holds,
/// the ledger catches up, and Odoo's inbox keeps every transaction applied exactly once.
async fn restored_hub(compact: bool) {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let sync = hub.field("sync");
    let agent = env.agent("plant-a", &sync).await;
    let http = agent.field("http");
    let hub_cfg = env.path().join("hub.toml");
    let hub_cli = |args: &[&str]| {
        let out = std::process::Command::new(tests::harness::bin("holdfast-hub")).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "holdfast-hub {args:?}: {text}");
        text
    };

    let mut ids = post_range(&env, &http, 0..300, 30).await;
    wait_for(APPLY_TIMEOUT, "the first 300 applied", || async {
        (env.agent_status(&http).await["hub"]["applied_seq"] == 300).then_some(())
    })
    .await;
    let backup = env.path().join("hub-backup.db");
    let said = hub_cli(&["backup", "--config", hub_cfg.to_str().unwrap(), "--to", backup.to_str().unwrap()]);
    assert!(said.contains("1 plants, 300 ledger rows"), "{said}");

    ids.extend(post_range(&env, &http, 300..600, 30).await);
    wait_for(APPLY_TIMEOUT, "all 600 applied before the hub is lost", || async {
        (env.agent_status(&http).await["hub"]["applied_seq"] == 600).then_some(())
    })
    .await;
    hub.stop().await;
    let said = hub_cli(&["restore", "--config", hub_cfg.to_str().unwrap(), "--from", backup.to_str().unwrap()]);
    assert!(said.contains("300 ledger rows"), "{said}");

    let mut agent = Some(agent);
    let mut compacted_through = 300;
    if compact {
        // Compaction as the agent does it after retention: rows the hub reported applied and
        // received before a moment (here, the batch holding seq 451).
        agent.take().unwrap().stop().await;
        let path = env.path().join("journal-plant-a.db");
        let at: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT received_at_ms FROM txn WHERE seq = 451", [], |r| r.get(0))
            .unwrap();
        let journal = holdfast_agent::journal::Journal::open(&path, 0, holdfast_agent::journal::Limits::NONE).unwrap();
        assert!(journal.compact(at).await.unwrap() > 300);
        drop(journal);
        compacted_through = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT MIN(seq) - 1 FROM txn", [], |r| r.get(0))
            .unwrap();
        assert!((301..=450).contains(&compacted_through), "{compacted_through}");
    }

    // The restored hub knows 300; the agent holds the rest, or what compaction left of it.
    let hub = env.hub(&odoo.url, &sync).await;
    let agent = match agent {
        Some(a) => a,
        None => env.agent("plant-a", &sync).await,
    };
    let http = agent.field("http");
    let api = hub.field("api");
    wait_for(APPLY_TIMEOUT, "the restored hub to stand at 600 again", || async {
        let plants = env.get_json(&format!("http://{api}/api/v1/plants")).await;
        let p = &plants["plants"][0];
        (p["stored_seq"] == 600 && p["applied_seq"] == 600).then_some(())
    })
    .await;
    ids.extend(post_range(&env, &http, 600..630, 30).await);
    wait_for(APPLY_TIMEOUT, "new transactions after the restore", || async {
        (env.agent_status(&http).await["hub"]["applied_seq"] == 630).then_some(())
    })
    .await;
    check_applied_once_in_order(&odoo.applied(&env).await, &ids);
    let status = env.get_json(&format!("http://{api}/api/v1/status")).await;
    let alarms = status["alarms"].as_array().unwrap();
    assert_eq!(alarms.iter().any(|a| a["name"] == "journal_gap:plant-a"), compact, "{status}");
    agent.stop().await;
    hub.stop().await;
    let said = hub_cli(&["audit", "verify", "--config", hub_cfg.to_str().unwrap()]);
    assert!(said.contains("audit trail intact"), "{said}");
    let db = rusqlite::Connection::open(env.path().join("hub.db")).unwrap();
    let count = |sql: &str| -> u64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM audit WHERE action = 'store_restored'"), 1);
    let gaps: Vec<String> = db
        .prepare("SELECT target FROM audit WHERE action = 'journal_gap_compacted'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    if compact {
        assert_eq!(gaps.len(), 1);
        assert!(gaps[0].ends_with(&format!("/301..={compacted_through}")), "{gaps:?}");
        assert_eq!(
            count("SELECT COUNT(*) FROM ledger WHERE plant = 'plant-a'"),
            630 - (compacted_through - 300),
            "the ledger lacks exactly the compacted stretch"
        );
    } else {
        assert!(gaps.is_empty(), "{gaps:?}");
    }
}

#[tokio::test]
async fn a_hub_restored_from_a_mid_run_backup_catches_up_without_applying_twice() {
    restored_hub(false).await;
}

#[tokio::test]
async fn a_restored_hub_records_what_the_gateway_had_compacted_as_an_audited_gap_and_goes_on() {
    restored_hub(true).await;
}

/// Odoo refuses a transaction: the hub quarantines it (blocking only its ordering key) and tells
/// the plant, whose status and `GET /v1/transactions/{id}` show Odoo's message.
#[tokio::test]
async fn a_quarantined_transaction_shows_at_the_plant_with_odoos_message() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let http = agent.field("http");
    let refused = json!({"source": "mes", "device": "line-3", "order_key": "mo:WH/MO/09999",
        "odoo": {"model": "mrp.production", "method": "write",
                 "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", "WH/MO/09999"]]}}], {"qty_producing": 1.0}]}});
    let (status, answer) = env.post(&http, &json!([transaction(1), refused, transaction(2)])).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["accepted"][1]["id"].as_str().unwrap().to_owned();
    let fate = wait_for(APPLY_TIMEOUT, "the plant to hear of the quarantine", || async {
        let fate = env.get_json(&format!("http://{http}/v1/transactions/{id}")).await;
        (fate["state"] == "quarantined").then_some(fate)
    })
    .await;
    assert_eq!(fate["seq"], 2);
    assert!(fate["message"].as_str().unwrap().starts_with("odoo.exceptions.UserError: "), "{fate}");
    let status = env.agent_status(&http).await;
    assert_eq!(status["quarantined"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["quarantined"][0]["seq"], 2);
    // The others, on the plant's own ordering key, were applied.
    wait_for(APPLY_TIMEOUT, "the other two applied", || async { (odoo.applied(&env).await.len() == 2).then_some(()) })
        .await;
    agent.stop().await;
    hub.stop().await;
}

/// A record created during the outage is used by a later transaction: `{"$result": "<key>"}`
/// names what the keyed `create` of the same device returned, resolved in Odoo at apply time.
#[tokio::test]
async fn a_later_transaction_uses_what_an_earlier_one_created_by_its_key() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let http = agent.field("http");
    let create = json!({"source": "mes", "device": "line-3", "key": "new-mo", "order_key": "mo:new",
        "odoo": {"model": "mrp.production", "method": "create", "args": [{"name": "WH/MO/07777", "product_qty": 5.0}]}});
    let progress = json!({"source": "mes", "device": "line-3", "key": "new-mo-progress-1", "order_key": "mo:new",
        "odoo": {"model": "mrp.production", "method": "write", "args": [[{"$result": "new-mo"}], {"qty_producing": 2.0}]}});
    let (status, answer) = env.post(&http, &json!([create, progress])).await;
    assert_eq!(status, 202, "{answer}");
    let applied = wait_for(APPLY_TIMEOUT, "both applied", || async {
        let applied = odoo.applied(&env).await;
        (applied.len() == 2).then_some(applied)
    })
    .await;
    assert_eq!(applied[0]["method"], "create");
    let created = applied[0]["result"].clone();
    assert!(created.is_i64(), "{applied:?}");
    assert_eq!(applied[1]["args"][0][0], created, "the write went to the record the create made: {applied:?}");
    agent.stop().await;
    hub.stop().await;
}

/// Odoo commits a batch and the answer is lost (commit then drop), three times: the hub cannot
/// know the outcome and sends the batch again; the inbox answers `duplicate` for what it
/// recorded, so every transaction is in Odoo exactly once (I1, I2).
#[tokio::test]
async fn lost_answers_after_commits_apply_nothing_twice_in_inbox_mode() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    set_faults(&odoo.url, json!({"commit_then_drop": 3, "drop_only": "holdfast.inbox.apply_batch"})).await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let http = agent.field("http");
    for chunk in (1..=60).collect::<Vec<usize>>().chunks(20) {
        let batch: Vec<Value> = chunk.iter().map(|n| transaction(*n)).collect();
        let (status, answer) = env.post(&http, &json!(batch)).await;
        assert_eq!(status, 202, "{answer}");
    }
    wait_for(APPLY_TIMEOUT, "all 60 applied at the plant", || async {
        (env.agent_status(&http).await["hub"]["applied_seq"] == 60).then_some(())
    })
    .await;
    let applied = odoo.applied(&env).await;
    let mut ids: Vec<&str> = applied.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 60, "each once");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 60, "no id twice");
    let stats = sim_stats(&odoo.url).await;
    assert_eq!(stats["dropped"], 3, "{stats}");
    agent.stop().await;
    hub.stop().await;
}
