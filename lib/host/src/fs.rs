//! Durable files: [`write_atomic`] replaces a file so that a reader (or a
//! process started after a crash or power cut) sees either the old content or
//! the new, never a mix, never an empty file.
//!
//! Steps: a temporary file in the same directory (unique to this process and
//! call, so concurrent writers of one path do not share it), write, fsync the
//! file, rename it over the target, fsync the directory (so the rename itself
//! is on disk). A failure removes the temporary file and names the step.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An atomic write that failed, with the step that failed.
#[derive(Debug, thiserror::Error)]
#[error("write {path} atomically: {step}: {source}")]
pub struct WriteError {
    /// The file being replaced.
    pub path: PathBuf,
    /// "create temporary file", "write", "fsync", "rename", "fsync directory".
    pub step: &'static str,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

impl From<WriteError> for std::io::Error {
    /// Keeps the kind of the underlying error; the message names the file
    /// and the step.
    fn from(e: WriteError) -> std::io::Error {
        std::io::Error::new(e.source.kind(), e.to_string())
    }
}

/// Replaces `path` with `data` atomically and durably; a new file gets mode
/// 0644 (before the umask).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), WriteError> {
    write_atomic_mode(path, data, 0o644)
}

/// [`write_atomic`] with the file mode of the new file (e.g. 0600 for keys).
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> Result<(), WriteError> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let err = |step, source| WriteError {
        path: path.to_path_buf(),
        step,
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| err("create temporary file", e))?;
        f.write_all(data).map_err(|e| err("write", e))?;
        f.sync_all().map_err(|e| err("fsync", e))?;
        std::fs::rename(&tmp, path).map_err(|e| err("rename", e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("fsync directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn mode_applies_to_a_new_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("key");
        write_atomic_mode(&p, b"secret", 0o600).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failure_names_the_file_and_step_and_cleans_up() {
        let t = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails.
        let p = t.path().join("taken");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("x"), b"").unwrap();
        let e = write_atomic(&p, b"data").unwrap_err();
        assert_eq!(e.step, "rename");
        assert!(e.to_string().contains("taken"), "{e}");
        let left = std::fs::read_dir(t.path()).unwrap().count();
        assert_eq!(left, 1, "temporary file left behind");
        let io: std::io::Error = e.into();
        assert!(io.to_string().contains("rename"), "{io}");
    }
}
