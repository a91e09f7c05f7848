"""The jitted phases on the tiny model: log-probabilities agree with the sampler's, the reference is the base model,
the update moves only the adapters and in the advantage's direction, and a non-finite update changes nothing."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from engine.config import OptimizerSection
from engine.model.config import model_config
from engine.model.gemma3 import Gemma3
from engine.model.lora import apply_lora
from engine.sampler import Sampler
from engine.tokenizer import ByteTokenizer
from engine.train.optim import make_optimizer
from engine.train.step import LossSettings, Phases, SequenceBatch, left_pad

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
    phases = Phases(model, opt, LossSettings(beta=0.04, temperature=TEMPERATURE, chunk_size=7, max_len=12))
    return model, base_only, phases, batch, out, opt


def _lora(model):
    return nnx.split(model, nnx.LoRAParam, ...)[1]


def test_logprobs_agree_with_the_sampler_and_the_reference_is_the_base_model(setup):
    model, base_only, phases, batch, out, opt = setup
    m = batch.completion_mask > 0
    logp = phases.logprobs(_lora(model), batch)
    assert np.allclose(logp[m], out.logprobs[m], atol=2e-4)
    # a base model without adapters, run through the same function
    lora_free = Phases(base_only, opt, phases.settings)
    expected = np.asarray(lora_free._logprobs(nnx.State({}), lora_free.base, *batch.arrays()))
    assert np.allclose(phases.reference_logprobs(batch), expected, atol=1e-6)


def test_update_moves_only_the_adapters_in_the_advantage_direction(setup):
    model, base_only, phases, batch, out, opt = setup
    lora = _lora(model)
    base_before = [np.asarray(x).copy() for x in jax.tree.leaves(phases.base)]
    before = phases.logprobs(lora, batch)
    ref = phases.reference_logprobs(batch)
    adv = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
    new_lora, new_opt, metrics = phases.update(lora, opt.init(lora), batch, advantages=adv, old_logp=None,
                                               ref_logp=ref)
    assert metrics["finite"] == 1.0 and metrics["grad_norm"] > 0
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)            # before the update policy == reference
    after = phases.logprobs(new_lora, batch)
    mask = batch.completion_mask
    delta = ((after - before) * mask).sum(axis=1) / mask.sum(axis=1)
    assert delta[0] > 0 and delta[2] > 0 and delta[1] < 0 and delta[3] < 0
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(base_before, jax.tree.leaves(phases.base)))
    assert np.allclose(phases.reference_logprobs(batch), ref)        # the reference did not move
    changed = [not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(lora), jax.tree.leaves(new_lora))]
    assert any(changed)


def test_a_non_finite_update_changes_nothing(setup):
    model, base_only, phases, batch, out, opt = setup
    lora = _lora(model)
    state = opt.init(lora)
    adv = np.array([1.0, -1.0, np.nan, -0.5], np.float32)   # e.g. from rewards that overflowed
    new_lora, new_state, metrics = phases.update(lora, state, batch, advantages=adv, old_logp=None,
                                                 ref_logp=phases.reference_logprobs(batch))
    assert metrics["finite"] == 0.0 and not np.isfinite(metrics["loss"])
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves((lora, state)), jax.tree.leaves((new_lora, new_state))))


@pytest.mark.parametrize("remat", ["none", "scan-full"])
def test_grouped_rematerialised_forward_equals_the_model_and_its_gradient(setup, remat):
    from engine.model.gemma3 import causal_attention_mask, make_positions
    from engine.train.step import grouped_hidden

    model, base_only, phases, batch, out, opt = setup
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
    assert np.allclose(np.asarray(run(lora, remat)) * m, np.asarray(run(lora, "model")) * m, atol=1e-5)
    g_ref, g = jax.grad(loss)(lora, "model"), jax.grad(loss)(lora, remat)
    assert all(np.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g)))
    assert max(float(np.abs(a).max()) for a in jax.tree.leaves(g)) > 1.0
