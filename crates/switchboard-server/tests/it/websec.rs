//! Web security: sign-in only from the server's own page (JSON, same origin), sign-in
//! rate limits, revocation of API keys and web sessions (closing their live sockets and
//! streams), pairing links that cannot outlive the web session that made them,
//! `nosniff`, and who may read `/metrics`.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};
use switchboard_server::MetricsAccess;
use switchboard_store::CredentialKind;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Signs in with the API key like the web page does; returns the `sb_session=…` cookie.
async fn web_session(server: &TestServer) -> anyhow::Result<String> {
    let login = server
        .http()
        .post(format!("{}/web/login", server.url()))
        .header("origin", server.url())
        .json(&json!({"key": server.key}))
        .send()
        .await?;
    anyhow::ensure!(login.status() == 200, "login: {}", login.status());
    Ok(cookie_of(&login))
}

/// A pairing link made with the API key (the client's `create_pairing`); its token.
async fn pairing_token(server: &TestServer) -> anyhow::Result<String> {
    let url = server.sessions().create_pairing(None).await?;
    Ok(url.rsplit('/').next().unwrap_or_default().to_string())
}

fn cookie_of(response: &reqwest::Response) -> String {
    let set = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    set.split(';').next().unwrap_or_default().to_string()
}

fn max_age(response: &reqwest::Response) -> u64 {
    let set = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    set.split(';')
        .find_map(|p| p.trim().strip_prefix("Max-Age=")?.parse().ok())
        .unwrap_or(u64::MAX)
}

async fn me(server: &TestServer, cookie: &str) -> anyhow::Result<u16> {
    Ok(server
        .http()
        .get(format!("{}/web/me", server.url()))
        .header("cookie", cookie)
        .send()
        .await?
        .status()
        .as_u16())
}

