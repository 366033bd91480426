//! TLS on a listener (rustls with aws-lc-rs).
//!
//! The proxy answers an unwrap with a data key in the clear and every request carries its API
//! key; the broker's requests carry passwords, session cookies and the vendor's API key: a
//! client that reaches either over a network needs TLS. With `client_ca_file` the server also
//! asks each client for a certificate signed by that CA (mutual TLS), so that holding a key or
//! a password is not enough to call it.
//!
//! Handshakes run in tasks of their own, each bounded in time, and at most
//! [`MAX_HANDSHAKES`] at once (counting the handshaken connections the server has not taken
//! yet): a client that connects and sends nothing holds one slot for [`HANDSHAKE_TIMEOUT`], and
//! never holds up the others.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};
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

fn default_reload_interval_ms() -> u64 {
    60_000
}

/// `[tls]`: the listener's certificate, and optionally the CA its clients' certificates must
/// chain to (docs/configuration.md §2.7 for the proxy, docs/broker.md for the broker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the server's certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// PEM file: its private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// PEM file of CA certificates: when set, every client must present a certificate that
    /// chains to one of them (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for a change, in milliseconds; a changed set is loaded
    /// for new connections without a restart (a renewed certificate). 0: read once, at start.
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

/// The size and modification time of each file, to notice that one changed.
type Stamp = Vec<Option<(u64, std::time::SystemTime)>>;

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
    /// The same settings with each path resolved by `resolve` (relative paths are relative to
    /// the configuration file).
    pub fn resolved(&self, resolve: impl Fn(&Path) -> PathBuf) -> Self {
        Self {
            cert_file: resolve(&self.cert_file),
            key_file: resolve(&self.key_file),
            client_ca_file: self.client_ca_file.as_deref().map(&resolve),
            reload_interval_ms: self.reload_interval_ms,
        }
    }

    /// The rustls server configuration from the files as they are now. Offers HTTP/2 and
    /// HTTP/1.1 by ALPN.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let read = |setting: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                setting,
                path: path.to_owned(),
                source,
            })
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

    fn stamp(&self) -> Stamp {
        let files = [Some(&self.cert_file), Some(&self.key_file), self.client_ca_file.as_ref()];
        files
            .into_iter()
            .flatten()
            .map(|path| {
                let meta = std::fs::metadata(path).ok()?;
                Some((meta.len(), meta.modified().ok()?))
            })
            .collect()
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

/// What the listener counts (handles into the server's metrics; unregistered counters where
/// there are none).
#[derive(Debug, Clone, Default)]
pub struct TlsCounters {
    /// Handshakes that failed or timed out.
    pub handshake_failures: Counter,
    /// Changed files loaded.
    pub reloads: Counter,
    /// Changed files that could not be used.
    pub reload_failures: Counter,
}

/// A listener that hands the server only connections whose TLS handshake has completed.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TlsListener {
    /// Accepts on `listener` and handshakes with `initial` (made from `settings`, whose paths
    /// are resolved), from now until dropped; every `reload_interval_ms`, loads the files again
    /// if they changed.
    pub fn new(
        listener: TcpListener,
        settings: TlsConfig,
        initial: Arc<rustls::ServerConfig>,
        counters: TlsCounters,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let current = Arc::new(arc_swap::ArcSwap::new(initial));
        let failures = counters.handshake_failures.clone();
        let mut tasks =
            vec![tokio::spawn(accept_loop(listener, Arc::clone(&current), tx, failures))];
        if settings.reload_interval_ms > 0 {
            tasks.push(tokio::spawn(reload_loop(settings, current, counters)));
        }
        Ok(Self { ready, local_addr, tasks })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stops accepting (graceful shutdown drops the listener); handshakes in progress end
        // when they find no one to hand their connection to.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Loads the TLS files again whenever they change. A set that cannot be used (a renewal caught
/// half-written, a key that does not match) leaves the previous one serving and is tried again
/// at the next check.
async fn reload_loop(
    settings: TlsConfig,
    current: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    counters: TlsCounters,
) {
    let every = Duration::from_millis(settings.reload_interval_ms);
    let settings = Arc::new(settings);
    let mut loaded = settings.stamp();
    let mut refused: Option<Stamp> = None;
    loop {
        tokio::time::sleep(every).await;
        let check = Arc::clone(&settings);
        let unchanged = loaded.clone();
        // Files are read off the async workers; unchanged ones are not read at all.
        let Ok((stamp, Some(result))) = tokio::task::spawn_blocking(move || {
            let stamp = check.stamp();
            let result = (stamp != unchanged).then(|| check.server_config());
            (stamp, result)
        })
        .await
        else {
            continue;
        };
        match result {
            Ok(config) => {
                current.store(config);
                counters.reloads.inc();
                loaded = stamp;
                refused = None;
                tracing::info!("TLS files changed: new connections use them");
            }
            Err(e) => {
                if refused.as_ref() != Some(&stamp) {
                    counters.reload_failures.inc();
                    tracing::warn!(error = %e, "TLS files changed but cannot be used; the previous certificate goes on serving");
                    refused = Some(stamp);
                }
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    current: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    handshake_failures: Counter,
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
        let acceptor = TlsAcceptor::from(current.load_full());
        let ready = ready.clone();
        let failures = handshake_failures.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            match handshake {
                Ok(Ok(tls)) => {
                    // The slot is held until the server takes the connection: while it is at
                    // max_connections, at most MAX_HANDSHAKES connections wait here, and no
                    // more are accepted.
                    let _ = ready.send((tls, peer)).await;
                    drop(slot);
                }
                // DEBUG only: anything that can reach the port can make a handshake fail.
                Ok(Err(e)) => {
                    failures.inc();
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    failures.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
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
