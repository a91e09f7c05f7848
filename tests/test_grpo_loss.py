"""The GRPO loss against an independent NumPy reference written here, and its gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.grpo import KL_ESTIMATORS, LOSS_AGGREGATIONS, completion_mask, grpo_loss, kl_per_token

B, T = 4, 6


def reference_loss(logp, old, ref, adv, lengths, *, beta, eps_low, eps_high, estimator, agg, max_len):
    """Plain-Python GRPO loss: loops over sequences and tokens, float64."""
    per_seq_sums, per_seq_counts, token_values = [], [], []
    for b in range(logp.shape[0]):
        total = 0.0
        for t in range(lengths[b]):
            ratio = np.exp(logp[b, t] - old[b, t])
            clipped_ratio = min(max(ratio, 1 - eps_low), 1 + eps_high)
            policy = max(-adv[b] * ratio, -adv[b] * clipped_ratio)
            x = logp[b, t] - ref[b, t]        # log(pi / ref)
            kl = {"k1": x, "k2": 0.5 * x * x, "k3": np.exp(-x) + x - 1}[estimator]
            value = policy + beta * kl
            total += value
            token_values.append(value)
        per_seq_sums.append(total)
        per_seq_counts.append(lengths[b])
    if agg == "token-mean":
        return sum(token_values) / len(token_values)
    if agg == "sequence-mean-token-mean":
        return np.mean([s / c for s, c in zip(per_seq_sums, per_seq_counts)])
    return np.mean([s / max_len for s in per_seq_sums])


def make_case(seed, off_policy):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.05, 3.0, size=(B, T))
    old = logp + (rng.normal(0, 0.4, size=(B, T)) if off_policy else 0.0)
    ref = logp + rng.normal(0, 0.5, size=(B, T))
    adv = np.array([1.3, -0.7, 0.4, -1.0])
    lengths = np.array([6, 3, 1, 5])
    return logp, old, ref, adv, lengths


CASES = list(itertools.product(LOSS_AGGREGATIONS, KL_ESTIMATORS, [None, 0.28], [False, True]))


@pytest.mark.parametrize("agg, estimator, eps_high, off_policy", CASES)
def test_loss_matches_numpy_reference(agg, estimator, eps_high, off_policy):
    logp, old, ref, adv, lengths = make_case(0, off_policy)
    mask = completion_mask(jnp.asarray(lengths), T)
    max_len = 8 if agg == "sequence-mean-token-scale" else None
    loss, metrics = grpo_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32) if off_policy else None,
                              jnp.asarray(ref, jnp.float32), jnp.asarray(adv, jnp.float32), mask, beta=0.08,
                              epsilon=0.2, epsilon_high=eps_high, kl_estimator=estimator, loss_agg=agg,
                              max_len=max_len)
    expected = reference_loss(logp, old, ref, adv, lengths, beta=0.08, eps_low=0.2,
                              eps_high=0.2 if eps_high is None else eps_high, estimator=estimator, agg=agg,
                              max_len=max_len or T)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5, atol=1e-6)
    policy_only = reference_loss(logp, old, ref, adv, lengths, beta=0.0, eps_low=0.2,
                                 eps_high=0.2 if eps_high is None else eps_high, estimator=estimator, agg=agg,
                                 max_len=max_len or T)
    np.testing.assert_allclose(float(metrics["policy_loss"]), policy_only, rtol=2e-5, atol=1e-6)
    x = [logp[b, t] - ref[b, t] for b in range(B) for t in range(lengths[b])]
    kl_tokens = {"k1": x, "k2": [0.5 * v * v for v in x], "k3": [np.exp(-v) + v - 1 for v in x]}[estimator]
    np.testing.assert_allclose(float(metrics["kl"]), np.mean(kl_tokens), rtol=2e-5, atol=1e-6)
    assert float(metrics["tokens"]) == lengths.sum()


def test_clip_fractions_and_epsilon_high():
    # Ratios exp(logp - old) chosen around the clip range for positive and negative advantages.
    ratios = np.array([[1.25, 1.1, 0.7, 1.0], [0.75, 0.9, 1.3, 1.0]])
    logp = np.full(ratios.shape, -1.0)
    old = logp - np.log(ratios)
    adv = np.array([1.0, -1.0])
    mask = jnp.ones(ratios.shape)
    args = (jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32), None, jnp.asarray(adv, jnp.float32), mask)
    _, m = grpo_loss(*args, beta=0.0, epsilon=0.2)
    assert float(m["clip_fraction_high"]) == pytest.approx(1 / 8)    # 1.25 > 1.2 with A > 0
    assert float(m["clip_fraction_low"]) == pytest.approx(1 / 8)     # 0.75 < 0.8 with A < 0
    assert float(m["clip_fraction"]) == pytest.approx(2 / 8)
    loss_sym, _ = grpo_loss(*args, beta=0.0, epsilon=0.2, loss_agg="token-mean")
    loss_high, m_high = grpo_loss(*args, beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_agg="token-mean")
    assert float(m_high["clip_fraction_high"]) == 0.0               # 1.25 is inside 1 + 0.28
    # A > 0 at ratio 1.25: clipped to 1.2 (loss -1.2) with epsilon_high 0.2, unclipped (-1.25) with 0.28.
    assert float(loss_high) - float(loss_sym) == pytest.approx((-1.25 + 1.2) / 8, abs=1e-6)


def test_kl_estimators_values():
    logp, ref = jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.0])
    x = np.array([0.5, -1.0])
    np.testing.assert_allclose(kl_per_token(logp, ref, "k1"), x, rtol=1e-6)
    np.testing.assert_allclose(kl_per_token(logp, ref, "k2"), 0.5 * x ** 2, rtol=1e-6)
    np.testing.assert_allclose(kl_per_token(logp, ref, "k3"), np.exp(-x) + x - 1, rtol=1e-6)
    assert float(kl_per_token(logp, logp, "k3").sum()) == 0.0
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_per_token(logp, ref, "k4")


def test_completion_mask_includes_eos():
    # A completion of 3 tokens whose third is the EOS token: all three are trained on.
    mask = np.asarray(completion_mask(jnp.array([3, 0, 5]), 5))
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])


@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS)
@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_on_policy_gradient_matches_formula(agg, estimator):
    """One iteration: old = stop_gradient(logp), so d loss / d logp[b,t] = w[b,t] * (-A_b + beta * dKL/dlogp)."""
    logp, _, ref, adv, lengths = make_case(1, off_policy=False)
    mask = completion_mask(jnp.asarray(lengths), T)
    beta = 0.3

    def f(lp):
        return grpo_loss(lp, None, jnp.asarray(ref, jnp.float32), jnp.asarray(adv, jnp.float32), mask, beta=beta,
                         epsilon=0.2, kl_estimator=estimator, loss_agg=agg)[0]

    grad = np.asarray(jax.grad(f)(jnp.asarray(logp, jnp.float32)))
    m = np.asarray(mask)
    if agg == "token-mean":
        weight = m / m.sum()
    elif agg == "sequence-mean-token-mean":
        weight = m / m.sum(axis=1, keepdims=True) / B
    else:
        weight = m / T / B
    x = logp - ref
    dkl = {"k1": np.ones_like(x), "k2": x, "k3": 1 - np.exp(-x)}[estimator]
    expected = weight * (-adv[:, None] + beta * dkl)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS)
def test_off_policy_gradient_matches_finite_differences(agg):
    """num_iterations = 2 style (old fixed and different): jax.grad vs central differences of the NumPy reference."""
    logp, old, ref, adv, lengths = make_case(2, off_policy=True)
    mask = completion_mask(jnp.asarray(lengths), T)
    kwargs = dict(beta=0.08, eps_low=0.2, eps_high=0.28, estimator="k3", agg=agg, max_len=T)

    def f(lp):
        return grpo_loss(lp, jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32),
                         jnp.asarray(adv, jnp.float32), mask, beta=0.08, epsilon=0.2, epsilon_high=0.28,
                         kl_estimator="k3", loss_agg=agg)[0]

    grad = np.asarray(jax.grad(f)(jnp.asarray(logp, jnp.float32)))
    h = 1e-6
    numeric = np.zeros_like(logp)
    for b, t in itertools.product(range(B), range(T)):
        up, down = logp.copy(), logp.copy()
        up[b, t] += h
        down[b, t] -= h
        numeric[b, t] = (reference_loss(up, old, ref, adv, lengths, **kwargs)
                         - reference_loss(down, old, ref, adv, lengths, **kwargs)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-6)
    # Some tokens are clipped (zero policy gradient there) and some are not, so the case exercises both branches.
    ratio = np.exp(logp - old)[np.asarray(mask) > 0]
    assert ((ratio > 1.28) | (ratio < 0.8)).any() and ((ratio < 1.2) & (ratio > 0.8)).any()


def test_ratio_is_one_on_policy_and_loss_is_minus_mean_advantage():
    logp, _, ref, _, lengths = make_case(3, off_policy=False)
    adv = np.array([1.0, 0.5, 0.5, -0.2])
    mask = completion_mask(jnp.asarray(lengths), T)
    loss, m = grpo_loss(jnp.asarray(logp), None, None, jnp.asarray(adv), mask, beta=0.0,
                        loss_agg="sequence-mean-token-mean")
    assert float(m["ratio_mean"]) == pytest.approx(1.0)
    assert float(loss) == pytest.approx(-adv.mean(), rel=1e-6)
    assert float(m["kl"]) == 0.0


def test_beta_without_reference_is_an_error():
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(jnp.zeros((1, 2)), None, None, jnp.zeros(1), jnp.ones((1, 2)), beta=0.1)
    with pytest.raises(ValueError, match="loss_agg"):
        grpo_loss(jnp.zeros((1, 2)), None, None, jnp.zeros(1), jnp.ones((1, 2)), beta=0.0, loss_agg="sum")


def test_jit_compiles_with_static_settings():
    logp, old, ref, adv, lengths = make_case(4, off_policy=True)
    mask = completion_mask(jnp.asarray(lengths), T)
    f = jax.jit(lambda *a: grpo_loss(*a, beta=0.08, epsilon=0.2, epsilon_high=0.28, kl_estimator="k3",
                                     loss_agg="token-mean"))
    loss, metrics = f(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), mask)
    eager, _ = grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), mask, beta=0.08,
                         epsilon=0.2, epsilon_high=0.28, kl_estimator="k3", loss_agg="token-mean")
    assert float(loss) == pytest.approx(float(eager), rel=1e-6)
    assert set(metrics) >= {"loss", "policy_loss", "kl", "clip_fraction", "clip_fraction_low", "clip_fraction_high"}
