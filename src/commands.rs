//! Each `ebb` command's work; `main.rs` parses the command line and calls
//! one of these. They print what a person at a terminal reads; the files
//! they write are the record.

use std::path::{Path, PathBuf};

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::sweep::Plan;

// ---------------------------------------------------------------- training

/// Where `--device` asks to compute.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The GPU when one works, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl Device {
    /// As written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// Where a command computes: `--threads` and `--device`.
#[derive(clap::Args)]
pub struct Compute {
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to compute.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
}

/// A CPU thread pool of `threads` workers (default: every core).
fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let n = match threads {
        Some(0) => return Err(Error::input("--threads 0: need at least one thread")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    rayon::ThreadPoolBuilder::new().num_threads(n).build().map_err(|e| Error::input(format!("--threads {n}: {e}")))
}

/// Where `--device` sends the work.
enum Chosen {
    Gpu(Box<CudaBackend>),
    /// The CPU, with the reason when `auto` passed the GPU over.
    Cpu(Option<String>),
}

/// Resolves `--device`: `cuda` opens the GPU (an error when none works),
/// `auto` takes it when one works and the CPU otherwise.
fn check_device(device: Device) -> Result<Chosen> {
    match device {
        Device::Cpu => Ok(Chosen::Cpu(None)),
        Device::Cuda => CudaBackend::new()
            .map(|b| Chosen::Gpu(Box::new(b)))
            .map_err(|e| Error::input(format!("--device cuda: {e}; use --device cpu"))),
        Device::Auto => Ok(CudaBackend::new()
            .map_or_else(|e| Chosen::Cpu(Some(format!("auto: no usable GPU: {e}"))), |b| Chosen::Gpu(Box::new(b)))),
    }
}

/// Trains `experiment` into `out` (from `ckpt` when given) on the device
/// `compute` asks for, and prints the outcome.
fn train(experiment: &Experiment, out: &Path, quiet: bool, compute: Compute, ckpt: Option<Checkpoint>) -> Result<()> {
    crate::run_dir::kill_point()?; // a bad EBB_KILL_AT is refused before anything is printed
    let device = check_device(compute.device)?;
    let pool = thread_pool(compute.threads)?;
    let outcome = match device {
        Chosen::Gpu(gpu) => {
            if !quiet {
                eprintln!("device: cuda, {}; run directory {}", gpu.describe(), out.display());
            }
            pool.install(|| crate::train::run::train_from(&*gpu, experiment, out, quiet, ckpt))
        }
        Chosen::Cpu(why) => {
            if !quiet {
                let why = why.map_or(String::new(), |w| format!(" ({w})"));
                eprintln!("device: cpu{why}, {} threads; run directory {}", pool.current_num_threads(), out.display());
            }
            pool.install(|| crate::train::run::train_from(&CpuBackend::<f32>::new(), experiment, out, quiet, ckpt))
        }
    };
    // Draw whatever was logged, a diverged run included.
    if matches!(outcome, Ok(_) | Err(Error::Diverged { .. })) {
        crate::plot::plot_run(out, crate::plot::Format::Png)?;
    }
    let outcome = outcome?;
    let (cfg, suite) = (&experiment.config, &experiment.suite);
    println!(
        "run {} finished in {:.1}s: {} parameters, suite {} ({} tasks)",
        cfg.name,
        outcome.seconds,
        outcome.n_params,
        suite.name,
        suite.tasks.len()
    );
    for (task, e) in &outcome.final_eval {
        let chance = suite.task(task).map_or(0.0, |t| t.chance);
        println!(
            "  {task:<16} exact_match {:.3} [95% {:.3}, {:.3}] (chance {chance:.3})  token_acc {:.3}  loss {:.4}",
            e.exact_match, e.exact_match_lo, e.exact_match_hi, e.token_acc, e.loss
        );
    }
    if let Ok(summary) = crate::analysis::read_summary(out) {
        for line in drop_lines(&summary) {
            println!("{line}");
        }
    }
    println!("wrote {} (plots in plots/, open report.html)", outcome.dir.display());
    println!("params fingerprint: {}", outcome.fingerprint);
    Ok(())
}

/// `ebb run`: trains the experiment in `config` (with `overrides`) into
/// `out` (default `runs/<name>`).
pub fn run(config: &Path, out: Option<PathBuf>, overrides: &[String], quiet: bool, compute: Compute) -> Result<()> {
    let experiment = Experiment::load(config, overrides)?;
    let out = out.unwrap_or_else(|| experiment.config.default_out());
    train(&experiment, &out, quiet, compute, None)
}

/// `ebb resume`: continues the run in `run_dir` from its latest checkpoint.
pub fn resume(run_dir: &Path, quiet: bool, compute: Compute) -> Result<()> {
    let config = run_dir.join("config.toml");
    if !config.is_file() {
        return Err(Error::input(format!("{}: not a run directory (no config.toml)", run_dir.display())));
    }
    let finished = crate::analysis::stored_outcome(run_dir).is_some_and(|(finished, _)| finished);
    if finished {
        println!("{}: the run already finished", run_dir.display());
        return Ok(());
    }
    let experiment = Experiment::load(&config, &[])?;
    let ckpt = crate::checkpoint::latest(run_dir)?;
    if !quiet {
        match &ckpt {
            Some(c) => eprintln!("resuming {} from step {}", run_dir.display(), c.step),
            None => eprintln!("{}: no checkpoint yet; starting over", run_dir.display()),
        }
    }
    train(&experiment, run_dir, quiet, compute, ckpt)
}

/// `ebb fork`: a new run in `out` from `run_dir`'s checkpoint at step `at`,
/// with `config` (default: the run's own) and `overrides`.
pub fn fork(
    run_dir: &Path,
    at: u64,
    out: &Path,
    config: Option<PathBuf>,
    overrides: &[String],
    quiet: bool,
    compute: Compute,
) -> Result<()> {
    let steps = crate::checkpoint::steps(run_dir);
    if !steps.contains(&at) {
        let have = if steps.is_empty() {
            "none".to_string()
        } else {
            steps.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
        };
        return Err(Error::input(format!(
            "--at {at}: {} has no checkpoint at that step (it has: {have})",
            run_dir.display()
        )));
    }
    if out.join("config.toml").exists() {
        return Err(Error::input(format!("--out {}: already a run directory; choose a new one", out.display())));
    }
    let config = config.unwrap_or_else(|| run_dir.join("config.toml"));
    let experiment = Experiment::load(&config, overrides)?;
    let ckpt = crate::checkpoint::read(&crate::checkpoint::path_for(run_dir, at))?;
    train(&experiment, out, quiet, compute, Some(ckpt))
}

// ------------------------------------------------------------------- bench

/// `ebb bench`'s options.
pub struct BenchArgs {
    /// Config names (default: every one).
    pub configs: Vec<String>,
    pub steps: usize,
    pub warmup: usize,
    pub json: bool,
    pub breakdown: bool,
    /// A suite whose batch generation is timed too.
    pub suite: Option<String>,
    pub ceilings: bool,
    pub dropout: f64,
}

/// `ebb erasure`: the erasure battery on one dropped task of a finished run
/// (every instrument when `request.only` is empty).
pub fn erasure(mut request: crate::erasure::Request, compute: Compute) -> Result<()> {
    if request.only.is_empty() {
        request.only = &crate::erasure::Instrument::ALL;
    }
    let device = check_device(compute.device)?;
    let pool = thread_pool(compute.threads)?;
    let erasure = match device {
        Chosen::Gpu(gpu) => pool.install(|| crate::erasure::measure(&*gpu, &request)),
        Chosen::Cpu(_) => pool.install(|| crate::erasure::measure(&CpuBackend::<f32>::new(), &request)),
    }?;
    for line in crate::erasure::report_lines(&erasure) {
        println!("{line}");
    }
    println!("wrote {}", crate::erasure::out_dir(request.run_dir, request.task).display());
    Ok(())
}

/// `ebb eval`: the run's model at `step` (default: the last kept weights)
/// scored on every task's held-out set; with `logits`, each task's first
/// batch and the model's logits on it written there (safetensors).
pub fn eval(run_dir: &Path, step: Option<u64>, logits: Option<&Path>, compute: Compute) -> Result<()> {
    let device = check_device(compute.device)?;
    let pool = thread_pool(compute.threads)?;
    match device {
        Chosen::Gpu(gpu) => pool.install(|| eval_on(&*gpu, run_dir, step, logits)),
        Chosen::Cpu(_) => pool.install(|| eval_on(&CpuBackend::<f32>::new(), run_dir, step, logits)),
    }
}

fn eval_on<B: crate::backend::Backend>(
    backend: &B,
    run_dir: &Path,
    step: Option<u64>,
    logits: Option<&Path>,
) -> Result<()> {
    use crate::float::Float;
    let experiment = Experiment::load(&run_dir.join("config.toml"), &[])?;
    let (cfg, suite) = (&experiment.config, &experiment.suite);
    let shape = cfg.model_shape(suite.vocab.len());
    let layout = crate::model::ParamLayout::new(&shape);
    let kept = crate::weights::kept_steps(run_dir);
    let step = match step.or(kept.last().copied()) {
        Some(s) => s,
        None => return Err(Error::input(format!("{}: no weights kept (weights/ is empty)", run_dir.display()))),
    };
    let path = crate::weights::path_for(run_dir, step);
    if !path.is_file() {
        return Err(Error::input(format!(
            "--step {step}: {} has no weights at that step (kept: {kept:?})",
            run_dir.display()
        )));
    }
    let params = crate::weights::read_weights(&path, &layout)?;
    let rows = cfg.train.batch_size;
    let mut model = crate::model::Gpt::new(backend, shape.clone(), rows, cfg.seed);
    model.load_params(backend, &params);
    let mut evaluators = crate::eval::Evaluator::for_held_out_sets(suite, rows, shape.n_ctx, shape.vocab);
    println!("{} at step {step} ({}), held-out sets:", cfg.name, path.display());
    for (task, evaluator) in suite.tasks.iter().zip(&mut evaluators) {
        let r = evaluator.run(backend, &mut model);
        println!(
            "  {:<12} exact match {:.4} [95% {:.4}, {:.4}]  loss {:.4}  ({} problems)",
            task.id,
            r.exact_match,
            r.exact_match_lo,
            r.exact_match_hi,
            r.loss,
            evaluator.len()
        );
    }
    if let Some(file) = logits {
        let mut per_task = Vec::new();
        let mut values = vec![B::F::of(0.0); rows * shape.n_ctx * shape.vocab];
        for (task, evaluator) in suite.tasks.iter().zip(&mut evaluators) {
            let batch = evaluator.first_batch();
            model.forward(backend, &batch.tokens, &batch.targets, &batch.mask, None);
            backend.download(&mut values, model.logits());
            let tokens = batch.tokens.clone();
            per_task.push((task.id.clone(), tokens, values.iter().map(|x| x.f64() as f32).collect()));
        }
        backend.check()?;
        crate::weights::write_logits(file, &per_task, [rows, shape.n_ctx, shape.vocab], step)?;
        println!("wrote {}", file.display());
    }
    backend.check()
}

/// `ebb tasks export`: every example of `split` (`train`: `n` sampled from
/// each task's training distribution with `seed`; `eval`: each task's
/// held-out set of `n` problems, as a run with `eval.examples = n` and this
/// seed chooses it) as JSON lines, and the vocabulary, into `out`.
pub fn tasks_export(suite: &str, split: &str, n: usize, seed: u64, out: &Path) -> Result<()> {
    if n == 0 {
        return Err(Error::input("-n 0: need at least one example per task"));
    }
    let (spec, path) = crate::experiment::load_suite_spec(suite)?;
    let mut built = crate::tasks::Suite::build(&spec, seed, &path)?;
    built.choose_eval_sets(n);
    let mut lines = String::new();
    let mut tokens = Vec::new();
    for (i, t) in built.tasks.iter().enumerate() {
        let problems: Vec<u64> = match split {
            "eval" => built.eval_sets[i].clone(),
            _ => {
                let mut r = crate::rng::stream(seed, "export", crate::rng::purpose_id(&t.id));
                (0..n).map(|_| t.sample_train(&mut r)).collect()
            }
        };
        for p in problems {
            let prompt = t.render(p, &mut tokens);
            let line = serde_json::json!({
                "task": t.id,
                "split": split,
                "problem": p,
                "prompt": built.vocab.decode(&tokens[..prompt]),
                "answer": built.vocab.decode(&tokens[prompt..]),
                "tokens": tokens,
                "prompt_len": prompt,
            });
            lines.push_str(&format!("{line}\n"));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    crate::run_dir::write_atomic(&out.join("examples.jsonl"), lines.as_bytes())?;
    // A row of ebb's batches is BOS, the example's tokens, then EOS (the targets: the inputs shifted by one).
    let vocab = serde_json::json!({
        "suite": built.name,
        "seed": seed,
        "pad": crate::tasks::PAD,
        "bos": crate::tasks::BOS,
        "eos": crate::tasks::EOS,
        "tokens": (0..built.vocab.len() as u32).map(|id| built.vocab.decode(&[id])).collect::<Vec<String>>(),
    });
    crate::run_dir::write_atomic(&out.join("vocab.json"), format!("{vocab:#}\n").as_bytes())?;
    println!("wrote {} and {}", out.join("examples.jsonl").display(), out.join("vocab.json").display());
    Ok(())
}

/// `ebb bench`: times training steps of the fixed configs.
pub fn bench(args: BenchArgs, compute: Compute) -> Result<()> {
    let BenchArgs { configs: config, steps, warmup, json, breakdown, suite, ceilings, dropout } = args;
    if steps == 0 {
        return Err(Error::input("--steps 0: need at least one timed step"));
    }
    if !(0.0..1.0).contains(&dropout) {
        return Err(Error::input(format!("--dropout {dropout}: must be in [0, 1)")));
    }
    let device = check_device(compute.device)?;
    if let Chosen::Cpu(Some(why)) = &device {
        eprintln!("device: cpu ({why})");
    }
    if ceilings && matches!(device, Chosen::Gpu(_)) {
        return Err(Error::input("--ceilings measures the CPU's limits; use it with --device cpu"));
    }
    let pool = thread_pool(compute.threads)?;
    let configs: Vec<crate::bench::BenchConfig> = if config.is_empty() {
        crate::bench::CONFIGS.to_vec()
    } else {
        config.iter().filter_map(|n| crate::bench::BenchConfig::by_name(n)).collect()
    };
    let configs: Vec<crate::bench::BenchConfig> =
        configs.into_iter().map(|c| crate::bench::BenchConfig { dropout, ..c }).collect();
    let backend = CpuBackend::<f32>::new();
    let suite = match suite {
        Some(name) => {
            let (spec, path) = crate::experiment::load_suite_spec(&name)?;
            Some(crate::tasks::Suite::build(&spec, 0, &path)?)
        }
        None => None,
    };
    for c in &configs {
        let r = match &device {
            Chosen::Gpu(gpu) => crate::bench::run(&**gpu, c, warmup, steps)?,
            Chosen::Cpu(_) => pool.install(|| crate::bench::run(&backend, c, warmup, steps))?,
        };
        println!("{}", if json { r.json() } else { r.line() });
        if let Some(suite) = &suite {
            let ms = crate::bench::batch_generation_ms(suite, c.batch, c.ctx, 50);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"config": c.name, "suite": suite.name, "batch_ms": ms, "share_of_step": ms / r.ms_per_step})
                );
            } else {
                println!(
                    "  batch generation, suite {}: {ms:.3} ms per batch = {:.2}% of the step",
                    suite.name,
                    100.0 * ms / r.ms_per_step
                );
            }
        }
        if breakdown {
            let rows = match &device {
                Chosen::Gpu(_) => {
                    // A fresh GPU backend that waits for each op, so each is timed.
                    let gpu = CudaBackend::new().map_err(|e| Error::input(format!("--device cuda: {e}")))?;
                    gpu.set_synchronous(true);
                    crate::bench::breakdown(gpu, c, warmup, steps)?
                }
                Chosen::Cpu(_) => {
                    pool.install(|| crate::bench::breakdown(CpuBackend::<f32>::new(), c, warmup, steps))?
                }
            };
            let total: f64 = rows.iter().map(|r| r.1).sum();
            for (op, ms, calls) in rows {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"config": c.name, "op": op, "ms_per_step": ms, "calls_per_step": calls})
                    );
                } else {
                    println!("  {op:<22} {ms:8.2} ms/step {:5.1}%  {calls} calls", 100.0 * ms / total);
                }
            }
        }
        if ceilings {
            let report = pool.install(|| crate::bench::ceilings::report(c, &r, steps))?;
            println!("{}", if json { report.json() } else { report.lines() });
        }
    }
    Ok(())
}

