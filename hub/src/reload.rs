//! SIGHUP (`systemctl reload holdfast-hub`): the hub reads its config file again and takes,
//! while it runs, the plants' policies (`[plants.*]`: a plant's allowed calls or company),
//! the ledger's retention, and its certificate files: the sync listener's (`sync.ca`, `cert`,
//! `key`) and, when the API serves HTTPS, the API's; a renewed certificate is served from the
//! next handshake, and connected plants stay connected. Everything else waits for a restart
//! (the reopening's plan and plants are changed through its verbs meanwhile), and the reload
//! says which keys do. A file with any problem changes nothing.

use holdfast_protocol::reload::{Changes, changes, summary};
use std::path::Path;

use crate::config::Config;
use crate::run::Live;

/// The keys a running hub takes, whatever its API serves.
pub const LIVE: &[&str] = &["plants", "store.retention", "sync.ca", "sync.cert", "sync.key"];
/// And these while its API serves HTTPS.
pub const LIVE_TLS: &[&str] = &["api.cert", "api.key"];

/// Reads the file at `path` again and puts its live settings in force. `started` is the text
/// the hub started with: the answer lists every key changed since, live or waiting for a restart.
pub fn reload(live: &Live, path: &Path, started: &str) -> anyhow::Result<Changes> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cfg = Config::parse(&text, path.parent().unwrap_or(Path::new(".")))
        .map_err(|e| anyhow::anyhow!("{}", e.problems.join("; ")))?;
    let keys: Vec<&str> = LIVE.iter().chain(live.api_tls.as_ref().map_or(&[][..], |_| LIVE_TLS)).copied().collect();
    let changed = changes(started, &text, &keys).map_err(anyhow::Error::msg)?;
    // Everything is built before anything is replaced.
    let policies = crate::policy::Policies::new(&cfg.plants).map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    let sync = crate::run::sync_server_config(&cfg.sync)?;
    let api = match (&live.api_tls, &cfg.api.cert, &cfg.api.key) {
        (Some(_), Some(cert), Some(key)) => Some(crate::tls_api::server_config(cert, key)?),
        (Some(_), _, _) => anyhow::bail!("api.cert and api.key: the API serves HTTPS; both must stay set"),
        (None, _, _) => None,
    };
    live.policies.replace(policies);
    *live.retention.lock().expect("retention lock") = cfg.store.retention;
    live.sync.set_server_config(Some(sync));
    if let (Some(tls), Some(api)) = (&live.api_tls, api) {
        *tls.write().expect("tls lock") = api;
    }
    Ok(changed)
}

/// [`reload`], audited whatever its outcome (actor `hub`, action `config_reloaded` or
/// `config_reload_refused`, the summary as the reason).
pub async fn reload_audited(live: &Live, path: &Path, started: &str) -> Result<Changes, String> {
    let result = reload(live, path, started).map_err(|e| format!("{e:#}"));
    let entry = crate::audit::AuditEntry {
        at_ms: crate::shared::now_ms(),
        actor: "hub".into(),
        action: if result.is_ok() { "config_reloaded" } else { "config_reload_refused" }.into(),
        target: format!("config:{}", path.display()),
        reason: summary(&result),
    };
    if let Err(e) = (live.audit)(entry).await {
        tracing::warn!(error = %e, "the reload could not be audited");
    }
    result
}
