"""Per-token log-probabilities and entropies from the tied output embedding, in chunks, with their own gradient.

The logits of a whole batch ([B, T, 262144] floats for Gemma 3) are never built: positions are processed
`chunk_size` at a time, so no pass holds more than [chunk_size, V] logits. Under differentiation the forward pass
also computes d log p / d hidden = (E[target] - softmax @ E) / T for each chunk and keeps that small [B, T, d]
array; the backward pass only scales it by the incoming cotangent. An update thus multiplies by the V x d output
layer twice (logits, `softmax @ E`), not three times as rematerialising each chunk's logits would. The embedding
is treated as a constant (under LoRA the base weights, the tied output layer included, are frozen): its cotangent
is zero. Without differentiation (the reference and old-policy passes) only the logits product runs.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import Array

from engine import backend

VOCAB_BLOCK = 4096   # rows of the output layer per block of `probs @ embedding` (measured fastest on CPU)


def probs_times_embedding(probs: Array, embedding: Array, block: int = VOCAB_BLOCK) -> Array:
    """`probs @ embedding` ([C, V] x [V, d] -> f32 [C, d]) as a loop over vocabulary blocks.

    XLA's CPU dot for a contraction over 262144 rows runs at about half the speed of the same product split into
    4096-row blocks (each block's weights stay in cache)."""
    vocab, dim = embedding.shape
    if vocab <= block or vocab % block or not backend.cpu_layouts():
        return jnp.einsum("cv,vd->cd", probs, embedding, preferred_element_type=jnp.float32)
    rows = probs.shape[0]

    def body(i: Array, acc: Array) -> Array:
        p = jax.lax.dynamic_slice(probs, (0, i * block), (rows, block))
        e = jax.lax.dynamic_slice(embedding, (i * block, 0), (block, dim))
        return acc + jnp.dot(p, e, preferred_element_type=jnp.float32)

    return jax.lax.fori_loop(0, vocab // block, body, jnp.zeros((rows, dim), jnp.float32))


def _chunk(embedding: Array, inv_t: float, entropy: bool, grad: bool, chunk: tuple[Array, Array]) -> tuple:
    hidden, targets = chunk                                                  # [C, d], [C]
    logits = jnp.einsum("cd,vd->cv", hidden, embedding, preferred_element_type=jnp.float32) * inv_t
    lse = jax.nn.logsumexp(logits, axis=-1)
    out = [jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0] - lse]
    if entropy or grad:
        probs = jnp.exp(logits - lse[:, None])
    out.append(lse - (probs * logits).sum(axis=-1) if entropy else jnp.zeros_like(lse))
    if grad:
        expected = probs_times_embedding(probs, embedding)
        out.append((jnp.take(embedding, targets, axis=0).astype(jnp.float32) - expected) * inv_t)
    return tuple(out)


def _stats(hidden: Array, embedding: Array, targets: Array, temperature: float, chunk_size: int, entropy: bool,
           grad: bool) -> tuple[Array, ...]:
    fn = partial(_chunk, embedding, 1.0 / temperature, entropy, grad)
    return map_position_chunks(fn, hidden, targets, chunk_size)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _token_logprobs(hidden, embedding, targets, temperature, chunk_size, entropy):
    return _stats(hidden, embedding, targets, temperature, chunk_size, entropy, grad=False)


def _fwd(hidden, embedding, targets, temperature, chunk_size, entropy):
    logp, ent, grad = _stats(hidden, embedding, targets, temperature, chunk_size, entropy, grad=True)
    return (logp, ent), grad.astype(hidden.dtype)


def _bwd(temperature, chunk_size, entropy, grad, cotangents):
    g_logp, _ = cotangents                      # the entropy is a metric: no gradient flows through it
    return (g_logp[..., None].astype(grad.dtype) * grad, None, None)


_token_logprobs.defvjp(_fwd, _bwd)


def token_logprobs(hidden: Array, embedding: Array, targets: Array, temperature: float = 1.0,
                   chunk_size: int = 256, *, compute_entropy: bool = True) -> tuple[Array, Array]:
    """log p(targets) and the entropy of each position's distribution, from `softmax(hidden @ embedding.T / T)`.

    hidden: [B, T, d] (final hidden states, already normed); embedding: [V, d] (the tied output layer);
    targets: int [B, T] (the token that follows each position). `chunk_size` is the number of positions (over
    batch x sequence) whose logits exist at once. Returns two f32 [B, T] arrays (the entropy zeros without
    `compute_entropy`). The log-probabilities are differentiable with respect to `hidden`; the entropy and the
    embedding get no gradient."""
    return _token_logprobs(hidden, embedding, targets, float(temperature), int(chunk_size), bool(compute_entropy))


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
