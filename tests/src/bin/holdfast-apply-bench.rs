//! `holdfast-apply-bench`: the hub applying a backlog to an Odoo of known capacity
//! (BENCHMARKS.md). Run in release: `cargo run --release -p tests --bin holdfast-apply-bench`.
//!
//! The double runs the capacity model (8 workers, 4 ms per call plus 1 ms per operation). The
//! hub's ledger holds a backlog of transactions from 20 plants (stored through the hub store's
//! own `store_records`, as uploads leave it); the hub, limited to 8 calls in flight, applies it
//! in `plain` mode (one call per transaction) and in `inbox` mode (batches), each against a
//! fresh double. For each: transactions a second against the ceiling the model gives, and the
//! most calls the double ever held at once.

// A benchmark's purpose is to read the wall clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use clap::Parser;
use holdfast_hub::store::{NewRecord, Store};
use holdfast_protocol::{OdooCall, Operation, SourceKind, Transaction};
use serde_json::{Value, json};
use tests::harness::{Env, wait_for};
use tests::odoo_sim::capacity::Capacity;

#[derive(Debug, Parser)]
#[command(name = "holdfast-apply-bench", about = "Holdfast's apply benchmark")]
struct Args {
    /// Transactions in the backlog, spread evenly over the plants.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    #[arg(long, default_value_t = 20)]
    plants: u64,
    /// Transactions per inbox batch.
    #[arg(long, default_value_t = 50)]
    batch: u32,
    /// Run only this mode (plain or inbox).
    #[arg(long)]
    mode: Option<String>,
}

const WORKERS: usize = 8;

fn capacity() -> Capacity {
    Capacity {
        workers: WORKERS,
        per_call: Duration::from_millis(4),
        per_operation: Duration::from_millis(1),
        limit_time_real: Duration::from_secs(120),
    }
}

/// Fills a fresh hub store with the backlog: `plants` journals of `count / plants` absolute
/// writes each, every plant on 50 manufacturing orders of its own (ids the double seeds with
/// `--manufacturing-orders 1100`: they start a little above 110), as plants do not share
/// orders; within a plant, its four ordering keys share them.
async fn backlog(path: &std::path::Path, plants: &[String], per_plant: u64) -> anyhow::Result<()> {
    let store = holdfast_hub::store::sqlite::SqliteStore::open(path)?;
    for (p, plant) in plants.iter().enumerate() {
        let journal = uuid::Uuid::from_u128(0x1000 + p as u128);
        store.open_journal(plant, journal, 0).await?;
        let mut seq = 0;
        while seq < per_plant {
            let rows: Vec<NewRecord> = (seq + 1..=(seq + 1000).min(per_plant))
                .map(|s| {
                    let t = Transaction {
                        id: Transaction::keyed_id(plant, SourceKind::Mes, "line-1", &format!("n-{s}")),
                        plant: plant.clone(),
                        source: SourceKind::Mes,
                        device: "line-1".into(),
                        key: Some(format!("n-{s}")),
                        order_key: format!("mo:{}", s % 4),
                        received_at_ms: 0,
                        occurred_at_ms: None,
                        op: Operation::OdooCall(OdooCall {
                            model: "mrp.production".into(),
                            method: "write".into(),
                            args: json!([[120 + 50 * p as i64 + (s % 50) as i64], {"qty_producing": s as f64}]),
                            kwargs: Default::default(),
                        }),
                    };
                    let r = t.to_record(s).expect("record");
                    NewRecord {
                        seq: s,
                        id: t.id,
                        dedup: holdfast_hub::store::dedup_of(&t),
                        order_key: t.order_key.clone(),
                        body: r.body,
                        crc: r.crc,
                    }
                })
                .collect();
            seq += rows.len() as u64;
            store.store_records(plant, journal, rows, 0).await?;
        }
    }
    Ok(())
}

async fn run(env: &Env, mode: &str, args: &Args, plants: &[String]) -> anyhow::Result<()> {
    let per_plant = args.count / args.plants;
    let total = per_plant * args.plants;
    let odoo = env
        .odoo_sim_with(
            &format!("odoo-{mode}"),
            &[
                "--workers",
                &WORKERS.to_string(),
                "--per-call",
                "4ms",
                "--per-operation",
                "1ms",
                "--manufacturing-orders",
                "1100",
            ],
        )
        .await;
    let config = env.hub_config(&odoo.url, "127.0.0.1:0", "", "");
    let text = std::fs::read_to_string(&config)?
        .replace("mode = \"inbox\"\n", &format!("mode = \"{mode}\"\n"))
        .replace("path = \"hub.db\"", &format!("path = \"hub-{mode}.db\""))
        .replace("[applier]\n", &format!("[applier]\ncalls_max = {WORKERS}\nbatch_max = {}\n", args.batch));
    std::fs::write(&config, text)?;
    backlog(&env.path().join(format!("hub-{mode}.db")), plants, per_plant).await?;
    let ops = if mode == "inbox" { args.batch } else { 1 };
    let ceiling = capacity().ceiling(ops) * ops as f64;
    let start = Instant::now();
    let hub = env.hub_from(&config).await;
    let api = hub.field("api");
    wait_for(Duration::from_secs(3600), "the whole backlog applied", || {
        let url = format!("http://{api}/api/v1/plants");
        async move {
            let plants = env.get_json(&url).await;
            let applied: u64 = plants["plants"].as_array()?.iter().filter_map(|p| p["applied_seq"].as_u64()).sum();
            (applied == total).then_some(())
        }
    })
    .await;
    let secs = start.elapsed().as_secs_f64();
    let stats: Value = env.get_json(&format!("{}/holdfast-sim/stats", odoo.url)).await;
    let rate = total as f64 / secs;
    println!(
        "{mode:>6}: {total} transactions in {secs:.1} s = {rate:>8.0}/s; ceiling {ceiling:.0}/s ({}); {:.0}% of it; calls answered {}, most in the double at once {} (limit {WORKERS}), longest wait for a worker {} ms",
        if mode == "inbox" {
            format!("{WORKERS} workers / (4 ms + {} × 1 ms) × {}", args.batch, args.batch)
        } else {
            format!("{WORKERS} workers / 5 ms")
        },
        rate / ceiling * 100.0,
        stats["answered"],
        stats["in_flight_max"],
        stats["queued_max_ms"],
    );
    hub.stop().await;
    drop(odoo);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plants: Vec<String> = (1..=args.plants).map(|p| format!("plant-{p:02}")).collect();
    let names: Vec<&str> = plants.iter().map(String::as_str).collect();
    let env = Env::new(&names);
    println!(
        "holdfast-apply-bench: {} transactions from {} plants; the double: {WORKERS} workers, 4 ms per call + 1 ms per operation; {} cores",
        args.count,
        args.plants,
        std::thread::available_parallelism()?.get()
    );
    for mode in ["plain", "inbox"] {
        if args.mode.as_deref().is_none_or(|m| m == mode) {
            run(&env, mode, &args, &plants).await?;
        }
    }
    Ok(())
}
