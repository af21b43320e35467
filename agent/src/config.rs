//! The agent's configuration file: parsed (unknown keys refused), then validated with every
//! problem reported at once. Relative paths are taken from the config file's folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This gateway's plant; it must match the plant in the client certificate.
    pub plant: String,
    pub journal: JournalConfig,
    pub http: HttpConfig,
    pub hub: HubConfig,
    /// Ingest from the plant's MQTT broker, if configured.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    /// Scanner stations on the TCP line protocol.
    #[serde(default)]
    pub stations: Vec<StationConfig>,
    #[serde(default)]
    pub control: ControlConfig,
    /// What the agent does when the hub reopens its plant after an incident.
    #[serde(default)]
    pub reopening: ReopeningConfig,
    /// Odoo as this plant reaches it, for the agent's own diagnosis (no credentials: the
    /// gateway never writes to Odoo). Without it the agent does not probe.
    #[serde(default)]
    pub odoo: Option<OdooProbeConfig>,
    /// The read-only metrics listener (Prometheus text at `GET /metrics`); none without it.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// `[metrics]`: where Prometheus scrapes the agent. It serves `GET /metrics` only, so it may
/// listen on the plant's monitoring network (the control API stays on loopback).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

/// `[odoo]`: where the probe looks and how often.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OdooProbeConfig {
    /// Odoo's base URL, as the plant's browsers reach it (for example `https://erp.example.com`).
    pub url: String,
    /// The longest gap between two probes of a settled verdict (they are spread uniformly below
    /// it); a change is confirmed by 8 probes in a row, the first ones much closer together.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
    /// How long one probe request may take.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `[reopening]`: a local command run when the hub reopens the plant (its wave opens after an
/// incident), for example to re-enable a station; it gets `HOLDFAST_PLANT`, `HOLDFAST_STATE`
/// and `HOLDFAST_WAVE` in its environment.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReopeningConfig {
    /// The program and its arguments (no shell).
    #[serde(default)]
    pub on_reopened: Vec<String>,
}

/// The local control socket `holdfast-agent offline` talks to while the agent runs.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Unix socket path; by default `holdfast-agent.sock` beside the journal. Its file mode is
    /// 0660: plant IT's group may use it; the peer's credentials name the user in the audit.
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

impl Config {
    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.control
            .socket
            .clone()
            .unwrap_or_else(|| self.journal.path.parent().unwrap_or(Path::new(".")).join("holdfast-agent.sock"))
    }
}

/// A scanner station: one TCP listener whose lines become transactions through a template.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// A name for logs and status, such as "dock-1-receiving".
    pub name: String,
    pub listen: SocketAddr,
    /// The source kind of its transactions.
    #[serde(default = "default_station_source")]
    pub source: String,
    pub device: String,
    /// Ordering key of its transactions, which may use `{code}` (one key per scanned order, say);
    /// by default the plant.
    #[serde(default)]
    pub order_key: Option<String>,
    /// Source addresses allowed to connect (CIDR); by default loopback only.
    #[serde(default = "default_station_allow")]
    pub allow: Vec<ipnet::IpNet>,
    /// A code may carry a quantity after this character, such as '*' in "5901234123457*12".
    #[serde(default)]
    pub qty_separator: Option<char>,
    pub template: crate::template::Template,
}

fn default_station_source() -> String {
    "scanner".to_owned()
}
fn default_station_allow() -> Vec<ipnet::IpNet> {
    vec!["127.0.0.0/8".parse().expect("literal"), "::1/128".parse().expect("literal")]
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// The broker's `host:port`.
    pub broker: String,
    /// A stable client id: the broker keeps this session's subscriptions and queued messages.
    pub client_id: String,
    /// Topic filters; by default `holdfast/<plant>/+/+`.
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (its first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_mqtt_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
}

fn default_mqtt_keep_alive() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    pub path: PathBuf,
    /// How long an applied transaction is kept after it was received, as a second copy.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Most transactions held; beyond it new ones are refused (nothing held is dropped).
    #[serde(default = "default_rows_max")]
    pub rows_max: u64,
    /// Most transaction bytes held, such as "8 GiB".
    #[serde(default = "default_bytes_max")]
    pub bytes_max: ByteSize,
    /// Free space to leave on the journal's filesystem, such as "1 GiB".
    #[serde(default = "default_disk_free_min")]
    pub disk_free_min: ByteSize,
}

fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_rows_max() -> u64 {
    50_000_000
}
fn default_bytes_max() -> ByteSize {
    ByteSize::gib(16)
}
fn default_disk_free_min() -> ByteSize {
    ByteSize::gib(1)
}

