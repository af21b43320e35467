//! The hub's configuration file: parsed (unknown keys refused), then validated with every
//! problem reported at once. Relative paths are taken from the config file's folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    pub sync: SyncConfig,
    pub api: ApiConfig,
    pub odoo: OdooConfig,
    #[serde(default)]
    pub applier: ApplierConfig,
    /// Per-plant policy (`[plants.<id>]`): the Odoo calls each plant may make, optionally its
    /// company. A plant without one may make none (see [`crate::policy`]).
    #[serde(default)]
    pub plants: std::collections::BTreeMap<String, crate::policy::PlantPolicy>,
    /// Incidents, the reopening plan, its health gates and the adaptive drain.
    #[serde(default)]
    pub reopening: ReopeningConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[reopening]`: how plants come back after an incident or a failover.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReopeningConfig {
    /// How long a wave soaks after it caught up before it is promoted.
    #[serde(with = "humantime_serde")]
    pub soak: Duration,
    /// The most plants one wave opens.
    pub wave_plants_max: usize,
    /// A plant opened alone first.
    pub canary_plant: Option<String>,
    /// Start an armed plan by itself once Odoo has been reachable this long; unset, a person
    /// starts it (`holdfast-hub reopen start`).
    #[serde(with = "humantime_serde")]
    pub auto_start_after: Option<Duration>,
    /// The canary probe's cadence: the same authenticated read before and during reopening.
    #[serde(with = "humantime_serde")]
    pub canary_every: Duration,
    /// The canary's baseline p95 when the hub measured none before the incident.
    #[serde(with = "humantime_serde")]
    pub canary_baseline: Option<Duration>,
    /// Called (POST, JSON) when a wave opens, so ingress allow-lists or Odoo access can follow.
    pub webhook: Option<String>,
    /// A plant unheard this long is silent.
    #[serde(with = "humantime_serde")]
    pub silent_after: Duration,
    pub gates: GatesConfig,
    pub drain: DrainConfigToml,
    /// Plants' priorities (lower reopens first) and shipment deadlines (RFC 3339).
    pub plants: std::collections::BTreeMap<String, PlantOrder>,
}

impl Default for ReopeningConfig {
    fn default() -> Self {
        Self {
            soak: Duration::from_secs(60),
            wave_plants_max: 16,
            canary_plant: None,
            auto_start_after: None,
            canary_every: Duration::from_secs(1),
            canary_baseline: None,
            webhook: None,
            silent_after: Duration::from_secs(30),
            gates: GatesConfig::default(),
            drain: DrainConfigToml::default(),
            plants: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatesConfig {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub samples_min: usize,
    /// Odoo's latency bound during reopening, as a multiple of its baseline (I8).
    pub latency_bound: f64,
    pub error_ratio_max: f64,
    pub timeouts_max: usize,
}

impl Default for GatesConfig {
    fn default() -> Self {
        let d = crate::coordinator::gates::GateConfig::default();
        Self {
            window: Duration::from_millis(d.window_ms as u64),
            samples_min: d.samples_min,
            latency_bound: d.latency_bound,
            error_ratio_max: d.error_ratio_max,
            timeouts_max: d.timeouts_max,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfigToml {
    /// Odoo's HTTP workers.
    pub odoo_workers: usize,
    /// The share of them the hub may take while reopening, at most.
    pub share: f64,
    pub floor: usize,
    pub start: usize,
    /// How often the limit is adjusted.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for DrainConfigToml {
    fn default() -> Self {
        let d = crate::coordinator::drain::DrainConfig::default();
        Self {
            odoo_workers: d.odoo_workers,
            share: d.share,
            floor: d.floor,
            start: d.start,
            window: Duration::from_millis(d.window_ms as u64),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantOrder {
    #[serde(default)]
    pub priority: u32,
    /// A shipment deadline, RFC 3339 (`2026-11-27T14:00:00Z`).
    #[serde(default)]
    pub deadline: Option<String>,
}

impl ReopeningConfig {
    /// The coordinator's configuration, or every problem with it.
    pub fn coordinator(&self) -> Result<crate::coordinator::CoordinatorConfig, Vec<String>> {
        use crate::coordinator::{CoordinatorConfig, PlantSpec, drain, gates, incident};
        let mut problems = Vec::new();
        let ms = |d: Duration| d.as_millis() as i64;
        if !(self.gates.latency_bound >= 1.0 && self.gates.latency_bound.is_finite()) {
            problems.push("reopening.gates.latency_bound: must be at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&self.gates.error_ratio_max) {
            problems.push("reopening.gates.error_ratio_max: must be between 0 and 1".to_owned());
        }
        if self.gates.samples_min == 0 {
            problems.push("reopening.gates.samples_min: must be at least 1".to_owned());
        }
        if !(self.drain.share > 0.0 && self.drain.share <= 1.0) {
            problems.push("reopening.drain.share: must be above 0 and at most 1".to_owned());
        }
        if self.drain.odoo_workers == 0 {
            problems.push("reopening.drain.odoo_workers: must be at least 1".to_owned());
        }
        if self.drain.window < Duration::from_millis(100) || self.gates.window < self.drain.window {
            problems
                .push("reopening.drain.window: must be at least 100ms and at most reopening.gates.window".to_owned());
        }
        if self.wave_plants_max == 0 {
            problems.push("reopening.wave_plants_max: must be at least 1".to_owned());
        }
        if let Some(url) = &self.webhook
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(format!("reopening.webhook: {url:?} must start with http:// or https://"));
        }
        let mut plants = std::collections::BTreeMap::new();
        for (plant, order) in &self.plants {
            let deadline_ms = match &order.deadline {
                None => None,
                Some(text) => match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
                    Ok(t) => Some((t.unix_timestamp_nanos() / 1_000_000) as i64),
                    Err(e) => {
                        problems
                            .push(format!("reopening.plants.{plant}.deadline: {text:?} is not an RFC 3339 time ({e})"));
                        None
                    }
                },
            };
            plants.insert(plant.clone(), PlantSpec { priority: order.priority, deadline_ms });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let gates = gates::GateConfig {
            window_ms: ms(self.gates.window),
            samples_min: self.gates.samples_min,
            latency_bound: self.gates.latency_bound,
            error_ratio_max: self.gates.error_ratio_max,
            timeouts_max: self.gates.timeouts_max,
            ..gates::GateConfig::default()
        };
        let drain = drain::DrainConfig {
            odoo_workers: self.drain.odoo_workers,
            share: self.drain.share,
            floor: self.drain.floor.max(1),
            start: self.drain.start.max(1),
            window_ms: ms(self.drain.window),
            error_ratio_max: self.gates.error_ratio_max,
            ..drain::DrainConfig::default()
        };
        Ok(CoordinatorConfig {
            gates,
            drain,
            incidents: incident::IncidentConfig { silent_after_ms: ms(self.silent_after), ..Default::default() },
            soak_ms: ms(self.soak),
            wave_plants_max: self.wave_plants_max,
            canary_plant: self.canary_plant.clone(),
            plants,
            canary_baseline_ms: self.canary_baseline.map(|d| d.as_secs_f64() * 1000.0),
            auto_start_after_ms: self.auto_start_after.map(ms),
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite ledger file: the embedded store of a hub on its own (give this or
    /// `postgres`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// PostgreSQL, shared by replicated hubs: a libpq connection string
    /// (`host=db.example user=holdfast dbname=holdfast sslmode=require`) or URL.
    #[serde(default)]
    pub postgres: Option<String>,
    /// The authority that signed the PostgreSQL server's certificate (TLS to the database).
    #[serde(default)]
    pub postgres_ca: Option<PathBuf>,
    /// A file whose first line is the PostgreSQL password (instead of one in `postgres`).
    #[serde(default)]
    pub postgres_password_file: Option<PathBuf>,
    /// Connections to PostgreSQL this replica keeps at most.
    #[serde(default = "default_postgres_connections")]
    pub postgres_connections: usize,
    /// How long applied transactions stay in the ledger (a disaster-recovery replay needs them),
    /// after which they are pruned.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
}

fn default_postgres_connections() -> usize {
    16
}

impl StoreConfig {
    /// How to reach PostgreSQL, when the store is there.
    pub fn postgres_options(&self) -> Option<crate::store::postgres::PgOptions> {
        self.postgres.as_ref().map(|url| crate::store::postgres::PgOptions {
            url: url.clone(),
            ca: self.postgres_ca.clone(),
            password_file: self.postgres_password_file.clone(),
            connections: self.postgres_connections,
        })
    }

    /// The SQLite file, for the commands that work on it alone (backups, offline checks).
    pub fn sqlite_path(&self) -> Result<&Path, String> {
        self.path.as_deref().ok_or_else(|| {
            "this command works on the embedded SQLite store (store.path); this hub's store is PostgreSQL \
             (store.postgres): use PostgreSQL's own tools (pg_dump, its replication) or the hub's API"
                .to_owned()
        })
    }
}

/// `[cluster]`: replicated hubs on one PostgreSQL store. One replica at a time holds the lease
/// to lead (runs the coordinator and the applier); the others take agents and API requests.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This replica's name in the lease and the audit trail (default: the host's name).
    pub name: Option<String>,
    /// Where the other replicas reach this one's API (they forward API requests to the
    /// leader): default `http://` (`https://` with TLS) and the address the API is bound to.
    /// `{name}` stands for this replica's name, so replicas can share one file.
    pub advertise: Option<String>,
    /// The authority that signed the replicas' API certificates, when `advertise` is https.
    pub ca: Option<PathBuf>,
    /// How long a lease lasts unrenewed; the leader renews it five times as often, and stops
    /// calling Odoo (and exits, to come back as a follower) once two thirds of it passed
    /// without a renewal.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { name: None, advertise: None, ca: None, lease: Duration::from_secs(10) }
    }
}

