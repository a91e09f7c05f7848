"""Sampler end to end on the tiny model: greedy equals step-by-step full forward, seeds, EOS, partial output,
bucketing and live weights."""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from engine import sampler as sampler_mod
from engine.model import Gemma3, causal_attention_mask, make_positions, model_config
from engine.model.lora import apply_lora, lora_state
from engine.sampler import Sampler

PROMPTS = [[2, 40, 41, 42], [2] + list(range(50, 60)), [2, 70, 71, 72, 73, 74]]
NEW = 24


@pytest.fixture(scope="module")
def model():
    cfg = dataclasses.replace(model_config("tiny"), sliding_window=8)   # generation runs well past the window
    return Gemma3(cfg, rngs=nnx.Rngs(11))


@nnx.jit
def _full_logits(model, tokens, length):
    valid = jnp.arange(tokens.shape[1])[None, :] < length
    h, _ = model(tokens, make_positions(valid), causal_attention_mask(valid))
    return jax.nn.log_softmax(model.logits(h[0, length - 1]).astype(jnp.float32))


def _reference_greedy(model, prompt, steps):
    """Greedy decoding by re-running the full forward pass over the whole sequence at every step."""
    seq, logps = list(prompt), []
    buf = np.zeros((1, 64), np.int32)
    for _ in range(steps):
        buf[0, :len(seq)] = seq
        lp = np.asarray(_full_logits(model, jnp.asarray(buf), len(seq)))
        seq.append(int(np.argmax(lp)))
        logps.append(float(lp[seq[-1]]))
    return seq[len(prompt):], logps


def _sampler(model, **kw):
    args = dict(eos_ids=[1], max_prompt_length=32, max_new_tokens=NEW)
    args.update(kw)
    return Sampler(model, None, **args)


@pytest.mark.slow
def test_greedy_batch_equals_reference_decoding_per_prompt(model):
    result = _sampler(model)(PROMPTS, greedy=True, temperature=1.0, seed=0)
    assert result.tokens.shape == (3, NEW) and result.tokens.dtype == np.int32
    for i, prompt in enumerate(PROMPTS):
        tokens, logps = _reference_greedy(model, prompt, NEW)
        n = result.lengths[i]
        assert list(result.tokens[i, :n]) == tokens[:n]
        np.testing.assert_allclose(result.logprobs[i, :n], logps[:n], atol=1e-4)
        if n < NEW:   # stopped at EOS
            assert tokens[n - 1] == 1 and not result.truncated[i]


def test_same_seed_reproduces_and_partial_output_changes_nothing(model):
    s = _sampler(model)
    kw = dict(temperature=1.2, top_k=20, top_p=0.95)
    a = s(PROMPTS, seed=3, **kw)
    b = s(PROMPTS, seed=3, **kw)
    c = s(PROMPTS, seed=4, **kw)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.logprobs, b.logprobs)
    assert not np.array_equal(a.tokens, c.tokens)
    partials = []
    d = s(PROMPTS, seed=3, on_partial=partials.append, partial_every=5, **kw)
    assert np.array_equal(a.tokens, d.tokens) and np.array_equal(a.lengths, d.lengths)
    assert [len(p[0]) for p in partials[:4]] == [1, 6, 11, 16]
    for snapshot in partials:
        for row, got in enumerate(snapshot):
            assert got == list(a.tokens[row, :len(got)])
    assert partials[-1] == [list(a.tokens[r, :a.lengths[r]]) for r in range(3)]


def test_chunks_between_callbacks_and_a_wait_inside_change_nothing(model):
    s = _sampler(model)
    kw = dict(temperature=1.2, top_k=20, top_p=0.95, seed=3)
    a = s(PROMPTS, **kw)
    calls, partials = [], []

    def between(done: int, finished: int) -> None:
        calls.append((done, finished))
        if len(calls) == 3:
            time.sleep(0.3)          # a pause in the middle of the decoding
    b = s(PROMPTS, between_chunks=between, chunk_seconds=1e-9, on_partial=partials.append, partial_every=5, **kw)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.logprobs, b.logprobs)
    assert np.array_equal(a.lengths, b.lengths)
    # a first chunk of 4 tokens, then of one token when each should take no time; partial output keeps its cadence
    done = [d for d, _ in calls]
    assert done[:2] == [1, 5] and done[2:] == list(range(6, 4 + len(done)))
    assert all(0 <= f <= 3 for _, f in calls)
    assert [len(p[0]) for p in partials[:4]] == [1, 6, 11, 16]
    grown = []
    c = s(PROMPTS, between_chunks=lambda d, f: grown.append(d), chunk_seconds=100.0, **kw)
    assert np.array_equal(a.tokens, c.tokens)
    assert grown[:4] == [1, 5, 13, 29][:len(grown[:4])]  # chunk length doubles (4, 8, 16 ...) up to the target


