//! The run directory: resolved config, metrics in long format, timing.
//! Every file is written to a temporary name and renamed into place.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `contents` to `path` through `path.tmp` and a rename, so a reader
/// (or a kill) never sees a half-written file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Creates the run directory, or explains in one line why it cannot.
pub fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::input(format!("{}: cannot create the output directory: {e}", dir.display())))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::input(format!("{}: output directory is not writable: {e}", dir.display())))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// A long-format table `step,task,split,metric,value`, rewritten whole
/// (atomically) on every flush.
pub struct MetricsLog {
    path: PathBuf,
    text: String,
}

impl MetricsLog {
    pub fn new(path: PathBuf, header: &str) -> Self {
        MetricsLog { path, text: format!("{header}\n") }
    }

    /// Adds one row; floats print in Rust's shortest round-trip form, so the
    /// same bits always give the same text.
    pub fn row(&mut self, fields: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.text, "{fields}");
    }

    pub fn flush(&self) -> Result<()> {
        write_atomic(&self.path, self.text.as_bytes())
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}
