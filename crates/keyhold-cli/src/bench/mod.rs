//! `keyhold bench`: drives a Keyhold proxy and OpenBao Transit on loopback with the same load
//! driver, in one run, and reports requests/s, keys/s and latency percentiles (issue 8;
//! docs/benchmarks.md §6).

mod driver;
mod servers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use driver::{Load, Outcome, drive};
use servers::{DIRECT_TENANT, LEASED_TENANT, OpenBao, ProxyProcess};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Requests in flight (workers, each on its own kept-alive connection).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds measured per scenario.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds driven before measuring, per scenario.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Tenants the proxy is configured with (memory with many tenants).
    #[arg(long, default_value_t = 2)]
    tenants: usize,
    /// Scenarios to run (default: all): wrap, unwrap, batch-wrap-100, batch-unwrap-100,
    /// batch-wrap-1000, batch-unwrap-1000, sdk-1k, half-load.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The OpenBao binary (default: $KEYHOLD_TEST_OPENBAO_BIN, else `bao` on the PATH).
    #[arg(long)]
    openbao_bin: Option<PathBuf>,
    /// Run without OpenBao (no ratios).
    #[arg(long)]
    no_openbao: bool,
    /// Run the proxy without its audit trail (events only in its log), to see what the
    /// synced trail costs; the default is the audit trail on, as deployed.
    #[arg(long)]
    no_audit: bool,
    /// Write every result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const SCENARIOS: &[&str] = &[
    "wrap",
    "unwrap",
    "batch-wrap-100",
    "batch-unwrap-100",
    "batch-wrap-1000",
    "batch-unwrap-1000",
    "sdk-1k",
    "half-load",
];

/// One HTTP client per run: a connection pool as large as the concurrency, kept alive.
fn http_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()?)
}

struct Proxy {
    http: reqwest::Client,
    url: String,
    auth: String,
}

impl Proxy {
    async fn post(&self, route: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}{route}", self.url))
            .header("Authorization", &self.auth)
            .json(body)
            .send()
            .await?;
        let status = response.status();
        let value: Value = response.json().await?;
        if !status.is_success() {
            bail!("{route}: HTTP {status}: {value}");
        }
        Ok(value)
    }
}

fn meta(tenant: &str) -> Value {
    meta_with(tenant, None)
}

/// The metadata of `tenant`, with one more field.
fn meta_with(tenant: &str, extra: Option<(&str, Value)>) -> Value {
    let mut body = serde_json::Map::new();
    body.insert("tenantId".into(), json!(tenant));
    body.insert("iclFields".into(), json!({"requestingId": "keyhold-bench"}));
    if let Some((name, value)) = extra {
        body.insert(name.into(), value);
    }
    Value::Object(body)
}

/// `value[name]`, or null (reads never panic).
fn field<'a>(value: &'a Value, name: &str) -> &'a Value {
    value.get(name).unwrap_or(&Value::Null)
}

fn batch_wrap_body(tenant: &str, n: usize) -> Value {
    let ids: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    meta_with(tenant, Some(("documentIds", json!(ids))))
}

