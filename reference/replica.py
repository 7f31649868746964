"""ebb's model and training step, written again in JAX so it can be read.

This module is a second statement of what `ebb run` computes. It is meant to
be read beside the Rust source, and `compare.py` runs it beside ebb. Nothing
here is tuned for speed. Each piece names the Rust it restates:

  parameter layout     src/model/layout.rs      (names, shapes, kinds)
  forward pass         src/model/mod.rs         (Gpt::forward)
  ops                  src/backend/cpu.rs, src/backend/cpu/attention.rs
  loss                 Gpt::forward / crossentropy_{forward,backward}
  dropout masks        src/backend/mod.rs (Dropout), src/model/mod.rs (dropout_for), src/rng.rs
  AdamW, clipping      src/train/optimizer.rs, CpuBackend::adamw_update
  learning rate        src/train/schedule.rs (lr_at)
  evaluation           src/eval.rs (Evaluator::run)

All arithmetic is float32, as in ebb, except where ebb itself sums in f64:
the reported training loss (a sum of per-position f32 losses), the mask
count that divides it, and the squared gradient norm.
"""

from __future__ import annotations

import json
import math
import struct
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import jax
import jax.numpy as jnp

F32 = np.float32

# ---------------------------------------------------------------------------
# safetensors, read and written by hand: an 8-byte little-endian header
# length, a JSON header {name: {dtype, shape, data_offsets}}, then raw bytes.
# ---------------------------------------------------------------------------

