//! The load driver's HTTP/1.1 client. The driver shares the machine's cores with the servers it
//! measures, so every microsecond it spends per request is taken from them; it is kept to what a
//! request needs: the whole request (head and body) made once per scenario and written with one
//! `write`, the answer read on the same task that sent it (no connection task, no channel, no
//! second wake-up) and its head parsed by `httparse`. Connections are kept alive and shared by
//! the workers of a run through a pool.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The most header lines an answer may have.
const MAX_HEADERS: usize = 64;
/// Read buffer made room for before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Kept-alive connections to one server, shared by the workers of a run: a worker takes one,
/// sends a request, reads the whole answer and gives it back.
#[derive(Clone)]
pub struct Connections {
    addr: SocketAddr,
    host: String,
    idle: Arc<Mutex<Vec<Connection>>>,
}

/// One kept-alive connection and what has been read from it past the last answer.
struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
    /// Whether it has carried an answer (a server may close an idle connection at any time).
    reused: bool,
}

impl Connections {
    /// Connections to `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = base.parse().with_context(|| format!("not a URL: {base}"))?;
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
            host: authority.as_str().to_owned(),
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
        self.request("POST", path, headers, Some(body))
    }

    /// A GET of `path`.
    pub fn get(&self, path: &str) -> anyhow::Result<Call> {
        self.request("GET", path, &[], None)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(HeaderName, &str)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Call> {
        let path: PathAndQuery = path.parse().with_context(|| format!("not a path: {path}"))?;
        if !path.as_str().starts_with('/') {
            bail!("not an absolute path: {path}");
        }
        let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host);
        if let Some(body) = &body {
            request.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        for (name, value) in headers {
            // Checked as a header value: no CR, LF or other control byte can split the request.
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("not a valid value for header {name}"))?;
            let value = value.to_str().with_context(|| format!("header {name} is not ASCII"))?;
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body.as_deref().unwrap_or_default());
        Ok(Call { connections: self.clone(), path: path.to_string(), request: Bytes::from(bytes) })
    }

    async fn take(&self) -> anyhow::Result<Connection> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        if let Some(connection) = idle {
            return Ok(connection);
        }
        self.connect().await
    }

    async fn connect(&self) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, buffer: BytesMut::with_capacity(READ_CHUNK), reused: false })
    }

    fn give_back(&self, connection: Connection) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(connection);
    }
}

/// One request, ready to be sent again and again.
#[derive(Clone)]
pub struct Call {
    connections: Connections,
    /// For error messages.
    path: String,
    /// The whole request: head and body.
    request: Bytes,
}

impl Call {
    /// Sends the request and reads the whole answer; a status other than 2xx is an error.
    pub async fn send(&self) -> anyhow::Result<Bytes> {
        let mut connection = self.connections.take().await?;
        let answer = match connection.exchange(&self.request).await {
            Ok(answer) => answer,
            // A kept-alive connection the server closed before answering (idle timeout): the
            // request was not read, so it is sent once more on a new connection.
            Err(Exchange::ClosedBeforeAnswer) if connection.reused => {
                connection = self.connections.connect().await?;
                connection.exchange(&self.request).await.map_err(Exchange::into_error)?
            }
            Err(e) => return Err(e.into_error()),
        };
        // Only a connection whose answer was read in full, and that the server keeps open, can
        // carry the next request.
        if answer.keep_alive {
            connection.reused = true;
            self.connections.give_back(connection);
        }
        if !(200..300).contains(&answer.status) {
            bail!(
                "{}: HTTP {}: {}",
                self.path,
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        Ok(answer.body)
    }
}

/// Why an exchange failed.
enum Exchange {
    /// The connection ended before a byte of the answer came.
    ClosedBeforeAnswer,
    Failed(anyhow::Error),
}

impl Exchange {
    fn into_error(self) -> anyhow::Error {
        match self {
            Self::ClosedBeforeAnswer => anyhow::anyhow!("the server closed the connection"),
            Self::Failed(e) => e,
        }
    }
}

impl From<anyhow::Error> for Exchange {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(e)
    }
}

impl Connection {
    async fn exchange(&mut self, request: &[u8]) -> Result<Answer, Exchange> {
        if let Err(e) = self.stream.write_all(request).await {
            return Err(if self.reused {
                Exchange::ClosedBeforeAnswer
            } else {
                Exchange::Failed(anyhow::Error::new(e).context("sending the request"))
            });
        }
        let mut closed = false;
        loop {
            if let Some((answer, used)) = parse_answer(&self.buffer, closed)? {
                let mut taken = self.buffer.split_to(used);
                let body = taken.split_off(answer.body_start);
                return Ok(Answer { body: dechunked(body, answer.chunked)?, ..answer.into() });
            }
            if closed {
                if self.buffer.is_empty() {
                    return Err(Exchange::ClosedBeforeAnswer);
                }
                return Err(
                    anyhow::anyhow!("the connection closed in the middle of an answer").into()
                );
            }
            self.buffer.reserve(READ_CHUNK);
            let read =
                self.stream.read_buf(&mut self.buffer).await.context("reading the answer")?;
            closed = read == 0;
        }
    }
}

/// A whole answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Bytes,
    /// Whether the connection can carry another request.
    keep_alive: bool,
}

