//! RFC 5424 syslog over TCP (RFC 6587) or TLS (RFC 5425), octet-counted framing.
//!
//! Each record is one message: facility 13 (log audit), severity informational for granted
//! accesses and notice for refused ones, TIMESTAMP the event's time, HOSTNAME the proxy
//! instance, MSGID `audit`, and MSG the chained record's JSON (so a capture can be verified).
//!
//! Plain syslog has no acknowledgements: a message written to a connection the server is
//! closing is lost without an error. So a batch counts as delivered only once the connection
//! that carried it has stayed open for [`SETTLE`] after it; if it closes first, delivery sends
//! from the last settled batch again (receivers deduplicate by event id).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::TlsConnector;

use super::{Outgoing, Sink, SinkError};

/// How long a sent batch must stay on an open connection before it counts as received.
pub const SETTLE: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

pub(super) struct SyslogOptions<'a> {
    pub address: &'a str,
    pub tls: bool,
    pub ca_file: Option<&'a Path>,
    pub server_name: Option<&'a str>,
    pub app_name: &'a str,
    pub hostname: &'a str,
}

pub(super) struct SyslogSink {
    address: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    app_name: String,
    hostname: String,
    connection: Option<Box<dyn Stream>>,
}

impl SyslogSink {
    pub(super) fn new(options: &SyslogOptions<'_>) -> Result<Self, SinkError> {
        let invalid = SinkError::Invalid;
        let host = options
            .address
            .rsplit_once(':')
            .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
            .filter(|host| !host.is_empty())
            .ok_or_else(|| {
                invalid(format!("syslog address {:?} is not host:port", options.address))
            })?;
        let tls = if options.tls {
            let mut roots = rustls::RootCertStore::empty();
            if let Some(file) = options.ca_file {
                let pem = std::fs::read(file).map_err(|e| {
                    invalid(format!("cannot read ca_cert_file {}: {e}", file.display()))
                })?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        invalid(format!("ca_cert_file {} is not PEM: {e}", file.display()))
                    })?;
                    roots.add(cert).map_err(|e| invalid(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(invalid(format!(
                        "ca_cert_file {} holds no certificate",
                        file.display()
                    )));
                }
            } else {
                for cert in rustls_native_certs::load_native_certs().certs {
                    // A system root rustls cannot parse is not one we need.
                    let _ = roots.add(cert);
                }
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| invalid(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = options.server_name.unwrap_or(host).to_owned();
            let name = ServerName::try_from(name.clone())
                .map_err(|_| invalid(format!("{name:?} is not a valid TLS server name")))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            if options.ca_file.is_some() || options.server_name.is_some() {
                return Err(invalid("ca_cert_file and server_name need tls = true".into()));
            }
            None
        };
        Ok(Self {
            address: options.address.to_owned(),
            tls,
            app_name: header_token(options.app_name, 48),
            hostname: header_token(options.hostname, 255),
            connection: None,
        })
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> SinkError {
        SinkError::Unreachable {
            target: format!("syslog {}", self.address),
            reason: reason.to_string(),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, SinkError> {
        let tcp =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.address))
                .await
                .map_err(|_| self.unreachable("connect timed out"))?
                .map_err(|e| self.unreachable(e))?;
        let _ = tcp.set_nodelay(true);
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(
                tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| self.unreachable("TLS handshake timed out"))?
                    .map_err(|e| self.unreachable(format!("TLS: {e}")))?,
            ),
        })
    }

    /// Whether the open connection (if any) is still open: a server that closed it has sent
    /// end-of-file, which a read that does not wait sees.
    async fn still_open(connection: &mut Box<dyn Stream>) -> bool {
        let mut byte = [0u8; 64];
        match tokio::time::timeout(Duration::ZERO, connection.read(&mut byte)).await {
            Err(_) => true,     // nothing to read: open
            Ok(Ok(0)) => false, // end of file: closed
            Ok(Ok(_)) => true,  // a server does not talk, but it is there
            Ok(Err(_)) => false,
        }
    }
}

