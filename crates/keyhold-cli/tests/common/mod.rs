//! Helpers shared by the CLI's integration tests (each test file includes it with `mod common;`).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_keyhold");

/// A `keyhold up` child process, killed on drop.
pub struct Up {
    /// The process.
    pub child: Child,
    /// The proxy's base URL, as `keyhold up` printed it.
    pub url: String,
    /// The broker's base URL, as `keyhold up` printed it.
    pub broker: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `keyhold up` in `dir` on free ports and waits until it prints the proxy's address.
pub fn up(dir: &Path) -> Up {
    up_with(dir, &[])
}

/// [`up`] with more arguments.
pub fn up_with(dir: &Path, extra: &[&str]) -> Up {
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--broker-listen", "127.0.0.1:0"])
        .args(extra)
        .current_dir(dir)
        .env_remove("KEYHOLD_API_KEY")
        .env_remove("KEYHOLD_DATA_DIR")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut broker = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("broker    ") {
                broker = rest.split_whitespace().next().unwrap_or_default().to_owned();
            }
            // Printed in this order: proxy, broker, data.
            if let Some(url) = line.trim().strip_prefix("proxy     ") {
                let _ = tx.send(url.to_owned());
            }
            if line.trim().starts_with("data      ") {
                let _ = tx.send(std::mem::take(&mut broker));
            }
        }
    });
    let url =
        rx.recv_timeout(Duration::from_secs(30)).expect("keyhold up printed no proxy address");
    let broker = rx.recv_timeout(Duration::from_secs(30)).expect("keyhold up printed no data line");
    Up { child, url, broker }
}
