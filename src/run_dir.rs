//! The run directory: resolved config, metrics in long format, timing.
//! Every file is written to a temporary name and renamed into place.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `contents` to `path` through a temporary file beside it and a
/// rename, so a reader (or a kill) never sees a half-written file. The
/// temporary name is unique to this process and call, so processes writing
/// the same file (array tasks of one sweep) never write into each other's.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}-{}.tmp", std::process::id(), CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A deterministic crash for the kill-and-resume tests, from the
/// environment: `EBB_KILL_AT=step:N` makes a run send itself SIGKILL once
/// step N is done (after its checkpoint, if one is due);
/// `EBB_KILL_AT=checkpoint:N` half way through writing step N's checkpoint,
/// leaving its temporary file half written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillPoint {
    AfterStep(u64),
    InCheckpoint(u64),
}

/// `EBB_KILL_AT`, parsed once; a value that is not `step:N` or
/// `checkpoint:N` is an input error.
pub fn kill_point() -> Result<Option<KillPoint>> {
    static PARSED: std::sync::OnceLock<std::result::Result<Option<KillPoint>, String>> = std::sync::OnceLock::new();
    let parsed = PARSED.get_or_init(|| {
        let Ok(value) = std::env::var("EBB_KILL_AT") else { return Ok(None) };
        let at = |n: &str| n.parse::<u64>().ok();
        match value.split_once(':') {
            Some(("step", n)) if let Some(n) = at(n) => Ok(Some(KillPoint::AfterStep(n))),
            Some(("checkpoint", n)) if let Some(n) = at(n) => Ok(Some(KillPoint::InCheckpoint(n))),
            _ => Err(format!("EBB_KILL_AT={value}: expected step:N or checkpoint:N")),
        }
    });
    parsed.clone().map_err(Error::Input)
}

/// Whether the run must die at `point` now.
pub fn kill_due(point: KillPoint) -> bool {
    kill_point().ok().flatten() == Some(point)
}

/// SIGKILL to this process: the real signal, as a crash or `kill -9` sends it.
pub fn kill_self() -> ! {
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    loop {
        std::thread::park();
    }
}

/// Writes the first half of `contents` to `path`'s temporary name, then
/// kills the process: a crash in the middle of `write_atomic`.
pub fn write_half_then_die(path: &Path, contents: &[u8]) -> ! {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}-killed.tmp", std::process::id()));
    let _ = std::fs::write(PathBuf::from(tmp), &contents[..contents.len() / 2]);
    kill_self()
}

/// Creates the run directory, or explains in one line why it cannot.
pub fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::input(format!("{}: cannot create the output directory: {e}", dir.display())))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"")
        .map_err(|e| Error::input(format!("{}: output directory is not writable: {e}", dir.display())))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// An exclusive claim on a run directory (an advisory `flock` on its
/// `.lock` file), held by the process that trains into it and released by
/// the kernel when that process ends, however it ends. Two processes (two
/// array tasks of a resubmitted sweep, say) never train into one directory.
pub struct RunLock(#[allow(dead_code)] std::fs::File);

impl RunLock {
    /// Claims `dir` (which must exist), or says which process holds it.
    pub fn take(dir: &Path) -> Result<RunLock> {
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // A status probe holds a shared lock for an instant: retry briefly.
        for _ in 0..100 {
            match flock(&file, libc::LOCK_EX) {
                Ok(true) => {
                    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                    let _ = file.set_len(0);
                    let _ = std::io::Write::write_all(
                        &mut &file,
                        format!("pid {} on {}\n", std::process::id(), host.trim()).as_bytes(),
                    );
                    return Ok(RunLock(file));
                }
                Ok(false) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(e) => {
                    return Err(Error::input(format!(
                        "{}: cannot lock it ({e}); run directories need a filesystem with working flock, shared by every node that runs them",
                        path.display()
                    )));
                }
            }
        }
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        Err(Error::Busy { dir: dir.to_path_buf(), holder: holder.trim().to_string() })
    }

    /// Whether some process holds `dir` now.
    pub fn held(dir: &Path) -> bool {
        let Ok(file) = std::fs::File::open(dir.join(".lock")) else { return false };
        // Released when `file` drops. A filesystem without flock reads as not held.
        matches!(flock(&file, libc::LOCK_SH), Ok(false))
    }
}

/// A non-blocking `flock`: Ok(true) when taken, Ok(false) when another
/// holder has it, Err for anything else (no lock support, …).
fn flock(file: &std::fs::File, mode: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(file), mode | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(e) }
}

/// A CSV log (e.g. `step,task,split,metric,value`), rewritten whole
/// (atomically) on every flush; optionally mirrored as JSON lines.
pub struct MetricsLog {
    path: PathBuf,
    text: String,
    jsonl: bool,
}

impl MetricsLog {
    pub fn new(path: PathBuf, header: &str) -> Self {
        MetricsLog { path, text: format!("{header}\n"), jsonl: false }
    }

    /// Also write `<name>.jsonl`, one object per row, on every flush.
    pub fn with_jsonl(mut self) -> Self {
        self.jsonl = true;
        self
    }

    /// Replaces the rows with `text` (a log restored from a checkpoint).
    pub fn restore(&mut self, text: &str) {
        self.text = text.to_string();
    }

    /// Adds one row; floats print in Rust's shortest round-trip form, so the
    /// same bits always give the same text.
    pub fn row(&mut self, fields: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.text, "{fields}");
    }

    pub fn flush(&self) -> Result<()> {
        write_atomic(&self.path, self.text.as_bytes())?;
        if self.jsonl {
            write_atomic(&self.path.with_extension("jsonl"), csv_to_jsonl(&self.text).as_bytes())?;
        }
        Ok(())
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// CSV with a header row → one JSON object per row; fields that parse as
/// numbers become numbers.
pub fn csv_to_jsonl(csv: &str) -> String {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else { return String::new() };
    let keys: Vec<&str> = header.split(',').collect();
    let mut out = String::with_capacity(csv.len() * 2);
    for line in lines {
        let mut obj = serde_json::Map::new();
        for (k, v) in keys.iter().zip(line.split(',')) {
            let value = match v.parse::<f64>() {
                Ok(x) if x.is_finite() => serde_json::json!(x),
                _ => serde_json::Value::String(v.to_string()),
            };
            obj.insert(k.to_string(), value);
        }
        out.push_str(&serde_json::Value::Object(obj).to_string());
        out.push('\n');
    }
    out
}
