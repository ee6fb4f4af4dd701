//! The lab's data tier: one append-only file shared by every node's builtin backend, where
//! `POST /commit` records `<request-id> <node> <sha256 of the body>` lines.
//!
//! The request id is an idempotency key, as a production data tier would use one: a commit
//! whose id is already recorded is not recorded again, and gets the original line back. That
//! is what turns Steadfast's promise (the same request, with the same `Steadfast-Request-Id`,
//! may reach a second backend after a takeover) into exactly-once effects. The nodes are
//! separate processes, so the check-then-append runs under an exclusive `flock` of the file;
//! each process keeps an index of the ids it has read and reads only what other nodes appended
//! since.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The line was appended now.
    Recorded(String),
    /// The id was already recorded with the same body: the line recorded then.
    AlreadyRecorded(String),
    /// The id was already recorded with another body.
    Conflict { recorded: String },
}

#[derive(Debug, thiserror::Error)]
#[error("data tier {path}: {what}: {source}")]
pub struct DataTierError {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

#[derive(Default)]
struct Index {
    /// Bytes of the file already read into `lines`.
    read_to: u64,
    /// A last line without its newline yet (another process mid-write cannot happen under the
    /// lock, but a file cut short by a crash can end so).
    partial: Vec<u8>,
    /// id → the first line recorded for it (without the newline).
    lines: HashMap<String, String>,
}

pub struct DataTier {
    path: PathBuf,
    file: File,
    index: Mutex<Index>,
}

/// Holds `flock(LOCK_EX)` until dropped.
struct FileLock<'a>(&'a File);

impl<'a> FileLock<'a> {
    fn exclusive(file: &'a File) -> std::io::Result<Self> {
        loop {
            // SAFETY: flock on a descriptor this File owns for the lock's lifetime.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock(file));
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // SAFETY: as above; unlocking cannot fail in a way we could act on.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl DataTier {
    pub fn open(path: &Path) -> Result<DataTier, DataTierError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|source| DataTierError {
                path: path.to_path_buf(),
                what: "opening",
                source,
            })?;
        Ok(DataTier {
            path: path.to_path_buf(),
            file,
            index: Mutex::new(Index::default()),
        })
    }

    fn error(&self, what: &'static str, source: std::io::Error) -> DataTierError {
        DataTierError {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Records `line` (`<id> <rest>\n`) unless `id` is recorded already. Blocking: call it off
    /// the async runtime's threads.
    pub fn commit(&self, id: &str, line: &str) -> Result<Committed, DataTierError> {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = FileLock::exclusive(&self.file).map_err(|e| self.error("locking", e))?;
        self.catch_up(&mut index)?;
        if let Some(recorded) = index.lines.get(id) {
            let same_body = recorded.rsplit(' ').next() == line.trim_end().rsplit(' ').next();
            let recorded = format!("{recorded}\n");
            return Ok(if same_body {
                Committed::AlreadyRecorded(recorded)
            } else {
                Committed::Conflict { recorded }
            });
        }
        append_line(&self.file, line.as_bytes()).map_err(|e| self.error("appending", e))?;
        // Our own line is read back by the next catch-up, like anybody's.
        Ok(Committed::Recorded(line.to_string()))
    }

    /// Reads what was appended since the last call into the index.
    fn catch_up(&self, index: &mut Index) -> Result<(), DataTierError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .file
                .read_at(&mut buf, index.read_to)
                .map_err(|e| self.error("reading", e))?;
            if n == 0 {
                return Ok(());
            }
            index.read_to += n as u64;
            let mut text = std::mem::take(&mut index.partial);
            text.extend_from_slice(&buf[..n]);
            let mut rest = &text[..];
            while let Some(end) = rest.iter().position(|b| *b == b'\n') {
                let line = String::from_utf8_lossy(&rest[..end]).into_owned();
                if let Some(id) = line.split(' ').next().filter(|id| !id.is_empty()) {
                    index.lines.entry(id.to_string()).or_insert(line.clone());
                }
                rest = &rest[end + 1..];
            }
            index.partial = rest.to_vec();
        }
    }
}

