//! The hub's HTTP status API (axum), under `/api/v1`. Errors are JSON with a stable code and a
//! sentence.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crate::shared::{Alarm, Shared};
use crate::store::{Store, StoreError};

/// One plant in `GET /api/v1/plants`.
#[derive(Debug, Serialize)]
pub struct PlantView {
    pub plant: String,
    pub connected: bool,
    /// The plant as the hub sees it: `manual_offline` or `isolated` while plant IT's manual
    /// state holds (nothing more is applied for it), else `online` while its session is up,
    /// else `offline`.
    pub mode: &'static str,
    /// Plant IT's manual state, from the plant's heartbeats (kept across hub restarts).
    pub manual: Option<holdfast_protocol::ManualNotice>,
    /// When the last heartbeat arrived, and what it said of the gateway and its journal.
    pub last_heartbeat_ms: Option<i64>,
    pub health: Option<holdfast_protocol::Health>,
    pub gateway_journal: Option<holdfast_protocol::JournalFigures>,
    /// The plant's own view of Odoo and of its hub link, with the changes it saw while the hub
    /// could not hear it (from the heartbeat; absent when the gateway does not probe Odoo).
    pub diagnosis: Option<holdfast_protocol::Diagnosis>,
    pub journal_id: String,
    pub epoch: u32,
    pub stored_seq: u64,
    pub applied_seq: u64,
    pub quarantined: u64,
}

pub fn router<S: Store>(shared: Arc<Shared<S>>) -> Router {
    Router::new()
        .route("/api/v1/plants", get(plants::<S>))
        .route("/api/v1/status", get(status::<S>))
        .fallback(not_found)
        .with_state(shared)
}

struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": {"code": self.1, "message": self.2}}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
    }
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "not_found", "no such route; see /api/v1/plants and /api/v1/status".into())
}

async fn plants<S: Store>(State(shared): State<Arc<Shared<S>>>) -> Result<Json<serde_json::Value>, ApiError> {
    let rows = shared.store.plants().await?;
    let manuals: std::collections::HashMap<String, holdfast_protocol::ManualNotice> =
        shared.store.plant_manuals().await?.into_iter().collect();
    let connections = shared.connections.lock().expect("connections lock").clone();
    let heartbeats = shared.heartbeats.lock().expect("heartbeats lock").clone();
    let plants: Vec<PlantView> = rows
        .into_iter()
        .map(|r| {
            let connected = connections.contains_key(&r.plant);
            let manual = manuals.get(&r.plant).cloned();
            let beat = heartbeats.get(&r.plant);
            PlantView {
                connected,
                mode: match (&manual, connected) {
                    (Some(m), _) if m.kind == "isolated" => "isolated",
                    (Some(_), _) => "manual_offline",
                    (None, true) => "online",
                    (None, false) => "offline",
                },
                manual,
                last_heartbeat_ms: beat.map(|(at, _)| *at),
                health: beat.map(|(_, b)| b.health.clone()),
                gateway_journal: beat.map(|(_, b)| b.journal.clone()),
                diagnosis: beat.and_then(|(_, b)| b.diagnosis.clone()),
                journal_id: r.journal_id.to_string(),
                epoch: r.state.epoch,
                stored_seq: r.state.stored_seq,
                applied_seq: r.state.applied_seq,
                quarantined: r.quarantined,
                plant: r.plant,
            }
        })
        .collect();
    Ok(Json(json!({ "plants": plants })))
}

#[derive(Debug, Serialize)]
struct StatusView {
    alarms: Vec<Alarm>,
    plants_connected: usize,
}

async fn status<S: Store>(State(shared): State<Arc<Shared<S>>>) -> Json<serde_json::Value> {
    let view = StatusView {
        alarms: shared.alarms(),
        plants_connected: shared.connections.lock().expect("connections lock").len(),
    };
    Json(json!(view))
}
