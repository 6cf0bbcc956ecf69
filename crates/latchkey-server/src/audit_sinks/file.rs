//! The `file` sink: JSON Lines, one event per line, rotated by size.
//!
//! Rotation renames the full file to `NAME.LAST_SEQ` (the sequence number of its last
//! line, zero-padded to 20 digits so names sort in order) and opens a new `NAME`. Each
//! write is flushed and fsynced before the sink's cursor moves. On start the sink reads
//! the last sequence number already in the files and skips events up to it, so a crash
//! between a write and the cursor update duplicates nothing. A partial last line left by
//! a crash is cut off.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use latchkey_core::audit::AuditEvent;

pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    /// Open file and its current size; None until the first write.
    file: Option<(File, u64)>,
    /// Highest sequence number in the files; events up to it are skipped.
    written: u64,
}

impl FileSink {
    /// Prepares the sink and finds what earlier runs wrote.
    ///
    /// # Errors
    /// A message naming the path when its directory is missing or the file is unreadable.
    pub fn open(path: PathBuf, max_bytes: u64) -> Result<FileSink, String> {
        let directory = parent(&path);
        if !directory.is_dir() {
            return Err(format!(
                "the directory of `{}` does not exist; create it first",
                path.display()
            ));
        }
        let mut written = last_rotated_seq(&path);
        if path.exists() {
            let last = repair_and_read_last_seq(&path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            written = written.max(last);
        }
        Ok(FileSink {
            path,
            max_bytes,
            file: None,
            written,
        })
    }

    /// Appends the events not yet in the files, rotating first when they would not fit.
    pub async fn write(&mut self, events: &[Arc<AuditEvent>]) -> Result<(), String> {
        let mut text = Vec::new();
        let mut last = self.written;
        for event in events.iter().filter(|e| e.seq > self.written) {
            serde_json::to_writer(&mut text, event.as_ref()).map_err(|e| e.to_string())?;
            text.push(b'\n');
            last = event.seq;
        }
        if text.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let max_bytes = self.max_bytes;
        let written = self.written;
        let current = self.file.take();
        // File I/O and fsync block, so they run off the async threads.
        let result =
            tokio::task::spawn_blocking(move || append(&path, max_bytes, written, current, &text))
                .await
                .map_err(|e| format!("the file writer task failed: {e}"))?;
        match result {
            Ok(file) => {
                self.file = Some(file);
                self.written = last;
                Ok(())
            }
            Err(error) => {
                // Drop the handle: the next attempt reopens the file and cuts off any
                // partial line this one left.
                if let Ok(seq) = repair_and_read_last_seq(&self.path) {
                    self.written = self.written.max(seq);
                }
                Err(format!("cannot write `{}`: {error}", self.path.display()))
            }
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn open_append(path: &Path) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// Writes `text` (whole lines), rotating when the file is not empty and would grow past
/// `max_bytes`. `written` is the last sequence number in the current file.
fn append(
    path: &Path,
    max_bytes: u64,
    written: u64,
    current: Option<(File, u64)>,
    text: &[u8],
) -> std::io::Result<(File, u64)> {
    let (mut file, mut size) = match current {
        Some(open) => open,
        None => open_append(path)?,
    };
    if size > 0 && size + text.len() as u64 > max_bytes {
        file.sync_all()?;
        drop(file);
        let rotated = rotated_name(path, written);
        std::fs::rename(path, &rotated)?;
        // The rename must be durable before the new file receives events.
        File::open(parent(path))?.sync_all()?;
        tracing::info!(file = %rotated.display(), "rotated the audit file");
        (file, size) = open_append(path)?;
        File::open(parent(path))?.sync_all()?;
    }
    file.write_all(text)?;
    file.sync_data()?;
    Ok((file, size + text.len() as u64))
}

fn rotated_name(path: &Path, last_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{last_seq:020}"));
    PathBuf::from(name)
}

/// Returns the highest `LAST_SEQ` among `NAME.LAST_SEQ` files beside `path`.
fn last_rotated_seq(path: &Path) -> u64 {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return 0;
    };
    let prefix = format!("{name}.");
    let Ok(entries) = std::fs::read_dir(parent(path)) else {
        return 0;
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let file_name = entry.file_name();
            let suffix = file_name.to_str()?.strip_prefix(&prefix)?;
            (suffix.len() == 20).then(|| suffix.parse::<u64>().ok())?
        })
        .max()
        .unwrap_or(0)
}

/// Cuts off a partial last line and returns the sequence number of the last whole one.
fn repair_and_read_last_seq(path: &Path) -> std::io::Result<u64> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut reader = BufReader::new(&mut file);
    let mut line = String::new();
    let mut good_end = 0u64;
    let mut offset = 0u64;
    let mut last = 0u64;
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 {
            break;
        }
        offset += read as u64;
        if !line.ends_with('\n') {
            break;
        }
        if let Ok(event) = serde_json::from_str::<AuditEvent>(&line) {
            last = event.seq;
        }
        good_end = offset;
    }
    drop(reader);
    if good_end < file.metadata()?.len() {
        tracing::warn!(file = %path.display(), "cutting off a partial line left by an interrupted write");
        file.set_len(good_end)?;
        file.seek(SeekFrom::End(0))?;
        file.sync_all()?;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use latchkey_core::audit::{AuditRecord, GENESIS_HASH, Outcome, seal_event};

    fn events(range: std::ops::RangeInclusive<u64>) -> Vec<Arc<AuditEvent>> {
        range
            .map(|seq| {
                let record = AuditRecord {
                    time: "2026-12-04T10:00:00.000000Z".into(),
                    request_id: format!("req-{seq}"),
                    principal: r#"User::"alice""#.into(),
                    action: "read".into(),
                    resource: r#"Secret::"prod/db""#.into(),
                    outcome: Outcome::Allowed,
                    reason: None,
                    policies: vec![],
                    client_addr: None,
                    token_id: None,
                    detail: Default::default(),
                };
                Arc::new(seal_event(seq, &GENESIS_HASH, record))
            })
            .collect()
    }

    #[tokio::test]
    async fn restart_skips_lines_already_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut sink = FileSink::open(path.clone(), 1 << 20).unwrap();
        sink.write(&events(1..=5)).await.unwrap();

        // A crash after the write but before the cursor moved: the same batch comes again.
        let mut again = FileSink::open(path.clone(), 1 << 20).unwrap();
        again.write(&events(1..=7)).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<AuditEvent>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn partial_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut sink = FileSink::open(path.clone(), 1 << 20).unwrap();
        sink.write(&events(1..=2)).await.unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":3,\"ti").unwrap();

        let mut again = FileSink::open(path.clone(), 1 << 20).unwrap();
        again.write(&events(3..=3)).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<AuditEvent>(l).is_ok())
        );
    }

    #[tokio::test]
    async fn rotation_names_files_by_last_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut sink = FileSink::open(path.clone(), 4096).unwrap();
        for seq in 1..=40 {
            sink.write(&events(seq..=seq)).await.unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert!(names.len() >= 3, "{names:?}");
        assert_eq!(names[0], "audit.jsonl");
        assert!(
            names[1].starts_with("audit.jsonl.0000000000000000"),
            "{names:?}"
        );
        let reopened = FileSink::open(path, 4096).unwrap();
        assert_eq!(reopened.written, 40);
    }
}
