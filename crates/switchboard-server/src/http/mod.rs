//! HTTP handlers, one module per resource. Each handler extracts, authorizes, calls one
//! [`AppState`] method and maps the result; the rules live in `state`.

pub(crate) mod code;
pub(crate) mod environments;
pub(crate) mod health;
pub(crate) mod ingress;
pub(crate) mod notify;
pub(crate) mod sessions;
pub(crate) mod web;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::state::AppState;

/// The caller, established from `Authorization: Bearer …`.
#[derive(Debug, Clone)]
pub(crate) struct Auth(pub(crate) Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (token, source) = auth::request_token(&parts.headers)?;
        // A cookie rides along on any request the browser makes; refuse it on requests
        // another site started.
        if source == auth::Source::Cookie && !auth::same_origin(&parts.headers) {
            return Err(ApiError::Forbidden("cross-site request refused".into()));
        }
        Ok(Auth(state.authenticate(token).await?))
    }
}

/// Answers routes that do not exist with the protocol's error body.
pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// Answers a known route called with the wrong method.
pub(crate) async fn method_not_allowed() -> (
    axum::http::StatusCode,
    axum::Json<switchboard_proto::ErrorBody>,
) {
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(switchboard_proto::ErrorBody::new(
            switchboard_proto::error::kinds::INVALID_REQUEST,
            "method not allowed on this endpoint",
        )),
    )
}
