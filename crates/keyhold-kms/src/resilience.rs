//! Timeouts, retries and a circuit breaker around any [`Kms`].
//!
//! A tenant's KMS is someone else's server. When it is slow the proxy must not wait forever,
//! when it blinks the proxy should try again, and when it is down the proxy must stop sending it
//! traffic, so that requests for that tenant fail fast (code 208, "unreachable") instead of
//! holding connections and tasks that other tenants need.
//!
//! - every attempt has its own timeout ([`RetryPolicy::attempt_timeout`]);
//! - only transient answers ([`KmsError::is_transient`]) are retried, at most
//!   [`RetryPolicy::max_retries`] times, after a "full jitter" exponential backoff (a random delay
//!   in `0..=min(max_delay, base_delay·2ⁿ)`, so that many proxies do not retry in step);
//! - [`BreakerPolicy::failure_threshold`] consecutive *unreachable* answers open the circuit for
//!   [`BreakerPolicy::cooldown`]: calls fail at once without touching the KMS. After the cooldown
//!   one call goes through as a probe: success closes the circuit, failure opens it again.
//!   Throttling does not open the circuit (the KMS is there, just busy; backoff is the remedy), and
//!   nor do denials or bad ciphertexts (those are answers, not outages).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyhold_core::secret::Dek;

use crate::{GeneratedKey, KeyContext, Kms, KmsError};

/// How each call is timed and retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The longest one attempt may take before it counts as unreachable.
    pub attempt_timeout: Duration,
    /// Retries after the first attempt, for transient errors only.
    pub max_retries: u32,
    /// The backoff ceiling before the first retry; doubles for each further retry.
    pub base_delay: Duration,
    /// The largest backoff ceiling.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(5),
            max_retries: 2,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// When the circuit opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive unreachable answers that open the circuit (0: never open).
    pub failure_threshold: u32,
    /// How long the circuit stays open before a probe is let through.
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self { failure_threshold: 5, cooldown: Duration::from_secs(5) }
    }
}

/// The circuit's state, for health reports and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls fail at once until the cooldown ends.
    Open,
    /// One probe call is in flight; the others fail at once.
    HalfOpen,
}

#[derive(Debug)]
enum Breaker {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// A [`Kms`] with per-attempt timeouts, bounded retries with jitter, and a circuit breaker.
#[derive(Debug)]
pub struct ResilientKms {
    inner: Arc<dyn Kms>,
    retry: RetryPolicy,
    breaker_policy: BreakerPolicy,
    breaker: Mutex<Breaker>,
}

/// What the breaker allows for one call.
enum Admission {
    /// A normal call.
    Call,
    /// The probe after a cooldown.
    Probe,
}

impl ResilientKms {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Kms>, retry: RetryPolicy, breaker: BreakerPolicy) -> Self {
        Self {
            inner,
            retry,
            breaker_policy: breaker,
            breaker: Mutex::new(Breaker::Closed { consecutive_failures: 0 }),
        }
    }

