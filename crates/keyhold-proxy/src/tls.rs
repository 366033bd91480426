//! TLS on the API listener (rustls with aws-lc-rs).
//!
//! An unwrap answers with a data key in the clear, and every request carries the API key: a
//! client that reaches the proxy over a network needs TLS. With `client_ca_file` the proxy also
//! asks each client for a certificate signed by that CA (mutual TLS), so that holding the API
//! key is not enough to call it.
//!
//! Handshakes run in tasks of their own, each bounded in time, and at most
//! [`MAX_HANDSHAKES`] at once: a client that connects and sends nothing holds one slot for
//! [`HANDSHAKE_TIMEOUT`], and never holds up the others.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Longest a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 1024;
/// Handshaken connections waiting for the server to take them.
const READY_QUEUE: usize = 128;

/// `[tls]`: the API listener's certificate, and optionally the CA its clients' certificates must
/// chain to (docs/configuration.md §2.7).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the proxy's certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// PEM file: its private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// PEM file of CA certificates: when set, every client must present a certificate that
    /// chains to one of them (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("[tls] {setting} {path}: {source}")]
    Read {
        /// The setting naming it.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file's contents are not usable.
    #[error("[tls] {0}")]
    Invalid(String),
}

impl TlsConfig {
    /// The rustls server configuration, with paths resolved by `resolve` (relative to the
    /// configuration file). Offers HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_config(
        &self,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let read = |setting: &'static str, path: &Path| {
            let path = resolve(path);
            std::fs::read(&path).map_err(|source| TlsError::Read { setting, path, source })
        };
        let chain = certificates("cert_file", &read("cert_file", &self.cert_file)?)?;
        let key_pem = zeroize::Zeroizing::new(read("key_file", &self.key_file)?);
        // The parser's error could quote the key: say only that it is unusable.
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
            TlsError::Invalid("key_file is not a PEM private key (PKCS#8, SEC1 or PKCS#1)".into())
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Invalid(format!("TLS set-up: {e}")))?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certificates("client_ca_file", &read("client_ca_file", path)?)? {
                    roots.add(cert).map_err(|e| {
                        TlsError::Invalid(format!("client_ca_file: unusable certificate: {e}"))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::Invalid(format!("client_ca_file: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            TlsError::Invalid(format!("cert_file and key_file do not make a usable pair: {e}"))
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Every certificate of a PEM file; an error if there is none.
fn certificates(setting: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{setting} is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Invalid(format!("{setting} holds no certificate")));
    }
    Ok(chain)
}

/// A listener that hands the server only connections whose TLS handshake has completed.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `listener` and handshakes with `config`, from now until dropped.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accepting = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(Self { ready, local_addr, accepting })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stops accepting (graceful shutdown drops the listener); handshakes in progress end
        // when they find no one to hand their connection to.
        self.accepting.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin (as axum does).
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // TLS writes a record per flush: without this, Nagle's algorithm could hold a
        // response's last record back until the client acknowledges the previous one.
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(slot);
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop never ends while the listener lives (it is aborted on drop).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
