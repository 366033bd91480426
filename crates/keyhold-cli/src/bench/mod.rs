//! `keyhold bench`: drives a Keyhold proxy and OpenBao Transit on loopback with the same load
//! driver, in one run, and reports requests/s, keys/s and latency percentiles (issue 8;
//! docs/benchmarks.md §6).

mod client;
mod driver;
mod histogram;
mod servers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use client::{Call, Connections};
use driver::{Load, Outcome, Server, drive};
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
    /// batch-wrap-1000, batch-unwrap-1000, derive, sdk-1k, half-load.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Keyhold scenarios with leased keys (`on`), with a KMS call per key (`off`), or both:
    /// one of them alone when profiling one path.
    #[arg(long, value_parser = ["both", "on", "off"], default_value = "both")]
    leasing: String,
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
    /// Runs of every scenario; the table shows each scenario's median run and each ratio is
    /// the median of the runs' ratios (the machine drifts: one run can mislead).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Run the proxy under this command, for profiling: e.g. `perf record -g -o proxy.data` or
    /// `valgrind --tool=callgrind --callgrind-out-file=proxy.callgrind` (split on spaces; the
    /// proxy's command line is appended). Its figures are then the profiler's, not the proxy's.
    #[arg(long)]
    proxy_wrapper: Option<String>,
    /// Instead of the scenarios: wraps per second with the audit trail on (events synced to
    /// the spool before each answer and delivered to a syslog sink) against off, in one run.
    /// Two proxies run side by side; `--runs` rounds (at least 3) of `--seconds` each alternate
    /// between them, the order flipping every round; prints each round and the median ratio.
    /// With `--proxy-wrapper`, both proxies run under it.
    #[arg(long, conflicts_with_all = ["only", "no_audit"])]
    audit_ratio: bool,
    /// With `--audit-ratio`: the audited proxy's group-commit window (`[audit]
    /// commit_window_us`; default: the proxy's own default), to see what the setting trades on
    /// this machine.
    #[arg(long, requires = "audit_ratio")]
    commit_window_us: Option<u64>,
    /// The audited proxy's `[audit] durability`: `synced` (its default: each event synced to
    /// disk before the answer) or `written` (in the spool file before the answer, not synced),
    /// to see what the disk's sync costs.
    #[arg(long, value_parser = ["synced", "written"], conflicts_with = "no_audit")]
    durability: Option<String>,
    /// Write every result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl BenchArgs {
    /// The closed-loop load these arguments ask for.
    fn load(&self) -> Load {
        Load {
            concurrency: self.concurrency.max(1),
            duration: Duration::from_secs_f64(self.seconds.max(0.1)),
            warmup: Duration::from_secs_f64(self.warmup.max(0.0)),
            rate: None,
        }
    }

    /// `--proxy-wrapper`, split on spaces (empty: none).
    /// Lines for the audited proxy's `[audit]` table.
    fn audit_settings(&self) -> String {
        let mut lines = String::new();
        if let Some(window) = self.commit_window_us {
            lines.push_str(&format!("commit_window_us = {window}\n"));
        }
        if let Some(durability) = &self.durability {
            lines.push_str(&format!("durability = \"{durability}\"\n"));
        }
        lines
    }

    fn wrapper(&self) -> Vec<String> {
        self.proxy_wrapper
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

/// The proxy's routes the scenarios call.
const WRAP: &str = "/api/1/document/wrap";
const UNWRAP: &str = "/api/1/document/unwrap";
const BATCH_WRAP: &str = "/api/1/document/batch-wrap";
const BATCH_UNWRAP: &str = "/api/1/document/batch-unwrap";
const DERIVE: &str = "/api/1/key/derive-with-secret-path";

const SCENARIOS: &[&str] = &[
    "wrap",
    "unwrap",
    "batch-wrap-100",
    "batch-unwrap-100",
    "batch-wrap-1000",
    "batch-unwrap-1000",
    "derive",
    "sdk-1k",
    "half-load",
];

struct Proxy {
    connections: Connections,
    auth: String,
    /// The proxy process, whose CPU time is measured.
    pid: Option<u32>,
}

impl Proxy {
    /// The driver's handle on a started proxy process.
    fn of(process: &ProxyProcess) -> anyhow::Result<Self> {
        Ok(Self {
            connections: Connections::new(&process.url)?,
            auth: format!("cmk {}", process.api_key),
            pid: process.pid(),
        })
    }
}

impl Proxy {
    /// `body` posted to `route`, serialized once for the whole scenario.
    /// What the driver reads of this proxy around a scenario on `route`: its CPU time and its
    /// own latency histogram of that route.
    fn server(&self, route: &'static str) -> anyhow::Result<Server> {
        Ok(Server { pid: self.pid, histogram: Some((self.connections.get("/metrics")?, route)) })
    }

    fn call(&self, route: &str, body: &Value) -> anyhow::Result<Call> {
        self.connections.post(
            route,
            &[(http::header::AUTHORIZATION, &self.auth)],
            serde_json::to_vec(body)?,
        )
    }

    /// One request, its answer parsed (set-up, not measured).
    async fn post(&self, route: &str, body: &Value) -> anyhow::Result<Value> {
        let answer = self.call(route, body)?.send().await?;
        serde_json::from_slice(&answer).with_context(|| format!("{route}: not JSON"))
    }
}

/// The fields a scenario checks in an answer; borrowed, so that checking costs the driver
/// little (every answer is still parsed in full).
#[derive(serde::Deserialize)]
struct KeyAnswer<'a> {
    #[serde(borrow, default)]
    edek: Option<&'a str>,
    #[serde(borrow, default)]
    dek: Option<&'a str>,
}

