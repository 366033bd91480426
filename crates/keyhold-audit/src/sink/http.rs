//! The HTTP sinks: OpenSearch/Elasticsearch `_bulk`, Splunk HEC, Datadog logs v2, and a
//! webhook signed with HMAC-SHA256. Each request carries one batch; any answer but success is
//! an error, and delivery sends the batch again (receivers deduplicate by event id: OpenSearch
//! by `_id`, the others by the event's `id`).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{Outgoing, Sink, SinkContext, SinkError, SinkSettings};

const TIMEOUT: Duration = Duration::from_secs(30);

enum Api {
    OpenSearch { index: String, username: Option<String> },
    Splunk { index: Option<String>, sourcetype: String },
    Datadog { service: String, tags: Option<String> },
    Webhook,
}

pub(super) struct HttpSink {
    client: reqwest::Client,
    endpoint: String,
    api: Api,
    credential: Option<Zeroizing<String>>,
    instance: String,
}

impl HttpSink {
    pub(super) fn new(
        settings: &SinkSettings,
        credential: Option<Zeroizing<String>>,
        context: &SinkContext<'_>,
    ) -> Result<Self, SinkError> {
        let (url, ca_cert_file, api, path) = match settings {
            SinkSettings::Opensearch { url, index, username, ca_cert_file } => (
                url,
                ca_cert_file,
                Api::OpenSearch { index: index.clone(), username: username.clone() },
                "/_bulk",
            ),
            SinkSettings::Splunk { url, index, sourcetype, ca_cert_file } => (
                url,
                ca_cert_file,
                Api::Splunk { index: index.clone(), sourcetype: sourcetype.clone() },
                "/services/collector/event",
            ),
            SinkSettings::Datadog { url, service, tags, ca_cert_file } => (
                url,
                ca_cert_file,
                Api::Datadog { service: service.clone(), tags: tags.clone() },
                "/api/v2/logs",
            ),
            SinkSettings::Webhook { url, ca_cert_file } => (url, ca_cert_file, Api::Webhook, ""),
            SinkSettings::Syslog { .. } | SinkSettings::File { .. } => {
                return Err(SinkError::Invalid("not an HTTP sink".into()));
            }
        };
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| SinkError::Invalid(format!("{} url {url:?}: {e}", settings.kind())))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(SinkError::Invalid(format!(
                "{} url {url:?} is not http(s)",
                settings.kind()
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keyhold-audit/", env!("CARGO_PKG_VERSION")));
        if let Some(file) = ca_cert_file {
            let path = context.base_dir.join(file);
            let pem = std::fs::read(&path).map_err(|e| {
                SinkError::Invalid(format!("cannot read ca_cert_file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                SinkError::Invalid(format!("ca_cert_file {} is not PEM: {e}", path.display()))
            })?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder.build().map_err(|e| SinkError::Invalid(e.to_string()))?;
        let endpoint = format!("{}{path}", url.trim_end_matches('/'));
        Ok(Self { client, endpoint, api, credential, instance: context.instance.to_owned() })
    }

    fn secret(&self) -> &str {
        self.credential.as_ref().map(|c| c.as_str()).unwrap_or_default()
    }

    /// The request body and its content type.
    fn body(&self, tenant: &str, records: &[Outgoing]) -> (Vec<u8>, &'static str) {
        match &self.api {
            Api::OpenSearch { index, .. } => {
                let mut body = Vec::new();
                for record in records {
                    let action = json!({"index": {"_index": index, "_id": record.id}});
                    body.extend_from_slice(action.to_string().as_bytes());
                    body.push(b'\n');
                    body.extend_from_slice(record.line.as_bytes());
                    body.push(b'\n');
                }
                (body, "application/x-ndjson")
            }
            Api::Splunk { index, sourcetype } => {
                // HEC takes events one after the other, not in an array.
                let mut body = Vec::new();
                for record in records {
                    // The record goes in as spooled (no re-encoding): `event` comes last.
                    let mut head = serde_json::Map::new();
                    if let Some(time) = epoch_seconds(&record.time) {
                        head.insert("time".into(), json!(time));
                    }
                    head.insert("host".into(), json!(self.instance));
                    head.insert("source".into(), json!("keyhold"));
                    head.insert("sourcetype".into(), json!(sourcetype));
                    if let Some(index) = index {
                        head.insert("index".into(), json!(index));
                    }
                    let head = Value::Object(head).to_string();
                    let event = format!(
                        "{},\"event\":{}}}",
                        head.strip_suffix('}').unwrap_or(&head),
                        record.line
                    );
                    body.extend_from_slice(event.as_bytes());
                }
                (body, "application/json")
            }
            Api::Datadog { service, tags } => {
                let ddtags = match tags {
                    Some(extra) if !extra.is_empty() => format!("tenant:{tenant},{extra}"),
                    _ => format!("tenant:{tenant}"),
                };
                let logs: Vec<Value> = records
                    .iter()
                    .map(|record| {
                        json!({
                            "ddsource": "keyhold",
                            "ddtags": ddtags,
                            "hostname": self.instance,
                            "service": service,
                            "message": record.line,
                        })
                    })
                    .collect();
                (Value::Array(logs).to_string().into_bytes(), "application/json")
            }
            Api::Webhook => {
                let mut body = Vec::new();
                for record in records {
                    body.extend_from_slice(record.line.as_bytes());
                    body.push(b'\n');
                }
                (body, "application/x-ndjson")
            }
        }
    }
}

/// RFC 3339 time as seconds since the epoch, with milliseconds (Splunk's `time`).
fn epoch_seconds(time: &str) -> Option<f64> {
    let parsed =
        time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).ok()?;
    let millis = i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()?;
    // Milliseconds since 1970 fit in an f64 exactly.
    #[allow(clippy::cast_precision_loss)]
    Some(millis as f64 / 1000.0)
}

/// The webhook signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." ‖ body)>`.
pub fn webhook_signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut context = aws_lc_rs::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("t={timestamp},v1={}", hex::encode(context.sign().as_ref()))
}

#[async_trait::async_trait]
impl Sink for HttpSink {
    async fn send(&mut self, tenant: &str, records: &[Outgoing]) -> Result<(), SinkError> {
        let (body, content_type) = self.body(tenant, records);
        let mut request = self
            .client
            .post(&self.endpoint)
            .header(CONTENT_TYPE, HeaderValue::from_static(content_type));
        match &self.api {
            Api::OpenSearch { username: Some(user), .. } => {
                request = request.basic_auth(user, Some(self.secret()));
            }
            Api::OpenSearch { .. } => {}
            Api::Splunk { .. } => {
                request = request.header("Authorization", format!("Splunk {}", self.secret()));
            }
            Api::Datadog { .. } => request = request.header("DD-API-KEY", self.secret()),
            Api::Webhook => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                let first = records.first().map(|r| r.seq).unwrap_or_default();
                let last = records.last().map(|r| r.seq).unwrap_or_default();
                request = request
                    .header(
                        "X-Keyhold-Signature",
                        webhook_signature(self.secret().as_bytes(), now, &body),
                    )
                    .header("X-Keyhold-Tenant", tenant)
                    .header("X-Keyhold-Records", format!("{first}-{last}"));
            }
        }
        let target = self.endpoint.clone();
        let response = request.body(body).send().await.map_err(|e| SinkError::Unreachable {
            target: target.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let body: String = text.chars().take(300).collect();
            return Err(SinkError::Refused { target, status: status.as_u16(), body });
        }
        if let Api::OpenSearch { .. } = self.api {
            bulk_outcome(&text).map_err(|body| SinkError::Refused {
                target,
                status: status.as_u16(),
                body,
            })?;
        }
        Ok(())
    }

    fn max_batch(&self) -> usize {
        match self.api {
            // Datadog takes at most 1000 logs per request.
            Api::Datadog { .. } => 1000,
            _ => 500,
        }
    }
}

/// A `_bulk` answer is 200 even when items failed: every item must be 200 or 201.
fn bulk_outcome(text: &str) -> Result<(), String> {
    let answer: Value =
        serde_json::from_str(text).map_err(|e| format!("not a _bulk answer: {e}"))?;
    if answer.get("errors").and_then(Value::as_bool) != Some(true) {
        return Ok(());
    }
    let failed = answer
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| item.as_object()?.values().next())
        .find(|result| !matches!(result.get("status").and_then(Value::as_u64), Some(200 | 201)));
    match failed {
        Some(result) => Err(format!(
            "an item failed: {}",
            result.to_string().chars().take(300).collect::<String>()
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signatures_are_hmac_sha256_of_time_and_body() {
        // HMAC-SHA256("Jefe", "0.what do ya want for nothing?"), as Python's hmac computes it.
        let signature = webhook_signature(b"Jefe", 0, b"what do ya want for nothing?");
        assert_eq!(
            signature,
            "t=0,v1=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc"
        );
        assert_ne!(signature, webhook_signature(b"Jefe", 1, b"what do ya want for nothing?"));
        assert_ne!(signature, webhook_signature(b"Jeff", 0, b"what do ya want for nothing?"));
    }

    #[test]
    fn bulk_answers_with_failed_items_are_errors() {
        assert!(bulk_outcome(r#"{"errors":false,"items":[]}"#).is_ok());
        assert!(
            bulk_outcome(
                r#"{"errors":true,"items":[{"index":{"status":201}},{"index":{"status":200}}]}"#
            )
            .is_ok()
        );
        let err =
            bulk_outcome(r#"{"errors":true,"items":[{"index":{"status":429,"error":"busy"}}]}"#)
                .unwrap_err();
        assert!(err.contains("busy"), "{err}");
        assert!(bulk_outcome("<html>").is_err());
    }

    #[test]
    fn splunk_time_is_epoch_seconds() {
        assert_eq!(epoch_seconds("2026-12-01T10:00:00.250Z"), Some(1_796_119_200.25));
        assert_eq!(epoch_seconds("yesterday"), None);
    }
}
