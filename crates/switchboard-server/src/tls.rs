//! TLS termination: the certificate chain and key from PEM files, reloaded without a
//! restart when either file changes.
//!
//! Every new connection compares the files' modification time, length and inode with those of
//! the loaded pair (two `stat` calls) and loads them again when they differ. A pair that
//! does not load (half-written, mismatched, not PEM) keeps the previous certificate in
//! service and logs a warning once per change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The PEM files the server's certificate chain and private key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Modification time, length and inode of a file (a file renamed over the old one is
/// a new inode even within the file system's clock tick), `None` when it is missing.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}

/// The loaded certificate, and the files to watch.
pub(crate) struct Tls {
    files: TlsFiles,
    loaded: Mutex<Loaded>,
}

struct Loaded {
    stamps: (Stamp, Stamp),
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Loads the pair; an error when it does not load (the server does not start).
    pub(crate) fn load(files: TlsFiles) -> anyhow::Result<Self> {
        let stamps = (stamp(&files.cert), stamp(&files.key));
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&files)?));
        Ok(Self {
            files,
            loaded: Mutex::new(Loaded { stamps, acceptor }),
        })
    }

    /// The acceptor for a new connection, after reloading the files if they changed.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let stamps = (stamp(&self.files.cert), stamp(&self.files.key));
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if stamps != loaded.stamps {
            // Remembered even when the load fails, so a bad file warns once, not on
            // every connection; the next change to either file is tried again.
            loaded.stamps = stamps;
            match server_config(&self.files) {
                Ok(config) => {
                    loaded.acceptor = TlsAcceptor::from(Arc::new(config));
                    tracing::info!(cert = %self.files.cert.display(), "reloaded the TLS certificate");
                }
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "the changed TLS certificate or key does not load; still serving the previous one"
                ),
            }
        }
        loaded.acceptor.clone()
    }
}

/// A rustls server configuration for the pair: HTTP/1.1 only (WebSocket upgrades need it).
fn server_config(files: &TlsFiles) -> anyhow::Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", files.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read a private key from {}", files.key.display()))?;
    // ring, not aws-lc-rs: no cmake/NASM in the build. rustls 0.23.48 deprecates it
    // for lacking post-quantum key exchange; the classical suites it offers are sound.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the key in {} does not fit the certificate in {}",
                files.key.display(),
                files.cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
