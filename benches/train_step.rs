//! `cargo bench`: the same training-step benchmark as `ebb bench`, on every
//! core, for the tiny, small and base configs.

use ebb::backend::cpu::CpuBackend;
use ebb::bench;

fn main() {
    let backend = CpuBackend::<f32>::new();
    for cfg in &bench::CONFIGS {
        println!("{}", bench::run(&backend, cfg, 5, 30).expect("the bench runs").line());
    }
}
