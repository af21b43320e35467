//! `holdfast-demo`: the whole story on this machine, in about a minute.
//!
//! It starts its own Mosquitto broker, a primary and a disaster-recovery Odoo double, a hub, and
//! three plants' agents with producers on MQTT (plant-a), HTTP (plant-b) and a scanner station
//! over TCP (plant-c), all on loopback with fresh certificates. Then the primary Odoo fails: the
//! hub classifies the incident and holds every plant while the plants keep working; the operator
//! declares a failover to the disaster-recovery Odoo (restored from a backup older than the
//! outage), the hub applies again what that backup lost, and reopens the plants in waves. It ends
//! with a reconciliation per plant from the recovered Odoo's own record against every
//! acknowledgement a producer received; it exits 1 if anything is lost or doubled. With
//! `--keep-running` everything stays up to explore; otherwise everything it started is stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};
use tests::harness::{
    Broker, Env, OdooSim, VIEWER_TOKEN, hub_cli, mo_station, rfc3339, set_faults, test_reopening, wall,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(
    name = "holdfast-demo",
    about = "Runs Holdfast's whole story locally: an Odoo outage, a failover and a phased reopening"
)]
struct Args {
    /// Leave everything running after the story, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

/// The plants and how their producers reach the agent: plant-a counts up manufacturing orders
/// WH/MO/00001-3, plant-b 4-6, plant-c 7-9.
const PLANTS: [(&str, &str); 3] = [("plant-a", "MQTT"), ("plant-b", "HTTP"), ("plant-c", "TCP")];
/// Each producer sends this many transactions per tick.
const PER_TICK: u64 = 2;
const TICK: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(60);

/// A write of `qty` produced on manufacturing order `mo`, keyed.
fn progress(key: &str, mo: u32, qty: u64) -> Value {
    let name = format!("WH/MO/{mo:05}");
    json!({"key": key, "order_key": format!("mo:{name}"),
           "odoo": {"model": "mrp.production", "method": "write",
                    "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", name]]}}], {"qty_producing": qty as f64}]}})
}

/// What a producer was acknowledged: ids (HTTP), journal sequence numbers (the station's
/// `ACK <seq>`) or keys (MQTT, acknowledged by the broker, which the agent acknowledges only
/// after its commit).
#[derive(Debug, Default)]
struct Acks {
    ids: Vec<String>,
    seqs: Vec<u64>,
    keys: Vec<String>,
}

impl Acks {
    fn len(&self) -> usize {
        self.ids.len() + self.seqs.len() + self.keys.len()
    }
}

type Producer = JoinHandle<anyhow::Result<Acks>>;

/// Plant-a's presses publish to the plant's broker.
fn mqtt_producer(broker: Arc<Broker>, stop: Arc<AtomicBool>) -> Producer {
    tokio::spawn(async move {
        let mut acks = Acks::default();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut messages = Vec::new();
            for _ in 0..PER_TICK * 2 {
                n += 1;
                let key = format!("a-{n}");
                let body = progress(&key, 1 + (n % 3) as u32, n).to_string().into_bytes();
                messages.push(("holdfast/plant-a/mes/press-1".to_owned(), body));
                acks.keys.push(key);
            }
            broker.publish("press-1", messages).await;
            tokio::time::sleep(TICK * 2).await;
        }
        Ok(acks)
    })
}

/// Plant-b's MES posts to the agent's HTTP API.
fn http_producer(http: String, stop: Arc<AtomicBool>) -> Producer {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut acks = Acks::default();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let batch: Vec<Value> = (0..PER_TICK)
                .map(|_| {
                    n += 1;
                    let mut t = progress(&format!("b-{n}"), 4 + (n % 3) as u32, n);
                    t["source"] = json!("mes");
                    t["device"] = json!("line-4");
                    t
                })
                .collect();
            let resp = client.post(format!("http://{http}/v1/transactions")).json(&batch).send().await?;
            let status = resp.status();
            let answer: Value = resp.json().await?;
            if status != 202 {
                bail!("plant-b's agent answered {status}: {answer}");
            }
            for a in answer["accepted"].as_array().into_iter().flatten() {
                acks.ids.push(a["id"].as_str().context("an id")?.to_owned());
            }
            tokio::time::sleep(TICK).await;
        }
        Ok(acks)
    })
}

