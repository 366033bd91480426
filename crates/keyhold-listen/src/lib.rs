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
                set_nodelay(&io);
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

/// Turns Nagle's algorithm off for an accepted connection, as the TLS listener does: an answer
/// written in more than one segment (a large batch) must not wait for the client's delayed
/// acknowledgement of the previous one before its last segment leaves.
fn set_nodelay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;

    #[tokio::test]
    async fn plain_connections_are_accepted_with_nagle_off() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("address");
        let mut listener = Listener::plain(tcp);
        let client = TcpStream::connect(addr).await.expect("connect");
        // A new socket has Nagle on: the listener must turn it off, not the kernel.
        assert!(!client.nodelay().expect("client socket"));
        let (io, _) = listener.accept().await;
        let Either::Left(accepted) = io else { panic!("a plain listener accepted TLS") };
        assert!(accepted.nodelay().expect("accepted socket"), "TCP_NODELAY not set");
    }
}