/// A viewer socket on a new session, authenticated by `header: value`.
async fn viewer(server: &TestServer, header: &'static str, value: &str) -> anyhow::Result<Socket> {
    let session: Value = server
        .http()
        .post(format!("{}/v1/sessions", server.url()))
        .bearer_auth(&server.key)
        .json(&json!({"title": "watched"}))
        .send()
        .await?
        .json()
        .await?;
    let url = format!(
        "{}/v1/sessions/ws/{}/subscribe",
        server.url().replace("http", "ws"),
        session["id"].as_str().unwrap_or_default()
    );
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(header, value.parse()?);
    request
        .headers_mut()
        .insert("origin", server.url().parse()?);
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// The close code the socket gets within `wait` (skipping data frames).
async fn close_code(socket: &mut Socket, wait: Duration) -> anyhow::Result<u16> {
    tokio::time::timeout(wait, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return Ok(u16::from(frame.code)),
                Some(Ok(Message::Close(None))) | None => anyhow::bail!("closed without a code"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the socket stayed open for {wait:?}"))?
}

/// The socket stays open for `wait`.
async fn stays_open(socket: &mut Socket, wait: Duration) -> anyhow::Result<()> {
    match tokio::time::timeout(wait, close_code(socket, wait * 2)).await {
        Err(_) => Ok(()),
        Ok(result) => anyhow::bail!("the socket closed: {result:?}"),
    }
}

#[tokio::test]
async fn sign_in_takes_json_from_this_origin_only() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let login = format!("{}/web/login", server.url());
    let body = json!({"key": server.key}).to_string();

    // What another site's <form enctype="text/plain"> sends: refused, no cookie.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let forged = server
            .http()
            .post(&login)
            .header("content-type", content_type)
            .header("origin", "https://evil.example")
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(forged.status(), 400, "{content_type}");
        assert!(forged.headers().get("set-cookie").is_none());
        // Even from this origin, a form is not a sign-in.
        let form = server
            .http()
            .post(&login)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(form.status(), 400, "{content_type}");
    }
    // JSON from another origin (a CORS request the server never allows) or a null one.
    for origin in [
        "https://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
    ] {
        let cross = server
            .http()
            .post(&login)
            .header("origin", origin)
            .json(&json!({"key": server.key}))
            .send()
            .await?;
        assert_eq!(cross.status(), 403, "{origin}");
        let body: Value = cross.json().await?;
        assert_eq!(body["error"]["type"], "permission_error");
    }
    // The page itself, and clients that send no Origin (not a browser), sign in.
    let ok = server
        .http()
        .post(&login)
        .header("origin", server.url())
        .header("content-type", "application/json; charset=utf-8")
        .body(body.clone())
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    assert!(cookie_of(&ok).starts_with("sb_session=sbw_"));

    // /web/pair the same: a forged redemption does not use the link up.
    let token = pairing_token(&server).await?;
    let pair = format!("{}/web/pair", server.url());
    let forged = server
        .http()
        .post(&pair)
        .header("content-type", "text/plain")
        .header("origin", "https://evil.example")
        .body(json!({"token": token}).to_string())
        .send()
        .await?;
    assert_eq!(forged.status(), 400);
    let cross = server
        .http()
        .post(&pair)
        .header("origin", "https://evil.example")
        .json(&json!({"token": token}))
        .send()
        .await?;
    assert_eq!(cross.status(), 403);
    let real = server
        .http()
        .post(&pair)
        .header("origin", server.url())
        .json(&json!({"token": token}))
        .send()
        .await?;
    assert_eq!(real.status(), 200, "the link still works for the real page");
    Ok(())
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited_per_address() -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| {
        o.sign_in_burst = 3;
        o.sign_in_refill = Duration::from_secs(60);
    })
    .await?;
    let attempt = |path: &'static str, body: Value| {
        let http = server.http();
        let url = format!("{}{path}", server.url());
        async move { http.post(url).json(&body).send().await }
    };
    for _ in 0..3 {
        let r = attempt("/web/login", json!({"key": "sbk_guess_guess"})).await?;
        assert_eq!(r.status(), 401);
    }
    let limited = attempt("/web/login", json!({"key": server.key})).await?;
    assert_eq!(limited.status(), 429, "even the right key waits");
    let after: u64 = limited.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=60).contains(&after), "{after}");
    let body: Value = limited.json().await?;
    assert_eq!(body["error"]["type"], "rate_limit_error");
    // Pairing attempts share the budget (guessing links is the same attack).
    let limited = attempt("/web/pair", json!({"token": "sbp_guess_guess"})).await?;
    assert_eq!(limited.status(), 429);
    // The API itself is not limited.
    assert_eq!(
        server
            .http()
            .get(format!("{}/v1/sessions", server.url()))
            .bearer_auth(&server.key)
            .send()
            .await?
            .status(),
        200
    );
    Ok(())
}

#[tokio::test]
async fn every_response_says_nosniff() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    for (path, auth) in [
        ("/v1/sessions", true),
        ("/v1/sessions", false),
        ("/v1/nope", true),
        ("/health", false),
        ("/", false),
        ("/app.js", false),
    ] {
        let mut request = http.get(format!("{}{path}", server.url()));
        if auth {
            request = request.bearer_auth(&server.key);
        }
        let response = request.send().await?;
        assert_eq!(
            response
                .headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap_or_default()),
            Some("nosniff"),
            "{path} ({})",
            response.status()
        );
    }
    Ok(())
}

#[tokio::test]
async fn metrics_need_an_api_key_unless_public_and_can_be_off() -> anyhow::Result<()> {
    let url = |s: &TestServer| format!("{}/metrics", s.url());
    let server = TestServer::start().await?;
    let anonymous = server.http().get(url(&server)).send().await?;
    assert_eq!(anonymous.status(), 401);
    let d = dispatch(&server).await?;
    let as_environment = server
        .http()
        .get(url(&server))
        .bearer_auth(&d.environment_secret)
        .send()
        .await?;
    assert_eq!(as_environment.status(), 403);
    let with_key = server
        .http()
        .get(url(&server))
        .bearer_auth(&server.key)
        .send()
        .await?;
    assert_eq!(with_key.status(), 200);
    assert!(with_key
        .text()
        .await?
        .contains("switchboard_sessions_created"));

    let public = TestServer::start_with(|o| o.metrics = MetricsAccess::Public).await?;
    assert_eq!(public.http().get(url(&public)).send().await?.status(), 200);
    let off = TestServer::start_with(|o| o.metrics = MetricsAccess::Off).await?;
    let response = off
        .http()
        .get(url(&off))
        .bearer_auth(&off.key)
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    Ok(())
}