#[async_trait::async_trait]
impl Sink for SyslogSink {
    async fn send(&mut self, _tenant: &str, records: &[Outgoing]) -> Result<(), SinkError> {
        // A connection closed since the last batch may have lost it: report, so that delivery
        // goes back to the last settled batch.
        self.check().await?;
        let mut frames = Vec::with_capacity(records.iter().map(|r| r.line.len() + 128).sum());
        for record in records {
            let message = format_message(record, &self.app_name, &self.hostname);
            frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
            frames.extend_from_slice(message.as_bytes());
        }
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            connection.write_all(&frames).await?;
            connection.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                self.connection = Some(connection);
                Ok(())
            }
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => Err(self.unreachable("write timed out")),
        }
    }

    fn settle_time(&self) -> Duration {
        SETTLE
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        if let Some(mut connection) = self.connection.take() {
            if !Self::still_open(&mut connection).await {
                return Err(self.unreachable("the server closed the connection"));
            }
            self.connection = Some(connection);
        }
        Ok(())
    }

    fn max_batch(&self) -> usize {
        1000
    }

    async fn close(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            // TLS: close_notify, then the TCP half-close; plain TCP: the half-close. Without
            // it a receiver sees a truncated stream (rsyslog logs an error per connection).
            let _ = connection.shutdown().await;
        }
    }
}

/// One record as an RFC 5424 message (without framing).
pub fn format_message(record: &Outgoing, app_name: &str, hostname: &str) -> String {
    // Facility 13 (log audit); severity 6 (informational) or 5 (notice) for refusals.
    let severity = if record.outcome == "refused" { 5 } else { 6 };
    let priority = 13 * 8 + severity;
    let timestamp = if record.time.is_empty() { "-" } else { record.time.as_str() };
    format!("<{priority}>1 {timestamp} {hostname} {app_name} - audit - {}", record.line)
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` if empty.
fn header_token(text: &str, max: usize) -> String {
    let token: String =
        text.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).take(max).collect();
    if token.is_empty() { "-".to_owned() } else { token }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainHead;
    use crate::event::{AuditEvent, EventKind};

    fn outgoing(outcome: &str) -> Outgoing {
        let mut event = AuditEvent::new(EventKind::Data, "acme", "wrap");
        event.outcome = outcome.to_owned();
        let line = String::from_utf8(ChainHead::default().append(&event).unwrap()).unwrap();
        Outgoing::parse(line.trim_end().to_owned()).unwrap()
    }

    #[test]
    fn messages_follow_rfc5424() {
        let record = outgoing("granted");
        let message = format_message(&record, "keyhold", &header_token("proxy 1", 255));
        let time = &record.time;
        assert_eq!(message, format!("<110>1 {time} proxy_1 keyhold - audit - {}", record.line));
        assert!(format_message(&outgoing("refused"), "k", "h").starts_with("<109>1 "));
        assert_eq!(header_token("", 10), "-");
        assert_eq!(header_token("ééé", 2), "__");
    }

    #[tokio::test]
    async fn batches_are_octet_counted_and_a_closed_connection_is_noticed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let options = SyslogOptions {
            address: &address,
            tls: false,
            ca_file: None,
            server_name: None,
            app_name: "keyhold",
            hostname: "p1",
        };
        let mut sink = SyslogSink::new(&options).unwrap();
        let records = [outgoing("granted"), outgoing("refused")];
        let (sent, accepted) = tokio::join!(sink.send("acme", &records), listener.accept());
        sent.unwrap();
        let (mut server, _) = accepted.unwrap();
        let mut received = Vec::new();
        let expected: usize = records
            .iter()
            .map(|r| {
                let m = format_message(r, "keyhold", "p1");
                m.len() + m.len().to_string().len() + 1
            })
            .sum();
        while received.len() < expected {
            let mut chunk = [0u8; 4096];
            let n = server.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            received.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8(received).unwrap();
        let first = format_message(&records[0], "keyhold", "p1");
        assert!(text.starts_with(&format!("{} {first}", first.len())), "{text}");
        sink.check().await.unwrap();
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(sink.check().await, Err(SinkError::Unreachable { .. })));
    }
}
