//! Starting and stopping the broker: configuration → store, keys, listener; graceful shutdown
//! (long polls end at once, then in-flight requests finish).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use keyhold_listen::{ConnectionLimits, Listener, TlsConfig, TlsCounters};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{AppParts, AppState, app};
use crate::config::{BrokerConfig, load_or_create_signing_key, read_bearer_key};
use crate::error::BrokerError;
use crate::snapshot::Snapshots;
use crate::store::Store;

/// A broker bound to its address, ready to [`run`](Broker::run).
#[derive(Debug)]
pub struct Broker {
    listener: TcpListener,
    /// TLS, if configured: its settings and what they gave at start.
    tls: Option<(TlsConfig, Arc<rustls::ServerConfig>)>,
    limits: ConnectionLimits,
    state: AppState,
    shutdown: watch::Sender<bool>,
}

impl Broker {
    /// Reads the keys (creating the signing key if missing) and the TLS files, connects to and
    /// migrates the database, and binds the listener.
    pub async fn bind(config: &BrokerConfig) -> Result<Self, BrokerError> {
        let limits = config.connection_limits()?;
        // Unusable certificates stop the start before anything else is set up.
        let tls = match &config.tls {
            Some(settings) => Some((settings.clone(), settings.server_config()?)),
            None => None,
        };
        let vendor_key = read_bearer_key(&config.vendor_api_key_file, "the vendor API key")?;
        let proxy_token = read_bearer_key(&config.proxy_token_file, "the proxy token")?;
        let fleet_keys = config.fleet_keys()?;
        let signing_key = load_or_create_signing_key(&config.signing_key_file)?;
        let store = Store::connect(&config.effective_database_url())
            .await?
            .with_fleet_key_ids(fleet_keys.iter().map(|k| k.key_id()).collect());
        let listener = TcpListener::bind(config.listen).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let state = AppState::new(AppParts {
            snapshots: Snapshots::new(store.clone(), signing_key),
            store,
            vendor_key,
            proxy_token,
            fleet_keys,
            max_body_bytes: config.max_body_bytes,
            secure_cookies: config.effective_secure_cookies(),
            vendor_key_on_create: config.vendor_key_on_create,
            shutdown: shutdown_rx,
        });
        Ok(Self { listener, tls, limits, state, shutdown })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, BrokerError> {
        Ok(self.listener.local_addr()?)
    }

    /// The store (for `keyhold up` to seed it before serving).
    pub fn store(&self) -> &Store {
        self.state.store()
    }

    /// Serves until `shutdown` completes, then ends long polls and waits for the requests in
    /// flight.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BrokerError> {
        let Self { listener, tls, limits, state, shutdown: stop } = self;
        let store = state.store().clone();
        let addr = listener.local_addr()?;
        let listener = Listener::new(listener, tls, TlsCounters::default())?;
        keyhold_listen::warn_if_plain_on_a_network(
            &listener,
            "passwords, session cookies, the vendor API key and the proxy token",
            "docs/broker.md",
        );
        tracing::info!(%addr, tls = listener.is_tls(), "broker listening");
        let router = app(state);
        axum::serve(limits.bound(listener), router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stop.send_replace(true);
                tracing::info!("broker shutting down");
            })
            .await?;
        store.close().await;
        Ok(())
    }
}
