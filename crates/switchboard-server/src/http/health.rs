//! Liveness and metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::state::AppState;

/// `GET /health`: 200 while the server accepts requests.
pub(crate) async fn get(State(state): State<AppState>) -> impl IntoResponse {
    let status = if state.shutdown().is_triggered() {
        "shutting_down"
    } else {
        "ok"
    };
    axum::Json(serde_json::json!({ "status": status }))
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.render_metrics(),
    )
}
