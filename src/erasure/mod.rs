//! `ebb erasure RUN_DIR --task ID`: once a dropped task's accuracy has
//! fallen, is the capability gone from the weights, or only switched off?
//!
//! Two models of the run are compared, read from the weights every run
//! keeps (`weights/step-N.safetensors`): P, the parameters just before the
//! drop, and D, those at the end of the drop window (or at `--at`); with
//! `--control`, a third: C, the same config and seed with the task at
//! weight 0 from step 0 (evaluated, never trained) at D's step, a model
//! that never learned the task, against which any recovery is judged. Every
//! score is exact match on the task's fixed held-out set V (the run's own
//! evaluation problems), so nothing here can pass by memorizing.
//!
//! Instruments (`--only` picks some):
//! - `restore`: one component at a time (the embeddings, each block, the
//!   final norm and unembedding) copied from P into D, and from D into P;
//!   the accuracy on V that comes back, and each component's relative L2
//!   change from P to D.
//! - `interpolate`: the straight line (1 − α)·P + α·D in weight space, the
//!   dropped task's and the kept tasks' accuracy along it.
//! - `noise`: Gaussian noise on every tensor, scaled to the tensor's RMS;
//!   a capability that was only suppressed sometimes returns under noise.
//! - `relearn`: each model fine-tuned on T, a fixed half of the task's
//!   training problems (at most `RELEARN_EXAMPLES`), alone, with the run's
//!   learning rate (constant, fresh AdamW), scored on V at steps 1, 2, 4, …
//!   and every `RELEARN_EVERY`: the steps to reach 0.9·A(P), censored at
//!   the cap. Each fine-tune is a run of its own in
//!   `erasure/TASK/relearn-M-CAP`, and ends one step after it holds the
//!   target at two evaluations in a row (the rest of its curve would not
//!   change the answer, and would take most of the battery's time).
//! - `relearn-frozen`: the same from D and C with most of the model frozen
//!   (`train.frozen`): only the embeddings and block 0 trainable, then only
//!   the last block; where relearning still comes fast tells where the
//!   capability's remains are.
//! - `few-shot`: the same fine-tune for `FEW_SHOT_STEPS` steps on only the
//!   first n ∈ {1, 4, 16, 64, 256} problems of T, evaluated only at its
//!   start and end: accuracy on V of P, D and C, and the recovery A_D / A_P.
//! - `probe`: per layer, a linear probe for the answer's first token on the
//!   residual stream at the last prompt position, fitted on T and scored on
//!   V, against a control task with shuffled labels (`probe`).
//! - `soft-prompt`: with the model frozen, k ∈ {0, 1, 2, 4, …, 32} input
//!   embeddings after BOS optimized on T (best of three starts), scored on
//!   V, and their fragility under perturbation (`soft_prompt`).
//!
//! Writes `RUN_DIR/erasure/TASK/erasure.json` (`Erasure`) and its plots;
//! `--control auto` trains C into `RUN_DIR/erasure/TASK/control-STEP`
//! (checkpointed, so a killed battery resumes it bit for bit).

pub mod charts;
pub mod probe;
pub mod soft_prompt;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analysis::DropSummary;
use crate::backend::Backend;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::eval::{EvalResult, Evaluator};
use crate::experiment::Experiment;
use crate::model::{Gpt, ParamLayout};

/// Bumped whenever `Erasure`'s fields change meaning.
pub const ERASURE_VERSION: u32 = 4;

/// Relative noise levels: σ times each tensor's RMS.
pub const NOISE_SIGMAS: [f64; 6] = [0.0025, 0.005, 0.01, 0.02, 0.05, 0.1];
/// Noise draws per level and model (the same draws for P and D).
pub const NOISE_DRAWS: u64 = 8;
/// Interpolation points: α = 0, 0.1, …, 1.
const ALPHA_STEPS: u32 = 10;

/// One instrument of the battery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Instrument {
    Restore,
    Interpolate,
    Noise,
    Relearn,
    RelearnFrozen,
    FewShot,
    Probe,
    SoftPrompt,
}

impl Instrument {
    pub const ALL: [Instrument; 8] = [
        Instrument::Restore,
        Instrument::Interpolate,
        Instrument::Noise,
        Instrument::Relearn,
        Instrument::RelearnFrozen,
        Instrument::FewShot,
        Instrument::Probe,
        Instrument::SoftPrompt,
    ];
}

/// The most training problems T holds.
pub const RELEARN_EXAMPLES: u64 = 4096;
/// Fine-tuning evaluates every this many steps (and at 1, 2, 4, … steps).
const RELEARN_EVERY: u64 = 50;
/// The share of A(P) a fine-tune must reach.
pub const RELEARN_TARGET: f64 = 0.9;
/// Few-shot recovery: training problems, and fine-tuning steps on them.
pub const FEW_SHOT: [u64; 5] = [1, 4, 16, 64, 256];
pub const FEW_SHOT_STEPS: u64 = 200;

