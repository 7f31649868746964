//! The `ebb` command line: parses, calls the library, maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use ebb::commands::{self, Compute, Device};
use ebb::{Error, Result};

#[derive(Parser)]
#[command(
    name = "ebb",
    version,
    about = "Train toy transformers and measure how capabilities decay once their task leaves training"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlotFormat {
    Png,
    Svg,
}

#[derive(Subcommand)]
enum Command {
    /// Train one experiment from a TOML config and write its run directory.
    Run {
        /// The experiment config (TOML).
        config: PathBuf,
        /// Output directory (default: runs/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override any config key, e.g. --set train.lr=3e-4 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        /// Write a checkpoint every N steps (for `ebb resume` and `ebb fork`).
        #[arg(long, value_name = "N")]
        checkpoint_every: Option<u64>,
        /// Also write the parameters (weights/step-N.safetensors) at step 0 and every N steps.
        #[arg(long, value_name = "N")]
        weights_every: Option<u64>,
        /// Write every training step's batch and each task's eval set as safetensors (batches/, eval/).
        #[arg(long)]
        dump_batches: bool,
        /// Start from the weights in this safetensors file instead of the seeded initialization.
        #[arg(long, value_name = "FILE")]
        init_from: Option<PathBuf>,
        #[command(flatten)]
        compute: Compute,
    },
    /// Continue an interrupted run from its latest checkpoint; the result is
    /// bit-identical to an uninterrupted run.
    Resume {
        run_dir: PathBuf,
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        compute: Compute,
    },
    /// Start a new run from a run's checkpoint, e.g. with another schedule.
    Fork {
        /// The run to fork from.
        run_dir: PathBuf,
        /// The checkpoint step to start from.
        #[arg(long)]
        at: u64,
        /// The new run's directory.
        #[arg(long)]
        out: PathBuf,
        /// The new run's config (default: the original run's config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override any config key, e.g. --set 'schedule=[{step=500, drop=["roman"]}]'.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        compute: Compute,
    },
    /// Recompute summary.json (decay fits, forgetting, savings) from a run's files.
    Analyze { run_dir: PathBuf },
    /// Is a dropped task's capability erased or only switched off? Compares the
    /// weights before its drop (P) with those at the end of its window (D).
    Erasure {
        run_dir: PathBuf,
        /// The dropped task.
        #[arg(long)]
        task: String,
        /// D's step (default: the end of the drop window); its weights must be kept.
        #[arg(long, value_name = "STEP")]
        at: Option<u64>,
        /// Instruments to run, comma-separated (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<ebb::erasure::Instrument>,
        /// The never-learned control C: `auto` trains it (same config and seed, the task
        /// at weight 0 from step 0) into RUN_DIR/erasure/TASK/; or a run directory.
        #[arg(long, value_name = "auto|RUN_DIR")]
        control: Option<String>,
        /// Fine-tuning steps at most for `relearn`.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        relearn_steps: u64,
        /// The models `soft-prompt` optimizes on, comma-separated (default: P,D,C).
        #[arg(long, value_delimiter = ',', value_parser = ["P", "D", "C"])]
        soft_prompt_on: Vec<String>,
        #[command(flatten)]
        compute: Compute,
    },
    /// Score a run's kept weights on every task's held-out set; optionally
    /// write the logits of each task's first batch, for checking other
    /// implementations (the Python package's forward pass) against ebb.
    Eval {
        run_dir: PathBuf,
        /// The weights' step (default: the last kept).
        #[arg(long)]
        step: Option<u64>,
        /// Write each task's first batch (`TASK.tokens`) and its logits (`TASK.logits`) here.
        #[arg(long, value_name = "FILE.safetensors")]
        logits: Option<PathBuf>,
        #[command(flatten)]
        compute: Compute,
    },
    /// Run a sweep: a grid of experiments, several at once, resumable and shardable.
    Sweep {
        /// The sweep file (TOML).
        sweep: PathBuf,
        /// Sweep directory (default: runs/<sweep name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Change the sweep file (repeatable): `seeds=[1,2]`, an axis's list
        /// (`model.d_model=[16,32]`), `report.KEY=…`, or any run-config key
        /// set in every run (`train.steps=500`, `schedule[0].step=300`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Runs at once (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Threads per run (default: cores / jobs).
        #[arg(long)]
        threads: Option<usize>,
        /// Run only slice i of n of the runs (1-based), e.g. --shard 2/4.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// Where every run computes (passed to each run's `ebb run --device`).
        #[arg(long, value_enum, default_value = "cpu")]
        device: Device,
        /// Print the plan (every run, its id and status) and run nothing; with
        /// --slurm, write the batch script and submit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print how many runs are finished, running, interrupted, failed, diverged, pending.
        #[arg(long)]
        status: bool,
        /// Submit the sweep to Slurm as one job array (array task i runs shard i+1/n).
        #[arg(long)]
        slurm: bool,
        /// With --slurm: array tasks running at once (sbatch --array=...%N).
        #[arg(long, value_name = "N", requires = "slurm")]
        array_parallel: Option<usize>,
        /// With --slurm: number of array tasks n (default: one per run, at most 1000).
        #[arg(long, value_name = "N", requires = "slurm")]
        array_tasks: Option<usize>,
        /// With --slurm: the partition.
        #[arg(long, requires = "slurm")]
        partition: Option<String>,
        /// With --slurm: time limit of each array task (Slurm syntax, e.g. 2:00:00).
        #[arg(long, requires = "slurm")]
        time: Option<String>,
        /// With --slurm: CPUs of each array task, the threads of its runs.
        #[arg(long, value_name = "C", default_value_t = 1, requires = "slurm")]
        cpus_per_task: usize,
        /// With --slurm: one more #SBATCH option, verbatim (repeatable), e.g. --sbatch-arg=--mem=2G.
        #[arg(long, value_name = "OPTION", allow_hyphen_values = true, requires = "slurm")]
        sbatch_arg: Vec<String>,
        /// With --slurm: wait until the array ends, then aggregate.
        #[arg(long, requires = "slurm")]
        wait: bool,
        /// Run the runs only; leave aggregation to `ebb aggregate` (used by array tasks).
        #[arg(long, hide = true)]
        no_aggregate: bool,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Where a sweep stands, from its directory: finished, running, interrupted, failed, diverged, pending.
    Status { sweep_dir: PathBuf },
    /// Aggregate a sweep directory: sweep.csv, drops.csv, scaling.json, plots, report.html.
    Aggregate { sweep_dir: PathBuf },
    /// The study a sweep was built for: erasure batteries, figures, tables and
    /// the answers with their intervals, as one Markdown page (PNG figures
    /// beside it) and one self-contained HTML page, from the sweep directory alone.
    Report {
        sweep_dir: PathBuf,
        /// The Markdown page, NAME.md (default: the sweep's [report] study, else SWEEP_DIR/study.md).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Erasure batteries at once (default: one per core on the CPU, one on a GPU).
        #[arg(long)]
        jobs: Option<usize>,
        /// Where the erasure batteries compute (passed to each `ebb erasure --device`).
        #[arg(long, value_enum, default_value = "cpu")]
        device: Device,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Redraw a run's plots and report.html from its files (any run, finished or not).
    Plot {
        run_dir: PathBuf,
        /// Image format of the files in plots/ (the report always inlines SVG).
        #[arg(long, value_enum, default_value = "png")]
        format: PlotFormat,
    },
    /// Task families and suites: list them, or print sample examples.
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
    },
    /// Time training steps of fixed model configs on random tokens.
    Bench {
        /// Which configs (repeatable; default: tiny, small and base).
        #[arg(long, value_parser = ["tiny", "small", "base"])]
        config: Vec<String>,
        /// Timed steps per config (after the warm-up).
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Also print the time per op (forward and backward) per step.
        #[arg(long)]
        breakdown: bool,
        /// Also time generating a batch of this suite (a name in tasks/ or a
        /// file) at each config's shape, against the step.
        #[arg(long)]
        suite: Option<String>,
        /// Also measure the machine's ceilings: the f32 FMA peak, a register-tiled
        /// product kernel on cached operands, copy bandwidth, the matrix-product
        /// library on a 1024³ product and on exactly each config's step products.
        #[arg(long)]
        ceilings: bool,
        /// Dropout probability on the residual branches and attention weights
        /// (0 ≤ p < 1), to time the regularized step.
        #[arg(long, default_value_t = 0.0)]
        dropout: f64,
        #[command(flatten)]
        compute: Compute,
    },
}

#[derive(Subcommand)]
enum TasksCommand {
    /// Write a suite's examples (text, token ids, the prompt/answer boundary,
    /// the task) as JSON lines, and its vocabulary, to train elsewhere.
    Export {
        /// A suite name (tasks/NAME.toml), a suite file or an experiment config.
        suite: String,
        /// `train`: n samples of each task's training distribution; `eval`: its held-out set of n.
        #[arg(long, value_parser = ["train", "eval"])]
        split: String,
        /// Examples per task.
        #[arg(short, default_value_t = 256)]
        n: usize,
        /// The seed for the split and the sampling (a run's `seed`).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_parser = ["jsonl"], default_value = "jsonl")]
        format: String,
        /// Output folder: examples.jsonl and vocab.json.
        #[arg(long)]
        out: PathBuf,
    },
    /// The task families and the suites shipped in tasks/, one line each.
    List,
    /// Print examples of a suite's tasks, the answer marked ⟦like this⟧.
    Sample {
        /// A suite name (tasks/NAME.toml), a suite file or an experiment config.
        suite: String,
        /// Examples per task.
        #[arg(short, default_value_t = 3)]
        n: usize,
        /// The seed for the split and the sampling.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
    },
}

fn main() -> ExitCode {
    // Die quietly when the reader of stdout goes away (`ebb tasks sample … | head`).
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run {
            config,
            out,
            mut overrides,
            quiet,
            checkpoint_every,
            weights_every,
            dump_batches,
            init_from,
            compute,
        } => {
            if let Some(n) = checkpoint_every {
                overrides.push(format!("train.checkpoint_every={n}"));
            }
            if let Some(n) = weights_every {
                overrides.push(format!("train.weights_every={n}"));
            }
            if dump_batches {
                overrides.push("train.dump_batches=true".into());
            }
            if let Some(file) = init_from {
                let file = std::path::absolute(&file)
                    .ok()
                    .filter(|f| f.is_file())
                    .ok_or_else(|| Error::input(format!("--init-from {}: no such file", file.display())))?;
                overrides.push(format!("model.init_from={}", toml::Value::String(file.display().to_string())));
            }
            commands::run(&config, out, &overrides, quiet, compute)
        }
        Command::Resume { run_dir, quiet, compute } => commands::resume(&run_dir, quiet, compute),
        Command::Fork { run_dir, at, out, config, overrides, quiet, compute } => {
            commands::fork(&run_dir, at, &out, config, &overrides, quiet, compute)
        }
        Command::Sweep {
            sweep,
            out,
            overrides,
            jobs,
            threads,
            shard,
            device,
            dry_run,
            status,
            slurm,
            array_parallel,
            array_tasks,
            partition,
            time,
            cpus_per_task,
            sbatch_arg,
            wait,
            no_aggregate,
            quiet,
        } => {
            let plan = ebb::sweep::Plan::load(&sweep, &overrides)?;
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&plan.name));
            if status {
                return commands::status(&out);
            }
            if slurm {
                if shard.is_some() || jobs.is_some() || threads.is_some() {
                    return Err(Error::input(
                        "--slurm: --shard, --jobs and --threads are set per array task; use --array-tasks and --cpus-per-task",
                    ));
                }
                let opts = ebb::sweep::slurm::SlurmOptions {
                    array_parallel,
                    array_tasks,
                    partition,
                    time,
                    cpus_per_task,
                    sbatch_args: sbatch_arg,
                    wait,
                    dry_run,
                    device: device.name(),
                    overrides,
                };
                return commands::submit_to_slurm(&plan, &sweep, &out, &opts);
            }
            let args =
                commands::LocalSweep { out, jobs, threads, shard, device: device.name(), dry_run, no_aggregate, quiet };
            commands::sweep(&plan, args)
        }
        Command::Status { sweep_dir } => commands::status(&sweep_dir),
        Command::Aggregate { sweep_dir } => commands::aggregate(&sweep_dir),
        Command::Report { sweep_dir, out, jobs, device, quiet } => {
            if jobs == Some(0) {
                return Err(Error::input("--jobs must be at least 1"));
            }
            let opts = ebb::sweep::study::ReportOptions { out, jobs, device: device.name(), quiet };
            for path in ebb::sweep::study::report(&sweep_dir, &opts)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Plot { run_dir, format } => commands::plot(
            &run_dir,
            if format == PlotFormat::Png { ebb::plot::Format::Png } else { ebb::plot::Format::Svg },
        ),
        Command::Analyze { run_dir } => commands::analyze(&run_dir),
        Command::Erasure { run_dir, task, at, only, control, relearn_steps, soft_prompt_on, compute } => {
            let control = control.map(|c| match c.as_str() {
                "auto" => ebb::erasure::Control::Auto,
                dir => ebb::erasure::Control::Run(PathBuf::from(dir)),
            });
            let request = ebb::erasure::Request {
                run_dir: &run_dir,
                task: &task,
                at,
                only: &only,
                control,
                relearn_steps,
                soft_prompt_on: &soft_prompt_on,
            };
            commands::erasure(request, compute)
        }
        Command::Eval { run_dir, step, logits, compute } => commands::eval(&run_dir, step, logits.as_deref(), compute),
        Command::Tasks { command: TasksCommand::Export { suite, split, n, seed, format: _, out } } => {
            commands::tasks_export(&suite, &split, n, seed, &out)
        }
        Command::Tasks { command: TasksCommand::List } => {
            print!("{}", commands::tasks_list());
            Ok(())
        }
        Command::Tasks { command: TasksCommand::Sample { suite, n, seed, task } } => {
            print!("{}", commands::tasks_sample(&suite, n, seed, task.as_deref())?);
            Ok(())
        }
        Command::Bench { config, steps, warmup, json, breakdown, suite, ceilings, dropout, compute } => {
            let args =
                commands::BenchArgs { configs: config, steps, warmup, json, breakdown, suite, ceilings, dropout };
            commands::bench(args, compute)
        }
    }
}
