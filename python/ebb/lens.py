"""An ebb model as a TransformerLens `HookedTransformer`, for activation
patching, probes and the rest of that toolbox. transformer_lens and torch
are imported only here, when asked for."""

from __future__ import annotations

import numpy as np

from .forward import model_shape


def lens_state(weights: dict[str, np.ndarray], config: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """HookedTransformerConfig's arguments and TransformerLens's state dict
    (numpy) for an ebb model. ebb keeps q, k and v in one (3C, C) matrix and
    every weight as (out, in); TransformerLens wants per-head (H, C, hs)
    query, key and value matrices, (H, hs, C) for the output, and (in, out)
    for the MLP and the unembedding."""
    s = model_shape(config, weights)
    c, h = s.d_model, s.n_heads
    hs = c // h
    cfg = dict(
        n_layers=s.n_layers,
        d_model=c,
        n_ctx=s.n_ctx,
        d_head=hs,
        n_heads=h,
        d_mlp=s.d_mlp,
        d_vocab=s.vocab,
        act_fn="gelu_new" if s.activation == "gelu" else "relu",  # gelu_new: the tanh approximation, as ebb's
        normalization_type="LN" if s.norm == "pre" else None,
        eps=1e-5,
        positional_embedding_type="standard",
        default_prepend_bos=False,
    )
    w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    sd = {"embed.W_E": w["wte"], "pos_embed.W_pos": w["wpe"]}
    for l in range(s.n_layers):
        p = lambda name: w[f"h{l}.{name}"]  # noqa: E731
        qkv_w, qkv_b = p("attn.qkv.w"), p("attn.qkv.b")  # (3C, C), (3C)
        for i, name in enumerate("QKV"):
            part = qkv_w[i * c : (i + 1) * c]  # (C_out, C_in), head j in rows [j·hs, (j+1)·hs)
            sd[f"blocks.{l}.attn.W_{name}"] = part.reshape(h, hs, c).transpose(0, 2, 1)  # (H, C, hs)
            sd[f"blocks.{l}.attn.b_{name}"] = qkv_b[i * c : (i + 1) * c].reshape(h, hs)
        sd[f"blocks.{l}.attn.W_O"] = p("attn.proj.w").reshape(c, h, hs).transpose(1, 2, 0)  # (H, hs, C)
        sd[f"blocks.{l}.attn.b_O"] = p("attn.proj.b")
        sd[f"blocks.{l}.mlp.W_in"] = p("mlp.fc.w").T  # (C, F)
        sd[f"blocks.{l}.mlp.b_in"] = p("mlp.fc.b")
        sd[f"blocks.{l}.mlp.W_out"] = p("mlp.proj.w").T  # (F, C)
        sd[f"blocks.{l}.mlp.b_out"] = p("mlp.proj.b")
        if s.norm == "pre":
            for n in ("ln1", "ln2"):
                sd[f"blocks.{l}.{n}.w"], sd[f"blocks.{l}.{n}.b"] = p(f"{n}.w"), p(f"{n}.b")
    if s.norm == "pre":
        sd["ln_final.w"], sd["ln_final.b"] = w["lnf.w"], w["lnf.b"]
    sd["unembed.W_U"] = (w["wte"] if s.tied_embeddings else w["unembed.w"]).T  # (C, V)
    sd["unembed.b_U"] = np.zeros(s.vocab, dtype=np.float32)  # ebb's unembedding has no bias
    return cfg, sd


def to_transformer_lens(run, step: int | None = None, device: str = "cpu"):
    """A `HookedTransformer` with the weights `run` (an `ebb.Run` or a run
    directory) kept after `step` steps (default: the last kept). Feed it
    token rows as ebb does: BOS, the example, EOS (it prepends nothing)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from .run import Run, load_run

    run = run if isinstance(run, Run) else load_run(run)
    cfg, sd = lens_state(run.weights(step), run.config)
    model = HookedTransformer(HookedTransformerConfig(**cfg, device=device))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # What TransformerLens keeps besides the weights (causal masks, IGNORE constants) is not ebb's to set.
    missing = [k for k in missing if not k.endswith(("mask", "IGNORE"))]
    if missing or unexpected:
        raise ValueError(f"weights do not fit HookedTransformer: missing {missing}, unexpected {unexpected}")
    model.eval()
    return model
