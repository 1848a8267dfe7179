//! TLS for every client of this crate: the REST clients (over reqwest), the viewer and v1
//! ingress WebSockets and the v2 SSE stream all speak `https` and `wss` with rustls, and
//! all of them trust the same roots, held by one [`ClientTls`].
//!
//! The roots are the system's (what `rustls-native-certs` finds: the platform store, or
//! the bundle named by `SSL_CERT_FILE` / `SSL_CERT_DIR`, which replace it as they do for
//! OpenSSL), plus any private CA a program adds with [`ClientTls::with_ca_file`] or
//! [`ClientTls::with_ca_pem`] — how a self-hosted server behind a private CA, or a
//! reverse proxy with one, is reached.
//!
//! Every constructor in this crate (`SessionsClient::new`, `IngressConfig::new`,
//! `ViewerConfig::new`, `WorkerConfig::new`, …) starts from [`ClientTls::default`]: the
//! one a program installed with [`ClientTls::install_default`], else the system roots.
//! A program with one trust setting (the `switchboard` CLI and its `--ca-cert`) installs
//! it once at start; one that needs several passes them with each client's `with_tls`.
//!
//! A failed handshake is told apart from an unreachable server: [`tls_failure_in`] finds
//! a rustls error in an error's chain, and
//! [`ApiError::tls_failure`](crate::ApiError::tls_failure) does it for a failed call.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use tokio_tungstenite::tungstenite;

/// The roots a client trusts and the HTTP client built on them.
///
/// Cheap to clone; clones share the rustls configuration and reqwest's connection pool.
///
/// ```no_run
/// # fn demo() -> Result<(), switchboard_client::TlsError> {
/// use switchboard_client::{ClientTls, SessionsClient};
///
/// let tls = ClientTls::with_ca_file("/etc/switchboard/ca.pem")?;
/// let client = SessionsClient::new("https://switchboard.internal", "sk-my-api-key")
///     .with_tls(&tls);
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<rustls::ClientConfig>,
    http: reqwest::Client,
    /// How many certificates were added to the system's roots.
    extra_roots: usize,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("extra_roots", &self.inner.extra_roots)
            .finish_non_exhaustive()
    }
}

/// Why a private CA could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The CA file could not be read.
    #[error("cannot read the CA certificate file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA text holds no certificate, or a broken one.
    #[error("{what} is not a PEM certificate: {message}")]
    Pem {
        /// Where the text came from.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificate as a trust anchor.
    #[error("{what} cannot be used as a CA: {message}")]
    Refused {
        /// Where the certificate came from.
        what: String,
        /// What rustls said.
        message: String,
    },
    /// The TLS configuration or the HTTP client could not be built.
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// The installed default, if any.
static INSTALLED: RwLock<Option<ClientTls>> = RwLock::new(None);

/// The system roots as loaded once: loading parses a bundle of a few hundred KiB.
static SYSTEM_ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();

/// The client on the system roots alone, built once.
static SYSTEM: OnceLock<ClientTls> = OnceLock::new();

impl Default for ClientTls {
    /// The default installed with [`install_default`](Self::install_default), else
    /// [`system`](Self::system).
    fn default() -> Self {
        let installed = INSTALLED
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        installed.unwrap_or_else(Self::system)
    }
}

impl ClientTls {
    /// The system's roots alone. Built once per process; later calls share it.
    pub fn system() -> Self {
        SYSTEM
            .get_or_init(|| match Self::build(Vec::new()) {
                Ok(tls) => tls,
                Err(e) => {
                    // Building on the system roots has nothing to fail on but the HTTP
                    // client itself; without one nothing can connect, which every call
                    // will report.
                    tracing::error!(error = %e, "cannot set up TLS on the system roots");
                    Self::from_parts(system_config(Vec::new()), reqwest::Client::new(), 0)
                }
            })
            .clone()
    }

    /// The system's roots plus every certificate in the PEM file at `path` (a private
    /// CA, or several).
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::with_ca_pem(&pem, &format!("the CA certificate file {}", path.display()))
    }

    /// The system's roots plus every certificate in `pem`; `what` names the text in
    /// errors (e.g. the file it came from).
    pub fn with_ca_pem(pem: &[u8], what: &str) -> Result<Self, TlsError> {
        let certificates = parse_pem(pem, what)?;
        let mut check = rustls::RootCertStore::empty();
        for certificate in &certificates {
            check
                .add(certificate.clone())
                .map_err(|e| TlsError::Refused {
                    what: what.to_owned(),
                    message: e.to_string(),
                })?;
        }
        Self::build(certificates)
    }

    /// Makes this the [`Default`] every constructor of this crate starts from, for the
    /// rest of the process.
    pub fn install_default(&self) {
        *INSTALLED.write().unwrap_or_else(PoisonError::into_inner) = Some(self.clone());
    }

    /// An HTTP client that trusts these roots. Clones share one connection pool.
    pub fn http_client(&self) -> reqwest::Client {
        self.inner.http.clone()
    }

    /// How many certificates were added to the system's roots.
    pub fn extra_roots(&self) -> usize {
        self.inner.extra_roots
    }

    /// The connector a WebSocket opens `wss` connections with.
    pub(crate) fn connector(&self) -> tokio_tungstenite::Connector {
        tokio_tungstenite::Connector::Rustls(self.inner.config.clone())
    }

    fn build(extra: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        let extra_roots = extra.len();
        let config = system_config(extra);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*config).clone())
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        Ok(Self::from_parts(config, http, extra_roots))
    }

    fn from_parts(
        config: Arc<rustls::ClientConfig>,
        http: reqwest::Client,
        extra_roots: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                http,
                extra_roots,
            }),
        }
    }
}

