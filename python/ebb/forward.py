"""ebb's forward pass in numpy, written for reading: one function per layer,
shapes in the comments (B batch rows, T positions, C d_model, H heads,
F d_mlp, V vocabulary). It restates `Gpt::forward` (src/model/mod.rs) and
the CPU backend's ops. It computes in float64 by default, a reference
without ebb's float32 rounding: ebb's logits (`ebb eval --logits`) differ
from it by about 1.5e-6 of the logits' largest magnitude.

A row of tokens is what ebb feeds the model: BOS, the example, EOS, then
padding (`ebb tasks export` writes the examples and the token ids)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN_EPS = 1e-5  # ebb's layernorm: (x − mean) / sqrt(var + 1e-5), var over C with 1/C


@dataclass(frozen=True)
class Shape:
    vocab: int
    n_ctx: int
    d_model: int
    n_layers: int
    n_heads: int
    d_mlp: int
    activation: str  # "gelu" (the tanh approximation) or "relu"
    norm: str  # "pre" (LayerNorm before attention, MLP and unembedding) or "none"
    tied_embeddings: bool  # the unembedding is wte


def model_shape(config: dict, weights: dict[str, np.ndarray]) -> Shape:
    """The model's shape from a run's resolved config (`Run.config`); the
    vocabulary from `wte`."""
    m = config["model"]
    return Shape(
        vocab=weights["wte"].shape[0],
        n_ctx=m["n_ctx"],
        d_model=m["d_model"],
        n_layers=m["n_layers"],
        n_heads=m["n_heads"],
        d_mlp=m.get("d_mlp", 4 * m["d_model"]),
        activation=m.get("activation", "gelu"),
        norm=m.get("norm", "pre"),
        tied_embeddings=m.get("tied_embeddings", True),
    )


def embed(w: dict, tokens: np.ndarray) -> np.ndarray:
    """tokens (B,T) → wte[token] + wpe[position] (B,T,C)."""
    t = tokens.shape[1]
    return w["wte"][tokens] + w["wpe"][:t]


def layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x (B,T,C) normalized over C, then scaled and shifted (C)."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * weight + bias


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x (…,in) · weight (out,in)ᵀ + bias (out) → (…,out)."""
    y = x @ weight.T
    return y if bias is None else y + bias


def gelu(x: np.ndarray) -> np.ndarray:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    u = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    return 0.5 * x * (1.0 + np.tanh(u))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def attention(qkv: np.ndarray, n_heads: int) -> np.ndarray:
    """Causal multi-head self-attention: qkv (B,T,3C), q, k and v side by side
    and head h in columns [h·hs, (h+1)·hs) of each → (B,T,C). Padding is not
    masked: ebb's PAD tokens are ordinary keys after the example."""
    b, t, c3 = qkv.shape
    c = c3 // 3
    hs = c // n_heads
    q, k, v = (qkv[..., i * c : (i + 1) * c].reshape(b, t, n_heads, hs).transpose(0, 2, 1, 3) for i in range(3))
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hs))  # (B,H,T,T)
    scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, c)  # (B,T,C)


def block(w: dict, l: int, x: np.ndarray, s: Shape) -> np.ndarray:
    """One transformer block on the residual stream x (B,T,C)."""
    p = lambda name: w[f"h{l}.{name}"]  # noqa: E731
    pre = s.norm == "pre"
    h = layernorm(x, p("ln1.w"), p("ln1.b")) if pre else x
    a = attention(linear(h, p("attn.qkv.w"), p("attn.qkv.b")), s.n_heads)
    x = x + linear(a, p("attn.proj.w"), p("attn.proj.b"))
    h = layernorm(x, p("ln2.w"), p("ln2.b")) if pre else x
    act = gelu if s.activation == "gelu" else relu
    m = act(linear(h, p("mlp.fc.w"), p("mlp.fc.b")))  # (B,T,F)
    return x + linear(m, p("mlp.proj.w"), p("mlp.proj.b"))


def unembed(w: dict, x: np.ndarray, s: Shape) -> np.ndarray:
    """The final norm (pre-norm models) and the unembedding, no bias: (B,T,C) → logits (B,T,V)."""
    if s.norm == "pre":
        x = layernorm(x, w["lnf.w"], w["lnf.b"])
    return linear(x, w["wte"] if s.tied_embeddings else w["unembed.w"])


def forward(weights: dict[str, np.ndarray], config: dict, tokens, dtype=np.float64) -> np.ndarray:
    """The logits (B,T,V) of the model with `weights` (`Run.weights()`) and
    the run's `config` (`Run.config`) on `tokens` (B,T) or (T), computed in
    `dtype` (float32 rounds as ebb does, in another order)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    single = tokens.ndim == 1
    tokens = tokens[None] if single else tokens
    w = {name: np.asarray(t, dtype=dtype) for name, t in weights.items()}
    s = model_shape(config, w)
    if tokens.shape[1] > s.n_ctx:
        raise ValueError(f"{tokens.shape[1]} positions, the model has {s.n_ctx}")
    x = embed(w, tokens)
    for l in range(s.n_layers):
        x = block(w, l, x, s)
    logits = unembed(w, x, s)
    return logits[0] if single else logits
