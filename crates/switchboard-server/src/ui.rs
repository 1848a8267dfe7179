//! The embedded web UI: static files compiled into the binary (see `build.rs`), served
//! with an ETag, revalidation, compression and a Content-Security-Policy that forbids
//! inline script. Unknown paths outside the APIs get `index.html`, so the single-page
//! app owns its routes.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The policy every UI response carries: only our own scripts, styles and sockets.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Path prefixes that belong to the APIs: never answered with the app.
const API_PREFIXES: &[&str] = &["/v1/", "/v2/", "/api/", "/web/", "/health", "/metrics"];

fn find(path: &str) -> Option<&'static (&'static str, &'static [u8], &'static str, &'static str)> {
    ASSETS.iter().find(|(p, ..)| *p == path)
}

/// Serves a UI file, `index.html` for app routes, or the API's JSON 404.
pub(crate) async fn serve(req: Request) -> Response {
    let path = req.uri().path();
    let is_read = req.method() == Method::GET || req.method() == Method::HEAD;
    if !is_read || API_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return crate::http::not_found().await.into_response();
    }
    let asset = match path {
        "/" => find("/index.html"),
        p => find(p).or_else(|| {
            // A path with an extension names a file; anything else is an app route.
            let last = p.rsplit('/').next().unwrap_or("");
            (!last.contains('.')).then(|| find("/index.html")).flatten()
        }),
    };
    let Some((_, bytes, content_type, etag)) = asset else {
        return crate::http::not_found().await.into_response();
    };
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == *etag));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(*bytes))
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::ETAG, HeaderValue::from_static(etag));
    // Revalidate every time: names carry no hash, and a 304 costs a few bytes.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
