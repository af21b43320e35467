//! The agent and the hub under systemd's protocol, with the test as the service manager (a
//! notify socket of its own): `READY=1` once up, `WATCHDOG=1` at half the watchdog interval
//! while the agent's journal writer and uplink (the hub's store) move; a writer stuck on its
//! database (another process holds the write lock) stops the pings, and they resume once it
//! moves again (and the hub's `/healthz` answers 503 meanwhile); `STOPPING=1` on SIGTERM, after
//! which the agent's journal is closed (its write-ahead log checkpointed).

use std::time::Duration;

use tests::harness::{Env, NotifySocket, Proc, bin};

/// The watchdog interval given to the agent: it pings every half of it.
const WATCHDOG: Duration = Duration::from_millis(600);

#[tokio::test]
async fn the_agent_says_ready_and_pings_the_watchdog_only_while_its_journal_writer_moves() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let config = env.agent_config("plant-a", &hub.field("sync"));
    let socket = NotifySocket::bind(env.path().join("notify.sock"));
    let usec = WATCHDOG.as_micros().to_string();
    let agent = Proc::spawn_env(
        &bin("holdfast-agent"),
        &["run", "--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", socket.path.to_str().unwrap()), ("WATCHDOG_USEC", &usec)],
        env.path().join("agent.log"),
        "holdfast-agent ready",
    )
    .await;
    socket.expect("READY=1", Duration::from_secs(10)).await;
    for _ in 0..3 {
        socket.expect("WATCHDOG=1", WATCHDOG * 2).await;
    }

    // Another process takes the journal's write lock: the writer cannot begin a transaction.
    let db = rusqlite::Connection::open(env.path().join("journal-plant-a.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // A ping already on its way may still arrive; after that, silence for several intervals.
    let _ = socket.next(WATCHDOG).await;
    let mut during = Vec::new();
    for _ in 0..4 {
        during.extend(socket.next(WATCHDOG).await);
    }
    assert!(!during.iter().any(|m| m.contains("WATCHDOG=1")), "pings while the writer was stuck: {during:?}");
    assert!(agent.log_text().contains("no watchdog ping: the journal writer"), "{}", agent.log_text());

    // The lock goes: the writer moves, the pings come back.
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    socket.expect("WATCHDOG=1", WATCHDOG * 10).await;
    agent.stop().await;
    socket.expect("STOPPING=1", Duration::from_secs(5)).await;
    // Stopping closed the journal: its write-ahead log is in the database, the log file empty.
    let wal = env.path().join("journal-plant-a.db-wal");
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0, "{}", wal.display());
    let log = std::fs::read_to_string(env.path().join("agent.log")).unwrap();
    assert!(log.contains("journal closed, its write-ahead log checkpointed"), "{log}");
    hub.stop().await;
}

#[tokio::test]
async fn the_hub_pings_the_watchdog_only_while_its_store_completes_writes() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let config = env.hub_config(&odoo.url, "127.0.0.1:0", "", "");
    let socket = NotifySocket::bind(env.path().join("notify-hub.sock"));
    let usec = WATCHDOG.as_micros().to_string();
    let hub = Proc::spawn_env(
        &bin("holdfast-hub"),
        &["run", "--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", socket.path.to_str().unwrap()), ("WATCHDOG_USEC", &usec)],
        env.path().join("hub.log"),
        "holdfast-hub ready",
    )
    .await;
    socket.expect("READY=1", Duration::from_secs(10)).await;
    socket.expect("WATCHDOG=1", WATCHDOG * 2).await;
    let db = rusqlite::Connection::open(env.path().join("hub.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let _ = socket.next(WATCHDOG).await;
    let mut during = Vec::new();
    for _ in 0..4 {
        during.extend(socket.next(WATCHDOG).await);
    }
    assert!(!during.iter().any(|m| m.contains("WATCHDOG=1")), "pings while the store was stuck: {during:?}");
    // Kubernetes' liveness probe sees the same.
    let health = format!("http://{}/healthz", hub.field("api"));
    let resp = reqwest::get(&health).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    socket.expect("WATCHDOG=1", WATCHDOG * 10).await;
    assert_eq!(reqwest::get(&health).await.unwrap().status(), 200);
    hub.stop().await;
    socket.expect("STOPPING=1", Duration::from_secs(5)).await;
}