/// Where a whole answer lies in the bytes read.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    status: u16,
    /// Offset of the body (after the head).
    body_start: usize,
    /// Whether the body is in chunked encoding (to be decoded).
    chunked: bool,
    keep_alive: bool,
}

impl From<Parsed> for Answer {
    fn from(parsed: Parsed) -> Self {
        Self { status: parsed.status, body: Bytes::new(), keep_alive: parsed.keep_alive }
    }
}

/// How the answer's body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// Parses the answer at the start of `data`: `None` while it is incomplete, else where it lies
/// and how many bytes it used. `closed`: the server has closed the connection (which ends a body
/// that has neither length nor chunks).
fn parse_answer(data: &[u8], closed: bool) -> anyhow::Result<Option<(Parsed, usize)>> {
    if data.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let body_start = match response.parse(data).context("a malformed HTTP answer")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.context("an HTTP answer without a status")?;
    let mut keep_alive = response.version == Some(1);
    let mut framing = Framing::Close;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .context("an invalid content-length")?;
            framing = Framing::Length(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if header.value.eq_ignore_ascii_case(b"chunked") {
                framing = Framing::Chunked;
            } else {
                bail!(
                    "an unsupported transfer-encoding: {}",
                    String::from_utf8_lossy(header.value)
                );
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            if header.value.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if header.value.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            }
        }
    }
    // These answers have no body, whatever their headers say (RFC 9112 §6.3).
    if (100..200).contains(&status) || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    let rest = data.get(body_start..).unwrap_or_default();
    let (used, chunked) = match framing {
        Framing::Length(length) if rest.len() >= length => (body_start + length, false),
        Framing::Length(_) => return Ok(None),
        Framing::Chunked => match chunked_length(rest)? {
            Some(length) => (body_start + length, true),
            None => return Ok(None),
        },
        Framing::Close if closed => {
            keep_alive = false;
            (data.len(), false)
        }
        Framing::Close => return Ok(None),
    };
    Ok(Some((Parsed { status, body_start, chunked, keep_alive }, used)))
}

/// Walks the chunked body at the start of `data` (chunks, last chunk, trailers), handing each
/// chunk's data to `each`; its length once whole, `None` while it is incomplete.
fn chunks(data: &[u8], mut each: impl FnMut(&[u8])) -> anyhow::Result<Option<usize>> {
    let mut at = 0usize;
    loop {
        let rest = data.get(at..).unwrap_or_default();
        let (head, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => bail!("a malformed chunk size"),
        };
        at += head;
        if size == 0 {
            // Trailer lines, then an empty line.
            let rest = data.get(at..).unwrap_or_default();
            if rest.starts_with(b"\r\n") {
                return Ok(Some(at + 2));
            }
            return Ok(rest.windows(4).position(|w| w == b"\r\n\r\n").map(|end| at + end + 4));
        }
        let size = usize::try_from(size).context("a chunk too large")?;
        let end = at.checked_add(size).context("a chunk too large")?;
        let Some(chunk) = data.get(at..end) else { return Ok(None) };
        match data.get(end..end.saturating_add(2)) {
            Some(b"\r\n") => each(chunk),
            Some(_) => bail!("a chunk not followed by CRLF"),
            None => return Ok(None),
        }
        at = end + 2;
    }
}

