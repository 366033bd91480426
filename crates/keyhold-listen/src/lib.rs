//! # keyhold-listen
//!
//! The listeners of Keyhold's HTTP servers, the proxy's API and the broker: what they accept
//! before axum sees a connection.
//!
//! | module | job |
//! |---|---|
//! | [`tls`] | TLS and mutual TLS (rustls, aws-lc-rs), handshakes off the accept path, certificate reload |
//! | [`connections`] | at most `max_connections` open at once, each closed after `idle_timeout_ms` of silence or a request sent over longer than `request_timeout_ms` |
//!
//! [`Listener`] is either a plain TCP listener or a TLS one, so that a server is written once
//! for both: `axum::serve(limits.bound(listener), app)`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod connections;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

pub use connections::{Bounded, BoundedIo, ConnectionLimits};
pub use tls::{TlsConfig, TlsCounters, TlsError, TlsListener};

/// A listener serving plain HTTP or HTTPS.
#[derive(Debug)]
pub struct Listener {
    inner: Either<TcpListener, TlsListener>,
}

impl Listener {
    /// Plain TCP: for loopback, or behind a TLS terminator.
    pub fn plain(listener: TcpListener) -> Self {
        Self { inner: Either::Left(listener) }
    }

    /// TLS with `initial` (made from `settings`, whose paths are resolved), the files reloaded
    /// when they change; see [`TlsListener::new`].
    pub fn tls(
        listener: TcpListener,
        settings: TlsConfig,
        initial: Arc<rustls::ServerConfig>,
        counters: TlsCounters,
    ) -> io::Result<Self> {
        Ok(Self { inner: Either::Right(TlsListener::new(listener, settings, initial, counters)?) })
    }

    /// TLS when `tls` gives its settings (paths resolved) and what they gave at start,
    /// else plain.
    pub fn new(
        listener: TcpListener,
        tls: Option<(TlsConfig, Arc<rustls::ServerConfig>)>,
        counters: TlsCounters,
    ) -> io::Result<Self> {
        match tls {
            Some((settings, initial)) => Self::tls(listener, settings, initial, counters),
            None => Ok(Self::plain(listener)),
        }
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Either::Right(_))
    }
}

impl axum::serve::Listener for Listener {
    type Io = Either<TcpStream, TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match &mut self.inner {
            Either::Left(plain) => {
                let (io, addr) = axum::serve::Listener::accept(plain).await;
                (Either::Left(io), addr)
            }
            Either::Right(tls) => {
                let (io, addr) = axum::serve::Listener::accept(tls).await;
                (Either::Right(io), addr)
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.inner {
            Either::Left(plain) => plain.local_addr(),
            Either::Right(tls) => axum::serve::Listener::local_addr(tls),
        }
    }
}

/// Warns when `listener` serves plain HTTP on an address other machines can reach: what
/// `carries` (its secrets) then crosses the network in the clear unless a TLS terminator is in
/// front. `section` names the configuration to set.
pub fn warn_if_plain_on_a_network(listener: &Listener, carries: &str, section: &str) {
    let Ok(addr) = axum::serve::Listener::local_addr(listener) else { return };
    if !listener.is_tls() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "plain HTTP on a network address: {carries} cross the network in the clear unless a \
             TLS terminator is in front; configure [tls] ({section})"
        );
    }
}
