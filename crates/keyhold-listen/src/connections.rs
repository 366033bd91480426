//! Bounds on client connections: how many may be open at once, how long one may sit idle, and
//! how long a client may take to send one request.
//!
//! Without them, anyone who can reach the port (no key needed to connect) could open
//! connections and leave them silent until the server runs out of file descriptors, since
//! neither axum nor hyper closes an idle keep-alive connection by default; or keep them from
//! ever counting as idle by sending a request a byte every few minutes ("slowloris"), since
//! hyper's own header timeout needs a timer that `axum::serve` does not give it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// How many client connections a listener keeps open at once, how long one may be silent, and
/// how long a client may take to send a request.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max: usize,
    /// Longest silence before a connection is closed.
    pub idle: Duration,
    /// Longest a client may go on sending one request (from its first byte to its last, with
    /// no answer in between) before its connection is closed.
    pub request: Duration,
}

/// Default of `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default of `idle_timeout_ms` (5 minutes).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;
/// Default of `request_timeout_ms` (1 minute).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 60_000;

impl ConnectionLimits {
    /// The limits of the `max_connections`, `idle_timeout_ms` and `request_timeout_ms`
    /// settings, or why they are not valid (no limit at all, or a time under a second or over
    /// a day).
    pub fn from_settings(
        max_connections: usize,
        idle_timeout_ms: u64,
        request_timeout_ms: u64,
    ) -> Result<Self, String> {
        if max_connections == 0 {
            return Err("max_connections must be positive".into());
        }
        for (name, ms) in
            [("idle_timeout_ms", idle_timeout_ms), ("request_timeout_ms", request_timeout_ms)]
        {
            if !(1_000..=86_400_000).contains(&ms) {
                return Err(format!("{name} must be between 1000 (1 s) and 86400000 (1 day)"));
            }
        }
        Ok(Self {
            max: max_connections,
            idle: Duration::from_millis(idle_timeout_ms),
            request: Duration::from_millis(request_timeout_ms),
        })
    }

    /// `listener` under these limits.
    pub fn bound<L>(self, listener: L) -> Bounded<L> {
        Bounded::new(listener, self)
    }
}

/// A listener whose connections are counted against `max`, closed after `idle` without a byte
/// in either direction or when a client takes longer than `request` to send a request. At
/// `max`, it accepts nothing more until one closes (clients wait in the kernel's backlog).
#[derive(Debug)]
pub struct Bounded<L> {
    inner: L,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    /// Whether the limit was reached and said so, to warn once per time it fills.
    full: bool,
}

