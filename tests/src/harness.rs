//! The black-box harness: real `holdfast-hub`, `holdfast-agent` and `odoo-sim` processes on
//! loopback, each with its own config and log file in one temporary folder, fresh certificates,
//! and helpers that wait on conditions (never on a fixed sleep).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a process may take to print its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a condition is polled while waiting for it.
pub const POLL_EVERY: Duration = Duration::from_millis(25);

/// Installs rustls' ring provider for this process (reqwest is built without a default one).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The folder holding the workspace's binaries for the current build profile.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe folder");
    if dir.ends_with("deps") { dir.parent().expect("profile folder").to_owned() } else { dir.to_owned() }
}

/// The path of a workspace binary, brought up to date by `cargo build` once per process, so a
/// scenario never runs a stale agent or hub (a test run builds only its own package's binaries).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = std::process::Command::new(cargo);
        cmd.arg("build").arg("--quiet").arg("--workspace").arg("--bins").arg("--manifest-path").arg(manifest);
        if bin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        // The variables cargo sets for a running test would make build scripts that watch them
        // (bundled SQLite's among them) rebuild everything: the nested build must not see them.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if (key.starts_with("CARGO_")
                && !matches!(key.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR" | "CARGO_INCREMENTAL"))
                || key == "OUT_DIR"
            {
                cmd.env_remove(&key);
            }
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "building the Holdfast binaries failed");
    });
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} is missing after the build", path.display());
    path
}

/// A child process with its log file; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    /// The ready line's fields, such as `http=127.0.0.1:4242`.
    pub ready: String,
}

impl Proc {
    /// Starts `program args`, logging stderr to `log`, and waits for a stdout line starting
    /// with `ready_prefix`.
    pub async fn spawn(program: &Path, args: &[&str], log: PathBuf, ready_prefix: &str) -> Self {
        Self::spawn_env(program, args, &[], log, ready_prefix).await
    }

