//! Suites and tasks as written in TOML: a suite file (`tasks/*.toml` with
//! `[[tasks]]`), or tasks listed inline in an experiment's `[data]`.
//!
//! ```toml
//! name = "b-shared"
//! tags = false                 # prompts start with a task-tag token
//! [defaults]                   # merged into every task (a task's own keys win)
//! operands = 20
//! [[tasks]]
//! id = "digits"
//! family = "arithmetic"
//! form = "digits"
//! [translate]                  # expands to one `translate` task per pair
//! pairs = "all"                # or [["digits", "words"], ...]
//! held_out = [["roman", "tally"]]   # evaluated, never trained
//! ```
//!
//! Keys every task takes: `id`, `family`, `weight` (mixture weight, default
//! 1; 0 = evaluated only), `eval_fraction` (share of problems held out,
//! default 0.1), `split_group`, `train_examples` or `train_fraction` (a
//! finite training set). Every other key is the family's.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::Task;
use crate::error::{Error, Result};
use crate::rng;

/// One task as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    pub id: String,
    pub family: String,
    pub weight: f64,
    pub eval_fraction: f64,
    pub split_group: Option<String>,
    pub train_examples: Option<u64>,
    pub train_fraction: Option<f64>,
    /// The family's own parameters.
    pub params: toml::Table,
}

/// A suite as configured: tasks over one vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub struct SuiteSpec {
    pub name: String,
    pub tags: bool,
    pub tasks: Vec<TaskSpec>,
}

/// Names the file and task in a family's parameter errors.
pub struct ParamContext<'a> {
    pub file: &'a Path,
    pub task: &'a str,
}

impl ParamContext<'_> {
    /// Deserializes a family's parameters, naming the bad key and value.
    pub fn parse<P: DeserializeOwned>(&self, params: &toml::Table) -> Result<P> {
        serde_path_to_error::deserialize(toml::Value::Table(params.clone())).map_err(|e| {
            let key = e.path().to_string();
            let shown = params
                .get(key.split(['.', '[']).next().unwrap_or(""))
                .map_or_else(|| "(missing)".to_string(), |v| v.to_string());
            self.error(&key, shown, e.inner().message().lines().next().unwrap_or("invalid value"))
        })
    }

    pub fn error(&self, key: &str, value: impl std::fmt::Display, why: impl std::fmt::Display) -> Error {
        Error::key(self.file, &format!("tasks.{}.{key}", self.task), value, why)
    }
}

impl TaskSpec {
    /// Reads one `[[tasks]]` table, with `defaults` filled in under it.
    pub fn from_table(table: &toml::Table, defaults: &toml::Table, file: &Path, index: usize) -> Result<TaskSpec> {
        let mut t = defaults.clone();
        t.extend(table.clone());
        let id = match t.remove("id") {
            Some(toml::Value::String(s)) if !s.is_empty() && !s.contains([',', ' ', '"']) => s,
            Some(v) => {
                return Err(Error::key(
                    file,
                    &format!("tasks[{index}].id"),
                    v,
                    "must be a name without spaces or commas",
                ));
            }
            None => return Err(Error::key(file, &format!("tasks[{index}].id"), "(missing)", "every task needs an id")),
        };
        let key = |k: &str| format!("tasks.{id}.{k}");
        let family = match t.remove("family") {
            Some(toml::Value::String(s)) => s,
            Some(v) => return Err(Error::key(file, &key("family"), v, "must be a family name (see `ebb tasks list`)")),
            None => {
                return Err(Error::key(
                    file,
                    &key("family"),
                    "(missing)",
                    "every task needs a family (see `ebb tasks list`)",
                ));
            }
        };
        let float = |t: &mut toml::Table, k: &str, default: f64| -> Result<f64> {
            match t.remove(k) {
                None => Ok(default),
                Some(toml::Value::Float(x)) => Ok(x),
                Some(toml::Value::Integer(x)) => Ok(x as f64),
                Some(v) => Err(Error::key(file, &key(k), v, "must be a number")),
            }
        };
        let weight = float(&mut t, "weight", 1.0)?;
        if !(weight >= 0.0 && weight.is_finite()) {
            return Err(Error::key(file, &key("weight"), weight, "must be non-negative"));
        }
        let eval_fraction = float(&mut t, "eval_fraction", 0.1)?;
        if !(eval_fraction > 0.0 && eval_fraction < 1.0) {
            return Err(Error::key(file, &key("eval_fraction"), eval_fraction, "must be in (0, 1)"));
        }
        let split_group = match t.remove("split_group") {
            None => None,
            Some(toml::Value::String(s)) => Some(s),
            Some(v) => return Err(Error::key(file, &key("split_group"), v, "must be a string")),
        };
        let train_examples = match t.remove("train_examples") {
            None => None,
            Some(toml::Value::Integer(n)) if n > 0 => Some(n as u64),
            Some(v) => return Err(Error::key(file, &key("train_examples"), v, "must be a positive integer")),
        };
        let train_fraction = match t.remove("train_fraction") {
            None => None,
            Some(v) => match v.as_float().or(v.as_integer().map(|i| i as f64)) {
                Some(f) if f > 0.0 && f <= 1.0 => Some(f),
                _ => return Err(Error::key(file, &key("train_fraction"), v, "must be in (0, 1]")),
            },
        };
        if train_examples.is_some() && train_fraction.is_some() {
            return Err(Error::key(
                file,
                &key("train_fraction"),
                train_fraction.unwrap_or(0.0),
                "give train_examples or train_fraction, not both",
            ));
        }
        Ok(TaskSpec { id, family, weight, eval_fraction, split_group, train_examples, train_fraction, params: t })
    }