_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"), "U32": np.dtype("<u4")}


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, as numpy arrays (copies)."""
    raw = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    data = memoryview(raw)[8 + header_len :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(tuple(info["shape"])).copy()
    return out


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes `tensors` (numpy arrays of a dtype in _DTYPES) as a safetensors file."""
    names = {v: k for k, v in _DTYPES.items()}
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        array = np.asarray(array, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        dtype = array.dtype.newbyteorder("<")
        blob = array.astype(dtype).tobytes()
        header[name] = {"dtype": names[dtype], "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        chunks.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


# ---------------------------------------------------------------------------
# Config: the fields of ebb's resolved config.toml that the arithmetic uses.
# Defaults are ebb's (src/config.rs), for configs that leave a key out.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    vocab: int
    n_ctx: int
    d_model: int
    n_layers: int
    n_heads: int
    d_mlp: int
    activation: str  # "gelu" (tanh approximation) or "relu"
    norm: str  # "pre" (LayerNorm before attention, MLP and unembedding) or "none"
    tied_embeddings: bool
    dropout: float

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class Train:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    schedule: str  # "constant", "cosine" or "linear"
    lr_floor: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decay: tuple[str, ...]  # decay groups: weights, embeddings, positions, biases, norms
    grad_clip: float
    log_every: int
    loss_per: str  # "token" or "example" (only changes the mask ebb writes)


@dataclass(frozen=True)
class Config:
    seed: int
    shape: Shape
    train: Train
    eval_every: int


def load_config(path, vocab: int) -> Config:
    """ebb's resolved `config.toml`; `vocab` comes from the run (model.json or
    the shape of `wte`), as the config does not hold it."""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    m, t = raw.get("model", {}), raw.get("train", {})
    d_model = m.get("d_model", 64)
    shape = Shape(
        vocab=vocab,
        n_ctx=m.get("n_ctx", 32),
        d_model=d_model,
        n_layers=m.get("n_layers", 2),
        n_heads=m.get("n_heads", 4),
        d_mlp=m.get("d_mlp", 4 * d_model),
        activation=m.get("activation", "gelu"),
        norm=m.get("norm", "pre"),
        tied_embeddings=m.get("tied_embeddings", True),
        dropout=float(m.get("dropout", 0.0)),
    )
    betas = t.get("betas", [0.9, 0.95])
    train = Train(
        steps=t.get("steps", 1000),
        batch_size=t.get("batch_size", 32),
        lr=float(t.get("lr", 1e-3)),
        warmup_steps=t.get("warmup_steps", 50),
        schedule=t.get("schedule", "cosine"),
        lr_floor=float(t.get("lr_floor", 0.1)),
        beta1=float(betas[0]),
        beta2=float(betas[1]),
        eps=float(t.get("eps", 1e-8)),
        weight_decay=float(t.get("weight_decay", 0.1)),
        decay=tuple(t.get("decay", ["weights", "embeddings"])),
        grad_clip=float(t.get("grad_clip", 1.0)),
        log_every=t.get("log_every", 10),
        loss_per=t.get("loss_per", "token"),
    )
    if shape.activation not in ("gelu", "relu") or shape.norm not in ("pre", "none") or train.schedule not in ("constant", "cosine", "linear"):
        raise ValueError(f"{path}: an option this replica does not know: {shape.activation}, {shape.norm}, {train.schedule}")
    return Config(seed=int(raw.get("seed", 0)), shape=shape, train=train, eval_every=raw.get("eval", {}).get("every", 100))


# ---------------------------------------------------------------------------
# Parameter layout (src/model/layout.rs): names, shapes and kinds, in ebb's
# order. Weight matrices are (out, in): y = x @ W.T + b. Every linear layer
# has a bias. LayerNorm tensors exist only with norm = "pre"; `unembed.w`
# only with untied embeddings (tied: the logits are x @ wte.T).
# ---------------------------------------------------------------------------


def layout(s: Shape) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) for every parameter tensor, in ebb's order."""
    V, T, C, Fm = s.vocab, s.n_ctx, s.d_model, s.d_mlp
    pre = s.norm == "pre"
    out = [("wte", (V, C), "token_embedding"), ("wpe", (T, C), "position_embedding")]
    for l in range(s.n_layers):
        if pre:
            out += [(f"h{l}.ln1.w", (C,), "norm_weight"), (f"h{l}.ln1.b", (C,), "norm_bias")]
        out += [
            (f"h{l}.attn.qkv.w", (3 * C, C), "weight"),
            (f"h{l}.attn.qkv.b", (3 * C,), "bias"),
            (f"h{l}.attn.proj.w", (C, C), "residual_weight"),
            (f"h{l}.attn.proj.b", (C,), "bias"),
        ]
        if pre:
            out += [(f"h{l}.ln2.w", (C,), "norm_weight"), (f"h{l}.ln2.b", (C,), "norm_bias")]
        out += [
            (f"h{l}.mlp.fc.w", (Fm, C), "weight"),
            (f"h{l}.mlp.fc.b", (Fm,), "bias"),
            (f"h{l}.mlp.proj.w", (C, Fm), "residual_weight"),
            (f"h{l}.mlp.proj.b", (C,), "bias"),
        ]
    if pre:
        out += [("lnf.w", (C,), "norm_weight"), ("lnf.b", (C,), "norm_bias")]
    if not s.tied_embeddings:
        out.append(("unembed.w", (V, C), "weight"))
    return out


# optimizer.rs `group_of`: which decay group each kind of tensor is in.
DECAY_GROUP = {
    "weight": "weights",
    "residual_weight": "weights",
    "token_embedding": "embeddings",
    "position_embedding": "positions",
    "bias": "biases",
    "norm_weight": "norms",
    "norm_bias": "norms",
}


def weight_decays(s: Shape, t: Train) -> dict[str, float]:
    """Per tensor: train.weight_decay if its group is in train.decay, else 0."""
    return {name: (t.weight_decay if DECAY_GROUP[kind] in t.decay else 0.0) for name, _, kind in layout(s)}


def load_weights(path, s: Shape) -> dict[str, jnp.ndarray]:
    """An ebb weights file as {name: float32 array}; the names and shapes
    must be exactly the layout's."""
    tensors = read_safetensors(path)
    want = {name: shape for name, shape, _ in layout(s)}
    if set(tensors) != set(want):
        raise ValueError(f"{path}: tensors {sorted(set(tensors) ^ set(want))} differ from the layout")
    for name, shape in want.items():
        if tensors[name].shape != shape or tensors[name].dtype != np.float32:
            raise ValueError(f"{path}: {name} is {tensors[name].dtype} {tensors[name].shape}, the layout says float32 {shape}")
    return {name: jnp.asarray(tensors[name]) for name in want}


# ---------------------------------------------------------------------------
# The ops (src/backend/cpu.rs, src/backend/cpu/attention.rs).
# ---------------------------------------------------------------------------

LN_EPS = 1e-5  # layernorm_row: 1/sqrt(var + 1e-5), var the biased (1/C) variance


def layernorm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + F32(LN_EPS)) * w + b


def gelu(x):
    """The tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    (ebb writes 0.5·(1 + tanh u) as 1/(1 + e^(−2u)), the same function.)"""
    u = F32(math.sqrt(2.0 / math.pi)) * (x + F32(0.044715) * x * x * x)
    return F32(0.5) * x * (F32(1.0) + jnp.tanh(u))


def activation(x, kind: str):
    return gelu(x) if kind == "gelu" else jnp.maximum(x, F32(0.0))