// ------------------------------------------------------------------- sweeps

/// `ebb sweep` on this machine: its runs (or shard of them), several at once.
pub struct LocalSweep {
    pub out: PathBuf,
    /// Runs at once (default: one per core).
    pub jobs: Option<usize>,
    /// Threads per run (default: cores / jobs).
    pub threads: Option<usize>,
    /// `I/N`: only slice i of n of the runs.
    pub shard: Option<String>,
    /// Each run's `--device`.
    pub device: &'static str,
    /// Print the plan and run nothing.
    pub dry_run: bool,
    /// Leave aggregation to `ebb aggregate` (Slurm array tasks).
    pub no_aggregate: bool,
    pub quiet: bool,
}

/// `ebb sweep`: runs what is missing of `plan` and aggregates.
pub fn sweep(plan: &Plan, args: LocalSweep) -> Result<()> {
    let LocalSweep { out, jobs, threads, shard, device, dry_run, no_aggregate, quiet } = args;
    let shard = shard.as_deref().map(crate::sweep::parse_shard).transpose()?.unwrap_or((1, 1));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if jobs == Some(0) || threads == Some(0) {
        return Err(Error::input("--jobs and --threads must be at least 1"));
    }
    let jobs = jobs.unwrap_or(cores);
    let threads = threads.unwrap_or((cores / jobs).max(1));
    let mine = plan.shard(shard.0, shard.1);
    if dry_run {
        println!(
            "sweep {}: {} runs, shard {}/{} has {}; {} at once, {} threads each; directory {}",
            plan.name,
            plan.runs.len(),
            shard.0,
            shard.1,
            mine.len(),
            jobs,
            threads,
            out.display()
        );
        for r in mine {
            let status = crate::sweep::RunStatus::of(&out.join(&r.id));
            println!(
                "  {} {:<11} {}",
                r.id,
                status.name(),
                r.point.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
            );
        }
        return Ok(());
    }
    crate::sweep::prepare(plan, &out)?;
    let opts = crate::sweep::RunOptions { out: out.clone(), jobs, threads_per_job: threads, shard, device, quiet };
    let started = std::time::SystemTime::now();
    let outcome = crate::sweep::run(plan, &opts)?;
    crate::sweep::log_session(&out, started, &opts, outcome.finished.len())?;
    if !no_aggregate {
        crate::sweep::aggregate::aggregate(&out, &plan.report.heatmap)?;
    }
    let busy = if outcome.busy.is_empty() {
        String::new()
    } else {
        format!(", {} being run by another process", outcome.busy.len())
    };
    println!(
        "sweep {}: {} finished now, {} already done, {} diverged, {} failed, {} interrupted{busy}; aggregate in {}",
        plan.name,
        outcome.finished.len(),
        outcome.skipped.len(),
        outcome.diverged.len(),
        outcome.failed.len(),
        outcome.interrupted.len(),
        out.join("sweep.csv").display()
    );
    let bad: Vec<String> = outcome
        .failed
        .iter()
        .map(|id| format!("{id} (failed: see {}/failed.txt)", out.join(id).display()))
        .chain(outcome.diverged.iter().map(|id| format!("{id} (diverged)")))
        .collect();
    if !bad.is_empty() {
        return Err(Error::input(format!("runs that did not finish: {}", bad.join(", "))));
    }
    if !outcome.interrupted.is_empty() {
        return Err(Error::input(format!(
            "interrupted; run the same command again to resume: {}",
            outcome.interrupted.join(", ")
        )));
    }
    Ok(())
}

