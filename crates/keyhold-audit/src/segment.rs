//! Spool segments: when a tenant's file is closed (at `segment_bytes`), it is renamed
//! `<tenant file>.<seq of its first record, 20 digits>` and a new file begun; the chain goes on
//! across them. These helpers name and list segments and read a file's first record; the spool
//! (rotation, deletion) and delivery (reading across segments) use them.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::spool::SpoolError;

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The name a tenant file gets as a closed segment: `<file>.<first seq, 20 digits>`.
pub(crate) fn segment_path(current: &Path, first_seq: u64) -> PathBuf {
    let mut name = current.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{first_seq:020}"));
    current.with_file_name(name)
}

/// The current file a segment belongs to, if `path` is a segment's name.
pub(crate) fn segment_base(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let (base, digits) = name.rsplit_once('.')?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) && base.ends_with(".jsonl"))
        .then(|| path.with_file_name(base))
}

/// The closed segments of the tenant file `current`, oldest first, with their first `seq`.
pub fn segments(current: &Path) -> Vec<(u64, PathBuf)> {
    let Some(dir) = current.parent() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if segment_base(&path)? != current {
                return None;
            }
            let first = path.extension()?.to_str()?.parse().ok()?;
            Some((first, path))
        })
        .collect();
    found.sort();
    found
}

/// The `seq` of the first record of a file (0 if it has none).
pub fn first_record_seq(path: &Path) -> Result<u64, SpoolError> {
    use std::io::BufRead as _;
    let file = File::open(path)
        .map_err(|e| SpoolError::Io { path: path.to_owned(), reason: e.to_string() })?;
    let mut line = String::new();
    std::io::BufReader::new(file)
        .read_line(&mut line)
        .map_err(|e| SpoolError::Io { path: path.to_owned(), reason: e.to_string() })?;
    if !line.ends_with('\n') {
        return Ok(0);
    }
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_str::<Seq>(line.trim_end())
        .map(|s| s.seq)
        .map_err(|e| SpoolError::Corrupt { path: path.to_owned(), reason: e.to_string() })
}