/// Every proxy scenario for one tenant.
async fn proxy_scenarios(
    proxy: &Arc<Proxy>,
    tenant: &'static str,
    leasing: bool,
    load: Load,
    wanted: &dyn Fn(&str) -> bool,
    out: &mut Vec<Outcome>,
) -> anyhow::Result<()> {
    if wanted("wrap") {
        let p = Arc::clone(proxy);
        let body = Arc::new(meta(tenant));
        out.push(
            drive("keyhold", "wrap", Some(leasing), 1, load, move || {
                let (p, body) = (Arc::clone(&p), Arc::clone(&body));
                async move {
                    let v = p.post("/api/1/document/wrap", &body).await?;
                    if field(&v, "edek").as_str().is_none() {
                        bail!("no edek");
                    }
                    Ok(())
                }
            })
            .await?,
        );
    }
    if wanted("unwrap") {
        let wrapped = proxy.post("/api/1/document/wrap", &meta(tenant)).await?;
        let body =
            meta_with(tenant, Some(("encryptedDocumentKey", field(&wrapped, "edek").clone())));
        let (p, body) = (Arc::clone(proxy), Arc::new(body));
        out.push(
            drive("keyhold", "unwrap", Some(leasing), 1, load, move || {
                let (p, body) = (Arc::clone(&p), Arc::clone(&body));
                async move {
                    let v = p.post("/api/1/document/unwrap", &body).await?;
                    if field(&v, "dek").as_str().is_none() {
                        bail!("no dek");
                    }
                    Ok(())
                }
            })
            .await?,
        );
    }
    for n in [100usize, 1000] {
        if wanted(&format!("batch-wrap-{n}")) {
            let (p, body) = (Arc::clone(proxy), Arc::new(batch_wrap_body(tenant, n)));
            out.push(
                drive(
                    "keyhold",
                    &format!("batch-wrap-{n}"),
                    Some(leasing),
                    n as u64,
                    load,
                    move || {
                        let (p, body) = (Arc::clone(&p), Arc::clone(&body));
                        async move {
                            let v = p.post("/api/1/document/batch-wrap", &body).await?;
                            let made =
                                field(&v, "keys").as_object().map_or(0, serde_json::Map::len);
                            if made != n {
                                bail!("{made} of {n} keys");
                            }
                            Ok(())
                        }
                    },
                )
                .await?,
            );
        }
        if wanted(&format!("batch-unwrap-{n}")) {
            let wrapped =
                proxy.post("/api/1/document/batch-wrap", &batch_wrap_body(tenant, n)).await?;
            let edeks: HashMap<String, Value> = field(&wrapped, "keys")
                .as_object()
                .context("batch-wrap answered no keys")?
                .iter()
                .map(|(id, k)| (id.clone(), field(k, "edek").clone()))
                .collect();
            let body = meta_with(tenant, Some(("edeks", json!(edeks))));
            let (p, body) = (Arc::clone(proxy), Arc::new(body));
            out.push(
                drive(
                    "keyhold",
                    &format!("batch-unwrap-{n}"),
                    Some(leasing),
                    n as u64,
                    load,
                    move || {
                        let (p, body) = (Arc::clone(&p), Arc::clone(&body));
                        async move {
                            let v = p.post("/api/1/document/batch-unwrap", &body).await?;
                            let got = field(&v, "keys").as_object().map_or(0, serde_json::Map::len);
                            if got != n {
                                bail!("{got} of {n} keys");
                            }
                            Ok(())
                        }
                    },
                )
                .await?,
            );
        }
    }
    Ok(())
}

/// SDK encrypt + decrypt of one 1 KiB record, end to end (two proxy calls and the AEAD).
async fn sdk_scenario(
    url: &str,
    api_key: &str,
    tenant: &'static str,
    leasing: bool,
    load: Load,
) -> anyhow::Result<Outcome> {
    let client = Arc::new(keyhold::ClientBuilder::new(url, api_key).build().context("SDK client")?);
    let meta = Arc::new(keyhold::RequestMetadata::new(tenant, "keyhold-bench"));
    let record: Arc<keyhold::Document> =
        Arc::new([("record".to_owned(), vec![0x5a; 1024])].into_iter().collect());
    drive("keyhold", "sdk-1k", Some(leasing), 1, load, move || {
        let (client, meta, record) = (Arc::clone(&client), Arc::clone(&meta), Arc::clone(&record));
        async move {
            let encrypted = client.encrypt(&record, &meta).await?;
            let decrypted = client.decrypt(&encrypted, &meta).await?;
            if decrypted != *record {
                bail!("the record did not round-trip");
            }
            Ok(())
        }
    })
    .await
}

