//! Listeners, background tasks and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{ConfigError, ProxyConfig};
use crate::registry::RegistryError;
use crate::{AppState, api};

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
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    keystore_reload: Option<Duration>,
}

impl Proxy {
    /// Builds the state and binds the listeners (port 0 picks a free port).
    pub async fn bind(config: &ProxyConfig) -> Result<Self, ProxyError> {
        let state = AppState::from_config(config)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ProxyError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ProxyError::Listen { addr, source })?,
            ),
            None => None,
        };
        let keystore_reload = config
            .local_keystore
            .as_ref()
            .map(|ks| Duration::from_millis(ks.reload_interval_ms.max(100)));
        Ok(Self {
            state,
            listener,
            admin_listener,
            keystore_reload,
        })
    }

    /// The API listener's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
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
        let Self {
            state,
            listener,
            admin_listener,
            keystore_reload,
        } = self;
        let api_addr = listener.local_addr().map_err(|source| ProxyError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let mut background = Vec::new();
        if let (Some(every), Some(keystore)) =
            (keystore_reload, state.service.registry().keystore())
        {
            background.push(tokio::spawn(reload_keystore(Arc::clone(keystore), every)));
        }

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
                axum::serve(l, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            })
        });

        let router = api::router(state.clone(), admin.is_none());
        state.health.set_ready(true);
        state.metrics.ready.set(1);
        tracing::info!(%api_addr, tenants = state.service.registry().len(), "Keyhold proxy ready");
        let mut stop = stop_rx;
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        for task in background {
            task.abort();
        }
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        served.map_err(|source| ProxyError::Listen {
            addr: api_addr,
            source,
        })
    }
}

/// Picks up changes `keyhold keys` made to the keystore file (rotation, disable, enable).
async fn reload_keystore(keystore: Arc<keyhold_kms::local::Keystore>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ks = Arc::clone(&keystore);
        match tokio::task::spawn_blocking(move || ks.reload_if_changed()).await {
            Ok(Ok(true)) => {
                tracing::info!(path = %keystore.path().display(), "keystore changed; reloaded")
            }
            Ok(Ok(false)) => {}
            // Keep serving from the last good state; a half-written file is never read thanks to
            // atomic renames, so an error here is a real problem worth a warning every interval.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "keystore reload failed; keeping the previous keys")
            }
            Err(e) => tracing::warn!(error = %e, "keystore reload task failed"),
        }
    }
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
