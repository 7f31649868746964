"""Train the JAX replica beside an ebb run and compare them step by step.

    python reference/compare.py RUN_DIR [--resync] [tolerances...]

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

Two modes, and why their tolerances differ. Both programs compute in
float32 but sum in different orders (ebb: fixed blocked orders and a
polynomial exp; XLA: its own), so from identical state a forward pass
agrees to ~1e-7 relative (measured on four small configs: losses within
1e-6 relative, gradient norms within 1e-5 relative (the worst at small
losses, where p − 1 for a confident token cancels), parameters after one
step within 1e-5 per tensor). Training amplifies that noise by an amount that depends on the
run: Adam divides each gradient by its own RMS, so rounding in a near-zero
gradient becomes a sizeable step; a ReLU or the clip threshold crossed by
one program and not the other changes a gradient discontinuously; a loss
spike multiplies everything. A calm run stays within ~1e-3 for hundreds of
steps; an unstable one (high lr, loss spikes, no LayerNorm) departs
visibly after ~100 steps with two correct programs.

  --resync (use with --weights-every 1): at every weights file the replica
      takes ebb's parameters (keeping its own Adam moments, which stay close
      as their inputs do), so every comparison is at most one step from
      identical state and nothing accumulates: a real difference in the
      arithmetic shows at the step where it acts. Strict defaults, about
      10x the largest measured noise: losses (train and held-out)
      |Δ| ≤ 1e-5·|ebb| + 1e-6; gradient norm |Δ| ≤ 1e-4·|ebb| + 1e-6;
      parameters ‖Δ‖/‖ebb‖ ≤ 1e-4 per tensor; at most one example (exact
      match) or token (token accuracy) whose argmax flips. Deliberate
      errors in the replica that these caught within a few steps:
      LayerNorm eps 1e-6, eps inside AdamW's square root, the warmup one
      step early, clipping off, weight decay on wpe, the loss divided by
      all positions instead of Σ mask. Near them: the erf GELU in place of
      the tanh one (caught just over the line in two 150–200-step runs,
      gradient norms 5e-5..1e-4 off, and clearly in an 800-step run whose
      losses moved 1e-3). Below them: weight decay applied after the Adam
      step ((p − u)·d instead of p·d − u, lr²·wd per step).
  free running (default): the replica trains on its own from step 0. The
      strict tolerances apply to step 0's held-out metrics and the weights
      at step 1 (if written); later ones are looser: losses 1e-2·|ebb| +
      1e-4, gradient norm 5e-2·|ebb| + 1e-3, parameters 5e-2, accuracies
      0.05. Passing them means the two trajectories stay together; failing
      them alone, with --resync passing, means the run is chaotic, not that
      either program is wrong.

The +atol on losses: a small per-token loss is a difference of two logits
of size ~10, so float32 gives it an absolute error near 1e-7 whatever its
size; a loss of 0.001 thus agrees only to ~1e-4 relative.

lr must agree to 1e-9 in both modes (the same schedule in f64). The key
third of each attn.qkv.b is reported apart and never gated: see
`compare_params`.
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

STRICT = {"loss_rtol": 1e-5, "loss_atol": 1e-6, "grad_rtol": 1e-4, "grad_atol": 1e-6, "param_rtol": 1e-4, "acc_atol": None}  # None: one flip
FREE = {"loss_rtol": 1e-2, "loss_atol": 1e-4, "grad_rtol": 5e-2, "grad_atol": 1e-3, "param_rtol": 5e-2, "acc_atol": 0.05}


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Tolerances default by mode (see the module docstring).")
    ap.add_argument("run", type=Path, help="ebb run directory (written with --weights-every N --dump-batches)")
    ap.add_argument("--resync", action="store_true", help="take ebb's parameters at every weights file (with --weights-every 1: one step at a time)")
    ap.add_argument("--loss-rtol", type=float, help="relative tolerance of training and held-out losses")
    ap.add_argument("--loss-atol", type=float, help="absolute tolerance added to --loss-rtol·|ebb|")
    ap.add_argument("--grad-rtol", type=float, help="relative tolerance of the gradient norm")
    ap.add_argument("--grad-atol", type=float, help="absolute tolerance added to --grad-rtol·|ebb|")
    ap.add_argument("--param-rtol", type=float, help="per-tensor ‖replica − ebb‖/‖ebb‖ at a weights file")
    ap.add_argument("--acc-atol", type=float, help="exact match and token accuracy, absolute (strict default: one example or token)")
    ap.add_argument("--steps", type=int, help="stop after this many steps (default: every dumped batch, up to train.steps)")
    ap.add_argument("--json", type=Path, help="where to write the comparison (default RUN_DIR/replica-compare.json)")
    ap.add_argument("--top", type=int, default=10, help="how many of the largest differences to list")
    args = ap.parse_args(argv)
    run = args.run
    mode = STRICT if args.resync else FREE
    tol = {k: (getattr(args, k) if getattr(args, k) is not None else mode[k]) for k in mode}
    strict = {k: (getattr(args, k) if args.resync and getattr(args, k) is not None else STRICT[k]) for k in STRICT}

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
    print(f"mode: {'resync at every weights file' if args.resync else 'free running'}; weights files at {len(weight_steps)} steps; tolerances {tol}")

    rep = replica.Replica(cfg, replica.load_weights(run / "weights" / "step-0.safetensors", s))
    train_cmp, eval_cmp, param_cmp, failures = [], [], [], []

    def check(kind: str, step: int, what: str, diff: float, limit: float):
        if not diff <= limit:  # also catches NaN
            failures.append(f"{kind} at step {step} ({what}): {diff:.3g} > {limit:.3g}")

    def limit(ebb: float, t: dict, what: str) -> float:
        return t[f"{what}_rtol"] * abs(ebb) + t[f"{what}_atol"]

    def compare_eval(step: int):
        t = strict if step == 0 else tol
        for task, (tok, tgt, msk) in eval_sets.items():
            ebb = eval_rows.get(step, {}).get(task)
            if ebb is None:
                continue
            mine = rep.evaluate(tok, tgt, msk)
            row = {"step": step, "task": task, **{m: {"ebb": ebb.get(m), "replica": v} for m, v in mine.items()}}
            eval_cmp.append(row)
            check("held-out loss", step, task, abs(mine["loss"] - ebb["loss"]), limit(ebb["loss"], t, "loss"))
            units = {"exact_match": tok.shape[0], "token_acc": int((np.asarray(msk) != 0).sum())}
            for metric, n in units.items():
                if metric in ebb:
                    check(metric, step, task, abs(mine[metric] - ebb[metric]), t["acc_atol"] if t["acc_atol"] is not None else 1.01 / n)

    def compare_params(step: int):
        theirs = replica.load_weights(run / "weights" / f"step-{step}.safetensors", s)
        t = strict if step == 1 else tol
        for name, _, _ in replica.layout(s):
            a, b = np.asarray(rep.params[name], np.float64), np.asarray(theirs[name], np.float64)
            parts = [(name, slice(None), True)]
            if name.endswith(".attn.qkv.b"):
                # The key bias adds q·b_k to every score of a row, which the
                # softmax cancels: its true gradient is 0, what each program
                # computes is rounding noise, and Adam turns that noise into
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
                    check("parameters", step, label, r, t["param_rtol"])
        if args.resync:
            rep.params = theirs

    compare_eval(0)
    for step in range(steps):
        stats = rep.step(step, *batch(run / "batches" / f"step-{step}.safetensors"))
        done = step + 1
        ebb = train_rows.get(done)
        if ebb is not None and "loss" in ebb:
            train_cmp.append({"step": done, **{k: {"ebb": ebb.get(k), "replica": v} for k, v in stats.items()}})
            check("training loss", done, "all", abs(stats["loss"] - ebb["loss"]), limit(ebb["loss"], tol, "loss"))
            if "grad_norm" in ebb:
                check("gradient norm", done, "all", abs(stats["grad_norm"] - ebb["grad_norm"]), limit(ebb["grad_norm"], tol, "grad"))
            if "lr" in ebb:
                check("lr", done, "schedule", rel(stats["lr"], ebb["lr"]), 1e-9)
        if done in eval_rows:
            compare_eval(done)
        if done in weight_steps:
            compare_params(done)

    report(args, run, steps, weight_steps, train_cmp, eval_cmp, param_cmp, failures, tol)
    return 1 if failures else 0


def thin(items: list, most: int = 20) -> list:
    """At most `most` of `items`, evenly spread, the first and last kept."""
    if len(items) <= most:
        return items
    return [items[i] for i in sorted({round(k * (len(items) - 1) / (most - 1)) for k in range(most)})]


def report(args, run, steps, weight_steps, train_cmp, eval_cmp, param_cmp, failures, tol):
    print("\ntraining (metrics.csv step S = loss of the step that made S steps done)")
    print(f"{'step':>6} {'ebb loss':>12} {'replica':>12} {'rel diff':>9} {'grad norm rel':>13} {'lr rel':>8}")
    for r in thin(train_cmp, 40):
        gn = rel(r["grad_norm"]["replica"], r["grad_norm"]["ebb"]) if r["grad_norm"]["ebb"] is not None else float("nan")
        lr = rel(r["lr"]["replica"], r["lr"]["ebb"]) if r["lr"]["ebb"] is not None else float("nan")
        print(f"{r['step']:>6} {r['loss']['ebb']:>12.6f} {r['loss']['replica']:>12.6f} {rel(r['loss']['replica'], r['loss']['ebb']):>9.2e} {gn:>13.2e} {lr:>8.1e}")
    if eval_cmp:
        print("\nheld-out (per task)")
        print(f"{'step':>6} {'task':<12} {'ebb loss':>10} {'replica':>10} {'rel diff':>9} {'ebb EM':>7} {'rep EM':>7} {'ebb acc':>8} {'rep acc':>8}")
        shown = set(thin(sorted({r["step"] for r in eval_cmp}), max(2, 40 // max(1, len({r["task"] for r in eval_cmp})))))
        for r in (r for r in eval_cmp if r["step"] in shown):
            l, em, acc = r["loss"], r["exact_match"], r["token_acc"]
            print(f"{r['step']:>6} {r['task']:<12} {l['ebb']:>10.5f} {l['replica']:>10.5f} {rel(l['replica'], l['ebb']):>9.2e} {em['ebb']:>7.4f} {em['replica']:>7.4f} {acc['ebb']:>8.4f} {acc['replica']:>8.4f}")
    if param_cmp:
        print("\nparameters (per weights file: the tensor with the largest relative L2 difference)")
        print(f"{'step':>6} {'tensor':<22} {'rel L2':>9} {'max |diff|':>11}")
        for step in thin(sorted({r["step"] for r in param_cmp})):
            worst = max((r for r in param_cmp if r["step"] == step and r["gated"]), key=lambda r: r["rel_l2"])
            print(f"{step:>6} {worst['tensor']:<22} {worst['rel_l2']:>9.2e} {worst['max_abs']:>11.2e}")
        kb = [r for r in param_cmp if not r["gated"]]
        if kb:
            print(f"  (key biases, which cannot change the function, not held to a tolerance: largest rel L2 "
                  f"{max(r['rel_l2'] for r in kb):.2e}, max |diff| {max(r['max_abs'] for r in kb):.2e})")

    diffs = [(rel(r["loss"]["replica"], r["loss"]["ebb"]), f"training loss, step {r['step']}") for r in train_cmp]
    diffs += [(rel(r["loss"]["replica"], r["loss"]["ebb"]), f"held-out loss, step {r['step']}, {r['task']}") for r in eval_cmp]
    diffs += [(r["rel_l2"], f"parameters, step {r['step']}, {r['tensor']}") for r in param_cmp if r["gated"]]
    print("\nlargest relative differences")
    for d, what in sorted(diffs, key=lambda x: -x[0] if not math.isnan(x[0]) else -math.inf)[: args.top]:
        print(f"  {d:9.2e}  {what}")

    final = max(weight_steps & set(range(steps + 1)), default=None)
    top = lambda values: max(values, default=None)  # noqa: E731
    summary = {
        "steps": steps,
        "resync": args.resync,
        "max_train_loss_rel": top(rel(r["loss"]["replica"], r["loss"]["ebb"]) for r in train_cmp),
        "max_grad_norm_rel": top(rel(r["grad_norm"]["replica"], r["grad_norm"]["ebb"]) for r in train_cmp if r["grad_norm"]["ebb"] is not None),
        "max_eval_loss_rel": top(rel(r["loss"]["replica"], r["loss"]["ebb"]) for r in eval_cmp),
        "max_exact_match_abs": top(abs(r["exact_match"]["replica"] - r["exact_match"]["ebb"]) for r in eval_cmp if r["exact_match"]["ebb"] is not None),
        "max_param_rel_l2": top(r["rel_l2"] for r in param_cmp if r["gated"]),
        "final_weights_step": final,
        "final_param_rel_l2_max": top(r["rel_l2"] for r in param_cmp if r["step"] == final and r["gated"]),
        "final_key_bias_rel_l2_max": top(r["rel_l2"] for r in param_cmp if r["step"] == final and not r["gated"]),
        "tolerances": tol,
        "failures": failures,
    }
    out = args.json or run / "replica-compare.json"
    out.write_text(json.dumps({"summary": summary, "train": train_cmp, "eval": eval_cmp, "params": param_cmp}, indent=1) + "\n")
    num = lambda key, spec: "-" if summary[key] is None else format(summary[key], spec)  # noqa: E731
    print(f"\nsummary: train loss rel ≤ {num('max_train_loss_rel', '.2e')}, grad norm rel ≤ {num('max_grad_norm_rel', '.2e')}, "
          f"held-out loss rel ≤ {num('max_eval_loss_rel', '.2e')}, exact match |Δ| ≤ {num('max_exact_match_abs', '.3f')}, "
          f"parameters rel L2 ≤ {num('max_param_rel_l2', '.2e')} (final, step {final}: {num('final_param_rel_l2_max', '.2e')})")
    print(f"wrote {out}")
    if failures:
        print(f"\nFAIL: {len(failures)} differences over tolerance")
        for f in failures[:20]:
            print(f"  {f}")
    else:
        print("PASS: every difference within tolerance")


if __name__ == "__main__":
    sys.exit(main())
