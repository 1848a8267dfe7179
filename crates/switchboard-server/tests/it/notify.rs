//! Notifications end to end: a worker's permission request reaches a webhook (signed), an
//! ntfy topic and a browser's push service, each a real HTTP server on 127.0.0.1. The
//! push-service double decrypts what it receives with the subscription's private key
//! (RFC 8291) and verifies the VAPID token against the server's public key (RFC 8292),
//! so the encryption and the signature are checked for real.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::{PublicKey, SecretKey};
use serde_json::{json, Value};
use sha2::Sha256;
use switchboard_client::IngressTransport;
use tokio::sync::mpsc;

use crate::common::*;

/// One request the doubles received, decoded.
#[derive(Debug)]
struct Received {
    /// `webhook`, `ntfy` or `push`.
    channel: &'static str,
    path: String,
    headers: HeaderMap,
    /// The JSON body (for push: the decrypted payload).
    body: Value,
    /// The body's bytes exactly as they arrived (what a webhook signature covers).
    raw: Bytes,
}

/// The browser's side of a push subscription.
struct Browser {
    secret: SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Self {
        Self {
            secret: SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng),
            auth: rand::random(),
        }
    }

    fn p256dh(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.public_key().to_encoded_point(false).as_bytes())
    }

    /// RFC 8291 section 3 from the receiving side: ECDH with the key id, the two HKDF steps,
    /// AES-128-GCM, then the padding delimiter.
    fn decrypt(&self, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(body.len() > 21, "body too short");
        let salt = &body[..16];
        let idlen = body[20] as usize;
        let as_public = &body[21..21 + idlen];
        let sealed = &body[21 + idlen..];
        let shared = p256::ecdh::diffie_hellman(
            self.secret.to_nonzero_scalar(),
            PublicKey::from_sec1_bytes(as_public)?.as_affine(),
        );
        let ua_public = self.secret.public_key().to_encoded_point(false);
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(ua_public.as_bytes());
        info.extend_from_slice(as_public);
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), shared.raw_secret_bytes())
            .expand(&info, &mut ikm)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut plain = Aes128Gcm::new_from_slice(&cek)?
            .decrypt(Nonce::from_slice(&nonce), sealed)
            .map_err(|_| anyhow::anyhow!("the message does not decrypt"))?;
        while plain.last() == Some(&0) {
            plain.pop();
        }
        anyhow::ensure!(plain.pop() == Some(2), "no last-record delimiter");
        Ok(plain)
    }
}

/// What the doubles share.
struct Doubles {
    tx: mpsc::UnboundedSender<Received>,
    browser: Browser,
    /// The server's VAPID public key, once known.
    vapid_key: Mutex<Option<String>>,
    /// Statuses the webhook answers first, in order; then 200.
    webhook_statuses: Mutex<Vec<u16>>,
    /// The origin the push double serves (the JWT's `aud`).
    origin: Mutex<String>,
}

/// Checks a VAPID `Authorization` header: its key is the server's, its JWT is signed by
/// it (ES256) and names the push service's origin and a near expiry.
fn check_vapid(headers: &HeaderMap, server_key: &str, origin: &str) -> anyhow::Result<()> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| anyhow::anyhow!("no Authorization"))?;
    let rest = auth
        .strip_prefix("vapid t=")
        .ok_or_else(|| anyhow::anyhow!("not a vapid header: {auth}"))?;
    let (jwt, k) = rest
        .split_once(", k=")
        .ok_or_else(|| anyhow::anyhow!("no k="))?;
    anyhow::ensure!(k == server_key, "k is not the server's VAPID key");
    let (input, sig) = jwt
        .rsplit_once('.')
        .ok_or_else(|| anyhow::anyhow!("not a JWT"))?;
    let key = VerifyingKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(k)?)?;
    key.verify(
        input.as_bytes(),
        &Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig)?)?,
    )?;
    let (header, claims) = input
        .split_once('.')
        .ok_or_else(|| anyhow::anyhow!("not a JWT"))?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?;
    anyhow::ensure!(header["alg"] == "ES256", "alg {header}");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims)?)?;
    anyhow::ensure!(claims["aud"] == origin, "aud {claims}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let exp = claims["exp"].as_i64().unwrap_or(0);
    anyhow::ensure!(exp > now && exp <= now + 24 * 3600, "exp {exp}");
    Ok(())
}

