//! `holdfast-upload-bench`: the agent uploading a journal backlog to the hub (BENCHMARKS.md).
//! Run in release: `cargo run --release -p tests --bin holdfast-upload-bench`.
//!
//! For the same transactions of 256-byte bodies: (a) quinn moving the same frames over one
//! stream on loopback; (b) the hub's SQLite inserting the same rows into the ledger's schema in
//! batches of the session's largest; (c) a real agent uploading that backlog from its journal to
//! a real hub until the hub has acknowledged all of it. Peak RSS and CPU time of both processes.

// A benchmark's purpose is to read the wall clock.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use holdfast_agent::journal::{Entry, Journal, Limits};
use holdfast_protocol::msg::{BATCH_RECORDS_MAX, Batch};
use holdfast_protocol::{Message, OdooCall, Operation, Record, SourceKind, Transaction, frame};
use serde_json::json;
use tests::harness::{Env, START_TIMEOUT, vm_hwm_kib, wait_for};

#[derive(Debug, Parser)]
#[command(name = "holdfast-upload-bench", about = "Holdfast's upload benchmark")]
struct Args {
    /// Transactions in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
}

const BODY_BYTES: usize = 256;

/// The n-th keyed transaction, its body padded to [`BODY_BYTES`].
fn transaction(n: u64, pad: usize) -> Transaction {
    let key = format!("wo-{n:010}");
    Transaction {
        id: Transaction::keyed_id("plant-a", SourceKind::Mes, "line-3", &key),
        plant: "plant-a".into(),
        source: SourceKind::Mes,
        device: "line-3".into(),
        key: Some(key),
        order_key: "mo:WH/MO/00001".into(),
        received_at_ms: 1_790_000_000_000 + n as i64,
        occurred_at_ms: None,
        op: Operation::OdooCall(OdooCall {
            model: "mrp.production".into(),
            method: "write".into(),
            args: json!([[7], {"qty_producing": n, "note": "x".repeat(pad)}]),
            kwargs: Default::default(),
        }),
    }
}

/// Padding that brings a body to [`BODY_BYTES`].
fn padding() -> usize {
    let base = transaction(0, 0).encode_body().expect("encode").len();
    BODY_BYTES.saturating_sub(base + 2)
}

fn records(count: u64) -> Vec<(Transaction, Record)> {
    let pad = padding();
    (1..=count)
        .map(|seq| {
            let t = transaction(seq, pad);
            let r = t.to_record(seq).expect("record");
            (t, r)
        })
        .collect()
}

/// User and system CPU seconds a process has used.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command: state is field 0, utime field 11, stime field 12; 100 ticks a second.
    (ticks(11) + ticks(12)) / 100.0
}

/// (a) quinn alone: the frames of the backlog over one stream, from a client to a server.
async fn quinn_ceiling(env: &Env, frames: &[Vec<u8>]) -> f64 {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = env.path().join("certs");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.join("hub.pem")).expect("hub.pem").collect::<Result<_, _>>().expect("pem");
    let key = PrivateKeyDer::from_pem_file(certs.join("hub.key")).expect("hub.key");
    let mut tls = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).expect("tls");
    tls.alpn_protocols = vec![b"bench".to_vec()];
    let server_cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic server"),
    ));
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).expect("server");
    let addr = server.local_addr().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).expect("ca.pem") {
        roots.add(c.expect("pem")).expect("root");
    }
    let mut ctls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    ctls.alpn_protocols = vec![b"bench".to_vec()];
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client");
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(ctls).expect("quic client"),
    )));
    let total: usize = frames.iter().map(Vec::len).sum();
    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.expect("incoming").await.expect("connection");
        let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while let Some(n) = recv.read(&mut buf).await.expect("read") {
            got += n;
        }
        send.write_all(b"k").await.expect("answer");
        send.finish().expect("finish");
        let _ = send.stopped().await;
        got
    });
    let conn = client.connect(addr, "localhost").expect("connect").await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let start = Instant::now();
    for f in frames {
        send.write_all(f).await.expect("write");
    }
    send.finish().expect("finish");
    let mut k = [0u8; 1];
    recv.read_exact(&mut k).await.expect("answer");
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(receiver.await.expect("receiver"), total);
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    elapsed
}

