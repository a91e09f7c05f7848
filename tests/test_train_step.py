"""The update and log-probability passes on the tiny model, as pure functions without a Trainer: log-probabilities
agree with the sampler's, the reference is the base model, the update moves only the adapters and in the advantage's
direction, its gradient agrees with finite differences of the loss, repeated updates lower the loss, and a non-finite
update changes nothing (optax.apply_if_finite) while the optimizer state counts it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from engine.config import OptimizerSection
from engine.model.config import model_config
from engine.model.gemma3 import Gemma3
from engine.model.lora import apply_lora, lora_disabled
from engine.sampler import Sampler
from engine.tokenizer import ByteTokenizer
from engine.train.optim import applied_updates, make_optimizer, nonfinite_in_row
from engine.train.records import TrainExample
from engine.train.step import (LossSettings, SequenceBatch, UpdateSpec, grpo_objective, left_pad, policy_logprobs,
                               update)

pytestmark = pytest.mark.slow

TEMPERATURE = 0.8


@pytest.fixture(scope="module")
def setup():
    cfg = model_config("tiny")
    model = Gemma3(cfg, rngs=nnx.Rngs(0))
    base_only = Gemma3(cfg, rngs=nnx.Rngs(0))
    apply_lora(model, 4, 8.0, rngs=nnx.Rngs(1))
    tok = ByteTokenizer()
    prompts = [tok.encode(t, add_bos=True) for t in ("Count: 1 2 3", "Hello there, what is 7 times 6?")]
    prompts = [p for p in prompts for _ in range(2)]               # two groups of two
    sampler = Sampler(model, tok, eos_ids=[1, 106], max_prompt_length=64, max_new_tokens=12)
    out = sampler(prompts, temperature=TEMPERATURE, top_k=0, top_p=1.0, seed=3)
    pt, pv = left_pad(prompts[::2], 40)              # one row per prompt, another padding than the sampler's
    mask = (np.arange(12)[None] < out.lengths[:, None]).astype(np.float32)
    batch = SequenceBatch(pt, pv, out.tokens, mask)
    opt = make_optimizer(OptimizerSection(learning_rate=3e-2, warmup_ratio=0.0, schedule="constant"), 10)
    graphdef, lora, base = nnx.split(model, nnx.LoRAParam, ...)
    spec = UpdateSpec(graphdef, opt, LossSettings(beta=0.04, temperature=TEMPERATURE, chunk_size=7, max_len=12))
    return model, base_only, (lora, base, spec), batch, out, opt


def _example(batch, adv, ref=None, old=None):
    return TrainExample(*batch.arrays(), np.asarray(adv, np.float32), ref_logp=ref, old_logp=old)


def test_logprobs_agree_with_the_sampler_and_the_reference_is_the_base_model(setup):
    model, base_only, (lora, base, spec), batch, out, opt = setup
    m = batch.completion_mask > 0
    logp = np.asarray(policy_logprobs(lora, base, batch.arrays(), spec))
    assert np.allclose(logp[m], out.logprobs[m], atol=2e-4)
    # a base model without adapters, run through the same function
    graphdef_free, _, base_free = nnx.split(base_only, nnx.LoRAParam, ...)
    spec_free = UpdateSpec(graphdef_free, opt, spec.loss)
    expected = np.asarray(policy_logprobs(nnx.State({}), base_free, batch.arrays(), spec_free))
    reference = np.asarray(policy_logprobs(lora_disabled(lora), base, batch.arrays(), spec))
    assert np.allclose(reference, expected, atol=1e-6)


def test_update_moves_only_the_adapters_in_the_advantage_direction(setup):
    model, base_only, (lora, base, spec), batch, out, opt = setup
    base_before = [np.asarray(x).copy() for x in jax.tree.leaves(base)]
    before = np.asarray(policy_logprobs(lora, base, batch.arrays(), spec))
    ref = np.asarray(policy_logprobs(lora_disabled(lora), base, batch.arrays(), spec))
    example = _example(batch, [1.0, -1.0, 1.0, -1.0], ref=ref)
    new_lora, new_opt, metrics = update(lora, opt.init(lora), base, example, spec)
    assert bool(metrics["finite"]) and float(metrics["grad_norm"]) > 0
    assert float(metrics["kl"]) == pytest.approx(0.0, abs=1e-6)        # before the update policy == reference
    assert applied_updates(new_opt) == 1 and nonfinite_in_row(new_opt) == 0
    after = np.asarray(policy_logprobs(new_lora, base, batch.arrays(), spec))
    mask = batch.completion_mask
    delta = ((after - before) * mask).sum(axis=1) / mask.sum(axis=1)
    assert delta[0] > 0 and delta[2] > 0 and delta[1] < 0 and delta[3] < 0
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(base_before, jax.tree.leaves(base)))
    changed = [not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(lora), jax.tree.leaves(new_lora))]
    assert any(changed)


def test_the_gradient_agrees_with_finite_differences_and_updates_lower_the_loss(setup):
    model, base_only, (lora, base, spec), batch, out, opt = setup
    lora = jax.tree.map(lambda a: a + 0.01, lora)      # non-zero adapters: every adapter has a gradient
    ref = np.asarray(policy_logprobs(lora_disabled(lora), base, batch.arrays(), spec))
    old = np.asarray(policy_logprobs(lora, base, batch.arrays(), spec))
    # the old policy is the current one, and the steps below move the ratio far less than the clipping range
    example = _example(batch, [1.0, -1.0, 0.5, -0.5], ref=ref, old=old)
    objective = jax.jit(lambda l: grpo_objective(l, base, example, spec)[0])
    grads = jax.jit(jax.grad(lambda l: grpo_objective(l, base, example, spec)[0]))(lora)
    keys = iter(jax.random.split(jax.random.key(7), 1000))
    direction = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype), lora)
    norm = float(optax.tree.norm(direction))
    direction = jax.tree.map(lambda d: d / norm, direction)     # a unit step in adapter space
    h = 1e-2
    numeric = (float(objective(jax.tree.map(lambda x, d: x + h * d, lora, direction)))
               - float(objective(jax.tree.map(lambda x, d: x - h * d, lora, direction)))) / (2 * h)
    analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    assert abs(analytic) > 1e-3 and numeric == pytest.approx(analytic, rel=2e-2)

    state, losses = opt.init(lora), []
    for _ in range(4):   # the same example again and again: the loss falls
        lora, state, metrics = update(lora, state, base, example, spec)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] and applied_updates(state) == 4


def test_a_non_finite_update_changes_nothing_and_is_counted(setup):
    model, base_only, (lora, base, spec), batch, out, opt = setup
    state = opt.init(lora)
    ref = np.asarray(policy_logprobs(lora_disabled(lora), base, batch.arrays(), spec))
    bad = _example(batch, [1.0, -1.0, np.nan, -0.5], ref=ref)     # e.g. from rewards that overflowed
    new_lora, new_state, metrics = update(lora, state, base, bad, spec)
    assert not bool(metrics["finite"]) and not np.isfinite(float(metrics["loss"]))
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(lora), jax.tree.leaves(new_lora)))
    assert all(np.array_equal(np.asarray(a), np.asarray(b))     # AdamW's moments and count as they were
               for a, b in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(new_state.inner_state)))
    _, twice, _ = update(new_lora, new_state, base, bad, spec)
    assert (nonfinite_in_row(new_state), nonfinite_in_row(twice), applied_updates(twice)) == (1, 2, 0)
    _, good, metrics = update(new_lora, twice, base, _example(batch, [1.0, -1.0, 1.0, -1.0], ref=ref), spec)
    assert bool(metrics["finite"]) and (nonfinite_in_row(good), applied_updates(good)) == (0, 1)


@pytest.mark.parametrize("remat", ["none", "scan-full"])
def test_grouped_rematerialised_forward_equals_the_model_and_its_gradient(setup, remat):
    from engine.model.gemma3 import causal_attention_mask, make_positions
    from engine.train.step import grouped_hidden

    model, base_only, _, batch, out, opt = setup
    graphdef, lora, base = nnx.split(model, nnx.LoRAParam, ...)
    lora = jax.tree.map(lambda a: a + 0.01, lora)            # non-zero adapters, so their gradient is not trivial
    prompt_tokens = np.repeat(batch.prompt_tokens, 2, axis=0)
    prompt_valid = np.repeat(batch.prompt_valid, 2, axis=0)
    tokens = np.concatenate([prompt_tokens, batch.completion], axis=1)
    valid = np.concatenate([prompt_valid, batch.completion_mask > 0], axis=1)
    pos, mask = make_positions(valid), causal_attention_mask(valid)
    p, c = prompt_tokens.shape[1], batch.completion.shape[1]
    predicting = valid.copy()
    predicting[:, p - 1] = True
    predicting = predicting[:, p - 1:p + c - 1]              # positions whose hidden state predicts a token

    def run(lora, mode):
        m = nnx.merge(graphdef, lora, base)
        if mode == "model":
            return m(tokens, pos, mask)[0][:, p - 1:p + c - 1]
        return grouped_hidden(m, batch.prompt_tokens, batch.prompt_valid, batch.completion,
                              batch.completion_mask > 0, remat=mode)

    weights = np.random.default_rng(1).normal(size=(*tokens.shape, model.cfg.embed_dim))

    def loss(lora, mode):   # a random projection (a sum of squares after the final RMSNorm would be ~constant)
        return (run(lora, mode) * weights[:, :c] * predicting[..., None]).sum()

    m = predicting[..., None]
    run, grad = jax.jit(run, static_argnums=1), jax.jit(jax.grad(loss), static_argnums=1)   # compiled: op by op
    assert np.allclose(np.asarray(run(lora, remat)) * m, np.asarray(run(lora, "model")) * m, atol=1e-5)  # is slow
    g_ref, g = grad(lora, "model"), grad(lora, remat)
    assert all(np.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g)))
    assert max(float(np.abs(a).max()) for a in jax.tree.leaves(g)) > 1.0