/// Plant-c's scanner station sends lines over TCP and reads `ACK <seq>` for each.
fn tcp_producer(station: String, stop: Arc<AtomicBool>) -> Producer {
    tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(&station).await?;
        let (r, mut w) = stream.into_split();
        let mut answers = BufReader::new(r).lines();
        let mut acks = Acks::default();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..PER_TICK {
                n += 1;
                w.write_all(format!("c-{n} WH/MO/{:05}*{n}\n", 7 + n % 3).as_bytes()).await?;
                let answer = answers.next_line().await?.context("the station closed")?;
                let seq = answer.strip_prefix("ACK ").with_context(|| format!("the station answered {answer}"))?;
                acks.seqs.push(seq.parse()?);
            }
            tokio::time::sleep(TICK).await;
        }
        Ok(acks)
    })
}

/// `[##########..........]` for `done` of `total`.
fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 24;
    let filled = if total == 0 { WIDTH } else { (done * WIDTH).div_ceil(total).min(WIDTH) };
    format!("[{}{}]", "#".repeat(filled as usize), ".".repeat((WIDTH - filled) as usize))
}

/// The story's timeline: what the demo does, and what the hub reports, as it happens.
struct Story<'a> {
    env: &'a Env,
    api: String,
    start: Instant,
    incidents: HashSet<(u64, bool)>,
    /// The plan and how much of its history was told.
    told: (u64, usize),
    last_bars: Instant,
}

impl<'a> Story<'a> {
    fn say(&self, what: &str) {
        println!("[{:>5.1}s] {what}", self.start.elapsed().as_secs_f64());
    }

    fn chapter(&self, title: &str) {
        println!("\n{title}");
    }

    /// Tells what changed at the hub since the last look: incidents opened and closed, and the
    /// reopening plan's steps.
    async fn follow(&mut self) {
        let status = self.env.get_json(&format!("http://{}/api/v1/status", self.api)).await;
        for (list, closed) in [("open", false), ("closed", true)] {
            for i in status["incidents"][list].as_array().into_iter().flatten() {
                let id = i["id"].as_u64().unwrap_or_default();
                if self.incidents.insert((id, closed)) {
                    let evidence = i["evidence"].as_array().and_then(|e| e.last()).and_then(Value::as_str);
                    let verb = if closed { "closed" } else { "opened" };
                    self.say(&format!(
                        "hub: incident #{id} {} {verb}{}",
                        i["class"].as_str().unwrap_or("?"),
                        evidence.filter(|_| !closed).map(|e| format!(": {}", brief(e))).unwrap_or_default()
                    ));
                }
            }
        }
        let plan = &status["plan"];
        if let Some(id) = plan["id"].as_u64() {
            if self.told.0 != id {
                self.told = (id, 0);
            }
            let history = plan["history"].as_array().cloned().unwrap_or_default();
            for step in history.iter().skip(self.told.1) {
                let what = step["what"].as_str().unwrap_or_default();
                // The drain limit's every step is the dashboard's business, not the story's.
                if !what.starts_with("drain limit") {
                    let stage = step["stage"].as_str().unwrap_or("?");
                    self.say(&format!("plan #{id} {stage}: {} ({})", brief(what), step["by"]));
                }
            }
            self.told.1 = history.len();
        }
    }

