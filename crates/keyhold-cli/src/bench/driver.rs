//! The load driver: N workers, each one request at a time over a kept-alive connection, for a
//! fixed time; every latency goes into an HDR histogram.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::servers::cpu_seconds;

/// How hard and how long to drive.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Requests in flight (one per worker).
    pub concurrency: usize,
    /// How long to measure.
    pub duration: Duration,
    /// Driven first, not measured (connections, caches, leases).
    pub warmup: Duration,
    /// Requests per second over all workers, spread evenly (open loop: latency counts from the
    /// time a request was due, so a stall is not hidden); `None`: as fast as answers come.
    pub rate: Option<f64>,
}

/// What one scenario did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `keyhold` or `openbao`.
    pub target: String,
    /// `wrap`, `unwrap`, `batch-wrap-1000`, …
    pub scenario: String,
    /// Whether the proxy's tenant leased keys (`None` for OpenBao).
    pub leasing: Option<bool>,
    /// Requests in flight.
    pub concurrency: usize,
    /// The paced rate, if any.
    pub rate: Option<f64>,
    /// Successful requests measured.
    pub requests: u64,
    /// Failed requests (each also stops nothing: the run goes on).
    pub errors: u64,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Keys per second (requests × keys per request).
    pub keys_per_sec: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// CPU time the server process used per request while measured (user + system, all its
    /// threads), in microseconds: its cost per operation, whoever else shares the machine.
    pub server_cpu_us_per_request: Option<f64>,
    /// The same per key (batches).
    pub server_cpu_us_per_key: Option<f64>,
    /// CPU cores the server process kept busy on average while measured.
    pub server_cores: Option<f64>,
}

/// Runs `op` from `load.concurrency` workers; `keys` is how many keys one request handles;
/// `server` is the process whose CPU time is measured, if it is known.
pub async fn drive<F, Fut>(
    target: &str,
    server: Option<u32>,
    scenario: &str,
    leasing: Option<bool>,
    keys: u64,
    load: Load,
    op: F,
) -> anyhow::Result<Outcome>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    // The first request must work: a misconfigured run fails here, not as a million errors.
    op().await.with_context(|| format!("{target} {scenario}: the first request failed"))?;
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let until = measure_from + load.duration;
    let per_worker_interval = load
        .rate
        .map(|rate| Duration::from_secs_f64(load.concurrency as f64 / rate.max(f64::MIN_POSITIVE)));
    let mut workers = Vec::with_capacity(load.concurrency);
    for worker in 0..load.concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut ok, mut errors) = (0u64, 0u64);
            // Paced workers start spread over one interval.
            let mut due = per_worker_interval
                .map(|every| start + every.mul_f64(worker as f64 / load.concurrency.max(1) as f64));
            loop {
                let sent = match (due, per_worker_interval) {
                    (Some(at), Some(every)) => {
                        tokio::time::sleep_until(at.into()).await;
                        due = Some(at + every);
                        at
                    }
                    _ => Instant::now(),
                };
                if sent >= until {
                    break;
                }
                let result = op().await;
                let done = Instant::now();
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(()) => {
                        ok += 1;
                        let micros = done.saturating_duration_since(sent).as_micros();
                        histogram
                            .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                    }
                    Err(_) => errors += 1,
                }
            }
            anyhow::Ok((histogram, ok, errors))
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = server.and_then(cpu_seconds);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut requests, mut errors) = (0u64, 0u64);
    for worker in workers {
        let (h, ok, failed) = worker.await??;
        histogram.add(&h)?;
        requests += ok;
        errors += failed;
    }
    // The last requests end a little after `until`: CPU is counted up to the last answer.
    let measured = measure_from.elapsed().as_secs_f64();
    let cpu = match (cpu_before, server.and_then(cpu_seconds)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let per = |n: u64| cpu.filter(|_| n > 0).map(|c| c * 1e6 / n as f64);
    let seconds = load.duration.as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Outcome {
        target: target.to_owned(),
        scenario: scenario.to_owned(),
        leasing,
        concurrency: load.concurrency,
        rate: load.rate,
        requests,
        errors,
        requests_per_sec: requests as f64 / seconds,
        keys_per_sec: (requests * keys) as f64 / seconds,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: histogram.max() as f64 / 1000.0,
        server_cpu_us_per_request: per(requests),
        server_cpu_us_per_key: per(requests * keys),
        server_cores: cpu.map(|c| c / measured.max(f64::MIN_POSITIVE)),
    })
}
