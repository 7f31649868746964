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
use crate::data::TrainStream;
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

/// Runs the experiment `cfg` on its `suite` and `backend`, writing into
/// `out`. `quiet` turns progress output off.
pub fn run<B: Backend>(backend: &B, cfg: &Config, suite: &Suite, out: &Path, quiet: bool) -> Result<RunOutcome> {
    run_dir::create(out)?;
    run_dir::write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;

    let shape = cfg.model_shape(suite.vocab.len());
    let (rows, ctx) = (cfg.train.batch_size, shape.n_ctx);
    let model = Gpt::new(backend, shape.clone(), rows, cfg.seed);
    let n_params = model.n_params();
    let mut trainer = Trainer::new(backend, model, cfg.train.clone(), cfg.seed);
    let mut evaluators: Vec<Evaluator<B::F>> = suite.tasks.iter().map(|t| Evaluator::new(t, cfg.eval.examples, rows, ctx, shape.vocab)).collect();
    let mut stream = TrainStream::new(suite, cfg.data.full_batch);
    let mut batch = Batch::new(rows, ctx);
    let mut metrics = MetricsLog::new(out.join("metrics.csv"), "step,task,split,metric,value");
    let mut timing = MetricsLog::new(out.join("timing.csv"), "step,seconds,tokens_per_s");

    let steps = cfg.train.steps;
    let progress = Progress::new(steps, quiet);
    let started = Instant::now();
    let mut final_eval = evaluate(backend, &mut trainer, &mut evaluators, suite, 0, &mut metrics);
    metrics.flush()?;
    let mut window_start = (Instant::now(), 0u64);
    for step in 0..steps {
        batch.fill_train(suite, &mut stream, cfg.seed, step);
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
            final_eval = evaluate(backend, &mut trainer, &mut evaluators, suite, done, &mut metrics);
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

/// Evaluates every task, dropped or not, and logs its metrics at `step`.
fn evaluate<B: Backend>(backend: &B, trainer: &mut Trainer<B>, evaluators: &mut [Evaluator<B::F>], suite: &Suite, step: u64, metrics: &mut MetricsLog) -> Vec<(String, EvalResult)> {
    suite
        .tasks
        .iter()
        .zip(evaluators.iter_mut())
        .map(|(task, evaluator)| {
            let result = evaluator.run(backend, &mut trainer.model);
            for (metric, value) in result.metrics() {
                metrics.row(format_args!("{step},{},eval,{metric},{value}", task.id));
            }
            (task.id.clone(), result)
        })
        .collect()
}
