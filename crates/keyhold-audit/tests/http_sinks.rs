//! Splunk HEC, Datadog logs and the signed webhook, against their documented HTTP contracts.
//!
//! No Splunk or Datadog can run here, so each receiver below checks what the vendor's
//! documentation requires of a request, and answers as documented:
//! - Splunk HEC (docs.splunk.com, "Format events for HTTP Event Collector" and "HTTP Event
//!   Collector REST API endpoints"): `POST /services/collector/event`, header
//!   `Authorization: Splunk <token>`, a body of JSON event objects one after the other (not an
//!   array), each with `event` and optionally `time` (epoch seconds), `host`, `source`,
//!   `sourcetype`, `index`; success is 200 `{"text":"Success","code":0}`, a bad token 403
//!   `{"text":"Invalid token","code":4}`, a busy server 503 (code 9).
//! - Datadog (docs.datadoghq.com, "Logs API v2 — Send logs"): `POST /api/v2/logs`, header
//!   `DD-API-KEY`, `Content-Type: application/json`, a JSON array of at most 1000 logs with
//!   `message`, `ddsource`, `ddtags`, `hostname`, `service`; at most 5 MB per payload and 1 MB
//!   per log; success is 202 `{}`, a bad key 403.
//! - The webhook: our own contract (docs/audit.md): JSON lines, `X-Keyhold-Signature:
//!   t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." ‖ body)>`.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use keyhold_audit::event::EventKind;
use keyhold_audit::sink::{SinkContext, SinkSettings, build};
use keyhold_audit::{AuditEvent, Delivery, DeliveryOptions, Spool, Target};
use serde_json::Value;
use zeroize::Zeroizing;

#[derive(Clone, Default)]
struct Receiver {
    /// Records received (their `seq`), in order.
    seqs: Arc<Mutex<Vec<u64>>>,
    /// Requests still to refuse with 503 before accepting.
    refuse: Arc<Mutex<u32>>,
    /// Contract violations seen.
    violations: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn violation(&self, what: String) -> (StatusCode, String) {
        self.violations.lock().unwrap().push(what.clone());
        (StatusCode::BAD_REQUEST, what)
    }

    fn should_refuse(&self) -> bool {
        let mut refuse = self.refuse.lock().unwrap();
        if *refuse > 0 {
            *refuse -= 1;
            return true;
        }
        false
    }
}

const TOKEN: &str = "11111111-2222-3333-4444-555555555555";