/// The length of the chunked body at the start of `data`, or `None` while it is incomplete.
fn chunked_length(data: &[u8]) -> anyhow::Result<Option<usize>> {
    chunks(data, |_| {})
}

/// The body's bytes: as read, or its chunks' data joined.
fn dechunked(body: BytesMut, chunked: bool) -> anyhow::Result<Bytes> {
    if !chunked {
        return Ok(body.freeze());
    }
    let mut data = Vec::with_capacity(body.len());
    chunks(&body, |chunk| data.extend_from_slice(chunk))?.context("a truncated chunked body")?;
    Ok(Bytes::from(data))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn whole(data: &[u8]) -> (Parsed, usize) {
        parse_answer(data, false).unwrap().unwrap()
    }

    /// `answer` cut anywhere is not whole yet; whole, it uses every byte.
    fn whole_only_at_its_end(answer: &[u8]) -> Parsed {
        for cut in 0..answer.len() {
            assert_eq!(parse_answer(&answer[..cut], false).unwrap(), None, "cut at {cut}");
        }
        let (parsed, used) = whole(answer);
        assert_eq!(used, answer.len());
        parsed
    }

    #[test]
    fn an_answer_with_a_length_is_whole_only_when_its_body_is() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        let parsed = whole_only_at_its_end(answer);
        assert_eq!(parsed.status, 200);
        assert!(parsed.keep_alive && !parsed.chunked);
        assert_eq!(&answer[parsed.body_start..], b"{\"a\":1}");
        // What follows (never expected without pipelining) is left for the next answer.
        let mut two = answer.to_vec();
        two.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(whole(&two).1, answer.len());
    }

    #[test]
    fn chunked_answers_are_joined_and_trailers_skipped() {
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nx-t: 1\r\n\r\n";
        let parsed = whole_only_at_its_end(answer);
        assert!(parsed.chunked);
        let body = BytesMut::from(&answer[parsed.body_start..]);
        assert_eq!(&dechunked(body, true).unwrap()[..], b"{\"a\":1}");
        let plain = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (parsed, used) = whole(plain);
        assert_eq!(used, plain.len());
        let body = BytesMut::from(&plain[parsed.body_start..used]);
        assert_eq!(&dechunked(body, true).unwrap()[..], b"ok");
    }

    #[test]
    fn connection_close_and_old_versions_end_the_connection() {
        let (parsed, _) =
            whole(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        assert!(!parsed.keep_alive);
        let (parsed, _) = whole(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(!parsed.keep_alive);
        // Neither length nor chunks: the body ends with the connection.
        let open = b"HTTP/1.1 500 Oops\r\n\r\nsomething";
        assert_eq!(parse_answer(open, false).unwrap(), None);
        let (parsed, used) = parse_answer(open, true).unwrap().unwrap();
        assert_eq!((parsed.status, parsed.keep_alive, used), (500, false, open.len()));
    }

    #[test]
    fn malformed_answers_are_errors() {
        for bad in [
            &b"HTTQ/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
        ] {
            assert!(parse_answer(bad, false).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn requests_are_made_once_and_refuse_header_injection() {
        let connections = Connections::new("http://127.0.0.1:9").unwrap();
        let name = HeaderName::from_static("authorization");
        let call =
            connections.post("/api/1/document/wrap", &[(name.clone(), "cmk k")], b"{}".to_vec());
        let request = call.unwrap().request;
        assert_eq!(
            &request[..],
            b"POST /api/1/document/wrap HTTP/1.1\r\nhost: 127.0.0.1:9\r\ncontent-type: application/json\r\ncontent-length: 2\r\nauthorization: cmk k\r\n\r\n{}"
        );
        assert_eq!(
            &connections.get("/metrics").unwrap().request[..],
            b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1:9\r\n\r\n"
        );
        assert!(connections.post("/x", &[(name, "k\r\nx-evil: 1")], Vec::new()).is_err());
        assert!(connections.post("/a b", &[], Vec::new()).is_err());
        assert!(Connections::new("https://127.0.0.1:9").is_err());
    }
}
