"""Train the JAX replica beside an ebb run and compare them step by step.

    python reference/compare.py RUN_DIR [--loss-rtol R] [--param-rtol R] ...

RUN_DIR is an `ebb run` directory written with `--weights-every N
--dump-batches`: config.toml, model.json, metrics.csv, weights/step-S,
batches/step-S and eval/TASK (all .safetensors). The replica starts from
weights/step-0, takes one step per dumped batch with ebb's schedule, and
compares

  - the training loss, lr and gradient norm at every step ebb logged them
    (a metrics.csv row at step S is the loss of the forward pass of 0-based
    step S−1, before that step's update);
  - held-out loss, token accuracy, exact match and p_correct of every task
    at every step ebb evaluated (eval/TASK holds the examples);
  - every parameter tensor at every weights/step-S (max |Δ| and ‖Δ‖/‖ebb‖).

It prints tables and the largest differences, writes the whole comparison
as JSON (default RUN_DIR/replica-compare.json), and exits 1 when a
difference exceeds its tolerance (2 on unusable input).

The tolerances. Both programs compute in float32 but sum in different
orders (ebb: fixed blocked orders and a polynomial exp; XLA: its own), so
one forward pass agrees to ~1e-6 relative. Training then amplifies such
rounding noise: Adam divides each gradient by its own running RMS, so
parameters whose gradients are tiny compared with eps-free noise move by a
full lr step on a rounding error, and the differences grow with the step
count, slowly, without changing the run's course. A bug instead shows at
once (step 0's held-out loss, the first weights file) or as a qualitative
departure. Hence two levels:

  --start-rtol (1e-4): the held-out losses at step 0 (one forward pass from
      identical weights) and the parameters at the first weights file after
      step 0 (with --weights-every 1: one update from identical state);
  --loss-rtol (5e-3), --param-rtol (5e-2): every later training and
      held-out loss, and every tensor's relative L2 difference;
  --acc-atol (0.05): exact match and token accuracy, shares that move in
      steps of 1/examples when one near-tied argmax flips;
  lr must agree to 1e-9 (the same schedule in f64).

With --resync the replica takes ebb's parameters at every weights file
(keeping its own Adam moments), so differences cannot accumulate across
files: use it with a small --weights-every to localise a disagreement.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replica  # noqa: E402


def rel(a: float, b: float) -> float:
    """|a − b| relative to |b| (ebb's value), absolute when b is 0."""
    return abs(a - b) / abs(b) if b != 0 else abs(a - b)


def read_metrics(path: Path):
    """(train rows {step: {metric: value}}, eval rows {step: {task: {metric: value}}})."""
    train, evals = {}, {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step, value = int(row["step"]), float(row["value"])
            if row["split"] == "train" and row["task"] == "all":
                train.setdefault(step, {})[row["metric"]] = value
            elif row["split"] == "eval":
                evals.setdefault(step, {}).setdefault(row["task"], {})[row["metric"]] = value
    return train, evals


def steps_in(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("-", 1)[1]) for p in folder.glob("step-*.safetensors"))


def batch(path: Path):
    t = replica.read_safetensors(path)
    return jnp.asarray(t["tokens"]), jnp.asarray(t["targets"]), jnp.asarray(t["mask"])


def vocab_of(run: Path) -> int:
    model = run / "model.json"
    if model.exists():
        return int(json.loads(model.read_text())["vocab"])
    return replica.read_safetensors(run / "weights" / "step-0.safetensors")["wte"].shape[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="ebb run directory (written with --weights-every N --dump-batches)")
    ap.add_argument("--start-rtol", type=float, default=1e-4, help="step-0 held-out losses and the first weights file after step 0 (default 1e-4)")
    ap.add_argument("--loss-rtol", type=float, default=5e-3, help="every other training and held-out loss (default 5e-3)")
    ap.add_argument("--param-rtol", type=float, default=5e-2, help="relative L2 difference of any tensor at any later weights file (default 5e-2)")
    ap.add_argument("--acc-atol", type=float, default=0.05, help="exact match and token accuracy, absolute (default 0.05)")
    ap.add_argument("--steps", type=int, help="stop after this many steps (default: every dumped batch, up to train.steps)")
    ap.add_argument("--resync", action="store_true", help="take ebb's parameters at every weights file")
    ap.add_argument("--json", type=Path, help="where to write the comparison (default RUN_DIR/replica-compare.json)")
    ap.add_argument("--top", type=int, default=10, help="how many of the largest differences to list")
    args = ap.parse_args(argv)
    run = args.run

    for need in ["config.toml", "metrics.csv", "weights/step-0.safetensors"]:
        if not (run / need).exists():
            print(f"{run}: no {need} (run ebb with --weights-every N --dump-batches)", file=sys.stderr)
            return 2
    cfg = replica.load_config(run / "config.toml", vocab_of(run))
    train_rows, eval_rows = read_metrics(run / "metrics.csv")
    weight_steps = set(steps_in(run / "weights"))
    batch_steps = steps_in(run / "batches")
    steps = cfg.train.steps if args.steps is None else min(args.steps, cfg.train.steps)
    available = next((i for i, s in enumerate(batch_steps) if s != i), len(batch_steps))
    if available < steps:
        print(f"{run}: batches for steps 0..{available - 1} only, train.steps = {steps}; comparing {available} steps", file=sys.stderr)
        steps = available
    if steps == 0:
        print(f"{run}: no batches (run ebb with --dump-batches)", file=sys.stderr)
        return 2
    eval_sets = {p.stem: batch(p) for p in sorted((run / "eval").glob("*.safetensors"))}
    if not eval_sets:
        print(f"{run}: no eval/*.safetensors; held-out metrics are not compared", file=sys.stderr)

    s = cfg.shape
    n_params = sum(math.prod(shape) for _, shape, _ in replica.layout(s))
    model_json = run / "model.json"
    if model_json.exists() and json.loads(model_json.read_text())["params"] != n_params:
        print(f"{run}: model.json has {json.loads(model_json.read_text())['params']} parameters, the replica's layout {n_params}", file=sys.stderr)
        return 2
    print(f"{run}: V={s.vocab} T={s.n_ctx} C={s.d_model} L={s.n_layers} H={s.n_heads} F={s.d_mlp} {s.activation} norm={s.norm} "
          f"tied={s.tied_embeddings} dropout={s.dropout}; {n_params} params; {steps} steps, lr {cfg.train.lr} {cfg.train.schedule}, "
          f"clip {cfg.train.grad_clip}, wd {cfg.train.weight_decay} on {','.join(cfg.train.decay)}, loss per {cfg.train.loss_per}")

    rep = replica.Replica(cfg, replica.load_weights(run / "weights" / "step-0.safetensors", s))
    train_cmp, eval_cmp, param_cmp, failures = [], [], [], []

    def check(kind: str, step: int, what: str, diff: float, tol: float):
        if not diff <= tol:  # also catches NaN
            failures.append(f"{kind} at step {step} ({what}): {diff:.3g} > {tol:g}")

    def compare_eval(step: int):
        for task, (tok, tgt, msk) in eval_sets.items():
            ebb = eval_rows.get(step, {}).get(task)
            if ebb is None:
                continue
            mine = rep.evaluate(tok, tgt, msk)
            row = {"step": step, "task": task}
            for metric, value in mine.items():
                row[metric] = {"ebb": ebb.get(metric), "replica": value}
            eval_cmp.append(row)
            d = rel(mine["loss"], ebb["loss"])
            check("held-out loss", step, task, d, args.start_rtol if step == 0 else args.loss_rtol)
            for metric in ("exact_match", "token_acc"):
                if metric in ebb:
                    check(metric, step, task, abs(mine[metric] - ebb[metric]), args.acc_atol)

    def compare_params(step: int):
        theirs = replica.load_weights(run / "weights" / f"step-{step}.safetensors", s)
        for name, _, _ in replica.layout(s):
            a, b = np.asarray(rep.params[name], np.float64), np.asarray(theirs[name], np.float64)
            parts = [(name, slice(None), True)]
            if name.endswith(".attn.qkv.b"):
                # The key bias adds q·b_k to every score of a row, which the
                # softmax cancels: its true gradient is 0 and what each
                # program computes is rounding noise, which Adam turns into
                # steps. It cannot change the function, so it is reported
                # apart and not held to a tolerance.
                C = s.d_model
                parts = [(name + "[q,v]", np.r_[0:C, 2 * C : 3 * C], True), (name + "[k]", slice(C, 2 * C), False)]
            for label, idx, gated in parts:
                x, y = a[idx], b[idx]
                norm, diff = np.linalg.norm(y), np.linalg.norm(x - y)
                r = float(diff / norm) if norm > 0 else float(diff)
                param_cmp.append({"step": step, "tensor": label, "max_abs": float(np.max(np.abs(x - y))), "rel_l2": r, "gated": gated})
                if gated:
                    check("parameters", step, label, r, args.start_rtol if step == 1 else args.param_rtol)
        if args.resync:
            rep.params = theirs

    compare_eval(0)
    for step in range(steps):
        stats = rep.step(step, *batch(run / "batches" / f"step-{step}.safetensors"))
        done = step + 1
        ebb = train_rows.get(done)
        if ebb is not None and "loss" in ebb:
            row = {"step": done, **{k: {"ebb": ebb.get(k), "replica": v} for k, v in stats.items()}}
            train_cmp.append(row)
            check("training loss", done, "all", rel(stats["loss"], ebb["loss"]), args.loss_rtol)
            if "lr" in ebb:
                check("lr", done, "schedule", rel(stats["lr"], ebb["lr"]), 1e-9)
        if done in eval_rows:
            compare_eval(done)
        if done in weight_steps:
            compare_params(done)

    # ---- report ----
    print("\ntraining (metrics.csv step S = loss of the step that made S steps done)")
    print(f"{'step':>6} {'ebb loss':>12} {'replica':>12} {'rel diff':>9} {'grad norm rel':>13} {'lr rel':>8}")
    for r in train_cmp:
        gn = rel(r["grad_norm"]["replica"], r["grad_norm"]["ebb"]) if r["grad_norm"]["ebb"] is not None else float("nan")
        print(f"{r['step']:>6} {r['loss']['ebb']:>12.6f} {r['loss']['replica']:>12.6f} {rel(r['loss']['replica'], r['loss']['ebb']):>9.2e} {gn:>13.2e} {rel(r['lr']['replica'], r['lr']['ebb'] or 0.0):>8.1e}")
    if eval_cmp:
        print("\nheld-out (per task)")
        print(f"{'step':>6} {'task':<12} {'ebb loss':>10} {'replica':>10} {'rel diff':>9} {'ebb EM':>7} {'rep EM':>7} {'ebb acc':>8} {'rep acc':>8}")
        for r in eval_cmp:
            l, em, acc = r["loss"], r["exact_match"], r["token_acc"]
            print(f"{r['step']:>6} {r['task']:<12} {l['ebb']:>10.5f} {l['replica']:>10.5f} {rel(l['replica'], l['ebb']):>9.2e} {em['ebb']:>7.4f} {em['replica']:>7.4f} {acc['ebb']:>8.4f} {acc['replica']:>8.4f}")
    if param_cmp:
        print("\nparameters (per weights file: the tensor with the largest relative L2 difference)")
        print(f"{'step':>6} {'tensor':<22} {'rel L2':>9} {'max |diff|':>11}")
        wsteps = sorted({r["step"] for r in param_cmp})
        shown = wsteps if len(wsteps) <= 20 else sorted({wsteps[round(i * (len(wsteps) - 1) / 19)] for i in range(20)})
        for step in shown:
            worst = max((r for r in param_cmp if r["step"] == step and r["gated"]), key=lambda r: r["rel_l2"])
            print(f"{step:>6} {worst['tensor']:<22} {worst['rel_l2']:>9.2e} {worst['max_abs']:>11.2e}")
        kb = [r for r in param_cmp if not r["gated"]]
        if kb:
            worst = max(kb, key=lambda r: r["rel_l2"])
            print(f"  (key biases, which cannot change the function, not held to a tolerance: largest rel L2 {worst['rel_l2']:.2e}, max |diff| {max(r['max_abs'] for r in kb):.2e})")

    diffs = [(rel(r["loss"]["replica"], r["loss"]["ebb"]), f"training loss, step {r['step']}") for r in train_cmp]
    diffs += [(rel(r["loss"]["replica"], r["loss"]["ebb"]), f"held-out loss, step {r['step']}, {r['task']}") for r in eval_cmp]
    diffs += [(r["rel_l2"], f"parameters, step {r['step']}, {r['tensor']}") for r in param_cmp if r["gated"]]
    print(f"\nlargest relative differences")
    for d, what in sorted(diffs, key=lambda x: -x[0] if not math.isnan(x[0]) else -math.inf)[: args.top]:
        print(f"  {d:9.2e}  {what}")

    final = max(weight_steps & set(range(steps + 1)), default=None)
    summary = {
        "steps": steps,
        "max_train_loss_rel": max((rel(r["loss"]["replica"], r["loss"]["ebb"]) for r in train_cmp), default=None),
        "max_eval_loss_rel": max((rel(r["loss"]["replica"], r["loss"]["ebb"]) for r in eval_cmp), default=None),
        "max_exact_match_abs": max((abs(r["exact_match"]["replica"] - r["exact_match"]["ebb"]) for r in eval_cmp if r["exact_match"]["ebb"] is not None), default=None),
        "final_weights_step": final,
        "final_param_rel_l2_max": max((r["rel_l2"] for r in param_cmp if r["step"] == final and r["gated"]), default=None),
        "final_key_bias_rel_l2_max": max((r["rel_l2"] for r in param_cmp if r["step"] == final and not r["gated"]), default=None),
        "tolerances": {"start_rtol": args.start_rtol, "loss_rtol": args.loss_rtol, "param_rtol": args.param_rtol, "acc_atol": args.acc_atol},
        "resync": args.resync,
        "failures": failures,
    }
    out = args.json or run / "replica-compare.json"
    out.write_text(json.dumps({"summary": summary, "train": train_cmp, "eval": eval_cmp, "params": param_cmp}, indent=1) + "\n")
    num = lambda key, spec: "-" if summary[key] is None else format(summary[key], spec)
    print(f"\nsummary: train loss rel ≤ {num('max_train_loss_rel', '.2e')}, held-out loss rel ≤ {num('max_eval_loss_rel', '.2e')}, "
          f"exact match |Δ| ≤ {num('max_exact_match_abs', '.3f')}, final parameters (step {final}) rel L2 ≤ {num('final_param_rel_l2_max', '.2e')}")
    print(f"wrote {out}")
    if failures:
        print(f"\nFAIL: {len(failures)} differences over tolerance")
        for f in failures[:20]:
            print(f"  {f}")
        return 1
    print("PASS: every difference within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