/// (b) the hub's SQLite alone: the same rows through the hub store's own `store_records`, a
/// transaction per batch of the session's largest.
async fn sqlite_ceiling(dir: &std::path::Path, rows: &[(Transaction, Record)]) -> f64 {
    use holdfast_hub::store::{NewRecord, Store};
    let store = holdfast_hub::store::sqlite::SqliteStore::open(&dir.join("ceiling-hub.db")).expect("store");
    let journal = uuid::Uuid::now_v7();
    store.open_journal("plant-a", journal, 0).await.expect("journal");
    let batches: Vec<Vec<NewRecord>> = rows
        .chunks(BATCH_RECORDS_MAX)
        .map(|chunk| {
            chunk
                .iter()
                .map(|(t, r)| NewRecord {
                    seq: r.seq,
                    id: t.id,
                    dedup: holdfast_hub::store::dedup_of(t),
                    order_key: t.order_key.clone(),
                    body: r.body.clone(),
                    crc: r.crc,
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    for batch in batches {
        store.store_records("plant-a", journal, batch, 0).await.expect("store");
    }
    start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tests::harness::install_crypto();
    let count = args.count;
    let env = Env::new(&["plant-a"]);
    println!(
        "holdfast-upload-bench: {count} transactions of {BODY_BYTES}-byte bodies, {} cores",
        std::thread::available_parallelism()?.get()
    );

    let rows = records(count);
    let body = rows[0].1.body.len();
    let frames: Vec<Vec<u8>> = rows
        .chunks(BATCH_RECORDS_MAX)
        .map(|c| {
            frame::encode(&Message::Batch(Batch { records: c.iter().map(|(_, r)| r.clone()).collect() }))
                .expect("frame")
        })
        .collect();
    let wire: usize = frames.iter().map(Vec::len).sum();
    println!("    bodies of {body} bytes; {} batch frames, {:.1} MB on the wire", frames.len(), wire as f64 / 1e6);

    let q = quinn_ceiling(&env, &frames).await;
    println!(
        "(a) quinn, one stream on loopback: {:>10.0} transactions/s ({:.0} MB/s)",
        count as f64 / q,
        wire as f64 / q / 1e6
    );
    drop(frames);
    let s = sqlite_ceiling(env.path(), &rows).await;
    println!("(b) the hub's SQLite, batches of {BATCH_RECORDS_MAX}: {:>10.0} transactions/s", count as f64 / s);
    let slowest = (count as f64 / q).min(count as f64 / s);

    // The backlog in the agent's journal, as producers would have left it during an outage.
    let start = Instant::now();
    {
        let journal = Journal::open(&env.path().join("journal-plant-a.db"), 0, Limits::NONE)?;
        for chunk in rows.chunks(1000) {
            journal.append(chunk.iter().map(|(t, r)| Entry::of(t, r.body.clone())).collect()).await?;
        }
    }
    drop(rows);
    println!("    backlog journaled in {:.1} s", start.elapsed().as_secs_f64());

    // No Odoo answers: the hub only stores (its applier backs off), as during an Odoo outage.
    let hub = env.hub("http://127.0.0.1:9", "127.0.0.1:0").await;
    let hub_pid = hub.child.id().expect("hub pid");
    let hub_cpu = cpu_s(hub_pid);
    let start = Instant::now();
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let agent_pid = agent.child.id().expect("agent pid");
    let http = agent.field("http");
    wait_for(Duration::from_secs(600).max(START_TIMEOUT), "the whole backlog at the hub", || async {
        (env.agent_status(&http).await["hub"]["stored_seq"] == count).then_some(())
    })
    .await;
    let e2e = start.elapsed().as_secs_f64();
    let (agent_cpu, hub_cpu) = (cpu_s(agent_pid), cpu_s(hub_pid) - hub_cpu);
    println!(
        "(c) agent → hub, end to end: {:>10.0} transactions/s in {e2e:.1} s = {:.0}% of the slowest ceiling",
        count as f64 / e2e,
        count as f64 / e2e / slowest * 100.0
    );
    println!(
        "    agent VmHWM {} KiB, CPU {agent_cpu:.1} s; hub VmHWM {} KiB, CPU {hub_cpu:.1} s",
        vm_hwm_kib(agent_pid),
        vm_hwm_kib(hub_pid)
    );
    agent.stop().await;
    hub.stop().await;
    Ok(())
}
