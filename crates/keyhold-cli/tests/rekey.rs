//! `keyhold rekey` against `keyhold up`: 20,000 EDEKs and a few bad lines, stopped (SIGINT,
//! and separately SIGKILL) and resumed; the output is complete, aligned and correct, the bad
//! lines are reported, and finished work is not done again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyhold::{Client, RequestMetadata};

mod common;

use common::{BIN, Up, up};
const TENANT: &str = "demo-tenant";
const GOOD: usize = 20_000;
const BATCH: usize = 500;
const CONCURRENCY: usize = 4;

struct Fixture {
    dir: tempfile::TempDir,
    server: Up,
    client: Client,
    rt: tokio::runtime::Runtime,
    /// The input lines.
    lines: Vec<String>,
    /// The DEK of each good line (by 1-based line number).
    deks: HashMap<usize, Vec<u8>>,
    /// The bad lines' numbers.
    bad: Vec<usize>,
}

fn meta() -> RequestMetadata {
    RequestMetadata::new(TENANT, "rekey-test")
}

/// `keyhold up`, 20,000 EDEKs made through the SDK, and three bad lines among them.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = up(dir.path());
    let key = std::fs::read_to_string(dir.path().join(".keyhold/api-key")).unwrap();
    let client = Client::new(&server.url, key.trim()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut keys = Vec::with_capacity(GOOD);
    for start in (0..GOOD).step_by(1000) {
        let ids: Vec<String> = (start..start + 1000).map(|i| i.to_string()).collect();
        let response = rt.block_on(client.batch_wrap_keys(ids, &meta())).unwrap();
        assert!(response.failures.is_empty());
        let mut batch: Vec<_> = response.keys.into_iter().collect();
        batch.sort_by_key(|(id, _)| id.parse::<usize>().unwrap());
        keys.extend(batch.into_iter().map(|(_, k)| k));
    }
    // Not base64; empty; base64 but not an EDEK (the proxy refuses it).
    let bad_lines = [(3, "not base64 !!"), (10_001, ""), (19_999, "AAAA")];
    let mut lines = Vec::new();
    let mut deks = HashMap::new();
    let mut keys = keys.into_iter();
    while lines.len() < GOOD + bad_lines.len() {
        let number = lines.len() + 1;
        if let Some((_, bad)) = bad_lines.iter().find(|(n, _)| *n == number) {
            lines.push((*bad).to_owned());
        } else {
            let key = keys.next().unwrap();
            deks.insert(number, key.dek.expose_secret().to_vec());
            lines.push(key.edek);
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(dir.path().join("in.txt"), text).unwrap();
    let bad = bad_lines.iter().map(|(n, _)| *n).collect();
    Fixture { dir, server, client, rt, lines, deks, bad }
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn rekey(&self, input: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(["rekey", "--proxy", &self.server.url, "--tenant", TENANT, "--in", input])
            .args(["--out", "out.txt", "--batch-size", &BATCH.to_string()])
            .args(["--concurrency", &CONCURRENCY.to_string()])
            .args(extra)
            .current_dir(self.dir.path())
            .env_remove("KEYHOLD_API_KEY");
        command
    }

    /// Starts a rekey reading standard input, feeds it the first `fed` lines and keeps the
    /// pipe open (the run cannot finish), and waits until OUT has `wait_for` lines.
    fn start_stopped_midway(
        &self,
        fed: usize,
        wait_for: usize,
    ) -> (Child, std::process::ChildStdin) {
        let mut child =
            self.rekey("-", &[]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut text = self.lines[..fed].join("\n");
        text.push('\n');
        let writer = {
            let mut pipe = stdin.try_clone_for_test();
            std::thread::spawn(move || {
                pipe.write_all(text.as_bytes()).unwrap();
                pipe.flush().unwrap();
            })
        };
        let started = Instant::now();
        while lines_in(&self.path("out.txt")) < wait_for {
            assert!(started.elapsed() < Duration::from_secs(120), "no progress");
            assert!(child.try_wait().unwrap().is_none(), "rekey ended early");
            std::thread::sleep(Duration::from_millis(5));
        }
        writer.join().unwrap();
        stdin.flush().unwrap();
        (child, stdin)
    }

    /// `keyhold_key_operations_total` of batch_rekey with `code`, from the proxy's /metrics.
    fn rekeyed(&self, code: u16) -> u64 {
        let url = format!("{}/metrics", self.server.url);
        let text =
            self.rt.block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() });
        let wanted = format!(
            "keyhold_key_operations_total{{tenant=\"{TENANT}\",operation=\"batch_rekey\",code=\"{code}\"}} "
        );
        text.lines().find_map(|l| l.strip_prefix(&wanted)).map_or(0, |n| n.trim().parse().unwrap())
    }

    /// Checks OUT and the failures file after a completed run.
    fn check_output(&self) {
        let out = std::fs::read_to_string(self.path("out.txt")).unwrap();
        assert!(out.ends_with('\n'));
        let out: Vec<&str> = out.lines().collect();
        assert_eq!(out.len(), self.lines.len(), "one output line per input line");
        // Bad lines are kept unchanged; every other line is a new EDEK of the same key.
        let mut to_check = HashMap::new();
        for (i, (new, old)) in out.iter().zip(&self.lines).enumerate() {
            let number = i + 1;
            if self.bad.contains(&number) {
                assert_eq!(new, old, "line {number}");
            } else {
                assert_ne!(new, old, "line {number} was not rekeyed");
                to_check.insert(number.to_string(), (*new).to_owned());
            }
        }
        let ids: Vec<String> = to_check.keys().cloned().collect();
        for chunk in ids.chunks(1000) {
            let edeks = chunk.iter().map(|id| (id.clone(), to_check[id].clone())).collect();
            let opened = self.rt.block_on(self.client.batch_unwrap_keys(edeks, &meta())).unwrap();
            assert!(opened.failures.is_empty(), "{:?}", opened.failures);
            for (id, key) in opened.keys {
                let number: usize = id.parse().unwrap();
                assert_eq!(
                    key.dek.expose_secret().as_slice(),
                    self.deks[&number].as_slice(),
                    "line {number}"
                );
            }
        }
        // The failures file names exactly the bad lines, with codes.
        let failures = std::fs::read_to_string(self.path("out.txt.failures")).unwrap();
        let failures: Vec<serde_json::Value> =
            failures.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let mut numbers: Vec<u64> = failures.iter().map(|f| f["line"].as_u64().unwrap()).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, self.bad.iter().map(|n| *n as u64).collect::<Vec<_>>(), "{failures:?}");
        for f in &failures {
            assert_eq!(f["code"], 203, "{f}");
            assert!(!f["message"].as_str().unwrap().is_empty());
        }
    }

    /// The audit events of the run (request id = the run id) in the tenant's spool.
    fn run_events(&self) -> Vec<serde_json::Value> {
        let run = std::fs::read_to_string(self.path("out.txt.run")).unwrap();
        let run = run.trim();
        assert!(run.starts_with("rekey-"), "{run}");
        let mut events = Vec::new();
        for entry in std::fs::read_dir(self.path(".keyhold/audit")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.starts_with(TENANT) && name.ends_with(".jsonl")) {
                continue;
            }
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                if record["event"]["request_id"] == run {
                    events.push(record["event"].clone());
                }
            }
        }
        events
    }
}

