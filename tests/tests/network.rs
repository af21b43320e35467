//! The journal reaches the hub exactly once and in order whatever the network or either
//! process does: a lossy, reordering, duplicating link cut again and again (through the
//! project's UDP fault proxy), and SIGKILLs of the hub and the agent mid-upload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, Proc, wait_for};
use tests::netfault::{Faults, UdpProxy};

/// Both ends declare a silent link dead after this (the default is 30 s).
const IDLE: &str = "2s";
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(180);

fn txn(n: u64) -> Value {
    json!({"source": "mes", "device": "line-3",
           "odoo": {"model": "res.users", "method": "context_get", "args": [], "kwargs": {"n": n}}})
}

/// Posts transactions `from..to` in arrays of 1,000.
async fn post(env: &Env, http: &str, from: u64, to: u64) {
    let mut n = from;
    while n < to {
        let end = (n + 1000).min(to);
        let (status, answer) = env.post(http, &Value::Array((n..end).map(txn).collect())).await;
        assert_eq!(status, 202, "{answer}");
        n = end;
    }
}

/// An agent config for plant-a dialling `hub` with the short idle timeout.
fn agent_config(env: &Env, hub: &str) -> PathBuf {
    let path = env.agent_config("plant-a", hub);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("server_name = \"localhost\"", &format!("server_name = \"localhost\"\nidle_timeout = \"{IDLE}\""));
    std::fs::write(&path, text).unwrap();
    path
}

async fn hub(env: &Env, odoo: &str, sync: &str) -> Proc {
    env.hub_with(odoo, sync, &format!("idle_timeout = \"{IDLE}\""), "").await
}

async fn stored(env: &Env, http: &str) -> u64 {
    env.agent_status(http).await["hub"]["stored_seq"].as_u64().unwrap_or(0)
}

/// The hub's ledger holds exactly the agent's journal: every sequence once, in order, with the
/// same id, body and checksum. Returns how many rows.
fn assert_ledger_is_journal(dir: &Path) -> u64 {
    type Row = (u64, Vec<u8>, Vec<u8>, u32);
    let read = |file: &str, sql: &str| -> Vec<Row> {
        let db =
            rusqlite::Connection::open_with_flags(dir.join(file), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        db.prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let journal = read("journal-plant-a.db", "SELECT seq, id, body, crc FROM txn ORDER BY seq");
    let ledger = read("hub.db", "SELECT seq, id, body, crc FROM ledger WHERE plant = 'plant-a' ORDER BY lsn");
    assert_eq!(ledger.len(), journal.len(), "rows in the ledger and in the journal");
    let first_difference = ledger.iter().zip(&journal).position(|(l, j)| l != j);
    assert_eq!(first_difference, None, "the ledger differs from the journal");
    let mut ids: Vec<&Vec<u8>> = ledger.iter().map(|r| &r.1).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), ledger.len(), "every id once");
    ledger.len() as u64
}

#[tokio::test]
async fn a_hundred_thousand_transactions_cross_a_lossy_reordering_link_cut_five_times() {
    const TOTAL: u64 = 100_000;
    const PHASES: u64 = 5;
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = hub(&env, &odoo.url, "127.0.0.1:0").await;
    let faults = Faults { drop: 0.10, duplicate: 0.02, delay_max: Duration::from_millis(4), cut: false };
    let proxy = UdpProxy::start(hub.field("sync").parse().unwrap(), faults, 0x5eed).await;
    let agent = env.agent_from("plant-a", &agent_config(&env, &proxy.addr.to_string())).await;
    let http = agent.field("http");

    let per_phase = TOTAL / PHASES;
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    for phase in 0..PHASES {
        let (from, to) = (phase * per_phase, (phase + 1) * per_phase);
        post(&env, &http, from, to).await;
        // Cut mid-upload: as soon as the hub has acknowledged something of this phase.
        let at = wait_for(UPLOAD_TIMEOUT, "the upload of this phase to start", || async {
            let s = stored(&env, &http).await;
            (s > from).then_some(s)
        })
        .await;
        proxy.set(|f| f.cut = true);
        assert!(at < to, "phase {phase}: the cut came after the whole phase was uploaded ({at})");
        // Held until the agent has declared the link dead (its idle timeout), then lifted.
        wait_for(UPLOAD_TIMEOUT, "the agent to notice the cut", || async {
            (env.agent_status(&http).await["hub"]["connected"] == false).then_some(())
        })
        .await;
        proxy.set(|f| f.cut = false);
        println!("phase {phase} done at {:?}", started.elapsed());
    }
    wait_for(UPLOAD_TIMEOUT, "all 100,000 at the hub", || async { (stored(&env, &http).await == TOTAL).then_some(()) })
        .await;
    agent.stop().await;
    let log = hub.log_text();
    hub.stop().await;

    assert_eq!(assert_ledger_is_journal(env.path()), TOTAL);
    let connections = log.lines().filter(|l| l.contains("agent connected")).count();
    let resumes_after_zero = log
        .lines()
        .filter(|l| l.contains("session resumed"))
        .filter_map(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("stored_seq=")))
        .filter(|v| v.parse::<u64>().is_ok_and(|v| v > 0))
        .count();
    use std::sync::atomic::Ordering::Relaxed;
    let c = &proxy.counts;
    println!(
        "{connections} connections, {resumes_after_zero} resumed from a non-zero point; proxy: {} forwarded, {} dropped, {} duplicated, {} cut",
        c.forwarded.load(Relaxed),
        c.dropped.load(Relaxed),
        c.duplicated.load(Relaxed),
        c.cut.load(Relaxed)
    );
    assert!(connections > PHASES as usize, "{connections} connections for {PHASES} cuts");
    assert!(resumes_after_zero >= PHASES as usize, "{resumes_after_zero} resumes from a non-zero point");
    assert!(c.dropped.load(Relaxed) > 0 && c.duplicated.load(Relaxed) > 0 && c.cut.load(Relaxed) > 0);
}