def test_eos_stops_only_its_row(model):
    free = _sampler(model)(PROMPTS, greedy=True, seed=0)
    stop = int(free.tokens[0, 3])
    first = int(np.argmax(free.tokens[0] == stop))
    result = _sampler(model, eos_ids=[stop, 1])(PROMPTS, greedy=True, seed=0)
    assert result.lengths[0] == first + 1 and not result.truncated[0]
    assert result.tokens[0, first] == stop
    assert (result.tokens[0, first + 1:] == 0).all() and (result.logprobs[0, first + 1:] == 0).all()
    for row in (1, 2):
        if stop not in free.tokens[row] and 1 not in free.tokens[row]:
            assert result.lengths[row] == NEW and result.truncated[row]
            assert np.array_equal(result.tokens[row], free.tokens[row])


def test_all_rows_done_ends_early_and_padding_rows_are_dropped(model):
    free = _sampler(model)(PROMPTS[:1], greedy=True, seed=0)
    stop = int(free.tokens[0, 0])
    calls = []
    result = _sampler(model, eos_ids=[stop])(PROMPTS[:1], greedy=True, seed=0, on_partial=calls.append,
                                              partial_every=4)
    assert result.lengths.tolist() == [1] and result.tokens.shape == (1, NEW)
    assert len(calls) == 2   # after the prefill, then the final result: no decode chunk ran


def test_buckets_keep_the_number_of_programs_small(model):
    s = _sampler(model, max_prompt_length=128)
    assert [s.prompt_bucket(n) for n in (1, 5, 32, 33, 100, 128)] == [32, 32, 32, 64, 128, 128]
    assert [s.batch_bucket(n) for n in (1, 3, 5, 8, 9, 17)] == [1, 4, 8, 8, 16, 24]
    s([[2, 5, 6], [2] + [9] * 20, [2, 3]], greedy=True)
    s([[2, 7], [2] + [8] * 30, [4]], greedy=True)
    assert len(s.programs) == 1
    size = sampler_mod._decode._cache_size()
    s([[2, 7], [2] + [8] * 30, [4]], greedy=True, on_partial=lambda _: None, partial_every=3)
    assert sampler_mod._decode._cache_size() == size   # partial output reuses the same decode program


def test_long_prompts_keep_their_last_tokens(model):
    long_prompt = list(range(4, 60))
    s = _sampler(model, max_prompt_length=16)
    a = s([long_prompt], greedy=True)
    b = s([long_prompt[-16:]], greedy=True)
    assert np.array_equal(a.tokens, b.tokens)


def test_sampler_sees_new_lora_weights_without_recompiling():
    model = Gemma3(model_config("tiny"), rngs=nnx.Rngs(12))
    apply_lora(model, rank=2, alpha=2.0)
    s = _sampler(model)
    before = s(PROMPTS, greedy=True)
    size = sampler_mod._decode._cache_size()
    rng = np.random.default_rng(0)
    for _, var in nnx.to_flat_state(lora_state(model)):
        var.set_value(jnp.asarray(rng.normal(0, 0.5, var.shape), var.dtype))
    after = s(PROMPTS, greedy=True)
    assert not np.array_equal(before.tokens, after.tokens)
    assert sampler_mod._decode._cache_size() == size


def test_invalid_requests_are_rejected(model):
    s = _sampler(model)
    with pytest.raises(ValueError, match="temperature"):
        s(PROMPTS, temperature=0.0)
    with pytest.raises(ValueError, match="at least one token"):
        s([[2], []], greedy=True)
    with pytest.raises(ValueError, match="eos_ids"):
        Sampler(model, None, eos_ids=[], max_prompt_length=8, max_new_tokens=4)


