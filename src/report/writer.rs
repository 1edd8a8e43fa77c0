//! Writes the JSON atomically: checked before the run (exists? writable?), written into a temp file
//! in the target directory and renamed over the target only at the end. A failed run never replaces
//! an existing file.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::RunReport;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0} already exists: pass --force to replace it, or choose another --out")]
    Exists(PathBuf),
    #[error("cannot write {path}: {reason}")]
    Unwritable { path: PathBuf, reason: String },
}

/// The output file, claimed before the run starts (a clone is the same claim: the interrupt
/// handler writes through one, and only one of them writes).
#[derive(Debug, Clone)]
pub struct OutputFile {
    path: PathBuf,
    force: bool,
}

/// What happened to the JSON at the end.
#[derive(Debug, PartialEq)]
pub enum Written {
    Yes(PathBuf),
    /// A failed run's report was not written over an existing file.
    KeptExisting(PathBuf),
}

impl OutputFile {
    pub fn claim(path: &Path, force: bool) -> Result<OutputFile, WriteError> {
        if path.exists() && !force {
            return Err(WriteError::Exists(path.to_path_buf()));
        }
        if path.is_dir() {
            return Err(WriteError::Unwritable { path: path.to_path_buf(), reason: "it is a directory".into() });
        }
        // Writable? A temp file made and removed at once: nothing stays beside the target while
        // the run goes on (a rank killed with -9 leaves no litter); the real one is made at the end.
        drop(temp_beside(path)?);
        Ok(OutputFile { path: path.to_path_buf(), force })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(self, report: &RunReport) -> Result<Written, WriteError> {
        // A run that did not finish (failed, interrupted) never replaces an earlier result.
        let failed = matches!(report.status.state, super::State::Failed | super::State::Interrupted);
        if failed && self.path.exists() {
            return Ok(Written::KeptExisting(self.path));
        }
        let json = serde_json::to_vec_pretty(report)
            .map_err(|e| WriteError::Unwritable { path: self.path.clone(), reason: e.to_string() })?;
        self.write_bytes(&json)
    }

    /// Whether the file is written gzip-compressed (its name ends in `.gz`).
    pub fn gzipped(&self) -> bool {
        self.path.extension().is_some_and(|e| e == "gz")
    }

    /// Writes any document (the trace, the token log) with the same temp-file-and-rename
    /// discipline, ended by a newline; gzip-compressed when the name ends in `.gz` (Perfetto,
    /// chrome://tracing, pandas and zcat read those as they are).
    pub fn write_bytes(self, doc: &[u8]) -> Result<Written, WriteError> {
        let err = |e: String| WriteError::Unwritable { path: self.path.clone(), reason: e };
        let mut temp = temp_beside(&self.path)?;
        let written = if self.path.extension().is_some_and(|e| e == "gz") {
            let mut gz = flate2::write::GzEncoder::new(temp.as_file_mut(), flate2::Compression::default());
            gz.write_all(doc).and_then(|_| gz.write_all(b"\n")).and_then(|_| gz.finish().map(|_| ()))
        } else {
            temp.write_all(doc).and_then(|_| temp.write_all(b"\n"))
        };
        written.and_then(|_| temp.as_file().sync_all()).map_err(|e| err(e.to_string()))?;
        let persisted = if self.force {
            temp.persist(&self.path).map(|_| ())
        } else {
            temp.persist_noclobber(&self.path).map(|_| ())
        };
        persisted.map_err(|e| err(e.error.to_string()))?;
        Ok(Written::Yes(self.path))
    }
}

/// A temp file in the target's directory (so the rename is atomic), removed when dropped.
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile, WriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("tpprof");
    // 0666 before the umask, as any file a program creates (the temp file's default is 0600).
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(&dir)
        .map_err(|e| WriteError::Unwritable {
            path: path.to_path_buf(),
            reason: format!("cannot create a file in {}: {e}", dir.display()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        std::fs::write(&p, "old").unwrap();
        assert!(matches!(OutputFile::claim(&p, false), Err(WriteError::Exists(_))));
        assert!(OutputFile::claim(&p, true).is_ok());
        assert!(OutputFile::claim(&dir.path().join("missing/r.json"), false)
            .err()
            .unwrap()
            .to_string()
            .contains("cannot create a file in"));
        assert!(OutputFile::claim(dir.path(), true).err().unwrap().to_string().contains("directory"));
        // A claim leaves no file beside the target while it is held, nor after.
        let held = OutputFile::claim(&dir.path().join("new.json"), false).unwrap();
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
        drop(held);
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    /// Result files follow the umask like any other file (they were 0600 whatever the umask, and
    /// --force turned a 0644 file into 0600).
    #[test]
    fn results_follow_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: umask only swaps the process's mask; read it and put it back at once.
        let mask = unsafe {
            let m = libc::umask(0o022);
            libc::umask(m);
            m
        } as u32;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        OutputFile::claim(&p, false).unwrap().write_bytes(b"{}").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o666 & !mask);
        assert_ne!(0o666 & !mask, 0o600, "a umask of 066 would make this test prove nothing");
    }

    #[test]
    fn a_gz_name_gets_a_gzip_file() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("t.json.gz");
        let out = OutputFile::claim(&gz, false).unwrap();
        assert!(out.gzipped());
        out.write_bytes(b"{\"a\": 1}").unwrap();
        let raw = std::fs::read(&gz).unwrap();
        assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzip magic");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_string(&mut text).unwrap();
        assert_eq!(text, "{\"a\": 1}\n");
        let plain = dir.path().join("t.json");
        let out = OutputFile::claim(&plain, false).unwrap();
        assert!(!out.gzipped());
        out.write_bytes(b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&plain).unwrap(), "{}\n");
    }
}
