//! An experiment resolved from its config: the suite's tasks generated and
//! split, the held-out sets chosen, the mixture over time resolved, and the
//! config rewritten with every task inline (what a run directory's
//! `config.toml` holds). Every command that reads a config, or a run's
//! `config.toml`, goes through `Experiment::resolve`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{Config, DataConfig};
use crate::error::{Error, Result};
use crate::tasks::Suite;
use crate::tasks::spec::{self, SuiteFile, SuiteSpec};
use crate::train::events::Mixture;

pub struct Experiment {
    /// Resolved: `data` lists every task inline; `train.steps` and
    /// `train.batch_size` are what sequential phases and full batch make them.
    pub config: Config,
    pub suite: Suite,
    pub mixture: Mixture,
}

impl Experiment {
    /// `Config::load` and `resolve` in one.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Experiment> {
        Self::resolve(Config::load(path, overrides)?, path)
    }

    /// Builds `config`'s suite and mixture and checks the settings that
    /// depend on them; `path` is the config file (named in errors, anchors
    /// a relative `data.suite`). Resolving a resolved config changes nothing.
    pub fn resolve(mut config: Config, path: &Path) -> Result<Experiment> {
        let spec = suite_spec(&config.data, path)?;
        let mut suite = Suite::build(&spec, config.seed, path)?;
        suite.choose_eval_sets(config.eval.examples);
        config.data = inline(&spec, config.data.full_batch);
        if config.data.full_batch {
            config.train.batch_size = full_batch_size(&suite, path)?;
        }
        if let Some(seq) = &config.sequential {
            let phases = if seq.order.is_empty() { suite.tasks.len() } else { seq.order.len() };
            config.train.steps = phases as u64 * seq.phase_steps;
        }
        check_against_suite(&config, &suite, path)?;
        let mixture = Mixture::build(&config.schedule, config.sequential.as_ref(), config.train.steps, &suite, path)?;
        Ok(Experiment { config, suite, mixture })
    }
}

/// The suite `[data]` describes: the suite file's tasks, then the inline
/// ones, with `weights` applied.
pub fn suite_spec(data: &DataConfig, config_path: &Path) -> Result<SuiteSpec> {
    let mut spec = SuiteSpec { name: String::new(), tags: false, tasks: Vec::new() };
    if let Some(suite) = &data.suite {
        let base = config_path.parent().unwrap_or(Path::new("."));
        let path = base.join(suite);
        if !path.is_file() {
            return Err(Error::key(
                config_path,
                "data.suite",
                format!("{suite:?}"),
                format!("no suite file at {}", path.display()),
            ));
        }
        spec = SuiteFile::load(&path)?.expand(&suite_name(suite), &path)?;
    }
    let inline = SuiteFile {
        name: None,
        description: None,
        tags: None,
        defaults: data.defaults.clone(),
        tasks: data.tasks.clone(),
        translate: data.translate.clone(),
    };
    let inline = inline.expand("inline", config_path)?;
    if spec.name.is_empty() {
        spec.name = inline.name.clone();
    }
    spec.tasks.extend(inline.tasks);
    if let Some(name) = &data.name {
        spec.name = name.clone();
    }
    if let Some(tags) = data.tags {
        spec.tags = tags;
    }
    if spec.tasks.is_empty() {
        return Err(Error::key(
            config_path,
            "data",
            "(no tasks)",
            "name a suite file (data.suite) or list tasks (data.tasks)",
        ));
    }
    spec::apply_weights(&mut spec, &data.weights, config_path)?;
    Ok(spec)
}

/// The suite of `arg`: a suite file, a suite shipped in `tasks/` by name,
/// or an experiment config (its `[data]`), and the file it came from.
pub fn load_suite_spec(arg: &str) -> Result<(SuiteSpec, std::path::PathBuf)> {
    let path = spec::find_suite_file(arg)?;
    match SuiteFile::load(&path) {
        Ok(file) => {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            Ok((file.expand(&name, &path)?, path))
        }
        // Not a suite file: read it as an experiment config.
        Err(_) => {
            let experiment = Experiment::load(&path, &[])?;
            Ok((suite_spec(&experiment.config.data, &path)?, path))
        }
    }
}

/// `[data]` with every task written out inline.
fn inline(spec: &SuiteSpec, full_batch: bool) -> DataConfig {
    DataConfig {
        suite: None,
        name: Some(spec.name.clone()),
        tags: Some(spec.tags),
        full_batch,
        weights: BTreeMap::new(),
        defaults: toml::Table::new(),
        translate: None,
        tasks: spec.tasks.iter().map(|t| t.to_table()).collect(),
    }
}

/// `tasks/b-shared.toml` → `b-shared`.
fn suite_name(path: &str) -> String {
    Path::new(path).file_stem().map_or_else(|| path.to_string(), |s| s.to_string_lossy().into_owned())
}

/// The batch size of full-batch training: every training example of every
/// weighted task, which must each have a finite training set.
fn full_batch_size(suite: &Suite, path: &Path) -> Result<usize> {
    let mut total = 0;
    for (task, weight) in suite.tasks.iter().zip(&suite.weights) {
        if *weight == 0.0 {
            continue;
        }
        match &task.train_set {
            Some(set) => total += set.len(),
            None => {
                return Err(Error::key(
                    path,
                    "data.full_batch",
                    "true",
                    format!("task `{}` has no finite training set (give it train_examples or train_fraction)", task.id),
                ));
            }
        }
    }
    Ok(total)
}

/// The settings that must fit the suite: every task's held-out set large
/// enough to measure, and a context long enough for its longest example.
fn check_against_suite(config: &Config, suite: &Suite, path: &Path) -> Result<()> {
    let min = config.eval.min_examples;
    for (task, eval_set) in suite.tasks.iter().zip(&suite.eval_sets) {
        let held_out = eval_set.len();
        if held_out < min {
            return Err(Error::key(
                path,
                "eval.min_examples",
                min,
                format!(
                    "suite `{}` task `{}` has only {held_out} held-out problems (give it a larger problem space or eval_fraction)",
                    suite.name, task.id
                ),
            ));
        }
    }
    let layout = crate::model::ParamLayout::new(&config.model_shape(suite.vocab.len()));
    for pattern in &config.train.frozen {
        if layout.matching(pattern).next().is_none() {
            return Err(Error::key(
                path,
                "train.frozen",
                format!("{pattern:?}"),
                "names no parameter tensor (names as in weights/*.safetensors, or a prefix ending in *)",
            ));
        }
    }
    if layout.named_by(&config.train.frozen).iter().all(|&f| f) {
        return Err(Error::key(path, "train.frozen", format!("{:?}", config.train.frozen), "leaves nothing to train"));
    }
    let need = suite.max_len() + 1;
    if config.model.n_ctx < need {
        let longest = suite.tasks.iter().max_by_key(|t| t.max_len()).expect("a suite has tasks");
        return Err(Error::key(
            path,
            "model.n_ctx",
            config.model.n_ctx,
            format!(
                "shorter than the longest example (task `{}`: {} tokens with BOS and EOS need n_ctx ≥ {need})",
                longest.id,
                longest.max_len() + 2
            ),
        ));
    }
    Ok(())
}
