//! ebb: a toy-transformer training engine for studying how capabilities
//! decay once their task leaves the training distribution.
//!
//! Data flow: `config` (TOML) → `tasks` (generators) → `data` (batches) →
//! `train` (loop, AdamW, schedule) running `model` on a `backend` → `eval` →
//! the run directory (`run_dir`).

pub mod analysis;
pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod float;
pub mod model;
pub mod plot;
pub mod rng;
pub mod run_dir;
pub mod sweep;
pub mod tasks;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