    /// Each plant's backlog at the hub as a bar: settled (applied or quarantined) of stored.
    async fn bars(&mut self) {
        self.last_bars = Instant::now();
        let plants = self.env.get_json(&format!("http://{}/api/v1/plants", self.api)).await;
        for p in plants["plants"].as_array().into_iter().flatten() {
            let stored = p["stored_seq"].as_u64().unwrap_or_default();
            let backlog = p["backlog"].as_u64().unwrap_or_default();
            let wave = p["wave"].as_u64().map(|w| format!(", wave {w}")).unwrap_or_default();
            println!(
                "          {} {} {:>5} stored, backlog {:>4}  {}{wave}",
                p["plant"].as_str().unwrap_or("?"),
                bar(stored.saturating_sub(backlog), stored),
                stored,
                backlog,
                p["reopening_state"].as_str().unwrap_or("?"),
            );
        }
    }

    /// Follows the hub until `check` holds, with the backlog bars every 2 s when `show_bars`.
    async fn until<T, F, Fut>(&mut self, what: &str, show_bars: bool, mut check: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            self.follow().await;
            if let Some(v) = check().await {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("gave up waiting for {what} after {WAIT:?}; the logs are in {}", self.env.path().display());
            }
            if show_bars && self.last_bars.elapsed() >= Duration::from_secs(2) {
                self.bars().await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// One plant's reconciliation, from the recovered Odoo's record and the hub's ledger against
/// what its producer was acknowledged.
#[derive(Debug, Default)]
struct Recon {
    acknowledged: usize,
    applied: usize,
    quarantined: usize,
    replayed: usize,
    lost: usize,
    duplicates: usize,
    in_order: bool,
}

/// Every ledger row of `plant`, through the API's pages.
async fn ledger(env: &Env, api: &str, plant: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut after = 0u64;
    loop {
        let page =
            env.get_json(&format!("http://{api}/api/v1/transactions?plant={plant}&limit=1000&after={after}")).await;
        rows.extend(page["transactions"].as_array().cloned().unwrap_or_default());
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => return rows,
        }
    }
}

/// What the story knows when it reconciles.
struct Books<'a> {
    env: &'a Env,
    api: &'a str,
    dr: &'a OdooSim,
    /// What the disaster-recovery Odoo held when restored, and what the primary had applied.
    dr_had: &'a HashSet<String>,
    primary_applied: &'a HashSet<String>,
}

impl Books<'_> {
    async fn reconcile(&self, acks: &BTreeMap<&str, Acks>) -> BTreeMap<String, Recon> {
        let applied = self.dr.applied(self.env).await;
        let mut out = BTreeMap::new();
        for (plant, acks) in acks {
            let rows = ledger(self.env, self.api, plant).await;
            let by_seq: HashMap<u64, &Value> = rows.iter().filter_map(|r| Some((r["seq"].as_u64()?, r))).collect();
            let by_key: HashMap<&str, &Value> =
                rows.iter().filter_map(|r| Some((r["transaction"]["key"].as_str()?, r))).collect();
            let by_id: HashMap<&str, &Value> = rows.iter().filter_map(|r| Some((r["id"].as_str()?, r))).collect();
            let mine: Vec<&Value> = applied.iter().filter(|a| a["plant"] == *plant).collect();
            let mut times: HashMap<&str, usize> = HashMap::new();
            for a in &mine {
                *times.entry(a["id"].as_str().unwrap_or_default()).or_default() += 1;
            }
            // Each acknowledgement, as the ledger row it became (none: lost on the way).
            let resolved: Vec<Option<&Value>> = acks
                .ids
                .iter()
                .map(|id| by_id.get(id.as_str()).copied())
                .chain(acks.seqs.iter().map(|s| by_seq.get(s).copied()))
                .chain(acks.keys.iter().map(|k| by_key.get(k.as_str()).copied()))
                .collect();
            let mut r = Recon { acknowledged: resolved.len(), in_order: in_order(&mine), ..Recon::default() };
            for row in resolved {
                let id = row.and_then(|row| row["id"].as_str()).unwrap_or_default();
                if times.contains_key(id) {
                    r.applied += 1;
                    if self.primary_applied.contains(id) && !self.dr_had.contains(id) {
                        r.replayed += 1;
                    }
                } else if row.is_some_and(|row| row["state"] == "quarantined") {
                    r.quarantined += 1;
                } else {
                    r.lost += 1;
                }
            }
            r.duplicates = times.values().map(|n| n - 1).sum();
            out.insert(plant.to_string(), r);
        }
        out
    }
}

