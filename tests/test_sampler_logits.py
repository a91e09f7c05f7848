"""sample_logits against the definitions of greedy, temperature, top-k and top-p on a small vocabulary."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from engine.sampler import sample_logits, top_k_rows

V = 12


@functools.partial(jax.jit, static_argnames=("top_k", "greedy", "use_top_p"))
def _draw(logits, seeds, temperature, top_p, *, top_k, greedy=False, use_top_p=False):
    """One draw per (seed, row): tokens and log-probs of shape [seeds, rows]."""
    def one(seed):
        return sample_logits(logits, jax.random.key(seed), temperature, top_p, top_k=top_k, greedy=greedy,
                             use_top_p=use_top_p)
    return jax.vmap(one)(seeds)


def _logits(rows=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(0, 2.0, (rows, V)), jnp.float32)


SEEDS = jnp.arange(300)


def test_top_k_one_equals_greedy_and_greedy_is_argmax():
    logits = _logits()
    argmax = np.argmax(np.asarray(logits), axis=-1)
    tok1, _ = _draw(logits, SEEDS, 0.9, 1.0, top_k=1)
    greedy, _ = _draw(logits, SEEDS[:3], 0.9, 1.0, top_k=0, greedy=True)
    assert (np.asarray(tok1) == argmax).all() and (np.asarray(greedy) == argmax).all()


def test_top_k_never_samples_outside_the_k_best_and_uses_them():
    logits = _logits(seed=1)
    tokens, _ = _draw(logits, SEEDS, 1.5, 1.0, top_k=3)
    best3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
    tokens = np.asarray(tokens)
    for row in range(logits.shape[0]):
        assert set(tokens[:, row]) <= set(best3[row])
    assert len(set(tokens[:, 0])) == 3  # all three are reachable at a high temperature


def _nucleus(logits_row, temperature, top_p):
    p = np.exp(logits_row / temperature - np.max(logits_row / temperature))
    p /= p.sum()
    order = np.argsort(-p)
    before = np.cumsum(p[order]) - p[order]
    return set(order[before < top_p])


def test_top_p_never_samples_outside_the_nucleus():
    logits = _logits(seed=2)
    for top_p, top_k in [(0.5, 0), (0.8, 0), (0.9, 5), (0.3, 0)]:
        tokens, _ = _draw(logits, SEEDS, 0.8, top_p, top_k=top_k, use_top_p=True)
        tokens = np.asarray(tokens)
        for row in range(logits.shape[0]):
            allowed = _nucleus(np.asarray(logits[row], np.float64), 0.8, top_p)
            if top_k:
                allowed &= set(np.argsort(-np.asarray(logits[row]))[:top_k])
            assert set(tokens[:, row]) <= allowed, (top_p, top_k, row)


def test_logprobs_use_temperature_over_the_full_vocabulary():
    logits = _logits(seed=3)
    for temperature, top_k, use_top_p in [(0.7, 0, False), (1.3, 2, False), (1.0, 0, True)]:
        tokens, logprobs = _draw(logits, SEEDS[:20], temperature, 0.5, top_k=top_k, use_top_p=use_top_p)
        full = jax.nn.log_softmax(logits / temperature, axis=-1)
        expected = np.take_along_axis(np.asarray(full)[None].repeat(20, 0), np.asarray(tokens)[..., None], -1)
        np.testing.assert_allclose(np.asarray(logprobs), expected[..., 0], atol=1e-5)


def test_frequencies_follow_the_tempered_distribution():
    logits = jnp.asarray([[2.0, 1.0, 0.0, -1.0] + [-30.0] * (V - 4)], jnp.float32)
    temperature = 0.5
    tokens, _ = _draw(logits, jnp.arange(4000), temperature, 1.0, top_k=0)
    freq = np.bincount(np.asarray(tokens)[:, 0], minlength=V) / 4000
    expected = np.asarray(jax.nn.softmax(logits[0] / temperature))
    np.testing.assert_allclose(freq, expected, atol=0.03)
    # top-k renormalises over the kept tokens
    tokens, _ = _draw(logits, jnp.arange(4000), 1.0, 1.0, top_k=2)
    freq = np.bincount(np.asarray(tokens)[:, 0], minlength=V) / 4000
    np.testing.assert_allclose(freq[:2], [np.e / (np.e + 1), 1 / (np.e + 1)], atol=0.03)


def test_same_seed_same_tokens_different_seed_different_tokens():
    logits = _logits(rows=64, seed=4)
    a, _ = _draw(logits, jnp.asarray([5]), 1.0, 1.0, top_k=0)
    b, _ = _draw(logits, jnp.asarray([5]), 1.0, 1.0, top_k=0)
    c, _ = _draw(logits, jnp.asarray([6]), 1.0, 1.0, top_k=0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_two_stage_top_k_is_exact_in_both_layouts():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 1, (6, 128 * 64)).astype(np.float32)
    logits[0, 5000:5040] += 10.0          # the whole top k inside one block region
    logits[1, ::128] += 5.0               # each winner in a different block
    logits[2] = np.round(logits[2], 1)    # many equal values
    want_vals, want_idx = jax.lax.top_k(jnp.asarray(logits), 50)
    for vocab_major in (False, True):
        x = jnp.asarray(logits.T if vocab_major else logits)
        vals, idx = jax.jit(top_k_rows, static_argnames=("k", "vocab_major"))(x, k=50, vocab_major=vocab_major)
        np.testing.assert_array_equal(np.asarray(vals), np.asarray(want_vals))
        got = np.asarray(idx)
        np.testing.assert_array_equal(np.take_along_axis(logits, got, 1), np.asarray(want_vals))
        assert all(len(set(r)) == 50 for r in got)
        np.testing.assert_array_equal(got[:2], np.asarray(want_idx)[:2])


def test_vocabulary_major_layout_samples_the_same_tokens():
    logits = jnp.asarray(np.random.default_rng(6).normal(0, 2.0, (8, 128 * 40)), jnp.float32)
    for kw in [dict(top_k=50), dict(top_k=0), dict(top_k=7, use_top_p=True), dict(top_k=0, greedy=True)]:
        a = _draw(logits, SEEDS[:20], 0.8, 0.9, **kw)
        b = _draw_vocab_major(logits.T, SEEDS[:20], 0.8, 0.9, **kw)
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
        np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), atol=1e-5)


@functools.partial(jax.jit, static_argnames=("top_k", "greedy", "use_top_p"))
def _draw_vocab_major(logits_vb, seeds, temperature, top_p, *, top_k, greedy=False, use_top_p=False):
    def one(seed):
        return sample_logits(logits_vb, jax.random.key(seed), temperature, top_p, top_k=top_k, greedy=greedy,
                             use_top_p=use_top_p, vocab_major=True)
    return jax.vmap(one)(seeds)


def test_blocked_normaliser_for_many_rows_gives_full_vocabulary_logprobs():
    logits = jnp.asarray(np.random.default_rng(7).normal(0, 3.0, (32, 512 * 4)), jnp.float32)
    tokens, logprobs = _draw_vocab_major(logits.T, SEEDS[:5], 0.7, 1.0, top_k=5)
    full = np.asarray(jax.nn.log_softmax(logits / 0.7, axis=-1))
    expected = np.take_along_axis(full[None].repeat(5, 0), np.asarray(tokens)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(logprobs), expected, atol=1e-5)
