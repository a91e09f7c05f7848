"""The jitted phases of a GRPO step after the rollout: completion log-probabilities (reference / old policy) and the
policy update. One jit boundary per phase; shapes are fixed per run, so each compiles once.

The model is split once into (graphdef, adapters, base weights). Only the adapters are differentiated and updated;
the base weights are passed by reference (never copied). The reference model is the same weights with the adapters
set to zero (`engine.model.lora.lora_disabled`), which adds exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from engine.config import Profile, effective_epsilon_high
from engine.distributed import to_host   # whole on the host, also rows on other processes' devices
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


@dataclass(frozen=True)
class UpdateSpec:
    """What is static about the update and the log-probability pass: the model's structure (its graphdef), the
    optimizer and the loss settings. Hashable: the jitted functions take it as a static argument."""
    graphdef: Any
    optimizer: optax.GradientTransformation
    loss: LossSettings


def grpo_objective(lora: Any, base: Any, example: Any, spec: UpdateSpec) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss of the adapters `lora` on one `TrainExample` (engine.train.records), with its metrics (the
    tokens' mean entropy among them). Differentiable in `lora`."""
    s = spec.loss
    model = nnx.merge(spec.graphdef, lora, base)
    mask = example.completion_mask
    logp, entropy = completion_logprobs(model, example.prompt_tokens, example.prompt_valid, example.completion, mask,
                                        temperature=s.temperature, chunk_size=s.chunk_size, for_gradient=True,
                                        remat=s.remat)
    loss, metrics = grpo_loss(logp, example.old_logp, example.ref_logp if s.beta != 0 else None, example.advantages,
                              mask, beta=s.beta, epsilon=s.epsilon, epsilon_high=s.epsilon_high,
                              kl_estimator=s.kl_estimator, loss_agg=s.loss_agg, max_len=s.max_len)
    metrics["entropy"] = (entropy * mask).sum() / jnp.maximum(mask.sum(), 1.0)
    return loss, metrics


@partial(jax.jit, static_argnames=("spec",))
def update(lora: Any, opt_state: Any, base: Any, example: Any, spec: UpdateSpec) -> tuple[Any, Any, dict]:
    """One optimizer update of the adapters on a `TrainExample`: a pure function -> (adapters, optimizer state,
    metrics: the loss's, `grad_norm` before clipping, `finite`).

    The optimizer (engine.train.optim.make_optimizer) skips a non-finite gradient (`optax.apply_if_finite`): the
    update is zero and its inner state is kept, so the adapters and the AdamW state stay exactly as they were. A
    non-finite loss counts as a non-finite gradient (its gradient is made NaN), so it is skipped the same way."""
    grads, metrics = jax.grad(grpo_objective, has_aux=True)(lora, base, example, spec)
    loss = metrics["loss"]
    grad_norm = optax.tree.norm(grads)
    loss_finite = jnp.isfinite(loss)
    grads = jax.tree.map(lambda g: jnp.where(loss_finite, g, jnp.nan), grads)
    updates, new_opt = spec.optimizer.update(grads, opt_state, lora)
    new_lora = optax.apply_updates(lora, updates)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=loss_finite & jnp.isfinite(grad_norm))
    return new_lora, new_opt, metrics


@partial(jax.jit, static_argnames=("spec",))
def policy_logprobs(lora: Any, base: Any, batch: tuple, spec: UpdateSpec) -> jax.Array:
    """Per-token log-probabilities f32 [B, C] of the completions of `batch` (SequenceBatch.arrays()) under the
    adapters `lora` (the reference model: `lora_disabled(lora)`)."""
    s = spec.loss
    model = nnx.merge(spec.graphdef, lora, base)
    logp, _ = completion_logprobs(model, *batch, temperature=s.temperature, chunk_size=s.chunk_size)
    return logp


class Phases:
    """The update and the log-probability passes for one model and optimizer: holds what they share (the model split
    once into structure, adapters and base weights; the reference's zero adapters) and brings results to the host."""

    def __init__(self, model: Any, optimizer: optax.GradientTransformation, settings: LossSettings, *,
                 mesh: Any = None):
        graphdef, lora, self.base = nnx.split(model, nnx.LoRAParam, ...)
        self.spec = UpdateSpec(graphdef, optimizer, settings)
        self.zero_lora = lora_disabled(lora)
        self.mesh = mesh if mesh is not None and mesh.size > 1 else None   # batches split over its fsdp axis

    def _place(self, arrays: Any) -> Any:
        """Batch arrays (rows first) split over the mesh's `fsdp` axis; as they are on one device."""
        if self.mesh is None:
            return arrays
        from engine.sharding import put_batch

        return jax.tree.map(lambda a: put_batch(a, self.mesh), arrays)

    @property
    def settings(self) -> LossSettings:
        return self.spec.loss

    def logprobs(self, lora: Any, batch: SequenceBatch) -> np.ndarray:
        """Per-token log-probabilities of the completions under `lora` (the old policy), f32 [B, C]."""
        return to_host(policy_logprobs(lora, self.base, self._place(batch.arrays()), self.spec))

    def reference_logprobs(self, batch: SequenceBatch) -> np.ndarray:
        """The same under the reference model (adapters off)."""
        return to_host(policy_logprobs(self.zero_lora, self.base, self._place(batch.arrays()), self.spec))

    def update(self, lora: Any, opt_state: Any, example: Any) -> tuple[Any, Any, dict[str, float]]:
        """`update` on a TrainExample; the metrics as floats (`finite` 0/1)."""
        new_lora, new_opt, metrics = update(lora, opt_state, self.base, self._place(example), self.spec)
        return new_lora, new_opt, {k: float(v) for k, v in jax.device_get(metrics).items()}
