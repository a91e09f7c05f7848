"""Batched KV-cache sampler for Gemma3.

Prompts are left-padded to a bucketed length P (a power of two, at least `min_prompt_bucket`, at most
`max_prompt_length`) and the batch to a bucketed size, so a run compiles one decode-chunk program per (batch
bucket, prompt bucket, sampling mode), and one prefill per those and the bucket of the number of distinct prompts
(fixed in a GRPO run: its prompts per step). The cache holds P + max_new_tokens slots.

* prefill: one forward pass over each distinct prompt (rows with the same prompt, as GRPO's G completions of one
  prompt, share its cache), logits only at the last position, first token sampled per row;
* decode: a `lax.while_loop` inside one jitted program (cache and output buffers donated) that runs until a step
  limit given as a traced argument or until every row has produced an EOS id or ended with one of the stop
  sequences (kept in the output). Partial output is obtained by calling the same program again with a later step
  limit, so `on_partial` costs no recompilation.

Each call reads the model's current state (`nnx.split`) and passes it to the programs as an argument, so
training updates (LoRA included) are seen without recompiling. For 4+ rows (or with `fast_weights=True`) the
layer weights are first rearranged by `engine.model.infer.prepare` (LoRA folded in, output-major, fused
projections), the layout XLA's CPU matmuls handle fastest for a few rows; the copy is reused while the model
holds the same arrays. The output layer for 4+ rows gives vocabulary-major logits [V, B] that the sampling code
reads in place (full-vocabulary log-sum-exp and a two-stage exact top-k, never a [B, V] transpose or sort).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from engine import backend
from engine.buckets import batch_bucket, next_pow2
from engine.distributed import to_host   # jax.device_get, also of rows on other processes' devices
from engine.model import infer
from engine.model.config import ModelConfig
from engine.model.gemma3 import Cache, Gemma3, init_cache
from engine.sharding import constrain_cache, mesh_of, put_batch


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
    stop_seqs: tuple[tuple[int, ...], ...] = ()   # token sequences that end a completion (kept in it)


class _Carry(NamedTuple):
    cache: Cache
    tokens: jax.Array     # int32 [B, N]
    logprobs: jax.Array   # float32 [B, N]
    done: jax.Array       # bool [B]
    lengths: jax.Array    # int32 [B]
    last: jax.Array       # int32 [B]: token to feed next
    step: jax.Array       # int32 []: index of the next token to generate
    pads: jax.Array       # int32 [B]: left-padding per row


TOP_K_CHUNK = 128


def top_k_rows(logits: jax.Array, k: int, *, vocab_major: bool = False) -> tuple[jax.Array, jax.Array]:
    """Exact top-k of every row: (values [B, k] in descending order, vocabulary ids [B, k]).

    `logits` is [B, V], or [V, B] when `vocab_major`. For a large vocabulary the search runs in two stages:
    the maximum of each block of TOP_K_CHUNK entries, the k best blocks, then the k best entries among those
    blocks. Every entry of the true top k lies in one of the k blocks with the largest maxima, so the result is
    exact (up to the order of equal values), and it reads the logits once instead of sorting them."""
    vocab, rows = logits.shape if vocab_major else logits.shape[::-1]
    chunk = TOP_K_CHUNK
    if vocab % chunk or vocab < 4 * k * chunk:
        return jax.lax.top_k(logits.T if vocab_major else logits, k)
    n_chunks = vocab // chunk
    if vocab_major:
        blocks = logits.reshape(n_chunks, chunk, rows)
        _, best = jax.lax.top_k(jnp.max(blocks, axis=1).T, k)                       # [B, k] block ids
        cand = blocks[best, :, jnp.arange(rows)[:, None]]                           # [B, k, chunk]
    else:
        blocks = logits.reshape(rows, n_chunks, chunk)
        _, best = jax.lax.top_k(jnp.max(blocks, axis=2), k)
        cand = jnp.take_along_axis(blocks, best[:, :, None], axis=1)
    vals, j = jax.lax.top_k(cand.reshape(rows, k * chunk), k)
    block = jnp.take_along_axis(best, j // chunk, axis=1)
    return vals, (block * chunk + j % chunk).astype(jnp.int32)


def _log_normaliser(logits: jax.Array, inv_t: jax.Array, vocab_major: bool) -> jax.Array:
    """logsumexp(logits * inv_t) over the vocabulary, per row.

    For many vocabulary-major rows the sum runs over blocks of 512 entries first: XLA's CPU reduction over the
    long axis of [V, B] is several times slower than the blocked form at 32 rows (and faster below 24)."""
    if not vocab_major or logits.shape[1] < 24 or logits.shape[0] % 512:
        return jax.nn.logsumexp(logits * inv_t, axis=0 if vocab_major else 1)
    m = jnp.max(logits, axis=0)
    e = jnp.exp((logits - m) * inv_t).reshape(logits.shape[0] // 512, 512, logits.shape[1])
    return jnp.log(jnp.sum(jnp.sum(e, axis=1), axis=0)) + m * inv_t


def sample_logits(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array, *,
                  top_k: int, greedy: bool, use_top_p: bool, vocab_major: bool = False,
                  ) -> tuple[jax.Array, jax.Array]:
    """Pick one token per row from float32 logits [B, V] ([V, B] when `vocab_major`).

    Returns (tokens int32 [B], log-probabilities of those tokens under softmax(logits / temperature) over the
    whole vocabulary). Truncation order: top-k, then top-p (smallest set of the best tokens whose mass reaches
    top_p) renormalised over the kept tokens."""
    v_axis = 0 if vocab_major else 1
    vocab, rows = logits.shape[v_axis], logits.shape[1 - v_axis]
    inv_t = 1.0 / temperature
    log_z = _log_normaliser(logits, inv_t, vocab_major)
    if greedy:
        tokens = jnp.argmax(logits, axis=v_axis).astype(jnp.int32)
    elif 0 < top_k < vocab or use_top_p:
        if 0 < top_k < vocab:
            vals, idx = top_k_rows(logits, top_k, vocab_major=vocab_major)
        else:
            by_row = logits.T if vocab_major else logits
            idx = jnp.argsort(-by_row, axis=-1).astype(jnp.int32)
            vals = jnp.take_along_axis(by_row, idx, axis=-1)
        vals = vals * inv_t
        if use_top_p:
            probs = jax.nn.softmax(vals, axis=-1)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            vals = jnp.where(mass_before < top_p, vals, -jnp.inf)
        choice = jax.random.categorical(key, vals, axis=-1).astype(jnp.int32)
        tokens = jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0]
    else:
        by_row = logits.T if vocab_major else logits   # same random draws in both layouts
        tokens = jax.random.categorical(key, by_row * inv_t, axis=-1).astype(jnp.int32)
    if vocab_major:
        picked = logits[tokens, jnp.arange(rows)]
    else:
        picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return tokens, picked * inv_t - log_z


# From this many rows on, the output layer is computed as embedding @ hidden^T, giving vocabulary-major logits
# [V, B] that the sampling code reads in that layout: XLA's CPU matmul streams the [V, d] embedding far better that
# way than as hidden @ embedding^T (measured: about 1.6x at batch 8 and 1.4x at batch 32; slower at batch 1). CPU only:
# other backends take the plain form (engine/backend.py).
VOCAB_MAJOR_MIN_ROWS = 4


def last_logits(embedding: jax.Array, hidden: jax.Array, dtype: jnp.dtype) -> tuple[jax.Array, bool]:
    """float32 logits for hidden states [B, d] through the tied embedding [V, d]: ([B, V] or [V, B], vocab_major)."""
    emb = embedding.astype(dtype)
    h = hidden.astype(dtype)
    if hidden.shape[0] < VOCAB_MAJOR_MIN_ROWS or not backend.cpu_layouts():
        return jnp.dot(h, emb.T).astype(jnp.float32), False
    return jax.lax.dot_general(emb, h, (((1,), (1,)), ((), ()))).astype(jnp.float32), True


@dataclass(frozen=True)
class _Static:
    """Everything the compiled programs specialise on besides shapes."""

    cfg: ModelConfig
    dtype: jnp.dtype
    graphdef: object | None   # None: fast path over `infer.prepare` weights; else the model's own forward
    mode: _Mode
    mesh: Mesh | None = None  # the weights' mesh (engine/sharding.py): batch and cache rows split over its fsdp


def _forward_logits(st: _Static, params, tokens, positions, mask, cache):
    """Logits at the last position and the updated cache. params: (embedding, InferenceWeights) or model state."""
    if st.graphdef is None:
        embedding, weights = params
        hidden, cache = infer.forward(st.cfg, embedding, weights, tokens, positions, mask, cache, st.dtype)
    else:
        model = nnx.merge(st.graphdef, params)
        embedding = model.embedder.input_embedding[...]
        hidden, cache = model(tokens, positions, mask, cache)
    return last_logits(embedding, hidden[:, -1], st.dtype), cache


def _record(carry: _Carry, tok, lp, mode: _Mode) -> _Carry:
    active = ~carry.done
    tok = jnp.where(active, tok, mode.pad_id).astype(jnp.int32)
    lp = jnp.where(active, lp, 0.0).astype(jnp.float32)
    at = (0, carry.step)
    tokens = jax.lax.dynamic_update_slice(carry.tokens, tok[:, None], at)
    logprobs = jax.lax.dynamic_update_slice(carry.logprobs, lp[:, None], at)
    ends = jnp.isin(tok, jnp.asarray(mode.eos_ids, jnp.int32))
    ends = ends | _ends_with_stop(tokens, carry.step, mode.stop_seqs)
    return carry._replace(tokens=tokens, logprobs=logprobs, done=carry.done | (active & ends),
                          lengths=carry.lengths + active.astype(jnp.int32), last=tok, step=carry.step + 1)


def _ends_with_stop(tokens: jax.Array, step: jax.Array, stop_seqs: tuple[tuple[int, ...], ...]) -> jax.Array:
    """bool [B]: the row's tokens up to index `step` end with one of `stop_seqs`."""
    hit = jnp.zeros(tokens.shape[0], bool)
    for seq in stop_seqs:
        n = len(seq)
        if n > tokens.shape[1]:   # longer than a whole completion: it cannot end one
            continue
        window = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(step - (n - 1), 0), n, axis=1)
        hit = hit | (jnp.all(window == jnp.asarray(seq, jnp.int32)[None, :], axis=1) & (step >= n - 1))
    return hit


