"""Reading a run directory and a sweep directory (the files ebb writes; see
the README's "What a run writes" and "Sweeps")."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file


@dataclass
class Run:
    """One run directory. Every table is read when the run is loaded; the
    weights when asked for."""

    dir: Path
    config: dict  # the resolved config.toml: every key written out
    model: dict  # model.json: parameter count, suite, vocabulary size
    metrics: pd.DataFrame  # step, task, split, metric, value (one row per number)
    events: pd.DataFrame  # step, event, task, value
    tasks: pd.DataFrame  # task, family, chance, eval_examples, weight
    summary: dict  # summary.json: drops, decay fits, learned events, …
    weight_steps: list[int] = field(default_factory=list)  # the steps whose weights were kept

    def weights(self, step: int | None = None) -> dict[str, np.ndarray]:
        """The parameters after `step` steps (default: the last kept), float32,
        by ebb's tensor names (`wte`, `wpe`, `h0.attn.qkv.w`, …)."""
        if step is None:
            if not self.weight_steps:
                raise FileNotFoundError(f"{self.dir}: no weights kept")
            step = self.weight_steps[-1]
        path = self.dir / "weights" / f"step-{step}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no weights at step {step} (kept: {self.weight_steps})")
        return load_file(str(path))

    def series(self, task: str, metric: str = "exact_match", split: str = "eval") -> pd.Series:
        """One task's metric against the step."""
        m = self.metrics
        rows = m[(m.task == task) & (m.metric == metric) & (m.split == split)]
        return rows.set_index("step")["value"].rename(f"{task} {metric}")


def _csv(path: Path, **kwargs) -> pd.DataFrame:
    return pd.read_csv(path, **kwargs) if path.is_file() else pd.DataFrame()


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_run(dir) -> Run:
    """Reads the run in `dir` (finished or not)."""
    d = Path(dir)
    if not (d / "config.toml").is_file():
        raise FileNotFoundError(f"{d}: not a run directory (no config.toml)")
    with open(d / "config.toml", "rb") as f:
        config = tomllib.load(f)
    steps = sorted(
        int(m.group(1))
        for p in (d / "weights").glob("step-*.safetensors")
        if (m := re.fullmatch(r"step-(\d+)\.safetensors", p.name))
    )
    return Run(
        dir=d,
        config=config,
        model=_json(d / "model.json"),
        metrics=_csv(d / "metrics.csv", dtype={"task": str, "split": str, "metric": str}),
        events=_csv(d / "events.csv", dtype={"event": str, "task": str}),
        tasks=_csv(d / "tasks.csv", dtype={"task": str}),
        summary=_json(d / "summary.json"),
        weight_steps=steps,
    )


@dataclass
class Sweep:
    """One sweep directory: the aggregate tables, and its runs on demand."""

    dir: Path
    manifest: pd.DataFrame  # id and varied values per run
    runs_table: pd.DataFrame  # sweep.csv: one row per run
    drops: pd.DataFrame  # drops.csv: one row per run and dropped task
    scaling: dict  # scaling.json

    def run(self, run_id: str) -> Run:
        return load_run(self.dir / run_id)

    def runs(self) -> list[Run]:
        """Every run of the manifest that has a directory."""
        ids = self.manifest["id"] if "id" in self.manifest else []
        return [load_run(self.dir / i) for i in ids if (self.dir / i / "config.toml").is_file()]


def load_sweep(dir) -> Sweep:
    """Reads the sweep in `dir` (after `ebb sweep` or `ebb aggregate`)."""
    d = Path(dir)
    if not (d / "manifest.csv").is_file():
        raise FileNotFoundError(f"{d}: not a sweep directory (no manifest.csv)")
    return Sweep(
        dir=d,
        manifest=_csv(d / "manifest.csv", dtype={"id": str}),
        runs_table=_csv(d / "sweep.csv", dtype={"id": str}),
        drops=_csv(d / "drops.csv", dtype={"id": str, "task": str}),
        scaling=_json(d / "scaling.json"),
    )
