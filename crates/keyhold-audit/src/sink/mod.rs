//! Sinks: where a tenant's (or the vendor's) audit stream is delivered — a SIEM over syslog,
//! OpenSearch/Elasticsearch, Splunk HEC, Datadog, a signed webhook, or a local file.
//!
//! Every sink receives the chained records themselves (`{"seq","prev","hash","event"}`), so
//! whatever a receiver stores can be checked with `keyhold audit verify`. Delivery (cursor,
//! batching, retries) is [`crate::deliver`]'s job; a sink only sends one batch.

mod file;
mod http;
mod syslog;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

pub use http::webhook_signature;
pub use syslog::format_message as syslog_message;

/// One record on its way to a sink: the spooled line, and the few fields sinks need from it
/// (read without building the whole record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its `seq` in the tenant's stream.
    pub seq: u64,
    /// The record as spooled: one JSON object, no newline.
    pub line: String,
    /// The event's id.
    pub id: String,
    /// The event's time (RFC 3339).
    pub time: String,
    /// `granted` or `refused` (empty for events without an outcome).
    pub outcome: String,
}

impl Outgoing {
    /// Reads a spooled record line.
    pub fn parse(line: String) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Light<'a> {
            seq: u64,
            #[serde(borrow)]
            event: LightEvent<'a>,
        }
        #[derive(Deserialize)]
        struct LightEvent<'a> {
            #[serde(borrow)]
            id: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            time: std::borrow::Cow<'a, str>,
            #[serde(default, borrow)]
            outcome: std::borrow::Cow<'a, str>,
        }
        let light: Light<'_> = serde_json::from_str(&line)?;
        let (seq, id, time, outcome) = (
            light.seq,
            light.event.id.into_owned(),
            light.event.time.into_owned(),
            light.event.outcome.into_owned(),
        );
        Ok(Self { seq, line, id, time, outcome })
    }
}

/// Why a batch was not delivered. Delivery retries every error with backoff: a sink that is
/// wrongly configured keeps its backlog until it is fixed (see the spool-full policy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The receiver could not be reached, or the connection broke.
    #[error("cannot reach {target}: {reason}")]
    Unreachable {
        /// Where.
        target: String,
        /// Why.
        reason: String,
    },
    /// The receiver answered, and not with success.
    #[error("{target} refused the batch: HTTP {status}: {body}")]
    Refused {
        /// Where.
        target: String,
        /// The HTTP status.
        status: u16,
        /// The start of its answer.
        body: String,
    },
    /// The sink's settings are wrong.
    #[error("invalid audit sink settings: {0}")]
    Invalid(String),
}

/// A destination for batches of records.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Sends one batch (records of one tenant, in `seq` order). `Ok` means the receiver has it
    /// (or, for transports without acknowledgements, see [`Sink::settle_time`]).
    async fn send(&mut self, tenant: &str, records: &[Outgoing]) -> Result<(), SinkError>;

    /// For transports without acknowledgements (syslog over TCP): how long a sent batch must
    /// sit on a connection that is still open before it counts as received. Zero (the default)
    /// when `send` returning `Ok` already means received.
    fn settle_time(&self) -> Duration {
        Duration::ZERO
    }

    /// Whether the connection that carried the last batches is still open (see
    /// [`Sink::settle_time`]); an error makes delivery send them again.
    async fn check(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Most records per batch.
    fn max_batch(&self) -> usize {
        500
    }

    /// Ends the connection the way its protocol says (TLS: a close_notify alert, which RFC
    /// 5425 requires before closing), when delivery stops. Bounded by the caller.
    async fn close(&mut self) {}
}

/// A sink's settings, as written in the proxy's configuration (`type = "syslog"`, …). The one
/// credential a sink may need (HEC token, Datadog API key, webhook secret, OpenSearch password)
/// is given separately to [`build`], so that it never sits in these plain settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkSettings {
    /// RFC 5424 syslog over TCP or TLS, octet-counted framing (RFC 6587).
    Syslog {
        /// `host:port`.
        address: String,
        /// Use TLS (RFC 5425).
        #[serde(default)]
        tls: bool,
        /// PEM CA certificates to trust instead of the system's (TLS only).
        #[serde(default)]
        ca_cert_file: Option<PathBuf>,
        /// The name the server's certificate must carry (default: the host of `address`).
        #[serde(default)]
        server_name: Option<String>,
        /// APP-NAME of the messages (default `keyhold`).
        #[serde(default = "default_app_name")]
        app_name: String,
    },
    /// Elasticsearch / OpenSearch `_bulk` API; documents get the event id as `_id`, so a
    /// record delivered twice is stored once.
    Opensearch {
        /// Base URL of the cluster (`https://search.example:9200`).
        url: String,
        /// Index to write to (default `keyhold-audit`).
        #[serde(default = "default_index")]
        index: String,
        /// User for HTTP basic authentication (the credential is its password).
        #[serde(default)]
        username: Option<String>,
        /// PEM CA certificates to trust instead of the system's.
        #[serde(default)]
        ca_cert_file: Option<PathBuf>,
    },
    /// Splunk HTTP Event Collector (the credential is the HEC token).
    Splunk {
        /// Base URL of the collector (`https://splunk.example:8088`).
        url: String,
        /// Index (default: the token's default index).
        #[serde(default)]
        index: Option<String>,
        /// Source type (default `keyhold:audit`).
        #[serde(default = "default_sourcetype")]
        sourcetype: String,
        /// PEM CA certificates to trust instead of the system's.
        #[serde(default)]
        ca_cert_file: Option<PathBuf>,
    },
    /// Datadog logs intake, API v2 (the credential is the API key).
    Datadog {
        /// Intake base URL for the Datadog site (default `https://http-intake.logs.datadoghq.com`).
        #[serde(default = "default_datadog_url")]
        url: String,
        /// `service` of the logs (default `keyhold`).
        #[serde(default = "default_app_name")]
        service: String,
        /// Extra `ddtags` (`env:prod,team:sec`); `tenant:<id>` is always added.
        #[serde(default)]
        tags: Option<String>,
        /// PEM CA certificates to trust instead of the system's.
        #[serde(default)]
        ca_cert_file: Option<PathBuf>,
    },
    /// An HTTPS endpoint receiving JSON lines, signed with HMAC-SHA256 (the credential is the
    /// shared secret; see docs/audit.md for checking the signature).
    Webhook {
        /// The endpoint.
        url: String,
        /// PEM CA certificates to trust instead of the system's.
        #[serde(default)]
        ca_cert_file: Option<PathBuf>,
    },
    /// A local JSON-lines file (one per tenant: `{tenant}` in the path is replaced).
    File {
        /// The file; relative to the configuration file.
        path: PathBuf,
    },
}