impl<L> Bounded<L> {
    /// `inner` under `limits`.
    pub fn new(inner: L, limits: ConnectionLimits) -> Self {
        Self { inner, slots: Arc::new(Semaphore::new(limits.max)), limits, full: false }
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
        (BoundedIo::new(io, slot, self.limits), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding its slot, closed when idle too long or sent a request too slowly.
#[derive(Debug)]
pub struct BoundedIo<Io> {
    io: Io,
    _slot: OwnedSemaphorePermit,
    limits: ConnectionLimits,
    last_active: Instant,
    /// The client's bytes since the server last wrote: the first one's time and the last's.
    /// A request takes the client from the first to the last; a long wait for the answer after
    /// the last (a long poll, a slow KMS) does not count.
    sending: Option<(Instant, Instant)>,
    /// Armed at most `request` ahead and moved only when it fires: a reset on every read would
    /// take the timer's lock on every request. So a request sent too slowly is seen within
    /// twice `request`.
    deadline: Pin<Box<Sleep>>,
}

/// Why a connection was closed.
enum Overstayed {
    Idle,
    Request,
}

impl<Io> BoundedIo<Io> {
    fn new(io: Io, slot: OwnedSemaphorePermit, limits: ConnectionLimits) -> Self {
        Self {
            io,
            _slot: slot,
            limits,
            last_active: Instant::now(),
            sending: None,
            deadline: Box::pin(tokio::time::sleep(limits.idle.min(limits.request))),
        }
    }

    /// Counts a read that brought bytes as activity, and as part of the client's request.
    fn note_read(&mut self) {
        let now = Instant::now();
        self.last_active = now;
        self.sending = Some(match self.sending {
            Some((first, _)) => (first, now),
            None => (now, now),
        });
    }

    /// Counts a write that moved bytes as activity, and as the end of the client's request.
    fn note_written(&mut self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.last_active = Instant::now();
            self.sending = None;
        }
        written
    }

    /// Whether the connection has been silent for `idle`, or its client has been sending one
    /// request for longer than `request`; if neither, re-arms the deadline.
    fn overstayed(&mut self, cx: &mut Context<'_>) -> Option<Overstayed> {
        while self.deadline.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let idle_due = self.last_active + self.limits.idle;
            if now >= idle_due {
                return Some(Overstayed::Idle);
            }
            if let Some((first, last)) = self.sending
                && last.duration_since(first) > self.limits.request
            {
                return Some(Overstayed::Request);
            }
            self.deadline.as_mut().reset(idle_due.min(now + self.limits.request));
        }
        None
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
                    this.note_read();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.overstayed(cx) {
                None => Poll::Pending,
                Some(Overstayed::Idle) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for longer than idle_timeout_ms",
                ))),
                Some(Overstayed::Request) => {
                    tracing::debug!(
                        "closing a connection whose request took over request_timeout_ms"
                    );
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request sent over longer than request_timeout_ms",
                    )))
                }
            },
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
        bounded_with(ConnectionLimits { max, idle, request: Duration::from_secs(60) }).await
    }

    async fn bounded_with(
        limits: ConnectionLimits,
    ) -> (Bounded<tokio::net::TcpListener>, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (Bounded::new(listener, limits), addr)
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

    fn slow_request_limits() -> ConnectionLimits {
        ConnectionLimits {
            max: 4,
            idle: Duration::from_secs(300),
            request: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_sent_a_byte_at_a_time_is_cut_off_after_the_request_timeout() {
        let (mut listener, addr) = bounded_with(slow_request_limits()).await;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut io, _) = listener.accept().await;
        // A byte every 10 s: never idle for the 300 s idle timeout, never a whole request.
        let dribble = tokio::spawn(async move {
            for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ".iter().cycle().take(100) {
                if client.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        });
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let err = loop {
            match tokio::time::timeout(Duration::from_secs(600), io.read(&mut buf)).await {
                Ok(Ok(n)) => assert!(n > 0, "the client closed first"),
                Ok(Err(e)) => break e,
                Err(_) => panic!("a request dribbled for 600 s was not cut off"),
            }
        };
        let took = started.elapsed();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("request_timeout_ms"), "{err}");
        assert!(took > Duration::from_secs(30) && took <= Duration::from_secs(70), "{took:?}");
        dribble.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_wait_for_the_answer_and_many_quick_requests_are_not_cut_off() {
        let (mut listener, addr) = bounded_with(slow_request_limits()).await;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut io, _) = listener.accept().await;
        let mut buf = [0u8; 64];
        // A request sent at once, answered after 200 s (a long poll): four request timeouts.
        client.write_all(b"request").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 7);
        let waited = tokio::time::timeout(Duration::from_secs(200), io.read(&mut buf)).await;
        assert!(waited.is_err(), "closed while the server took its time: {waited:?}");
        io.write_all(b"answer").await.unwrap();
        // Then a request every 5 s, each answered, for 10 request timeouts.
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            client.write_all(b"next").await.unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 4);
            io.write_all(b"ok").await.unwrap();
        }
    }

    #[test]
    fn limits_out_of_range_are_refused_with_the_setting_named() {
        for (max, idle, request, said) in [
            (0, 300_000, 60_000, "max_connections"),
            (10, 999, 60_000, "idle_timeout_ms"),
            (10, 300_000, 999, "request_timeout_ms"),
            (10, 300_000, 86_400_001, "request_timeout_ms"),
        ] {
            let err = ConnectionLimits::from_settings(max, idle, request).unwrap_err();
            assert!(err.contains(said), "{err}");
        }
        let limits = ConnectionLimits::from_settings(10, 300_000, 60_000).unwrap();
        assert_eq!(limits.request, Duration::from_secs(60));
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
