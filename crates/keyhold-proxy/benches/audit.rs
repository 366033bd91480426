//! Wrap operations per second with the audit trail on and off, in one run (docs/benchmarks.md
//! §4). Leasing on and a local keystore, so the KMS is not what is measured.
//!
//! - `wrap-http/256-at-once`: the whole proxy over HTTP/1.1 on loopback, 256 requests in flight
//!   (the client shares the machine). Audit on = every access spooled and synced before it is
//!   answered, *and* delivered to a syslog sink (a TCP receiver in this process that reads and
//!   discards).
//! - `wrap/1-at-once`, `wrap/64-at-once`: the key service in process, without HTTP: what the
//!   spool's sync costs when nothing else does.
//!
//! ```sh
//! cargo bench -p keyhold-proxy --bench audit
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyhold_core::metadata::RequestMetadata;
use keyhold_proxy::{AppState, Proxy, ProxyConfig, bootstrap};

const TENANT: &str = "bench-tenant";
const HTTP_IN_FLIGHT: usize = 256;

/// A configuration with audit on (spool, and a syslog sink to `sink` if given) or off.
fn config(dir: &std::path::Path, audit: bool, sink: Option<SocketAddr>) -> ProxyConfig {
    let data = bootstrap::init_data_dir(dir, &[TENANT], "127.0.0.1:0").unwrap();
    let mut text = std::fs::read_to_string(&data.config_path).unwrap();
    if !audit {
        let start = text.find("[audit]\n").unwrap();
        let end = text.find("[local_keystore]\n").unwrap();
        text.replace_range(start..end, "");
    }
    if let Some(sink) = sink {
        // The bench tenant is the last table: its sink goes at the end.
        text.push_str(&format!(
            "\n[[tenants.audit_sinks]]\nname = \"siem\"\ntype = \"syslog\"\naddress = \"{sink}\"\n"
        ));
    }
    std::fs::write(&data.config_path, text).unwrap();
    let config = ProxyConfig::load(&data.config_path).unwrap();
    assert_eq!(config.audit.is_some(), audit);
    config
}

/// A syslog receiver that reads and discards.
async fn discarding_receiver() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut connection, &mut tokio::io::sink()).await;
            });
        }
    });
    addr
}

/// A running proxy; returns its wrap URL and API key.
async fn server(dir: &std::path::Path, audit: bool) -> (String, String) {
    let sink = if audit { Some(discarding_receiver().await) } else { None };
    let config = config(dir, audit, sink);
    let proxy = Proxy::bind(&config).await.unwrap();
    let addr = proxy.local_addr().unwrap();
    tokio::spawn(proxy.run(std::future::pending()));
    let api_key = std::fs::read_to_string(dir.join("api-key")).unwrap().trim().to_owned();
    (format!("http://{addr}/api/1/document/wrap"), format!("cmk {api_key}"))
}

fn http(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let (on_dir, off_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let servers = runtime.block_on(async {
        [
            ("audit-on", server(on_dir.path(), true).await),
            ("audit-off", server(off_dir.path(), false).await),
        ]
    });
    let client = reqwest::Client::builder().pool_max_idle_per_host(HTTP_IN_FLIGHT).build().unwrap();
    let body = serde_json::json!({"tenantId": TENANT, "iclFields": {"requestingId": "bench"}});
    let mut group = c.benchmark_group(format!("wrap-http/{HTTP_IN_FLIGHT}-at-once"));
    group.throughput(Throughput::Elements(HTTP_IN_FLIGHT as u64));
    group.sample_size(30);
    for (mode, (url, auth)) in &servers {
        group.bench_function(*mode, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let requests = (0..HTTP_IN_FLIGHT)
                        .map(|_| client.post(url).header("authorization", auth).json(&body).send());
                    for response in futures::future::join_all(requests).await {
                        assert!(response.unwrap().status().is_success());
                    }
                })
            })
        });
    }
    group.finish();
    alternate(runtime, &servers, &client, &body);
    // Every answered wrap is in the spool (the current segment: delivered ones are deleted).
    let spool = keyhold_audit::spool::tenant_file(&on_dir.path().join("audit"), TENANT);
    let text = std::fs::read_to_string(spool).unwrap();
    keyhold_audit::verify(text.as_bytes(), true).unwrap();
}

/// Audit on and off in turn, a few seconds each, with `HTTP_IN_FLIGHT` requests always in
/// flight; the order within a round alternates. This machine's speed drifts by ±10 % over
/// minutes, so the ratio of two separate criterion runs is noisy; the median of these
/// side-by-side rounds is the figure docs/benchmarks.md §4 reports.
fn alternate(
    runtime: &tokio::runtime::Runtime,
    servers: &[(&str, (String, String)); 2],
    client: &reqwest::Client,
    body: &serde_json::Value,
) {
    const ROUNDS: usize = 7;
    const EACH: std::time::Duration = std::time::Duration::from_secs(3);
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let mut rates = [0.0f64; 2];
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (url, auth) = &servers[i].1;
            rates[i] = runtime.block_on(rate(client, url, auth, body, EACH));
        }
        ratios.push(rates[0] / rates[1]);
        println!(
            "wrap-http alternating, round {round}: {} {:.0}/s, {} {:.0}/s, on/off {:.0} %",
            servers[0].0,
            rates[0],
            servers[1].0,
            rates[1],
            100.0 * rates[0] / rates[1]
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "wrap-http alternating: median on/off {:.0} % (of {ROUNDS} rounds; min {:.0} %, max {:.0} %)",
        100.0 * ratios[ROUNDS / 2],
        100.0 * ratios[0],
        100.0 * ratios[ROUNDS - 1]
    );
}

/// Wraps per second for `each`, keeping `HTTP_IN_FLIGHT` requests in flight.
async fn rate(
    client: &reqwest::Client,
    url: &str,
    auth: &str,
    body: &serde_json::Value,
    each: std::time::Duration,
) -> f64 {
    use futures::StreamExt as _;
    let send = || client.post(url).header("authorization", auth).json(body).send();
    let started = std::time::Instant::now();
    let mut in_flight: futures::stream::FuturesUnordered<_> =
        (0..HTTP_IN_FLIGHT).map(|_| send()).collect();
    let mut done = 0u64;
    while let Some(response) = in_flight.next().await {
        assert!(response.unwrap().status().is_success());
        done += 1;
        if started.elapsed() < each {
            in_flight.push(send());
        }
    }
    done as f64 / started.elapsed().as_secs_f64()
}

async fn state(dir: &std::path::Path, audit: bool) -> AppState {
    AppState::from_config(&config(dir, audit, None)).await.unwrap()
}

fn in_process(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let (on_dir, off_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let states = runtime.block_on(async {
        [
            ("audit-on", state(on_dir.path(), true).await),
            ("audit-off", state(off_dir.path(), false).await),
        ]
    });
    let meta = RequestMetadata::new(TENANT, "bench");
    for concurrency in [1usize, 64] {
        let mut group = c.benchmark_group(format!("wrap/{concurrency}-at-once"));
        group.throughput(Throughput::Elements(concurrency as u64));
        for (mode, state) in &states {
            let service = &state.service;
            group.bench_function(*mode, |b| {
                b.iter(|| {
                    runtime.block_on(async {
                        let wraps = (0..concurrency).map(|_| service.wrap(&meta));
                        for wrapped in futures::future::join_all(wraps).await {
                            wrapped.unwrap();
                        }
                    })
                })
            });
        }
        group.finish();
    }
}

fn audit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    http(c, &runtime);
    in_process(c, &runtime);
}

criterion_group!(benches, audit);
criterion_main!(benches);
