//! The agent's HTTP listener: producers `POST /v1/transactions`; anyone on the plant network can
//! ask a transaction's fate (`GET /v1/transactions/{id}`) and the agent's status (`GET /v1/status`).
//!
//! A request is answered `202` only after every transaction in it is committed in the journal.
//! A request with any invalid transaction is refused whole (`400`, naming the index and field),
//! and nothing of it is journaled. Every error is JSON: `{"error": {"code", "message", ...}}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::journal::{Entry, JournalError};
use crate::producer;
use crate::run::Shared;

/// Largest request body; beyond it the answer is `413 payload_too_large`.
pub const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most transactions in one request; beyond it the answer is `413 too_many_transactions`.
pub const TRANSACTIONS_PER_REQUEST_MAX: usize = 1000;

/// The producer API. With tokens configured (`Shared::tokens`, as the last reload left them),
/// every request must carry `Authorization: Bearer <token>` whose digest is one of them.
pub fn router(shared: Arc<Shared>) -> Router {
    let live = shared.clone();
    Router::new()
        .route("/v1/transactions", post(post_transactions))
        .route("/v1/transactions/{id}", get(get_transaction))
        .route("/v1/status", get(get_status))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route; producers POST to /v1/transactions")
        })
        .layer(axum::middleware::from_fn(move |req: Request<Body>, next: axum::middleware::Next| {
            let tokens = live.tokens.lock().expect("tokens lock").clone();
            async move {
                match authorize(&tokens, req.headers()) {
                    Ok(()) => next.run(req).await,
                    Err(e) => e.into_response(),
                }
            }
        }))
        .with_state(shared)
}

/// The SHA-256 of a token, as configured.
pub fn token_digest(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn authorize(tokens: &[String], headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if tokens.is_empty() {
        return Ok(());
    }
    let presented =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = presented else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <producer token>",
        ));
    };
    let digest = token_digest(token.trim());
    if tokens.iter().any(|t| t.eq_ignore_ascii_case(&digest)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the producer token is not one this gateway accepts",
        ))
    }
}

/// What a producer is told to wait before resending to a full journal.
pub const JOURNAL_FULL_RETRY_AFTER_S: u64 = 30;

/// A JSON error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, body: json!({"error": {"code": code, "message": message.into()}}), retry_after_s: None }
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        resp
    }
}

impl From<JournalError> for ApiError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Full(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "journal_full",
                format!("{e}; nothing was journaled: resend after the backlog drains"),
            )
            .retry_after(JOURNAL_FULL_RETRY_AFTER_S),
            _ => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "journal_unavailable",
                format!("{e}; nothing was journaled: resend later"),
            ),
        }
    }
}

async fn post_transactions(State(shared): State<Arc<Shared>>, request: Request<Body>) -> Result<Response, ApiError> {
    let idempotency_key = match request.headers().get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) => Some(k.to_owned()),
        Some(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "the Idempotency-Key header must be visible ASCII",
            ));
        }
    };
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send Content-Type: application/json (got {content_type:?})"),
        ));
    }
    let bytes = read_body(request.into_body()).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not JSON: {e}")))?;
    let items = match value {
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty_batch", "the array holds no transactions"));
        }
        Value::Array(items) if items.len() > TRANSACTIONS_PER_REQUEST_MAX => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_transactions",
                format!("{} transactions in one request; at most {TRANSACTIONS_PER_REQUEST_MAX}", items.len()),
            ));
        }
        Value::Array(_) if idempotency_key.is_some() => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "idempotency_key_with_array",
                "an Idempotency-Key header names one transaction: send a single object, or put a \"key\" in each element",
            ));
        }
        Value::Array(items) => items,
        mut other => {
            if let (Some(k), Some(obj)) = (&idempotency_key, other.as_object_mut()) {
                match obj.get("key") {
                    None => {
                        obj.insert("key".into(), Value::String(k.clone()));
                    }
                    Some(Value::String(body_key)) if body_key == k => {}
                    Some(body_key) => {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "idempotency_key_mismatch",
                            format!("the Idempotency-Key header {k:?} and the body's key {body_key} differ"),
                        ));
                    }
                }
            }
            vec![other]
        }
    };
    let received_at_ms = crate::run::now_ms();
    let mut entries = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let txn = producer::parse(item, &shared.plant, received_at_ms).map_err(|e| ApiError {
            retry_after_s: None,
            status: StatusCode::BAD_REQUEST,
            body: json!({"error": {"code": "invalid_transaction", "index": index, "field": e.field, "message": e.to_string()}}),
        })?;
        let body = txn
            .encode_body()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_transaction", e.to_string()))?;
        entries.push(Entry::of(&txn, body));
    }
    let appended = shared.journal.append(entries).await?;
    shared.count_ingested("http", &appended);
    #[derive(serde::Serialize)]
    struct Accepted<'a> {
        accepted: &'a [crate::journal::Appended],
    }
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted: &appended })).into_response())
}

/// Bytes of an oversized body read and discarded so the producer can read the 413 (closing
/// while it still sends would reset the connection); beyond this the connection is just closed.
pub const BODY_DRAIN_BYTES_MAX: usize = 4 * BODY_BYTES_MAX;

/// Reads a body of at most [`BODY_BYTES_MAX`] bytes.
async fn read_body(mut body: Body) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body exceeds {BODY_BYTES_MAX} bytes; send fewer transactions per request"),
        )
    };
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", format!("the body could not be read: {e}"))
        })?;
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen > BODY_DRAIN_BYTES_MAX {
            return Err(too_large());
        }
        if seen <= BODY_BYTES_MAX {
            bytes.extend_from_slice(&data);
        }
    }
    if seen > BODY_BYTES_MAX { Err(too_large()) } else { Ok(bytes) }
}

async fn get_transaction(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", format!("{id:?} is not a transaction id (a UUID)"))
    })?;
    let reader = shared.journal.reader();
    let Some(seq) = reader.find(id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("transaction {id} is not in the journal: never received, or compacted after Odoo had it"),
        ));
    };
    if let Some(n) = shared.notices.lock().expect("notices lock").get(&seq) {
        return Ok(Json(json!({"id": id, "seq": seq, "state": n.kind, "message": n.message})));
    }
    let state = reader.state().await?;
    let fate = if seq <= state.applied_seq {
        "applied"
    } else if seq <= state.stored_seq {
        "uploaded"
    } else {
        "journaled"
    };
    Ok(Json(json!({"id": id, "seq": seq, "state": fate})))
}

async fn get_status(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(shared.status().await?)))
}
