//! Every client over TLS: a real `switchboard serve` behind a TLS terminator made in the
//! test (a tokio-rustls acceptor that forwards the bytes to the plain server, which is
//! also how a reverse proxy looks), with a CA and a server certificate made by rcgen.
//! The sessions REST calls, the viewer socket (wss), a v1 worker (wss and https POSTs)
//! and a v2 worker (https SSE and uploads) work when the CA is given, and without it the
//! failure says the certificate is not trusted instead of blaming the server.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};
use switchboard_client::bridge::{BridgeConfig, EnvLessBridge};
use switchboard_client::{
    BridgeApiClient, ClientTls, IngressConfig, IngressTransport, SessionsClient, TlsFailure,
    ViewerConfig, ViewerEvent, ViewerSocket,
};
use switchboard_proto::environments::{RegisterEnvironmentRequest, WorkSecret};
use switchboard_proto::sessions::CreateSessionRequest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use support::{switchboard, Served};

/// How long one step may take.
const STEP: Duration = Duration::from_secs(15);

/// A test CA and a server certificate it issued for `localhost` and `127.0.0.1`.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    fn new() -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Switchboard test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key)?;
        let key = rcgen::KeyPair::generate()?;
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        let certificate = params.signed_by(&key, &ca, &ca_key)?;
        let private = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        // The client's provider (see switchboard-client's tls.rs for the deprecation).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![certificate.der().clone()], private.into())?;
        Ok(Self {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        })
    }
}

/// A TLS terminator on 127.0.0.1 in front of a plain server; it stops with the test.
struct TlsProxy {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsProxy {
    async fn start(plain_url: &str, config: Arc<rustls::ServerConfig>) -> anyhow::Result<Self> {
        let upstream: SocketAddr = plain_url
            .trim_start_matches("http://")
            .parse()
            .context("the server's address")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake; fine.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok(Self { url, task })
    }
}

async fn recv<T>(receiver: &mut mpsc::Receiver<T>, what: &str) -> anyhow::Result<T> {
    tokio::time::timeout(STEP, receiver.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no {what} within {STEP:?}"))?
        .ok_or_else(|| anyhow::anyhow!("the channel ended before {what}"))
}

/// The next viewer message that satisfies `accept`.
async fn viewer_message(
    events: &mut mpsc::Receiver<ViewerEvent>,
    what: &str,
    accept: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    loop {
        match recv(events, what).await? {
            ViewerEvent::Message(message) if accept(&message) => return Ok(message),
            ViewerEvent::Closed { code, reason } => {
                anyhow::bail!("the viewer closed ({code:?}: {reason}) before {what}")
            }
            _ => {}
        }
    }
}

fn register_request() -> RegisterEnvironmentRequest {
    RegisterEnvironmentRequest {
        machine_name: "tls-host".into(),
        directory: "/work/tls".into(),
        branch: "main".into(),
        git_repo_url: None,
        max_sessions: 1,
        metadata: json!({"worker_type": "claude_code"}),
        environment_id: None,
    }
}

#[tokio::test]
async fn every_client_reaches_the_server_through_tls_when_the_ca_is_given() -> anyhow::Result<()> {
    let served = Served::start().await?;
    let pki = Pki::new()?;
    let proxy = TlsProxy::start(&served.url, pki.server.clone()).await?;
    let tls = ClientTls::with_ca_pem(pki.ca_pem.as_bytes(), "the test CA")?;
    let https = proxy.url.as_str();

    // REST over https: the Environments and Sessions APIs.
    let sessions = SessionsClient::new(https, served.key.clone()).with_tls(&tls);
    let bridge = BridgeApiClient::new(https, served.key.clone()).with_tls(&tls);
    let env = bridge.register_environment(&register_request()).await?;
    let session = sessions
        .create_session(&CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            title: Some("Over TLS".into()),
            ..Default::default()
        })
        .await?;
    let work = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, Some(5_000))
        .await?
        .context("no work after creating a session")?;
    let secret = WorkSecret::decode(&work.secret)?;

    // A v1 worker: wss to read, https POSTs to write.
    let config =
        IngressConfig::new(https, &work.data.id, secret.session_ingress_token).with_tls(&tls);
    let (worker, mut inbound) = IngressTransport::connect(config).await?;
    assert!(worker.ws_url().as_str().starts_with("wss://"));

    // A viewer over wss.
    let config = ViewerConfig::new(https, &session.id, served.key.clone()).with_tls(&tls);
    let (viewer, mut events) = ViewerSocket::connect(config)?;
    assert_eq!(
        recv(&mut events, "the viewer's socket").await?,
        ViewerEvent::Connected
    );

    worker
        .write(vec![json!({
            "type": "assistant", "uuid": "tls-a1",
            "message": {"role": "assistant", "content": [{"type": "text", "text": "over TLS"}]},
        })])
        .await?;
    viewer_message(&mut events, "the worker's message", |m| {
        m["uuid"] == "tls-a1"
    })
    .await?;
    viewer.send_user_message("hello over wss").await?;
    let prompt = recv(&mut inbound, "the viewer's prompt").await?;
    assert_eq!(prompt["message"]["content"], "hello over wss");
    let listed = sessions.list_sessions(None).await?;
    assert!(listed.data.iter().any(|s| s.id == session.id));