#[derive(serde::Deserialize)]
struct BatchAnswer<'a> {
    #[serde(borrow)]
    keys: HashMap<&'a str, serde::de::IgnoredAny>,
    #[serde(default)]
    failures: HashMap<String, serde::de::IgnoredAny>,
}

/// Sends `call` and checks that the answer carries `what` (`edek` or `dek`).
async fn key_call(call: &Call, what: &str) -> anyhow::Result<()> {
    let answer = call.send().await?;
    let parsed: KeyAnswer<'_> = serde_json::from_slice(&answer)?;
    let present = match what {
        "edek" => parsed.edek.is_some_and(|v| !v.is_empty()),
        _ => parsed.dek.is_some_and(|v| !v.is_empty()),
    };
    if !present {
        bail!("the answer has no {what}");
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct DeriveAnswer<'a> {
    #[serde(borrow, rename = "derivedKeys")]
    derived_keys: HashMap<&'a str, serde::de::IgnoredAny>,
}

/// Sends a derive call and checks that the answer carries derived keys.
async fn derive_call(call: &Call) -> anyhow::Result<()> {
    let answer = call.send().await?;
    let parsed: DeriveAnswer<'_> = serde_json::from_slice(&answer)?;
    if parsed.derived_keys.is_empty() {
        bail!("the answer has no derived keys");
    }
    Ok(())
}

/// Sends `call` and checks that the answer carries `n` keys and no failure.
async fn batch_call(call: &Call, n: usize) -> anyhow::Result<()> {
    let answer = call.send().await?;
    let parsed: BatchAnswer<'_> = serde_json::from_slice(&answer)?;
    if parsed.keys.len() != n || !parsed.failures.is_empty() {
        bail!("{} of {n} keys, {} failures", parsed.keys.len(), parsed.failures.len());
    }
    Ok(())
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

/// The unwrap request of one fresh EDEK of `tenant`.
async fn unwrap_call(proxy: &Proxy, tenant: &str) -> anyhow::Result<Call> {
    let wrapped = proxy.post(WRAP, &meta(tenant)).await?;
    let body = meta_with(tenant, Some(("encryptedDocumentKey", field(&wrapped, "edek").clone())));
    proxy.call(UNWRAP, &body)
}

/// Drives `call`, a batch of `n` keys to `route`, as `scenario`.
async fn drive_batch(
    proxy: &Proxy,
    route: &'static str,
    scenario: &str,
    leasing: bool,
    n: usize,
    load: Load,
    call: Call,
) -> anyhow::Result<Outcome> {
    drive("keyhold", &proxy.server(route)?, scenario, Some(leasing), n as u64, load, move || {
        let call = call.clone();
        async move { batch_call(&call, n).await }
    })
    .await
}

/// Every proxy scenario for one tenant.
async fn proxy_scenarios(
    proxy: &Proxy,
    tenant: &'static str,
    leasing: bool,
    load: Load,
    wanted: &dyn Fn(&str) -> bool,
    out: &mut Vec<Outcome>,
) -> anyhow::Result<()> {
    if wanted("wrap") {
        let call = proxy.call(WRAP, &meta(tenant))?;
        out.push(
            drive("keyhold", &proxy.server(WRAP)?, "wrap", Some(leasing), 1, load, move || {
                let call = call.clone();
                async move { key_call(&call, "edek").await }
            })
            .await?,
        );
    }
    if wanted("derive") {
        // Deterministic field keys: one secret path, one derivation path (the secret is made on
        // the first request and then comes from the proxy's memory).
        let mut body = meta(tenant);
        if let Value::Object(map) = &mut body {
            map.insert("paths".into(), json!({"users": ["email"]}));
            map.insert("derivationType".into(), json!("sha512"));
            map.insert("secretType".into(), json!("deterministic"));
        }
        let call = proxy.call(DERIVE, &body)?;
        out.push(
            drive("keyhold", &proxy.server(DERIVE)?, "derive", Some(leasing), 1, load, move || {
                let call = call.clone();
                async move { derive_call(&call).await }
            })
            .await?,
        );
    }
    if wanted("unwrap") {
        let call = unwrap_call(proxy, tenant).await?;
        out.push(
            drive("keyhold", &proxy.server(UNWRAP)?, "unwrap", Some(leasing), 1, load, move || {
                let call = call.clone();
                async move { key_call(&call, "dek").await }
            })
            .await?,
        );
    }
    for n in [100usize, 1000] {
        if wanted(&format!("batch-wrap-{n}")) {
            let call = proxy.call(BATCH_WRAP, &batch_wrap_body(tenant, n))?;
            let scenario = format!("batch-wrap-{n}");
            out.push(drive_batch(proxy, BATCH_WRAP, &scenario, leasing, n, load, call).await?);
        }
        if wanted(&format!("batch-unwrap-{n}")) {
            let wrapped = proxy.post(BATCH_WRAP, &batch_wrap_body(tenant, n)).await?;
            let edeks: HashMap<String, Value> = field(&wrapped, "keys")
                .as_object()
                .context("batch-wrap answered no keys")?
                .iter()
                .map(|(id, k)| (id.clone(), field(k, "edek").clone()))
                .collect();
            let call =
                proxy.call(BATCH_UNWRAP, &meta_with(tenant, Some(("edeks", json!(edeks)))))?;
            let scenario = format!("batch-unwrap-{n}");
            out.push(drive_batch(proxy, BATCH_UNWRAP, &scenario, leasing, n, load, call).await?);
        }
    }
    Ok(())
}

/// SDK encrypt + decrypt of one 1 KiB record, end to end (two proxy calls and the AEAD).
async fn sdk_scenario(
    url: &str,
    api_key: &str,
    pid: Option<u32>,
    tenant: &'static str,
    leasing: bool,
    load: Load,
) -> anyhow::Result<Outcome> {
    let client = Arc::new(keyhold::ClientBuilder::new(url, api_key).build().context("SDK client")?);
    let meta = Arc::new(keyhold::RequestMetadata::new(tenant, "keyhold-bench"));
    let record: Arc<keyhold::Document> =
        Arc::new([("record".to_owned(), vec![0x5a; 1024])].into_iter().collect());
    drive("keyhold", &Server::process(pid), "sdk-1k", Some(leasing), 1, load, move || {
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

/// What OpenBao Transit answers: `data.ciphertext` (datakey) or `data.plaintext` (decrypt).
#[derive(serde::Deserialize)]
struct TransitAnswer<'a> {
    #[serde(borrow)]
    data: TransitData<'a>,
}

#[derive(serde::Deserialize)]
struct TransitData<'a> {
    #[serde(borrow, default)]
    ciphertext: Option<&'a str>,
    #[serde(borrow, default)]
    plaintext: Option<&'a str>,
}

async fn transit_call(call: &Call, what: &str) -> anyhow::Result<()> {
    let answer = call.send().await?;
    let parsed: TransitAnswer<'_> = serde_json::from_slice(&answer)?;
    let present = match what {
        "ciphertext" => parsed.data.ciphertext.is_some_and(|v| !v.is_empty()),
        _ => parsed.data.plaintext.is_some_and(|v| !v.is_empty()),
    };
    if !present {
        bail!("OpenBao answered no {what}");
    }
    Ok(())
}

/// OpenBao Transit: `datakey/plaintext` (a new data key, as wrap) and `decrypt` (as unwrap).
async fn openbao_scenarios(
    bao: &OpenBao,
    load: Load,
    wanted: &dyn Fn(&str) -> bool,
    out: &mut Vec<Outcome>,
) -> anyhow::Result<()> {
    let connections = Connections::new(&bao.url)?;
    let token = [(http::header::HeaderName::from_static("x-vault-token"), bao.token.as_str())];
    let datakey =
        connections.post("/v1/transit/datakey/plaintext/bench", &token, b"{}".to_vec())?;
    if wanted("wrap") {
        let call = datakey.clone();
        out.push(
            drive("openbao", &Server::process(bao.pid()), "wrap", None, 1, load, move || {
                let call = call.clone();
                async move { transit_call(&call, "ciphertext").await }
            })
            .await?,
        );
    }
    if wanted("unwrap") {
        let made: Value = serde_json::from_slice(&datakey.send().await?)?;
        let ciphertext = field(field(&made, "data"), "ciphertext").clone();
        let body = serde_json::to_vec(&json!({ "ciphertext": ciphertext }))?;
        let call = connections.post("/v1/transit/decrypt/bench", &token, body)?;
        out.push(
            drive("openbao", &Server::process(bao.pid()), "unwrap", None, 1, load, move || {
                let call = call.clone();
                async move { transit_call(&call, "plaintext").await }
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

/// `--audit-ratio`: the same wrap load on a proxy with the audit trail and sink and on one
/// without, alternating, so that the machine's drift over minutes falls on both sides.
async fn audit_ratio(args: &BenchArgs) -> anyhow::Result<()> {
    let (sink, sink_bytes) = discarding_syslog_receiver().await?;
    let wrapper = args.wrapper();
    let on =
        ProxyProcess::start_with_sink(args.tenants, Some(sink), &args.audit_settings(), &wrapper)
            .await?;
    let off = ProxyProcess::start(args.tenants, false, "", &wrapper).await?;
    let load = args.load();
    let rounds = args.runs.max(3);
    eprintln!(
        "audit ratio: {rounds} rounds, {} in flight, {} s each way per round",
        load.concurrency, args.seconds
    );
    // Each proxy's handle and wrap request, built once for every round.
    let mut targets = Vec::with_capacity(2);
    for (process, name) in [(&on, "on"), (&off, "off")] {
        let proxy = Proxy::of(process)?;
        let call = proxy.call(WRAP, &meta(LEASED_TENANT))?;
        targets.push((proxy.server(WRAP)?, format!("wrap-audit-{name}"), call));
    }
    let mut ratios = Vec::with_capacity(rounds);
    let mut outcomes = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        let (mut on_rate, mut off_rate) = (0.0f64, 0.0f64);
        for audited in order {
            let Some((server, scenario, call)) = targets.get(usize::from(!audited)) else {
                bail!("no proxy for audit {audited}");
            };
            let call = call.clone();
            let outcome = drive("keyhold", server, scenario, Some(true), 1, load, move || {
                let call = call.clone();
                async move { key_call(&call, "edek").await }
            })
            .await?;
            if audited {
                on_rate = outcome.requests_per_sec;
            } else {
                off_rate = outcome.requests_per_sec;
            }
            outcomes.push(outcome);
        }
        let ratio = on_rate / off_rate.max(f64::MIN_POSITIVE);
        println!(
            "round {}: audit on {on_rate:.0}/s, off {off_rate:.0}/s, on/off {:.0} %",
            round + 1,
            ratio * 100.0
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    let (Some(&min), Some(&median), Some(&max)) =
        (ratios.first(), ratios.get(rounds / 2), ratios.last())
    else {
        bail!("no rounds were run");
    };
    println!(
        "audit on/off: median {:.0} % of {rounds} rounds (min {:.0} %, max {:.0} %)",
        median * 100.0,
        min * 100.0,
        max * 100.0
    );
    let sink_bytes = sink_bytes.load(std::sync::atomic::Ordering::Relaxed);
    println!("the syslog sink received {sink_bytes} bytes");
    if args.proxy_wrapper.is_some() {
        on.stop().await?;
        off.stop().await?;
    }
    if let Some(path) = &args.json {
        let report = json!({
            "mode": "audit-ratio",
            "concurrency": load.concurrency,
            "seconds": args.seconds,
            "rounds": rounds,
            "commit_window_us": args.commit_window_us,
            "durability": args.durability,
            "median_ratio": median,
            "ratios": ratios,
            "sink_bytes": sink_bytes,
            "results": outcomes,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// A syslog receiver (TCP) that reads, counts and discards: the audit sink of `--audit-ratio`,
/// so that delivery runs as deployed while no SIEM's speed enters the figure.
async fn discarding_syslog_receiver()
-> anyhow::Result<(std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut connection, &mut buffer).await
                    && n > 0
                {
                    count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    Ok((addr, received))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.audit_ratio {
        return audit_ratio(&args).await;
    }
    let wanted_list = args.only.clone();
    for name in &wanted_list {
        if !SCENARIOS.contains(&name.as_str()) {
            bail!("unknown scenario {name:?}; known: {}", SCENARIOS.join(", "));
        }
    }
    let wanted = move |name: &str| wanted_list.is_empty() || wanted_list.iter().any(|w| w == name);
    let load = args.load();
    let runs = args.runs.max(1);

    let proxy_process =
        ProxyProcess::start(args.tenants, !args.no_audit, &args.audit_settings(), &args.wrapper())
            .await?;
    eprintln!(
        "proxy ready {:.0} ms after start ({} tenants, audit {}); {} in flight, {} s per scenario, {runs} run(s)",
        proxy_process.start_to_ready.as_secs_f64() * 1000.0,
        args.tenants.max(2),
        if args.no_audit { "off" } else { "on" },
        load.concurrency,
        args.seconds
    );
    let proxy = Proxy::of(&proxy_process)?;
    // Both servers run for the whole benchmark and their scenarios alternate run by run, so
    // that the machine's drift over minutes falls on both sides of each ratio.
    let mut openbao_note = None;
    let bao = if args.no_openbao {
        None
    } else {
        match OpenBao::find(args.openbao_bin.as_deref()) {
            Some(bin) => Some(OpenBao::start(&bin).await?),
            None => {
                openbao_note = Some(
                    "no OpenBao binary (--openbao-bin, $KEYHOLD_TEST_OPENBAO_BIN or `bao` on the PATH): no comparison",
                );
                None
            }
        }
    };

    let mut all_runs: Vec<Vec<Outcome>> = Vec::new();
    for run in 1..=runs {
        if runs > 1 {
            eprintln!("run {run} of {runs}");
        }
        let mut results = Vec::new();
        for (tenant, leasing) in [(LEASED_TENANT, true), (DIRECT_TENANT, false)] {
            if args.leasing != "both" && (args.leasing == "on") != leasing {
                continue;
            }
            proxy_scenarios(&proxy, tenant, leasing, load, &wanted, &mut results).await?;
            if wanted("sdk-1k") {
                results.push(
                    sdk_scenario(
                        &proxy_process.url,
                        &proxy_process.api_key,
                        proxy.pid,
                        tenant,
                        leasing,
                        load,
                    )
                    .await?,
                );
            }
        }
        // Half of this run's peak leased unwrap rate, paced: the latency a proxy gives with
        // headroom.
        if wanted("half-load")
            && let Some(peak) = find(&results, "keyhold", "unwrap", Some(true))
        {
            let paced = Load { rate: Some(peak.requests_per_sec / 2.0), ..load };
            let call = unwrap_call(&proxy, LEASED_TENANT).await?;
            results.push(
                drive(
                    "keyhold",
                    &proxy.server(UNWRAP)?,
                    "unwrap-half-load",
                    Some(true),
                    1,
                    paced,
                    move || {
                        let call = call.clone();
                        async move { key_call(&call, "dek").await }
                    },
                )
                .await?,
            );
        }
        if let Some(bao) = &bao {
            openbao_scenarios(bao, load, &wanted, &mut results).await?;
        }
        all_runs.push(results);
    }
    let peak_rss = proxy_process.peak_rss();
    let start_to_ready = proxy_process.start_to_ready;
    if args.proxy_wrapper.is_some() {
        proxy_process.stop().await?;
    } else {
        drop(proxy_process);
    }
    drop(bao);

    let results = medians(&all_runs);
    print_table(&results);
    if runs > 1 {
        println!(
            "(each row: the run with the median requests/s of {runs} runs; a paced row: the median p99)"
        );
    }
    let mut ratios = serde_json::Map::new();
    for (name, ours, theirs) in [
        ("unwrap_leased_vs_openbao_decrypt", ("unwrap", Some(true)), "unwrap"),
        ("wrap_leased_vs_openbao_datakey", ("wrap", Some(true)), "wrap"),
        ("unwrap_direct_vs_openbao_decrypt", ("unwrap", Some(false)), "unwrap"),
        ("wrap_direct_vs_openbao_datakey", ("wrap", Some(false)), "wrap"),
    ] {
        // The ratio of each run (same minutes on both sides), then their median: requests/s,
        // and the server CPU time per request (OpenBao's over ours: how many times cheaper).
        let pairs: Vec<(&Outcome, &Outcome)> = all_runs
            .iter()
            .filter_map(|results| {
                Some((
                    find(results, "keyhold", ours.0, ours.1)?,
                    find(results, "openbao", theirs, None)?,
                ))
            })
            .collect();
        let speed: Vec<f64> = pairs
            .iter()
            .map(|(a, b)| a.requests_per_sec / b.requests_per_sec.max(f64::MIN_POSITIVE))
            .collect();
        let cost: Vec<f64> = pairs
            .iter()
            .filter_map(|(a, b)| {
                Some(b.server_cpu_us_per_request? / a.server_cpu_us_per_request?.max(f64::EPSILON))
            })
            .collect();
        let show = |values: &[f64]| {
            if values.len() > 1 {
                format!(
                    " (runs: {})",
                    values.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(", ")
                )
            } else {
                String::new()
            }
        };
        if let Some(ratio) = median(&mut speed.clone()) {
            let cost_ratio = median(&mut cost.clone());
            let cost_text = cost_ratio.map_or_else(String::new, |c| {
                format!("; {c:.1}× less server CPU per request{}", show(&cost))
            });
            println!("{name}: {ratio:.1}× requests/s{}{cost_text}", show(&speed));
            ratios.insert(
                name.to_owned(),
                json!({
                    "median": ratio,
                    "runs": speed,
                    "cpu_per_request_median": cost_ratio,
                    "cpu_per_request_runs": cost,
                }),
            );
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
            "runs": runs,
            "tenants": args.tenants.max(2),
            "audit": !args.no_audit,
            "durability": args.durability,
            "proxy_peak_rss_bytes": peak_rss,
            "proxy_start_to_ready_ms": start_to_ready.as_secs_f64() * 1000.0,
            "results": results,
            "every_run": all_runs,
            "ratios": ratios,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    let failed: u64 = all_runs.iter().flatten().map(|o| o.errors).sum();
    if failed > 0 {
        bail!("{failed} requests failed during the run");
    }
    Ok(())
}

/// The middle value (the lower of the two middle ones for an even count).
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len().saturating_sub(1) / 2).copied()
}

/// Per scenario, the outcome of the run with the median requests/s (a real run's figures,
/// latencies included, not a blend of several). A paced scenario runs at the rate it was
/// given, so its requests/s says nothing: its median run is the one with the median p99, the
/// figure it exists for.
fn medians(runs: &[Vec<Outcome>]) -> Vec<Outcome> {
    let Some(first) = runs.first() else { return Vec::new() };
    first
        .iter()
        .filter_map(|o| {
            let mut same: Vec<&Outcome> =
                runs.iter().filter_map(|r| find(r, &o.target, &o.scenario, o.leasing)).collect();
            if o.rate.is_some() {
                same.sort_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
            } else {
                same.sort_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec));
            }
            same.get(same.len().saturating_sub(1) / 2).map(|o| (*o).clone())
        })
        .collect()
}

fn print_table(results: &[Outcome]) {
    println!(
        "{:<8} {:<18} {:<8} {:>12} {:>12} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>7} {:>7}",
        "target",
        "scenario",
        "leasing",
        "requests/s",
        "keys/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "cpu µs/key",
        "proxy p99≤",
        "driver µs",
        "steal %",
        "errors"
    );
    for o in results {
        let leasing = match o.leasing {
            Some(true) => "on",
            Some(false) => "off",
            None => "-",
        };
        println!(
            "{:<8} {:<18} {:<8} {:>12.0} {:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>10} {:>10} {:>9} {:>7} {:>7}",
            o.target,
            o.scenario,
            leasing,
            o.requests_per_sec,
            o.keys_per_sec,
            o.p50_ms,
            o.p99_ms,
            o.p999_ms,
            o.server_cpu_us_per_key.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}")),
            o.proxy_p99_ms_at_most.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}")),
            o.driver_cpu_us_per_request.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}")),
            o.machine_steal_percent.map_or_else(|| "-".to_owned(), |p| format!("{p:.1}")),
            o.errors
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(scenario: &str, rate: Option<f64>, requests_per_sec: f64, p99_ms: f64) -> Outcome {
        Outcome {
            target: "keyhold".into(),
            scenario: scenario.into(),
            leasing: Some(true),
            concurrency: 64,
            rate,
            requests: 1,
            errors: 0,
            requests_per_sec,
            keys_per_sec: requests_per_sec,
            p50_ms: 1.0,
            p99_ms,
            p999_ms: p99_ms,
            max_ms: p99_ms,
            server_cpu_us_per_request: None,
            server_cpu_us_per_key: None,
            server_cores: None,
            proxy_p50_ms_at_most: None,
            proxy_p99_ms_at_most: None,
            proxy_p999_ms_at_most: None,
            driver_cpu_us_per_request: None,
            machine_steal_percent: None,
        }
    }

    #[test]
    fn the_median_run_is_by_requests_per_second_unless_the_scenario_was_paced() {
        // Three runs: a peak scenario and a paced one (each run paced at half its own peak).
        let runs = vec![
            vec![
                outcome("unwrap", None, 30_000.0, 9.0),
                outcome("half", Some(15_000.0), 15_000.0, 2.0),
            ],
            vec![
                outcome("unwrap", None, 34_000.0, 1.0),
                outcome("half", Some(17_000.0), 17_000.0, 700.0),
            ],
            vec![
                outcome("unwrap", None, 32_000.0, 5.0),
                outcome("half", Some(16_000.0), 16_000.0, 3.0),
            ],
        ];
        let middle = medians(&runs);
        assert_eq!(middle[0].requests_per_sec, 32_000.0, "the median requests/s");
        // By requests/s the paced row would be the 700 ms run; by p99 it is the 3 ms one.
        assert_eq!(middle[1].p99_ms, 3.0);
    }
}
