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


REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,      # keep projections, recompute the rest
    "full": jax.checkpoint_policies.nothing_saveable,                       # keep only each layer's input
}
REMAT_MODES = ("none", "dots", "full", "scan-dots", "scan-full")


def _same_structure(layers: list[Any]) -> bool:
    first = nnx.split(layers[0])[0]
    return all(nnx.split(layer)[0] == first for layer in layers[1:])


def run_layers(model: Any, x: jax.Array, positions: jax.Array, attn_mask: jax.Array, *, remat: str = "none",
               cache: tuple[jax.Array, jax.Array] | None = None, index: int = 0,
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Embedded tokens x [b, t, d] through every decoder layer, as `Gemma3.__call__` does (a test checks they agree).

    `attn_mask` [b, t, S] is over cache slots; with `cache` = (keys, values) stacked per layer in the model's cache
    layout ([L, b * K, S, h]), the new keys and values are written at slots `index ... index + t - 1` and the
    updated caches are returned.
    `remat` rematerialises layers in the backward pass: "dots" keeps the projections' outputs and recomputes
    norms, activations and attention, "full" keeps only each layer's input. With "scan-..." the layers run as one
    `lax.scan` over their weights stacked inside the program: XLA's CPU scheduler keeps an unrolled loop's
    rematerialised activations alive together, a scan bounds them to one layer at a time (for a temporary stacked
    copy of the layer weights). Layers of different structures (LoRA on some layers only) run unrolled."""
    from engine.model.gemma3 import Cache, layer_inputs

    if remat not in REMAT_MODES:
        raise ValueError(f"remat must be one of {REMAT_MODES}, got {remat!r}")
    cfg = model.cfg
    inputs = layer_inputs(cfg, positions, attn_mask, Cache((), (), jnp.asarray(index, jnp.int32)))
    masks = {False: inputs.local_mask, True: inputs.global_mask}
    ropes = {False: inputs.local_rope, True: inputs.global_rope}
    layers = list(model.layers)
    policy = REMAT_POLICIES.get(remat.removeprefix("scan-"))

    def apply(graphdef: Any, state: Any, x: jax.Array, rope: tuple, mask: jax.Array, kv: tuple | None):
        return nnx.merge(graphdef, state)(x, rope, mask, kv, inputs.index)

    if remat.startswith("scan-") and _same_structure(layers):
        graphdef = nnx.split(layers[0])[0]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.split(layer)[1] for layer in layers])
        is_global = jnp.asarray([cfg.is_global(i) for i in range(len(layers))])

        def body(x: jax.Array, per_layer: tuple) -> tuple[jax.Array, Any]:
            state, g, kv = per_layer
            rope = tuple(jnp.where(g, a, b) for a, b in zip(ropes[True], ropes[False]))
            mask = jnp.where(g, masks[True], masks[False])
            return apply(graphdef, state, x, rope, mask, kv)

        x, new_cache = jax.lax.scan(jax.checkpoint(body, policy=policy), x, (stacked, is_global, cache))
        return x, new_cache
    keys, values = [], []
    for i, layer in enumerate(layers):
        g = cfg.is_global(i)
        graphdef, state = nnx.split(layer)
        kv = (cache[0][i], cache[1][i]) if cache is not None else None
        run = partial(apply, graphdef)
        if policy is not None:
            run = jax.checkpoint(run, policy=policy)
        x, new_kv = run(state, x, ropes[g], masks[g], kv)
        if new_kv is not None:
            keys.append(new_kv[0])
            values.append(new_kv[1])
    return x, ((jnp.stack(keys), jnp.stack(values)) if cache is not None else None)


def forward_hidden(model: Any, tokens: jax.Array, positions: jax.Array, attn_mask: jax.Array, *,
                   remat: str = "none") -> jax.Array:
    """The full-sequence forward pass without a cache -> hidden states after the final norm, [B, T, d]."""
    x, _ = run_layers(model, model.embedder.encode(tokens), positions, attn_mask, remat=remat)
    return model.final_norm(x)


def grouped_hidden(model: Any, prompt_tokens: jax.Array, prompt_valid: jax.Array, completion: jax.Array,
                   completion_valid: jax.Array, *, remat: str = "none") -> jax.Array:
    """Hidden states that predict each completion token, [B, C, d], for B = N x G completions of N prompts.

    Each prompt ([N, P], left-padded) runs once, filling a key/value cache that is then shared by the G
    completions of its group (rows n*G ... n*G + G - 1): the prompt is not recomputed G times, in the forward nor
    in the backward pass. Position P - 1 of a prompt predicts its completions' first token, completion position j
    predicts token j + 1. Equal to a full forward pass over each prompt + completion (a test checks it)."""
    n, p = prompt_tokens.shape
    b, c = completion.shape
    group = b // n
    cfg = model.cfg
    heads = cfg.num_kv_heads
    empty = jnp.zeros((len(model.layers), n * heads, p + c, cfg.head_dim), model.dtype)
    mask_p = jnp.pad(causal_attention_mask(prompt_valid), ((0, 0), (0, 0), (0, c)))
    x_p, (keys, values) = run_layers(model, model.embedder.encode(prompt_tokens), make_positions(prompt_valid),
                                     mask_p, remat=remat, cache=(empty, empty), index=0)
    last = model.final_norm(x_p[:, -1:])                                        # [N, 1, d]
    valid_p = jnp.repeat(prompt_valid, group, axis=0)                           # [B, P]
    positions = make_positions(jnp.concatenate([valid_p, completion_valid], axis=1))[:, p:]
    causal = jnp.arange(c)[:, None] >= jnp.arange(c)[None, :]
    mask_c = jnp.concatenate([jnp.broadcast_to(valid_p[:, None, :], (b, c, p)),
                              completion_valid[:, None, :] & causal[None]], axis=2)     # [B, C, P + C]
    def per_completion(cache: jax.Array) -> jax.Array:   # rows n*K + h -> rows (n*G + g)*K + h
        layers, _, slots, dim = cache.shape
        cache = cache.reshape(layers, n, 1, heads, slots, dim)
        return jnp.broadcast_to(cache, (layers, n, group, heads, slots, dim)).reshape(layers, b * heads, slots, dim)

    cache = (per_completion(keys), per_completion(values))
    x_c, _ = run_layers(model, model.embedder.encode(completion), positions, mask_c, remat=remat, cache=cache,
                        index=p)
    hidden_c = model.final_norm(x_c)
    return jnp.concatenate([jnp.repeat(last, group, axis=0), hidden_c[:, :-1]], axis=1)


def completion_logprobs(model: Any, prompt_tokens: jax.Array, prompt_valid: jax.Array, completion: jax.Array,
                        completion_mask: jax.Array, *, temperature: float, chunk_size: int,
                        for_gradient: bool = False, remat: str = "none") -> tuple[jax.Array, jax.Array]:
    """log p and entropy of each completion token given its prompt and the completion before it: f32 [B, C] each.

    Prompts are [N, P] with B = N x G completions (see `grouped_hidden`). Uses temperature-scaled logits and the
    chunked output layer (the [B, C, vocab] logits never exist at once): `engine.grpo.logprobs.token_logprobs`
    for a forward pass (no entropy), `engine.train.fused` when the result is differentiated (it carries its own
    gradient, one product with the output layer fewer)."""
    before = grouped_hidden(model, prompt_tokens, prompt_valid, completion, completion_mask > 0, remat=remat)
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
