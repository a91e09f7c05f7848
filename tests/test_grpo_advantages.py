"""Group-relative advantages and the zero-spread fraction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.grpo import group_advantages, zero_std_fraction


def test_matches_numpy_with_ddof_1():
    rewards = np.array([1.0, 2.0, 4.0, 9.5, 0.0, 0.0, 3.0, -1.0], np.float32)
    got = np.asarray(group_advantages(jnp.asarray(rewards), 4))
    groups = rewards.reshape(2, 4).astype(np.float64)
    want = ((groups - groups.mean(1, keepdims=True)) / (groups.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Each group's advantages sum to 0 and have sample std ~1.
    np.testing.assert_allclose(got.reshape(2, 4).sum(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(got.reshape(2, 4).std(1, ddof=1), 1.0, rtol=1e-4)


def test_without_std_scaling_and_custom_eps():
    rewards = jnp.array([1.0, 3.0, 10.0, 10.0])
    np.testing.assert_allclose(group_advantages(rewards, 2, scale_by_std=False), [-1.0, 1.0, 0.0, 0.0])
    big_eps = group_advantages(rewards, 2, eps=1.0)
    np.testing.assert_allclose(big_eps[:2], np.array([-1.0, 1.0]) / (np.sqrt(2.0) + 1.0), rtol=1e-6)


def test_equal_rewards_and_single_completions_give_zero():
    np.testing.assert_array_equal(group_advantages(jnp.array([2.0, 2.0, 2.0]), 3), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(group_advantages(jnp.array([5.0, -1.0]), 1), [0.0, 0.0])


def test_zero_std_fraction():
    rewards = jnp.array([1.0, 1.0, 0.0, 2.0, 3.0, 3.0])
    assert float(zero_std_fraction(rewards, 2)) == pytest.approx(2 / 3)
    assert float(zero_std_fraction(rewards, 3)) == 0.0


def test_shape_checks_and_jit():
    with pytest.raises(ValueError, match="multiple"):
        group_advantages(jnp.zeros(5), 2)
    f = jax.jit(lambda r: group_advantages(r, 4))
    np.testing.assert_allclose(f(jnp.arange(8.0)), group_advantages(jnp.arange(8.0), 4))
