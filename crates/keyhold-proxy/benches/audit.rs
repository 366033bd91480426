//! Wrap operations per second with the audit spool on (every access written and synced before it
//! is answered) and off, in one run (docs/benchmarks.md §4). The key service in process, local
//! keystore, leasing on (so the KMS is not what is measured); one wrap at a time, and 64 at once
//! (what group commit is for).
//!
//! ```sh
//! cargo bench -p keyhold-proxy --bench audit
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyhold_core::metadata::RequestMetadata;
use keyhold_proxy::{AppState, ProxyConfig, bootstrap};

const TENANT: &str = "bench-tenant";

async fn state(dir: &std::path::Path, audit: bool) -> AppState {
    let data = bootstrap::init_data_dir(dir, &[TENANT], "127.0.0.1:0").unwrap();
    let mut text = std::fs::read_to_string(&data.config_path).unwrap();
    if !audit {
        text = text.replacen("spool_dir = \"audit\"\n", "", 1).replacen("[audit]\n", "", 1);
    }
    std::fs::write(&data.config_path, text).unwrap();
    let config = ProxyConfig::load(&data.config_path).unwrap();
    assert_eq!(config.audit.is_some(), audit);
    AppState::from_config(&config).await.unwrap()
}

fn audit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
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

criterion_group!(benches, audit);
criterion_main!(benches);
