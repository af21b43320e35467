//! What `holdfast-agent status` and `GET /v1/status` show.

use serde::Serialize;

use crate::journal::JournalState;

/// The uplink as the driver last saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LinkState {
    pub connected: bool,
    pub since_ms: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub plant: String,
    /// `online` while the hub link is up and streaming, `offline` while buffering.
    pub mode: &'static str,
    /// Whether the agent process is running (false when read from the journal file directly).
    pub running: bool,
    /// Transactions journaled and not yet applied in Odoo.
    pub backlog: u64,
    /// Transactions journaled and not yet stored at the hub.
    pub unsent: u64,
    pub journal: JournalView,
    pub hub: HubView,
}

#[derive(Clone, Debug, Serialize)]
pub struct JournalView {
    pub id: String,
    pub path: String,
    pub last_seq: u64,
    pub rows: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct HubView {
    pub address: String,
    pub connected: bool,
    pub stored_seq: u64,
    pub applied_seq: u64,
    pub last_error: Option<String>,
}

impl Status {
    pub fn new(
        plant: &str,
        path: &str,
        hub_address: &str,
        journal: &JournalState,
        link: &LinkState,
        running: bool,
    ) -> Self {
        Self {
            plant: plant.to_owned(),
            mode: if link.connected { "online" } else { "offline" },
            running,
            backlog: journal.last_seq - journal.applied_seq.min(journal.last_seq),
            unsent: journal.last_seq - journal.stored_seq.min(journal.last_seq),
            journal: JournalView {
                id: journal.journal_id.to_string(),
                path: path.to_owned(),
                last_seq: journal.last_seq,
                rows: journal.rows,
            },
            hub: HubView {
                address: hub_address.to_owned(),
                connected: link.connected,
                stored_seq: journal.stored_seq,
                applied_seq: journal.applied_seq,
                last_error: link.last_error.clone(),
            },
        }
    }
}
