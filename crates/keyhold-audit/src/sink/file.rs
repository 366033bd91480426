//! A local JSON-lines file: the records exactly as spooled, appended and synced.

use std::io::Write as _;
use std::path::PathBuf;

use super::{Outgoing, Sink, SinkError};

pub(super) struct FileSink {
    path: PathBuf,
    /// Whether the file's end was checked for a line cut short by a crash.
    repaired: bool,
}

impl FileSink {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path, repaired: false }
    }
}

/// Cuts an unfinished last line (a crash in the middle of a write): the delivery sends that
/// record again, whole.
fn cut_torn_line(file: &mut std::fs::File) -> std::io::Result<()> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = buf.get_mut(..usize::try_from(end - start).unwrap_or(0)).unwrap_or_default();
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        file.set_len(end)?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn send(&mut self, _tenant: &str, records: &[Outgoing]) -> Result<(), SinkError> {
        let mut text = Vec::with_capacity(records.iter().map(|r| r.line.len() + 1).sum());
        for record in records {
            text.extend_from_slice(record.line.as_bytes());
            text.push(b'\n');
        }
        let path = self.path.clone();
        let fail = |e: std::io::Error| SinkError::Unreachable {
            target: path.display().to_string(),
            reason: e.to_string(),
        };
        let repair = !self.repaired;
        let written = tokio::task::spawn_blocking({
            let path = self.path.clone();
            move || -> std::io::Result<()> {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut options = std::fs::OpenOptions::new();
                options.read(true).append(true).create(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&path)?;
                if repair {
                    cut_torn_line(&mut file)?;
                }
                file.write_all(&text)?;
                file.sync_data()
            }
        })
        .await
        .map_err(|e| fail(std::io::Error::other(e.to_string())))?;
        written.map_err(fail)?;
        self.repaired = true;
        Ok(())
    }
}