/// What `ebb erasure` measured, as written to `erasure.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Erasure {
    pub version: u32,
    pub run: String,
    pub task: String,
    pub chance: f64,
    /// Whether the task was learned at its drop (the run's summary); if not,
    /// there was little to erase and the battery says little.
    pub learned_at_drop: bool,
    /// Held-out problems of the task scored (V).
    pub examples: usize,
    /// The tasks still trained over the drop window and learned at the drop
    /// (the run's noise floor): the "kept" accuracy is their mean.
    pub kept_tasks: Vec<String>,
    /// P: the model just before the drop.
    pub before: ModelScore,
    /// D: the model at the end of the drop window.
    pub after: ModelScore,
    /// C: the never-learned control at D's step (with `--control`).
    pub control: Option<ModelScore>,
    pub restore: Option<Restore>,
    pub interpolation: Option<Vec<InterpolationPoint>>,
    pub noise: Option<Vec<NoiseLevel>>,
    pub relearn: Option<Relearn>,
    /// Relearning from D and C with only part of the model trainable.
    pub relearn_frozen: Option<Vec<Relearn>>,
    pub few_shot: Option<Vec<FewShot>>,
    pub probes: Option<probe::Probes>,
    pub soft_prompts: Option<soft_prompt::SoftPrompts>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FewShot {
    /// Training problems: the first n of T.
    pub examples: u64,
    pub steps: u64,
    /// (model, exact match on V after `steps`) for P, D and C.
    pub accuracy: Vec<(String, f64)>,
    /// A_D / A_P after the same fine-tune (null when A_P is 0).
    pub recovery_d_over_p: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Relearn {
    /// What trains: `everything`, or the components left unfrozen.
    pub trainable: String,
    /// Fine-tuning steps at most.
    pub cap: u64,
    /// Training problems in T.
    pub examples: u64,
    /// 0.9·A(P): the accuracy each fine-tune must reach.
    pub target: f64,
    pub models: Vec<Relearning>,
    /// C's steps over D's (both reached), or null; with C censored, a lower bound (`speedup_is_lower_bound`).
    pub speedup_d_over_c: Option<f64>,
    pub speedup_is_lower_bound: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Relearning {
    /// `P`, `D` or `C`.
    pub model: String,
    /// The first evaluated step at or above the target, or null (censored at `cap`).
    pub steps_to_target: Option<u64>,
    /// (step, exact match on V) of every evaluation, to the cap or to one
    /// step after the second evaluation in a row at the target.
    pub curve: Vec<(u64, f64)>,
    /// The fine-tune's run directory, relative to the run.
    pub run: PathBuf,
}

/// One model's scores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelScore {
    pub step: u64,
    pub weights: PathBuf,
    pub exact_match: f64,
    /// Its 95% Wilson interval over the `examples` problems.
    pub exact_match_interval: [f64; 2],
    /// Exact match with the choice restricted to the task's answer tokens.
    pub exact_match_restricted: f64,
    /// Mean exact match of the kept tasks (null when there are none).
    pub kept_exact_match: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Restore {
    pub components: Vec<ComponentRestore>,
    /// D with every component replaced by P's, one by one: P's accuracy
    /// when the components cover every parameter.
    pub all_from_p_into_d: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ComponentRestore {
    /// `embeddings` (token and position; with tied embeddings the token
    /// embedding is the unembedding too), `block L`, or `final` (the
    /// final norm and, when untied, the unembedding).
    pub component: String,
    pub params: usize,
    /// ‖D − P‖ / ‖P‖ over the component's parameters.
    pub relative_change: f64,
    /// The task's exact match of D with this component taken from P, and its 95% Wilson interval.
    pub p_into_d: f64,
    pub p_into_d_interval: [f64; 2],
    /// The task's exact match of P with this component taken from D, and its interval.
    pub d_into_p: f64,
    pub d_into_p_interval: [f64; 2],
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterpolationPoint {
    pub alpha: f64,
    pub exact_match: f64,
    /// Its 95% Wilson interval.
    pub exact_match_interval: [f64; 2],
    pub kept_exact_match: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NoiseLevel {
    /// `P`, `D` or `C`.
    pub model: String,
    pub sigma: f64,
    /// The task's exact match under each draw.
    pub draws: Vec<f64>,
    pub mean: f64,
    /// The best draw over the model's unperturbed accuracy (null when that is 0).
    pub best_ratio: Option<f64>,
    /// Some draw scored above the unperturbed model.
    pub improved: bool,
}

/// The parameter tensors of one component.
struct Component {
    name: String,
    ranges: Vec<std::ops::Range<usize>>,
    tensors: Vec<String>,
}

/// The model's components, in layout order: embeddings, each block, final.
fn components(layout: &ParamLayout) -> Vec<Component> {
    let mut out: Vec<Component> = Vec::new();
    for t in &layout.tensors {
        let name = match t.name.as_str() {
            "wte" | "wpe" => "embeddings".to_string(),
            n if n.starts_with('h') => format!("block {}", &n[1..n.find('.').unwrap_or(n.len())]),
            _ => "final".to_string(),
        };
        let range = t.view.offset..t.view.offset + t.view.len;
        match out.iter_mut().find(|c| c.name == name) {
            Some(c) => {
                c.ranges.push(range);
                c.tensors.push(t.name.clone());
            }
            None => out.push(Component { name, ranges: vec![range], tensors: vec![t.name.clone()] }),
        }
    }
    out
}

/// The model and the evaluators that score a parameter vector.
struct Scorer<'a, B: Backend> {
    backend: &'a B,
    model: Gpt<B>,
    evaluators: Vec<Evaluator<B::F>>,
    task: usize,
    kept: Vec<usize>,
}

impl<B: Backend> Scorer<'_, B> {
    fn load(&mut self, params: &[f32]) {
        self.model.load_params(self.backend, params);
    }

    /// The task's scores with `params`.
    fn task(&mut self, params: &[f32]) -> Result<EvalResult> {
        self.load(params);
        let result = self.evaluators[self.task].run(self.backend, &mut self.model);
        self.backend.check()?;
        Ok(result)
    }

    /// The task's exact match and the kept tasks' mean with `params`.
    fn task_and_kept(&mut self, params: &[f32]) -> Result<(EvalResult, Option<f64>)> {
        let task = self.task(params)?;
        let mut kept = 0.0;
        for &k in &self.kept {
            kept += self.evaluators[k].run(self.backend, &mut self.model).exact_match;
        }
        self.backend.check()?;
        Ok((task, (!self.kept.is_empty()).then(|| kept / self.kept.len() as f64)))
    }
}

/// Where the never-learned control C comes from.
#[derive(Clone, Debug)]
pub enum Control {
    /// Trained by the battery itself (kept in the run directory).
    Auto,
    /// An existing run of the same model with the task at weight 0 throughout.
    Run(PathBuf),
}

/// What `ebb erasure` is asked.
pub struct Request<'a> {
    pub run_dir: &'a Path,
    pub task: &'a str,
    /// D's step (default: the end of the drop window).
    pub at: Option<u64>,
    pub only: &'a [Instrument],
    pub control: Option<Control>,
    /// Fine-tuning steps at most (`relearn`).
    pub relearn_steps: u64,
    /// The models soft prompts are optimized on (`P`, `D`, `C`); empty: all.
    pub soft_prompt_on: &'a [String],
}

/// The control's config: the run's own, with `task` at weight 0 from step 0
/// and taken out of every schedule event (an event left empty goes, a cap
/// at or past `steps` too), trained to `steps`, checkpointed ten times.
pub fn control_config(run_dir: &Path, task: &str, steps: u64) -> Result<Config> {
    let path = run_dir.join("config.toml");
    let mut cfg = Config::load(&path, &[])?;
    if cfg.sequential.is_some() {
        return Err(Error::input(format!(
            "{}: a sequential run has no never-learned control for one task; give one with --control RUN_DIR",
            run_dir.display()
        )));
    }
    cfg.data.weights.insert(task.to_string(), 0.0);
    cfg.schedule.retain_mut(|e| {
        e.drop.retain(|t| t != task);
        e.revive.retain(|t| t != task);
        e.weights.remove(task);
        if e.step.is_some_and(|s| s >= steps) {
            if e.when_learned.is_none() {
                return false;
            }
            e.step = None;
        }
        !(e.drop.is_empty() && e.revive.is_empty() && e.weights.is_empty())
    });
    cfg.name = format!("{}-control-{task}", cfg.name);
    cfg.train.steps = steps;
    cfg.train.end_after_events = None; // C trains to D's step, whenever its own events fire
    cfg.train.checkpoint_every = (steps / 10).max(1);
    Ok(cfg)
}

/// C's weights at `step`: trained here (`Control::Auto`; resumed from its
/// last checkpoint if a battery was killed, reused once finished), or read
/// from the given run after checking it never trained `task`.
fn control_params<B: Backend>(
    backend: &B,
    req: &Request,
    control: &Control,
    step: u64,
    layout: &ParamLayout,
) -> Result<(PathBuf, Vec<f32>)> {
    // The control's directory, and how erasure.json names it (auto: relative to the run).
    let (dir, shown) = match control {
        Control::Run(dir) => {
            let data = crate::analysis::RunData::load(dir)?;
            let weight = data.tasks.iter().find(|t| t.id == req.task).map(|t| t.weight);
            let trains = data.events.iter().any(|e| e.task == req.task && e.event != "drop");
            if weight != Some(0.0) || trains {
                return Err(Error::input(format!(
                    "--control {}: not a control for `{}` (it must list the task at weight 0 and never revive or reweigh it)",
                    dir.display(),
                    req.task
                )));
            }
            (dir.clone(), std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?)
        }
        Control::Auto => {
            let rel = PathBuf::from("erasure").join(req.task).join(format!("control-{step}"));
            let dir = req.run_dir.join(&rel);
            let config = control_config(req.run_dir, req.task, step)?;
            let experiment = Experiment::resolve(config, &req.run_dir.join("config.toml"))?;
            if !finished_as(&dir, &experiment.config)? {
                eprintln!("training the never-learned control C to step {step} in {}", dir.display());
                crate::train::run::train_from(backend, &experiment, &dir, true, crate::checkpoint::latest(&dir)?)?;
                // Only a killed battery needs them (a control of one step has none).
                let checkpoints = dir.join("checkpoints");
                match std::fs::remove_dir_all(&checkpoints) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&checkpoints, e)),
                    _ => {}
                }
            }
            (dir, rel)
        }
    };
    let (file, params) = read_params(&dir, step, layout, "the control at D's step")?;
    Ok((shown.join(file), params))
}