/// `ebb sweep --slurm`: prepares the sweep directory, submits what is
/// missing as one job array and says where everything lands.
pub fn submit_to_slurm(
    plan: &crate::sweep::Plan,
    sweep: &std::path::Path,
    out: &Path,
    opts: &crate::sweep::slurm::SlurmOptions,
) -> Result<()> {
    let sub = crate::sweep::slurm::submit(plan, sweep, out, opts)?;
    let running = if sub.running_runs > 0 {
        format!(" ({} running elsewhere, left to their job)", sub.running_runs)
    } else {
        String::new()
    };
    if sub.indices.is_empty() {
        println!(
            "sweep {}: nothing to submit: {} of {} runs need running{running}; directory {}",
            plan.name,
            sub.missing_runs,
            plan.runs.len(),
            out.display()
        );
    } else {
        let array = crate::sweep::slurm::array_spec(&sub.indices);
        match &sub.job {
            Some(job) => println!(
                "sweep {}: submitted job {job}: {} runs to do in array tasks {array} of {}{running}; directory {}",
                plan.name,
                sub.missing_runs,
                sub.array_tasks,
                out.display()
            ),
            None => println!(
                "sweep {}: dry run: {} runs to do in array tasks {array} of {}{running}; submit with: sbatch {}",
                plan.name,
                sub.missing_runs,
                sub.array_tasks,
                sub.script.display()
            ),
        }
        println!("batch script: {}", sub.script.display());
    }
    // After --wait (or with nothing left to wait for), say where the sweep stands.
    if opts.wait && !opts.dry_run {
        let status = crate::sweep::slurm::SweepStatus::read(out)?;
        println!("{}", status.describe(out));
        if status.complete() {
            crate::sweep::aggregate::aggregate(out, &plan.report.heatmap)?;
            println!("aggregate in {}", out.join("sweep.csv").display());
        }
        // Diverged runs are complete (and reported): only unfinished runs fail the sweep.
        if !status.complete() {
            return Err(Error::input(format!(
                "sweep {}: not every run finished; see `ebb status {}` and submit again to run what is missing",
                plan.name,
                out.display()
            )));
        }
    }
    Ok(())
}

