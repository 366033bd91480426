//! What a benchmark run starts on loopback: a Keyhold proxy (this binary, `keyhold proxy`, as a
//! separate process) and an OpenBao dev server (the real `bao` binary) with a Transit key.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// The tenant whose keys are leased.
pub const LEASED_TENANT: &str = "bench-leased";
/// The tenant whose every key is a KMS call.
pub const DIRECT_TENANT: &str = "bench-direct";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_ready(url: &str, what: &str, child: &mut Child) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let http = reqwest::Client::new();
    loop {
        if let Ok(response) = http.get(url).send().await
            && response.status().is_success()
        {
            return Ok(started.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before it was ready ({status})");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{what} was not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A `keyhold proxy` process over a fresh data directory: a local keystore, `tenants` tenants
/// (the first two are [`LEASED_TENANT`] and [`DIRECT_TENANT`]), and the audit trail of the
/// default configuration (events synced to disk before each answer).
pub struct ProxyProcess {
    child: Child,
    /// Its base URL.
    pub url: String,
    /// Its API key.
    pub api_key: String,
    /// From spawning the process to `/ready` answering 200.
    pub start_to_ready: Duration,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts it; `audit = false` drops the `[audit]` section (events only in the log). The
    /// configuration is `keyhold up`'s with the production intervals (lease renewal 5 min,
    /// checkpoints every minute); tenants beyond the first two each get a vendor key of their
    /// own in the configuration (`type = "vendor"`), as a broker would send them.
    /// `audit_settings` are lines added to its `[audit]` table (with `audit`); `wrapper` is a
    /// command the proxy runs under (a profiler), if any.
    pub async fn start(
        tenants: usize,
        audit: bool,
        audit_settings: &str,
        wrapper: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_inner(tenants, audit, None, audit_settings, wrapper).await
    }

    /// Starts it with the audit trail on and, for tenant [`LEASED_TENANT`], a syslog sink (TCP)
    /// at `sink`, so that the spool's events are also delivered, as deployed; with
    /// `audit_settings` added to its `[audit]` table.
    pub async fn start_with_sink(
        tenants: usize,
        sink: Option<std::net::SocketAddr>,
        audit_settings: &str,
        wrapper: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_inner(tenants, true, sink, audit_settings, wrapper).await
    }

    async fn start_inner(
        tenants: usize,
        audit: bool,
        sink: Option<std::net::SocketAddr>,
        audit_settings: &str,
        wrapper: &[String],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let data = keyhold_proxy::bootstrap::init_data_dir(
            dir.path(),
            &[LEASED_TENANT, DIRECT_TENANT],
            &format!("127.0.0.1:{port}"),
        )?;
        let mut text = std::fs::read_to_string(&data.config_path)?
            .lines()
            .filter(|l| {
                !l.starts_with("renew_interval_ms") && !l.starts_with("checkpoint_interval_ms")
            })
            .collect::<Vec<_>>()
            .join("\n");
        text.push('\n');
        for i in 2..tenants.max(2) {
            let key = keyhold_core::secret::MasterKeyMaterial::generate()?;
            text.push_str(&format!(
                "\n[[tenants]]\nid = \"bench-{i:06}\"\n\n[[tenants.kms_configs]]\nid = {}\n\
                 status = \"primary\"\ntype = \"vendor\"\nkey = \"{}\"\n",
                i + 1,
                key.to_base64().as_str()
            ));
        }
        let direct = format!("id = \"{DIRECT_TENANT}\"\n");
        if !text.contains(&direct) {
            bail!("the generated configuration has no tenant {DIRECT_TENANT}");
        }
        if let Some(sink) = sink {
            // The leased tenant's table ends where the direct tenant's begins.
            let direct_table = format!("[[tenants]]\n{direct}");
            let at = text.find(&direct_table).with_context(|| {
                format!("the generated configuration has no table for {DIRECT_TENANT}")
            })?;
            text.insert_str(
                at,
                &format!(
                    "[[tenants.audit_sinks]]\nname = \"siem\"\ntype = \"syslog\"\naddress = \"{sink}\"\n\n"
                ),
            );
        }
        text = text.replacen(&direct, &format!("{direct}leasing = {{ enabled = false }}\n"), 1);
        if !audit {
            text = without_table(&text, "[audit]");
        } else {
            // The audit signing key exists, as at every start of a deployed proxy but its very
            // first: start-to-ready measures a (re)start, not the one-time key generation
            // (whose first use of AWS-LC's random generator seeds it, ~50 ms here).
            let spool = dir.path().join("audit");
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(&spool)?;
            keyhold_audit::checkpoint::CheckpointSigner::load_or_create(
                &spool.join("audit-signing.key"),
            )
            .map_err(|e| anyhow::anyhow!("audit signing key: {e:?}"))?;
        }
        if audit && !audit_settings.is_empty() {
            let at =
                text.find("[audit]\n").context("the generated configuration has no [audit]")?;
            text.insert_str(at + "[audit]\n".len(), audit_settings);
        }
        std::fs::write(&data.config_path, text)?;
        let exe = std::env::current_exe()?;
        let started = Instant::now();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        let mut child = command
            .args(["proxy", "--config"])
            .arg(&data.config_path)
            .env("KEYHOLD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start `keyhold proxy`")?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/ready"), "the proxy", &mut child).await?;
        let start_to_ready = started.elapsed();
        let api_key = std::fs::read_to_string(dir.path().join("api-key"))?.trim().to_owned();
        Ok(Self { child, url, api_key, start_to_ready, _dir: dir })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops it with SIGTERM and waits (up to two minutes) for it to exit, so that a profiler
    /// it runs under writes its output; dropping it instead kills it at once (SIGKILL).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(pid) = self.child.id().and_then(|id| i32::try_from(id).ok()) else {
            return Ok(()); // exited already
        };
        let pid = rustix::process::Pid::from_raw(pid).context("a process id of 0")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("cannot send SIGTERM to the proxy")?;
        match tokio::time::timeout(Duration::from_secs(120), self.child.wait()).await {
            Ok(status) => {
                status.context("waiting for the proxy to exit")?;
                Ok(())
            }
            Err(_) => bail!("the proxy did not exit within 2 minutes of SIGTERM"),
        }
    }

    /// The process's peak resident set (VmHWM), in bytes, where /proc tells.
    pub fn peak_rss(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

/// CPU time (user + system, all threads) the process `pid` has used, in seconds, where /proc
/// tells. /proc counts it in USER_HZ ticks, 100 per second on Linux (a fixed ABI value).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // `rest` begins at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The whole machine's CPU time so far, from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub struct MachineTicks {
    /// Every state together (user, nice, system, idle, iowait, irq, softirq, steal).
    pub total: u64,
    /// Time the hypervisor ran something else while this VM's vCPUs wanted to run.
    pub steal: u64,
}

impl MachineTicks {
    /// Now; `None` where `/proc/stat` is not there or not as expected.
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        Self::parse(stat.lines().next()?)
    }

    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        // user nice system idle iowait irq softirq steal (guest times are inside user).
        let values: Vec<u64> = fields.take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
        let steal = *values.get(7)?;
        Some(Self { total: values.iter().sum(), steal })
    }

    /// The share of the machine's time stolen since `before`, in percent.
    pub fn steal_percent_since(&self, before: &Self) -> Option<f64> {
        let total = self.total.checked_sub(before.total).filter(|t| *t > 0)?;
        let steal = self.steal.checked_sub(before.steal)?;
        Some(steal as f64 * 100.0 / total as f64)
    }
}

/// `text` without the TOML table `header` (up to the next table header).
fn without_table(text: &str, header: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            skipping = trimmed == header
                || trimmed.starts_with(&format!("{}.", &header[..header.len() - 1]));
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// An OpenBao dev server (in-memory storage, as Transit needs none per request) with Transit
/// enabled and one `aes256-gcm96` key, `bench`.
pub struct OpenBao {
    child: Child,
    /// Its base URL.
    pub url: String,
    /// Its root token.
    pub token: String,
}

impl OpenBao {
    /// Where the `bao` binary is: `--openbao-bin`, else `$KEYHOLD_TEST_OPENBAO_BIN` (what
    /// `scripts/services/vault.sh` installs), else `bao` on the PATH.
    pub fn find(given: Option<&Path>) -> Option<PathBuf> {
        if let Some(path) = given {
            return Some(path.to_owned());
        }
        if let Ok(path) = std::env::var("KEYHOLD_TEST_OPENBAO_BIN")
            && !path.is_empty()
        {
            return Some(PathBuf::from(path));
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths).map(|p| p.join("bao")).find(|p| p.is_file())
        })
    }

    /// Starts `bin server -dev` on a free loopback port and creates the key.
    pub async fn start(bin: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let token = format!("bench-{}", hex::encode(keyhold_core::random::random_array::<16>()?));
        let mut child = Command::new(bin)
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-root-token-id={token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env("BAO_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start OpenBao ({})", bin.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/v1/sys/health"), "OpenBao", &mut child).await?;
        let bao = Self { child, url, token };
        bao.call("sys/mounts/transit", serde_json::json!({"type": "transit"})).await?;
        bao.call("transit/keys/bench", serde_json::json!({"type": "aes256-gcm96"})).await?;
        Ok(bao)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn call(&self, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/{path}", self.url))
            .header("X-Vault-Token", &self.token)
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("OpenBao {path}: HTTP {}", response.status());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_time() {
        let mut spent = 0u64;
        for i in 0..20_000_000u64 {
            spent = spent.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(spent);
        let used = cpu_seconds(std::process::id()).expect("/proc/self/stat");
        assert!(used > 0.0, "{used}");
        assert!(cpu_seconds(u32::MAX).is_none());
    }

    #[test]
    fn stolen_time_is_the_eighth_value_of_the_cpu_line() {
        let before = MachineTicks::parse("cpu  100 0 50 800 10 0 5 35 7 0").expect("a cpu line");
        let after = MachineTicks::parse("cpu  200 0 60 900 10 0 5 55 9 0").expect("a cpu line");
        // Guest times (the last two) are already counted in user time.
        assert_eq!((before.total, before.steal), (1000, 35));
        let stolen = after.steal_percent_since(&before).expect("time went by");
        assert!((stolen - 20.0 / 230.0 * 100.0).abs() < 1e-9, "{stolen}");
        assert!(before.steal_percent_since(&before).is_none(), "no time, no share");
        assert!(MachineTicks::parse("cpu0 1 2 3 4 5 6 7 8").is_none(), "one core's line");
        assert!(MachineTicks::parse("cpu  1 2 3").is_none(), "too short");
        assert!(MachineTicks::now().is_some(), "this machine's /proc/stat");
    }

    #[test]
    fn a_table_is_dropped_with_its_subtables() {
        let text = "a = 1\n[audit]\nspool_dir = \"x\"\n[audit.x]\ny = 2\n[leasing]\nz = 3\n";
        assert_eq!(without_table(text, "[audit]"), "a = 1\n[leasing]\nz = 3\n");
    }
}