#[tokio::test]
async fn a_key_revoked_in_the_store_is_refused_and_its_sockets_and_streams_close(
) -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| {
        o.revocation_check_interval = Duration::from_millis(100);
    })
    .await?;
    let phone = server.key_for("alice").await?;
    let mut watched = viewer(&server, "authorization", &format!("Bearer {phone}")).await?;
    let mut other = viewer(&server, "authorization", &format!("Bearer {}", server.key)).await?;
    // A worker event stream opened with the same key.
    let d = dispatch(&server).await?;
    let stream_url = format!(
        "{}/v1/code/sessions/{}/worker/events/stream",
        server.url(),
        d.session_id
    );
    let mut stream = SseReader::open(&stream_url, &phone, None).await?;
    stays_open(&mut watched, Duration::from_millis(300)).await?;

    // What `switchboard token revoke` does: mark it revoked in the store, behind the
    // server's back.
    let id = phone.split('_').nth(1).unwrap();
    assert!(server.state().store().consume_credential(id, 1).await?);
    assert_eq!(
        close_code(&mut watched, Duration::from_secs(3)).await?,
        4003
    );
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if stream.next(Duration::from_secs(30)).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the event stream ended");
    let refused = server
        .http()
        .get(format!("{}/v1/sessions", server.url()))
        .bearer_auth(&phone)
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    // Other keys' sockets are untouched.
    stays_open(&mut other, Duration::from_millis(500)).await?;
    Ok(())
}