/// Whether `dir` holds a finished run of `cfg` that the battery can reuse.
/// A run of another config (an earlier version of the battery's) is
/// removed, so that it is trained again rather than resumed or reused.
fn finished_as(dir: &Path, cfg: &Config) -> Result<bool> {
    match std::fs::read_to_string(dir.join("config.toml")) {
        Ok(stored) if stored != cfg.to_toml() => {
            eprintln!("{}: trained with another config, training it again", dir.display());
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            Ok(false)
        }
        _ => Ok(crate::analysis::stored_outcome(dir) == Some((true, false))),
    }
}

/// The drop of `task` that `at` falls in (the first drop when `at` is none).
fn find_drop<'s>(summary: &'s crate::analysis::Summary, req: &Request) -> Result<&'s DropSummary> {
    let run = req.run_dir.display();
    let drops: Vec<&DropSummary> = summary.drops.iter().filter(|d| d.task == req.task).collect();
    if drops.is_empty() {
        return Err(Error::input(format!("{run}: task `{}` is never dropped in this run", req.task)));
    }
    match req.at {
        None => Ok(drops[0]),
        Some(at) => drops
            .into_iter()
            .find(|d| d.step < at && at <= d.window_end)
            .ok_or_else(|| Error::input(format!("{run}: --at {at} is not inside a drop window of `{}`", req.task))),
    }
}

fn read_params(run_dir: &Path, step: u64, layout: &ParamLayout, why: &str) -> Result<(PathBuf, Vec<f32>)> {
    let path = crate::weights::path_for(run_dir, step);
    let rel = path.strip_prefix(run_dir).expect("under the run").to_path_buf();
    if !path.is_file() {
        return Err(Error::input(format!(
            "{}: no weights at step {step} ({why}); runs keep them at every schedule event and at the end \
             since this version (or with --weights-every)",
            path.display()
        )));
    }
    Ok((rel, crate::weights::read_weights(&path, layout)?))
}

