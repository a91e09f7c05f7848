"""Chunked per-token log-probabilities and entropies from the tied embedding, against full logits computed here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.grpo import token_logprobs
from engine.grpo.logprobs import probs_times_embedding


def direct(hidden, embedding, targets, temperature):
    logits = jnp.einsum("btd,vd->btv", hidden, embedding) / temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
    return logp, entropy


@pytest.fixture
def small_case():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    hidden = jax.random.normal(keys[0], (2, 5, 8))
    embedding = jax.random.normal(keys[1], (50, 8))
    targets = jax.random.randint(keys[2], (2, 5), 0, 50)
    return hidden, embedding, targets


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 10, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_full_logits(small_case, chunk_size, temperature):
    hidden, embedding, targets = small_case
    logp, entropy = token_logprobs(hidden, embedding, targets, temperature, chunk_size)
    ref_logp, ref_entropy = direct(hidden, embedding, targets, temperature)
    assert logp.shape == entropy.shape == (2, 5)
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy, ref_entropy, rtol=1e-5, atol=1e-4)


def test_temperature_changes_the_distribution(small_case):
    hidden, embedding, targets = small_case
    cold, cold_entropy = token_logprobs(hidden, embedding, targets, 0.5, 4)
    hot, hot_entropy = token_logprobs(hidden, embedding, targets, 2.0, 4)
    assert not np.allclose(cold, hot)
    assert float(hot_entropy.mean()) > float(cold_entropy.mean())


@pytest.mark.parametrize("chunk_size", [3, 10])
def test_gradients_match_full_logits(small_case, chunk_size):
    """The hidden states get the gradient of the full logits; the embedding (frozen under LoRA) gets none."""
    hidden, embedding, targets = small_case
    weights = jax.random.normal(jax.random.PRNGKey(5), (2, 5))

    def chunked(h, e):
        return (token_logprobs(h, e, targets, 0.9, chunk_size)[0] * weights).sum()

    def full(h, e):
        return (direct(h, e, targets, 0.9)[0] * weights).sum()

    got_h, got_e = jax.grad(chunked, argnums=(0, 1))(hidden, embedding)
    np.testing.assert_allclose(got_h, jax.grad(full)(hidden, embedding), rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(got_h).max()) > 0.1 and float(jnp.abs(got_e).max()) == 0.0


def test_gradient_under_jit_and_the_blocked_output_product():
    """The jitted gradient matches too, and `probs @ embedding` as a loop over vocabulary blocks equals the product."""
    r = np.random.default_rng(0)
    vocab, dim = 3 * 64, 16
    emb = jnp.asarray(r.normal(size=(vocab, dim)), jnp.float32)
    hidden = jnp.asarray(r.normal(size=(3, 7, dim)), jnp.float32)
    targets = jnp.asarray(r.integers(0, vocab, (3, 7)))
    weights = jnp.asarray(r.normal(size=(3, 7)), jnp.float32)
    grad = jax.jit(jax.grad(lambda h: (token_logprobs(h, emb, targets, 0.7, 5)[0] * weights).sum()))(hidden)
    want = jax.grad(lambda h: (direct(h, emb, targets, 0.7)[0] * weights).sum())(hidden)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5)
    probs = jax.nn.softmax(jnp.asarray(r.normal(size=(4, vocab)), jnp.float32))
    np.testing.assert_allclose(probs_times_embedding(probs, emb, block=64), probs @ emb, atol=1e-5)   # 3 blocks


def test_entropy_carries_no_gradient(small_case):
    hidden, embedding, targets = small_case
    grad = jax.grad(lambda h: token_logprobs(h, embedding, targets, 1.0, 4)[1].sum())(hidden)
    assert float(jnp.abs(grad).max()) == 0.0


def test_entropy_can_be_skipped(small_case):
    hidden, embedding, targets = small_case
    logp, entropy = token_logprobs(hidden, embedding, targets, 1.0, 4, compute_entropy=False)
    np.testing.assert_allclose(logp, direct(hidden, embedding, targets, 1.0)[0], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(entropy).max()) == 0.0


def test_bf16_inputs_give_f32_outputs(small_case):
    hidden, embedding, targets = small_case
    logp, entropy = token_logprobs(hidden.astype(jnp.bfloat16), embedding.astype(jnp.bfloat16), targets, 1.0, 4)
    assert logp.dtype == entropy.dtype == jnp.float32
    np.testing.assert_allclose(logp, direct(hidden, embedding, targets, 1.0)[0], rtol=0.05, atol=0.1)


def _temp_bytes(fn, *args) -> int:
    return jax.jit(jax.grad(fn, argnums=(0, 1))).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_memory_does_not_scale_with_vocab_times_length():
    """Forward + backward working memory stays near one chunk of logits, far below [B, T, V]."""
    batch, length, vocab, dim, chunk = 2, 256, 32768, 16, 32
    hidden = jnp.ones((batch, length, dim))
    embedding = jnp.ones((vocab, dim))
    targets = jnp.zeros((batch, length), jnp.int32)
    full_logits = batch * length * vocab * 4

    chunked = _temp_bytes(lambda h, e: token_logprobs(h, e, targets, 0.9, chunk)[0].sum(), hidden, embedding)
    unchunked = _temp_bytes(lambda h, e: direct(h, e, targets, 0.9)[0].sum(), hidden, embedding)
    assert unchunked >= full_logits               # the measurement does see a full logits tensor when there is one
    assert chunked <= 4 * chunk * vocab * 4 + embedding.size * 4
    assert chunked < full_logits / 4