    /// The circuit's state now.
    pub fn circuit_state(&self) -> CircuitState {
        match *self.lock() {
            Breaker::Closed { .. } => CircuitState::Closed,
            Breaker::Open { until } if Instant::now() < until => CircuitState::Open,
            // The cooldown is over: the next call will be the probe.
            Breaker::Open { .. } | Breaker::HalfOpen => CircuitState::HalfOpen,
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn Kms> {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn admit(&self) -> Result<Admission, KmsError> {
        let mut breaker = self.lock();
        match *breaker {
            Breaker::Closed { .. } => Ok(Admission::Call),
            Breaker::Open { until } if Instant::now() < until => Err(circuit_open(until)),
            Breaker::Open { .. } => {
                *breaker = Breaker::HalfOpen;
                Ok(Admission::Probe)
            }
            Breaker::HalfOpen => {
                Err(KmsError::Unreachable("circuit open: a probe of the KMS is in flight".into()))
            }
        }
    }

    /// Records one attempt's outcome.
    fn record(&self, outcome: Result<(), &KmsError>) {
        let mut breaker = self.lock();
        let outage = matches!(outcome, Err(KmsError::Unreachable(_)));
        let threshold = self.breaker_policy.failure_threshold;
        *breaker = match (&*breaker, outage) {
            (_, false) => Breaker::Closed { consecutive_failures: 0 },
            (Breaker::Closed { consecutive_failures }, true) => {
                let failures = consecutive_failures.saturating_add(1);
                if threshold != 0 && failures >= threshold {
                    tracing::warn!(kms = self.inner.kind(), failures, "KMS circuit opened");
                    Breaker::Open { until: Instant::now() + self.breaker_policy.cooldown }
                } else {
                    Breaker::Closed { consecutive_failures: failures }
                }
            }
            (Breaker::HalfOpen | Breaker::Open { .. }, true) => {
                Breaker::Open { until: Instant::now() + self.breaker_policy.cooldown }
            }
        };
    }

    /// Runs `op` under the policies.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, KmsError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, KmsError>>,
    {
        let mut attempt = 0u32;
        loop {
            let admission = self.admit()?;
            let probe = ProbeGuard { kms: self, armed: matches!(admission, Admission::Probe) };
            let result = match tokio::time::timeout(self.retry.attempt_timeout, op()).await {
                Ok(result) => result,
                Err(_) => Err(KmsError::Unreachable(format!(
                    "no answer within {} ms",
                    self.retry.attempt_timeout.as_millis()
                ))),
            };
            self.record(result.as_ref().map(|_| ()));
            probe.disarm();
            match result {
                Err(e) if e.is_transient() && attempt < self.retry.max_retries => {
                    // A failed probe reopened the circuit: retrying now would only fail fast.
                    if matches!(admission, Admission::Probe) {
                        return Err(e);
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Full-jitter backoff before retry number `attempt + 1`.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .retry
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.retry.max_delay);
        let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        let random = keyhold_core::random::random_array::<8>().map(u64::from_le_bytes);
        // Without randomness, wait the whole ceiling: slower, never wrong.
        let delay_us = match random {
            Ok(r) if ceiling_us > 0 => r % (ceiling_us + 1),
            _ => ceiling_us,
        };
        Duration::from_micros(delay_us)
    }
}

/// If the caller drops a probe before it ends (its own deadline passed), the circuit must not
/// stay half-open forever: the next call becomes the probe.
struct ProbeGuard<'a> {
    kms: &'a ResilientKms,
    armed: bool,
}

impl ProbeGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            *self.kms.lock() = Breaker::Open { until: Instant::now() };
        }
    }
}

fn circuit_open(until: Instant) -> KmsError {
    let left = until.saturating_duration_since(Instant::now());
    KmsError::Unreachable(format!(
        "circuit open after repeated failures; next attempt in {} ms",
        left.as_millis()
    ))
}

#[async_trait]
impl Kms for ResilientKms {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn key_version(&self, wrapped: &[u8]) -> Option<String> {
        self.inner.key_version(wrapped)
    }

    async fn generate(&self, context: &KeyContext<'_>) -> Result<GeneratedKey, KmsError> {
        self.call(|| self.inner.generate(context)).await
    }

    async fn wrap(&self, dek: &Dek, context: &KeyContext<'_>) -> Result<Vec<u8>, KmsError> {
        self.call(|| self.inner.wrap(dek, context)).await
    }

    async fn unwrap(&self, wrapped: &[u8], context: &KeyContext<'_>) -> Result<Dek, KmsError> {
        self.call(|| self.inner.unwrap(wrapped, context)).await
    }

    async fn health(&self) -> Result<(), KmsError> {
        self.call(|| self.inner.health()).await
    }
}

#[cfg(test)]
mod tests {
    //! The policies are ours, so they are tested against a scripted backend; the real backends'
    //! behaviour when down is tested against real servers in each backend's conformance test.
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A backend that answers from a script, then succeeds; `Hang` never answers.
    #[derive(Debug, Default)]
    struct Scripted {
        script: Mutex<VecDeque<Step>>,
        calls: AtomicU32,
    }

    #[derive(Debug, Clone)]
    enum Step {
        Fail(KmsError),
        Hang,
    }

    impl Scripted {
        fn new(steps: impl IntoIterator<Item = Step>) -> Arc<Self> {
            Arc::new(Self { script: Mutex::new(steps.into_iter().collect()), ..Self::default() })
        }
        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Kms for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }
        async fn wrap(&self, _: &Dek, _: &KeyContext<'_>) -> Result<Vec<u8>, KmsError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let step = self.script.lock().unwrap().pop_front();
            match step {
                None => Ok(vec![1, 2, 3]),
                Some(Step::Fail(e)) => Err(e),
                Some(Step::Hang) => std::future::pending().await,
            }
        }
        async fn unwrap(&self, _: &[u8], _: &KeyContext<'_>) -> Result<Dek, KmsError> {
            unreachable!("not used")
        }
        async fn health(&self) -> Result<(), KmsError> {
            Ok(())
        }
    }

    fn quick(retries: u32, threshold: u32) -> (RetryPolicy, BreakerPolicy) {
        (
            RetryPolicy {
                attempt_timeout: Duration::from_millis(200),
                max_retries: retries,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(4),
            },
            BreakerPolicy { failure_threshold: threshold, cooldown: Duration::from_millis(300) },
        )
    }

    fn down() -> Step {
        Step::Fail(KmsError::Unreachable("connection refused".into()))
    }

    async fn wrap(kms: &ResilientKms) -> Result<Vec<u8>, KmsError> {
        kms.wrap(&Dek::generate().unwrap(), &KeyContext::new("t", 1)).await
    }

    #[tokio::test]
    async fn transient_errors_are_retried_up_to_the_limit() {
        let backend = Scripted::new([down(), Step::Fail(KmsError::Throttled)]);
        let (retry, breaker) = quick(2, 0);
        let kms = ResilientKms::new(backend.clone(), retry, breaker);
        assert_eq!(wrap(&kms).await.unwrap(), [1, 2, 3]);
        assert_eq!(backend.calls(), 3);

        let backend = Scripted::new([down(), down(), down(), down()]);
        let kms = ResilientKms::new(backend.clone(), retry, breaker);
        assert!(matches!(wrap(&kms).await, Err(KmsError::Unreachable(_))));
        assert_eq!(backend.calls(), 3, "one attempt and two retries");
    }

    #[tokio::test]
    async fn answers_are_never_retried() {
        for answer in [
            KmsError::AccessDenied("no".into()),
            KmsError::KeyDisabled("off".into()),
            KmsError::InvalidCiphertext,
            KmsError::ConfigurationInvalid("no such key".into()),
        ] {
            let backend = Scripted::new([Step::Fail(answer.clone())]);
            let (retry, breaker) = quick(3, 1);
            let kms = ResilientKms::new(backend.clone(), retry, breaker);
            assert_eq!(wrap(&kms).await.unwrap_err(), answer);
            assert_eq!(backend.calls(), 1);
            assert_eq!(kms.circuit_state(), CircuitState::Closed, "{answer:?} opened the circuit");
        }
    }

    #[tokio::test]
    async fn a_hanging_kms_times_out_as_unreachable() {
        let backend = Scripted::new([Step::Hang]);
        let (retry, breaker) = quick(0, 0);
        let kms = ResilientKms::new(backend, retry, breaker);
        let err = wrap(&kms).await.unwrap_err();
        assert!(matches!(&err, KmsError::Unreachable(m) if m.contains("200 ms")), "{err:?}");
    }

    #[tokio::test]
    async fn the_circuit_opens_fails_fast_then_probes_and_closes() {
        let backend = Scripted::new([down(), down(), down()]);
        let (retry, breaker) = quick(0, 3);
        let kms = ResilientKms::new(backend.clone(), retry, breaker);
        for _ in 0..3 {
            assert!(wrap(&kms).await.is_err());
        }
        assert_eq!(kms.circuit_state(), CircuitState::Open);
        // Open: the backend is not called.
        let err = wrap(&kms).await.unwrap_err();
        assert!(matches!(&err, KmsError::Unreachable(m) if m.contains("circuit open")), "{err:?}");
        assert_eq!(backend.calls(), 3);

        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(kms.circuit_state(), CircuitState::HalfOpen);
        // The probe succeeds (script exhausted): closed again.
        assert_eq!(wrap(&kms).await.unwrap(), [1, 2, 3]);
        assert_eq!(kms.circuit_state(), CircuitState::Closed);
        assert_eq!(backend.calls(), 4);
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_the_circuit_without_retrying() {
        let backend = Scripted::new([down(), down()]);
        let (retry, breaker) = quick(3, 1);
        let kms = ResilientKms::new(backend.clone(), retry, breaker);
        assert!(wrap(&kms).await.is_err());
        assert_eq!(backend.calls(), 1, "the first failure opened the circuit: no retries");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(wrap(&kms).await.is_err());
        assert_eq!(backend.calls(), 2, "one probe, no retries");
        assert_eq!(kms.circuit_state(), CircuitState::Open);
    }

    #[tokio::test]
    async fn a_cancelled_probe_lets_the_next_call_probe() {
        let backend = Scripted::new([down(), Step::Hang]);
        let (retry, breaker) = quick(0, 1);
        let kms = ResilientKms::new(backend.clone(), retry, breaker);
        assert!(wrap(&kms).await.is_err());
        tokio::time::sleep(Duration::from_millis(350)).await;
        // The probe hangs and its caller gives up first.
        let cancelled = tokio::time::timeout(Duration::from_millis(20), wrap(&kms)).await;
        assert!(cancelled.is_err());
        assert_eq!(wrap(&kms).await.unwrap(), [1, 2, 3]);
        assert_eq!(backend.calls(), 3);
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        let (mut retry, breaker) = quick(5, 0);
        retry.base_delay = Duration::from_millis(10);
        retry.max_delay = Duration::from_millis(25);
        let kms = ResilientKms::new(Scripted::new([]), retry, breaker);
        for attempt in 0..40 {
            let ceiling_ms = match attempt {
                0 => 10,
                1 => 20,
                _ => 25,
            };
            assert!(kms.backoff(attempt) <= Duration::from_millis(ceiling_ms), "attempt {attempt}");
        }
        // Jitter: the delays are not all the same.
        let delays: std::collections::HashSet<_> = (0..50).map(|_| kms.backoff(3)).collect();
        assert!(delays.len() > 1);
    }
}