def causal_attention(qkv, s: Shape, att_keep=None):
    """Multi-head causal self-attention. qkv (B,T,3C) holds q, k, v side by
    side, head h in columns [h·hs, (h+1)·hs) of each. Scores q·kᵀ/√hs, key
    j visible to query i when j ≤ i (padding is not masked: PAD tokens are
    ordinary keys, and padding positions carry no loss). `att_keep`
    (B,H,T,T), when given, multiplies the softmax probabilities (dropout,
    without renormalising), before they weigh v."""
    B, T, _ = qkv.shape
    C, H, hs = s.d_model, s.n_heads, s.head_size
    q, k, v = (qkv[..., i * C : (i + 1) * C].reshape(B, T, H, hs).transpose(0, 2, 1, 3) for i in range(3))  # (B,H,T,hs)
    scores = (q @ k.transpose(0, 1, 3, 2)) * F32(1.0 / math.sqrt(hs))
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))
    scores = jnp.where(causal, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    if att_keep is not None:
        probs = probs * att_keep
    y = probs @ v  # (B,H,T,hs)
    return y.transpose(0, 2, 1, 3).reshape(B, T, C)


def linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


# ---------------------------------------------------------------------------
# The model (Gpt::forward).
# ---------------------------------------------------------------------------


def forward(params, tokens, s: Shape, drop=None):
    """Logits (B,T,V) for tokens (B,T). `drop`: None (no dropout: evaluation,
    or dropout = 0), or per layer a triple of keep-factor arrays (attention
    probabilities (B,H,T,T), attention branch (B,T,C), MLP branch (B,T,C)),
    each 0 or 1/(1−p): see `dropout_factors`."""
    T = tokens.shape[1]
    pre = s.norm == "pre"
    x = params["wte"][tokens] + params["wpe"][:T]
    for l in range(s.n_layers):
        p = lambda name: params[f"h{l}.{name}"]
        att_keep, attn_keep, mlp_keep = drop[l] if drop is not None else (None, None, None)
        h = layernorm(x, p("ln1.w"), p("ln1.b")) if pre else x
        a = causal_attention(linear(h, p("attn.qkv.w"), p("attn.qkv.b")), s, att_keep)
        a = linear(a, p("attn.proj.w"), p("attn.proj.b"))
        x = x + (a if attn_keep is None else a * attn_keep)  # residual_forward: x + dropout(branch + bias)
        h = layernorm(x, p("ln2.w"), p("ln2.b")) if pre else x
        m = activation(linear(h, p("mlp.fc.w"), p("mlp.fc.b")), s.activation)
        m = linear(m, p("mlp.proj.w"), p("mlp.proj.b"))
        x = x + (m if mlp_keep is None else m * mlp_keep)
    if pre:
        x = layernorm(x, params["lnf.w"], params["lnf.b"])
    unembed = params["wte"] if s.tied_embeddings else params["unembed.w"]
    return linear(x, unembed)  # no bias on the unembedding


@jax.custom_vjp
def target_nll(logits, onehot):
    """−log softmax(logits)[target] per position, computed as ebb's
    crossentropy_forward does: the target's exponential apart from the
    others, log1p(others) when the target is the largest logit, so that a
    confident position keeps its loss instead of rounding to log(1) = 0."""
    zmax = logits.max(-1, keepdims=True)
    e = jnp.exp(logits - zmax)
    others = jnp.sum(e * (1 - onehot), -1)
    zt = jnp.sum(logits * onehot, -1)
    total = jnp.sum(e * onehot, -1) + others
    return jnp.where(zt == zmax[..., 0], jnp.log1p(others), jnp.log(total) + zmax[..., 0] - zt)


def _target_nll_fwd(logits, onehot):
    return target_nll(logits, onehot), (logits, onehot)


def _target_nll_bwd(res, ct):
    """crossentropy_backward: p − onehot, the target's entry as −Σ_{j≠t} p_j,
    which keeps its size when p_target rounds to 1 (autograd's p − 1 would
    be exactly 0 there)."""
    logits, onehot = res
    p = jax.nn.softmax(logits, axis=-1)
    others = jnp.sum(p * (1 - onehot), -1, keepdims=True)
    return jnp.where(onehot > 0, -others, p) * ct[..., None], None


target_nll.defvjp(_target_nll_fwd, _target_nll_bwd)


def position_losses(logits, targets, mask):
    """crossentropy_forward: −log softmax(logits)[target] · mask per position,
    exactly 0 where the mask is 0."""
    ce = target_nll(logits, jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype))
    return jnp.where(mask != 0, ce * mask, F32(0.0))


