"""The jitted phases of a GRPO step after the rollout: completion log-probabilities (reference / old policy) and the
policy update. One jit boundary per phase; shapes are fixed per run, so each compiles once.

The model is split once into (graphdef, adapters, base weights). Only the adapters are differentiated and updated;
the base weights are passed by reference (never copied). The reference model is the same weights with the adapters
set to zero (`engine.model.lora.lora_disabled`), which adds exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from engine.config import Profile, effective_epsilon_high
from engine.grpo.logprobs import token_logprobs
from engine.grpo.loss import grpo_loss
from engine.model.gemma3 import grouped_hidden
from engine.model.lora import lora_disabled


@dataclass(frozen=True)
class LossSettings:
    """Everything static about the loss (closed over by the jitted functions)."""
    beta: float = 0.08
    epsilon: float = 0.2
    epsilon_high: float = 0.2
    kl_estimator: str = "k3"
    loss_agg: str = "sequence-mean-token-mean"
    temperature: float = 1.0
    chunk_size: int = 64
    max_len: int | None = None   # sequence-mean-token-scale divides by this (max_generation_steps)
    remat: str = "scan-full"     # rematerialisation of decoder layers in the update (engine.model.gemma3.run_layers)

    @classmethod
    def from_profile(cls, p: Profile) -> "LossSettings":
        return cls(beta=p.grpo.beta, epsilon=p.grpo.epsilon, epsilon_high=effective_epsilon_high(p.grpo),
                   kl_estimator=p.grpo.kl_estimator, loss_agg=p.grpo.loss_aggregation,
                   temperature=p.generation.temperature, chunk_size=p.training.logprob_chunk_size,
                   max_len=p.generation.max_generation_steps)


@dataclass
class SequenceBatch:
    """Prompts (left-padded) and their completions (right-padded), as numpy arrays of fixed shapes.

    There are N prompts and B = N x G completions, those of prompt n in rows n*G ... n*G + G - 1."""
    prompt_tokens: np.ndarray     # int32 [N, P]
    prompt_valid: np.ndarray      # bool [N, P]
    completion: np.ndarray        # int32 [B, C]
    completion_mask: np.ndarray   # float32 [B, C]: 1 on generated tokens, the EOS included

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.prompt_tokens, self.prompt_valid, self.completion, self.completion_mask


def left_pad(prompts: list[list[int]], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """int32 [B, length] tokens and bool [B, length] validity, each prompt right-aligned (cut from the left)."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    valid = np.zeros((len(prompts), length), bool)
    for i, ids in enumerate(prompts):
        ids = list(ids)[-length:]
        if ids:
            tokens[i, length - len(ids):] = ids
            valid[i, length - len(ids):] = True
    return tokens, valid


def completion_logprobs(model: Any, prompt_tokens: jax.Array, prompt_valid: jax.Array, completion: jax.Array,
                        completion_mask: jax.Array, *, temperature: float, chunk_size: int,
                        for_gradient: bool = False, remat: str = "none") -> tuple[jax.Array, jax.Array]:
    """log p and entropy of each completion token given its prompt and the completion before it: f32 [B, C] each.

    Prompts are [N, P] with B = N x G completions (see `engine.model.gemma3.grouped_hidden`). Uses
    temperature-scaled logits and the chunked output layer (`engine.grpo.logprobs.token_logprobs`: the
    [B, C, vocab] logits never exist at once); the entropy (zeros unless `for_gradient`) is the update's metric."""
    before = grouped_hidden(model, prompt_tokens, prompt_valid, completion, completion_mask > 0, remat=remat)
    return token_logprobs(before, model.embedder.input_embedding[...], completion, temperature, chunk_size,
                          compute_entropy=for_gradient)


