//! One experiment from config to run directory: train, evaluate on a
//! schedule, log metrics and timing, report progress, print the fingerprint.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::{Trainer, fingerprint};
use crate::backend::Backend;
use crate::config::Config;
use crate::data::Batch;
use crate::error::Result;
use crate::eval::{EvalResult, Evaluator};
use crate::model::Gpt;
use crate::run_dir::{self, MetricsLog};
use crate::tasks::{self, Task};

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub dir: PathBuf,
    pub fingerprint: String,
    pub n_params: usize,
    pub final_eval: EvalResult,
    pub seconds: f64,
}

/// Progress on stderr: a bar on a terminal, plain periodic lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    line_every: u64,
    steps: u64,
}

impl Progress {
    fn new(steps: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(steps);
            bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}").expect("valid template"));
            bar
        });
        let line_every = if quiet { u64::MAX } else { (steps / 20).max(1) };
        Progress { bar, line_every, steps }
    }

    fn update(&self, step: u64, loss: f64, tokens_per_s: f64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.4} {tokens_per_s:.0} tok/s"));
            }
            None if step % self.line_every == 0 || step == self.steps => {
                eprintln!("step {step}/{} loss {loss:.4} {tokens_per_s:.0} tok/s", self.steps);
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

/// Runs the experiment `cfg` (read from `cfg_file`) on `backend`, writing
/// into `out`. `quiet` turns progress output off.
pub fn run<B: Backend>(backend: &B, cfg: &Config, cfg_file: &Path, out: &Path, quiet: bool) -> Result<RunOutcome> {
    let task = tasks::build(&cfg.data, cfg.seed, cfg_file)?;
    run_dir::create(out)?;
    run_dir::write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;

    let shape = cfg.model_shape(task.vocab().len());
    let (rows, ctx) = (cfg.train.batch_size, shape.n_ctx);
    let model = Gpt::new(backend, shape.clone(), rows, cfg.seed);
    let n_params = model.n_params();
    let mut trainer = Trainer::new(backend, model, cfg.train.clone(), cfg.seed);
    let mut evaluator = Evaluator::new(task.as_ref(), cfg.eval.examples, rows, ctx, shape.vocab);
    let mut batch = Batch::new(rows, ctx);
    let mut metrics = MetricsLog::new(out.join("metrics.csv"), "step,task,split,metric,value");
    let mut timing = MetricsLog::new(out.join("timing.csv"), "step,seconds,tokens_per_s");

    let steps = cfg.train.steps;
    let progress = Progress::new(steps, quiet);
    let started = Instant::now();
    let mut final_eval = evaluate(backend, &mut trainer, &mut evaluator, task.as_ref(), 0, &mut metrics);
    metrics.flush()?;
    let mut window_start = (Instant::now(), 0u64);
    for step in 0..steps {
        batch.fill_train(task.as_ref(), cfg.seed, step);
        let stats = match trainer.step(backend, &batch, step) {
            Ok(s) => s,
            Err(e) => {
                metrics.flush()?;
                timing.flush()?;
                progress.finish();
                return Err(e);
            }
        };
        let done = step + 1;
        let elapsed = window_start.0.elapsed().as_secs_f64();
        let tokens_per_s = ((done - window_start.1) as f64 * (rows * ctx) as f64) / elapsed.max(1e-9);
        progress.update(done, stats.loss, tokens_per_s);
        if done % cfg.train.log_every == 0 || done == steps {
            for (metric, value) in [("loss", stats.loss), ("lr", stats.lr), ("grad_norm", stats.grad_norm)] {
                metrics.row(format_args!("{done},all,train,{metric},{value}"));
            }
            timing.row(format_args!("{done},{},{tokens_per_s}", started.elapsed().as_secs_f64()));
            window_start = (Instant::now(), done);
        }
        if done % cfg.eval.every == 0 || done == steps {
            final_eval = evaluate(backend, &mut trainer, &mut evaluator, task.as_ref(), done, &mut metrics);
            metrics.flush()?;
            timing.flush()?;
        }
    }
    progress.finish();
    Ok(RunOutcome {
        dir: out.to_path_buf(),
        fingerprint: fingerprint(backend, &trainer.model),
        n_params,
        final_eval,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn evaluate<B: Backend>(backend: &B, trainer: &mut Trainer<B>, evaluator: &mut Evaluator<B::F>, task: &dyn Task, step: u64, metrics: &mut MetricsLog) -> EvalResult {
    let result = evaluator.run(backend, &mut trainer.model);
    for (metric, value) in result.metrics() {
        metrics.row(format_args!("{step},{},eval,{metric},{value}", task.id()));
    }
    result
}
