//! TLS on the TCP listener, driven by us rather than by tonic so the
//! certificate, key and client CA can be re-read on SIGHUP without a
//! restart: [`ReloadableTls`] holds the current rustls acceptor (ring
//! provider, TLS 1.2 and 1.3, ALPN h2) and [`incoming`] turns a TCP listener
//! into a stream of handshaken connections for tonic. With a client CA,
//! every client must present a certificate it signed (mTLS).
//!
//! Handshakes run concurrently (a slow client cannot stall accepting), each
//! bounded in time; at most [`MAX_PENDING_HANDSHAKES`] at once.
//!
//! Does not: authenticate callers (API keys still apply over mTLS; see
//! `auth.rs`) or log anything about certificates but file names.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::Stream;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::GrpcConfig;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted but not yet through their handshake; more are
/// closed at once (a flood of idle connections cannot pile up tasks).
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

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

type Handshake = Option<TlsStream<TcpStream>>;

/// Accepts TCP connections and yields those whose TLS handshake succeeded.
/// Failed handshakes are logged at debug and dropped; accept errors (e.g.
/// out of file descriptors) are logged and retried after a pause.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadableTls>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send + 'static {
    let state = (listener, JoinSet::<Handshake>::new(), tls);
    futures::stream::unfold(state, |(listener, mut pending, tls)| async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        if pending.len() >= MAX_PENDING_HANDSHAKES {
                            tracing::warn!(%peer, "too many TLS handshakes in progress; connection closed");
                            continue;
                        }
                        let _ = tcp.set_nodelay(true);
                        let acceptor = tls.acceptor();
                        pending.spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => Some(stream),
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = pending.join_next(), if !pending.is_empty() => {
                    if let Ok(Some(stream)) = done {
                        return Some((Ok(stream), (listener, pending, tls)));
                    }
                }
            }
        }
    })
}
