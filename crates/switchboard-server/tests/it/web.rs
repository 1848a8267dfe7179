//! Browser sign-in (API key, single-use pairing link), the session cookie, and the
//! embedded UI's headers.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::common::*;

/// A client that keeps cookies, like a browser tab.
fn browser() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().cookie_store(true).build()?)
}

fn set_cookie(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn an_api_key_signs_a_browser_in_with_an_httponly_strict_cookie() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let tab = browser()?;
    let me = tab.get(format!("{}/web/me", server.url())).send().await?;
    assert_eq!(me.status(), 401);

    let bad = tab
        .post(format!("{}/web/login", server.url()))
        .json(&json!({"key":"sbk_nope_nope"}))
        .send()
        .await?;
    assert_eq!(bad.status(), 401);
    let body: Value = bad.json().await?;
    assert_eq!(body["error"]["type"], "authentication_error");

    let login = tab
        .post(format!("{}/web/login", server.url()))
        .json(&json!({"key": server.key}))
        .send()
        .await?;
    assert_eq!(login.status(), 200);
    let cookie = set_cookie(&login);
    for attribute in ["sb_session=sbw_", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains(&server.key),
        "the key itself never goes into the cookie"
    );
    assert!(!cookie.contains("Secure"), "plain http: no Secure flag");

    // The cookie now authenticates the API.
    assert_eq!(
        tab.get(format!("{}/web/me", server.url()))
            .send()
            .await?
            .status(),
        200
    );
    let created = tab
        .post(format!("{}/v1/sessions", server.url()))
        .json(&json!({"title":"from the web"}))
        .send()
        .await?;
    assert_eq!(created.status(), 200);
    let list: Value = tab
        .get(format!("{}/v1/sessions", server.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list["data"][0]["title"], "from the web");

    // A request another site started is refused even with the cookie.
    let forged = tab
        .post(format!("{}/v1/sessions", server.url()))
        .header("origin", "https://evil.example")
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(forged.status(), 403);

    // Signing out ends the web session for good.
    let out = tab
        .post(format!("{}/web/logout", server.url()))
        .send()
        .await?;
    assert!(set_cookie(&out).contains("Max-Age=0"));
    let stolen = cookie.split(';').next().unwrap().to_string();
    let replay = reqwest::Client::new()
        .get(format!("{}/web/me", server.url()))
        .header("cookie", stolen)
        .send()
        .await?;
    assert_eq!(replay.status(), 401);
    Ok(())
}

#[tokio::test]
async fn a_pairing_link_signs_in_exactly_once() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pairing: Value = server
        .http()
        .post(format!("{}/web/pairings", server.url()))
        .bearer_auth(&server.key)
        .send()
        .await?
        .json()
        .await?;
    let url = pairing["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/pair/sbp_", server.url())),
        "{url}"
    );
    let token = url.rsplit('/').next().unwrap();

    // The link is not a bearer credential.
    let as_bearer = server
        .http()
        .get(format!("{}/v1/sessions", server.url()))
        .bearer_auth(token)
        .send()
        .await?;
    assert_eq!(as_bearer.status(), 401);

    let tab = browser()?;
    let page = tab.get(url).send().await?;
    assert_eq!(page.status(), 200, "the link opens the app");
    let paired = tab
        .post(format!("{}/web/pair", server.url()))
        .json(&json!({"token": token}))
        .send()
        .await?;
    assert_eq!(paired.status(), 200);
    assert_eq!(
        tab.get(format!("{}/web/me", server.url()))
            .send()
            .await?
            .status(),
        200
    );

    let again = browser()?
        .post(format!("{}/web/pair", server.url()))
        .json(&json!({"token": token}))
        .send()
        .await?;
    assert_eq!(again.status(), 401, "single use");
    let garbage = browser()?
        .post(format!("{}/web/pair", server.url()))
        .json(&json!({"token": "sbp_x_y"}))
        .send()
        .await?;
    assert_eq!(garbage.status(), 401);
    Ok(())
}

#[tokio::test]
async fn the_cookie_opens_the_viewer_socket_but_not_from_another_origin() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let login = server
        .http()
        .post(format!("{}/web/login", server.url()))
        .json(&json!({"key": server.key}))
        .send()
        .await?;
    let cookie = set_cookie(&login).split(';').next().unwrap().to_string();
    let url = format!(
        "{}/v1/sessions/ws/{}/subscribe",
        server.url().replace("http", "ws"),
        d.session_id
    );

    let mut request = url.clone().into_client_request()?;
    request.headers_mut().insert("cookie", cookie.parse()?);
    request
        .headers_mut()
        .insert("origin", server.url().parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    server
        .sessions()
        .send_events(&d.session_id, vec![prompt("hi")])
        .await?;
    use futures_util::StreamExt as _;
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next())
        .await?
        .unwrap()?;
    assert!(first.to_text()?.contains("\"hi\""));

    let mut forged = url.into_client_request()?;
    forged.headers_mut().insert("cookie", cookie.parse()?);
    forged
        .headers_mut()
        .insert("origin", "https://evil.example".parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(forged).await?;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next()).await?;
    match closed {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4003)
        }
        other => anyhow::bail!("expected a 4003 close, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn the_ui_is_served_with_a_strict_policy_etags_and_compression() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let http = reqwest::Client::builder().gzip(false).build()?;
    let index = http
        .get(format!("{}/", server.url()))
        .header("accept-encoding", "gzip")
        .send()
        .await?;
    assert_eq!(index.status(), 200);
    let headers = index.headers().clone();
    let csp = headers["content-security-policy"].to_str()?;
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["content-encoding"], "gzip");
    let etag = headers["etag"].to_str()?.to_string();
    let script = http.get(format!("{}/app.js", server.url())).send().await?;
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    // Revalidation answers 304 with no body.
    let again = http
        .get(format!("{}/", server.url()))
        .header("if-none-match", &etag)
        .send()
        .await?;
    assert_eq!(again.status(), 304);
    // App routes get the app; missing files and API paths get the JSON 404.
    let route = http
        .get(format!("{}/s/session_abcd", server.url()))
        .send()
        .await?;
    assert_eq!(route.headers()["etag"].to_str()?, etag);
    let missing = http.get(format!("{}/nope.js", server.url())).send().await?;
    assert_eq!(missing.status(), 404);
    let api: Value = http
        .get(format!("{}/v1/nope", server.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(api["error"]["type"], "not_found_error");
    Ok(())
}
