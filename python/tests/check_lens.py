"""`ebb.to_transformer_lens` against ebb (run by tests/python.rs where
transformer_lens is installed):

    python check_lens.py RUN_DIR...

Each run directory holds `logits.safetensors` from `ebb eval --logits`.
Prints the largest logit difference; exits non-zero on a failure."""

import sys

import numpy as np
import torch
from safetensors.numpy import load_file

import ebb

TOLERANCE = 1e-5  # as in check_package.py


def main(paths):
    for path in paths:
        model = ebb.to_transformer_lens(path)
        ref = load_file(f"{path}/logits.safetensors")
        worst = (0.0, 0.0)
        for name in ref:
            if not name.endswith(".tokens"):
                continue
            want = ref[name.removesuffix(".tokens") + ".logits"]
            with torch.no_grad():
                got = model(torch.from_numpy(ref[name].astype(np.int64))).numpy()
            diff = float(np.abs(got - want).max())
            scale = float(np.abs(want).max())
            assert diff <= TOLERANCE, f"{path} {name}: |Δ| {diff} at logits up to {scale}"
            worst = max(worst, (diff, diff / scale))
        print(f"{path}: TransformerLens, largest |Δ logit| {worst[0]:.3g} ({worst[1]:.3g} of the largest logit)")
    print("PASS")


if __name__ == "__main__":
    main(sys.argv[1:])