@functools.partial(jax.jit, static_argnums=(0,))
def _prepare(graphdef, state) -> infer.InferenceWeights:
    return infer.prepare(nnx.merge(graphdef, state))


def _rows_of(cache: Cache, src: jax.Array, kv_heads: int) -> Cache:
    """The cache of rows `src` ([b] indices) of a cache of u rows (each row is `kv_heads` consecutive entries)."""
    def take(x: jax.Array) -> jax.Array:
        rows, slots, dim = x.shape
        return x.reshape(rows // kv_heads, kv_heads, slots, dim)[src].reshape(-1, slots, dim)
    return Cache(tuple(take(k) for k in cache.k), tuple(take(v) for v in cache.v), cache.index)


@functools.partial(jax.jit, static_argnums=(0,))
def _prefill(st: _Static, params, tokens, pads, src, done, key, temperature, top_p) -> _Carry:
    """Prefill the u distinct prompts `tokens` [u, P] once, then give each of the b rows the cache and the
    last-position logits of its prompt (`src` [b]) and sample its first token."""
    mode = st.mode
    u, p = tokens.shape
    b = src.shape[0]
    slots = jnp.arange(p, dtype=jnp.int32)
    positions = jnp.maximum(slots[None, :] - pads[:, None], 0)
    cache = init_cache(st.cfg, u, p + mode.max_new, st.dtype)
    s = p + mode.max_new
    key_slots = jnp.arange(s, dtype=jnp.int32)
    mask = (key_slots[None, None, :] >= pads[:, None, None]) & (key_slots[None, None, :] <= slots[None, :, None])
    if st.mesh is not None:
        cache = constrain_cache(cache, st.mesh)
    (logits, vocab_major), cache = _forward_logits(st, params, tokens, positions, mask, cache)
    logits = logits[:, src] if vocab_major else logits[src]
    cache = _rows_of(cache, src, st.cfg.num_kv_heads)
    if st.mesh is not None:
        cache = constrain_cache(cache, st.mesh)
    tokens, pads = tokens[src], pads[src]
    tok, lp = sample_logits(logits, jax.random.fold_in(key, 0), temperature, top_p, top_k=mode.top_k,
                            greedy=mode.greedy, use_top_p=mode.use_top_p, vocab_major=vocab_major)
    carry = _Carry(cache=cache, tokens=jnp.full((b, mode.max_new), mode.pad_id, jnp.int32),
                   logprobs=jnp.zeros((b, mode.max_new), jnp.float32), done=done,
                   lengths=jnp.zeros((b,), jnp.int32), last=tokens[:, -1], step=jnp.zeros((), jnp.int32),
                   pads=pads)
    return _record(carry, tok, lp, mode)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _decode(st: _Static, params, carry: _Carry, end, key, temperature, top_p) -> _Carry:
    mode = st.mode
    s = carry.cache.k[0].shape[1]
    key_slots = jnp.arange(s, dtype=jnp.int32)

    def cond(c: _Carry):
        return (c.step < end) & ~jnp.all(c.done)

    def body(c: _Carry) -> _Carry:
        slot = c.cache.index
        positions = (slot - c.pads)[:, None]
        mask = ((key_slots[None, :] >= c.pads[:, None]) & (key_slots[None, :] <= slot))[:, None, :]
        (logits, vocab_major), cache = _forward_logits(st, params, c.last[:, None], positions, mask, c.cache)
        tok, lp = sample_logits(logits, jax.random.fold_in(key, c.step), temperature, top_p, top_k=mode.top_k,
                                greedy=mode.greedy, use_top_p=mode.use_top_p, vocab_major=vocab_major)
        return _record(c._replace(cache=cache), tok, lp, mode)

    return jax.lax.while_loop(cond, body, carry)


class Sampler:
    """Samples completions from `model` for lists of token-id prompts (see module docstring)."""

    def __init__(self, model: Gemma3, tokenizer: object | None = None, *, eos_ids: Sequence[int],
                 max_prompt_length: int, max_new_tokens: int, min_prompt_bucket: int = 32,
                 min_batch_bucket: int = 1, fast_weights: bool | None = None, share_prompts: bool = True,
                 stop_sequences: Sequence[Sequence[int]] = ()):
        if max_prompt_length < 1 or max_new_tokens < 1:
            raise ValueError("max_prompt_length and max_new_tokens must be >= 1")
        if not eos_ids:
            raise ValueError("eos_ids must name at least one token id")
        self.model = model
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.stop_sequences = tuple(tuple(int(i) for i in seq) for seq in stop_sequences if len(seq))
        self.max_prompt_length = int(max_prompt_length)
        self.max_new_tokens = int(max_new_tokens)
        self.min_prompt_bucket = int(min_prompt_bucket)
        self.min_batch_bucket = int(min_batch_bucket)
        self.pad_id = int(getattr(tokenizer, "pad_id", 0))
        self.bos_id = int(getattr(tokenizer, "bos_id", 2))
        self.fast_weights = fast_weights
        self.share_prompts = share_prompts   # prefill each distinct prompt once
        self._prepared: tuple[list, infer.InferenceWeights] | None = None
        self.programs: set[tuple] = set()  # (batch bucket, prompt bucket, mode) seen: one prefill + one decode each
        # several processes: the next chunk's size as all take it (process 0's; engine.distributed.share_int)
        self.agree_chunk: Callable[[int], int] | None = None

    def prompt_bucket(self, n: int) -> int:
        """Padded prompt length for a longest prompt of n tokens."""
        return min(max(self.min_prompt_bucket, next_pow2(n)), self.max_prompt_length)

    def batch_bucket(self, n: int) -> int:
        """Padded batch size for n prompts: powers of two up to 8, then multiples of 8."""
        return batch_bucket(max(n, self.min_batch_bucket))

    def __call__(self, prompts: list[list[int]], *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0, greedy: bool = False,
                 on_partial: Callable[[list[list[int]]], None] | None = None,
                 partial_every: int = 32, between_chunks: Callable[[int, int], None] | None = None,
                 chunk_seconds: float = 0.5) -> SampleResult:
        """Generate up to `max_new_tokens` per prompt. Prompts longer than `max_prompt_length` keep their last
        tokens. `greedy` picks the arg-max (log-probs still use `temperature`; pass 1.0 for the model's own
        distribution). `on_partial` gets each row's tokens so far every `partial_every` steps.

        `between_chunks(tokens_done, rows_finished)` is called between decode chunks, which are then sized from the
        measured speed to take about `chunk_seconds` each: the caller can check for commands, report progress or
        wait there (a pause), and the decoding continues where it stopped. An exception it raises ends the call.
        How the decoding is cut into chunks never changes the result."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        temperature = float(temperature) if temperature > 0 else 1.0
        n = len(prompts)
        tokens, pads, src, done = self._pack_shared(prompts)
        b, p_len = len(src), tokens.shape[1]
        vocab = self.model.cfg.vocab_size
        mode = _Mode(max_new=self.max_new_tokens, top_k=int(top_k) if 0 < top_k < vocab else 0,
                     greedy=bool(greedy), use_top_p=(not greedy) and top_p < 1.0, eos_ids=self.eos_ids,
                     pad_id=self.pad_id, stop_seqs=self.stop_sequences)
        self.programs.add((b, p_len, mode))
        graphdef, state = nnx.split(self.model)
        fast = (self.fast_weights if self.fast_weights is not None
                else b >= VOCAB_MAJOR_MIN_ROWS and backend.cpu_layouts())
        mesh = mesh_of(self.model.embedder.input_embedding[...])
        if fast:
            st = _Static(self.model.cfg, self.model.dtype, None, mode, mesh)
            params = (self.model.embedder.input_embedding[...], self._inference_weights(graphdef, state))
        else:
            st, params = _Static(self.model.cfg, self.model.dtype, graphdef, mode, mesh), state
        if mesh is not None:   # the prompts' rows split over fsdp like every other batch
            tokens, pads, src, done = (put_batch(x, mesh) for x in (tokens, pads, src, done))
        key = jax.random.key(seed)
        t, tp = jnp.float32(temperature), jnp.float32(top_p)
        carry = _prefill(st, params, jnp.asarray(tokens), jnp.asarray(pads), jnp.asarray(src), jnp.asarray(done),
                         key, t, tp)
        every = max(1, int(partial_every)) if on_partial is not None else self.max_new_tokens
        chunk = min(every, 4) if between_chunks is not None else every   # tokens in the next chunk
        next_partial = step = 1
        while step < self.max_new_tokens:
            if on_partial is not None and step >= next_partial:
                on_partial(self._rows(carry, n))
                next_partial = step + every
                if bool(jnp.all(carry.done)):
                    break
            if between_chunks is not None:
                finished = int(np.count_nonzero(to_host(carry.done)[:n]))
                between_chunks(step, finished)
                if finished == n:
                    break
            end = min(step + chunk, next_partial if on_partial is not None else self.max_new_tokens,
                      self.max_new_tokens)
            started = time.perf_counter()
            carry = _decode(st, params, carry, jnp.int32(end), key, t, tp)
            if between_chunks is not None:   # size the next chunk from this one's speed (at most twice as long)
                carry.step.block_until_ready()
                per_token = (time.perf_counter() - started) / (end - step)
                chunk = max(1, min(2 * chunk, int(chunk_seconds / max(per_token, 1e-6))))
                if self.agree_chunk is not None:
                    chunk = self.agree_chunk(chunk)
            step = end
        out_tokens, logprobs, lengths, done_out = to_host(
            (carry.tokens, carry.logprobs, carry.lengths, carry.done))
        if on_partial is not None:
            on_partial([list(map(int, out_tokens[i, :lengths[i]])) for i in range(n)])
        return SampleResult(tokens=np.asarray(out_tokens[:n], np.int32),
                            logprobs=np.asarray(logprobs[:n], np.float32),
                            lengths=np.asarray(lengths[:n], np.int32),
                            truncated=~np.asarray(done_out[:n], bool))

    def release(self) -> None:
        """Drop the kept copy of the re-laid-out weights (rebuilt on the next call that needs it)."""
        self._prepared = None

    def _pack_shared(self, prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`_pack` of the distinct prompts (each prefilled once: GRPO samples G completions of every prompt), and
        for each row of the batch bucket the index of its prompt among them, and whether it is finished from the
        start. Without `share_prompts` every row is its own prompt."""
        n = len(prompts)
        if self.share_prompts:
            index: dict[tuple[int, ...], int] = {}
            rows = [index.setdefault(tuple(p[-self.max_prompt_length:]), len(index)) for p in prompts]
            distinct = [list(key) for key in index]
        else:
            rows, distinct = list(range(n)), prompts
        tokens, pads, _ = self._pack(distinct)
        b = self.batch_bucket(n)
        src = np.zeros((b,), np.int32)   # filler rows (finished from the start) read prompt 0
        src[:n] = rows
        return tokens, pads, src, np.arange(b) >= n

    def _pack(self, prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Left-padded tokens [b, P], padding per row [b], rows finished from the start [b] (batch filler)."""
        prompts = [list(p)[-self.max_prompt_length:] for p in prompts]
        n, p_len = len(prompts), self.prompt_bucket(max(len(p) for p in prompts))
        b = self.batch_bucket(n)
        tokens = np.full((b, p_len), self.pad_id, np.int32)
        pads = np.full((b,), p_len - 1, np.int32)
        tokens[n:, -1] = self.bos_id  # filler rows: one token each
        for i, p in enumerate(prompts):
            tokens[i, p_len - len(p):] = p
            pads[i] = p_len - len(p)
        return tokens, pads, np.arange(b) >= n

    def _inference_weights(self, graphdef, state) -> infer.InferenceWeights:
        """`infer.prepare` of the current state, reused while the state holds the very same arrays (JAX arrays are
        immutable, so any update to the weights or adapters replaces them and triggers a new preparation)."""
        leaves = jax.tree.leaves(state)
        if self._prepared is not None and len(self._prepared[0]) == len(leaves) and all(
                a is b for a, b in zip(self._prepared[0], leaves)):
            return self._prepared[1]
        self._prepared = None   # release the previous copy before building the next one
        prepared = _prepare(graphdef, state)
        self._prepared = (leaves, prepared)
        return prepared

    @staticmethod
    def _rows(carry: _Carry, n: int) -> list[list[int]]:
        toks, lengths = to_host((carry.tokens, carry.lengths))
        return [list(map(int, toks[i, :lengths[i]])) for i in range(n)]
