//! TLS with rustls: the server's certificate and key (PEM files). (The client's trust is in
//! the machat-client crate.)
//!
//! Loading happens at start-up, so a missing file or a key that does not match the
//! certificate stops the start with the file's name and the reason, rather than failing every
//! handshake later. A reload (SIGHUP) loads the files again the same way and, only if they
//! load, swaps them in ([`Certificates`]): certificates are renewed without a restart, new
//! connections get the new one and open ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
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

/// The certificate and key every new TLS session is offered: read once per handshake, swapped
/// by [`Certificates::reload`].
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

impl Certificates {
    /// Loads `cert` and `key` again and offers them from now on; on an error the ones in use
    /// stay.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let loaded = Arc::new(certified_key(cert, key)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }
}

/// A certificate chain and its private key, checked to fit together.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
        path: key.to_owned(),
        source,
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsError::KeyMismatch {
        cert: cert.to_owned(),
        source,
    })
}

/// The server side: a certificate chain and its private key, and the handle that renews them.
pub fn acceptor(cert: &Path, key: &Path) -> Result<(TlsAcceptor, Arc<Certificates>), TlsError> {
    let certificates = Arc::new(Certificates {
        current: RwLock::new(Arc::new(certified_key(cert, key)?)),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    // The chat has one protocol; HTTP/1.1 for the web side is negotiated by the client.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), certificates))
}