/// Every certificate in a PEM text; at least one.
fn parse_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_owned(),
            message: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_owned(),
            message: "no \"BEGIN CERTIFICATE\" block found".to_owned(),
        });
    }
    Ok(certificates)
}

/// A rustls client configuration that trusts the system roots plus `extra`.
fn system_config(extra: Vec<CertificateDer<'static>>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let system = SYSTEM_ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::debug!(%error, "a system root certificate could not be loaded");
        }
        loaded.certs
    });
    // Platform stores often hold a few certificates rustls cannot parse; they are skipped.
    let (added, ignored) = roots.add_parsable_certificates(system.iter().cloned());
    tracing::debug!(added, ignored, "system root certificates");
    // The extra roots were checked by the caller.
    roots.add_parsable_certificates(extra);
    // ring is named explicitly, so that this works whichever providers other crates in
    // the process enable (rustls refuses to pick one when there are several). It is the
    // provider reqwest's rustls features build on; rustls 0.23.48 deprecated its default
    // only because it lacks the post-quantum key exchange, which aws-lc-rs would bring
    // at the price of a C toolchain build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring implements the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS handshake that failed, as a person should hear about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's certificate was not accepted: its issuer is unknown (a private CA
    /// that was not given), it expired, or it does not name the host.
    Untrusted(String),
    /// The handshake failed otherwise, e.g. the server does not speak TLS on that port.
    Handshake(String),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Untrusted(detail) => {
                write!(f, "the server's certificate is not trusted: {detail}")
            }
            Self::Handshake(detail) => write!(f, "the TLS handshake failed: {detail}"),
        }
    }
}

/// The TLS failure somewhere in `error`'s chain of causes, if there is one.
///
/// rustls reports a failed handshake inside an `io::Error`, whose `source()` skips the
/// error it wraps, so each I/O error on the way is opened too.
pub fn tls_failure_in(error: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(failure) = as_tls_failure(error) {
            return Some(failure);
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if let Some(failure) = io.get_ref().and_then(|inner| tls_failure_in(inner)) {
                return Some(failure);
            }
        }
        if let Some(tungstenite::Error::Tls(tungstenite::error::TlsError::Rustls(e))) =
            error.downcast_ref::<tungstenite::Error>()
        {
            return Some(classify(e));
        }
        next = error.source();
    }
    None
}

fn as_tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    error.downcast_ref::<rustls::Error>().map(classify)
}

fn classify(error: &rustls::Error) -> TlsFailure {
    match error {
        rustls::Error::InvalidCertificate(e) => TlsFailure::Untrusted(describe_certificate(e)),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            TlsFailure::Handshake(format!(
                "{error} (does the server speak TLS on that port? an http:// URL is for a \
                 server without TLS)"
            ))
        }
        other => TlsFailure::Handshake(other.to_string()),
    }
}

fn describe_certificate(error: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match error {
        E::UnknownIssuer => "it was issued by an unknown certificate authority".to_owned(),
        E::Expired | E::ExpiredContext { .. } => "it has expired".to_owned(),
        E::NotValidYet | E::NotValidYetContext { .. } => "it is not valid yet".to_owned(),
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            format!("it does not name this host ({error})")
        }
        E::Revoked => "it was revoked".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_an_empty_file_and_garbage_are_clear_errors() {
        let missing = ClientTls::with_ca_file("/nonexistent/ca.pem").unwrap_err();
        let empty = ClientTls::with_ca_pem(b"", "the test text").unwrap_err();
        let garbage = ClientTls::with_ca_pem(
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            "the test text",
        )
        .unwrap_err();

        assert!(
            missing
                .to_string()
                .starts_with("cannot read the CA certificate file /nonexistent/ca.pem"),
            "{missing}"
        );
        assert!(
            empty.to_string().contains("no \"BEGIN CERTIFICATE\" block"),
            "{empty}"
        );
        assert!(
            garbage
                .to_string()
                .starts_with("the test text is not a PEM certificate"),
            "{garbage}"
        );
    }

    #[test]
    fn certificate_errors_read_as_untrusted_inside_io_errors() {
        let rustls_error =
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error);
        let outer = std::io::Error::other(io);

        let failure = tls_failure_in(&outer);

        assert!(
            matches!(&failure, Some(TlsFailure::Untrusted(_))),
            "{failure:?}"
        );
        let text = failure.map(|f| f.to_string()).unwrap_or_default();
        assert!(
            text.starts_with("the server's certificate is not trusted"),
            "{text}"
        );
        assert_eq!(
            tls_failure_in(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            None
        );
    }

    #[test]
    fn the_default_is_the_installed_one() {
        let before = ClientTls::default();
        assert_eq!(before.extra_roots(), 0);
        // Installing is process-wide; this test module is the only one that does it, and
        // it puts the system default back.
        let system = ClientTls::system();
        system.install_default();
        assert!(Arc::ptr_eq(&ClientTls::default().inner, &system.inner));
    }
}
