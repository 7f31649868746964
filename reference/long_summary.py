"""Summarise one long check: a resync and a free-running comparison of one ebb run.

    python reference/long_summary.py LABEL RUN_DIR RESYNC_JSON [FREE_JSON] --every N [--gate G] [--json OUT]

RESYNC_JSON and FREE_JSON are what `compare.py --resync` and `compare.py`
wrote for RUN_DIR, whose weights files are every N steps. Prints the
resync, free-running and gradient-clipping lines and exits 1 when the gate
fails. --gate: `all` (default) fails on any resync difference over
compare.py's tolerances or, with N > 1, a step right after a resync off by
more than the strict ones; `one-pass` on the latter only (for runs where
N free steps cannot be held to any useful tolerance, see long_checks.sh);
`none` reports only.

Why the second test: with N > 1 the replica runs N steps on its own between
syncs, so compare.py is run with tolerances for N free steps (see
long_checks.sh). But the training loss and gradient norm logged at step S+1
come from the forward and backward pass of weights/step-S, which both
programs hold bit for bit after a resync: those are one pass from identical
parameters and are held here to the strict tolerances (losses 1e-5·|ebb| +
1e-6, gradient norm 1e-4·|ebb| + 1e-6). An error in the loss or its
gradient shows there at once; an error in the update shows in the
parameters N steps later.

Free running: the first step where any compared value is over the free
tolerances (from FREE_JSON's failures), and the largest training-loss
difference in each stretch of steps, which tells steady growth (rounding
noise amplified by a chaotic run: roughly ×10 per fixed number of steps)
from a jump (an error that acts at one step).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import STRICT, rel  # noqa: E402


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def step_of(failure: str) -> int:
    m = re.search(r" at step (\d+) ", failure)
    return int(m.group(1)) if m else -1


def maxima(cmp: dict) -> dict:
    s = cmp["summary"]
    params = cmp["params"]
    return {
        "train_loss_rel": s["max_train_loss_rel"],
        # relative differences of losses within float32 rounding of 0 mean nothing
        "train_loss_rel_above_1e-3": max((rel(r["loss"]["replica"], r["loss"]["ebb"]) for r in cmp["train"] if r["loss"]["ebb"] >= 1e-3), default=None),
        "grad_norm_rel": s["max_grad_norm_rel"],
        "eval_loss_rel": s["max_eval_loss_rel"],
        "exact_match_abs": s["max_exact_match_abs"],
        "param_rel_max": s["max_param_rel_l2"],
        "param_rel_max_at": max((r for r in params if r["gated"]), key=lambda r: r["rel_l2"], default={"step": None})["step"],
        "param_rel_final": s["final_param_rel_l2_max"],
        "final_step": s["final_weights_step"],
        "failures": len(s["failures"]),
        "first_failure": min((step_of(f) for f in s["failures"]), default=None),
        "first_failure_what": min(s["failures"], key=step_of, default=None),
    }


def after_sync_check(cmp: dict) -> tuple[list[str], dict]:
    """Strict check of the steps one pass after a resync (metrics step S+1, S a sync step).
    Returns what is over and the largest relative and absolute differences."""
    synced = {r["step"] for r in cmp["params"]} | {0}
    bad, worst = [], {"loss_rel": 0.0, "loss_abs": 0.0, "grad_rel": 0.0, "grad_abs": 0.0}
    for r in cmp["train"]:
        if r["step"] - 1 not in synced:
            continue
        for what, key, rtol, atol in [("training loss", "loss", STRICT["loss_rtol"], STRICT["loss_atol"]),
                                      ("gradient norm", "grad_norm", STRICT["grad_rtol"], STRICT["grad_atol"])]:
            e, m = r[key]["ebb"], r[key]["replica"]
            if e is None:
                continue
            short = key.split("_")[0]
            worst[f"{short}_rel"] = max(worst[f"{short}_rel"], rel(m, e))
            worst[f"{short}_abs"] = max(worst[f"{short}_abs"], abs(m - e))
            if not abs(m - e) <= rtol * abs(e) + atol:
                bad.append(f"{what} at step {r['step']} (one pass after the resync at {r['step'] - 1}): {rel(m, e):.3g} relative")
    return bad, worst


def growth(cmp: dict) -> list[tuple[int, float]]:
    """Largest training-loss relative difference in (0, 10], (10, 30], (30, 100], … up to the last step."""
    rows = cmp["train"]
    if not rows:
        return []
    last = rows[-1]["step"]
    edges, k = [0], 10
    while k < last:
        edges.append(k)
        k = k * 3 if str(k)[0] == "1" else k * 10 // 3
    edges.append(last)
    out = []
    for lo, hi in zip(edges, edges[1:]):
        values = [rel(r["loss"]["replica"], r["loss"]["ebb"]) for r in rows if lo < r["step"] <= hi]
        if values:
            out.append((hi, max(values)))
    return out


def clipping(run: Path) -> tuple[int, int, float, float]:
    """(steps clipped, steps logged, clip, largest gradient norm) from ebb's metrics.csv."""
    clip = 0.0
    for line in (run / "config.toml").read_text().splitlines():
        if line.startswith("grad_clip"):
            clip = float(line.split("=", 1)[1])
    norms = []
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "train" and row["metric"] == "grad_norm":
                norms.append(float(row["value"]))
    return (sum(n > clip for n in norms) if clip > 0 else 0), len(norms), clip, max(norms, default=float("nan"))


