"""How far ebb's and the replica's float32 gradients are from a float64 one,
at the first step of a run.

    python reference/precision_floor.py RUN_DIR

RUN_DIR: an ebb run written with --weights-every 1 --dump-batches and no
clipping at its first step, e.g. one started with --init-from from a late
state of another run. ebb does not write gradients, but its first AdamW
step gives them back: with fresh moments the step is
p1 = p0·(1 − lr·wd) − lr·g/(|g| + eps), so d = g/(|g| + eps) and
g = eps·d/(1 − |d|), recoverable where |g| is not far above eps (|d| < 0.999;
the others are counted and left out). The replica's gradient is
jax.grad in float32 as in training, the reference the same graph in float64
from the same float32 parameters. The last column checks the recovery: the
replica's own first step, recovered the same way, against its gradient.

Prints, per tensor, ‖g − g64‖/‖g64‖ for the replica, for ebb, and for a
float32 gradient whose target term is −(Σ of the other e^z)/Σ e^z instead
of p_target − 1. Near 1e-6 a gradient is as good as float32 allows; near 1
it is rounding: when the loss per token is within a few ulps of 0,
p_target rounds to 1 (or 1 − ulp) and p − onehot loses the target's term.
Before ebb 118d412 both programs computed it that way and this script
measured 50-200% errors at (a)'s step 1700; both now take the target's
term as −Σ_{j≠t} p_j (the third column, computed independently here).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402
import replica  # noqa: E402


def target_as_sum_loss(s, tok, tgt, msk):
    """The training loss with a backward that takes the target's term of
    dlogits as −Σ_{j≠t} e^(z_j−max) / Σ_j e^(z_j−max), exact to rounding
    however close p_target is to 1."""

    @jax.custom_vjp
    def ce(logits, onehot):
        return jax.nn.logsumexp(logits, -1) - jnp.sum(logits * onehot, -1)

    def bwd(res, ct):
        logits, onehot = res
        e = jnp.exp(logits - logits.max(-1, keepdims=True))
        total = e.sum(-1, keepdims=True)
        others = jnp.sum(e * (1 - onehot), -1, keepdims=True) / total
        return jnp.where(onehot > 0, -others, e / total) * ct[..., None], None

    ce.defvjp(lambda logits, onehot: (ce(logits, onehot), (logits, onehot)), bwd)

    def loss(params):
        logits = replica.forward(params, tok, s)
        per = ce(logits, jax.nn.one_hot(tgt, logits.shape[-1], dtype=logits.dtype))
        return jnp.where(msk != 0, per * msk, 0.0).sum() / msk.sum()

    return loss


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    run = Path(argv[0])
    cfg = replica.load_config(run / "config.toml", compare.vocab_of(run))
    s, t = cfg.shape, cfg.train
    p0 = replica.load_weights(run / "weights" / "step-0.safetensors", s)
    p1 = replica.load_weights(run / "weights" / "step-1.safetensors", s)
    tok, tgt, msk = compare.batch(run / "batches" / "step-0.safetensors")

    (_, per), g32 = replica.Replica(cfg, p0)._grad(p0, tok, tgt, msk, None)
    if replica.clip_scale(t, replica.global_norm(g32)) != 1.0:
        print(f"{run}: the first step is clipped; the gradient cannot be recovered from it", file=sys.stderr)
        return 2
    p64 = {k: jnp.asarray(np.asarray(v), jnp.float64) for k, v in p0.items()}
    g64 = jax.grad(lambda p: replica.loss_and_positions(p, tok, tgt, jnp.asarray(np.asarray(msk), jnp.float64), s)[0])(p64)
    g_sum = jax.grad(target_as_sum_loss(s, tok, tgt, msk))(p0)
    loss = float(np.sum(np.asarray(per, np.float64)) / np.sum(np.asarray(msk, np.float64)))
    lr, decays = replica.lr_at(t, 0), replica.weight_decays(s, t)
    print(f"{run}: training loss {loss:.3g} per token at step 0, lr {lr:.3g}, eps {t.eps:g}")
    zeros = {k: jnp.zeros_like(v) for k, v in p0.items()}
    p1_rep, _, _ = replica.adamw(p0, g32, zeros, zeros, replica.adamw_scalars(t, 1, lr, 1.0, decays))

    def recovered(name, after):
        d = (np.asarray(p0[name], np.float64) * np.float32(1.0 - lr * decays[name]) - np.asarray(after[name], np.float64)) / np.float32(lr)
        return t.eps * d / (1.0 - np.abs(d)), np.abs(d) < 0.999

    print(f"{'tensor':<18} {'|g64| max':>10} {'replica':>9} {'ebb':>9} {'Σ target':>9} {'left out':>9} {'recovery':>9}")
    for name in p0:
        g_ebb, ok = recovered(name, p1)
        g_back, ok_back = recovered(name, p1_rep)
        ok &= ok_back
        g_rep, g_ref = np.asarray(g32[name], np.float64), np.asarray(g64[name])
        norm = np.linalg.norm(g_ref[ok])
        r = lambda a, b: np.linalg.norm((a - b)[ok]) / norm if norm > 0 else float("nan")  # noqa: E731
        print(f"{name:<18} {np.abs(g_ref).max():>10.2e} {r(g_rep, g_ref):>9.2e} {r(g_ebb, g_ref):>9.2e} {r(np.asarray(g_sum[name], np.float64), g_ref):>9.2e} "
              f"{int((~ok).sum()):>9d} {r(g_back, g_rep):>9.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
