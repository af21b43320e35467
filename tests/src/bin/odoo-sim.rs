//! `odoo-sim --listen 127.0.0.1:8069`: the Odoo double as a process.

use clap::Parser;
use tests::odoo_sim::{self, SimConfig, Version};

#[derive(Debug, Parser)]
#[command(name = "odoo-sim", about = "An Odoo double that follows ODOO.md, for Holdfast's tests and demo")]
struct Args {
    /// Address to listen on; port 0 picks a free one (the address is printed).
    #[arg(long, default_value = "127.0.0.1:8069")]
    listen: std::net::SocketAddr,
    /// Odoo version to behave as: 16.0, 17.0 or 18.0.
    #[arg(long = "odoo-version", default_value = "17.0", value_parser = |s: &str| Version::parse(s).ok_or_else(|| format!("{s:?}: use 16.0, 17.0 or 18.0")))]
    version: Version,
    #[arg(long, default_value = "holdfast")]
    database: String,
    #[arg(long, default_value = "holdfast-hub")]
    login: String,
    #[arg(long, default_value = "0f3b8e1c4d2a6f9e7b5c3a1d8e6f4b2c9a7d5e3f")]
    api_key: String,
    /// Manufacturing orders WH/MO/00001 onwards in the seeded database.
    #[arg(long, default_value_t = 200)]
    manufacturing_orders: i64,
    /// Behave as an Odoo without the holdfast_inbox addon (its module uninstalled).
    #[arg(long)]
    without_inbox: bool,
    /// The capacity model: this many workers (none: every call answers at once).
    #[arg(long)]
    workers: Option<usize>,
    /// Service time of a call.
    #[arg(long, default_value = "4ms", value_parser = humantime::parse_duration)]
    per_call: std::time::Duration,
    /// Service time added per operation (an inbox batch's transaction).
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    per_operation: std::time::Duration,
    /// A call served longer than this is killed without an answer (its effect stays).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    limit_time_real: std::time::Duration,
    /// Chance, per record another call committed while a call ran, that the call fails with
    /// SerializationFailure (0 never, 1 always).
    #[arg(long, default_value_t = 0.5)]
    serialization_rate: f64,
    /// Start as a copy of the double at this URL, as of one of its commits (a disaster-recovery
    /// Odoo holding the primary's data up to its recovery point).
    #[arg(long)]
    snapshot_of: Option<String>,
    /// With --snapshot-of: how many of the primary's commits to hold (default: all).
    #[arg(long, requires = "snapshot_of")]
    as_of: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tests::harness::install_crypto();
    let snapshot = match &args.snapshot_of {
        None => None,
        Some(primary) => {
            let mut url = reqwest::Url::parse(&format!("{}/holdfast-sim/snapshot", primary.trim_end_matches('/')))?;
            if let Some(n) = args.as_of {
                url.query_pairs_mut().append_pair("as_of", &n.to_string());
            }
            let resp = reqwest::get(url).await?.error_for_status()?;
            Some(resp.json::<odoo_sim::Snapshot>().await?)
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("odoo-sim listening on http://{}", listener.local_addr()?);
    let cfg = SimConfig {
        version: args.version,
        database: args.database,
        login: args.login,
        api_key: args.api_key,
        manufacturing_orders: args.manufacturing_orders,
        inbox_installed: !args.without_inbox,
        capacity: args.workers.map(|workers| odoo_sim::capacity::Capacity {
            workers,
            per_call: args.per_call,
            per_operation: args.per_operation,
            limit_time_real: args.limit_time_real,
        }),
        serialization_rate: args.serialization_rate,
        snapshot,
        virtual_time: false,
    };
    odoo_sim::serve(listener, cfg).await?;
    Ok(())
}
