//! Mutual-TLS connections to a KMIP server, kept in a small pool.
//!
//! KMIP runs over a plain TLS stream (port 5696 by convention): the client writes one TTLV
//! request message and reads one TTLV response message, and may send further requests on the same
//! connection. Connections are opened on demand (TCP connect + TLS handshake, within the request
//! timeout) and up to `pool_size` idle ones are kept for [`IDLE_LIFETIME`]. A pooled connection
//! the server has meanwhile closed is detected on use (the write fails or the read ends before any
//! byte of the answer) and the request is sent once more on a fresh connection; this is
//! connection management, not a retry policy (that is the proxy's `ResilientKms`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use super::messages::tag;
use super::ttlv::{self, Item};
use crate::KmsError;

/// How long an idle pooled connection is kept.
pub const IDLE_LIFETIME: Duration = Duration::from_secs(30);
/// The largest response accepted (KMIP servers commonly cap messages at 1 MiB too).
pub const MAX_RESPONSE: u32 = 1 << 20;

/// What went wrong talking to the server, before any KMIP answer was read.
#[derive(Debug)]
pub(super) enum TransportError {
    /// Mapped already (unreachable, denied, bad configuration).
    Kms(KmsError),
    /// A pooled connection turned out closed before any byte of the answer arrived.
    Stale(std::io::Error),
}

impl From<KmsError> for TransportError {
    fn from(e: KmsError) -> Self {
        Self::Kms(e)
    }
}

/// The TLS client set-up and the pool of idle connections to one server.
pub(super) struct Connector {
    address: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    timeout: Duration,
    pool_size: usize,
    idle: Mutex<Vec<(TlsStream<TcpStream>, Instant)>>,
}

impl core::fmt::Debug for Connector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connector")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// The PEM inputs of a mutual-TLS client.
pub(super) struct TlsFiles<'a> {
    /// CA certificates that sign the server's certificate.
    pub ca_pem: &'a [u8],
    /// The client's certificate chain.
    pub client_cert_pem: &'a [u8],
    /// The client's private key (PKCS#8, SEC1 or PKCS#1).
    pub client_key_pem: &'a Zeroizing<String>,
}

