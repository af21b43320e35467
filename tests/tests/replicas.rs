//! Two hub replicas on one PostgreSQL store, three agents given both addresses, and an Odoo
//! double with the inbox. The leader (the replica holding the lease, the only one calling
//! Odoo) is SIGKILLed in the middle of a phased reopening, twice, and during a heavy backlog
//! drain, twice; then partitioned from the database through a TCP proxy. Each time the other
//! replica takes over within the lease time plus 5 seconds (measured on the lease row), the
//! killed one comes back as a follower, and at the end every transaction an agent acknowledged
//! is applied exactly once in the double, in order per ordering key, and no batch of a deposed
//! leader was applied (the double applies nothing under an epoch older than the newest it saw,
//! and records what it refused). The partitioned leader fences itself before its lease expires
//! and exits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{
    Env, PgDb, Proc, bin, free_port, hub_cli, plan_stage as stage, set_faults, test_reopening, wait_for,
};
use tests::netfault::TcpProxy;

const LEASE: Duration = Duration::from_secs(3);
/// How long a takeover may take after the leader is gone: the bound.
const TAKEOVER_MAX: Duration = Duration::from_secs(3 + 5);
const WAIT: Duration = Duration::from_secs(90);
const PLANTS: [&str; 3] = ["plant-a", "plant-b", "plant-c"];

/// One hub replica: its config, fixed addresses (agents and followers know them), and its
/// own proxy to PostgreSQL.
struct Replica {
    name: &'static str,
    config: PathBuf,
    sync: String,
    api: String,
    proxy: TcpProxy,
    proc: Option<Proc>,
    starts: u32,
}

impl Replica {
    async fn start(&mut self, env: &Env) {
        self.starts += 1;
        let log = env.path().join(format!("{}.{}.log", self.name, self.starts));
        self.proc = Some(
            Proc::spawn(
                &bin("holdfast-hub"),
                &["run", "--config", self.config.to_str().unwrap()],
                log,
                "holdfast-hub ready",
            )
            .await,
        );
    }

    async fn kill(&mut self) {
        self.proc.take().expect("running").kill().await;
    }
}

/// The lease row: holder, epoch, and whether it is still valid.
async fn lease(db: &tokio_postgres::Client) -> Option<(String, i64, bool)> {
    db.query_opt("SELECT holder, epoch, expires_at > clock_timestamp() FROM lease WHERE id = 1", &[])
        .await
        .expect("reading the lease")
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// Waits for a valid lease of a newer epoch than `after`; returns (replica index, epoch).
async fn new_leader(db: &tokio_postgres::Client, after: i64, within: Duration) -> (usize, i64) {
    wait_for(within, &format!("a leader under an epoch after {after}"), || async {
        match lease(db).await {
            Some((holder, epoch, true)) if epoch > after => {
                Some((if holder.starts_with("hub-0/") { 0 } else { 1 }, epoch))
            }
            _ => None,
        }
    })
    .await
}

fn txn(plant: &str, i: u64) -> Value {
    json!({"source": "mes", "device": "line-1", "key": format!("{plant}-{i}"), "order_key": format!("line-{}", i % 2),
           "odoo": {"model": "res.users", "method": "context_get", "args": [i]}})
}

/// What agents acknowledged: id → (plant, ordering key, the producer's counter, the journal
/// sequence the agent gave it). A producer's posts and the bursts race to the agent, so the
/// journal's order (the sequence), not the counter's, is the order each key must be applied in.
type Acked = Arc<Mutex<HashMap<String, (String, String, u64, u64)>>>;

async fn post(client: &reqwest::Client, http: &str, plant: &str, from: u64, n: u64, acked: &Acked) {
    let batch: Vec<Value> = (from..from + n).map(|i| txn(plant, i)).collect();
    let resp = client.post(format!("http://{http}/v1/transactions")).json(&batch).send().await.expect("the agent");
    let status = resp.status().as_u16();
    let answer: Value = resp.json().await.expect("JSON");
    assert_eq!(status, 202, "{answer}");
    let mut acked = acked.lock().unwrap();
    for (k, a) in answer["accepted"].as_array().unwrap().iter().enumerate() {
        let i = from + k as u64;
        let seq = a["seq"].as_u64().expect("the journal sequence");
        acked.insert(a["id"].as_str().unwrap().to_owned(), (plant.to_owned(), format!("line-{}", i % 2), i, seq));
    }
}

async fn view(api: &str, token: &str) -> Option<Value> {
    let resp =
        match reqwest::Client::new().get(format!("http://{api}/api/v1/reopening")).bearer_auth(token).send().await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("GET {api}/api/v1/reopening: {e}");
                return None;
            }
        };
    if !resp.status().is_success() {
        eprintln!("GET {api}/api/v1/reopening: {} {}", resp.status(), resp.text().await.unwrap_or_default());
        return None;
    }
    resp.json().await.ok()
}

