//! TLS with rustls: the server's certificate and key (PEM files). (The client's trust is in
//! the machat-client crate.)
//!
//! Loading happens once at start-up, so a missing file or a key that does not match the
//! certificate stops the start with the file's name and the reason, rather than failing every
//! handshake later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// Why the certificate or key cannot be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {source}")]
    ReadCertificates {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("bad certificate PEM in {path}: {source}")]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("no certificate found in {path}")]
    NoCertificate { path: PathBuf },
    #[error("cannot read a private key from {path}: {source}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("tls: {0}")]
    Setup(#[source] rustls::Error),
    #[error("the key does not fit the certificate ({cert}): {source}")]
    KeyMismatch {
        cert: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|source| TlsError::ReadCertificates {
            path: path.to_owned(),
            source,
        })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::BadCertificate {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The server side: a certificate chain and its private key.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
        path: key.to_owned(),
        source,
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::KeyMismatch {
            cert: cert.to_owned(),
            source,
        })?;
    // The chat has one protocol; HTTP/1.1 for the web side is negotiated by the client.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
