//! The dashboard: one page served by the hub at `/`, no build step and nothing fetched from
//! elsewhere (its script and styles are inline; the Content-Security-Policy allows only this
//! origin). It reads the same API as everyone else, with the token the operator enters (kept
//! in the browser tab's session storage; `#token=...` in the address also works), refreshes
//! itself every 5 s (`#refresh=<ms>` to change it), and lets an operator pause, resume or abort
//! the reopening plan with a reason.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("dashboard/index.html");

/// `GET /`: the page (no data in it: the data comes from the API, behind the token).
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}
