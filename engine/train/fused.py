"""Per-token log-probabilities for the update pass, with their gradient computed in the same chunked pass.

`engine.grpo.logprobs.token_logprobs` rematerialises each chunk's [chunk, vocab] logits in the backward pass, so an
update multiplies by the 262144 x d output layer three times (forward, recompute, gradient). Here the forward pass
also computes d log p / d hidden = (E[target] - softmax @ E) / T for each chunk, keeps that small [B, T, d] array,
and the backward pass only scales it by the incoming cotangent: two products with the output layer instead of
three, and still never more than [chunk, vocab] logits at once. The embedding is treated as a constant (under LoRA
the base weights, the tied output layer included, are frozen); its cotangent is zero. Values equal
`token_logprobs`'s (a test checks values and gradients).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import Array

from engine.grpo.logprobs import map_position_chunks


VOCAB_BLOCK = 4096   # rows of the output layer per block of `probs @ embedding` (measured fastest on CPU)


def probs_times_embedding(probs: Array, embedding: Array, block: int = VOCAB_BLOCK) -> Array:
    """`probs @ embedding` ([C, V] x [V, d] -> f32 [C, d]) as a loop over vocabulary blocks.

    XLA's CPU dot for a contraction over 262144 rows runs at about half the speed of the same product split into
    4096-row blocks (each block's weights stay in cache)."""
    vocab, dim = embedding.shape
    if vocab <= block or vocab % block:
        return jnp.einsum("cv,vd->cd", probs, embedding, preferred_element_type=jnp.float32)
    rows = probs.shape[0]

    def body(i: Array, acc: Array) -> Array:
        p = jax.lax.dynamic_slice(probs, (0, i * block), (rows, block))
        e = jax.lax.dynamic_slice(embedding, (i * block, 0), (block, dim))
        return acc + jnp.dot(p, e, preferred_element_type=jnp.float32)

    return jax.lax.fori_loop(0, vocab // block, body, jnp.zeros((rows, dim), jnp.float32))


def _chunk(embedding: Array, inv_t: float, chunk: tuple[Array, Array]) -> tuple[Array, Array, Array]:
    hidden, targets = chunk                                                  # [C, d], [C]
    logits = jnp.einsum("cd,vd->cv", hidden, embedding, preferred_element_type=jnp.float32) * inv_t
    lse = jax.nn.logsumexp(logits, axis=-1)
    logp = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0] - lse
    probs = jnp.exp(logits - lse[:, None])
    entropy = lse - (probs * logits).sum(axis=-1)
    expected = probs_times_embedding(probs, embedding)
    grad_hidden = (jnp.take(embedding, targets, axis=0).astype(jnp.float32) - expected) * inv_t
    return logp, entropy, grad_hidden


def _stats(hidden: Array, embedding: Array, targets: Array, temperature: float, chunk_size: int):
    logp, entropy, grad = map_position_chunks(partial(_chunk, embedding, 1.0 / temperature), hidden, targets,
                                              chunk_size)
    return logp, entropy, grad.astype(hidden.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def fused_token_logprobs(hidden: Array, embedding: Array, targets: Array, temperature: float = 1.0,
                         chunk_size: int = 64) -> tuple[Array, Array]:
    """log p(targets) and entropy, f32 [B, T] each, from softmax(hidden @ embedding.T / temperature); same
    arguments as `engine.grpo.logprobs.token_logprobs`. Differentiable with respect to `hidden` only."""
    logp, entropy, _ = _stats(hidden, embedding, targets, temperature, chunk_size)
    return logp, entropy


def _fwd(hidden, embedding, targets, temperature, chunk_size):
    logp, entropy, grad = _stats(hidden, embedding, targets, temperature, chunk_size)
    return (logp, entropy), grad


def _bwd(temperature, chunk_size, grad, cotangents):
    g_logp, _ = cotangents                      # the entropy is a metric: no gradient flows through it
    return (g_logp[..., None].astype(grad.dtype) * grad, None, None)


fused_token_logprobs.defvjp(_fwd, _bwd)