async fn webhook(State(d): State<Arc<Doubles>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = {
        let mut s = d.webhook_statuses.lock().unwrap();
        if s.is_empty() {
            200
        } else {
            s.remove(0)
        }
    };
    let parsed = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&body)}));
    let _ = d.tx.send(Received {
        channel: "webhook",
        path: "/hook".into(),
        headers,
        body: json!({"status": status, "payload": parsed}),
        raw: body,
    });
    StatusCode::from_u16(status).unwrap()
}

async fn slow(body: Bytes) -> StatusCode {
    drop(body);
    tokio::time::sleep(Duration::from_secs(30)).await;
    StatusCode::OK
}

/// Answers with a redirect to the webhook: a notification must not follow it.
async fn redirect() -> (StatusCode, [(&'static str, &'static str); 1]) {
    (StatusCode::TEMPORARY_REDIRECT, [("location", "/hook")])
}

async fn ntfy(State(d): State<Arc<Doubles>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let _ = d.tx.send(Received {
        channel: "ntfy",
        path: "/ntfy/".into(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body,
    });
    StatusCode::OK
}

async fn push(
    State(d): State<Arc<Doubles>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    if id == "gone" {
        return (StatusCode::GONE, "expired".into());
    }
    let key = d.vapid_key.lock().unwrap().clone().unwrap_or_default();
    let origin = d.origin.lock().unwrap().clone();
    if let Err(e) = check_vapid(&headers, &key, &origin) {
        return (StatusCode::UNAUTHORIZED, e.to_string());
    }
    if headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        != Some("aes128gcm")
    {
        return (StatusCode::BAD_REQUEST, "content-encoding".into());
    }
    let plain = match d.browser.decrypt(&body) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()),
    };
    let _ = d.tx.send(Received {
        channel: "push",
        path: format!("/push/{id}"),
        headers,
        body: serde_json::from_slice(&plain).unwrap_or(Value::Null),
        raw: Bytes::from(plain),
    });
    (StatusCode::CREATED, String::new())
}

/// Starts the doubles on 127.0.0.1; returns their base URL.
async fn start_doubles() -> anyhow::Result<(String, Arc<Doubles>, mpsc::UnboundedReceiver<Received>)>
{
    let (tx, rx) = mpsc::unbounded_channel();
    let doubles = Arc::new(Doubles {
        tx,
        browser: Browser::new(),
        vapid_key: Mutex::new(None),
        webhook_statuses: Mutex::new(Vec::new()),
        origin: Mutex::new(String::new()),
    });
    let app = Router::new()
        .route("/hook", post(webhook))
        .route("/slow", post(slow))
        .route("/ntfy/", post(ntfy))
        .route("/push/{id}", post(push))
        .route("/redirect", post(redirect))
        .with_state(doubles.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    *doubles.origin.lock().unwrap() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, doubles, rx))
}

async fn received(rx: &mut mpsc::UnboundedReceiver<Received>) -> anyhow::Result<Received> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .map_err(|_| anyhow::anyhow!("timed out waiting for a notification"))?
        .ok_or_else(|| anyhow::anyhow!("doubles stopped"))
}

/// The next `n` deliveries, sorted by channel.
async fn deliveries(
    rx: &mut mpsc::UnboundedReceiver<Received>,
    n: usize,
) -> anyhow::Result<Vec<Received>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(received(rx).await?);
    }
    out.sort_by_key(|r| r.channel);
    Ok(out)
}

/// A server that sends notifications to 127.0.0.1, where the doubles are.
async fn allowing_private(
    configure: impl FnOnce(&mut switchboard_server::ServerOptions),
) -> anyhow::Result<TestServer> {
    TestServer::start_with(|o| {
        o.notify_allow_private = true;
        configure(o);
    })
    .await
}

