"""Batched KV-cache sampler for Gemma3.

Prompts are left-padded to a bucketed length P (a power of two, at least `min_prompt_bucket`, at most
`max_prompt_length`) and the batch to a bucketed size, so a run compiles one prefill and one decode-chunk
program per (batch bucket, prompt bucket, sampling mode). The cache holds P + max_new_tokens slots.

* prefill: one forward pass over the prompt, logits only at the last position, first token sampled;
* decode: a `lax.while_loop` inside one jitted program (cache and output buffers donated) that runs until a step
  limit given as a traced argument or until every row has produced an EOS id. Partial output is obtained by
  calling the same program again with a later step limit, so `on_partial` costs no recompilation.

The model's state is passed to the programs as an argument on every call (`nnx.split`), so the sampler always
uses the current weights (LoRA adapters included) without recompiling.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.model.gemma3 import Cache, Gemma3, init_cache


@dataclass
class SampleResult:
    """Generated tokens (pad after the end), log-probs of the sampled tokens, lengths, truncated flags."""

    tokens: np.ndarray      # int32 [B, max_new_tokens]
    logprobs: np.ndarray    # float32 [B, max_new_tokens]; log p under logits / temperature, full vocabulary
    lengths: np.ndarray     # int32 [B], EOS counted
    truncated: np.ndarray   # bool [B]: max_new_tokens reached without EOS


@dataclass(frozen=True)
class _Mode:
    """Static (compile-time) sampling settings."""

    max_new: int
    top_k: int          # 0: no top-k
    greedy: bool
    use_top_p: bool
    eos_ids: tuple[int, ...]
    pad_id: int


class _Carry(NamedTuple):
    cache: Cache
    tokens: jax.Array     # int32 [B, N]
    logprobs: jax.Array   # float32 [B, N]
    done: jax.Array       # bool [B]
    lengths: jax.Array    # int32 [B]
    last: jax.Array       # int32 [B]: token to feed next
    step: jax.Array       # int32 []: index of the next token to generate
    pads: jax.Array       # int32 [B]: left-padding per row


def sample_logits(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array, *,
                  top_k: int, greedy: bool, use_top_p: bool) -> tuple[jax.Array, jax.Array]:
    """Pick one token per row from float32 logits [B, V].

    Returns (tokens int32 [B], log-probabilities of those tokens under softmax(logits / temperature) over the
    whole vocabulary). Truncation order: top-k, then top-p (smallest set of the best tokens whose mass reaches
    top_p) renormalised over the kept tokens."""
    vocab = logits.shape[-1]
    inv_t = 1.0 / temperature
    log_z = jax.nn.logsumexp(logits * inv_t, axis=-1)
    if greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        k = top_k if 0 < top_k < vocab else vocab
        if k < vocab:
            vals, idx = jax.lax.top_k(logits, k)
        elif use_top_p:
            idx = jnp.argsort(-logits, axis=-1).astype(jnp.int32)
            vals = jnp.take_along_axis(logits, idx, axis=-1)
        else:
            vals, idx = logits, None
        vals = vals * inv_t
        if use_top_p:
            probs = jax.nn.softmax(vals, axis=-1)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            vals = jnp.where(mass_before < top_p, vals, -jnp.inf)
        choice = jax.random.categorical(key, vals, axis=-1).astype(jnp.int32)
        tokens = choice if idx is None else jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0]
    picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return tokens, picked * inv_t - log_z


def _forward_logits(model: Gemma3, tokens, positions, mask, cache):
    hidden, cache = model(tokens, positions, mask, cache)
    return model.logits(hidden[:, -1]).astype(jnp.float32), cache


def _record(carry: _Carry, tok, lp, mode: _Mode) -> _Carry:
    active = ~carry.done
    tok = jnp.where(active, tok, mode.pad_id).astype(jnp.int32)
    lp = jnp.where(active, lp, 0.0).astype(jnp.float32)
    at = (0, carry.step)
    tokens = jax.lax.dynamic_update_slice(carry.tokens, tok[:, None], at)
    logprobs = jax.lax.dynamic_update_slice(carry.logprobs, lp[:, None], at)
    is_eos = jnp.isin(tok, jnp.asarray(mode.eos_ids, jnp.int32))
    return carry._replace(tokens=tokens, logprobs=logprobs, done=carry.done | (active & is_eos),
                          lengths=carry.lengths + active.astype(jnp.int32), last=tok, step=carry.step + 1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _prefill(graphdef, mode: _Mode, state, tokens, pads, done, key, temperature, top_p) -> _Carry:
    model = nnx.merge(graphdef, state)
    b, p = tokens.shape
    slots = jnp.arange(p, dtype=jnp.int32)
    positions = jnp.maximum(slots[None, :] - pads[:, None], 0)
    cache = init_cache(model.cfg, b, p + mode.max_new, model.dtype)
    s = p + mode.max_new
    key_slots = jnp.arange(s, dtype=jnp.int32)
    mask = (key_slots[None, None, :] >= pads[:, None, None]) & (key_slots[None, None, :] <= slots[None, :, None])
    logits, cache = _forward_logits(model, tokens, positions, mask, cache)
    tok, lp = sample_logits(logits, jax.random.fold_in(key, 0), temperature, top_p, top_k=mode.top_k,
                            greedy=mode.greedy, use_top_p=mode.use_top_p)
    carry = _Carry(cache=cache, tokens=jnp.full((b, mode.max_new), mode.pad_id, jnp.int32),
                   logprobs=jnp.zeros((b, mode.max_new), jnp.float32), done=done,
                   lengths=jnp.zeros((b,), jnp.int32), last=tokens[:, -1], step=jnp.zeros((), jnp.int32),
                   pads=pads)
    return _record(carry, tok, lp, mode)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
def _decode(graphdef, mode: _Mode, state, carry: _Carry, end, key, temperature, top_p) -> _Carry:
    model = nnx.merge(graphdef, state)
    s = carry.cache.k[0].shape[2]
    key_slots = jnp.arange(s, dtype=jnp.int32)

    def cond(c: _Carry):
        return (c.step < end) & ~jnp.all(c.done)

    def body(c: _Carry) -> _Carry:
        slot = c.cache.index
        positions = (slot - c.pads)[:, None]
        mask = ((key_slots[None, :] >= c.pads[:, None]) & (key_slots[None, :] <= slot))[:, None, :]
        logits, cache = _forward_logits(model, c.last[:, None], positions, mask, c.cache)
        tok, lp = sample_logits(logits, jax.random.fold_in(key, c.step), temperature, top_p, top_k=mode.top_k,
                                greedy=mode.greedy, use_top_p=mode.use_top_p)
        return _record(c._replace(cache=cache), tok, lp, mode)

    return jax.lax.while_loop(cond, body, carry)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Sampler:
    """Samples completions from `model` for lists of token-id prompts (see module docstring)."""

    def __init__(self, model: Gemma3, tokenizer: object | None = None, *, eos_ids: Sequence[int],
                 max_prompt_length: int, max_new_tokens: int, min_prompt_bucket: int = 32,
                 min_batch_bucket: int = 1):
        if max_prompt_length < 1 or max_new_tokens < 1:
            raise ValueError("max_prompt_length and max_new_tokens must be >= 1")
        if not eos_ids:
            raise ValueError("eos_ids must name at least one token id")
        self.model = model
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.max_prompt_length = int(max_prompt_length)
        self.max_new_tokens = int(max_new_tokens)
        self.min_prompt_bucket = int(min_prompt_bucket)
        self.min_batch_bucket = int(min_batch_bucket)
        self.pad_id = int(getattr(tokenizer, "pad_id", 0))
        self.bos_id = int(getattr(tokenizer, "bos_id", 2))
        self.programs: set[tuple] = set()  # (batch bucket, prompt bucket, mode) seen: one prefill + one decode each

    def prompt_bucket(self, n: int) -> int:
        """Padded prompt length for a longest prompt of n tokens."""
        return min(max(self.min_prompt_bucket, _next_pow2(n)), self.max_prompt_length)

    def batch_bucket(self, n: int) -> int:
        """Padded batch size for n prompts: powers of two up to 8, then multiples of 8."""
        n = max(n, self.min_batch_bucket)
        return _next_pow2(n) if n <= 8 else -(-n // 8) * 8

    def __call__(self, prompts: list[list[int]], *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0, greedy: bool = False,
                 on_partial: Callable[[list[list[int]]], None] | None = None,
                 partial_every: int = 32) -> SampleResult:
        """Generate up to `max_new_tokens` per prompt. Prompts longer than `max_prompt_length` keep their last
        tokens. `greedy` picks the arg-max (log-probs still use `temperature`; pass 1.0 for the model's own
        distribution). `on_partial` gets each row's tokens so far every `partial_every` steps."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        temperature = float(temperature) if temperature > 0 else 1.0
        n = len(prompts)
        prompts = [list(p)[-self.max_prompt_length:] for p in prompts]
        p_len = self.prompt_bucket(max(len(p) for p in prompts))
        b = self.batch_bucket(n)
        tokens = np.full((b, p_len), self.pad_id, np.int32)
        pads = np.full((b,), p_len - 1, np.int32)
        tokens[n:, -1] = self.bos_id  # filler rows: one token, finished from the start
        for i, p in enumerate(prompts):
            tokens[i, p_len - len(p):] = p
            pads[i] = p_len - len(p)
        done = np.arange(b) >= n
        vocab = self.model.cfg.vocab_size
        mode = _Mode(max_new=self.max_new_tokens, top_k=int(top_k) if 0 < top_k < vocab else 0,
                     greedy=bool(greedy), use_top_p=(not greedy) and top_p < 1.0, eos_ids=self.eos_ids,
                     pad_id=self.pad_id)
        self.programs.add((b, p_len, mode))
        graphdef, state = nnx.split(self.model)
        key = jax.random.key(seed)
        t, tp = jnp.float32(temperature), jnp.float32(top_p)
        carry = _prefill(graphdef, mode, state, jnp.asarray(tokens), jnp.asarray(pads), jnp.asarray(done), key,
                         t, tp)
        every = max(1, int(partial_every)) if on_partial is not None else self.max_new_tokens
        step = 1
        while step < self.max_new_tokens:
            if on_partial is not None:
                on_partial(self._rows(carry, n))
                if bool(jnp.all(carry.done)):
                    break
            step = min(step + every, self.max_new_tokens)
            carry = _decode(graphdef, mode, state, carry, jnp.int32(step), key, t, tp)
        out_tokens, logprobs, lengths, done_out = jax.device_get(
            (carry.tokens, carry.logprobs, carry.lengths, carry.done))
        if on_partial is not None:
            on_partial([list(map(int, out_tokens[i, :lengths[i]])) for i in range(n)])
        return SampleResult(tokens=np.asarray(out_tokens[:n], np.int32),
                            logprobs=np.asarray(logprobs[:n], np.float32),
                            lengths=np.asarray(lengths[:n], np.int32),
                            truncated=~np.asarray(done_out[:n], bool))

    @staticmethod
    def _rows(carry: _Carry, n: int) -> list[list[int]]:
        toks, lengths = jax.device_get((carry.tokens, carry.lengths))
        return [list(map(int, toks[i, :lengths[i]])) for i in range(n)]
