"""Group-relative advantages: each completion's reward against the other completions of the same prompt."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def _grouped(rewards: Array, group_size: int) -> Array:
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards must be [N] with N a multiple of group_size {group_size}, got {rewards.shape}")
    return rewards.reshape(-1, group_size)


def group_advantages(rewards: Array, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-6) -> Array:
    """`(r - mean_g) / (std_g + eps)` per group of `group_size` consecutive completions (std with ddof=1, as Tunix);
    with `scale_by_std=False` (Dr. GRPO) just `r - mean_g`. A group of one has advantage 0. Returns f32 [N]."""
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(axis=1, keepdims=True)
    if scale_by_std and group_size > 1:
        std = jnp.sqrt((centred ** 2).sum(axis=1, keepdims=True) / (group_size - 1))
        centred = centred / (std + eps)
    return centred.reshape(-1)


def zero_std_fraction(rewards: Array, group_size: int, *, tol: float = 1e-9) -> Array:
    """Fraction of groups whose rewards are all equal (they teach nothing: every advantage is 0)."""
    grouped = _grouped(rewards, group_size)
    spread = grouped.max(axis=1) - grouped.min(axis=1)
    return (spread <= tol).mean()
