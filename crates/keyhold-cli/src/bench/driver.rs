//! The load driver: N workers, each one request at a time over a kept-alive connection, for a
//! fixed time; every latency goes into an HDR histogram.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::client::Call;
use super::histogram::Buckets;
use super::servers::{MachineTicks, cpu_seconds};

/// What is read from the server around the measured window, besides the driver's own clock.
#[derive(Clone, Default)]
pub struct Server {
    /// Its process, whose CPU time is read.
    pub pid: Option<u32>,
    /// A Keyhold proxy's `GET /metrics` and the route whose latency histogram is read.
    pub histogram: Option<(Call, &'static str)>,
}

impl Server {
    /// A server known by its process only.
    pub fn process(pid: Option<u32>) -> Self {
        Self { pid, histogram: None }
    }

    /// The route's histogram now (`None`: no histogram, or it could not be read: the figures
    /// that need it are left out, the run goes on).
    async fn buckets(&self) -> Option<Buckets> {
        let (call, route) = self.histogram.as_ref()?;
        let text = call.send().await.ok()?;
        Buckets::of_route(std::str::from_utf8(&text).ok()?, route).ok()
    }
}

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
    /// The proxy's own latency of the same requests (its `/metrics` histogram: from the routed
    /// request to its answer, without sockets, kernel and scheduler), as the upper bound in
    /// milliseconds of the bucket holding each percentile; `None` for other servers, or past
    /// the histogram's last bound.
    pub proxy_p50_ms_at_most: Option<f64>,
    /// 99th percentile, the same way.
    pub proxy_p99_ms_at_most: Option<f64>,
    /// 99.9th percentile, the same way.
    pub proxy_p999_ms_at_most: Option<f64>,
    /// CPU time the load driver (this process: its workers, the pacer, the reads of `/metrics`)
    /// used per request while measured, in microseconds: what each request cost the cores the
    /// server shares with it.
    pub driver_cpu_us_per_request: Option<f64>,
    /// Share of the machine's time the hypervisor gave to others while measured (`steal` in
    /// `/proc/stat`), in percent: on a VM, the noise that no code here controls.
    pub machine_steal_percent: Option<f64>,
}

/// How often the pacer wakes to release the requests that have come due.
const PACER_TICK: Duration = Duration::from_micros(200);

/// The schedule of a paced run: `rate` requests per second from `start` to `until`, request `i`
/// due at `start + i / rate` and handed to worker `i mod workers` (each worker's requests evenly
/// spaced, the workers' schedules interleaved). A worker still busy with its previous request
/// finds the next one waiting: its latency counts from when it was due (no coordinated
/// omission).
///
/// Why a thread and not `tokio::time::sleep_until` in each worker: tokio's timer fires on
/// millisecond ticks, up to 1 ms after the instant asked for, and releases a millisecond's
/// requests at once; that lateness of the driver was counted as the server's latency. The pacer
/// wakes every [`PACER_TICK`] and releases what has come due (never early), so a request waits at
/// most about a tick plus the kernel's timer slack.
fn pace(
    start: Instant,
    until: Instant,
    rate: f64,
    workers: usize,
) -> anyhow::Result<Vec<tokio::sync::mpsc::UnboundedReceiver<Instant>>> {
    let workers = workers.max(1);
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| tokio::sync::mpsc::unbounded_channel::<Instant>()).unzip();
    let every = Duration::from_secs_f64(1.0 / rate.max(f64::MIN_POSITIVE));
    std::thread::Builder::new().name("bench-pacer".into()).spawn(move || {
        let mut next = start;
        let mut i: u32 = 0;
        loop {
            let now = Instant::now();
            while next <= now {
                // Returning drops the senders, which ends the workers.
                if next >= until {
                    return;
                }
                let worker = senders.get(i as usize % workers);
                if worker.is_none_or(|w| w.send(next).is_err()) {
                    return;
                }
                i = i.saturating_add(1);
                // From the index, not by adding: no drift from rounding.
                next = start + every * i;
            }
            std::thread::sleep((next - now).max(PACER_TICK));
        }
    })?;
    Ok(receivers)
}

/// Runs `op` from `load.concurrency` workers; `keys` is how many keys one request handles;
/// `server` is what is read of the server (its CPU time, its own latency histogram).
pub async fn drive<F, Fut>(
    target: &str,
    server: &Server,
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
    // Paced (open loop): a pacer thread hands each worker the instants its requests are due.
    let mut schedules = match load.rate {
        Some(rate) => pace(start, until, rate, load.concurrency)?.into_iter().map(Some).collect(),
        None => (0..load.concurrency).map(|_| None).collect::<Vec<_>>(),
    };
    let mut workers = Vec::with_capacity(load.concurrency);
    for mut schedule in schedules.drain(..) {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut ok, mut errors) = (0u64, 0u64);
            loop {
                let sent = match &mut schedule {
                    Some(due) => match due.recv().await {
                        Some(at) => at,
                        None => break,
                    },
                    None => Instant::now(),
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
    let cpu_before = server.pid.and_then(cpu_seconds);
    let driver_before = cpu_seconds(std::process::id());
    let machine_before = MachineTicks::now();
    let buckets_before = server.buckets().await;
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
    let spent = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
    let cpu = spent(cpu_before, server.pid.and_then(cpu_seconds));
    let driver = spent(driver_before, cpu_seconds(std::process::id()));
    let machine_steal_percent =
        machine_before.zip(MachineTicks::now()).and_then(|(b, a)| a.steal_percent_since(&b));
    let window = match (buckets_before, server.buckets().await) {
        (Some(before), Some(after)) => after.since(&before).ok(),
        _ => None,
    };
    let proxy_ms = |q: f64| window.as_ref().and_then(|w| w.quantile_at_most_ms(q));
    let per = |n: u64| cpu.filter(|_| n > 0).map(|c| c * 1e6 / n as f64);
    let driver_per = driver.filter(|_| requests > 0).map(|c| c * 1e6 / requests as f64);
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
        proxy_p50_ms_at_most: proxy_ms(0.5),
        proxy_p99_ms_at_most: proxy_ms(0.99),
        proxy_p999_ms_at_most: proxy_ms(0.999),
        driver_cpu_us_per_request: driver_per,
        machine_steal_percent,
    })
}
