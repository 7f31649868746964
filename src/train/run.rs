//! One experiment from config to run directory: train on the schedule,
//! evaluate every task, log, checkpoint, resume, and summarize.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::events::Mixture;
use super::{Trainer, fingerprint};
use crate::backend::Backend;
use crate::checkpoint::{self, Checkpoint};
use crate::config::Config;
use crate::data::{Batch, TrainStream};
use crate::error::{Error, Result};
use crate::eval::{EvalResult, Evaluator};
use crate::experiment::Experiment;
use crate::float::Float;
use crate::model::Gpt;
use crate::run_dir::{self, MetricsLog};
use crate::tasks::Suite;

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub dir: PathBuf,
    pub fingerprint: String,
    pub n_params: usize,
    /// The last evaluation of every task, in suite order.
    pub final_eval: Vec<(String, EvalResult)>,
    pub seconds: f64,
}

/// Progress on stderr: a bar on a terminal, plain periodic lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    line_every: u64,
}

impl Progress {
    fn new(start: u64, steps: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(steps);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}").expect("valid template"),
            );
            bar.set_position(start);
            bar.reset_eta();
            bar
        });
        let line_every = if quiet { u64::MAX } else { (steps / 20).max(1) };
        Progress { bar, line_every }
    }

    /// Shows step `step` of `last` (the run's end, which a learned trigger can bring forward).
    fn update(&self, step: u64, last: u64, loss: f64, tokens_per_s: f64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(last);
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.4} {tokens_per_s:.0} tok/s"));
            }
            None if step.is_multiple_of(self.line_every) || step == last => {
                eprintln!("step {step}/{last} loss {loss:.4} {tokens_per_s:.0} tok/s");
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A run in progress: the model, the data stream, the evaluators and the logs.
pub struct Run<'a, B: Backend> {
    backend: &'a B,
    cfg: &'a Config,
    suite: &'a Suite,
    schedule: Mixture,
    out: PathBuf,
    /// Held while the run lives, so no second process trains into `out`.
    _lock: run_dir::RunLock,
    trainer: Trainer<B>,
    stream: TrainStream,
    batch: Batch<B::F>,
    evaluators: Vec<Evaluator<B::F>>,
    /// Per task with a finite training set, a fixed sample of it.
    train_evaluators: Vec<Option<Evaluator<B::F>>>,
    metrics: MetricsLog,
    events: MetricsLog,
    timing: MetricsLog,
    /// Steps done.
    step: u64,
    last_eval: Vec<(String, EvalResult)>,
}

impl<'a, B: Backend> Run<'a, B> {
    /// A fresh run writing into `out`.
    pub fn start(backend: &'a B, experiment: &'a Experiment, out: &Path) -> Result<Self> {
        let (cfg, suite) = (&experiment.config, &experiment.suite);
        // Everything that can refuse the run is checked before the directory is written.
        run_dir::kill_point()?;
        let layout = crate::model::ParamLayout::new(&cfg.model_shape(suite.vocab.len()));
        let initial =
            cfg.model.init_from.as_deref().map(|file| crate::weights::read_weights(file, &layout)).transpose()?;
        run_dir::create(out)?;
        let lock = run_dir::RunLock::take(out)?;
        run_dir::write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
        let mut tasks = String::from("task,family,chance,eval_examples,weight\n");
        let mut run = Self::assemble(backend, cfg, suite, experiment.mixture.clone(), out, lock);
        if let Some(params) = initial {
            run.trainer.model.load_params(backend, &params);
        }
        if cfg.train.dump_batches {
            for (t, e) in suite.tasks.iter().zip(&run.evaluators) {
                crate::weights::write_batch(&out.join("eval").join(format!("{}.safetensors", t.id)), &e.as_batch())?;
            }
        }
        for ((t, e), w) in suite.tasks.iter().zip(&run.evaluators).zip(&suite.weights) {
            tasks.push_str(&format!("{},{},{},{},{}\n", t.id, t.family_name, t.chance, e.len(), w));
        }
        run_dir::write_atomic(&out.join("tasks.csv"), tasks.as_bytes())?;
        let model = serde_json::json!({ "params": run.n_params(), "vocab": suite.vocab.len(), "suite": suite.name });
        run_dir::write_atomic(&out.join("model.json"), format!("{model}\n").as_bytes())?;
        let _ = std::fs::remove_file(out.join("summary.json"));
        Ok(run)
    }

