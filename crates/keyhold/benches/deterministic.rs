//! The local cost of deterministic field encryption, offline: what the SDK does after the
//! proxy's one derive answer (`keyhold::deterministic::DerivedKeys`), for a 32-byte value.
//! The proxy round trip itself is not included.
//!
//! ```sh
//! cargo bench -p keyhold --bench deterministic -- --warm-up-time 1 --measurement-time 3
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use keyhold::deterministic::{DeriveKeyResponse, DerivedKey, DerivedKeys, PlaintextField};
use keyhold_core::deterministic::derive_field_key;
use keyhold_core::secret::TenantSecret;

const TENANT: &str = "bench-tenant";

/// A derive answer for `users`/`email` with `secrets` secrets, the first one current.
fn response(secrets: u32) -> DeriveKeyResponse {
    let mut response = DeriveKeyResponse { has_primary_config: true, ..Default::default() };
    let keys = (0..secrets)
        .map(|i| DerivedKey {
            derived_key: derive_field_key(&TenantSecret::generate().unwrap(), TENANT, "email"),
            tenant_secret_id: 1000 + i,
            current: i == 0,
        })
        .collect();
    response.derived_keys.entry("users".into()).or_default().insert("email".into(), keys);
    response
}

fn deterministic(c: &mut Criterion) {
    let mut group = c.benchmark_group("deterministic");
    let plain = PlaintextField::new([0x5a; 32].to_vec(), "users", "email");
    let one = response(1);
    let keys = DerivedKeys::new(&one);
    let stored = keys.encrypt(&plain).unwrap();

    group.bench_function("encrypt_field/32B", |b| {
        b.iter(|| black_box(keys.encrypt(black_box(&plain)).unwrap()))
    });
    group.bench_function("decrypt_field/32B", |b| {
        b.iter(|| black_box(keys.decrypt(black_box(&stored)).unwrap()))
    });
    group.bench_function("rotate_field/32B/already-current", |b| {
        b.iter(|| black_box(keys.rotate(black_box(&stored)).unwrap()))
    });
    for secrets in [1, 3] {
        let answer = response(secrets);
        let keys = DerivedKeys::new(&answer);
        group.bench_with_input(
            BenchmarkId::new("generate_search_terms/32B", format!("{secrets}-secrets")),
            &keys,
            |b, keys| b.iter(|| black_box(keys.search_terms(black_box(&plain)).unwrap())),
        );
    }
    // Reading the proxy's answer (base64 keys into wiped buffers) is part of every call.
    let json = serde_json::to_vec(&response(3)).unwrap();
    group.bench_function("parse_derive_response/3-secrets", |b| {
        b.iter(|| black_box(serde_json::from_slice::<DeriveKeyResponse>(black_box(&json)).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, deterministic);
criterion_main!(benches);
