//! Bounds on client connections: how many may be open at once, and how long one may sit idle.
//!
//! Without them, anyone who can reach the port (no key needed to connect) could open
//! connections and leave them silent until the server runs out of file descriptors, since
//! neither axum nor hyper closes an idle keep-alive connection by default.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// How many client connections a listener keeps open at once, and how long one may be silent.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max: usize,
    /// Longest silence before a connection is closed.
    pub idle: Duration,
}

/// Default of `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default of `idle_timeout_ms` (5 minutes).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;

impl ConnectionLimits {
    /// The limits of the `max_connections` and `idle_timeout_ms` settings, or why they are not
    /// valid (no limit at all, or an idle time under a second or over a day).
    pub fn from_settings(max_connections: usize, idle_timeout_ms: u64) -> Result<Self, String> {
        if max_connections == 0 {
            return Err("max_connections must be positive".into());
        }
        if !(1_000..=86_400_000).contains(&idle_timeout_ms) {
            return Err("idle_timeout_ms must be between 1000 (1 s) and 86400000 (1 day)".into());
        }
        Ok(Self { max: max_connections, idle: Duration::from_millis(idle_timeout_ms) })
    }

    /// `listener` under these limits.
    pub fn bound<L>(self, listener: L) -> Bounded<L> {
        Bounded::new(listener, self.max, self.idle)
    }
}

/// A listener whose connections are counted against `max` and closed after `idle` without a
/// byte in either direction. At `max`, it accepts nothing more until one closes (clients wait in
/// the kernel's backlog).
#[derive(Debug)]
pub struct Bounded<L> {
    inner: L,
    slots: Arc<Semaphore>,
    idle: Duration,
    /// Whether the limit was reached and said so, to warn once per time it fills.
    full: bool,
}

impl<L> Bounded<L> {
    /// At most `max` connections of `inner` at once, each closed after `idle` of silence.
    pub fn new(inner: L, max: usize, idle: Duration) -> Self {
        Self { inner, slots: Arc::new(Semaphore::new(max)), idle, full: false }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Bounded<L> {
    type Io = BoundedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => {
                self.full = false;
                slot
            }
            Err(_) => {
                if !self.full {
                    tracing::warn!(
                        "max_connections client connections are open: new ones wait until one closes"
                    );
                    self.full = true;
                }
                #[allow(clippy::expect_used)] // The semaphore is never closed.
                Arc::clone(&self.slots)
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let (io, addr) = self.inner.accept().await;
        (BoundedIo::new(io, slot, self.idle), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding its slot, closed when idle too long.
#[derive(Debug)]
pub struct BoundedIo<Io> {
    io: Io,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    last_active: Instant,
    /// Armed for `last_active + idle`, but moved only when it fires: a reset on every read
    /// would take the timer's lock on every request.
    deadline: Pin<Box<Sleep>>,
}

impl<Io> BoundedIo<Io> {
    fn new(io: Io, slot: OwnedSemaphorePermit, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            io,
            _slot: slot,
            idle,
            last_active: now,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// Counts a write that moved bytes as activity.
    fn note_written(&mut self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.last_active = Instant::now();
        }
        written
    }

    /// Whether the connection has been silent for `idle`; if not, re-arms the deadline.
    fn idle_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        while self.deadline.as_mut().poll(cx).is_ready() {
            let due = self.last_active + self.idle;
            if Instant::now() >= due {
                return true;
            }
            self.deadline.as_mut().reset(due);
        }
        false
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for BoundedIo<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_active = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.idle_too_long(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for longer than idle_timeout_ms",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for BoundedIo<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note_written(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note_written(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn bounded(
        max: usize,
        idle: Duration,
    ) -> (Bounded<tokio::net::TcpListener>, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (Bounded::new(listener, max, idle), addr)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_idle_time_and_an_active_one_is_not() {
        let (mut listener, addr) = bounded(4, Duration::from_secs(60)).await;
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut io, _) = listener.accept().await;
        let mut buf = [0u8; 16];
        let started = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(120), io.read(&mut buf)).await;
        let err = read.expect("still open after 120 s").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(60), "{:?}", started.elapsed());

        // Activity moves the deadline: 50 s of silence after a write is not yet idle.
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut io, _) = listener.accept().await;
        tokio::time::sleep(Duration::from_secs(40)).await;
        io.write_all(b"answer").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(50), io.read(&mut buf)).await;
        assert!(waited.is_err(), "closed although active 50 s ago");
        client.write_all(b"next").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn no_more_than_max_connections_are_accepted_at_once() {
        let (mut listener, addr) = bounded(2, Duration::from_secs(600)).await;
        let _clients: Vec<_> =
            futures::future::join_all((0..3).map(|_| tokio::net::TcpStream::connect(addr))).await;
        let first = listener.accept().await;
        let second = listener.accept().await;
        let third = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(third.is_err(), "a third connection was accepted with max 2");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(third.is_ok(), "a freed slot was not reused");
        drop(second);
    }
}