    /// A run continuing from `ckpt` into `out` (a resume, or a fork when
    /// `out` is a new directory and the experiment a new schedule).
    pub fn from_checkpoint(backend: &'a B, experiment: &'a Experiment, out: &Path, ckpt: Checkpoint) -> Result<Self> {
        let (cfg, suite) = (&experiment.config, &experiment.suite);
        let vocab: Vec<String> = (0..suite.vocab.len() as u32).map(|i| suite.vocab.token(i).to_string()).collect();
        if vocab != ckpt.vocab {
            return Err(Error::input(format!(
                "{}: the checkpoint's vocabulary ({} tokens) differs from this config's suite ({} tokens)",
                out.display(),
                ckpt.vocab.len(),
                vocab.len()
            )));
        }
        let n_params = crate::model::ParamLayout::new(&cfg.model_shape(suite.vocab.len())).len();
        if ckpt.params.len() != n_params || ckpt.epochs.len() != suite.tasks.len() {
            return Err(Error::input(format!(
                "{}: the checkpoint holds {} parameters, this config's model {n_params}",
                out.display(),
                ckpt.params.len()
            )));
        }
        if ckpt.step > cfg.train.steps {
            return Err(Error::input(format!(
                "{}: the checkpoint is at step {}, past train.steps = {}",
                out.display(),
                ckpt.step,
                cfg.train.steps
            )));
        }
        let mut run = Self::start(backend, experiment, out)?;
        let to_f = |v: &[f32]| v.iter().map(|&x| B::F::of(x as f64)).collect::<Vec<_>>();
        backend.upload(&mut run.trainer.model.params, &to_f(&ckpt.params));
        backend.upload(&mut run.trainer.opt.m, &to_f(&ckpt.adam_m));
        backend.upload(&mut run.trainer.opt.v, &to_f(&ckpt.adam_v));
        run.trainer.opt.t = ckpt.adam_t;
        run.stream.restore_positions(suite, cfg.seed, &ckpt.epochs);
        if same_schedule(&ckpt.config, cfg) {
            run.schedule.restore(&ckpt.learned);
        }
        run.metrics.restore(&ckpt.metrics);
        run.events.restore(&ckpt.events);
        run.timing.restore(&ckpt.timing);
        run.step = ckpt.step;
        Ok(run)
    }

    fn assemble(
        backend: &'a B,
        cfg: &'a Config,
        suite: &'a Suite,
        schedule: Mixture,
        out: &Path,
        lock: run_dir::RunLock,
    ) -> Self {
        let shape = cfg.model_shape(suite.vocab.len());
        let (rows, ctx) = (cfg.train.batch_size, shape.n_ctx);
        let model = Gpt::new(backend, shape.clone(), rows, cfg.seed);
        let trainer = Trainer::new(backend, model, cfg.train.clone(), cfg.seed);
        let evaluators = Evaluator::for_held_out_sets(suite, rows, ctx, shape.vocab);
        // The first `eval.examples` problems of the (seeded, shuffled) training set.
        let train_evaluators = suite
            .tasks
            .iter()
            .map(|t| {
                t.train_set.as_deref().map(|set| {
                    Evaluator::for_problems(t, &set[..set.len().min(cfg.eval.examples)], rows, ctx, shape.vocab)
                })
            })
            .collect();
        Run {
            backend,
            cfg,
            suite,
            schedule,
            out: out.to_path_buf(),
            _lock: lock,
            trainer,
            stream: TrainStream::new(suite, cfg.data.full_batch),
            batch: Batch::new(rows, ctx).with_loss_per_example(cfg.train.loss_per == crate::config::LossPer::Example),
            evaluators,
            train_evaluators,
            metrics: MetricsLog::new(out.join("metrics.csv"), "step,task,split,metric,value").with_jsonl(),
            events: MetricsLog::new(out.join("events.csv"), "step,event,task,value"),
            timing: MetricsLog::new(out.join("timing.csv"), "step,seconds,tokens_per_s"),
            step: 0,
            last_eval: Vec::new(),
        }
    }

    pub fn n_params(&self) -> usize {
        self.trainer.model.n_params()
    }

