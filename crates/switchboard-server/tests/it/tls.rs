//! TLS termination with a certificate made in the test: an https request, a wss viewer
//! subscription, and a certificate replaced on disk served to the next connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use switchboard_server::TlsFiles;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// A certificate authority made for one test, and leaf certificates it signs.
struct Authority {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Authority {
    fn new() -> anyhow::Result<Self> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// Writes a new leaf for localhost / 127.0.0.1 into `dir`; returns its DER.
    fn issue(&self, files: &TlsFiles) -> anyhow::Result<CertificateDer<'static>> {
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let key = rcgen::KeyPair::generate()?;
        let leaf = params.signed_by(&key, &self.cert, &self.key)?;
        // Written beside and renamed over, as certbot and friends do.
        replace(&files.key, key.serialize_pem().as_bytes())?;
        replace(&files.cert, leaf.pem().as_bytes())?;
        Ok(leaf.der().clone())
    }

    fn roots(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone())?;
        Ok(roots)
    }
}

fn replace(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// A TLS connection to the server, checked against `roots`.
async fn connect(
    addr: SocketAddr,
    roots: &rustls::RootCertStore,
) -> anyhow::Result<TlsStream<TcpStream>> {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    Ok(connector
        .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
        .await?)
}

/// The leaf certificate the server presented.
fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .clone()
}

/// One HTTP/1.1 request over TLS: (status, body as JSON or null).
async fn https(
    addr: SocketAddr,
    roots: &rustls::RootCertStore,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut stream = connect(addr, roots).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    // The server may close without close_notify after the response; what came counts.
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no response head in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    Ok((status, json))
}

#[tokio::test]
async fn https_and_a_wss_viewer_work_on_a_certificate_made_here() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Authority::new()?;
    let tls = files(dir.path());
    ca.issue(&tls)?;
    let server = TestServer::start_with(|o| o.tls = Some(tls.clone())).await?;
    let roots = ca.roots()?;
    let addr = server.addr();

    let (status, health) = https(addr, &roots, "GET", "/health", "", None).await?;
    assert_eq!(status, 200, "{health}");

    // Plain HTTP to the TLS port gets nothing it could mistake for an answer.
    let mut plain = TcpStream::connect(addr).await?;
    plain
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    let (status, session) = https(
        addr,
        &roots,
        "POST",
        "/v1/sessions",
        &server.key,
        Some(json!({})),
    )
    .await?;
    assert_eq!(status, 200, "{session}");
    let id = session["id"].as_str().expect("a session id").to_string();

    // A viewer over wss.
    let stream = connect(addr, &roots).await?;
    let mut request =
        format!("wss://localhost/v1/sessions/ws/{id}/subscribe").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", server.key).parse()?);
    let (mut viewer, _) = tokio_tungstenite::client_async(request, stream).await?;

    let (status, sent) = https(
        addr,
        &roots,
        "POST",
        &format!("/v1/sessions/{id}/events"),
        &server.key,
        Some(json!({ "events": [prompt("over tls")] })),
    )
    .await?;
    assert_eq!(status, 200, "{sent}");
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(5), viewer.next()).await? {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "user" {
                    break v;
                }
            }
            Some(Ok(_)) => {}
            other => anyhow::bail!("viewer socket ended: {other:?}"),
        }
    };
    assert_eq!(frame["message"]["content"], "over tls");

    // The sign-in cookie is Secure on a TLS connection.
    let mut stream = connect(addr, &roots).await?;
    let body = json!({ "key": server.key }).to_string();
    stream
        .write_all(
            format!(
                "POST /web/login HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await?;
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let cookie = text
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_default()
        .to_string();
    assert!(cookie.contains("; secure"), "{text}");
    Ok(())
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_and_a_bad_one_is_not(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Authority::new()?;
    let tls = files(dir.path());
    let first = ca.issue(&tls)?;
    let server = TestServer::start_with(|o| o.tls = Some(tls.clone())).await?;
    let roots = ca.roots()?;
    let addr = server.addr();

    let old = connect(addr, &roots).await?;
    assert_eq!(presented(&old), first);

    let second = ca.issue(&tls)?;
    assert_ne!(first, second);
    let renewed = connect(addr, &roots).await?;
    assert_eq!(
        presented(&renewed),
        second,
        "the renewed certificate, without a restart"
    );

    // A half-written or broken file keeps the last good certificate in service.
    std::fs::write(
        &tls.cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n",
    )?;
    let still = connect(addr, &roots).await?;
    assert_eq!(presented(&still), second);
    let (status, _) = https(addr, &roots, "GET", "/health", "", None).await?;
    assert_eq!(status, 200);

    // And the next good one is picked up again.
    let third = ca.issue(&tls)?;
    assert_eq!(presented(&connect(addr, &roots).await?), third);
    Ok(())
}
