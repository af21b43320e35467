//! The local control socket: a Unix socket where `holdfast-agent offline` asks the running agent
//! to change plant IT's manual state. One JSON request line, one JSON answer line per connection.
//! The peer's credentials (not anything it sends) name the user in the audit record.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::journal::AuditRecord;
use crate::mode::{ManualKind, ManualState};
use crate::run::{Shared, now_ms};

/// Longest request line.
pub const REQUEST_BYTES_MAX: u64 = 4096;
/// A client that does not send its request (or read its answer) within this is dropped.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// What `offline on|off` asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The manual state to set, or none to switch the plant back on.
    pub kind: Option<ManualKind>,
    pub why: String,
    /// How long it lasts, if it ends by itself.
    #[serde(default)]
    pub for_ms: Option<i64>,
}

impl Request {
    /// The manual state this request sets for `who` at `now_ms`, and the audit record of it: the
    /// one place both the running agent and the stopped-agent fallback make them.
    pub fn change(&self, who: &str, now_ms: i64) -> (Option<ManualState>, AuditRecord) {
        let state = self.kind.map(|kind| ManualState {
            kind,
            who: who.to_owned(),
            why: self.why.clone(),
            since_ms: now_ms,
            until_ms: self.for_ms.map(|d| now_ms + d),
        });
        let action = state.as_ref().map_or("manual_off".to_owned(), |m| format!("manual_{}_on", m.kind.as_str()));
        (state, AuditRecord { at_ms: now_ms, actor: format!("user:{who}"), action, reason: self.why.clone() })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default)]
    pub state: Option<ManualState>,
    #[serde(default)]
    pub error: Option<String>,
    /// The user the agent recorded, from the socket's peer credentials.
    pub who: String,
}

/// Binds the socket (replacing a stale one left by a crash) with mode 0660.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

pub async fn serve(shared: Arc<Shared>, listener: UnixListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                // One request per connection, bounded in time: handled inline, in order.
                if let Err(e) = tokio::time::timeout(CLIENT_TIMEOUT, handle(&shared, stream)).await.unwrap_or_else(|_| Err("the client was too slow".into())) {
                    warn!(error = %e, "control request failed");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn handle(shared: &Shared, stream: UnixStream) -> Result<(), String> {
    let uid = stream.peer_cred().map_err(|e| e.to_string())?.uid();
    let who = user_name(uid);
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    use tokio::io::AsyncReadExt;
    BufReader::new(r.take(REQUEST_BYTES_MAX)).read_line(&mut line).await.map_err(|e| e.to_string())?;
    let answer = match serde_json::from_str::<Request>(&line) {
        Err(e) => {
            Answer { ok: false, state: None, error: Some(format!("not a control request: {e}")), who: who.clone() }
        }
        Ok(req) => apply(shared, req, &who).await,
    };
    let mut text = serde_json::to_string(&answer).map_err(|e| e.to_string())?;
    text.push('\n');
    w.write_all(text.as_bytes()).await.map_err(|e| e.to_string())
}

async fn apply(shared: &Shared, req: Request, who: &str) -> Answer {
    let now = now_ms();
    if req.why.trim().is_empty() {
        return Answer {
            ok: false,
            state: None,
            error: Some("say why, for the audit trail".into()),
            who: who.to_owned(),
        };
    }
    let (state, audit) = req.change(who, now);
    match shared.journal.set_manual(state.clone(), audit).await {
        Ok(()) => {
            info!(%who, state = ?state.as_ref().map(|m| m.kind), "manual state changed");
            shared.manual.send_replace(state.clone());
            Answer { ok: true, state, error: None, who: who.to_owned() }
        }
        Err(e) => Answer { ok: false, state: None, error: Some(e.to_string()), who: who.to_owned() },
    }
}

/// A uid's name from /etc/passwd, or `uid:N`.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid:{uid}"))
}