class Phases:
    """The reference / old-policy log-probability pass and the update, jitted once for a model and optimizer."""

    def __init__(self, model: Any, optimizer: optax.GradientTransformation, settings: LossSettings):
        self.settings = settings
        self.optimizer = optimizer
        self.graphdef, lora, self.base = nnx.split(model, nnx.LoRAParam, ...)
        self.zero_lora = lora_disabled(lora)
        self._logprobs = jax.jit(self._logprobs_impl)
        self._update = jax.jit(self._update_impl)

    # -- pure functions (traced) --------------------------------------------------------------------------------

    def _logprobs_impl(self, lora: Any, base: Any, prompt_tokens: jax.Array, prompt_valid: jax.Array,
                       completion: jax.Array, completion_mask: jax.Array) -> jax.Array:
        model = nnx.merge(self.graphdef, lora, base)
        s = self.settings
        logp, _ = completion_logprobs(model, prompt_tokens, prompt_valid, completion, completion_mask,
                                      temperature=s.temperature, chunk_size=s.chunk_size)
        return logp

    def _loss(self, lora: Any, base: Any, batch: tuple, old_logp: jax.Array | None, ref_logp: jax.Array | None,
              advantages: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        s = self.settings
        model = nnx.merge(self.graphdef, lora, base)
        prompt_tokens, prompt_valid, completion, mask = batch
        logp, entropy = completion_logprobs(model, prompt_tokens, prompt_valid, completion, mask,
                                            temperature=s.temperature, chunk_size=s.chunk_size, for_gradient=True,
                                            remat=s.remat)
        loss, metrics = grpo_loss(logp, old_logp, ref_logp if s.beta != 0 else None, advantages, mask, beta=s.beta,
                                  epsilon=s.epsilon, epsilon_high=s.epsilon_high, kl_estimator=s.kl_estimator,
                                  loss_agg=s.loss_agg, max_len=s.max_len)
        metrics["entropy"] = (entropy * mask).sum() / jnp.maximum(mask.sum(), 1.0)
        return loss, metrics

    def _update_impl(self, lora: Any, opt_state: Any, base: Any, batch: tuple, old_logp: jax.Array | None,
                     ref_logp: jax.Array | None, advantages: jax.Array) -> tuple:
        grad_fn = jax.grad(self._loss, has_aux=True)
        grads, metrics = grad_fn(lora, base, batch, old_logp, ref_logp, advantages)
        loss = metrics["loss"]
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = self.optimizer.update(grads, opt_state, lora)
        new_lora = optax.apply_updates(lora, updates)
        # A non-finite loss or gradient leaves adapters and optimizer state exactly as they were.
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_lora = jax.tree.map(keep, new_lora, lora)
        new_opt = jax.tree.map(keep, new_opt, opt_state)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
        return new_lora, new_opt, metrics

    # -- host-side calls ----------------------------------------------------------------------------------------

    def logprobs(self, lora: Any, batch: SequenceBatch) -> np.ndarray:
        """Per-token log-probabilities of the completions under `lora` (the old policy), f32 [B, C]."""
        return np.asarray(self._logprobs(lora, self.base, *batch.arrays()))

    def reference_logprobs(self, batch: SequenceBatch) -> np.ndarray:
        """The same under the reference model (adapters off)."""
        return np.asarray(self._logprobs(self.zero_lora, self.base, *batch.arrays()))

    def update(self, lora: Any, opt_state: Any, batch: SequenceBatch, *, advantages: np.ndarray,
               old_logp: np.ndarray | None, ref_logp: np.ndarray | None) -> tuple[Any, Any, dict[str, float]]:
        """One optimizer update; returns (adapters, optimizer state, metrics as floats incl. `finite` 0/1)."""
        new_lora, new_opt, metrics = self._update(
            lora, opt_state, self.base, tuple(jnp.asarray(a) for a in batch.arrays()),
            None if old_logp is None else jnp.asarray(old_logp),
            None if ref_logp is None else jnp.asarray(ref_logp),
            jnp.asarray(advantages, jnp.float32))
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        return new_lora, new_opt, host