/// Runs the battery on `backend` and writes `erasure.json` and its plots;
/// returns what it measured.
pub fn measure<B: Backend>(backend: &B, req: &Request) -> Result<Erasure> {
    let run_dir = req.run_dir;
    let experiment = Experiment::load(&run_dir.join("config.toml"), &[])?;
    let (cfg, suite) = (&experiment.config, &experiment.suite);
    let summary = crate::analysis::read_summary(run_dir)?;
    let drop = find_drop(&summary, req)?;
    let task = suite.tasks.iter().position(|t| t.id == req.task).expect("a dropped task is in the suite");
    let shape = cfg.model_shape(suite.vocab.len());
    let layout = ParamLayout::new(&shape);
    let d_step = req.at.unwrap_or(drop.window_end);
    let (p_file, p) = read_params(run_dir, drop.step, &layout, "just before the drop")?;
    let (d_file, d) = read_params(run_dir, d_step, &layout, "the end of the drop window")?;

    let rows = cfg.train.batch_size;
    let evaluators = Evaluator::for_held_out_sets(suite, rows, shape.n_ctx, shape.vocab);
    let kept_tasks: Vec<String> = drop.noise_floor.as_ref().map_or_else(Vec::new, |f| f.tasks.clone());
    let kept = kept_tasks.iter().filter_map(|id| suite.tasks.iter().position(|t| &t.id == id)).collect();
    let mut scorer =
        Scorer { backend, model: Gpt::new(backend, shape.clone(), rows, cfg.seed), evaluators, task, kept };
    let score = |scorer: &mut Scorer<B>, step: u64, file: PathBuf, params: &[f32]| -> Result<ModelScore> {
        let (r, kept) = scorer.task_and_kept(params)?;
        Ok(ModelScore {
            step,
            weights: file,
            exact_match: r.exact_match,
            exact_match_interval: [r.exact_match_lo, r.exact_match_hi],
            exact_match_restricted: r.exact_match_restricted,
            kept_exact_match: kept,
        })
    };
    let mut timing = Timing::default();
    let before = score(&mut scorer, drop.step, p_file, &p)?;
    let after = score(&mut scorer, d_step, d_file, &d)?;
    let c = match &req.control {
        Some(control) => Some(timing.time("control", || control_params(backend, req, control, d_step, &layout))?),
        None => None,
    };
    let control = match &c {
        Some((file, params)) => Some(score(&mut scorer, d_step, file.clone(), params)?),
        None => None,
    };
    let wants = |i: Instrument| req.only.contains(&i);
    let restore = timing.run(wants(Instrument::Restore), "restore", || restore(&mut scorer, &layout, &p, &d))?;
    let interpolation =
        timing.run(wants(Instrument::Interpolate), "interpolate", || interpolate(&mut scorer, &p, &d))?;
    let mut models = vec![("P", &p[..], before.exact_match), ("D", &d[..], after.exact_match)];
    if let (Some((_, params)), Some(score)) = (&c, &control) {
        models.push(("C", &params[..], score.exact_match));
    }
    let noise = timing.run(wants(Instrument::Noise), "noise", || noise(&mut scorer, &layout, cfg.seed, &models))?;
    let mut weights = vec![("P", before.weights.clone()), ("D", after.weights.clone())];
    if let Some(c) = &control {
        weights.push(("C", c.weights.clone()));
    }
    let everything = Unfrozen { trainable: "everything".into(), tag: String::new(), frozen: Vec::new() };
    let relearn = timing.run(wants(Instrument::Relearn), "relearn", || {
        relearn_from(backend, req, &experiment, before.exact_match, &weights, &everything)
    })?;
    let relearn_frozen = timing.run(wants(Instrument::RelearnFrozen), "relearn-frozen", || {
        let from: Vec<(&str, PathBuf)> = weights.iter().filter(|w| w.0 != "P").cloned().collect();
        unfrozen_parts(&layout)
            .iter()
            .map(|part| relearn_from(backend, req, &experiment, before.exact_match, &from, part))
            .collect::<Result<Vec<Relearn>>>()
    })?;
    let few_shot =
        timing.run(wants(Instrument::FewShot), "few-shot", || few_shot(backend, req, &experiment, &weights))?;
    let probes = timing.run(wants(Instrument::Probe), "probe", || probes(&mut scorer, req, &experiment, &models))?;
    let soft_prompts = timing.run(wants(Instrument::SoftPrompt), "soft-prompt", || {
        let t = t_problems(req, &experiment)?;
        let v = &suite.eval_sets[task];
        let on: Vec<(&str, &[f32], f64)> = models
            .iter()
            .copied()
            .filter(|m| req.soft_prompt_on.is_empty() || req.soft_prompt_on.iter().any(|o| o == m.0))
            .collect();
        soft_prompt::soft_prompts(&mut scorer, &suite.tasks[task], &t, v, &on, before.exact_match, cfg.seed)
    })?;
    let erasure = Erasure {
        version: ERASURE_VERSION,
        run: cfg.name.clone(),
        task: req.task.to_string(),
        chance: suite.tasks[task].chance,
        learned_at_drop: drop.learned(),
        examples: scorer.evaluators[task].len(),
        kept_tasks,
        before,
        after,
        control,
        restore,
        interpolation,
        noise,
        relearn,
        relearn_frozen,
        few_shot,
        probes,
        soft_prompts,
    };
    let dir = out_dir(run_dir, req.task);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let json = serde_json::to_string_pretty(&erasure).expect("an erasure report serializes");
    crate::run_dir::write_atomic(&dir.join("erasure.json"), format!("{json}\n").as_bytes())?;
    crate::run_dir::write_atomic(&dir.join("timing.csv"), timing.csv().as_bytes())?;
    crate::plot::draw_all(&dir, &charts::charts_for(&erasure), crate::plot::Format::Png)?;
    crate::plot::plot_run(run_dir, crate::plot::Format::Png)?; // report.html gains the battery
    Ok(erasure)
}

