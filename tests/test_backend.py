"""Backend-aware layouts: the CPU-tuned forms (re-laid-out sampler weights, vocabulary-major logits, the blocked
`probs @ embedding`) are taken on the CPU backend only, other backends compute the same values in the plain forms;
adapters are float32 master weights whatever the model's dtype."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from engine import backend
from engine.grpo.logprobs import probs_times_embedding
from engine.model import Gemma3, model_config
from engine.profile_io import load_profile
from engine.sampler import Sampler, last_logits
from engine.train.optim import make_optimizer
from engine.train.setup import load_policy

PROMPTS = [[2, 40, 41, 42], [2, 50, 51], [2, 60], [2, 70, 71, 72, 73], [2, 80, 81]]


def _accelerator(monkeypatch):
    monkeypatch.setattr(backend, "platform", lambda: "gpu")


def test_the_cpu_layouts_are_chosen_on_the_cpu_backend_only(monkeypatch):
    assert backend.platform() == "cpu" and backend.cpu_layouts()
    emb, hidden = jnp.ones((64, 8)), jnp.ones((5, 8))
    assert last_logits(emb, hidden, jnp.float32)[1] is True          # vocabulary-major [V, B] on the CPU
    _accelerator(monkeypatch)
    assert not backend.cpu_layouts()
    logits, vocab_major = last_logits(emb, hidden, jnp.float32)
    assert vocab_major is False and logits.shape == (5, 64)


def test_the_blocked_product_and_the_plain_one_agree(monkeypatch):
    rng = np.random.default_rng(0)
    probs = jnp.asarray(rng.random((3, 8192)), jnp.float32)
    emb = jnp.asarray(rng.standard_normal((8192, 16)), jnp.float32)
    blocked = probs_times_embedding(probs, emb, block=1024)
    _accelerator(monkeypatch)
    plain = probs_times_embedding(probs, emb, block=1024)
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(plain), rtol=2e-5, atol=2e-4)


def test_the_sampler_gives_the_same_completions_in_either_layout(monkeypatch):
    model = Gemma3(dataclasses.replace(model_config("tiny"), sliding_window=8), rngs=nnx.Rngs(3))
    args = dict(eos_ids=[1], max_prompt_length=16, max_new_tokens=12)
    cpu = Sampler(model, None, **args)(PROMPTS, greedy=True, temperature=1.0)
    _accelerator(monkeypatch)
    plain = Sampler(model, None, **args)(PROMPTS, greedy=True, temperature=1.0)
    np.testing.assert_array_equal(cpu.tokens, plain.tokens)
    np.testing.assert_allclose(cpu.logprobs, plain.logprobs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_adapters_and_optimizer_state_are_float32_master_weights(dtype):
    p = load_profile("profiles/tiny.toml", [f"model.dtype={dtype}", "model.weight_source=random"])
    model, _ = load_policy(p)
    base = model.embedder.input_embedding[...].dtype
    assert base == jnp.dtype(dtype)
    lora = nnx.state(model, nnx.LoRAParam)
    assert {leaf.dtype for leaf in jax.tree.leaves(lora)} == {jnp.dtype(jnp.float32)}
    opt_state = make_optimizer(p.optimizer, 10).init(lora)
    floats = {leaf.dtype for leaf in jax.tree.leaves(opt_state) if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert floats == {jnp.dtype(jnp.float32)}
    h, _ = model(jnp.asarray([[2, 40, 41]]), jnp.asarray([[0, 1, 2]]),
                 jnp.tril(jnp.ones((1, 3, 3), bool)))
    assert h.dtype == jnp.dtype(dtype)    # the adapters compute in the model's dtype
