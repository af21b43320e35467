//! SIGHUP (`systemctl reload holdfast-agent`): the agent reads its config file again and takes,
//! while it runs, what plant IT changes most: producer tokens, the journal's limits and
//! retention, the upload cap, the reopening hook, and the hub certificate files (a renewed
//! certificate is used from the next connection). Everything else (listeners, the plant, the
//! journal's path, MQTT, stations) waits for a restart, and the reload says which keys do.
//! A file with any problem changes nothing: the agent keeps what it runs with.

use std::path::Path;
use std::sync::Arc;

use holdfast_protocol::reload::{Changes, changes};

use crate::config::{Config, HubConfig};
use crate::run::Shared;

/// The keys the running agent takes.
pub const LIVE: &[&str] = &[
    "http.tokens",
    "journal.rows_max",
    "journal.bytes_max",
    "journal.disk_free_min",
    "journal.retention",
    "hub.upload_bytes_per_s",
    "hub.ca",
    "hub.cert",
    "hub.key",
    "reopening.on_reopened",
];

/// Reads the file at `path` again and puts its live settings in force. `started` is the text
/// the agent started with and `running` its config: the answer lists every key changed since,
/// live or waiting for a restart.
pub fn reload(shared: &Shared, path: &Path, started: &str, running: &Config) -> anyhow::Result<Changes> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cfg = Config::parse(&text, path.parent().unwrap_or(Path::new(".")))
        .map_err(|e| anyhow::anyhow!("{}", e.problems.join("; ")))?;
    let changed = changes(started, &text, LIVE).map_err(anyhow::Error::msg)?;
    // Everything is built before anything is replaced: a certificate for another plant or an
    // unreadable key leaves the agent as it was.
    let hub = HubConfig {
        ca: cfg.hub.ca.clone(),
        cert: cfg.hub.cert.clone(),
        key: cfg.hub.key.clone(),
        ..running.hub.clone()
    };
    let client = crate::uplink::client_config(&running.plant, &hub)?;
    shared.journal.set_limits(cfg.journal.limits());
    *shared.tokens.lock().expect("tokens lock") = Arc::new(cfg.http.token_digests());
    *shared.retention.lock().expect("retention lock") = cfg.journal.retention;
    *shared.upload_cap.lock().expect("upload cap lock") =
        cfg.hub.upload_bytes_per_s.map(|cap| crate::uplink::UploadCap::new(cap.as_u64()));
    *shared.on_reopened.lock().expect("on_reopened lock") = cfg.reopening.on_reopened.clone();
    *shared.client.lock().expect("client lock") = client;
    Ok(changed)
}