#[tokio::test]
async fn signing_out_closes_that_browsers_sockets_at_once() -> anyhow::Result<()> {
    // No sweep during the test: the server closes what it revokes itself.
    let server =
        TestServer::start_with(|o| o.revocation_check_interval = Duration::from_secs(3600)).await?;
    let cookie = web_session(&server).await?;
    let other = web_session(&server).await?;
    let mut socket = viewer(&server, "cookie", &cookie).await?;
    let mut untouched = viewer(&server, "cookie", &other).await?;
    let out = server
        .http()
        .post(format!("{}/web/logout", server.url()))
        .header("cookie", &cookie)
        .header("origin", server.url())
        .send()
        .await?;
    assert_eq!(out.status(), 200);
    assert_eq!(close_code(&mut socket, Duration::from_secs(2)).await?, 4003);
    assert_eq!(me(&server, &cookie).await?, 401);
    assert_eq!(me(&server, &other).await?, 200);
    stays_open(&mut untouched, Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test]
async fn signing_out_everywhere_ends_every_web_session_and_pairing_link() -> anyhow::Result<()> {
    let server =
        TestServer::start_with(|o| o.revocation_check_interval = Duration::from_secs(3600)).await?;
    let a = web_session(&server).await?;
    let b = web_session(&server).await?;
    let mut socket = viewer(&server, "cookie", &a).await?;
    let mut by_key = viewer(&server, "authorization", &format!("Bearer {}", server.key)).await?;
    let bob = server.key_for("bob").await?;
    let bob_cookie = {
        let r = server
            .http()
            .post(format!("{}/web/login", server.url()))
            .json(&json!({"key": bob}))
            .send()
            .await?;
        cookie_of(&r)
    };
    let link = pairing_token(&server).await?;

    // Cross-site, it is refused like any cookie request another site starts.
    let forged = server
        .http()
        .post(format!("{}/web/logout/all", server.url()))
        .header("cookie", &b)
        .header("origin", "https://evil.example")
        .send()
        .await?;
    assert_eq!(forged.status(), 403);
    assert_eq!(me(&server, &a).await?, 200);

    // With the API key (a stolen cookie is cut off without a browser at hand).
    let all = server
        .http()
        .post(format!("{}/web/logout/all", server.url()))
        .bearer_auth(&server.key)
        .send()
        .await?;
    assert_eq!(all.status(), 200);
    let body: Value = all.json().await?;
    assert_eq!(body["revoked"], 2);
    assert_eq!(close_code(&mut socket, Duration::from_secs(2)).await?, 4003);
    assert_eq!(me(&server, &a).await?, 401);
    assert_eq!(me(&server, &b).await?, 401);
    assert_eq!(
        me(&server, &bob_cookie).await?,
        200,
        "another owner is untouched"
    );
    stays_open(&mut by_key, Duration::from_millis(300)).await?;
    let redeem = server
        .http()
        .post(format!("{}/web/pair", server.url()))
        .json(&json!({"token": link}))
        .send()
        .await?;
    assert_eq!(redeem.status(), 401, "unused pairing links end too");

    // From the browser itself, with its cookie: its own session ends as well.
    let c = web_session(&server).await?;
    let all = server
        .http()
        .post(format!("{}/web/logout/all", server.url()))
        .header("cookie", &c)
        .header("origin", server.url())
        .send()
        .await?;
    assert_eq!(all.status(), 200);
    assert!(all.headers()["set-cookie"].to_str()?.contains("Max-Age=0"));
    assert_eq!(me(&server, &c).await?, 401);
    Ok(())
}

#[tokio::test]
async fn a_pairing_link_from_a_web_session_does_not_outlive_it() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    // A web session with an hour left (as if signed in 29 days and 23 hours ago).
    let store = server.state().store();
    let owner = store.ensure_owner("alice", 0).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let minted = switchboard_server::auth::mint(
        CredentialKind::WebSession,
        &owner.id,
        None,
        None,
        "browser",
        now - 1000,
        Some(now + 3_600_000),
    );
    store.insert_credential(&minted.credential).await?;
    let cookie = format!("sb_session={}", minted.token);
    let link = |cookie: String| {
        let http = server.http();
        let url = format!("{}/web/pairings", server.url());
        let origin = server.url();
        async move {
            let v: Value = http
                .post(url)
                .header("cookie", cookie)
                .header("origin", origin)
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(
                v["url"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
            )
        }
    };
    let first = link(cookie.clone()).await?;
    let second = link(cookie.clone()).await?;

    let paired = server
        .http()
        .post(format!("{}/web/pair", server.url()))
        .json(&json!({"token": first}))
        .send()
        .await?;
    assert_eq!(paired.status(), 200);
    let age = max_age(&paired);
    assert!(
        age <= 3600,
        "the new browser's cookie lasts {age} s, past its parent"
    );
    let child = cookie_of(&paired);
    let child_id = child.split('_').nth(2).unwrap();
    let stored = store.credential(child_id).await?;
    assert!(stored.expires_at.unwrap() <= now + 3_600_000);
    // And it cannot renew itself through a link of its own.
    let grandchild = link(child.clone()).await?;
    let paired = server
        .http()
        .post(format!("{}/web/pair", server.url()))
        .json(&json!({"token": grandchild}))
        .send()
        .await?;
    assert_eq!(paired.status(), 200);
    assert!(max_age(&paired) <= 3600);

    // Once the web session that made a link signs out, the link is dead.
    server
        .http()
        .post(format!("{}/web/logout", server.url()))
        .header("cookie", &cookie)
        .send()
        .await?;
    let late = server
        .http()
        .post(format!("{}/web/pair", server.url()))
        .json(&json!({"token": second}))
        .send()
        .await?;
    assert_eq!(late.status(), 401);

    // A link made with an API key signs in for the full 30 days.
    let token = pairing_token(&server).await?;
    let paired = server
        .http()
        .post(format!("{}/web/pair", server.url()))
        .json(&json!({"token": token}))
        .send()
        .await?;
    assert_eq!(max_age(&paired), 30 * 24 * 3600);
    Ok(())
}
