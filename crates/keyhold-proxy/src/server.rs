//! Listeners and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{ConfigError, ProxyConfig};
use crate::registry::RegistryError;
use crate::{AppState, api};
use keyhold_listen::{Bounded, ConnectionLimits, Listener, TlsConfig, TlsError};

/// Why the proxy could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The tenants or their KMS configurations could not be set up.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The broker settings are unusable (keys, token).
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    /// The audit spool could not be opened.
    #[error(transparent)]
    Audit(keyhold_audit::SpoolError),
    /// The audit signing key could not be read or made.
    #[error(transparent)]
    AuditKey(keyhold_audit::checkpoint::KeyError),
    /// The TLS settings are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An audit sink could not be set up (its name, and why).
    #[error("audit sink {0:?}: {1}")]
    AuditSink(String, String),
    /// A listener could not be bound or failed.
    #[error("listener {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A proxy with its listeners bound, ready to [`run`](Proxy::run).
#[derive(Debug)]
pub struct Proxy {
    state: AppState,
    /// Most connections open at once per listener, and how long one may be silent.
    limits: ConnectionLimits,
    listener: TcpListener,
    /// TLS for the API listener, if configured: its settings (paths resolved) and what they
    /// gave at start.
    tls: Option<(TlsConfig, Arc<rustls::ServerConfig>)>,
    admin_listener: Option<TcpListener>,
}

impl Proxy {
    /// Builds the state and binds the listeners (port 0 picks a free port).
    pub async fn bind(config: &ProxyConfig) -> Result<Self, ProxyError> {
        // Unusable certificates stop the start before anything else is set up.
        let tls = match &config.tls {
            Some(tls) => {
                let settings = tls.resolved(|p| config.resolve(p));
                let initial = settings.server_config()?;
                Some((settings, initial))
            }
            None => None,
        };
        let state = AppState::from_config(config).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ProxyError::Listen { addr: config.listen, source })?;
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ProxyError::Listen { addr, source })?,
            ),
            None => None,
        };
        Ok(Self {
            state,
            limits: config.connection_limits().map_err(ConfigError::Invalid)?,
            listener,
            tls,
            admin_listener,
        })
    }

    /// The API listener's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state (metrics, health), e.g. for tests.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops accepting, finishes requests in flight and
    /// returns. `/health` and `/ready` report unavailable from the moment shutdown begins.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ProxyError> {
        let Self { state, limits, listener, tls, admin_listener } = self;
        let api_addr = listener.local_addr().map_err(|source| ProxyError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let health = Arc::clone(&state.health);
        let metrics = Arc::clone(&state.metrics);
        tokio::spawn(async move {
            shutdown.await;
            health.set_ready(false);
            metrics.ready.set(0);
            tracing::info!("shutting down: finishing requests in flight");
            let _ = stop_tx.send(true);
        });

        let admin = admin_listener.map(|l| {
            let router = api::admin_router(state.clone());
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                axum::serve(limits.bound(l), router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            })
        });

        let app = api::app(state.clone(), admin.is_none());
        state.health.set_ready(true);
        state.metrics.ready.set(1);
        let counters = keyhold_listen::TlsCounters {
            handshake_failures: state.metrics.tls_handshake_failures.clone(),
            reloads: state.metrics.tls_reloads.clone(),
            reload_failures: state.metrics.tls_reload_failures.clone(),
        };
        let listener = Listener::new(listener, tls, counters)
            .map_err(|source| ProxyError::Listen { addr: api_addr, source })?;
        keyhold_listen::warn_if_plain_on_a_network(
            &listener,
            "API keys and unwrapped data keys",
            "docs/configuration.md §2.7",
        );
        tracing::info!(
            %api_addr,
            tls = listener.is_tls(),
            tenants = state.service.registry().len(),
            "Keyhold proxy ready"
        );
        let served = serve(limits.bound(listener), app, stop_rx).await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        // Requests are done, and so are their audit events: sign, deliver, close.
        state.service.finish_audit(std::time::Duration::from_secs(3)).await;
        served.map_err(|source| ProxyError::Listen { addr: api_addr, source })
    }
}

/// Serves `app` on `listener` until `stop` turns true, then finishes the requests in flight.
async fn serve(
    listener: Bounded<Listener>,
    app: api::App,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(app))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
