//! `keyhold rekey`: wraps a file of EDEKs again through a running proxy, in batches, resumably.
//!
//! Design (docs/configuration.md §12.8; `keyhold rekey --help` says the same):
//! - The output has exactly one line per input line, in input order: the new EDEK, or the
//!   original line unchanged when that record failed (its line number, code and message go to the
//!   failures file, JSON lines). Nothing is lost and the output stays aligned with the input.
//! - Progress is the output file itself: every batch is written and synced (failures first, then
//!   the output) before the next is written, so after any stop — Ctrl-C, SIGTERM, `kill -9`, a
//!   power cut — `--resume` truncates a partial last line, counts the complete lines N, drops
//!   failures recorded for lines after N, skips N input lines and appends.
//! - The run id (in `OUT.run`, kept across resumes) is the `requestId` of every batch and is in
//!   the custom fields of the start and end security events, so the tenant's SIEM ties every
//!   rekey event to the run.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead as _, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use keyhold::{Client, Edek, ErrorCode, RequestMetadata};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

use crate::crypt::ProxyArgs;

/// Exit status when some records failed (the run went through to the end).
pub const EXIT_RECORDS_FAILED: u8 = 3;
/// Exit status after SIGINT/SIGTERM (the output is consistent; resume with `--resume`).
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct RekeyArgs {
    /// The tenant the EDEKs belong to now.
    #[arg(long)]
    tenant: String,
    /// The tenant to wrap them for (default: the same tenant, with its current primary KMS
    /// configuration). A move into another tenant must be allowed by the proxy's [rekey] policy.
    #[arg(long)]
    new_tenant: Option<String>,
    /// Newline-delimited base64 EDEKs; `-` reads standard input.
    #[arg(long = "in")]
    input: PathBuf,
    /// Where the new EDEKs go, one line per input line, in input order.
    #[arg(long = "out")]
    output: PathBuf,
    /// Where failed records are reported, as JSON lines (default: OUT.failures).
    #[arg(long)]
    failures: Option<PathBuf>,
    /// Continue the run that wrote OUT: keep its complete lines, skip as many input lines, append.
    #[arg(long)]
    resume: bool,
    /// EDEKs per proxy call (at most the proxy's max_batch_size).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_size: u32,
    /// Proxy calls in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
    /// Tries of a transient failure (KMS or proxy unreachable, throttled) before it counts.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    tries: u32,
    #[command(flatten)]
    proxy: ProxyArgs,
}

const AFTER_HELP: &str = "\
Output: exactly one line per input line, in the same order. A record that cannot be rekeyed \
(not base64, another tenant's EDEK, a KMS refusal, ...) keeps its ORIGINAL line in the output, so \
the output stays aligned with the input and nothing is lost; its line number, code and message \
are written to the failures file (JSON lines) and the run goes on. Transient failures (KMS or \
proxy unreachable, throttled) are retried with backoff first. A refusal of the whole call \
(unknown tenant, a move the proxy's [rekey] policy does not allow: code 1001, a wrong API key) \
stops the run, since every record would fail the same way.

Stop and resume: Ctrl-C or SIGTERM finishes the batches in flight (a second one stops at once), \
syncs the output and prints the command to resume. Every batch is synced to disk, so after \
`kill -9` too, `--resume` with the same arguments continues where the output ends: it truncates \
a partial last line, skips as many input lines as OUT has, and appends. Without --resume, an \
existing non-empty OUT is refused.

Audit: every batch carries the run id (kept in OUT.run across resumes) as its requestId, and \
the run posts security events CUSTOM_REKEY_RUN_STARTED and CUSTOM_REKEY_RUN_FINISHED (or \
_INTERRUPTED, _ABORTED) with counts in their custom fields.

Exit status: 0 all records rekeyed; 3 some records failed (see the failures file); 130 \
interrupted; 1 any other error.";