def fmt(x, spec=".1e") -> str:
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("label")
    ap.add_argument("run", type=Path)
    ap.add_argument("resync", type=Path)
    ap.add_argument("free", type=Path, nargs="?")
    ap.add_argument("--every", type=int, required=True, help="the run's --weights-every")
    ap.add_argument("--gate", choices=["all", "one-pass", "none"], default="all", help="what makes the exit status 1")
    ap.add_argument("--json", type=Path, help="write the summary here too")
    args = ap.parse_args(argv)

    rs = load(args.resync)
    r = maxima(rs)
    bad, after = after_sync_check(rs)
    passed = {"all": r["failures"] == 0 and not bad, "one-pass": not bad, "none": True}[args.gate]
    tag = f"[{args.label}]"
    sync = "one step between syncs" if args.every == 1 else f"{args.every} free steps between syncs"
    verdict = {"all": "PASS" if passed else "FAIL", "one-pass": f"{'PASS' if passed else 'FAIL'} (gated on the first pass after each sync)",
               "none": f"{'within' if r['failures'] == 0 else 'over'} tolerance (reported, not gated)"}[args.gate]
    print(f"{tag} resync ({sync}): {verdict}; train loss rel ≤ {fmt(r['train_loss_rel'])} (≥ 1e-3: {fmt(r['train_loss_rel_above_1e-3'])}), "
          f"grad norm rel ≤ {fmt(r['grad_norm_rel'])}, held-out loss rel ≤ {fmt(r['eval_loss_rel'])}, "
          f"exact match |Δ| ≤ {fmt(r['exact_match_abs'], '.3f')}, params rel L2 ≤ {fmt(r['param_rel_max'])} "
          f"(at step {r['param_rel_max_at']}; final, step {r['final_step']}: {fmt(r['param_rel_final'])})")
    if args.every > 1:
        print(f"{tag}   one pass after each resync (strict): train loss |Δ| ≤ {fmt(after['loss_abs'])} (rel {fmt(after['loss_rel'])}), "
              f"grad norm |Δ| ≤ {fmt(after['grad_abs'])} (rel {fmt(after['grad_rel'])}): {len(bad)} over"
              f"{'' if not bad else ', first: ' + bad[0]}")
    if r["failures"]:
        print(f"{tag}   resync differences over tolerance: {r['failures']}, first: {r['first_failure_what']}")
    f, g = None, []
    if args.free:
        f, g = free_lines(tag, load(args.free))
    clipped, logged, clip, top_norm = clipping(args.run)
    if clip > 0:
        print(f"{tag} clipping at {clip}: gradient norm over it at {clipped} of {logged} logged steps (largest {top_norm:.3g})")
    for line in bad[1:5]:
        print(f"{tag}   {line}")

    if args.json:
        args.json.write_text(json.dumps({
            "label": args.label, "weights_every": args.every, "gate": args.gate, "resync_passed": passed,
            "resync": r, "after_sync": {**after, "over": bad},
            "free": f, "free_growth": g, "clipping": {"clip": clip, "clipped": clipped, "logged": logged, "largest": top_norm},
        }, indent=1) + "\n")
    return 0 if passed else 1


def free_lines(tag: str, fr: dict):
    f = maxima(fr)
    within = "within the free tolerances throughout" if f["failures"] == 0 else f"first over the free tolerances at step {f['first_failure']} ({f['first_failure_what']})"
    print(f"{tag} free running: {within}; train loss rel ≤ {fmt(f['train_loss_rel'])} (≥ 1e-3: {fmt(f['train_loss_rel_above_1e-3'])}), held-out loss rel ≤ {fmt(f['eval_loss_rel'])}, "
          f"exact match |Δ| ≤ {fmt(f['exact_match_abs'], '.3f')}, params rel L2 ≤ {fmt(f['param_rel_max'])} "
          f"(final, step {f['final_step']}: {fmt(f['param_rel_final'])})")
    g = growth(fr)
    print(f"{tag}   free training-loss rel diff, largest up to step: " + ", ".join(f"{s}: {fmt(v, '.0e')}" for s, v in g))
    return f, g


if __name__ == "__main__":
    sys.exit(main())
