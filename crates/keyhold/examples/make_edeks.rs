//! Writes N fresh EDEKs of a tenant, one base64 EDEK per line, through a running proxy
//! (batch-wrap): input for `keyhold rekey` tests and benchmarks (`scripts/bench-rekey`).
//!
//! ```sh
//! cargo run --release -p keyhold --example make_edeks -- \
//!     --count 1000000 --tenant demo-tenant --out edeks.txt \
//!     [--proxy http://127.0.0.1:32804] [--api-key-file .keyhold/api-key] [--batch 1000] [--concurrency 4]
//! ```
//!
//! With `--deks FILE` it also writes each DEK (hex) on the same line number, for tests that
//! check a rekeyed EDEK still opens to the same key. Never do that with real keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::time::Instant;

use keyhold::{Client, RequestMetadata};

const USAGE: &str = "usage: make_edeks --count N --out FILE [--tenant T] [--deks FILE] \
[--proxy URL] [--api-key-file FILE] [--batch 1000] [--concurrency 4]";

struct Args {
    count: usize,
    tenant: String,
    out: String,
    deks: Option<String>,
    proxy: String,
    api_key_file: String,
    batch: usize,
    concurrency: usize,
}

fn args() -> Args {
    let mut a = Args {
        count: 0,
        tenant: "demo-tenant".into(),
        out: String::new(),
        deks: None,
        proxy: std::env::var("KEYHOLD_PROXY_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:32804".into()),
        api_key_file: ".keyhold/api-key".into(),
        batch: 1000,
        concurrency: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--count" => a.count = value.parse().expect("--count: a number"),
            "--tenant" => a.tenant = value,
            "--out" => a.out = value,
            "--deks" => a.deks = Some(value),
            "--proxy" => a.proxy = value,
            "--api-key-file" => a.api_key_file = value,
            "--batch" => a.batch = value.parse().expect("--batch: a number"),
            "--concurrency" => a.concurrency = value.parse().expect("--concurrency: a number"),
            other => panic!("unknown option {other}"),
        }
    }
    assert!(a.count > 0 && !a.out.is_empty(), "{USAGE}");
    a
}

#[tokio::main]
async fn main() {
    let a = args();
    let key = std::fs::read_to_string(&a.api_key_file).expect("cannot read the API key file");
    let client = Client::new(&a.proxy, key.trim()).expect("client");
    let meta = RequestMetadata::new(&a.tenant, "make-edeks");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&a.out).expect("--out"));
    let mut deks =
        a.deks.as_ref().map(|p| std::io::BufWriter::new(std::fs::File::create(p).expect("--deks")));
    let started = Instant::now();
    let batches: Vec<(usize, usize)> =
        (0..a.count).step_by(a.batch).map(|start| (start, a.batch.min(a.count - start))).collect();
    let mut written = 0usize;
    let mut last = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    let mut batches = batches.into_iter().peekable();
    while batches.peek().is_some() || !in_flight.is_empty() {
        while in_flight.len() < a.concurrency
            && let Some((start, n)) = batches.next()
        {
            let (client, meta) = (client.clone(), meta.clone());
            in_flight.push_back(tokio::spawn(async move {
                let ids: Vec<String> = (start..start + n).map(|i| i.to_string()).collect();
                let response = client.batch_wrap_keys(ids, &meta).await.expect("batch-wrap");
                assert!(
                    response.failures.is_empty(),
                    "batch-wrap failures: {:?}",
                    response.failures
                );
                let mut keys: Vec<(usize, _)> = response
                    .keys
                    .into_iter()
                    .map(|(id, k)| (id.parse::<usize>().unwrap(), k))
                    .collect();
                keys.sort_by_key(|(id, _)| *id);
                keys
            }));
        }
        let Some(handle) = in_flight.pop_front() else { break };
        for (_, key) in handle.await.unwrap() {
            writeln!(out, "{}", key.edek).unwrap();
            if let Some(deks) = deks.as_mut() {
                writeln!(deks, "{}", hex::encode(key.dek.expose_secret())).unwrap();
            }
            written += 1;
        }
        if last.elapsed().as_secs() >= 5 {
            last = Instant::now();
            eprintln!("make_edeks: {written}/{}", a.count);
        }
    }
    out.flush().unwrap();
    if let Some(mut deks) = deks {
        deks.flush().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("make_edeks: {written} EDEKs in {secs:.1} s, {:.0} EDEKs/s", written as f64 / secs);
}