impl Connector {
    /// A connector for `address` ("host:port") presenting the client certificate in `files`.
    pub(super) fn new(
        address: String,
        server_name: &str,
        files: &TlsFiles<'_>,
        timeout: Duration,
        pool_size: usize,
    ) -> Result<Self, KmsError> {
        use rustls::pki_types::pem::PemObject;
        let invalid = |what: String| KmsError::ConfigurationInvalid(what);

        let mut roots = rustls::RootCertStore::empty();
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(files.ca_pem) {
            let cert = cert.map_err(|e| invalid(format!("ca_cert_file is not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| invalid(format!("ca_cert_file holds an unusable certificate: {e}")))?;
            count += 1;
        }
        if count == 0 {
            return Err(invalid("ca_cert_file holds no certificate".into()));
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(files.client_cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("client_cert_file is not PEM: {e}")))?;
        if chain.is_empty() {
            return Err(invalid("client_cert_file holds no certificate".into()));
        }
        // The key's own parse error could quote the key: say only that it is unusable.
        let key = PrivateKeyDer::from_pem_slice(files.client_key_pem.as_bytes()).map_err(|_| {
            invalid("client_key is not a PEM private key (PKCS#8, SEC1 or PKCS#1)".into())
        })?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| invalid(format!("TLS set-up: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| invalid(format!("client certificate and key do not match: {e}")))?;
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| invalid(format!("server_name {server_name:?} is not a DNS name or IP")))?;
        Ok(Self {
            address,
            server_name,
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
            pool_size,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends one encoded request and reads the answer, within the request timeout.
    pub(super) async fn round_trip(&self, request: &[u8]) -> Result<Item, KmsError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let attempt = async {
            if let Some(stream) = self.take_idle() {
                match self.exchange(stream, request).await {
                    Err(TransportError::Stale(e)) => {
                        // Closed while idle (server or middlebox timeout): open a new one.
                        tracing::debug!(address = %self.address, error = %e, "kmip: pooled connection was closed; reconnecting");
                    }
                    Err(TransportError::Kms(e)) => return Err(e),
                    Ok(answer) => return Ok(answer),
                }
            }
            let stream = self.connect().await?;
            match self.exchange(stream, request).await {
                Ok(answer) => Ok(answer),
                Err(TransportError::Kms(e)) => Err(e),
                Err(TransportError::Stale(e)) => Err(io_error(&e)),
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(KmsError::Unreachable(format!(
                "no answer from the KMIP server {} within {:?}",
                self.address, self.timeout
            ))),
        }
    }

    fn take_idle(&self) -> Option<TlsStream<TcpStream>> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((stream, since)) = idle.pop() {
            if since.elapsed() < IDLE_LIFETIME {
                return Some(stream);
            }
        }
        None
    }

    fn put_idle(&self, stream: TlsStream<TcpStream>) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < self.pool_size {
            idle.push((stream, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, KmsError> {
        let tcp = TcpStream::connect(&self.address).await.map_err(|e| {
            KmsError::Unreachable(format!(
                "cannot connect to the KMIP server {}: {e}",
                self.address
            ))
        })?;
        let _ = tcp.set_nodelay(true);
        self.tls.connect(self.server_name.clone(), tcp).await.map_err(|e| tls_error(&e))
    }

    async fn exchange(
        &self,
        mut stream: TlsStream<TcpStream>,
        request: &[u8],
    ) -> Result<Item, TransportError> {
        if let Err(e) = async {
            stream.write_all(request).await?;
            stream.flush().await
        }
        .await
        {
            return Err(TransportError::Stale(e));
        }
        let mut header = [0u8; 8];
        match stream.read(&mut header).await {
            Ok(0) => {
                return Err(TransportError::Stale(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(n) => {
                let rest = header.get_mut(n..).unwrap_or_default();
                stream.read_exact(rest).await.map_err(|e| TransportError::Kms(io_error(&e)))?;
            }
            Err(e) if is_tls_alert(&e) => return Err(TransportError::Kms(io_error(&e))),
            Err(e) => return Err(TransportError::Stale(e)),
        }
        let (message_tag, item_type, length) =
            ttlv::decode_header(&header).map_err(|e| TransportError::Kms(malformed(&e)))?;
        if message_tag != tag::RESPONSE_MESSAGE || item_type != 0x01 {
            return Err(TransportError::Kms(KmsError::Unreachable(
                "the KMIP server answered something that is not a KMIP response".into(),
            )));
        }
        if length > MAX_RESPONSE {
            return Err(TransportError::Kms(KmsError::Unreachable(format!(
                "the KMIP server's answer of {length} bytes is over the {MAX_RESPONSE}-byte limit"
            ))));
        }
        let mut message = Zeroizing::new(vec![0u8; ttlv::encoded_len(length)]);
        let (head, body) = message.split_at_mut(8);
        head.copy_from_slice(&header);
        stream.read_exact(body).await.map_err(|e| TransportError::Kms(io_error(&e)))?;
        let item = Item::decode(&message).map_err(|e| TransportError::Kms(malformed(&e)))?;
        self.put_idle(stream);
        Ok(item)
    }
}

fn malformed(e: &ttlv::TtlvError) -> KmsError {
    KmsError::Unreachable(format!("the KMIP server's answer is not valid TTLV: {e}"))
}

/// Whether an I/O error carries a TLS alert from the server (a refusal, not a dropped line).
fn is_tls_alert(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::AlertReceived(_)))
}

fn io_error(e: &std::io::Error) -> KmsError {
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return map_tls(tls);
    }
    KmsError::Unreachable(format!("the connection to the KMIP server failed: {e}"))
}

fn tls_error(e: &std::io::Error) -> KmsError {
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return map_tls(tls);
    }
    // The server closed the connection during the handshake without an alert: PyKMIP and others
    // do this when they reject the client certificate, but so does a server that is going down.
    KmsError::Unreachable(format!("the TLS handshake with the KMIP server failed: {e}"))
}

/// TLS failures: alerts about our certificate are refusals; a server certificate we cannot trust
/// is a configuration problem (wrong CA file or server name); the rest are connection failures.
fn map_tls(e: &rustls::Error) -> KmsError {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::UnsupportedCertificate
            | A::CertificateRequired
            | A::AccessDenied),
        ) => KmsError::AccessDenied(format!(
            "the KMIP server refused the client certificate (TLS alert {alert:?})"
        )),
        rustls::Error::InvalidCertificate(reason) => KmsError::ConfigurationInvalid(format!(
            "the KMIP server's certificate is not trusted (check ca_cert_file and server_name): \
             {reason:?}"
        )),
        rustls::Error::AlertReceived(A::HandshakeFailure | A::ProtocolVersion)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::InappropriateHandshakeMessage { .. } => {
            KmsError::ConfigurationInvalid(format!("TLS with the KMIP server is impossible: {e}"))
        }
        other => KmsError::Unreachable(format!("TLS with the KMIP server failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_map_to_kms_errors() {
        assert!(matches!(
            map_tls(&rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)),
            KmsError::AccessDenied(_)
        ));
        assert!(matches!(
            map_tls(&rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
            KmsError::ConfigurationInvalid(_)
        ));
        assert!(matches!(
            map_tls(&rustls::Error::AlertReceived(rustls::AlertDescription::InternalError)),
            KmsError::Unreachable(_)
        ));
    }
}
