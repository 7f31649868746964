"""The Python package against ebb itself (run by tests/python.rs):

    python check_package.py --run DIR... --sweep DIR --export DIR

Each run directory holds `logits.safetensors` from `ebb eval --logits`; the
export folder is `ebb tasks export RUN/config.toml --split eval` of the
first run. Prints the largest logit differences; exits non-zero on a
failure."""

import argparse
import json
import sys

import numpy as np
from safetensors.numpy import load_file

import ebb

# The test's models have logits of a few units; at the quickstart's (up to
# 20) ebb's own float32 rounding reaches 3e-5, 1.5e-6 of the largest.
TOLERANCE = 1e-5


def check_run(path):
    run = ebb.load_run(path)
    assert {"step", "task", "split", "metric", "value"} <= set(run.metrics.columns), run.metrics.columns
    assert len(run.metrics) > 0 and run.summary["finished"], path
    assert list(run.tasks.task) == [t["id"] for t in run.config["data"]["tasks"]], run.tasks
    exact = run.series(run.tasks.task[0])
    assert exact.index.is_monotonic_increasing and ((exact >= 0) & (exact <= 1)).all(), exact
    ref = load_file(f"{path}/logits.safetensors")
    weights = run.weights()
    assert set(weights) >= {"wte", "wpe"}, sorted(weights)
    worst = (0.0, 0.0)
    for name in ref:
        if not name.endswith(".tokens"):
            continue
        want = ref[name.removesuffix(".tokens") + ".logits"]
        for dtype in (np.float64, np.float32):
            got = ebb.forward(weights, run.config, ref[name], dtype=dtype)
            assert got.shape == want.shape and got.dtype == dtype, (got.shape, want.shape)
            diff = float(np.abs(got - want).max())
            scale = float(np.abs(want).max())
            assert diff <= TOLERANCE, f"{path} {name} {dtype.__name__}: |Δ| {diff} at logits up to {scale}"
            if dtype is np.float64:
                worst = max(worst, (diff, diff / scale))
    m = run.config["model"]
    print(
        f"{path}: {m['activation']}, norm {m['norm']}, tied {m['tied_embeddings']}: "
        f"largest |Δ logit| {worst[0]:.3g} ({worst[1]:.3g} of the largest logit)"
    )
    return run


def check_sweep(path):
    sweep = ebb.load_sweep(path)
    runs = sweep.runs()
    assert len(runs) == len(sweep.manifest) > 0, (len(runs), sweep.manifest)
    assert set(sweep.runs_table["id"]) == set(sweep.manifest["id"]), sweep.runs_table
    assert (sweep.runs_table["status"] == "finished").all(), sweep.runs_table
    assert sweep.scaling["excluded_runs"] == [] and len(sweep.scaling["conditions"]) > 0, sweep.scaling
    print(f"{path}: {len(runs)} runs, sweep.csv {sweep.runs_table.shape}, drops.csv {sweep.drops.shape}")


def check_export(path, run):
    vocab = json.load(open(f"{path}/vocab.json"))
    tokens = vocab["tokens"]
    lines = [json.loads(l) for l in open(f"{path}/examples.jsonl")]
    ref = load_file(f"{run.dir}/logits.safetensors")
    checked = 0
    for task in run.tasks.task:
        examples = [e for e in lines if e["task"] == task]
        assert len(examples) == int(run.tasks.set_index("task").eval_examples[task]), (task, len(examples))
        rows = ref[f"{task}.tokens"]
        for e, row in zip(examples, rows):
            ids = e["tokens"]
            # ebb's input row: BOS, the example, then padding.
            want = [vocab["bos"]] + ids + [vocab["pad"]] * (len(row) - 1 - len(ids))
            assert list(row) == want, (task, list(row), want)
            assert " ".join(tokens[i] for i in ids[: e["prompt_len"]]) == e["prompt"], e
            assert " ".join(tokens[i] for i in ids[e["prompt_len"] :]) == e["answer"], e
            checked += 1
    print(f"{path}: {len(lines)} examples, {checked} matched ebb's evaluation rows token for token")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--run", nargs="+", required=True)
    p.add_argument("--sweep", required=True)
    p.add_argument("--export", required=True)
    a = p.parse_args()
    runs = [check_run(r) for r in a.run]
    check_sweep(a.sweep)
    check_export(a.export, runs[0])
    print("PASS")


if __name__ == "__main__":
    sys.exit(main())
