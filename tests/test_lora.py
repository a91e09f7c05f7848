"""LoRA: targets, zero start, adapters-off switch (also inside jit), merge for export."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from engine.model import Gemma3, causal_attention_mask, make_positions, model_config
from engine.model.lora import (DEFAULT_TARGET_REGEX, adapters_off, apply_lora, has_lora, lora_disabled,
                               lora_state, merge_lora)
from engine.model.params import export_params

TOKENS = jax.random.randint(jax.random.key(7), (2, 11), 4, 384)


@nnx.jit
def _jit_logits(model, tokens):
    valid = jnp.ones(tokens.shape, bool)
    h, _ = model(tokens, make_positions(valid), causal_attention_mask(valid))
    return model.logits(h)


def _logits(model):
    return np.asarray(_jit_logits(model, TOKENS))


def _randomise_adapters(model, seed=0, std=0.2):
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(lora_state(model)):
        var.set_value(jnp.asarray(rng.normal(0, std, var.shape), var.dtype))


@pytest.fixture(scope="module")
def base():
    return Gemma3(model_config("tiny"), rngs=nnx.Rngs(0))


def _fresh(base):
    graphdef, state = nnx.split(base)
    return nnx.merge(graphdef, state)   # same base arrays, independent module objects


def test_default_targets_wrap_all_six_projections_of_every_layer(base):
    model = _fresh(base)
    wrapped = apply_lora(model, rank=4, alpha=8.0, target_regex=DEFAULT_TARGET_REGEX, rngs=nnx.Rngs(1))
    names = {"attn.q_einsum", "attn.kv_einsum", "attn.attn_vec_einsum", "mlp.gate_proj", "mlp.up_proj",
             "mlp.down_proj"}
    assert set(wrapped) == {f"layers.{i}.{n}" for i in range(4) for n in names}
    flat = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(lora_state(model))}
    assert len(flat) == 2 * len(wrapped)
    assert all(isinstance(v, nnx.LoRAParam) for v in flat.values())
    assert flat["layers.0.attn.q_einsum.lora.lora_a"].shape == (64, 4)
    assert flat["layers.0.attn.q_einsum.lora.lora_b"].shape == (4, 64)
    assert all(not np.any(np.asarray(v[...])) for k, v in flat.items() if k.endswith("lora_b"))
    assert any(np.any(np.asarray(v[...])) for k, v in flat.items() if k.endswith("lora_a"))
    assert model.layers[0].attn.q_einsum.lora_scale == 2.0


def test_custom_regex_and_errors(base):
    model = _fresh(base)
    assert apply_lora(model, 2, 2.0, r"layers\.1\..*q_einsum") == ["layers.1.attn.q_einsum"]
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        apply_lora(model, 2, 2.0, r".*q_einsum")
    with pytest.raises(ValueError, match="matches no projection"):
        apply_lora(_fresh(base), 2, 2.0, r".*nothing")
    with pytest.raises(ValueError, match="rank"):
        apply_lora(_fresh(base), 0, 2.0)


def test_zero_b_gives_exactly_the_base_output(base):
    model = _fresh(base)
    apply_lora(model, rank=4, alpha=32.0, rngs=nnx.Rngs(3))
    np.testing.assert_array_equal(_logits(model), _logits(base))


def test_adapter_output_is_scaled_by_alpha_over_rank(base):
    model = _fresh(base)
    apply_lora(model, rank=2, alpha=6.0, target_regex=r"layers\.0\.attn\.q_einsum")
    _randomise_adapters(model)
    proj = model.layers[0].attn.q_einsum
    x = jax.random.normal(jax.random.key(0), (3, 64))
    a, b, w = (np.asarray(v, np.float64) for v in (proj.lora.lora_a[...], proj.lora.lora_b[...], proj.kernel[...]))
    expected = np.asarray(x, np.float64) @ (w + a @ b * 3.0)
    np.testing.assert_allclose(np.asarray(proj(x)), expected, rtol=1e-4, atol=1e-4)


def test_adapters_off_gives_the_base_output_after_adapters_change(base):
    model = _fresh(base)
    apply_lora(model, rank=4, alpha=8.0, rngs=nnx.Rngs(4))
    _randomise_adapters(model)
    on = _logits(model)
    assert np.abs(on - _logits(base)).max() > 1e-2
    np.testing.assert_array_equal(_logits(adapters_off(model)), _logits(base))
    np.testing.assert_array_equal(_logits(model), on)  # the switch left the model itself unchanged

    graphdef, state = nnx.split(model)

    @jax.jit
    def policy_and_reference(state, tokens):   # how GRPO uses it: one jitted function, one copy of the weights
        valid = jnp.ones(tokens.shape, bool)
        args = (tokens, make_positions(valid), causal_attention_mask(valid))
        pol, ref = nnx.merge(graphdef, state), nnx.merge(graphdef, lora_disabled(state))
        return pol.logits(pol(*args)[0]), ref.logits(ref(*args)[0])

    pol, ref = policy_and_reference(state, TOKENS)
    np.testing.assert_allclose(np.asarray(pol), on, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ref), _logits(base), atol=1e-5, rtol=1e-5)


def test_merge_lora_matches_adapters_on_and_leaves_the_model_alone(base):
    model = _fresh(base)
    apply_lora(model, rank=4, alpha=16.0, rngs=nnx.Rngs(5))
    _randomise_adapters(model, seed=1)
    on = _logits(model)
    merged = merge_lora(model)
    assert not has_lora(merged) and has_lora(model)
    np.testing.assert_allclose(_logits(merged), on, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(_logits(model), on)
    flat, base_flat = export_params(merged), export_params(base)
    assert not np.array_equal(flat["layers.0.attn.q_einsum.kernel"], base_flat["layers.0.attn.q_einsum.kernel"])
    assert np.array_equal(flat["layers.0.attn.q_norm.scale"], base_flat["layers.0.attn.q_norm.scale"])
    assert not any(re.search("lora", k) for k in flat)