/// The notice a delivery carries (a webhook wraps it with the status it answered).
fn notice_of(r: &Received) -> &Value {
    if r.channel == "webhook" {
        &r.body["payload"]
    } else {
        &r.body
    }
}

/// Fails if anything is delivered within `wait`.
async fn nothing_within(
    rx: &mut mpsc::UnboundedReceiver<Received>,
    wait: Duration,
) -> anyhow::Result<()> {
    if let Ok(Some(r)) = tokio::time::timeout(wait, rx.recv()).await {
        anyhow::bail!("unexpected delivery: {r:?}");
    }
    Ok(())
}

fn hmac_hex(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn can_use_tool(request_id: &str) -> Value {
    json!({"type": "control_request", "request_id": request_id, "request": {
        "subtype": "can_use_tool", "tool_name": "Bash",
        "input": {"command": "rm -rf build\nmake all", "description": "Rebuild"}}})
}

#[tokio::test]
async fn a_permission_request_reaches_the_webhook_ntfy_and_a_browser_encrypted(
) -> anyhow::Result<()> {
    let server = allowing_private(|_| {}).await?;
    let (base, doubles, mut rx) = start_doubles().await?;
    let client = server.sessions();
    let http = server.http();
    let api = |path: &str| format!("{}{path}", server.url());

    // Channels, set from the API the CLI uses.
    let hook = client
        .set_notify_channel("webhook", &format!("{base}/hook"), None)
        .await?;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{hook}");
    client
        .set_notify_channel("ntfy", &format!("{base}/ntfy/alerts"), Some("tk_secret"))
        .await?;
    // A browser subscribes (as the web UI posts PushSubscription.toJSON()), and one whose
    // subscription has expired at the push service.
    for endpoint in [format!("{base}/push/phone"), format!("{base}/push/gone")] {
        let answer = http
            .post(api("/v1/notify/push/subscriptions"))
            .bearer_auth(&server.key)
            .json(&json!({"endpoint": endpoint, "keys": {
                "p256dh": doubles.browser.p256dh(),
                "auth": URL_SAFE_NO_PAD.encode(doubles.browser.auth)}}))
            .send()
            .await?;
        assert_eq!(answer.status(), 201, "{}", answer.text().await?);
    }
    let settings = client.notify_settings().await?;
    assert_eq!(
        settings["push"]["subscriptions"].as_array().unwrap().len(),
        2
    );
    *doubles.vapid_key.lock().unwrap() =
        Some(settings["push"]["public_key"].as_str().unwrap().to_owned());
    // Bad keys are refused with a clear error.
    let bad = http
        .post(api("/v1/notify/push/subscriptions"))
        .bearer_auth(&server.key)
        .json(&json!({"endpoint": format!("{base}/push/x"), "keys": {"p256dh": "AAAA", "auth": "AAAA"}}))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await?.contains("p256dh"));

    // The worker asks for permission.
    let d = dispatch(&server).await?;
    let (worker, _inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    worker.write(vec![can_use_tool("perm-1")]).await?;

    let got = deliveries(&mut rx, 3).await?;
    let [ntfy, push, webhook] = &got[..] else {
        anyhow::bail!("expected three deliveries: {got:?}")
    };

    // The webhook: the notice as JSON, signed over the timestamp and the exact body.
    let payload = &webhook.body["payload"];
    assert_eq!(payload["type"], "permission");
    assert_eq!(payload["title"], "Allow Bash? · test");
    assert_eq!(payload["body"], "rm -rf build");
    // One line of two: a notification never offers to allow what it did not show.
    assert_eq!(payload["shown_in_full"], false);
    assert_eq!(payload["tool"], "Bash");
    assert_eq!(payload["request_id"], "perm-1");
    assert_eq!(payload["session_id"], d.session_id);
    assert_eq!(payload["collapse_key"], d.session_id);
    assert_eq!(
        payload["url"],
        format!("{}/s/{}#request-perm-1", server.url(), d.session_id)
    );
    let ts = webhook.headers["x-switchboard-timestamp"].to_str()?;
    assert_eq!(
        webhook.headers["x-switchboard-signature"].to_str()?,
        hmac_hex(&secret, ts, &webhook.raw),
        "the signature covers the timestamp and the body"
    );
    assert_eq!(webhook.headers["x-switchboard-event"], "permission");

    // ntfy: JSON publishing to the server's root, the token as a bearer.
    assert_eq!(ntfy.body["topic"], "alerts");
    assert_eq!(ntfy.body["title"], "Allow Bash? · test");
    assert_eq!(ntfy.body["message"], "rm -rf build");
    assert_eq!(ntfy.body["priority"], 4);
    assert_eq!(ntfy.body["click"], payload["url"]);
    assert_eq!(ntfy.headers["authorization"], "Bearer tk_secret");

    // The browser: decrypted with its own key, the same notice; urgent, one per session.
    assert_eq!(push.path, "/push/phone");
    assert_eq!(&push.body, payload);
    assert_eq!(push.headers["urgency"], "high");
    let topic = push.headers["topic"].to_str()?;
    assert!(
        topic.len() <= 32
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert!(
        !push.body.to_string().contains(&server.key)
            && !push.body.to_string().contains(&d.ingress_token)
    );

    // The expired subscription (410) is gone.
    let list = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = client.notify_settings().await?;
            let subs = s["push"]["subscriptions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if subs.len() == 1 {
                return anyhow::Ok(subs);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    assert_eq!(list[0]["service"], "127.0.0.1");

    // Answering the request (as the page or the notification's Allow does) closes the
    // browser's notification: a `resolved` push, not sent to the webhook or ntfy.
    client
        .send_events(
            &d.session_id,
            vec![json!({"type": "control_response", "response": {
            "subtype": "success", "request_id": "perm-1",
            "response": {"behavior": "allow", "updatedInput": {}}}})],
        )
        .await?;
    let resolved = received(&mut rx).await?;
    assert_eq!(
        (resolved.channel, resolved.body["type"].as_str()),
        ("push", Some("resolved"))
    );
    assert_eq!(resolved.body["request_id"], "perm-1");

    // A finished turn notifies too, until the owner turns that off.
    worker.write(vec![json!({"type": "result", "subtype": "success", "uuid": "r1", "result": "All tests pass"})]).await?;
    let done = deliveries(&mut rx, 3).await?;
    assert!(
        done.iter().all(|r| {
            let n = if r.channel == "webhook" {
                &r.body["payload"]
            } else {
                &r.body
            };
            n["type"] == "result" || n["message"] == "All tests pass"
        }),
        "{done:?}"
    );
    client.set_notify_events(&["error".into()]).await?;
    worker
        .write(vec![
            can_use_tool("perm-2"),
            json!({"type": "result", "subtype": "success", "uuid": "r2"}),
        ])
        .await?;
    worker.write(vec![json!({"type": "result", "subtype": "error_during_execution", "is_error": true, "uuid": "r3"})]).await?;
    let errors = deliveries(&mut rx, 3).await?;
    for r in &errors {
        let n = if r.channel == "webhook" {
            &r.body["payload"]
        } else {
            &r.body
        };
        assert!(
            n["type"] == "error"
                || n["title"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("The agent stopped"),
            "{r:?}"
        );
    }

    // `notify test` reports each delivery.
    let test = client.test_notify().await?;
    let results = test["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{test}");
    assert!(results.iter().all(|r| r["ok"] == true), "{test}");
    deliveries(&mut rx, 3).await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_webhook_is_retried_and_a_slow_one_never_slows_the_session() -> anyhow::Result<()>
{
    let server = allowing_private(|_| {}).await?;
    let (base, doubles, mut rx) = start_doubles().await?;
    let client = server.sessions();
    client
        .set_notify_channel("webhook", &format!("{base}/hook"), Some("k"))
        .await?;
    *doubles.webhook_statuses.lock().unwrap() = vec![503, 500];
    let d = dispatch(&server).await?;
    let (worker, _inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    worker.write(vec![can_use_tool("p1")]).await?;
    let statuses: Vec<u64> = [
        received(&mut rx).await?,
        received(&mut rx).await?,
        received(&mut rx).await?,
    ]
    .iter()
    .map(|r| r.body["status"].as_u64().unwrap())
    .collect();
    assert_eq!(statuses, [503, 500, 200]);

    // A 4xx is not retried.
    *doubles.webhook_statuses.lock().unwrap() = vec![400];
    worker
        .write(vec![
            json!({"type": "result", "subtype": "success", "uuid": "x"}),
        ])
        .await?;
    assert_eq!(received(&mut rx).await?.body["status"], 400);
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), rx.recv())
            .await
            .is_err(),
        "a 400 was retried"
    );

    // An endpoint that never answers: appends stay fast, many notices or not.
    client
        .set_notify_channel("webhook", &format!("{base}/slow"), None)
        .await?;
    let start = Instant::now();
    for i in 0..50 {
        worker
            .write(vec![
                json!({"type": "result", "subtype": "success", "uuid": format!("s{i}")}),
            ])
            .await?;
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "appends waited for the webhook: {:?}",
        start.elapsed()
    );
    let status = client.get_session(&d.session_id).await?;
    assert_eq!(status.session_status, "idle");
    Ok(())
}

#[tokio::test]
async fn channels_are_per_owner_and_bad_urls_are_refused() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.sessions();
    for (kind, url) in [
        ("webhook", "ftp://x/y"),
        ("webhook", "not a url"),
        ("ntfy", "https://ntfy.sh/"),
    ] {
        let err = client
            .set_notify_channel(kind, url, None)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("url") || err.to_string().contains("URL"),
            "{err}"
        );
    }
    assert!(client
        .set_notify_channel("pager", "https://x/y", None)
        .await
        .is_err());
    assert!(client
        .set_notify_events(&["everything".into()])
        .await
        .unwrap_err()
        .to_string()
        .contains("unknown event"));
    client
        .set_notify_channel("ntfy", "https://ntfy.example.invalid/t", Some("tok"))
        .await?;
    let mine = client.notify_settings().await?;
    assert_eq!(mine["channels"][0]["token"], true);
    assert!(
        !mine.to_string().contains("\"tok\""),
        "the ntfy token is never shown back"
    );

    let bob = switchboard_client::SessionsClient::new(server.url(), server.key_for("bob").await?);
    assert!(bob.notify_settings().await?["channels"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(bob.delete_notify_channel("ntfy").await.is_err());
    client.delete_notify_channel("ntfy").await?;
    assert!(client.notify_settings().await?["channels"]
        .as_array()
        .unwrap()
        .is_empty());
    // Bob cannot remove alice's browser.
    let http = server.http();
    let browser = Browser::new();
    let sub: Value = http
        .post(format!("{}/v1/notify/push/subscriptions", server.url()))
        .bearer_auth(&server.key)
        .json(
            &json!({"endpoint": "https://push.example.invalid/x", "keys": {
            "p256dh": browser.p256dh(), "auth": URL_SAFE_NO_PAD.encode(browser.auth)}}),
        )
        .send()
        .await?
        .json()
        .await?;
    let id = sub["id"].as_str().unwrap();
    assert!(bob.delete_push_subscription(id).await.is_err());
    client.delete_push_subscription(id).await?;
    Ok(())
}

/// Sets a channel with raw HTTP, so the request's headers can be chosen.
async fn set_channel_with(
    server: &TestServer,
    kind: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<reqwest::Response> {
    let mut request = server
        .http()
        .put(format!("{}/v1/notify/channels/{kind}", server.url()))
        .bearer_auth(&server.key)
        .json(&json!({ "url": url }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Ok(request.send().await?)
}

#[tokio::test]
async fn private_addresses_are_refused_when_set_and_when_sent_and_the_test_says_nothing_of_them(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (base, doubles, mut rx) = start_doubles().await?;
    let port = base.rsplit(':').next().unwrap().to_owned();
    let client = server.sessions();

    // Set: loopback, names of it, the cloud metadata address, private ranges: a 400 that
    // says why and how to allow them.
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://LOCALHOST.:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::1]:{port}/hook"),
        "http://[fd00::1]/hook".to_owned(),
        "http://10.0.0.7/hook".to_owned(),
        "http://192.168.1.1/hook".to_owned(),
        "http://[::ffff:127.0.0.1]/hook".to_owned(),
    ] {
        let answer = set_channel_with(&server, "webhook", &url, &[]).await?;
        assert_eq!(answer.status(), 400, "{url}");
        let body: Value = answer.json().await?;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("not a public address") && message.contains("--notify-allow-private"),
            "{url}: {body}"
        );
    }
    assert!(client
        .set_notify_channel(
            "ntfy",
            &format!("http://127.0.0.1:{port}/ntfy/alerts"),
            None
        )
        .await
        .is_err());
    let browser = Browser::new();
    let refused = server
        .http()
        .post(format!("{}/v1/notify/push/subscriptions", server.url()))
        .bearer_auth(&server.key)
        .json(&json!({"endpoint": format!("{base}/push/phone"), "keys": {
            "p256dh": browser.p256dh(), "auth": URL_SAFE_NO_PAD.encode(browser.auth)}}))
        .send()
        .await?;
    assert_eq!(refused.status(), 400);
    assert!(client.notify_settings().await?["channels"]
        .as_array()
        .unwrap()
        .is_empty());

    // Sent: targets that got into the store anyway (set while private addresses were
    // allowed, or a name that resolves elsewhere now) are refused at every connection,
    // by address literal and by name, and nothing reaches them.
    let owner = server.state().store().ensure_owner("alice", 0).await?.id;
    for (kind, url) in [
        ("webhook", format!("{base}/hook")),
        ("ntfy", format!("http://localhost:{port}/ntfy/alerts")),
    ] {
        server
            .state()
            .store()
            .put_notify_channel(&switchboard_store::NotifyChannel {
                owner_id: owner.clone(),
                kind: kind.into(),
                url,
                secret: Some("k".into()),
                origin: None,
                created_at: 0,
            })
            .await?;
    }
    let test = client.test_notify().await?;
    let results = test["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{test}");
    for r in results {
        assert_eq!(r["ok"], false, "{test}");
        let detail = r["detail"].as_str().unwrap();
        assert!(detail.contains("not a public address"), "{test}");
        // Nothing about what is (or is not) listening there.
        for telling in [
            &port,
            "refused",
            "connect",
            "answered",
            "timed out",
            "error",
        ] {
            assert!(!detail.contains(telling), "{detail:?} tells {telling:?}");
        }
    }
    let d = dispatch(&server).await?;
    let (worker, _inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    worker.write(vec![can_use_tool("p1")]).await?;
    nothing_within(&mut rx, Duration::from_millis(1500)).await?;
    drop(doubles);
    Ok(())
}

#[tokio::test]
async fn redirects_are_not_followed() -> anyhow::Result<()> {
    let server = allowing_private(|_| {}).await?;
    let (base, _doubles, mut rx) = start_doubles().await?;
    let client = server.sessions();
    client
        .set_notify_channel("webhook", &format!("{base}/redirect"), None)
        .await?;
    let test = client.test_notify().await?;
    assert_eq!(test["results"][0]["ok"], false, "{test}");
    assert!(
        test["results"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("307"),
        "{test}"
    );
    nothing_within(&mut rx, Duration::from_millis(500)).await?;
    Ok(())
}

#[tokio::test]
async fn links_start_where_the_owner_set_the_channel_never_where_a_worker_connected(
) -> anyhow::Result<()> {
    // Behind a trusted proxy, with no --public-url: each request's forwarded host is
    // believed for that request.
    let server = allowing_private(|o| {
        o.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await?;
    let (base, _doubles, mut rx) = start_doubles().await?;
    let answer = set_channel_with(
        &server,
        "webhook",
        &format!("{base}/hook"),
        &[
            ("x-forwarded-host", "phone.example"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await?;
    assert_eq!(answer.status(), 200);

    // A worker posts a permission request through the proxy under another name.
    let d = dispatch(&server).await?;
    let posted = server
        .http()
        .post(format!(
            "{}/v1/session_ingress/session/{}/events",
            server.url(),
            d.session_id
        ))
        .bearer_auth(&d.ingress_token)
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "http")
        .json(&json!({"events": [can_use_tool("p1")]}))
        .send()
        .await?;
    assert_eq!(posted.status(), 200, "{}", posted.text().await?);
    let got = received(&mut rx).await?;
    assert_eq!(
        notice_of(&got)["url"],
        format!("https://phone.example/s/{}#request-p1", d.session_id)
    );

    // A configured public URL is where every link starts.
    let configured =
        allowing_private(|o| o.public_url = Some("https://sb.example/".into())).await?;
    let (base, _doubles, mut rx) = start_doubles().await?;
    configured
        .sessions()
        .set_notify_channel("webhook", &format!("{base}/hook"), None)
        .await?;
    let d = dispatch(&configured).await?;
    let (worker, _inbound) = IngressTransport::connect(ingress_config(
        &configured,
        &d.work.data.id,
        &d.ingress_token,
    ))
    .await?;
    worker.write(vec![can_use_tool("p2")]).await?;
    let got = received(&mut rx).await?;
    assert_eq!(
        notice_of(&got)["url"],
        format!("https://sb.example/s/{}#request-p2", d.session_id)
    );
    Ok(())
}

#[tokio::test]
async fn what_a_notification_shows_of_a_command_is_bounded_and_its_secrets_masked(
) -> anyhow::Result<()> {
    let server = allowing_private(|_| {}).await?;
    let (base, _doubles, mut rx) = start_doubles().await?;
    let client = server.sessions();
    client
        .set_notify_channel("webhook", &format!("{base}/hook"), None)
        .await?;
    client
        .set_notify_channel("ntfy", &format!("{base}/ntfy/alerts"), None)
        .await?;
    let d = dispatch(&server).await?;
    let (worker, _inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    let bash = |id: &str, command: &str| {
        json!({"type": "control_request", "request_id": id, "request": {
            "subtype": "can_use_tool", "tool_name": "Bash", "input": {"command": command}}})
    };
    let secret_command = "curl -H 'Authorization: Bearer tok_live_123' \
        --token ghp_abcdefghijklmnop https://u:hunter2@api.example.com?access_token=zzz";
    worker.write(vec![bash("s1", secret_command)]).await?;
    let got = deliveries(&mut rx, 2).await?;
    for r in &got {
        let text = r.raw.escape_ascii().to_string();
        for secret in ["tok_live_123", "ghp_abcdefghijklmnop", "hunter2", "zzz"] {
            assert!(
                !text.contains(secret),
                "{} shows {secret}: {text}",
                r.channel
            );
        }
    }
    let notice = notice_of(&got[1]);
    assert_eq!(
        notice["body"],
        "curl -H 'Authorization: Bearer ***' --token *** https://u:***@api.example.com?access_token=***"
    );
    assert_eq!(notice["shown_in_full"], false, "something was masked");
    assert_eq!(
        got[0].body["message"], notice["body"],
        "ntfy shows the same"
    );

    // Bounded: a long command is cut, and then not shown in full either.
    let long = format!("echo {}", "x".repeat(1000));
    worker.write(vec![bash("s2", &long)]).await?;
    let got = deliveries(&mut rx, 2).await?;
    let notice = notice_of(&got[1]);
    assert!(notice["body"].as_str().unwrap().chars().count() <= 241);
    assert_eq!(notice["shown_in_full"], false);

    // A short, plain command is shown whole, and may be allowed from the notification.
    worker.write(vec![bash("s3", "cargo test")]).await?;
    let got = deliveries(&mut rx, 2).await?;
    let notice = notice_of(&got[1]);
    assert_eq!(notice["body"], "cargo test");
    assert_eq!(notice["shown_in_full"], true);
    Ok(())
}

#[tokio::test]
async fn a_lost_v1_worker_notifies_once_after_the_grace_and_a_quick_reconnect_notifies_nobody(
) -> anyhow::Result<()> {
    let server = allowing_private(|o| o.worker_lost_grace = Duration::from_millis(300)).await?;
    let (base, _doubles, mut rx) = start_doubles().await?;
    let client = server.sessions();
    client
        .set_notify_channel("webhook", &format!("{base}/hook"), None)
        .await?;
    let settings = client.notify_settings().await?;
    assert!(
        settings["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "worker_lost" && e["enabled"] == true),
        "worker_lost is a setting, on by default: {settings}"
    );
    let d = dispatch(&server).await?;
    let config = || ingress_config(&server, &d.work.data.id, &d.ingress_token);

    // Mid-turn, the worker's socket goes and another takes over at once: nobody is told.
    let (worker, _inbound) = IngressTransport::connect(config()).await?;
    worker
        .write(vec![
            json!({"type": "assistant", "uuid": "a1", "message": {"content": []}}),
        ])
        .await?;
    worker.close().await;
    let (worker, _inbound) = IngressTransport::connect(config()).await?;
    nothing_within(&mut rx, Duration::from_millis(900)).await?;

    // It goes for good: one notice, after the grace, collapsed on the session.
    let gone = Instant::now();
    worker.close().await;
    let got = received(&mut rx).await?;
    let notice = notice_of(&got);
    assert_eq!(notice["type"], "worker_lost", "{notice}");
    assert_eq!(notice["collapse_key"], d.session_id);
    assert_eq!(got.headers["x-switchboard-event"], "worker_lost");
    assert!(gone.elapsed() >= Duration::from_millis(250));
    nothing_within(&mut rx, Duration::from_millis(900)).await?;

    // A worker that leaves an idle session (the turn ended) was not lost.
    let (worker, _inbound) = IngressTransport::connect(config()).await?;
    worker
        .write(vec![
            json!({"type": "result", "subtype": "success", "uuid": "r1"}),
        ])
        .await?;
    assert_eq!(notice_of(&received(&mut rx).await?)["type"], "result");
    worker.close().await;
    nothing_within(&mut rx, Duration::from_millis(900)).await?;

    // Turned off, it is not sent.
    let (worker, _inbound) = IngressTransport::connect(config()).await?;
    worker
        .write(vec![
            json!({"type": "assistant", "uuid": "a2", "message": {"content": []}}),
        ])
        .await?;
    client.set_notify_events(&["permission".into()]).await?;
    worker.close().await;
    nothing_within(&mut rx, Duration::from_millis(900)).await?;
    Ok(())
}

#[tokio::test]
async fn owners_with_nothing_set_cost_the_notifier_no_store_reads() -> anyhow::Result<()> {
    let server = allowing_private(|_| {}).await?;
    let (base, _doubles, mut rx) = start_doubles().await?;
    let d = dispatch(&server).await?;
    let (worker, _inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    let lookups = || async {
        let metrics = server
            .http()
            .get(format!("{}/metrics", server.url()))
            .bearer_auth(&server.key)
            .send()
            .await?
            .text()
            .await?;
        let line = metrics
            .lines()
            .find(|l| l.starts_with("switchboard_notify_owner_lookups_total "))
            .ok_or_else(|| anyhow::anyhow!("no lookups metric"))?;
        anyhow::Ok(line.rsplit(' ').next().unwrap().parse::<u64>()?)
    };
    for i in 0..20 {
        worker
            .write(vec![
                json!({"type": "result", "subtype": "success", "uuid": format!("r{i}")}),
            ])
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lookups().await?,
        1,
        "the first notice found nothing set; the rest were free"
    );

    // Setting a channel is seen at once.
    server
        .sessions()
        .set_notify_channel("webhook", &format!("{base}/hook"), None)
        .await?;
    worker
        .write(vec![
            json!({"type": "result", "subtype": "success", "uuid": "after"}),
        ])
        .await?;
    assert_eq!(notice_of(&received(&mut rx).await?)["type"], "result");
    Ok(())
}
