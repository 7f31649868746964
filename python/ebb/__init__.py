"""ebb's runs in Python.

    import ebb
    run = ebb.load_run("runs/quickstart")
    run.metrics                      # tidy DataFrame: step, task, split, metric, value
    run.weights()                    # {tensor name: numpy array} at the last kept step
    logits = ebb.forward(run.weights(), run.config, tokens)

Only numpy, pandas and safetensors are needed; `to_transformer_lens`
imports transformer_lens (and torch) when it is called.
"""

from .forward import forward, model_shape
from .lens import to_transformer_lens
from .run import Run, Sweep, load_run, load_sweep

__all__ = ["Run", "Sweep", "forward", "load_run", "load_sweep", "model_shape", "to_transformer_lens"]
