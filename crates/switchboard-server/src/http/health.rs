//! Liveness and metrics.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::options::MetricsAccess;
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

/// `GET /metrics`: Prometheus text format, for whom `--metrics` allows: anyone
/// (`public`), callers with an API key (`token`, the default), or nobody (`off`: 404).
pub(crate) async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    match state.options().metrics {
        MetricsAccess::Off => return Err(ApiError::NotFound("metrics are turned off".into())),
        MetricsAccess::Public => {}
        MetricsAccess::Token => {
            let (principal, _) = state.authenticate_request(&headers).await?;
            AppState::require_owner(&principal)?;
            principal.require(crate::roles::Capability::Administer)?;
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.render_metrics(),
    ))
}