    /// Steps done so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Trains to `train.steps` (or `train.end_after_events` after the last event), then writes `summary.json`. A non-finite
    /// loss or gradient stops the run: the logs so far stay, the event
    /// `diverged` is logged, the summary says so, and the error is returned.
    pub fn train(mut self, quiet: bool) -> Result<RunOutcome> {
        let started = Instant::now();
        let result = self.train_loop(quiet, started);
        if let Err(Error::Diverged { step, what }) = &result {
            self.events.row(format_args!("{step},diverged,all,{}", what.replace(',', ";")));
        }
        self.metrics.flush()?;
        self.events.flush()?;
        self.timing.flush()?;
        crate::analysis::write_summary(&self.out)?;
        result?;
        let fingerprint = fingerprint(self.backend, &self.trainer.model);
        self.backend.check()?;
        Ok(RunOutcome {
            dir: self.out.clone(),
            fingerprint,
            n_params: self.n_params(),
            final_eval: self.last_eval.clone(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    fn train_loop(&mut self, quiet: bool, started: Instant) -> Result<()> {
        let cfg = self.cfg;
        let end = |run: &Self| run.schedule.end_step(cfg.train.steps, cfg.train.end_after_events);
        let tokens_per_step = (cfg.train.batch_size * cfg.model.n_ctx) as f64;
        let progress = Progress::new(self.step, cfg.train.steps, quiet);
        if self.step == 0 {
            self.evaluate(0)?;
            self.metrics.flush()?;
            if cfg.train.weights_every > 0 {
                self.write_weights()?;
            }
        }
        self.stream.set_weights(&self.schedule.weights_at(&self.suite.weights, self.step));
        let mut window = (Instant::now(), self.step);
        while self.step < end(self) {
            let step = self.step;
            if self.schedule.at(step).next().is_some() {
                for t in self.schedule.capped_at(step) {
                    for &task in &t.tasks {
                        self.events
                            .row(format_args!("{step},learned_cap,{},{}", self.suite.tasks[task].id, t.threshold));
                    }
                }
                for e in self.schedule.at(step) {
                    let (kind, task, value) = e.describe();
                    let value = value.map_or(String::new(), |v| v.to_string());
                    self.events.row(format_args!("{step},{kind},{},{value}", self.suite.tasks[task].id));
                }
                self.stream.set_weights(&self.schedule.weights_at(&self.suite.weights, step));
                self.events.flush()?;
                // The parameters the mixture change starts from: just before a drop,
                // at the end of the window of the one before.
                self.write_weights()?;
            }
            self.batch.fill_train(self.suite, &mut self.stream, cfg.seed, step);
            if cfg.train.dump_batches {
                crate::weights::write_batch(
                    &self.out.join("batches").join(format!("step-{step}.safetensors")),
                    &self.batch,
                )?;
            }
            let stats = self.trainer.step(self.backend, &self.batch, step);
            let stats = match stats {
                Ok(s) => s,
                Err(e) => {
                    progress.finish();
                    return Err(e);
                }
            };
            let done = step + 1;
            self.step = done;
            // The evaluation at `done` can bring the end forward, never to `done` or before.
            let last = end(self);
            let tokens_per_s = (done - window.1) as f64 * tokens_per_step / window.0.elapsed().as_secs_f64().max(1e-9);
            progress.update(done, last, stats.loss, tokens_per_s);
            if done.is_multiple_of(cfg.train.log_every) || done == last {
                for (metric, value) in [("loss", stats.loss), ("lr", stats.lr), ("grad_norm", stats.grad_norm)] {
                    self.metrics.row(format_args!("{done},all,train,{metric},{value}"));
                }
                self.timing.row(format_args!("{done},{},{tokens_per_s}", started.elapsed().as_secs_f64()));
                window = (Instant::now(), done);
            }
            if self.schedule.is_eval_step(done, cfg.eval.every, last, cfg.eval.after_events) {
                self.evaluate(done)?;
                self.metrics.flush()?;
                self.timing.flush()?;
                window = (Instant::now(), done);
            }
            if done == last || (cfg.train.weights_every > 0 && done.is_multiple_of(cfg.train.weights_every)) {
                self.write_weights()?;
            }
            if cfg.train.checkpoint_every > 0 && done.is_multiple_of(cfg.train.checkpoint_every) && done < last {
                self.write_checkpoint()?;
            }
            if run_dir::kill_due(run_dir::KillPoint::AfterStep(done)) {
                run_dir::kill_self();
            }
        }
        progress.finish();
        if self.step < cfg.train.steps {
            self.events.row(format_args!("{},end,all,", self.step));
        }
        Ok(())
    }

    /// Evaluates every task, dropped or not, on its held-out set (split
    /// `eval`) and, when it has a finite training set, on a fixed sample of
    /// it (split `train`); logs their metrics at `step` and records which
    /// `when_learned` events the held-out accuracies trigger. A device
    /// failure during the evaluation is its error, and nothing is logged.
    fn evaluate(&mut self, step: u64) -> Result<()> {
        let (backend, trainer) = (self.backend, &mut self.trainer);
        let results: Vec<(EvalResult, Option<EvalResult>)> = self
            .evaluators
            .iter_mut()
            .zip(self.train_evaluators.iter_mut())
            .map(|(held_out, train)| {
                let result = held_out.run(backend, &mut trainer.model);
                (result, train.as_mut().map(|e| e.run(backend, &mut trainer.model)))
            })
            .collect();
        backend.check()?;
        self.last_eval = Vec::with_capacity(results.len());
        for (task, (result, train)) in self.suite.tasks.iter().zip(results) {
            for (split, r) in [("eval", Some(&result)), ("train", train.as_ref())] {
                for (metric, value) in r.into_iter().flat_map(EvalResult::metrics) {
                    self.metrics.row(format_args!("{step},{},{split},{metric},{value}", task.id));
                }
            }
            self.last_eval.push((task.id.clone(), result));
        }
        self.watch_learning(step)
    }

    /// Feeds the evaluation after `step` steps to the learned triggers and
    /// logs `step,learned,TASK,THRESHOLD` for each one it sets off.
    fn watch_learning(&mut self, step: u64) -> Result<()> {
        let accuracy: Vec<f64> = self.last_eval.iter().map(|(_, r)| r.exact_match).collect();
        let learned = self.schedule.observe(step, &accuracy);
        if learned.is_empty() {
            return Ok(());
        }
        for t in &learned {
            for &task in &t.tasks {
                self.events.row(format_args!("{step},learned,{},{}", self.suite.tasks[task].id, t.threshold));
            }
        }
        if let Some(at) =
            self.schedule.first_step_without_training(&self.suite.weights).filter(|&at| at < self.cfg.train.steps)
        {
            return Err(Error::key(
                Path::new("config.toml"),
                "schedule",
                format!("step {at}"),
                format!("leaves every task at weight 0 (a when_learned event was learned at step {step})"),
            ));
        }
        self.events.flush()
    }

    /// Writes `weights/step-N.safetensors` for the current step.
    fn write_weights(&self) -> Result<()> {
        let params: Vec<f32> = crate::model::to_host(self.backend, &self.trainer.model.params, self.n_params())
            .into_iter()
            .map(|x| x.f64() as f32)
            .collect();
        self.backend.check()?;
        crate::weights::write_weights(
            &crate::weights::path_for(&self.out, self.step),
            &self.trainer.model.layout,
            &params,
            self.step,
        )
    }

    /// Writes `checkpoints/step-N.bin` for the current step.
    pub fn write_checkpoint(&self) -> Result<()> {
        let n = self.n_params();
        let host = |buf: &B::Buf| {
            crate::model::to_host(self.backend, buf, n).into_iter().map(|x| x.f64() as f32).collect::<Vec<f32>>()
        };
        let ckpt = Checkpoint {
            config: self.cfg.to_toml(),
            vocab: (0..self.suite.vocab.len() as u32).map(|i| self.suite.vocab.token(i).to_string()).collect(),
            step: self.step,
            params: host(&self.trainer.model.params),
            adam_m: host(&self.trainer.opt.m),
            adam_v: host(&self.trainer.opt.v),
            adam_t: self.trainer.opt.t,
            epochs: self.stream.positions(),
            learned: self.schedule.progress(),
            metrics: self.metrics.text().to_string(),
            events: self.events.text().to_string(),
            timing: self.timing.text().to_string(),
        };
        self.backend.check()?;
        checkpoint::write(&checkpoint::path_for(&self.out, self.step), &ckpt)
    }
}

/// Whether the run that wrote a checkpoint (its resolved config `ckpt_config`)
/// had the schedule of `cfg`, so its learned triggers' progress carries over
/// (a fork with a new schedule watches from the fork on).
fn same_schedule(ckpt_config: &str, cfg: &Config) -> bool {
    toml::from_str::<Config>(ckpt_config).is_ok_and(|c| c.schedule == cfg.schedule && c.sequential == cfg.sequential)
}

/// Trains `experiment` into `out` on `backend`, from `ckpt` when given.
pub fn train_from<B: Backend>(
    backend: &B,
    experiment: &Experiment,
    out: &Path,
    quiet: bool,
    ckpt: Option<Checkpoint>,
) -> Result<RunOutcome> {
    let run = match ckpt {
        Some(c) => Run::from_checkpoint(backend, experiment, out, c)?,
        None => Run::start(backend, experiment, out)?,
    };
    run.train(quiet)
}

/// Runs `experiment` on `backend`, writing into `out`. `quiet` turns
/// progress output off.
pub fn run<B: Backend>(backend: &B, experiment: &Experiment, out: &Path, quiet: bool) -> Result<RunOutcome> {
    Run::start(backend, experiment, out)?.train(quiet)
}