def loss_and_positions(params, tokens, targets, mask, s: Shape, drop=None):
    """The training loss: Σ (mask-weighted CE) / Σ mask, 0 when Σ mask = 0.
    The mask is 1 per answer token (and EOS), or 1/answer length with
    loss_per = "example", so Σ mask is the number of answer tokens or of
    examples. ebb's gradient is that of this quotient (the logits' gradient
    is (p − onehot)·mask/Σ mask). Returns the loss and the per-position
    losses (for ebb's f64 sum)."""
    per = position_losses(forward(params, tokens, s, drop), targets, mask)
    count = mask.sum()
    loss = jnp.where(count > 0, per.sum() / jnp.where(count > 0, count, F32(1.0)), F32(0.0))
    return loss, per


# ---------------------------------------------------------------------------
# Dropout masks (src/backend/mod.rs `Dropout::factor`, src/model/mod.rs
# `dropout_for`, src/rng.rs): counter-based, so the replica draws exactly
# ebb's masks. Numpy uint64 arithmetic wraps as Rust's wrapping ops do.
# ---------------------------------------------------------------------------

_M64 = (1 << 64) - 1


def mix64(z):
    """SplitMix64's finalizer, on Python ints or numpy uint64 arrays."""
    if isinstance(z, np.ndarray):
        with np.errstate(over="ignore"):
            z = z + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return z ^ (z >> np.uint64(31))
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & _M64
    return h


def stream_key(seed: int, purpose: str, index: int) -> int:
    return mix64(mix64(seed ^ fnv1a(purpose.encode())) ^ index)


def keep_factors(key: int, p: float, shape) -> np.ndarray:
    """Element i (row-major over `shape`) is dropped when the top 24 bits of
    mix64(key ^ mix64(i)) are below ⌈p·2²⁴⌉; kept elements are scaled by
    1/(1−p)."""
    n = int(np.prod(shape))
    h = mix64(np.uint64(key) ^ mix64(np.arange(n, dtype=np.uint64))) >> np.uint64(40)
    drop_below = np.uint64(math.ceil(p * (1 << 24)))
    return np.where(h < drop_below, F32(0.0), F32(1.0 / (1.0 - p))).reshape(shape)


def dropout_factors(cfg: Config, step: int, batch_rows: int):
    """The keep factors of training step `step` (0-based), per layer: site 0
    the attention probabilities (B,H,T,T), site 1 the attention branch and
    site 2 the MLP branch (B,T,C). None when dropout is off."""
    s = cfg.shape
    if s.dropout <= 0.0:
        return None
    B, T, C, H = batch_rows, s.n_ctx, s.d_model, s.n_heads
    step_key = stream_key(cfg.seed, "dropout", step)
    site_key = lambda l, site: mix64(step_key ^ mix64((l << 8) | site))
    return [
        (
            keep_factors(site_key(l, 0), s.dropout, (B, H, T, T)),
            keep_factors(site_key(l, 1), s.dropout, (B, T, C)),
            keep_factors(site_key(l, 2), s.dropout, (B, T, C)),
        )
        for l in range(s.n_layers)
    ]


# ---------------------------------------------------------------------------
# Learning rate (src/train/schedule.rs) and AdamW (optimizer.rs, adamw_update).
# ---------------------------------------------------------------------------