/// A run that ended without an error of its own but must not exit 0.
#[derive(Debug)]
pub struct RekeyExit {
    /// The exit status.
    pub status: u8,
    /// What to tell the user.
    pub message: String,
}

impl std::fmt::Display for RekeyExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RekeyExit {}

/// A message beside the progress bar (which draws nothing when stderr is not a terminal).
fn say(progress: &ProgressBar, message: &str) {
    if progress.is_hidden() {
        eprintln!("{message}");
    } else {
        progress.println(message);
    }
}

/// One input record: its 1-based line number and the line without its terminator.
struct Record {
    line: u64,
    raw: Vec<u8>,
}

/// A failed record, as written to the failures file.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Failure {
    line: u64,
    code: u16,
    name: String,
    message: String,
}

/// A processed batch: the output lines in input order and the failures.
struct Done {
    lines: Vec<Vec<u8>>,
    failures: Vec<Failure>,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

pub async fn run(args: RekeyArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let new_tenant = args.new_tenant.clone().unwrap_or_else(|| args.tenant.clone());
    let failures_path =
        args.failures.clone().unwrap_or_else(|| with_suffix(&args.output, ".failures"));
    let run_path = with_suffix(&args.output, ".run");
    let stdin = args.input.as_os_str() == "-";

    let (mut out, done_before) = open_output(&args.output, args.resume)?;
    let (mut failures_file, failed_before) =
        open_failures(&failures_path, args.resume, done_before)?;
    let run_id = run_id(&run_path, args.resume && done_before > 0)?;

    let total = if stdin { None } else { Some(count_lines(&args.input)?) };
    if let Some(total) = total
        && done_before > total
    {
        bail!(
            "{} has {done_before} lines but {} only {total}: it was not made from this input",
            args.output.display(),
            args.input.display()
        );
    }

    let client = args.proxy.client()?;
    let meta = args
        .proxy
        .metadata(&args.tenant)
        .with_request_id(&run_id)
        .with_custom_field("rekey_run", &run_id);
    let event_meta = |stage: &str| {
        meta.clone().with_custom_field("new_tenant", &new_tenant).with_custom_field("stage", stage)
    };
    let mut start_meta =
        event_meta("start").with_custom_field("resume_from_line", (done_before + 1).to_string());
    if let Some(total) = total {
        start_meta = start_meta.with_custom_field("input_lines", total.to_string());
    }
    client
        .log_security_event("CUSTOM_REKEY_RUN_STARTED", Some(now_millis()), &start_meta)
        .await
        .context("cannot post the run's start event to the proxy (is the tenant known?)")?;

    let progress = match total {
        Some(total) => {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {rate} ETA {eta}",
                )
                .map(with_rate)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        }
        None => {
            let spinner = ProgressBar::new_spinner();
            spinner.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {human_pos} EDEKs {rate}",
                )
                .map(with_rate)
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            spinner
        }
    };
    progress.set_position(done_before);
    progress.reset_eta();
    progress.enable_steady_tick(Duration::from_millis(200));
    let plain_progress = progress.is_hidden();
    if done_before > 0 {
        say(
            &progress,
            &format!(
                "resuming run {run_id}: {done_before} lines already in {}",
                args.output.display()
            ),
        );
    }

    // The input, in batches, skipping what OUT already holds. Stops handing out batches once a
    // stop was asked for; the batches in flight then finish.
    // A read blocked on a slow input (a pipe) is abandoned too: what it read is not in OUT, so
    // a resume reads it again.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reader: Box<dyn AsyncBufRead + Unpin + Send> = if stdin {
        Box::new(tokio::io::BufReader::with_capacity(1 << 16, tokio::io::stdin()))
    } else {
        let file = tokio::fs::File::open(&args.input)
            .await
            .with_context(|| format!("cannot open {}", args.input.display()))?;
        Box::new(tokio::io::BufReader::with_capacity(1 << 16, file))
    };
    let batch_size = args.batch_size as usize;
    let state = (reader, 0u64, done_before, stop_rx);
    let batches =
        futures::stream::unfold(state, move |(mut reader, mut line, skip, mut stop)| async move {
            if *stop.borrow() {
                return None;
            }
            let mut records = Vec::with_capacity(batch_size);
            let mut buf = Vec::new();
            while records.len() < batch_size {
                buf.clear();
                let read = tokio::select! {
                    read = reader.read_until(b'\n', &mut buf) => read,
                    _ = stop.wait_for(|stop| *stop) => return None,
                };
                match read {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        return Some((
                            Err(anyhow::Error::new(e).context("cannot read the input")),
                            (reader, line, skip, stop),
                        ));
                    }
                }
                line += 1;
                if line <= skip {
                    continue;
                }
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                records.push(Record { line, raw: std::mem::take(&mut buf) });
            }
            if records.is_empty() {
                return None;
            }
            Some((Ok(records), (reader, line, skip, stop)))
        });
    let tries = args.tries;
    let mut results = Box::pin(
        batches
            .map(|batch| {
                let (client, meta, new_tenant) = (client.clone(), meta.clone(), new_tenant.clone());
                async move { rekey_batch(&client, &meta, &new_tenant, batch?, tries).await }
            })
            .buffered(args.concurrency as usize),
    );

    let mut signals = Signals::new()?;
    let mut interrupted: Option<&'static str> = None;
    let mut fatal: Option<anyhow::Error> = None;
    let (mut done, mut failed) = (done_before, failed_before);
    let this_run_start = done_before;
    let mut last_plain = Instant::now();
    loop {
        tokio::select! {
            biased;
            signal = signals.next() => {
                if interrupted.is_some() {
                    say(&progress, &format!("{signal}: stopping at once; batches in flight are dropped"));
                    break;
                }
                interrupted = Some(signal);
                let _ = stop_tx.send(true);
                say(&progress, &format!("{signal}: finishing the batches in flight (again to stop at once)"));
            }
            next = results.next() => match next {
                None => break,
                Some(Err(e)) => { fatal = Some(e); break; }
                Some(Ok(batch)) => {
                    // Failures first: a failure recorded for a line OUT does not hold yet is
                    // dropped on resume, and the record is done again.
                    if !batch.failures.is_empty() {
                        for f in &batch.failures {
                            serde_json::to_writer(&mut failures_file, f)?;
                            failures_file.write_all(b"\n")?;
                        }
                        failures_file.flush()?;
                        failures_file.get_ref().sync_data().context("cannot sync the failures file")?;
                    }
                    for line in &batch.lines {
                        out.write_all(line)?;
                        out.write_all(b"\n")?;
                    }
                    out.flush()?;
                    out.get_ref().sync_data().context("cannot sync the output")?;
                    let n = batch.lines.len() as u64;
                    done += n;
                    failed += batch.failures.len() as u64;
                    progress.inc(n);
                    if plain_progress && last_plain.elapsed() >= Duration::from_secs(5) {
                        last_plain = Instant::now();
                        let rate = (done - this_run_start) as f64 / started.elapsed().as_secs_f64();
                        let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                        eprintln!("rekey: {done}{of} lines, {failed} failed, {rate:.0} EDEKs/s");
                    }
                }
            }
        }
    }
    drop(results);
    out.flush()?;
    out.get_ref().sync_all().context("cannot sync the output")?;
    failures_file.flush()?;
    failures_file.get_ref().sync_all().context("cannot sync the failures file")?;
    progress.finish_and_clear();

    let elapsed = started.elapsed().as_secs_f64();
    let this_run = done - this_run_start;
    let rate = this_run as f64 / elapsed.max(1e-9);
    let (event, status) = match (&fatal, interrupted) {
        (Some(_), _) => ("CUSTOM_REKEY_RUN_ABORTED", "aborted"),
        (None, Some(_)) => ("CUSTOM_REKEY_RUN_INTERRUPTED", "interrupted"),
        (None, None) => ("CUSTOM_REKEY_RUN_FINISHED", "finished"),
    };
    let end_meta = event_meta(status)
        .with_custom_field("lines_done", done.to_string())
        .with_custom_field("records_failed", failed.to_string())
        .with_custom_field("records_rekeyed", (done - failed).to_string())
        .with_custom_field("lines_this_session", this_run.to_string());
    if let Err(e) = client.log_security_event(event, Some(now_millis()), &end_meta).await {
        eprintln!("warning: cannot post the run's end event: {e}");
    }
    eprintln!(
        "rekey {status}: {done} lines in {} ({} rekeyed, {failed} failed); this session {this_run} in {elapsed:.1} s, {rate:.0} EDEKs/s; run {run_id}",
        args.output.display(),
        done - failed,
    );
    if let Some(e) = fatal {
        return Err(e.context(format!(
            "the run stopped after line {done}; fix the cause and continue with --resume"
        )));
    }
    if let Some(signal) = interrupted {
        return Err(RekeyExit {
            status: EXIT_INTERRUPTED,
            message: format!(
                "interrupted by {signal} after line {done}; continue with the same command plus --resume:\n  keyhold rekey --tenant {} --new-tenant {new_tenant} --in {} --out {} --resume",
                args.tenant,
                args.input.display(),
                args.output.display()
            ),
        }
        .into());
    }
    if failed > 0 {
        return Err(RekeyExit {
            status: EXIT_RECORDS_FAILED,
            message: format!(
                "{failed} records could not be rekeyed; their lines hold the original EDEKs, and {} says why",
                failures_path.display()
            ),
        }
        .into());
    }
    Ok(())
}