/// The audit trail's anchoring.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A file holding the HMAC key that signs checkpoints of the audit chain, kept outside the
    /// store (make one with `holdfast-hub audit keygen`). Without it the chain is kept but not
    /// anchored, and the hub warns at start.
    pub hmac_key: Option<PathBuf>,
    /// How often the chain's head is signed (when it moved).
    #[serde(default = "default_checkpoint_every", with = "humantime_serde")]
    pub checkpoint_every: Duration,
}

fn default_checkpoint_every() -> Duration {
    Duration::from_secs(300)
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { hmac_key: None, checkpoint_every: default_checkpoint_every() }
    }
}

impl AuditConfig {
    /// The checkpoint key: the file holds it in hex, at least [`crate::audit::KEY_BYTES`] bytes.
    pub fn key(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(path) = &self.hmac_key else { return Ok(None) };
        let text = std::fs::read_to_string(path).map_err(|e| format!("audit.hmac_key: {}: {e}", path.display()))?;
        let key = hex::decode(text.trim()).map_err(|e| {
            format!("audit.hmac_key: {}: not hex ({e}); make one with holdfast-hub audit keygen", path.display())
        })?;
        if key.len() < crate::audit::KEY_BYTES {
            return Err(format!(
                "audit.hmac_key: {}: {} bytes, at least {} needed",
                path.display(),
                key.len(),
                crate::audit::KEY_BYTES
            ));
        }
        Ok(Some(key))
    }
}

fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// Shortest ledger retention accepted.
pub const RETENTION_MIN: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// UDP address of the QUIC listener for agents.
    pub listen: SocketAddr,
    /// The certificate authority that signs plant certificates.
    pub ca: PathBuf,
    /// The hub's certificate chain and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A connection silent this long is closed (agents keep theirs alive at a third of their own
    /// idle timeout; keep both the same).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP address of the API and the dashboard.
    pub listen: SocketAddr,
    /// The API's TLS certificate chain and key (PEM). Required unless `plain_http`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Plain HTTP instead of TLS: allowed only on a loopback address (a reverse proxy on the
    /// same machine, or a test).
    #[serde(default)]
    pub plain_http: bool,
    /// The API tokens (hashes, names and roles; see [`crate::tokens`]). By default
    /// `api-tokens.json` beside the store.
    #[serde(default)]
    pub tokens: Option<PathBuf>,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For` names the client: the
    /// limit on failed authentications is then kept per client, not per proxy.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Config {
    /// Where the API tokens are kept.
    pub fn tokens_path(&self) -> PathBuf {
        self.api.tokens.clone().unwrap_or_else(|| {
            let store = self.store.path.as_deref().unwrap_or(Path::new("./hub.db"));
            store.parent().unwrap_or(Path::new(".")).join("api-tokens.json")
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Through the `holdfast_inbox` addon: exactly once.
    Inbox,
    /// One `execute_kw` per transaction against any Odoo; lost answers are checked by the
    /// registry before a resend (see [`crate::plain`]).
    Plain,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OdooConfig {
    /// Base URL, such as `https://odoo.example.com`.
    pub url: String,
    pub database: String,
    pub login: String,
    /// An API key (40 hex characters) or password...
    #[serde(default)]
    pub api_key: String,
    /// ...or the file holding it (its first line; a mounted secret), one or the other.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    pub mode: DeliveryMode,
    /// A call with no answer after this long has an unknown outcome.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest gap between two probes of a settled verdict (see [`crate::probe`]).
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Odoo's `limit_time_real`: in plain mode a call without an answer is checked only this
    /// long after it was sent, when Odoo has killed its worker if it still ran.
    #[serde(default = "default_limit_time_real", with = "humantime_serde")]
    pub limit_time_real: Duration,
    /// Plain mode: how a lost answer is checked, per model and method, beyond the built-in
    /// read-only methods and absolute writes.
    #[serde(default)]
    pub checks: Vec<crate::plain::Declared>,
}

