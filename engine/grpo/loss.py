"""The GRPO loss: clipped policy-gradient term plus a KL penalty to the reference, aggregated over tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGREGATIONS = ("token-mean", "sequence-mean-token-mean", "sequence-mean-token-scale")
_MAX_LOG_RATIO = 20.0   # exp(±20) keeps the ratio finite even for wildly stale old log-probabilities


def completion_mask(lengths: Array, max_len: int) -> Array:
    """f32 [B, max_len]: 1 for the first `lengths[b]` tokens of each completion. The sampler's lengths count the EOS
    token, so the EOS is inside the mask and the model is taught to stop."""
    return (jnp.arange(max_len)[None, :] < jnp.asarray(lengths)[:, None]).astype(jnp.float32)


def kl_per_token(logp: Array, ref_logp: Array, estimator: str = "k3") -> Array:
    """Per-token estimate of KL(policy || reference) from sampled tokens.

    k1: `logp - ref`; k2: `0.5 * (logp - ref)^2`; k3: `exp(ref - logp) - (ref - logp) - 1` (never negative; the
    GRPO paper's and TRL's choice, and the default here).
    """
    delta = ref_logp - logp
    if estimator == "k1":
        return -delta
    if estimator == "k2":
        return 0.5 * delta ** 2
    if estimator == "k3":
        return jnp.exp(delta) - delta - 1.0
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def aggregate(values: Array, mask: Array, mode: str, max_len: int | None = None) -> Array:
    """Reduce per-token values [B, T] to a scalar over the masked tokens.

    token-mean: sum over all tokens / number of tokens (DAPO); sequence-mean-token-mean: each sequence's token mean,
    then the mean over sequences (GRPO paper, Tunix); sequence-mean-token-scale: each sequence's token sum / max_len
    (default T), then the mean over sequences (Dr. GRPO).
    """
    masked = values * mask
    if mode == "token-mean":
        return masked.sum() / jnp.maximum(mask.sum(), 1.0)
    if mode == "sequence-mean-token-mean":
        return (masked.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)).mean()
    if mode == "sequence-mean-token-scale":
        scale = values.shape[1] if max_len is None else max_len
        return (masked.sum(axis=1) / scale).mean()
    raise ValueError(f"loss_agg must be one of {LOSS_AGGREGATIONS}, got {mode!r}")


def _masked_mean(values: Array, mask: Array) -> Array:
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def grpo_loss(logp: Array, old_logp: Array | None, ref_logp: Array | None, advantages: Array, mask: Array, *,
              beta: float = 0.08, epsilon: float = 0.2, epsilon_high: float | None = None, kl_estimator: str = "k3",
              loss_agg: str = "sequence-mean-token-mean", max_len: int | None = None) -> tuple[Array, dict[str, Array]]:
    """The GRPO objective to minimise, and its metrics.

    logp: f32 [B, T] log-probabilities of the completion tokens under the current policy (differentiable);
    old_logp: the same under the policy that sampled them (num_iterations > 1: taken once before the updates), or
    None for `stop_gradient(logp)` (one iteration: the ratio is 1 but its gradient is the policy gradient);
    ref_logp: under the reference (adapters off), or None when beta == 0; advantages: f32 [B]; mask: [B, T] (1 on
    completion tokens, EOS included). epsilon / epsilon_high clip the ratio to [1 - epsilon, 1 + epsilon_high]
    (epsilon_high defaults to epsilon).

    Per token: `max(-A * ratio, -A * clip(ratio)) + beta * KL`, aggregated by `loss_agg` (see `aggregate`).
    Metrics: loss, policy_loss (aggregated like the loss), kl (token mean), clip_fraction_low (ratio below
    1 - epsilon with A < 0), clip_fraction_high (ratio above 1 + epsilon_high with A > 0), clip_fraction (either),
    ratio_mean, ratio_max, advantage_mean, tokens.
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.astype(jnp.float32)
    logp = logp.astype(jnp.float32)
    old = jax.lax.stop_gradient(logp) if old_logp is None else jax.lax.stop_gradient(old_logp.astype(jnp.float32))
    adv = jnp.asarray(advantages, jnp.float32)[:, None]
    log_ratio = jnp.clip(logp - old, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
    policy_per_token = jnp.maximum(unclipped, clipped)
    policy_loss = aggregate(policy_per_token, mask, loss_agg, max_len)
    loss = policy_loss
    metrics: dict[str, Array] = {}
    if ref_logp is not None:
        kl = kl_per_token(logp, jax.lax.stop_gradient(ref_logp.astype(jnp.float32)), kl_estimator)
        if beta != 0.0:
            loss = loss + beta * aggregate(kl, mask, loss_agg, max_len)
        metrics["kl"] = _masked_mean(kl, mask)
    elif beta != 0.0:
        raise ValueError("ref_logp is required when beta != 0")
    else:
        metrics["kl"] = jnp.zeros((), jnp.float32)
    low = ((ratio < 1.0 - epsilon) & (adv < 0)).astype(jnp.float32)
    high = ((ratio > 1.0 + epsilon_high) & (adv > 0)).astype(jnp.float32)
    metrics.update(
        loss=loss,
        policy_loss=policy_loss,
        clip_fraction_low=_masked_mean(low, mask),
        clip_fraction_high=_masked_mean(high, mask),
        clip_fraction=_masked_mean(jnp.maximum(low, high), mask),
        ratio_mean=jax.lax.stop_gradient(_masked_mean(ratio, mask)),
        ratio_max=jax.lax.stop_gradient(jnp.max(jnp.where(mask > 0, ratio, 0.0))),
        advantage_mean=adv.mean(),
        tokens=mask.sum(),
    )
    metrics = {k: jax.lax.stop_gradient(v) if k != "loss" else v for k, v in metrics.items()}
    return loss, metrics
