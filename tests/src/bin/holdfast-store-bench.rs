//! `holdfast-store-bench`: the hub's ingest on each store (BENCHMARKS.md, issue 9).
//! Run in release: `cargo run --release -p tests --bin holdfast-store-bench`.
//!
//! 1,000,000 keyed transactions of 256-byte bodies from 20 plants (50,000 each), uploaded as the
//! hub's sync sessions store them: each plant's batches of the session's largest (512 records)
//! in order, the 20 plants at once, through the hub's own `Store::store_records` (contiguity,
//! dedup, ledger positions, watermarks). For each engine, in the same run, its raw insert
//! ceiling: the same rows (the ledger's columns and values), batches and concurrency into one
//! table with only a primary key, one multi-row INSERT and one commit per batch, nothing else. SQLite (WAL, `synchronous=FULL`, one
//! writer) and PostgreSQL (the server on `HOLDFAST_TEST_POSTGRES`, default 127.0.0.1:5432, in a
//! database of the run's own).

// A benchmark's purpose is to read the wall clock.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use holdfast_hub::store::{NewRecord, Store};
use holdfast_protocol::msg::BATCH_RECORDS_MAX;
use holdfast_protocol::{OdooCall, Operation, SourceKind, Transaction};
use serde_json::json;
use tests::harness::PgDb;

#[derive(Debug, Parser)]
#[command(name = "holdfast-store-bench", about = "The hub's ingest on SQLite and on PostgreSQL")]
struct Args {
    /// Transactions in all.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Plants uploading at once.
    #[arg(long, default_value_t = 20)]
    plants: u64,
}

const BODY_BYTES: usize = 256;

/// The `n`-th transaction of `plant`, its body padded to about [`BODY_BYTES`].
fn record(plant: &str, n: u64) -> NewRecord {
    let key = format!("wo-{n:010}");
    let t = Transaction {
        id: Transaction::keyed_id(plant, SourceKind::Mes, "line-3", &key),
        plant: plant.into(),
        source: SourceKind::Mes,
        device: "line-3".into(),
        key: Some(key),
        order_key: format!("mo:{}", n % 50),
        received_at_ms: 1_790_000_000_000 + n as i64,
        occurred_at_ms: None,
        op: Operation::OdooCall(OdooCall {
            model: "mrp.production".into(),
            method: "write".into(),
            args: json!([[7], {"qty_producing": n, "note": "x".repeat(BODY_BYTES - 150)}]),
            kwargs: Default::default(),
        }),
    };
    let r = t.to_record(n).expect("record");
    NewRecord {
        seq: n,
        id: t.id,
        dedup: holdfast_hub::store::dedup_of(&t),
        order_key: t.order_key,
        body: r.body,
        crc: r.crc,
    }
}

/// Each plant's batches, in order.
type Load = Vec<(String, uuid::Uuid, Vec<Vec<NewRecord>>)>;

fn load(args: &Args) -> Load {
    let per_plant = args.count / args.plants;
    (0..args.plants)
        .map(|p| {
            let plant = format!("plant-{p:02}");
            let rows: Vec<NewRecord> = (1..=per_plant).map(|n| record(&plant, n)).collect();
            let batches = rows.chunks(BATCH_RECORDS_MAX).map(<[NewRecord]>::to_vec).collect();
            (plant, uuid::Uuid::now_v7(), batches)
        })
        .collect()
}

