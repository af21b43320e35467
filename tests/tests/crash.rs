//! The agent SIGKILLed again and again while producers on HTTP, TCP and MQTT keep sending:
//! every acknowledged transaction is in the journal exactly once with its original sequence,
//! every unanswered one is absent or present once, sequences have no gaps, and SQLite's
//! integrity check passes. The broker is restarted once mid-stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_protocol::{SourceKind, Transaction};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tests::harness::{Broker, Env, Proc, try_wait_for, wait_for};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

const KILLS: usize = 20;
const PLANT: &str = "plant-a";

/// What the producers saw.
#[derive(Debug, Default)]
struct Ledger {
    /// Transaction id → the sequence its acknowledgement carried.
    acked: BTreeMap<uuid::Uuid, u64>,
    /// Sent without an answer (the agent died first).
    unanswered: Vec<uuid::Uuid>,
    /// MQTT publishes the broker acknowledged (the agent journals them when it next reads them).
    mqtt: Vec<uuid::Uuid>,
}

#[derive(Debug, Default)]
struct Shared {
    ledger: Mutex<Ledger>,
    in_flight: AtomicU64,
    acks: AtomicU64,
    stop: AtomicBool,
    mqtt_paused: AtomicBool,
}

const STATION: &str = r#"
[[stations]]
name = "gate"
listen = "127.0.0.1:0"
device = "gate-1"
[stations.template]
model = "res.users"
method = "context_get"
"#;

fn http_txn(key: &str) -> Value {
    json!({"source": "mes", "device": "line-1", "key": key, "odoo": {"model": "res.users", "method": "context_get"}})
}

/// Posts batches of keyed transactions to whichever agent is up.
async fn http_producer(shared: Arc<Shared>, mut addr: watch::Receiver<(String, String)>, name: usize) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).pool_max_idle_per_host(0).build().unwrap();
    let mut n = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let http = addr.borrow_and_update().0.clone();
        let keys: Vec<String> = (0..5).map(|i| format!("h{name}-{}", n + i)).collect();
        let body = Value::Array(keys.iter().map(|k| http_txn(k)).collect());
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = client.post(format!("http://{http}/v1/transactions")).json(&body).send().await;
        let answer = match result {
            Ok(r) if r.status() == 202 => r.json::<Value>().await.ok(),
            _ => None,
        };
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        let answered = answer.is_some();
        {
            let mut ledger = shared.ledger.lock().unwrap();
            match answer {
                Some(a) => {
                    for acc in a["accepted"].as_array().unwrap() {
                        let id: uuid::Uuid = acc["id"].as_str().unwrap().parse().unwrap();
                        ledger.acked.insert(id, acc["seq"].as_u64().unwrap());
                        shared.acks.fetch_add(1, Ordering::SeqCst);
                    }
                }
                None => {
                    for k in &keys {
                        ledger.unanswered.push(Transaction::keyed_id(PLANT, SourceKind::Mes, "line-1", k));
                    }
                }
            }
        }
        if answered {
            n += 5;
        } else {
            // Resend the same keys to the next agent: a resend is the same transaction.
            let _ = addr.changed().await;
        }
    }
}

/// Sends `<key> <code>` lines one at a time to the station.
async fn tcp_producer(shared: Arc<Shared>, mut addr: watch::Receiver<(String, String)>) {
    let mut n = 0;
    'connect: while !shared.stop.load(Ordering::SeqCst) {
        let station = addr.borrow_and_update().1.clone();
        let Ok(stream) = tokio::net::TcpStream::connect(&station).await else {
            let _ = addr.changed().await;
            continue;
        };
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        while !shared.stop.load(Ordering::SeqCst) {
            let key = format!("t-{n}");
            let id = Transaction::keyed_id(PLANT, SourceKind::Scanner, "gate-1", &key);
            shared.in_flight.fetch_add(1, Ordering::SeqCst);
            let sent = w.write_all(format!("{key} 590123{n}\n").as_bytes()).await;
            let answer = if sent.is_ok() { lines.next_line().await.ok().flatten() } else { None };
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            match answer.as_deref().and_then(|a| a.strip_prefix("ACK ")) {
                Some(seq) => {
                    shared.ledger.lock().unwrap().acked.insert(id, seq.parse().unwrap());
                    shared.acks.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                }
                None => {
                    shared.ledger.lock().unwrap().unanswered.push(id);
                    let _ = addr.changed().await;
                    continue 'connect;
                }
            }
        }
    }
}