/// The `report.html` section of every battery run on `run_dir`: its
/// printed lines and its plots, one task after another (empty when none).
pub fn report_section(run_dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(run_dir.join("erasure"))
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path().join("erasure.json")))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut html = String::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let Ok(e) = serde_json::from_str::<Erasure>(&text) else { continue }; // another version: skip
        let escape = crate::plot::report::escape;
        html.push_str(&format!(
            "<h2>Depth of erasure: {}</h2>\n<pre>{}</pre>\n",
            escape(&e.task),
            escape(&report_lines(&e).join("\n"))
        ));
        for chart in charts::charts_for(&e) {
            let svg = crate::plot::to_svg(chart.as_ref())
                .map_err(|why| Error::input(format!("{}: cannot draw {}: {why}", file.display(), chart.name())))?;
            html.push_str(&format!("<figure><figcaption>{}</figcaption>{svg}</figure>\n", escape(&chart.title())));
        }
    }
    Ok(html)
}

/// The wall time of each part of the battery: printed as each ends and kept
/// in `erasure/TASK/timing.csv` (apart from `erasure.json`, which is the
/// same bits on every machine).
#[derive(Default)]
struct Timing {
    parts: Vec<(&'static str, f64)>,
}

impl Timing {
    fn time<T>(&mut self, part: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = std::time::Instant::now();
        let out = f()?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("{part}: {seconds:.1} s");
        self.parts.push((part, seconds));
        Ok(out)
    }

    /// `f`'s result timed when `wanted`, else none.
    fn run<T>(&mut self, wanted: bool, part: &'static str, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        if wanted { self.time(part, f).map(Some) } else { Ok(None) }
    }

