//! `holdfast-odoo-smoke --config hub.toml`: the smoke test to run against a real staging Odoo
//! (through `tests/odoo-smoke`), with the hub's own config. It runs `holdfast-hub odoo check`'s
//! ladder, then makes its own records and exercises what the hub relies on: in `inbox` mode the
//! addon's batch contract (applied, a duplicate answered with the recorded result, a `$ref`
//! resolved server-side, a private method refused and the rest of its key not run); in `plain`
//! mode a write read back. It archives the product it made. Every run uses fresh ids, so it
//! can be run again; the inbox keeps its rows (they are the record of what ran).
//!
//! Exit 0 when every step passed; the check's exit code when Odoo is not usable; 1 when a step
//! failed. Nothing else in the project runs against a real Odoo: the tests use the double.

use std::path::PathBuf;
use tokio::time::Instant;

use clap::Parser;
use holdfast_hub::config::{Config, DeliveryMode};
use holdfast_hub::odoo::OdooClient;
use holdfast_hub::odoo_check;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "holdfast-odoo-smoke", about = "Smoke test against a real (staging) Odoo, with the hub's config")]
struct Args {
    /// The hub's config file: its [odoo] table says where and how.
    #[arg(long, short)]
    config: PathBuf,
    /// The report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Step {
    name: &'static str,
    ok: bool,
    detail: String,
    ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    tests::harness::install_crypto();
    let text = std::fs::read_to_string(&args.config)?;
    let base = args.config.parent().unwrap_or(std::path::Path::new("."));
    let cfg = Config::parse(&text, base)
        .map_err(|e| anyhow::anyhow!("{}: {}", args.config.display(), e.problems.join("; ")))?;
    let check = odoo_check::check(&cfg.odoo).await;
    if check.exit_code != 0 {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&json!({"check": check, "steps": [], "passed": false}))?);
        } else {
            println!("odoo check: {} (exit {})", check.verdict, check.exit_code);
        }
        return Ok(std::process::ExitCode::from(check.exit_code));
    }
    let odoo = OdooClient::new(&cfg.odoo)?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_uppercase();
    let mut steps = Vec::new();
    let product = smoke(&odoo, &run, cfg.odoo.mode, &mut steps).await;
    if let Some(id) = product {
        let t = Instant::now();
        let archived = odoo.execute_kw("product.product", "write", json!([[id], {"active": false}]), json!({})).await;
        steps.push(step("archive the smoke product", archived.map(|_| format!("product {id} archived")), t));
    }
    let passed = steps.iter().all(|s| s.ok);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"check": check, "run": run, "steps": steps, "passed": passed}))?
        );
    } else {
        println!("odoo check: {} ({} {})", check.verdict, check.url, check.database);
        for s in &steps {
            println!("{:4} {:<44} {:>6} ms  {}", if s.ok { "ok" } else { "FAIL" }, s.name, s.ms, s.detail);
        }
        println!("{}", if passed { "smoke test passed" } else { "smoke test FAILED" });
    }
    Ok(if passed { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

fn step<E: std::fmt::Display>(name: &'static str, outcome: Result<String, E>, t: Instant) -> Step {
    let ms = t.elapsed().as_millis() as u64;
    match outcome {
        Ok(detail) => Step { name, ok: true, detail, ms },
        Err(e) => Step { name, ok: false, detail: e.to_string(), ms },
    }
}

/// The steps; the id of the product made, if it was.
async fn smoke(odoo: &OdooClient, run: &str, mode: DeliveryMode, steps: &mut Vec<Step>) -> Option<i64> {
    let code = format!("HOLDFAST-SMOKE-{run}");
    let t = Instant::now();
    let made = odoo
        .execute_kw(
            "product.product",
            "create",
            json!([{"name": format!("Holdfast smoke {run}"), "default_code": code}]),
            json!({}),
        )
        .await;
    let id = made.as_ref().ok().and_then(Value::as_i64);
    steps.push(step("create a product of its own", made.map(|v| format!("product {v} ({code})")), t));
    let id = id?;
    match mode {
        DeliveryMode::Plain => {
            let t = Instant::now();
            let name = format!("Holdfast smoke {run} (plain)");
            let outcome = async {
                odoo.execute_kw("product.product", "write", json!([[id], {"name": name}]), json!({})).await?;
                let read = odoo.execute_kw("product.product", "read", json!([[id], ["name"]]), json!({})).await?;
                if read[0]["name"] == json!(name) {
                    Ok(format!("read back {name:?}"))
                } else {
                    Err(anyhow::anyhow!("read back {read}"))
                }
            }
            .await;
            steps.push(step("write, then read it back", outcome, t));
        }
        DeliveryMode::Inbox => inbox_steps(odoo, run, id, &code, steps).await,
    }
    Some(id)
}

async fn inbox_steps(odoo: &OdooClient, run: &str, id: i64, code: &str, steps: &mut Vec<Step>) {
    let (t1, t2, t3, t4) = (new_id(), new_id(), new_id(), new_id());
    let write = |id: &str, key: &str, target: Value, name: String| {
        json!({"id": id, "order_key": key, "model": "product.product", "method": "write",
               "args": [[target], {"name": name}], "kwargs": {}})
    };
    let batch = |items: Vec<Value>| async move {
        let answer =
            odoo.execute_kw("holdfast.inbox", "apply_batch", json!([items]), json!({"plant": "smoke-test"})).await?;
        let statuses: Vec<String> =
            answer.as_array().into_iter().flatten().map(|a| a["status"].as_str().unwrap_or("?").to_owned()).collect();
        Ok::<_, holdfast_hub::odoo::RpcError>((statuses, answer))
    };
    let t = Instant::now();
    let first = write(&t1, "smoke", json!(id), format!("Holdfast smoke {run} (inbox)"));
    let outcome =
        batch(vec![first.clone()]).await.map_err(anyhow::Error::from).and_then(|(s, a)| expect(&s, &["applied"], &a));
    steps.push(step("inbox: a transaction is applied", outcome, t));
    let t = Instant::now();
    let outcome = batch(vec![first]).await.map_err(anyhow::Error::from).and_then(|(s, a)| {
        expect(&s, &["duplicate"], &a)?;
        if a[0]["result"] == json!(true) {
            Ok("answered with the recorded result".to_owned())
        } else {
            Err(anyhow::anyhow!("{a}"))
        }
    });
    steps.push(step("inbox: sent again, it is a duplicate", outcome, t));
    let t = Instant::now();
    let by_ref = json!({"$ref": {"model": "product.product", "domain": [["default_code", "=", code]]}});
    let outcome = async {
        let (s, a) = batch(vec![write(&t2, "smoke", by_ref, format!("Holdfast smoke {run} (by reference)"))]).await?;
        expect(&s, &["applied"], &a)?;
        let read = odoo.execute_kw("product.product", "read", json!([[id], ["name"]]), json!({})).await?;
        if read[0]["name"] == json!(format!("Holdfast smoke {run} (by reference)")) {
            Ok(format!("$ref by default_code {code} resolved to {id}"))
        } else {
            Err(anyhow::anyhow!("read back {read}"))
        }
    }
    .await;
    steps.push(step("inbox: a $ref resolves in Odoo", outcome, t));
    let t = Instant::now();
    let private = json!({"id": t3, "order_key": "smoke-private", "model": "product.product", "method": "_unlink", "args": [[id]], "kwargs": {}});
    let behind = write(&t4, "smoke-private", json!(id), "never".into());
    let outcome = batch(vec![private, behind]).await.map_err(anyhow::Error::from).and_then(|(s, a)| {
        expect(&s, &["failed", "not_executed"], &a)?;
        match a[0]["error"]["name"].as_str() {
            Some("odoo.exceptions.AccessError") => Ok("AccessError, and the rest of its key not run".to_owned()),
            other => Err(anyhow::anyhow!("refused as {other:?}: {a}")),
        }
    });
    steps.push(step("inbox: a private method is refused", outcome, t));
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn expect(statuses: &[String], want: &[&str], answer: &Value) -> anyhow::Result<String> {
    if statuses == want {
        Ok(statuses.join(", "))
    } else {
        Err(anyhow::anyhow!("answered {answer}, expected {want:?}"))
    }
}
