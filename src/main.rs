//! The `ebb` command line: parses, calls the library, maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use ebb::backend::cpu::CpuBackend;
use ebb::bench::{self, BenchConfig};
use ebb::config::Config;
use ebb::{Error, Result};

#[derive(Parser)]
#[command(name = "ebb", version, about = "Train toy transformers and measure how capabilities decay once their task leaves training")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Device {
    /// The GPU when one works, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(clap::Args)]
struct Compute {
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where to compute.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
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
        #[command(flatten)]
        compute: Compute,
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
        #[command(flatten)]
        compute: Compute,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
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

/// Resolves `--device` to the CPU, the only backend built so far, and says so.
fn check_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda if !ebb::backend::cuda_driver_present() => Err(Error::input("--device cuda: no CUDA driver library (libcuda) on this machine; use --device cpu")),
        Device::Cuda => Err(Error::input("--device cuda: the CUDA backend is not built yet; use --device cpu")),
        Device::Auto => Ok(()),
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { config, out, overrides, quiet, compute } => {
            check_device(compute.device)?;
            let cfg = Config::load(&config, &overrides)?;
            let out = out.unwrap_or_else(|| cfg.default_out());
            let pool = thread_pool(compute.threads)?;
            let backend = CpuBackend::<f32>::new();
            if !quiet {
                eprintln!("device: cpu, {} threads; run directory {}", pool.current_num_threads(), out.display());
            }
            let outcome = pool.install(|| ebb::train::run::run(&backend, &cfg, &config, &out, quiet))?;
            let e = outcome.final_eval;
            println!("run {} finished in {:.1}s: {} parameters", cfg.name, outcome.seconds, outcome.n_params);
            println!("eval: loss {:.4} token_acc {:.4} exact_match {:.4} p_correct {:.4}", e.loss, e.token_acc, e.exact_match, e.p_correct);
            println!("wrote {}", outcome.dir.display());
            println!("params fingerprint: {}", outcome.fingerprint);
            Ok(())
        }
        Command::Bench { config, steps, warmup, json, breakdown, compute } => {
            check_device(compute.device)?;
            if steps == 0 {
                return Err(Error::input("--steps 0: need at least one timed step"));
            }
            let pool = thread_pool(compute.threads)?;
            let configs: Vec<BenchConfig> = if config.is_empty() { bench::CONFIGS.to_vec() } else { config.iter().filter_map(|n| BenchConfig::by_name(n)).collect() };
            let backend = CpuBackend::<f32>::new();
            for c in &configs {
                let r = pool.install(|| bench::run(&backend, c, warmup, steps));
                println!("{}", if json { r.json() } else { r.line() });
                if breakdown {
                    let rows = pool.install(|| bench::breakdown(CpuBackend::<f32>::new(), c, warmup, steps));
                    let total: f64 = rows.iter().map(|r| r.1).sum();
                    for (op, ms, calls) in rows {
                        if json {
                            println!("{}", serde_json::json!({"config": c.name, "op": op, "ms_per_step": ms, "calls_per_step": calls}));
                        } else {
                            println!("  {op:<22} {ms:8.2} ms/step {:5.1}%  {calls} calls", 100.0 * ms / total);
                        }
                    }
                }
            }
            Ok(())
        }
    }
}
