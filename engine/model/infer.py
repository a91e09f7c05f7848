"""Inference layout of a Gemma3's weights, and the forward pass that uses it (the sampler's fast path).

On this CPU, XLA multiplies a few rows of activations by a weight matrix much faster when the weight is stored
output-major ([out, in], so that `W @ x^T` streams contiguous rows) than in the canonical `x @ W` layout
(measured 1.3-1.7x at batch 8 and 32, equal at batch 1). `prepare` builds that layout (the sampler keeps it while
the weights are unchanged): LoRA adapters folded in, q/kv and gate/up fused into one matrix each, all in the
compute dtype. The embedding is used as it is. `forward` computes exactly what `Gemma3.__call__` computes (same attention code) from it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from engine.model.config import ModelConfig
from engine.model.gemma3 import Cache, Gemma3, Proj, attend, embed_tokens, layer_inputs, rms_norm


class LayerWeights(NamedTuple):
    pre_attention_norm: jax.Array
    post_attention_norm: jax.Array
    pre_ffw_norm: jax.Array
    post_ffw_norm: jax.Array
    q_norm: jax.Array
    k_norm: jax.Array
    qkv: jax.Array        # [H*h + 2*K*h, d]
    out: jax.Array        # [d, H*h]
    gate_up: jax.Array    # [2F, d]
    down: jax.Array       # [d, F]


class InferenceWeights(NamedTuple):
    layers: tuple[LayerWeights, ...]
    final_norm: jax.Array


def _effective_kernel(proj: Proj) -> jax.Array:
    """The projection's kernel [in, out] with its LoRA adapter (if any) folded in, in float32."""
    w = proj.kernel[...].astype(jnp.float32)
    if proj.lora is not None:
        a = proj.lora.lora_a[...].astype(jnp.float32)
        b = proj.lora.lora_b[...].astype(jnp.float32)
        w = w + jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST) * proj.lora_scale
    return w


def prepare(model: Gemma3) -> InferenceWeights:
    """Output-major, fused, LoRA-merged copies of the layer weights (call inside jit)."""
    dt = model.dtype

    def out_major(*projs: Proj) -> jax.Array:
        return jnp.concatenate([_effective_kernel(p) for p in projs], axis=1).T.astype(dt)

    layers = []
    for blk in model.layers:
        at, mlp = blk.attn, blk.mlp
        layers.append(LayerWeights(
            pre_attention_norm=blk.pre_attention_norm.scale[...], post_attention_norm=blk.post_attention_norm.scale[...],
            pre_ffw_norm=blk.pre_ffw_norm.scale[...], post_ffw_norm=blk.post_ffw_norm.scale[...],
            q_norm=at.q_norm.scale[...], k_norm=at.k_norm.scale[...],
            qkv=out_major(at.q_einsum, at.kv_einsum), out=out_major(at.attn_vec_einsum),
            gate_up=out_major(mlp.gate_proj, mlp.up_proj), down=out_major(mlp.down_proj)))
    return InferenceWeights(layers=tuple(layers), final_norm=model.final_norm.scale[...])


def out_major_dot(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., in] times w [out, in] -> [..., out], computed as `w @ x^T` then transposed."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).astype(w.dtype)
    y = jax.lax.dot_general(w, x2, (((1,), (1,)), ((), ())))   # [out, rows]
    # The barrier keeps XLA from folding the transpose back into the product (which would undo the layout).
    return jax.lax.optimization_barrier(y).T.reshape(*lead, w.shape[0])


def forward(cfg: ModelConfig, embedding: jax.Array, w: InferenceWeights, tokens: jax.Array, positions: jax.Array,
            attn_mask: jax.Array, cache: Cache, dtype: jnp.dtype) -> tuple[jax.Array, Cache]:
    """Same contract as `Gemma3.__call__` with a cache: hidden states after the final norm, updated cache."""
    b, t = tokens.shape
    nh, nk, hd, f = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_dim
    inputs = layer_inputs(cfg, positions, attn_mask, cache)
    x = embed_tokens(embedding, tokens, dtype)
    new_k, new_v = [], []
    for i, lw in enumerate(w.layers):
        mask, rope = inputs.for_layer(cfg, i)
        qkv = out_major_dot(rms_norm(x, lw.pre_attention_norm), lw.qkv)
        q = rms_norm(qkv[..., :nh * hd].reshape(b, t, nh, hd), lw.q_norm)
        kv = qkv[..., nh * hd:].reshape(b, t, 2, nk, hd)
        k = rms_norm(kv[:, :, 0], lw.k_norm)
        a, (ck, cv) = attend(q, k, kv[:, :, 1], rope, mask, cfg.query_scale, (cache.k[i], cache.v[i]), inputs.index)
        new_k.append(ck)
        new_v.append(cv)
        x = x + rms_norm(out_major_dot(a, lw.out), lw.post_attention_norm)
        gu = out_major_dot(rms_norm(x, lw.pre_ffw_norm), lw.gate_up)
        h = jax.nn.gelu(gu[..., :f], approximate=True) * gu[..., f:]
        x = x + rms_norm(out_major_dot(h, lw.down), lw.post_ffw_norm)
    x = rms_norm(x, w.final_norm)
    return x, Cache(tuple(new_k), tuple(new_v), inputs.index + t)
