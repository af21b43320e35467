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
    /// The agent's mode as the hub sees it: `online` while its session is up, else `offline`.
    pub mode: &'static str,
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
    let connections = shared.connections.lock().expect("connections lock").clone();
    let plants: Vec<PlantView> = rows
        .into_iter()
        .map(|r| {
            let connected = connections.contains_key(&r.plant);
            PlantView {
                connected,
                mode: if connected { "online" } else { "offline" },
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