    /// As [`Self::spawn`], with `env` added to the child's environment.
    pub async fn spawn_env(
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
        ready_prefix: &str,
    ) -> Self {
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("HOLDFAST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.expect("reading stdout") {
                if let Some(rest) = line.strip_prefix(ready_prefix) {
                    return rest.trim().to_owned();
                }
            }
            panic!(
                "{} exited before it was ready; its log:\n{}",
                program.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        })
        .await
        .unwrap_or_else(|_| panic!("{} was not ready within {START_TIMEOUT:?}", program.display()));
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, log, ready }
    }

    /// The value of `key=` in the ready line.
    pub fn field(&self, key: &str) -> String {
        self.ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in ready line {:?}", self.ready))
            .to_owned()
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().expect("running child");
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("stopped within 30 s")
            .expect("wait");
        assert!(
            exit.success(),
            "{} exited with {exit}; log:\n{}",
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGKILL: a crash.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    try_wait_for(timeout, check).await.unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `check` until it returns `Some`; `None` after `timeout`, for a caller that explains the
/// failure itself.
pub async fn try_wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// One test's world: a temporary folder with certificates, and clients for the HTTP APIs.
#[derive(Debug)]
pub struct Env {
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// The plants with certificates; the hub's policy lets each make [`TEST_CALLS`].
    pub plants: Vec<String>,
}

/// A viewer token every test hub knows (see [`Env::add_viewer_token`]).
pub const VIEWER_TOKEN: &str = "0000000000000000000000000000000000000000000000000000000000000001";
pub const VIEWER_NAME: &str = "tests-viewer";

/// The Odoo calls the test plants may make (the hub's `[plants.<id>]` policy).
pub const TEST_CALLS: &[&str] = &[
    "res.users:context_get",
    "res.users:write",
    "res.partner:write",
    "mrp.production:create",
    "mrp.production:write",
    "stock.move:write",
    "stock.quant:create",
    "stock.quant:action_apply_inventory",
    "stock.picking:button_validate",
    "mrp.production:button_mark_done",
];

/// A `[reopening]` for tests: quick windows and loose gates, so a loaded machine's latency does
/// not pause a plan (the latency bound is proven in `hub/tests/reopening_sim.rs`; here the
/// plan's flow is what is checked). `lines` go into `[reopening]` itself (`soak`,
/// `auto_start_after`, `webhook`, ...); `priorities` become `[reopening.plants.<id>]`.
pub fn test_reopening(lines: &str, priorities: &[(&str, u32)]) -> String {
    let plants: String = priorities.iter().map(|(p, n)| format!("[reopening.plants.{p}]\npriority = {n}\n")).collect();
    format!(
        r#"[reopening]
canary_every = "100ms"
canary_baseline = "100ms"
{lines}
[reopening.gates]
window = "2s"
samples_min = 3
latency_bound = 1000.0
error_ratio_max = 1.0
timeouts_max = 1000
[reopening.drain]
window = "500ms"
start = 4
{plants}"#
    )
}

/// Switches a hub config written by [`Env::hub_config`] to delivery `mode` (`inbox` or
/// `plain`), adding `odoo_lines` to its `[odoo]` table.
pub fn set_odoo_mode(config: &Path, mode: &str, odoo_lines: &str) {
    let text = std::fs::read_to_string(config).expect("hub config");
    assert!(text.contains("mode = \"inbox\"\n"), "a config from Env::hub_config");
    std::fs::write(config, text.replace("mode = \"inbox\"\n", &format!("mode = \"{mode}\"\n{odoo_lines}")))
        .expect("hub config written");
}

/// Runs `holdfast-hub args --config config` (with `--api http://api` unless it is the
/// bootstrap token), with the token file if given; returns exit code, stdout and stderr.
pub async fn hub_cli(config: &Path, api: &str, args: &[&str], token: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(bin("holdfast-hub"));
    cmd.args(args).arg("--config").arg(config).env_remove("HOLDFAST_TOKEN");
    if args[0] != "token" || !args.contains(&"--bootstrap") {
        cmd.arg("--api").arg(format!("http://{api}"));
    }
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    let out = cmd.output().await.expect("holdfast-hub runs");
    (
        out.status.code().expect("an exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Env {
    /// A fresh folder with a certificate authority, the hub's certificate, and `plants`' certificates.
    pub fn new(plants: &[&str]) -> Self {
        install_crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        holdfast_hub::certs::init(&certs, &["localhost".into(), "127.0.0.1".into()]).expect("certs init");
        for plant in plants {
            holdfast_hub::certs::issue(&certs, plant, holdfast_hub::certs::PLANT_CERT_DAYS).expect("certs issue");
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
        Self { dir, http, plants: plants.iter().map(|p| p.to_string()).collect() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub async fn odoo_sim(&self, name: &str) -> OdooSim {
        self.odoo_sim_with(name, &[]).await
    }

    /// As [`Self::odoo_sim`], with more `odoo-sim` arguments (`--odoo-version 16.0`,
    /// `--without-inbox`).
    pub async fn odoo_sim_with(&self, name: &str, extra: &[&str]) -> OdooSim {
        let args: Vec<&str> = ["--listen", "127.0.0.1:0"].iter().chain(extra).copied().collect();
        let proc =
            Proc::spawn(&bin("odoo-sim"), &args, self.path().join(format!("{name}.log")), "odoo-sim listening on ")
                .await;
        OdooSim { url: proc.ready.clone(), proc }
    }

    /// Starts a hub against `odoo_url`. `sync` is the QUIC address to bind (`127.0.0.1:0` for any).
    pub async fn hub(&self, odoo_url: &str, sync: &str) -> Proc {
        self.hub_with(odoo_url, sync, "", "").await
    }

    /// As [`Self::hub`], with `sync_extra` lines in its `[sync]` table and `extra` tables
    /// appended to its config.
    pub async fn hub_with(&self, odoo_url: &str, sync: &str, sync_extra: &str, extra: &str) -> Proc {
        let config = self.hub_config(odoo_url, sync, sync_extra, extra);
        self.hub_from(&config).await
    }

    /// Starts a hub from a config file written beforehand.
    pub async fn hub_from(&self, config: &Path) -> Proc {
        Proc::spawn(
            &bin("holdfast-hub"),
            &["run", "--config", config.to_str().expect("utf-8 path")],
            self.path().join("hub.log"),
            "holdfast-hub ready",
        )
        .await
    }

    /// Writes the hub's config `hub.toml` (see [`Self::hub_with`]) and returns its path.
    pub fn hub_config(&self, odoo_url: &str, sync: &str, sync_extra: &str, extra: &str) -> PathBuf {
        let config = self.path().join("hub.toml");
        let allow = TEST_CALLS.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
        let policies: String = self.plants.iter().map(|p| format!("[plants.{p}]\nallow = [{allow}]\n")).collect();
        // Tests of other capabilities come back from an outage by themselves and quickly, and
        // loose gates keep a loaded machine's latency from pausing them; a test that passes its
        // own `[reopening]` replaces this one.
        // Tests of other capabilities come back from an outage by themselves and quickly.
        let reopening = if extra.contains("[reopening]") {
            String::new()
        } else {
            test_reopening("auto_start_after = \"1s\"\nsoak = \"500ms\"", &[])
        };
        let text = format!(
            r#"[store]
path = "hub.db"
[sync]
listen = "{sync}"
ca = "certs/ca.pem"
cert = "certs/hub.pem"
key = "certs/hub.key"
{sync_extra}
[api]
listen = "127.0.0.1:0"
plain_http = true
[odoo]
url = "{odoo_url}"
database = "holdfast"
login = "holdfast-hub"
api_key = "0f3b8e1c4d2a6f9e7b5c3a1d8e6f4b2c9a7d5e3f"
mode = "inbox"
timeout = "10s"
probe_interval = "500ms"
[applier]
retry_initial = "100ms"
retry_max = "2s"
{policies}
{reopening}
{extra}
"#
        );
        std::fs::write(&config, text).expect("hub config");
        self.add_viewer_token();
        config
    }

    /// Puts [`VIEWER_TOKEN`] into the hub's token file (`api-tokens.json` beside its store), so
    /// the tests' reads of the API ([`Self::get_json`]) are a viewer's.
    pub fn add_viewer_token(&self) {
        let path = self.path().join("api-tokens.json");
        let mut entries: Vec<holdfast_hub::tokens::TokenEntry> = std::fs::read_to_string(&path)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| serde_json::from_str(&t).expect("a token file"))
            .unwrap_or_default();
        if entries.iter().any(|e| e.name == VIEWER_NAME) {
            return;
        }
        entries.push(holdfast_hub::tokens::TokenEntry {
            name: VIEWER_NAME.into(),
            role: holdfast_hub::tokens::Role::Viewer,
            sha256: holdfast_hub::tokens::hash(VIEWER_TOKEN),
            created_at_ms: 0,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&entries).expect("entries")).expect("token file");
    }

    /// Writes an agent's config for `plant` against the hub's sync address; returns its path.
    pub fn agent_config(&self, plant: &str, hub_sync: &str) -> PathBuf {
        self.agent_config_with(plant, hub_sync, "")
    }

    /// As [`Self::agent_config`], with extra lines in the `[journal]` table.
    pub fn agent_config_with(&self, plant: &str, hub_sync: &str, journal_extra: &str) -> PathBuf {
        let config = self.path().join(format!("agent-{plant}.toml"));
        let text = format!(
            r#"plant = "{plant}"
[journal]
path = "journal-{plant}.db"
{journal_extra}
[http]
listen = "127.0.0.1:0"
[control]
socket = "agent-{plant}.sock"
[hub]
address = "{hub_sync}"
server_name = "localhost"
ca = "certs/ca.pem"
cert = "certs/{plant}.pem"
key = "certs/{plant}.key"
"#
        );
        std::fs::write(&config, text).expect("agent config");
        config
    }

    pub async fn agent(&self, plant: &str, hub_sync: &str) -> Proc {
        self.agent_with(plant, hub_sync, "").await
    }

    /// Starts an agent with extra lines in its `[journal]` table (and further tables after them).
    pub async fn agent_with(&self, plant: &str, hub_sync: &str, journal_extra: &str) -> Proc {
        let config = self.agent_config_with(plant, hub_sync, journal_extra);
        self.agent_from(plant, &config).await
    }

    /// Starts an agent for `plant` from a config file written beforehand.
    pub async fn agent_from(&self, plant: &str, config: &Path) -> Proc {
        Proc::spawn(
            &bin("holdfast-agent"),
            &["run", "--config", config.to_str().expect("utf-8 path")],
            self.path().join(format!("agent-{plant}.log")),
            "holdfast-agent ready",
        )
        .await
    }

    /// The hub's first admin token, made as an operator makes it (`holdfast-hub token create
    /// --bootstrap`), and `admin.token`, the file holding it for the CLI's `--token-file`.
    pub async fn bootstrap_admin(&self, config: &Path, api: &str) -> (String, PathBuf) {
        let args = ["token", "create", "--name", "root", "--role", "admin", "--bootstrap"];
        let (code, token, err) = hub_cli(config, api, &args, None).await;
        assert_eq!(code, 0, "{err}");
        let (token, file) = (token.trim().to_owned(), self.path().join("admin.token"));
        std::fs::write(&file, &token).expect("admin.token");
        (token, file)
    }

    /// A GET with [`VIEWER_TOKEN`] (the hub's API needs one; agents and the double ignore it).
    pub async fn get_json(&self, url: &str) -> Value {
        let resp =
            self.http.get(url).bearer_auth(VIEWER_TOKEN).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        resp.json().await.expect("JSON body")
    }

    /// An agent's `GET /v1/status`, by its HTTP address.
    pub async fn agent_status(&self, agent_http: &str) -> Value {
        self.get_json(&format!("http://{agent_http}/v1/status")).await
    }

    /// Posts producer transactions to an agent; returns the status and the JSON answer.
    pub async fn post(&self, agent_http: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("http://{agent_http}/v1/transactions"))
            .json(body)
            .send()
            .await
            .expect("POST to the agent");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON answer"))
    }
}

/// A token of `role` named `name`, made through the hub's API at `api` with `admin`.
pub async fn api_token(api: &str, admin: &str, name: &str, role: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("http://{api}/api/v1/tokens"))
        .bearer_auth(admin)
        .json(&serde_json::json!({"name": name, "role": role}))
        .send()
        .await
        .expect("the hub's API answers");
    assert_eq!(resp.status(), 201, "token {name}");
    let created: Value = resp.json().await.expect("JSON");
    created["token"].as_str().expect("a token").to_owned()
}

/// Replaces every fault of the Odoo double at `url` (see [`crate::odoo_sim::Faults`]).
pub async fn set_faults(url: &str, faults: Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/holdfast-sim/faults"))
        .json(&faults)
        .send()
        .await
        .expect("the double's admin API");
    assert!(resp.status().is_success(), "setting the double's faults: {}", resp.status());
}

/// The Odoo double's figures (see [`crate::odoo_sim::Stats`]).
pub async fn sim_stats(url: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{url}/holdfast-sim/stats"))
        .send()
        .await
        .expect("the double's admin API")
        .json()
        .await
        .expect("the double's figures")
}

/// A scanner station `name` (source `scanner`, device `name`) on a free loopback port whose
/// lines `[<key> ]<order>*<quantity>` write the quantity produced on that manufacturing order,
/// one ordering key per order: the agent config's `[[stations]]` table.
pub fn mo_station(name: &str) -> String {
    format!(
        r#"
[[stations]]
name = "{name}"
listen = "127.0.0.1:0"
source = "scanner"
device = "{name}"
order_key = "mo:{{code}}"
qty_separator = "*"
[stations.template]
model = "mrp.production"
method = "write"
args = [[{{ "$ref" = {{ model = "mrp.production", domain = [["name", "=", "{{code}}"]] }} }}], {{ qty_producing = "{{qty}}" }}]
"#
    )
}

/// The service manager's side of systemd's notify protocol: a datagram socket whose path a
/// child is given as `NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct NotifySocket {
    pub path: PathBuf,
    socket: tokio::net::UnixDatagram,
}

impl NotifySocket {
    pub fn bind(path: PathBuf) -> Self {
        let socket = tokio::net::UnixDatagram::bind(&path).expect("binding the notify socket");
        Self { path, socket }
    }

    /// The next datagram, if one comes within `within`.
    pub async fn next(&self, within: Duration) -> Option<String> {
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(within, self.socket.recv(&mut buf)).await.ok()?.expect("a datagram");
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for a datagram holding the line `line`, skipping others, and returns it; panics
    /// after `within`.
    pub async fn expect(&self, line: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(msg) if msg.lines().any(|l| l == line) => return msg,
                Some(_) => continue,
                None => panic!("no {line} within {within:?}"),
            }
        }
    }
}

/// The operator's wall clock, now (a failover's recovery point is a time of day).
#[allow(clippy::disallowed_methods)] // the one wall-clock read of the scenarios
pub fn wall() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// `t` as RFC 3339, as the CLI takes a recovery point.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).expect("a formattable time")
}

/// A running Odoo double.
#[derive(Debug)]
pub struct OdooSim {
    pub url: String,
    pub proc: Proc,
}

impl OdooSim {
    /// What the double applied, in its order.
    pub async fn applied(&self, env: &Env) -> Vec<Value> {
        let v = env.get_json(&format!("{}/holdfast-sim/applied", self.url)).await;
        // A reopening's preflight writes a canary of its own through the inbox.
        let producers = |a: &Value| a["plant"] != holdfast_hub::reopening::PREFLIGHT_PLANT;
        v["applied"].as_array().into_iter().flatten().filter(|a| producers(a)).cloned().collect()
    }
}

/// A Mosquitto broker started with the shipped `deploy/mosquitto/holdfast.conf`, on a free
/// loopback port, with users for the agent and for devices.
#[derive(Debug)]
pub struct Broker {
    pub port: u16,
    pub child: Child,
    pub dir: PathBuf,
}

/// Publishes a test publisher keeps unacknowledged, at most (the shipped broker's
/// `max_inflight_messages`; rumqttc's default is 100).
pub const PUBLISH_INFLIGHT: u16 = 1000;

/// The password every test MQTT user has.
pub const MQTT_PASSWORD: &str = "holdfast-test";

impl Broker {
    /// Starts a broker whose users are `holdfast-agent` and each of `devices`.
    pub async fn start(dir: &Path, devices: &[&str]) -> Self {
        let dir = dir.join("mosquitto");
        std::fs::create_dir_all(&dir).expect("broker folder");
        let passwd = dir.join("holdfast.passwd");
        for (i, user) in std::iter::once("holdfast-agent").chain(devices.iter().copied()).enumerate() {
            let mut cmd = std::process::Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let status = cmd
                .arg("-b")
                .arg(&passwd)
                .arg(user)
                .arg(MQTT_PASSWORD)
                .status()
                .expect("mosquitto_passwd (install mosquitto)");
            assert!(status.success(), "mosquitto_passwd failed");
        }
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto");
        std::fs::copy(shipped.join("holdfast.acl"), dir.join("holdfast.acl")).expect("acl");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let conf = std::fs::read_to_string(shipped.join("holdfast.conf"))
            .expect("shipped broker config")
            .replace("listener 1883 127.0.0.1", &format!("listener {port} 127.0.0.1"))
            .replace("/etc/mosquitto/holdfast.passwd", passwd.to_str().expect("utf-8"))
            .replace("/etc/mosquitto/holdfast.acl", dir.join("holdfast.acl").to_str().expect("utf-8"))
            .replace("/var/lib/mosquitto/", &format!("{}/", dir.display()))
            // The test runs as root; Mosquitto would otherwise switch to its own user.
            + "\nuser root\n";
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("broker config");
        let mut broker = Self { port, child: Self::spawn(&dir), dir };
        broker.wait_ready().await;
        broker
    }

    fn spawn(dir: &Path) -> Child {
        let log = std::fs::File::create(dir.join("mosquitto.log")).expect("broker log");
        // Debian installs the broker in /usr/sbin, which a user's PATH may lack.
        let program = if Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" };
        Command::new(program)
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("starting mosquitto (install mosquitto)")
    }

    async fn wait_ready(&mut self) {
        let port = self.port;
        wait_for(START_TIMEOUT, "the broker to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
    }

    /// Stops the broker (SIGTERM: it saves its state) and starts it again on the same port.
    pub async fn restart(&mut self) {
        let pid = self.child.id().expect("running broker");
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
        self.child.wait().await.expect("broker exit");
        self.child = Self::spawn(&self.dir);
        self.wait_ready().await;
    }

    /// The agent's `[mqtt]` table for this broker.
    pub fn agent_table(&self, plant: &str) -> String {
        let password = self.dir.join("agent.password");
        std::fs::write(&password, MQTT_PASSWORD).expect("password file");
        format!(
            "[mqtt]\nbroker = \"127.0.0.1:{}\"\nclient_id = \"holdfast-{plant}\"\nusername = \"holdfast-agent\"\npassword_file = \"{}\"\n",
            self.port,
            password.display()
        )
    }

    /// Publishes every message at QoS 1 as `user` and returns once the broker acknowledged all.
    pub async fn publish(&self, user: &str, messages: Vec<(String, Vec<u8>)>) {
        let mut opts = rumqttc::MqttOptions::new(format!("pub-{user}-{}", std::process::id()), "127.0.0.1", self.port);
        opts.set_credentials(user, MQTT_PASSWORD).set_max_packet_size(2 << 20, 2 << 20).set_inflight(PUBLISH_INFLIGHT);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, messages.len() + 10);
        let total = messages.len();
        for (topic, payload) in messages {
            client.try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).expect("queue publish");
        }
        let mut acked = 0;
        tokio::time::timeout(START_TIMEOUT, async {
            while acked < total {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publishing as {user}: {e}"),
                }
            }
        })
        .await
        .expect("the broker acknowledged every publish");
        let _ = client.try_disconnect();
    }
}