    fn csv(&self) -> String {
        let total: f64 = self.parts.iter().map(|p| p.1).sum();
        let mut out = String::from("part,seconds,share\n");
        for &(part, seconds) in &self.parts {
            out.push_str(&format!("{part},{seconds:.2},{:.3}\n", seconds / total.max(f64::MIN_POSITIVE)));
        }
        out
    }
}

/// Where the battery on `task` writes: `RUN_DIR/erasure/TASK`.
pub fn out_dir(run_dir: &Path, task: &str) -> PathBuf {
    run_dir.join("erasure").join(task)
}

fn restore<B: Backend>(scorer: &mut Scorer<B>, layout: &ParamLayout, p: &[f32], d: &[f32]) -> Result<Restore> {
    let mut out = Vec::new();
    let mut all = d.to_vec();
    for c in components(layout) {
        let (mut p_into_d, mut d_into_p) = (d.to_vec(), p.to_vec());
        let (mut diff, mut norm, mut params) = (0.0f64, 0.0f64, 0usize);
        for r in &c.ranges {
            p_into_d[r.clone()].copy_from_slice(&p[r.clone()]);
            d_into_p[r.clone()].copy_from_slice(&d[r.clone()]);
            all[r.clone()].copy_from_slice(&p[r.clone()]);
            for (&a, &b) in p[r.clone()].iter().zip(&d[r.clone()]) {
                diff += (b as f64 - a as f64).powi(2);
                norm += (a as f64).powi(2);
            }
            params += r.len();
        }
        let (p_into_d, d_into_p) = (scorer.task(&p_into_d)?, scorer.task(&d_into_p)?);
        out.push(ComponentRestore {
            component: c.name,
            params,
            relative_change: if norm > 0.0 { (diff / norm).sqrt() } else { f64::NAN },
            p_into_d: p_into_d.exact_match,
            p_into_d_interval: [p_into_d.exact_match_lo, p_into_d.exact_match_hi],
            d_into_p: d_into_p.exact_match,
            d_into_p_interval: [d_into_p.exact_match_lo, d_into_p.exact_match_hi],
        });
    }
    Ok(Restore { components: out, all_from_p_into_d: scorer.task(&all)?.exact_match })
}

fn interpolate<B: Backend>(scorer: &mut Scorer<B>, p: &[f32], d: &[f32]) -> Result<Vec<InterpolationPoint>> {
    let mut mix = vec![0f32; p.len()];
    (0..=ALPHA_STEPS)
        .map(|i| {
            let alpha = i as f64 / ALPHA_STEPS as f64;
            for ((m, &a), &b) in mix.iter_mut().zip(p).zip(d) {
                *m = ((1.0 - alpha) * a as f64 + alpha * b as f64) as f32;
            }
            let (r, kept) = scorer.task_and_kept(&mix)?;
            Ok(InterpolationPoint {
                alpha,
                exact_match: r.exact_match,
                exact_match_interval: [r.exact_match_lo, r.exact_match_hi],
                kept_exact_match: kept,
            })
        })
        .collect()
}

/// The root mean square of `v` (0 when empty).
fn rms(v: &[f32]) -> f64 {
    (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// Each model under `NOISE_DRAWS` draws at every σ: draw k at level i is the
/// same noise (relative to each tensor's RMS) for every model.
fn noise<B: Backend>(
    scorer: &mut Scorer<B>,
    layout: &ParamLayout,
    seed: u64,
    models: &[(&str, &[f32], f64)],
) -> Result<Vec<NoiseLevel>> {
    let mut out = Vec::new();
    let mut noisy = vec![0f32; layout.len()];
    for &(name, params, clean) in models {
        let rms: Vec<f64> = layout.tensors.iter().map(|t| rms(&params[t.view.range()])).collect();
        for (i, &sigma) in NOISE_SIGMAS.iter().enumerate() {
            let mut draws = Vec::new();
            for k in 0..NOISE_DRAWS {
                let mut rng = crate::rng::stream(seed, "erasure-noise", i as u64 * NOISE_DRAWS + k);
                for (t, &scale) in layout.tensors.iter().zip(&rms) {
                    let range = t.view.offset..t.view.offset + t.view.len;
                    for (n, &x) in noisy[range.clone()].iter_mut().zip(&params[range]) {
                        *n = (x as f64 + sigma * scale * crate::rng::normal(&mut rng)) as f32;
                    }
                }
                draws.push(scorer.task(&noisy)?.exact_match);
            }
            let best = draws.iter().copied().fold(f64::MIN, f64::max);
            out.push(NoiseLevel {
                model: name.to_string(),
                sigma,
                mean: draws.iter().sum::<f64>() / draws.len() as f64,
                best_ratio: (clean > 0.0).then(|| best / clean),
                improved: best > clean,
                draws,
            });
        }
    }
    Ok(out)
}

/// The size of T: half of the task's training problems (when they can be
/// counted), at most `RELEARN_EXAMPLES`.
fn t_size(experiment: &Experiment, task: &str) -> u64 {
    let task = experiment.suite.task(task).expect("a dropped task is in the suite");
    let open = if task.space() <= crate::tasks::ENUMERATE_LIMIT {
        (0..task.space()).filter(|&p| !task.is_held_out(p)).count() as u64
    } else {
        2 * RELEARN_EXAMPLES
    };
    (open / 2).clamp(1, RELEARN_EXAMPLES)
}

/// One fine-tune of the battery: a run of its own in `RUN_DIR/erasure/TASK/NAME`.
struct FineTune<'a> {
    name: String,
    /// The model it starts from (relative to the run, or absolute).
    weights: &'a Path,
    /// Training problems: the first this many of T.
    examples: u64,
    /// Steps at most.
    steps: u64,
    /// Evaluates every this many steps; with `log_grid`, also at 1, 2, 4, ….
    every: u64,
    log_grid: bool,
    /// The tensors it leaves as they are.
    frozen: &'a [String],
    /// Ends one step after the task's exact match on V is at least this at
    /// two evaluations in a row (a `when_learned` event), instead of at `steps`.
    until: Option<f64>,
}

/// Runs `tune` on the task alone, with the run's learning rate (constant,
/// no warmup, fresh AdamW), reused once finished. Returns its directory
/// (relative to the run) and the task's exact-match curve.
fn fine_tune<B: Backend>(
    backend: &B,
    req: &Request,
    experiment: &Experiment,
    tune: &FineTune,
) -> Result<(PathBuf, Vec<(u64, f64)>)> {
    let rel = PathBuf::from("erasure").join(req.task).join(&tune.name);
    let dir = req.run_dir.join(&rel);
    let mut cfg = experiment.config.clone();
    cfg.name = format!("{}-{}-{}", cfg.name, req.task, tune.name);
    let init = req.run_dir.join(tune.weights);
    cfg.model.init_from = Some(std::fs::canonicalize(&init).map_err(|e| Error::io(&init, e))?);
    set_train_examples(&mut cfg, req.task, tune.examples);
    let suite = &experiment.suite;
    cfg.data.weights = suite.tasks.iter().map(|t| (t.id.clone(), if t.id == req.task { 1.0 } else { 0.0 })).collect();
    // An event at step 0 that keeps the mixture as it is: the log-spaced evaluations start there.
    let event = |step, when_learned| crate::train::events::ScheduleEvent {
        step,
        when_learned,
        after: None,
        drop: Vec::new(),
        revive: Vec::new(),
        weights: [(req.task.to_string(), 1.0)].into(),
    };
    cfg.schedule = vec![event(Some(0), None)];
    cfg.train.end_after_events = None;
    if let Some(target) = tune.until.filter(|&t| t > 0.0) {
        cfg.schedule.push(event(None, Some(target)));
        cfg.train.end_after_events = Some(1);
    }
    cfg.sequential = None;
    cfg.train.steps = tune.steps;
    cfg.train.warmup_steps = 0;
    cfg.train.schedule = crate::config::LrSchedule::Constant;
    cfg.train.checkpoint_every = 0;
    cfg.train.frozen = tune.frozen.to_vec();
    cfg.eval.every = tune.every;
    cfg.eval.after_events = tune.log_grid;
    let experiment = Experiment::resolve(cfg, &req.run_dir.join("config.toml"))?;
    if !finished_as(&dir, &experiment.config)? {
        eprintln!("fine-tuning {} on {} problems in {}", req.task, tune.examples, dir.display());
        crate::train::run::train_from(backend, &experiment, &dir, true, None)?;
    }
    let data = crate::analysis::RunData::load(&dir)?;
    Ok((rel, data.series(req.task, "exact_match").to_vec()))
}

/// Gives `task` a finite training set of its first `examples` problems (T when `t_size`).
fn set_train_examples(cfg: &mut Config, task: &str, examples: u64) {
    for t in &mut cfg.data.tasks {
        if t.get("id").and_then(|v| v.as_str()) == Some(task) {
            t.remove("train_fraction");
            t.insert("train_examples".into(), toml::Value::Integer(examples as i64));
        }
    }
}

/// T's problems: the training set every fine-tune of the battery draws from.
fn t_problems(req: &Request, experiment: &Experiment) -> Result<Vec<u64>> {
    let mut cfg = experiment.config.clone();
    set_train_examples(&mut cfg, req.task, t_size(experiment, req.task));
    let resolved = Experiment::resolve(cfg, &req.run_dir.join("config.toml"))?;
    Ok(resolved.suite.task(req.task).and_then(|t| t.train_set.clone()).expect("T is a finite training set"))
}

/// What a fine-tune trains: a description, a tag for its directory, and the tensors it freezes.
struct Unfrozen {
    trainable: String,
    tag: String,
    frozen: Vec<String>,
}

/// The partly frozen fine-tunes: only the embeddings and block 0
/// trainable, then only the last block.
fn unfrozen_parts(layout: &ParamLayout) -> Vec<Unfrozen> {
    let comps = components(layout);
    let last = comps.iter().rev().find(|c| c.name.starts_with("block")).map_or(String::new(), |c| c.name.clone());
    [(vec!["embeddings", "block 0"], "first"), (vec![last.as_str()], "last")]
        .into_iter()
        .map(|(keep, tag)| Unfrozen {
            trainable: keep.join(" and "),
            tag: tag.to_string(),
            frozen: comps.iter().filter(|c| !keep.contains(&c.name.as_str())).flat_map(|c| c.tensors.clone()).collect(),
        })
        .collect()
}

/// Relearning of `req.task` from each of `models` (name, weights file) on T,
/// with `part` trainable.
fn relearn_from<B: Backend>(
    backend: &B,
    req: &Request,
    experiment: &Experiment,
    accuracy_p: f64,
    models: &[(&str, PathBuf)],
    part: &Unfrozen,
) -> Result<Relearn> {
    let examples = t_size(experiment, req.task);
    let target = RELEARN_TARGET * accuracy_p;
    let mut out = Vec::new();
    for (name, weights) in models {
        let tag = if part.tag.is_empty() { String::new() } else { format!("{}-", part.tag) };
        let tune = FineTune {
            name: format!("relearn-{tag}{name}-{}", req.relearn_steps),
            weights,
            examples,
            steps: req.relearn_steps,
            every: RELEARN_EVERY,
            log_grid: true,
            frozen: &part.frozen,
            until: Some(target),
        };
        let (run, curve) = fine_tune(backend, req, experiment, &tune)?;
        let steps_to_target = curve.iter().find(|(_, a)| *a >= target).map(|(s, _)| *s);
        out.push(Relearning { model: name.to_string(), steps_to_target, curve, run });
    }
    let steps = |m: &str| out.iter().find(|r| r.model == m).map(|r| r.steps_to_target);
    let (speedup_d_over_c, speedup_is_lower_bound) = match (steps("D"), steps("C")) {
        // At step 0 there was nothing to relearn (or the target is trivial): no ratio.
        (Some(Some(d)), Some(Some(c))) if d > 0 && c > 0 => (Some(c as f64 / d as f64), false),
        (Some(Some(d)), Some(None)) if d > 0 => (Some(req.relearn_steps as f64 / d as f64), true),
        _ => (None, false),
    };
    Ok(Relearn {
        trainable: part.trainable.clone(),
        cap: req.relearn_steps,
        examples,
        target,
        models: out,
        speedup_d_over_c,
        speedup_is_lower_bound,
    })
}

/// Few-shot recovery: each of `models` fine-tuned `FEW_SHOT_STEPS` steps on
/// only the first n problems of T, for every n of `FEW_SHOT` that T holds.
fn few_shot<B: Backend>(
    backend: &B,
    req: &Request,
    experiment: &Experiment,
    models: &[(&str, PathBuf)],
) -> Result<Vec<FewShot>> {
    let t = t_size(experiment, req.task);
    let mut out = Vec::new();
    for &n in FEW_SHOT.iter().filter(|&&n| n <= t) {
        let mut accuracy = Vec::new();
        for (name, weights) in models {
            let tune = FineTune {
                name: format!("fewshot-{name}-{n}"),
                weights,
                examples: n,
                steps: FEW_SHOT_STEPS,
                every: FEW_SHOT_STEPS,
                log_grid: false,
                frozen: &[],
                until: None,
            };
            let (_, curve) = fine_tune(backend, req, experiment, &tune)?;
            accuracy.push((name.to_string(), curve.last().map_or(0.0, |p| p.1)));
        }
        let of = |m: &str| accuracy.iter().find(|a| a.0 == m).map(|a| a.1);
        let recovery = match (of("D"), of("P")) {
            (Some(d), Some(p)) if p > 0.0 => Some(d / p),
            _ => None,
        };
        out.push(FewShot { examples: n, steps: FEW_SHOT_STEPS, accuracy, recovery_d_over_p: recovery });
    }
    Ok(out)
}

/// Linear probes on every layer of each of `models` (name, parameters,
/// accuracy), fitted on T and scored on V.
fn probes<B: Backend>(
    scorer: &mut Scorer<B>,
    req: &Request,
    experiment: &Experiment,
    models: &[(&str, &[f32], f64)],
) -> Result<probe::Probes> {
    let t = t_problems(req, experiment)?;
    let task = &experiment.suite.tasks[scorer.task];
    let v = &experiment.suite.eval_sets[scorer.task];
    let mut out = Vec::new();
    let mut labels = (Vec::new(), Vec::new());
    for (name, params, _) in models {
        scorer.load(params);
        let train = probe::states(scorer.backend, &mut scorer.model, task, &t);
        let test = probe::states(scorer.backend, &mut scorer.model, task, v);
        scorer.backend.check()?;
        out.push(probe::probe_model(name, &train, &test, experiment.config.seed));
        labels = (train.1, test.1); // the same for every model
    }
    Ok(probe::Probes::new(out, &labels.0, &labels.1))
}

/// `0.992 [95% 0.957, 0.999]`.
fn with_interval(x: f64, [lo, hi]: [f64; 2]) -> String {
    format!("{x:.3} [95% {lo:.3}, {hi:.3}]")
}

/// The lines `ebb erasure` prints.
pub fn report_lines(e: &Erasure) -> Vec<String> {
    let mut lines = vec![format!(
        "erasure of {} in {} ({} held-out problems, chance {:.3}): before the drop (P, step {}) {}, \
         at step {} (D) {}, restricted to its answer tokens {:.3}",
        e.task,
        e.run,
        e.examples,
        e.chance,
        e.before.step,
        with_interval(e.before.exact_match, e.before.exact_match_interval),
        e.after.step,
        with_interval(e.after.exact_match, e.after.exact_match_interval),
        e.after.exact_match_restricted
    )];
    if let Some(c) = &e.control {
        lines.push(format!(
            "  never-learned control (C, step {}): {}, restricted {:.3}",
            c.step,
            with_interval(c.exact_match, c.exact_match_interval),
            c.exact_match_restricted
        ));
    }
    if !e.learned_at_drop {
        lines.push(format!("  {} was not learned at its drop: there was little to erase", e.task));
    }
    if let Some(r) = &e.restore {
        for c in &r.components {
            lines.push(format!(
                "  restore {:<11} changed {:>6.3} (relative L2): P's into D {:.3}, D's into P {:.3}",
                c.component, c.relative_change, c.p_into_d, c.d_into_p
            ));
        }
    }
    if let Some(points) = &e.interpolation {
        let path: Vec<String> = points.iter().map(|p| format!("{:.2}", p.exact_match)).collect();
        lines.push(format!("  from P to D (α = 0, 0.1, …, 1): {}", path.join(" ")));
    }
    if let Some(levels) = &e.noise {
        for l in levels.iter().filter(|l| l.model == "D") {
            lines.push(format!(
                "  noise σ {:<6} on D: mean {:.3}, best {:.3}{}",
                l.sigma,
                l.mean,
                l.draws.iter().copied().fold(0.0, f64::max),
                if l.improved { " (above the unperturbed model)" } else { "" }
            ));
        }
    }
    for r in e.relearn.iter().chain(e.relearn_frozen.iter().flatten()) {
        for m in &r.models {
            let reached =
                m.steps_to_target.map_or(format!("not within {} steps", r.cap), |s| format!("after {s} steps"));
            lines.push(format!(
                "  relearn {} from {} on {} training problems, {} trainable: {:.3} (0.9 of P) {reached}",
                e.task, m.model, r.examples, r.trainable, r.target
            ));
        }
        if let Some(x) = r.speedup_d_over_c {
            let bound = if r.speedup_is_lower_bound { "at least " } else { "" };
            lines.push(format!(
                "  D relearns {bound}{x:.1}× as fast as the never-learned C ({} trainable)",
                r.trainable
            ));
        }
    }
    if let Some(levels) = &e.few_shot {
        for f in levels {
            let each: Vec<String> = f.accuracy.iter().map(|(m, a)| format!("{m} {a:.3}")).collect();
            let recovery = f.recovery_d_over_p.map_or(String::new(), |r| format!(", recovery D/P {r:.2}"));
            lines.push(format!(
                "  few-shot, {} problems, {} steps: {}{recovery}",
                f.examples,
                f.steps,
                each.join(", ")
            ));
        }
    }
    if let Some(p) = &e.probes {
        lines.push(format!(
            "  probes for the first answer token ({} classes) fitted on {} problems, scored on {} (constant guess {:.3}):",
            p.classes, p.train_examples, p.test_examples, p.chance
        ));
        for m in &p.models {
            let each: Vec<String> = m
                .layers
                .iter()
                .map(|l| format!("{} {:.3} (shuffled {:.3})", l.layer, l.accuracy, l.control_accuracy))
                .collect();
            lines.push(format!("    {}: {}", m.model, each.join(", ")));
        }
        let kept: Vec<String> = p
            .retention
            .iter()
            .map(|(l, r)| format!("{l} {}", r.map_or("–".to_string(), |r| format!("{r:.2}"))))
            .collect();
        if !kept.is_empty() {
            lines.push(format!("    probe retention (D − C) / (P − C): {}", kept.join(", ")));
        }
    }
    if let Some(s) = &e.soft_prompts {
        lines.push(format!(
            "  soft prompts after BOS ({} Adam steps on {} problems of T, the best of 3 starts by loss on {} of them), \
             exact match on V against k:",
            s.steps, s.train_examples, s.selection_examples
        ));
        let k_star = |k: Option<usize>| k.map_or("none".to_string(), |k| k.to_string());
        for m in &s.models {
            let each: Vec<String> = m
                .points
                .iter()
                .map(|p| format!("k {} {:.3} (loss {:.2})", p.k, p.accuracy, p.selection_loss))
                .collect();
            lines.push(format!(
                "    {}: {}; least k to 0.5·A(P) {}, to 0.9·A(P) {}; best fit (least loss) at k {}",
                m.model,
                each.join(", "),
                k_star(m.k_half),
                k_star(m.k_ninety),
                k_star(m.best_fit().map(|p| p.k))
            ));
        }
        if !s.gap_d_minus_c.is_empty() {
            let each: Vec<String> = s.gap_d_minus_c.iter().map(|(k, g)| format!("k {k} {g:+.3}")).collect();
            lines.push(format!("    D − C: {}", each.join(", ")));
        }
        let mut at_zero = Vec::new();
        for m in &s.models {
            let perturbed: Vec<&soft_prompt::SoftPromptPoint> =
                m.points.iter().filter(|p| !p.fragility.is_empty()).collect();
            if perturbed.is_empty() {
                at_zero.push(m.model.as_str());
                continue;
            }
            let each: Vec<String> = perturbed
                .iter()
                .map(|p| {
                    format!("k {} {}", p.k, p.halving_epsilon.map_or("never (to ε 1)".to_string(), |x| format!("{x}")))
                })
                .collect();
            lines.push(format!(
                "    {}: the relative perturbation that halves the best prompt's accuracy: {}",
                m.model,
                each.join(", ")
            ));
        }
        if !at_zero.is_empty() {
            lines.push(format!("    {}: every soft prompt at accuracy 0, nothing to perturb", at_zero.join(", ")));
        }
        if let Some(room) = &s.room {
            lines.push(format!("    {room}"));
        }
    }
    lines
}