/// OpenBao Transit: `datakey/plaintext` (a new data key, as wrap) and `decrypt` (as unwrap).
async fn openbao_scenarios(
    bao: &OpenBao,
    load: Load,
    wanted: &dyn Fn(&str) -> bool,
    out: &mut Vec<Outcome>,
) -> anyhow::Result<()> {
    let http = http_client(load.concurrency)?;
    let datakey_url = Arc::new(format!("{}/v1/transit/datakey/plaintext/bench", bao.url));
    let decrypt_url = Arc::new(format!("{}/v1/transit/decrypt/bench", bao.url));
    let token = Arc::new(bao.token.clone());
    let post = {
        let (http, token) = (http.clone(), Arc::clone(&token));
        move |url: Arc<String>, body: Arc<Value>| {
            let (http, token) = (http.clone(), Arc::clone(&token));
            async move {
                let response = http
                    .post(url.as_str())
                    .header("X-Vault-Token", token.as_str())
                    .json(&*body)
                    .send()
                    .await?;
                let status = response.status();
                let value: Value = response.json().await?;
                if !status.is_success() {
                    bail!("OpenBao: HTTP {status}: {value}");
                }
                anyhow::Ok(value)
            }
        }
    };
    if wanted("wrap") {
        let (post, url, body) = (post.clone(), Arc::clone(&datakey_url), Arc::new(json!({})));
        out.push(
            drive("openbao", "wrap", None, 1, load, move || {
                let fut = post(Arc::clone(&url), Arc::clone(&body));
                async move {
                    let v = fut.await?;
                    if field(field(&v, "data"), "ciphertext").as_str().is_none() {
                        bail!("no ciphertext");
                    }
                    Ok(())
                }
            })
            .await?,
        );
    }
    if wanted("unwrap") {
        let made = post(Arc::clone(&datakey_url), Arc::new(json!({}))).await?;
        let ciphertext = field(field(&made, "data"), "ciphertext").clone();
        let (post, url, body) =
            (post.clone(), Arc::clone(&decrypt_url), Arc::new(json!({ "ciphertext": ciphertext })));
        out.push(
            drive("openbao", "unwrap", None, 1, load, move || {
                let fut = post(Arc::clone(&url), Arc::clone(&body));
                async move {
                    let v = fut.await?;
                    if field(field(&v, "data"), "plaintext").as_str().is_none() {
                        bail!("no plaintext");
                    }
                    Ok(())
                }
            })
            .await?,
        );
    }
    Ok(())
}

