//! AES-256-GCM backends side by side, and Keyhold's formats on top of the chosen one, in one run.
//!
//! `cargo bench -p keyhold-core --bench aead`; results go in docs/benchmarks.md.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use keyhold_core::aead::Aes256GcmKey;
use keyhold_core::document::DocumentKey;
use keyhold_core::secret::Dek;
use keyhold_core::stream;

const SIZES: [(usize, &str); 3] = [(1024, "1KiB"), (64 * 1024, "64KiB"), (1024 * 1024, "1MiB")];
const KEY: [u8; 32] = [0x11; 32];
const NONCE: [u8; 12] = [0x22; 12];

fn raw_seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    let aws = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &KEY).unwrap(),
    );
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &KEY).unwrap(),
    );
    let rc = {
        use aes_gcm::aead::KeyInit;
        aes_gcm::Aes256Gcm::new_from_slice(&KEY).unwrap()
    };
    let dek = Dek::from_bytes(KEY);
    let doc = DocumentKey::new(&dek, "tenant-bench").unwrap();
    let ours = Aes256GcmKey::new(&KEY).unwrap();

    for (size, label) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let plaintext = vec![0x5au8; size];
        let mut buf = plaintext.clone();

        group.bench_function(BenchmarkId::new("raw-aws-lc-rs", label), |b| {
            b.iter(|| {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(NONCE);
                black_box(
                    aws.seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), &mut buf)
                        .unwrap(),
                )
            })
        });
        // The bare cipher producing owned ciphertext, as `encrypt_field` does: a new buffer
        // per call (the plaintext copied in, sealed in place).
        group.bench_function(BenchmarkId::new("raw-aws-lc-rs-new-buffer", label), |b| {
            b.iter(|| {
                let mut owned = black_box(&plaintext).to_vec();
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(NONCE);
                let tag = aws
                    .seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), &mut owned)
                    .unwrap();
                owned.extend_from_slice(tag.as_ref());
                black_box(owned)
            })
        });
        group.bench_function(BenchmarkId::new("raw-ring", label), |b| {
            b.iter(|| {
                let nonce = ring::aead::Nonce::assume_unique_for_key(NONCE);
                black_box(
                    ring_key
                        .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), &mut buf)
                        .unwrap(),
                )
            })
        });
        group.bench_function(BenchmarkId::new("raw-rustcrypto-aes-gcm", label), |b| {
            use aes_gcm::aead::AeadInOut;
            b.iter(|| {
                black_box(
                    rc.encrypt_inout_detached(&NONCE.into(), &[], buf.as_mut_slice().into())
                        .unwrap(),
                )
            })
        });
        group.bench_function(BenchmarkId::new("keyhold-aead-in-place", label), |b| {
            b.iter(|| black_box(ours.seal_in_place(&NONCE, &[], &mut buf).unwrap()))
        });
        group.bench_function(BenchmarkId::new("keyhold-document-field", label), |b| {
            b.iter(|| black_box(doc.encrypt_field("field", black_box(&plaintext)).unwrap()))
        });
        let mut reused = Vec::new();
        group.bench_function(BenchmarkId::new("keyhold-document-field-into", label), |b| {
            b.iter(|| {
                doc.encrypt_field_into("field", black_box(&plaintext), &mut reused).unwrap();
                black_box(&reused);
            })
        });
        group.bench_function(
            BenchmarkId::new("keyhold-document-with-key-derivation", label),
            |b| {
                b.iter(|| {
                    let k = DocumentKey::new(&dek, "tenant-bench").unwrap();
                    black_box(k.encrypt_field("field", black_box(&plaintext)).unwrap())
                })
            },
        );
        group.bench_function(BenchmarkId::new("keyhold-stream", label), |b| {
            b.iter(|| {
                black_box(
                    stream::encrypt_all(
                        &dek,
                        "tenant-bench",
                        b"edek",
                        stream::DEFAULT_SEGMENT_SIZE,
                        &plaintext,
                    )
                    .unwrap(),
                )
            })
        });
    }
    group.finish();
}

