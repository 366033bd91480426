//! One KMS call as the proxy makes it: under the overall deadline, counted and timed in the
//! metrics, failures counted by the wire code they map to. Key operations (service.rs) and lease
//! renewals and unwraps (lease.rs) both go through it.

use std::future::Future;
use std::time::{Duration, Instant};

use keyhold_kms::KmsError;

use crate::error::{KmsOperation, ServiceError};
use crate::metrics::{KmsErrorLabels, KmsKindLabels, KmsLabels, Metrics};

/// Where a KMS call goes: which tenant configuration, which backend, with what deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KmsCallSite<'a> {
    pub metrics: &'a Metrics,
    pub tenant: &'a str,
    pub config_id: i32,
    /// The backend kind (`aws`, `local`, …), for the latency histogram.
    pub backend: &'static str,
    /// Longest the call may take in all; after it the answer is "unreachable".
    pub timeout: Duration,
}

impl KmsCallSite<'_> {
    /// Runs `call` as `operation` (a metrics label) of `kind`.
    pub async fn call<T>(
        &self,
        operation: &'static str,
        kind: KmsOperation,
        call: impl Future<Output = Result<T, KmsError>>,
    ) -> Result<T, KmsError> {
        let tenant = self.tenant.to_owned();
        self.metrics
            .kms_requests
            .get_or_create(&KmsLabels { tenant: tenant.clone(), config: self.config_id, operation })
            .inc();
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(KmsError::Unreachable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        };
        self.metrics
            .kms_duration
            .get_or_create(&KmsKindLabels { kind: self.backend, operation })
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            let code = ServiceError::Kms { operation: kind, source: error.clone() }.code().code();
            self.metrics
                .kms_errors
                .get_or_create(&KmsErrorLabels { tenant, config: self.config_id, operation, code })
                .inc();
        }
        result
    }
}