#[tokio::test]
async fn nothing_is_lost_or_stored_twice_when_the_hub_and_the_agent_are_killed_mid_upload() {
    const KILLS: u64 = 10;
    const PER_ROUND: u64 = 3_000;
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let mut hub_proc = hub(&env, &odoo.url, "127.0.0.1:0").await;
    let sync = hub_proc.field("sync");
    let config = agent_config(&env, &sync);
    let mut agent = env.agent_from("plant-a", &config).await;
    let mut posted = 0;
    let (mut hub_kills, mut agent_kills) = (0, 0);
    for round in 0..2 * KILLS {
        let http = agent.field("http");
        post(&env, &http, posted, posted + PER_ROUND).await;
        let from = posted;
        posted += PER_ROUND;
        wait_for(UPLOAD_TIMEOUT, "the upload of this round to start", || async {
            (stored(&env, &http).await > from).then_some(())
        })
        .await;
        if round % 2 == 0 {
            hub_proc.kill().await;
            hub_kills += 1;
            hub_proc = hub(&env, &odoo.url, &sync).await;
        } else {
            agent.kill().await;
            agent_kills += 1;
            agent = env.agent_from("plant-a", &config).await;
        }
    }
    let http = agent.field("http");
    wait_for(UPLOAD_TIMEOUT, "everything at the hub", || async { (stored(&env, &http).await == posted).then_some(()) })
        .await;
    agent.stop().await;
    hub_proc.stop().await;
    assert_eq!((hub_kills, agent_kills), (KILLS, KILLS));
    assert_eq!(assert_ledger_is_journal(env.path()), posted);
}

#[tokio::test]
async fn an_upload_cap_holds_the_upload_to_its_rate() {
    const CAP: u64 = 128 * 1024;
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = hub(&env, &odoo.url, "127.0.0.1:0").await;
    let config = agent_config(&env, &hub.field("sync"));
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("idle_timeout = \"{IDLE}\""),
        &format!("idle_timeout = \"{IDLE}\"\nupload_bytes_per_s = \"128 KiB\""),
    );
    std::fs::write(&config, text).unwrap();
    // The backlog is journaled before the agent starts, then uploaded under the cap.
    let bodies: u64 = {
        let journal = holdfast_agent::journal::Journal::open(
            &env.path().join("journal-plant-a.db"),
            0,
            holdfast_agent::journal::Limits::NONE,
        )
        .unwrap();
        let pad = "x".repeat(200);
        let entries: Vec<holdfast_agent::journal::Entry> = (0..2000u64)
            .map(|n| {
                let t = holdfast_protocol::Transaction {
                    id: uuid::Uuid::now_v7(),
                    plant: "plant-a".into(),
                    source: holdfast_protocol::SourceKind::Mes,
                    device: "line-3".into(),
                    key: None,
                    order_key: "plant-a".into(),
                    received_at_ms: 1,
                    occurred_at_ms: None,
                    op: holdfast_protocol::Operation::OdooCall(holdfast_protocol::OdooCall {
                        model: "res.users".into(),
                        method: "context_get".into(),
                        args: json!([]),
                        kwargs: [("pad".to_owned(), json!(format!("{n}{pad}")))].into_iter().collect(),
                    }),
                };
                holdfast_agent::journal::Entry::of(&t, t.encode_body().unwrap())
            })
            .collect();
        let bytes = entries.iter().map(|e| e.body.len() as u64).sum();
        journal.append(entries).await.unwrap();
        bytes
    };
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let agent = env.agent_from("plant-a", &config).await;
    let http = agent.field("http");
    wait_for(UPLOAD_TIMEOUT, "the capped upload to finish", || async {
        (stored(&env, &http).await == 2000).then_some(())
    })
    .await;
    let took = started.elapsed();
    // The bucket starts full (one second's worth); everything beyond it went at the cap, and the
    // frames carry more than the bodies, so this is a floor.
    let floor = Duration::from_secs_f64((bodies - CAP) as f64 / CAP as f64);
    println!("{bodies} body bytes in {took:?} under a {CAP} B/s cap (floor {floor:?})");
    assert!(took >= floor, "{bodies} body bytes went in {took:?}, faster than the cap allows ({floor:?})");
    agent.stop().await;
    hub.stop().await;
    assert_eq!(assert_ledger_is_journal(env.path()), 2000);
}