fn default_app_name() -> String {
    "keyhold".to_owned()
}
fn default_index() -> String {
    "keyhold-audit".to_owned()
}
fn default_sourcetype() -> String {
    "keyhold:audit".to_owned()
}
fn default_datadog_url() -> String {
    "https://http-intake.logs.datadoghq.com".to_owned()
}

impl SinkSettings {
    /// Whether this kind of sink needs a credential.
    pub fn needs_credential(&self) -> bool {
        matches!(self, Self::Splunk { .. } | Self::Datadog { .. } | Self::Webhook { .. })
    }

    /// The sink's type name, as in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Syslog { .. } => "syslog",
            Self::Opensearch { .. } => "opensearch",
            Self::Splunk { .. } => "splunk",
            Self::Datadog { .. } => "datadog",
            Self::Webhook { .. } => "webhook",
            Self::File { .. } => "file",
        }
    }
}

/// Where a sink runs: what it needs besides its settings.
#[derive(Debug, Clone)]
pub struct SinkContext<'a> {
    /// Resolves relative paths (the configuration file's directory).
    pub base_dir: &'a Path,
    /// This proxy's name (syslog HOSTNAME, Splunk `host`, Datadog `hostname`).
    pub instance: &'a str,
    /// The tenant whose stream the sink receives (the vendor's sinks get one per tenant).
    pub tenant: &'a str,
}

/// Builds a sink; `credential` as [`SinkSettings`] describes.
pub fn build(
    settings: &SinkSettings,
    credential: Option<Zeroizing<String>>,
    context: &SinkContext<'_>,
) -> Result<Box<dyn Sink>, SinkError> {
    if settings.needs_credential() && credential.is_none() {
        return Err(SinkError::Invalid(format!(
            "a {} sink needs a credential (`secret`)",
            settings.kind()
        )));
    }
    Ok(match settings {
        SinkSettings::Syslog { address, tls, ca_cert_file, server_name, app_name } => {
            Box::new(syslog::SyslogSink::new(&syslog::SyslogOptions {
                address,
                tls: *tls,
                ca_file: ca_cert_file.as_ref().map(|f| context.base_dir.join(f)).as_deref(),
                server_name: server_name.as_deref(),
                app_name,
                hostname: context.instance,
            })?)
        }
        SinkSettings::File { path } => {
            let path = context.base_dir.join(path);
            let path = PathBuf::from(path.to_string_lossy().replace("{tenant}", context.tenant));
            Box::new(file::FileSink::new(path))
        }
        http_settings => Box::new(http::HttpSink::new(http_settings, credential, context)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_from_toml_and_unknown_fields_are_refused() {
        #[derive(Debug, Deserialize)]
        struct Holder {
            sink: SinkSettings,
        }
        let holder: Holder =
            toml::from_str("sink = { type = \"syslog\", address = \"siem:6514\", tls = true }")
                .unwrap();
        assert!(matches!(holder.sink, SinkSettings::Syslog { tls: true, .. }));
        let err =
            toml::from_str::<Holder>("sink = { type = \"splunk\", url = \"x\", tokn = \"y\" }")
                .unwrap_err();
        assert!(err.to_string().contains("tokn"), "{err}");
    }

    #[test]
    fn http_sinks_without_their_credential_are_refused() {
        let settings = SinkSettings::Datadog {
            url: default_datadog_url(),
            service: "keyhold".into(),
            tags: None,
            ca_cert_file: None,
        };
        let context = SinkContext { base_dir: Path::new("."), instance: "p1", tenant: "acme" };
        let err = build(&settings, None, &context).err().unwrap();
        assert!(matches!(err, SinkError::Invalid(_)), "{err}");
    }
}
