//! ebb: a toy-transformer training engine for studying how capabilities
//! decay once their task leaves the training distribution.
//!
//! Data flow of one run:
//!
//! 1. `config` reads the TOML (with `--set` overrides) into plain structs
//!    and validates each setting; `experiment` resolves it: `tasks` builds
//!    the suite's task families, each problem's held-out or training side,
//!    and the vocabulary; `train::events` resolves the mixture over time
//!    (drops, revives, reweights, sequential phases, `when_learned`
//!    triggers). Every command that reads a config, or a run's
//!    `config.toml`, goes through `Experiment::resolve`.
//! 2. `train::run` loops over steps: `data` draws a batch from the mixture
//!    (seeded by `rng`), `model` runs forward and backward on a `backend`
//!    (the CPU reference in `float` f32, or CUDA), `train` clips and takes
//!    the AdamW step; `eval` measures every task on its fixed held-out set
//!    at the evaluation steps.
//! 3. Everything goes to the run directory (`run_dir`): metrics, events,
//!    `checkpoint`s for resume and fork, `weights` as safetensors.
//! 4. `analysis` reads the run directory back into `summary.json`
//!    (retention, decay fits, half-lives, savings, the accuracy matrix);
//!    `plot` draws it. `sweep` runs grids of runs (locally or as Slurm job
//!    arrays) and aggregates their summaries into scaling relations;
//!    `bench` times the training step. `commands` holds each command's
//!    work as the `ebb` binary (`main.rs`: parsing only) calls it.

pub mod analysis;
pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod data;
pub mod erasure;
pub mod error;
pub mod eval;
pub mod experiment;
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