    // A v2 worker: an env-less bridge whose SSE stream and uploads go over https.
    let config = BridgeConfig::new(https, served.key.clone(), "Over TLS, v2").with_tls(&tls);
    let (v2, mut v2_inbound) = EnvLessBridge::start(config).await?;
    assert!(v2.session_url().starts_with("https://"));
    let uuid = uuid::Uuid::new_v4().to_string();
    sessions
        .send_events(
            v2.session_id(),
            vec![switchboard_client::viewer::user_message(
                &uuid,
                "hello over sse",
            )],
        )
        .await?;
    let got = recv(&mut v2_inbound, "the prompt over SSE").await?;
    assert_eq!(got["uuid"], uuid.as_str());
    v2.write_messages(vec![json!({
        "type": "assistant", "uuid": "tls-v2-a1",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "v2 over TLS"}]},
    })])?;
    v2.flush().await?;
    v2.teardown().await?;

    viewer.close().await;
    worker.close().await;
    Ok(())
}

#[tokio::test]
async fn without_the_ca_every_client_says_the_certificate_is_not_trusted() -> anyhow::Result<()> {
    let served = Served::start().await?;
    let pki = Pki::new()?;
    let proxy = TlsProxy::start(&served.url, pki.server.clone()).await?;
    let https = proxy.url.as_str();
    // The system's roots alone, which do not hold the test CA.
    let system = ClientTls::system();

    let rest = SessionsClient::new(https, served.key.clone())
        .with_tls(&system)
        .list_sessions(None)
        .await
        .err()
        .context("a REST call must fail without the CA")?;
    let config = IngressConfig::new(https, "cse_abcd", "token").with_tls(&system);
    let mut config = config;
    config.reconnect_budget = Duration::ZERO;
    let ingress = IngressTransport::connect(config)
        .await
        .err()
        .context("the v1 socket must fail without the CA")?;
    let config = ViewerConfig::new(https, "session_abcd", served.key.clone()).with_tls(&system);
    let (_viewer, mut events) = ViewerSocket::connect(config)?;
    let closed = recv(&mut events, "the viewer's end").await?;

    assert!(
        matches!(rest.tls_failure(), Some(TlsFailure::Untrusted(_))),
        "{rest:?}"
    );
    let ingress = ingress.to_string();
    eprintln!("v1 without the CA: {ingress}");
    assert!(
        ingress.contains("the server's certificate is not trusted"),
        "{ingress}"
    );
    match closed {
        ViewerEvent::Closed { reason, .. } => assert!(
            reason.contains("the server's certificate is not trusted"),
            "{reason}"
        ),
        other => anyhow::bail!("expected the viewer to end, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn the_sessions_command_trusts_a_ca_given_by_flag_or_ssl_cert_file() -> anyhow::Result<()> {
    let served = Served::start().await?;
    served
        .sessions()
        .create_session(&CreateSessionRequest {
            title: Some("Listed over TLS".into()),
            ..Default::default()
        })
        .await?;
    let pki = Pki::new()?;
    let proxy = TlsProxy::start(&served.url, pki.server.clone()).await?;
    let files = tempfile::tempdir()?;
    let ca = files.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem)?;
    let key_file = files.path().join("key");
    std::fs::write(&key_file, format!("{}\n", served.key))?;
    let sessions = || {
        let mut command = switchboard();
        command
            .args(["sessions", "--url", &proxy.url, "--token-file"])
            .arg(&key_file)
            .env_remove("SWITCHBOARD_CA_CERT")
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR");
        command
    };

    let with_flag = sessions().arg("--ca-cert").arg(&ca).output().await?;
    let with_env = sessions().env("SSL_CERT_FILE", &ca).output().await?;
    let without = sessions().output().await?;
    let bad_ca = sessions()
        .arg("--ca-cert")
        .arg(files.path().join("missing.pem"))
        .output()
        .await?;

    for out in [&with_flag, &with_env] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("Listed over TLS"), "{stdout}");
    }
    let stderr = String::from_utf8_lossy(&without.stderr);
    eprintln!("without the CA: {stderr}");
    assert!(!without.status.success());
    assert!(
        stderr.contains("the server's certificate is not trusted"),
        "{stderr}"
    );
    assert!(stderr.contains("--ca-cert"), "{stderr}");
    assert!(!stderr.contains("cannot reach"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let stderr = String::from_utf8_lossy(&bad_ca.stderr);
    assert!(!bad_ca.status.success());
    assert!(
        stderr.contains("cannot read the CA certificate file"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_token_file_is_read_and_an_unreadable_one_is_a_clear_error() -> anyhow::Result<()> {
    let served = Served::start().await?;
    let files = tempfile::tempdir()?;
    let key_file = files.path().join("key");
    std::fs::write(&key_file, format!("{}\n", served.key))?;

    let listed = switchboard()
        .args(["sessions", "--url", &served.url, "--token-file"])
        .arg(&key_file)
        .output()
        .await?;
    let missing = switchboard()
        .args(["sessions", "--url", &served.url, "--token-file"])
        .arg(files.path().join("absent"))
        .output()
        .await?;

    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(stderr.contains("cannot read the API key file"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    Ok(())
}