/// Rekeys one batch. Records that are not base64 fail here; transient failures (of the call or
/// of single records) are tried again with backoff. An error fails the run.
async fn rekey_batch(
    client: &Client,
    meta: &RequestMetadata,
    new_tenant: &str,
    records: Vec<Record>,
    tries: u32,
) -> anyhow::Result<Done> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let mut lines: Vec<Option<Vec<u8>>> = vec![None; records.len()];
    let mut failures = Vec::new();
    let mut pending: HashMap<String, Edek> = HashMap::new();
    let first = records.first().map_or(0, |r| r.line);
    for record in &records {
        let text = std::str::from_utf8(&record.raw).ok().map(str::trim).filter(|t| !t.is_empty());
        match text.filter(|t| b64.decode(t).is_ok()) {
            Some(text) => {
                pending.insert(record.line.to_string(), Edek::from(text.to_owned()));
            }
            None => failures.push(Failure {
                line: record.line,
                code: ErrorCode::InvalidProvidedEdek.code(),
                name: ErrorCode::InvalidProvidedEdek.name().to_owned(),
                message: "the line is not a base64 EDEK".to_owned(),
            }),
        }
    }
    let mut attempt = 0;
    while !pending.is_empty() {
        attempt += 1;
        let last_try = attempt >= tries;
        let result = match client.rekey_edeks(pending.clone(), new_tenant, meta).await {
            Ok(result) => result,
            Err(e) if e.is_retryable() && !last_try => {
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("the proxy refused the batch starting at line {first}")));
            }
        };
        for (id, edek) in result.successes {
            pending.remove(&id);
            if let Some(slot) = index(&id, first).and_then(|i| lines.get_mut(i)) {
                *slot = Some(edek.into_string().into_bytes());
            }
        }
        let mut retry = false;
        for (id, error) in result.failures {
            if error.is_retryable() && !last_try {
                retry = true;
                continue;
            }
            pending.remove(&id);
            let line = id.parse().unwrap_or(0);
            let code = error.code();
            let message = match &error {
                keyhold::Error::Proxy { message, .. } => message.clone(),
                other => other.to_string(),
            };
            failures.push(Failure {
                line,
                code: code.code(),
                name: code.name().to_owned(),
                message,
            });
        }
        if retry {
            tokio::time::sleep(backoff(attempt)).await;
        }
        if !pending.is_empty() && !retry {
            // Ids the proxy answered neither way: a broken answer, never silently lost.
            bail!(
                "the proxy's answer left out {} ids of the batch starting at line {first}",
                pending.len()
            );
        }
    }
    failures.sort_by_key(|f| f.line);
    let lines =
        records.into_iter().zip(lines).map(|(record, new)| new.unwrap_or(record.raw)).collect();
    Ok(Done { lines, failures })
}

