//! TLS on the TCP listener, driven by us rather than by tonic so the
//! certificate, key and client CA can be re-read on SIGHUP without a
//! restart: [`ReloadableTls`] holds the current rustls acceptor (ring
//! provider, TLS 1.2 and 1.3, ALPN h2) and [`handshake`] is what the accept
//! loop (`accept.rs`: connection cap, handshake deadline) runs on each new
//! connection. With a client CA, every client must present a certificate
//! it signed (mTLS).
//!
//! Does not: authenticate callers (API keys still apply over mTLS; see
//! `auth.rs`) or log anything about certificates but file names.

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::GrpcConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {}: {message}", .path.display())]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Which files make up the TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// `None` when TLS is off (no certificate configured).
    pub fn from_config(g: &GrpcConfig) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: g.tls_cert_file.clone()?,
            key: g.tls_key_file.clone()?,
            client_ca: g.tls_client_ca_file.clone(),
        })
    }
}

/// The current acceptor; replaced whole on reload. New connections use the
/// new certificate, established ones keep theirs.
pub struct ReloadableTls {
    acceptor: RwLock<TlsAcceptor>,
}

impl ReloadableTls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            acceptor: RwLock::new(TlsAcceptor::from(Arc::new(server_config(files)?))),
        })
    }

    /// Re-reads the files; on any error the running configuration stays.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(files)?));
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            message: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_owned(),
            message: "holds no PEM certificate".into(),
        });
    }
    Ok(certs)
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = certs(&files.cert)?;
    let key_pem = zeroize::Zeroizing::new(read(&files.key)?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::File {
        path: files.key.clone(),
        message: format!("no usable PEM private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(ca)? {
                roots.add(cert).map_err(|e| TlsError::File {
                    path: ca.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The TLS handshake for [`super::accept::incoming`], with the acceptor
/// current when the connection came in (a reload applies to the next one).
/// The accept loop bounds it in time and in number.
pub fn handshake(
    tls: Arc<ReloadableTls>,
) -> impl Fn(TcpStream) -> tokio_rustls::Accept<TcpStream> + Send + 'static {
    move |tcp| tls.acceptor().accept(tcp)
}
