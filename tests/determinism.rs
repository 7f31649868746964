//! Same config + seed ⇒ the same bits: at 1 and 2 threads, and run twice.

mod common;

use common::*;

fn run_in(dir: &std::path::Path, cfg: &std::path::Path, threads: &str) -> (String, String) {
    let out = run_ok(ebb().arg("run").arg(cfg).arg("--out").arg(dir).args(["--threads", threads, "--quiet"]));
    (fingerprint(&out), std::fs::read_to_string(dir.join("metrics.csv")).unwrap())
}

#[test]
fn one_and_two_threads_and_a_repeat_give_identical_parameters_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("small.toml");
    // A finite training set, so its train-split evaluation is covered too.
    write(&cfg, &SMALL_CONFIG.replace("digits = 1\n", "digits = 1\ntrain_examples = 24\n"));
    let one = run_in(&tmp.path().join("t1"), &cfg, "1");
    let two = run_in(&tmp.path().join("t2"), &cfg, "2");
    let again = run_in(&tmp.path().join("t2-again"), &cfg, "2");
    assert_eq!(one.0, two.0, "fingerprint differs between 1 and 2 threads");
    assert_eq!(one.1, two.1, "metrics.csv differs between 1 and 2 threads");
    assert_eq!(two, again, "a repeated run differs");
    assert!(one.1.lines().count() > 20, "metrics.csv holds the logged rows");
    assert!(one.1.contains(",add1,train,exact_match,"), "the training-set sample is evaluated");
}

#[test]
fn a_different_seed_gives_different_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("small.toml");
    write(&cfg, SMALL_CONFIG);
    let a = run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(tmp.path().join("a")).arg("--quiet"));
    let b =
        run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(tmp.path().join("b")).args(["--quiet", "--set", "seed=6"]));
    assert_ne!(fingerprint(&a), fingerprint(&b));
}

#[test]
fn bench_sized_model_is_bitwise_identical_at_one_and_two_threads() {
    // The benchmark's base shapes exercise the multi-threaded matrix products
    // on large panels, where a thread-count-dependent split would show.
    use ebb::backend::cpu::CpuBackend;
    let cfg = ebb::bench::BenchConfig::by_name("small").unwrap();
    let fp = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let backend = CpuBackend::<f32>::new();
            let r = ebb::bench::run(&backend, &cfg, 0, 3).expect("the bench runs");
            r.fingerprint
        })
    };
    assert_eq!(fp(1), fp(2));
}

#[test]
fn the_fan_in_initialization_is_deterministic_and_differs_from_gpt2() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("small.toml");
    write(&cfg, SMALL_CONFIG);
    let run = |dir: &str, threads: &str, init: &str| {
        fingerprint(&run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(tmp.path().join(dir)).args([
            "--threads",
            threads,
            "--quiet",
            "--set",
            &format!("model.init={init}"),
        ])))
    };
    let (one, two) = (run("f1", "1", "fan_in"), run("f2", "2", "fan_in"));
    assert_eq!(one, two, "fan_in init differs between 1 and 2 threads");
    assert_ne!(one, run("g1", "1", "gpt2"));
}