/// `ebb status`: where a sweep stands.
pub fn status(sweep_dir: &Path) -> Result<()> {
    println!("{}", crate::sweep::slurm::SweepStatus::read(sweep_dir)?.describe(sweep_dir));
    Ok(())
}

/// `ebb aggregate`: a sweep directory's tables, plots and report, with the
/// heatmaps its sweep file asked for.
pub fn aggregate(sweep_dir: &Path) -> Result<()> {
    let heatmap: Vec<String> = std::fs::read_to_string(sweep_dir.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| serde_json::from_value(v["heatmap"].clone()).ok())
        .unwrap_or_default();
    for path in crate::sweep::aggregate::aggregate(sweep_dir, &heatmap)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `ebb plot`: a run's summary, plots and report, redrawn from its files.
pub fn plot(run_dir: &Path, format: crate::plot::Format) -> Result<()> {
    if !run_dir.join("config.toml").is_file() {
        return Err(Error::input(format!("{}: not a run directory (no config.toml)", run_dir.display())));
    }
    crate::analysis::write_summary(run_dir)?;
    for path in crate::plot::plot_run(run_dir, format)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `ebb analyze`: a run's summary.json recomputed, its drops printed.
pub fn analyze(run_dir: &Path) -> Result<()> {
    let summary = crate::analysis::write_summary(run_dir)?;
    for line in drop_lines(&summary) {
        println!("{line}");
    }
    println!("wrote {}", run_dir.join("summary.json").display());
    Ok(())
}

/// `ebb tasks list`: the task families and the suites shipped in `tasks/`.
pub fn tasks_list() -> String {
    let mut text = String::from("families:\n");
    for (name, what) in crate::tasks::FAMILIES {
        text += &format!("  {name:<11} {what}\n");
    }
    text += "suites (tasks/):\n";
    for (path, file) in crate::tasks::spec::shipped_suites(Path::new("tasks")) {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let extra = if file.translate.is_some() { " + translation pairs" } else { "" };
        text += &format!(
            "  {name:<13} {} ({} tasks{extra})\n",
            file.description.as_deref().unwrap_or(""),
            file.tasks.len()
        );
    }
    text
}

/// `ebb tasks sample`: `n` training examples of each task of `suite` (a
/// suite name, a suite file or an experiment config), or of `task` only.
pub fn tasks_sample(suite: &str, n: usize, seed: u64, task: Option<&str>) -> Result<String> {
    let (spec, path) = crate::experiment::load_suite_spec(suite)?;
    let built = crate::tasks::Suite::build(&spec, seed, &path)?;
    let mut text =
        format!("suite {}: {} tasks, {} tokens in the vocabulary\n", built.name, built.tasks.len(), built.vocab.len());
    let mut shown = 0;
    for (i, t) in built.tasks.iter().enumerate() {
        if task.is_some_and(|id| id != t.id) {
            continue;
        }
        shown += 1;
        text += &format!(
            "[{}] family {}, {} problems, chance {:.4}, up to {} tokens{}\n",
            t.id,
            t.family_name,
            t.space(),
            t.chance,
            t.max_len(),
            if built.weights[i] == 0.0 { ", never trained (weight 0)" } else { "" }
        );
        let mut r = crate::rng::stream(seed, "sample", crate::rng::purpose_id(&t.id));
        let mut out = Vec::new();
        for _ in 0..n {
            let p = t.sample_train(&mut r);
            let prompt = t.render(p, &mut out);
            text += &format!("    {} ⟦{}⟧\n", built.vocab.decode(&out[..prompt]), built.vocab.decode(&out[prompt..]));
        }
    }
    if shown == 0 {
        return Err(Error::input(format!("--task {}: no such task in {}", task.unwrap_or_default(), path.display())));
    }
    Ok(text)
}

/// One line per dropped task: accuracy at the drop, half-life, fits,
/// savings (or that it was not learned); one per `when_learned` event that
/// never fired.
pub fn drop_lines(summary: &crate::analysis::Summary) -> Vec<String> {
    use crate::plot::report::{half_life_cell, savings_cell};
    let mut lines = Vec::new();
    let num = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    for d in &summary.drops {
        if !d.learned() {
            lines.push(format!(
                "  dropped {} at step {}: not learned (accuracy {} < {:?} at the drop)",
                d.task,
                d.step,
                num(d.accuracy_at_drop),
                d.learned_threshold
            ));
            continue;
        }
        let fit = match d.fits.as_ref().and_then(|f| f.best()) {
            Some(f) => format!("{} fit τ {}", f.form.name(), num(f.tau)),
            None => "no fit ok".to_string(),
        };
        let floor =
            d.noise_floor.as_ref().map_or(String::new(), |n| format!(" (kept tasks: AURC {})", num(n.aurc_mean)));
        lines.push(format!(
            "  dropped {} at step {}: accuracy {} -> {}, half-life {} steps, {fit}, AURC {}{floor}, savings {}",
            d.task,
            d.step,
            num(d.accuracy_at_drop),
            num(d.accuracy_at_window_end),
            half_life_cell(d),
            num(d.aurc),
            savings_cell(d),
        ));
    }
    if let Some(seq) = &summary.sequential {
        let phase = |(i, task): (usize, &String)| {
            let acc = seq.accuracy_matrix[i][i];
            let state = match seq.learned.get(i).copied().flatten() {
                Some(true) => " learned",
                Some(false) => " NOT learned",
                None => "",
            };
            format!("{task} {}{state}", num(acc))
        };
        let phases: Vec<String> = seq.order.iter().enumerate().map(phase).collect();
        lines.push(format!(
            "  sequential, accuracy at each phase's end (learned: ≥ {}): {}",
            seq.learned_threshold,
            phases.join(", ")
        ));
    }
    for e in summary.learned_events.iter().filter(|e| e.fired_at.is_none()) {
        let why = match e.learned_at {
            Some(s) => format!("learned at step {s}, due after the last step"),
            None => format!("exact match never held ≥ {:?} at two evaluations in a row", e.when_learned),
        };
        lines.push(format!("  schedule[{}] (when_learned, {}): never fired: {why}", e.schedule, e.tasks.join(", ")));
    }
    lines
}
