//! The load driver's HTTP/1.1 client: kept-alive connections straight on hyper, each request's
//! target, headers and body made once per scenario. The driver shares the machine's cores with
//! the servers it measures, so every microsecond it spends per request (reqwest parses the URL,
//! builds a header map and serializes the body each time) is taken from them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, bail};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Kept-alive connections to one server, shared by the workers of a run: a worker takes one,
/// sends a request, reads the whole answer and gives it back.
#[derive(Clone)]
pub struct Connections {
    addr: SocketAddr,
    host: HeaderValue,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl Connections {
    /// Connections to `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let uri: Uri = base.parse().with_context(|| format!("not a URL: {base}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("the load driver speaks plain HTTP on loopback only: {base}");
        }
        let authority = uri.authority().context("a URL without a host")?;
        let addr: SocketAddr = authority
            .as_str()
            .parse()
            .with_context(|| format!("the driver needs an IP address and port: {base}"))?;
        Ok(Self {
            addr,
            host: HeaderValue::from_str(authority.as_str())?,
            idle: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// A POST of `body` (JSON) to `path` with `headers`, built once and sent many times.
    pub fn post(
        &self,
        path: &str,
        headers: &[(HeaderName, &str)],
        body: Vec<u8>,
    ) -> anyhow::Result<Call> {
        let mut fixed = vec![
            (HOST, self.host.clone()),
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CONTENT_LENGTH, HeaderValue::from(body.len())),
        ];
        for (name, value) in headers {
            fixed.push((name.clone(), HeaderValue::from_str(value)?));
        }
        Ok(Call {
            connections: self.clone(),
            uri: path.parse().with_context(|| format!("not a path: {path}"))?,
            headers: fixed.into(),
            body: Bytes::from(body),
        })
    }

    async fn take(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        if let Some(sender) = idle {
            return Ok(sender);
        }
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        // The connection's I/O runs on its own; it ends when the sender is dropped.
        tokio::spawn(connection);
        Ok(sender)
    }

    fn give_back(&self, sender: SendRequest<Full<Bytes>>) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(sender);
    }
}

/// One request, ready to be sent again and again.
#[derive(Clone)]
pub struct Call {
    connections: Connections,
    uri: Uri,
    headers: Arc<[(HeaderName, HeaderValue)]>,
    body: Bytes,
}

impl Call {
    /// Sends the request and reads the whole answer; a status other than 2xx is an error.
    pub async fn send(&self) -> anyhow::Result<Bytes> {
        let mut sender = self.connections.take().await?;
        sender.ready().await.context("the connection closed")?;
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        for (name, value) in self.headers.iter() {
            headers.insert(name.clone(), value.clone());
        }
        let response = sender.send_request(request).await.context("sending the request")?;
        let status = response.status();
        let body = response.into_body().collect().await.context("reading the answer")?.to_bytes();
        // Only a connection whose answer was read in full can carry the next request.
        self.connections.give_back(sender);
        if !status.is_success() {
            bail!("{}: HTTP {status}: {}", self.uri, String::from_utf8_lossy(&body));
        }
        Ok(body)
    }
}
