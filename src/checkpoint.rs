//! Checkpoints: everything a training step depends on, in one file.
//!
//! Layout: the magic `EBBCKPT\0`, the format version (u32), the payload
//! length (u64), an FNV-1a checksum of the payload (u64), then the payload
//! (bincode). Files are written to a temporary name and renamed, so a kill
//! during a write leaves the previous checkpoint whole.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::train::events::TriggerProgress;

const MAGIC: &[u8; 8] = b"EBBCKPT\0";
pub const VERSION: u32 = 2;
const HEADER: usize = 8 + 4 + 8 + 8;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    /// The resolved config of the run that wrote it.
    pub config: String,
    /// The vocabulary, token by token: a fork must use the same one.
    pub vocab: Vec<String>,
    /// Steps done.
    pub step: u64,
    pub params: Vec<f32>,
    /// AdamW moments and step count.
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    pub adam_t: u64,
    /// Per task: (epoch, position) in its finite training set.
    pub epochs: Vec<(u64, u64)>,
    /// Each `when_learned` event's progress, in config order.
    pub learned: Vec<TriggerProgress>,
    /// The logs as of `step`.
    pub metrics: String,
    pub events: String,
    pub timing: String,
}

/// `RUN_DIR/checkpoints/step-N.bin`.
pub fn path_for(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step}.bin"))
}

pub fn write(path: &Path, ckpt: &Checkpoint) -> Result<()> {
    let payload = bincode::serde::encode_to_vec(ckpt, bincode::config::standard())
        .map_err(|e| Error::input(format!("{}: cannot encode checkpoint: {e}", path.display())))?;
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crate::rng::fnv1a(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    if crate::run_dir::kill_due(crate::run_dir::KillPoint::InCheckpoint(ckpt.step)) {
        crate::run_dir::write_half_then_die(path, &bytes);
    }
    crate::run_dir::write_atomic(path, &bytes)
}

pub fn read(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |why: String| Error::input(format!("{}: {why}", path.display()));
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(bad("not an ebb checkpoint (bad header)".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(bad(format!("checkpoint format version {version}; this ebb reads version {VERSION}")));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let checksum = u64::from_le_bytes(bytes[20..28].try_into().unwrap());
    let payload = &bytes[HEADER..];
    if payload.len() != len {
        return Err(bad(format!("truncated checkpoint: {} of {len} payload bytes", payload.len())));
    }
    if crate::rng::fnv1a(payload) != checksum {
        return Err(bad("corrupted checkpoint: checksum mismatch".into()));
    }
    let (ckpt, _) = bincode::serde::decode_from_slice(payload, bincode::config::standard())
        .map_err(|e| bad(format!("corrupted checkpoint: {e}")))?;
    Ok(ckpt)
}

/// Steps of the checkpoints in `run_dir`, ascending.
pub fn steps(run_dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.strip_suffix(".bin")?.parse().ok())
        .collect();
    steps.sort_unstable();
    steps
}

/// The latest checkpoint in `run_dir`, if it has one.
pub fn latest(run_dir: &Path) -> Result<Option<Checkpoint>> {
    steps(run_dir).last().map(|&step| read(&path_for(run_dir, step))).transpose()
}