def lr_at(t: Train, step: int) -> float:
    """Learning rate of 0-based step `step`: linear warmup from lr/warmup to lr
    over warmup_steps steps, then constant, or cosine/linear decay reaching
    lr·lr_floor at step `steps`."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    decay_steps = max(t.steps - t.warmup_steps, 1)
    progress = min((step - t.warmup_steps) / decay_steps, 1.0)
    if t.schedule == "constant":
        return t.lr
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if t.schedule == "cosine" else 1.0 - progress
    return t.lr * (t.lr_floor + (1.0 - t.lr_floor) * shape)


def global_norm(grads) -> float:
    """√(Σ g²) over every gradient, the squares summed in float64."""
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(g, dtype=np.float64)))) for g in grads.values()))


def clip_scale(t: Train, norm: float) -> float:
    """Global-norm clipping as a factor on every gradient: grad_clip/norm when
    clipping is on (grad_clip > 0) and the norm exceeds it, else 1."""
    return t.grad_clip / norm if t.grad_clip > 0.0 and norm > t.grad_clip else 1.0


def adamw_scalars(train: Train, t: int, lr: float, grad_scale: float, decays: dict[str, float]) -> dict:
    """The scalars of AdamW step t (1-based), each computed in f64 and then
    rounded to f32, as adamw_update does."""
    return {
        "b1": F32(train.beta1),
        "b2": F32(train.beta2),
        "one_b1": F32(1.0 - train.beta1),
        "one_b2": F32(1.0 - train.beta2),
        "bc1": F32(1.0 / (1.0 - train.beta1**t)),
        "bc2": F32(1.0 / (1.0 - train.beta2**t)),
        "lr": F32(lr),
        "eps": F32(train.eps),
        "grad_scale": F32(grad_scale),
        "decay": {name: F32(1.0 - lr * wd) for name, wd in decays.items()},
    }


def adamw(params, grads, m, v, hp):
    """One AdamW step, element-wise in float32 (hp from `adamw_scalars`):

        g  = g · grad_scale                       (global-norm clipping)
        m  = β1·m + (1−β1)·g
        v  = β2·v + (1−β2)·g²
        p  = p·(1 − lr·wd) − lr · (m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + eps)

    Decoupled weight decay, on the old p in the same expression; eps outside
    the square root; wd per tensor by its decay group."""
    new_p, new_m, new_v = {}, {}, {}
    for name in params:
        g = grads[name] * hp["grad_scale"]
        new_m[name] = hp["b1"] * m[name] + hp["one_b1"] * g
        new_v[name] = hp["b2"] * v[name] + hp["one_b2"] * g * g
        mhat, vhat = new_m[name] * hp["bc1"], new_v[name] * hp["bc2"]
        new_p[name] = params[name] * hp["decay"][name] - hp["lr"] * mhat / (jnp.sqrt(vhat) + hp["eps"])
    return new_p, new_m, new_v


# ---------------------------------------------------------------------------
# A trainer: the state a step changes, and the step (Trainer::step).
# ---------------------------------------------------------------------------


class Replica:
    def __init__(self, cfg: Config, params: dict[str, jnp.ndarray]):
        self.cfg = cfg
        self.params = params
        self.m = {k: jnp.zeros_like(p) for k, p in params.items()}
        self.v = {k: jnp.zeros_like(p) for k, p in params.items()}
        self.t = 0  # AdamW steps taken
        self.decays = weight_decays(cfg.shape, cfg.train)
        s = cfg.shape
        self._grad = jax.jit(jax.value_and_grad(lambda p, tok, tgt, msk, drop: loss_and_positions(p, tok, tgt, msk, s, drop), has_aux=True))
        self._adamw = jax.jit(adamw)
        self._eval = jax.jit(lambda p, tok: forward(p, tok, s))

    def step(self, step: int, tokens, targets, mask) -> dict[str, float]:
        """Training step `step` (0-based) on one batch: forward, backward,
        clip, AdamW. Returns what ebb logs for it: loss (Σ per-position f32
        losses in f64 / Σ mask in f64), lr and the unclipped gradient norm."""
        lr = lr_at(self.cfg.train, step)
        drop = dropout_factors(self.cfg, step, tokens.shape[0])
        (_, per), grads = self._grad(self.params, tokens, targets, mask, drop)
        count = float(np.sum(np.asarray(mask, dtype=np.float64)))
        loss = float(np.sum(np.asarray(per, dtype=np.float64))) / count if count > 0 else 0.0
        norm = global_norm(grads)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise FloatingPointError(f"step {step}: loss {loss}, gradient norm {norm}")
        self.t += 1
        hp = adamw_scalars(self.cfg.train, self.t, lr, clip_scale(self.cfg.train, norm), self.decays)
        self.params, self.m, self.v = self._adamw(self.params, grads, self.m, self.v, hp)
        return {"loss": loss, "lr": lr, "grad_norm": norm}

    def evaluate(self, tokens, targets, mask) -> dict[str, float]:
        return evaluate(self._eval(self.params, tokens), targets, mask)


def evaluate(logits, targets, mask) -> dict[str, float]:
    """Evaluator::run on rows of examples (mask 1 on answer tokens and EOS):
    loss = Σ CE over answer tokens / their count; token_acc = share of answer
    tokens whose argmax is the target; exact_match = share of examples with
    every answer token right (teacher-forced, so greedy decoding's verdict);
    p_correct = mean over examples of exp(−Σ CE of its answer)."""
    per = np.asarray(position_losses(logits, targets, mask), dtype=np.float64)
    # ebb takes the argmax of the f32 probabilities (first maximum on ties).
    right = np.asarray(jnp.argmax(jax.nn.softmax(logits, axis=-1), axis=-1) == targets)
    mask = np.asarray(mask) != 0
    tokens = mask.sum()
    row_loss = per.sum(axis=1)
    all_right = np.all(right | ~mask, axis=1)
    return {
        "loss": float(row_loss.sum() / tokens),
        "token_acc": float((right & mask).sum() / tokens),
        "exact_match": float(all_right.mean()),
        "p_correct": float(np.exp(-row_loss).mean()),
    }
