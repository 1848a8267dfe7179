//! Behind a reverse proxy: `X-Forwarded-*` and `Forwarded` are believed only from the
//! ranges the operator trusts; then the cookie is Secure and the URLs handed out (work
//! secrets, pairing links) are the ones the client used.

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::common::*;

fn https_headers() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("x-forwarded-proto", "https".parse().unwrap());
    h.insert("x-forwarded-host", "relay.example.org".parse().unwrap());
    h.insert("x-forwarded-for", "203.0.113.5".parse().unwrap());
    h
}

/// What the server hands out to a request with `headers`: (cookie, pairing link, the
/// work secret's api_base_url).
async fn handed_out(
    server: &TestServer,
    headers: reqwest::header::HeaderMap,
) -> anyhow::Result<(String, String, String)> {
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let login = client
        .post(format!("{}/web/login", server.url()))
        .json(&json!({ "key": server.key }))
        .send()
        .await?;
    assert_eq!(login.status(), 200);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let pairing: Value = client
        .post(format!("{}/web/pairings", server.url()))
        .bearer_auth(&server.key)
        .json(&json!({}))
        .send()
        .await?
        .json()
        .await?;
    // A work poll through the same "proxy".
    let bridge = server.bridge();
    let env = bridge.register_environment(&registration()).await?;
    server
        .sessions()
        .create_session(&switchboard_proto::sessions::CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            ..Default::default()
        })
        .await?;
    let work: Value = client
        .get(format!(
            "{}/v1/environments/{}/work/poll",
            server.url(),
            env.environment_id
        ))
        .bearer_auth(&env.environment_secret)
        .send()
        .await?
        .json()
        .await?;
    let secret = switchboard_proto::environments::WorkSecret::decode(
        work["secret"].as_str().unwrap_or_default(),
    )?;
    Ok((
        cookie,
        pairing["url"].as_str().unwrap_or_default().to_string(),
        secret.api_base_url,
    ))
}

#[tokio::test]
async fn a_trusted_proxy_makes_the_cookie_secure_and_the_urls_https() -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| {
        o.trusted_proxies = vec![switchboard_server::parse_trusted_proxy("127.0.0.0/8").unwrap()];
    })
    .await?;
    let (cookie, pairing, api_base) = handed_out(&server, https_headers()).await?;
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(
        pairing.starts_with("https://relay.example.org/pair/sbp_"),
        "{pairing}"
    );
    assert_eq!(api_base, "https://relay.example.org");

    // RFC 7239 says the same.
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        "forwarded",
        "for=203.0.113.5;proto=https;host=other.example.org".parse()?,
    );
    let (cookie, pairing, _) = handed_out(&server, h).await?;
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(
        pairing.starts_with("https://other.example.org/pair/"),
        "{pairing}"
    );

    // Without forwarded headers, the same proxy's request is plain http to its Host.
    let (cookie, pairing, _) = handed_out(&server, Default::default()).await?;
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(
        pairing.starts_with(&format!("{}/pair/", server.url())),
        "{pairing}"
    );
    Ok(())
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| {
        o.trusted_proxies = vec![switchboard_server::parse_trusted_proxy("10.0.0.0/8").unwrap()];
    })
    .await?;
    let (cookie, pairing, api_base) = handed_out(&server, https_headers()).await?;
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(
        pairing.starts_with(&format!("{}/pair/", server.url())),
        "{pairing}"
    );
    assert_eq!(api_base, server.url());
    let _: SocketAddr = server.addr();
    Ok(())
}

#[tokio::test]
async fn a_configured_public_url_wins_over_what_a_proxy_says() -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| {
        o.trusted_proxies = vec![switchboard_server::parse_trusted_proxy("127.0.0.1").unwrap()];
        o.public_url = Some("https://configured.example.net/".into());
    })
    .await?;
    let (cookie, pairing, api_base) = handed_out(&server, Default::default()).await?;
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(
        pairing.starts_with("https://configured.example.net/pair/"),
        "{pairing}"
    );
    assert_eq!(api_base, "https://configured.example.net");
    Ok(())
}