fn find<'a>(
    results: &'a [Outcome],
    target: &str,
    scenario: &str,
    leasing: Option<bool>,
) -> Option<&'a Outcome> {
    results.iter().find(|o| o.target == target && o.scenario == scenario && o.leasing == leasing)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let wanted_list = args.only.clone();
    for name in &wanted_list {
        if !SCENARIOS.contains(&name.as_str()) {
            bail!("unknown scenario {name:?}; known: {}", SCENARIOS.join(", "));
        }
    }
    let wanted = move |name: &str| wanted_list.is_empty() || wanted_list.iter().any(|w| w == name);
    let load = Load {
        concurrency: args.concurrency.max(1),
        duration: Duration::from_secs_f64(args.seconds.max(0.1)),
        warmup: Duration::from_secs_f64(args.warmup.max(0.0)),
        rate: None,
    };

    let proxy_process = ProxyProcess::start(args.tenants, !args.no_audit).await?;
    eprintln!(
        "proxy ready {:.0} ms after start ({} tenants, audit {}); {} in flight, {} s per scenario",
        proxy_process.start_to_ready.as_secs_f64() * 1000.0,
        args.tenants.max(2),
        if args.no_audit { "off" } else { "on" },
        load.concurrency,
        args.seconds
    );
    let proxy = Arc::new(Proxy {
        http: http_client(load.concurrency)?,
        url: proxy_process.url.clone(),
        auth: format!("cmk {}", proxy_process.api_key),
    });
    let mut results = Vec::new();
    for (tenant, leasing) in [(LEASED_TENANT, true), (DIRECT_TENANT, false)] {
        proxy_scenarios(&proxy, tenant, leasing, load, &wanted, &mut results).await?;
        if wanted("sdk-1k") {
            results.push(
                sdk_scenario(&proxy_process.url, &proxy_process.api_key, tenant, leasing, load)
                    .await?,
            );
        }
    }
    // Half of the peak leased unwrap rate, paced: the latency a proxy gives with headroom.
    if wanted("half-load")
        && let Some(peak) = find(&results, "keyhold", "unwrap", Some(true))
    {
        let paced = Load { rate: Some(peak.requests_per_sec / 2.0), ..load };
        let wrapped = proxy.post("/api/1/document/wrap", &meta(LEASED_TENANT)).await?;
        let body = meta_with(
            LEASED_TENANT,
            Some(("encryptedDocumentKey", field(&wrapped, "edek").clone())),
        );
        let (p, body) = (Arc::clone(&proxy), Arc::new(body));
        results.push(
            drive("keyhold", "unwrap-half-load", Some(true), 1, paced, move || {
                let (p, body) = (Arc::clone(&p), Arc::clone(&body));
                async move { p.post("/api/1/document/unwrap", &body).await.map(|_| ()) }
            })
            .await?,
        );
    }
    let peak_rss = proxy_process.peak_rss();
    let start_to_ready = proxy_process.start_to_ready;
    drop(proxy_process);

    let mut openbao_note = None;
    if !args.no_openbao {
        match OpenBao::find(args.openbao_bin.as_deref()) {
            Some(bin) => {
                let bao = OpenBao::start(&bin).await?;
                openbao_scenarios(&bao, load, &wanted, &mut results).await?;
            }
            None => {
                openbao_note = Some(
                    "no OpenBao binary (--openbao-bin, $KEYHOLD_TEST_OPENBAO_BIN or `bao` on the PATH): no comparison",
                );
            }
        }
    }

    print_table(&results);
    let mut ratios = serde_json::Map::new();
    for (name, ours, theirs) in [
        ("unwrap_leased_vs_openbao_decrypt", ("unwrap", Some(true)), "unwrap"),
        ("wrap_leased_vs_openbao_datakey", ("wrap", Some(true)), "wrap"),
        ("unwrap_direct_vs_openbao_decrypt", ("unwrap", Some(false)), "unwrap"),
        ("wrap_direct_vs_openbao_datakey", ("wrap", Some(false)), "wrap"),
    ] {
        if let (Some(a), Some(b)) =
            (find(&results, "keyhold", ours.0, ours.1), find(&results, "openbao", theirs, None))
        {
            let ratio = a.requests_per_sec / b.requests_per_sec.max(f64::MIN_POSITIVE);
            println!("{name}: {ratio:.1}×");
            ratios.insert(name.to_owned(), json!(ratio));
        }
    }
    if let Some(rss) = peak_rss {
        println!("proxy peak RSS: {:.1} MiB", rss as f64 / (1024.0 * 1024.0));
    }
    println!("proxy start to ready: {:.0} ms", start_to_ready.as_secs_f64() * 1000.0);
    if let Some(note) = openbao_note {
        println!("{note}");
    }
    if let Some(path) = &args.json {
        let report = json!({
            "keyhold_version": env!("CARGO_PKG_VERSION"),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "concurrency": load.concurrency,
            "seconds": args.seconds,
            "tenants": args.tenants.max(2),
            "audit": !args.no_audit,
            "proxy_peak_rss_bytes": peak_rss,
            "proxy_start_to_ready_ms": start_to_ready.as_secs_f64() * 1000.0,
            "results": results,
            "ratios": ratios,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    let failed: u64 = results.iter().map(|o| o.errors).sum();
    if failed > 0 {
        bail!("{failed} requests failed during the run");
    }
    Ok(())
}

fn print_table(results: &[Outcome]) {
    println!(
        "{:<8} {:<18} {:<8} {:>12} {:>12} {:>9} {:>9} {:>9} {:>7}",
        "target",
        "scenario",
        "leasing",
        "requests/s",
        "keys/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors"
    );
    for o in results {
        let leasing = match o.leasing {
            Some(true) => "on",
            Some(false) => "off",
            None => "-",
        };
        println!(
            "{:<8} {:<18} {:<8} {:>12.0} {:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>7}",
            o.target,
            o.scenario,
            leasing,
            o.requests_per_sec,
            o.keys_per_sec,
            o.p50_ms,
            o.p99_ms,
            o.p999_ms,
            o.errors
        );
    }
}