/// Whether each manufacturing order's quantity only went up in Odoo's order of applying: the
/// producers count up, so any transaction applied out of its key's order would show.
fn in_order(applied: &[&Value]) -> bool {
    let mut last: HashMap<&str, f64> = HashMap::new();
    applied.iter().all(|a| {
        let qty = a["args"][1]["qty_producing"].as_f64().unwrap_or_default();
        let prev = last.insert(a["order_key"].as_str().unwrap_or_default(), qty);
        prev.is_none_or(|p| p < qty)
    })
}

fn reopening_config() -> String {
    // The test harness's quick windows and loose gates (a shared machine's latency must not
    // pause the story); the canary wave is plant-b, then plant-a, then plant-c.
    test_reopening("canary_plant = \"plant-b\"\nsoak = \"2s\"", &[("plant-b", 1), ("plant-a", 2), ("plant-c", 3)])
}

fn check_broker() -> anyhow::Result<()> {
    let found = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].iter().any(|p| std::path::Path::new(p).exists())
        || std::process::Command::new("mosquitto").arg("-h").output().is_ok();
    if !found {
        bail!(
            "the demo starts its own Mosquitto broker for plant-a's MQTT producers: install it (apt-get install mosquitto)"
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_broker()?;
    let plants: Vec<&str> = PLANTS.iter().map(|p| p.0).collect();
    let env = Env::new(&plants);
    println!("Holdfast demo: every process's config and log lives in {}\n", env.path().display());
    let broker = Arc::new(Broker::start(env.path(), &["press-1"]).await);
    let primary = env.odoo_sim("primary").await;
    let config: PathBuf = env.hub_config(&primary.url, "127.0.0.1:0", "", &reopening_config());
    let hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let a = env.agent_with("plant-a", &hub.field("sync"), &broker.agent_table("plant-a")).await;
    let b = env.agent("plant-b", &hub.field("sync")).await;
    let c = env.agent_with("plant-c", &hub.field("sync"), &mo_station("line-7")).await;
    let (admin, admin_file) = env.bootstrap_admin(&config, &api).await;
    println!("  primary Odoo (double)       {}", primary.url);
    println!("  hub                         sync (QUIC) {}, API http://{api}/api/v1", hub.field("sync"));
    println!("  dashboard                   http://{api}/#token={VIEWER_TOKEN}");
    println!("  plant-a  MQTT  broker 127.0.0.1:{} -> agent, status http://{}/v1/status", broker.port, a.field("http"));
    println!("  plant-b  HTTP  POST http://{}/v1/transactions", b.field("http"));
    println!("  plant-c  TCP   scanner station {}", c.field("station:line-7"));

    let mut story = Story {
        env: &env,
        api: api.clone(),
        start: Instant::now(),
        incidents: HashSet::new(),
        told: (0, 0),
        last_bars: Instant::now(),
    };
    let a_http = a.field("http");
    story
        .until("plant-a's MQTT subscription", false, || async {
            (env.agent_status(&a_http).await["mqtt"]["subscribed"] == true).then_some(())
        })
        .await?;
    let status_url = format!("http://{api}/api/v1/status");
    let verdict = || async { env.get_json(&status_url).await["odoo"]["verdict"].as_str().map(str::to_owned) };

    story.chapter("1. A normal shift: three plants, three protocols, one Odoo");
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<(&str, Producer)> = vec![
        ("plant-a", mqtt_producer(broker.clone(), stop.clone())),
        ("plant-b", http_producer(b.field("http"), stop.clone())),
        ("plant-c", tcp_producer(c.field("station:line-7"), stop.clone())),
    ];
    story.say("producers started: 20 transactions a second per plant, each acknowledged after the agent's commit");
    // A transaction Odoo refuses: no such manufacturing order. It waits in quarantine, holding
    // back only its own ordering key.
    let mut typo = progress("b-typo", 99_999, 1);
    typo["source"] = json!("mes");
    typo["device"] = json!("line-4");
    let (_, bad) = env.post(&b.field("http"), &typo).await;
    let bad_id = bad["accepted"][0]["id"].as_str().with_context(|| format!("the typo's answer: {bad}"))?.to_owned();
    story.say("plant-b's MES also reports progress on WH/MO/99999, which does not exist in Odoo");
    let primary_count = || async { primary.applied(&env).await.len() };
    story.until("the first hundreds applied", false, || async { (primary_count().await >= 300).then_some(()) }).await?;
    let record = env.get_json(&format!("{}/holdfast-sim/applied", primary.url)).await;
    let recovery_commits = record["commits"].as_u64().context("the primary's commits")?;
    let recovery_point = wall().replace_nanosecond(0).context("a time")?;
    story.say(&format!(
        "primary Odoo: {} transactions applied; its backup is taken now ({} commits, {}), the one the disaster-recovery Odoo will be restored from",
        primary_count().await,
        recovery_commits,
        rfc3339(recovery_point)
    ));
    let after_backup = primary_count().await;
    story
        .until("more applied after the backup", false, || async {
            (primary_count().await >= after_backup + 300).then_some(())
        })
        .await?;

    story.chapter("2. The primary Odoo fails; the plants keep working");
    set_faults(&primary.url, json!({"refuse": true})).await;
    story.say("primary Odoo: every connection refused from now on");
    story
        .until("the hub to see Odoo unreachable", true, || async {
            (verdict().await.as_deref() == Some("unreachable")).then_some(())
        })
        .await?;
    let held = story
        .until("every plant held", true, || async {
            let plants = env.get_json(&format!("http://{api}/api/v1/plants")).await;
            let all = plants["plants"].as_array()?;
            all.iter().all(|p| p["reopening_state"] == "held").then_some(all.len())
        })
        .await?;
    story.say(&format!("hub: all {held} plants held; the agents keep acknowledging, the hub keeps storing"));
    let stored_at_hold: u64 = ledger_total(&env, &api).await;
    story
        .until("the backlog to grow", true, || async {
            (ledger_total(&env, &api).await >= stored_at_hold + 240).then_some(())
        })
        .await?;
    story.bars().await;

    story.chapter("3. Failover to the disaster-recovery Odoo, restored from the backup");
    let primary_final: Vec<Value> = primary.applied(&env).await;
    let primary_applied: HashSet<String> =
        primary_final.iter().filter_map(|a| a["id"].as_str().map(str::to_owned)).collect();
    let dr = env.odoo_sim_with("dr", &["--snapshot-of", &primary.url, "--as-of", &recovery_commits.to_string()]).await;
    let dr_had: HashSet<String> =
        dr.applied(&env).await.iter().filter_map(|a| a["id"].as_str().map(str::to_owned)).collect();
    story.say(&format!(
        "disaster-recovery Odoo up at {}: it holds {} of the {} transactions the primary applied",
        dr.url,
        dr_had.len(),
        primary_applied.len()
    ));
    let rp = rfc3339(recovery_point);
    let failover = [
        "incident",
        "failover",
        "--odoo-url",
        &dr.url,
        "--recovery-point",
        &rp,
        "--margin",
        "2s",
        "--reason",
        "primary lost, DR restored from its backup",
    ];
    story.say(&format!("operator: holdfast-hub {}", shown(&failover)));
    let (code, out, err) = hub_cli(&config, &api, &failover, Some(&admin_file)).await;
    if code != 0 {
        bail!("the failover was refused: {err}");
    }
    story.say(&format!("hub: {}", out.trim().replace('\n', "\n          ")));
    story
        .until("the hub's probe to find the recovered Odoo usable", false, || async {
            (verdict().await.as_deref() == Some("reachable")).then_some(())
        })
        .await?;
    let start = ["reopen", "start", "--reason", "DR is up, change 4712"];
    story.say(&format!("operator: holdfast-hub {}", shown(&start)));
    let (code, _, err) = hub_cli(&config, &api, &start, Some(&admin_file)).await;
    if code != 0 {
        bail!("the plan did not start: {err}");
    }
    // The old primary comes back: fenced, it must never be written again.
    set_faults(&primary.url, json!({})).await;
    story.say("the old primary answers again; the hub is fenced off it");

    story.chapter("4. The phased reopening: the canary plant, then the others wave by wave");
    let reopening_url = format!("http://{api}/api/v1/reopening");
    story
        .until("the plan to complete", true, || async {
            (env.get_json(&reopening_url).await["plan"]["stage"]["stage"] == "completed").then_some(())
        })
        .await?;
    stop.store(true, Ordering::Relaxed);
    let mut acks: BTreeMap<&str, Acks> = BTreeMap::new();
    for (plant, producer) in producers {
        acks.insert(plant, producer.await??);
    }
    acks.get_mut("plant-b").context("plant-b")?.ids.push(bad_id);
    story.say(&format!(
        "end of shift: the producers stop after {} acknowledged transactions",
        acks.values().map(Acks::len).sum::<usize>()
    ));
    let checker = Books { env: &env, api: &api, dr: &dr, dr_had: &dr_had, primary_applied: &primary_applied };
    let books = story
        .until("every acknowledged transaction settled in the recovered Odoo", true, || async {
            let books = checker.reconcile(&acks).await;
            books.values().all(|r| r.lost == 0).then_some(books)
        })
        .await?;
    story.bars().await;
    let old_primary = primary.applied(&env).await.len();

    story.chapter("5. Reconciliation, from the recovered Odoo's own record");
    println!(
        "  {:<8} {:<5} {:>12} {:>8} {:>11} {:>9} {:>5} {:>10}  in order",
        "plant", "via", "acknowledged", "applied", "quarantined", "replayed", "lost", "duplicates"
    );
    for ((plant, via), (_, r)) in PLANTS.iter().zip(&books) {
        println!(
            "  {plant:<8} {via:<5} {:>12} {:>8} {:>11} {:>9} {:>5} {:>10}  {}",
            r.acknowledged,
            r.applied,
            r.quarantined,
            r.replayed,
            r.lost,
            r.duplicates,
            if r.in_order { "yes" } else { "NO" }
        );
    }
    let writes_since = old_primary.saturating_sub(primary_final.len());
    println!("  the old primary: {writes_since} writes since the failover (fenced)");
    let sound = books.values().all(|r| r.lost == 0 && r.duplicates == 0 && r.in_order) && writes_since == 0;

    if args.keep_running {
        println!(
            "\nEverything keeps running; try:\n  the dashboard: http://{api}/#token={VIEWER_TOKEN}\n  \
             curl -s -H 'Authorization: Bearer {admin}' http://{api}/api/v1/status\n  \
             curl -s http://{}/v1/status\nCtrl-C ends the demo.",
            b.field("http")
        );
        tokio::signal::ctrl_c().await?;
    }
    for agent in [a, b, c] {
        agent.stop().await;
    }
    hub.stop().await;
    drop(broker);
    if !sound {
        bail!("the reconciliation does not add up; the logs are in {}", env.path().display());
    }
    println!("\nDone: nothing acknowledged was lost, nothing was applied twice.");
    Ok(())
}

/// Everything the hub has stored, over all plants.
async fn ledger_total(env: &Env, api: &str) -> u64 {
    let plants = env.get_json(&format!("http://{api}/api/v1/plants")).await;
    plants["plants"].as_array().into_iter().flatten().filter_map(|p| p["stored_seq"].as_u64()).sum()
}

/// `text` cut to one readable line.
fn brief(text: &str) -> String {
    const MAX: usize = 150;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// A command line as an operator would type it.
fn shown(args: &[&str]) -> String {
    args.iter()
        .map(|a| if a.contains(' ') { format!("\"{a}\"") } else { (*a).to_owned() })
        .collect::<Vec<_>>()
        .join(" ")
}