/// A process's peak resident memory (`VmHWM`), in KiB; 0 when it cannot be read.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The PostgreSQL server the tests use (`HOLDFAST_TEST_POSTGRES`, by default the machine's on
/// 127.0.0.1:5432, user postgres), as a libpq connection string without a database.
pub fn postgres_server() -> String {
    std::env::var("HOLDFAST_TEST_POSTGRES").unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into())
}

/// A database of a test's own on [`postgres_server`], dropped (its connections too) when this goes.
#[derive(Debug)]
pub struct PgDb {
    pub name: String,
}

impl PgDb {
    pub async fn create() -> Self {
        let name = format!("holdfast_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Self::connect_to("postgres").await;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
        Self { name }
    }

    async fn connect_to(db: &str) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&format!("{} dbname={db}", postgres_server()), tokio_postgres::NoTls)
                .await
                .expect("the test PostgreSQL server answers (HOLDFAST_TEST_POSTGRES; .ci/run starts it)");
        tokio::spawn(conn);
        client
    }

    /// A connection to this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        Self::connect_to(&self.name).await
    }

    /// The connection string a hub's `store.postgres` takes, through `port` (a proxy's) if given.
    pub fn url(&self, port: Option<u16>) -> String {
        let mut url = format!("{} dbname={} connect_timeout=3", postgres_server(), self.name);
        if let Some(port) = port {
            url = url.replace("port=5432", &format!("port={port}"));
        }
        url
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&format!("{} dbname=postgres", postgres_server()), tokio_postgres::NoTls)
                        .await
                {
                    tokio::spawn(conn);
                    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            })
        })
        .join();
    }
}

/// A loopback port free now (for a process that must keep its address across restarts).
pub fn free_port() -> u16 {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = tcp.local_addr().expect("address").port();
    // The same number for UDP (the sync listener): checked free too.
    std::net::UdpSocket::bind(("127.0.0.1", port)).map(|_| port).unwrap_or_else(|_| free_port())
}

/// The reopening plan's stage in `GET /api/v1/reopening`'s answer: `wave 2: draining`, `armed`,
/// `completed`, or `none` without a plan.
pub fn plan_stage(v: &Value) -> String {
    let plan = &v["plan"];
    match plan["stage"]["stage"].as_str() {
        Some("wave") => format!(
            "wave {}: {}",
            plan["stage"]["index"].as_u64().unwrap_or(0) + 1,
            plan["stage"]["phase"].as_str().unwrap_or("?")
        ),
        Some(s) => s.to_owned(),
        None => "none".into(),
    }
}
