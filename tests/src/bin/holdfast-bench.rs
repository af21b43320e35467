//! `holdfast-bench`: ingest benchmarks (BENCHMARKS.md). Run in release:
//! `cargo run --release -p tests --bin holdfast-bench`.
//!
//! (a) raw SQLite ceiling: the journal's schema and PRAGMAs, plain inserts in groups of
//!     the journal's largest group; (b) the journal's group-commit path under many concurrent
//!     producers; (c) HTTP ingest end to end, batched; (d) acknowledgement latency from an
//!     open-loop generator at a fixed request rate; (e) MQTT ingest through the shipped broker,
//!     against `mosquitto_sub` consuming the same stream. Each figure is from this run, on this machine.

// A benchmark's purpose is to read the wall clock.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use holdfast_agent::journal::{self, Entry, GROUP_REQUESTS_MAX, Journal, Limits};
use holdfast_protocol::{SourceKind, Transaction};
use rusqlite::params;
use serde_json::{Value, json};
use tests::harness::{Broker, Env, MQTT_PASSWORD, START_TIMEOUT, vm_hwm_kib, wait_for};

#[derive(Debug, Parser)]
#[command(name = "holdfast-bench", about = "Holdfast's ingest benchmarks")]
struct Args {
    /// Transactions for (a), (b) and (c).
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// Concurrent producers for (b).
    #[arg(long, default_value_t = 256)]
    producers: u64,
    /// Requests a second for (d), and for how long.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Run (c) and (d) only, against an agent already listening at this HTTP address (for
    /// example one started under `valgrind --tool=callgrind`) instead of one of the bench's own.
    #[arg(long, value_name = "HOST:PORT")]
    agent: Option<String>,
}

const BODY_BYTES: usize = 256;

fn body(n: u64) -> Vec<u8> {
    let mut b = vec![0u8; BODY_BYTES];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b
}

/// The bench's keyed rows: the ids and resend names (c) and (d) make through HTTP, keys that
/// ascend per producer as a work-order counter's do.
fn keyed(n: u64) -> (uuid::Uuid, Vec<u8>) {
    let key = format!("bench-{n:012}");
    (
        Transaction::keyed_id("plant-a", SourceKind::Mes, "line-3", &key),
        journal::dedup_name(SourceKind::Mes, "line-3", &key),
    )
}