/// One `write()` on the `O_APPEND` descriptor, so even a writer that ignored the lock could not
/// split a line. A short write (a full disk) is an error rather than a second write.
fn append_line(file: &File, line: &[u8]) -> std::io::Result<()> {
    // Bounded retries: EINTR means nothing was written.
    for _ in 0..8 {
        match (&*file).write(line) {
            Ok(written) if written == line.len() => return Ok(()),
            Ok(written) => {
                return Err(std::io::Error::other(format!(
                    "short write of {written} of {} bytes",
                    line.len()
                )))
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Err(std::io::Error::other("write interrupted 8 times"))
}

/// Counts each id's lines in a data tier file: the check of exactly-once effects.
pub fn id_counts(path: &Path) -> std::io::Result<HashMap<String, usize>> {
    let text = std::fs::read_to_string(path)?;
    let mut counts = HashMap::new();
    for line in text.lines() {
        if let Some(id) = line.split(' ').next().filter(|id| !id.is_empty()) {
            *counts.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// The exactly-once verdict on the commits a client saw acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExactlyOnce {
    pub acknowledged: usize,
    /// Acknowledged ids the data tier does not hold (lost effects).
    pub missing: Vec<String>,
    /// Ids the data tier holds more than once, acknowledged or not (repeated effects).
    pub duplicated: Vec<String>,
}

impl ExactlyOnce {
    pub fn holds(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty()
    }
}

/// Compares the ids a client saw acknowledged with the data tier file at `path`.
pub fn check_exactly_once(path: &Path, acknowledged: &[String]) -> std::io::Result<ExactlyOnce> {
    let counts = match id_counts(path) {
        Ok(counts) => counts,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && acknowledged.is_empty() => {
            HashMap::new()
        }
        Err(e) => return Err(e),
    };
    let mut duplicated: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    duplicated.sort();
    Ok(ExactlyOnce {
        acknowledged: acknowledged.len(),
        missing: acknowledged
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .cloned()
            .collect(),
        duplicated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempFile(PathBuf);
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn temp(tag: &str) -> TempFile {
        TempFile(
            std::env::temp_dir().join(format!("steadfast-data-tier-{tag}-{}", std::process::id())),
        )
    }

    #[test]
    fn an_id_is_recorded_once_across_writers() {
        let file = temp("once");
        // Two "nodes": two handles with their own index, like two backend processes.
        let n1 = DataTier::open(&file.0).unwrap();
        let n2 = DataTier::open(&file.0).unwrap();
        assert_eq!(
            n1.commit("r1", "r1 n1 aa\n").unwrap(),
            Committed::Recorded("r1 n1 aa\n".into())
        );
        assert_eq!(
            n2.commit("r1", "r1 n2 aa\n").unwrap(),
            Committed::AlreadyRecorded("r1 n1 aa\n".into())
        );
        assert_eq!(
            n2.commit("r1", "r1 n2 bb\n").unwrap(),
            Committed::Conflict {
                recorded: "r1 n1 aa\n".into()
            }
        );
        n2.commit("r2", "r2 n2 cc\n").unwrap();
        assert_eq!(
            n1.commit("r2", "r2 n1 cc\n").unwrap(),
            Committed::AlreadyRecorded("r2 n2 cc\n".into())
        );
        let counts = id_counts(&file.0).unwrap();
        assert_eq!(counts.len(), 2);
        assert!(counts.values().all(|c| *c == 1));
    }

    #[test]
    fn the_verdict_names_missing_and_repeated_ids() {
        let file = temp("verdict");
        std::fs::write(&file.0, "a n1 x\nb n1 y\nb n2 y\n").unwrap();
        let verdict = check_exactly_once(&file.0, &["a".to_string(), "c".to_string()]).unwrap();
        assert_eq!(verdict.acknowledged, 2);
        assert_eq!(verdict.missing, vec!["c".to_string()]);
        assert_eq!(verdict.duplicated, vec!["b".to_string()]);
        assert!(!verdict.holds());
        let none = temp("absent");
        assert!(check_exactly_once(&none.0, &[]).unwrap().holds());
        assert!(check_exactly_once(&none.0, &["a".to_string()]).is_err());
    }

    #[test]
    fn concurrent_writers_never_record_an_id_twice() {
        let file = temp("concurrent");
        let path = file.0.clone();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let tier = DataTier::open(&path).unwrap();
                    for i in 0..200 {
                        let id = format!("id{i}");
                        tier.commit(&id, &format!("{id} t{t} same\n")).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let counts = id_counts(&path).unwrap();
        assert_eq!(counts.len(), 200);
        assert!(counts.values().all(|c| *c == 1), "{counts:?}");
    }
}
