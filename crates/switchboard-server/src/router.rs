//! Every route, assembled in one place by a pure function (tests call it without a
//! socket).

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::http::{self, access, code, environments, health, ingress, notify, sessions, web};
use crate::state::AppState;
use crate::ws;

/// Builds the application's router.
pub(crate) fn build(state: AppState) -> Router {
    let max_body = state.options().max_body_bytes;
    let mut router = Router::new()
        .route("/health", get(health::get))
        .route("/metrics", get(health::metrics))
        // Environments API (docs/PROTOCOL.md §4), and the owner's list of them for the web UI.
        .route("/v1/environments", get(environments::list))
        .route("/v1/environments/bridge", post(environments::register))
        .route(
            "/v1/environments/bridge/{environment_id}",
            delete(environments::deregister),
        )
        .route(
            "/v1/environments/{environment_id}/work/poll",
            get(environments::poll),
        )
        .route(
            "/v1/environments/{environment_id}/work/{work_id}/ack",
            post(environments::ack),
        )
        .route(
            "/v1/environments/{environment_id}/work/{work_id}/heartbeat",
            post(environments::heartbeat),
        )
        .route(
            "/v1/environments/{environment_id}/work/{work_id}/stop",
            post(environments::stop),
        )
        .route(
            "/v1/environments/{environment_id}/bridge/reconnect",
            post(environments::reconnect),
        )
        // Sessions API (§6, §13).
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get).patch(sessions::patch),
        )
        .route("/v1/sessions/{id}/archive", post(sessions::archive))
        .route(
            "/v1/sessions/{id}/events",
            post(sessions::post_events).get(sessions::history),
        )
        // The v2 worker API and its code sessions (§9, §10).
        .route("/v1/code/sessions", post(code::create))
        .route("/v1/code/sessions/{id}/bridge", post(code::credentials))
        .route(
            "/v1/code/sessions/{id}/worker",
            get(code::get_worker).put(code::put_worker),
        )
        .route(
            "/v1/code/sessions/{id}/worker/register",
            post(code::register),
        )
        .route(
            "/v1/code/sessions/{id}/worker/heartbeat",
            post(code::heartbeat),
        )
        .route("/v1/code/sessions/{id}/worker/events", post(code::events))
        .route(
            "/v1/code/sessions/{id}/worker/internal-events",
            post(code::post_internal).get(code::get_internal),
        )
        .route(
            "/v1/code/sessions/{id}/worker/events/delivery",
            post(code::delivery),
        )
        .route(
            "/v1/code/sessions/{id}/worker/events/stream",
            get(code::stream),
        )
        // Browser sign-in for the web UI.
        .route("/web/login", post(web::login))
        .route("/web/pair", post(web::pair))
        .route("/web/logout", post(web::logout))
        .route("/web/logout/all", post(web::logout_all))
        .route("/web/me", get(web::me))
        .route("/web/pairings", post(web::create_pairing))
        // Notifications: settings, webhook/ntfy channels, Web Push subscriptions.
        .route("/v1/notify", get(notify::get))
        .route("/v1/notify/events", put(notify::put_events))
        .route(
            "/v1/notify/channels/{kind}",
            put(notify::put_channel).delete(notify::delete_channel),
        )
        .route("/v1/notify/test", post(notify::test))
        .route("/v1/notify/push/subscriptions", post(notify::subscribe))
        .route(
            "/v1/notify/push/subscriptions/{id}",
            delete(notify::unsubscribe),
        )
        // Keys, devices, approval policy, audit log (Switchboard extensions, issue 16).
        .route("/v1/keys", get(access::list_keys).post(access::create_key))
        .route("/v1/keys/{id}", delete(access::revoke))
        .route("/v1/devices", get(access::list_devices))
        .route(
            "/v1/devices/{id}",
            patch(access::update_device).delete(access::revoke),
        )
        .route("/v1/policy", get(access::get_policy))
        .route("/v1/policy/settings", put(access::put_settings))
        .route("/v1/policy/rules", post(access::add_rule))
        .route("/v1/policy/rules/{id}", delete(access::remove_rule))
        .route("/v1/policy/test", post(access::test_policy))
        .route("/v1/audit", get(access::audit))
        .route("/v1/sessions/{id}/shares", get(access::list_shares))
        .route(
            "/v1/sessions/{id}/shares/{owner}",
            put(access::put_share).delete(access::delete_share),
        )
        .route("/v1/shared_sessions", get(access::shared_sessions))
        // Viewers (§13.1).
        .route("/v1/sessions/ws/{id}/subscribe", get(ws::viewer::upgrade));
    // Session ingress v1 (§8), under both version segments the client builds.
    for version in ["v1", "v2"] {
        router = router
            .route(
                &format!("/{version}/session_ingress/ws/{{id}}"),
                get(ws::ingress::upgrade),
            )
            .route(
                &format!("/{version}/session_ingress/session/{{id}}/events"),
                post(ingress::post_events),
            );
    }
    // Everything else is the web UI (or the API's JSON 404), compressed.
    let ui = Router::new()
        .fallback(crate::ui::serve)
        .layer(tower_http::compression::CompressionLayer::new());
    router
        .fallback_service(ui)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        // No response is ever to be sniffed into another type (JSON rendered as HTML).
        .layer(axum::middleware::map_response(nosniff))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str)
                .to_owned();
            let client = req
                .extensions()
                .get::<crate::origin::RequestOrigin>()
                .map(|o| o.client.ip().to_string())
                .unwrap_or_default();
            tracing::info_span!("http", method = %req.method(), route = %route, client = %client)
        }))
        .with_state(state)
}

/// Collapses repeated slashes in the request path before routing (docs/PROTOCOL.md §17
/// tier 0: clients may build `//` from a base URL with a trailing slash).
pub(crate) fn normalize_path(mut req: Request) -> Request {
    let path = req.uri().path();
    if path.contains("//") {
        let mut collapsed = String::with_capacity(path.len());
        for c in path.chars() {
            if !(c == '/' && collapsed.ends_with('/')) {
                collapsed.push(c);
            }
        }
        let pq = match req.uri().query() {
            Some(q) => format!("{collapsed}?{q}"),
            None => collapsed,
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

async fn nosniff(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    response
}