fn default_limit_time_real() -> Duration {
    Duration::from_secs(120)
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_call_timeout() -> Duration {
    Duration::from_secs(150)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplierConfig {
    /// Odoo calls in flight at once, at most.
    #[serde(default = "default_calls_max")]
    pub calls_max: usize,
    /// Transactions per inbox batch, at most.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// First retry delay after an outage-type failure; doubles up to `retry_max`.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Tries of a key that keeps conflicting in Odoo (`SerializationFailure` after Odoo's own
    /// retries), or whose call Odoo keeps refusing whole, before its first transaction is
    /// quarantined. Outages and lost answers are retried without limit.
    #[serde(default = "default_retry_budget")]
    pub retry_budget: u32,
}

fn default_calls_max() -> usize {
    4
}
fn default_batch_max() -> usize {
    100
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_retry_budget() -> u32 {
    10
}
fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}

impl Default for ApplierConfig {
    fn default() -> Self {
        Self {
            calls_max: default_calls_max(),
            batch_max: default_batch_max(),
            retry_initial: default_retry_initial(),
            retry_max: default_retry_max(),
            retry_budget: default_retry_budget(),
        }
    }
}

/// Most Odoo calls in flight: Odoo's worker count is the real limit, and a hub must never
/// take all of them.
pub const CALLS_MAX: usize = 64;
/// Most transactions in one inbox batch (the addon bounds it by time as well).
pub const BATCH_MAX: usize = 1000;

/// Everything wrong with a config file, each with what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl Config {
    /// Parses the text of a config file and checks it. `base` is the folder relative paths
    /// are taken from.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError { problems: vec![e.to_string().trim_end().to_owned()] })?;
        for p in [&mut cfg.sync.ca, &mut cfg.sync.cert, &mut cfg.sync.key]
            .into_iter()
            .chain(cfg.store.path.as_mut())
            .chain(cfg.store.postgres_ca.as_mut())
            .chain(cfg.store.postgres_password_file.as_mut())
            .chain(cfg.cluster.ca.as_mut())
            .chain(cfg.audit.hmac_key.as_mut())
            .chain(cfg.api.tokens.as_mut())
            .chain(cfg.api.cert.as_mut())
            .chain(cfg.api.key.as_mut())
            .chain(cfg.odoo.api_key_file.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(file) = &cfg.odoo.api_key_file {
            if !cfg.odoo.api_key.is_empty() {
                return Err(ConfigError {
                    problems: vec!["odoo.api_key and odoo.api_key_file: give one or the other".into()],
                });
            }
            let text = std::fs::read_to_string(file)
                .map_err(|e| ConfigError { problems: vec![format!("odoo.api_key_file: {}: {e}", file.display())] })?;
            cfg.odoo.api_key = text.lines().next().unwrap_or("").trim().to_owned();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.sync.idle_timeout) {
            problems.push("sync.idle_timeout: must be between 1s and 10m".to_owned());
        }
        match (&self.api.cert, &self.api.key, self.api.plain_http) {
            (Some(_), Some(_), false) => {}
            (None, None, true) if self.api.listen.ip().is_loopback() => {}
            (None, None, true) => problems.push(format!(
                "api.plain_http: only on a loopback address, not {} (give api.cert and api.key for TLS)",
                self.api.listen
            )),
            (_, _, true) => problems.push("api.plain_http: give either api.cert and api.key, or plain_http".to_owned()),
            (Some(_), None, false) | (None, Some(_), false) => {
                problems.push("api.cert and api.key: give both".to_owned())
            }
            (None, None, false) => problems
                .push("api: give api.cert and api.key (TLS), or plain_http = true on a loopback address".to_owned()),
        }
        if self.audit.checkpoint_every < Duration::from_secs(1) {
            problems.push("audit.checkpoint_every: must be at least 1s".to_owned());
        }
        if let Err(e) = self.audit.key() {
            problems.push(e);
        }
        if let Err(mut e) = crate::policy::Policies::new(&self.plants) {
            problems.append(&mut e);
        }
        if let Err(mut e) = self.reopening.coordinator() {
            problems.append(&mut e);
        }
        match (&self.store.path, &self.store.postgres) {
            (Some(_), None) => {}
            (None, Some(_)) if self.api.tokens.is_none() => problems.push(
                "api.tokens: with store.postgres, name the tokens file every replica reads (there is no store.path to keep it beside)".to_owned(),
            ),
            (None, Some(_)) => {}
            (Some(_), Some(_)) => problems.push("store: give store.path (SQLite) or store.postgres, not both".to_owned()),
            (None, None) => problems.push("store: give store.path (SQLite, one hub) or store.postgres (replicated hubs)".to_owned()),
        }
        if !(Duration::from_secs(2)..=Duration::from_secs(300)).contains(&self.cluster.lease) {
            problems.push("cluster.lease: must be between 2s and 5m".to_owned());
        }
        if self.store.retention < RETENTION_MIN {
            problems.push(format!(
                "store.retention: {} is below the shortest, 1h",
                humantime::format_duration(self.store.retention)
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&self.odoo.probe_interval) {
            problems.push("odoo.probe_interval: must be between 100ms and 1h".to_owned());
        }
        if !(self.odoo.url.starts_with("http://") || self.odoo.url.starts_with("https://")) {
            problems.push(format!("odoo.url: {:?} must start with http:// or https://", self.odoo.url));
        }
        for (name, value) in [
            ("odoo.database", &self.odoo.database),
            ("odoo.login", &self.odoo.login),
            ("odoo.api_key", &self.odoo.api_key),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{name}: must not be empty"));
            }
        }
        if !(1..=CALLS_MAX).contains(&self.applier.calls_max) {
            problems.push(format!("applier.calls_max: {} must be between 1 and {CALLS_MAX}", self.applier.calls_max));
        }
        if !(1..=BATCH_MAX).contains(&self.applier.batch_max) {
            problems.push(format!("applier.batch_max: {} must be between 1 and {BATCH_MAX}", self.applier.batch_max));
        }
        if self.applier.retry_initial.is_zero() || self.applier.retry_initial > self.applier.retry_max {
            problems.push("applier.retry_initial: must be above zero and at most applier.retry_max".to_owned());
        }
        if self.odoo.timeout < Duration::from_secs(1) {
            problems.push("odoo.timeout: must be at least 1s".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError { problems }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[store]
path = "hub.db"
[sync]
listen = "127.0.0.1:4433"
ca = "certs/ca.pem"
cert = "certs/hub.pem"
key = "certs/hub.key"
[api]
listen = "127.0.0.1:8440"
plain_http = true
[odoo]
url = "http://127.0.0.1:8069"
database = "holdfast"
login = "hub"
api_key = "k"
mode = "inbox"
"#;

    #[test]
    fn relative_paths_are_taken_from_the_config_folder() {
        let cfg = Config::parse(GOOD, Path::new("/etc/holdfast")).unwrap();
        assert_eq!(cfg.store.path.as_deref(), Some(Path::new("/etc/holdfast/hub.db")));
        assert_eq!(cfg.sync.ca, Path::new("/etc/holdfast/certs/ca.pem"));
        assert_eq!(cfg.applier.calls_max, 4);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let text = GOOD.replace("[api]", "[api]\nlisten_tls = true");
        let err = Config::parse(&text, Path::new("/")).unwrap_err();
        assert!(err.problems[0].contains("unknown field `listen_tls`"), "{err}");
    }

    #[test]
    fn the_api_is_tls_unless_plain_http_on_loopback_is_asked_for() {
        let tls = GOOD.replace("plain_http = true", "cert = \"certs/api.pem\"\nkey = \"certs/api.key\"");
        let cfg = Config::parse(&tls, Path::new("/etc/holdfast")).unwrap();
        assert_eq!(cfg.api.cert.as_deref(), Some(Path::new("/etc/holdfast/certs/api.pem")));
        let problems = |text: String| Config::parse(&text, Path::new("/")).unwrap_err().problems;
        assert_eq!(
            problems(GOOD.replace("plain_http = true\n", "")),
            ["api: give api.cert and api.key (TLS), or plain_http = true on a loopback address"]
        );
        assert_eq!(
            problems(GOOD.replace("listen = \"127.0.0.1:8440\"", "listen = \"0.0.0.0:8440\"")),
            ["api.plain_http: only on a loopback address, not 0.0.0.0:8440 (give api.cert and api.key for TLS)"]
        );
        assert_eq!(
            problems(GOOD.replace("plain_http = true", "cert = \"api.pem\"")),
            ["api.cert and api.key: give both"]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = GOOD.replace("http://127.0.0.1:8069", "127.0.0.1:8069").replace("login = \"hub\"", "login = \"\"")
            + "[applier]\ncalls_max = 0\nbatch_max = 5000\n";
        let err = Config::parse(&text, Path::new("/")).unwrap_err();
        assert_eq!(
            err.problems,
            vec![
                "odoo.url: \"127.0.0.1:8069\" must start with http:// or https://".to_owned(),
                "odoo.login: must not be empty".to_owned(),
                "applier.calls_max: 0 must be between 1 and 64".to_owned(),
                "applier.batch_max: 5000 must be between 1 and 1000".to_owned(),
            ]
        );
    }

    #[test]
    fn the_odoo_key_may_come_from_a_file_one_or_the_other() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("odoo.key"), "0f3b8e1c\n").unwrap();
        let from_file = GOOD.replace("api_key = \"k\"", "api_key_file = \"odoo.key\"");
        assert_eq!(Config::parse(&from_file, dir.path()).unwrap().odoo.api_key, "0f3b8e1c");
        let problems = |text: &str| Config::parse(text, dir.path()).unwrap_err().problems;
        let both = GOOD.replace("api_key = \"k\"", "api_key = \"k\"\napi_key_file = \"odoo.key\"");
        assert_eq!(problems(&both), ["odoo.api_key and odoo.api_key_file: give one or the other"]);
        let missing = GOOD.replace("api_key = \"k\"", "api_key_file = \"nowhere.key\"");
        assert!(problems(&missing)[0].starts_with("odoo.api_key_file: "), "{:?}", problems(&missing));
        assert_eq!(problems(&GOOD.replace("api_key = \"k\"\n", "")), ["odoo.api_key: must not be empty"]);
    }

    #[test]
    fn plant_policies_are_parsed_and_checked() {
        let good = format!("{GOOD}[plants.plant-a]\nallow = [\"stock.move:write\"]\ncompany_id = 2\n");
        let cfg = Config::parse(&good, Path::new("/")).unwrap();
        assert_eq!(cfg.plants["plant-a"].company_id, Some(2));
        let bad = format!("{GOOD}[plants.plant-a]\nallow = [\"stock.move.write\"]\n");
        assert_eq!(
            Config::parse(&bad, Path::new("/")).unwrap_err().problems,
            vec![
                "plants.plant-a.allow: \"stock.move.write\" must be model:method, for example \"stock.move:write\""
                    .to_owned()
            ]
        );
        let unknown = format!("{GOOD}[plants.plant-a]\nallow = []\ndeny = []\n");
        assert!(Config::parse(&unknown, Path::new("/")).unwrap_err().problems[0].contains("unknown field `deny`"));
    }
}