    /// The task as a TOML table, every key written out (for resolved configs).
    pub fn to_table(&self) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("id".into(), self.id.clone().into());
        t.insert("family".into(), self.family.clone().into());
        t.insert("weight".into(), self.weight.into());
        t.insert("eval_fraction".into(), self.eval_fraction.into());
        if let Some(g) = &self.split_group {
            t.insert("split_group".into(), g.clone().into());
        }
        if let Some(n) = self.train_examples {
            t.insert("train_examples".into(), (n as i64).into());
        }
        if let Some(f) = self.train_fraction {
            t.insert("train_fraction".into(), f.into());
        }
        t.extend(self.params.clone());
        t
    }
}

/// What a suite file or an experiment's `[data]` holds, before expansion.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteFile {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Option<bool>,
    #[serde(default)]
    pub defaults: toml::Table,
    #[serde(default)]
    pub tasks: Vec<toml::Table>,
    #[serde(default)]
    pub translate: Option<TranslateSpec>,
}

/// Translation tasks between the suite's arithmetic forms.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslateSpec {
    /// `"all"` ordered pairs of the suite's arithmetic forms, or a list of [from, to].
    pub pairs: toml::Value,
    /// Pairs that are evaluated but never trained (weight 0).
    #[serde(default)]
    pub held_out: Vec<[String; 2]>,
    /// Extra keys for every translation task (e.g. `weight`).
    #[serde(default)]
    pub defaults: toml::Table,
}

impl SuiteFile {
    /// Expands tasks (defaults, translation pairs) into a SuiteSpec.
    pub fn expand(&self, name: &str, file: &Path) -> Result<SuiteSpec> {
        let mut tasks = Vec::new();
        for (i, t) in self.tasks.iter().enumerate() {
            tasks.push(TaskSpec::from_table(t, &self.defaults, file, i)?);
        }
        if let Some(tr) = &self.translate {
            let forms: Vec<String> = tasks
                .iter()
                .filter(|t| t.family == "arithmetic")
                .map(|t| t.params.get("form").and_then(|f| f.as_str()).unwrap_or("digits").to_string())
                .collect();
            let pairs: Vec<[String; 2]> = match &tr.pairs {
                toml::Value::String(s) if s == "all" => forms
                    .iter()
                    .flat_map(|a| forms.iter().filter(move |b| *b != a).map(move |b| [a.clone(), b.clone()]))
                    .collect(),
                v => v.clone().try_into().map_err(|_| {
                    Error::key(file, "translate.pairs", v, "must be \"all\" or a list of [from, to] form names")
                })?,
            };
            for pair in pairs.iter().chain(&tr.held_out) {
                for form in pair {
                    if !forms.contains(form) {
                        return Err(Error::key(
                            file,
                            "translate.pairs",
                            format!("[{:?}, {:?}]", pair[0], pair[1]),
                            format!("no arithmetic task in this suite has form {form:?} (forms: {})", forms.join(", ")),
                        ));
                    }
                }
            }
            for pair in &tr.held_out {
                if !pairs.contains(pair) {
                    return Err(Error::key(
                        file,
                        "translate.held_out",
                        format!("[{:?}, {:?}]", pair[0], pair[1]),
                        "is not one of the translation pairs",
                    ));
                }
            }
            let base: toml::Table = self
                .defaults
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "operands" | "ops" | "eval_fraction" | "split_group"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for pair in &pairs {
                let mut t = base.clone();
                t.extend(tr.defaults.clone());
                t.insert("id".into(), format!("{}>{}", pair[0], pair[1]).into());
                t.insert("family".into(), "translate".into());
                t.insert("from".into(), pair[0].clone().into());
                t.insert("to".into(), pair[1].clone().into());
                if tr.held_out.contains(pair) {
                    t.insert("weight".into(), 0.0.into());
                }
                let i = tasks.len();
                tasks.push(TaskSpec::from_table(&t, &toml::Table::new(), file, i)?);
            }
        }
        Ok(SuiteSpec {
            name: self.name.clone().unwrap_or_else(|| name.to_string()),
            tags: self.tags.unwrap_or(false),
            tasks,
        })
    }