/// (a) A minimal rusqlite loop: the journal's schema, indexes and PRAGMAs.
fn raw_ceiling(dir: &std::path::Path, count: u64) -> f64 {
    let mut conn = journal::open_connection(&dir.join("raw.db"), 0).expect("raw journal");
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < count {
        let tx = conn.transaction().expect("begin");
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO txn (seq, id, dedup, received_at_ms, body, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .expect("prepare");
            for _ in 0..GROUP_REQUESTS_MAX {
                seq += 1;
                let (id, dedup) = keyed(seq);
                insert.execute(params![seq, id.as_bytes(), dedup, 0i64, body(seq), 0u32]).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    seq as f64 / start.elapsed().as_secs_f64()
}

/// (b) The journal's own path: `producers` tasks appending one transaction per request. Their
/// keys ascend plant-wide, or, with `devices`, each producer is a device counting on its own.
async fn group_commit(dir: &std::path::Path, count: u64, producers: u64, devices: bool) -> (f64, f64) {
    let name = if devices { "journal-devices.db" } else { "journal.db" };
    let journal = Journal::open(&dir.join(name), 0, Limits::NONE).expect("journal");
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for p in 0..producers {
        let (journal, next) = (journal.clone(), next.clone());
        let share = count / producers;
        tasks.spawn(async move {
            for i in 0..share {
                let n = if devices { p * share + i } else { next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) };
                journal
                    .append(vec![{
                        let (id, dedup) = keyed(n);
                        Entry { id, dedup: Some(dedup), received_at_ms: 0, body: body(n) }
                    }])
                    .await
                    .expect("append");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let usage = journal.usage();
    (usage.committed_rows as f64 / elapsed, usage.committed_rows as f64 / usage.commits.max(1) as f64)
}

/// A producer object whose encoded body is about 256 bytes.
fn txn(n: u64) -> Value {
    json!({"source": "mes", "device": "line-3", "key": format!("bench-{n:012}"), "order_key": "mo:WH/MO/00001",
           "odoo": {"model": "mrp.production", "method": "write", "args": [[7], {"qty_producing": n as f64}]}})
}

/// (c) HTTP ingest end to end: `clients` concurrent clients posting arrays of `batch`.
async fn http_batched(http: &str, count: u64, clients: u64, batch: u64) -> f64 {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (client, url) = (client.clone(), format!("http://{http}/v1/transactions"));
        let share = count / clients;
        tasks.spawn(async move {
            let mut i = 0;
            while i < share {
                let body = Value::Array((i..(i + batch).min(share)).map(|k| txn(10_000_000 * (c + 1) + k)).collect());
                let resp = client.post(&url).json(&body).send().await.expect("post");
                assert_eq!(resp.status(), 202);
                i += batch;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    (count / clients * clients) as f64 / start.elapsed().as_secs_f64()
}

/// Connections the open-loop generator keeps: producers on a plant network hold a bounded pool
/// of connections; a generator that opens one per waiting request measures its own connection
/// storms instead (at 10,000 requests a second a 20 ms hiccup means 200 new connections).
const OPEN_LOOP_CONNECTIONS: usize = 64;

/// (d) Open loop, as wrk2 does it: one single-transaction request every 1/rate s on a fixed
/// schedule, sent on the next free connection of a warmed pool, latency measured from the
/// scheduled time (so time spent waiting for a free connection counts).
async fn open_loop(http: &str, rate: u64, duration: Duration) -> (Vec<Duration>, u64) {
    let url = Arc::new(format!("http://{http}/v1/transactions"));
    let total = rate * duration.as_secs();
    // Bodies made before the schedule starts: the generator shares the agent's 2 cores, and
    // should spend them sending, as wrk2's prepared requests do.
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..total).map(|i| bytes::Bytes::from(serde_json::to_vec(&txn(50_000_000 + i)).expect("json"))).collect(),
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(u64, tokio::time::Instant)>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    let warm = Arc::new(tokio::sync::Barrier::new(OPEN_LOOP_CONNECTIONS + 1));
    for w in 0..OPEN_LOOP_CONNECTIONS {
        let (url, rx, warm, bodies) = (url.clone(), rx.clone(), warm.clone(), bodies.clone());
        workers.spawn(async move {
            // One client per worker: its one connection, opened before the schedule starts.
            let client = reqwest::Client::new();
            let resp = client.post(url.as_str()).json(&txn(40_000_000 + w as u64)).send().await.expect("warm-up");
            assert_eq!(resp.status(), 202);
            warm.wait().await;
            let (mut latencies, mut failed) = (Vec::new(), 0u64);
            loop {
                let next = rx.lock().await.recv().await;
                let Some((i, scheduled)) = next else { break };
                let body = bodies[i as usize].clone();
                let resp = client.post(url.as_str()).header("content-type", "application/json").body(body).send().await;
                if resp.map(|r| r.status() == 202).unwrap_or(false) {
                    latencies.push(tokio::time::Instant::now() - scheduled);
                } else {
                    failed += 1;
                }
            }
            (latencies, failed)
        });
    }
    warm.wait().await;
    let interval = Duration::from_secs(1) / rate as u32;
    let start = tokio::time::Instant::now() + Duration::from_millis(10);
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled).await;
        tx.send((i, scheduled)).expect("workers");
    }
    drop(tx);
    let (mut latencies, mut failed) = (Vec::with_capacity(total as usize), 0);
    while let Some(r) = workers.join_next().await {
        let (l, f) = r.expect("worker");
        latencies.extend(l);
        failed += f;
    }
    latencies.sort();
    (latencies, failed)
}

/// The (e) stream: `count` producer objects for `holdfast/plant-a/mes/<device>`.
fn mqtt_stream(device: &str, count: u64) -> Vec<(String, Vec<u8>)> {
    let topic = format!("holdfast/plant-a/mes/{device}");
    (0..count)
        .map(|n| {
            let mut t = txn(90_000_000 + n);
            t.as_object_mut().expect("object").remove("source");
            t.as_object_mut().expect("object").remove("device");
            (topic.clone(), serde_json::to_vec(&t).expect("json"))
        })
        .collect()
}

/// (e), the reference: `mosquitto_sub` (QoS 1, as the agent's user) consuming the stream; the
/// time from the first publish until it has printed every message (one short line each: `%t`,
/// the topic, so printing costs it as little as possible).
async fn mqtt_reference(broker: &Broker, count: u64) -> f64 {
    use tokio::io::AsyncBufReadExt;
    // Line-buffered, so each message's line arrives as it is received.
    let mut sub = tokio::process::Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-u", "holdfast-agent", "-P", MQTT_PASSWORD, "-i", "bench-reference", "-q", "1"])
        .args(["-t", "holdfast/plant-a/#", "-F", "%t"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (install mosquitto-clients)");
    let mut lines = tokio::io::BufReader::new(sub.stdout.take().expect("stdout")).lines();
    // The subscription is in place once a probe (on a topic of its own) comes back; probes sent
    // before that reach nobody, and any still in flight are told apart by their topic.
    const PROBE: &str = "holdfast/plant-a/probe/bench-dev";
    loop {
        broker.publish("bench-dev", vec![(PROBE.to_owned(), b"probe".to_vec())]).await;
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await {
            assert_eq!(line.expect("mosquitto_sub output").as_deref(), Some(PROBE));
            break;
        }
    }
    let start = Instant::now();
    let publish = broker.publish("bench-dev", mqtt_stream("bench-dev", count));
    let consume = async {
        let mut seen = 0;
        while seen < count {
            let line = lines.next_line().await.expect("mosquitto_sub output").expect("mosquitto_sub ended");
            if line != PROBE {
                seen += 1;
            }
        }
        Instant::now()
    };
    let ((), done) = tokio::join!(publish, consume);
    sub.kill().await.expect("stop mosquitto_sub");
    count as f64 / (done - start).as_secs_f64()
}

/// (e) MQTT ingest: the same stream through the broker into a running agent, from the first
/// publish until the agent has journaled every message.
async fn mqtt_agent(env: &Env, http: &str, count: u64, broker: &Broker) -> f64 {
    let before = env.agent_status(http).await["journal"]["last_seq"].as_u64().expect("last_seq");
    let start = Instant::now();
    let publish = broker.publish("bench-dev", mqtt_stream("bench-dev", count));
    let wait = async {
        loop {
            let s = env.agent_status(http).await;
            if s["journal"]["last_seq"].as_u64().expect("last_seq") >= before + count {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let ((), done) = tokio::join!(publish, wait);
    count as f64 / (done - start).as_secs_f64()
}

async fn agent_rows(env: &Env, http: &str) -> u64 {
    env.agent_status(http).await["journal"]["rows"].as_u64().unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default()
}

fn latency_line(lat: &[Duration], failed: u64, args: &Args) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "open loop {} single-transaction requests/s for {:?}: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, {failed} failed",
        args.rate,
        args.duration,
        ms(pct(lat, 0.50)),
        ms(pct(lat, 0.99)),
        ms(pct(lat, 0.999)),
        ms(lat.last().copied().unwrap_or_default()),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tests::harness::install_crypto();
    let dir = tempfile::tempdir()?;
    println!(
        "holdfast-bench: {} transactions of {BODY_BYTES} bytes, {} cores",
        args.count,
        std::thread::available_parallelism()?.get()
    );

    if let Some(http) = &args.agent {
        let batched = http_batched(http, args.count, 8, 100).await;
        println!("(c) HTTP ingest, 8 clients x arrays of 100: {batched:>10.0} transactions/s");
        let (lat, failed) = open_loop(http, args.rate, args.duration).await;
        println!("(d) {}", latency_line(&lat, failed, &args));
        return Ok(());
    }

    let raw = raw_ceiling(dir.path(), args.count);
    println!("(a) raw SQLite ceiling, groups of {GROUP_REQUESTS_MAX}: {raw:>10.0} rows/s");
    let (journal_rate, mean_group) = group_commit(dir.path(), args.count, args.producers, false).await;
    println!(
        "(b) journal group commit, {} producers: {journal_rate:>10.0} rows/s = {:.0}% of (a), mean group {mean_group:.1}",
        args.producers,
        journal_rate / raw * 100.0
    );
    let (devices_rate, mean_group) = group_commit(dir.path(), args.count, args.producers, true).await;
    println!(
        "    the same from {} devices, each counting its own keys: {devices_rate:>10.0} rows/s = {:.0}% of (a), mean group {mean_group:.1}",
        args.producers,
        devices_rate / raw * 100.0
    );
    println!("    bench process VmHWM {} KiB", vm_hwm_kib(std::process::id()));

    let env = Env::new(&["plant-a"]);
    let agent = env.agent("plant-a", "127.0.0.1:9").await;
    let http = agent.field("http");
    let pid = agent.child.id().expect("agent pid");
    let batched = http_batched(&http, args.count, 8, 100).await;
    println!(
        "(c) HTTP ingest, 8 clients x arrays of 100: {batched:>10.0} transactions/s; agent VmHWM {} KiB",
        vm_hwm_kib(pid)
    );
    let (lat, failed) = open_loop(&http, args.rate, args.duration).await;
    println!("(d) {}; agent VmHWM {} KiB", latency_line(&lat, failed, &args), vm_hwm_kib(pid));
    let (oldest, lookups) = (keyed(10_000_000).0, 20);
    let client = reqwest::Client::new();
    let start = Instant::now();
    for _ in 0..lookups {
        let resp = client.get(format!("http://{http}/v1/transactions/{oldest}")).send().await?;
        assert_eq!(resp.status(), 200, "the oldest transaction of (c) is found by its id");
    }
    println!(
        "    GET /v1/transactions/{{id}} of the oldest row, {} rows held: {:.2} ms each",
        agent_rows(&env, &http).await,
        start.elapsed().as_secs_f64() * 1000.0 / f64::from(lookups)
    );
    agent.stop().await;

    let env = Env::new(&["plant-a"]);
    let broker = Broker::start(env.path(), &["bench-dev"]).await;
    let mqtt_count = args.count / 4;
    let reference = mqtt_reference(&broker, mqtt_count).await;
    println!(
        "(e) MQTT, {mqtt_count} QoS 1 publishes: mosquitto_sub consumed {reference:>10.0} messages/s (the reference)"
    );
    let agent = env.agent_with("plant-a", "127.0.0.1:9", &broker.agent_table("plant-a")).await;
    let http = agent.field("http");
    let pid = agent.child.id().expect("agent pid");
    wait_for(START_TIMEOUT, "the agent's MQTT link", || async {
        (env.agent_status(&http).await["mqtt"]["subscribed"] == true).then_some(())
    })
    .await;
    let ingested = mqtt_agent(&env, &http, mqtt_count, &broker).await;
    println!(
        "    the agent journaled     {ingested:>10.0} transactions/s = {:.0}% of the reference; agent VmHWM {} KiB",
        ingested / reference * 100.0,
        vm_hwm_kib(pid)
    );
    agent.stop().await;
    Ok(())
}
