"""Checks of the replica's pieces in isolation, against hand computations.

    python reference/check_replica.py

Each check prints one line; the script exits 1 if any fails. (Named
check_, not test_, so that no Rust-side test runner or pytest run on the
repository collects it without JAX installed.)
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replica as R  # noqa: E402

FAILED = []


def check(name: str, ok: bool, detail: str = ""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    if not ok:
        FAILED.append(name)


def shape(**kw) -> R.Shape:
    base = dict(vocab=11, n_ctx=6, d_model=8, n_layers=2, n_heads=2, d_mlp=12, activation="gelu", norm="pre", tied_embeddings=True, dropout=0.0)
    base.update(kw)
    return R.Shape(**base)


def train(**kw) -> R.Train:
    base = dict(steps=110, batch_size=2, lr=1.0, warmup_steps=10, schedule="cosine", lr_floor=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
                weight_decay=0.1, decay=("weights", "embeddings"), grad_clip=1.0, log_every=10, loss_per="token")
    base.update(kw)
    return R.Train(**base)


def random_params(s: R.Shape, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray((rng.standard_normal(dims) * scale + (1.0 if kind == "norm_weight" else 0.0)).astype(np.float32)) for name, dims, kind in R.layout(s)}


# ---- safetensors ----
with tempfile.TemporaryDirectory() as d:
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "tokens": np.array([[1, 2], [3, 4]], dtype=np.int32), "s": np.float32(2.5).reshape(())}
    R.write_safetensors(Path(d) / "x.safetensors", tensors, {"step": "3"})
    back = R.read_safetensors(Path(d) / "x.safetensors")
    check("safetensors round trip", all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items()))

# ---- layout ----
s = shape()
names = [n for n, _, _ in R.layout(s)]
check("layout order and names", names[:4] == ["wte", "wpe", "h0.ln1.w", "h0.ln1.b"] and names[-2:] == ["lnf.w", "lnf.b"] and "unembed.w" not in names)
s_un = shape(norm="none", tied_embeddings=False)
names = [n for n, _, _ in R.layout(s_un)]
check("layout without norms, untied", not any(".ln" in n or n.startswith("lnf") for n in names) and names[-1] == "unembed.w")
# 2 layers at C=8, F=12, V=11, T=6: wte 88, wpe 48; per block ln 32, qkv 216, proj 72, fc 108, out 104; lnf 16
check("parameter count", sum(math.prod(d) for _, d, _ in R.layout(s)) == 88 + 48 + 2 * (32 + 216 + 72 + 108 + 104) + 16)
dec = R.weight_decays(s_un, train())
check("decay groups (weights, embeddings)", dec["wte"] == 0.1 and dec["unembed.w"] == 0.1 and dec["h0.attn.proj.w"] == 0.1 and dec["wpe"] == 0.0 and dec["h0.mlp.fc.b"] == 0.0)
dec = R.weight_decays(s, train(decay=("positions", "norms", "biases")))
check("decay groups (positions, norms, biases)", dec["wpe"] == 0.1 and dec["lnf.b"] == 0.1 and dec["h1.attn.qkv.b"] == 0.1 and dec["wte"] == 0.0 and dec["h1.mlp.fc.w"] == 0.0)

# ---- ops ----
x = np.array([[1.0, 2.0, 4.0, -1.0]], dtype=np.float32)
w, b = np.array([1.0, 2.0, 0.5, 1.0], np.float32), np.array([0.0, 0.1, 0.0, -0.1], np.float32)
mu, var = x.mean(), ((x - x.mean()) ** 2).mean()  # biased variance, eps 1e-5
want = (x - mu) / math.sqrt(var + 1e-5) * w + b
check("layernorm", np.allclose(R.layernorm(jnp.asarray(x), w, b), want, rtol=1e-6, atol=1e-6))
g = np.asarray(R.gelu(jnp.asarray([1.0, -1.0, 0.0, 3.0], dtype=jnp.float32)))
want = [0.8411919906082768, -0.15880800939172324, 0.0, 2.9963627544517918]  # 0.5x(1+tanh(√(2/π)(x+0.044715x³)))
check("gelu is the tanh approximation", np.allclose(g, want, rtol=1e-6, atol=1e-7), str(g))
check("relu", np.array_equal(R.activation(jnp.asarray([-1.0, 0.0, 2.0]), "relu"), [0.0, 0.0, 2.0]))

# ---- the loss on a hand-made batch ----
logits = jnp.asarray([[[0.0, math.log(2.0), 0.0], [5.0, 1.0, 1.0]], [[1.0, 1.0, 1.0], [0.0, 0.0, 100.0]]], dtype=jnp.float32)  # (2 rows, 2 positions, 3 tokens)
targets = jnp.asarray([[1, 0], [2, 0]], dtype=jnp.int32)
mask = jnp.asarray([[1.0, 0.0], [1.0, 1.0]], dtype=jnp.float32)
per = np.asarray(R.position_losses(logits, targets, mask))
want = np.array([[math.log(4.0) - math.log(2.0), 0.0], [math.log(3.0), 100.0 + math.log(1.0 + 2.0 * math.exp(-100.0))]])
check("per-position CE, 0 where masked", np.allclose(per, want, rtol=1e-6), str(per))
want_loss = (want[0, 0] + want[1, 0] + want[1, 1]) / 3.0
half = jnp.asarray([[1.0, 0.0], [0.5, 0.5]], dtype=jnp.float32)  # loss_per = "example": 1/answer length
want_ex = (want[0, 0] + 0.5 * want[1, 0] + 0.5 * want[1, 1]) / 2.0


def loss_of(logits, mask):
    per = R.position_losses(logits, targets, mask)
    return per.sum() / mask.sum()


check("loss = Σ mask·CE / Σ mask (per token)", abs(float(loss_of(logits, mask)) - want_loss) < 1e-5)
check("loss = Σ mask·CE / Σ mask (per example)", abs(float(loss_of(logits, half)) - want_ex) < 1e-5)
# ebb's crossentropy_backward: dlogits = (softmax − onehot) · mask / Σ mask
dl = np.asarray(jax.grad(loss_of)(logits, half))
p = np.asarray(jax.nn.softmax(logits, axis=-1))
onehot = np.eye(3)[np.asarray(targets)]
check("loss gradient = (p − onehot)·mask/Σmask", np.allclose(dl, (p - onehot) * np.asarray(half)[..., None] / 2.0, atol=1e-7))

# ---- confident positions: p_target rounds to 1 in float32, the loss and
# the target's gradient still match float64 to float32's precision ----
conf = jnp.asarray([[[30.0, 0.5, -1.0], [0.0, 24.0, 1.0]], [[-2.0, 0.0, 40.0], [18.0, 0.0, 0.0]]], dtype=jnp.float32)
conf_t = jnp.asarray([[0, 1], [2, 0]], dtype=jnp.int32)
ones = jnp.ones((2, 2), jnp.float32)
z64 = np.asarray(conf, np.float64)
t64 = np.asarray(conf_t)
others64 = np.array([[sum(math.exp(z64[b, i, j] - z64[b, i, t64[b, i]]) for j in range(3) if j != t64[b, i]) for i in range(2)] for b in range(2)])
per = np.asarray(R.position_losses(conf, conf_t, ones))
check("confident positions: loss = log1p(Σ_{j≠t} e^(z_j − z_t))", np.allclose(per, np.log1p(others64), rtol=1e-5, atol=0), f"{per} vs {np.log1p(others64)}")
gt = np.asarray(jax.grad(lambda z: R.position_losses(z, conf_t, ones).sum())(conf))
gt_target = np.take_along_axis(gt, t64[..., None], -1)[..., 0]
check("confident positions: target gradient = −Σ_{j≠t} p_j", np.allclose(gt_target, -others64 / (1 + others64), rtol=1e-5, atol=0), f"{gt_target}")

# ---- the whole loss with an all-zero mask is 0 with zero gradient ----
tok = jnp.asarray(np.random.default_rng(1).integers(0, s.vocab, (2, s.n_ctx)), dtype=jnp.int32)
params = random_params(s)
zero = jnp.zeros((2, s.n_ctx), jnp.float32)
(l0, _), g0 = jax.value_and_grad(lambda p: R.loss_and_positions(p, tok, tok, zero, s), has_aux=True)(params)
check("no masked position: loss 0, gradient 0", float(l0) == 0.0 and all(float(jnp.abs(v).max()) == 0.0 for v in g0.values()))


# ---- the forward pass against a loop-by-loop float64 version ----
def naive_forward(p, tokens, s: R.Shape):
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    B, T = tokens.shape
    C, H, hs = s.d_model, s.n_heads, s.d_model // s.n_heads

    def ln(x, w, b):
        m, v = x.mean(), ((x - x.mean()) ** 2).mean()
        return (x - m) / math.sqrt(v + 1e-5) * w + b

    act = (lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))) if s.activation == "gelu" else (lambda x: np.maximum(x, 0))
    out = np.zeros((B, T, s.vocab))
    for bi in range(B):
        xs = [p["wte"][tokens[bi, t]] + p["wpe"][t] for t in range(T)]
        for l in range(s.n_layers):
            q = lambda n: p[f"h{l}.{n}"]
            hin = [ln(x, q("ln1.w"), q("ln1.b")) if s.norm == "pre" else x for x in xs]
            qkv = [q("attn.qkv.w") @ h + q("attn.qkv.b") for h in hin]
            ys = []
            for i in range(T):
                y = np.zeros(C)
                for h in range(H):
                    qi = qkv[i][h * hs : (h + 1) * hs]
                    sc = np.array([qi @ qkv[j][C + h * hs : C + (h + 1) * hs] / math.sqrt(hs) for j in range(i + 1)])
                    a = np.exp(sc - sc.max())
                    a /= a.sum()
                    y[h * hs : (h + 1) * hs] = sum(a[j] * qkv[j][2 * C + h * hs : 2 * C + (h + 1) * hs] for j in range(i + 1))
                ys.append(y)
            xs = [x + q("attn.proj.w") @ y + q("attn.proj.b") for x, y in zip(xs, ys)]
            hin = [ln(x, q("ln2.w"), q("ln2.b")) if s.norm == "pre" else x for x in xs]
            xs = [x + q("mlp.proj.w") @ act(q("mlp.fc.w") @ h + q("mlp.fc.b")) + q("mlp.proj.b") for x, h in zip(xs, hin)]
        un = p["wte"] if s.tied_embeddings else p["unembed.w"]
        for t in range(T):
            out[bi, t] = un @ (ln(xs[t], p["lnf.w"], p["lnf.b"]) if s.norm == "pre" else xs[t])
    return out


for variant in [dict(), dict(activation="relu"), dict(norm="none"), dict(tied_embeddings=False), dict(n_layers=1, n_heads=4)]:
    sv = shape(**variant)
    pv = random_params(sv, seed=2)
    tok = np.random.default_rng(3).integers(0, sv.vocab, (2, sv.n_ctx))
    got = np.asarray(R.forward(pv, jnp.asarray(tok, dtype=jnp.int32), sv), np.float64)
    want = naive_forward(pv, tok, sv)
    err = np.abs(got - want).max() / np.abs(want).max()
    check(f"forward vs loops {variant or 'gelu pre tied'}", err < 1e-5, f"max rel {err:.1e}")

# causality: changing the last token changes no earlier logit
tok2 = tok.copy()
tok2[:, -1] = (tok2[:, -1] + 1) % sv.vocab
a = np.asarray(R.forward(pv, jnp.asarray(tok, dtype=jnp.int32), sv))
b = np.asarray(R.forward(pv, jnp.asarray(tok2, dtype=jnp.int32), sv))
check("causal: a later token leaves earlier logits alone", np.array_equal(a[:, :-1], b[:, :-1]) and not np.array_equal(a[:, -1], b[:, -1]))

# ---- learning-rate schedule: the values of schedule.rs's own test ----
for sched in ["constant", "cosine", "linear"]:
    t = train(schedule=sched)
    end = R.lr_at(t, 110)
    ok = R.lr_at(t, 0) == 0.1 and R.lr_at(t, 4) == 0.5 and R.lr_at(t, 10) == 1.0 and (end == 1.0 if sched == "constant" else abs(end - 0.1) < 1e-12)
    check(f"lr schedule {sched}", ok)
check("lr linear/cosine midpoints", abs(R.lr_at(train(schedule="linear"), 60) - 0.55) < 1e-12 and abs(R.lr_at(train(schedule="cosine"), 60) - 0.55) < 1e-12
      and R.lr_at(train(schedule="cosine"), 30) > R.lr_at(train(schedule="linear"), 30))

# ---- clipping and AdamW against hand computation ----
t = train(grad_clip=1.0)
check("clip scale", R.clip_scale(t, 4.0) == 0.25 and R.clip_scale(t, 0.5) == 1.0 and R.clip_scale(train(grad_clip=0.0), 100.0) == 1.0)
check("global norm in f64", R.global_norm({"a": jnp.asarray([3.0]), "b": jnp.asarray([[4.0, 0.0]])}) == 5.0)
p0 = {"w": jnp.asarray([1.0, -2.0, 0.5], jnp.float32), "b": jnp.asarray([0.3], jnp.float32)}
g1 = {"w": jnp.asarray([0.2, -0.4, 0.0], jnp.float32), "b": jnp.asarray([1.0], jnp.float32)}
g2 = {"w": jnp.asarray([-0.1, 0.3, 0.05], jnp.float32), "b": jnp.asarray([0.5], jnp.float32)}
m0 = {k: jnp.zeros_like(v) for k, v in p0.items()}
decays = {"w": 0.1, "b": 0.0}
lr, b1, b2, eps, scale = 0.01, 0.9, 0.95, 1e-8, 0.5
t = train(beta1=b1, beta2=b2, eps=eps, weight_decay=0.1)
p1, m1, v1 = R.adamw(p0, g1, m0, m0, R.adamw_scalars(t, 1, lr, scale, decays))
p2, m2, v2 = R.adamw(p1, g2, m1, v1, R.adamw_scalars(t, 2, lr, 1.0, decays))


def hand(p, gs, scales, wd):
    """AdamW by hand in float64, one element: decoupled decay on the old p."""
    m = v = 0.0
    for step, (g, sc) in enumerate(zip(gs, scales), start=1):
        g *= sc
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**step), v / (1 - b2**step)
        p = p * (1 - lr * wd) - lr * mhat / (math.sqrt(vhat) + eps)
    return p


want1 = [hand(float(p0["w"][i]), [float(g1["w"][i])], [scale], 0.1) for i in range(3)]
want2 = [hand(float(p0["w"][i]), [float(g1["w"][i]), float(g2["w"][i])], [scale, 1.0], 0.1) for i in range(3)]
# step 1 of AdamW moves each element by lr·sign(g) (mhat/√vhat = g/|g|), plus the decay
check("AdamW step 1 = p(1−lr·wd) − lr·sign(g)", np.allclose(p1["w"], [1.0 * 0.999 - 0.01, -2.0 * 0.999 + 0.01, 0.5 * 0.999], rtol=1e-6), str(np.asarray(p1["w"])))
check("AdamW step 1 vs hand", np.allclose(p1["w"], want1, rtol=1e-6))
check("AdamW step 2 vs hand (moments, bias correction)", np.allclose(p2["w"], want2, rtol=1e-6), f"{np.asarray(p2['w'])} vs {want2}")
check("AdamW without decay on b", abs(float(p2["b"][0]) - hand(0.3, [1.0, 0.5], [scale, 1.0], 0.0)) < 1e-6)

# ---- dropout hashes: SplitMix64 and FNV-1a reference values ----
check("mix64(0) is SplitMix64's first output from seed 0", R.mix64(0) == 0xE220A8397B1DCDAF)
check("mix64 on arrays = on ints", int(R.mix64(np.array([12345], dtype=np.uint64))[0]) == R.mix64(12345))
check("fnv1a", R.fnv1a(b"") == 0xCBF29CE484222325 and R.fnv1a(b"a") == 0xAF63DC4C8601EC8C)
f = R.keep_factors(R.stream_key(1, "dropout", 0), 0.25, (200_000,))
check("dropout drops about p, keeps at 1/(1−p)", abs((f == 0).mean() - 0.25) < 0.005 and set(np.unique(f)) == {0.0, np.float32(1 / 0.75)})

# ---- one replica step moves the loss down on a repeated batch ----
s = shape()
cfg = R.Config(seed=0, shape=s, train=train(lr=1e-2, warmup_steps=1, schedule="constant", steps=20), eval_every=10)
rep = R.Replica(cfg, random_params(s, scale=0.1))
rng = np.random.default_rng(4)
tok = jnp.asarray(rng.integers(3, s.vocab, (2, s.n_ctx)), dtype=jnp.int32)
tgt = jnp.roll(tok, -1, axis=1)
msk = jnp.ones((2, s.n_ctx), jnp.float32)
losses = [rep.step(i, tok, tgt, msk)["loss"] for i in range(20)]
check("training on one batch lowers its loss", losses[-1] < 0.5 * losses[0], f"{losses[0]:.3f} → {losses[-1]:.3f}")
ev = rep.evaluate(tok, tgt, msk)
check("evaluate: loss is the mean CE over masked tokens", abs(ev["loss"] - float(R.loss_and_positions(rep.params, tok, tgt, msk, s)[0])) < 1e-5)

print(f"\n{'all checks passed' if not FAILED else f'{len(FAILED)} failed: ' + ', '.join(FAILED)}")
sys.exit(1 if FAILED else 0)
