"""Canonical flat weights <-> model: names, round trip, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from engine.model import Gemma3, causal_attention_mask, make_positions, model_config
from engine.model.lora import apply_lora
from engine.model.params import ParamsError, assign_params, build_model, canonical_shapes, export_params


@nnx.jit
def _jit_logits(model, tokens):
    valid = jnp.ones(tokens.shape, bool)
    h, _ = model(tokens, make_positions(valid), causal_attention_mask(valid))
    return model.logits(h)


def _logits(model, tokens):
    return np.asarray(_jit_logits(model, tokens))


def test_canonical_names_and_shapes_follow_the_contract():
    cfg = model_config("270m")
    shapes = canonical_shapes(cfg)
    d, F, H, K, h = 640, 2048, 4, 1, 256
    per_layer = {
        "pre_attention_norm.scale": (d,), "post_attention_norm.scale": (d,), "pre_ffw_norm.scale": (d,),
        "post_ffw_norm.scale": (d,), "attn.q_norm.scale": (h,), "attn.k_norm.scale": (h,),
        "attn.q_einsum.kernel": (d, H * h), "attn.kv_einsum.kernel": (d, 2 * K * h),
        "attn.attn_vec_einsum.kernel": (H * h, d), "mlp.gate_proj.kernel": (d, F), "mlp.up_proj.kernel": (d, F),
        "mlp.down_proj.kernel": (F, d),
    }
    expected = {"embedder.input_embedding": (262144, d), "final_norm.scale": (d,)}
    for i in range(18):
        expected.update({f"layers.{i}.{k}": v for k, v in per_layer.items()})
    assert shapes == expected


def test_export_then_assign_round_trips_exactly():
    cfg = model_config("tiny")
    src, dst = Gemma3(cfg, rngs=nnx.Rngs(0)), Gemma3(cfg, rngs=nnx.Rngs(1))
    flat = export_params(src)
    assert all(v.dtype == np.float32 for v in flat.values())
    tokens = jax.random.randint(jax.random.key(0), (2, 7), 4, 384)
    assert not np.allclose(_logits(src, tokens), _logits(dst, tokens))
    assign_params(dst, flat)
    np.testing.assert_array_equal(_logits(src, tokens), _logits(dst, tokens))
    again = export_params(dst)
    assert again.keys() == flat.keys() and all(np.array_equal(again[k], flat[k]) for k in flat)
    built = build_model(cfg, flat)
    np.testing.assert_array_equal(_logits(built, tokens), _logits(src, tokens))


def test_export_leaves_out_lora_parameters():
    model = Gemma3(model_config("tiny"), rngs=nnx.Rngs(0))
    names = set(export_params(model))
    apply_lora(model, rank=2, alpha=4.0)
    assert set(export_params(model)) == names


def test_assign_params_casts_to_the_param_dtype():
    cfg = model_config("tiny")
    flat = export_params(Gemma3(cfg, rngs=nnx.Rngs(0)))
    model = build_model(cfg, flat, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    assert model.layers[0].attn.q_einsum.kernel[...].dtype == jnp.bfloat16


def test_missing_unknown_and_misshaped_names_are_reported_by_name():
    cfg = model_config("tiny")
    model = Gemma3(cfg, rngs=nnx.Rngs(0))
    flat = export_params(model)
    before = export_params(model)
    broken = dict(flat)
    del broken["layers.2.mlp.up_proj.kernel"]
    broken["layers.9.attn.q_einsum.kernel"] = np.zeros((64, 64), np.float32)
    broken["final_norm.scale"] = np.zeros((63,), np.float32)
    zeroed = {k: np.zeros_like(v) for k, v in broken.items()}
    with pytest.raises(ParamsError) as err:
        assign_params(model, zeroed)
    text = str(err.value)
    assert "missing 1: layers.2.mlp.up_proj.kernel" in text
    assert "unknown 1: layers.9.attn.q_einsum.kernel" in text
    assert "final_norm.scale: got (63,), expected (64,)" in text
    after = export_params(model)  # nothing was assigned
    assert all(np.array_equal(before[k], after[k]) for k in before)