fn raw_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    let aws = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &KEY).unwrap(),
    );
    let dek = Dek::from_bytes(KEY);
    let doc = DocumentKey::new(&dek, "tenant-bench").unwrap();
    for (size, label) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let plaintext = vec![0x5au8; size];
        let mut sealed = plaintext.clone();
        let tag = aws
            .seal_in_place_separate_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(NONCE),
                aws_lc_rs::aead::Aad::empty(),
                &mut sealed,
            )
            .unwrap();
        let field = doc.encrypt_field("field", &plaintext).unwrap();
        let mut out = vec![0u8; size];
        group.bench_function(BenchmarkId::new("raw-aws-lc-rs", label), |b| {
            b.iter(|| {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(NONCE);
                aws.open_separate_gather(
                    nonce,
                    aws_lc_rs::aead::Aad::empty(),
                    &sealed,
                    tag.as_ref(),
                    &mut out,
                )
                .unwrap();
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("raw-aws-lc-rs-new-buffer", label), |b| {
            b.iter(|| {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(NONCE);
                let mut owned = vec![0u8; size];
                aws.open_separate_gather(
                    nonce,
                    aws_lc_rs::aead::Aad::empty(),
                    black_box(&sealed),
                    tag.as_ref(),
                    &mut owned,
                )
                .unwrap();
                black_box(owned)
            })
        });
        group.bench_function(BenchmarkId::new("keyhold-document-field", label), |b| {
            b.iter(|| black_box(doc.decrypt_field("field", black_box(&field)).unwrap()))
        });
        let mut reused = Vec::new();
        group.bench_function(BenchmarkId::new("keyhold-document-field-into", label), |b| {
            b.iter(|| {
                doc.decrypt_field_into("field", black_box(&field), &mut reused).unwrap();
                black_box(&reused);
            })
        });
    }
    group.finish();
}

/// Whole documents through `encrypt_document` / `decrypt_document` (one key derivation per
/// document, a new buffer per field, names bound per field) against the bare cipher sealing the
/// same fields in place.
fn documents(c: &mut Criterion) {
    let mut group = c.benchmark_group("document");
    let aws = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &KEY).unwrap(),
    );
    let dek = Dek::from_bytes(KEY);
    // 16 fields of 64 KiB (1 MiB in all), and a record of 10 small fields.
    for (count, size, label) in [(16usize, 64 * 1024usize, "16x64KiB"), (10, 100, "10x100B")] {
        group.throughput(Throughput::Bytes((count * size) as u64));
        let names: Vec<String> = (0..count).map(|i| format!("field-{i:02}")).collect();
        let values: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8; size]).collect();
        let fields = || names.iter().map(String::as_str).zip(values.iter().map(Vec::as_slice));
        let mut buffers = values.clone();
        group.bench_function(BenchmarkId::new("raw-aws-lc-rs", label), |b| {
            b.iter(|| {
                for buf in &mut buffers {
                    let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(NONCE);
                    let tag = aws
                        .seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), buf)
                        .unwrap();
                    let _ = black_box(tag);
                }
            })
        });
        group.bench_function(BenchmarkId::new("encrypt_document", label), |b| {
            b.iter(|| {
                black_box(
                    keyhold_core::document::encrypt_document(&dek, "tenant-bench", fields())
                        .unwrap(),
                )
            })
        });
        let encrypted =
            keyhold_core::document::encrypt_document(&dek, "tenant-bench", fields()).unwrap();
        group.bench_function(BenchmarkId::new("decrypt_document", label), |b| {
            b.iter(|| {
                black_box(
                    keyhold_core::document::decrypt_document(
                        &dek,
                        "tenant-bench",
                        encrypted.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                    )
                    .unwrap(),
                )
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = raw_seal, raw_open, documents
}
criterion_main!(benches);
