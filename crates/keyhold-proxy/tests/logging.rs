//! What the proxy's own log says about key accesses: with an audit trail, the trail is the record
//! and a granted access is logged at DEBUG only; refusals, and accesses without a trail, at INFO.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::{Arc, Mutex};

use common::{TestProxy, meta};
use http::StatusCode;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};

/// The level and outcome of every `key access` line logged.
#[derive(Clone, Default)]
struct KeyAccessLines(Arc<Mutex<Vec<(Level, String)>>>);

impl<S: Subscriber> Layer<S> for KeyAccessLines {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "keyhold::audit" {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        if line.key_access {
            self.0.lock().unwrap().push((*event.metadata().level(), line.outcome));
        }
    }
}

#[derive(Default)]
struct Line {
    key_access: bool,
    outcome: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "outcome" {
            self.outcome = value.to_owned();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}") == "key access" {
            self.key_access = true;
        }
    }
}

/// A wrap of a configured tenant, then one of an unknown tenant, with `lines` capturing.
async fn granted_then_refused(p: &TestProxy) -> Vec<(Level, String)> {
    let lines = KeyAccessLines::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(lines.clone()));
    let (status, _) = p.post("/api/1/document/wrap", meta("tenant-a")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = p.post("/api/1/document/wrap", meta("no-such-tenant")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    lines.0.lock().unwrap().clone()
}

#[tokio::test]
async fn with_a_trail_granted_accesses_are_logged_at_debug_and_refusals_at_info() {
    let p = TestProxy::new();
    let lines = granted_then_refused(&p).await;
    assert_eq!(lines, [(Level::DEBUG, "granted".to_owned()), (Level::INFO, "refused".to_owned())],);
}

#[tokio::test]
async fn without_a_trail_every_access_is_logged_at_info() {
    let p = TestProxy::with_config(|t| {
        let (start, end) = (t.find("[audit]").unwrap(), t.find("[local_keystore]").unwrap());
        t.replace_range(start..end, "");
    });
    let lines = granted_then_refused(&p).await;
    assert_eq!(lines, [(Level::INFO, "granted".to_owned()), (Level::INFO, "refused".to_owned())],);
}
