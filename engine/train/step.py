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
from engine.model.gemma3 import causal_attention_mask, make_positions
from engine.model.lora import lora_disabled
from engine.train.fused import fused_token_logprobs


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
    remat: str = "scan-full"     # rematerialisation of decoder layers in the update (see forward_hidden)

    @classmethod
    def from_profile(cls, p: Profile) -> "LossSettings":
        return cls(beta=p.grpo.beta, epsilon=p.grpo.epsilon, epsilon_high=effective_epsilon_high(p.grpo),
                   kl_estimator=p.grpo.kl_estimator, loss_agg=p.grpo.loss_aggregation,
                   temperature=p.generation.temperature, chunk_size=p.training.logprob_chunk_size,
                   max_len=p.generation.max_generation_steps)


@dataclass
class SequenceBatch:
    """Prompts (left-padded) followed by completions (right-padded), as numpy arrays of fixed shapes."""
    prompt_tokens: np.ndarray     # int32 [B, P]
    prompt_valid: np.ndarray      # bool [B, P]
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


REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,      # keep projections, recompute the rest
    "full": jax.checkpoint_policies.nothing_saveable,                       # keep only each layer's input
}
REMAT_MODES = ("none", "dots", "full", "scan-dots", "scan-full")


def _same_structure(layers: list[Any]) -> bool:
    first = nnx.split(layers[0])[0]
    return all(nnx.split(layer)[0] == first for layer in layers[1:])


def forward_hidden(model: Any, tokens: jax.Array, positions: jax.Array, attn_mask: jax.Array, *,
                   remat: str = "none") -> jax.Array:
    """The model's full-sequence forward pass (no cache) -> hidden states after the final norm, [B, T, d].

    The same computation as `Gemma3.__call__` without a cache (a test checks they agree), with the decoder layers
    optionally rematerialised in the backward pass ("dots": keep the projections' outputs, recompute norms,
    activations and attention; "full": keep only each layer's input). With "scan-..." the layers run as one
    `lax.scan` over their weights stacked inside the program: XLA's CPU scheduler keeps an unrolled loop's
    rematerialised activations alive together, a scan bounds them to one layer at a time (at the cost of a
    temporary stacked copy of the layer weights). Layers with different structures (LoRA on some layers only)
    fall back to the unrolled loop."""
    from engine.model.gemma3 import rope_tables

    if remat == "none":
        hidden, _ = model(tokens, positions, attn_mask)
        return hidden
    if remat not in REMAT_MODES:
        raise ValueError(f"remat must be one of {REMAT_MODES}, got {remat!r}")
    cfg = model.cfg
    t = tokens.shape[1]
    slots = jnp.arange(t, dtype=jnp.int32)
    local_ok = (slots[:, None] - slots[None, :]) < cfg.sliding_window
    masks = {False: attn_mask & local_ok[None], True: attn_mask}
    ropes = {False: rope_tables(positions, cfg.head_dim, cfg.local_rope_base, 1.0),
             True: rope_tables(positions, cfg.head_dim, cfg.global_rope_base, cfg.global_rope_scale)}
    layers = list(model.layers)
    scan = remat.startswith("scan-") and _same_structure(layers)
    policy = REMAT_POLICIES[remat.removeprefix("scan-")]
    x = model.embedder.encode(tokens)
    if scan:
        graphdef = nnx.split(layers[0])[0]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.split(layer)[1] for layer in layers])
        is_global = jnp.asarray([cfg.is_global(i) for i in range(len(layers))])

        def body(x: jax.Array, inputs: tuple) -> tuple[jax.Array, None]:
            state, g = inputs
            rope = tuple(jnp.where(g, a, b) for a, b in zip(ropes[True], ropes[False]))
            mask = jnp.where(g, masks[True], masks[False])
            return nnx.merge(graphdef, state)(x, rope, mask, None, None)[0], None

        x, _ = jax.lax.scan(jax.checkpoint(body, policy=policy), x, (stacked, is_global))
        return model.final_norm(x)
    for i, layer in enumerate(layers):
        g = cfg.is_global(i)
        graphdef, state = nnx.split(layer)

        def run_layer(state: Any, x: jax.Array, rope: tuple, mask: jax.Array, graphdef: Any = graphdef) -> jax.Array:
            return nnx.merge(graphdef, state)(x, rope, mask, None, None)[0]

        x = jax.checkpoint(run_layer, policy=policy)(state, x, ropes[g], masks[g])
    return model.final_norm(x)


def completion_logprobs(model: Any, prompt_tokens: jax.Array, prompt_valid: jax.Array, completion: jax.Array,
                        completion_mask: jax.Array, *, temperature: float, chunk_size: int,
                        for_gradient: bool = False, remat: str = "none") -> tuple[jax.Array, jax.Array]:
    """log p and entropy of each completion token given its prompt and the completion before it: f32 [B, C] each.

    Uses temperature-scaled logits and the chunked output layer (the [B, C, vocab] logits never exist at once):
    `engine.grpo.logprobs.token_logprobs` for a forward pass (no entropy), `engine.train.fused` when the result
    is differentiated (it carries its own gradient, one product with the output layer fewer)."""
    tokens = jnp.concatenate([prompt_tokens, completion], axis=1)
    valid = jnp.concatenate([prompt_valid, completion_mask > 0], axis=1)
    hidden = forward_hidden(model, tokens, make_positions(valid), causal_attention_mask(valid), remat=remat)
    p, c = prompt_tokens.shape[1], completion.shape[1]
    before = hidden[:, p - 1:p + c - 1]   # the position before each completion token predicts it
    embedding = model.embedder.input_embedding[...]
    if for_gradient:
        return fused_token_logprobs(before, embedding, completion, temperature, chunk_size)
    return token_logprobs(before, embedding, completion, temperature, chunk_size, compute_entropy=False)


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
              advantages: jax.Array, loss_scale: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
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
        return loss * loss_scale, metrics

    def _update_impl(self, lora: Any, opt_state: Any, base: Any, batch: tuple, old_logp: jax.Array | None,
                     ref_logp: jax.Array | None, advantages: jax.Array, loss_scale: jax.Array) -> tuple:
        grad_fn = jax.grad(self._loss, has_aux=True)
        grads, metrics = grad_fn(lora, base, batch, old_logp, ref_logp, advantages, loss_scale)
        loss = metrics["loss"] * loss_scale
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
               old_logp: np.ndarray | None, ref_logp: np.ndarray | None,
               loss_scale: float = 1.0) -> tuple[Any, Any, dict[str, float]]:
        """One optimizer update; returns (adapters, optimizer state, metrics as floats incl. `finite` 0/1)."""
        new_lora, new_opt, metrics = self._update(
            lora, opt_state, self.base, tuple(jnp.asarray(a) for a in batch.arrays()),
            None if old_logp is None else jnp.asarray(old_logp),
            None if ref_logp is None else jnp.asarray(ref_logp),
            jnp.asarray(advantages, jnp.float32), jnp.asarray(loss_scale, jnp.float32))
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        return new_lora, new_opt, host
