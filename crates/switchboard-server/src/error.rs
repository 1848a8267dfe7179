//! The one error type of the HTTP layer, and the JSON extractor that reports parse
//! failures in the same shape.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use switchboard_proto::error::kinds;
use switchboard_proto::ErrorBody;
use switchboard_store::StoreError;

/// Every way a request can fail, each mapped to the status code the client expects
/// (docs/PROTOCOL.md §3.4) and the JSON body `{"error":{"type","message"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON, a bad id, a message a worker would reject.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no credential or an unknown one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid credential that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 403 with an `expired` error type: a credential past its lifetime.
    #[error("{0}")]
    Expired(String),
    /// 404: no such thing.
    #[error("{0}")]
    NotFound(String),
    /// 409: conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 413: body over the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// 429: too many attempts; try again after this many seconds.
    #[error("{0}")]
    TooManyRequests(String, u64),
    /// 503: shutting down or temporarily unable.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or a failed dependency; the cause is logged, not sent.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, kinds::INVALID_REQUEST),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, kinds::AUTHENTICATION),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, kinds::PERMISSION),
            ApiError::Expired(_) => (StatusCode::FORBIDDEN, kinds::EXPIRED),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, kinds::NOT_FOUND),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, kinds::CONFLICT),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, kinds::TOO_LARGE),
            ApiError::TooManyRequests(..) => (StatusCode::TOO_MANY_REQUESTS, kinds::RATE_LIMIT),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, kinds::OVERLOADED),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, kinds::API),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The error body clients get, over HTTP or in a socket's error frame: the kind of
    /// error and its message (an opaque one for internal errors, whose cause is logged
    /// where they are answered).
    pub(crate) fn body(&self) -> ErrorBody {
        let message = match self {
            ApiError::Internal(_) => "internal server error".to_string(),
            other => other.to_string(),
        };
        ErrorBody::new(self.parts().1, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            // The one place an internal error is logged; the client gets no detail.
            tracing::error!(error = ?e, "internal error");
        }
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let ApiError::TooManyRequests(_, after) = self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(after),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            // The store logs it (once per interval); the client learns what is wrong.
            StoreError::StorageFull => ApiError::Unavailable(
                "the server's storage is full: nothing can be saved until its operator frees \
                 disk space (reading still works)"
                    .into(),
            ),
            StoreError::Other(e) => ApiError::Internal(e),
        }
    }
}

/// A JSON body whose failures (bad JSON, wrong shape, over the size limit) answer with
/// the protocol's error body instead of axum's plain text.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Json<T>(pub(crate) T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// A JSON body that may be empty (several endpoints send `{}` or nothing at all).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OptionalJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<bytes::Bytes, ApiError> {
    bytes::Bytes::from_request(req, state)
        .await
        .map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge("request body is larger than the server accepts".into())
            } else {
                ApiError::BadRequest(format!("cannot read request body: {e}"))
            }
        })
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON here: {e}")))
}

/// Path parameters whose decoding failures answer with the protocol's error body.
#[derive(Debug, Clone)]
pub(crate) struct Path<T>(pub(crate) T);

impl<S, T> axum::extract::FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))
    }
}

/// A query string whose parse failures answer with the protocol's error body.
#[derive(Debug, Clone)]
pub(crate) struct Query<T>(pub(crate) T);

impl<S, T> axum::extract::FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
    }
}