/// A second handle on the pipe, for the writer thread (the test keeps the first open).
trait CloneForTest {
    fn try_clone_for_test(&self) -> std::fs::File;
}

impl CloneForTest for std::process::ChildStdin {
    fn try_clone_for_test(&self) -> std::fs::File {
        use std::os::fd::AsFd as _;
        std::fs::File::from(self.as_fd().try_clone_to_owned().unwrap())
    }
}

fn lines_in(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count())
}

fn signal(child: &Child, name: &str) {
    // The shell's built-in kill: no procps needed.
    let command = format!("kill {name} {}", child.id());
    let status = Command::new("sh").args(["-c", &command]).status().unwrap();
    assert!(status.success());
}

#[test]
fn sigint_finishes_the_batches_in_flight_and_resume_does_no_work_twice() {
    let f = fixture();
    let (child, stdin) = f.start_stopped_midway(12_000, 6_000);
    signal(&child, "-INT");
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let first = lines_in(&f.path("out.txt"));
    assert!((6_000..=12_000).contains(&first), "{first}");
    assert!(std::fs::read(f.path("out.txt")).unwrap().ends_with(b"\n"));

    // Without --resume an existing output is refused, and left alone.
    let refused = f.rekey("in.txt", &[]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    assert_eq!(lines_in(&f.path("out.txt")), first);

    let resumed = f.rekey("in.txt", &["--resume"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    // Some records failed: exit 3, after going through to the end.
    assert_eq!(resumed.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("resuming run"), "{stderr}");
    assert!(stderr.contains("3 failed"), "{stderr}");
    f.check_output();

    // Exactly one rekey per good record across both sessions: the interrupted one finished
    // what it had sent, the resumed one started after it.
    assert_eq!(f.rekeyed(0), GOOD as u64);
    assert_eq!(f.rekeyed(203), 1, "the base64 non-EDEK went to the proxy once");
    let events = f.run_events();
    let granted: u64 = events
        .iter()
        .filter(|e| e["operation"] == "batch_rekey" && e["outcome"] == "granted")
        .map(|e| e["keys"].as_u64().unwrap())
        .sum();
    assert_eq!(granted, GOOD as u64, "every rekey event carries the run id");
    let names: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "security")
        .map(|e| e["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "CUSTOM_REKEY_RUN_STARTED",
            "CUSTOM_REKEY_RUN_INTERRUPTED",
            "CUSTOM_REKEY_RUN_STARTED",
            "CUSTOM_REKEY_RUN_FINISHED"
        ],
        "{events:?}"
    );
    let end = events.iter().rfind(|e| e["operation"] == "CUSTOM_REKEY_RUN_FINISHED").unwrap();
    assert_eq!(end["custom"]["records_failed"], "3", "{end}");
    assert_eq!(end["custom"]["lines_done"], (GOOD + 3).to_string(), "{end}");
}

#[test]
fn sigkill_midway_then_resume_redoes_at_most_the_batches_in_flight() {
    let f = fixture();
    let (mut child, stdin) = f.start_stopped_midway(15_000, 5_000);
    signal(&child, "-KILL");
    let status = child.wait().unwrap();
    drop(stdin);
    assert!(!status.success());
    let first = lines_in(&f.path("out.txt"));
    let bad_before = f.bad.iter().filter(|n| **n <= first).count();
    let before = f.rekeyed(0);
    assert!(before >= (first - bad_before) as u64, "{before} rekeyed, {first} lines in OUT");

    let resumed = f.rekey("in.txt", &["--resume"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(3), "{stderr}");
    f.check_output();
    // What the killed run had sent but not yet written is done again: at most the batches in
    // flight (and none of what OUT held).
    let total = f.rekeyed(0);
    let redone = total - GOOD as u64;
    assert!(redone <= (BATCH * CONCURRENCY) as u64, "{redone} rekeys redone");
    let good_after = (f.lines.len() - first) - (f.bad.len() - bad_before);
    assert_eq!(
        total - before,
        good_after as u64,
        "the resumed session did exactly what OUT lacked"
    );
}

#[test]
fn a_move_the_proxy_does_not_allow_stops_the_run_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let server = up(dir.path());
    let key = std::fs::read_to_string(dir.path().join(".keyhold/api-key")).unwrap();
    let client = Client::new(&server.url, key.trim()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let w = rt.block_on(client.wrap_key(&meta())).unwrap();
    std::fs::write(dir.path().join("in.txt"), format!("{}\n", w.edek)).unwrap();
    let out = Command::new(BIN)
        .args(["rekey", "--proxy", &server.url, "--tenant", TENANT, "--new-tenant", "other"])
        .args(["--in", "in.txt", "--out", "out.txt"])
        .current_dir(dir.path())
        .env_remove("KEYHOLD_API_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("REKEY_TARGET_NOT_ALLOWED (1001)"), "{stderr}");
    assert_eq!(std::fs::read_to_string(dir.path().join("out.txt")).unwrap(), "");
}

/// SIGINT while the input pipe is open and idle (the writer has nothing more yet): the run
/// stops at once instead of waiting for a line that may never come. (The read of standard
/// input blocks a thread; the process must not wait for it on the way out.)
#[test]
fn sigint_while_standard_input_is_idle_stops_the_run() {
    let f = fixture();
    let mut child = f.rekey("-", &[]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdin = child.stdin.take().unwrap();
    let started = Instant::now();
    // The run id file is written once the run has started (and is reading).
    while !f.path("out.txt.run").exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "the run never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, "-INT");
    let signalled = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "keyhold rekey still runs 15 s after SIGINT with its input idle"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
}
