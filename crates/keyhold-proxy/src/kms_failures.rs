//! KMS failures of key accesses, as periodic audit events (`kms_failure`), so that a tenant
//! sees its KMS failing (unreachable, throttled, denying) in its own SIEM without one event per
//! failed request: the first failure of a KMS configuration is recorded at once, then one
//! summary per interval (with the count, and the last code and message) while failures go on.
//! The refused requests themselves are data events as always.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use keyhold_audit::{AuditEvent, EventKind, Spool};

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// Failures since the last event.
    pending: u64,
    code: u16,
    message: String,
}

/// The failure windows of every KMS configuration.
#[derive(Debug)]
pub(crate) struct KmsFailureLog {
    spool: Arc<Spool>,
    instance: String,
    interval: Duration,
    windows: Mutex<HashMap<(String, i32), Window>>,
}

impl KmsFailureLog {
    /// A log writing to `spool`; when a Tokio runtime is running, a task writes the summaries
    /// due (it stops when the log is dropped).
    pub(crate) fn start(spool: Arc<Spool>, instance: String, interval: Duration) -> Arc<Self> {
        let log = Arc::new(Self { spool, instance, interval, windows: Mutex::default() });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&log);
            runtime.spawn(flush_periodically(weak, interval));
        }
        log
    }

    /// Notes a failed KMS call of `tenant`'s configuration `config_id`.
    pub(crate) async fn note(&self, tenant: &str, config_id: i32, code: u16, message: &str) {
        let now = Instant::now();
        let report = {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            match windows.get_mut(&(tenant.to_owned(), config_id)) {
                Some(window) => {
                    window.pending += 1;
                    window.code = code;
                    message.clone_into(&mut window.message);
                    None
                }
                None => {
                    let window =
                        Window { opened: now, pending: 0, code, message: message.to_owned() };
                    windows.insert((tenant.to_owned(), config_id), window);
                    Some((1, code, message.to_owned()))
                }
            }
        };
        if let Some((count, code, message)) = report {
            self.record(tenant, config_id, count, code, message).await;
        }
    }

    /// Writes the summaries of windows whose interval has passed; forgets quiet ones.
    async fn flush(&self) {
        let now = Instant::now();
        let due: Vec<(String, i32, u64, u16, String)> = {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            let mut due = Vec::new();
            windows.retain(|(tenant, config), window| {
                if now.duration_since(window.opened) < self.interval {
                    return true;
                }
                if window.pending == 0 {
                    return false; // quiet for a whole interval: the next failure reports at once
                }
                let message = std::mem::take(&mut window.message);
                due.push((tenant.clone(), *config, window.pending, window.code, message));
                window.opened = now;
                window.pending = 0;
                true
            });
            due
        };
        for (tenant, config, count, code, message) in due {
            self.record(&tenant, config, count, code, message).await;
        }
    }

    async fn record(&self, tenant: &str, config_id: i32, count: u64, code: u16, message: String) {
        let mut event = AuditEvent::new(EventKind::Periodic, tenant, "kms_failure");
        event.outcome = "refused".to_owned();
        event.code = code;
        event.keys = count;
        event.kms_config_id = Some(config_id);
        event.proxy = self.instance.clone();
        event.custom.insert("error".to_owned(), message);
        if let Err(error) = self.spool.append(event).await {
            tracing::error!(tenant, config_id, %error, "audit spool: a KMS failure event could not be recorded");
        }
    }
}

async fn flush_periodically(log: Weak<KmsFailureLog>, interval: Duration) {
    let tick = (interval / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(tick).await;
        let Some(log) = log.upgrade() else { break };
        log.flush().await;
    }
}
