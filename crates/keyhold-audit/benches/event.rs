//! What one audit event costs on the proxy's CPU, piece by piece (docs/benchmarks.md §4):
//! making the event as the proxy does for a wrap, encoding its canonical JSON, chaining it
//! (SHA-256 and the record line), a whole `Spool::append` without disk syncs, one at a time
//! (the hand-off to the writer thread and back) and 64 at once, and the same 64 at once with
//! each event also delivered to a syslog sink (a TCP receiver in this process that discards).
//!
//! ```sh
//! cargo bench -p keyhold-audit --bench event
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyhold_audit::{AuditEvent, ChainHead, EventKind, Spool, spool::SpoolOptions};

/// An event as the proxy makes one for a leased wrap with the usual request fields.
fn wrap_event() -> AuditEvent {
    let mut event = AuditEvent::new(EventKind::Data, "bench-tenant", "wrap");
    event.requesting_id = "svc-billing@example.com".into();
    event.data_label = "PII".into();
    event.source_ip = "203.0.113.7".into();
    event.object_id = "invoice-2026-000123".into();
    event.request_id = "0b7c2f9e-5d1a-4c8e-9f00-12ab34cd56ef".into();
    event.proxy = "proxy-a".into();
    event.keys = 1;
    event.kms_config_id = Some(17);
    event.lease_id = Some(4);
    event
}

fn pieces(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit-event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("make", |b| b.iter(wrap_event));
    let event = wrap_event();
    group.bench_function("encode", |b| b.iter(|| serde_json::to_vec(&event).unwrap()));
    let canonical = serde_json::to_vec(&event).unwrap();
    let mut head = ChainHead::default();
    let mut line = Vec::with_capacity(1024);
    group.bench_function("chain", |b| {
        b.iter(|| {
            line.clear();
            head.append_canonical(&canonical, &mut line);
        })
    });
    group.finish();
}

fn spool(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options = SpoolOptions::new(4096);
    // Without syncs: what is measured is the CPU, not this machine's disk.
    options.sync = false;
    let spool = Spool::open_with(dir.path(), options).unwrap();
    let mut group = c.benchmark_group("audit-spool-append-unsynced");
    group.throughput(Throughput::Elements(1));
    group.bench_function("1-at-once", |b| {
        b.iter(|| runtime.block_on(spool.append(wrap_event())).unwrap())
    });
    const AT_ONCE: usize = 64;
    group.throughput(Throughput::Elements(AT_ONCE as u64));
    group.bench_function("64-at-once", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let appends = (0..AT_ONCE).map(|_| {
                    let spool = spool.clone();
                    tokio::spawn(async move { spool.append(wrap_event()).await })
                });
                for append in futures::future::join_all(appends).await {
                    append.unwrap().unwrap();
                }
            })
        })
    });
    group.finish();
}

/// 64 appends at once, unsynced, into a fresh spool, with or without a syslog delivery running
/// beside them on the same runtime (its CPU slows the appends).
fn delivered(c: &mut Criterion) {
    const AT_ONCE: usize = 64;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("audit-spool-append-unsynced-64-at-once");
    group.throughput(Throughput::Elements(AT_ONCE as u64));
    for with_sink in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut options = SpoolOptions::new(4096);
        options.sync = false;
        let spool = Spool::open_with(dir.path(), options).unwrap();
        let _delivery = with_sink.then(|| {
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let address = listener.local_addr().unwrap().to_string();
                tokio::spawn(async move {
                    while let Ok((mut connection, _)) = listener.accept().await {
                        tokio::spawn(async move {
                            let _ = tokio::io::copy(&mut connection, &mut tokio::io::sink()).await;
                        });
                    }
                });
                let settings: keyhold_audit::SinkSettings =
                    toml::from_str(&format!("type = \"syslog\"\naddress = \"{address}\"")).unwrap();
                let context = keyhold_audit::sink::SinkContext {
                    base_dir: dir.path(),
                    instance: "proxy-a",
                    tenant: "bench-tenant",
                };
                let sink = keyhold_audit::sink::build(&settings, None, &context).unwrap();
                let target = keyhold_audit::Target {
                    tenant: "bench-tenant".into(),
                    name: "siem".into(),
                    sink,
                };
                // The backlog is counted from the stored cursor: store it often, so that
                // the end of each sample is seen soon (at most 50 renames a second).
                let options = keyhold_audit::DeliveryOptions {
                    cursor_interval: std::time::Duration::from_millis(20),
                    ..Default::default()
                };
                keyhold_audit::Delivery::start(&spool, vec![target], options).unwrap()
            })
        });
        let name = if with_sink { "syslog-sink" } else { "no-sink" };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = std::time::Instant::now();
                    for _ in 0..iters {
                        let appends = (0..AT_ONCE).map(|_| {
                            let spool = spool.clone();
                            tokio::spawn(async move { spool.append(wrap_event()).await })
                        });
                        for append in futures::future::join_all(appends).await {
                            append.unwrap().unwrap();
                        }
                    }
                    start.elapsed()
                })
            })
        });
        if with_sink {
            // The sink did receive the events: its backlog drains (a syslog batch counts as
            // delivered once it has settled, 1 s on an open connection).
            let start = std::time::Instant::now();
            runtime.block_on(async {
                while spool.backlog("bench-tenant") > 0 {
                    assert!(
                        start.elapsed() < std::time::Duration::from_secs(60),
                        "the sink fell behind"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pieces, spool, delivered);
criterion_main!(benches);