fn index(id: &str, first: u64) -> Option<usize> {
    let line: u64 = id.parse().ok()?;
    usize::try_from(line.checked_sub(first)?).ok()
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(6)))
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Opens OUT for appending. Fresh: it must be absent or empty. Resume: a partial last line is cut
/// off and the complete lines counted.
fn open_output(
    path: &Path,
    resume: bool,
) -> anyhow::Result<(std::io::BufWriter<std::fs::File>, u64)> {
    let existing = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if !resume && existing > 0 {
        bail!(
            "{} exists and is not empty: pass --resume to continue the run that wrote it, or choose another --out",
            path.display()
        );
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lines = 0u64;
    let mut complete = 0u64;
    let mut offset = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (i, b) in buf.iter().take(n).enumerate() {
            if *b == b'\n' {
                lines += 1;
                complete = offset + i as u64 + 1;
            }
        }
        offset += n as u64;
    }
    if complete != offset {
        file.set_len(complete)?;
        file.sync_all()?;
    }
    file.seek(std::io::SeekFrom::Start(complete))?;
    Ok((std::io::BufWriter::with_capacity(1 << 20, file), lines))
}

/// Opens the failures file for appending; on resume keeps only the complete entries for lines OUT
/// holds (the others are done again) and counts them.
fn open_failures(
    path: &Path,
    resume: bool,
    done: u64,
) -> anyhow::Result<(std::io::BufWriter<std::fs::File>, u64)> {
    let mut kept = Vec::new();
    if resume && let Ok(file) = std::fs::File::open(path) {
        for line in std::io::BufReader::new(file).split(b'\n') {
            let line = line?;
            if let Ok(f) = serde_json::from_slice::<Failure>(&line)
                && f.line <= done
            {
                kept.push(line);
            }
        }
    }
    let tmp = with_suffix(path, ".tmp");
    {
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        for line in &kept {
            file.write_all(line)?;
            file.write_all(b"\n")?;
        }
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    let file = std::fs::OpenOptions::new().append(true).open(path)?;
    Ok((std::io::BufWriter::new(file), kept.len() as u64))
}

/// The run id: read from `path` when resuming, else made and stored there.
fn run_id(path: &Path, resume: bool) -> anyhow::Result<String> {
    if resume && let Ok(text) = std::fs::read_to_string(path) {
        let id = text.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let bytes: [u8; 8] = keyhold_core::random::random_array()
        .map_err(|e| anyhow::anyhow!("no randomness for the run id: {e}"))?;
    let id = format!("rekey-{}", hex::encode(bytes));
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.sync_all()?;
    Ok(id)
}

/// Lines in a file (a last line without a terminator counts).
fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        last = chunk.last().copied().unwrap_or(last);
    }
    Ok(if last == b'\n' { lines } else { lines + 1 })
}

/// SIGINT and SIGTERM.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// `{rate}` in a progress template: EDEKs per second as a whole number (indicatif's `{per_sec}`
/// prints four decimals: "84,785.7008/s").
fn with_rate(style: ProgressStyle) -> ProgressStyle {
    style.with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.0} EDEKs/s", state.per_sec());
    })
}
