//! The experiment config: serde structs for the TOML file, `--set`
//! overrides, defaults, and validation with one-line errors naming the file,
//! the key and the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::Activation;
use crate::error::{Error, Result};
use crate::model::{Init, ModelShape, Norm};
use crate::tasks::spec::TranslateSpec;
pub use crate::train::events::{ScheduleEvent, SequentialConfig};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub analysis: AnalysisConfig,
    /// Continual learning: train the tasks one after another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<SequentialConfig>,
    /// Changes to the mixture at given steps: drop, revive, reweight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<ScheduleEvent>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Steps after a drop over which the area under the retention curve is
    /// taken (default: until the next event touching the task, or the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon: Option<u64>,
    /// A revived task has regained its skill at this share of its accuracy at the drop.
    pub regain: f64,
    /// A task dropped by a fixed-step event counts as learned when its exact
    /// match at the drop is at least this (a `when_learned` event uses its own).
    pub learned: f64,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig { horizon: None, regain: 0.95, learned: 0.9 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Hidden width of the MLP; 4·d_model when not given.
    pub d_mlp: Option<usize>,
    pub n_ctx: usize,
    pub activation: Activation,
    pub norm: Norm,
    pub tied_embeddings: bool,
    pub dropout: f64,
    /// `gpt2` (normal 0.02, residual projections scaled by depth) or
    /// `fan_in` (normal 1/√fan_in).
    pub init: Init,
    /// Start from the weights in this safetensors file (`weights/step-N.safetensors`
    /// of a run, or one written elsewhere) instead of `init`; relative to the
    /// config's directory. `--init-from`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

impl ModelConfig {
    /// The MLP's hidden width: `d_mlp`, by default 4 · d_model.
    pub fn d_mlp(&self) -> usize {
        self.d_mlp.unwrap_or(4 * self.d_model)
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            d_mlp: None,
            n_ctx: 32,
            activation: Activation::Gelu,
            norm: Norm::Pre,
            tied_embeddings: true,
            dropout: 0.0,
            init: Init::Gpt2,
            init_from: None,
        }
    }
}

/// The learning-rate schedule after warmup (`train.schedule`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Linear warmup, then constant.
    Constant,
    /// Linear warmup, then cosine decay to `lr_floor`·lr at the last step.
    Cosine,
    /// Linear warmup, then linear decay to `lr_floor`·lr at the last step.
    Linear,
}

/// Parameter groups that weight decay can apply to.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DecayGroupName {
    /// Weight matrices of linear layers (and an untied unembedding).
    Weights,
    /// The token embedding.
    Embeddings,
    /// The position embedding.
    Positions,
    Biases,
    /// LayerNorm gains and biases.
    Norms,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The last step; with `end_after_events`, the latest.
    pub steps: u64,
    /// End the run this many steps after its last schedule event takes
    /// effect (a `when_learned` event: once it fires, or at its cap),
    /// at `steps` at the latest; an `end` row in `events.csv` says where.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_after_events: Option<u64>,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub schedule: LrSchedule,
    /// Final learning rate of a decaying schedule, as a fraction of `lr`.
    pub lr_floor: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// Which parameter groups weight decay applies to.
    pub decay: Vec<DecayGroupName>,
    /// Global gradient-norm clip; 0 turns clipping off.
    pub grad_clip: f64,
    /// Log train loss, lr and gradient norm every this many steps.
    pub log_every: u64,
    /// Parameter tensors that do not train (AdamW leaves them as they are):
    /// names as in the weights files (`wte`, `h0.attn.qkv.w`) or prefixes
    /// ending in `*` (`h1.*`). Gradient clipping still uses the global norm
    /// over every tensor's gradient.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frozen: Vec<String>,
    /// Write a checkpoint every this many steps (0: never); `--checkpoint-every`.
    pub checkpoint_every: u64,
    /// What the loss averages over: every answer `token` alike (long
    /// answers weigh more), or every `example` alike.
    pub loss_per: LossPer,
    /// Also write `weights/step-N.safetensors` at step 0 and every this
    /// many steps (0: only where every run writes them: at each schedule
    /// event, before it changes the mixture, and at the end); `--weights-every`.
    #[serde(skip_serializing_if = "is_zero")]
    pub weights_every: u64,
    /// Write every training step's batch (`batches/step-N.safetensors`) and
    /// each task's evaluation set (`eval/TASK.safetensors`); `--dump-batches`.
    #[serde(skip_serializing_if = "is_false")]
    pub dump_batches: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The unit the training loss weighs equally.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LossPer {
    #[default]
    Token,
    Example,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            end_after_events: None,
            frozen: Vec::new(),
            batch_size: 32,
            lr: 1e-3,
            warmup_steps: 50,
            schedule: LrSchedule::Cosine,
            lr_floor: 0.1,
            betas: [0.9, 0.95],
            eps: 1e-8,
            weight_decay: 0.1,
            decay: vec![DecayGroupName::Weights, DecayGroupName::Embeddings],
            grad_clip: 1.0,
            log_every: 10,
            checkpoint_every: 0,
            loss_per: LossPer::Token,
            weights_every: 0,
            dump_batches: false,
        }
    }
}