async fn splunk(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let expected = format!("Splunk {TOKEN}");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (StatusCode::FORBIDDEN, r#"{"text":"Invalid token","code":4}"#.into());
    }
    if r.should_refuse() {
        return (StatusCode::SERVICE_UNAVAILABLE, r#"{"text":"Server is busy","code":9}"#.into());
    }
    // Concatenated JSON objects.
    let mut seqs = Vec::new();
    for event in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
        let Ok(event) = event else { return r.violation("body is not JSON objects".into()) };
        let Some(object) = event.as_object() else {
            return r.violation("an event is not an object".into());
        };
        for key in object.keys() {
            if !["event", "time", "host", "source", "sourcetype", "index", "fields"]
                .contains(&key.as_str())
            {
                return r.violation(format!("unknown HEC key {key}"));
            }
        }
        if !event["time"].is_number()
            || event["sourcetype"] != "keyhold:audit"
            || event["host"] != "proxy-1"
        {
            return r.violation(format!("time/sourcetype/host wrong in {event}"));
        }
        let Some(seq) = event["event"]["seq"].as_u64() else {
            return r.violation("event is not a record".into());
        };
        seqs.push(seq);
    }
    if seqs.is_empty() {
        return (StatusCode::BAD_REQUEST, r#"{"text":"No data","code":5}"#.into());
    }
    r.seqs.lock().unwrap().extend(seqs);
    (StatusCode::OK, r#"{"text":"Success","code":0}"#.into())
}

async fn datadog(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    if headers.get("dd-api-key").and_then(|v| v.to_str().ok()) != Some(TOKEN) {
        return (StatusCode::FORBIDDEN, r#"{"errors":["Forbidden"]}"#.into());
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return r.violation("content type".into());
    }
    if body.len() > 5 * 1024 * 1024 {
        return (StatusCode::PAYLOAD_TOO_LARGE, "{}".into());
    }
    if r.should_refuse() {
        return (StatusCode::SERVICE_UNAVAILABLE, "{}".into());
    }
    let Ok(Value::Array(logs)) = serde_json::from_slice::<Value>(&body) else {
        return r.violation("body is not a JSON array".into());
    };
    if logs.len() > 1000 {
        return r.violation(format!("{} logs in one payload", logs.len()));
    }
    let mut seqs = Vec::new();
    for log in &logs {
        let Some(message) = log["message"].as_str() else {
            return r.violation("no message".into());
        };
        if message.len() > 1024 * 1024
            || log["ddsource"] != "keyhold"
            || log["service"] != "keyhold"
            || log["hostname"] != "proxy-1"
        {
            return r.violation(format!("bad log {log}"));
        }
        let tags = log["ddtags"].as_str().unwrap_or_default();
        if !tags.split(',').any(|t| t == "tenant:acme") || !tags.contains("env:test") {
            return r.violation(format!("tags {tags}"));
        }
        let record: Value = serde_json::from_str(message).unwrap_or_default();
        let Some(seq) = record["seq"].as_u64() else {
            return r.violation("message is not a record".into());
        };
        seqs.push(seq);
    }
    r.seqs.lock().unwrap().extend(seqs);
    (StatusCode::ACCEPTED, "{}".into())
}

async fn webhook(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let signature =
        headers.get("x-keyhold-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Some((t, v1)) = signature.strip_prefix("t=").and_then(|s| s.split_once(",v1=")) else {
        return (StatusCode::UNAUTHORIZED, "no signature".into());
    };
    let expected =
        keyhold_audit::sink::webhook_signature(TOKEN.as_bytes(), t.parse().unwrap(), &body);
    if !expected.ends_with(&format!(",v1={v1}")) {
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    if r.should_refuse() {
        return (StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    let text = String::from_utf8(body.to_vec()).unwrap();
    let verified = keyhold_audit::export::verify_export(
        text.as_bytes(),
        keyhold_audit::export::ExportFormat::JsonLines,
        Some("acme"),
        true,
        None,
    );
    if verified.is_err() {
        return r.violation("a batch that does not verify".into());
    }
    let seqs =
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap());
    r.seqs.lock().unwrap().extend(seqs);
    (StatusCode::NO_CONTENT, String::new())
}

async fn serve(receiver: Receiver) -> String {
    let app = Router::new()
        .route("/services/collector/event", post(splunk))
        .route("/api/v2/logs", post(datadog))
        .route("/hook", post(webhook))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A spool holding `n` events of `acme`, and a delivery of it with `settings`.
async fn spool_and_deliver(
    settings: &SinkSettings,
    credential: &str,
    n: u64,
    retry_min: Duration,
) -> (tempfile::TempDir, Arc<Spool>, Delivery) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1024).unwrap();
    for _ in 0..n {
        spool.append(AuditEvent::new(EventKind::Data, "acme", "wrap")).await.unwrap();
    }
    let context = SinkContext { base_dir: Path::new("."), instance: "proxy-1", tenant: "acme" };
    let sink = build(settings, Some(Zeroizing::new(credential.to_owned())), &context).unwrap();
    let delivery = Delivery::start(
        &spool,
        vec![Target { tenant: "acme".into(), name: "siem".into(), sink }],
        DeliveryOptions { retry_min, retry_max: retry_min * 5, ..Default::default() },
    )
    .unwrap();
    (dir, spool, delivery)
}

/// Delivers `n` events with `settings` and returns what arrived.
async fn deliver(settings: SinkSettings, receiver: &Receiver, n: u64) -> Vec<u64> {
    let (_dir, spool, delivery) =
        spool_and_deliver(&settings, TOKEN, n, Duration::from_millis(20)).await;
    for _ in 0..500 {
        if spool.backlog("acme") == 0 || !receiver.violations.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_error = delivery.status()[0].last_error.lock().unwrap().clone();
    assert!(
        receiver.violations.lock().unwrap().is_empty(),
        "{:?}",
        receiver.violations.lock().unwrap()
    );
    assert_eq!(spool.backlog("acme"), 0, "not all delivered; last error {last_error:?}");
    receiver.seqs.lock().unwrap().clone()
}

/// Delivers one event with a wrong credential: nothing arrives, the backlog stays, the error
/// says why.
async fn refused_with_wrong_credential(settings: SinkSettings, receiver: &Receiver) -> String {
    let (_dir, spool, delivery) =
        spool_and_deliver(&settings, "wrong", 1, Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.seqs.lock().unwrap().is_empty());
    assert_eq!(spool.backlog("acme"), 1);
    delivery.status()[0].last_error.lock().unwrap().clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_gets_every_record_through_a_busy_collector() {
    let receiver = Receiver::default();
    *receiver.refuse.lock().unwrap() = 2;
    let url = serve(receiver.clone()).await;
    let settings = SinkSettings::Splunk {
        url,
        index: None,
        sourcetype: "keyhold:audit".into(),
        ca_cert_file: None,
    };
    // 1200 records: several batches of 500.
    let seqs = deliver(settings.clone(), &receiver, 1200).await;
    assert_eq!(seqs, (1..=1200).collect::<Vec<_>>());
    let other = Receiver::default();
    let url = serve(other.clone()).await;
    let settings = SinkSettings::Splunk {
        url,
        index: None,
        sourcetype: "keyhold:audit".into(),
        ca_cert_file: None,
    };
    let error = refused_with_wrong_credential(settings, &other).await;
    assert!(error.contains("403") && error.contains("Invalid token"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datadog_gets_every_record_in_payloads_of_at_most_1000_logs() {
    let receiver = Receiver::default();
    *receiver.refuse.lock().unwrap() = 1;
    let url = serve(receiver.clone()).await;
    let settings = SinkSettings::Datadog {
        url,
        service: "keyhold".into(),
        tags: Some("env:test".into()),
        ca_cert_file: None,
    };
    let seqs = deliver(settings.clone(), &receiver, 2500).await;
    assert_eq!(seqs, (1..=2500).collect::<Vec<_>>());
    let other = Receiver::default();
    let url = serve(other.clone()).await;
    let settings = SinkSettings::Datadog {
        url,
        service: "keyhold".into(),
        tags: Some("env:test".into()),
        ca_cert_file: None,
    };
    let error = refused_with_wrong_credential(settings, &other).await;
    assert!(error.contains("403"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_signed_verifiable_batches() {
    let receiver = Receiver::default();
    *receiver.refuse.lock().unwrap() = 1;
    let url = serve(receiver.clone()).await;
    let settings = SinkSettings::Webhook { url: format!("{url}/hook"), ca_cert_file: None };
    let seqs = deliver(settings, &receiver, 700).await;
    assert_eq!(seqs, (1..=700).collect::<Vec<_>>());
    // Signed with another secret, the receiver refuses it: nothing is delivered.
    let other = Receiver::default();
    let url = serve(other.clone()).await;
    let settings = SinkSettings::Webhook { url: format!("{url}/hook"), ca_cert_file: None };
    let error = refused_with_wrong_credential(settings, &other).await;
    assert!(error.contains("401"), "{error}");
}
