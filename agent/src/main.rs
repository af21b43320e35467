//! `holdfast-agent`: the command line. Configuration is read here and nowhere below.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use holdfast_agent::config::Config;
use holdfast_agent::journal::{self, Reader, Usage, disk_free};
use holdfast_agent::mode::ManualKind;
use holdfast_agent::status::{Inputs, LinkState, Status};
use holdfast_agent::{control, http, run};

#[derive(Debug, Parser)]
#[command(
    name = "holdfast-agent",
    version,
    about = "Holdfast agent: journals shop-floor transactions and syncs them to the hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the agent.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Checks a config file and reports every problem (certificates included).
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
        /// Also connect to the hub: a real handshake, and which step failed (DNS, UDP, the
        /// certificates, a revocation).
        #[arg(long)]
        connect: bool,
    },
    /// Shows where the gateway stands: from the running agent, or from its journal if stopped.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Plant IT's manual offline: no uploads (the link stays up), or isolated: no traffic at all.
    /// Works whether or not the agent runs; every change is journaled as an audit record.
    Offline {
        #[command(subcommand)]
        command: OfflineCommand,
    },
    /// The journal's transactions.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Producer tokens for the HTTP API.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Payloads that could not be transactions, kept with their raw bytes.
    Rejected {
        #[command(subcommand)]
        command: RejectedCommand,
    },
    /// The gateway's identity towards the hub.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Makes this gateway's key (it never leaves the gateway) and a signing request to send to
    /// the hub's operators, who sign it with `holdfast-hub certs sign`.
    Request {
        #[arg(long)]
        plant: String,
        /// Where to write `<plant>.key` and `<plant>.csr`.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum OfflineCommand {
    /// Switches the plant off.
    On {
        #[arg(long, short)]
        config: PathBuf,
        /// Why, for the audit trail and everyone who looks at the plant.
        #[arg(long)]
        reason: String,
        /// Ends by itself after this long, such as "2h".
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// No traffic at all (containment), instead of only no uploads.
        #[arg(long)]
        isolate: bool,
    },
    /// Switches the plant back on.
    Off {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum JournalCommand {
    /// Writes every held transaction as one JSON object per line (NDJSON), oldest first.
    Export {
        #[arg(long, short)]
        config: PathBuf,
        /// Start at this sequence.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Makes a new random token; prints it once, with the [[http.tokens]] entry to add.
    New {
        /// Who will hold it, such as "mes-line-3".
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum RejectedCommand {
    /// Lists the newest rejected payloads, newest first.
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// How many, at most.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Exit status for a bad configuration: 64, as linkerd2-proxy does after reporting every problem.
const EXIT_CONFIG: u8 = 64;
/// Exit status when the hub cannot be reached (sysexits' EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// How long `check-config --connect` waits for the hub's handshake.
const CONNECT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it then watches for the hub closing the connection (a revoked certificate).
const CONNECT_CHECK_SETTLE: Duration = Duration::from_secs(1);

/// mimalloc rather than glibc's malloc: under load, allocation and freeing were a third of the
/// agent's instructions (BENCHMARKS.md, the callgrind profile of ingest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its arenas eagerly by default and keeps those pages resident: the agent
/// peaked at 50 MiB during an upload with it and at 19 MiB without (BENCHMARKS.md). mimalloc
/// reads its options from the environment when it starts, before `main`, and code here may not
/// call it directly (no unsafe code), so the process sets the option and executes itself again,
/// once, keeping its pid, arguments and file descriptors.
fn allocator_settings() {
    use std::os::unix::process::CommandExt;
    const OPTION: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    if std::env::var_os(OPTION).is_none()
        && let Ok(exe) = std::env::current_exe()
    {
        let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env(OPTION, "0").exec();
        eprintln!("warning: could not restart with {OPTION}=0 ({err}); running with mimalloc's defaults");
    }
}

fn main() -> ExitCode {
    allocator_settings();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HOLDFAST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // A panic anywhere ends the process, after its message: a service left half alive (a task
    // gone, a lock poisoned) would keep answering while doing nothing. The service manager
    // restarts it (Restart=on-failure, or Kubernetes); everything acknowledged is durable.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    if let Command::Certs { command: CertsCommand::Request { plant, dir } } = &cli.command {
        return match holdfast_agent::enrol::request(dir, plant) {
            Ok((key, csr)) => {
                println!("key (stays on this gateway, mode 0600): {}", key.display());
                println!("signing request (send it to the hub's operators): {}", csr.display());
                println!("they run: holdfast-hub certs sign --dir <ca dir> --plant {plant} --csr {plant}.csr");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("holdfast-agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Token { command: TokenCommand::New { name } } = &cli.command {
        // 244 random bits from the operating system's generator.
        let token = format!("hft_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        println!("token for {name} (shown once; give it to the producer):\n  {token}\n");
        println!(
            "add to the agent's config:\n[[http.tokens]]\nname = {name:?}\nsha256 = \"{}\"",
            http::token_digest(&token)
        );
        return ExitCode::SUCCESS;
    }
    let (Command::Run { config }
    | Command::CheckConfig { config, .. }
    | Command::Status { config, .. }
    | Command::Rejected { command: RejectedCommand::List { config, .. } }
    | Command::Journal { command: JournalCommand::Export { config, .. } }
    | Command::Offline { command: OfflineCommand::On { config, .. } | OfflineCommand::Off { config, .. } }) =
        &cli.command
    else {
        unreachable!("token and certs commands returned above");
    };
    let (cfg, text) = match load(config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::CheckConfig { config, connect } => {
            let problems = certificate_problems(&cfg, run::now_ms() / 1000);
            if !problems.is_empty() {
                for p in problems {
                    eprintln!("holdfast-agent: {}: {p}", config.display());
                }
                return ExitCode::from(EXIT_CONFIG);
            }
            println!("{}: ok", config.display());
            if connect {
                // Every address is checked: each replica must let this gateway in.
                let Ok(rt) = runtime() else { return ExitCode::FAILURE };
                let mut code = ExitCode::SUCCESS;
                for (i, address) in cfg.hub.addresses.iter().enumerate() {
                    match rt.block_on(connect_check(&cfg, i)) {
                        Ok(said) => println!("hub {address}: {said}"),
                        Err(e) => {
                            eprintln!("holdfast-agent: hub {address}: {e}");
                            code = ExitCode::from(EXIT_UNAVAILABLE);
                        }
                    }
                }
                return code;
            }
            Ok(())
        }
        Command::Run { config } => runtime().and_then(|rt| rt.block_on(serve(cfg, &config, &text))),
        Command::Status { json, .. } => runtime().and_then(|rt| rt.block_on(status(cfg, json))),
        Command::Rejected { command: RejectedCommand::List { limit, json, .. } } => rejected_list(&cfg, limit, json),
        Command::Journal { command: JournalCommand::Export { from, .. } } => journal_export(&cfg, from),
        Command::Offline { command } => offline(&cfg, command),
        Command::Token { .. } | Command::Certs { .. } => unreachable!("handled before the config is read"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdfast-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The config and the text it was read from (a reload compares against it).
fn load(path: &Path) -> Result<(Config, String), ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!("holdfast-agent: {}: {e}", path.display());
        ExitCode::from(EXIT_CONFIG)
    })?;
    let cfg = Config::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| {
        for problem in e.problems {
            eprintln!("holdfast-agent: {}: {problem}", path.display());
        }
        ExitCode::from(EXIT_CONFIG)
    })?;
    Ok((cfg, text))
}

async fn serve(cfg: Config, path: &Path, started: &str) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM right after the ready line must mean a clean shutdown, not the
    // signal's default action; a SIGHUP a reload.
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let mut hup = signal(SignalKind::hangup())?;
    let mut agent = run::start(cfg.clone()).await?;
    // The harness and plant IT read this line: the address actually bound.
    let stations: String = agent.station_addrs.iter().map(|(name, addr)| format!(" station:{name}={addr}")).collect();
    let metrics = agent.metrics_addr.map(|a| format!(" metrics={a}")).unwrap_or_default();
    println!("holdfast-agent ready http={}{stations}{metrics}", agent.http_addr);
    // systemd (Type=notify): ready once the journal is open and every listener is bound.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                let result = holdfast_agent::reload::reload(&agent.shared, path, started, &cfg)
                    .map_err(|e| format!("{e:#}"));
                let line = holdfast_protocol::reload::summary(&result);
                match result {
                    Ok(_) => tracing::info!("{line}"),
                    Err(_) => tracing::error!("{line}"),
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&line)]);
            }
            _ = agent.wait() => anyhow::bail!("an agent task stopped unexpectedly"),
        }
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    agent.shutdown().await;
    Ok(())
}

/// Asks the running agent; if none answers, reads the journal file directly.
async fn status(cfg: Config, json: bool) -> anyhow::Result<()> {
    let url = format!("http://{}/v1/status", cfg.http.listen);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?;
    let live: Option<serde_json::Value> = match client.get(&url).send().await {
        Ok(resp) if resp.status().is_success() => resp.json().await.ok(),
        _ => None,
    };
    let value = match live {
        Some(v) => v,
        None => {
            let reader = Reader::open(&cfg.journal.path)?;
            let state = reader.state().await?;
            let (rows, bytes) = reader.count_blocking()?;
            let dir = cfg.journal.path.parent().unwrap_or(Path::new("."));
            let rejected = reader.rejected_count_blocking()?;
            let manual = reader.manual_blocking()?;
            let usage = Usage { rows, bytes, disk_free: disk_free(dir), rejected, ..Usage::default() };
            let link =
                LinkState { connected: false, since_ms: None, last_error: Some("the agent is not running".into()) };
            serde_json::to_value(Status::new(Inputs {
                plant: &cfg.plant,
                path: &cfg.journal.path.display().to_string(),
                hub_address: &cfg.hub.addresses.join(", "),
                journal: &state,
                usage: &usage,
                limits: &cfg.journal.limits(),
                link: &link,
                mqtt: None,
                reopening: None,
                manual: manual.as_ref(),
                ingested: None,
                quarantined: Vec::new(),
                odoo: None,
                now_ms: run::now_ms(),
                running: false,
            }))?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let get = |p: &str| value.pointer(p).map(|v| v.to_string()).unwrap_or_default();
        println!("plant      {}", get("/plant").trim_matches('"'));
        println!(
            "mode       {}{}",
            get("/mode").trim_matches('"'),
            if value["running"] == false { " (agent stopped)" } else { "" }
        );
        println!("backlog    {} not yet in Odoo, {} not yet at the hub", get("/backlog"), get("/unsent"));
        println!(
            "journal    last seq {}, {} rows held ({} bytes)",
            get("/journal/last_seq"),
            get("/journal/rows"),
            get("/journal/bytes")
        );
        let ttf = value
            .pointer("/capacity/time_to_full_s")
            .and_then(|v| v.as_u64())
            .map_or("not filling".to_owned(), |s| format!("full in about {s} s"));
        println!(
            "capacity   {} of {} rows, {} transactions/s, {ttf}",
            get("/journal/rows"),
            get("/capacity/rows_max"),
            get("/capacity/rate_per_s")
        );
        for alarm in value["alarms"].as_array().into_iter().flatten() {
            println!(
                "ALARM      {}: {}",
                alarm["name"].as_str().unwrap_or("?"),
                alarm["message"].as_str().unwrap_or("")
            );
        }
        println!(
            "hub        {} stored {} applied {}",
            get("/hub/address").trim_matches('"'),
            get("/hub/stored_seq"),
            get("/hub/applied_seq")
        );
        if let Some(e) = value.pointer("/hub/last_error").and_then(|v| v.as_str()) {
            println!("last error {e}");
        }
        if let Some(m) = value.get("mqtt").filter(|m| m.is_object()) {
            let state = match (m["connected"].as_bool(), m["subscribed"].as_bool()) {
                (Some(true), Some(true)) => "connected, subscribed",
                (Some(true), _) => "connected, not subscribed yet",
                _ => "disconnected",
            };
            println!(
                "mqtt       {} {state}, {} publishes journaled",
                m["broker"].as_str().unwrap_or("?"),
                m["journaled"]
            );
            if let Some(e) = m["last_error"].as_str() {
                println!("mqtt error {e}");
            }
        }
    }
    Ok(())
}

/// Reads the journal file directly: works whether or not the agent runs.
fn rejected_list(cfg: &Config, limit: usize, json: bool) -> anyhow::Result<()> {
    let reader = Reader::open(&cfg.journal.path)?;
    let total = reader.rejected_count_blocking()?;
    let items = reader.rejected_blocking(limit)?;
    for r in &items {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!("{}  {}  {}  {}", r.at_ms, r.ingest, r.topic, r.reason);
        }
    }
    if !json {
        println!("{} shown, {total} rejected in all", items.len());
    }
    Ok(())
}

/// Renew a certificate this close to its expiry.
const CERT_RENEW_BEFORE_S: i64 = 30 * 24 * 3600;

/// What is wrong with the client certificate: unreadable, for another plant, or expiring soon.
fn certificate_problems(cfg: &Config, now_s: i64) -> Vec<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let path = cfg.hub.cert.display();
    let leaf = match CertificateDer::pem_file_iter(&cfg.hub.cert).map(|mut certs| certs.next()) {
        Ok(Some(Ok(leaf))) => leaf,
        Ok(_) => return vec![format!("hub.cert: {path} holds no certificate")],
        Err(e) => return vec![format!("hub.cert: {path}: {e}")],
    };
    let mut problems = Vec::new();
    match holdfast_protocol::identity::plant_of(&leaf) {
        Ok(plant) if plant == cfg.plant => {}
        Ok(plant) => problems.push(format!("hub.cert: {path} is for plant {plant:?}, but plant is {:?}", cfg.plant)),
        Err(e) => problems.push(format!("hub.cert: {path}: {e}")),
    }
    if let Ok(not_after) = holdfast_protocol::identity::not_after(&leaf) {
        // Whole days, rounded to the nearest.
        let days = (not_after - now_s + 12 * 3600).div_euclid(24 * 3600);
        if not_after <= now_s {
            problems.push(format!("hub.cert: {path} expired {} days ago: issue a new one", -days));
        } else if not_after - now_s < CERT_RENEW_BEFORE_S {
            problems.push(format!("hub.cert: {path} expires in {days} days: renew it (within 30 days of expiry)"));
        }
    }
    problems
}

/// One real handshake with the hub, step by step: what the plant's network and certificates
/// allow, without uploading anything.
async fn connect_check(cfg: &Config, index: usize) -> Result<String, String> {
    let address = cfg.hub.resolve(index).await?;
    let endpoint = holdfast_agent::uplink::endpoint(&cfg.plant, &cfg.hub).map_err(|e| format!("{e:#}"))?;
    let connecting = endpoint.connect(address, &cfg.hub.server_name).map_err(|e| format!("cannot connect: {e}"))?;
    let conn = match tokio::time::timeout(CONNECT_CHECK_TIMEOUT, connecting).await {
        Err(_) => {
            return Err(format!(
                "no answer from {address} over UDP within {} s: a firewall blocks UDP to port {}, or the hub is down",
                CONNECT_CHECK_TIMEOUT.as_secs(),
                address.port()
            ));
        }
        Ok(Err(e)) => {
            return Err(format!("the TLS handshake failed ({e}): check hub.ca, hub.cert, hub.key and hub.server_name"));
        }
        Ok(Ok(conn)) => conn,
    };
    // TLS 1.3 finishes on this side before the hub has checked this certificate: give the hub a
    // moment to refuse it (a foreign authority, an expired or revoked certificate).
    match tokio::time::timeout(CONNECT_CHECK_SETTLE, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            Err(format!("the hub refused this gateway: {}", String::from_utf8_lossy(&c.reason)))
        }
        Ok(e) => Err(format!("the hub refused this gateway's certificate: {e}")),
        Err(_) => {
            conn.close(0u32.into(), b"check-config");
            endpoint.wait_idle().await;
            Ok(format!("reached at {address}; the hub accepted this gateway's certificate for plant {}", cfg.plant))
        }
    }
}

/// Rows read from the journal per query while exporting.
const EXPORT_PAGE_ROWS: usize = 10_000;

/// Reads the journal file directly: works whether or not the agent runs. A row whose checksum
/// fails is exported with its error instead of its transaction, never silently.
fn journal_export(cfg: &Config, from: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let reader = Reader::open(&cfg.journal.path)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut after = from.saturating_sub(1);
    loop {
        let page = reader.read_blocking(after, EXPORT_PAGE_ROWS)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for record in &page {
            let line = match record.verify() {
                Ok(txn) => serde_json::json!({"seq": record.seq, "crc": record.crc, "transaction": txn}),
                Err(e) => serde_json::json!({"seq": record.seq, "crc": record.crc, "error": e.to_string()}),
            };
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn offline(cfg: &Config, command: OfflineCommand) -> anyhow::Result<()> {
    let request = match command {
        OfflineCommand::On { reason, duration, isolate, .. } => control::Request {
            kind: Some(if isolate { ManualKind::Isolated } else { ManualKind::Offline }),
            why: reason,
            for_ms: duration.map(|d| d.as_millis() as i64),
        },
        OfflineCommand::Off { reason, .. } => control::Request { kind: None, why: reason, for_ms: None },
    };
    anyhow::ensure!(!request.why.trim().is_empty(), "--reason: say why, for the audit trail");
    let socket = cfg.control_socket();
    let (state, who, how) = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(stream) => {
            use std::io::{BufRead, Write};
            let mut writer = stream.try_clone()?;
            writeln!(writer, "{}", serde_json::to_string(&request)?)?;
            let mut line = String::new();
            std::io::BufReader::new(stream).read_line(&mut line)?;
            let answer: control::Answer = serde_json::from_str(&line)?;
            if let Some(e) = answer.error.filter(|_| !answer.ok) {
                anyhow::bail!("the agent refused: {e}");
            }
            (answer.state, answer.who, "through the running agent")
        }
        // No agent answers: record it in the journal, where the agent finds it when it starts.
        Err(_) => {
            let who = control::user_name(rustix::process::getuid().as_raw());
            let (state, audit) = request.change(&who, run::now_ms());
            journal::set_manual_direct(&cfg.journal.path, state.as_ref(), &audit)?;
            (state, who, "in the journal; the agent is not running and applies it when it starts")
        }
    };
    match &state {
        Some(m) => println!(
            "plant {} is {} by {who}, recorded {how}: {}{}",
            cfg.plant,
            if m.kind == ManualKind::Isolated { "isolated" } else { "manually offline" },
            m.why,
            m.until_ms.map_or(String::new(), |u| format!(", until {u} (Unix ms)"))
        ),
        None => println!("plant {} is back on by {who}, recorded {how}", cfg.plant),
    }
    Ok(())
}