impl JournalConfig {
    pub fn limits(&self) -> crate::journal::Limits {
        crate::journal::Limits {
            rows_max: self.rows_max,
            bytes_max: self.bytes_max.as_u64(),
            disk_free_min: self.disk_free_min.as_u64(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// TCP address of the producer API (`POST /v1/transactions`) and the local status.
    pub listen: SocketAddr,
    /// Producer tokens; when any is given, every request needs `Authorization: Bearer <token>`.
    /// Required when `listen` is not a loopback address. Make one with `holdfast-agent token new`.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

impl HttpConfig {
    /// The producer tokens' digests, lower-case.
    pub fn token_digests(&self) -> Vec<String> {
        self.tokens.iter().map(|t| t.sha256.to_ascii_lowercase()).collect()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, for logs and revocation.
    pub name: String,
    /// SHA-256 of the token, in hex: the config never holds the token itself.
    pub sha256: String,
}

/// `host:port` (IPv6 literals in brackets) into its host and port.
pub fn split_host_port(address: &str) -> Result<(&str, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} must be host:port, such as hub.example.com:4433"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{address:?}: {port:?} is not a port (1 to 65535)"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err(format!("{address:?} names no host"));
    }
    Ok((host, port))
}

impl HubConfig {
    /// The hub's `index`-th address, resolving a DNS name (the error says it was DNS).
    pub async fn resolve(&self, index: usize) -> Result<SocketAddr, String> {
        let address = self.addresses.get(index).ok_or_else(|| format!("hub.address has no entry {index}"))?;
        let (host, port) = split_host_port(address)?;
        let mut addrs =
            tokio::net::lookup_host((host, port)).await.map_err(|e| format!("DNS: cannot resolve {host:?}: {e}"))?;
        addrs.next().ok_or_else(|| format!("DNS: {host:?} has no address"))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// The hub's sync listener, `host:port` (a DNS name or an IP address; UDP), or a list of
    /// them (the replicas of one hub): the agent prefers the last that worked and moves on to
    /// the next, with backoff, when one fails. A name is resolved at every connection attempt,
    /// so a hub that moves is followed.
    #[serde(rename = "address", deserialize_with = "one_or_many")]
    pub addresses: Vec<String>,
    /// The name in the hub's certificate.
    pub server_name: String,
    /// The authority that signed the hub's and this plant's certificates.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A link silent this long is declared dead and redialled; keep-alives go out at a third of
    /// it. Keep it the same as the hub's `sync.idle_timeout`.
    #[serde(default = "default_hub_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Upload bandwidth cap, such as "2 MiB" a second, for a plant link shared with other
    /// traffic; none by default. Heartbeats are not counted.
    #[serde(default)]
    pub upload_bytes_per_s: Option<ByteSize>,
}

/// `"host:port"` or `["host:port", ...]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(a)) => Ok(vec![a]),
        Ok(OneOrMany::Many(list)) => Ok(list),
        Err(_) => Err(serde::de::Error::custom("must be \"host:port\" or a list of them")),
    }
}

/// The smallest upload cap accepted.
pub const UPLOAD_CAP_MIN: ByteSize = ByteSize::kib(16);

fn default_hub_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Everything wrong with a config file, each with what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl Config {
    /// Parses the text of a config file and checks it. `base` is the folder relative paths are
    /// taken from.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError { problems: vec![e.to_string().trim_end().to_owned()] })?;
        let mut paths = vec![&mut cfg.journal.path, &mut cfg.hub.ca, &mut cfg.hub.cert, &mut cfg.hub.key];
        if let Some(p) = cfg.mqtt.as_mut().and_then(|m| m.password_file.as_mut()) {
            paths.push(p);
        }
        if let Some(p) = cfg.control.socket.as_mut() {
            paths.push(p);
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(m) = cfg.mqtt.as_mut()
            && m.topics.is_empty()
        {
            m.topics = vec![format!("holdfast/{}/+/+", cfg.plant)];
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if !holdfast_protocol::identity::valid_plant_id(&self.plant) {
            problems.push(format!("plant: {:?} must be 1 to 64 characters of a-z, 0-9 and '-'", self.plant));
        }
        if self.hub.addresses.is_empty() {
            problems.push("hub.address: give at least one host:port".to_owned());
        }
        for address in &self.hub.addresses {
            if let Err(e) = split_host_port(address) {
                problems.push(format!("hub.address: {e}"));
            }
        }
        if self.hub.upload_bytes_per_s.is_some_and(|cap| cap < UPLOAD_CAP_MIN) {
            problems.push(format!("hub.upload_bytes_per_s: must be at least {UPLOAD_CAP_MIN}"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.hub.idle_timeout) {
            problems.push("hub.idle_timeout: must be between 1s and 10m".to_owned());
        }
        if self.hub.server_name.trim().is_empty() {
            problems.push("hub.server_name: must not be empty".to_owned());
        }
        if let Some(odoo) = &self.odoo {
            if !(odoo.url.starts_with("http://") || odoo.url.starts_with("https://"))
                || reqwest::Url::parse(&odoo.url).is_err()
            {
                problems.push(format!("odoo.url: {:?} must be an http:// or https:// URL", odoo.url));
            }
            if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&odoo.probe_interval) {
                problems.push("odoo.probe_interval: must be between 100ms and 1h".to_owned());
            }
            if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&odoo.probe_timeout) {
                problems.push("odoo.probe_timeout: must be between 100ms and 1m".to_owned());
            }
        }
        if self.journal.retention < Duration::from_secs(60) {
            problems.push("journal.retention: must be at least 1m".to_owned());
        }
        if self.journal.rows_max == 0 {
            problems.push("journal.rows_max: must be at least 1".to_owned());
        }
        if self.journal.bytes_max.as_u64() < 64 * 1024 {
            problems.push(format!(
                "journal.bytes_max: {} is below the smallest useful journal, 64 KiB",
                self.journal.bytes_max
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut addresses = std::collections::HashSet::from([self.http.listen]);
        if let Some(m) = &self.metrics
            && m.listen.port() != 0
            && !addresses.insert(m.listen)
        {
            problems.push(format!("metrics.listen: {} is already used by another listener", m.listen));
        }
        for (i, st) in self.stations.iter().enumerate() {
            let at = format!("stations[{i}]");
            if !names.insert(st.name.as_str()) {
                problems.push(format!("{at}.name: {:?} is used by another station", st.name));
            }
            // Port 0 asks for any free port, so it never clashes.
            if st.listen.port() != 0 && !addresses.insert(st.listen) {
                problems.push(format!("{at}.listen: {} is already used by another listener", st.listen));
            }
            if holdfast_protocol::SourceKind::parse(&st.source).is_none() {
                problems
                    .push(format!("{at}.source: {:?} is not a source kind (mes, barcode, scanner, plc)", st.source));
            }
            if st.device.is_empty()
                || st.device.contains('/')
                || st.device.len() > holdfast_protocol::txn::NAME_BYTES_MAX
            {
                problems.push(format!("{at}.device: {:?} must be a non-empty name without '/'", st.device));
            }
            if st.allow.is_empty() {
                problems.push(format!("{at}.allow: no address may connect; list the scanners' networks"));
            }
            problems.extend(st.template.problems(&format!("{at}.template")));
        }
        if !self.http.listen.ip().is_loopback() && self.http.tokens.is_empty() {
            problems.push(format!(
                "http.tokens: {} is reachable beyond this machine, so producers need tokens; add [[http.tokens]] (holdfast-agent token new)",
                self.http.listen
            ));
        }
        for t in &self.http.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(format!("http.tokens: the sha256 of token {:?} must be 64 hex characters", t.name));
            }
        }
        if let Some(m) = &self.mqtt {
            if m.broker.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
                problems.push(format!("mqtt.broker: {:?} must be host:port, such as \"127.0.0.1:1883\"", m.broker));
            }
            if m.client_id.trim().is_empty() || m.client_id.len() > 23 {
                problems.push("mqtt.client_id: must be 1 to 23 characters (the broker keeps this session)".to_owned());
            }
            for t in &m.topics {
                if !t.starts_with(&format!("holdfast/{}/", self.plant)) {
                    problems.push(format!("mqtt.topics: {t:?} must start with \"holdfast/{}/\"", self.plant));
                }
            }
            if m.username.is_some() != m.password_file.is_some() {
                problems.push("mqtt.username and mqtt.password_file: give both or neither".to_owned());
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError { problems }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
plant = "plant-a"
[journal]
path = "journal.db"
[http]
listen = "127.0.0.1:8480"
[hub]
address = "127.0.0.1:4433"
server_name = "localhost"
ca = "certs/ca.pem"
cert = "certs/plant-a.pem"
key = "certs/plant-a.key"
"#;

    #[test]
    fn the_hub_address_is_one_or_a_list_each_checked() {
        let one = Config::parse(GOOD, Path::new("/")).unwrap();
        assert_eq!(one.hub.addresses, ["127.0.0.1:4433"]);
        let list = GOOD.replace("\"127.0.0.1:4433\"", "[\"hub-1.example.com:4433\", \"hub-2.example.com:4433\"]");
        assert_eq!(
            Config::parse(&list, Path::new("/")).unwrap().hub.addresses,
            ["hub-1.example.com:4433", "hub-2.example.com:4433"]
        );
        let problems = |text: String| Config::parse(&text, Path::new("/")).unwrap_err().problems;
        assert_eq!(
            problems(GOOD.replace("\"127.0.0.1:4433\"", "[\"hub-1:4433\", \"hub-2\"]")),
            ["hub.address: \"hub-2\" must be host:port, such as hub.example.com:4433"]
        );
        assert_eq!(problems(GOOD.replace("\"127.0.0.1:4433\"", "[]")), ["hub.address: give at least one host:port"]);
        assert!(
            problems(GOOD.replace("\"127.0.0.1:4433\"", "4433"))[0].contains("must be \"host:port\" or a list of them")
        );
    }

    #[test]
    fn parses_with_defaults_and_relative_paths() {
        let cfg = Config::parse(GOOD, Path::new("/etc/holdfast")).unwrap();
        assert_eq!(cfg.journal.path, Path::new("/etc/holdfast/journal.db"));
        assert_eq!(cfg.journal.retention, Duration::from_secs(7 * 24 * 3600));
    }

    #[test]
    fn the_odoo_probe_is_optional_and_its_values_are_checked() {
        assert!(Config::parse(GOOD, Path::new("/")).unwrap().odoo.is_none(), "no [odoo]: no probe");
        let cfg = Config::parse(&format!("{GOOD}[odoo]\nurl = \"https://erp.example.com\"\n"), Path::new("/")).unwrap();
        let odoo = cfg.odoo.unwrap();
        assert_eq!((odoo.probe_interval, odoo.probe_timeout), (Duration::from_secs(10), Duration::from_secs(5)));
        let bad = format!("{GOOD}[odoo]\nurl = \"erp.example.com\"\nprobe_interval = \"0s\"\nprobe_timeout = \"5m\"\n");
        assert_eq!(
            Config::parse(&bad, Path::new("/")).unwrap_err().problems,
            vec![
                "odoo.url: \"erp.example.com\" must be an http:// or https:// URL".to_owned(),
                "odoo.probe_interval: must be between 100ms and 1h".to_owned(),
                "odoo.probe_timeout: must be between 100ms and 1m".to_owned(),
            ]
        );
        let unknown = format!("{GOOD}[odoo]\nurl = \"https://erp.example.com\"\napi_key = \"x\"\n");
        let err = Config::parse(&unknown, Path::new("/")).unwrap_err();
        assert!(err.problems[0].contains("unknown field `api_key`"), "gateways hold no Odoo credentials: {err}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Config::parse(&GOOD.replace("[http]", "[http]\nlisten_port = 1"), Path::new("/")).unwrap_err();
        assert!(err.problems[0].contains("unknown field `listen_port`"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = GOOD
            .replace("plant-a\"\n[journal]", "Plant A\"\n[journal]")
            .replace("server_name = \"localhost\"", "server_name = \" \"")
            .replace("path = \"journal.db\"", "path = \"j.db\"\nretention = \"5s\"");
        let err = Config::parse(&text, Path::new("/")).unwrap_err();
        assert_eq!(
            err.problems,
            vec![
                "plant: \"Plant A\" must be 1 to 64 characters of a-z, 0-9 and '-'".to_owned(),
                "hub.server_name: must not be empty".to_owned(),
                "journal.retention: must be at least 1m".to_owned(),
            ]
        );
    }

    #[test]
    fn the_hub_is_a_name_or_an_address_with_a_port() {
        assert_eq!(split_host_port("hub.example.com:4433"), Ok(("hub.example.com", 4433)));
        assert_eq!(split_host_port("[2001:db8::1]:4433"), Ok(("2001:db8::1", 4433)));
        assert_eq!(split_host_port("10.0.0.5:4433"), Ok(("10.0.0.5", 4433)));
        for (bad, why) in [
            ("hub.example.com", "\"hub.example.com\" must be host:port, such as hub.example.com:4433"),
            ("hub:0", "\"hub:0\": \"0\" is not a port (1 to 65535)"),
            ("hub:https", "\"hub:https\": \"https\" is not a port (1 to 65535)"),
            (":4433", "\":4433\" names no host"),
        ] {
            assert_eq!(split_host_port(bad), Err(why.to_owned()));
            let err = Config::parse(&GOOD.replace("127.0.0.1:4433", bad), Path::new("/")).unwrap_err();
            assert_eq!(err.problems, vec![format!("hub.address: {why}")]);
        }
    }
}