/// What to train on: a suite file, tasks listed inline, or both.
/// In a resolved config every task is written out inline and `suite` is gone.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A suite file (`tasks/*.toml`), relative to this config's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    /// The suite's name (from the suite file when not given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Prompts start with a task-tag token (default: the suite's choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<bool>,
    /// Every batch is the whole finite training set of every weighted task.
    pub full_batch: bool,
    /// Mixture weights by task id, over the suite's own.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, f64>,
    /// Keys merged into every inline task.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub defaults: toml::Table,
    /// Translation pairs between the inline arithmetic tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub translate: Option<TranslateSpec>,
    /// Inline tasks (see `tasks::spec`).
    pub tasks: Vec<toml::Table>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many steps (and at step 0 and the last step).
    pub every: u64,
    /// Size of each task's fixed held-out set.
    pub examples: usize,
    /// Also evaluate 1, 2, 4, 8, … steps after every schedule event.
    pub after_events: bool,
    /// A task with fewer held-out problems than this is an error: its
    /// accuracy would be noise (±1/√n).
    pub min_examples: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { every: 100, examples: 256, after_events: true, min_examples: 32 }
    }
}

impl Config {
    /// Reads `path`, applies `--set key=value` overrides, fills defaults and
    /// validates every setting that does not need the suite. Every failure
    /// is one line naming the file, key and value. `Experiment::resolve`
    /// builds the suite and the mixture from it.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = Error::read_text(path)?;
        Self::parse(&text, path, overrides)
    }

    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Config> {
        let mut table = Error::parse_toml(path, text)?;
        for ov in overrides {
            apply_override(&mut table, ov)?;
        }
        Self::from_table(table, path)
    }

    /// A config from a parsed TOML table (`path` names the file in errors
    /// and anchors the relative paths `data.suite` and `model.init_from`).
    pub fn from_table(table: toml::Table, path: &Path) -> Result<Config> {
        let value = toml::Value::Table(table.clone());
        let mut cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let shown = lookup(&table, &key).map_or_else(|| "(missing)".to_string(), |v| v.to_string());
            Error::key(path, &key, shown, e.inner().message().lines().next().unwrap_or("invalid value"))
        })?;
        cfg.model.d_mlp = Some(cfg.model.d_mlp()); // written out in the run's config.toml
        if let Some(file) = cfg.model.init_from.take() {
            let file = path.parent().unwrap_or(Path::new(".")).join(file);
            // Absolute, so the run's own config.toml still finds it.
            match std::fs::canonicalize(&file) {
                Ok(found) if found.is_file() => cfg.model.init_from = Some(found),
                _ => return Err(Error::key(path, "model.init_from", file.display(), "no such file")),
            }
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks every setting on its own; `Experiment::resolve` checks those
    /// that depend on the suite.
    fn validate(&self, path: &Path) -> Result<()> {
        let m = &self.model;
        let t = &self.train;
        let bad = |key: &str, value: &dyn std::fmt::Display, why: &str| Err(Error::key(path, key, value, why));
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            return bad("name", &format!("{:?}", self.name), "must be a plain directory name");
        }
        if m.n_layers == 0 {
            return bad("model.n_layers", &m.n_layers, "must be at least 1");
        }
        if m.d_model == 0 {
            return bad("model.d_model", &m.d_model, "must be at least 1");
        }
        if m.n_heads == 0 || !m.d_model.is_multiple_of(m.n_heads) {
            return bad("model.n_heads", &m.n_heads, &format!("must divide model.d_model = {}", m.d_model));
        }
        if m.d_mlp == Some(0) {
            return bad("model.d_mlp", &0, "must be at least 1");
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return bad("model.dropout", &m.dropout, "must be in [0, 1)");
        }
        if t.steps == 0 {
            return bad("train.steps", &t.steps, "must be at least 1");
        }
        if t.end_after_events == Some(0) {
            return bad("train.end_after_events", &0, "must be at least 1 (leave it out to run to train.steps)");
        }
        if t.batch_size == 0 {
            return bad("train.batch_size", &t.batch_size, "must be at least 1");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad("train.lr", &t.lr, "must be positive");
        }
        if !(0.0..=1.0).contains(&t.lr_floor) {
            return bad("train.lr_floor", &t.lr_floor, "must be in [0, 1]");
        }
        for (i, b) in t.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return bad(&format!("train.betas[{i}]"), b, "must be in [0, 1)");
            }
        }
        if t.eps.is_nan() || t.eps <= 0.0 {
            return bad("train.eps", &t.eps, "must be positive");
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return bad("train.weight_decay", &t.weight_decay, "must be non-negative");
        }
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return bad("train.grad_clip", &t.grad_clip, "must be non-negative (0 turns clipping off)");
        }
        if t.log_every == 0 {
            return bad("train.log_every", &t.log_every, "must be at least 1");
        }
        if self.eval.every == 0 {
            return bad("eval.every", &self.eval.every, "must be at least 1");
        }
        if self.eval.examples < self.eval.min_examples.max(1) {
            return bad(
                "eval.examples",
                &self.eval.examples,
                &format!("must be at least eval.min_examples = {}", self.eval.min_examples),
            );
        }
        if !(self.analysis.regain > 0.0 && self.analysis.regain <= 1.0) {
            return bad("analysis.regain", &self.analysis.regain, "must be in (0, 1]");
        }
        if !(self.analysis.learned > 0.0 && self.analysis.learned <= 1.0) {
            return bad("analysis.learned", &self.analysis.learned, "must be in (0, 1]");
        }
        if self.analysis.horizon == Some(0) {
            return bad("analysis.horizon", &0, "must be at least 1");
        }
        if let Some(seq) = &self.sequential {
            if seq.phase_steps == 0 {
                return Err(Error::key(path, "sequential.phase_steps", 0, "must be at least 1"));
            }
            if let Some(t) = seq.when_learned
                && !(t > 0.0 && t <= 1.0)
            {
                return Err(Error::key(path, "sequential.when_learned", t, "must be in (0, 1]"));
            }
            match (seq.after, seq.when_learned) {
                (Some(after), None) => {
                    return Err(Error::key(path, "sequential.after", after, "only applies with when_learned"));
                }
                (Some(after), Some(_)) if after >= seq.phase_steps => {
                    return Err(Error::key(
                        path,
                        "sequential.after",
                        after,
                        format!("must be below phase_steps ({})", seq.phase_steps),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The model's shape for a vocabulary of `vocab` tokens.
    pub fn model_shape(&self, vocab: usize) -> ModelShape {
        let m = &self.model;
        ModelShape {
            vocab,
            n_ctx: m.n_ctx,
            d_model: m.d_model,
            n_layers: m.n_layers,
            n_heads: m.n_heads,
            d_mlp: m.d_mlp(),
            activation: m.activation,
            norm: m.norm,
            tied_embeddings: m.tied_embeddings,
            dropout: m.dropout,
            init: m.init,
        }
    }

    /// The resolved config as TOML, every default written out.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serializes")
    }

    /// The default run directory: `runs/<name>`.
    pub fn default_out(&self) -> PathBuf {
        PathBuf::from("runs").join(&self.name)
    }
}

/// Applies `key.path=value` to the table. The value is read as a TOML value
/// (`3e-4`, `true`, `"gelu"`, `[0.9, 0.99]`), or taken as a bare string.
fn apply_override(table: &mut toml::Table, ov: &str) -> Result<()> {
    let (key, value) = parse_override(ov)?;
    set_key(table, &key, value).map_err(|why| Error::input(format!("--set {ov}: {why}")))
}

/// `key=value` of a `--set`: the value as TOML (a bare word is a string).
pub fn parse_override(ov: &str) -> Result<(String, toml::Value)> {
    let Some((key, raw)) = ov.split_once('=') else {
        return Err(Error::input(format!("--set {ov}: expected key=value, e.g. train.lr=3e-4")));
    };
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    Ok((key.trim().to_string(), value))
}

/// Sets the dotted `key` (e.g. `train.lr`, or `schedule[0].step` for an
/// entry of an existing list) in `table`, creating sections.
pub fn set_key(table: &mut toml::Table, key: &str, value: toml::Value) -> std::result::Result<(), String> {
    let parts: Vec<(&str, Option<usize>)> = key.split('.').map(key_part).collect::<std::result::Result<_, _>>()?;
    let mut cur = table;
    for &(name, index) in &parts[..parts.len() - 1] {
        let entry = match index {
            None => cur.entry(name.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new())),
            Some(i) => list_entry(cur, name, i)?,
        };
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{name}` is not a section")),
        };
    }
    match parts[parts.len() - 1] {
        (name, None) => {
            cur.insert(name.to_string(), value);
        }
        (name, Some(i)) => *list_entry(cur, name, i)? = value,
    }
    Ok(())
}

/// One part of a key path: `name` or `name[i]`.
fn key_part(part: &str) -> std::result::Result<(&str, Option<usize>), String> {
    let bad = || "not a key path like train.lr or schedule[0].step".to_string();
    match part.split_once('[') {
        _ if part.is_empty() => Err(bad()),
        None => Ok((part, None)),
        Some((name, rest)) => {
            let i = rest.strip_suffix(']').and_then(|i| i.parse().ok()).ok_or_else(bad)?;
            if name.is_empty() { Err(bad()) } else { Ok((name, Some(i))) }
        }
    }
}

/// Entry `i` of the existing list `name` in `table`.
fn list_entry<'a>(
    table: &'a mut toml::Table,
    name: &str,
    i: usize,
) -> std::result::Result<&'a mut toml::Value, String> {
    match table.get_mut(name) {
        Some(toml::Value::Array(list)) => {
            let len = list.len();
            list.get_mut(i).ok_or_else(|| format!("`{name}` has {len} entries, no [{i}]"))
        }
        _ => Err(format!("`{name}` is not a list")),
    }
}

/// The value at a dotted path such as `train.lr` or `train.betas[1]`, if present.
fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut cur = table.get(parts.next()?)?;
    for part in parts {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = cur.as_table()?.get(name)?;
        if let Some(i) = index {
            cur = cur.as_array()?.get(i)?;
        }
    }
    Some(cur)
}
