//! Key operations per second with leasing and without, in one run (docs/benchmarks.md §3):
//! the proxy's key service in process (no HTTP), on the local keystore and, when
//! KEYHOLD_TEST_LOCALSTACK_URL names a LocalStack (as `source scripts/dev-services` sets it), on
//! AWS KMS as LocalStack serves it.
//!
//! ```sh
//! cargo bench -p keyhold-proxy --bench leasing
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyhold_core::metadata::RequestMetadata;
use keyhold_proxy::{AppState, ProxyConfig, bootstrap};

#[path = "../tests/common/localstack.rs"]
mod localstack;

const TENANT: &str = "bench-tenant";

async fn local_state(dir: &std::path::Path, leasing: bool) -> AppState {
    let data = bootstrap::init_data_dir(dir, &[TENANT], "127.0.0.1:0").unwrap();
    let mut text = std::fs::read_to_string(&data.config_path).unwrap();
    text = text.replacen("[leasing]\n", &format!("[leasing]\nenabled = {leasing}\n"), 1);
    std::fs::write(&data.config_path, text).unwrap();
    let config = ProxyConfig::load(&data.config_path).unwrap();
    AppState::from_config(&config).await.unwrap()
}

async fn aws_state(dir: &std::path::Path, url: &str, key_arn: &str, leasing: bool) -> AppState {
    let text = format!(
        r#"
        api_key = "bench-api-key-0123456789abcdef"
        [leasing]
        enabled = {leasing}
        [[tenants]]
        id = "{TENANT}"
        [[tenants.kms_configs]]
        id = 1
        status = "primary"
        type = "aws"
        key_id = "{key_arn}"
        endpoint_url = "{url}"
        access_key_id = "test"
        secret_access_key = "test"
        "#
    );
    let path = dir.join("keyhold.toml");
    std::fs::write(&path, text).unwrap();
    let config = ProxyConfig::load(&path).unwrap();
    AppState::from_config(&config).await.unwrap()
}

fn bench_backend(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    states: [(&str, AppState); 2],
) {
    let meta = RequestMetadata::new(TENANT, "bench");
    let mut group = c.benchmark_group(format!("key-service/{name}"));
    group.throughput(Throughput::Elements(1));
    if name != "local" {
        // A KMS round trip per operation without leasing: fewer, longer samples.
        group.sample_size(20).measurement_time(Duration::from_secs(5));
    }
    for (mode, state) in &states {
        let service = &state.service;
        let edek = runtime.block_on(service.wrap(&meta)).unwrap().edek;
        group.bench_function(format!("wrap/{mode}"), |b| {
            b.iter(|| runtime.block_on(service.wrap(&meta)).unwrap())
        });
        group.bench_function(format!("unwrap/{mode}"), |b| {
            b.iter(|| runtime.block_on(service.unwrap(&meta, &edek)).unwrap())
        });
    }
    group.finish();
}

fn leasing(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (leased_dir, direct_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let states = runtime.block_on(async {
        [
            ("leased", local_state(leased_dir.path(), true).await),
            ("direct", local_state(direct_dir.path(), false).await),
        ]
    });
    bench_backend(c, &runtime, "local", states);

    if let Ok(url) = std::env::var("KEYHOLD_TEST_LOCALSTACK_URL") {
        let key = runtime.block_on(localstack::create_key(&url));
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let states = runtime.block_on(async {
            [
                ("leased", aws_state(a.path(), &url, &key, true).await),
                ("direct", aws_state(b.path(), &url, &key, false).await),
            ]
        });
        bench_backend(c, &runtime, "aws-localstack", states);
    } else {
        eprintln!("KEYHOLD_TEST_LOCALSTACK_URL is not set: AWS (LocalStack) rows skipped");
    }
}

criterion_group!(benches, leasing);
criterion_main!(benches);