/// The hub's ingest: every plant's batches through `store_records`, the plants at once.
async fn ingest<S: Store>(store: &S, load: &Load) -> f64 {
    for (plant, journal, _) in load {
        store.open_journal(plant, *journal, 0).await.expect("journal");
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (plant, journal, batches) in load.iter().cloned() {
        let store = store.clone();
        tasks.spawn(async move {
            for batch in batches {
                store.store_records(&plant, journal, batch, 1).await.expect("stored");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a plant's upload");
    }
    start.elapsed().as_secs_f64()
}

/// SQLite's raw ceiling: one writer (SQLite has one), a transaction per batch, the plants'
/// batches taken in turn.
fn sqlite_ceiling(path: &std::path::Path, load: &Load) -> f64 {
    let mut c = rusqlite::Connection::open(path).expect("sqlite");
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute_batch(
        "CREATE TABLE raw (lsn INTEGER PRIMARY KEY, plant TEXT NOT NULL, journal INTEGER NOT NULL, seq INTEGER NOT NULL,
         id BLOB NOT NULL, dedup BLOB NOT NULL, order_key TEXT NOT NULL, body BLOB NOT NULL, crc INTEGER NOT NULL,
         state TEXT NOT NULL, stored_at_ms INTEGER NOT NULL)",
    )
    .unwrap();
    let rounds = load.iter().map(|(_, _, b)| b.len()).max().unwrap_or(0);
    let start = Instant::now();
    for round in 0..rounds {
        for (plant, _, batches) in load {
            let Some(batch) = batches.get(round) else { continue };
            let tx = c.transaction().unwrap();
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO raw (plant, journal, seq, id, dedup, order_key, body, crc, state, stored_at_ms)
                         VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 1)",
                    )
                    .unwrap();
                for r in batch {
                    insert
                        .execute(rusqlite::params![plant, r.seq, r.id.as_bytes(), r.dedup, r.order_key, r.body, r.crc])
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        }
    }
    start.elapsed().as_secs_f64()
}

/// PostgreSQL's raw ceiling: a connection per plant, the plants at once, one multi-row INSERT
/// and one commit per batch.
async fn postgres_ceiling(db: &PgDb, load: &Load) -> f64 {
    let setup = db.client().await;
    setup
        .batch_execute(
            "CREATE TABLE raw (lsn BIGSERIAL PRIMARY KEY, plant TEXT NOT NULL, journal BIGINT NOT NULL, seq BIGINT NOT NULL,
             id UUID NOT NULL, dedup BYTEA NOT NULL, order_key TEXT NOT NULL, body BYTEA NOT NULL, crc BIGINT NOT NULL,
             state TEXT NOT NULL, stored_at_ms BIGINT NOT NULL)",
        )
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in load {
        clients.push(db.client().await);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for ((plant, _, batches), mut client) in load.iter().cloned().zip(clients) {
        tasks.spawn(async move {
            let insert = client
                .prepare(
                    "INSERT INTO raw (plant, journal, seq, id, dedup, order_key, body, crc, state, stored_at_ms)
                     SELECT $1, 1, r.seq, r.id, r.dedup, r.order_key, r.body, r.crc, 'pending', 1
                     FROM unnest($2::bigint[], $3::uuid[], $4::bytea[], $5::text[], $6::bytea[], $7::bigint[])
                          AS r (seq, id, dedup, order_key, body, crc)",
                )
                .await
                .unwrap();
            for batch in batches {
                let seqs: Vec<i64> = batch.iter().map(|r| r.seq as i64).collect();
                let ids: Vec<uuid::Uuid> = batch.iter().map(|r| r.id).collect();
                let bodies: Vec<&[u8]> = batch.iter().map(|r| r.body.as_slice()).collect();
                let dedups: Vec<&[u8]> = batch.iter().map(|r| r.dedup.as_slice()).collect();
                let keys: Vec<&str> = batch.iter().map(|r| r.order_key.as_str()).collect();
                let crcs: Vec<i64> = batch.iter().map(|r| r.crc as i64).collect();
                let tx = client.transaction().await.unwrap();
                tx.execute(&insert, &[&plant, &seqs, &ids, &dedups, &keys, &bodies, &crcs]).await.unwrap();
                tx.commit().await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a plant's inserts");
    }
    start.elapsed().as_secs_f64()
}

fn report(engine: &str, count: u64, ceiling_s: f64, store_s: f64) {
    let (ceiling, store) = (count as f64 / ceiling_s, count as f64 / store_s);
    println!(
        "{engine:<11} raw insert ceiling {ceiling:>9.0}/s ({ceiling_s:.1} s)   hub store {store:>9.0}/s ({store_s:.1} s)   {:.0} % of the ceiling",
        100.0 * store / ceiling
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tests::harness::install_crypto();
    let load = Arc::new(load(&args));
    let count: u64 = load.iter().map(|(_, _, b)| b.iter().map(Vec::len).sum::<usize>() as u64).sum();
    println!(
        "holdfast-store-bench: {count} transactions from {} plants, batches of {BATCH_RECORDS_MAX}, {} cores",
        load.len(),
        std::thread::available_parallelism()?.get()
    );
    let dir = tempfile::tempdir()?;

    let sqlite_raw = sqlite_ceiling(&dir.path().join("raw.db"), &load);
    let store = holdfast_hub::store::sqlite::SqliteStore::open(&dir.path().join("hub.db"))?;
    let sqlite_store = ingest(&store, &load).await;
    drop(store);
    report("SQLite", count, sqlite_raw, sqlite_store);

    let raw_db = PgDb::create().await;
    let pg_raw = postgres_ceiling(&raw_db, &load).await;
    drop(raw_db);
    let db = PgDb::create().await;
    let opts =
        holdfast_hub::store::postgres::PgOptions { url: db.url(None), ca: None, password_file: None, connections: 24 };
    let store = holdfast_hub::store::postgres::PgStore::connect(&opts).await?;
    // Profiling aid: HOLDFAST_BENCH_DROP_INDEXES=ledger_open,ledger_pending measures what the
    // named indexes cost (the store is not usable for applying without them).
    if let Ok(names) = std::env::var("HOLDFAST_BENCH_DROP_INDEXES") {
        let c = db.client().await;
        for name in names.split(',').filter(|n| !n.is_empty()) {
            c.batch_execute(&format!("DROP INDEX {name}")).await?;
            println!("(without index {name})");
        }
    }
    let pg_store = ingest(&store, &load).await;
    drop(store);
    report("PostgreSQL", count, pg_raw, pg_store);
    Ok(())
}
