//! What `holdfast-agent status` and `GET /v1/status` show.

use serde::Serialize;

use crate::journal::{FullAlarm, JournalState, Limits, Usage};
use crate::mode::{self, ManualState};
use crate::mqtt::MqttState;

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
    /// `online` (uploading), `offline` (hub unreachable, buffering), `manual_offline` or `isolated`
    /// (plant IT's manual state, shown in `manual`).
    pub mode: &'static str,
    /// Plant IT's manual state: who set it, why, since and until when.
    pub manual: Option<ManualState>,
    /// Whether the agent process is running (false when read from the journal file directly).
    pub running: bool,
    /// Transactions journaled and not yet applied in Odoo.
    pub backlog: u64,
    /// Transactions journaled and not yet stored at the hub.
    pub unsent: u64,
    pub journal: JournalView,
    pub capacity: CapacityView,
    pub hub: HubView,
    /// The MQTT link, when MQTT ingest is configured.
    pub mqtt: Option<MqttState>,
    /// Payloads kept in the `rejected` table (see `holdfast-agent rejected list`).
    pub rejected: u64,
    /// New transactions per ingest path since the agent started (absent when it is stopped).
    pub ingested: Option<std::collections::BTreeMap<String, u64>>,
    /// Transactions the hub quarantined (Odoo refused them), with Odoo's message, as the hub
    /// last said (empty while the agent is stopped or has not heard from the hub).
    pub quarantined: Vec<holdfast_protocol::Notice>,
    /// The agent's own view of Odoo (`[odoo]` probe) and the changes it and the hub link went
    /// through; absent when no Odoo address is configured or the agent is stopped.
    pub odoo: Option<holdfast_protocol::Diagnosis>,
    /// The plant in the hub's reopening after an incident: `live`, `held`, `draining` or
    /// `caught_up`, its wave and when it should have caught up (as the hub last said).
    pub reopening: Option<holdfast_protocol::Reopening>,
    /// Conditions plant IT must act on.
    pub alarms: Vec<Alarm>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JournalView {
    pub id: String,
    pub path: String,
    pub last_seq: u64,
    /// Rows still held (not yet compacted).
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CapacityView {
    pub rows_max: u64,
    pub bytes_max: u64,
    pub disk_free: Option<u64>,
    pub disk_free_min: u64,
    /// Transactions a second over the last minute.
    pub rate_per_s: f64,
    /// Seconds until a limit is reached at that rate; null when nothing comes in.
    pub time_to_full_s: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HubView {
    pub address: String,
    pub connected: bool,
    pub stored_seq: u64,
    pub applied_seq: u64,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alarm {
    pub name: &'static str,
    pub since_ms: i64,
    pub message: String,
}

/// Everything the status is made of.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub plant: &'a str,
    pub path: &'a str,
    pub hub_address: &'a str,
    pub journal: &'a JournalState,
    pub usage: &'a Usage,
    pub limits: &'a Limits,
    pub link: &'a LinkState,
    pub mqtt: Option<&'a MqttState>,
    pub manual: Option<&'a ManualState>,
    pub ingested: Option<std::collections::BTreeMap<String, u64>>,
    /// What the hub last said it could not apply.
    pub quarantined: Vec<holdfast_protocol::Notice>,
    pub odoo: Option<holdfast_protocol::Diagnosis>,
    pub reopening: Option<holdfast_protocol::Reopening>,
    pub now_ms: i64,
    pub running: bool,
}

impl Status {
    pub fn new(i: Inputs<'_>) -> Self {
        let j = i.journal;
        let alarms = i
            .usage
            .full
            .iter()
            .map(|FullAlarm { since_ms, message }| Alarm {
                name: "journal_full",
                since_ms: *since_ms,
                message: message.clone(),
            })
            .collect();
        Self {
            plant: i.plant.to_owned(),
            mode: mode::mode(i.link.connected, i.manual, i.now_ms).as_str(),
            manual: i.manual.filter(|m| !mode::expired(m, i.now_ms)).cloned(),
            running: i.running,
            backlog: j.last_seq - j.applied_seq.min(j.last_seq),
            unsent: j.last_seq - j.stored_seq.min(j.last_seq),
            journal: JournalView {
                id: j.journal_id.to_string(),
                path: i.path.to_owned(),
                last_seq: j.last_seq,
                rows: i.usage.rows,
                bytes: i.usage.bytes,
            },
            capacity: CapacityView {
                rows_max: i.limits.rows_max,
                bytes_max: i.limits.bytes_max,
                disk_free: i.usage.disk_free,
                disk_free_min: i.limits.disk_free_min,
                rate_per_s: (i.usage.rows_per_s * 100.0).round() / 100.0,
                time_to_full_s: i.usage.time_to_full_s(i.limits),
            },
            hub: HubView {
                address: i.hub_address.to_owned(),
                connected: i.link.connected,
                stored_seq: j.stored_seq,
                applied_seq: j.applied_seq,
                last_error: i.link.last_error.clone(),
            },
            mqtt: i.mqtt.cloned(),
            rejected: i.usage.rejected,
            ingested: i.ingested,
            quarantined: i.quarantined,
            odoo: i.odoo,
            reopening: i.reopening,
            alarms,
        }
    }
}
