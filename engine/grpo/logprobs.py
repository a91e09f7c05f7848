"""Per-token log-probabilities and entropies from the tied output embedding, in chunks.

The logits of a whole batch ([B, T, 262144] floats for Gemma 3) are never built: positions are processed
`chunk_size` at a time, and each chunk is rematerialised (`jax.checkpoint`) in the backward pass, so neither pass
holds more than [chunk_size, V] logits.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import Array


def _chunk_stats(embedding: Array, temperature: float, compute_entropy: bool,
                 chunk: tuple[Array, Array]) -> tuple[Array, Array]:
    hidden, targets = chunk                                         # [C, d], [C]
    logits = jnp.einsum("cd,vd->cv", hidden, embedding, preferred_element_type=jnp.float32)
    logits = logits / temperature
    lse = jax.nn.logsumexp(logits, axis=-1)                         # [C]
    picked = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    logp = picked - lse
    if compute_entropy:
        # Entropy is a metric only: no gradient flows through it (and none is computed for it).
        sg_logits, sg_lse = jax.lax.stop_gradient(logits), jax.lax.stop_gradient(lse)
        probs = jnp.exp(sg_logits - sg_lse[:, None])
        entropy = sg_lse - (probs * sg_logits).sum(axis=-1)
    else:
        entropy = jnp.zeros_like(logp)
    return logp, entropy


def token_logprobs(hidden: Array, embedding: Array, targets: Array, temperature: float = 1.0,
                   chunk_size: int = 256, *, compute_entropy: bool = True) -> tuple[Array, Array]:
    """log p(targets) and the entropy of each position's distribution, from `softmax(hidden @ embedding.T / T)`.

    hidden: [B, T, d] (final hidden states, already normed); embedding: [V, d] (the tied output layer);
    targets: int [B, T] (the token that follows each position). `chunk_size` is the number of positions (over
    batch × sequence) whose logits exist at once. Returns two f32 [B, T] arrays; the log-probabilities are
    differentiable with respect to `hidden` and `embedding`, the entropy is not (stop-gradient).
    """
    body = jax.checkpoint(partial(_chunk_stats, embedding, temperature, compute_entropy))
    return map_position_chunks(body, hidden, targets, chunk_size)


def map_position_chunks(fn, hidden: Array, targets: Array, chunk_size: int) -> tuple[Array, ...]:
    """`fn((hidden [C, d], targets [C]))` over chunks of C = `chunk_size` of the B x T positions (the last chunk
    padded), one after the other; each of its outputs ([C] or [C, ...]) is put back in [B, T, ...] order."""
    batch, length, dim = hidden.shape
    total = batch * length
    chunk = max(1, min(int(chunk_size), total))
    n_chunks = -(-total // chunk)
    pad = n_chunks * chunk - total
    flat_h = jnp.pad(hidden.reshape(total, dim), ((0, pad), (0, 0))).reshape(n_chunks, chunk, dim)
    flat_t = jnp.pad(targets.reshape(total).astype(jnp.int32), (0, pad)).reshape(n_chunks, chunk)
    outs = jax.lax.map(fn, (flat_h, flat_t))
    return tuple(o.reshape(n_chunks * chunk, *o.shape[2:])[:total].reshape(batch, length, *o.shape[2:])
                 for o in outs)