/// Publishes keyed transactions in small batches, each acknowledged by the broker.
async fn mqtt_producer(shared: Arc<Shared>, broker_port: u16, broker: Arc<tokio::sync::Mutex<Broker>>) {
    let mut n = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.mqtt_paused.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
            continue;
        }
        let keys: Vec<String> = (0..10).map(|i| format!("m-{}", n + i)).collect();
        let messages = keys
            .iter()
            .map(|k| {
                (
                    "holdfast/plant-a/plc/press-1".to_owned(),
                    json!({"key": k, "odoo": {"model": "res.users", "method": "context_get"}}).to_string().into_bytes(),
                )
            })
            .collect();
        broker.lock().await.publish("press-1", messages).await;
        let _ = broker_port;
        shared
            .ledger
            .lock()
            .unwrap()
            .mqtt
            .extend(keys.iter().map(|k| Transaction::keyed_id(PLANT, SourceKind::Plc, "press-1", k)));
        n += 10;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_whatever_is_killed_when() {
    let env = Env::new(&[PLANT]);
    let broker = Broker::start(env.path(), &["press-1"]).await;
    let port = broker.port;
    let extra = format!("{STATION}{}", broker.agent_table(PLANT));
    let broker = Arc::new(tokio::sync::Mutex::new(broker));
    let start = || env.agent_with(PLANT, "127.0.0.1:9", &extra);

    let mut agent: Proc = start().await;
    // MQTT keeps messages only for existing subscriptions: publishing starts once the agent's
    // persistent session holds its subscription (from then on nothing is lost while it is down).
    wait_for(Duration::from_secs(60), "the agent's MQTT subscription", || async {
        (env.agent_status(&agent.field("http")).await["mqtt"]["subscribed"] == true).then_some(())
    })
    .await;
    let (addr_tx, addr_rx) = watch::channel((agent.field("http"), agent.field("station:gate")));
    let shared = Arc::new(Shared::default());
    let mut producers = tokio::task::JoinSet::new();
    producers.spawn(http_producer(shared.clone(), addr_rx.clone(), 1));
    producers.spawn(http_producer(shared.clone(), addr_rx.clone(), 2));
    producers.spawn(tcp_producer(shared.clone(), addr_rx.clone()));
    producers.spawn(mqtt_producer(shared.clone(), port, broker.clone()));

    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed);
    let mut kills_in_flight = 0;
    for kill in 0..KILLS {
        let target = shared.acks.load(Ordering::SeqCst) + rng.random_range(5..60);
        wait_for(Duration::from_secs(60), "producers to get acknowledgements", || async {
            (shared.acks.load(Ordering::SeqCst) >= target).then_some(())
        })
        .await;
        if shared.in_flight.load(Ordering::SeqCst) > 0 {
            kills_in_flight += 1;
        }
        agent.kill().await;
        if kill == KILLS / 2 {
            shared.mqtt_paused.store(true, Ordering::SeqCst);
            broker.lock().await.restart().await;
            shared.mqtt_paused.store(false, Ordering::SeqCst);
        }
        agent = start().await;
        addr_tx.send_replace((agent.field("http"), agent.field("station:gate")));
    }
    shared.stop.store(true, Ordering::SeqCst);
    addr_tx.send_replace((agent.field("http"), agent.field("station:gate")));
    while producers.join_next().await.is_some() {}
    println!("{KILLS} kills, {kills_in_flight} with requests in flight");
    assert!(kills_in_flight >= KILLS / 2, "only {kills_in_flight} of {KILLS} kills had requests in flight");

    // Every publish the broker acknowledged reaches the journal once the agent reads it: the
    // broker redelivers what the killed agents never acknowledged, in whatever order it likes.
    let mqtt_ids = shared.ledger.lock().unwrap().mqtt.clone();
    let journal = env.path().join("journal-plant-a.db");
    let missing = || {
        let db = rusqlite::Connection::open_with_flags(&journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        let held: std::collections::HashSet<Vec<u8>> =
            db.prepare("SELECT id FROM txn").ok()?.query_map([], |r| r.get(0)).ok()?.collect::<Result<_, _>>().ok()?;
        Some(mqtt_ids.iter().filter(|id| !held.contains(id.as_bytes().as_slice())).copied().collect::<Vec<_>>())
    };
    let all_there = || async { missing().filter(Vec::is_empty).map(|_| ()) };
    if try_wait_for(Duration::from_secs(60), all_there).await.is_none() {
        let left = missing();
        let broker_log = std::fs::read_to_string(broker.lock().await.dir.join("mosquitto.log")).unwrap_or_default();
        panic!(
            "{} of {} acknowledged MQTT publishes never reached the journal (first: {:?})\nagent log:\n{}\nbroker log:\n{}",
            left.as_ref().map_or(0, Vec::len),
            mqtt_ids.len(),
            left.and_then(|l| l.first().copied()),
            agent.log_text(),
            broker_log.lines().filter(|l| !l.contains("Saving")).collect::<Vec<_>>().join("\n")
        );
    }
    agent.stop().await;

    let db = rusqlite::Connection::open(env.path().join("journal-plant-a.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let rows: Vec<(u64, Vec<u8>)> = db
        .prepare("SELECT seq, id FROM txn ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let by_id: BTreeMap<uuid::Uuid, u64> =
        rows.iter().map(|(seq, id)| (uuid::Uuid::from_slice(id).unwrap(), *seq)).collect();
    assert_eq!(by_id.len(), rows.len(), "each id once");
    assert!(rows.iter().enumerate().all(|(i, (seq, _))| *seq == i as u64 + 1), "sequences without gaps");

    let ledger = shared.ledger.lock().unwrap();
    for (id, seq) in &ledger.acked {
        assert_eq!(by_id.get(id), Some(seq), "acknowledged transaction {id} lost or moved");
    }
    for id in &ledger.mqtt {
        assert!(by_id.contains_key(id), "an MQTT publish the broker acknowledged never reached the journal: {id}");
    }
    let unanswered_present = ledger.unanswered.iter().filter(|id| by_id.contains_key(id)).count();
    println!(
        "{} acknowledged, {} MQTT publishes, {} unanswered ({} of them journaled before the kill), {} rows",
        ledger.acked.len(),
        ledger.mqtt.len(),
        ledger.unanswered.len(),
        unanswered_present,
        rows.len()
    );
    assert!(ledger.acked.len() > 500, "the producers did real work: {}", ledger.acked.len());
}