    /// Reads a suite file.
    pub fn load(path: &Path) -> Result<SuiteFile> {
        let text = Error::read_text(path)?;
        let table = Error::parse_toml(path, &text)?;
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            Error::key(path, &e.path().to_string(), "", e.inner().message().lines().next().unwrap_or("invalid value"))
        })
    }
}

/// Applies `weights` (task id → weight) to a suite; unknown ids are errors.
pub fn apply_weights(spec: &mut SuiteSpec, weights: &BTreeMap<String, f64>, file: &Path) -> Result<()> {
    for (id, &w) in weights {
        let Some(t) = spec.tasks.iter_mut().find(|t| &t.id == id) else {
            return Err(Error::key(file, &format!("data.weights.{id}"), w, "no task has this id"));
        };
        if !(w >= 0.0 && w.is_finite()) {
            return Err(Error::key(file, &format!("data.weights.{id}"), w, "must be non-negative"));
        }
        t.weight = w;
    }
    if spec.tasks.iter().all(|t| t.weight == 0.0) {
        return Err(Error::key(file, "data.weights", "(all zero)", "at least one task must have a positive weight"));
    }
    Ok(())
}

/// The finite training set of `task` if its spec asks for one: the first
/// `train_examples` (or `train_fraction` of all) problems not held out, in a
/// seeded order.
pub fn train_set(task: &Task, spec: &TaskSpec, seed: u64, file: &Path) -> Result<Option<Vec<u64>>> {
    let space = task.space();
    let wanted = match (spec.train_examples, spec.train_fraction) {
        (Some(n), _) => n,
        (None, Some(f)) => ((f * space as f64).floor() as u64).max(1),
        (None, None) => return Ok(None),
    };
    let mut r = rng::stream(seed, "train-set", rng::purpose_id(&task.id));
    let set = if space <= super::ENUMERATE_LIMIT {
        let mut open: Vec<u64> = (0..space).filter(|&p| !task.is_held_out(p)).collect();
        if (open.len() as u64) < wanted {
            let key = if spec.train_examples.is_some() { "train_examples" } else { "train_fraction" };
            return Err(Error::key(
                file,
                &format!("tasks.{}.{key}", task.id),
                wanted,
                format!("only {} of the {space} problems are not held out", open.len()),
            ));
        }
        super::shuffle(&mut open, &mut r);
        open.truncate(wanted as usize);
        open
    } else {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(wanted as usize);
        while (out.len() as u64) < wanted {
            let p = task.sample_train(&mut r);
            if seen.insert(p) {
                out.push(p);
            }
        }
        out
    };
    Ok(Some(set))
}

/// The suite files in `dir` (sorted by name), skipping files that are not suites.
pub fn shipped_suites(dir: &Path) -> Vec<(std::path::PathBuf, SuiteFile)> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths.into_iter().filter_map(|p| SuiteFile::load(&p).ok().filter(|f| !f.tasks.is_empty()).map(|f| (p, f))).collect()
}

/// The file `arg` names: a path, or a suite shipped in `tasks/` by name
/// (`b-shared` → `tasks/b-shared.toml`).
pub fn find_suite_file(arg: &str) -> Result<std::path::PathBuf> {
    let path = std::path::PathBuf::from(arg);
    if path.is_file() {
        return Ok(path);
    }
    let named = Path::new("tasks").join(format!("{arg}.toml"));
    if !named.is_file() {
        return Err(Error::input(format!("{arg}: no such file, and no suite tasks/{arg}.toml")));
    }
    Ok(named)
}
