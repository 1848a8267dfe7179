//! HTTP handlers, one module per resource. Each handler extracts, authorizes, calls one
//! [`AppState`] method and maps the result; the rules live in `state`.

pub(crate) mod access;
pub(crate) mod code;
pub(crate) mod environments;
pub(crate) mod health;
pub(crate) mod ingress;
pub(crate) mod notify;
pub(crate) mod sessions;
pub(crate) mod web;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use switchboard_store::CredentialKind;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// The caller, established from `Authorization: Bearer …` or the session cookie (see
/// [`AppState::authenticate_request`]).
#[derive(Debug, Clone)]
pub(crate) struct Auth(pub(crate) Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Auth(state.authenticate_request(&parts.headers).await?.0))
    }
}

/// The caller, and the stored credential it used (`None` for a worker JWT): for
/// connections that must end when that credential is revoked.
#[derive(Debug, Clone)]
pub(crate) struct AuthWith(
    pub(crate) Principal,
    pub(crate) Option<(CredentialKind, String)>,
);

impl FromRequestParts<AppState> for AuthWith {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (principal, credential) = state.authenticate_request(&parts.headers).await?;
        Ok(AuthWith(principal, credential))
    }
}

/// The client's address, when the server knows it (not in router tests without a socket).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
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