/// The CLI's exit code, its standard output, and (for failures) its standard error.
async fn cli(config: &Path, api: &str, token: &Path, args: &[&str]) -> (i32, String, String) {
    hub_cli(config, api, args, Some(token)).await
}

#[tokio::test]
async fn the_leader_killed_or_cut_off_is_replaced_within_the_lease_and_nothing_is_lost_doubled_or_reordered() {
    let env = Env::new(&PLANTS);
    let db = PgDb::create().await;
    let pg = db.client().await;
    let odoo = env.odoo_sim("odoo").await;
    let priorities = [("plant-c", 1), ("plant-a", 2), ("plant-b", 3)];
    // A plant unheard for 8 s is silent (heartbeats come every 5 s): the leader must hear the
    // plants whose agents are on the other replica (through the store), or it opens
    // plant_network incidents for them.
    let reopening = test_reopening("auto_start_after = \"1s\"\nsoak = \"2s\"\nsilent_after = \"8s\"", &priorities);
    let upstream: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let mut replicas = Vec::new();
    for name in ["hub-0", "hub-1"] {
        let (sync, api) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let proxy = TcpProxy::start(upstream).await;
        let cluster = format!("[cluster]\nname = \"{name}\"\nlease = \"3s\"\n");
        let text = std::fs::read_to_string(env.hub_config(&odoo.url, &sync, "", &format!("{reopening}\n{cluster}")))
            .unwrap()
            .replace("path = \"hub.db\"", &format!("postgres = {:?}", db.url(Some(proxy.addr.port()))))
            .replace(
                "listen = \"127.0.0.1:0\"\nplain_http",
                &format!("listen = \"{api}\"\ntokens = \"api-tokens.json\"\nplain_http"),
            );
        let config = env.path().join(format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        replicas.push(Replica { name, config, sync, api, proxy, proc: None, starts: 0 });
    }
    for r in &mut replicas {
        r.start(&env).await;
    }
    let (mut leader, mut epoch) = new_leader(&pg, 0, WAIT).await;
    assert_eq!(epoch, 1);
    for r in &replicas {
        let proc = r.proc.as_ref().unwrap();
        assert_eq!(proc.field("api"), r.api, "{}", proc.log_text());
        let health = env.http.get(format!("http://{}/healthz", r.api)).send().await;
        assert!(health.as_ref().is_ok_and(|h| h.status().is_success()), "{health:?}\n{}", proc.log_text());
    }

    // The agents know both replicas; plant-c's prefers the other one.
    let mut agents = Vec::new();
    for plant in PLANTS {
        let config = env.agent_config(plant, &replicas[0].sync);
        let (first, second) = if plant == "plant-c" { (1, 0) } else { (0, 1) };
        let text = std::fs::read_to_string(&config).unwrap().replace(
            &format!("address = \"{}\"", replicas[0].sync),
            &format!("address = [\"{}\", \"{}\"]\nidle_timeout = \"2s\"", replicas[first].sync, replicas[second].sync),
        );
        std::fs::write(&config, text).unwrap();
        agents.push(env.agent_from(plant, &config).await);
    }
    let https: Vec<String> = agents.iter().map(|a| a.field("http")).collect();
    let started = tokio::time::Instant::now();
    // An operator's token, made through a follower: its API forwards to the leader.
    let follower = 1 - leader;
    let (_, admin_file) = env.bootstrap_admin(&replicas[follower].config, &replicas[follower].api).await;
    let (code, out, err) = cli(
        &replicas[follower].config,
        &replicas[follower].api,
        &admin_file,
        &["token", "create", "--name", "alice", "--role", "operator"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let token = out.trim().to_owned();
    let token_file = env.path().join("alice.token");
    std::fs::write(&token_file, &token).unwrap();

    // Producers: five transactions a plant every 100 ms, on two ordering keys each.
    let acked: Acked = Arc::default();
    let counters: Vec<Arc<std::sync::atomic::AtomicU64>> = PLANTS.iter().map(|_| Arc::default()).collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut producers = Vec::new();
    for ((plant, http), next) in PLANTS.iter().zip(&https).zip(&counters) {
        let (env_http, acked, next, mut stopped) = (http.clone(), acked.clone(), next.clone(), stopped.clone());
        let (plant, client) = (plant.to_string(), env.http.clone());
        producers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = stopped.changed() => return }
                let from = next.fetch_add(5, std::sync::atomic::Ordering::SeqCst);
                post(&client, &env_http, &plant, from, 5, &acked).await;
            }
        }));
    }
    let applied_count = || async { odoo.applied(&env).await.len() };
    // The leader hears plant-c, whose agent is on the other replica, through the store.
    let c_status = env.agent_status(&https[2]).await;
    assert_eq!(c_status["hub"]["address"], replicas[1 - leader].sync.as_str(), "{c_status}");
    wait_for(Duration::from_secs(20), "the leader hearing plant-c's heartbeats", || async {
        let v = env.get_json(&format!("http://{}/api/v1/plants", replicas[leader].api)).await;
        v["plants"].as_array()?.iter().find(|p| p["plant"] == "plant-c")?["last_heartbeat_ms"].as_i64()
    })
    .await;
    wait_for(WAIT, "the first transactions applied", || async { (applied_count().await >= 30).then_some(()) }).await;

    let mut takeovers = Vec::new();
    eprintln!("phase: reopening");
    // Killed during a phased reopening, twice.
    set_faults(&odoo.url, json!({"db_down": true})).await;
    let api = |r: &Vec<Replica>, i: usize| r[i].api.clone();
    wait_for(WAIT, "a platform-wide incident holding every plant", || async {
        let v = view(&api(&replicas, follower), &token).await?;
        v["incidents"]["open"].as_array()?.iter().any(|i| i["class"] == "platform_wide").then_some(())
    })
    .await;
    set_faults(&odoo.url, json!({})).await;
    // Until now one replica led throughout, and plant-c's agent was on the other: the leader
    // heard it through the store (its heartbeats), so it never took plant-c for silent. (During
    // the takeovers below agents move, and a plant may be unheard for a while, truly.)
    let c_status = env.agent_status(&https[2]).await;
    assert_eq!(c_status["hub"]["address"], replicas[1 - leader].sync.as_str(), "{c_status}");
    let silent: Vec<String> = pg
        .query("SELECT target FROM audit WHERE action = 'incident_opened' AND target LIKE '%plant_network%'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(silent.is_empty(), "plants taken for silent {:?} after the start: {silent:?}", started.elapsed());
    for wave in ["wave 1", "wave 2"] {
        wait_for(WAIT, &format!("the plan at {wave}"), || async {
            let v = view(&api(&replicas, leader), &token).await?;
            stage(&v).starts_with(wave).then_some(())
        })
        .await;
        replicas[leader].kill().await;
        let killed = tokio::time::Instant::now();
        let (next, e) = new_leader(&pg, epoch, TAKEOVER_MAX + Duration::from_secs(10)).await;
        takeovers.push((format!("killed in {wave}"), killed.elapsed()));
        assert_eq!(next, 1 - leader, "the other replica took over");
        replicas[leader].start(&env).await;
        (leader, epoch) = (next, e);
        // The plan comes back paused, as after a restart; the operator resumes it, through
        // whichever replica.
        let v =
            wait_for(WAIT, "the new leader's plan", || async { view(&api(&replicas, 1 - leader), &token).await }).await;
        if v["plan"]["paused"].is_object() {
            let (code, _, err) = cli(
                &replicas[1 - leader].config,
                &replicas[1 - leader].api,
                &token_file,
                &["reopen", "resume", "--reason", "leader replaced"],
            )
            .await;
            assert_eq!(code, 0, "{err}");
        }
    }
    wait_for(WAIT, "the plan completed", || async {
        let v = view(&api(&replicas, leader), &token).await?;
        matches!(stage(&v).as_str(), "completed" | "none").then_some(())
    })
    .await;

    // A heavy backlog: 600 more per plant at once, into an Odoo of two workers (about 400
    // transactions a second in big batches); the leader killed while it drains, twice.
    eprintln!("phase: drain");
    let capacity = json!({"workers": 2, "per_call": "20ms", "per_operation": "5ms", "limit_time_real": "120s"});
    let resp = env.http.post(format!("{}/holdfast-sim/capacity", odoo.url)).json(&capacity).send().await.unwrap();
    assert!(resp.status().is_success());
    for ((plant, http), next) in PLANTS.iter().zip(&https).zip(&counters) {
        for _ in 0..6 {
            let from = next.fetch_add(100, std::sync::atomic::Ordering::SeqCst);
            post(&env.http, http, plant, from, 100, &acked).await;
        }
    }
    for round in 0..2 {
        let before = applied_count().await;
        wait_for(WAIT, "the drain under way", || async { (applied_count().await >= before + 100).then_some(()) }).await;
        let sent = acked.lock().unwrap().len();
        let pending = sent.saturating_sub(applied_count().await);
        assert!(pending > 0, "killed while transactions are pending");
        replicas[leader].kill().await;
        let killed = tokio::time::Instant::now();
        let (next, e) = new_leader(&pg, epoch, TAKEOVER_MAX + Duration::from_secs(10)).await;
        takeovers.push((format!("killed draining, round {}", round + 1), killed.elapsed()));
        assert_eq!(next, 1 - leader);
        replicas[leader].start(&env).await;
        (leader, epoch) = (next, e);
    }

    // The leader frozen (SIGSTOP: a stalled VM, a long pause) while it drains more; the other
    // takes over and applies; the old one, thawed, finds its lease gone and exits. Whatever it
    // sent meanwhile under its old epoch the inbox refuses.
    for ((plant, http), next) in PLANTS.iter().zip(&https).zip(&counters) {
        for _ in 0..3 {
            let from = next.fetch_add(100, std::sync::atomic::Ordering::SeqCst);
            post(&env.http, http, plant, from, 100, &acked).await;
        }
    }
    let before = applied_count().await;
    wait_for(WAIT, "the drain under way", || async { (applied_count().await >= before + 50).then_some(()) }).await;
    let frozen_pid = replicas[leader].proc.as_ref().unwrap().child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &frozen_pid]).status().unwrap().success());
    let frozen = tokio::time::Instant::now();
    let (next, e) = new_leader(&pg, epoch, TAKEOVER_MAX + Duration::from_secs(10)).await;
    takeovers.push(("frozen while draining".into(), frozen.elapsed()));
    assert_eq!(next, 1 - leader);
    wait_for(WAIT, "the new leader's batches in Odoo", || async {
        let state = env.get_json(&format!("{}/holdfast-sim/applied", odoo.url)).await;
        (state["newest_epoch"].as_i64() == Some(e)).then_some(())
    })
    .await;
    assert!(std::process::Command::new("kill").args(["-CONT", &frozen_pid]).status().unwrap().success());
    let mut thawed = replicas[leader].proc.take().unwrap();
    let exit = tokio::time::timeout(WAIT, thawed.child.wait()).await.expect("the thawed leader exits").unwrap();
    assert!(!exit.success(), "{exit}");
    // Its deadline passed while it was frozen: it fences itself before asking again.
    assert!(thawed.log_text().contains("stopped calling Odoo"), "{}", thawed.log_text());
    replicas[leader].start(&env).await;
    (leader, epoch) = (next, e);

    // The leader cut off from PostgreSQL: it fences itself and exits; the other takes over.
    eprintln!("phase: partition");
    replicas[leader].proxy.set_cut(true);
    let cut = tokio::time::Instant::now();
    let mut deposed = replicas[leader].proc.take().unwrap();
    let exit = tokio::time::timeout(LEASE + Duration::from_secs(10), deposed.child.wait())
        .await
        .expect("the cut-off leader exits")
        .unwrap();
    let fenced_after = cut.elapsed();
    assert!(!exit.success(), "{exit}");
    let log = deposed.log_text();
    assert!(
        log.contains(
            "the lease could not be renewed in time: this replica stopped calling Odoo before its lease expires"
        ),
        "{log}"
    );
    assert!(fenced_after < LEASE, "fenced {fenced_after:?} after the cut, before the lease ({LEASE:?}) expires");
    let (next, e) = new_leader(&pg, epoch, TAKEOVER_MAX + Duration::from_secs(10)).await;
    takeovers.push(("cut off from the database".into(), cut.elapsed()));
    assert_eq!(next, 1 - leader);
    replicas[leader].proxy.set_cut(false);
    replicas[leader].start(&env).await;
    (leader, epoch) = (next, e);

    // Producers stop; everything acknowledged is applied, once, in order per key.
    eprintln!("phase: reconcile");
    stop.send(true).unwrap();
    for p in producers {
        p.await.unwrap();
    }
    drop(stopped);
    let acked = acked.lock().unwrap().clone();
    let state = wait_for(WAIT, "every acknowledged transaction applied", || async {
        let state = env.get_json(&format!("{}/holdfast-sim/applied", odoo.url)).await;
        let ids: HashSet<&str> = state["applied"].as_array()?.iter().filter_map(|a| a["id"].as_str()).collect();
        acked.keys().all(|id| ids.contains(id.as_str())).then_some(())?;
        Some(state.clone())
    })
    .await;
    let applied = state["applied"].as_array().unwrap();
    let mut seen = HashSet::new();
    let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut last_epoch = 0;
    for a in applied {
        let e = a["epoch"].as_u64().expect("every batch carries the leader's epoch");
        assert!(e >= last_epoch, "a batch of epoch {e} applied after one of epoch {last_epoch}");
        last_epoch = e;
        if a["plant"] == "holdfast-preflight" {
            continue; // the reopening's own check that the inbox works
        }
        let id = a["id"].as_str().unwrap();
        assert!(seen.insert(id.to_owned()), "{id} applied twice");
        let (plant, key, i, seq) = acked.get(id).unwrap_or_else(|| {
            panic!("{id} applied but never acknowledged: {a}; acknowledged e.g. {:?}", acked.iter().next())
        });
        assert_eq!(a["args"][0].as_u64(), Some(*i));
        if let Some(before) = last.insert((plant.clone(), key.clone()), *seq) {
            assert!(before < *seq, "{plant} {key}: journal sequence {seq} applied after {before}");
        }
    }
    assert_eq!(seen.len(), acked.len(), "exactly the acknowledged ones");
    assert_eq!(state["newest_epoch"].as_i64(), Some(epoch.max(last_epoch as i64)));
    for refused in state["refused_epochs"].as_array().unwrap() {
        assert!(refused["epoch"].as_u64() < refused["newest"].as_u64(), "{refused}");
    }
    // Every change of leader is in the audit trail, in order.
    let taken: Vec<String> = pg
        .query("SELECT target FROM audit WHERE action = 'leadership_taken' ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<String> = (1..=epoch).map(|e| format!("lease/epoch/{e}")).collect();
    assert_eq!(taken, expected);

    assert_eq!(epoch, 7, "six takeovers after the first leader");
    for (what, took) in &takeovers {
        assert!(*took <= TAKEOVER_MAX, "{what}: the takeover took {took:?}");
    }
    eprintln!("takeovers: {takeovers:?}; refused batches: {}", state["refused_epochs"]);
    let _ = leader;
}
