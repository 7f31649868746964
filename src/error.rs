//! The library's error type. Every user-facing error is one line that names
//! what was wrong (file, key, value) and maps to an exit code in `main`.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum Error {
    /// Bad user input: a config file, a `--set` override, a flag. Exit code 2.
    Input(String),
    /// An I/O failure on a named path. Exit code 2 (the user's path is wrong or unwritable).
    Io { path: PathBuf, source: std::io::Error },
    /// Training stopped because a loss or gradient was not finite. Exit code 1.
    Diverged { step: u64, what: String },
    /// Another process holds the run directory (`holder`: its pid and host).
    /// Exit code 3, so that a caller can tell "busy" from "failed".
    Busy { dir: PathBuf, holder: String },
    /// The device failed while working: out of memory, a driver or kernel
    /// error (`Backend::check`). The message is one line and says what failed.
    /// Exit code 1, as for a diverged run: the input was valid and the work
    /// was tried; it is the run that failed, not the request (exit code 2 says
    /// "fix the command or the config", which would mislead here).
    Device(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }

    /// `FILE: key `KEY` = VALUE: WHY` — the shape of every config error.
    pub fn key(file: &Path, key: &str, value: impl fmt::Display, why: impl fmt::Display) -> Self {
        Error::Input(format!("{}: key `{key}` = {value}: {why}", file.display()))
    }

    /// Reads a text input (a config, suite or sweep file): refuses what is
    /// not a regular file or is larger than any config could be, rather
    /// than reading a device or a pipe forever.
    pub fn read_text(path: &Path) -> Result<String> {
        const MAX: u64 = 16 << 20;
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::Input(format!("{}: not a regular file", path.display())));
        }
        if meta.len() > MAX {
            return Err(Error::Input(format!(
                "{}: {} bytes, larger than any config ({} MiB at most)",
                path.display(),
                meta.len(),
                MAX >> 20
            )));
        }
        std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
    }

    /// `text`, read from `path`, as a TOML table; a syntax error is one
    /// line: file, line, message.
    pub fn parse_toml(path: &Path, text: &str) -> Result<toml::Table> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().lines().next().unwrap_or("invalid TOML").trim();
            match line {
                Some(l) => Error::input(format!("{}: line {l}: {msg}", path.display())),
                None => Error::input(format!("{}: {msg}", path.display())),
            }
        })
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }

    /// The exit code of a command refused because its run directory is in use.
    pub const BUSY_EXIT_CODE: i32 = 3;

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) | Error::Io { .. } => 2,
            Error::Diverged { .. } | Error::Device(_) => 1,
            Error::Busy { .. } => Error::BUSY_EXIT_CODE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Input(msg) => f.write_str(msg),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Diverged { step, what } => write!(f, "diverged at step {step}: {what}"),
            Error::Device(msg) => f.write_str(msg),
            Error::Busy { dir, holder } => {
                write!(f, "{}: in use by another ebb process ({holder}); wait for it or stop it", dir.display())
            }
        }
    }
}

impl std::error::Error for Error {}