def test_fast_weights_path_matches_the_model_forward_path():
    model = Gemma3(model_config("tiny"), rngs=nnx.Rngs(13))
    apply_lora(model, rank=2, alpha=2.0)
    rng = np.random.default_rng(1)
    for _, var in nnx.to_flat_state(lora_state(model)):
        var.set_value(jnp.asarray(rng.normal(0, 0.3, var.shape), var.dtype))
    prompts = PROMPTS + [[2, 9, 9]]   # four rows: the vocabulary-major output layer
    fast = _sampler(model, fast_weights=True)(prompts, greedy=True)
    plain = _sampler(model, fast_weights=False)(prompts, greedy=True)
    np.testing.assert_array_equal(fast.tokens, plain.tokens)
    np.testing.assert_allclose(fast.logprobs, plain.logprobs, atol=1e-4)


def test_prepared_weights_are_reused_only_while_the_weights_are_unchanged():
    model = Gemma3(model_config("tiny"), rngs=nnx.Rngs(14))
    apply_lora(model, rank=2, alpha=2.0)
    s = _sampler(model)
    prompts = PROMPTS + [[2, 8]]
    first = s(prompts, greedy=True)
    prepared = s._prepared[1]
    s(prompts, greedy=True)
    assert s._prepared[1] is prepared
    for path, var in nnx.to_flat_state(lora_state(model)):
        if path[-1] == "lora_b":   # B = 0 at the start: changing B changes the output
            var.set_value(var[...] + 0.5)
    changed = s(prompts, greedy=True)
    assert s._prepared[1] is not prepared
    assert not np.array_equal(first.tokens, changed.tokens)
    s.release()
    assert s._prepared is None
    assert np.array_equal(s(prompts, greedy=True).tokens, changed.tokens)


def test_rows_with_the_same_prompt_share_one_prefill_and_sample_as_if_separate(model, monkeypatch):
    prompts = [PROMPTS[1], PROMPTS[1], PROMPTS[0], PROMPTS[1]]   # as GRPO's groups: repeated prompts
    widths = []
    prefill = sampler_mod._prefill
    monkeypatch.setattr(sampler_mod, "_prefill", lambda st, params, tokens, *a: widths.append(tokens.shape[0]) or
                        prefill(st, params, tokens, *a))
    kw = dict(temperature=1.1, top_k=20, seed=5)
    shared = _sampler(model)(prompts, **kw)
    separate = _sampler(model, share_prompts=False)(prompts, **kw)
    assert widths == [2, 4]   # two distinct prompts prefilled, then all four rows
    assert np.array_equal(shared.tokens, separate.tokens) and np.array_equal(shared.lengths, separate.lengths)
    np.testing.assert_allclose(shared.logprobs, separate.logprobs, atol=1e-5)
    assert not np.array_equal(shared.tokens[0], shared.tokens[1])   # same prompt, own random draws
    greedy = _sampler(model)(prompts, greedy=True)
    for row, prompt in enumerate(prompts):
        alone = _sampler(model)([prompt], greedy=True)
        assert np.array_equal(greedy.tokens[row], alone.tokens[0])


def test_stop_sequence_ends_its_row_after_the_sequence_and_keeps_it(model):
    free = _sampler(model)(PROMPTS, greedy=True, seed=0)
    seq = [int(free.tokens[0, 5]), int(free.tokens[0, 6])]
    ends = [i + 2 for i in range(NEW - 1) if list(free.tokens[0, i:i + 2]) == seq]
    result = _sampler(model, stop_sequences=[seq, []])(PROMPTS, greedy=True, seed=0)
    assert result.lengths[0] == ends[0] and not result.truncated[0]
    assert np.array_equal(result.tokens[0, :ends[0]], free.tokens[0, :ends[0]])   # the stop tokens are kept
    assert (result.tokens[0, ends[0]:] == 0).all()
    for row in (1, 2):   # rows without the sequence run on unchanged
        row_ends = [i + 2 for i in range(NEW - 1) if list(free.tokens[row, i:i + 2]) == seq]
        expected = row_ends[0] if row_ends else NEW
        assert result.lengths[row] == expected
        assert np.array_equal(result.tokens[row, :expected], free.tokens[row, :expected])


def test_a_stop_sequence_longer_than_the_completion_is_ignored(model):
    free = _sampler(model, max_new_tokens=4)(PROMPTS, greedy=True, seed=0)
    long = _sampler(model, max_new_tokens=4, stop_sequences=[[5] * 6])(PROMPTS, greedy=True, seed=0)
    assert np.array_equal(free.tokens, long.tokens) and (long.lengths == 4).all()
